"""gRPC as the proxy knows it: content types, and local replies turned into gRPC errors."""

from __future__ import annotations

from tulle.http.grpc import (
    encode_message,
    is_grpc_request,
    local_reply_headers,
    service_and_method,
    status_for_http,
)
from tulle.http.headers import HeaderMap


def test_grpc_content_types() -> None:
    assert is_grpc_request(HeaderMap([("content-type", "application/grpc")]))
    assert is_grpc_request(HeaderMap([("content-type", "application/grpc+proto")]))
    assert is_grpc_request(HeaderMap([("content-type", "application/grpc;charset=utf-8")]))
    assert not is_grpc_request(HeaderMap([("content-type", "application/grpc-web")]))
    assert not is_grpc_request(HeaderMap([("content-type", "application/json")]))
    assert not is_grpc_request(HeaderMap([]))


def test_http_statuses_map_to_envoys_grpc_statuses() -> None:
    assert [status_for_http(code) for code in (400, 401, 403, 404, 429, 502, 503, 504, 500, 418)] == [
        13, 16, 7, 12, 14, 14, 14, 14, 2, 2]


def test_a_local_reply_becomes_a_trailers_only_grpc_error() -> None:
    assert local_reply_headers(503, "no healthy upstream") == [
        (":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "14"),
        ("grpc-message", "no healthy upstream")]
    assert local_reply_headers(503, "", grpc_status=8) == [
        (":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "8")]


def test_grpc_message_is_percent_encoded() -> None:
    assert encode_message("100% done\nnow") == "100%25 done%0Anow"
    assert encode_message("caf\u00e9") == "caf%C3%A9"


def test_service_and_method_come_from_the_path() -> None:
    assert service_and_method("/pkg.Svc/Call") == ("pkg.Svc", "Call")
    assert service_and_method("/pkg.Svc/Call/extra") is None
    assert service_and_method("/pkg.Svc/") is None
    assert service_and_method("pkg.Svc/Call") is None
