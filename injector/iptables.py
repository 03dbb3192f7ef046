"""Transparent traffic capture for a meshed pod: the ``meshplane iptables`` init container.

Two layers. The pure layer (:class:`Capture`, :func:`rules`, :func:`check`, :func:`parse_args`) turns
settings into ``iptables-restore`` input for the IPv4 ``nat`` table and judges an ``iptables-save``
listing; it runs nothing, so tests pin its text. The edge (:func:`apply`, :func:`add_parser`) checks
the prerequisites, runs ``iptables-save``/``iptables-restore`` from ``PATH`` (nf_tables or legacy,
whichever the image provides: both print the same rules), and verifies the result.

What the rules do (ports from architecture.md §5):

* inbound: TCP arriving at the pod (``PREROUTING``) goes to the sidecar's inbound port 15003, except
  the excluded ports (always Envoy admin 15000, stats 15006 and health 15010). The outbound port 15001 is
  *not* excluded, so other pods cannot use the sidecar as an open outbound proxy;
* outbound: TCP the pod opens (``OUTPUT``) goes to 15001 when its destination is in an included CIDR,
  except Envoy's own connections (its uid), loopback and the pod's own addresses (``-o lo``), excluded
  ports and excluded CIDRs.

Idempotence (OSM #4307 "initContainer should be idempotent"; a restarted init container must not stack
rules): the input is applied with ``--noflush``, so nothing but our chains changes; declaring a chain
(``:MESHPLANE_... - [0:0]``) creates it or, if it exists, empties it; and the two hook jumps from
``PREROUTING``/``OUTPUT`` are written only when the current listing lacks them (surplus copies are
deleted). The listing is read first with ``iptables-save``, so the whole change is one atomic restore.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TextIO

INBOUND = "MESHPLANE_INBOUND"
REDIRECT_IN = "MESHPLANE_REDIRECT_IN"
OUTPUT = "MESHPLANE_OUTPUT"
REDIRECT_OUT = "MESHPLANE_REDIRECT_OUT"
CHAINS = (INBOUND, OUTPUT, REDIRECT_IN, REDIRECT_OUT)  # sorted, as iptables-save lists them
HOOKS = (f"-A PREROUTING -p tcp -j {INBOUND}", f"-A OUTPUT -p tcp -j {OUTPUT}")

ALWAYS_EXCLUDED_INBOUND = (15000, 15006, 15010)  # Envoy admin, stats, health: never redirected inbound
CAP_NET_ADMIN = 12  # bit in CapEff (linux/capability.h)
EXIT_REFUSED = 2
EXIT_FAILED = 1


class CaptureError(ValueError):
    """A setting or argument is invalid; the message names the command-line flag to fix."""


@dataclass(frozen=True)
class Capture:
    """What to capture. Construction validates and normalises, so every instance renders valid rules.

    Ports are sorted and de-duplicated, and ``exclude_inbound_ports`` always holds
    :data:`ALWAYS_EXCLUDED_INBOUND`; CIDRs are IPv4 networks in canonical form (``10.0.0.1`` becomes
    ``10.0.0.1/32``, the form ``iptables-save`` prints), de-duplicated in the order given.
    """

    proxy_uid: int = 1337
    inbound_port: int = 15003
    outbound_port: int = 15001
    exclude_inbound_ports: tuple[int, ...] = ALWAYS_EXCLUDED_INBOUND
    exclude_outbound_ports: tuple[int, ...] = ()
    exclude_outbound_cidrs: tuple[str, ...] = ()
    include_outbound_cidrs: tuple[str, ...] = ("0.0.0.0/0",)

    def __post_init__(self) -> None:
        _check_uid(self.proxy_uid)
        for name in ("inbound_port", "outbound_port"):
            _check_port(getattr(self, name), _flag(name))
        if self.inbound_port == self.outbound_port:
            raise CaptureError(f"--outbound-port: {self.outbound_port} is also the inbound port; they must differ")
        inbound = (*self.exclude_inbound_ports, *ALWAYS_EXCLUDED_INBOUND)
        self._set("exclude_inbound_ports", _ports(inbound, "--exclude-inbound-ports"))
        self._set("exclude_outbound_ports", _ports(self.exclude_outbound_ports, "--exclude-outbound-ports"))
        for name in ("exclude_outbound_cidrs", "include_outbound_cidrs"):
            self._set(name, tuple(dict.fromkeys(_cidr(value, _flag(name)) for value in getattr(self, name))))

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen dataclass during construction


def _flag(field_name: str) -> str:
    """The command-line flag of a :class:`Capture` field: errors name what the user typed."""
    return "--" + field_name.replace("_", "-")


def _check_uid(uid: object) -> None:
    if type(uid) is not int or not 0 <= uid < 2**32 - 1:
        raise CaptureError(f"--proxy-uid: {uid!r} is not a user id (0-4294967294)")
    if uid == 0:
        raise CaptureError("--proxy-uid: 0 is refused: every process running as root would bypass the capture")


def _check_port(port: object, flag: str) -> int:
    if type(port) is not int or not 1 <= port <= 65535:
        raise CaptureError(f"{flag}: {port!r} is not a port (1-65535)")
    return port


def _ports(ports: Iterable[object], flag: str) -> tuple[int, ...]:
    return tuple(sorted({_check_port(port, flag) for port in ports}))


def _cidr(value: object, flag: str) -> str:
    """Canonical text of an IPv4 network; host bits set are an error rather than silently cleared."""
    try:
        network = ipaddress.ip_network(str(value).strip(), strict=True)
    except ValueError as exc:
        hint = ""
        if "host bits set" in str(exc):
            hint = f"; did you mean {ipaddress.ip_network(str(value).strip(), strict=False)}?"
        raise CaptureError(f"{flag}: {value!r} is not an IPv4 CIDR such as 10.0.0.0/8{hint}") from None
    if network.version != 4:
        raise CaptureError(f"{flag}: {value!r} is IPv6; only IPv4 (the iptables nat table) is captured")
    return str(network)


# ---------------------------------------------------------------------------------------------- rules


def rules(capture: Capture, saved: str = "") -> str:
    """The ``iptables-restore --noflush`` input that installs ``capture``; deterministic, byte for byte.

    ``saved`` is the current ``iptables-save -t nat`` listing: hook jumps it already holds are left out
    (and surplus copies deleted) so applying twice leaves one jump each. With the default (an empty
    table) this is the complete rule set, as ``--dry-run`` prints it, in the order ``iptables-save``
    lists it.
    """
    return "\n".join([
        "# meshplane traffic capture: apply with iptables-restore --noflush",
        "*nat",
        *(f":{chain} - [0:0]" for chain in CHAINS),
        *_hook_lines(saved),
        *(line for chain in CHAINS for line in _chain_rules(capture)[chain]),
        "COMMIT",
        "",
    ])


def _hook_lines(saved: str) -> list[str]:
    """Append each hook jump that ``saved`` lacks; delete the copies beyond the first."""
    lines: list[str] = []
    for hook in HOOKS:
        count = saved.splitlines().count(hook)
        lines += [hook] if count == 0 else ["-D" + hook[2:]] * (count - 1)
    return lines


def _chain_rules(capture: Capture) -> dict[str, list[str]]:
    """Our chains' rules, written exactly as ``iptables-save`` prints them so :func:`check` can compare."""
    return {
        INBOUND: [*(f"-A {INBOUND} -p tcp -m tcp --dport {port} -j RETURN" for port in capture.exclude_inbound_ports),
                  f"-A {INBOUND} -j {REDIRECT_IN}"],
        REDIRECT_IN: [f"-A {REDIRECT_IN} -p tcp -j REDIRECT --to-ports {capture.inbound_port}"],
        OUTPUT: _output_rules(capture),
        REDIRECT_OUT: [f"-A {REDIRECT_OUT} -p tcp -j REDIRECT --to-ports {capture.outbound_port}"],
    }


def _output_rules(capture: Capture) -> list[str]:
    """First match wins; whatever matches nothing returns uncaptured (the end of a chain is a RETURN).

    Envoy's own connections (to upstreams, and to the app) must pass, or they would loop back into
    Envoy. Local destinations pass too: 127.0.0.0/8 (Envoy admin, the app talking to itself) and,
    through ``-o lo``, the pod's own IP. Locally generated packets never traverse ``PREROUTING``, so
    the inbound capture cannot see them; sent to the outbound port they would meet a destination no
    route knows, so like Istio the app reaches itself directly.
    """
    return [
        f"-A {OUTPUT} -m owner --uid-owner {capture.proxy_uid} -j RETURN",
        f"-A {OUTPUT} -d 127.0.0.0/8 -j RETURN",
        f"-A {OUTPUT} -o lo -j RETURN",
        *(f"-A {OUTPUT} -p tcp -m tcp --dport {port} -j RETURN" for port in capture.exclude_outbound_ports),
        *(f"-A {OUTPUT}{_destination(cidr)} -j RETURN" for cidr in capture.exclude_outbound_cidrs),
        *(f"-A {OUTPUT}{_destination(cidr)} -j {REDIRECT_OUT}" for cidr in capture.include_outbound_cidrs),
    ]


def _destination(cidr: str) -> str:
    return "" if cidr == "0.0.0.0/0" else f" -d {cidr}"  # iptables-save leaves out the match-all address


def check(capture: Capture, saved: str) -> list[str]:
    """What an ``iptables-save -t nat`` listing lacks to hold ``capture`` exactly; empty when it does.

    Each of our chains must hold exactly the intended rules in order, and each hook jump must appear
    exactly once: a missing jump captures nothing, a doubled one is the non-idempotence OSM hit.
    """
    lines = saved.splitlines()
    problems = [f"chain {chain} is missing" for chain in CHAINS if f":{chain} - [0:0]" not in lines]
    for chain, want in _chain_rules(capture).items():
        have = [line for line in lines if line.startswith(f"-A {chain} ")]
        if have != want:
            problems.append(f"chain {chain} holds {have} instead of {want}")
    problems += [f"{hook!r} appears {lines.count(hook)} times, not once" for hook in HOOKS if lines.count(hook) != 1]
    return problems


# ----------------------------------------------------------------------------------------- arguments


class _Parser(argparse.ArgumentParser):
    """An argument parser that raises instead of exiting, so :func:`parse_args` is a plain function."""

    def error(self, message: str) -> NoReturn:
        raise CaptureError(message)


def _add_flags(parser: argparse.ArgumentParser) -> None:
    """The flags; values stay text here so :func:`capture_from` can name the flag in every error."""
    defaults = Capture()
    parser.add_argument("--proxy-uid", metavar="UID", help=f"the uid Envoy runs as (default {defaults.proxy_uid})")
    parser.add_argument("--inbound-port", metavar="PORT",
                        help=f"where inbound TCP is redirected (default {defaults.inbound_port})")
    parser.add_argument("--outbound-port", metavar="PORT",
                        help=f"where outbound TCP is redirected (default {defaults.outbound_port})")
    parser.add_argument("--exclude-inbound-ports", metavar="PORTS", help="comma-separated ports reached directly; "
                        "15000, 15006 and 15010 are always excluded")
    parser.add_argument("--exclude-outbound-ports", metavar="PORTS", help="comma-separated destination ports "
                        "never redirected")
    parser.add_argument("--exclude-outbound-cidrs", metavar="CIDRS", help="comma-separated IPv4 networks never "
                        "redirected")
    parser.add_argument("--include-outbound-cidrs", metavar="CIDRS", help="comma-separated IPv4 networks "
                        "redirected to the sidecar (default 0.0.0.0/0; empty for none)")
    parser.add_argument("--dry-run", action="store_true", help="print the iptables-restore input and change nothing")


def parse_args(argv: Sequence[str]) -> Capture:
    """A :class:`Capture` from command-line arguments; raises :class:`CaptureError` naming the bad flag."""
    parser = _Parser(prog="meshplane iptables", add_help=False)
    _add_flags(parser)
    return capture_from(parser.parse_args(argv))


def capture_from(args: argparse.Namespace) -> Capture:
    """A :class:`Capture` from parsed flags; flags not given keep the defaults."""
    given: dict[str, Any] = {}
    for field in dataclasses.fields(Capture):
        value = getattr(args, field.name, None)
        if value is None:
            continue
        flag = _flag(field.name)
        if field.name.endswith("_cidrs"):
            given[field.name] = _items(value)
        elif field.name.endswith("_ports"):
            given[field.name] = tuple(_integer(item, flag) for item in _items(value))
        else:
            given[field.name] = _integer(value, flag)
    return Capture(**given)


def _items(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _integer(text: str, flag: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise CaptureError(f"{flag}: {text!r} is not a number") from None


# ------------------------------------------------------------------------------------------ the edge


def apply(capture: Capture, *, dry_run: bool, out: TextIO, err: TextIO) -> int:
    """Install ``capture`` in the current network namespace; returns the exit code.

    ``dry_run`` prints :func:`rules` to ``out`` and touches nothing (it needs neither privileges nor
    iptables). Otherwise: exit 2, changing nothing, when a prerequisite is missing (each named on
    ``err``); exit 1 when iptables fails or the result does not :func:`check`; exit 0 with the
    resulting ``nat`` listing on ``out`` once verified.
    """
    if dry_run:
        out.write(rules(capture))
        return 0
    missing = missing_prerequisites()
    for problem in missing:
        print(f"meshplane iptables: {problem}", file=err)
    if missing:
        return EXIT_REFUSED
    try:
        saved = _iptables(["iptables-save", "-t", "nat"])
        _iptables(["iptables-restore", "--noflush"], rules(capture, saved))
        after = _iptables(["iptables-save", "-t", "nat"])
    except _IptablesFailed as exc:
        print(f"meshplane iptables: {exc}", file=err)
        return EXIT_FAILED
    return _report(capture, after, out, err)


def missing_prerequisites(status: Path = Path("/proc/self/status")) -> list[str]:
    """What stops this process from changing the ``nat`` table, phrased as what to do about it."""
    missing = []
    if not has_net_admin(status):
        missing.append("needs the NET_ADMIN capability (add it to the init container's securityContext)")
    missing += [f"{tool} not found (install the iptables package)" for tool in ("iptables-restore", "iptables-save")
                if shutil.which(tool) is None]
    return missing


def has_net_admin(status: Path = Path("/proc/self/status")) -> bool:
    """Whether CAP_NET_ADMIN is effective, read from ``CapEff`` (False when that cannot be read)."""
    try:
        text = status.read_text()
    except OSError:
        return False
    return bool(effective_capabilities(text) >> CAP_NET_ADMIN & 1)


def effective_capabilities(status_text: str) -> int:
    """The ``CapEff`` bit mask of a ``/proc/<pid>/status`` text (0 when the line is absent)."""
    for line in status_text.splitlines():
        key, _, value = line.partition(":")
        if key == "CapEff":
            return int(value.strip(), 16)
    return 0


class _IptablesFailed(Exception):
    """An iptables command exited non-zero or could not run; the message carries its stderr."""


def _iptables(argv: list[str], stdin: str | None = None) -> str:
    """Run one iptables tool, found on PATH (so the image's choice of nf_tables or legacy holds)."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise _IptablesFailed(f"{argv[0]} could not run: {exc}") from None
    if done.returncode != 0:
        hint = " (is the kernel's nat table available on this node?)" if "nat" in done.stderr else ""
        raise _IptablesFailed(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}{hint}")
    return done.stdout


def _report(capture: Capture, after: str, out: TextIO, err: TextIO) -> int:
    problems = check(capture, after)
    for problem in problems:
        print(f"meshplane iptables: after applying, {problem}", file=err)
    if problems:
        return EXIT_FAILED
    out.write(after)
    backend = "nf_tables" if "(nf_tables)" in after else "legacy"
    print(f"meshplane iptables: capture installed ({backend}): inbound TCP to {capture.inbound_port}, "
          f"outbound TCP to {capture.outbound_port}, Envoy uid {capture.proxy_uid} exempt", file=err)
    return 0


def add_parser(commands: Any) -> None:
    """Register ``iptables`` on ``commands`` (what ``ArgumentParser.add_subparsers`` returned).

    The parsed namespace carries ``run(args, out, err) -> int``, as the other ``meshplane`` commands.
    """
    parser = commands.add_parser(
        "iptables", help="install the pod's traffic capture (the sidecar's init container)",
        description="Redirect the pod's TCP to the sidecar in the IPv4 nat table: inbound to --inbound-port, "
        "outbound to --outbound-port, except Envoy's own traffic (--proxy-uid), loopback and the exclusions. "
        "Safe to run again: our chains are replaced and the hook jumps are never doubled. Needs NET_ADMIN.")
    _add_flags(parser)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        capture = capture_from(args)
    except CaptureError as exc:
        print(f"meshplane iptables: {exc}", file=err)
        return EXIT_REFUSED
    return apply(capture, dry_run=args.dry_run, out=out, err=err)
