"""Run a real Envoy in tests: an ADS bootstrap, start, wait until ready, stop. Loopback only.

Every Envoy started through :func:`running_envoy` is stopped when the ``with`` block ends (terminate,
then kill, always waited for). Each gets its own ``--base-id`` (two Envoys on one host otherwise
collide on the hot-restart socket: envoy-notes trap 2) and an admin port the kernel picks (written to
``--admin-address-path``, so no port race). Waiting is blocking and bounded; an async test whose xDS
server runs on its own loop calls :meth:`Envoy.wait_ready` through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshplane.controlplane import procs
from tests.envoybin import envoy_path

XDS_CLUSTER = "xds_cluster"
_base_ids = itertools.count((os.getpid() % 50_000) * 20 + 1)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (for listeners whose port must be known in advance)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def ads_bootstrap(
    node_id: str,
    node_cluster: str,
    xds_port: int,
    *,
    api_type: str = "GRPC",
    xds_host: str = "127.0.0.1",
    metadata: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A bootstrap taking everything over ADS (``api_type`` GRPC = SotW, DELTA_GRPC = Delta).

    ADS needs node id and cluster (trap 1); the xDS cluster speaks HTTP/2 via
    ``typed_extension_protocol_options``; admin listens on 127.0.0.1, port chosen by the kernel.
    """
    ads = {"ads": {}, "resource_api_version": "V3"}
    http2 = {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
    endpoint = {"endpoint": {"address": {"socket_address": {"address": xds_host, "port_value": xds_port}}}}
    protocol_options = {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": http2}
    return {
        "node": {"id": node_id, "cluster": node_cluster, "metadata": dict(metadata or {})},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        "dynamic_resources": {
            "ads_config": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
            },
            "cds_config": ads,
            "lds_config": ads,
        },
        "static_resources": {
            "clusters": [
                {
                    "name": XDS_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": [endpoint]}]},
                    "typed_extension_protocol_options": protocol_options,
                }
            ]
        },
    }


@dataclass
class Envoy:
    """A running Envoy: its process, files, and admin API."""

    process: subprocess.Popen[bytes]
    admin_address_path: Path
    log_path: Path
    stdout_path: Path | None = None  # what Envoy wrote to stdout (access logs)

    def stdout_lines(self) -> list[str]:
        """Every line Envoy has written to stdout so far."""
        if self.stdout_path is None or not self.stdout_path.exists():
            return []
        return self.stdout_path.read_text(errors="replace").splitlines()

    def admin_url(self, timeout: float = 10.0) -> str:
        """``http://127.0.0.1:PORT`` once Envoy wrote its admin address (bounded wait)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            text = self.admin_address_path.read_text().strip() if self.admin_address_path.exists() else ""
            if text:
                return f"http://{text}"
            time.sleep(0.05)
        raise TimeoutError(f"Envoy wrote no admin address within {timeout} s\n{self.log_tail()}")

    def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET an admin path: (status, body)."""
        try:
            with urllib.request.urlopen(self.admin_url() + path, timeout=timeout) as reply:
                return int(reply.status), reply.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode()

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Block until ``/ready`` says LIVE (Envoy initialised: clusters and listeners warm)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self.admin_get("/ready", timeout=1.0)[0] == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"Envoy not ready within {timeout} s\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate, then kill if it lingers; always reap the process."""
        procs.stop(self.process)

    def _check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"Envoy exited with {self.process.returncode}\n{self.log_tail()}")


def start_envoy(bootstrap: Mapping[str, Any] | Path, workdir: Path, *, log_level: str = "info") -> Envoy:
    """Start Envoy with ``bootstrap`` — data, or a bootstrap file used as it is (files go to ``workdir``);
    the caller must :meth:`Envoy.stop` it."""
    base_id = next(_base_ids)
    if isinstance(bootstrap, Path):
        config = bootstrap
    else:
        config = workdir / f"envoy-{base_id}.json"
        config.write_text(json.dumps(bootstrap))
    stdout_path = workdir / f"stdout-{base_id}.log"
    with stdout_path.open("wb") as stdout:
        return _envoy(config, workdir, base_id=base_id, log_level=log_level, stdout=stdout, stdout_path=stdout_path)


def _envoy(config: Path, workdir: Path, *, base_id: int, log_level: str, stdout: Any, stdout_path: Path) -> Envoy:
    return Envoy(
        subprocess.Popen(
            [str(envoy_path()), "-c", str(config), "--base-id", str(base_id), "--concurrency", "1",
             "--file-flush-interval-msec", "200",
             "--admin-address-path", str(workdir / f"admin-{base_id}.txt"),
             "-l", log_level, "--log-path", str(workdir / f"envoy-{base_id}.log")],
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.DEVNULL,
        ),
        workdir / f"admin-{base_id}.txt",
        workdir / f"envoy-{base_id}.log",
        stdout_path,
    )


@contextlib.contextmanager
def running_envoy(bootstrap: Mapping[str, Any], workdir: Path, *, log_level: str = "info") -> Iterator[Envoy]:
    """Envoy for the duration of a ``with`` block; stopped however the block ends."""
    envoy = start_envoy(bootstrap, workdir, log_level=log_level)
    try:
        yield envoy
    finally:
        envoy.stop()
