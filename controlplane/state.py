"""The state directory shared by ``meshplane serve`` and ``meshplane bootstrap``.

``serve`` writes what a bootstrap needs to know about the mesh it is running — today, each virtual
deployment's listener ports and protocols (``deployments.json``) — so that ``bootstrap`` can refuse a
sidecar whose application ports do not cover its deployment's listeners before Envoy ever starts.
The directory is created with mode 0700: it will also hold the mesh CA's keys.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from meshplane.controlplane import ir

DEPLOYMENTS = "deployments.json"


def ensure(state_dir: Path) -> Path:
    """Create the state directory (0700) if needed; returns it."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return state_dir


def deployments_view(config: ir.MeshConfig) -> dict[str, Any]:
    """What ``deployments.json`` holds for a mesh configuration."""
    return {d.key: {"ports": {str(p.number): p.protocol.value for p in d.ports}} for d in config.deployments}


def write_deployments(state_dir: Path, config: ir.MeshConfig) -> bool:
    """Write ``deployments.json`` atomically if its content changed; True if written."""
    path = ensure(state_dir) / DEPLOYMENTS
    text = json.dumps(deployments_view(config), indent=2, sort_keys=True) + "\n"
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def read_deployments(state_dir: Path) -> dict[str, dict[int, str]] | None:
    """Listener ports and protocols per deployment key, or None if ``serve`` has not written them."""
    path = state_dir / DEPLOYMENTS
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return {key: {int(port): proto for port, proto in value["ports"].items()} for key, value in raw.items()}
