"""Certificate rotation under load: short-lived certificates renewed over SDS, no request fails."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.harness import Mesh, load, mesh
from tests.e2e.test_canary import APP_PORT, HOST, PORT
from tests.e2e.test_mtls import manifests

pytestmark = pytest.mark.envoy


def serials(m: Mesh, node: str) -> set[str]:
    """Serial numbers of the leaf certificates the proxy holds now (Envoy's /certs; the chain's first)."""
    status, body = m.envoys[node].admin_get("/certs")
    if status != 200:
        return set()
    found = set()
    for context in json.loads(body).get("certificates", []):
        found |= {c["serial_number"] for c in context.get("cert_chain", [])[:1]}
    return found


def test_ten_second_certificates_rotate_for_a_minute_under_load_without_a_failed_request(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        m.write("mesh.yaml", manifests("STRICT"))
        m.start_control_plane("--cert-ttl", "10")
        m.start_app("reviews-v1", 11, APP_PORT)
        m.start_sidecar("reviews-v1", "shop/reviews-v1", 11, {PORT: APP_PORT})
        m.start_sidecar("client", "shop/client", 10)
        url = f"http://{m.address(10)}:15001"
        m.wait_for(lambda: load(url, HOST, count=20, seconds=5).statuses == {200: 20}, 30, "mTLS traffic to flow")
        seen: dict[str, set[str]] = {"reviews-v1": set(), "client": set()}
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                for node in seen:
                    seen[node] |= serials(m, node)
                time.sleep(0.5)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            results = load(url, HOST, count=3000, rate=50, concurrency=8, seconds=62)
        finally:
            done.set()
            watcher.join()
        assert results.failed == 0, (results.statuses, results.errors[:3])
        assert len(results.names) >= 2900, "a constant load for the whole minute"
        for node, found in seen.items():
            assert len(found) >= 4, f"{node} held only {len(found)} distinct certificates in 60 s"
