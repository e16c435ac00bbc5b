"""Side-by-side HTTP/1.1 and L4 benchmark: direct vs nginx vs HAProxy vs tulle (driven by run.sh)."""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from h2load import PERCENTILES, added_latency, added_ratio, h2load_command, run_h2load
from harness import (
    BENCH_DIR,
    CLOCK_TICKS_PER_SECOND,
    REPO_DIR,
    BenchError,
    CpuLayout,
    CpuSnapshot,
    ManagedProcess,
    Supervisor,
    cleanup_on_signals,
    cpu_seconds_between,
    machine_info,
    pick_free_ports,
    pinned_layout,
    process_tree,
    read_machine_cpu,
    read_memory_kib,
    restore_default_signals,
)
from targets import BODY_SIZES, TARGET_KEYS, TARGET_LABELS, TULLE_KEYS, Bench, Target, read_tulle_counters
from wrk import run_wrk, wrk_command

# (numerator, denominator, column title): the comparisons the benchmark exists for
RATIO_PAIRS = (
    ("tulle", "nginx", "tulle/nginx"),
    ("tulle", "haproxy", "tulle/HAProxy"),
    ("tulle_tcp", "haproxy_tcp", "tulle L4/HAProxy L4"),
    ("tulle_resilience", "tulle", "idle resilience/plain tulle"),
)
RETRY_PAUSE_SECONDS = 3.0  # other people's bursts (a test run, a build) tend to last a few seconds
ORIGIN_SATURATION_WARNING = 0.9  # fraction of one core; above it the origin may be what limits a cell


class _Measured(Protocol):
    status: str
    other_cpu_pct: float
    attempts: int

    @property
    def measured(self) -> bool: ...


MeasuredT = TypeVar("MeasuredT", bound=_Measured)


@dataclass
class Cell:
    body: str
    connections: int
    target: str
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    requests: int = 0
    duration_s: float = 0.0
    requests_per_s: float = 0.0
    latency_us: dict[str, float] = field(default_factory=dict)
    added_p50_us: float | None = None
    added_p99_us: float | None = None
    proxy_cpu_s: float | None = None
    cpu_us_per_request: float | None = None
    proxy_processes: int = 0
    rss_kib: int | None = None
    hwm_kib: int | None = None
    origin_cpu_util: float = 0.0
    machine_cpu_busy_pct: float = 0.0
    wrk_cpu_s: float = 0.0
    # busy CPU not spent by wrk, the origin or the proxy (kernel softirq work, or someone else's load)
    other_cpu_pct: float = 0.0
    attempts: int = 1
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx_3xx: int = 0

    @property
    def measured(self) -> bool:
        return self.status == "ok"

    @property
    def error_count(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx_3xx


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    cpus = os.cpu_count() or 1
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="5 s per cell instead of 10 s")
    parser.add_argument("--duration", type=float, help="seconds per cell (overrides --quick)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per target (default 3, 2 with --quick)")
    parser.add_argument("--threads", type=int,
                        help="wrk threads (-t); default 1 on <= 2 CPUs, else 2; pinned: the load generator's CPUs")
    parser.add_argument("--pinned", action="store_true",
                        help="pin the load generator and origin to one core and the proxy under test alone to "
                             "another (dedicated cores for each on > 2 CPUs); the layout is printed")
    parser.add_argument("--latency", action="store_true",
                        help="instead of the wrk matrix: open-loop latency at a fixed rate with h2load "
                             "(--rate-clients connections x --rate-per-client req/s, 1 KiB)")
    parser.add_argument("--latency-requests", type=int,
                        help="h2load -n per target (default 30000, 10000 with --quick)")
    parser.add_argument("--rate-clients", type=int, default=2, help="h2load -c (keep-alive connections)")
    parser.add_argument("--rate-per-client", type=int, default=500, help="h2load --rps (per connection)")
    parser.add_argument("--connections", default="32,64", help="comma-separated wrk -c values")
    parser.add_argument("--bodies", default=",".join(BODY_SIZES), help="comma-separated: 1k,16k")
    parser.add_argument("--targets", default=",".join(TARGET_KEYS), help="comma-separated subset of " +
                        ",".join(TARGET_KEYS))
    parser.add_argument("--max-other-cpu", type=float, default=15.0,
                        help="re-measure a cell when more than this %% of the machine's CPU went to processes "
                             "other than wrk, the origin and the proxy")
    parser.add_argument("--retries", type=int, default=2, help="extra attempts for such a cell")
    parser.add_argument("--origin-workers", type=int, default=1, help="nginx origin worker_processes")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--keep-tmp", action="store_true", help="keep configs and logs for debugging")
    args = parser.parse_args(argv)
    try:
        args.layout = pinned_layout(os.sched_getaffinity(0)) if args.pinned else None
    except BenchError as exc:
        parser.error(str(exc))
    if args.threads is None:
        args.threads = len(args.layout.load) if args.layout else (1 if cpus <= 2 else 2)
    args.latency_requests = args.latency_requests or (10_000 if args.quick else 30_000)
    args.duration = args.duration or (5.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (2.0 if args.quick else 3.0)
    args.connections = [int(value) for value in args.connections.split(",")]
    args.bodies = args.bodies.split(",")
    args.targets = args.targets.split(",")
    for body in args.bodies:
        if body not in BODY_SIZES:
            parser.error(f"unknown body {body!r}; choose from {', '.join(BODY_SIZES)}")
    for key in args.targets:
        if key not in TARGET_KEYS:
            parser.error(f"unknown target {key!r}; choose from {', '.join(TARGET_KEYS)}")
    # direct is the baseline every "added latency" column is computed against
    args.targets = [key for key in TARGET_KEYS if key in args.targets or key == "direct"]
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- measuring


def load_cpus(args: argparse.Namespace) -> tuple[int, ...] | None:
    layout: CpuLayout | None = args.layout
    return layout.load if layout else None


@dataclass
class Usage:
    """CPU and memory of the load's participants over one measured run."""

    wall_s: float
    wrk_cpu_s: float  # the load generator (wrk or h2load): the only child reaped during the run
    origin_cpu_s: float
    proxy_cpu_s: float | None
    proxy_processes: int
    rss_kib: int | None
    hwm_kib: int | None
    machine_busy_pct: float
    other_cpu_pct: float


class Meter:
    """Snapshots before and after a load run; ``stop`` returns who spent what."""

    def __init__(self, bench: Bench, target: Target) -> None:
        assert bench.origin is not None
        self.bench, self.target = bench, target
        self.proxy_before = CpuSnapshot.of_tree(target.process.pid) if target.process else None
        self.origin_before = CpuSnapshot.of_tree(bench.origin.pid)
        self.machine_before = read_machine_cpu()
        self.children_before = resource.getrusage(resource.RUSAGE_CHILDREN)

    def stop(self, started_at: float, finished_at: float) -> Usage:
        assert self.bench.origin is not None
        machine_busy_after, machine_total_after = read_machine_cpu()
        children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        origin_cpu_s = cpu_seconds_between(self.origin_before, CpuSnapshot.of_tree(self.bench.origin.pid))
        wrk_cpu_s = (children_after.ru_utime + children_after.ru_stime
                     - self.children_before.ru_utime - self.children_before.ru_stime)
        proxy_cpu_s = rss_kib = hwm_kib = None
        processes = 0
        proxy = self.target.process
        if proxy is not None and self.proxy_before is not None:
            proxy_after = CpuSnapshot.of_tree(proxy.pid)
            processes = len(proxy_after.ticks_by_pid)
            proxy_cpu_s = cpu_seconds_between(self.proxy_before, proxy_after)
            rss_kib, hwm_kib = read_memory_kib(process_tree(proxy.pid))
        busy_before, total_before = self.machine_before
        machine_total = max(machine_total_after - total_before, 1)
        accounted_s = wrk_cpu_s + origin_cpu_s + (proxy_cpu_s or 0.0)
        machine_busy_s = (machine_busy_after - busy_before) / CLOCK_TICKS_PER_SECOND
        machine_capacity_s = machine_total / CLOCK_TICKS_PER_SECOND
        return Usage(
            wall_s=finished_at - started_at, wrk_cpu_s=wrk_cpu_s, origin_cpu_s=origin_cpu_s, proxy_cpu_s=proxy_cpu_s,
            proxy_processes=processes, rss_kib=rss_kib, hwm_kib=hwm_kib,
            machine_busy_pct=100.0 * (machine_busy_after - busy_before) / machine_total,
            other_cpu_pct=100.0 * max(machine_busy_s - accounted_s, 0.0) / machine_capacity_s,
        )


def check_proxy_survived(target: Target) -> str | None:
    """The reason to fail the cell when the proxy exited during the run (it is then unavailable)."""
    proxy = target.process
    if proxy is None or proxy.alive():
        return None
    reason = f"{target.label} exited during the run: {proxy.log_tail()}"
    target.mark_unavailable(reason)
    return reason


def measure_cell(
    bench: Bench, target: Target, body: str, connections: int, args: argparse.Namespace
) -> Cell:
    cell = Cell(body, connections, target.key)
    if not target.available:
        cell.status, cell.reason = "skipped", f"{target.label} not available"
        return cell
    url = f"http://127.0.0.1:{target.port}/{body}"
    argv = wrk_command(url, connections=connections, threads=args.threads, duration_s=args.duration)
    meter = Meter(bench, target)
    try:
        run = run_wrk(bench.supervisor, "wrk", argv, cpus=load_cpus(args))
    except BenchError as exc:
        cell.status, cell.reason = "failed", str(exc)
        return cell
    usage = meter.stop(run.started_at, run.finished_at)
    result = run.result
    cell.requests, cell.duration_s, cell.requests_per_s = result.requests, result.duration_s, result.requests_per_s
    cell.latency_us = result.latency_us
    cell.socket_errors, cell.non_2xx_3xx = result.socket_errors, result.non_2xx_3xx
    cell.origin_cpu_util = usage.origin_cpu_s / usage.wall_s
    cell.machine_cpu_busy_pct, cell.other_cpu_pct = usage.machine_busy_pct, usage.other_cpu_pct
    cell.wrk_cpu_s = usage.wrk_cpu_s
    cell.proxy_cpu_s, cell.proxy_processes = usage.proxy_cpu_s, usage.proxy_processes
    cell.rss_kib, cell.hwm_kib = usage.rss_kib, usage.hwm_kib
    if usage.proxy_cpu_s is not None and result.requests:
        cell.cpu_us_per_request = usage.proxy_cpu_s * 1_000_000.0 / result.requests
    if (reason := check_proxy_survived(target)) is not None:
        cell.status, cell.reason = "failed", reason
    return cell


def measure_cell_on_quiet_machine(
    bench: Bench, target: Target, body: str, connections: int, args: argparse.Namespace
) -> Cell:
    return keep_quietest(lambda: measure_cell(bench, target, body, connections, args), progress_line, args)


def keep_quietest(measure: Callable[[], MeasuredT], describe: Callable[[MeasuredT], str],
                  args: argparse.Namespace) -> MeasuredT:
    """Measure; while other processes took a big share of the CPU, measure again and keep the quietest.

    The choice is made on the foreign load only, never on the result, so it does not favour any target.
    """
    cell = measure()
    log(describe(cell))
    attempts = 1
    while cell.measured and cell.other_cpu_pct > args.max_other_cpu and attempts <= args.retries:
        time.sleep(RETRY_PAUSE_SECONDS)
        retry = measure()
        attempts += 1
        log(describe(retry) + f"  (attempt {attempts})")
        if retry.measured and retry.other_cpu_pct < cell.other_cpu_pct:
            cell = retry
    cell.attempts = attempts
    return cell


# ---------------------------------------------------------------- open-loop latency (h2load)


@dataclass
class LatencyCell:
    target: str
    status: str = "ok"  # ok | skipped | failed
    reason: str = ""
    requests: int = 0
    failed: int = 0  # no answer, or 4xx/5xx
    requests_per_s: float = 0.0  # achieved rate, from h2load's log
    latency_us: dict[str, float] = field(default_factory=dict)  # p50, p99, p99.9, max
    added_us: dict[str, float] = field(default_factory=dict)  # over direct, per percentile
    cpu_us_per_request: float | None = None
    proxy_cpu_util: float | None = None  # fraction of one core at this rate
    rss_kib: int | None = None
    origin_cpu_util: float = 0.0
    machine_cpu_busy_pct: float = 0.0
    other_cpu_pct: float = 0.0
    attempts: int = 1

    @property
    def measured(self) -> bool:
        return self.status == "ok"


def measure_latency_cell(bench: Bench, target: Target, args: argparse.Namespace) -> LatencyCell:
    cell = LatencyCell(target.key)
    if not target.available:
        cell.status, cell.reason = "skipped", f"{target.label} not available"
        return cell
    log_file = bench.work_dir / f"h2load-{target.key}.log"
    log_file.unlink(missing_ok=True)
    argv = h2load_command(f"http://127.0.0.1:{target.port}/1k", requests=args.latency_requests,
                          log_file=str(log_file), clients=args.rate_clients, rps_per_client=args.rate_per_client)
    meter = Meter(bench, target)
    try:
        run = run_h2load(bench.supervisor, "h2load", argv, str(log_file), cpus=load_cpus(args))
    except BenchError as exc:
        cell.status, cell.reason = "failed", str(exc)
        return cell
    usage = meter.stop(run.started_at, run.finished_at)
    result = run.result
    cell.requests, cell.failed, cell.requests_per_s = result.requests, result.failed, result.requests_per_s
    cell.latency_us = result.latency_us
    cell.origin_cpu_util = usage.origin_cpu_s / usage.wall_s
    cell.machine_cpu_busy_pct, cell.other_cpu_pct = usage.machine_busy_pct, usage.other_cpu_pct
    cell.rss_kib = usage.rss_kib
    if usage.proxy_cpu_s is not None:
        cell.proxy_cpu_util = usage.proxy_cpu_s / usage.wall_s
        if result.requests:
            cell.cpu_us_per_request = usage.proxy_cpu_s * 1_000_000.0 / result.requests
    if (reason := check_proxy_survived(target)) is not None:
        cell.status, cell.reason = "failed", reason
    return cell


def fill_added_latency_open_loop(cells: list[LatencyCell]) -> None:
    direct = next((cell for cell in cells if cell.target == "direct" and cell.measured), None)
    for cell in cells:
        if direct is not None and cell.measured and cell.target != "direct":
            cell.added_us = added_latency(cell.latency_us, direct.latency_us)


# tulle's added latency compared with each reference's (the issue's target: added p50 <= 1.5x nginx's)
LATENCY_RATIO_PAIRS = (("tulle", "nginx"), ("tulle", "haproxy"), ("tulle_resilience", "nginx"),
                       ("tulle_tcp", "haproxy_tcp"))


def latency_ratios(cells: list[LatencyCell]) -> list[dict[str, object]]:
    by_target = {cell.target: cell for cell in cells if cell.measured}
    rows: list[dict[str, object]] = []
    for ours, theirs in LATENCY_RATIO_PAIRS:
        if ours not in by_target or theirs not in by_target:
            continue
        mine, reference = by_target[ours].added_us, by_target[theirs].added_us
        rows.append({"pair": f"{TARGET_LABELS[ours]} / {TARGET_LABELS[theirs]}",
                     **{f"added_{name}": added_ratio(mine.get(name), reference.get(name)) for name in ("p50", "p99")}})
    return rows


def latency_table(cells: list[LatencyCell], *, max_other_cpu: float = 15.0) -> str:
    names = [name for name, _ in PERCENTILES]
    header = ("| target | requests | req/s | " + " | ".join(f"{name} µs" for name in names) + " | max µs | "
              + " | ".join(f"+{name} µs" for name in names)
              + " | proxy CPU µs/req | proxy CPU | RSS MiB | machine CPU (other) | failed |")
    lines = [header, "|---|" + "---:|" * (header.count("|") - 2)]
    for cell in cells:
        label = TARGET_LABELS[cell.target]
        if not cell.measured:
            note = "pending" if cell.target in TULLE_KEYS and cell.status == "skipped" else cell.status
            lines.append(f"| {label} | {note} |" + "  |" * (header.count("|") - 3))
            continue
        util = "—" if cell.proxy_cpu_util is None else f"{cell.proxy_cpu_util:.0%}"
        other_flag = " ⚠" if cell.other_cpu_pct > max_other_cpu else ""
        lines.append(
            f"| {label} | {cell.requests:,} | {cell.requests_per_s:,.0f} | "
            + " | ".join(_number(cell.latency_us.get(name)) for name in names)
            + f" | {_number(cell.latency_us.get('max'))} | "
            + " | ".join(_number(cell.added_us.get(name), signed=True) if cell.target != "direct" else "—"
                         for name in names)
            + f" | {_number(cell.cpu_us_per_request, 1)} | {util} | {_mib(cell.rss_kib)} "
            f"| {cell.machine_cpu_busy_pct:.0f}% ({cell.other_cpu_pct:.0f}%{other_flag}) | {cell.failed} |"
        )
    return "\n".join(lines)


def latency_ratios_table(rows: list[dict[str, object]]) -> str:
    lines = ["| added latency | +p50 ratio | +p99 ratio |", "|---|---:|---:|"]
    for row in rows:
        values = [row["added_p50"], row["added_p99"]]
        lines.append(f"| {row['pair']} | " + " | ".join(
            f"{value:.2f}×" if isinstance(value, float) else "—" for value in values) + " |")
    return "\n".join(lines)


def latency_progress_line(cell: LatencyCell) -> str:
    label = f"latency {TARGET_LABELS[cell.target]:<13}"
    if not cell.measured:
        return f"{label} {cell.status}: {cell.reason}"
    return (f"{label} {cell.requests_per_s:>6,.0f} req/s  p50 {cell.latency_us['p50']:>6,.0f} µs  "
            f"p99 {cell.latency_us['p99']:>7,.0f} µs  p99.9 {cell.latency_us['p99.9']:>7,.0f} µs  "
            f"cpu {_number(cell.cpu_us_per_request, 1):>6} µs/req  other {cell.other_cpu_pct:.0f}%"
            + (f"  failed {cell.failed}" if cell.failed else ""))


def fill_added_latency(cells: list[Cell]) -> None:
    direct = {(cell.body, cell.connections): cell for cell in cells if cell.target == "direct" and cell.measured}
    for cell in cells:
        baseline = direct.get((cell.body, cell.connections))
        if baseline is None or not cell.measured or cell.target == "direct":
            continue
        cell.added_p50_us = cell.latency_us["p50"] - baseline.latency_us["p50"]
        cell.added_p99_us = cell.latency_us["p99"] - baseline.latency_us["p99"]


def compute_ratios(cells: list[Cell]) -> list[dict[str, object]]:
    """tulle relative to each reference per (body, connections); None where either side is missing."""
    by_key = {(cell.body, cell.connections, cell.target): cell for cell in cells}
    rows: list[dict[str, object]] = []
    for body, connections in dict.fromkeys((cell.body, cell.connections) for cell in cells):
        row: dict[str, object] = {"body": body, "connections": connections}
        for numerator, denominator, title in RATIO_PAIRS:
            ours = by_key.get((body, connections, numerator))
            theirs = by_key.get((body, connections, denominator))
            row[title] = _ratio_entry(ours, theirs)
        rows.append(row)
    return rows


def _ratio_entry(ours: Cell | None, theirs: Cell | None) -> dict[str, object]:
    def ratio(mine: float | None, reference: float | None) -> float | None:
        if mine is None or not reference:
            return None
        return mine / reference

    if ours is None or theirs is None or not ours.measured or not theirs.measured:
        # "pending": tulle could not be measured; "n/a": the reference was not part of this run
        status = "pending" if ours is not None and not ours.measured else "n/a"
        return {"status": status, "requests_per_s": None, "cpu_per_request": None, "p99": None}
    return {
        "status": "ok",
        "requests_per_s": ratio(ours.requests_per_s, theirs.requests_per_s),
        "cpu_per_request": ratio(ours.cpu_us_per_request, theirs.cpu_us_per_request),
        "p99": ratio(ours.latency_us["p99"], theirs.latency_us["p99"]),
    }


# ---------------------------------------------------------------- reporting


def _number(value: float | None, digits: int = 0, *, signed: bool = False) -> str:
    if value is None:
        return "—"
    return f"{value:+,.{digits}f}" if signed else f"{value:,.{digits}f}"


def _mib(kib: int | None) -> str:
    return "—" if kib is None else f"{kib / 1024:.1f}"


def results_table(cells: list[Cell], *, max_other_cpu: float = 15.0) -> str:
    header = ("| body | conns | target | req/s | p50 µs | p99 µs | +p50 µs | +p99 µs | proxy CPU µs/req "
              "| RSS MiB | peak RSS MiB | origin CPU | machine CPU (other) | errors |")
    lines = [header, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for cell in cells:
        label = TARGET_LABELS[cell.target]
        if not cell.measured:
            note = "pending" if cell.target in TULLE_KEYS and cell.status == "skipped" else cell.status
            lines.append(f"| {cell.body} | {cell.connections} | {label} | {note} |" + "  |" * 10)
            continue
        # direct is bound by wrk and the origin by design; for a proxy a busy origin means a suspect cell
        origin_busy = cell.target != "direct" and cell.origin_cpu_util > ORIGIN_SATURATION_WARNING
        origin = f"{cell.origin_cpu_util:.0%}" + (" ⚠" if origin_busy else "")
        other_flag = " ⚠" if cell.other_cpu_pct > max_other_cpu else ""
        lines.append(
            f"| {cell.body} | {cell.connections} | {label} | {_number(cell.requests_per_s)} "
            f"| {_number(cell.latency_us['p50'])} | {_number(cell.latency_us['p99'])} "
            f"| {_number(cell.added_p50_us, signed=True)} | {_number(cell.added_p99_us, signed=True)} "
            f"| {_number(cell.cpu_us_per_request, 1)} | {_mib(cell.rss_kib)} | {_mib(cell.hwm_kib)} "
            f"| {origin} | {cell.machine_cpu_busy_pct:.0f}% ({cell.other_cpu_pct:.0f}%{other_flag}) | {cell.error_count} |"
        )
    return "\n".join(lines)


def ratios_table(rows: list[dict[str, object]]) -> str:
    titles = [title for _, _, title in RATIO_PAIRS]
    header = "| body | conns | " + " | ".join(f"{t} req/s | {t} CPU/req | {t} p99" for t in titles) + " |"
    lines = [header, "|---|---:|" + "---:|" * (3 * len(titles))]
    for row in rows:
        parts = [str(row["body"]), str(row["connections"])]
        for title in titles:
            entry = row[title]
            assert isinstance(entry, dict)
            for metric in ("requests_per_s", "cpu_per_request", "p99"):
                value = entry[metric]
                if isinstance(value, float):
                    parts.append(f"{value:.2f}×")
                else:
                    parts.append("—" if entry["status"] == "ok" else str(entry["status"]))
        lines.append("| " + " | ".join(parts) + " |")
    return "\n".join(lines)


def machine_lines(info: dict[str, object], args: argparse.Namespace) -> str:
    if args.latency:
        load = (f"- load: h2load --h1 -c{args.rate_clients} --rps={args.rate_per_client} "
                f"({args.rate_clients * args.rate_per_client:,} req/s open loop) -n {args.latency_requests:,} "
                f"per target, GET /1k, after a {args.warmup:.0f} s wrk warm-up per target; "
                f"origin nginx with {args.origin_workers} worker(s)")
    else:
        load = (f"- load: wrk -t{args.threads} --latency, {args.duration:.0f} s per cell, {args.warmup:.0f} s warm-up "
                f"per target, HTTP/1.1 keep-alive, loopback; origin nginx with {args.origin_workers} worker(s)")
    layout: CpuLayout | None = args.layout
    pinning = f"- pinned: {layout.describe()}" if layout else "- not pinned: the scheduler places every process"
    return "\n".join([
        f"- machine: {info['nproc']} CPUs, {info['cpu_model']}, kernel {info['kernel']}, {info['os']}",
        f"- versions: {info['nginx']}, HAProxy {info['haproxy']}, wrk {info['wrk']}, "
        f"Python {info['tulle_python']} (tulle venv), tulle compiled: {info.get('tulle_compiled', 'unknown')}",
        load,
        pinning,
        f"- loadavg at start: {' '.join(map(str, info['loadavg_at_start']))}; a cell is measured again "  # type: ignore[call-overload]
        f"(up to {args.retries}×) when other processes took > {args.max_other_cpu:.0f}% of the machine's CPU",
    ])


# the issue's targets (issue 9): (what, threshold, "min" = value must be >= threshold / "max" = <=)
RSS_LIMIT_MIB = 40.0


def issue_targets(cells: list[Cell], latency_cells: list[LatencyCell]) -> list[dict[str, object]]:
    """Each target of the compiled hot path's issue with this run's value: met, missed, or not measured."""
    rows: list[dict[str, object]] = []

    def add(what: str, value: float | None, threshold: float, kind: str) -> None:
        met = None if value is None else (value >= threshold if kind == "min" else value <= threshold)
        rows.append({"target": what, "value": value, "threshold": threshold, "kind": kind, "met": met})

    for row in compute_ratios(cells):
        where = f"{row['body']} c{row['connections']}"
        nginx, resilience, l4 = row["tulle/nginx"], row["idle resilience/plain tulle"], row["tulle L4/HAProxy L4"]
        assert isinstance(nginx, dict) and isinstance(resilience, dict) and isinstance(l4, dict)
        add(f"tulle/nginx req/s, {where}", nginx["requests_per_s"], 0.85 if row["body"] == "1k" else 0.9, "min")
        if row["body"] == "1k":
            add(f"tulle/nginx CPU per request, {where}", nginx["cpu_per_request"], 1.25, "max")
        add(f"idle resilience/plain tulle CPU per request, {where}", resilience["cpu_per_request"], 1.05, "max")
        add(f"tulle L4/HAProxy L4 req/s, {where}", l4["requests_per_s"], 1.0, "min")
    by_latency = {row["pair"]: row for row in latency_ratios(latency_cells)}
    pair = f"{TARGET_LABELS['tulle']} / {TARGET_LABELS['nginx']}"
    if pair in by_latency:
        add("tulle/nginx added p50 at a fixed rate", by_latency[pair]["added_p50"], 1.5, "max")  # type: ignore[arg-type]
    rss = [cell.rss_kib for cell in [*cells, *latency_cells]  # type: ignore[attr-defined]
           if cell.target in TULLE_KEYS and cell.measured and cell.rss_kib is not None]
    if rss:
        add("tulle RSS MiB (largest)", max(rss) / 1024, RSS_LIMIT_MIB, "max")
    return rows


def targets_table(rows: list[dict[str, object]]) -> str:
    lines = ["| issue 9 target | this run | target | |", "|---|---:|---:|---|"]
    for row in rows:
        value, threshold = row["value"], row["threshold"]
        unit = "" if "MiB" in str(row["target"]) else "×"
        shown = f"{value:.2f}{unit}" if isinstance(value, float) else "—"
        sign = "≥" if row["kind"] == "min" else "≤"
        verdict = {True: "met", False: "missed", None: "not measured"}[row["met"]]  # type: ignore[index]
        lines.append(f"| {row['target']} | {shown} | {sign} {threshold:g}{unit} | {verdict} |")
    return "\n".join(lines)


def tulle_compiled_status(python: Path) -> str:
    """Which hot-path modules the tulle venv loads compiled (``tulle.compiled.status()``), as one line."""
    if not python.exists():
        return "no venv"
    code = "import json, tulle.compiled as c; print(json.dumps(c.status()))"
    try:
        completed = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=60,
                                   cwd=REPO_DIR)
        status = json.loads(completed.stdout) if completed.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        return f"unknown ({exc.__class__.__name__})"
    if not isinstance(status, dict):
        return "unknown (tulle.compiled.status() failed)"
    return describe_compiled(status)


def describe_compiled(status: dict[str, bool]) -> str:
    compiled = sum(1 for loaded in status.values() if loaded)
    pure = sorted(name for name, loaded in status.items() if not loaded)
    return f"{compiled} of {len(status)} modules" + (f" (pure Python: {', '.join(pure)})" if pure else "")


# ---------------------------------------------------------------- the run


@dataclass
class Outcome:
    info: dict[str, object]
    targets: dict[str, Target]
    cells: list[Cell]
    tulle_counters: dict[str, dict[str, int]]
    latency_cells: list[LatencyCell] = field(default_factory=list)


def run(args: argparse.Namespace) -> Outcome:
    info = machine_info(REPO_DIR / ".venv" / "bin" / "python")
    info["tulle_compiled"] = tulle_compiled_status(REPO_DIR / ".venv" / "bin" / "python")
    log(f"machine: {info['nproc']} CPUs, {info['cpu_model']}, kernel {info['kernel']}")
    if args.layout is not None:
        # this driver counts as load: wrk, h2load and tulle's config validation inherit its mask
        os.sched_setaffinity(0, args.layout.load)
        log(f"pinned: {args.layout.describe()}")
    work_dir = Path(tempfile.mkdtemp(prefix="tulle-bench-"))
    work_dir.chmod(0o755)  # nginx workers may run as an unprivileged user and must read www/
    supervisor = Supervisor(work_dir)
    targets: dict[str, Target] = {}
    cells: list[Cell] = []
    latency_cells: list[LatencyCell] = []
    tulle_counters: dict[str, dict[str, int]] = {}
    with cleanup_on_signals():
        try:
            bench = Bench(work_dir, supervisor, pick_free_ports(12), layout=args.layout)
            origin: ManagedProcess = bench.start_origin(args.origin_workers)
            log(f"origin nginx on 127.0.0.1:{bench.origin_port} (pid {origin.pid})")
            for key in args.targets:
                target = bench.start_target(key)
                targets[key] = target
                if target.available:
                    log(f"{target.label} on 127.0.0.1:{target.port}")
                else:
                    log(f"tulle not available: {target.error}")
            warm_up(bench, targets, args)
            if args.latency:
                for key in args.targets:
                    target = targets[key]
                    latency_cells.append(keep_quietest(lambda target=target: measure_latency_cell(bench, target, args),
                                                       latency_progress_line, args))
            else:
                for body in args.bodies:
                    for connections in args.connections:
                        for key in args.targets:
                            cells.append(measure_cell_on_quiet_machine(bench, targets[key], body, connections, args))
            for key in TULLE_KEYS & set(targets):
                tulle_counters[key] = read_tulle_counters(targets[key])
        finally:
            supervisor.stop_all()
            if args.keep_tmp:
                log(f"kept configs and logs in {work_dir}")
            else:
                shutil.rmtree(work_dir, ignore_errors=True)
            restore_default_signals()
    fill_added_latency(cells)
    fill_added_latency_open_loop(latency_cells)
    return Outcome(info, targets, cells, tulle_counters, latency_cells)


def results_json(outcome: Outcome, args: argparse.Namespace) -> dict[str, object]:
    cells, targets = outcome.cells, outcome.targets
    return {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": os.environ.get("BENCH_COMMAND", " ".join(sys.argv)),
        "machine": outcome.info,
        "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3],
        "settings": {
            "duration_s": args.duration, "warmup_s": args.warmup, "wrk_threads": args.threads,
            "connections": args.connections, "bodies": {name: BODY_SIZES[name] for name in args.bodies},
            "origin_workers": args.origin_workers, "http_version": "HTTP/1.1", "keep_alive": True,
            "max_other_cpu_pct": args.max_other_cpu, "retries": args.retries,
            "pinned": args.layout.to_json() if args.layout else None,
            "mode": "latency" if args.latency else "throughput",
            "latency": {"tool": "h2load --h1", "clients": args.rate_clients, "rps_per_client": args.rate_per_client,
                        "requests": args.latency_requests, "path": "/1k"} if args.latency else None,
        },
        "targets": {
            key: {"label": target.label, "available": target.available, "error": target.error,
                  "command": target.command, "admin_counters": outcome.tulle_counters.get(key, {})}
            for key, target in targets.items()
        },
        "cells": [cell_json(cell) for cell in cells],
        "ratios": compute_ratios(cells),
        "latency_cells": [dict(cell.__dict__) for cell in outcome.latency_cells],
        "latency_ratios": latency_ratios(outcome.latency_cells),
        "issue_targets": issue_targets(cells, outcome.latency_cells),
    }


def warm_up(bench: Bench, targets: dict[str, Target], args: argparse.Namespace) -> None:
    """One short run per target so pools are filled and caches are hot before anything is recorded."""
    for target in targets.values():
        if not target.available:
            continue
        argv = wrk_command(f"http://127.0.0.1:{target.port}/1k", connections=max(args.connections),
                           threads=args.threads, duration_s=args.warmup)
        try:
            run_wrk(bench.supervisor, "wrk-warmup", argv, cpus=load_cpus(args))
        except BenchError as exc:
            log(f"warm-up of {target.label} failed: {exc}")
        if target.process is not None and not target.process.alive():
            target.mark_unavailable(f"exited during warm-up: {target.process.log_tail()}")
            log(f"{target.label} not available: {target.error}")


def progress_line(cell: Cell) -> str:
    label = f"{cell.body:>3} c{cell.connections:<3} {TARGET_LABELS[cell.target]:<13}"
    if not cell.measured:
        return f"{label} {cell.status}: {cell.reason}"
    cpu = _number(cell.cpu_us_per_request, 1)
    return (f"{label} {cell.requests_per_s:>10,.0f} req/s  p50 {cell.latency_us['p50']:>7,.0f} µs  "
            f"p99 {cell.latency_us['p99']:>7,.0f} µs  cpu {cpu:>6} µs/req  origin {cell.origin_cpu_util:.0%}  "
            f"other {cell.other_cpu_pct:.0f}%"
            + (f"  errors {cell.error_count}" if cell.error_count else ""))


def cell_json(cell: Cell) -> dict[str, object]:
    data = dict(cell.__dict__)
    data["error_count"] = cell.error_count
    return data


def render_report(outcome: Outcome, args: argparse.Namespace) -> str:
    cells = outcome.cells
    parts = [machine_lines(outcome.info, args), ""]
    if args.latency:
        parts += [latency_table(outcome.latency_cells, max_other_cpu=args.max_other_cpu), "",
                  latency_ratios_table(latency_ratios(outcome.latency_cells))]
    else:
        parts += [results_table(cells, max_other_cpu=args.max_other_cpu), "", ratios_table(compute_ratios(cells))]
    parts += ["", targets_table(issue_targets(cells, outcome.latency_cells))]
    for target in outcome.targets.values():
        if not target.available:
            parts.append(f"\n{target.label} not available: {target.error}")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        outcome = run(args)
    except BenchError as exc:
        log(f"benchmark failed: {exc}")
        return 1
    except KeyboardInterrupt:
        log("interrupted: every process the benchmark started has been stopped")
        return 130
    print(render_report(outcome, args))
    results = results_json(outcome, args)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    output = args.results_dir / f"{stamp}.json"
    output.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nJSON: {output.relative_to(REPO_DIR) if output.is_relative_to(REPO_DIR) else output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
