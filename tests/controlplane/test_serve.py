"""Admitting proxies from their node metadata, and what proxies report feeding the objects' status."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.core.v3 import base_pb2

from meshplane.controlplane import ir, serve
from meshplane.controlplane.build import build
from meshplane.controlplane.configdir import ConfigDir
from meshplane.controlplane.credentials import Credentials
from meshplane.controlplane.model import ConditionStatus, Kind, ObjectKey
from meshplane.controlplane.reconcile import Controller
from meshplane.controlplane.serve import Renderer, data_plane_state, workload_from_node
from meshplane.xds import names, translate
from meshplane.xds.resources import TypeUrl
from meshplane.xds.server import StreamRefusedError, TypeSync
from tests import data
from tests.controlplane.test_configdir import write, write_canary
from tests.controlplane.test_reconcile import V1, V2, _client_mesh, _service


def node(metadata: dict[str, Any]) -> Any:
    message = base_pb2.Node(id="reviews-v1-a", cluster="shop/reviews-v1")
    message.metadata.update(metadata)
    return message


@pytest.mark.parametrize("port", ["19080", 19080, 19080.0, "19080.0"], ids=["string", "int", "double", "double-text"])
def test_application_ports_are_read_in_every_form_metadata_may_carry(port: object) -> None:
    workload = workload_from_node(node({"meshplane.deployment": "shop/reviews-v1", "meshplane.address": "127.0.0.11",
                                        "meshplane.app_ports": {"9080": port}}))
    assert workload == ir.Workload("reviews-v1-a", "shop/reviews-v1", "127.0.0.11", ir.Capture.EXPLICIT,
                                   ((9080, 19080),))


@pytest.mark.parametrize(("metadata", "message"), [
    ({}, "does not name its virtual deployment"),
    ({"meshplane.deployment": "shop/reviews-v1", "meshplane.address": "127.0.0.11",
      "meshplane.app_ports": {"9080": "lots"}}, "malformed metadata"),
    ({"meshplane.deployment": "shop/reviews-v1", "meshplane.address": "127.0.0.11",
      "meshplane.capture": "sideways"}, "malformed metadata"),
], ids=["no-deployment", "bad-port", "bad-capture"])
def test_a_node_whose_metadata_cannot_be_served_is_refused_with_what_to_do(metadata: dict[str, Any],
                                                                          message: str) -> None:
    with pytest.raises(StreamRefusedError, match=message) as refused:
        workload_from_node(node(metadata))
    assert "meshplane bootstrap" in str(refused.value)


def canary_controller(tmp_path: Path) -> Controller[None]:
    write_canary(tmp_path)
    ctl: Controller[None] = Controller(ConfigDir(tmp_path), lambda config, workload: None, lambda w, r: None)
    ctl.connect(ir.Workload("reviews-v1-a", "shop/reviews-v1", "127.0.0.11", app_ports=((9080, 19080),)))
    ctl.connect(ir.Workload("reviews-v2-a", "shop/reviews-v2", "127.0.0.12", app_ports=((9080, 19080),)))
    asyncio.run(ctl.reconcile())
    return ctl


SYNCED = {t.value: TypeSync(sent="a", acked="a") for t in TypeUrl if t is not TypeUrl.SECRET}
VD1 = ObjectKey(Kind.VIRTUAL_DEPLOYMENT, "shop", "reviews-v1")
VD2 = ObjectKey(Kind.VIRTUAL_DEPLOYMENT, "shop", "reviews-v2")
TABLE = ObjectKey(Kind.VIRTUAL_SERVICE_ROUTE_TABLE, "shop", "reviews-canary")


def test_a_nack_marks_the_proxys_deployment_and_the_meshs_route_tables_but_no_parent(tmp_path: Path) -> None:
    ctl = canary_controller(tmp_path)
    nacked = {**SYNCED, TypeUrl.LISTENER.value: TypeSync(sent="b", acked="a", nacked="b", nack_message="cannot bind")}
    states = data_plane_state(ctl, {"reviews-v1-a": nacked, "reviews-v2-a": SYNCED})
    assert states[VD1].status is ConditionStatus.FALSE and "cannot bind" in states[VD1].message
    assert states[TABLE].status is ConditionStatus.FALSE
    assert states[VD2].status is ConditionStatus.TRUE
    assert not {k for k in states if k.kind in (Kind.MESH, Kind.VIRTUAL_SERVICE)}


def test_a_proxy_still_behind_makes_its_objects_unknown(tmp_path: Path) -> None:
    ctl = canary_controller(tmp_path)
    behind = {**SYNCED, TypeUrl.ROUTE.value: TypeSync(sent="b", acked="a")}
    states = data_plane_state(ctl, {"reviews-v1-a": SYNCED, "reviews-v2-a": behind})
    assert states[VD2].status is ConditionStatus.UNKNOWN and states[TABLE].status is ConditionStatus.UNKNOWN
    assert states[VD1].status is ConditionStatus.TRUE


def test_an_unpublished_snapshot_is_reported_on_the_proxys_deployment(tmp_path: Path) -> None:
    ctl = canary_controller(tmp_path)
    states = data_plane_state(ctl, {"reviews-v1-a": SYNCED}, {"reviews-v1-a": "route names cluster x, not in CDS"})
    assert states[VD1].status is ConditionStatus.FALSE
    assert "not published, its last good one stays: route names cluster x" in states[VD1].message


def test_new_endpoints_swapped_into_a_snapshot_equal_a_full_render(tmp_path: Path) -> None:
    """The endpoints-only path gives byte for byte what rendering anew would: same versions per type."""
    (tmp_path / "config").mkdir()
    _client_mesh(tmp_path / "config")
    source = ConfigDir(tmp_path / "config")
    source.sync()
    renderer = Renderer(Credentials(tmp_path / "state"))
    client = ir.Workload("client-a", "shop/client-v1", "127.0.0.21")
    workloads = [V1, V2, client]
    before = renderer(build(source.world, workloads)[0], client)
    config = build(source.world, [*workloads, ir.Workload("reviews-v1-b", "shop/reviews-v1", "127.0.0.13")])[0]
    swapped = renderer.endpoints(config, before)
    assert swapped is not None
    assert swapped.versions() == renderer(config, client).versions()
    changed = {t for t, v in swapped.versions().items() if before.versions()[t] != v}
    assert changed == {TypeUrl.ENDPOINT}
    assignment = swapped.items(names.ENDPOINT_TYPE)[names.outbound_cluster("shop/reviews-v1", 9080)]
    assert b"127.0.0.13" in assignment.body


def test_an_outbound_cluster_name_reads_back_as_its_deployment_and_port() -> None:
    assert names.parse_outbound_cluster(names.outbound_cluster("shop/reviews-v1", 9080)) == ("shop/reviews-v1", 9080)
    for other in (names.OUTBOUND_HTTP, names.EGRESS_HTTP_CLUSTER, "outbound|9080|", "inbound|9080|shop/x"):
        assert names.parse_outbound_cluster(other) is None


def client_mesh_renderer(folder: Path) -> tuple[ConfigDir, Credentials, Renderer]:
    """The client mesh read from ``folder``/config, and a renderer with credentials under ``folder``/state."""
    (folder / "config").mkdir()
    _client_mesh(folder / "config")
    source = ConfigDir(folder / "config")
    source.sync()
    credentials = Credentials(folder / "state")
    return source, credentials, Renderer(credentials)


def test_an_unchanged_outbound_view_keeps_the_shared_part_and_renders_what_a_fresh_renderer_would(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new build whose outbound view is the same version re-translates nothing outbound, swaps in the new
    endpoints, and gives the snapshot a renderer without any memory gives; a new version re-translates."""
    source, credentials, renderer = client_mesh_renderer(tmp_path)
    view: list[object] = [object()]
    renderer.outbound_view = lambda workload: view[0]
    translated: list[str] = []
    real = translate.translate_outbound

    def counting(config: ir.MeshConfig, mesh: str, identity: str, resolvers: Any = ()) -> Any:
        translated.append(identity)
        return real(config, mesh, identity, resolvers)

    monkeypatch.setattr(serve, "translate_outbound", counting)
    client = ir.Workload("client-a", "shop/client-v1", "127.0.0.21")
    workloads = [V1, V2, client]
    renderer(build(source.world, workloads)[0], client)
    config = build(source.world, [*workloads, ir.Workload("reviews-v1-b", "shop/reviews-v1", "127.0.0.13")])[0]
    kept = renderer(config, client)
    assert len(translated) == 1, "the second build kept the outbound part"
    assert kept.versions() == Renderer(credentials)(config, client).versions()
    view[0] = object()
    renderer(build(source.world, workloads)[0], client)
    assert len(translated) == 3, "a new view version is translated again (the fresh renderer above counted once)"


def test_an_unchanged_inbound_view_keeps_the_inbound_listeners_and_renders_what_a_fresh_renderer_would(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new build whose inbound view is equal translates only the proxy's outbound listeners and gives the
    snapshot a renderer without memory gives; another view translates the inbound listeners again."""
    source, credentials, renderer = client_mesh_renderer(tmp_path)
    view: list[object] = [object()]
    renderer.inbound_view = lambda workload: view[0]
    translated: list[str] = []
    real = translate.translate_inbound

    def counting(config: ir.MeshConfig, workload: ir.Workload) -> Any:
        translated.append(workload.node_id)
        return real(config, workload)

    monkeypatch.setattr(serve, "translate_inbound", counting)
    workloads = [V1, V2, ir.Workload("client-a", "shop/client-v1", "127.0.0.21")]
    first = renderer(build(source.world, workloads)[0], V1)
    config = build(source.world, [*workloads, ir.Workload("reviews-v1-b", "shop/reviews-v1", "127.0.0.13")])[0]
    kept = renderer(config, V1)
    assert translated == [V1.node_id], "the second build kept the inbound listeners"
    inbound = [r for r in first.extra if r.name.startswith("inbound")]
    assert inbound and all(r in kept.extra for r in inbound)
    assert kept.versions() == Renderer(credentials)(config, V1).versions()
    view[0] = object()
    renderer(config, V1)
    assert translated == [V1.node_id, V1.node_id], "another view translates them again"


def test_a_proxys_certificate_secret_is_serialised_once_until_it_is_issued_anew(tmp_path: Path) -> None:
    source, credentials, renderer = client_mesh_renderer(tmp_path)
    client = ir.Workload("client-a", "shop/client-v1", "127.0.0.21")

    def secrets(workloads: list[ir.Workload]) -> Any:
        return renderer(build(source.world, workloads)[0], V1).items(names.SECRET_TYPE)

    first = secrets([V1, V2])
    second = secrets([V1, V2, client])  # another configuration, the same credentials
    assert first and all(second[name] is resource for name, resource in first.items())
    credentials.keep_only(set())  # the next render issues V1 a new certificate
    third = secrets([V1, V2])
    assert third[names.WORKLOAD_SECRET].body != first[names.WORKLOAD_SECRET].body
    assert [n for n, r in third.items() if r is first[n]] == [n for n in first if n != names.WORKLOAD_SECRET]


def test_what_a_round_leaves_published_is_what_a_fresh_renderer_gives_every_proxy(tmp_path: Path) -> None:
    """Whatever a round skips (inputs, views, kept parts), each proxy's published snapshot is, version for
    version, what a renderer without memory makes of the new configuration: after routes, hosts, modes,
    callers and workloads change."""
    (tmp_path / "config").mkdir()
    _client_mesh(tmp_path / "config")
    plane = serve.ControlPlane(serve.Options(tmp_path / "config", tmp_path / "state"))
    client = ir.Workload("client-a", "shop/client-v1", "127.0.0.21")
    ratings = ir.Workload("ratings-a", "shop/ratings-v1", "127.0.0.22", app_ports=((8080, 18080),))
    newcomer = ir.Workload("reviews-v1-b", "shop/reviews-v1", "127.0.0.13", app_ports=((9080, 19080),))
    table = next(d for d in data.manifests("canary") if d["kind"] == "VirtualServiceRouteTable")
    reviews = next(d for d in data.manifests("canary") if d["kind"] == "VirtualService")
    [ratings_service, _] = _service("ratings", host="ratings-new.shop")

    def weights() -> None:
        table["spec"]["routeRules"][0]["httpRoute"]["destinations"][0]["weight"] = 50
        write(tmp_path / "config" / "VirtualServiceRouteTable-reviews-canary.yaml", table)

    def mode(doc: dict[str, Any], name: str, value: str) -> Callable[[], None]:
        def change() -> None:
            doc["spec"]["mtls"] = {"mode": value}
            write(tmp_path / "config" / f"VirtualService-{name}.yaml", doc)
        return change

    def callers() -> None:  # client may call ratings too: ratings' inbound RBAC, client's outbound
        policy = yaml.safe_load((tmp_path / "config" / "AccessPolicy-shop-policy.yaml").read_text())
        policy["spec"]["rules"].append({"action": "ALLOW", "source": {"virtualService": {"ref": {"name": "client"}}},
                                        "destination": {"virtualService": {"ref": {"name": "ratings"}}}})
        write(tmp_path / "config" / "AccessPolicy-shop-policy.yaml", policy)

    changes: list[Callable[[], None]] = [
        weights, lambda: write(tmp_path / "config" / "VirtualService-ratings.yaml", ratings_service),
        mode(ratings_service, "ratings", "STRICT"), callers, mode(reviews, "reviews", "PERMISSIVE"),
        lambda: plane.controller.connect(newcomer), lambda: plane.controller.configured(newcomer.node_id)]

    async def scenario() -> list[list[str]]:
        await plane.controller.reconcile()
        for workload in (V1, V2, client, ratings):
            plane.controller.connect(workload)
            plane.controller.configured(workload.node_id)
        differing = []
        for change in [lambda: None, *changes]:
            change()
            await plane.controller.reconcile(statuses=False)
            fresh = Renderer(plane.credentials)
            differing.append([w.node_id for w in plane.controller.workloads.values() if (published := plane.cache.get(
                w.node_id)) is None or published.versions() != fresh(plane.controller.config, w).versions()])
        return differing

    assert asyncio.run(scenario()) == [[]] * (len(changes) + 1)


def test_the_serving_process_freezes_its_startup_heap_and_collects_old_generations_rarely() -> None:
    before = gc.get_threshold()
    try:
        serve.tune_gc()
        assert gc.get_threshold() == serve.GC_THRESHOLDS
        assert gc.get_threshold()[2] > before[2], "full collections rarer than Python's default"
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
