"""gRPC unary side by side: h2load sending gRPC calls (h2c) straight to a gRPC origin, through nginx
(``grpc_pass``) and through tulle (an HTTP/2 cluster), pinned.

The origin is nginx answering every call in C with one framed message and ``grpc-status: 0``
(configs/nginx_grpc_origin.conf.tmpl), so the proxies, not a Python gRPC server, are what is measured.
Two shapes: 1 call in flight per connection (32 connections) and 100 per connection (4 connections).
Each cell reports requests/s, the proxy's CPU per call and RSS; the protocols issue's target is
tulle >= 0.7x direct's rate. Run through bench/run_grpc.sh.

    python3 bench/grpc_unary.py [--duration S] [--warmup S] [--runs N] [--pinned] [--results-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from harness import (
    REPO_DIR,
    BenchError,
    Supervisor,
    cleanup_on_signals,
    machine_info,
    pick_free_ports,
    pinned_layout,
    render_config,
    wait_for_port,
)
from http2 import measure, start_nginx, write_report
from targets import TULLE_BINARY, Bench, validate_tulle_config

SHAPES = (("1 call x 32 conns", 32, 1), ("100 calls x 4 conns", 4, 100))
TARGETS = ("direct", "nginx", "tulle")
PATH = "/test.Echo/Unary"
REQUEST_MESSAGE = b"\x00" + (64).to_bytes(4, "big") + b"q" * 64  # one 64-byte message
REPLY_MESSAGE = b"\x00" + (64).to_bytes(4, "big") + b"r" * 64


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per cell (h2load -D)")
    parser.add_argument("--warmup", type=float, default=2.0, help="h2load --warm-up-time")
    parser.add_argument("--runs", type=int, default=3, help="measure every cell this many times (median kept)")
    parser.add_argument("--pinned", action="store_true",
                        help="load generator + origin on one core, the proxy under test alone on another")
    parser.add_argument("--results-dir", type=Path, default=REPO_DIR / "bench" / "results")
    return parser.parse_args(argv)


def h2load_grpc_argv(port: int, request_file: Path, clients: int, streams: int, duration: float,
                     warmup: float) -> list[str]:
    return ["h2load", f"-c{clients}", f"-m{streams}", "-t1", "-D", f"{duration:g}", f"--warm-up-time={warmup:g}",
            "-d", str(request_file), "-H", "content-type: application/grpc", "-H", "te: trailers",
            f"http://127.0.0.1:{port}{PATH}"]


def start_tulle(bench: Bench, port: int, admin_port: int, cpus: tuple[int, ...] | None) -> object:
    config = render_config("tulle_grpc.yaml.tmpl", bench.work_dir / "tulle-grpc.yaml",
                           {"PORT": port, "ADMIN_PORT": admin_port, "ORIGIN_PORT": bench.origin_port})
    validate_tulle_config(config)
    process = bench.supervisor.start("tulle_grpc", [str(TULLE_BINARY), "proxy", "-c", str(config),
                                                    "--concurrency", "1"], cpus=cpus)
    wait_for_port(port, process, timeout_seconds=30.0)
    return process


def markdown_table(cells: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| shape | direct calls/s | nginx calls/s | tulle calls/s | tulle/direct | tulle/nginx "
             "| nginx CPU µs/call | tulle CPU µs/call | tulle/nginx CPU | tulle RSS MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for shape, cell in cells.items():
        direct, nginx, tulle = cell["direct"], cell["nginx"], cell["tulle"]
        lines.append(
            f"| {shape} | {direct['req_s']:,.0f} | {nginx['req_s']:,.0f} | {tulle['req_s']:,.0f} "
            f"| {tulle['req_s'] / direct['req_s']:.2f}× | {tulle['req_s'] / nginx['req_s']:.2f}× "
            f"| {nginx['cpu_us_per_req']:.1f} | {tulle['cpu_us_per_req']:.1f} "
            f"| {tulle['cpu_us_per_req'] / nginx['cpu_us_per_req']:.2f}× | {tulle['rss_mib']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = pinned_layout(os.sched_getaffinity(0)) if args.pinned else None
    if layout is not None:
        os.sched_setaffinity(0, layout.load)
    work = Path(tempfile.mkdtemp(prefix="tulle-bench-grpc-"))
    work.chmod(0o755)
    (work / "www").mkdir()
    (work / "www" / "grpc-reply").write_bytes(REPLY_MESSAGE)
    request_file = work / "grpc-request"
    request_file.write_bytes(REQUEST_MESSAGE)
    supervisor = Supervisor(work)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with cleanup_on_signals():
        try:
            bench = Bench(work, supervisor, pick_free_ports(8), layout)
            origin = start_nginx(bench, "nginx_grpc_origin.conf.tmpl", "grpc_origin", bench.origin_port,
                                 layout.origin if layout else None)
            proxy_cpus = layout.proxy if layout else None
            nginx_port = bench._next_port()
            nginx = start_nginx(bench, "nginx_grpc_proxy.conf.tmpl", "nginx_grpc_proxy", nginx_port, proxy_cpus)
            tulle_port, admin_port = bench._next_port(), bench._next_port()
            tulle = start_tulle(bench, tulle_port, admin_port, proxy_cpus)
            servers = {"direct": (origin.pid, bench.origin_port), "nginx": (nginx.pid, nginx_port),
                       "tulle": (tulle.pid, tulle_port)}
            load_cpus = layout.load if layout else None
            for _ in range(args.runs):
                for shape, clients, streams in SHAPES:
                    for name in TARGETS:
                        pid, port = servers[name]
                        command = h2load_grpc_argv(port, request_file, clients, streams, args.duration, args.warmup)
                        # nginx's grpc_pass drops a few calls when the origin answers before the request
                        # body is in (nginx-to-nginx, "upstream sent frame for unknown stream"): counted
                        cell = measure(bench, name, pid, port, args, clients, streams, load_cpus, argv=command,
                                       allowed_failure_ratio=0.01 if name == "nginx" else 0.0)
                        results.setdefault(shape, {}).setdefault(name, []).append(cell)
                        print(f"{shape:<20} {name:<6} {cell['req_s']:>9,.0f} calls/s  "
                              f"{cell['cpu_us_per_req']:>6.1f} µs CPU/call  RSS {cell['rss_mib']:.1f} MiB", flush=True)
        finally:
            supervisor.stop_all()
    report = {"command": "bash bench/run_grpc.sh" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
              "machine": machine_info(REPO_DIR / ".venv" / "bin" / "python"),
              "pinned": layout.describe() if layout else None, "duration_s": args.duration, "cells": results}
    write_report(report, results, markdown_table, args.results_dir, "grpc")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        sys.exit(1)
