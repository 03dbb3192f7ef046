"""The status engine: conditions in printer-column order, readiness along the object graph, status ids
and names, and deletion that waits for dependents without ever deadlocking."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from meshplane.controlplane.model import (
    KINDS,
    REASON_PATTERN,
    AnyObject,
    Condition,
    ConditionStatus,
    ConditionType,
    Kind,
    MeshMtls,
    MtlsMode,
    ObjectKey,
    Status,
    VirtualServiceMtlsStatus,
    parse_object,
)
from meshplane.controlplane.problems import Problem, error, warning
from meshplane.controlplane.status import (
    CONFIGURATION_REJECTED,
    DEPENDENCIES_NOT_RESOLVED,
    DEPENDENCY_ORDER,
    INVALID_CONFIGURATION,
    LIFECYCLE_STATE_CHANGED,
    MAX_MESSAGE,
    SUCCESSFUL,
    DataPlaneState,
    StatusMemo,
    can_finalize,
    compute_status,
    condition_types,
    deletion_blockers,
    is_ready,
    references,
    set_condition,
    with_references,
)
from meshplane.controlplane.wire import FrozenMap
from meshplane.controlplane.world import Index, object_id
from tests import data

TRUE, FALSE, UNKNOWN = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN
DEPS, CONFIGURED, ACTIVE = ConditionType.DEPENDENCIES_ACTIVE, ConditionType.CONFIGURED, ConditionType.ACTIVE
MESH, VS, VD, VSRT = Kind.MESH, Kind.VIRTUAL_SERVICE, Kind.VIRTUAL_DEPLOYMENT, Kind.VIRTUAL_SERVICE_ROUTE_TABLE
AP, IG, IGRT = Kind.ACCESS_POLICY, Kind.INGRESS_GATEWAY, Kind.INGRESS_GATEWAY_ROUTE_TABLE
VDB, IGD = Kind.VIRTUAL_DEPLOYMENT_BINDING, Kind.INGRESS_GATEWAY_DEPLOYMENT
NS = "shop"
T1, T2, T3 = "2024-05-01T10:00:00Z", "2024-05-01T11:00:00Z", "2024-05-01T12:00:00Z"



# ------------------------------------------------------------------------------------------ helpers


def parse(raw: Any) -> AnyObject:
    obj, problems = parse_object(raw)
    assert problems == [] and obj is not None, problems
    return obj


def canary() -> list[AnyObject]:
    return [parse(raw) for raw in data.manifests("canary")]


def make(kind: Kind, name: str, spec: dict[str, Any], *, namespace: str = NS, generation: int = 1,
         status: dict[str, Any] | None = None) -> AnyObject:
    raw: dict[str, Any] = {"apiVersion": "servicemesh.oci.oracle.com/v1beta1", "kind": kind.value,
                           "metadata": {"name": name, "namespace": namespace, "generation": generation},
                           "spec": spec}
    if status is not None:
        raw["status"] = status
    return parse(raw)


def ref(name: str, namespace: str | None = None) -> dict[str, Any]:
    return {"ref": {"name": name, **({"namespace": namespace} if namespace else {})}}


def mesh(name: str = "shop-mesh", *, minimum: str | None = None, **kw: Any) -> AnyObject:
    spec: dict[str, Any] = {"certificateAuthorities": [{"id": "ocid1.certificateauthority.oc1..x"}]}
    if minimum is not None:
        spec["mtls"] = {"minimum": minimum}
    return make(MESH, name, spec, **kw)


def vs(name: str = "reviews", *, parent: dict[str, Any] | None = None, mode: str | None = None,
       oci_name: str | None = None, **kw: Any) -> AnyObject:
    spec: dict[str, Any] = {"mesh": parent or ref("shop-mesh")}
    if mode is not None:
        spec["mtls"] = {"mode": mode}
    if oci_name is not None:
        spec["name"] = oci_name
    return make(VS, name, spec, **kw)


def vd(name: str = "reviews-v1", *, parent: dict[str, Any] | None = None, **kw: Any) -> AnyObject:
    return make(VD, name, {"virtualService": parent or ref("reviews")}, **kw)


def vdb(name: str = "reviews-v1-binding", *, parent: dict[str, Any] | None = None, **kw: Any) -> AnyObject:
    spec = {"virtualDeployment": parent or ref("reviews-v1"), "target": {"service": {"ref": {"name": "reviews"}}}}
    return make(VDB, name, spec, **kw)


def ig(name: str = "shop-gw", *, oci_name: str | None = None, **kw: Any) -> AnyObject:
    spec: dict[str, Any] = {"mesh": ref("shop-mesh"),
                            "hosts": [{"name": "public", "listeners": [{"protocol": "TCP", "port": 8080}]}]}
    if oci_name is not None:
        spec["name"] = oci_name
    return make(IG, name, spec, **kw)


def igd(name: str = "shop-gw-deploy", **kw: Any) -> AnyObject:
    spec = {"ingressGateway": ref("shop-gw"), "deployment": {"autoscaling": {"minPods": 1, "maxPods": 1}},
            "ports": [{"port": 8080}]}
    return make(IGD, name, spec, **kw)


def key(kind: Kind, name: str, namespace: str = NS) -> ObjectKey:
    return ObjectKey(kind, namespace, name)


def oid(kind: Kind, name: str, namespace: str = NS) -> str:
    return object_id(kind, namespace, name)


def run(objects: list[AnyObject], now: str = T1, **kw: Any) -> dict[ObjectKey, Status]:
    return compute_status(Index(objects), now=now, **kw)


def settle(objects: list[AnyObject], statuses: dict[ObjectKey, Status]) -> list[AnyObject]:
    """Write a pass's statuses back onto the objects, as the status writer would."""
    return [replace(o, status=statuses[o.key]) for o in objects]


def with_meta(obj: AnyObject, **changes: Any) -> AnyObject:
    return replace(obj, metadata=replace(obj.metadata, **changes))


def deleting(obj: AnyObject) -> AnyObject:
    return with_meta(obj, deletion_timestamp="2024-05-01T09:00:00Z")


def condition(status: Status, type_: ConditionType) -> Condition:
    return next(c for c in status.conditions if c.type is type_)


def summary(status: Status) -> list[tuple[str, str]]:
    return [(c.status.value, c.reason) for c in status.conditions]


# --------------------------------------------------------------------------------------- conditions


@pytest.mark.parametrize("world", [canary, lambda: [vd(), vdb()]], ids=["ready", "parents-missing"])
def test_conditions_sit_at_the_indexes_the_printer_columns_read(world: Any) -> None:
    for k, status in run(world()).items():
        types = [c.type for c in status.conditions]
        if KINDS[k.kind].backed:
            assert types == [DEPS, CONFIGURED, ACTIVE], k
        else:
            assert types == [DEPS, ACTIVE], k


def test_the_whole_canary_set_becomes_ready_in_one_pass() -> None:
    objects = canary()
    statuses = run(objects)
    assert {str(o.key) for o in objects if not is_ready(o, statuses[o.key])} == set()
    mesh_status = statuses[key(MESH, "shop-mesh")]
    assert [(c.reason, c.message) for c in mesh_status.conditions] == [
        (SUCCESSFUL, "Dependencies resolved successfully"),
        (SUCCESSFUL, "Resource configured successfully"),
        (SUCCESSFUL, "Configuration is served to every proxy that needs it"),
    ]


def test_statuses_come_parents_first_and_the_same_every_time() -> None:
    first, second = run(canary()), run(list(reversed(canary())))
    assert first == second
    assert list(first) == sorted(first, key=lambda k: (DEPENDENCY_ORDER.index(k.kind), k))


def test_a_deployment_waits_for_its_service_which_waits_for_its_mesh() -> None:
    statuses = run([mesh(), vs(), vd()], problems={key(MESH, "shop-mesh"): [error("spec.mtls", "bad")]})
    service, deployment = statuses[key(VS, "reviews")], statuses[key(VD, "reviews-v1")]
    assert summary(service) == [("Unknown", DEPENDENCIES_NOT_RESOLVED)] * 3
    assert condition(service, DEPS).message == "Mesh shop/shop-mesh is not active yet"
    assert condition(deployment, DEPS).message == "VirtualService shop/reviews is not active yet"
    assert condition(deployment, ACTIVE).message.startswith("Waiting for dependencies: ")


def test_a_missing_parent_is_false_while_an_unready_one_is_unknown() -> None:
    statuses = run([vs(), vd()])
    service = condition(statuses[key(VS, "reviews")], DEPS)
    deployment = condition(statuses[key(VD, "reviews-v1")], DEPS)
    assert (service.status, service.reason) == (FALSE, DEPENDENCIES_NOT_RESOLVED)
    assert service.message == "Mesh shop/shop-mesh does not exist"
    assert deployment.status is UNKNOWN


def test_a_parent_being_deleted_counts_as_missing() -> None:
    statuses = run([deleting(mesh()), vs()])
    dependency = condition(statuses[key(VS, "reviews")], DEPS)
    assert (dependency.status, dependency.message) == (FALSE, "Mesh shop/shop-mesh is being deleted")


def test_a_stale_ready_status_on_a_parent_does_not_count() -> None:
    ready = settle([mesh()], run([mesh()]))[0]
    statuses = run([ready, vs()], problems={ready.key: [error("spec", "now broken")]})
    assert condition(statuses[key(VS, "reviews")], DEPS).status is UNKNOWN


def test_route_tables_wait_for_every_destination() -> None:
    objects = [o for o in canary() if o.key != key(VD, "reviews-v2")]
    dependency = condition(run(objects)[key(VSRT, "reviews-canary")], DEPS)
    assert (dependency.status, dependency.message) == (FALSE, "VirtualDeployment shop/reviews-v2 does not exist")


def test_references_default_to_the_referrers_namespace_and_may_cross_namespaces() -> None:
    crossing, local = vs("crossing", parent=ref("shop-mesh", "infra")), vs("local")
    statuses = run([mesh(namespace="infra"), crossing, local])
    assert condition(statuses[crossing.key], DEPS).status is TRUE
    assert statuses[crossing.key].mesh_id == oid(MESH, "shop-mesh", "infra")
    assert condition(statuses[local.key], DEPS).message == "Mesh shop/shop-mesh does not exist"


def test_id_references_resolve_through_the_world() -> None:
    known = vs("known", parent={"id": oid(MESH, "shop-mesh")})
    unknown = vs("unknown", parent={"id": "ocid1.mesh.oc1..gone"})
    statuses = run([mesh(), known, unknown])
    assert is_ready(known, statuses[known.key]) and statuses[known.key].mesh_id == oid(MESH, "shop-mesh")
    assert condition(statuses[unknown.key], DEPS).message == "Mesh ocid1.mesh.oc1..gone does not exist"


def test_an_id_recorded_in_status_is_the_one_references_use() -> None:
    imported = mesh(status={"meshId": "ocid1.mesh.oc1..imported"})
    statuses = run([imported, vs(parent={"id": "ocid1.mesh.oc1..imported"})])
    assert statuses[imported.key].mesh_id == "ocid1.mesh.oc1..imported"
    assert statuses[key(VS, "reviews")].mesh_id == "ocid1.mesh.oc1..imported"


def test_configured_is_false_with_every_error_and_its_path() -> None:
    problems: dict[ObjectKey, list[Problem]] = {key(VS, "reviews"): [
        error("spec.hosts[0]", "not a hostname"), warning("spec.mtls", "advice only"), error("", "whole object")]}
    statuses = run([mesh(), vs(), vd()], problems=problems)
    service = statuses[key(VS, "reviews")]
    assert summary(service) == [("True", SUCCESSFUL), ("False", INVALID_CONFIGURATION),
                                ("Unknown", INVALID_CONFIGURATION)]
    assert condition(service, CONFIGURED).message == "spec.hosts[0]: not a hostname; whole object"
    assert condition(statuses[key(VD, "reviews-v1")], DEPS).status is UNKNOWN


def test_warnings_alone_leave_an_object_configured() -> None:
    statuses = run([mesh()], problems={key(MESH, "shop-mesh"): [warning("spec", "advice")]})
    assert condition(statuses[key(MESH, "shop-mesh")], CONFIGURED).status is TRUE


def test_a_binding_without_a_configured_condition_shows_its_errors_on_active() -> None:
    problems = {key(VDB, "reviews-v1-binding"): [error("spec.target.service", "Service shop/reviews does not exist")]}
    active = condition(run(canary(), problems=problems)[key(VDB, "reviews-v1-binding")], ACTIVE)
    assert (active.status, active.reason) == (FALSE, INVALID_CONFIGURATION)
    assert active.message == "spec.target.service: Service shop/reviews does not exist"


@pytest.mark.parametrize(("state", "expected"), [
    (DataPlaneState(TRUE), (TRUE, SUCCESSFUL, "Configuration is served to every proxy that needs it")),
    (DataPlaneState(UNKNOWN, "waiting for 2 proxies"), (UNKNOWN, LIFECYCLE_STATE_CHANGED, "waiting for 2 proxies")),
    (DataPlaneState(FALSE, "envoy: duplicate listener 0.0.0.0:9080"),
     (FALSE, CONFIGURATION_REJECTED, "envoy: duplicate listener 0.0.0.0:9080")),
], ids=["ack", "pending", "nack"])
def test_active_says_what_the_proxies_said(state: DataPlaneState, expected: tuple[Any, str, str]) -> None:
    statuses = run(canary(), data_plane={key(VS, "reviews"): state})
    active = condition(statuses[key(VS, "reviews")], ACTIVE)
    assert (active.status, active.reason, active.message) == expected
    assert is_ready(vd(), statuses[key(VD, "reviews-v1")]) is (state.status is TRUE)


# ------------------------------------------------------------------------------------------ history


def test_transition_time_moves_only_when_the_status_changes() -> None:
    objects = settle(canary(), run(canary(), T1))
    second = run(objects, T2)
    assert {c.last_transition_time for s in second.values() for c in s.conditions} == {T1}
    third = run(settle(objects, second), T3, data_plane={key(VS, "reviews"): DataPlaneState(FALSE, "nack")})
    service = third[key(VS, "reviews")]
    assert [c.last_transition_time for c in service.conditions] == [T1, T1, T3]
    assert condition(service, ACTIVE).message == "nack"


def test_observed_generation_is_one_at_first_then_follows_generation_except_when_unknown() -> None:
    objects = [mesh(), vs(generation=4)]
    first = run(objects)
    assert [c.observed_generation for c in first[key(VS, "reviews")].conditions] == [1, 1, 1]
    edited = [with_meta(o, generation=5) for o in settle(objects, first)]
    second = run(edited, T2, data_plane={key(VS, "reviews"): DataPlaneState(UNKNOWN, "pushing")})
    assert [c.observed_generation for c in second[key(VS, "reviews")].conditions] == [5, 5, 1]
    third = run([with_meta(o, generation=6) for o in settle(edited, second)], T3)
    assert [c.observed_generation for c in third[key(VS, "reviews")].conditions] == [6, 6, 6]


def test_set_condition_replaces_in_place_and_appends_new_types_last() -> None:
    conditions = set_condition((), DEPS, TRUE, SUCCESSFUL, "ok", generation=3, now=T1)
    conditions = set_condition(conditions, ACTIVE, UNKNOWN, LIFECYCLE_STATE_CHANGED, "soon", generation=3, now=T1)
    conditions = set_condition(conditions, DEPS, TRUE, SUCCESSFUL, "still ok", generation=4, now=T2)
    conditions = set_condition(conditions, ACTIVE, TRUE, SUCCESSFUL, "done", generation=4, now=T3)
    assert [(c.type, c.message, c.last_transition_time, c.observed_generation) for c in conditions] == [
        (DEPS, "still ok", T1, 4), (ACTIVE, "done", T3, 4)]


def test_reasons_match_the_crd_pattern_and_messages_fit_its_limit() -> None:
    long = error("spec", "x" * (MAX_MESSAGE + 10))
    objects = [*canary(), deleting(vd("gone")), vs("orphan", parent=ref("nowhere"))]
    statuses = run(objects, problems={key(AP, "shop-policy"): [long]},
                   data_plane={key(IGD, "shop-gw-deploy"): DataPlaneState(FALSE, "nack")})
    conditions = [c for s in statuses.values() for c in s.conditions]
    assert all(re.fullmatch(REASON_PATTERN, c.reason) for c in conditions)
    assert max(len(c.message) for c in conditions) == MAX_MESSAGE


def test_fully_ready_means_exactly_the_kinds_conditions_all_true() -> None:
    ready = Condition(DEPS, TRUE, T1, SUCCESSFUL, "")
    assert is_ready(mesh(), Status(conditions=(ready, ready, ready)))
    assert not is_ready(mesh(), Status(conditions=(ready, ready)))
    assert not is_ready(mesh(), Status(conditions=(ready, ready, replace(ready, status=UNKNOWN))))
    assert is_ready(vdb(), Status(conditions=(ready, ready)))
    assert not is_ready(vdb(), Status(conditions=(ready, ready, ready)))
    assert condition_types(VDB) == condition_types(IGD) == (DEPS, ACTIVE)


# ------------------------------------------------------------------------------------ status fields


@pytest.mark.parametrize(("minimum", "expected"), [(None, MtlsMode.STRICT), ("PERMISSIVE", MtlsMode.PERMISSIVE)])
def test_a_mesh_reports_its_id_and_effective_mtls_floor(minimum: str | None, expected: MtlsMode) -> None:
    status = run([mesh(minimum=minimum)])[key(MESH, "shop-mesh")]
    assert status.mesh_id == oid(MESH, "shop-mesh") and status.mesh_id.startswith("ocid1.mesh.oc1..")
    assert status.mesh_mtls == MeshMtls(expected)


@pytest.mark.parametrize(("floor", "mode", "expected"), [
    (None, None, MtlsMode.STRICT),
    ("PERMISSIVE", None, MtlsMode.PERMISSIVE),
    ("PERMISSIVE", "STRICT", MtlsMode.STRICT),
    ("DISABLED", "PERMISSIVE", MtlsMode.PERMISSIVE),
    ("STRICT", "DISABLED", MtlsMode.STRICT),
])
def test_a_virtual_service_is_never_below_the_mesh_floor(floor: str | None, mode: str | None,
                                                         expected: MtlsMode) -> None:
    status = run([mesh(minimum=floor), vs(mode=mode)])[key(VS, "reviews")]
    assert status.virtual_service_mtls == VirtualServiceMtlsStatus(expected)


def test_every_kind_reports_its_own_id_and_its_parents() -> None:
    s = run(canary())
    mesh_id, vs_id, ig_id = oid(MESH, "shop-mesh"), oid(VS, "reviews"), oid(IG, "shop-gw")
    v1, v2 = oid(VD, "reviews-v1"), oid(VD, "reviews-v2")
    service = s[key(VS, "reviews")]
    assert (service.mesh_id, service.virtual_service_id) == (mesh_id, vs_id)
    assert vs_id.startswith("ocid1.meshvirtualservice.oc1..")
    assert (s[key(VD, "reviews-v1")].mesh_id, s[key(VD, "reviews-v1")].virtual_service_id,
            s[key(VD, "reviews-v1")].virtual_service_name, s[key(VD, "reviews-v1")].virtual_deployment_id) == (
        mesh_id, vs_id, "shop/reviews", v1)
    vsrt = s[key(VSRT, "reviews-canary")]
    assert (vsrt.virtual_service_id, vsrt.virtual_service_name, vsrt.virtual_service_route_table_id,
            vsrt.virtual_deployment_id_for_rules, vsrt.mesh_id) == (
        vs_id, "shop/reviews", oid(VSRT, "reviews-canary"), ((v1, v2),), None)
    policy = s[key(AP, "shop-policy")]
    assert (policy.mesh_id, policy.access_policy_id, policy.ref_id_for_rules) == (
        mesh_id, oid(AP, "shop-policy"),
        (FrozenMap({"source": ig_id, "destination": vs_id}), FrozenMap({"source": vs_id})))
    assert (s[key(IG, "shop-gw")].mesh_id, s[key(IG, "shop-gw")].ingress_gateway_id) == (mesh_id, ig_id)
    igrt = s[key(IGRT, "shop-gw-routes")]
    assert (igrt.ingress_gateway_id, igrt.ingress_gateway_name, igrt.ingress_gateway_route_table_id,
            igrt.virtual_service_id_for_rules) == (ig_id, "shop/shop-gw", oid(IGRT, "shop-gw-routes"), ((vs_id,),))
    binding = s[key(VDB, "reviews-v1-binding")]
    assert binding == Status(virtual_deployment_id=v1, virtual_deployment_name="shop/reviews-v1",
                             virtual_service_id=vs_id, virtual_service_name="shop/reviews", mesh_id=mesh_id,
                             conditions=binding.conditions)
    gateway_deployment = s[key(IGD, "shop-gw-deploy")]
    assert gateway_deployment == Status(mesh_id=mesh_id, ingress_gateway_id=ig_id, ingress_gateway_name="shop/shop-gw",
                                        conditions=gateway_deployment.conditions)


def test_names_in_status_are_oci_names() -> None:
    objects = [mesh(), vs(oci_name="reviews-service"), vd(), vdb(), ig(oci_name="public-gw"), igd()]
    s = run(objects)
    assert s[key(VD, "reviews-v1")].virtual_service_name == "reviews-service"
    assert s[key(VDB, "reviews-v1-binding")].virtual_service_name == "reviews-service"
    assert s[key(VDB, "reviews-v1-binding")].virtual_deployment_name == "shop/reviews-v1"
    assert s[key(IGD, "shop-gw-deploy")].ingress_gateway_name == "public-gw"


def test_ids_are_deterministic_and_change_when_an_object_is_recreated() -> None:
    first, again = run([mesh()]), run([mesh()])
    recreated = run([with_meta(mesh(), uid="another-uid")])
    assert first == again
    assert first[key(MESH, "shop-mesh")].mesh_id != recreated[key(MESH, "shop-mesh")].mesh_id


def test_parent_fields_wait_for_the_parent_and_are_kept_once_known() -> None:
    lonely = run([vd()])[key(VD, "reviews-v1")]
    assert (lonely.mesh_id, lonely.virtual_service_id, lonely.virtual_deployment_id) == (
        None, None, oid(VD, "reviews-v1"))
    known = settle([mesh(), vs(), vd()], run([mesh(), vs(), vd()]))
    orphaned = run([o for o in known if o.kind is VD])[key(VD, "reviews-v1")]
    assert orphaned.virtual_service_id == oid(VS, "reviews")
    assert condition(orphaned, DEPS).status is FALSE


def test_certificates_written_by_the_ca_are_carried_and_foreign_fields_dropped() -> None:
    status = {"virtualServiceMtls": {"mode": "PERMISSIVE", "certificateId": "ocid1.cert.oc1..leaf"},
              "opcRetryToken": "token", "ingressGatewayName": "not-mine"}
    service = run([mesh(), vs(status=status)])[key(VS, "reviews")]
    assert service.virtual_service_mtls == VirtualServiceMtlsStatus(MtlsMode.STRICT, "ocid1.cert.oc1..leaf")
    assert (service.opc_retry_token, service.ingress_gateway_name) == (None, None)


# ---------------------------------------------------------------------------------------- deletion


def test_a_mesh_being_deleted_waits_for_its_dependents_and_names_them() -> None:
    objects = [deleting(o) if o.kind is MESH else o for o in canary()]
    world = Index(objects)
    the_mesh = world.get(key(MESH, "shop-mesh"))
    assert the_mesh is not None
    assert deletion_blockers(the_mesh, world) == [key(VS, "reviews"), key(IG, "shop-gw"), key(AP, "shop-policy")]
    assert not can_finalize(the_mesh, world)
    dependency = condition(compute_status(world, now=T1)[the_mesh.key], DEPS)
    assert (dependency.status, dependency.reason) == (UNKNOWN, DEPENDENCIES_NOT_RESOLVED)
    assert dependency.message == ("mesh has pending subresources to be deleted: virtualServices (shop/reviews), "
                                  "ingressGateways (shop/shop-gw), accessPolicies (shop/shop-policy)")


def test_a_virtual_service_waits_for_everything_that_names_it() -> None:
    world = Index([deleting(o) if o.kind is VS else o for o in canary()])
    message = condition(compute_status(world, now=T1)[key(VS, "reviews")], DEPS).message
    assert message == ("virtualservice has pending subresources to be deleted: "
                       "virtualDeployments (shop/reviews-v1, shop/reviews-v2), accessPolicies (shop/shop-policy), "
                       "ingressGatewayRouteTables (shop/shop-gw-routes), "
                       "virtualServiceRouteTables (shop/reviews-canary)")


def test_a_virtual_deployment_waits_for_its_bindings_and_the_route_tables_listing_it() -> None:
    world = Index(canary())
    for name in ("reviews-v1", "reviews-v2"):
        deployment = world.get(key(VD, name))
        assert deployment is not None
        assert deletion_blockers(deployment, world) == [key(VSRT, "reviews-canary"), key(VDB, f"{name}-binding")]


def test_a_gateway_waits_for_its_deployment_route_tables_and_policies_naming_it_as_source() -> None:
    world = Index(canary())
    gateway = world.get(key(IG, "shop-gw"))
    assert gateway is not None
    assert deletion_blockers(gateway, world) == [key(AP, "shop-policy"), key(IGRT, "shop-gw-routes"),
                                                 key(IGD, "shop-gw-deploy")]


def test_references_by_id_and_across_namespaces_hold_a_parent_too() -> None:
    world = Index([mesh(), vs("by-id", parent={"id": oid(MESH, "shop-mesh")}),
                   vs("elsewhere", parent=ref("shop-mesh", NS), namespace="other")])
    the_mesh = world.get(key(MESH, "shop-mesh"))
    assert the_mesh is not None
    assert deletion_blockers(the_mesh, world) == [key(VS, "elsewhere", "other"), key(VS, "by-id")]


def test_deletion_is_unblocked_once_the_dependents_are_gone() -> None:
    dependents = {key(VS, "reviews"), key(IG, "shop-gw"), key(AP, "shop-policy")}
    world = Index([deleting(o) if o.kind is MESH else o for o in canary() if o.key not in dependents])
    the_mesh = world.get(key(MESH, "shop-mesh"))
    assert the_mesh is not None and can_finalize(the_mesh, world)
    dependency = condition(compute_status(world, now=T1)[the_mesh.key], DEPS)
    assert (dependency.status, dependency.reason) == (UNKNOWN, LIFECYCLE_STATE_CHANGED)


def test_objects_nobody_refers_to_finalize_at_once_but_only_when_deleted() -> None:
    leaves = {VSRT, AP, IGRT, VDB, IGD}
    world = Index([deleting(o) if o.kind in leaves else o for o in canary()])
    assert {o.key for o in world.all() if can_finalize(o, world)} == {o.key for o in world.all() if o.kind in leaves}
    assert not any(can_finalize(o, world) for o in canary())


def test_deleting_everything_at_once_finalizes_in_some_order() -> None:
    world = Index([deleting(o) for o in canary()])
    rounds: list[set[Kind]] = []
    while len(world):
        compute_status(world, now=T1)  # a pass over a half-deleted world must not fail
        done = [o for o in world.all() if can_finalize(o, world)]
        assert done, f"deadlock: {[str(o.key) for o in world.all()]}"
        rounds.append({o.kind for o in done})
        for o in done:
            world.remove(o.key)
    assert rounds == [{VSRT, AP, IGRT, VDB, IGD}, {VD, IG}, {VS}, {MESH}]


def test_references_point_only_to_earlier_kinds_so_deletion_cannot_deadlock() -> None:
    for obj in canary():
        for kind, _ in references(obj):
            assert DEPENDENCY_ORDER.index(kind) < DEPENDENCY_ORDER.index(obj.kind), obj.key


def test_a_deleting_object_reports_deleting_rather_than_configured() -> None:
    statuses = run([o if o.kind is not VSRT else deleting(o) for o in canary()])
    table = statuses[key(VSRT, "reviews-canary")]
    assert summary(table) == [("Unknown", LIFECYCLE_STATE_CHANGED)] * 3
    assert table.virtual_deployment_id_for_rules == ((oid(VD, "reviews-v1"), oid(VD, "reviews-v2")),)


def test_a_memo_reuses_unchanged_objects_and_always_agrees_with_a_fresh_pass() -> None:
    """Passes over a changing world — settled, a parent edited, data-plane news, a parent deleted — give
    the same statuses with a memo as without, and the memo skips the objects whose inputs stayed."""
    memo = StatusMemo()
    objects = canary()
    table = next(o.key for o in objects if o.kind is Kind.VIRTUAL_SERVICE_ROUTE_TABLE)
    service = next(o for o in objects if o.kind is Kind.VIRTUAL_SERVICE)
    the_mesh = next(o for o in objects if o.kind is Kind.MESH)
    steps: list[tuple[list[AnyObject], dict[str, Any]]] = []

    def step(world: list[AnyObject], **kw: Any) -> list[AnyObject]:
        hits = memo.hits
        fresh = run(world, **kw)
        assert compute_status(Index(world), now=T1, memo=memo, **kw) == fresh
        steps.append((world, {"hits": memo.hits - hits}))
        return settle(world, fresh)

    objects = step(objects)
    objects = step(objects)  # statuses written back: each object is a new value, so recomputed once more
    objects = step(objects)  # a fixed point (observedGeneration moved in the second pass)
    step(objects)
    assert steps[-1][1]["hits"] == len(objects), "nothing changed: every object reused"
    edited = [replace(o, spec=replace(o.spec, mtls=None)) if o.key == service.key else o for o in objects]
    step(edited)
    assert 0 < steps[-1][1]["hits"] < len(objects), "the service and what hangs on it recomputed, not the mesh"
    step(objects, data_plane={table: DataPlaneState(ConditionStatus.FALSE, "proxy x rejected it")})
    gone = [deleting(o) if o.key == the_mesh.key else o for o in objects]
    step(gone)
    step(gone)


def test_a_pass_over_some_objects_and_what_they_refer_to_gives_them_what_a_whole_pass_would() -> None:
    """The update gates' pass (``only``): exact for the objects it covers, silent on the rest, in several
    worlds (fresh, settled, a route table behind on the data plane, its mesh being deleted)."""
    objects = canary()
    table = next(o.key for o in objects if o.kind is Kind.VIRTUAL_SERVICE_ROUTE_TABLE)
    closure = with_references(Index(objects), [table])
    assert sorted(k.kind.value for k in closure) == ["Mesh", "VirtualDeployment", "VirtualDeployment",
                                                     "VirtualService", "VirtualServiceRouteTable"]
    settled = settle(objects, run(objects))
    behind = {"data_plane": {table: DataPlaneState(ConditionStatus.UNKNOWN, "waiting for proxy x")}}
    the_mesh = next(o.key for o in objects if o.kind is Kind.MESH)
    worlds: list[tuple[list[AnyObject], dict[str, Any]]] = [
        (objects, {}), (settled, {}), (settled, behind),
        ([deleting(o) if o.key == the_mesh else o for o in settled], {})]
    for world, kw in worlds:
        whole = run(world, **kw)
        for obj in world:
            only = with_references(Index(world), [obj.key])
            memo = StatusMemo()
            part = compute_status(Index(world), now=T1, memo=memo, only=only, **kw)
            assert part == {k: whole[k] for k in whole if k in only}, obj.key
            assert set(memo.entries) <= only
