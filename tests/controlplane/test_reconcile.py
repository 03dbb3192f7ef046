"""The reconcile loop: coalescing, rendering only what changed, endpoints with a grace period."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshplane.controlplane import ir, state
from meshplane.controlplane import reconcile as reconcile_module
from meshplane.controlplane.build import BuildMemo, build
from meshplane.controlplane.configdir import ConfigDir
from meshplane.controlplane.model import ConditionStatus, Kind, ObjectKey
from meshplane.controlplane.reconcile import Controller, Timing, settle
from meshplane.controlplane.status import DataPlaneState, compute_status
from tests import data
from tests.controlplane.test_configdir import write, write_canary

V1 = ir.Workload("reviews-v1-a", "shop/reviews-v1", "127.0.0.11", app_ports=((9080, 19080),))
V2 = ir.Workload("reviews-v2-a", "shop/reviews-v2", "127.0.0.12", app_ports=((9080, 19080),))


def test_settle_returns_after_a_quiet_period() -> None:
    async def scenario() -> float:
        trigger = asyncio.Event()
        loop = asyncio.get_running_loop()
        for delay in (0.0, 0.03, 0.06):
            loop.call_later(delay, trigger.set)
        start = loop.time()
        await settle(trigger, quiet=0.1, max_delay=5.0)
        return loop.time() - start

    elapsed = asyncio.run(scenario())
    assert 0.15 <= elapsed < 0.5, "waits for 0.1 s of quiet after the last poke at 0.06 s"


def test_settle_gives_up_waiting_for_quiet_after_max_delay() -> None:
    async def scenario() -> float:
        trigger = asyncio.Event()
        loop = asyncio.get_running_loop()
        for i in range(40):  # a poke every 20 ms for 0.8 s: never quiet
            loop.call_later(i * 0.02, trigger.set)
        start = loop.time()
        await settle(trigger, quiet=0.1, max_delay=0.3)
        return loop.time() - start

    elapsed = asyncio.run(scenario())
    assert 0.28 <= elapsed < 0.5



def test_settle_is_cancelled_even_when_a_trigger_comes_in_the_same_turn() -> None:
    """asyncio.wait_for in Python 3.11 swallows a cancellation that meets its inner future's completion:
    the controller's task then never stopped (ControlPlane.stop hung), seen with status-timer wake-ups."""
    async def scenario() -> bool:
        trigger = asyncio.Event()
        trigger.set()
        task = asyncio.create_task(settle(trigger, quiet=5.0, max_delay=5.0))
        for _ in range(5):
            await asyncio.sleep(0)  # into the wait for quiet
        trigger.set()
        task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(task), 1.0)
        except asyncio.CancelledError:
            return task.cancelled()
        return False

    assert asyncio.run(scenario()) is True


Rendered = tuple[tuple[str, int, tuple[ir.Backend, ...]], ...]


class Recorder:
    """Renders a workload's configuration as (service, port, backends) per route and records publishes."""

    def __init__(self) -> None:
        self.published: list[tuple[str, Rendered]] = []

    def render(self, config: ir.MeshConfig, workload: ir.Workload) -> Rendered:
        return tuple((s.key, p.number, r.backends) for s in config.services for p in s.ports for r in p.routes)

    def publish(self, workload: ir.Workload, rendered: Rendered) -> None:
        self.published.append((workload.node_id, rendered))


def controller(folder: Path) -> tuple[Controller[Rendered], Recorder]:
    recorder = Recorder()
    timing = Timing(0.01, 0.05, 0.05, status_every=0.0)
    return Controller(ConfigDir(folder), recorder.render, recorder.publish, timing), recorder


def arrive(ctl: Controller[Rendered], *workloads: ir.Workload) -> None:
    """The workloads' proxies connect and (as their ACKs would tell) accept their configuration."""
    for workload in workloads:
        ctl.connect(workload)
        ctl.configured(workload.node_id)


async def connect_both(ctl: Controller[Rendered]) -> None:
    """v1's and v2's proxies connect and are configured, and one round runs."""
    arrive(ctl, V1, V2)
    await ctl.reconcile()


def test_only_workloads_whose_inputs_changed_are_rendered_again(tmp_path: Path) -> None:
    write_canary(tmp_path)
    ctl, recorder = controller(tmp_path)

    async def scenario() -> None:
        await connect_both(ctl)
        assert sorted(n for n, _ in recorder.published) == ["reviews-v1-a", "reviews-v2-a"]
        recorder.published.clear()
        await ctl.reconcile()
        assert recorder.published == [], "nothing changed: nothing rendered"

    asyncio.run(scenario())


def test_an_edit_in_the_directory_reaches_the_workloads_that_route_by_it(tmp_path: Path) -> None:
    """Only the gateway may call reviews: a route change reaches it. Reviews' own proxies do not read their
    service's routes (they listen on their deployment's ports), so they are not rendered again."""
    write_canary(tmp_path)
    ctl, recorder = controller(tmp_path)

    async def scenario() -> None:
        await connect_both(ctl)
        ctl.connect(ir.Workload("gateway-a", "", "127.0.0.30", gateway="shop/shop-gw"))
        await ctl.reconcile()
        recorder.published.clear()
        docs = data.manifests("canary")
        table = next(d for d in docs if d["kind"] == "VirtualServiceRouteTable")
        for destination, weight in zip(table["spec"]["routeRules"][0]["httpRoute"]["destinations"], (0, 100),
                                       strict=True):
            destination["weight"] = weight
        write(tmp_path / "VirtualServiceRouteTable-reviews-canary.yaml", table)
        await ctl.reconcile()
        assert sorted(n for n, _ in recorder.published) == ["gateway-a"]
        backends = next(r for r in recorder.published[0][1] if r[0] == "shop/reviews")[2]
        assert backends == (ir.Backend("shop/reviews-v2", 9080, 100),)

    asyncio.run(scenario())


def test_a_disconnected_workload_stays_an_endpoint_for_the_grace_period(tmp_path: Path) -> None:
    write_canary(tmp_path)
    ctl, _ = controller(tmp_path)

    async def scenario() -> None:
        await connect_both(ctl)
        ctl.disconnect(V2.node_id)
        await ctl.reconcile()
        deployment = ctl.config.deployment("shop/reviews-v2")
        assert deployment is not None and deployment.endpoints == ("127.0.0.12",)
        await asyncio.sleep(0.1)
        await ctl.reconcile()
        deployment = ctl.config.deployment("shop/reviews-v2")
        assert deployment is not None and deployment.endpoints == ()

    asyncio.run(scenario())


def test_a_reconnect_within_the_grace_period_keeps_the_endpoint(tmp_path: Path) -> None:
    write_canary(tmp_path)
    ctl, _ = controller(tmp_path)

    async def scenario() -> None:
        arrive(ctl, V2)
        ctl.disconnect(V2.node_id)
        ctl.connect(V2)
        await asyncio.sleep(0.1)
        await ctl.reconcile()
        deployment = ctl.config.deployment("shop/reviews-v2")
        assert deployment is not None and deployment.endpoints == ("127.0.0.12",)

    asyncio.run(scenario())


def test_the_loop_coalesces_a_burst_of_pokes_into_one_round(tmp_path: Path) -> None:
    write_canary(tmp_path)
    ctl, _ = controller(tmp_path)

    async def scenario() -> int:
        task = asyncio.create_task(ctl.run())
        await asyncio.sleep(0.1)
        before = ctl.rounds
        for _ in range(20):
            ctl.poke()
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return ctl.rounds - before

    assert asyncio.run(scenario()) == 1


def test_statuses_are_recorded_on_the_accepted_objects(tmp_path: Path) -> None:
    write_canary(tmp_path)
    ctl, _ = controller(tmp_path)
    asyncio.run(ctl.reconcile())
    objects = ctl.source.world.all()
    assert objects and all(len(o.status.conditions) >= 2 for o in objects)
    assert [str(o.key) for o in objects if o.status.conditions[0].status.value != "True"] == []


def test_workloads_of_a_previous_run_stay_endpoints_until_the_grace_period_ends(tmp_path: Path) -> None:
    write_canary(tmp_path)
    state.write_workloads(tmp_path / "state", [V1, V2])
    remembered = state.read_workloads(tmp_path / "state")
    assert remembered == [V1, V2]
    ctl, _ = controller(tmp_path)

    async def scenario() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        ctl.remember(remembered, grace=0.1)
        ctl.connect(V1)  # v1's proxy reconnects; v2's does not
        await ctl.reconcile()
        first = _endpoints(ctl, "shop/reviews-v2")
        await asyncio.sleep(0.2)
        await ctl.reconcile()
        return first, _endpoints(ctl, "shop/reviews-v2"), _endpoints(ctl, "shop/reviews-v1")

    first, later, v1 = asyncio.run(scenario())
    assert first == ("127.0.0.12",), "a remembered workload is an endpoint right after a restart"
    assert later == (), "and stops being one when its proxy does not come back in time"
    assert v1 == ("127.0.0.11",), "a workload whose proxy reconnected stays"


def test_unreadable_remembered_workloads_are_ignored(tmp_path: Path) -> None:
    (tmp_path / "workloads.json").write_text("{not json")
    assert state.read_workloads(tmp_path) == []


def _endpoints(ctl: Controller[Rendered], key: str) -> tuple[str, ...]:
    deployment = ctl.config.deployment(key)
    return deployment.endpoints if deployment else ()


def _service(name: str, *, host: str | None = None) -> list[dict[str, object]]:
    api = "servicemesh.oci.oracle.com/v1beta1"
    spec: dict[str, object] = {"mesh": {"ref": {"name": "shop-mesh"}}}
    if host is not None:
        spec["hosts"] = [host]
    deployment: dict[str, object] = {"virtualService": {"ref": {"name": name}}}
    if host is not None:
        deployment |= {"listener": [{"protocol": "HTTP", "port": 8080}],
                       "serviceDiscovery": {"type": "DNS", "hostname": f"{name}-v1.{host}"}}
    return [{"apiVersion": api, "kind": "VirtualService", "metadata": {"name": name, "namespace": "shop"},
             "spec": spec},
            {"apiVersion": api, "kind": "VirtualDeployment", "metadata": {"name": f"{name}-v1", "namespace": "shop"},
             "spec": deployment}]


def _client_mesh(folder: Path) -> None:
    """The canary set plus client (allowed to call reviews, STRICT) and ratings (nobody calls it)."""
    write_canary(folder)
    for doc in [*_service("client"), *_service("ratings", host="ratings.shop")]:
        write(folder / f"{doc['kind']}-{doc['metadata']['name']}.yaml", doc)  # type: ignore[index]
    policy = next(d for d in data.manifests("canary") if d["kind"] == "AccessPolicy")
    policy["spec"]["rules"].append({"action": "ALLOW", "source": {"virtualService": {"ref": {"name": "client"}}},
                                    "destination": {"virtualService": {"ref": {"name": "reviews"}}}})
    write(folder / "AccessPolicy-shop-policy.yaml", policy)


def _edit(folder: Path, name: str, change: Callable[[dict[str, Any]], object]) -> None:
    """Rewrite one object's file of :func:`_client_mesh` with ``change`` applied to its document."""
    path = folder / name
    doc = yaml.safe_load(path.read_text())
    change(doc)
    write(path, doc)


def test_views_kept_for_untouched_services_are_what_gathering_every_view_gives(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """After each change the views equal, by content, those a controller without history makes; the changes
    a build keeps most objects through gather only the touched services' views (a route edit: reviews and
    its caller), the others everything."""
    _client_mesh(tmp_path)
    ctl, _ = controller(tmp_path)
    gathered: list[object] = []
    real = reconcile_module.service_views

    def recorded(config: ir.MeshConfig, only: object = None) -> Any:
        gathered.append(only)
        return real(config, only)  # type: ignore[arg-type]

    monkeypatch.setattr(reconcile_module, "service_views", recorded)
    client, late = ir.Workload("client-a", "shop/client-v1", "127.0.0.21"), ir.Workload("r-a", "shop/ratings-v1",
                                                                                        "127.0.0.31")
    policy = "AccessPolicy-shop-policy.yaml"
    edits: list[tuple[str, Callable[[], object]]] = [
        ("weights", lambda: _edit(tmp_path, "VirtualServiceRouteTable-reviews-canary.yaml", lambda d: d["spec"][
            "routeRules"][0]["httpRoute"]["destinations"][0].update(weight=60))),
        ("hosts", lambda: _edit(tmp_path, "VirtualService-reviews.yaml", lambda d: d["spec"].update(
            hosts=["reviews.shop", "r.shop"]))),
        ("mode", lambda: _edit(tmp_path, "VirtualService-reviews.yaml", lambda d: d["spec"].update(
            mtls={"mode": "PERMISSIVE"}))),
        ("uncalled", lambda: _edit(tmp_path, "VirtualService-ratings.yaml", lambda d: d["spec"].update(
            hosts=["ratings.other"]))),
        ("listener", lambda: _edit(tmp_path, "VirtualDeployment-reviews-v1.yaml", lambda d: d["spec"]["listener"][
            0].update(requestTimeoutInMs=20000))),
        ("policy", lambda: _edit(tmp_path, policy, lambda d: d["spec"]["rules"].append({
            "action": "ALLOW", "source": {"virtualService": {"ref": {"name": "client"}}},
            "destination": {"virtualService": {"ref": {"name": "ratings"}}}}))),
        ("workload", lambda: arrive(ctl, late)),
        ("starting", lambda: ctl.connect(ir.Workload("client-b", "shop/client-v1", "127.0.0.22"))),
    ]

    def unwrap(value: object) -> object:  # a view holds others (compared by identity): their contents
        if hasattr(value, "content"):
            return unwrap(value.content)
        return tuple(unwrap(item) for item in value) if isinstance(value, tuple) else value

    def contents(views: dict[Any, object]) -> dict[Any, object]:
        return {key: unwrap(view) for key, view in views.items()}

    async def fresh_views() -> dict[Any, object]:
        other, _ = controller(tmp_path)
        for workload in ctl.workloads.values():
            other.connect(workload)
            if workload.node_id not in ctl.starting:
                other.configured(workload.node_id)
        await other.reconcile()
        return contents(other._views)

    async def scenario() -> list[object]:
        arrive(ctl, V1, V2, client)
        await ctl.reconcile()
        scopes = []
        for what, edit in edits:
            edit()
            gathered.clear()
            await ctl.reconcile()
            assert contents(ctl._views) == await fresh_views(), what
            scopes.append(gathered[0])
        return scopes

    scopes = asyncio.run(scenario())
    assert scopes[0] == {"shop/reviews", "shop/client"}, "a route edit: the service and its caller"
    assert scopes[3] == {"shop/ratings"}, "nobody calls ratings"
    assert scopes[5:] == [None, None, None], "who may call whom, or a workload: every service"


def test_a_route_change_keeps_every_inbound_view_and_a_mode_change_does_not(tmp_path: Path) -> None:
    """The client's outbound part changes with reviews' routes; its inbound listeners do not, so its inbound
    view stays equal (the renderer keeps them). Reviews' proxies' inbound listeners do not read its routes
    either; its mTLS mode they do."""
    _client_mesh(tmp_path)
    ctl, _ = controller(tmp_path)
    client = ir.Workload("client-a", "shop/client-v1", "127.0.0.21")

    async def scenario() -> tuple[bool, bool, bool, bool]:
        for workload in (V1, V2, client):
            ctl.connect(workload)
        await ctl.reconcile()
        before = ctl.inbound_view(client), ctl.inbound_view(V1), ctl.outbound_view(client)
        table = next(d for d in data.manifests("canary") if d["kind"] == "VirtualServiceRouteTable")
        table["spec"]["routeRules"][0]["httpRoute"]["destinations"][0]["weight"] = 60
        table["spec"]["routeRules"][0]["httpRoute"]["destinations"][1]["weight"] = 40
        write(tmp_path / "VirtualServiceRouteTable-reviews-canary.yaml", table)
        await ctl.reconcile()
        after = (ctl.inbound_view(client) == before[0], ctl.inbound_view(V1) == before[1],
                 ctl.outbound_view(client) is before[2])
        reviews = next(d for d in data.manifests("canary") if d["kind"] == "VirtualService")
        reviews["spec"]["mtls"] = {"mode": "PERMISSIVE"}
        write(tmp_path / "VirtualService-reviews.yaml", reviews)
        await ctl.reconcile()
        return (*after, ctl.inbound_view(V1) == before[1])

    assert asyncio.run(scenario()) == (True, True, False, False)
    assert ctl.inbound_view(ir.Workload("ghost", "shop/ghost-v1", "127.0.0.99")) is None


def test_a_new_caller_workload_re_renders_a_plaintext_destination_but_not_a_strict_one(tmp_path: Path) -> None:
    """Callers' addresses matter only to plaintext chains (RBAC by address): reviews is STRICT, so a
    client workload coming does not touch its proxies; once reviews is PERMISSIVE, it does."""
    _client_mesh(tmp_path)
    ctl, recorder = controller(tmp_path)

    async def scenario() -> list[list[str]]:
        for workload in (V1, V2, ir.Workload("client-a", "shop/client-v1", "127.0.0.21")):
            ctl.connect(workload)
        await ctl.reconcile()
        rounds = []
        for node, address in (("client-b", "127.0.0.22"), ("client-c", "127.0.0.23")):
            if node == "client-c":
                service = next(d for d in data.manifests("canary") if d["kind"] == "VirtualService")
                service["spec"]["mtls"] = {"mode": "PERMISSIVE"}
                write(tmp_path / "VirtualService-reviews.yaml", service)
                await ctl.reconcile()
            recorder.published.clear()
            ctl.connect(ir.Workload(node, "shop/client-v1", address))
            await ctl.reconcile()
            rounds.append(sorted(n for n, _ in recorder.published))
        return rounds

    assert asyncio.run(scenario()) == [["client-b"], ["client-c", "reviews-v1-a", "reviews-v2-a"]]


def test_a_change_re_renders_the_changed_service_and_its_callers_only(tmp_path: Path) -> None:
    """client may call reviews; nobody calls ratings. Editing reviews' route table re-renders client's
    proxies (not reviews' own: their inbound listeners do not read routes, and they do not call reviews);
    a ratings host edit re-renders nobody (nobody calls it); its mTLS mode, only ratings' proxies."""
    _client_mesh(tmp_path)
    ctl, recorder = controller(tmp_path)
    client = ir.Workload("client-a", "shop/client-v1", "127.0.0.21")
    ratings = ir.Workload("ratings-a", "shop/ratings-v1", "127.0.0.22", app_ports=((8080, 18080),))

    async def scenario() -> list[list[str]]:
        for workload in (V1, V2, client, ratings):
            ctl.connect(workload)
        await ctl.reconcile()
        rounds = []
        for change in ("reviews", "ratings host", "ratings mode"):
            recorder.published.clear()
            if change == "reviews":
                table = next(d for d in data.manifests("canary") if d["kind"] == "VirtualServiceRouteTable")
                table["spec"]["routeRules"][0]["httpRoute"]["destinations"][0]["weight"] = 50
                write(tmp_path / "VirtualServiceRouteTable-reviews-canary.yaml", table)
            else:
                docs = _service("ratings", host="ratings-new.shop")
                if change == "ratings mode":
                    docs[0]["spec"]["mtls"] = {"mode": "STRICT"}  # type: ignore[index]
                write(tmp_path / "VirtualService-ratings.yaml", docs[0])
            await ctl.reconcile()
            rounds.append(sorted(n for n, _ in recorder.published))
        return rounds

    assert asyncio.run(scenario()) == [["client-a"], [], ["ratings-a"]]


def test_an_ack_recomputes_statuses_without_building_or_rendering(tmp_path: Path) -> None:
    """What proxies said changes Active, nothing else: the round it causes neither builds nor renders."""
    write_canary(tmp_path)
    said: dict[ObjectKey, DataPlaneState] = {}
    recorder = Recorder()
    ctl = Controller(ConfigDir(tmp_path), recorder.render, recorder.publish, Timing(0.01, 0.05, 0.05, status_every=0.0),
                     data_plane=lambda: said)
    table = ObjectKey(Kind.VIRTUAL_SERVICE_ROUTE_TABLE, "shop", "reviews-canary")

    def active() -> str:
        obj = ctl.source.world.get(table)
        assert obj is not None
        return next(c.status.value for c in obj.status.conditions if c.type.value == "ServiceMeshActive")

    async def scenario() -> tuple[str, str, int, int, int]:
        await connect_both(ctl)
        before, config = active(), ctl.config
        task = asyncio.create_task(ctl.run())
        await asyncio.sleep(0.1)  # the first round of run() itself, and its status pass
        rounds, status_rounds = ctl.rounds, ctl.status_rounds
        recorder.published.clear()
        said[table] = DataPlaneState(ConditionStatus.UNKNOWN, "waiting for proxy reviews-v1-a to acknowledge")
        ctl.poke_status()
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert ctl.config is config, "not built again"
        passes = ctl.status_rounds - status_rounds  # the ACK's, and one more as it wrote statuses
        return before, active(), ctl.rounds - rounds, passes, len(recorder.published)

    assert asyncio.run(scenario()) == ("True", "Unknown", 0, 2, 0)


def test_a_round_with_nothing_new_does_not_build_again(tmp_path: Path) -> None:
    write_canary(tmp_path)
    ctl, _ = controller(tmp_path)

    async def scenario() -> tuple[bool, bool]:
        await connect_both(ctl)
        config = ctl.config
        await ctl.reconcile()
        unchanged = ctl.config is config
        ctl.connect(V1)  # the same workload reconnecting: a render, no build
        await ctl.reconcile()
        return unchanged, ctl.config is config

    assert asyncio.run(scenario()) == (True, True)


def test_a_callee_workload_coming_gives_its_callers_new_endpoints_only(tmp_path: Path) -> None:
    """client calls reviews. A new reviews-v1 workload changes client's load assignments only: client is
    patched (render_endpoints), the new workload rendered, reviews' other proxies untouched."""
    _client_mesh(tmp_path)
    ctl, recorder = controller(tmp_path)
    patched: list[tuple[str, tuple[str, ...]]] = []

    def endpoints(config: ir.MeshConfig, workload: ir.Workload) -> Rendered:
        patched.append((workload.node_id, _endpoints(ctl, "shop/reviews-v1")))
        return recorder.render(config, workload)

    ctl.render_endpoints = endpoints
    client = ir.Workload("client-a", "shop/client-v1", "127.0.0.21")

    async def scenario() -> tuple[list[str], int, int]:
        arrive(ctl, V1, V2, client)
        await ctl.reconcile()
        recorder.published.clear()
        arrive(ctl, ir.Workload("reviews-v1-b", "shop/reviews-v1", "127.0.0.13", app_ports=((9080, 19080),)))
        await ctl.reconcile()
        return sorted(n for n, _ in recorder.published), ctl.rendered, ctl.patched

    assert asyncio.run(scenario()) == (["client-a", "reviews-v1-b"], 1, 1)
    assert patched == [("client-a", ("127.0.0.11", "127.0.0.13"))]


def test_a_new_sidecar_takes_traffic_only_once_its_proxy_is_configured(tmp_path: Path) -> None:
    """client calls reviews. A new reviews-v1 proxy connects: it is rendered for, but is no endpoint (the
    client is not re-rendered) until its proxy accepted its configuration; then only the client is."""
    _client_mesh(tmp_path)
    ctl, recorder = controller(tmp_path)
    client = ir.Workload("client-a", "shop/client-v1", "127.0.0.21")
    newcomer = ir.Workload("reviews-v1-b", "shop/reviews-v1", "127.0.0.13", app_ports=((9080, 19080),))

    async def step() -> tuple[list[str], tuple[str, ...], tuple[str, ...]]:
        recorder.published.clear()
        await ctl.reconcile()
        deployment = ctl.config.deployment("shop/reviews-v1")
        assert deployment is not None
        return sorted(n for n, _ in recorder.published), deployment.endpoints, deployment.starting

    async def scenario() -> list[tuple[list[str], tuple[str, ...], tuple[str, ...]]]:
        arrive(ctl, V1, V2, client)
        await ctl.reconcile()
        ctl.connect(newcomer)
        connected = await step()
        ctl.configured(newcomer.node_id)
        return [connected, await step()]

    connected, ready = asyncio.run(scenario())
    assert connected == (["reviews-v1-b"], ("127.0.0.11",), ("127.0.0.13",))
    assert ready == (["client-a"], ("127.0.0.11", "127.0.0.13"), ())


def test_a_starting_workload_is_a_caller_already(tmp_path: Path) -> None:
    """A plaintext callee admits its callers by address: a caller's address is there from its proxy's first
    configuration, so its first requests are not refused; being an endpoint changes no caller address."""
    _client_mesh(tmp_path)
    source = ConfigDir(tmp_path)
    source.sync()
    client = ir.Workload("client-a", "shop/client-v1", "127.0.0.21")
    starting, _ = build(source.world, [V1, client], starting={"client-a"})
    ready, _ = build(source.world, [V1, client])
    reviews = starting.service("shop/reviews")
    assert reviews is not None and "127.0.0.21" in starting.caller_addresses(reviews)
    assert starting.caller_addresses(reviews) == ready.caller_addresses(reviews)
    [was, now] = [config.deployment("shop/client-v1") for config in (starting, ready)]
    assert was is not None and now is not None
    assert (was.endpoints, was.starting, now.endpoints, now.starting) == ((), ("127.0.0.21",), ("127.0.0.21",), ())
    assert was.shape() == now.shape()


def test_each_round_is_logged_at_debug_with_what_it_did(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_canary(tmp_path)
    ctl, _ = controller(tmp_path)
    caplog.set_level(logging.DEBUG, logger="meshplane.controlplane.reconcile")

    async def scenario() -> None:
        arrive(ctl, V1)
        ctl.connect(V2)
        await ctl.reconcile()

    asyncio.run(scenario())
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("round ")]
    assert line.startswith("round 1: ")
    assert line.endswith("; 2 rendered, 0 given endpoints only; 2 workloads, 1 starting")


def test_only_a_new_or_changed_sidecar_is_starting(tmp_path: Path) -> None:
    write_canary(tmp_path)
    ctl, _ = controller(tmp_path)
    arrive(ctl, V1)
    ctl.connect(ir.Workload("gateway-a", "", "127.0.0.30", gateway="shop/gateway"))
    ctl.connect(V1)  # its proxy reconnected
    ctl.connect(V2)
    assert ctl.starting == {V2.node_id}, "a gateway's workloads take no traffic from the mesh: never starting"
    ctl.connect(ir.Workload(V1.node_id, V1.deployment, "127.0.0.99", app_ports=V1.app_ports))
    assert ctl.starting == {V1.node_id, V2.node_id}, "a workload that changed starts again"


def test_a_known_sidecar_whose_proxy_restarted_is_starting_until_configured_again(tmp_path: Path) -> None:
    """Its Envoy restarted within the grace period: same workload, but its listeners are gone until it accepts
    its configuration, so it is no endpoint meanwhile (a proxy that resumes stays one)."""
    write_canary(tmp_path)
    ctl, _ = controller(tmp_path)

    async def scenario() -> list[tuple[str, ...]]:
        seen = []
        arrive(ctl, V2)
        for fresh in (False, True):
            ctl.disconnect(V2.node_id)
            ctl.connect(V2, fresh=fresh)
            await ctl.reconcile()
            deployment = ctl.config.deployment("shop/reviews-v2")
            assert deployment is not None
            seen.append(deployment.endpoints)
        ctl.configured(V2.node_id)
        await ctl.reconcile()
        deployment = ctl.config.deployment("shop/reviews-v2")
        assert deployment is not None
        return [*seen, deployment.endpoints]

    assert asyncio.run(scenario()) == [("127.0.0.12",), (), ("127.0.0.12",)]
    ctl.connect(ir.Workload("gateway-a", "", "127.0.0.30", gateway="shop/gateway"), fresh=True)
    assert "gateway-a" not in ctl.starting, "a gateway is never starting"


def test_a_build_reusing_the_access_policies_gives_what_a_fresh_build_gives(tmp_path: Path) -> None:
    """Workloads come and go, a route table changes: the memo's access resolution is reused; a policy
    changes: it is resolved again. Each time the result is the fresh build's, problems included."""
    _client_mesh(tmp_path)
    source = ConfigDir(tmp_path)
    source.sync()
    memo = BuildMemo()
    build(source.world, [V1], memo)
    access = memo.access
    workloads = [V1, V2, ir.Workload("client-a", "shop/client-v1", "127.0.0.21")]
    assert build(source.world, workloads, memo) == build(source.world, workloads)
    assert access is not None and memo.access is access
    table = next(d for d in data.manifests("canary") if d["kind"] == "VirtualServiceRouteTable")
    table["spec"]["routeRules"][0]["httpRoute"]["destinations"][0]["weight"] = 60
    table["spec"]["routeRules"][0]["httpRoute"]["destinations"][1]["weight"] = 40
    write(tmp_path / "VirtualServiceRouteTable-reviews-canary.yaml", table)
    assert source.sync()
    assert build(source.world, workloads, memo) == build(source.world, workloads)
    assert memo.access is access, "a route table is not an input of the access policies"
    policy = next(d for d in data.manifests("canary") if d["kind"] == "AccessPolicy")
    policy["spec"]["rules"].append({"action": "ALLOW", "source": {"virtualService": {"ref": {"name": "ratings"}}},
                                    "destination": {"virtualService": {"ref": {"name": "reviews"}}}})
    write(tmp_path / "AccessPolicy-shop-policy.yaml", policy)
    source.sync()
    assert build(source.world, workloads, memo) == build(source.world, workloads)
    assert memo.access is not access



def test_a_build_with_a_memo_reuses_a_deployment_only_while_its_spec_parent_and_workloads_stay(tmp_path: Path) -> None:
    """A status write keeps the very deployment; a workload arriving, starting or a listener edit make a new
    one. Each time the result is the fresh build's."""
    write_canary(tmp_path)
    source = ConfigDir(tmp_path)
    source.sync()
    memo = BuildMemo()
    key = "shop/reviews-v1"

    def deployment(workloads: list[ir.Workload], starting: frozenset[str] = frozenset()) -> ir.Deployment:
        config, problems = build(source.world, workloads, memo, starting=starting)
        assert (config, problems) == build(source.world, workloads, starting=starting)
        found = config.deployment(key)
        assert found is not None
        return found

    first = deployment([V1])
    source.set_status(compute_status(source.world, now="2026-01-01T00:00:00Z"))
    assert deployment([V1]) is first, "statuses written: the same deployment"
    assert deployment([V1, V2]) is first, "another deployment's workload"
    second = ir.Workload("reviews-v1-b", "shop/reviews-v1", "127.0.0.13", app_ports=V1.app_ports)
    assert deployment([V1, second], frozenset({second.node_id})).starting == (second.address,)
    doc = next(d for d in data.manifests("canary") if d["metadata"]["name"] == "reviews-v1")
    doc["spec"]["listener"][0]["requestTimeoutInMs"] = 20000
    write(tmp_path / "VirtualDeployment-reviews-v1.yaml", doc)
    assert source.sync()
    assert deployment([V1]).ports[0].request_timeout_ms == 20000


def test_a_build_with_a_memo_keeps_the_services_a_change_does_not_touch(tmp_path: Path) -> None:
    """A route-table edit rebuilds its service only (the others are the very objects of the last build); a
    callee's first workload rebuilds the service whose routes it changes; problems are reported every time."""
    _client_mesh(tmp_path)
    source = ConfigDir(tmp_path)
    source.sync()
    memo = BuildMemo()
    first, _ = build(source.world, [V1], memo)
    table = next(d for d in data.manifests("canary") if d["kind"] == "VirtualServiceRouteTable")
    for destination in table["spec"]["routeRules"][0]["httpRoute"]["destinations"]:
        destination["weight"] = 0
    write(tmp_path / "VirtualServiceRouteTable-reviews-canary.yaml", table)
    assert source.sync()
    second, problems = build(source.world, [V1], memo)
    assert (second, problems) == build(source.world, [V1])
    table_key = ObjectKey(Kind.VIRTUAL_SERVICE_ROUTE_TABLE, "shop", "reviews-canary")
    assert problems.get(table_key), "every destination of the rule has weight 0: reported"
    changed = {s.key for s in second.services if all(s is not old for old in first.services)}
    assert changed == {"shop/reviews"}
    third, again = build(source.world, [V1, V2], memo)
    assert (third, again) == build(source.world, [V1, V2])
    assert again.get(table_key) == problems[table_key]
    assert {s.key for s in third.services if all(s is not old for old in second.services)} == {"shop/reviews"}
    assert [d.key for d in third.deployments if all(d is not old for old in second.deployments)] == [V2.deployment]


def test_a_deployment_keeps_its_shape_object_across_builds_while_only_its_endpoints_change(tmp_path: Path) -> None:
    """The views compare shapes by identity first: an equal shape must be the very object of the last build."""
    write_canary(tmp_path)
    ctl, _ = controller(tmp_path)

    async def scenario() -> tuple[bool, bool]:
        ctl.connect(V1)
        await ctl.reconcile()
        before = {d.key: reconcile_module._shape(ctl.config, d) for d in ctl.config.deployments}
        ctl.connect(V2)  # reviews-v2's endpoints change, nothing else
        await ctl.reconcile()
        after = {d.key: reconcile_module._shape(ctl.config, d) for d in ctl.config.deployments}
        return (all(after[k] is before[k] for k in before if k != V2.deployment),
                after[V2.deployment] is before[V2.deployment])

    assert asyncio.run(scenario()) == (True, True)


def test_statuses_wait_for_status_every_after_a_pass(tmp_path: Path) -> None:
    """ACKs keep coming at 2,000 proxies: a status pass runs at most once per ``status_every``."""
    write_canary(tmp_path)
    recorder = Recorder()
    said: dict[ObjectKey, DataPlaneState] = {}
    ctl = Controller(ConfigDir(tmp_path), recorder.render, recorder.publish,
                     Timing(0.01, 0.05, 0.05, status_every=0.4), data_plane=lambda: said)
    table = ObjectKey(Kind.VIRTUAL_SERVICE_ROUTE_TABLE, "shop", "reviews-canary")

    async def scenario() -> tuple[int, int]:
        await connect_both(ctl)
        task = asyncio.create_task(ctl.run())
        await asyncio.sleep(0.05)
        said[table] = DataPlaneState(ConditionStatus.UNKNOWN, "waiting")
        ctl.poke_status()
        await asyncio.sleep(0.15)
        early = ctl.status_rounds
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return early, ctl.status_rounds

    assert asyncio.run(scenario()) == (0, 1)


TABLE = ObjectKey(Kind.VIRTUAL_SERVICE_ROUTE_TABLE, "shop", "reviews-canary")


def gated(folder: Path, status_every: float) -> tuple[Controller[Rendered], dict[ObjectKey, DataPlaneState]]:
    """The canary set and a controller whose data-plane states (what proxies said) the test sets."""
    write_canary(folder)
    said: dict[ObjectKey, DataPlaneState] = {}
    recorder = Recorder()
    ctl = Controller(ConfigDir(folder), recorder.render, recorder.publish,
                     Timing(0.01, 0.05, 0.05, status_every=status_every), data_plane=lambda: said)
    return ctl, said


def test_an_edit_refused_while_a_change_is_applied_passes_once_the_proxies_acknowledge(tmp_path: Path) -> None:
    """The gate reads statuses, which no file carries: the status pass that frees it retries the edit."""
    ctl, said = gated(tmp_path, 0.0)
    table = TABLE

    def path() -> object:
        obj = ctl.source.world.get(table)
        assert obj is not None
        return obj.spec.route_rules[0].http_route.path

    async def scenario() -> tuple[bool, object, object]:
        await connect_both(ctl)
        said[table] = DataPlaneState(ConditionStatus.UNKNOWN, "waiting for proxy reviews-v1-a to acknowledge")
        ctl.update_status()
        write_canary(tmp_path, path="/v2")
        await ctl.reconcile()
        refused, before = table in ctl.source.rejected, path()
        task = asyncio.create_task(ctl.run())
        await asyncio.sleep(0.05)
        said[table] = DataPlaneState(ConditionStatus.TRUE, "")
        ctl.poke_status()  # the ACK; no file changes from here on
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return refused, before, path()

    assert asyncio.run(scenario()) == (True, "/", "/v2")


async def edit_after_acks(ctl: Controller[Rendered], said: dict[ObjectKey, DataPlaneState], keys: list[ObjectKey],
                          folder: Path) -> None:
    """Proxies are behind on ``keys`` and a status pass records it; the loop runs, they ACK (the status pass
    that would record it waits for ``status_every``), then the route table's path is edited to /v2."""
    await connect_both(ctl)
    for key in keys:
        said[key] = DataPlaneState(ConditionStatus.UNKNOWN, "waiting for proxy reviews-v1-a to acknowledge")
    ctl.update_status()
    task = asyncio.create_task(ctl.run())
    for key in keys:
        said[key] = DataPlaneState(ConditionStatus.TRUE, "")
    ctl.poke_status()  # the ACKs
    await asyncio.sleep(0.1)
    write_canary(folder, path="/v2")
    ctl.poke()  # what serve's watch does when a file changed
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def test_an_edit_is_not_refused_on_statuses_that_lag_behind_the_acks(tmp_path: Path) -> None:
    """The proxies have ACKed but the paced status pass has not run yet: the round that reads the edit brings
    the statuses up to date and lets it pass, instead of refusing it until the next pass (here 10 s away)."""
    ctl, said = gated(tmp_path, 10.0)
    table = TABLE

    async def scenario() -> tuple[object, int]:
        await edit_after_acks(ctl, said, [table], tmp_path)
        obj = ctl.source.world.get(table)
        assert obj is not None
        return obj.spec.route_rules[0].http_route.path, len(ctl.source.rejected)

    assert asyncio.run(scenario()) == ("/v2", 0)


def test_the_pass_that_lets_an_edit_through_covers_only_what_the_gate_reads(tmp_path: Path) -> None:
    """The round brings up to date the statuses of the refused table and what it refers to, not every
    object's: the ingress gateway's route table, whose proxies ACKed too, waits for the paced pass (0.8 s of
    an edit's convergence at 5,000 objects)."""
    ctl, said = gated(tmp_path, 10.0)
    other = ObjectKey(Kind.INGRESS_GATEWAY_ROUTE_TABLE, "shop", "shop-gw-routes")

    def active(key: ObjectKey) -> str:
        obj = ctl.source.world.get(key)
        assert obj is not None
        return next(c.status.value for c in obj.status.conditions if c.type.value == "ServiceMeshActive")

    async def scenario() -> tuple[object, str, str]:
        await edit_after_acks(ctl, said, [TABLE, other], tmp_path)
        obj = ctl.source.world.get(TABLE)
        assert obj is not None
        return obj.spec.route_rules[0].http_route.path, active(TABLE), active(other)

    assert asyncio.run(scenario()) == ("/v2", "True", "Unknown")


def test_a_slow_round_spaces_out_the_next_one_but_the_first_is_not_held(tmp_path: Path) -> None:
    """A round of d seconds is followed by the next no sooner than d / ROUND_SHARE after it began; the
    round serving's start ran before the loop does not hold the loop's first round."""
    write_canary(tmp_path)
    recorder = Recorder()
    starts: list[float] = []

    def slow_render(config: ir.MeshConfig, workload: ir.Workload) -> Rendered:
        time.sleep(0.05)
        return recorder.render(config, workload)

    ctl = Controller(ConfigDir(tmp_path), slow_render, recorder.publish, Timing(0.01, 0.05, 0.05, status_every=0.0))
    real = ctl.reconcile

    async def timed(*, statuses: bool = True) -> None:
        starts.append(time.perf_counter())
        await real(statuses=statuses)

    ctl.reconcile = timed  # type: ignore[method-assign]

    async def scenario() -> tuple[float, float]:
        ctl.connect(V1)
        ctl.connect(V2)
        await ctl.reconcile()  # serving's start: about 0.1 s
        began = time.perf_counter()
        task = asyncio.create_task(ctl.run())
        for wanted in (2, 3):  # a first round of the loop that renders both (0.1 s), then a second one
            ctl.refresh(V1.node_id)
            ctl.refresh(V2.node_id)
            while len(starts) < wanted and time.perf_counter() - began < 2.0:
                await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return starts[1] - began, starts[2] - starts[1]

    first, gap = asyncio.run(scenario())
    assert first < 0.15, "the first round of the loop waits for no earlier round (held, it would wait 0.2 s)"
    assert gap >= 0.1 / reconcile_module.ROUND_SHARE * 0.95, "a round of 0.1 s spaces the next one out"


def test_a_slow_status_pass_spaces_out_the_next_ones(tmp_path: Path) -> None:
    """A pass that took d seconds waits d / STATUS_SHARE before the next, however often proxies ACK."""
    write_canary(tmp_path)
    recorder = Recorder()
    said: dict[ObjectKey, DataPlaneState] = {}
    table = ObjectKey(Kind.VIRTUAL_SERVICE_ROUTE_TABLE, "shop", "reviews-canary")

    def slow_data_plane() -> dict[ObjectKey, DataPlaneState]:
        time.sleep(0.05)  # a pass of at least 50 ms: the next may start 250 ms after this one began
        return said

    ctl = Controller(ConfigDir(tmp_path), recorder.render, recorder.publish,
                     Timing(0.01, 0.05, 0.05, status_every=0.0), data_plane=slow_data_plane)

    async def scenario() -> int:
        await connect_both(ctl)
        task = asyncio.create_task(ctl.run())
        await asyncio.sleep(0.05)
        before = ctl.status_rounds
        for i in range(20):  # an ACK that changes what the proxies said every 20 ms, for 0.4 s
            said[table] = DataPlaneState(ConditionStatus.UNKNOWN, f"waiting for proxy {i}")
            ctl.poke_status()
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return ctl.status_rounds - before

    assert 1 <= asyncio.run(scenario()) <= 2, "0.4 s of ACKs: passes at 0 and 0.25 s at most"


def test_the_loop_lets_a_rounds_pushes_go_out_before_its_status_pass(tmp_path: Path) -> None:
    """A status pass is synchronous: run right after a round, it held the pushes the round published."""
    write_canary(tmp_path)
    events: list[str] = []
    loop_tasks: set[asyncio.Task[None]] = set()

    async def push(node_id: str) -> None:
        for _ in range(5):  # a stream takes a few turns of the loop to write its response
            await asyncio.sleep(0)
        events.append(f"pushed {node_id}")

    def publish(workload: ir.Workload, _rendered: Rendered) -> None:
        task = asyncio.get_running_loop().create_task(push(workload.node_id))
        loop_tasks.add(task)
        task.add_done_callback(loop_tasks.discard)

    def data_plane() -> dict[ObjectKey, DataPlaneState]:
        events.append("status pass")
        return {}

    recorder = Recorder()
    ctl = Controller(ConfigDir(tmp_path), recorder.render, publish, Timing(0.01, 0.05, 0.05, status_every=0.0),
                     data_plane=data_plane)

    async def scenario() -> list[str]:
        ctl.connect(V1)
        task = asyncio.create_task(ctl.run())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return events[:2]

    assert asyncio.run(scenario()) == ["pushed reviews-v1-a", "status pass"]
