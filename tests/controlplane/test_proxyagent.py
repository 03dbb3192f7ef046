"""``meshplane proxy``: the sidecar agent's bootstrap, health server and Envoy supervision.

The bootstrap is checked as data; the health server against real servers on 127.0.0.1; supervision
with a stand-in Envoy (a shell script) and, once, end to end: the real control plane and the real
Envoy, connected over mutual TLS until the agent is told to stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from meshplane.controlplane import admin, echo, ir, proxyagent, xdsauth
from meshplane.controlplane.proxyagent import AgentError, Probe, ProbeHeaderError, Running
from meshplane.xds import names
from meshplane.xds.bootstrap import XdsTls, render_bootstrap
from tests.e2e.harness import mesh
from tests.envoybin import envoy_path
from tests.envoyproc import free_port
from tests.tlsserver import ExternalHttps

NODE = "reviews-v1-7d4b9-x2x4z"
DEPLOYMENT = "shop/reviews-v1"
POD_IP = "10.244.1.17"
XDS_HOST = "meshplane.meshplane-system.svc"


def pod_env(**changes: str | None) -> dict[str, str]:
    """The sidecar's environment as the injector sets it; a change to None removes the variable."""
    env = {"DEPLOYMENT_ID": "ocid1.meshvirtualdeployment.oc1..aaaa", proxyagent.ENV_NODE_ID: NODE,
           proxyagent.ENV_DEPLOYMENT: DEPLOYMENT, proxyagent.ENV_POD_IP: POD_IP, "POD_NAME": "reviews-v1-7d4b9-x2x4z",
           "POD_NAMESPACE": "shop", "POD_UID": "5b1c7e0a", proxyagent.ENV_LOG_LEVEL: "info"}
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@pytest.fixture
def credentials(tmp_path: Path) -> Path:
    """The proxy's xDS credentials, as the injector would issue them."""
    tls = xdsauth.issue_proxy(tmp_path / "state", NODE, DEPLOYMENT, XDS_HOST)
    return Path(tls.private_key).parent


# ------------------------------------------------------------------------------------------ bootstrap


def test_the_bootstrap_says_transparent_capture_and_reaches_the_control_plane_over_mutual_tls(
        credentials: Path) -> None:
    spec = proxyagent.agent_spec(pod_env(), credentials, f"{XDS_HOST}:15012")
    assert (spec.node_id, spec.cluster, spec.xds_host, spec.xds_port) == (NODE, DEPLOYMENT, XDS_HOST, 15012)
    assert dict(spec.metadata) == {names.META_DEPLOYMENT: DEPLOYMENT, names.META_ADDRESS: POD_IP,
                                   names.META_CAPTURE: ir.Capture.TRANSPARENT.value}
    folder = credentials.absolute()
    assert spec.tls == XdsTls(str(folder / "cert.pem"), str(folder / "key.pem"), str(folder / "ca.pem"), XDS_HOST)
    assert (spec.admin_host, spec.admin_port, spec.source_address, spec.delta) == ("127.0.0.1", 15000, None, False)
    rendered = render_bootstrap(spec)
    assert "upstream_bind_config" not in rendered.get("cluster_manager", {})
    assert names.META_APP_PORTS not in rendered["node"]["metadata"]


def test_the_admin_port_can_be_chosen(credentials: Path) -> None:
    assert proxyagent.agent_spec(pod_env(), credentials, "10.96.0.12:15012", admin_port=15100).admin_port == 15100


@pytest.mark.parametrize(("changes", "named"), [
    ({proxyagent.ENV_NODE_ID: None}, "MESHPLANE_NODE_ID is not set"),
    ({proxyagent.ENV_NODE_ID: "ratings-v1-abc"}, "MESHPLANE_NODE_ID is ratings-v1-abc"),
    ({proxyagent.ENV_NODE_ID: "a/b"}, "MESHPLANE_NODE_ID 'a/b'"),
    ({proxyagent.ENV_DEPLOYMENT: None}, "MESHPLANE_DEPLOYMENT is not set"),
    ({proxyagent.ENV_DEPLOYMENT: "shop/ratings-v1"}, "MESHPLANE_DEPLOYMENT is shop/ratings-v1"),
    ({proxyagent.ENV_DEPLOYMENT: "reviews-v1"}, "MESHPLANE_DEPLOYMENT must be NAMESPACE/NAME"),
    ({proxyagent.ENV_POD_IP: None}, "POD_IP is not set"),
    ({proxyagent.ENV_POD_IP: ""}, "POD_IP is not set"),
    ({proxyagent.ENV_POD_IP: "10.244.1"}, "POD_IP must be an IP address"),
], ids=["no-node", "other-node", "bad-node", "no-deployment", "other-deployment", "bad-deployment", "no-pod-ip",
        "empty-pod-ip", "bad-pod-ip"])
def test_a_pod_that_cannot_work_is_refused_naming_the_variable(credentials: Path, changes: dict[str, str | None],
                                                                named: str) -> None:
    with pytest.raises(AgentError, match=named):
        proxyagent.agent_spec(pod_env(**changes), credentials, "10.96.0.12:15012")


@pytest.mark.parametrize("missing", proxyagent.CREDENTIAL_FILES)
def test_missing_credentials_are_refused_naming_the_file(credentials: Path, missing: str) -> None:
    (credentials / missing).unlink()
    with pytest.raises(AgentError, match=f"lacks {missing}"):
        proxyagent.agent_spec(pod_env(), credentials, "10.96.0.12:15012")


@pytest.mark.parametrize("address", ["10.96.0.12", "10.96.0.12:0", ":15012", "10.96.0.12:http"])
def test_a_malformed_xds_address_is_refused(credentials: Path, address: str) -> None:
    with pytest.raises(AgentError, match="--xds-address must be HOST:PORT"):
        proxyagent.agent_spec(pod_env(), credentials, address)


@pytest.mark.parametrize(("value", "level"), [
    ("debug", "debug"), ("info", "info"), ("warn", "warning"), ("error", "error"), ("off", "off"),
    ("WARN", "warning"), (None, "error"), ("", "error"),
])
def test_proxy_log_level_maps_to_envoys(value: str | None, level: str) -> None:
    assert proxyagent.envoy_log_level(value) == level


@pytest.mark.parametrize("value", ["trace", "warning", "critical", "verbose"])
def test_other_log_levels_are_refused(value: str) -> None:
    with pytest.raises(AgentError, match="PROXY_LOG_LEVEL must be one of debug, info, warn, error, off"):
        proxyagent.envoy_log_level(value)


# ------------------------------------------------------------------------------------- probe headers


def headers(scheme: str = "http", port: str = "8080", **more: str) -> dict[str, str]:
    found = {"Mesh-User-Scheme": scheme, "Mesh-User-Port": port}
    found.update({f"Mesh-User-{k.capitalize()}": v for k, v in more.items()})
    return found


@pytest.mark.parametrize(("given", "probe"), [
    (headers(), Probe("http", "localhost", 8080, "/")),
    (headers("HTTPS", host="", path="/healthz?full=1"), Probe("https", "localhost", 8080, "/healthz?full=1")),
    (headers("tcp", "5432", path=""), Probe("tcp", "localhost", 5432, "/")),
    (headers(host=POD_IP, path="/ready"), Probe("http", POD_IP, 8080, "/ready")),
    (headers(host="127.0.0.9"), Probe("http", "127.0.0.9", 8080, "/")),
    (headers(host="[::1]"), Probe("http", "::1", 8080, "/")),
])
def test_probe_headers_describe_the_check(given: dict[str, str], probe: Probe) -> None:
    assert proxyagent.probe_from_headers(given, POD_IP) == probe


@pytest.mark.parametrize(("given", "named"), [
    ({"Mesh-User-Port": "8080"}, "Mesh-User-Scheme"),
    (headers("grpc"), "Mesh-User-Scheme"),
    ({"Mesh-User-Scheme": "http"}, "Mesh-User-Port"),
    (headers(port="http"), "Mesh-User-Port"),
    (headers(port="70000"), "Mesh-User-Port"),
    (headers(path="healthz"), "Mesh-User-Path"),
    (headers(path="/a b"), "Mesh-User-Path"),
    (headers(host="10.244.9.9"), "Mesh-User-Host"),
    (headers(host="ratings.shop.svc"), "Mesh-User-Host"),
])
def test_bad_probe_headers_are_named(given: dict[str, str], named: str) -> None:
    with pytest.raises(ProbeHeaderError, match=named):
        proxyagent.probe_from_headers(given, POD_IP)


def test_a_probe_url_brackets_ipv6() -> None:
    assert str(Probe("http", "::1", 8080, "/x?y=1").url) == "http://[::1]:8080/x?y=1"


# ------------------------------------------------------------------------------------- health server


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """``app`` on 127.0.0.1 (a port the kernel picks) for the duration of the block."""
    runner, port = await admin.start(app, "127.0.0.1", 0)
    try:
        yield port
    finally:
        await runner.cleanup()


def fixed(status: int, text: str = "") -> web.Application:
    """An application answering every GET with ``status``."""
    async def answer(request: web.Request) -> web.Response:
        return web.Response(status=status, text=text, headers={"Location": "/elsewhere"} if status == 302 else None)

    app = web.Application()
    app.router.add_get("/{tail:.*}", answer)
    return app


async def get(port: int, path: str, given: dict[str, str] | None = None) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session, \
            session.get(f"http://127.0.0.1:{port}{path}", headers=given) as reply:
        return reply.status, await reply.text()


def probe(check: Callable[[int], Any], *, admin_port: int = 1, timeout: float = proxyagent.PROBE_TIMEOUT) -> Any:
    """Run ``check(health port)`` against a health server whose pod IP is 127.0.0.1."""
    async def scenario() -> Any:
        async with serving(proxyagent.create_health_app(admin_port, "127.0.0.1", timeout=timeout)) as port:
            return await check(port)

    return asyncio.run(scenario())


def test_http_probes_succeed_for_2xx_and_3xx_and_fail_otherwise() -> None:
    async def check(health: int) -> list[tuple[int, str]]:
        async with (serving(echo.create_app("app")) as ok, serving(fixed(500)) as broken,
                    serving(fixed(302)) as moved):
            return [await get(health, "/healthproxy", headers(port=str(port), path="/healthz"))
                    for port in (ok, broken, moved)]

    ok, broken, moved = probe(check)
    assert ok[0] == 200 and "answered 200" in ok[1]
    assert broken[0] == 503 and "answered 500" in broken[1]
    assert moved[0] == 200 and "answered 302" in moved[1]


def test_tcp_probes_connect() -> None:
    async def check(health: int) -> list[tuple[int, str]]:
        async with serving(echo.create_app("app")) as open_port:
            closed = free_port()
            return [await get(health, "/healthproxy", headers("tcp", str(port), host="127.0.0.1"))
                    for port in (open_port, closed)]

    open_result, closed_result = probe(check)
    assert open_result[0] == 200
    assert closed_result[0] == 503 and "failed" in closed_result[1]


def test_https_probes_do_not_verify_the_certificate() -> None:
    with ExternalHttps(["app.example"], "127.0.0.1") as server:  # signed by a CA nobody trusts
        port = server.address[1]
        status, text = probe(lambda health: get(health, "/healthproxy", headers("https", str(port), path="/")))
    assert (status, text.strip()) == (200, f"GET https://localhost:{port}/ answered 200")


def test_a_silent_application_fails_the_probe_within_the_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never answers
        port = silent.getsockname()[1]
        started = time.monotonic()
        status, text = probe(lambda health: get(health, "/healthproxy", headers(port=str(port))), timeout=0.3)
    assert status == 503 and "no answer in time" in text
    assert time.monotonic() - started < 5


def test_bad_probe_headers_get_400_naming_the_header() -> None:
    status, text = probe(lambda health: get(health, "/healthproxy", {"Mesh-User-Scheme": "http"}))
    assert status == 400 and "Mesh-User-Port" in text


def test_probe_headers_of_the_original_probe_are_passed_on() -> None:
    seen: dict[str, str] = {}

    async def record(request: web.Request) -> web.Response:
        seen.update(request.headers)
        return web.Response(text="ok")

    async def check(health: int) -> tuple[int, str]:
        app = web.Application()
        app.router.add_get("/healthz", record)
        async with serving(app) as port:
            return await get(health, "/healthproxy", {**headers(port=str(port), path="/healthz"),
                                                      "X-Probe-Token": "t0k", "User-Agent": "kube-probe/1.30"})

    assert probe(check)[0] == 200
    assert seen["X-Probe-Token"] == "t0k" and seen["User-Agent"] == "kube-probe/1.30"
    assert not any(name.lower().startswith("mesh-user-") for name in seen)


def test_health_follows_envoys_readiness() -> None:
    async def scenario() -> list[tuple[int, str]]:
        results = []
        for app in (fixed(200, "LIVE\n"), fixed(503, "PRE_INITIALIZING\n")):
            async with serving(app) as admin_port, \
                    serving(proxyagent.create_health_app(admin_port, "127.0.0.1")) as health:
                results.append(await get(health, "/health"))
        async with serving(proxyagent.create_health_app(free_port(), "127.0.0.1")) as health:
            results.append(await get(health, "/health"))
        return results

    live, initializing, absent = asyncio.run(scenario())
    assert live == (200, "ok\n")
    assert initializing[0] == 503 and "PRE_INITIALIZING" in initializing[1]
    assert absent[0] == 503 and "unreachable" in absent[1]


# ------------------------------------------------------------------------------------------ supervision


@pytest.fixture
def fake_envoy() -> Iterator[Callable[[str], str]]:
    """Write a stand-in Envoy (a POSIX shell script) with ``body``; returns its path. Its folder (which
    also holds the agent's work directory, ``work``) can be traversed by anyone and its report directory
    written by anyone, so it can run as the proxy's uid."""
    folder = Path(tempfile.mkdtemp(prefix="fake-envoy-"))
    folder.chmod(0o755)
    for name, mode in (("report", 0o777), ("work", 0o755)):
        (folder / name).mkdir()
        (folder / name).chmod(mode)

    def write(body: str) -> str:
        script = folder / "envoy"
        script.write_text(f'#!/bin/sh\nREPORT="{folder}/report"\nCONFIG="$2"\n{body}\n')
        script.chmod(0o755)
        return str(script)

    yield write
    shutil.rmtree(folder, ignore_errors=True)


def report(envoy: str, name: str) -> str:
    return (Path(envoy).parent / "report" / name).read_text().strip()


def workdir(envoy: str) -> Path:
    return Path(envoy).parent / "work"


def run(credentials: Path, envoy: str, *, proxy_uid: int | None = None, xds: str = "127.0.0.1:15012",
        on_start: Callable[[Running], None] | None = None) -> int:
    spec = proxyagent.agent_spec(pod_env(), credentials, xds, admin_port=free_port())
    return asyncio.run(asyncio.wait_for(proxyagent.run_agent(
        spec, envoy=envoy, log_level="info", health_host="127.0.0.1", health_port=0, workdir=workdir(envoy),
        proxy_uid=proxy_uid, on_start=on_start), 20))


def test_envoy_gets_its_bootstrap_and_private_credentials_which_are_removed_after(
        credentials: Path, fake_envoy: Callable[[str], str]) -> None:
    envoy = fake_envoy('cp "$CONFIG" "$REPORT/bootstrap"; echo "$@" > "$REPORT/argv"\n'
                       'stat -c "%a %n" "$(dirname "$CONFIG")" "$(dirname "$CONFIG")"/* > "$REPORT/modes"; exit 3')
    assert run(credentials, envoy) == 3
    bootstrap = yaml.safe_load(report(envoy, "bootstrap"))
    assert bootstrap["node"]["metadata"][names.META_CAPTURE] == "transparent"
    argv = report(envoy, "argv").split()
    assert argv[2:] == ["--log-level", "info", "--use-dynamic-base-id", "--file-flush-interval-msec", "1000"]
    private = Path(argv[1]).parent
    modes = {name: mode for mode, name in (line.split(" ", 1) for line in report(envoy, "modes").splitlines())}
    assert modes == {str(private): "700", **{str(private / f): "600"
                                             for f in ("envoy.yaml", "cert.pem", "key.pem", "ca.pem")}}
    tls = json.dumps(bootstrap["static_resources"]["clusters"][0]["transport_socket"])
    assert str(private / "key.pem") in tls and str(credentials) not in tls
    assert not private.exists() and list(workdir(envoy).iterdir()) == []


def test_a_control_plane_host_name_is_resolved_and_still_verified(credentials: Path,
                                                                  fake_envoy: Callable[[str], str]) -> None:
    envoy = fake_envoy('cp "$CONFIG" "$REPORT/bootstrap"; exit 3')
    assert run(credentials, envoy, xds="localhost:15012") == 3
    cluster = yaml.safe_load(report(envoy, "bootstrap"))["static_resources"]["clusters"][0]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"]["address"] in ("127.0.0.1", "::1")  # a STATIC cluster needs an IP
    assert '"exact": "localhost"' in json.dumps(cluster["transport_socket"])  # the server's name is checked


def sigterm_myself() -> None:
    """SIGTERM this process, which the agent under test handles; refused while the default handler (which
    would end the test run) is in place."""
    assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), "the agent is not handling SIGTERM"
    os.kill(os.getpid(), signal.SIGTERM)


def test_envoy_exiting_by_itself_never_looks_like_success(credentials: Path,
                                                          fake_envoy: Callable[[str], str]) -> None:
    assert run(credentials, fake_envoy("exit 0")) == 1


def test_sigterm_is_forwarded_to_envoy_and_its_exit_code_returned(credentials: Path,
                                                                 fake_envoy: Callable[[str], str]) -> None:
    envoy = fake_envoy("trap 'kill $SLEEPER; exit 7' TERM\nsleep 30 & SLEEPER=$!\nwait $SLEEPER")
    started: list[Running] = []

    def stop_soon(running: Running) -> None:
        started.append(running)
        asyncio.get_running_loop().call_later(0.3, sigterm_myself)

    assert run(credentials, envoy, on_start=stop_soon) == 7
    assert started and not pid_alive(started[0].envoy_pid)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to the proxy's uid needs root")
def test_as_root_envoy_runs_as_the_proxy_uid_and_can_read_its_key(credentials: Path,
                                                                 fake_envoy: Callable[[str], str]) -> None:
    os.chmod(credentials / "key.pem", 0o600)  # root's, as mounted: the proxy's uid could not read it there
    envoy = fake_envoy('id -u > "$REPORT/uid"; id -G > "$REPORT/groups"\n'
                       'cat "$CONFIG" key.pem > /dev/null && echo readable > "$REPORT/key"; exit 5')
    assert run(credentials, envoy, proxy_uid=4242) == 5
    assert (report(envoy, "uid"), report(envoy, "groups"), report(envoy, "key")) == ("4242", "4242", "readable")


def test_without_root_envoy_runs_as_the_agent_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert proxyagent._owner(1337) is None
    assert "would be redirected back into it" in caplog.text
    assert proxyagent._owner(1000) is None and proxyagent._owner(None) is None
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert proxyagent._owner(1337) == (1337, 1337)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ------------------------------------------------------------------------------------------ command line


def command(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="meshplane")
    proxyagent.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["proxy", *argv])


def test_the_command_line_defaults() -> None:
    args = command("--credentials", "/etc/meshplane/proxy", "--xds-address", "10.96.0.12:15012")
    assert (args.admin_port, args.health_address, args.envoy, args.no_setuid) == (15000, "0.0.0.0:15010", None, False)
    assert args.credentials == Path("/etc/meshplane/proxy")


@pytest.mark.parametrize(("extra", "env", "message"), [
    ((), {proxyagent.ENV_POD_IP: None}, "meshplane proxy: POD_IP is not set"),
    ((), {proxyagent.ENV_LOG_LEVEL: "loud"}, "meshplane proxy: PROXY_LOG_LEVEL must be one of"),
    (("--health-address", "15010"), {}, "meshplane proxy: --health-address must be HOST:PORT"),
    (("--envoy", "/nonexistent/envoy"), {}, "meshplane proxy: no Envoy binary at '/nonexistent/envoy'"),
])
def test_command_line_errors_exit_2(credentials: Path, monkeypatch: pytest.MonkeyPatch, extra: tuple[str, ...],
                                    env: dict[str, str | None], message: str) -> None:
    for name, value in pod_env(**env).items():
        monkeypatch.setenv(name, value)
    for name in (name for name, value in env.items() if value is None):
        monkeypatch.delenv(name, raising=False)
    args = command("--credentials", str(credentials), "--xds-address", "127.0.0.1:15012", *extra)
    err = io.StringIO()
    assert args.run(args, io.StringIO(), err) == 2
    assert err.getvalue().startswith(message), err.getvalue()


# ------------------------------------------------------------------------------------------ end to end

API = "servicemesh.oci.oracle.com/v1beta1"


def obj(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name, "namespace": "shop"}, "spec": spec}


async def eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` (blocking, run in a thread) until it returns something true; bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            result = await asyncio.to_thread(check)
            if result:
                return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def synced(syncz: dict[str, Any], node: str) -> bool:
    types: dict[str, Any] = next((p["types"] for p in syncz["proxies"] if p["node"] == node), {})
    return {"CDS", "LDS"} <= set(types) and all(t["status"] == "SYNCED" for t in types.values())


def health_of(port: int) -> int:
    return asyncio.run(get(port, "/health"))[0]


@pytest.mark.envoy
def test_the_agent_runs_envoy_against_the_real_control_plane_until_sigterm(tmp_path: Path) -> None:
    """The proxy's deployment is not in the mesh's configuration: a served deployment in transparent capture
    gets listeners on 0.0.0.0:15001 and :15003, which a test must not bind. The control plane still admits
    the proxy (its certificate and metadata agree) and sends it an empty configuration, which it ACKs."""
    with mesh(tmp_path) as m:
        m.write("mesh.yaml", [obj("Mesh", "shop", {"mtls": {"minimum": "DISABLED"}}),
                              obj("VirtualService", "client", {"mesh": {"ref": {"name": "shop"}}}),
                              obj("VirtualDeployment", "client", {"virtualService": {"ref": {"name": "client"}}})])
        m.start_control_plane()
        tls = xdsauth.issue_proxy(m.state_dir, NODE, DEPLOYMENT, "127.0.0.1")
        env = pod_env(**{proxyagent.ENV_POD_IP: m.address(10)})
        spec = proxyagent.agent_spec(env, Path(tls.private_key).parent, f"127.0.0.1:{m.xds_port}",
                                     admin_port=free_port())
        work = tmp_path / "agent"
        work.mkdir()
        started: list[Running] = []

        async def scenario() -> tuple[int, Running]:
            agent = asyncio.create_task(proxyagent.run_agent(
                spec, envoy=str(envoy_path()), log_level="info", health_host="127.0.0.1", health_port=0,
                workdir=work, proxy_uid=None, on_start=started.append))
            try:
                await eventually(lambda: started, 10, "the agent to start Envoy")
                await eventually(lambda: synced(m.syncz(), NODE), 30, f"{NODE} to be SYNCED\n{m.logs()}")
                await eventually(lambda: health_of(started[0].health_port) == 200, 20, "/health to answer 200")
                sigterm_myself()
                return await asyncio.wait_for(agent, 15), started[0]
            finally:
                if not agent.done():
                    agent.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await agent

        code, running = asyncio.run(scenario())
        assert code == 0
        assert not pid_alive(running.envoy_pid)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", running.health_port), timeout=1).close()
        assert list(work.iterdir()) == []
        m.wait_for(lambda: not any(p["node"] == NODE for p in m.syncz()["proxies"]), 10, "the stream to close")

