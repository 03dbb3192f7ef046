"""Envoy bootstraps for meshplane proxies: a static xDS cluster, ADS for everything else.

A bootstrap is built as a real ``Bootstrap`` message (so a misspelt field fails here, not in Envoy)
and rendered as JSON-compatible data for a YAML file. It carries only what must be known before the
first xDS exchange: who the proxy is (node id, cluster, metadata naming its virtual deployment,
address, capture mode and application ports), where the control plane is, and the admin endpoint on
loopback. Listeners, routes, clusters and endpoints all come over one ADS stream — State of the
World or Delta (``delta=True``).

Every proxy serves Envoy's Prometheus stats on ``stats_host:stats_port`` (15006, architecture §5): a
static listener that forwards ``/stats/prometheus`` — and nothing else of the admin API — to the admin
endpoint on loopback. It needs a known admin port (none when ``admin_port`` is 0). Stats carry the
proxy's own ``stats_tags`` as fixed labels (cheap, unlike tag regexes; docs/observability.md).

In explicit capture every upstream connection leaves from the workload's own address
(``source_address``), as a pod's would: a receiving sidecar that cannot see a certificate (mTLS
DISABLED) tells its callers apart by that address.

Traps avoided (envoy-notes.md): ADS needs ``node.id`` and ``node.cluster``; the xDS cluster must speak
HTTP/2 through ``typed_extension_protocol_options``; every config source says ``V3``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, grpc_service_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, duration_pb2, json_format, struct_pb2

from meshplane.xds import messages, names

XDS_CLUSTER = "meshplane-xds"
STATS_PATH = "/stats/prometheus"
HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
V3 = config_source_pb2.ApiVersion.V3


@dataclass(frozen=True)
class XdsTls:
    """Files a proxy uses to reach the control plane over mutual TLS, and the name the server must show."""

    certificate_chain: str
    private_key: str
    trusted_ca: str
    server_name: str  # an IP address or DNS name in the control plane's serving certificate


@dataclass(frozen=True)
class BootstrapSpec:
    """Everything a proxy's bootstrap depends on."""

    node_id: str
    cluster: str
    metadata: Mapping[str, Any]
    xds_host: str
    xds_port: int
    admin_host: str = "127.0.0.1"
    admin_port: int = 15000
    delta: bool = False
    tls: XdsTls | None = None
    source_address: str | None = None  # explicit capture: the workload's address, for every upstream connection
    stats_host: str = "0.0.0.0"
    stats_port: int | None = None  # None: no stats listener
    stats_tags: tuple[tuple[str, str], ...] = ()  # (label, value) on every stat of this proxy


def build_bootstrap(spec: BootstrapSpec) -> bootstrap_pb2.Bootstrap:
    """The bootstrap message for one proxy."""
    boot = bootstrap_pb2.Bootstrap()
    boot.node.id = spec.node_id
    boot.node.cluster = spec.cluster
    boot.node.metadata.CopyFrom(_struct(spec.metadata))
    boot.admin.address.CopyFrom(_socket(spec.admin_host, spec.admin_port))
    ads = boot.dynamic_resources.ads_config
    api = config_source_pb2.ApiConfigSource
    ads.api_type = api.DELTA_GRPC if spec.delta else api.GRPC
    ads.transport_api_version = V3
    ads.set_node_on_first_message_only = True
    ads.grpc_services.append(grpc_service_pb2.GrpcService(
        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=XDS_CLUSTER)))
    for source in (boot.dynamic_resources.cds_config, boot.dynamic_resources.lds_config):
        source.ads.SetInParent()
        source.resource_api_version = V3
    cluster = _xds_cluster(spec.xds_host, spec.xds_port)
    if spec.tls is not None:
        cluster.transport_socket.CopyFrom(_xds_tls_socket(spec.tls))
    boot.static_resources.clusters.append(cluster)
    if spec.source_address is not None:
        bind = boot.cluster_manager.upstream_bind_config
        bind.source_address.CopyFrom(address_pb2.SocketAddress(address=spec.source_address, port_value=0))
    _add_stats(boot, spec)
    return boot


def _add_stats(boot: bootstrap_pb2.Bootstrap, spec: BootstrapSpec) -> None:
    """Fixed tags on every stat, and the listener serving them to Prometheus (when it can reach admin)."""
    config = boot.stats_config
    config.use_all_default_tags.value = True
    for tag, value in spec.stats_tags:
        config.stats_tags.add(tag_name=tag, fixed_value=value)
    if spec.stats_port is None or spec.admin_port == 0:
        return
    boot.static_resources.clusters.append(cluster_pb2.Cluster(
        name=names.ADMIN_CLUSTER, type=cluster_pb2.Cluster.STATIC, connect_timeout=duration_pb2.Duration(seconds=1),
        load_assignment=messages.build_load_assignment(names.ADMIN_CLUSTER, [spec.admin_host], spec.admin_port)))
    action = messages.build_route_action([(names.ADMIN_CLUSTER, 1)], timeout_ms=5_000)
    route = messages.build_forward_route("prometheus", messages.build_path_match(STATS_PATH, grpc=False), action)
    routes = messages.build_route_configuration(names.STATS_LISTENER, [
        messages.build_virtual_host(names.STATS_LISTENER, ["*"], [route])])
    manager = messages.build_http_connection_manager(names.STATS_LISTENER, route_config=routes)
    chain = messages.build_filter_chain([manager], name=names.STATS_LISTENER)
    boot.static_resources.listeners.append(messages.build_listener(
        names.STATS_LISTENER, spec.stats_host, spec.stats_port, [chain], inbound=True))


def _xds_tls_socket(tls: XdsTls) -> base_pb2.TransportSocket:
    """Mutual TLS to the control plane: our xDS client certificate, its CA, and the server's name."""
    context = tls_pb2.UpstreamTlsContext()
    common = context.common_tls_context
    common.tls_certificates.append(common_pb2.TlsCertificate(
        certificate_chain=base_pb2.DataSource(filename=tls.certificate_chain),
        private_key=base_pb2.DataSource(filename=tls.private_key)))
    validation = common.validation_context
    validation.trusted_ca.filename = tls.trusted_ca
    san = validation.match_typed_subject_alt_names.add()
    is_ip = all(part.isdigit() for part in tls.server_name.split(".")) or ":" in tls.server_name
    san.san_type = common_pb2.SubjectAltNameMatcher.IP_ADDRESS if is_ip else common_pb2.SubjectAltNameMatcher.DNS
    san.matcher.exact = tls.server_name
    packed = any_pb2.Any()
    packed.Pack(context)
    return base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=packed)


def render_bootstrap(spec: BootstrapSpec) -> dict[str, Any]:
    """The bootstrap as data for a YAML or JSON file (``envoy -c FILE``)."""
    text = json_format.MessageToJson(build_bootstrap(spec), preserving_proto_field_name=True)
    data: dict[str, Any] = json.loads(text)  # plain dicts (MessageToDict leaves OrderedDicts inside Any)
    return data


def _xds_cluster(host: str, port: int) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(name=XDS_CLUSTER, type=cluster_pb2.Cluster.STATIC,
                                  connect_timeout=duration_pb2.Duration(seconds=1))
    options = http_protocol_options_pb2.HttpProtocolOptions()
    options.explicit_http_config.http2_protocol_options.CopyFrom(protocol_pb2.Http2ProtocolOptions())
    packed = any_pb2.Any()
    packed.Pack(options)
    cluster.typed_extension_protocol_options[HTTP_OPTIONS].CopyFrom(packed)
    endpoint = endpoint_components_pb2.LbEndpoint()
    endpoint.endpoint.address.CopyFrom(_socket(host, port))
    cluster.load_assignment.CopyFrom(endpoint_pb2.ClusterLoadAssignment(
        cluster_name=XDS_CLUSTER, endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])]))
    return cluster


def _socket(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=port))


def _struct(values: Mapping[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(dict(values))
    return out
