"""Canary traffic shifting with the real control plane, real Envoy sidecars and real traffic.

The mesh: a client (egress-only deployment) calls ``reviews``, served by v1 and v2 (and v3 later),
each an echo app behind its own sidecar; route tables live in the config directory and are edited
while traffic flows. Weights are checked by who answered; safety by every status code.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Mesh, Results, load, mesh

pytestmark = pytest.mark.envoy

API = "servicemesh.oci.oracle.com/v1beta1"
HOST = "reviews.shop.mesh"
PORT, APP_PORT = 9080, 19080


def obj(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name, "namespace": "shop"}, "spec": spec}


def allow(name: str, source: str, destination: str) -> dict[str, Any]:
    """An AccessPolicy letting the virtual service ``source`` call ``destination`` (default deny otherwise)."""
    return obj("AccessPolicy", name, {"mesh": {"ref": {"name": "shop"}}, "rules": [{
        "action": "ALLOW", "source": {"virtualService": {"ref": {"name": source}}},
        "destination": {"virtualService": {"ref": {"name": destination}}}}]})


def base(versions: tuple[str, ...] = ("v1", "v2"), policy: str = "UNIFORM") -> list[dict[str, Any]]:
    docs = [
        obj("Mesh", "shop", {"mtls": {"minimum": "DISABLED"}}),
        allow("client-to-reviews", "client", "reviews"),
        obj("VirtualService", "reviews", {"mesh": {"ref": {"name": "shop"}}, "hosts": [HOST],
                                          "defaultRoutingPolicy": {"type": policy}, "mtls": {"mode": "DISABLED"}}),
        obj("VirtualService", "client", {"mesh": {"ref": {"name": "shop"}}, "mtls": {"mode": "DISABLED"}}),
        obj("VirtualDeployment", "client", {"virtualService": {"ref": {"name": "client"}}}),
    ]
    docs += [obj("VirtualDeployment", f"reviews-{v}", {
        "virtualService": {"ref": {"name": "reviews"}}, "listener": [{"protocol": "HTTP", "port": PORT}],
        "serviceDiscovery": {"type": "DNS", "hostname": f"reviews-{v}.shop.mesh"}}) for v in versions]
    return docs


def table(weights: dict[str, int], *, priority: int | None = None, path: str = "/",
          name: str = "reviews-canary") -> dict[str, Any]:
    spec: dict[str, Any] = {"virtualService": {"ref": {"name": "reviews"}}, "routeRules": [{"httpRoute": {
        "path": path, "pathType": "PREFIX",
        "destinations": [{"virtualDeployment": {"ref": {"name": f"reviews-{v}"}}, "weight": w, "port": PORT}
                         for v, w in weights.items()]}}]}
    if priority is not None:
        spec["priority"] = priority
    return obj("VirtualServiceRouteTable", name, spec)


def start(m: Mesh, versions: tuple[str, ...] = ("v1", "v2"), *, expect: int = 200) -> str:
    """Start control plane, apps and sidecars; return the client sidecar's outbound URL once the
    client's requests get ``expect`` (every time)."""
    m.start_control_plane()
    for i, version in enumerate(versions):
        m.start_app(f"reviews-{version}", 11 + i, APP_PORT)
        m.start_sidecar(f"reviews-{version}", f"shop/reviews-{version}", 11 + i, {PORT: APP_PORT})
    m.start_sidecar("client", "shop/client", 10)
    url = f"http://{m.address(10)}:15001"
    m.wait_for(lambda: load(url, HOST, count=40, seconds=5).statuses == {expect: 40}, 30,
               f"the client's requests to get {expect}")
    return url


def load_during(action: Callable[[], None], url: str, *, count: int, rate: float, seconds: float) -> Results:
    """Requests at ``rate`` (32 at a time) while ``action`` runs in a thread; joined before returning."""
    worker = threading.Thread(target=action)
    worker.start()
    try:
        return load(url, HOST, count=count, rate=rate, concurrency=32, seconds=seconds)
    finally:
        worker.join()


def share(results: Results, name: str) -> float:
    return results.names.count(name) / max(1, len(results.names))


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_a_90_10_route_table_splits_2000_requests_within_3_points(tmp_path: Path, delta: bool) -> None:
    with mesh(tmp_path, delta=delta) as m:
        m.write("mesh.yaml", [*base(), table({"v1": 90, "v2": 10})])
        url = start(m)
        m.wait_for(lambda: "reviews-v2" in load(url, HOST, count=100, seconds=5).names, 20, "v2 to get traffic")
        results = load(url, HOST, count=2000, concurrency=32, seconds=60)
        assert results.failed == 0, (results.statuses, results.errors[:3])
        assert len(results.names) == 2000
        assert abs(share(results, "reviews-v1") - 0.90) <= 0.03, results.names.count("reviews-v1")
        assert abs(share(results, "reviews-v2") - 0.10) <= 0.03


def test_shifting_all_traffic_to_v2_under_load_drops_no_request(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        m.write("mesh.yaml", [*base(), table({"v1": 90, "v2": 10})])
        url = start(m)
        m.wait_for(lambda: "reviews-v2" in load(url, HOST, count=100, seconds=5).names, 20, "v2 to get traffic")
        edited: dict[str, float] = {}

        def edit() -> None:
            time.sleep(2.0)
            m.write("mesh.yaml", [*base(), table({"v1": 0, "v2": 100})])
            edited["at"] = time.monotonic()

        started = time.monotonic()
        results = load_during(edit, url, count=1200, rate=150, seconds=15)
        assert results.failed == 0, (results.statuses, results.errors[:3])
        assert len(results.names) >= 1000, "the load ran at 150 requests/s"
        since_edit = edited["at"] - started
        late_v1 = [t for t, _, name in results.timeline if name == "reviews-v1" and t > since_edit + 2.0]
        assert late_v1 == [], f"v1 still answered {len(late_v1)} requests more than 2 s after the edit"
        assert any(name == "reviews-v2" and t > since_edit for t, _, name in results.timeline)


def test_adding_a_third_version_at_10_percent_causes_no_503(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        m.write("mesh.yaml", [*base(("v1", "v2", "v3")), table({"v1": 50, "v2": 50})])
        url = start(m, ("v1", "v2", "v3"))

        def edit() -> None:
            time.sleep(1.5)
            m.write("mesh.yaml", [*base(("v1", "v2", "v3")), table({"v1": 45, "v2": 45, "v3": 10})])

        results = load_during(edit, url, count=900, rate=120, seconds=12)
        assert results.failed == 0, (results.statuses, results.errors[:3])
        assert "reviews-v3" in results.names, "v3 got its share after the edit"


def test_a_destination_without_workloads_is_on_standby_and_takes_no_traffic(tmp_path: Path) -> None:
    """v3 is in the route table but has no workload: the client's Envoy accepts its cluster (empty load
    assignment, kept so that v3's first workload changes routes only) and routes every request elsewhere."""
    with mesh(tmp_path) as m:
        m.write("mesh.yaml", [*base(("v1", "v2", "v3")), table({"v1": 45, "v2": 45, "v3": 10})])
        url = start(m, ("v1", "v2"))
        results = load(url, HOST, count=400, concurrency=16, seconds=15)
        assert results.failed == 0, (results.statuses, results.errors[:3])
        assert set(results.names) == {"reviews-v1", "reviews-v2"}
        status, dump = m.admin("/debug/config_dump?proxy=client")
        assert status == 200 and f"outbound|{PORT}|shop/reviews-v3" in dump, "the standby cluster was sent"
        [client] = [p for p in m.syncz()["proxies"] if p["node"] == "client"]
        assert client["types"]["CDS"]["status"] == "SYNCED", "and the client's Envoy accepted it"


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_a_workload_arriving_under_load_takes_traffic_only_once_its_proxy_is_ready(tmp_path: Path,
                                                                                  delta: bool) -> None:
    """v3 is in the route table at 10 % with no workload; its app and sidecar start while requests flow.
    Its workload becomes an endpoint only once its proxy has accepted its configuration, so no request is
    sent to a sidecar whose listeners are not there yet (before readiness: 1 to 29 of 1,200 got 503)."""
    with mesh(tmp_path, delta=delta) as m:
        m.write("mesh.yaml", [*base(("v1", "v2", "v3")), table({"v1": 45, "v2": 45, "v3": 10})])
        url = start(m, ("v1", "v2"))

        def arrive() -> None:
            time.sleep(1.0)
            m.start_app("reviews-v3", 13, APP_PORT)
            m.start_sidecar("reviews-v3", "shop/reviews-v3", 13, {PORT: APP_PORT}, wait=False)

        results = load_during(arrive, url, count=1200, rate=120, seconds=15)
        assert results.failed == 0, (results.statuses, results.errors[:3])
        assert "reviews-v3" in results.names, "v3 got its share once its proxy was ready"


def test_a_workload_whose_proxy_rejects_its_listeners_takes_no_traffic(tmp_path: Path) -> None:
    """v3's sidecar cannot bind its listener (a socket squats on the address without listening), so its
    Envoy NACKs LDS: v3 stays out of load balancing, and no request is sent where nothing listens. Once
    its proxy accepts a configuration, v3 takes its share."""
    with mesh(tmp_path) as m:
        docs = [*base(("v1", "v2", "v3")), table({"v1": 45, "v2": 45, "v3": 10})]
        m.write("mesh.yaml", docs)
        url = start(m, ("v1", "v2"))
        m.start_app("reviews-v3", 13, APP_PORT)
        with socket.socket() as squatter:
            squatter.bind((m.address(13), PORT))
            m.start_sidecar("reviews-v3", "shop/reviews-v3", 13, {PORT: APP_PORT}, wait=False)
            m.wait_for(lambda: lds_status(m, "reviews-v3") == "NACKED", 20, "v3's proxy to reject its listeners")
            m.wait_for(lambda: lds_status(m, "client") == "SYNCED", 10, "the client to be in sync")
            results = load(url, HOST, count=400, concurrency=16, seconds=15)
            assert results.failed == 0, (results.statuses, results.errors[:3])
            assert set(results.names) == {"reviews-v1", "reviews-v2"}
            assert proxy(m, "reviews-v3")["ready"] is False and proxy(m, "client")["ready"] is True
        v3 = next(d for d in docs if d["metadata"]["name"] == "reviews-v3")
        v3["spec"]["listener"][0]["requestTimeoutInMs"] = 20000  # a new version: Envoy tries it, and binds
        m.write("mesh.yaml", docs)
        m.wait_for(lambda: "reviews-v3" in load(url, HOST, count=100, seconds=5).names, 20,
                   "v3 to take traffic once its proxy accepted its listeners")
        assert proxy(m, "reviews-v3")["ready"] is True


def test_a_sidecar_whose_envoy_restarts_is_no_endpoint_until_it_is_configured_again(tmp_path: Path) -> None:
    """v3 is ready (weight 0, so nothing ever connected to it); its Envoy stops and a new one, same node id,
    starts within the grace period but cannot bind its listener. The workload is the one the control plane
    knows, but the new Envoy's first request holds no configuration: it is no endpoint, so giving v3 10 %
    sends nothing where nothing listens (before: v3 stayed an endpoint and its share got 503s)."""
    with mesh(tmp_path) as m:
        docs = [*base(("v1", "v2", "v3"))]
        m.write("mesh.yaml", [*docs, table({"v1": 50, "v2": 50, "v3": 0})])
        m.start_control_plane("--grace-ms", "30000")
        for i, version in enumerate(("v1", "v2", "v3")):
            m.start_app(f"reviews-{version}", 11 + i, APP_PORT)
            m.start_sidecar(f"reviews-{version}", f"shop/reviews-{version}", 11 + i, {PORT: APP_PORT})
        m.start_sidecar("client", "shop/client", 10)
        url = f"http://{m.address(10)}:15001"
        m.wait_for(lambda: proxy(m, "reviews-v3")["ready"] and load(url, HOST, count=20, seconds=5).failed == 0,
                   30, "the mesh to serve, v3 ready")
        m.envoys["reviews-v3"].stop()
        with socket.socket() as squatter:
            squatter.bind((m.address(13), PORT))
            m.start_sidecar("reviews-v3", "shop/reviews-v3", 13, {PORT: APP_PORT}, wait=False)
            m.wait_for(lambda: lds_status(m, "reviews-v3") == "NACKED", 20, "v3's new proxy to reject its listeners")
            assert proxy(m, "reviews-v3")["ready"] is False
            routes = proxy(m, "client")["types"]["RDS"]["acked"]
            m.write("mesh.yaml", [*docs, table({"v1": 45, "v2": 45, "v3": 10})])
            m.wait_for(lambda: proxy(m, "client")["types"]["RDS"]["acked"] != routes, 10,
                       "the client to accept the new weights")
            results = load(url, HOST, count=400, concurrency=16, seconds=15)
            assert results.failed == 0, (results.statuses, results.errors[:3])
            assert set(results.names) == {"reviews-v1", "reviews-v2"}


def proxy(m: Mesh, node: str) -> dict[str, Any]:
    """The node's entry in /debug/syncz."""
    found: dict[str, Any] = next(p for p in m.syncz()["proxies"] if p["node"] == node)
    return found


def lds_status(m: Mesh, node: str) -> str:
    return str(proxy(m, node)["types"]["LDS"]["status"])


def test_deny_default_refuses_and_priority_and_prefix_rules_route(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        m.write("mesh.yaml", base(policy="DENY"))
        url = start(m, expect=403)
        denied = load(url, HOST, count=20, seconds=5)
        assert denied.statuses == {403: 20}
        m.write("mesh.yaml", [*base(policy="DENY"), table({"v2": 1}, priority=1, path="/api", name="api"),
                              table({"v1": 1}, priority=5, path="/", name="rest")])
        m.wait_for(lambda: set(load(url, HOST, count=20, seconds=5, path="/api/x").names) == {"reviews-v2"}, 20,
                   "/api to route to v2")
        assert set(load(url, HOST, count=40, seconds=5, path="/other").names) == {"reviews-v1"}
        assert set(load(url, HOST, count=40, seconds=5, path="/api/books").names) == {"reviews-v2"}
