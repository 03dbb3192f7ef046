"""Benchmark: xDS configuration size per proxy, with access-policy scoping and without. Prints JSON.

The mesh has N virtual services ``svc-i`` (host ``svc-i.bench.svc.cluster.local``), each with one
virtual deployment (HTTP on 8080, DNS discovery, no route table: UNIFORM) and one connected workload;
plus one Mesh. It is built twice, differing only in its access policies:

* ``scoped``: one AccessPolicy per service ``svc-i`` allowing calls from ``svc-(i-1)`` … ``svc-(i-K)``
  (mod N), so each service may call exactly K others (``svc-(i+1)`` … ``svc-(i+K)``);
* ``allow_all``: one rule from ``allVirtualServices`` to ``allVirtualServices``: every service may call
  every service, and every proxy is told about every service (what Istio sends by default).

For a sample of proxies (``--sample`` evenly spaced, all of them when N ≤ 100) the proxy's resources
are translated as the control plane serves them: the outbound part shared by the proxies of one
virtual service (``translate_outbound``: routes, clusters, endpoints) plus its own (``translate_proxy``:
listeners, inbound cluster). Bytes are the deterministic protobuf serialisation of every resource, as
pushed over ADS; secrets are only counted (by the names resources refer to), since the CA issues them
and their size does not depend on the policies. ``outbound_ms_median`` is the median time of one
``translate_outbound`` call (one identity's shared part), without serialisation; ``build_s`` is one
``build`` of the whole mesh. ``ratio_bytes`` is allow_all's mean bytes per proxy over scoped's.
Nothing is assumed about the outcome: each variant is measured as translated.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from meshplane.controlplane import ir
from meshplane.controlplane.build import build
from meshplane.controlplane.model import AnyObject, parse_object
from meshplane.controlplane.serve import identity_of
from meshplane.controlplane.world import Index
from meshplane.xds import names
from meshplane.xds.translate import Built, mesh_of, translate_outbound, translate_proxy

GROUP = "servicemesh.oci.oracle.com/v1beta1"
NAMESPACE = "bench"
MESH = "bench"
COMPARTMENT = "ocid1.compartment.oc1..aaaa"
PORT, APP_PORT = 8080, 18080
VARIANTS = ("scoped", "allow_all")


def _doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": GROUP, "kind": kind, "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"compartmentId": COMPARTMENT, **spec}}


def _vs_target(name: str) -> dict[str, Any]:
    return {"virtualService": {"ref": {"name": name}}}


def callers_of(i: int, services: int, allowed: int) -> list[int]:
    """The services that may call ``svc-i`` when scoped: i-1 … i-allowed (mod N), without repeats."""
    return list(dict.fromkeys((i - d) % services for d in range(1, allowed + 1)))


def synthetic_mesh(services: int, allowed: int, variant: str, mtls: str) -> list[dict[str, Any]]:
    """Manifests of the mesh: the Mesh, a service and a deployment per service, then the policies."""
    docs = [_doc("Mesh", MESH, {"mtls": {"minimum": mtls}})]
    for i in range(services):
        vs = f"svc-{i}"
        docs.append(_doc("VirtualService", vs, {"mesh": {"ref": {"name": MESH}},
                                                "hosts": [f"{vs}.{NAMESPACE}.svc.cluster.local"],
                                                "defaultRoutingPolicy": {"type": "UNIFORM"}}))
        docs.append(_doc("VirtualDeployment", f"{vs}-v1", {
            "virtualService": {"ref": {"name": vs}}, "listener": [{"protocol": "HTTP", "port": PORT}],
            "serviceDiscovery": {"type": "DNS", "hostname": f"{vs}-v1.{NAMESPACE}.svc.cluster.local"}}))
    if variant == "allow_all":
        docs.append(_doc("AccessPolicy", "allow-all", {"mesh": {"ref": {"name": MESH}}, "rules": [
            {"action": "ALLOW", "source": {"allVirtualServices": {}}, "destination": {"allVirtualServices": {}}}]}))
    else:
        for i in range(services):
            rules = [{"action": "ALLOW", "source": _vs_target(f"svc-{j}"), "destination": _vs_target(f"svc-{i}")}
                     for j in callers_of(i, services, allowed)]
            docs.append(_doc("AccessPolicy", f"svc-{i}", {"mesh": {"ref": {"name": MESH}}, "rules": rules}))
    return docs


def workloads(services: int) -> list[ir.Workload]:
    """One connected proxy per deployment, each on its own loopback address (127.1.x.y)."""
    return [ir.Workload(f"svc-{i}-v1-0", f"{NAMESPACE}/svc-{i}-v1", f"127.1.{i // 254}.{i % 254 + 1}",
                        app_ports=((PORT, APP_PORT),)) for i in range(services)]


def parse(docs: list[dict[str, Any]]) -> list[AnyObject]:
    """Parse every manifest as the loaders do; the synthetic mesh must be free of errors."""
    objects = []
    for doc in docs:
        obj, problems = parse_object(doc)
        if obj is None or any(p.is_error for p in problems):
            raise SystemExit(f"synthetic {doc['kind']} {doc['metadata']['name']} does not parse: {problems}")
        objects.append(obj)
    return objects


def sample(services: int, size: int) -> list[int]:
    """``size`` evenly spaced service indices (all of them when N ≤ 100 or size ≥ N)."""
    if services <= 100 or size >= services:
        return list(range(services))
    return sorted({k * services // size for k in range(size)})


@dataclass
class Proxy:
    """What one proxy is sent: bytes and resource counts."""

    shared_bytes: int
    own_bytes: int
    clusters: int
    endpoints: int
    listeners: int
    virtual_hosts: int
    routes: int
    secrets: int
    outbound_s: float

    @property
    def bytes(self) -> int:
        return self.shared_bytes + self.own_bytes


def size(resources: tuple[Built, ...]) -> int:
    return sum(len(b.message.SerializeToString(deterministic=True)) for b in resources)


def measure_proxy(config: ir.MeshConfig, workload: ir.Workload) -> Proxy:
    mesh, identity = mesh_of(config, workload), identity_of(config, workload)
    if mesh is None or identity is None:
        raise SystemExit(f"workload {workload.node_id} is not served: its deployment did not build")
    start = time.perf_counter()
    shared = translate_outbound(config, mesh, identity)
    outbound_s = time.perf_counter() - start
    own = translate_proxy(config, workload)
    everything = (*shared, *own)

    def count(type_url: str) -> int:
        return sum(1 for b in everything if b.type_url == type_url)

    route_configs: list[Any] = [b.message for b in everything if b.type_url == names.ROUTE_TYPE]
    secrets = {name for b in everything for type_url, name in b.refs if type_url == names.SECRET_TYPE}
    return Proxy(shared_bytes=size(shared), own_bytes=size(own), clusters=count(names.CLUSTER_TYPE),
                 endpoints=count(names.ENDPOINT_TYPE), listeners=count(names.LISTENER_TYPE),
                 virtual_hosts=sum(len(rc.virtual_hosts) for rc in route_configs),
                 routes=sum(len(vh.routes) for rc in route_configs for vh in rc.virtual_hosts),
                 secrets=len(secrets), outbound_s=outbound_s)


def mean(values: list[int]) -> float:
    return round(statistics.fmean(values), 1)


def measure_variant(services: int, allowed: int, variant: str, mtls: str, sample_size: int) -> dict[str, Any]:
    docs = synthetic_mesh(services, allowed, variant, mtls)
    world = Index(parse(docs))
    live = workloads(services)
    start = time.perf_counter()
    config, problems = build(world, live)
    build_s = time.perf_counter() - start
    for key, found in problems.items():
        for problem in found:
            print(f"{variant} N={services}: {key}: {problem.path}: {problem.message}", file=sys.stderr)
    proxies = [measure_proxy(config, live[i]) for i in sample(services, sample_size)]
    policies = sum(1 for d in docs if d["kind"] == "AccessPolicy")
    rules = sum(len(d["spec"]["rules"]) for d in docs if d["kind"] == "AccessPolicy")
    callees = services if variant == "allow_all" else len(callers_of(0, services, allowed))
    bytes_mean = statistics.fmean(p.bytes for p in proxies)
    return {
        "access_policies": policies, "rules": rules, "callees_per_service": callees,
        "build_s": round(build_s, 3), "build_problems": sum(len(found) for found in problems.values()),
        "proxies_sampled": len(proxies),
        "bytes_mean": round(bytes_mean, 1), "bytes_max": max(p.bytes for p in proxies),
        "shared_bytes_mean": mean([p.shared_bytes for p in proxies]),
        "own_bytes_mean": mean([p.own_bytes for p in proxies]),
        "mesh_total_mb": round(bytes_mean * services / 1e6, 2),  # every proxy's bytes, estimated from the mean
        "clusters_mean": mean([p.clusters for p in proxies]),
        "endpoints_mean": mean([p.endpoints for p in proxies]),
        "listeners_mean": mean([p.listeners for p in proxies]),
        "virtual_hosts_mean": mean([p.virtual_hosts for p in proxies]),
        "routes_mean": mean([p.routes for p in proxies]),
        "secrets_mean": mean([p.secrets for p in proxies]),
        "outbound_ms_median": round(statistics.median(p.outbound_s for p in proxies) * 1000, 3),
    }


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--services", type=positive, nargs="+", default=[100, 500, 1000],
                        help="mesh sizes N to measure, each a separate mesh (default 100 500 1000)")
    parser.add_argument("--allowed", type=positive, default=5,
                        help="services each may call when scoped (default 5); K >= N allows all, itself included")
    parser.add_argument("--sample", type=positive, default=20,
                        help="proxies measured per mesh, evenly spaced; all when N <= 100 (default 20)")
    parser.add_argument("--mtls", choices=("PERMISSIVE", "STRICT"), default="PERMISSIVE",
                        help="the mesh's mTLS minimum (default PERMISSIVE)")
    args = parser.parse_args()
    if max(args.services) > 254 * 256:
        parser.error("at most 65024 services (one 127.1.x.y address each)")
    results = []
    for services in args.services:
        result: dict[str, Any] = {"services": services}
        for variant in VARIANTS:
            result[variant] = measure_variant(services, args.allowed, variant, args.mtls, args.sample)
        scoped = result["scoped"]["bytes_mean"]
        result["ratio_bytes"] = round(result["allow_all"]["bytes_mean"] / scoped, 2) if scoped else None
        results.append(result)
    print(json.dumps({"benchmark": "config_size", "allowed_per_service": args.allowed, "mtls": args.mtls,
                      "sample": args.sample, "results": results}))


if __name__ == "__main__":
    main()
