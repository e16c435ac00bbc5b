"""AdaptiveConcurrency config: Envoy's defaults, validation and refusals, through a real HCM config."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.bootstrap.v3.bootstrap_pb2 import LayeredRuntime
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from tulle.config.errors import ConfigError
from tulle.config.loader import parse_message
from tulle.filters.http.adaptive_concurrency.config import AdaptiveConcurrencyFactory
from tulle.filters.http.adaptive_concurrency.filter import AdaptiveConcurrencyFilter
from tulle.filters.http.base import HttpFilter
from tulle.filters.network.http_connection_manager.config import HttpConnectionManagerFactory
from tulle.runtime import Runtime
from tulle.server.context import FactoryContext, ServerState
from tulle.stats.store import Store

FIELD = "hcm"
TYPE = "type.googleapis.com/envoy.extensions.filters.http.adaptive_concurrency.v3.AdaptiveConcurrency"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
MINIMAL = {"concurrency_limit_params": {"concurrency_update_interval": "0.1s"},
           "min_rtt_calc_params": {"interval": "30s"}}


def build(config: dict[str, Any], *, name: str = "envoy.filters.http.adaptive_concurrency",
          runtime: Runtime | None = None) -> tuple[AdaptiveConcurrencyFactory, Store]:
    store = Store()
    doc = {
        "stat_prefix": "ingress",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 200}}]}]},
        "http_filters": [{"name": name, "typed_config": {"@type": TYPE, **config}}, ROUTER],
    }
    ctx = FactoryContext(stats=store, cluster_manager=None, server=ServerState())  # type: ignore[arg-type]
    if runtime is not None:
        ctx.runtime = runtime
    factory = HttpConnectionManagerFactory(parse_message(doc, hcm_pb2.HttpConnectionManager), FIELD, ctx)
    return factory.config.filter_factories[0], store


def gradient(**overrides: Any) -> dict[str, Any]:
    config = {key: dict(value) for key, value in MINIMAL.items()}
    for key, value in overrides.items():
        if key in config:
            config[key].update(value)
        else:
            config[key] = value
    return {"gradient_controller_config": config}


def refused(config: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        build(config)
    return caught.value


def test_envoy_defaults() -> None:
    factory, store = build(gradient())
    config = factory.controller.config
    assert (config.sample_aggregate_percentile, config.max_concurrency_limit, config.min_rtt_aggregate_request_count,
            config.jitter, config.min_concurrency, config.min_rtt_buffer) == (0.5, 1000, 50, 0.15, 3, 0.25)
    assert (config.sample_rtt_calc_interval, config.min_rtt_calc_interval, config.fixed_min_rtt) == (0.1, 30.0, 0.0)
    assert factory.enabled and factory.limit_exceeded_status == 503
    assert factory.config_name == "envoy.filters.http.adaptive_concurrency"
    prefix = "http.ingress.adaptive_concurrency.gradient_controller."
    assert store.gauges[prefix + "concurrency_limit"].value == 3
    assert {"rq_blocked"} <= {n[len(prefix):] for n in store.counters if n.startswith(prefix)}
    assert {"min_rtt_calculation_active", "min_rtt_msecs", "sample_rtt_msecs", "gradient", "burst_queue_size"} <= {
        n[len(prefix):] for n in store.gauges if n.startswith(prefix)}


def test_every_field_parsed() -> None:
    factory, _ = build({
        **gradient(sample_aggregate_percentile={"value": 90},
                   concurrency_limit_params={"max_concurrency_limit": 200},
                   min_rtt_calc_params={"request_count": 20, "jitter": {"value": 10}, "min_concurrency": 5,
                                        "buffer": {"value": 50}, "fixed_value": "0.05s"}),
        "enabled": {"default_value": True, "runtime_key": "adaptive_concurrency.enabled"},
        "concurrency_limit_exceeded_status": {"code": 429},
    })
    config = factory.controller.config
    assert (config.sample_aggregate_percentile, config.max_concurrency_limit, config.min_rtt_aggregate_request_count,
            config.jitter, config.min_concurrency, config.min_rtt_buffer, config.fixed_min_rtt) == (
        0.9, 200, 20, 0.1, 5, 0.5, 0.05)
    assert factory.limit_exceeded_status == 429


def test_status_below_400_means_503() -> None:
    factory, _ = build({**gradient(), "concurrency_limit_exceeded_status": {"code": 302}})
    assert factory.limit_exceeded_status == 503


def test_disabled_by_runtime_flag_default_is_a_pass_through() -> None:
    factory, _ = build({**gradient(), "enabled": {"default_value": False, "runtime_key": "k"}})
    flt = factory.create_filter(object())
    assert type(flt) is HttpFilter
    enabled, _ = build(gradient())
    assert isinstance(enabled.create_filter(object()), AdaptiveConcurrencyFilter)


def test_enabled_follows_its_runtime_key_per_request() -> None:
    runtime = Runtime.from_proto(parse_message({"layers": [{"name": "admin", "admin_layer": {}}]}, LayeredRuntime),
                                 "layered_runtime")
    factory, _ = build({**gradient(), "enabled": {"default_value": True, "runtime_key": "ac.enabled"}},
                       runtime=runtime)
    assert isinstance(factory.create_filter(object()), AdaptiveConcurrencyFilter)
    runtime.merge_admin({"ac.enabled": "false"})
    assert type(factory.create_filter(object())) is HttpFilter  # off: Envoy's pass-through
    runtime.merge_admin({"ac.enabled": "1"})  # an integer is a boolean too (non-zero: on)
    assert isinstance(factory.create_filter(object()), AdaptiveConcurrencyFilter)


def test_fixed_value_alone_disables_min_rtt_sampling() -> None:
    config = {"gradient_controller_config": {
        "concurrency_limit_params": {"concurrency_update_interval": "1s"},
        "min_rtt_calc_params": {"fixed_value": "0.02s"}}}
    factory, _ = build(config)
    assert not factory.controller.sampling_min_rtt


@pytest.mark.parametrize(("config", "field", "reason"), [
    ({}, "gradient_controller_config", "gradient_controller_config is required"),
    ({"gradient_controller_config": {"min_rtt_calc_params": {"interval": "1s"}}},
     "gradient_controller_config.concurrency_limit_params", "is required"),
    ({"gradient_controller_config": {"concurrency_limit_params": {"concurrency_update_interval": "1s"}}},
     "gradient_controller_config.min_rtt_calc_params", "is required"),
    ({"gradient_controller_config": {"concurrency_limit_params": {"max_concurrency_limit": 5},
                                     "min_rtt_calc_params": {"interval": "1s"}}},
     "concurrency_limit_params.concurrency_update_interval", "is required"),
    (gradient(concurrency_limit_params={"concurrency_update_interval": "0s"}),
     "concurrency_update_interval", "greater than 0"),
    (gradient(concurrency_limit_params={"max_concurrency_limit": 0}), "max_concurrency_limit", "greater than 0"),
    (gradient(min_rtt_calc_params={"interval": "0.0005s"}), "min_rtt_calc_params.interval", "at least 1ms"),
    ({"gradient_controller_config": {"concurrency_limit_params": {"concurrency_update_interval": "1s"},
                                     "min_rtt_calc_params": {"request_count": 5}}},
     "min_rtt_calc_params.interval", "neither `concurrency_update_interval` nor `fixed_value` set"),
    (gradient(min_rtt_calc_params={"fixed_value": "0s"}), "fixed_value", "greater than 0"),
    (gradient(min_rtt_calc_params={"request_count": 0}), "request_count", "greater than 0"),
    (gradient(min_rtt_calc_params={"min_concurrency": 0}), "min_concurrency", "greater than 0"),
    (gradient(min_rtt_calc_params={"jitter": {"value": 101}}), "jitter.value", "[0, 100]"),
    (gradient(sample_aggregate_percentile={"value": -1}), "sample_aggregate_percentile.value", "[0, 100]"),
    ({**gradient(), "enabled": {"default_value": True}}, "enabled.runtime_key", "runtime_key is required"),
    ({**gradient(), "concurrency_limit_exceeded_status": {}}, "concurrency_limit_exceeded_status.code",
     "must be set"),
])
def test_invalid_configs_name_the_field(config: dict[str, Any], field: str, reason: str) -> None:
    error = refused(config)
    assert field in error.field, error
    assert reason in error.reason, error
