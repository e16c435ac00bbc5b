"""Proxyless gRPC end to end: grpcio's xDS resolver in a client process, configured by the Tulle
control plane from Istio YAML, routing among real gRPC servers (no sidecar anywhere)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from tulle.controlplane.server import ControlPlane

pytestmark = pytest.mark.integration

TARGET = "xds:///reviews.default.svc.cluster.local:9080"
NODE_ID = "sidecar~127.0.0.5~ratings-v1.default~default.svc.cluster.local"
CONVERGE_SECONDS = 30.0  # a deadline only: a loaded machine may take a while to push and apply

# The client: one channel per target for the whole test; each stdin line asks for a batch of
# calls and gets back a JSON count of the versions that answered (or "error:<status>").
CLIENT = r"""
import json, sys
import grpc
calls = {}
for line in sys.stdin:
    batch = json.loads(line)
    target = batch.get("target") or sys.argv[1]
    first = target not in calls
    if target not in calls:
        calls[target] = grpc.insecure_channel(target).unary_unary("/test.Echo/Call")
    counts = {}
    for _ in range(batch["calls"]):
        try:
            answer = calls[target](b"", metadata=[tuple(pair) for pair in batch.get("metadata", [])],
                                   timeout=10 if first else 5, wait_for_ready=first).decode()
        except grpc.RpcError as error:
            answer = "error:" + error.code().name
        first = False
        counts[answer] = counts.get(answer, 0) + 1
    print(json.dumps(counts), flush=True)
"""

SUBSETS = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
"""

ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v3}}]
    retries: %(retries)s
  - match: [{headers: {x-fault: {exact: grpc}}}]
    fault: {abort: {grpcStatus: RESOURCE_EXHAUSTED, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{headers: {x-fault: {exact: http}}}]
    fault: {abort: {httpStatus: 403, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - match: [{headers: {x-fault: {exact: blocked}}}]
    directResponse: {status: 503}
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}
"""

STICKY = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x-user}}}
"""


class Backend:
    """A gRPC server answering /test.Echo/Call with its version; ``flaky`` fails every other call."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.flaky = False
        self.calls = 0
        self._lock = threading.Lock()
        self.server = grpc.server(ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "test.Echo", {"Call": grpc.unary_unary_rpc_method_handler(self._call)})
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _call(self, _request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.calls += 1
            fail = self.flaky and self.calls % 2 == 1
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.version} is flaky")
        return self.version.encode()


class Client:
    """The xDS client process, driven one batch at a time."""

    def __init__(self, bootstrap: Path, log_path: Path) -> None:
        env = {key: value for key, value in os.environ.items()
               if key.lower() not in ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")}
        env["GRPC_XDS_BOOTSTRAP"] = str(bootstrap)
        self._log = log_path.open("w")
        self.process = subprocess.Popen([sys.executable, "-c", CLIENT, TARGET], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._log, text=True, env=env)

    def calls(self, count: int, target: str = "", **metadata: str) -> Counter[str]:
        """``count`` calls to ``target`` (default TARGET); a new channel's first call waits for it."""
        assert self.process.stdin is not None and self.process.stdout is not None
        batch = {"calls": count, "target": target, "metadata": list(metadata.items())}
        self.process.stdin.write(json.dumps(batch) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"client exited: {self.process.poll()}"
        return Counter(json.loads(line))

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


class RunningControlPlane:
    """ControlPlane on its own event loop thread, so the test body stays synchronous."""

    def __init__(self, state_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.control_plane = ControlPlane(str(state_dir), xds_address=("127.0.0.1", 0),
                                          http_address=("127.0.0.1", 0))
        self.xds_port, http_port = self._run(self.control_plane.start())
        self.api = f"http://127.0.0.1:{http_port}"

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = None if body is None else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
        request = urllib.request.Request(self.api + path, data=data, method=method,
                                         headers={"content-type": content_type,
                                                  "authorization": f"Bearer {self.control_plane.api.token}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read() or b"{}")

    def apply(self, yaml_text: str) -> Any:
        return self.call("POST", "/apis/v1/resources", yaml_text, "application/yaml")

    def stop(self) -> None:
        self._run(self.control_plane.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


def converge(probe: Callable[[], bool], what: str) -> None:
    """Wait for a pushed change to reach the client: it applies xDS asynchronously."""
    deadline = time.monotonic() + CONVERGE_SECONDS
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.05)
    raise AssertionError(f"the client never saw {what}")


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[tuple[RunningControlPlane, dict[str, Backend]]]:
    backends = {version: Backend(version) for version in ("v1", "v2", "v3")}
    running = RunningControlPlane(tmp_path / "state")
    try:
        running.call("POST", "/apis/v1/services", {
            "name": "reviews", "namespace": "default", "ports": [{"name": "grpc", "port": 9080}]})
        for version, backend in backends.items():
            running.call("POST", "/apis/v1/instances", {
                "name": f"reviews-{version}", "namespace": "default", "address": "127.0.0.1",
                "ports": {"grpc": backend.port}, "labels": {"app": "reviews", "version": version},
                "services": ["reviews"], "ttlSeconds": 60})
        yield running, backends
    finally:
        running.stop()
        for backend in backends.values():
            backend.server.stop(None)


def write_bootstrap(path: Path, xds_port: int) -> Path:
    path.write_text(json.dumps({
        "xds_servers": [{"server_uri": f"127.0.0.1:{xds_port}", "channel_creds": [{"type": "insecure"}],
                         "server_features": ["xds_v3"]}],
        "node": {"id": NODE_ID, "cluster": "ratings.default",
                 "metadata": {"GENERATOR": "grpc", "NAMESPACE": "default"}},
    }))
    return path


def test_grpc_client_routes_splits_retries_faults_and_hashes_from_istio_config(
    mesh: tuple[RunningControlPlane, dict[str, Backend]], tmp_path: Path
) -> None:
    running, backends = mesh
    client = Client(write_bootstrap(tmp_path / "bootstrap.json", running.xds_port), tmp_path / "client.log")
    try:
        # No VirtualService: Istio's default route, round robin over every instance.
        plain = client.calls(60)
        assert set(plain) == {"v1", "v2", "v3"}, plain
        # The short names a client in the service's namespace may dial reach the same service.
        for short in ("xds:///reviews:9080", "xds:///reviews.default:9080", "xds:///reviews.default.svc:9080"):
            assert set(client.calls(6, short)) <= {"v1", "v2", "v3"}
        status = running.call("GET", "/debug/proxies")
        states = {t: entry["state"] for p in status["proxies"] if p["id"] == NODE_ID for t, entry in p["types"].items()}
        assert states == dict.fromkeys(("Cluster", "ClusterLoadAssignment", "Listener", "RouteConfiguration"),
                                       "SYNCED"), states

        # Subsets, a header match to v3 and an 80/20 split of everything else.
        running.apply(SUBSETS + "---" + ROUTES % {"retries": "{attempts: 0}"})
        converge(lambda: "v3" not in client.calls(20) and set(client.calls(5, **{"end-user": "jason"})) == {"v3"},
                 "the VirtualService")
        split = client.calls(200)
        assert set(split) == {"v1", "v2"} and 130 <= split["v1"] <= 190, split
        assert client.calls(20, **{"end-user": "jason"}) == Counter({"v3": 20})

        # v3 fails every other call: without retries the client sees it ...
        backends["v3"].flaky = True
        flaky = client.calls(20, **{"end-user": "jason"})
        assert flaky["error:UNAVAILABLE"] > 0 and flaky["v3"] > 0, flaky
        # ... and retries on UNAVAILABLE hide it.
        running.apply(ROUTES % {"retries": "{attempts: 3, retryOn: unavailable}"})
        converge(lambda: client.calls(10, **{"end-user": "jason"}) == Counter({"v3": 10}), "the retry policy")
        attempts_before = backends["v3"].calls
        assert client.calls(40, **{"end-user": "jason"}) == Counter({"v3": 40})
        assert backends["v3"].calls - attempts_before >= 79  # every success after a failed attempt

        # Fault injection aborts in the client, before any backend is asked.
        asked_before = {version: backend.calls for version, backend in backends.items()}
        assert client.calls(10, **{"x-fault": "grpc"}) == Counter({"error:RESOURCE_EXHAUSTED": 10})
        assert client.calls(10, **{"x-fault": "http"}) == Counter({"error:PERMISSION_DENIED": 10})
        # A direct response is an action gRPC cannot take: it fails the calls the route matches.
        assert client.calls(5, **{"x-fault": "blocked"}) == Counter({"error:UNAVAILABLE": 5})
        assert {version: backend.calls for version, backend in backends.items()} == asked_before

        # Consistent hashing on a header: one backend per key, keys spread over backends.
        backends["v3"].flaky = False
        running.call("DELETE", "/apis/v1/resources/VirtualService/default/reviews")
        converge(lambda: client.calls(3, **{"x-fault": "grpc"})["error:RESOURCE_EXHAUSTED"] == 0,
                 "the VirtualService deleted")
        running.apply(STICKY)
        # Round robin over three backends never gives one backend twelve calls in a row.
        converge(lambda: len(client.calls(12, **{"x-user": "probe"})) == 1, "the ring hash policy")
        chosen = {}
        for key in (f"user-{n}" for n in range(12)):
            served = client.calls(8, **{"x-user": key})
            assert len(served) == 1 and not next(iter(served)).startswith("error"), (key, served)
            chosen[key] = next(iter(served))
        assert len(set(chosen.values())) > 1, chosen

        # grpcio accepted every version it was sent.
        proxies = running.call("GET", "/debug/proxies")["proxies"]
        nacks = {t: e["nack"] for p in proxies if p["id"] == NODE_ID for t, e in p["types"].items() if "nack" in e}
        assert nacks == {}
    finally:
        client.close()
