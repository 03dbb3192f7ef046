"""What a standalone sidecar's bootstrap says, checked against the mesh before Envoy starts.

:func:`bootstrap_spec` turns ``meshplane bootstrap`` arguments into a :class:`BootstrapSpec`, refusing
with a :class:`BootstrapError` that says what to do when they cannot work: the virtual deployment is
not served, a listener has no application port (explicit capture must know where to forward), an
application port collides with a listener or with a port the sidecar keeps for itself. It also issues
the proxy's xDS client certificate (see :mod:`xdsauth`), so the bootstrap reaches the control plane
over mutual TLS.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Sequence
from pathlib import Path

from meshplane.controlplane import ir, state, xdsauth
from meshplane.xds import names
from meshplane.xds.bootstrap import BootstrapSpec


class BootstrapError(ValueError):
    """The arguments cannot produce a working sidecar; the message says why and what to do."""


def bootstrap_spec(*, state_dir: Path, xds_address: str, deployment: str, pod_ip: str, app_ports: Sequence[str],
                   admin_port: int, node_id: str | None, delta: bool, wait: float = 0.0) -> BootstrapSpec:
    """The bootstrap of one sidecar. ``wait`` seconds are allowed for a control plane that is just starting
    (or a deployment just added to its config directory) to show up in the state directory."""
    host, port = parse_address(xds_address, "--xds-address")
    _check_ip(pod_ip)
    listeners = _listeners_when_served(state_dir, deployment, wait)
    mapping = _app_ports(app_ports, listeners, pod_ip)
    namespace, _, name = deployment.partition("/")
    node = node_id or f"{name}.{namespace}-{pod_ip}"
    metadata = {
        names.META_DEPLOYMENT: deployment,
        names.META_ADDRESS: pod_ip,
        names.META_CAPTURE: ir.Capture.EXPLICIT.value,
        # strings: protobuf Struct keeps numbers as doubles, which come back as "19080.0" from YAML
        names.META_APP_PORTS: {str(k): str(v) for k, v in sorted(mapping.items())},
    }
    tls = xdsauth.issue_proxy(state_dir, node, deployment, host)
    return BootstrapSpec(node, deployment, metadata, host, port, admin_port=admin_port, delta=delta, tls=tls,
                         source_address=pod_ip, stats_host=pod_ip, stats_port=names.STATS_PORT,
                         stats_tags=((names.TAG_PROXY_DEPLOYMENT, deployment),))


def parse_address(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise BootstrapError(f"{flag} must be HOST:PORT, e.g. 127.0.0.1:15012; got {value!r}")
    return host.strip("[]"), int(port)


def _check_ip(pod_ip: str) -> None:
    try:
        ipaddress.ip_address(pod_ip)
    except ValueError:
        raise BootstrapError(f"--pod-ip must be an IP address, e.g. 127.0.0.11; got {pod_ip!r}") from None


def _listeners_when_served(state_dir: Path, deployment: str, wait: float) -> dict[int, str]:
    deadline = time.monotonic() + wait
    while True:
        try:
            return _listeners(state_dir, deployment)
        except BootstrapError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.1)


def _listeners(state_dir: Path, deployment: str) -> dict[int, str]:
    served = state.read_deployments(state_dir)
    if served is None:
        raise BootstrapError(f"no mesh state in {state_dir}: start `meshplane serve --state-dir {state_dir}` first")
    if "/" not in deployment:
        raise BootstrapError(f"--virtual-deployment must be NAMESPACE/NAME; got {deployment!r}")
    if deployment not in served:
        known = ", ".join(sorted(served)) or "none"
        raise BootstrapError(f"virtual deployment {deployment} is not served by the control plane (served: {known});"
                             " check it with `meshplane validate`")
    return served[deployment]


def _app_ports(values: Sequence[str], listeners: dict[int, str], pod_ip: str) -> dict[int, int]:
    mapping: dict[int, int] = {}
    for value in values:
        left, sep, right = value.partition("=")
        if not sep or not left.isdigit() or not right.isdigit():
            raise BootstrapError(f"--app-port must be LISTENER_PORT=APP_PORT, e.g. 9080=19080; got {value!r}")
        mapping[int(left)] = int(right)
    missing = sorted(set(listeners) - set(mapping))
    if missing:
        hint = " ".join(f"--app-port {p}=<port>" for p in missing)
        raise BootstrapError(f"listener port(s) {missing} of the deployment need an application port: add {hint}")
    unknown = sorted(set(mapping) - set(listeners))
    if unknown:
        raise BootstrapError(f"--app-port given for {unknown}, which the deployment does not listen on "
                             f"(its listeners: {sorted(listeners)})")
    for listener, app in mapping.items():
        clash = app in listeners or app in names.SIDECAR_PORTS or listener in names.SIDECAR_PORTS
        if clash:
            raise BootstrapError(f"port {listener}={app} collides with a listener or a sidecar port "
                                 f"({sorted(names.SIDECAR_PORTS)}) on {pod_ip}: pick another application port")
    return mapping


def gateway_spec(*, state_dir: Path, xds_address: str, gateway: str, pod_ip: str, admin_port: int,
                 node_id: str | None, delta: bool, wait: float = 0.0) -> BootstrapSpec:
    """The bootstrap of an ingress gateway proxy (explicit capture: it listens on the gateway's ports at
    ``pod_ip``). The gateway must be served; its credentials are issued for the gateway, not a deployment."""
    host, port = parse_address(xds_address, "--xds-address")
    _check_ip(pod_ip)
    deadline = time.monotonic() + wait
    while gateway not in (state.read_gateways(state_dir) or {}):
        if time.monotonic() >= deadline:
            known = ", ".join(sorted(state.read_gateways(state_dir) or {})) or "none"
            raise BootstrapError(f"ingress gateway {gateway} is not served by the control plane (served: {known}); "
                                 "check it with `meshplane validate`")
        time.sleep(0.1)
    namespace, _, name = gateway.partition("/")
    node = node_id or f"{name}.{namespace}-{pod_ip}"
    metadata = {names.META_GATEWAY: gateway, names.META_ADDRESS: pod_ip, names.META_CAPTURE: ir.Capture.EXPLICIT.value}
    tls = xdsauth.issue_proxy(state_dir, node, f"{xdsauth.GATEWAY_CLAIM}{gateway}", host)
    return BootstrapSpec(node, gateway, metadata, host, port, admin_port=admin_port, delta=delta, tls=tls,
                         source_address=pod_ip, stats_host=pod_ip, stats_port=names.STATS_PORT,
                         stats_tags=((names.TAG_PROXY_GATEWAY, gateway),))
