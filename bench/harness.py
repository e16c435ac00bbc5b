"""Process, port and /proc plumbing shared by the benchmark scripts (stdlib only).

Every server the benchmark starts runs in its own session so that one ``killpg`` ends it
with all its children (nginx workers, tulle workers) and so that Ctrl-C in the terminal reaches
only the driver, which then tears everything down in order.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import platform
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
CONFIG_DIR = BENCH_DIR / "configs"
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")


class BenchError(Exception):
    """A benchmark step failed in a way that makes the run meaningless."""


def render_template(text: str, values: Mapping[str, object]) -> str:
    """Fill ``{{NAME}}`` placeholders; a placeholder without a value is an error, not an empty string."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise BenchError(f"template placeholder {{{{{name}}}}} has no value")
        return str(values[name])

    return _PLACEHOLDER.sub(substitute, text)


def render_config(template_name: str, destination: Path, values: Mapping[str, object]) -> Path:
    text = (CONFIG_DIR / template_name).read_text(encoding="utf-8")
    destination.write_text(render_template(text, values), encoding="utf-8")
    return destination


def ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def pick_free_ports(count: int, *, rng: random.Random | None = None) -> list[int]:
    """Ports below the kernel's ephemeral range, so client sockets never collide with our listeners."""
    rng = rng or random.Random()
    ephemeral_low, _ = ephemeral_port_range()
    ceiling = max(ephemeral_low - 1, 20000)
    floor = max(10000, ceiling - 20000)
    chosen: list[int] = []
    attempts = 0
    while len(chosen) < count:
        attempts += 1
        if attempts > 10000:
            raise BenchError(f"could not find {count} free ports in {floor}..{ceiling}")
        port = rng.randint(floor, ceiling)
        if port in chosen:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    return chosen


# ---------------------------------------------------------------- /proc readers


def _stat_fields_after_comm(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may contain spaces and parentheses; it ends at the last ')'
    return text[text.rindex(")") + 2 :].split()


def parse_stat_cpu_ticks(stat_text: str) -> int:
    """utime + stime (fields 14 and 15 of /proc/<pid>/stat) in clock ticks."""
    fields = stat_text[stat_text.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def read_cpu_ticks(pid: int) -> int | None:
    fields = _stat_fields_after_comm(pid)
    if fields is None:
        return None
    return int(fields[11]) + int(fields[12])


def process_tree(root_pid: int) -> list[int]:
    """``root_pid`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields_after_comm(int(entry))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    tree: list[int] = []
    pending = [root_pid]
    while pending:
        pid = pending.pop()
        if not Path(f"/proc/{pid}").exists():
            continue
        tree.append(pid)
        pending.extend(children.get(pid, ()))
    return sorted(tree)


def parse_status_memory_kib(status_text: str) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB from the text of /proc/<pid>/status; zeros for kernel threads."""
    values = {"VmRSS": 0, "VmHWM": 0}
    for line in status_text.splitlines():
        key, _, rest = line.partition(":")
        if key in values:
            values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def read_memory_kib(pids: Iterable[int]) -> tuple[int, int]:
    """Summed (VmRSS, VmHWM) over ``pids`` (shared pages are counted once per process, like `ps`)."""
    rss_total = hwm_total = 0
    for pid in pids:
        try:
            rss, hwm = parse_status_memory_kib(Path(f"/proc/{pid}/status").read_text())
        except OSError:
            continue
        rss_total += rss
        hwm_total += hwm
    return rss_total, hwm_total


@dataclass
class CpuSnapshot:
    """CPU ticks of every process of one server at one instant."""

    ticks_by_pid: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of_tree(cls, root_pid: int) -> CpuSnapshot:
        ticks: dict[int, int] = {}
        for pid in process_tree(root_pid):
            value = read_cpu_ticks(pid)
            if value is not None:
                ticks[pid] = value
        return cls(ticks)


def cpu_seconds_between(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """CPU time spent between two snapshots; a process born in between counts from zero."""
    ticks = sum(value - before.ticks_by_pid.get(pid, 0) for pid, value in after.ticks_by_pid.items())
    return max(ticks, 0) / CLOCK_TICKS_PER_SECOND


def parse_proc_stat_totals(proc_stat_text: str) -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from the first line of /proc/stat."""
    first = proc_stat_text.splitlines()[0].split()
    values = [int(value) for value in first[1:9]]  # user nice system idle iowait irq softirq steal
    idle = values[3] + values[4]
    total = sum(values)
    return total - idle, total


def read_machine_cpu() -> tuple[int, int]:
    return parse_proc_stat_totals(Path("/proc/stat").read_text())


# ---------------------------------------------------------------- CPU pinning


@dataclass(frozen=True)
class CpuLayout:
    """Which CPUs the load generator (wrk/h2load and this driver), the origin and the proxy under test run on."""

    load: tuple[int, ...]
    origin: tuple[int, ...]
    proxy: tuple[int, ...]

    def describe(self) -> str:
        def cpus(values: tuple[int, ...]) -> str:
            return ("CPU " if len(values) == 1 else "CPUs ") + ",".join(map(str, values))

        if self.load == self.origin:
            return f"load generator + origin on {cpus(self.load)}, proxy under test alone on {cpus(self.proxy)}"
        return (f"load generator on {cpus(self.load)}, origin on {cpus(self.origin)}, "
                f"proxy under test alone on {cpus(self.proxy)}")

    def to_json(self) -> dict[str, list[int]]:
        return {"load": list(self.load), "origin": list(self.origin), "proxy": list(self.proxy)}


def pinned_layout(available: Iterable[int]) -> CpuLayout:
    """Split the CPUs this process may use: the proxy gets one of its own, always.

    2 CPUs: load generator and origin share the first, the proxy has the second (the issue's pinned
    setup). 3 or more: the proxy gets the last, the origin the one before it, and the load generator
    up to two of the rest (wrk -t1/-t2), so that nothing shares a core with anything else.
    """
    cpus = sorted(set(available))
    if len(cpus) < 2:
        raise BenchError(f"--pinned needs at least 2 CPUs, this process may use {len(cpus)}")
    if len(cpus) == 2:
        return CpuLayout(load=(cpus[0],), origin=(cpus[0],), proxy=(cpus[1],))
    rest = cpus[:-2]
    return CpuLayout(load=tuple(rest[:2]), origin=(cpus[-2],), proxy=(cpus[-1],))


def thread_ids(pid: int) -> list[int]:
    try:
        return sorted(int(tid) for tid in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def tree_affinity(root_pid: int) -> dict[int, frozenset[int]]:
    """The CPU mask of every thread of ``root_pid``'s process tree (threads that vanish are skipped)."""
    masks: dict[int, frozenset[int]] = {}
    for pid in process_tree(root_pid):
        for tid in thread_ids(pid):
            with contextlib.suppress(OSError):
                masks[tid] = frozenset(os.sched_getaffinity(tid))
    return masks


def assert_pinned(root_pid: int, cpus: Iterable[int], name: str) -> None:
    """Every thread of the tree may run only on ``cpus`` (a worker that reset its mask would spoil the run)."""
    allowed = frozenset(cpus)
    masks = tree_affinity(root_pid)
    if not masks:
        raise BenchError(f"{name}: no process found to check its CPU pinning")
    strays = {tid: sorted(mask) for tid, mask in masks.items() if not mask <= allowed}
    if strays:
        raise BenchError(f"{name}: threads not pinned to CPUs {sorted(allowed)}: {strays}")


# ---------------------------------------------------------------- processes


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:] if line.strip())


class Supervisor:
    """Starts servers in their own sessions and guarantees they are all gone at the end."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.processes: list[ManagedProcess] = []

    def start(self, name: str, argv: list[str], *, env: Mapping[str, str] | None = None,
              cpus: Iterable[int] | None = None) -> ManagedProcess:
        """Start ``argv`` in its own session; ``cpus`` pins it before exec (its children inherit the mask)."""
        log_path = self.work_dir / f"{name}.log"
        pinned = frozenset(cpus) if cpus is not None else None

        def pin() -> None:
            if pinned is not None:
                os.sched_setaffinity(0, pinned)

        with open(log_path, "wb") as log:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(env) if env is not None else None,
                cwd=self.work_dir,
                preexec_fn=pin if pinned is not None else None,
            )
        process = ManagedProcess(name, argv, popen, log_path)
        self.processes.append(process)
        return process

    def stop(self, process: ManagedProcess, *, grace_seconds: float = 3.0) -> None:
        if process.popen.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.popen.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                pass
        # the leader may be gone while forked workers linger: always sweep the whole group
        _signal_group(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.popen.wait(timeout=grace_seconds)
        if process in self.processes:
            self.processes.remove(process)

    def stop_all(self) -> None:
        for process in reversed(list(self.processes)):
            self.stop(process)


def run_to_completion(supervisor: Supervisor, tool: str, name: str, argv: list[str], *,
                      cpus: tuple[int, ...] | None = None) -> tuple[str, float, float]:
    """Run a load generator (wrk, h2load) to its end under the supervisor, so an interrupted run leaves
    none behind: its output, start and end times; a non-zero exit is a BenchError naming the tool."""
    started_at = time.time()
    process = supervisor.start(name, argv, cpus=cpus)
    try:
        process.popen.wait()
    finally:
        supervisor.stop(process)
    finished_at = time.time()
    output = process.log_path.read_text(errors="replace")
    if process.popen.returncode != 0:
        raise BenchError(f"{tool} exited with status {process.popen.returncode}: {output.strip()[-300:]}")
    return output, started_at, finished_at


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


@contextlib.contextmanager
def cleanup_on_signals():
    """Turn SIGTERM/SIGHUP into SystemExit so ``finally`` blocks run, and keep cleanup uninterrupted."""

    def exit_on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, exit_on_signal)
    try:
        yield
    finally:
        # a second Ctrl-C must not abort the teardown half-way
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)


def restore_default_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


# ---------------------------------------------------------------- readiness


def wait_for_port(port: int, process: ManagedProcess | None, *, timeout_seconds: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while True:
        if process is not None and not process.alive():
            raise BenchError(
                f"{process.name} exited with status {process.popen.returncode}: {process.log_tail()}"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                detail = f": {process.log_tail()}" if process is not None else ""
                raise BenchError(f"nothing listening on 127.0.0.1:{port} after {timeout_seconds:.0f}s{detail}") from None
            time.sleep(0.05)


def http_get(port: int, path: str, *, timeout_seconds: float = 5.0) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_seconds)
    try:
        connection.request("GET", path, headers={"Host": "bench.local"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def check_serves_bodies(port: int, bodies: Mapping[str, bytes], name: str) -> None:
    """One GET per path, with a fresh connection each; the body must arrive byte-exact."""
    for path, expected in bodies.items():
        try:
            status, body = http_get(port, path)
        except (OSError, http.client.HTTPException) as exc:
            raise BenchError(f"{name}: GET {path} failed: {exc!r}") from None
        if status != 200 or body != expected:
            raise BenchError(f"{name}: GET {path} returned status {status} with {len(body)} bytes, "
                             f"expected 200 with {len(expected)} bytes")


# ---------------------------------------------------------------- machine facts


def _first_line(argv: list[str]) -> str:
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc.__class__.__name__})"
    text = (completed.stdout + completed.stderr).strip()
    return text.splitlines()[0].strip() if text else "unknown"


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(tulle_python: Path) -> dict[str, object]:
    wrk_line = _first_line(["wrk", "-v"])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model_name(),
        "kernel": platform.release(),
        "os": _first_line(["sh", "-c", ". /etc/os-release && echo \"$PRETTY_NAME\""]),
        "memory_total_kib": _meminfo_total_kib(),
        "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
        "nginx": _first_line(["nginx", "-v"]).replace("nginx version: ", ""),
        "haproxy": _first_line(["haproxy", "-v"]).split(" - ")[0].replace("HAProxy version ", ""),
        "wrk": wrk_line.split(" Copyright")[0].replace("wrk ", ""),
        "driver_python": sys.version.split()[0],
        "tulle_python": (_first_line([str(tulle_python), "--version"]).replace("Python ", "")
                         if tulle_python.exists() else "no venv"),
    }


def _meminfo_total_kib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
