"""The xDS layer contract, checked by reading imports (import-linter cannot see ``meshplane.xds``).

``xds/`` is a namespace portion on purpose (see xds/README.md), and import-linter's graph leaves such
packages out; so this test reads every module's imports with ``ast`` and holds the same promises:

* xDS sees the control plane only through the IR (``meshplane.controlplane.ir``), never the model,
  validation, status, sources or commands, and never the injector;
* inside xDS, imports point one way: server → cache → translate → names/messages/resources/framing; the cache
  never imports the server, translation never imports the cache or the server.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

XDS = Path(__file__).resolve().parents[1] / "xds"
ALLOWED_CONTROLPLANE = {"meshplane.controlplane.ir"}
# A module may import only modules of its own rank or lower (higher rank = closer to the network).
RANK = {"names": 0, "messages": 0, "resources": 0, "framing": 0, "secrets": 0, "bootstrap": 1, "translate": 1,
        "ingress": 2, "cache": 2, "server": 3}


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def problems(module: str, imported: set[str]) -> list[str]:
    out = []
    for name in sorted(imported):
        if name.startswith("meshplane.injector") or (
                name.startswith("meshplane.controlplane") and name not in ALLOWED_CONTROLPLANE
                and not name.startswith("meshplane.controlplane.ir.") and name != "meshplane.controlplane"):
            out.append(f"{module} imports {name}")
        if name.startswith("meshplane.xds."):
            target = name.split(".")[2]
            if target in RANK and RANK[target] > RANK.get(module, 0):
                out.append(f"{module} (rank {RANK.get(module)}) imports {target} (rank {RANK[target]})")
    return out


@pytest.mark.parametrize("path", sorted(XDS.glob("*.py")), ids=lambda p: p.stem)
def test_xds_module_respects_the_layers(path: Path) -> None:
    assert path.stem in RANK, f"xds/{path.name} has no rank in tests/test_layers.py: give it one"
    assert problems(path.stem, imports_of(path)) == []


def test_the_check_catches_forbidden_imports() -> None:
    assert problems("translate", {"meshplane.controlplane.model"}) == [
        "translate imports meshplane.controlplane.model"]
    assert problems("cache", {"meshplane.xds.server"}) == ["cache (rank 2) imports server (rank 3)"]
    assert problems("translate", {"meshplane.controlplane.ir", "meshplane.xds.names"}) == []
