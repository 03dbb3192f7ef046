"""Invariants of translation, over hand-made and generated IR, and the real Envoy's verdict on it.

Golden files (tests/test_golden.py) show what each case translates to; these tests hold what must be
true of *every* translation: no empty or zero-weight split, every reference answered (secrets by the
control plane, exactly those :func:`required_secrets` lists), one claimant per domain, server name and
address, byte-identical output for identical input, an outbound part every proxy of a service shares,
and mutual TLS wherever the receiving service's mode asks for it.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.endpoint.v3 import endpoint_pb2 as endpoint_v3
from envoy.config.listener.v3 import listener_pb2 as listener_v3
from envoy.config.route.v3 import route_pb2 as route_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_v3
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2 as tcp_proxy_v3
from envoy.extensions.transport_sockets.tls.v3 import common_pb2 as common_v3
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2 as secret_v3
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2 as tls_v3
from envoy.type.matcher.v3 import string_pb2 as string_v3
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshplane.controlplane import ir
from meshplane.controlplane.build import build
from meshplane.controlplane.model import parse_object
from meshplane.controlplane.world import Index
from meshplane.xds import messages, names
from meshplane.xds.bootstrap import BootstrapSpec, render_bootstrap
from meshplane.xds.translate import (
    Built,
    dangling_refs,
    merge,
    required_secrets,
    service_of,
    translate,
    translate_inbound,
    translate_outbound,
    translate_proxy,
)
from tests.envoybin import envoy_path
from tests.test_golden import CASES, load_case, proxy_resources, secret_refs
from tests.tlsserver import make_certificates

MESH = "shop/shop-mesh"
TRUST_DOMAIN = "shop-mesh.shop.mesh.local"


# ------------------------------------------------------------------------------------- fixtures


def spiffe(key: str) -> str:
    """The identity build gives the virtual service ``key`` in the test mesh."""
    namespace, name = key.split("/")
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/virtualservice/{name}"


ANY_SERVICE = ir.Callers(all_services=True)


def http_service(key: str, *routes: ir.Route, mtls: ir.Mtls = ir.Mtls.PERMISSIVE,
                 callers: ir.Callers = ANY_SERVICE) -> ir.Service:
    """A service with one HTTP port, 8080, named ``<name>.shop.mesh``; every service of the mesh may call it."""
    host = key.split("/")[1] + ".shop.mesh"
    return ir.Service(key, MESH, spiffe(key), (host,), mtls, (ir.ServicePort(8080, ir.Protocol.HTTP, routes),),
                      callers)


def deployment(key: str, service: str, *endpoints: str, port: int = 8080) -> ir.Deployment:
    return ir.Deployment(key, service, None, (ir.Port(port, ir.Protocol.HTTP, 15_000),), endpoints)


def route(*backends: tuple[str, int]) -> ir.Route:
    """A rule over (deployment, weight) on port 8080; 503 when it has no backend (as build makes it)."""
    return ir.Route("test rule", backends=tuple(ir.Backend(d, 8080, w) for d, w in backends),
                    status=None if backends else 503)


def canary() -> ir.MeshConfig:
    """catalog split 90/10 over two live deployments; frontend (egress only) calls it."""
    catalog = http_service("shop/catalog", route(("shop/catalog-v1", 90), ("shop/catalog-v2", 10)))
    frontend = ir.Service("shop/frontend", MESH, spiffe("shop/frontend"), (), ir.Mtls.PERMISSIVE, (), ANY_SERVICE)
    deployments = (deployment("shop/catalog-v1", catalog.key, "127.0.0.11"),
                   deployment("shop/catalog-v2", catalog.key, "127.0.0.12"),
                   ir.Deployment("shop/frontend-v1", frontend.key, None, (), ("127.0.0.21",)))
    return ir.MeshConfig((ir.Mesh(MESH, TRUST_DOMAIN, ir.Mtls.PERMISSIVE),), (catalog, frontend), deployments)


CATALOG_V1 = ir.Workload("catalog-v1-0", "shop/catalog-v1", "127.0.0.11", app_ports=((8080, 18080),))
CATALOG_V2 = ir.Workload("catalog-v2-0", "shop/catalog-v2", "127.0.0.12", app_ports=((8080, 18080),))
FRONTEND = ir.Workload("frontend-v1-0", "shop/frontend-v1", "127.0.0.21")


def by_name(resources: Sequence[Built], type_url: str) -> dict[str, Any]:
    return {b.name: b.message for b in resources if b.type_url == type_url}


def unpack(any_message: Any, cls: Any) -> Any:
    message = cls()
    assert any_message.Unpack(message)
    return message


def route_actions(resources: Sequence[Built]) -> Iterator[Any]:
    """Every RouteAction: in RDS route configurations and in listeners' inline ones."""
    configs = list(by_name(resources, names.ROUTE_TYPE).values())
    for listener in by_name(resources, names.LISTENER_TYPE).values():
        for chain in listener.filter_chains:
            managers = [unpack(f.typed_config, hcm_v3.HttpConnectionManager) for f in chain.filters
                        if f.name == messages.HCM_FILTER]
            configs += [m.route_config for m in managers if m.HasField("route_config")]
    for config in configs:
        for vhost in config.virtual_hosts:
            yield from (r.route for r in vhost.routes if r.HasField("route"))


def tcp_proxies(resources: Sequence[Built]) -> Iterator[Any]:
    for listener in by_name(resources, names.LISTENER_TYPE).values():
        for chain in listener.filter_chains:
            for f in chain.filters:
                if f.name == messages.TCP_PROXY_FILTER:
                    yield unpack(f.typed_config, tcp_proxy_v3.TcpProxy)


def serialized(resources: Sequence[Built]) -> list[tuple[str, str, bytes]]:
    return [(b.type_url, b.name, b.message.SerializeToString(deterministic=True)) for b in resources]


def outbound_part(config: ir.MeshConfig, workload: ir.Workload) -> list[tuple[str, str, bytes]]:
    """What a proxy's translation holds beyond its own part (inbound side and listeners)."""
    own = {(b.type_url, b.name) for b in translate_proxy(config, workload)}
    return [r for r in serialized(translate(config, workload)) if r[:2] not in own]


def shared_part(config: ir.MeshConfig, workload: ir.Workload) -> list[tuple[str, str, bytes]]:
    """:func:`translate_outbound` for the workload's mesh and identity, serialised."""
    service = service_of(config, workload)
    assert service is not None
    return serialized(translate_outbound(config, service.mesh, service.identity))


def tls_context(socket: Any, cls: Any) -> Any:
    """The Downstream/UpstreamTlsContext a transport socket carries (it must be Envoy's TLS socket)."""
    assert socket.name == messages.TLS_TRANSPORT_SOCKET
    return unpack(socket.typed_config, cls)


def secret_names(resources: Sequence[Built]) -> set[str]:
    return {name for b in resources for kind, name in b.refs if kind == names.SECRET_TYPE}


# ------------------------------------------------------------------------------------ invariants


def check_invariants(resources: Sequence[Built], secrets: Sequence[tuple[str, str]] = ()) -> None:
    """What Envoy would otherwise reject, or what would send traffic nowhere.

    Only the secrets the control plane issues (``secrets``, from :func:`required_secrets`) may be named
    and not built; everything else a resource names must be in the set.
    """
    assert dangling_refs(resources) == secret_refs(secrets), (sorted(dangling_refs(resources)), secrets)
    for action in route_actions(resources):
        assert action.cluster or action.weighted_clusters.clusters, action
        assert all(c.weight.value > 0 for c in action.weighted_clusters.clusters), action
    for proxy in tcp_proxies(resources):
        assert proxy.cluster or proxy.weighted_clusters.clusters, proxy
        assert all(c.weight > 0 for c in proxy.weighted_clusters.clusters), proxy
    for config in by_name(resources, names.ROUTE_TYPE).values():
        domains = [d.lower() for vhost in config.virtual_hosts for d in vhost.domains]
        assert len(domains) == len(set(domains)), domains
        assert all(vhost.domains for vhost in config.virtual_hosts)
    listeners = by_name(resources, names.LISTENER_TYPE).values()
    addresses = [(x.address.socket_address.address, x.address.socket_address.port_value) for x in listeners]
    assert len(addresses) == len(set(addresses)), addresses
    for listener in listeners:
        server_names = [n for chain in listener.filter_chains for n in chain.filter_chain_match.server_names]
        assert len(server_names) == len(set(server_names)), server_names


def test_type_urls_are_envoys_own() -> None:
    for type_url, cls in ((names.CLUSTER_TYPE, cluster_v3.Cluster),
                          (names.ENDPOINT_TYPE, endpoint_v3.ClusterLoadAssignment),
                          (names.LISTENER_TYPE, listener_v3.Listener),
                          (names.ROUTE_TYPE, route_v3.RouteConfiguration),
                          (names.SECRET_TYPE, secret_v3.Secret)):
        assert type_url == "type.googleapis.com/" + cls.DESCRIPTOR.full_name


def test_every_golden_proxy_keeps_the_invariants() -> None:
    for case in CASES:
        world, workloads = load_case(case)
        config, _ = build(world, workloads)
        for workload in workloads:
            check_invariants(translate(config, workload), required_secrets(config, workload))


def test_a_split_has_no_zero_weight_even_if_the_ir_had_one() -> None:
    """The IR promises weights > 0; translation still never emits a zero (Envoy rejects a zero total)."""
    config = canary()
    zeroed = http_service("shop/catalog", route(("shop/catalog-v1", 0), ("shop/catalog-v2", 0)))
    broken = ir.MeshConfig(config.meshes, (zeroed, config.services[1]), config.deployments)
    resources = translate(broken, FRONTEND)
    check_invariants(resources, required_secrets(broken, FRONTEND))
    vhost, other = by_name(resources, names.ROUTE_TYPE)[names.OUTBOUND_HTTP].virtual_hosts
    assert vhost.routes[0].direct_response.status == 503
    assert other.name == names.OUTBOUND_OTHER
    assert not by_name(resources, names.CLUSTER_TYPE)


def test_one_backend_is_a_plain_cluster_and_duplicates_merge() -> None:
    config = canary()
    doubled = http_service("shop/catalog", route(("shop/catalog-v1", 30), ("shop/catalog-v1", 20)))
    resources = translate(ir.MeshConfig(config.meshes, (doubled, config.services[1]), config.deployments), FRONTEND)
    [action] = route_actions(resources)
    assert action.cluster == names.outbound_cluster("shop/catalog-v1", 8080)
    assert not action.HasField("weighted_clusters")


def test_a_canary_splits_by_weight_in_the_users_order() -> None:
    [action] = route_actions(translate(canary(), FRONTEND))
    assert [(c.name, c.weight.value) for c in action.weighted_clusters.clusters] == [
        ("outbound|8080|shop/catalog-v1", 90), ("outbound|8080|shop/catalog-v2", 10)]


def test_translating_twice_gives_identical_bytes() -> None:
    assert serialized(translate(canary(), CATALOG_V1)) == serialized(translate(canary(), CATALOG_V1))


def test_the_outbound_part_is_identical_for_every_proxy_of_a_service() -> None:
    """catalog-v1 and catalog-v2 prove one identity (their service's), so they share the bytes."""
    config = canary()
    shared = serialized(translate_outbound(config, MESH, spiffe("shop/catalog")))
    for workload in (CATALOG_V1, CATALOG_V2):
        assert outbound_part(config, workload) == shared


def test_two_services_outbound_parts_are_the_same_bytes_and_share_their_clusters() -> None:
    """Nothing outbound names the caller (its certificate is the secret every proxy calls ``workload``), so
    callers with the same scope get identical bytes, and clusters are built once per build for all."""
    config = canary()
    catalog = translate_outbound(config, MESH, spiffe("shop/catalog"))
    frontend = translate_outbound(config, MESH, spiffe("shop/frontend"))
    assert serialized(catalog) == serialized(frontend)
    clusters = [(mine, theirs) for mine, theirs in zip(catalog, frontend, strict=True)
                if mine.type_url in (names.CLUSTER_TYPE, names.ENDPOINT_TYPE)]
    assert clusters and all(mine is theirs for mine, theirs in clusters)
    assert secret_names(frontend) == {names.WORKLOAD_SECRET, names.trust_bundle(TRUST_DOMAIN)}


def test_translate_is_the_outbound_part_plus_the_proxys_own() -> None:
    config = canary()
    combined = merge(translate_outbound(config, MESH, spiffe("shop/catalog")), translate_proxy(config, CATALOG_V1))
    assert serialized(translate(config, CATALOG_V1)) == serialized(combined)


def test_an_unknown_mesh_is_a_callers_bug() -> None:
    with pytest.raises(ValueError, match="mesh 'shop/elsewhere' is not in the configuration"):
        translate_outbound(canary(), "shop/elsewhere", spiffe("shop/catalog"))


def test_a_workload_of_an_unserved_deployment_gets_nothing() -> None:
    assert translate(canary(), ir.Workload("ghost-0", "shop/ghost", "127.0.0.99")) == ()


def test_a_listener_without_an_application_port_is_skipped() -> None:
    workload = ir.Workload("catalog-v1-0", "shop/catalog-v1", "127.0.0.11")
    assert translate_inbound(canary(), workload) == ()


def test_a_sidecar_port_is_never_bound_for_the_mesh() -> None:
    config = canary()
    sidecar_port = deployment("shop/catalog-v1", "shop/catalog", "127.0.0.11", port=15001)
    odd = ir.MeshConfig(config.meshes, config.services, (sidecar_port, *config.deployments[1:]))
    workload = ir.Workload("catalog-v1-0", "shop/catalog-v1", "127.0.0.11", app_ports=((15001, 18080),))
    resources = translate(odd, workload)
    check_invariants(resources, required_secrets(odd, workload))
    assert names.inbound(15001) not in by_name(resources, names.LISTENER_TYPE)


def test_a_cluster_without_endpoints_gets_an_empty_assignment() -> None:
    config = canary()
    empty = deployment("shop/catalog-v2", "shop/catalog")
    resources = translate(ir.MeshConfig(config.meshes, config.services, (config.deployments[0], empty,
                                                                         config.deployments[2])), FRONTEND)
    assignment = by_name(resources, names.ENDPOINT_TYPE)[names.outbound_cluster("shop/catalog-v2", 8080)]
    assert not assignment.endpoints


def test_few_allowed_services_are_picked_from_the_index_in_mesh_plan_order() -> None:
    """The index (few callees) and the scan (many) give the same hosts in the same order."""
    from meshplane.xds import translate as module

    services = tuple(http_service(f"shop/s{i:02d}", route(("shop/d", 1))) for i in range(40))
    config = ir.MeshConfig((ir.Mesh(MESH, TRUST_DOMAIN, ir.Mtls.PERMISSIVE),), services, ())
    hosts, _ = module._mesh_plans(config, MESH)
    for allowed in ({"shop/s07"}, {"shop/s31", "shop/s02", "shop/s19"}, {s.key for s in services[::2]}):
        picked = module._hosts_of(config, MESH, hosts, frozenset(allowed))
        assert picked == [v for v in hosts if v.service in allowed]
        assert len(picked) == len(allowed)


def test_a_configuration_reuses_the_clusters_of_the_one_it_replaces() -> None:
    """A route change leaves every destination as it was: the next build's clusters and load assignments are
    the very objects of the last (MeshConfig.lasting), and nothing carried outlives a configuration unused."""
    first = canary()
    before = translate_outbound(first, MESH, spiffe("shop/frontend"))
    catalog = http_service("shop/catalog", route(("shop/catalog-v1", 50), ("shop/catalog-v2", 50)))
    second = ir.MeshConfig(first.meshes, (catalog, first.services[1]), first.deployments)
    second.carry_from(first)
    after = translate_outbound(second, MESH, spiffe("shop/frontend"))
    kept = {(b.type_url, b.name): b for b in before if b.type_url in (names.CLUSTER_TYPE, names.ENDPOINT_TYPE)}
    assert len(kept) == 4
    assert all(b is kept[(b.type_url, b.name)] for b in after if (b.type_url, b.name) in kept)
    routes = [b for b in after if b.type_url == names.ROUTE_TYPE]
    assert routes and all(all(r is not b for b in before) for r in routes), "the changed routes are new"
    third = ir.MeshConfig(first.meshes, (catalog, first.services[1]), first.deployments)
    third.carry_from(ir.MeshConfig(first.meshes, first.services, first.deployments))  # used nothing
    fresh = translate_outbound(third, MESH, spiffe("shop/frontend"))
    assert all(b is not kept.get((b.type_url, b.name)) for b in fresh)


def test_a_backend_on_standby_keeps_its_cluster_but_gets_no_traffic() -> None:
    """A deployment without endpoints drops out of the split while the other has some (build's choice), but
    its cluster stays: its first endpoint then changes the callers' routes, not their clusters."""
    catalog = http_service("shop/catalog", ir.Route("test rule", backends=(ir.Backend("shop/catalog-v1", 8080, 90),),
                                                    standby=(ir.Backend("shop/catalog-v2", 8080, 10),)))
    config = canary()
    config = ir.MeshConfig(config.meshes, (catalog, config.services[1]),
                           (config.deployments[0], deployment("shop/catalog-v2", catalog.key), config.deployments[2]))
    resources = translate(config, FRONTEND)
    [action] = route_actions(resources)
    assert action.cluster == names.outbound_cluster("shop/catalog-v1", 8080)
    assert set(by_name(resources, names.CLUSTER_TYPE)) == {names.outbound_cluster("shop/catalog-v1", 8080),
                                                           names.outbound_cluster("shop/catalog-v2", 8080)}
    check_invariants(resources, required_secrets(config, FRONTEND))


@pytest.mark.parametrize("idle_ms", [60_000, 0, None])
def test_an_outbound_route_has_the_routes_idle_timeout_only_when_it_has_one(idle_ms: int | None) -> None:
    """0 must reach Envoy as 0 s (disabled), and None as no field (the stream idle timeout applies)."""
    config = canary()
    catalog = http_service("shop/catalog", ir.Route("test rule", idle_timeout_ms=idle_ms,
                                                    backends=(ir.Backend("shop/catalog-v1", 8080, 1),)))
    resources = translate(ir.MeshConfig(config.meshes, (catalog, config.services[1]), config.deployments), FRONTEND)
    [action] = route_actions(resources)
    assert action.HasField("idle_timeout") is (idle_ms is not None)
    if idle_ms is not None:
        assert action.idle_timeout.ToMilliseconds() == idle_ms


def idle_world(idle_by_deployment: dict[str, int | None]) -> Index:
    """catalog with one deployment per entry (HTTP 8080, that idle timeout) and a rule over all of them."""
    api = "servicemesh.oci.oracle.com/v1beta1"
    raw: list[dict[str, Any]] = [
        {"apiVersion": api, "kind": "Mesh", "metadata": {"name": "shop-mesh", "namespace": "shop"}, "spec": {}},
        {"apiVersion": api, "kind": "VirtualService", "metadata": {"name": "catalog", "namespace": "shop"},
         "spec": {"mesh": {"ref": {"name": "shop-mesh"}}, "hosts": ["catalog.shop.mesh"]}},
        {"apiVersion": api, "kind": "VirtualServiceRouteTable", "metadata": {"name": "routes", "namespace": "shop"},
         "spec": {"virtualService": {"ref": {"name": "catalog"}}, "routeRules": [{"httpRoute": {"destinations": [
             {"virtualDeployment": {"ref": {"name": name}}, "weight": 1} for name in idle_by_deployment]}}]}},
        {"apiVersion": api, "kind": "AccessPolicy", "metadata": {"name": "all", "namespace": "shop"},
         "spec": {"mesh": {"ref": {"name": "shop-mesh"}}, "rules": [
             {"action": "ALLOW", "source": {"allVirtualServices": {}}, "destination": {"allVirtualServices": {}}}]}}]
    for name, idle_ms in idle_by_deployment.items():
        listener = {"protocol": "HTTP", "port": 8080} | ({} if idle_ms is None else {"idleTimeoutInMs": idle_ms})
        raw.append({"apiVersion": api, "kind": "VirtualDeployment", "metadata": {"name": name, "namespace": "shop"},
                    "spec": {"virtualService": {"ref": {"name": "catalog"}}, "listener": [listener],
                             "serviceDiscovery": {"type": "DNS", "hostname": f"{name}.shop.mesh"}}})
    objects = [parse_object(r) for r in raw]
    assert all(obj is not None and not problems for obj, problems in objects), objects
    return Index(obj for obj, _ in objects if obj is not None)


@pytest.mark.parametrize(("idle_by_deployment", "expected"), [
    ({"v1": None, "v2": None}, None),  # nobody sets one: the caller keeps its default
    ({"v1": 60_000, "v2": None}, 60_000),  # a destination without one does not count
    ({"v1": 60_000, "v2": 120_000}, 120_000),  # the most patient destination decides
    ({"v1": 60_000, "v2": 0}, 0),  # disabled outlasts any bound
])
def test_a_rule_takes_the_largest_idle_timeout_its_destinations_set(idle_by_deployment: dict[str, int | None],
                                                                     expected: int | None) -> None:
    config, problems = build(idle_world(idle_by_deployment))
    assert not problems
    [service] = config.services
    [port] = service.ports
    [route] = port.routes
    assert route.idle_timeout_ms == expected
    [action] = route_actions(translate_outbound(config, MESH, service.identity))
    assert action.HasField("idle_timeout") is (expected is not None)


def test_merge_refuses_two_resources_with_one_name() -> None:
    one = Built(names.CLUSTER_TYPE, "c", cluster_v3.Cluster(name="c"))
    with pytest.raises(ValueError, match="two resources are named 'c'"):
        merge([one], [one])


# ------------------------------------------------------------------------------------- mutual TLS

CATALOG_PORTS = {8080: ir.Protocol.HTTP, 9090: ir.Protocol.GRPC, 5432: ir.Protocol.TCP,
                 443: ir.Protocol.TLS_PASSTHROUGH}
MESH_TLS_PORTS = [8080, 9090, 5432]  # every protocol but TLS passthrough


def tls_mesh(catalog_mode: ir.Mtls, frontend_mode: ir.Mtls = ir.Mtls.DISABLED) -> ir.MeshConfig:
    """catalog (one deployment, one port per protocol, all traffic to catalog-v1) in ``catalog_mode``,
    and frontend (egress only) in ``frontend_mode``, in a mesh whose minimum is DISABLED."""
    ports = tuple(ir.ServicePort(n, p, (ir.Route("test rule", backends=(ir.Backend("shop/catalog-v1", n, 1),)),))
                  for n, p in sorted(CATALOG_PORTS.items()))
    catalog = ir.Service("shop/catalog", MESH, spiffe("shop/catalog"), ("catalog.shop.mesh",), catalog_mode, ports,
                         ANY_SERVICE)
    frontend = ir.Service("shop/frontend", MESH, spiffe("shop/frontend"), (), frontend_mode, (), ANY_SERVICE)
    deployments = (ir.Deployment("shop/catalog-v1", catalog.key, None,
                                 tuple(ir.Port(n, p, 0) for n, p in sorted(CATALOG_PORTS.items())), ("127.0.0.11",)),
                   ir.Deployment("shop/frontend-v1", frontend.key, None, (), ("127.0.0.21",)))
    return ir.MeshConfig((ir.Mesh(MESH, TRUST_DOMAIN, ir.Mtls.DISABLED),), (catalog, frontend), deployments)


CATALOG = ir.Workload("catalog-v1-0", "shop/catalog-v1", "127.0.0.11",
                      app_ports=tuple((n, 10000 + n) for n in sorted(CATALOG_PORTS)))
CATALOG_SECRETS = {names.WORKLOAD_SECRET, names.trust_bundle(TRUST_DOMAIN)}
FRONTEND_SECRETS = {names.WORKLOAD_SECRET, names.trust_bundle(TRUST_DOMAIN)}


def inbound_listener(resources: Sequence[Built], port: int) -> tuple[Any, frozenset[tuple[str, str]]]:
    """The inbound listener of ``port`` and its refs."""
    [found] = [b for b in resources if b.type_url == names.LISTENER_TYPE and b.name == names.inbound(port)]
    return found.message, found.refs


def check_mesh_tls_context(common: Any, certificate: str, peer: Any) -> None:
    """Presents ``certificate``, validates with the trust bundle, and accepts exactly the SAN rule ``peer``;
    both secrets come over ADS."""
    [sds] = common.tls_certificate_sds_secret_configs
    assert sds.name == certificate and sds.sds_config.HasField("ads")
    combined = common.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == names.trust_bundle(TRUST_DOMAIN)
    assert combined.validation_context_sds_secret_config.sds_config.HasField("ads")
    assert list(combined.default_validation_context.match_typed_subject_alt_names) == [peer]


def uri_san(**matcher: str) -> Any:
    return common_v3.SubjectAltNameMatcher(san_type=common_v3.SubjectAltNameMatcher.URI,
                                           matcher=string_v3.StringMatcher(**matcher))


def check_mutual_tls_chain(chain: Any) -> None:
    """The chain terminates TLS, requires a client certificate, and lets in any identity of the mesh."""
    context = tls_context(chain.transport_socket, tls_v3.DownstreamTlsContext)
    assert context.require_client_certificate.value is True
    check_mesh_tls_context(context.common_tls_context, names.WORKLOAD_SECRET,
                           uri_san(prefix=f"spiffe://{TRUST_DOMAIN}/"))


@pytest.mark.parametrize("port", MESH_TLS_PORTS)
def test_strict_inbound_accepts_only_mutual_tls_from_the_mesh(port: int) -> None:
    listener, refs = inbound_listener(translate(tls_mesh(ir.Mtls.STRICT), CATALOG), port)
    [chain] = listener.filter_chains
    check_mutual_tls_chain(chain)
    assert not chain.HasField("filter_chain_match") and not listener.listener_filters
    assert {(names.SECRET_TYPE, name) for name in CATALOG_SECRETS} <= refs


@pytest.mark.parametrize("port", MESH_TLS_PORTS)
def test_permissive_inbound_has_a_mutual_tls_and_a_plaintext_chain_to_the_same_application(port: int) -> None:
    """Both chains end in the same filters but for who they admit: SPIFFE IDs over mTLS, addresses in plaintext."""
    listener, refs = inbound_listener(translate(tls_mesh(ir.Mtls.PERMISSIVE), CATALOG), port)
    assert [f.name for f in listener.listener_filters] == [messages.TLS_INSPECTOR_FILTER]
    assert listener.continue_on_listener_filters_timeout  # a silent plaintext client is not cut off
    tls, plaintext = listener.filter_chains
    assert (tls.filter_chain_match.transport_protocol, plaintext.filter_chain_match.transport_protocol) == (
        "tls", "raw_buffer")
    check_mutual_tls_chain(tls)
    assert not plaintext.HasField("transport_socket")
    assert without_rbac(tls) == without_rbac(plaintext)
    assert {(names.SECRET_TYPE, name) for name in CATALOG_SECRETS} <= refs


def serialized_filters(chain: Any) -> list[bytes]:
    return [f.SerializeToString(deterministic=True) for f in chain.filters]


def without_rbac(chain: Any) -> list[bytes]:
    """A chain's filters, serialised, with access control (network or HTTP RBAC) taken out."""
    kept = []
    for f in chain.filters:
        if f.name == messages.RBAC_NETWORK_FILTER:
            continue
        if f.name == messages.HCM_FILTER:
            manager = unpack(f.typed_config, hcm_v3.HttpConnectionManager)
            rest = [h for h in manager.http_filters if h.name != messages.RBAC_HTTP_FILTER]
            del manager.http_filters[:]
            manager.http_filters.extend(rest)
            kept.append(manager.SerializeToString(deterministic=True))
        else:
            kept.append(f.SerializeToString(deterministic=True))
    return kept


@pytest.mark.parametrize("port", sorted(CATALOG_PORTS))
def test_disabled_inbound_is_plaintext_and_names_no_secret(port: int) -> None:
    config = tls_mesh(ir.Mtls.DISABLED)
    resources = translate(config, CATALOG)
    listener, _ = inbound_listener(resources, port)
    [chain] = listener.filter_chains
    assert not chain.HasField("transport_socket") and not listener.listener_filters
    assert not secret_names(resources) and required_secrets(config, CATALOG) == ()


@pytest.mark.parametrize("mode", [ir.Mtls.STRICT, ir.Mtls.PERMISSIVE])
def test_tls_passthrough_carries_no_mesh_tls_on_either_side(mode: ir.Mtls) -> None:
    config = tls_mesh(mode)
    listener, _ = inbound_listener(translate(config, CATALOG), 443)
    assert [c.HasField("transport_socket") for c in listener.filter_chains] == [False]
    assert not listener.listener_filters
    cluster = by_name(translate(config, FRONTEND), names.CLUSTER_TYPE)[names.outbound_cluster("shop/catalog-v1", 443)]
    assert not cluster.HasField("transport_socket")


@pytest.mark.parametrize("mode", [ir.Mtls.STRICT, ir.Mtls.PERMISSIVE])
@pytest.mark.parametrize("port", MESH_TLS_PORTS)
def test_a_caller_originates_mutual_tls_verifying_the_destinations_exact_identity(mode: ir.Mtls, port: int) -> None:
    """frontend itself is DISABLED: only the destination's mode matters, and frontend proves its own identity."""
    resources = translate(tls_mesh(mode), FRONTEND)
    name = names.outbound_cluster("shop/catalog-v1", port)
    [built] = [b for b in resources if b.type_url == names.CLUSTER_TYPE and b.name == name]
    cluster: Any = built.message
    context = tls_context(cluster.transport_socket, tls_v3.UpstreamTlsContext)
    check_mesh_tls_context(context.common_tls_context, names.WORKLOAD_SECRET,
                           uri_san(exact=spiffe("shop/catalog")))
    assert not context.sni
    assert {(names.SECRET_TYPE, secret) for secret in FRONTEND_SECRETS} <= built.refs


def test_an_http2_or_grpc_upstream_keeps_explicit_http2_under_mutual_tls() -> None:
    cluster = by_name(translate(tls_mesh(ir.Mtls.STRICT), FRONTEND), names.CLUSTER_TYPE)[
        names.outbound_cluster("shop/catalog-v1", 9090)]
    assert cluster.HasField("transport_socket")
    assert dict(cluster.typed_extension_protocol_options) == messages.build_protocol_options(messages.Upstream.HTTP2)


def test_a_caller_speaks_plaintext_to_a_disabled_destination_whatever_its_own_mode() -> None:
    config = tls_mesh(ir.Mtls.DISABLED, frontend_mode=ir.Mtls.STRICT)
    resources = translate(config, FRONTEND)
    assert not any(c.HasField("transport_socket") for c in by_name(resources, names.CLUSTER_TYPE).values())
    assert required_secrets(config, FRONTEND) == ()


@pytest.mark.parametrize(("catalog_mode", "frontend_mode"), [
    (ir.Mtls.STRICT, ir.Mtls.DISABLED), (ir.Mtls.PERMISSIVE, ir.Mtls.PERMISSIVE), (ir.Mtls.DISABLED, ir.Mtls.STRICT),
    (ir.Mtls.DISABLED, ir.Mtls.DISABLED)])
def test_required_secrets_are_exactly_the_secrets_the_resources_name(catalog_mode: ir.Mtls,
                                                                     frontend_mode: ir.Mtls) -> None:
    config = tls_mesh(catalog_mode, frontend_mode)
    expected = {CATALOG: CATALOG_SECRETS, FRONTEND: FRONTEND_SECRETS}
    for workload, secrets in expected.items():
        resources = translate(config, workload)
        required = required_secrets(config, workload)
        assert {name for name, _ in required} == secret_names(resources)
        if catalog_mode is not ir.Mtls.DISABLED:
            service = service_of(config, workload)
            assert service is not None
            assert required == tuple(sorted([(names.WORKLOAD_SECRET, service.identity),
                                             (names.trust_bundle(TRUST_DOMAIN), TRUST_DOMAIN)]))
            assert secret_names(resources) == secrets
        check_invariants(resources, required)


def test_build_gives_each_service_its_spiffe_identity_and_the_mesh_floor() -> None:
    """A mesh without ``mtls`` has the minimum STRICT (build's default), so a service without a mode is STRICT."""
    config, _ = build(idle_world({"v1": None}))
    [service] = config.services
    assert service.identity == spiffe("shop/catalog")
    assert service.mtls is ir.Mtls.STRICT


# ----------------------------------------------------------------------------- generated meshes

PORTS = {80: ir.Protocol.HTTP, 81: ir.Protocol.HTTP2, 82: ir.Protocol.GRPC, 443: ir.Protocol.TLS_PASSTHROUGH,
         5432: ir.Protocol.TCP, 15001: ir.Protocol.HTTP}
HOSTS = ["a.mesh", "A.mesh", "b.mesh", "*.w.mesh", "c.mesh"]
MODES = st.sampled_from(list(ir.Mtls))


@st.composite
def meshes(draw: st.DrawFn) -> tuple[ir.MeshConfig, list[ir.Workload]]:
    """Random but well-formed IR: services with HTTP/TCP/TLS ports and routes over random deployments.

    Weights include 0, protocols may disagree between a service port and a deployment port, and mTLS
    modes are drawn per service regardless of the mesh minimum: the translator must stay valid even
    where build would have reported a problem (or raised the mode).
    """
    n_services, n_deployments = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    service_keys = [f"shop/s{i}" for i in range(n_services)]
    deployments = []
    for i in range(n_deployments):
        numbers = draw(st.lists(st.sampled_from(sorted(PORTS)), max_size=3, unique=True))
        ports = tuple(ir.Port(n, draw(st.sampled_from([PORTS[n], ir.Protocol.HTTP])), 1000) for n in sorted(numbers))
        endpoints = tuple(sorted(draw(st.sets(st.sampled_from(["127.0.0.11", "127.0.0.12"]), max_size=2))))
        deployments.append(ir.Deployment(f"shop/d{i}", draw(st.sampled_from(service_keys)), None, ports, endpoints))
    services = [draw(service(key, [d.key for d in deployments])) for key in service_keys]
    config = ir.MeshConfig((ir.Mesh(MESH, TRUST_DOMAIN, draw(MODES)),), tuple(services), tuple(deployments))
    workloads = [ir.Workload(f"w{i}", d.key, f"127.0.1.{i}", app_ports=tuple((p.number, 20000 + p.number)
                                                                            for p in d.ports))
                 for i, d in enumerate(deployments)]
    return config, workloads


@st.composite
def service(draw: st.DrawFn, key: str, deployments: list[str]) -> ir.Service:
    numbers = sorted(draw(st.lists(st.sampled_from(sorted(PORTS)), max_size=3, unique=True)))
    ports = []
    for number in numbers:
        routes = []
        for i in range(draw(st.integers(0, 3))):
            backends = draw(st.lists(st.builds(ir.Backend, st.sampled_from(deployments), st.just(number),
                                               st.integers(0, 100)), max_size=3))
            routes.append(ir.Route(f"rule {i}", draw(st.sampled_from(["/", "/api"])), draw(st.booleans()),
                                   draw(st.sampled_from([0, 2500])), draw(st.sampled_from([None, 0, 60_000])),
                                   tuple(backends), None if backends else draw(st.sampled_from([403, 503]))))
        ports.append(ir.ServicePort(number, PORTS[number], tuple(routes)))
    hosts = tuple(sorted(draw(st.sets(st.sampled_from(HOSTS), max_size=3))))
    callers = draw(st.sampled_from([ANY_SERVICE, ir.Callers(), ir.Callers(identities=(spiffe("shop/s0"),))]))
    return ir.Service(key, MESH, spiffe(key), hosts, draw(MODES), tuple(ports), callers)


def accepted_transports(resources: Sequence[Built]) -> dict[int, set[bool]]:
    """Per inbound port: which connections it takes (True = mutual TLS, False = plaintext)."""
    listeners = [x for name, x in by_name(resources, names.LISTENER_TYPE).items() if name.startswith("inbound|")]
    return {x.address.socket_address.port_value: {c.HasField("transport_socket") for c in x.filter_chains}
            for x in listeners}


def check_callers_speak_what_receivers_accept(config: ir.MeshConfig, workloads: Sequence[ir.Workload]) -> None:
    """Every caller's cluster to a deployment port uses a transport that port's proxies accept, with the
    receiving service's identity as the only acceptable peer."""
    clusters = {names.outbound_cluster(d.key, p.number): (d, p.number) for d in config.deployments for p in d.ports}
    accepts = {(w.deployment, port): found for w in workloads
               for port, found in accepted_transports(translate(config, w)).items()}
    for caller in workloads:
        for name, cluster in by_name(translate(config, caller), names.CLUSTER_TYPE).items():
            if name not in clusters or (clusters[name][0].key, clusters[name][1]) not in accepts:
                continue
            deployment, port = clusters[name]
            assert cluster.HasField("transport_socket") in accepts[(deployment.key, port)], (caller.node_id, name)
            if cluster.HasField("transport_socket"):
                context = tls_context(cluster.transport_socket, tls_v3.UpstreamTlsContext)
                [peer] = context.common_tls_context.combined_validation_context.default_validation_context.\
                    match_typed_subject_alt_names
                assert peer == uri_san(exact=spiffe(deployment.service))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meshes())
def test_generated_meshes_keep_every_invariant(mesh: tuple[ir.MeshConfig, list[ir.Workload]]) -> None:
    config, workloads = mesh
    by_service: dict[str, list[tuple[str, str, bytes]]] = {}
    for workload in workloads:
        resources = translate(config, workload)
        check_invariants(resources, required_secrets(config, workload))
        assert serialized(resources) == serialized(translate(config, workload))
        assert outbound_part(config, workload) == shared_part(config, workload)
        service = service_of(config, workload)
        assert service is not None
        assert by_service.setdefault(service.key, outbound_part(config, workload)) == outbound_part(config, workload)
    check_callers_speak_what_receivers_accept(config, workloads)


# ---------------------------------------------------------------------------------- real Envoy


def inline_routes(listener: Any, routes: dict[str, Any]) -> Any:
    """A copy of ``listener`` with RDS replaced by the route configuration it names (validate mode has no ADS)."""
    copy = listener_v3.Listener()
    copy.CopyFrom(listener)
    for chain in copy.filter_chains:
        for f in chain.filters:
            if f.name == messages.HCM_FILTER:
                manager = unpack(f.typed_config, hcm_v3.HttpConnectionManager)
                if manager.HasField("rds"):
                    manager.route_config.CopyFrom(routes[manager.rds.route_config_name])
                    f.typed_config.CopyFrom(messages.pack(manager))
    return copy


def static_bootstrap(workload: ir.Workload, resources: Sequence[Built]) -> dict[str, Any]:
    """The proxy's bootstrap with the translated clusters and listeners as static resources.

    Everything else stays as sent: SDS references keep ``sds_config: {ads: {}}``, which Envoy accepts
    as is (the bootstrap has an ADS config source), so Envoy checks the exact TLS contexts we send.
    """
    def plain(message: Any) -> Any:
        return json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))

    metadata = ({names.META_GATEWAY: workload.gateway} if workload.gateway is not None
                else {names.META_DEPLOYMENT: workload.deployment})
    spec = BootstrapSpec(workload.node_id, workload.gateway or workload.deployment, metadata, "127.0.0.1", 15012,
                         admin_port=0, delta=False)
    data = render_bootstrap(spec)
    routes = by_name(resources, names.ROUTE_TYPE)
    data["static_resources"]["clusters"] += [plain(c) for c in by_name(resources, names.CLUSTER_TYPE).values()]
    data["static_resources"]["listeners"] = [plain(inline_routes(x, routes))
                                             for x in by_name(resources, names.LISTENER_TYPE).values()]
    return data


def envoy_validates(workload: ir.Workload, data: dict[str, Any], folder: Path) -> None:
    path = folder / f"{workload.node_id}.yaml"
    path.write_text(yaml.safe_dump(data))
    done = subprocess.run([str(envoy_path()), "--mode", "validate", "-c", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def throwaway_certificate() -> tuple[str, str]:
    """A self-signed ECDSA P-256 certificate and its key (PEM), valid for a day, never used to talk."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "meshplane validate-mode test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe("test/any"))]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return certificate.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def with_static_secrets(data: dict[str, Any], secrets: Sequence[tuple[str, str]], pem: tuple[str, str],
                        gateway_pem: tuple[bytes, bytes, bytes] | None = None) -> None:
    """Serve ``secrets`` from the bootstrap (``pem`` as every certificate and root) and point references at them.

    A gateway host's certificate (``tls|…``) and client CA bundle (``ca|…``) come from ``gateway_pem``
    (:func:`tests.tlsserver.make_certificates`: CA, server certificate, key), as the control plane
    would serve them from the host's Secrets.

    Only for validation: a reference without ``sds_config`` names a static secret, and with real
    material in place Envoy builds each TLS context (loads the certificate and key, merges the
    combined validation context) instead of waiting for SDS.
    """
    wanted = {name for name, _ in secrets}
    pointed: set[str] = set()

    def local(node: Any) -> None:
        if isinstance(node, dict):
            if "sds_config" in node and node.get("name") in wanted:
                del node["sds_config"]
                pointed.add(node["name"])
            for value in node.values():
                local(value)
        elif isinstance(node, list):
            for value in node:
                local(value)

    local(data["static_resources"])
    assert pointed == wanted, f"secrets named but not found in the resources: {sorted(wanted - pointed)}"
    data["static_resources"]["secrets"] = [static_secret(name, subject, pem, gateway_pem) for name, subject in secrets]


def static_secret(name: str, subject: str, pem: tuple[str, str],
                  gateway_pem: tuple[bytes, bytes, bytes] | None) -> dict[str, Any]:
    """One secret of :func:`with_static_secrets`, as the bootstrap's static resources hold it."""
    certificate, key = pem
    if name.startswith((names.server_certificate(""), names.client_ca(""))):
        assert gateway_pem is not None, f"{name} is a gateway host's secret: give gateway_pem"
        ca, certificate, key = (part.decode() for part in gateway_pem)
        if name.startswith(names.client_ca("")):
            certificate = ca
    if name == names.WORKLOAD_SECRET or name.startswith(names.server_certificate("")):
        return {"name": name, "tls_certificate": {"certificate_chain": {"inline_string": certificate},
                                                  "private_key": {"inline_string": key}}}
    return {"name": name, "validation_context": {"trusted_ca": {"inline_string": certificate}}}


GOLDEN_PROXIES = [(case, workload) for case in CASES for workload in load_case(case)[1]]


def golden_secrets(case: Path, workload: ir.Workload) -> tuple[tuple[str, str], ...]:
    """The secrets a golden proxy's resources name."""
    world, workloads = load_case(case)
    config, _ = build(world, workloads)
    return proxy_resources(config, workload)[1]


GOLDEN_TLS_PROXIES = [(case, workload) for case, workload in GOLDEN_PROXIES if golden_secrets(case, workload)]


def golden_id(value: Any) -> str:
    return str(getattr(value, "name", None) or getattr(value, "node_id", ""))


@pytest.mark.envoy
@pytest.mark.parametrize(("case", "workload"), GOLDEN_PROXIES, ids=golden_id)
def test_real_envoy_accepts_every_golden_proxys_configuration(case: Path, workload: ir.Workload,
                                                              tmp_path: Path) -> None:
    """Sidecars and ingress gateway proxies alike (``workload.gateway``)."""
    world, workloads = load_case(case)
    config, _ = build(world, workloads)
    resources, _ = proxy_resources(config, workload)
    assert resources, f"{workload.node_id} gets no resources: nothing to validate"
    envoy_validates(workload, static_bootstrap(workload, resources), tmp_path)


@pytest.fixture(scope="module")
def pem() -> tuple[str, str]:
    return throwaway_certificate()


@pytest.fixture(scope="module")
def gateway_pem() -> tuple[bytes, bytes, bytes]:
    """A gateway host's certificate material: CA, server certificate and key (PEM)."""
    return make_certificates(["gateway.example.test"])


@pytest.mark.envoy
@pytest.mark.parametrize(("case", "workload"), GOLDEN_TLS_PROXIES, ids=golden_id)
def test_real_envoy_builds_every_golden_tls_context_from_real_secrets(
        case: Path, workload: ir.Workload, tmp_path: Path, pem: tuple[str, str],
        gateway_pem: tuple[bytes, bytes, bytes]) -> None:
    """The same resources with their secrets served statically, so Envoy builds each TLS context for real
    (a gateway's host certificates and client CA bundles too)."""
    world, workloads = load_case(case)
    config, _ = build(world, workloads)
    resources, secrets = proxy_resources(config, workload)
    data = static_bootstrap(workload, resources)
    with_static_secrets(data, secrets, pem, gateway_pem)
    envoy_validates(workload, data, tmp_path)


@pytest.mark.envoy
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meshes())
def test_real_envoy_accepts_generated_meshes(mesh: tuple[ir.MeshConfig, list[ir.Workload]]) -> None:
    config, workloads = mesh
    with tempfile.TemporaryDirectory() as folder:
        for workload in workloads:
            envoy_validates(workload, static_bootstrap(workload, translate(config, workload)), Path(folder))
