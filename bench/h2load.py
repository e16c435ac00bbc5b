"""Open-loop latency with h2load: run it at a fixed rate and read its per-request log into percentiles.

``h2load --h1 -c2 --rps=500 -n N --log-file F URL`` keeps 2 HTTP/1.1 keep-alive connections and starts
500 requests per second on each (1,000 req/s in all), whatever the answers' speed, as long as a
connection is free. With ``--log-file`` h2load writes one row per request, tab-separated: the request's
start time in µs since the epoch, the HTTP status (-1 for a failed stream) and the µs until the end of
the response (columns may be added later, so only the first three are read).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from harness import BenchError, Supervisor, run_to_completion

PERCENTILES = (("p50", 50.0), ("p99", 99.0), ("p99.9", 99.9))
_FINISHED = re.compile(r"finished in ([0-9.]+)(us|ms|s), ([0-9.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout")
_STATUS_CODES = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


@dataclass(frozen=True)
class LogRow:
    start_us: int
    status: int  # -1: the stream failed
    duration_us: int


def parse_log(text: str) -> list[LogRow]:
    """The rows of an h2load ``--log-file``; a line that is not three integers or more is an error."""
    rows: list[LogRow] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            start_us, status, duration_us = (int(value) for value in fields[:3])
        except ValueError:
            raise BenchError(f"h2load log line {number} is not start<TAB>status<TAB>duration: {line!r}") from None
        rows.append(LogRow(start_us, status, duration_us))
    return rows


def percentile(sorted_values: list[float], percent: float) -> float:
    """Nearest rank: the smallest value with at least ``percent`` % of the values at or below it."""
    if not sorted_values:
        raise BenchError("no values to take a percentile of")
    # rounded first: 99.9 / 100 * 1000 is 999.0000000000001 in floating point, and must be rank 999
    rank = max(1, math.ceil(round(percent / 100.0 * len(sorted_values), 6)))
    return sorted_values[rank - 1]


@dataclass
class LatencyResult:
    requests: int  # rows in the log
    succeeded: int  # 2xx and 3xx answers: the latencies are theirs
    failed: int  # status -1 (no answer) plus 4xx/5xx
    span_s: float  # first start to last end, from the log
    requests_per_s: float  # requests / span
    latency_us: dict[str, float]  # p50, p99, p99.9 and max of the successful requests

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def summarize(rows: list[LogRow]) -> LatencyResult:
    good = sorted(float(row.duration_us) for row in rows if 200 <= row.status < 400)
    if not good:
        raise BenchError(f"h2load logged {len(rows)} requests and none succeeded")
    start = min(row.start_us for row in rows)
    end = max(row.start_us + row.duration_us for row in rows)
    span_s = max(end - start, 1) / 1e6
    latency = {name: percentile(good, percent) for name, percent in PERCENTILES}
    latency["max"] = good[-1]
    return LatencyResult(requests=len(rows), succeeded=len(good), failed=len(rows) - len(good), span_s=span_s,
                         requests_per_s=len(rows) / span_s, latency_us=latency)


def added_latency(result: dict[str, float], direct: dict[str, float]) -> dict[str, float]:
    """What one hop adds over direct, per percentile (a percentile of a difference is not this: it is the
    difference of the two runs' percentiles, the way Istio and the issue state it)."""
    return {name: result[name] - direct[name] for name, _ in PERCENTILES if name in result and name in direct}


def added_ratio(ours: float | None, reference: float | None) -> float | None:
    """tulle's added latency relative to a reference proxy's; None when it cannot mean anything
    (the reference added nothing measurable)."""
    if ours is None or reference is None or reference <= 0:
        return None
    return ours / reference


@dataclass
class Summary:
    """The totals h2load prints on stdout, used to cross-check the log."""

    requests_total: int
    done: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    non_2xx: int
    requests_per_s: float
    duration_s: float


def parse_summary(text: str) -> Summary:
    requests, codes, finished = _REQUESTS.search(text), _STATUS_CODES.search(text), _FINISHED.search(text)
    if requests is None or codes is None or finished is None:
        raise BenchError(f"h2load output has no totals: {text.strip()[-300:]!r}")
    total, _started, done, succeeded, failed, errored, timeout = map(int, requests.groups())
    ok, redirect, client_error, server_error = map(int, codes.groups())
    return Summary(requests_total=total, done=done, succeeded=succeeded, failed=failed, errored=errored, timeout=timeout,
                   status_2xx=ok + redirect, non_2xx=client_error + server_error,
                   requests_per_s=float(finished.group(3)),
                   duration_s=float(finished.group(1)) * _SECONDS[finished.group(2)])


def h2load_command(url: str, *, requests: int, log_file: str, clients: int = 2, rps_per_client: int = 500
                   ) -> list[str]:
    return ["h2load", "--h1", f"-c{clients}", "-t1", f"--rps={rps_per_client}", "-n", str(requests),
            "--log-file", log_file, url]


@dataclass
class H2loadRun:
    result: LatencyResult
    summary: Summary
    started_at: float
    finished_at: float
    output: str


def run_h2load(supervisor: Supervisor, name: str, argv: list[str], log_file: str, *,
               cpus: tuple[int, ...] | None = None) -> H2loadRun:
    output, started_at, finished_at = run_to_completion(supervisor, "h2load", name, argv, cpus=cpus)
    summary = parse_summary(output)
    try:
        with open(log_file, encoding="ascii", errors="replace") as handle:
            rows = parse_log(handle.read())
    except OSError as exc:
        raise BenchError(f"h2load wrote no log file: {exc}") from None
    if len(rows) != summary.done:
        raise BenchError(f"h2load logged {len(rows)} requests but says {summary.done} were done")
    if summary.done < summary.requests_total:
        # requests that never started (h2load gave up on a connection) have no row and no latency
        raise BenchError(f"h2load finished only {summary.done} of {summary.requests_total} requests: "
                         f"{output.strip()[-300:]}")
    return H2loadRun(summarize(rows), summary, started_at, finished_at, output)
