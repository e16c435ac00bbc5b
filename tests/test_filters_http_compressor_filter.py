"""envoy.filters.http.compressor (gzip): Accept-Encoding negotiation in memory, and compressed
responses through a real proxy process (decompressed here to check them byte for byte)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends import Client, bootstrap, echo_backend
from proxy_harness import ProxyProcess, free_port, http_listener, simple_route, static_cluster
from tulle.filters.http.compressor.filter import CompressorStats, accepts_gzip
from tulle.stats.store import Store

ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
GZIP = {"name": "text_optimized", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip",
    "memory_level": 3, "window_bits": 10}}


def compressor(**response: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"@type": "type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor",
                              "compressor_library": GZIP}
    if response:
        config["response_direction_config"] = response
    return {"name": "envoy.filters.http.compressor", "typed_config": config}


@pytest.mark.parametrize(("header", "expected"), [
    ("gzip", True), ("gzip;q=0.5, br", True), ("br, *", True), ("gzip;q=0", False), ("identity", False),
    ("deflate", False), ("gzip;q=0.2, identity;q=0.8", False), ("*;q=0", False),
])
def test_accept_encoding_negotiation(header: str, expected: bool) -> None:
    assert accepts_gzip(header, CompressorStats(Store(), "p.")) is expected


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    with echo_backend() as port:
        yield port


def proxy(tmp_path: Path, echo_port: int, **response: Any) -> Any:
    port = free_port()
    filters = [compressor(**response), ROUTER]
    config = bootstrap([http_listener("ingress", port, simple_route("echo"), http_filters=filters)],
                       [static_cluster("echo", [echo_port])])
    return ProxyProcess(config, tmp_path), port


def test_json_is_compressed_for_clients_that_accept_gzip(tmp_path: Path, echo_port: int) -> None:
    running, port = proxy(tmp_path, echo_port)
    with running, Client(port) as client:
        compressed = client.request("GET", "/hello", [("accept-encoding", "gzip, br")])
        plain = client.request("GET", "/hello")
        head = client.request("HEAD", "/hello", [("accept-encoding", "gzip")])
        stats = running.stats()
    assert compressed.header("content-encoding") == "gzip"
    assert compressed.header("vary") == "Accept-Encoding"
    assert compressed.header("content-length") is None
    original = gzip.decompress(compressed.body)
    assert original.startswith(b"{") and b'"/hello"' in original
    assert plain.header("content-encoding") is None and plain.body.startswith(b"{")
    assert head.header("content-encoding") is None  # no body, nothing to compress
    prefix = "http.ingress.compressor.text_optimized.gzip."
    assert stats[prefix + "compressed"] == 1 and stats[prefix + "no_accept_header"] == 1
    assert stats[prefix + "total_uncompressed_bytes"] == len(original)
    assert stats[prefix + "total_compressed_bytes"] == len(compressed.body)


def test_content_type_length_and_status_rules(tmp_path: Path, echo_port: int) -> None:
    running, port = proxy(tmp_path, echo_port, common_config={"min_content_length": 50,
                                                               "content_type": ["text/plain"]},
                          uncompressible_response_codes=[503])
    with running, Client(port) as client:
        json_reply = client.request("GET", "/hello", [("accept-encoding", "gzip")])
        small = client.request("GET", "/status/200", [("accept-encoding", "gzip")])  # text/plain, 11 bytes
        refused = client.request("GET", "/status/503", [("accept-encoding", "gzip")])
        stats = running.stats()
    assert json_reply.header("content-encoding") is None  # not a listed content type
    assert small.header("content-encoding") is None
    assert refused.header("content-encoding") is None
    assert stats["http.ingress.compressor.text_optimized.gzip.content_length_too_small"] >= 1


def test_a_chunked_response_is_compressed_as_it_streams(tmp_path: Path, echo_port: int) -> None:
    running, port = proxy(tmp_path, echo_port, common_config={"content_type": ["application/octet-stream"]})
    with running, Client(port) as client:
        response = client.request("GET", "/bytes/200000", [("accept-encoding", "gzip")])
    assert response.header("content-encoding") == "gzip"
    assert gzip.decompress(response.body) == b"x" * 200000
    assert len(response.body) < 2000
