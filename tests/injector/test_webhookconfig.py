"""The webhook registrations: OSOK's names and paths, the policies we chose, and valid v1 objects.

The committed ``crds/webhooks/webhooks.yaml`` is a golden file: ``pytest --update-golden`` rewrites it
from :func:`~meshplane.injector.webhookconfig.webhook_configurations`, so it never drifts.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from kubernetes.client import ApiClient

from meshplane.controlplane.model import KINDS, Kind
from meshplane.injector.webhookconfig import render, validate_path, validator_name, webhook_configurations

GOLDEN = Path(__file__).resolve().parents[2] / "crds" / "webhooks" / "webhooks.yaml"
SERVICE, NAMESPACE = "meshplane", "meshplane-system"

# Spec §4.1, copied by hand so that a change to the generator cannot silently change the contract.
SPEC_TABLE = {
    Kind.ACCESS_POLICY: ("ap-validator.servicemesh.oci.oracle.cloud.com",
                         "/validate-servicemesh-oci-oracle-com-v1beta1-accesspolicy"),
    Kind.INGRESS_GATEWAY: ("ig-validator.servicemesh.oci.oracle.cloud.com",
                           "/validate-servicemesh-oci-oracle-com-v1beta1-ingressgateway"),
    Kind.INGRESS_GATEWAY_DEPLOYMENT: ("igd-validator.servicemesh.oci.oracle.cloud.com",
                                      "/validate-servicemesh-oci-oracle-com-v1beta1-ingressgatewaydeployment"),
    Kind.INGRESS_GATEWAY_ROUTE_TABLE: ("igrt-validator.servicemesh.oci.oracle.cloud.com",
                                       "/validate-servicemesh-oci-oracle-com-v1beta1-ingressgatewayroutetable"),
    Kind.MESH: ("mesh-validator.servicemesh.oci.oracle.cloud.com", "/validate-servicemesh-oci-oracle-com-v1beta1-mesh"),
    Kind.VIRTUAL_DEPLOYMENT: ("vd-validator.servicemesh.oci.oracle.cloud.com",
                              "/validate-servicemesh-oci-oracle-com-v1beta1-virtualdeployment"),
    Kind.VIRTUAL_DEPLOYMENT_BINDING: ("vdb-validator.servicemesh.oci.oracle.cloud.com",
                                      "/validate-servicemesh-oci-oracle-com-v1beta1-virtualdeploymentbinding"),
    Kind.VIRTUAL_SERVICE: ("vs-validator.servicemesh.oci.oracle.cloud.com",
                           "/validate-servicemesh-oci-oracle-com-v1beta1-virtualservice"),
    Kind.VIRTUAL_SERVICE_ROUTE_TABLE: ("vsrt-validator.servicemesh.oci.oracle.cloud.com",
                                       "/validate-servicemesh-oci-oracle-com-v1beta1-virtualserviceroutetable"),
}

# What admissionregistration.k8s.io/v1 requires and allows (k8s.io/api/admissionregistration/v1 types.go and
# the API server's validation), for the fields we set.
_STRINGS = {"type": "array", "minItems": 1, "items": {"type": "string"}}
_RULE = {
    "type": "object", "additionalProperties": False,
    "required": ["apiGroups", "apiVersions", "operations", "resources"],
    "properties": {
        "apiGroups": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "apiVersions": _STRINGS, "resources": _STRINGS,
        "operations": {"type": "array", "minItems": 1, "items": {"enum": ["CREATE", "UPDATE", "DELETE", "CONNECT"]}},
        "scope": {"enum": ["Cluster", "Namespaced", "*"]},
    },
}
_WEBHOOK: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "required": ["name", "clientConfig", "sideEffects", "admissionReviewVersions"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?){2,}$",
                 "maxLength": 253},
        "admissionReviewVersions": {"type": "array", "minItems": 1, "items": {"enum": ["v1", "v1beta1"]}},
        "clientConfig": {
            "type": "object", "additionalProperties": False, "required": ["service"],
            "properties": {
                "caBundle": {"type": "string", "contentEncoding": "base64"},
                "service": {"type": "object", "additionalProperties": False, "required": ["name", "namespace"],
                            "properties": {"name": {"type": "string", "minLength": 1},
                                           "namespace": {"type": "string", "minLength": 1},
                                           "path": {"type": "string", "pattern": "^/"},
                                           "port": {"type": "integer", "minimum": 1, "maximum": 65535}}},
            },
        },
        "rules": {"type": "array", "minItems": 1, "items": _RULE},
        "failurePolicy": {"enum": ["Ignore", "Fail"]},
        "sideEffects": {"enum": ["None", "NoneOnDryRun"]},  # v1 refuses Some and Unknown
        "timeoutSeconds": {"type": "integer", "minimum": 1, "maximum": 30},
        "namespaceSelector": {"type": "object"},
        "reinvocationPolicy": {"enum": ["Never", "IfNeeded"]},
    },
}
_CONFIGURATION = {
    "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "metadata", "webhooks"],
    "properties": {
        "apiVersion": {"const": "admissionregistration.k8s.io/v1"},
        "kind": {"enum": ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"]},
        "metadata": {"type": "object", "required": ["name"]},
        "webhooks": {"type": "array", "minItems": 1, "items": _WEBHOOK},
    },
}


def _configurations(ca_bundle: bytes | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    validating, mutating = webhook_configurations(SERVICE, NAMESPACE, ca_bundle)
    return validating, mutating


def test_the_committed_file_is_what_the_function_generates(update_golden: bool) -> None:
    text = render(webhook_configurations(SERVICE, NAMESPACE, None))
    if update_golden:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(text, encoding="utf-8")
    assert GOLDEN.read_text(encoding="utf-8") == text, (
        f"{GOLDEN.name} is out of date; rerun pytest --update-golden and review the diff")


def test_the_rendered_yaml_reads_back_as_the_same_objects() -> None:
    configurations = webhook_configurations(SERVICE, NAMESPACE, b"-----BEGIN CERTIFICATE-----\n")
    assert list(yaml.safe_load_all(render(configurations))) == configurations


@pytest.mark.parametrize("ca_bundle", [None, b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"],
                         ids=["without-ca-bundle", "with-ca-bundle"])
def test_both_configurations_are_valid_admissionregistration_v1_objects(ca_bundle: bytes | None) -> None:
    for configuration in _configurations(ca_bundle):
        problems = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                    for e in Draft7Validator(_CONFIGURATION).iter_errors(configuration)]
        assert problems == []
        names = [webhook["name"] for webhook in configuration["webhooks"]]
        assert len(set(names)) == len(names), "webhook names must be unique within a configuration"


def test_the_official_client_models_read_them_without_dropping_a_field() -> None:
    client = ApiClient()
    for configuration, model in zip(_configurations(b"pem"), ["V1ValidatingWebhookConfiguration",
                                                               "V1MutatingWebhookConfiguration"], strict=True):
        typed = client.deserialize(json.dumps(configuration), model, "application/json")  # required fields checked
        assert _without_nones(typed.to_dict(serialize=True)) == configuration  # unknown or misspelt fields vanish


def _without_nones(value: Any) -> Any:
    """The client's dicts name every field of the model; drop those left unset."""
    if isinstance(value, dict):
        return {k: _without_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nones(v) for v in value]
    return value


def test_one_validating_webhook_per_kind_with_osok_names_and_paths() -> None:
    validating, _ = _configurations()
    assert validating["metadata"]["name"] == "servicemesh-validating-webhook-configuration"
    by_name = {w["name"]: w for w in validating["webhooks"]}
    assert len(by_name) == len(Kind)
    for kind, (name, path) in SPEC_TABLE.items():
        assert (validator_name(kind), validate_path(kind)) == (name, path)
        webhook = by_name[name]
        assert webhook["clientConfig"] == {"service": {"name": SERVICE, "namespace": NAMESPACE, "path": path,
                                                       "port": 9443}}
        assert webhook["rules"] == [{"apiGroups": ["servicemesh.oci.oracle.com"], "apiVersions": ["v1beta1"],
                                     "operations": ["CREATE", "UPDATE", "DELETE"], "resources": [KINDS[kind].plural],
                                     "scope": "Namespaced"}]
        assert (webhook["failurePolicy"], webhook["sideEffects"]) == ("Fail", "None")
        assert webhook["admissionReviewVersions"] == ["v1", "v1beta1"]


def test_the_injector_is_registered_for_pod_create_in_labelled_namespaces_and_fails_open() -> None:
    _, mutating = _configurations()
    assert mutating["metadata"]["name"] == "servicemesh-mutating-webhook-configuration"
    [webhook] = mutating["webhooks"]
    assert webhook["name"] == "proxy-injector.servicemesh.oci.oracle.com"
    assert webhook["clientConfig"]["service"] == {"name": SERVICE, "namespace": NAMESPACE, "path": "/mutate-pod",
                                                  "port": 9443}
    assert webhook["rules"] == [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                                 "resources": ["pods"], "scope": "Namespaced"}]
    assert webhook["namespaceSelector"] == {"matchExpressions": [{
        "key": "servicemesh.oci.oracle.com/sidecar-injection", "operator": "In", "values": ["enabled", "disabled"]}]}
    assert (webhook["failurePolicy"], webhook["sideEffects"]) == ("Ignore", "None")
    assert (webhook["reinvocationPolicy"], webhook["timeoutSeconds"]) == ("Never", 10)
    assert webhook["admissionReviewVersions"] == ["v1", "v1beta1"]


def test_a_ca_bundle_is_carried_base64_encoded_by_every_webhook() -> None:
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    webhooks = [w for configuration in _configurations(pem) for w in configuration["webhooks"]]
    assert len(webhooks) == len(Kind) + 1
    assert {base64.b64decode(w["clientConfig"]["caBundle"]) for w in webhooks} == {pem}
    assert all("caBundle" not in w["clientConfig"] for c in _configurations() for w in c["webhooks"])
