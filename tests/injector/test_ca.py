"""The mesh CA: certificate fields, chains, validity windows, typed errors, plug-in CAs, files and redaction.

Certificates differ on every run (random keys, serials and ECDSA signatures), so the tests assert on
parsed fields and on verification — by ``cryptography``'s verifier, and independently by OpenSSL (the
``openssl`` command and Python's ``ssl`` completing a mutual-TLS handshake) — never on bytes.
"""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import logging
import os
import pickle
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from meshplane.injector import pki
from meshplane.injector.ca import (
    CAError,
    CAErrorKind,
    CertificateAuthority,
    IssuedCertificate,
    PrivateKey,
    SecretBytes,
    ca_directory,
    parse_spiffe_id,
    spiffe_id_for_ingress_gateway,
    spiffe_id_for_virtual_service,
    spiffe_id_for_xds_node,
)

TD = "bookstore.shop.mesh.local"
WORKLOAD = f"spiffe://{TD}/ns/shop/virtualservice/catalog"
START = datetime(2031, 3, 1, 12, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
T = TypeVar("T", bound=x509.ExtensionType)


class FakeClock:
    """A clock tests move by hand."""

    def __init__(self, at: datetime = START) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, delta: timedelta) -> None:
        self.at += delta


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    return ca_directory(tmp_path / "state", "shop/bookstore")


@pytest.fixture
def ca(ca_dir: Path, clock: FakeClock) -> CertificateAuthority:
    return CertificateAuthority.create_or_load(ca_dir, TD, now=clock)


def intermediates(issued: IssuedCertificate) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(issued.chain_pem)[1:]


def verify(roots: bytes, issued: IssuedCertificate, at: datetime) -> list[x509.Certificate]:
    """Verify a client-capable leaf against a PEM trust bundle with ``cryptography``'s verifier."""
    verifier = (PolicyBuilder().store(Store(x509.load_pem_x509_certificates(roots))).time(at)
                .build_client_verifier())
    return verifier.verify(issued.certificate(), intermediates(issued)).chain


def extension(certificate: x509.Certificate, kind: type[T]) -> x509.Extension[T]:
    return certificate.extensions.get_extension_for_class(kind)


def refused(kind: CAErrorKind, error: pytest.ExceptionInfo[CAError]) -> bool:
    return error.value.kind is kind


# --- workload certificates ---------------------------------------------------------------------------


def test_a_workload_certificate_names_the_spiffe_id_as_its_only_subject_alternative_name(
        ca: CertificateAuthority) -> None:
    issued, _ = ca.issue_for(WORKLOAD, HOUR)
    names = extension(issued.certificate(), x509.SubjectAlternativeName).value
    assert list(names) == [x509.UniformResourceIdentifier(WORKLOAD)]
    assert issued.spiffe_id == WORKLOAD
    assert issued.certificate().subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "catalog"


def test_a_workload_certificate_is_an_end_entity_for_serving_and_calling(ca: CertificateAuthority) -> None:
    leaf = ca.issue_for(WORKLOAD, HOUR)[0].certificate()
    constraints = extension(leaf, x509.BasicConstraints)
    usage = extension(leaf, x509.KeyUsage)
    assert constraints.critical and not constraints.value.ca
    assert usage.critical and usage.value.digital_signature and usage.value.key_encipherment
    assert not usage.value.key_cert_sign and not usage.value.crl_sign
    assert list(extension(leaf, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH,
                                                                 ExtendedKeyUsageOID.CLIENT_AUTH]


def test_a_workload_certificate_chains_to_the_root(ca: CertificateAuthority, clock: FakeClock) -> None:
    issued, _ = ca.issue_for(WORKLOAD, HOUR)
    chain = verify(ca.trust_bundle_pem(), issued, clock())
    assert chain[-1] == ca.root_certificates[0]
    assert intermediates(issued) == [ca.issuing_certificate]  # the root is trusted, not sent


def test_issue_signs_the_callers_public_key_and_keeps_no_key(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    issued = ca.issue(WORKLOAD, key.public_key(), HOUR)
    assert pki.same_public_key(issued.certificate().public_key(), key.public_key())


@pytest.mark.parametrize("key", [rsa.generate_private_key(65537, 1024).public_key(),
                                 ec.generate_private_key(ec.SECP521R1()).public_key(),
                                 ed25519.Ed25519PrivateKey.generate().public_key()],
                         ids=["rsa-1024", "p-521", "ed25519"])
def test_a_public_key_peers_would_not_accept_is_refused(
        ca: CertificateAuthority, key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> None:
    with pytest.raises(CAError) as error:
        ca.issue(WORKLOAD, key, HOUR)
    assert refused(CAErrorKind.BAD_KEY, error)


def test_serials_are_random_positive_and_at_most_128_bits(ca: CertificateAuthority) -> None:
    serials = {ca.issue_for(WORKLOAD, HOUR)[0].serial for _ in range(20)}
    assert len(serials) == 20
    assert all(0 < s < 2**128 for s in serials)
    assert max(serials).bit_length() > 100  # random, not counted


def test_the_root_and_intermediate_have_the_ca_profile(ca: CertificateAuthority, clock: FakeClock) -> None:
    root, intermediate = ca.root_certificates[0], ca.issuing_certificate
    for certificate, path_length in ((root, 1), (intermediate, 0)):
        constraints = extension(certificate, x509.BasicConstraints)
        usage = extension(certificate, x509.KeyUsage).value
        assert constraints.critical and constraints.value.ca and constraints.value.path_length == path_length
        assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
        assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
        assert certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "meshplane"
    assert root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == f"{TD} root"
    assert root.issuer == root.subject and intermediate.issuer == root.subject
    assert root.not_valid_after_utc - clock() == timedelta(days=3650)
    assert intermediate.not_valid_after_utc - clock() == timedelta(days=365)


def test_a_long_trust_domain_still_fits_in_the_common_name(tmp_path: Path, clock: FakeClock) -> None:
    long_domain = "a" * 60 + ".mesh.local"
    authority = CertificateAuthority.create_or_load(tmp_path / "ca", long_domain, now=clock)
    name = str(authority.root_certificates[0].subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    assert len(name) == 64 and name.startswith("a" * 60)


# --- validity ----------------------------------------------------------------------------------------


def test_a_certificate_starts_one_minute_early_for_clock_skew(ca: CertificateAuthority, clock: FakeClock) -> None:
    issued, _ = ca.issue_for(WORKLOAD, HOUR)
    assert issued.not_before == clock() - timedelta(minutes=1)
    assert issued.certificate().not_valid_before_utc == issued.not_before
    assert issued.not_after == clock() + HOUR


def test_the_lifetime_is_capped_by_the_maximum_ttl(ca: CertificateAuthority, clock: FakeClock) -> None:
    assert ca.max_ttl == timedelta(hours=24)
    assert ca.issue_for(WORKLOAD, timedelta(days=30))[0].not_after == clock() + timedelta(hours=24)


def test_the_maximum_ttl_is_a_setting_and_short_lifetimes_are_allowed(ca_dir: Path, clock: FakeClock) -> None:
    ca = CertificateAuthority.create_or_load(ca_dir, TD, now=clock, max_ttl=timedelta(minutes=10))
    assert ca.issue_for(WORKLOAD, HOUR)[0].not_after == clock() + timedelta(minutes=10)
    assert ca.issue_for(WORKLOAD, timedelta(seconds=10))[0].not_after == clock() + timedelta(seconds=10)


def test_the_lifetime_is_capped_by_the_intermediates_expiry(ca: CertificateAuthority, clock: FakeClock) -> None:
    expiry = ca.issuing_certificate.not_valid_after_utc
    clock.at = expiry - timedelta(hours=2)
    issued, _ = ca.issue_for(WORKLOAD, timedelta(hours=24))
    assert issued.not_after == expiry == ca.expires_at
    verify(ca.trust_bundle_pem(), issued, clock())


def test_issuing_after_the_chain_expired_is_refused(ca: CertificateAuthority, clock: FakeClock) -> None:
    clock.at = ca.expires_at
    with pytest.raises(CAError) as error:
        ca.issue_for(WORKLOAD, HOUR)
    assert refused(CAErrorKind.EXPIRED, error)


@pytest.mark.parametrize("ttl", [timedelta(0), timedelta(seconds=-5)])
def test_a_lifetime_that_is_not_positive_is_refused(ca: CertificateAuthority, ttl: timedelta) -> None:
    with pytest.raises(CAError) as error:
        ca.issue_for(WORKLOAD, ttl)
    assert refused(CAErrorKind.BAD_TTL, error)


def test_a_clock_without_a_timezone_is_refused(ca_dir: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        CertificateAuthority.create_or_load(ca_dir, TD, now=lambda: datetime(2031, 1, 1))


def test_renewal_is_due_at_two_thirds_of_the_lifetime_within_the_jitter(ca: CertificateAuthority,
                                                                         clock: FakeClock) -> None:
    issued, _ = ca.issue_for(WORKLOAD, timedelta(hours=3))
    jitter = timedelta(hours=3) * 0.05
    assert issued.lifetime == timedelta(hours=3)
    assert issued.renew_at(0) == clock() + timedelta(hours=2)
    assert issued.renew_at(1) == clock() + timedelta(hours=2) + jitter
    assert issued.renew_at(-1) == clock() + timedelta(hours=2) - jitter
    draws = {issued.renew_at() for _ in range(200)}
    assert len(draws) > 1
    assert all(clock() + timedelta(hours=2) - jitter <= d <= clock() + timedelta(hours=2) + jitter for d in draws)


# --- identities --------------------------------------------------------------------------------------


def test_an_identity_of_another_trust_domain_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CAError) as error:
        ca.issue_for("spiffe://other.mesh.local/ns/shop/virtualservice/catalog", HOUR)
    assert refused(CAErrorKind.WRONG_TRUST_DOMAIN, error)
    assert TD in error.value.message


@pytest.mark.parametrize("uri", [
    "http://bookstore.shop.mesh.local/ns/shop", "SPIFFE://bookstore.shop.mesh.local/ns/shop",
    "spiffe://Bookstore.shop.mesh.local/ns/shop", "spiffe://bookstore.shop.mesh.local",
    "spiffe://bookstore.shop.mesh.local/", "spiffe://bookstore.shop.mesh.local/ns//shop",
    "spiffe://bookstore.shop.mesh.local/ns/shop/", "spiffe://bookstore.shop.mesh.local/ns/../admin",
    "spiffe://bookstore.shop.mesh.local/./ns", "spiffe://bookstore.shop.mesh.local:443/ns/shop",
    "spiffe://user@bookstore.shop.mesh.local/ns/shop", "spiffe://bookstore.shop.mesh.local/ns/shop?x=1",
    "spiffe://bookstore.shop.mesh.local/ns/shop#x", "spiffe://bookstore.shop.mesh.local/ns/sh%6Fp",
    "spiffe:///ns/shop", "spiffe://bookstore.shop.mesh.local/" + "a" * 2048, "",
])
def test_a_malformed_spiffe_id_is_refused(ca: CertificateAuthority, uri: str) -> None:
    with pytest.raises(CAError) as error:
        ca.issue_for(uri, HOUR)
    assert refused(CAErrorKind.BAD_SPIFFE_ID, error)
    assert "spiffe://<trust domain>/" in error.value.message  # says what a good id looks like


def test_the_spiffe_helpers_build_the_mesh_identities() -> None:
    assert spiffe_id_for_virtual_service(TD, "shop", "catalog") == WORKLOAD
    assert spiffe_id_for_ingress_gateway(TD, "shop", "edge") == f"spiffe://{TD}/ns/shop/ingressgateway/edge"
    assert spiffe_id_for_xds_node(TD, "catalog-v1.shop-10.0.0.7") == f"spiffe://{TD}/xds/node/catalog-v1.shop-10.0.0.7"
    parsed = parse_spiffe_id(WORKLOAD)
    assert (parsed.trust_domain, parsed.path, str(parsed)) == (TD, "/ns/shop/virtualservice/catalog", WORKLOAD)


@pytest.mark.parametrize(("namespace", "name"), [("shop", "a/b"), ("..", "catalog"), ("shop", ""), ("sh op", "x")])
def test_a_name_that_would_change_the_identitys_shape_is_refused(namespace: str, name: str) -> None:
    with pytest.raises(CAError) as error:
        spiffe_id_for_virtual_service(TD, namespace, name)
    assert refused(CAErrorKind.BAD_SPIFFE_ID, error)


def test_a_trust_domain_outside_the_spiffe_alphabet_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(CAError) as error:
        CertificateAuthority.create_or_load(tmp_path / "ca", "Bookstore:443")
    assert refused(CAErrorKind.BAD_TRUST_DOMAIN, error)
    assert not (tmp_path / "ca").exists()


# --- xDS client and serving certificates -------------------------------------------------------------


def test_an_xds_client_certificate_names_the_node_and_only_authenticates_clients(
        ca: CertificateAuthority, clock: FakeClock) -> None:
    issued, key = ca.issue_xds_client("catalog-v1.shop-10.0.0.7", HOUR)
    leaf = issued.certificate()
    uri = f"spiffe://{TD}/xds/node/catalog-v1.shop-10.0.0.7"
    assert list(extension(leaf, x509.SubjectAlternativeName).value) == [x509.UniformResourceIdentifier(uri)]
    assert list(extension(leaf, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert issued.spiffe_id == uri
    assert pki.same_public_key(leaf.public_key(), key.public_key())
    verify(ca.trust_bundle_pem(), issued, clock())


@pytest.mark.parametrize("node_id", ["a/b", "", "node~1", "[::1]"])
def test_an_xds_node_id_must_be_one_path_segment(ca: CertificateAuthority, node_id: str) -> None:
    with pytest.raises(CAError) as error:
        ca.issue_xds_client(node_id, HOUR)
    assert refused(CAErrorKind.BAD_SPIFFE_ID, error)


def test_a_serving_certificate_carries_dns_and_ip_names_for_server_authentication(
        ca: CertificateAuthority, clock: FakeClock) -> None:
    issued, _ = ca.issue_server(["meshplane.mesh-system.svc", "Localhost."], ["127.0.0.1", "::1"], HOUR)
    leaf = issued.certificate()
    names = extension(leaf, x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["meshplane.mesh-system.svc", "localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert list(extension(leaf, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert issued.spiffe_id is None
    store = Store(list(ca.root_certificates))
    for subject in (x509.DNSName("meshplane.mesh-system.svc"), x509.IPAddress(ipaddress.ip_address("::1"))):
        PolicyBuilder().store(store).time(clock()).build_server_verifier(subject).verify(leaf, intermediates(issued))


def test_a_workload_certificate_cannot_pass_for_the_xds_server(ca: CertificateAuthority, clock: FakeClock) -> None:
    issued, _ = ca.issue_for(WORKLOAD, HOUR)
    verifier = (PolicyBuilder().store(Store(list(ca.root_certificates))).time(clock())
                .build_server_verifier(x509.DNSName("meshplane.mesh-system.svc")))
    with pytest.raises(VerificationError):
        verifier.verify(issued.certificate(), intermediates(issued))


@pytest.mark.parametrize(("dns", "ips"), [([], []), (["*.svc"], []), (["bad_name.svc"], []), ([], ["300.1.1.1"])])
def test_a_serving_certificate_needs_valid_names(ca: CertificateAuthority, dns: list[str], ips: list[str]) -> None:
    with pytest.raises(CAError) as error:
        ca.issue_server(dns, ips, HOUR)
    assert refused(CAErrorKind.BAD_NAME, error)


# --- files of a self-signed CA -----------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_the_ca_directory_is_private_and_keys_are_owner_only_whatever_the_umask(
        tmp_path: Path, clock: FakeClock, umask: int) -> None:
    previous = os.umask(umask)
    try:
        directory = ca_directory(tmp_path, "shop/bookstore")
        CertificateAuthority.create_or_load(directory, TD, now=clock)
    finally:
        os.umask(previous)
    modes = {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()}
    assert directory.stat().st_mode & 0o777 == 0o700
    assert modes == {"ca-key.pem": 0o600, "root-key.pem": 0o600, "ca-cert.pem": 0o644,
                     "cert-chain.pem": 0o644, "root-cert.pem": 0o644}


def test_the_ca_directory_is_named_after_the_mesh_key(tmp_path: Path) -> None:
    assert ca_directory(tmp_path, "shop/bookstore") == tmp_path / "ca" / "shop_bookstore"
    for bad in ("../etc", "shop/..", "shop", "a/b/c", "shop/book store"):
        with pytest.raises(CAError) as error:
            ca_directory(tmp_path, bad)
        assert refused(CAErrorKind.BAD_NAME, error)


def test_loading_the_directory_again_gives_the_same_ca(ca: CertificateAuthority, ca_dir: Path,
                                                       clock: FakeClock) -> None:
    clock.advance(timedelta(days=30))
    again = CertificateAuthority.create_or_load(ca_dir, TD, now=clock)
    assert again.root_certificates == ca.root_certificates
    assert again.issuing_certificate == ca.issuing_certificate
    verify(ca.trust_bundle_pem(), again.issue_for(WORKLOAD, HOUR)[0], clock())


def test_control_planes_starting_together_agree_on_one_root(ca_dir: Path, clock: FakeClock) -> None:
    results: list[CertificateAuthority] = []

    def start() -> None:
        results.append(CertificateAuthority.create_or_load(ca_dir, TD, now=clock))

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6
    assert len({r.root_certificates for r in results}) == 1
    assert sorted(p.name for p in ca_dir.parent.iterdir()) == [ca_dir.name]  # no staging left behind


def test_an_existing_empty_directory_receives_the_new_ca(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / "ca").mkdir()
    CertificateAuthority.create_or_load(tmp_path / "ca", TD, now=clock)
    assert (tmp_path / "ca" / "ca-key.pem").is_file()


def test_a_ca_that_cannot_be_written_is_a_typed_error(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / "state").write_text("a file where the state directory should be")
    with pytest.raises(CAError) as error:
        CertificateAuthority.create_or_load(ca_directory(tmp_path / "state", "shop/bookstore"), TD, now=clock)
    assert refused(CAErrorKind.UNWRITABLE, error)


@pytest.mark.parametrize("name", ["ca-key.pem", "root-key.pem"])
def test_a_key_file_others_may_read_is_refused_with_the_fix(ca: CertificateAuthority, ca_dir: Path,
                                                             clock: FakeClock, name: str) -> None:
    (ca_dir / name).chmod(0o644)
    with pytest.raises(CAError) as error:
        CertificateAuthority.create_or_load(ca_dir, TD, now=clock)
    assert refused(CAErrorKind.INSECURE_PERMISSIONS, error)
    assert f"chmod 600 {ca_dir / name}" in error.value.message


def test_a_partial_ca_directory_is_refused_and_never_replaced(ca: CertificateAuthority, ca_dir: Path,
                                                               clock: FakeClock) -> None:
    (ca_dir / "ca-cert.pem").unlink()
    with pytest.raises(CAError) as error:
        CertificateAuthority.create_or_load(ca_dir, TD, now=clock)
    assert refused(CAErrorKind.UNREADABLE, error)
    assert "ca-cert.pem" in error.value.message
    assert x509.load_pem_x509_certificates((ca_dir / "root-cert.pem").read_bytes()) == list(ca.root_certificates)


# --- plug-in intermediates ---------------------------------------------------------------------------


def ca_certificate(name: str, key: PrivateKey, *, issuer: tuple[x509.Certificate, PrivateKey] | None = None,
                   path_length: int | None = 0, ca: bool = True, not_before: datetime = START - timedelta(days=1),
                   lifetime: timedelta = timedelta(days=365)) -> x509.Certificate:
    """A CA certificate made outside meshplane (RSA or EC), the way an organisation's PKI would."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signer = (issuer[0].subject, issuer[1]) if issuer else (subject, key)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_before + lifetime)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                                            crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False))
    return builder.sign(signer.reveal(), hashes.SHA256())


def write_cacerts(directory: Path, key: PrivateKey, certificate: x509.Certificate,
                  chain: list[x509.Certificate], roots: list[x509.Certificate]) -> Path:
    """The four files of Istio's cacerts layout, the key 0600."""
    directory.mkdir(parents=True)
    (directory / "ca-key.pem").write_bytes(key.pem().reveal())
    (directory / "ca-key.pem").chmod(0o600)
    (directory / "ca-cert.pem").write_bytes(pki.pem(certificate))
    (directory / "cert-chain.pem").write_bytes(pki.pem_all([certificate, *chain]))
    (directory / "root-cert.pem").write_bytes(pki.pem_all(roots))
    return directory


@pytest.fixture(scope="module")
def shared_root() -> tuple[x509.Certificate, PrivateKey]:
    key = PrivateKey(rsa.generate_private_key(65537, 2048))  # organisations' roots are often RSA
    return ca_certificate("corp root", key, path_length=1, lifetime=timedelta(days=3650)), key


def plugin(directory: Path, root: tuple[x509.Certificate, PrivateKey], name: str = "cluster-1", *, ca: bool = True,
           not_before: datetime = START - timedelta(days=1), lifetime: timedelta = timedelta(days=365)) -> Path:
    """A cacerts directory with a new intermediate (or, ``ca=False``, a leaf posing as one) under ``root``."""
    key = PrivateKey.generate()
    certificate = ca_certificate(name, key, issuer=root, ca=ca, not_before=not_before, lifetime=lifetime)
    return write_cacerts(directory, key, certificate, [root[0]], [root[0]])


def test_two_control_planes_with_one_root_trust_each_others_certificates(
        tmp_path: Path, clock: FakeClock, shared_root: tuple[x509.Certificate, PrivateKey]) -> None:
    east = CertificateAuthority.load(plugin(tmp_path / "east", shared_root, "east"), TD, now=clock)
    west = CertificateAuthority.load(plugin(tmp_path / "west", shared_root, "west"), TD, now=clock)
    from_east, from_west = east.issue_for(WORKLOAD, HOUR)[0], west.issue_for(WORKLOAD, HOUR)[0]
    assert verify(west.trust_bundle_pem(), from_east, clock())[-1] == shared_root[0]
    assert verify(east.trust_bundle_pem(), from_west, clock())[-1] == shared_root[0]
    assert intermediates(from_east) == [east.issuing_certificate]
    assert east.issuing_certificate != west.issuing_certificate


def test_a_plugin_chain_with_two_intermediates_is_sent_whole(tmp_path: Path, clock: FakeClock) -> None:
    root_key, middle_key, key = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    root = ca_certificate("corp root", root_key, path_length=None)
    middle = ca_certificate("corp policy", middle_key, issuer=(root, root_key), path_length=1)
    issuing = ca_certificate("cluster", key, issuer=(middle, middle_key))
    ca = CertificateAuthority.load(write_cacerts(tmp_path / "c", key, issuing, [middle, root], [root]), TD, now=clock)
    issued = ca.issue_for(WORKLOAD, HOUR)[0]
    assert intermediates(issued) == [issuing, middle]
    assert verify(ca.trust_bundle_pem(), issued, clock())[-1] == root


def test_a_plugin_key_that_is_not_the_certificates_key_is_refused(
        tmp_path: Path, clock: FakeClock, shared_root: tuple[x509.Certificate, PrivateKey]) -> None:
    directory = plugin(tmp_path / "c", shared_root)
    (directory / "ca-key.pem").write_bytes(PrivateKey.generate().pem().reveal())
    with pytest.raises(CAError) as error:
        CertificateAuthority.load(directory, TD, now=clock)
    assert refused(CAErrorKind.KEY_MISMATCH, error)


def test_a_plugin_certificate_that_is_not_a_ca_is_refused(
        tmp_path: Path, clock: FakeClock, shared_root: tuple[x509.Certificate, PrivateKey]) -> None:
    with pytest.raises(CAError) as error:
        CertificateAuthority.load(plugin(tmp_path / "c", shared_root, ca=False), TD, now=clock)
    assert refused(CAErrorKind.NOT_A_CA, error)
    assert "intermediate CA" in error.value.message


def test_an_expired_plugin_intermediate_is_refused(
        tmp_path: Path, clock: FakeClock, shared_root: tuple[x509.Certificate, PrivateKey]) -> None:
    directory = plugin(tmp_path / "c", shared_root, not_before=START - timedelta(days=40), lifetime=timedelta(days=30))
    with pytest.raises(CAError) as error:
        CertificateAuthority.load(directory, TD, now=clock)
    assert refused(CAErrorKind.EXPIRED, error)
    assert "expired at" in error.value.message and "same root" in error.value.message


def test_a_plugin_intermediate_not_yet_valid_is_refused(
        tmp_path: Path, clock: FakeClock, shared_root: tuple[x509.Certificate, PrivateKey]) -> None:
    directory = plugin(tmp_path / "c", shared_root, not_before=START + timedelta(days=1))
    with pytest.raises(CAError) as error:
        CertificateAuthority.load(directory, TD, now=clock)
    assert refused(CAErrorKind.NOT_YET_VALID, error)


def test_a_plugin_intermediate_from_another_root_is_refused(
        tmp_path: Path, clock: FakeClock, shared_root: tuple[x509.Certificate, PrivateKey]) -> None:
    directory = plugin(tmp_path / "c", shared_root)
    other_key = PrivateKey.generate()
    (directory / "root-cert.pem").write_bytes(pki.pem(ca_certificate("corp root", other_key, path_length=1)))
    with pytest.raises(CAError) as error:
        CertificateAuthority.load(directory, TD, now=clock)
    assert refused(CAErrorKind.BAD_CHAIN, error)
    assert "root-cert.pem" in error.value.message


def test_a_plugin_chain_longer_than_the_root_allows_is_refused(tmp_path: Path, clock: FakeClock) -> None:
    root_key, middle_key, key = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    root = ca_certificate("corp root", root_key, path_length=1)
    middle = ca_certificate("corp policy", middle_key, issuer=(root, root_key), path_length=0)
    issuing = ca_certificate("cluster", key, issuer=(middle, middle_key))
    with pytest.raises(CAError) as error:
        CertificateAuthority.load(write_cacerts(tmp_path / "c", key, issuing, [middle, root], [root]), TD, now=clock)
    assert refused(CAErrorKind.BAD_CHAIN, error)
    assert "allows 0 intermediate(s)" in error.value.message


@pytest.mark.parametrize(("name", "content"), [("cert-chain.pem", None), ("root-cert.pem", b"not a certificate"),
                                               ("ca-key.pem", b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n")])
def test_a_missing_or_garbled_plugin_file_is_unreadable(
        tmp_path: Path, clock: FakeClock, shared_root: tuple[x509.Certificate, PrivateKey],
        name: str, content: bytes | None) -> None:
    directory = plugin(tmp_path / "c", shared_root)
    if content is None:
        (directory / name).unlink()
    else:
        (directory / name).write_bytes(content)
    with pytest.raises(CAError) as error:
        CertificateAuthority.load(directory, TD, now=clock)
    assert refused(CAErrorKind.UNREADABLE, error)
    assert name in error.value.message and "c2VjcmV0" not in str(error.value)


# --- root rotation -----------------------------------------------------------------------------------


def test_during_root_rotation_the_bundle_trusts_the_old_and_the_new_root(tmp_path: Path, clock: FakeClock) -> None:
    old = CertificateAuthority.create_or_load(tmp_path / "old", TD, now=clock)
    new = CertificateAuthority.create_or_load(tmp_path / "new", TD, now=clock).with_additional_roots(
        x509.load_pem_x509_certificates(old.trust_bundle_pem()))
    bundle = new.trust_bundle_pem()
    assert x509.load_pem_x509_certificates(bundle) == [new.root_certificates[0], old.root_certificates[0]]
    verify(bundle, old.issue_for(WORKLOAD, HOUR)[0], clock())
    verify(bundle, new.issue_for(WORKLOAD, HOUR)[0], clock())
    with pytest.raises(VerificationError):
        verify(old.trust_bundle_pem(), new.issue_for(WORKLOAD, HOUR)[0], clock())


def test_adding_a_root_twice_or_a_leaf_as_a_root_is_handled(ca: CertificateAuthority) -> None:
    assert ca.with_additional_roots(ca.root_certificates).root_certificates == ca.root_certificates
    with pytest.raises(CAError) as error:
        ca.with_additional_roots([ca.issue_for(WORKLOAD, HOUR)[0].certificate()])
    assert refused(CAErrorKind.NOT_A_CA, error)


# --- redaction -----------------------------------------------------------------------------------------


def test_a_private_key_never_shows_in_text(ca: CertificateAuthority, caplog: pytest.LogCaptureFixture) -> None:
    issued, key = ca.issue_for(WORKLOAD, HOUR)
    secret = key.pem()

    @dataclasses.dataclass
    class Holder:
        key: PrivateKey
        pem: SecretBytes

    holder = Holder(key, secret)
    texts = [repr(secret), str(secret), f"{secret}", f"{secret!r}", format(secret), repr(key), str(key), f"{key}",
             repr((issued, key)), str({"key": key, "pem": secret}), repr(holder), str(dataclasses.asdict(holder)),
             repr(copy.deepcopy(holder)), repr(ca), str([ca])]
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("meshplane.test").info("issued %s with %s %r %s", issued, key, secret, holder)
    texts.append(caplog.text)
    assert all("PRIVATE KEY" not in text for text in texts)
    assert "<private key redacted>" in caplog.text
    assert b"PRIVATE KEY" in secret.reveal()  # the one way out


@pytest.mark.parametrize("value", [SecretBytes(b"-----BEGIN PRIVATE KEY-----"), PrivateKey.generate()],
                         ids=["secret-bytes", "private-key"])
def test_a_private_key_cannot_be_pickled(value: object) -> None:
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(value)


def test_the_key_of_a_loaded_ca_is_the_key_on_disk(ca: CertificateAuthority, ca_dir: Path) -> None:
    on_disk = PrivateKey.from_pem(SecretBytes((ca_dir / "ca-key.pem").read_bytes()))
    assert pki.same_public_key(on_disk.public_key(), ca.issuing_certificate.public_key())


# --- independent checks by OpenSSL -------------------------------------------------------------------


@pytest.fixture
def real_ca(tmp_path: Path) -> CertificateAuthority:
    """A CA on the real clock: OpenSSL checks validity against the time now."""
    return CertificateAuthority.create_or_load(tmp_path / "real", TD)


def write_leaf(directory: Path, issued: IssuedCertificate, key: PrivateKey) -> tuple[Path, Path]:
    chain, key_file = directory / "chain.pem", directory / "key.pem"
    chain.write_bytes(issued.chain_pem)
    key_file.write_bytes(key.pem().reveal())
    key_file.chmod(0o600)
    return chain, key_file


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
@pytest.mark.parametrize("purpose", ["sslclient", "sslserver"])
def test_openssl_verifies_a_workload_certificate_to_the_root(tmp_path: Path, real_ca: CertificateAuthority,
                                                             purpose: str) -> None:
    issued, _ = real_ca.issue_for(WORKLOAD, HOUR)
    (tmp_path / "root.pem").write_bytes(real_ca.trust_bundle_pem())
    (tmp_path / "untrusted.pem").write_bytes(pki.pem_all(intermediates(issued)))
    (tmp_path / "leaf.pem").write_bytes(issued.cert_pem)
    result = subprocess.run(["openssl", "verify", "-x509_strict", "-purpose", purpose, "-CAfile", "root.pem",
                             "-untrusted", "untrusted.pem", "leaf.pem"],
                            cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "leaf.pem: OK"


def _pump(client: ssl.SSLObject, server: ssl.SSLObject, wires: tuple[ssl.MemoryBIO, ...]) -> None:
    """Run both handshakes over memory pipes until each side is done."""
    client_in, client_out, server_in, server_out = wires
    done: set[str] = set()
    for _ in range(20):
        for name, side in (("client", client), ("server", server)):
            try:
                side.do_handshake()
                done.add(name)
            except ssl.SSLWantReadError:
                pass
            server_in.write(client_out.read())
            client_in.write(server_out.read())
        if done == {"client", "server"}:
            return
    raise AssertionError("the handshake did not finish")


def _context(purpose: ssl.Purpose, chain: Path, key: Path, bundle: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(purpose, cadata=bundle.decode())
    context.check_hostname = False  # mesh peers are named by URI SAN, checked below
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_cert_chain(chain, key)
    return context


@pytest.fixture
def mutual_tls(tmp_path: Path, real_ca: CertificateAuthority) -> Iterator[tuple[ssl.SSLObject, ssl.SSLObject]]:
    (tmp_path / "client").mkdir()
    (tmp_path / "server").mkdir()
    client_files = write_leaf(tmp_path / "client", *real_ca.issue_for(
        spiffe_id_for_ingress_gateway(TD, "shop", "edge"), HOUR))
    server_files = write_leaf(tmp_path / "server", *real_ca.issue_for(WORKLOAD, HOUR))
    bundle = real_ca.trust_bundle_pem()
    wires = tuple(ssl.MemoryBIO() for _ in range(4))
    client = _context(ssl.Purpose.SERVER_AUTH, *client_files, bundle).wrap_bio(wires[0], wires[1])
    server = _context(ssl.Purpose.CLIENT_AUTH, *server_files, bundle).wrap_bio(wires[2], wires[3],
                                                                               server_side=True)
    _pump(client, server, wires)
    yield client, server


def test_python_ssl_completes_mutual_tls_between_two_workloads(mutual_tls: tuple[ssl.SSLObject, ssl.SSLObject]) -> None:
    client, server = mutual_tls
    client_seen, server_seen = server.getpeercert(), client.getpeercert()
    assert client_seen is not None and server_seen is not None
    assert client_seen["subjectAltName"] == (("URI", f"spiffe://{TD}/ns/shop/ingressgateway/edge"),)
    assert server_seen["subjectAltName"] == (("URI", WORKLOAD),)
