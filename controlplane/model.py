"""The nine kinds of ``servicemesh.oci.oracle.com/v1beta1`` as typed, frozen values.

Every spec field of the OCI Service Mesh API is here (camelCase on the wire, snake_case inside), with
the constraints of OSOK's CRD schemas, so that the parser, our CRDs and the validators agree by
construction (see :mod:`meshplane.controlplane.wire`). The OCI-only fields (``compartmentId``,
``certificateAuthorities``, ``freeformTags``, ``definedTags``) are accepted and carried but not
required: meshplane runs its own CA and has no compartments.

Cross-field and cross-object rules (ref-or-id one-of, immutability, the mTLS floor …) are not here;
they live in :mod:`meshplane.controlplane.validation`, which works on these values.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Generic, TypeVar

from meshplane.controlplane import wire
from meshplane.controlplane.problems import Problem, error
from meshplane.controlplane.wire import FrozenMap, f

API_GROUP = "servicemesh.oci.oracle.com"
API_VERSION = f"{API_GROUP}/v1beta1"

# Shared constraint sets (spec §2.1).
OCID: dict[str, Any] = {"min_length": 1, "max_length": 255}
NAME: dict[str, Any] = {"min_length": 1, "max_length": 255}
PORT: dict[str, Any] = {"minimum": 1, "maximum": 65535, "fmt": "int32"}
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


# ------------------------------------------------------------------------------------------- enums


class MtlsMode(enum.StrEnum):
    DISABLED = "DISABLED"
    PERMISSIVE = "PERMISSIVE"
    STRICT = "STRICT"

    @property
    def level(self) -> int:
        """DISABLED < PERMISSIVE < STRICT: the order every floor comparison uses."""
        return _MTLS_LEVEL[self]


_MTLS_LEVEL = {MtlsMode.DISABLED: 0, MtlsMode.PERMISSIVE: 1, MtlsMode.STRICT: 2}


class RoutingPolicyType(enum.StrEnum):
    UNIFORM = "UNIFORM"
    DENY = "DENY"


class ServiceDiscoveryType(enum.StrEnum):
    DNS = "DNS"
    DISABLED = "DISABLED"


class ListenerProtocol(enum.StrEnum):
    HTTP = "HTTP"
    HTTP2 = "HTTP2"
    GRPC = "GRPC"
    TCP = "TCP"
    TLS_PASSTHROUGH = "TLS_PASSTHROUGH"


class IngressProtocol(enum.StrEnum):
    HTTP = "HTTP"
    TCP = "TCP"
    TLS_PASSTHROUGH = "TLS_PASSTHROUGH"


class IngressTlsMode(enum.StrEnum):
    DISABLED = "DISABLED"
    PERMISSIVE = "PERMISSIVE"
    TLS = "TLS"
    MUTUAL_TLS = "MUTUAL_TLS"


class PathType(enum.StrEnum):
    PREFIX = "PREFIX"


class Action(enum.StrEnum):
    ALLOW = "ALLOW"


class ServiceType(enum.StrEnum):
    LOAD_BALANCER = "LoadBalancer"
    NODE_PORT = "NodePort"
    CLUSTER_IP = "ClusterIP"


class ConditionType(enum.StrEnum):
    DEPENDENCIES_ACTIVE = "ServiceMeshDependenciesActive"
    CONFIGURED = "ServiceMeshConfigured"
    ACTIVE = "ServiceMeshActive"


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


# ------------------------------------------------------------------------------------ shared types


@dataclass(frozen=True)
class ResourceRef:
    """A reference to another object by name; the namespace defaults to the referrer's."""

    name: str = f(**NAME, doc="Name of the referenced object.")
    namespace: str | None = f(None, min_length=1, doc="Namespace of the referenced object; defaults to the referrer's.")


@dataclass(frozen=True)
class RefOrId:
    """Exactly one of ``ref`` (an object in the cluster) or ``id`` (its OCID-style identifier)."""

    ref: ResourceRef | None = None
    id: str | None = f(None, **OCID)


@dataclass(frozen=True)
class AccessLogging:
    """Access logging of the proxies of this deployment or gateway."""

    is_enabled: bool | None = None


Tags = FrozenMap[str]
DefinedTags = FrozenMap[FrozenMap[str]]


# -------------------------------------------------------------------------------------------- Mesh


@dataclass(frozen=True)
class CertificateAuthority:
    """An OCI certificate authority (carried; meshplane issues certificates from its own CA)."""

    id: str = f(**OCID)


@dataclass(frozen=True)
class MeshMtls:
    """The mTLS floor of the mesh: every virtual service must use at least this mode."""

    minimum: MtlsMode = f(doc="DISABLED: any mode; PERMISSIVE: PERMISSIVE or STRICT; STRICT: STRICT only.")


@dataclass(frozen=True)
class MeshSpec:
    """A Mesh: the trust domain and mTLS floor shared by its virtual services and gateways."""

    compartment_id: str | None = f(None, **OCID)
    display_name: str | None = f(None, **NAME)
    description: str | None = f(None, max_length=400)
    certificate_authorities: tuple[CertificateAuthority, ...] = f((), min_items=1, max_items=1)
    mtls: MeshMtls | None = None
    freeform_tags: Tags = f(FrozenMap())
    defined_tags: DefinedTags = f(FrozenMap())


# -------------------------------------------------------------------------------- VirtualService


@dataclass(frozen=True)
class DefaultRoutingPolicy:
    """How traffic is routed when the virtual service has no route table."""

    type: RoutingPolicyType = f(doc="UNIFORM spreads traffic evenly over the deployments; DENY routes nothing.")


@dataclass(frozen=True)
class VirtualServiceMtlsSpec:
    """The mTLS mode of the virtual service; at least the mesh minimum."""

    mode: MtlsMode = f(doc="DISABLED: plaintext; PERMISSIVE: mTLS or plaintext; STRICT: mTLS only.")


@dataclass(frozen=True)
class VirtualServiceSpec:
    """A VirtualService: a name callers use, served by one or more virtual deployments."""

    mesh: RefOrId
    compartment_id: str | None = f(None, **OCID)
    name: str | None = f(None, **NAME)
    description: str | None = f(None, max_length=400)
    default_routing_policy: DefaultRoutingPolicy | None = None
    hosts: tuple[str, ...] = f((), doc="DNS names callers use; a '*.' prefix wildcard is allowed.")
    mtls: VirtualServiceMtlsSpec | None = None
    freeform_tags: Tags = f(FrozenMap())
    defined_tags: DefinedTags = f(FrozenMap())


# ----------------------------------------------------------------------------- VirtualDeployment


@dataclass(frozen=True)
class ServiceDiscovery:
    """How callers find this deployment's pods: a DNS hostname, or none."""

    type: ServiceDiscoveryType = f(doc="DNS: the deployment is reachable under hostname; DISABLED: it serves nothing.")
    hostname: str | None = f(None, doc="The DNS name of this deployment's pods; required with DNS.")


@dataclass(frozen=True)
class Listener:
    """A port the application listens on, and its protocol."""

    protocol: ListenerProtocol
    port: int = f(**PORT, doc="The port the application listens on.")
    request_timeout_in_ms: int | None = f(None, minimum=0, fmt="int64", doc="Upstream response timeout; default "
                                          "15 s for HTTP and HTTP2, none for GRPC; 0 disables it.")
    idle_timeout_in_ms: int | None = f(None, minimum=0, fmt="int64", doc="Longest idle time of a stream; 0 disables.")


@dataclass(frozen=True)
class VirtualDeploymentSpec:
    """A VirtualDeployment: one version of a virtual service, with its listeners."""

    virtual_service: RefOrId
    compartment_id: str | None = f(None, **OCID)
    name: str | None = f(None, **NAME)
    description: str | None = f(None, max_length=400)
    service_discovery: ServiceDiscovery | None = None
    listeners: tuple[Listener, ...] = f((), wire="listener", max_items=10)
    access_logging: AccessLogging | None = None
    freeform_tags: Tags = f(FrozenMap())
    defined_tags: DefinedTags = f(FrozenMap())


# ---------------------------------------------------------------------- VirtualServiceRouteTable


@dataclass(frozen=True)
class VirtualDeploymentTarget:
    """A destination of a route rule: a virtual deployment, its relative weight and port."""

    virtual_deployment: RefOrId
    weight: int = f(minimum=0, maximum=100, doc="Relative share of the rule's traffic.")
    port: int | None = f(None, **PORT, doc="The listener port to target; every destination of a rule uses the same.")


@dataclass(frozen=True)
class VsHttpRoute:
    """HTTP, HTTP/2 and gRPC traffic, matched by path prefix and optionally by gRPC content type."""

    destinations: tuple[VirtualDeploymentTarget, ...] = f(min_items=1, max_items=15)
    path: str | None = f(None, doc="Path prefix to match; omitted matches every path.")
    path_type: PathType | None = None
    is_grpc: bool = f(False, doc="Match only gRPC requests (content-type application/grpc).")
    request_timeout_in_ms: int | None = f(None, minimum=0, fmt="int64", doc="Overrides the listener's timeout; "
                                          "0 disables it.")


@dataclass(frozen=True)
class VsTcpRoute:
    """TCP traffic to the virtual service."""

    destinations: tuple[VirtualDeploymentTarget, ...] = f(min_items=1, max_items=15)


@dataclass(frozen=True)
class VsTlsPassthroughRoute:
    """TLS traffic forwarded without termination."""

    destinations: tuple[VirtualDeploymentTarget, ...] = f(min_items=1, max_items=15)


@dataclass(frozen=True)
class VirtualServiceRouteRule:
    """Exactly one of httpRoute, tcpRoute or tlsPassthroughRoute."""

    http_route: VsHttpRoute | None = None
    tcp_route: VsTcpRoute | None = None
    tls_passthrough_route: VsTlsPassthroughRoute | None = None


@dataclass(frozen=True)
class VirtualServiceRouteTableSpec:
    """A VirtualServiceRouteTable: ordered rules splitting a virtual service's traffic."""

    virtual_service: RefOrId
    route_rules: tuple[VirtualServiceRouteRule, ...] = f(min_items=1, max_items=15)
    compartment_id: str | None = f(None, **OCID)
    name: str | None = f(None, **NAME)
    description: str | None = f(None, max_length=400)
    priority: int | None = f(None, doc="Lower values are evaluated first.")
    freeform_tags: Tags = f(FrozenMap())
    defined_tags: DefinedTags = f(FrozenMap())


# ---------------------------------------------------------------------------------- AccessPolicy


@dataclass(frozen=True)
class AllVirtualServices:
    """Every virtual service of the mesh."""


@dataclass(frozen=True)
class HttpExternalService:
    """Plain HTTP to hosts outside the mesh, by Host header."""

    hostnames: tuple[str, ...] = f(min_items=1, max_items=10, doc="Host names; '*.' prefix wildcards; '*' is any.")
    ports: tuple[int, ...] = f((), max_items=10, **PORT, doc="Allowed ports; empty allows every port.")


@dataclass(frozen=True)
class HttpsExternalService:
    """TLS to hosts outside the mesh, by SNI."""

    hostnames: tuple[str, ...] = f(min_items=1, max_items=10, doc="SNI names; '*.' prefix wildcards; '*' is any.")
    ports: tuple[int, ...] = f((), max_items=10, **PORT, doc="Allowed ports; empty allows every port.")


@dataclass(frozen=True)
class TcpExternalService:
    """TCP to addresses outside the mesh, by CIDR."""

    ip_addresses: tuple[str, ...] = f(min_items=1, max_items=10, doc="Destinations in CIDR notation.")
    ports: tuple[int, ...] = f((), max_items=10, **PORT, doc="Allowed ports; empty allows every port.")


@dataclass(frozen=True)
class ExternalService:
    """Exactly one of httpExternalService, httpsExternalService or tcpExternalService."""

    http_external_service: HttpExternalService | None = None
    https_external_service: HttpsExternalService | None = None
    tcp_external_service: TcpExternalService | None = None


@dataclass(frozen=True)
class TrafficTarget:
    """Exactly one kind of source or destination of an access policy rule."""

    all_virtual_services: AllVirtualServices | None = None
    virtual_service: RefOrId | None = None
    ingress_gateway: RefOrId | None = None
    external_service: ExternalService | None = None


@dataclass(frozen=True)
class AccessPolicyRule:
    """Allow traffic from a source to a destination."""

    action: Action
    source: TrafficTarget
    destination: TrafficTarget


@dataclass(frozen=True)
class AccessPolicySpec:
    """An AccessPolicy: rules that allow traffic; everything else in the mesh is denied."""

    mesh: RefOrId
    rules: tuple[AccessPolicyRule, ...] = f(min_items=1, max_items=50)
    compartment_id: str | None = f(None, **OCID)
    name: str | None = f(None, **NAME)
    description: str | None = f(None, max_length=400)
    freeform_tags: Tags = f(FrozenMap())
    defined_tags: DefinedTags = f(FrozenMap())


# -------------------------------------------------------------------------------- IngressGateway


@dataclass(frozen=True)
class OciTlsCertificate:
    """A certificate held in OCI Certificates."""

    certificate_id: str = f(**OCID)


@dataclass(frozen=True)
class KubeSecretTlsCertificate:
    """A kubernetes.io/tls Secret (tls.crt, tls.key)."""

    secret_name: str


@dataclass(frozen=True)
class TlsCertificate:
    """Exactly one source of a server certificate."""

    oci_tls_certificate: OciTlsCertificate | None = None
    kube_secret_tls_certificate: KubeSecretTlsCertificate | None = None


@dataclass(frozen=True)
class OciCaBundle:
    """A CA bundle held in OCI Certificates."""

    ca_bundle_id: str = f(**OCID)


@dataclass(frozen=True)
class KubeSecretCaBundle:
    """A Secret holding ca.crt."""

    secret_name: str


@dataclass(frozen=True)
class CaBundle:
    """Exactly one source of a trusted CA bundle."""

    oci_ca_bundle: OciCaBundle | None = None
    kube_secret_ca_bundle: KubeSecretCaBundle | None = None


@dataclass(frozen=True)
class ClientValidation:
    """How client certificates are verified."""

    trusted_ca_bundle: CaBundle | None = None
    subject_alternate_names: tuple[str, ...] = f((), max_items=10, doc="Accept only client certificates with one "
                                                 "of these names.")


@dataclass(frozen=True)
class IngressListenerTls:
    """TLS on a gateway listener."""

    mode: IngressTlsMode = f(doc="DISABLED: plaintext; PERMISSIVE: plaintext or TLS; TLS: TLS only; "
                                 "MUTUAL_TLS: TLS with a client certificate.")
    server_certificate: TlsCertificate | None = None
    client_validation: ClientValidation | None = None


@dataclass(frozen=True)
class IngressGatewayListener:
    """A port the gateway listens on."""

    protocol: IngressProtocol
    port: int = f(**PORT, doc="The gateway's container port; at least 1024.")
    tls: IngressListenerTls | None = None


@dataclass(frozen=True)
class IngressGatewayHost:
    """A named set of hostnames and the listeners that serve them."""

    name: str = f(**NAME, doc="Route tables attach to the host by this name.")
    listeners: tuple[IngressGatewayListener, ...] = f(min_items=1, max_items=10)
    hostnames: tuple[str, ...] = f((), max_items=10, doc="Host names served; '*.' prefix wildcards. Required "
                                   "for HTTP and TLS_PASSTHROUGH listeners.")


@dataclass(frozen=True)
class IngressGatewaySpec:
    """An IngressGateway: how traffic from outside enters the mesh."""

    mesh: RefOrId
    hosts: tuple[IngressGatewayHost, ...] = f(min_items=1, max_items=5)
    compartment_id: str | None = f(None, **OCID)
    name: str | None = f(None, **NAME)
    description: str | None = f(None, max_length=400)
    access_logging: AccessLogging | None = None
    freeform_tags: Tags = f(FrozenMap())
    defined_tags: DefinedTags = f(FrozenMap())


# ---------------------------------------------------------------------- IngressGatewayRouteTable


@dataclass(frozen=True)
class IngressGatewayHostRef:
    """A host of the gateway, by name, and optionally one of its listener ports."""

    name: str = f(**NAME, doc="The name of a host of the gateway.")
    port: int | None = f(None, **PORT, doc="Only that host's listener on this port; omitted means all of them.")


@dataclass(frozen=True)
class VirtualServiceTarget:
    """The virtual service a gateway rule sends traffic to."""

    virtual_service: RefOrId
    weight: int | None = f(None, minimum=0, maximum=100)
    port: int | None = f(None, **PORT)


@dataclass(frozen=True)
class IgHttpRoute:
    """HTTP traffic entering through the gateway."""

    destinations: tuple[VirtualServiceTarget, ...] = f(min_items=1, max_items=1)
    ingress_gateway_host: IngressGatewayHostRef | None = None
    path: str | None = None
    path_type: PathType | None = None
    is_grpc: bool = False
    is_host_rewrite_enabled: bool = f(False, doc="Rewrite the Host header to the destination's host name.")
    is_path_rewrite_enabled: bool = f(False, doc="Rewrite the matched path prefix to '/'.")
    request_timeout_in_ms: int | None = f(None, minimum=0, fmt="int64")


@dataclass(frozen=True)
class IgTcpRoute:
    """TCP traffic entering through the gateway."""

    destinations: tuple[VirtualServiceTarget, ...] = f(min_items=1, max_items=1)
    ingress_gateway_host: IngressGatewayHostRef | None = None


@dataclass(frozen=True)
class IgTlsPassthroughRoute:
    """TLS traffic entering through the gateway, forwarded by SNI without termination."""

    destinations: tuple[VirtualServiceTarget, ...] = f(min_items=1, max_items=1)
    ingress_gateway_host: IngressGatewayHostRef | None = None


@dataclass(frozen=True)
class IngressGatewayRouteRule:
    """Exactly one of httpRoute, tcpRoute or tlsPassthroughRoute."""

    http_route: IgHttpRoute | None = None
    tcp_route: IgTcpRoute | None = None
    tls_passthrough_route: IgTlsPassthroughRoute | None = None


@dataclass(frozen=True)
class IngressGatewayRouteTableSpec:
    """An IngressGatewayRouteTable: rules from gateway hosts to virtual services."""

    ingress_gateway: RefOrId
    route_rules: tuple[IngressGatewayRouteRule, ...] = f(min_items=1, max_items=15)
    compartment_id: str | None = f(None, **OCID)
    name: str | None = f(None, **NAME)
    description: str | None = f(None, max_length=400)
    priority: int | None = f(None, doc="Lower values are evaluated first.")
    freeform_tags: Tags = f(FrozenMap())
    defined_tags: DefinedTags = f(FrozenMap())


# ---------------------------------------------------------------------- VirtualDeploymentBinding


Quantities = FrozenMap[str]


@dataclass(frozen=True)
class ResourceRequirements:
    """Kubernetes container resources (cpu, memory …) as quantities."""

    limits: Quantities = f(FrozenMap(), int_or_string=True, pattern=QUANTITY_PATTERN)
    requests: Quantities = f(FrozenMap(), int_or_string=True, pattern=QUANTITY_PATTERN)


@dataclass(frozen=True)
class TargetService:
    """A core/v1 Service whose pods join the virtual deployment, narrowed by matchLabels."""

    ref: ResourceRef
    match_labels: Tags = f(FrozenMap(), doc="Pods must also carry these labels (one Service, several versions).")


@dataclass(frozen=True)
class BindingTarget:
    """What the binding applies to."""

    service: TargetService


@dataclass(frozen=True)
class VirtualDeploymentBindingSpec:
    """A VirtualDeploymentBinding: the pods of a Service become a virtual deployment's endpoints."""

    virtual_deployment: RefOrId
    target: BindingTarget
    resources: ResourceRequirements | None = None
    mount_certificate_chain_from_host: bool | None = f(None, doc="Mount the node's /etc/pki into the sidecar.")


# ---------------------------------------------------------------------- IngressGatewayDeployment


@dataclass(frozen=True)
class Autoscaling:
    """How many gateway pods run."""

    min_pods: int = f(minimum=1, fmt="int32")
    max_pods: int = f(minimum=1, fmt="int32")
    resources: ResourceRequirements | None = None


@dataclass(frozen=True)
class GatewayDeployment:
    """The gateway pods."""

    autoscaling: Autoscaling
    labels: Tags = f(FrozenMap())
    mount_certificate_chain_from_host: bool | None = None


@dataclass(frozen=True)
class GatewayPort:
    """A container port of the gateway and, optionally, the Service port that exposes it."""

    port: int = f(minimum=0, maximum=65535, fmt="int32")
    protocol: str = "TCP"
    service_port: int | None = f(None, wire="serviceport", minimum=0, maximum=65535, fmt="int32")
    name: str | None = None


@dataclass(frozen=True)
class GatewayService:
    """The Service in front of the gateway pods."""

    type: ServiceType
    labels: Tags = f(FrozenMap())
    annotations: Tags = f(FrozenMap())


@dataclass(frozen=True)
class SecretRef:
    """A Secret mounted into the gateway pods."""

    secret_name: str


@dataclass(frozen=True)
class IngressGatewayDeploymentSpec:
    """An IngressGatewayDeployment: the pods, Service and autoscaler that run a gateway."""

    ingress_gateway: RefOrId
    deployment: GatewayDeployment
    ports: tuple[GatewayPort, ...]
    service: GatewayService | None = None
    secrets: tuple[SecretRef, ...] = ()


# ---------------------------------------------------------------------------------------- status

DATE_TIME = "date-time"
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"


@dataclass(frozen=True)
class Condition:
    """One condition of a mesh object (spec §2.4)."""

    type: ConditionType
    status: ConditionStatus
    last_transition_time: str = f(fmt=DATE_TIME)
    reason: str = f(min_length=1, max_length=1024, pattern=REASON_PATTERN)
    message: str = f(max_length=32768)
    observed_generation: int | None = f(None, minimum=0, fmt="int64")


@dataclass(frozen=True)
class VirtualServiceMtlsStatus:
    """The effective mTLS mode of a virtual service and its certificate."""

    mode: MtlsMode
    certificate_id: str | None = f(None, **OCID)


@dataclass(frozen=True)
class IngressGatewayMtlsStatus:
    """The certificate a gateway presents to mesh services."""

    certificate_id: str = f(**OCID)


@dataclass(frozen=True)
class Status:
    """The status of every mesh kind (one shape for all nine, as in OSOK)."""

    mesh_id: str | None = f(None, **OCID)
    virtual_service_id: str | None = f(None, **OCID)
    virtual_service_name: str | None = f(None, **NAME)
    virtual_deployment_id: str | None = f(None, **OCID)
    virtual_deployment_name: str | None = f(None, **NAME)
    virtual_service_route_table_id: str | None = f(None, **OCID)
    access_policy_id: str | None = f(None, **OCID)
    ref_id_for_rules: tuple[FrozenMap[str], ...] = f((), **OCID)
    ingress_gateway_id: str | None = f(None, **OCID)
    ingress_gateway_name: str | None = f(None, **NAME)
    ingress_gateway_route_table_id: str | None = f(None, **OCID)
    virtual_service_id_for_rules: tuple[tuple[str, ...], ...] = f((), **OCID)
    virtual_deployment_id_for_rules: tuple[tuple[str, ...], ...] = f((), **OCID)
    mesh_mtls: MeshMtls | None = None
    virtual_service_mtls: VirtualServiceMtlsStatus | None = None
    ingress_gateway_mtls: IngressGatewayMtlsStatus | None = None
    conditions: tuple[Condition, ...] = ()
    opc_retry_token: str | None = None
    last_updated_time: str | None = f(None, fmt=DATE_TIME)


EMPTY_STATUS = Status()


# ------------------------------------------------------------------------------ kinds and objects


class Kind(enum.StrEnum):
    MESH = "Mesh"
    VIRTUAL_SERVICE = "VirtualService"
    VIRTUAL_DEPLOYMENT = "VirtualDeployment"
    VIRTUAL_SERVICE_ROUTE_TABLE = "VirtualServiceRouteTable"
    ACCESS_POLICY = "AccessPolicy"
    INGRESS_GATEWAY = "IngressGateway"
    INGRESS_GATEWAY_ROUTE_TABLE = "IngressGatewayRouteTable"
    VIRTUAL_DEPLOYMENT_BINDING = "VirtualDeploymentBinding"
    INGRESS_GATEWAY_DEPLOYMENT = "IngressGatewayDeployment"


@dataclass(frozen=True)
class KindInfo:
    """What every layer needs to know about a kind besides its spec fields."""

    kind: Kind
    plural: str
    spec: type
    id_field: str | None  # the status field holding the object's own identifier
    ocid_type: str | None  # the resource-type part of that identifier
    backed: bool  # has the Configured condition (OSOK: backed by a control-plane object)

    @property
    def singular(self) -> str:
        return self.kind.value.lower()

    @property
    def conditions(self) -> tuple[ConditionType, ...]:
        """The kind's conditions in OSOK's index order, which the printer columns address by position."""
        if self.backed:
            return (ConditionType.DEPENDENCIES_ACTIVE, ConditionType.CONFIGURED, ConditionType.ACTIVE)
        return (ConditionType.DEPENDENCIES_ACTIVE, ConditionType.ACTIVE)


KINDS: Mapping[Kind, KindInfo] = {
    info.kind: info
    for info in (
        KindInfo(Kind.MESH, "meshes", MeshSpec, "mesh_id", "mesh", True),
        KindInfo(Kind.VIRTUAL_SERVICE, "virtualservices", VirtualServiceSpec, "virtual_service_id",
                 "meshvirtualservice", True),
        KindInfo(Kind.VIRTUAL_DEPLOYMENT, "virtualdeployments", VirtualDeploymentSpec, "virtual_deployment_id",
                 "meshvirtualdeployment", True),
        KindInfo(Kind.VIRTUAL_SERVICE_ROUTE_TABLE, "virtualserviceroutetables", VirtualServiceRouteTableSpec,
                 "virtual_service_route_table_id", "meshvirtualserviceroutetable", True),
        KindInfo(Kind.ACCESS_POLICY, "accesspolicies", AccessPolicySpec, "access_policy_id", "meshaccesspolicy", True),
        KindInfo(Kind.INGRESS_GATEWAY, "ingressgateways", IngressGatewaySpec, "ingress_gateway_id",
                 "meshingressgateway", True),
        KindInfo(Kind.INGRESS_GATEWAY_ROUTE_TABLE, "ingressgatewayroutetables", IngressGatewayRouteTableSpec,
                 "ingress_gateway_route_table_id", "meshingressgatewayroutetable", True),
        KindInfo(Kind.VIRTUAL_DEPLOYMENT_BINDING, "virtualdeploymentbindings", VirtualDeploymentBindingSpec,
                 None, None, False),
        KindInfo(Kind.INGRESS_GATEWAY_DEPLOYMENT, "ingressgatewaydeployments", IngressGatewayDeploymentSpec,
                 None, None, False),
    )
}


@dataclass(frozen=True, order=True)
class ObjectKey:
    """The identity of an object: kind, namespace and name."""

    kind: Kind
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind.value} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class Metadata:
    """The parts of Kubernetes object metadata meshplane reads; the rest is Kubernetes' business."""

    name: str
    namespace: str
    uid: str = ""
    generation: int = 0
    resource_version: str = ""
    labels: Tags = FrozenMap()
    annotations: Tags = FrozenMap()
    finalizers: tuple[str, ...] = ()
    creation_timestamp: str | None = None
    deletion_timestamp: str | None = None


S = TypeVar("S")


@dataclass(frozen=True)
class MeshObject(Generic[S]):
    """One object of one of the nine kinds."""

    kind: Kind
    metadata: Metadata
    spec: S
    status: Status = EMPTY_STATUS

    @cached_property
    def key(self) -> ObjectKey:
        """Made once per object (objects are immutable): keys are looked up and hashed on every pass."""
        return ObjectKey(self.kind, self.metadata.namespace, self.metadata.name)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace

    @property
    def deleting(self) -> bool:
        return self.metadata.deletion_timestamp is not None


Mesh = MeshObject[MeshSpec]
VirtualService = MeshObject[VirtualServiceSpec]
VirtualDeployment = MeshObject[VirtualDeploymentSpec]
VirtualServiceRouteTable = MeshObject[VirtualServiceRouteTableSpec]
AccessPolicy = MeshObject[AccessPolicySpec]
IngressGateway = MeshObject[IngressGatewaySpec]
IngressGatewayRouteTable = MeshObject[IngressGatewayRouteTableSpec]
VirtualDeploymentBinding = MeshObject[VirtualDeploymentBindingSpec]
IngressGatewayDeployment = MeshObject[IngressGatewayDeploymentSpec]
AnyObject = MeshObject[Any]


# -------------------------------------------------------------------------------------- parsing

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DEFAULT_NAMESPACE = "default"


def parse_object(raw: Any) -> tuple[AnyObject | None, list[Problem]]:
    """Parse one manifest of a mesh kind. The object is returned only when nothing is wrong with it.

    ``apiVersion`` and ``kind`` must name one of the nine kinds; ``metadata`` is read leniently (it
    belongs to Kubernetes) but its name and namespace must be valid; ``spec`` and ``status`` are
    parsed strictly, so an unknown or misspelt field is an error naming its path.
    """
    if not isinstance(raw, Mapping):
        return None, [error("", "a manifest must be a YAML/JSON object")]
    kind, problems = _parse_type(raw)
    metadata, meta_problems = parse_metadata(raw.get("metadata"))
    problems += meta_problems
    known = {"apiVersion", "kind", "metadata", "spec", "status"}
    problems += [error(str(k), "unknown top-level field") for k in raw if k not in known]
    if kind is None:
        return None, problems
    if raw.get("spec") is None:
        problems.append(error("spec", "required field is missing"))
        return None, problems
    spec, spec_problems = wire.parse(KINDS[kind].spec, raw.get("spec"), "spec")
    status, status_problems = wire.parse(Status, raw.get("status") or {}, "status")
    problems += spec_problems + status_problems
    if problems or metadata is None or status is None:
        return None, problems
    return MeshObject(kind, metadata, spec, status), []


def _parse_type(raw: Mapping[str, Any]) -> tuple[Kind | None, list[Problem]]:
    api_version, kind = raw.get("apiVersion"), raw.get("kind")
    problems = []
    if api_version != API_VERSION:
        problems.append(error("apiVersion", f"must be {API_VERSION}; got {api_version!r}"))
    if not isinstance(kind, str) or kind not in {k.value for k in Kind}:
        allowed = ", ".join(k.value for k in Kind)
        problems.append(error("kind", f"must be one of {allowed}; got {kind!r}"))
        return None, problems
    return Kind(kind), problems


def parse_metadata(raw: Any) -> tuple[Metadata | None, list[Problem]]:
    """Read the metadata fields meshplane uses; names must be valid Kubernetes names."""
    if not isinstance(raw, Mapping):
        return None, [error("metadata", "required object with at least a name is missing")]
    problems: list[Problem] = []
    name = raw.get("name")
    namespace = raw.get("namespace") or DEFAULT_NAMESPACE
    if not isinstance(name, str) or not name:
        problems.append(error("metadata.name", "required field is missing"))
    elif len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        problems.append(error("metadata.name", f"{name!r} is not a valid name: use lowercase letters, digits, "
                                               "'-' and '.', starting and ending with a letter or digit"))
    if not isinstance(namespace, str) or len(namespace) > 63 or not _DNS_LABEL.fullmatch(namespace):
        problems.append(error("metadata.namespace", f"{namespace!r} is not a valid namespace name"))
    labels = _string_map(raw.get("labels"), "metadata.labels", problems)
    annotations = _string_map(raw.get("annotations"), "metadata.annotations", problems)
    generation = raw.get("generation") or 0
    if not isinstance(generation, int):
        problems.append(error("metadata.generation", "must be an integer"))
    finalizers = raw.get("finalizers") or ()
    if not isinstance(finalizers, list | tuple) or not all(isinstance(x, str) for x in finalizers):
        problems.append(error("metadata.finalizers", "must be a list of strings"))
    if problems:
        return None, problems
    return Metadata(
        name=str(name), namespace=str(namespace), uid=str(raw.get("uid") or ""), generation=int(generation),
        resource_version=str(raw.get("resourceVersion") or ""), labels=labels, annotations=annotations,
        finalizers=tuple(str(x) for x in finalizers), creation_timestamp=_opt_str(raw.get("creationTimestamp")),
        deletion_timestamp=_opt_str(raw.get("deletionTimestamp")),
    ), []


def _string_map(raw: Any, path: str, problems: list[Problem]) -> Tags:
    if raw is None:
        return FrozenMap()
    if not isinstance(raw, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        problems.append(error(path, "must map strings to strings (quote values such as \"true\" or \"1\")"))
        return FrozenMap()
    return FrozenMap(raw)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def dump_object(obj: AnyObject) -> dict[str, Any]:
    """The manifest form of an object (metadata limited to what meshplane keeps)."""
    meta: dict[str, Any] = {"name": obj.metadata.name, "namespace": obj.metadata.namespace}
    for key, value in (("labels", obj.metadata.labels), ("annotations", obj.metadata.annotations)):
        if value:
            meta[key] = dict(value)
    if obj.metadata.generation:
        meta["generation"] = obj.metadata.generation
    if obj.metadata.uid:
        meta["uid"] = obj.metadata.uid
    out: dict[str, Any] = {"apiVersion": API_VERSION, "kind": obj.kind.value, "metadata": meta}
    out["spec"] = wire.dump(obj.spec)
    status = wire.dump(obj.status)
    if status:
        out["status"] = status
    return out
