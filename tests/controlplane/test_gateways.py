"""Ingress gateways through ``build``: IngressGateway and IngressGatewayRouteTable → ``ir.Gateway``.

Small worlds of manifests (and Secrets); each test builds one and reads the gateway's listeners, hosts
and routes, and the problems reported on the gateway and its route tables (spec §2.9, §3.6, §3.7, §5.5;
the choices are in ``controlplane/gateways.py`` and docs/ingress.md).
"""

from __future__ import annotations

from typing import Any

import pytest

from meshplane.controlplane import ir
from meshplane.controlplane.build import Problems, build
from meshplane.controlplane.model import Kind, ObjectKey, parse_object
from meshplane.controlplane.problems import Problem
from meshplane.controlplane.world import Index, KubeSecret

API = "servicemesh.oci.oracle.com/v1beta1"
NS = "shop"
GATEWAY = f"{NS}/gw"
GATEWAY_OBJECT = ObjectKey(Kind.INGRESS_GATEWAY, NS, "gw")
TABLE_OBJECT = ObjectKey(Kind.INGRESS_GATEWAY_ROUTE_TABLE, NS, "gw-routes")
TRUST_DOMAIN = "shop-mesh.shop.mesh.local"
CERTIFICATE = {"kubeSecretTlsCertificate": {"secretName": "cert"}}
CA_BUNDLE = {"kubeSecretCaBundle": {"secretName": "ca"}}


# ------------------------------------------------------------------------------------ manifests


def manifest(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name, "namespace": NS}, "spec": spec}


def ref(name: str) -> dict[str, Any]:
    return {"ref": {"name": name}}


def mesh(name: str = "shop-mesh") -> dict[str, Any]:
    return manifest("Mesh", name, {"mtls": {"minimum": "PERMISSIVE"}})


def service(name: str, *listeners: tuple[str, int], hosts: list[str] | None = None,
            mesh_name: str = "shop-mesh") -> list[dict[str, Any]]:
    """A virtual service and one deployment listening on ``listeners`` (protocol, port); HTTP 8080 by default."""
    ports = [{"protocol": protocol, "port": port} for protocol, port in listeners or [("HTTP", 8080)]]
    return [manifest("VirtualService", name, {"mesh": ref(mesh_name),
                                              "hosts": hosts if hosts is not None else [f"{name}.shop.mesh"]}),
            manifest("VirtualDeployment", f"{name}-v1", {
                "virtualService": ref(name), "listener": ports,
                "serviceDiscovery": {"type": "DNS", "hostname": f"{name}-v1.shop.mesh"}})]


def host(name: str, *listeners: dict[str, Any], hostnames: list[str] | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {"name": name, "listeners": list(listeners) or [listener()]}
    if hostnames is None:
        hostnames = [f"{name}.example.com"]
    if hostnames:
        found["hostnames"] = hostnames
    return found


def listener(protocol: str = "HTTP", port: int = 8080, tls: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"protocol": protocol, "port": port} | ({"tls": tls} if tls is not None else {})


def gateway(*hosts: dict[str, Any], name: str = "gw", mesh_name: str = "shop-mesh") -> dict[str, Any]:
    return manifest("IngressGateway", name, {"mesh": ref(mesh_name), "hosts": list(hosts) or [host("store")]})


def table(*rules: dict[str, Any], name: str = "gw-routes", priority: int | None = None,
          gateway_name: str = "gw") -> dict[str, Any]:
    spec: dict[str, Any] = {"ingressGateway": ref(gateway_name), "routeRules": list(rules)}
    if priority is not None:
        spec["priority"] = priority
    return manifest("IngressGatewayRouteTable", name, spec)


def http(to: str, *, on: str | None = None, port: int | None = None, target_port: int | None = None,
         **options: Any) -> dict[str, Any]:
    """An httpRoute rule to the virtual service ``to``, attached to host ``on`` (and ``port``) if given."""
    return {"httpRoute": _body(to, on, port, target_port) | options}


def tcp(to: str, *, on: str | None = None, target_port: int | None = None) -> dict[str, Any]:
    return {"tcpRoute": _body(to, on, None, target_port)}


def passthrough(to: str, *, on: str | None = None) -> dict[str, Any]:
    return {"tlsPassthroughRoute": _body(to, on, None, None)}


def _body(to: str, on: str | None, port: int | None, target_port: int | None) -> dict[str, Any]:
    destination: dict[str, Any] = {"virtualService": ref(to)}
    if target_port is not None:
        destination["port"] = target_port
    body: dict[str, Any] = {"destinations": [destination]}
    if on is not None:
        body["ingressGatewayHost"] = {"name": on} | ({"port": port} if port is not None else {})
    return body


def tls_secret(name: str = "cert", *, chain: bytes = b"chain", key: bytes | None = b"key") -> KubeSecret:
    data = [("tls.crt", chain)] + ([("tls.key", key)] if key is not None else [])
    return KubeSecret(NS, name, "kubernetes.io/tls", tuple(data))


def ca_secret(name: str = "ca") -> KubeSecret:
    return KubeSecret(NS, name, "Opaque", (("ca.crt", b"roots"),))


def world(*raw: dict[str, Any] | list[dict[str, Any]], secrets: tuple[KubeSecret, ...] = ()) -> Index:
    flat = [r for item in raw for r in (item if isinstance(item, list) else [item])]
    parsed = [parse_object(r) for r in flat]
    assert all(obj is not None and not problems for obj, problems in parsed), parsed
    index = Index(obj for obj, _ in parsed if obj is not None)
    index.set_secrets(secrets)
    return index


def built(*raw: dict[str, Any] | list[dict[str, Any]], secrets: tuple[KubeSecret, ...] = (),
          workloads: tuple[ir.Workload, ...] = ()) -> tuple[ir.Gateway, Problems]:
    """The gateway ``shop/gw`` as built from a world of mesh ``shop-mesh`` plus ``raw``, and every problem."""
    config, problems = build(world(mesh(), *raw, secrets=secrets), workloads)
    found = config.gateway(GATEWAY)
    assert found is not None, f"{GATEWAY} is not served"
    return found, problems


def hosts_on(gw: ir.Gateway, port: int) -> dict[str, ir.GatewayHost]:
    return {h.name: h for lst in gw.listeners if lst.port == port for h in lst.hosts}


def origins(found: ir.GatewayHost) -> list[str]:
    return [r.origin for r in found.routes]


def rule_origin(index: int, name: str = "gw-routes") -> str:
    return f"IngressGatewayRouteTable {NS}/{name} rule {index}"


def only_problem(problems: Problems, key: ObjectKey) -> Problem:
    assert set(problems) == {key}, problems
    [problem] = problems[key]
    return problem


# ------------------------------------------------------------------------------------ listeners


def test_hosts_sharing_a_port_share_one_listener_with_names_lowercased_and_sorted() -> None:
    gw, problems = built(gateway(host("a", hostnames=["Shop.Example.com", "*.a.example.com"]), host("b")))
    assert not problems
    [only] = gw.listeners
    assert (only.port, only.protocol) == (8080, ir.Protocol.HTTP)
    assert [(h.name, h.hostnames) for h in only.hosts] == [("a", ("*.a.example.com", "shop.example.com")),
                                                          ("b", ("b.example.com",))]
    assert gw.identity == ir.gateway_identity(TRUST_DOMAIN, NS, "gw")
    assert gw.mesh == f"{NS}/shop-mesh"


def test_a_port_with_two_protocols_is_an_error_naming_the_path_and_the_later_host_is_not_served_there() -> None:
    """Admission refuses this; build, which never raises, keeps the first protocol and reports the rest."""
    gw, problems = built(gateway(host("web"), host("db", listener("TCP", 8080), listener("TCP", 9000),
                                                  hostnames=[])))
    problem = only_problem(problems, GATEWAY_OBJECT)
    assert problem.is_error
    assert problem.path == "spec.hosts[1].listeners[0].protocol"
    assert "port 8080 is HTTP" in problem.message and "host db" in problem.message
    assert [(lst.port, lst.protocol, [h.name for h in lst.hosts]) for lst in gw.listeners] == [
        (8080, ir.Protocol.HTTP, ["web"]), (9000, ir.Protocol.TCP, ["db"])]


def test_a_gateway_of_a_mesh_that_is_not_served_is_left_out() -> None:
    config, _ = build(world(mesh(), gateway(mesh_name="elsewhere")))
    assert config.gateways == ()


# ---------------------------------------------------------------------------------- certificates


def tls_host(name: str = "secure", mode: str = "TLS", *, certificate: dict[str, Any] | None = None,
             validation: dict[str, Any] | None = None, port: int = 8443) -> dict[str, Any]:
    tls: dict[str, Any] = {"mode": mode, "serverCertificate": certificate or CERTIFICATE}
    if validation is not None:
        tls["clientValidation"] = validation
    return host(name, listener(port=port, tls=tls))


def test_a_tls_host_refers_to_its_secrets_by_key_and_fingerprint() -> None:
    validation = {"trustedCaBundle": CA_BUNDLE, "subjectAlternateNames": ["client.example.com"]}
    gw, problems = built(gateway(tls_host(mode="MUTUAL_TLS", validation=validation)),
                         secrets=(tls_secret(), ca_secret()))
    assert not problems
    found = hosts_on(gw, 8443)["secure"]
    assert found.tls is ir.ListenerTls.MUTUAL_TLS
    assert found.certificate == ir.SecretRef(f"{NS}/cert", tls_secret().fingerprint)
    assert found.ca_bundle == ir.SecretRef(f"{NS}/ca", ca_secret().fingerprint)
    assert found.client_names == ("client.example.com",)


def test_a_listener_without_tls_is_disabled_and_needs_no_secret() -> None:
    gw, problems = built(gateway())
    assert not problems
    found = hosts_on(gw, 8080)["store"]
    assert (found.tls, found.certificate, found.ca_bundle) == (ir.ListenerTls.DISABLED, None, None)


@pytest.mark.parametrize(("secrets", "certificate", "message"), [
    ((), CERTIFICATE, "Secret shop/cert does not exist"),
    ((tls_secret(key=None),), CERTIFICATE, "Secret shop/cert has no tls.key"),
    ((tls_secret(),), {"ociTlsCertificate": {"certificateId": "ocid1.certificate.oc1..aaaa"}},
     "only Kubernetes Secrets are supported"),
], ids=["missing", "no-tls.key", "oci-certificate"])
def test_a_certificate_that_cannot_be_read_is_an_error_and_the_host_is_not_served_on_that_port(
        secrets: tuple[KubeSecret, ...], certificate: dict[str, Any], message: str) -> None:
    gw, problems = built(gateway(host("plain"), tls_host(certificate=certificate)), secrets=secrets)
    problem = only_problem(problems, GATEWAY_OBJECT)
    assert problem.is_error and message in problem.message, problem
    assert problem.path == "spec.hosts[1].listeners[0].tls.serverCertificate"
    assert [lst.port for lst in gw.listeners] == [8080]  # the plaintext host is served as usual


@pytest.mark.parametrize(("secrets", "bundle", "message"), [
    ((tls_secret(),), CA_BUNDLE, "Secret shop/ca does not exist"),
    ((tls_secret(), KubeSecret(NS, "ca", "Opaque", (("tls.crt", b"x"),))), CA_BUNDLE, "Secret shop/ca has no ca.crt"),
    ((tls_secret(),), {"ociCaBundle": {"caBundleId": "ocid1.cabundle.oc1..aaaa"}},
     "only Kubernetes Secrets are supported"),
], ids=["missing", "no-ca.crt", "oci-ca-bundle"])
def test_a_ca_bundle_that_cannot_be_read_is_an_error_and_the_host_is_not_served_on_that_port(
        secrets: tuple[KubeSecret, ...], bundle: dict[str, Any], message: str) -> None:
    gw, problems = built(gateway(tls_host(mode="MUTUAL_TLS", validation={"trustedCaBundle": bundle})),
                         secrets=secrets)
    problem = only_problem(problems, GATEWAY_OBJECT)
    assert problem.is_error and message in problem.message, problem
    assert problem.path == "spec.hosts[0].listeners[0].tls.clientValidation.trustedCaBundle"
    assert gw.listeners == ()


def test_the_same_host_is_served_on_its_other_ports_when_one_ports_secret_is_missing() -> None:
    tls = {"mode": "TLS", "serverCertificate": CERTIFICATE}
    gw, problems = built(gateway(host("store", listener(port=8080), listener(port=8443, tls=tls))))
    assert only_problem(problems, GATEWAY_OBJECT).path == "spec.hosts[0].listeners[1].tls.serverCertificate"
    assert [(lst.port, [h.name for h in lst.hosts]) for lst in gw.listeners] == [(8080, ["store"])]


def test_a_plaintext_host_does_not_depend_on_a_ca_bundle_it_never_uses() -> None:
    tls = {"mode": "DISABLED", "clientValidation": {"trustedCaBundle": CA_BUNDLE}}
    gw, _ = built(gateway(host("store", listener(tls=tls))))
    assert "store" in hosts_on(gw, 8080)


def test_a_changed_secret_changes_the_fingerprint_and_an_unchanged_one_keeps_it() -> None:
    def fingerprint(secret: KubeSecret) -> str:
        gw, _ = built(gateway(tls_host()), secrets=(secret,))
        certificate = hosts_on(gw, 8443)["secure"].certificate
        assert certificate is not None and certificate.key == f"{NS}/cert"
        return certificate.fingerprint

    before = fingerprint(tls_secret(chain=b"first"))
    assert fingerprint(tls_secret(chain=b"first")) == before
    assert fingerprint(tls_secret(chain=b"second")) != before
    assert fingerprint(tls_secret(chain=b"first", key=b"another key")) != before


def test_secrets_are_read_from_the_gateways_namespace() -> None:
    elsewhere = KubeSecret("other", "cert", "kubernetes.io/tls", (("tls.crt", b"c"), ("tls.key", b"k")))
    gw, problems = built(gateway(tls_host()), secrets=(elsewhere,))
    assert "Secret shop/cert does not exist" in only_problem(problems, GATEWAY_OBJECT).message
    assert gw.listeners == ()


# ---------------------------------------------------------------------------------------- rules


def test_a_rule_attaches_to_its_host_by_name_and_a_rule_without_a_host_to_every_host() -> None:
    gw, problems = built(gateway(host("a"), host("b")), *service("catalog"), *service("status"),
                         table(http("status", path="/healthz"), http("catalog", on="a")))
    assert not problems
    on = hosts_on(gw, 8080)
    assert origins(on["a"]) == [rule_origin(0), rule_origin(1)]
    assert origins(on["b"]) == [rule_origin(0)]


def test_a_rule_for_one_port_of_a_host_attaches_only_there() -> None:
    gw, problems = built(gateway(host("store", listener(port=8080), listener(port=9090))),
                         *service("catalog"), *service("admin"),
                         table(http("admin", on="store", port=9090, path="/admin"), http("catalog", on="store")))
    assert not problems
    assert origins(hosts_on(gw, 9090)["store"]) == [rule_origin(0), rule_origin(1)]
    assert origins(hosts_on(gw, 8080)["store"]) == [rule_origin(1)]


def test_a_rule_for_a_host_name_the_gateway_does_not_have_attaches_nowhere() -> None:
    """OSOK does not check the name (spec §3.7); admission warns. The build says nothing at all today: a
    warning on the route table (as for an unserved destination) would tell users why nothing matches."""
    gw, problems = built(gateway(host("store")), *service("catalog"),
                         table(http("catalog", on="stroe"), http("catalog", on="store", port=9999)))
    assert all(not h.routes for lst in gw.listeners for h in lst.hosts)
    assert not any(p.is_error for found in problems.values() for p in found)


def test_a_rule_attaches_only_to_listeners_of_its_own_kind() -> None:
    gw, problems = built(
        gateway(host("web", listener("HTTP", 8080)), host("db", listener("TCP", 5432), hostnames=[]),
                host("tls", listener("TLS_PASSTHROUGH", 8443))),
        *service("catalog"), *service("postgres", ("TCP", 5432)), *service("site", ("TLS_PASSTHROUGH", 443)),
        table(http("catalog"), tcp("postgres"), passthrough("site")))
    assert not problems
    assert origins(hosts_on(gw, 8080)["web"]) == [rule_origin(0)]
    assert origins(hosts_on(gw, 5432)["db"]) == [rule_origin(1)]
    assert origins(hosts_on(gw, 8443)["tls"]) == [rule_origin(2)]


def test_http_rule_options_reach_the_ir() -> None:
    gw, problems = built(gateway(), *service("catalog"),
                         table(http("catalog", path="/shop/", pathType="PREFIX", isGrpc=True, isPathRewriteEnabled=True,
                                    isHostRewriteEnabled=True, requestTimeoutInMs=2500),
                               http("catalog")))
    assert not problems
    first, second = hosts_on(gw, 8080)["store"].routes
    assert first == ir.GatewayRoute(rule_origin(0), f"{NS}/catalog", 8080, "/shop/", True, True, "catalog.shop.mesh",
                                    2500)
    assert second == ir.GatewayRoute(rule_origin(1), f"{NS}/catalog", 8080)  # prefix /, no rewrite, service timeout


def test_route_tables_apply_by_priority_lower_first_then_none_then_by_name() -> None:
    gw, problems = built(gateway(), *service("catalog"),
                         table(http("catalog"), name="a-no-priority"), table(http("catalog"), name="0-no-priority"),
                         table(http("catalog"), name="z-first", priority=1),
                         table(http("catalog"), name="b-second", priority=5),
                         table(http("catalog"), name="a-second", priority=5))
    assert not problems
    assert origins(hosts_on(gw, 8080)["store"]) == [
        rule_origin(0, "z-first"), rule_origin(0, "a-second"), rule_origin(0, "b-second"),
        rule_origin(0, "0-no-priority"), rule_origin(0, "a-no-priority")]


def test_a_table_of_another_gateway_does_not_attach() -> None:
    gw, _ = built(gateway(), gateway(name="other"), *service("catalog"), table(http("catalog"), gateway_name="other"))
    assert not hosts_on(gw, 8080)["store"].routes


@pytest.mark.parametrize("destination", ["nowhere", "foreign"])
def test_a_destination_not_served_in_the_gateways_mesh_is_a_warning_and_sends_nothing(destination: str) -> None:
    gw, problems = built(gateway(), mesh("other-mesh"), *service("foreign", mesh_name="other-mesh"),
                         table(http(destination)))
    problem = only_problem(problems, TABLE_OBJECT)
    assert not problem.is_error and problem.path == "spec.routeRules[0].destinations[0]"
    assert not hosts_on(gw, 8080)["store"].routes


# ------------------------------------------------------------------------------- destination port


@pytest.mark.parametrize(("listeners", "given", "expected"), [
    ([("HTTP", 8080)], None, 8080),  # the only port
    ([("HTTP", 9080), ("TCP", 5432)], None, 9080),  # the only HTTP port: TCP ports do not fit an HTTP rule
    ([("HTTP", 9080), ("HTTP2", 8081), ("GRPC", 9090)], None, 8081),  # several: the lowest HTTP one
    ([("HTTP", 9080), ("HTTP", 8081)], 9080, 9080),  # the rule's
    ([("GRPC", 9090)], None, 9090),  # gRPC is HTTP
])
def test_an_http_rule_sends_to_the_given_port_else_the_only_one_else_the_lowest_http_port(
        listeners: list[tuple[str, int]], given: int | None, expected: int) -> None:
    gw, problems = built(gateway(), *service("catalog", *listeners), table(http("catalog", target_port=given)))
    assert not problems
    [route] = hosts_on(gw, 8080)["store"].routes
    assert route.port == expected


@pytest.mark.parametrize(("listeners", "given", "expected"), [
    ([("TCP", 5432)], None, 5432),
    ([("TCP", 5432), ("HTTP", 8080)], None, 5432),
    ([("TCP", 5432), ("TCP", 6379)], 6379, 6379),
])
def test_a_tcp_rule_sends_to_the_given_port_else_the_only_tcp_port(listeners: list[tuple[str, int]],
                                                                     given: int | None, expected: int) -> None:
    gw, problems = built(gateway(host("db", listener("TCP", 7000), hostnames=[])), *service("cache", *listeners),
                         table(tcp("cache", target_port=given)))
    assert not problems
    [route] = hosts_on(gw, 7000)["db"].routes
    assert route.port == expected


@pytest.mark.parametrize(("rule", "listeners"), [
    (tcp("cache"), [("TCP", 5432), ("TCP", 6379)]),  # ambiguous: no lowest-port default for TCP
    (tcp("cache", target_port=8080), [("TCP", 5432), ("HTTP", 8080)]),  # the given port is not TCP
    (tcp("cache", target_port=1234), [("TCP", 5432)]),  # the given port does not exist
])
def test_a_tcp_rule_without_one_port_to_send_to_is_an_error_and_sends_nothing(
        rule: dict[str, Any], listeners: list[tuple[str, int]]) -> None:
    gw, problems = built(gateway(host("db", listener("TCP", 7000), hostnames=[])), *service("cache", *listeners),
                         table(rule))
    problem = only_problem(problems, TABLE_OBJECT)
    assert problem.is_error and problem.path == "spec.routeRules[0].destinations[0].port"
    assert "shop/cache" in problem.message
    assert not hosts_on(gw, 7000)["db"].routes


def test_an_http_rule_to_a_service_without_http_ports_is_an_error() -> None:
    _, problems = built(gateway(), *service("postgres", ("TCP", 5432)), table(http("postgres")))
    assert only_problem(problems, TABLE_OBJECT).is_error


# -------------------------------------------------------------------------------------- host rewrite


def rewritten_host(hosts: list[str]) -> str | None:
    gw, problems = built(gateway(), *service("catalog", hosts=hosts), table(http("catalog", isHostRewriteEnabled=True)))
    assert not problems
    [route] = hosts_on(gw, 8080)["store"].routes
    return route.rewrite_host


def test_host_rewrite_picks_a_host_name_that_is_not_a_wildcard() -> None:
    assert rewritten_host(["*.catalog.shop.mesh", "catalog.shop.mesh"]) == "catalog.shop.mesh"
    assert rewritten_host(["catalog.shop.mesh", "*.catalog.shop.mesh"]) == "catalog.shop.mesh"


def test_host_rewrite_to_a_service_with_only_wildcard_hosts_rewrites_nothing() -> None:
    assert rewritten_host(["*.catalog.shop.mesh"]) is None


def test_host_rewrite_uses_the_alphabetically_first_host_name_as_documented() -> None:
    """docs/ingress.md: the first host name in alphabetical order (stable whatever order the user wrote)."""
    assert rewritten_host(["zeta.shop.mesh", "alpha.shop.mesh"]) == "alpha.shop.mesh"


# ------------------------------------------------------------------------------------------ endpoints


def test_gateway_endpoints_are_the_addresses_of_its_live_proxies() -> None:
    workloads = (ir.Workload("gw-1", "", "127.0.0.31", gateway=GATEWAY),
                 ir.Workload("gw-0", "", "127.0.0.30", gateway=GATEWAY),
                 ir.Workload("gw-0-again", "", "127.0.0.30", gateway=GATEWAY),
                 ir.Workload("other-0", "", "127.0.0.40", gateway=f"{NS}/other"),
                 ir.Workload("catalog-v1-0", f"{NS}/catalog-v1", "127.0.0.11"))
    gw, _ = built(gateway(), *service("catalog"), workloads=workloads)
    assert gw.endpoints == ("127.0.0.30", "127.0.0.31")


def test_a_gateway_without_live_proxies_has_no_endpoints() -> None:
    gw, _ = built(gateway())
    assert gw.endpoints == ()
