"""Benchmark: one real control plane, N simulated Envoys over ADS with mutual TLS: cold sync and a route change. JSON.

Method. ``meshplane serve`` runs as a subprocess on 127.0.0.1 (free ports) with a temporary config
directory and state directory. The config directory holds one Mesh (mTLS PERMISSIVE) and S virtual
services ``svc-i`` (host ``svc-i.bench.svc.cluster.local``), each with two virtual deployments (v1, v2;
HTTP on 8080), a 90/10 route table, and an access policy letting K services call it (``svc-(i-1)`` …
``svc-(i-K)`` mod S, one rule each, as bench/config_size.py's scoped variant; so each service may call K
others). With K >= S every service may call every service, itself included, and the policy says so in
one rule (source ``allVirtualServices``) instead of S. The route table of one service (``svc-c``,
c = min(K, S-1), so that its callers have proxies) is in a file of its own; every other object is in
two shared files.

Once serve has written its CA and ``deployments.json``, this process makes N proxies' bootstrap
identities as ``meshplane bootstrap`` does (``sidecar.bootstrap_spec``): proxy j belongs to deployment
j mod 2S (round-robin), has its own 127.x.y.z address, node id ``NAME.NAMESPACE-ADDRESS``, cluster =
the deployment, metadata naming the deployment, the address, explicit capture and the app-port mapping
8080=18080, and its own xDS client certificate issued into the state directory (``xdsauth.issue_proxy``,
with the CA loaded once; for the first and last proxy ``bootstrap_spec`` itself runs and its rendered
node must be identical). The node sent is that ``node`` plus ``user_agent_name: envoy``, on the first
request of each stream only (``set_node_on_first_message_only``).

A second process (this script with ``--worker``) then opens one gRPC channel per proxy (grpc.aio, TLS
with that proxy's certificate, its own connection) and one ADS stream on it — StreamAggregatedResources
(``--mode sotw``) or DeltaAggregatedResources (``--mode delta``) — and subscribes as Envoy does: CDS and
LDS wildcard first; then EDS for the clusters' ``service_name``s, RDS for the route configurations the
listeners' HTTP connection managers name, SDS for every secret the clusters' and listeners' TLS contexts
name. Every resource of every response is unpacked from its ``Any`` into its message type and its
references are read from it; a resource that does not unpack is NACKed. Every response is ACKed (SotW:
``version_info`` and ``response_nonce`` with the full name list, the latest response of a type only;
Delta: every ``response_nonce``). As in Envoy, a CDS (LDS) response is ACKed only once its added or
changed clusters (listeners) have warmed: their
ClusterLoadAssignments arrived after the CDS response, and their route configurations and secrets are
held; or after 15 s (Envoy's ``initial_fetch_timeout``; counted as ``warming_timeouts``). A stream that
fails is opened again after Envoy's jittered exponential back-off (0.5 s doubling to 30 s), asking again
for everything with the versions held (counted as ``stream_failures``). The worker does not bind the
proxies' 127.x source addresses (grpcio cannot).

Measured (times from ``time.monotonic``, one clock for both processes):

* ``cold_sync``: from the moment the worker starts opening the N streams until every proxy has ACKed
  the final version of every type it subscribed to (for each proxy and type: the first ACK of the
  version it still runs at the end). Done means: every proxy is synced by its own account, nothing
  was received for ``--settle`` seconds, and the control plane's ``/debug/syncz`` says every proxy is
  ready (an endpoint), every type of every proxy is SYNCED at the version the proxy ACKed last and no
  round is running or due — twice, ``--settle`` seconds apart. The cold sync therefore includes the
  round that gives callers the endpoints of the last proxies to become ready.
* ``route_change``: the changed service's route table file is rewritten (90/10 → 50/50, atomically).
  Per affected proxy (one whose RDS version changed), the time from the write until it ACKed the new
  RDS version; ``expected_affected`` counts the proxies of the K services allowed to call it. It
  includes serve's config-directory poll (every 0.1 s, serve's --poll-ms), the coalescing quiet time
  (``--quiet-ms``), the round, the push and the ACK.
* For the control-plane process, per phase: CPU seconds (utime + stime from /proc/PID/stat, all its
  threads) and the peak RSS so far (VmHWM from /proc/PID/status), plus its own metrics' counters.
  The phase's CPU includes answering the benchmark's few /debug/syncz checks.

Both processes share the machine (and its cores) with each other and with whatever else runs on it;
``machine`` records the CPU count and load average at the start. Everything is bounded by
``--timeout`` (setup included); what finished is reported and the exit status is 1 when something did
not. Every process started is stopped (terminate, then kill; always reaped), also on failure and
Ctrl-C, and the temporary directory is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format
from google.rpc import status_pb2

from meshplane.controlplane import ir, sidecar, xdsauth
from meshplane.injector.ca import CertificateAuthority
from meshplane.xds import names
from meshplane.xds.bootstrap import render_bootstrap
from meshplane.xds.resources import TypeUrl

Json = dict[str, Any]

GROUP = "servicemesh.oci.oracle.com/v1beta1"
NAMESPACE = "bench"
MESH = "bench"
COMPARTMENT = "ocid1.compartment.oc1..aaaa"
PORT, APP_PORT = 8080, 18080
WEIGHTS_BEFORE, WEIGHTS_AFTER = (90, 10), (50, 50)
POLL_SECONDS = 0.1  # serve's config-directory poll (--poll-ms, default 100)

CDS, EDS, LDS, RDS, SDS = (names.CLUSTER_TYPE, names.ENDPOINT_TYPE, names.LISTENER_TYPE, names.ROUTE_TYPE,
                           names.SECRET_TYPE)
SHORT = {t: TypeUrl(t).short for t in (CDS, EDS, LDS, RDS, SDS)}
PREFIX = "type.googleapis.com/"  # for the nested typed configs this simulator unpacks
MESSAGES: dict[str, Any] = {CDS: cluster_pb2.Cluster, EDS: endpoint_pb2.ClusterLoadAssignment,
                            LDS: listener_pb2.Listener, RDS: route_pb2.RouteConfiguration, SDS: secret_pb2.Secret}
HCM_TYPE = PREFIX + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
UPSTREAM_TLS = PREFIX + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
DOWNSTREAM_TLS = PREFIX + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
EOF: object = getattr(grpc.aio, "EOF")  # noqa: B009  (the stubs do not declare it)
INITIAL_FETCH_TIMEOUT = 15.0  # Envoy's default: a warming cluster/listener gives up waiting after this
BACKOFF_BASE, BACKOFF_MAX = 0.5, 30.0  # Envoy's xDS stream retry back-off (seconds)
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 256 * 1024 * 1024),
                   ("grpc.max_send_message_length", 256 * 1024 * 1024),
                   ("grpc.use_local_subchannel_pool", 1)]  # one connection per proxy, as separate Envoys have


# ============================================================================================ the mesh


def _doc(kind: str, name: str, spec: Json) -> Json:
    return {"apiVersion": GROUP, "kind": kind, "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"compartmentId": COMPARTMENT, **spec}}


def _vs(name: str) -> Json:
    return {"virtualService": {"ref": {"name": name}}}


def callers_of(i: int, services: int, calls: int) -> list[int]:
    """The services allowed to call ``svc-i``: i-1 … i-calls (mod S), without repeats."""
    return list(dict.fromkeys((i - d) % services for d in range(1, calls + 1)))


def route_table(i: int, weights: tuple[int, int]) -> Json:
    vs = f"svc-{i}"
    return _doc("VirtualServiceRouteTable", f"{vs}-routes", {"virtualService": {"ref": {"name": vs}}, "routeRules": [
        {"httpRoute": {"path": "/", "pathType": "PREFIX", "destinations": [
            {"virtualDeployment": {"ref": {"name": f"{vs}-v1"}}, "weight": weights[0], "port": PORT},
            {"virtualDeployment": {"ref": {"name": f"{vs}-v2"}}, "weight": weights[1], "port": PORT}]}}]})


def mesh_files(services: int, calls: int, changed: int) -> dict[str, list[Json]]:
    """The config directory: file name → documents. The changed service's route table has a file of its own."""
    docs = [_doc("Mesh", MESH, {"mtls": {"minimum": "PERMISSIVE"}})]
    for i in range(services):
        vs = f"svc-{i}"
        docs.append(_doc("VirtualService", vs, {"mesh": {"ref": {"name": MESH}},
                                                "hosts": [f"{vs}.{NAMESPACE}.svc.cluster.local"]}))
        for version in ("v1", "v2"):
            docs.append(_doc("VirtualDeployment", f"{vs}-{version}", {
                "virtualService": {"ref": {"name": vs}}, "listener": [{"protocol": "HTTP", "port": PORT}],
                "serviceDiscovery": {"type": "DNS", "hostname": f"{vs}-{version}.{NAMESPACE}.svc.cluster.local"}}))
        if calls >= services:  # every service, itself included: one rule instead of S
            rules = [{"action": "ALLOW", "source": {"allVirtualServices": {}}, "destination": _vs(vs)}]
        else:
            rules = [{"action": "ALLOW", "source": _vs(f"svc-{j}"), "destination": _vs(vs)}
                     for j in callers_of(i, services, calls)]
        docs.append(_doc("AccessPolicy", vs, {"mesh": {"ref": {"name": MESH}}, "rules": rules}))
    tables = [route_table(i, WEIGHTS_BEFORE) for i in range(services) if i != changed]
    own = [route_table(changed, WEIGHTS_BEFORE)]
    return {"mesh.yaml": docs, "routes.yaml": tables, f"routes-svc-{changed}.yaml": own}


def write_file(path: Path, docs: list[Json]) -> None:
    """Replace a manifest file atomically (the control plane never reads half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.dump_all(docs, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False))
    os.replace(tmp, path)


def deployment_of(j: int, services: int) -> tuple[int, str]:
    """Proxy j's service index and deployment key: deployments are filled round-robin."""
    d = j % (2 * services)
    return d // 2, f"{NAMESPACE}/svc-{d // 2}-v{d % 2 + 1}"


def address_of(j: int) -> str:
    """A distinct loopback address per proxy: 127.100.0.1, 127.100.0.2, …"""
    return f"127.{100 + j // (254 * 256)}.{(j // 254) % 256}.{j % 254 + 1}"


# ==================================================================================== the simulated proxy


@dataclass
class Held:
    """One resource a proxy holds: its message, bytes (to see changes) and what it names."""

    message: Any
    body: bytes
    version: str = ""  # Delta: the resource's version
    eds: frozenset[str] = frozenset()
    routes: frozenset[str] = frozenset()
    secrets: frozenset[str] = frozenset()


def tls_secrets(socket_: Any) -> set[str]:
    """SDS secret names a transport socket's TLS context refers to."""
    typed = socket_.typed_config
    if typed.type_url == UPSTREAM_TLS:
        context: Any = tls_pb2.UpstreamTlsContext()
    elif typed.type_url == DOWNSTREAM_TLS:
        context = tls_pb2.DownstreamTlsContext()
    else:
        return set()
    if not typed.Unpack(context):
        raise ValueError(f"transport socket {socket_.name} does not unpack as {typed.type_url}")
    common = context.common_tls_context
    found = {c.name for c in common.tls_certificate_sds_secret_configs}
    if common.HasField("validation_context_sds_secret_config"):
        found.add(common.validation_context_sds_secret_config.name)
    if common.HasField("combined_validation_context"):
        combined = common.combined_validation_context
        if combined.HasField("validation_context_sds_secret_config"):
            found.add(combined.validation_context_sds_secret_config.name)
    return found


def parse_resource(type_url: str, packed: Any, version: str = "") -> tuple[str, Held]:
    """Unpack one resource into its message type and read its references, as Envoy would need them."""
    message = MESSAGES[type_url]()
    if packed.type_url != type_url or not packed.Unpack(message):
        raise ValueError(f"a resource of type {packed.type_url!r} in a {SHORT[type_url]} response")
    held = Held(message, packed.value, version)
    if type_url == CDS:
        name = message.name
        eds = {message.eds_cluster_config.service_name or name} if message.type == cluster_pb2.Cluster.EDS else set()
        sockets = [message.transport_socket] if message.HasField("transport_socket") else []
        sockets += [m.transport_socket for m in message.transport_socket_matches]
        held.eds, held.secrets = frozenset(eds), frozenset(s for ts in sockets for s in tls_secrets(ts))
    elif type_url == LDS:
        name = message.name
        chains = [*message.filter_chains, *([message.default_filter_chain]
                                            if message.HasField("default_filter_chain") else [])]
        routes: set[str] = set()
        secrets: set[str] = set()
        for chain in chains:
            for network_filter in chain.filters:
                if network_filter.typed_config.type_url == HCM_TYPE:
                    manager = http_connection_manager_pb2.HttpConnectionManager()
                    if not network_filter.typed_config.Unpack(manager):
                        raise ValueError(f"listener {name}: filter {network_filter.name} does not unpack")
                    if manager.HasField("rds"):
                        routes.add(manager.rds.route_config_name)
            if chain.HasField("transport_socket"):
                secrets |= tls_secrets(chain.transport_socket)
        held.routes, held.secrets = frozenset(routes), frozenset(secrets)
    elif type_url == EDS:
        name = message.cluster_name
    else:
        name = message.name
    if not name:
        raise ValueError(f"a {SHORT[type_url]} resource without a name")
    return name, held


@dataclass
class TypeState:
    """One xDS type on one simulated proxy's stream."""

    url: str
    names: set[str] | None  # None: wildcard (CDS, LDS)
    held: dict[str, Held] = field(default_factory=dict)
    version: str = ""  # SotW: the version last accepted (sent as version_info)
    nonce: str = ""  # the latest response's nonce
    answered: str = ""  # the nonce last ACKed or NACKed
    awaiting: bool = False  # names were added and no response came since
    responses: int = 0
    acks: list[tuple[float, str]] = field(default_factory=list)


@dataclass
class Warming:
    """A CDS/LDS response whose ACK waits until what its new or changed resources need has arrived.

    ``answers`` are the (version, nonce) pairs to ACK then, in order: SotW ACKs only the latest response
    (one request carries the state), Delta ACKs every response, superseded ones included, as Envoy does.
    """

    answers: list[tuple[str, str]]
    since: int  # sequence number of the latest response: EDS must come after it
    eds: set[str]
    routes: set[str]
    secrets: set[str]
    timer: asyncio.TimerHandle | None = None


class SimProxy:
    """One simulated Envoy: a TLS channel with its own client certificate and one ADS stream."""

    def __init__(self, spec: Json, target: str, delta: bool) -> None:
        self.node_id: str = spec["node"]["id"]
        self.spec = spec
        self.target = target
        self.delta = delta
        self.types: dict[str, TypeState] = {}
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.node_sent = False
        self.seq = itertools.count(1)
        self.eds_fresh: dict[str, int] = {}  # service name → sequence number of the last EDS response carrying it
        self.warming: dict[str, Warming] = {}
        self.error = ""  # the last stream failure
        self.error_at = 0.0
        self.failures = 0
        self.open = False
        self.responses = 0
        self.resources = 0
        self.bytes = 0
        self.nacks = 0
        self.warming_timeouts = 0
        self.last_response = 0.0

    # -- the stream ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Keep one ADS stream open on one channel; like Envoy, open a new one after a jittered exponential
        back-off (0.5 s doubling up to 30 s, reset once a stream delivered something) when it fails."""
        files = self.spec
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(files["ca"]).read_bytes(),
                                                   private_key=Path(files["key"]).read_bytes(),
                                                   certificate_chain=Path(files["cert"]).read_bytes())
        async with grpc.aio.secure_channel(self.target, credentials, options=CHANNEL_OPTIONS) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            attempt = 0
            while True:
                received = self.responses
                await self.stream(stub)
                attempt = 0 if self.responses > received else attempt + 1
                await asyncio.sleep(random.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2 ** attempt)))

    async def stream(self, stub: Any) -> None:
        call = stub.DeltaAggregatedResources() if self.delta else stub.StreamAggregatedResources()
        self.outbox, self.node_sent = asyncio.Queue(), False
        writer = asyncio.create_task(self._write(call))
        writer.add_done_callback(lambda done: self._writer_ended(done, call))
        self.open = True
        try:
            self.resubscribe()
            while True:
                response = await call.read()
                if response is EOF:
                    self.fail("the control plane ended the stream")
                    return
                self.on_response(response)
        except grpc.aio.AioRpcError as failed:
            self.fail(f"{failed.code().name}: {failed.details()}")
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():  # the worker is stopping
                raise
            # else the call was cancelled after a failed write (already counted): open a new stream
        except ValueError as failed:  # a response of a type never asked for
            self.fail(str(failed))
            call.cancel()
        finally:
            self.open = False
            writer.cancel()
            await asyncio.wait([writer])  # its failure, if any, was reported by _writer_ended
            for pending in self.warming.values():
                if pending.timer is not None:
                    pending.timer.cancel()
            self.warming.clear()

    def resubscribe(self) -> None:
        """A new stream asks again for everything the proxy subscribed to, as Envoy does after reconnecting:
        SotW with the versions it runs, Delta with the versions of the resources it holds."""
        if not self.types:
            self.subscribe(CDS, None)
            self.subscribe(LDS, None)
            return
        for type_url in (CDS, LDS, EDS, RDS, SDS):
            state = self.types.get(type_url)
            if state is None:
                continue
            state.nonce = state.answered = ""
            state.awaiting = True
            names_ = sorted(state.names or ())
            if self.delta:
                self.send(type_url=type_url, resource_names_subscribe=names_,
                          initial_resource_versions={n: h.version for n, h in state.held.items()})
            else:
                self.send(type_url=type_url, version_info=state.version, resource_names=names_)

    def fail(self, error: str) -> None:
        self.failures += 1
        self.error, self.error_at = error, time.monotonic()

    async def _write(self, call: Any) -> None:
        while True:
            request = await self.outbox.get()
            await call.write(request)

    def _writer_ended(self, writer: asyncio.Task[None], call: Any) -> None:
        """A request that cannot be written ends the stream (it is then opened again), never silently."""
        if not writer.cancelled() and writer.exception() is not None:
            self.fail(f"writing a request failed: {writer.exception()!r}")
            call.cancel()

    def send(self, **fields: Any) -> None:
        message = discovery_pb2.DeltaDiscoveryRequest(**fields) if self.delta else \
            discovery_pb2.DiscoveryRequest(**fields)
        if not self.node_sent:
            json_format.ParseDict(self.spec["node"], message.node)
            self.node_sent = True
        self.outbox.put_nowait(message)

    # -- subscriptions --------------------------------------------------------------------------------

    def subscribe(self, type_url: str, names: set[str] | None) -> None:
        """Start (or change) a type's subscription, as Envoy's gRPC mux does when its watches change."""
        state = self.types.get(type_url)
        if state is None:
            if names is not None and not names:
                return
            state = self.types[type_url] = TypeState(type_url, names)
            state.awaiting = True
            if self.delta:
                self.send(type_url=type_url, resource_names_subscribe=sorted(names or ()))
            else:
                self.send(type_url=type_url, resource_names=sorted(names or ()))
            return
        old = state.names or set()
        new = names or set()
        if new == old:
            return
        state.names = set(new)
        state.awaiting = state.awaiting or bool(new - old)
        for gone in old - new:
            state.held.pop(gone, None)
        if self.delta:
            self.send(type_url=type_url, resource_names_subscribe=sorted(new - old),
                      resource_names_unsubscribe=sorted(old - new))
        else:
            self.send(type_url=type_url, version_info=state.version, response_nonce=state.nonce,
                      resource_names=sorted(new))

    def follow_references(self) -> None:
        """EDS for the clusters' service names, RDS for the listeners' route configs, SDS for every secret."""
        clusters = self.types[CDS].held.values() if CDS in self.types else ()
        listeners = self.types[LDS].held.values() if LDS in self.types else ()
        self.subscribe(EDS, {n for c in clusters for n in c.eds})
        self.subscribe(RDS, {n for item in listeners for n in item.routes})
        self.subscribe(SDS, {n for item in (*clusters, *listeners) for n in item.secrets})

    # -- responses --------------------------------------------------------------------------------

    def on_response(self, response: Any) -> None:
        now = time.monotonic()
        self.responses += 1
        self.last_response = now
        self.bytes += response.ByteSize()
        seq = next(self.seq)
        type_url = response.type_url
        state = self.types.get(type_url)
        if state is None:
            raise ValueError(f"{self.node_id}: a {type_url} response that was never requested")
        state.responses += 1
        state.nonce = response.nonce
        state.awaiting = False
        version = response.system_version_info if self.delta else response.version_info
        try:
            if self.delta:
                updates = dict(parse_resource(type_url, r.resource, r.version) for r in response.resources)
                removed = set(response.removed_resources)
            else:
                updates = dict(parse_resource(type_url, r) for r in response.resources)
                removed = set(state.held) - set(updates)
        except ValueError as bad:
            self.nack(state, str(bad))
            return
        self.resources += len(updates)
        before = state.held
        state.held = {**{n: h for n, h in before.items() if n not in removed}, **updates}
        if type_url == EDS:
            for name in (*updates, *removed):
                self.eds_fresh[name] = seq
        if type_url in (CDS, LDS):
            self.follow_references()
            changed = [h for n, h in updates.items() if n not in before or before[n].body != h.body]
            self.warm(state, version, seq, changed)
        else:
            self.ack(state, version)
        self.release_warm()

    def warm(self, state: TypeState, version: str, seq: int, changed: list[Held]) -> None:
        previous = self.warming.pop(state.url, None)
        if previous is not None and previous.timer is not None:
            previous.timer.cancel()
        answers = [*(previous.answers if previous is not None and self.delta else []), (version, state.nonce)]
        pending = Warming(answers, seq, {n for h in changed for n in h.eds},
                          {n for h in changed for n in h.routes}, {n for h in changed for n in h.secrets})
        if previous is not None:  # a newer response replaces one still warming: its needs carry over
            pending.eds |= previous.eds
            pending.routes |= previous.routes
            pending.secrets |= previous.secrets
        self.warming[state.url] = pending
        loop = asyncio.get_running_loop()
        pending.timer = loop.call_later(INITIAL_FETCH_TIMEOUT, self._warm_timeout, state.url, pending)

    def _warm_timeout(self, type_url: str, pending: Warming) -> None:
        if self.warming.get(type_url) is pending:
            self.warming_timeouts += 1
            del self.warming[type_url]
            for version, nonce in pending.answers:
                self.ack(self.types[type_url], version, nonce)

    def _warm(self, pending: Warming) -> bool:
        eds, rds, sds = (self.types.get(t) for t in (EDS, RDS, SDS))
        subscribed_eds = (eds.names or set()) if eds is not None else set()
        if any(self.eds_fresh.get(n, 0) <= pending.since for n in pending.eds if n in subscribed_eds):
            return False
        if pending.routes and (rds is None or not pending.routes <= rds.held.keys()):
            return False
        return not pending.secrets or (sds is not None and pending.secrets <= sds.held.keys())

    def release_warm(self) -> None:
        for type_url in (CDS, LDS):
            pending = self.warming.get(type_url)
            if pending is not None and self._warm(pending):
                if pending.timer is not None:
                    pending.timer.cancel()
                del self.warming[type_url]
                for version, nonce in pending.answers:
                    self.ack(self.types[type_url], version, nonce)

    def ack(self, state: TypeState, version: str, nonce: str | None = None) -> None:
        nonce = state.nonce if nonce is None else nonce
        if self.delta:
            self.send(type_url=state.url, response_nonce=nonce)
        else:
            state.version = version
            self.send(type_url=state.url, version_info=version, response_nonce=nonce,
                      resource_names=sorted(state.names or ()))
        state.answered = nonce
        state.acks.append((time.monotonic(), version))

    def nack(self, state: TypeState, message: str) -> None:
        self.nacks += 1
        detail = status_pb2.Status(code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message=message)
        if self.delta:
            self.send(type_url=state.url, response_nonce=state.nonce, error_detail=detail)
        else:
            self.send(type_url=state.url, version_info=state.version, response_nonce=state.nonce,
                      resource_names=sorted(state.names or ()), error_detail=detail)
        state.answered = state.nonce

    # -- what the parent asks -------------------------------------------------------------------------

    def synced(self) -> bool:
        """Every subscribed type answered, its latest response ACKed, nothing warming, nothing awaited."""
        if not self.open or CDS not in self.types or LDS not in self.types or self.warming:
            return False
        return all(s.responses and s.answered == s.nonce and not s.awaiting and s.acks for s in self.types.values())

    def why_not_synced(self) -> Json:
        """What a proxy that is not synced waits for, per type (for the report of a phase that timed out)."""
        return {"node": self.node_id, "open": self.open, "warming": sorted(SHORT[t] for t in self.warming),
                "types": {SHORT[t]: {"responses": s.responses, "answered": s.answered == s.nonce,
                                     "awaiting": s.awaiting, "names": None if s.names is None else len(s.names),
                                     "held": len(s.held), "missing": sorted((s.names or set()) - s.held.keys())[:3]}
                          for t, s in self.types.items()}}

    def report(self) -> Json:
        return {"node": self.node_id, "error": self.error, "failures": self.failures, "synced": self.synced(),
                "responses": self.responses,
                "resources": self.resources, "bytes": self.bytes, "nacks": self.nacks,
                "warming_timeouts": self.warming_timeouts,
                "acks": {SHORT[t]: [[round(at, 6), v] for at, v in s.acks] for t, s in self.types.items()}}


def emit(data: Json) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


async def worker(spec_file: Path) -> None:
    """The simulated proxies, driven by one-line commands on stdin, answering one JSON line each."""
    spec = json.loads(spec_file.read_text())
    proxies = [SimProxy(p, spec["target"], spec["delta"]) for p in spec["proxies"]]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: list[asyncio.Task[None]] = []
    started = 0.0
    emit({"ready": len(proxies)})
    try:
        while line := (await reader.readline()).decode().split():
            command, *rest = line
            if command == "start":
                started = time.monotonic()
                tasks = [asyncio.create_task(p.run()) for p in proxies]
                emit({"started": started})
            elif command == "status":
                since = float(rest[0]) if rest else 0.0
                errors = [f"{p.node_id} at +{p.error_at - started:.1f} s: {p.error}" for p in proxies if p.error]
                emit({"open": sum(p.open for p in proxies), "synced": sum(p.synced() for p in proxies),
                      "stream_failures": sum(p.failures for p in proxies), "proxies_with_stream_failures": len(errors),
                      "error_samples": errors[:3],
                      "unsynced_samples": [p.why_not_synced() for p in proxies if not p.synced()][:3],
                      "last_response": max((p.last_response for p in proxies), default=0.0),
                      "rds_acked_since": sum(1 for p in proxies if RDS in p.types and p.types[RDS].acks
                                             and p.types[RDS].acks[-1][0] > since)})
            elif command == "report":
                emit({"proxies": [p.report() for p in proxies]})
            else:
                break
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ====================================================================================== the parent


class BenchTimeoutError(Exception):
    """The overall --timeout ran out; what finished is reported."""


@dataclass
class Child:
    """A process this benchmark started; :meth:`stop` terminates, then kills, and always reaps it."""

    name: str
    popen: subprocess.Popen[bytes]
    grace: float = 10.0  # seconds from SIGTERM to SIGKILL

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=self.grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        for pipe in (self.popen.stdin, self.popen.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


class Worker:
    """The simulated-proxy process, spoken to line by line (each answer bounded in time)."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        stdout = self.child.popen.stdout
        assert stdout is not None
        for line in stdout:
            self.lines.put(line)
        self.lines.put(None)

    def answer(self, timeout: float) -> Json:
        try:
            line = self.lines.get(timeout=max(0.1, timeout))
        except queue.Empty:
            raise BenchTimeoutError("the simulated proxies did not answer in time") from None
        if line is None:
            raise RuntimeError(f"the simulated proxies' process ended (exit status {self.child.popen.wait()})")
        data: Json = json.loads(line)
        return data

    def ask(self, command: str, timeout: float) -> Json:
        stdin = self.child.popen.stdin
        assert stdin is not None
        stdin.write(command.encode() + b"\n")
        stdin.flush()
        return self.answer(timeout)


@dataclass
class Process:
    """CPU and memory of a process, from /proc."""

    pid: int

    def cpu(self) -> float:
        """utime + stime, in seconds, of every thread."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_mb(self, key: str) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 1024, 1)
        return 0.0


def source_version() -> Json:
    """The commit of the meshplane sources that serve runs, and whether they have uncommitted changes."""
    root = Path(sidecar.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "controlplane", "xds", "injector"], capture_output=True, text=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "modified": None}
    return {"commit": commit, "modified": bool(dirty)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def spread(values: list[float]) -> Json:
    if not values:
        return {"p50_s": None, "p99_s": None, "max_s": None}
    return {"p50_s": round(percentile(values, 0.5), 3), "p99_s": round(percentile(values, 0.99), 3),
            "max_s": round(max(values), 3)}


def settled_at(acks: list[list[Any]]) -> float:
    """When a proxy first ACKed the version it still runs (the start of the trailing run of that version)."""
    final = acks[-1][1]
    at = acks[-1][0]
    for t, version in reversed(acks):
        if version != final:
            break
        at = t
    return float(at)


class Bench:
    """One run: files, processes and the measurements so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.deadline = time.monotonic() + float(args.timeout)
        self.root = Path(tempfile.mkdtemp(prefix="meshplane-fanout-"))
        self.config_dir = self.root / "config"
        self.state_dir = self.root / "state"
        self.children: list[Child] = []
        self.changed = min(args.calls, args.services - 1)
        self.xds_port = self.admin_port = 0
        self.plane: Process | None = None
        self.worker: Worker | None = None
        self.result: Json = {
            "benchmark": "fanout", "mode": args.mode, "services": args.services, "deployments": 2 * args.services,
            "proxies": args.proxies, "calls": args.calls, "callers_per_service": min(args.calls, args.services),
            "access_policy_rules": args.services * (1 if args.calls >= args.services else args.calls),
            "quiet_ms": args.quiet_ms,
            "max_delay_ms": args.max_delay_ms, "settle_s": args.settle, "timeout_s": args.timeout,
            "machine": {"cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
            "meshplane": source_version(),
            "complete": False, "stopped_in": None, "error": None}

    def left(self) -> float:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise BenchTimeoutError("--timeout ran out")
        return remaining

    # -- phases -----------------------------------------------------------------------------------

    def run(self) -> None:
        phase = "setup"
        try:
            self.setup()
            phase = "cold_sync"
            self.cold_sync()
            phase = "route_change"
            self.route_change()
            self.result["complete"] = True
        except BenchTimeoutError as late:
            self.result["stopped_in"], self.result["error"] = phase, str(late)
        except KeyboardInterrupt:
            self.result["stopped_in"] = phase
            raise
        except Exception as failed:  # reported in the JSON (and the traceback on stderr), never left unreported
            self.result["stopped_in"], self.result["error"] = phase, f"{type(failed).__name__}: {failed}"
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                self.result["control_plane_log_tail"] = self.log_tail() if not self.result["complete"] else []

    def setup(self) -> None:
        args = self.args
        began = time.monotonic()
        self.config_dir.mkdir()
        for name, docs in mesh_files(args.services, args.calls, self.changed).items():
            write_file(self.config_dir / name, docs)
        self.xds_port, self.admin_port = free_port(), free_port()
        exe = [shutil.which("meshplane") or str(Path(sys.executable).with_name("meshplane"))]
        if args.profile is not None:  # the same process, under cProfile (written when serve stops)
            exe = [sys.executable, "-P", "-m", "cProfile", "-o", str(args.profile.resolve()), *exe]
        command = [*exe, "serve", "--config-dir", str(self.config_dir), "--state-dir", str(self.state_dir),
                   "--xds-address", f"127.0.0.1:{self.xds_port}", "--admin-address", f"127.0.0.1:{self.admin_port}",
                   "--quiet-ms", str(args.quiet_ms), "--max-delay-ms", str(args.max_delay_ms),
                   "--log-level", args.serve_log_level]
        plane = self.spawn("control-plane", command, stdin=False)
        if args.profile is not None:  # serve stops once its current round is over, then writes the profile
            plane.grace = 300.0
        self.plane = Process(plane.popen.pid)
        self.result["pids"] = {"control_plane": plane.popen.pid}
        wanted = {deployment_of(j, args.services)[1] for j in range(2 * args.services)}
        self.wait(lambda: self.admin("/healthz")[0] == 200 and wanted <= set(self.served()), "serve to start")
        self.result["setup"] = {"serve_ready_s": round(time.monotonic() - began, 3),
                                "control_plane_rss_mb": self.plane.memory_mb("VmRSS")}
        began = time.monotonic()
        ca = xdsauth.authority(self.state_dir)  # serve created it before it served
        proxies = []
        for j in range(args.proxies):
            self.left()
            proxies.append(self.bootstrap(j, ca, checked=j in (0, args.proxies - 1)))
        self.result["setup"]["bootstraps_s"] = round(time.monotonic() - began, 3)
        spec_file = self.root / "proxies.json"
        spec_file.write_text(json.dumps({"target": f"127.0.0.1:{self.xds_port}", "delta": args.mode == "delta",
                                         "proxies": proxies}))
        child = self.spawn("simulated-proxies", [sys.executable, "-P", str(Path(__file__).resolve()), "--worker",
                                                 str(spec_file)], stdin=True)
        self.result["pids"]["simulated_proxies"] = child.popen.pid
        self.worker = Worker(child)
        self.worker.answer(self.left())

    def bootstrap(self, j: int, ca: CertificateAuthority, *, checked: bool) -> Json:
        """Proxy j's node and xDS client credentials, as ``meshplane bootstrap`` makes them.

        ``sidecar.bootstrap_spec`` reads the state directory's deployments and the CA from their files on
        every call; for N proxies the CA is loaded once and ``xdsauth.issue_proxy`` issues with it, and the
        node is put together as ``bootstrap_spec`` does. For ``checked`` proxies (the first and the last)
        ``bootstrap_spec`` itself runs too, and its rendered node must be exactly the same.
        """
        _, deployment = deployment_of(j, self.args.services)
        address = address_of(j)
        name, namespace = deployment.partition("/")[2], deployment.partition("/")[0]
        node_id = f"{name}.{namespace}-{address}"
        metadata = {names.META_DEPLOYMENT: deployment, names.META_ADDRESS: address,
                    names.META_CAPTURE: ir.Capture.EXPLICIT.value, names.META_APP_PORTS: {str(PORT): str(APP_PORT)}}
        node: Json = {"id": node_id, "cluster": deployment, "metadata": metadata}
        if checked:
            spec = sidecar.bootstrap_spec(state_dir=self.state_dir, xds_address=f"127.0.0.1:{self.xds_port}",
                                          deployment=deployment, pod_ip=address, app_ports=[f"{PORT}={APP_PORT}"],
                                          admin_port=0, node_id=None, delta=self.args.mode == "delta")
            rendered = render_bootstrap(spec)["node"]
            if rendered != node:
                raise RuntimeError(f"the bench's node {node} differs from meshplane bootstrap's {rendered}")
            tls = spec.tls
        else:
            tls = xdsauth.issue_proxy(self.state_dir, node_id, deployment, "127.0.0.1", ca=ca)
        assert tls is not None
        return {"node": {**node, "user_agent_name": "envoy"}, "cert": tls.certificate_chain, "key": tls.private_key,
                "ca": tls.trusted_ca}

    def cold_sync(self) -> None:
        assert self.worker is not None and self.plane is not None
        cpu0, metrics0 = self.plane.cpu(), self.metrics()
        worker_process = Process(self.worker.child.popen.pid)
        worker_cpu0 = worker_process.cpu()
        started = float(self.worker.ask("start", self.left())["started"])
        report, status = self.until_synced(since=started, rds_expected=0)
        cpu1 = self.plane.cpu()
        acked = [p for p in report if p["acks"]]
        per_proxy = [max(settled_at(a) for a in p["acks"].values()) - started for p in acked if p["synced"]]
        self.result["cold_sync"] = {
            "s": round(max(per_proxy), 3) if per_proxy else None,
            "proxies_synced": sum(1 for p in report if p["synced"]),
            "stream_failures": status["stream_failures"],
            "proxies_with_stream_failures": status["proxies_with_stream_failures"],
            "error_samples": status["error_samples"],
            "per_proxy": spread(per_proxy),
            "control_plane_cpu_s": round(cpu1 - cpu0, 2),
            "control_plane_rss_hwm_mb": self.plane.memory_mb("VmHWM"),
            "control_plane_rss_mb": self.plane.memory_mb("VmRSS"),
            "simulated_proxies_cpu_s": round(worker_process.cpu() - worker_cpu0, 2),
            "simulated_proxies_rss_hwm_mb": worker_process.memory_mb("VmHWM"),
            "responses": sum(p["responses"] for p in report), "resources_parsed": sum(p["resources"] for p in report),
            "mb_received": round(sum(p["bytes"] for p in report) / 1e6, 2),
            "acks": sum(len(a) for p in report for a in p["acks"].values()),
            "nacks": sum(p["nacks"] for p in report), "warming_timeouts": sum(p["warming_timeouts"] for p in report),
            "control_plane_metrics": self.metrics_delta(metrics0, self.metrics())}

    def route_change(self) -> None:
        assert self.worker is not None and self.plane is not None
        args = self.args
        earlier = self.worker.ask("report", self.left())["proxies"]
        before = {p["node"]: p["acks"] for p in earlier}
        callers = set(callers_of(self.changed, args.services, args.calls))
        expected = sum(1 for j in range(args.proxies) if deployment_of(j, args.services)[0] in callers)
        cpu0, metrics0 = self.plane.cpu(), self.metrics()
        written = time.monotonic()
        write_file(self.config_dir / f"routes-svc-{self.changed}.yaml", [route_table(self.changed, WEIGHTS_AFTER)])
        report, _ = self.until_synced(since=written, rds_expected=expected)
        cpu1 = self.plane.cpu()
        failures = sum(p["failures"] for p in report) - sum(p["failures"] for p in earlier)
        latencies: list[float] = []
        changed_types: dict[str, int] = {}
        for proxy in report:
            old = before.get(proxy["node"], {})
            for short, acks in proxy["acks"].items():
                if acks and old.get(short) and acks[-1][1] != old[short][-1][1]:
                    changed_types[short] = changed_types.get(short, 0) + 1
            rds = proxy["acks"].get("RDS", [])
            if rds and old.get("RDS") and rds[-1][1] != old["RDS"][-1][1]:
                latencies.append(settled_at(rds) - written)
        self.result["route_change"] = {
            "service": f"svc-{self.changed}", "weights": [list(WEIGHTS_BEFORE), list(WEIGHTS_AFTER)],
            "affected": len(latencies), "expected_affected": expected, **spread(latencies),
            "proxies_with_new_version": changed_types, "stream_failures": failures,
            "control_plane_cpu_s": round(cpu1 - cpu0, 2),
            "control_plane_rss_hwm_mb": self.plane.memory_mb("VmHWM"),
            "control_plane_metrics": self.metrics_delta(metrics0, self.metrics())}

    def until_synced(self, *, since: float, rds_expected: int) -> tuple[list[Json], Json]:
        """Wait until every proxy is synced by its own account and the control plane's, twice, quietly.

        Returns the final report. On timeout, records how far the proxies got and raises.
        """
        assert self.worker is not None
        confirmed_at: float | None = None
        status: Json = {}
        try:
            while True:
                time.sleep(min(0.25, self.left()))
                status = self.worker.ask(f"status {since}", self.left())
                quiet = time.monotonic() - max(status["last_response"], since) >= self.args.settle
                ready = (status["synced"] == self.args.proxies and quiet and status["last_response"] > since
                         and status["rds_acked_since"] >= rds_expected)
                if not ready:
                    confirmed_at = None
                    continue
                report = self.worker.ask("report", self.left())["proxies"]
                if not self.plane_agrees(report):
                    confirmed_at = None
                    continue
                if confirmed_at is None or confirmed_at != status["last_response"]:
                    confirmed_at = status["last_response"]  # once more, after another quiet period
                    continue
                return report, status
        except BenchTimeoutError:
            self.result["progress"] = {key: status.get(key) for key in (
                "open", "synced", "stream_failures", "proxies_with_stream_failures", "error_samples",
                "unsynced_samples")}
            with contextlib.suppress(Exception):
                self.diagnose(status.get("unsynced_samples") or [])
            raise

    def diagnose(self, samples: list[Json]) -> None:
        """For proxies that never got a resource they subscribed to: is it in what serve last published for
        them (``/debug/config_dump``)? Recorded next to each sample as ``published``."""
        for sample in samples:
            missing = {t: v["missing"] for t, v in sample["types"].items() if v["missing"]}
            if not missing:
                continue
            code, body = self.admin(f"/debug/config_dump?proxy={urllib.parse.quote(sample['node'])}", timeout=10)
            if code != 200:
                sample["published"] = f"config_dump answered {code}"
                continue
            dump = json.loads(body)
            named = {short: {r.get("cluster_name") or r.get("name") for r in dump.get(short, {}).get("resources", [])}
                     for short in missing}
            sample["published"] = {short: {n: n in named[short] for n in found} for short, found in missing.items()}

    def plane_agrees(self, report: list[Json]) -> bool:
        """Every proxy ready and SYNCED on every type at syncz, at the version the proxy ACKed last, and no
        round running or due (one may be: the last proxies' readiness gives their callers endpoints)."""
        code, body = self.admin("/debug/syncz", timeout=self.left())
        if code != 200:
            return False
        syncz = json.loads(body)
        if syncz.get("reconciling"):
            return False
        plane = {p["node"]: p["types"] for p in syncz["proxies"] if p.get("ready", True)}
        for proxy in report:
            types_ = plane.get(proxy["node"])
            if types_ is None or set(types_) != set(proxy["acks"]):
                return False
            for short, acks in proxy["acks"].items():
                if types_[short]["status"] != "SYNCED" or types_[short]["acked"] != acks[-1][1]:
                    return False
        return True

    # -- helpers ----------------------------------------------------------------------------------

    def spawn(self, name: str, command: list[str], *, stdin: bool) -> Child:
        with (self.root / f"{name}.log").open("ab") as log:
            popen = subprocess.Popen(command, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE if stdin else log, stderr=log, cwd=self.root)
        child = Child(name, popen)
        self.children.append(child)
        return child

    def wait(self, check: Callable[[], bool], what: str) -> None:
        while True:
            with contextlib.suppress(OSError, ValueError, KeyError):
                if check():
                    return
            for child in self.children:
                if child.popen.poll() is not None:
                    raise RuntimeError(f"{child.name} exited with status {child.popen.returncode} waiting for {what}")
            time.sleep(min(0.1, self.left()))

    def admin(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        try:
            url = f"http://127.0.0.1:{self.admin_port}{path}"
            with urllib.request.urlopen(url, timeout=max(0.1, timeout)) as reply:
                return int(reply.status), reply.read().decode()
        except OSError as failed:
            return int(getattr(failed, "code", 0) or 0), str(failed)

    def served(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.state_dir / "deployments.json").read_text())
        return data

    def metrics(self) -> dict[str, float]:
        """The control plane's own counters (per type where labelled), from /metrics."""
        code, body = self.admin("/metrics", timeout=min(30.0, self.left()))
        wanted = ("meshplane_reconcile_round_seconds_count", "meshplane_reconcile_round_seconds_sum",
                  "meshplane_build_seconds_sum", "meshplane_translate_seconds_sum", "meshplane_xds_pushes_total",
                  "meshplane_xds_acks_total", "meshplane_xds_nacks_total")
        out: dict[str, float] = {}
        for line in body.splitlines() if code == 200 else []:
            name, _, value = line.rpartition(" ")
            if name.startswith(wanted):
                short = name.replace("meshplane_", "").replace('type="', "").replace('"}', "}")
                out[short] = float(value)
        return out

    @staticmethod
    def metrics_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
        return {k: round(v - before.get(k, 0.0), 3) for k, v in after.items() if v != before.get(k, 0.0)}

    def log_tail(self, lines: int = 15) -> list[str]:
        text = (self.root / "control-plane.log").read_text(errors="replace")
        return text.splitlines()[-lines:]

    def close(self) -> None:
        if self.worker is not None and self.worker.child.popen.poll() is None:
            stdin = self.worker.child.popen.stdin
            with contextlib.suppress(OSError, ValueError):
                if stdin is not None:
                    stdin.write(b"quit\n")
                    stdin.flush()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.worker.child.popen.wait(timeout=15)
        for child in reversed(self.children):
            child.stop()
        if self.args.keep:
            print(f"kept {self.root}", file=sys.stderr)
            return
        for _ in range(10):
            shutil.rmtree(self.root, ignore_errors=True)
            if not self.root.exists():
                return
            time.sleep(0.5)
        print(f"could not remove {self.root}", file=sys.stderr)


def _stop_on(signum: int, frame: types.FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--services", type=positive, default=1000, help="virtual services S (default 1000)")
    parser.add_argument("--proxies", type=positive, default=2000,
                        help="simulated proxies N, spread round-robin over the 2S deployments (default 2000)")
    parser.add_argument("--calls", type=positive, default=10,
                        help="services each service may call, K (default 10); K >= S: all of them, itself included")
    parser.add_argument("--mode", choices=("sotw", "delta"), default="sotw",
                        help="State of the World or Delta ADS (default sotw)")
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="seconds for the whole run, setup included (default 240); what finished is reported")
    parser.add_argument("--quiet-ms", type=positive, default=50,
                        help="serve's coalescing quiet time (--quiet-ms of meshplane serve; default 50)")
    parser.add_argument("--max-delay-ms", type=positive, default=1000,
                        help="serve's longest coalescing delay (--max-delay-ms of meshplane serve; default 1000)")
    parser.add_argument("--settle", type=float, default=1.0,
                        help="seconds without any response before a phase may count as done (default 1.0)")
    parser.add_argument("--serve-log-level", default="warning", choices=("debug", "info", "warning", "error"),
                        help="meshplane serve's --log-level (default warning)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (config, state, logs) and name it on stderr")
    parser.add_argument("--profile", type=Path, metavar="FILE",
                        help="run meshplane serve under cProfile and write its statistics to FILE (pstats)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.proxies > 60 * 254 * 256:
        parser.error("too many proxies for one distinct 127.x.y.z address each")
    return args


def main() -> None:
    args = parse_args()
    if args.worker is not None:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(worker(args.worker))
        return
    signal.signal(signal.SIGTERM, _stop_on)
    bench = Bench(args)
    try:
        bench.run()
    except KeyboardInterrupt:
        bench.result["error"] = "interrupted"
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # cleanup is not interrupted halfway
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.close()
    print(json.dumps(bench.result))
    sys.exit(0 if bench.result["complete"] else 1)


if __name__ == "__main__":
    main()
