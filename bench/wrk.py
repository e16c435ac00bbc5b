"""Run wrk and read its ``--latency`` report into numbers."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from harness import BenchError, Supervisor, run_to_completion

_TIME_UNITS_US = {"us": 1.0, "ms": 1_000.0, "s": 1_000_000.0, "m": 60_000_000.0, "h": 3_600_000_000.0}
_TIME_VALUE = re.compile(r"^([0-9]*\.?[0-9]+)(us|ms|s|m|h)$")
_PERCENTILE_LINE = re.compile(r"^\s*(50|75|90|99)(?:\.0+)?%\s+(\S+)\s*$", re.MULTILINE)
_TOTALS_LINE = re.compile(r"^\s*(\d+) requests in (\S+), (\S+) read", re.MULTILINE)
_RATE_LINE = re.compile(r"^Requests/sec:\s+([0-9.]+)", re.MULTILINE)
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def duration_to_us(token: str) -> float:
    """wrk prints durations as ``250.00us``, ``1.23ms``, ``2.00s`` or ``1.00m``."""
    match = _TIME_VALUE.match(token.strip())
    if match is None:
        raise BenchError(f"wrk printed a duration I cannot read: {token!r}")
    return float(match.group(1)) * _TIME_UNITS_US[match.group(2)]


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    requests_per_s: float
    latency_us: dict[str, float]
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx_3xx: int = 0

    @property
    def error_count(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx_3xx

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def parse_wrk_output(text: str) -> WrkResult:
    totals = _TOTALS_LINE.search(text)
    rate = _RATE_LINE.search(text)
    if totals is None or rate is None:
        raise BenchError(f"wrk output has no totals: {text.strip()[-300:]!r}")
    latency = {f"p{percent}": duration_to_us(value) for percent, value in _PERCENTILE_LINE.findall(text)}
    if set(latency) != {"p50", "p75", "p90", "p99"}:
        raise BenchError("wrk output has no latency distribution (was --latency given?)")
    socket_errors: dict[str, int] = {}
    errors = _SOCKET_ERRORS.search(text)
    if errors is not None:
        socket_errors = dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True))
    non_2xx = _NON_2XX.search(text)
    return WrkResult(
        requests=int(totals.group(1)),
        duration_s=duration_to_us(totals.group(2)) / 1_000_000.0,
        requests_per_s=float(rate.group(1)),
        latency_us=latency,
        socket_errors=socket_errors,
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def wrk_command(url: str, *, connections: int, threads: int, duration_s: float) -> list[str]:
    return [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout", "5s",
        "--latency",
        url,
    ]


@dataclass
class WrkRun:
    result: WrkResult
    started_at: float  # time.time() just before wrk was started
    finished_at: float
    output: str


def run_wrk(supervisor: Supervisor, name: str, argv: list[str], *, cpus: tuple[int, ...] | None = None) -> WrkRun:
    """Run wrk to completion under the supervisor, so an interrupted run leaves no wrk behind."""
    output, started_at, finished_at = run_to_completion(supervisor, "wrk", name, argv, cpus=cpus)
    return WrkRun(parse_wrk_output(output), started_at, finished_at, output)

