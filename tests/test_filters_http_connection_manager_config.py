"""HttpConnectionManager config: Envoy's defaults, honoured settings, and refusals that
name the unsupported feature and its field path."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.filters.network.http_connection_manager.config import (
    ENVOY_CONTROL_HEADERS,
    HcmConfig,
    HttpConnectionManagerFactory,
)
from tulle.filters.network.http_connection_manager.connection_manager import HttpConnection
from tulle.http.headers import HeaderMap
from tulle.server.context import DownstreamConnection, FactoryContext, ServerState
from tulle.stats.store import Store

FIELD = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
HCM_TYPE = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


class FakeClusterManager:
    def __init__(self, *names: str) -> None:
        self.clusters = {name: object() for name in names}

    def get(self, name: str) -> Any:
        return self.clusters.get(name)


def document(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "stat_prefix": "ingress_http",
        "route_config": {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "backend"}}]}]},
        "http_filters": [ROUTER],
    }
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def build(doc: dict[str, Any], *clusters: str, store: Store | None = None) -> HcmConfig:
    ctx = FactoryContext(stats=store or Store(), cluster_manager=FakeClusterManager(*(clusters or ("backend",))),  # type: ignore[arg-type]
                         server=ServerState())
    return HttpConnectionManagerFactory(parse_message(doc, hcm_pb2.HttpConnectionManager), FIELD, ctx).config


def refused(doc: dict[str, Any], *clusters: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        build(doc, *clusters)
    return caught.value


# --------------------------------------------------------------------------- defaults and settings


def test_envoy_defaults() -> None:
    config = build(document())
    assert config.idle_timeout == 3600.0
    assert config.stream_idle_timeout == 300.0
    assert config.request_timeout == 0.0
    assert config.max_request_headers_bytes == 60 * 1024
    assert config.max_headers_count == 100
    assert config.server_name == "envoy"
    assert config.generate_request_id is True
    assert config.use_remote_address is False
    assert config.strip_envoy_headers == ()
    assert config.accept_http_10 is False
    assert config.access_loggers == []
    assert config.stat_prefix == "ingress_http"


def test_settings_are_honoured() -> None:
    config = build(document(
        common_http_protocol_options={"idle_timeout": "7s", "max_headers_count": 20},
        http_protocol_options={"accept_http_10": True, "default_host_for_http_10": "legacy"},
        max_request_headers_kb=8, stream_idle_timeout="2.5s", request_timeout="30s", server_name="edge",
        use_remote_address=True, generate_request_id=False, always_set_request_id_in_response=True,
        merge_slashes=True, via="tulle",
    ))
    assert config.idle_timeout == 7.0
    assert config.max_headers_count == 20
    assert (config.accept_http_10, config.default_host_for_http_10) == (True, "legacy")
    assert config.max_request_headers_bytes == 8 * 1024
    assert config.stream_idle_timeout == 2.5
    assert config.request_timeout == 30.0
    assert config.server_name == "edge"
    assert config.use_remote_address is True
    assert config.strip_envoy_headers == ENVOY_CONTROL_HEADERS
    assert config.generate_request_id is False
    assert config.always_set_request_id_in_response is True
    assert config.merge_slashes is True
    assert config.via == "tulle"


def test_request_headers_timeout_and_the_timeout_that_bounds_a_head() -> None:
    default = build(document())
    assert default.request_headers_timeout == 0.0
    assert (default.head_timeout, default.head_timeout_kind) == (300.0, "stream_idle")  # Envoy's default
    config = build(document(request_headers_timeout="2s", request_timeout="5s"))
    assert config.request_headers_timeout == 2.0
    assert (config.head_timeout, config.head_timeout_kind) == (2.0, "request_headers")
    none = build(document(stream_idle_timeout="0s"))
    assert (none.head_timeout, none.head_timeout_kind) == (0.0, "")
    # equal timeouts: the one Envoy arms first answers
    tie = build(document(stream_idle_timeout="3s", request_headers_timeout="3s"))
    assert tie.head_timeout_kind == "stream_idle"


def test_zero_stream_idle_timeout_disables_it() -> None:
    assert build(document(stream_idle_timeout="0s")).stream_idle_timeout == 0.0


def test_hcm_stats_have_envoy_names() -> None:
    store = Store()
    build(document(), store=store)
    for name in ("downstream_cx_total", "downstream_cx_active", "downstream_rq_total", "downstream_rq_2xx",
                 "downstream_rq_5xx", "downstream_rq_completed", "no_route", "no_cluster", "rq_redirect",
                 "rq_direct_response", "downstream_cx_protocol_error", "downstream_rq_timeout",
                 "downstream_rq_header_timeout"):
        assert f"http.ingress_http.{name}" in store.counters or f"http.ingress_http.{name}" in store.gauges, name
    assert "http.ingress_http.downstream_rq_time" in store.histograms


def test_router_named_without_typed_config_is_accepted() -> None:
    config = build(document(http_filters=[{"name": "envoy.filters.http.router"}]))
    assert [factory.name for factory in config.filter_factories] == ["envoy.filters.http.router"]


def test_route_table_and_loggers_are_built(tmp_path: Path) -> None:
    log = {"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": str(tmp_path / "access.log")}}
    config = build(document(access_log=[log]))
    assert len(config.access_loggers) == 1
    assert config.route_table.referenced_clusters() == {"backend"}


def test_unknown_cluster_is_refused_unless_validation_is_off() -> None:
    error = refused(document(), "other")
    assert "backend" in str(error)
    assert error.field == f"{FIELD}.route_config"
    route_config = document()["route_config"]
    route_config["validate_clusters"] = False
    assert build(document(route_config=route_config), "other").route_table is not None


def test_factory_hands_each_connection_a_protocol() -> None:
    ctx = FactoryContext(stats=Store(), cluster_manager=FakeClusterManager("backend"),  # type: ignore[arg-type]
                         server=ServerState())
    factory = HttpConnectionManagerFactory(parse_message(document(), hcm_pb2.HttpConnectionManager), FIELD, ctx)
    connection = DownstreamConnection(("127.0.0.1", 5000), ("127.0.0.1", 10000), "ingress")
    async def make() -> HttpConnection:
        return factory.create_protocol(connection)

    protocol = asyncio.run(make())
    assert isinstance(protocol, HttpConnection)
    assert protocol.sniff == b""  # codec_type AUTO: the first bytes decide between HTTP/1 and HTTP/2
    factory.drain()  # no connection open: nothing to do, nothing raised


def test_codec_type_http2_hands_each_connection_an_http2_protocol() -> None:
    from tulle.filters.network.http_connection_manager.http2_connection import Http2Connection

    ctx = FactoryContext(stats=Store(), cluster_manager=FakeClusterManager("backend"),  # type: ignore[arg-type]
                         server=ServerState())
    factory = HttpConnectionManagerFactory(
        parse_message(document(codec_type="HTTP2"), hcm_pb2.HttpConnectionManager), FIELD, ctx)
    connection = DownstreamConnection(("127.0.0.1", 5000), ("127.0.0.1", 10000), "ingress")

    async def make() -> HttpConnection:
        return factory.create_protocol(connection)

    assert isinstance(asyncio.run(make()), Http2Connection)
    assert factory.config.codec == "http2"


def test_http2_protocol_options_become_session_settings() -> None:
    config = build(document(max_request_headers_kb=8, http2_protocol_options={
        "max_concurrent_streams": 50, "initial_stream_window_size": 65535,
        "initial_connection_window_size": 1048576, "hpack_table_size": 0, "max_outbound_control_frames": 20}))
    settings = config.http2_settings
    assert (settings.max_concurrent_streams, settings.initial_stream_window_size,
            settings.initial_connection_window_size, settings.hpack_table_size,
            settings.max_outbound_ack) == (50, 65535, 1048576, 0, 20)
    assert settings.max_header_bytes == 8 * 1024  # max_request_headers_kb applies to HTTP/2 too
    defaults = build(document()).http2_settings
    assert (defaults.max_concurrent_streams, defaults.initial_stream_window_size) == (2147483647, 268435456)


def test_add_user_agent_takes_the_nodes_cluster_and_id() -> None:
    ctx = FactoryContext(stats=Store(), cluster_manager=FakeClusterManager("backend"),  # type: ignore[arg-type]
                         server=ServerState(node_id="node-1", node_cluster="svc"))
    on = HttpConnectionManagerFactory(
        parse_message(document(add_user_agent=True), hcm_pb2.HttpConnectionManager), FIELD, ctx).config
    off = HttpConnectionManagerFactory(
        parse_message(document(), hcm_pb2.HttpConnectionManager), FIELD, ctx).config
    assert (on.user_agent, on.service_node) == ("svc", "node-1")
    assert (off.user_agent, off.service_node) == ("", "")


def test_connection_keepalive_becomes_interval_timeout_and_jitter() -> None:
    config = build(document(http2_protocol_options={"connection_keepalive": {
        "interval": "30s", "timeout": "5s", "interval_jitter": {"value": 10}}}))
    assert config.http2_keepalive == (30.0, 5.0, 0.1)
    assert build(document()).http2_keepalive == (0.0, 0.0, 0.0)
    jitter_default = build(document(http2_protocol_options={"connection_keepalive": {"interval": "1s", "timeout": "1s"}}))
    assert jitter_default.http2_keepalive == (1.0, 1.0, 0.15)  # Envoy's default interval_jitter


@pytest.mark.parametrize("options, field", [
    ({"connection_keepalive": {"interval": "10s"}}, "connection_keepalive.timeout"),
    ({"initial_stream_window_size": 1000}, "initial_stream_window_size"),
    ({"initial_connection_window_size": 2147483648}, "initial_connection_window_size"),
    ({"max_concurrent_streams": 0}, "max_concurrent_streams"),
    ({"max_outbound_control_frames": 0}, "max_outbound_control_frames"),
])
def test_out_of_range_http2_options_name_the_field(options: dict[str, Any], field: str) -> None:
    error = refused(document(http2_protocol_options=options))
    assert error.field == f"{FIELD}.http2_protocol_options.{field}"


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("overrides, field, feature", [
    ({"codec_type": "HTTP3"}, "codec_type", "HTTP3"),
    ({"normalize_path": True}, "normalize_path", "normalize_path"),
    ({"tracing": {}}, "tracing", f"{HCM_TYPE}.tracing"),
    ({"upgrade_configs": [{"upgrade_type": "websocket", "filters": [{"name": "envoy.filters.http.router"}]}]},
     "upgrade_configs[0].filters", "filters"),
    ({"upgrade_configs": [{"upgrade_type": "CONNECT"}]}, "upgrade_configs[0].upgrade_type", "CONNECT"),
    ({"http2_protocol_options": {"allow_connect": True}}, "http2_protocol_options.allow_connect", "allow_connect"),
    ({"http2_protocol_options": {"connection_keepalive": {"timeout": "1s", "connection_idle_interval": "5s"}}},
     "http2_protocol_options.connection_keepalive.connection_idle_interval", "connection_idle_interval"),
    ({"internal_address_config": {"unix_sockets": True}}, "internal_address_config", "internal_address_config"),
    ({"http_protocol_options": {"enable_trailers": True}}, "http_protocol_options.enable_trailers",
     "enable_trailers"),
    ({"common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"}},
     "common_http_protocol_options.headers_with_underscores_action", "headers_with_underscores_action"),
    ({"common_http_protocol_options": {"max_connection_duration": "10s"}},
     "common_http_protocol_options.max_connection_duration", "max_connection_duration"),
])
def test_unsupported_settings_are_refused_with_their_path(overrides: dict[str, Any], field: str, feature: str) -> None:
    error = refused(document(**overrides))
    assert isinstance(error, UnsupportedFeature)
    assert error.field == f"{FIELD}.{field}"
    assert feature in str(error)
    assert "unsupported by Tulle" in str(error)


def test_rds_over_ads_starts_with_an_empty_table_named_for_rds() -> None:
    config = build(document(route_config=None, rds={"route_config_name": "9080", "config_source": {"ads": {}}}))
    assert config.route_config_name == "9080"
    headers = HeaderMap([(":method", "GET"), (":path", "/"), (":authority", "x")])
    assert config.route_table.find(headers) is None  # 404 until RDS delivers the table


def test_rds_from_other_config_sources_is_refused() -> None:
    error = refused(document(route_config=None, rds={"route_config_name": "r",
                                                     "config_source": {"path_config_source": {"path": "/r.yaml"}}}))
    assert isinstance(error, UnsupportedFeature)
    assert error.field == f"{FIELD}.rds.config_source.path_config_source"


def test_missing_route_config_is_an_error() -> None:
    error = refused(document(route_config=None))
    assert error.field == f"{FIELD}.route_config"


def test_missing_stat_prefix_is_an_error() -> None:
    assert refused(document(stat_prefix=None)).field == f"{FIELD}.stat_prefix"


def test_http_filters_must_end_with_the_router() -> None:
    assert refused(document(http_filters=[])).field == f"{FIELD}.http_filters"
    error = refused(document(http_filters=[ROUTER, ROUTER]))
    assert error.field == f"{FIELD}.http_filters[0]"
    assert "last" in str(error)


def test_unsupported_http_filter_is_named() -> None:
    csrf = {"name": "envoy.filters.http.csrf",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy"}}
    error = refused(document(http_filters=[csrf, ROUTER]))
    assert isinstance(error, UnsupportedFeature)
    assert error.field == f"{FIELD}.http_filters[0]"
    assert "envoy.extensions.filters.http.csrf.v3.CsrfPolicy" in str(error)


def test_unknown_http_filter_name_without_config_is_refused() -> None:
    error = refused(document(http_filters=[{"name": "acme.filters.http.magic"}, ROUTER]))
    assert isinstance(error, UnsupportedFeature)
    assert "acme.filters.http.magic" in str(error)
    assert error.field == f"{FIELD}.http_filters[0]"


def test_disabled_http_filter_is_refused() -> None:
    disabled = dict(ROUTER, disabled=True)
    error = refused(document(http_filters=[disabled]))
    assert isinstance(error, UnsupportedFeature)
    assert error.field == f"{FIELD}.http_filters[0].disabled"


@pytest.mark.parametrize("router_field, value", [("start_child_span", True),
                                                 ("strict_check_headers", ["x-envoy-max-retries"]),
                                                 ("upstream_log", [{"name": "x"}])])
def test_unsupported_router_settings_are_refused(router_field: str, value: Any) -> None:
    router = {"name": "envoy.filters.http.router", "typed_config": {**ROUTER["typed_config"], router_field: value}}
    error = refused(document(http_filters=[router]))
    assert isinstance(error, UnsupportedFeature)
    assert error.field == f"{FIELD}.http_filters[0].typed_config.{router_field}"


def test_router_settings_are_honoured() -> None:
    router = {"name": "envoy.filters.http.router",
              "typed_config": {**ROUTER["typed_config"], "suppress_envoy_headers": True}}
    config = build(document(http_filters=[router]))
    assert config.filter_factories[-1].suppress_envoy_headers is True


def test_the_loaded_module_is_the_compiled_one_unless_pure_python_is_requested() -> None:
    from tulle import compiled

    assert "tulle.filters.network.http_connection_manager.config" in compiled.MODULES
    assert compiled.is_compiled("tulle.filters.network.http_connection_manager.config") == (not compiled.pure_python_requested())
