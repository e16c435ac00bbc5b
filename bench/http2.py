"""HTTP/2 side by side: h2load (h2c, prior knowledge) through nginx and through tulle, pinned.

Both proxies take HTTP/2 from the client and forward HTTP/1.1 to the same nginx origin over pooled
keep-alive connections, so the cells compare the HTTP/2 half. Two shapes, as the protocols issue
asks: 1 stream per connection (32 connections) and 100 concurrent streams per connection (4
connections). Each cell reports h2load's requests/s, the proxy's CPU per request (from /proc, every
process of the proxy) and its RSS; ratios are tulle/nginx. Run through bench/run_http2.sh.

    python3 bench/http2.py [--duration S] [--warmup S] [--runs N] [--pinned] [--results-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from h2load import parse_summary
from harness import (
    REPO_DIR,
    BenchError,
    CpuSnapshot,
    Supervisor,
    cleanup_on_signals,
    cpu_seconds_between,
    machine_info,
    pick_free_ports,
    pinned_layout,
    process_tree,
    read_memory_kib,
    render_config,
    run_to_completion,
    wait_for_port,
)
from targets import Bench, _nginx_argv

# (label, h2load connections, streams per connection)
SHAPES = (("1 stream x 32 conns", 32, 1), ("100 streams x 4 conns", 4, 100))
TARGETS = ("nginx", "tulle")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per cell (h2load -D)")
    parser.add_argument("--warmup", type=float, default=2.0, help="h2load --warm-up-time")
    parser.add_argument("--runs", type=int, default=3, help="measure every cell this many times (median kept)")
    parser.add_argument("--pinned", action="store_true",
                        help="load generator + origin on one core, the proxy under test alone on another")
    parser.add_argument("--body", default="1k", choices=("1k", "16k"))
    parser.add_argument("--results-dir", type=Path, default=REPO_DIR / "bench" / "results")
    return parser.parse_args(argv)


def h2load_argv(port: int, body: str, clients: int, streams: int, duration: float, warmup: float) -> list[str]:
    return ["h2load", f"-c{clients}", f"-m{streams}", "-t1", "-D", f"{duration:g}", f"--warm-up-time={warmup:g}",
            f"http://127.0.0.1:{port}/{body}"]


def start_nginx(bench: Bench, template: str, name: str, port: int, cpus: tuple[int, ...] | None) -> object:
    """An nginx from one of bench/configs' templates, listening on ``port`` (the origin's port filled in)."""
    config = render_config(template, bench.work_dir / f"{name}.conf",
                           {"TMP": bench.work_dir, "PORT": port, "ORIGIN_PORT": bench.origin_port})
    process = bench.supervisor.start(name, _nginx_argv(bench.work_dir, config), cpus=cpus)
    wait_for_port(port, process)
    return process


def start_nginx_h2(bench: Bench, port: int, cpus: tuple[int, ...] | None) -> object:
    return start_nginx(bench, "nginx_proxy_h2.conf.tmpl", "nginx_h2", port, cpus)


def measure(bench: Bench, name: str, pid: int, port: int, args: argparse.Namespace, clients: int,
            streams: int, cpus: tuple[int, ...] | None, argv: list[str] | None = None,
            allowed_failure_ratio: float = 0.0) -> dict[str, float]:
    """One h2load run against ``port`` (``argv``: its command, by default the HTTP/2 GET of the body);
    ``pid``'s process tree is the one whose CPU and RSS are read. Failed requests abort the run unless
    they stay within ``allowed_failure_ratio`` of the requests (then they are reported)."""
    if argv is None:
        argv = h2load_argv(port, args.body, clients, streams, args.duration, args.warmup)
    # CPU is read around the whole h2load run; the warm-up's requests are not in h2load's count, so
    # the snapshot is taken after the warm-up instead
    before: list[CpuSnapshot] = []

    def snapshot_after_warmup() -> None:
        time.sleep(args.warmup + 0.5)
        before.append(CpuSnapshot.of_tree(pid))

    import threading

    timer = threading.Thread(target=snapshot_after_warmup)
    timer.start()
    output, started_at, finished_at = run_to_completion(bench.supervisor, "h2load", f"h2load-{name}", argv, cpus=cpus)
    after = CpuSnapshot.of_tree(pid)
    timer.join()
    summary = parse_summary(output)
    failures = summary.non_2xx + summary.failed + summary.errored
    if failures > allowed_failure_ratio * max(summary.requests_per_s * args.duration, 1):
        raise BenchError(f"{name}: h2load saw failures: {output.strip()[-400:]}")
    measured_s = max(finished_at - started_at - args.warmup - 0.5, 0.001)
    cpu_s = cpu_seconds_between(before[0], after)
    requests_in_window = summary.requests_per_s * measured_s
    rss_kib, _ = read_memory_kib(process_tree(pid))
    cell = {"req_s": summary.requests_per_s, "cpu_us_per_req": cpu_s / requests_in_window * 1e6,
            "rss_mib": rss_kib / 1024}
    if allowed_failure_ratio:
        cell["failures"] = float(failures)
    return cell


def medians(results: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per shape and target, the median of each measure over the runs (this VM is noisy run to run)."""
    return {shape: {name: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                    for name, runs in by_target.items()}
            for shape, by_target in results.items()}


def markdown_table(cells: dict[str, dict[str, dict[str, float]]]) -> str:
    """The docs/benchmarks.md table: each shape's nginx and tulle medians and tulle/nginx ratios."""
    lines = ["| shape | nginx req/s | tulle req/s | tulle/nginx req/s | nginx CPU µs/req | tulle CPU µs/req "
             "| tulle/nginx CPU/req | tulle RSS MiB |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for shape, cell in cells.items():
        nginx, tulle = cell["nginx"], cell["tulle"]
        lines.append(f"| {shape} | {nginx['req_s']:,.0f} | {tulle['req_s']:,.0f} | {tulle['req_s'] / nginx['req_s']:.2f}× "
                     f"| {nginx['cpu_us_per_req']:.1f} | {tulle['cpu_us_per_req']:.1f} "
                     f"| {tulle['cpu_us_per_req'] / nginx['cpu_us_per_req']:.2f}× | {tulle['rss_mib']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = pinned_layout(os.sched_getaffinity(0)) if args.pinned else None
    if layout is not None:
        os.sched_setaffinity(0, layout.load)
    work = Path(tempfile.mkdtemp(prefix="tulle-bench-h2-"))
    work.chmod(0o755)  # nginx workers may run as an unprivileged user and must read www/
    supervisor = Supervisor(work)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with cleanup_on_signals():
        try:
            bench = Bench(work, supervisor, pick_free_ports(8), layout)
            bench.start_origin(1)
            nginx_port = bench._next_port()
            nginx = start_nginx_h2(bench, nginx_port, layout.proxy if layout else None)
            tulle = bench.start_target("tulle")
            if not tulle.available:
                raise BenchError(f"tulle did not start: {tulle.error}")
            servers = {"nginx": (nginx.pid, nginx_port), "tulle": (tulle.process.pid, tulle.port)}
            load_cpus = layout.load if layout else None
            for _ in range(args.runs):
                for shape, clients, streams in SHAPES:
                    for name in TARGETS:  # alternating, so a slow minute of the VM hits both
                        pid, port = servers[name]
                        cell = measure(bench, name, pid, port, args, clients, streams, load_cpus)
                        results.setdefault(shape, {}).setdefault(name, []).append(cell)
                        print(f"{shape:<22} {name:<6} {cell['req_s']:>9,.0f} req/s  "
                              f"{cell['cpu_us_per_req']:>6.1f} µs CPU/req  RSS {cell['rss_mib']:.1f} MiB", flush=True)
        finally:
            supervisor.stop_all()
    report = {"command": "bash bench/run_http2.sh" + ("".join(f" {a}" for a in (argv or sys.argv[1:]))),
              "machine": machine_info(REPO_DIR / ".venv" / "bin" / "python"),
              "pinned": layout.describe() if layout else None, "body": args.body, "duration_s": args.duration,
              "cells": results}
    write_report(report, results, markdown_table, args.results_dir, "http2")
    return 0


def write_report(report: dict, results: dict, table: Callable[[dict], str], results_dir: Path, kind: str) -> None:
    """Add the medians to ``report``, print their table and save it all as bench/results/<kind>-<time>.json."""
    report["medians"] = medians(results)
    print()
    print(table(report["medians"]))
    results_dir.mkdir(parents=True, exist_ok=True)
    output = results_dir / f"{kind}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nJSON: {output}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
