"""Invariants of translation, over hand-made and generated IR, and the real Envoy's verdict on it.

Golden files (tests/test_golden.py) show what each case translates to; these tests hold what must be
true of *every* translation: no empty or zero-weight split, every reference answered, one claimant
per domain, server name and address, byte-identical output for identical input, and an outbound part
every proxy of a mesh shares.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2 as cluster_v3
from envoy.config.endpoint.v3 import endpoint_pb2 as endpoint_v3
from envoy.config.listener.v3 import listener_pb2 as listener_v3
from envoy.config.route.v3 import route_pb2 as route_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_v3
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2 as tcp_proxy_v3
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
    translate,
    translate_inbound,
    translate_outbound,
    translate_proxy,
)
from tests.envoybin import envoy_path
from tests.test_golden import CASES, load_case

MESH = "shop/shop-mesh"


# ------------------------------------------------------------------------------------- fixtures


def http_service(key: str, *routes: ir.Route) -> ir.Service:
    """A service with one HTTP port, 8080, named ``<name>.shop.mesh``."""
    host = key.split("/")[1] + ".shop.mesh"
    return ir.Service(key, MESH, (host,), ir.Mtls.PERMISSIVE, (ir.ServicePort(8080, ir.Protocol.HTTP, routes),))


def deployment(key: str, service: str, *endpoints: str, port: int = 8080) -> ir.Deployment:
    return ir.Deployment(key, service, None, (ir.Port(port, ir.Protocol.HTTP, 15_000),), endpoints)


def route(*backends: tuple[str, int]) -> ir.Route:
    """A rule over (deployment, weight) on port 8080; 503 when it has no backend (as build makes it)."""
    return ir.Route("test rule", backends=tuple(ir.Backend(d, 8080, w) for d, w in backends),
                    status=None if backends else 503)


def canary() -> ir.MeshConfig:
    """catalog split 90/10 over two live deployments; frontend (egress only) calls it."""
    catalog = http_service("shop/catalog", route(("shop/catalog-v1", 90), ("shop/catalog-v2", 10)))
    frontend = ir.Service("shop/frontend", MESH, (), ir.Mtls.PERMISSIVE, ())
    deployments = (deployment("shop/catalog-v1", catalog.key, "127.0.0.11"),
                   deployment("shop/catalog-v2", catalog.key, "127.0.0.12"),
                   ir.Deployment("shop/frontend-v1", frontend.key, None, (), ("127.0.0.21",)))
    return ir.MeshConfig((ir.Mesh(MESH, "shop-mesh.shop.mesh.local", ir.Mtls.PERMISSIVE),), (catalog, frontend),
                         deployments)


CATALOG_V1 = ir.Workload("catalog-v1-0", "shop/catalog-v1", "127.0.0.11", app_ports=((8080, 18080),))
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


# ------------------------------------------------------------------------------------ invariants


def check_invariants(resources: Sequence[Built]) -> None:
    """What Envoy would otherwise reject, or what would send traffic nowhere."""
    assert not dangling_refs(resources), sorted(dangling_refs(resources))
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
                          (names.ROUTE_TYPE, route_v3.RouteConfiguration)):
        assert type_url == "type.googleapis.com/" + cls.DESCRIPTOR.full_name


def test_every_golden_proxy_keeps_the_invariants() -> None:
    for case in CASES:
        world, workloads = load_case(case)
        config, _ = build(world, workloads)
        for workload in workloads:
            check_invariants(translate(config, workload))


def test_a_split_has_no_zero_weight_even_if_the_ir_had_one() -> None:
    """The IR promises weights > 0; translation still never emits a zero (Envoy rejects a zero total)."""
    config = canary()
    zeroed = http_service("shop/catalog", route(("shop/catalog-v1", 0), ("shop/catalog-v2", 0)))
    broken = ir.MeshConfig(config.meshes, (zeroed, config.services[1]), config.deployments)
    resources = translate(broken, FRONTEND)
    check_invariants(resources)
    [vhost] = by_name(resources, names.ROUTE_TYPE)[names.OUTBOUND_HTTP].virtual_hosts
    assert vhost.routes[0].direct_response.status == 503
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


def test_the_outbound_part_is_identical_for_every_proxy_of_a_mesh() -> None:
    config = canary()
    shared = serialized(translate_outbound(config, MESH))
    for workload in (CATALOG_V1, FRONTEND):
        assert outbound_part(config, workload) == shared


def test_translate_is_the_outbound_part_plus_the_proxys_own() -> None:
    config = canary()
    combined = merge(translate_outbound(config, MESH), translate_proxy(config, CATALOG_V1))
    assert serialized(translate(config, CATALOG_V1)) == serialized(combined)


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
    check_invariants(resources)
    assert names.inbound(15001) not in by_name(resources, names.LISTENER_TYPE)


def test_a_cluster_without_endpoints_gets_an_empty_assignment() -> None:
    config = canary()
    empty = deployment("shop/catalog-v2", "shop/catalog")
    resources = translate(ir.MeshConfig(config.meshes, config.services, (config.deployments[0], empty,
                                                                         config.deployments[2])), FRONTEND)
    assignment = by_name(resources, names.ENDPOINT_TYPE)[names.outbound_cluster("shop/catalog-v2", 8080)]
    assert not assignment.endpoints


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
             {"virtualDeployment": {"ref": {"name": name}}, "weight": 1} for name in idle_by_deployment]}}]}}]
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
    [action] = route_actions(translate_outbound(config, MESH))
    assert action.HasField("idle_timeout") is (expected is not None)


def test_merge_refuses_two_resources_with_one_name() -> None:
    one = Built(names.CLUSTER_TYPE, "c", cluster_v3.Cluster(name="c"))
    with pytest.raises(ValueError, match="two resources are named 'c'"):
        merge([one], [one])


# ----------------------------------------------------------------------------- generated meshes

PORTS = {80: ir.Protocol.HTTP, 81: ir.Protocol.HTTP2, 82: ir.Protocol.GRPC, 443: ir.Protocol.TLS_PASSTHROUGH,
         5432: ir.Protocol.TCP, 15001: ir.Protocol.HTTP}
HOSTS = ["a.mesh", "A.mesh", "b.mesh", "*.w.mesh", "c.mesh"]


@st.composite
def meshes(draw: st.DrawFn) -> tuple[ir.MeshConfig, list[ir.Workload]]:
    """Random but well-formed IR: services with HTTP/TCP/TLS ports and routes over random deployments.

    Weights include 0 and protocols may disagree between a service port and a deployment port: the
    translator must stay valid even where build would have reported a problem.
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
    config = ir.MeshConfig((ir.Mesh(MESH, "t", ir.Mtls.STRICT),), tuple(services), tuple(deployments))
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
    return ir.Service(key, MESH, hosts, ir.Mtls.STRICT, tuple(ports))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meshes())
def test_generated_meshes_keep_every_invariant(mesh: tuple[ir.MeshConfig, list[ir.Workload]]) -> None:
    config, workloads = mesh
    shared = serialized(translate_outbound(config, MESH))
    for workload in workloads:
        resources = translate(config, workload)
        check_invariants(resources)
        assert serialized(resources) == serialized(translate(config, workload))
        assert outbound_part(config, workload) == shared


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
    """The proxy's bootstrap with the translated clusters and listeners as static resources."""
    def plain(message: Any) -> Any:
        return json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))

    spec = BootstrapSpec(workload.node_id, workload.deployment, {names.META_DEPLOYMENT: workload.deployment},
                         "127.0.0.1", 15012, admin_port=0, delta=False)
    data = render_bootstrap(spec)
    routes = by_name(resources, names.ROUTE_TYPE)
    data["static_resources"]["clusters"] += [plain(c) for c in by_name(resources, names.CLUSTER_TYPE).values()]
    data["static_resources"]["listeners"] = [plain(inline_routes(x, routes))
                                             for x in by_name(resources, names.LISTENER_TYPE).values()]
    return data


def envoy_validates(workload: ir.Workload, resources: Sequence[Built], folder: Path) -> None:
    path = folder / f"{workload.node_id}.yaml"
    path.write_text(yaml.safe_dump(static_bootstrap(workload, resources)))
    done = subprocess.run([str(envoy_path()), "--mode", "validate", "-c", str(path)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


GOLDEN_PROXIES = [(case, workload) for case in CASES for workload in load_case(case)[1]]


@pytest.mark.envoy
@pytest.mark.parametrize(("case", "workload"), GOLDEN_PROXIES, ids=lambda v: getattr(v, "name", None)
                         or getattr(v, "node_id", ""))
def test_real_envoy_accepts_every_golden_proxys_configuration(case: Path, workload: ir.Workload,
                                                              tmp_path: Path) -> None:
    world, workloads = load_case(case)
    config, _ = build(world, workloads)
    envoy_validates(workload, translate(config, workload), tmp_path)


@pytest.mark.envoy
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meshes())
def test_real_envoy_accepts_generated_meshes(mesh: tuple[ir.MeshConfig, list[ir.Workload]]) -> None:
    config, workloads = mesh
    with tempfile.TemporaryDirectory() as folder:
        for workload in workloads:
            envoy_validates(workload, translate(config, workload), Path(folder))
