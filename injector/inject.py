"""Sidecar injection as pure functions: which binding a pod joins, and the JSON patch that injects it.

The webhook (``injector/webhook.py``) owns the I/O: it decodes the AdmissionReview, reads the namespace,
lists VirtualDeploymentBindings and resolves each into a ``Binding``, issues the proxy's credentials Secret,
and answers. It calls two functions here, which read values and return values (no I/O, no clock, no CA),
never change their input, and give the same answer for the same input:

* ``choose(pod, namespace, namespace_labels, bindings) -> Decision`` — spec §4.2 steps 1-3;
* ``mutate(pod, binding, settings, node_id=..., credentials_secret=...) -> [RFC 6902 op, ...]`` — spec §4.3,
  or ``InjectionError`` when the pod must be refused (the message names the offending field).

``injection_enabled`` and ``selects`` are public because the controllers that evict un-injected pods
(spec §3.8 step 3, §4.4) must apply exactly the same label matrix and binding match.

Choosing — meshplane's decisions:

* The label matrix is OSOK's, value for value and case-sensitive: only ``enabled`` and ``disabled`` mean
  anything. Under an ``enabled`` namespace a pod is injected when its label is absent, empty or
  ``enabled`` (so ``true`` or ``Enabled`` opts the pod *out*); under ``disabled`` only ``enabled`` opts in.
  ``namespace_labels=None`` (the caller does not know the namespace) reads as unlabelled: never injected.
  Whether an unknown namespace should rather refuse the pod is the webhook's call, made before this one.
* ``hostNetwork`` pods are skipped: their iptables are the node's (openservicemesh/osm#4359).
* A pod with a container named ``oci-sm-proxy`` (in ``containers`` or ``initContainers``) is skipped, so
  injecting is idempotent: an injected pod, re-submitted or copied, is left alone.
* Bindings are tried in the caller's order and the first that selects the pod decides (OSOK; overlapping
  bindings are undefined, spec §8.10). If that binding is not active the pod is skipped rather than tried
  against later bindings, which would put it into a virtual deployment it was not meant for.
* A Service with an empty selector selects no pod (Kubernetes: a selector-less Service has no pods of its
  own). OSOK would match every pod of the namespace and inject sidecars into unrelated workloads.

Mutating — meshplane's decisions (beyond spec §4.3, which is followed as written):

* App probes (``startupProbe``/``readinessProbe``/``livenessProbe`` of every container but the proxy)
  that are ``httpGet`` or ``tcpSocket`` become an HTTP GET to ``:15010/healthproxy``; the proxy runs the
  real check from inside the pod, since capture and mTLS would break the kubelet's. Timing fields are
  kept; so are the app's own ``httpHeaders``, except any named ``Mesh-User-*`` (ours), and the four
  ``Mesh-User-*`` headers follow them. A missing scheme is ``http`` (Kubernetes' default), a missing host
  ``localhost`` (the proxy shares the pod's network), a missing path ``""``. A named port is resolved
  through the container's ``ports``; one that names no port refuses the pod (OSOK passes the name on,
  which the proxy could never dial). ``grpc`` and ``exec`` probes are untouched: exec runs in the
  container, but a gRPC probe goes through inbound capture, so under STRICT mTLS list its port in
  ``meshplane.io/exclude-inbound-ports``. Init containers' probes are untouched too: restartable init
  containers start before the proxy, and a probe through it would never pass.
* The sidecar is appended after the app's containers (OSOK). The app is not held until the proxy has its
  configuration (lessons §3.2, istio#11130); the sidecar's readinessProbe (``/health`` on 15010, ours)
  keeps the pod out of Service endpoints until the proxy is healthy. Job pods never complete while the
  sidecar runs (istio#11045): a known limitation until native sidecars.
* The sidecar runs as root so its agent can start Envoy as ``PROXY_UID`` (1337), the uid iptables exempts
  from capture. It gets ``MESHPLANE_NODE_ID`` (its xDS node id) and ``MESHPLANE_DEPLOYMENT`` (the virtual
  deployment's ``<namespace>/<name>``) besides OSOK's environment.
* Credentials: the Secret ``credentials_secret`` is mounted read-only at ``/etc/meshplane/proxy`` in the
  sidecar only, files mode 0400, so only its agent (root) reads them — not Envoy (1337), not the app.
* ``resources`` of the binding replace the defaults whole (even ``{}``, as OSOK's non-nil pointer does);
  only ``limits`` and ``requests`` are copied, quantities written as strings (the API's canonical form).
* The init container ``init`` is appended after the app's init containers: those run before capture is
  installed, so they reach the network directly. After it, capture is on and the proxy (a regular
  container) is not running yet, so their traffic would go to a closed port.
* Its command: ``meshplane iptables --proxy-uid 1337 --inbound-port 15003 --outbound-port 15001``, then
  ``--exclude-inbound-ports`` (always 15000, 15006 and 15010 — admin, stats scrapes and the kubelet's
  probes reach the proxy itself — plus ``meshplane.io/exclude-inbound-ports``), ``--exclude-outbound-ports``
  and ``--exclude-outbound-cidrs`` (only when their annotations list something) and always
  ``--include-outbound-cidrs`` (the annotation, or ``0.0.0.0/0``). Annotations are comma-separated
  lists; blanks around items are ignored; ports are 1-65535 (no ranges), written sorted and de-duplicated;
  CIDRs (IPv4 or IPv6; a bare address is a /32 or /128) are normalised (host bits cleared) and
  de-duplicated in the given order. Bad syntax, or an include annotation listing nothing, refuses the pod.
  ``CONFIGURE_IP_TABLES`` and ``ENVOY_PORT=15000`` stay in its environment for image compatibility with
  OCI's injector; meshplane's init reads its flags. It adds ``NET_RAW`` besides ``NET_ADMIN`` (iptables
  needs raw sockets on some kernels).
* Names we add must be free: a pod that already has a container or init container named ``init`` or
  ``oci-sm-proxy``, or a volume named ``meshplane-proxy`` (or ``pki`` when it is mounted), is refused with
  a message saying so — better than a patched pod the API server rejects for duplicate names.
* Patch shape: arrays and maps absent (or null) in the pod are added whole, present ones are appended to
  with ``/-`` or extended key by key (``~`` → ``~0``, ``/`` → ``~1`` in keys, RFC 6901). ``add`` on an
  existing annotation replaces it (RFC 6902 §4.1), so a stale copied binding annotation is corrected.
  Probes are replaced whole. Operation order: probes, init container, sidecar, volumes, annotations.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BINDING_ANNOTATION",
    "CREDENTIALS_MOUNT",
    "DEPLOYMENT_ANNOTATION",
    "EXCLUDE_INBOUND_PORTS",
    "EXCLUDE_OUTBOUND_CIDRS",
    "EXCLUDE_OUTBOUND_PORTS",
    "INCLUDE_OUTBOUND_CIDRS",
    "INIT_CONTAINER",
    "INJECTION_LABEL",
    "LOG_LEVEL_ANNOTATION",
    "PROXY_CONTAINER",
    "PROXY_UID",
    "Binding",
    "Decision",
    "InjectionError",
    "Settings",
    "choose",
    "injection_enabled",
    "json_pointer_token",
    "mutate",
    "selects",
]

PROXY_CONTAINER = "oci-sm-proxy"
INIT_CONTAINER = "init"
PROXY_UID = 1337  # the sidecar's Envoy runs as this uid; iptables exempts it
INJECTION_LABEL = "servicemesh.oci.oracle.com/sidecar-injection"
LOG_LEVEL_ANNOTATION = "servicemesh.oci.oracle.com/proxy-log-level"
BINDING_ANNOTATION = "servicemesh.oci.oracle.com/virtual-deployment-binding-ref"
DEPLOYMENT_ANNOTATION = "servicemesh.oci.oracle.com/virtual-deployment-ocid"
CREDENTIALS_MOUNT = "/etc/meshplane/proxy"

# Capture tuning (meshplane's own pod annotations; comma-separated lists, see the module docstring).
EXCLUDE_OUTBOUND_PORTS = "meshplane.io/exclude-outbound-ports"  # "5432,6379": the app dials these directly
EXCLUDE_OUTBOUND_CIDRS = "meshplane.io/exclude-outbound-cidrs"  # "169.254.169.254/32,...": never captured
INCLUDE_OUTBOUND_CIDRS = "meshplane.io/include-outbound-cidrs"  # only these are captured; default 0.0.0.0/0
EXCLUDE_INBOUND_PORTS = "meshplane.io/exclude-inbound-ports"  # "9090": reach the app without the proxy

ENABLED = "enabled"
DISABLED = "disabled"
ADMIN_PORT = 15000  # Envoy admin, loopback only
OUTBOUND_PORT = 15001
INBOUND_PORT = 15003
STATS_PORT = 15006
HEALTH_PORT = 15010
ALWAYS_EXCLUDED_INBOUND_PORTS = (ADMIN_PORT, STATS_PORT, HEALTH_PORT)
DEFAULT_INCLUDE_OUTBOUND_CIDRS = "0.0.0.0/0"
HEALTH_PATH = "/health"
HEALTH_PROXY_PATH = "/healthproxy"
LIVENESS_INITIAL_DELAY_SECONDS = 5
LOG_LEVELS = ("debug", "info", "warn", "error", "off")
DEFAULT_LOG_LEVEL = "error"
CREDENTIALS_VOLUME = "meshplane-proxy"
CREDENTIALS_MODE = 0o400
PKI_VOLUME = "pki"
PKI_PATH = "/etc/pki"
DEFAULT_REQUESTS = (("cpu", "100m"), ("memory", "128Mi"))
DEFAULT_LIMITS = (("cpu", "2000m"), ("memory", "1024Mi"))
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
MESH_USER_HEADERS = ("Mesh-User-Scheme", "Mesh-User-Host", "Mesh-User-Port", "Mesh-User-Path")
_PORT = re.compile(r"[0-9]{1,5}")

Op = dict[str, Any]


class InjectionError(ValueError):
    """The pod must be refused; the message names the offending field and says what to change."""


@dataclass(frozen=True)
class Settings:
    """What the operator configured for every injected pod."""

    image: str  # SIDECAR_IMAGE: runs both the init container and the sidecar
    xds_address: str  # HOST:PORT the sidecar's agent dials
    mds_endpoint: str | None = None  # passed to the proxy as MDS_ENDPOINT when set


@dataclass(frozen=True)
class Binding:
    """A VirtualDeploymentBinding, resolved by the caller (its Service looked up, its status read)."""

    key: str  # "<namespace>/<name>" of the VDB
    deployment: str  # the virtual deployment's key "<namespace>/<name>"
    deployment_id: str  # the virtual deployment's OCID (env DEPLOYMENT_ID)
    service_namespace: str  # target Service namespace (defaults to the VDB's, resolved by the caller)
    service_found: bool  # the target Service exists
    selector: Mapping[str, str]  # the Service's spec.selector
    match_labels: Mapping[str, str]  # the VDB's target.service.matchLabels
    resources: Mapping[str, Any] | None  # VDB spec.resources as Kubernetes JSON {"limits": {...}, "requests": {...}}
    mount_pki: bool  # spec.mountCertificateChainFromHost
    active: bool  # the VDB is active (its conditions all True)


@dataclass(frozen=True)
class Decision:
    """What to do with a pod: inject it for ``binding``, or (``binding is None``) leave it alone."""

    binding: Binding | None
    reason: str  # why, in words for logs


# ------------------------------------------------------------------------------------------- reading


def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a JSON object, else an empty one (absent and ``null`` read alike)."""
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else []


def _spec(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(pod.get("spec"))


def _labels(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(_mapping(pod.get("metadata")).get("labels"))


def _annotations(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    return _mapping(_mapping(pod.get("metadata")).get("annotations"))


def _container_names(pod: Mapping[str, Any]) -> set[str]:
    """Names of every container of the pod; Kubernetes keeps them unique across all three lists."""
    spec = _spec(pod)
    lists = (_list(spec.get(key)) for key in ("containers", "initContainers", "ephemeralContainers"))
    return {str(_mapping(c).get("name")) for containers in lists for c in containers}


# ------------------------------------------------------------------------------------------ choosing


def injection_enabled(namespace_value: str | None, pod_value: str | None) -> bool:
    """Spec §4.2's matrix: the namespace label value and the pod label value (``None`` when absent).

    Exact, case-sensitive values as in OSOK; an empty pod label counts as absent.
    """
    if namespace_value == ENABLED:
        return pod_value in (None, "", ENABLED)
    return namespace_value == DISABLED and pod_value == ENABLED


def selects(binding: Binding, namespace: str, pod_labels: Mapping[str, str]) -> bool:
    """Whether ``binding`` claims a pod of ``namespace`` carrying ``pod_labels`` (spec §4.2 step 2).

    The Service must be in the pod's namespace and exist, and the pod must carry every ``matchLabels`` and
    every selector label; an empty selector selects nothing (see the module docstring).
    """
    return (binding.service_namespace == namespace and binding.service_found and bool(binding.selector)
            and _carries(pod_labels, binding.match_labels) and _carries(pod_labels, binding.selector))


def _carries(labels: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    return all(key in labels and labels[key] == value for key, value in wanted.items())


def _label_refusal(namespace: str, namespace_labels: Mapping[str, str], pod: Mapping[str, Any]) -> str | None:
    """Why the label matrix leaves the pod alone, or ``None`` when it allows injection."""
    namespace_value = namespace_labels.get(INJECTION_LABEL)
    if namespace_value is None:
        return f"namespace {namespace} is not labelled {INJECTION_LABEL}"
    pod_value = _labels(pod).get(INJECTION_LABEL)
    if injection_enabled(namespace_value, pod_value):
        return None
    pod_has = "no such label" if pod_value is None else f"label {INJECTION_LABEL}={pod_value!r}"
    return f"namespace {namespace} is labelled {INJECTION_LABEL}={namespace_value!r} and the pod has {pod_has}"


def _ineligibility(pod: Mapping[str, Any], namespace: str, namespace_labels: Mapping[str, str] | None) -> str | None:
    """Why no binding is even considered (labels, host network, already injected), or ``None``."""
    by_labels = _label_refusal(namespace, namespace_labels or {}, pod)
    if by_labels is not None:
        return by_labels
    if _spec(pod).get("hostNetwork") is True:
        return "the pod uses the host network: capturing its traffic would capture the node's"
    if PROXY_CONTAINER in _container_names(pod):
        return f"the pod already has a container named {PROXY_CONTAINER}"
    return None


def choose(pod: Mapping[str, Any], namespace: str, namespace_labels: Mapping[str, str] | None,
           bindings: Sequence[Binding]) -> Decision:
    """The binding to inject ``pod`` (in ``namespace``) for, or why it is left alone (spec §4.2 steps 1-3).

    ``namespace`` is the request's: a pod being created may not carry ``metadata.namespace`` yet. The first
    binding in ``bindings`` that ``selects`` the pod decides; an inactive one skips the pod.
    """
    ineligible = _ineligibility(pod, namespace, namespace_labels)
    if ineligible is not None:
        return Decision(None, ineligible)
    labels = _labels(pod)
    binding = next((b for b in bindings if selects(b, namespace, labels)), None)
    if binding is None:
        return Decision(None, f"no VirtualDeploymentBinding selects the pod in namespace {namespace}")
    if not binding.active:
        return Decision(None, f"VirtualDeploymentBinding {binding.key} selects the pod but is not active yet")
    return Decision(binding, f"VirtualDeploymentBinding {binding.key} selects the pod")


# ------------------------------------------------------------------------------------ probe rewriting


def _container_ref(index: int, container: Mapping[str, Any]) -> str:
    return f"spec.containers[{index}] ({container.get('name')})"


def _resolve_port(port: Any, container: Mapping[str, Any], where: str) -> str:
    """A probe's port as a number: named ports are looked up in the container's ``ports``.

    A digit string is taken as a number, as the kubelet does; anything else that names no port refuses
    the pod, because the proxy could not know where to send the check.
    """
    if isinstance(port, int) and not isinstance(port, bool):
        return str(port)
    for declared in _list(container.get("ports")):
        declared = _mapping(declared)
        if isinstance(port, str) and declared.get("name") == port and "containerPort" in declared:
            return str(declared["containerPort"])
    if isinstance(port, str) and _PORT.fullmatch(port):
        return str(int(port))
    raise InjectionError(f"{where}: port {port!r} is neither a number nor the name of one of the container's "
                         "ports; name the port in the container's ports or use its number")


def _mesh_user_headers(probe: Mapping[str, Any], container: Mapping[str, Any], where: str) -> list[dict[str, str]]:
    """The four headers telling the proxy's ``/healthproxy`` which check to run."""
    if isinstance(probe.get("httpGet"), Mapping):
        action = probe["httpGet"]
        scheme, path = str(action.get("scheme") or "HTTP").lower(), str(action.get("path") or "")
    else:
        action, scheme, path = probe["tcpSocket"], "tcp", ""
    host = str(action.get("host") or "localhost")
    port = _resolve_port(action.get("port"), container, where)
    values = (scheme, host, port, path)
    return [{"name": name, "value": value} for name, value in zip(MESH_USER_HEADERS, values, strict=True)]


def _app_headers(probe: Mapping[str, Any]) -> list[Any]:
    """The app's own probe headers, minus any that claim our ``Mesh-User-*`` names."""
    ours = {name.lower() for name in MESH_USER_HEADERS}
    headers = _list(_mapping(probe.get("httpGet")).get("httpHeaders"))
    return [copy.deepcopy(h) for h in headers if str(_mapping(h).get("name", "")).lower() not in ours]


def build_health_proxy_probe(probe: Mapping[str, Any], container: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``probe`` pointed at the proxy's ``/healthproxy``, carrying the original check in headers.

    Every field but the handler (timings, thresholds) is kept as it was.
    """
    headers = _app_headers(probe) + _mesh_user_headers(probe, container, where)
    kept = {key: copy.deepcopy(value) for key, value in probe.items() if key not in ("httpGet", "tcpSocket")}
    http_get = {"path": HEALTH_PROXY_PATH, "port": HEALTH_PORT, "scheme": "HTTP", "httpHeaders": headers}
    return {"httpGet": http_get, **kept}


def _rewritable(probe: Any) -> bool:
    probe = _mapping(probe)
    return isinstance(probe.get("httpGet"), Mapping) or isinstance(probe.get("tcpSocket"), Mapping)


def rewrite_probes(pod: Mapping[str, Any]) -> list[Op]:
    """``replace`` operations for every httpGet/tcpSocket probe of the app containers."""
    ops: list[Op] = []
    for index, container in enumerate(_list(_spec(pod).get("containers"))):
        container = _mapping(container)
        if container.get("name") == PROXY_CONTAINER:
            continue
        for kind in PROBES:
            if _rewritable(container.get(kind)):
                where = f"{_container_ref(index, container)}.{kind}"
                probe = build_health_proxy_probe(container[kind], container, where)
                ops.append({"op": "replace", "path": f"/spec/containers/{index}/{kind}", "value": probe})
    return ops


# -------------------------------------------------------------------------------- reading annotations


def proxy_log_level(annotations: Mapping[str, Any]) -> str:
    """``PROXY_LOG_LEVEL``: the annotation lower-cased, ``error`` without it; other values refuse the pod."""
    raw = annotations.get(LOG_LEVEL_ANNOTATION)
    if raw is None:
        return DEFAULT_LOG_LEVEL
    level = str(raw).lower()
    if level not in LOG_LEVELS:
        raise InjectionError(f"metadata.annotations[{LOG_LEVEL_ANNOTATION}]: invalid proxy log level {raw!r}; "
                             f"use one of {', '.join(LOG_LEVELS)}")
    return level


def _list_items(annotations: Mapping[str, Any], key: str) -> list[str] | None:
    """The comma-separated items of annotation ``key`` (blanks dropped), ``None`` without the annotation."""
    raw = annotations.get(key)
    return None if raw is None else [item.strip() for item in str(raw).split(",") if item.strip()]


def _ports(annotations: Mapping[str, Any], key: str) -> list[int]:
    """Ports listed in annotation ``key``, sorted and de-duplicated; each must be 1-65535."""
    ports = set()
    for item in _list_items(annotations, key) or []:
        if not _PORT.fullmatch(item) or not 1 <= int(item) <= 65535:
            raise InjectionError(f"metadata.annotations[{key}]: {item!r} is not a port (1-65535); "
                                 'list ports separated by commas, e.g. "5432,6379"')
        ports.add(int(item))
    return sorted(ports)


def _cidrs(annotations: Mapping[str, Any], key: str) -> list[str] | None:
    """CIDRs listed in annotation ``key``, normalised, de-duplicated in order; ``None`` without it."""
    items = _list_items(annotations, key)
    if items is None:
        return None
    networks: list[str] = []
    for item in items:
        try:
            network = str(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise InjectionError(f"metadata.annotations[{key}]: {item!r} is not a CIDR; list CIDRs separated by "
                                 'commas, e.g. "10.0.0.0/8,fd00::/8"') from None
        if network not in networks:
            networks.append(network)
    return networks


def _include_cidrs(annotations: Mapping[str, Any]) -> list[str]:
    cidrs = _cidrs(annotations, INCLUDE_OUTBOUND_CIDRS)
    if cidrs is None:
        return [DEFAULT_INCLUDE_OUTBOUND_CIDRS]
    if not cidrs:
        raise InjectionError(f"metadata.annotations[{INCLUDE_OUTBOUND_CIDRS}]: lists no CIDR; remove the annotation "
                             f"to capture all outbound traffic ({DEFAULT_INCLUDE_OUTBOUND_CIDRS})")
    return cidrs


def _joined(items: Iterable[object]) -> str:
    return ",".join(str(item) for item in items)


def capture_arguments(annotations: Mapping[str, Any]) -> list[str]:
    """The ``meshplane iptables`` flags the capture annotations ask for (see the module docstring)."""
    inbound = sorted({*ALWAYS_EXCLUDED_INBOUND_PORTS, *_ports(annotations, EXCLUDE_INBOUND_PORTS)})
    arguments = ["--exclude-inbound-ports", _joined(inbound)]
    if outbound := _ports(annotations, EXCLUDE_OUTBOUND_PORTS):
        arguments += ["--exclude-outbound-ports", _joined(outbound)]
    if excluded := _cidrs(annotations, EXCLUDE_OUTBOUND_CIDRS):
        arguments += ["--exclude-outbound-cidrs", _joined(excluded)]
    return [*arguments, "--include-outbound-cidrs", _joined(_include_cidrs(annotations))]


# ------------------------------------------------------------------------------------------ building


def _env(name: str, value: str) -> dict[str, Any]:
    return {"name": name, "value": value}


def _env_field(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def build_sidecar_env(binding: Binding, settings: Settings, log_level: str, node_id: str) -> list[dict[str, Any]]:
    """OSOK's proxy environment (spec §4.3), then meshplane's node id and virtual deployment."""
    env = [_env("DEPLOYMENT_ID", binding.deployment_id), _env("PROXY_LOG_LEVEL", log_level),
           _env_field("IP_ADDRESS", "status.podIP"), _env_field("POD_IP", "status.podIP"),
           _env_field("POD_UID", "metadata.uid"), _env_field("POD_NAME", "metadata.name"),
           _env_field("POD_NAMESPACE", "metadata.namespace")]
    if settings.mds_endpoint:
        env.append(_env("MDS_ENDPOINT", settings.mds_endpoint))
    return [*env, _env("MESHPLANE_NODE_ID", node_id), _env("MESHPLANE_DEPLOYMENT", binding.deployment)]


def build_resources(resources: Mapping[str, Any] | None) -> dict[str, Any]:
    """The binding's ``limits``/``requests`` verbatim (quantities as strings), or the defaults without it."""
    if resources is None:
        return {"requests": dict(DEFAULT_REQUESTS), "limits": dict(DEFAULT_LIMITS)}
    return {kind: {name: str(quantity) for name, quantity in _mapping(resources[kind]).items()}
            for kind in ("limits", "requests") if kind in resources}


def _health_probe(**timing: int) -> dict[str, Any]:
    return {"httpGet": {"path": HEALTH_PATH, "port": HEALTH_PORT}, **timing}


def build_volume_mounts(binding: Binding) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [{"name": CREDENTIALS_VOLUME, "mountPath": CREDENTIALS_MOUNT, "readOnly": True}]
    if binding.mount_pki:
        mounts.append({"name": PKI_VOLUME, "mountPath": PKI_PATH, "readOnly": True})
    return mounts


def build_sidecar(binding: Binding, settings: Settings, log_level: str, node_id: str) -> dict[str, Any]:
    """The ``oci-sm-proxy`` container: the agent, which starts Envoy as ``PROXY_UID``."""
    return {
        "name": PROXY_CONTAINER,
        "image": settings.image,
        "command": ["meshplane", "proxy", "--credentials", CREDENTIALS_MOUNT, "--xds-address", settings.xds_address],
        "ports": [{"containerPort": STATS_PORT, "name": "stats"}],
        "env": build_sidecar_env(binding, settings, log_level, node_id),
        "resources": build_resources(binding.resources),
        "livenessProbe": _health_probe(initialDelaySeconds=LIVENESS_INITIAL_DELAY_SECONDS),
        "readinessProbe": _health_probe(),
        "securityContext": {"privileged": False, "runAsUser": 0, "runAsGroup": 0, "runAsNonRoot": False,
                            "readOnlyRootFilesystem": False},
        "volumeMounts": build_volume_mounts(binding),
    }


def build_init_container(settings: Settings, capture: Sequence[str]) -> dict[str, Any]:
    """The ``init`` container: installs the pod's iptables capture, then exits."""
    command = ["meshplane", "iptables", "--proxy-uid", str(PROXY_UID), "--inbound-port", str(INBOUND_PORT),
               "--outbound-port", str(OUTBOUND_PORT), *capture]
    return {
        "name": INIT_CONTAINER,
        "image": settings.image,
        "command": command,
        "env": [_env("CONFIGURE_IP_TABLES", "true"), _env("ENVOY_PORT", str(ADMIN_PORT)),
                _env_field("POD_IP", "status.podIP")],
        "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}, "privileged": False, "runAsUser": 0,
                            "runAsGroup": 0, "runAsNonRoot": False},
    }


def build_volumes(binding: Binding, credentials_secret: str) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": CREDENTIALS_VOLUME, "secret": {"secretName": credentials_secret, "defaultMode": CREDENTIALS_MODE}}]
    if binding.mount_pki:
        volumes.append({"name": PKI_VOLUME, "hostPath": {"path": PKI_PATH}})
    return volumes


# ------------------------------------------------------------------------------------------ patching


def json_pointer_token(key: str) -> str:
    """``key`` as one JSON Pointer reference token (RFC 6901): ``~`` → ``~0`` first, then ``/`` → ``~1``."""
    return key.replace("~", "~0").replace("/", "~1")


def _append(owner: Mapping[str, Any], path: str, key: str, items: Sequence[Any]) -> list[Op]:
    """Operations appending ``items`` to the array ``owner[key]`` at ``path``, adding it whole when absent."""
    if isinstance(owner.get(key), list):
        return [{"op": "add", "path": f"{path}/-", "value": item} for item in items]
    return [{"op": "add", "path": path, "value": list(items)}]


def _set_annotations(pod: Mapping[str, Any], entries: Mapping[str, str]) -> list[Op]:
    """Operations setting ``entries`` among the pod's annotations, adding the map (or metadata) when absent."""
    metadata = pod.get("metadata")
    if not isinstance(metadata, Mapping):
        return [{"op": "add", "path": "/metadata", "value": {"annotations": dict(entries)}}]
    if not isinstance(metadata.get("annotations"), Mapping):
        return [{"op": "add", "path": "/metadata/annotations", "value": dict(entries)}]
    return [{"op": "add", "path": f"/metadata/annotations/{json_pointer_token(key)}", "value": value}
            for key, value in entries.items()]


def _require_free_names(pod: Mapping[str, Any], binding: Binding) -> None:
    """Refuse a pod that already uses a container or volume name injection adds."""
    hint = f"rename it, or opt the pod out with the label {INJECTION_LABEL}={DISABLED}"
    if taken := sorted(_container_names(pod) & {INIT_CONTAINER, PROXY_CONTAINER}):
        raise InjectionError(f"spec: the pod already has a container named {taken[0]!r}, which injection adds; {hint}")
    volumes = {str(_mapping(v).get("name")) for v in _list(_spec(pod).get("volumes"))}
    if taken := sorted(volumes & {v["name"] for v in build_volumes(binding, "")}):
        raise InjectionError(f"spec.volumes: the pod already has a volume named {taken[0]!r}, which injection adds; "
                             f"{hint}")


def mutate(pod: Mapping[str, Any], binding: Binding, settings: Settings, *, node_id: str,
           credentials_secret: str) -> list[dict[str, Any]]:
    """RFC 6902 operations that turn ``pod`` into the injected pod (spec §4.3 and the module docstring).

    Raises ``InjectionError`` when the pod must be refused: an invalid log level or capture annotation, a
    probe port naming no port, a name injection needs already taken, or no ``spec``. The operations share
    no objects with ``pod``, which is never changed.
    """
    spec = pod.get("spec")
    if not isinstance(spec, Mapping):
        raise InjectionError("spec: the pod has no spec")
    annotations = _annotations(pod)
    log_level = proxy_log_level(annotations)
    init = build_init_container(settings, capture_arguments(annotations))
    _require_free_names(pod, binding)
    return [
        *rewrite_probes(pod),
        *_append(spec, "/spec/initContainers", "initContainers", [init]),
        *_append(spec, "/spec/containers", "containers", [build_sidecar(binding, settings, log_level, node_id)]),
        *_append(spec, "/spec/volumes", "volumes", build_volumes(binding, credentials_secret)),
        *_set_annotations(pod, {BINDING_ANNOTATION: binding.key, DEPLOYMENT_ANNOTATION: binding.deployment_id}),
    ]
