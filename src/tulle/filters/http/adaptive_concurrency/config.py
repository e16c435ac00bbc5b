"""Factory for ``envoy.filters.http.adaptive_concurrency`` (Envoy's adaptive_concurrency config.cc).

Supported: ``gradient_controller_config`` (every field this API version has:
``sample_aggregate_percentile``, ``concurrency_limit_params`` ``max_concurrency_limit`` /
``concurrency_update_interval``, ``min_rtt_calc_params`` ``interval`` / ``fixed_value`` /
``request_count`` / ``jitter`` / ``min_concurrency`` / ``buffer``), ``enabled`` and
``concurrency_limit_exceeded_status``. Defaults are Envoy's (p50, 1000, 50 requests, 15%
jitter, 3, 25% buffer, 503).

``enabled`` is a RuntimeFeatureFlag: its runtime key, when the runtime sets it, overrides
``default_value`` for each new request. The ``adaptive_concurrency.gradient_controller.*``
runtime overrides of the controller's parameters are not read (see docs/runtime.md).
"""

from __future__ import annotations

from typing import Any

from tulle.config.errors import ConfigError, join
from tulle.config.support import check_fields, duration_seconds
from tulle.filters.http.adaptive_concurrency.controller import (
    GradientController,
    GradientControllerConfig,
    GradientControllerStats,
)
from tulle.filters.http.adaptive_concurrency.filter import AdaptiveConcurrencyFilter
from tulle.filters.http.base import HttpFilter
from tulle.runtime import RuntimeFlag, feature_flag

_FIELDS = ("gradient_controller_config", "enabled", "concurrency_limit_exceeded_status")
_GRADIENT_FIELDS = ("sample_aggregate_percentile", "concurrency_limit_params", "min_rtt_calc_params")
_LIMIT_FIELDS = ("max_concurrency_limit", "concurrency_update_interval")
_MIN_RTT_FIELDS = ("interval", "fixed_value", "request_count", "jitter", "min_concurrency", "buffer")


def _percent(owner: Any, name: str, default: float, field: str) -> float:
    """An envoy.type.v3.Percent field as a fraction of 1 (Envoy's PROTOBUF_PERCENT_TO_DOUBLE_OR_DEFAULT)."""
    if not owner.HasField(name):
        return default
    percent = getattr(owner, name)
    path = join(field, name)
    check_fields(percent, ("value",), path)
    if not 0.0 <= percent.value <= 100.0:
        raise ConfigError("value must be in [0, 100]", field=join(path, "value"))
    return percent.value / 100.0


def _positive_uint(owner: Any, name: str, default: int, field: str) -> int:
    if not owner.HasField(name):
        return default
    value = getattr(owner, name).value
    if value == 0:
        raise ConfigError(f"{name} must be greater than 0", field=join(field, name))
    return value


def parse_gradient_controller(proto: Any, field: str) -> GradientControllerConfig:
    check_fields(proto, _GRADIENT_FIELDS, field)
    for required in ("concurrency_limit_params", "min_rtt_calc_params"):
        if not proto.HasField(required):
            raise ConfigError(f"{required} is required", field=join(field, required))

    limits = proto.concurrency_limit_params
    limits_field = join(field, "concurrency_limit_params")
    check_fields(limits, _LIMIT_FIELDS, limits_field)
    update_field = join(limits_field, "concurrency_update_interval")
    if not limits.HasField("concurrency_update_interval"):
        raise ConfigError("concurrency_update_interval is required", field=update_field)
    update_interval = duration_seconds(limits.concurrency_update_interval)
    if update_interval <= 0:
        raise ConfigError("concurrency_update_interval must be greater than 0", field=update_field)

    min_rtt = proto.min_rtt_calc_params
    min_rtt_field = join(field, "min_rtt_calc_params")
    check_fields(min_rtt, _MIN_RTT_FIELDS, min_rtt_field)
    interval = 0.0
    if min_rtt.HasField("interval"):
        interval = duration_seconds(min_rtt.interval)
        if interval < 0.001:
            raise ConfigError("interval must be at least 1ms", field=join(min_rtt_field, "interval"))
    fixed_value = 0.0
    if min_rtt.HasField("fixed_value"):
        fixed_value = duration_seconds(min_rtt.fixed_value)
        if fixed_value <= 0:
            raise ConfigError("fixed_value must be greater than 0", field=join(min_rtt_field, "fixed_value"))
    if interval < 0.001 and fixed_value <= 0:
        # Envoy's words (its message names the wrong field; the interval meant is this one)
        raise ConfigError("adaptive_concurrency: neither `concurrency_update_interval` nor `fixed_value` set",
                          field=join(min_rtt_field, "interval"))

    return GradientControllerConfig(
        sample_rtt_calc_interval=update_interval,
        max_concurrency_limit=_positive_uint(limits, "max_concurrency_limit", 1000, limits_field),
        min_rtt_calc_interval=interval,
        fixed_min_rtt=fixed_value,
        min_rtt_aggregate_request_count=_positive_uint(min_rtt, "request_count", 50, min_rtt_field),
        jitter=_percent(min_rtt, "jitter", 0.15, min_rtt_field),
        min_concurrency=_positive_uint(min_rtt, "min_concurrency", 3, min_rtt_field),
        min_rtt_buffer=_percent(min_rtt, "buffer", 0.25, min_rtt_field),
        sample_aggregate_percentile=_percent(proto, "sample_aggregate_percentile", 0.5, field),
    )


def limit_exceeded_status(proto: Any, field: str) -> int:
    """``concurrency_limit_exceeded_status``: 503 unless set to an error status (>= 400)."""
    if not proto.HasField("concurrency_limit_exceeded_status"):
        return 503
    status_field = join(field, "concurrency_limit_exceeded_status")
    status = proto.concurrency_limit_exceeded_status
    check_fields(status, ("code",), status_field)
    if status.code == 0:
        raise ConfigError("code must be set", field=join(status_field, "code"))
    return status.code if status.code >= 400 else 503


class AdaptiveConcurrencyFactory:
    name = "envoy.filters.http.adaptive_concurrency"
    encodes = False  # the sample is taken when the stream ends (on_destroy), not per encoded chunk
    config_name = "envoy.filters.http.adaptive_concurrency"

    def __init__(self, proto: Any, field: str, hcm: Any, *, clock: Any = None) -> None:
        check_fields(proto, _FIELDS, field)
        if proto.WhichOneof("concurrency_controller_config") is None:
            raise ConfigError("gradient_controller_config is required", field=join(field, "gradient_controller_config"))
        config = parse_gradient_controller(proto.gradient_controller_config, join(field, "gradient_controller_config"))
        # Envoy's filter is on when ``enabled`` is unset; a RuntimeFlag is truthy per request
        self.enabled: bool | RuntimeFlag = True
        if proto.HasField("enabled"):
            self.enabled = feature_flag(hcm.ctx.runtime, proto.enabled, join(field, "enabled"))
        self.limit_exceeded_status = limit_exceeded_status(proto, field)
        stats = GradientControllerStats(hcm.ctx.stats, hcm.stat_prefix)
        extra = {"clock": clock} if clock is not None else {}
        self.controller = GradientController(config, stats, **extra)

    def create_filter(self, stream: Any) -> HttpFilter:
        if not self.enabled:
            return HttpFilter(stream)  # Envoy's disabled filter passes everything through
        return AdaptiveConcurrencyFilter(stream, self)
