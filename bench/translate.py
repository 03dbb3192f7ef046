"""Benchmark: build, translate and serialise a whole mesh, cold and after one route-table edit. Prints JSON.

The mesh (one Mesh, mTLS minimum PERMISSIVE) has S virtual services ``svc-i`` (host
``svc-i.bench.svc.cluster.local``), each with two virtual deployments ``svc-i-v1`` and ``svc-i-v2``
(HTTP on 8080, DNS discovery) of E connected workloads each: ``ir.Workload`` values on distinct loopback
addresses (127.a.b.c). They are only values: nothing listens, no Envoy runs. Each service has one route
table sending 90/10 to v1/v2, and an AccessPolicy admitting ``svc-(i-1)`` … ``svc-(i-K)`` (mod S) by name,
so each service may call exactly K others (K = S: every service, itself included), as in config_size's
scoped variant; beyond 50 callers, the most one policy may list, the rules are split over several
policies ``svc-i``, ``svc-i-1``, …. Manifests are parsed with ``parse_object`` and indexed
(``world.Index``) as config_size does; every workload is an endpoint. P proxies are rendered: every
workload by default, else P workloads evenly spaced over the list ordered by service, so they spread
over the services.

Cold phases, each run once, in this order, timed with ``time.perf_counter`` (seconds):

* ``build``: ``build(world, workloads)``, objects → IR;
* ``translate``: ``translate_outbound`` once per (mesh, identity) and ``translate_proxy`` per proxy —
  the split ``serve.Renderer`` makes — building messages without serialising them;
* ``serialise``: ``Resource.of`` over the translate phase's output, the shared part once per identity;
* ``secrets``: every proxy's SDS secrets as the renderer makes them: ``required_secrets``, then
  ``Credentials.for_proxy`` (a new ECDSA P-256 key and certificate from the mesh CA, which is created in
  a temporary state directory beforehand, untimed) and ``build_certificate_secret`` /
  ``build_trust_secret``, serialised (issuing certificates is most of this phase);
* ``render``: ``serve.Renderer`` itself over every proxy (translate + serialise + secrets, certificates
  now held), on a fresh copy of the IR so that nothing the phases above memoised on it helps: the figure
  the control plane pays per round. Its snapshots are checked to hold exactly the resources of the three
  phases above, so those measure what the renderer does;
* ``publish``: ``SnapshotCache.set`` of every snapshot (consistency check, per-type versions).

``total_s`` is build + translate + serialise + secrets + publish (``render`` repeats the middle three).
Sharing: ``serialised_*`` is what ``Resource.of`` was given (shared part once per identity),
``per_proxy_*`` what every proxy is sent (as if each serialised its own copy), ``distinct_*`` what the
interning leaves in memory (equal content is one object, e.g. a ClusterLoadAssignment every caller gets).

The change: the route table of one service (chosen by ``--seed``) goes from 90/10 to 50/50; the object is
re-parsed and replaced in the same Index, and the mesh rebuilt. Which proxies are re-rendered is decided
exactly as the reconcile loop decides it: a ``reconcile.Controller`` (its source a ConfigDir on an empty
temporary directory, never synced) computes each proxy's input key with its own ``_mesh_views`` and
``_inputs_of``, after the cold round and after the change, and a proxy whose key differs is re-rendered.
Phases as above for those proxies only (``secrets`` then only rebuilds and re-serialises the SDS secrets:
certificates are held until due), plus ``inputs`` (computing and comparing the keys). Reported: proxies
re-rendered, proxies whose snapshot really changed (some type's content version differs) and per type,
and the resources whose content hash is new — count and bytes — in total and summed over proxies.

At most one cold round and one change are run. Temporary directories are removed at the end. The
process keeps both the phases' output and the renderer's snapshots, so its memory is not the control
plane's: ``distinct_bytes`` is closer to what a running control plane holds.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from meshplane.controlplane import ir
from meshplane.controlplane.build import build
from meshplane.controlplane.configdir import ConfigDir
from meshplane.controlplane.credentials import Credentials
from meshplane.controlplane.model import AnyObject, parse_object
from meshplane.controlplane.reconcile import Controller
from meshplane.controlplane.serve import Renderer, identity_of
from meshplane.controlplane.world import Index
from meshplane.xds import names
from meshplane.xds.cache import Snapshot, SnapshotCache
from meshplane.xds.resources import PUSH_ORDER, Resource, TypeUrl
from meshplane.xds.secrets import build_certificate_secret, build_trust_secret
from meshplane.xds.translate import Built, mesh_of, required_secrets, translate_outbound, translate_proxy

GROUP = "servicemesh.oci.oracle.com/v1beta1"
NAMESPACE = "bench"
MESH = "bench"
COMPARTMENT = "ocid1.compartment.oc1..aaaa"
PORT, APP_PORT = 8080, 18080
VERSIONS = ("v1", "v2")
COLD_WEIGHTS, CHANGED_WEIGHTS = (90, 10), (50, 50)
MAX_RULES = 50  # rules one AccessPolicy may have
ADDRESSES_PER_OCTET = 254  # .1 … .254 in the last octet


# ------------------------------------------------------------------------------------------- the mesh


def _doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": GROUP, "kind": kind, "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"compartmentId": COMPARTMENT, **spec}}


def _ref(name: str) -> dict[str, Any]:
    return {"ref": {"name": name}}


def _vs_target(name: str) -> dict[str, Any]:
    return {"virtualService": _ref(name)}


def callers_of(i: int, services: int, calls: int) -> list[int]:
    """The services that may call ``svc-i``: i-1 … i-calls (mod S), without repeats."""
    return list(dict.fromkeys((i - d) % services for d in range(1, calls + 1)))


def route_table(i: int, weights: tuple[int, int]) -> dict[str, Any]:
    vs = f"svc-{i}"
    return _doc("VirtualServiceRouteTable", vs, {"virtualService": _ref(vs), "routeRules": [
        {"httpRoute": {"path": "/", "pathType": "PREFIX", "destinations": [
            {"virtualDeployment": {"ref": {"name": f"{vs}-{version}"}}, "weight": weight, "port": PORT}
            for version, weight in zip(VERSIONS, weights, strict=True)]}}]})


def synthetic_mesh(services: int, calls: int) -> list[dict[str, Any]]:
    """The Mesh; per service its VirtualService, two deployments, route table and access policy."""
    docs = [_doc("Mesh", MESH, {"mtls": {"minimum": "PERMISSIVE"}})]
    for i in range(services):
        vs = f"svc-{i}"
        docs.append(_doc("VirtualService", vs, {"mesh": {"ref": {"name": MESH}},
                                                "hosts": [f"{vs}.{NAMESPACE}.svc.cluster.local"]}))
        docs += [_doc("VirtualDeployment", f"{vs}-{version}", {
            "virtualService": _ref(vs), "listener": [{"protocol": "HTTP", "port": PORT}],
            "serviceDiscovery": {"type": "DNS", "hostname": f"{vs}-{version}.{NAMESPACE}.svc.cluster.local"}})
            for version in VERSIONS]
        docs.append(route_table(i, COLD_WEIGHTS))
        rules = [{"action": "ALLOW", "source": _vs_target(f"svc-{j}"), "destination": _vs_target(vs)}
                 for j in callers_of(i, services, calls)]
        for n, first in enumerate(range(0, len(rules), MAX_RULES)):  # the API allows 50 rules per policy
            docs.append(_doc("AccessPolicy", f"{vs}-{n}" if n else vs,
                             {"mesh": {"ref": {"name": MESH}}, "rules": rules[first:first + MAX_RULES]}))
    return docs


def parse(doc: dict[str, Any]) -> AnyObject:
    """Parse a manifest as the loaders do; the synthetic mesh must be free of errors."""
    obj, problems = parse_object(doc)
    if obj is None or any(p.is_error for p in problems):
        raise SystemExit(f"synthetic {doc['kind']} {doc['metadata']['name']} does not parse: {problems}")
    return obj


def address(n: int) -> str:
    """The n-th loopback address: 127.1.0.1, 127.1.0.2, … 127.1.0.254, 127.1.1.1, …"""
    octets, last = divmod(n, ADDRESSES_PER_OCTET)
    return f"127.{1 + octets // 256}.{octets % 256}.{last + 1}"


def workloads(services: int, endpoints: int) -> list[ir.Workload]:
    """E workloads per deployment, ordered by service, then version, then index."""
    found: list[ir.Workload] = []
    for i in range(services):
        for version in VERSIONS:
            for e in range(endpoints):
                found.append(ir.Workload(f"svc-{i}-{version}-{e}", f"{NAMESPACE}/svc-{i}-{version}",
                                         address(len(found)), app_ports=((PORT, APP_PORT),)))
    return found


def spread(items: list[ir.Workload], count: int | None) -> list[ir.Workload]:
    """``count`` items evenly spaced over ``items`` (all of them when None)."""
    if count is None or count >= len(items):
        return items
    return [items[k * len(items) // count] for k in range(count)]


# ------------------------------------------------------------------------------------------ the phases


@dataclass
class Round:
    """One round's renders: per proxy its resources, and what was serialised."""

    shared: dict[str, tuple[Built, ...]] = field(default_factory=dict)  # identity → outbound part
    own: dict[str, tuple[Built, ...]] = field(default_factory=dict)  # node id → its own part
    secrets: dict[str, list[Resource]] = field(default_factory=dict)  # node id → its SDS secrets
    shared_resources: dict[str, tuple[Resource, ...]] = field(default_factory=dict)
    own_resources: dict[str, tuple[Resource, ...]] = field(default_factory=dict)
    serialised: list[Resource] = field(default_factory=list)  # every Resource.of result, in call order
    seconds: dict[str, float] = field(default_factory=dict)


def timed(seconds: dict[str, float], phase: str, work: Callable[[], None]) -> None:
    start = time.perf_counter()
    work()
    seconds[phase] = time.perf_counter() - start


def make_secrets(credentials: Credentials, config: ir.MeshConfig, workload: ir.Workload) -> list[Resource]:
    """The proxy's SDS secrets exactly as ``serve.Renderer`` makes them (mesh-CA issued ones only)."""
    mesh = next(m for m in config.meshes if m.key == mesh_of(config, workload))
    out = []
    for name, subject in required_secrets(config, workload):
        if name == names.WORKLOAD_SECRET:
            held = credentials.for_proxy(workload.node_id, mesh.key, mesh.trust_domain, subject)
            message = build_certificate_secret(name, held.issued.chain_pem, held.key.pem().reveal())
        else:
            message = build_trust_secret(name, credentials.authority(mesh.key, mesh.trust_domain).trust_bundle_pem())
        out.append(Resource.of(message))
    return out


def identity(config: ir.MeshConfig, workload: ir.Workload) -> tuple[str, str]:
    found, mesh = identity_of(config, workload), mesh_of(config, workload)
    if found is None or mesh is None:
        raise SystemExit(f"workload {workload.node_id} is not served: its deployment did not build")
    return mesh, found


Changed = dict[str, set[TypeUrl]]  # node id → the types whose content version changed when published


def render_round(config: ir.MeshConfig, proxies: list[ir.Workload], credentials: Credentials,
                 renderer: Renderer, cache: SnapshotCache) -> tuple[Round, dict[str, Snapshot], Changed]:
    """Secrets, translate, serialise, render and publish ``proxies``; the snapshots and the changed types."""
    done = Round()

    def secrets() -> None:
        for workload in proxies:
            done.secrets[workload.node_id] = make_secrets(credentials, config, workload)

    def translate() -> None:
        for workload in proxies:
            mesh, who = identity(config, workload)
            if who not in done.shared:
                done.shared[who] = translate_outbound(config, mesh, who)
            done.own[workload.node_id] = translate_proxy(config, workload)

    def serialise() -> None:
        for who, built in done.shared.items():
            done.shared_resources[who] = tuple(Resource.of(b.message, b.refs) for b in built)
        for node, built in done.own.items():
            done.own_resources[node] = tuple(Resource.of(b.message, b.refs) for b in built)

    snapshots: dict[str, Snapshot] = {}

    fresh = replace(config)  # equal, without the memo the phases above filled

    def render() -> None:
        for workload in proxies:
            snapshots[workload.node_id] = renderer(fresh, workload)

    changed: Changed = {}

    def publish() -> None:
        for node, snapshot in snapshots.items():
            changed[node] = set(cache.set(node, snapshot))

    for phase, work in (("translate", translate), ("serialise", serialise), ("secrets", secrets),
                        ("render", render), ("publish", publish)):
        timed(done.seconds, phase, work)
    done.serialised = [*(r for part in done.shared_resources.values() for r in part),
                       *(r for part in done.own_resources.values() for r in part),
                       *(r for part in done.secrets.values() for r in part)]
    for workload in proxies:  # the phases measured what the renderer does, resource for resource
        _, who = identity(config, workload)
        node = workload.node_id
        ours = {*done.shared_resources[who], *done.own_resources[node], *done.secrets[node]}
        if ours != set(snapshots[node]):
            raise SystemExit(f"the renderer's snapshot for {node} differs from the measured phases' resources")
    return done, snapshots, changed


def figures(seconds: dict[str, float]) -> dict[str, float]:
    out = {f"{phase}_s": round(value, 3) for phase, value in seconds.items()}
    out["total_s"] = round(sum(v for k, v in seconds.items() if k != "render"), 3)
    return out


def byte_count(resources: Iterable[Resource]) -> int:
    return sum(len(r.body) for r in resources)


def sharing(done: Round, snapshots: dict[str, Snapshot]) -> dict[str, Any]:
    """What was serialised, what every proxy is sent, and what is distinct, per type and in total."""
    sent = [r for snapshot in snapshots.values() for r in snapshot]
    distinct = {r.digest: r for r in sent}.values()
    by_type = {}
    for type_url in PUSH_ORDER:
        mine = [r for r in sent if r.type_url is type_url]
        unique = [r for r in distinct if r.type_url is type_url]
        by_type[type_url.short] = {"per_proxy": len(mine), "per_proxy_bytes": byte_count(mine),
                                   "distinct": len(unique), "distinct_bytes": byte_count(unique)}
    proxies = max(1, len(snapshots))
    return {
        "serialised_resources": len(done.serialised), "serialised_bytes": byte_count(done.serialised),
        "per_proxy_resources": len(sent), "per_proxy_bytes": byte_count(sent),
        "distinct_resources": len(distinct), "distinct_bytes": byte_count(distinct),
        "bytes_per_proxy_mean": round(byte_count(sent) / proxies, 1),
        "sharing_ratio": round(byte_count(sent) / max(1, byte_count(done.serialised)), 2),
        "by_type": by_type,
    }


# --------------------------------------------------------------------------------------------- the run


def input_keys(controller: Controller[Snapshot], config: ir.MeshConfig,
               proxies: list[ir.Workload]) -> dict[str, object]:
    """Every proxy's input key, as ``Controller.reconcile`` computes it for a new configuration."""
    controller.config = config
    controller._views = controller._mesh_views()
    return {w.node_id: controller._inputs_of(w) for w in proxies}


def measure(*, services: int, endpoints: int, calls: int, proxy_count: int | None, seed: int,
            scratch: Path) -> dict[str, Any]:
    rng = random.Random(seed)
    edited = rng.randrange(services)
    docs = synthetic_mesh(services, calls)
    world = Index([parse(doc) for doc in docs])
    live = workloads(services, endpoints)
    proxies = spread(live, proxy_count)
    credentials = Credentials(scratch / "state", jitter=lambda: rng.uniform(-1.0, 1.0))
    renderer = Renderer(credentials)
    cache = SnapshotCache()
    controller: Controller[Snapshot] = Controller(ConfigDir(scratch / "config"), renderer, lambda _w, _s: None)

    # ---- cold
    seconds: dict[str, float] = {}
    built: list[ir.MeshConfig] = []
    timed(seconds, "build", lambda: built.append(build(world, live)[0]))
    config = built[0]
    credentials.authority(config.meshes[0].key, config.meshes[0].trust_domain)  # the mesh CA, untimed
    cold, cold_snapshots, _ = render_round(config, proxies, credentials, renderer, cache)
    seconds.update(cold.seconds)
    keys = input_keys(controller, config, proxies)
    identities = len({identity(config, w)[1] for w in proxies})

    # ---- one route table edited, rebuilt, the affected proxies re-rendered
    world.put(parse(route_table(edited, CHANGED_WEIGHTS)))
    change_seconds: dict[str, float] = {}
    built.clear()
    timed(change_seconds, "build", lambda: built.append(build(world, live)[0]))
    config = built[0]
    affected: list[ir.Workload] = []

    def inputs() -> None:
        new_keys = input_keys(controller, config, proxies)
        affected.extend(w for w in proxies if new_keys[w.node_id] != keys[w.node_id])

    timed(change_seconds, "inputs", inputs)
    change, change_snapshots, changed = render_round(config, affected, credentials, renderer, cache)
    change_seconds.update(change.seconds)
    before = {r.digest for snapshot in cold_snapshots.values() for r in snapshot}
    new_sent = [r for snapshot in change_snapshots.values() for r in snapshot if r.digest not in before]
    new_distinct = {r.digest: r for r in new_sent}.values()
    changed_proxies = [node for node, types in changed.items() if types]
    return {
        "benchmark": "translate", "services": services, "endpoints_per_deployment": endpoints, "calls": calls,
        "workloads": len(live), "proxies": len(proxies), "identities": identities, "objects": len(docs),
        "seed": seed,
        "cold": {**figures(seconds), **sharing(cold, cold_snapshots),
                 "certificates_issued": credentials.issued_count},
        "change": {
            "edited": f"VirtualServiceRouteTable {NAMESPACE}/svc-{edited}: "
                      f"{weights(COLD_WEIGHTS)} -> {weights(CHANGED_WEIGHTS)}",
            **figures(change_seconds),
            "proxies_rerendered": len(affected), "identities_retranslated": len(change.shared),
            "proxies_changed": len(changed_proxies),
            "proxies_changed_by_type": {t.short: sum(1 for types in changed.values() if t in types)
                                        for t in PUSH_ORDER},
            "rerendered_bytes": byte_count(r for s in change_snapshots.values() for r in s),
            "new_resources": len(new_distinct), "new_bytes": byte_count(new_distinct),
            "new_resources_per_proxy": len(new_sent), "new_bytes_per_proxy": byte_count(new_sent),
        },
    }


def weights(split: tuple[int, int]) -> str:
    return "/".join(map(str, split))


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--services", type=positive, default=1000, help="virtual services S (default 1000)")
    parser.add_argument("--endpoints", type=positive, default=2,
                        help="workloads E per virtual deployment, two deployments per service (default 2)")
    parser.add_argument("--calls", type=positive, default=10,
                        help="services K each may call, at most S; K = S: all, itself included (default 10)")
    parser.add_argument("--proxies", type=positive, default=None,
                        help="proxies P rendered, evenly spread over the services (default: every workload)")
    parser.add_argument("--seed", type=int, default=0, help="picks the service whose route table is edited (0)")
    args = parser.parse_args()
    if args.calls > args.services:
        parser.error(f"--calls {args.calls} exceeds --services {args.services}: a service may call at most all")
    if args.services * 2 * args.endpoints > ADDRESSES_PER_OCTET * 256 * 254:
        parser.error("too many workloads for distinct 127.x.y.z addresses")
    with tempfile.TemporaryDirectory(prefix="meshplane-bench-") as scratch:
        result = measure(services=args.services, endpoints=args.endpoints, calls=args.calls,
                         proxy_count=args.proxies, seed=args.seed, scratch=Path(scratch))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
