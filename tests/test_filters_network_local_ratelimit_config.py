"""Network local rate limit: validation with field paths, Envoy's defaults and stat name, share_key,
buckets shared by worker processes, its place in the listener's filter chain, and real proxies that
close the connections over the limit (one worker and two)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from envoy.config.bootstrap.v3.bootstrap_pb2 import LayeredRuntime
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.local_ratelimit.v3 import local_rate_limit_pb2
from google.protobuf import json_format

from backends import Reader, bootstrap, echo_backend, encode_request, read_response
from proxy_harness import ProxyProcess, free_port, static_cluster
from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.filters.network.local_ratelimit.config import LocalRateLimitFactory
from tulle.filters.network.local_ratelimit.filter import SharedTokenBucket, TokenBucket
from tulle.listener.listener import Listener
from tulle.runtime import Runtime
from tulle.server.context import FactoryContext, ServerState
from tulle.stats.store import Store

FIELD = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
RATELIMIT_TYPE = "type.googleapis.com/envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit"


class FakeClusterManager:
    def get(self, name: str) -> Any:
        return object() if name == "backend" else None


def make_ctx(concurrency: int = 1, store: Store | None = None) -> FactoryContext:
    return FactoryContext(stats=store or Store(), cluster_manager=FakeClusterManager(),  # type: ignore[arg-type]
                          server=ServerState(concurrency=concurrency))


def ratelimit_doc(**extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"stat_prefix": "edge",
                           "token_bucket": {"max_tokens": 2, "tokens_per_fill": 1, "fill_interval": "1s"}}
    doc.update(extra)
    return doc


def build(doc: dict[str, Any], ctx: FactoryContext | None = None) -> LocalRateLimitFactory:
    proto = json_format.ParseDict(doc, local_rate_limit_pb2.LocalRateLimit())
    return LocalRateLimitFactory(proto, FIELD, ctx or make_ctx())


def refused(doc: dict[str, Any], ctx: FactoryContext | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        build(doc, ctx)
    return caught.value


# --------------------------------------------------------------------------- config


def test_minimal_config_limits_with_envoys_stat_name() -> None:
    store = Store()
    factory = build(ratelimit_doc(), make_ctx(store=store))
    limiter = factory.limiter
    assert limiter.enabled is True  # runtime_enabled unset: on
    assert type(limiter.bucket) is TokenBucket
    assert limiter.bucket.max_tokens == 2
    assert limiter.bucket.fill_rate == 1.0
    assert "local_rate_limit.edge.rate_limited" in store.counters
    assert factory.on_new_connection == limiter.on_new_connection


def test_tokens_per_fill_defaults_to_one() -> None:
    factory = build(ratelimit_doc(token_bucket={"max_tokens": 5, "fill_interval": "2s"}))
    assert factory.limiter.bucket.fill_rate == 0.5


def test_runtime_enabled_uses_its_default_value() -> None:
    flag = {"runtime_key": "edge_rl_enabled", "default_value": False}
    assert build(ratelimit_doc(runtime_enabled=flag)).limiter.enabled is False
    flag["default_value"] = True
    assert build(ratelimit_doc(runtime_enabled=flag)).limiter.enabled is True


def test_runtime_enabled_follows_its_runtime_key_per_connection() -> None:
    runtime = Runtime.from_proto(parse_message({"layers": [{"name": "admin", "admin_layer": {}}]}, LayeredRuntime),
                                 "layered_runtime")
    ctx = make_ctx()
    ctx.runtime = runtime
    limiter = build(ratelimit_doc(token_bucket={"max_tokens": 1, "fill_interval": "60s"},
                                  runtime_enabled={"runtime_key": "edge.rl", "default_value": False}), ctx).limiter
    connection = object()
    assert limiter.on_new_connection(connection) and limiter.on_new_connection(connection)  # off: never limited
    runtime.merge_admin({"edge.rl": "true"})
    assert limiter.on_new_connection(connection) is True  # the one token
    assert limiter.on_new_connection(connection) is False
    assert limiter.rate_limited.value == 1


@pytest.mark.parametrize("doc, field", [
    (ratelimit_doc(stat_prefix=""), "stat_prefix"),
    ({"stat_prefix": "edge"}, "token_bucket"),
    (ratelimit_doc(token_bucket={"max_tokens": 0, "fill_interval": "1s"}), "token_bucket.max_tokens"),
    (ratelimit_doc(token_bucket={"max_tokens": 1, "tokens_per_fill": 0, "fill_interval": "1s"}),
     "token_bucket.tokens_per_fill"),
    (ratelimit_doc(token_bucket={"max_tokens": 1}), "token_bucket.fill_interval"),
    (ratelimit_doc(token_bucket={"max_tokens": 1, "fill_interval": "0.049s"}), "token_bucket.fill_interval"),
    (ratelimit_doc(runtime_enabled={"runtime_key": "k"}), "runtime_enabled.default_value"),
    (ratelimit_doc(runtime_enabled={"default_value": True}), "runtime_enabled.runtime_key"),
])
def test_invalid_configs_are_refused_with_their_path(doc: dict[str, Any], field: str) -> None:
    error = refused(doc)
    assert not isinstance(error, UnsupportedFeature)
    assert error.field == f"{FIELD}.{field}"


def test_fill_interval_floor_is_envoys_50ms() -> None:
    assert "must be >= 50ms" in str(refused(ratelimit_doc(token_bucket={"max_tokens": 1, "fill_interval": "0.01s"})))
    build(ratelimit_doc(token_bucket={"max_tokens": 1, "fill_interval": "0.05s"}))


def test_share_key_shares_the_bucket_of_identical_token_buckets() -> None:
    ctx = make_ctx()
    first = build(ratelimit_doc(share_key="edge"), ctx)
    second = build(ratelimit_doc(stat_prefix="other", share_key="edge"), ctx)
    assert first.limiter.bucket is second.limiter.bucket
    other_bucket = build(ratelimit_doc(share_key="edge", token_bucket={"max_tokens": 9, "fill_interval": "1s"}), ctx)
    assert other_bucket.limiter.bucket is not first.limiter.bucket
    unshared = build(ratelimit_doc(), ctx)
    assert unshared.limiter.bucket is not first.limiter.bucket


def test_several_workers_share_one_bucket_built_before_the_fork() -> None:
    factory = build(ratelimit_doc(), make_ctx(concurrency=4))
    assert type(factory.limiter.bucket) is SharedTokenBucket


def test_bucket_arriving_after_the_workers_forked_is_refused() -> None:
    ctx = make_ctx(concurrency=2)
    ctx.loop = asyncio.new_event_loop()  # what Worker.start sets: LDS updates arrive after it
    try:
        error = refused(ratelimit_doc(), ctx)
    finally:
        ctx.loop.close()
    assert isinstance(error, UnsupportedFeature)
    assert error.field == f"{FIELD}.token_bucket"
    assert "concurrency" in str(error)
    ctx.server.concurrency = 1  # one worker: nothing to share, so xDS may bring it
    build(ratelimit_doc(), ctx)


# --------------------------------------------------------------------------- in the listener


def ratelimit_filter(**extra: Any) -> dict[str, Any]:
    return {"name": "envoy.filters.network.local_ratelimit",
            "typed_config": {"@type": RATELIMIT_TYPE, **ratelimit_doc(**extra)}}


def tcp_proxy_filter(cluster: str = "backend") -> dict[str, Any]:
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "edge_tcp", "cluster": cluster}}


def listener_doc(port: int, filters: list[dict[str, Any]]) -> dict[str, Any]:
    return {"name": "edge", "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [{"filters": filters}]}


def make_listener(filters: list[dict[str, Any]]) -> Listener:
    proto = parse_message(listener_doc(10000, filters), listener_pb2.Listener)
    return Listener(proto, "static_resources.listeners[0]", make_ctx())


def test_listener_runs_non_terminal_filters_before_the_terminal_one() -> None:
    listener = make_listener([ratelimit_filter(), ratelimit_filter(stat_prefix="second"), tcp_proxy_filter()])
    assert len(listener.connection_filters) == 2
    assert type(listener.factory).__name__ == "TcpProxyFactory"


def test_listener_refuses_a_rate_limit_filter_as_the_last_filter() -> None:
    with pytest.raises(ConfigError) as caught:
        make_listener([ratelimit_filter()])
    assert caught.value.field == "static_resources.listeners[0].filter_chains[0].filters[0]"
    assert "non-terminal filter" in str(caught.value)


def test_listener_refuses_a_terminal_filter_before_the_last_position() -> None:
    with pytest.raises(ConfigError) as caught:
        make_listener([tcp_proxy_filter(), ratelimit_filter()])
    assert caught.value.field == "static_resources.listeners[0].filter_chains[0].filters[0]"
    assert "must be the last filter" in str(caught.value)


def test_listener_names_the_field_of_a_bad_non_terminal_filter() -> None:
    with pytest.raises(ConfigError) as caught:
        make_listener([ratelimit_filter(stat_prefix=""), tcp_proxy_filter()])
    assert caught.value.field == (
        "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.stat_prefix")


# --------------------------------------------------------------------------- real proxies


def exchange(port: int) -> bool:
    """One HTTP exchange through the tcp_proxy on a fresh connection: True if answered,
    False if the proxy closed the connection instead."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(encode_request("GET", "/through"))
            response = read_response(Reader(sock))
        except (ConnectionError, OSError):
            return False
        if response is None:
            return False
        assert response.status == 200
        return True


def proxy_config(listener_port: int, backend_port: int, **ratelimit: Any) -> dict[str, Any]:
    return bootstrap([listener_doc(listener_port, [ratelimit_filter(**ratelimit), tcp_proxy_filter()])],
                     [static_cluster("backend", [backend_port])])


def wait_for_stat(proxy: ProxyProcess, name: str, value: int) -> dict[str, int]:
    deadline = time.monotonic() + 15
    stats = proxy.stats()
    while stats.get(name) != value and time.monotonic() < deadline:
        time.sleep(0.02)
        stats = proxy.stats()
    return stats


@pytest.mark.integration
def test_connections_over_the_limit_are_closed_and_refill_lets_them_in(tmp_path: Path) -> None:
    port = free_port()
    # one token at most: however slow the machine, the refill can never bank a second one; and the
    # connections refused after a success must all come before its token is back: 2 s leaves room
    # for a loaded machine (the refill is computed from the clock, so sleeping the interval brings it)
    bucket = {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "2s"}
    with echo_backend() as backend, ProxyProcess(proxy_config(port, backend, token_bucket=bucket), tmp_path) as proxy:
        assert [exchange(port) for _ in range(3)] == [True, False, False]
        time.sleep(2.05)  # one token back
        assert [exchange(port) for _ in range(2)] == [True, False]
        stats = wait_for_stat(proxy, "local_rate_limit.edge.rate_limited", 3)
        assert stats["local_rate_limit.edge.rate_limited"] == 3
        assert stats["tcp.edge_tcp.downstream_cx_total"] == 2  # the closed ones never reached tcp_proxy
        assert stats[f"listener.127.0.0.1_{port}.downstream_cx_total"] == 5


@pytest.mark.integration
def test_two_workers_share_the_listener_bucket(tmp_path: Path) -> None:
    port = free_port()
    bucket = {"max_tokens": 3, "tokens_per_fill": 1, "fill_interval": "3600s"}
    with echo_backend() as backend, ProxyProcess(proxy_config(port, backend, token_bucket=bucket), tmp_path,
                                                 concurrency=2) as proxy:
        answered = [exchange(port) for _ in range(8)]
        assert answered.count(True) == 3, answered  # separate buckets would let up to 6 through
        stats = wait_for_stat(proxy, "local_rate_limit.edge.rate_limited", 5)
        assert stats["local_rate_limit.edge.rate_limited"] == 5
