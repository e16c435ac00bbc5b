"""Watch for the atomic symlink swap that publishes a new runtime tree (Envoy's file watcher).

Envoy watches the symlink's parent directory for IN_MOVED_TO of the symlink's name
(``ln -s /srv/runtime/v2 new && mv -Tf new current``) and reloads when it fires; editing
files in place, without a swap, is not noticed. Tulle does the same with inotify on the
event loop. Where inotify is missing (not Linux) it polls the symlink every second and
reloads when it was replaced (a new inode), which a swap always does.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import struct
from collections.abc import Callable

from tulle.config.errors import ConfigError

log = logging.getLogger("tulle.runtime")

IN_MOVED_TO = 0x00000080
_EVENT_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
POLL_INTERVAL_S = 1.0


class SymlinkWatcher:
    """Calls ``on_swap`` once per burst of swaps of any watched symlink."""

    def __init__(self, on_swap: Callable[[], None]) -> None:
        self.on_swap = on_swap
        self.paths: list[tuple[str, str]] = []  # (path, field) of each watched symlink
        self._fd = -1
        self._watched: dict[int, set[str]] = {}  # inotify watch descriptor -> symlink names in that directory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._poll_task: asyncio.Task[None] | None = None

    def add(self, path: str, field: str) -> None:
        self.paths.append((path, field))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin watching; a missing parent directory fails start-up, as in Envoy."""
        if not self.paths:
            return
        self._loop = loop
        libc = _libc()
        if libc is None:
            for path, field in self.paths:
                directory = os.path.dirname(os.path.abspath(path))
                if not os.path.isdir(directory):
                    raise ConfigError(f"unable to add filesystem watch for file {path}: "
                                      f"{os.strerror(2)}", field=field)
            identities = {path: symlink_identity(path) for path, _ in self.paths}  # now: a swap right after counts
            self._poll_task = loop.create_task(self._poll(identities))
            return
        self._fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        for path, field in self.paths:
            directory, name = os.path.split(os.path.abspath(path))
            wd = libc.inotify_add_watch(self._fd, os.fsencode(directory), IN_MOVED_TO)
            if wd < 0:
                error = os.strerror(ctypes.get_errno())
                self.close()
                raise ConfigError(f"unable to add filesystem watch for file {path}: {error}", field=field)
            self._watched.setdefault(wd, set()).add(name)
        loop.add_reader(self._fd, self._on_readable)

    def close(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            self._poll_task = None
        if self._fd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
            self._watched.clear()

    def _on_readable(self) -> None:
        swapped = False
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                break
            if not data:
                break
            offset = 0
            while offset + _EVENT_HEADER.size <= len(data):
                wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
                start = offset + _EVENT_HEADER.size
                name = os.fsdecode(data[start:start + length].rstrip(b"\0"))
                offset = start + length
                if mask & IN_MOVED_TO and name in self._watched.get(wd, ()):
                    swapped = True
        if swapped:
            self._reload()

    async def _poll(self, identities: dict[str, tuple[int, int, int] | None]) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            current = {path: symlink_identity(path) for path, _ in self.paths}
            if current != identities:
                identities = current
                self._reload()

    def _reload(self) -> None:
        try:
            self.on_swap()
        except Exception:  # a reload must never take the watcher down with it
            log.exception("runtime reload failed")


def symlink_identity(path: str) -> tuple[int, int, int] | None:
    """What changes when the symlink is replaced (None while it does not exist)."""
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_ctime_ns


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError):
        return None
    return libc
