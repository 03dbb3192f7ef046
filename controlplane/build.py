"""Build: the world of mesh objects (and the live workloads) → the IR, plus problems per object.

Contract: :func:`build` is pure and deterministic. It never raises for bad input: what it cannot use
it leaves out and reports against the object at fault, and everything else is still served.

Choices (each written in docs/traffic.md for users):

* **Structural inclusion.** An object is served when its references resolve to served objects —
  never gated on status conditions (Active depends on proxies acknowledging the configuration, so
  gating on it would make configuration flap while it is pushed).
* **Route tables** of a service apply in priority order (lower first; no priority = after every
  numbered table; ties by namespace and name), rules in order, first match wins. A service with no
  route table uses its ``defaultRoutingPolicy``: UNIFORM (the default when omitted) splits evenly over
  its deployments, DENY answers 403. When tables exist but no rule matches, the request gets 404.
* **A split never sends traffic nowhere.** A destination that does not resolve (not created yet) or
  that has no live endpoint while another destination of the rule has one drops out of the split,
  and the remaining weights keep their proportions (a live-less one is kept on standby, ``ir.Route.standby``,
  so its callers keep its cluster). A rule left with nothing (all weights 0, or no
  destination at all) answers 503 and is reported on its route table.
* **Timeouts.** A deployment port's timeout is its listener's ``requestTimeoutInMs``, else 15 s for
  HTTP/HTTP2 and none for GRPC. A rule's timeout is its own ``requestTimeoutInMs``, else the largest
  of its destinations' port timeouts (none if any of them has none), so a listener's longer timeout
  is not cut short by the caller. A rule's idle timeout (HTTP) follows the same reasoning over its
  destinations' listener ``idleTimeoutInMs``: none when no destination sets one (the caller keeps its
  default), else the largest set value, where 0 (disabled) outlasts any other. TCP and TLS listeners'
  idle timeouts bound connections, not streams, and apply only on the receiving side.
* **mTLS.** A service's effective mode is ``max(its own mode or the mesh minimum, the mesh minimum)``
  (spec §5.1; a mesh without ``mtls`` has the minimum STRICT); its identity is the SPIFFE ID
  ``spiffe://<trust domain>/ns/<namespace>/virtualservice/<name>``, shared by all its deployments.
* **Access policies** (:mod:`policies`): each service carries who may call it, each mesh the external
  services its rules allow; nothing else is allowed (default deny).
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field, replace

from meshplane.controlplane import ir
from meshplane.controlplane.gateways import build_gateways
from meshplane.controlplane.identity import key_of, service_identity, trust_domain
from meshplane.controlplane.model import (
    AnyObject,
    Kind,
    Listener,
    MtlsMode,
    ObjectKey,
    RoutingPolicyType,
    ServiceDiscoveryType,
    VirtualDeploymentTarget,
    VirtualServiceRouteRule,
)
from meshplane.controlplane.policies import Access, resolve_access
from meshplane.controlplane.problems import Problem, error, warning
from meshplane.controlplane.world import World, resolve

Problems = dict[ObjectKey, list[Problem]]


@dataclass
class _Build:
    """What one build has found so far (objects by key) and the problems it reports."""

    world: World
    endpoints: Mapping[str, tuple[str, ...]]  # deployment key → its configured workloads' addresses
    starting: Mapping[str, tuple[str, ...]]  # deployment key → its not yet configured workloads' addresses
    meshes: dict[str, ir.Mesh] = field(default_factory=dict)
    services: dict[str, AnyObject] = field(default_factory=dict)
    deployments: dict[str, ir.Deployment] = field(default_factory=dict)
    problems: Problems = field(default_factory=dict)
    _tables: dict[ObjectKey, list[AnyObject]] | None = None  # service key → its route tables, found once per build
    _by_service: dict[str, list[ir.Deployment]] | None = None  # service key → its deployments, once all are added

    def deployments_of(self, service_key: str) -> list[ir.Deployment]:
        """The deployments of one service, in the order they were added (indexed once per build)."""
        if self._by_service is None:
            self._by_service = {}
            for deployment in self.deployments.values():
                self._by_service.setdefault(deployment.service, []).append(deployment)
        return self._by_service.get(service_key, [])

    def tables_of(self, service_key: ObjectKey) -> list[AnyObject]:
        """The route tables whose parent resolves to ``service_key`` (every table resolved once per build)."""
        if self._tables is None:
            self._tables = {}
            for table in self.world.objects(Kind.VIRTUAL_SERVICE_ROUTE_TABLE):
                parent = resolve(self.world, table.spec.virtual_service, Kind.VIRTUAL_SERVICE, table.namespace)
                if parent is not None:
                    self._tables.setdefault(parent.key, []).append(table)
        return self._tables.get(service_key, [])

    def report(self, obj: AnyObject, problem: Problem) -> None:
        self.problems.setdefault(obj.key, []).append(problem)


@dataclass
class BuildMemo:
    """What a build may reuse from the previous one: the resolved access policies (the costliest part at
    1,000 services), while the objects they are made of — meshes, virtual services, ingress gateways and
    access policies, by key, metadata and spec — are the same. A status write keeps an object's spec and
    metadata objects, so comparing them is mostly identity checks; a route-table edit or workloads coming
    and going keep the resolution."""

    access: Access | None = None
    inputs: tuple[tuple[object, ...], ...] = ()
    services: dict[str, tuple[object, ir.Service, Problems]] = field(default_factory=dict)  # key → inputs, result
    deployments: dict[str, ir.Deployment] = field(default_factory=dict)  # key → the last build's
    made: dict[str, tuple[object, ...]] = field(default_factory=dict)  # deployment key → what it was made from

    def keep_deployments(self, found: dict[str, ir.Deployment]) -> None:
        """Put back the last build's object for each deployment equal to it, so what compares deployments
        (the service memo, the reconcile views) finds them unchanged by identity."""
        for key, deployment in found.items():
            old = self.deployments.get(key)
            if old is not None and old is not deployment and old == deployment:
                found[key] = old
        self.deployments = dict(found)

    def reuse(self, inputs: tuple[tuple[object, ...], ...], resolve: Callable[[], Access]) -> Access:
        """The held resolution if it was made from ``inputs``, else a new one (then held)."""
        if self.access is None or self.inputs != inputs:
            self.access, self.inputs = resolve(), inputs
        return self.access


_ACCESS_KINDS = (Kind.MESH, Kind.VIRTUAL_SERVICE, Kind.INGRESS_GATEWAY, Kind.ACCESS_POLICY)


def _access_inputs(world: World) -> tuple[tuple[object, ...], ...]:
    return tuple((o.key, o.metadata, o.spec) for kind in _ACCESS_KINDS for o in world.objects(kind))


def build(world: World, workloads: Iterable[ir.Workload] = (), memo: BuildMemo | None = None, *,
          starting: Container[str] = frozenset()) -> tuple[ir.MeshConfig, Problems]:
    """The IR of every served object, and the problems found (keyed by object).

    ``starting`` holds the node ids of workloads whose proxies have not accepted their configuration yet:
    they are callers but not endpoints (``ir.Deployment.starting``). A gateway's workloads are callers only.
    """
    workloads = list(workloads)
    ctx = _Build(world, _endpoints(w for w in workloads if w.node_id not in starting),
                 _endpoints(w for w in workloads if w.node_id in starting))
    for mesh in world.objects(Kind.MESH):
        ctx.meshes[key_of(mesh)] = ir.Mesh(key_of(mesh), trust_domain(mesh), _mesh_minimum(mesh))
    for vs in world.objects(Kind.VIRTUAL_SERVICE):
        parent = resolve(world, vs.spec.mesh, Kind.MESH, vs.namespace)
        if parent is not None and key_of(parent) in ctx.meshes:
            ctx.services[key_of(vs)] = vs
    made: dict[str, tuple[object, ...]] = {}
    for vd in world.objects(Kind.VIRTUAL_DEPLOYMENT):
        _add_deployment(ctx, vd, memo, made)
    if memo is not None:
        memo.keep_deployments(ctx.deployments)
        memo.made = made
    access = _access(ctx) if memo is None else memo.reuse(_access_inputs(world), lambda: _access(ctx))
    for obj_key, found in access.problems.items():
        ctx.problems.setdefault(obj_key, []).extend(found)
    services = _services(ctx, access, memo)
    meshes = tuple(replace(m, egress=tuple(access.egress.get(m.key, ()))) for m in ctx.meshes.values())
    gateways, problems = build_gateways(world, ctx.meshes, {s.key: s for s in services}, _gateway_endpoints(workloads))
    for obj_key, found in problems.items():
        ctx.problems.setdefault(obj_key, []).extend(found)
    config = ir.MeshConfig(meshes, services, tuple(ctx.deployments.values()), gateways)
    return config, ctx.problems


def _gateway_endpoints(workloads: Iterable[ir.Workload]) -> dict[str, tuple[str, ...]]:
    found: dict[str, set[str]] = {}
    for workload in workloads:
        if workload.gateway is not None:
            found.setdefault(workload.gateway, set()).add(workload.address)
    return {key: tuple(sorted(addresses)) for key, addresses in found.items()}


def _access(ctx: _Build) -> Access:
    """What the access policies allow (see :mod:`policies`); the caller reports their problems."""
    identities = {}
    for key, vs in ctx.services.items():
        mesh = ctx.meshes[_mesh_key(ctx, vs)]
        identities[key] = (mesh.key, service_identity(mesh.trust_domain, vs))
    return resolve_access(ctx.world, ctx.meshes, identities)


def _endpoints(workloads: Iterable[ir.Workload]) -> dict[str, tuple[str, ...]]:
    found: dict[str, set[str]] = {}
    for workload in workloads:
        if workload.gateway is None:
            found.setdefault(workload.deployment, set()).add(workload.address)
    return {key: tuple(sorted(addresses)) for key, addresses in found.items()}


def _mesh_minimum(mesh: AnyObject) -> ir.Mtls:
    return ir.Mtls(mesh.spec.mtls.minimum.value if mesh.spec.mtls else MtlsMode.STRICT.value)


# ------------------------------------------------------------------------------------ deployments


def _add_deployment(ctx: _Build, vd: AnyObject, memo: BuildMemo | None, made: dict[str, tuple[object, ...]]) -> None:
    """Add the deployment's IR; with a memo, the last build's very object when it was made from the same spec
    object (a status write keeps it), parent and workloads: 2,000 deployments took 40 ms of every round."""
    parent = resolve(ctx.world, vd.spec.virtual_service, Kind.VIRTUAL_SERVICE, vd.namespace)
    if parent is None or key_of(parent) not in ctx.services:
        return
    key = key_of(vd)
    inputs = made[key] = (vd.spec, key_of(parent), ctx.endpoints.get(key, ()), ctx.starting.get(key, ()))
    if memo is not None and key in memo.deployments:
        last = memo.made.get(key)
        if last is not None and last[0] is inputs[0] and last[1:] == inputs[1:]:
            ctx.deployments[key] = memo.deployments[key]
            return
    discovery = vd.spec.service_discovery
    hostname = discovery.hostname if discovery and discovery.type is ServiceDiscoveryType.DNS else None
    logging = bool(vd.spec.access_logging and vd.spec.access_logging.is_enabled)
    ports = tuple(sorted((_port(listener) for listener in vd.spec.listeners), key=lambda p: p.number))
    ctx.deployments[key] = ir.Deployment(key, key_of(parent), hostname, ports, ctx.endpoints.get(key, ()), logging,
                                         ctx.starting.get(key, ()))


def _port(listener: Listener) -> ir.Port:
    protocol = ir.Protocol(listener.protocol.value)
    timeout = listener.request_timeout_in_ms
    if timeout is None:
        timeout = 0 if protocol is ir.Protocol.GRPC else ir.DEFAULT_REQUEST_TIMEOUT_MS
    if not protocol.is_http:
        timeout = 0
    return ir.Port(listener.port, protocol, timeout, listener.idle_timeout_in_ms)


# --------------------------------------------------------------------------------------- services


def _services(ctx: _Build, access: Access, memo: BuildMemo | None) -> tuple[ir.Service, ...]:
    """Every served virtual service; with a memo, the very object of the last build for each service whose
    inputs (:func:`_service_inputs`) are unchanged, and its problems reported again.

    A route change at 1,000 services rebuilt every service's routes, and the reconcile views then compared
    every new service with the old one field by field; now both are an identity check but for the changed one.
    """
    if memo is None:
        return tuple(_service(ctx, vs, access.callers_of(key)) for key, vs in ctx.services.items())
    found: list[ir.Service] = []
    kept: dict[str, tuple[object, ir.Service, Problems]] = {}
    for key, vs in ctx.services.items():
        inputs = _service_inputs(ctx, vs, access.callers_of(key))
        held = memo.services.get(key)
        if held is None or held[0] != inputs:
            problems, ctx.problems = ctx.problems, {}
            try:
                held = (inputs, _service(ctx, vs, access.callers_of(key)), ctx.problems)
            finally:
                ctx.problems = problems
        for obj_key, reported in held[2].items():
            ctx.problems.setdefault(obj_key, []).extend(reported)
        kept[key] = held
        found.append(held[1])
    memo.services = kept
    return tuple(found)


def _service_inputs(ctx: _Build, vs: AnyObject, callers: ir.Callers) -> object:
    """Everything :func:`_service` reads, compared by value (objects of unchanged files by identity first):
    the service, its mesh, who may call it, its deployments, its route tables and the deployments they name."""
    tables = _tables(ctx, vs)
    named = tuple(ctx.deployments.get(key_of(vd)) if vd is not None else None
                  for table in tables for rule in table.spec.route_rules
                  for body in (rule.http_route or rule.tcp_route or rule.tls_passthrough_route,) if body is not None
                  for destination in body.destinations
                  for vd in (resolve(ctx.world, destination.virtual_deployment, Kind.VIRTUAL_DEPLOYMENT,
                                     table.namespace),))
    return (vs.metadata, vs.spec, ctx.meshes[_mesh_key(ctx, vs)], callers, tuple(ctx.deployments_of(key_of(vs))),
            tuple((t.key, t.metadata, t.spec) for t in tables), named)


def _service(ctx: _Build, vs: AnyObject, callers: ir.Callers) -> ir.Service:
    key = key_of(vs)
    deployments = ctx.deployments_of(key)
    mesh = ctx.meshes[_mesh_key(ctx, vs)]
    requested = vs.spec.mtls.mode.value if vs.spec.mtls else mesh.mtls_minimum.value
    mtls = max(ir.Mtls(requested), mesh.mtls_minimum, key=_MTLS_ORDER.index)
    tables = _tables(ctx, vs)
    ports = tuple(_service_port(ctx, vs, number, protocol, deployments=deployments, tables=tables)
                  for number, protocol in _service_ports(ctx, vs, deployments))
    identity = service_identity(mesh.trust_domain, vs)
    return ir.Service(key, mesh.key, identity, tuple(sorted(vs.spec.hosts)), mtls, ports, callers)


_MTLS_ORDER = [ir.Mtls.DISABLED, ir.Mtls.PERMISSIVE, ir.Mtls.STRICT]


def _mesh_key(ctx: _Build, vs: AnyObject) -> str:
    mesh = resolve(ctx.world, vs.spec.mesh, Kind.MESH, vs.namespace)
    assert mesh is not None  # only services whose mesh resolved were kept
    return key_of(mesh)


def _service_ports(ctx: _Build, vs: AnyObject, deployments: list[ir.Deployment]) -> list[tuple[int, ir.Protocol]]:
    """Each port any deployment listens on, with one protocol; a conflicting deployment is reported."""
    chosen: dict[int, tuple[ir.Protocol, str]] = {}
    for deployment in deployments:
        for port in deployment.ports:
            first = chosen.setdefault(port.number, (port.protocol, deployment.key))
            if first[0] is not port.protocol:
                message = (f"port {port.number} is {first[0]} in {first[1]} but {port.protocol} in "
                           f"{deployment.key}; every deployment of a service must use one protocol per port")
                ctx.report(vs, error("spec", message))
    return sorted((number, protocol) for number, (protocol, _) in chosen.items())


def _tables(ctx: _Build, vs: AnyObject) -> list[AnyObject]:
    """The service's route tables in evaluation order: priority (lower first, none last), then key."""
    return sorted(ctx.tables_of(vs.key),
                  key=lambda t: (t.spec.priority is None, t.spec.priority or 0, t.namespace, t.name))


def _service_port(ctx: _Build, vs: AnyObject, number: int, protocol: ir.Protocol, *,
                  deployments: list[ir.Deployment], tables: list[AnyObject]) -> ir.ServicePort:
    serving = [d for d in deployments if d.port(number) is not None]
    if not tables:
        return ir.ServicePort(number, protocol, (_default_route(vs, number, serving),))
    routes = [route for table in tables for i, rule in enumerate(table.spec.route_rules)
              if (route := _rule_route(ctx, table, i, rule, number=number, protocol=protocol)) is not None]
    return ir.ServicePort(number, protocol, tuple(routes))


def _default_route(vs: AnyObject, number: int, serving: list[ir.Deployment]) -> ir.Route:
    policy = vs.spec.default_routing_policy
    origin = f"VirtualService {key_of(vs)} defaultRoutingPolicy"
    if policy is not None and policy.type is RoutingPolicyType.DENY:
        return ir.Route(origin + " DENY", status=403)
    deployments = {d.key: d for d in serving}
    backends, standby = _alive([ir.Backend(d.key, number, 1) for d in serving], deployments)
    return ir.Route(origin + " UNIFORM", timeout_ms=_timeout(None, backends, deployments),
                    idle_timeout_ms=_idle_timeout(backends, deployments), backends=backends,
                    status=None if backends else 503, standby=standby)


# ------------------------------------------------------------------------------------------- rules


def _rule_route(ctx: _Build, table: AnyObject, index: int, rule: VirtualServiceRouteRule, *, number: int,
                protocol: ir.Protocol) -> ir.Route | None:
    """The route a rule contributes to one port, or None when the rule is not for that port."""
    body = rule.http_route or rule.tcp_route or rule.tls_passthrough_route
    if body is None or not _rule_fits(rule, protocol):
        return None
    destinations: tuple[VirtualDeploymentTarget, ...] = body.destinations
    if any(d.port is not None and d.port != number for d in destinations):
        return None
    origin = f"VirtualServiceRouteTable {key_of(table)} rule {index}"
    backends, standby = _backends(ctx, table, index, destinations, number)
    http = rule.http_route
    prefix = (http.path or "/") if http else "/"
    timeout = _timeout(http.request_timeout_in_ms if http else None, backends, ctx.deployments)
    if http and http.is_grpc and http.request_timeout_in_ms is None:
        timeout = 0
    return ir.Route(origin, prefix, bool(http and http.is_grpc), timeout,
                    idle_timeout_ms=_idle_timeout(backends, ctx.deployments), backends=backends,
                    status=None if backends else 503, standby=standby)


def _rule_fits(rule: VirtualServiceRouteRule, protocol: ir.Protocol) -> bool:
    if rule.http_route is not None:
        return protocol.is_http
    if rule.tcp_route is not None:
        return protocol is ir.Protocol.TCP
    return protocol is ir.Protocol.TLS_PASSTHROUGH


def _backends(ctx: _Build, table: AnyObject, index: int, destinations: tuple[VirtualDeploymentTarget, ...],
              number: int) -> tuple[tuple[ir.Backend, ...], tuple[ir.Backend, ...]]:
    found: list[ir.Backend] = []
    for j, destination in enumerate(destinations):
        path = f"spec.routeRules[{index}].destinations[{j}]"
        vd = resolve(ctx.world, destination.virtual_deployment, Kind.VIRTUAL_DEPLOYMENT, table.namespace)
        deployment = ctx.deployments.get(key_of(vd)) if vd is not None else None
        if deployment is None:
            ctx.report(table, warning(path, "the virtual deployment is not served (yet); it gets no traffic"))
        elif deployment.port(number) is None:
            message = f"{deployment.key} does not listen on port {number}; it gets no traffic there"
            ctx.report(table, warning(path, message))
        elif destination.weight > 0:
            found.append(ir.Backend(deployment.key, number, destination.weight))
    if not any(d.weight for d in destinations):
        ctx.report(table, error(f"spec.routeRules[{index}]", "every destination has weight 0: the rule answers 503 "
                                "(give at least one destination a positive weight)"))
    return _alive(found, ctx.deployments)


def _alive(backends: list[ir.Backend], deployments: Mapping[str, ir.Deployment]
           ) -> tuple[tuple[ir.Backend, ...], tuple[ir.Backend, ...]]:
    """The backends to use and those on standby (``ir.Route.standby``): backends without endpoints drop
    out while another backend has some; all are used if none has any."""
    live = tuple(b for b in backends if deployments[b.deployment].endpoints)
    if not live:
        return tuple(backends), ()
    return live, tuple(b for b in backends if not deployments[b.deployment].endpoints)


def _timeout(rule_timeout: int | None, backends: Iterable[ir.Backend],
             deployments: Mapping[str, ir.Deployment]) -> int:
    if rule_timeout is not None:
        return rule_timeout
    timeouts = [p.request_timeout_ms for b in backends if (p := deployments[b.deployment].port(b.port)) is not None]
    if not timeouts:
        return ir.DEFAULT_REQUEST_TIMEOUT_MS
    return 0 if 0 in timeouts else max(timeouts)


def _idle_timeout(backends: Iterable[ir.Backend], deployments: Mapping[str, ir.Deployment]) -> int | None:
    """The idle timeout a caller gives a stream to these backends, so it never cuts one short.

    Only HTTP ports count (a TCP port's idle timeout bounds connections, on the receiving side). None
    when no backend's port sets one; 0 (disabled) when any does, since no bound outlasts it; else the
    largest, so the most patient destination decides.
    """
    found = [p.idle_timeout_ms for b in backends if (p := deployments[b.deployment].port(b.port)) is not None
             and p.protocol.is_http and p.idle_timeout_ms is not None]
    if not found:
        return None
    return 0 if 0 in found else max(found)
