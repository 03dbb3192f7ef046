"""Every name two parties must agree on: xDS resource names, type URLs and node-metadata keys.

Names are contracts. A route names a cluster, a cluster names its ClusterLoadAssignment, a listener
names its RDS route configuration; the producer and the consumer of each name both call the function
here, so they cannot drift apart (after Contour's ``ClusterLoadAssignmentName``). The bootstrap and the
ADS server read node metadata through the ``META_*`` keys.

Shapes (``|`` separates parts because it never appears in a key, a host or a port):

* ``inbound|<port>``: the listener, inline route configuration and STATIC cluster that carry traffic
  for one port of the proxy's own deployment to its application.
* ``outbound|http``: the HTTP listener on the outbound port and its RDS route configuration.
* ``outbound|tcp|<port>`` / ``outbound|tls|<port>``: outbound TCP and TLS-passthrough listeners.
* ``outbound|<port>|<namespace>/<deployment>``: the EDS cluster for one port of one virtual
  deployment, and its ClusterLoadAssignment (same name).
* ``<namespace>/<service>:<port>``: the virtual host of one HTTP port of one virtual service.
* ``outbound|other``: the catch-all virtual host (allowed external HTTP hosts, else 403).
* ``egress|http`` / ``egress|tls``: the forward-proxy clusters to allowed external services.
* ``workload``: the SDS secret holding a proxy's own certificate chain and key. Every proxy has exactly
  one, so the name need not say whose it is (Istio's ``default``); the certificate says.
* ``trust|<trust domain>``: the SDS secret holding the mesh's trust bundle (its root certificates,
  both of them while a root is being replaced), which validates peers.

Secret names never depend on the proxy, so resources that reference them — an outbound cluster
originating mutual TLS names the caller's certificate — are the same bytes for every caller and are
built and serialised once per build.

This module imports nothing from Envoy, and from the control plane only the IR's constants.
"""

from __future__ import annotations

from meshplane.controlplane import ir

# ------------------------------------------------------------------------------------ type URLs

_PREFIX = "type.googleapis.com/"
CLUSTER_TYPE = _PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER_TYPE = _PREFIX + "envoy.config.listener.v3.Listener"
ROUTE_TYPE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
SECRET_TYPE = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"

PUSH_ORDER = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, SECRET_TYPE)
"""The order in which xDS types are pushed (architecture §7): a resource only names ones before it."""

# --------------------------------------------------------------------------------- node metadata

META_DEPLOYMENT = "meshplane.deployment"  # the virtual deployment key the proxy serves (namespace/name)
META_ADDRESS = "meshplane.address"  # the workload's address: pod IP, or its own loopback in explicit mode
META_CAPTURE = "meshplane.capture"  # "explicit" or "transparent" (ir.Capture)
META_APP_PORTS = "meshplane.app_ports"  # explicit capture: {listener port: application port}
META_GATEWAY = "meshplane.gateway"  # an ingress gateway's proxy: the gateway's key (namespace/name)

# ----------------------------------------------------------------------------------------- ports

OUTBOUND_HTTP_PORT = 15001
"""Where applications send mesh HTTP traffic in explicit capture (the iptables target otherwise)."""

OUTBOUND_CAPTURE_PORT = 15001
"""Transparent capture: where iptables redirects the pod's outgoing TCP."""

INBOUND_CAPTURE_PORT = 15003
"""Transparent capture: where iptables redirects the pod's incoming TCP."""

SIDECAR_PORTS = ir.SIDECAR_PORTS
"""Ports the sidecar keeps for itself (architecture §5): never bound for a mesh listener."""

# ----------------------------------------------------------------------------------------- names

OUTBOUND_HTTP = "outbound|http"
"""The outbound HTTP listener and the route configuration it loads over RDS."""

OUTBOUND_OTHER = "outbound|other"
"""The last virtual host of ``outbound|http`` (domain ``*``): allowed external HTTP hosts, else 403."""

EGRESS_HTTP_CLUSTER = "egress|http"
"""The forward-proxy cluster reaching allowed external HTTP hosts (resolved from the Host header)."""

EGRESS_TLS_CLUSTER = "egress|tls"
"""The forward-proxy cluster reaching allowed external TLS hosts (resolved from the SNI, passed through)."""

EGRESS_TCP_CLUSTER = "egress|tcp"
"""Transparent capture: the original-destination cluster for allowed TCP egress (by address and port)."""

OUTBOUND_CAPTURE = "outbound|capture"
"""Transparent capture: the one outbound listener (15001), its chains chosen by original destination."""

INBOUND_CAPTURE = "inbound|capture"
"""Transparent capture: the one inbound listener (15003), a chain per deployment port."""

EGRESS_DNS_CACHE = "egress"
"""The DNS cache both egress clusters and their filters share (one name, one configuration)."""


def inbound(port: int) -> str:
    """The inbound listener, its inline route configuration and its cluster for one port."""
    return f"inbound|{port}"


def outbound_tcp_listener(port: int) -> str:
    return f"outbound|tcp|{port}"


def outbound_tls_listener(port: int) -> str:
    return f"outbound|tls|{port}"


def outbound_cluster(deployment: str, port: int) -> str:
    """The EDS cluster for one port of one virtual deployment (``deployment`` is its key)."""
    return f"outbound|{port}|{deployment}"


def parse_outbound_cluster(name: str) -> tuple[str, int] | None:
    """``(deployment, port)`` of an :func:`outbound_cluster` name; None for any other name."""
    kind, _, rest = name.partition("|")
    port, _, deployment = rest.partition("|")
    if kind != "outbound" or not port.isdigit() or not deployment:
        return None
    return deployment, int(port)


# ------------------------------------------------------------------------------------ stats names

STATS_PORT = 15006
"""Where every proxy serves Envoy's Prometheus stats (``/stats/prometheus`` only; architecture §5)."""

STATS_LISTENER = "stats|prometheus"
ADMIN_CLUSTER = "meshplane-admin"
"""The bootstrap's static cluster to Envoy's own admin endpoint, which the stats listener forwards to."""

TAG_PROXY_DEPLOYMENT = "proxy_deployment"
TAG_PROXY_GATEWAY = "proxy_gateway"
"""Fixed tags (Prometheus labels) on every stat of a sidecar or a gateway proxy: who reports it."""


def outbound_stat_name(service: str, deployment: str, port: int) -> str:
    """The ``alt_stat_name`` of an outbound cluster: ``outbound|<port>|<service key>|<deployment key>``.

    Envoy splits stat names at dots, so a dot in a key becomes ``_`` here (label values then show it so).
    Envoy's own ``envoy_cluster_name`` label carries it on every ``envoy_cluster_*`` series, and the scrape
    configuration in ``dashboards/`` splits it into ``destination_service`` and ``destination_deployment``.
    Not an Envoy tag regex: Envoy runs those (std::regex) on every stat of every cluster, which measured
    2.5 s per 1,000 clusters per label (docs/observability.md).
    """
    return f"outbound|{port}|{service.replace('.', '_')}|{deployment.replace('.', '_')}"


def load_assignment(cluster: str) -> str:
    """The ClusterLoadAssignment of an EDS cluster: its own name, which is also its ``service_name``."""
    return cluster


def virtual_host(service: str, port: int) -> str:
    """The virtual host serving one HTTP port of one virtual service (``service`` is its key)."""
    return f"{service}:{port}"


WORKLOAD_SECRET = "workload"
"""The SDS secret with the proxy's own certificate chain and key (what it holds is the proxy's identity)."""


def trust_bundle(trust_domain: str) -> str:
    """The SDS secret with the root certificate(s) that validate peers of ``trust_domain``."""
    return f"trust|{trust_domain}"


def gateway_listener(port: int) -> str:
    """An ingress gateway's listener on one port."""
    return f"gateway|{port}"


def gateway_routes(port: int, host: str | None) -> str:
    """The route configuration of one filter chain of a gateway port: one host's (TLS, chosen by SNI), or
    every plaintext host's (``host`` None)."""
    return f"gateway|{port}|{host if host is not None else '*plaintext'}"


def server_certificate(secret: str) -> str:
    """The SDS secret with a gateway's server certificate and key, from the Secret ``namespace/name``."""
    return f"tls|{secret}"


def client_ca(secret: str) -> str:
    """The SDS secret with the CA bundle a gateway checks client certificates against (``namespace/name``)."""
    return f"ca|{secret}"
