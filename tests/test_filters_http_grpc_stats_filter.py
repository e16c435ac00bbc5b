"""envoy.filters.http.grpc_stats: message framing in memory, and Envoy's stat names for real gRPC
calls through a proxy process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from backends import bootstrap
from grpc_backend import GrpcBackend, grpc_backend, stub
from proxy_harness import ProxyProcess, free_port, http_listener, simple_route, static_cluster
from tulle.filters.http.grpc_stats.filter import GrpcStatsObject, MessageCounter

HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
GRPC_STATS = "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"


def frame(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def test_messages_are_counted_however_the_stream_is_cut() -> None:
    stream = frame(b"abc") + frame(b"") + frame(b"x" * 70000) + frame(b"z")
    for piece in (1, 2, 5, 7, 4096, len(stream)):
        counter = MessageCounter()
        for offset in range(0, len(stream), piece):
            counter.feed(stream[offset:offset + piece])
        assert counter.count == 4, piece


def test_filter_state_reads_as_envoy_prints_it() -> None:
    state = GrpcStatsObject()
    state.request_message_count, state.response_message_count = 3, 5
    assert str(state) == "3,5"


@pytest.fixture(scope="module")
def backend() -> Iterator[GrpcBackend]:
    with grpc_backend("origin") as server:
        yield server


def proxy_config(port: int, upstream: int, stats_config: dict[str, Any]) -> dict[str, Any]:
    cluster = static_cluster("grpc", [upstream], typed_extension_protocol_options={
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}})
    filters = [{"name": "envoy.filters.http.grpc_stats", "typed_config": {"@type": GRPC_STATS, **stats_config}},
               {"name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
    return bootstrap([http_listener("ingress", port, simple_route("grpc"), http_filters=filters)], [cluster])


def test_per_method_stats_for_all_methods(tmp_path: Path, backend: GrpcBackend) -> None:
    port = free_port()
    config = proxy_config(port, backend.port, {"stats_for_all_methods": True})
    with ProxyProcess(config, tmp_path) as proxy, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub(channel, "Unary")(b"a", timeout=10)
        with pytest.raises(grpc.RpcError):
            stub(channel, "Unary")(b"fail:14", timeout=10)
        list(stub(channel, "ServerStream", "unary_stream")(b"7", timeout=10))
        stub(channel, "ClientStream", "stream_unary")(iter([b"1", b"2", b"3"]), timeout=10)
        stats = proxy.stats()
    unary = "cluster.grpc.grpc.test.Echo.Unary."
    assert stats[unary + "success"] == 1 and stats[unary + "failure"] == 1 and stats[unary + "total"] == 2
    assert stats[unary + "0"] == 1 and stats[unary + "14"] == 1
    assert stats[unary + "request_message_count"] == 2 and stats[unary + "response_message_count"] == 1
    streaming = "cluster.grpc.grpc.test.Echo.ServerStream."
    assert stats[streaming + "response_message_count"] == 7 and stats[streaming + "success"] == 1
    assert stats["cluster.grpc.grpc.test.Echo.ClientStream.request_message_count"] == 3


def test_without_per_method_stats_only_the_allowlist_is_named(tmp_path: Path, backend: GrpcBackend) -> None:
    port = free_port()
    config = proxy_config(port, backend.port, {"individual_method_stats_allowlist": {
        "services": [{"name": "test.Echo", "method_names": ["ClientStream"]}]},
        "replace_dots_in_grpc_service_name": True})
    with ProxyProcess(config, tmp_path) as proxy, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub(channel, "Unary")(b"a", timeout=10)
        stub(channel, "ClientStream", "stream_unary")(iter([b"1"]), timeout=10)
        stats = proxy.stats()
    assert stats["cluster.grpc.grpc.success"] == 1 and stats["cluster.grpc.grpc.total"] == 1  # Unary: not listed
    assert stats["cluster.grpc.grpc.test_Echo.ClientStream.success"] == 1  # dots replaced
    assert not any(name.startswith("cluster.grpc.grpc.test_Echo.Unary") for name in stats)


def test_upstream_stats_are_refused_by_name(tmp_path: Path) -> None:
    config = proxy_config(free_port(), free_port(), {"enable_upstream_stats": True})
    with pytest.raises(Exception) as caught:  # noqa: PT011 - the harness raises when the proxy refuses to start
        with ProxyProcess(config, tmp_path):
            pass
    assert "enable_upstream_stats" in str(caught.value)
