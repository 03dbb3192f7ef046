"""Translate: the IR → every Envoy resource one proxy needs. Pure and deterministic.

Contract: :func:`translate` takes an :class:`ir.MeshConfig` and one connected :class:`ir.Workload` and
returns :class:`Built` resources sorted by push order (clusters, endpoints, listeners, routes), then
name. Each resource lists what it names (``refs``), so a cache can check a snapshot is consistent
before publishing it. The same input always gives byte-identical messages. Nothing here decides
routing policy: ``build`` did (first match wins, weights, timeouts, 503/403); this module only writes
those decisions in Envoy's vocabulary, and never emits what Envoy would reject (an empty or zero
weighted split, two virtual hosts or filter chains claiming one name, two listeners on one address).

The work is split so that a build can share what is common to a mesh:

* :func:`translate_outbound` (per mesh, identical for every proxy of it): the route configuration
  ``outbound|http`` with one virtual host per (service, HTTP port), and one EDS cluster plus its
  ClusterLoadAssignment per (deployment, port) that some route uses.
* :func:`translate_proxy` (per proxy): :func:`translate_inbound` (a listener and a STATIC cluster per
  port of the proxy's deployment, forwarding to the application) and
  :func:`translate_outbound_listeners` (the HTTP listener on 15001 and the TCP/TLS listeners, all
  bound to the workload's own address).

Data plane model: explicit capture (architecture §5). Each workload has its own address; the sidecar
binds ``address:<listener port>`` inbound and ``address:15001`` for outbound HTTP, routed by the
Host/authority header; ``host:port`` reaches that port, a bare ``host`` the service's lowest HTTP port.
Transparent capture is later work; its proxies get the same listeners for now.

Decisions Envoy forces on us, each keeping the first claimant so a later object cannot take over
what an earlier one serves (order = service key, then port):

* **Domains** are unique across virtual hosts (case-insensitive), and **server names** across the
  filter chains of a TLS listener; a later claim is dropped, and a virtual host or chain left with no
  name is dropped with it.
* **Outbound TCP and TLS ports** are told apart by port only, because in explicit capture the
  destination is the workload's own address. A port one of the workload's own deployment ports or a
  sidecar port uses gets no outbound listener; of the services sharing a TCP port only the first is
  served; a port serves TLS passthrough (SNI-routed, any number of services) when its first service is
  TLS, else TCP. The port stays with its first service even while that service has nowhere to send
  traffic (no listener: connections are refused), so the choice does not flip as backends come and go.
  Transparent capture will tell services apart by destination address and lift this limitation.
* **Splits**: backends naming the same cluster are merged (weights added); one cluster is a plain
  ``cluster``, several a ``weighted_clusters``; an empty split becomes a direct response (HTTP: the
  route's status, 503 by default) or no listener / filter chain (TCP, TLS).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from meshplane.controlplane import ir
from meshplane.xds import messages, names
from meshplane.xds.messages import Upstream, Weights

Ref = tuple[str, str]
"""(type URL, resource name) of a resource another one names."""


@dataclass(frozen=True)
class Built:
    """One xDS resource and the resources it names (which must be in the same snapshot).

    ``message`` is shared, not copied: treat it as read-only (serialise it, never change it).
    """

    type_url: str
    name: str
    message: Message
    refs: frozenset[Ref] = frozenset()


Resources = tuple[Built, ...]


def translate(config: ir.MeshConfig, workload: ir.Workload) -> Resources:
    """Every resource of one proxy; nothing when its deployment is not served (no mesh to join)."""
    mesh = mesh_of(config, workload)
    if mesh is None:
        return ()
    return merge(translate_outbound(config, mesh), translate_proxy(config, workload))


def mesh_of(config: ir.MeshConfig, workload: ir.Workload) -> str | None:
    """The key of the mesh a workload belongs to (through its deployment and service), if served."""
    deployment = config.deployment(workload.deployment)
    service = config.service(deployment.service) if deployment is not None else None
    return service.mesh if service is not None else None


def merge(*parts: Iterable[Built]) -> Resources:
    """Resources of several parts in push order, then by name; a duplicate is a bug here, so it raises."""
    resources = sorted((b for part in parts for b in part), key=_order)
    for before, after in itertools.pairwise(resources):
        if (before.type_url, before.name) == (after.type_url, after.name):
            raise ValueError(f"two resources are named {after.name!r} ({after.type_url})")
    return tuple(resources)


def dangling_refs(resources: Iterable[Built]) -> set[Ref]:
    """The references no resource of ``resources`` answers: empty for a consistent snapshot."""
    resources = list(resources)
    present = {(b.type_url, b.name) for b in resources}
    return {ref for b in resources for ref in b.refs} - present


def _order(built: Built) -> tuple[int, str]:
    return names.PUSH_ORDER.index(built.type_url), built.name


def _cluster_refs(weights: Weights) -> frozenset[Ref]:
    return frozenset((names.CLUSTER_TYPE, name) for name, _ in weights)


def _upstream(protocol: ir.Protocol) -> Upstream:
    if protocol in (ir.Protocol.HTTP2, ir.Protocol.GRPC):
        return Upstream.HTTP2
    return Upstream.HTTP1 if protocol is ir.Protocol.HTTP else Upstream.TCP


def _weights(backends: Iterable[ir.Backend]) -> list[tuple[str, int]]:
    """(cluster, weight) in the user's order, duplicates merged; never a zero weight (empty instead)."""
    merged: dict[str, int] = {}
    for backend in backends:
        name = names.outbound_cluster(backend.deployment, backend.port)
        merged[name] = merged.get(name, 0) + backend.weight
    return [(name, weight) for name, weight in merged.items() if weight > 0]


def _first_route(port: ir.ServicePort) -> ir.Route | None:
    """TCP and TLS ports have no match criteria: the first route takes every connection."""
    return port.routes[0] if port.routes else None


def _by_key(services: Iterable[ir.Service]) -> list[ir.Service]:
    return sorted(services, key=lambda s: s.key)


# ---------------------------------------------------------------------------- outbound, per mesh


def translate_outbound(config: ir.MeshConfig, mesh: str) -> Resources:
    """What every proxy of ``mesh`` shares: the outbound route configuration, clusters and endpoints.

    Only clusters that a served virtual host or L4 port uses are built, so a deployment nobody routes
    to costs proxies nothing.
    """
    services = _by_key(config.mesh_services(mesh))
    virtual_hosts = _http_plan(services)
    routes = [(route, vhost.port.protocol) for vhost in virtual_hosts for route in vhost.port.routes]
    routes += [(chain.route, protocol) for protocol, chains in _l4_plan(services).values() for chain in chains]
    used: dict[str, tuple[ir.Backend, ir.Protocol]] = {}
    for route, protocol in routes:
        for backend in route.backends:
            if backend.weight > 0:
                used.setdefault(names.outbound_cluster(backend.deployment, backend.port), (backend, protocol))
    clusters = [_eds_cluster(config, backend, protocol) for backend, protocol in used.values()]
    return merge([_outbound_route_configuration(virtual_hosts)], *clusters)


def _eds_cluster(config: ir.MeshConfig, backend: ir.Backend, protocol: ir.Protocol) -> tuple[Built, Built]:
    """The cluster of one deployment port and its endpoints (an empty assignment when it has none).

    The upstream protocol is the deployment's own for that port (what its inbound listener serves),
    the service port's when the deployment is unknown.
    """
    name = names.outbound_cluster(backend.deployment, backend.port)
    deployment = config.deployment(backend.deployment)
    port = deployment.port(backend.port) if deployment is not None else None
    upstream = _upstream(port.protocol if port is not None else protocol)
    endpoints = deployment.endpoints if deployment is not None else ()
    assignment = names.load_assignment(name)
    return (Built(names.CLUSTER_TYPE, name, messages.build_eds_cluster(name, upstream=upstream),
                  frozenset({(names.ENDPOINT_TYPE, assignment)})),
            Built(names.ENDPOINT_TYPE, assignment, messages.build_load_assignment(assignment, endpoints, backend.port)))


@dataclass(frozen=True)
class _VirtualHost:
    """One HTTP port of one service and the domains it keeps (none claimed them before)."""

    service: str
    port: ir.ServicePort
    domains: tuple[str, ...]


def _http_plan(services: Iterable[ir.Service]) -> list[_VirtualHost]:
    """A virtual host per (service, HTTP port) left with a domain, in service key and port order."""
    claimed: set[str] = set()
    plan = []
    for service in services:
        for port in service.ports:
            domains = _unclaimed(_domains(service, port), claimed) if port.protocol.is_http else []
            if domains:
                plan.append(_VirtualHost(service.key, port, tuple(domains)))
    return plan


def _outbound_route_configuration(virtual_hosts: Iterable[_VirtualHost]) -> Built:
    """The ``outbound|http`` routes; a host no virtual host names gets Envoy's own 404."""
    built: list[Any] = []
    refs: set[Ref] = set()
    for vhost in virtual_hosts:
        routes, used = _http_routes(vhost.port.routes)
        built.append(messages.build_virtual_host(names.virtual_host(vhost.service, vhost.port.number),
                                                 vhost.domains, routes))
        refs |= used
    message = messages.build_route_configuration(names.OUTBOUND_HTTP, built)
    return Built(names.ROUTE_TYPE, names.OUTBOUND_HTTP, message, frozenset(refs))


def _domains(service: ir.Service, port: ir.ServicePort) -> list[str]:
    """Every ``host:port``, and the bare host too when this is the port a bare host reaches."""
    bare = port.number == service.default_http_port
    return sorted({f"{host}:{port.number}" for host in service.hosts} | (set(service.hosts) if bare else set()))


def _unclaimed(wanted: Iterable[str], claimed: set[str]) -> list[str]:
    """The names nobody claimed before (Envoy compares host names case-insensitively); claims them."""
    fresh = []
    for name in wanted:
        if name.lower() not in claimed:
            claimed.add(name.lower())
            fresh.append(name)
    return fresh


def _http_routes(routes: Iterable[ir.Route]) -> tuple[list[Any], frozenset[Ref]]:
    """Envoy routes in the IR's order (first match wins) and the clusters they name."""
    built: list[Any] = []
    refs: set[Ref] = set()
    for route in routes:
        match = messages.build_route_match(route.prefix, grpc=route.grpc)
        weights = _weights(route.backends)
        if not weights:
            built.append(messages.build_direct_response_route(route.origin, match, route.status or 503))
            continue
        action = messages.build_route_action(weights, timeout_ms=route.timeout_ms,
                                             idle_timeout_ms=route.idle_timeout_ms)
        built.append(messages.build_forward_route(route.origin, match, action))
        refs |= _cluster_refs(weights)
    return built, frozenset(refs)


# -------------------------------------------------------------------- outbound TCP and TLS ports


@dataclass(frozen=True)
class _L4Chain:
    """One service served on an outbound TCP/TLS port: its route, split and (TLS) its SNI names."""

    service: str
    route: ir.Route
    weights: tuple[tuple[str, int], ...]
    server_names: tuple[str, ...] = ()


L4Plan = dict[int, tuple[ir.Protocol, list[_L4Chain]]]


def _l4_plan(services: Iterable[ir.Service]) -> L4Plan:
    """What each outbound TCP/TLS port serves: the same for every proxy of the mesh, ports ascending.

    A port whose services have nowhere to send traffic is left out (connections are refused).
    """
    users: dict[int, list[tuple[ir.Service, ir.ServicePort]]] = {}
    for service in _by_key(services):
        for port in service.ports:
            if not port.protocol.is_http:
                users.setdefault(port.number, []).append((service, port))
    plan: L4Plan = {}
    for number, found in sorted(users.items()):
        chains = _port_chains(found)
        if chains:
            plan[number] = (found[0][1].protocol, chains)
    return plan


def _port_chains(users: Sequence[tuple[ir.Service, ir.ServicePort]]) -> list[_L4Chain]:
    """The port's first service decides: TCP serves it alone, TLS shares it by SNI with other TLS
    services, each keeping the names nobody before it claimed (without hosts, a service cannot be
    told apart by SNI and is not served)."""
    first_service, first_port = users[0]
    if first_port.protocol is ir.Protocol.TCP:
        chain = _l4_chain(first_service, first_port, ())
        return [chain] if chain else []
    claimed: set[str] = set()
    chains = []
    for service, port in users:
        if port.protocol is ir.Protocol.TLS_PASSTHROUGH:
            server_names = _unclaimed(sorted(service.hosts), claimed)
            chain = _l4_chain(service, port, server_names) if server_names else None
            chains += [chain] if chain else []
    return chains


def _l4_chain(service: ir.Service, port: ir.ServicePort, server_names: Sequence[str]) -> _L4Chain | None:
    route = _first_route(port)
    weights = _weights(route.backends) if route is not None else []
    if route is None or not weights:
        return None
    return _L4Chain(service.key, route, tuple(weights), tuple(server_names))


# --------------------------------------------------------------------------------------- per proxy


def translate_proxy(config: ir.MeshConfig, workload: ir.Workload) -> Resources:
    """What only this proxy gets: its inbound side and its outbound listeners (bound to its address)."""
    return merge(translate_inbound(config, workload), translate_outbound_listeners(config, workload))


def translate_inbound(config: ir.MeshConfig, workload: ir.Workload) -> Resources:
    """A listener and a STATIC cluster per port of the workload's deployment.

    A port without an application port mapping, or on a sidecar port, is skipped (the caller
    validates the mapping; the sidecar's own ports are never given away).
    """
    deployment = config.deployment(workload.deployment)
    if deployment is None:
        return ()
    app_ports = dict(workload.app_ports)
    return merge(*(_inbound(workload.address, port, app_ports[port.number]) for port in deployment.ports
                   if port.number in app_ports and port.number not in names.SIDECAR_PORTS))


def _inbound(address: str, port: ir.Port, app_port: int) -> tuple[Built, Built]:
    name = names.inbound(port.number)
    cluster = messages.build_static_cluster(name, address, app_port, upstream=_upstream(port.protocol))
    listener = messages.build_listener(name, address, port.number, [inbound_filter_chain(port, name)], inbound=True)
    return (Built(names.CLUSTER_TYPE, name, cluster),
            Built(names.LISTENER_TYPE, name, listener, frozenset({(names.CLUSTER_TYPE, name)})))


def inbound_filter_chain(port: ir.Port, cluster: str) -> Any:
    """The filter chain that hands one port's traffic to the application behind ``cluster``.

    The seam for later work: mTLS adds the chain's transport socket (and PERMISSIVE a second chain),
    access policies an RBAC filter before the HCM / TCP proxy, access logging the filters' logs.
    Timeouts are the deployment port's own (0 disables).
    """
    if not port.protocol.is_http:
        proxy = messages.build_tcp_proxy(cluster, [(cluster, 1)], idle_timeout_ms=port.idle_timeout_ms)
        return messages.build_filter_chain([proxy], name=cluster)
    action = messages.build_route_action([(cluster, 1)], timeout_ms=port.request_timeout_ms,
                                         idle_timeout_ms=port.idle_timeout_ms)
    route = messages.build_forward_route(cluster, messages.build_route_match("/", grpc=False), action)
    routes = messages.build_route_configuration(cluster, [messages.build_virtual_host(cluster, ["*"], [route])])
    manager = messages.build_http_connection_manager(cluster, route_config=routes)
    return messages.build_filter_chain([manager], name=cluster)


def translate_outbound_listeners(config: ir.MeshConfig, workload: ir.Workload) -> Resources:
    """The outbound HTTP listener, and a TCP or TLS listener per outbound L4 port this proxy can bind."""
    deployment = config.deployment(workload.deployment)
    mesh = mesh_of(config, workload)
    if deployment is None or mesh is None:
        return ()
    taken = names.SIDECAR_PORTS | {port.number for port in deployment.ports}
    l4 = [_l4_listener(workload.address, number, protocol, chains)
          for number, (protocol, chains) in _l4_plan(config.mesh_services(mesh)).items() if number not in taken]
    return merge([_outbound_http_listener(workload.address)], l4)


def _outbound_http_listener(address: str) -> Built:
    manager = messages.build_http_connection_manager(names.OUTBOUND_HTTP, rds=names.OUTBOUND_HTTP)
    chain = messages.build_filter_chain([manager], name=names.OUTBOUND_HTTP)
    listener = messages.build_listener(names.OUTBOUND_HTTP, address, names.OUTBOUND_HTTP_PORT, [chain], inbound=False)
    refs = frozenset({(names.ROUTE_TYPE, names.OUTBOUND_HTTP)})
    return Built(names.LISTENER_TYPE, names.OUTBOUND_HTTP, listener, refs)


def _l4_listener(address: str, number: int, protocol: ir.Protocol, chains: Sequence[_L4Chain]) -> Built:
    """A TCP proxy per chain; a TLS listener reads the SNI first and picks the chain by server name."""
    tls = protocol is ir.Protocol.TLS_PASSTHROUGH
    name = names.outbound_tls_listener(number) if tls else names.outbound_tcp_listener(number)
    filter_chains = [_l4_filter_chain(f"{name}|{c.service}" if tls else name, c) for c in chains]
    listener_filters = [messages.build_tls_inspector()] if tls else []
    listener = messages.build_listener(name, address, number, filter_chains, inbound=False,
                                       listener_filters=listener_filters)
    return Built(names.LISTENER_TYPE, name, listener, frozenset().union(*(_cluster_refs(c.weights) for c in chains)))


def _l4_filter_chain(stat_prefix: str, chain: _L4Chain) -> Any:
    proxy = messages.build_tcp_proxy(stat_prefix, chain.weights)
    return messages.build_filter_chain([proxy], name=chain.service, server_names=chain.server_names)
