"""A minimal authoritative DNS server over UDP for tests: made-up hostnames resolve to loopback addresses.

A real Envoy (c-ares) pointed at :attr:`DnsStub.address` resolves the names in ``records``. Only what a
stub needs: the first question of a standard query is answered; additional records (the EDNS OPT record
c-ares may send) are ignored and none are sent back. Rules:

* qtype A and a known name: NOERROR, one A record (TTL 5, owner name a pointer to the question).
* a known name and any other qtype (AAAA...): NOERROR, no answer.
* an unknown name: NXDOMAIN.

Names compare case-insensitively, without a trailing dot; the question is echoed byte for byte (so a
resolver's 0x20 case randomisation still matches). A record keyed ``*.example.test`` matches any deeper
name (``a.example.test``, ``a.b.example.test``, not ``example.test``); an exact record wins, then the
most specific wildcard. Malformed packets and responses are dropped without a reply.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

TYPE_A = 1
CLASS_IN = 1
TTL = 5
RCODE_NOERROR = 0
RCODE_NXDOMAIN = 3

_HEADER = struct.Struct("!HHHHHH")  # id, flags, qdcount, ancount, nscount, arcount
_FLAG_QR = 0x8000
_FLAG_AA = 0x0400
_FLAG_RD = 0x0100
_FLAG_RA = 0x0080
_OPCODE_MASK = 0x7800
_POINTER_TO_QUESTION = 0xC00C
_MAX_NAME = 255


@dataclass(frozen=True)
class Question:
    """The first question of a query: ``name`` lowercased without trailing dot, ``raw`` its wire bytes."""

    ident: int
    flags: int
    name: str
    qtype: int
    raw: bytes


def normalise(name: str) -> str:
    """The lookup key of a record name: lowercase, no trailing dot."""
    return name.lower().rstrip(".")


def parse_query(packet: bytes) -> Question | None:
    """The first question of a standard query (QR clear, opcode 0, qdcount >= 1); None if malformed.

    Names in queries are uncompressed: a compression pointer or a reserved label type is malformed.
    """
    if len(packet) < _HEADER.size:
        return None
    ident, flags, qdcount, _, _, _ = _HEADER.unpack_from(packet)
    if flags & (_FLAG_QR | _OPCODE_MASK) or qdcount < 1:
        return None
    labels: list[bytes] = []
    offset = _HEADER.size
    while True:
        if offset >= len(packet):
            return None
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        if length > 63 or offset + length > len(packet):  # 0x40.. reserved, 0xC0.. pointer
            return None
        labels.append(packet[offset : offset + length])
        offset += length
    if offset + 4 > len(packet) or offset - _HEADER.size > _MAX_NAME:
        return None
    (qtype,) = struct.unpack_from("!H", packet, offset)
    name = b".".join(labels).lower().decode("latin-1")
    return Question(ident, flags, name, qtype, packet[_HEADER.size : offset + 4])


def build_response(question: Question, ip: str | None, known: bool) -> bytes:
    """The reply to ``question``: an A record for ``ip`` (when given), else no answer; NXDOMAIN if not ``known``."""
    rcode = RCODE_NOERROR if known else RCODE_NXDOMAIN
    flags = _FLAG_QR | _FLAG_AA | (question.flags & _FLAG_RD) | _FLAG_RA | rcode
    answers = 0 if ip is None else 1
    reply = _HEADER.pack(question.ident, flags, 1, answers, 0, 0) + question.raw
    if ip is not None:
        reply += struct.pack("!HHHIH", _POINTER_TO_QUESTION, TYPE_A, CLASS_IN, TTL, 4) + socket.inet_aton(ip)
    return reply


class DnsStub:
    """An authoritative UDP DNS server for ``records`` (name -> IPv4) on ``host``:``port`` (0: kernel picks).

    Use as a context manager or :meth:`start` / :meth:`stop`. Serves from one daemon thread; ``stop``
    returns within about 0.2 s. :attr:`queries` lists every well-formed question seen, in order.
    """

    def __init__(self, records: Mapping[str, str], host: str = "127.0.0.1", port: int = 0) -> None:
        self._records: dict[str, str] = {}
        self._lock = threading.Lock()
        self._host = host
        self._port = port
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.queries: list[tuple[str, int]] = []
        for name, ip in records.items():
            self.set(name, ip)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server listens on; only once started."""
        if self._sock is None:
            raise RuntimeError("DnsStub not started")
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def set(self, name: str, ip: str) -> None:
        """Add or replace the A record of ``name`` (may be ``*.zone``); safe while running. Raises ValueError
        if ``ip`` is not an IPv4 address."""
        ipaddress.IPv4Address(ip)
        with self._lock:
            self._records[normalise(name)] = ip

    def lookup(self, name: str) -> str | None:
        """The address for ``name`` (normalised): an exact record, else the most specific wildcard, else None."""
        labels = name.split(".")
        with self._lock:
            if name in self._records:
                return self._records[name]
            for i in range(1, len(labels)):
                wildcard = "*." + ".".join(labels[i:])
                if wildcard in self._records:
                    return self._records[wildcard]
        return None

    def start(self) -> DnsStub:
        """Bind the UDP socket and start serving; returns self. Raises RuntimeError if already started."""
        if self._sock is not None:
            raise RuntimeError("DnsStub already started")
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self._host, self._port))
        except OSError:
            sock.close()
            raise
        sock.settimeout(0.1)
        self._sock = sock
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, args=(sock,), name="DnsStub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, join the thread (bounded) and close the socket; idempotent."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> DnsStub:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def answer(self, packet: bytes) -> bytes | None:
        """The reply to one datagram, recording its question; None (no reply) if it is malformed."""
        question = parse_query(packet)
        if question is None:
            return None
        self.queries.append((question.name, question.qtype))
        ip = self.lookup(question.name)
        return build_response(question, ip if question.qtype == TYPE_A else None, known=ip is not None)

    def _serve(self, sock: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                packet, peer = sock.recvfrom(4096)
            except OSError:  # the 0.1 s timeout, or an ICMP error reported on the socket: check stopping
                continue
            reply = self.answer(packet)
            if reply is not None:
                with contextlib.suppress(OSError):
                    sock.sendto(reply, peer)
