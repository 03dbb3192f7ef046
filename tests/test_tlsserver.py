"""ExternalHttps and https_get: verified GETs, verification failures, clean stop."""

from __future__ import annotations

import http.client
import socket
import ssl
import stat
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.tlsserver import ExternalHttps, https_get

HOSTS = ["api.external.test", "*.cdn.external.test"]


def worker_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("ExternalHttps")]


def test_https_get_verifies_and_is_served() -> None:
    with ExternalHttps(HOSTS, "127.0.0.1", body="payments") as server:
        assert https_get(server.address, "api.external.test", server.ca_pem, "/charge?x=1") == (200, "payments\n")
        assert https_get(server.address, "img.cdn.external.test", server.ca_pem) == (200, "payments\n")
        assert server.requests == 2


def test_reply_headers_and_keep_alive() -> None:
    with ExternalHttps(HOSTS, "127.0.0.1") as server:
        context = ssl.create_default_context(cadata=server.ca_pem.decode())
        raw = socket.create_connection(server.address, timeout=5)
        connection = http.client.HTTPConnection("api.external.test", server.address[1], timeout=5)
        connection.sock = context.wrap_socket(raw, server_hostname="api.external.test")  # dialled by hand
        try:
            for _ in range(2):  # two requests on one connection
                connection.request("GET", "/")
                reply = connection.getresponse()
                assert (reply.status, reply.read()) == (200, b"external\n")
                assert reply.getheader("x-served-by") == "external"
        finally:
            connection.close()
        assert server.requests == 2


def test_certificate_names_and_validity() -> None:
    server = ExternalHttps(HOSTS, "127.0.0.1")  # the CA exists before start: a proxy can be configured first
    ca = x509.load_pem_x509_certificate(server.ca_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert lifetime.total_seconds() == pytest.approx(86400 + 60, abs=2)
    with server, socket.create_connection(server.address, timeout=5) as raw:
        context = ssl.create_default_context(cadata=server.ca_pem.decode())
        with context.wrap_socket(raw, server_hostname="api.external.test") as tls:
            leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == HOSTS
    assert leaf.issuer == ca.subject


def test_wrong_server_name_fails_verification() -> None:
    with ExternalHttps(HOSTS, "127.0.0.1") as server:
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
            https_get(server.address, "other.external.test", server.ca_pem)
        assert server.requests == 0
        assert https_get(server.address, "api.external.test", server.ca_pem)[0] == 200  # still serving


def test_other_ca_fails_verification() -> None:
    other = ExternalHttps(HOSTS, "127.0.0.1")
    with ExternalHttps(HOSTS, "127.0.0.1") as server, pytest.raises(ssl.SSLCertVerificationError):
        https_get(server.address, "api.external.test", other.ca_pem)


def test_key_file_private_and_removed_on_stop() -> None:
    server = ExternalHttps(HOSTS, "127.0.0.1").start()
    try:
        assert server._files is not None
        directory = Path(server._files.name)
        assert stat.S_IMODE((directory / "server-key.pem").stat().st_mode) == 0o600
    finally:
        server.stop()
    assert not directory.exists()


def test_stop_releases_port_and_ends_threads_despite_idle_connection() -> None:
    server = ExternalHttps(HOSTS, "127.0.0.1").start()
    address = server.address
    assert https_get(address, "api.external.test", server.ca_pem)[0] == 200
    with socket.create_connection(address, timeout=5):  # idle: its worker waits in the TLS handshake
        deadline = time.monotonic() + 2
        while len(worker_threads()) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 1.5
    assert worker_threads() == []
    server.stop()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        https_get(address, "api.external.test", server.ca_pem, timeout=2)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as rebind:
        rebind.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a restarted server binds
        rebind.bind(address)
        rebind.listen()
    assert server.requests == 1
    with server:  # restartable: a new port (0 was asked), same CA
        assert https_get(server.address, "api.external.test", server.ca_pem)[0] == 200
    assert server.requests == 2


def test_no_hostnames_is_an_error() -> None:
    with pytest.raises(ValueError):
        ExternalHttps([], "127.0.0.1")
