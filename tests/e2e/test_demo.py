"""``meshplane demo`` runs end to end with real Envoy and leaves nothing running."""

from __future__ import annotations

import subprocess

import pytest

from tests.e2e.harness import meshplane_exe

pytestmark = pytest.mark.envoy


def envoy_pids() -> set[str]:
    done = subprocess.run(["pgrep", "-f", "meshplane-demo-"], capture_output=True, text=True, check=False)
    return set(done.stdout.split())


def test_the_demo_shows_the_canary_shift_and_cleans_up() -> None:
    before = envoy_pids()
    done = subprocess.run([meshplane_exe(), "demo", "--requests", "100"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "route table catalog-v1 90 / catalog-v2 10 — 100 requests:" in out
    assert "route table catalog-v1 0 / catalog-v2 100 — 100 requests:" in out
    assert out.rstrip().splitlines()[-1].split() == ["catalog-v2", "█" * 40, "100.0%"]
    assert "HTTP" not in out and "connection error" not in out, "every request answered 200"
    assert envoy_pids() <= before, "every Envoy the demo started is gone"
