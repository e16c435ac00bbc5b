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
from tulle.controlplane.api_token import ClientToken, find_client_token
from tulle.sidecar.agent import (
    Registration,
    SidecarConfig,
    add_sidecar_parser,
    config_from_args,
    has_active_dynamic_listener,
    parse_app_port,
    parse_upstream,
    proxy_environment,
    registration_errors,
    run_sidecar,
)
from tulle.xds_client.apply import LISTENER_TYPE, ROUTE_TYPE

pytestmark = pytest.mark.integration
INSTANCES = "/apis/v1/instances"
# exported for the app in the same shell: neither the agent's calls nor the proxy's xDS may use it
APP_PROXY_SETTINGS = {name: "http://127.0.0.1:9" for name in ("HTTP_PROXY", "http_proxy", "grpc_proxy")}
TOKEN = "sidecar-test-token-0123456789abcdefghijklm"


# --------------------------------------------------------------------------- fake control plane
@dataclass
class Event:
    at: float
    method: str
    path: str
    body: dict[str, Any] | None
    authorization: str = ""


class FakeControlPlane(ThreadingHTTPServer):
    """Leases by id; records every call. ``expire()`` drops the current leases (404 on heartbeat).
    Like the real API, it answers 401 to a call without its ``token``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int = 0) -> None:
        self.events: list[Event] = []
        self.leases: set[str] = set()
        self.registered = 0
        self.on_delete: Callable[[], None] = lambda: None
        self.refuse_registrations: tuple[int, dict[str, Any]] | None = None  # the answer to POSTs instead
        self.token = TOKEN
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
        authorization = self.headers.get("authorization", "")
        with server.lock:
            server.events.append(Event(time.monotonic(), self.command, self.path, body, authorization))
            if authorization != f"Bearer {server.token}":
                answer: tuple[int, dict[str, Any]] = (401, {"error": "the bearer token is not this control plane's"})
            elif self.command == "POST" and self.path == INSTANCES and server.refuse_registrations:
                answer = server.refuse_registrations
            elif self.command == "POST" and self.path == INSTANCES:
                server.registered += 1
                instance_id = f"{body['name']}-{server.registered}"
                server.leases.add(instance_id)
                answer = (200, {"id": instance_id, "ttlSeconds": body["ttlSeconds"]})
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
        token_file = tmp_path / f"api-token-{self.ip}"
        token_file.write_text(TOKEN + "\n")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tulle", "sidecar", "--name", "reviews-v2", "--ip", self.ip,
             "--label", "app=reviews", "--label", "version=v2", "--app-port", "9080=19081",
             "--control-plane", control_plane, "--token-file", str(token_file),
             "--xds-address", f"127.0.0.1:{free_port()}", *args],
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
    ttl = 1.5  # the registry refuses leases under a second
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
    # registration, heartbeats and deregistration all carried the token from --token-file
    assert {event.authorization for event in control_plane.events} == {f"Bearer {TOKEN}"}


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


def test_a_second_sidecar_on_the_same_ip_fails_before_registering_or_starting_a_proxy(
        tmp_path: Path, control_plane: FakeControlPlane, agents: list[Agent]) -> None:
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    first = Agent(tmp_path / "first", control_plane.url)
    agents.append(first)
    until(first.admin_ready)
    until(lambda: control_plane.calls("POST"))
    second = Agent(tmp_path / "second", control_plane.url, ip=first.ip)
    agents.append(second)
    assert second.process.wait(10) == 1
    assert (f"tulle sidecar: error: cannot listen on {first.ip}:15021 for the readiness port: Address already "
            f"in use (is another sidecar running with --ip {first.ip}? give each workload its own --ip, or move "
            "the port with --status-port)") in second.log()
    assert "proxy started" not in second.log() and "Traceback" not in second.log()
    assert len(control_plane.calls("POST")) == 1 and not control_plane.calls("DELETE")  # only the first's lease
    assert first.process.poll() is None and first.admin_ready()


def test_a_taken_admin_port_fails_before_registering_or_starting_a_proxy(
        tmp_path: Path, control_plane: FakeControlPlane, agents: list[Agent]) -> None:
    ip = workload_ip()
    with socket.create_server((ip, 15000)):
        agent = Agent(tmp_path, control_plane.url, ip=ip)
        agents.append(agent)
        assert agent.process.wait(10) == 1
    assert (f"tulle sidecar: error: cannot listen on {ip}:15000 for the proxy admin port: Address already in use"
            in agent.log())
    assert "proxy started" not in agent.log()
    assert not control_plane.calls("POST")
    assert not can_connect(ip, 15021)  # the readiness port it had bound was released


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
    registration = Registration(f"http://127.0.0.1:{port}", SidecarConfig(name="ratings-v1", ttl=30).registration(),
                                ClientToken(TOKEN, "$TULLE_TOKEN"))
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


def test_a_refused_token_is_read_again_until_the_control_plane_takes_it(
        tmp_path: Path, control_plane: FakeControlPlane, caplog: pytest.LogCaptureFixture) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text("stale-token-of-an-earlier-control-plane-0123\n")
    token = find_client_token(str(token_file))
    registration = Registration(control_plane.url, SidecarConfig(name="ratings-v1", ttl=3).registration(), token)

    async def scenario() -> None:
        registering = asyncio.create_task(registration.register())
        while not control_plane.calls("POST"):
            await asyncio.sleep(0.02)
        token_file.write_text(TOKEN + "\n")  # the control plane's current token
        await asyncio.wait_for(registering, 10)
        assert await registration.heartbeat() is True
        control_plane.token = "a-newer-token-made-by-a-fresh-state-dir-0123"
        token_file.write_text(control_plane.token + "\n")
        assert await registration.heartbeat() is True  # refused, so the file is read again
        assert await registration.heartbeat() is True
        await registration.deregister()

    with caplog.at_level("INFO", logger="tulle.sidecar"):
        asyncio.run(scenario())
    assert registration.instance_id is None
    refused = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert refused[0] == ("the control plane refused the registration: the API token from --token-file "
                          f"{token_file} was refused: it is not this control plane's (its <state dir>/api-token "
                          "or the file given to its --token-file)")
    assert refused[-1].startswith("the control plane refused the heartbeat: ")
    with_new_token = [e.method for e in control_plane.events if e.authorization == f"Bearer {control_plane.token}"]
    assert with_new_token == ["PUT", "DELETE"]


def test_a_refused_registration_is_logged_once_and_retried_slowly(
        control_plane: FakeControlPlane, caplog: pytest.LogCaptureFixture) -> None:
    # A control plane that checks more than this sidecar did (a newer version) refuses the same body
    # every time: one error, not one per retry, and no fast retry loop.
    control_plane.refuse_registrations = (400, {"error": "address: 'x' is not an IP address"})
    registration = Registration(control_plane.url, SidecarConfig(name="ratings-v1", ttl=3).registration(),
                                ClientToken(TOKEN, "$TULLE_TOKEN"))

    async def scenario() -> None:
        registering = asyncio.create_task(registration.register())
        while len(control_plane.calls("POST")) < 3:
            await asyncio.sleep(0.02)
        assert registration.refused_permanently and registration.instance_id is None
        control_plane.refuse_registrations = None  # the operator fixed the control plane's side
        await asyncio.wait_for(registering, 10)

    with caplog.at_level("INFO", logger="tulle.sidecar"):
        asyncio.run(scenario())
    assert registration.instance_id == "ratings-v1-1" and not registration.refused_permanently
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == ['registration refused (400): {"error": "address: \'x\' is not an IP address"}; this '
                      "workload gets no traffic until it is accepted"]


def test_a_registration_the_registry_would_refuse_is_a_flag_error(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_sidecar_parser(parser.add_subparsers())
    args = parser.parse_args(["sidecar", "--name", "Reviews_V2", "--label", "version=-bad-", "--app-port", "9080=19080",
                              "--service", "reviews",
                              "--service-account", "under_score", "--control-plane", "http://127.0.0.1:9"])
    assert run_sidecar(args) == 2  # nothing started, nothing registered (port 9 would refuse anyway)
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":", 2)[2].split("(")[0].strip() for line in err] == [
        "--name", "--label", "--service-account"]
    assert err[0].startswith("tulle sidecar: error: --name (name): 'Reviews_V2' is not a DNS-1123 subdomain")
    assert registration_errors(SidecarConfig(name="ok", ip="10.0.0.1").registration()) == []


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
        "--control-plane", "http://10.0.0.1:15014", "--token-file", "/run/tulle/api-token",
    ])
    config = config_from_args(args)
    assert (config.token_file, config.state_dir) == ("/run/tulle/api-token", None)
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
