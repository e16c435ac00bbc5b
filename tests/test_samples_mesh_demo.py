"""The README's main command: `tulle demo --duration N` brings up the mesh, splits, promotes, exits 0.
A demo never touches another mesh (it works with Istio's ports taken), and Ctrl-C, SIGTERM and
SIGHUP all stop every process it started."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import wait_until
from tulle.samples.mesh_demo import API_PORT, FIRST_BLOCK, SIDECAR_PORTS, XDS_PORT, workload_ips

pytestmark = pytest.mark.integration


def test_mesh_demo_runs_unattended_and_reports_the_canary() -> None:
    result = subprocess.run([sys.executable, "-m", "tulle", "demo", "--duration", "10"],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    canary = out.split("== canary")[1].split("==")[0]
    shares = {m[1]: float(m[2]) for m in re.finditer(r"^\s+reviews-(v\d)\s+\d+\s+([\d.]+)%", canary, re.M)}
    assert set(shares) <= {"v1", "v2", "v3"} and shares.get("v1", 0) >= 55, canary  # 80/10/10
    assert re.search(r"status codes: 200: \d+$", canary, re.M), canary  # no errors
    stats = dict(re.findall(r"^\s+(\S+-v\d)\s+(\d+)\s+\d+\s+(?:\d+)$", out, re.M))
    assert int(stats["productpage-v1"]) > 0 and int(stats["details-v1"]) == int(stats["productpage-v1"])
    # the commands it prints reach this mesh's control plane, whose API needs its token
    assert re.search(r"^  export TULLE_TOKEN_FILE=\S+/state/api-token ", out, re.M), out
    promoted = out.split("== after reviews-v3.yaml")[1]
    assert re.search(r"^\s+reviews-v3\s+\d+\s+100\.0%", promoted, re.M), promoted


# --- another mesh's ports, signals ----------------------------------------------------------------


@contextlib.contextmanager
def held(addresses: list[tuple[str, int]]) -> Iterator[list[socket.socket]]:
    """Listen on each address as another mesh would; one already taken by someone else is taken anyway."""
    sockets = []
    try:
        for address in addresses:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT from an earlier run is no owner
            try:
                sock.bind(address)
            except OSError:
                sock.close()
                continue
            sock.listen()
            sock.setblocking(False)
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


class DemoProcess:
    """``tulle demo`` without --duration, its output read line by line as it comes."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "tulle", "demo"], stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.output.append(line)
            if text in line:
                return "".join(self.output)
        raise AssertionError(f"no {text!r} in the demo's output:\n{''.join(self.output)[-3000:]}")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _start_time(pid: int) -> str | None:
    """The process's start time (pids are reused), None once it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def descendants(pid: int) -> dict[int, str]:
    """Every process below ``pid`` (its children, theirs, ...) with its start time."""
    found: dict[int, str] = {}
    pending = [pid]
    while pending:
        parent = pending.pop()
        with contextlib.suppress(FileNotFoundError):
            for task in os.listdir(f"/proc/{parent}/task"):
                with contextlib.suppress(FileNotFoundError), open(f"/proc/{parent}/task/{task}/children") as f:
                    for child in map(int, f.read().split()):
                        started = _start_time(child)
                        if started is not None and child not in found:
                            found[child] = started
                            pending.append(child)
    return found


def still_running(processes: dict[int, str]) -> list[int]:
    return [pid for pid, started in processes.items() if _start_time(pid) == started]


def test_a_demo_beside_another_mesh_uses_its_own_ports_and_sigterm_stops_all_it_started() -> None:
    taken = [("127.0.0.1", XDS_PORT), ("127.0.0.1", API_PORT)]
    taken += [(ip, port) for ip in workload_ips(FIRST_BLOCK)[:1] for port in SIDECAR_PORTS]
    with held(taken) as other_mesh:
        demo = DemoProcess()
        try:
            out = demo.wait_for("Running until Ctrl-C")
            assert "Traceback" not in out and "Address already in use" in out
            assert re.search(r"status codes: 200: \d+$", out, re.M), out  # it works all the same
            assert re.search(r"export TULLE_CONTROL_PLANE=http://127\.0\.0\.1:(\d+)$", out, re.M), out
            for sock in other_mesh:  # and it never connected to the other mesh
                with pytest.raises(BlockingIOError):
                    sock.accept()
            started = descendants(demo.process.pid)
            # the control plane, and per workload its app, its sidecar and the sidecar's proxy
            assert len(started) >= 1 + 6 * 3, started
            demo.process.send_signal(signal.SIGTERM)
            assert demo.process.wait(60) == 0
            assert wait_until(lambda: not still_running(started), timeout=30), still_running(started)
        finally:
            demo.kill()


def test_sighup_while_the_mesh_starts_stops_all_it_started() -> None:
    demo = DemoProcess()
    try:
        demo.wait_for("starting bookinfo")  # the control plane runs; workloads are being started
        started = descendants(demo.process.pid)
        assert started
        demo.process.send_signal(signal.SIGHUP)
        assert demo.process.wait(60) == 0
        assert "stopping the mesh" in demo.wait_for("stopping the mesh", timeout=5)
        assert wait_until(lambda: not still_running(started), timeout=30), still_running(started)
    finally:
        demo.kill()


def test_respawn_starts_a_process_again_as_it_first_started_in_its_place(tmp_path) -> None:  # noqa: ANN001
    from tulle.samples.mesh_demo import Demo

    demo = Demo(tmp_path, delta=False)
    # `python -m <missing module>` exits at once with an error naming it: a process to restart
    demo._spawn("first", ["tulle_no_such_module"])
    demo._spawn("running", ["timeit", "-n", "1", "-r", "1", "import time; time.sleep(120)"])
    try:
        first = demo.process("first")
        assert first.wait(30) != 0
        with pytest.raises(RuntimeError, match="running is still running"):
            demo.respawn("running")
        again = demo.respawn("first")
        assert again is not first and again.wait(30) != 0
        assert [label for label, _ in demo.processes] == ["first", "running"]  # stop()'s order is kept
        assert demo.process("first") is again
        # the log keeps both incarnations' output
        assert (tmp_path / "first.log").read_text().count("No module named tulle_no_such_module") == 2
    finally:
        demo.stop()
