"""bench/grpc_unary.py: the h2load gRPC command line, the framed messages and the report table."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from grpc_unary import PATH, REPLY_MESSAGE, REQUEST_MESSAGE, SHAPES, h2load_grpc_argv, markdown_table  # noqa: E402


def test_h2load_sends_grpc_calls_with_the_shapes_streams_per_connection() -> None:
    argv = h2load_grpc_argv(8080, Path("/tmp/request"), 4, 100, 10.0, 2.0)
    assert argv[:7] == ["h2load", "-c4", "-m100", "-t1", "-D", "10", "--warm-up-time=2"]
    assert argv[7:9] == ["-d", "/tmp/request"]  # a body: the call is a POST
    assert ["-H", "content-type: application/grpc"] == argv[9:11] and ["-H", "te: trailers"] == argv[11:13]
    assert argv[-1] == f"http://127.0.0.1:8080{PATH}"
    assert [(clients, streams) for _, clients, streams in SHAPES] == [(32, 1), (4, 100)]


def test_messages_are_length_prefixed_grpc_frames() -> None:
    for message in (REQUEST_MESSAGE, REPLY_MESSAGE):
        assert message[0] == 0 and int.from_bytes(message[1:5], "big") == len(message) - 5


def test_table_reports_tulle_against_direct_and_nginx() -> None:
    cells = {"1 call": {"direct": {"req_s": 40000.0, "cpu_us_per_req": 10.0, "rss_mib": 5.0},
                        "nginx": {"req_s": 20000.0, "cpu_us_per_req": 40.0, "rss_mib": 12.0},
                        "tulle": {"req_s": 10000.0, "cpu_us_per_req": 100.0, "rss_mib": 45.5}}}
    row = markdown_table(cells).splitlines()[2]
    assert row == "| 1 call | 40,000 | 20,000 | 10,000 | 0.25× | 0.50× | 40.0 | 100.0 | 2.50× | 45.5 |"
