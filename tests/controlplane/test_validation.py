"""Admission rules, one table row per rule: a manifest each rule accepts and one it refuses.

Every case starts from the canary set of the API reference (§9.1: namespace ``shop``, mesh ``shop-mesh``,
virtual service ``reviews`` with deployments ``reviews-v1``/``reviews-v2``, gateway ``shop-gw`` …) and
applies a small change written as ``{"wire.path[0].field": value}``. The world a case runs in is the
whole canary set plus the case's extra objects (which replace baseline objects of the same name), so a
case only states what differs. The test id is the rule's name; ``rule:variant`` marks further cases.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshplane.controlplane.hostnames import cidr_problem, hostname_problem
from meshplane.controlplane.model import AnyObject, Kind, parse_object
from meshplane.controlplane.problems import Problem, Severity
from meshplane.controlplane.validation import validate
from meshplane.controlplane.world import Index, KubeService, id_of
from tests import data

Manifest = dict[str, Any]
ERROR, WARNING = Severity.ERROR, Severity.WARNING
DROP = object()  # as a change value: remove the field
SAMPLES = Path(__file__).resolve().parents[2].parent / "shared" / "osok" / "samples"


BASE: dict[str, Manifest] = {doc["metadata"]["name"]: doc for doc in data.manifests("canary")}
SERVICES = (KubeService("shop", "reviews"),)
TIMESTAMP = "2024-05-01T10:00:00Z"
CONDITION_TYPES = ("ServiceMeshDependenciesActive", "ServiceMeshConfigured", "ServiceMeshActive")


# ------------------------------------------------------------------------------- manifest helpers


def m(name: str, changes: Mapping[str, Any] | None = None) -> Manifest:
    """A copy of baseline object ``name`` with ``changes`` (wire path → value, or DROP) applied."""
    doc = copy.deepcopy(BASE[name])
    for path, value in (changes or {}).items():
        apply_change(doc, path, value)
    return doc


def apply_change(doc: Manifest, path: str, value: Any) -> None:
    """Set ``path`` (a wire path, ``a.b[0].c``) in ``doc`` to ``value``; DROP removes it; index len appends."""
    steps: list[str | int] = [int(i) if i else k for k, i in re.findall(r"([^.\[\]]+)|\[(\d+)\]", path)]
    node: Any = doc
    for step in steps[:-1]:
        if isinstance(step, str) and step not in node:
            node[step] = {}
        node = node[step]
    last = steps[-1]
    if value is DROP:
        del node[last]
    elif isinstance(last, int) and last == len(node):
        node.append(copy.deepcopy(value))
    else:
        node[last] = copy.deepcopy(value)


def deleting(name: str, changes: Mapping[str, Any] | None = None) -> Manifest:
    return m(name, {**(changes or {}), "metadata.deletionTimestamp": TIMESTAMP})


def conditions(*statuses: str) -> dict[str, Any]:
    """A status whose conditions (in OSOK's order) have these statuses."""
    return {"conditions": [{"type": kind, "status": status, "lastTransitionTime": TIMESTAMP,
                            "reason": "Successful" if status == "True" else "LifecycleStateChanged",
                            "message": "set by the test"}
                           for kind, status in zip(CONDITION_TYPES, statuses, strict=False)]}


def parse(manifest: Manifest) -> AnyObject:
    obj, problems = parse_object(manifest)
    assert obj is not None, problems
    return obj


MESH_ID = id_of(parse(BASE["shop-mesh"]))
OTHER_MESH = m("shop-mesh", {"metadata.name": "other-mesh"})
RATINGS = m("reviews", {"metadata.name": "ratings", "spec.hosts": ["ratings.shop.svc.cluster.local"]})
RATINGS_V1 = m("reviews-v1", {"metadata.name": "ratings-v1", "spec.virtualService.ref.name": "ratings",
                              "spec.serviceDiscovery.hostname": "ratings-v1.shop.svc.cluster.local"})
STOREFRONT = m("reviews", {"metadata.name": "storefront", "metadata.namespace": "web",
                           "spec.mesh.ref.namespace": "shop", "spec.mtls.mode": "PERMISSIVE",
                           "spec.hosts": ["storefront.web.svc.cluster.local"]})
MUTUAL_TLS = {"mode": "MUTUAL_TLS",
              "serverCertificate": {"kubeSecretTlsCertificate": {"secretName": "shop-tls"}},
              "clientValidation": {"trustedCaBundle": {"kubeSecretCaBundle": {"secretName": "shop-clients-ca"}},
                                   "subjectAlternateNames": ["partner.example.com"]}}
TWO_SERVICE_PORTS = [{"protocol": "TCP", "port": 8080, "serviceport": 80, "name": "http"},
                     {"protocol": "TCP", "port": 8443, "serviceport": 443, "name": "https"}]
EXTERNAL = "spec.rules[1].destination.externalService"
IG_TLS = "spec.hosts[0].listeners[0].tls"
VSRT_DEST = "spec.routeRules[0].httpRoute.destinations"


# ------------------------------------------------------------------------------------------ cases


@dataclass(frozen=True)
class Case:
    """One admission request, the world it meets, and what it must produce."""

    rule: str
    new: Manifest | None
    old: Manifest | None = None
    path: str = ""  # where the refusal (or warning) is reported; empty for accepted cases
    severity: Severity = ERROR
    mentions: tuple[str, ...] = ()  # words the message must contain (the other object, typically)
    extra: tuple[Manifest, ...] = ()  # objects added to the world, replacing baseline ones of the same name
    without: tuple[str, ...] = ()  # baseline objects left out of the world
    services: tuple[KubeService, ...] = SERVICES
    partial: bool = False  # a world of only the objects given (warnings expected, errors not)

    def world(self) -> Index:
        objects = {(d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in BASE.values()
                   if d["metadata"]["name"] not in self.without}
        objects.update({(d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in self.extra})
        return Index((parse(d) for d in objects.values()), self.services, authoritative=not self.partial)

    def run(self) -> list[Problem]:
        old = None if self.old is None else parse(self.old)
        new = None if self.new is None else parse(self.new)
        return validate(old, new, self.world())


def create(rule: str, name: str, changes: Mapping[str, Any] | None = None, **how: Any) -> Case:
    return Case(rule, m(name, changes), **how)


def update(rule: str, name: str, before: Mapping[str, Any] | None = None, after: Mapping[str, Any] | None = None,
           **how: Any) -> Case:
    return Case(rule, m(name, after), old=m(name, before), **how)


def delete(rule: str, name: str, before: Mapping[str, Any], **how: Any) -> Case:
    return Case(rule, None, old=m(name, before), **how)


def _long_name_cases(length: int) -> list[Case]:
    cases = [create("name-at-most-190", "reviews", {"metadata.name": "r" * length}, path="metadata.name")]
    one_of_each = {doc["kind"]: name for name, doc in reversed(BASE.items()) if doc["kind"] != "VirtualService"}
    cases += [create(f"name-at-most-190:{kind}", name, {"metadata.name": "n" * length}, path="metadata.name")
              for kind, name in one_of_each.items()]
    return cases


REJECTED: list[Case] = [
    # --------------------------------------------------------------------------------- generic
    *_long_name_cases(191),
    create("ref-or-id-exactly-one", "reviews", {"spec.mesh.id": MESH_ID}, path="spec.mesh"),
    create("ref-or-id-exactly-one:vd-neither", "reviews-v1", {"spec.virtualService": {}}, path="spec.virtualService"),
    create("ref-or-id-exactly-one:vsrt-destination", "reviews-canary",
           {f"{VSRT_DEST}[0].virtualDeployment.id": "ocid1.x"}, path=f"{VSRT_DEST}[0].virtualDeployment"),
    create("ref-or-id-exactly-one:ap-mesh", "shop-policy", {"spec.mesh": {}}, path="spec.mesh"),
    create("ref-or-id-exactly-one:ap-source-virtual-service", "shop-policy",
           {"spec.rules[1].source.virtualService": {}}, path="spec.rules[1].source.virtualService"),
    create("ref-or-id-exactly-one:ap-destination-virtual-service", "shop-policy",
           {"spec.rules[0].destination.virtualService.id": "ocid1.x"}, path="spec.rules[0].destination.virtualService"),
    create("ref-or-id-exactly-one:ap-source-ingress-gateway", "shop-policy",
           {"spec.rules[0].source.ingressGateway": {}}, path="spec.rules[0].source.ingressGateway"),
    create("ref-or-id-exactly-one:ig-mesh", "shop-gw", {"spec.mesh": {}}, path="spec.mesh"),
    create("ref-or-id-exactly-one:igrt-ingress-gateway", "shop-gw-routes", {"spec.ingressGateway": {}},
           path="spec.ingressGateway"),
    create("ref-or-id-exactly-one:igrt-destination", "shop-gw-routes",
           {"spec.routeRules[0].httpRoute.destinations[0].virtualService": {}},
           path="spec.routeRules[0].httpRoute.destinations[0].virtualService"),
    create("ref-or-id-exactly-one:vdb-virtual-deployment", "reviews-v1-binding", {"spec.virtualDeployment": {}},
           path="spec.virtualDeployment"),
    create("ref-or-id-exactly-one:igd-ingress-gateway", "shop-gw-deploy", {"spec.ingressGateway.id": "ocid1.x"},
           path="spec.ingressGateway"),
    update("parent-immutable", "reviews", after={"spec.mesh.ref.name": "other-mesh"}, extra=(OTHER_MESH,),
           path="spec.mesh", mentions=("Mesh shop/shop-mesh", "Mesh shop/other-mesh")),
    update("parent-immutable:vd", "reviews-v1", after={"spec.virtualService.ref.name": "ratings"},
           extra=(RATINGS,), path="spec.virtualService"),
    update("parent-immutable:vsrt", "reviews-canary", after={"spec.virtualService.ref.name": "ratings"},
           extra=(RATINGS,), path="spec.virtualService"),
    update("parent-immutable:ap", "shop-policy", after={"spec.mesh.ref.name": "other-mesh"}, extra=(OTHER_MESH,),
           path="spec.mesh"),
    update("parent-immutable:ig", "shop-gw", after={"spec.mesh.id": "ocid1.mesh.oc1..another", "spec.mesh.ref": DROP},
           path="spec.mesh"),
    update("parent-immutable:igrt", "shop-gw-routes", after={"spec.ingressGateway.ref.namespace": "edge"},
           path="spec.ingressGateway"),
    update("parent-immutable:igd", "shop-gw-deploy", after={"spec.ingressGateway.ref.name": "edge-gw"},
           path="spec.ingressGateway"),
    update("name-immutable", "reviews-canary", after={"spec.name": "canary"}, path="spec.name"),
    update("name-immutable:removed", "reviews", before={"spec.name": "reviews"}, path="spec.name"),
    update("name-immutable:changed", "shop-gw", before={"spec.name": "gw"}, after={"spec.name": "gateway"},
           path="spec.name"),
    update("mesh-certificate-authorities-immutable", "shop-mesh",
           after={"spec.certificateAuthorities[0].id": "ocid1.certificateauthority.oc1..other"},
           path="spec.certificateAuthorities"),
    create("parent-deleting", "reviews", extra=(deleting("shop-mesh"),), path="spec.mesh.ref",
           mentions=("Mesh shop/shop-mesh",)),
    create("parent-deleting:by-id", "reviews", {"spec.mesh": {"id": MESH_ID}}, extra=(deleting("shop-mesh"),),
           path="spec.mesh.id"),
    create("parent-deleting:vd", "reviews-v1", extra=(deleting("reviews"),), path="spec.virtualService.ref"),
    create("parent-deleting:vsrt", "reviews-canary", extra=(deleting("reviews"),), path="spec.virtualService.ref"),
    create("parent-deleting:ap", "shop-policy", extra=(deleting("shop-mesh"),), path="spec.mesh.ref"),
    create("parent-deleting:ig", "shop-gw", extra=(deleting("shop-mesh"),), path="spec.mesh.ref"),
    create("parent-deleting:igrt", "shop-gw-routes", extra=(deleting("shop-gw"),), path="spec.ingressGateway.ref"),
    create("parent-deleting:igd", "shop-gw-deploy", extra=(deleting("shop-gw"),), path="spec.ingressGateway.ref"),
    create("parent-deleting:vdb", "reviews-v1-binding", extra=(deleting("reviews-v1"),),
           path="spec.virtualDeployment.ref", mentions=("VirtualDeployment shop/reviews-v1",)),
    update("parent-deleting:vdb-update", "reviews-v1-binding", after={"spec.virtualDeployment.ref.name": "reviews-v2"},
           extra=(deleting("reviews-v2"),), path="spec.virtualDeployment.ref"),
    create("parent-missing-warns", "reviews", without=("shop-mesh",), path="spec.mesh.ref", severity=WARNING),
    create("parent-missing-warns:vsrt-destination", "reviews-canary", without=("reviews-v2",),
           path=f"{VSRT_DEST}[1].virtualDeployment.ref", severity=WARNING),
    create("unknown-id", "reviews", {"spec.mesh": {"id": "ocid1.mesh.oc1..nothing"}}, path="spec.mesh.id"),
    create("unknown-id:partial-world", "reviews", {"spec.mesh": {"id": "ocid1.mesh.oc1..nothing"}},
           path="spec.mesh.id", severity=WARNING, partial=True),
    # ------------------------------------------------------------------------ lifecycle gates
    update("update-generation-unchanged", "reviews", {"metadata.generation": 3},
           {"metadata.generation": 4, "spec.mesh.ref.name": "other-mesh"}, extra=(OTHER_MESH,), path="spec.mesh"),
    update("update-gate-dependencies-unknown", "reviews-canary", {"status": conditions("Unknown")},
           {f"{VSRT_DEST}[0].weight": 50}, path="status.conditions[0]"),
    update("update-gate-configured-unknown", "reviews-canary", {"status": conditions("True", "Unknown")},
           {f"{VSRT_DEST}[0].weight": 50}, path="status.conditions[1]"),
    update("update-gate-transitioning", "reviews-canary", {"status": conditions("True", "True", "Unknown")},
           {f"{VSRT_DEST}[0].weight": 50}, path="status.conditions[2]"),
    update("update-gate-dependencies-unknown:vdb", "reviews-v1-binding", {"status": conditions("Unknown")},
           {"spec.target.service.matchLabels.version": "v1b"}, path="status.conditions[0]"),
    delete("delete-gate", "reviews-canary", {"status": conditions("True", "True", "Unknown")},
           path="status.conditions[2]"),
    # ------------------------------------------------------------------------ mesh and mTLS
    update("mesh-mtls-floor", "shop-mesh", after={"spec.mtls.minimum": "STRICT"}, extra=(STOREFRONT,),
           path="spec.mtls.minimum", mentions=("VirtualService web/storefront (PERMISSIVE)",)),
    update("mesh-mtls-floor:service-without-mode", "shop-mesh", after={"spec.mtls.minimum": "STRICT"},
           extra=(m("reviews", {"spec.mtls": DROP}),), path="spec.mtls.minimum", mentions=("shop/reviews",)),
    update("mesh-mtls-floor:removing-mtls-means-strict", "shop-mesh", after={"spec.mtls": DROP},
           extra=(STOREFRONT,), path="spec.mtls"),
    update("mesh-mtls-floor:service-by-id", "shop-mesh", after={"spec.mtls.minimum": "STRICT"},
           extra=({**STOREFRONT, "spec": {**STOREFRONT["spec"], "mesh": {"id": MESH_ID}}},), path="spec.mtls.minimum"),
    update("mesh-mtls-floor:old-minimum-from-status", "shop-mesh",
           before={"spec.mtls.minimum": "STRICT", "status.meshMtls.minimum": "PERMISSIVE"},
           after={"spec.mtls.minimum": "STRICT"}, extra=(STOREFRONT,), path="spec.mtls.minimum"),
    create("vs-mtls-floor", "reviews", {"spec.mtls.mode": "DISABLED"}, path="spec.mtls.mode",
           mentions=("Mesh shop/shop-mesh", "PERMISSIVE")),
    create("vs-mtls-floor:mesh-status-wins", "reviews", {"spec.mtls.mode": "PERMISSIVE"},
           extra=(m("shop-mesh", {"status.meshMtls.minimum": "STRICT"}),), path="spec.mtls.mode"),
    create("vs-mtls-floor:mesh-default-strict", "reviews", {"spec.mtls.mode": "PERMISSIVE"},
           extra=(m("shop-mesh", {"spec.mtls": DROP}),), path="spec.mtls.mode"),
    update("vs-mtls-floor:update-lowers-mode", "reviews", after={"spec.mtls.mode": "DISABLED"}, path="spec.mtls.mode"),
    update("vs-hosts-not-emptied", "reviews", after={"spec.hosts": DROP}, path="spec.hosts",
           mentions=("VirtualDeployment shop/reviews-v1",)),
    create("vs-hosts-valid-dns", "reviews", {"spec.hosts": ["reviews:9080"]}, path="spec.hosts[0]"),
    create("vs-hosts-valid-dns:inner-wildcard", "reviews", {"spec.hosts": ["ok.example.com", "reviews.*.local"]},
           path="spec.hosts[1]"),
    create("vs-hosts-valid-dns:bad-label", "reviews", {"spec.hosts": ["-reviews.shop"]}, path="spec.hosts[0]"),
    create("vs-hosts-valid-dns:lone-star", "reviews", {"spec.hosts": ["*"]}, path="spec.hosts[0]"),
    # ------------------------------------------------------------------------ VirtualDeployment
    create("vd-hostname-listener-pairing", "reviews-v1", {"spec.serviceDiscovery.hostname": DROP},
           path="spec.serviceDiscovery.hostname"),
    create("vd-hostname-listener-pairing:disabled-with-hostname", "reviews-v1",
           {"spec.serviceDiscovery.type": "DISABLED"}, path="spec.serviceDiscovery.hostname"),
    create("vd-hostname-listener-pairing:disabled-with-listeners", "reviews-v1",
           {"spec.serviceDiscovery": {"type": "DISABLED"}}, path="spec.serviceDiscovery"),
    create("vd-hostname-listener-pairing:listeners-without-discovery", "reviews-v1", {"spec.serviceDiscovery": DROP},
           path="spec.serviceDiscovery"),
    create("vd-hostname-listener-pairing:hostname-without-listeners", "reviews-v1", {"spec.listener": DROP},
           path="spec.listener"),
    update("vd-hostname-listener-pairing:on-update", "reviews-v1", after={"spec.listener": []}, path="spec.listener"),
    create("vd-parent-vs-has-hosts", "reviews-v1", extra=(m("reviews", {"spec.hosts": DROP}),),
           path="spec.virtualService", mentions=("VirtualService shop/reviews",)),
    create("vd-listener-ports-unique", "reviews-v1", {"spec.listener[1]": {"protocol": "GRPC", "port": 9080}},
           path="spec.listener[1].port"),
    create("vd-listener-not-a-sidecar-port", "reviews-v1", {"spec.listener[1]": {"protocol": "HTTP", "port": 15001}},
           path="spec.listener[1].port", mentions=("kept by the sidecar",)),
    # ------------------------------------------------------------------------ route tables
    create("route-rule-exactly-one-type", "reviews-canary",
           {"spec.routeRules[0].tcpRoute": {"destinations": [{"virtualDeployment": {"ref": {"name": "reviews-v1"}},
                                                              "weight": 100}]}}, path="spec.routeRules[0]"),
    create("route-rule-exactly-one-type:empty-rule", "reviews-canary", {"spec.routeRules[1]": {}},
           path="spec.routeRules[1]"),
    create("route-rule-exactly-one-type:igrt", "shop-gw-routes",
           {"spec.routeRules[0].tlsPassthroughRoute": {"destinations": [{"virtualService": {"ref": {"name": "x"}}}]}},
           path="spec.routeRules[0]"),
    create("vsrt-destinations-share-one-port", "reviews-canary", {f"{VSRT_DEST}[1].port": 9081},
           path=f"{VSRT_DEST}[1].port"),
    create("vsrt-destinations-share-one-port:one-omits", "reviews-canary", {f"{VSRT_DEST}[1].port": DROP},
           path=f"{VSRT_DEST}[1].port"),
    create("vsrt-destination-deleting", "reviews-canary", extra=(deleting("reviews-v2"),),
           path=f"{VSRT_DEST}[1].virtualDeployment.ref", mentions=("VirtualDeployment shop/reviews-v2",)),
    update("vsrt-destination-deleting:on-update", "reviews-canary", after={f"{VSRT_DEST}[1].weight": 20},
           extra=(deleting("reviews-v2"),), path=f"{VSRT_DEST}[1].virtualDeployment.ref"),
    create("vsrt-destination-of-own-service", "reviews-canary", {f"{VSRT_DEST}[1].virtualDeployment.ref.name":
                                                                 "ratings-v1"},
           extra=(RATINGS, RATINGS_V1), path=f"{VSRT_DEST}[1].virtualDeployment",
           mentions=("VirtualDeployment shop/ratings-v1", "VirtualService shop/ratings")),
    create("vsrt-destination-port-is-listener", "reviews-canary",
           {f"{VSRT_DEST}[0].port": 9090, f"{VSRT_DEST}[1].port": 9090}, path=f"{VSRT_DEST}[0].port", severity=WARNING),
    create("igrt-host-exists", "shop-gw-routes", {"spec.routeRules[0].httpRoute.ingressGatewayHost.name": "private"},
           path="spec.routeRules[0].httpRoute.ingressGatewayHost.name", severity=WARNING, mentions=("'public'",)),
    create("igrt-host-port-is-listener", "shop-gw-routes",
           {"spec.routeRules[0].httpRoute.ingressGatewayHost.port": 9090},
           path="spec.routeRules[0].httpRoute.ingressGatewayHost.port", severity=WARNING),
    create("igrt-destination-deleting", "shop-gw-routes", extra=(deleting("reviews"),),
           path="spec.routeRules[0].httpRoute.destinations[0].virtualService.ref"),
    # ------------------------------------------------------------------------ AccessPolicy
    create("ap-target-exactly-one-kind", "shop-policy", {"spec.rules[0].source.allVirtualServices": {}},
           path="spec.rules[0].source"),
    create("ap-target-exactly-one-kind:empty-destination", "shop-policy", {"spec.rules[0].destination": {}},
           path="spec.rules[0].destination"),
    create("ap-source-not-external", "shop-policy",
           {"spec.rules[0].source": {"externalService": {"httpExternalService": {"hostnames": ["a.example.com"]}}}},
           path="spec.rules[0].source.externalService"),
    create("ap-destination-not-ingress-gateway", "shop-policy",
           {"spec.rules[1].destination": {"ingressGateway": {"ref": {"name": "shop-gw"}}}},
           path="spec.rules[1].destination.ingressGateway"),
    create("ap-external-service-exactly-one", "shop-policy",
           {f"{EXTERNAL}.httpExternalService": {"hostnames": ["api.ratings.example.com"]}}, path=EXTERNAL),
    create("ap-external-service-exactly-one:none", "shop-policy", {EXTERNAL: {}}, path=EXTERNAL),
    create("ap-external-hostnames-valid", "shop-policy",
           {f"{EXTERNAL}.httpsExternalService.hostnames": ["api.ratings.example.com:443"]},
           path=f"{EXTERNAL}.httpsExternalService.hostnames[0]"),
    create("ap-external-hostnames-valid:http", "shop-policy",
           {EXTERNAL: {"httpExternalService": {"hostnames": ["*.example.com", "bad host"]}}},
           path=f"{EXTERNAL}.httpExternalService.hostnames[1]"),
    create("ap-tcp-cidrs-valid", "shop-policy", {EXTERNAL: {"tcpExternalService": {"ipAddresses": ["10.0.0.0/33"]}}},
           path=f"{EXTERNAL}.tcpExternalService.ipAddresses[0]"),
    create("ap-tcp-cidrs-valid:hostname", "shop-policy",
           {EXTERNAL: {"tcpExternalService": {"ipAddresses": ["10.0.0.0/8", "db.example.com"]}}},
           path=f"{EXTERNAL}.tcpExternalService.ipAddresses[1]"),
    create("ap-target-deleting", "shop-policy", extra=(deleting("reviews"),),
           path="spec.rules[0].destination.virtualService.ref", mentions=("VirtualService shop/reviews",)),
    create("ap-target-deleting:source-virtual-service", "shop-policy", extra=(deleting("reviews"),),
           path="spec.rules[1].source.virtualService.ref"),
    create("ap-target-deleting:gateway-source", "shop-policy", extra=(deleting("shop-gw"),),
           path="spec.rules[0].source.ingressGateway.ref"),
    # ------------------------------------------------------------------------ IngressGateway
    create("ig-hostnames-required", "shop-gw", {"spec.hosts[0].hostnames": DROP}, path="spec.hosts[0].hostnames"),
    create("ig-hostnames-required:tls-passthrough", "shop-gw",
           {"spec.hosts[0]": {"name": "sni", "listeners": [{"protocol": "TLS_PASSTHROUGH", "port": 8443}]}},
           path="spec.hosts[0].hostnames"),
    create("ig-listener-port-min-1024", "shop-gw", {"spec.hosts[0].listeners[0].port": 443},
           path="spec.hosts[0].listeners[0].port"),
    create("ig-tls-server-certificate-required", "shop-gw", {f"{IG_TLS}.mode": "TLS"},
           path=f"{IG_TLS}.serverCertificate"),
    create("ig-tls-server-certificate-required:permissive", "shop-gw", {f"{IG_TLS}.mode": "PERMISSIVE"},
           path=f"{IG_TLS}.serverCertificate"),
    create("ig-tls-certificate-one-source", "shop-gw",
           {IG_TLS: {**MUTUAL_TLS, "serverCertificate": {"kubeSecretTlsCertificate": {"secretName": "shop-tls"},
                                                         "ociTlsCertificate": {"certificateId": "ocid1.cert"}}}},
           path=f"{IG_TLS}.serverCertificate"),
    create("ig-tls-certificate-one-source:none", "shop-gw", {IG_TLS: {"mode": "TLS", "serverCertificate": {}}},
           path=f"{IG_TLS}.serverCertificate"),
    create("ig-mutual-tls-needs-trusted-ca", "shop-gw", {IG_TLS: MUTUAL_TLS, f"{IG_TLS}.clientValidation": DROP},
           path=f"{IG_TLS}.clientValidation"),
    create("ig-mutual-tls-needs-trusted-ca:no-bundle", "shop-gw",
           {IG_TLS: {**MUTUAL_TLS, "clientValidation": {"subjectAlternateNames": ["partner.example.com"]}}},
           path=f"{IG_TLS}.clientValidation.trustedCaBundle"),
    create("ig-ca-bundle-one-source", "shop-gw",
           {IG_TLS: {**MUTUAL_TLS, "mode": "TLS", "clientValidation": {"trustedCaBundle": {
               "ociCaBundle": {"caBundleId": "ocid1.cabundle"}, "kubeSecretCaBundle": {"secretName": "ca"}}}}},
           path=f"{IG_TLS}.clientValidation.trustedCaBundle"),
    create("ig-ca-bundle-one-source:empty", "shop-gw",
           {IG_TLS: {**MUTUAL_TLS, "clientValidation": {"trustedCaBundle": {}}}},
           path=f"{IG_TLS}.clientValidation.trustedCaBundle"),
    create("ig-host-names-unique", "shop-gw",
           {"spec.hosts[1]": {"name": "public", "hostnames": ["admin.example.com"],
                              "listeners": [{"protocol": "HTTP", "port": 8081}]}}, path="spec.hosts[1].name"),
    create("ig-port-one-protocol", "shop-gw",
           {"spec.hosts[1]": {"name": "db", "listeners": [{"protocol": "TCP", "port": 8080}]}},
           path="spec.hosts[1].listeners[0].port", mentions=("HTTP",)),
    create("ig-hostnames-valid", "shop-gw", {"spec.hosts[0].hostnames": ["shop.example.com:80"]},
           path="spec.hosts[0].hostnames[0]"),
    # ------------------------------------------------------------------------ bindings and gateway pods
    create("vdb-service-exists", "reviews-v1-binding", services=(), path="spec.target.service.ref",
           mentions=("Service shop/reviews",)),
    create("vdb-service-exists:partial-world", "reviews-v1-binding", services=(), partial=True,
           path="spec.target.service.ref", severity=WARNING),
    create("vdb-service-not-deleting", "reviews-v1-binding", services=(KubeService("shop", "reviews", deleting=True),),
           path="spec.target.service.ref"),
    create("igd-max-pods-at-least-min-pods", "shop-gw-deploy", {"spec.deployment.autoscaling.minPods": 4},
           path="spec.deployment.autoscaling.maxPods"),
    create("igd-serviceport-needs-service", "shop-gw-deploy", {"spec.service": DROP}, path="spec.service"),
    create("igd-serviceports-one-protocol", "shop-gw-deploy",
           {"spec.ports": TWO_SERVICE_PORTS, "spec.ports[1].protocol": "UDP"}, path="spec.ports[1].protocol"),
    create("igd-serviceports-named-uniquely", "shop-gw-deploy",
           {"spec.ports": TWO_SERVICE_PORTS, "spec.ports[1].name": DROP}, path="spec.ports[1].name"),
    create("igd-serviceports-named-uniquely:duplicate", "shop-gw-deploy",
           {"spec.ports": TWO_SERVICE_PORTS, "spec.ports[1].name": "http"}, path="spec.ports[1].name"),
    create("igd-secrets-unique", "shop-gw-deploy", {"spec.secrets": [{"secretName": "shop-tls"},
                                                                     {"secretName": "shop-tls"}]},
           path="spec.secrets[1].secretName"),
]

ACCEPTED: list[Case] = [
    # --------------------------------------------------------------------------------- generic
    *_long_name_cases(190),
    create("ref-or-id-exactly-one", "reviews", {"spec.mesh": {"id": MESH_ID}}),
    update("parent-immutable", "reviews", after={"spec.mesh.ref.namespace": "shop"}),
    update("parent-immutable:ref-to-id-of-same-object", "reviews", after={"spec.mesh": {"id": MESH_ID}}),
    update("parent-immutable:vdb-may-change-deployment", "reviews-v1-binding",
           after={"spec.virtualDeployment.ref.name": "reviews-v2"}),
    update("name-immutable", "reviews-canary", {"spec.name": "canary"},
           {"spec.name": "canary", "spec.description": "90/10"}),
    update("mesh-certificate-authorities-immutable", "shop-mesh", after={"spec.description": "the shop"}),
    create("parent-deleting", "reviews"),
    update("parent-deleting:immutable-parent-on-update", "reviews", after={"spec.description": "x"},
           extra=(deleting("shop-mesh"),)),
    create("parent-missing-warns", "reviews"),
    create("unknown-id", "reviews", {"spec.mesh": {"id": MESH_ID}}),
    # ------------------------------------------------------------------------ lifecycle gates
    update("update-generation-unchanged", "reviews", {"metadata.generation": 3},
           {"metadata.generation": 3, "spec.mesh.ref.name": "other-mesh"}),
    update("update-gate-dependencies-unknown", "reviews-canary", {"status": conditions("True", "True", "True")},
           {f"{VSRT_DEST}[0].weight": 50}),
    update("update-gate-configured-unknown", "reviews-canary", {"status": conditions("True", "False")},
           {f"{VSRT_DEST}[0].weight": 50}),
    update("update-gate-transitioning", "reviews-canary", {"status": conditions("True", "True", "True")},
           {f"{VSRT_DEST}[0].weight": 50}),
    update("update-gate-transitioning:active-false-is-editable", "reviews-canary",
           {"status": conditions("True", "True", "False")}, {f"{VSRT_DEST}[0].weight": 50}),
    update("update-gate-dependencies-unknown:vdb", "reviews-v1-binding", {"status": conditions("True", "True")},
           {"spec.target.service.matchLabels.version": "v1b"}),
    delete("delete-gate", "reviews-canary", {"status": conditions("True", "True", "False")}),
    delete("delete-gate:no-conditions", "reviews-canary", {}),
    delete("delete-gate:dependencies-unknown", "reviews-canary", {"status": conditions("Unknown", "True", "Unknown")}),
    # ------------------------------------------------------------------------ mesh and mTLS
    update("mesh-mtls-floor", "shop-mesh", after={"spec.mtls.minimum": "STRICT"}),
    update("mesh-mtls-floor:lowering", "shop-mesh", after={"spec.mtls.minimum": "DISABLED"}, extra=(STOREFRONT,)),
    update("mesh-mtls-floor:deleting-service-ignored", "shop-mesh", after={"spec.mtls.minimum": "STRICT"},
           extra=({**STOREFRONT, "metadata": {**STOREFRONT["metadata"], "deletionTimestamp": TIMESTAMP}},)),
    update("mesh-mtls-floor:service-of-other-mesh", "shop-mesh", after={"spec.mtls.minimum": "STRICT"},
           extra=({**STOREFRONT, "spec": {**STOREFRONT["spec"], "mesh": {"ref": {"name": "other-mesh"}}}},)),
    update("mesh-mtls-floor:status-mode-counts", "shop-mesh", after={"spec.mtls.minimum": "STRICT"},
           extra=({**STOREFRONT, "status": {"virtualServiceMtls": {"mode": "STRICT"}}},)),
    update("mesh-mtls-floor:unchanged-minimum", "shop-mesh", after={"spec.description": "x"}, extra=(STOREFRONT,)),
    create("vs-mtls-floor", "reviews", {"spec.mtls.mode": "PERMISSIVE"}),
    create("vs-mtls-floor:no-mode", "reviews", {"spec.mtls": DROP}),
    create("vs-mtls-floor:mesh-unknown", "reviews", {"spec.mtls.mode": "DISABLED"}, without=("shop-mesh",),
           partial=True),
    update("vs-mtls-floor:update-mode-unchanged", "reviews",
           {"spec.mtls.mode": "PERMISSIVE", "status.virtualServiceMtls.mode": "PERMISSIVE"},
           {"spec.mtls.mode": "PERMISSIVE", "spec.description": "x"},
           extra=(m("shop-mesh", {"status.meshMtls.minimum": "STRICT"}),)),
    update("vs-hosts-not-emptied", "reviews", after={"spec.hosts": DROP}, without=("reviews-v1", "reviews-v2")),
    update("vs-hosts-not-emptied:deployments-of-other-service", "reviews", {"metadata.name": "details"},
           {"metadata.name": "details", "spec.hosts": []}),
    update("vs-hosts-not-emptied:egress-only-deployments", "reviews", after={"spec.hosts": DROP},
           extra=(m("reviews-v1", {"spec.listener": DROP, "spec.serviceDiscovery": DROP}),
                  m("reviews-v2", {"spec.listener": DROP, "spec.serviceDiscovery": DROP}))),
    create("vs-hosts-valid-dns", "reviews",
           {"spec.hosts": ["reviews", "reviews.shop.svc.cluster.local", "*.example.com", "*.com", "Reviews.Shop"]}),
    # ------------------------------------------------------------------------ VirtualDeployment
    create("vd-hostname-listener-pairing", "reviews-v1"),
    create("vd-hostname-listener-pairing:egress-only", "reviews-v1",
           {"spec.listener": DROP, "spec.serviceDiscovery": DROP}),
    create("vd-hostname-listener-pairing:disabled-egress-only", "reviews-v1",
           {"spec.listener": DROP, "spec.serviceDiscovery": {"type": "DISABLED"}}),
    create("vd-parent-vs-has-hosts", "reviews-v1", without=("reviews",), partial=True),
    create("vd-parent-vs-has-hosts:egress-only-needs-no-hosts", "reviews-v1",
           {"spec.listener": DROP, "spec.serviceDiscovery": DROP}, extra=(m("reviews", {"spec.hosts": DROP}),)),
    create("vd-listener-ports-unique", "reviews-v1", {"spec.listener[1]": {"protocol": "GRPC", "port": 9081}}),
    create("vd-listener-not-a-sidecar-port", "reviews-v1", {"spec.listener[1]": {"protocol": "HTTP", "port": 15011}}),
    # ------------------------------------------------------------------------ route tables
    create("route-rule-exactly-one-type", "reviews-canary",
           {"spec.routeRules[0]": {"tcpRoute": {"destinations": [{"virtualDeployment": {"ref": {"name": "reviews-v1"}},
                                                                   "weight": 100}]}}}),
    create("route-rule-exactly-one-type:igrt", "shop-gw-routes"),
    create("vsrt-destinations-share-one-port", "reviews-canary"),
    create("vsrt-destinations-share-one-port:all-omit", "reviews-canary",
           {f"{VSRT_DEST}[0].port": DROP, f"{VSRT_DEST}[1].port": DROP}),
    create("vsrt-destination-deleting", "reviews-canary"),
    update("vsrt-destination-deleting:update-removes-it", "reviews-canary",
           after={VSRT_DEST: [{"virtualDeployment": {"ref": {"name": "reviews-v1"}}, "weight": 100, "port": 9080}]},
           extra=(deleting("reviews-v2"),)),
    create("vsrt-destination-of-own-service", "reviews-canary"),
    create("vsrt-destination-of-own-service:deployment-unknown", "reviews-canary", without=("reviews-v2",),
           partial=True),
    create("vsrt-destination-port-is-listener", "reviews-canary"),
    create("igrt-host-exists", "shop-gw-routes"),
    create("igrt-host-exists:gateway-unknown", "shop-gw-routes", without=("shop-gw",), partial=True),
    create("igrt-host-port-is-listener", "shop-gw-routes",
           {"spec.routeRules[0].httpRoute.ingressGatewayHost.port": 8080}),
    create("igrt-destination-deleting", "shop-gw-routes"),
    # ------------------------------------------------------------------------ AccessPolicy
    create("ap-target-exactly-one-kind", "shop-policy", {"spec.rules[0].source": {"allVirtualServices": {}}}),
    create("ap-source-not-external", "shop-policy"),
    create("ap-destination-not-ingress-gateway", "shop-policy"),
    create("ap-external-service-exactly-one", "shop-policy",
           {EXTERNAL: {"tcpExternalService": {"ipAddresses": ["10.0.0.0/8"], "ports": [5432]}}}),
    create("ap-external-hostnames-valid", "shop-policy",
           {f"{EXTERNAL}.httpsExternalService.hostnames": ["*", "*.example.com", "api.ratings.example.com"]}),
    create("ap-tcp-cidrs-valid", "shop-policy",
           {EXTERNAL: {"tcpExternalService": {"ipAddresses": ["10.0.0.0/8", "2001:db8::/32", "192.168.1.10", "::1"]}}}),
    create("ap-target-deleting", "shop-policy"),
    # ------------------------------------------------------------------------ IngressGateway
    create("ig-hostnames-required", "shop-gw",
           {"spec.hosts[1]": {"name": "db", "listeners": [{"protocol": "TCP", "port": 5432}]}}),
    create("ig-listener-port-min-1024", "shop-gw", {"spec.hosts[0].listeners[0].port": 1024}),
    create("ig-tls-server-certificate-required", "shop-gw"),
    create("ig-tls-server-certificate-required:tls", "shop-gw",
           {IG_TLS: {"mode": "TLS", "serverCertificate": {"kubeSecretTlsCertificate": {"secretName": "shop-tls"}}}}),
    create("ig-tls-certificate-one-source", "shop-gw",
           {IG_TLS: {"mode": "TLS", "serverCertificate": {"ociTlsCertificate": {"certificateId": "ocid1.cert"}}}}),
    create("ig-mutual-tls-needs-trusted-ca", "shop-gw", {IG_TLS: MUTUAL_TLS}),
    create("ig-ca-bundle-one-source", "shop-gw", {IG_TLS: {**MUTUAL_TLS, "mode": "PERMISSIVE"}}),
    create("ig-host-names-unique", "shop-gw",
           {"spec.hosts[1]": {"name": "admin", "hostnames": ["admin.example.com"],
                              "listeners": [{"protocol": "HTTP", "port": 8080}]}}),
    create("ig-port-one-protocol", "shop-gw",
           {"spec.hosts[1]": {"name": "admin", "hostnames": ["admin.example.com"],
                              "listeners": [{"protocol": "HTTP", "port": 8080}, {"protocol": "TCP", "port": 5432}]}}),
    create("ig-hostnames-valid", "shop-gw", {"spec.hosts[0].hostnames": ["shop.example.com", "*.shop.example.com"]}),
    # ------------------------------------------------------------------------ bindings and gateway pods
    create("vdb-service-exists", "reviews-v1-binding"),
    create("vdb-service-exists:other-namespace", "reviews-v1-binding", {"spec.target.service.ref.namespace": "web"},
           services=(KubeService("web", "reviews"),)),
    create("vdb-service-not-deleting", "reviews-v1-binding"),
    create("igd-max-pods-at-least-min-pods", "shop-gw-deploy", {"spec.deployment.autoscaling.minPods": 3}),
    create("igd-serviceport-needs-service", "shop-gw-deploy",
           {"spec.service": DROP, "spec.ports[0].serviceport": DROP}),
    create("igd-serviceports-one-protocol", "shop-gw-deploy", {"spec.ports": TWO_SERVICE_PORTS}),
    create("igd-serviceports-named-uniquely", "shop-gw-deploy", {"spec.ports": TWO_SERVICE_PORTS}),
    create("igd-serviceports-named-uniquely:single-port-needs-no-name", "shop-gw-deploy"),
    create("igd-secrets-unique", "shop-gw-deploy", {"spec.secrets": [{"secretName": "shop-tls"},
                                                                     {"secretName": "shop-clients-ca"}]}),
]


def _ids(cases: list[Case]) -> list[str]:
    return [case.rule for case in cases]


# ------------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("case", REJECTED, ids=_ids(REJECTED))
def test_rejects(case: Case) -> None:
    problems = case.run()
    hits = [p for p in problems if p.path == case.path and p.severity is case.severity]
    assert hits, f"expected a {case.severity} at {case.path}, got {problems}"
    for word in case.mentions:
        assert any(word in p.message for p in hits), f"no message at {case.path} mentions {word!r}: {hits}"
    if case.severity is WARNING:
        assert not [p for p in problems if p.is_error], "a warning rule must not refuse the request"


@pytest.mark.parametrize("case", ACCEPTED, ids=_ids(ACCEPTED))
def test_accepts(case: Case) -> None:
    problems = case.run()
    assert not [p for p in problems if p.is_error]
    if not case.partial:
        assert problems == [], "a complete, consistent world leaves nothing to warn about"


def test_every_rule_has_an_accepted_and_a_rejected_case() -> None:
    def rules(cases: list[Case]) -> set[str]:
        return {case.rule.split(":")[0] for case in cases}

    assert rules(ACCEPTED) == rules(REJECTED)
    assert len(set(_ids(ACCEPTED))) == len(ACCEPTED) and len(set(_ids(REJECTED))) == len(REJECTED)


def test_problem_paths_are_wire_paths() -> None:
    wire_path = re.compile(r"[a-z][A-Za-z]*(\[\d+\])?(\.[a-z][A-Za-z]*(\[\d+\])?)*")
    for case in REJECTED:
        for problem in case.run():
            assert wire_path.fullmatch(problem.path), f"{case.rule}: {problem.path!r} is not a camelCase wire path"


def test_canary_set_is_clean_in_a_complete_world() -> None:
    for name in BASE:
        assert create("canary", name).run() == [], name


def test_osok_samples_have_no_errors_in_a_partial_world() -> None:
    if not SAMPLES.is_dir():
        pytest.skip("OSOK samples are not available next to this checkout")
    objects = [parse(doc) for path in sorted(SAMPLES.glob("*.yaml"))
               for doc in yaml.safe_load_all(path.read_text()) if isinstance(doc, dict)]
    assert len({o.kind for o in objects}) == len(Kind), "one sample of each kind"
    world = Index(objects, authoritative=False)
    for obj in objects:
        errors = [p for p in validate(None, obj, world) if p.is_error]
        assert errors == [], f"{obj.key}: {errors}"


def test_generation_unchanged_skips_every_rule() -> None:
    old = parse(m("reviews", {"metadata.generation": 2, "status": conditions("Unknown")}))
    new = parse(m("reviews", {"metadata.generation": 2, "spec.hosts": ["bad:1"], "spec.mesh": {}}))
    assert validate(old, new, Index()) == []


def test_changing_the_kind_is_refused() -> None:
    old, new = parse(m("reviews")), parse(m("shop-mesh", {"metadata.name": "reviews"}))
    assert [p.path for p in validate(old, new, Index())] == ["kind"]


@pytest.mark.parametrize(("value", "allow_any", "ok"), [
    ("reviews", False, True), ("reviews.shop.svc.cluster.local", False, True), ("*.example.com", False, True),
    ("*.com", False, True), ("xn--bcher-kva.example", False, True), ("*", True, True), ("*", False, False),
    ("", False, False), ("*.", False, False), ("a..b", False, False), ("a_b.example.com", False, False),
    ("example.com.", False, False), ("host:80", False, False), ("**.example.com", False, False),
    ("a" * 64 + ".com", False, False), (".".join(["a" * 63] * 4), False, False),
])
def test_hostname_syntax(value: str, allow_any: bool, ok: bool) -> None:
    assert (hostname_problem(value, allow_any=allow_any) is None) is ok


@pytest.mark.parametrize(("value", "ok"), [
    ("10.0.0.0/8", True), ("10.1.2.3/8", True), ("192.168.1.10", True), ("0.0.0.0/0", True), ("2001:db8::/32", True),
    ("::1", True), ("10.0.0.0/33", False), ("256.0.0.1", False), ("db.example.com", False), ("", False),
])
def test_cidr_syntax(value: str, ok: bool) -> None:
    assert (cidr_problem(value) is None) is ok
