"""Ingress gateways and their route tables → the IR (:class:`ir.Gateway`). Pure; never raises for bad input.

Choices (spec §3.6, §3.7, §5.5; written for users in docs/ingress.md):

* **Ports.** Hosts of a gateway may share a port; a port has one protocol (a host listing another
  protocol there is an error on the gateway and that host is not served on it). TLS is per host and
  port: each host presents its own certificate, chosen by SNI.
* **Certificates and CA bundles** come from Secrets in the gateway's namespace (``kubernetes.io/tls``:
  ``tls.crt``/``tls.key``; CA bundle: ``ca.crt``); standalone, Secret manifests in the config
  directory. OCI Certificates are not reachable from meshplane: such a host is reported and not
  served on that port. A missing Secret likewise, until it appears.
* **Route tables** apply in priority order (lower first, none last, then namespace/name), rules in
  order. A rule attaches to one host by name (and optionally one of its ports) or, without
  ``ingressGatewayHost``, to every host; HTTP rules to HTTP ports, TCP rules to TCP ports, TLS
  passthrough rules to TLS passthrough ports.
* **Destinations** are virtual services of the gateway's mesh. The port is the rule's, else the
  service's only port of a fitting protocol, else its lowest HTTP port for HTTP rules; otherwise the
  rule is reported. ``isHostRewriteEnabled`` rewrites Host to the service's first host name in
  alphabetical order that is not a wildcard.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from meshplane.controlplane import ir
from meshplane.controlplane.identity import gateway_identity, key_of
from meshplane.controlplane.model import (
    AnyObject,
    CaBundle,
    IgHttpRoute,
    IgTcpRoute,
    IgTlsPassthroughRoute,
    IngressGatewayHost,
    IngressGatewayListener,
    Kind,
    ObjectKey,
    TlsCertificate,
)
from meshplane.controlplane.problems import Problem, error, warning
from meshplane.controlplane.world import World, resolve

Problems = dict[ObjectKey, list[Problem]]
RuleBody = IgHttpRoute | IgTcpRoute | IgTlsPassthroughRoute


@dataclass
class _Context:
    world: World
    meshes: Mapping[str, ir.Mesh]
    services: Mapping[str, ir.Service]
    endpoints: Mapping[str, tuple[str, ...]]  # gateway key → live proxies' addresses
    problems: Problems = field(default_factory=dict)

    def report(self, obj: AnyObject, problem: Problem) -> None:
        self.problems.setdefault(obj.key, []).append(problem)


def build_gateways(world: World, meshes: Mapping[str, ir.Mesh], services: Mapping[str, ir.Service],
                   endpoints: Mapping[str, tuple[str, ...]]) -> tuple[tuple[ir.Gateway, ...], Problems]:
    """Every ingress gateway of a served mesh, and the problems found (keyed by object)."""
    ctx = _Context(world, meshes, services, endpoints)
    gateways = []
    for gateway in world.objects(Kind.INGRESS_GATEWAY):
        parent = resolve(world, gateway.spec.mesh, Kind.MESH, gateway.namespace)
        mesh = meshes.get(key_of(parent)) if parent is not None else None
        if mesh is not None:
            gateways.append(_gateway(ctx, gateway, mesh))
    return tuple(gateways), ctx.problems


def _gateway(ctx: _Context, gateway: AnyObject, mesh: ir.Mesh) -> ir.Gateway:
    tables = _tables(ctx.world, gateway)
    ports: dict[int, tuple[ir.Protocol, list[ir.GatewayHost]]] = {}
    for i, host in enumerate(gateway.spec.hosts):
        for j, listener in enumerate(host.listeners):
            path = f"spec.hosts[{i}].listeners[{j}]"
            protocol = ir.Protocol(listener.protocol.value)
            served = ports.setdefault(listener.port, (protocol, []))
            if served[0] is not protocol:
                ctx.report(gateway, error(f"{path}.protocol", f"port {listener.port} is {served[0]} for another "
                                          f"host; one port has one protocol (host {host.name} is not served there)"))
                continue
            found = _host(ctx, gateway, path, host, listener, tables=tables, mesh=mesh)
            if found is not None:
                served[1].append(found)
    _check_host_refs(ctx, gateway, tables)
    listeners = tuple(ir.GatewayListener(port, protocol, tuple(hosts))
                      for port, (protocol, hosts) in sorted(ports.items()) if hosts)
    logging = bool(gateway.spec.access_logging and gateway.spec.access_logging.is_enabled)
    return ir.Gateway(key_of(gateway), mesh.key, gateway_identity(mesh.trust_domain, gateway), listeners,
                      ctx.endpoints.get(key_of(gateway), ()), access_logging=logging)


def _check_host_refs(ctx: _Context, gateway: AnyObject, tables: list[AnyObject]) -> None:
    """Warn on a rule naming a host (or a host's port) the gateway does not have: it attaches nowhere."""
    ports = {host.name: {listener.port for listener in host.listeners} for host in gateway.spec.hosts}
    for table in tables:
        for index, rule in enumerate(table.spec.route_rules):
            body = rule.http_route or rule.tcp_route or rule.tls_passthrough_route
            target = body.ingress_gateway_host if body is not None else None
            if target is None:
                continue
            if target.name not in ports:
                ctx.report(table, warning(f"spec.routeRules[{index}].ingressGatewayHost.name",
                                          f"{gateway.key} has no host {target.name!r}; the rule applies nowhere"))
            elif target.port is not None and target.port not in ports[target.name]:
                ctx.report(table, warning(f"spec.routeRules[{index}].ingressGatewayHost.port",
                                          f"host {target.name!r} of {gateway.key} has no listener on port "
                                          f"{target.port}; the rule applies nowhere"))


def _tables(world: World, gateway: AnyObject) -> list[AnyObject]:
    mine = [t for t in world.objects(Kind.INGRESS_GATEWAY_ROUTE_TABLE)
            if (parent := resolve(world, t.spec.ingress_gateway, Kind.INGRESS_GATEWAY, t.namespace)) is not None
            and parent.key == gateway.key]
    return sorted(mine, key=lambda t: (t.spec.priority is None, t.spec.priority or 0, t.namespace, t.name))


def _host(ctx: _Context, gateway: AnyObject, path: str, host: IngressGatewayHost, listener: IngressGatewayListener, *,
          tables: list[AnyObject], mesh: ir.Mesh) -> ir.GatewayHost | None:
    """One host on one port, with its TLS material and attached rules; None when it cannot be served."""
    tls = listener.tls
    mode = ir.ListenerTls(tls.mode.value) if tls is not None else ir.ListenerTls.DISABLED
    certificate = ca_bundle = None
    if mode is not ir.ListenerTls.DISABLED:
        certificate = _secret(ctx, gateway, f"{path}.tls.serverCertificate",
                              tls.server_certificate if tls is not None else None, ("tls.crt", "tls.key"))
        if certificate is None:
            return None
    validation = tls.client_validation if tls is not None and mode is not ir.ListenerTls.DISABLED else None
    if validation is not None and validation.trusted_ca_bundle is not None:
        ca_bundle = _secret(ctx, gateway, f"{path}.tls.clientValidation.trustedCaBundle",
                            validation.trusted_ca_bundle, ("ca.crt",))
        if ca_bundle is None:
            return None
    routes = tuple(r for table in tables for r in _table_routes(ctx, table, host.name, listener, mesh))
    return ir.GatewayHost(host.name, tuple(sorted({h.lower() for h in host.hostnames})), routes, mode, certificate,
                          ca_bundle, tuple(validation.subject_alternate_names) if validation else ())


def _secret(ctx: _Context, gateway: AnyObject, path: str, source: TlsCertificate | CaBundle | None,
            keys: tuple[str, ...]) -> ir.SecretRef | None:
    """The Secret a certificate or CA bundle comes from, if it exists with ``keys``; else reported."""
    kube = (source.kube_secret_tls_certificate if isinstance(source, TlsCertificate)
            else source.kube_secret_ca_bundle if source is not None else None)
    if kube is None:
        ctx.report(gateway, error(path, "only Kubernetes Secrets are supported (kubeSecretTlsCertificate / "
                                  "kubeSecretCaBundle): OCI Certificates are not reachable from meshplane"))
        return None
    secret = ctx.world.secret(gateway.namespace, kube.secret_name)
    missing = [k for k in keys if secret is None or secret.get(k) is None]
    if secret is None or missing:
        what = "does not exist" if secret is None else f"has no {', '.join(missing)}"
        ctx.report(gateway, error(path, f"Secret {gateway.namespace}/{kube.secret_name} {what}; the host is not "
                                  "served on this port until it does"))
        return None
    return ir.SecretRef(f"{secret.namespace}/{secret.name}", secret.fingerprint)


def _table_routes(ctx: _Context, table: AnyObject, host: str, listener: IngressGatewayListener,
                  mesh: ir.Mesh) -> list[ir.GatewayRoute]:
    found = []
    protocol = ir.Protocol(listener.protocol.value)
    for index, rule in enumerate(table.spec.route_rules):
        body = rule.http_route or rule.tcp_route or rule.tls_passthrough_route
        fits = (rule.http_route is not None and protocol.is_http) or (
            rule.tcp_route is not None and protocol is ir.Protocol.TCP) or (
            rule.tls_passthrough_route is not None and protocol is ir.Protocol.TLS_PASSTHROUGH)
        target = body.ingress_gateway_host if body is not None else None
        if body is None or not fits or (target is not None and (
                target.name != host or (target.port is not None and target.port != listener.port))):
            continue
        route = _route(ctx, table, index, body, protocol=protocol, mesh=mesh)
        if route is not None:
            found.append(route)
    return found


def _route(ctx: _Context, table: AnyObject, index: int, body: RuleBody, *, protocol: ir.Protocol,
           mesh: ir.Mesh) -> ir.GatewayRoute | None:
    path = f"spec.routeRules[{index}].destinations[0]"
    [destination] = body.destinations
    vs = resolve(ctx.world, destination.virtual_service, Kind.VIRTUAL_SERVICE, table.namespace)
    service = ctx.services.get(key_of(vs)) if vs is not None else None
    if service is None or service.mesh != mesh.key:
        ctx.report(table, warning(path, "the virtual service is not served in the gateway's mesh (yet); the rule "
                                  "sends nothing until it is"))
        return None
    port = _port(service, destination.port, protocol)
    if port is None:
        ctx.report(table, error(f"{path}.port", f"{service.key} has no single {protocol} port to send to: give "
                                "the port"))
        return None
    origin = f"IngressGatewayRouteTable {key_of(table)} rule {index}"
    if not isinstance(body, IgHttpRoute):
        return ir.GatewayRoute(origin, service.key, port)
    return ir.GatewayRoute(origin, service.key, port, body.path or "/", body.is_grpc, body.is_path_rewrite_enabled,
                           _rewrite_host(service) if body.is_host_rewrite_enabled else None,
                           body.request_timeout_in_ms)


def _port(service: ir.Service, given: int | None, protocol: ir.Protocol) -> int | None:
    fitting = [p.number for p in service.ports if p.protocol.is_http == protocol.is_http
               and (protocol.is_http or p.protocol is protocol)]
    if given is not None:
        return given if given in fitting else None
    if len(fitting) == 1:
        return fitting[0]
    return service.default_http_port if protocol.is_http else None


def _rewrite_host(service: ir.Service) -> str | None:
    return next((h for h in service.hosts if "*" not in h), None)
