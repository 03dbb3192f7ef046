"""Benchmark: pods the sidecar injector admits per second, and each admission's latency. Prints JSON.

The real webhook application (``meshplane.injector.webhook.create_app``) is served over HTTPS on
127.0.0.1 (a free port) in this process, on the same event loop as the client, with a serving
certificate from the control plane's xDS CA (``xdsauth.authority``) in a temporary state directory,
which is removed afterwards. Its ``AdmissionContext`` is the bench's: one namespace ``shop`` labelled
for injection, one active binding (``shop/reviews-v1``, Service selector ``app=reviews``) and fixed
settings. ``issue_credentials`` calls ``xdsauth.issue_proxy`` as the control plane does per pod: it
generates an ECDSA P-256 key, signs an xDS client certificate and writes key (0600), certificate, CA
bundle and deployment under ``<state dir>/proxies/<node id>/``. With ``--no-credentials`` it returns a
constant instead, so the difference between the two runs is the cost of issuance.

``--requests`` AdmissionReview v1 pod CREATE requests (one container with a named port, httpGet
readiness and liveness probes, labels ``app=reviews, version=v1``, a ``generateName``; a unique request
uid each, so a unique node id each) are POSTed to ``/mutate-pod`` by ``--concurrency`` workers sharing
an aiohttp session whose connector holds at most that many keep-alive connections, verifying the CA.
The body is serialised once before timing and each uid spliced into it. 50 warm-up requests (same
concurrency, which also opens the connections and does the TLS handshakes) come first and are not counted.

Latency is per request at the client: ``time.perf_counter`` (monotonic) around the POST and the reading of
the answer; percentiles are nearest-rank. ``injections_per_s`` is the successful injections over the
wall time of the measured requests. A response is a failure unless it is HTTP 200, echoes the uid, is
allowed, and carries a JSONPatch that adds the sidecar (a request that errs or times out, after 30 s, fails
too). No request is started later than ``--seconds`` after the run began (CA and server set-up included);
``stopped_early`` then says so and ``requests`` is the count actually measured.

The client shares the process, the event loop and the GIL with the server, so its own work (TLS, HTTP,
checking answers) is counted against the server: the figures are a lower bound for the webhook alone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import ssl
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import cryptography

from meshplane.controlplane import xdsauth
from meshplane.controlplane.world import Index
from meshplane.injector import inject
from meshplane.injector.ca import CertificateAuthority
from meshplane.injector.webhook import create_app, server_ssl_context, start
from meshplane.injector.webhookconfig import MUTATE_POD_PATH

Json = dict[str, Any]
NAMESPACE = "shop"
XDS_SERVER = "meshplane.meshplane-system.svc"
WARMUP = 50
REQUEST_TIMEOUT = 30.0  # seconds; the webhook gives issuance 5
INCLUDES = {
    True: "HTTPS + AdmissionReview parsing + binding choice + credential issuance (ECDSA P-256 key, certificate, "
          "files) + JSON patch",
    False: "HTTPS + AdmissionReview parsing + binding choice + worker-thread hop (issue_credentials returns a "
           "constant, nothing issued) + JSON patch",
}

BINDING = inject.Binding(
    key="shop/reviews-v1-binding", deployment="shop/reviews-v1",
    deployment_id="ocid1.meshvirtualdeployment.oc1..reviewsv1", service_namespace=NAMESPACE, service_found=True,
    selector={"app": "reviews"}, match_labels={}, resources=None, mount_pki=False, active=True)
SETTINGS = inject.Settings(image="meshplane:bench", xds_address=f"{XDS_SERVER}:15012")


# ------------------------------------------------------------------------------------- the context


@dataclass
class BenchContext:
    """An ``AdmissionContext``: namespace ``shop`` enabled, one active binding, real or constant credentials."""

    state_dir: Path
    credentials: bool
    index: Index = field(default_factory=Index)
    issued: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    ca: CertificateAuthority | None = None  # loaded once, as the control plane's admission context does

    def __post_init__(self) -> None:
        self.ca = xdsauth.authority(self.state_dir)

    def world(self) -> Index:
        return self.index  # the injector never reads it

    def namespace_labels(self, namespace: str) -> dict[str, str] | None:
        return {inject.INJECTION_LABEL: inject.ENABLED} if namespace == NAMESPACE else None

    def bindings(self) -> list[inject.Binding]:
        return [BINDING]

    def settings(self) -> inject.Settings | None:
        return SETTINGS

    def issue_credentials(self, node_id: str, deployment: str) -> str:
        """Called in a worker thread by the webhook; ``issue_proxy`` writes only under the node's own folder."""
        if not self.credentials:
            return "meshplane-proxy-bench"
        xdsauth.issue_proxy(self.state_dir, node_id, deployment, XDS_SERVER, ca=self.ca)
        with self._lock:
            self.issued += 1
        return f"meshplane-proxy-{node_id}"


# ------------------------------------------------------------------------------------ the requests


POD: Json = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "generateName": "reviews-v1-7d9f8c6b5-",
        "namespace": NAMESPACE,
        "labels": {"app": "reviews", "version": "v1", "pod-template-hash": "7d9f8c6b5"},
        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "reviews-v1-7d9f8c6b5",
                             "uid": "0b3c0a8e-7d6b-4b8f-9a51-3f0b2c8d9e10", "controller": True,
                             "blockOwnerDeletion": True}],
    },
    "spec": {
        "containers": [{
            "name": "reviews",
            "image": "registry.example/reviews:1.4",
            "ports": [{"name": "http", "containerPort": 9080, "protocol": "TCP"},
                      {"name": "metrics", "containerPort": 9090, "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP"}, "periodSeconds": 5,
                               "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": 9080, "scheme": "HTTP"},
                              "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 1,
                              "successThreshold": 1, "failureThreshold": 3},
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
            "volumeMounts": [{"name": "kube-api-access-7x2kq", "readOnly": True,
                              "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
        }],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "serviceAccount": "default",
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
                         "tolerationSeconds": 300}],
        "priority": 0,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
        "volumes": [{"name": "kube-api-access-7x2kq", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
    },
}


def request_uid(sequence: int) -> str:
    """A uuid-shaped uid whose first 8 characters (the node id's suffix) are the sequence number: unique."""
    return f"{sequence:08x}{str(uuid.uuid4())[8:]}"


def review_body(uid: str) -> bytes:
    """An AdmissionReview v1 pod CREATE, shaped like the API server's (serialised once: see ``bodies``)."""
    pod_gvk = {"group": "", "version": "v1", "kind": "Pod"}
    pods = {"group": "", "version": "v1", "resource": "pods"}
    request = {
        "uid": uid, "kind": pod_gvk, "resource": pods, "requestKind": pod_gvk, "requestResource": pods,
        "namespace": NAMESPACE, "operation": "CREATE",
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                     "uid": "5f1e6a43-0d1c-4b7e-9b8e-2f7c5d8a9e01",
                     "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system",
                                "system:authenticated"]},
        "object": POD, "oldObject": None, "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    }
    return json.dumps({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": request}).encode()


_UID_MARK = "00000000-0000-4000-8000-000000000000"
_TEMPLATE = review_body(_UID_MARK)


def bodies(first: int, count: int) -> Iterator[tuple[str, bytes]]:
    """Request ``first`` … ``first + count - 1``: uid and body, the uid spliced into a serialised template."""
    for sequence in range(first, first + count):
        uid = request_uid(sequence)
        yield uid, _TEMPLATE.replace(_UID_MARK.encode(), uid.encode())


def injected(status: int, body: bytes, uid: str) -> bool:
    """Whether the answer admits the pod with a JSONPatch that adds the sidecar."""
    if status != 200:
        return False
    try:
        response = json.loads(body)["response"]
        if response.get("allowed") is not True or response.get("uid") != uid:
            return False
        if response.get("patchType") != "JSONPatch":
            return False
        patch = json.loads(base64.b64decode(response["patch"]))
    except (ValueError, KeyError, TypeError):
        return False
    return any(op.get("path") == "/spec/containers/-" and op.get("value", {}).get("name") == inject.PROXY_CONTAINER
               for op in patch if isinstance(op, dict))


# ------------------------------------------------------------------------------------- the client


@dataclass
class Run:
    """What the workers measured: latencies of the measured requests (seconds), failures, wall time."""

    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    elapsed: float = 0.0
    stopped_early: bool = False


async def send(session: aiohttp.ClientSession, url: str, pending: Iterator[tuple[str, bytes]], concurrency: int,
               deadline: float) -> Run:
    """POST every body with ``concurrency`` workers; none starts a request after ``deadline``."""
    run = Run()
    headers = {"Content-Type": "application/json"}

    async def worker() -> None:
        for uid, body in pending:  # shared iterator: each body is sent once
            if time.monotonic() >= deadline:
                run.stopped_early = True
                return
            started = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as answer:
                    status, reply = answer.status, await answer.read()
            except (aiohttp.ClientError, TimeoutError):
                status, reply = 0, b""
            run.latencies.append(time.perf_counter() - started)
            if not injected(status, reply, uid):
                run.failures += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.elapsed = time.perf_counter() - started
    return run


def percentile(ordered: list[float], fraction: float) -> float:
    """Nearest-rank percentile of ascending ``ordered``, in milliseconds."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return round(ordered[rank - 1] * 1000, 2)


# ------------------------------------------------------------------------------------------ the run


async def measure(state_dir: Path, requests: int, concurrency: int, seconds: float, credentials: bool) -> Json:
    deadline = time.monotonic() + seconds
    ca = xdsauth.authority(state_dir)  # created here once, before any worker thread loads it
    server_tls = server_ssl_context(ca, ["127.0.0.1"], state_dir / "webhook-tls")
    client_tls = ssl.create_default_context(cadata=ca.trust_bundle_pem().decode())
    context = BenchContext(state_dir, credentials)
    runner, port = await start(create_app(context), "127.0.0.1", 0, server_tls)
    try:
        url = f"https://127.0.0.1:{port}{MUTATE_POD_PATH}"
        connector = aiohttp.TCPConnector(limit=concurrency, ssl=client_tls)
        async with aiohttp.ClientSession(connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)) as session:
            warm = await send(session, url, bodies(0, WARMUP), concurrency, deadline)
            run = await send(session, url, bodies(WARMUP, requests), concurrency, deadline)
    finally:
        await runner.cleanup()
    written = sum(1 for _ in (state_dir / "proxies").glob("*/key.pem")) if credentials else 0
    expected = len(warm.latencies) - warm.failures + len(run.latencies) - run.failures if credentials else 0
    if written != expected or context.issued != expected:
        print(f"credentials: {written} key files and {context.issued} issued for {expected} injections",
              file=sys.stderr)
    ordered = sorted(run.latencies)
    done = len(ordered)
    succeeded = done - run.failures
    return {
        "benchmark": "injection", "requests": done, "concurrency": concurrency, "failures": run.failures,
        "injections_per_s": round(succeeded / run.elapsed, 1) if run.elapsed > 0 else 0.0,
        "latency_ms": {"p50": percentile(ordered, 0.50), "p90": percentile(ordered, 0.90),
                       "p99": percentile(ordered, 0.99), "max": percentile(ordered, 1.0)} if ordered else None,
        "includes": INCLUDES[credentials], "credentials": credentials, "warmup": len(warm.latencies),
        "warmup_failures": warm.failures, "elapsed_s": round(run.elapsed, 3),
        "stopped_early": warm.stopped_early or run.stopped_early, "credentials_written": written,
        "python": sys.version.split()[0], "cpu_count": os.cpu_count(), "aiohttp": aiohttp.__version__,
        "cryptography": cryptography.__version__,
    }


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--requests", type=positive, default=2000, help="measured requests (default 2000)")
    parser.add_argument("--concurrency", type=positive, default=8,
                        help="requests in flight, one keep-alive connection each (default 8)")
    parser.add_argument("--seconds", type=positive_seconds, default=120.0,
                        help="no request starts after this many seconds from the first (default 120)")
    parser.add_argument("--no-credentials", dest="credentials", action="store_false",
                        help="issue_credentials returns a constant: measures everything but issuance")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshplane-bench-") as scratch:
        result = asyncio.run(measure(Path(scratch), args.requests, args.concurrency, args.seconds, args.credentials))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
