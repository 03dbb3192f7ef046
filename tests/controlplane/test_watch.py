"""DirectoryWatch: a completed write, a rename over a file, a removal and a file in a directory made after the
watch began each end a wait at once; with nothing changing, the wait lasts its timeout."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from meshplane.controlplane.watch import DirectoryWatch

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux's")

LONG = 60.0  # a wait that ends before this did so because of a change


def replace_file(path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("kind: Mesh\n")
    os.replace(tmp, path)


def changes(root: Path) -> list[tuple[str, Callable[[], object]]]:
    return [
        ("written", lambda: (root / "a.yaml").write_text("kind: Mesh\n")),
        ("renamed over", lambda: replace_file(root / "a.yaml")),
        ("removed", (root / "a.yaml").unlink),
        ("a new directory", (root / "sub").mkdir),
        ("a file in it", lambda: (root / "sub" / "b.yaml").write_text("kind: Mesh\n")),
    ]


def test_each_change_ends_the_wait_and_quiet_lasts_the_timeout(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        woken = []
        with DirectoryWatch(tmp_path) as watch:
            assert watch.active
            for what, change in changes(tmp_path):
                change()
                await asyncio.wait_for(watch.wait(LONG), LONG / 2)  # TimeoutError: the change went unseen
                woken.append(what)
            loop = asyncio.get_running_loop()
            began = loop.time()
            await watch.wait(0.2)
            assert loop.time() - began >= 0.2, "nothing changed: the whole timeout"
        return woken

    assert asyncio.run(scenario()) == [what for what, _ in changes(tmp_path)]


def test_without_a_directory_to_watch_it_polls_only(tmp_path: Path) -> None:
    async def scenario() -> tuple[bool, float]:
        with DirectoryWatch(tmp_path / "absent") as watch:
            loop = asyncio.get_running_loop()
            began = loop.time()
            await watch.wait(0.1)
            return watch.active, loop.time() - began

    active, waited = asyncio.run(scenario())
    assert not active and waited >= 0.1
