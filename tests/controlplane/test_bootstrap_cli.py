"""``meshplane bootstrap``: a sidecar bootstrap checked against the mesh the control plane serves."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
import yaml

from meshplane.controlplane import ir, state
from meshplane.controlplane.cli import main
from tests.envoybin import envoy_path

CONFIG = ir.MeshConfig(deployments=(
    ir.Deployment("shop/reviews-v1", "shop/reviews", "reviews-v1.shop",
                  (ir.Port(9080, ir.Protocol.HTTP, 15000), ir.Port(9090, ir.Protocol.GRPC, 0))),
    ir.Deployment("shop/client", "shop/client", None, ()),
))


def bootstrap(tmp_path: Path, *extra: str, deployment: str = "shop/reviews-v1") -> tuple[int, str, Path]:
    out = tmp_path / "envoy.yaml"
    err = io.StringIO()
    code = main(["bootstrap", "--state-dir", str(tmp_path / "state"), "--xds-address", "127.0.0.1:15012",
                 "--virtual-deployment", deployment, "--pod-ip", "127.0.0.11", "-o", str(out), "--wait", "0",
                 *extra],
                out=io.StringIO(), err=err)
    return code, err.getvalue(), out


@pytest.fixture
def served(tmp_path: Path) -> Path:
    state.write_deployments(tmp_path / "state", CONFIG)
    return tmp_path


def test_a_complete_bootstrap_is_written_and_real_envoy_accepts_it(served: Path) -> None:
    code, err, out = bootstrap(served, "--app-port", "9080=19080", "--app-port", "9090=19090", "--delta",
                               "--admin-port", "19000")
    assert code == 0, err
    data = yaml.safe_load(out.read_text())
    assert data["node"]["metadata"]["meshplane.app_ports"] == {"9080": "19080", "9090": "19090"}
    assert data["node"]["id"] == "reviews-v1.shop-127.0.0.11"
    assert data["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"
    done = subprocess.run([str(envoy_path()), "--mode", "validate", "-c", str(out)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-1500:]


def test_a_client_only_deployment_needs_no_application_port(served: Path) -> None:
    code, err, _ = bootstrap(served, deployment="shop/client")
    assert code == 0, err


@pytest.mark.parametrize(("extra", "deployment", "message"), [
    (["--app-port", "9080=19080"], "shop/reviews-v1", "listener port(s) [9090] of the deployment need an application"
                                                      " port: add --app-port 9090=<port>"),
    (["--app-port", "9080=19080", "--app-port", "9090=19090", "--app-port", "7000=17000"], "shop/reviews-v1",
     "--app-port given for [7000], which the deployment does not listen on"),
    (["--app-port", "9080=9090", "--app-port", "9090=19090"], "shop/reviews-v1", "collides with a listener"),
    (["--app-port", "9080:19080"], "shop/reviews-v1", "--app-port must be LISTENER_PORT=APP_PORT"),
    ([], "shop/ratings-v1", "virtual deployment shop/ratings-v1 is not served by the control plane"),
    ([], "ratings", "--virtual-deployment must be NAMESPACE/NAME"),
], ids=["missing-app-port", "app-port-for-no-listener", "app-port-collides", "bad-app-port", "unknown-deployment",
        "deployment-without-namespace"])
def test_a_bootstrap_that_cannot_work_is_refused_with_what_to_do(served: Path, extra: list[str], deployment: str,
                                                                message: str) -> None:
    code, err, out = bootstrap(served, *extra, deployment=deployment)
    assert code == 1 and message in err, err
    assert not out.exists()


def test_without_a_running_control_plane_state_the_bootstrap_says_to_start_it(tmp_path: Path) -> None:
    code, err, _ = bootstrap(tmp_path, "--app-port", "9080=19080")
    assert code == 1 and "start `meshplane serve --state-dir" in err


def test_the_bootstrap_waits_for_a_control_plane_that_is_starting(tmp_path: Path) -> None:
    import threading

    writer = threading.Timer(0.3, state.write_deployments, (tmp_path / "state", CONFIG))
    writer.start()
    try:
        code, err, _ = bootstrap(tmp_path, "--app-port", "9080=19080", "--app-port", "9090=19090", "--wait", "5")
    finally:
        writer.join()
    assert code == 0, err
