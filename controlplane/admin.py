"""The admin HTTP server (plain HTTP, loopback by default): health and debug views.

Routes:

* ``GET /healthz`` — 200 ``ok`` once the control plane has completed a reconcile round, else 503;
* ``GET /debug/syncz`` — per connected proxy: identity, versions sent and acknowledged per type,
  SYNCED / STALE / NOT SENT, and the last NACK with its message;
* ``GET /debug/resources`` — every accepted object with its status conditions, and every object the
  config directory holds that was not accepted, with the problems that kept it out;
* ``GET /metrics`` — the control plane's metrics in Prometheus' text format (see :mod:`metrics`);
* ``GET /debug/config_dump?proxy=ID`` — exactly what the proxy was last given, per type, with versions,
  as JSON (private keys replaced by ``[redacted]``); 404 for a proxy with no configuration.

The views are plain functions handed in by the composition root, so this module knows nothing of
xDS internals; it only turns their JSON-compatible results into responses.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from meshplane.controlplane.sockets import bind


@dataclass(frozen=True)
class Views:
    """What the admin server shows; each function returns JSON-compatible data."""

    healthy: Callable[[], bool]
    syncz: Callable[[], Any]
    resources: Callable[[], Any]
    config_dump: Callable[[str], Any] = lambda proxy: None  # None: no such proxy
    metrics: Callable[[], bytes] = lambda: b""  # Prometheus exposition text


VIEWS = web.AppKey("views", Views)


def create_app(views: Views) -> web.Application:
    app = web.Application()
    app[VIEWS] = views
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/debug/syncz", _syncz)
    app.router.add_get("/debug/resources", _resources)
    app.router.add_get("/debug/config_dump", _config_dump)
    app.router.add_get("/metrics", _metrics)
    return app


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[VIEWS].metrics(), headers={"Content-Type": "text/plain; version=0.0.4"})


async def _healthz(request: web.Request) -> web.Response:
    if request.app[VIEWS].healthy():
        return web.Response(text="ok\n")
    return web.Response(status=503, text="not ready: no reconcile round has completed yet\n")


async def _syncz(request: web.Request) -> web.Response:
    return web.json_response(request.app[VIEWS].syncz(), dumps=_listing)


async def _resources(request: web.Request) -> web.Response:
    return web.json_response(request.app[VIEWS].resources(), dumps=_listing)


async def _config_dump(request: web.Request) -> web.Response:
    proxy = request.query.get("proxy", "")
    if not proxy:
        return web.Response(status=400, text="name the proxy: /debug/config_dump?proxy=<node id>\n")
    dump = request.app[VIEWS].config_dump(proxy)
    if dump is None:
        return web.Response(status=404, text=f"no configuration for proxy {proxy!r} (see /debug/syncz)\n")
    return web.json_response(dump, dumps=_dumps)


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


_COMPACT = json.JSONEncoder(sort_keys=True).encode  # no indent: the C encoder


def _listing(data: Mapping[str, Any]) -> str:
    """JSON with one top-level key per line and, in a list, one item per line (compact, keys sorted): one
    line per proxy or object, to read or grep. Indented JSON is made by the pure-Python encoder: /debug/syncz
    of 2,000 proxies took 0.18 s of the control plane's loop that way, 0.05 s this way (the C encoder)."""
    lines = []
    for key in sorted(data):
        value = data[key]
        text = ("[\n    " + ",\n    ".join(map(_COMPACT, value)) + "\n  ]" if isinstance(value, list) and value
                else _COMPACT(value))
        lines.append(f"  {_COMPACT(key)}: {text}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


async def start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` on host:port (0 = any free port); returns the runner (to clean up) and the port."""
    sock = bind(host, port)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    return runner, int(sock.getsockname()[1])
