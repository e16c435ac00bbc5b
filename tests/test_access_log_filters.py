"""AccessLogFilter semantics and refusals."""

from __future__ import annotations

import pytest
from envoy.config.accesslog.v3 import accesslog_pb2
from google.protobuf import json_format

from tulle.access_log.filters import compile_filter
from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.http.headers import HeaderMap
from tulle.stream_info import StreamInfo


def build(data: dict, field: str = "access_log[0].filter"):
    return compile_filter(json_format.ParseDict(data, accesslog_pb2.AccessLogFilter()), field)


def info_with(code: int = 200, duration_s: float | None = 0.05, flags: tuple[str, ...] = (),
              headers: list[tuple[str, str]] | None = None) -> StreamInfo:
    info = StreamInfo()
    info.response_code = code
    if duration_s is not None:
        info.end_monotonic = info.start_monotonic + duration_s
    for flag in flags:
        info.add_flag(flag)
    info.request_headers = HeaderMap(headers) if headers is not None else None
    return info


def comparison(op: str, value: int) -> dict:
    return {"comparison": {"op": op, "value": {"default_value": value, "runtime_key": "access_log.threshold"}}}


@pytest.mark.parametrize(
    ("op", "value", "code", "expected"),
    [
        ("EQ", 200, 200, True), ("EQ", 200, 404, False),
        ("GE", 400, 503, True), ("GE", 400, 200, False),
        ("LE", 299, 204, True), ("LE", 299, 500, False),
        ("NE", 200, 500, True), ("NE", 200, 200, False),
    ],
)
def test_status_code_filter(op: str, value: int, code: int, expected: bool) -> None:
    assert build({"status_code_filter": comparison(op, value)})(info_with(code=code)) is expected


def test_duration_filter_uses_milliseconds() -> None:
    slow = build({"duration_filter": comparison("GE", 100)})
    assert slow(info_with(duration_s=0.25)) is True
    assert slow(info_with(duration_s=0.05)) is False


def test_not_health_check_filter_passes_regular_streams() -> None:
    assert build({"not_health_check_filter": {}})(info_with()) is True


def test_response_flag_filter() -> None:
    any_flag = build({"response_flag_filter": {}})
    assert any_flag(info_with(flags=("UF",))) is True
    assert any_flag(info_with()) is False
    only_timeouts = build({"response_flag_filter": {"flags": ["UT", "SI"]}})
    assert only_timeouts(info_with(flags=("UT",))) is True
    assert only_timeouts(info_with(flags=("UF",))) is False


def test_response_flag_filter_refuses_unknown_flags() -> None:
    with pytest.raises(ConfigError) as error:
        build({"response_flag_filter": {"flags": ["UF", "XX"]}})
    assert error.value.field == "access_log[0].filter.response_flag_filter.flags[1]"


def test_header_filter() -> None:
    has_debug = build({"header_filter": {"header": {"name": "x-debug", "string_match": {"exact": "1"}}}})
    assert has_debug(info_with(headers=[("x-debug", "1")])) is True
    assert has_debug(info_with(headers=[("x-debug", "0")])) is False
    assert has_debug(info_with(headers=None)) is False
    absent = build({"header_filter": {"header": {"name": "x-debug", "present_match": False}}})
    assert absent(info_with(headers=[])) is True


def test_and_or_filters() -> None:
    errors_or_slow = build(
        {"or_filter": {"filters": [{"status_code_filter": comparison("GE", 500)},
                                   {"duration_filter": comparison("GE", 1000)}]}}
    )
    assert errors_or_slow(info_with(code=503)) is True
    assert errors_or_slow(info_with(code=200, duration_s=2)) is True
    assert errors_or_slow(info_with(code=200)) is False
    slow_errors = build(
        {"and_filter": {"filters": [{"status_code_filter": comparison("GE", 500)},
                                    {"duration_filter": comparison("GE", 1000)}]}}
    )
    assert slow_errors(info_with(code=503)) is False
    assert slow_errors(info_with(code=503, duration_s=2)) is True


def test_and_filter_needs_two_filters() -> None:
    with pytest.raises(ConfigError):
        build({"and_filter": {"filters": [{"not_health_check_filter": {}}]}})


@pytest.mark.parametrize(
    "spec",
    [
        {"runtime_filter": {"runtime_key": "k"}},
        {"traceable_filter": {}},
        {"grpc_status_filter": {}},
        {"log_type_filter": {}},
    ],
)
def test_unsupported_filters_are_refused_by_name(spec: dict) -> None:
    (kind,) = spec
    with pytest.raises(UnsupportedFeature) as refused:
        build(spec)
    assert kind in str(refused.value)
    assert refused.value.field == f"access_log[0].filter.{kind}"


def test_nested_refusal_names_the_path() -> None:
    with pytest.raises(UnsupportedFeature) as refused:
        build({"or_filter": {"filters": [{"not_health_check_filter": {}}, {"traceable_filter": {}}]}})
    assert refused.value.field == "access_log[0].filter.or_filter.filters[1].traceable_filter"
