"""A sample application: answers every request with who it is and what it received.

Used by ``meshplane demo``, the quick start and the end-to-end tests to see which version of a
service answered (``{"name": "reviews-v2", ...}``) and what the proxy changed on the way (path, Host).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from meshplane.controlplane.sockets import bind

NAME = web.AppKey("name", str)


def create_app(name: str) -> web.Application:
    app = web.Application()
    app[NAME] = name
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app


async def _echo(request: web.Request) -> web.Response:
    body = {"name": request.app[NAME], "method": request.method, "path": request.path_qs,
            "host": request.host, "headers": dict(request.headers)}
    return web.json_response(body)


async def serve(host: str, port: int, name: str) -> web.AppRunner:
    """Start the echo app on host:port; the caller cleans up the returned runner."""
    runner = web.AppRunner(create_app(name), access_log=None)
    await runner.setup()
    await web.SockSite(runner, bind(host, port)).start()
    return runner


async def run_forever(host: str, port: int, name: str) -> None:
    runner = await serve(host, port, name)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
