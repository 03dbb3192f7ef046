"""Translation of ingress gateway proxies (``xds.ingress``): hand-made IR, golden gateway proxies, real Envoy.

What must hold for every gateway: each host's TLS chain is chosen by its names and presents its own
certificate, client certificates are checked where the mode asks, plaintext reaches only hosts that
accept it, a gateway rule combines with the destination service's own routes, a service the gateway
may not call answers 403, and every reference is answered (secrets exactly by ``gateway_secrets``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_v3
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2 as tcp_proxy_v3
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2 as tls_v3

from meshplane.controlplane import ir
from meshplane.controlplane.build import build
from meshplane.xds import messages, names
from meshplane.xds.ingress import _combine, gateway_secrets, translate_gateway
from meshplane.xds.translate import DENIED_BODY, Built, dangling_refs
from tests.test_golden import CASES, load_case, secret_refs
from tests.tlsserver import make_certificates
from tests.xds.test_translate import (
    by_name,
    check_invariants,
    envoy_validates,
    secret_names,
    serialized,
    static_bootstrap,
    throwaway_certificate,
    tls_context,
    unpack,
    uri_san,
    with_static_secrets,
)

MESH = "shop/shop-mesh"
TRUST_DOMAIN = "shop-mesh.shop.mesh.local"
GATEWAY = "shop/gw"
IDENTITY = ir.gateway_identity(TRUST_DOMAIN, "shop", "gw")
WORKLOAD = ir.Workload("gw-0", "", "127.0.0.30", gateway=GATEWAY)
V1, V2 = "shop/catalog-v1", "shop/catalog-v2"
V1_CLUSTER, V2_CLUSTER = names.outbound_cluster(V1, 8080), names.outbound_cluster(V2, 8080)
ADMITTED = ir.Callers(identities=(IDENTITY,))


# ------------------------------------------------------------------------------------- fixtures


def spiffe(key: str) -> str:
    namespace, name = key.split("/")
    return ir.service_identity(TRUST_DOMAIN, namespace, name)


def forward(prefix: str = "/", *backends: tuple[str, int], grpc: bool = False, timeout_ms: int = 15_000) -> ir.Route:
    """A service route on port 8080 over (deployment, weight); all to v1 by default."""
    return ir.Route(f"service route {prefix}", prefix, grpc, timeout_ms,
                    backends=tuple(ir.Backend(d, 8080, w) for d, w in backends or [(V1, 1)]))


def catalog(*routes: ir.Route, callers: ir.Callers = ADMITTED, mtls: ir.Mtls = ir.Mtls.PERMISSIVE,
            hosts: tuple[str, ...] = ("catalog.shop.mesh",)) -> ir.Service:
    return ir.Service("shop/catalog", MESH, spiffe("shop/catalog"), hosts, mtls,
                      (ir.ServicePort(8080, ir.Protocol.HTTP, routes or (forward(),)),), callers)


def rule(prefix: str = "/", *, service: str = "shop/catalog", port: int = 8080, **options: Any) -> ir.GatewayRoute:
    return ir.GatewayRoute(f"gateway rule {prefix}", service, port, prefix, **options)


def secret(name: str) -> ir.SecretRef:
    return ir.SecretRef(f"shop/{name}", f"fingerprint of {name}")


def host(name: str, *routes: ir.GatewayRoute, tls: ir.ListenerTls = ir.ListenerTls.DISABLED,
         hostnames: tuple[str, ...] | None = None, ca: bool = False,
         client_names: tuple[str, ...] = ()) -> ir.GatewayHost:
    """A host named ``<name>.example.com``; TLS modes get the certificate ``<name>-cert`` (and ``<name>-ca``)."""
    certificate = secret(f"{name}-cert") if tls is not ir.ListenerTls.DISABLED else None
    return ir.GatewayHost(name, hostnames if hostnames is not None else (f"{name}.example.com",),
                          routes or (rule(),), tls, certificate, secret(f"{name}-ca") if ca else None, client_names)


def http_port(*hosts: ir.GatewayHost, port: int = 8443) -> ir.GatewayListener:
    return ir.GatewayListener(port, ir.Protocol.HTTP, hosts)


def mesh_config(*listeners: ir.GatewayListener, services: Sequence[ir.Service] = (),
                endpoints: tuple[str, ...] = ("127.0.0.30",)) -> ir.MeshConfig:
    deployments = (ir.Deployment(V1, "shop/catalog", None, (ir.Port(8080, ir.Protocol.HTTP, 15_000),), ("127.0.0.11",)),
                   ir.Deployment(V2, "shop/catalog", None, (ir.Port(8080, ir.Protocol.HTTP, 15_000),), ("127.0.0.12",)))
    gateway = ir.Gateway(GATEWAY, MESH, IDENTITY, listeners, endpoints)
    return ir.MeshConfig((ir.Mesh(MESH, TRUST_DOMAIN, ir.Mtls.PERMISSIVE),), tuple(services) or (catalog(),),
                         deployments, (gateway,))


def translated(config: ir.MeshConfig) -> tuple[Built, ...]:
    resources = translate_gateway(config, WORKLOAD)
    check_gateway(config, resources)
    return resources


def check_gateway(config: ir.MeshConfig, resources: Sequence[Built]) -> None:
    """Every reference answered, secrets exactly ``gateway_secrets``; no empty split, one claimant per name."""
    secrets = gateway_secrets(config, WORKLOAD)
    assert {name for name, _ in secrets} == secret_names(resources)
    assert dangling_refs(resources) == secret_refs(secrets)
    check_invariants(resources, secrets)


def listener(resources: Sequence[Built], port: int) -> Any:
    return by_name(resources, names.LISTENER_TYPE)[names.gateway_listener(port)]


def route_config(resources: Sequence[Built], port: int, host_name: str | None) -> Any:
    return by_name(resources, names.ROUTE_TYPE)[names.gateway_routes(port, host_name)]


def routes_for(resources: Sequence[Built], host_name: str) -> Any:
    """The one route configuration with a virtual host for ``host_name`` (a plaintext host's is the port's
    ``*plaintext`` one)."""
    [found] = [c for c in by_name(resources, names.ROUTE_TYPE).values()
               if any(v.name == f"{GATEWAY}|{host_name}" for v in c.virtual_hosts)]
    return found


def manager(chain: Any) -> Any:
    [f] = chain.filters
    assert f.name == messages.HCM_FILTER
    return unpack(f.typed_config, hcm_v3.HttpConnectionManager)


def downstream(chain: Any) -> Any:
    return tls_context(chain.transport_socket, tls_v3.DownstreamTlsContext)


def virtual_host(config: Any, authority: str) -> Any:
    """The virtual host Envoy picks for ``authority``: exact domain, else the longest ``*.`` suffix, else ``*``."""
    wanted = authority.lower()
    exact = [v for v in config.virtual_hosts if wanted in v.domains]
    suffix = sorted(((len(d), v) for v in config.virtual_hosts for d in v.domains
                     if d.startswith("*") and d != "*" and wanted.endswith(d[1:])), key=lambda x: -x[0])
    fallback = [v for v in config.virtual_hosts if "*" in v.domains]
    found = exact or [v for _, v in suffix] or fallback
    return found[0] if found else None


def pick(config: Any, authority: str, path: str, content_type: str = "") -> Any:
    """The route Envoy would take for a request (exact path, prefix and content-type prefix matches), or None."""
    vhost = virtual_host(config, authority)
    for candidate in vhost.routes if vhost is not None else ():
        headers_match = all(content_type.startswith(h.string_match.prefix) for h in candidate.match.headers)
        path_match = (path == candidate.match.path if candidate.match.HasField("path")
                      else path.startswith(candidate.match.prefix))
        if path_match and headers_match:
            return candidate
    return None


def clusters_of(route: Any) -> list[tuple[str, int]]:
    action = route.route
    if action.cluster:
        return [(action.cluster, 100)]
    return [(c.name, c.weight.value) for c in action.weighted_clusters.clusters]


# -------------------------------------------------------------------------------------- _combine


@pytest.mark.parametrize(("gateway", "service", "rewrite", "expected"), [
    ("/", "/", False, ("/", None)),
    ("/", "/api", False, ("/api", None)),  # the service's prefix is narrower: it decides
    ("/shop", "/", False, ("/shop", None)),  # the gateway's is narrower
    ("/shop/cart", "/shop", False, ("/shop/cart", None)),
    ("/api", "/apiv2", False, ("/apiv2", None)),  # prefixes are strings, not path segments (as in Envoy)
    ("/a", "/b", False, None),  # no path matches both
    ("/shop/", "/shop", False, ("/shop/", None)),
    ("/", "/api", True, ("/api", "/api")),  # rewriting / to / changes nothing
    ("/shop/", "/", True, ("/shop/", "/")),
    ("/shop/", "/api", True, ("/shop/api", "/api")),
    ("/shop", "/", True, ("/shop/", "/")),
    ("/shop", "/api", True, ("/shop/api", "/api")),
])
def test_combine(gateway: str, service: str, rewrite: bool, expected: tuple[str, str | None] | None) -> None:
    assert _combine(gateway, service, rewrite=rewrite) == expected


def two_route_catalog() -> ir.Service:
    """catalog splits /api 90/10 over v1 and v2 and sends the rest to v1 (as the gateway-rewrites golden case)."""
    return catalog(forward("/api", (V1, 90), (V2, 10)), forward("/", (V1, 100)))


def test_with_path_rewrite_the_services_routes_see_the_path_after_the_gateways_prefix() -> None:
    config = mesh_config(http_port(host("store", rule("/shop/", rewrite_path=True))), services=[two_route_catalog()])
    routes = routes_for(translated(config), "store")
    api = pick(routes, "store.example.com", "/shop/api/items")
    assert clusters_of(api) == [(V1_CLUSTER, 90), (V2_CLUSTER, 10)]
    assert (api.match.prefix, api.route.prefix_rewrite) == ("/shop/api", "/api")
    rest = pick(routes, "store.example.com", "/shop/cart")
    assert clusters_of(rest) == [(V1_CLUSTER, 100)]
    assert (rest.match.prefix, rest.route.prefix_rewrite) == ("/shop/", "/")
    assert pick(routes, "store.example.com", "/api") is None  # outside the gateway rule's prefix


def test_without_path_rewrite_both_prefixes_must_hold() -> None:
    config = mesh_config(http_port(host("store", rule("/api/v2"), rule("/"))), services=[two_route_catalog()])
    routes = routes_for(translated(config), "store")
    narrow = pick(routes, "store.example.com", "/api/v2/items")
    assert narrow.match.prefix == "/api/v2" and clusters_of(narrow) == [(V1_CLUSTER, 90), (V2_CLUSTER, 10)]
    assert not narrow.route.prefix_rewrite
    assert clusters_of(pick(routes, "store.example.com", "/api/v1")) == [(V1_CLUSTER, 90), (V2_CLUSTER, 10)]
    assert clusters_of(pick(routes, "store.example.com", "/index.html")) == [(V1_CLUSTER, 100)]


def test_a_path_the_services_routes_do_not_match_gets_404_within_the_rules_prefix() -> None:
    config = mesh_config(http_port(host("store", rule("/shop/"), rule("/"))),
                         services=[catalog(forward("/api"))])
    routes = routes_for(translated(config), "store")
    assert pick(routes, "store.example.com", "/shop/cart").direct_response.status == 404  # /shop/ ∩ /api is empty
    assert pick(routes, "store.example.com", "/elsewhere").direct_response.status == 404
    assert clusters_of(pick(routes, "store.example.com", "/api/items")) == [(V1_CLUSTER, 100)]


def test_a_request_for_exactly_the_rewritten_prefix_reaches_the_service_as_root() -> None:
    config = mesh_config(http_port(host("store", rule("/shop", rewrite_path=True))))
    found = pick(routes_for(translated(config), "store"), "store.example.com", "/shop")
    assert found.HasField("route"), found
    assert clusters_of(found) == [(V1_CLUSTER, 100)]


# -------------------------------------------------------------------------------------- options


def test_the_rules_timeout_replaces_the_services_and_none_keeps_it() -> None:
    config = mesh_config(http_port(host("store", rule("/fast", timeout_ms=2500), rule("/"))),
                         services=[catalog(forward("/", timeout_ms=60_000))])
    routes = routes_for(translated(config), "store")
    assert pick(routes, "store.example.com", "/fast").route.timeout.ToMilliseconds() == 2500
    assert pick(routes, "store.example.com", "/slow").route.timeout.ToMilliseconds() == 60_000


def test_host_rewrite_sets_the_host_header_on_every_forwarded_route() -> None:
    config = mesh_config(http_port(host("store", rule(rewrite_host="catalog.shop.mesh"))),
                         services=[two_route_catalog()])
    routes = routes_for(translated(config), "store")
    forwarded = [r for v in routes.virtual_hosts for r in v.routes if r.HasField("route")]
    assert len(forwarded) == 2
    assert {r.route.host_rewrite_literal for r in forwarded} == {"catalog.shop.mesh"}


@pytest.mark.parametrize(("rule_grpc", "route_grpc"), [(True, False), (False, True), (True, True)])
def test_a_grpc_rule_or_service_route_matches_grpc_content_types_only(rule_grpc: bool, route_grpc: bool) -> None:
    config = mesh_config(http_port(host("api", rule("/pkg.Svc/", grpc=rule_grpc))),
                         services=[catalog(forward("/", grpc=route_grpc))])
    routes = routes_for(translated(config), "api")
    grpc = pick(routes, "api.example.com", "/pkg.Svc/Call", "application/grpc+proto")
    assert clusters_of(grpc) == [(V1_CLUSTER, 100)]
    miss = pick(routes, "api.example.com", "/pkg.Svc/Call", "text/html")
    assert miss is None or not miss.HasField("route")


def test_virtual_hosts_match_each_name_with_and_without_the_port() -> None:
    config = mesh_config(http_port(host("store", hostnames=("*.shop.example.com", "shop.example.com")), port=8080))
    [vhost] = route_config(translated(config), 8080, None).virtual_hosts
    assert list(vhost.domains) == ["*.shop.example.com", "*.shop.example.com:8080", "shop.example.com",
                                   "shop.example.com:8080"]


# -------------------------------------------------------------------------------------- access


def test_a_service_the_gateway_may_not_call_answers_403_and_gets_no_cluster() -> None:
    """Default deny, and allVirtualServices does not cover a gateway (it is no virtual service)."""
    for callers in (ir.Callers(), ir.Callers(all_services=True)):
        config = mesh_config(http_port(host("store", rule("/shop/"))), services=[catalog(callers=callers)])
        resources = translated(config)
        [vhost] = routes_for(resources, "store").virtual_hosts
        [denied] = vhost.routes
        assert denied.match.prefix == "/shop/"
        assert (denied.direct_response.status, denied.direct_response.body.inline_string) == (403, DENIED_BODY)
        assert not by_name(resources, names.CLUSTER_TYPE)
        assert gateway_secrets(config, WORKLOAD) == ()


def test_a_rule_to_a_service_missing_from_the_ir_answers_503() -> None:
    config = mesh_config(http_port(host("store", rule(service="shop/ghost"))))
    [vhost] = routes_for(translated(config), "store").virtual_hosts
    assert [r.direct_response.status for r in vhost.routes] == [503]


@pytest.mark.parametrize("mtls", [ir.Mtls.PERMISSIVE, ir.Mtls.STRICT])
def test_the_gateway_calls_a_mutual_tls_service_as_its_own_identity(mtls: ir.Mtls) -> None:
    config = mesh_config(http_port(host("store")), services=[catalog(mtls=mtls)])
    resources = translated(config)
    cluster = by_name(resources, names.CLUSTER_TYPE)[V1_CLUSTER]
    context = tls_context(cluster.transport_socket, tls_v3.UpstreamTlsContext)
    [certificate] = context.common_tls_context.tls_certificate_sds_secret_configs
    assert certificate.name == names.WORKLOAD_SECRET
    combined = context.common_tls_context.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == names.trust_bundle(TRUST_DOMAIN)
    assert list(combined.default_validation_context.match_typed_subject_alt_names) == [
        uri_san(exact=spiffe("shop/catalog"))]
    assert (names.WORKLOAD_SECRET, IDENTITY) in gateway_secrets(config, WORKLOAD)


def test_the_gateway_calls_a_disabled_service_in_plaintext_and_needs_no_certificate_of_its_own() -> None:
    config = mesh_config(http_port(host("store"), port=8080), services=[catalog(mtls=ir.Mtls.DISABLED)])
    resources = translated(config)
    assert not by_name(resources, names.CLUSTER_TYPE)[V1_CLUSTER].HasField("transport_socket")
    assert gateway_secrets(config, WORKLOAD) == ()


# ------------------------------------------------------------------------------------------ TLS


def all_modes() -> ir.MeshConfig:
    """Four hosts on one HTTP port, one per TLS mode (the golden case gateway-tls-modes has a port each)."""
    return mesh_config(http_port(
        host("plain"),
        host("mixed", tls=ir.ListenerTls.PERMISSIVE, ca=True),
        host("secure", tls=ir.ListenerTls.TLS),
        host("partners", tls=ir.ListenerTls.MUTUAL_TLS, ca=True,
             client_names=("acme.example.com", "spiffe://partners.example.com/acme"))))


def chains_by_name(resources: Sequence[Built], port: int) -> dict[str, Any]:
    return {c.name: c for c in listener(resources, port).filter_chains}


def test_each_tls_host_has_a_chain_chosen_by_its_names_presenting_its_own_certificate() -> None:
    resources = translated(all_modes())
    chains = chains_by_name(resources, 8443)
    assert list(chains) == [names.gateway_routes(8443, h) for h in ("mixed", "secure", "partners")] + [
        names.gateway_routes(8443, None)]
    for name in ("mixed", "secure", "partners"):
        chain = chains[names.gateway_routes(8443, name)]
        assert list(chain.filter_chain_match.server_names) == [f"{name}.example.com"]
        [certificate] = downstream(chain).common_tls_context.tls_certificate_sds_secret_configs
        assert certificate.name == names.server_certificate(f"shop/{name}-cert") == f"tls|shop/{name}-cert"
        assert certificate.sds_config.HasField("ads")
        assert manager(chain).rds.route_config_name == names.gateway_routes(8443, name)
        [vhost] = route_config(resources, 8443, name).virtual_hosts  # a TLS chain routes its own host only
        assert vhost.name == f"{GATEWAY}|{name}"


def test_mutual_tls_requires_a_client_certificate_from_the_ca_bundle_with_one_of_the_names() -> None:
    chain = chains_by_name(translated(all_modes()), 8443)[names.gateway_routes(8443, "partners")]
    context = downstream(chain)
    assert context.require_client_certificate.value is True
    combined = context.common_tls_context.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == names.client_ca("shop/partners-ca")
    assert combined.validation_context_sds_secret_config.sds_config.HasField("ads")
    found = combined.default_validation_context.match_typed_subject_alt_names
    matchers = {(m.san_type, m.matcher.exact) for m in found}
    san = type(found[0])
    assert matchers == {(kind, name) for name in ("acme.example.com", "spiffe://partners.example.com/acme")
                        for kind in (san.DNS, san.URI)}


def test_permissive_checks_an_offered_client_certificate_without_requiring_one() -> None:
    context = downstream(chains_by_name(translated(all_modes()), 8443)[names.gateway_routes(8443, "mixed")])
    assert context.require_client_certificate.value is False
    combined = context.common_tls_context.combined_validation_context
    assert combined.validation_context_sds_secret_config.name == names.client_ca("shop/mixed-ca")
    assert not combined.default_validation_context.match_typed_subject_alt_names


def test_tls_without_a_ca_bundle_asks_for_no_client_certificate() -> None:
    context = downstream(chains_by_name(translated(all_modes()), 8443)[names.gateway_routes(8443, "secure")])
    assert context.require_client_certificate.value is False
    assert not context.common_tls_context.HasField("combined_validation_context")


def test_tls_and_plaintext_on_one_port_are_told_apart_by_the_tls_inspector() -> None:
    found = listener(translated(all_modes()), 8443)
    assert [f.name for f in found.listener_filters] == [messages.TLS_INSPECTOR_FILTER]
    protocols = [c.filter_chain_match.transport_protocol for c in found.filter_chains]
    assert protocols == [messages.TLS_PROTOCOL] * 3 + [messages.PLAINTEXT_PROTOCOL]
    assert not found.filter_chains[-1].HasField("transport_socket")


def test_the_plaintext_chain_serves_only_disabled_and_permissive_hosts() -> None:
    resources = translated(all_modes())
    plaintext = route_config(resources, 8443, None)
    assert [v.name for v in plaintext.virtual_hosts] == [f"{GATEWAY}|plain", f"{GATEWAY}|mixed"]
    assert virtual_host(plaintext, "secure.example.com") is None  # TLS-only hosts cannot be reached in plaintext
    assert virtual_host(plaintext, "partners.example.com") is None


def test_a_port_of_tls_hosts_only_has_no_plaintext_chain_and_no_transport_protocol_match() -> None:
    resources = translated(mesh_config(http_port(host("a", tls=ir.ListenerTls.TLS),
                                                 host("b", tls=ir.ListenerTls.MUTUAL_TLS, ca=True))))
    found = listener(resources, 8443)
    assert [c.name for c in found.filter_chains] == [names.gateway_routes(8443, "a"), names.gateway_routes(8443, "b")]
    assert all(not c.filter_chain_match.transport_protocol for c in found.filter_chains)
    assert [f.name for f in found.listener_filters] == [messages.TLS_INSPECTOR_FILTER]  # SNI needs it
    assert names.gateway_routes(8443, None) not in by_name(resources, names.ROUTE_TYPE)


def test_a_port_of_plaintext_hosts_only_is_one_chain_without_match_or_inspector() -> None:
    resources = translated(mesh_config(http_port(host("a"), host("b"), port=8080)))
    found = listener(resources, 8080)
    [chain] = found.filter_chains
    assert not chain.HasField("filter_chain_match") and not chain.HasField("transport_socket")
    assert not found.listener_filters
    assert [v.name for v in route_config(resources, 8080, None).virtual_hosts] == [f"{GATEWAY}|a", f"{GATEWAY}|b"]


def test_gateway_secrets_are_exactly_the_secrets_the_resources_name_with_their_sources() -> None:
    config = all_modes()
    resources = translated(config)
    assert gateway_secrets(config, WORKLOAD) == tuple(sorted([
        ("ca|shop/mixed-ca", "shop/mixed-ca"), ("ca|shop/partners-ca", "shop/partners-ca"),
        ("tls|shop/mixed-cert", "shop/mixed-cert"), ("tls|shop/partners-cert", "shop/partners-cert"),
        ("tls|shop/secure-cert", "shop/secure-cert"),
        (names.trust_bundle(TRUST_DOMAIN), TRUST_DOMAIN), (names.WORKLOAD_SECRET, IDENTITY)]))
    assert secret_names(resources) == {name for name, _ in gateway_secrets(config, WORKLOAD)}


def test_tls_chains_offer_http2_and_http11_by_alpn() -> None:
    for name in ("mixed", "secure", "partners"):
        context = downstream(chains_by_name(translated(all_modes()), 8443)[names.gateway_routes(8443, name)])
        assert {"h2", "http/1.1"} <= set(context.common_tls_context.alpn_protocols)


# ------------------------------------------------------------------------- one name, one claimant


def test_plaintext_hosts_sharing_a_name_give_unique_domains() -> None:
    shared = ("shop.example.com",)
    config = mesh_config(http_port(host("a", hostnames=shared), host("b", hostnames=shared), port=8080))
    check_gateway(config, translate_gateway(config, WORKLOAD))


def test_tls_hosts_sharing_a_name_give_unique_server_names() -> None:
    config = mesh_config(http_port(host("a", tls=ir.ListenerTls.TLS, hostnames=("shop.example.com",)),
                                   host("b", tls=ir.ListenerTls.TLS, hostnames=("shop.example.com",))))
    check_gateway(config, translate_gateway(config, WORKLOAD))


# ------------------------------------------------------------------------------------- TCP, TLS


def l4_config(protocol: ir.Protocol, *hosts: ir.GatewayHost) -> ir.MeshConfig:
    port = 443 if protocol is ir.Protocol.TLS_PASSTHROUGH else 5432
    services = [ir.Service(f"shop/{name}", MESH, spiffe(f"shop/{name}"), (), ir.Mtls.DISABLED, (ir.ServicePort(
        port, protocol, (ir.Route("first", backends=(ir.Backend(f"shop/{name}-v1", port, 1),)),)),), ADMITTED)
        for name in ("one", "two")]
    deployments = tuple(ir.Deployment(f"shop/{name}-v1", f"shop/{name}", None, (ir.Port(port, protocol, 0),),
                                      ("127.0.0.11",)) for name in ("one", "two"))
    gateway = ir.Gateway(GATEWAY, MESH, IDENTITY, (ir.GatewayListener(9000, protocol, hosts),))
    return ir.MeshConfig((ir.Mesh(MESH, TRUST_DOMAIN, ir.Mtls.DISABLED),), tuple(services), deployments, (gateway,))


def l4_rule(to: str, protocol: ir.Protocol) -> ir.GatewayRoute:
    return ir.GatewayRoute(f"rule to {to}", f"shop/{to}", 443 if protocol is ir.Protocol.TLS_PASSTHROUGH else 5432)


def tcp_cluster(chain: Any) -> str:
    [f] = chain.filters
    assert f.name == messages.TCP_PROXY_FILTER
    return str(unpack(f.typed_config, tcp_proxy_v3.TcpProxy).cluster)


def test_a_tcp_port_goes_wholly_to_the_first_rule_of_its_first_host_with_one() -> None:
    tcp = ir.Protocol.TCP
    config = l4_config(tcp, ir.GatewayHost("empty", (), ()),
                       ir.GatewayHost("db", (), (l4_rule("one", tcp), l4_rule("two", tcp))),
                       ir.GatewayHost("other", (), (l4_rule("two", tcp),)))
    found = listener(translated(config), 9000)
    [chain] = found.filter_chains
    assert not chain.HasField("filter_chain_match") and not found.listener_filters
    assert tcp_cluster(chain) == names.outbound_cluster("shop/one-v1", 5432)


def test_tls_passthrough_has_a_chain_per_host_by_sni_and_the_first_host_keeps_a_shared_name() -> None:
    tls = ir.Protocol.TLS_PASSTHROUGH
    config = l4_config(tls, ir.GatewayHost("a", ("a.example.com", "shared.example.com"), (l4_rule("one", tls),)),
                       ir.GatewayHost("b", ("b.example.com", "shared.example.com"), (l4_rule("two", tls),)),
                       ir.GatewayHost("c", ("shared.example.com",), (l4_rule("two", tls),)))
    found = listener(translated(config), 9000)
    assert [f.name for f in found.listener_filters] == [messages.TLS_INSPECTOR_FILTER]
    assert [(list(c.filter_chain_match.server_names), tcp_cluster(c)) for c in found.filter_chains] == [
        (["a.example.com", "shared.example.com"], names.outbound_cluster("shop/one-v1", 443)),
        (["b.example.com"], names.outbound_cluster("shop/two-v1", 443))]  # c has no name left: no chain
    assert not any(c.HasField("transport_socket") for c in found.filter_chains)


@pytest.mark.parametrize("protocol", [ir.Protocol.TCP, ir.Protocol.TLS_PASSTHROUGH])
def test_an_l4_port_with_nowhere_to_send_gets_no_listener(protocol: ir.Protocol) -> None:
    config = l4_config(protocol, ir.GatewayHost("a", ("a.example.com",), ()))
    assert names.gateway_listener(9000) not in by_name(translate_gateway(config, WORKLOAD), names.LISTENER_TYPE)


# ---------------------------------------------------------------------------------------- misc


def test_a_workload_of_a_gateway_that_is_not_served_gets_nothing() -> None:
    ghost = ir.Workload("ghost-0", "", "127.0.0.99", gateway="shop/ghost")
    assert translate_gateway(all_modes(), ghost) == ()
    assert gateway_secrets(all_modes(), ghost) == ()


def test_every_listener_binds_the_proxys_own_address_on_the_gateway_port() -> None:
    config = mesh_config(http_port(host("a"), port=8080), http_port(host("b", tls=ir.ListenerTls.TLS), port=8443))
    for port in (8080, 8443):
        address = listener(translated(config), port).address.socket_address
        assert (address.address, address.port_value) == (WORKLOAD.address, port)


def test_translating_twice_gives_identical_bytes() -> None:
    assert serialized(translate_gateway(all_modes(), WORKLOAD)) == serialized(translate_gateway(all_modes(), WORKLOAD))


# --------------------------------------------------------------------------- golden gateway proxies


GOLDEN_GATEWAYS = [(case, w) for case in CASES for w in load_case(case)[1] if w.gateway is not None]


def golden_id(value: Any) -> str:
    return str(getattr(value, "name", None) or getattr(value, "node_id", ""))


def test_there_are_golden_gateway_proxies() -> None:
    assert len(GOLDEN_GATEWAYS) >= 8


@pytest.mark.parametrize(("case", "workload"), GOLDEN_GATEWAYS, ids=golden_id)
def test_every_golden_gateway_proxy_keeps_the_invariants(case: Path, workload: ir.Workload) -> None:
    world, workloads = load_case(case)
    config, _ = build(world, workloads)
    resources = translate_gateway(config, workload)
    assert resources, f"{case.name}: {workload.node_id} gets nothing"
    secrets = gateway_secrets(config, workload)
    check_invariants(resources, secrets)
    clusters = by_name(resources, names.CLUSTER_TYPE)
    for config_message in by_name(resources, names.ROUTE_TYPE).values():
        for vhost in config_message.virtual_hosts:
            for found in vhost.routes:
                if found.HasField("route"):
                    assert all(name in clusters for name, _ in clusters_of(found)), found.name


# ------------------------------------------------------------------------------------ real Envoy


@pytest.mark.envoy
def test_real_envoy_accepts_every_tls_mode_on_one_port_with_real_secrets() -> None:
    config = all_modes()
    resources = translated(config)
    data = static_bootstrap(WORKLOAD, resources)
    with_static_secrets(data, gateway_secrets(config, WORKLOAD), throwaway_certificate(),
                        make_certificates(["gateway.example.test"]))
    with tempfile.TemporaryDirectory() as folder:
        envoy_validates(WORKLOAD, data, Path(folder))
