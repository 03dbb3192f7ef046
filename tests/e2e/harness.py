"""End-to-end harness: the real control plane, real Envoy sidecars and echo apps on loopback addresses.

Everything runs as it would for a user: ``meshplane serve`` on a config directory, ``meshplane echo``
as applications, sidecars whose bootstraps ``meshplane bootstrap`` wrote, started with the real Envoy.
Every workload gets its own loopback address (explicit capture); each test picks its own 127.a.b.0/24
so tests never share addresses. Every process started is stopped when the :class:`Mesh` context ends
(terminate, then kill, always reaped), and every load loop is bounded in count and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from meshplane.controlplane import procs
from meshplane.controlplane.cli import main as cli
from tests.envoyproc import Envoy, start_envoy


def meshplane_exe() -> str:
    exe = shutil.which("meshplane")
    assert exe is not None, "the meshplane console script is not installed (pip install -e '.[test]')"
    return exe


SERVING = re.compile(r"xDS on port (?P<xds>\d+), admin on port (?P<admin>\d+)")  # serve's log line

@dataclass
class Process:
    """A child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- {self.name} ---\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        procs.stop(self.popen)


@dataclass
class Mesh:
    """One test's mesh: config directory, control plane, apps and sidecars."""

    root: Path
    subnet: str = field(default_factory=lambda: f"127.{random.randint(20, 250)}.{random.randint(1, 250)}")
    processes: list[Process] = field(default_factory=list)
    envoys: dict[str, Envoy] = field(default_factory=dict)
    xds_port: int = 0
    admin_port: int = 0
    delta: bool = False
    serve_args: tuple[str, ...] = ()

    @property
    def config_dir(self) -> Path:
        return self.root / "config"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def address(self, host: int) -> str:
        return f"{self.subnet}.{host}"

    # --------------------------------------------------------------------------------- control plane

    def write(self, name: str, docs: Sequence[dict[str, Any]]) -> None:
        """Write (or rewrite) a manifest file of the config directory."""
        self.config_dir.mkdir(parents=True, exist_ok=True)
        path = self.config_dir / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump_all(list(docs), sort_keys=False))
        os.replace(tmp, path)

    def start_control_plane(self, *extra: str) -> None:
        """``meshplane serve`` on ports the kernel picks as it binds them (it logs them), until it is healthy.
        A port picked beforehand and bound later could be taken in between by any outgoing connection."""
        self.xds_port = self.admin_port = 0
        self._serve(extra)

    def _serve(self, extra: Sequence[str] = ()) -> None:
        """``meshplane serve`` on this mesh's ports (0: any), until it reports healthy."""
        self.serve_args = tuple(extra)
        command = [meshplane_exe(), "serve", "--config-dir", str(self.config_dir), "--state-dir", str(self.state_dir),
                   "--xds-address", f"127.0.0.1:{self.xds_port}", "--admin-address", f"127.0.0.1:{self.admin_port}",
                   *extra]
        process = self._spawn("control-plane", command)
        if not self.xds_port:
            self.wait_for(lambda: self._bound_ports(process), 20, "the control plane to bind its ports")
        self.wait_for(lambda: self.admin("/healthz")[0] == 200, 20, "the control plane to become healthy")

    def _bound_ports(self, process: Process) -> bool:
        """Read the ports ``serve`` logged it bound; False until it has."""
        found = SERVING.search(process.log.read_text(errors="replace"))
        if found is not None:
            self.xds_port, self.admin_port = int(found["xds"]), int(found["admin"])
        return found is not None

    def stop_control_plane(self) -> None:
        for process in [p for p in self.processes if p.name == "control-plane"]:
            process.stop()
            self.processes.remove(process)

    def restart_control_plane(self) -> None:
        """Start the control plane again on the same ports and flags (proxies reconnect to the same address)."""
        self._serve(self.serve_args)

    def admin(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=2) as reply:
                return int(reply.status), reply.read().decode()
        except (OSError, ValueError) as exc:
            status = getattr(exc, "code", 0)
            return int(status or 0), str(exc)

    def syncz(self) -> dict[str, Any]:
        status, body = self.admin("/debug/syncz")
        assert status == 200, body
        result: dict[str, Any] = json.loads(body)
        return result

    # ---------------------------------------------------------------------------------- workloads

    def start_app(self, name: str, host: int, port: int) -> None:
        command = [meshplane_exe(), "echo", "--address", self.address(host), "--port", str(port), "--name", name]
        self._spawn(f"app-{name}", command)
        self.wait_for(lambda: _can_connect(self.address(host), port), 15, f"app {name} to listen")

    def start_sidecar(self, name: str, deployment: str, host: int, app_ports: dict[int, int] | None = None, *,
                      wait: bool = True, gateway: bool = False, admin_port: int = 0) -> Envoy:
        """Write the sidecar's bootstrap with ``meshplane bootstrap`` and start the real Envoy on it
        (``gateway``: a proxy of the ingress gateway ``deployment`` names instead). ``admin_port`` 0 lets
        the kernel pick Envoy's admin port, and then the proxy serves no stats on 15006."""
        out = self.root / f"bootstrap-{name}.yaml"
        which = "--ingress-gateway" if gateway else "--virtual-deployment"
        argv = ["bootstrap", "--state-dir", str(self.state_dir), "--xds-address", f"127.0.0.1:{self.xds_port}",
                which, deployment, "--pod-ip", self.address(host), "--admin-port", str(admin_port),
                "--node-id", name, "-o", str(out)]
        for listener, app in (app_ports or {}).items():
            argv += ["--app-port", f"{listener}={app}"]
        if self.delta:
            argv.append("--delta")
        err = io.StringIO()
        assert cli(argv, out=io.StringIO(), err=err) == 0, err.getvalue()
        workdir = self.root / f"envoy-{name}"
        workdir.mkdir(exist_ok=True)
        envoy = start_envoy(out, workdir)  # the file exactly as `meshplane bootstrap` wrote it
        self.envoys[name] = envoy
        if wait:
            envoy.wait_ready(30)
        return envoy

    def wait_for(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if check():
                    return
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}\n{self.logs()}")

    def logs(self) -> str:
        parts = [p.tail() for p in self.processes]
        parts += [f"--- envoy {name} ---\n{e.log_tail(20)}" for name, e in self.envoys.items()]
        return "\n".join(parts)

    def _spawn(self, name: str, command: list[str]) -> Process:
        log = self.root / f"{name}.log"
        handle = log.open("ab")
        popen = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                 cwd=self.root)
        handle.close()
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def close(self) -> None:
        for envoy in self.envoys.values():
            envoy.stop()
        for process in reversed(self.processes):
            process.stop()


@contextlib.contextmanager
def mesh(root: Path, *, delta: bool = False) -> Iterator[Mesh]:
    m = Mesh(root, delta=delta)
    try:
        yield m
    finally:
        m.close()


def _can_connect(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=0.5):
        return True


# ------------------------------------------------------------------------------------------- load


@dataclass
class Results:
    """What a load run saw: answering app names, status codes, and errors, in order."""

    names: list[str] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    timeline: list[tuple[float, int, str]] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.statuses.items() if not 200 <= code < 300) + len(self.errors)


async def _one(session: aiohttp.ClientSession, url: str, host: str, results: Results, *, start: float,
               path: str = "/") -> None:
    try:
        async with session.get(url + path, headers={"Host": host}) as reply:
            body = await reply.text()
            results.statuses[reply.status] += 1
            name = json.loads(body).get("name", "") if reply.status == 200 else body[:80]
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        results.errors.append(repr(exc))
        return
    results.names.append(name)
    results.timeline.append((time.monotonic() - start, reply.status, name))


async def _load(url: str, host: str, *, count: int, rate: float | None, concurrency: int, seconds: float,
                path: str) -> Results:
    results = Results()
    timeout = aiohttp.ClientTimeout(total=5)
    limit = asyncio.Semaphore(concurrency)
    start = time.monotonic()
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def fire() -> None:
            async with limit:
                await _one(session, url, host, results, start=start, path=path)

        tasks = []
        for i in range(count):
            if time.monotonic() - start > seconds:
                break
            if rate is not None:
                await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(fire()))
            if rate is None and len(tasks) % concurrency == 0:
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
    return results


def load(url: str, host: str, *, count: int, rate: float | None = None, concurrency: int = 16,
         seconds: float = 60.0, path: str = "/") -> Results:
    """Send at most ``count`` GETs (at ``rate`` per second if given) for at most ``seconds``."""
    return asyncio.run(_load(url, host, count=count, rate=rate, concurrency=concurrency, seconds=seconds,
                             path=path))
