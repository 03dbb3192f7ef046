"""Parsing the nine kinds: every problem is reported with its path, and good input round-trips."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from meshplane.controlplane import wire
from meshplane.controlplane.model import (
    Kind,
    ListenerProtocol,
    MtlsMode,
    VirtualDeploymentSpec,
    VirtualServiceRouteTableSpec,
    dump_object,
    parse_object,
)
from meshplane.controlplane.wire import FrozenMap, f


def manifest(kind: str, spec: Any, **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "servicemesh.oci.oracle.com/v1beta1", "kind": kind,
            "metadata": {"name": "x", "namespace": "shop", **meta}, "spec": spec}


def paths(raw: dict[str, Any]) -> dict[str, str]:
    obj, problems = parse_object(raw)
    assert obj is None
    return {p.path: p.message for p in problems}


VD_SPEC = {"virtualService": {"ref": {"name": "reviews"}},
           "serviceDiscovery": {"type": "DNS", "hostname": "reviews-v1.shop"},
           "listener": [{"protocol": "HTTP", "port": 9080, "requestTimeoutInMs": 30000}]}


def test_camel_case_wire_names_become_pythonic_fields() -> None:
    obj, problems = parse_object(manifest("VirtualDeployment", VD_SPEC))
    assert problems == [] and obj is not None
    spec = obj.spec
    assert isinstance(spec, VirtualDeploymentSpec)
    assert spec.listeners[0].protocol is ListenerProtocol.HTTP
    assert spec.listeners[0].request_timeout_in_ms == 30000
    assert spec.virtual_service.ref is not None and spec.virtual_service.ref.name == "reviews"


def test_unknown_fields_are_errors_naming_their_path_with_a_suggestion() -> None:
    spec = {**VD_SPEC, "listeners": [{"protocol": "HTTP", "port": 1}]}
    found = paths(manifest("VirtualDeployment", spec))
    assert "spec.listeners" in found and "did you mean 'listener'?" in found["spec.listeners"]


def test_every_problem_is_reported_not_only_the_first() -> None:
    spec = {"virtualService": {"ref": {}},
            "routeRules": [{"httpRoute": {"destinations": [{"virtualDeployment": {"id": ""}, "weight": 101}],
                                          "pathType": "EXACT", "isGrpc": "no"}}]}
    found = paths(manifest("VirtualServiceRouteTable", spec))
    assert set(found) == {
        "spec.virtualService.ref.name",
        "spec.routeRules[0].httpRoute.destinations[0].virtualDeployment.id",
        "spec.routeRules[0].httpRoute.destinations[0].weight",
        "spec.routeRules[0].httpRoute.pathType",
        "spec.routeRules[0].httpRoute.isGrpc",
    }
    assert found["spec.routeRules[0].httpRoute.pathType"] == "must be one of PREFIX; got 'EXACT'"


@pytest.mark.parametrize(("kind", "spec", "path"), [
    ("Mesh", {"certificateAuthorities": []}, "spec.certificateAuthorities"),
    ("VirtualService", {}, "spec.mesh"),
    ("VirtualDeployment", {**VD_SPEC, "listener": [{"protocol": "HTTP", "port": 70000}]}, "spec.listener[0].port"),
    ("AccessPolicy", {"mesh": {"ref": {"name": "m"}}, "rules": []}, "spec.rules"),
    ("IngressGateway", {"mesh": {"id": "x" * 256}, "hosts": [{"name": "h", "listeners": []}]}, "spec.mesh.id"),
    ("VirtualDeploymentBinding", {"virtualDeployment": {"ref": {"name": "v"}},
                                  "target": {"service": {"ref": {"name": "s"}}},
                                  "resources": {"limits": {"cpu": "lots"}}}, "spec.resources.limits.cpu"),
    ("IngressGatewayDeployment", {"ingressGateway": {"ref": {"name": "g"}}, "ports": [],
                                  "deployment": {"autoscaling": {"minPods": 0, "maxPods": 1}}},
     "spec.deployment.autoscaling.minPods"),
], ids=["mesh-one-certificate-authority", "vs-mesh-required", "vd-port-range", "ap-at-least-one-rule",
        "ig-id-length", "vdb-quantity-pattern", "igd-min-pods-at-least-one"])
def test_crd_schema_constraints_are_enforced_by_the_parser(kind: str, spec: Any, path: str) -> None:
    assert path in paths(manifest(kind, spec))


def test_defaults_of_the_crd_are_applied() -> None:
    spec = {"virtualService": {"ref": {"name": "r"}},
            "routeRules": [{"httpRoute": {"destinations": [{"virtualDeployment": {"ref": {"name": "v"}},
                                                           "weight": 1}]}}]}
    obj, _ = parse_object(manifest("VirtualServiceRouteTable", spec))
    assert obj is not None and isinstance(obj.spec, VirtualServiceRouteTableSpec)
    route = obj.spec.route_rules[0].http_route
    assert route is not None and route.is_grpc is False


def test_resource_quantities_accept_integers_and_strings() -> None:
    spec = {"virtualDeployment": {"ref": {"name": "v"}}, "target": {"service": {"ref": {"name": "s"}}},
            "resources": {"limits": {"cpu": 2, "memory": "512Mi"}}}
    obj, problems = parse_object(manifest("VirtualDeploymentBinding", spec))
    assert problems == [] and obj is not None
    assert obj.spec.resources.limits == {"cpu": "2", "memory": "512Mi"}


@pytest.mark.parametrize(("raw", "path"), [
    ({"apiVersion": "v1", "kind": "Mesh", "metadata": {"name": "m"}, "spec": {}}, "apiVersion"),
    ({**manifest("Meshy", {})}, "kind"),
    ({**manifest("Mesh", {}), "metadata": {"name": "Not_Valid"}}, "metadata.name"),
    ({**manifest("Mesh", {}), "metadata": {"name": "m", "namespace": "a.b"}}, "metadata.namespace"),
    ({**manifest("Mesh", {}), "metadata": {"name": "m", "labels": {"on": True}}}, "metadata.labels"),
    ({k: v for k, v in manifest("Mesh", {}).items() if k != "spec"}, "spec"),
    ({**manifest("Mesh", {}), "extra": 1}, "extra"),
    ({**manifest("Mesh", {}), "status": {"meshMtls": {"minimum": "HIGH"}}}, "status.meshMtls.minimum"),
], ids=["api-version", "kind", "name-format", "namespace-format", "label-values-are-strings", "spec-required",
        "unknown-top-level-field", "status-is-parsed-too"])
def test_envelope_problems_name_their_field(raw: dict[str, Any], path: str) -> None:
    assert path in paths(raw)


def test_the_namespace_defaults_to_default() -> None:
    obj, _ = parse_object({**manifest("Mesh", {}), "metadata": {"name": "m"}})
    assert obj is not None and obj.namespace == "default" and obj.kind is Kind.MESH


def test_dump_then_parse_gives_the_same_object() -> None:
    raw = manifest("Mesh", {"mtls": {"minimum": "STRICT"}, "freeformTags": {"team": "books"},
                            "certificateAuthorities": [{"id": "ocid1.ca"}]}, labels={"a": "b"}, generation=3)
    obj, _ = parse_object(raw)
    assert obj is not None and obj.spec.mtls.minimum is MtlsMode.STRICT
    again, problems = parse_object(dump_object(obj))
    assert problems == [] and again == obj
    assert dump_object(obj)["spec"] == raw["spec"]


def test_models_are_frozen_and_hashable() -> None:
    obj, _ = parse_object(manifest("VirtualDeployment", VD_SPEC, labels={"app": "reviews"}))
    assert obj is not None
    assert hash(obj) == hash(parse_object(manifest("VirtualDeployment", VD_SPEC, labels={"app": "reviews"}))[0])
    with pytest.raises(AttributeError):
        obj.spec.name = "other"


@dataclass(frozen=True)
class _Sample:
    """A sample."""

    count: int = f(minimum=1, fmt="int32")
    tags: FrozenMap[str] = f(FrozenMap())
    wire_name: str | None = f(None, wire="wirename", max_length=3)


def test_openapi_schema_states_what_the_parser_enforces() -> None:
    schema = wire.openapi_schema(_Sample)
    assert schema == {
        "type": "object", "description": "A sample.", "required": ["count"],
        "properties": {
            "count": {"type": "integer", "format": "int32", "minimum": 1},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "wirename": {"type": "string", "maxLength": 3},
        },
    }
    too_big = wire.parse(_Sample, {"count": 2**31}, "x")[1][0]
    assert too_big.message == "must be between 1 and 2147483647; got 2147483648"
    assert wire.parse(_Sample, {"count": 1, "wirename": "long"}, "x")[1][0].path == "x.wirename"
    assert wire.dump(_Sample(count=1)) == {"count": 1}


@pytest.mark.parametrize("finalizers", [5, "finalizer", [1], {"a": "b"}])
def test_malformed_finalizers_are_a_problem_not_a_crash(finalizers: Any) -> None:
    raw = {"apiVersion": "servicemesh.oci.oracle.com/v1beta1", "kind": "Mesh",
           "metadata": {"name": "shop", "namespace": "shop", "finalizers": finalizers}, "spec": {}}
    obj, problems = parse_object(raw)
    assert obj is None and [p.path for p in problems] == ["metadata.finalizers"]
