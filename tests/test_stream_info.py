"""StreamInfo: response flags and durations as Envoy reports them."""

from __future__ import annotations

import time

from tulle import stream_info as flags
from tulle.stream_info import StreamInfo


def test_flags_are_unique_and_rendered_like_envoy() -> None:
    info = StreamInfo("1.2.3.4:5", "127.0.0.1:80")
    assert info.flags_string() == "-"
    info.add_flag(flags.UPSTREAM_CONNECTION_FAILURE)
    info.add_flag(flags.UPSTREAM_RETRY_LIMIT_EXCEEDED)
    info.add_flag(flags.UPSTREAM_CONNECTION_FAILURE)
    assert info.flags_string() == "UF,URX"


def test_duration_rounds_float_error_then_truncates() -> None:
    info = StreamInfo()
    assert info.duration_ms() is None
    info.start_monotonic = 10.0
    info.end_monotonic = 10.1  # 0.09999999999999964 in floating point
    assert info.duration_ms() == 100
    info.end_monotonic = 10.0019
    assert info.duration_ms() == 1


def test_start_times_are_read_from_the_clocks_time_uses() -> None:
    """start_time is wall-clock (time.time) and start_monotonic is time.monotonic's clock: durations
    elsewhere subtract time.monotonic() readings from it (the compiled build reads the clocks in C)."""
    for _ in range(100):
        wall_before, before = time.time(), time.monotonic()
        info = StreamInfo("10.0.0.1:1234", "10.0.0.2:80")
        wall_after, after = time.time(), time.monotonic()
        assert before - 1e-6 <= info.start_monotonic <= after + 1e-6
        assert wall_before - 1e-6 <= info.start_time <= wall_after + 1e-6
