"""Envoy access log format strings: ``%COMMAND(arg):max_len%`` substitution.

A format is compiled once into literal strings and bound getters; formatting
a request is one pass over that list. Each getter returns a typed value
(``int`` for numbers, ``str``, or ``None`` when unset): text output prints
``-`` for ``None``; typed JSON keeps numbers as numbers and ``None`` as
``null``, as Envoy's ``json_format`` does.

Syntax follows Envoy's parser: ``%%`` is a literal ``%``; any other ``%`` must
start a valid ``%NAME%``, ``%NAME(arg)%`` or ``%NAME(arg):N%`` command, else
the format is refused with the position. Valid commands Tulle does not
implement are refused by name.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import socket
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format

from tulle.config.errors import ConfigError, UnsupportedFeature, join
from tulle.config.support import check_fields
from tulle.http.grpc import status_for_http
from tulle.stream_info import StreamInfo

Getter = Callable[[StreamInfo], Any]

DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% "
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

_COMMAND = re.compile(r"%([A-Z0-9_]+)(?:\(([^)]*)\))?(?::([0-9]+))?%")
_DASH = "-"


# --- time ---------------------------------------------------------------
# Sub-second specifiers strftime cannot produce: %s, %f / %1f..%9f, and absl's %E<n>S / %E*S.
_TIME_SPECIAL = re.compile(r"%%|%s|%([1-9])?f|%E([0-9*])S")


class _TimeFormat:
    """strftime in UTC plus Envoy's extras; the seconds-resolution text is cached per second."""

    def __init__(self, pattern: str) -> None:
        # Alternating strftime chunks (str) and sub-second specifier closures.
        self.parts: list[str | Callable[[float], str]] = []
        position = 0
        for match in _TIME_SPECIAL.finditer(pattern):
            token = match.group(0)
            if token == "%%":
                continue  # strftime handles it
            self.parts.append(pattern[position:match.start()])
            self.parts.append(_time_special(token, match.group(1), match.group(2)))
            position = match.end()
        self.parts.append(pattern[position:])
        self._cached_second = -1
        self._cached_chunks: list[str] = []

    def format(self, timestamp: float) -> str:
        second = math.floor(timestamp)
        if second != self._cached_second:
            moment = datetime.datetime.fromtimestamp(second, tz=datetime.UTC)
            self._cached_chunks = [moment.strftime(p) if isinstance(p, str) else "" for p in self.parts]
            self._cached_second = second
        return "".join(
            chunk if isinstance(part, str) else part(timestamp)
            for chunk, part in zip(self._cached_chunks, self.parts, strict=True)
        )


def _time_special(token: str, digits: str | None, e_digits: str | None) -> Callable[[float], str]:
    if token == "%s":
        return lambda t: str(math.floor(t))
    if token.endswith("f"):
        width = int(digits) if digits else 9
        return lambda t: _fraction(t, width)
    if e_digits == "*":  # seconds with as many fractional digits as needed
        return lambda t: _seconds_with_fraction(t, 9).rstrip("0").rstrip(".")
    width = int(e_digits or 0)
    return lambda t: _seconds_with_fraction(t, width)


def _fraction(timestamp: float, width: int) -> str:
    # A float epoch time is exact to about a microsecond: round there, then pad to nanoseconds.
    micros = min(round((timestamp - math.floor(timestamp)) * 1e6), 999_999)
    return f"{micros:06d}000"[:width]


def _seconds_with_fraction(timestamp: float, width: int) -> str:
    seconds = f"{math.floor(timestamp) % 60:02d}"
    return seconds + ("." + _fraction(timestamp, width) if width else "")


_DEFAULT_TIME = _TimeFormat("%Y-%m-%dT%H:%M:%E3SZ")


# --- getters --------------------------------------------------------------
def _header_getter(attribute: str, arg: str | None, max_length: int | None, command: str, field: str) -> Getter:
    if not arg:
        raise ConfigError(f"{command} requires a header name: %{command}(X?Y):Z%", field=field)
    names = arg.split("?")
    if len(names) > 2 or not all(names):
        raise ConfigError(f"more than 1 alternative header specified in %{command}({arg})%", field=field)
    main = names[0].lower()
    alternative = names[1].lower() if len(names) == 2 else None

    def get(info: StreamInfo) -> str | None:
        headers = getattr(info, attribute)
        if headers is None:
            return None
        value = headers.get(main)
        if value is None and alternative is not None:
            value = headers.get(alternative)
        if value is None or max_length is None:
            return value
        return value[:max_length]

    return get


# gRPC status codes: number -> SNAKE_STRING (the protocol's names); CAMEL_STRING derives from them
_GRPC_STATUS_NAMES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)


def _grpc_status_getter(style: str) -> Getter:
    """Envoy's %GRPC_STATUS%: grpc-status from the trailers, else the headers (trailers-only), else the
    HTTP status mapped as for a local reply; nothing for a request that got no response."""

    def get(info: StreamInfo) -> str | int | None:
        code = None
        for headers in (info.response_trailers, info.response_headers):
            if headers is not None:
                value = headers.get("grpc-status")
                if value is not None and value.strip().isdigit():
                    code = int(value.strip())
                    break
        if code is None:
            if not info.response_code:
                return None
            code = status_for_http(info.response_code)  # 200 without a status: UNKNOWN, as Envoy infers
        if style == "NUMBER":
            return code
        if code >= len(_GRPC_STATUS_NAMES):
            return str(code)  # a status outside the standard ones: its number
        snake = _GRPC_STATUS_NAMES[code]
        if style == "SNAKE_STRING":
            return snake
        return "Canceled" if code == 1 else "".join(part.capitalize() for part in snake.split("_"))  # Envoy's

    return get


def _non_empty(attribute: str) -> Getter:
    def get(info: StreamInfo) -> str | None:
        return getattr(info, attribute) or None

    return get


def _address_host(attribute: str) -> Getter:
    def get(info: StreamInfo) -> str | None:
        address = getattr(info, attribute)
        if not address:
            return None
        host = address.rpartition(":")[0] if ":" in address else address
        return host[1:-1] if host.startswith("[") else host

    return get


def _address_port(attribute: str) -> Getter:
    def get(info: StreamInfo) -> int | None:
        address = getattr(info, attribute)
        if not address or ":" not in address:
            return None
        port = address.rpartition(":")[2]
        return int(port) if port.isdigit() else None

    return get


def _since_start(attribute: str) -> Getter:
    """Milliseconds from the stream start to a monotonic mark; None until the mark is set.

    ``getattr`` with a default lets formats name marks StreamInfo does not record yet.
    """

    def get(info: StreamInfo) -> int | None:
        mark = getattr(info, attribute, None)
        if mark is None:
            return None
        return elapsed_ms(info.start_monotonic, mark)

    return get


def elapsed_ms(start: float, end: float) -> int:
    """Whole milliseconds, truncated like Envoy's duration_cast, after rounding away the float
    error of monotonic seconds (0.1 s must not print as 99 ms)."""
    return round((end - start) * 1e6) // 1000


def _start_time_getter(arg: str | None) -> Getter:
    time_format = _TimeFormat(arg) if arg else _DEFAULT_TIME

    def get(info: StreamInfo) -> str:
        return time_format.format(info.start_time)

    return get


def _constant(value: str | None) -> Getter:
    def get(info: StreamInfo) -> str | None:
        return value

    return get


# name -> getter for argument-free commands
_SIMPLE: dict[str, Getter] = {
    "RESPONSE_CODE": lambda info: info.response_code,
    "RESPONSE_CODE_DETAILS": _non_empty("response_code_details"),
    "RESPONSE_FLAGS": lambda info: info.flags_string(),
    "BYTES_RECEIVED": lambda info: info.bytes_received,
    "BYTES_SENT": lambda info: info.bytes_sent,
    "DURATION": _since_start("end_monotonic"),
    # StreamInfo has no last-downstream-byte mark yet: prints "-" until it records one.
    "REQUEST_DURATION": _since_start("last_downstream_rx_monotonic"),
    "RESPONSE_DURATION": _since_start("first_upstream_rx_monotonic"),
    "UPSTREAM_HOST": _non_empty("upstream_host"),
    "UPSTREAM_CLUSTER": _non_empty("upstream_cluster"),
    "UPSTREAM_LOCAL_ADDRESS": _non_empty("upstream_local_address"),
    "UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": _address_host("upstream_local_address"),
    "UPSTREAM_LOCAL_PORT": _address_port("upstream_local_address"),
    "UPSTREAM_REMOTE_ADDRESS": _non_empty("upstream_host"),
    "UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _address_host("upstream_host"),
    "UPSTREAM_REMOTE_PORT": _address_port("upstream_host"),
    "DOWNSTREAM_REMOTE_ADDRESS": _non_empty("downstream_remote_address"),
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": _address_host("downstream_remote_address"),
    "DOWNSTREAM_REMOTE_PORT": _address_port("downstream_remote_address"),
    "DOWNSTREAM_LOCAL_ADDRESS": _non_empty("downstream_local_address"),
    "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": _address_host("downstream_local_address"),
    "DOWNSTREAM_LOCAL_PORT": _address_port("downstream_local_address"),
    "PROTOCOL": _non_empty("protocol"),
    "ROUTE_NAME": _non_empty("route_name"),
    "CONNECTION_TERMINATION_DETAILS": _non_empty("connection_termination_details"),
    "STREAM_ID": _non_empty("request_id"),
}


def _truncating(getter: Getter, max_length: int) -> Getter:
    def get(info: StreamInfo) -> Any:
        value = getter(info)
        return value[:max_length] if isinstance(value, str) else value

    return get


def compile_command(name: str, arg: str | None, max_length: int | None, field: str) -> Getter:
    """One ``%NAME(arg):max_length%`` command -> its getter."""
    if name in ("REQ", "RESP", "TRAILER"):
        attribute = {"REQ": "request_headers", "RESP": "response_headers", "TRAILER": "response_trailers"}[name]
        return _header_getter(attribute, arg, max_length, name, field)
    if name in ("GRPC_STATUS", "GRPC_STATUS_NUMBER"):
        style = "NUMBER" if name == "GRPC_STATUS_NUMBER" else (arg or "CAMEL_STRING")
        if name == "GRPC_STATUS_NUMBER" and arg is not None:
            raise ConfigError(f"%{name}% takes no argument, got ({arg})", field=field)
        if style not in ("CAMEL_STRING", "SNAKE_STRING", "NUMBER"):
            raise ConfigError(f"GRPC_STATUS format {arg!r}: CAMEL_STRING, SNAKE_STRING or NUMBER", field=field)
        getter = _grpc_status_getter(style)
        return _truncating(getter, max_length) if max_length is not None else getter
    if name == "START_TIME":
        getter = _start_time_getter(arg)
    elif name == "HOSTNAME":
        getter = _constant(socket.gethostname() or None)
    elif name == "ENVIRONMENT":
        if not arg:
            raise ConfigError("ENVIRONMENT requires a variable name: %ENVIRONMENT(X):Z%", field=field)
        getter = _constant(os.environ.get(arg) or None)  # read once, as Envoy does
    elif name in _SIMPLE:
        if arg is not None:
            raise ConfigError(f"%{name}% takes no argument, got ({arg})", field=field)
        getter = _SIMPLE[name]
    else:
        raise UnsupportedFeature(f"access log command %{name}%", field=field)
    return _truncating(getter, max_length) if max_length is not None else getter


def _parse(text: str, field: str) -> list[tuple[str, Getter | None]]:
    """Split a format into (literal, getter-or-None) pairs; the literal comes first."""
    segments: list[tuple[str, Getter | None]] = []
    literal: list[str] = []
    position = 0
    while position < len(text):
        percent = text.find("%", position)
        if percent < 0:
            literal.append(text[position:])
            break
        literal.append(text[position:percent])
        if text.startswith("%%", percent):
            literal.append("%")
            position = percent + 2
            continue
        match = _COMMAND.match(text, percent)
        if match is None:
            raise ConfigError(
                f"Incorrect configuration: {text!r}. Couldn't find valid command at position {percent}",
                field=field,
            )
        name, arg, max_length = match.group(1), match.group(2), match.group(3)
        getter = compile_command(name, arg, int(max_length) if max_length else None, field)
        segments.append(("".join(literal), getter))
        literal = []
        position = match.end()
    if literal and "".join(literal):
        segments.append(("".join(literal), None))
    return segments


class Formatter:
    """A compiled format: ``format(info)`` renders one log line (or local reply body)."""

    content_type = "text/plain"

    def format(self, info: StreamInfo) -> str:
        raise NotImplementedError


class TextFormatter(Formatter):
    def __init__(self, text: str, field: str, *, omit_empty_values: bool = False) -> None:
        self.text = text
        self._segments = _parse(text, field)
        self._missing = "" if omit_empty_values else _DASH

    def format(self, info: StreamInfo) -> str:
        missing = self._missing
        pieces: list[str] = []
        for literal, getter in self._segments:
            pieces.append(literal)
            if getter is not None:
                value = getter(info)
                if value.__class__ is str:
                    pieces.append(value)
                else:
                    pieces.append(missing if value is None else str(value))
        return "".join(pieces)

    def typed_value(self, info: StreamInfo) -> Any:
        """The raw value when the format is exactly one command (typed JSON), else the text."""
        literal, getter = self._segments[0]
        return getter(info) if getter is not None else literal

    @property
    def is_single_command(self) -> bool:
        return len(self._segments) == 1 and self._segments[0][0] == "" and self._segments[0][1] is not None


_OMIT = object()


class JsonFormatter(Formatter):
    """``json_format``: each string value is a format; nested objects and lists are kept."""

    content_type = "application/json"

    def __init__(
        self,
        template: dict[str, Any],
        field: str,
        *,
        omit_empty_values: bool = False,
        typed: bool = True,
        sort_properties: bool = False,
    ) -> None:
        self._omit_empty = omit_empty_values
        self._typed = typed
        self._sort = sort_properties
        self._render = self._compile(template, field)

    def _compile(self, node: Any, field: str) -> Callable[[StreamInfo], Any]:
        if isinstance(node, dict):
            children = [(key, self._compile(value, f"{field}.{key}")) for key, value in node.items()]
            return lambda info: self._render_object(children, info)
        if isinstance(node, list):
            items = [self._compile(value, f"{field}[{i}]") for i, value in enumerate(node)]
            return lambda info: [value for value in (item(info) for item in items) if value is not _OMIT]
        if isinstance(node, str):
            return self._compile_string(node, field)
        return lambda info: node  # numbers, booleans and null pass through

    def _render_object(self, children: list[tuple[str, Callable[[StreamInfo], Any]]], info: StreamInfo) -> Any:
        out = {}
        for key, render in children:
            value = render(info)
            if value is not _OMIT:
                out[key] = value
        return out

    def _compile_string(self, text: str, field: str) -> Callable[[StreamInfo], Any]:
        formatter = TextFormatter(text, field, omit_empty_values=self._omit_empty)
        omit_empty = self._omit_empty
        if self._typed and formatter.is_single_command:

            def typed(info: StreamInfo) -> Any:
                value = formatter.typed_value(info)
                if value is None or (omit_empty and value == ""):
                    return _OMIT if omit_empty else None
                return value

            return typed

        def text_value(info: StreamInfo) -> Any:
            value = formatter.format(info)
            return _OMIT if omit_empty and value == "" else value

        return text_value

    def format(self, info: StreamInfo) -> str:
        return json.dumps(self._render(info), separators=(",", ":"), sort_keys=self._sort, ensure_ascii=False) + "\n"


def compile_format(text: str, field: str, *, omit_empty_values: bool = False) -> TextFormatter:
    """Compile an Envoy text format string (``text_format_source.inline_string`` etc.)."""
    return TextFormatter(text, field, omit_empty_values=omit_empty_values)


def compile_json_format(
    struct_dict: dict[str, Any],
    field: str,
    *,
    omit_empty_values: bool = False,
    typed: bool = True,
    sort_properties: bool = False,
) -> JsonFormatter:
    """Compile ``json_format`` (a google.protobuf.Struct as a dict) into a JSON-lines formatter."""
    return JsonFormatter(
        struct_dict, field, omit_empty_values=omit_empty_values, typed=typed, sort_properties=sort_properties
    )


def default_formatter() -> TextFormatter:
    return compile_format(DEFAULT_FORMAT, "")


def formatter_from_proto(log_format: Any, field: str) -> Formatter:
    """Build a formatter from an ``envoy.config.core.v3.SubstitutionFormatString``."""
    check_fields(
        log_format,
        ("text_format", "json_format", "text_format_source", "omit_empty_values", "content_type",
         "json_format_options"),
        field,
    )
    omit_empty = log_format.omit_empty_values
    formatter: Formatter
    kind = log_format.WhichOneof("format")
    if kind == "json_format":
        sort_properties = False
        if log_format.HasField("json_format_options"):
            check_fields(log_format.json_format_options, ("sort_properties",), join(field, "json_format_options"))
            sort_properties = log_format.json_format_options.sort_properties
        formatter = compile_json_format(
            json_format.MessageToDict(log_format.json_format), join(field, "json_format"),
            omit_empty_values=omit_empty, sort_properties=sort_properties,
        )
    else:
        if log_format.HasField("json_format_options"):
            raise ConfigError("json_format_options only applies to json_format", field=join(field, "json_format_options"))
        if kind == "text_format_source":
            text = read_data_source(log_format.text_format_source, join(field, "text_format_source"))
            formatter = compile_format(text, join(field, "text_format_source"), omit_empty_values=omit_empty)
        elif kind == "text_format":
            formatter = compile_format(log_format.text_format, join(field, "text_format"), omit_empty_values=omit_empty)
        else:
            formatter = compile_format(DEFAULT_FORMAT, field, omit_empty_values=omit_empty)
    if log_format.content_type:
        formatter.content_type = log_format.content_type
    return formatter


def read_data_source(source: Any, field: str) -> str:
    """``envoy.config.core.v3.DataSource`` -> text (read once at config time, as Envoy does)."""
    check_fields(source, ("filename", "inline_bytes", "inline_string", "environment_variable"), field)
    kind = source.WhichOneof("specifier")
    if kind == "inline_string":
        return str(source.inline_string)
    if kind == "inline_bytes":
        return bytes(source.inline_bytes).decode("utf-8", "replace")
    if kind == "filename":
        try:
            with open(source.filename, encoding="utf-8") as handle:
                return handle.read()
        except OSError as exc:
            raise ConfigError(f"cannot read {source.filename!r}: {exc.strerror}", field=join(field, "filename")) from None
    if kind == "environment_variable":
        value = os.environ.get(source.environment_variable)
        if value is None:
            raise ConfigError(
                f"environment variable {source.environment_variable!r} is not set",
                field=join(field, "environment_variable"),
            )
        return value
    raise ConfigError("the data source is empty", field=field)
