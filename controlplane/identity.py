"""Names the data plane knows objects by: IR keys and SPIFFE identities (architecture §4).

Pure and tiny, shared by the build and the access-policy resolution so that the identity a
certificate carries and the identity a policy admits are made by one function.
"""

from __future__ import annotations

from meshplane.controlplane import ir
from meshplane.controlplane.model import AnyObject


def key_of(obj: AnyObject) -> str:
    """An object's IR key: ``namespace/name``."""
    return f"{obj.namespace}/{obj.name}"


def trust_domain(mesh: AnyObject) -> str:
    """The mesh's SPIFFE trust domain: ``<name>.<namespace>.mesh.local``."""
    return f"{mesh.name}.{mesh.namespace}.mesh.local"


def service_identity(domain: str, vs: AnyObject) -> str:
    """The SPIFFE ID of a virtual service's proxies.

    Per virtual service, not per deployment, because OCI issues certificates per virtual service: a
    canary's new version is the same service to its callers and to access policies.
    """
    return ir.service_identity(domain, vs.namespace, vs.name)


def gateway_identity(domain: str, gateway: AnyObject) -> str:
    """The SPIFFE ID of an ingress gateway's proxies (a source access policies can name)."""
    return ir.gateway_identity(domain, gateway.namespace, gateway.name)
