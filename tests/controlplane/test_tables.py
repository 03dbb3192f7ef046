"""``meshplane status`` and ``meshplane proxy-status``: tables from the admin API's data."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator

import pytest

from meshplane.controlplane.admin import Views, create_app, start
from meshplane.controlplane.cli import main
from meshplane.controlplane.tables import proxy_status_table, render, status_table

RESOURCES = {
    "objects": [
        {"kind": "Mesh", "namespace": "shop", "name": "shop", "deleting": False, "conditions": [
            {"type": "ServiceMeshActive", "status": "True"}, {"type": "ServiceMeshConfigured", "status": "True"},
            {"type": "ServiceMeshDependenciesActive", "status": "True"}]},
        {"kind": "VirtualDeploymentBinding", "namespace": "shop", "name": "reviews-v1", "deleting": True,
         "conditions": [{"type": "ServiceMeshDependenciesActive", "status": "Unknown"},
                        {"type": "ServiceMeshActive", "status": "False"}]},
    ],
    "rejected": [{"problem": "VirtualService shop/bad: spec.hosts: required field is missing"}],
    "file_problems": [],
}
SYNCZ = {"proxies": [
    {"node": "web-1", "deployment": "shop/web-v1", "address": "127.0.0.21", "ready": True, "types": {
        t: {"status": "SYNCED", "nack_message": None} for t in ("CDS", "EDS", "LDS", "RDS", "SDS")}},
    {"node": "api-1", "deployment": None, "address": "127.0.0.22", "ready": False, "types": {
        "CDS": {"status": "NACKED", "nack_message": "cluster x: bad"}, "LDS": {"status": "STALE"}}},
]}


def test_render_pads_columns_to_their_widest_cell() -> None:
    assert render([["A", "BB"], ["CCC", "D"]]) == "A    BB\nCCC  D\n"
    assert render([]) == ""


def test_status_shows_each_objects_conditions_and_what_was_not_accepted() -> None:
    lines = status_table(RESOURCES).splitlines()
    assert lines[0].split() == ["KIND", "NAMESPACE", "NAME", "ACTIVE", "CONFIGURED", "DEPENDENCIES"]
    assert lines[1].split() == ["Mesh", "shop", "shop", "True", "True", "True"]
    assert lines[2].split() == ["VirtualDeploymentBinding", "shop", "reviews-v1", "(deleting)", "False", "-",
                                "Unknown"], "a kind without Configured shows '-'"
    assert lines[-2:] == ["not accepted:", "  VirtualService shop/bad: spec.hosts: required field is missing"]


def test_proxy_status_shows_each_type_and_the_last_rejection() -> None:
    lines = proxy_status_table(SYNCZ).splitlines()
    assert lines[0].split() == ["PROXY", "SERVES", "ADDRESS", "READY", "CDS", "EDS", "LDS", "RDS", "SDS"]
    assert lines[1].split() == ["api-1", "-", "127.0.0.22", "no", "NACKED", "-", "STALE", "-", "-"]
    assert lines[2].split() == ["web-1", "shop/web-v1", "127.0.0.21", "yes", *["SYNCED"] * 5]
    assert lines[-2:] == ["last rejections:", "  api-1 CDS: cluster x: bad"]


@pytest.fixture
def admin_address() -> Iterator[str]:
    """A real admin server (loopback, free port) serving the data above, on its own event loop."""
    loop = asyncio.new_event_loop()
    views = Views(healthy=lambda: True, syncz=lambda: SYNCZ, resources=lambda: RESOURCES)
    runner, port = loop.run_until_complete(start(create_app(views), "127.0.0.1", 0))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.run_until_complete(runner.cleanup())
        loop.close()


@pytest.mark.parametrize(("command", "expected"), [("status", status_table(RESOURCES)),
                                                   ("proxy-status", proxy_status_table(SYNCZ))])
def test_the_commands_read_a_running_control_planes_admin_api(admin_address: str, command: str,
                                                              expected: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main([command, "--admin-address", admin_address], out=out, err=err) == 0, err.getvalue()
    assert out.getvalue() == expected


def test_an_unreachable_control_plane_is_a_clear_error() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert main(["status", "--admin-address", "127.0.0.1:1"], out=out, err=err) == 2
    assert "is `meshplane serve` running" in err.getvalue()


