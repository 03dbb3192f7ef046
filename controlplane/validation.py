"""Admission rules of the nine mesh kinds: what may be created, changed and deleted.

Contract: ``validate(old, new, world) -> list[Problem]``. ``old`` None is a CREATE, ``new`` None a
DELETE, both set an UPDATE. The function is pure: it reads the two objects and the :class:`World` and
nothing else, so the admission webhook, ``meshplane validate`` and the reconcile loop all give the same
answers. Errors refuse the request; warnings are advice. Every problem names the wire (camelCase) path
of the most specific field at fault, e.g. ``spec.routeRules[1].httpRoute.destinations[0].port``.

Order (spec §4.1 and §3):

1. an UPDATE that leaves ``metadata.generation`` unchanged touched only status or metadata: allowed;
2. lifecycle gates on the OLD object's conditions (UPDATE and DELETE): refuse while its state is in flux;
3. the kind's rules: ``metadata.name`` length (create), immutable fields (update), ref-or-id shape,
   references to other objects, then the kind's own cross-field rules.

References: creation order is free, so a reference by name to an object the world does not hold is a
warning, never an error. An ``id`` is something the control plane handed out, so one that names nothing
is an error in an authoritative world and a warning in a partial one. A referenced object that is being
deleted is an error: the new reference would only hold up that deletion.

Deviations from OSOK v1.1.9, on purpose:

* ``ServiceMeshActive=False`` does not refuse an update: in meshplane it means a proxy rejected the
  configuration, and the fix is an edit (OSOK refuses every update unless Active is True).
* A change of the mesh mTLS minimum is checked against the virtual services of the mesh in every
  namespace (OSOK: the mesh's namespace only); emptying a virtual service's hosts is checked against
  that service's own deployments (OSOK: every deployment in the cluster).
* Missing status falls back to spec (OSOK dereferences the status and crashes); a mesh without
  ``mtls`` has the minimum STRICT, OCI's default, also when an update removes ``spec.mtls``.
* Immutable references compare where they point, not how they are spelt: adding the referrer's own
  namespace, or switching between ``ref`` and ``id`` of the same object, is not a change.
* An immutable parent is looked up at creation only (as OSOK does): refusing an edit because the
  parent is going away would block the clean-up that lets it go.
* A referenced ingress gateway that is being deleted is refused like a virtual service (OSOK checks
  only virtual services in access policies); a target found by ``id`` that is being deleted is refused
  like one found by ``ref``.
* Rules OSOK does not have: host and hostname syntax (no port, ``*.`` prefix, ``*`` for external
  services), CIDR syntax, unique listener ports in a deployment, unique host names and one protocol
  per port in a gateway, route-table destinations that belong to the table's virtual service, and
  warnings for destination ports and gateway hosts or ports that do not exist.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from meshplane.controlplane import hostnames, wire
from meshplane.controlplane.ir import SIDECAR_PORTS
from meshplane.controlplane.model import (
    AccessPolicy,
    AnyObject,
    ConditionStatus,
    ConditionType,
    ExternalService,
    IgHttpRoute,
    IgTcpRoute,
    IgTlsPassthroughRoute,
    IngressGateway,
    IngressGatewayDeployment,
    IngressGatewayDeploymentSpec,
    IngressGatewayHost,
    IngressGatewayHostRef,
    IngressGatewayRouteRule,
    IngressGatewayRouteTable,
    IngressListenerTls,
    IngressProtocol,
    IngressTlsMode,
    Kind,
    Mesh,
    MtlsMode,
    ObjectKey,
    RefOrId,
    SecretRef,
    ServiceDiscoveryType,
    TrafficTarget,
    VirtualDeployment,
    VirtualDeploymentBinding,
    VirtualDeploymentSpec,
    VirtualDeploymentTarget,
    VirtualService,
    VirtualServiceRouteRule,
    VirtualServiceRouteTable,
    VsHttpRoute,
    VsTcpRoute,
    VsTlsPassthroughRoute,
)
from meshplane.controlplane.problems import Problem, error, warning
from meshplane.controlplane.world import World, describe_target, id_of, ref_key, resolve

MAX_NAME_LENGTH = 190  # OSOK's limit: the default OCI name "<namespace>/<name>" must fit in 255 characters
MIN_GATEWAY_PORT = 1024  # gateway proxies run unprivileged and cannot bind lower ports

T = TypeVar("T")
VsRoute = VsHttpRoute | VsTcpRoute | VsTlsPassthroughRoute
IgRoute = IgHttpRoute | IgTcpRoute | IgTlsPassthroughRoute
Validator = Callable[[Any, Any, World], list[Problem]]

DEPENDENCIES, CONFIGURED, ACTIVE = ConditionType.DEPENDENCIES_ACTIVE, ConditionType.CONFIGURED, ConditionType.ACTIVE
TRUE, UNKNOWN = ConditionStatus.TRUE, ConditionStatus.UNKNOWN


def validate(old: AnyObject | None, new: AnyObject | None, world: World) -> list[Problem]:
    """Everything wrong with a CREATE (old None), UPDATE (both) or DELETE (new None)."""
    if new is None:
        return [] if old is None else _delete_gate(old)
    if old is not None:
        if old.kind is not new.kind:
            return [error("kind", f"cannot change the kind of an object (it was {old.kind.value})")]
        if 0 < old.metadata.generation == new.metadata.generation:
            return []  # status or metadata only: nothing the rules below look at has changed
        gate = _update_gate(old)
        if gate:
            return gate
    return _VALIDATORS[new.kind](old, new, world)


# ------------------------------------------------------------------------------ lifecycle gates


def _update_gate(old: AnyObject) -> list[Problem]:
    """Refuse spec edits while the old object's state is in flux (spec §4.1).

    Applying a change on top of one whose outcome is not known yet would leave nobody able to say which
    spec the data plane runs. DELIBERATE DEVIATION from OSOK: ``ServiceMeshActive=False`` does not
    refuse; in meshplane it means a proxy rejected the configuration, and the way out is an edit.
    """
    conditions = _conditions(old)
    if _status(conditions, DEPENDENCIES) is UNKNOWN:
        return [_refusal(conditions, DEPENDENCIES, "cannot change the spec while a referenced object is not "
                         "ready yet; retry once ServiceMeshDependenciesActive is True or False")]
    if _status(conditions, CONFIGURED) is UNKNOWN:
        return [_refusal(conditions, CONFIGURED, "cannot change the spec while the outcome of the previous "
                         "change is unknown; retry once ServiceMeshConfigured is True or False")]
    if _status(conditions, CONFIGURED) is TRUE and _status(conditions, ACTIVE) is UNKNOWN:
        return [_refusal(conditions, ACTIVE, "cannot change the spec while the previous change is still "
                         "being applied; retry once ServiceMeshActive is True or False")]
    return []


def _delete_gate(old: AnyObject) -> list[Problem]:
    """Refuse a delete only while a configured object's change is being applied (spec §4.1).

    Dependents do not block here; they hold the deletion through finalizers instead.
    """
    conditions = _conditions(old)
    settled = (_status(conditions, DEPENDENCIES), _status(conditions, CONFIGURED)) == (TRUE, TRUE)
    if settled and _status(conditions, ACTIVE) is UNKNOWN:
        return [_refusal(conditions, ACTIVE, "cannot delete while a change is still being applied; "
                         "retry once ServiceMeshActive is True or False")]
    return []


def _conditions(obj: AnyObject) -> dict[ConditionType, tuple[int, ConditionStatus]]:
    return {c.type: (i, c.status) for i, c in enumerate(obj.status.conditions)}


def _status(conditions: Mapping[ConditionType, tuple[int, ConditionStatus]],
            kind: ConditionType) -> ConditionStatus | None:
    return conditions[kind][1] if kind in conditions else None


def _refusal(conditions: Mapping[ConditionType, tuple[int, ConditionStatus]], kind: ConditionType,
             message: str) -> Problem:
    return error(f"status.conditions[{conditions[kind][0]}]", message)


# --------------------------------------------------------------------------- shared rule pieces


def _name_rules(old: AnyObject | None, new: AnyObject) -> list[Problem]:
    """``metadata.name`` length on create; ``spec.name`` fixed on update (it is the OCI-side name)."""
    if old is None:
        if len(new.name) <= MAX_NAME_LENGTH:
            return []
        return [error("metadata.name", f"is {len(new.name)} characters long; at most {MAX_NAME_LENGTH} are "
                                       "allowed so that the derived name '<namespace>/<name>' stays valid")]
    before, after = getattr(old.spec, "name", None), getattr(new.spec, "name", None)
    if before == after:
        return []
    was, now = (repr(name) if name is not None else "unset" for name in (before, after))
    return [error("spec.name", f"cannot be added, removed or changed after creation (was {was}, now {now}); "
                               "create a new object to use another name")]


def _parent(old: AnyObject | None, new: AnyObject, field: str, kind: Kind, world: World) -> list[Problem]:
    """The rules of an immutable parent reference: one of ref/id, looked up on create, fixed on update."""
    path = f"spec.{wire.camel(field)}"
    target: RefOrId = getattr(new.spec, field)
    shape = _ref_or_id_shape(target, path)
    if shape:
        return shape
    if old is None:
        return _lookup(target, kind, path, new.namespace, world)[1]
    before: RefOrId = getattr(old.spec, field)
    if _same_target(before, target, kind, new.namespace, world):
        return []
    was, now = describe_target(before, kind, new.namespace), describe_target(target, kind, new.namespace)
    return [error(path, f"cannot change after creation (was {was}, now {now}); delete this object and "
                        "create it again under the other parent")]


def _referenced(target: RefOrId, kind: Kind, path: str, namespace: str, world: World) -> list[Problem]:
    """The rules of a reference that may change: one of ref/id, then looked up."""
    return _ref_or_id_shape(target, path) or _lookup(target, kind, path, namespace, world)[1]


def _ref_or_id_shape(target: RefOrId, path: str) -> list[Problem]:
    return _exactly_one(path, {"ref": target.ref, "id": target.id})


def _lookup(target: RefOrId, kind: Kind, path: str, namespace: str,
            world: World) -> tuple[AnyObject | None, list[Problem]]:
    """Find what a well-formed ref-or-id names, and say what is wrong with it.

    A name not known yet is only a warning (creation order is free); an unknown id is an error when
    the world holds every object, because then it can only be a mistake.
    """
    found = resolve(world, target, kind, namespace)
    where = f"{path}.ref" if target.ref is not None else f"{path}.id"
    if found is None and target.ref is not None:
        return None, [warning(where, f"{describe_target(target, kind, namespace)} does not exist (yet); this "
                                     "object will not become active until it does")]
    if found is None:
        if world.authoritative:
            return None, [error(where, f"no {kind.value} has the id {target.id}; check the id, or refer to "
                                       "the object by ref (name and namespace) instead")]
        return None, [warning(where, f"no {kind.value} among the objects given has the id {target.id}")]
    if found.deleting:
        return found, [error(where, f"{found.key} is being deleted, and a new reference would only hold up "
                                    f"its deletion; refer to another {kind.value}")]
    return found, []


def _same_target(before: RefOrId, after: RefOrId, kind: Kind, namespace: str, world: World) -> bool:
    def spelling(t: RefOrId) -> tuple[ObjectKey | None, str | None]:
        return (None if t.ref is None else ref_key(t.ref, kind, namespace)), t.id

    if spelling(before) == spelling(after):
        return True
    was, now = resolve(world, before, kind, namespace), resolve(world, after, kind, namespace)
    return was is not None and now is not None and was.key == now.key


def _refers_to(target: RefOrId, kind: Kind, namespace: str, *candidates: AnyObject) -> bool:
    """Whether a ref-or-id (of an object in ``namespace``) names one of ``candidates``."""
    if target.ref is not None:
        return ref_key(target.ref, kind, namespace) in {c.key for c in candidates}
    return target.id is not None and target.id in {id_of(c) for c in candidates}


def _key_of(target: RefOrId, kind: Kind, namespace: str, world: World) -> ObjectKey | None:
    """Where a ref-or-id points, when that can be told (a ref always; an id only if the world knows it)."""
    if target.ref is not None:
        return ref_key(target.ref, kind, namespace)
    found = resolve(world, target, kind, namespace)
    return None if found is None else found.key


def _exactly_one(path: str, options: Mapping[str, object]) -> list[Problem]:
    """One-of choices the CRD schema cannot express (every option is optional there): exactly one is set."""
    chosen = [name for name, value in options.items() if value is not None]
    if len(chosen) == 1:
        return []
    alternatives = _words(list(options), "or")
    if not chosen:
        return [error(path, f"set one of {alternatives}; none is set")]
    both = f"both {chosen[0]} and {chosen[1]} are" if len(chosen) == 2 else f"{_words(chosen, 'and')} are all"
    return [error(path, f"set only one of {alternatives}; {both} set")]


def _pick(path: str, options: Mapping[str, T | None]) -> tuple[tuple[str, T] | None, list[Problem]]:
    """The one option that is set, with its path; or the problem with the choice."""
    problems = _exactly_one(path, options)
    if problems:
        return None, problems
    name, value = next((n, v) for n, v in options.items() if v is not None)
    return (f"{path}.{name}", value), []


def _words(items: Sequence[str], last: str) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {last} {items[-1]}"


def _hostnames(names: Sequence[str], path: str, *, allow_any: bool = False) -> list[Problem]:
    return [error(f"{path}[{i}]", f"{name!r} {why}") for i, name in enumerate(names)
            if (why := hostnames.hostname_problem(name, allow_any=allow_any)) is not None]


def _repeats(values: Sequence[T]) -> list[tuple[int, T, int]]:
    """Each later occurrence of a value as (index, value, index of its first occurrence)."""
    first: dict[T, int] = {}
    return [(i, v, first[v]) for i, v in enumerate(values) if first.setdefault(v, i) != i]


# -------------------------------------------------------------------------------------------- Mesh


def validate_mesh(old: Mesh | None, new: Mesh, world: World) -> list[Problem]:
    """A Mesh: its CA is fixed (issued certificates chain to it) and its mTLS floor binds its services."""
    problems = _name_rules(old, new)
    if old is None:
        return problems
    if old.spec.certificate_authorities != new.spec.certificate_authorities:
        problems.append(error("spec.certificateAuthorities", "cannot change after creation: every certificate "
                              "of the mesh chains to this authority; create a new mesh to use another one"))
    return problems + _mesh_floor_change(old, new, world)


def _mesh_minimum(mesh: Mesh) -> MtlsMode:
    """The mTLS floor in force: the applied one (status), else the requested one, else STRICT (OCI's default)."""
    if mesh.status.mesh_mtls is not None:
        return mesh.status.mesh_mtls.minimum
    return mesh.spec.mtls.minimum if mesh.spec.mtls is not None else MtlsMode.STRICT


def _mesh_floor_change(old: Mesh, new: Mesh, world: World) -> list[Problem]:
    """A new minimum must not leave any virtual service of the mesh, in any namespace, below it (spec §5.1)."""
    before = _mesh_minimum(old)
    after = new.spec.mtls.minimum if new.spec.mtls is not None else MtlsMode.STRICT
    if after is before:
        return []
    below = []
    for vs in world.objects(Kind.VIRTUAL_SERVICE):
        mode = _service_mode(vs) or before  # a service without a mode took the minimum in force
        if not vs.deleting and _refers_to(vs.spec.mesh, Kind.MESH, vs.namespace, old, new) and mode.level < after.level:
            below.append(f"{vs.key} ({mode.value})")
    if not below:
        return []
    path = "spec.mtls.minimum" if new.spec.mtls is not None else "spec.mtls"
    return [error(path, f"cannot set the mTLS minimum to {after.value} while these virtual services use "
                        f"less: {', '.join(below)}; raise their spec.mtls.mode first")]


# ---------------------------------------------------------------------------------- VirtualService


def validate_virtual_service(old: VirtualService | None, new: VirtualService, world: World) -> list[Problem]:
    """A VirtualService: a fixed mesh, hosts callers can match, and an mTLS mode at or above the mesh floor."""
    problems = _name_rules(old, new) + _parent(old, new, "mesh", Kind.MESH, world)
    problems += _hostnames(new.spec.hosts, "spec.hosts")
    problems += _service_floor(old, new, world)
    if old is not None:
        problems += _hosts_kept(old, new, world)
    return problems


def _service_mode(vs: VirtualService) -> MtlsMode | None:
    """The mode in force: the applied one (status), else the requested one."""
    if vs.status.virtual_service_mtls is not None:
        return vs.status.virtual_service_mtls.mode
    return vs.spec.mtls.mode if vs.spec.mtls is not None else None


def _service_floor(old: VirtualService | None, new: VirtualService, world: World) -> list[Problem]:
    """A mode below the mesh minimum would accept plaintext the mesh promises to refuse (spec §5.1)."""
    if new.spec.mtls is None:
        return []  # no mode of its own: the service takes the mesh minimum
    mode = new.spec.mtls.mode
    if old is not None and mode is _service_mode(old):
        return []
    mesh = resolve(world, new.spec.mesh, Kind.MESH, new.namespace)
    if mesh is None:
        return []  # no known floor; the reference itself is reported on its own
    floor = _mesh_minimum(mesh)
    if mode.level >= floor.level:
        return []
    return [error("spec.mtls.mode", f"{mode.value} is below the mTLS minimum {floor.value} of {mesh.key}; use at "
                                    f"least {floor.value}, or lower the mesh minimum first")]


def _hosts_kept(old: VirtualService, new: VirtualService, world: World) -> list[Problem]:
    """Deployments with a hostname and listeners are reached through the service's hosts (spec §3.2)."""
    if not old.spec.hosts or new.spec.hosts:
        return []
    serving = [str(vd.key) for vd in world.objects(Kind.VIRTUAL_DEPLOYMENT) if not vd.deleting
               and _is_serving(vd.spec) and _refers_to(vd.spec.virtual_service, Kind.VIRTUAL_SERVICE,
                                                       vd.namespace, old, new)]
    if not serving:
        return []
    return [error("spec.hosts", f"cannot remove every host while {', '.join(serving)} serve this virtual "
                                "service with a hostname and listeners; keep at least one host, or remove "
                                "those deployments' listeners first")]


# ------------------------------------------------------------------------------- VirtualDeployment


def validate_virtual_deployment(old: VirtualDeployment | None, new: VirtualDeployment,
                                world: World) -> list[Problem]:
    """A VirtualDeployment: either serving (DNS hostname and listeners) or egress-only (neither)."""
    problems = _name_rules(old, new) + _parent(old, new, "virtual_service", Kind.VIRTUAL_SERVICE, world)
    problems += [error(f"spec.listener[{i}].port", f"port {port} is already used by listener[{first}]; "
                                                   "each listener needs its own port")
                 for i, port, first in _repeats([listener.port for listener in new.spec.listeners])]
    problems += [error(f"spec.listener[{i}].port", f"port {listener.port} is kept by the sidecar (ports "
                                                   f"{', '.join(map(str, sorted(SIDECAR_PORTS)))}); use another port")
                 for i, listener in enumerate(new.spec.listeners) if listener.port in SIDECAR_PORTS]
    return problems + _discovery(new, world)


def _hostname(spec: VirtualDeploymentSpec) -> str | None:
    """The deployment's DNS hostname; a hostname under type DISABLED does not count."""
    discovery = spec.service_discovery
    if discovery is None or discovery.type is ServiceDiscoveryType.DISABLED:
        return None
    return discovery.hostname or None


def _is_serving(spec: VirtualDeploymentSpec) -> bool:
    return _hostname(spec) is not None and bool(spec.listeners)


def _discovery(new: VirtualDeployment, world: World) -> list[Problem]:
    """Hostname and listeners go together (spec §3.3): callers find the ports through the hostname."""
    spec, discovery = new.spec, new.spec.service_discovery
    if _is_serving(spec):
        return _service_has_hosts(new, world)
    if discovery is not None and discovery.type is ServiceDiscoveryType.DNS and not discovery.hostname:
        return [error("spec.serviceDiscovery.hostname", "is required when the type is DNS; give the name that "
                                                        "resolves to this deployment's pods, or use type DISABLED")]
    if discovery is not None and discovery.type is ServiceDiscoveryType.DISABLED and discovery.hostname:
        return [error("spec.serviceDiscovery.hostname", "must be empty when the type is DISABLED; remove it, "
                                                        "or use type DNS")]
    if spec.listeners:
        return [error("spec.serviceDiscovery", "listeners need a DNS hostname to be reached: set "
                                               "serviceDiscovery {type: DNS, hostname: ...}, or remove the "
                                               "listeners for an egress-only deployment")]
    if _hostname(spec) is not None:
        return [error("spec.listener", "a deployment with a hostname must declare the ports it serves; add "
                                       "listeners, or remove serviceDiscovery for an egress-only deployment")]
    return []


def _service_has_hosts(new: VirtualDeployment, world: World) -> list[Problem]:
    vs = resolve(world, new.spec.virtual_service, Kind.VIRTUAL_SERVICE, new.namespace)
    if vs is None or vs.spec.hosts:
        return []
    return [error("spec.virtualService", f"{vs.key} has no spec.hosts, and a deployment with a hostname and "
                                         "listeners is reached through them; add hosts to the virtual service "
                                         "first")]


# ------------------------------------------------------------------------ VirtualServiceRouteTable


def validate_virtual_service_route_table(old: VirtualServiceRouteTable | None, new: VirtualServiceRouteTable,
                                         world: World) -> list[Problem]:
    """A VirtualServiceRouteTable: rules of one kind each, splitting traffic between the service's deployments."""
    problems = _name_rules(old, new) + _parent(old, new, "virtual_service", Kind.VIRTUAL_SERVICE, world)
    service = _key_of(new.spec.virtual_service, Kind.VIRTUAL_SERVICE, new.namespace, world)
    for i, rule in enumerate(new.spec.route_rules):
        problems += _service_rule(rule, f"spec.routeRules[{i}]", service, new.namespace, world)
    return problems


def _service_rule(rule: VirtualServiceRouteRule, path: str, service: ObjectKey | None, namespace: str,
                  world: World) -> list[Problem]:
    options: dict[str, VsRoute | None] = {"httpRoute": rule.http_route, "tcpRoute": rule.tcp_route,
                                          "tlsPassthroughRoute": rule.tls_passthrough_route}
    picked: tuple[str, VsRoute] | None
    picked, problems = _pick(path, options)
    if picked is None:
        return problems
    route_path, route = picked
    ports = [d.port for d in route.destinations]
    problems += [error(f"{route_path}.destinations[{j}].port", f"is {_port(port)} but destinations[0] targets "
                                                               f"{_port(ports[0])}; all destinations of a rule "
                                                               "must target the same port, or all leave it out")
                 for j, port in enumerate(ports) if port != ports[0]]
    for j, destination in enumerate(route.destinations):
        problems += _deployment_target(destination, f"{route_path}.destinations[{j}]", service, namespace, world)
    return problems


def _port(port: int | None) -> str:
    return "not set" if port is None else str(port)


def _deployment_target(destination: VirtualDeploymentTarget, path: str, service: ObjectKey | None,
                       namespace: str, world: World) -> list[Problem]:
    """A destination names a live deployment of the table's own service, on one of its listener ports."""
    target_path = f"{path}.virtualDeployment"
    shape = _ref_or_id_shape(destination.virtual_deployment, target_path)
    if shape:
        return shape
    vd, problems = _lookup(destination.virtual_deployment, Kind.VIRTUAL_DEPLOYMENT, target_path, namespace, world)
    if vd is None:
        return problems
    owner = _key_of(vd.spec.virtual_service, Kind.VIRTUAL_SERVICE, vd.namespace, world)
    if service is not None and owner is not None and owner != service:
        problems.append(error(target_path, f"{vd.key} belongs to {owner}, not to {service} that this route "
                                           "table routes; a table can only send traffic to its own service's "
                                           "deployments"))
    listening = [str(listener.port) for listener in vd.spec.listeners] or ["no port"]
    if destination.port is not None and str(destination.port) not in listening:
        problems.append(warning(f"{path}.port", f"{vd.key} has no listener on port {destination.port} (it "
                                                f"listens on {_words(listening, 'and')}); traffic for this "
                                                "destination will find nothing to reach"))
    return problems


# ------------------------------------------------------------------------------------ AccessPolicy


def validate_access_policy(old: AccessPolicy | None, new: AccessPolicy, world: World) -> list[Problem]:
    """An AccessPolicy: each rule allows one kind of source to reach one kind of destination."""
    problems = _name_rules(old, new) + _parent(old, new, "mesh", Kind.MESH, world)
    for i, rule in enumerate(new.spec.rules):
        problems += _traffic_target(rule.source, f"spec.rules[{i}].source", new.namespace, world, source=True)
        problems += _traffic_target(rule.destination, f"spec.rules[{i}].destination", new.namespace, world,
                                    source=False)
    return problems


def _traffic_target(target: TrafficTarget, path: str, namespace: str, world: World, *,
                    source: bool) -> list[Problem]:
    """Exactly one kind of target; external services only receive traffic, gateways only send it."""
    options: dict[str, object] = {
        "allVirtualServices": target.all_virtual_services, "virtualService": target.virtual_service,
        "ingressGateway": target.ingress_gateway, "externalService": target.external_service,
    }
    problems = _exactly_one(path, options)
    if problems:
        return problems
    if source and target.external_service is not None:
        return [error(f"{path}.externalService", "cannot be a source: traffic from outside the mesh enters "
                                                 "through an ingress gateway, so name the gateway instead")]
    if not source and target.ingress_gateway is not None:
        return [error(f"{path}.ingressGateway", "cannot be a destination: a gateway only sends traffic into "
                                                "the mesh, so name the virtual service behind it instead")]
    if target.virtual_service is not None:
        return _referenced(target.virtual_service, Kind.VIRTUAL_SERVICE, f"{path}.virtualService", namespace, world)
    if target.ingress_gateway is not None:
        return _referenced(target.ingress_gateway, Kind.INGRESS_GATEWAY, f"{path}.ingressGateway", namespace, world)
    if target.external_service is not None:
        return _external_service(target.external_service, f"{path}.externalService")
    return []


def _external_service(service: ExternalService, path: str) -> list[Problem]:
    """One protocol per external service; host names Envoy can match, address ranges it can parse."""
    options: dict[str, object] = {"httpExternalService": service.http_external_service,
                                  "httpsExternalService": service.https_external_service,
                                  "tcpExternalService": service.tcp_external_service}
    problems = _exactly_one(path, options)
    if problems:
        return problems
    if service.http_external_service is not None:
        return _hostnames(service.http_external_service.hostnames, f"{path}.httpExternalService.hostnames",
                          allow_any=True)
    if service.https_external_service is not None:
        return _hostnames(service.https_external_service.hostnames, f"{path}.httpsExternalService.hostnames",
                          allow_any=True)
    addresses = service.tcp_external_service.ip_addresses if service.tcp_external_service is not None else ()
    return [error(f"{path}.tcpExternalService.ipAddresses[{k}]", f"{address!r} {why}")
            for k, address in enumerate(addresses) if (why := hostnames.cidr_problem(address)) is not None]


# ---------------------------------------------------------------------------------- IngressGateway


def validate_ingress_gateway(old: IngressGateway | None, new: IngressGateway, world: World) -> list[Problem]:
    """An IngressGateway: uniquely named hosts whose listeners the gateway proxy can actually open."""
    problems = _name_rules(old, new) + _parent(old, new, "mesh", Kind.MESH, world)
    problems += [error(f"spec.hosts[{i}].name", f"{name!r} is already the name of hosts[{first}]; route tables "
                                                "attach to hosts by name, so each must be unique")
                 for i, name, first in _repeats([host.name for host in new.spec.hosts])]
    problems += _one_protocol_per_port(new.spec.hosts)
    for i, host in enumerate(new.spec.hosts):
        problems += _gateway_host(host, f"spec.hosts[{i}]")
    return problems


def _one_protocol_per_port(hosts: Sequence[IngressGatewayHost]) -> list[Problem]:
    """The gateway opens one listener per port, so all hosts on a port must share its protocol."""
    first: dict[int, tuple[str, IngressProtocol]] = {}
    problems = []
    for i, host in enumerate(hosts):
        for j, listener in enumerate(host.listeners):
            where = f"hosts[{i}].listeners[{j}]"
            used_by, protocol = first.setdefault(listener.port, (where, listener.protocol))
            if protocol is not listener.protocol:
                problems.append(error(f"spec.{where}.port", f"port {listener.port} already carries {protocol.value} "
                                                            f"for {used_by}; a port has one protocol across all "
                                                            "hosts, so pick another port or the same protocol"))
    return problems


def _gateway_host(host: IngressGatewayHost, path: str) -> list[Problem]:
    """HTTP matches the Host header and TLS_PASSTHROUGH the SNI against the hostnames, so they need some."""
    problems = []
    matching = [lst.protocol.value for lst in host.listeners
                if lst.protocol in (IngressProtocol.HTTP, IngressProtocol.TLS_PASSTHROUGH)]
    if matching and not host.hostnames:
        problems.append(error(f"{path}.hostnames", f"are required because the host has an {matching[0]} listener, "
                                                   "which selects the host by the name clients ask for; add the "
                                                   "names (for example shop.example.com)"))
    problems += _hostnames(host.hostnames, f"{path}.hostnames")
    for j, listener in enumerate(host.listeners):
        if listener.port < MIN_GATEWAY_PORT:
            problems.append(error(f"{path}.listeners[{j}].port", f"is {listener.port}; gateway listeners must use "
                                                                 f"port {MIN_GATEWAY_PORT} or higher because the "
                                                                 "gateway proxy runs unprivileged; expose a low "
                                                                 "port through the deployment's serviceport"))
        if listener.tls is not None:
            problems += _listener_tls(listener.tls, f"{path}.listeners[{j}].tls")
    return problems


def _listener_tls(tls: IngressListenerTls, path: str) -> list[Problem]:
    """Terminating TLS needs a certificate; MUTUAL_TLS also needs the CAs that vouch for clients."""
    problems = []
    certificate = tls.server_certificate
    if certificate is not None:
        problems += _exactly_one(f"{path}.serverCertificate", {
            "ociTlsCertificate": certificate.oci_tls_certificate,
            "kubeSecretTlsCertificate": certificate.kube_secret_tls_certificate})
    elif tls.mode is not IngressTlsMode.DISABLED:
        problems.append(error(f"{path}.serverCertificate", f"is required in mode {tls.mode.value}, in which the "
                                                           "gateway terminates TLS; name a kubeSecretTlsCertificate "
                                                           "or an ociTlsCertificate"))
    validation = tls.client_validation
    mutual = tls.mode is IngressTlsMode.MUTUAL_TLS
    if validation is None:
        return problems + ([error(f"{path}.clientValidation", "is required in mode MUTUAL_TLS: set "
                                                              "trustedCaBundle to the CAs that sign client "
                                                              "certificates")] if mutual else [])
    bundle = validation.trusted_ca_bundle
    if bundle is None:
        return problems + ([error(f"{path}.clientValidation.trustedCaBundle", "is required in mode MUTUAL_TLS "
                                                                              "to verify client certificates")]
                           if mutual else [])
    return problems + _exactly_one(f"{path}.clientValidation.trustedCaBundle", {
        "ociCaBundle": bundle.oci_ca_bundle, "kubeSecretCaBundle": bundle.kube_secret_ca_bundle})


# ------------------------------------------------------------------------ IngressGatewayRouteTable


def validate_ingress_gateway_route_table(old: IngressGatewayRouteTable | None, new: IngressGatewayRouteTable,
                                         world: World) -> list[Problem]:
    """An IngressGatewayRouteTable: rules from the gateway's hosts to live virtual services."""
    problems = _name_rules(old, new) + _parent(old, new, "ingress_gateway", Kind.INGRESS_GATEWAY, world)
    gateway = resolve(world, new.spec.ingress_gateway, Kind.INGRESS_GATEWAY, new.namespace)
    for i, rule in enumerate(new.spec.route_rules):
        problems += _gateway_rule(rule, f"spec.routeRules[{i}]", gateway, new.namespace, world)
    return problems


def _gateway_rule(rule: IngressGatewayRouteRule, path: str, gateway: IngressGateway | None, namespace: str,
                  world: World) -> list[Problem]:
    options: dict[str, IgRoute | None] = {"httpRoute": rule.http_route, "tcpRoute": rule.tcp_route,
                                          "tlsPassthroughRoute": rule.tls_passthrough_route}
    picked: tuple[str, IgRoute] | None
    picked, problems = _pick(path, options)
    if picked is None:
        return problems
    route_path, route = picked
    if route.ingress_gateway_host is not None and gateway is not None:
        problems += _gateway_host_ref(route.ingress_gateway_host, f"{route_path}.ingressGatewayHost", gateway)
    for j, destination in enumerate(route.destinations):
        problems += _referenced(destination.virtual_service, Kind.VIRTUAL_SERVICE,
                                f"{route_path}.destinations[{j}].virtualService", namespace, world)
    return problems


def _gateway_host_ref(ref: IngressGatewayHostRef, path: str, gateway: IngressGateway) -> list[Problem]:
    """A rule on a host or port the gateway does not have matches nothing (a warning: the gateway may change)."""
    host = next((h for h in gateway.spec.hosts if h.name == ref.name), None)
    if host is None:
        names = _words([repr(h.name) for h in gateway.spec.hosts], "and")
        return [warning(f"{path}.name", f"{gateway.key} has no host named {ref.name!r} (its hosts: {names}); "
                                        "this rule matches no traffic")]
    ports = [str(listener.port) for listener in host.listeners]
    if ref.port is not None and str(ref.port) not in ports:
        return [warning(f"{path}.port", f"host {ref.name!r} of {gateway.key} has no listener on port {ref.port} "
                                        f"(it listens on {_words(ports, 'and')}); this rule matches no traffic")]
    return []


# ------------------------------------------------------------------------ VirtualDeploymentBinding


def validate_virtual_deployment_binding(old: VirtualDeploymentBinding | None, new: VirtualDeploymentBinding,
                                        world: World) -> list[Problem]:
    """A VirtualDeploymentBinding: a live deployment, and a Service whose pods join it (may be re-pointed)."""
    problems = _name_rules(old, new)
    problems += _referenced(new.spec.virtual_deployment, Kind.VIRTUAL_DEPLOYMENT, "spec.virtualDeployment",
                            new.namespace, world)
    return problems + _target_service(new, world)


def _target_service(new: VirtualDeploymentBinding, world: World) -> list[Problem]:
    """The Service selects the pods to inject; a missing one is an error only if the world knows all Services."""
    ref = new.spec.target.service.ref
    namespace = ref.namespace or new.namespace
    service = world.service(namespace, ref.name)
    path = "spec.target.service.ref"
    if service is None and world.knows_services:
        return [error(path, f"Service {namespace}/{ref.name} does not exist; create it first, or fix the name")]
    if service is None:
        return [warning(path, f"Service {namespace}/{ref.name} is not among the objects given; its pods join "
                              "this deployment once it exists")]
    if service.deleting:
        return [error(path, f"Service {namespace}/{ref.name} is being deleted; bind another Service")]
    return []


# ------------------------------------------------------------------------ IngressGatewayDeployment


def validate_ingress_gateway_deployment(old: IngressGatewayDeployment | None, new: IngressGatewayDeployment,
                                        world: World) -> list[Problem]:
    """An IngressGatewayDeployment: pods, Service and autoscaler the cluster can actually create."""
    problems = _name_rules(old, new) + _parent(old, new, "ingress_gateway", Kind.INGRESS_GATEWAY, world)
    scaling = new.spec.deployment.autoscaling
    if scaling.max_pods < scaling.min_pods:
        problems.append(error("spec.deployment.autoscaling.maxPods", f"is {scaling.max_pods}, below minPods "
                                                                     f"{scaling.min_pods}; raise maxPods or "
                                                                     "lower minPods"))
    return problems + _service_ports(new.spec) + _secrets(new.spec.secrets)


def _service_ports(spec: IngressGatewayDeploymentSpec) -> list[Problem]:
    """Ports with a serviceport become ports of one Service: it must exist, carry one protocol, name its ports."""
    exposed = [(i, port) for i, port in enumerate(spec.ports) if port.service_port is not None]
    if not exposed:
        return []
    problems = []
    if spec.service is None:
        problems.append(error("spec.service", f"is required because spec.ports[{exposed[0][0]}] has a "
                                              "serviceport; add spec.service (for example type: LoadBalancer) "
                                              "or remove the serviceports"))
    first, protocol = exposed[0][0], exposed[0][1].protocol
    problems += [error(f"spec.ports[{i}].protocol", f"is {port.protocol} but ports[{first}] exposes {protocol}; "
                                                    "the gateway Service carries one protocol")
                 for i, port in exposed if port.protocol != protocol]
    if len(exposed) > 1:
        problems += [error(f"spec.ports[{i}].name", "is required when several ports have a serviceport: a "
                                                    "Service with several ports needs a name for each")
                     for i, port in exposed if not port.name]
        named = [(i, port.name) for i, port in exposed if port.name]
        problems += [error(f"spec.ports[{named[k][0]}].name", f"{name!r} is already used by "
                                                              f"ports[{named[first_k][0]}]; port names must be unique")
                     for k, name, first_k in _repeats([name for _, name in named])]
    return problems


def _secrets(secrets: Sequence[SecretRef]) -> list[Problem]:
    """Each Secret is mounted once, in a directory named after it."""
    return [error(f"spec.secrets[{i}].secretName", f"{name!r} is already listed at secrets[{first}]; list each "
                                                   "Secret once")
            for i, name, first in _repeats([secret.secret_name for secret in secrets])]


_VALIDATORS: Mapping[Kind, Validator] = {
    Kind.MESH: validate_mesh,
    Kind.VIRTUAL_SERVICE: validate_virtual_service,
    Kind.VIRTUAL_DEPLOYMENT: validate_virtual_deployment,
    Kind.VIRTUAL_SERVICE_ROUTE_TABLE: validate_virtual_service_route_table,
    Kind.ACCESS_POLICY: validate_access_policy,
    Kind.INGRESS_GATEWAY: validate_ingress_gateway,
    Kind.INGRESS_GATEWAY_ROUTE_TABLE: validate_ingress_gateway_route_table,
    Kind.VIRTUAL_DEPLOYMENT_BINDING: validate_virtual_deployment_binding,
    Kind.INGRESS_GATEWAY_DEPLOYMENT: validate_ingress_gateway_deployment,
}
