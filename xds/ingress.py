"""Translate: an ingress gateway's proxy (``ir.Gateway``) → its Envoy resources. Pure and deterministic.

A listener per gateway port, bound to the proxy's address:

* **HTTP** ports: filter chains by TLS — for each host whose TLS is TLS, MUTUAL_TLS or PERMISSIVE, a TLS
  chain chosen by SNI (the host's names) presenting the host's own certificate (SDS, from its Secret),
  checking client certificates against its CA bundle (required for MUTUAL_TLS, and restricted to its
  subject alternative names when given); a plaintext chain for DISABLED and PERMISSIVE hosts. Each
  chain routes over RDS only the hosts it serves (``gateway|<port>|<host>``), so a request cannot
  name another host than the one its TLS handshake was for. Virtual hosts match the host names with
  and without ``:port``.
* **TCP** ports: the first rule attached to any host of the port takes every connection.
* **TLS passthrough** ports: a chain per host by SNI, forwarded untouched.

A rule sends to a virtual service's port, and that service's own routes still decide: each of its
routes becomes a gateway route (their path prefixes combined — after the gateway's rewrite to ``/``
when ``isPathRewriteEnabled``), splitting by the same weights to the same clusters a mesh caller
uses, with mutual TLS to the deployments as the gateway's identity. A request the service's routes do
not match gets 404; a service no access policy lets the gateway call answers 403 (its own sidecar
would refuse it anyway).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshplane.controlplane import ir
from meshplane.xds import messages, names
from meshplane.xds.translate import (
    DENIED_BODY,
    AccessLog,
    Built,
    Ref,
    Resources,
    _cluster_refs,
    _destination,
    _eds_cluster,
    _first_route,
    _proxy_tls,
    _unclaimed,
    _weights,
    access_logs,
    merge,
)

NO_ROUTE_BODY = "no route of the virtual service matches this path"


@dataclass
class _Plan:
    """What a gateway proxy's listeners use: route configurations, clusters, and secrets."""

    routes: list[Built] = field(default_factory=list)
    backends: dict[str, tuple[ir.Backend, ir.Protocol, str]] = field(default_factory=dict)  # cluster → use

    def use(self, backends: Iterable[ir.Backend], protocol: ir.Protocol, service: str) -> None:
        for backend in (b for b in backends if b.weight > 0):
            self.backends.setdefault(names.outbound_cluster(backend.deployment, backend.port),
                                     (backend, protocol, service))


def translate_gateway(config: ir.MeshConfig, workload: ir.Workload) -> Resources:
    """Every resource of one ingress gateway proxy; nothing when its gateway is not served."""
    gateway = config.gateway(workload.gateway or "")
    if gateway is None:
        return ()
    plan = _Plan()
    built = (_listener(config, gateway, workload.address, listener, plan) for listener in gateway.listeners)
    listeners = [listener for listener in built if listener is not None]
    tls = _proxy_tls(config, gateway.mesh, gateway.identity)
    clusters = [_eds_cluster(config, _destination(config, name, backend, protocol, service), tls)
                for name, (backend, protocol, service) in sorted(plan.backends.items())]
    return merge(listeners, plan.routes, *clusters)


def gateway_secrets(config: ir.MeshConfig, workload: ir.Workload,
                    resources: Resources | None = None) -> tuple[tuple[str, str], ...]:
    """The secrets a gateway proxy's resources name, as (secret name, what it holds), sorted: its own
    certificate and the mesh's roots (when it calls a mutual TLS service), and its hosts' certificates
    and CA bundles (the Secret's key ``namespace/name``). ``resources``: the proxy's, when the caller
    already translated them (else they are translated here)."""
    if resources is None:
        resources = translate_gateway(config, workload)
    gateway = config.gateway(workload.gateway or "")
    wanted = {name for b in resources for kind, name in b.refs if kind == names.SECRET_TYPE}
    if gateway is None:
        return ()
    tls = _proxy_tls(config, gateway.mesh, gateway.identity)
    found = dict(tls.secrets)
    for listener in gateway.listeners:
        for host in listener.hosts:
            for ref, name in ((host.certificate, names.server_certificate), (host.ca_bundle, names.client_ca)):
                if ref is not None:
                    found[name(ref.key)] = ref.key
    return tuple(sorted((name, what) for name, what in found.items() if name in wanted))


def _logs(gateway: ir.Gateway, http: bool) -> list[Any]:
    """The gateway's access log (``accessLogging.isEnabled`` on the IngressGateway), else none."""
    log = AccessLog("gateway", gateway.identity, gateway.key) if gateway.access_logging else None
    return access_logs(log, http=http)


def _listener(config: ir.MeshConfig, gateway: ir.Gateway, address: str, listener: ir.GatewayListener,
              plan: _Plan) -> Built | None:
    """A port's listener; None when it has nothing to serve (a TCP or TLS port with no usable rule: Envoy
    refuses a listener without filter chains, and connections are refused either way)."""
    name = names.gateway_listener(listener.port)
    if listener.protocol.is_http:
        chains, refs, inspect = _http_chains(config, gateway, listener, plan)
    else:
        chains, refs, inspect = _l4_chains(config, gateway, listener, plan)
    if not chains:
        return None
    built = messages.build_listener(name, address, listener.port, chains, inbound=True,
                                    listener_filters=[messages.build_tls_inspector()] if inspect else [])
    return Built(names.LISTENER_TYPE, name, built, frozenset(refs))


# ------------------------------------------------------------------------------------------- HTTP


def _http_chains(config: ir.MeshConfig, gateway: ir.Gateway, listener: ir.GatewayListener,
                 plan: _Plan) -> tuple[list[Any], set[Ref], bool]:
    tls_hosts = [h for h in listener.hosts if h.tls is not ir.ListenerTls.DISABLED]
    plain_hosts = [h for h in listener.hosts if h.tls in (ir.ListenerTls.DISABLED, ir.ListenerTls.PERMISSIVE)]
    chains: list[Any] = []
    refs: set[Ref] = set()
    claimed: set[str] = set()
    for host in tls_hosts:
        assert host.certificate is not None  # build serves a TLS host only with its certificate
        server_names = _unclaimed(host.hostnames, claimed)  # Envoy refuses two chains with one name
        if host.hostnames and not server_names:
            continue
        route_name = names.gateway_routes(listener.port, host.name)
        plan.routes.append(_route_configuration(config, gateway, listener.port, [host], name=route_name,
                                                plan=plan))
        certificate = names.server_certificate(host.certificate.key)
        ca = names.client_ca(host.ca_bundle.key) if host.ca_bundle is not None else None
        socket = messages.build_gateway_tls(certificate, client_ca=ca, client_names=host.client_names,
                                            require_client_certificate=host.tls is ir.ListenerTls.MUTUAL_TLS)
        manager = messages.build_http_connection_manager(route_name, rds=route_name, access_log=_logs(gateway, True))
        chains.append(messages.build_filter_chain(
            [manager], name=route_name, server_names=server_names, transport_socket=socket,
            transport_protocol=messages.TLS_PROTOCOL if plain_hosts else ""))
        refs |= {(names.ROUTE_TYPE, route_name), (names.SECRET_TYPE, certificate)}
        refs |= {(names.SECRET_TYPE, ca)} if ca is not None else set()
    if plain_hosts:
        route_name = names.gateway_routes(listener.port, None)
        plan.routes.append(_route_configuration(config, gateway, listener.port, plain_hosts, name=route_name,
                                                plan=plan))
        manager = messages.build_http_connection_manager(route_name, rds=route_name, access_log=_logs(gateway, True))
        chains.append(messages.build_filter_chain(
            [manager], name=route_name, transport_protocol=messages.PLAINTEXT_PROTOCOL if tls_hosts else ""))
        refs.add((names.ROUTE_TYPE, route_name))
    return chains, refs, bool(tls_hosts)


def _route_configuration(config: ir.MeshConfig, gateway: ir.Gateway, port: int, hosts: Sequence[ir.GatewayHost], *,
                         name: str, plan: _Plan) -> Built:
    virtual_hosts = []
    refs: set[Ref] = set()
    claimed: set[str] = set()
    for host in hosts:
        routes: list[Any] = []
        for rule in host.routes:
            built, used = _service_routes(config, gateway, rule, plan)
            routes += built
            refs |= used
        wanted = sorted({*host.hostnames, *(f"{h}:{port}" for h in host.hostnames)}) or ["*"]
        domains = _unclaimed(wanted, claimed)  # the first host keeps a name two hosts list
        if not domains:
            continue
        virtual_hosts.append(messages.build_virtual_host(f"{gateway.key}|{host.name}", domains, routes))
    return Built(names.ROUTE_TYPE, name, messages.build_route_configuration(name, virtual_hosts), frozenset(refs))


def _service_routes(config: ir.MeshConfig, gateway: ir.Gateway, rule: ir.GatewayRoute,
                    plan: _Plan) -> tuple[list[Any], set[Ref]]:
    """The Envoy routes of one gateway rule: the destination service's routes under the rule's prefix."""
    service = config.service(rule.service)
    port = next((p for p in service.ports if p.number == rule.port), None) if service is not None else None
    match = messages.build_route_match(rule.prefix, grpc=rule.grpc)
    if service is None or port is None:
        return [messages.build_direct_response_route(rule.origin, match, 503)], set()
    if not service.callers.admits(gateway.identity, service=False):
        return [messages.build_direct_response_route(rule.origin, match, 403, DENIED_BODY)], set()
    built: list[Any] = []
    refs: set[Ref] = set()
    for route, prefix, rewrite, exact in _combined_routes(rule, port.routes):
        match = (messages.build_path_match(prefix, grpc=rule.grpc or route.grpc) if exact
                 else messages.build_route_match(prefix, grpc=rule.grpc or route.grpc))
        weights = _weights(route.backends)
        if not weights:
            built.append(messages.build_direct_response_route(route.origin, match, route.status or 503))
            continue
        action = messages.build_route_action(weights, timeout_ms=rule.timeout_ms if rule.timeout_ms is not None
                                             else route.timeout_ms, idle_timeout_ms=route.idle_timeout_ms)
        messages.build_rewrites(action, prefix=rewrite, host=rule.rewrite_host)
        built.append(messages.build_forward_route(f"{rule.origin} → {route.origin}", match, action))
        plan.use(route.backends + route.standby, port.protocol, service.key)
        refs |= _cluster_refs(weights)
    built.append(messages.build_direct_response_route(f"{rule.origin} (no route of {service.key} matches)",
                                                      messages.build_route_match(rule.prefix, grpc=rule.grpc), 404,
                                                      NO_ROUTE_BODY))
    return built, refs


def _combined_routes(rule: ir.GatewayRoute, routes: Iterable[ir.Route]
                     ) -> list[tuple[ir.Route, str, str | None, bool]]:
    """(service route, path to match, prefix to forward instead, exact path?) in evaluation order.

    With the rewrite, a request for exactly the rule's prefix without its trailing ``/`` (``/shop`` for
    ``/shop/`` or ``/shop``) is the service's ``/``: it gets an exact-path route of its own.
    """
    found: list[tuple[ir.Route, str, str | None, bool]] = []
    for route in routes:
        bare = rule.prefix.rstrip("/")
        if rule.rewrite_path and route.prefix == "/" and bare:
            found.append((route, bare, "/", True))
        combined = _combine(rule.prefix, route.prefix, rewrite=rule.rewrite_path)
        if combined is not None:
            found.append((route, combined[0], combined[1], False))
    return found


def _combine(gateway: str, service: str, *, rewrite: bool) -> tuple[str, str | None] | None:
    """(the prefix to match, the prefix to forward instead) for a service route under a gateway rule.

    With the rewrite the service sees the path after the gateway's prefix, so its route's prefix
    follows the gateway's; without it, both prefixes must hold, so the longer one (if one extends the
    other) is the match. None: no path can match both.
    """
    if rewrite:
        return gateway.rstrip("/") + service, service
    if service.startswith(gateway):
        return service, None
    if gateway.startswith(service):
        return gateway, None
    return None


# --------------------------------------------------------------------------------- TCP and TLS


def _l4_chains(config: ir.MeshConfig, gateway: ir.Gateway, listener: ir.GatewayListener,
               plan: _Plan) -> tuple[list[Any], set[Ref], bool]:
    """TCP: the first attached rule takes the port. TLS passthrough: a chain per host by SNI."""
    tls = listener.protocol is ir.Protocol.TLS_PASSTHROUGH
    chains: list[Any] = []
    refs: set[Ref] = set()
    claimed: set[str] = set()
    for host in listener.hosts:
        rule = host.routes[0] if host.routes else None
        weights = _l4_weights(config, gateway, rule, plan) if rule is not None else []
        server_names = [n for n in host.hostnames if n not in claimed] if tls else []
        if not weights or (tls and not server_names):
            continue
        claimed.update(server_names)
        stat = f"{names.gateway_listener(listener.port)}|{host.name}"
        proxy = messages.build_tcp_proxy(stat, weights, access_log=_logs(gateway, False))
        chains.append(messages.build_filter_chain([proxy], name=stat, server_names=server_names))
        refs |= _cluster_refs(weights)
        if not tls:
            break
    return chains, refs, tls


def _l4_weights(config: ir.MeshConfig, gateway: ir.Gateway, rule: ir.GatewayRoute,
                plan: _Plan) -> list[tuple[str, int]]:
    service = config.service(rule.service)
    port = next((p for p in service.ports if p.number == rule.port), None) if service is not None else None
    if service is None or port is None or not service.callers.admits(gateway.identity, service=False):
        return []
    route = _first_route(port)
    if route is None:
        return []
    plan.use(route.backends + route.standby, port.protocol, service.key)
    return _weights(route.backends)
