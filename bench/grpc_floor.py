"""Benchmark: what an idle ADS stream costs a bare grpc.aio server in memory, before any configuration. JSON.

The memory floor under the control plane's per-proxy figure: a gRPC server (the same options as
``meshplane serve``) whose ADS method only reads requests, and N clients in a child process, each on its
own channel with one open stream that sends one request. With ``--tls`` (the default) the server
requires client certificates from meshplane's own xDS CA, as ``serve`` does; ``--plaintext`` measures the
same without TLS. Reported: the server's RSS before the clients and once all N streams are open, and
the difference per stream. Both processes stop at the end (the child is killed if it does not go).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from meshplane.controlplane import xdsauth
from meshplane.xds.server import _grpc_options


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Idle(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """Counts open streams; reads requests and never answers."""

    def __init__(self) -> None:
        self.open = 0

    async def StreamAggregatedResources(self, requests: Any, context: Any) -> None:
        self.open += 1
        async for _ in requests:
            pass


async def clients(target: str, count: int, state: Path | None) -> None:
    """The child: ``count`` channels, one open stream each, until killed."""
    held = []
    ca = xdsauth.authority(state) if state is not None else None
    for i in range(count):
        options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per client, as separate Envoys have
        if state is None:
            channel = grpc.aio.insecure_channel(target, options=options)
        else:
            tls = xdsauth.issue_proxy(state, f"client-{i}", "bench/client", "127.0.0.1", ca=ca)
            credentials = grpc.ssl_channel_credentials(Path(tls.trusted_ca).read_bytes(),
                                                       Path(tls.private_key).read_bytes(),
                                                       Path(tls.certificate_chain).read_bytes())
            channel = grpc.aio.secure_channel(target, credentials, options=options)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        queue.put_nowait(discovery_pb2.DiscoveryRequest(type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"))

        async def requests(queue: asyncio.Queue[Any] = queue) -> Any:
            while True:
                yield await queue.get()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        held.append((channel, stub.StreamAggregatedResources(requests())))
    await asyncio.sleep(3600)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="meshplane-grpc-floor-") as folder:
        state = Path(folder)
        servicer = Idle()
        server = grpc.aio.server(options=_grpc_options(64 * 1024 * 1024, ()))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
        if args.plaintext:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", xdsauth.server_credentials(state, "127.0.0.1"))
        await server.start()
        idle = rss_mb()
        command = [sys.executable, __file__, "--child", f"127.0.0.1:{port}", "--streams", str(args.streams)]
        child = subprocess.Popen(command + ([] if args.plaintext else ["--state", folder]))
        started = time.monotonic()
        try:
            while servicer.open < args.streams and time.monotonic() - started < args.timeout and child.poll() is None:
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)  # let the last handshakes' buffers settle
            loaded = rss_mb()
        finally:
            child.kill()
            child.wait(timeout=10)
            await server.stop(0)
    opened = servicer.open
    return {"benchmark": "grpc_floor", "tls": not args.plaintext, "streams_wanted": args.streams,
            "streams_open": opened, "seconds_to_open": round(time.monotonic() - started, 1),
            "server_rss_idle_mb": round(idle, 1), "server_rss_loaded_mb": round(loaded, 1),
            "kb_per_stream": round((loaded - idle) * 1024 / opened, 1) if opened else None,
            "grpc": grpc.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=2000, help="idle ADS streams, at least 1 (default 2000)")
    parser.add_argument("--plaintext", action="store_true", help="no TLS (default: mutual TLS, as serve)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the streams (default 120)")
    parser.add_argument("--child", metavar="TARGET", help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.streams < 1:
        parser.error("--streams must be at least 1")
    if args.child:
        asyncio.run(clients(args.child, args.streams, args.state))
        return
    print(json.dumps(asyncio.run(measure(args)), indent=2))


if __name__ == "__main__":
    main()
