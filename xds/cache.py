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
    """An immutable set of resources for one proxy, grouped by type, with per-type content versions."""

    __slots__ = ("_by_type", "_versions")

    def __init__(self, resources: Iterable[Resource] = ()) -> None:
        """Group ``resources`` by type; the same name twice with different content is a ValueError."""
        by_type: dict[TypeUrl, dict[str, Resource]] = {t: {} for t in PUSH_ORDER}
        for resource in resources:
            named = by_type[resource.type_url]
            other = named.setdefault(resource.name, resource)
            if other != resource:
                raise ValueError(f"two different {resource.type_url.kind}s named {resource.name!r}")
        self._by_type = {t: MappingProxyType(named) for t, named in by_type.items()}
        self._versions = {t: content_version(named.values()) for t, named in by_type.items()}

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

    def __iter__(self) -> Iterator[Resource]:
        return itertools.chain.from_iterable(named.values() for named in self._by_type.values())

    def __len__(self) -> int:
        return sum(len(named) for named in self._by_type.values())

    def __repr__(self) -> str:
        counts = ", ".join(f"{t.short}={len(self._by_type[t])}" for t in PUSH_ORDER)
        return f"Snapshot({counts})"


def check_consistent(snapshot: Snapshot) -> list[str]:
    """Every dangling reference in ``snapshot``, as sentences, sorted; empty when it is consistent.

    Unreferenced extra resources are not problems (a spare ClusterLoadAssignment harms nothing).
    """
    problems = set()
    for resource in snapshot:
        for type_url, name in resource.refs:
            if name in snapshot.items(type_url):
                continue
            target = type_url_of(type_url)
            if name not in snapshot.items(target):
                problems.add(
                    f"{resource.type_url.kind} {resource.name} names {target.kind} {name} "
                    f"which is not in {target.short}"
                )
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
