"""Small pure builders of single Envoy messages, after Contour's ``internal/envoy/v3``.

Contract: every ``build_*`` function returns a *new* message built only from its arguments; none
reads the IR or decides policy (which route, which port, which name: that is ``translate``). Names
come in as arguments, already made by :mod:`meshplane.xds.names`. Typed extension configs are packed
with :func:`pack`, which serialises deterministically so equal inputs give equal bytes.

Import rule for Envoy modules (one alias per module, everywhere): ``<package path>/<file>_pb2`` is
imported as ``<file>_v3`` (``envoy.config.cluster.v3.cluster_pb2`` → ``cluster_v3``), except
``http_connection_manager_pb2``, which is ``hcm_v3``. xds-protos ships no type stubs, so messages are
``Any`` to mypy; the names of parameters and functions carry the types instead.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from http import HTTPStatus
from typing import Any

from envoy.config.accesslog.v3 import accesslog_pb2 as accesslog_v3
from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.core.v3 import address_pb2 as address_v3
from envoy.config.core.v3 import base_pb2 as base_v3
from envoy.config.core.v3 import config_source_pb2 as config_source_v3
from envoy.config.core.v3 import extension_pb2 as core_extension_v3
from envoy.config.core.v3 import protocol_pb2 as protocol_v3
from envoy.config.core.v3 import substitution_format_string_pb2 as substitution_format_string_v3
from envoy.config.endpoint.v3 import endpoint_components_pb2 as endpoint_components_v3
from envoy.config.endpoint.v3 import endpoint_pb2 as endpoint_v3
from envoy.config.listener.v3 import listener_components_pb2 as listener_components_v3
from envoy.config.listener.v3 import listener_pb2 as listener_v3
from envoy.config.rbac.v3 import rbac_pb2 as rbac_v3
from envoy.config.route.v3 import route_components_pb2 as route_components_v3
from envoy.config.route.v3 import route_pb2 as route_v3
from envoy.extensions.access_loggers.stream.v3 import stream_pb2 as stream_v3
from envoy.extensions.clusters.dynamic_forward_proxy.v3 import cluster_pb2 as dfp_cluster_v3
from envoy.extensions.common.dynamic_forward_proxy.v3 import dns_cache_pb2 as dns_cache_v3
from envoy.extensions.filters.http.dynamic_forward_proxy.v3 import dynamic_forward_proxy_pb2 as dfp_http_v3
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_http_v3
from envoy.extensions.filters.http.router.v3 import router_pb2 as router_v3
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2 as original_dst_v3
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2 as tls_inspector_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_v3
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as rbac_network_v3
from envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3 import sni_dynamic_forward_proxy_pb2 as sni_dfp_v3
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2 as tcp_proxy_v3
from envoy.extensions.network.dns_resolver.cares.v3 import cares_dns_resolver_pb2 as cares_v3
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as common_v3
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2 as secret_v3
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2 as tls_v3
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as http_protocol_options_v3
from envoy.type.matcher.v3 import regex_pb2 as regex_v3
from envoy.type.matcher.v3 import string_pb2 as string_v3
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2

# Envoy's well-known extension names.
HCM_FILTER = "envoy.filters.network.http_connection_manager"
TCP_PROXY_FILTER = "envoy.filters.network.tcp_proxy"
ROUTER_FILTER = "envoy.filters.http.router"
RBAC_HTTP_FILTER = "envoy.filters.http.rbac"
RBAC_NETWORK_FILTER = "envoy.filters.network.rbac"
DFP_HTTP_FILTER = "envoy.filters.http.dynamic_forward_proxy"
SNI_DFP_FILTER = "envoy.filters.network.sni_dynamic_forward_proxy"
DFP_CLUSTER = "envoy.clusters.dynamic_forward_proxy"
CARES_RESOLVER = "envoy.network.dns_resolver.cares"
TLS_INSPECTOR_FILTER = "envoy.filters.listener.tls_inspector"
ORIGINAL_DST_FILTER = "envoy.filters.listener.original_dst"
STDOUT_ACCESS_LOG = "envoy.access_loggers.stdout"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"

# Transport protocols the TLS inspector reports, for ``filter_chain_match.transport_protocol``.
TLS_PROTOCOL = "tls"
PLAINTEXT_PROTOCOL = "raw_buffer"  # also what a connection that never sent a byte counts as

CONNECT_TIMEOUT_MS = 5_000
"""How long an upstream connection may take: long enough for a loaded host, short enough to retry."""

GRPC_CONTENT_TYPE = "application/grpc"
"""A prefix: gRPC requests carry ``application/grpc`` or ``application/grpc+<codec>`` (spec §3.4)."""

_BODIES = {
    HTTPStatus.FORBIDDEN: "denied by the virtual service's default routing policy",
    HTTPStatus.NOT_FOUND: "no virtual service of the mesh answers this host",
    HTTPStatus.SERVICE_UNAVAILABLE: "no virtual deployment can take this request",
}


class Upstream(enum.Enum):
    """What a cluster speaks to its endpoints."""

    TCP = "tcp"  # bytes: no HTTP protocol options
    HTTP1 = "http1"
    HTTP2 = "http2"  # HTTP/2 and gRPC ports (h2c)


Weights = Sequence[tuple[str, int]]
"""(cluster name, relative weight > 0) pairs, in the order the user wrote them."""

# ----------------------------------------------------------------------------------------- common


def pack(message: Any) -> any_pb2.Any:
    """``message`` wrapped in an ``Any``, serialised deterministically (stable bytes, stable hashes)."""
    packed = any_pb2.Any()
    packed.Pack(message, deterministic=True)
    return packed


def build_duration(ms: int) -> duration_pb2.Duration:
    """A Duration of ``ms`` milliseconds; Envoy reads a zero timeout as "disabled"."""
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def build_address(host: str, port: int) -> Any:
    return address_v3.Address(socket_address=address_v3.SocketAddress(address=host, port_value=port))


def build_ads_config_source() -> Any:
    """"Fetch it on the ADS stream": how clusters find their endpoints and listeners their routes."""
    return config_source_v3.ConfigSource(ads=config_source_v3.AggregatedConfigSource(),
                                         resource_api_version=config_source_v3.ApiVersion.V3)


# --------------------------------------------------------------------------------------- clusters


def build_protocol_options(upstream: Upstream) -> dict[str, any_pb2.Any]:
    """``typed_extension_protocol_options`` choosing the upstream HTTP version; none for TCP.

    Set explicitly rather than left to defaults so that a gRPC upstream never gets HTTP/1.1 (the old
    per-cluster ``http2_protocol_options`` is deprecated; envoy-notes trap 1).
    """
    if upstream is Upstream.TCP:
        return {}
    if upstream is Upstream.HTTP2:
        explicit = http_protocol_options_v3.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_v3.Http2ProtocolOptions())
    else:
        explicit = http_protocol_options_v3.HttpProtocolOptions.ExplicitHttpConfig(
            http_protocol_options=protocol_v3.Http1ProtocolOptions())
    return {HTTP_PROTOCOL_OPTIONS: pack(http_protocol_options_v3.HttpProtocolOptions(explicit_http_config=explicit))}


def build_eds_cluster(name: str, *, upstream: Upstream, transport_socket: Any = None, stat_name: str = "") -> Any:
    """A cluster whose endpoints arrive over ADS as the ClusterLoadAssignment ``name``.

    ``transport_socket`` (from :func:`build_upstream_tls`) makes it originate TLS; None is plaintext.
    ``stat_name`` replaces the name in the cluster's stats (``alt_stat_name``) when given.
    """
    eds = cluster_v3.Cluster.EdsClusterConfig(eds_config=build_ads_config_source(), service_name=name)
    cluster = cluster_v3.Cluster(
        name=name, type=cluster_v3.Cluster.EDS, eds_cluster_config=eds,
        connect_timeout=build_duration(CONNECT_TIMEOUT_MS), lb_policy=cluster_v3.Cluster.ROUND_ROBIN,
        typed_extension_protocol_options=build_protocol_options(upstream), alt_stat_name=stat_name)
    if transport_socket is not None:
        cluster.transport_socket.CopyFrom(transport_socket)
    return cluster


def build_static_cluster(name: str, host: str, port: int, *, upstream: Upstream) -> Any:
    """A cluster with one fixed endpoint (the application behind an inbound listener)."""
    return cluster_v3.Cluster(
        name=name, type=cluster_v3.Cluster.STATIC, connect_timeout=build_duration(CONNECT_TIMEOUT_MS),
        lb_policy=cluster_v3.Cluster.ROUND_ROBIN, load_assignment=build_load_assignment(name, (host,), port),
        typed_extension_protocol_options=build_protocol_options(upstream))


def build_load_assignment(name: str, hosts: Iterable[str], port: int) -> Any:
    """The endpoints of a cluster; with no hosts, an empty assignment (the cluster warms at once)."""
    endpoints = [endpoint_components_v3.LbEndpoint(endpoint=endpoint_components_v3.Endpoint(
        address=build_address(host, port))) for host in hosts]
    localities = [endpoint_components_v3.LocalityLbEndpoints(lb_endpoints=endpoints)] if endpoints else []
    return endpoint_v3.ClusterLoadAssignment(cluster_name=name, endpoints=localities)


# -------------------------------------------------------------------------------------------- TLS


def build_sds_secret_config(name: str) -> Any:
    """A reference to the secret ``name``, fetched on the ADS stream (the control plane issues it)."""
    return secret_v3.SdsSecretConfig(name=name, sds_config=build_ads_config_source())


def build_uri_san_matcher(*, exact: str = "", prefix: str = "") -> Any:
    """A rule on the peer certificate's URI SAN (its SPIFFE ID): equal to ``exact``, else starting with ``prefix``.

    Typed (``san_type: URI``) so a DNS or e-mail SAN spelling the same text never matches.
    """
    matcher = string_v3.StringMatcher(exact=exact) if exact else string_v3.StringMatcher(prefix=prefix)
    return common_v3.SubjectAltNameMatcher(san_type=common_v3.SubjectAltNameMatcher.URI, matcher=matcher)


def build_common_tls_context(certificate: str, trust_bundle: str, peer: Any) -> Any:
    """Present the secret ``certificate``; accept a peer chaining to ``trust_bundle`` whose SAN ``peer`` matches.

    A combined validation context keeps the two halves apart: SDS supplies the roots (they rotate with
    the CA, and are the same for every proxy of the mesh), the SAN rule comes with the configuration
    (it depends on who is called, not on the CA). Envoy merges them.
    """
    validation = tls_v3.CommonTlsContext.CombinedCertificateValidationContext(
        default_validation_context=common_v3.CertificateValidationContext(match_typed_subject_alt_names=[peer]),
        validation_context_sds_secret_config=build_sds_secret_config(trust_bundle))
    return tls_v3.CommonTlsContext(tls_certificate_sds_secret_configs=[build_sds_secret_config(certificate)],
                                   combined_validation_context=validation)


def build_downstream_tls(common: Any) -> Any:
    """The server side of mutual TLS: a transport socket that refuses a client without a valid certificate."""
    context = tls_v3.DownstreamTlsContext(common_tls_context=common,
                                          require_client_certificate=wrappers_pb2.BoolValue(value=True))
    return base_v3.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(context))


def build_upstream_tls(common: Any) -> Any:
    """The client side of mutual TLS. No SNI: the peer is proven by its certificate's SAN, not by a name."""
    context = tls_v3.UpstreamTlsContext(common_tls_context=common)
    return base_v3.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(context))


# ------------------------------------------------------------------------------------------ routes


def build_route_configuration(name: str, virtual_hosts: Iterable[Any]) -> Any:
    """Route configuration; clusters are not validated when it loads (see below).

    ``validate_clusters`` is false so a route naming a cluster Envoy does not have (yet) answers 503
    at request time instead of making Envoy reject the whole configuration for every host.
    """
    return route_v3.RouteConfiguration(name=name, virtual_hosts=list(virtual_hosts),
                                       validate_clusters=wrappers_pb2.BoolValue(value=False))


def build_virtual_host(name: str, domains: Iterable[str], routes: Iterable[Any]) -> Any:
    return route_components_v3.VirtualHost(name=name, domains=list(domains), routes=list(routes))


def build_route_match(prefix: str, *, grpc: bool) -> Any:
    """A path-prefix match; for gRPC rules also a ``content-type`` prefix match on ``application/grpc``."""
    match = route_components_v3.RouteMatch(prefix=prefix)
    if grpc:
        match.headers.append(route_components_v3.HeaderMatcher(
            name="content-type", string_match=string_v3.StringMatcher(prefix=GRPC_CONTENT_TYPE)))
    return match


def build_path_match(path: str, *, grpc: bool) -> Any:
    """An exact-path match (and, for gRPC rules, the ``content-type`` match of :func:`build_route_match`)."""
    match = build_route_match("/", grpc=grpc)
    match.ClearField("prefix")
    match.path = path
    return match


def build_route_action(weights: Weights, *, timeout_ms: int, idle_timeout_ms: int | None = None) -> Any:
    """Forward to one cluster, or split over several by weight; a zero timeout disables it.

    ``idle_timeout_ms`` None sets no route idle timeout, so the connection manager's stream idle
    timeout (Envoy's default, 5 min) still applies; a value replaces it for this route.
    """
    action = route_components_v3.RouteAction(timeout=build_duration(timeout_ms))
    if len(weights) == 1:
        action.cluster = weights[0][0]
    else:
        action.weighted_clusters.CopyFrom(build_weighted_clusters(weights))
    if idle_timeout_ms is not None:
        action.idle_timeout.CopyFrom(build_duration(idle_timeout_ms))
    return action


def build_weighted_clusters(weights: Weights) -> Any:
    """Relative weights (``total_weight`` is deprecated); the caller guarantees every weight is > 0."""
    return route_components_v3.WeightedCluster(clusters=[
        route_components_v3.WeightedCluster.ClusterWeight(name=name, weight=wrappers_pb2.UInt32Value(value=weight))
        for name, weight in weights])


def build_forward_route(name: str, match: Any, action: Any) -> Any:
    return route_components_v3.Route(name=name, match=match, route=action)


def build_direct_response_route(name: str, match: Any, status: int, body: str | None = None) -> Any:
    """A route that answers ``status`` itself, with a one-line body saying why (``body``, else a default)."""
    body = body or _BODIES.get(HTTPStatus(status), HTTPStatus(status).phrase)
    response = route_components_v3.DirectResponseAction(status=status, body=base_v3.DataSource(inline_string=body))
    return route_components_v3.Route(name=name, match=match, direct_response=response)


# ----------------------------------------------------------------------------------------- filters


def build_stdout_access_log(fields: Mapping[str, str]) -> Any:
    """An access log writing one JSON object per request or connection to Envoy's stdout.

    ``fields`` map keys to Envoy command operators (``%RESPONSE_CODE%``) or literal strings; a value that
    is a single operator keeps its type (numbers stay numbers).
    """
    layout = struct_pb2.Struct()
    layout.update(dict(fields))
    text = substitution_format_string_v3.SubstitutionFormatString(json_format=layout)
    return accesslog_v3.AccessLog(name=STDOUT_ACCESS_LOG, typed_config=pack(stream_v3.StdoutAccessLog(log_format=text)))


def build_http_connection_manager(stat_prefix: str, *, rds: str | None = None, route_config: Any = None,
                                  http_filters: Iterable[Any] = (), access_log: Iterable[Any] = ()) -> Any:
    """An HTTP connection manager filter (codec AUTO: HTTP/1.1 or h2c by the client's preface).

    Routes come over RDS (``rds`` names the route configuration) or inline (``route_config``).
    ``http_filters`` run in order before the router; ``access_log`` (:func:`build_stdout_access_log`)
    records every request.
    """
    router = hcm_v3.HttpFilter(name=ROUTER_FILTER, typed_config=pack(router_v3.Router()))
    manager = hcm_v3.HttpConnectionManager(
        codec_type=hcm_v3.HttpConnectionManager.AUTO, stat_prefix=stat_prefix,
        http_filters=[*http_filters, router], access_log=list(access_log))
    if rds is not None:
        manager.rds.CopyFrom(hcm_v3.Rds(config_source=build_ads_config_source(), route_config_name=rds))
    else:
        manager.route_config.CopyFrom(route_config)
    return listener_components_v3.Filter(name=HCM_FILTER, typed_config=pack(manager))


def build_tcp_proxy(stat_prefix: str, weights: Weights, *, idle_timeout_ms: int | None = None,
                    access_log: Iterable[Any] = ()) -> Any:
    """A TCP proxy filter to one cluster, or split over several by weight (per connection); ``access_log``
    records every connection when it closes."""
    proxy = tcp_proxy_v3.TcpProxy(stat_prefix=stat_prefix, access_log=list(access_log))
    if len(weights) == 1:
        proxy.cluster = weights[0][0]
    else:
        proxy.weighted_clusters.CopyFrom(tcp_proxy_v3.TcpProxy.WeightedCluster(clusters=[
            tcp_proxy_v3.TcpProxy.WeightedCluster.ClusterWeight(name=name, weight=weight) for name, weight in weights]))
    if idle_timeout_ms is not None:
        proxy.idle_timeout.CopyFrom(build_duration(idle_timeout_ms))
    return listener_components_v3.Filter(name=TCP_PROXY_FILTER, typed_config=pack(proxy))


def build_tls_inspector() -> Any:
    """The listener filter that tells TLS from plaintext and reads a ClientHello's SNI.

    It feeds ``filter_chain_match``: ``server_names`` (TLS passthrough routing) and
    ``transport_protocol`` (a PERMISSIVE port's mutual TLS and plaintext chains).
    """
    return listener_components_v3.ListenerFilter(name=TLS_INSPECTOR_FILTER,
                                                 typed_config=pack(tls_inspector_v3.TlsInspector()))


# --------------------------------------------------------------------------------------- listeners


def build_filter_chain(filters: Iterable[Any], *, name: str = "", server_names: Sequence[str] = (),
                       transport_protocol: str = "", transport_socket: Any = None, destination_port: int | None = None,
                       prefix_ranges: Sequence[str] = ()) -> Any:
    """A filter chain, matched by SNI (``server_names``), ``transport_protocol``, the original destination's
    port and network (``destination_port``, ``prefix_ranges`` as CIDRs: transparent capture) when given.

    ``transport_socket`` (from :func:`build_downstream_tls`) terminates TLS; None is plaintext.
    """
    chain = listener_components_v3.FilterChain(name=name, filters=list(filters))
    if server_names or transport_protocol or destination_port is not None or prefix_ranges:
        match = listener_components_v3.FilterChainMatch(server_names=list(server_names),
                                                        transport_protocol=transport_protocol,
                                                        prefix_ranges=[build_cidr(c) for c in prefix_ranges])
        if destination_port is not None:
            match.destination_port.value = destination_port
        chain.filter_chain_match.CopyFrom(match)
    if transport_socket is not None:
        chain.transport_socket.CopyFrom(transport_socket)
    return chain


def build_cidr(cidr: str) -> Any:
    """A CidrRange from ``a.b.c.d/n`` (a bare address is a host: /32, or /128 for IPv6)."""
    address, _, length = cidr.partition("/")
    bits = int(length) if length else (128 if ":" in address else 32)
    return address_v3.CidrRange(address_prefix=address, prefix_len=wrappers_pb2.UInt32Value(value=bits))


def build_original_dst_filter() -> Any:
    """The listener filter that restores a redirected connection's original destination (transparent capture),
    so filter chains can match its port and address."""
    return listener_components_v3.ListenerFilter(name=ORIGINAL_DST_FILTER,
                                                 typed_config=pack(original_dst_v3.OriginalDst()))


def build_original_dst_cluster(name: str) -> Any:
    """A cluster that connects to wherever the downstream connection was going (allowed TCP egress)."""
    return cluster_v3.Cluster(name=name, type=cluster_v3.Cluster.ORIGINAL_DST,
                              connect_timeout=build_duration(CONNECT_TIMEOUT_MS),
                              lb_policy=cluster_v3.Cluster.CLUSTER_PROVIDED)


def build_listener(name: str, host: str, port: int, filter_chains: Iterable[Any], *, inbound: bool,
                   listener_filters: Iterable[Any] = (), continue_on_filter_timeout: bool = False) -> Any:
    """A listener bound to ``host:port``; the direction labels its stats and config dumps.

    ``continue_on_filter_timeout``: when the listener filters give up (Envoy's default 15 s without a
    byte from the client), pick a filter chain anyway instead of closing the connection.
    """
    direction = base_v3.TrafficDirection.INBOUND if inbound else base_v3.TrafficDirection.OUTBOUND
    return listener_v3.Listener(name=name, address=build_address(host, port),
                                filter_chains=list(filter_chains), listener_filters=list(listener_filters),
                                traffic_direction=direction,
                                continue_on_listener_filters_timeout=continue_on_filter_timeout)


# ------------------------------------------------------------------------------- access control


def build_identity_principal(*, exact: str = "", regex: str = "") -> Any:
    """A caller proven by mutual TLS whose certificate's principal (URI SAN first) is ``exact`` or matches ``regex``.

    A connection without a client certificate (plaintext) never matches.
    """
    matcher = (string_v3.StringMatcher(exact=exact) if exact
               else string_v3.StringMatcher(safe_regex=regex_v3.RegexMatcher(regex=regex)))
    return rbac_v3.Principal(authenticated=rbac_v3.Principal.Authenticated(principal_name=matcher))


def build_address_principal(address: str) -> Any:
    """A caller whose connection comes directly from ``address`` (an IPv4 or IPv6 host address)."""
    return rbac_v3.Principal(direct_remote_ip=build_cidr(address))


def _allow_rules(principals: Sequence[Any]) -> Any:
    """ALLOW rules with one policy admitting ``principals`` to anything; with none, every request is denied."""
    rules = rbac_v3.RBAC(action=rbac_v3.RBAC.ALLOW)
    if principals:
        rules.policies["callers"].CopyFrom(rbac_v3.Policy(permissions=[rbac_v3.Permission(any=True)],
                                                          principals=list(principals)))
    return rules


def build_rbac_http_filter(principals: Sequence[Any]) -> Any:
    """An HTTP filter answering 403 to every request whose caller no principal admits."""
    config = rbac_http_v3.RBAC(rules=_allow_rules(principals))
    return hcm_v3.HttpFilter(name=RBAC_HTTP_FILTER, typed_config=pack(config))


def build_rbac_network_filter(stat_prefix: str, principals: Sequence[Any]) -> Any:
    """A network filter closing every connection whose caller no principal admits."""
    config = rbac_network_v3.RBAC(stat_prefix=stat_prefix, rules=_allow_rules(principals))
    return listener_components_v3.Filter(name=RBAC_NETWORK_FILTER, typed_config=pack(config))


# -------------------------------------------------------------------------------------- egress


def build_dns_cache(name: str, resolvers: Sequence[tuple[str, int]]) -> Any:
    """The DNS cache shared by the dynamic forward proxy filters and clusters (IPv4 only).

    ``resolvers`` (host, port) replace the system's resolvers when given (standalone and tests).
    """
    cache = dns_cache_v3.DnsCacheConfig(name=name, dns_lookup_family=cluster_v3.Cluster.V4_ONLY)
    if resolvers:
        cares = cares_v3.CaresDnsResolverConfig(resolvers=[build_address(host, port) for host, port in resolvers])
        cache.typed_dns_resolver_config.CopyFrom(core_extension_v3.TypedExtensionConfig(
            name=CARES_RESOLVER, typed_config=pack(cares)))
    return cache


def build_forward_proxy_cluster(name: str, dns_cache: Any, *, upstream: Upstream) -> Any:
    """A cluster whose hosts are resolved on demand (from the Host header or the SNI) through ``dns_cache``.

    It never originates TLS (plain HTTP is forwarded as is, TLS passes through untouched), so Envoy's
    check that a forward proxy cluster verifies the SNI it sends does not apply: said explicitly with
    ``allow_insecure_cluster_options`` (without it Envoy rejects an HTTP one).
    """
    config = dfp_cluster_v3.ClusterConfig(dns_cache_config=dns_cache, allow_insecure_cluster_options=True)
    return cluster_v3.Cluster(
        name=name, connect_timeout=build_duration(CONNECT_TIMEOUT_MS), lb_policy=cluster_v3.Cluster.CLUSTER_PROVIDED,
        cluster_type=cluster_v3.Cluster.CustomClusterType(name=DFP_CLUSTER, typed_config=pack(config)),
        typed_extension_protocol_options=build_protocol_options(upstream))


def build_forward_proxy_http_filter(dns_cache: Any) -> Any:
    """The HTTP filter that resolves a request's Host before it is routed to a forward proxy cluster."""
    config = dfp_http_v3.FilterConfig(dns_cache_config=dns_cache)
    return hcm_v3.HttpFilter(name=DFP_HTTP_FILTER, typed_config=pack(config))


def build_sni_forward_proxy_filter(dns_cache: Any, port: int) -> Any:
    """The network filter that resolves a connection's SNI (to ``port``) for a forward proxy cluster."""
    config = sni_dfp_v3.FilterConfig(dns_cache_config=dns_cache, port_value=port)
    return listener_components_v3.Filter(name=SNI_DFP_FILTER, typed_config=pack(config))


def build_authority_match(regex: str) -> Any:
    """A route match on the ``:authority`` (Host) header against an RE2 ``regex``, any path."""
    header = route_components_v3.HeaderMatcher(
        name=":authority", string_match=string_v3.StringMatcher(safe_regex=regex_v3.RegexMatcher(regex=regex)))
    return route_components_v3.RouteMatch(prefix="/", headers=[header])


# ----------------------------------------------------------------------------------- gateway TLS


def build_gateway_tls(certificate: str, *, client_ca: str | None, client_names: Sequence[str],
                      require_client_certificate: bool) -> Any:
    """A gateway's server side of TLS: present the SDS secret ``certificate``; with ``client_ca``, check
    client certificates against it (and, given ``client_names``, their DNS or URI SANs); require one
    only when ``require_client_certificate`` (MUTUAL_TLS; PERMISSIVE checks what a client offers)."""
    common = tls_v3.CommonTlsContext(tls_certificate_sds_secret_configs=[build_sds_secret_config(certificate)],
                                     alpn_protocols=["h2", "http/1.1"])  # HTTP/2 (gRPC) over TLS, by ALPN
    if client_ca is not None:
        matchers = [common_v3.SubjectAltNameMatcher(san_type=san, matcher=string_v3.StringMatcher(exact=name))
                    for name in client_names
                    for san in (common_v3.SubjectAltNameMatcher.DNS, common_v3.SubjectAltNameMatcher.URI)]
        common.combined_validation_context.CopyFrom(tls_v3.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=common_v3.CertificateValidationContext(match_typed_subject_alt_names=matchers),
            validation_context_sds_secret_config=build_sds_secret_config(client_ca)))
    context = tls_v3.DownstreamTlsContext(common_tls_context=common,
                                          require_client_certificate=wrappers_pb2.BoolValue(
                                              value=require_client_certificate))
    return base_v3.TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(context))


def build_rewrites(action: Any, *, prefix: str | None, host: str | None) -> Any:
    """``action`` (a RouteAction, changed in place and returned) with the matched prefix replaced by
    ``prefix`` and the Host header by ``host``, where given."""
    if prefix is not None:
        action.prefix_rewrite = prefix
    if host is not None:
        action.host_rewrite_literal = host
    return action
