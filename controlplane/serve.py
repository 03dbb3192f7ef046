"""``meshplane serve`` in standalone mode: the composition root of the running control plane.

Wires the pieces, and owns nothing else:

    config directory ──poll──► Controller (sync → build → status → render per affected proxy)
                                         │ render = xds.translate → Resource (serialised once) → Snapshot
                                         ▼ publish = SnapshotCache.set
    Envoy ◄── ADS (SotW + Delta) ── AggregatedDiscovery ── on_stream_open: node metadata → Workload
    admin (HTTP): /healthz, /debug/syncz, /debug/resources

A proxy is admitted when its node metadata names a virtual deployment (``meshplane bootstrap`` writes
it); while its stream is open it is an endpoint of that deployment. ACKs and NACKs feed the objects'
``ServiceMeshActive`` condition (a NACK sets it False with the proxy's message).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar

from google.protobuf import any_pb2, json_format

from meshplane.controlplane import admin, ir, state, wire, xdsauth
from meshplane.controlplane.admission import StandaloneAdmission
from meshplane.controlplane.configdir import ConfigDir
from meshplane.controlplane.credentials import DEFAULT_TTL, Credentials, Held
from meshplane.controlplane.metrics import Metrics
from meshplane.controlplane.model import ConditionStatus, Kind, ObjectKey
from meshplane.controlplane.reconcile import Controller, Timing
from meshplane.controlplane.status import DataPlaneState
from meshplane.controlplane.watch import DirectoryWatch
from meshplane.controlplane.world import KubeSecret, resolve
from meshplane.injector import inject, webhook
from meshplane.xds import names
from meshplane.xds.cache import InconsistentSnapshotError, Snapshot, SnapshotCache
from meshplane.xds.ingress import gateway_secrets, translate_gateway
from meshplane.xds.resources import Resource, TypeUrl
from meshplane.xds.secrets import build_certificate_secret, build_trust_secret
from meshplane.xds.server import Callbacks, StreamRate, StreamRefusedError, XdsServer, configured, current_peer
from meshplane.xds.server import serve as serve_xds
from meshplane.xds.translate import (
    Built,
    load_assignment,
    mesh_of,
    required_secrets,
    translate_inbound,
    translate_outbound,
    translate_outbound_listeners,
    translate_proxy,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Options:
    config_dir: Path
    state_dir: Path
    xds_address: str = "127.0.0.1:15012"
    admin_address: str = "127.0.0.1:15014"
    timing: Timing = Timing()
    poll_seconds: float = 0.1  # how often the config directory is checked for changed files (a stat of each)
    restart_grace: float = 30.0  # how long workloads of a previous run stay endpoints while they reconnect
    cert_ttl: timedelta = DEFAULT_TTL  # lifetime of workload certificates (renewed at 2/3)
    egress_dns: tuple[tuple[str, int], ...] = ()  # DNS servers for allowed external hosts (empty: the system's)
    webhook_address: str | None = None  # HOST:PORT of the admission webhooks (HTTPS); None: not served
    sidecar_image: str = "meshplane:latest"  # what injected pods run as init container and sidecar
    proxy_xds_address: str | None = None  # what injected sidecars dial (default: xds_address)
    stream_rate: float = 500.0  # new xDS streams admitted per second after a burst (0: no limit)
    stream_burst: int = 1000


K = TypeVar("K")
V = TypeVar("V")


class _Kept(Generic[K, V]):
    """Values kept for the configuration in use and the one before it (:meth:`turn` starts a new one):
    what a configuration did not use is dropped at the next turn, so nothing outlives two unused."""

    def __init__(self) -> None:
        self._now: dict[K, V] = {}
        self._before: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        found = self._now.get(key)
        return self._before.get(key) if found is None else found

    def __setitem__(self, key: K, value: V) -> None:
        self._now[key] = value

    def turn(self) -> None:
        self._before, self._now = self._now, {}


class Renderer:
    """Per-proxy snapshots, with the secrets their resources name.

    The part every proxy of one service shares (outbound clusters, routes and endpoints) is built and
    serialised once per build and per service identity. With ``outbound_view`` (a version of what that
    part is made of besides endpoints, see :meth:`Controller.outbound_view`), it is kept across builds
    while the version stays, and only its load assignments are replaced: a workload coming or going does
    not re-translate its callers. Each proxy's own key and certificate come from :class:`Credentials`
    and go only into its own snapshot.
    """

    def __init__(self, credentials: Credentials, resolvers: tuple[tuple[str, int], ...] = (),
                 kube_secrets: Callable[[str, str], KubeSecret | None] | None = None) -> None:
        self.credentials = credentials
        self.resolvers = resolvers
        self.kube_secrets = kube_secrets
        self.outbound_view: Callable[[ir.Workload], object | None] | None = None
        self.inbound_view: Callable[[ir.Workload], object | None] | None = None
        self._inbound: _Kept[str, tuple[object, list[Resource]]] = _Kept()  # node id → its view, inbound part
        self._secret: _Kept[tuple[str, str], tuple[object, Resource]] = _Kept()  # (node or mesh, name) → source, it
        self._config: ir.MeshConfig | None = None
        self._shared: dict[tuple[str, str], Snapshot] = {}  # (mesh, identity) → its outbound part, this build
        self._kept: dict[tuple[str, str], tuple[object, Snapshot]] = {}  # across builds, by view
        self._bases: dict[int, tuple[tuple[Built, ...], Snapshot]] = {}  # id(translated part) → it, as a snapshot
        self._swapped: dict[int, tuple[Snapshot, Snapshot | None]] = {}  # id(old part) → it, new endpoints
        self._serialised: _Kept[int, tuple[Any, Resource]] = _Kept()  # id(message) → (message, its resource)

    def __call__(self, config: ir.MeshConfig, workload: ir.Workload) -> Snapshot:
        self._use(config)
        if workload.gateway is not None:
            return self._gateway(config, workload)
        mesh = mesh_of(config, workload)
        identity = identity_of(config, workload)
        if mesh is None or identity is None:
            return Snapshot()
        if (mesh, identity) not in self._shared:
            self._shared[(mesh, identity)] = self._outbound(config, workload, mesh, identity)
        return Snapshot.layered(self._shared[(mesh, identity)],
                                (*self._own(config, workload), *self._secrets(config, workload, mesh)))

    def _own(self, config: ir.MeshConfig, workload: ir.Workload) -> list[Resource]:
        """A sidecar's own listeners and clusters. With ``inbound_view``, the inbound ones are kept while
        that view is equal, and only the outbound listeners are translated: at call-all a route change
        re-rendered 200 proxies' inbound listeners (0.4 s) though only their outbound part changed."""
        view = self.inbound_view(workload) if self.inbound_view is not None else None
        if view is None:
            return [Resource.of(b.message, b.refs) for b in translate_proxy(config, workload, self.resolvers)]
        held = self._inbound.get(workload.node_id)
        if held is None or held[0] != view:
            held = (view, [Resource.of(b.message, b.refs) for b in translate_inbound(config, workload)])
        self._inbound[workload.node_id] = held
        outbound = translate_outbound_listeners(config, workload, self.resolvers)
        return [*held[1], *(Resource.of(b.message, b.refs) for b in outbound)]

    def endpoints(self, config: ir.MeshConfig, previous: Snapshot) -> Snapshot | None:
        """``previous`` with every load assignment replaced by ``config``'s, the rest kept as it is: for a
        sidecar whose callees changed endpoints only. None if one is not an outbound cluster's."""
        self._use(config)
        if previous.base is None:
            swapped = self._swap_endpoints(config, previous)
            return None if swapped is None else Snapshot(swapped)
        base = self._swapped_base(config, previous.base)
        extra = self._swap_endpoints(config, previous.extra)
        return None if base is None or extra is None else Snapshot.layered(base, extra)

    def _outbound(self, config: ir.MeshConfig, workload: ir.Workload, mesh: str, identity: str) -> Snapshot:
        """The shared outbound part: kept from an earlier build with new endpoints if its view is unchanged.
        Identities that may call the same services share one (translation hands them one list)."""
        view = self.outbound_view(workload) if self.outbound_view is not None else None
        kept = self._kept.get((mesh, identity))
        base = None
        if view is not None and kept is not None and kept[0] is view:
            base = self._swapped_base(config, kept[1])
        if base is None:
            built = translate_outbound(config, mesh, identity, self.resolvers)
            held = self._bases.get(id(built))
            if held is None or held[0] is not built:
                held = self._bases[id(built)] = (built, Snapshot(self._resource(b) for b in built))
            base = held[1]
        if view is not None:
            self._kept[(mesh, identity)] = (view, base)
        return base

    def _swapped_base(self, config: ir.MeshConfig, base: Snapshot) -> Snapshot | None:
        """``base`` with new load assignments, made once per build however many proxies share it."""
        held = self._swapped.get(id(base))
        if held is None or held[0] is not base:
            swapped = self._swap_endpoints(config, base)
            held = self._swapped[id(base)] = (base, None if swapped is None else Snapshot(swapped))
        return held[1]

    def _swap_endpoints(self, config: ir.MeshConfig, resources: Iterable[Resource]) -> list[Resource] | None:
        """``resources`` with each load assignment made anew from ``config`` (None if one is not ours)."""
        swapped = []
        for resource in resources:
            if resource.type_url == names.ENDPOINT_TYPE:
                built = load_assignment(config, resource.name)
                if built is None:
                    return None
                resource = self._resource(built)
            swapped.append(resource)
        return swapped

    def _use(self, config: ir.MeshConfig) -> None:
        """What was shared belongs to one configuration: a new one starts afresh."""
        if config is not self._config:
            # serialised messages are kept too: translation carries messages over (MeshConfig.lasting)
            for kept in (self._serialised, self._inbound, self._secret):
                kept.turn()
            self._config, self._shared = config, {}
            self._bases, self._swapped = {}, {}

    def _resource(self, built: Built) -> Resource:
        """``built`` serialised once per build however many identities share it (translate builds each
        cluster and load assignment once per build, and an identical outbound part once for identities that
        may call the same services); the message is held here so its id stays its own."""
        held = self._serialised.get(id(built.message))
        if held is None or held[0] is not built.message:
            held = (built.message, Resource.of(built.message, built.refs))
        self._serialised[id(built.message)] = held
        return held[1]

    def _gateway(self, config: ir.MeshConfig, workload: ir.Workload) -> Snapshot:
        """An ingress gateway proxy: its resources, its own certificate, and its hosts' certificates."""
        gateway = config.gateway(workload.gateway or "")
        if gateway is None:
            return Snapshot()
        built = translate_gateway(config, workload)
        own = [Resource.of(b.message, b.refs) for b in built]
        required = gateway_secrets(config, workload, built)
        return Snapshot((*own, *self._secrets(config, workload, gateway.mesh, required)))

    def _secrets(self, config: ir.MeshConfig, workload: ir.Workload, mesh_key: str,
                 required: tuple[tuple[str, str], ...] | None = None) -> list[Resource]:
        mesh = next(m for m in config.meshes if m.key == mesh_key)
        out = []
        for name, subject in required if required is not None else required_secrets(config, workload):
            if name.startswith((names.server_certificate(""), names.client_ca(""))):
                message = self._kube_secret(name, subject)
                if message is not None:
                    out.append(Resource.of(message))
                continue
            if name == names.WORKLOAD_SECRET:
                held = self.credentials.for_proxy(workload.node_id, mesh.key, mesh.trust_domain, subject)
                out.append(self._secret_of((workload.node_id, name), held, partial(_certificate_secret, name, held)))
            else:
                bundle = self.credentials.authority(mesh.key, mesh.trust_domain).trust_bundle_pem()
                out.append(self._secret_of((mesh.key, name), bundle, partial(build_trust_secret, name, bundle)))
        return out

    def _secret_of(self, key: tuple[str, str], source: object, build_message: Callable[[], Any]) -> Resource:
        """A secret serialised once while its source stays: the proxy's credentials (the same object until
        renewed) or the mesh's trust bundle (equal bytes). A full render of 2,000 proxies built and
        serialised 4,000 secrets anew, 0.6 s."""
        held = self._secret.get(key)
        if held is None or not (held[0] is source or held[0] == source):
            held = (source, Resource.of(build_message()))
        self._secret[key] = held
        return held[1]

    def _kube_secret(self, name: str, key: str) -> Any:
        """A gateway host's certificate or CA bundle, from the Secret ``key`` (None if it went away: the
        snapshot is then inconsistent and not published, and the last good one stays)."""
        namespace, _, secret_name = key.partition("/")
        secret = self.kube_secrets(namespace, secret_name) if self.kube_secrets is not None else None
        if secret is None:
            return None
        if name.startswith(names.client_ca("")):
            return build_trust_secret(name, secret.get("ca.crt") or b"")
        return build_certificate_secret(name, secret.get("tls.crt") or b"", secret.get("tls.key") or b"")


def identity_of(config: ir.MeshConfig, workload: ir.Workload) -> str | None:
    """The SPIFFE identity a workload's certificate carries: its virtual service's."""
    deployment = config.deployment(workload.deployment)
    service = config.service(deployment.service) if deployment is not None else None
    return service.identity if service is not None else None


def workload_from_node(node: Any) -> ir.Workload:
    """The workload a proxy says it is, from its node metadata; refuses what cannot be served."""
    meta = json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}
    gateway = meta.get(names.META_GATEWAY)
    deployment = "" if isinstance(gateway, str) else meta.get(names.META_DEPLOYMENT)
    address = meta.get(names.META_ADDRESS)
    if not isinstance(deployment, str) or not isinstance(address, str):
        raise StreamRefusedError(f"node {node.id!r} does not name its virtual deployment and address in its "
                                 f"metadata ({names.META_DEPLOYMENT}, {names.META_ADDRESS}): generate its bootstrap "
                                 "with `meshplane bootstrap`")
    try:
        ports = meta.get(names.META_APP_PORTS) or {}
        app_ports = tuple(sorted((_port(k), _port(v)) for k, v in ports.items()))
        capture = ir.Capture(meta.get(names.META_CAPTURE, ir.Capture.EXPLICIT.value))
    except (AttributeError, TypeError, ValueError) as exc:
        raise StreamRefusedError(f"node {node.id!r} has malformed metadata ({exc}): regenerate its bootstrap with "
                                 "`meshplane bootstrap`") from None
    return ir.Workload(node.id, deployment, address, capture, app_ports, gateway if isinstance(gateway, str) else None)


def _port(value: object) -> int:
    """A port from node metadata: 19080, 19080.0 or "19080" (Struct numbers are doubles)."""
    number = float(str(value))
    if not number.is_integer() or not 0 < number < 65536:
        raise ValueError(f"{value!r} is not a port")
    return int(number)


class ControlPlane:
    """The running standalone control plane (start with :meth:`start`, stop with :meth:`stop`)."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.source = ConfigDir(options.config_dir)
        self.cache = SnapshotCache()
        self.credentials = Credentials(options.state_dir, ttl=options.cert_ttl)
        self.renderer = Renderer(self.credentials, options.egress_dns, self.source.world.secret)
        self.controller: Controller[Snapshot] = Controller(self.source, self.renderer, self._publish, options.timing,
                                                            data_plane=self._data_plane)
        self.renderer.outbound_view = self.controller.outbound_view
        self.renderer.inbound_view = self.controller.inbound_view
        self.controller.after_round = self._after_round
        self.controller.render_endpoints = self._render_endpoints
        self.xds: XdsServer | None = None
        self.xds_port = 0
        self.admin_port = 0
        self._runner: Any = None
        self._webhook_runner: Any = None
        self.webhook_port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._streams: dict[int, str] = {}
        self._unpublished: dict[str, str] = {}  # node id → why its latest snapshot was not published
        self.metrics = Metrics()
        self._changed_at: dict[str, float] = {}  # node id → start of the round that changed it (not yet ACKed)
        self._sent_at: dict[tuple[str, str], float] = {}  # (node id, type URL) → when its latest response left
        self._certificates_counted = 0
        # what _after_round last saw: ports, workloads (credentials kept), endpoints (the workloads file)
        self._saved: tuple[object, dict[str, ir.Workload], list[ir.Workload] | None] = (None, {}, None)

    async def start(self) -> None:
        state.ensure(self.options.state_dir)
        self.controller.remember(state.read_workloads(self.options.state_dir), self.options.restart_grace)
        await self.controller.reconcile()  # serve a complete mesh to the very first proxy
        callbacks = Callbacks(on_stream_open=self._open, on_stream_close=self._close,
                              on_ack=self._acked, on_nack=self._nacked, on_response=self._responded)
        xds_host, _ = _split(self.options.xds_address)
        credentials = xdsauth.server_credentials(self.options.state_dir, xds_host)
        rate = self.options.stream_rate
        pace = StreamRate(rate, self.options.stream_burst) if rate > 0 else None
        self.xds, self.xds_port = await serve_xds(self.options.xds_address, self.cache, callbacks,
                                                  credentials=credentials, stream_rate=pace)
        host, port = _split(self.options.admin_address)
        self._runner, self.admin_port = await admin.start(admin.create_app(self._views()), host, port)
        if self.options.webhook_address is not None:
            await self._start_webhooks(self.options.webhook_address)
        self._tasks = [asyncio.create_task(self.controller.run()), asyncio.create_task(self._poll()),
                       asyncio.create_task(self._renewals())]
        log.info("meshplane serving %s: xDS on port %d, admin on port %d", self.options.config_dir, self.xds_port,
                 self.admin_port)

    async def stop(self, grace: float = 1.0) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.xds is not None:
            await self.xds.stop(grace)
        if self._runner is not None:
            await self._runner.cleanup()
        if self._webhook_runner is not None:
            await self._webhook_runner.cleanup()

    async def _start_webhooks(self, address: str) -> None:
        """The admission webhooks over HTTPS, with a certificate from the control plane's own CA.

        Injected sidecars dial ``proxy_xds_address`` (default: the xDS address) and check the control
        plane's certificate for its host.
        """
        host, port = _split(address)
        dial = self.options.proxy_xds_address or self.options.xds_address
        dial_host, _ = _split(dial)
        settings = inject.Settings(self.options.sidecar_image, dial)
        context = StandaloneAdmission(self.source, self.options.state_dir, settings, dial_host)
        tls = webhook.server_ssl_context(xdsauth.authority(self.options.state_dir), [host],
                                         self.options.state_dir / "webhook")
        app = webhook.create_app(context, observe=self.metrics.webhook)
        self._webhook_runner, self.webhook_port = await webhook.start(app, host, port, tls)
        log.info("admission webhooks on port %d", self.webhook_port)

    # ------------------------------------------------------------------------------ wiring

    async def _poll(self) -> None:
        """Watch the config directory: a changed file pokes the controller. inotify ends each wait at once
        (:class:`DirectoryWatch`); the poll interval bounds it where inotify sees nothing."""
        with DirectoryWatch(self.options.config_dir) as watch:
            while True:
                await watch.wait(self.options.poll_seconds)
                if self.source.changed():
                    self.controller.poke()

    async def _renewals(self) -> None:
        """Wake when the next certificate is due, or every second to notice replaced CA files, and re-render
        the proxies whose certificates must change."""
        while True:
            due_at = self.credentials.next_renewal()
            wait = 1.0 if due_at is None else (due_at - self.credentials.now()).total_seconds()
            await asyncio.sleep(min(1.0, max(0.05, wait)))
            for node_id in {*self.credentials.due(), *self.credentials.reload_changed()}:
                self.controller.refresh(node_id)

    def _publish(self, workload: ir.Workload, snapshot: Snapshot) -> None:
        """Publish a consistent snapshot; otherwise keep the last good one and report why on the proxy's
        virtual deployment (through :func:`data_plane_state`)."""
        try:
            changed = self.cache.set(workload.node_id, snapshot)
        except InconsistentSnapshotError as exc:
            self._unpublished[workload.node_id] = "; ".join(exc.problems)
            log.error("not publishing to %s, keeping its last good configuration: %s", workload.node_id, exc)
            return
        self._unpublished.pop(workload.node_id, None)
        if changed:
            self._changed_at.setdefault(workload.node_id, self.controller.round_started)
            self.metrics.config_bytes.observe(snapshot.byte_size())

    def _render_endpoints(self, config: ir.MeshConfig, workload: ir.Workload) -> Snapshot | None:
        """New load assignments in the proxy's published snapshot (None: render it in full, e.g. when its
        latest render was not published)."""
        previous = self.cache.get(workload.node_id)
        if previous is None or workload.node_id in self._unpublished:
            return None
        return self.renderer.endpoints(config, previous)

    def _after_round(self, config: ir.MeshConfig) -> None:
        self.metrics.round_seconds.observe(time.perf_counter() - self.controller.round_started)
        self.metrics.build_seconds.observe(self.controller.build_seconds)
        if self.controller.rendered:
            self.metrics.translate_seconds.observe(self.controller.render_seconds)
        ports = (tuple((d.key, d.ports) for d in config.deployments),
                 tuple((g.key, tuple(listener.port for listener in g.listeners)) for g in config.gateways))
        if ports != self._saved[0]:  # what the two files hold
            state.write_deployments(self.options.state_dir, config)
        workloads = dict(self.controller.workloads)
        if workloads != self._saved[1]:  # a route change at 2,000 proxies spent 0.2 s writing the same JSON
            self.credentials.keep_only(set(workloads))
        endpoints = [w for w in workloads.values() if w.node_id not in self.controller.starting]
        if endpoints != self._saved[2]:  # what the file holds: a restart keeps them as endpoints
            state.write_workloads(self.options.state_dir, endpoints)
        self._saved = (ports, workloads, endpoints)

    def _open(self, stream_id: int, node: Any) -> None:
        workload = workload_from_node(node)
        peer = current_peer()
        xdsauth.check_peer(peer, workload, self.options.state_dir)
        self._streams[stream_id] = workload.node_id
        self.controller.connect(workload, fresh=peer is not None and not peer.resumes)

    def _close(self, stream_id: int, node: Any) -> None:
        node_id = self._streams.pop(stream_id, None)
        if node_id is not None and node_id not in self._streams.values():
            self.controller.disconnect(node_id)
            for key in [key for key in self._sent_at if key[0] == node_id]:
                del self._sent_at[key]

    def _acked(self, node_id: str, type_url: str, version: str) -> None:
        kind = TypeUrl(type_url).short
        self.metrics.acks.labels(kind).inc()
        sent_at = self._sent_at.pop((node_id, type_url), None)
        if sent_at is not None:
            self.metrics.push_seconds.labels(kind).observe(time.perf_counter() - sent_at)
        if (node_id in self._changed_at or node_id in self.controller.starting) and self.xds is not None:
            states = self.xds.ads.sync_state(node_id)  # this proxy only: ACKs are a hot path
            if node_id in self._changed_at and states and all(s.status == "SYNCED" for s in states.values()):
                self.metrics.convergence.observe(time.perf_counter() - self._changed_at.pop(node_id))
            if node_id in self.controller.starting and configured(states):
                self.controller.configured(node_id)  # its workload takes traffic from the next round
        self.controller.poke_status()  # Active may now be True

    def _responded(self, node_id: str, type_url: str, version: str) -> None:
        self.metrics.pushes.labels(TypeUrl(type_url).short).inc()
        self._sent_at[(node_id, type_url)] = time.perf_counter()

    def _metrics(self) -> bytes:
        """Refresh the gauges that are read rather than counted, then the exposition text."""
        workloads = list(self.controller.workloads.values())
        connected = set(self._streams.values())
        for kind, gateway in (("sidecar", False), ("gateway", True)):
            self.metrics.proxies.labels(kind).set(sum(1 for w in workloads if w.node_id in connected
                                                      and (w.gateway is not None) is gateway))
        expiry = self.credentials.earliest_expiry()
        if expiry is not None:
            self.metrics.expiry.set((expiry - self.credentials.now()).total_seconds())
        self.metrics.certificates.inc(self.credentials.issued_count - self._certificates_counted)
        self._certificates_counted = self.credentials.issued_count
        return self.metrics.exposition()

    def _nacked(self, node_id: str, type_url: str, version: str, message: str) -> None:
        self.metrics.nacks.labels(TypeUrl(type_url).short).inc()
        self._sent_at.pop((node_id, type_url), None)
        log.warning("proxy %s rejected %s version %s: %s", node_id, type_url.rsplit(".", 1)[-1], version, message)
        self.controller.poke_status()

    def _data_plane(self) -> Mapping[ObjectKey, DataPlaneState]:
        """Per object, what the proxies that depend on it said (see :func:`data_plane_state`)."""
        if self.xds is None:
            return {}
        return data_plane_state(self.controller, self.xds.ads.sync_states(), self._unpublished)

    # ------------------------------------------------------------------------------ admin

    def _views(self) -> admin.Views:
        return admin.Views(healthy=lambda: self.controller.rounds > 0, syncz=self._syncz, resources=self._resources,
                           config_dump=self._config_dump, metrics=self._metrics)

    def _config_dump(self, node_id: str) -> Any:
        """What ``node_id`` was last given (None if nothing), by type, private keys redacted."""
        snapshot = self.cache.get(node_id)
        if snapshot is None:
            return None
        return {TypeUrl(t).short: {"version": snapshot.version(t),
                                   "resources": [dump_resource(r) for _, r in sorted(snapshot.items(t).items())]}
                for t in names.PUSH_ORDER}

    def _syncz(self) -> Any:
        states = self.xds.ads.sync_states() if self.xds is not None else {}
        proxies = []
        for node_id, types in states.items():
            workload = self.controller.workloads.get(node_id)
            proxies.append({
                "node": node_id, "deployment": workload.deployment if workload else None,
                "gateway": workload.gateway if workload else None,
                "identity": self._identity(workload) if workload else None,
                "address": workload.address if workload else None,
                "ready": node_id not in self.controller.starting,  # an endpoint (a sidecar), or a gateway
                "types": {TypeUrl(t).short: {"status": s.status, "sent": s.sent, "acked": s.acked,
                                                "nacked": s.nacked, "nack_message": s.nack_message}
                          for t, s in types.items()},
            })
        return {"reconciling": self.controller.busy, "proxies": proxies}

    def _identity(self, workload: ir.Workload) -> str | None:
        """The SPIFFE ID a proxy proves: its virtual service's, or its ingress gateway's."""
        config = self.controller.config
        if workload.gateway is not None:
            gateway = config.gateway(workload.gateway)
            return gateway.identity if gateway is not None else None
        return identity_of(config, workload)

    def _resources(self) -> Any:
        objects = [{"kind": o.kind.value, "namespace": o.namespace, "name": o.name,
                    "generation": o.metadata.generation, "deleting": o.deleting,
                    "conditions": wire.dump(o.status.conditions)} for o in self.source.world.all()]
        rejected = [{"kind": f.kind, "namespace": f.namespace, "name": f.name, "source": str(f.source),
                     "problem": f.line()} for findings in self.source.rejected.values() for f in findings]
        files = [f.line() for f in self.source.file_findings]
        return {"objects": objects, "rejected": rejected, "file_problems": files}


def data_plane_state(controller: Controller[Any], states: Mapping[str, Mapping[str, Any]],
                     unpublished: Mapping[str, str] | None = None) -> dict[ObjectKey, DataPlaneState]:
    """Per object, the worst of what the connected proxies that carry it report.

    A proxy's state is attributed to its own VirtualDeployment (its inbound listeners) and to the
    route tables of its mesh (its outbound routes): the objects whose changes users wait on. Parents
    (Mesh, VirtualService) are never marked, because children wait for a parent to be fully ready and
    one proxy's rejection would otherwise hold up every object under it — including the edit that
    fixes it. An object is Active when every proxy carrying it ACKed its latest versions, Unknown while
    any is behind, False with the proxy's message when any NACKed — or when the control plane could
    not publish a consistent configuration for it (``unpublished``: node id → reason).
    """
    out: dict[ObjectKey, DataPlaneState] = {}
    meshes: dict[str | None, DataPlaneState] = {}  # the worst per mesh, then given to each of its tables
    for node_id in sorted(set(states) | set(unpublished or {})):
        workload = controller.workloads.get(node_id)
        if workload is None:
            continue
        proxy = _proxy_state(node_id, states.get(node_id, {}))
        if unpublished and node_id in unpublished:
            proxy = DataPlaneState(ConditionStatus.FALSE, f"configuration for proxy {node_id} not published, its last "
                                                          f"good one stays: {unpublished[node_id]}")
        namespace, _, name = workload.deployment.partition("/")
        key = ObjectKey(Kind.VIRTUAL_DEPLOYMENT, namespace, name)
        out[key] = _worse(out.get(key), proxy)
        mesh = mesh_of(controller.config, workload)
        meshes[mesh] = _worse(meshes.get(mesh), proxy)
    tables = _tables_by_mesh(controller)
    for mesh, worst in meshes.items():
        out.update(dict.fromkeys(tables.get(mesh, ()), worst))
    return out


def _tables_by_mesh(controller: Controller[Any]) -> dict[str | None, list[ObjectKey]]:
    world = controller.source.world
    found: dict[str | None, list[ObjectKey]] = {}
    for table in world.objects(Kind.VIRTUAL_SERVICE_ROUTE_TABLE):
        parent = resolve(world, table.spec.virtual_service, Kind.VIRTUAL_SERVICE, table.namespace)
        service = controller.config.service(f"{parent.namespace}/{parent.name}") if parent is not None else None
        if service is not None:
            found.setdefault(service.mesh, []).append(table.key)
    return found


def _proxy_state(node_id: str, types: Mapping[str, Any]) -> DataPlaneState:
    for type_url, sync in types.items():
        if sync.status == "NACKED":
            return DataPlaneState(ConditionStatus.FALSE, f"proxy {node_id} rejected the {TypeUrl(type_url).short} "
                                                         f"configuration: {sync.nack_message.strip()}")
    if any(sync.status == "STALE" for sync in types.values()):
        return DataPlaneState(ConditionStatus.UNKNOWN, f"waiting for proxy {node_id} to acknowledge")
    return DataPlaneState(ConditionStatus.TRUE, "")


_RANK = {ConditionStatus.TRUE: 0, ConditionStatus.UNKNOWN: 1, ConditionStatus.FALSE: 2}


def _worse(a: DataPlaneState | None, b: DataPlaneState) -> DataPlaneState:
    return b if a is None or _RANK[b.status] > _RANK[a.status] else a


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


# Garbage-collector thresholds for the serving process: (young, middle, old) as gc.set_threshold takes them.
GC_THRESHOLDS = (10_000, 10, 100)


def _certificate_secret(name: str, held: Held) -> Any:
    return build_certificate_secret(name, held.issued.chain_pem, held.key.pem().reveal())


def tune_gc() -> None:
    """Spare the serving process most full garbage collections (process-wide: only :func:`run` calls it).

    With Python's defaults, bench/fanout.py at 2,000 proxies saw 17 full collections in 73 s, each holding
    the loop for 0.3 to 1.35 s (7.5 s in all) while the heap grew from 160 MB to 530 MB. What exists once the
    mesh is first built (configuration, IR, modules) is frozen out of collection, and the older
    generations are collected 10 times less often; reference counting still frees all garbage without
    cycles at once. Measured with it: 157 collections in a whole run, 1.85 s in all, the longest 0.13 s.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def run(options: Options) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully."""
    plane = ControlPlane(options)
    await plane.start()
    tune_gc()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        log.info("stopping")
        await plane.stop()


REDACTED = "[redacted]"


def dump_resource(resource: Resource) -> Any:
    """A resource as JSON, as the proxy received it, except that a private key never leaves the process."""
    packed = any_pb2.Any(type_url=str(resource.type_url.value), value=resource.body)
    data: dict[str, Any] = json_format.MessageToDict(packed, preserving_proto_field_name=True)
    key = data.get("tls_certificate", {}).get("private_key")
    if key is not None:
        data["tls_certificate"]["private_key"] = REDACTED
    return data
