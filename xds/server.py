"""The ADS server on grpc.aio: State of the World and Delta xDS over one :class:`SnapshotCache`.

The servicer is a thin adapter; each stream is a small state machine (``_SotwStream``,
``_DeltaStream``) fed by one queue, so a proxy costs two idle tasks and no polling. The cache wakes a
stream only when a type's content version changes. Contracts and the traps they avoid
(envoy-notes.md, lessons.md §2 and §4):

* **Order.** Within one push pass — computed from one snapshot — types go CDS → EDS → LDS → RDS → SDS.
* **Children after parents** (trap 3). After every CDS response the stream re-sends EDS for the
  subscribed names with a fresh nonce, and after every LDS response RDS, without waiting for the
  CDS/LDS ACK: Envoy holds that ACK until the clusters finished warming, and a modified cluster with an
  unchanged EDS name set otherwise waits 15 s (``initial_fetch_timeout``). Delta re-sends the
  ClusterLoadAssignments / route configs of the clusters / listeners it just updated.
* **Nonces** (trap 4). SotW: a request whose ``response_nonce`` is not the latest sent for its type is
  stale and not answered; Envoy's next ACK carries the full name list, so nothing is lost. Its
  ``version_info`` still says what the proxy runs, which ends older responses' time in flight. Delta:
  every response is ACKed on its own, so any nonce still pending is answered; an unknown nonce's
  ACK/NACK is ignored, but its subscribe/unsubscribe lists are always applied (they are diffs).
* **Flow control** (SotW). One response of a type is in flight: a version published while the last one
  is unanswered waits for its ACK or NACK, and then the latest goes (versions in between never do), as
  go-control-plane's SotW server does by answering requests only. A slow proxy parses one version, not a
  queue of them: at 200 proxies that may call 1,000 services, every round re-sent each of them a route
  configuration of 1,000 virtual hosts while they were still parsing the last. Forced sends (children
  after parents, a grown subscription) go at once. Delta is not held: its responses are diffs.
* **NACK** = the latest nonce with ``error_detail``: logged, counted per (node, type), passed to
  ``on_nack``, shown in :meth:`AggregatedDiscovery.sync_state`, and the rejected content is parked: it
  is never sent again on that stream (not even as a forced child re-send). The next snapshot that
  changes that type's content is sent normally. (go-control-plane#962's resend loop; Istio and Consul
  do the same.)
* **Make-before-break.** Clusters (and their ClusterLoadAssignments and secrets) that left the snapshot
  but are still named by the listeners/route configs the proxy may be running — ACKed, or sent and not
  yet answered — are kept in what this proxy is sent; once it ACKs listeners/routes that no longer name
  them, a pruned CDS follows. And LDS/RDS naming a cluster the proxy has not ACKed wait while a CDS
  response is in flight (Envoy ACKs CDS once new clusters are warm), because routes are not warmed: a
  route to a warming cluster is a 503.
* **Shared bytes.** A response packs each cached ``Resource.body`` into an ``Any``; no resource message
  is serialised per stream.
* **Identity.** The first request must carry ``node.id``; ``Callbacks.on_stream_open`` may refuse the
  stream (the stream is then aborted with the refusal's status, PERMISSION_DENIED by default); during
  that call :func:`current_peer` tells who connected (address, TLS auth context).
* **Thundering herds.** New streams are admitted at most ``stream_rate`` per second after a burst of
  ``stream_burst`` (a token bucket, :class:`StreamRate`): a stream over the rate waits for its turn
  before its first request is looked at, so a few thousand proxies reconnecting at once (a control
  plane restart) are taken in at a pace the loop can render for, while connected proxies keep being
  served. Waiting is cheap (a sleeping task); refusing would make Envoy back off for seconds.
* **Shutdown.** :meth:`XdsServer.stop` refuses new streams (UNAVAILABLE), ends open ones with status
  OK (Envoy reconnects at once, to another replica if there is one), then stops the gRPC server.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import grpc
import grpc.aio
from envoy.service.discovery.v3 import discovery_pb2

from meshplane.xds import framing
from meshplane.xds.cache import Snapshot, SnapshotCache, content_version
from meshplane.xds.resources import PUSH_ORDER, WILDCARD_TYPES, Resource, TypeUrl

log = logging.getLogger(__name__)

Node = Any
"""``envoy.config.core.v3.Node`` (xds-protos ships no type stubs)."""

T = TypeVar("T")
WILDCARD = "*"
CHILD = {TypeUrl.CLUSTER: TypeUrl.ENDPOINT, TypeUrl.LISTENER: TypeUrl.ROUTE}
"""The type whose resources warm their parent: re-sent after every response of the parent type."""
RETAINABLE = (TypeUrl.CLUSTER, TypeUrl.ENDPOINT, TypeUrl.SECRET)
"""Types make-before-break keeps while in-use listeners/routes still name them."""
_RETAINABLE_BY_URL = {t.value: t for t in RETAINABLE}  # a ref's type string → its TypeUrl, without Enum lookups
_INBOX_SIZE = 16


class StreamRate:
    """A token bucket for new streams: ``rate`` per second on average, ``burst`` at once.

    :meth:`reserve` takes a token now (the count may go negative: a queue of reservations) and says
    how long the caller must wait for it, so callers are served in arrival order without a lock.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a stream rate needs rate > 0 and burst >= 1, not {rate} and {burst}")
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = float(burst)
        self._updated = clock()

    def reserve(self) -> float:
        """Take a token; the seconds until it is due (0: at once)."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate) - 1
        self._updated = now
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


# ---------------------------------------------------------------------------------------------------
# Callbacks (after go-control-plane's CallbackFuncs): optional functions, sync or async.


@dataclass(frozen=True)
class Refusal:
    """What ``on_stream_open`` returns (or raises, as :class:`StreamRefusedError`) to turn a proxy away."""

    message: str
    code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED


class StreamRefusedError(Exception):
    """Raised by ``on_stream_open`` to refuse a stream; expected, so it is not logged as a failure."""

    def __init__(self, message: str, code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED) -> None:
        super().__init__(message)
        self.refusal = Refusal(message, code)


OpenHook = Callable[[int, Node], Awaitable[Refusal | None] | Refusal | None]
CloseHook = Callable[[int, Node], Awaitable[None] | None]
VersionHook = Callable[[str, str, str], Awaitable[None] | None]
NackHook = Callable[[str, str, str, str], Awaitable[None] | None]


@dataclass(frozen=True)
class Callbacks:
    """Hooks into stream life and ACK/NACK; every one optional, each may be a plain or async function.

    * ``on_stream_open(stream_id, node)``: return/raise a refusal to abort the stream. An unexpected
      exception also refuses it (INTERNAL): admission fails closed.
    * ``on_stream_close(stream_id, node)``: once for every admitted stream.
    * ``on_ack(node_id, type_url, version)``, ``on_nack(node_id, type_url, version, message)``: the
      version is the one this server sent (for a NACK: the rejected one).
    * ``on_response(node_id, type_url, version)``: after a response was handed to gRPC.

    Hooks run inline on the stream's task, so keep them quick (hand slow work to a queue). Failures of
    the observer hooks are logged and never end a stream.
    """

    on_stream_open: OpenHook | None = None
    on_stream_close: CloseHook | None = None
    on_ack: VersionHook | None = None
    on_nack: NackHook | None = None
    on_response: VersionHook | None = None


async def _resolve(value: Awaitable[T] | T) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


async def _notify(hook: Callable[..., Awaitable[None] | None] | None, *args: object) -> None:
    """Run an observer hook; a failing hook is a bug in the observer, not a reason to drop the proxy."""
    if hook is None:
        return
    try:
        await _resolve(hook(*args))
    except Exception:
        log.exception("xDS callback %s failed", getattr(hook, "__name__", hook))


@dataclass(frozen=True)
class Peer:
    """Who opened a stream: gRPC peer address and TLS auth context (empty in plaintext); and whether its first
    request says it holds configuration already (``resumes``: a SotW ``version_info``, or Delta
    ``initial_resource_versions``), as a proxy reconnecting does and a proxy just started does not."""

    address: str
    auth: Mapping[str, tuple[bytes, ...]]
    resumes: bool = False


_current_peer: contextvars.ContextVar[Peer | None] = contextvars.ContextVar("meshplane_xds_peer", default=None)


def current_peer() -> Peer | None:
    """Inside ``on_stream_open``: the connecting peer, to check the node's claimed identity against."""
    return _current_peer.get()


# ---------------------------------------------------------------------------------------------------
# Sync state: what /debug/syncz will show.


@dataclass(frozen=True)
class TypeSync:
    """One proxy's view of one type: version sent, version ACKed, and the last NACK."""

    sent: str = ""
    acked: str = ""
    nacked: str = ""
    nack_message: str = ""
    pending: bool = False  # the snapshot changed for this type and the stream has not pushed it yet

    @property
    def status(self) -> str:
        """NOT_SENT, SYNCED (latest ACKed), NACKED (latest rejected) or STALE (latest not answered yet, or a
        newer one not sent yet: a published change is never reported SYNCED on the version before it)."""
        if not self.sent:
            return "NOT_SENT"
        if self.pending:
            return "STALE"
        if self.acked == self.sent:
            return "SYNCED"
        if self.nacked == self.sent:
            return "NACKED"
        return "STALE"


def configured(states: Mapping[str, TypeSync]) -> bool:
    """Whether a proxy (its :meth:`AggregatedDiscovery.sync_state`) has accepted some version of every type
    it asks for, listeners among them: the readiness that makes its workload an endpoint.

    Envoy asks for the routes and secrets its listeners name while it applies them, before it ACKs them
    (those requests are paused until the listener update is done); so once this holds, its listeners have
    what they wait on to warm, and a caller sent to it finds them there.
    """
    return TypeUrl.LISTENER.value in states and all(s.acked for s in states.values())


# ---------------------------------------------------------------------------------------------------
# Pure helpers.


@dataclass(frozen=True)
class Subscription:
    """What a proxy asked for of one type: everything (wildcard) and/or explicit names."""

    wildcard: bool = False
    names: frozenset[str] = frozenset()

    def wants(self, name: str) -> bool:
        return self.wildcard or name in self.names

    def select(self, available: Mapping[str, Resource]) -> Mapping[str, Resource]:
        """The subscribed subset of ``available``."""
        if self.wildcard:
            return available
        return {name: available[name] for name in self.names if name in available}


def sotw_subscription(type_url: TypeUrl, names: Iterable[str], previous: Subscription | None) -> Subscription:
    """A SotW request's subscription. ``*`` is wildcard; for CDS/LDS so is an empty first request
    (legacy wildcard), which stays wildcard while requests keep naming nothing."""
    named = frozenset(names)
    if WILDCARD in named:
        return Subscription(True, named - {WILDCARD})
    legacy = not named and type_url in WILDCARD_TYPES and (previous is None or previous.wildcard)
    return Subscription(legacy, named)


def delta_subscription(
    type_url: TypeUrl, subscribe: Iterable[str], unsubscribe: Iterable[str], previous: Subscription | None
) -> Subscription:
    """Apply a delta request's subscribe/unsubscribe lists. The first request for CDS/LDS naming nothing
    is wildcard (Envoy's legacy wildcard, also on reconnect); ``*`` can be (un)subscribed explicitly."""
    added, dropped = frozenset(subscribe), frozenset(unsubscribe)
    if previous is None:
        wildcard = WILDCARD in added or (not added and type_url in WILDCARD_TYPES)
        names = added
    else:
        wildcard = previous.wildcard or WILDCARD in added
        names = previous.names | added
    if WILDCARD in dropped:
        wildcard = False
    return Subscription(wildcard, (names - dropped) - {WILDCARD})


def retained_resources(
    snapshot: Snapshot, roots: Iterable[Resource], held: Mapping[TypeUrl, Mapping[str, Resource]]
) -> dict[TypeUrl, dict[str, Resource]]:
    """Make-before-break: resources gone from ``snapshot`` that ``roots`` (the listeners and route
    configs the proxy may be running) still name, directly or through a kept cluster, and that the
    proxy holds (``held``: what it was last sent). Only clusters, endpoints and secrets are kept."""
    kept: dict[TypeUrl, dict[str, Resource]] = {}
    present: dict[TypeUrl, Mapping[str, Resource]] = {}
    todo = [ref for root in roots for ref in root.refs]
    while todo:  # at call-all a route configuration names 2,000 clusters: each check must be a dict lookup
        kind, name = todo.pop()
        type_url = _RETAINABLE_BY_URL.get(kind)
        if type_url is None:
            continue
        served = present.get(type_url)
        if served is None:
            served = present[type_url] = snapshot.items(type_url)
        if name in served or name in kept.get(type_url, {}):
            continue
        old = held.get(type_url, {}).get(name)
        if old is not None:
            kept.setdefault(type_url, {})[name] = old
            todo.extend(old.refs)
    return kept


def clusters_named(resources: Iterable[Resource]) -> set[str]:
    """Clusters the given resources route to."""
    return {name for resource in resources for name in resource.refs_of(TypeUrl.CLUSTER)}


def sotw_response(type_url: TypeUrl, version: str, nonce: str, resources: Mapping[str, Resource]) -> bytes:
    """A serialised DiscoveryResponse framing cached bytes (sorted by name, so equal content is equal bytes)."""
    return framing.sotw_response(type_url.value, version, nonce, resources)


def delta_response(
    type_url: TypeUrl, version: str, nonce: str, updates: Mapping[str, Resource], removed: Sequence[str]
) -> bytes:
    """A serialised DeltaDiscoveryResponse framing cached bytes; each resource's version is its digest."""
    return framing.delta_response(type_url.value, version, nonce, updates, removed)


ADS_SERVICE = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def ads_handler(ads: AggregatedDiscovery) -> grpc.GenericRpcHandler[Any, Any]:
    """The ADS methods, sending responses already serialised (:mod:`framing`) as they are."""
    def handler(method: Any, request: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.stream_stream_rpc_method_handler(method, request_deserializer=request.FromString,
                                                     response_serializer=bytes)
    return grpc.method_handlers_generic_handler(ADS_SERVICE, {
        "StreamAggregatedResources": handler(ads.StreamAggregatedResources, discovery_pb2.DiscoveryRequest),
        "DeltaAggregatedResources": handler(ads.DeltaAggregatedResources, discovery_pb2.DeltaDiscoveryRequest),
    })


# ---------------------------------------------------------------------------------------------------
# Per-stream state.


@dataclass(eq=False)
class _Sent:
    """A response not answered yet: its version and the resources it carried (delta: updates only)."""

    version: str
    resources: dict[str, Resource]
    removed: frozenset[str] = frozenset()


@dataclass(eq=False)
class _TypeState:
    """One type on one stream."""

    type_url: TypeUrl
    subscription: Subscription
    held: dict[str, Resource] = field(default_factory=dict)  # what the proxy has once it applies what was sent
    acked: dict[str, Resource] = field(default_factory=dict)  # what it acknowledged
    pending: dict[str, _Sent] = field(default_factory=dict)  # nonce → unanswered response
    nonce: str = ""  # latest nonce sent
    sync: TypeSync = TypeSync()
    force: bool = False  # SotW: respond even if the content did not change
    parked: str = ""  # SotW: version NACKed on this stream, never sent again
    client: dict[str, str] = field(default_factory=dict)  # delta: name → version the proxy has (or will have)
    force_names: set[str] = field(default_factory=set)  # delta: (re)send these even if unchanged
    rejected: set[tuple[str, str]] = field(default_factory=set)  # delta: (name, digest) NACKed
    answer_due: bool = False  # delta: the first request wants a response even if it is empty
    adopt_initial: bool = False  # delta: resolve initial_resource_versions against the snapshot

    def in_use(self) -> list[Resource]:
        """What the proxy may be running: ACKed, or sent and not answered (Envoy applies in order)."""
        sent = [r for s in self.pending.values() for r in s.resources.values()]
        return [*self.acked.values(), *sent]


_EOF = object()
_WAKE = object()


class _PeerGoneError(Exception):
    """The proxy went away while we wrote to it: expected, ends the stream quietly."""


class _Stream:
    """One ADS stream: a reader task feeding a queue, and a loop that handles requests and pushes.

    All state changes happen in the loop; the cache watcher and :meth:`close` only record and wake.
    """

    protocol = ""

    def __init__(self, ads: AggregatedDiscovery, stream_id: int, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        self.ads = ads
        self.id = stream_id
        self.context = context
        self.node: Node | None = None
        self.node_id = ""
        self.types: dict[TypeUrl, _TypeState] = {}
        self.dirty: set[TypeUrl] = set()
        self.done = asyncio.Event()
        self._changed: set[TypeUrl] = set()
        # held type → the type whose answer releases it: LDS/RDS gated on CDS, or (SotW flow control) a
        # type whose response in flight must be answered first
        self._held: dict[TypeUrl, TypeUrl] = {}
        self._inbox: asyncio.Queue[object] = asyncio.Queue(maxsize=_INBOX_SIZE)
        self._nonces = itertools.count(1)
        self._closing = False
        self._generation = 0
        self._view_key: tuple[Snapshot, int] | None = None
        self._retained: dict[TypeUrl, dict[str, Resource]] = {}

    # -- life cycle --------------------------------------------------------------------------------

    async def serve(self, requests: AsyncIterator[Any]) -> None:
        reader = asyncio.create_task(self._read(requests))
        try:
            first = await self._next()
            if first is not None:
                await self._run(first)
        finally:
            # Not awaited: a read pending in grpc.aio only ends with the call itself, which ends when
            # this handler returns. The servicer holds the task until then.
            reader.cancel()
            self.ads._linger(reader)
            self.done.set()

    async def _run(self, first: Any) -> None:
        await self._admit(first)
        unwatch = self.ads.cache.watch(self.node_id, self._on_change)
        log.info("%s stream %d opened by %s", self.protocol, self.id, self.node_id)
        try:
            await self._loop(first)
        except _PeerGoneError as gone:
            log.debug("stream %d (%s): %s", self.id, self.node_id, gone)
        finally:
            unwatch()
            log.info("%s stream %d of %s closed", self.protocol, self.id, self.node_id)
            await _notify(self.ads.callbacks.on_stream_close, self.id, self.node)

    async def _admit(self, first: Any) -> None:
        """Fix the stream's identity from the first request (in its turn under the stream rate), or abort it."""
        if self.ads.stream_rate is not None:
            wait = self.ads.stream_rate.reserve()
            if wait > 0:
                await asyncio.sleep(wait)
        if not first.HasField("node") or not first.node.id:
            await self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first xDS request must carry node.id")
        refusal = await self._ask_admission(first)
        if refusal is not None:
            log.warning("stream %d from %s refused: %s", self.id, first.node.id, refusal.message)
            await self.context.abort(refusal.code, refusal.message)
        self.node, self.node_id = first.node, first.node.id
        self.ads._by_node.setdefault(self.node_id, {})[self.id] = self

    async def _ask_admission(self, first: Any) -> Refusal | None:
        hook = self.ads.callbacks.on_stream_open
        if hook is None:
            return None
        node = first.node
        auth = {key: tuple(values) for key, values in self.context.auth_context().items()}
        token = _current_peer.set(Peer(self.context.peer(), auth, self._resumes(first)))
        try:
            return await _resolve(hook(self.id, node))
        except StreamRefusedError as refused:
            return refused.refusal
        except Exception:
            log.exception("on_stream_open failed for %s; refusing the stream", node.id)
            return Refusal("the control plane could not admit this proxy", grpc.StatusCode.INTERNAL)
        finally:
            _current_peer.reset(token)

    async def _loop(self, first: Any) -> None:
        item: Any = first
        while item is not None:
            if item is not _WAKE:
                await self._handle(item)
            self._absorb_changes()
            await self._push()
            item = await self._next()

    async def _read(self, requests: AsyncIterator[Any]) -> None:
        try:
            async for request in requests:
                await self._inbox.put(request)
        except Exception as error:  # the peer went away mid-message; the stream is over either way
            log.debug("stream %d: reading ended: %r", self.id, error)
        await self._inbox.put(_EOF)

    async def _next(self) -> Any:
        """The next request or wake-up; None when the stream is over."""
        item = await self._inbox.get()
        return None if item is _EOF or self._closing else item

    def _wake(self) -> None:
        if self._inbox.empty():  # otherwise the loop is about to run anyway
            self._inbox.put_nowait(_WAKE)

    def _on_change(self, changed: frozenset[TypeUrl]) -> None:
        self._changed |= changed
        self._wake()

    def close(self) -> None:
        """End the stream cleanly (status OK) at the loop's next turn."""
        self._closing = True
        self._wake()

    def pending(self) -> set[TypeUrl]:
        """The types a cache change marked for a push this stream has not made yet (held ones included)."""
        return self.dirty | self._changed | self._held.keys()

    def _absorb_changes(self) -> None:
        if self._changed:
            self.dirty |= self._changed
            self._changed.clear()
            self._generation += 1

    @staticmethod
    def _resumes(first: Any) -> bool:
        """Whether the first request says the proxy holds configuration already (:attr:`Peer.resumes`)."""
        raise NotImplementedError

    # -- shared protocol logic -------------------------------------------------------------------

    async def _handle(self, request: Any) -> None:
        raise NotImplementedError

    async def _push_type(self, state: _TypeState, snapshot: Snapshot) -> None:
        raise NotImplementedError

    async def _push(self) -> None:
        """One pass over the dirty types, in push order, all computed from one snapshot."""
        snapshot = self.ads.cache.get(self.node_id)
        if snapshot is None:
            return
        for type_url in PUSH_ORDER:
            if type_url in self.dirty:
                self.dirty.discard(type_url)
                state = self.types.get(type_url)
                if state is not None:
                    await self._push_type(state, snapshot)

    def _type_of(self, type_url: str) -> TypeUrl | None:
        try:
            return TypeUrl(type_url)
        except ValueError:
            log.info("stream %d (%s) asked for unserved type %r; ignored", self.id, self.node_id, type_url)
            return None

    def _mark(self, type_url: TypeUrl, *, force: bool = False) -> None:
        state = self.types.get(type_url)
        if state is not None:
            self.dirty.add(type_url)
            state.force = state.force or force

    def _available(self, type_url: TypeUrl, snapshot: Snapshot) -> tuple[Mapping[str, Resource], bool]:
        """The snapshot's resources of a type plus those kept for make-before-break; and whether any were."""
        kept = self._retained_for(snapshot).get(type_url)
        base = snapshot.items(type_url)
        return ({**base, **kept}, True) if kept else (base, False)

    def _retained_for(self, snapshot: Snapshot) -> dict[TypeUrl, dict[str, Resource]]:
        key = (snapshot, self._generation)
        if self._view_key != key:
            roots = [r for t in (TypeUrl.LISTENER, TypeUrl.ROUTE) if t in self.types for r in self.types[t].in_use()]
            held = {t: self.types[t].held for t in RETAINABLE if t in self.types}
            self._retained = retained_resources(snapshot, roots, held)
            self._view_key = key
        return self._retained

    def _gated(self, type_url: TypeUrl, outgoing: Iterable[Resource]) -> bool:
        """Hold LDS/RDS naming clusters the proxy has not ACKed while a CDS response is in flight."""
        cds = self.types.get(TypeUrl.CLUSTER)
        if type_url not in (TypeUrl.LISTENER, TypeUrl.ROUTE) or cds is None or not cds.pending:
            return False
        if clusters_named(outgoing) <= cds.acked.keys():
            return False
        self._held[type_url] = TypeUrl.CLUSTER
        return True

    def _after_answer(self, type_url: TypeUrl) -> None:
        """An ACK/NACK may release gated LDS/RDS (CDS answered) or let kept clusters go (LDS/RDS answered),
        and releases a newer version of its own type held by flow control."""
        self._generation += 1
        for held in [held for held, until in self._held.items() if until is type_url]:
            del self._held[held]
            self._mark(held)  # pushed again: it is held again if it still has to wait
        if type_url in (TypeUrl.LISTENER, TypeUrl.ROUTE) and any(self._retained.values()):
            for kept in RETAINABLE:
                self._mark(kept)

    def _next_nonce(self) -> str:
        return str(next(self._nonces))

    def _record_sent(self, state: _TypeState, nonce: str, sent: _Sent) -> None:
        state.nonce = nonce
        state.pending[nonce] = sent
        state.sync = replace(state.sync, sent=sent.version)
        self._generation += 1

    async def _write(self, type_url: TypeUrl, version: str, response: Any) -> None:
        async with self.ads._push_slots:
            try:
                await self.context.write(response)
            except (grpc.aio.UsageError, grpc.aio.InternalError) as error:
                raise _PeerGoneError(f"writing {type_url.short} failed: {error}") from error
        log.debug("sent %s %s to %s (stream %d)", type_url.short, version, self.node_id, self.id)
        await _notify(self.ads.callbacks.on_response, self.node_id, type_url.value, version)

    async def _ack(self, state: _TypeState, version: str) -> None:
        state.sync = replace(state.sync, acked=version)
        await _notify(self.ads.callbacks.on_ack, self.node_id, state.type_url.value, version)

    async def _nack(self, state: _TypeState, version: str, message: str) -> None:
        state.sync = replace(state.sync, nacked=version, nack_message=message)
        self.ads.nacks[(self.node_id, state.type_url.value)] += 1
        log.warning("%s rejected %s version %s: %s", self.node_id, state.type_url.short, version, message)
        await _notify(self.ads.callbacks.on_nack, self.node_id, state.type_url.value, version, message)


class _SotwStream(_Stream):
    """State of the World: every response carries the full subscribed set of its type."""

    protocol = "SotW"

    @staticmethod
    def _resumes(first: Any) -> bool:
        return bool(first.version_info)

    async def _handle(self, request: Any) -> None:
        type_url = self._type_of(request.type_url)
        if type_url is None:
            return
        state = self.types.get(type_url)
        nonce = request.response_nonce
        if state is None:
            self.types[type_url] = _TypeState(type_url, sotw_subscription(type_url, request.resource_names, None))
            self._mark(type_url, force=True)
            return
        if nonce and state.nonce and nonce != state.nonce:
            log.debug("stale %s nonce %s from %s (latest %s)", type_url.short, nonce, self.node_id, state.nonce)
            self._learn_running(state, request.version_info)
            return
        if nonce and nonce in state.pending:
            await self._answer(state, request)
        self._resubscribe(state, request, initial=not nonce)

    def _resubscribe(self, state: _TypeState, request: Any, *, initial: bool) -> None:
        """A changed name list is answered; forced only if names were added (or the request starts over),
        since a proxy drops unsubscribed EDS/RDS/SDS resources by itself."""
        subscription = sotw_subscription(state.type_url, request.resource_names, state.subscription)
        if subscription == state.subscription and not initial:
            return
        old = state.subscription
        grew = initial or (subscription.wildcard and not old.wildcard) or not subscription.names <= old.names
        state.subscription = subscription
        self._mark(state.type_url, force=grew)

    async def _answer(self, state: _TypeState, request: Any) -> None:
        sent = state.pending.pop(request.response_nonce)
        if request.HasField("error_detail"):
            state.parked = sent.version
            state.acked = self._running(state, request.version_info)
            await self._nack(state, sent.version, request.error_detail.message)
        else:
            state.acked = sent.resources
            await self._ack(state, sent.version)
        state.pending.clear()
        self._after_answer(state.type_url)

    def _learn_running(self, state: _TypeState, version: str) -> None:
        """A stale request is not answered, but its ``version_info`` is what the proxy now runs: responses
        up to the one with that version are no longer in flight. Without this, a CDS changing faster
        than Envoy warms it would hold routes to long-ACKed clusters (and keep old clusters) forever."""
        nonces = list(state.pending)
        for position, nonce in enumerate(nonces):
            if state.pending[nonce].version == version:
                state.acked = state.pending[nonce].resources
                for done in nonces[: position + 1]:
                    del state.pending[done]
                self._after_answer(state.type_url)
                return

    @staticmethod
    def _running(state: _TypeState, version: str) -> dict[str, Resource]:
        """After a NACK: the content the proxy says it runs (its ``version_info``), as far as we know it."""
        for sent in state.pending.values():
            if sent.version == version:
                return sent.resources
        return state.acked

    async def _push_type(self, state: _TypeState, snapshot: Snapshot) -> None:
        if state.pending and not state.force:  # flow control: one response of a type in flight
            self._held[state.type_url] = state.type_url
            return
        resources, version = self._select(state, snapshot)
        if version == state.sync.sent and not state.force:
            return
        if version == state.parked:
            state.force = False
            return
        if self._gated(state.type_url, resources.values()):
            return
        state.force = False
        await self._send(state, resources, version)
        child = CHILD.get(state.type_url)
        if child is not None:
            self._mark(child, force=True)

    def _select(self, state: _TypeState, snapshot: Snapshot) -> tuple[Mapping[str, Resource], str]:
        available, kept = self._available(state.type_url, snapshot)
        if state.subscription.wildcard and not kept:
            return available, snapshot.version(state.type_url)
        chosen = state.subscription.select(available)
        if not kept and len(chosen) == len(available):  # every one (the usual EDS case): no hash of them all
            return chosen, snapshot.version(state.type_url)
        return chosen, content_version(chosen.values())

    async def _send(self, state: _TypeState, resources: Mapping[str, Resource], version: str) -> None:
        nonce = self._next_nonce()
        response = sotw_response(state.type_url, version, nonce, resources)
        state.held = dict(resources)
        self._record_sent(state, nonce, _Sent(version, state.held))
        await self._write(state.type_url, version, response)


class _DeltaStream(_Stream):
    """Incremental xDS: only changed resources and removals are sent; versions are per resource.

    A subscribed name that does not exist is answered with ``removed_resources`` (so Envoy need not
    wait for its fetch timeout); what the proxy reported in ``initial_resource_versions`` is not re-sent.
    """

    protocol = "Delta"

    @staticmethod
    def _resumes(first: Any) -> bool:
        return bool(first.initial_resource_versions)

    async def _handle(self, request: Any) -> None:
        type_url = self._type_of(request.type_url)
        if type_url is None:
            return
        state = self.types.get(type_url)
        if state is None:
            state = self._open_type(type_url, request)
        else:
            self._resubscribe(state, request)
        if request.response_nonce:
            await self._answer(state, request)
        if request.resource_names_subscribe or request.resource_names_unsubscribe or state.answer_due:
            self._mark(type_url)

    def _open_type(self, type_url: TypeUrl, request: Any) -> _TypeState:
        """The first request of a type: subscription, plus what the proxy kept from an earlier stream."""
        subscribe = set(request.resource_names_subscribe)
        subscription = delta_subscription(type_url, subscribe, request.resource_names_unsubscribe, None)
        state = _TypeState(type_url, subscription, answer_due=True, adopt_initial=True)
        state.client = dict(request.initial_resource_versions)
        state.force_names = subscribe - state.client.keys() - {WILDCARD}
        self.types[type_url] = state
        return state

    def _resubscribe(self, state: _TypeState, request: Any) -> None:
        """Apply subscribe/unsubscribe; the proxy drops what it no longer wants, and newly subscribed
        names are sent even if we think it has them (the protocol says it may have forgotten them)."""
        subscribe = set(request.resource_names_subscribe)
        unsubscribe = request.resource_names_unsubscribe
        state.subscription = delta_subscription(state.type_url, subscribe, unsubscribe, state.subscription)
        for name in [n for n in state.client if not state.subscription.wants(n)]:
            for known in (state.client, state.held, state.acked):
                known.pop(name, None)
        state.force_names = {n for n in state.force_names | subscribe if state.subscription.wants(n)}

    async def _answer(self, state: _TypeState, request: Any) -> None:
        sent = state.pending.pop(request.response_nonce, None)
        if sent is None:
            log.debug("unknown %s nonce %s from %s", state.type_url.short, request.response_nonce, self.node_id)
            return
        if request.HasField("error_detail"):
            state.rejected |= {(name, r.digest) for name, r in sent.resources.items()}
            await self._nack(state, sent.version, request.error_detail.message)
        else:
            for name in sent.removed:
                state.acked.pop(name, None)
            state.acked.update(sent.resources)
            await self._ack(state, sent.version)
        self._after_answer(state.type_url)

    async def _push_type(self, state: _TypeState, snapshot: Snapshot) -> None:
        if state.adopt_initial:
            self._adopt_initial(state, snapshot)
        available, kept = self._available(state.type_url, snapshot)
        wanted = state.subscription.select(available)
        updates = self._updates(state, wanted)
        removed = sorted({n for n in state.client if n not in wanted} | (state.force_names - wanted.keys()))
        if not (updates or removed or state.answer_due) or self._gated(state.type_url, updates.values()):
            return
        if state.subscription.wildcard and not kept:
            version = snapshot.version(state.type_url)
        else:
            version = content_version(wanted.values())
        state.force_names.clear()
        state.answer_due = False
        await self._send(state, updates, removed, version)
        self._force_children(state.type_url, updates)

    @staticmethod
    def _adopt_initial(state: _TypeState, snapshot: Snapshot) -> None:
        """Resources the proxy reported having that match the snapshot count as held and ACKed, so
        make-before-break protects them after a reconnect too."""
        state.adopt_initial = False
        current = snapshot.items(state.type_url)
        for name, version in state.client.items():
            resource = current.get(name)
            if resource is not None and resource.digest == version:
                state.held[name] = state.acked[name] = resource

    @staticmethod
    def _updates(state: _TypeState, wanted: Mapping[str, Resource]) -> dict[str, Resource]:
        """Wanted resources the proxy lacks or has in another version, plus forced ones not rejected."""
        state.rejected = {(n, d) for n, d in state.rejected if n in wanted and wanted[n].digest == d}
        return {
            name: resource
            for name, resource in wanted.items()
            if state.client.get(name) != resource.digest
            or (name in state.force_names and (name, resource.digest) not in state.rejected)
        }

    def _force_children(self, type_url: TypeUrl, updates: Mapping[str, Resource]) -> None:
        """Re-send the children of updated clusters/listeners (trap 3 in delta form)."""
        child = CHILD.get(type_url)
        state = self.types.get(child) if child is not None else None
        if child is None or state is None:
            return
        names = {n for r in updates.values() for n in r.refs_of(child) if state.subscription.wants(n)}
        if names:
            state.force_names |= names
            self._mark(child)

    async def _send(
        self, state: _TypeState, updates: Mapping[str, Resource], removed: Sequence[str], version: str
    ) -> None:
        nonce = self._next_nonce()
        response = delta_response(state.type_url, version, nonce, updates, removed)
        for name, resource in updates.items():
            state.client[name] = resource.digest
            state.held[name] = resource
        for name in removed:
            state.client.pop(name, None)
            state.held.pop(name, None)
        self._record_sent(state, nonce, _Sent(version, dict(updates), frozenset(removed)))
        await self._write(state.type_url, version, response)


# ---------------------------------------------------------------------------------------------------
# The servicer and the gRPC server around it.


class AggregatedDiscovery:
    """The ADS servicer (SotW and Delta) over a :class:`SnapshotCache`; knows nothing of the IR."""

    def __init__(self, cache: SnapshotCache, callbacks: Callbacks | None = None, *, push_concurrency: int = 64,
                 stream_rate: StreamRate | None = None) -> None:
        """``push_concurrency`` bounds how many responses are being written at once (memory held by
        in-flight responses), after Istio's PILOT_PUSH_THROTTLE; ``stream_rate`` paces new streams."""
        self.cache = cache
        self.stream_rate = stream_rate
        self._by_node: dict[str, dict[int, _Stream]] = {}  # node id → its admitted streams
        self.callbacks = callbacks or Callbacks()
        self._push_slots = asyncio.Semaphore(push_concurrency)
        self.nacks: Counter[tuple[str, str]] = Counter()
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)
        self._closing = False
        self._lingering: set[asyncio.Task[None]] = set()

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await self._serve(_SotwStream, request_iterator, context)

    async def DeltaAggregatedResources(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        await self._serve(_DeltaStream, request_iterator, context)

    async def _serve(
        self, kind: type[_Stream], requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        if self._closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the control plane is shutting down; reconnect")
        stream = kind(self, next(self._ids), context)
        self._streams[stream.id] = stream
        try:
            await stream.serve(requests)
        finally:
            del self._streams[stream.id]
            mine = self._by_node.get(stream.node_id)
            if mine is not None:
                mine.pop(stream.id, None)
                if not mine:
                    del self._by_node[stream.node_id]

    def _linger(self, task: asyncio.Task[None]) -> None:
        """Keep a strong reference to a finishing task (the loop holds tasks only weakly)."""
        self._lingering.add(task)
        task.add_done_callback(self._lingering.discard)

    def sync_state(self, node_id: str) -> dict[str, TypeSync]:
        """Per type URL, what the node's newest stream sent, what it ACKed and its last NACK."""
        streams = self._by_node.get(node_id)
        if not streams:
            return {}
        newest = streams[max(streams)]
        waiting = newest.pending()
        return {t.value: replace(state.sync, pending=True) if t in waiting else state.sync
                for t, state in newest.types.items()}

    def sync_states(self) -> dict[str, dict[str, TypeSync]]:
        """:meth:`sync_state` of every connected node, by node id (the body of /debug/syncz)."""
        return {node_id: self.sync_state(node_id) for node_id in sorted(self.connected())}

    def connected(self) -> dict[str, list[int]]:
        """Node id → ids of its open, admitted streams."""
        return {node_id: sorted(streams) for node_id, streams in self._by_node.items()}

    def nack_count(self, node_id: str, type_url: str) -> int:
        """How many NACKs this node sent for this type since the server started."""
        return self.nacks[(node_id, type_url)]

    async def close(self, timeout: float = 5.0) -> None:
        """Refuse new streams and end open ones with status OK; wait (bounded) until they are gone."""
        self._closing = True
        streams = list(self._streams.values())
        for stream in streams:
            stream.close()
        if streams:
            waits = [asyncio.ensure_future(s.done.wait()) for s in streams]
            _, late = await asyncio.wait(waits, timeout=timeout)
            for wait in late:
                wait.cancel()


class XdsServer(grpc.aio.Server):
    """A ``grpc.aio.Server`` whose :meth:`stop` first ends ADS streams cleanly (status OK, so proxies
    reconnect at once) instead of letting them be cancelled when the grace period runs out."""

    def __init__(self, inner: grpc.aio.Server, ads: AggregatedDiscovery) -> None:
        self.inner = inner
        self.ads = ads

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler[Any, Any]]) -> None:
        self.inner.add_generic_rpc_handlers(generic_rpc_handlers)

    def add_registered_method_handlers(self, service_name: str, method_handlers: Mapping[str, Any]) -> None:
        self.inner.add_registered_method_handlers(service_name, method_handlers)  # type: ignore[attr-defined]

    def add_insecure_port(self, address: str) -> int:
        return self.inner.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self.inner.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self.inner.start()

    async def stop(self, grace: float | None = None) -> None:
        await self.ads.close(timeout=grace if grace is not None else 1.0)
        await self.inner.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self.inner.wait_for_termination(timeout)


def _grpc_options(max_message_bytes: int, extra: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Large messages (EDS ACKs repeat every name: trap 5), keepalive to find dead proxies, and
    tolerance for the proxies' own keepalive pings.

    A new stream waits in gRPC core until the loop picks it up. By default gRPC cancels it after 30 s,
    or sooner once more than 1,000 wait. When thousands of proxies connect at once that cancels hundreds
    of them, and each reconnect restarts its sync: bench/fanout.py counted 340 to 845 cancellations at
    2,000 proxies. Letting them wait is cheaper.
    """
    return [
        ("grpc.server_max_unrequested_time_in_server", 600),  # seconds
        ("grpc.server.max_pending_requests", 20_000),
        ("grpc.server.max_pending_requests_hard_limit", 40_000),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        *extra,
    ]


async def serve(
    address: str,
    cache: SnapshotCache,
    callbacks: Callbacks | None = None,
    *,
    credentials: grpc.ServerCredentials | None = None,
    max_streams: int | None = None,
    push_concurrency: int = 64,
    stream_rate: StreamRate | None = None,
    max_message_bytes: int = 64 * 1024 * 1024,
    options: Sequence[tuple[str, Any]] = (),
) -> tuple[XdsServer, int]:
    """Start ADS on ``address`` (``host:port``; port 0 picks a free one); return the server and its port.

    ``credentials`` switches to TLS (mTLS: ``grpc.ssl_server_credentials(..., require_client_auth=True)``);
    ``max_streams`` caps concurrent streams (further ones get RESOURCE_EXHAUSTED); ``stream_rate`` paces
    new ones (module docstring). The servicer, with
    :meth:`AggregatedDiscovery.sync_state`, is ``server.ads``. Stop with ``await server.stop(grace)``.
    """
    ads = AggregatedDiscovery(cache, callbacks, push_concurrency=push_concurrency, stream_rate=stream_rate)
    inner = grpc.aio.server(options=_grpc_options(max_message_bytes, options), maximum_concurrent_rpcs=max_streams)
    inner.add_generic_rpc_handlers((ads_handler(ads),))
    server = XdsServer(inner, ads)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    await server.start()
    log.info("ADS listening on %s (port %d, %s)", address, port, "TLS" if credentials else "plaintext")
    return server, port
