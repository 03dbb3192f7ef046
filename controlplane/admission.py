"""The admission webhooks' view of a standalone control plane: its config directory, state and CA.

:class:`StandaloneAdmission` implements :class:`meshplane.injector.webhook.AdmissionContext` over the
objects ``meshplane serve`` accepted from its config directory, the core Services and Namespaces in
the same directory, and its state directory (where proxies' xDS credentials are issued). So injection
and validation answer exactly as they will in Kubernetes mode, without a cluster.

Bindings are resolved here, not in the injector: the virtual deployment a binding names (its key and
OCID), its target Service (namespace defaulting to the binding's; its selector; whether it exists),
and whether the binding is active — all its conditions True, as the status engine last computed them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshplane.controlplane import xdsauth
from meshplane.controlplane.configdir import ConfigDir
from meshplane.controlplane.identity import key_of
from meshplane.controlplane.model import AnyObject, Kind
from meshplane.controlplane.status import is_ready
from meshplane.controlplane.world import World, id_of, resolve
from meshplane.injector import inject
from meshplane.injector.ca import CertificateAuthority

SECRET_PREFIX = "meshplane-proxy-"


@dataclass
class StandaloneAdmission:
    """What the webhooks read from a running standalone control plane."""

    source: ConfigDir
    state_dir: Path
    injection: inject.Settings | None
    xds_server_name: str  # the name or address the proxies' TLS checks on the control plane's certificate
    _ca: CertificateAuthority | None = field(default=None, init=False, repr=False)

    def world(self) -> World:
        return self.source.world

    def namespace_labels(self, namespace: str) -> Mapping[str, str] | None:
        return self.source.namespaces.get(namespace)

    def bindings(self) -> Sequence[inject.Binding]:
        world = self.source.world
        return [binding_of(world, vdb) for vdb in world.objects(Kind.VIRTUAL_DEPLOYMENT_BINDING)]

    def settings(self) -> inject.Settings | None:
        return self.injection

    def issue_credentials(self, node_id: str, deployment: str) -> str:
        """Issue the proxy's xDS client credentials under ``<state-dir>/proxies/<node id>/``.

        In Kubernetes mode these files become the Secret the patch mounts; standalone, a sidecar's
        agent is pointed at the folder itself. Thread-safe: every file is written atomically, and the
        CA (loaded once, on first use) only signs.
        """
        if self._ca is None:
            self._ca = xdsauth.authority(self.state_dir)
        xdsauth.issue_proxy(self.state_dir, node_id, deployment, self.xds_server_name, ca=self._ca)
        return secret_name(node_id)


def secret_name(node_id: str) -> str:
    """The Secret holding a proxy's credentials: a DNS subdomain name derived from its node id."""
    return SECRET_PREFIX + re.sub(r"[^a-z0-9.-]", "-", node_id.lower())[:200]


def binding_of(world: World, vdb: AnyObject) -> inject.Binding:
    """A VirtualDeploymentBinding resolved for the injector (an unresolved deployment leaves key and id empty)."""
    vd = resolve(world, vdb.spec.virtual_deployment, Kind.VIRTUAL_DEPLOYMENT, vdb.namespace)
    target = vdb.spec.target.service
    namespace = target.ref.namespace or vdb.namespace
    service = world.service(namespace, target.ref.name)
    deployment_id = (id_of(vd) if vd is not None else None) or vdb.status.virtual_deployment_id or ""
    return inject.Binding(
        key=key_of(vdb), deployment=key_of(vd) if vd is not None else "", deployment_id=deployment_id,
        service_namespace=namespace, service_found=service is not None,
        selector=dict(service.selector) if service is not None else {}, match_labels=dict(target.match_labels),
        resources=_resources(vdb), mount_pki=bool(vdb.spec.mount_certificate_chain_from_host),
        active=vd is not None and is_ready(vdb))


def _resources(vdb: AnyObject) -> dict[str, Any] | None:
    resources = vdb.spec.resources
    if resources is None:
        return None
    return {"limits": dict(resources.limits), "requests": dict(resources.requests)}
