"""Resource monitors: each reports a pressure (a fraction of its limit) when the manager asks.

- ``envoy.resource_monitors.fixed_heap`` (FixedHeapConfig): this worker process's resident set
  size over ``max_heap_size_bytes``. Envoy divides tcmalloc's in-use heap of its one process;
  a Tulle worker is a process of its own, so the budget applies to each worker.
- ``envoy.resource_monitors.injected_resource`` (InjectedResourceConfig): a pressure written
  in a file, as Envoy's test monitor reads it.
- ``envoy.resource_monitors.global_downstream_max_connections`` (DownstreamConnectionsConfig):
  Envoy's proactive monitor. Listeners take a slot per accepted connection and give it back
  when it closes; the count is shared by the worker processes (memory mapped before they
  fork), as Envoy's counter is by its threads.

A monitor's ``update()`` returns the pressure or raises :class:`MonitorError` (a failed update).
"""

from __future__ import annotations

import mmap
import os
from typing import Any

from tulle.config.errors import ConfigError, join
from tulle.config.support import check_fields

GLOBAL_DOWNSTREAM_MAX_CONNECTIONS = "envoy.resource_monitors.global_downstream_max_connections"


class MonitorError(Exception):
    """The pressure could not be read this time (counted in ``failed_updates``)."""


class FixedHeapMonitor:
    __slots__ = ("max_heap_size_bytes", "page_size")

    def __init__(self, max_heap_size_bytes: int) -> None:
        self.max_heap_size_bytes = max_heap_size_bytes
        self.page_size = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def resident_bytes(self) -> int:
        try:
            with open("/proc/self/statm", "rb") as statm:
                return int(statm.read().split()[1]) * self.page_size
        except (OSError, ValueError, IndexError) as exc:
            raise MonitorError(f"cannot read this process's resident set size: {exc}") from None

    def update(self) -> float:
        return self.resident_bytes() / self.max_heap_size_bytes


class InjectedResourceMonitor:
    __slots__ = ("filename",)

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def update(self) -> float:
        try:
            with open(self.filename, "rb") as source:
                text = source.read().decode("ascii", "replace").strip()
        except OSError as exc:
            raise MonitorError(f"cannot read {self.filename}: {exc.strerror}") from None
        try:
            pressure = float(text)
        except ValueError:
            raise MonitorError("failed to parse injected resource pressure") from None
        if not 0.0 <= pressure <= 1.0:  # also refuses nan
            raise MonitorError("pressure out of range")
        return pressure


class _LocalCount:
    """One worker: a plain integer (a worker is single-threaded)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def add_if_below(self, limit: int) -> bool:
        if self.value >= limit:
            return False
        self.value += 1
        return True

    def subtract(self) -> None:
        if self.value > 0:
            self.value -= 1

    def read(self) -> int:
        return self.value


class _SharedCount:
    """The same integer for every worker process: an anonymous MAP_SHARED page mapped before
    the fork, its read-modify-writes serialised by a process-shared semaphore (see
    filters/network/local_ratelimit SharedTokenBucket)."""

    __slots__ = ("_memory", "_slots", "_lock")

    def __init__(self) -> None:
        import multiprocessing

        self._memory = mmap.mmap(-1, mmap.PAGESIZE)
        self._slots = memoryview(self._memory).cast("q")
        self._slots[0] = 0
        self._lock = multiprocessing.get_context("fork").Lock()

    def add_if_below(self, limit: int) -> bool:
        slots = self._slots
        with self._lock:
            if slots[0] >= limit:
                return False
            slots[0] += 1
            return True

    def subtract(self) -> None:
        slots = self._slots
        with self._lock:
            if slots[0] > 0:
                slots[0] -= 1

    def read(self) -> int:
        return self._slots[0]  # one aligned 8-byte read: whole without the lock


class DownstreamConnectionsMonitor:
    """Envoy's ActiveDownstreamConnectionsResourceMonitor: a connection count bounded by
    ``max_active_downstream_connections``; pressure = count / max."""

    __slots__ = ("max_connections", "count")

    def __init__(self, max_connections: int, *, workers: int) -> None:
        self.max_connections = max_connections
        self.count: _LocalCount | _SharedCount = _SharedCount() if workers > 1 else _LocalCount()

    def try_allocate(self) -> bool:
        return self.count.add_if_below(self.max_connections)

    def release(self) -> None:
        self.count.subtract()

    def update(self) -> float:
        return self.count.read() / self.max_connections


# --- factories (registered in extensions.registry.RESOURCE_MONITORS) --------------------


def fixed_heap(proto: Any, field: str, server: Any) -> FixedHeapMonitor:
    check_fields(proto, ("max_heap_size_bytes",), field)
    if proto.max_heap_size_bytes == 0:
        raise ConfigError("max_heap_size_bytes must be greater than 0", field=join(field, "max_heap_size_bytes"))
    return FixedHeapMonitor(proto.max_heap_size_bytes)


def injected_resource(proto: Any, field: str, server: Any) -> InjectedResourceMonitor:
    check_fields(proto, ("filename",), field)
    if not proto.filename:
        raise ConfigError("filename must not be empty", field=join(field, "filename"))
    return InjectedResourceMonitor(proto.filename)


def downstream_connections(proto: Any, field: str, server: Any) -> DownstreamConnectionsMonitor:
    check_fields(proto, ("max_active_downstream_connections",), field)
    if proto.max_active_downstream_connections <= 0:
        raise ConfigError("max_active_downstream_connections must be greater than 0",
                          field=join(field, "max_active_downstream_connections"))
    workers = server.concurrency
    try:
        return DownstreamConnectionsMonitor(proto.max_active_downstream_connections, workers=workers)
    except OSError as exc:  # no POSIX semaphores (/dev/shm) for the shared count
        raise ConfigError(f"cannot share a connection count between {workers} workers: {exc}",
                          field=field) from None
