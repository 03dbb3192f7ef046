"""X.509 and SPIFFE building blocks of the mesh CA: pure functions, no files, no clock of their own.

Contracts:

* **Identity** is a SPIFFE id, ``spiffe://<trust domain>/<path>``, validated by the rules of the SPIFFE
  spec (lower-case trust domain of ``[a-z0-9._-]``; path segments of ``[A-Za-z0-9._-]``, never ``.`` or
  ``..``; no port, user, query, fragment or percent-encoding; at most 2048 bytes). A workload id always
  has a path. Malformed input is a ``CAError(BAD_SPIFFE_ID)``, never a certificate with a surprising name.
* **Keys never leak through text.** ``SecretBytes`` and ``PrivateKey`` render as
  ``<private key redacted>`` in ``repr``, ``str``, f-strings and logging, also when nested in containers
  or dataclasses, and refuse to be pickled. The bytes come out only through ``reveal()``, which is easy to
  find in review (Envoy Gateway's ``PrivateBytes``).
* **Certificate profiles** are fixed here: the root (CA, pathlen 1), the intermediate (CA, pathlen 0)
  and leaves (CA:false; digitalSignature + keyEncipherment; an explicit EKU; SAN names; subject and
  authority key identifiers so that strict verifiers — BoringSSL in Envoy, ``cryptography``'s
  verifier — can build the path).
* **Every failure is a ``CAError`` with a ``kind``** that callers map to HTTP or gRPC codes, and a
  message that says what to do.
"""

from __future__ import annotations

import enum
import ipaddress
import itertools
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NoReturn

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

REDACTED = "<private key redacted>"
ORGANIZATION = "meshplane"
ROOT_LIFETIME = timedelta(days=3650)
INTERMEDIATE_LIFETIME = timedelta(days=365)
CLOCK_SKEW = timedelta(minutes=1)  # certificates start this early: peers' clocks differ (istio#29379)
MIN_RSA_BITS = 2048
MAX_SPIFFE_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255
MAX_COMMON_NAME = 64  # RFC 5280 upper bound; cryptography refuses longer values

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
"""Keys a CA certificate may sign with (plug-in intermediates are often RSA)."""
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_ACCEPTED_CURVES = (ec.SECP256R1, ec.SECP384R1)


class CAErrorKind(enum.Enum):
    """Why the CA refused; callers map kinds to status codes (e.g. BAD_* -> 400/INVALID_ARGUMENT)."""

    BAD_SPIFFE_ID = "BAD_SPIFFE_ID"
    WRONG_TRUST_DOMAIN = "WRONG_TRUST_DOMAIN"
    BAD_TRUST_DOMAIN = "BAD_TRUST_DOMAIN"
    BAD_NAME = "BAD_NAME"
    BAD_KEY = "BAD_KEY"
    BAD_TTL = "BAD_TTL"
    KEY_MISMATCH = "KEY_MISMATCH"
    NOT_A_CA = "NOT_A_CA"
    EXPIRED = "EXPIRED"
    NOT_YET_VALID = "NOT_YET_VALID"
    BAD_CHAIN = "BAD_CHAIN"
    UNREADABLE = "UNREADABLE"
    UNWRITABLE = "UNWRITABLE"
    INSECURE_PERMISSIONS = "INSECURE_PERMISSIONS"


class CAError(Exception):
    """A refusal by the CA: ``kind`` for programs, ``message`` (with the fix) for people."""

    def __init__(self, kind: CAErrorKind, message: str) -> None:
        super().__init__(f"{kind.value}: {message}")
        self.kind = kind
        self.message = message


def fail(kind: CAErrorKind, message: str) -> NoReturn:
    """Raise a ``CAError``; ``from None`` keeps library exceptions (and any bytes they quote) out."""
    raise CAError(kind, message) from None


class SecretBytes:
    """Bytes that must not be printed: a private key in PEM form.

    ``repr``/``str`` are redacted, so logging a dict, dataclass or tuple that holds one is safe. Pickling
    is refused (it would write the bytes out); copies share the immutable value.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = bytes(value)

    def reveal(self) -> bytes:
        """The bytes, for the one place that must hand them over (a file 0600, an SDS secret)."""
        return self._value

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("SecretBytes cannot be pickled: that would write the private key out")

    def __copy__(self) -> SecretBytes:
        return self

    def __deepcopy__(self, memo: object) -> SecretBytes:
        return self


class PrivateKey:
    """A private key (ECDSA P-256 for everything this CA generates) whose text forms are redacted."""

    __slots__ = ("_key",)

    def __init__(self, key: SigningKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> PrivateKey:
        """A new ECDSA P-256 key: small, fast to sign with, accepted by every Envoy build."""
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, pem: SecretBytes) -> PrivateKey:
        """Parse an unencrypted PEM key (PKCS#8, SEC1 or PKCS#1); ValueError if it is not EC or RSA."""
        key = serialization.load_pem_private_key(pem.reveal(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise ValueError("only EC and RSA keys are supported")
        return cls(key)

    def public_key(self) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        return self._key.public_key()

    def pem(self) -> SecretBytes:
        """PKCS#8 PEM (``BEGIN PRIVATE KEY``), what Envoy's ``private_key`` accepts."""
        return SecretBytes(self._key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))

    def reveal(self) -> SigningKey:
        """The key object, for signing inside the CA."""
        return self._key

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("PrivateKey cannot be pickled: that would write the private key out")

    def __copy__(self) -> PrivateKey:
        return self

    def __deepcopy__(self, memo: object) -> PrivateKey:
        return self


# --- SPIFFE ids -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpiffeId:
    """A validated SPIFFE id; ``str()`` gives the URI."""

    trust_domain: str
    path: str  # starts with "/"

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"


_SPIFFE_HINT = "a SPIFFE id looks like spiffe://<trust domain>/ns/<namespace>/virtualservice/<name>"


def validate_trust_domain(trust_domain: str) -> str:
    """The trust domain unchanged, or ``CAError(BAD_TRUST_DOMAIN)``: lower-case ``[a-z0-9._-]``, <= 255."""
    if len(trust_domain) > MAX_TRUST_DOMAIN_BYTES or not _TRUST_DOMAIN.fullmatch(trust_domain):
        fail(CAErrorKind.BAD_TRUST_DOMAIN, f"trust domain {trust_domain!r} is invalid: use 1-255 characters of "
                                           "lower-case letters, digits, '.', '-' and '_' (e.g. mesh.ns.mesh.local)")
    return trust_domain


def parse_spiffe_id(uri: str) -> SpiffeId:
    """Parse and validate a workload SPIFFE id (it must have a path); ``CAError(BAD_SPIFFE_ID)`` otherwise."""
    if len(uri.encode()) > MAX_SPIFFE_ID_BYTES:
        _bad_id(uri, f"longer than {MAX_SPIFFE_ID_BYTES} bytes")
    if not uri.startswith("spiffe://"):
        _bad_id(uri, "the scheme must be 'spiffe://' (lower case)")
    trust_domain, slash, path = uri.removeprefix("spiffe://").partition("/")
    if not _TRUST_DOMAIN.fullmatch(trust_domain) or len(trust_domain) > MAX_TRUST_DOMAIN_BYTES:
        _bad_id(uri, "the trust domain must be lower-case letters, digits, '.', '-' or '_' (no port, no user)")
    if not slash or not path:
        _bad_id(uri, "a workload id needs a path after the trust domain")
    for segment in path.split("/"):
        _check_segment(uri, segment)
    return SpiffeId(trust_domain, "/" + path)


def _check_segment(uri: str, segment: str) -> None:
    if not segment:
        _bad_id(uri, "empty path segment (double or trailing '/')")
    if segment in (".", ".."):
        _bad_id(uri, f"path segment {segment!r} is not allowed")
    if not _SEGMENT.fullmatch(segment):
        _bad_id(uri, f"path segment {segment!r} may hold only letters, digits, '.', '-' and '_'")


def _bad_id(uri: str, why: str) -> NoReturn:
    fail(CAErrorKind.BAD_SPIFFE_ID, f"SPIFFE id {uri!r} is malformed: {why}; {_SPIFFE_HINT}")


def spiffe_id(trust_domain: str, *segments: str) -> str:
    """``spiffe://<trust domain>/<segment>/...``, each segment validated (no '/' inside one)."""
    uri = f"spiffe://{validate_trust_domain(trust_domain)}/" + "/".join(segments)
    for segment in segments:
        _check_segment(uri, segment)
    return str(parse_spiffe_id(uri))


def spiffe_id_for_virtual_service(trust_domain: str, namespace: str, name: str) -> str:
    """The workload identity of every proxy of a virtual service (architecture.md §4)."""
    return spiffe_id(trust_domain, "ns", namespace, "virtualservice", name)


def spiffe_id_for_ingress_gateway(trust_domain: str, namespace: str, name: str) -> str:
    """The workload identity of an ingress gateway's proxies."""
    return spiffe_id(trust_domain, "ns", namespace, "ingressgateway", name)


def spiffe_id_for_xds_node(trust_domain: str, node_id: str) -> str:
    """The identity a proxy shows the control plane: ``/xds/node/<node id>``, the node id one segment."""
    return spiffe_id(trust_domain, "xds", "node", node_id)


# --- names and keys ---------------------------------------------------------------------------------


def common_name(text: str) -> str:
    """``text`` cut to the 64 characters X.509 allows in a common name (the SAN carries the full name)."""
    return text[:MAX_COMMON_NAME]


def dns_name(name: str) -> str:
    """A lower-cased DNS name for a serving certificate; wildcards are refused (``CAError(BAD_NAME)``)."""
    lowered = name.lower().rstrip(".")
    labels = lowered.split(".")
    if len(lowered) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        fail(CAErrorKind.BAD_NAME, f"{name!r} is not a DNS name (labels of a-z, 0-9 and '-'; wildcards are not issued)")
    return lowered


def ip_address(value: str | IPAddress) -> IPAddress:
    """An IP address for a serving certificate, or ``CAError(BAD_NAME)``."""
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        fail(CAErrorKind.BAD_NAME, f"{value!r} is not an IP address")


def check_public_key(key: CertificatePublicKeyTypes) -> None:
    """Accept ECDSA P-256/P-384 and RSA >= 2048 bits, what Envoy and peers verify; ``CAError(BAD_KEY)``."""
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _ACCEPTED_CURVES):
        return
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= MIN_RSA_BITS:
        return
    fail(CAErrorKind.BAD_KEY, f"public key {type(key).__name__} is not accepted: use ECDSA P-256 (preferred), "
                              f"P-384 or RSA of at least {MIN_RSA_BITS} bits")


def same_public_key(a: CertificatePublicKeyTypes, b: CertificatePublicKeyTypes) -> bool:
    """Whether two public keys are the same key (compared by their DER encoding)."""
    der, spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return a.public_bytes(der, spki) == b.public_bytes(der, spki)


def new_serial() -> int:
    """A random, positive, non-zero 128-bit serial: unpredictable, so certificates cannot be forged by guess."""
    return secrets.randbits(128) or 1


def _hash_for(key: SigningKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size > 256:
        return hashes.SHA384()
    return hashes.SHA256()


def sign(builder: x509.CertificateBuilder, issuer_key: SigningKey) -> x509.Certificate:
    """Sign with the hash that matches the key's strength."""
    return builder.sign(issuer_key, _hash_for(issuer_key))


# --- certificate profiles ---------------------------------------------------------------------------


def _ca_name(trust_domain: str, role: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name(f"{trust_domain} {role}"))])


def _ca_builder(subject: x509.Name, issuer: x509.Name, public_key: CertificatePublicKeyTypes, *, path_length: int,
                not_before: datetime, not_after: datetime) -> x509.CertificateBuilder:
    usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(new_serial()).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))


def build_root(key: PrivateKey, trust_domain: str, now: datetime) -> x509.Certificate:
    """A self-signed root: CA, pathlen 1 (one intermediate below it), 10 years."""
    name = _ca_name(trust_domain, "root")
    builder = _ca_builder(name, name, key.public_key(), path_length=1, not_before=now - CLOCK_SKEW,
                          not_after=now + ROOT_LIFETIME)
    return sign(builder, key.reveal())


def build_intermediate(key: PrivateKey, root: x509.Certificate, root_key: PrivateKey, trust_domain: str, *,
                       now: datetime, lifetime: timedelta = INTERMEDIATE_LIFETIME) -> x509.Certificate:
    """The issuing CA: signed by the root, pathlen 0 (it signs only leaves), about a year."""
    not_after = min(now + lifetime, root.not_valid_after_utc)
    builder = _ca_builder(_ca_name(trust_domain, "intermediate"), root.subject, key.public_key(), path_length=0,
                          not_before=now - CLOCK_SKEW, not_after=not_after)
    return sign(builder.add_extension(_authority_key_id(root), critical=False), root_key.reveal())


@dataclass(frozen=True)
class LeafProfile:
    """What differs between leaves: the subject's common name, its SAN names and the extended key usages."""

    common_name: str
    names: tuple[x509.GeneralName, ...]
    usages: tuple[x509.ObjectIdentifier, ...]


def workload_profile(spiffe: SpiffeId) -> LeafProfile:
    """A workload leaf: the SPIFFE id as its only URI SAN, usable both to serve and to call (mTLS)."""
    return LeafProfile(common_name(spiffe.path.rsplit("/", 1)[-1]), (x509.UniformResourceIdentifier(str(spiffe)),),
                       (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH))


def xds_client_profile(spiffe: SpiffeId) -> LeafProfile:
    """A proxy's certificate for the xDS stream: client authentication only."""
    return LeafProfile(common_name(spiffe.path.rsplit("/", 1)[-1]), (x509.UniformResourceIdentifier(str(spiffe)),),
                       (ExtendedKeyUsageOID.CLIENT_AUTH,))


def server_profile(dns_names: Sequence[str], ips: Sequence[IPAddress]) -> LeafProfile:
    """A serving certificate (xDS server, webhook): DNS and IP SANs, server authentication only."""
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ip) for ip in ips]
    if not names:
        fail(CAErrorKind.BAD_NAME, "a serving certificate needs at least one DNS name or IP address")
    first = dns_names[0] if dns_names else str(ips[0])
    return LeafProfile(common_name(first), tuple(names), (ExtendedKeyUsageOID.SERVER_AUTH,))


def build_leaf(profile: LeafProfile, public_key: CertificatePublicKeyTypes, issuer: x509.Certificate,
               issuer_key: PrivateKey, *, not_before: datetime, not_after: datetime) -> x509.Certificate:
    """An end-entity certificate: CA:false, digitalSignature + keyEncipherment, the profile's EKU and SANs."""
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, profile.common_name)]))
               .issuer_name(issuer.subject).public_key(public_key).serial_number(new_serial())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(usage, critical=True)
               .add_extension(x509.ExtendedKeyUsage(list(profile.usages)), critical=False)
               .add_extension(x509.SubjectAlternativeName(list(profile.names)), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
               .add_extension(_authority_key_id(issuer), critical=False))
    return sign(builder, issuer_key.reveal())


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """Point at the issuer's key identifier (its SKI if it has one), so path building never guesses."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def pem_all(certificates: Sequence[x509.Certificate]) -> bytes:
    return b"".join(pem(c) for c in certificates)


# --- checking CA material ---------------------------------------------------------------------------


def describe(certificate: x509.Certificate) -> str:
    """A certificate as people recognise it: its subject and serial."""
    return f"'{certificate.subject.rfc4514_string()}' (serial {certificate.serial_number:x})"


def is_ca(certificate: x509.Certificate) -> bool:
    """CA:true, and keyCertSign if the certificate restricts its key usage."""
    try:
        if not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return False
    except x509.ExtensionNotFound:
        return False
    try:
        return certificate.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    except x509.ExtensionNotFound:
        return True


def _path_length(certificate: x509.Certificate) -> int | None:
    return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def check_issuing_material(certificate: x509.Certificate, key: PrivateKey, chain: Sequence[x509.Certificate],
                           roots: Sequence[x509.Certificate], now: datetime) -> tuple[x509.Certificate, ...]:
    """Check an issuing CA before it signs anything; return the path from it up to (and with) its root.

    ``chain`` holds the certificates above ``certificate`` (roots in it are tolerated). The checks, in the
    order an operator would fix them: it is a CA (NOT_A_CA) with a strong enough key (BAD_KEY); the key
    is its key (KEY_MISMATCH); it chains by name and signature through CA certificates, within path
    lengths, to one of ``roots`` (BAD_CHAIN); every certificate on that path is valid now (EXPIRED,
    NOT_YET_VALID). Catching these at load time turns "proxies reject their certificates" into one
    clear error at start-up.
    """
    if not is_ca(certificate):
        fail(CAErrorKind.NOT_A_CA, f"the issuing certificate {describe(certificate)} is not a CA (it needs "
                                   "basicConstraints CA:true and keyCertSign); ca-cert.pem must be an intermediate CA")
    check_public_key(certificate.public_key())
    if not same_public_key(certificate.public_key(), key.public_key()):
        fail(CAErrorKind.KEY_MISMATCH, f"ca-key.pem is not the key of ca-cert.pem {describe(certificate)}: "
                                       "install the key and certificate that were issued together")
    path = _path_to_root(certificate, [c for c in chain if c not in roots], roots)
    for certificate_on_path in path:
        _check_validity(certificate_on_path, now)
    return path


def _path_to_root(certificate: x509.Certificate, above: list[x509.Certificate],
                  roots: Sequence[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    path = [certificate, *above]
    for below, (child, parent) in enumerate(itertools.pairwise(path), start=1):
        _check_link(child, parent, below)
    root = next((r for r in roots if _issued_by(path[-1], r)), None)
    if root is None:
        fail(CAErrorKind.BAD_CHAIN, f"{describe(path[-1])} is not signed by any root in root-cert.pem: put the "
                                    "root that issued the intermediate in root-cert.pem, and the certificates "
                                    "between them in cert-chain.pem")
    _check_link(path[-1], root, len(path))
    return (*path, root)


def _check_link(child: x509.Certificate, parent: x509.Certificate, below: int) -> None:
    """``parent`` signed ``child``, may sign, and allows the ``below`` CA certificates under it."""
    if not _issued_by(child, parent):
        fail(CAErrorKind.BAD_CHAIN, f"{describe(child)} is not signed by the next certificate in cert-chain.pem, "
                                    f"{describe(parent)}: list the chain in order, intermediate first, root last")
    if not is_ca(parent):
        fail(CAErrorKind.BAD_CHAIN, f"{describe(parent)} in the chain is not a CA")
    limit = _path_length(parent)
    if limit is not None and below > limit:
        fail(CAErrorKind.BAD_CHAIN, f"{describe(parent)} allows {limit} intermediate(s) below it, the chain has "
                                    f"{below}: verifiers would reject every certificate issued")


def _check_validity(certificate: x509.Certificate, now: datetime) -> None:
    if now >= certificate.not_valid_after_utc:
        fail(CAErrorKind.EXPIRED, f"{describe(certificate)} expired at {certificate.not_valid_after_utc.isoformat()}: "
                                  "install a current intermediate (ca-cert.pem, ca-key.pem, cert-chain.pem); with the "
                                  "same root, proxies keep trusting each other")
    if now + CLOCK_SKEW < certificate.not_valid_before_utc:
        fail(CAErrorKind.NOT_YET_VALID, f"{describe(certificate)} is valid only from "
                                        f"{certificate.not_valid_before_utc.isoformat()}: check this host's clock")
