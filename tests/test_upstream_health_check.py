"""Active health checking: config, the threshold state machine, HTTP and TCP probes against real
sockets, the cluster's warm-up and membership, and a real proxy taking backends out and back."""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Awaitable, Callable
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster as ClusterProto
from envoy.config.core.v3.health_check_pb2 import HealthCheck
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from backends import BackendConnection, RawBackend, echo_backend, encode_response, get, http_proxy, wait_until
from proxy_harness import ProxyProcess, free_port, simple_route, static_cluster
from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.samples.echo_server import start_in_thread
from tulle.stats.store import Store
from tulle.upstream import health_check as hc
from tulle.upstream.cluster import Cluster, EdsCluster, build_cluster
from tulle.upstream.cluster_stats import HealthCheckStats
from tulle.upstream.health_check import HealthCheckConfig, parse_health_check, payload_matches
from tulle.upstream.host import FAILED_ACTIVE_HC, Host

PREFIX = "cluster.svc.health_check."


def check(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"timeout": "1s", "interval": "0.05s", "unhealthy_threshold": 2, "healthy_threshold": 2}
    if "tcp_health_check" not in fields and "grpc_health_check" not in fields:
        base["http_health_check"] = {"path": "/healthz"}
    return {**base, **fields}


def without_unset(fields: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``fields`` less the keys ``overrides`` sets to None (a test's way to leave a field out)."""
    return {key: value for key, value in fields.items() if not (key in overrides and overrides[key] is None)}


def parse(data: dict[str, Any]) -> HealthCheckConfig:
    return parse_health_check(parse_message(data, HealthCheck), "clusters[0].health_checks[0]")


def build(ports: list[int], health_check: dict[str, Any], store: Store | None = None, **fields: Any) -> Cluster:
    endpoints = [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
                 for port in ports]
    data = {"name": "svc", "connect_timeout": "1s", "health_checks": [health_check],
            "load_assignment": {"cluster_name": "svc", "endpoints": [{"lb_endpoints": endpoints}]}, **fields}
    return build_cluster(parse_message(data, ClusterProto), "clusters[0]", store or Store(), random.Random(2))


# --- configuration ----------------------------------------------------------------


def test_settings_and_envoys_defaults():
    config = parse(check(interval="2s", unhealthy_interval="3s", initial_jitter="0.5s", interval_jitter="0.1s",
                         interval_jitter_percent=10, alt_port=9000, reuse_connection=False,
                         always_log_health_check_failures=True))
    assert (config.timeout, config.interval_ms, config.unhealthy_interval_ms) == (1.0, 2000, 3000)
    # the edge intervals default to the interval of the state they lead to
    assert (config.unhealthy_edge_interval_ms, config.healthy_edge_interval_ms) == (3000, 2000)
    assert (config.initial_jitter_ms, config.interval_jitter_ms, config.interval_jitter_percent) == (500, 100, 10)
    assert (config.alt_port, config.reuse_connection) == (9000, False)
    http = config.http
    assert http is not None and (http.path, http.host, http.method) == ("/healthz", "", "GET")
    assert http.expected_statuses == ((200, 201),) and http.retriable_statuses == ()
    assert parse(check()).reuse_connection


def test_tcp_payloads_are_hex_or_binary():
    config = parse(check(tcp_health_check={"send": {"text": "70696e67"}, "receive": [{"text": "706f"}, {"binary": "bmc="}]}))
    assert config.tcp is not None and config.tcp.send == b"ping" and config.tcp.receive == (b"po", b"ng")
    assert payload_matches((b"po", b"ng"), b"xxpoyyng") and not payload_matches((b"ng", b"po"), b"pong")


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"timeout": None}, "timeout", "required"),
    ({"interval": None}, "interval", "required"),
    ({"healthy_threshold": None}, "healthy_threshold", "required"),
    ({"interval": "0s"}, "interval", "greater than 0s"),
    ({"no_traffic_interval": "0s"}, "no_traffic_interval", "greater than 0s"),
    ({"http_health_check": {"path": ""}}, "http_health_check.path", "required"),
    ({"http_health_check": {"path": "/", "method": "CONNECT"}}, "http_health_check.method", "CONNECT"),
    ({"http_health_check": {"path": "/", "expected_statuses": [{"start": 200, "end": 200}]}},
     "http_health_check.expected_statuses[0]", "start < end"),
    ({"http_health_check": {"path": "/", "retriable_statuses": [{"start": 99, "end": 200}]}},
     "http_health_check.retriable_statuses[0]", "start >= 100"),
    ({"http_health_check": {"path": "/", "expected_statuses": [{"start": 200, "end": 601}]}},
     "http_health_check.expected_statuses[0]", "end <= 600"),
    ({"http_health_check": {"path": "/", "request_headers_to_add": [{"header": {"key": ":path", "value": "x"}}]}},
     "http_health_check.request_headers_to_add[0].header.key", "may not be modified"),
    ({"http_health_check": None, "tcp_health_check": {"send": {"text": "zz"}}}, "tcp_health_check.send.text",
     "invalid hex"),
    ({"alt_port": 70000}, "alt_port.value", "between 1 and 65535"),
])
def test_invalid_settings_name_their_field(data, field, message):
    fields = without_unset(check(**{key: value for key, value in data.items() if value is not None}), data)
    with pytest.raises(ConfigError, match=message) as caught:
        parse(fields)
    assert caught.value.field == f"clusters[0].health_checks[0].{field}"


def test_a_checker_is_required():
    data = check()
    data.pop("http_health_check")
    with pytest.raises(ConfigError, match="http_health_check, tcp_health_check or grpc_health_check"):
        parse(data)


@pytest.mark.parametrize(("fields", "path"), [
    ({"http_health_check": None, "grpc_health_check": {"initial_metadata": [
        {"header": {"key": "x", "value": "1"}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]}},
     "grpc_health_check.initial_metadata[0].append_action"),
    ({"http_health_check": None, "custom_health_check": {"name": "x"}}, "custom_health_check"),
    ({"tls_options": {"alpn_protocols": ["h2"]}}, "tls_options"),
    ({"event_log_path": "/tmp/hc.log"}, "event_log_path"),
    ({"http_health_check": {"path": "/", "codec_client_type": "HTTP2"}}, "http_health_check.codec_client_type"),
    ({"http_health_check": {"path": "/", "receive": [{"text": "6f6b"}]}}, "http_health_check.receive"),
    ({"http_health_check": None, "tcp_health_check": {"proxy_protocol_config": {}}},
     "tcp_health_check.proxy_protocol_config"),
])
def test_unsupported_checkers_and_options_are_refused(fields, path):
    data = without_unset(check(**{key: value for key, value in fields.items() if value is not None}), fields)
    with pytest.raises(UnsupportedFeature) as caught:
        parse(data)
    assert caught.value.field == f"clusters[0].health_checks[0].{path}"


def test_only_one_health_check_per_cluster():
    data = {"name": "svc", "health_checks": [check(), check()]}
    with pytest.raises(UnsupportedFeature) as caught:
        build_cluster(parse_message(data, ClusterProto), "clusters[0]", Store())
    assert caught.value.field == "clusters[0].health_checks[1]"


# --- the state machine --------------------------------------------------------------


class Recorder:
    """A HealthChecker over hosts that never connect anywhere: results are fed by hand."""

    def __init__(self, count: int = 1, **overrides: Any) -> None:
        self.store = Store()
        self.changes: list[Host] = []
        self.passed: list[Host] = []
        self.checker = hc.HealthChecker(
            parse(check(**overrides)), cluster_name="svc", stats=HealthCheckStats(self.store, "svc"),
            on_health_changed=self.changes.append, on_check_passed=self.passed.append, rng=random.Random(4),
        )
        self.hosts = [Host(f"10.0.0.{i + 1}", 80) for i in range(count)]
        for host in self.hosts:
            host.reset_monitoring(active_health_checked=True)
            self.checker.add_host(host)

    def record(self, outcome: str, host: int = 0) -> float:
        return self.checker.record(self.checker.sessions[id(self.hosts[host])], outcome)

    def stat(self, name: str) -> int:
        store = self.store
        return (store.counters.get(PREFIX + name) or store.gauges[PREFIX + name]).value


def test_hosts_start_failed_and_the_first_success_is_enough():
    recorder = Recorder(healthy_threshold=3)
    host = recorder.hosts[0]
    assert host.failed_active_hc and not host.healthy and host.health_flags == FAILED_ACTIVE_HC
    assert recorder.stat("healthy") == 0
    recorder.record(hc.SUCCESS)
    assert host.healthy and host.health_flags == "healthy" and recorder.changes == [host]
    assert recorder.stat("healthy") == 1 and recorder.stat("success") == 1 and recorder.passed == [host]


def test_network_failures_need_the_threshold_and_edge_intervals_apply():
    recorder = Recorder(unhealthy_threshold=2, healthy_threshold=2, interval="1s", unhealthy_interval="2s",
                        unhealthy_edge_interval="0.3s", healthy_edge_interval="0.4s")
    host = recorder.hosts[0]
    assert recorder.record(hc.SUCCESS) == 1.0
    assert recorder.record(hc.NETWORK) == 0.3  # pending: the unhealthy edge interval
    assert host.healthy
    assert recorder.record(hc.TIMEOUT) == 2.0
    assert host.health_flags == "/failed_active_hc/active_hc_timeout" and not host.healthy
    assert recorder.record(hc.SUCCESS) == 0.4  # pending: the healthy edge interval
    assert not host.healthy and host.health_flags == "/failed_active_hc/active_hc_timeout"  # until healthy
    assert recorder.record(hc.SUCCESS) == 1.0
    assert host.healthy
    assert (recorder.stat("failure"), recorder.stat("network_failure"), recorder.stat("success")) == (2, 2, 3)


def test_a_failed_check_fails_the_host_at_once_but_a_retriable_one_counts():
    recorder = Recorder(count=2, unhealthy_threshold=3)
    for index in (0, 1):
        recorder.record(hc.SUCCESS, index)
    recorder.record(hc.FAILED, 0)
    assert recorder.hosts[0].failed_active_hc
    recorder.record(hc.RETRIABLE, 1)
    recorder.record(hc.RETRIABLE, 1)
    assert not recorder.hosts[1].failed_active_hc
    recorder.record(hc.RETRIABLE, 1)
    assert recorder.hosts[1].failed_active_hc
    assert recorder.stat("network_failure") == 0 and recorder.stat("healthy") == 0


def test_degraded_answers_degrade_the_host():
    recorder = Recorder()
    host = recorder.hosts[0]
    recorder.record(hc.DEGRADED)
    assert host.degraded and not host.healthy and host.health_flags == "/degraded_active_hc"
    assert recorder.stat("degraded") == 1
    recorder.record(hc.SUCCESS)
    assert host.healthy and recorder.stat("degraded") == 0 and len(recorder.changes) == 2


def test_interval_jitter_stays_in_its_bounds():
    recorder = Recorder(interval="1s", interval_jitter="0.2s", interval_jitter_percent=50, initial_jitter="0.3s")
    delays = {recorder.record(hc.SUCCESS) for _ in range(50)}
    assert len(delays) > 1 and all(1.0 <= delay < 1.0 + 0.5 + 0.2 for delay in delays)
    assert all(0 <= recorder.checker.initial_delay() < 0.3 for _ in range(20))


def test_first_round_completes_when_every_host_was_checked_or_removed():
    recorder = Recorder(count=2)
    waiter = recorder.checker._first_round_done
    assert not waiter.is_set()
    recorder.record(hc.FAILED, 0)
    assert not waiter.is_set()
    recorder.checker.remove_host(recorder.hosts[1])
    assert waiter.is_set()


# --- probes against real sockets -------------------------------------------------------


class HttpServer:
    """An asyncio HTTP/1.1 server that records request heads and answers with ``status`` and ``headers``."""

    def __init__(self, status: int = 200, headers: tuple[tuple[str, str], ...] = (), close: bool = False) -> None:
        self.status = status
        self.headers = headers
        self.close = close
        self.heads: list[bytes] = []
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                extra = [*self.headers, *((("connection", "close"),) if self.close else ())]
                writer.write(encode_response(self.status, extra, b"ok"))
                await writer.drain()
                if self.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    def stop(self) -> None:
        assert self.server is not None
        self.server.close()


def run_with_server(server: HttpServer, health_check: dict[str, Any],
                    body: Callable[[Cluster, Store, int], Awaitable[None]]) -> None:
    async def scenario() -> None:
        port = await server.start()
        store = Store()
        cluster = build([port], health_check, store)
        try:
            await asyncio.wait_for(cluster.initialize(), 10)
            await body(cluster, store, port)
        finally:
            await cluster.close()
            server.stop()

    asyncio.run(scenario())


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def test_http_request_carries_path_host_user_agent_and_configured_headers():
    server = HttpServer()
    health_check = check(http_health_check={
        "path": "/healthz?full=1", "request_headers_to_add": [
            {"header": {"key": "x-probe", "value": "tulle"}},
            {"header": {"key": "x-upstream", "value": "%UPSTREAM_REMOTE_ADDRESS%"}}],
        "request_headers_to_remove": ["user-agent"]})

    async def body(cluster: Cluster, store: Store, port: int) -> None:
        assert cluster.hosts[0].healthy
        head = server.heads[0].decode()
        assert head.startswith("GET /healthz?full=1 HTTP/1.1\r\n")
        lines = head.lower().split("\r\n")
        assert "host: svc" in lines and "x-probe: tulle" in lines and f"x-upstream: 127.0.0.1:{port}" in lines
        assert not any(line.startswith("user-agent") for line in lines)

    run_with_server(server, health_check, body)


def test_http_defaults_to_envoys_user_agent_and_the_configured_host():
    server = HttpServer()

    async def body(cluster: Cluster, store: Store, port: int) -> None:
        lines = server.heads[0].decode().lower().split("\r\n")
        assert "host: probe.internal" in lines and "user-agent: envoy/hc" in lines

    run_with_server(server, check(http_health_check={"path": "/", "host": "probe.internal"}), body)


def test_http_unexpected_status_fails_and_expected_ranges_pass():
    server = HttpServer(status=503)

    async def body(cluster: Cluster, store: Store, port: int) -> None:
        host = cluster.hosts[0]
        assert host.health_flags == FAILED_ACTIVE_HC and cluster.choose_host(None) is host  # panic: the only host
        assert store.counters[PREFIX + "failure"].value >= 1 and store.counters[PREFIX + "network_failure"].value == 0
        server.status = 202
        await until(lambda: host.healthy)

    run_with_server(server, check(http_health_check={
        "path": "/", "expected_statuses": [{"start": 200, "end": 300}]}, healthy_threshold=2), body)


def test_http_degraded_and_service_name_verification():
    server = HttpServer(headers=(("x-envoy-degraded", "1"), ("x-envoy-upstream-healthchecked-cluster", "svc-a")))

    async def body(cluster: Cluster, store: Store, port: int) -> None:
        host = cluster.hosts[0]
        assert host.degraded and host.health_flags == "/degraded_active_hc"
        assert store.counters[PREFIX + "verify_cluster"].value >= 1

    run_with_server(server, check(http_health_check={
        "path": "/", "service_name_matcher": {"prefix": "svc"}}), body)
    wrong = HttpServer(headers=(("x-envoy-upstream-healthchecked-cluster", "other"),))

    async def fails(cluster: Cluster, store: Store, port: int) -> None:
        assert cluster.hosts[0].failed_active_hc

    run_with_server(wrong, check(http_health_check={"path": "/", "service_name_matcher": {"exact": "svc"}}), fails)


@pytest.mark.parametrize(("reuse", "close", "one_connection"), [
    (True, False, True), (False, False, False), (True, True, False)])
def test_http_connection_reuse(reuse, close, one_connection):
    server = HttpServer(close=close)

    async def body(cluster: Cluster, store: Store, port: int) -> None:
        await until(lambda: len(server.heads) >= 3)
        assert (server.connections == 1) is one_connection

    run_with_server(server, check(reuse_connection=reuse, interval="0.01s"), body)


def test_http_timeout_flags_the_host():
    async def scenario() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read()  # never answers

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        store = Store()
        cluster = build([server.sockets[0].getsockname()[1]], check(timeout="0.05s"), store)
        await cluster.initialize()
        assert cluster.hosts[0].health_flags == "/failed_active_hc/active_hc_timeout"
        assert store.counters[PREFIX + "network_failure"].value == 1
        await cluster.close()
        server.close()

    asyncio.run(scenario())


def test_tcp_connect_only_and_closed_ports():
    async def scenario() -> None:
        connections = []

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(await reader.read())  # connect-only: closed at once, nothing sent
            writer.close()

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        store = Store()
        closed = free_port()
        cluster = build([server.sockets[0].getsockname()[1], closed],
                        check(tcp_health_check={"send": {"text": "00"}}), store)
        await cluster.initialize()
        assert [host.health_flags for host in cluster.hosts] == ["healthy", FAILED_ACTIVE_HC]
        assert store.counters[PREFIX + "network_failure"].value == 1
        await until(lambda: bool(connections))
        assert connections[0] == b""
        assert [cluster.choose_host(None).port for _ in range(3)] == [cluster.hosts[0].port] * 3
        await cluster.close()
        server.close()

    asyncio.run(scenario())


class GrpcHealthServer:
    """A real grpc.health.v1 service (grpcio-health-checking's servicer) on a grpcio server."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                  interceptors=[MetadataRecorder(self.metadata)])
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def set(self, service: str, status: int) -> None:
        self.health.set(service, status)

    def stop(self) -> None:
        self.server.stop(grace=None)


class MetadataRecorder(grpc.ServerInterceptor):
    """Records each call's method and metadata."""

    def __init__(self, seen: list[dict[str, str]]) -> None:
        self.seen = seen

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        self.seen.append({":method": handler_call_details.method, **dict(handler_call_details.invocation_metadata)})
        return continuation(handler_call_details)


def test_grpc_health_check_follows_the_serving_status():
    async def scenario() -> None:
        server = GrpcHealthServer()
        server.set("pkg.Svc", health_pb2.HealthCheckResponse.SERVING)
        store = Store()
        cluster = build([server.port], check(grpc_health_check={"service_name": "pkg.Svc"}, healthy_threshold=1,
                                             unhealthy_threshold=1), store)
        try:
            await asyncio.wait_for(cluster.initialize(), 10)
            assert cluster.hosts[0].health_flags == "healthy"
            server.set("pkg.Svc", health_pb2.HealthCheckResponse.NOT_SERVING)
            await until(lambda: cluster.hosts[0].health_flags == FAILED_ACTIVE_HC)
            server.set("pkg.Svc", health_pb2.HealthCheckResponse.SERVING)
            await until(lambda: cluster.hosts[0].health_flags == "healthy")
            assert store.counters[PREFIX + "failure"].value >= 1
            assert store.counters.get(PREFIX + "network_failure") is None or \
                store.counters[PREFIX + "network_failure"].value == 0  # NOT_SERVING is an answer, not the network
        finally:
            await cluster.close()
            server.stop()

    asyncio.run(scenario())


def test_grpc_health_check_of_an_unknown_service_or_a_closed_port_fails():
    async def scenario() -> None:
        server = GrpcHealthServer()
        store = Store()
        closed = free_port()
        cluster = build([server.port, closed], check(grpc_health_check={"service_name": "nobody"}), store)
        try:
            await asyncio.wait_for(cluster.initialize(), 10)
            # the servicer answers NOT_FOUND for an unknown service: failed at once; the closed port: network
            assert [host.health_flags for host in cluster.hosts] == [FAILED_ACTIVE_HC, FAILED_ACTIVE_HC]
            await until(lambda: PREFIX + "network_failure" in store.counters)
        finally:
            await cluster.close()
            server.stop()

    asyncio.run(scenario())


def test_grpc_health_check_sends_authority_and_initial_metadata():
    async def scenario() -> None:
        server = GrpcHealthServer()
        server.set("", health_pb2.HealthCheckResponse.SERVING)
        cluster = build([server.port], check(grpc_health_check={
            "authority": "health.example", "initial_metadata": [{"header": {"key": "x-probe", "value": "yes"}}]}))
        try:
            await asyncio.wait_for(cluster.initialize(), 10)
            assert cluster.hosts[0].health_flags == "healthy"  # service "" is the server as a whole
            call = server.metadata[0]
            assert call[":method"] == "/grpc.health.v1.Health/Check" and call["x-probe"] == "yes"
        finally:
            await cluster.close()
            server.stop()

    asyncio.run(scenario())


def test_grpc_metadata_keys_are_checked():
    with pytest.raises(ConfigError) as caught:
        parse(check(http_health_check=None, grpc_health_check={"initial_metadata": [
            {"header": {"key": ":authority", "value": "x"}}]}))
    assert caught.value.field.endswith("grpc_health_check.initial_metadata[0].header.key")


def test_tcp_payload_exchange_on_a_reused_connection():
    async def scenario() -> None:
        accepted = []

        async def pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(1)
            while (await reader.readexactly(4)) == b"ping":
                writer.write(b"po")
                await asyncio.sleep(0.001)
                writer.write(b"ng!")

        server = await asyncio.start_server(pong, "127.0.0.1", 0)
        store = Store()
        cluster = build([server.sockets[0].getsockname()[1]], check(interval="0.01s", tcp_health_check={
            "send": {"text": "70696e67"}, "receive": [{"text": "706f6e67"}]}), store)
        await cluster.initialize()
        assert cluster.hosts[0].healthy
        await until(lambda: store.counters[PREFIX + "success"].value >= 3)
        assert len(accepted) == 1
        await cluster.close()
        server.close()

    asyncio.run(scenario())


# --- the cluster around it ----------------------------------------------------------------


def test_initialize_waits_for_every_first_check():
    async def scenario() -> None:
        server = HttpServer()
        port = await server.start()
        store = Store()
        cluster = build([port, free_port()], check(), store)
        assert all(host.failed_active_hc for host in cluster.hosts)
        await cluster.initialize()
        assert store.counters[PREFIX + "attempt"].value >= 2
        assert [host.healthy for host in cluster.hosts] == [True, False]
        assert store.gauges["cluster.svc.membership_healthy"].value == 1
        await cluster.close()
        server.stop()

    asyncio.run(scenario())


def eds_cluster(health_check: dict[str, Any], **fields: Any) -> EdsCluster:
    data = {"name": "svc", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}},
            "health_checks": [health_check], **fields}
    cluster = build_cluster(parse_message(data, ClusterProto), "clusters[0]", Store(), random.Random(1))
    assert isinstance(cluster, EdsCluster)
    return cluster


def assignment(*ips: str) -> ClusterLoadAssignment:
    return parse_message({"cluster_name": "svc", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": 80}}}} for ip in ips]}]},
        ClusterLoadAssignment)


def pass_checks(cluster: Cluster, outcome: str = hc.SUCCESS) -> None:
    checker = cluster.health_checker
    assert checker is not None
    for session in list(checker.sessions.values()):
        checker.record(session, outcome)


def test_removed_hosts_stay_until_they_fail_their_checks():
    cluster = eds_cluster(check(unhealthy_threshold=1))
    cluster.apply_assignment(assignment("10.0.0.1", "10.0.0.2"))
    pass_checks(cluster)
    leaving = cluster.hosts[1]
    cluster.apply_assignment(assignment("10.0.0.1"))
    assert leaving in cluster.hosts and leaving.health_flags == "/pending_dynamic_removal" and leaving.healthy
    pass_checks(cluster, hc.NETWORK)
    assert [host.ip for host in cluster.hosts] == ["10.0.0.1"]  # the pending one failed: gone
    assert cluster.hosts[0].failed_active_hc and cluster.stats.membership_total.value == 1
    cluster.apply_assignment(assignment("10.0.0.1", "10.0.0.3"))
    assert [host.ip for host in cluster.hosts] == ["10.0.0.1", "10.0.0.3"]


def test_pending_host_that_comes_back_is_kept_and_ignore_health_on_host_removal_drops_at_once():
    cluster = eds_cluster(check())
    cluster.apply_assignment(assignment("10.0.0.1", "10.0.0.2"))
    pass_checks(cluster)
    second = cluster.hosts[1]
    cluster.apply_assignment(assignment("10.0.0.1"))
    cluster.apply_assignment(assignment("10.0.0.1", "10.0.0.2"))
    assert cluster.hosts[1] is second and second.health_flags == "healthy"
    eager = eds_cluster(check(), ignore_health_on_host_removal=True)
    eager.apply_assignment(assignment("10.0.0.1", "10.0.0.2"))
    pass_checks(eager)
    eager.apply_assignment(assignment("10.0.0.1"))
    assert [host.ip for host in eager.hosts] == ["10.0.0.1"]


def test_passing_checks_uneject_outliers():
    cluster = eds_cluster(check(), outlier_detection={"consecutive_5xx": 1, "max_ejection_percent": 100})
    cluster.apply_assignment(assignment("10.0.0.1", "10.0.0.2"))
    pass_checks(cluster)
    host = cluster.hosts[0]
    host.outlier.put_http_status(500)
    assert host.health_flags == "/failed_outlier_check"
    pass_checks(cluster)
    assert host.healthy


# --- a real proxy ------------------------------------------------------------------------


class HealthEndpoint:
    """A backend whose /healthz answers 503 while ``failing`` is set; everything else gets 200."""

    def __init__(self) -> None:
        self.failing = threading.Event()
        self.backend = RawBackend(self._serve)

    def _serve(self, conn: BackendConnection) -> None:
        while (request := conn.read_request()) is not None:
            status = 503 if request.target == "/healthz" and self.failing.is_set() else 200
            conn.sock.sendall(encode_response(status, [("x-served-by", "switchable")], b"ok"))


def host_flags(proxy: ProxyProcess, port: int) -> str:
    """The host's health_flags line of the text /clusters."""
    marker = f":{port}::health_flags::"
    for line in proxy.admin("GET", "/clusters")[1].splitlines():
        if marker in line:
            return line.split(marker, 1)[1]
    return ""


@pytest.mark.integration
def test_proxy_http_health_check_takes_a_backend_out_and_back(tmp_path: Path):
    endpoint = HealthEndpoint()
    # the backend's answer decides, never the check timeout: it is far longer than any load delays a reply
    health_check = check(interval="0.05s", unhealthy_threshold=2, healthy_threshold=2, timeout="10s")
    with endpoint.backend, echo_backend("a") as port_a, echo_backend("b") as port_b:
        port = endpoint.backend.port
        cluster = static_cluster("svc", [port_a, port_b, port], health_checks=[health_check])
        with http_proxy(tmp_path, simple_route("svc"), [cluster]) as (proxy, listen_port):
            assert host_flags(proxy, port) == "healthy"  # warm-up waited for the first checks
            endpoint.failing.set()
            assert wait_until(lambda: host_flags(proxy, port) == FAILED_ACTIVE_HC)
            assert proxy.stats()[PREFIX + "healthy"] == 2
            assert all(get(listen_port, "/").header("x-served-by") != "switchable" for _ in range(6))
            endpoint.failing.clear()
            assert wait_until(lambda: host_flags(proxy, port) == "healthy")
            stats = proxy.stats()
            assert stats[PREFIX + "healthy"] == 3 and stats[PREFIX + "failure"] >= 1
            assert stats[PREFIX + "attempt"] >= stats[PREFIX + "success"] + stats[PREFIX + "failure"]
            assert "switchable" in {get(listen_port, "/").header("x-served-by") for _ in range(6)}


@pytest.mark.integration
def test_proxy_tcp_health_check_marks_a_closed_port_down_and_up(tmp_path: Path):
    closed_port = free_port()
    health_check = check(tcp_health_check={}, interval="0.05s", healthy_threshold=1)
    with echo_backend("live") as live_port:
        cluster = static_cluster("svc", [live_port, closed_port], health_checks=[health_check])
        with http_proxy(tmp_path, simple_route("svc"), [cluster]) as (proxy, listen_port):
            assert host_flags(proxy, closed_port) == FAILED_ACTIVE_HC
            assert host_flags(proxy, live_port) == "healthy"
            assert proxy.stats()[PREFIX + "network_failure"] >= 1
            assert all(get(listen_port, "/").json()["server"] == "live" for _ in range(4))
            late = start_in_thread("late", port=closed_port)
            try:
                assert wait_until(lambda: host_flags(proxy, closed_port) == "healthy")
                assert "late" in {get(listen_port, "/").json()["server"] for _ in range(6)}
            finally:
                late.shutdown()
                late.server_close()
