"""Child processes (Envoy, sample applications): stopping them reliably."""

from __future__ import annotations

import subprocess
from typing import Any


def stop(process: subprocess.Popen[Any], timeout: float = 5.0) -> None:
    """Terminate, then kill if it lingers; always reap, so no zombie and no stray process is left."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
