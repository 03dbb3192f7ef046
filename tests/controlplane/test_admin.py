"""The admin server over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from meshplane.controlplane import admin
from meshplane.controlplane.admin import Views, create_app, start


async def fetch(port: int, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}{path}") as response:
        return response.status, await response.text()


def test_health_and_debug_views_are_served() -> None:
    ready = {"value": False}
    views = Views(healthy=lambda: ready["value"], syncz=lambda: {"proxies": [{"node": "a"}]},
                  resources=lambda: {"objects": []})

    async def scenario() -> list[tuple[int, Any]]:
        runner, port = await start(create_app(views), "127.0.0.1", 0)
        try:
            first = await fetch(port, "/healthz")
            ready["value"] = True
            second = await fetch(port, "/healthz")
            syncz = await fetch(port, "/debug/syncz")
            resources = await fetch(port, "/debug/resources")
            missing = await fetch(port, "/nope")
        finally:
            await runner.cleanup()
        return [first, second, (syncz[0], json.loads(syncz[1])), (resources[0], json.loads(resources[1])),
                (missing[0], None)]

    first, second, syncz, resources, missing = asyncio.run(scenario())
    assert first[0] == 503 and second == (200, "ok\n")
    assert syncz == (200, {"proxies": [{"node": "a"}]})
    assert resources == (200, {"objects": []})
    assert missing[0] == 404


def test_listings_are_json_with_one_item_per_line() -> None:
    data = {"reconciling": False, "proxies": [{"node": "b", "types": {"CDS": {"status": "SYNCED"}}}, {"node": "a"}],
            "empty": [], "nested": {"z": 1, "a": [1, 2]}}
    text = admin._listing(data)
    assert json.loads(text) == data
    lines = text.splitlines()
    assert lines[lines.index('  "proxies": [') + 1:][:2] == [
        '    {"node": "b", "types": {"CDS": {"status": "SYNCED"}}},', '    {"node": "a"}']
    assert '  "nested": {"a": [1, 2], "z": 1},' in lines and '  "empty": [],' in lines
