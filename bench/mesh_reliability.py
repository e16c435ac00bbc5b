#!/usr/bin/env python3
"""Reliability runs through the demo mesh (``tulle demo``'s bookinfo, control plane and sidecars).

``soak``: clients load the product page and call services through a sidecar's forward proxy
without pause while the routing rules for reviews change every few seconds (apply, and now and
then ``tulle delete``) and the control plane is restarted once in the middle. Every failed hop
counts, RSS of every process is sampled; the run fails on any failed request or RSS growth.

``chaos``: the same traffic while, one fault at a time, a seeded random schedule SIGKILLs or
SIGTERMs a sidecar, SIGKILLs an app or SIGKILLs the control plane and restarts it after a
random delay. A failed request passes only when it can be pinned on an instance that was down
(see ``attribute``); the control plane is never an excuse.

Run with the project venv: ``.venv/bin/python bench/mesh_reliability.py soak --minutes 30``,
``... chaos --minutes 10 --seed 1`` (see ``--help`` and bench/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BENCH_DIR, REPO_DIR, cleanup_on_signals, cpu_model_name, process_tree  # noqa: E402

from tulle.samples import mesh_demo  # noqa: E402 - run with the project's venv

SAMPLES = mesh_demo.SAMPLES
RELIABILITY_CONFIGS = BENCH_DIR / "configs" / "mesh_reliability"
FORWARD_PROXY_PORT = 15001  # every sidecar's HTTP_PROXY listener, on its workload IP
STATUS_PORT = 15021  # every sidecar's readiness, on its workload IP
CONTROL_PLANE = "control-plane"
# who calls whom in bookinfo (the app's own calls, each through the caller's sidecar)
CALLS: dict[str, tuple[str, ...]] = {"productpage": ("details", "reviews"), "reviews": ("ratings",)}
ACTIONS = ("sigkill-sidecar", "sigterm-sidecar", "sigkill-app", "sigkill-control-plane")
MIB = 1024
FAILURE_BACKOFF_SECONDS = 0.05  # a client's pause after a failed request


def _progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- what a request is and how it failed


@dataclass(frozen=True)
class Target:
    """One kind of request the clients send: a page load at productpage's sidecar (inbound), or
    a call by name through a sidecar's forward proxy (absolute form, like an app's HTTP_PROXY)."""

    label: str
    service: str  # the service the request is for
    via: str  # the workload whose sidecar the client connects to
    host: str
    port: int
    path: str  # origin form, or absolute form for the forward proxy
    headers: tuple[tuple[str, str], ...] = ()


def mesh_targets(productpage: Any, service_port: int) -> list[Target]:
    """Page loads (also as the user jason, whom reviews-jason-v2.yaml routes to v2) and one direct
    call per other service through productpage's forward proxy, so failures name a service."""
    page = "/productpage?format=json"
    entry = dict(via=productpage.name, host=productpage.ip, port=service_port)
    proxy = dict(via=productpage.name, host=productpage.ip, port=FORWARD_PROXY_PORT)
    return [
        Target("page", "productpage", path=page, headers=(("host", f"productpage:{service_port}"),), **entry),
        Target("page (jason)", "productpage", path=page,
               headers=(("host", f"productpage:{service_port}"), ("end-user", "jason")), **entry),
        Target("reviews (direct)", "reviews", path=f"http://reviews:{service_port}/reviews/0",
               headers=(("host", f"reviews:{service_port}"),), **proxy),
        Target("details (direct)", "details", path=f"http://details:{service_port}/details/0",
               headers=(("host", f"details:{service_port}"),), **proxy),
        Target("ratings (direct)", "ratings", path=f"http://ratings:{service_port}/ratings/0",
               headers=(("host", f"ratings:{service_port}"),), **proxy),
    ]


@dataclass(frozen=True)
class FailedHop:
    """One call that failed: ``via``'s sidecar carried it to ``service`` (the client's own call
    enters at the target's ``via``)."""

    via: str
    service: str
    reason: str
    timeout: bool = False


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _snippet(raw: bytes, limit: int = 160) -> str:
    text = raw.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:limit] + ("..." if len(text) > limit else "")


def judge(target: Target, status: int, raw: bytes, error: str = "", timed_out: bool = False) -> list[FailedHop]:
    """Every failed hop of one answer; none means the request and all its hops succeeded.

    productpage answers 200 even when details or reviews failed (it lists them in ``errors``),
    and reviews v2/v3 answer 200 with a rating error when ratings failed: both count."""
    if status == 0:
        return [FailedHop(target.via, target.service, error or "no answer", timed_out)]
    body = _json_object(raw)
    if status != 200 or body is None:
        return [FailedHop(target.via, target.service, f"HTTP {status}: {_snippet(raw)}")]
    served_by = str(body.get("served_by") or target.via)
    hops: list[FailedHop] = []
    reviews: Any = None
    reviews_workload = ""
    if target.service == "productpage":
        for service, reason in sorted((body.get("errors") or {}).items()):
            hops.append(FailedHop(served_by, str(service), str(reason), "timed out" in str(reason)))
        if not hops and (body.get("details") is None or body.get("reviews") is None):
            hops.append(FailedHop(target.via, "productpage", f"page without details or reviews: {_snippet(raw)}"))
        reviews = body.get("reviews")
        version = (body.get("versions") or {}).get("reviews")
        reviews_workload = f"reviews-{version}" if version else ""
    elif target.service == "reviews":
        reviews, reviews_workload = body.get("reviews"), served_by
    elif target.service == "ratings" and not isinstance(body.get("ratings"), dict):
        hops.append(FailedHop(target.via, "ratings", f"no ratings in the answer: {_snippet(raw)}"))
    for entry in reviews if isinstance(reviews, list) else ():
        rating = entry.get("rating") if isinstance(entry, dict) else None
        if isinstance(rating, dict) and "error" in rating:
            hops.append(FailedHop(reviews_workload or "reviews", "ratings", str(rating["error"])))
            break
    return hops


def downstream(service: str) -> set[str]:
    """The services ``service`` calls, directly or not."""
    found: set[str] = set()
    pending = list(CALLS.get(service, ()))
    while pending:
        callee = pending.pop()
        if callee not in found:
            found.add(callee)
            pending.extend(CALLS.get(callee, ()))
    return found


def suspects(hop: FailedHop, instances: Mapping[str, Sequence[str]]) -> set[str]:
    """The instances a failed hop may be blamed on: the sidecar that carried it, and the sidecar
    and app of every instance of the called service (which one was picked is not known when the
    call failed); for a timeout, also everything the called service calls in turn."""
    components = {f"sidecar:{hop.via}"}
    for service in {hop.service} | (downstream(hop.service) if hop.timeout else set()):
        for workload in instances.get(service, ()):
            components |= {f"sidecar:{workload}", f"app:{workload}"}
    return components


@dataclass
class Outage:
    """One deliberate fault: ``component`` ("sidecar:<workload>", "app:<workload>" or
    "control-plane") was down from ``started`` (the signal) until ``recovered`` (it answered
    again: sidecar ready, app port open, control plane healthy)."""

    component: str
    action: str
    started: float
    recovered: float | None = None
    detail: str = ""


@dataclass
class Failure:
    started: float  # seconds since the run's start
    ended: float
    target: str
    request_id: str
    status: int
    hops: list[FailedHop]
    phase: str
    config: str
    attributed_to: str = ""  # "<action> <component> at +<t>s" when a killed instance explains it
    when: str = ""  # relative to that outage: "in flight" at the signal, "down", or "settling" after it was back


def attribute(failure: Failure, outages: Sequence[Outage], instances: Mapping[str, Sequence[str]],
              settle: float, lead: float = 0.5) -> Outage | None:
    """The outage that explains a failed request, or None (an unexplained failure).

    A failure is "to a killed instance" when one of its hops' suspects (``suspects``) is the
    component of an outage whose window overlaps the request: the window opens ``lead`` seconds
    before the signal (clock granularity) and closes ``settle`` seconds after the component
    answered again (the time the mesh needs to learn it is back: its endpoint pushed again,
    pooled connections to the dead process discarded). The control plane is never a suspect:
    no request may fail because it is down."""
    blamed: set[str] = set()
    for hop in failure.hops:
        blamed |= suspects(hop, instances)
    for outage in outages:
        if outage.component not in blamed:
            continue
        closes = float("inf") if outage.recovered is None else outage.recovered + settle
        if outage.started - lead <= failure.ended and failure.started <= closes:
            return outage
    return None


def when_in(failure: Failure, outage: Outage) -> str:
    """Where a failure falls in its outage: sent before the signal ("in flight": a graceful stop
    should let it finish), while the component was down, or after it answered again."""
    if failure.started < outage.started:
        return "in flight"
    if outage.recovered is None or failure.started <= outage.recovered:
        return "down"
    return "settling"


# ---------------------------------------------------------------- RSS


@dataclass
class RssSummary:
    process: str
    pid: int
    samples: int  # after warm-up
    start_mib: float | None = None
    middle_mib: float | None = None
    end_mib: float | None = None
    growth_mib: float | None = None
    growth_percent: float | None = None
    slope_mib_per_hour: float | None = None
    verdict: str = "too short"  # "flat", "grew", "too short" (fewer than MIN_RSS_SAMPLES after warm-up)


MIN_RSS_SAMPLES = 4


def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of (t, value)."""
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    return 0.0 if spread == 0 else sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def summarize_rss(process: str, pid: int, samples: Sequence[tuple[float, int]], warmup: float,
                  max_growth_mib: float, max_growth_percent: float) -> RssSummary:
    """RSS of one process (KiB samples at seconds since the run's start) after ``warmup`` seconds
    of its life: start and end are medians of the first and last three samples (one GC spike
    moves neither), growth is end - start; "grew" when growth exceeds ``max_growth_mib`` or
    ``max_growth_percent`` of start (a limit of 0 is off)."""
    ordered = sorted(samples)
    if not ordered:
        return RssSummary(process, pid, 0)
    kept = [(t, kib / MIB) for t, kib in ordered if t >= ordered[0][0] + warmup]
    summary = RssSummary(process, pid, len(kept))
    if len(kept) < MIN_RSS_SAMPLES:
        return summary
    start = statistics.median(v for _, v in kept[:3])
    end = statistics.median(v for _, v in kept[-3:])
    midpoint = (kept[0][0] + kept[-1][0]) / 2
    middle = min(kept, key=lambda point: abs(point[0] - midpoint))[1]
    growth = end - start
    percent = 100 * growth / start if start > 0 else 0.0
    grew = (max_growth_mib > 0 and growth > max_growth_mib) or (max_growth_percent > 0 and percent > max_growth_percent)
    summary.start_mib, summary.middle_mib, summary.end_mib = round(start, 1), round(middle, 1), round(end, 1)
    summary.growth_mib, summary.growth_percent = round(growth, 1), round(percent, 1)
    summary.slope_mib_per_hour = round(_slope(kept) * 3600, 2)
    summary.verdict = "grew" if grew else "flat"
    return summary


# ---------------------------------------------------------------- schedules


@dataclass(frozen=True)
class ConfigStep:
    label: str
    apply: Path | None = None
    delete: tuple[str, str] | None = None  # (kind, name) for `tulle delete`


# Each step is safe after the one before it (make before break): subsets are deleted only when
# no VirtualService refers to them, and a VirtualService naming subsets arrives with them.
# Make before break, as Istio tells its users: subsets are defined a step before a route uses
# them, and routes stop using them a step before they go (reviews-subsets.yaml says why).
CONFIG_CYCLE = (
    ConfigStep("subsets", apply=RELIABILITY_CONFIGS / "reviews-subsets.yaml"),
    ConfigStep("canary 80/10/10", apply=SAMPLES / "reviews-canary.yaml"),
    ConfigStep("all to v3", apply=SAMPLES / "reviews-v3.yaml"),
    ConfigStep("jason to v2", apply=SAMPLES / "reviews-jason-v2.yaml"),
    ConfigStep("DR traffic policy", apply=RELIABILITY_CONFIGS / "reviews-dr-policy.yaml"),
    ConfigStep("delete VS (round robin)", delete=("virtualservice", "reviews")),
    ConfigStep("delete DR", delete=("destinationrule", "reviews")),
)

ROUND_ROBIN = CONFIG_CYCLE[5]


@dataclass(frozen=True)
class ChaosStep:
    wait: float  # seconds of quiet (mesh whole) before the fault
    action: str
    target: str  # a workload name, or "control-plane"
    down_for: float  # seconds between the signal and the restart


def chaos_plan(seed: int, workloads: Sequence[str], gap: tuple[float, float] = (3.0, 10.0),
               down: tuple[float, float] = (1.0, 8.0), actions: Sequence[str] = ACTIONS) -> Iterator[ChaosStep]:
    """An endless, seeded schedule: the same seed gives the same faults in the same order."""
    rng = random.Random(seed)
    while True:
        action = rng.choice(list(actions))
        target = CONTROL_PLANE if action == "sigkill-control-plane" else rng.choice(list(workloads))
        yield ChaosStep(round(rng.uniform(*gap), 2), action, target, round(rng.uniform(*down), 2))


def outage_component(step: ChaosStep) -> str:
    if step.action == "sigkill-control-plane":
        return CONTROL_PLANE
    return f"{'app' if step.action == 'sigkill-app' else 'sidecar'}:{step.target}"


# ---------------------------------------------------------------- traffic


class Recorder:
    """What the clients saw, under one lock (clients are threads)."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.lock = threading.Lock()
        self.ok: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.failures: list[Failure] = []
        self.versions: Counter[tuple[str, str, str]] = Counter()  # (config, target, reviews version)
        self.per_10s: dict[int, list[int]] = {}  # bucket -> [ok, failed]
        self.phase = "start"
        self.config = CONFIG_CYCLE[1].label

    def record(self, target: Target, started: float, ended: float, request_id: str, status: int,
               hops: list[FailedHop], reviews_version: str) -> None:
        bucket = int((ended - self.t0) // 10)
        with self.lock:
            counts = self.per_10s.setdefault(bucket, [0, 0])
            if hops:
                self.failed[target.label] += 1
                counts[1] += 1
                self.failures.append(Failure(round(started - self.t0, 3), round(ended - self.t0, 3), target.label,
                                             request_id, status, hops, self.phase, self.config))
            else:
                self.ok[target.label] += 1
                counts[0] += 1
                if reviews_version:
                    self.versions[(self.config, target.label, reviews_version)] += 1


class Client(threading.Thread):
    """Sends the targets in turn until stopped; keep-alive connections unless ``fresh``."""

    def __init__(self, index: int, targets: Sequence[Target], recorder: Recorder, stop: threading.Event,
                 timeout: float, fresh: bool) -> None:
        super().__init__(name=f"client-{index}", daemon=True)
        self.index = index
        self.targets = targets
        self.recorder = recorder
        self.stop = stop
        self.timeout = timeout
        self.fresh = fresh
        self.connections: dict[tuple[str, int], http.client.HTTPConnection] = {}

    def run(self) -> None:
        sent = 0
        while not self.stop.is_set():
            target = self.targets[(self.index + sent) % len(self.targets)]
            sent += 1
            request_id = f"reliability-{self.index}-{sent}"
            started = time.monotonic()
            status, raw, error, timed_out = self.call(target, request_id)
            ended = time.monotonic()
            hops = judge(target, status, raw, error, timed_out)
            version = ""
            if not hops and target.service in ("productpage", "reviews"):
                body = _json_object(raw) or {}
                version = str((body.get("versions") or {}).get("reviews") or "")
            self.recorder.record(target, started, ended, request_id, status, hops, version)
            if hops:  # as a real client would; a refused connection fails in microseconds
                self.stop.wait(FAILURE_BACKOFF_SECONDS)
        for connection in self.connections.values():
            connection.close()

    def call(self, target: Target, request_id: str) -> tuple[int, bytes, str, bool]:
        key = (target.host, target.port)
        connection = self.connections.get(key)
        if connection is None:
            connection = self.connections[key] = http.client.HTTPConnection(target.host, target.port,
                                                                            timeout=self.timeout)
        reused = connection.sock is not None
        try:
            connection.request("GET", target.path, headers={"x-request-id": request_id, **dict(target.headers)})
            response = connection.getresponse()
            raw = response.read()
            if self.fresh or response.will_close:
                connection.close()
            return response.status, raw, "", False
        except TimeoutError:
            connection.close()
            return 0, b"", f"no answer within {self.timeout:g}s", True
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            where = " on a reused keep-alive connection" if reused else ""
            return 0, b"", f"{type(exc).__name__}{where}: {exc}", False


# ---------------------------------------------------------------- the mesh


def _direct_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers(url: str, timeout: float = 2.0) -> bool:
    try:
        with _direct_opener().open(url, timeout=timeout) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):
        return False


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _gone(pid: int) -> bool:
    """Exited (or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class Mesh:
    """The demo mesh plus what a reliability run does to it: kill, restart, check whole."""

    def __init__(self, workdir: Path, delta: bool) -> None:
        self.demo = mesh_demo.Demo(workdir, delta)
        # addresses come from the demo, which picks free ones in start(), never from here
        self.workloads: list[Any] = []
        self.service_port = mesh_demo.SERVICE_PORT
        self.lock = threading.Lock()  # one deliberate change to the processes at a time
        self.expected_down: set[str] = set()  # process labels the run stopped on purpose

    @property
    def instances(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for workload in self.workloads:
            out.setdefault(workload.service, []).append(workload.name)
        return out

    def workload(self, name: str) -> Any:
        return next(w for w in self.workloads if w.name == name)

    def start(self) -> None:
        with contextlib.redirect_stdout(sys.stderr):  # the demo's progress lines; stdout is the report
            self.demo.choose_ports()  # free ports and a free loopback block, beside any other mesh
            self.workloads = list(self.demo.workloads)
            self.demo.start_control_plane()
            self.demo.register_services()
            self.demo.start_workloads()
            self.demo.apply(CONFIG_CYCLE[0].apply)  # type: ignore[arg-type]
            self.demo.apply(CONFIG_CYCLE[1].apply)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.demo.stop()

    # --- the API, with the mesh's token --------------------------------------------------------------
    def api_get(self, path: str) -> dict[str, Any]:
        token = Path(self.demo.token_file).read_text().strip()
        request = urllib.request.Request(self.demo.cp_url + path, headers={"authorization": f"Bearer {token}"})
        with _direct_opener().open(request, timeout=3) as response:
            return json.loads(response.read() or b"{}")

    def apply_step(self, step: ConfigStep) -> str:
        """Apply or delete one config step; "" or what went wrong."""
        try:
            if step.apply is not None:
                with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):  # its "applied ..." lines
                    self.demo.apply(step.apply)
                return ""
            assert step.delete is not None
            kind, name = step.delete
            done = subprocess.run([sys.executable, "-m", "tulle", "delete", kind, name, "--ignore-not-found",
                                   "--control-plane", self.demo.cp_url, "--token-file", str(self.demo.token_file)],
                                  capture_output=True, text=True, timeout=30, env=self.demo.env)
            return "" if done.returncode == 0 else f"tulle delete exited {done.returncode}: {done.stderr.strip()}"
        except urllib.error.HTTPError as error:
            return f"HTTP {error.code}: {_snippet(error.read())}"
        except (OSError, subprocess.TimeoutExpired) as error:
            return f"{type(error).__name__}: {error}"

    # --- health ----------------------------------------------------------------------------
    def control_plane_healthy(self) -> bool:
        return _answers(self.demo.cp_url + "/healthz")

    def sidecar_ready(self, workload: Any) -> bool:
        return _answers(f"http://{workload.ip}:{STATUS_PORT}/healthz/ready")

    def app_up(self, workload: Any) -> bool:
        return _port_open("127.0.0.1", workload.app_port)

    def registered(self) -> set[str]:
        try:
            return {str(item.get("name")) for item in self.api_get("/apis/v1/instances").get("items", [])}
        except (OSError, ValueError, http.client.HTTPException):
            return set()

    def connected(self) -> set[str]:
        """Workload names of the proxies with an xDS stream (node id ``sidecar~ip~<name>.<ns>~...``)."""
        try:
            proxies = self.api_get("/debug/proxies").get("proxies", [])
        except (OSError, ValueError, http.client.HTTPException):
            return set()
        return {str(p.get("id", "")).split("~")[2].split(".")[0] for p in proxies if str(p.get("id", "")).count("~") >= 3}

    def whole(self) -> str:
        """"" when every process runs, every sidecar is ready and registered, every proxy is
        connected to the control plane; else what is missing."""
        for label, process in self.demo.processes:
            if process.poll() is not None:
                return f"{label} is not running"
        if not self.control_plane_healthy():
            return "the control plane does not answer"
        for workload in self.workloads:
            if not self.sidecar_ready(workload):
                return f"{workload.name}'s sidecar is not ready"
            if not self.app_up(workload):
                return f"{workload.name}'s app does not accept connections"
        missing = {w.name for w in self.workloads} - self.registered()
        if missing:
            return f"not registered: {', '.join(sorted(missing))}"
        missing = {w.name for w in self.workloads} - self.connected()
        if missing:
            return f"no xDS stream from: {', '.join(sorted(missing))}"
        return ""

    def wait_whole(self, timeout: float, stop: threading.Event | None = None) -> str:
        deadline = time.monotonic() + timeout
        problem = self.whole()
        while problem and time.monotonic() < deadline and not (stop and stop.is_set()):
            time.sleep(0.25)
            problem = self.whole()
        return problem

    # --- faults ------------------------------------------------------------------------------
    def _label(self, component: str) -> str:
        if component == CONTROL_PLANE:
            return CONTROL_PLANE
        kind, _, name = component.partition(":")
        return f"{kind}-{name}"

    def kill(self, component: str, signum: int) -> None:
        """Signal a component: a sidecar is its agent and its proxy (SIGKILL hits both, as when
        the container dies; SIGTERM goes to the agent, which deregisters, drains and stops the
        proxy); an app or the control plane is its one process. Returns once all are gone."""
        label = self._label(component)
        with self.lock:
            self.expected_down.add(label)
            process = self.demo.process(label)
            pids = process_tree(process.pid) if signum == signal.SIGKILL else [process.pid]
            everything = process_tree(process.pid)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signum)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            for pid in process_tree(process.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait(timeout=10)
        deadline = time.monotonic() + 15
        while not all(_gone(pid) for pid in everything) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self, component: str, timeout: float = 60.0) -> str:
        """Start a killed component again and wait until it answers; "" or what went wrong."""
        label = self._label(component)
        with self.lock:
            self.demo.respawn(label)
        deadline = time.monotonic() + timeout
        if component == CONTROL_PLANE:
            check = self.control_plane_healthy
        else:
            kind, _, name = component.partition(":")
            workload = self.workload(name)
            check = (lambda: self.sidecar_ready(workload)) if kind == "sidecar" else (lambda: self.app_up(workload))
        while not check():
            if self.demo.process(label).poll() is not None:
                return f"{label} exited with {self.demo.process(label).returncode} after its restart"
            if time.monotonic() > deadline:
                return f"{label} did not answer within {timeout:g}s of its restart"
            time.sleep(0.1)
        with self.lock:
            self.expected_down.discard(label)
        return ""

    # --- RSS ---------------------------------------------------------------------------------
    def rss_sample(self) -> list[tuple[str, int, int]]:
        """(process, pid, VmRSS KiB) of every process of the mesh; a sidecar's child is its proxy."""
        out = []
        for label, process in list(self.demo.processes):
            if process.poll() is not None:
                continue
            for pid in process_tree(process.pid):
                name = label if pid == process.pid else f"{label}/proxy" if label.startswith("sidecar-") else f"{label}/child"
                kib = _rss_kib(pid)
                if kib is not None:
                    out.append((name, pid, kib))
        return out


# ---------------------------------------------------------------- a run


@dataclass
class Event:
    t: float
    kind: str  # "config", "control-plane", "fault", "restart", "problem"
    text: str


@dataclass
class RunState:
    args: argparse.Namespace
    mesh: Mesh
    t0: float = field(default_factory=time.monotonic)
    events: list[Event] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what makes the run fail besides requests and RSS
    rss: dict[tuple[str, int], list[tuple[float, int]]] = field(default_factory=dict)
    config_paused: threading.Event = field(default_factory=threading.Event)
    config_lock: threading.Lock = field(default_factory=threading.Lock)  # held while a change is applied
    stop: threading.Event = field(default_factory=threading.Event)
    unexpected_exits: set[int] = field(default_factory=set)
    config_changes: Counter[str] = field(default_factory=Counter)

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def event(self, kind: str, text: str) -> None:
        self.events.append(Event(self.now(), kind, text))
        _progress(f"+{self.now():7.1f}s {kind}: {text}")

    def problem(self, text: str) -> None:
        self.problems.append(text)
        self.event("problem", text)

    @contextlib.contextmanager
    def config_held(self) -> Iterator[None]:
        """No config change while the control plane is down on purpose (and none half-way in)."""
        self.config_paused.set()
        with self.config_lock:
            pass
        try:
            yield
        finally:
            self.config_paused.clear()


def rss_sampler(state: RunState) -> None:
    while not state.stop.wait(state.args.rss_interval):
        t = state.now()
        for name, pid, kib in state.mesh.rss_sample():
            state.rss.setdefault((name, pid), []).append((t, kib))
        with state.mesh.lock:
            for label, process in state.mesh.demo.processes:
                if process.poll() is not None and label not in state.mesh.expected_down \
                        and process.pid not in state.unexpected_exits:
                    state.unexpected_exits.add(process.pid)
                    state.problem(f"{label} (pid {process.pid}) exited on its own with {process.returncode}")


def config_changer(state: RunState, recorder: Recorder) -> None:
    step_index = 2  # the mesh starts on the cycle's first two steps
    while not state.stop.wait(state.args.config_interval):
        step = CONFIG_CYCLE[step_index % len(CONFIG_CYCLE)]
        with state.config_lock:
            if state.config_paused.is_set():
                continue
            problem = state.mesh.apply_step(step)
        if problem:
            state.problem(f"config step {step.label!r} failed: {problem}")
            continue
        step_index += 1
        state.config_changes["delete" if step.delete else "apply"] += 1
        recorder.config = step.label
        state.events.append(Event(state.now(), "config", step.label))


def restart_control_plane(state: RunState, recorder: Recorder) -> None:
    """SIGTERM, start again on the same state directory; measure until the mesh is whole."""
    mesh = state.mesh
    recorder.phase = "control-plane restart"
    with state.config_held():
        state.event("control-plane", "SIGTERM")
        outage = Outage(CONTROL_PLANE, "sigterm-control-plane", state.now())
        state.outages.append(outage)
        mesh.kill(CONTROL_PLANE, signal.SIGTERM)
        state.event("control-plane", "exited; starting it again on the same state directory")
        problem = mesh.restart(CONTROL_PLANE)
        outage.recovered = state.now()
        if problem:
            state.problem(problem)
        state.event("control-plane", f"healthy again after {outage.recovered - outage.started:.1f}s")
    problem = mesh.wait_whole(60, state.stop)
    if problem:
        state.problem(f"the mesh was not whole 60 s after the control-plane restart: {problem}")
    else:
        state.event("control-plane", f"all sidecars registered and proxies reconnected after "
                                     f"{state.now() - outage.started:.1f}s")
    recorder.phase = "after the control-plane restart"


def chaos_monkey(state: RunState, recorder: Recorder, end: float) -> Counter[str]:
    args, mesh = state.args, state.mesh
    plan = chaos_plan(args.seed, [w.name for w in mesh.workloads], (args.gap_min, args.gap_max),
                      (args.down_min, args.down_max))
    done: Counter[str] = Counter()
    signals = {"sigkill-sidecar": signal.SIGKILL, "sigterm-sidecar": signal.SIGTERM, "sigkill-app": signal.SIGKILL,
               "sigkill-control-plane": signal.SIGKILL}
    for step in plan:
        if state.stop.wait(step.wait) or time.monotonic() + step.down_for > end:
            break
        problem = mesh.wait_whole(60, state.stop)
        if problem:
            state.problem(f"the mesh was not whole before the next fault: {problem}")
            break
        if time.monotonic() + step.down_for > end:
            break
        component = outage_component(step)
        outage = Outage(component, step.action, state.now(), detail=f"down for {step.down_for:g}s")
        state.outages.append(outage)
        recorder.phase = f"{step.action} {step.target}"
        state.event("fault", f"{step.action} {step.target} (restart in {step.down_for:g}s)")
        with state.config_held() if component == CONTROL_PLANE else contextlib.nullcontext():
            mesh.kill(component, signals[step.action])
            time.sleep(max(0.0, outage.started + step.down_for - state.now()))
            problem = mesh.restart(component)
            outage.recovered = state.now()
        done[step.action] += 1
        if problem:
            state.problem(problem)
            break
        state.event("restart", f"{component} back after {outage.recovered - outage.started:.1f}s")
        recorder.phase = "quiet"
    return done


def warm_up(targets: Sequence[Target], timeout: float, deadline_seconds: float) -> str:
    """Until every target answered fully twice in a row ("" ), or what still fails: a sidecar is
    ready before every other proxy has its endpoint, and the first apply needs a push too."""
    client = Client(0, targets, Recorder(time.monotonic()), threading.Event(), timeout, fresh=True)
    deadline = time.monotonic() + deadline_seconds
    streak, last = 0, ""
    while streak < 2 * len(targets):
        if time.monotonic() > deadline:
            return last
        target = targets[streak % len(targets)]
        hops = judge(target, *client.call(target, "reliability-warm-up"))
        if hops:
            streak, last = 0, f"{target.label}: {hops[0].reason}"
            time.sleep(0.2)
        else:
            streak += 1
    return ""


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    mesh = Mesh(workdir, args.delta)
    state = RunState(args, mesh)
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    loadavg_start = Path("/proc/loadavg").read_text().split()[:3]
    _progress(f"{args.mode}: starting the demo mesh in {workdir} (load average {' '.join(loadavg_start)})")
    threads: list[threading.Thread] = []
    recorder = Recorder(state.t0)
    chaos_done: Counter[str] = Counter()
    try:
        mesh.start()
        problem = mesh.wait_whole(60)
        if problem:
            raise SystemExit(f"the demo mesh did not come up whole: {problem} (logs in {workdir})")
        if getattr(args, "routing", "canary") == "round-robin":
            problem = mesh.apply_step(ROUND_ROBIN)
            if problem:
                raise SystemExit(f"could not delete reviews' VirtualService: {problem}")
            recorder.config = ROUND_ROBIN.label
        targets = mesh_targets(mesh.workload(mesh.instances["productpage"][0]), mesh.service_port)
        problem = warm_up(targets, args.request_timeout, 60)
        if problem:
            raise SystemExit(f"the demo mesh did not answer every request: {problem} (logs in {workdir})")
        state.t0 = recorder.t0 = time.monotonic()
        state.event("start", f"mesh whole and answering; {args.clients} clients start")
        threads = [Client(i, targets, recorder, state.stop, args.request_timeout, args.fresh_connections)
                   for i in range(args.clients)]
        threads.append(threading.Thread(target=rss_sampler, args=(state,), name="rss", daemon=True))
        if args.config_interval > 0:
            threads.append(threading.Thread(target=config_changer, args=(state, recorder), name="config",
                                            daemon=True))
        for thread in threads:
            thread.start()
        recorder.phase = "first half" if args.mode == "soak" else "quiet"
        end = time.monotonic() + args.minutes * 60
        if args.mode == "soak":
            if not args.no_restart:
                state.stop.wait(args.minutes * 30)
                if not state.stop.is_set():
                    restart_control_plane(state, recorder)
            state.stop.wait(max(0.0, end - time.monotonic()))
        else:
            chaos_done = chaos_monkey(state, recorder, end - args.settle)
            state.stop.wait(max(0.0, end - time.monotonic()))
        problem = mesh.wait_whole(30)
        if problem:
            state.problem(f"the mesh was not whole at the end: {problem}")
    finally:
        state.stop.set()
        for thread in threads:
            thread.join(timeout=args.request_timeout + 5)
        mesh.stop()
    instances = mesh.instances
    for failure in recorder.failures:
        outage = attribute(failure, [o for o in state.outages if o.component != CONTROL_PLANE], instances,
                           args.settle)
        if outage is not None:
            failure.attributed_to = f"{outage.action} {outage.component} at +{outage.started:.1f}s"
            failure.when = when_in(failure, outage)
    summaries = [summarize_rss(name, pid, samples, args.rss_warmup, args.rss_max_growth_mib,
                               args.rss_max_growth_percent)
                 for (name, pid), samples in sorted(state.rss.items())]
    return build_result(args, state, recorder, summaries, chaos_done, started_at, loadavg_start, instances)


# ---------------------------------------------------------------- result and report


def _commit() -> str:
    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=REPO_DIR, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""

    commit = git("rev-parse", "HEAD").strip() or "unknown"
    return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no").strip() else "")


def build_result(args: argparse.Namespace, state: RunState, recorder: Recorder, summaries: list[RssSummary],
                 chaos_done: Counter[str], started_at: str, loadavg_start: list[str],
                 instances: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    failures = [asdict(f) for f in recorder.failures]
    unexplained = [f for f in failures if not f["attributed_to"]]
    per_action: dict[str, dict[str, int]] = {}
    for outage in state.outages:
        entry = per_action.setdefault(outage.action, {"done": 0, "failed_requests": 0, "in flight": 0, "down": 0,
                                                      "settling": 0})
        entry["done"] += 1
    for failure in failures:
        if failure["attributed_to"]:
            entry = per_action[failure["attributed_to"].split()[0]]
            entry["failed_requests"] += 1
            entry[failure["when"]] += 1
    rss_grew = [s.process for s in summaries if s.verdict == "grew"]
    if args.mode == "soak":
        passed = not failures and not rss_grew and not state.problems
    else:
        passed = not unexplained and not state.problems
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    return {
        "benchmark": "mesh_reliability",
        "mode": args.mode,
        "passed": passed,
        "started_at": started_at,
        "seconds": state.now(),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model_name(), "commit": _commit(),
                    "python": sys.version.split()[0], "loadavg_at_start": loadavg_start,
                    "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3]},
        "settings": settings,
        "requests": {"total": sum(recorder.ok.values()) + sum(recorder.failed.values()),
                     "failed": sum(recorder.failed.values()),
                     "per_target": {label: {"ok": recorder.ok[label], "failed": recorder.failed[label]}
                                    for label in sorted(set(recorder.ok) | set(recorder.failed))},
                     "per_10s": [{"t": 10 * b, "ok": v[0], "failed": v[1]} for b, v in sorted(recorder.per_10s.items())]},
        "reviews_versions": [{"config": c, "target": t, "version": v, "count": n}
                             for (c, t, v), n in sorted(recorder.versions.items())],
        "config_changes": dict(state.config_changes),
        "events": [asdict(e) for e in state.events],
        "outages": [asdict(o) for o in state.outages],
        "chaos": {"actions": dict(chaos_done), "per_action": per_action} if args.mode == "chaos" else None,
        # every unexplained failure, and a sample of the explained ones (a killed sidecar fails thousands)
        "failures": _stored_failures(failures),
        "failed_hops": Counter(f"{h['via']} -> {h['service']}: {h['reason']}"
                               for f in failures for h in f["hops"]).most_common(20),
        "failures_per_fault": dict(sorted(Counter(f["attributed_to"] for f in failures
                                                  if f["attributed_to"]).items())),
        "unexplained_failures": len(unexplained),
        "problems": state.problems,
        "rss": [asdict(s) for s in summaries],
        "rss_grew": rss_grew,
        "instances": {k: list(v) for k, v in instances.items()},
    }


MAX_STORED_FAILURES = 1000
MAX_STORED_EXPLAINED_FAILURES = 100


def _stored_failures(failures: list[dict[str, Any]]) -> list[dict[str, Any]]:
    unexplained = [f for f in failures if not f["attributed_to"]][:MAX_STORED_FAILURES]
    explained = [f for f in failures if f["attributed_to"]][:MAX_STORED_EXPLAINED_FAILURES]
    return sorted(unexplained + explained, key=lambda f: f["started"])


def _near(events: Sequence[dict[str, Any]], t: float, window: float = 10.0) -> str:
    before = [e for e in events if e["t"] <= t and t - e["t"] <= window]
    after = [e for e in events if e["t"] > t and e["t"] - t <= window]
    parts = [f"{e['kind']} {e['text']!r} {e['t'] - t:+.1f}s" for e in (before[-1:] + after[:1])]
    return "; ".join(parts) or "no event within 10 s"


def render_report(result: dict[str, Any], max_failures: int = 40) -> str:
    settings, machine, requests = result["settings"], result["machine"], result["requests"]
    lines = [f"# Mesh reliability: {result['mode']}, {result['seconds'] / 60:.1f} min "
             f"({'PASS' if result['passed'] else 'FAIL'})", "",
             f"Machine: {machine['nproc']} CPUs ({machine['cpu_model']}), load average "
             f"{' '.join(machine['loadavg_at_start'])} at start, {' '.join(machine['loadavg_at_end'])} at end; "
             f"commit {machine['commit']}.",
             f"{settings['clients']} clients ({'fresh connections' if settings['fresh_connections'] else 'keep-alive'}), "
             f"{'delta' if settings['delta'] else 'SotW'} xDS.", ""]
    changes = result["config_changes"]
    if settings["config_interval"] > 0:
        lines.append(f"Config changes every {settings['config_interval']:g} s: {changes.get('apply', 0)} applies, "
                     f"{changes.get('delete', 0)} deletes (tulle delete).")
    lines += ["", f"Requests: {requests['total']}, failed: {requests['failed']}", "",
              "| target | ok | failed |", "|---|---:|---:|"]
    lines += [f"| {label} | {v['ok']} | {v['failed']} |" for label, v in requests["per_target"].items()]
    control = [e for e in result["events"] if e["kind"] in ("control-plane", "fault", "restart", "problem")]
    if control:
        lines += ["", "Events:"] + [f"- +{e['t']:.1f}s {e['kind']}: {e['text']}" for e in control[:200]]
    if result["chaos"] is not None:
        lines += ["", "| action | done | failed requests attributed | in flight at the signal | while down "
                      "| settling after |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {action} | {v['done']} | {v['failed_requests']} | {v['in flight']} | {v['down']} "
                  f"| {v['settling']} |" for action, v in sorted(result["chaos"]["per_action"].items())]
        lines.append(f"\nUnexplained failures: {result['unexplained_failures']}")
    failures = result["failures"]
    if failures:
        shown = failures if result["mode"] == "soak" else [f for f in failures if not f["attributed_to"]]
        total = requests["failed"] if result["mode"] == "soak" else result["unexplained_failures"]
        if shown:
            lines += ["", f"Failed requests{' (unexplained)' if result['mode'] == 'chaos' else ''}"
                          f" ({total}, first {min(len(shown), max_failures)}):"]
        for failure in shown[:max_failures]:
            hops = "; ".join(f"{h['via']} -> {h['service']}: {h['reason']}" for h in failure["hops"])
            lines.append(f"- +{failure['started']:.1f}s {failure['target']} [{failure['request_id']}] "
                         f"phase {failure['phase']!r}, config {failure['config']!r}: {hops} "
                         f"(near: {_near(result['events'], failure['started'])})")
        if result["failures_per_fault"] and result["mode"] == "chaos":
            lines += ["", "Attributed failures per fault:"]
            lines += [f"- {fault}: {n}" for fault, n in result["failures_per_fault"].items()]
    if result["failed_hops"]:
        lines += ["", "Most frequent failed hops:"] + [f"- {n} × {reason}" for reason, n in result["failed_hops"][:10]]
    pages = [v for v in result["reviews_versions"] if v["target"] == "page"]
    if pages and result["mode"] == "soak":
        configs = list(dict.fromkeys(v["config"] for v in pages))
        versions = sorted({v["version"] for v in pages})
        lines += ["", "Page loads per reviews version, by the config step in force when they ended "
                      "(a change reaches the proxies a moment later):", "",
                  "| config | " + " | ".join(versions) + " |", "|---|" + "---:|" * len(versions)]
        count = {(v["config"], v["version"]): v["count"] for v in pages}
        lines += [f"| {c} | " + " | ".join(str(count.get((c, ver), 0)) for ver in versions) + " |" for c in configs]
    lines += ["", "RSS (MiB; start/end: medians of the first/last 3 samples after warm-up):", "",
              "| process | pid | start | middle | end | growth | slope MiB/h | verdict |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    for s in result["rss"]:
        lines.append(f"| {s['process']} | {s['pid']} | {s['start_mib']} | {s['middle_mib']} | {s['end_mib']} "
                     f"| {s['growth_mib']} ({s['growth_percent']} %) | {s['slope_mib_per_hour']} | {s['verdict']} |")
    if result["problems"]:
        lines += ["", "Problems:"] + [f"- {p}" for p in result["problems"]]
    verdict = []
    if result["mode"] == "soak":
        verdict.append(f"{requests['failed']} failed requests")
        verdict.append(f"RSS grew in {', '.join(result['rss_grew'])}" if result["rss_grew"] else "RSS flat")
    else:
        verdict.append(f"{result['unexplained_failures']} unexplained of {requests['failed']} failed requests")
    if result["problems"]:
        verdict.append(f"{len(result['problems'])} problems")
    lines += ["", f"Verdict: {'PASS' if result['passed'] else 'FAIL'} ({', '.join(verdict)})"]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    soak = sub.add_parser("soak", help="traffic + config changes + one control-plane restart; 0 failures, flat RSS")
    chaos = sub.add_parser("chaos", help="traffic while sidecars, apps and the control plane are killed at random")
    for mode, p in (("soak", soak), ("chaos", chaos)):
        p.add_argument("--minutes", type=float, default=30.0 if mode == "soak" else 10.0)
        p.add_argument("--clients", type=int, default=4, help="client threads (default %(default)s)")
        p.add_argument("--config-interval", type=float, default=5.0 if mode == "soak" else 0.0,
                       help="seconds between config changes; 0: none (default %(default)s)")
        p.add_argument("--request-timeout", type=float, default=10.0)
        p.add_argument("--fresh-connections", action="store_true", help="a new connection per request")
        p.add_argument("--delta", action="store_true", help="sidecars use delta xDS")
        p.add_argument("--rss-interval", type=float, default=10.0, help="seconds between RSS samples")
        p.add_argument("--rss-warmup", type=float, default=60.0,
                       help="seconds of each process's life before its RSS baseline (default %(default)s)")
        p.add_argument("--rss-max-growth-mib", type=float, default=10.0)
        p.add_argument("--rss-max-growth-percent", type=float, default=20.0)
        p.add_argument("--settle", type=float, default=3.0,
                       help="seconds after a killed instance is back during which failures are still its own")
        p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
        p.add_argument("--no-save", action="store_true", help="print the report, write no JSON")
        p.add_argument("--keep", action="store_true", help="keep the work directory (logs, state) even on PASS")
    soak.add_argument("--no-restart", action="store_true", help="skip the control-plane restart")
    chaos.add_argument("--seed", type=int, default=1)
    chaos.add_argument("--routing", choices=("canary", "round-robin"), default="canary",
                       help="reviews: the demo's canary (one instance per subset: nothing to fail over to), or "
                            "round-robin over its three instances (reviews' VirtualService deleted), where the "
                            "default retries may route around a dead one")
    chaos.add_argument("--gap-min", type=float, default=3.0, help="seconds of quiet between faults (range)")
    chaos.add_argument("--gap-max", type=float, default=10.0)
    chaos.add_argument("--down-min", type=float, default=1.0, help="seconds a killed component stays down (range)")
    chaos.add_argument("--down-max", type=float, default=8.0)
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.clients < 1:
        parser.error("--minutes must be positive and --clients at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix=f"tulle-reliability-{args.mode}-"))
    result: dict[str, Any] | None = None
    try:
        with cleanup_on_signals():
            result = run(args, workdir)
    finally:
        if result is not None and result["passed"] and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _progress(f"logs and state kept in {workdir}")
    print(render_report(result))
    if not args.no_save:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        path = args.results_dir / f"reliability-{args.mode}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        _progress(f"results: {path.relative_to(REPO_DIR) if path.is_relative_to(REPO_DIR) else path}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
