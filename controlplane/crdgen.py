"""The CustomResourceDefinitions of the nine kinds, built from the model.

:func:`build_crd` returns one ``apiextensions.k8s.io/v1`` CustomResourceDefinition as a plain dict,
ready to be dumped as YAML or sent to the API server; :func:`build_crds` returns all nine in the order
of :data:`~meshplane.controlplane.model.KINDS`. The result is deterministic, so the committed files in
``crds/`` can be compared with it (``meshplane crds --write crds/`` rewrites them).

What follows OSOK (tag v1.1.9) exactly: the CRD names, group, scope, ``names`` (no short names, no
categories), the single served and stored version ``v1beta1``, the status subresource, and the
additional printer columns (names, JSONPaths, types, priorities, order). The schema is not copied: it
is rendered from the model dataclasses by :func:`meshplane.controlplane.wire.openapi_schema`, so the
parser and the CRDs cannot disagree. Column descriptions are our own.

Pure: only the standard library and the model layer are imported; file I/O lives in
:mod:`meshplane.controlplane.crdfiles`.
"""

from __future__ import annotations

from typing import Any

from meshplane.controlplane import wire
from meshplane.controlplane.model import API_GROUP, API_VERSION, KINDS, ConditionType, Kind, KindInfo, Status

CRD_API_VERSION = "apiextensions.k8s.io/v1"
VERSION = API_VERSION.rsplit("/", 1)[1]
LABELS = {"app.kubernetes.io/part-of": "meshplane"}

# Kinds without an identifier of their own show the identifier and name of the object they serve.
_SERVED = {
    Kind.VIRTUAL_DEPLOYMENT_BINDING: Kind.VIRTUAL_DEPLOYMENT,
    Kind.INGRESS_GATEWAY_DEPLOYMENT: Kind.INGRESS_GATEWAY,
}

Column = dict[str, Any]


def build_crds() -> list[dict[str, Any]]:
    """The CRDs of all nine kinds, in model order."""
    return [build_crd(kind) for kind in KINDS]


def build_crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    info = KINDS[kind]
    return {
        "apiVersion": CRD_API_VERSION,
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{info.plural}.{API_GROUP}", "labels": dict(LABELS)},
        "spec": {
            "group": API_GROUP,
            "names": {
                "kind": info.kind.value,
                "listKind": f"{info.kind.value}List",
                "plural": info.plural,
                "singular": info.singular,
            },
            "scope": "Namespaced",
            "versions": [_version(info)],
        },
    }


def _version(info: KindInfo) -> dict[str, Any]:
    return {
        "name": VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "additionalPrinterColumns": printer_columns(info),
        "schema": {"openAPIV3Schema": object_schema(info)},
    }


def object_schema(info: KindInfo) -> dict[str, Any]:
    """The structural schema of a whole object: apiVersion, kind, metadata, spec and status."""
    return {
        "description": f"A {info.kind.value} of the OCI Service Mesh API ({API_VERSION}).",
        "type": "object",
        "properties": {
            "apiVersion": {"description": f"Always {API_VERSION}.", "type": "string"},
            "kind": {"description": f"Always {info.kind.value}.", "type": "string"},
            "metadata": {"type": "object"},
            "spec": wire.openapi_schema(info.spec),
            "status": wire.openapi_schema(Status),
        },
        "required": ["spec"],
    }


def printer_columns(info: KindInfo) -> list[Column]:
    """OSOK's ``kubectl get`` columns for the kind, in OSOK's order."""
    conditions = info.conditions
    columns = [_condition_column("Active", ConditionType.ACTIVE, conditions, "Whether the object is in effect.")]
    if info.backed:
        columns.append(_condition_column("Configured", ConditionType.CONFIGURED, conditions,
                                         "Whether the control plane accepted the latest spec.", priority=1))
    columns.append(_condition_column("DependenciesActive", ConditionType.DEPENDENCIES_ACTIVE, conditions,
                                     "Whether every referenced object is active.", priority=1))
    columns += _identity_columns(info)
    columns.append({"jsonPath": ".metadata.creationTimestamp", "name": "Age", "type": "date"})
    return columns


def _condition_column(name: str, ctype: ConditionType, order: tuple[ConditionType, ...], description: str,
                      priority: int = 0) -> Column:
    path = f".status.conditions[{order.index(ctype)}].status"
    return _column(name, path, description, priority)


def _identity_columns(info: KindInfo) -> list[Column]:
    if info.id_field is not None:
        return [_column("Ocid", _status_path(info.id_field), "Identifier assigned to the object.", 1)]
    served = KINDS[_SERVED[info.kind]]
    if served.id_field is None:
        raise ValueError(f"{info.kind} serves {served.kind}, which has no identifier")
    name_field = served.id_field.removesuffix("_id") + "_name"
    return [
        _column(f"{served.kind.value}Ocid", _status_path(served.id_field), f"Identifier of the {served.kind.value}.",
                1),
        _column(f"{served.kind.value}Name", _status_path(name_field), f"Name of the {served.kind.value}.", 1),
    ]


def _column(name: str, json_path: str, description: str, priority: int) -> Column:
    column: Column = {"description": description, "jsonPath": json_path, "name": name}
    if priority:
        column["priority"] = priority
    column["type"] = "string"
    return column


def _status_path(field_name: str) -> str:
    """``.status.<wire name>`` of a :class:`Status` field; a missing field is a bug, so it raises."""
    for info in wire.fields_of(Status):
        if info.name == field_name:
            return f".status.{info.wire}"
    raise KeyError(f"Status has no field {field_name!r}")
