"""envoy.filters.http.fault config: what an HTTPFault compiles to, Envoy's validation, the
refusals that name the unsupported field, the stats it defines and its registrations."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.filters.http.fault.v3 import fault_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.extensions import registry
from tulle.filters.http.fault.config import FaultFactory, FaultSettings, parse_per_route_config
from tulle.filters.network.http_connection_manager.config import HcmConfig, HttpConnectionManagerFactory
from tulle.http.headers import HeaderMap
from tulle.server.context import FactoryContext, ServerState
from tulle.stats.store import Store

FIELD = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
FAULT_FIELD = f"{FIELD}.http_filters[0].typed_config"
FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


class NoClusters:
    def get(self, name: str) -> None:
        return None


def hcm(fault: dict[str, Any] | None, *, name: str = "envoy.filters.http.fault",
        store: Store | None = None) -> HcmConfig:
    fault_filter: dict[str, Any] = {"name": name}
    if fault is not None:
        fault_filter["typed_config"] = {"@type": FAULT_TYPE, **fault}
    doc = {
        "stat_prefix": "ingress_http",
        "route_config": {"name": "local", "validate_clusters": False, "virtual_hosts": [
            {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}]},
        "http_filters": [fault_filter, ROUTER],
    }
    ctx = FactoryContext(stats=store or Store(), cluster_manager=NoClusters(), server=ServerState())  # type: ignore[arg-type]
    return HttpConnectionManagerFactory(parse_message(doc, hcm_pb2.HttpConnectionManager), FIELD, ctx).config


def factory(fault: dict[str, Any] | None, **kwargs: Any) -> FaultFactory:
    built = hcm(fault, **kwargs).filter_factories[0]
    assert isinstance(built, FaultFactory)
    return built


def settings(fault: dict[str, Any], field: str = "fault") -> FaultSettings:
    return FaultSettings(parse_message(fault, fault_pb2.HTTPFault), field)


def refused(fault: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        hcm(fault)
    return caught.value


# --------------------------------------------------------------------------- what it compiles to


def test_fixed_delay_and_http_abort() -> None:
    built = factory({
        "delay": {"fixed_delay": "1.5s", "percentage": {"numerator": 25, "denominator": "TEN_THOUSAND"}},
        "abort": {"http_status": 503, "percentage": {"numerator": 7}},
    })
    delay, abort = built.settings.delay, built.settings.abort
    assert delay is not None and abort is not None
    assert delay.fixed_ms == 1500
    assert (delay.percentage.numerator, delay.percentage.denominator) == (25, 10_000)
    assert (abort.http_status, abort.grpc_status, abort.from_header) == (503, None, False)
    assert (abort.percentage.numerator, abort.percentage.denominator) == (7, 100)  # HUNDRED is the default
    assert built.settings.can_inject


def test_delay_is_truncated_to_whole_milliseconds_like_protobuf_get_ms() -> None:
    delay = settings({"delay": {"fixed_delay": "0.0019s", "percentage": {"numerator": 100}}}).delay
    assert delay is not None and delay.fixed_ms == 1


def test_header_controlled_delay_and_abort() -> None:
    compiled = settings({"delay": {"header_delay": {}, "percentage": {"numerator": 100}},
                         "abort": {"header_abort": {}, "percentage": {"numerator": 50, "denominator": "MILLION"}}})
    assert compiled.delay is not None and compiled.delay.fixed_ms is None
    assert compiled.abort is not None and compiled.abort.from_header
    assert (compiled.abort.percentage.numerator, compiled.abort.percentage.denominator) == (50, 1_000_000)


def test_grpc_abort() -> None:
    abort = settings({"abort": {"grpc_status": 14, "percentage": {"numerator": 100}}}).abort
    assert abort is not None and (abort.http_status, abort.grpc_status) == (None, 14)


def test_an_unset_percentage_is_zero_so_nothing_can_be_injected() -> None:
    compiled = settings({"delay": {"fixed_delay": "1s"}, "abort": {"http_status": 500}})
    assert compiled.delay is not None and compiled.delay.percentage.numerator == 0
    assert not compiled.can_inject


def test_the_envoy_fault_injection_example_at_zero_percent_injects_nothing() -> None:
    compiled = settings({"abort": {"http_status": 503, "percentage": {"numerator": 0, "denominator": "HUNDRED"}},
                         "delay": {"fixed_delay": "3s", "percentage": {"numerator": 0, "denominator": "HUNDRED"}}})
    assert not compiled.can_inject


def test_an_empty_fault_filter_is_valid_and_does_nothing() -> None:
    # Istio puts an empty HTTPFault in http_filters and the faults in each route's config.
    built = factory({})
    assert built.settings.delay is None and built.settings.abort is None
    assert not built.settings.can_inject


class RouteWith:
    def __init__(self, per_route: dict[str, Any]) -> None:
        self.per_route = per_route

    def per_filter_config(self, name: str) -> Any:
        return self.per_route.get(name)


class StreamOn:
    def __init__(self, route: Any) -> None:
        self.route = route

    def get_route(self) -> Any:
        return self.route


def test_an_idle_filter_joins_only_the_chains_of_routes_with_their_own_fault() -> None:
    # Istio's shape: nothing at the filter level, faults per route. Other requests skip the filter.
    idle = factory({})
    assert idle.skippable
    assert idle.create_filter(StreamOn(None)) is None
    assert idle.create_filter(StreamOn(RouteWith({}))) is None
    per_route = settings({"abort": {"http_status": 503, "percentage": {"numerator": 100}}})
    assert idle.create_filter(StreamOn(RouteWith({"envoy.filters.http.fault": per_route}))) is not None
    # a filter-level fault that can fire is in every chain
    active = factory({"abort": {"http_status": 503, "percentage": {"numerator": 1}}})
    assert not active.skippable and active.create_filter(StreamOn(RouteWith({}))) is not None


def test_a_name_only_filter_gets_the_empty_config() -> None:
    built = factory(None)
    assert not built.settings.can_inject
    assert built.config_name == "envoy.filters.http.fault"


def test_per_route_configs_are_looked_up_by_the_name_in_http_filters() -> None:
    assert factory({}, name="my_faults").config_name == "my_faults"


def test_matchers_nodes_cluster_and_limits() -> None:
    compiled = settings({
        "abort": {"http_status": 500, "percentage": {"numerator": 100}},
        "headers": [{"name": "x-user", "string_match": {"exact": "tester"}}],
        "downstream_nodes": ["node-a", "node-b"],
        "upstream_cluster": "backend",
        "max_active_faults": 3,
        "disable_downstream_cluster_stats": True,
    })
    (matcher,) = compiled.header_matchers
    assert matcher(HeaderMap([("x-user", "tester")]))
    assert not matcher(HeaderMap([("x-user", "someone")]))
    assert compiled.downstream_nodes == frozenset({"node-a", "node-b"})
    assert compiled.upstream_cluster == "backend"
    assert compiled.max_active_faults == 3
    assert compiled.downstream_cluster_stats is False
    assert settings({}).max_active_faults is None  # unset: no limit
    assert settings({}).downstream_cluster_stats is True


def test_runtime_key_names_are_accepted_since_no_runtime_can_override_them() -> None:
    compiled = settings({"abort": {"http_status": 503, "percentage": {"numerator": 100}},
                         "abort_percent_runtime": "my.abort_percent", "delay_duration_runtime": "my.delay"})
    assert compiled.abort is not None and compiled.abort.percentage.numerator == 100


def test_per_route_parser_returns_the_same_settings() -> None:
    proto = parse_message({"abort": {"http_status": 418, "percentage": {"numerator": 100}}}, fault_pb2.HTTPFault)
    parsed = parse_per_route_config(proto, "route.typed_per_filter_config['envoy.filters.http.fault']")
    assert isinstance(parsed, FaultSettings)
    assert parsed.abort is not None and parsed.abort.http_status == 418


# --------------------------------------------------------------------------- validation (Envoy's PGV rules)


@pytest.mark.parametrize(
    ("fault", "path", "reason"),
    [
        ({"abort": {"percentage": {"numerator": 100}}}, "abort", "one of http_status, grpc_status or header_abort"),
        ({"abort": {"http_status": 600}}, "abort.http_status", "[200, 600)"),
        ({"abort": {"http_status": 199}}, "abort.http_status", "[200, 600)"),
        ({"delay": {"percentage": {"numerator": 100}}}, "delay", "one of fixed_delay or header_delay"),
        ({"delay": {"fixed_delay": "0s"}}, "delay.fixed_delay", "greater than 0s"),
        ({"delay": {"fixed_delay": "-1s"}}, "delay.fixed_delay", "greater than 0s"),
        ({"headers": [{"name": "", "present_match": True}]}, "headers[0].name", "must not be empty"),
    ],
)
def test_invalid_configs_are_config_errors_naming_the_field(fault: dict[str, Any], path: str, reason: str) -> None:
    error = refused(fault)
    assert not isinstance(error, UnsupportedFeature)
    assert error.field == f"{FAULT_FIELD}.{path}"
    assert reason in error.reason


@pytest.mark.parametrize(
    ("fault", "path"),
    [
        ({"response_rate_limit": {"fixed_limit": {"limit_kbps": 10}, "percentage": {"numerator": 100}}},
         "response_rate_limit"),
        ({"filter_metadata": {"fields": {"k": {"string_value": "v"}}}}, "filter_metadata"),
    ],
)
def test_unsupported_fields_are_refused_with_their_path(fault: dict[str, Any], path: str) -> None:
    error = refused(fault)
    assert isinstance(error, UnsupportedFeature)
    assert error.field == f"{FAULT_FIELD}.{path}"
    assert path.rsplit(".", 1)[-1] in error.feature


# --------------------------------------------------------------------------- stats and registry


def test_stats_have_envoy_names_under_the_connection_managers_prefix() -> None:
    store = Store()
    built = factory({}, store=store)
    for name in ("delays_injected", "aborts_injected", "faults_overflow", "response_rl_injected"):
        assert store.counters[f"http.ingress_http.fault.{name}"].value == 0
    assert store.gauges["http.ingress_http.fault.active_faults"].value == 0
    built.stats.downstream_cluster("web", "aborts_injected").value += 1
    assert store.counters["http.ingress_http.fault.web.aborts_injected"].value == 1


def test_two_fault_filters_of_one_connection_manager_share_their_stats() -> None:
    store = Store()
    config = hcm({}, store=store)
    other = FaultFactory(parse_message({}, fault_pb2.HTTPFault), "other", config)
    assert other.stats.active_faults is config.filter_factories[0].stats.active_faults


def test_random_source_can_be_injected() -> None:
    config = hcm({})
    injected = FaultFactory(parse_message({}, fault_pb2.HTTPFault), "f", config, random_value=lambda: 42)
    assert injected.random_value() == 42
    assert 0 <= config.filter_factories[0].random_value() < 2**64


def test_registrations() -> None:
    type_name = "envoy.extensions.filters.http.fault.v3.HTTPFault"
    assert registry.resolve(registry.HTTP_FILTERS, type_name) is FaultFactory
    assert registry.resolve(registry.PER_ROUTE_FILTER_CONFIGS, type_name) is parse_per_route_config
    assert registry.NAME_TO_TYPE["envoy.filters.http.fault"] == type_name
    assert registry.canonical_name(type_name) == "envoy.filters.http.fault"
    # the router has no per-route config
    assert registry.resolve(registry.PER_ROUTE_FILTER_CONFIGS, "envoy.extensions.filters.http.router.v3.Router") is None


def test_the_fault_filter_does_not_slow_the_response_path() -> None:
    config = hcm({"abort": {"http_status": 503, "percentage": {"numerator": 100}}})
    assert FaultFactory.encodes is False
    assert config.encoder_filters is False
