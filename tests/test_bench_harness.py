"""bench/harness.py: templates, ports, /proc readers and process supervision."""

from __future__ import annotations

import http.server
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from harness import (  # noqa: E402
    CLOCK_TICKS_PER_SECOND,
    BenchError,
    CpuLayout,
    CpuSnapshot,
    Supervisor,
    assert_pinned,
    check_serves_bodies,
    cpu_seconds_between,
    ephemeral_port_range,
    parse_proc_stat_totals,
    parse_stat_cpu_ticks,
    parse_status_memory_kib,
    pick_free_ports,
    pinned_layout,
    process_tree,
    read_memory_kib,
    render_template,
    tree_affinity,
    wait_for_port,
)


def test_template_fills_every_placeholder() -> None:
    assert render_template("listen {{HOST}}:{{PORT}}; # {{PORT}}", {"HOST": "127.0.0.1", "PORT": 8080}) == (
        "listen 127.0.0.1:8080; # 8080"
    )


def test_template_refuses_a_placeholder_without_value() -> None:
    with pytest.raises(BenchError, match="ORIGIN_PORT"):
        render_template("server {{ORIGIN_PORT}}", {"PORT": 1})


def test_stat_cpu_ticks_survive_a_comm_with_spaces_and_parentheses() -> None:
    utime, stime = 1234, 567
    fields_after_comm = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(utime), str(stime), "9", "9"]
    stat = f"4242 (odd ) (name) {' '.join(fields_after_comm)}"
    assert parse_stat_cpu_ticks(stat) == utime + stime


def test_status_memory_reads_rss_and_peak() -> None:
    status = "Name:\tnginx\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t1\n"
    assert parse_status_memory_kib(status) == (10240, 20480)
    assert parse_status_memory_kib("Name:\tkthreadd\n") == (0, 0)


def test_machine_busy_excludes_idle_and_iowait() -> None:
    user, nice, system, idle, iowait, irq, softirq, steal = 10, 1, 5, 100, 7, 2, 3, 1
    line = f"cpu  {user} {nice} {system} {idle} {iowait} {irq} {softirq} {steal} 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n"
    busy, total = parse_proc_stat_totals(line)
    assert busy == user + nice + system + irq + softirq + steal
    assert total == busy + idle + iowait


def test_cpu_delta_counts_processes_born_during_the_run_from_zero() -> None:
    before = CpuSnapshot({1: 100, 2: 50})
    after = CpuSnapshot({1: 150, 3: 25})  # 2 exited, 3 was forked
    assert cpu_seconds_between(before, after) == pytest.approx((50 + 25) / CLOCK_TICKS_PER_SECOND)


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = pick_free_ports(8)
    assert len(set(ports)) == 8
    low, _ = ephemeral_port_range()
    for port in ports:
        assert port < low
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))


def test_supervisor_kills_the_whole_process_group(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    # the shell forks a grandchild that would outlive a plain kill of the leader
    process = supervisor.start("tree", ["sh", "-c", "sleep 300 & echo $! > child.pid; wait"])
    deadline = time.monotonic() + 10
    while not (tmp_path / "child.pid").exists() or not (tmp_path / "child.pid").read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    grandchild = int((tmp_path / "child.pid").read_text())
    assert grandchild in process_tree(process.pid)
    rss, hwm = read_memory_kib(process_tree(process.pid))
    assert 0 < rss <= hwm
    supervisor.stop_all()
    assert supervisor.processes == []
    assert not process.alive()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{grandchild}").exists() and "Z" not in _state(grandchild):
        assert time.monotonic() < deadline, "grandchild survived stop_all"
        time.sleep(0.02)


def _state(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return text[text.rindex(")") + 2]


def test_wait_for_port_reports_the_exit_and_log_of_a_dead_server(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    process = supervisor.start("broken", ["sh", "-c", "echo 'bind: address in use' >&2; exit 3"])
    process.popen.wait()
    with pytest.raises(BenchError, match="status 3.*address in use"):
        wait_for_port(pick_free_ports(1)[0], process, timeout_seconds=2)
    supervisor.stop_all()


class _FixedBodyHandler(http.server.BaseHTTPRequestHandler):
    bodies: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.bodies.get(self.path, b"")
        self.send_response(200 if self.path in self.bodies else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FixedBodyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_body_check_accepts_exact_bodies_and_refuses_others(local_server) -> None:
    port = local_server.server_address[1]
    served = os.urandom(1024)
    _FixedBodyHandler.bodies = {"/1k": served}
    check_serves_bodies(port, {"/1k": served}, "server")
    with pytest.raises(BenchError, match="status 200 with 1024 bytes, expected 200 with 1023"):
        check_serves_bodies(port, {"/1k": served[:-1]}, "server")
    with pytest.raises(BenchError, match="status 404"):
        check_serves_bodies(port, {"/16k": served}, "server")


def test_pinned_layout_on_two_cpus_shares_the_load_core_and_gives_the_proxy_its_own() -> None:
    layout = pinned_layout([3, 5])
    assert layout == CpuLayout(load=(3,), origin=(3,), proxy=(5,))
    assert layout.describe() == "load generator + origin on CPU 3, proxy under test alone on CPU 5"


@pytest.mark.parametrize(("cpus", "load", "origin", "proxy"), [
    (range(3), (0,), (1,), (2,)),
    (range(4), (0, 1), (2,), (3,)),
    (range(16), (0, 1), (14,), (15,)),
])
def test_pinned_layout_on_more_cpus_dedicates_a_core_to_each(cpus, load, origin, proxy) -> None:
    layout = pinned_layout(cpus)
    assert (layout.load, layout.origin, layout.proxy) == (load, origin, proxy)
    assert not set(layout.proxy) & (set(layout.load) | set(layout.origin))
    assert "proxy under test alone on CPU" in layout.describe()


def test_pinned_layout_needs_two_cpus() -> None:
    with pytest.raises(BenchError, match="at least 2 CPUs"):
        pinned_layout([0])


def test_a_pinned_process_tree_runs_only_on_its_cpus(tmp_path: Path) -> None:
    cpu = min(os.sched_getaffinity(0))
    supervisor = Supervisor(tmp_path)
    # a child forked after the start inherits the mask
    process = supervisor.start("pinned", ["sh", "-c", "sleep 300 & echo $! > child.pid; wait"], cpus=[cpu])
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "child.pid").exists() or not (tmp_path / "child.pid").read_text().strip():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        masks = tree_affinity(process.pid)
        assert int((tmp_path / "child.pid").read_text()) in masks
        assert set(masks.values()) == {frozenset({cpu})}
        assert_pinned(process.pid, [cpu], "pinned")
    finally:
        supervisor.stop_all()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs to tell a stray thread")
def test_an_unpinned_process_is_reported(tmp_path: Path) -> None:
    supervisor = Supervisor(tmp_path)
    process = supervisor.start("free", ["sleep", "300"])
    try:
        with pytest.raises(BenchError, match="not pinned"):
            assert_pinned(process.pid, [min(os.sched_getaffinity(0))], "free")
    finally:
        supervisor.stop_all()
