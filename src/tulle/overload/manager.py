"""The overload manager (Envoy's OverloadManagerImpl) from the bootstrap's ``overload_manager``.

Every ``refresh_interval`` (default 1 s) each resource monitor reports a pressure; each
trigger turns its monitor's pressure into a state (``threshold``: 1 at or above ``value``,
else 0; ``scaled``: 0 at or below ``scaling_threshold``, 1 at or above
``saturation_threshold``, linear between); an action's state is the max of its triggers'.
A monitor whose update fails keeps its triggers as they were (``failed_updates`` counts it).

Each worker process runs its own manager on its own loop, as each Envoy worker thread gets
the main thread's states: pressures of shared resources (the injected file, the global
connection count) agree across workers; fixed_heap measures each worker's own process.

Stats, as Envoy names them: ``overload.<monitor>.pressure`` (percent), ``.failed_updates``,
``.skipped_updates``; ``overload.<action>.active`` (1 when saturated), ``.scale_percent``;
``overload.refresh_interval_delay`` (ms the refresh ran late). The gauges are the same in
every worker for shared resources, so /stats shows one worker's (the main process's) value
instead of a sum.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from tulle.config.errors import ConfigError, UnsupportedFeature, join
from tulle.config.loader import type_name_of, unpack_any
from tulle.config.support import check_fields, duration_seconds
from tulle.extensions import registry
from tulle.overload import actions as overload_actions
from tulle.overload.monitors import (
    GLOBAL_DOWNSTREAM_MAX_CONNECTIONS,
    DownstreamConnectionsMonitor,
    MonitorError,
)
from tulle.overload.state import OverloadState
from tulle.stats.store import Store

log = logging.getLogger("tulle.overload")

OVERLOAD_MANAGER_FIELDS = ("refresh_interval", "resource_monitors", "actions")
DEFAULT_REFRESH_INTERVAL = 1.0


class Trigger:
    """One monitor's pressure -> a state in [0, 1] (Envoy's ThresholdTriggerImpl / ScaledTriggerImpl)."""

    __slots__ = ("low", "high", "value")

    def __init__(self, low: float, high: float) -> None:
        # threshold: low == high == value; scaled: low = scaling_threshold, high = saturation_threshold
        self.low = low
        self.high = high
        self.value = 0.0

    def update(self, pressure: float) -> None:
        if pressure >= self.high:
            self.value = 1.0
        elif pressure <= self.low:
            self.value = 0.0
        else:
            self.value = (pressure - self.low) / (self.high - self.low)

    @classmethod
    def from_proto(cls, trigger: Any, field: str) -> Trigger:
        kind = trigger.WhichOneof("trigger_oneof")
        if kind is None:
            raise ConfigError("one of threshold or scaled is required", field=field)
        if kind == "threshold":
            path = join(field, "threshold")
            check_fields(trigger.threshold, ("value",), path)
            value = _unit(trigger.threshold.value, join(path, "value"))
            return cls(value, value)
        path = join(field, "scaled")
        check_fields(trigger.scaled, ("scaling_threshold", "saturation_threshold"), path)
        low = _unit(trigger.scaled.scaling_threshold, join(path, "scaling_threshold"))
        high = _unit(trigger.scaled.saturation_threshold, join(path, "saturation_threshold"))
        if low >= high:
            raise ConfigError("scaling_threshold must be less than saturation_threshold", field=path)
        return cls(low, high)


def _unit(value: float, field: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ConfigError("must be in [0, 1]", field=field)
    return value


class Action:
    __slots__ = ("name", "triggers", "value", "apply", "active", "scale_percent")

    def __init__(self, name: str, triggers: dict[str, Trigger], apply: overload_actions.Applier,
                 store: Store) -> None:
        self.name = name
        self.triggers = triggers
        self.value = 0.0
        self.apply = apply
        self.active = store.gauge(f"overload.{name}.active", per_worker=False)
        self.scale_percent = store.gauge(f"overload.{name}.scale_percent", per_worker=False)

    def refresh(self) -> None:
        value = max(trigger.value for trigger in self.triggers.values())
        changed = value != self.value
        if changed:
            log.info("overload action %s is now %s", self.name,
                     "saturated" if value >= 1.0 else ("scaling" if value > 0.0 else "inactive"))
            self.value = value
            self.active.value = 1 if value >= 1.0 else 0
            self.scale_percent.value = int(value * 100)
        self.apply(value, changed)


class Resource:
    __slots__ = ("name", "monitor", "triggers", "pressure", "failed_updates", "skipped_updates")

    def __init__(self, name: str, monitor: Any, store: Store) -> None:
        self.name = name
        self.monitor = monitor
        self.triggers: list[Trigger] = []
        base = f"overload.{name}."
        self.pressure = store.gauge(base + "pressure", per_worker=False)
        self.failed_updates = store.counter(base + "failed_updates")
        # Envoy skips an update while the monitor's previous one is pending; Tulle's monitors
        # answer at once, so this stays 0 (kept for dashboards that read it).
        self.skipped_updates = store.counter(base + "skipped_updates")

    def update(self) -> None:
        try:
            pressure = self.monitor.update()
        except MonitorError as exc:
            self.failed_updates.value += 1
            log.info("failed to update resource %s: %s", self.name, exc)
            return
        self.pressure.value = int(pressure * 100)  # a percent, truncated as Envoy's gauge is
        for trigger in self.triggers:
            trigger.update(pressure)


class OverloadManager:
    def __init__(self, refresh_interval: float, resources: list[Resource], actions: list[Action],
                 state: OverloadState, store: Store, background: set[Any]) -> None:
        self.refresh_interval = refresh_interval
        self.resources = resources
        self.actions = actions
        self.state = state
        self.refresh_delay = store.histogram("overload.refresh_interval_delay")
        self.background = background  # listener resumptions under way
        self.loop: asyncio.AbstractEventLoop | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.due = 0.0

    @classmethod
    def from_proto(cls, proto: Any, field: str, store: Store, server: Any) -> OverloadManager:
        check_fields(proto, OVERLOAD_MANAGER_FIELDS, field)
        refresh_interval = DEFAULT_REFRESH_INTERVAL
        if proto.HasField("refresh_interval"):
            refresh_interval = duration_seconds(proto.refresh_interval)
            if refresh_interval <= 0:  # Envoy would refresh in a busy loop
                raise ConfigError("refresh_interval must be greater than 0", field=join(field, "refresh_interval"))
        state = OverloadState()
        resources: dict[str, Resource] = {}
        for index, monitor_proto in enumerate(proto.resource_monitors):
            path = join(field, f"resource_monitors[{index}]")
            resource = _build_resource(monitor_proto, path, store, server)
            if resource.name in resources:
                raise ConfigError(f"Duplicate resource monitor {resource.name}", field=join(path, "name"))
            resources[resource.name] = resource
            if isinstance(resource.monitor, DownstreamConnectionsMonitor):
                state.connection_limit = resource.monitor
                state.guards_accept = True
        background: set[Any] = set()
        actions: dict[str, Action] = {}
        for index, action_proto in enumerate(proto.actions):
            path = join(field, f"actions[{index}]")
            check_fields(action_proto, ("name", "triggers", "typed_config"), path)
            name = action_proto.name
            if not name:
                raise ConfigError("name must not be empty", field=join(path, "name"))
            if name not in overload_actions.ENVOY_ACTIONS:
                raise ConfigError(f"Unknown Overload Manager Action {name}", field=join(path, "name"))
            if name in actions:
                raise ConfigError(f"Duplicate overload action {name}", field=join(path, "name"))
            triggers = _build_triggers(action_proto, path, resources)
            apply = overload_actions.applier(name, action_proto, path, state, background)
            actions[name] = Action(name, triggers, apply, store)
        return cls(refresh_interval, list(resources.values()), list(actions.values()), state, store, background)

    # --- the refresh loop ------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Arm the refresh timer (Envoy's first refresh comes one interval after start)."""
        self.loop = loop
        if self.resources:
            self.due = loop.time() + self.refresh_interval
            self.timer = loop.call_at(self.due, self._on_timer)

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _on_timer(self) -> None:
        loop = self.loop
        assert loop is not None
        now = loop.time()
        self.refresh_delay.record(max(0.0, now - self.due) * 1000)
        self.refresh()
        self.due = now + self.refresh_interval
        self.timer = loop.call_at(self.due, self._on_timer)

    def refresh(self) -> None:
        for resource in self.resources:
            resource.update()
        for action in self.actions:
            action.refresh()


def _build_resource(proto: Any, field: str, store: Store, server: Any) -> Resource:
    check_fields(proto, ("name", "typed_config"), field)
    if not proto.name:
        raise ConfigError("name must not be empty", field=join(field, "name"))
    if not proto.HasField("typed_config"):
        raise ConfigError("typed_config is required", field=join(field, "typed_config"))
    type_name = type_name_of(proto.typed_config)
    factory = registry.resolve(registry.RESOURCE_MONITORS, type_name)
    if factory is None:
        raise UnsupportedFeature(f"resource monitor {registry.describe(proto.name, type_name)}", field=field)
    config_field = join(field, "typed_config")
    monitor = factory(unpack_any(proto.typed_config, field=config_field), config_field, server)
    if isinstance(monitor, DownstreamConnectionsMonitor) and proto.name != GLOBAL_DOWNSTREAM_MAX_CONNECTIONS:
        # Envoy finds this proactive resource by that name (listeners ask for it by name)
        raise ConfigError(f"the downstream connections monitor must be named {GLOBAL_DOWNSTREAM_MAX_CONNECTIONS}",
                          field=join(field, "name"))
    return Resource(proto.name, monitor, store)


def _build_triggers(action: Any, field: str, resources: dict[str, Resource]) -> dict[str, Trigger]:
    if len(action.triggers) == 0:
        raise ConfigError("triggers must not be empty", field=join(field, "triggers"))
    triggers: dict[str, Trigger] = {}
    for index, trigger_proto in enumerate(action.triggers):
        path = join(field, f"triggers[{index}]")
        check_fields(trigger_proto, ("name", "threshold", "scaled"), path)
        resource = resources.get(trigger_proto.name)
        if resource is None:
            raise ConfigError(f"Unknown trigger resource {trigger_proto.name} for overload action {action.name}",
                              field=join(path, "name"))
        if trigger_proto.name in triggers:
            raise ConfigError(f"Duplicate trigger resource for overload action {action.name}",
                              field=join(path, "name"))
        trigger = triggers[trigger_proto.name] = Trigger.from_proto(trigger_proto, path)
        resource.triggers.append(trigger)
    return triggers
