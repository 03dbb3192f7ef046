"""Access policies end to end: default deny, ALLOW rules taking effect live, named sources, and egress.

Real Envoy sidecars, real mutual TLS, real traffic on loopback. How a refusal looks (docs/security.md):
an HTTP call no policy allows gets **403** — from the caller's own sidecar when it goes through it (the
caller has no route to a destination it may not call), from the destination's sidecar (RBAC) when it
comes straight to it; a TLS connection to an external host no policy allows is **reset** by the
caller's sidecar (no filter chain matches its SNI).
"""

from __future__ import annotations

import http.client
import io
import ssl
import time
from pathlib import Path
from typing import Any

import pytest

from meshplane.controlplane.cli import main
from tests.dnsstub import DnsStub
from tests.e2e.harness import Mesh, mesh
from tests.e2e.test_canary import APP_PORT, HOST, PORT, allow, obj
from tests.tlsserver import ExternalHttps, https_get

pytestmark = pytest.mark.envoy

DENIED = "no access policy allows this destination"
EXTERNAL_TLS_PORT = 8443
EXTERNAL_HTTP_PORT = 18080


def manifests(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    """reviews (STRICT: the mesh's default floor) and two callers, client and intruder; policies in ``extra``."""
    docs = [obj("Mesh", "shop", {}),
            obj("VirtualService", "reviews", {"mesh": {"ref": {"name": "shop"}}, "hosts": [HOST]}),
            obj("VirtualDeployment", "reviews-v1", {
                "virtualService": {"ref": {"name": "reviews"}}, "listener": [{"protocol": "HTTP", "port": PORT}],
                "serviceDiscovery": {"type": "DNS", "hostname": "reviews-v1.shop.mesh"}})]
    for caller in ("client", "intruder"):
        docs += [obj("VirtualService", caller, {"mesh": {"ref": {"name": "shop"}}}),
                 obj("VirtualDeployment", caller, {"virtualService": {"ref": {"name": caller}}})]
    return [*docs, *extra]


def get(m: Mesh, caller_host: int, host: str) -> tuple[int, str]:
    """One request through the caller's sidecar (its outbound port): status and body, (0, error) if refused."""
    connection = http.client.HTTPConnection(m.address(caller_host), 15001, timeout=5)
    try:
        connection.request("GET", "/", headers={"Host": host})
        reply = connection.getresponse()
        return reply.status, reply.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        return 0, str(exc)
    finally:
        connection.close()


def start(m: Mesh, *serve_args: str) -> None:
    m.start_control_plane(*serve_args)
    m.start_app("reviews-v1", 11, APP_PORT)
    m.start_sidecar("reviews-v1", "shop/reviews-v1", 11, {PORT: APP_PORT})
    m.start_sidecar("client", "shop/client", 10)
    m.start_sidecar("intruder", "shop/intruder", 20)


def seconds_until(check: Any, timeout: float) -> float:
    """How long until ``check()`` holds (polled every 20 ms); fails after ``timeout`` s."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if check():
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"not within {timeout} s")


def test_default_deny_then_an_allow_rule_takes_effect_live_and_its_removal_refuses_again(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        m.write("mesh.yaml", manifests())
        start(m)
        m.wait_for(lambda: get(m, 10, HOST)[0] == 403, 30, "the client's call to be refused")
        assert get(m, 10, HOST) == (403, DENIED), "no policy: refused by the caller's own sidecar"

        m.write("mesh.yaml", manifests(allow("client-to-reviews", "client", "reviews")))
        allowed_after = seconds_until(lambda: get(m, 10, HOST)[0] == 200, 10)
        assert allowed_after <= 2.0, f"the ALLOW rule took {allowed_after:.2f} s"
        assert [get(m, 10, HOST)[0] for _ in range(20)] == [200] * 20

        m.write("mesh.yaml", manifests())
        refused_after = seconds_until(lambda: get(m, 10, HOST)[0] == 403, 10)
        assert refused_after <= 2.0, f"removing the rule took {refused_after:.2f} s"
        assert [get(m, 10, HOST)[0] for _ in range(20)] == [403] * 20


def test_a_source_the_policy_does_not_name_is_refused_while_the_named_one_succeeds(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        m.write("mesh.yaml", manifests(allow("client-to-reviews", "client", "reviews")))
        start(m)
        m.wait_for(lambda: get(m, 10, HOST)[0] == 200, 30, "the client's call to succeed")
        client = [get(m, 10, HOST)[0] for _ in range(20)]
        intruder = [get(m, 20, HOST) for _ in range(20)]
        assert client == [200] * 20
        assert intruder == [(403, DENIED)] * 20
        check_admin_commands(m)


def check_admin_commands(m: Mesh) -> None:
    """``meshplane status`` and ``proxy-status`` read the running control plane (every proxy SYNCED)."""
    for command, expected in (("proxy-status", ["client", "intruder", "reviews-v1"]),
                              ("status", ["AccessPolicy", "Mesh", "VirtualService"])):
        out, err = io.StringIO(), io.StringIO()
        assert main([command, "--admin-address", f"127.0.0.1:{m.admin_port}"], out=out, err=err) == 0, err.getvalue()
        rows = out.getvalue().splitlines()[1:]
        assert sorted({row.split()[0] for row in rows if row.strip()} & set(expected)) == expected
    synced = [row for row in rows if row.startswith("Mesh")]
    assert synced and synced[0].split()[3:] == ["True", "True", "True"]
    check_metrics(m)


def check_metrics(m: Mesh) -> None:
    """/metrics: three sidecars connected, pushes and ACKs per type, convergence observed, certificates held."""
    status, text = m.admin("/metrics")
    assert status == 200, text
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line and not line.startswith("#")}
    assert samples['meshplane_proxies_connected{kind="sidecar"}'] == 3
    for kind in ("CDS", "EDS", "LDS", "RDS", "SDS"):
        assert samples[f'meshplane_xds_pushes_total{{type="{kind}"}}'] > 0
        assert samples[f'meshplane_xds_acks_total{{type="{kind}"}}'] > 0
    assert samples["meshplane_convergence_seconds_count"] >= 3, "every sidecar's first configuration converged"
    assert samples["meshplane_reconcile_round_seconds_count"] > 0
    # client and reviews-v1; the intruder may call nothing and serves nothing, so it needs no certificate
    assert samples["meshplane_workload_certificates_issued_total"] == 2
    assert 0 < samples["meshplane_certificate_earliest_expiry_seconds"] <= 86_400


def test_only_allowed_external_hosts_are_reachable_through_the_sidecar(tmp_path: Path) -> None:
    with mesh(tmp_path) as m, \
            DnsStub({"api.allowed.test": m.address(50), "api.denied.test": m.address(51),
                     "web.allowed.test": m.address(52), "web.denied.test": m.address(52)},
                    host=m.address(53)) as dns, \
            ExternalHttps(["api.allowed.test"], m.address(50), EXTERNAL_TLS_PORT, body="allowed") as allowed, \
            ExternalHttps(["api.denied.test"], m.address(51), EXTERNAL_TLS_PORT, body="denied") as denied:
        egress = obj("AccessPolicy", "client-egress", {"mesh": {"ref": {"name": "shop"}}, "rules": [
            {"action": "ALLOW", "source": {"virtualService": {"ref": {"name": "client"}}},
             "destination": {"externalService": {"httpsExternalService": {
                 "hostnames": ["api.allowed.test"], "ports": [EXTERNAL_TLS_PORT]}}}},
            {"action": "ALLOW", "source": {"virtualService": {"ref": {"name": "client"}}},
             "destination": {"externalService": {"httpExternalService": {
                 "hostnames": ["web.allowed.test"], "ports": [EXTERNAL_HTTP_PORT]}}}}]})
        m.write("mesh.yaml", manifests(egress))
        host, port = dns.address
        start(m, "--egress-dns", f"{host}:{port}")
        m.start_app("web", 52, EXTERNAL_HTTP_PORT)
        sidecar = (m.address(10), EXTERNAL_TLS_PORT)
        m.wait_for(lambda: https_get(sidecar, "api.allowed.test", allowed.ca_pem)[0] == 200, 30,
                   "the allowed external HTTPS host to answer through the sidecar")
        assert https_get(sidecar, "api.allowed.test", allowed.ca_pem) == (200, "allowed\n")
        with pytest.raises((ssl.SSLError, OSError)):
            https_get(sidecar, "api.denied.test", denied.ca_pem)
        assert denied.requests == 0, "nothing reached the host no policy allows"
        with pytest.raises((ssl.SSLError, OSError)):
            https_get((m.address(20), EXTERNAL_TLS_PORT), "api.allowed.test", allowed.ca_pem)  # intruder: no egress

        web = f"web.allowed.test:{EXTERNAL_HTTP_PORT}"
        assert get(m, 10, web)[0] == 200, "an allowed external HTTP host, by Host header"
        assert get(m, 10, f"web.denied.test:{EXTERNAL_HTTP_PORT}") == (403, DENIED)
        assert get(m, 10, "web.allowed.test:9999") == (403, DENIED), "a port the rule does not list"
        assert get(m, 20, web) == (403, DENIED), "the intruder may not reach it"
