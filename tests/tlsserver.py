"""An HTTPS server standing in for an external service in tests, and a client that verifies it.

:class:`ExternalHttps` serves every GET with ``200``, ``body`` plus a newline, and ``x-served-by: body``,
under a certificate for ``hostnames`` signed by a throwaway CA (:attr:`ExternalHttps.ca_pem`, created
with the object, so a test can configure a proxy before starting it). :func:`https_get` connects to any
address (the server or a proxy in front of it) and verifies the certificate for the name it asks for.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import socketserver
import ssl
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_CONNECTION_TIMEOUT = 10.0  # an idle or stalled connection is dropped after this long
_JOIN_TIMEOUT = 2.0


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=not signing, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=signing, crl_sign=signing,
                         encipher_only=False, decipher_only=False)


def make_certificates(hostnames: Sequence[str]) -> tuple[bytes, bytes, bytes]:
    """(CA cert, server cert, server key) PEM: an EC P-256 CA and a server certificate whose DNS SANs are
    ``hostnames``; valid from a minute ago for a day. Raises ValueError if ``hostnames`` is empty."""
    if not hostnames:
        raise ValueError("at least one hostname is needed")
    now = datetime.now(UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder().subject_name(_name("meshplane test external CA"))
        .issuer_name(_name("meshplane test external CA")).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(signing=True), critical=True)
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder().subject_name(_name(hostnames[0])).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name) for name in hostnames]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(signing=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return ca.public_bytes(serialization.Encoding.PEM), server.public_bytes(serialization.Encoding.PEM), key_pem


class _Handler(BaseHTTPRequestHandler):
    """GET: 200, ``body`` + newline, ``x-served-by: body``; HTTP/1.1 keep-alive; no request log."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        payload = (self.server.body + "\n").encode()
        self.server.served()  # counted before the reply leaves: a client holding it sees the count
        self.send_response(200)
        self.send_header("content-type", "text/plain; charset=utf-8")
        self.send_header("content-length", str(len(payload)))
        self.send_header("x-served-by", self.server.body)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    """One daemon thread per connection; TLS is handshaken in that thread (a stalled client blocks only
    itself). Open connections are tracked so :meth:`close_all` can end them and join their threads."""

    def __init__(
        self, address: tuple[str, int], context: ssl.SSLContext, body: str, served: Callable[[], None]
    ) -> None:
        self.context = context
        self.body = body
        self.served = served
        self._lock = threading.Lock()
        self._open: dict[ssl.SSLSocket, threading.Thread] = {}
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        """Bind without HTTPServer's reverse DNS lookup of the address (``socket.getfqdn``)."""
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(_CONNECTION_TIMEOUT)
        tls = self.context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        worker = threading.Thread(target=self.process_request_thread, args=(tls, client_address),
                                  name="ExternalHttps-connection", daemon=True)
        with self._lock:
            self._open[tls] = worker
        worker.start()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.do_handshake()
        super().finish_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._open.pop(request, None)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet for connection and TLS failures (a client that rejects the certificate); else report."""
        if not isinstance(sys.exc_info()[1], OSError):  # ssl.SSLError is an OSError
            super().handle_error(request, client_address)

    def close_all(self, timeout: float) -> None:
        """End every open connection and join its thread (each at most ``timeout`` seconds)."""
        with self._lock:  # held: shutdown_request unregisters a socket before closing it
            workers = list(self._open.values())
            for tls in self._open:
                with contextlib.suppress(OSError):  # TCP only: SSLSocket.shutdown would drop TLS state under the reader
                    socket.socket.shutdown(tls, socket.SHUT_RDWR)
        for worker in workers:
            worker.join(timeout)


class ExternalHttps:
    """An HTTPS server on ``host``:``port`` (0: kernel picks) for ``hostnames``; a context manager.

    :attr:`ca_pem` exists from construction; :attr:`address` once started. :meth:`stop` ends open
    connections, shuts the server down, joins its threads (bounded) and removes the key files.
    """

    def __init__(self, hostnames: Sequence[str], host: str, port: int = 0, body: str = "external") -> None:
        self.ca_pem, self._cert_pem, self._key_pem = make_certificates(hostnames)
        self._bind = (host, port)
        self._body = body
        self._server: _Server | None = None
        self._lock = threading.Lock()
        self._requests = 0
        self._thread: threading.Thread | None = None
        self._files: tempfile.TemporaryDirectory[str] | None = None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server listens on; only once started."""
        if self._server is None:
            raise RuntimeError("ExternalHttps not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def requests(self) -> int:
        """How many requests were answered so far (over every run of this object)."""
        with self._lock:
            return self._requests

    def _served(self) -> None:
        with self._lock:
            self._requests += 1

    def start(self) -> ExternalHttps:
        """Write key and certificate to a private temporary directory, bind, and serve; returns self."""
        if self._server is not None:
            raise RuntimeError("ExternalHttps already started")
        self._files = tempfile.TemporaryDirectory(prefix="external-https-")
        try:
            self._server = _Server(self._bind, self._context(Path(self._files.name)), self._body, self._served)
        except BaseException:
            self._files.cleanup()
            self._files = None
            raise
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="ExternalHttps", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, end open connections, close the port, join threads (bounded); idempotent."""
        if self._server is not None:
            if self._thread is not None:
                self._server.shutdown()  # returns once serve_forever has: no connection is accepted after
                self._thread.join(_JOIN_TIMEOUT)
                self._thread = None
            self._server.close_all(_JOIN_TIMEOUT)
            self._server.server_close()
            self._server = None
        if self._files is not None:
            self._files.cleanup()
            self._files = None

    def __enter__(self) -> ExternalHttps:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _context(self, directory: Path) -> ssl.SSLContext:
        key_path, cert_path = directory / "server-key.pem", directory / "server-cert.pem"
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as key_file:
            key_file.write(self._key_pem)
        cert_path.write_bytes(self._cert_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["http/1.1"])
        context.load_cert_chain(cert_path, key_path)
        return context


def https_get(
    connect: tuple[str, int], server_name: str, ca_pem: bytes, path: str = "/", timeout: float = 5.0
) -> tuple[int, str]:
    """GET ``https://server_name/path`` over a TCP connection to ``connect`` (the server or a proxy): TLS
    with SNI ``server_name``, certificate verified against ``ca_pem`` and for ``server_name``; returns
    (status, body). Failures raise as they come (ssl.SSLError, ConnectionError, OSError, TimeoutError,
    http.client.HTTPException for a malformed reply)."""
    context = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    with (
        socket.create_connection(connect, timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=server_name) as tls,
    ):
        request = f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        tls.sendall(request.encode("ascii"))
        response = http.client.HTTPResponse(tls, method="GET")
        try:
            response.begin()
            return response.status, response.read().decode("utf-8", errors="replace")
        finally:
            response.close()
