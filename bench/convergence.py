"""Benchmark: config-directory edit → every real Envoy acknowledged it. Prints JSON.

Runs the standalone control plane in-process on the demo's catalog canary, with two serving sidecars
(catalog-v1, catalog-v2) and ``--clients`` client sidecars (real Envoy 1.40, one worker each), then
rewrites the route table's weights ``--edits`` times. Each edit is timed from the file being replaced
to every proxy reporting SYNCED on every type (polled every 5 ms). That includes the directory poll
(every 0.25 s), the coalescing quiet time (``--quiet-ms``), build, translate, push, and Envoy applying
and acknowledging. Loopback only; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable

from aiohttp import web

from meshplane.controlplane import echo
from meshplane.controlplane.demo import APP_PORT, PORT, Demo, all_synced
from meshplane.controlplane.reconcile import Timing
from meshplane.controlplane.serve import ControlPlane, Options
from meshplane.xds.resources import TypeUrl

WEIGHTS = ((90, 10), (50, 50), (10, 90), (0, 100), (100, 0))


async def measure(clients: int, edits: int, quiet_ms: int) -> dict[str, object]:
    demo = Demo(sys.stderr, 0)
    demo.write_config(*WEIGHTS[0])
    timing = Timing(quiet=quiet_ms / 1000, max_delay=1.0)
    plane = ControlPlane(Options(demo.root / "config", demo.root / "state", "127.0.0.1:0", "127.0.0.1:0", timing))
    apps: list[web.AppRunner] = []
    try:
        await plane.start()
        for host, name in ((11, "catalog-v1"), (12, "catalog-v2")):
            apps.append(await echo.serve(f"{demo.subnet}.{host}", APP_PORT, name))
            demo.start_sidecar(plane, name, host, {PORT: APP_PORT})
        for i in range(clients):
            demo.start_sidecar(plane, "web-v1", 20 + i, {PORT: APP_PORT}, node_id=f"web-v1-{i}")
        started = time.perf_counter()
        await until(lambda: all_synced(plane) and len(plane.controller.workloads) == clients + 2, 60)
        cold = time.perf_counter() - started
        times = [await timed_edit(demo, plane, WEIGHTS[(i + 1) % len(WEIGHTS)]) for i in range(edits)]
    finally:
        await demo.stop(plane, apps)
    return {"benchmark": "convergence", "proxies": clients + 2, "edits": edits, "quiet_ms": quiet_ms,
            "cold_sync_s": round(cold, 3), "edit_to_all_acked_p50_s": round(statistics.median(times), 3),
            "edit_to_all_acked_max_s": round(max(times), 3),
            "control_plane_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


async def timed_edit(demo: Demo, plane: ControlPlane, weights: tuple[int, int]) -> float:
    """From the file write until every client proxy (the ones that may call catalog: their routes change; the
    catalog sidecars may call nothing) ACKed a route configuration newer than the one it had.

    The control plane is left idle first, so the edit is not picked up early by a round that
    acknowledgements of the previous edit triggered.
    """
    await asyncio.sleep(0.5)
    before = {node: version for node, version in route_versions(plane).items() if node.startswith("web-v1-")}
    begin = time.perf_counter()
    demo.write_config(*weights)

    def converged() -> bool:
        now = route_versions(plane)
        return all(now.get(node) not in (None, old) for node, old in before.items()) and all_synced(plane)

    await until(converged, 30)
    return time.perf_counter() - begin


def route_versions(plane: ControlPlane) -> dict[str, str]:
    """The route-configuration version each proxy has acknowledged."""
    states = plane.xds.ads.sync_states() if plane.xds is not None else {}
    return {node: types[TypeUrl.ROUTE.value].acked for node, types in states.items() if TypeUrl.ROUTE.value in types}


async def until(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        with contextlib.suppress(Exception):
            if check():
                return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"not converged within {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clients", type=int, default=3, help="client sidecars besides the two servers (3)")
    parser.add_argument("--edits", type=int, default=10, help="route-table edits to time (10)")
    parser.add_argument("--quiet-ms", type=int, default=100, help="coalescing quiet period (100)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.clients, args.edits, args.quiet_ms))))


if __name__ == "__main__":
    main()
