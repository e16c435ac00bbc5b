"""gRPC through Tulle, end to end: real grpcio clients and servers, through one and two proxy
processes on loopback (HTTP/2 both sides: trailers, streaming both ways, deadlines, cancellation,
large messages, and local replies as gRPC errors)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from backends import bootstrap, file_access_log, read_lines, wait_until
from grpc_backend import GrpcBackend, grpc_backend, stub
from proxy_harness import ProxyProcess, free_port, http_listener, simple_route, static_cluster

pytestmark = pytest.mark.integration

HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def grpc_cluster(name: str, port: int) -> dict[str, Any]:
    return static_cluster(name, [port], typed_extension_protocol_options={
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}})


@contextlib.contextmanager
def grpc_proxy(tmp_path: Path, upstream_port: int, name: str = "proxy") -> Iterator[tuple[ProxyProcess, int]]:
    port = free_port()
    workdir = tmp_path / name
    workdir.mkdir()
    config = bootstrap([http_listener("ingress", port, simple_route("grpc"))], [grpc_cluster("grpc", upstream_port)])
    with ProxyProcess(config, workdir) as proxy:
        yield proxy, port


@pytest.fixture(scope="module")
def backend() -> Iterator[GrpcBackend]:
    with grpc_backend("origin") as server:
        yield server


@pytest.fixture
def one_hop(tmp_path: Path, backend: GrpcBackend) -> Iterator[tuple[ProxyProcess, grpc.Channel]]:
    with grpc_proxy(tmp_path, backend.port) as (proxy, port), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield proxy, channel


def test_unary_with_metadata_and_trailing_metadata(one_hop: tuple[ProxyProcess, grpc.Channel]) -> None:
    proxy, channel = one_hop
    call = stub(channel, "Unary")
    response, outcome = call.with_call(b"hello", metadata=(("x-echo", "m1"), ("x-echo-trailer", "t1")), timeout=10)
    assert response == b"origin:hello"
    assert ("x-echo", "m1") in outcome.initial_metadata()
    assert ("x-echo-trailer", "t1") in outcome.trailing_metadata()  # trailers crossed the proxy
    assert outcome.code() == grpc.StatusCode.OK
    stats = proxy.stats()
    assert stats["cluster.grpc.upstream_cx_http2_total"] == 1
    assert stats["http.ingress.downstream_rq_http2_total"] == 1


def test_all_three_streaming_kinds(one_hop: tuple[ProxyProcess, grpc.Channel]) -> None:
    _, channel = one_hop
    assert list(stub(channel, "ServerStream", "unary_stream")(b"50", timeout=10)) == [
        str(index).encode() for index in range(50)]
    assert stub(channel, "ClientStream", "stream_unary")(iter([b"a", b"b", b"c"]), timeout=10) == b"a,b,c"
    replies = stub(channel, "BidiStream", "stream_stream")(iter([b"x", b"yz"] * 20), timeout=10)
    assert list(replies) == [b"X", b"YZ"] * 20


def test_error_statuses_and_messages_come_through(one_hop: tuple[ProxyProcess, grpc.Channel]) -> None:
    _, channel = one_hop
    with pytest.raises(grpc.RpcError) as caught:
        stub(channel, "Unary")(b"fail:5", timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "asked to fail"


def test_a_deadline_ends_the_call_and_cancels_it_upstream(
        one_hop: tuple[ProxyProcess, grpc.Channel], backend: GrpcBackend) -> None:
    _, channel = one_hop
    before = backend.cancelled
    with pytest.raises(grpc.RpcError) as caught:
        stub(channel, "Unary")(b"sleep:5", timeout=0.3)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # the client's RST_STREAM reached the server through the proxy: it stopped working on the call
    wait_until(lambda: backend.cancelled > before, timeout=4.0)


def test_large_messages_both_ways(one_hop: tuple[ProxyProcess, grpc.Channel]) -> None:
    _, channel = one_hop
    assert len(stub(channel, "Unary")(b"size:3500000", timeout=20)) == 3_500_000
    big = b"q" * 3_000_000
    assert stub(channel, "Unary")(big, timeout=20) == b"origin:" + big


def test_many_concurrent_calls_on_one_channel(one_hop: tuple[ProxyProcess, grpc.Channel]) -> None:
    _, channel = one_hop
    call = stub(channel, "Unary")
    pending = [call.future(f"n{index}".encode(), timeout=20) for index in range(200)]
    assert [future.result() for future in pending] == [f"origin:n{index}".encode() for index in range(200)]


def test_through_two_sidecars(tmp_path: Path, backend: GrpcBackend) -> None:
    with grpc_proxy(tmp_path, backend.port, "server-side") as (server_proxy, server_port), \
            grpc_proxy(tmp_path, server_port, "client-side") as (client_proxy, client_port), \
            grpc.insecure_channel(f"127.0.0.1:{client_port}") as channel:
        response, outcome = stub(channel, "Unary").with_call(b"two", metadata=(("x-echo-trailer", "t2"),),
                                                              timeout=10)
        assert response == b"origin:two"
        assert ("x-echo-trailer", "t2") in outcome.trailing_metadata()
        assert list(stub(channel, "BidiStream", "stream_stream")(iter([b"a"] * 10), timeout=10)) == [b"A"] * 10
        for proxy in (client_proxy, server_proxy):
            assert proxy.stats()["cluster.grpc.upstream_cx_http2_total"] == 1


def test_max_grpc_timeout_caps_the_callers_deadline(tmp_path: Path, backend: GrpcBackend) -> None:
    port = free_port()
    route = simple_route("grpc", max_grpc_timeout="0.3s")
    config = bootstrap([http_listener("ingress", port, route)], [grpc_cluster("grpc", backend.port)])
    with ProxyProcess(config, tmp_path) as proxy, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as caught:
            stub(channel, "Unary")(b"sleep:5", timeout=30)
        # Envoy's upstream timeout, as a gRPC error: 504 maps to UNAVAILABLE
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert caught.value.details() == "upstream request timeout"
        assert proxy.stats()["cluster.grpc.upstream_rq_timeout"] == 1


def test_access_logs_carry_the_grpc_status(tmp_path: Path, backend: GrpcBackend) -> None:
    port = free_port()
    log_path = tmp_path / "access.log"
    listener = http_listener("ingress", port, simple_route("grpc"),
                             access_log=file_access_log(log_path, "%GRPC_STATUS% %TRAILER(x-echo-trailer)%\n"))
    config = bootstrap([listener], [grpc_cluster("grpc", backend.port)])
    with ProxyProcess(config, tmp_path), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub(channel, "Unary")(b"ok", metadata=(("x-echo-trailer", "t9"),), timeout=10)
        with pytest.raises(grpc.RpcError):
            stub(channel, "Unary")(b"fail:14", timeout=10)
        lines = read_lines(log_path, 2)
    assert lines == ["Ok t9", "Unavailable -"]


def test_a_local_reply_is_a_grpc_error(tmp_path: Path) -> None:
    closed = free_port()  # nothing listens: the connect fails, and the proxy answers itself
    with grpc_proxy(tmp_path, closed) as (_, port), grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as caught:
            stub(channel, "Unary")(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # Envoy maps the 503 to UNAVAILABLE
    assert "upstream connect error" in caught.value.details()
