"""Proxies authenticate to the control plane: mutual TLS on ADS, and a node may only be itself.

The control plane has its own CA, apart from the meshes' (``<state-dir>/ca/xds``, trust domain
``xds.meshplane.local``). ``meshplane bootstrap`` issues each proxy an xDS client certificate whose
URI SAN names its node (``spiffe://xds.meshplane.local/xds/node/<node id>``), writes it with its key
(0600) under ``<state-dir>/proxies/<node id>/``, and records the virtual deployment it was issued for.
The ADS server then:

* requires TLS with a client certificate from that CA (no certificate, or one from another CA: the
  handshake fails and the proxy gets nothing at all);
* refuses a stream (PERMISSION_DENIED) whose node id is not the one its certificate names, or whose
  metadata claims another virtual deployment than the certificate was issued for — so a proxy can
  neither impersonate another one nor obtain another service's workload certificate.

xDS client certificates live for a year, because a bootstrap file is static; rotating them means
running ``meshplane bootstrap`` again (the injector issues them per pod in Kubernetes mode).
"""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path

import grpc

from meshplane.controlplane import ir
from meshplane.controlplane.sockets import is_ip as _is_ip
from meshplane.controlplane.state import write_atomic
from meshplane.injector.ca import CertificateAuthority, spiffe_id_for_xds_node
from meshplane.xds.bootstrap import XdsTls
from meshplane.xds.server import Peer, StreamRefusedError

TRUST_DOMAIN = "xds.meshplane.local"
LIFETIME = timedelta(days=365)


def authority(state_dir: Path) -> CertificateAuthority:
    """The control plane's own CA (created on first use, shared by ``serve`` and ``bootstrap``)."""
    return CertificateAuthority.create_or_load(state_dir / "ca" / "xds", TRUST_DOMAIN, max_ttl=LIFETIME)


def server_credentials(state_dir: Path, host: str) -> grpc.ServerCredentials:
    """TLS for the ADS server: a serving certificate for ``host``, and client certificates required."""
    ca = authority(state_dir)
    ips = [host] if _is_ip(host) else []
    dns = [] if ips else [host]
    issued, key = ca.issue_server(dns, [ipaddress.ip_address(ip) for ip in ips], LIFETIME)
    return grpc.ssl_server_credentials([(key.pem().reveal(), issued.chain_pem)],
                                       root_certificates=ca.trust_bundle_pem(), require_client_auth=True)


def issue_proxy(state_dir: Path, node_id: str, deployment: str, server: str, *,
                ca: CertificateAuthority | None = None) -> XdsTls:
    """A proxy's xDS client credentials, written under ``<state-dir>/proxies/<node id>/``.

    ``ca`` is :func:`authority` of ``state_dir``, loaded once by a caller that issues many (the
    injector); without it the CA is read from its files.
    """
    ca = ca or authority(state_dir)
    issued, key = ca.issue_xds_client(node_id, LIFETIME)
    folder = (state_dir / "proxies" / node_id).resolve()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_atomic(folder / "key.pem", key.pem().reveal(), 0o600)
    write_atomic(folder / "cert.pem", issued.chain_pem)
    write_atomic(folder / "ca.pem", ca.trust_bundle_pem())
    write_atomic(folder / "deployment", deployment.encode())
    return XdsTls(str(folder / "cert.pem"), str(folder / "key.pem"), str(folder / "ca.pem"), server)


def check_peer(peer: Peer | None, workload: ir.Workload, state_dir: Path) -> None:
    """Refuse a stream whose certificate does not name this node, or that claims another deployment."""
    expected = spiffe_id_for_xds_node(TRUST_DOMAIN, workload.node_id)
    presented = [v.decode() for v in (peer.auth.get("peer_spiffe_id", ()) if peer else ())]
    if presented != [expected]:
        who = presented[0] if presented else "no identity"
        raise StreamRefusedError(f"node {workload.node_id!r} connected with {who}; a proxy may only act as the node "
                                 "its xDS certificate names (run `meshplane bootstrap` for this node)")
    recorded = state_dir / "proxies" / workload.node_id / "deployment"
    issued_for = recorded.read_text() if recorded.is_file() else None
    if issued_for != claim(workload):
        what = (f"ingress gateway {workload.gateway}" if workload.gateway
                else f"virtual deployment {workload.deployment}")
        raise StreamRefusedError(f"node {workload.node_id!r} claims {what}, but its certificate was issued for "
                                 f"{issued_for or 'another one'}")


def claim(workload: ir.Workload) -> str:
    """What a proxy's credentials are issued for: its virtual deployment's key, or ``ingressgateway:<key>``."""
    return f"{GATEWAY_CLAIM}{workload.gateway}" if workload.gateway else workload.deployment


GATEWAY_CLAIM = "ingressgateway:"
