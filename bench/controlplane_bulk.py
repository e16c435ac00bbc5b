#!/usr/bin/env python3
"""Control plane under a bulk apply: is it still answering while it takes 10,000 resources?

Generates N ServiceEntries in one file, starts ``tulle control-plane`` on a fresh state directory
(its own process, free ports), registers one instance with a short lease and keeps it alive with
heartbeats from a thread, probes ``GET /healthz`` every 20 ms from another, then runs
``tulle apply --dry-run -f``, ``tulle apply -f`` and ``tulle delete -f`` on the file. For each
phase it prints the wall time, the slowest health probe and heartbeat (how long the control plane
left a request waiting: its event loop's longest stall, seen from outside) and whether the lease
survived. A first phase posts the YAML itself as a dry run (as ``curl --data-binary @file`` would),
so the server parses it rather than the CLI.

``--push`` measures the pushes instead: a proxy (an ADS client here, taking every listener and
cluster and ACKing them) is connected while ``tulle apply -f`` runs, and the next phase lasts until
its clusters arrive (the push translating the new mesh for it); then a proxy of another namespace
connects, and that phase lasts until it has its clusters (its view translated when it connects).

    .venv/bin/python bench/controlplane_bulk.py                 # 10,000 ServiceEntries
    .venv/bin/python bench/controlplane_bulk.py --push          # the pushes of 10,000 ServiceEntries
    .venv/bin/python bench/controlplane_bulk.py --resources 2000 --json out.json
    .venv/bin/python bench/controlplane_bulk.py --generate-only se.yaml
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_DIR = Path(__file__).resolve().parent.parent
PROBE_INTERVAL_SECONDS = 0.02
LEASE_TTL_SECONDS = 6.0  # the sidecar default is 30 s; a short lease shows stalls sooner
HEARTBEAT_INTERVAL_SECONDS = LEASE_TTL_SECONDS / 3
REQUEST_TIMEOUT_SECONDS = 120.0
PUSH_TIMEOUT_SECONDS = 600.0
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"


def service_entries(count: int) -> str:
    """``count`` DNS ServiceEntries, one per host, as one multi-document YAML file."""
    documents = []
    for index in range(count):
        documents.append(
            "apiVersion: networking.istio.io/v1\n"
            "kind: ServiceEntry\n"
            "metadata:\n"
            f"  name: external-{index}\n"
            "  namespace: default\n"
            "spec:\n"
            f"  hosts: [\"svc-{index}.example.com\"]\n"
            "  location: MESH_EXTERNAL\n"
            "  ports: [{number: 80, name: http, protocol: HTTP}]\n"
            "  resolution: DNS\n")
    return "---\n".join(documents)


@dataclass
class Probe:
    """The slowest answer to a request repeated from a thread, per phase."""

    slowest: float = 0.0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, seconds: float, failure: str = "") -> None:
        with self.lock:
            self.slowest = max(self.slowest, seconds)
            if failure:
                self.failures.append(failure)

    def take(self) -> tuple[float, list[str]]:
        with self.lock:
            found = self.slowest, self.failures
            self.slowest, self.failures = 0.0, []
        return found


TOKEN: dict[str, str] = {}  # the API's bearer token, once the control plane is up


def call(port: int, method: str, path: str, body: object = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_SECONDS)
    try:
        if isinstance(body, bytes):
            data, headers = body, {"Content-Type": "application/yaml"}
        else:
            data = None if body is None else json.dumps(body).encode()
            headers = {} if data is None else {"Content-Type": "application/json"}
        if TOKEN:
            headers["Authorization"] = f"Bearer {TOKEN['value']}"
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def probe_health(port: int, probe: Probe, stop: threading.Event) -> None:
    while not stop.wait(PROBE_INTERVAL_SECONDS):
        started = time.perf_counter()
        try:
            status, _ = call(port, "GET", "/healthz")
            probe.record(time.perf_counter() - started, "" if status == 200 else f"healthz {status}")
        except OSError as error:
            probe.record(time.perf_counter() - started, f"healthz: {error}")


WITNESS = {"name": "witness", "namespace": "default", "address": "127.0.0.9", "ports": {"http": 9080},
           "ttlSeconds": LEASE_TTL_SECONDS}


def register(port: int) -> str:
    status, raw = call(port, "POST", "/apis/v1/instances", WITNESS)
    assert status == 200, raw
    return str(json.loads(raw)["id"])


def heartbeat(port: int, lease_id: str, probe: Probe, stop: threading.Event) -> None:
    """Renew the lease every third of its TTL; on 404 (it expired) register again, as the sidecar does."""
    while not stop.wait(HEARTBEAT_INTERVAL_SECONDS):
        started = time.perf_counter()
        try:
            status, _ = call(port, "PUT", f"/apis/v1/instances/{lease_id}/heartbeat")
            probe.record(time.perf_counter() - started, "" if status == 200 else f"heartbeat answered {status}")
            if status == 404:
                lease_id = register(port)
        except OSError as error:
            probe.record(time.perf_counter() - started, f"heartbeat: {error}")


class AdsProxy(threading.Thread):
    """A proxy's state-of-the-world ADS stream (what the push translates for): every cluster and
    listener, each response ACKed; ``wait_for_clusters(n)`` returns once it holds at least n."""

    def __init__(self, xds_port: int, name: str, ip: str, namespace: str) -> None:
        super().__init__(daemon=True)
        self.xds_port, self.namespace = xds_port, namespace
        self.node_id = f"sidecar~{ip}~{name}.{namespace}~{namespace}.svc.cluster.local"
        self.clusters = -1  # none received yet
        self.changed = threading.Condition()
        self.requests: queue.Queue[object] = queue.Queue()

    def run(self) -> None:
        import grpc
        from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

        def requests() -> object:
            while True:
                yield self.requests.get()

        first = discovery_pb2.DiscoveryRequest(type_url=CLUSTER_TYPE)
        first.node.id = self.node_id
        first.node.metadata.update({"TULLE_AGENT": True, "NAMESPACE": self.namespace})
        self.requests.put(first)
        self.requests.put(discovery_pb2.DiscoveryRequest(type_url=LISTENER_TYPE))
        options = [("grpc.max_receive_message_length", -1), ("grpc.enable_http_proxy", 0)]
        with grpc.insecure_channel(f"127.0.0.1:{self.xds_port}", options=options) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            try:
                for response in stub.StreamAggregatedResources(requests()):
                    self.requests.put(discovery_pb2.DiscoveryRequest(
                        type_url=response.type_url, version_info=response.version_info,
                        response_nonce=response.nonce))
                    if response.type_url == CLUSTER_TYPE:
                        with self.changed:
                            self.clusters = len(response.resources)
                            self.changed.notify_all()
            except grpc.RpcError:
                return  # the control plane stopped

    def wait_for_clusters(self, at_least: int) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.clusters >= at_least, PUSH_TIMEOUT_SECONDS)


def wait_ready(ready_file: Path, process: subprocess.Popen[bytes], deadline: float) -> dict[str, object]:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the control plane exited with {process.returncode}")
        if ready_file.exists() and ready_file.read_text():
            return json.loads(ready_file.read_text())
        time.sleep(0.05)
    raise SystemExit("the control plane did not become ready")


def run(count: int, tulle: str, work: Path, push: bool = False) -> dict[str, object]:
    manifest = work / "serviceentries.yaml"
    manifest.write_text(service_entries(count))
    ready_file = work / "ready.json"
    log = (work / "control-plane.log").open("wb")
    process = subprocess.Popen(
        [tulle, "control-plane", "--state-dir", str(work / "state"), "--xds-address", "127.0.0.1:0",
         "--http-address", "127.0.0.1:0", "--ready-file", str(ready_file), "-l", "warning"],
        stdout=log, stderr=subprocess.STDOUT)
    results: dict[str, object] = {"resources": count, "mode": "push" if push else "apply", "phases": {}}
    try:
        ready = wait_ready(ready_file, process, time.monotonic() + 30)
        port, token_file = int(ready["http_port"]), str(ready["token_file"])
        TOKEN["value"] = Path(token_file).read_text().strip()
        lease_id = register(port)
        health, beats, stop = Probe(), Probe(), threading.Event()
        threads = [threading.Thread(target=probe_health, args=(port, health, stop), daemon=True),
                   threading.Thread(target=heartbeat, args=(port, lease_id, beats, stop), daemon=True)]
        for thread in threads:
            thread.start()
        url = f"http://127.0.0.1:{port}"

        def command(*arguments: str) -> subprocess.CompletedProcess[bytes]:
            return subprocess.run([tulle, *arguments, "--control-plane", url, "--token-file", token_file],
                                  capture_output=True)

        def post_yaml() -> subprocess.CompletedProcess[bytes]:
            status, raw = call(port, "POST", "/apis/v1/resources?dry_run=true", manifest.read_bytes())
            return subprocess.CompletedProcess([], 0 if status == 200 else 1, b"", raw)

        def proxy_gets_clusters(proxy: AdsProxy) -> subprocess.CompletedProcess[bytes]:
            if not proxy.is_alive():
                proxy.start()
            arrived = proxy.wait_for_clusters(count)
            return subprocess.CompletedProcess([], 0 if arrived else 1, b"", b"" if arrived else b"no push arrived")

        if push:
            xds_port = int(ready["xds_port"])
            connected = AdsProxy(xds_port, "app-1", "127.0.0.11", "default")
            # Another namespace: its view of the mesh is translated when it connects, not shared.
            joining = AdsProxy(xds_port, "app-2", "127.0.0.12", "other")
            connected.start()
            connected.wait_for_clusters(0)  # its first clusters: it is connected
            phases = (("apply -f", lambda: command("apply", "-f", str(manifest))),
                      ("push to a proxy", lambda: proxy_gets_clusters(connected)),
                      ("a proxy connects", lambda: proxy_gets_clusters(joining)))
        else:
            phases = (("POST YAML dry run", post_yaml),
                      ("apply --dry-run", lambda: command("apply", "--dry-run", "-f", str(manifest))),
                      ("apply", lambda: command("apply", "-f", str(manifest))),
                      ("delete -f", lambda: command("delete", "-f", str(manifest))))
        for name, action in phases:
            health.take()
            beats.take()
            started = time.perf_counter()
            done = action()
            wall = time.perf_counter() - started
            if not push:
                time.sleep(HEARTBEAT_INTERVAL_SECONDS * 1.5)  # one more heartbeat after the command
            slowest_health, health_failures = health.take()
            slowest_beat, beat_failures = beats.take()
            alive = "heartbeat answered 404" not in beat_failures
            phase = {"exit": done.returncode, "wall_seconds": round(wall, 2),
                     "slowest_healthz_seconds": round(slowest_health, 3),
                     "slowest_heartbeat_seconds": round(slowest_beat, 3), "lease_alive": alive,
                     "failures": (health_failures + beat_failures)[:5]}
            if done.returncode:
                phase["stderr"] = done.stderr.decode(errors="replace")[-500:]
            results["phases"][name] = phase  # type: ignore[index]
            print(f"{name:18} exit {done.returncode}  wall {wall:7.2f} s  slowest healthz {slowest_health:6.3f} s  "
                  f"slowest heartbeat {slowest_beat:6.3f} s  lease {'alive' if alive else 'EXPIRED'}"
                  + (f"  failures: {phase['failures']}" if phase["failures"] else ""), flush=True)
        stop.set()
        for thread in threads:
            thread.join(REQUEST_TIMEOUT_SECONDS)
    finally:
        process.terminate()
        process.wait(30)
        log.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=10_000, help="ServiceEntries in the file (default 10000)")
    parser.add_argument("--tulle", default=str(REPO_DIR / ".venv" / "bin" / "tulle"), help="the tulle command")
    parser.add_argument("--push", action="store_true",
                        help="measure the pushes to a connected and to a connecting proxy instead")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--generate-only", metavar="FILE", help="write the ServiceEntries file and exit")
    args = parser.parse_args()
    if args.generate_only:
        Path(args.generate_only).write_text(service_entries(args.resources))
        return 0
    with tempfile.TemporaryDirectory(prefix="tulle-bulk-") as work:
        print(f"{args.resources} ServiceEntries, lease {LEASE_TTL_SECONDS:g} s, "
              f"heartbeat every {HEARTBEAT_INTERVAL_SECONDS:g} s, CPUs {os.cpu_count()}", flush=True)
        results = run(args.resources, args.tulle, Path(work), args.push)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    failed = any(not phase["lease_alive"] or phase["exit"] for phase in results["phases"].values())  # type: ignore[union-attr]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
