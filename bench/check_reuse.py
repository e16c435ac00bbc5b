"""Count the proxy's connect() calls per request under keep-alive load (driven by check_reuse.sh).

With upstream connection pooling a proxy connects to the origin once per pooled connection, not once
per request, so after a warm-up the count during the measured window should be ~0 per request.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness import BenchError, Supervisor, cleanup_on_signals, pick_free_ports, restore_default_signals
from targets import TARGET_KEYS, Bench
from wrk import run_wrk, wrk_command

# "<pid> <epoch.usec> connect(<fd>, <address>, <len>) = <result>"; the pid prefix comes with -f
_CONNECT_LINE = re.compile(r"^(?:\d+\s+)?(\d+\.\d+)\s+connect\(\d+,\s*(.*)$")
_PORT = re.compile(r"sin6?_port=htons\((\d+)\)")


@dataclass
class ConnectCount:
    total: int = 0
    to_port: int = 0


def count_connects(strace_text: str, *, port: int, start: float, end: float) -> ConnectCount:
    """connect() calls whose start time lies in [start, end], all and those aimed at ``port``."""
    count = ConnectCount()
    for line in strace_text.splitlines():
        match = _CONNECT_LINE.match(line)
        if match is None or not start <= float(match.group(1)) <= end:
            continue
        count.total += 1
        port_match = _PORT.search(match.group(2))
        if port_match is not None and int(port_match.group(1)) == port:
            count.to_port += 1
    return count


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    proxies = [key for key in TARGET_KEYS if key != "direct"]
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", choices=proxies, default="tulle")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of measured load")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--max-per-request", type=float, default=0.01,
                        help="fail when upstream connects per request exceed this")
    parser.add_argument("--keep-tmp", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="tulle-reuse-"))
    work_dir.chmod(0o755)
    strace_out = work_dir / "strace.out"
    # --seccomp-bpf stops the tracee only at connect(), so the proxy runs near full speed
    prefix = ["strace", "-f", "-qq", "--seccomp-bpf", "-ttt", "-e", "trace=connect", "-o", str(strace_out)]
    supervisor = Supervisor(work_dir)
    try:
        with cleanup_on_signals():
            try:
                bench = Bench(work_dir, supervisor, pick_free_ports(4))
                bench.start_origin(workers=1)
                target = bench.start_target(args.target, command_prefix=prefix)
                if not target.available:
                    print(f"{args.target} not available: {target.error}")
                    return 2
                url = f"http://127.0.0.1:{target.port}/1k"
                run_wrk(supervisor, "wrk-warmup", wrk_command(
                    url, connections=args.connections, threads=1, duration_s=args.warmup))
                measured = run_wrk(supervisor, "wrk", wrk_command(
                    url, connections=args.connections, threads=1, duration_s=args.duration))
                assert target.process is not None
                supervisor.stop(target.process)  # strace flushes its output when the tracee is gone
                counts = count_connects(strace_out.read_text(errors="replace"), port=bench.origin_port,
                                        start=measured.started_at, end=measured.finished_at)
                origin_port = bench.origin_port
            finally:
                supervisor.stop_all()
                if args.keep_tmp:
                    print(f"kept strace output and logs in {work_dir}", file=sys.stderr)
                else:
                    shutil.rmtree(work_dir, ignore_errors=True)
    except BenchError as exc:
        print(f"check failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every process the check started has been stopped", file=sys.stderr)
        return 130
    finally:
        restore_default_signals()

    requests = measured.result.requests
    per_request = counts.to_port / requests if requests else float("inf")
    print(f"target: {args.target}, wrk -t1 -c{args.connections} -d{args.duration:.0f}s after a "
          f"{args.warmup:.0f}s warm-up, keep-alive")
    print(f"requests: {requests} ({measured.result.error_count} errors)")
    print(f"connect() calls during the measured window: {counts.total} "
          f"({counts.to_port} to the origin 127.0.0.1:{origin_port})")
    print(f"upstream connect() per request: {per_request:.6f}")
    if requests == 0 or per_request > args.max_per_request:
        print(f"FAIL: more than {args.max_per_request} upstream connects per request: connections are not reused")
        return 1
    print("PASS: upstream connections are reused")
    return 0


if __name__ == "__main__":
    sys.exit(main())
