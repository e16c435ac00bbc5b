"""envoy.filters.http.decompressor (gzip): request and response bodies inflated on their way through a
real proxy process, the encoding headers adjusted, and inflation bombs stopped."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends import Client, RawBackend, bootstrap, echo_backend, respond
from proxy_harness import ProxyProcess, free_port, http_listener, simple_route, static_cluster
from tulle.filters.http.decompressor.filter import InflateError, Inflater

ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def decompressor(**fields: Any) -> dict[str, Any]:
    return {"name": "envoy.filters.http.decompressor", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.decompressor.v3.Decompressor",
        "decompressor_library": {"name": "upload", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.compression.gzip.decompressor.v3.Gzip",
            "max_inflate_ratio": 20}}, **fields}}


def test_inflation_past_the_ratio_is_an_error() -> None:
    bomb = gzip.compress(b"\0" * 1_000_000)
    inflater = Inflater(15, 20, 4096)
    with pytest.raises(InflateError):
        for offset in range(0, len(bomb), 100):
            inflater.feed(bomb[offset:offset + 100])
    ordinary = gzip.compress(b"hello world " * 10)
    assert Inflater(15, 20, 4096).feed(ordinary) == b"hello world " * 10


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    with echo_backend() as port:
        yield port


def running(tmp_path: Path, upstream: int, **fields: Any) -> tuple[ProxyProcess, int]:
    port = free_port()
    config = bootstrap([http_listener("ingress", port, simple_route("up"), http_filters=[decompressor(**fields), ROUTER])],
                       [static_cluster("up", [upstream])])
    return ProxyProcess(config, tmp_path), port


def test_a_gzip_request_body_reaches_the_upstream_inflated(tmp_path: Path, echo_port: int) -> None:
    body = os.urandom(3000).hex().encode()  # compresses about 2:1, well within the ratio
    proxy, port = running(tmp_path, echo_port)
    with proxy, Client(port) as client:
        response = client.request("POST", "/upload", [("content-encoding", "gzip")], body=gzip.compress(body))
        plain = client.request("POST", "/upload", body=b"as is")
        stats = proxy.stats()
    echoed = json.loads(response.body)
    assert echoed["body_length"] == len(body)
    assert "content-encoding" not in echoed["headers"]
    assert echoed["headers"]["accept-encoding"] == "gzip"  # advertised: responses may come compressed
    assert json.loads(plain.body)["body_length"] == 5
    prefix = "http.ingress.decompressor.upload.gzip.request."
    assert stats[prefix + "decompressed"] == 1 and stats[prefix + "total_uncompressed_bytes"] == len(body)


def test_a_bomb_is_refused_with_a_400(tmp_path: Path, echo_port: int) -> None:
    proxy, port = running(tmp_path, echo_port)
    with proxy, Client(port) as client:
        response = client.request("POST", "/upload", [("content-encoding", "gzip")],
                                  body=gzip.compress(b"\0" * 2_000_000))
        stats = proxy.stats()
    assert response.status == 400 and b"max_inflate_ratio" in response.body
    assert stats["http.ingress.decompressor.upload.gzip.request.decompression_error"] == 1


def test_a_gzip_response_reaches_the_client_inflated(tmp_path: Path) -> None:
    original = b'{"items": "' + os.urandom(2000).hex().encode() + b'"}'
    headers = [("content-type", "application/json"), ("content-encoding", "gzip")]
    with RawBackend(respond(200, headers, gzip.compress(original))) as backend:
        proxy, port = running(tmp_path, backend.port)
        with proxy, Client(port) as client:
            response = client.request("GET", "/data", [("accept-encoding", "br")])
        assert response.status == 200 and response.body == original
        assert response.header("content-encoding") is None and response.header("content-length") is None
        [request] = backend.requests
        assert request.header("accept-encoding") == "br, gzip"


def test_response_decompression_can_be_turned_off(tmp_path: Path) -> None:
    compressed = gzip.compress(b"kept compressed")
    with RawBackend(respond(200, [("content-encoding", "gzip")], compressed)) as backend:
        proxy, port = running(tmp_path, backend.port, response_direction_config={"common_config": {
            "enabled": {"default_value": False, "runtime_key": "response_decompressor_enabled"}}})
        with proxy, Client(port) as client:
            response = client.request("GET", "/data")
        assert response.body == compressed and response.header("content-encoding") == "gzip"
        assert backend.requests[0].header("accept-encoding") is None  # nothing to advertise
