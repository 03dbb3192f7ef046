"""Every benchmark still runs: each script, at tiny sizes, exits 0 and prints the JSON it documents.

A benchmark runs as ``sys.executable bench/<script>`` from the repository root, within ``TIMEOUT``
seconds, in a session of its own. It must leave no process behind: every run carries a unique
environment variable, which its descendants (Envoy, applications) inherit, and once it has exited no
process may still carry it. A straggler found that way is killed (by its id) and the test errs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60.0  # seconds per benchmark run
MARK = "MESHPLANE_BENCH_SMOKE"  # environment variable naming one test's runs
GRACE = 2.0  # seconds a descendant may take to go after its benchmark exited


def processes_marked(token: str) -> list[int]:
    """Ids of the processes whose environment carries ``MARK=token`` (this process never does)."""
    needle = f"{MARK}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read (then not ours at all)
            continue
        if needle in environment.split(b"\0"):
            found.append(int(entry.name))
    return found


class Bench:
    """Runs benchmark scripts, each run marked so that what it leaves behind can be found."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex

    def run(self, script: str, *args: str) -> dict[str, Any]:
        """Run ``bench/<script> args``; its exit status must be 0 and its stdout one JSON object."""
        command = [sys.executable, str(ROOT / "bench" / script), *args]
        environment = {**os.environ, MARK: self.token}
        try:
            done = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True,
                                  timeout=TIMEOUT, check=False, start_new_session=True)
        except subprocess.TimeoutExpired as expired:
            pytest.fail(f"{script} {' '.join(args)} did not finish within {TIMEOUT:.0f} s; stderr ends:\n"
                        f"{_tail(expired.stderr)}")
        assert done.returncode == 0, f"{script} exited {done.returncode}; stderr ends:\n{_tail(done.stderr)}"
        try:
            result = json.loads(done.stdout)
        except json.JSONDecodeError as error:
            pytest.fail(f"{script} did not print JSON on stdout ({error}): {done.stdout[:500]!r}")
        assert isinstance(result, dict), f"{script} printed {type(result).__name__}, not a JSON object"
        return result

    def stragglers(self) -> list[int]:
        """Processes of these runs still alive after ``GRACE`` seconds."""
        deadline = time.monotonic() + GRACE
        while (left := processes_marked(self.token)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left


def _tail(text: str | bytes | None, size: int = 3000) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text or "")[-size:]


@pytest.fixture
def bench() -> Iterator[Bench]:
    runner = Bench()
    yield runner
    left = runner.stragglers()
    for pid in left:  # started by this test's benchmark: end them, by id
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind by the benchmark: {left}"


def has_keys(value: Any, keys: set[str]) -> None:
    assert isinstance(value, dict), f"expected a JSON object, got {value!r}"
    missing = keys - value.keys()
    assert not missing, f"missing keys {sorted(missing)} in {sorted(value)}"


PHASES = {"build_s", "translate_s", "serialise_s", "secrets_s", "render_s", "publish_s", "total_s"}


def test_translate(bench: Bench) -> None:
    result = bench.run("translate.py", "--services", "5", "--endpoints", "1", "--calls", "2")
    has_keys(result, {"benchmark", "services", "endpoints_per_deployment", "calls", "workloads", "proxies",
                      "identities", "objects", "seed", "cold", "change"})
    assert result["benchmark"] == "translate"
    assert (result["services"], result["workloads"], result["proxies"], result["identities"]) == (5, 10, 10, 5)
    has_keys(result["cold"], PHASES | {"serialised_resources", "serialised_bytes", "per_proxy_resources",
                                       "per_proxy_bytes", "distinct_resources", "distinct_bytes", "sharing_ratio",
                                       "by_type", "certificates_issued"})
    has_keys(result["cold"]["by_type"], {"CDS", "EDS", "LDS", "RDS", "SDS"})
    assert result["cold"]["certificates_issued"] == 10
    change = result["change"]
    has_keys(change, PHASES | {"edited", "inputs_s", "proxies_rerendered", "identities_retranslated",
                               "proxies_changed", "proxies_changed_by_type", "rerendered_bytes", "new_resources",
                               "new_bytes", "new_resources_per_proxy", "new_bytes_per_proxy"})
    assert 0 < change["proxies_changed"] <= change["proxies_rerendered"] <= 10
    assert change["new_bytes"] > 0


def test_config_size(bench: Bench) -> None:
    result = bench.run("config_size.py", "--services", "3", "--allowed", "2", "--sample", "3")
    has_keys(result, {"benchmark", "allowed_per_service", "mtls", "sample", "results"})
    assert result["benchmark"] == "config_size"
    [measured] = result["results"]
    has_keys(measured, {"services", "scoped", "allow_all", "ratio_bytes"})
    for variant in ("scoped", "allow_all"):
        has_keys(measured[variant], {"access_policies", "rules", "callees_per_service", "build_s", "build_problems",
                                     "proxies_sampled", "bytes_mean", "bytes_max", "shared_bytes_mean",
                                     "own_bytes_mean", "mesh_total_mb", "clusters_mean", "endpoints_mean",
                                     "listeners_mean", "virtual_hosts_mean", "routes_mean", "secrets_mean",
                                     "outbound_ms_median"})
        assert measured[variant]["proxies_sampled"] == 3


def test_ca(bench: Bench) -> None:
    result = bench.run("ca.py", "--count", "3")
    has_keys(result, {"benchmark", "key", "count", "with_keygen_per_s", "without_keygen_per_s",
                      "with_keygen_us_each", "without_keygen_us_each", "python", "cryptography", "machine"})
    assert (result["benchmark"], result["count"]) == ("ca", 3)


def test_injection(bench: Bench) -> None:
    result = bench.run("injection.py", "--requests", "5", "--concurrency", "2", "--seconds", "30")
    has_keys(result, {"benchmark", "requests", "concurrency", "failures", "injections_per_s", "latency_ms",
                      "includes", "credentials", "warmup", "warmup_failures", "elapsed_s", "stopped_early",
                      "credentials_written", "python", "cpu_count", "aiohttp", "cryptography"})
    has_keys(result["latency_ms"], {"p50", "p90", "p99", "max"})
    assert (result["benchmark"], result["requests"], result["failures"]) == ("injection", 5, 0)


@pytest.mark.parametrize("transport", [[], ["--plaintext"]])
def test_grpc_floor(bench: Bench, transport: list[str]) -> None:
    result = bench.run("grpc_floor.py", "--streams", "3", "--timeout", "30", *transport)
    has_keys(result, {"benchmark", "tls", "streams_wanted", "streams_open", "seconds_to_open", "server_rss_idle_mb",
                      "server_rss_loaded_mb", "kb_per_stream", "grpc"})
    assert (result["benchmark"], result["streams_open"], result["tls"]) == ("grpc_floor", 3, not transport)


def test_model(bench: Bench) -> None:
    result = bench.run("model.py", "--services", "3", "--repeat", "1")
    has_keys(result, {"benchmark", "services", "objects", "parse_s", "validate_s", "status_s",
                      "parse_us_per_object", "validate_us_per_object", "status_us_per_object"})
    assert (result["benchmark"], result["services"]) == ("model", 3)


@pytest.mark.envoy
def test_convergence(bench: Bench) -> None:
    # One client at least: the clients are the proxies whose routes an edit changes.
    result = bench.run("convergence.py", "--clients", "1", "--edits", "1")
    has_keys(result, {"benchmark", "proxies", "edits", "quiet_ms", "cold_sync_s", "edit_to_all_acked_p50_s",
                      "edit_to_all_acked_max_s", "control_plane_max_rss_mb"})
    assert (result["benchmark"], result["proxies"], result["edits"]) == ("convergence", 3, 1)


@pytest.mark.envoy
def test_envoy_apply(bench: Bench) -> None:
    result = bench.run("envoy_apply.py", "--clusters", "20", "--envoys", "1", "--repeat", "1", "--endpoints", "2")
    has_keys(result, {"benchmark", "envoys", "endpoints_per_cluster", "repeat", "results"})
    [figures] = result["results"]
    # 20 clusters may load within the noise of an empty start-up: differences can round to 0 at this size
    assert figures["clusters"] == 20 and figures["static_s"] >= 0 and figures["static_start_s"] > 0
    for mode in ("sotw", "delta"):
        assert set(figures[mode]) == {"add", "modify", "remove", "ratio"}
        assert figures[mode]["add"] > 0 and all(value >= 0 for value in figures[mode].values()), figures[mode]
