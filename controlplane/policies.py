"""Access policies → who may call each virtual service, and which external services each caller may reach.

Contract: :func:`resolve_access` is pure. It reads every AccessPolicy of the world and returns, per
served virtual service, the union of the callers its rules admit (:class:`ir.Callers`), per mesh the
external services its rules allow (:class:`ir.External`, each with its own callers), and problems per
policy. It never raises for bad input: a rule that cannot be used is left out and reported, the
others still apply.

Semantics (spec §5.4; written for users in docs/security.md):

* **Default deny.** Nothing is allowed unless a rule allows it; rules only ALLOW and add up (the
  union of every rule of every policy of the mesh). There are no deny rules.
* **Sources** are identities: ``virtualService`` (its SPIFFE ID), ``ingressGateway`` (its SPIFFE ID),
  ``allVirtualServices`` (any virtual service of the mesh, not a gateway). **Destinations** are
  ``virtualService``, ``allVirtualServices`` (every service of the mesh, including ones created later)
  or ``externalService``.
* A rule whose source or destination is in another mesh is an error on the policy (a policy cannot
  open one mesh to another); one naming an object that is not served yet is a warning, and the rule
  takes effect when the object is served (creation order is free).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from meshplane.controlplane import ir
from meshplane.controlplane.identity import gateway_identity, key_of
from meshplane.controlplane.model import (
    AccessPolicyRule,
    AnyObject,
    ExternalService,
    Kind,
    ObjectKey,
    RefOrId,
    TrafficTarget,
)
from meshplane.controlplane.problems import Problem, error, warning
from meshplane.controlplane.world import World, resolve


@dataclass
class Access:
    """What the access policies of a world allow, and what is wrong with them."""

    callers: dict[str, ir.Callers] = field(default_factory=dict)  # virtual service key → who may call it
    egress: dict[str, list[ir.External]] = field(default_factory=dict)  # mesh key → allowed external services
    problems: dict[ObjectKey, list[Problem]] = field(default_factory=dict)

    def callers_of(self, service: str) -> ir.Callers:
        return self.callers.get(service, ir.Callers())


def resolve_access(world: World, meshes: Mapping[str, ir.Mesh], services: Mapping[str, tuple[str, str]]
                   ) -> Access:
    """Resolve every access policy of ``world``.

    ``meshes`` are the served meshes by key; ``services`` the served virtual services by key, each with
    its mesh key and SPIFFE identity. Only rules of policies whose mesh is served count.
    """
    access = Access()
    everyone: dict[str, ir.Callers] = {}  # mesh key → callers of rules whose destination is allVirtualServices
    for policy in world.objects(Kind.ACCESS_POLICY):
        parent = resolve(world, policy.spec.mesh, Kind.MESH, policy.namespace)
        mesh = meshes.get(key_of(parent)) if parent is not None else None
        if mesh is None:
            continue  # its status says the mesh is missing; nothing to enforce yet
        rules = _Rules(world, mesh, services, policy, access)
        for index, rule in enumerate(policy.spec.rules):
            rules.add(index, rule, everyone)
    for key, (mesh_key, _) in services.items():
        allowed = access.callers_of(key) | everyone.get(mesh_key, ir.Callers())
        if allowed != ir.Callers():
            access.callers[key] = allowed
    return access


@dataclass
class _Rules:
    """Resolves the rules of one policy into ``access``."""

    world: World
    mesh: ir.Mesh
    services: Mapping[str, tuple[str, str]]
    policy: AnyObject
    access: Access

    def add(self, index: int, rule: AccessPolicyRule, everyone: dict[str, ir.Callers]) -> None:
        path = f"spec.rules[{index}]"
        source = self._source(f"{path}.source", rule.source)
        if source is None:
            return
        target = rule.destination
        if target.all_virtual_services is not None:
            everyone[self.mesh.key] = everyone.get(self.mesh.key, ir.Callers()) | source
        elif target.virtual_service is not None:
            service = self._service(f"{path}.destination.virtualService", target.virtual_service)
            if service is not None:
                self.access.callers[service] = self.access.callers_of(service) | source
        elif target.external_service is not None:
            origin = f"AccessPolicy {key_of(self.policy)} rule {index}"
            external = _external(origin, source, target.external_service)
            self.access.egress.setdefault(self.mesh.key, []).append(external)

    def _source(self, path: str, target: TrafficTarget) -> ir.Callers | None:
        if target.all_virtual_services is not None:
            return ir.Callers(all_services=True)
        if target.virtual_service is not None:
            service = self._service(f"{path}.virtualService", target.virtual_service)
            return ir.Callers(identities=(self.services[service][1],)) if service is not None else None
        if target.ingress_gateway is not None:
            gateway = self._gateway(f"{path}.ingressGateway", target)
            return ir.Callers(identities=(gateway,)) if gateway is not None else None
        return None  # validation refuses any other source

    def _service(self, path: str, target: RefOrId) -> str | None:
        """The key of a served virtual service of this policy's mesh, or None (reported)."""
        found = resolve(self.world, target, Kind.VIRTUAL_SERVICE, self.policy.namespace)
        served = self.services.get(key_of(found)) if found is not None else None
        if found is None or served is None:
            self._report(warning(path, "the virtual service is not served (yet); this rule allows nothing until it is"))
            return None
        if served[0] != self.mesh.key:
            self._report(error(path, f"{key_of(found)} is in mesh {served[0]}, not in this policy's mesh "
                                     f"{self.mesh.key}; the rule is ignored"))
            return None
        return key_of(found)

    def _gateway(self, path: str, target: TrafficTarget) -> str | None:
        """The SPIFFE ID of an ingress gateway of this policy's mesh, or None (reported)."""
        assert target.ingress_gateway is not None
        gateway = resolve(self.world, target.ingress_gateway, Kind.INGRESS_GATEWAY, self.policy.namespace)
        if gateway is None:
            self._report(warning(path, "the ingress gateway is not known (yet); this rule allows nothing until it is"))
            return None
        parent = resolve(self.world, gateway.spec.mesh, Kind.MESH, gateway.namespace)
        if parent is None or key_of(parent) != self.mesh.key:
            self._report(error(path, f"{key_of(gateway)} is not in this policy's mesh {self.mesh.key}; "
                                     "the rule is ignored"))
            return None
        return gateway_identity(self.mesh.trust_domain, gateway)

    def _report(self, problem: Problem) -> None:
        self.access.problems.setdefault(self.policy.key, []).append(problem)


def _external(origin: str, callers: ir.Callers, target: ExternalService) -> ir.External:
    if target.http_external_service is not None:
        http = target.http_external_service
        return ir.External(origin, ir.Egress.HTTP, callers, hosts=_hosts(http.hostnames), ports=_ports(http.ports))
    if target.https_external_service is not None:
        https = target.https_external_service
        return ir.External(origin, ir.Egress.HTTPS, callers, hosts=_hosts(https.hostnames), ports=_ports(https.ports))
    assert target.tcp_external_service is not None  # validation: exactly one kind
    tcp = target.tcp_external_service
    return ir.External(origin, ir.Egress.TCP, callers, cidrs=tuple(sorted(set(tcp.ip_addresses))),
                       ports=_ports(tcp.ports))


def _hosts(hostnames: tuple[str, ...]) -> tuple[str, ...]:
    """Host names compare case-insensitively: lower-cased, duplicates dropped, sorted."""
    return tuple(sorted({h.lower() for h in hostnames}))


def _ports(ports: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sorted(set(ports)))

