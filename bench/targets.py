"""The servers under test: the nginx origin and each proxy that wrk talks to."""

from __future__ import annotations

import contextlib
import http.client
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness import (
    REPO_DIR,
    BenchError,
    CpuLayout,
    ManagedProcess,
    Supervisor,
    assert_pinned,
    check_serves_bodies,
    http_get,
    render_config,
    wait_for_port,
)

BODY_SIZES = {"1k": 1024, "16k": 16 * 1024}

# order matters: it is the order of rows in every table
TARGET_KEYS = ("direct", "nginx", "haproxy", "tulle", "tulle_resilience", "haproxy_tcp", "tulle_tcp")
TARGET_LABELS = {
    "direct": "direct",
    "nginx": "nginx HTTP",
    "haproxy": "HAProxy HTTP",
    "tulle": "tulle HTTP",
    "tulle_resilience": "tulle HTTP + idle resilience",
    "haproxy_tcp": "HAProxy L4",
    "tulle_tcp": "tulle L4",
}
TULLE_KEYS = frozenset({"tulle", "tulle_resilience", "tulle_tcp"})
# target key -> its config template's mode (bench/configs/tulle_<mode>.yaml.tmpl)
TULLE_MODES = {"tulle": "http", "tulle_resilience": "http_resilience", "tulle_tcp": "tcp"}
TULLE_BINARY = REPO_DIR / ".venv" / "bin" / "tulle"
# counters read from the tulle admin after the run: they show whether upstream connections were pooled
TULLE_ADMIN_COUNTERS = (
    "cluster.origin.upstream_cx_total",
    "cluster.origin.upstream_rq_total",
    "cluster.origin.upstream_cx_connect_fail",
)


def body_bytes(size: int) -> bytes:
    """A recognisable, non-repeating-at-page-size body so truncation or mixing shows up in checks."""
    pattern = bytes(range(33, 127))
    return (pattern * (size // len(pattern) + 1))[:size]


@dataclass
class Target:
    key: str
    port: int
    process: ManagedProcess | None = None
    command: list[str] = field(default_factory=list)
    config_path: Path | None = None
    admin_port: int | None = None
    error: str | None = None

    @property
    def label(self) -> str:
        return TARGET_LABELS[self.key]

    @property
    def available(self) -> bool:
        return self.error is None

    def mark_unavailable(self, reason: str) -> None:
        self.error = reason


class Bench:
    """Owns the temp dir, the origin and the proxies for one benchmark run."""

    def __init__(self, work_dir: Path, supervisor: Supervisor, ports: list[int],
                 layout: CpuLayout | None = None) -> None:
        self.work_dir = work_dir
        self.supervisor = supervisor
        self.layout = layout  # None: nothing is pinned
        self._ports = list(ports)
        self.origin_port = self._next_port()
        self.origin: ManagedProcess | None = None
        self.bodies = {f"/{name}": body_bytes(size) for name, size in BODY_SIZES.items()}

    def _next_port(self) -> int:
        if not self._ports:
            raise BenchError("ran out of pre-allocated ports")
        return self._ports.pop(0)

    # ------------------------------------------------------------ origin

    def start_origin(self, workers: int) -> ManagedProcess:
        www = self.work_dir / "www"
        www.mkdir(exist_ok=True)
        for path, body in self.bodies.items():
            (www / path.lstrip("/")).write_bytes(body)
        config = render_config(
            "nginx_origin.conf.tmpl",
            self.work_dir / "origin.conf",
            {"TMP": self.work_dir, "ORIGIN_PORT": self.origin_port, "ORIGIN_WORKERS": workers},
        )
        cpus = self.layout.origin if self.layout else None
        self.origin = self.supervisor.start("origin", _nginx_argv(self.work_dir, config), cpus=cpus)
        wait_for_port(self.origin_port, self.origin)
        if cpus is not None:
            assert_pinned(self.origin.pid, cpus, "origin")
        check_serves_bodies(self.origin_port, self.bodies, "origin")
        return self.origin

    # ------------------------------------------------------------ proxies

    def start_target(self, key: str, *, command_prefix: list[str] | None = None) -> Target:
        """Start one target; a tulle failure marks it unavailable, any other failure aborts the run.

        ``command_prefix`` wraps the server's command (check_reuse.sh runs it under strace).
        """
        if key == "direct":
            return Target(key, self.origin_port)
        target = Target(key, self._next_port())
        try:
            if key == "nginx":
                self._configure_nginx_proxy(target)
            elif key in ("haproxy", "haproxy_tcp"):
                self._configure_haproxy(target, mode="http" if key == "haproxy" else "tcp")
            elif key in TULLE_KEYS:
                self._configure_tulle(target, mode=TULLE_MODES[key])
            else:
                raise BenchError(f"unknown target {key!r}")
            cpus = self.layout.proxy if self.layout else None
            target.process = self.supervisor.start(key, [*(command_prefix or []), *target.command], cpus=cpus)
            wait_for_port(target.port, target.process, timeout_seconds=30.0)
            check_serves_bodies(target.port, self.bodies, target.label)
            if cpus is not None:
                # after the first requests: workers and their threads exist by now
                assert_pinned(target.process.pid, cpus, target.label)
        except BenchError as exc:
            reason = str(exc)
            if target.process is not None:
                self.supervisor.stop(target.process)
                if "Traceback" in (log := target.process.log_path.read_text(errors="replace")):
                    reason += f"; its log: {summarize_failure_output(log)}"
            if key not in TULLE_KEYS:
                raise BenchError(reason) from None
            target.mark_unavailable(reason)
        return target

    def _configure_nginx_proxy(self, target: Target) -> None:
        target.config_path = render_config(
            "nginx_proxy.conf.tmpl",
            self.work_dir / "nginx-proxy.conf",
            {"TMP": self.work_dir, "PORT": target.port, "ORIGIN_PORT": self.origin_port},
        )
        target.command = _nginx_argv(self.work_dir, target.config_path)

    def _configure_haproxy(self, target: Target, *, mode: str) -> None:
        target.config_path = render_config(
            f"haproxy_{mode}.cfg.tmpl",
            self.work_dir / f"haproxy-{mode}.cfg",
            {"PORT": target.port, "ORIGIN_PORT": self.origin_port},
        )
        target.command = ["haproxy", "-db", "-f", str(target.config_path)]

    def _configure_tulle(self, target: Target, *, mode: str) -> None:
        target.admin_port = self._next_port()
        target.config_path = render_config(
            f"tulle_{mode}.yaml.tmpl",
            self.work_dir / f"tulle-{mode}.yaml",
            {"PORT": target.port, "ADMIN_PORT": target.admin_port, "ORIGIN_PORT": self.origin_port},
        )
        validate_tulle_config(target.config_path)
        target.command = [str(TULLE_BINARY), "proxy", "-c", str(target.config_path), "--concurrency", "1"]


def _nginx_argv(work_dir: Path, config: Path) -> list[str]:
    # -e: where nginx logs before it has read error_log from the config (default is /var/log/nginx)
    return ["nginx", "-p", str(work_dir), "-e", str(work_dir / "nginx-startup.log"),
            "-c", str(config), "-g", "daemon off;"]


def validate_tulle_config(config_path: Path) -> None:
    """``tulle proxy --mode validate``: the exact construction a real start does, without sockets."""
    if not TULLE_BINARY.exists():
        raise BenchError(f"{TULLE_BINARY} does not exist (is the venv installed with `pip install -e .`?)")
    argv = [str(TULLE_BINARY), "proxy", "--mode", "validate", "-c", str(config_path)]
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"`tulle proxy --mode validate` could not run: {exc}") from None
    if completed.returncode != 0:
        detail = summarize_failure_output(completed.stderr + completed.stdout)
        raise BenchError(f"`tulle proxy --mode validate` exited {completed.returncode}: {detail}")


def summarize_failure_output(text: str) -> str:
    """The exception line of the last Python traceback (with where it was raised), else the last lines."""
    raw_lines = [line for line in text.splitlines() if line.strip()]
    if not raw_lines:
        return "no output"
    starts = [index for index, line in enumerate(raw_lines) if line.startswith("Traceback (most recent call last)")]
    if starts:
        last_file = ""
        for line in raw_lines[starts[-1] + 1 :]:
            if line.lstrip().startswith('File "'):
                last_file = line.strip()
            elif not line[:1].isspace():
                return f"{line.strip()} ({last_file})" if last_file else line.strip()
    return " | ".join(line.strip() for line in raw_lines[-3:])


def parse_admin_stats(text: str) -> dict[str, int]:
    """Envoy's plain /stats format: one ``name: value`` per line (histograms are skipped)."""
    counters: dict[str, int] = {}
    for line in text.splitlines():
        name, separator, value = line.partition(": ")
        if separator and value.strip().lstrip("-").isdigit():
            counters[name.strip()] = int(value)
    return counters


def read_tulle_counters(target: Target) -> dict[str, int]:
    """Best effort: the admin may not be implemented yet, which must not fail the benchmark."""
    if target.admin_port is None or not target.available:
        return {}
    with contextlib.suppress(OSError, http.client.HTTPException):
        status, body = http_get(target.admin_port, "/stats")
        if status == 200:
            counters = parse_admin_stats(body.decode(errors="replace"))
            return {name: counters[name] for name in TULLE_ADMIN_COUNTERS if name in counters}
    return {}
