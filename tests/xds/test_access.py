"""Access policies in Envoy's terms: scoped outbound configuration, inbound RBAC, and egress.

Hand-made IR (as :mod:`tests.xds.test_translate` makes it) with explicit ``callers`` per service and
``egress`` per mesh, so each test says exactly who may call what; build's side is in
tests/controlplane/test_policies.py.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from envoy.config.rbac.v3 import rbac_pb2 as rbac_v3
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_http_v3
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_v3
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as rbac_network_v3
from envoy.extensions.filters.network.sni_dynamic_forward_proxy.v3 import sni_dynamic_forward_proxy_pb2 as sni_v3

from meshplane.controlplane import ir
from meshplane.xds import messages, names
from meshplane.xds.translate import (
    DENIED_BODY,
    Built,
    _authority_regex,
    required_secrets,
    translate,
)
from tests.xds.test_translate import (
    ANY_SERVICE,
    CATALOG,
    CATALOG_PORTS,
    FRONTEND,
    MESH,
    TRUST_DOMAIN,
    by_name,
    check_invariants,
    envoy_validates,
    inbound_listener,
    secret_names,
    spiffe,
    static_bootstrap,
    tls_mesh,
    unpack,
)

NOBODY = ir.Callers()
FRONTEND_V1 = ir.Deployment("shop/frontend-v1", "shop/frontend", None, (), ("127.0.0.21",))


def only(*keys: str) -> ir.Callers:
    return ir.Callers(identities=tuple(sorted(spiffe(k) for k in keys)))


def one_port_service(key: str, number: int, protocol: ir.Protocol, callers: ir.Callers, *,
                     hosts: tuple[str, ...] = ()) -> tuple[ir.Service, ir.Deployment]:
    """A PERMISSIVE service with one port, all of it to its one live deployment ``<key>-v1``; host
    ``<name>.shop.mesh`` by default."""
    deployment = f"{key}-v1"
    port = ir.ServicePort(number, protocol, (ir.Route("test rule", backends=(ir.Backend(deployment, number, 1),)),))
    service = ir.Service(key, MESH, spiffe(key), hosts or (key.split("/")[1] + ".shop.mesh",), ir.Mtls.PERMISSIVE,
                         (port,), callers)
    address = f"127.0.0.{30 + sum(map(ord, key)) % 200}"
    return service, ir.Deployment(deployment, key, None, (ir.Port(number, protocol, 0),), (address,))


def mesh_config(*parts: tuple[ir.Service, ir.Deployment], egress: Sequence[ir.External] = ()) -> ir.MeshConfig:
    """The test mesh (PERMISSIVE) with ``parts`` and frontend (no ports; calls what the parts' callers allow)."""
    frontend = ir.Service("shop/frontend", MESH, spiffe("shop/frontend"), (), ir.Mtls.PERMISSIVE, (), NOBODY)
    services = (*(s for s, _ in parts), frontend)
    deployments = (*(d for _, d in parts), FRONTEND_V1)
    return ir.MeshConfig((ir.Mesh(MESH, TRUST_DOMAIN, ir.Mtls.PERMISSIVE, tuple(egress)),), services, deployments)


def with_service(config: ir.MeshConfig, key: str, **changes: Any) -> ir.MeshConfig:
    services = tuple(replace(s, **changes) if s.key == key else s for s in config.services)
    return ir.MeshConfig(config.meshes, services, config.deployments)


def with_catalog(config: ir.MeshConfig, **changes: Any) -> ir.MeshConfig:
    return with_service(config, "shop/catalog", **changes)


def virtual_hosts(resources: Sequence[Built]) -> list[Any]:
    return list(by_name(resources, names.ROUTE_TYPE)[names.OUTBOUND_HTTP].virtual_hosts)


def listener_names(resources: Sequence[Built]) -> list[str]:
    return sorted(by_name(resources, names.LISTENER_TYPE))


def checked(config: ir.MeshConfig, workload: ir.Workload) -> tuple[Built, ...]:
    resources = translate(config, workload)
    check_invariants(resources, required_secrets(config, workload))
    assert {name for name, _ in required_secrets(config, workload)} == secret_names(resources)
    return resources


# ------------------------------------------------------------------------------- outbound scoping


def test_a_caller_allowed_nothing_gets_only_the_403_virtual_host() -> None:
    config = mesh_config(one_port_service("shop/catalog", 8080, ir.Protocol.HTTP, NOBODY),
                         one_port_service("shop/db", 5432, ir.Protocol.TCP, NOBODY),
                         one_port_service("shop/web", 443, ir.Protocol.TLS_PASSTHROUGH, NOBODY,
                                          hosts=("www.shop.example",)))
    resources = checked(config, FRONTEND)
    [other] = virtual_hosts(resources)
    assert (other.name, list(other.domains)) == (names.OUTBOUND_OTHER, ["*"])
    [denied] = other.routes
    assert (denied.direct_response.status, denied.direct_response.body.inline_string) == (403, DENIED_BODY)
    assert not by_name(resources, names.CLUSTER_TYPE) and not by_name(resources, names.ENDPOINT_TYPE)
    assert listener_names(resources) == [names.OUTBOUND_HTTP]
    assert required_secrets(config, FRONTEND) == ()  # no mutual TLS cluster to present a certificate on


@pytest.mark.parametrize("allowed", ["shop/catalog", "shop/reviews"])
def test_a_caller_allowed_one_of_two_services_gets_exactly_that_ones_host_and_clusters(allowed: str) -> None:
    config = mesh_config(*(one_port_service(key, 8080, ir.Protocol.HTTP, only("shop/frontend") if key == allowed
                                            else only("shop/catalog")) for key in ("shop/catalog", "shop/reviews")))
    resources = checked(config, FRONTEND)
    assert [v.name for v in virtual_hosts(resources)] == [names.virtual_host(allowed, 8080), names.OUTBOUND_OTHER]
    cluster = names.outbound_cluster(f"{allowed}-v1", 8080)
    assert list(by_name(resources, names.CLUSTER_TYPE)) == [cluster]
    assert list(by_name(resources, names.ENDPOINT_TYPE)) == [names.load_assignment(cluster)]
    assert secret_names(resources) == {names.WORKLOAD_SECRET, names.trust_bundle(TRUST_DOMAIN)}


def test_a_denied_owner_of_a_tcp_port_does_not_hand_it_to_another_service() -> None:
    """db-a owns 5432 mesh-wide (first by key); frontend may only call db-b, so it gets no 5432 at all."""
    config = mesh_config(one_port_service("shop/db-a", 5432, ir.Protocol.TCP, only("shop/db-b")),
                         one_port_service("shop/db-b", 5432, ir.Protocol.TCP, ANY_SERVICE))
    resources = checked(config, FRONTEND)
    assert listener_names(resources) == [names.OUTBOUND_HTTP]
    assert not by_name(resources, names.CLUSTER_TYPE)
    admitted = checked(with_service(config, "shop/db-a", callers=only("shop/frontend")), FRONTEND)
    assert listener_names(admitted) == [names.OUTBOUND_HTTP, names.outbound_tcp_listener(5432)]
    assert list(by_name(admitted, names.CLUSTER_TYPE)) == [names.outbound_cluster("shop/db-a-v1", 5432)]


def test_a_denied_owner_of_a_host_name_does_not_hand_it_to_another_service() -> None:
    same = ("catalog.shop.mesh",)
    config = mesh_config(one_port_service("shop/catalog", 8080, ir.Protocol.HTTP, NOBODY, hosts=same),
                         one_port_service("shop/catalog-next", 8080, ir.Protocol.HTTP, ANY_SERVICE, hosts=same))
    resources = checked(config, FRONTEND)
    assert [v.name for v in virtual_hosts(resources)] == [names.OUTBOUND_OTHER]  # the name lands on 403


# ------------------------------------------------------------------------------------ inbound RBAC


def chain_filters(resources: Sequence[Built], port: int) -> list[list[Any]]:
    listener, _ = inbound_listener(resources, port)
    return [list(chain.filters) for chain in listener.filter_chains]


def rbac_rules(filters: Sequence[Any]) -> Any:
    """The RBAC rules of an inbound chain, from its network filter or its HTTP connection manager's filter."""
    if filters[0].name == messages.RBAC_NETWORK_FILTER:
        return unpack(filters[0].typed_config, rbac_network_v3.RBAC).rules
    manager = unpack(filters[0].typed_config, hcm_v3.HttpConnectionManager)
    return unpack(manager.http_filters[0].typed_config, rbac_http_v3.RBAC).rules


@pytest.mark.parametrize("mode", list(ir.Mtls))
@pytest.mark.parametrize("port", sorted(CATALOG_PORTS))
def test_rbac_comes_first_on_every_inbound_chain(port: int, mode: ir.Mtls) -> None:
    resources = checked(tls_mesh(mode), CATALOG)
    for filters in chain_filters(resources, port):
        if CATALOG_PORTS[port].is_http:
            [hcm] = filters
            manager = unpack(hcm.typed_config, hcm_v3.HttpConnectionManager)
            assert [f.name for f in manager.http_filters] == [messages.RBAC_HTTP_FILTER, messages.ROUTER_FILTER]
        else:
            assert [f.name for f in filters] == [messages.RBAC_NETWORK_FILTER, messages.TCP_PROXY_FILTER]


@pytest.mark.parametrize("mode", list(ir.Mtls))
@pytest.mark.parametrize("port", sorted(CATALOG_PORTS))
def test_no_callers_is_rbac_without_policies_so_everyone_is_denied(port: int, mode: ir.Mtls) -> None:
    resources = checked(with_catalog(tls_mesh(mode), callers=NOBODY), CATALOG)
    for filters in chain_filters(resources, port):
        rules = rbac_rules(filters)
        assert rules.action == rbac_v3.RBAC.ALLOW and not rules.policies


def principals(resources: Sequence[Built], port: int) -> list[list[Any]]:
    """The principals each chain of the inbound listener on ``port`` admits, in chain order."""
    return [list(rbac_rules(filters).policies["callers"].principals) for filters in chain_filters(resources, port)]


def identities(found: Sequence[Any]) -> list[tuple[str, str]]:
    """(exact, regex) of each principal, which must all be proven by certificate."""
    assert all(p.HasField("authenticated") for p in found), found
    return [(p.authenticated.principal_name.exact, p.authenticated.principal_name.safe_regex.regex) for p in found]


@pytest.mark.parametrize("mode", [ir.Mtls.STRICT, ir.Mtls.PERMISSIVE])
@pytest.mark.parametrize("port", [8080, 9090, 5432])
def test_mutual_tls_admits_exact_identities_and_every_service_by_regex(port: int, mode: ir.Mtls) -> None:
    gateway = ir.gateway_identity(TRUST_DOMAIN, "shop", "gw")
    callers = ir.Callers(True, (gateway, spiffe("shop/frontend")))
    by_certificate, *_ = principals(checked(with_catalog(tls_mesh(mode), callers=callers), CATALOG), port)
    assert identities(by_certificate) == [
        (gateway, ""), (spiffe("shop/frontend"), ""), ("", ir.service_identity_regex(TRUST_DOMAIN))]


def address_mesh(mode: ir.Mtls) -> ir.MeshConfig:
    """catalog (in ``mode``) callable by frontend (two live deployments) only; intruder has a workload too."""
    config = with_catalog(tls_mesh(mode), callers=only("shop/frontend"))
    intruder = ir.Service("shop/intruder", MESH, spiffe("shop/intruder"), (), mode, (), NOBODY)
    deployments = (*config.deployments, ir.Deployment("shop/frontend-v2", "shop/frontend", None, (), ("127.0.0.22",)),
                   ir.Deployment("shop/intruder-v1", intruder.key, None, (), ("127.0.0.31",)))
    return ir.MeshConfig(config.meshes, (*config.services, intruder), deployments)


def addresses(found: Sequence[Any]) -> list[tuple[str, int]]:
    assert all(p.HasField("direct_remote_ip") for p in found), found
    return [(p.direct_remote_ip.address_prefix, p.direct_remote_ip.prefix_len.value) for p in found]


FRONTEND_ADDRESSES = [("127.0.0.21", 32), ("127.0.0.22", 32)]


@pytest.mark.parametrize("port", sorted(CATALOG_PORTS))
def test_a_disabled_destination_admits_exactly_the_allowed_callers_addresses(port: int) -> None:
    [by_address] = principals(checked(address_mesh(ir.Mtls.DISABLED), CATALOG), port)
    assert addresses(by_address) == FRONTEND_ADDRESSES


@pytest.mark.parametrize("port", [8080, 9090, 5432])
def test_a_permissive_port_admits_certificates_over_mutual_tls_and_addresses_over_plaintext(port: int) -> None:
    by_certificate, by_address = principals(checked(address_mesh(ir.Mtls.PERMISSIVE), CATALOG), port)
    assert identities(by_certificate) == [(spiffe("shop/frontend"), "")]
    assert addresses(by_address) == FRONTEND_ADDRESSES


@pytest.mark.parametrize("mode", list(ir.Mtls))
def test_tls_passthrough_admits_by_address_whatever_the_mode(mode: ir.Mtls) -> None:
    [by_address] = principals(checked(address_mesh(mode), CATALOG), 443)
    assert addresses(by_address) == FRONTEND_ADDRESSES


def test_every_service_by_address_is_every_workload_of_the_mesh_and_only_of_it() -> None:
    config = address_mesh(ir.Mtls.DISABLED)
    elsewhere = ir.Mesh("shop/other-mesh", "other-mesh.shop.mesh.local", ir.Mtls.DISABLED)
    stranger = ir.Service("shop/stranger", elsewhere.key, "spiffe://other-mesh.shop.mesh.local/ns/shop/"
                          "virtualservice/stranger", (), ir.Mtls.DISABLED, (), NOBODY)
    config = with_catalog(ir.MeshConfig((*config.meshes, elsewhere), (*config.services, stranger), (
        *config.deployments, ir.Deployment("shop/stranger-v1", stranger.key, None, (), ("127.0.0.99",)))),
                          callers=ANY_SERVICE)
    [by_address] = principals(checked(config, CATALOG), 5432)
    assert addresses(by_address) == [(a, 32) for a in ("127.0.0.11", "127.0.0.21", "127.0.0.22", "127.0.0.31")]


# ------------------------------------------------------------------------------------ HTTP egress


@pytest.mark.parametrize(("hosts", "ports", "authority", "matches"), [
    (["api.example.com"], [], "api.example.com", True),
    (["api.example.com"], [], "API.Example.COM:8443", True),
    (["api.example.com"], [], "apixexample.com", False),  # the dot is literal
    (["api.example.com"], [], "api.example.com.evil.test", False),
    (["api.example.com"], [], "xapi.example.com", False),
    (["*.example.com"], [], "a.example.com", True),
    (["*.example.com"], [], "a.b.example.com:80", True),
    (["*.example.com"], [], "example.com", False),
    (["*.example.com"], [], "evil-example.com", False),
    (["*.example.com"], [], ".example.com", False),
    (["*"], [], "anything.test", True),
    (["*"], [], "anything.test:1234", True),
    (["*"], [], "", False),
    (["api.example.com"], [8080], "api.example.com:8080", True),
    (["api.example.com"], [8080], "api.example.com", False),  # a bare host is port 80
    (["api.example.com"], [8080], "api.example.com:80", False),
    (["api.example.com"], [8080], "api.example.com:80800", False),
    (["api.example.com"], [80, 8080], "api.example.com", True),
    (["api.example.com"], [80, 8080], "api.example.com:80", True),
    (["api.example.com"], [80, 8080], "api.example.com:8080", True),
    (["api.example.com"], [80, 8080], "api.example.com:808", False),
    (["api.example.com"], [80, 8080], "api.example.com:8081", False),
    (["a.test", "*.b.test"], [443], "x.b.test:443", True),
    (["a.test", "*.b.test"], [443], "a.test:443", True),
    (["a.test", "*.b.test"], [443], "c.test:443", False),
])
def test_the_authority_regex(hosts: list[str], ports: list[int], authority: str, matches: bool) -> None:
    """Python's ``re`` reads the RE2 subset the translator writes (no lookaround, no backreference)."""
    regex = _authority_regex(hosts, ports)
    assert (re.search(regex, authority) is not None) is matches, regex


def test_an_allowed_external_http_service_is_a_route_before_the_403() -> None:
    api = ir.External("AccessPolicy shop/p rule 0", ir.Egress.HTTP, only("shop/frontend"),
                      hosts=("api.example.com",), ports=(80, 8080))
    config = mesh_config(one_port_service("shop/catalog", 8080, ir.Protocol.HTTP, ANY_SERVICE), egress=[api])
    resources = checked(config, FRONTEND)
    *_, other = virtual_hosts(resources)
    egress, denied = other.routes
    [header] = egress.match.headers
    assert (header.name, header.string_match.safe_regex.regex) == (":authority", _authority_regex(api.hosts, api.ports))
    assert (egress.name, egress.route.cluster) == (api.origin, names.EGRESS_HTTP_CLUSTER)
    assert denied.direct_response.status == 403
    assert names.EGRESS_HTTP_CLUSTER in by_name(resources, names.CLUSTER_TYPE)
    manager = unpack(by_name(resources, names.LISTENER_TYPE)[names.OUTBOUND_HTTP].filter_chains[0].filters[0]
                     .typed_config, hcm_v3.HttpConnectionManager)
    assert [f.name for f in manager.http_filters] == [messages.DFP_HTTP_FILTER, messages.ROUTER_FILTER]
    catalog = ir.Workload("catalog-v1-0", "shop/catalog-v1", "127.0.0.11")  # not among the rule's callers
    others = checked(config, catalog)
    assert [len(v.routes) for v in virtual_hosts(others)] == [1, 1]
    assert names.EGRESS_HTTP_CLUSTER not in by_name(others, names.CLUSTER_TYPE)


# ----------------------------------------------------------------------------------- HTTPS egress


def https(*hosts: str, ports: tuple[int, ...] = (), callers: ir.Callers = ANY_SERVICE) -> ir.External:
    return ir.External("test rule", ir.Egress.HTTPS, callers, hosts=tuple(sorted(hosts)), ports=ports)


def tls_chains(resources: Sequence[Built], port: int) -> list[tuple[str, list[str], list[str]]]:
    """(name, server names, filter names) of each chain of the outbound TLS listener on ``port``."""
    listener = by_name(resources, names.LISTENER_TYPE)[names.outbound_tls_listener(port)]
    assert [f.name for f in listener.listener_filters] == [messages.TLS_INSPECTOR_FILTER]
    return [(c.name, list(c.filter_chain_match.server_names), [f.name for f in c.filters])
            for c in listener.filter_chains]


EGRESS_FILTERS = [messages.SNI_DFP_FILTER, messages.TCP_PROXY_FILTER]
WEB = one_port_service("shop/web", 443, ir.Protocol.TLS_PASSTHROUGH, ANY_SERVICE, hosts=("Secure.Example.com",))


def test_https_egress_keeps_off_the_names_mesh_services_serve_on_that_port() -> None:
    config = mesh_config(WEB, egress=[https("secure.example.com", "other.example.com"),
                                      https("other.example.com", "third.example.com", ports=(443,))])
    resources = checked(config, FRONTEND)
    tls = names.outbound_tls_listener(443)
    assert tls_chains(resources, 443) == [
        ("shop/web", ["Secure.Example.com"], [messages.TCP_PROXY_FILTER]),
        (f"{tls}|egress", ["other.example.com", "third.example.com"], EGRESS_FILTERS)]
    [sni] = [f for c in by_name(resources, names.LISTENER_TYPE)[tls].filter_chains for f in c.filters
             if f.name == messages.SNI_DFP_FILTER]
    assert unpack(sni.typed_config, sni_v3.FilterConfig).port_value == 443
    assert names.EGRESS_TLS_CLUSTER in by_name(resources, names.CLUSTER_TYPE)


def test_https_egress_does_not_take_a_name_a_mesh_wildcard_covers() -> None:
    web = one_port_service("shop/web", 443, ir.Protocol.TLS_PASSTHROUGH, ANY_SERVICE, hosts=("*.example.com",))
    config = mesh_config(web, egress=[https("secure.example.com", "api.other.test")])
    tls = names.outbound_tls_listener(443)
    assert tls_chains(checked(config, FRONTEND), 443) == [
        ("shop/web", ["*.example.com"], [messages.TCP_PROXY_FILTER]),
        (f"{tls}|egress", ["api.other.test"], EGRESS_FILTERS)]


def test_https_egress_to_any_host_is_a_chain_without_server_names() -> None:
    config = mesh_config(WEB, egress=[https("*", ports=(443, 8443))])
    resources = checked(config, FRONTEND)
    tls = names.outbound_tls_listener(8443)
    assert tls_chains(resources, 8443) == [(f"{tls}|egress", [], EGRESS_FILTERS)]
    assert [server_names for _, server_names, _ in tls_chains(resources, 443)] == [["Secure.Example.com"], []]


def test_https_egress_is_for_its_callers_only() -> None:
    config = mesh_config(WEB, egress=[https("api.example.com", callers=only("shop/web"))])
    resources = checked(config, FRONTEND)
    assert [name for name, _, _ in tls_chains(resources, 443)] == ["shop/web"]
    assert names.EGRESS_TLS_CLUSTER not in by_name(resources, names.CLUSTER_TYPE)


@pytest.mark.parametrize("db_callers", [NOBODY, ANY_SERVICE])
def test_https_egress_is_not_served_on_a_port_a_mesh_service_uses_as_tcp(db_callers: ir.Callers) -> None:
    """Whether or not the caller may call db: connections on 5432 cannot be told apart by SNI from db's."""
    config = mesh_config(one_port_service("shop/db", 5432, ir.Protocol.TCP, db_callers),
                         egress=[https("api.example.com", ports=(5432, 443))])
    resources = checked(config, FRONTEND)
    tcp = [names.outbound_tcp_listener(5432)] if db_callers == ANY_SERVICE else []
    assert listener_names(resources) == sorted([names.OUTBOUND_HTTP, names.outbound_tls_listener(443), *tcp])


def test_https_egress_is_not_served_on_the_proxys_own_or_sidecar_ports() -> None:
    catalog = one_port_service("shop/catalog", 8443, ir.Protocol.HTTP, ANY_SERVICE)
    config = mesh_config(catalog, egress=[https("api.example.com", ports=(8443, names.OUTBOUND_HTTP_PORT, 9443))])
    workload = ir.Workload("catalog-v1-0", "shop/catalog-v1", "127.0.0.11", app_ports=((8443, 18443),))
    resources = checked(config, workload)
    assert [n for n in listener_names(resources) if not n.startswith("inbound|")] == [
        names.OUTBOUND_HTTP, names.outbound_tls_listener(9443)]
    assert names.outbound_tls_listener(8443) in listener_names(checked(config, FRONTEND))


def test_tcp_egress_yields_nothing_in_explicit_capture() -> None:
    database = ir.External("test rule", ir.Egress.TCP, ANY_SERVICE, cidrs=("10.0.0.0/8",), ports=(5432,))
    resources = checked(mesh_config(egress=[database]), FRONTEND)
    assert listener_names(resources) == [names.OUTBOUND_HTTP]
    assert not by_name(resources, names.CLUSTER_TYPE)


# --------------------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("catalog_callers", [NOBODY, only("shop/frontend"), ANY_SERVICE])
@pytest.mark.parametrize("mode", list(ir.Mtls))
def test_required_secrets_follow_what_the_caller_may_reach(catalog_callers: ir.Callers, mode: ir.Mtls) -> None:
    """frontend (DISABLED, no inbound port, egress allowed) needs its certificate only for a mutual TLS
    destination it may call; ``checked`` holds the secrets it names to exactly those."""
    base = with_catalog(tls_mesh(mode), callers=catalog_callers)
    egress = (https("*", ports=(443, 8443)), ir.External("r", ir.Egress.HTTP, ANY_SERVICE, hosts=("*",)))
    config = ir.MeshConfig((replace(base.meshes[0], egress=egress),), base.services, base.deployments)
    resources = checked(config, FRONTEND)
    assert bool(required_secrets(config, FRONTEND)) is (mode is not ir.Mtls.DISABLED and catalog_callers != NOBODY)
    egress_clusters = {names.EGRESS_HTTP_CLUSTER, names.EGRESS_TLS_CLUSTER}
    mesh_clusters = by_name(resources, names.CLUSTER_TYPE).keys() - egress_clusters
    assert bool(mesh_clusters) is (catalog_callers != NOBODY)
    checked(config, CATALOG)


# ------------------------------------------------------------------------------------- real Envoy


@pytest.mark.envoy
@pytest.mark.parametrize("egress", [
    [https("api.example.com", "*.googleapis.test"), https("*", ports=(8443,))],
    [ir.External("test rule", ir.Egress.HTTP, ANY_SERVICE, hosts=("api.example.com", "*.svc.test"), ports=(80, 8080))],
], ids=["https", "http"])
def test_real_envoy_accepts_egress(egress: list[ir.External], tmp_path: Path) -> None:
    config = mesh_config(WEB, egress=egress)
    envoy_validates(FRONTEND, static_bootstrap(FRONTEND, checked(config, FRONTEND)), tmp_path)
