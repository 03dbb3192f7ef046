"""The data plane outlives the control plane; rejected configuration is reported, not looped."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Mesh, load, mesh
from tests.e2e.test_canary import APP_PORT, HOST, PORT, base, start, table

pytestmark = pytest.mark.envoy


def all_synced(syncz: dict[str, Any], nodes: set[str]) -> bool:
    proxies = {p["node"]: p for p in syncz["proxies"]}
    return set(proxies) >= nodes and all(
        t["status"] == "SYNCED" for node in nodes for t in proxies[node]["types"].values())


def test_stopping_the_control_plane_for_5_s_under_load_fails_no_request(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        m.write("mesh.yaml", [*base(), table({"v1": 50, "v2": 50})])
        url = start(m)
        nodes = {"reviews-v1", "reviews-v2", "client"}
        m.wait_for(lambda: all_synced(m.syncz(), nodes), 20, "every proxy to be SYNCED")

        def outage() -> None:
            time.sleep(2.0)
            m.stop_control_plane()
            time.sleep(5.0)
            m.restart_control_plane()

        chaos = threading.Thread(target=outage)
        chaos.start()
        results = load(url, HOST, count=1500, rate=100, concurrency=16, seconds=15)
        chaos.join()
        assert results.failed == 0, (results.statuses, results.errors[:3])
        assert len(results.names) >= 1200, "the load kept running through the outage"
        assert {"reviews-v1", "reviews-v2"} <= set(results.names)
        m.wait_for(lambda: all_synced(m.syncz(), nodes), 40, "every proxy to be SYNCED after the restart")
        after = load(url, HOST, count=200, seconds=10)
        assert after.failed == 0 and {"reviews-v1", "reviews-v2"} <= set(after.names)


def conditions_of(m: Mesh, kind: str, name: str) -> dict[str, dict[str, Any]]:
    objects = json.loads(m.admin("/debug/resources")[1])["objects"]
    found = next(o for o in objects if o["kind"] == kind and o["name"] == name)
    return {c["type"]: c for c in found["conditions"]}


def test_a_configuration_envoy_rejects_is_reported_and_not_resent(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        m.write("mesh.yaml", base(("v1",)))
        m.start_control_plane()
        with socket.socket() as squatter:  # something else holds the sidecar's inbound address
            squatter.bind((m.address(11), PORT))
            squatter.listen(1)
            envoy = m.start_sidecar("reviews-v1", "shop/reviews-v1", 11, {PORT: APP_PORT}, wait=False)

            def lds() -> dict[str, Any]:
                proxy = next(p for p in m.syncz()["proxies"] if p["node"] == "reviews-v1")
                result: dict[str, Any] = proxy["types"]["LDS"]
                return result

            m.wait_for(lambda: lds()["status"] == "NACKED", 20, "the proxy to reject its listeners")
            assert "cannot bind" in lds()["nack_message"] and "Address already in use" in lds()["nack_message"]
            m.wait_for(lambda: conditions_of(m, "VirtualDeployment", "reviews-v1")["ServiceMeshActive"]["status"]
                       == "False", 10, "the virtual deployment's status to show the rejection")
            active = conditions_of(m, "VirtualDeployment", "reviews-v1")["ServiceMeshActive"]
            assert active["reason"] == "ConfigurationRejected" and "cannot bind" in active["message"]
            assert conditions_of(m, "Mesh", "shop")["ServiceMeshActive"]["status"] == "True", "parents unaffected"
            time.sleep(3)  # the rejected version is parked: Envoy is not sent it again
            assert "listener_manager.lds.update_rejected: 1" in envoy.admin_get("/stats?filter=lds.update")[1]
        # the port is free now; a change of the deployment's configuration is accepted
        docs = base(("v1",))
        docs[-1]["spec"]["listener"][0]["requestTimeoutInMs"] = 20000
        m.write("mesh.yaml", docs)
        m.wait_for(lambda: lds()["status"] == "SYNCED", 20, "the next configuration to be accepted")
        m.wait_for(lambda: conditions_of(m, "VirtualDeployment", "reviews-v1")["ServiceMeshActive"]["status"]
                   == "True", 10, "the status to recover")
