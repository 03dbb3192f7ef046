"""Two small network helpers every server of the control plane shares."""

from __future__ import annotations

import ipaddress
import socket


def bind(host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket on host:port (IPv4 or IPv6; 0 = any free port), so the caller
    knows the port it got before serving on it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address (certificates name it as an IP SAN, not a DNS name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
