"""Envoy substitution commands, the default format, JSON typing and refusals."""

from __future__ import annotations

import calendar
import json
import socket

import pytest
from envoy.config.core.v3 import substitution_format_string_pb2
from envoy.extensions.formatter.req_without_query.v3 import req_without_query_pb2  # noqa: F401 (Any type)
from google.protobuf import json_format

from tulle.access_log.formatter import (
    DEFAULT_FORMAT,
    compile_format,
    compile_json_format,
    default_formatter,
    formatter_from_proto,
)
from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.http.headers import HeaderMap
from tulle.stream_info import StreamInfo

START = calendar.timegm((2016, 4, 15, 20, 17, 0)) + 0.310


def make_info() -> StreamInfo:
    info = StreamInfo("10.0.35.28:51234", "10.0.0.2:10000")
    info.start_time = START
    info.end_monotonic = info.start_monotonic + 0.226
    info.first_upstream_rx_monotonic = info.start_monotonic + 0.1
    info.protocol = "HTTP/1.1"
    info.request_headers = HeaderMap(
        [
            (":method", "POST"), (":path", "/api/v1/locations"), (":authority", "locations"),
            ("x-forwarded-for", "10.0.35.28"), ("user-agent", "nsq2http"),
            ("x-request-id", "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2"),
        ]
    )
    info.response_headers = HeaderMap([(":status", "204"), ("x-envoy-upstream-service-time", "100")])
    info.response_code = 204
    info.bytes_received = 154
    info.bytes_sent = 0
    info.upstream_host = "10.0.2.1:80"
    info.upstream_cluster = "locations"
    info.upstream_local_address = "10.0.0.2:40000"
    info.route_name = "r1"
    info.response_code_details = "via_upstream"
    return info


def test_default_format_string_is_envoys() -> None:
    assert DEFAULT_FORMAT == (
        '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
        "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
        '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
        '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
    )


def test_default_format_renders_envoys_example() -> None:
    line = default_formatter().format(make_info())
    assert line == (
        '[2016-04-15T20:17:00.310Z] "POST /api/v1/locations HTTP/1.1" 204 - 154 0 226 100 "10.0.35.28" '
        '"nsq2http" "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2" "locations" "10.0.2.1:80"\n'
    )


def test_missing_values_print_dash() -> None:
    info = StreamInfo()
    info.protocol = ""
    line = compile_format("%REQ(:PATH)% %PROTOCOL% %DURATION% %UPSTREAM_HOST% %ROUTE_NAME% %RESPONSE_CODE%", "f")
    assert line.format(info) == "- - - - - 0"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("%RESPONSE_CODE%", "204"),
        ("%RESPONSE_CODE_DETAILS%", "via_upstream"),
        ("%RESPONSE_FLAGS%", "UF,URX"),
        ("%BYTES_RECEIVED%/%BYTES_SENT%", "154/0"),
        ("%DURATION%", "226"),
        ("%RESPONSE_DURATION%", "100"),
        ("%REQUEST_DURATION%", "-"),  # StreamInfo has no last-downstream-byte mark
        ("%UPSTREAM_HOST%", "10.0.2.1:80"),
        ("%UPSTREAM_CLUSTER%", "locations"),
        ("%UPSTREAM_LOCAL_ADDRESS%", "10.0.0.2:40000"),
        ("%UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "10.0.2.1"),
        ("%DOWNSTREAM_REMOTE_ADDRESS%", "10.0.35.28:51234"),
        ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "10.0.35.28"),
        ("%DOWNSTREAM_LOCAL_ADDRESS%", "10.0.0.2:10000"),
        ("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", "10.0.0.2"),
        ("%DOWNSTREAM_LOCAL_PORT%", "10000"),
        ("%PROTOCOL%", "HTTP/1.1"),
        ("%ROUTE_NAME%", "r1"),
        ("%REQ(X-REQUEST-ID)%", "cc21d9b0-cf5c-432b-8c7e-98aeb7988cd2"),
        ("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "/api/v1/locations"),
        ("%REQ(USER-AGENT):3%", "nsq"),
        ("%RESP(:STATUS)%", "204"),
        ("%RESP(X-MISSING?X-ENVOY-UPSTREAM-SERVICE-TIME)%", "100"),
        ("%HOSTNAME%", socket.gethostname()),
        ("100%% %CONNECTION_TERMINATION_DETAILS%", "100% -"),
    ],
)
def test_commands(command: str, expected: str) -> None:
    info = make_info()
    info.add_flag("UF")
    info.add_flag("URX")
    assert compile_format(command, "f").format(info) == expected


def test_start_time_specifiers() -> None:
    info = make_info()
    assert compile_format("%START_TIME(%s)%", "f").format(info) == str(int(START))
    assert compile_format("%START_TIME(%s.%3f)%", "f").format(info) == f"{int(START)}.310"
    assert compile_format("%START_TIME(%s.%6f)%", "f").format(info) == f"{int(START)}.310000"
    assert compile_format("%START_TIME(%Y/%m/%dT%H:%M:%S%z)%", "f").format(info) == "2016/04/15T20:17:00+0000"
    assert compile_format("%START_TIME(%f)%", "f").format(info)[:3] == "310"
    assert len(compile_format("%START_TIME(%f)%", "f").format(info)) == 9
    assert compile_format("%START_TIME(%%s)%", "f").format(info) == "%s"


def test_environment_is_read_at_config_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TULLE_TEST_ENV", "abcdef")
    formatter = compile_format("%ENVIRONMENT(TULLE_TEST_ENV):3% %ENVIRONMENT(TULLE_TEST_UNSET)%", "f")
    monkeypatch.setenv("TULLE_TEST_ENV", "changed")
    assert formatter.format(make_info()) == "abc -"


def test_grpc_status_and_trailers() -> None:
    field = "access_log[0].typed_config.log_format"
    info = make_info()
    info.response_code = 200
    info.response_headers = HeaderMap([(":status", "200"), ("content-type", "application/grpc")])
    info.response_trailers = HeaderMap([("grpc-status", "4"), ("grpc-message", "too slow")])
    line = "%GRPC_STATUS% %GRPC_STATUS(SNAKE_STRING)% %GRPC_STATUS(NUMBER)% %GRPC_STATUS_NUMBER% %TRAILER(grpc-message)%"
    assert compile_format(line, field).format(info) == "DeadlineExceeded DEADLINE_EXCEEDED 4 4 too slow"
    info.response_trailers = None  # trailers-only: the status is in the headers
    info.response_headers = HeaderMap([(":status", "200"), ("grpc-status", "1")])
    assert compile_format("%GRPC_STATUS%", field).format(info) == "Canceled"
    info.response_headers = HeaderMap([(":status", "503")])  # no gRPC status at all: from the HTTP one
    info.response_code = 503
    assert compile_format("%GRPC_STATUS%|%TRAILER(x)%", field).format(info) == "Unavailable|-"
    with pytest.raises(ConfigError):
        compile_format("%GRPC_STATUS(LOUD)%", field)


def test_unknown_command_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedFeature) as refused:
        compile_format("%DYNAMIC_METADATA(ns:key)%", "access_log[0].typed_config.log_format")
    assert "%DYNAMIC_METADATA%" in str(refused.value)
    assert refused.value.field == "access_log[0].typed_config.log_format"


@pytest.mark.parametrize("bad", ["50% off", "%REQ%", "%REQ(a?b?c)%", "%DURATION(x)%", "%ENVIRONMENT%", "%lower%"])
def test_malformed_formats_are_config_errors(bad: str) -> None:
    with pytest.raises(ConfigError) as error:
        compile_format(bad, "f")
    assert not isinstance(error.value, UnsupportedFeature)


def test_omit_empty_values_in_text() -> None:
    formatter = compile_format("[%UPSTREAM_HOST%]", "f", omit_empty_values=True)
    assert formatter.format(StreamInfo()) == "[]"


def test_json_format_keeps_types() -> None:
    formatter = compile_json_format(
        {
            "code": "%RESPONSE_CODE%", "duration": "%DURATION%", "with_unit": "%DURATION%ms",
            "host": "%UPSTREAM_HOST%", "missing": "%REQ(X-NOPE)%", "nested": {"ua": "%REQ(USER-AGENT)%"},
            "constant": 7, "list": ["%PROTOCOL%", "x"],
        },
        "f",
    )
    line = formatter.format(make_info())
    assert line.endswith("\n") and line.count("\n") == 1
    document = json.loads(line)
    assert document == {
        "code": 204, "duration": 226, "with_unit": "226ms", "host": "10.0.2.1:80", "missing": None,
        "nested": {"ua": "nsq2http"}, "constant": 7, "list": ["HTTP/1.1", "x"],
    }
    assert formatter.content_type == "application/json"


def test_json_untyped_and_omit_empty_and_sorting() -> None:
    untyped = json.loads(compile_json_format({"code": "%RESPONSE_CODE%", "h": "%REQ(X-NOPE)%"}, "f", typed=False)
                         .format(make_info()))
    assert untyped == {"code": "204", "h": "-"}
    omitted = json.loads(
        compile_json_format({"h": "%REQ(X-NOPE)%", "code": "%RESPONSE_CODE%", "p": "x%REQ(X-NOPE)%"}, "f",
                            omit_empty_values=True).format(make_info())
    )
    assert omitted == {"code": 204, "p": "x"}
    ordered = compile_json_format({"b": "1", "a": "2"}, "f", sort_properties=True).format(make_info())
    assert ordered == '{"a":"2","b":"1"}\n'


def _substitution(data: dict) -> substitution_format_string_pb2.SubstitutionFormatString:
    return json_format.ParseDict(data, substitution_format_string_pb2.SubstitutionFormatString())


def test_formatter_from_proto() -> None:
    info = make_info()
    text = formatter_from_proto(_substitution({"text_format_source": {"inline_string": "%RESPONSE_CODE%\n"}}), "f")
    assert text.format(info) == "204\n"
    typed = formatter_from_proto(
        _substitution({"json_format": {"c": "%RESPONSE_CODE%"}, "content_type": "application/x-ndjson"}), "f"
    )
    assert json.loads(typed.format(info)) == {"c": 204}
    assert typed.content_type == "application/x-ndjson"
    assert formatter_from_proto(_substitution({}), "f").format(info) == default_formatter().format(info)


def test_formatter_from_proto_refuses_extensions() -> None:
    proto = _substitution(
        {"text_format": "x", "formatters": [{
            "name": "envoy.formatter.req_without_query",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery"
            },
        }]}
    )
    with pytest.raises(UnsupportedFeature) as refused:
        formatter_from_proto(proto, "log_format")
    assert refused.value.field == "log_format.formatters"
