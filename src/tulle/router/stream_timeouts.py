"""A route's downstream stream timeouts: RouteAction ``idle_timeout`` and ``max_stream_duration``.

The connection manager enforces them (Envoy's refreshIdleTimeout / refreshDurationTimeout
when the route is resolved); they override the HCM's ``stream_idle_timeout`` and
``common_http_protocol_options.max_stream_duration`` for the streams of this route.
"""

from __future__ import annotations

from google.protobuf import message

from tulle.config.errors import join
from tulle.config.support import check_fields
from tulle.http.headers import HeaderMap

_MAX_STREAM_DURATION_FIELDS = ("max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset")
# grpc-timeout units (gRPC over HTTP/2 spec) -> seconds
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def _seconds_ms(duration: message.Message) -> float:
    """Whole milliseconds, as seconds (Envoy keeps these timers in ms)."""
    return (duration.seconds * 1000 + duration.nanos // 1_000_000) / 1000  # type: ignore[attr-defined]


def grpc_timeout(headers: HeaderMap) -> float | None:
    """The ``grpc-timeout`` request header in seconds, rounded up to whole ms; None when absent or invalid."""
    value = headers.get("grpc-timeout")
    if not value or len(value) < 2:
        return None
    digits, unit = value[:-1], value[-1]
    scale = _GRPC_UNITS.get(unit)
    if scale is None or not digits.isdigit() or len(digits) > 8:  # the spec allows at most 8 digits
        return None
    millis = int(digits) * scale * 1000
    return -(-millis // 1) / 1000  # ceil to ms


class StreamTimeouts:
    """``idle_timeout``: None = not set (the HCM's applies), 0 = disabled. The duration limits:
    None = not set, 0 = explicitly unlimited."""

    __slots__ = ("idle_timeout", "max_stream_duration", "grpc_timeout_header_max", "grpc_timeout_header_offset")

    def __init__(self, action: message.Message, field: str) -> None:
        self.idle_timeout: float | None = (
            _seconds_ms(action.idle_timeout) if action.HasField("idle_timeout") else None)  # type: ignore[attr-defined]
        self.max_stream_duration: float | None = None
        self.grpc_timeout_header_max: float | None = None
        self.grpc_timeout_header_offset = 0.0
        if action.HasField("max_stream_duration"):
            msd = action.max_stream_duration  # type: ignore[attr-defined]
            check_fields(msd, _MAX_STREAM_DURATION_FIELDS, join(field, "max_stream_duration"))
            if msd.HasField("max_stream_duration"):
                self.max_stream_duration = _seconds_ms(msd.max_stream_duration)
            if msd.HasField("grpc_timeout_header_max"):
                self.grpc_timeout_header_max = _seconds_ms(msd.grpc_timeout_header_max)
            if msd.HasField("grpc_timeout_header_offset"):
                self.grpc_timeout_header_offset = _seconds_ms(msd.grpc_timeout_header_offset)

    @staticmethod
    def of(action: message.Message, field: str) -> StreamTimeouts | None:
        if not action.HasField("idle_timeout") and not action.HasField("max_stream_duration"):
            return None
        return StreamTimeouts(action, field)

    def duration(self, headers: HeaderMap, hcm_default: float) -> float | None:
        """The stream's duration limit in seconds (None: unlimited), Envoy's refreshDurationTimeout.

        With ``grpc_timeout_header_max`` set, a request's ``grpc-timeout`` header is the limit
        (capped by a non-zero maximum, minus the offset); a header limit of 0 expires at once.
        """
        header_timeout = grpc_timeout(headers) if self.grpc_timeout_header_max is not None else None
        if header_timeout is None:
            limit = self.max_stream_duration if self.max_stream_duration is not None else hcm_default
            return limit or None  # an explicit 0 disables the HCM's limit too
        timeout = header_timeout
        cap = self.grpc_timeout_header_max
        if cap and timeout > cap:
            timeout = cap
        offset = self.grpc_timeout_header_offset
        if timeout and offset:
            timeout = timeout - offset if offset < timeout else 0.0
        return timeout
