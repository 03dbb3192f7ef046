"""The installation works: Envoy's API messages import next to our packages, and the real Envoy runs.

Our ``xds/`` folder is imported as ``meshplane.xds``; a top-level ``xds`` must stay xds-protos' own
package (Envoy's messages import it), whatever the current directory is.
"""

from __future__ import annotations

import importlib
import subprocess
import sys

from tests.envoybin import envoy_path


def test_envoy_messages_import_next_to_meshplane_xds() -> None:
    importlib.import_module("meshplane.xds")
    from envoy.config.cluster.v3 import cluster_pb2

    cluster = cluster_pb2.Cluster(name="outbound|9080|catalog-v1")
    assert cluster_pb2.Cluster.FromString(cluster.SerializeToString()).name == "outbound|9080|catalog-v1"
    assert hasattr(importlib.import_module("xds.core.v3"), "__path__")


def test_top_level_xds_is_xds_protos_even_from_the_repository_root() -> None:
    code = "import xds.core.v3, meshplane.xds; print(xds.__path__[0])"
    root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert not done.stdout.strip().startswith(root)


def test_the_real_envoy_binary_runs() -> None:
    done = subprocess.run([str(envoy_path()), "--version"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert "/1.40." in done.stdout
