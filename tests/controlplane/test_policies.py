"""Access policies through ``build``: who may call each virtual service, and what each mesh may reach outside.

Small worlds of manifests; each test builds one and reads ``ir.Service.callers``, ``ir.Mesh.egress`` and the
problems reported on the policies (spec §3.5, §5.4).
"""

from __future__ import annotations

from typing import Any

import pytest

from meshplane.controlplane import ir
from meshplane.controlplane.build import Problems, build
from meshplane.controlplane.model import Kind, ObjectKey, parse_object
from meshplane.controlplane.problems import Severity
from meshplane.controlplane.world import Index

API = "servicemesh.oci.oracle.com/v1beta1"
NS = "shop"
TRUST_DOMAIN = "shop-mesh.shop.mesh.local"
ALL: dict[str, Any] = {"allVirtualServices": {}}


# ------------------------------------------------------------------------------------ manifests


def manifest(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name, "namespace": NS}, "spec": spec}


def ref(name: str) -> dict[str, Any]:
    return {"ref": {"name": name}}


def mesh(name: str = "shop-mesh") -> dict[str, Any]:
    return manifest("Mesh", name, {})


def service(name: str, mesh_name: str = "shop-mesh") -> dict[str, Any]:
    return manifest("VirtualService", name, {"mesh": ref(mesh_name), "hosts": [f"{name}.shop.mesh"]})


def gateway(name: str, mesh_name: str = "shop-mesh") -> dict[str, Any]:
    host = {"name": "public", "hostnames": ["shop.example.com"], "listeners": [{"protocol": "HTTP", "port": 8080}]}
    return manifest("IngressGateway", name, {"mesh": ref(mesh_name), "hosts": [host]})


def policy(name: str, *rules: dict[str, Any], mesh_name: str = "shop-mesh") -> dict[str, Any]:
    return manifest("AccessPolicy", name, {"mesh": ref(mesh_name), "rules": list(rules)})


def rule(source: dict[str, Any], destination: dict[str, Any]) -> dict[str, Any]:
    return {"action": "ALLOW", "source": source, "destination": destination}


def vs(name: str) -> dict[str, Any]:
    return {"virtualService": ref(name)}


def ig(name: str) -> dict[str, Any]:
    return {"ingressGateway": ref(name)}


def world(*raw: dict[str, Any]) -> Index:
    parsed = [parse_object(r) for r in raw]
    assert all(obj is not None and not problems for obj, problems in parsed), parsed
    return Index(obj for obj, _ in parsed if obj is not None)


def built(*raw: dict[str, Any]) -> tuple[ir.MeshConfig, Problems]:
    return build(world(*raw))


def callers(config: ir.MeshConfig, name: str) -> ir.Callers:
    found = config.service(f"{NS}/{name}")
    assert found is not None, name
    return found.callers


def spiffe(name: str, kind: str = "virtualservice") -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/{NS}/{kind}/{name}"


def policy_problems(problems: Problems, name: str) -> list[tuple[Severity, str]]:
    return [(p.severity, p.path) for p in problems.get(ObjectKey(Kind.ACCESS_POLICY, NS, name), [])]


SHOP = (mesh(), service("frontend"), service("catalog"), service("reviews"))


# ---------------------------------------------------------------------------------- virtual services


def test_without_a_policy_nobody_may_call_anything_and_nothing_leaves_the_mesh() -> None:
    config, problems = built(*SHOP)
    assert not problems
    assert [s.callers for s in config.services] == [ir.Callers()] * 3
    assert [m.egress for m in config.meshes] == [()]


def test_a_named_source_admits_that_identity_only() -> None:
    config, problems = built(*SHOP, policy("p", rule(vs("frontend"), vs("catalog"))))
    assert not problems
    assert callers(config, "catalog") == ir.Callers(identities=(spiffe("frontend"),))
    assert callers(config, "catalog").admits(spiffe("frontend"))
    assert not callers(config, "catalog").admits(spiffe("reviews"))
    assert callers(config, "frontend") == callers(config, "reviews") == ir.Callers()


def test_an_all_virtual_services_source_admits_every_service() -> None:
    config, _ = built(*SHOP, policy("p", rule(ALL, vs("catalog"))))
    assert callers(config, "catalog") == ir.Callers(all_services=True)
    assert callers(config, "reviews") == ir.Callers()


def test_an_all_virtual_services_destination_covers_every_service_even_one_created_later() -> None:
    objects = world(*SHOP, mesh("other-mesh"), service("stranger", "other-mesh"),
                    policy("p", rule(vs("frontend"), ALL)))
    config, _ = build(objects)
    expected = ir.Callers(identities=(spiffe("frontend"),))
    assert [s.callers for s in config.services if s.mesh == "shop/shop-mesh"] == [expected] * 3
    assert callers(config, "stranger") == ir.Callers()  # every service of the policy's mesh only
    later, _ = parse_object(service("search"))
    assert later is not None
    objects.put(later)
    config, _ = build(objects)
    assert callers(config, "search") == expected


def test_rules_of_every_policy_add_up() -> None:
    config, problems = built(*SHOP,
                             policy("a", rule(vs("frontend"), vs("catalog")), rule(vs("catalog"), vs("reviews"))),
                             policy("b", rule(vs("reviews"), vs("catalog")), rule(vs("frontend"), ALL)),
                             policy("c", rule(ALL, vs("reviews"))))
    assert not problems
    assert callers(config, "catalog") == ir.Callers(identities=(spiffe("frontend"), spiffe("reviews")))
    assert callers(config, "reviews") == ir.Callers(True, (spiffe("catalog"), spiffe("frontend")))
    assert callers(config, "frontend") == ir.Callers(identities=(spiffe("frontend"),))


def test_an_ingress_gateway_source_admits_the_gateways_identity_and_not_as_a_service() -> None:
    config, problems = built(*SHOP, gateway("gw"), policy("p", rule(ig("gw"), vs("catalog")), rule(ALL, vs("reviews"))))
    assert not problems
    identity = spiffe("gw", "ingressgateway")
    assert identity == f"spiffe://{TRUST_DOMAIN}/ns/shop/ingressgateway/gw"
    assert callers(config, "catalog") == ir.Callers(identities=(identity,))
    assert callers(config, "catalog").admits(identity, service=False)
    assert not callers(config, "catalog").admits(spiffe("frontend"))
    # allVirtualServices means services: a gateway is not one of them
    assert callers(config, "reviews").admits(spiffe("frontend"))
    assert not callers(config, "reviews").admits(identity, service=False)


# ------------------------------------------------------------------------------------------ problems


@pytest.mark.parametrize(("broken", "path"), [
    (rule(vs("search"), vs("catalog")), "spec.rules[0].source.virtualService"),
    (rule(vs("frontend"), vs("search")), "spec.rules[0].destination.virtualService"),
    (rule(ig("gw"), vs("catalog")), "spec.rules[0].source.ingressGateway"),
])
def test_a_target_not_created_yet_is_a_warning_and_the_other_rules_still_apply(broken: dict[str, Any],
                                                                                path: str) -> None:
    config, problems = built(*SHOP, policy("p", broken, rule(vs("frontend"), vs("reviews"))))
    assert policy_problems(problems, "p") == [(Severity.WARNING, path)]
    assert callers(config, "catalog") == ir.Callers()
    assert callers(config, "reviews") == ir.Callers(identities=(spiffe("frontend"),))


@pytest.mark.parametrize(("broken", "path"), [
    (rule(vs("stranger"), vs("catalog")), "spec.rules[0].source.virtualService"),
    (rule(vs("frontend"), vs("stranger")), "spec.rules[0].destination.virtualService"),
    (rule(ig("their-gw"), vs("catalog")), "spec.rules[0].source.ingressGateway"),
])
def test_a_target_of_another_mesh_is_an_error_and_its_rule_is_ignored(broken: dict[str, Any], path: str) -> None:
    others = (mesh("other-mesh"), service("stranger", "other-mesh"), gateway("their-gw", "other-mesh"))
    config, problems = built(*SHOP, *others, policy("p", broken, rule(vs("frontend"), vs("reviews"))))
    assert policy_problems(problems, "p") == [(Severity.ERROR, path)]
    assert callers(config, "catalog") == callers(config, "stranger") == ir.Callers()
    assert callers(config, "reviews") == ir.Callers(identities=(spiffe("frontend"),))


def test_a_policy_whose_mesh_is_missing_contributes_nothing() -> None:
    config, problems = built(*SHOP, policy("p", rule(ALL, ALL), rule(ALL, {"externalService": {
        "httpExternalService": {"hostnames": ["*"]}}}), mesh_name="nowhere"))
    assert not policy_problems(problems, "p")
    assert [s.callers for s in config.services] == [ir.Callers()] * 3
    assert [m.egress for m in config.meshes] == [()]


# ---------------------------------------------------------------------------------- external services


@pytest.mark.parametrize(("destination", "expected"), [
    ({"httpExternalService": {"hostnames": ["B.example.com", "a.example.com", "b.example.com"], "ports": [8080, 80]}},
     {"protocol": ir.Egress.HTTP, "hosts": ("a.example.com", "b.example.com"), "ports": (80, 8080)}),
    ({"httpsExternalService": {"hostnames": ["*.GoogleAPIs.test", "*"]}},
     {"protocol": ir.Egress.HTTPS, "hosts": ("*", "*.googleapis.test"), "ports": ()}),
    ({"tcpExternalService": {"ipAddresses": ["192.168.0.0/16", "10.0.0.0/8"], "ports": [5432, 443, 5432]}},
     {"protocol": ir.Egress.TCP, "cidrs": ("10.0.0.0/8", "192.168.0.0/16"), "ports": (443, 5432)}),
])
def test_an_external_destination_is_mesh_egress_for_the_rules_callers(destination: dict[str, Any],
                                                                       expected: dict[str, Any]) -> None:
    config, problems = built(*SHOP, policy("p", rule(vs("frontend"), {"externalService": destination})))
    assert not problems
    [shop] = config.meshes
    assert shop.egress == (ir.External("AccessPolicy shop/p rule 0", callers=ir.Callers(identities=(
        spiffe("frontend"),)), **expected),)
    assert [s.callers for s in config.services] == [ir.Callers()] * 3  # egress opens nothing inside the mesh


def test_external_services_of_several_rules_are_kept_apart_with_their_own_callers() -> None:
    http = {"externalService": {"httpExternalService": {"hostnames": ["api.example.com"]}}}
    config, _ = built(*SHOP, policy("a", rule(vs("frontend"), http)), policy("b", rule(ALL, http)))
    [shop] = config.meshes
    assert [(e.origin, e.callers) for e in shop.egress] == [
        ("AccessPolicy shop/a rule 0", ir.Callers(identities=(spiffe("frontend"),))),
        ("AccessPolicy shop/b rule 0", ir.Callers(all_services=True))]
