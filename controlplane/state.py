"""The state directory shared by ``meshplane serve`` and ``meshplane bootstrap``.

``serve`` writes what a bootstrap needs to know about the mesh it is running — each virtual
deployment's listener ports and protocols (``deployments.json``) — so that ``bootstrap`` can refuse a
sidecar whose application ports do not cover its deployment's listeners before Envoy ever starts.

It also remembers the workloads that are endpoints (``workloads.json``: their proxies are connected and
configured, or gateways): after a restart, they stay endpoints for a grace period while their proxies
reconnect. Without that, the first proxy to reconnect would be told that every other deployment has no
endpoint, and its requests would fail.
The directory is created with mode 0700: it will also hold the mesh CA's keys.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from meshplane.controlplane import ir

DEPLOYMENTS = "deployments.json"
GATEWAYS = "gateways.json"
WORKLOADS = "workloads.json"


def ensure(state_dir: Path) -> Path:
    """Create the state directory (0700) if needed; returns it."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return state_dir


def deployments_view(config: ir.MeshConfig) -> dict[str, Any]:
    """What ``deployments.json`` holds for a mesh configuration."""
    return {d.key: {"ports": {str(p.number): p.protocol.value for p in d.ports}} for d in config.deployments}


def write_deployments(state_dir: Path, config: ir.MeshConfig) -> bool:
    """Write ``deployments.json`` (and ``gateways.json``: the served gateways and their ports) atomically
    if their content changed; True if either was written."""
    text = json.dumps(deployments_view(config), indent=2, sort_keys=True) + "\n"
    gateways = {g.key: {"ports": [listener.port for listener in g.listeners]} for g in config.gateways}
    written = _write(ensure(state_dir) / GATEWAYS, json.dumps(gateways, indent=2, sort_keys=True) + "\n")
    return _write(ensure(state_dir) / DEPLOYMENTS, text) or written


def read_gateways(state_dir: Path) -> dict[str, list[int]] | None:
    """The served gateways' ports by key, or None if ``serve`` has not written them."""
    path = state_dir / GATEWAYS
    if not path.is_file():
        return None
    return {key: list(value["ports"]) for key, value in json.loads(path.read_text()).items()}


def write_workloads(state_dir: Path, workloads: list[ir.Workload]) -> bool:
    """Remember the workloads that are endpoints, so a restarted control plane keeps them as such."""
    data = [{"node_id": w.node_id, "deployment": w.deployment, "address": w.address, "capture": w.capture.value,
             "app_ports": [list(p) for p in w.app_ports], "gateway": w.gateway}
            for w in sorted(workloads, key=lambda w: w.node_id)]
    return _write(ensure(state_dir) / WORKLOADS, json.dumps(data, indent=2) + "\n")


def read_workloads(state_dir: Path) -> list[ir.Workload]:
    """The workloads a previous run knew (none if it wrote nothing, or the file is unreadable)."""
    path = state_dir / WORKLOADS
    try:
        raw = json.loads(path.read_text()) if path.is_file() else []
        return [ir.Workload(w["node_id"], w["deployment"], w["address"], ir.Capture(w["capture"]),
                            tuple((int(a), int(b)) for a, b in w["app_ports"]), w.get("gateway")) for w in raw]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _write(path: Path, text: str) -> bool:
    """Write atomically if the content changed; True if written."""
    if path.exists() and path.read_text() == text:
        return False
    write_atomic(path, text.encode())
    return True


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace a file atomically; the new file is created with its final mode, so a key written with
    0600 is never readable by others, not even for a moment."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, mode)  # the umask may have narrowed it
    os.replace(tmp, path)


def read_deployments(state_dir: Path) -> dict[str, dict[int, str]] | None:
    """Listener ports and protocols per deployment key, or None if ``serve`` has not written them."""
    path = state_dir / DEPLOYMENTS
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return {key: {int(port): proto for port, proto in value["ports"].items()} for key, value in raw.items()}
