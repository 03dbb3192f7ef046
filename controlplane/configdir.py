"""The standalone source: every YAML manifest under a directory, applied object by object.

:class:`ConfigDir` keeps the *accepted* objects — what the mesh is built from — and moves them
towards what the files say, one object at a time, with the same :func:`validate` that backs the
admission webhook:

* a new or changed object is accepted only if it is valid against the accepted world; otherwise the
  previously accepted version (if any) stays in force and the problems are kept for reporting. One bad
  object never disturbs the others;
* objects are applied parents first (Mesh before VirtualService …), so one edit that adds a parent
  and its child works in one pass;
* ``metadata.generation`` behaves as on a Kubernetes API server: 1 at creation, +1 on every spec
  change;
* an object removed from the files is marked as being deleted and stays (still served) while other
  objects refer to it — like a finalizer — and goes once nothing does (:func:`status.can_finalize`);
* a refused change is tried again on the next :meth:`ConfigDir.sync`, because some refusals are
  transient (an update is refused while the object's state is settling).

Reading the files is the only I/O; :meth:`ConfigDir.sync` reports whether anything changed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshplane.controlplane import manifests, status
from meshplane.controlplane.manifests import Finding, Source
from meshplane.controlplane.model import AnyObject, Kind, ObjectKey, Status
from meshplane.controlplane.problems import Problem
from meshplane.controlplane.validation import validate
from meshplane.controlplane.world import Index

log = logging.getLogger(__name__)

# Parents before children: what validation of a child looks up is already applied.
APPLY_ORDER = status.DEPENDENCY_ORDER
_ORDER = {kind: i for i, kind in enumerate(APPLY_ORDER)}


@dataclass
class ConfigDir:
    """The accepted objects of a config directory, and why the others were not accepted."""

    path: Path
    world: Index = field(default_factory=lambda: Index(authoritative=True, knows_services=False))
    rejected: dict[ObjectKey, list[Finding]] = field(default_factory=dict)
    file_findings: list[Finding] = field(default_factory=list)
    namespaces: dict[str, dict[str, str]] = field(default_factory=dict)  # v1 Namespace name → its labels
    _fingerprint: tuple[tuple[str, int, int], ...] = ()
    _parsed: manifests.ParseCache = field(default_factory=manifests.ParseCache)
    _in_force: dict[ObjectKey, AnyObject] = field(default_factory=dict)  # key → the parsed object the world holds
    _wanted: dict[ObjectKey, tuple[Source, AnyObject]] = field(default_factory=dict)  # what the files said last
    _deleting_at: tuple[int, bool] = (-1, False)  # world version, whether an object was being deleted then

    def sync(self, *, force: bool = False) -> bool:
        """Re-read the directory if it changed (or a refusal may now pass); True if the world changed."""
        fingerprint = self._scan()
        if not force and fingerprint == self._fingerprint and not self.rejected and not self._deleting():
            return False
        self._fingerprint = fingerprint
        loaded = manifests.load([self.path], self._parsed)
        self.file_findings = loaded.findings
        for finding in loaded.findings:
            log.warning("%s: %s", finding.source, finding.line())
        version = self.world.version  # moved by every put and removal; accepted objects are put only when new
        self.world.set_services(loaded.services)
        self.world.set_secrets(loaded.secrets)
        namespaces, self.namespaces = self.namespaces, _namespaces(loaded.others)
        self._apply(loaded.objects)
        return self.world.version != version or namespaces != self.namespaces

    def retry(self) -> bool:
        """Apply again what the last read refused, and re-check the held deletions, without reading the files:
        the statuses the gates read may have moved (:meth:`waiting`). True if the world changed. At 5,000
        objects a whole :meth:`sync` took 50 to 70 ms, and an edit refused on stale statuses paid it twice."""
        version = self.world.version
        refused, self.rejected = self.rejected, {}
        for key in sorted(refused, key=lambda k: (_ORDER[k.kind], k)):
            if key in self._wanted:
                self._apply_one(*self._wanted[key])
        for key in [o.key for o in self.world.all() if o.deleting and o.key not in self._wanted]:
            self._remove(key)
        return self.world.version != version

    def changed(self) -> bool:
        """Whether the files differ from what was last read (a cheap stat of the directory)."""
        return self._scan() != self._fingerprint

    def waiting(self) -> bool:
        """Whether a refused edit or a held deletion may pass once statuses move (then :meth:`sync` retries).

        Update gates and finalizers read statuses, which the files do not carry: a status pass that
        wrote one must lead to another :meth:`sync`, or a refused edit waits for the next file change.
        """
        return bool(self.rejected) or self._deleting()

    def waiting_on(self) -> set[ObjectKey]:
        """The objects whose statuses the waiting edits and deletions read (:meth:`waiting`): each refused
        object's accepted version, and each object being deleted."""
        return set(self.rejected) | {o.key for o in self.world.all() if o.deleting}

    def set_status(self, statuses: dict[ObjectKey, Status]) -> None:
        """Record computed statuses on the accepted objects (update gates read them)."""
        for key, new in statuses.items():
            obj = self.world.get(key)
            if obj is not None and obj.status is not new and obj.status != new:  # a reused status is the same object
                self.world.put(replace(obj, status=new))

    def _scan(self) -> tuple[tuple[str, int, int], ...]:
        found = []
        for path in sorted(self.path.rglob("*")) if self.path.is_dir() else []:
            if path.is_file() and path.suffix in manifests.SUFFIXES:
                stat = path.stat()
                found.append((str(path), stat.st_mtime_ns, stat.st_size))
        return tuple(found)

    def _deleting(self) -> bool:
        """Whether some object is being deleted; found once per world version (each round asks, twice)."""
        if self._deleting_at[0] != self.world.version:
            self._deleting_at = (self.world.version, any(o.deleting for o in self.world.all()))
        return self._deleting_at[1]

    def _apply(self, objects: list[tuple[Source, AnyObject]]) -> None:
        """Apply what the files say, parents first; the objects already in force (parsed from unchanged
        documents: the very same objects) are skipped before sorting, so an edit sorts what it changed."""
        wanted = self._wanted = {obj.key: (source, obj) for source, obj in objects}
        self.rejected = {}
        world, in_force = self.world, self._in_force
        pending = [key for key, (_, obj) in wanted.items() if key.kind in _ORDER
                   and (in_force.get(key) is not obj or (old := world.get(key)) is None or old.deleting)]
        for key in sorted(pending, key=lambda k: (_ORDER[k.kind], k)):
            self._apply_one(*wanted[key])
        for key in [o.key for o in self.world.all() if o.key not in wanted]:
            self._remove(key)

    def _apply_one(self, source: Source, new: AnyObject) -> None:
        """Accept, or refuse, one object read from the files.

        An object parsed from an unchanged document is the very object of the last re-read
        (:class:`manifests.ParseCache`), so what is already in force is skipped by identity: at 5,000
        objects, comparing each spec took a tenth of a second of every round.
        """
        old = self.world.get(new.key)
        if old is not None and self._in_force.get(new.key) is new and not old.deleting:
            return
        if old is not None and old.spec == new.spec and old.metadata.labels == new.metadata.labels \
                and old.metadata.annotations == new.metadata.annotations and not old.deleting:
            self._in_force[new.key] = new
            return
        candidate = _with_metadata(old, new)
        problems = [p for p in validate(old, candidate, self.world) if p.is_error]
        if problems:
            self._reject(source, candidate, problems, kept=old is not None)
            return
        self.world.put(candidate)
        self._in_force[new.key] = new
        log.info("%s %s", "updated" if old else "created", candidate.key)

    def _reject(self, source: Source, obj: AnyObject, problems: list[Problem], *, kept: bool) -> None:
        self.rejected[obj.key] = [Finding(source, obj.kind.value, obj.namespace, obj.name, p) for p in problems]
        note = "the previously accepted version stays in force" if kept else "it is not applied"
        for finding in self.rejected[obj.key]:
            log.warning("%s: %s (%s)", source, finding.line(), note)

    def _remove(self, key: ObjectKey) -> None:
        self._in_force.pop(key, None)
        obj = self.world.get(key)
        if obj is None:
            return
        if not obj.deleting:
            obj = replace(obj, metadata=replace(obj.metadata, deletion_timestamp=_now()))
            self.world.put(obj)
            log.info("deleting %s", key)
        if status.can_finalize(obj, self.world):
            self.world.remove(key)
            log.info("deleted %s", key)

    def objects(self) -> Iterator[AnyObject]:
        return iter(self.world.all())

    def kinds(self) -> dict[Kind, int]:
        return {kind: len(self.world.objects(kind)) for kind in Kind}


def _with_metadata(old: AnyObject | None, new: AnyObject) -> AnyObject:
    """The new object as an API server would store it: generation, creation time and status carried."""
    if old is None:
        meta = replace(new.metadata, generation=1, creation_timestamp=_now(), deletion_timestamp=None)
        return replace(new, metadata=meta, status=Status())
    generation = old.metadata.generation + (old.spec != new.spec)
    meta = replace(new.metadata, generation=generation, creation_timestamp=old.metadata.creation_timestamp,
                   deletion_timestamp=None)
    return replace(new, metadata=meta, status=old.status)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _namespaces(others: list[tuple[Source, Mapping[str, Any]]]) -> dict[str, dict[str, str]]:
    """The v1 Namespaces among the other documents, with their labels (what injection decides on)."""
    found: dict[str, dict[str, str]] = {}
    for _, raw in others:
        metadata = raw.get("metadata")
        if raw.get("apiVersion") == "v1" and raw.get("kind") == "Namespace" and isinstance(metadata, Mapping):
            labels = metadata.get("labels") or {}
            if isinstance(metadata.get("name"), str) and isinstance(labels, Mapping):
                found[metadata["name"]] = {str(k): str(v) for k, v in labels.items()}
    return found
