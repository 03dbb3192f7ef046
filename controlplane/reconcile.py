"""The reconcile loop: events in; coalesced; built; rendered for the proxies they affect; published.

One asyncio task owns the mesh. Anything that may change it — the config directory, a proxy
connecting or going away — calls :meth:`Controller.poke`; the loop waits until pokes have gone quiet
for ``quiet`` seconds (or ``max_delay`` after the first, so a steady trickle cannot starve it), and
until the last round is at most :data:`ROUND_SHARE` of the loop, then runs :meth:`Controller.reconcile`
once for all of them:

1. sync the source (objects accepted one by one, see :mod:`configdir`);
2. build the IR from the accepted objects and the connected workloads (pure) — only if either changed;
3. for each connected workload whose inputs changed — its own deployment, or anything in its mesh —
   render its configuration and publish it. Identical inputs are never rendered twice, and the
   renderer's output is content-versioned downstream, so identical output is never re-sent;
4. compute every object's status (pure) and record it — only if the world, the build's problems or
   what the proxies said changed, then only for the objects whose inputs did (:class:`StatusMemo`), and
   at most once per ``status_every`` seconds, and taking at most :data:`STATUS_SHARE` of the loop.

When a sidecar's inputs differ from last time only in its callees' endpoints (workloads came or went),
``render_endpoints`` — if given — swaps the new load assignments into its last snapshot instead of
rendering it anew, as Istio pushes endpoint-only changes incrementally.

Rendering and publishing are injected (the composition root wires xDS translation and the snapshot
cache), which keeps this module free of Envoy and testable with the real build and status.

A proxy's ACK or NACK changes nothing but statuses (Active): it calls :meth:`Controller.poke_status`,
coalesced the same way, and the round it causes runs step 4 only. At 2,000 proxies that is thousands of
ACKs per change; each used to cost a whole round.

A sidecar's workload becomes an endpoint only once its proxy has accepted its configuration
(:meth:`Controller.configured`, called by the composition root when the proxy has ACKed every type it
asked for), as Kubernetes adds a pod to a Service only once it is ready: before that its listeners are
not there, and callers sent to it would get 503s. Until then it is ``starting``: it is rendered for, and
counts among its callees' callers, but takes no traffic.

A workload that disconnects stays an endpoint for ``grace`` seconds, so a proxy that restarts or
reconnects to a restarted control plane does not drop out of load balancing meanwhile; its new stream
finds it configured still. The workloads a previous run remembered are configured too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from operator import attrgetter
from typing import Any, Generic, TypeVar

from meshplane.controlplane import ir
from meshplane.controlplane.build import BuildMemo, build
from meshplane.controlplane.configdir import ConfigDir
from meshplane.controlplane.model import ObjectKey
from meshplane.controlplane.problems import Problem
from meshplane.controlplane.status import DataPlaneState, StatusMemo, compute_status, with_references

log = logging.getLogger(__name__)

T = TypeVar("T")
Render = Callable[[ir.MeshConfig, ir.Workload], T]
RenderEndpoints = Callable[[ir.MeshConfig, ir.Workload], T | None]  # None: cannot, render in full
Publish = Callable[[ir.Workload, T], Awaitable[None] | None]


@dataclass(frozen=True)
class Timing:
    """How events are coalesced (seconds)."""

    quiet: float = 0.1
    max_delay: float = 1.0
    grace: float = 2.0
    status_every: float = 1.0  # at most one status pass per this long: at 2,000 proxies, ACKs never stop


# Status passes take at most this share of the loop: a pass that took d seconds waits d / STATUS_SHARE
# (or ``status_every``, if longer) before the next. At 2,000 proxies every second brings ACKs that change
# some deployment's Active, and a pass over 5,000 objects would otherwise take a third of the loop from
# the proxies still waiting for their configuration. Statuses are read by people; they can lag a little.
STATUS_SHARE = 0.2

# Configuration rounds take at most this share of the loop: a round that took d seconds is followed by the
# next no sooner than d / ROUND_SHARE after it began. When 2,000 proxies connect together every round
# re-renders most of those already connected (their callees' endpoints, routes and callers changed), so
# back-to-back rounds did the same work over and over while the new streams waited for the loop.
ROUND_SHARE = 0.5


async def settle(trigger: asyncio.Event, *, quiet: float, max_delay: float) -> None:
    """Wait for a trigger, then until triggers stop for ``quiet`` s or ``max_delay`` s after the first."""
    await trigger.wait()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_delay
    while True:
        trigger.clear()
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        try:  # not asyncio.wait_for: in 3.11 it loses a cancel that meets the trigger, and stop() then hangs
            async with asyncio.timeout(min(quiet, remaining)):
                await trigger.wait()
        except TimeoutError:
            return


@dataclass
class Controller(Generic[T]):
    """Owns the accepted mesh, the connected workloads, and what each workload was last given."""

    source: ConfigDir
    render: Render[T]
    publish: Publish[T]
    timing: Timing = Timing()
    data_plane: Callable[[], Mapping[ObjectKey, DataPlaneState]] = dict
    after_round: Callable[[ir.MeshConfig], None] | None = None
    render_endpoints: RenderEndpoints[T] | None = None
    config: ir.MeshConfig = field(default_factory=ir.MeshConfig)
    problems: dict[ObjectKey, list[Problem]] = field(default_factory=dict)
    workloads: dict[str, ir.Workload] = field(default_factory=dict)
    starting: set[str] = field(default_factory=set)  # node ids of sidecars not configured yet: no endpoints
    rounds: int = 0
    last_round_seconds: float = 0.0
    round_started: float = 0.0  # perf_counter() at the start of the latest round
    build_seconds: float = 0.0  # the latest round's build (objects → IR)
    render_seconds: float = 0.0  # the latest round's renders (translate and serialise), all proxies together
    rendered: int = 0  # proxies the latest round rendered
    patched: int = 0  # proxies the latest round gave new endpoints only (render_endpoints)
    status_rounds: int = 0  # status passes run from the loop (after ACKs, NACKs and configuration rounds)
    _inputs: dict[str, tuple[object, object]] = field(default_factory=dict)
    _config_due: bool = True  # the source, the workloads or a proxy's certificate may have changed
    _rebuild: bool = True  # the workloads changed since the last build
    _status_due: bool = False  # what proxies said changed
    _status_memo: StatusMemo = field(default_factory=StatusMemo)
    _build_memo: BuildMemo = field(default_factory=BuildMemo)
    _status_inputs: tuple[object, ...] = ()  # world version, problems, data-plane states of the last pass
    _status_at: float = float("-inf")  # time.monotonic() of the last status pass
    _status_gap: float = 0.0  # the next pass waits this long after the last one began
    _status_timer: asyncio.TimerHandle | None = None
    _views: dict[Hashable, object] = field(default_factory=dict)
    _groups: dict[str, object] = field(default_factory=dict)  # service key → its group in the views (service_views)
    _views_of: ir.MeshConfig | None = None  # the configuration the views were made for
    _shapes: dict[str, tuple[ir.Deployment, ir.Deployment]] = field(default_factory=dict)  # key → it, its shape
    _leaving: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    _trigger: asyncio.Event = field(default_factory=asyncio.Event)
    _in_round: bool = False

    def poke(self) -> None:
        """The source or the workloads may have changed: reconcile soon."""
        self._config_due = True
        self._trigger.set()

    def poke_status(self) -> None:
        """A proxy ACKed or NACKed: recompute statuses soon (nothing is built or rendered for it)."""
        self._status_due = True
        self._trigger.set()

    def connect(self, workload: ir.Workload, *, fresh: bool = False) -> None:
        """A proxy opened its stream: it wants its configuration, and is a caller from now on. A new sidecar,
        one whose workload changed, or one whose proxy holds no configuration (``fresh``: its Envoy restarted,
        listeners gone) is ``starting`` until :meth:`configured`; one known already whose proxy resumes keeps
        taking traffic (it reconnected)."""
        handle = self._leaving.pop(workload.node_id, None)
        if handle is not None:
            handle.cancel()
        known = self.workloads.get(workload.node_id) == workload
        if not known or (fresh and workload.gateway is None and workload.node_id not in self.starting):
            self.workloads[workload.node_id] = workload
            if workload.gateway is None:
                self.starting.add(workload.node_id)
            self._rebuild = True
        self._inputs.pop(workload.node_id, None)  # a new stream needs a snapshot even if nothing changed
        self.poke()

    def configured(self, node_id: str) -> None:
        """The proxy has accepted its configuration: its workload is an endpoint from the next round."""
        if node_id in self.starting:
            self.starting.discard(node_id)
            self._rebuild = True
            self.poke()

    def refresh(self, node_id: str) -> None:
        """Render this workload's configuration again at the next round even if its inputs are unchanged
        (its certificate is due for renewal, say)."""
        self._inputs.pop(node_id, None)
        self.poke()

    def disconnect(self, node_id: str, grace: float | None = None) -> None:
        """A proxy's stream ended: it stops being an endpoint after the grace period."""
        if node_id in self.workloads and node_id not in self._leaving:
            loop = asyncio.get_running_loop()
            delay = self.timing.grace if grace is None else grace
            self._leaving[node_id] = loop.call_later(delay, self._forget, node_id)

    def remember(self, workloads: list[ir.Workload], grace: float) -> None:
        """Workloads a previous run knew: endpoints for ``grace`` seconds unless their proxies reconnect."""
        for workload in workloads:
            if workload.node_id not in self.workloads:
                self.workloads[workload.node_id] = workload
                self.disconnect(workload.node_id, grace)

    def _forget(self, node_id: str) -> None:
        self._leaving.pop(node_id, None)
        self.workloads.pop(node_id, None)
        self.starting.discard(node_id)
        self._inputs.pop(node_id, None)
        self._rebuild = True
        self.poke()

    async def run(self) -> None:
        """Reconcile forever (until cancelled), once per settled burst of pokes."""
        self.poke()
        paced = False  # the round before the loop (serving's start: the whole mesh, no proxy yet) does not count
        while True:
            await settle(self._trigger, quiet=self.timing.quiet, max_delay=self.timing.max_delay)
            try:
                if self._config_due:
                    if paced:
                        await self._paced()
                    paced = True
                    await self.reconcile(statuses=False)
                    self._status_soon(now=False)  # from the loop's next turn: the pushes go out first
                elif self._status_due:
                    self.status_rounds += self._status_soon()
            except Exception:  # one bad round must not end the control plane; the next poke retries
                log.exception("reconcile failed")

    async def _paced(self) -> None:
        """Wait until the last round, begun at ``round_started``, is at most :data:`ROUND_SHARE` of the loop."""
        wait = self.round_started + self.last_round_seconds / ROUND_SHARE - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)

    async def reconcile(self, *, statuses: bool = True) -> None:
        """One round: sync, build, render and publish for affected workloads, then statuses (module docstring).

        :meth:`run` asks for the statuses separately (``statuses=False``): a status pass is synchronous
        (0.3 s at 5,000 objects), and run at the end of the round it held every push the round had just
        published until it was done.
        """
        self._config_due = False
        self._in_round = True
        try:
            await self._round(statuses)
        finally:
            self._in_round = False

    @property
    def busy(self) -> bool:
        """A configuration round is running or due: what the proxies were sent may be about to change."""
        return self._config_due or self._in_round

    async def _round(self, statuses: bool) -> None:
        started = self.round_started = time.perf_counter()
        if self._sync() or self._rebuild or not self.rounds:
            self._rebuild = False
            older = self.config
            self.config, self.problems = build(self.source.world, self.workloads.values(), self._build_memo,
                                               starting=frozenset(self.starting))
            self.config.carry_from(older)
            self.build_seconds = time.perf_counter() - started
            await asyncio.sleep(0)  # between phases too: a long round must not hold streams and ACKs
            self._shapes = _keep_shapes(self.config, self._shapes)
            made_from, self._views_of = self._views_of, None  # until the views below are made
            self._views = self._mesh_views(None if made_from is None else _touched(made_from, self.config))
            self._views_of = self.config
        else:
            self.build_seconds = 0.0
        self.render_seconds, self.rendered, self.patched = 0.0, 0, 0
        for workload in list(self.workloads.values()):
            await self._refresh(workload)
        if statuses:
            self._status_soon()  # after the proxies: statuses are read by people, configuration by proxies
        if self.after_round is not None:
            self.after_round(self.config)
        self.rounds += 1
        self.last_round_seconds = time.perf_counter() - started
        log.debug("round %d: %.3f s (build %.3f s, render %.3f s); %d rendered, %d given endpoints only; "
                  "%d workloads, %d starting", self.rounds, self.last_round_seconds, self.build_seconds,
                  self.render_seconds, self.rendered, self.patched, len(self.workloads), len(self.starting))

    def _sync(self) -> bool:
        """Sync the source; if it refused an edit or holds a deletion, bring the statuses those read up to
        date at once (not when the status pacing allows) and sync again. True if the world changed.

        The gates read statuses, and a pass may be seconds behind the proxies' ACKs at 2,000 proxies: an
        edit made just after the mesh settled was refused on a stale ServiceMeshActive=Unknown and waited
        for the next pass (2.4 s and 10.7 s in two benchmark runs). A whole pass in the round then cost up
        to 0.8 s of the edit's convergence; the waiting objects and what they refer to are a handful
        (:meth:`_update_waiting`). The paced whole pass follows as usual.
        """
        changed = self.source.sync()
        if self.source.waiting() and self.rounds and self._update_waiting():
            changed = self.source.retry() or changed
        return changed

    def _update_waiting(self) -> bool:
        """Compute and record the statuses of the objects the source's waiting edits and deletions read, and of
        what those refer to (a partial pass, exact for them: :func:`compute_status`). True if any changed."""
        world = self.source.world
        version = world.version
        only = with_references(world, self.source.waiting_on())
        statuses = compute_status(world, now=_now(), problems=self.problems, data_plane=dict(self.data_plane()),
                                  memo=self._status_memo, only=only)
        self.source.set_status(statuses)
        return world.version != version

    def _status_soon(self, *, now: bool = True) -> bool:
        """A status pass now (if ``now``) when the last one is old enough (``_status_gap``), else one as soon
        as it is, from the loop (True if it ran now)."""
        wait = self._status_at + self._status_gap - time.monotonic()
        if now and wait <= 0:
            return self.update_status()
        self._status_due = True
        if self._status_timer is None:
            self._status_timer = asyncio.get_running_loop().call_later(max(0.0, wait), self._wake_for_status)
        return False

    def _wake_for_status(self) -> None:
        self._status_timer = None
        self._trigger.set()

    def update_status(self, *, poke: bool = True) -> bool:
        """Compute and record every object's status, unless nothing it depends on changed since the last
        pass (the world, including the statuses written then; the build's problems; the proxies' states).
        True if a pass ran. A pass that wrote a status asks for another (:meth:`_status_soon`): a written
        status is an input of the next pass, which normally finds nothing more to change. It also asks for a
        round (unless not ``poke``: the caller syncs itself) when the source holds a refused edit or deletion,
        which the new statuses may now let pass."""
        self._status_due = False
        started = time.monotonic()
        data_plane = dict(self.data_plane())  # a copy: the source may hand out one mapping and mutate it
        world = self.source.world
        if self._status_inputs == (world.version, self.problems, data_plane):
            return False
        self._status_at = started
        self._status_inputs = (world.version, self.problems, data_plane)
        statuses = compute_status(world, now=_now(), problems=self.problems, data_plane=data_plane,
                                  memo=self._status_memo)
        self.source.set_status(statuses)
        self._status_gap = max(self.timing.status_every, (time.monotonic() - started) / STATUS_SHARE)
        if world.version != self._status_inputs[0]:
            self._status_soon(now=False)
            if poke and self.source.waiting():  # a refusal may pass now: without a round it waits for a file change
                self.poke()
        return True

    async def _refresh(self, workload: ir.Workload) -> None:
        inputs = self._inputs_of(workload)
        last = self._inputs.get(workload.node_id)
        if last == inputs:
            return
        began = time.perf_counter()
        rendered = None
        if self.render_endpoints is not None and last is not None and last[0] == inputs[0] and inputs[1] is not None:
            rendered = self.render_endpoints(self.config, workload)
            self.patched += rendered is not None
        if rendered is None:
            rendered = self.render(self.config, workload)
            self.rendered += 1
        self.render_seconds += time.perf_counter() - began
        published = self.publish(workload, rendered)
        if published is not None:
            await published
        self._inputs[workload.node_id] = inputs
        await asyncio.sleep(0)  # a round renders many proxies: let streams, ACKs and keepalives run between them

    def _mesh_views(self, touched: AbstractSet[str] | None = None) -> dict[Hashable, object]:
        """Per mesh (key ``mesh key``) and per virtual service, a version of what its proxies' configuration
        is made of: the same object as last round when the content is equal.

        A gateway depends on its whole mesh. A sidecar depends on its service's part only (:func:`service_views`):
        what it may call (``_OUTBOUND``), that plus who may call it (``_SERVICE``), and its callees' endpoints
        (``_ENDPOINTS``). Each view is compared once per round, by value with last round's (a service view
        holds its outbound view's version, compared by identity; services that may call the same services
        share one outbound and one endpoints view); workloads then compare versions by identity, so a change
        re-renders only the proxies whose view it touched.

        ``touched`` (:func:`_touched`), when known, holds the only services whose views may have changed since
        the last round: the others keep theirs without being gathered again (at 1,000 services, gathering
        them all was a third of a route edit's round).
        """
        previous = self._views
        views: dict[Hashable, object] = {}
        if touched is not None:
            for key in self._groups.keys() - touched:
                group = self._groups[key]
                for name in (("outbound", group), ("endpoints", group), *(kind + key for kind in _KINDS)):
                    views[name] = previous[name]

        def version(key: Hashable, content: object) -> _View:
            old = previous.get(key)
            view = views[key] = old if isinstance(old, _View) and old.content == content else _View(content)
            return view

        for mesh in self.config.meshes:
            if any(g.mesh == mesh.key for g in self.config.gateways):  # only gateways read the whole mesh
                services = self.config.mesh_services(mesh.key)
                keys = {s.key for s in services}
                version(mesh.key, (mesh, services, tuple(d for d in self.config.deployments if d.service in keys)))
        groups: dict[object, tuple[_View, _View]] = {}  # callee set → its versions, compared once per round
        kept = {} if touched is None else {key: self._groups[key] for key in self._groups.keys() - touched}
        for key, (group, outbound, inbound, endpoints) in service_views(self.config, touched).items():
            if group not in groups:
                groups[group] = (version(("outbound", group), outbound), version(("endpoints", group), endpoints))
            views[_OUTBOUND + key], views[_ENDPOINTS + key] = groups[group]
            version(_SERVICE + key, (groups[group][0], *inbound))
            version(_INBOUND + key, inbound)
            kept[key] = group
        self._groups = kept
        return views

    def outbound_view(self, workload: ir.Workload) -> object | None:
        """The version of what a sidecar's outbound part is made of, endpoints aside (None for a gateway or an
        unknown deployment): unchanged, the renderer may keep that part and swap in new endpoints only."""
        deployment = self.config.deployment(workload.deployment) if workload.gateway is None else None
        return None if deployment is None else self._views.get(_OUTBOUND + deployment.service)

    def inbound_view(self, workload: ir.Workload) -> object | None:
        """What a sidecar's inbound listeners are made of, as a value compared by ``==`` (None for a gateway,
        an unknown deployment, or transparent capture, whose listeners are not split in two): the workload,
        its deployment's shape and the version of its service's inbound view (its inbound shape and, when
        some chain is plaintext, its callers' addresses). Unchanged, the renderer may keep those listeners."""
        if workload.gateway is not None or workload.capture is not ir.Capture.EXPLICIT:
            return None
        deployment = self.config.deployment(workload.deployment)
        view = self._views.get(_INBOUND + deployment.service) if deployment is not None else None
        return None if view is None or deployment is None else (workload, _shape(self.config, deployment), view)

    def _inputs_of(self, workload: ir.Workload) -> tuple[object, object]:
        """Everything a workload's configuration depends on (compared by value; views by version): what
        shapes it, then its callees' endpoints (None for a gateway, which re-renders on any change)."""
        if workload.gateway is not None:  # its IR names its Secrets by fingerprint: a changed one re-renders
            gateway = self.config.gateway(workload.gateway)
            return (workload, gateway, self._views.get(gateway.mesh if gateway else None)), None
        deployment = self.config.deployment(workload.deployment)
        if deployment is None:
            return (workload, None, None), None
        # its own deployment's endpoints do not shape its configuration (its callees' are in the view)
        return ((workload, _shape(self.config, deployment), self._views.get(_SERVICE + deployment.service)),
                self._views.get(_ENDPOINTS + deployment.service))


_SERVICE = "service "  # view keys of virtual services: never a mesh key (keys have no spaces)
_ENDPOINTS = "endpoints "  # view keys of the endpoints a virtual service's proxies may call
_OUTBOUND = "outbound "  # view keys of what a virtual service's proxies may call, endpoints aside
_INBOUND = "inbound "  # view keys of what a virtual service's proxies' inbound listeners are made of
_KINDS = (_SERVICE, _ENDPOINTS, _OUTBOUND, _INBOUND)


def _touched(old: ir.MeshConfig, new: ir.MeshConfig) -> frozenset[str] | None:
    """The services whose views (:func:`service_views`) may differ between two consecutive builds, or None
    when any may: meshes, gateways, the set of services or deployments, who may call whom, the TCP ports of a
    mesh, or a workload changed. Otherwise only the changed services (the build keeps every unchanged
    service and deployment as the very same object) and the services that may call them, by the callee
    index, are touched: a route-table edit, a listener's timeout, a service's hosts or mode."""
    if old.meshes != new.meshes or old.gateways != new.gateways or len(old.services) != len(new.services) \
            or len(old.deployments) != len(new.deployments):
        return None
    services = _owners(old.services, new.services, attrgetter("key", "mesh", "identity", "callers"), "key")
    deployments = _owners(old.deployments, new.deployments, attrgetter("key", "service", "endpoints", "starting"),
                          "service")
    if services is None or deployments is None:
        return None
    if any(old.tcp_ports(mesh.key) != new.tcp_ports(mesh.key) for mesh in new.meshes):
        return None
    changed = services | deployments
    touched = set(changed)
    for service in new.services:
        everyone, named = new.callees(service.mesh)
        if not changed.isdisjoint(everyone) or not changed.isdisjoint(named.get(service.identity, ())):
            touched.add(service.key)
    return frozenset(touched)


def _owners(old: Sequence[Any], new: Sequence[Any], forcing: Callable[[Any], object], owner: str) -> set[str] | None:
    """The services (by the ``owner`` attribute) of the items of ``new`` that are not the very objects of
    ``old`` at the same place; None when one differs in what ``forcing`` reads (then every view may)."""
    found: set[str] = set()
    for was, now in zip(old, new, strict=True):
        if was is not now:
            if forcing(was) != forcing(now):
                return None
            found.add(getattr(now, owner))
    return found


ServiceView = tuple[object, tuple[object, ...], tuple[object, ...], object]


def service_views(config: ir.MeshConfig, only: AbstractSet[str] | None = None) -> dict[str, ServiceView]:
    """Per virtual service key, everything its sidecars' translation reads besides their own deployment:

    * a group: the mesh, the services it may call and the external services its identity may reach.
      Services of one group share the next two parts (the very same objects), so at call-all the mesh is
      gathered and compared once, not once per service;
    * outbound: the mesh (trust domain, mTLS floor, egress) and its TCP ports, the external services, the
      services it may call and their deployments without endpoints (routes, clusters);
    * inbound: the service's identity, mode and callers (:func:`_inbound_shape`: not its hosts or routes,
      which only its callers read) and the addresses of the workloads that may call it when some chain is
      plaintext (RBAC by address);
    * endpoints: those of the deployments it may call, which only change load assignments.

    Built with indexes, once per build; for the services in ``only``, if given.
    """
    deployments: dict[str, list[ir.Deployment]] = {}
    shapes: dict[str, ir.Deployment] = {}  # looked up 20 times per service below: the memo once per deployment
    for deployment in config.deployments:
        deployments.setdefault(deployment.service, []).append(deployment)
        shapes[deployment.key] = _shape(config, deployment)
    services = {service.key: service for service in config.services}
    shared: dict[object, tuple[tuple[object, ...], object]] = {}
    views: dict[str, ServiceView] = {}
    ordered: dict[frozenset[str], tuple[str, ...]] = {}  # callee set → sorted: at call-all, one sort, not 1,000
    for service in config.services:
        if only is not None and service.key not in only:
            continue
        everyone, named = config.callees(service.mesh)  # what translation scopes the service's proxies by
        mesh = config.mesh(service.mesh)
        externals = tuple(e for e in mesh.egress if e.callers.admits(service.identity)) if mesh else ()
        own = named.get(service.identity)
        callees = everyone | own if own else everyone  # the very set object when only "everyone" applies
        if callees not in ordered:
            ordered[callees] = tuple(sorted(callees))
        group = (service.mesh, ordered[callees], externals)
        if group not in shared:
            called = [d for key in group[1] for d in deployments.get(key, ())]
            shared[group] = ((mesh, config.tcp_ports(service.mesh), externals,
                              tuple([services.get(k) for k in group[1]]), tuple([shapes[d.key] for d in called])),
                             tuple([(d.key, d.endpoints) for d in called]))
        plaintext = _plaintext(service, deployments.get(service.key, ()))
        inbound = (_inbound_shape(config, service), config.caller_addresses(service) if plaintext else None)
        views[service.key] = (group, shared[group][0], inbound, shared[group][1])
    return views


def _keep_shapes(config: ir.MeshConfig, previous: Mapping[str, tuple[ir.Deployment, ir.Deployment]]
                 ) -> dict[str, tuple[ir.Deployment, ir.Deployment]]:
    """Each deployment's shape (:func:`_shape`) for ``config``: the last build's shape object while it is
    equal, so the views and every proxy's inputs compare unchanged shapes by identity. Seeds ``config``'s
    memo, which :func:`_shape` reads. Once per build, an identity check per unchanged deployment (the
    build keeps their objects)."""
    shapes: dict[str, tuple[ir.Deployment, ir.Deployment]] = {}
    for deployment in config.deployments:
        held = previous.get(deployment.key)
        if held is None or held[0] is not deployment:
            shape = deployment.shape()
            held = (deployment, held[1] if held is not None and held[1] == shape else shape)
        shapes[deployment.key] = held
        config.memo(("deployment shape", deployment.key), partial(_second, held))
    return shapes


def _second(pair: tuple[ir.Deployment, ir.Deployment]) -> ir.Deployment:
    return pair[1]


def _shape(config: ir.MeshConfig, deployment: ir.Deployment) -> ir.Deployment:
    """A deployment without its endpoints (what shapes its callers' and its own configuration), made once
    per configuration: the views and every proxy's inputs compare it each round."""
    return config.memo(("deployment shape", deployment.key), deployment.shape)


def _inbound_shape(config: ir.MeshConfig, service: ir.Service) -> ir.Service:
    """The service as its own proxies' inbound listeners read it: without hosts and ports (routes). Those
    shape what its callers send; its proxies listen on their deployment's ports. So a route change (a
    destination's first ready endpoint flips its route, at 2,000 proxies starting together for every
    service) does not re-translate the service's own inbound listeners."""
    return config.memo(("inbound shape", service.key), lambda: replace(service, hosts=(), ports=()))


def _plaintext(service: ir.Service, deployments: Iterable[ir.Deployment]) -> bool:
    """Whether some inbound chain of the service admits callers by address (not by certificate): a
    DISABLED or PERMISSIVE service, or a TLS-passthrough port. Only then do its callers' addresses matter,
    so a STRICT service's proxies are not re-rendered each time a caller's workload comes or goes."""
    protocols = {p.protocol for p in service.ports} | {p.protocol for d in deployments for p in d.ports}
    return service.mtls is not ir.Mtls.STRICT or ir.Protocol.TLS_PASSTHROUGH in protocols


class _View:
    """One mesh's content in one round; compared by identity (a new object means the mesh changed)."""

    __slots__ = ("content",)

    def __init__(self, content: object) -> None:
        self.content = content


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
