"""Certificate rotation under load: short-lived certificates renewed over SDS, and a new intermediate
(same root) rolled out to every proxy — no request fails."""

from __future__ import annotations

import json
import socket
import ssl
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509

from meshplane.injector.ca import CertificateAuthority, ca_directory
from tests.catools import replace_intermediate
from tests.e2e.harness import Mesh, load, mesh
from tests.e2e.test_canary import APP_PORT, HOST, PORT
from tests.e2e.test_mtls import TRUST_DOMAIN, manifests

pytestmark = pytest.mark.envoy


def serials(m: Mesh, node: str) -> set[str]:
    """Serial numbers of the leaf certificates the proxy holds now (Envoy's /certs; the chain's first)."""
    status, body = m.envoys[node].admin_get("/certs")
    if status != 200:
        return set()
    found = set()
    for context in json.loads(body).get("certificates", []):
        found |= {c["serial_number"] for c in context.get("cert_chain", [])[:1]}
    return found


def test_ten_second_certificates_rotate_for_a_minute_under_load_without_a_failed_request(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        m.write("mesh.yaml", manifests("STRICT"))
        m.start_control_plane("--cert-ttl", "10")
        m.start_app("reviews-v1", 11, APP_PORT)
        m.start_sidecar("reviews-v1", "shop/reviews-v1", 11, {PORT: APP_PORT})
        m.start_sidecar("client", "shop/client", 10)
        url = f"http://{m.address(10)}:15001"
        m.wait_for(lambda: load(url, HOST, count=20, seconds=5).statuses == {200: 20}, 30, "mTLS traffic to flow")
        seen: dict[str, set[str]] = {"reviews-v1": set(), "client": set()}
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                for node in seen:
                    seen[node] |= serials(m, node)
                time.sleep(0.5)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            results = load(url, HOST, count=3000, rate=50, concurrency=8, seconds=62)
        finally:
            done.set()
            watcher.join()
        assert results.failed == 0, (results.statuses, results.errors[:3])
        assert len(results.names) >= 2900, "a constant load for the whole minute"
        for node, found in seen.items():
            assert len(found) >= 4, f"{node} held only {len(found)} distinct certificates in 60 s"


def presented_issuer_key(m: Mesh, host: str) -> bytes:
    """The Authority Key Identifier of the leaf a sidecar presents over TLS: which intermediate signed it."""
    ca = CertificateAuthority.create_or_load(ca_directory(m.state_dir, "shop/shop"), TRUST_DOMAIN)
    issued, key = ca.issue_for(f"spiffe://{TRUST_DOMAIN}/ns/shop/virtualservice/tester", timedelta(minutes=5))
    folder = Path(tempfile.mkdtemp(dir=m.root))
    (folder / "chain.pem").write_bytes(issued.chain_pem)
    (folder / "key.pem").write_bytes(key.pem().reveal())
    (folder / "roots.pem").write_bytes(ca.trust_bundle_pem())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(folder / "roots.pem")
    context.load_cert_chain(folder / "chain.pem", folder / "key.pem")
    with socket.create_connection((host, PORT), timeout=5) as raw, context.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    leaf = x509.load_der_x509_certificate(der)
    identifier = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert identifier is not None
    return identifier


def test_replacing_the_intermediate_under_load_fails_no_request(tmp_path: Path) -> None:
    with mesh(tmp_path) as m:
        m.write("mesh.yaml", manifests("STRICT"))
        m.start_control_plane()
        m.start_app("reviews-v1", 11, APP_PORT)
        m.start_sidecar("reviews-v1", "shop/reviews-v1", 11, {PORT: APP_PORT})
        m.start_sidecar("client", "shop/client", 10)
        url = f"http://{m.address(10)}:15001"
        m.wait_for(lambda: load(url, HOST, count=20, seconds=5).statuses == {200: 20}, 30, "mTLS traffic to flow")
        replaced: dict[str, bytes] = {}
        before = {node: serials(m, node) for node in ("reviews-v1", "client")}

        def replace() -> None:
            time.sleep(3)
            new = replace_intermediate(ca_directory(m.state_dir, "shop/shop"), TRUST_DOMAIN)
            replaced["key_id"] = new.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest

        operator = threading.Thread(target=replace)
        operator.start()
        results = load(url, HOST, count=750, rate=50, concurrency=8, seconds=20)
        operator.join()
        assert results.failed == 0, (results.statuses, results.errors[:3])
        m.wait_for(lambda: presented_issuer_key(m, m.address(11)) == replaced["key_id"], 15,
                   "reviews-v1 to present a certificate signed by the new intermediate")
        # /certs also lists contexts that existing connections still use, so look for the new one
        m.wait_for(lambda: bool(serials(m, "client") - before["client"]), 15, "the client to hold a new certificate")
        after = load(url, HOST, count=100, seconds=10)
        assert after.failed == 0 and set(after.names) == {"reviews-v1"}
