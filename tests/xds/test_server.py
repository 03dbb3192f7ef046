"""The ADS server, driven by hand-written clients over real gRPC on 127.0.0.1, and by the real Envoy.

The hand-driven clients speak the protocol one message at a time, so each test states exactly which
response must follow which request (and which must *not* come: ``quiet``). The Envoy tests prove the
same server configures a real proxy, in State of the World and in Delta, and shifts traffic between
clusters without failing a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import grpc.aio
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from meshplane.xds.cache import Snapshot, SnapshotCache
from meshplane.xds.resources import Resource, TypeUrl
from meshplane.xds.server import (
    Callbacks,
    Refusal,
    StreamRate,
    StreamRefusedError,
    Subscription,
    TypeSync,
    XdsServer,
    configured,
    current_peer,
    delta_subscription,
    retained_resources,
    serve,
    sotw_subscription,
)
from tests.envoyproc import ads_bootstrap, free_port, running_envoy

CDS, EDS, LDS, RDS = TypeUrl.CLUSTER, TypeUrl.ENDPOINT, TypeUrl.LISTENER, TypeUrl.ROUTE
NODE = "sidecar-1"

# ------------------------------------------------------------------------------- Envoy messages


def ads_source(source: Any) -> None:
    source.ads.SetInParent()
    source.resource_api_version = config_source_pb2.V3


def cluster(name: str, timeout_ms: int = 1000) -> Resource:
    message = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.EDS)
    message.connect_timeout.FromMilliseconds(timeout_ms)
    ads_source(message.eds_cluster_config.eds_config)
    return Resource.of(message, refs=[(EDS, name)])


def endpoints(name: str, port: int) -> Resource:
    message = endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    address = message.endpoints.add().lb_endpoints.add().endpoint.address.socket_address
    address.address, address.port_value = "127.0.0.1", port
    return Resource.of(message)


def listener(name: str, route_name: str, port: int) -> Resource:
    manager = hcm_pb2.HttpConnectionManager(stat_prefix=name)
    manager.rds.route_config_name = route_name
    ads_source(manager.rds.config_source)
    router = manager.http_filters.add(name="envoy.filters.http.router")
    router.typed_config.Pack(router_pb2.Router(), deterministic=True)
    message = listener_pb2.Listener(name=name)
    message.address.socket_address.address, message.address.socket_address.port_value = "127.0.0.1", port
    network = message.filter_chains.add().filters.add(name="envoy.filters.network.http_connection_manager")
    network.typed_config.Pack(manager, deterministic=True)
    return Resource.of(message, refs=[(RDS, route_name)])


def route(name: str, target: str) -> Resource:
    message = route_pb2.RouteConfiguration(name=name)
    rule = message.virtual_hosts.add(name="all", domains=["*"]).routes.add()
    rule.match.prefix = "/"
    rule.route.cluster = target
    return Resource.of(message, refs=[(CDS, target)])


def mesh(*clusters: str, target: str | None = None, port: int = 15001, timeout_ms: int = 1000) -> Snapshot:
    """Clusters with endpoints, one listener on ``port`` whose route config sends everything to ``target``."""
    target = target or clusters[0]
    resources = [r for i, c in enumerate(clusters) for r in (cluster(c, timeout_ms), endpoints(c, 18080 + i))]
    return Snapshot([*resources, listener("ingress", "local", port), route("local", target)])


def names(response: Any) -> list[str]:
    """Names of the resources in a SotW or Delta response."""
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return sorted(r.name for r in response.resources)
    kinds = {CDS: cluster_pb2.Cluster, LDS: listener_pb2.Listener, RDS: route_pb2.RouteConfiguration}
    if response.type_url == EDS:
        return sorted(endpoint_pb2.ClusterLoadAssignment.FromString(a.value).cluster_name for a in response.resources)
    return sorted(kinds[TypeUrl(response.type_url)].FromString(a.value).name for a in response.resources)


# ------------------------------------------------------------------------------- a hand-driven client


class AdsClient:
    """One ADS stream speaking for ``node_id``; responses are queued by a reader task."""

    def __init__(self, port: int, node_id: str = NODE, *, delta: bool = False) -> None:
        self.node_id = node_id
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(self.channel)
        self.call = stub.DeltaAggregatedResources() if delta else stub.StreamAggregatedResources()
        self.responses: asyncio.Queue[Any] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())
        self.sent_node = False

    async def _read(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for response in self.call:
                await self.responses.put(response)

    def _node(self, request: Any) -> None:
        if not self.sent_node:
            request.node.id, request.node.cluster = self.node_id, "test"
            self.sent_node = True

    async def request(
        self, type_url: str, resource_names: Iterable[str] = (), *, nonce: str = "", version: str = "",
        error: str = "",
    ) -> None:
        """A SotW DiscoveryRequest (an ACK with ``nonce``, a NACK with ``error`` too)."""
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=list(resource_names), response_nonce=nonce, version_info=version
        )
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._node(request)
        await self.call.write(request)

    async def ack(self, response: Any, resource_names: Iterable[str] = ()) -> None:
        await self.request(response.type_url, resource_names, nonce=response.nonce, version=response.version_info)

    async def delta(
        self, type_url: str, subscribe: Iterable[str] = (), unsubscribe: Iterable[str] = (), *, nonce: str = "",
        error: str = "", initial: dict[str, str] | None = None,
    ) -> None:
        """A DeltaDiscoveryRequest."""
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url, resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe), response_nonce=nonce,
            initial_resource_versions=initial or {},
        )
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._node(request)
        await self.call.write(request)

    async def recv(self, type_url: str, timeout: float = 3.0) -> Any:
        """The next response, which must be of ``type_url``."""
        response = await asyncio.wait_for(self.responses.get(), timeout)
        assert response.type_url == type_url, f"expected {TypeUrl(type_url).short}, got {response}"
        return response

    async def quiet(self, seconds: float = 0.3) -> None:
        """Nothing arrives for ``seconds``."""
        await asyncio.sleep(seconds)
        assert self.responses.empty(), f"unexpected response: {self.responses.get_nowait()}"

    async def close(self) -> None:
        self.call.cancel()
        self.reader.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)
        await self.channel.close(None)

    async def handshake(self) -> dict[TypeUrl, Any]:
        """Envoy's SotW start-up: CDS, EDS for every cluster, LDS, RDS; each ACKed. Returns the responses."""
        await self.request(CDS)
        cds = await self.recv(CDS)
        await self.request(EDS, names(cds))
        eds = await self.recv(EDS)
        await self.ack(cds)
        await self.ack(eds, names(cds))
        await self.request(LDS)
        lds = await self.recv(LDS)
        await self.request(RDS, ["local"])
        rds = await self.recv(RDS)
        await self.ack(lds)
        await self.ack(rds, ["local"])
        return {CDS: cds, EDS: eds, LDS: lds, RDS: rds}


@dataclass
class Recorder:
    """Callbacks that write down what happened."""

    events: list[tuple[Any, ...]] = field(default_factory=list)

    def callbacks(self, on_stream_open: Callable[[int, Any], Any] | None = None) -> Callbacks:
        return Callbacks(
            on_stream_open=on_stream_open or (lambda sid, node: self.events.append(("open", node.id))),
            on_stream_close=lambda sid, node: self.events.append(("close", node.id)),
            on_ack=lambda node, t, v: self.events.append(("ack", node, TypeUrl(t).short, v)),
            on_nack=lambda node, t, v, m: self.events.append(("nack", node, TypeUrl(t).short, v, m)),
        )

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == kind]


@contextlib.asynccontextmanager
async def ads(cache: SnapshotCache, callbacks: Callbacks | None = None) -> AsyncIterator[tuple[XdsServer, int]]:
    server, port = await serve("127.0.0.1:0", cache, callbacks)
    try:
        yield server, port
    finally:
        await server.stop(1.0)


@contextlib.asynccontextmanager
async def client(port: int, node_id: str = NODE, *, delta: bool = False) -> AsyncIterator[AdsClient]:
    stream = AdsClient(port, node_id, delta=delta)
    try:
        yield stream
    finally:
        await stream.close()


async def eventually(check: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------- pure rules


def test_kept_resources_are_those_gone_from_the_snapshot_that_in_use_routes_still_name() -> None:
    old, gone_endpoints = cluster("v1"), endpoints("v1", 18080)
    held = {CDS: {"v1": old}, EDS: {"v1": gone_endpoints}}
    in_use = [route("local", "v1")]
    assert retained_resources(mesh("v2"), in_use, held) == {CDS: {"v1": old}, EDS: {"v1": gone_endpoints}}
    assert retained_resources(mesh("v1", "v2", target="v2"), in_use, held) == {}  # still in the snapshot
    assert retained_resources(mesh("v2"), [route("local", "v2")], held) == {}  # no longer named
    assert retained_resources(mesh("v2"), in_use, {}) == {}  # never sent: nothing to keep


def test_wildcard_is_star_or_an_empty_first_request_for_clusters_and_listeners() -> None:
    assert sotw_subscription(CDS, [], None) == Subscription(True)
    assert sotw_subscription(EDS, [], None) == Subscription(False)
    assert sotw_subscription(EDS, ["*", "a"], None) == Subscription(True, frozenset({"a"}))
    assert sotw_subscription(CDS, ["a"], Subscription(True)) == Subscription(False, frozenset({"a"}))
    assert delta_subscription(LDS, [], [], None) == Subscription(True)
    started = delta_subscription(EDS, ["a", "b"], [], None)
    assert delta_subscription(EDS, ["c"], ["a"], started) == Subscription(False, frozenset({"b", "c"}))
    assert delta_subscription(CDS, ["x"], ["*"], Subscription(True)) == Subscription(False, frozenset({"x"}))


# ------------------------------------------------------------------------------- State of the World


async def test_sotw_handshake_serves_each_type_and_records_every_ack() -> None:
    cache, recorder = SnapshotCache(), Recorder()
    snapshot = mesh("a", "b")
    cache.set(NODE, snapshot)
    async with ads(cache, recorder.callbacks()) as (server, port), client(port) as proxy:
        got = await proxy.handshake()
        assert names(got[CDS]) == ["a", "b"]
        assert names(got[EDS]) == ["a", "b"]
        assert names(got[LDS]) == ["ingress"]
        assert names(got[RDS]) == ["local"]
        assert got[CDS].version_info == snapshot.version(CDS)
        await eventually(lambda: len(recorder.of("ack")) == 4, what="four ACKs")
        sync = server.ads.sync_states()[NODE]
        statuses = {TypeUrl(t).short: s.status for t, s in sync.items()}
        assert statuses == {"CDS": "SYNCED", "EDS": "SYNCED", "LDS": "SYNCED", "RDS": "SYNCED"}
        assert sync[CDS].acked == snapshot.version(CDS)
        await proxy.quiet()
    assert recorder.events[0] == ("open", NODE)
    await eventually(lambda: recorder.of("close") == [("close", NODE)], what="close callback")


async def test_identical_content_rebuilt_is_not_resent() -> None:
    cache = SnapshotCache()
    cache.set(NODE, mesh("a"))
    async with ads(cache) as (_, port), client(port) as proxy:
        await proxy.handshake()
        cache.set(NODE, mesh("a"))
        await proxy.quiet()


async def test_nothing_is_sent_until_the_node_has_a_snapshot() -> None:
    cache = SnapshotCache()
    async with ads(cache) as (_, port), client(port) as proxy:
        await proxy.request(CDS)
        await proxy.quiet()
        cache.set(NODE, mesh("a"))
        assert names(await proxy.recv(CDS)) == ["a"]


async def test_a_nack_is_recorded_counted_and_the_rejected_version_is_not_resent() -> None:
    cache, recorder = SnapshotCache(), Recorder()
    cache.set(NODE, mesh("a"))
    async with ads(cache, recorder.callbacks()) as (server, port), client(port) as proxy:
        got = await proxy.handshake()
        cache.set(NODE, mesh("a", timeout_ms=2000))
        rejected = await proxy.recv(CDS)
        eds = await proxy.recv(EDS)
        await proxy.request(CDS, nonce=rejected.nonce, version=got[CDS].version_info, error="bad cluster a")
        await proxy.ack(eds, ["a"])
        await proxy.quiet()  # neither the NACKed CDS nor a loop of it
        sync = server.ads.sync_state(NODE)[CDS]
        assert (sync.status, sync.nacked, sync.nack_message) == ("NACKED", rejected.version_info, "bad cluster a")
        assert sync.acked == got[CDS].version_info
        assert server.ads.nack_count(NODE, CDS) == 1
        assert recorder.of("nack") == [("nack", NODE, "CDS", rejected.version_info, "bad cluster a")]
        cache.set(NODE, mesh("a", timeout_ms=3000))  # a new version is sent again
        fixed = await proxy.recv(CDS)
        assert fixed.version_info not in (rejected.version_info, got[CDS].version_info)


async def test_a_published_change_is_stale_until_pushed_and_acknowledged() -> None:
    """Between a publish and its push the proxy's last ACK is of the version before: never SYNCED then."""
    cache = SnapshotCache()
    cache.set(NODE, mesh("a"))
    async with ads(cache) as (server, port), client(port) as proxy:
        await proxy.handshake()  # every type ACKed
        await eventually(lambda: server.ads.sync_state(NODE)[CDS].status == "SYNCED", what="the handshake's ACK")
        cache.set(NODE, mesh("a", timeout_ms=2000))
        assert server.ads.sync_state(NODE)[CDS].status == "STALE", "published, not yet pushed"
        changed = await proxy.recv(CDS)
        await proxy.ack(changed)
        await eventually(lambda: server.ads.sync_state(NODE)[CDS].status == "SYNCED", what="the ACK")


async def test_a_newer_version_waits_for_the_answer_to_the_one_in_flight_and_only_the_latest_goes() -> None:
    """SotW flow control: one response of a type in flight. Versions published meanwhile are not queued on
    the stream; once the proxy answers, it gets the latest (a slow proxy parses one, not every one)."""
    cache = SnapshotCache()
    cache.set(NODE, mesh("a"))
    async with ads(cache) as (server, port), client(port) as proxy:
        await proxy.handshake()
        cache.set(NODE, mesh("a", timeout_ms=2000))
        first = await proxy.recv(CDS)
        await proxy.recv(EDS)  # children after parents: forced, in flight or not
        for timeout_ms in (3000, 4000):
            cache.set(NODE, mesh("a", timeout_ms=timeout_ms))
        await proxy.quiet()
        assert server.ads.sync_state(NODE)[CDS].status == "STALE", "published, held: not SYNCED"
        await proxy.ack(first)
        latest = await proxy.recv(CDS)
        [packed] = latest.resources
        sent = cluster_pb2.Cluster()
        packed.Unpack(sent)
        assert sent.connect_timeout.ToMilliseconds() == 4000 and latest.version_info != first.version_info
        await proxy.ack(latest)
        await eventually(lambda: server.ads.sync_state(NODE)[CDS].status == "SYNCED", what="the ACK")


async def test_a_rejected_eds_version_is_not_resent_even_after_a_cds_response() -> None:
    cache = SnapshotCache()
    cache.set(NODE, mesh("a"))
    async with ads(cache) as (server, port), client(port) as proxy:
        got = await proxy.handshake()
        bad = Snapshot([cluster("a"), endpoints("a", 1), listener("ingress", "local", 15001), route("local", "a")])
        cache.set(NODE, bad)
        rejected = await proxy.recv(EDS)
        await proxy.request(EDS, ["a"], nonce=rejected.nonce, version=got[EDS].version_info, error="bad port")
        await eventually(lambda: server.ads.sync_state(NODE)[EDS].status == "NACKED", what="the NACK")
        cache.set(NODE, Snapshot([cluster("a", 2000), *list(bad)[1:]]))  # the cluster changes, not its endpoints
        await proxy.ack(await proxy.recv(CDS))
        await proxy.quiet()  # the forced EDS re-send would be the rejected version: parked


async def test_a_request_with_a_stale_nonce_is_ignored() -> None:
    cache = SnapshotCache()
    cache.set(NODE, mesh("a"))
    async with ads(cache) as (_, port), client(port) as proxy:
        got = await proxy.handshake()
        cache.set(NODE, mesh("a", "b"))
        cds = await proxy.recv(CDS)
        eds = await proxy.recv(EDS)  # re-sent at once, new nonce
        assert names(cds) == ["a", "b"] and eds.nonce != got[EDS].nonce
        await proxy.request(EDS, ["a", "b"], nonce=got[EDS].nonce, version=got[EDS].version_info)
        await proxy.quiet()  # stale: the answer to it would race the response already sent
        await proxy.ack(eds, ["a", "b"])  # the ACK carries the full name list: the server catches up
        assert names(await proxy.recv(EDS)) == ["a", "b"]


async def test_eds_is_resent_after_every_cds_response_even_if_unchanged() -> None:
    cache = SnapshotCache()
    cache.set(NODE, mesh("a"))
    async with ads(cache) as (_, port), client(port) as proxy:
        got = await proxy.handshake()
        cache.set(NODE, mesh("a", timeout_ms=2000))  # the cluster changes, its endpoints do not
        cds = await proxy.recv(CDS)
        eds = await proxy.recv(EDS)  # without waiting for the CDS ACK (Envoy holds it while warming)
        assert cds.version_info != got[CDS].version_info
        assert (eds.version_info, names(eds)) == (got[EDS].version_info, ["a"])
        assert eds.nonce != got[EDS].nonce


async def test_rds_is_resent_after_every_lds_response() -> None:
    cache = SnapshotCache()
    cache.set(NODE, mesh("a"))
    async with ads(cache) as (_, port), client(port) as proxy:
        got = await proxy.handshake()
        cache.set(NODE, mesh("a", port=15002))
        assert names(await proxy.recv(LDS)) == ["ingress"]
        rds = await proxy.recv(RDS)
        assert rds.version_info == got[RDS].version_info and rds.nonce != got[RDS].nonce


async def test_make_before_break_keeps_the_old_cluster_until_the_new_routes_are_acked() -> None:
    cache = SnapshotCache()
    cache.set(NODE, mesh("v1"))
    async with ads(cache) as (_, port), client(port) as proxy:
        await proxy.handshake()
        cache.set(NODE, mesh("v2"))  # v1 is gone from the snapshot; the route now names v2
        cds = await proxy.recv(CDS)
        assert names(cds) == ["v1", "v2"]  # v1 kept: the ACKed route still sends traffic there
        eds = await proxy.recv(EDS)
        await proxy.quiet()  # the route to v2 waits until v2 is ACKed (warm)
        await proxy.ack(eds, ["v1", "v2"])  # Envoy now asks for v2's endpoints too
        assert names(await proxy.recv(EDS)) == ["v1", "v2"]
        await proxy.ack(cds)
        rds = await proxy.recv(RDS)
        new_route = route_pb2.RouteConfiguration.FromString(rds.resources[0].value)
        assert new_route.virtual_hosts[0].routes[0].route.cluster == "v2"
        await proxy.quiet()  # v1 still kept: the new route is not ACKed yet
        await proxy.ack(rds, ["local"])
        pruned = await proxy.recv(CDS)
        assert names(pruned) == ["v2"]
        assert names(await proxy.recv(EDS)) == ["v2"]


async def test_a_stream_without_a_node_id_is_refused() -> None:
    cache = SnapshotCache()
    async with ads(cache) as (_, port), client(port) as proxy:
        await proxy.call.write(discovery_pb2.DiscoveryRequest(type_url=CDS))
        assert await proxy.call.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("how", ["return", "raise", "crash"])
async def test_on_stream_open_can_refuse_a_proxy(how: str) -> None:
    peers = []

    async def admit(stream_id: int, node: Any) -> Refusal | None:
        peers.append(current_peer())
        if how == "raise":
            raise StreamRefusedError(f"{node.id} is not who it claims")
        if how == "crash":
            raise RuntimeError("bug")
        return Refusal(f"{node.id} is not who it claims")

    cache = SnapshotCache()
    cache.set(NODE, mesh("a"))
    async with ads(cache, Callbacks(on_stream_open=admit)) as (_, port), client(port) as proxy:
        await proxy.request(CDS)
        expected = grpc.StatusCode.INTERNAL if how == "crash" else grpc.StatusCode.PERMISSION_DENIED
        assert await proxy.call.code() == expected
        assert proxy.responses.empty()
    assert peers[0] is not None and "127.0.0.1" in peers[0].address


@pytest.mark.parametrize(("delta", "holds", "resumes"), [
    (False, False, False), (False, True, True), (True, False, False), (True, True, True)],
    ids=["sotw-fresh", "sotw-resuming", "delta-fresh", "delta-resuming"])
async def test_the_peer_says_whether_the_proxy_resumes_with_configuration_it_holds(delta: bool, holds: bool,
                                                                                   resumes: bool) -> None:
    """A first request with a ``version_info`` (SotW) or ``initial_resource_versions`` (Delta) comes from a
    proxy that holds configuration (a reconnect); without, from one just started, listeners and all gone."""
    peers = []

    def admit(stream_id: int, node: Any) -> None:
        peers.append(current_peer())

    cache = SnapshotCache()
    cache.set(NODE, mesh("a"))
    async with ads(cache, Callbacks(on_stream_open=admit)) as (_, port), client(port, delta=delta) as proxy:
        if delta:
            await proxy.delta(CDS, initial={"a": "1"} if holds else None)
        else:
            await proxy.request(CDS, version="1" if holds else "")
        await proxy.recv(CDS)
    assert peers[0] is not None and peers[0].resumes is resumes


async def test_a_reconnecting_proxy_gets_its_config_again_and_the_old_stream_is_cleaned_up() -> None:
    cache, recorder = SnapshotCache(), Recorder()
    cache.set(NODE, mesh("a"))
    async with ads(cache, recorder.callbacks()) as (server, port):
        async with client(port) as first:
            await first.handshake()
        await eventually(lambda: cache.watcher_count(NODE) == 0, what="the old watch to go")
        async with client(port) as second:
            got = await second.handshake()
            assert names(got[CDS]) == ["a"]
            assert cache.watcher_count(NODE) == 1
            assert server.ads.sync_state(NODE)[CDS].status == "SYNCED"
    assert recorder.of("open") == [("open", NODE)] * 2
    await eventually(lambda: len(recorder.of("close")) == 2, what="two close callbacks")


async def test_fifty_concurrent_streams_get_their_config_and_every_update() -> None:
    cache = SnapshotCache()
    nodes = [f"sidecar-{i}" for i in range(50)]
    for node in nodes:
        cache.set(node, mesh(f"c-{node}"))
    async with ads(cache) as (server, port):
        proxies = [AdsClient(port, node) for node in nodes]
        try:
            first = await asyncio.gather(*(p.handshake() for p in proxies))
            assert [names(got[CDS]) for got in first] == [[f"c-{n}"] for n in nodes]
            assert len(server.ads.connected()) == 50
            for node in nodes:
                cache.set(node, mesh(f"c-{node}", timeout_ms=2000))
            updates = await asyncio.gather(*(p.recv(CDS) for p in proxies))
            assert all(u.version_info != f[CDS].version_info for u, f in zip(updates, first, strict=True))
        finally:
            await asyncio.gather(*(p.close() for p in proxies))


async def test_stopping_the_server_ends_streams_cleanly() -> None:
    cache, recorder = SnapshotCache(), Recorder()
    cache.set(NODE, mesh("a"))
    server, port = await serve("127.0.0.1:0", cache, recorder.callbacks())
    async with client(port) as proxy:
        await proxy.request(CDS)
        await proxy.recv(CDS)
        started = time.monotonic()
        await server.stop(5.0)
        assert await proxy.call.code() == grpc.StatusCode.OK
        assert time.monotonic() - started < 2.0  # not the grace period
    assert recorder.of("close") == [("close", NODE)]


SPIFFE_ID = "spiffe://shop.mesh.local/ns/shop/virtualservice/reviews"


def self_signed() -> tuple[bytes, bytes]:
    """A key and a self-signed certificate usable as server, client and root: IP SAN 127.0.0.1, a SPIFFE ID."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshplane test")])
    now = datetime.datetime.now(datetime.UTC)
    sans = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.UniformResourceIdentifier(SPIFFE_ID)]
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return pem_key, cert.public_bytes(serialization.Encoding.PEM)


async def test_mtls_credentials_are_used_and_admission_sees_the_client_identity() -> None:
    key, cert = self_signed()
    identities = []

    def admit(stream_id: int, node: Any) -> Refusal | None:
        peer = current_peer()
        identities.append(peer.auth.get("peer_spiffe_id") if peer else None)
        return None

    cache = SnapshotCache()
    cache.set(NODE, mesh("a"))
    credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=cert, require_client_auth=True)
    server, port = await serve("127.0.0.1:0", cache, Callbacks(on_stream_open=admit), credentials=credentials)
    channel = grpc.aio.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(cert, key, cert))
    try:
        call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        request = discovery_pb2.DiscoveryRequest(type_url=CDS)
        request.node.id = NODE
        await call.write(request)
        assert names(await asyncio.wait_for(call.read(), 3.0)) == ["a"]
        assert identities == [(SPIFFE_ID.encode(),)]
        call.cancel()
    finally:
        await channel.close(None)
        await server.stop(1.0)


# ------------------------------------------------------------------------------- Delta


async def delta_start(proxy: AdsClient) -> tuple[Any, Any]:
    """Envoy's delta start-up: wildcard CDS, then EDS by name; both ACKed."""
    await proxy.delta(CDS)
    cds = await proxy.recv(CDS)
    await proxy.delta(EDS, names(cds))
    eds = await proxy.recv(EDS)
    await proxy.delta(CDS, nonce=cds.nonce)
    await proxy.delta(EDS, nonce=eds.nonce)
    return cds, eds


async def test_delta_serves_wildcard_clusters_and_named_endpoints_with_digest_versions() -> None:
    cache, recorder = SnapshotCache(), Recorder()
    snapshot = mesh("a", "b")
    cache.set(NODE, snapshot)
    async with ads(cache, recorder.callbacks()) as (server, port), client(port, delta=True) as proxy:
        cds, eds = await delta_start(proxy)
        assert names(cds) == ["a", "b"] and names(eds) == ["a", "b"]
        assert {r.name: r.version for r in cds.resources} == {n: r.digest for n, r in snapshot.items(CDS).items()}
        await eventually(lambda: len(recorder.of("ack")) == 2, what="two ACKs")
        assert server.ads.sync_state(NODE)[EDS].status == "SYNCED"
        cache.set(NODE, Snapshot([*snapshot, endpoints("spare", 1)]))  # EDS changed, not for what it wants
        await proxy.quiet()


async def test_delta_sends_only_what_changed_and_removes_what_left() -> None:
    cache = SnapshotCache()
    cache.set(NODE, mesh("a", "b", "c", target="a"))
    async with ads(cache) as (_, port), client(port, delta=True) as proxy:
        await delta_start(proxy)
        cache.set(NODE, mesh("a", "b", target="a"))  # c leaves; a and b are unchanged
        cds = await proxy.recv(CDS)
        assert (names(cds), list(cds.removed_resources)) == ([], ["c"])
        eds = await proxy.recv(EDS)
        assert list(eds.removed_resources) == ["c"]


async def test_delta_unsubscribed_resources_are_no_longer_sent() -> None:
    cache = SnapshotCache()
    cache.set(NODE, mesh("a", "b"))
    async with ads(cache) as (_, port), client(port, delta=True) as proxy:
        await delta_start(proxy)
        await proxy.delta(EDS, unsubscribe=["b"])
        await proxy.quiet()
        cache.set(NODE, Snapshot([*mesh("a"), cluster("b"), endpoints("b", 9999)]))
        await proxy.quiet()
        await proxy.delta(EDS, subscribe=["b"])
        eds = await proxy.recv(EDS)
        assert names(eds) == ["b"]
        assignment = endpoint_pb2.ClusterLoadAssignment.FromString(eds.resources[0].resource.value)
        assert assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 9999
        await proxy.delta(EDS, subscribe=["nope"])  # does not exist: say so rather than let Envoy time out
        missing = await proxy.recv(EDS)
        assert (names(missing), list(missing.removed_resources)) == ([], ["nope"])


async def test_delta_reconnect_honours_initial_resource_versions() -> None:
    cache = SnapshotCache()
    snapshot = mesh("a", "b")
    cache.set(NODE, snapshot)
    digests = {n: r.digest for n, r in snapshot.items(CDS).items()}
    async with ads(cache) as (_, port), client(port, delta=True) as proxy:
        await proxy.delta(CDS, initial={"a": digests["a"], "b": "old", "gone": "x"})
        cds = await proxy.recv(CDS)
        assert (names(cds), list(cds.removed_resources)) == (["b"], ["gone"])
    async with ads(cache) as (_, port), client(port, delta=True) as proxy:
        await proxy.delta(CDS, initial=digests)
        cds = await proxy.recv(CDS)  # answered, with nothing to send
        assert (names(cds), list(cds.removed_resources)) == ([], [])


async def test_delta_nack_is_recorded_and_not_resent() -> None:
    cache = SnapshotCache()
    cache.set(NODE, mesh("a"))
    async with ads(cache) as (server, port), client(port, delta=True) as proxy:
        await delta_start(proxy)
        cache.set(NODE, mesh("a", timeout_ms=2000))
        cds = await proxy.recv(CDS)
        eds = await proxy.recv(EDS)  # the updated cluster's endpoints, re-sent unchanged (trap 3)
        assert names(eds) == ["a"]
        await proxy.delta(CDS, nonce=cds.nonce, error="no")
        await proxy.delta(EDS, nonce=eds.nonce)
        await proxy.quiet()
        assert server.ads.sync_state(NODE)[CDS].status == "NACKED"
        assert server.ads.nack_count(NODE, CDS) == 1


async def test_delta_make_before_break_keeps_the_old_cluster_until_the_new_routes_are_acked() -> None:
    cache = SnapshotCache()
    cache.set(NODE, mesh("v1"))
    async with ads(cache) as (_, port), client(port, delta=True) as proxy:
        await delta_start(proxy)
        await proxy.delta(LDS)
        lds = await proxy.recv(LDS)
        await proxy.delta(RDS, ["local"])
        rds = await proxy.recv(RDS)
        await proxy.delta(LDS, nonce=lds.nonce)
        await proxy.delta(RDS, nonce=rds.nonce)
        cache.set(NODE, mesh("v2"))
        cds = await proxy.recv(CDS)
        assert (names(cds), list(cds.removed_resources)) == (["v2"], [])  # v1 not removed yet
        await proxy.quiet()  # the route waits for the new cluster to be ACKed
        await proxy.delta(EDS, ["v2"])
        assert names(await proxy.recv(EDS)) == ["v2"]
        await proxy.delta(CDS, nonce=cds.nonce)
        rds = await proxy.recv(RDS)
        await proxy.delta(RDS, nonce=rds.nonce)
        cds = await proxy.recv(CDS)
        assert (names(cds), list(cds.removed_resources)) == ([], ["v1"])


# ------------------------------------------------------------------------------- the real Envoy


@contextlib.asynccontextmanager
async def app(text: str) -> AsyncIterator[int]:
    """A tiny HTTP app on 127.0.0.1 answering ``text``; yields its port."""

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=text)

    application = web.Application()
    application.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(application, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def envoy_mesh(apps: dict[str, int], target: str, port: int) -> Snapshot:
    resources = [r for name, app_port in apps.items() for r in (cluster(name), endpoints(name, app_port))]
    return Snapshot([*resources, listener("ingress", "local", port), route("local", target)])


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as reply:
        return reply.status, await reply.text()


def synced(server: XdsServer, types: Sequence[TypeUrl] = (CDS, EDS, LDS, RDS)) -> bool:
    state = server.ads.sync_state(NODE)
    return all(t.value in state and state[t.value].status == "SYNCED" for t in types)


@pytest.mark.envoy
@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"], ids=["sotw", "delta"])
async def test_real_envoy_serves_the_app_and_shifts_traffic_without_failing_a_request(
    api_type: str, tmp_path: Path
) -> None:
    cache = SnapshotCache()
    listener_port = free_port()
    async with app("v1") as v1, app("v2") as v2, ads(cache) as (server, port), aiohttp.ClientSession() as session:
        cache.set(NODE, envoy_mesh({"v1": v1}, "v1", listener_port))
        with running_envoy(ads_bootstrap(NODE, "test", port, api_type=api_type), tmp_path) as envoy:
            await asyncio.to_thread(envoy.wait_ready, 20.0)
            url = f"http://127.0.0.1:{listener_port}/hello"
            assert await get(session, url) == (200, "v1")
            await eventually(lambda: synced(server), what=f"Envoy to ACK everything\n{envoy.log_tail()}")

            cache.set(NODE, envoy_mesh({"v2": v2}, "v2", listener_port))  # v1 leaves the snapshot
            answers: list[tuple[int, str]] = []
            deadline = time.monotonic() + 10
            while not (answers and answers[-1] == (200, "v2") and synced(server)):
                assert time.monotonic() < deadline, f"no switch to v2: {answers[-3:]}\n{envoy.log_tail()}"
                answers.append(await get(session, url))
            assert {status for status, _ in answers} == {200}, answers
            clusters = (await asyncio.to_thread(envoy.admin_get, "/clusters"))[1]
            assert "v2::" in clusters and "v1::" not in clusters


def test_a_proxy_is_configured_once_it_accepted_some_version_of_every_type_it_asks_for() -> None:
    accepted, answered = TypeSync(sent="2", acked="1"), TypeSync(sent="1")
    assert configured({CDS.value: accepted, LDS.value: accepted, RDS.value: accepted})
    assert not configured({}), "nothing asked for yet"
    assert not configured({CDS.value: accepted}), "no listeners asked for yet"
    assert not configured({CDS.value: accepted, LDS.value: accepted, RDS.value: answered}), "routes not accepted"
    rejected = TypeSync(sent="1", nacked="1", nack_message="cannot bind")
    assert not configured({CDS.value: accepted, LDS.value: rejected}), "its only listeners were rejected"


@pytest.mark.envoy
@pytest.mark.parametrize("api_type", ["GRPC", "DELTA_GRPC"], ids=["sotw", "delta"])
async def test_real_envoy_is_configured_once_it_accepted_its_routes_and_its_listener_serves_then(
    api_type: str, tmp_path: Path
) -> None:
    """Envoy asks for the routes its listeners name before it ACKs the listeners, so ``configured`` holds
    only from the routes' ACK; a request sent at that very moment is served."""
    cache, listener_port = SnapshotCache(), free_port()
    url = f"http://127.0.0.1:{listener_port}/hello"
    servers: list[XdsServer] = []
    seen: list[tuple[str, bool, bool]] = []  # per ACK: type, routes asked for, configured
    first: list[asyncio.Future[tuple[int, str]]] = []

    async with app("v1") as v1, aiohttp.ClientSession() as session:
        def acked(node_id: str, type_url: str, version: str) -> None:
            states = servers[0].ads.sync_state(node_id)
            seen.append((TypeUrl(type_url).short, RDS.value in states, configured(states)))
            if seen[-1][2] and not first:
                first.append(asyncio.ensure_future(get(session, url)))

        async with ads(cache, Callbacks(on_ack=acked)) as (server, port):
            servers.append(server)
            cache.set(NODE, envoy_mesh({"v1": v1}, "v1", listener_port))
            with running_envoy(ads_bootstrap(NODE, "test", port, api_type=api_type), tmp_path) as envoy:
                await eventually(lambda: bool(first), 20.0, f"Envoy to be configured\n{envoy.log_tail()}")
                assert await asyncio.wait_for(first[0], 5.0) == (200, "v1")
    lds = next(s for s in seen if s[0] == "LDS")
    assert lds[1:] == (True, False), f"routes asked for, not configured yet, at the listeners' ACK: {seen}"
    assert next(s for s in seen if s[2])[0] == "RDS", seen


# ------------------------------------------------------------------------------------ stream rate


def test_the_stream_rate_lets_a_burst_in_at_once_then_paces_the_rest_in_arrival_order() -> None:
    now = [0.0]
    rate = StreamRate(10, 3, clock=lambda: now[0])
    assert [rate.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert [round(rate.reserve(), 3) for _ in range(2)] == [0.1, 0.2]
    now[0] = 1.0  # the queue drained and tokens refilled, up to the burst only
    assert [rate.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rate.reserve() > 0
    with pytest.raises(ValueError, match="rate > 0"):
        StreamRate(0, 1)


async def test_new_streams_over_the_rate_wait_their_turn_and_are_then_served() -> None:
    cache = SnapshotCache()
    nodes = [f"herd-{i}" for i in range(8)]
    for node in nodes:
        cache.set(node, mesh(f"c-{node}"))
    server, port = await serve("127.0.0.1:0", cache, stream_rate=StreamRate(10, 4))
    proxies = [AdsClient(port, node) for node in nodes]
    try:
        started = time.monotonic()
        served = await asyncio.gather(*(p.handshake() for p in proxies))
        elapsed = time.monotonic() - started
        assert [names(got[CDS]) for got in served] == [[f"c-{n}"] for n in nodes]
        assert 0.35 <= elapsed < 3.0, elapsed  # four at once, then one every 100 ms
        assert sorted(server.ads.connected()) == sorted(nodes)
    finally:
        await asyncio.gather(*(p.close() for p in proxies))
        await server.stop(1.0)
