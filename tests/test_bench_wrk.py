"""bench/wrk.py: reading wrk --latency reports."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from harness import BenchError  # noqa: E402
from wrk import duration_to_us, parse_wrk_output, wrk_command  # noqa: E402


def wrk_report(*, requests: int, seconds: str, rate: str, percentiles: dict[str, str], extra: str = "") -> str:
    """A report shaped like wrk 4.1's output with ``--latency``."""
    distribution = "\n".join(f"     {pct}%  {value}" for pct, value in percentiles.items())
    return (
        "Running 10s test @ http://127.0.0.1:20000/1k\n"
        "  1 threads and 32 connections\n"
        "  Thread Stats   Avg      Stdev     Max   +/- Stdev\n"
        "    Latency   300.00us  100.00us   5.00ms   90.00%\n"
        "    Req/Sec    50.00k     1.00k   55.00k    70.00%\n"
        "  Latency Distribution\n"
        f"{distribution}\n"
        f"  {requests} requests in {seconds}, 10.00MB read\n"
        f"{extra}"
        f"Requests/sec:  {rate}\n"
        "Transfer/sec:      1.00MB\n"
    )


@pytest.mark.parametrize(
    ("token", "unit_us"),
    [("us", 1.0), ("ms", 1_000.0), ("s", 1_000_000.0), ("m", 60_000_000.0)],
)
@given(value=st.decimals(min_value=0, max_value=10_000, places=2))
def test_duration_units_scale_to_microseconds(token: str, unit_us: float, value) -> None:
    assert duration_to_us(f"{value}{token}") == pytest.approx(float(value) * unit_us)


def test_duration_rejects_unknown_text() -> None:
    with pytest.raises(BenchError):
        duration_to_us("fast")


@given(
    requests=st.integers(min_value=1, max_value=10**9),
    latencies_us=st.lists(st.integers(min_value=1, max_value=10**7), min_size=4, max_size=4).map(sorted),
)
def test_report_numbers_are_recovered(requests: int, latencies_us: list[int]) -> None:
    percentiles = {pct: f"{value / 1000:.2f}ms" for pct, value in zip(("50", "75", "90", "99"), latencies_us,
                                                                       strict=True)}
    rate = f"{requests / 10:.2f}"
    result = parse_wrk_output(wrk_report(requests=requests, seconds="10.00s", rate=rate, percentiles=percentiles))
    assert result.requests == requests
    assert result.duration_s == pytest.approx(10.0)
    assert result.requests_per_s == pytest.approx(float(rate))
    for pct, value in zip(("p50", "p75", "p90", "p99"), latencies_us, strict=True):
        assert result.latency_us[pct] == pytest.approx(round(value / 1000, 2) * 1000)
    assert result.error_count == 0


def test_socket_errors_and_non_2xx_are_counted() -> None:
    extra = "  Socket errors: connect 1, read 2, write 3, timeout 4\n  Non-2xx or 3xx responses: 5\n"
    percentiles = {"50": "1.00ms", "75": "2.00ms", "90": "3.00ms", "99": "4.00ms"}
    result = parse_wrk_output(wrk_report(requests=100, seconds="1.00m", rate="1.67", percentiles=percentiles,
                                         extra=extra))
    assert result.socket_errors == {"connect": 1, "read": 2, "write": 3, "timeout": 4}
    assert result.non_2xx_3xx == 5
    assert result.error_count == 15
    assert result.duration_s == pytest.approx(60.0)


def test_report_without_latency_distribution_is_refused() -> None:
    text = wrk_report(requests=10, seconds="1.00s", rate="10.00", percentiles={"50": "1.00ms"})
    with pytest.raises(BenchError, match="latency distribution"):
        parse_wrk_output(text)


def test_truncated_report_is_refused() -> None:
    with pytest.raises(BenchError, match="no totals"):
        parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_command_asks_for_latency_with_the_requested_load() -> None:
    argv = wrk_command("http://127.0.0.1:1/1k", connections=64, threads=2, duration_s=5)
    assert argv[0] == "wrk"
    assert {"-t2", "-c64", "-d5s", "--latency"} <= set(argv)
    assert argv[-1] == "http://127.0.0.1:1/1k"
