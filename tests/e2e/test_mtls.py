"""Mutual TLS between real Envoy sidecars: STRICT, PERMISSIVE and DISABLED, checked from outside too.

The independent client is Python's ``ssl`` with a certificate issued by the mesh's CA (read from the
control plane's state directory): it proves what Envoy presents (the service's SPIFFE identity) and
that a STRICT listener wants a client certificate, without trusting our own translation.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from meshplane.injector.ca import CertificateAuthority, ca_directory
from tests.e2e.harness import Mesh, load, mesh
from tests.e2e.test_canary import HOST, PORT, allow, obj, start

pytestmark = pytest.mark.envoy

TRUST_DOMAIN = "shop.shop.mesh.local"
REVIEWS_ID = f"spiffe://{TRUST_DOMAIN}/ns/shop/virtualservice/reviews"


def manifests(mode: str) -> list[dict[str, Any]]:
    return [
        obj("Mesh", "shop", {"mtls": {"minimum": "DISABLED"}}),
        allow("client-to-reviews", "client", "reviews"),
        obj("VirtualService", "reviews", {"mesh": {"ref": {"name": "shop"}}, "hosts": [HOST], "mtls": {"mode": mode}}),
        obj("VirtualService", "client", {"mesh": {"ref": {"name": "shop"}}, "mtls": {"mode": "DISABLED"}}),
        obj("VirtualDeployment", "client", {"virtualService": {"ref": {"name": "client"}}}),
        obj("VirtualDeployment", "reviews-v1", {
            "virtualService": {"ref": {"name": "reviews"}}, "listener": [{"protocol": "HTTP", "port": PORT}],
            "serviceDiscovery": {"type": "DNS", "hostname": "reviews-v1.shop.mesh"}}),
    ]


def plaintext_get(host: str, source: str = "127.0.0.1") -> int:
    """A plain HTTP request straight to the sidecar's inbound listener from ``source``: the status, or 0 if refused.

    From 127.0.0.1 (no workload's address) it is a caller outside the mesh; from a workload's address it
    stands for that workload's application calling without its sidecar.
    """
    connection = http.client.HTTPConnection(host, PORT, timeout=5, source_address=(source, 0))
    try:
        connection.request("GET", "/", headers={"Host": HOST})
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return 0
    finally:
        connection.close()


def mtls_get(m: Mesh, host: str, *, with_certificate: bool, service: str = "client") -> tuple[int, list[str]]:
    """HTTPS with the mesh CA as trust anchor (and a mesh client certificate proving the virtual service
    ``service``): status and the server's URIs."""
    ca = CertificateAuthority.create_or_load(ca_directory(m.state_dir, "shop/shop"), TRUST_DOMAIN)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False  # mesh certificates name identities (URI SANs), not host names
    workdir = Path(tempfile.mkdtemp(dir=m.root))
    (workdir / "roots.pem").write_bytes(ca.trust_bundle_pem())
    context.load_verify_locations(workdir / "roots.pem")
    if with_certificate:
        issued, key = ca.issue_for(f"spiffe://{TRUST_DOMAIN}/ns/shop/virtualservice/{service}",
                                    timedelta(minutes=10))
        (workdir / "chain.pem").write_bytes(issued.chain_pem)
        (workdir / "key.pem").write_bytes(key.pem().reveal())
        (workdir / "key.pem").chmod(0o600)
        context.load_cert_chain(workdir / "chain.pem", workdir / "key.pem")
    connection = http.client.HTTPSConnection(host, PORT, context=context, timeout=5)
    try:
        connection.request("GET", "/", headers={"Host": HOST})
        status = connection.getresponse().status
        der = connection.sock.getpeercert(binary_form=True) if connection.sock else None
    except (OSError, http.client.HTTPException):
        return 0, []
    finally:
        connection.close()
    if not der:
        return status, []
    cert = x509.load_der_x509_certificate(der)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return status, names.get_values_for_type(x509.UniformResourceIdentifier)


def upstream_handshakes(m: Mesh) -> int:
    """TLS handshakes the client sidecar made to reviews (Envoy's own counter)."""
    stats = m.envoys["client"].admin_get("/stats?filter=ssl.handshake")[1]
    pattern = r"^cluster\.outbound\|\d+\|shop/reviews\|shop/reviews-v1\.ssl\.handshake: (\d+)$"  # alt_stat_name
    return sum(int(n) for n in re.findall(pattern, stats, re.MULTILINE))


@pytest.mark.parametrize("mode", ["STRICT", "PERMISSIVE", "DISABLED"])
def test_mtls_modes_between_real_sidecars(tmp_path: Path, mode: str) -> None:
    """Each mode on the wire, with the access policy (client → reviews) deciding who gets through.

    Refusals: a TLS handshake that fails is a reset (status 0 here); a connection the transport accepts
    but no policy admits gets 403 from Envoy's RBAC filter.
    """
    with mesh(tmp_path) as m:
        m.write("mesh.yaml", manifests(mode))
        url = start(m, ("v1",))
        mesh_calls = load(url, HOST, count=50, seconds=10)
        assert mesh_calls.failed == 0 and set(mesh_calls.names) == {"reviews-v1"}, "mesh callers always succeed"
        inbound, client = m.address(11), m.address(10)
        if mode == "STRICT":
            assert plaintext_get(inbound, client) == 0, "plaintext is refused at the inbound side (reset)"
            assert mtls_get(m, inbound, with_certificate=False)[0] == 0, "no client certificate, no service"
            status, uris = mtls_get(m, inbound, with_certificate=True)
            assert status == 200 and uris == [REVIEWS_ID], "Envoy presents the service's SPIFFE identity"
            assert upstream_handshakes(m) > 0, "the caller's sidecar originated TLS"
            check_config_dump(m)
        elif mode == "PERMISSIVE":
            assert plaintext_get(inbound, client) == 200, "plaintext is accepted too, from a workload the policy admits"
            status, uris = mtls_get(m, inbound, with_certificate=True)
            assert status == 200 and uris == [REVIEWS_ID]
            assert upstream_handshakes(m) > 0, "mesh traffic is still mTLS"
        else:
            assert plaintext_get(inbound, client) == 200
            assert mtls_get(m, inbound, with_certificate=True)[0] == 0, "no TLS is spoken at all"
            assert upstream_handshakes(m) == 0, "plaintext end to end"
        if mode != "STRICT":
            assert plaintext_get(inbound) == 403, "a plaintext caller that is no mesh workload reaches nothing"
        if mode != "DISABLED":
            assert mtls_get(m, inbound, with_certificate=True, service="intruder")[0] == 403, \
                "a mesh identity no policy names is refused (RBAC)"


def check_config_dump(m: Mesh) -> None:
    """/debug/config_dump shows what a proxy was sent, per type and version, with its private key redacted."""
    assert m.admin("/debug/config_dump")[0] == 400
    assert m.admin("/debug/config_dump?proxy=nobody")[0] == 404
    status, body = m.admin("/debug/config_dump?proxy=client")
    assert status == 200, body
    dump = json.loads(body)
    syncz = {p["node"]: p for p in m.syncz()["proxies"]}["client"]["types"]
    assert {t: dump[t]["version"] for t in syncz} == {t: s["acked"] for t, s in syncz.items()}, "what was ACKed"
    clusters = [c["name"] for c in dump["CDS"]["resources"]]
    assert "outbound|9080|shop/reviews-v1" in clusters
    [certificate] = [s for s in dump["SDS"]["resources"] if "tls_certificate" in s]
    assert certificate["tls_certificate"]["private_key"] == "[redacted]"
    assert "PRIVATE KEY" not in body and "private_key\": {" not in body
