"""bench/check_reuse.py: counting connect() calls in strace output."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from check_reuse import count_connects  # noqa: E402

ORIGIN = 20001


def connect_line(pid: int, when: float, port: int, *, family: str = "AF_INET") -> str:
    if family == "AF_UNIX":
        address = '{sa_family=AF_UNIX, sun_path="/var/run/nscd/socket"}'
    else:
        address = f'{{sa_family={family}, sin_port=htons({port}), sin_addr=inet_addr("127.0.0.1")}}'
    return f"{pid} {when:.6f} connect(12, {address}, 16) = -1 EINPROGRESS (Operation now in progress)"


def test_only_connects_inside_the_window_count() -> None:
    lines = [
        connect_line(10, 100.0, ORIGIN),  # readiness probe, before the measured window
        connect_line(10, 105.5, ORIGIN),
        connect_line(11, 106.0, ORIGIN),
        connect_line(11, 106.5, ORIGIN + 1),  # somewhere else
        connect_line(11, 107.0, 0, family="AF_UNIX"),
        "11 107.100000 +++ exited with 0 +++",
        connect_line(10, 120.0, ORIGIN),  # after the window
    ]
    count = count_connects("\n".join(lines), port=ORIGIN, start=105.0, end=110.0)
    assert count.to_port == 2
    assert count.total == 4


def test_lines_without_pid_prefix_are_read_too() -> None:
    line = connect_line(1, 50.0, ORIGIN).split(" ", 1)[1]
    assert count_connects(line, port=ORIGIN, start=0.0, end=100.0).to_port == 1


def test_resumed_halves_are_not_counted_twice() -> None:
    text = (
        f"7 10.000000 connect(3, {{sa_family=AF_INET, sin_port=htons({ORIGIN}), sin_addr=inet_addr(\"127.0.0.1\")}}, "
        "16 <unfinished ...>\n"
        "7 10.000100 <... connect resumed>) = 0\n"
    )
    assert count_connects(text, port=ORIGIN, start=0.0, end=100.0).to_port == 1
