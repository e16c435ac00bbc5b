"""HTTP local rate limit config: Envoy's defaults (0% enabled/enforced, 429, no bucket allowed at the
filter level), stats names, refusals with field paths, and per-route configs parsed in the route table
of the connection manager being built."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import json_format

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.filters.http.local_ratelimit.config import (
    NEVER,
    Fraction,
    LocalRateLimitFactory,
    RateLimitSettings,
    parse_per_route_config,
)
from tulle.filters.network.http_connection_manager.config import HcmConfig, HttpConnectionManagerFactory
from tulle.filters.network.local_ratelimit.filter import SharedTokenBucket, TokenBucket
from tulle.runtime import entry as runtime_entry
from tulle.server.context import FactoryContext, ServerState
from tulle.stats.store import Store

FIELD = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
FILTER_FIELD = f"{FIELD}.http_filters[0].typed_config"
RATELIMIT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
ALL = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": "rl_on"}
BUCKET = {"max_tokens": 3, "tokens_per_fill": 1, "fill_interval": "1s"}


class FakeClusterManager:
    def get(self, name: str) -> Any:
        return object() if name == "backend" else None


def make_ctx(store: Store | None = None, concurrency: int = 1) -> FactoryContext:
    return FactoryContext(stats=store or Store(), cluster_manager=FakeClusterManager(),  # type: ignore[arg-type]
                          server=ServerState(concurrency=concurrency))


def ratelimit(**fields: Any) -> dict[str, Any]:
    return {"@type": RATELIMIT_TYPE, "stat_prefix": "rl", **fields}


def hcm_doc(filter_config: dict[str, Any], *, name: str = "envoy.filters.http.local_ratelimit",
            routes: list[dict[str, Any]] | None = None, vhost_extra: dict[str, Any] | None = None) -> dict[str, Any]:
    vhost = {"name": "all", "domains": ["*"],
             "routes": routes or [{"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}
    vhost.update(vhost_extra or {})
    return {"stat_prefix": "ingress", "route_config": {"name": "local", "virtual_hosts": [vhost]},
            "http_filters": [{"name": name, "typed_config": filter_config}, ROUTER]}


def build_hcm(doc: dict[str, Any], ctx: FactoryContext | None = None) -> HcmConfig:
    proto = parse_message(doc, hcm_pb2.HttpConnectionManager)
    return HttpConnectionManagerFactory(proto, FIELD, ctx or make_ctx()).config


def build(**fields: Any) -> LocalRateLimitFactory:
    factory = build_hcm(hcm_doc(ratelimit(**fields))).filter_factories[0]
    assert isinstance(factory, LocalRateLimitFactory)
    return factory


def refused(doc: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        build_hcm(doc)
    return caught.value


# --------------------------------------------------------------------------- the filter's own config


def test_defaults_are_envoys_safe_ones() -> None:
    settings = build().settings
    assert settings.enabled is NEVER and settings.enforced is NEVER  # 0% unless configured
    assert settings.status == 429
    assert settings.bucket is None  # fine at the filter level: limits may come per route
    assert settings.response_headers is None and settings.request_headers is None
    assert settings.x_ratelimit_headers is False


def test_stats_are_named_after_the_stat_prefix_alone() -> None:
    store = Store()
    build_hcm(hcm_doc(ratelimit(stat_prefix="edge_rl")), make_ctx(store))
    for name in ("enabled", "enforced", "rate_limited", "ok"):
        assert f"edge_rl.http_local_rate_limit.{name}" in store.counters


def test_token_bucket_and_fractions_are_compiled() -> None:
    half = {"default_value": {"numerator": 5000, "denominator": "TEN_THOUSAND"}, "runtime_key": "half"}
    settings = build(token_bucket=BUCKET, filter_enabled=ALL, filter_enforced=half).settings
    assert type(settings.bucket) is TokenBucket
    assert settings.bucket.max_tokens == 3
    assert settings.enabled.always
    assert (settings.enforced.numerator, settings.enforced.denominator) == (5000, 10_000)


def test_fraction_draws_only_between_zero_and_all(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([149, 150])
    monkeypatch.setattr(runtime_entry, "_getrandbits", lambda bits: next(draws))
    fifty = Fraction(50, 100)
    assert fifty.hit() is True  # 149 % 100 = 49 < 50
    assert fifty.hit() is False  # 150 % 100 = 50
    assert Fraction(100, 100).hit() and Fraction(200, 100).hit()  # no draw: the iterator is spent
    assert not Fraction(0, 100).hit()


@pytest.mark.parametrize("code, expected", [("ServiceUnavailable", 503), ("BadRequest", 400), ("OK", 429),
                                            ("Found", 429)])
def test_status_below_400_falls_back_to_429(code: str, expected: int) -> None:
    assert build(status={"code": code}).settings.status == expected


def test_several_workers_get_a_shared_bucket() -> None:
    hcm = build_hcm(hcm_doc(ratelimit(token_bucket=BUCKET)), make_ctx(concurrency=3))
    assert type(hcm.filter_factories[0].settings.bucket) is SharedTokenBucket


def test_x_ratelimit_headers_make_the_filter_encode_only_with_a_bucket() -> None:
    assert build(token_bucket=BUCKET, enable_x_ratelimit_headers="DRAFT_VERSION_03").encodes is True
    assert build(enable_x_ratelimit_headers="DRAFT_VERSION_03").encodes is False  # no bucket, no headers
    assert build(token_bucket=BUCKET).encodes is False
    hcm = build_hcm(hcm_doc(ratelimit(token_bucket=BUCKET)))
    assert hcm.encoder_filters is False  # a configured limiter adds nothing to the response path


def test_always_consume_default_token_bucket_is_accepted_without_descriptors() -> None:
    build(token_bucket=BUCKET, always_consume_default_token_bucket=False)


@pytest.mark.parametrize("fields, name", [
    ({"descriptors": [{"entries": [{"key": "k", "value": "v"}], "token_bucket": BUCKET}]}, "descriptors"),
    ({"stage": 1}, "stage"),
    ({"local_rate_limit_per_downstream_connection": True}, "local_rate_limit_per_downstream_connection"),
    ({"rate_limited_as_resource_exhausted": True}, "rate_limited_as_resource_exhausted"),
    ({"vh_rate_limits": "INCLUDE"}, "vh_rate_limits"),
    ({"max_dynamic_descriptors": 5}, "max_dynamic_descriptors"),
    ({"local_cluster_rate_limit": {}}, "local_cluster_rate_limit"),
    ({"rate_limits": [{"actions": [{"remote_address": {}}]}]}, "rate_limits"),
])
def test_unimplemented_fields_are_refused_with_their_path(fields: dict[str, Any], name: str) -> None:
    error = refused(hcm_doc(ratelimit(**fields)))
    assert isinstance(error, UnsupportedFeature)
    assert error.field == f"{FILTER_FIELD}.{name}"
    assert name in error.feature


@pytest.mark.parametrize("fields, field", [
    ({"stat_prefix": ""}, "stat_prefix"),
    ({"token_bucket": {"max_tokens": 1, "fill_interval": "0.02s"}}, "token_bucket.fill_interval"),
    ({"token_bucket": {"max_tokens": 0, "fill_interval": "1s"}}, "token_bucket.max_tokens"),
    ({"filter_enabled": {"runtime_key": "k"}}, "filter_enabled.default_value"),
    ({"status": {}}, "status.code"),
    ({"response_headers_to_add": [{"header": {"key": ":status", "value": "1"}}]},
     "response_headers_to_add[0].header.key"),
])
def test_invalid_configs_are_refused_with_their_path(fields: dict[str, Any], field: str) -> None:
    error = refused(hcm_doc(ratelimit(**fields)))
    assert not isinstance(error, UnsupportedFeature)
    assert error.field == f"{FILTER_FIELD}.{field}"


# --------------------------------------------------------------------------- per-route configs


def per_route(**fields: Any) -> dict[str, Any]:
    return ratelimit(**{"stat_prefix": "route_rl", "token_bucket": BUCKET, "filter_enabled": ALL, **fields})


def routes_with(config: dict[str, Any], key: str = "envoy.filters.http.local_ratelimit") -> list[dict[str, Any]]:
    return [{"match": {"prefix": "/limited"}, "route": {"cluster": "backend"},
             "typed_per_filter_config": {key: config}},
            {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]


def test_route_gets_its_own_settings_bucket_and_stats() -> None:
    store = Store()
    hcm = build_hcm(hcm_doc(ratelimit(), routes=routes_with(per_route())), make_ctx(store))
    limited, other = hcm.route_table.virtual_hosts[0].routes
    settings = limited.per_filter_config("envoy.filters.http.local_ratelimit")
    assert isinstance(settings, RateLimitSettings)
    assert settings is not hcm.filter_factories[0].settings
    assert settings.bucket is not None and settings.bucket.max_tokens == 3
    assert "route_rl.http_local_rate_limit.ok" in store.counters
    assert other.per_filter_config("envoy.filters.http.local_ratelimit") is None


def test_virtual_host_config_is_one_bucket_for_its_routes() -> None:
    routes = [{"match": {"prefix": "/a"}, "route": {"cluster": "backend"}},
              {"match": {"prefix": "/b"}, "route": {"cluster": "backend"}}]
    hcm = build_hcm(hcm_doc(ratelimit(), routes=routes, vhost_extra={
        "typed_per_filter_config": {"envoy.filters.http.local_ratelimit": per_route()}}))
    first, second = (route.per_filter_config("envoy.filters.http.local_ratelimit")
                     for route in hcm.route_table.virtual_hosts[0].routes)
    assert first is second


def test_per_route_config_needs_a_token_bucket() -> None:
    config = per_route()
    del config["token_bucket"]
    error = refused(hcm_doc(ratelimit(), routes=routes_with(config)))
    assert "token bucket must be set for per filter configs" in str(error)
    assert error.field.endswith(
        "routes[0].typed_per_filter_config['envoy.filters.http.local_ratelimit'].token_bucket")


def test_per_route_refusals_name_the_route_entry() -> None:
    error = refused(hcm_doc(ratelimit(), routes=routes_with(per_route(stage=2))))
    assert isinstance(error, UnsupportedFeature)
    assert error.field.endswith("routes[0].typed_per_filter_config['envoy.filters.http.local_ratelimit'].stage")


def test_per_route_x_ratelimit_headers_turn_the_response_path_on() -> None:
    hcm = build_hcm(hcm_doc(ratelimit(), routes=routes_with(per_route(enable_x_ratelimit_headers="DRAFT_VERSION_03"))))
    assert hcm.filter_factories[0].encodes is True
    assert hcm.encoder_filters is True


def test_per_route_parser_needs_a_connection_manager_building_its_table() -> None:
    fields = {key: value for key, value in per_route().items() if key != "@type"}
    proto = json_format.ParseDict(fields, local_rate_limit_pb2.LocalRateLimit())
    with pytest.raises(RuntimeError):
        parse_per_route_config(proto, "routes[0].typed_per_filter_config")
