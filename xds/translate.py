"""Translate: the IR → every Envoy resource one proxy needs. Pure and deterministic.

Contract: :func:`translate` takes an :class:`ir.MeshConfig` and one connected :class:`ir.Workload` and
returns :class:`Built` resources sorted by push order (clusters, endpoints, listeners, routes), then
name. Each resource lists what it names (``refs``), so a cache can check a snapshot is consistent
before publishing it. The same input always gives byte-identical messages. Nothing here decides
routing policy: ``build`` did (first match wins, weights, timeouts, 503/403); this module only writes
those decisions in Envoy's vocabulary, and never emits what Envoy would reject (an empty or zero
weighted split, two virtual hosts or filter chains claiming one name, two listeners on one address).

Secrets are named, never built: the control plane's CA issues them and serves them over SDS on the
same ADS stream. A resource that names one lists ``(SECRET_TYPE, name)`` in its refs, and
:func:`required_secrets` says which secrets (and for which identity or trust domain) a proxy's
resources name, so the caller can issue exactly those into the same snapshot.

The work is split so that a build can share what is common:

* :func:`translate_outbound` (per mesh and caller identity, identical for every proxy of one virtual
  service): the route configuration ``outbound|http`` with one virtual host per (service, HTTP port)
  the caller may call, one EDS cluster plus its ClusterLoadAssignment per (deployment, port) that
  some of those routes use, and the egress clusters. The caller's identity is an input because access
  policies scope what it gets, and a cluster originating mutual TLS presents the caller's certificate.
* :func:`translate_proxy` (per proxy): :func:`translate_inbound` (a listener and a STATIC cluster per
  port of the proxy's deployment, forwarding to the application) and
  :func:`translate_outbound_listeners` (the HTTP listener on 15001 and the TCP/TLS listeners, all
  bound to the workload's own address).

Mutual TLS (spec §5.1; architecture §4, §6). A proxy's identity is its virtual service's SPIFFE ID; a
service's effective mode (``ir.Service.mtls``) decides both sides of every connection to it:

* **Inbound**, per port of the proxy's own deployment: STRICT terminates mutual TLS (a client without
  a certificate from the mesh's trust bundle fails the handshake); PERMISSIVE adds the TLS inspector
  and two filter chains, ``transport_protocol: tls`` (mutual TLS, as STRICT) and ``raw_buffer``
  (plaintext), forwarding to the same application; DISABLED is plaintext. At the TLS layer any
  identity of the trust domain is accepted (URI SAN prefix ``spiffe://<trust domain>/``): which ones
  may call is the access policies' business (RBAC in the filters, see :func:`inbound_filters`).
* **Outbound**, per EDS cluster: to a deployment whose service is STRICT or PERMISSIVE the caller
  originates mutual TLS with its own certificate and accepts only the exact SPIFFE ID of the
  destination's service; to a DISABLED one, plaintext. No SNI is sent: the receiving side picks its
  listener by port, not by name, and the peer is proven by its certificate's SAN, not by a name.
* **TLS_PASSTHROUGH** ports get no mesh TLS on either side, whatever the mode: the mesh forwards the
  application's own TLS untouched (spec §5.2), without a second layer around it. The price: those
  connections carry no mesh identity, so access policies know their callers by address only.
* A PERMISSIVE listener that cannot tell TLS from plaintext yet (the client sent nothing, as in a
  server-first protocol, or fewer bytes than a TLS record header) picks the plaintext chain when the
  listener filter timeout (Envoy's 15 s) ends, instead of closing the connection.

Access policies (spec §5.4; docs/security.md): nothing is allowed unless a policy allows it.

* **Scoping**, per caller identity: virtual hosts, L4 chains and clusters only for the services the
  caller may call (``ir.Service.callers`` admits it); the last virtual host, ``*``, routes the external
  HTTP hosts the caller may reach and answers 403 to everything else.
* **RBAC**, per inbound port: over mutual TLS, the callers' SPIFFE IDs (exact, or a pattern for
  ``allVirtualServices``); on plaintext chains, the addresses of the admitted services' workloads
  (each sidecar connects from its workload's address). HTTP ports answer 403, TCP ports close.
* **Egress**: external HTTP by Host (regex on ``:authority``) through a dynamic forward proxy cluster;
  external HTTPS by SNI on outbound TLS listeners, passed through to the host the SNI names.

Access logs (``accessLogging.isEnabled`` on a virtual deployment; docs/observability.md): that
deployment's proxies log every HTTP request (inbound and outbound listeners) and every inbound TCP
connection as one JSON line on Envoy's stdout (:func:`access_logs`).

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

Resolvers = Sequence[tuple[str, int]]
"""DNS servers (host, port) for egress host names; empty = the system's."""


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


def translate(config: ir.MeshConfig, workload: ir.Workload, resolvers: Resolvers = ()) -> Resources:
    """Every resource of one proxy; nothing when its deployment is not served (no mesh to join).

    ``resolvers`` (host, port) are the DNS servers egress uses instead of the system's (see :func:`_egress`).
    """
    service = service_of(config, workload)
    if service is None:
        return ()
    return merge(translate_outbound(config, service.mesh, service.identity, resolvers),
                 translate_proxy(config, workload, resolvers))


def service_of(config: ir.MeshConfig, workload: ir.Workload) -> ir.Service | None:
    """The virtual service a workload's proxy serves (through its deployment), if served.

    Its ``identity`` is the proxy's identity and its ``mesh`` the proxy's mesh.
    """
    deployment = config.deployment(workload.deployment)
    return config.service(deployment.service) if deployment is not None else None


def mesh_of(config: ir.MeshConfig, workload: ir.Workload) -> str | None:
    """The key of the mesh a workload belongs to (through its deployment and service), if served."""
    service = service_of(config, workload)
    return service.mesh if service is not None else None


def required_secrets(config: ir.MeshConfig, workload: ir.Workload) -> tuple[tuple[str, str], ...]:
    """The secrets the proxy's resources name, as (secret name, what it must hold), sorted by name.

    What it must hold is the SPIFFE ID for :data:`names.WORKLOAD_SECRET` (a certificate and key proving
    it) and the trust domain for :func:`names.trust_bundle` (its roots). The two come together or not
    at all, since every mutual TLS context names both. Decided by the same plans that build the
    resources, without building them, so it is cheap and cannot drift from the refs (tests compare).
    """
    service = service_of(config, workload)
    deployment = config.deployment(workload.deployment)
    if service is None or deployment is None:
        return ()
    inbound = any(_mesh_tls(service.mtls, port.protocol) for port, _ in _bound_ports(deployment, workload))
    if not inbound and not _outbound_tls(config, service.mesh, service.identity):
        return ()
    return _proxy_tls(config, service.mesh, service.identity).secrets


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


@dataclass(frozen=True)
class _ProxyTls:
    """Who a proxy is in TLS: the secrets its mutual TLS contexts name (its certificate, the mesh's roots)."""

    identity: str
    trust_domain: str

    @property
    def certificate(self) -> str:
        return names.WORKLOAD_SECRET

    @property
    def bundle(self) -> str:
        return names.trust_bundle(self.trust_domain)

    @property
    def refs(self) -> frozenset[Ref]:
        return frozenset({(names.SECRET_TYPE, self.certificate), (names.SECRET_TYPE, self.bundle)})

    @property
    def secrets(self) -> tuple[tuple[str, str], ...]:
        return tuple(sorted([(self.certificate, self.identity), (self.bundle, self.trust_domain)]))

    def context(self, peer: Any) -> Any:
        """A TLS context presenting this proxy's certificate and accepting peers ``peer`` matches."""
        return messages.build_common_tls_context(self.certificate, self.bundle, peer)


def _proxy_tls(config: ir.MeshConfig, mesh: str, identity: str) -> _ProxyTls:
    """The TLS secrets of a proxy proving ``identity`` in ``mesh``; an unknown mesh is a caller's bug."""
    found = config.mesh(mesh)
    if found is None:
        raise ValueError(f"mesh {mesh!r} is not in the configuration")
    return _ProxyTls(identity, found.trust_domain)


def _mesh_tls(mode: ir.Mtls, protocol: ir.Protocol) -> bool:
    """Whether connections to a port of a service in ``mode`` are mutual TLS (else plaintext).

    One rule for both sides, so a caller originates TLS exactly where the receiver terminates it.
    TLS passthrough never is: the application's own TLS passes through untouched.
    """
    return mode is not ir.Mtls.DISABLED and protocol is not ir.Protocol.TLS_PASSTHROUGH


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


# ------------------------------------------------------------- outbound, per mesh and caller


def translate_outbound(config: ir.MeshConfig, mesh: str, identity: str, resolvers: Resolvers = ()) -> Resources:
    """What every proxy proving ``identity`` in ``mesh`` shares: outbound routes, clusters and endpoints.

    Scoped by access policy: only the services ``identity`` may call get virtual hosts and clusters, so
    a proxy's configuration grows with what it may reach, not with the mesh; every other host (and
    every external host no policy allows) answers 403 from the caller's own sidecar. Only clusters
    that a served virtual host or L4 port uses are built, so a deployment nobody routes to costs
    proxies nothing. ``identity`` also decides which certificate mutual TLS clusters present.
    """
    everyone, named = config.callees(mesh)
    found = config.mesh(mesh)
    externals = tuple(e for e in found.egress if e.callers.admits(identity)) if found is not None else ()
    key = ("outbound", mesh, everyone | named.get(identity, frozenset()), externals, tuple(resolvers))
    return config.memo(key, lambda: _outbound(config, mesh, identity, resolvers))


def _outbound(config: ir.MeshConfig, mesh: str, identity: str, resolvers: Resolvers) -> Resources:
    """:func:`translate_outbound` for one identity; identities that may call the same services and reach
    the same external services get the very same resources (nothing here names the caller), so at call-all
    the mesh is translated once, not once per identity."""
    virtual_hosts, l4 = _plans(config, mesh, identity)
    egress = _egress(config, mesh, identity)
    tls = _proxy_tls(config, mesh, identity)
    clusters = [_eds_cluster(config, d, tls) for d in _destinations(config, virtual_hosts, l4)]
    return merge([_outbound_route_configuration(virtual_hosts, egress.http)], *clusters,
                 _egress_clusters(egress, resolvers))


def _plans(config: ir.MeshConfig, mesh: str, identity: str) -> tuple[list[_VirtualHost], L4Plan]:
    """The mesh's HTTP and L4 plans, cut to the services ``identity`` may call.

    Names and ports are handed out mesh-wide first (:func:`_mesh_plans`), so a service keeps what it
    owns for every caller, and a caller denied the owner of a name or port does not reach another
    service through it.
    """
    def scoped() -> tuple[list[_VirtualHost], L4Plan]:
        everyone, named = config.callees(mesh)
        allowed = everyone | named.get(identity, frozenset())
        virtual_hosts, l4 = _mesh_plans(config, mesh)
        kept = {number: (protocol, [c for c in chains if c.service in allowed])
                for number, (protocol, chains) in l4.items()}
        return (_hosts_of(config, mesh, virtual_hosts, allowed),
                {number: plan for number, plan in kept.items() if plan[1]})
    return config.memo(("plans", mesh, identity), scoped)


def _hosts_of(config: ir.MeshConfig, mesh: str, virtual_hosts: list[_VirtualHost],
              allowed: frozenset[str]) -> list[_VirtualHost]:
    """The virtual hosts of the ``allowed`` services, in mesh plan order. A caller of 10 services out of
    1,000 picks them from an index instead of scanning every host (once per identity: 1,000 scans a build)."""
    if len(allowed) * 4 >= len(virtual_hosts):
        return [v for v in virtual_hosts if v.service in allowed]

    def index() -> dict[str, list[tuple[int, _VirtualHost]]]:
        found: dict[str, list[tuple[int, _VirtualHost]]] = {}
        for position, vhost in enumerate(virtual_hosts):
            found.setdefault(vhost.service, []).append((position, vhost))
        return found
    by_service = config.memo(("virtual hosts by service", mesh), index)
    picked = sorted((entry for service in allowed for entry in by_service.get(service, ())), key=lambda e: e[0])
    return [vhost for _, vhost in picked]


def _mesh_plans(config: ir.MeshConfig, mesh: str) -> tuple[list[_VirtualHost], L4Plan]:
    """Which service owns each outbound name and port of ``mesh``, once per configuration."""
    def plans() -> tuple[list[_VirtualHost], L4Plan]:
        services = _by_key(config.mesh_services(mesh))
        return _http_plan(services), _l4_plan(services)
    return config.memo(("mesh plans", mesh), plans)


@dataclass(frozen=True)
class _Destination:
    """One outbound cluster: a deployment port, its endpoints, what it speaks, and whom it must prove.

    ``peer`` is the SPIFFE ID the endpoints' certificate must carry when the connection is mutual TLS,
    None when it is plaintext.
    """

    name: str
    port: int
    endpoints: tuple[str, ...]
    upstream: Upstream
    peer: str | None
    stat_name: str  # names the destination service and deployment in Envoy's stats (names.outbound_stat_name)


def _destinations(config: ir.MeshConfig, virtual_hosts: Iterable[_VirtualHost], l4: L4Plan) -> list[_Destination]:
    """Every cluster a served virtual host or L4 chain uses with a positive weight, first use first, and the
    clusters of its backends on standby (``ir.Route.standby``: no endpoint yet)."""
    routes = [(route, vhost.port.protocol, vhost.service) for vhost in virtual_hosts for route in vhost.port.routes]
    routes += [(chain.route, protocol, chain.service) for protocol, chains in l4.values() for chain in chains]
    found: dict[str, _Destination] = {}
    for route, protocol, service in routes:
        for backend in route.backends + route.standby:
            name = names.outbound_cluster(backend.deployment, backend.port)
            if backend.weight > 0 and name not in found:
                found[name] = _destination(config, name, backend, protocol, service)
    return list(found.values())


def _destination(config: ir.MeshConfig, name: str, backend: ir.Backend, protocol: ir.Protocol,
                 routing_service: str) -> _Destination:
    """What a cluster to one deployment port needs to know, as that deployment's proxies will serve it.

    Protocol and mTLS follow the receiving side: the deployment's own protocol for that port and its
    own service's mode and identity (what its inbound listener terminates and its certificate says);
    when the deployment is unknown, the service port's protocol and the routing service's.
    """
    deployment = config.deployment(backend.deployment)
    port = deployment.port(backend.port) if deployment is not None else None
    protocol = port.protocol if port is not None else protocol
    service = config.service(deployment.service if deployment is not None else routing_service)
    peer = service.identity if service is not None and _mesh_tls(service.mtls, protocol) else None
    endpoints = deployment.endpoints if deployment is not None else ()
    stat_name = names.outbound_stat_name(service.key if service is not None else routing_service,
                                         backend.deployment, backend.port)
    return _Destination(name, backend.port, endpoints, _upstream(protocol), peer, stat_name)


def _outbound_tls(config: ir.MeshConfig, mesh: str, identity: str) -> bool:
    """Whether any outbound cluster of ``identity``'s proxies originates mutual TLS (then it names secrets)."""
    return config.memo(("outbound tls", mesh, identity),
                       lambda: any(d.peer is not None for d in _destinations(config, *_plans(config, mesh, identity))))


def _eds_cluster(config: ir.MeshConfig, destination: _Destination, tls: _ProxyTls) -> tuple[Built, Built]:
    """The cluster of one deployment port and its endpoints (an empty assignment when it has none).

    A mutual TLS cluster presents the caller's certificate and accepts exactly the destination's
    SPIFFE ID, so a workload of another service answering at that address is refused. Neither depends
    on the caller (the certificate's secret name is every proxy's own, ``names.WORKLOAD_SECRET``): both
    are built once per build and shared by every caller and gateway of the mesh.
    """
    return config.lasting(("eds cluster", destination, tls.trust_domain),
                          lambda: _new_eds_cluster(config, destination, tls))


def load_assignment(config: ir.MeshConfig, cluster: str) -> Built | None:
    """This configuration's ClusterLoadAssignment for the outbound EDS cluster ``cluster`` — the very
    object :func:`translate_outbound` gives — or None if the name is not an outbound deployment cluster.

    For a proxy whose callees only changed endpoints: its other resources stay, these are swapped in.
    """
    parsed = names.parse_outbound_cluster(cluster)
    if parsed is None:
        return None
    deployment = config.deployment(parsed[0])
    endpoints = deployment.endpoints if deployment is not None else ()
    return _load_assignment(config, names.load_assignment(cluster), endpoints, parsed[1])


def _load_assignment(config: ir.MeshConfig, name: str, endpoints: tuple[str, ...], port: int) -> Built:
    def made() -> Built:
        return Built(names.ENDPOINT_TYPE, name, messages.build_load_assignment(name, endpoints, port))
    return config.lasting(("load assignment", name, endpoints, port), made)


def _new_eds_cluster(config: ir.MeshConfig, destination: _Destination, tls: _ProxyTls) -> tuple[Built, Built]:
    name, assignment = destination.name, names.load_assignment(destination.name)
    refs = {(names.ENDPOINT_TYPE, assignment)}
    socket = None
    if destination.peer is not None:
        socket = messages.build_upstream_tls(tls.context(messages.build_uri_san_matcher(exact=destination.peer)))
        refs |= tls.refs
    cluster = messages.build_eds_cluster(name, upstream=destination.upstream, transport_socket=socket,
                                         stat_name=destination.stat_name)
    return (Built(names.CLUSTER_TYPE, name, cluster, frozenset(refs)),
            _load_assignment(config, assignment, destination.endpoints, destination.port))


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


def _outbound_route_configuration(virtual_hosts: Iterable[_VirtualHost], egress: Sequence[ir.External]) -> Built:
    """The ``outbound|http`` routes: the allowed services' virtual hosts, then ``*``.

    ``*`` takes every other host: the external HTTP hosts the caller may reach, else 403 (a mesh host
    the caller may not call lands there too).
    """
    built: list[Any] = []
    refs: set[Ref] = set()
    for vhost in virtual_hosts:
        routes, used = _http_routes(vhost.port.routes)
        built.append(messages.build_virtual_host(names.virtual_host(vhost.service, vhost.port.number),
                                                 vhost.domains, routes))
        refs |= used
    other, used = _other_virtual_host(egress)
    built.append(other)
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


# ------------------------------------------------------------------------------------- access logs

_COMMON_FIELDS = {
    "timestamp": "%START_TIME%",
    "source_address": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "response_flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "upstream_host": "%UPSTREAM_HOST%",
    "upstream_cluster": "%UPSTREAM_CLUSTER%",
}
_HTTP_FIELDS = {
    "authority": "%REQ(:AUTHORITY)%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "protocol": "%PROTOCOL%",
    "response_code": "%RESPONSE_CODE%",
    "request_id": "%REQ(X-REQUEST-ID)%",
}
_TCP_FIELDS = {"bytes_received": "%BYTES_RECEIVED%", "bytes_sent": "%BYTES_SENT%"}


@dataclass(frozen=True)
class AccessLog:
    """Who a proxy's access log lines speak for: the direction of its traffic, its own SPIFFE ID, and the
    deployment or gateway key it serves."""

    direction: str  # "inbound", "outbound" or "gateway"
    identity: str
    proxy: str


def access_logs(log: AccessLog | None, *, http: bool) -> list[Any]:
    """The access log of one connection manager or TCP proxy (none when ``log`` is None).

    Identities: on inbound traffic the source is the caller's certificate (``-`` on plaintext) and the
    destination this proxy; outbound and at a gateway, the destination is the certificate the upstream
    presented. Field names are a contract (docs/observability.md).
    """
    if log is None:
        return []
    own = log.identity
    source = own if log.direction == "outbound" else "%DOWNSTREAM_PEER_URI_SAN%"
    destination = own if log.direction == "inbound" else "%UPSTREAM_PEER_URI_SAN%"
    fields = {"direction": log.direction, "proxy": log.proxy, "source_identity": source,
              "destination_identity": destination, **_COMMON_FIELDS, **(_HTTP_FIELDS if http else _TCP_FIELDS)}
    return [messages.build_stdout_access_log(fields)]


def _workload_log(deployment: ir.Deployment, service: ir.Service, direction: str) -> AccessLog | None:
    return AccessLog(direction, service.identity, deployment.key) if deployment.access_logging else None


# --------------------------------------------------------------------------------------- per proxy


def translate_proxy(config: ir.MeshConfig, workload: ir.Workload, resolvers: Resolvers = ()) -> Resources:
    """What only this proxy gets: its inbound side and its outbound listeners.

    Explicit capture: listeners bound to the workload's address, one per port. Transparent capture: the
    two listeners iptables redirects to (:func:`translate_transparent`).
    """
    if workload.capture is ir.Capture.TRANSPARENT:
        return translate_transparent(config, workload, resolvers)
    return merge(translate_inbound(config, workload), translate_outbound_listeners(config, workload, resolvers))


def translate_inbound(config: ir.MeshConfig, workload: ir.Workload) -> Resources:
    """A listener and a STATIC cluster per port of the workload's deployment, secured per its service's mode.

    A port without an application port mapping, or on a sidecar port, is skipped (the caller
    validates the mapping; the sidecar's own ports are never given away).
    """
    deployment = config.deployment(workload.deployment)
    service = service_of(config, workload)
    if deployment is None or service is None:
        return ()
    log = _workload_log(deployment, service, "inbound")
    return merge(*(_inbound(config, service, workload.address, port, app_port, log=log)
                   for port, app_port in _bound_ports(deployment, workload)))


def _bound_ports(deployment: ir.Deployment, workload: ir.Workload) -> list[tuple[ir.Port, int]]:
    """The deployment's ports this proxy binds, with their application ports (mapped, not the sidecar's)."""
    if workload.capture is ir.Capture.TRANSPARENT:  # the application listens on the port itself
        return [(port, port.number) for port in deployment.ports if port.number not in names.SIDECAR_PORTS]
    app_ports = dict(workload.app_ports)
    return [(port, app_ports[port.number]) for port in deployment.ports
            if port.number in app_ports and port.number not in names.SIDECAR_PORTS]


def _inbound(config: ir.MeshConfig, service: ir.Service, address: str, port: ir.Port,
             app_port: int, *, log: AccessLog | None) -> tuple[Built, Built]:
    """One port's listener (plaintext, mutual TLS, or both by the TLS inspector) and its application cluster."""
    inbound = _inbound_port(config, service, address, port, app_port, log=log)
    listener = messages.build_listener(inbound.name, address, port.number, inbound.chains, inbound=True,
                                       listener_filters=[messages.build_tls_inspector()] if inbound.permissive else [],
                                       continue_on_filter_timeout=inbound.permissive)
    return inbound.cluster, Built(names.LISTENER_TYPE, inbound.name, listener, inbound.refs)


@dataclass(frozen=True)
class _InboundPort:
    """What one inbound port needs, whichever listener carries it: its chains and its application cluster."""

    name: str
    cluster: Built
    chains: list[Any]
    permissive: bool  # needs the TLS inspector
    refs: frozenset[Ref]


def _inbound_port(config: ir.MeshConfig, service: ir.Service, address: str, port: ir.Port, app_port: int,
                  *, log: AccessLog | None, destination_port: int | None = None) -> _InboundPort:
    tls = _proxy_tls(config, service.mesh, service.identity)
    name = names.inbound(port.number)
    cluster = messages.build_static_cluster(name, address, app_port, upstream=_upstream(port.protocol))
    effective = service.mtls if _mesh_tls(service.mtls, port.protocol) else ir.Mtls.DISABLED
    by_certificate, by_address = config.memo(("inbound filters", service.key, port, log),
                                             lambda: _both_inbound_filters(config, service, port, log))
    chains = _inbound_chains(name, effective, tls, by_certificate=by_certificate, by_address=by_address,
                             destination_port=destination_port)
    refs = {(names.CLUSTER_TYPE, name)} | (tls.refs if effective is not ir.Mtls.DISABLED else set())
    return _InboundPort(name, Built(names.CLUSTER_TYPE, name, cluster), chains, effective is ir.Mtls.PERMISSIVE,
                        frozenset(refs))


def _both_inbound_filters(config: ir.MeshConfig, service: ir.Service, port: ir.Port,
                          log: AccessLog | None) -> tuple[list[Any], list[Any]]:
    """A port's filters for mutual TLS callers and for plaintext ones: the same for every proxy of the
    service (and access log), so built once per build and shared."""
    name, logs = names.inbound(port.number), access_logs(log, http=port.protocol.is_http)
    return (inbound_filters(port, name, _identity_principals(config, service), logs),
            inbound_filters(port, name, _address_principals(config, service), logs))


def _inbound_chains(name: str, mode: ir.Mtls, tls: _ProxyTls, *, by_certificate: Sequence[Any],
                    by_address: Sequence[Any], destination_port: int | None = None) -> list[Any]:
    """The filter chains of an inbound listener: mutual TLS ones end in ``by_certificate``, plaintext ones
    in ``by_address`` (the same filters, admitting callers by SPIFFE ID or by workload address).

    STRICT: one mutual TLS chain. PERMISSIVE: that chain for connections the TLS inspector finds to be
    TLS, and a plaintext chain for the rest. DISABLED: one plaintext chain. At the TLS layer every
    identity of the trust domain is let in; access policies decide which may call (RBAC in the filters).
    """
    port = destination_port
    if mode is ir.Mtls.DISABLED:
        return [messages.build_filter_chain(by_address, name=name, destination_port=port)]
    members = messages.build_uri_san_matcher(prefix=f"spiffe://{tls.trust_domain}/")
    socket = messages.build_downstream_tls(tls.context(members))
    if mode is ir.Mtls.STRICT:
        return [messages.build_filter_chain(by_certificate, name=name, transport_socket=socket, destination_port=port)]
    return [messages.build_filter_chain(by_certificate, name=f"{name}|mtls", transport_protocol=messages.TLS_PROTOCOL,
                                        transport_socket=socket, destination_port=port),
            messages.build_filter_chain(by_address, name=f"{name}|plaintext",
                                        transport_protocol=messages.PLAINTEXT_PROTOCOL, destination_port=port)]


def _identity_principals(config: ir.MeshConfig, service: ir.Service) -> list[Any]:
    """The callers of ``service`` as SPIFFE IDs their certificates must carry (mutual TLS connections)."""
    callers = service.callers
    found = [messages.build_identity_principal(exact=identity) for identity in callers.identities]
    if callers.all_services:
        trust_domain = _proxy_tls(config, service.mesh, service.identity).trust_domain
        found.append(messages.build_identity_principal(regex=ir.service_identity_regex(trust_domain)))
    return found


def _address_principals(config: ir.MeshConfig, service: ir.Service) -> list[Any]:
    """The callers of ``service`` as the addresses their connections come from (plaintext connections).

    Where a connection carries no certificate (mTLS DISABLED, TLS passthrough, a PERMISSIVE port's
    plaintext chain) the caller is the address its sidecar connects from: the live workloads of the
    services the policies admit. A caller that is no mesh workload has no such address: it reaches nothing.
    """
    return [messages.build_address_principal(a) for a in config.caller_addresses(service)]


def inbound_filters(port: ir.Port, cluster: str, principals: Sequence[Any] = (),
                    access_log: Sequence[Any] = ()) -> list[Any]:
    """The network filters that let admitted callers through to the application behind ``cluster``.

    Shared by every filter chain of the port (mutual TLS and plaintext alike). Access policies come
    first: an HTTP port answers 403 to a caller no principal admits (Envoy's RBAC filter), a TCP or
    TLS port closes its connection. No principals: nobody is admitted (default deny). Timeouts are
    the deployment port's own (0 disables).
    """
    if not port.protocol.is_http:
        return [messages.build_rbac_network_filter(cluster, principals),
                messages.build_tcp_proxy(cluster, [(cluster, 1)], idle_timeout_ms=port.idle_timeout_ms,
                                         access_log=access_log)]
    action = messages.build_route_action([(cluster, 1)], timeout_ms=port.request_timeout_ms,
                                         idle_timeout_ms=port.idle_timeout_ms)
    route = messages.build_forward_route(cluster, messages.build_route_match("/", grpc=False), action)
    routes = messages.build_route_configuration(cluster, [messages.build_virtual_host(cluster, ["*"], [route])])
    return [messages.build_http_connection_manager(cluster, route_config=routes, access_log=access_log,
                                                   http_filters=[messages.build_rbac_http_filter(principals)])]


def translate_outbound_listeners(config: ir.MeshConfig, workload: ir.Workload, resolvers: Resolvers = ()) -> Resources:
    """The outbound HTTP listener, and a TCP or TLS listener per outbound L4 port this proxy can bind.

    L4 ports carry the services the proxy may call and, on TLS ports, the external TLS hosts it may
    reach. An external TLS port never shares a port some mesh service uses for TCP (connections there
    cannot be told apart), nor one of the proxy's own or the sidecar's ports: it is not served there.
    """
    deployment = config.deployment(workload.deployment)
    service = service_of(config, workload)
    if deployment is None or service is None:
        return ()
    taken = names.SIDECAR_PORTS | {port.number for port in deployment.ports}
    _, l4 = _plans(config, service.mesh, service.identity)
    egress = _egress(config, service.mesh, service.identity)
    cache = messages.build_dns_cache(names.EGRESS_DNS_CACHE, resolvers)
    tls_egress = {number: hosts for number, hosts in egress.tls if number not in config.tcp_ports(service.mesh)}
    listeners = []
    for number in sorted((set(l4) | set(tls_egress)) - taken):
        protocol, chains = l4.get(number, (ir.Protocol.TLS_PASSTHROUGH, []))
        listeners.append(_l4_listener(workload.address, number, protocol, chains,
                                      _EgressChain(tls_egress.get(number, ()), cache)))
    http_filters = [messages.build_forward_proxy_http_filter(cache)] if egress.http else []
    logs = access_logs(_workload_log(deployment, service, "outbound"), http=True)
    return merge([_outbound_http_listener(workload.address, http_filters, logs)], listeners)


def _outbound_http_listener(address: str, http_filters: Sequence[Any], access_log: Sequence[Any]) -> Built:
    manager = messages.build_http_connection_manager(names.OUTBOUND_HTTP, rds=names.OUTBOUND_HTTP,
                                                     http_filters=http_filters, access_log=access_log)
    chain = messages.build_filter_chain([manager], name=names.OUTBOUND_HTTP)
    listener = messages.build_listener(names.OUTBOUND_HTTP, address, names.OUTBOUND_HTTP_PORT, [chain], inbound=False)
    refs = frozenset({(names.ROUTE_TYPE, names.OUTBOUND_HTTP)})
    return Built(names.LISTENER_TYPE, names.OUTBOUND_HTTP, listener, refs)


@dataclass(frozen=True)
class _EgressChain:
    """The external TLS hosts one outbound port may reach (``*`` = any), and the DNS cache resolving them."""

    hosts: tuple[str, ...]
    dns_cache: Any


def _l4_listener(address: str, number: int, protocol: ir.Protocol, chains: Sequence[_L4Chain],
                 egress: _EgressChain) -> Built:
    """A TCP proxy per chain; a TLS listener reads the SNI first and picks the chain by server name.

    On a TLS port, external hosts no mesh service claimed come last, in one chain that resolves the
    SNI and passes the connection through (any SNI when ``*`` is allowed).
    """
    tls = protocol is ir.Protocol.TLS_PASSTHROUGH
    name = names.outbound_tls_listener(number) if tls else names.outbound_tcp_listener(number)
    filter_chains = [_l4_filter_chain(f"{name}|{c.service}" if tls else name, c) for c in chains]
    refs: set[Ref] = set().union(*(_cluster_refs(c.weights) for c in chains))
    mesh_names = frozenset(n.lower() for c in chains for n in c.server_names)
    external = [h for h in _unclaimed(egress.hosts, set(mesh_names)) if not _covered(h, mesh_names)] if tls else []
    if external:
        filter_chains.append(_egress_filter_chain(f"{name}|egress", number, external, egress.dns_cache))
        refs.add((names.CLUSTER_TYPE, names.EGRESS_TLS_CLUSTER))
    listener_filters = [messages.build_tls_inspector()] if tls else []
    listener = messages.build_listener(name, address, number, filter_chains, inbound=False,
                                       listener_filters=listener_filters)
    return Built(names.LISTENER_TYPE, name, listener, frozenset(refs))


def _covered(name: str, claimed: Iterable[str]) -> bool:
    """Whether a claimed wildcard (``*.example.com``) covers ``name``: then the name stays with its claimant.

    Envoy prefers an exact server name to a wildcard, so an exact egress name under a mesh service's
    wildcard would take that service's connections away.
    """
    return any(c.startswith("*.") and name.lower().endswith(c[1:]) for c in claimed)


def _l4_filter_chain(stat_prefix: str, chain: _L4Chain) -> Any:
    proxy = messages.build_tcp_proxy(stat_prefix, chain.weights)
    return messages.build_filter_chain([proxy], name=chain.service, server_names=chain.server_names)


def _egress_filter_chain(stat_prefix: str, port: int, hosts: Sequence[str], dns_cache: Any) -> Any:
    """Pass TLS for ``hosts`` (by SNI; ``*`` matches any) through to the host the SNI names, on ``port``."""
    filters = [messages.build_sni_forward_proxy_filter(dns_cache, port),
               messages.build_tcp_proxy(stat_prefix, [(names.EGRESS_TLS_CLUSTER, 1)])]
    server_names = () if "*" in hosts else tuple(hosts)
    return messages.build_filter_chain(filters, name=stat_prefix, server_names=server_names)


# ------------------------------------------------------------------------------------------ egress

DENIED_BODY = "no access policy allows this destination"
HTTPS_DEFAULT_PORT = 443  # where an HTTPS external service with no ports is served in explicit capture


@dataclass(frozen=True)
class _EgressPlan:
    """What one caller may reach outside the mesh: HTTP rules, and TLS host names per port (ascending)."""

    http: tuple[ir.External, ...] = ()
    tls: tuple[tuple[int, tuple[str, ...]], ...] = ()
    tcp: tuple[tuple[int | None, tuple[str, ...]], ...] = ()  # (port or None = every port, CIDRs)


def _egress(config: ir.MeshConfig, mesh: str, identity: str) -> _EgressPlan:
    """The external services access policies let ``identity`` reach, by protocol.

    HTTP is matched by the Host header on the outbound HTTP listener (any port when the rule lists
    none); HTTPS by SNI on each listed port (443 when none: explicit capture cannot listen on every
    port). TCP by address needs transparent capture (the destination address is only known there),
    so explicit-capture proxies get nothing for it: such traffic stays refused.
    """
    return config.memo(("egress", mesh, identity), lambda: _egress_plan(config, mesh, identity))


def _egress_plan(config: ir.MeshConfig, mesh: str, identity: str) -> _EgressPlan:
    found = config.mesh(mesh)
    allowed = [e for e in found.egress if e.callers.admits(identity)] if found is not None else []
    tls: dict[int, list[str]] = {}
    for external in allowed:
        if external.protocol is ir.Egress.HTTPS:
            for port in external.ports or (HTTPS_DEFAULT_PORT,):
                hosts = tls.setdefault(port, [])
                hosts += [h for h in external.hosts if h not in hosts]
    http = tuple(e for e in allowed if e.protocol is ir.Egress.HTTP)
    return _EgressPlan(http, tuple(sorted((port, tuple(hosts)) for port, hosts in tls.items())), _tcp_egress(allowed))


def _tcp_egress(allowed: Iterable[ir.External]) -> tuple[tuple[int | None, tuple[str, ...]], ...]:
    """Allowed TCP destinations grouped by port (None: every port), CIDRs merged and sorted: one filter
    chain each, so no two chains of the capture listener have the same match."""
    by_port: dict[int | None, set[str]] = {}
    for external in allowed:
        if external.protocol is ir.Egress.TCP:
            for port in external.ports or (None,):
                by_port.setdefault(port, set()).update(external.cidrs)
    return tuple(sorted(((port, tuple(sorted(cidrs))) for port, cidrs in by_port.items()),
                        key=lambda item: (item[0] is None, item[0] or 0)))


def _egress_clusters(egress: _EgressPlan, resolvers: Resolvers) -> list[Built]:
    """The forward-proxy clusters the caller's egress needs (none without egress)."""
    cache = messages.build_dns_cache(names.EGRESS_DNS_CACHE, resolvers)
    wanted = [(names.EGRESS_HTTP_CLUSTER, Upstream.HTTP1, bool(egress.http)),
              (names.EGRESS_TLS_CLUSTER, Upstream.TCP, bool(egress.tls))]
    return [Built(names.CLUSTER_TYPE, name, messages.build_forward_proxy_cluster(name, cache, upstream=upstream))
            for name, upstream, needed in wanted if needed]


def _other_virtual_host(http: Sequence[ir.External]) -> tuple[Any, frozenset[Ref]]:
    """The ``*`` virtual host: a route per allowed external HTTP service (by Host and port), then 403."""
    routes = [messages.build_forward_route(
        external.origin, messages.build_authority_match(_authority_regex(external.hosts, external.ports)),
        messages.build_route_action([(names.EGRESS_HTTP_CLUSTER, 1)], timeout_ms=ir.DEFAULT_REQUEST_TIMEOUT_MS))
        for external in http]
    routes.append(messages.build_direct_response_route(f"{names.OUTBOUND_OTHER} denied",
                                                       messages.build_route_match("/", grpc=False), 403, DENIED_BODY))
    refs = frozenset({(names.CLUSTER_TYPE, names.EGRESS_HTTP_CLUSTER)}) if http else frozenset()
    return messages.build_virtual_host(names.OUTBOUND_OTHER, ["*"], routes), refs


def _authority_regex(hosts: Sequence[str], ports: Sequence[int]) -> str:
    """An RE2 expression for a Host header naming one of ``hosts`` on one of ``ports`` (any when empty).

    ``*.example.com`` matches any name ending in ``.example.com``; ``*`` any name. A Host without a
    port is port 80, so it matches when 80 is allowed.
    """
    names_re = "|".join(_host_regex(h) for h in hosts)
    listed = "|".join(str(p) for p in ports)
    port_re = f"(:({listed}))" + ("?" if 80 in ports else "") if ports else "(:[0-9]+)?"
    return f"(?i)^({names_re}){port_re}$"


def _host_regex(host: str) -> str:
    if host == "*":
        return "[^:/]+"
    if host.startswith("*."):
        return r"[^:/]+\." + host[2:].replace(".", r"\.")
    return host.replace(".", r"\.")


# --------------------------------------------------------------------------- transparent capture


def translate_transparent(config: ir.MeshConfig, workload: ir.Workload, resolvers: Resolvers = ()) -> Resources:
    """The two listeners iptables redirects a pod's TCP to, and the inbound application clusters.

    ``inbound|capture`` (15003): the original destination's port picks the chain of that deployment
    port (secured and access-checked exactly as in explicit capture); a port the deployment does not
    serve has no chain, so the connection is closed. ``outbound|capture`` (15001): mesh TCP and TLS
    ports and allowed external TLS hosts by destination port (and SNI), allowed TCP egress by
    destination network and port (passed to the original destination), and everything else to the
    HTTP connection manager routing by Host — which answers 403 to anything no policy allows, and
    closes a connection that is not HTTP. Nothing is ever passed through unchecked.
    """
    deployment = config.deployment(workload.deployment)
    service = service_of(config, workload)
    if deployment is None or service is None:
        return ()
    log = _workload_log(deployment, service, "inbound")
    inbound = [_inbound_port(config, service, workload.address, port, app_port, log=log,
                             destination_port=port.number)
               for port, app_port in _bound_ports(deployment, workload)]
    outbound_logs = access_logs(_workload_log(deployment, service, "outbound"), http=True)
    listeners = [_outbound_capture_listener(config, service, resolvers, outbound_logs)]
    if inbound:
        listeners.append(_inbound_capture_listener(inbound))
    egress: list[Built] = []
    if _egress(config, service.mesh, service.identity).tcp:  # per proxy: explicit capture has no use for it
        egress.append(Built(names.CLUSTER_TYPE, names.EGRESS_TCP_CLUSTER,
                            messages.build_original_dst_cluster(names.EGRESS_TCP_CLUSTER)))
    return merge([i.cluster for i in inbound], listeners, egress)


def _inbound_capture_listener(ports: Sequence[_InboundPort]) -> Built:
    permissive = any(p.permissive for p in ports)
    filters = [messages.build_original_dst_filter()] + ([messages.build_tls_inspector()] if permissive else [])
    chains = [chain for p in ports for chain in p.chains]
    listener = messages.build_listener(names.INBOUND_CAPTURE, "0.0.0.0", names.INBOUND_CAPTURE_PORT, chains,
                                       inbound=True, listener_filters=filters, continue_on_filter_timeout=permissive)
    return Built(names.LISTENER_TYPE, names.INBOUND_CAPTURE, listener, frozenset().union(*(p.refs for p in ports)))


def _outbound_capture_listener(config: ir.MeshConfig, service: ir.Service, resolvers: Resolvers,
                               access_log: Sequence[Any]) -> Built:
    _, l4 = _plans(config, service.mesh, service.identity)
    egress = _egress(config, service.mesh, service.identity)
    cache = messages.build_dns_cache(names.EGRESS_DNS_CACHE, resolvers)
    tls_egress = {n: hosts for n, hosts in egress.tls if n not in config.tcp_ports(service.mesh)}
    chains: list[Any] = []
    refs: set[Ref] = {(names.ROUTE_TYPE, names.OUTBOUND_HTTP)}
    for number in sorted(set(l4) | set(tls_egress)):
        protocol, port_chains = l4.get(number, (ir.Protocol.TLS_PASSTHROUGH, []))
        port_listener = _l4_listener("0.0.0.0", number, protocol, port_chains,
                                     _EgressChain(tls_egress.get(number, ()), cache))
        built: Any = port_listener.message
        chains += [_on_port(chain, number) for chain in built.filter_chains]
        refs |= port_listener.refs
    for port, cidrs in _tcp_chains(egress.tcp, set(l4) | set(tls_egress)):
        proxy = messages.build_tcp_proxy(f"egress|tcp|{port or 'any'}", [(names.EGRESS_TCP_CLUSTER, 1)])
        chains.append(messages.build_filter_chain([proxy], name=f"egress|tcp|{port or 'any'}", destination_port=port,
                                                  prefix_ranges=cidrs))
        refs.add((names.CLUSTER_TYPE, names.EGRESS_TCP_CLUSTER))
    http_filters = [messages.build_forward_proxy_http_filter(cache)] if egress.http else []
    manager = messages.build_http_connection_manager(names.OUTBOUND_HTTP, rds=names.OUTBOUND_HTTP,
                                                     http_filters=http_filters, access_log=access_log)
    chains.append(messages.build_filter_chain([manager], name=names.OUTBOUND_HTTP))
    sni = bool(tls_egress) or any(protocol is ir.Protocol.TLS_PASSTHROUGH for protocol, _ in l4.values())
    # the TLS inspector reads SNI, and only TLS ports need it (it would hold a silent server-first client)
    listener_filters = [messages.build_original_dst_filter()] + ([messages.build_tls_inspector()] if sni else [])
    listener = messages.build_listener(names.OUTBOUND_CAPTURE, "0.0.0.0", names.OUTBOUND_CAPTURE_PORT,
                                       chains, inbound=False, listener_filters=listener_filters)
    return Built(names.LISTENER_TYPE, names.OUTBOUND_CAPTURE, listener, frozenset(refs))


def _tcp_chains(tcp: Sequence[tuple[int | None, tuple[str, ...]]], chained: set[int]
                ) -> list[tuple[int | None, tuple[str, ...]]]:
    """TCP egress chains: per port, and for every port (None). Envoy matches the destination port before
    the address, so networks allowed on every port are repeated on each port other chains match;
    otherwise a connection to such a network on a mesh port would go to the mesh service instead."""
    by_port = {port: set(cidrs) for port, cidrs in tcp}
    anywhere = by_port.get(None, set())
    if anywhere:
        for port in chained | {p for p in by_port if p is not None}:
            by_port.setdefault(port, set()).update(anywhere)
    return sorted(((port, tuple(sorted(cidrs))) for port, cidrs in by_port.items()),
                  key=lambda item: (item[0] is None, item[0] or 0))


def _on_port(chain: Any, number: int) -> Any:
    """A copy of an L4 filter chain that also requires the original destination port ``number``."""
    copy = type(chain)()
    copy.CopyFrom(chain)
    copy.filter_chain_match.destination_port.value = number
    copy.name = f"{copy.name}|{number}"
    return copy
