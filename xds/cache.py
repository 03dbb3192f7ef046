"""The snapshot cache: per proxy, the last consistent set of resources, versioned by content.

Contract (in the spirit of go-control-plane's ``pkg/cache/v3``):

* A :class:`Snapshot` is an immutable map type URL → name → :class:`Resource`. Its per-type version
  is a hash of the sorted ``(name, digest)`` pairs, so rebuilding identical content yields the same
  version and is never re-sent, whatever order it was produced in (Kuma autoVersion, Consul hashes).
* :func:`check_consistent` names every dangling reference — a route config naming a cluster CDS does
  not have, an EDS cluster without its ClusterLoadAssignment, a listener naming a missing route config
  or secret. In SotW one invalid resource makes Envoy reject the whole type (envoy#3079), and routes
  are not warmed, so a dangling cluster is a 503 at request time: such snapshots are never published.
* :meth:`SnapshotCache.set` publishes only consistent snapshots. An inconsistent one raises
  :class:`InconsistentSnapshotError` (with every problem) and the last good snapshot stays served —
  report the failure on the offending object and keep serving everything else.
* Watchers are woken only when a type's version changes, with the set of changed types; they run
  synchronously inside ``set`` on the event loop, so a watcher must only record the change and wake
  its stream (the ADS server's streams put a marker on their own queue).

This module never imports the server (``xds.server`` imports it): the cache is a plain value store
that any transport, test or debug page can use. It is not thread-safe; call it from the event loop.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import cast

from meshplane.xds.resources import PUSH_ORDER, Resource, TypeUrl, type_url_of

Watcher = Callable[[frozenset[TypeUrl]], None]
"""Called with the types whose version changed for the watched node."""

_EMPTY: Mapping[str, Resource] = MappingProxyType({})


def content_version(resources: Iterable[Resource]) -> str:
    """The version of a set of resources: a hash of their sorted ``(name, digest)`` pairs.

    Order of production is irrelevant and identical content always gives the identical version. The
    server uses this too for what it actually sends, which can differ from the snapshot while it keeps
    clusters for make-before-break.
    """
    h = hashlib.blake2b(digest_size=8)
    for name, digest in sorted((r.name, r.digest) for r in resources):
        h.update(name.encode())
        h.update(b"\0")
        h.update(digest.encode())
        h.update(b"\n")
    return h.hexdigest()


class Snapshot:
    """An immutable set of resources for one proxy, grouped by type, with per-type content versions.

    A *layered* snapshot (:meth:`layered`) is a base shared by many proxies (their common outbound part)
    plus each proxy's own resources. It is built, versioned and checked in time proportional to the
    proxy's own resources, not the base's: at 200 proxies that may call 1,000 services, flat snapshots
    spent 3 s a round hashing and checking the same 4,000 shared resources 200 times.
    """

    __slots__ = ("_base", "_by_type", "_dangling", "_extra", "_size", "_versions")

    def __init__(self, resources: Iterable[Resource] = ()) -> None:
        """Group ``resources`` by type; the same name twice with different content is a ValueError."""
        by_type: dict[TypeUrl, dict[str, Resource]] = {t: {} for t in PUSH_ORDER}
        for resource in resources:
            _add(by_type[resource.type_url], resource)
        self._by_type = {t: MappingProxyType(named) for t, named in by_type.items()}
        self._versions = {t: content_version(named.values()) for t, named in by_type.items()}
        self._base: Snapshot | None = None
        self._extra: tuple[Resource, ...] = ()
        self._dangling: dict[tuple[str, str], list[Resource]] | None = None
        self._size: int | None = None

    @classmethod
    def layered(cls, base: Snapshot, extra: Iterable[Resource]) -> Snapshot:
        """``base``'s resources and ``extra``'s (the same name twice with different content: ValueError).

        A type only ``base`` has keeps ``base``'s version, and a type only ``extra`` has gets the flat
        version; a type both have is versioned by ``base``'s version and ``extra``'s ``(name, digest)``
        pairs. Identical content split the same way always gives identical versions; the renderer
        always splits a proxy's resources the same way, so nothing is re-sent for being split.
        """
        self = cls.__new__(cls)
        self._extra = tuple(extra)
        own: dict[TypeUrl, dict[str, Resource]] = {}
        for resource in self._extra:
            _add(own.setdefault(resource.type_url, {}), resource)
        self._by_type, self._versions = {}, {}
        for type_url in PUSH_ORDER:
            shared, added = base._by_type[type_url], own.get(type_url)
            if not added:
                self._by_type[type_url], self._versions[type_url] = shared, base._versions[type_url]
                continue
            named = dict(shared)
            for resource in added.values():
                _add(named, resource)
            self._by_type[type_url] = MappingProxyType(named)
            self._versions[type_url] = _layered_version(base._versions[type_url], added.values()) if shared \
                else content_version(added.values())
        self._base, self._dangling, self._size = base, None, None
        return self

    @property
    def base(self) -> Snapshot | None:
        """The shared snapshot this one was layered on (:meth:`layered`), if any."""
        return self._base

    @property
    def extra(self) -> tuple[Resource, ...]:
        """What :meth:`layered` added to the base (empty for a flat snapshot)."""
        return self._extra

    def items(self, type_url: str) -> Mapping[str, Resource]:
        """Name → resource for one type (read-only; empty for a type with no resources)."""
        found = self._by_type.get(cast(TypeUrl, type_url))  # a served type's str finds its TypeUrl key
        return found if found is not None else self._by_type.get(type_url_of(type_url), _EMPTY)

    def version(self, type_url: str) -> str:
        """The content version of one type."""
        return self._versions[type_url_of(type_url)]

    def versions(self) -> dict[TypeUrl, str]:
        """Every type's content version."""
        return dict(self._versions)

    def byte_size(self) -> int:
        """The serialised size of every resource, in bytes (a layered snapshot adds to its base's)."""
        if self._size is None:
            if self._base is None:
                self._size = sum(len(resource.body) for resource in self)
            else:
                self._size = self._base.byte_size() + sum(len(resource.body) for resource in self._extra)
        return self._size

    def dangling(self) -> dict[tuple[str, str], list[Resource]]:
        """Each reference no resource here satisfies, (type, name), with the resources making it. Made once
        per snapshot; a layered one looks again only at its base's (a few distinct names, however many
        resources share them) and at its own resources' references."""
        if self._dangling is None:
            own: dict[tuple[str, str], list[Resource]] = {}
            for resource in self if self._base is None else self._extra:
                for ref in resource.refs:
                    own.setdefault(ref, []).append(resource)
            pending = dict(self._base.dangling()) if self._base is not None else {}  # its lists: never modified
            for ref, made in own.items():
                pending[ref] = [*pending.get(ref, ()), *made]
            self._dangling = {ref: made for ref, made in pending.items() if ref[1] not in self.items(ref[0])}
        return self._dangling

    def __iter__(self) -> Iterator[Resource]:
        return itertools.chain.from_iterable(named.values() for named in self._by_type.values())

    def __len__(self) -> int:
        return sum(len(named) for named in self._by_type.values())

    def __repr__(self) -> str:
        counts = ", ".join(f"{t.short}={len(self._by_type[t])}" for t in PUSH_ORDER)
        return f"Snapshot({counts})"


def _add(named: dict[str, Resource], resource: Resource) -> None:
    other = named.setdefault(resource.name, resource)
    if other is not resource and other != resource:
        raise ValueError(f"two different {resource.type_url.kind}s named {resource.name!r}")


def _layered_version(base_version: str, added: Iterable[Resource]) -> str:
    h = hashlib.blake2b(digest_size=8)
    h.update(b"layered\0")
    h.update(base_version.encode())
    h.update(content_version(added).encode())
    return h.hexdigest()


def check_consistent(snapshot: Snapshot) -> list[str]:
    """Every dangling reference in ``snapshot``, as sentences, sorted; empty when it is consistent.

    Unreferenced extra resources are not problems (a spare ClusterLoadAssignment harms nothing).
    """
    problems: set[str] = set()
    for (type_url, name), made in snapshot.dangling().items():
        target = type_url_of(type_url)
        problems.update(f"{resource.type_url.kind} {resource.name} names {target.kind} {name} which is not in "
                        f"{target.short}" for resource in made)
    return sorted(problems)


class InconsistentSnapshotError(ValueError):
    """A snapshot with dangling references was refused; the previous one is still served."""

    def __init__(self, node_id: str, problems: list[str]) -> None:
        self.node_id = node_id
        self.problems = problems
        listed = "; ".join(problems)
        super().__init__(f"snapshot for {node_id} not published, it has dangling references: {listed}")


def changed_types(old: Snapshot | None, new: Snapshot | None) -> frozenset[TypeUrl]:
    """The types whose version differs between two snapshots (all of a snapshot's types vs. none)."""
    if old is None or new is None:
        return frozenset() if old is new else frozenset(PUSH_ORDER)
    return frozenset(t for t in PUSH_ORDER if old.version(t) != new.version(t))


class SnapshotCache:
    """The last good snapshot per node id, and the watchers to wake when one changes."""

    def __init__(self) -> None:
        self._snapshots: dict[str, Snapshot] = {}
        self._watchers: dict[str, dict[int, Watcher]] = {}
        self._ids = itertools.count(1)

    def set(self, node_id: str, snapshot: Snapshot) -> frozenset[TypeUrl]:
        """Publish ``snapshot`` for ``node_id`` if it is consistent; return the types that changed.

        Raises InconsistentSnapshotError (keeping the previous snapshot) when references dangle.
        Watchers of the node are called only if at least one type's version changed.
        """
        problems = check_consistent(snapshot)
        if problems:
            raise InconsistentSnapshotError(node_id, problems)
        changed = changed_types(self._snapshots.get(node_id), snapshot)
        self._snapshots[node_id] = snapshot
        if changed:
            self._notify(node_id, changed)
        return changed

    def get(self, node_id: str) -> Snapshot | None:
        """The snapshot served to ``node_id``, if any."""
        return self._snapshots.get(node_id)

    def clear(self, node_id: str) -> None:
        """Forget the node's snapshot. Open streams keep the proxy's current config and wait for a new one."""
        self._snapshots.pop(node_id, None)

    def nodes(self) -> list[str]:
        """Node ids that have a snapshot, sorted."""
        return sorted(self._snapshots)

    def watch(self, node_id: str, watcher: Watcher) -> Callable[[], None]:
        """Call ``watcher`` whenever a type's version changes for ``node_id``; returns the cancel function.

        Watches outlive :meth:`clear`: a stream keeps watching a node whose snapshot is rebuilt.
        """
        key = next(self._ids)
        self._watchers.setdefault(node_id, {})[key] = watcher

        def cancel() -> None:
            watchers = self._watchers.get(node_id, {})
            watchers.pop(key, None)
            if not watchers:
                self._watchers.pop(node_id, None)

        return cancel

    def watcher_count(self, node_id: str) -> int:
        """How many watches are open for ``node_id`` (for tests and debug pages)."""
        return len(self._watchers.get(node_id, {}))

    def _notify(self, node_id: str, changed: frozenset[TypeUrl]) -> None:
        for watcher in list(self._watchers.get(node_id, {}).values()):
            watcher(changed)
