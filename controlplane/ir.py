"""The IR: the mesh as the data plane must see it, knowing neither Kubernetes nor Envoy.

Everything the API leaves implicit is resolved before the IR (references, namespaces, priorities,
defaults, effective timeouts and mTLS modes, which backends are alive); everything Envoy-specific
(names, filters, protobuf) happens after it, in ``meshplane.xds``. Values are frozen and hashable,
built once per change and shared by every per-proxy translation, and every collection is sorted so
the same input always gives the same IR (and the same bytes to Envoy).

Keys are strings ``namespace/name``: readable in golden files and stable across runs.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

T = TypeVar("T")

# Ports every sidecar keeps for itself (architecture §5): Envoy admin, outbound and inbound capture,
# stats, health. No mesh listener may use them.
SIDECAR_PORTS = frozenset({15000, 15001, 15003, 15006, 15010})

# Envoy's default upstream response timeout for HTTP and HTTP/2 routes (spec §2.7); gRPC has none.
DEFAULT_REQUEST_TIMEOUT_MS = 15_000


class Protocol(enum.StrEnum):
    HTTP = "HTTP"
    HTTP2 = "HTTP2"
    GRPC = "GRPC"
    TCP = "TCP"
    TLS_PASSTHROUGH = "TLS_PASSTHROUGH"

    @property
    def is_http(self) -> bool:
        return self in (Protocol.HTTP, Protocol.HTTP2, Protocol.GRPC)


class Mtls(enum.StrEnum):
    DISABLED = "DISABLED"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"


class Capture(enum.StrEnum):
    EXPLICIT = "explicit"  # no iptables: the sidecar binds the workload's own address (standalone, tests)
    TRANSPARENT = "transparent"  # iptables redirects the pod's traffic to the sidecar (Kubernetes)


def service_identity(trust_domain: str, namespace: str, name: str) -> str:
    """The SPIFFE ID of a virtual service's proxies (architecture §4)."""
    return f"spiffe://{trust_domain}/ns/{namespace}/virtualservice/{name}"


def gateway_identity(trust_domain: str, namespace: str, name: str) -> str:
    """The SPIFFE ID of an ingress gateway's proxies (architecture §4)."""
    return f"spiffe://{trust_domain}/ns/{namespace}/ingressgateway/{name}"


def service_identity_regex(trust_domain: str) -> str:
    """An RE2 expression matching every virtual service identity of ``trust_domain`` and nothing else."""
    escaped = trust_domain.replace(".", r"\.")
    return rf"^spiffe://{escaped}/ns/[^/]+/virtualservice/[^/]+$"


@dataclass(frozen=True)
class Callers:
    """Who access policies let reach a destination (spec §5.4): the union of every rule naming it.

    ``all_services`` is a rule with source ``allVirtualServices`` (any virtual service of the mesh, not
    an ingress gateway); ``identities`` are the SPIFFE IDs of sources named one by one (virtual services
    and ingress gateways). The empty value admits nobody: default deny.
    """

    all_services: bool = False
    identities: tuple[str, ...] = ()

    def admits(self, identity: str, *, service: bool = True) -> bool:
        """Whether a caller proving ``identity`` (a virtual service's unless ``service`` is False) may call."""
        return (self.all_services and service) or identity in self.identities

    def __or__(self, other: Callers) -> Callers:
        return Callers(self.all_services or other.all_services,
                       tuple(sorted(set(self.identities) | set(other.identities))))


class Egress(enum.StrEnum):
    """How traffic to an external service is recognised: Host header, TLS SNI, or destination address."""

    HTTP = "HTTP"
    HTTPS = "HTTPS"
    TCP = "TCP"


@dataclass(frozen=True)
class External:
    """An external service access policies let some callers reach (one rule's destination).

    ``hosts`` (HTTP, HTTPS) are exact names, ``*.`` suffix wildcards or ``*`` (any); ``cidrs`` (TCP)
    are networks in CIDR notation; ``ports`` empty means every port.
    """

    origin: str
    protocol: Egress
    callers: Callers
    hosts: tuple[str, ...] = ()
    cidrs: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()


@dataclass(frozen=True)
class Mesh:
    """A trust domain, its mTLS floor, and the external services its access policies allow."""

    key: str
    trust_domain: str
    mtls_minimum: Mtls
    egress: tuple[External, ...] = ()


@dataclass(frozen=True)
class Port:
    """A port a deployment serves, with its effective timeouts (0 = disabled)."""

    number: int
    protocol: Protocol
    request_timeout_ms: int
    idle_timeout_ms: int | None = None


@dataclass(frozen=True)
class Deployment:
    """One version of a service: its ports and the addresses of its live workloads.

    ``endpoints`` are the workloads that take traffic: their proxies have accepted their configuration.
    ``starting`` are those whose proxies are connected but not configured yet: they take no traffic (their
    listeners are not there), but they may already call, so they count among the callers' addresses.
    """

    key: str
    service: str
    hostname: str | None
    ports: tuple[Port, ...]
    endpoints: tuple[str, ...] = ()
    access_logging: bool = False
    starting: tuple[str, ...] = ()

    def port(self, number: int) -> Port | None:
        return next((p for p in self.ports if p.number == number), None)

    def shape(self) -> Deployment:
        """This deployment without its workloads' addresses: what shapes its callers' configuration and its
        own proxies' (endpoints only change load assignments)."""
        return replace(self, endpoints=(), starting=())


@dataclass(frozen=True)
class Backend:
    """A share of a route's traffic: a deployment's port and its relative weight (> 0)."""

    deployment: str
    port: int
    weight: int


@dataclass(frozen=True)
class Route:
    """One rule for one port of a service, in evaluation order.

    Either ``backends`` is non-empty (forward, split by weight) or ``status`` says what to answer
    instead: 503 when the rule has nowhere to send traffic (all weights 0, no live destination), 403
    when the service's default routing policy is DENY. ``origin`` names the rule for people and
    golden files (``VirtualServiceRouteTable shop/reviews-canary rule 0``).

    ``timeout_ms`` and ``idle_timeout_ms`` are what the calling sidecar enforces (0 = disabled);
    ``idle_timeout_ms`` None leaves the caller's default stream idle timeout in force.

    ``standby`` holds the backends with a positive weight left out of ``backends`` only because they have no
    endpoint while another backend has one. Callers keep their clusters (with empty load assignments), so a
    deployment's first endpoint changes its callers' routes only, not their cluster set: at 2,000 proxies
    starting together that was thousands of CDS pushes and cluster warm-ups in Envoy.
    """

    origin: str
    prefix: str = "/"
    grpc: bool = False
    timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS
    idle_timeout_ms: int | None = None
    backends: tuple[Backend, ...] = ()
    status: int | None = None
    standby: tuple[Backend, ...] = ()


@dataclass(frozen=True)
class ServicePort:
    """A port of a virtual service (the union of its deployments' listener ports) and its routes.

    HTTP ports use every route, first match wins; TCP and TLS-passthrough ports use the first route.
    """

    number: int
    protocol: Protocol
    routes: tuple[Route, ...]


@dataclass(frozen=True)
class Service:
    """A virtual service: its identity, the names callers use, its effective mTLS mode, its ports' routes.

    ``identity`` is the SPIFFE ID every proxy of the service proves with its certificate
    (``spiffe://<trust domain>/ns/<namespace>/virtualservice/<name>``, architecture §4): certificates
    are issued per virtual service, as OCI does, so all deployments of a service share it.
    ``callers`` are who its access policies let call it (nobody by default).
    """

    key: str
    mesh: str
    identity: str
    hosts: tuple[str, ...]
    mtls: Mtls
    ports: tuple[ServicePort, ...]
    callers: Callers = Callers()

    @property
    def default_http_port(self) -> int | None:
        """The port a bare host name (no ``:port``) reaches: the lowest HTTP port."""
        return min((p.number for p in self.ports if p.protocol.is_http), default=None)


class ListenerTls(enum.StrEnum):
    """TLS on a gateway listener (spec §3.6)."""

    DISABLED = "DISABLED"  # plaintext only
    PERMISSIVE = "PERMISSIVE"  # plaintext or TLS (client certificates checked when a CA bundle is given)
    TLS = "TLS"  # TLS only
    MUTUAL_TLS = "MUTUAL_TLS"  # TLS with a client certificate from the CA bundle


@dataclass(frozen=True)
class SecretRef:
    """A Secret a gateway serves from (``namespace/name``); its fingerprint changes with its content."""

    key: str
    fingerprint: str


@dataclass(frozen=True)
class GatewayRoute:
    """One gateway rule for one host and port, in evaluation order: traffic to a virtual service's port.

    The service's own routes for that port still decide where it goes (and split it).
    ``rewrite_path``: the matched prefix becomes ``/``; ``rewrite_host``: the Host header becomes it;
    ``timeout_ms`` None keeps the service route's timeout.
    """

    origin: str
    service: str
    port: int
    prefix: str = "/"
    grpc: bool = False
    rewrite_path: bool = False
    rewrite_host: str | None = None
    timeout_ms: int | None = None


@dataclass(frozen=True)
class GatewayHost:
    """A host of a gateway on one of its ports: its names, TLS, and the rules attached to it there."""

    name: str
    hostnames: tuple[str, ...]
    routes: tuple[GatewayRoute, ...]
    tls: ListenerTls = ListenerTls.DISABLED
    certificate: SecretRef | None = None
    ca_bundle: SecretRef | None = None
    client_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class GatewayListener:
    """A port of an ingress gateway and the hosts it serves there (one protocol per port)."""

    port: int
    protocol: Protocol
    hosts: tuple[GatewayHost, ...]


@dataclass(frozen=True)
class Gateway:
    """An ingress gateway: its identity (a source access policies can name), ports and live proxies."""

    key: str
    mesh: str
    identity: str
    listeners: tuple[GatewayListener, ...]
    endpoints: tuple[str, ...] = ()
    access_logging: bool = False


@dataclass(frozen=True)
class Workload:
    """A running proxy and the deployment it serves (an endpoint while it is connected and configured), or
    the ingress gateway it runs (``gateway``, its key; then ``deployment`` is empty)."""

    node_id: str
    deployment: str
    address: str
    capture: Capture = Capture.EXPLICIT
    app_ports: tuple[tuple[int, int], ...] = ()  # (listener port, application port), explicit capture only
    gateway: str | None = None


@dataclass(frozen=True)
class MeshConfig:
    """Everything translation needs, with lookups by key."""

    meshes: tuple[Mesh, ...] = ()
    services: tuple[Service, ...] = ()
    deployments: tuple[Deployment, ...] = ()
    gateways: tuple[Gateway, ...] = ()
    _meshes: dict[str, Mesh] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)
    _services: dict[str, Service] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)
    _deployments: dict[str, Deployment] = field(default_factory=dict, init=False, repr=False, compare=False,
                                                hash=False)
    _memo: dict[Hashable, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)
    _lasting: dict[Hashable, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)
    _carried: dict[Hashable, Any] = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        self._meshes.update((m.key, m) for m in self.meshes)
        self._services.update((s.key, s) for s in self.services)
        self._deployments.update((d.key, d) for d in self.deployments)

    def tcp_ports(self, mesh: str) -> frozenset[int]:
        """Every port some service of ``mesh`` serves as TCP (whether or not it has backends), once per build."""
        return self.memo(("tcp ports", mesh), lambda: frozenset(
            port.number for s in self.mesh_services(mesh) for port in s.ports if port.protocol is Protocol.TCP))

    def mesh(self, key: str) -> Mesh | None:
        return self._meshes.get(key)

    def service(self, key: str) -> Service | None:
        return self._services.get(key)

    def deployment(self, key: str) -> Deployment | None:
        return self._deployments.get(key)

    def gateway(self, key: str) -> Gateway | None:
        return self.memo("gateways", lambda: {g.key: g for g in self.gateways}).get(key)

    def mesh_services(self, mesh: str) -> tuple[Service, ...]:
        return self.memo(("mesh_services", mesh), lambda: tuple(s for s in self.services if s.mesh == mesh))

    def callees(self, mesh: str) -> tuple[frozenset[str], dict[str, frozenset[str]]]:
        """The keys of ``mesh``'s services that any service may call (``allVirtualServices``), and per
        caller identity the keys of those that name it. Once per configuration: translation and the
        reconcile views both look callers up here instead of walking every service per caller."""
        def index() -> tuple[frozenset[str], dict[str, frozenset[str]]]:
            named: dict[str, set[str]] = {}
            for service in self.mesh_services(mesh):
                for identity in service.callers.identities:
                    named.setdefault(identity, set()).add(service.key)
            everyone = frozenset(s.key for s in self.mesh_services(mesh) if s.callers.all_services)
            return everyone, {identity: frozenset(keys) for identity, keys in named.items()}
        return self.memo(("callees", mesh), index)

    def caller_addresses(self, service: Service) -> tuple[str, ...]:
        """The addresses of every live workload whose virtual service (or ingress gateway) of the same mesh
        may call ``service``, sorted: every virtual service workload of the mesh for
        ``allVirtualServices``, plus the named callers'. Once per configuration and service."""
        def addresses() -> tuple[str, ...]:
            by_identity, of_services = self._addresses_by_identity(service.mesh)
            named = {a for identity in service.callers.identities for a in by_identity.get(identity, ())}
            if not service.callers.all_services:
                return tuple(sorted(named))
            everyone = self.memo(("service addresses", service.mesh), lambda: tuple(sorted(of_services)))
            # the same tuple for every service open to all: compared by identity in the reconcile views
            return everyone if named <= of_services else tuple(sorted(named | of_services))
        return self.memo(("caller addresses", service.key), addresses)

    def _addresses_by_identity(self, mesh: str) -> tuple[dict[str, set[str]], frozenset[str]]:
        """Per identity of ``mesh`` (virtual services and ingress gateways), its live workloads' addresses;
        and every virtual service workload's address."""
        def index() -> tuple[dict[str, set[str]], frozenset[str]]:
            by_identity: dict[str, set[str]] = {}
            for deployment in self.deployments:
                caller = self.service(deployment.service)
                if caller is not None and caller.mesh == mesh:
                    by_identity.setdefault(caller.identity, set()).update(deployment.endpoints, deployment.starting)
            of_services = frozenset(a for addresses in by_identity.values() for a in addresses)
            for gateway in self.gateways:
                if gateway.mesh == mesh:
                    by_identity.setdefault(gateway.identity, set()).update(gateway.endpoints)
            return by_identity, of_services
        return self.memo(("addresses by identity", mesh), index)

    def lasting(self, key: Hashable, compute: Callable[[], T]) -> T:
        """Like :meth:`memo`, for values that depend on ``key`` alone, never on the rest of the configuration:
        also reused from the configuration this one replaced (:meth:`carry_from`), if that one used it.

        A route change rebuilt every cluster of the mesh (2,000 at call-all) though only one service's
        routes changed; the clusters are a function of their destination, which ``key`` holds.
        """
        if key not in self._lasting:
            self._lasting[key] = self._carried[key] if key in self._carried else compute()
        value: T = self._lasting[key]
        return value

    def carry_from(self, older: MeshConfig) -> None:
        """Let :meth:`lasting` reuse what ``older`` (the configuration this one replaces) made and used.
        Only what ``older`` used is carried, so nothing outlives two configurations unused."""
        self._carried.clear()
        self._carried.update(older._lasting)

    def memo(self, key: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, once per configuration and ``key``: for values derived from it by pure functions.

        The configuration never changes, so a derived value never goes stale; it lives as long as the
        configuration (one build). ``key`` must name the function and its other arguments.
        """
        if key not in self._memo:
            self._memo[key] = compute()
        value: T = self._memo[key]
        return value
