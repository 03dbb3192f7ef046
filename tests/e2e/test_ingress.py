"""Ingress gateways end to end: a real Envoy gateway, real sidecars, loopback apps, TLS by SNI.

The gateway serves two host names on one port, each with its own certificate from a Secret, and
sends each to its own virtual service over mutual TLS as the gateway's identity; access policies
name the gateway as a source.

Then, one gateway host per test in front of one service: MUTUAL_TLS client validation (trusted CA
bundle Secret, subjectAlternateNames), PERMISSIVE (plaintext and TLS on one port), path and Host
rewrites as the app sees them, a gRPC rule to a GRPC deployment called by a real grpcio client
(tests/grpcapp.py; h2c and TLS), a 90/10 route table of the destination splitting gateway traffic,
and the server certificate Secret rotated under constant load. Client certificates are made here
(EC P-256 CAs). Loads are bounded in count and time; every app, proxy and thread started is stopped.
"""

from __future__ import annotations

import base64
import functools
import http.client
import json
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.e2e.harness import Mesh, load, mesh
from tests.e2e.test_canary import HOST, obj, share, table
from tests.grpcapp import GrpcApp, say
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


# ------------------------------------------------------------------------------------------------------------------
# Listener TLS modes, rewrites, gRPC, canary weights and certificate rotation: one gateway host in front of one
# destination service per test. The gateway proxy is host GW of the test's subnet; deployments are 11, 12, ...

GW = 30
HTTP_PORT = 8080  # the gateway's plaintext (DISABLED) listener port
SHOP = "shop.example.test"
CLIENT_SAN = "client.example.test"
T = TypeVar("T")


def service_docs(name: str, versions: Sequence[str] = ("v1",), *, protocol: str = "HTTP",
                 hosts: Sequence[str] = ()) -> list[dict[str, Any]]:
    """A virtual service (its ``hosts``, default ``<name>.shop``) and a deployment per version on PORT."""
    docs = [obj("VirtualService", name, {"mesh": {"ref": {"name": "shop"}}, "hosts": list(hosts or [f"{name}.shop"])})]
    docs += [obj("VirtualDeployment", f"{name}-{v}", {
        "virtualService": {"ref": {"name": name}}, "listener": [{"protocol": protocol, "port": PORT}],
        "serviceDiscovery": {"type": "DNS", "hostname": f"{name}-{v}.shop"}}) for v in versions]
    return docs


def ca_secret(name: str, ca_pem: bytes) -> dict[str, Any]:
    """A trusted CA bundle Secret (an opaque Secret with ``ca.crt``)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": name, "namespace": "shop"},
            "data": {"ca.crt": base64.b64encode(ca_pem).decode()}}


def listener(port: int, mode: str = "DISABLED", *, certificate: str | None = None, ca_bundle: str | None = None,
             sans: Sequence[str] = ()) -> dict[str, Any]:
    """An HTTP listener of a gateway host: TLS ``mode``, server certificate and client CA bundle Secrets."""
    tls: dict[str, Any] = {"mode": mode}
    if certificate is not None:
        tls["serverCertificate"] = {"kubeSecretTlsCertificate": {"secretName": certificate}}
    if ca_bundle is not None:
        tls["clientValidation"] = {"trustedCaBundle": {"kubeSecretCaBundle": {"secretName": ca_bundle}}}
        if sans:
            tls["clientValidation"]["subjectAlternateNames"] = list(sans)
    return {"protocol": "HTTP", "port": port, "tls": tls}


def gateway_docs(hostnames: dict[str, list[dict[str, Any]]], rules: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The gateway ``gw`` with a host per entry of ``hostnames`` (host name → its listeners; the gateway host is
    named after its first label) and one route table of ``rules``."""
    hosts = [{"name": hostname.split(".")[0], "hostnames": [hostname], "listeners": listeners}
             for hostname, listeners in hostnames.items()]
    return [obj("IngressGateway", "gw", {"mesh": {"ref": {"name": "shop"}}, "hosts": hosts}),
            obj("IngressGatewayRouteTable", "gw-routes", {"ingressGateway": {"ref": {"name": "gw"}},
                                                           "routeRules": list(rules)})]


def http_rule(host: str, service: str, **options: Any) -> dict[str, Any]:
    """An HTTP rule of gateway host ``host`` to virtual service ``service`` (``options``: path, isGrpc, ...)."""
    return {"httpRoute": {"ingressGatewayHost": {"name": host}, "destinations": [{"virtualService": {"ref": {
        "name": service}}}], **options}}


def start_deployments(m: Mesh, docs: Sequence[dict[str, Any]], deployments: Sequence[str], *,
                      echo: bool = True) -> None:
    """Write ``docs``, start the control plane, an echo app (unless the test brings its own) and a sidecar per
    deployment (host 11, 12, ...), and the gateway proxy (host GW)."""
    m.write("mesh.yaml", docs)
    m.start_control_plane()
    for i, name in enumerate(deployments):
        if echo:
            m.start_app(name, 11 + i, APP_PORT)
        m.start_sidecar(name, f"shop/{name}", 11 + i, {PORT: APP_PORT}, wait=False)
    m.start_sidecar("gw", "shop/gw", GW, gateway=True, wait=False)
    for envoy in m.envoys.values():
        envoy.wait_ready(30)


def http_get(m: Mesh, hostname: str, path: str = "/", port: int = HTTP_PORT) -> tuple[int, str]:
    """Plaintext GET to the gateway with Host ``hostname``: (status, body). Failures raise."""
    connection = http.client.HTTPConnection(m.address(GW), port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": hostname})
        reply = connection.getresponse()
        return reply.status, reply.read().decode(errors="replace")
    finally:
        connection.close()


def echoed(body: str) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(body)
    return answer


# ------------------------------------------------------------------------------------------- TLS clients


@dataclass(frozen=True)
class Reply:
    status: int
    body: str
    peer: bytes  # the certificate the server presented (DER)


ClientCertificate = tuple[Path, Path]  # (certificate chain file, key file)


def tls_get(m: Mesh, server_name: str, ca_pem: bytes, *, path: str = "/", port: int = GATEWAY_PORT,
            client: ClientCertificate | None = None, timeout: float = 5.0) -> Reply:
    """GET over a new TLS connection to the gateway, SNI and Host ``server_name``, the server verified against
    ``ca_pem`` (one or more PEM CAs), presenting ``client`` if given. Failures raise as they come: a refused
    client certificate as ssl.SSLError or ConnectionError (with TLS 1.3 on the first read)."""
    context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    if client is not None:
        context.load_cert_chain(*client)
    with (socket.create_connection((m.address(GW), port), timeout=timeout) as raw,
          context.wrap_socket(raw, server_hostname=server_name) as tls):
        peer = tls.getpeercert(binary_form=True)
        assert peer is not None
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode("ascii"))
        response = http.client.HTTPResponse(tls, method="GET")
        try:
            response.begin()
            return Reply(response.status, response.read().decode("utf-8", errors="replace"), peer)
        finally:
            response.close()


def refusal(attempt: Callable[[], object]) -> BaseException | None:
    """The error that ended ``attempt`` if the server refused it (TLS alert or connection closed without an
    answer); None if it got an answer. Anything else (a timeout) propagates."""
    try:
        attempt()
    except (ssl.SSLError, ConnectionError) as exc:  # RemoteDisconnected is a ConnectionResetError
        return exc
    return None


def serial_of(pem_or_der: bytes) -> int:
    if pem_or_der.startswith(b"-----"):
        return x509.load_pem_x509_certificate(pem_or_der).serial_number
    return x509.load_der_x509_certificate(pem_or_der).serial_number


@dataclass(frozen=True)
class Ca:
    """A throwaway EC P-256 CA issuing client certificates."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @staticmethod
    def create(common_name: str) -> Ca:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(hours=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=True, crl_sign=True, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        return Ca(cert, key)

    def issue_client(self, san: str, folder: Path) -> ClientCertificate:
        """A client certificate (DNS SAN ``san``, clientAuth) and its key, written to files in ``folder``."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, san)]))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(hours=1))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False, key_agreement=False,
                                             key_cert_sign=False, crl_sign=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"{san}-{cert.serial_number:x}"
        chain, key_file = folder / f"{stem}.crt", folder / f"{stem}.key"
        chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
        return chain, key_file


def paced(attempt: Callable[[], T], *, rate: float, seconds: float,
          workers: int = 16) -> list[tuple[float, T | BaseException]]:
    """Call ``attempt`` ``rate`` times a second for ``seconds`` (bounded: at most rate*seconds calls, none started
    after ``seconds`` + 2 s) on a thread pool; (start time from the beginning, result or error) per call."""
    start = time.monotonic()

    def timed() -> tuple[float, T | BaseException]:
        began = time.monotonic() - start
        try:
            return began, attempt()
        except Exception as exc:
            return began, exc

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="paced") as pool:
        submitted = []
        for i in range(int(rate * seconds)):
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            if time.monotonic() - start > seconds + 2.0:
                break
            submitted.append(pool.submit(timed))
        return [future.result() for future in submitted]


# ------------------------------------------------------------------------------------------------- tests


def test_mutual_tls_admits_only_a_client_certificate_from_the_trusted_ca_with_a_listed_san(tmp_path: Path) -> None:
    server_ca, chain, key = make_certificates([SHOP])
    trusted, other = Ca.create("trusted client CA"), Ca.create("another client CA")
    docs = [obj("Mesh", "shop", {}), *service_docs("shop"), secret("shop-cert", chain, key),
            ca_secret("client-ca", trusted.pem),
            *gateway_docs({SHOP: [listener(GATEWAY_PORT, "MUTUAL_TLS", certificate="shop-cert",
                                           ca_bundle="client-ca", sans=[CLIENT_SAN])]}, [http_rule("shop", "shop")]),
            gateway_policy("shop")]
    folder = tmp_path / "clients"
    valid = trusted.issue_client(CLIENT_SAN, folder)
    with mesh(tmp_path) as m:
        start_deployments(m, docs, ["shop-v1"])
        m.wait_for(lambda: tls_get(m, SHOP, server_ca, client=valid).status == 200, 30, "mutual TLS to the gateway")
        reply = tls_get(m, SHOP, server_ca, client=valid)
        assert reply.status == 200 and served_by(reply.body) == "shop-v1"

        refused = {
            "no client certificate": None,
            "a certificate from another CA": other.issue_client(CLIENT_SAN, folder),
            "a SAN not in subjectAlternateNames": trusted.issue_client("intruder.example.test", folder),
        }
        for what, client in refused.items():
            error = refusal(functools.partial(tls_get, m, SHOP, server_ca, client=client))
            assert error is not None, f"a client with {what} got an answer"
        assert refusal(lambda: http_get(m, SHOP, port=GATEWAY_PORT)) is not None, "plaintext on a MUTUAL_TLS port"
        assert tls_get(m, SHOP, server_ca, client=valid).status == 200, "the valid client is still served"


def test_path_and_host_rewrites_reach_the_app(tmp_path: Path) -> None:
    docs = [obj("Mesh", "shop", {}), *service_docs("catalog", hosts=["catalog.shop.mesh"]),
            *gateway_docs({SHOP: [listener(HTTP_PORT)]}, [
                http_rule("shop", "catalog", path="/shop/", isPathRewriteEnabled=True, isHostRewriteEnabled=True),
                http_rule("shop", "catalog", path="/plain/")]),
            gateway_policy("catalog")]
    with mesh(tmp_path) as m:
        start_deployments(m, docs, ["catalog-v1"])
        m.wait_for(lambda: http_get(m, SHOP, "/shop/books")[0] == 200, 30, "the gateway to route /shop/")
        for path, expected in [("/shop/books?page=2", "/books?page=2"), ("/shop/", "/"),
                               ("/shop?page=2", "/?page=2")]:  # the rule's path without its "/" is the app's "/"
            status, body = http_get(m, SHOP, path)
            assert status == 200, (path, body)
            seen = echoed(body)
            assert (seen["name"], seen["path"], seen["host"]) == ("catalog-v1", expected, "catalog.shop.mesh"), path

        status, body = http_get(m, SHOP, "/plain/books")  # a rule without rewrites: path and Host unchanged
        assert status == 200, body
        seen = echoed(body)
        assert (seen["path"], seen["host"]) == ("/plain/books", SHOP)
        assert http_get(m, SHOP, "/shopping")[0] == 404, "/shop/ is a path prefix, not a string prefix"
        assert http_get(m, SHOP, "/elsewhere")[0] == 404, "no rule matches"


def test_a_grpc_rule_carries_grpc_calls_in_plaintext_and_over_tls_to_a_grpc_deployment(tmp_path: Path) -> None:
    plain, secure = "greeter.example.test", "greeter-tls.example.test"
    ca, chain, key = make_certificates([secure])
    docs = [obj("Mesh", "shop", {}), *service_docs("greeter", protocol="GRPC"), secret("greeter-cert", chain, key),
            *gateway_docs({plain: [listener(HTTP_PORT)],
                           secure: [listener(GATEWAY_PORT, "TLS", certificate="greeter-cert")]},
                          [http_rule("greeter", "greeter", isGrpc=True),
                           http_rule("greeter-tls", "greeter", isGrpc=True)]),
            gateway_policy("greeter")]
    with mesh(tmp_path) as m, GrpcApp("greeter-v1", m.address(11), APP_PORT) as app:
        start_deployments(m, docs, ["greeter-v1"], echo=False)
        h2c, tls = f"{m.address(GW)}:{HTTP_PORT}", f"{m.address(GW)}:{GATEWAY_PORT}"
        m.wait_for(lambda: say(h2c, plain, "ping", timeout=2)["name"] == "greeter-v1", 30, "a plaintext gRPC call")
        answer = say(h2c, plain, "hello through the gateway")
        assert answer["name"] == "greeter-v1" and answer["request"] == "hello through the gateway"
        # over TLS the gRPC client insists on h2 by ALPN; the server is verified against the test CA
        m.wait_for(lambda: say(tls, secure, "ping", root_certificates=ca, timeout=2)["name"] == "greeter-v1", 10,
                   "a gRPC call over TLS")
        answer = say(tls, secure, "hello over TLS", root_certificates=ca)
        assert answer["name"] == "greeter-v1" and answer["request"] == "hello over TLS"
        assert app.calls >= 4
        assert http_get(m, plain, "/meshplane.test.Echo/Say")[0] == 404, "the rule matches gRPC requests only"


def test_a_90_10_route_table_behind_the_gateway_splits_2000_requests_within_3_points(tmp_path: Path) -> None:
    # harness.load() speaks plaintext HTTP only (no SNI, no CA to verify against), so this gateway listener is
    # DISABLED; the weights are the destination service's own route table's.
    docs = [obj("Mesh", "shop", {}), *service_docs("reviews", ("v1", "v2"), hosts=[HOST]),
            table({"v1": 90, "v2": 10}),
            *gateway_docs({SHOP: [listener(HTTP_PORT)]}, [http_rule("shop", "reviews")]), gateway_policy("reviews")]
    with mesh(tmp_path) as m:
        start_deployments(m, docs, ["reviews-v1", "reviews-v2"])
        url = f"http://{m.address(GW)}:{HTTP_PORT}"
        m.wait_for(lambda: load(url, SHOP, count=40, seconds=5).statuses == {200: 40}, 30, "the gateway to route")
        m.wait_for(lambda: "reviews-v2" in load(url, SHOP, count=100, seconds=5).names, 20, "v2 to get traffic")
        results = load(url, SHOP, count=2000, concurrency=32, seconds=60)
        assert results.failed == 0, (results.statuses, results.errors[:3])
        assert len(results.names) == 2000
        assert set(results.names) == {"reviews-v1", "reviews-v2"}
        assert abs(share(results, "reviews-v2") - 0.10) <= 0.03, results.names.count("reviews-v2")


def test_rotating_the_server_certificate_secret_under_load_fails_no_request(tmp_path: Path) -> None:
    old_ca, old_chain, old_key = make_certificates([SHOP])
    new_ca, new_chain, new_key = make_certificates([SHOP])
    trusted = old_ca + new_ca  # the client trusts both CAs: the rotation also moves to a new CA

    def docs(chain: bytes, key: bytes) -> list[dict[str, Any]]:
        return [obj("Mesh", "shop", {}), *service_docs("shop"), secret("shop-cert", chain, key),
                *gateway_docs({SHOP: [listener(GATEWAY_PORT, "TLS", certificate="shop-cert")]},
                              [http_rule("shop", "shop")]), gateway_policy("shop")]

    with mesh(tmp_path) as m:
        start_deployments(m, docs(old_chain, old_key), ["shop-v1"])
        m.wait_for(lambda: tls_get(m, SHOP, trusted).status == 200, 30, "TLS to the gateway")
        assert serial_of(tls_get(m, SHOP, trusted).peer) == serial_of(old_chain)
        rotated: dict[str, float] = {}
        began = time.monotonic()

        def rotate() -> None:
            time.sleep(4.0)
            m.write("mesh.yaml", docs(new_chain, new_key))
            rotated["at"] = time.monotonic() - began

        operator = threading.Thread(target=rotate)
        operator.start()
        try:
            calls = paced(lambda: tls_get(m, SHOP, trusted), rate=50, seconds=12)
        finally:
            operator.join()
        failures = [(t, r) for t, r in calls if not isinstance(r, Reply) or r.status != 200]
        assert failures == [], f"{len(failures)} of {len(calls)} failed, first: {failures[:3]}"
        assert len(calls) >= 550, "a constant 50 requests/s for 12 s"
        serials = [(t, serial_of(r.peer)) for t, r in calls if isinstance(r, Reply)]
        assert {s for _, s in serials} == {serial_of(old_chain), serial_of(new_chain)}
        first_new = min(t for t, s in serials if s == serial_of(new_chain))
        assert first_new - rotated["at"] <= 3.0, f"the new certificate appeared {first_new - rotated['at']:.1f} s late"
        late_old = [t for t, s in serials if s == serial_of(old_chain) and t > first_new + 1.0]
        assert late_old == [], f"the old certificate was still presented {len(late_old)} times"
        assert serial_of(tls_get(m, SHOP, new_ca).peer) == serial_of(new_chain)


def test_a_permissive_port_answers_plaintext_and_tls_and_checks_an_offered_client_certificate(
        tmp_path: Path) -> None:
    server_ca, chain, key = make_certificates([SHOP])
    trusted, other = Ca.create("trusted client CA"), Ca.create("another client CA")
    docs = [obj("Mesh", "shop", {}), *service_docs("shop"), secret("shop-cert", chain, key),
            ca_secret("client-ca", trusted.pem),
            *gateway_docs({SHOP: [listener(GATEWAY_PORT, "PERMISSIVE", certificate="shop-cert",
                                           ca_bundle="client-ca")]}, [http_rule("shop", "shop")]),
            gateway_policy("shop")]
    folder = tmp_path / "clients"
    with mesh(tmp_path) as m:
        start_deployments(m, docs, ["shop-v1"])
        m.wait_for(lambda: tls_get(m, SHOP, server_ca).status == 200, 30, "TLS to the gateway")
        reply = tls_get(m, SHOP, server_ca)
        assert reply.status == 200 and served_by(reply.body) == "shop-v1"
        assert serial_of(reply.peer) == serial_of(chain)
        status, body = http_get(m, SHOP, port=GATEWAY_PORT)
        assert status == 200 and served_by(body) == "shop-v1", "plaintext on the same port"
        assert tls_get(m, SHOP, server_ca, client=trusted.issue_client(CLIENT_SAN, folder)).status == 200
        error = refusal(lambda: tls_get(m, SHOP, server_ca, client=other.issue_client(CLIENT_SAN, folder)))
        assert error is not None, "an offered client certificate from an untrusted CA was accepted"
