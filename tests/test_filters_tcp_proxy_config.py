"""tcp_proxy config: validation, defaults, refusals with field paths, stats names, cluster picking."""

from __future__ import annotations

import collections
import random
import sys
import types
from typing import Any

import pytest
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2, json_format

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.filters.network.tcp_proxy.config import (
    DEFAULT_IDLE_TIMEOUT_SECONDS,
    TcpProxyFactory,
)
from tulle.filters.network.tcp_proxy.filter import TcpProxySession
from tulle.server.context import DownstreamConnection, FactoryContext, ServerState
from tulle.stats.store import Store

FIELD = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


class FakeClusterManager:
    def __init__(self, *names: str) -> None:
        self.clusters = {name: object() for name in names}

    def get(self, name: str) -> Any:
        return self.clusters.get(name)


def make_ctx(*cluster_names: str) -> FactoryContext:
    return FactoryContext(
        stats=Store(), cluster_manager=FakeClusterManager(*cluster_names), server=ServerState()  # type: ignore[arg-type]
    )


def parse(document: dict[str, Any]) -> tcp_proxy_pb2.TcpProxy:
    return json_format.ParseDict(document, tcp_proxy_pb2.TcpProxy())


def build(document: dict[str, Any], *clusters: str) -> TcpProxyFactory:
    return TcpProxyFactory(parse(document), FIELD, make_ctx(*(clusters or ("backend",))))


def test_minimal_config_gets_envoy_defaults() -> None:
    factory = build({"stat_prefix": "ingress", "cluster": "backend"})
    config = factory.config
    assert config.cluster_names == ["backend"]
    assert config.idle_timeout == DEFAULT_IDLE_TIMEOUT_SECONDS == 3600.0
    assert config.max_connect_attempts == 1
    assert config.max_downstream_connection_duration is None
    assert config.access_logs == []
    assert config.pick_cluster() == "backend"


def test_explicit_settings_are_honoured() -> None:
    factory = build({
        "stat_prefix": "db",
        "cluster": "backend",
        "idle_timeout": "2.5s",
        "max_connect_attempts": 3,
        "max_downstream_connection_duration": "0.250s",
    })
    assert factory.config.idle_timeout == 2.5
    assert factory.config.max_connect_attempts == 3
    assert factory.config.max_downstream_connection_duration == pytest.approx(0.25)


def test_zero_idle_timeout_disables_it() -> None:
    factory = build({"stat_prefix": "db", "cluster": "backend", "idle_timeout": "0s"})
    assert factory.config.idle_timeout is None


def test_stats_are_registered_under_envoy_names() -> None:
    ctx = make_ctx("backend")
    TcpProxyFactory(parse({"stat_prefix": "edge", "cluster": "backend"}), FIELD, ctx)
    expected_counters = {
        "downstream_cx_total", "downstream_cx_no_route", "downstream_cx_rx_bytes_total",
        "downstream_cx_tx_bytes_total", "downstream_flow_control_paused_reading_total",
        "downstream_flow_control_resumed_reading_total", "idle_timeout",
        "max_downstream_connection_duration", "upstream_flush_total",
    }
    expected_gauges = {"downstream_cx_rx_bytes_buffered", "downstream_cx_tx_bytes_buffered", "upstream_flush_active"}
    assert {f"tcp.edge.{name}" for name in expected_counters} <= set(ctx.stats.counters)
    assert {f"tcp.edge.{name}" for name in expected_gauges} <= set(ctx.stats.gauges)
    assert all(value == 0 for value in ctx.stats.snapshot()["counters"].values())


def test_accepts_typed_config_any() -> None:
    packed = any_pb2.Any()
    packed.Pack(parse({"stat_prefix": "x", "cluster": "backend"}))
    factory = TcpProxyFactory(packed, FIELD, make_ctx("backend"))
    assert factory.config.stat_prefix == "x"


def test_rejects_another_message_type() -> None:
    packed = any_pb2.Any()
    packed.Pack(tcp_proxy_pb2.TcpProxy.OnDemand())
    with pytest.raises(ConfigError) as caught:
        TcpProxyFactory(packed, FIELD, make_ctx("backend"))
    assert caught.value.field == FIELD


def test_a_cluster_not_delivered_yet_is_not_a_config_error_as_in_envoy() -> None:
    """Envoy's tcp_proxy looks its cluster up per connection (a listener may arrive before CDS
    delivers the cluster): a missing one closes that connection, flagged NC."""
    single = build({"stat_prefix": "x", "cluster": "not-yet"}, "backend")
    assert single.config.cluster_names == ["not-yet"]
    weighted = build({"stat_prefix": "x", "weighted_clusters": {"clusters": [
        {"name": "a", "weight": 1}, {"name": "not-yet", "weight": 2}]}}, "a")
    assert weighted.config.cluster_names == ["a", "not-yet"]


def test_an_empty_weighted_cluster_name_names_its_index() -> None:
    with pytest.raises(ConfigError) as caught:
        build({"stat_prefix": "x", "weighted_clusters": {"clusters": [
            {"name": "a", "weight": 1}, {"name": "", "weight": 2}]}}, "a")
    assert not isinstance(caught.value, UnsupportedFeature)
    assert caught.value.field == f"{FIELD}.weighted_clusters.clusters[1].name"


@pytest.mark.parametrize(
    ("document", "field_suffix"),
    [
        ({"stat_prefix": "", "cluster": "backend"}, "stat_prefix"),
        ({"stat_prefix": "x"}, ""),
        ({"stat_prefix": "x", "cluster": "backend", "max_connect_attempts": 0}, "max_connect_attempts"),
        ({"stat_prefix": "x", "cluster": "backend", "max_downstream_connection_duration": "0s"},
         "max_downstream_connection_duration"),
        ({"stat_prefix": "x", "cluster": "backend", "idle_timeout": "-1s"}, "idle_timeout"),
        ({"stat_prefix": "x", "weighted_clusters": {}}, "weighted_clusters.clusters"),
        ({"stat_prefix": "x", "weighted_clusters": {"clusters": [{"name": "backend", "weight": 0}]}},
         "weighted_clusters.clusters[0].weight"),
    ],
)
def test_invalid_values_are_refused_with_paths(document: dict[str, Any], field_suffix: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(document)
    assert not isinstance(caught.value, UnsupportedFeature)
    assert caught.value.field == (f"{FIELD}.{field_suffix}" if field_suffix else FIELD)


@pytest.mark.parametrize(
    ("extra", "field_name"),
    [
        ({"metadata_match": {"filter_metadata": {"envoy.lb": {"v": "1"}}}}, "metadata_match"),
        ({"tunneling_config": {"hostname": "example.com"}}, "tunneling_config"),
        ({"hash_policy": [{"source_ip": {}}]}, "hash_policy"),
        ({"on_demand": {}}, "on_demand"),
        ({"access_log_options": {"flush_access_log_on_connected": True}}, "access_log_options"),
        ({"downstream_idle_timeout": "1s"}, "downstream_idle_timeout"),
        ({"upstream_idle_timeout": "1s"}, "upstream_idle_timeout"),
        ({"backoff_options": {"base_interval": "1s"}}, "backoff_options"),
        ({"max_downstream_connection_duration_jitter_percentage": {"value": 5}},
         "max_downstream_connection_duration_jitter_percentage"),
        ({"upstream_connect_mode": "ON_DOWNSTREAM_DATA"}, "upstream_connect_mode"),
        ({"max_early_data_bytes": 10}, "max_early_data_bytes"),
    ],
)
def test_unsupported_fields_are_refused_by_name(extra: dict[str, Any], field_name: str) -> None:
    descriptor = tcp_proxy_pb2.TcpProxy.DESCRIPTOR
    if field_name not in descriptor.fields_by_name:
        pytest.skip(f"{field_name} not in this xds-protos version")
    with pytest.raises(UnsupportedFeature) as caught:
        build({"stat_prefix": "x", "cluster": "backend", **extra})
    assert caught.value.field == f"{FIELD}.{field_name}"
    assert caught.value.feature == f"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.{field_name}"


def test_weighted_cluster_metadata_match_is_refused_with_path() -> None:
    with pytest.raises(UnsupportedFeature) as caught:
        build({"stat_prefix": "x", "weighted_clusters": {"clusters": [
            {"name": "backend", "weight": 1,
             "metadata_match": {"filter_metadata": {"envoy.lb": {"v": "1"}}}}]}})
    assert caught.value.field == f"{FIELD}.weighted_clusters.clusters[0].metadata_match"


def test_access_log_is_built_lazily_through_the_access_log_package(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, str]] = []
    sentinel_logger = object()

    def build_access_logs(protos: Any, field: str, ctx: Any) -> list[Any]:
        calls.append((len(protos), field))
        return [sentinel_logger]

    fake_module = types.ModuleType("tulle.access_log.config")
    fake_module.build_access_logs = build_access_logs  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tulle.access_log.config", fake_module)
    factory = build({
        "stat_prefix": "x",
        "cluster": "backend",
        "access_log": [{"name": "envoy.access_loggers.stdout"}],
    })
    assert calls == [(1, f"{FIELD}.access_log")]
    assert factory.config.access_logs == [sentinel_logger]


def test_no_access_log_does_not_import_the_access_log_package(monkeypatch: pytest.MonkeyPatch) -> None:
    # a module that explodes on use proves the factory never touches it
    exploding = types.ModuleType("tulle.access_log.config")
    monkeypatch.setitem(sys.modules, "tulle.access_log.config", exploding)
    factory = build({"stat_prefix": "x", "cluster": "backend"})
    assert factory.config.access_logs == []


def test_weighted_pick_follows_weights() -> None:
    factory = build(
        {"stat_prefix": "x", "weighted_clusters": {"clusters": [
            {"name": "light", "weight": 1}, {"name": "heavy", "weight": 3}]}},
        "light", "heavy",
    )
    random.seed(1234)
    picks = collections.Counter(factory.config.pick_cluster() for _ in range(20000))
    assert set(picks) == {"light", "heavy"}
    share_heavy = picks["heavy"] / 20000
    assert 0.72 < share_heavy < 0.78


def test_weighted_pick_never_chooses_outside_the_configured_set() -> None:
    factory = build(
        {"stat_prefix": "x", "weighted_clusters": {"clusters": [
            {"name": "a", "weight": 1}, {"name": "b", "weight": 1}, {"name": "c", "weight": 98}]}},
        "a", "b", "c",
    )
    random.seed(99)
    picks = collections.Counter(factory.config.pick_cluster() for _ in range(50000))
    assert set(picks) == {"a", "b", "c"}
    assert picks["c"] > picks["a"] + picks["b"]


def test_create_protocol_returns_a_fresh_session_per_connection() -> None:
    factory = build({"stat_prefix": "x", "cluster": "backend"})
    connection = DownstreamConnection(("127.0.0.1", 5000), ("127.0.0.1", 80), "listener_0")
    first = factory.create_protocol(connection)
    second = factory.create_protocol(connection)
    assert isinstance(first, TcpProxySession) and isinstance(second, TcpProxySession)
    assert first is not second
    assert first.info.downstream_remote_address == "127.0.0.1:5000"
    assert first.info.downstream_local_address == "127.0.0.1:80"
    assert not hasattr(first, "__dict__")  # __slots__ all the way down


def test_drain_is_accepted() -> None:
    factory = build({"stat_prefix": "x", "cluster": "backend"})
    assert factory.draining is False
    factory.drain()
    assert factory.draining is True
