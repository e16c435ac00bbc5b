"""``tulle demo``: a whole local mesh with one command.

Brings up the control plane (on a state directory), the bookinfo-like sample
application (productpage, details, reviews v1/v2/v3, ratings), a ``tulle
sidecar`` beside every workload (each on its own loopback IP, no iptables),
applies a canary route for reviews, drives traffic and shows what happened:
which versions served how much, per-service request rates and errors from the
sidecars' own stats, and how to try the next rule. Ctrl-C cleans up;
``--duration SECONDS`` runs unattended, prints the summary and exits 0.
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

from tulle.controlplane.api_token import token_path

SAMPLES = Path(__file__).with_name("bookinfo")
CANARY_FILE = SAMPLES / "reviews-canary.yaml"
NEXT_RULES = [
    ("all traffic to reviews v3", SAMPLES / "reviews-v3.yaml"),
    ("jason sees v2, everyone else v1", SAMPLES / "reviews-jason-v2.yaml"),
]
SERVICE_PORT = 9080


@dataclass(frozen=True)
class Workload:
    service: str
    version: str
    ip: str
    app_port: int

    @property
    def name(self) -> str:
        return f"{self.service}-{self.version}"


WORKLOADS = [
    Workload("productpage", "v1", "127.0.10.1", 19081),
    Workload("details", "v1", "127.0.10.2", 19082),
    Workload("reviews", "v1", "127.0.10.3", 19083),
    Workload("reviews", "v2", "127.0.10.4", 19084),
    Workload("reviews", "v3", "127.0.10.5", 19085),
    Workload("ratings", "v1", "127.0.10.6", 19086),
]


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
        self.cp_url = "http://127.0.0.1:15014"
        self.token_file = token_path(workdir / "state")  # made by its own control plane at start
        self.env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy")}

    # --- processes -----------------------------------------------------------------------------
    def _spawn(self, label: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self._commands[label] = (args, env)
        # appended: a process started again (respawn) keeps its earlier incarnation's log
        log = open(self.workdir / f"{label}.log", "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT,
                                   env=env or self.env, start_new_session=True)
        self.processes.append((label, process))

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
        # sidecars first (they deregister and drain), then apps, then the control plane
        for _label, process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for _label, process in self.processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()

    # --- steps ---------------------------------------------------------------------------------
    def start_control_plane(self) -> None:
        print("starting the control plane (xDS 127.0.0.1:15010, API 127.0.0.1:15014) ...")
        self._spawn("control-plane", ["tulle", "control-plane", "--state-dir", str(self.workdir / "state"),
                                      "--log-level", "warning"])
        self._wait("the control plane", lambda: _ready(self.cp_url + "/healthz"))

    def _api(self, path: str, body: bytes, content_type: str) -> dict:
        """A call to this demo's own control plane, with the token from its state directory."""
        token = Path(self.token_file).read_text().strip()
        request = urllib.request.Request(self.cp_url + path, data=body, method="POST",
                                         headers={"content-type": content_type, "authorization": f"Bearer {token}"})
        with _direct_opener().open(request, timeout=5) as response:
            return json.loads(response.read() or b"{}")

    def register_services(self) -> None:
        for service in sorted({w.service for w in WORKLOADS}):
            body = json.dumps({"name": service, "namespace": "default",
                               "ports": [{"name": "http", "port": SERVICE_PORT}]}).encode()
            self._api("/apis/v1/services", body, "application/json")

    def start_workloads(self) -> None:
        print("starting bookinfo: productpage, details, reviews v1/v2/v3, ratings, each with a tulle sidecar ...")
        for workload in WORKLOADS:
            env = dict(self.env, HTTP_PROXY=f"http://{workload.ip}:15001", http_proxy=f"http://{workload.ip}:15001")
            self._spawn(f"app-{workload.name}", ["tulle.samples.bookinfo.app", workload.service, "--version",
                                                 workload.version, "--port", str(workload.app_port)], env)
            sidecar = ["tulle", "sidecar", "--name", workload.name, "--ip", workload.ip,
                       "--label", f"app={workload.service}", "--label", f"version={workload.version}",
                       "--service-account", f"bookinfo-{workload.service}",
                       "--app-port", f"{SERVICE_PORT}={workload.app_port}", "--service", workload.service,
                       "--control-plane", self.cp_url, "--token-file", self.token_file,
                       "--xds-address", "127.0.0.1:15010", "--ttl", "15",
                       "--drain-duration", "1"]
            if self.delta:
                sidecar.append("--delta")
            self._spawn(f"sidecar-{workload.name}", sidecar)
        for workload in WORKLOADS:
            self._wait(f"{workload.name}'s sidecar", lambda w=workload: _ready(f"http://{w.ip}:15021/healthz/ready"))

    def apply(self, path: Path) -> None:
        result = self._api("/apis/v1/resources", path.read_bytes(), "application/yaml")
        for ref in result.get("created", []) + result.get("updated", []):
            print(f"  applied {ref}")

    def drive(self, seconds: float) -> tuple[Counter, Counter, int]:
        """Users load the product page through productpage's sidecar (its inbound listener)."""
        productpage = WORKLOADS[0]
        url = f"http://{productpage.ip}:{SERVICE_PORT}/productpage?format=json"
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
        for workload in WORKLOADS:
            status, body = _get_json(f"http://{workload.ip}:15000/stats?format=json")
            values = {s["name"]: s.get("value", 0) for s in body.get("stats", []) if "value" in s}
            prefix = f"http.inbound_{workload.ip}_{SERVICE_PORT}."
            out[workload.name] = {
                "requests": values.get(prefix + "downstream_rq_total", 0),
                "2xx": values.get(prefix + "downstream_rq_2xx", 0),
                "5xx": values.get(prefix + "downstream_rq_5xx", 0),
            }
        return out


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
    workdir = Path(tempfile.mkdtemp(prefix="tulle-demo-"))
    demo = Demo(workdir, delta)
    started = time.monotonic()
    try:
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
        print(f"  export TULLE_TOKEN_FILE={demo.token_file}     # this mesh's API token")
        for what, path in NEXT_RULES:
            print(f"  .venv/bin/tulle apply -f {path}     # {what}")
        print(f"  curl -s 'http://{WORKLOADS[0].ip}:{SERVICE_PORT}/productpage?format=json'")
        print("  .venv/bin/tulle proxy-status ; .venv/bin/tulle get vs")
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
    finally:
        demo.stop()
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
