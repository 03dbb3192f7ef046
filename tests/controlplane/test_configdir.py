"""The standalone config directory: object by object, last good version kept, deletion waits."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from meshplane.controlplane.configdir import ConfigDir
from meshplane.controlplane.model import ConditionStatus, Kind, ObjectKey
from meshplane.controlplane.status import DataPlaneState, compute_status
from tests import data

MESH = ObjectKey(Kind.MESH, "shop", "shop-mesh")
VS = ObjectKey(Kind.VIRTUAL_SERVICE, "shop", "reviews")
VSRT = ObjectKey(Kind.VIRTUAL_SERVICE_ROUTE_TABLE, "shop", "reviews-canary")


def write_canary(folder: Path, **changes: object) -> None:
    """The canary set, one file per object, with ``changes`` applied to the route table's first rule."""
    for doc in data.manifests("canary"):
        if doc["kind"] == "VirtualServiceRouteTable" and changes:
            doc["spec"]["routeRules"][0]["httpRoute"].update(changes)
        write(folder / f"{doc['kind']}-{doc['metadata']['name']}.yaml", doc)


def write(path: Path, doc: object) -> None:
    path.write_text(yaml.safe_dump(doc))
    stat = path.stat()  # make the change visible even within one mtime tick
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def test_a_directory_is_applied_parents_first_in_one_pass(tmp_path: Path) -> None:
    write_canary(tmp_path)
    source = ConfigDir(tmp_path)
    assert source.sync() is True
    assert source.rejected == {}
    assert len(source.world) == len(data.manifests("canary"))
    assert source.world.get(MESH) is not None
    assert source.sync() is False, "nothing changed on disk"


def test_an_invalid_edit_keeps_the_last_good_version_and_says_why(tmp_path: Path) -> None:
    write_canary(tmp_path)
    source = ConfigDir(tmp_path)
    source.sync()
    before = source.world.get(VSRT)
    bad = data.manifests("canary")
    table = next(d for d in bad if d["kind"] == "VirtualServiceRouteTable")
    table["spec"]["routeRules"][0]["httpRoute"]["destinations"][1]["port"] = 9999
    write(tmp_path / "VirtualServiceRouteTable-reviews-canary.yaml", table)
    assert source.sync() is False
    assert source.world.get(VSRT) == before
    [finding] = source.rejected[VSRT]
    assert finding.problem.path == "spec.routeRules[0].httpRoute.destinations[1].port"
    assert len(source.world) == len(data.manifests("canary")), "the other objects are untouched"


def test_a_new_object_that_is_invalid_is_not_applied_and_others_are(tmp_path: Path) -> None:
    write_canary(tmp_path)
    vs = next(d for d in data.manifests("canary") if d["kind"] == "VirtualService")
    vs["metadata"]["name"] = "ratings"
    vs["spec"]["mtls"] = {"mode": "DISABLED"}  # below the mesh's PERMISSIVE floor
    write(tmp_path / "ratings.yaml", vs)
    source = ConfigDir(tmp_path)
    source.sync()
    assert source.world.get(ObjectKey(Kind.VIRTUAL_SERVICE, "shop", "ratings")) is None
    assert [f.problem.path for f in source.rejected[ObjectKey(Kind.VIRTUAL_SERVICE, "shop", "ratings")]] == \
        ["spec.mtls.mode"]
    assert source.world.get(VS) is not None


def test_generation_counts_spec_changes_like_an_api_server(tmp_path: Path) -> None:
    write_canary(tmp_path)
    source = ConfigDir(tmp_path)
    source.sync()
    created = source.world.get(VSRT)
    assert created is not None and created.metadata.generation == 1
    assert created.metadata.creation_timestamp is not None
    write_canary(tmp_path, path="/v2")
    assert source.sync() is True
    changed = source.world.get(VSRT)
    assert changed is not None and changed.metadata.generation == 2
    assert changed.spec.route_rules[0].http_route.path == "/v2"


def test_a_removed_parent_waits_for_its_children_then_goes(tmp_path: Path) -> None:
    write_canary(tmp_path)
    source = ConfigDir(tmp_path)
    source.sync()
    (tmp_path / "VirtualService-reviews.yaml").unlink()
    source.sync()
    waiting = source.world.get(VS)
    assert waiting is not None and waiting.deleting, "still referenced by deployments and route tables"
    for path in tmp_path.iterdir():
        if path.name.startswith(("VirtualDeployment", "VirtualServiceRouteTable-", "AccessPolicy-",
                                 "IngressGatewayRouteTable-")):
            path.unlink()
    for _ in range(4):  # bindings go first, then deployments, then the service
        source.sync()
    assert source.world.get(VS) is None
    assert source.world.get(MESH) is not None


def test_an_unreadable_file_is_reported_and_the_rest_applied(tmp_path: Path) -> None:
    write_canary(tmp_path)
    (tmp_path / "broken.yaml").write_text("kind: [\n")
    source = ConfigDir(tmp_path)
    source.sync()
    assert len(source.world) == len(data.manifests("canary"))
    assert any("broken.yaml" in f.line() for f in source.file_findings)


def test_reloading_parses_only_the_files_that_changed(tmp_path: Path) -> None:
    """The parse cache: an unchanged file's documents and objects are reused, a changed one is parsed
    again, a removed one is forgotten; what load returns is the same either way."""
    from meshplane.controlplane import manifests

    write_canary(tmp_path)
    cache = manifests.ParseCache()
    first = manifests.load([tmp_path], cache)
    table = tmp_path / "VirtualServiceRouteTable-reviews-canary.yaml"
    kept = {path: docs for path, (_, docs) in cache.files.items() if path != str(table)}
    write_canary(tmp_path, path="/other")
    (tmp_path / "AccessPolicy-shop-policy.yaml").unlink()
    second = manifests.load([tmp_path], cache)
    assert all(cache.files[path][1] is docs for path, docs in kept.items() if path in cache.files)
    assert str(tmp_path / "AccessPolicy-shop-policy.yaml") not in cache.files
    assert len(cache.objects) == len(second.objects)
    uncached = manifests.load([tmp_path])
    assert [(s, o) for s, o in second.objects] == [(s, o) for s, o in uncached.objects]
    changed = next(o for _, o in second.objects if o.key.name == "reviews-canary")
    assert changed.spec.route_rules[0].http_route.path == "/other"
    assert len(first.objects) == len(second.objects) + 1


def test_an_unchanged_file_is_not_sorted_again_but_still_loses_to_an_earlier_definition(tmp_path: Path) -> None:
    """Sorting is cached per file; which definition of an object wins is still decided across all files."""
    from meshplane.controlplane import manifests

    write_canary(tmp_path)
    cache = manifests.ParseCache()
    manifests.load([tmp_path], cache)
    mesh_file = str(tmp_path / "Mesh-shop-mesh.yaml")
    sorted_before = cache.sorted[mesh_file][1]
    [doc] = [d for d in data.manifests("canary") if d["kind"] == "Mesh"]
    write(tmp_path / "A-first.yaml", doc)  # sorts before Mesh-shop-mesh.yaml: this definition wins now
    loaded = manifests.load([tmp_path], cache)
    assert cache.sorted[mesh_file][1] is sorted_before
    [mesh_source] = [s for s, o in loaded.objects if o.key == MESH]
    assert mesh_source.path.endswith("A-first.yaml")
    assert [f.source.path for f in loaded.findings if "defined twice" in f.problem.message] == [mesh_file]



def test_retry_applies_what_the_last_read_refused_once_the_gate_opens(tmp_path: Path) -> None:
    """An edit refused on a status (ServiceMeshActive Unknown) passes on :meth:`ConfigDir.retry` once the
    statuses say so; retry reads no file, so an edit made since waits for the next sync."""
    write_canary(tmp_path)
    source = ConfigDir(tmp_path)
    source.sync()
    behind = {VSRT: DataPlaneState(ConditionStatus.UNKNOWN, "waiting for proxy x to acknowledge")}
    source.set_status(compute_status(source.world, now="2026-01-01T00:00:00Z", data_plane=behind))
    write_canary(tmp_path, path="/v2")
    assert source.sync() is False and VSRT in source.rejected, "refused: the last change is being applied"
    assert source.retry() is False and VSRT in source.rejected, "nothing moved: still refused"
    source.set_status(compute_status(source.world, now="2026-01-01T00:00:00Z"))
    write_canary(tmp_path, path="/v3")
    assert source.retry() is True and source.rejected == {}
    table = source.world.get(VSRT)
    assert table is not None and table.spec.route_rules[0].http_route.path == "/v2"
    assert source.sync() is True
    table = source.world.get(VSRT)
    assert table is not None and table.spec.route_rules[0].http_route.path == "/v3"
