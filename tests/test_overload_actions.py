"""Overload actions end to end: a real proxy whose monitors read pressure files, one per action,
and a two-worker proxy holding its downstream connections to one global limit."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.config.overload.v3 import overload_pb2

from backends import Client, bootstrap, file_access_log, read_lines, wait_until
from proxy_harness import ProxyProcess, free_port, http_listener
from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.overload.actions import IdleTimeoutScaler, parse_scale_timers
from tulle.overload.state import OverloadState

INJECTED = "type.googleapis.com/envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig"
SCALE_TIMERS = "type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig"
ACTIONS = "envoy.overload_actions."
DIRECT_OK = {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
    {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]}


# --------------------------------------------------------------------------- reduce_timeouts config and scaling


def scale_timers_action(*timers: dict[str, Any], typed: bool = True) -> Any:
    doc: dict[str, Any] = {"name": ACTIONS + "reduce_timeouts", "triggers": [{"name": "r", "threshold": {"value": 1}}]}
    if typed:
        doc["typed_config"] = {"@type": SCALE_TIMERS, "timer_scale_factors": list(timers)}
    return parse_message(doc, overload_pb2.OverloadAction)


def test_reduce_timeouts_parses_min_timeout_or_min_scale() -> None:
    by_timeout = parse_scale_timers(scale_timers_action(
        {"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_timeout": "2s"}), "a")
    assert by_timeout.minimum(600.0) == 2.0
    assert by_timeout.minimum(1.0) == 1.0  # never above the configured timeout
    by_scale = parse_scale_timers(scale_timers_action(
        {"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_scale": {"value": 10}}), "a")
    assert by_scale.minimum(600.0) == pytest.approx(60.0)


@pytest.mark.parametrize(("action", "error", "text"), [
    (scale_timers_action(typed=False), ConfigError, "needs a typed_config"),
    (scale_timers_action(), ConfigError, "timer_scale_factors must not be empty"),
    (scale_timers_action({"min_timeout": "1s"}), ConfigError, "timer must be set"),
    (scale_timers_action({"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE"}), ConfigError,
     "one of min_timeout or min_scale is required"),
    (scale_timers_action({"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_scale": {"value": 150}}), ConfigError,
     "min_scale must be in [0, 100]"),
    (scale_timers_action({"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_timeout": "1s"},
                         {"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_timeout": "2s"}), ConfigError,
     "Found duplicate entry for timer type HTTP_DOWNSTREAM_CONNECTION_IDLE"),
    (scale_timers_action({"timer": "HTTP_DOWNSTREAM_STREAM_IDLE", "min_timeout": "1s"}), UnsupportedFeature,
     "reduce_timeouts for timer HTTP_DOWNSTREAM_STREAM_IDLE"),
])
def test_reduce_timeouts_refusals(action: Any, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text.replace("[", r"\[").replace("]", r"\]")):
        parse_scale_timers(action, "overload_manager.actions[0]")


class FakeConnection:
    def __init__(self, idle: bool) -> None:
        self.streams = [] if idle else ["busy"]
        self.closed = False
        self.last_activity = 100.0
        self.watched: list[float] = []

    def watch_deadline(self, deadline: float) -> None:
        self.watched.append(deadline)


class FakeHcmConfig:
    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self.connections = {FakeConnection(True), FakeConnection(False)}


def test_idle_timeout_scales_from_configured_to_minimum_and_back() -> None:
    state = OverloadState()
    config, disabled = FakeHcmConfig(600.0), FakeHcmConfig(0.0)
    state.connection_managers.add(config)
    state.connection_managers.add(disabled)
    scaler = IdleTimeoutScaler(2.0, None)
    scaler.apply(state, 0.7, changed=True)
    # Envoy's example: 2s + (600s - 2s) * (1 - 0.7)
    assert config.idle_timeout == pytest.approx(181.4)
    idle = next(c for c in config.connections if not c.streams)
    busy = next(c for c in config.connections if c.streams)
    assert idle.watched == [pytest.approx(100.0 + 181.4)] and busy.watched == []
    scaler.apply(state, 1.0, changed=True)
    assert config.idle_timeout == 2.0
    scaler.apply(state, 0.0, changed=True)
    assert config.idle_timeout == 600.0
    assert disabled.idle_timeout == 0.0  # a disabled timer stays disabled


# --------------------------------------------------------------------------- a proxy under injected pressure

ACTION_MONITORS = {
    "stop_accepting_requests": ("requests", {"threshold": {"value": 0.95}}),
    "disable_http_keepalive": ("keepalive", {"threshold": {"value": 0.5}}),
    "reject_incoming_connections": ("reject", {"threshold": {"value": 0.5}}),
    "stop_accepting_connections": ("pause", {"threshold": {"value": 0.5}}),
    "reduce_timeouts": ("timeouts", {"threshold": {"value": 0.5}}),
}


class Overloaded:
    def __init__(self, proxy: ProxyProcess, port: int, files: dict[str, Path], log: Path) -> None:
        self.proxy = proxy
        self.port = port
        self.files = files
        self.log = log
        self.lines_seen = 0

    def press(self, action: str, pressure: float) -> None:
        """Write the action's monitor file and wait until the proxy's refresh has applied it."""
        monitor = ACTION_MONITORS[action][0]
        self.files[monitor].write_text(str(pressure))
        expected = int(pressure * 100)
        assert wait_until(lambda: self.proxy.stats().get(f"overload.{monitor}.pressure") == expected, 10), (
            monitor, self.proxy.stats().get(f"overload.{monitor}.pressure"))

    def active(self, action: str) -> int:
        return self.proxy.stats()[f"overload.{ACTIONS}{action}.active"]

    def stat(self, name: str) -> int:
        return self.proxy.stats().get(name, 0)

    def new_log_lines(self, count: int) -> list[str]:
        lines = read_lines(self.log, self.lines_seen + count)
        fresh = lines[self.lines_seen:]
        self.lines_seen = len(lines)
        return fresh


@pytest.fixture(scope="module")
def overloaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overloaded]:
    tmp_path = tmp_path_factory.mktemp("overload")
    files = {monitor: tmp_path / monitor for monitor, _ in ACTION_MONITORS.values()}
    for path in files.values():
        path.write_text("0")
    actions = []
    for action, (monitor, trigger) in ACTION_MONITORS.items():
        entry: dict[str, Any] = {"name": ACTIONS + action, "triggers": [{"name": monitor, **trigger}]}
        if action == "reduce_timeouts":
            entry["typed_config"] = {"@type": SCALE_TIMERS, "timer_scale_factors": [
                {"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_timeout": "0.2s"}]}
        actions.append(entry)
    port = free_port()
    log = tmp_path / "access.log"
    config = bootstrap([http_listener(
        "ingress", port, DIRECT_OK, common_http_protocol_options={"idle_timeout": "60s"},
        access_log=file_access_log(log, "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"))], [])
    config["overload_manager"] = {
        "refresh_interval": "0.05s",
        "resource_monitors": [{"name": monitor, "typed_config": {"@type": INJECTED, "filename": str(path)}}
                              for monitor, path in files.items()],
        "actions": actions,
    }
    with ProxyProcess(config, tmp_path) as proxy:
        yield Overloaded(proxy, port, files, log)


def test_stop_accepting_requests_answers_503_envoy_overloaded_until_pressure_drops(overloaded: Overloaded) -> None:
    with Client(overloaded.port) as client:
        assert client.request("GET", "/").status == 200
        overloaded.press("stop_accepting_requests", 0.99)
        try:
            assert overloaded.active("stop_accepting_requests") == 1
            response = client.request("GET", "/")  # existing connections' new requests too
            assert response.status == 503
            assert response.body == b"envoy overloaded"
            with Client(overloaded.port) as fresh:
                assert fresh.request("GET", "/").status == 503
            assert overloaded.stat("http.ingress.downstream_rq_overload_close") >= 2
        finally:
            overloaded.press("stop_accepting_requests", 0)
        assert overloaded.active("stop_accepting_requests") == 0
        assert client.request("GET", "/").status == 200
    lines = overloaded.new_log_lines(4)
    assert lines[1] == "503 - overload"  # Envoy sets no response flag for it, only the details
    assert lines[-1].startswith("200 ")


def test_disable_http_keepalive_closes_connections_after_their_response(overloaded: Overloaded) -> None:
    before = overloaded.stat("http.ingress.downstream_cx_overload_disable_keepalive")
    overloaded.press("disable_http_keepalive", 0.6)
    try:
        with Client(overloaded.port) as client:
            response = client.request("GET", "/")
            assert response.status == 200
            assert response.header("connection") == "close"
            assert wait_until(client.closed_by_peer)
        assert overloaded.stat("http.ingress.downstream_cx_overload_disable_keepalive") == before + 1
    finally:
        overloaded.press("disable_http_keepalive", 0)
    with Client(overloaded.port) as client:
        assert client.request("GET", "/").header("connection") is None
    overloaded.new_log_lines(2)


def test_reject_incoming_connections_closes_them_at_accept(overloaded: Overloaded) -> None:
    stat = f"listener.127.0.0.1_{overloaded.port}.downstream_cx_overload_reject"
    total = f"listener.127.0.0.1_{overloaded.port}.downstream_cx_total"
    accepted_before = overloaded.stat(total)
    overloaded.press("reject_incoming_connections", 1.0)
    try:
        with Client(overloaded.port) as client, pytest.raises(OSError):
            client.request("GET", "/")
        assert overloaded.stat(stat) >= 1
        assert overloaded.stat(total) == accepted_before  # never became a connection of the listener
    finally:
        overloaded.press("reject_incoming_connections", 0)
    with Client(overloaded.port) as client:
        assert client.request("GET", "/").status == 200
    overloaded.new_log_lines(1)


def test_stop_accepting_connections_leaves_new_ones_in_the_backlog_until_resumed(overloaded: Overloaded) -> None:
    with Client(overloaded.port) as established:
        assert established.request("GET", "/").status == 200
        overloaded.press("stop_accepting_connections", 1.0)
        try:
            assert overloaded.active("stop_accepting_connections") == 1
            waiting = Client(overloaded.port, timeout=0.5)  # the kernel completes the handshake
            waiting.send(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            with pytest.raises(socket.timeout):
                waiting.response()
            assert established.request("GET", "/").status == 200  # open connections carry on
        finally:
            overloaded.press("stop_accepting_connections", 0)
        waiting.sock.settimeout(10)
        assert waiting.response().status == 200
        waiting.close()
    overloaded.new_log_lines(3)


def test_reduce_timeouts_closes_idle_connections_at_the_scaled_timeout(overloaded: Overloaded) -> None:
    before = overloaded.stat("http.ingress.downstream_cx_idle_timeout")
    with Client(overloaded.port, timeout=10) as client:
        assert client.request("GET", "/").status == 200
        overloaded.press("reduce_timeouts", 1.0)
        try:
            # idle_timeout 60s scaled to its 0.2s minimum
            assert wait_until(client.closed_by_peer, 5)
        finally:
            overloaded.press("reduce_timeouts", 0)
    assert overloaded.stat("http.ingress.downstream_cx_idle_timeout") == before + 1
    with Client(overloaded.port) as client:
        assert client.request("GET", "/").status == 200
        client.sock.settimeout(0.5)
        assert not client.closed_by_peer()  # back to 60s
    overloaded.new_log_lines(2)


# --------------------------------------------------------------------------- one connection limit for all workers


def test_global_downstream_max_connections_holds_across_workers(tmp_path: Path) -> None:
    port = free_port()
    config = bootstrap([http_listener("ingress", port, DIRECT_OK)], [])
    config["overload_manager"] = {"refresh_interval": "0.05s", "resource_monitors": [{
        "name": "envoy.resource_monitors.global_downstream_max_connections",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3"
                     ".DownstreamConnectionsConfig",
            "max_active_downstream_connections": 4}}]}
    with ProxyProcess(config, tmp_path, concurrency=2) as proxy:
        served: list[Client] = []
        refused = 0
        for _ in range(10):
            client = Client(port)
            try:
                assert client.request("GET", "/").status == 200
                served.append(client)
            except OSError:
                refused += 1
                client.close()
        assert (len(served), refused) == (4, 6)
        overflow = f"listener.127.0.0.1_{port}.downstream_global_cx_overflow"
        assert proxy.stats()[overflow] == 6
        pressure = "overload.envoy.resource_monitors.global_downstream_max_connections.pressure"
        assert wait_until(lambda: proxy.stats()[pressure] == 100)
        served.pop().close()  # its slot is given back when the proxy sees it close

        def one_more() -> bool:
            try:
                with Client(port) as client:
                    return client.request("GET", "/").status == 200
            except OSError:
                return False

        assert wait_until(one_more)
        for client in served:
            client.close()
        assert wait_until(lambda: proxy.stats()[pressure] == 0)
