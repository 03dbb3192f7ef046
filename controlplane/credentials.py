"""Workload credentials: one CA per mesh, one key and certificate per proxy, renewed before expiry.

Every proxy gets its own ECDSA P-256 key and a certificate whose URI SAN is its virtual service's
SPIFFE identity (architecture §4), issued by its mesh's CA (created in ``--state-dir``, or a plug-in
intermediate placed there). Certificates are renewed at 2/3 of their lifetime with jitter (OCI's
rule): :meth:`Credentials.due` names the proxies whose certificate is due, and
:meth:`Credentials.next_renewal` says when the next one will be, so the control plane can wake up
then and push the new certificate over SDS. Keys stay in memory and in the proxy's own SDS secret;
they are never written to disk, logged, or shared between proxies.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from meshplane.injector.ca import CAError, CertificateAuthority, IssuedCertificate, PrivateKey, ca_directory

DEFAULT_TTL = timedelta(hours=24)
CA_FILES = ("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem")

log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Held:
    """A proxy's current credentials and when to renew them."""

    mesh_key: str
    identity: str
    issued: IssuedCertificate
    key: PrivateKey
    renew_at: datetime


class Credentials:
    """CAs by mesh, credentials by proxy; issue on first use, renew when due."""

    def __init__(self, state_dir: Path, *, ttl: timedelta = DEFAULT_TTL, now: Callable[[], datetime] = utc_now,
                 jitter: Callable[[], float] = lambda: random.uniform(-1.0, 1.0)) -> None:
        self.state_dir = state_dir
        self.ttl = ttl
        self.now = now
        self.jitter = jitter
        self._cas: dict[str, CertificateAuthority] = {}
        self._fingerprints: dict[str, object] = {}
        self._held: dict[str, Held] = {}
        self.issued_count = 0

    def authority(self, mesh_key: str, trust_domain: str) -> CertificateAuthority:
        """The mesh's CA: loaded from (or created in) ``<state-dir>/ca/<namespace>_<name>``."""
        if mesh_key not in self._cas:
            self._cas[mesh_key] = self._load(mesh_key, trust_domain)
            self._fingerprints[mesh_key] = _fingerprint(ca_directory(self.state_dir, mesh_key))
        return self._cas[mesh_key]

    def _load(self, mesh_key: str, trust_domain: str) -> CertificateAuthority:
        return CertificateAuthority.create_or_load(ca_directory(self.state_dir, mesh_key), trust_domain, now=self.now,
                                                   max_ttl=max(self.ttl, DEFAULT_TTL))

    def reload_changed(self) -> list[str]:
        """Reload mesh CAs whose files changed (a new intermediate, say); the proxies to re-issue.

        A changed CA is checked like a new one (key matches, chains to a root, valid now). If it fails
        — files caught halfway through being replaced, or a wrong key — the running CA stays in force
        and the change is tried again when the files change again. Once it loads, every proxy holding a
        certificate from that mesh gets a new one from the new issuer.
        """
        nodes: list[str] = []
        for mesh_key, current in list(self._cas.items()):
            fingerprint = _fingerprint(ca_directory(self.state_dir, mesh_key))
            if fingerprint == self._fingerprints.get(mesh_key):
                continue
            self._fingerprints[mesh_key] = fingerprint
            try:
                self._cas[mesh_key] = self._load(mesh_key, current.trust_domain)
            except CAError as exc:
                log.warning("mesh %s: the changed CA files are not usable yet, the running CA stays: %s", mesh_key, exc)
                continue
            log.info("mesh %s: CA reloaded; re-issuing its proxies' certificates", mesh_key)
            nodes += [node for node, held in self._held.items() if held.mesh_key == mesh_key]
            for node in nodes:
                self._held.pop(node, None)
        return nodes

    def for_proxy(self, node_id: str, mesh_key: str, trust_domain: str, identity: str) -> Held:
        """The proxy's credentials for ``identity``: the current ones, or new ones if due or changed."""
        held = self._held.get(node_id)
        if held is not None and held.identity == identity and self.now() < held.renew_at:
            return held
        issued, key = self.authority(mesh_key, trust_domain).issue_for(identity, self.ttl)
        held = Held(mesh_key, identity, issued, key, issued.renew_at(self.jitter()))
        self._held[node_id] = held
        self.issued_count += 1
        return held

    def earliest_expiry(self) -> datetime | None:
        """When the first held workload certificate expires (None while none is held)."""
        return min((held.issued.not_after for held in self._held.values()), default=None)

    def keep_only(self, node_ids: set[str]) -> None:
        """Drop the credentials of proxies that are gone: their keys do not stay in memory."""
        for node in [n for n in self._held if n not in node_ids]:
            del self._held[node]

    def due(self) -> list[str]:
        """Proxies whose certificate should be renewed now."""
        now = self.now()
        return [node for node, held in self._held.items() if held.renew_at <= now]

    def next_renewal(self) -> datetime | None:
        return min((held.renew_at for held in self._held.values()), default=None)


def _fingerprint(directory: Path) -> tuple[tuple[str, int, int], ...]:
    """What the CA files look like on disk (name, modification time, size): cheap change detection."""
    found = []
    for name in CA_FILES:
        path = directory / name
        if path.exists():
            stat = path.stat()
            found.append((name, stat.st_mtime_ns, stat.st_size))
    return tuple(found)
