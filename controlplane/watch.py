"""Waking when files change under a directory: Linux inotify where the kernel offers it.

Serving polls the config directory (a stat of each manifest) every ``--poll-ms``; a change waited for
the next poll, half the interval on average (50 ms at the default 100 ms), and that was part of every
edit's convergence. :class:`DirectoryWatch` ends the wait as soon as a file is written and closed, moved
in or out, or removed anywhere under the directory, so the poll becomes a safety net: it still catches
what inotify does not see (other kernels, network filesystems, a watch limit reached).

Only completed writes wake it (``IN_CLOSE_WRITE``, not ``IN_MODIFY``): a file saved in several writes
wakes it once, when it is whole. Moves are what ``kubectl``-mounted ConfigMaps and atomic saves do (the
``..data`` symlink swap, a rename over the file). New subdirectories are watched as they appear.

I/O at the edge: the only module that talks to inotify. Nothing here decides what changed; the caller
compares the directory with what it last read, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# <sys/inotify.h>
IN_CLOSE_WRITE, IN_MOVED_FROM, IN_MOVED_TO = 0x008, 0x040, 0x080
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
IN_NONBLOCK, IN_CLOEXEC = os.O_NONBLOCK, 0o2000000
EVENTS = IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF


class DirectoryWatch:
    """Wake-ups for changes under ``root`` (use as a context manager, inside a running event loop).

    :meth:`wait` returns at the first change since the previous call, or after ``timeout`` seconds,
    whichever comes first; without inotify it simply sleeps. It never says what changed.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.active = False  # inotify watches root: wait() ends early on changes
        self._fd = -1
        self._libc: ctypes.CDLL | None = None
        self._watched: set[Path] = set()
        self._changed = asyncio.Event()

    def __enter__(self) -> DirectoryWatch:
        if sys.platform.startswith("linux"):
            try:
                self._start()
            except OSError as exc:  # no inotify, or no watch left: the poll still sees every change
                log.warning("not watching %s for changes (%s); polling only", self.root, exc)
                self.close()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def wait(self, timeout: float) -> None:
        """Until a change under the directory since the last call, or ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)
        self._changed.clear()

    def close(self) -> None:
        if self._fd >= 0:
            if self.active:
                asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
        self._fd, self.active = -1, False

    def _start(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        fd = self._libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        self._fd = fd
        self._watch_tree()
        if self.root not in self._watched:
            raise OSError(f"{self.root} is not a directory")
        asyncio.get_running_loop().add_reader(fd, self._read)
        self.active = True

    def _watch_tree(self) -> None:
        """Watch the root and every directory under it not watched yet (those made since are new)."""
        if not self.root.is_dir():
            return
        for directory in [self.root, *(p for p in self.root.rglob("*") if p.is_dir() and not p.is_symlink())]:
            if directory not in self._watched:
                self._add(directory)

    def _add(self, directory: Path) -> None:
        assert self._libc is not None
        if self._libc.inotify_add_watch(self._fd, os.fsencode(directory), EVENTS) < 0:
            error = ctypes.get_errno()
            raise OSError(error, f"{os.strerror(error)}: {directory}")
        self._watched.add(directory)

    def _read(self) -> None:
        """Drain the kernel's events (their content does not matter), watch new directories, wake the waiter."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._fd, 65536):
                pass
        self._watched = {d for d in self._watched if d.is_dir()}  # a removed directory's watch is gone too
        try:
            self._watch_tree()
        except OSError as exc:
            log.warning("cannot watch a new directory under %s (%s); the poll still sees its files", self.root, exc)
        self._changed.set()
