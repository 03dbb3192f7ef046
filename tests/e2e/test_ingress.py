"""Ingress gateways end to end: a real Envoy gateway, real sidecars, loopback apps, TLS by SNI.

The gateway serves two host names on one port, each with its own certificate from a Secret, and
sends each to its own virtual service over mutual TLS as the gateway's identity; access policies
name the gateway as a source.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Mesh, mesh
from tests.e2e.test_canary import obj
from tests.tlsserver import https_get, make_certificates

pytestmark = pytest.mark.envoy

PORT, APP_PORT, GATEWAY_PORT = 9080, 19080, 8443
HOSTNAMES = {"alpha": "alpha.example.test", "beta": "beta.example.test"}


def secret(name: str, chain: bytes, key: bytes) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": "shop"},
            "data": {"tls.crt": base64.b64encode(chain).decode(), "tls.key": base64.b64encode(key).decode()}}


def gateway_policy(*services: str) -> dict[str, Any]:
    return obj("AccessPolicy", "gateway-in", {"mesh": {"ref": {"name": "shop"}}, "rules": [
        {"action": "ALLOW", "source": {"ingressGateway": {"ref": {"name": "gw"}}},
         "destination": {"virtualService": {"ref": {"name": s}}}} for s in services]})


def manifests(certificates: dict[str, tuple[bytes, bytes, bytes]], *policy: dict[str, Any]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = [obj("Mesh", "shop", {})]
    hosts, rules = [], []
    for service, hostname in HOSTNAMES.items():
        _, chain, key = certificates[service]
        docs += [secret(f"{service}-cert", chain, key),
                 obj("VirtualService", service, {"mesh": {"ref": {"name": "shop"}}, "hosts": [f"{service}.shop"]}),
                 obj("VirtualDeployment", f"{service}-v1", {
                     "virtualService": {"ref": {"name": service}}, "listener": [{"protocol": "HTTP", "port": PORT}],
                     "serviceDiscovery": {"type": "DNS", "hostname": f"{service}-v1.shop"}})]
        hosts.append({"name": service, "hostnames": [hostname], "listeners": [{
            "protocol": "HTTP", "port": GATEWAY_PORT, "tls": {
                "mode": "TLS", "serverCertificate": {"kubeSecretTlsCertificate": {"secretName": f"{service}-cert"}}}}]})
        rules.append({"httpRoute": {"ingressGatewayHost": {"name": service},
                                    "destinations": [{"virtualService": {"ref": {"name": service}}}]}})
    docs += [obj("IngressGateway", "gw", {"mesh": {"ref": {"name": "shop"}}, "hosts": hosts}),
             obj("IngressGatewayRouteTable", "gw-routes", {"ingressGateway": {"ref": {"name": "gw"}},
                                                            "routeRules": rules})]
    return [*docs, *policy]


def call(m: Mesh, service: str, ca: bytes) -> tuple[int, str]:
    """HTTPS to the gateway with the host's SNI, verifying the certificate against that host's CA."""
    return https_get((m.address(30), GATEWAY_PORT), HOSTNAMES[service], ca)


def served_by(body: str) -> str:
    return str(json.loads(body)["name"])


def status_of(m: Mesh, service: str, ca: bytes) -> int:
    try:
        return call(m, service, ca)[0]
    except (OSError, ssl.SSLError):
        return 0


def test_two_host_names_on_one_port_each_with_its_own_certificate_reach_their_own_services(tmp_path: Path) -> None:
    certificates = {service: make_certificates([hostname]) for service, hostname in HOSTNAMES.items()}
    with mesh(tmp_path) as m:
        m.write("mesh.yaml", manifests(certificates, gateway_policy("alpha", "beta")))
        m.start_control_plane()
        for i, service in enumerate(HOSTNAMES):
            m.start_app(f"{service}-v1", 11 + i, APP_PORT)
            m.start_sidecar(f"{service}-v1", f"shop/{service}-v1", 11 + i, {PORT: APP_PORT})
        m.start_sidecar("gw", "shop/gw", 30, gateway=True)
        for service in HOSTNAMES:
            ca = certificates[service][0]
            m.wait_for(lambda s=service, c=ca: status_of(m, s, c) == 200, 30, f"{service} through the gateway")
            status, body = call(m, service, ca)
            assert status == 200 and served_by(body) == f"{service}-v1"
        with pytest.raises(ssl.SSLError):  # alpha's name is served with alpha's certificate, not beta's
            call(m, "alpha", certificates["beta"][0])

        m.write("mesh.yaml", manifests(certificates, gateway_policy("beta")))
        started = time.monotonic()
        m.wait_for(lambda: status_of(m, "alpha", certificates["alpha"][0]) == 403, 10, "alpha to refuse the gateway")
        assert time.monotonic() - started <= 2.0, "the removed rule took more than 2 s to apply"
        assert status_of(m, "beta", certificates["beta"][0]) == 200, "beta's rule still stands"
