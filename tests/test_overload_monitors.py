"""Resource monitors: the injected file, the worker's resident set, the shared connection count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from envoy.extensions.resource_monitors.downstream_connections.v3 import downstream_connections_pb2
from envoy.extensions.resource_monitors.fixed_heap.v3 import fixed_heap_pb2
from envoy.extensions.resource_monitors.injected_resource.v3 import injected_resource_pb2

from tulle.config.errors import ConfigError
from tulle.overload import monitors
from tulle.overload.monitors import (
    DownstreamConnectionsMonitor,
    FixedHeapMonitor,
    InjectedResourceMonitor,
    MonitorError,
)
from tulle.server.context import ServerState


def test_injected_resource_reads_the_pressure_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pressure"
    monitor = InjectedResourceMonitor(str(path))
    path.write_text(" 0.75\n")
    assert monitor.update() == 0.75
    path.write_text("1")
    assert monitor.update() == 1.0


@pytest.mark.parametrize(("content", "message"), [
    ("lots", "failed to parse injected resource pressure"),
    ("1.5", "pressure out of range"),
    ("-0.1", "pressure out of range"),
    ("nan", "pressure out of range"),
])
def test_injected_resource_refuses_bad_values(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "pressure"
    path.write_text(content)
    with pytest.raises(MonitorError, match=message):
        InjectedResourceMonitor(str(path)).update()


def test_injected_resource_missing_file_is_a_failed_update(tmp_path: Path) -> None:
    with pytest.raises(MonitorError, match="cannot read"):
        InjectedResourceMonitor(str(tmp_path / "absent")).update()


def test_fixed_heap_is_this_process_resident_set_over_the_budget() -> None:
    with open("/proc/self/statm", "rb") as statm:
        resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    pressure = FixedHeapMonitor(resident * 2).update()
    assert 0.3 < pressure < 0.7  # about half; the process may grow or shrink a little meanwhile
    assert FixedHeapMonitor(1024).update() > 1.0  # pressure is not capped, as in Envoy


def test_fixed_heap_without_proc_fails_the_update(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_proc(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr("builtins.open", no_proc)
    with pytest.raises(MonitorError, match="resident set size"):
        FixedHeapMonitor(1024).update()


def test_connection_count_is_bounded_and_its_pressure_is_count_over_max() -> None:
    monitor = DownstreamConnectionsMonitor(2, workers=1)
    assert monitor.update() == 0.0
    assert monitor.try_allocate() and monitor.try_allocate()
    assert not monitor.try_allocate()
    assert monitor.update() == 1.0
    monitor.release()
    assert monitor.update() == 0.5
    monitor.release()
    monitor.release()  # never below zero
    assert monitor.update() == 0.0


def test_connection_count_is_shared_by_forked_workers() -> None:
    monitor = DownstreamConnectionsMonitor(3, workers=2)
    assert monitor.try_allocate()
    pid = os.fork()
    if pid == 0:  # another worker: sees the parent's slot, takes the two left
        code = 0 if (monitor.update() == 1 / 3 and monitor.try_allocate() and monitor.try_allocate()
                     and not monitor.try_allocate()) else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert monitor.update() == 1.0
    assert not monitor.try_allocate()
    monitor.release()
    assert monitor.try_allocate()


def test_factories_validate_their_configs() -> None:
    server = ServerState(concurrency=1)
    assert isinstance(monitors.fixed_heap(fixed_heap_pb2.FixedHeapConfig(max_heap_size_bytes=10), "f", server),
                      FixedHeapMonitor)
    with pytest.raises(ConfigError, match="max_heap_size_bytes must be greater than 0") as caught:
        monitors.fixed_heap(fixed_heap_pb2.FixedHeapConfig(), "f", server)
    assert caught.value.field == "f.max_heap_size_bytes"
    with pytest.raises(ConfigError, match="filename must not be empty"):
        monitors.injected_resource(injected_resource_pb2.InjectedResourceConfig(), "f", server)
    with pytest.raises(ConfigError, match="max_active_downstream_connections must be greater than 0"):
        monitors.downstream_connections(downstream_connections_pb2.DownstreamConnectionsConfig(), "f", server)
    shared = monitors.downstream_connections(
        downstream_connections_pb2.DownstreamConnectionsConfig(max_active_downstream_connections=5), "f",
        ServerState(concurrency=4))
    assert type(shared.count).__name__ == "_SharedCount"
