"""Overload actions: Envoy's names, the ones Tulle runs, and what a state change does.

An action's state is a float in [0, 1] (the max over its triggers). Applying it:

- ``stop_accepting_requests``: the connection manager answers new requests 503 "envoy
  overloaded" with probability = state, before building their filter chain.
- ``disable_http_keepalive``: with probability = state a response carries Connection: close.
- ``reject_incoming_connections``: listeners close an accepted connection with probability =
  state, before any filter sees it.
- ``stop_accepting_connections``: when saturated the listeners stop calling accept()
  (connections wait in the kernel backlog) and resume when it no longer is.
- ``reduce_timeouts``: the HTTP_DOWNSTREAM_CONNECTION_IDLE timer (HCM idle_timeout) scales
  from its configured value down to its minimum as the state goes from 0 to 1.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

from tulle.config.errors import ConfigError, UnsupportedFeature, join
from tulle.config.loader import type_name_of, unpack_any
from tulle.config.support import check_fields, duration_seconds
from tulle.overload.state import OverloadState

PREFIX = "envoy.overload_actions."
STOP_ACCEPTING_REQUESTS = PREFIX + "stop_accepting_requests"
DISABLE_HTTP_KEEPALIVE = PREFIX + "disable_http_keepalive"
STOP_ACCEPTING_CONNECTIONS = PREFIX + "stop_accepting_connections"
REJECT_INCOMING_CONNECTIONS = PREFIX + "reject_incoming_connections"
REDUCE_TIMEOUTS = PREFIX + "reduce_timeouts"

# Envoy's well-known actions (OverloadActionNames); any other name is refused as Envoy refuses it.
ENVOY_ACTIONS = frozenset({
    STOP_ACCEPTING_REQUESTS, DISABLE_HTTP_KEEPALIVE, STOP_ACCEPTING_CONNECTIONS, REJECT_INCOMING_CONNECTIONS,
    REDUCE_TIMEOUTS, PREFIX + "shrink_heap", PREFIX + "reset_high_memory_stream",
    PREFIX + "close_idle_http_connections",
})

SCALE_TIMERS_TYPE = "envoy.config.overload.v3.ScaleTimersOverloadActionConfig"
HTTP_DOWNSTREAM_CONNECTION_IDLE = 1


class IdleTimeoutScaler:
    """reduce_timeouts for HTTP_DOWNSTREAM_CONNECTION_IDLE (Envoy's ScaledRangeTimerManager):
    an idle timeout configured as T becomes ``min + (T - min) * (1 - state)``. Idle connections
    are re-armed at once when it shrinks; when it grows, their earlier timer finds them not yet
    idle long enough and re-arms for the new deadline."""

    __slots__ = ("min_timeout", "min_scale", "configured")

    def __init__(self, min_timeout: float | None, min_scale: float | None) -> None:
        self.min_timeout = min_timeout
        self.min_scale = min_scale
        # connection manager config -> its idle_timeout as configured (before any scaling)
        self.configured: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def minimum(self, maximum: float) -> float:
        if self.min_timeout is not None:
            return min(self.min_timeout, maximum)
        return maximum * (self.min_scale or 0.0)

    def apply(self, state: OverloadState, value: float, *, changed: bool) -> None:
        for config in list(state.connection_managers):
            configured = self.configured.get(config)
            if configured is None:
                configured = self.configured[config] = config.idle_timeout
            elif not changed:
                continue  # already at this scale
            if not configured:
                continue  # no idle timeout: nothing to scale (Envoy: a disabled timer stays disabled)
            minimum = self.minimum(configured)
            config.idle_timeout = minimum + (configured - minimum) * (1.0 - value)
            for connection in list(config.connections):
                if not connection.streams and not connection.closed:
                    connection.watch_deadline(connection.last_activity + config.idle_timeout)


def parse_scale_timers(action: Any, field: str) -> IdleTimeoutScaler:
    """reduce_timeouts' typed_config: ScaleTimersOverloadActionConfig (HTTP_DOWNSTREAM_CONNECTION_IDLE only)."""
    config_field = join(field, "typed_config")
    if not action.HasField("typed_config"):
        raise ConfigError(f"{REDUCE_TIMEOUTS} needs a typed_config ({SCALE_TIMERS_TYPE})", field=config_field)
    if type_name_of(action.typed_config) != SCALE_TIMERS_TYPE:
        raise ConfigError(f"{REDUCE_TIMEOUTS} takes a {SCALE_TIMERS_TYPE}", field=config_field)
    config = unpack_any(action.typed_config, field=config_field)
    check_fields(config, ("timer_scale_factors",), config_field)
    timers_field = join(config_field, "timer_scale_factors")
    if len(config.timer_scale_factors) == 0:
        raise ConfigError("timer_scale_factors must not be empty", field=timers_field)
    scaler = None
    timer_names = type(config).TimerType
    for index, timer in enumerate(config.timer_scale_factors):
        path = join(timers_field, f"[{index}]")
        check_fields(timer, ("timer", "min_timeout", "min_scale"), path)
        if timer.timer == 0:
            raise ConfigError("timer must be set (not UNSPECIFIED)", field=join(path, "timer"))
        if timer.timer != HTTP_DOWNSTREAM_CONNECTION_IDLE:
            raise UnsupportedFeature(f"reduce_timeouts for timer {timer_names.Name(timer.timer)} "
                                     "(HTTP_DOWNSTREAM_CONNECTION_IDLE is)", field=join(path, "timer"))
        if scaler is not None:
            raise ConfigError(f"Found duplicate entry for timer type {timer_names.Name(timer.timer)}",
                              field=join(path, "timer"))
        kind = timer.WhichOneof("overload_adjust")
        if kind is None:
            raise ConfigError("one of min_timeout or min_scale is required", field=path)
        if kind == "min_timeout":
            scaler = IdleTimeoutScaler(duration_seconds(timer.min_timeout), None)
        else:
            check_fields(timer.min_scale, ("value",), join(path, "min_scale"))
            if not 0.0 <= timer.min_scale.value <= 100.0:
                raise ConfigError("min_scale must be in [0, 100]", field=join(path, "min_scale"))
            scaler = IdleTimeoutScaler(None, timer.min_scale.value / 100.0)
    assert scaler is not None
    return scaler


Applier = Callable[[float, bool], None]


def applier(name: str, action: Any, field: str, state: OverloadState, background: set[Any]) -> Applier:
    """What a change of ``name``'s state does in this worker: ``apply(value, changed)``.
    Called on each refresh (``changed`` False when the state did not move)."""
    if name != REDUCE_TIMEOUTS and action.HasField("typed_config"):
        raise ConfigError(f"Overload action {name} has an unexpected value for the typed_config field",
                          field=join(field, "typed_config"))
    if name == STOP_ACCEPTING_REQUESTS:
        return _setter(state, "stop_accepting_requests")
    if name == DISABLE_HTTP_KEEPALIVE:
        return _setter(state, "disable_http_keepalive")
    if name == REJECT_INCOMING_CONNECTIONS:
        state.guards_accept = True
        return _setter(state, "reject_incoming_connections")
    if name == STOP_ACCEPTING_CONNECTIONS:
        return _listener_pauser(state, background)
    if name == REDUCE_TIMEOUTS:
        scaler = parse_scale_timers(action, field)

        def scale(value: float, changed: bool) -> None:
            if changed or value > 0.0:  # while scaled, also catch connection managers added since (xDS)
                scaler.apply(state, value, changed=changed)

        return scale
    raise UnsupportedFeature(f"overload action {name}", field=join(field, "name"))


def _setter(state: OverloadState, attribute: str) -> Applier:
    def apply(value: float, changed: bool) -> None:
        if changed:
            setattr(state, attribute, value)

    return apply


def _listener_pauser(state: OverloadState, background: set[Any]) -> Applier:
    """Envoy's ConnectionHandler: saturated -> disable the listeners, else enable them."""
    paused = False

    def apply(value: float, changed: bool) -> None:
        nonlocal paused
        saturated = value >= 1.0
        if saturated == paused:
            return
        paused = saturated
        for listener in list(state.listeners):
            if saturated:
                listener.pause_accepting()
            else:
                task = asyncio.get_running_loop().create_task(listener.resume_accepting())
                background.add(task)
                task.add_done_callback(background.discard)

    return apply
