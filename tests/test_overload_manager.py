"""The overload manager: config validation (Envoy's errors), triggers, the refresh loop and its stats."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.overload.v3 import overload_pb2

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.overload.manager import OverloadManager, Trigger
from tulle.server.context import ServerState
from tulle.server.worker import Worker
from tulle.stats.store import Store

INJECTED = "type.googleapis.com/envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig"
STOP_REQUESTS = "envoy.overload_actions.stop_accepting_requests"
KEEPALIVE = "envoy.overload_actions.disable_http_keepalive"


def injected(name: str, path: Path | str) -> dict[str, Any]:
    return {"name": name, "typed_config": {"@type": INJECTED, "filename": str(path)}}


def action(name: str, *triggers: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "triggers": list(triggers), **extra}


def threshold(resource: str, value: float) -> dict[str, Any]:
    return {"name": resource, "threshold": {"value": value}}


def scaled(resource: str, low: float, high: float) -> dict[str, Any]:
    return {"name": resource, "scaled": {"scaling_threshold": low, "saturation_threshold": high}}


def build(doc: dict[str, Any], store: Store | None = None, concurrency: int = 1) -> OverloadManager:
    proto = parse_message(doc, overload_pb2.OverloadManager)
    return OverloadManager.from_proto(proto, "overload_manager", store or Store(), ServerState(concurrency=concurrency))


def refused(doc: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        build(doc)
    return caught.value


# --------------------------------------------------------------------------- triggers


def test_threshold_trigger_is_saturated_at_or_above_its_value() -> None:
    trigger = Trigger(0.9, 0.9)
    for pressure, expected in [(0.0, 0.0), (0.89, 0.0), (0.9, 1.0), (1.0, 1.0), (0.5, 0.0)]:
        trigger.update(pressure)
        assert trigger.value == expected, pressure


def test_scaled_trigger_ramps_between_its_thresholds() -> None:
    trigger = Trigger(0.5, 0.9)
    for pressure, expected in [(0.5, 0.0), (0.6, 0.25), (0.7, 0.5), (0.9, 1.0), (0.95, 1.0), (0.1, 0.0)]:
        trigger.update(pressure)
        assert trigger.value == pytest.approx(expected), pressure


# --------------------------------------------------------------------------- refresh


def test_refresh_sets_pressure_and_action_stats_and_the_state(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("0.2")
    b.write_text("0.2")
    store = Store()
    manager = build({
        "refresh_interval": "0.05s",
        "resource_monitors": [injected("heap_a", a), injected("heap_b", b)],
        "actions": [action(STOP_REQUESTS, threshold("heap_a", 0.95)),
                    action(KEEPALIVE, scaled("heap_a", 0.5, 0.9), scaled("heap_b", 0.0, 1.0))],
    }, store)
    state = manager.state
    manager.refresh()
    assert store.gauges["overload.heap_a.pressure"].value == 20
    assert state.stop_accepting_requests == 0.0
    # an action's state is the max of its triggers': heap_b's 0.2 over heap_a's 0
    assert state.disable_http_keepalive == pytest.approx(0.2)
    assert store.gauges[f"overload.{KEEPALIVE}.scale_percent"].value == 20
    assert store.gauges[f"overload.{KEEPALIVE}.active"].value == 0
    a.write_text("0.99")
    manager.refresh()
    assert state.stop_accepting_requests == 1.0
    assert state.disable_http_keepalive == 1.0
    assert store.gauges[f"overload.{STOP_REQUESTS}.active"].value == 1
    assert store.gauges[f"overload.{STOP_REQUESTS}.scale_percent"].value == 100
    assert store.gauges["overload.heap_a.pressure"].value == int(0.99 * 100)  # truncated, as Envoy's gauge
    a.write_text("0.7")
    manager.refresh()
    assert state.stop_accepting_requests == 0.0
    assert state.disable_http_keepalive == pytest.approx(0.5)
    assert store.gauges[f"overload.{STOP_REQUESTS}.active"].value == 0
    # gauges are one worker's view, not summed across workers
    assert not store.gauges["overload.heap_a.pressure"].per_worker
    assert not store.gauges[f"overload.{STOP_REQUESTS}.active"].per_worker


def test_a_failed_update_is_counted_and_keeps_the_state(tmp_path: Path) -> None:
    path = tmp_path / "pressure"
    path.write_text("1")
    store = Store()
    manager = build({"resource_monitors": [injected("r", path)], "actions": [action(STOP_REQUESTS, threshold("r", 0.5))]},
                    store)
    manager.refresh()
    assert manager.state.stop_accepting_requests == 1.0
    path.write_text("garbage")
    manager.refresh()
    path.unlink()
    manager.refresh()
    assert store.counters["overload.r.failed_updates"].value == 2
    assert store.counters["overload.r.skipped_updates"].value == 0
    assert manager.state.stop_accepting_requests == 1.0
    assert store.gauges["overload.r.pressure"].value == 100


class ManualHandle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualLoop:
    """What the manager asks of its loop (``time``, ``call_at``), on a clock only the test moves:
    ``run_until`` runs what fell due as a loop waking up at that moment would (late, if it is)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.handles: list[ManualHandle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> ManualHandle:
        handle = ManualHandle(when, callback)
        self.handles.append(handle)
        return handle

    def pending(self) -> list[float]:
        return [handle.when for handle in self.handles if not handle.cancelled]

    def run_until(self, moment: float) -> None:
        self.now = moment
        while due := [handle for handle in self.handles if not handle.cancelled and handle.when <= moment]:
            handle = min(due, key=lambda handle: handle.when)
            self.handles.remove(handle)
            handle.callback()


def test_the_refresh_timer_runs_every_interval_and_records_its_delay(tmp_path: Path) -> None:
    path = tmp_path / "pressure"
    path.write_text("0.1")
    store = Store()
    manager = build({"refresh_interval": "0.02s", "resource_monitors": [injected("r", path)]}, store)
    pressure, delay = store.gauges["overload.r.pressure"], store.histograms["overload.refresh_interval_delay"]
    loop = ManualLoop()
    start = loop.now
    manager.start(loop)  # type: ignore[arg-type]
    assert loop.pending() == [pytest.approx(start + 0.02)]  # Envoy's first refresh is one interval in
    loop.run_until(start + 0.019)
    assert (pressure.value, delay.count) == (0, 0)
    loop.run_until(start + 0.02)
    assert (pressure.value, delay.count, delay.sum) == (10, 1, 0.0)
    path.write_text("0.6")
    loop.run_until(start + 0.045)  # the loop wakes up 5 ms late
    assert (pressure.value, delay.count, delay.sum) == (60, 2, pytest.approx(5.0))
    assert loop.pending() == [pytest.approx(start + 0.065)]  # the next interval counts from the late refresh
    loop.run_until(start + 0.065)
    assert (delay.count, delay.sum) == (3, pytest.approx(5.0))
    manager.stop()
    loop.run_until(start + 1)
    assert delay.count == 3 and loop.pending() == []  # nothing is left running after stop


def test_default_refresh_interval_is_one_second() -> None:
    assert build({}).refresh_interval == 1.0


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(("doc", "field", "reason"), [
    ({"resource_monitors": [injected("r", "/x"), injected("r", "/y")]},
     "resource_monitors[1].name", "Duplicate resource monitor r"),
    ({"resource_monitors": [{"name": "r"}]}, "resource_monitors[0].typed_config", "typed_config is required"),
    ({"resource_monitors": [{"typed_config": {"@type": INJECTED, "filename": "/x"}}]},
     "resource_monitors[0].name", "name must not be empty"),
    ({"actions": [action("envoy.overload_actions.go_faster", threshold("r", 0.5))]},
     "actions[0].name", "Unknown Overload Manager Action envoy.overload_actions.go_faster"),
    ({"resource_monitors": [injected("r", "/x")],
      "actions": [action(STOP_REQUESTS, threshold("r", 0.5)), action(STOP_REQUESTS, threshold("r", 0.6))]},
     "actions[1].name", f"Duplicate overload action {STOP_REQUESTS}"),
    ({"actions": [action(STOP_REQUESTS, threshold("nothing", 0.5))]},
     "actions[0].triggers[0].name", f"Unknown trigger resource nothing for overload action {STOP_REQUESTS}"),
    ({"resource_monitors": [injected("r", "/x")],
      "actions": [action(STOP_REQUESTS, threshold("r", 0.5), threshold("r", 0.6))]},
     "actions[0].triggers[1].name", f"Duplicate trigger resource for overload action {STOP_REQUESTS}"),
    ({"resource_monitors": [injected("r", "/x")], "actions": [action(STOP_REQUESTS)]},
     "actions[0].triggers", "triggers must not be empty"),
    ({"resource_monitors": [injected("r", "/x")], "actions": [action(STOP_REQUESTS, {"name": "r"})]},
     "actions[0].triggers[0]", "one of threshold or scaled is required"),
    ({"resource_monitors": [injected("r", "/x")], "actions": [action(STOP_REQUESTS, threshold("r", 1.5))]},
     "actions[0].triggers[0].threshold.value", "must be in [0, 1]"),
    ({"resource_monitors": [injected("r", "/x")], "actions": [action(STOP_REQUESTS, scaled("r", 0.9, 0.5))]},
     "actions[0].triggers[0].scaled", "scaling_threshold must be less than saturation_threshold"),
    ({"resource_monitors": [injected("r", "/x")], "actions": [action(
        STOP_REQUESTS, threshold("r", 0.5),
        typed_config={"@type": "type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig"})]},
     "actions[0].typed_config", "has an unexpected value for the typed_config field"),
    ({"refresh_interval": "0s"}, "refresh_interval", "greater than 0"),
    ({"resource_monitors": [{"name": "conns", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3"
                 ".DownstreamConnectionsConfig", "max_active_downstream_connections": 10}}]},
     "resource_monitors[0].name", "must be named envoy.resource_monitors.global_downstream_max_connections"),
])
def test_invalid_configs_are_refused_with_envoys_words(doc: dict[str, Any], field: str, reason: str) -> None:
    error = refused(doc)
    assert error.field == f"overload_manager.{field}", error
    assert reason in error.reason, error


@pytest.mark.parametrize(("doc", "feature"), [
    ({"loadshed_points": [{"name": "envoy.load_shed_points.tcp_listener_accept"}]}, "loadshed_points"),
    ({"buffer_factory_config": {"minimum_account_to_track_power_of_two": 20}}, "buffer_factory_config"),
    ({"resource_monitors": [{"name": "cpu", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.resource_monitors.cpu_utilization.v3.CpuUtilizationConfig"}}]},
     "resource monitor cpu (envoy.resource_monitors.cpu_utilization"),
    ({"resource_monitors": [injected("r", "/x")],
      "actions": [action("envoy.overload_actions.shrink_heap", threshold("r", 0.5))]},
     "overload action envoy.overload_actions.shrink_heap"),
    ({"resource_monitors": [injected("r", "/x")],
      "actions": [action("envoy.overload_actions.reset_high_memory_stream", threshold("r", 0.5))]},
     "overload action envoy.overload_actions.reset_high_memory_stream"),
])
def test_valid_but_unsupported_parts_are_refused_by_name(doc: dict[str, Any], feature: str) -> None:
    with pytest.raises(UnsupportedFeature) as caught:
        build(doc)
    assert feature in str(caught.value)


# --------------------------------------------------------------------------- the bootstrap


def bootstrap(overload: dict[str, Any]) -> Any:
    return parse_message({
        "overload_manager": overload,
        "static_resources": {"listeners": [{
            "name": "ingress", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                         ".HttpConnectionManager",
                "stat_prefix": "ingress",
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            }}]}],
        }]},
    }, bootstrap_pb2.Bootstrap)


def test_bootstrap_overload_manager_reaches_listeners_and_connection_managers(tmp_path: Path) -> None:
    worker = Worker(bootstrap({"resource_monitors": [injected("r", tmp_path / "p")],
                               "actions": [action(STOP_REQUESTS, threshold("r", 0.9))]}), ServerState())
    assert worker.overload_manager is not None
    state = worker.overload_manager.state
    (listener,) = worker.listeners
    assert listener.overload is state
    assert list(state.listeners) == [listener]
    (hcm,) = state.connection_managers
    assert hcm is listener.factory.config and hcm.overload is state


def test_bootstrap_overload_manager_errors_name_the_bootstrap_field() -> None:
    with pytest.raises(ConfigError) as caught:
        Worker(bootstrap({"actions": [action(STOP_REQUESTS, threshold("r", 0.9))]}), ServerState())
    assert caught.value.field == "overload_manager.actions[0].triggers[0].name"
