"""bench/h2load.py: h2load's per-request log, percentiles and the added-latency arithmetic."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from h2load import (  # noqa: E402
    LogRow,
    added_latency,
    added_ratio,
    h2load_command,
    parse_log,
    parse_summary,
    percentile,
    summarize,
)
from harness import BenchError  # noqa: E402

# three rows as h2load 1.52 writes them (start µs since the epoch, status, µs to the end of the response)
LOG = "1796627459284475\t200\t834\n1796627459284456\t200\t889\n1796627459295488\t-1\t2286\n"

SUMMARY = """starting benchmark...
spawning thread #0: 2 total client(s). 2000 total requests
Application protocol: http/1.1
progress: 100% done

finished in 2.01s, 992.90 req/s, 1.21MB/s
requests: 2000 total, 2000 started, 1998 done, 1995 succeeded, 5 failed, 2 errored, 0 timeout
status codes: 1990 2xx, 5 3xx, 2 4xx, 1 5xx
traffic: 2.44MB (2562002) total, 402.35KB (412002) headers (space savings 0.00%), 1.95MB (2048000) data
"""


def test_log_rows_are_start_status_duration() -> None:
    assert parse_log(LOG) == [LogRow(1796627459284475, 200, 834), LogRow(1796627459284456, 200, 889),
                              LogRow(1796627459295488, -1, 2286)]


def test_log_ignores_columns_h2load_may_add_later_and_blank_lines() -> None:
    assert parse_log("10\t200\t5\textra\n\n") == [LogRow(10, 200, 5)]


@pytest.mark.parametrize("line", ["10 200 5", "10\t200", "start\tstatus\tduration"])
def test_log_lines_that_are_not_three_integers_are_refused(line: str) -> None:
    with pytest.raises(BenchError, match="line 1"):
        parse_log(line + "\n")


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 1001)]  # 1..1000
    assert percentile(values, 50) == 500
    assert percentile(values, 99) == 990
    assert percentile(values, 99.9) == 999
    assert percentile(values, 100) == 1000
    assert percentile([7.0], 99.9) == 7.0
    with pytest.raises(BenchError):
        percentile([], 50)


@given(st.lists(st.integers(0, 10**7), min_size=1, max_size=300), st.sampled_from([50.0, 99.0, 99.9]))
def test_percentile_has_that_share_of_values_at_or_below_it(values: list[int], percent: float) -> None:
    ordered = sorted(float(v) for v in values)
    p = percentile(ordered, percent)
    assert p in ordered
    at_or_below = sum(1 for v in ordered if v <= p)
    below = sum(1 for v in ordered if v < p)
    assert at_or_below >= percent / 100 * len(ordered)
    assert below < percent / 100 * len(ordered)


def test_summary_counts_failures_and_takes_percentiles_of_answered_requests_only() -> None:
    rng = random.Random(7)
    durations = list(range(100, 1100))  # 1000 answered requests, 100..1099 µs
    rng.shuffle(durations)
    rows = [LogRow(1_000_000 + i * 1000, 200, d) for i, d in enumerate(durations)]
    rows += [LogRow(1_000_500, -1, 50_000_000), LogRow(1_000_600, 503, 1)]  # neither is a latency sample
    result = summarize(rows)
    assert result.requests == 1002 and result.succeeded == 1000 and result.failed == 2
    assert result.latency_us == {"p50": 599.0, "p99": 1089.0, "p99.9": 1098.0, "max": 1099.0}
    # first start 1.000000 s, last end = the failed row's 1.0005 s + 50 s
    assert result.span_s == pytest.approx(50.0005)


def test_summary_of_a_run_without_a_single_answer_is_an_error() -> None:
    with pytest.raises(BenchError, match="none succeeded"):
        summarize([LogRow(1, -1, 10)])


def test_added_latency_is_the_difference_of_percentiles_per_hop() -> None:
    direct = {"p50": 100.0, "p99": 400.0, "p99.9": 900.0, "max": 5000.0}
    nginx = {"p50": 160.0, "p99": 500.0, "p99.9": 800.0, "max": 9000.0}
    assert added_latency(nginx, direct) == {"p50": 60.0, "p99": 100.0, "p99.9": -100.0}  # noise may be negative


def test_added_ratio_compares_with_the_reference_hop() -> None:
    assert added_ratio(90.0, 60.0) == pytest.approx(1.5)
    assert added_ratio(90.0, 0.0) is None  # the reference added nothing measurable: no ratio
    assert added_ratio(90.0, -5.0) is None
    assert added_ratio(None, 60.0) is None


def test_h2load_summary_is_read() -> None:
    summary = parse_summary(SUMMARY)
    assert summary.requests_total == 2000 and summary.done == 1998
    assert summary.succeeded == 1995 and summary.failed == 5 and summary.errored == 2
    assert summary.status_2xx == 1995 and summary.non_2xx == 3
    assert summary.requests_per_s == pytest.approx(992.90)
    assert summary.duration_s == pytest.approx(2.01)
    with pytest.raises(BenchError, match="no totals"):
        parse_summary("connect to 127.0.0.1 port 1 failed\n")


def test_command_is_open_loop_http1_at_the_fixed_rate_with_a_log() -> None:
    argv = h2load_command("http://127.0.0.1:1/1k", requests=30000, log_file="/tmp/x.log")
    assert argv[0] == "h2load"
    assert {"--h1", "-c2", "--rps=500", "-t1"} <= set(argv)
    assert argv[argv.index("-n") + 1] == "30000"
    assert argv[argv.index("--log-file") + 1] == "/tmp/x.log"
    assert argv[-1] == "http://127.0.0.1:1/1k"
