"""Smoke test of bench/fanout.py: a tiny mesh, both ADS flavours, the whole run in a subprocess.

The benchmark starts ``meshplane serve`` and a process of simulated Envoys; here it must finish with
exit status 0, print its JSON, have every proxy synced and every expected proxy see the route change,
and leave no process behind (it reports the process ids it started).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "fanout.py"
SERVICES, PROXIES, CALLS = 4, 6, 2


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone: it runs nothing)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    state = next((line.split()[1] for line in status.splitlines() if line.startswith("State:")), "")
    return state != "Z"


@pytest.mark.parametrize("mode", ["sotw", "delta"])
def test_fanout_tiny_mesh(mode: str) -> None:
    # -P: the script's own folder is not put first on sys.path, so a sibling file cannot shadow a package
    command = [sys.executable, "-P", str(SCRIPT), "--services", str(SERVICES), "--proxies", str(PROXIES),
               "--calls", str(CALLS), "--mode", mode, "--timeout", "75"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    result = json.loads(done.stdout)

    assert {"benchmark", "mode", "services", "proxies", "calls", "complete", "pids", "setup", "cold_sync",
            "route_change"} <= result.keys()
    assert result["mode"] == mode and result["complete"] is True and result["error"] is None

    cold = result["cold_sync"]
    assert {"s", "proxies_synced", "per_proxy", "control_plane_cpu_s", "control_plane_rss_hwm_mb",
            "nacks", "warming_timeouts", "stream_failures"} <= cold.keys()
    assert cold["proxies_synced"] == PROXIES
    assert cold["stream_failures"] == 0 and cold["nacks"] == 0 and cold["warming_timeouts"] == 0
    assert cold["s"] > 0 and cold["control_plane_cpu_s"] >= 0 and cold["control_plane_rss_hwm_mb"] > 0

    change = result["route_change"]
    assert {"affected", "expected_affected", "p50_s", "p99_s", "max_s", "control_plane_cpu_s",
            "control_plane_rss_hwm_mb"} <= change.keys()
    assert change["expected_affected"] > 0
    assert change["affected"] == change["expected_affected"]
    assert 0 < change["p50_s"] <= change["p99_s"] <= change["max_s"]
    assert change["proxies_with_new_version"] == {"RDS": change["affected"]}

    started = result["pids"].values()
    assert len(started) == 2
    assert not [pid for pid in started if _alive(pid)], "the benchmark left processes running"
