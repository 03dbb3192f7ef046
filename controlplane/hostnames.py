"""Syntax of the host names and address ranges that mesh objects match traffic against.

Virtual service hosts, gateway hostnames and external-service hostnames become Envoy domain and SNI
matches; external TCP addresses become CIDR ranges. A malformed value would not fail loudly there: it
would simply never match, so the validators check the syntax up front. Each function returns the reason
a value is not acceptable, in words that complete "'<value>' …", or ``None`` when it is fine.

Only the standard library is used.
"""

from __future__ import annotations

import ipaddress
import re

MAX_NAME_LENGTH = 253
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
WILDCARD_PREFIX = "*."


def hostname_problem(value: str, *, allow_any: bool = False) -> str | None:
    """Why ``value`` is not a DNS name to match on, or ``None``.

    Accepted: a DNS name (``reviews``, ``reviews.shop.svc.cluster.local``), the same with a leading
    ``*.`` wildcard label (``*.example.com``, ``*.com``) and, only when ``allow_any``, a lone ``*``
    (access policies use it for "any host"). Never a port: the port is matched separately, so
    ``example.com:8080`` would match nothing.
    """
    if value == "*":
        return None if allow_any else "is not allowed here: use a '*.' prefix such as '*.example.com'"
    if ":" in value:
        return "must be a DNS name without a port (ports are set on listeners, not on host names)"
    name = value.removeprefix(WILDCARD_PREFIX)
    if "*" in name:
        return "may use '*' only as a whole leading label, as in '*.example.com'"
    if not name:
        return "is empty: give a DNS name such as 'shop.example.com'"
    if len(name) > MAX_NAME_LENGTH:
        return f"is longer than the {MAX_NAME_LENGTH} characters a DNS name may have"
    bad = next((label for label in name.split(".") if not _LABEL.fullmatch(label)), None)
    if bad is not None:
        return (f"is not a valid DNS name: label {bad!r} must be 1 to 63 letters, digits or '-', "
                "starting and ending with a letter or digit")
    return None


def cidr_problem(value: str) -> str | None:
    """Why ``value`` is not an IPv4 or IPv6 range, or ``None``.

    A bare address means that single address (``/32`` or ``/128``); host bits set below the prefix
    length are tolerated (``10.1.2.3/8`` means ``10.0.0.0/8``), as routers and Envoy treat them.
    """
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return "is not an IP address or CIDR range such as '10.0.0.0/8' or '2001:db8::/32'"
    return None
