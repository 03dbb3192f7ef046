"""Test data shared by several test modules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DATA = Path(__file__).resolve().parent


def manifests(name: str) -> list[dict[str, Any]]:
    """The documents of ``tests/data/<name>.yaml``, freshly parsed (callers may change them)."""
    return [doc for doc in yaml.safe_load_all((DATA / f"{name}.yaml").read_text()) if doc]
