"""Benchmark: parsing, validating and computing the status of a synthetic mesh. Prints JSON.

The mesh has S virtual services, each with two virtual deployments (v1, v2), a 90/10 route table,
two bindings and an access-policy rule from the previous service; plus one Mesh. Times are the best of
``--repeat`` runs, in seconds, for the whole mesh.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from meshplane.controlplane.model import AnyObject, parse_object
from meshplane.controlplane.status import compute_status
from meshplane.controlplane.validation import validate
from meshplane.controlplane.world import Index, KubeService

GROUP = "servicemesh.oci.oracle.com/v1beta1"


def _doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": GROUP, "kind": kind, "metadata": {"name": name, "namespace": "bench"}, "spec": spec}


def synthetic_mesh(services: int) -> list[dict[str, Any]]:
    """Manifests of a mesh with ``services`` virtual services (10 objects per service, plus the Mesh)."""
    docs = [_doc("Mesh", "m", {"mtls": {"minimum": "PERMISSIVE"}})]
    for i in range(services):
        vs = f"svc-{i}"
        docs.append(_doc("VirtualService", vs, {"mesh": {"ref": {"name": "m"}}, "hosts": [f"{vs}.bench"],
                                                "mtls": {"mode": "STRICT"}}))
        for version in ("v1", "v2"):
            docs.append(_doc("VirtualDeployment", f"{vs}-{version}", {
                "virtualService": {"ref": {"name": vs}}, "listener": [{"protocol": "HTTP", "port": 8080}],
                "serviceDiscovery": {"type": "DNS", "hostname": f"{vs}-{version}.bench"}}))
            docs.append(_doc("VirtualDeploymentBinding", f"{vs}-{version}", {
                "virtualDeployment": {"ref": {"name": f"{vs}-{version}"}},
                "target": {"service": {"ref": {"name": vs}, "matchLabels": {"version": version}}}}))
        docs.append(_doc("VirtualServiceRouteTable", vs, {"virtualService": {"ref": {"name": vs}}, "routeRules": [
            {"httpRoute": {"path": "/", "pathType": "PREFIX", "destinations": [
                {"virtualDeployment": {"ref": {"name": f"{vs}-v1"}}, "weight": 90, "port": 8080},
                {"virtualDeployment": {"ref": {"name": f"{vs}-v2"}}, "weight": 10, "port": 8080}]}}]}))
        source = f"svc-{i - 1}" if i else vs
        docs.append(_doc("AccessPolicy", vs, {"mesh": {"ref": {"name": "m"}}, "rules": [
            {"action": "ALLOW", "source": {"virtualService": {"ref": {"name": source}}},
             "destination": {"virtualService": {"ref": {"name": vs}}}}]}))
    return docs


def best(repeat: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000, help="virtual services in the mesh (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per phase; the best is reported (default 3)")
    args = parser.parse_args()
    docs = synthetic_mesh(args.services)
    objects: list[AnyObject] = []

    def parse_all() -> None:
        objects[:] = [obj for obj in (parse_object(d)[0] for d in docs) if obj is not None]

    parse_s = best(args.repeat, parse_all)
    assert len(objects) == len(docs), "every synthetic manifest parses"
    services = [KubeService("bench", f"svc-{i}") for i in range(args.services)]
    world = Index(objects, services)
    validate_s = best(args.repeat, lambda: [validate(None, o, world) for o in objects])
    status_s = best(args.repeat, lambda: compute_status(world, now="2026-01-01T00:00:00Z"))
    print(json.dumps({
        "benchmark": "model", "services": args.services, "objects": len(objects),
        "parse_s": round(parse_s, 4), "validate_s": round(validate_s, 4), "status_s": round(status_s, 4),
        "parse_us_per_object": round(parse_s / len(objects) * 1e6, 1),
        "validate_us_per_object": round(validate_s / len(objects) * 1e6, 1),
        "status_us_per_object": round(status_s / len(objects) * 1e6, 1),
    }))


if __name__ == "__main__":
    main()
