"""``tulle sidecar`` as a real subprocess against a fake control plane written here: registration,
heartbeats every ttl/3, registering again on 404, readiness from the proxy's config, and the
shutdown order (deregister while the proxy still runs, then stop it)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

# workload_ip(): a loopback IP of its own per test, so the agent's default ports (15000, 15021) never collide
from proxy_harness import free_port
from proxy_harness import loopback_ip as workload_ip
from scripted_ads import ScriptedAds, rds_listener, route_config
from tulle.sidecar.agent import (
    Registration,
    SidecarConfig,
    add_sidecar_parser,
    config_from_args,
    has_active_dynamic_listener,
    parse_app_port,
    parse_upstream,
    proxy_environment,
    run_sidecar,
)
from tulle.xds_client.apply import LISTENER_TYPE, ROUTE_TYPE

pytestmark = pytest.mark.integration
INSTANCES = "/apis/v1/instances"
# exported for the app in the same shell: neither the agent's calls nor the proxy's xDS may use it
APP_PROXY_SETTINGS = {name: "http://127.0.0.1:9" for name in ("HTTP_PROXY", "http_proxy", "grpc_proxy")}


# --------------------------------------------------------------------------- fake control plane
@dataclass
class Event:
    at: float
    method: str
    path: str
    body: dict[str, Any] | None


class FakeControlPlane(ThreadingHTTPServer):
    """Leases by id; records every call. ``expire()`` drops the current leases (404 on heartbeat)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int = 0) -> None:
        self.events: list[Event] = []
        self.leases: set[str] = set()
        self.registered = 0
        self.on_delete: Callable[[], None] = lambda: None
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _ControlPlaneHandler)
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def expire(self) -> None:
        with self.lock:
            self.leases.clear()

    def calls(self, method: str) -> list[Event]:
        with self.lock:
            return [event for event in self.events if event.method == method]

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _ControlPlaneHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeControlPlane

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        server = self.server
        if self.command == "DELETE":
            server.on_delete()
        with server.lock:
            server.events.append(Event(time.monotonic(), self.command, self.path, body))
            if self.command == "POST" and self.path == INSTANCES:
                server.registered += 1
                instance_id = f"{body['name']}-{server.registered}"
                server.leases.add(instance_id)
                answer: tuple[int, dict[str, Any]] = (200, {"id": instance_id, "ttlSeconds": body["ttlSeconds"]})
            elif self.command == "PUT" and self.path.endswith("/heartbeat"):
                instance_id = self.path.split("/")[-2]
                answer = (200, {}) if instance_id in server.leases else (404, {"error": "no such instance"})
            elif self.command == "DELETE" and self.path.startswith(INSTANCES + "/"):
                instance_id = self.path.split("/")[-1]
                answer = (200, {"deleted": instance_id}) if instance_id in server.leases else (404, {})
                server.leases.discard(instance_id)
            else:
                answer = (404, {"error": "unknown path"})
        self._answer(*answer)

    do_POST = do_PUT = do_DELETE = _handle


# --------------------------------------------------------------------------- agent process
def http_status(url: str, method: str = "GET") -> int:
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with direct.open(urllib.request.Request(url, method=method), timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def can_connect(ip: str, port: int) -> bool:
    try:
        socket.create_connection((ip, port), timeout=1).close()
        return True
    except OSError:
        return False


def until(predicate: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


class Agent:
    def __init__(self, tmp_path: Path, control_plane: str, *args: str, ip: str | None = None) -> None:
        self.ip = ip or workload_ip()
        self.log_path = tmp_path / f"agent-{self.ip}.log"
        self.log_file = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tulle", "sidecar", "--name", "reviews-v2", "--ip", self.ip,
             "--label", "app=reviews", "--label", "version=v2", "--app-port", "9080=19081",
             "--control-plane", control_plane, "--xds-address", f"127.0.0.1:{free_port()}", *args],
            stdout=self.log_file, stderr=subprocess.STDOUT, env={**os.environ, **APP_PROXY_SETTINGS},
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def proxy_pid(self) -> int:
        return int(until(lambda: re.search(r"proxy started \(pid (\d+)\)", self.log()), 5).group(1))

    def bootstrap_path(self) -> Path:
        return Path(until(lambda: re.search(r" -c (\S+)", self.log()), 5).group(1))

    def admin_ready(self) -> bool:
        try:
            return http_status(f"http://{self.ip}:15000/ready") == 200
        except OSError:
            return False

    def readiness(self) -> int:
        return http_status(f"http://{self.ip}:15021/healthz/ready")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(10)
        finally:
            self.log_file.close()


@pytest.fixture
def control_plane() -> Iterator[FakeControlPlane]:
    server = FakeControlPlane()
    yield server
    server.stop()


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for agent in started:
        if agent.process.poll() is None:
            agent.process.kill()
            agent.process.wait()
        agent.log_file.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --------------------------------------------------------------------------- subprocess tests
def test_registers_heartbeats_every_third_of_the_ttl_and_registers_again_on_404(
        tmp_path: Path, control_plane: FakeControlPlane, agents: list[Agent]) -> None:
    ttl = 0.9
    agent = Agent(tmp_path, control_plane.url, "--ttl", str(ttl), "--drain-duration", "0")
    agents.append(agent)
    until(lambda: len(control_plane.calls("PUT")) >= 2)
    first = control_plane.calls("POST")[0]
    assert first.body == {
        "name": "reviews-v2", "namespace": "default", "address": agent.ip, "ports": {"9080": 9080},
        "labels": {"app": "reviews", "version": "v2"}, "serviceAccount": "default", "locality": "",
        "services": ["reviews"], "ttlSeconds": ttl,
    }
    beats = control_plane.calls("PUT")[:2]
    assert all(beat.path == f"{INSTANCES}/reviews-v2-1/heartbeat" for beat in beats)
    gaps = [b.at - a.at for a, b in zip([first, *beats], beats, strict=False)]
    # every third of the lease: never early, and well inside the lease so it never lapses
    assert all(ttl / 3 * 0.8 <= gap < ttl for gap in gaps), gaps

    control_plane.expire()  # the control plane forgot us (restart, missed beats): 404
    until(lambda: len(control_plane.calls("POST")) == 2)
    until(lambda: any(beat.path == f"{INSTANCES}/reviews-v2-2/heartbeat" for beat in control_plane.calls("PUT")))
    assert agent.stop() == 0
    assert control_plane.calls("DELETE")[-1].path == f"{INSTANCES}/reviews-v2-2"


def test_sigterm_deregisters_while_the_proxy_still_runs_then_stops_it(
        tmp_path: Path, control_plane: FakeControlPlane, agents: list[Agent]) -> None:
    agent = Agent(tmp_path, control_plane.url, "--drain-duration", "0.2")
    agents.append(agent)
    proxy_alive_at_delete: list[bool] = []
    control_plane.on_delete = lambda: proxy_alive_at_delete.append(agent.admin_ready())
    until(agent.admin_ready)  # the proxy child runs its admin on the workload IP
    until(lambda: control_plane.calls("POST"))
    proxy_pid, bootstrap = agent.proxy_pid(), agent.bootstrap_path()
    assert json.loads(bootstrap.read_text())["node"]["id"].startswith(f"sidecar~{agent.ip}~reviews-v2.default~")
    assert agent.readiness() == 503  # no listener from the control plane yet

    assert agent.stop() == 0
    assert [event.method for event in control_plane.events][-1] == "DELETE"
    assert control_plane.calls("DELETE")[0].path == f"{INSTANCES}/reviews-v2-1"
    assert proxy_alive_at_delete == [True]  # deregistered first, the proxy went after
    assert not pid_alive(proxy_pid)
    assert not can_connect(agent.ip, 15000) and not can_connect(agent.ip, 15021)
    assert not bootstrap.exists()


def test_proxy_death_deregisters_and_exits_non_zero(
        tmp_path: Path, control_plane: FakeControlPlane, agents: list[Agent]) -> None:
    agent = Agent(tmp_path, control_plane.url)
    agents.append(agent)
    until(lambda: control_plane.calls("POST"))
    os.kill(agent.proxy_pid(), signal.SIGKILL)
    assert agent.process.wait(10) == 1
    assert [event.path for event in control_plane.calls("DELETE")] == [f"{INSTANCES}/reviews-v2-1"]
    assert "proxy exited" in agent.log()


def test_taken_readiness_port_stops_the_proxy_and_fails(
        tmp_path: Path, control_plane: FakeControlPlane, agents: list[Agent]) -> None:
    ip = workload_ip()
    with socket.socket() as taken:
        taken.bind((ip, 15021))
        taken.listen()
        agent = Agent(tmp_path, control_plane.url, ip=ip)
        agents.append(agent)
        assert agent.process.wait(10) == 1
    proxy_pid = agent.proxy_pid()
    assert "tulle sidecar: error:" in agent.log() and "15021" in agent.log()
    assert not pid_alive(proxy_pid)
    assert len(control_plane.calls("POST")) == len(control_plane.calls("DELETE"))  # no lease left behind


def test_ready_once_the_proxy_has_a_listener_from_the_control_plane(
        tmp_path: Path, control_plane: FakeControlPlane, agents: list[Agent]) -> None:
    async def scenario() -> None:
        ads = ScriptedAds()
        server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
        xds_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            agent = Agent(tmp_path, control_plane.url, "--xds-address", f"127.0.0.1:{xds_port}", "--delta",
                          "--drain-duration", "0")
            agents.append(agent)
            await asyncio.to_thread(until, agent.admin_ready)
            assert await asyncio.to_thread(agent.readiness) == 503
            listener = rds_listener(f"{agent.ip}_9080", free_port(), "inbound")
            listener.address.socket_address.address = agent.ip
            ads.publish(ROUTE_TYPE, "r1", [route_config("inbound", "inbound|9080||")])
            ads.publish(LISTENER_TYPE, "l1", [listener])
            await asyncio.to_thread(until, lambda: agent.readiness() == 200)
            assert ads.requests[0].node.id.startswith(f"sidecar~{agent.ip}~")
            assert await asyncio.to_thread(agent.stop) == 0
        finally:
            await server.stop(None)

    asyncio.run(scenario())


# --------------------------------------------------------------------------- in-process pieces
def test_registration_backs_off_until_the_control_plane_comes_up() -> None:
    port = free_port()
    registration = Registration(f"http://127.0.0.1:{port}", SidecarConfig(name="ratings-v1", ttl=30).registration())
    late: list[FakeControlPlane] = []

    async def scenario() -> None:
        asyncio.get_running_loop().call_later(0.3, lambda: late.append(FakeControlPlane(port)))
        await asyncio.wait_for(registration.register(), 5)
        assert registration.instance_id == "ratings-v1-1"
        assert await registration.heartbeat() is True
        late[0].expire()
        assert await registration.heartbeat() is False and registration.instance_id is None

    try:
        asyncio.run(scenario())
    finally:
        for server in late:
            server.stop()
    assert registration.ttl == 30 and registration.heartbeat_interval == 10


def test_registration_body_and_defaults() -> None:
    client_only = SidecarConfig(name="loadgen", labels={"app": "loadgen"})
    assert client_only.registration()["services"] == [] and client_only.registration()["ports"] == {}
    unlabelled = SidecarConfig(name="details-v1", app_ports={9080: 19082}, ttl=30.0)
    body = unlabelled.registration()
    assert body["services"] == ["details-v1"] and body["ttlSeconds"] == 30 and isinstance(body["ttlSeconds"], int)
    explicit = SidecarConfig(name="web", services=["frontend", "frontend-canary"], app_ports={80: 8080})
    assert explicit.registration()["services"] == ["frontend", "frontend-canary"]


def test_command_line_flags_build_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_sidecar_parser(parser.add_subparsers())
    args = parser.parse_args([
        "sidecar", "--name", "productpage-v1", "--ip", "127.0.0.10", "--label", "app=productpage",
        "--app-port", "9080=19080", "--upstream", "reviews:9080=19090", "--upstream", "details:9080=19091",
        "--locality", "eu/west", "--ttl", "12", "--delta", "--concurrency", "2",
        "--control-plane", "http://10.0.0.1:15014",
    ])
    config = config_from_args(args)
    assert config.upstreams == {"reviews:9080": 19090, "details:9080": 19091}
    assert config.app_ports == {9080: 19080} and config.labels == {"app": "productpage"}
    assert (config.ttl, config.delta, config.concurrency, config.namespace) == (12, True, 2, "default")
    assert config.bootstrap()["node"]["metadata"]["UPSTREAMS"] == {"reviews:9080": 19090, "details:9080": 19091}
    for bad in (["--app-port", "9080"], ["--upstream", "reviews=19090"], ["--label", "novalue"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["sidecar", "--name", "x", *bad])
    with pytest.raises(argparse.ArgumentTypeError):
        parse_app_port("9080=0")
    assert parse_upstream("mongo.db.svc.cluster.local:27017=27017") == ("mongo.db.svc.cluster.local:27017", 27017)


def test_bad_settings_refused_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_sidecar_parser(parser.add_subparsers())
    assert run_sidecar(parser.parse_args(["sidecar", "--name", "x", "--ttl", "0"])) == 2
    assert run_sidecar(parser.parse_args(["sidecar", "--name", "x", "--locality", "a/b/c/d"])) == 2
    assert "region/zone/subzone" in capsys.readouterr().err


def test_readiness_needs_an_active_dynamic_listener() -> None:
    prefix = "type.googleapis.com/envoy.admin.v3."
    warming = {"configs": [{"@type": prefix + "ListenersConfigDump", "static_listeners": [{}],
                            "dynamic_listeners": [{"name": "a", "warming_state": {}}]}]}
    active = {"configs": [{"@type": prefix + "ClustersConfigDump"},
                          {"@type": prefix + "ListenersConfigDump",
                           "dynamic_listeners": [{"name": "a", "active_state": {}}]}]}
    assert not has_active_dynamic_listener(warming)
    assert has_active_dynamic_listener(active)
    assert not has_active_dynamic_listener({})


def test_proxy_child_gets_no_forward_proxy_settings() -> None:
    environ = {"PATH": "/usr/bin", "HTTP_PROXY": "http://127.0.0.5:15001", "https_proxy": "x", "GRPC_PROXY": "y",
               "NO_PROXY": "*", "TULLE_CONTROL_PLANE": "http://127.0.0.1:15014"}
    assert proxy_environment(environ) == {"PATH": "/usr/bin", "NO_PROXY": "*",
                                          "TULLE_CONTROL_PLANE": "http://127.0.0.1:15014"}
