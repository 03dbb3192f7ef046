"""Envoy resources as immutable, pre-serialised values: the unit the snapshot cache and ADS server share.

Contract:

* A :class:`Resource` is serialised exactly once, when it is made (``deterministic=True``, so equal
  messages give equal bytes). Every stream that sends it packs the same ``body`` into an ``Any``;
  nothing downstream ever serialises an Envoy message again. (envoy-notes: framing cached bytes for
  10 000 resources costs ~6-9 ms, serialising them costs ~350 ms; Envoy skips bit-identical
  resources cheaply, so identical output must be bit-identical.)
* ``digest`` is a short content hash of (type, name, body). It is the per-resource version in delta
  xDS and the input of the per-type snapshot version, so regenerating identical content changes
  nothing anywhere.
* ``refs`` names what the resource depends on, as ``(type_url, name)`` pairs: a listener → its RDS
  route configs, TCP-proxy clusters and SDS secrets; a route config → clusters; an EDS cluster → its
  ClusterLoadAssignment; a cluster → SDS secrets. The producer (``xds.translate``) computes them; this
  module only carries them. The cache checks them (consistency) and the server follows them
  (make-before-break).
* Identical resources built for many proxies are interned: :meth:`Resource.of` returns the one live
  object with that content, so a mesh of N proxies holds one bytes buffer per distinct resource. The
  intern table is weak: an entry lives exactly as long as some snapshot holds the resource.

Trap avoided: Any fields nested inside a message (``typed_config``) are opaque bytes here; builders
must pack them with ``Any.Pack(msg, deterministic=True)`` or the outer bytes may differ between runs.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from meshplane.xds import framing

TYPE_PREFIX = "type.googleapis.com/"


class TypeUrl(StrEnum):
    """The v3 type URLs this control plane serves over ADS."""

    CLUSTER = TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
    ENDPOINT = TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
    LISTENER = TYPE_PREFIX + "envoy.config.listener.v3.Listener"
    ROUTE = TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
    SECRET = TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

    @property
    def short(self) -> str:
        """The xDS nickname (CDS, EDS, ...), for logs and debug pages."""
        return _SHORT[self]

    @property
    def kind(self) -> str:
        """What one resource of this type is called in messages meant for people."""
        return _KIND[self]


_SHORT = {
    TypeUrl.CLUSTER: "CDS",
    TypeUrl.ENDPOINT: "EDS",
    TypeUrl.LISTENER: "LDS",
    TypeUrl.ROUTE: "RDS",
    TypeUrl.SECRET: "SDS",
}
_KIND = {
    TypeUrl.CLUSTER: "cluster",
    TypeUrl.ENDPOINT: "cluster load assignment",
    TypeUrl.LISTENER: "listener",
    TypeUrl.ROUTE: "route config",
    TypeUrl.SECRET: "secret",
}

PUSH_ORDER: tuple[TypeUrl, ...] = (TypeUrl.CLUSTER, TypeUrl.ENDPOINT, TypeUrl.LISTENER, TypeUrl.ROUTE, TypeUrl.SECRET)
"""Make-before-break order for one proxy: a cluster (and its endpoints) exists before a route uses it."""

WILDCARD_TYPES = frozenset({TypeUrl.CLUSTER, TypeUrl.LISTENER})
"""Types Envoy fetches without naming resources (the server decides the set)."""

Ref = tuple[str, str]
"""A dependency: ``(type_url, name)`` of the resource depended on."""


def type_url_of(value: str) -> TypeUrl:
    """The :class:`TypeUrl` for ``value``, or a ValueError saying which types are served."""
    try:
        return TypeUrl(value)
    except ValueError:
        served = ", ".join(t.value for t in TypeUrl)
        raise ValueError(f"type {value!r} is not served (served: {served})") from None


def _digest(type_url: str, name: str, body: bytes) -> str:
    """16 hex digits of BLAKE2b: short enough for logs, wide enough (64 bits) never to collide in a mesh."""
    h = hashlib.blake2b(digest_size=8)
    h.update(type_url.encode())
    h.update(b"\0")
    h.update(name.encode())
    h.update(b"\0")
    h.update(body)
    return h.hexdigest()


@dataclass(frozen=True, slots=True, weakref_slot=True, eq=False)
class Resource:
    """One named Envoy resource, serialised once. Make it with :meth:`of` or :meth:`from_body`.

    Identity is content: two resources are equal when type, name, digest and refs are equal; interning
    usually makes them the same object too.
    """

    type_url: TypeUrl
    name: str
    body: bytes = field(repr=False)  # a Secret's body holds a private key: never in a repr or a log line
    digest: str
    refs: frozenset[Ref]
    _sotw_prefix: bytes | None = field(default=None, init=False, repr=False)  # see sotw_prefix()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Resource):
            return NotImplemented
        return self is other or (
            self.digest == other.digest
            and self.type_url == other.type_url
            and self.name == other.name
            and self.refs == other.refs
        )

    def __hash__(self) -> int:
        return hash((self.type_url, self.name, self.digest))

    @classmethod
    def of(cls, message: Any, refs: Iterable[Ref] = ()) -> Resource:
        """Serialise an Envoy message (deterministically) and return the interned resource for it.

        The name is the message's ``name`` (``cluster_name`` for a ClusterLoadAssignment). Raises
        ValueError for message types ADS does not serve or for refs to such types.
        """
        type_url = type_url_of(TYPE_PREFIX + message.DESCRIPTOR.full_name)
        name = message.cluster_name if type_url is TypeUrl.ENDPOINT else message.name
        return cls.from_body(type_url, str(name), message.SerializeToString(deterministic=True), refs)

    @classmethod
    def from_body(cls, type_url: str, name: str, body: bytes, refs: Iterable[Ref] = ()) -> Resource:
        """The interned resource for already-serialised bytes (the caller vouches they encode ``name``)."""
        checked = type_url_of(type_url)
        frozen_refs = frozenset((type_url_of(t).value, n) for t, n in refs)
        digest = _digest(checked, name, body)
        found = _interned.get(digest)
        if found is not None and found.name == name and found.refs == frozen_refs and found.body == body:
            return found
        made = cls(checked, name, body, digest, frozen_refs)
        _interned[digest] = made
        return made

    def sotw_prefix(self) -> bytes:
        """What precedes ``body`` in a SotW response (:func:`framing.prefix`), made when first sent and kept:
        every proxy the resource is sent to shares it."""
        if self._sotw_prefix is None:
            object.__setattr__(self, "_sotw_prefix", framing.prefix(self.type_url.value, self.body))  # frozen: a cache
        assert self._sotw_prefix is not None
        return self._sotw_prefix

    def refs_of(self, type_url: str) -> frozenset[str]:
        """Names of the resources of ``type_url`` this one depends on."""
        return frozenset(name for kind, name in self.refs if kind == type_url)


_interned: weakref.WeakValueDictionary[str, Resource] = weakref.WeakValueDictionary()


def interned_count() -> int:
    """How many distinct resources are alive (for metrics and tests)."""
    return len(_interned)
