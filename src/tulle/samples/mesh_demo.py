"""``tulle demo``: a whole local mesh with one command.

Brings up the control plane (on a state directory), the bookinfo-like sample
application (productpage, details, reviews v1/v2/v3, ratings), a ``tulle
sidecar`` beside every workload (each on its own loopback IP, no iptables),
applies a canary route for reviews, drives traffic and shows what happened:
which versions served how much, per-service request rates and errors from the
sidecars' own stats, and how to try the next rule. Ctrl-C, SIGTERM and SIGHUP
stop every process it started; ``--duration SECONDS`` runs unattended, prints
the summary and exits 0.

A demo never touches another mesh: it has its own control plane, state
directory and API, takes Istio's ports (xDS 15010, API 15014) only when they
are free, and puts its workloads on the first loopback block (127.0.10.x,
127.0.11.x, ...) where nothing listens on a sidecar's ports.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tulle.controlplane.api_token import find_client_token, token_path
from tulle.controlplane.cli import CommandError, ControlPlaneClient, load_inputs, resource_json
from tulle.listener.claim import address_text, claim, unavailable
from tulle.sidecar.agent import STATUS_PORT, die_with_parent
from tulle.sidecar.bootstrap import ADMIN_PORT

SAMPLES = Path(__file__).with_name("bookinfo")
CANARY_FILE = SAMPLES / "reviews-canary.yaml"
NEXT_RULES = [
    ("all traffic to reviews v3", SAMPLES / "reviews-v3.yaml"),
    ("jason sees v2, everyone else v1", SAMPLES / "reviews-jason-v2.yaml"),
]
SERVICE_PORT = 9080
LOCALHOST = "127.0.0.1"
XDS_PORT, API_PORT = 15010, 15014  # Istio's, and `tulle control-plane`'s defaults
FORWARD_PROXY_PORT = 15001
# What each sidecar listens on, on its workload's IP.
SIDECAR_PORTS = {
    SERVICE_PORT: "inbound port", FORWARD_PROXY_PORT: "outbound (HTTP_PROXY) port",
    ADMIN_PORT: "proxy admin port", STATUS_PORT: "readiness port",
}
FIRST_BLOCK = 10  # 127.0.10.x
BLOCKS_TRIED = 40
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class Workload:
    service: str
    version: str
    ip: str
    app_port: int

    @property
    def name(self) -> str:
        return f"{self.service}-{self.version}"


SERVICES = [("productpage", "v1"), ("details", "v1"), ("reviews", "v1"), ("reviews", "v2"), ("reviews", "v3"),
            ("ratings", "v1")]


def workload_ips(block: int) -> list[str]:
    return [f"127.0.{block}.{index}" for index in range(1, len(SERVICES) + 1)]


def first_taken(block: int) -> tuple[str, str] | None:
    """(address and what needs it, why) of the first sidecar port taken in this block, or None."""
    for (service, version), ip in zip(SERVICES, workload_ips(block), strict=True):
        for port, what in SIDECAR_PORTS.items():
            reason = unavailable(ip, port)
            if reason is not None:
                return f"{address_text(ip, port)} ({service}-{version}'s {what})", reason
    return None


def choose_block() -> tuple[int, tuple[str, str] | None]:
    """The first loopback block free for every sidecar, and what made the default one unusable."""
    default_taken = None
    for block in range(FIRST_BLOCK, FIRST_BLOCK + BLOCKS_TRIED):
        taken = first_taken(block)
        if taken is None:
            return block, default_taken
        default_taken = default_taken or taken
    where, reason = default_taken or ("?", "?")
    raise SystemExit(f"tulle demo: error: no loopback block from 127.0.{FIRST_BLOCK}.x to "
                    f"127.0.{FIRST_BLOCK + BLOCKS_TRIED - 1}.x is free for the sidecars: {where}: {reason} "
                    "(something listens on those ports on every address?)")


def free_port() -> int:
    """A port nobody listens on now, for an app (its sidecar is told which)."""
    with claim(LOCALHOST, 0) as sock:
        return int(sock.getsockname()[1])


def _read_json(path: Path) -> Any:
    """The file's JSON, or None while it is missing or still being written."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _direct_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get_json(url: str, timeout: float = 5) -> tuple[int, dict]:
    try:
        with _direct_opener().open(url, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        try:
            return err.code, json.loads(err.read() or b"{}")
        except ValueError:
            return err.code, {}


def _ready(url: str) -> bool:
    try:
        with _direct_opener().open(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class Demo:
    def __init__(self, workdir: Path, delta: bool) -> None:
        self.workdir = workdir
        self.delta = delta
        self.processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._commands: dict[str, tuple[list[str], dict[str, str] | None]] = {}  # label -> how it started
        self.token_file = token_path(workdir / "state")  # made by its own control plane at start
        self.env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}
        self.xds_port, self.api_port = XDS_PORT, API_PORT
        self.workloads: list[Workload] = []
        self._spawning = False
        self._stop_signal: int | None = None

    @property
    def cp_url(self) -> str:
        return f"http://{LOCALHOST}:{self.api_port}"

    # --- signals -------------------------------------------------------------------------------
    def handle_stop_signals(self) -> None:
        """Ctrl-C, SIGTERM and SIGHUP all end in stop(): every process the demo started goes with it."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_stop_signal)

    def _on_stop_signal(self, signum: int, _frame: Any) -> None:
        if self._spawning:  # let the process being started be recorded first, or stop() misses it
            self._stop_signal = signum
            return
        raise KeyboardInterrupt

    # --- processes -----------------------------------------------------------------------------
    def _spawn(self, label: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self._commands[label] = (args, env)
        # appended: a process started again (respawn) keeps its earlier incarnation's log
        log = open(self.workdir / f"{label}.log", "ab")  # noqa: SIM115 - closed with the process
        self._spawning = True
        try:
            # Its own session (a terminal's Ctrl-C reaches the demo only, which stops the mesh in
            # order); SIGTERM when the demo dies, should it be killed without a chance to clean up.
            process = subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT,
                                       env=env or self.env, start_new_session=True, preexec_fn=die_with_parent)
            self.processes.append((label, process))
        finally:
            self._spawning = False
        if self._stop_signal is not None:
            raise KeyboardInterrupt

    def process(self, label: str) -> subprocess.Popen[bytes]:
        """The running (or last) process of ``label`` ("control-plane", "app-<workload>", "sidecar-<workload>")."""
        return next(process for name, process in self.processes if name == label)

    def respawn(self, label: str) -> subprocess.Popen[bytes]:
        """Start ``label`` again exactly as it first started, after it exited or was killed
        (bench/mesh_reliability.py restarts the control plane, sidecars and apps this way)."""
        index = next(i for i, (name, _) in enumerate(self.processes) if name == label)
        if self.processes[index][1].poll() is None:
            raise RuntimeError(f"{label} is still running (pid {self.processes[index][1].pid})")
        args, env = self._commands[label]
        self._spawn(label, args, env)
        self.processes[index] = self.processes.pop()  # keep the stop order: sidecars, apps, control plane
        return self.processes[index][1]

    def _check_alive(self) -> None:
        for label, process in self.processes:
            if process.poll() is not None:
                tail = (self.workdir / f"{label}.log").read_text(errors="replace")[-1500:]
                raise SystemExit(f"{label} exited with {process.returncode}:\n{tail}")

    def _wait(self, what: str, predicate, timeout: float = 60) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            if predicate():
                return
            time.sleep(0.2)
        raise SystemExit(f"timed out waiting for {what} (logs in {self.workdir})")

    def stop(self) -> None:
        for sig in STOP_SIGNALS:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        # sidecars first (they deregister and drain), then apps, then the control plane
        for _label, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for _label, process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # --- steps ---------------------------------------------------------------------------------
    def choose_ports(self) -> None:
        """Istio's ports when free, else any free ones; a sidecar block nobody listens on."""
        for what, port in (("xDS", XDS_PORT), ("HTTP API", API_PORT)):
            reason = unavailable(LOCALHOST, port)
            if reason is not None:
                print(f"{address_text(LOCALHOST, port)} (a control plane's {what} port) is taken: {reason}; "
                      "this demo's control plane takes a free port")
                if port == XDS_PORT:
                    self.xds_port = 0
                else:
                    self.api_port = 0
        block, default_taken = choose_block()
        if default_taken is not None:
            print(f"{default_taken[0]} is taken: {default_taken[1]}; this demo's workloads use 127.0.{block}.x")
        self.workloads = [Workload(service, version, ip, free_port())
                          for (service, version), ip in zip(SERVICES, workload_ips(block), strict=True)]

    def start_control_plane(self) -> None:
        ready = self.workdir / "control-plane.ready"
        self._spawn("control-plane", self._control_plane_args(ready))
        self._wait("the control plane", lambda: _read_json(ready) is not None)
        ports = _read_json(ready)
        self.xds_port, self.api_port = ports["xds_port"], ports["http_port"]
        # a restart (respawn) must come back on the ports its sidecars know, not on new free ones
        self._commands["control-plane"] = (self._control_plane_args(ready), None)
        print(f"control plane up (xDS {LOCALHOST}:{self.xds_port}, API {self.cp_url})")

    def _control_plane_args(self, ready: Path) -> list[str]:
        return ["tulle", "control-plane", "--state-dir", str(self.workdir / "state"), "--log-level", "warning",
                "--xds-address", f"{LOCALHOST}:{self.xds_port}", "--http-address", f"{LOCALHOST}:{self.api_port}",
                "--ready-file", str(ready)]

    def client(self) -> ControlPlaneClient:
        """This demo's own control plane, with the token from its state directory."""
        return ControlPlaneClient(self.cp_url, token=find_client_token(token_file=self.token_file))

    def register_services(self) -> None:
        for service in sorted({w.service for w in self.workloads}):
            self.client().expect_ok("POST", "/apis/v1/services", body={
                "name": service, "namespace": "default", "ports": [{"name": "http", "port": SERVICE_PORT}]})

    def start_workloads(self) -> None:
        print("starting bookinfo: productpage, details, reviews v1/v2/v3, ratings, each with a tulle sidecar ...")
        for workload in self.workloads:
            proxy = f"http://{workload.ip}:{FORWARD_PROXY_PORT}"
            env = dict(self.env, HTTP_PROXY=proxy, http_proxy=proxy)
            self._spawn(f"app-{workload.name}", ["tulle.samples.bookinfo.app", workload.service, "--version",
                                                 workload.version, "--port", str(workload.app_port)], env)
            sidecar = ["tulle", "sidecar", "--name", workload.name, "--ip", workload.ip,
                       "--label", f"app={workload.service}", "--label", f"version={workload.version}",
                       "--service-account", f"bookinfo-{workload.service}",
                       "--app-port", f"{SERVICE_PORT}={workload.app_port}", "--service", workload.service,
                       "--control-plane", self.cp_url, "--token-file", self.token_file,
                       "--xds-address", f"{LOCALHOST}:{self.xds_port}",
                       "--ttl", "15", "--drain-duration", "1"]
            if self.delta:
                sidecar.append("--delta")
            self._spawn(f"sidecar-{workload.name}", sidecar)
        for workload in self.workloads:
            self._wait(f"{workload.name}'s sidecar",
                       lambda w=workload: _ready(f"http://{w.ip}:{STATUS_PORT}/healthz/ready"))

    def apply(self, path: Path) -> None:
        loaded = load_inputs([str(path)], "default")
        result = self.client().expect_ok("POST", "/apis/v1/resources",
                                         body=[resource_json(resource) for resource in loaded.resources])
        for ref in result.get("created", []) + result.get("updated", []):
            print(f"  applied {ref}")

    def drive(self, seconds: float) -> tuple[Counter, Counter, int]:
        """Users load the product page through productpage's sidecar (its inbound listener)."""
        url = f"http://{self.workloads[0].ip}:{SERVICE_PORT}/productpage?format=json"
        versions: Counter = Counter()
        codes: Counter = Counter()
        total = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            status, body = _get_json(url)
            codes[status] += 1
            total += 1
            reviews = (body.get("versions") or {}).get("reviews")
            versions[f"reviews-{reviews}" if reviews else "reviews unavailable"] += 1
        return versions, codes, total

    def sidecar_stats(self) -> dict[str, dict[str, int]]:
        """Per workload, the inbound requests its own sidecar counted (Envoy stat names)."""
        out = {}
        for workload in self.workloads:
            status, body = _get_json(f"http://{workload.ip}:{ADMIN_PORT}/stats?format=json")
            values = {s["name"]: s.get("value", 0) for s in body.get("stats", []) if "value" in s}
            prefix = f"http.inbound_{workload.ip}_{SERVICE_PORT}."
            out[workload.name] = {
                "requests": values.get(prefix + "downstream_rq_total", 0),
                "2xx": values.get(prefix + "downstream_rq_2xx", 0),
                "5xx": values.get(prefix + "downstream_rq_5xx", 0),
            }
        return out

    def hints(self) -> list[str]:
        """Commands to try on this mesh (the CLI finds a control plane off Istio's port by its URL)."""
        tulle = ".venv/bin/tulle"
        lines = [] if self.api_port == API_PORT else [f"export TULLE_CONTROL_PLANE={self.cp_url}"]
        lines.append(f"export TULLE_TOKEN_FILE={self.token_file}     # this mesh's API token")
        lines += [f"{tulle} apply -f {path}     # {what}" for what, path in NEXT_RULES]
        lines.append(f"curl -s 'http://{self.workloads[0].ip}:{SERVICE_PORT}/productpage?format=json'")
        lines.append(f"{tulle} proxy-status ; {tulle} get vs")
        return lines


def _report(title: str, versions: Counter, codes: Counter, total: int, seconds: float) -> None:
    print(f"\n== {title}: {total} page loads in {seconds:.0f}s ({total / max(seconds, 0.001):.0f}/s)")
    for version, count in sorted(versions.items()):
        bar = "#" * int(40 * count / max(total, 1))
        print(f"  {version:<20} {count:>6}  {100 * count / max(total, 1):5.1f}%  {bar}")
    print("  status codes: " + ", ".join(f"{code}: {n}" for code, n in sorted(codes.items())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tulle demo", description=__doc__)
    parser.add_argument("--duration", type=float, default=0.0,
                        help="run unattended for this many seconds, print the summary and exit 0")
    parser.add_argument("--delta", action="store_true", help="sidecars use delta xDS")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, state) afterwards")
    args = parser.parse_args(argv)
    return run(args.duration, args.delta, args.keep)


def run(duration: float, delta: bool, keep: bool) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens, through a pipe too
    workdir = Path(tempfile.mkdtemp(prefix="tulle-demo-"))
    demo = Demo(workdir, delta)
    demo.handle_stop_signals()
    started = time.monotonic()
    try:
        demo.choose_ports()
        demo.start_control_plane()
        demo.register_services()
        demo.start_workloads()
        print(f"mesh up in {time.monotonic() - started:.1f}s; logs and state in {workdir}")
        print(f"\napplying the canary route ({CANARY_FILE.name}): reviews v1 80%, v2 10%, v3 10%")
        demo.apply(CANARY_FILE)
        time.sleep(1.0)  # one debounced push
        phase = max(3.0, (duration or 30) / 2)  # --duration is split between the canary and the next rule
        versions, codes, total = demo.drive(phase)
        _report("canary", versions, codes, total, phase)
        print("\n== per-service traffic, from each sidecar's own stats (inbound)")
        print(f"  {'workload':<16} {'requests':>9} {'2xx':>7} {'5xx':>6}")
        for name, stats in demo.sidecar_stats().items():
            print(f"  {name:<16} {stats['requests']:>9} {stats['2xx']:>7} {stats['5xx']:>6}")
        print("\nTry the next rule (the mesh keeps running until Ctrl-C):")
        for line in demo.hints():
            print(f"  {line}")
        if duration:
            # unattended: also show the next rule taking effect, then exit
            print(f"\napplying {NEXT_RULES[0][1].name}: {NEXT_RULES[0][0]}")
            demo.apply(NEXT_RULES[0][1])
            time.sleep(1.0)
            versions, codes, total = demo.drive(phase)
            _report(f"after {NEXT_RULES[0][1].name}", versions, codes, total, phase)
            return 0
        print("\nRunning until Ctrl-C ...")
        while True:
            demo._check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping the mesh ...")
        return 0
    except CommandError as error:  # the control plane refused or went away
        raise SystemExit(f"tulle demo: error: {error}") from None
    finally:
        demo.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
