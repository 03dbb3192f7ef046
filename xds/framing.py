"""Discovery responses framed by hand around resources serialised once.

A resource's bytes are made once per content (:class:`~meshplane.xds.resources.Resource`) and shared
by every proxy that gets it. Building a protobuf DiscoveryResponse copied them into an ``Any`` per
resource per push, and gRPC then serialised the whole message again (50 µs for a response of 21
clusters). Here a response is the protobuf wire encoding written directly (length-delimited fields, in
field-number order, empty values omitted as proto3 does): a join of each resource's kept prefix and its
shared bytes (14 µs for the same response). The ADS method handlers send these bytes as they are.

Field numbers are envoy.service.discovery.v3's; ``tests/xds/test_framing.py`` checks them against the
generated descriptors and every encoding against the protobuf library's.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # resources imports this module to frame each resource once
    from meshplane.xds.resources import Resource

_SMALL = [bytes([i]) for i in range(0x80)]

# DiscoveryResponse
_VERSION_INFO, _RESOURCES, _TYPE_URL, _NONCE = 1, 2, 4, 5
# DeltaDiscoveryResponse (resources, type_url and nonce as above)
_SYSTEM_VERSION_INFO, _REMOVED_RESOURCES = 1, 6
# envoy.service.discovery.v3.Resource
_RESOURCE_VERSION, _RESOURCE_BODY, _RESOURCE_NAME = 1, 2, 3
# google.protobuf.Any
_ANY_TYPE_URL, _ANY_VALUE = 1, 2


def _varint(value: int) -> bytes:
    if value < 0x80:  # every tag here, and short strings
        return _SMALL[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _text(number: int, value: str) -> bytes:
    """A string field; nothing for the empty string (proto3 omits defaults)."""
    return _field(number, value.encode()) if value else b""


def _any_head(type_url: str, body: bytes) -> bytes:
    """An ``Any`` holding ``body``, up to ``body`` itself (an empty value is omitted, as proto3 does)."""
    return _text(_ANY_TYPE_URL, type_url) + (_varint(_ANY_VALUE << 3 | 2) + _varint(len(body)) if body else b"")


def prefix(type_url: str, body: bytes) -> bytes:
    """What precedes ``body`` in a DiscoveryResponse: the ``resources`` field's tag and length and the
    ``Any`` header. Made once per resource (:class:`~meshplane.xds.resources.Resource` keeps it)."""
    head = _any_head(type_url, body)
    return _varint(_RESOURCES << 3 | 2) + _varint(len(head) + len(body)) + head


def sotw_response(type_url: str, version: str, nonce: str, resources: Mapping[str, Resource]) -> bytes:
    """A serialised DiscoveryResponse: ``resources`` (of ``type_url``) sorted by name (equal content, equal
    bytes). A join of each resource's kept prefix and body: nothing per resource is encoded again."""
    parts = [_text(_VERSION_INFO, version)]
    for name in sorted(resources):
        resource = resources[name]
        parts += (resource.sotw_prefix(), resource.body)
    parts += [_text(_TYPE_URL, type_url), _text(_NONCE, nonce)]
    return b"".join(parts)


def _delta_frame(type_url: str, name: str, resource: Resource) -> tuple[bytes, bytes]:
    """What precedes and follows a resource's body in a DeltaDiscoveryResponse (its digest is its version)."""
    head = _any_head(type_url, resource.body)
    wrapped = _varint(_RESOURCE_BODY << 3 | 2) + _varint(len(head) + len(resource.body)) + head
    version_field, name_field = _text(_RESOURCE_VERSION, resource.digest), _text(_RESOURCE_NAME, name)
    size = len(version_field) + len(wrapped) + len(resource.body) + len(name_field)
    return _varint(_RESOURCES << 3 | 2) + _varint(size) + version_field + wrapped, name_field


# Delta frames, made once per resource while it lives (Delta pushes are mostly endpoints; SotW framing is
# kept on the resource itself, see prefix)
_delta_frames: weakref.WeakKeyDictionary[Resource, tuple[str, bytes, bytes]] = weakref.WeakKeyDictionary()


def delta_response(type_url: str, version: str, nonce: str, updates: Mapping[str, Resource],
                   removed: Sequence[str]) -> bytes:
    """A serialised DeltaDiscoveryResponse: each resource's version is its digest."""
    parts = [_text(_SYSTEM_VERSION_INFO, version)]
    for name in sorted(updates):
        resource = updates[name]
        held = _delta_frames.get(resource)
        if held is None or held[0] != name:
            held = _delta_frames[resource] = (name, *_delta_frame(type_url, name, resource))
        parts += (held[1], resource.body, held[2])
    parts.append(_text(_TYPE_URL, type_url))
    parts.append(_text(_NONCE, nonce))
    parts += [_field(_REMOVED_RESOURCES, name.encode()) for name in removed]
    return b"".join(parts)
