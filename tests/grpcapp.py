"""A small gRPC application for end-to-end tests, and a client for it; no generated stubs.

:class:`GrpcApp` serves one unary method, ``/meshplane.test.Echo/Say``, with grpcio's generic handlers
and identity (bytes) serializers: it answers JSON with its name, the request payload (as text) and the
request metadata, like the echo app does for HTTP. It listens on one address and port (loopback in
tests), plaintext (a sidecar terminates mutual TLS in front of it). :func:`say` calls it, or a proxy
in front of it, once: plaintext or over TLS.
"""

from __future__ import annotations

import json
import threading
from concurrent import futures
from types import TracebackType
from typing import Any

import grpc

SERVICE, METHOD = "meshplane.test.Echo", "Say"
FULL_METHOD = f"/{SERVICE}/{METHOD}"
_STOP_GRACE = 1.0  # seconds in-flight calls get when the app stops
_STOP_WAIT = 3.0


class GrpcApp:
    """The gRPC app named ``name`` on ``host``:``port``; a context manager (start on enter, stop on exit).

    :attr:`calls` counts answered calls. :meth:`stop` ends the server (in-flight calls get a short
    grace) and its thread pool, bounded in time; it is idempotent.
    """

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name = name
        self.target = f"{host}:{port}"
        self._lock = threading.Lock()
        self._calls = 0
        self._pool: futures.ThreadPoolExecutor | None = None
        self._server: grpc.Server | None = None

    @property
    def calls(self) -> int:
        with self._lock:
            return self._calls

    def _say(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self._calls += 1
        metadata = {str(k): v if isinstance(v, str) else repr(v) for k, v in context.invocation_metadata()}
        answer = {"name": self.name, "request": request.decode("utf-8", errors="replace"), "metadata": metadata}
        return json.dumps(answer).encode()

    def start(self) -> GrpcApp:
        if self._server is not None:
            raise RuntimeError("GrpcApp already started")
        handler = grpc.method_handlers_generic_handler(
            SERVICE, {METHOD: grpc.unary_unary_rpc_method_handler(self._say)})  # no (de)serializers: bytes
        self._pool = futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"grpcapp-{self.name}")
        # no SO_REUSEPORT: a port another process holds is an error here, not a silently shared port
        server = grpc.server(self._pool, handlers=[handler], options=[("grpc.so_reuseport", 0)])
        try:
            if server.add_insecure_port(self.target) == 0:
                raise OSError(f"gRPC app {self.name} could not bind {self.target}")
            server.start()
        except BaseException:
            server.stop(None)
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            raise
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(_STOP_GRACE).wait(_STOP_WAIT)
            self._server = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> GrpcApp:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def say(target: str, authority: str, payload: str, *, root_certificates: bytes | None = None,
        timeout: float = 5.0) -> dict[str, Any]:
    """Call ``Say`` once on ``target`` (host:port) as ``authority`` (the :authority / Host the proxy routes
    by); over TLS verifying the server for ``authority`` against ``root_certificates`` when given, else
    plaintext (h2c). Returns the app's JSON answer; a failed call raises :class:`grpc.RpcError`."""
    options = [("grpc.default_authority", authority), ("grpc.enable_retries", 0)]
    if root_certificates is None:
        channel = grpc.insecure_channel(target, options=options)
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        channel = grpc.secure_channel(target, credentials,
                                      options=[*options, ("grpc.ssl_target_name_override", authority)])
    with channel:
        call = channel.unary_unary(FULL_METHOD, request_serializer=None, response_deserializer=None)
        reply = call(payload.encode(), timeout=timeout)
    answer: dict[str, Any] = json.loads(reply)
    return answer
