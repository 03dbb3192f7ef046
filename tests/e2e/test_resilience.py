"""The data plane outlives the control plane; rejected configuration is reported, not looped."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import load, mesh
from tests.e2e.test_canary import HOST, base, start, table

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
