"""Analysis: what a set of valid mesh objects will do that their author most likely did not mean.

Validation answers "may this object exist?"; analysis answers "do these objects, together, work?".
Each finding is about configuration that is accepted and served, yet drops, refuses or silently
changes traffic: a split whose every weight is 0, a service no policy lets anyone call, two services
claiming one host name. ``meshplane analyze`` prints them; ``docs/analyze.md`` lists every code.

Contract: :func:`analyze` is pure and deterministic. It reads the objects of a :class:`World` and
nothing else, and returns findings sorted by object, then code. The world should hold only objects
that passed validation (the caller sets aside the others and passes them as ``invalid``), because
the rules here rely on what validation guarantees (a deployment is either serving or egress-only,
the destinations of a rule belong to the table's service, ref-or-id is one of the two …). Objects
that are absent are not findings: validation already warns about references to them, except in
access policies, where a rule that names nothing is exactly what MA004 is for.

The semantics are those of :mod:`build` and :mod:`policies` (what the data plane is actually given):
a mesh without ``mtls`` has the minimum STRICT, a service's effective mode is
``max(its mode or the minimum, the minimum)``, host names are claimed by the service that sorts
first by ``namespace/name``, and access is denied unless a policy allows it.

Codes are stable: a code keeps its meaning for good, and new lints get new codes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from meshplane.controlplane import ir
from meshplane.controlplane.identity import key_of, service_identity, trust_domain
from meshplane.controlplane.model import (
    AnyObject,
    Kind,
    ListenerProtocol,
    MtlsMode,
    ObjectKey,
    RefOrId,
    RoutingPolicyType,
    ServiceDiscoveryType,
    TrafficTarget,
    VirtualDeploymentTarget,
    VirtualServiceRouteRule,
)
from meshplane.controlplane.policies import resolve_access
from meshplane.controlplane.world import Index, World, describe_target, ref_key, resolve


class Severity(enum.StrEnum):
    """WARNING: traffic is dropped, refused or changed against the manifest's word; INFO: worth knowing."""

    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True)
class Code:
    """A lint: its stable code, how serious it is, and what it is about in a few words."""

    code: str
    severity: Severity
    title: str


CODES: Mapping[str, Code] = {c.code: c for c in (
    Code("MA001", Severity.WARNING, "a route sends traffic to a virtual deployment that can have no endpoints"),
    Code("MA002", Severity.WARNING, "every destination of a route rule has weight 0"),
    Code("MA003", Severity.WARNING, "no access policy lets anyone call a serving virtual service"),
    Code("MA004", Severity.WARNING, "an access policy rule names nothing it can match"),
    Code("MA005", Severity.WARNING, "one host name is claimed by two virtual services of a mesh"),
    Code("MA006", Severity.WARNING, "a virtual service's mTLS mode is below its mesh minimum and is raised"),
    Code("MA007", Severity.INFO, "a mesh sets no mTLS minimum, so it is STRICT"),
    Code("MA008", Severity.INFO, "a virtual service sets no mTLS mode and follows a minimum weaker than STRICT"),
    Code("MA009", Severity.INFO, "a TLS_PASSTHROUGH port of an mTLS virtual service carries no mesh mTLS"),
)}


@dataclass(frozen=True)
class Finding:
    """One lint about one object: what is wrong (``message``) and what to do about it (``advice``)."""

    code: str
    severity: Severity
    kind: str
    namespace: str
    name: str
    message: str
    advice: str

    def line(self) -> str:
        """``Kind namespace/name: CODE severity: message; advice`` — validate's shape, with the code."""
        return f"{self.kind} {self.namespace}/{self.name}: {self.code} {self.severity}: {self.message}; {self.advice}"

    def sort_key(self) -> tuple[str, str, str, str, str]:
        return (self.namespace, self.kind, self.name, self.code, self.message)


def analyze(world: World, *, invalid: Iterable[AnyObject] = ()) -> list[Finding]:
    """Every finding about the objects of ``world``, sorted by object and code.

    ``invalid`` are objects that exist among the inputs but failed validation and were left out of
    ``world``: a reference to one of them is not reported as naming nothing (the caller reports the
    object itself).
    """
    ctx = _Context.of(world, invalid)
    findings = [*_route_findings(ctx), *_default_route_findings(ctx), *_uncallable_findings(ctx),
                *_policy_findings(ctx), *_host_findings(ctx), *_mtls_findings(ctx)]
    return sorted(findings, key=Finding.sort_key)


# ------------------------------------------------------------------------------------ shared pieces


@dataclass
class _Context:
    """The world and what several lints look up in it, computed once."""

    world: World
    invalid: Index
    deployments: dict[ObjectKey, list[AnyObject]] = field(default_factory=dict)  # service key → its deployments
    tables: dict[ObjectKey, list[AnyObject]] = field(default_factory=dict)  # service key → its route tables

    @classmethod
    def of(cls, world: World, invalid: Iterable[AnyObject]) -> _Context:
        ctx = cls(world, Index(invalid, authoritative=False))
        for kind, into in ((Kind.VIRTUAL_DEPLOYMENT, ctx.deployments), (Kind.VIRTUAL_SERVICE_ROUTE_TABLE, ctx.tables)):
            for obj in world.objects(kind):
                parent = resolve(world, obj.spec.virtual_service, Kind.VIRTUAL_SERVICE, obj.namespace)
                if parent is not None:
                    into.setdefault(parent.key, []).append(obj)
        return ctx

    def mesh_of(self, obj: AnyObject) -> AnyObject | None:
        """The Mesh a VirtualService, AccessPolicy or IngressGateway belongs to, if it is among the inputs."""
        found: AnyObject | None = resolve(self.world, obj.spec.mesh, Kind.MESH, obj.namespace)
        return found


def _finding(code: str, obj: AnyObject, message: str, advice: str) -> Finding:
    return Finding(code, CODES[code].severity, obj.kind.value, obj.namespace, obj.name, message, advice)


def _serving(vd: AnyObject) -> bool:
    """A deployment with a DNS hostname and listeners; validation allows only this or egress-only."""
    discovery = vd.spec.service_discovery
    dns = discovery is not None and discovery.type is ServiceDiscoveryType.DNS and bool(discovery.hostname)
    return dns and bool(vd.spec.listeners)


def _minimum(mesh: AnyObject) -> MtlsMode:
    """The mTLS floor the build applies: the mesh's spec, STRICT when it sets none (OCI's default)."""
    return mesh.spec.mtls.minimum if mesh.spec.mtls is not None else MtlsMode.STRICT


def _words(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


# ------------------------------------------------------------------------ MA001, MA002: route tables

# The listener protocols each kind of rule applies to (spec §5.2).
_RULE_PROTOCOLS: Mapping[str, frozenset[ListenerProtocol]] = {
    "httpRoute": frozenset({ListenerProtocol.HTTP, ListenerProtocol.HTTP2, ListenerProtocol.GRPC}),
    "tcpRoute": frozenset({ListenerProtocol.TCP}),
    "tlsPassthroughRoute": frozenset({ListenerProtocol.TLS_PASSTHROUGH}),
}


def _rule_body(rule: VirtualServiceRouteRule) -> tuple[str, tuple[VirtualDeploymentTarget, ...]] | None:
    """The wire name of the rule's one route kind and its destinations (validation: exactly one is set)."""
    for name, body in (("httpRoute", rule.http_route), ("tcpRoute", rule.tcp_route),
                       ("tlsPassthroughRoute", rule.tls_passthrough_route)):
        if body is not None:
            return name, body.destinations
    return None


def _route_findings(ctx: _Context) -> Iterator[Finding]:
    """MA002 for a rule that can only answer 503; else MA001 for each weighted destination it cannot reach."""
    for table in ctx.world.objects(Kind.VIRTUAL_SERVICE_ROUTE_TABLE):
        for i, rule in enumerate(table.spec.route_rules):
            picked = _rule_body(rule)
            if picked is None:
                continue
            name, destinations = picked
            path = f"spec.routeRules[{i}].{name}"
            if not any(d.weight for d in destinations):
                yield _finding("MA002", table, f"{path}: every destination has weight 0, so the rule takes the "
                               "requests it matches and answers them with 503 (later rules never see them)",
                               "give at least one destination a positive weight, or remove the rule")
                continue
            for j, destination in enumerate(destinations):
                if destination.weight > 0:
                    yield from _unreachable(ctx, table, f"{path}.destinations[{j}]", name, destination)


def _unreachable(ctx: _Context, table: AnyObject, path: str, rule_kind: str,
                 destination: VirtualDeploymentTarget) -> Iterator[Finding]:
    """MA001 when a weighted destination cannot receive the rule's traffic (a missing one: validation's).

    Build drops such a destination from the split: the others keep their proportions, and with none left
    the rule answers 503 on the ports it applies to (a rule applies to no port of another protocol).
    """
    vd = resolve(ctx.world, destination.virtual_deployment, Kind.VIRTUAL_DEPLOYMENT, table.namespace)
    if vd is None:
        return
    share = f"so the deployment gets none of this rule's traffic, whatever its weight ({destination.weight}) says"
    if not _serving(vd):
        yield _finding("MA001", table, f"{path}: {vd.key} can have no endpoints: it is egress-only (no DNS "
                       f"hostname, no listeners), {share}",
                       "give the deployment serviceDiscovery {type: DNS, hostname: ...} and listeners, or route "
                       "to a deployment that serves")
        return
    listeners = [lst for lst in vd.spec.listeners if destination.port in (None, lst.port)]
    ports = _words([f"{lst.port} ({lst.protocol.value})" for lst in vd.spec.listeners])
    if not listeners:
        yield _finding("MA001", table, f"{path}: {vd.key} has no listener on port {destination.port} (it "
                       f"listens on {ports}), {share}", "target a port the deployment listens on, or add that "
                       "listener to it")
    elif not any(lst.protocol in _RULE_PROTOCOLS[rule_kind] for lst in listeners):
        accepted = _words(sorted(p.value for p in _RULE_PROTOCOLS[rule_kind]))
        there = f"{vd.key} listens on {ports}" if destination.port is None else (
            f"the listener of {vd.key} on port {destination.port} is {listeners[0].protocol.value} (the rule is "
            "never used on that port)")
        yield _finding("MA001", table, f"{path}: {rule_kind} rules apply only to {accepted} listeners, and "
                       f"{there}, {share}", "use the route kind that matches the listener's protocol, or target a "
                       "listener of the rule's protocol")


def _default_route_findings(ctx: _Context) -> Iterator[Finding]:
    """MA001 for a service with hosts, no route table and UNIFORM routing, none of whose deployments serves.

    Without ``hosts`` such a service is taken for a client-only one (egress-only deployments are how a
    workload that only calls others joins the mesh), and nothing is reported.
    """
    for vs in ctx.world.objects(Kind.VIRTUAL_SERVICE):
        policy = vs.spec.default_routing_policy
        deployments = ctx.deployments.get(vs.key, [])
        if (not vs.spec.hosts or vs.key in ctx.tables or not deployments
                or (policy is not None and policy.type is RoutingPolicyType.DENY)
                or any(_serving(vd) for vd in deployments)):
            continue
        names = _words([str(vd.key) for vd in deployments])
        yield _finding("MA001", vs, f"it has no route table, so its default route (UNIFORM) spreads calls over "
                       f"its deployments, but {names} can have no endpoints (egress-only: no DNS hostname, no "
                       "listeners); the service has no port, and calls to its hosts reach nothing",
                       "give a deployment serviceDiscovery {type: DNS, hostname: ...} and listeners, or remove "
                       "spec.hosts if the service only makes calls")


# ----------------------------------------------------------------------- MA003, MA004: access policies


def _uncallable_findings(ctx: _Context) -> Iterator[Finding]:
    """MA003 for each serving virtual service (a deployment with hostname and listeners) nobody may call."""
    meshes = {key_of(m): ir.Mesh(key_of(m), trust_domain(m), ir.Mtls(_minimum(m).value))
              for m in ctx.world.objects(Kind.MESH)}
    services = {}
    for vs in ctx.world.objects(Kind.VIRTUAL_SERVICE):
        mesh = ctx.mesh_of(vs)
        if mesh is not None:
            services[key_of(vs)] = (key_of(mesh), service_identity(trust_domain(mesh), vs))
    access = resolve_access(ctx.world, meshes, services)
    for vs in ctx.world.objects(Kind.VIRTUAL_SERVICE):
        serving = any(_serving(vd) for vd in ctx.deployments.get(vs.key, []))
        if key_of(vs) in services and serving and access.callers_of(key_of(vs)) == ir.Callers():
            yield _finding("MA003", vs, "no access policy among the inputs lets anyone call it, and access is "
                           "denied by default: every call to it, from services or gateways, is refused",
                           "add an AccessPolicy rule with this service (or allVirtualServices) as destination "
                           "and its callers as source")


def _policy_findings(ctx: _Context) -> Iterator[Finding]:
    """MA004 for each rule side (source, destination) that names nothing the rule can match."""
    for policy in ctx.world.objects(Kind.ACCESS_POLICY):
        mesh = ctx.mesh_of(policy)
        if mesh is None:
            continue  # validation warns about the missing mesh; nothing of this policy is enforced
        for i, rule in enumerate(policy.spec.rules):
            for side, target in (("source", rule.source), ("destination", rule.destination)):
                found = _dead_target(ctx, policy, mesh, target)
                if found is not None:
                    field_name, message, advice = found
                    yield _finding("MA004", policy, f"spec.rules[{i}].{side}.{field_name}: {message}", advice)


def _dead_target(ctx: _Context, policy: AnyObject, mesh: AnyObject,
                 target: TrafficTarget) -> tuple[str, str, str] | None:
    """Why a virtualService or ingressGateway target matches nothing: absent, or in another mesh."""
    picked: tuple[str, Kind, RefOrId] | None = None
    if target.virtual_service is not None:
        picked = ("virtualService", Kind.VIRTUAL_SERVICE, target.virtual_service)
    elif target.ingress_gateway is not None:
        picked = ("ingressGateway", Kind.INGRESS_GATEWAY, target.ingress_gateway)
    if picked is None:
        return None  # allVirtualServices and external services always mean something
    field_name, kind, ref = picked
    found = resolve(ctx.world, ref, kind, policy.namespace)
    if found is None:
        if resolve(ctx.invalid, ref, kind, policy.namespace) is not None:
            return None  # among the inputs but invalid: reported as skipped
        return (field_name, f"{describe_target(ref, kind, policy.namespace)} is not among the inputs, so this "
                "rule allows nothing", "fix the reference, or add the object; the rule takes effect once it exists")
    owner = ctx.mesh_of(found)
    if owner is None or owner.key == mesh.key:
        return None
    return (field_name, f"{found.key} belongs to {owner.key}, not to this policy's {mesh.key}, and a policy "
            "cannot open one mesh to another, so the rule is ignored",
            f"put the rule in an AccessPolicy of {owner.key}, or name a {kind.value} of {mesh.key}")


# --------------------------------------------------------------------------------- MA005: host names


def _host_findings(ctx: _Context) -> Iterator[Finding]:
    """MA005 on every virtual service of a mesh that shares a host name (case-insensitively) with another."""
    claims: dict[tuple[str, str], list[AnyObject]] = {}
    for vs in ctx.world.objects(Kind.VIRTUAL_SERVICE):
        for host in sorted({h.lower() for h in vs.spec.hosts}):
            claims.setdefault((_mesh_name(ctx, vs), host), []).append(vs)
    for (_, host), owners in sorted(claims.items()):
        if len(owners) < 2:
            continue
        owners = sorted(owners, key=key_of)  # the order translation hands out names in
        for vs in owners:
            others = _words([str(o.key) for o in owners if o is not vs])
            if vs is owners[0]:
                outcome = "this service keeps the name on every port both serve, and callers never reach the other"
            else:
                outcome = (f"{owners[0].key} sorts first by namespace/name and keeps it on every port both serve, "
                           "so callers using the name never reach this service there")
            yield _finding("MA005", vs, f"spec.hosts: {host!r} is also claimed by {others} in the same mesh; "
                           f"{outcome}",
                           "give each virtual service its own host names; to split one name between versions, "
                           "use one service with several deployments and a route table")


def _mesh_name(ctx: _Context, vs: AnyObject) -> str:
    """Which mesh a service is in, also when the mesh is not among the inputs (by its reference)."""
    mesh = ctx.mesh_of(vs)
    if mesh is not None:
        return str(mesh.key)
    ref: RefOrId = vs.spec.mesh
    return str(ref_key(ref.ref, Kind.MESH, vs.namespace)) if ref.ref is not None else f"id {ref.id}"


# --------------------------------------------------------------------------- MA006 to MA009: mTLS


def _mtls_findings(ctx: _Context) -> Iterator[Finding]:
    """The mTLS surprises of spec §5.1: a floor that raises a mode, defaults, and ports mTLS never covers."""
    for mesh in ctx.world.objects(Kind.MESH):
        if mesh.spec.mtls is None:
            yield _finding("MA007", mesh, "spec.mtls is not set, so the mTLS minimum is STRICT (OCI's default): "
                           "every virtual service of the mesh accepts only mesh mTLS, and callers without a "
                           "sidecar are refused",
                           "set spec.mtls.minimum explicitly: STRICT to keep this, PERMISSIVE while clients "
                           "without a sidecar still call the mesh")
    for vs in ctx.world.objects(Kind.VIRTUAL_SERVICE):
        parent = ctx.mesh_of(vs)
        if parent is not None:
            yield from _service_mtls(ctx, vs, parent)


def _service_mtls(ctx: _Context, vs: AnyObject, mesh: AnyObject) -> Iterator[Finding]:
    floor = _minimum(mesh)
    requested: MtlsMode | None = vs.spec.mtls.mode if vs.spec.mtls is not None else None
    if requested is not None and requested.level < floor.level:
        yield _raised(vs, mesh, requested, floor)
    if requested is None and floor is not MtlsMode.STRICT:
        plain = "traffic to it is plaintext" if floor is MtlsMode.DISABLED else "it also accepts plaintext"
        yield _finding("MA008", vs, f"spec.mtls is not set, so the service takes the minimum {floor.value} of "
                       f"{mesh.key}: {plain}; OCI documents STRICT as the default, so the same manifest may "
                       "get STRICT there",
                       "set spec.mtls.mode explicitly (STRICT unless callers without a sidecar need plaintext)")
    effective = max(requested or floor, floor, key=lambda mode: mode.level)
    if effective is not MtlsMode.DISABLED:
        yield from _passthrough(ctx, vs, effective)


def _raised(vs: AnyObject, mesh: AnyObject, requested: MtlsMode, floor: MtlsMode) -> Finding:
    """MA006. Validation refuses such a mode against the mesh's *applied* minimum (its status), so it
    passes while a raise of the minimum in the mesh's spec is not applied yet; the build uses the spec."""
    applied = mesh.status.mesh_mtls.minimum if mesh.status.mesh_mtls is not None else None
    why = f" (its applied minimum is {applied.value}; its spec raises it)" if applied not in (None, floor) else ""
    return _finding("MA006", vs, f"spec.mtls.mode: asks for {requested.value}, below the mTLS minimum "
                    f"{floor.value} of {mesh.key}{why}, and is raised to {floor.value} without notice: the "
                    f"service behaves as {floor.value}, not as written",
                    f"set spec.mtls.mode to {floor.value}, or remove spec.mtls to follow the mesh minimum")


def _passthrough(ctx: _Context, vs: AnyObject, effective: MtlsMode) -> Iterator[Finding]:
    """MA009: TLS_PASSTHROUGH listeners are never wrapped in mesh TLS, whatever the service's mode."""
    ports = sorted({f"{lst.port} of {vd.key}" for vd in ctx.deployments.get(vs.key, []) if _serving(vd)
                    for lst in vd.spec.listeners if lst.protocol is ListenerProtocol.TLS_PASSTHROUGH})
    if ports:
        yield _finding("MA009", vs, f"its mTLS mode is {effective.value}, but port {_words(ports)} is "
                       "TLS_PASSTHROUGH: the application's own TLS passes through without mesh mTLS, so callers "
                       "there carry no mesh identity and access policies admit them by address only",
                       "nothing to change if the application terminates TLS itself; use a TCP listener "
                       "instead if the port should get mesh mTLS")
