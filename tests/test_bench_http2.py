"""bench/http2.py: the h2load command line, the medians over runs and the report table."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from http2 import SHAPES, h2load_argv, markdown_table, medians  # noqa: E402


def test_h2load_speaks_h2c_with_the_shapes_streams_per_connection() -> None:
    argv = h2load_argv(8080, "1k", 4, 100, 10.0, 2.0)
    assert argv == ["h2load", "-c4", "-m100", "-t1", "-D", "10", "--warm-up-time=2", "http://127.0.0.1:8080/1k"]
    assert "--h1" not in argv  # prior-knowledge HTTP/2, not HTTP/1.1
    assert [(clients, streams) for _, clients, streams in SHAPES] == [(32, 1), (4, 100)]


def test_medians_take_the_middle_run_of_each_measure() -> None:
    runs = {"shape": {"nginx": [{"req_s": 10.0, "cpu_us_per_req": 5.0, "rss_mib": 1.0},
                                {"req_s": 30.0, "cpu_us_per_req": 1.0, "rss_mib": 3.0},
                                {"req_s": 20.0, "cpu_us_per_req": 9.0, "rss_mib": 2.0}]}}
    assert medians(runs) == {"shape": {"nginx": {"req_s": 20.0, "cpu_us_per_req": 5.0, "rss_mib": 2.0}}}


def test_table_reports_tulle_over_nginx() -> None:
    cells = {"1 stream": {"nginx": {"req_s": 20000.0, "cpu_us_per_req": 40.0, "rss_mib": 12.0},
                          "tulle": {"req_s": 10000.0, "cpu_us_per_req": 100.0, "rss_mib": 45.5}}}
    row = markdown_table(cells).splitlines()[2]
    assert row == "| 1 stream | 20,000 | 10,000 | 0.50× | 40.0 | 100.0 | 2.50× | 45.5 |"
