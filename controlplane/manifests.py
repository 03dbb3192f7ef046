"""Reading manifests from files and directories: the I/O edge of every command that takes ``-f``.

:func:`load` reads YAML or JSON files (a directory means every ``*.yaml``, ``*.yml`` and ``*.json``
below it, in name order), splits multi-document YAML, and sorts what it finds into mesh objects,
core/v1 Services (which VirtualDeploymentBindings select), core/v1 Secrets (gateway certificates,
decoded) and findings. One bad document never hides the others: each is parsed on its own, and a
problem names the file and document it came from. Other Kubernetes kinds (Namespaces, Deployments …)
are kept aside untouched for the commands that need them; ``List`` objects are unpacked.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshplane.controlplane.model import API_GROUP, AnyObject, ObjectKey, parse_object
from meshplane.controlplane.problems import Problem, error
from meshplane.controlplane.wire import FrozenMap
from meshplane.controlplane.world import KubeSecret, KubeService

SUFFIXES = (".yaml", ".yml", ".json")
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: about 10x faster


@dataclass(frozen=True)
class Source:
    """Where a document came from: a file and the document's index in it (0-based)."""

    path: str
    index: int

    def __str__(self) -> str:
        return f"{self.path}#{self.index}" if self.index else self.path


@dataclass(frozen=True)
class Finding:
    """A problem about one document, with what is known of the object it describes."""

    source: Source
    kind: str
    namespace: str
    name: str
    problem: Problem

    def line(self) -> str:
        """``Kind namespace/name: path: message`` — the format every command prints."""
        tag = "warning: " if not self.problem.is_error else ""
        where = f"{self.problem.path}: " if self.problem.path else ""
        return f"{self.kind} {self.namespace}/{self.name}: {where}{tag}{self.problem.message}"


@dataclass
class Loaded:
    """Everything read from a set of paths."""

    objects: list[tuple[Source, AnyObject]] = field(default_factory=list)
    services: list[KubeService] = field(default_factory=list)
    secrets: list[KubeSecret] = field(default_factory=list)
    others: list[tuple[Source, Mapping[str, Any]]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


@dataclass
class ParseCache:
    """What loading the same paths again can reuse: each file's documents while its text is unchanged,
    and each document's parsed object. A directory where one file of hundreds changed is then read,
    not parsed again (the control plane re-loads its config directory on every change).

    Documents are shared between loads and never modified; objects are keyed by their document's id,
    which the held document keeps unique.
    """

    files: dict[str, tuple[str, list[Any]]] = field(default_factory=dict)
    objects: dict[int, tuple[Mapping[str, Any], tuple[AnyObject | None, list[Problem]]]] = field(default_factory=dict)
    sorted: dict[str, tuple[list[Any], Loaded]] = field(default_factory=dict)  # path → its documents, sorted

    def parse(self, raw: Mapping[str, Any]) -> tuple[AnyObject | None, list[Problem]]:
        held = self.objects.get(id(raw))
        if held is None or held[0] is not raw:
            held = self.objects[id(raw)] = (raw, parse_object(raw))
        return held[1]

    def keep_only(self, paths: set[str]) -> None:
        """Forget files that are gone, and objects of documents no kept file holds."""
        self.files = {path: entry for path, entry in self.files.items() if path in paths}
        self.sorted = {path: entry for path, entry in self.sorted.items() if path in paths}
        live = {id(item) for _, docs in self.files.values() for doc in docs for item in _unpack(doc)}
        self.objects = {key: held for key, held in self.objects.items() if key in live}


def load(paths: Iterable[str | Path], cache: ParseCache | None = None) -> Loaded:
    """Read and sort every document under ``paths``; never raises for bad input. ``cache`` (kept by the
    caller between loads) skips parsing and sorting the files that did not change.

    An object defined twice is used where it is first defined (files in name order, documents in order);
    each later definition is a finding.
    """
    loaded = Loaded()
    seen: dict[ObjectKey, Source] = {}
    cache = cache if cache is not None else ParseCache()
    read: set[str] = set()
    for path, docs in _documents(paths, loaded, cache, read):
        held = cache.sorted.get(path)
        if held is None or held[0] is not docs:
            held = cache.sorted[path] = (docs, _sort_file(path, docs, cache))
        _merge(loaded, held[1], seen)
    cache.keep_only(read)
    return loaded


def _sort_file(path: str, docs: list[Any], cache: ParseCache) -> Loaded:
    """One file's documents sorted, each object kept even if defined twice (:func:`_merge` decides)."""
    loaded = Loaded()
    for index, doc in enumerate(docs):
        if doc is not None:
            for item in _unpack(doc):
                _sort(Source(path, index), item, loaded, cache)
    return loaded


def _merge(loaded: Loaded, file: Loaded, seen: dict[ObjectKey, Source]) -> None:
    """Add one file's sorted documents; an object already defined is a finding, and the first one stays."""
    loaded.findings += file.findings
    loaded.services += file.services
    loaded.secrets += file.secrets
    loaded.others += file.others
    for source, obj in file.objects:
        if obj.key in seen:
            message = f"defined twice: also in {seen[obj.key]}; the first definition is used"
            loaded.findings.append(Finding(source, obj.kind.value, obj.namespace, obj.name,
                                           error("metadata.name", message)))
            continue
        seen[obj.key] = source
        loaded.objects.append((source, obj))


def _documents(paths: Iterable[str | Path], loaded: Loaded, cache: ParseCache,
               read: set[str]) -> Iterator[tuple[str, list[Any]]]:
    """Each readable file's documents (the very list of the last load while its text is unchanged)."""
    for path in _files(paths, loaded):
        try:
            text = path.read_text(encoding="utf-8")
            held = cache.files.get(str(path))
            docs = held[1] if held is not None and held[0] == text else list(yaml.load_all(text, Loader=_LOADER))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            loaded.findings.append(_file_finding(str(path), _describe_read_error(exc)))
            continue
        cache.files[str(path)] = (text, docs)
        read.add(str(path))
        yield str(path), docs


def _files(paths: Iterable[str | Path], loaded: Loaded) -> Iterator[Path]:
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        elif path.is_file():
            yield path
        else:
            loaded.findings.append(_file_finding(str(path), "no such file or directory"))


def _describe_read_error(exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    reason = getattr(exc, "problem", None) or str(exc)
    return f"cannot be read: {where}{reason}"


def _file_finding(path: str, message: str) -> Finding:
    return Finding(Source(path, 0), "File", "-", path, error("", message))


def _unpack(raw: Any) -> list[Any]:
    """A ``kind: List`` (what ``kubectl get -o yaml`` prints) holds its objects under ``items``."""
    if isinstance(raw, Mapping) and raw.get("kind") == "List" and isinstance(raw.get("items"), list):
        return list(raw["items"])
    return [raw]


def _sort(source: Source, raw: Any, loaded: Loaded, cache: ParseCache) -> None:
    if not isinstance(raw, Mapping):
        loaded.findings.append(Finding(source, "Document", "-", str(source), error("", "a manifest must be an object")))
        return
    api_version = str(raw.get("apiVersion", ""))
    if api_version.split("/", maxsplit=1)[0] == API_GROUP:
        _sort_mesh_object(source, raw, loaded, cache)
    elif api_version == "v1" and raw.get("kind") == "Service":
        _sort_service(source, raw, loaded)
    elif api_version == "v1" and raw.get("kind") == "Secret":
        _sort_secret(source, raw, loaded)
    else:
        loaded.others.append((source, raw))


def _sort_mesh_object(source: Source, raw: Mapping[str, Any], loaded: Loaded, cache: ParseCache) -> None:
    obj, problems = cache.parse(raw)
    if problems:
        kind, namespace, name = identity(raw)
        loaded.findings += [Finding(source, kind, namespace, name, p) for p in problems]
    if obj is not None:
        loaded.objects.append((source, obj))


def _sort_service(source: Source, raw: Mapping[str, Any], loaded: Loaded) -> None:
    _, namespace, name = identity(raw)
    spec = raw.get("spec") if isinstance(raw.get("spec"), Mapping) else {}
    selector = spec.get("selector") if isinstance(spec, Mapping) else None
    if not isinstance(selector, Mapping) or not all(isinstance(v, str) for v in selector.values()):
        selector = {}
    deleting = isinstance(raw.get("metadata"), Mapping) and raw["metadata"].get("deletionTimestamp") is not None
    loaded.services.append(KubeService(namespace, name, FrozenMap(selector), deleting))


def _sort_secret(source: Source, raw: Mapping[str, Any], loaded: Loaded) -> None:
    """A Secret's ``data`` (base64) and ``stringData`` (text, winning as the API server merges them)."""
    _, namespace, name = identity(raw)
    values: dict[str, bytes] = {}
    data, text = raw.get("data") or {}, raw.get("stringData") or {}
    if not isinstance(data, Mapping) or not isinstance(text, Mapping):
        loaded.findings.append(Finding(source, "Secret", namespace, name, error("data", "must map keys to values")))
        return
    for key, value in data.items():
        try:
            values[str(key)] = base64.b64decode(str(value), validate=True)
        except binascii.Error:
            loaded.findings.append(Finding(source, "Secret", namespace, name,
                                           error(f"data.{key}", "is not base64 (use stringData for text)")))
            return
    values.update({str(k): str(v).encode() for k, v in text.items()})
    kind = raw.get("type") if isinstance(raw.get("type"), str) else "Opaque"
    loaded.secrets.append(KubeSecret(namespace, name, str(kind), tuple(sorted(values.items()))))


def identity(raw: Mapping[str, Any]) -> tuple[str, str, str]:
    """Kind, namespace and name of a raw manifest, as far as they can be told (for messages)."""
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), Mapping) else {}
    assert isinstance(meta, Mapping)
    kind = raw.get("kind") if isinstance(raw.get("kind"), str) and raw.get("kind") else "Object"
    name = meta.get("name") if isinstance(meta.get("name"), str) and meta.get("name") else "<unnamed>"
    namespace = meta.get("namespace") if isinstance(meta.get("namespace"), str) and meta.get("namespace") else "default"
    return str(kind), str(namespace), str(name)
