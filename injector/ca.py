"""The mesh certificate authority: issues SPIFFE workload, xDS-client and serving certificates.

A library with no transport (style.md §2.8): the SDS server, ``meshplane bootstrap`` and the webhook call
it and map ``CAError.kind`` to their own status codes.

Two ways to exist, one file layout (Istio's "cacerts"), in one directory per mesh:

* **self-signed** — ``CertificateAuthority.create_or_load(ca_directory(state_dir, mesh_key), trust_domain)``
  creates an ECDSA P-256 root (10 years, pathlen 1) and an intermediate (1 year, pathlen 0) that issues,
  and loads the same CA on every later start;
* **plug-in intermediate** — ``CertificateAuthority.load(directory, trust_domain)`` reads ``ca-cert.pem``,
  ``ca-key.pem``, ``root-cert.pem`` and ``cert-chain.pem`` made elsewhere, so several control planes share
  one root.

Files: ``ca-cert.pem`` (issuing intermediate), ``ca-key.pem`` (its key), ``cert-chain.pem``
(intermediate → … → root), ``root-cert.pem`` (the root or roots to trust) and, self-signed only,
``root-key.pem``. The directory is 0700, keys 0600, certificates 0644.

Contracts:

* Every ``CertificateAuthority`` was checked before it can sign: the issuing certificate is a CA, the key
  is its key, it chains to a trusted root, and the whole path is valid now. A failure is a typed
  ``CAError`` at start-up, not a proxy rejecting its certificate later.
* A leaf is valid from ``now - 1 minute`` (peers' clocks differ; istio#29379 "not yet valid") until
  ``now + ttl``, capped by ``max_ttl`` (24 h by default) and by the earliest expiry on its chain: no leaf
  outlives the certificates that vouch for it.
* ``issue`` only names identities in this CA's trust domain, validated as SPIFFE ids.
* ``IssuedCertificate.renew_at`` is 2/3 of the lifetime ± 5 % jitter (OCI's rule; the jitter spreads
  renewals of proxies started together).
* During a root rotation ``with_additional_roots`` makes the trust bundle carry the old and the new roots.

Threat model (what this protects against, and what it does not):

* *Keys in logs, status or error messages*: keys live only in ``SecretBytes``/``PrivateKey``, whose
  ``repr``/``str`` are redacted and which refuse pickling; errors are raised ``from None`` so no library
  exception text travels with them.
* *Keys readable by other local users*: key files are created 0600 with ``O_CREAT|O_EXCL`` (never through
  a pre-existing file or symlink), the directory 0700, and a key file with group or other permission bits
  is refused (``INSECURE_PERMISSIONS``) rather than used.
* *A half-written CA*: a new CA is written into a temporary directory and renamed into place, so a crash
  or a second control plane starting at the same moment never leaves a partial CA, and only one root wins.
* *Certificates for names the caller should not get*: SPIFFE ids are parsed strictly and must be in the
  trust domain; serving certificates refuse wildcards; a workload certificate carries only a URI SAN, so
  it can never pass for the xDS server or the webhook, which are checked by DNS or IP name.
* Not covered: who may ask for which identity (the SDS server decides that from the proxy's xDS client
  certificate), revocation (lifetimes are short instead), keys in memory, and root-owned attackers.
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from meshplane.injector import pki
from meshplane.injector.pki import (
    CAError,
    CAErrorKind,
    PrivateKey,
    SecretBytes,
    fail,
    parse_spiffe_id,
    spiffe_id_for_ingress_gateway,
    spiffe_id_for_virtual_service,
    spiffe_id_for_xds_node,
)

__all__ = [
    "CAError",
    "CAErrorKind",
    "CertificateAuthority",
    "IssuedCertificate",
    "PrivateKey",
    "SecretBytes",
    "ca_directory",
    "parse_spiffe_id",
    "spiffe_id_for_ingress_gateway",
    "spiffe_id_for_virtual_service",
    "spiffe_id_for_xds_node",
]

DEFAULT_MAX_TTL = timedelta(hours=24)
RENEW_AT = 2 / 3  # of the lifetime (OCI renews at 2/3)
RENEW_JITTER = 0.05  # ± this fraction of the lifetime

CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
CERT_CHAIN = "cert-chain.pem"
ROOT_CERT = "root-cert.pem"
ROOT_KEY = "root-key.pem"
LAYOUT = (CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT)
DIR_MODE = 0o700
KEY_MODE = 0o600
CERT_MODE = 0o644

Clock = Callable[[], datetime]
_MESH_KEY_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")


def utc_now() -> datetime:
    return datetime.now(UTC)


def ca_directory(state_dir: Path, mesh_key: str) -> Path:
    """``<state dir>/ca/<namespace>_<name>`` for a mesh key ``<namespace>/<name>``.

    Kubernetes names never contain ``_``, so the mapping is one-to-one; anything else that could climb
    out of the state directory (``..``, ``/`` at the ends, odd characters) is ``CAError(BAD_NAME)``.
    """
    parts = mesh_key.split("/")
    if len(parts) != 2 or not all(_MESH_KEY_PART.fullmatch(p) for p in parts):
        fail(CAErrorKind.BAD_NAME, f"mesh key {mesh_key!r} is not '<namespace>/<name>' of Kubernetes names")
    return state_dir / "ca" / "_".join(parts)


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A signed leaf and what a proxy needs to present it (the key stays with whoever generated it)."""

    cert_pem: bytes = field(repr=False)
    chain_pem: bytes = field(repr=False)  # leaf + intermediates: Envoy's tls_certificate.certificate_chain
    serial: int
    not_before: datetime
    not_after: datetime
    spiffe_id: str | None  # None for serving certificates (DNS/IP names only)
    issued_at: datetime

    @property
    def lifetime(self) -> timedelta:
        """From issuance (not from ``not_before``, which is backdated for skew) to expiry."""
        return self.not_after - self.issued_at

    def renew_at(self, jitter: float | None = None) -> datetime:
        """When to replace this certificate: at 2/3 of its lifetime, ± 5 % of the lifetime.

        ``jitter`` in [-1, 1] picks the point in that window (tests pass it); by default it is random, so
        proxies that started together do not all come back at the same instant.
        """
        spread = random.uniform(-1.0, 1.0) if jitter is None else max(-1.0, min(1.0, jitter))
        return self.issued_at + self.lifetime * (RENEW_AT + spread * RENEW_JITTER)

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


class CertificateAuthority:
    """An issuing CA that was checked when it was built (see the module docstring for the contracts)."""

    __slots__ = ("_certificate", "_chain_pem", "_expires_at", "_key", "_max_ttl", "_now", "_path", "_roots",
                 "_trust_domain")

    def __init__(self, trust_domain: str, key: PrivateKey, certificate: x509.Certificate,
                 chain: Sequence[x509.Certificate], roots: Sequence[x509.Certificate], *,
                 now: Clock = utc_now, max_ttl: timedelta = DEFAULT_MAX_TTL) -> None:
        """``chain``: the certificates above ``certificate`` (may end with the root); ``roots``: those trusted."""
        if max_ttl <= timedelta(0):
            fail(CAErrorKind.BAD_TTL, f"max_ttl must be positive, not {max_ttl}")
        self._trust_domain = pki.validate_trust_domain(trust_domain)
        self._now = now
        self._max_ttl = max_ttl
        self._key = key
        self._certificate = certificate
        self._path = pki.check_issuing_material(certificate, key, chain, roots, self._clock())
        self._roots = _unique([*roots])
        self._chain_pem = pki.pem_all(self._path[:-1])
        self._expires_at = min(c.not_valid_after_utc for c in self._path)

    # --- construction from a directory --------------------------------------------------------------

    @classmethod
    def load(cls, directory: Path, trust_domain: str, *, now: Clock = utc_now,
             max_ttl: timedelta = DEFAULT_MAX_TTL) -> CertificateAuthority:
        """A CA from a cacerts directory (plug-in intermediate, or one ``create_or_load`` wrote)."""
        key = _read_key(directory / CA_KEY)
        if (directory / ROOT_KEY).exists():
            _read_key(directory / ROOT_KEY)  # only its permissions matter here: the root key signs nothing now
        certificate = _read_certificates(directory / CA_CERT)[0]
        chain = _read_certificates(directory / CERT_CHAIN)
        chain = chain[1:] if chain[0] == certificate else chain
        roots = _read_certificates(directory / ROOT_CERT)
        return cls(trust_domain, key, certificate, chain, roots, now=now, max_ttl=max_ttl)

    @classmethod
    def create_or_load(cls, directory: Path, trust_domain: str, *, now: Clock = utc_now,
                       max_ttl: timedelta = DEFAULT_MAX_TTL) -> CertificateAuthority:
        """Load the CA in ``directory``; if there is none yet, create a self-signed one there first.

        A directory holding only some of the files is an error (``UNREADABLE``), never silently replaced:
        a new root would break trust with every proxy that has the old one.
        """
        if not any((directory / name).exists() for name in (*LAYOUT, ROOT_KEY)):
            try:
                _create(directory, pki.validate_trust_domain(trust_domain), _checked_now(now))
            except OSError as error:
                fail(CAErrorKind.UNWRITABLE, f"cannot create a CA in {directory}: {error.strerror}; check that the "
                                             "state directory is writable by this user")
        return cls.load(directory, trust_domain, now=now, max_ttl=max_ttl)

    def with_additional_roots(self, roots: Iterable[x509.Certificate]) -> CertificateAuthority:
        """The same issuer, also trusting ``roots`` (root rotation: old and new roots both trusted)."""
        extra = list(roots)
        for root in extra:
            if not pki.is_ca(root):
                fail(CAErrorKind.NOT_A_CA, f"{pki.describe(root)} cannot be a trusted root: it is not a CA")
        return CertificateAuthority(self._trust_domain, self._key, self._certificate, self._path[1:],
                                    [*self._roots, *extra], now=self._now, max_ttl=self._max_ttl)

    # --- what the CA is -----------------------------------------------------------------------------

    @property
    def trust_domain(self) -> str:
        return self._trust_domain

    @property
    def max_ttl(self) -> timedelta:
        return self._max_ttl

    @property
    def issuing_certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def root_certificates(self) -> tuple[x509.Certificate, ...]:
        return self._roots

    @property
    def expires_at(self) -> datetime:
        """The earliest expiry on the issuing path: export it as a metric and alarm on it (istio#14516)."""
        return self._expires_at

    def trust_bundle_pem(self) -> bytes:
        """Every root to trust, PEM, in order (Envoy's ``validation_context.trusted_ca``)."""
        return pki.pem_all(self._roots)

    def __repr__(self) -> str:
        return (f"CertificateAuthority(trust_domain={self._trust_domain!r}, "
                f"issuer={self._certificate.subject.rfc4514_string()!r}, expires_at={self._expires_at.isoformat()})")

    # --- issuing ------------------------------------------------------------------------------------

    def issue(self, spiffe_id: str, public_key: CertificatePublicKeyTypes, ttl: timedelta) -> IssuedCertificate:
        """A workload certificate for ``spiffe_id`` (a URI SAN in this trust domain) and ``public_key``."""
        identity = self._own_id(spiffe_id)
        return self._issue(pki.workload_profile(identity), public_key, ttl, str(identity))

    def issue_for(self, spiffe_id: str, ttl: timedelta) -> tuple[IssuedCertificate, PrivateKey]:
        """Like ``issue``, with a new ECDSA P-256 key generated here."""
        key = PrivateKey.generate()
        return self.issue(spiffe_id, key.public_key(), ttl), key

    def issue_xds_client(self, node_id: str, ttl: timedelta) -> tuple[IssuedCertificate, PrivateKey]:
        """A proxy's client certificate for the xDS stream, URI SAN ``spiffe://<td>/xds/node/<node id>``."""
        identity = parse_spiffe_id(spiffe_id_for_xds_node(self._trust_domain, node_id))
        key = PrivateKey.generate()
        return self._issue(pki.xds_client_profile(identity), key.public_key(), ttl, str(identity)), key

    def issue_server(self, dns_names: Sequence[str],
                     ip_addresses: Sequence[str | pki.IPAddress],
                     ttl: timedelta) -> tuple[IssuedCertificate, PrivateKey]:
        """A serving certificate (xDS server, webhook) for DNS names and IP addresses, with a new key."""
        profile = pki.server_profile([pki.dns_name(n) for n in dns_names], [pki.ip_address(a) for a in ip_addresses])
        key = PrivateKey.generate()
        return self._issue(profile, key.public_key(), ttl, None), key

    def _own_id(self, spiffe_id: str) -> pki.SpiffeId:
        identity = parse_spiffe_id(spiffe_id)
        if identity.trust_domain != self._trust_domain:
            fail(CAErrorKind.WRONG_TRUST_DOMAIN, f"{spiffe_id!r} is not in this CA's trust domain "
                                                 f"{self._trust_domain!r}: ask the CA of that mesh")
        return identity

    def _issue(self, profile: pki.LeafProfile, public_key: CertificatePublicKeyTypes, ttl: timedelta,
               identity: str | None) -> IssuedCertificate:
        """Istio's ``sign()`` order: key acceptable → validity resolved and capped → build and sign."""
        pki.check_public_key(public_key)
        now = self._clock()
        not_before, not_after = self._validity(now, ttl)
        leaf = pki.build_leaf(profile, public_key, self._certificate, self._key, not_before=not_before,
                              not_after=not_after)
        leaf_pem = pki.pem(leaf)
        return IssuedCertificate(leaf_pem, leaf_pem + self._chain_pem, leaf.serial_number,
                                 leaf.not_valid_before_utc, leaf.not_valid_after_utc, identity, now)

    def _validity(self, now: datetime, ttl: timedelta) -> tuple[datetime, datetime]:
        """Backdated for clock skew; capped by ``max_ttl`` and by the chain's earliest expiry."""
        if ttl <= timedelta(0):
            fail(CAErrorKind.BAD_TTL, f"ttl must be positive, not {ttl}")
        if now >= self._expires_at:
            fail(CAErrorKind.EXPIRED, f"the CA's chain expired at {self._expires_at.isoformat()}: install a "
                                      "current intermediate (same root) and restart")
        not_before = max(now - pki.CLOCK_SKEW, self._certificate.not_valid_before_utc)
        return not_before, min(now + ttl, now + self._max_ttl, self._expires_at)

    def _clock(self) -> datetime:
        return _checked_now(self._now)


def _checked_now(now: Clock) -> datetime:
    """The clock's time, which must be timezone-aware: a naive time would shift validity by the UTC offset."""
    when = now()
    if when.tzinfo is None:
        raise ValueError("the CA's clock must return timezone-aware datetimes (e.g. datetime.now(UTC))")
    return when.astimezone(UTC)


def _unique(certificates: list[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    return tuple(c for i, c in enumerate(certificates) if c not in certificates[:i])


# --- files --------------------------------------------------------------------------------------------


def _read_key(path: Path) -> PrivateKey:
    """Read a key, refusing it if group or others may touch it (checked on the open file, no race)."""
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode & 0o777
            data = SecretBytes(handle.read())
    except OSError as error:
        fail(CAErrorKind.UNREADABLE, f"cannot read {path}: {error.strerror}; {_LAYOUT_HINT}")
    if mode & 0o077:
        fail(CAErrorKind.INSECURE_PERMISSIONS, f"{path} has mode {mode:04o}, so other users may read the CA key: "
                                               f"run `chmod 600 {path}` (in Kubernetes, mount the secret with "
                                               "defaultMode 0400) and start again")
    try:
        return PrivateKey.from_pem(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        fail(CAErrorKind.UNREADABLE, f"{path} is not an unencrypted PEM private key (EC or RSA)")


def _read_certificates(path: Path) -> list[x509.Certificate]:
    try:
        data = path.read_bytes()
    except OSError as error:
        fail(CAErrorKind.UNREADABLE, f"cannot read {path}: {error.strerror}; {_LAYOUT_HINT}")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        fail(CAErrorKind.UNREADABLE, f"{path} holds no PEM certificate")


_LAYOUT_HINT = (f"a CA directory holds {', '.join(LAYOUT)} (and {ROOT_KEY} if self-signed); to start a new "
                "self-signed CA instead, remove the directory (every proxy then needs new certificates)")


def _create(directory: Path, trust_domain: str, now: datetime) -> None:
    """Write a new self-signed CA into a temporary directory, then rename it into place (atomic).

    If another process created the CA first, the rename fails and its CA is the one loaded.
    """
    directory.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))  # mode 0700
    try:
        _write_self_signed(staging, trust_domain, now)
        os.chmod(staging, DIR_MODE)
        try:
            os.rename(staging, directory)  # replaces an empty directory, never a full one
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_self_signed(directory: Path, trust_domain: str, now: datetime) -> None:
    root_key, key = PrivateKey.generate(), PrivateKey.generate()
    root = pki.build_root(root_key, trust_domain, now)
    intermediate = pki.build_intermediate(key, root, root_key, trust_domain, now=now)
    _write(directory / ROOT_KEY, root_key.pem().reveal(), KEY_MODE)
    _write(directory / CA_KEY, key.pem().reveal(), KEY_MODE)
    _write(directory / ROOT_CERT, pki.pem(root), CERT_MODE)
    _write(directory / CA_CERT, pki.pem(intermediate), CERT_MODE)
    _write(directory / CERT_CHAIN, pki.pem_all([intermediate, root]), CERT_MODE)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with exactly ``mode`` (whatever the umask), refusing an existing file or symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
