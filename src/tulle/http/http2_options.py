"""Envoy's ``config.core.v3.Http2ProtocolOptions``, validated once at config time.

The result is an :class:`Http2Settings`, what an HTTP/2 session (``http2_codec``, compiled or not)
advertises and enforces; one per connection manager (downstream) or cluster (upstream), shared by
their connections. Envoy's defaults apply to what is unset; fields Tulle does not implement are
refused by name, never silently ignored.
"""

from __future__ import annotations

from typing import Any

from tulle.config.errors import ConfigError, join
from tulle.config.support import check_fields, duration_seconds

SUPPORTED = (
    "max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size",
    "hpack_table_size", "max_outbound_control_frames", "connection_keepalive",
)
DEFAULT_KEEPALIVE_JITTER = 0.15  # Envoy's interval_jitter default: 15 %

# Envoy's defaults (http2_protocol_options in protocol.proto)
DEFAULT_MAX_CONCURRENT_STREAMS = 2147483647
DEFAULT_WINDOW = 268435456  # 256 MiB: Envoy's initial stream and connection windows
MIN_WINDOW, MAX_WINDOW = 65535, 2147483647
DEFAULT_MAX_OUTBOUND_CONTROL_FRAMES = 1000
# Envoy's limit on streams the peer may reset: rapid reset (CVE-2023-44487). nghttp2's token bucket
# (burst, per second); Envoy's own counter is a premature-reset ratio with the same aim.
RESET_BURST, RESET_RATE = 1000, 33


class Http2Settings:
    """What a session advertises and enforces (Envoy's http2_protocol_options, resolved)."""

    __slots__ = ("max_concurrent_streams", "initial_stream_window_size", "initial_connection_window_size",
                 "max_header_bytes", "max_headers", "max_outbound_ack", "max_settings", "max_continuations",
                 "reset_burst", "reset_rate", "hpack_table_size", "allow_connect")

    def __init__(self, *, max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS,
                 initial_stream_window_size: int = DEFAULT_WINDOW, initial_connection_window_size: int = DEFAULT_WINDOW,
                 max_header_bytes: int = 60 * 1024, max_headers: int = 100,
                 max_outbound_ack: int = DEFAULT_MAX_OUTBOUND_CONTROL_FRAMES, max_settings: int = 32,
                 max_continuations: int = 8, reset_burst: int = RESET_BURST, reset_rate: int = RESET_RATE,
                 hpack_table_size: int = 4096, allow_connect: bool = False) -> None:
        self.max_concurrent_streams = max_concurrent_streams
        self.initial_stream_window_size = initial_stream_window_size
        self.initial_connection_window_size = initial_connection_window_size
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_outbound_ack = max_outbound_ack
        self.max_settings = max_settings
        self.max_continuations = max_continuations
        self.reset_burst = reset_burst
        self.reset_rate = reset_rate
        self.hpack_table_size = hpack_table_size
        self.allow_connect = allow_connect

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    # compared by value: a cluster or listener whose config did not change is not rebuilt
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Http2Settings) and self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())


def http2_settings(options: Any | None, field: str, *, max_header_bytes: int, max_headers: int) -> Http2Settings:
    """The session settings for ``options`` (an Http2ProtocolOptions, or None for Envoy's defaults)."""
    settings = Http2Settings(max_header_bytes=max_header_bytes, max_headers=max_headers)
    if options is None:
        return settings
    check_fields(options, SUPPORTED, field)
    if options.HasField("max_concurrent_streams"):
        value = options.max_concurrent_streams.value
        if not 1 <= value <= DEFAULT_MAX_CONCURRENT_STREAMS:
            raise ConfigError("must be between 1 and 2147483647", field=join(field, "max_concurrent_streams"))
        settings.max_concurrent_streams = value
    for name in ("initial_stream_window_size", "initial_connection_window_size"):
        if options.HasField(name):
            value = getattr(options, name).value
            if not MIN_WINDOW <= value <= MAX_WINDOW:
                raise ConfigError(f"must be between {MIN_WINDOW} and {MAX_WINDOW}", field=join(field, name))
            setattr(settings, name, value)
    if options.HasField("hpack_table_size"):
        settings.hpack_table_size = options.hpack_table_size.value
    if options.HasField("max_outbound_control_frames"):
        value = options.max_outbound_control_frames.value
        if value < 1:
            raise ConfigError("must be at least 1", field=join(field, "max_outbound_control_frames"))
        settings.max_outbound_ack = value
    return settings


def keepalive(options: Any | None, field: str) -> tuple[float, float, float]:
    """``connection_keepalive`` as (interval, timeout, jitter fraction) in seconds; (0, 0, 0) when off.
    Envoy's: a PING every ``interval`` (plus up to ``interval_jitter`` of it), and the connection
    closes when one goes unanswered for ``timeout``."""
    if options is None or not options.HasField("connection_keepalive"):
        return 0.0, 0.0, 0.0
    settings = options.connection_keepalive
    field = join(field, "connection_keepalive")
    check_fields(settings, ("interval", "timeout", "interval_jitter"), field)
    if not settings.HasField("timeout") or duration_seconds(settings.timeout) < 0.001:
        raise ConfigError("must be at least 1ms", field=join(field, "timeout"))
    interval = duration_seconds(settings.interval) if settings.HasField("interval") else 0.0
    if settings.HasField("interval") and interval < 0.001:
        raise ConfigError("must be at least 1ms", field=join(field, "interval"))
    jitter = (settings.interval_jitter.value / 100.0 if settings.HasField("interval_jitter")
              else DEFAULT_KEEPALIVE_JITTER)
    if not 0.0 <= jitter <= 1.0:
        raise ConfigError("must be between 0 and 100", field=join(field, "interval_jitter"))
    return interval, duration_seconds(settings.timeout), jitter
