"""The status engine: what every mesh object's ``status`` should say, computed from the world.

Contract: :func:`compute_status` is a pure function of a :class:`World` (each object carrying its
*current* status), the time ``now``, the problems the build found per object and what the proxies
said per object (:class:`DataPlaneState`). It returns the new :class:`Status` of every object, and
nothing else: writing it back (Kubernetes status patches, the standalone store) and removing
finalizers (:func:`can_finalize`) belong to the reconcile loop.

Choices, each a deliberate reading of spec §2.3 to §2.4, §3 and §7:

* **All conditions, always, in OSOK's index order.** OSOK appends conditions in first-set order and
  the printer columns read them by index (``conditions[2]`` is Active for backed kinds,
  ``conditions[1]`` for VirtualDeploymentBinding/IngressGatewayDeployment). We emit every condition
  on every pass in that order, so the columns line up even before an object first becomes ready.
* **One pass, dependency order.** Kinds are processed parents first (:data:`DEPENDENCY_ORDER`) and a
  parent's readiness is read from the status computed earlier in the *same* pass, so a whole chain
  Mesh → VirtualService → VirtualDeployment → binding turns True at once instead of one level per pass.
* **Readiness is OSOK's "fully ready"**: exactly the expected number of conditions, all True. A
  missing parent, or one being deleted, makes DependenciesActive False; a parent that exists but is
  not ready makes it Unknown. Either way Configured and Active are Unknown.
* **Active means the proxies accepted it** (architecture §8): True when every connected proxy that
  needs the object ACKed, Unknown while pushes are pending, False with the proxy's message on a NACK.
* **History**: ``lastTransitionTime`` moves only when a condition's status changes;
  ``observedGeneration`` is 1 for a new condition, ``metadata.generation`` on a True/False update and
  unchanged on an Unknown one (spec §2.4).
* **Ids are deterministic** (:func:`~meshplane.controlplane.world.id_of`). An object's own id is
  always filled; ids and names taken from parents are refreshed whenever every dependency resolves
  and otherwise keep their previous values, as OSOK caches them — so a parent's transient hiccup does
  not blank a printer column.
* **Deletion** waits while another object's reference (by ``ref`` or ``id``) resolves to the object
  being deleted. References follow :data:`DEPENDENCY_ORDER` strictly downwards, so the wait graph is
  acyclic and deleting everything at once always finalizes, leaves first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

from meshplane.controlplane.model import (
    KINDS,
    AccessPolicySpec,
    AnyObject,
    Condition,
    ConditionStatus,
    ConditionType,
    IngressGatewayRouteRule,
    IngressGatewayRouteTableSpec,
    Kind,
    MeshMtls,
    MtlsMode,
    ObjectKey,
    RefOrId,
    Status,
    TrafficTarget,
    VirtualServiceMtlsStatus,
    VirtualServiceRouteRule,
    VirtualServiceRouteTableSpec,
)
from meshplane.controlplane.problems import Problem
from meshplane.controlplane.wire import FrozenMap
from meshplane.controlplane.world import World, describe_target, id_of, resolve

TRUE, FALSE, UNKNOWN = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN
DEPENDENCIES_ACTIVE = ConditionType.DEPENDENCIES_ACTIVE
CONFIGURED = ConditionType.CONFIGURED
ACTIVE = ConditionType.ACTIVE

# Reasons (all match the CRD pattern ^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$).
SUCCESSFUL = "Successful"
DEPENDENCIES_NOT_RESOLVED = "DependenciesNotResolved"
INVALID_CONFIGURATION = "InvalidConfiguration"
LIFECYCLE_STATE_CHANGED = "LifecycleStateChanged"
CONFIGURATION_REJECTED = "ConfigurationRejected"

MAX_MESSAGE = 32768

DEPENDENCY_ORDER: tuple[Kind, ...] = (
    Kind.MESH,
    Kind.VIRTUAL_SERVICE, Kind.INGRESS_GATEWAY,
    Kind.VIRTUAL_DEPLOYMENT, Kind.ACCESS_POLICY, Kind.INGRESS_GATEWAY_ROUTE_TABLE, Kind.INGRESS_GATEWAY_DEPLOYMENT,
    Kind.VIRTUAL_SERVICE_ROUTE_TABLE,
    Kind.VIRTUAL_DEPLOYMENT_BINDING,
)
"""Parents before children: every reference points to a kind earlier in this tuple."""

Reference = tuple[Kind, RefOrId]
_NO_PROBLEMS: Mapping[ObjectKey, Sequence[Problem]] = MappingProxyType({})


@dataclass(frozen=True)
class DataPlaneState:
    """What the proxies said about one object's configuration.

    ``TRUE``: every connected proxy that needs it ACKed; ``UNKNOWN``: pushes are pending;
    ``FALSE``: a proxy NACKed, and ``message`` carries its error detail.
    """

    status: ConditionStatus
    message: str = ""


_NO_DATA_PLANE: Mapping[ObjectKey, DataPlaneState] = MappingProxyType({})


@dataclass(frozen=True)
class Verdict:
    """A condition's content before its history (transition time, generation) is applied."""

    status: ConditionStatus
    reason: str
    message: str


# ------------------------------------------------------------------------------------- conditions


def condition_types(kind: Kind) -> tuple[ConditionType, ...]:
    """The conditions of a kind in OSOK's index order, which the printer columns rely on."""
    return KINDS[kind].conditions


def is_ready(obj: AnyObject, status: Status | None = None) -> bool:
    """OSOK's "fully ready": exactly the kind's number of conditions, all True.

    ``status`` overrides the object's own, so a pass can ask about the status it just computed.
    """
    conditions = (obj.status if status is None else status).conditions
    return len(conditions) == len(condition_types(obj.kind)) and all(c.status is TRUE for c in conditions)


def next_condition(previous: Condition | None, type_: ConditionType, verdict: Verdict,
                   generation: int, now: str) -> Condition:
    """The condition after this verdict, keeping the history rules of spec §2.4.

    The transition time is kept while the status stays the same, so "since when" stays truthful; an
    Unknown status does not claim to have observed the current generation.
    """
    observed: int | None
    if previous is None:
        transition, observed = now, 1
    else:
        transition = previous.last_transition_time if previous.status is verdict.status else now
        observed = previous.observed_generation if verdict.status is UNKNOWN else generation
    return Condition(type_, verdict.status, transition, verdict.reason, _truncate(verdict.message), observed)


def set_condition(conditions: Sequence[Condition], type_: ConditionType, status: ConditionStatus, reason: str,
                  message: str, *, generation: int, now: str) -> tuple[Condition, ...]:
    """Set one condition: replaced in place if present, else appended (OSOK's first-set order)."""
    previous = next((c for c in conditions if c.type is type_), None)
    new = next_condition(previous, type_, Verdict(status, reason, message), generation, now)
    if previous is None:
        return (*conditions, new)
    return tuple(new if c is previous else c for c in conditions)


def _truncate(message: str) -> str:
    if len(message) <= MAX_MESSAGE:
        return message
    return message[: MAX_MESSAGE - 1] + "…"


# ------------------------------------------------------------------------------------- references


def references(obj: AnyObject) -> list[Reference]:
    """Every mesh object this one refers to: its parent first, then rule targets in spec order.

    These are the dependencies that must be ready before the object is, and the links that hold a
    parent's deletion. A VirtualDeploymentBinding's Service is not a mesh object and is not listed.
    """
    return list(dict.fromkeys(_REFERENCES[obj.kind](obj.spec)))


def _route(rule: VirtualServiceRouteRule | IngressGatewayRouteRule) -> Any:
    """The one route of a rule (validation reports a rule with none or several)."""
    return rule.http_route or rule.tcp_route or rule.tls_passthrough_route


def _vd_targets(rule: VirtualServiceRouteRule) -> list[RefOrId]:
    route = _route(rule)
    return [] if route is None else [d.virtual_deployment for d in route.destinations]


def _vs_targets(rule: IngressGatewayRouteRule) -> list[RefOrId]:
    route = _route(rule)
    return [] if route is None else [d.virtual_service for d in route.destinations]


def _traffic_target(target: TrafficTarget) -> Reference | None:
    """The mesh object an access-policy source or destination names, if it names one."""
    if target.virtual_service is not None:
        return (Kind.VIRTUAL_SERVICE, target.virtual_service)
    if target.ingress_gateway is not None:
        return (Kind.INGRESS_GATEWAY, target.ingress_gateway)
    return None


def _vsrt_references(spec: VirtualServiceRouteTableSpec) -> list[Reference]:
    targets = [t for rule in spec.route_rules for t in _vd_targets(rule)]
    return [(Kind.VIRTUAL_SERVICE, spec.virtual_service)] + [(Kind.VIRTUAL_DEPLOYMENT, t) for t in targets]


def _policy_references(spec: AccessPolicySpec) -> list[Reference]:
    ends = [_traffic_target(end) for rule in spec.rules for end in (rule.source, rule.destination)]
    return [(Kind.MESH, spec.mesh)] + [end for end in ends if end is not None]


def _igrt_references(spec: IngressGatewayRouteTableSpec) -> list[Reference]:
    targets = [t for rule in spec.route_rules for t in _vs_targets(rule)]
    return [(Kind.INGRESS_GATEWAY, spec.ingress_gateway)] + [(Kind.VIRTUAL_SERVICE, t) for t in targets]


_REFERENCES: Mapping[Kind, Callable[[Any], list[Reference]]] = {
    Kind.MESH: lambda spec: [],
    Kind.VIRTUAL_SERVICE: lambda spec: [(Kind.MESH, spec.mesh)],
    Kind.VIRTUAL_DEPLOYMENT: lambda spec: [(Kind.VIRTUAL_SERVICE, spec.virtual_service)],
    Kind.VIRTUAL_SERVICE_ROUTE_TABLE: _vsrt_references,
    Kind.ACCESS_POLICY: _policy_references,
    Kind.INGRESS_GATEWAY: lambda spec: [(Kind.MESH, spec.mesh)],
    Kind.INGRESS_GATEWAY_ROUTE_TABLE: _igrt_references,
    Kind.VIRTUAL_DEPLOYMENT_BINDING: lambda spec: [(Kind.VIRTUAL_DEPLOYMENT, spec.virtual_deployment)],
    Kind.INGRESS_GATEWAY_DEPLOYMENT: lambda spec: [(Kind.INGRESS_GATEWAY, spec.ingress_gateway)],
}


# ----------------------------------------------------------------------------------- dependencies


class _Pass:
    """One status pass: the world plus the statuses computed so far (parents before children)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.computed: dict[ObjectKey, Status] = {}

    def status_of(self, obj: AnyObject) -> Status:
        return self.computed.get(obj.key, obj.status)

    def parent(self, child: AnyObject, kind: Kind, target: RefOrId) -> AnyObject:
        """A parent known to resolve (only called once every dependency did)."""
        found = resolve(self.world, target, kind, child.namespace)
        if found is None:
            raise LookupError(f"{describe_target(target, kind, child.namespace)} vanished during a status pass")
        return found


def _dependencies_verdict(obj: AnyObject, ctx: _Pass) -> Verdict:
    """DependenciesActive from the parents: False if one is missing or deleting, Unknown if one is not ready."""
    found = (_parent_issue(obj, kind, target, ctx) for kind, target in references(obj))
    issues = list(dict.fromkeys(issue for issue in found if issue is not None))  # two spellings, one parent
    if not issues:
        return Verdict(TRUE, SUCCESSFUL, "Dependencies resolved successfully")
    status = FALSE if any(s is FALSE for s, _ in issues) else UNKNOWN
    return Verdict(status, DEPENDENCIES_NOT_RESOLVED, "; ".join(message for _, message in issues))


def _parent_issue(child: AnyObject, kind: Kind, target: RefOrId,
                  ctx: _Pass) -> tuple[ConditionStatus, str] | None:
    parent = resolve(ctx.world, target, kind, child.namespace)
    if parent is None:
        return FALSE, f"{describe_target(target, kind, child.namespace)} does not exist"
    if parent.deleting:
        return FALSE, f"{parent.key} is being deleted"
    if not is_ready(parent, ctx.status_of(parent)):
        return UNKNOWN, f"{parent.key} is not active yet"
    return None


# --------------------------------------------------------------------------------------- deletion


def deletion_blockers(obj: AnyObject, world: World) -> list[ObjectKey]:
    """The objects whose references resolve to ``obj``: while any exists, ``obj`` may not go.

    Resolved references, not status ids, decide: a dependent that never became ready still holds its
    parent. Sorted parents-first by kind, then by key, so messages are stable.
    """
    later = DEPENDENCY_ORDER[DEPENDENCY_ORDER.index(obj.kind) + 1:]
    return [other.key for kind in later for other in world.objects(kind)
            if _refers_to(other, obj, world)]


def _refers_to(referrer: AnyObject, target: AnyObject, world: World) -> bool:
    for kind, ref in references(referrer):
        if kind is target.kind:
            found = resolve(world, ref, kind, referrer.namespace)
            if found is not None and found.key == target.key:
                return True
    return False


def can_finalize(obj: AnyObject, world: World) -> bool:
    """True when ``obj`` is being deleted and nothing refers to it any more: drop its finalizers."""
    return obj.deleting and not deletion_blockers(obj, world)


def describe_blockers(kind: Kind, blockers: Iterable[ObjectKey]) -> str:
    """``mesh has pending subresources to be deleted: virtualServices (shop/reviews), ...``.

    OSOK's wording names only the collections; the object names tell users what to delete.
    """
    groups: dict[Kind, list[str]] = {}
    for key in blockers:
        groups.setdefault(key.kind, []).append(f"{key.namespace}/{key.name}")
    listed = ", ".join(f"{_collection(k)} ({', '.join(names)})" for k, names in groups.items())
    return f"{KINDS[kind].singular} has pending subresources to be deleted: {listed}"


def _collection(kind: Kind) -> str:
    """The camelCase plural OSOK uses in messages (``accessPolicies``), from the CRD plural."""
    plural = KINDS[kind].plural
    cased = "".join(p.upper() if k.isupper() else p for p, k in zip(plural, kind.value, strict=False))
    return cased[:1].lower() + cased[1:] + plural[len(cased):]


def _deletion_verdict(obj: AnyObject, world: World) -> Verdict:
    blockers = deletion_blockers(obj, world)
    if blockers:
        return Verdict(UNKNOWN, DEPENDENCIES_NOT_RESOLVED, describe_blockers(obj.kind, blockers))
    return Verdict(UNKNOWN, LIFECYCLE_STATE_CHANGED, "Resource is Deleting; nothing depends on it any more")


# ---------------------------------------------------------------------------------------- verdicts


def configured_verdict(problems: Sequence[Problem]) -> Verdict:
    """Configured from the build's findings: errors make it False; warnings are advice, not failure."""
    errors = [p for p in problems if p.is_error]
    if not errors:
        return Verdict(TRUE, SUCCESSFUL, "Resource configured successfully")
    text = "; ".join(f"{p.path}: {p.message}" if p.path else p.message for p in errors)
    return Verdict(FALSE, INVALID_CONFIGURATION, text)


def active_verdict(state: DataPlaneState | None) -> Verdict:
    """Active from the proxies; no entry means no proxy is waiting for it, which counts as served."""
    if state is None or state.status is TRUE:
        message = state.message if state is not None and state.message else ""
        return Verdict(TRUE, SUCCESSFUL, message or "Configuration is served to every proxy that needs it")
    if state.status is UNKNOWN:
        return Verdict(UNKNOWN, LIFECYCLE_STATE_CHANGED, state.message or "Configuration is being pushed to proxies")
    return Verdict(FALSE, CONFIGURATION_REJECTED, state.message or "A proxy rejected the configuration")


def _verdicts(obj: AnyObject, ctx: _Pass, dependencies: Verdict, problems: Sequence[Problem],
              data_plane: DataPlaneState | None) -> dict[ConditionType, Verdict]:
    if obj.deleting:
        deleting = Verdict(UNKNOWN, LIFECYCLE_STATE_CHANGED, "Resource is Deleting")
        return {DEPENDENCIES_ACTIVE: _deletion_verdict(obj, ctx.world), CONFIGURED: deleting, ACTIVE: deleting}
    if dependencies.status is not TRUE:
        waiting = Verdict(UNKNOWN, DEPENDENCIES_NOT_RESOLVED, f"Waiting for dependencies: {dependencies.message}")
        return {DEPENDENCIES_ACTIVE: dependencies, CONFIGURED: waiting, ACTIVE: waiting}
    configured = configured_verdict(problems)
    if configured.status is TRUE:
        active = active_verdict(data_plane)
    elif KINDS[obj.kind].backed:
        active = Verdict(UNKNOWN, INVALID_CONFIGURATION, "Not served to proxies while the configuration is invalid")
    else:
        active = configured  # no Configured condition to carry the problems: Active does
    return {DEPENDENCIES_ACTIVE: dependencies, CONFIGURED: configured, ACTIVE: active}


def _conditions(obj: AnyObject, verdicts: Mapping[ConditionType, Verdict], now: str) -> tuple[Condition, ...]:
    previous = {c.type: c for c in obj.status.conditions}
    generation = obj.metadata.generation
    return tuple(next_condition(previous.get(t), t, verdicts[t], generation, now) for t in condition_types(obj.kind))


# ----------------------------------------------------------------------------------- status fields


def oci_name(obj: AnyObject) -> str:
    """The OCI name (spec §2.6): ``spec.name`` (Mesh: ``spec.displayName``), else ``namespace/name``."""
    field = "display_name" if obj.kind is Kind.MESH else "name"
    name: str | None = getattr(obj.spec, field, None)
    return name or f"{obj.namespace}/{obj.name}"


def mesh_minimum(mesh: AnyObject) -> MtlsMode:
    """The mesh's mTLS floor; an omitted ``mtls`` means STRICT (OCI's default, spec §8.11)."""
    return MtlsMode.STRICT if mesh.spec.mtls is None else MtlsMode(mesh.spec.mtls.minimum)


def effective_mtls(requested: MtlsMode | None, minimum: MtlsMode) -> MtlsMode:
    """A virtual service's effective mode: its own (default: the floor), never below the floor (§5.1)."""
    mode = requested or minimum
    return mode if mode.level >= minimum.level else minimum


_KIND_FIELDS: Mapping[Kind, tuple[str, ...]] = {
    Kind.MESH: ("mesh_id", "mesh_mtls", "last_updated_time"),
    Kind.VIRTUAL_SERVICE: ("mesh_id", "virtual_service_id", "virtual_service_mtls", "last_updated_time"),
    Kind.VIRTUAL_DEPLOYMENT: ("mesh_id", "virtual_service_id", "virtual_service_name", "virtual_deployment_id",
                              "last_updated_time"),
    Kind.VIRTUAL_SERVICE_ROUTE_TABLE: ("virtual_service_id", "virtual_service_name", "virtual_service_route_table_id",
                                       "virtual_deployment_id_for_rules", "last_updated_time"),
    Kind.ACCESS_POLICY: ("mesh_id", "access_policy_id", "ref_id_for_rules", "last_updated_time"),
    Kind.INGRESS_GATEWAY: ("mesh_id", "ingress_gateway_id", "ingress_gateway_mtls", "last_updated_time"),
    Kind.INGRESS_GATEWAY_ROUTE_TABLE: ("ingress_gateway_id", "ingress_gateway_name", "ingress_gateway_route_table_id",
                                       "virtual_service_id_for_rules", "last_updated_time"),
    Kind.VIRTUAL_DEPLOYMENT_BINDING: ("virtual_deployment_id", "virtual_deployment_name", "virtual_service_id",
                                      "virtual_service_name", "mesh_id"),
    Kind.INGRESS_GATEWAY_DEPLOYMENT: ("mesh_id", "ingress_gateway_id", "ingress_gateway_name"),
}
"""The status fields each kind uses (spec §2.3); the rest stay empty. Certificates and
``lastUpdatedTime`` are written by others (the CA) and carried over; ``opcRetryToken`` is OCI-only."""


def _carried(obj: AnyObject) -> Status:
    return Status(**{name: getattr(obj.status, name) for name in _KIND_FIELDS[obj.kind]})


def _own_fields(obj: AnyObject, status: Status) -> Status:
    """What an object knows about itself: its id, and for a Mesh its effective mTLS floor."""
    info = KINDS[obj.kind]
    if info.id_field is not None:
        own_id: dict[str, Any] = {info.id_field: id_of(obj)}
        status = replace(status, **own_id)
    if obj.kind is Kind.MESH:
        status = replace(status, mesh_mtls=MeshMtls(mesh_minimum(obj)))
    return status


def _id(obj: AnyObject) -> str:
    ocid = id_of(obj)
    if ocid is None:
        raise ValueError(f"{obj.key} has no identifier")
    return ocid


def _vs_fields(obj: AnyObject, ctx: _Pass, base: Status) -> Status:
    mesh = ctx.parent(obj, Kind.MESH, obj.spec.mesh)
    requested = None if obj.spec.mtls is None else MtlsMode(obj.spec.mtls.mode)
    certificate = None if base.virtual_service_mtls is None else base.virtual_service_mtls.certificate_id
    mtls = VirtualServiceMtlsStatus(effective_mtls(requested, mesh_minimum(mesh)), certificate)
    return replace(base, mesh_id=_id(mesh), virtual_service_mtls=mtls)


def _vd_fields(obj: AnyObject, ctx: _Pass, base: Status) -> Status:
    vs = ctx.parent(obj, Kind.VIRTUAL_SERVICE, obj.spec.virtual_service)
    return replace(base, mesh_id=ctx.status_of(vs).mesh_id, virtual_service_id=_id(vs),
                   virtual_service_name=oci_name(vs))


def _vsrt_fields(obj: AnyObject, ctx: _Pass, base: Status) -> Status:
    vs = ctx.parent(obj, Kind.VIRTUAL_SERVICE, obj.spec.virtual_service)
    rules = tuple(tuple(_id(ctx.parent(obj, Kind.VIRTUAL_DEPLOYMENT, t)) for t in _vd_targets(rule))
                  for rule in obj.spec.route_rules)
    return replace(base, virtual_service_id=_id(vs), virtual_service_name=oci_name(vs),
                   virtual_deployment_id_for_rules=rules)


def _policy_fields(obj: AnyObject, ctx: _Pass, base: Status) -> Status:
    mesh = ctx.parent(obj, Kind.MESH, obj.spec.mesh)
    return replace(base, mesh_id=_id(mesh), ref_id_for_rules=tuple(_rule_ids(obj, ctx, r) for r in obj.spec.rules))


def _rule_ids(obj: AnyObject, ctx: _Pass, rule: Any) -> FrozenMap[str]:
    """``{"source": id, "destination": id}`` with a key only where the end is a mesh object (§2.3)."""
    ids: dict[str, str] = {}
    for end, target in (("source", rule.source), ("destination", rule.destination)):
        reference = _traffic_target(target)
        if reference is not None:
            ids[end] = _id(ctx.parent(obj, *reference))
    return FrozenMap(ids)


def _ig_fields(obj: AnyObject, ctx: _Pass, base: Status) -> Status:
    return replace(base, mesh_id=_id(ctx.parent(obj, Kind.MESH, obj.spec.mesh)))


def _igrt_fields(obj: AnyObject, ctx: _Pass, base: Status) -> Status:
    gateway = ctx.parent(obj, Kind.INGRESS_GATEWAY, obj.spec.ingress_gateway)
    rules = tuple(tuple(_id(ctx.parent(obj, Kind.VIRTUAL_SERVICE, t)) for t in _vs_targets(rule))
                  for rule in obj.spec.route_rules)
    return replace(base, ingress_gateway_id=_id(gateway), ingress_gateway_name=oci_name(gateway),
                   virtual_service_id_for_rules=rules)


def _vdb_fields(obj: AnyObject, ctx: _Pass, base: Status) -> Status:
    deployment = ctx.parent(obj, Kind.VIRTUAL_DEPLOYMENT, obj.spec.virtual_deployment)
    parent = ctx.status_of(deployment)
    return replace(base, virtual_deployment_id=_id(deployment), virtual_deployment_name=oci_name(deployment),
                   virtual_service_id=parent.virtual_service_id, virtual_service_name=parent.virtual_service_name,
                   mesh_id=parent.mesh_id)


def _igd_fields(obj: AnyObject, ctx: _Pass, base: Status) -> Status:
    gateway = ctx.parent(obj, Kind.INGRESS_GATEWAY, obj.spec.ingress_gateway)
    return replace(base, mesh_id=ctx.status_of(gateway).mesh_id, ingress_gateway_id=_id(gateway),
                   ingress_gateway_name=oci_name(gateway))


_PARENT_FIELDS: Mapping[Kind, Callable[[AnyObject, _Pass, Status], Status]] = {
    Kind.MESH: lambda obj, ctx, base: base,
    Kind.VIRTUAL_SERVICE: _vs_fields,
    Kind.VIRTUAL_DEPLOYMENT: _vd_fields,
    Kind.VIRTUAL_SERVICE_ROUTE_TABLE: _vsrt_fields,
    Kind.ACCESS_POLICY: _policy_fields,
    Kind.INGRESS_GATEWAY: _ig_fields,
    Kind.INGRESS_GATEWAY_ROUTE_TABLE: _igrt_fields,
    Kind.VIRTUAL_DEPLOYMENT_BINDING: _vdb_fields,
    Kind.INGRESS_GATEWAY_DEPLOYMENT: _igd_fields,
}
"""Fields taken from parents; each function runs only once every dependency has resolved."""


# ------------------------------------------------------------------------------------------- pass


class StatusMemo:
    """What :func:`compute_status` computed per object last time, and from which inputs.

    An object's status is a function of the object itself (spec, metadata, current status), the
    parents and targets its references resolve to with their statuses of the same pass, the build's
    problems for it and its data-plane state. When all of those are the very same values as last
    time, the last result is reused: a pass over an unchanged mesh costs a lookup per reference
    instead of the whole derivation, which matters because proxies' ACKs re-run the pass often. An
    object being deleted is always recomputed (its verdict depends on who refers to it).
    """

    def __init__(self) -> None:
        self.entries: dict[ObjectKey, tuple[tuple[object, ...], Status]] = {}
        self.references: dict[ObjectKey, tuple[object, list[Reference]]] = {}  # by spec: writing a status keeps it
        self.hits = 0

    def references_of(self, obj: AnyObject) -> list[Reference]:
        """:func:`references` of ``obj``, found again only when its spec is a new object."""
        held = self.references.get(obj.key)
        if held is None or held[0] is not obj.spec:
            held = self.references[obj.key] = (obj.spec, references(obj))
        return held[1]


def compute_status(world: World, *, now: str,
                   problems: Mapping[ObjectKey, Sequence[Problem]] = _NO_PROBLEMS,
                   data_plane: Mapping[ObjectKey, DataPlaneState] = _NO_DATA_PLANE,
                   memo: StatusMemo | None = None,
                   only: AbstractSet[ObjectKey] | None = None) -> dict[ObjectKey, Status]:
    """The new status of every object in ``world``, in :data:`DEPENDENCY_ORDER` then key order.

    ``now`` is an RFC 3339 time used for conditions that change; ``problems`` holds what the build
    found per object (errors make Configured False); ``data_plane`` what the proxies said (no entry:
    nothing pending). Deterministic: the same inputs give the same output, byte for byte. With a
    ``memo`` (kept by the caller between passes), unchanged objects reuse their last result.

    ``only`` (made by :func:`with_references`) limits the pass to those objects: each gets the status a
    whole pass would give it, since a status reads nothing but the object, what it refers to (in the set)
    and its own problems and data-plane state. What the update gates read costs a few objects, not 5,000.
    """
    ctx = _Pass(world)
    previous = memo.entries if memo is not None else {}
    entries: dict[ObjectKey, tuple[tuple[object, ...], Status]] = {}
    for kind in DEPENDENCY_ORDER:
        for obj in world.objects(kind) if only is None else _some(world, kind, only):
            own_problems, state = tuple(problems.get(obj.key, ())), data_plane.get(obj.key)
            inputs = None if memo is None or obj.deleting else _inputs(obj, ctx, own_problems, state,
                                                                        memo.references_of(obj))
            last = previous.get(obj.key)
            if inputs is not None and last is not None and last[0] == inputs:
                status = last[1]
                if memo is not None:
                    memo.hits += 1
            else:
                status = _object_status(obj, ctx, now, own_problems, state)
            if inputs is not None:
                entries[obj.key] = (inputs, status)
            ctx.computed[obj.key] = status
    if memo is not None and only is not None:
        memo.entries.update(entries)
    elif memo is not None:
        memo.entries = entries
        memo.references = {key: memo.references[key] for key in entries}
    return ctx.computed


def _some(world: World, kind: Kind, keys: AbstractSet[ObjectKey]) -> list[AnyObject]:
    return [obj for key in sorted(k for k in keys if k.kind is kind) if (obj := world.get(key)) is not None]


def with_references(world: World, keys: Iterable[ObjectKey]) -> frozenset[ObjectKey]:
    """``keys`` (those in ``world``) and every object they refer to, transitively: the set a partial
    :func:`compute_status` pass needs to be exact."""
    found: set[ObjectKey] = set()
    todo = [obj for key in keys if (obj := world.get(key)) is not None]
    while todo:
        obj = todo.pop()
        if obj.key not in found:
            found.add(obj.key)
            todo += [parent for kind, target in references(obj)
                     if (parent := resolve(world, target, kind, obj.namespace)) is not None]
    return frozenset(found)


def _inputs(obj: AnyObject, ctx: _Pass, problems: tuple[Problem, ...], state: DataPlaneState | None,
            refs: list[Reference]) -> tuple[object, ...]:
    """Everything :func:`_object_status` reads for ``obj`` (``refs``: its references): compared by identity
    first, so cheap."""
    found: list[object] = [obj, problems, state]
    for kind, target in refs:
        parent = resolve(ctx.world, target, kind, obj.namespace)
        found += (parent, None if parent is None else ctx.status_of(parent))
    return tuple(found)


def _object_status(obj: AnyObject, ctx: _Pass, now: str, problems: Sequence[Problem],
                  data_plane: DataPlaneState | None) -> Status:
    """One object's new status, its parents' statuses of this pass being already in ``ctx``."""
    dependencies = _dependencies_verdict(obj, ctx)
    status = _own_fields(obj, _carried(obj))
    if dependencies.status is TRUE:
        status = _PARENT_FIELDS[obj.kind](obj, ctx, status)
    verdicts = _verdicts(obj, ctx, dependencies, problems, data_plane)
    return replace(status, conditions=_conditions(obj, verdicts, now))
