"""DnsStub over the wire: hand-built queries on a UDP socket, replies checked byte by byte."""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from tests.dnsstub import DnsStub

A, AAAA = 1, 28
NOERROR, NXDOMAIN = 0, 3
OPT = struct.pack("!BHHIH", 0, 41, 4096, 0, 0)  # EDNS0 OPT: root name, type 41, UDP size 4096, no options


@pytest.fixture(autouse=True)
def no_system_resolver(monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything here goes through the wire: the system resolver must not be involved."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("socket.getaddrinfo used")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def stub() -> Iterator[DnsStub]:
    records = {"api.test": "127.0.0.10", "DB.Test.": "127.0.0.11", "*.svc.test": "127.0.0.20",
               "special.svc.test": "127.0.0.21", "*.deep.svc.test": "127.0.0.22"}
    with DnsStub(records) as server:
        yield server


def encode_name(name: str) -> bytes:
    return b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"


def query(name: str, qtype: int = A, ident: int = 0x1234, rd: bool = True, edns: bool = True) -> bytes:
    """A standard query for ``name``, optionally with an EDNS OPT additional record as c-ares sends."""
    header = struct.pack("!HHHHHH", ident, 0x0100 if rd else 0, 1, 0, 0, 1 if edns else 0)
    return header + encode_name(name) + struct.pack("!HH", qtype, 1) + (OPT if edns else b"")


def exchange(server: DnsStub, packet: bytes, client: socket.socket | None = None) -> bytes:
    """Send ``packet`` and return the first datagram that comes back (2 s at most)."""
    if client is None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fresh:
            return exchange(server, packet, fresh)
    client.settimeout(2.0)
    client.sendto(packet, server.address)
    reply, peer = client.recvfrom(4096)
    assert peer == server.address
    return reply


def header(reply: bytes) -> tuple[int, int, int, int, int, int]:
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", reply)
    return ident, flags, qd, an, ns, ar


def answered_ip(reply: bytes) -> str | None:
    """The address of the single A answer, or None when there is no answer (checks the record's layout)."""
    qd_end = 12 + reply[12:].index(b"\x00") + 1 + 4
    if header(reply)[3] == 0:
        assert len(reply) == qd_end
        return None
    pointer, rtype, rclass, ttl, length = struct.unpack_from("!HHHIH", reply, qd_end)
    assert (pointer, rtype, rclass, ttl, length) == (0xC00C, A, 1, 5, 4)
    assert len(reply) == qd_end + 16
    return socket.inet_ntoa(reply[qd_end + 12 :])


def test_a_record_exact_bytes(stub: DnsStub) -> None:
    reply = exchange(stub, query("api.test", ident=0xBEEF))
    question = encode_name("api.test") + struct.pack("!HH", A, 1)
    expected = (struct.pack("!HHHHHH", 0xBEEF, 0x8000 | 0x0400 | 0x0100 | 0x0080, 1, 1, 0, 0) + question
                + struct.pack("!HHHIH", 0xC00C, A, 1, 5, 4) + bytes([127, 0, 0, 10]))
    assert reply == expected
    assert stub.queries == [("api.test", A)]


def test_flags_rd_copied_and_edns_ignored(stub: DnsStub) -> None:
    reply = exchange(stub, query("api.test", rd=False, edns=False))
    _, flags, qd, an, ns, ar = header(reply)
    assert flags == 0x8000 | 0x0400 | 0x0080
    assert (qd, an, ns, ar) == (1, 1, 0, 0)
    assert answered_ip(reply) == "127.0.0.10"


def test_unknown_name_is_nxdomain(stub: DnsStub) -> None:
    reply = exchange(stub, query("nowhere.test"))
    _, flags, _, an, _, _ = header(reply)
    assert flags & 0x000F == NXDOMAIN
    assert flags & 0x8400 == 0x8400  # QR, AA
    assert an == 0
    assert answered_ip(reply) is None


def test_known_name_other_type_is_empty_noerror(stub: DnsStub) -> None:
    reply = exchange(stub, query("api.test", qtype=AAAA))
    assert header(reply)[1] & 0x000F == NOERROR
    assert answered_ip(reply) is None
    assert reply[12:] == encode_name("api.test") + struct.pack("!HH", AAAA, 1)
    assert stub.queries == [("api.test", AAAA)]


@pytest.mark.parametrize(
    ("name", "ip"),
    [("web.svc.test", "127.0.0.20"), ("a.b.svc.test", "127.0.0.20"), ("special.svc.test", "127.0.0.21"),
     ("x.deep.svc.test", "127.0.0.22"), ("deep.svc.test", "127.0.0.20"), ("svc.test", None)],
)
def test_wildcards_exact_wins_most_specific_next(stub: DnsStub, name: str, ip: str | None) -> None:
    reply = exchange(stub, query(name))
    assert answered_ip(reply) == ip
    assert header(reply)[1] & 0x000F == (NOERROR if ip else NXDOMAIN)


def test_wildcard_name_other_type_is_empty_noerror(stub: DnsStub) -> None:
    reply = exchange(stub, query("web.svc.test", qtype=AAAA))
    assert header(reply)[1] & 0x000F == NOERROR
    assert answered_ip(reply) is None


def test_case_insensitive_question_echoed_as_sent(stub: DnsStub) -> None:
    reply = exchange(stub, query("ApI.TeSt"))
    assert answered_ip(reply) == "127.0.0.10"
    assert reply[12 : 12 + 10] == encode_name("ApI.TeSt")
    assert answered_ip(exchange(stub, query("db.test"))) == "127.0.0.11"  # record given as "DB.Test."
    assert stub.queries == [("api.test", A), ("db.test", A)]


def test_set_while_running(stub: DnsStub) -> None:
    assert answered_ip(exchange(stub, query("new.test"))) is None
    stub.set("NEW.test", "127.0.0.30")
    stub.set("api.test", "127.0.0.31")
    assert answered_ip(exchange(stub, query("new.test"))) == "127.0.0.30"
    assert answered_ip(exchange(stub, query("api.test"))) == "127.0.0.31"
    with pytest.raises(ValueError):
        stub.set("bad.test", "::1")


def test_garbage_is_ignored_and_server_keeps_answering(stub: DnsStub) -> None:
    good = query("api.test", ident=0x0042)
    garbage = [
        b"",
        b"\x00" * 5,
        good[:12],  # header only, qdcount 1
        good[:-len(OPT) - 2],  # question cut inside qtype/qclass
        good[:16],  # label runs past the end
        struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack("!HH", A, 1),  # pointer
        struct.pack("!HHHHHH", 1, 0x8180, 1, 0, 0, 0) + good[12:],  # a response, not a query
        struct.pack("!HHHHHH", 1, 0x2900, 1, 0, 0, 0) + good[12:],  # opcode 5 (UPDATE)
        struct.pack("!HHHHHH", 1, 0x0100, 0, 0, 0, 0),  # no question
        struct.pack("!HHHHHH", 1, 0x0100, 1, 0, 0, 0) + b"\x3f" * 300,  # name too long
        bytes(range(256)) * 4,
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for packet in garbage:
            client.sendto(packet, stub.address)
        reply = exchange(stub, good, client)  # the first datagram back answers the good query
    assert header(reply)[0] == 0x0042
    assert answered_ip(reply) == "127.0.0.10"
    assert stub.queries == [("api.test", A)]


def test_stop_is_prompt_and_ends_the_thread() -> None:
    stub = DnsStub({"api.test": "127.0.0.10"}).start()
    host, port = stub.address
    assert host == "127.0.0.1"
    assert port > 0
    started = time.monotonic()
    stub.stop()
    assert time.monotonic() - started < 0.5
    assert not [thread for thread in threading.enumerate() if thread.name == "DnsStub"]
    stub.stop()  # idempotent
    with pytest.raises(RuntimeError):
        _ = stub.address
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rebind:
        rebind.bind((host, port))  # the port is free again
