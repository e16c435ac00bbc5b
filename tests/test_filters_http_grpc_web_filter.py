"""envoy.filters.http.grpc_web: browsers' gRPC-Web (binary and -text) over HTTP/1.1, through a real
proxy process to a real gRPC server, and its framing in memory."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import Client, bootstrap
from grpc_backend import GrpcBackend, grpc_backend
from proxy_harness import ProxyProcess, free_port, http_listener, simple_route, static_cluster
from tulle.filters.http.grpc_web.filter import is_grpc_web_request, trailers_message
from tulle.http.headers import HeaderMap

pytestmark = pytest.mark.integration

HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
GRPC_WEB = {"name": "envoy.filters.http.grpc_web",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_web.v3.GrpcWeb"}}


def frame(payload: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + len(payload).to_bytes(4, "big") + payload


def messages(body: bytes) -> list[tuple[int, bytes]]:
    out = []
    while body:
        size = int.from_bytes(body[1:5], "big")
        out.append((body[0], body[5:5 + size]))
        body = body[5 + size:]
    return out


def test_trailers_become_the_last_message() -> None:
    trailers = HeaderMap([("grpc-status", "0"), ("grpc-message", "ok")])
    block = b"grpc-status:0\r\ngrpc-message:ok\r\n"
    assert trailers_message(trailers) == b"\x80" + len(block).to_bytes(4, "big") + block


def test_grpc_web_content_types() -> None:
    for content_type in ("application/grpc-web", "application/grpc-web+proto", "application/grpc-web-text",
                         "application/grpc-web-text+proto", "application/grpc-web; charset=utf-8"):
        assert is_grpc_web_request(HeaderMap([("content-type", content_type)])), content_type
    assert not is_grpc_web_request(HeaderMap([("content-type", "application/grpc")]))


@pytest.fixture(scope="module")
def backend() -> Iterator[GrpcBackend]:
    with grpc_backend("origin") as server:
        yield server


@pytest.fixture
def proxy(tmp_path: Path, backend: GrpcBackend) -> Iterator[tuple[ProxyProcess, int]]:
    port = free_port()
    cluster = static_cluster("grpc", [backend.port], typed_extension_protocol_options={
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}})
    config = bootstrap([http_listener("ingress", port, simple_route("grpc"), http_filters=[GRPC_WEB, ROUTER])],
                       [cluster])
    with ProxyProcess(config, tmp_path) as running:
        yield running, port


def test_binary_grpc_web_over_http1(proxy: tuple[ProxyProcess, int]) -> None:
    process, port = proxy
    with Client(port) as client:
        response = client.request("POST", "/test.Echo/Unary", [
            ("content-type", "application/grpc-web+proto"), ("x-grpc-web", "1"),
            ("x-echo-trailer", "t")], body=frame(b"hi"))
    assert response.status == 200
    assert response.header("content-type") == "application/grpc-web+proto"
    [(reply_flag, reply), (trailer_flag, trailer_block)] = messages(response.body)
    assert (reply_flag, trailer_flag) == (0, 0x80)
    assert reply == b"origin:hi"
    assert b"grpc-status:0\r\n" in trailer_block and b"x-echo-trailer:t\r\n" in trailer_block
    stats = process.stats()
    assert stats["cluster.grpc.grpc-web.test.Echo.Unary.success"] == 1
    assert stats["cluster.grpc.grpc-web.test.Echo.Unary.total"] == 1


def test_text_grpc_web_is_base64_both_ways(proxy: tuple[ProxyProcess, int]) -> None:
    _, port = proxy
    with Client(port) as client:
        response = client.request("POST", "/test.Echo/Unary", [
            ("content-type", "application/grpc-web-text"), ("accept", "application/grpc-web-text")],
            body=base64.b64encode(frame(b"text mode")))
    assert response.status == 200
    assert response.header("content-type") == "application/grpc-web-text+proto"
    decoded = base64.b64decode(response.body)
    [(reply_flag, reply), (trailer_flag, trailer_block)] = messages(decoded)
    assert (reply_flag, trailer_flag) == (0, 0x80)
    assert reply == b"origin:text mode" and b"grpc-status:0" in trailer_block


def test_errors_arrive_in_the_headers_of_a_trailers_only_response(proxy: tuple[ProxyProcess, int]) -> None:
    process, port = proxy
    with Client(port) as client:
        response = client.request("POST", "/test.Echo/Unary", [("content-type", "application/grpc-web")],
                                  body=frame(b"fail:5"))
    assert response.status == 200
    assert response.header("grpc-status") == "5" and response.header("grpc-message") == "asked to fail"
    assert process.stats()["cluster.grpc.grpc-web.test.Echo.Unary.failure"] == 1


def test_invalid_base64_is_a_400(proxy: tuple[ProxyProcess, int]) -> None:
    _, port = proxy
    with Client(port) as client:
        response = client.request("POST", "/test.Echo/Unary", [("content-type", "application/grpc-web-text")],
                                  body=b"!!!not base64!!!")
    # Envoy's 400, as a gRPC error (the request is gRPC by then), in the client's framing
    assert response.status == 200
    assert response.header("grpc-status") == "13"  # INTERNAL, Envoy's mapping of 400
    assert "invalid base64" in (response.header("grpc-message") or "")
    assert response.header("content-type") == "application/grpc-web-text+proto"


def test_plain_requests_pass_untouched(proxy: tuple[ProxyProcess, int]) -> None:
    _, port = proxy
    with Client(port) as client:
        response = client.request("GET", "/anything")
    # not gRPC-Web: forwarded as is (the gRPC server answers a plain GET with an HTTP error)
    assert response.header("content-type") != "application/grpc-web+proto"
