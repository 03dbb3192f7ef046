"""Properties: no input crashes parsing or validation; the only outcomes are a model or problems.

Manifests come from OCI's samples and our examples, then are mutated at random places: keys dropped,
values replaced by arbitrary JSON, unknown keys added, lists emptied. Every parse result must be either
a model with no problems or no model with at least one problem, and every model must survive
validation (create, update against the original, delete) and a dump/parse round trip; any world of
valid objects gets a status for every object that is itself valid against the schema.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshplane.controlplane import wire
from meshplane.controlplane.model import KINDS, REASON_PATTERN, AnyObject, Status, dump_object, parse_object
from meshplane.controlplane.problems import Problem
from meshplane.controlplane.status import compute_status
from meshplane.controlplane.validation import validate
from meshplane.controlplane.world import Index

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DIRS = [ROOT.parent / "shared" / "osok" / "samples", ROOT / "examples"]
MESH_GROUP = "servicemesh.oci.oracle.com/"
REASON = re.compile(REASON_PATTERN)


def _base_manifests() -> list[dict[str, Any]]:
    found = []
    for folder in SAMPLE_DIRS:
        for path in sorted(folder.rglob("*.yaml")) if folder.is_dir() else []:
            found += [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)
                      and str(d.get("apiVersion", "")).startswith(MESH_GROUP)]
    assert found, "no sample manifests found"
    return found


BASES = _base_manifests()
WORLD = Index([o for o in (parse_object(b)[0] for b in BASES) if o is not None], authoritative=False)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _containers(node: Any, out: list[Any]) -> list[Any]:
    """Every dict and list inside ``node`` (the places a mutation can happen)."""
    if isinstance(node, dict | list):
        out.append(node)
        for child in node.values() if isinstance(node, dict) else node:
            _containers(child, out)
    return out


@st.composite
def mutated_manifests(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    original = draw(st.sampled_from(BASES))
    manifest = copy.deepcopy(original)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        target = draw(st.sampled_from(_containers(manifest, [])))
        _mutate(draw, target)
    return original, manifest


def _mutate(draw: st.DrawFn, target: Any) -> None:
    action = draw(st.sampled_from(["replace", "drop", "add", "empty"]))
    if isinstance(target, dict) and target and action in ("replace", "drop"):
        key = draw(st.sampled_from(sorted(target, key=str)))
        if action == "drop":
            del target[key]
        else:
            target[key] = draw(json_values)
    elif isinstance(target, dict):
        target[draw(st.text(min_size=1, max_size=12))] = draw(json_values)
    elif isinstance(target, list) and target and action != "empty":
        target[draw(st.integers(min_value=0, max_value=len(target) - 1))] = draw(json_values)
    elif isinstance(target, list):
        target.clear()


def _check_outcome(obj: AnyObject | None, problems: list[Problem]) -> None:
    assert all(isinstance(p, Problem) and p.message for p in problems)
    assert (obj is None) == bool(problems), "a model comes with no problems, and no model with at least one"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_never_crashes_parsing(raw: Any) -> None:
    _check_outcome(*parse_object(raw))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(BASES), json_values)
def test_an_arbitrary_spec_never_crashes_parsing(base: dict[str, Any], spec: Any) -> None:
    _check_outcome(*parse_object({**base, "spec": spec}))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_manifests())
def test_mutated_manifests_never_crash_parsing_or_validation(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    original, manifest = pair
    obj, problems = parse_object(manifest)
    _check_outcome(obj, problems)
    if obj is None:
        return
    old = parse_object(original)[0]
    for before, after in ((None, obj), (old, obj), (obj, None)):
        found = validate(before, after, WORLD)
        assert all(isinstance(p, Problem) and p.path is not None and p.message for p in found)
    again, again_problems = parse_object(dump_object(obj))
    assert again_problems == [] and again == obj, "dump then parse gives the same model"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated_manifests(), min_size=1, max_size=12))
def test_any_world_of_valid_objects_gets_a_well_formed_status(pairs: list[tuple[dict[str, Any], Any]]) -> None:
    objects = [o for o in (parse_object(m)[0] for _, m in pairs) if o is not None]
    objects += [o for o in (parse_object(b)[0] for b in BASES) if o is not None]
    world = Index(objects)
    statuses = compute_status(world, now="2026-01-01T00:00:00Z")
    assert set(statuses) == {o.key for o in world.all()}
    for obj in world.all():
        conditions = statuses[obj.key].conditions
        assert tuple(c.type for c in conditions) == KINDS[obj.kind].conditions
        assert all(REASON.fullmatch(c.reason) and len(c.message) <= 32768 for c in conditions)
        status, problems = wire.parse(Status, wire.dump(statuses[obj.key]), "status")
        assert problems == [] and status == statuses[obj.key], "a computed status is valid against the schema"
