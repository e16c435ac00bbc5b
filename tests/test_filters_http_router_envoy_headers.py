"""The x-envoy-* request headers the router consumes."""

from __future__ import annotations

from tulle.filters.http.router.envoy_headers import EnvoyRequestHeaders, parse_ms
from tulle.http.headers import HeaderMap


def request(*extra: tuple[str, str]) -> HeaderMap:
    return HeaderMap([(":method", "GET"), (":path", "/"), (":authority", "a"), *extra])


def test_consumed_headers_are_read_and_removed_in_one_pass() -> None:
    headers = request(("x-envoy-retry-on", "5xx"), ("x-keep", "1"), ("x-envoy-max-retries", "3"),
                      ("x-envoy-retry-on", "reset"), ("x-envoy-upstream-rq-timeout-ms", "250"),
                      ("x-envoy-upstream-rq-per-try-timeout-ms", "100"), ("x-envoy-retriable-status-codes", "409"),
                      ("x-envoy-retriable-header-names", "x-a"), ("x-envoy-retry-grpc-on", "unavailable"),
                      ("x-envoy-upstream-rq-timeout-alt-response", ""), ("x-envoy-upstream-stream-duration-ms", "9"),
                      ("x-envoy-hedge-on-per-try-timeout", "true"), ("x-envoy-original-path", "/o"))
    found = EnvoyRequestHeaders.take(headers, respect_expected_rq_timeout=False)
    assert found is not None
    assert (found.retry_on, found.max_retries, found.rq_timeout_ms, found.per_try_timeout_ms) == (
        "5xx", "3", "250", "100")  # the first value of a repeated header
    assert (found.retriable_status_codes, found.retriable_header_names, found.retry_grpc_on) == (
        "409", "x-a", "unavailable")
    assert (found.timeout_alt_response, found.stream_duration_ms, found.hedge_on_per_try_timeout) == ("", "9", "true")
    # only what the router consumes goes; other x-envoy-* headers are forwarded
    assert [name for name, _ in headers] == [":method", ":path", ":authority", "x-keep", "x-envoy-original-path"]


def test_nothing_to_consume_is_none_and_changes_nothing() -> None:
    headers = request(("x-envoy-original-path", "/o"), ("x-envoy-expected-rq-timeout-ms", "100"))
    before = headers.items()
    assert EnvoyRequestHeaders.take(headers, respect_expected_rq_timeout=False) is None
    assert headers.items() == before


def test_expected_timeout_is_read_when_respected_and_never_removed() -> None:
    headers = request(("x-envoy-expected-rq-timeout-ms", "700"))
    found = EnvoyRequestHeaders.take(headers, respect_expected_rq_timeout=True)
    assert found is not None and found.expected_rq_timeout_ms == "700"
    assert headers.get("x-envoy-expected-rq-timeout-ms") == "700"


def test_parse_ms() -> None:
    assert parse_ms("1500") == 1.5
    assert parse_ms(" 20 ") == 0.02
    assert parse_ms("0") == 0.0
    for bad in (None, "", "-5", "1.5", "10ms"):
        assert parse_ms(bad) is None
