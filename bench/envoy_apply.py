"""Benchmark: real Envoys taking C clusters over ADS, next to the same Envoys loading them statically. Prints JSON.

The physical limit of any control plane is Envoy applying what it is sent. This measures how close
meshplane's ADS server gets to it, in one run, on one machine:

* ``static``: K Envoys started together, each from a bootstrap holding C STATIC clusters with E endpoints
  each; the time from starting them to every one answering ``/ready`` LIVE, minus the same for a bootstrap
  with no clusters (process start-up is not cluster loading). The median of ``--repeat`` runs.
* ``xds``: K Envoys already connected to meshplane's ADS server (``meshplane.xds.server.serve`` on
  127.0.0.1, plaintext: TLS costs the same on both sides and is measured elsewhere), holding no cluster.
  The C clusters (EDS, as the mesh sends them) and their C ClusterLoadAssignments (E endpoints each) are
  published for every Envoy at once (``SnapshotCache.set``); the time until the last Envoy ACKed CDS at the
  new version (Envoy ACKs CDS only once the new clusters are warm, i.e. have their endpoints).
  Then ``modify``: every cluster's connect timeout changes (a new content hash for all C), timed the same
  way; then ``remove``: back to no clusters.

``ratio`` is ``xds.add`` over ``static``: 1.0 means the control plane adds nothing to Envoy's own cost.
Endpoints are addresses in 127.1.0.0/16 that nothing listens on; no traffic is sent, and no health checks
run. Every Envoy is stopped at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meshplane.controlplane import procs
from meshplane.controlplane.demo import envoy_binary
from meshplane.xds import messages
from meshplane.xds.bootstrap import BootstrapSpec, render_bootstrap
from meshplane.xds.cache import Snapshot, SnapshotCache
from meshplane.xds.messages import Upstream
from meshplane.xds.resources import Resource, TypeUrl
from meshplane.xds.server import Callbacks, serve

_base_ids = itertools.count(31_000 + (time.time_ns() // 1000) % 10_000 * 2, 2)


# ------------------------------------------------------------------------------------ configuration


def endpoints(cluster: int, count: int) -> list[str]:
    return [f"127.1.{(cluster * count + i) // 250 % 250}.{(cluster * count + i) % 250 + 1}" for i in range(count)]


def xds_resources(clusters: int, count: int, connect_ms: int = 5_000) -> list[Resource]:
    """C EDS clusters and their load assignments, as the mesh would send them."""
    out = []
    for i in range(clusters):
        name = f"outbound|8080|bench/svc-{i}"
        cluster = messages.build_eds_cluster(name, upstream=Upstream.HTTP1)
        cluster.connect_timeout.CopyFrom(messages.build_duration(connect_ms))
        out.append(Resource.of(cluster, [(TypeUrl.ENDPOINT.value, name)]))  # as translate says: it names its CLA
        out.append(Resource.of(messages.build_load_assignment(name, endpoints(i, count), 8080)))
    return out


def static_bootstrap(clusters: int, count: int) -> dict[str, Any]:
    """A bootstrap with the same clusters as STATIC ones (endpoints inline), and an admin port the kernel picks."""
    from google.protobuf import json_format

    config: dict[str, Any] = {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
                              "node": {"id": "static", "cluster": "bench"},
                              "static_resources": {"clusters": []}}
    for i in range(clusters):
        name = f"outbound|8080|bench/svc-{i}"
        cluster = messages.build_static_cluster(name, "127.0.0.1", 8080, upstream=Upstream.HTTP1)
        cluster.load_assignment.CopyFrom(messages.build_load_assignment(name, endpoints(i, count), 8080))
        config["static_resources"]["clusters"].append(json_format.MessageToDict(cluster,
                                                                                 preserving_proto_field_name=True))
    return config


# ------------------------------------------------------------------------------------------ Envoys


class Envoys:
    """K Envoy processes on bootstraps in ``workdir``; always stopped by :meth:`stop`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, bootstrap: dict[str, Any], name: str) -> None:
        base_id = next(_base_ids)
        config = self.workdir / f"{name}-{base_id}.json"
        config.write_text(json.dumps(bootstrap))
        admin = self.workdir / f"{name}-{base_id}.admin"
        process = subprocess.Popen(
            [envoy_binary(), "-c", str(config), "--base-id", str(base_id), "--concurrency", "1",
             "--admin-address-path", str(admin), "-l", "error"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes.append((process, admin))

    def wait_ready(self, timeout: float) -> None:
        """Until every Envoy answers /ready with 200 (polled every 5 ms); raises after ``timeout``."""
        pending = list(self.processes)
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} Envoy(s) not ready within {timeout} s")
            pending = [p for p in pending if not _ready(*p)]
            if pending:
                time.sleep(0.005)

    def stop(self) -> None:
        for process, _ in self.processes:
            procs.stop(process)
        self.processes.clear()


def _ready(process: subprocess.Popen[bytes], admin: Path) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"Envoy exited with {process.returncode}")
    address = admin.read_text().strip() if admin.exists() else ""
    if not address:
        return False
    with contextlib.suppress(OSError), urllib.request.urlopen(f"http://{address}/ready", timeout=1) as reply:
        return bool(reply.status == 200)
    return False


@contextlib.contextmanager
def envoys(workdir: Path) -> Iterator[Envoys]:
    running = Envoys(workdir)
    try:
        yield running
    finally:
        running.stop()


# ------------------------------------------------------------------------------------------ static


def static_seconds(workdir: Path, k: int, clusters: int, count: int, timeout: float) -> float:
    """Seconds for K Envoys started together to be LIVE with ``clusters`` static clusters."""
    bootstrap = static_bootstrap(clusters, count)
    with envoys(workdir) as running:
        started = time.perf_counter()
        for i in range(k):
            running.start(bootstrap, f"static-{clusters}-{i}")
        running.wait_ready(timeout)
        elapsed = time.perf_counter() - started
    print(f"static {clusters}: {elapsed:.3f} s", file=sys.stderr)
    return elapsed


# --------------------------------------------------------------------------------------------- xDS


class Acks:
    """When each node ACKed each type's latest version (the ADS server's ``on_ack`` hook)."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, str, str], float] = {}

    def on_ack(self, node_id: str, type_url: str, version: str) -> None:
        self.at.setdefault((node_id, type_url, version), time.perf_counter())

    def done(self, nodes: list[str], snapshot: Snapshot) -> float | None:
        """The time the last node ACKed the CDS version of ``snapshot``, or None if one has not yet.

        Envoy ACKs a CDS response only once every new or changed cluster in it is warm, i.e. has its
        endpoints: that ACK is the moment the configuration is in use.
        """
        times = [self.at.get((node, str(TypeUrl.CLUSTER), snapshot.version(TypeUrl.CLUSTER))) for node in nodes]
        return None if any(t is None for t in times) else max(t for t in times if t is not None)


async def xds_seconds(workdir: Path, k: int, clusters: int, count: int, *, delta: bool,
                      timeout: float) -> dict[str, float]:
    """Add, modify and remove ``clusters`` clusters on K connected Envoys; seconds for each, to the last ACK."""
    cache, acks = SnapshotCache(), Acks()
    server, port = await serve("127.0.0.1:0", cache, Callbacks(on_ack=acks.on_ack))
    nodes = [f"bench-{i}" for i in range(k)]
    try:
        with envoys(workdir) as running:
            for node in nodes:
                cache.set(node, Snapshot())
                spec = BootstrapSpec(node, "bench", {}, "127.0.0.1", port, admin_port=0, delta=delta)
                running.start(render_bootstrap(spec), node)
            await asyncio.to_thread(running.wait_ready, timeout)
            seconds = {}
            for step, resources in (("add", xds_resources(clusters, count)),
                                    ("modify", xds_resources(clusters, count, connect_ms=4_000)), ("remove", [])):
                seconds[step] = await _timed_set(cache, acks, nodes, Snapshot(resources), timeout)
                print(f"{'delta' if delta else 'sotw'} {step} {clusters}: {seconds[step]:.3f} s", file=sys.stderr)
            return seconds
    finally:
        await server.stop(0)


async def _timed_set(cache: SnapshotCache, acks: Acks, nodes: list[str], snapshot: Snapshot,
                     timeout: float) -> float:
    acks.at.clear()  # an empty snapshot has the version the first one had: only ACKs from now count
    started = time.perf_counter()
    for node in nodes:
        cache.set(node, snapshot)
    deadline = started + timeout
    while (finished := acks.done(nodes, snapshot)) is None:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"not every Envoy ACKed {len(snapshot.items(TypeUrl.CLUSTER))} clusters in {timeout} s")
        await asyncio.sleep(0.002)
    return finished - started


# ------------------------------------------------------------------------------------------ main


def measure(args: argparse.Namespace, clusters: int, workdir: Path) -> dict[str, Any]:
    baseline = statistics.median(static_seconds(workdir, args.envoys, 0, args.endpoints, args.timeout)
                                 for _ in range(args.repeat))
    loaded = statistics.median(static_seconds(workdir, args.envoys, clusters, args.endpoints, args.timeout)
                               for _ in range(args.repeat))
    static = max(loaded - baseline, 1e-6)
    result: dict[str, Any] = {"clusters": clusters, "static_start_s": round(loaded, 3),
                              "empty_start_s": round(baseline, 3), "static_s": round(static, 3)}
    for mode in args.modes:
        runs = [asyncio.run(xds_seconds(workdir, args.envoys, clusters, args.endpoints, delta=mode == "delta",
                                        timeout=args.timeout)) for _ in range(args.repeat)]
        steps = {step: statistics.median(run[step] for run in runs) for step in ("add", "modify", "remove")}
        result[mode] = {step: round(value, 3) for step, value in steps.items()}
        result[mode]["ratio"] = round(steps["add"] / static, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--clusters", default="1000,5000", help="cluster counts, comma-separated (1000,5000)")
    parser.add_argument("--envoys", type=int, default=2, help="Envoys per measurement, started together (2)")
    parser.add_argument("--endpoints", type=int, default=10, help="endpoints per cluster (10)")
    parser.add_argument("--modes", default="sotw,delta", help="ADS variants: sotw, delta or both (sotw,delta)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported (3)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds any one step may take (60)")
    args = parser.parse_args()
    args.modes = [m for m in args.modes.split(",") if m]
    if not set(args.modes) <= {"sotw", "delta"}:
        parser.error("--modes takes sotw and/or delta")
    with tempfile.TemporaryDirectory(prefix="meshplane-bench-") as tmp:
        results = [measure(args, int(c), Path(tmp)) for c in args.clusters.split(",") if c]
    json.dump({"benchmark": "envoy", "envoys": args.envoys, "endpoints_per_cluster": args.endpoints,
               "repeat": args.repeat, "results": results}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
