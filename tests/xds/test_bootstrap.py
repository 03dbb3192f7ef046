"""Bootstraps are accepted by the real Envoy, for State-of-the-World and Delta ADS."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from meshplane.xds.bootstrap import XDS_CLUSTER, BootstrapSpec, render_bootstrap
from tests.envoybin import envoy_path


def spec(delta: bool) -> BootstrapSpec:
    metadata = {"meshplane.deployment": "shop/reviews-v1", "meshplane.app_ports": {"9080": 19080}}
    return BootstrapSpec("reviews-v1-1", "shop/reviews-v1", metadata, "127.0.0.1", 15012, admin_port=19901,
                         delta=delta)


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_real_envoy_accepts_the_bootstrap(tmp_path: Path, delta: bool) -> None:
    path = tmp_path / "bootstrap.yaml"
    path.write_text(yaml.safe_dump(render_bootstrap(spec(delta))))
    done = subprocess.run([str(envoy_path()), "--mode", "validate", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_bootstrap_names_the_node_and_uses_ads_over_http2() -> None:
    data = render_bootstrap(spec(delta=True))
    assert data["node"]["id"] == "reviews-v1-1" and data["node"]["cluster"] == "shop/reviews-v1"
    assert data["node"]["metadata"]["meshplane.deployment"] == "shop/reviews-v1"
    ads = data["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "DELTA_GRPC" and ads["transport_api_version"] == "V3"
    [cluster] = data["static_resources"]["clusters"]
    assert cluster["name"] == XDS_CLUSTER
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]
    assert data["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 19901}
