"""The world: how validation and status look up other objects.

Validators and the status engine are pure functions of an object and a :class:`World`. The world is
either *authoritative* — it holds every object there is (the admission webhook, the running control
plane) — or *partial* — it holds only what one command was given (``meshplane validate -f``). The
difference matters for references that cannot be found: in a partial world the object may simply not
be among the inputs, so such findings are warnings, never errors.

:class:`Index` is the in-memory world every caller uses; the store of the running control plane keeps
one up to date.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from meshplane.controlplane.model import KINDS, AnyObject, Kind, ObjectKey, RefOrId, ResourceRef
from meshplane.controlplane.wire import FrozenMap


@dataclass(frozen=True)
class KubeService:
    """The parts of a core/v1 Service the mesh reads: who it selects."""

    namespace: str
    name: str
    selector: FrozenMap[str] = FrozenMap()
    deleting: bool = False


@dataclass(frozen=True)
class KubeSecret:
    """A core/v1 Secret the mesh reads (a gateway's server certificate or trusted CA bundle).

    ``data`` holds the decoded values; ``fingerprint`` (a hash of them) is what the IR carries, so a
    changed Secret changes the configuration that names it without key material entering the IR.
    """

    namespace: str
    name: str
    type: str
    data: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)

    def get(self, key: str) -> bytes | None:
        return dict(self.data).get(key)

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for key, value in self.data:
            digest.update(key.encode() + b"\0" + hashlib.sha256(value).digest())
        return digest.hexdigest()[:16]


class World(Protocol):
    """Read-only lookups of other objects."""

    @property
    def authoritative(self) -> bool:
        """True when every object that exists is in this world."""

    def get(self, key: ObjectKey) -> AnyObject | None: ...

    def by_id(self, kind: Kind, ocid: str) -> AnyObject | None: ...

    def objects(self, kind: Kind) -> Iterable[AnyObject]:
        """Every object of the kind, sorted by namespace and name (callers rely on the order)."""
        ...

    def service(self, namespace: str, name: str) -> KubeService | None: ...

    def secret(self, namespace: str, name: str) -> KubeSecret | None: ...

    @property
    def knows_services(self) -> bool:
        """True when this world holds every core/v1 Service (so a missing one really is missing)."""


@functools.lru_cache(maxsize=65536)
def object_id(kind: Kind, namespace: str, name: str, uid: str = "") -> str:
    """The deterministic OCID-style identifier meshplane gives an object.

    The same object always gets the same identifier (so ``id`` references in manifests stay valid
    across restarts); a re-created object with a new Kubernetes ``uid`` gets a new one, as in OCI.
    """
    info = KINDS[kind]
    digest = hashlib.sha256(f"{kind.value}/{namespace}/{name}/{uid}".encode()).digest()
    tail = base64.b32encode(digest).decode().rstrip("=").lower()[:60]
    return f"ocid1.{info.ocid_type or kind.value.lower()}.oc1..{tail}"


def id_of(obj: AnyObject) -> str | None:
    """The object's identifier: the one in its status if set, else the deterministic one."""
    info = KINDS[obj.kind]
    if info.id_field is None:
        return None
    recorded: str | None = getattr(obj.status, info.id_field)
    return recorded or object_id(obj.kind, obj.namespace, obj.name, obj.metadata.uid)


def ref_key(ref: ResourceRef, kind: Kind, referrer_namespace: str) -> ObjectKey:
    """Where a by-name reference points: its namespace defaults to the referrer's."""
    return ObjectKey(kind, ref.namespace or referrer_namespace, ref.name)


def resolve(world: World, target: RefOrId, kind: Kind, referrer_namespace: str) -> AnyObject | None:
    """The object a ref-or-id names, if the world has it (by ``ref`` first, then by ``id``)."""
    if target.ref is not None:
        return world.get(ref_key(target.ref, kind, referrer_namespace))
    if target.id is not None:
        return world.by_id(kind, target.id)
    return None


def describe_target(target: RefOrId, kind: Kind, referrer_namespace: str) -> str:
    """How a ref-or-id reads in a message: ``Mesh shop/shop-mesh`` or ``Mesh ocid1.mesh…``."""
    if target.ref is not None:
        return str(ref_key(target.ref, kind, referrer_namespace))
    return f"{kind.value} {target.id}"


class Index:
    """An in-memory world: objects by kind and key, by identifier, and Services by namespace and name.

    Objects are kept per kind, and each kind's sorted view is computed once and reused until that kind
    changes, so a status pass over the whole world does not re-sort it for every kind it visits.
    """

    def __init__(self, objects: Iterable[AnyObject] = (), services: Iterable[KubeService] = (), *,
                 authoritative: bool = True, knows_services: bool | None = None) -> None:
        self._by_kind: dict[Kind, dict[ObjectKey, AnyObject]] = {kind: {} for kind in Kind}
        self._sorted: dict[Kind, list[AnyObject]] = {}
        self._ids: dict[tuple[Kind, str], ObjectKey] = {}
        self._services: dict[tuple[str, str], KubeService] = {}
        self._secrets: dict[tuple[str, str], KubeSecret] = {}
        self._authoritative = authoritative
        self._knows_services = authoritative if knows_services is None else knows_services
        self.version = 0  # bumped by every change: a caller may skip work when it has not moved
        for obj in objects:
            self.put(obj)
        for svc in services:
            self.put_service(svc)

    @property
    def authoritative(self) -> bool:
        return self._authoritative

    @property
    def knows_services(self) -> bool:
        return self._knows_services

    def put(self, obj: AnyObject) -> None:
        self.remove(obj.key)
        self.version += 1
        self._by_kind[obj.kind][obj.key] = obj
        self._sorted.pop(obj.kind, None)
        ocid = id_of(obj)
        if ocid is not None:
            self._ids[(obj.kind, ocid)] = obj.key

    def remove(self, key: ObjectKey) -> AnyObject | None:
        old = self._by_kind[key.kind].pop(key, None)
        if old is not None:
            self.version += 1
            self._sorted.pop(key.kind, None)
            ocid = id_of(old)
            if ocid is not None:
                self._ids.pop((old.kind, ocid), None)
        return old

    def put_service(self, svc: KubeService) -> None:
        self.version += 1
        self._services[(svc.namespace, svc.name)] = svc

    def set_services(self, services: Iterable[KubeService]) -> bool:
        """Replace every core Service with ``services`` (a source that re-reads them all); True if any changed."""
        fresh = {(svc.namespace, svc.name): svc for svc in services}
        changed, self._services = fresh != self._services, fresh
        self.version += changed
        return changed

    def set_secrets(self, secrets: Iterable[KubeSecret]) -> bool:
        """Replace every Secret with ``secrets``; True if any changed."""
        fresh = {(secret.namespace, secret.name): secret for secret in secrets}
        changed, self._secrets = fresh != self._secrets, fresh
        self.version += changed
        return changed

    def secret(self, namespace: str, name: str) -> KubeSecret | None:
        return self._secrets.get((namespace, name))

    def get(self, key: ObjectKey) -> AnyObject | None:
        return self._by_kind[key.kind].get(key)

    def by_id(self, kind: Kind, ocid: str) -> AnyObject | None:
        key = self._ids.get((kind, ocid))
        return None if key is None else self.get(key)

    def objects(self, kind: Kind) -> list[AnyObject]:
        view = self._sorted.get(kind)
        if view is None:
            members = self._by_kind[kind]
            view = self._sorted[kind] = [members[k] for k in sorted(members, key=_sort_key)]
        return list(view)

    def all(self) -> list[AnyObject]:
        return [obj for kind in Kind for obj in self.objects(kind)]

    def service(self, namespace: str, name: str) -> KubeService | None:
        return self._services.get((namespace, name))

    def __len__(self) -> int:
        return sum(len(members) for members in self._by_kind.values())


def _sort_key(key: ObjectKey) -> tuple[str, str]:
    return (key.namespace, key.name)
