"""Access log filters (``envoy.config.accesslog.v3.AccessLogFilter``) compiled to predicates.

Supported: status_code_filter, duration_filter, not_health_check_filter,
response_flag_filter, header_filter, and_filter, or_filter. The others
(runtime, traceable, grpc_status, metadata, log_type, extension) are refused.
Header matching is the router's (``tulle.router.matchers``), so both agree.

Comparison values come from ``RuntimeUInt32``: Tulle has no runtime layer, so
the ``runtime_key`` (which Envoy requires) always misses and ``default_value``
applies, exactly what Envoy does when the key is absent from its runtime.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tulle.access_log.formatter import elapsed_ms
from tulle.config.errors import ConfigError, UnsupportedFeature, join
from tulle.config.support import check_fields
from tulle.http.headers import HeaderMap
from tulle.router.matchers import compile_header_matcher
from tulle.stream_info import StreamInfo

Predicate = Callable[[StreamInfo], bool]

_NO_HEADERS = HeaderMap()

# Envoy's ResponseFlagFilter.flags "in" list.
KNOWN_RESPONSE_FLAGS = frozenset(
    {
        "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
        "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
    }
)

_OPS: dict[int, Callable[[int, int], bool]] = {
    0: lambda lhs, rhs: lhs == rhs,  # EQ
    1: lambda lhs, rhs: lhs >= rhs,  # GE
    2: lambda lhs, rhs: lhs <= rhs,  # LE
    3: lambda lhs, rhs: lhs != rhs,  # NE
}


def compile_filter(proto: Any, field: str) -> Predicate:
    """AccessLogFilter -> predicate telling whether a stream should be logged."""
    kind = proto.WhichOneof("filter_specifier")
    if kind is None:
        raise ConfigError("an access log filter needs one filter_specifier", field=field)
    here = join(field, kind)
    spec = getattr(proto, kind)
    if kind == "status_code_filter":
        compare = _comparison(spec, here)
        return lambda info: compare(info.response_code)
    if kind == "duration_filter":
        compare = _comparison(spec, here)
        return lambda info: compare(_current_duration_ms(info))
    if kind == "not_health_check_filter":
        # Set by a health-check filter; Tulle has none, so no stream is a health check.
        return lambda info: not getattr(info, "health_check", False)
    if kind == "response_flag_filter":
        return _response_flag_filter(spec, here)
    if kind == "header_filter":
        check_fields(spec, ("header",), here)
        if not spec.HasField("header"):
            raise ConfigError("header is required", field=join(here, "header"))
        matches = compile_header_matcher(spec.header, join(here, "header"))
        # A stream without request headers (TCP) is matched against an empty map.
        return lambda info: matches(info.request_headers if info.request_headers is not None else _NO_HEADERS)
    if kind in ("and_filter", "or_filter"):
        check_fields(spec, ("filters",), here)
        if len(spec.filters) < 2:
            raise ConfigError(f"{kind} needs at least 2 filters", field=join(here, "filters"))
        children = tuple(
            compile_filter(child, join(join(here, "filters"), f"[{i}]")) for i, child in enumerate(spec.filters)
        )
        if kind == "and_filter":
            return lambda info: all(child(info) for child in children)
        return lambda info: any(child(info) for child in children)
    raise UnsupportedFeature(f"access log filter {kind}", field=here)


def _comparison(spec: Any, field: str) -> Callable[[int], bool]:
    check_fields(spec, ("comparison",), field)
    comparison = spec.comparison
    here = join(field, "comparison")
    check_fields(comparison, ("op", "value"), here)
    check_fields(comparison.value, ("default_value", "runtime_key"), join(here, "value"))
    operator = _OPS.get(comparison.op)
    if operator is None:
        raise ConfigError(f"unknown comparison op {comparison.op}", field=join(here, "op"))
    value = comparison.value.default_value
    return lambda lhs: operator(lhs, value)


def _current_duration_ms(info: StreamInfo) -> int:
    """Envoy's currentDuration: total duration if complete, else time since the start."""
    end = info.end_monotonic if info.end_monotonic is not None else time.monotonic()
    return elapsed_ms(info.start_monotonic, end)


def _response_flag_filter(spec: Any, field: str) -> Predicate:
    check_fields(spec, ("flags",), field)
    wanted = tuple(spec.flags)
    for index, flag in enumerate(wanted):
        if flag not in KNOWN_RESPONSE_FLAGS:
            raise ConfigError(f"unknown response flag {flag!r}", field=join(join(field, "flags"), f"[{index}]"))
    if not wanted:
        return lambda info: bool(info.response_flags)
    wanted_set = frozenset(wanted)
    return lambda info: any(flag in wanted_set for flag in info.response_flags)
