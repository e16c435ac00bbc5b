"""The adaptive concurrency filter: admission, Envoy's local reply, sampling at stream end,
in-process over a fake transport; then a real proxy in front of a backend that serialises
its requests, under 50 concurrent clients."""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from backends import (
    BackendConnection,
    Client,
    RawBackend,
    encode_request,
    encode_response,
    http_proxy,
    wait_until,
)
from proxy_harness import simple_route, static_cluster
from tulle.config.loader import parse_message
from tulle.filters.http.adaptive_concurrency.config import AdaptiveConcurrencyFactory
from tulle.filters.http.base import CONTINUE, STOP, HttpFilter
from tulle.filters.network.http_connection_manager.config import HcmConfig, HttpConnectionManagerFactory
from tulle.filters.network.http_connection_manager.connection_manager import HttpConnection
from tulle.http.headers import HeaderMap
from tulle.server.context import DownstreamConnection, FactoryContext, ServerState
from tulle.stats.store import Store
from tulle.stream_info import StreamInfo

TYPE = "type.googleapis.com/envoy.extensions.filters.http.adaptive_concurrency.v3.AdaptiveConcurrency"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
STATS = "http.ingress.adaptive_concurrency.gradient_controller."


def adaptive(min_concurrency: int = 2, request_count: int = 50, **extra: Any) -> dict[str, Any]:
    return {"name": "envoy.filters.http.adaptive_concurrency", "typed_config": {
        "@type": TYPE,
        "gradient_controller_config": {
            "concurrency_limit_params": {"concurrency_update_interval": "0.1s"},
            "min_rtt_calc_params": {"interval": "30s", "request_count": request_count,
                                    "min_concurrency": min_concurrency, "jitter": {"value": 0}},
        },
        **extra,
    }}


# --------------------------------------------------------------------------- in-process harness


class FakeTransport:
    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: HttpConnection) -> None:
        self.loop = loop
        self.protocol = protocol
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    abort = close


class Hold(HttpFilter):
    """Keeps the request from the router: it stays outstanding until its connection goes."""

    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        return STOP


class HoldFactory:
    name = "hold"
    encodes = False

    def create_filter(self, stream: Any) -> HttpFilter:
        return Hold(stream)


class MarkHealthCheck(HttpFilter):
    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        self.stream.info.health_check = headers.get("x-health-check") is not None
        return CONTINUE


class MarkHealthCheckFactory:
    name = "mark"
    encodes = False

    def create_filter(self, stream: Any) -> HttpFilter:
        return MarkHealthCheck(stream)


class LogRecorder:
    def __init__(self) -> None:
        self.infos: list[StreamInfo] = []

    def log(self, info: StreamInfo) -> None:
        self.infos.append(info)


class Proxy:
    def __init__(self, filter_config: dict[str, Any], *, hold: bool = False) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = Store()
        doc = {
            "stat_prefix": "ingress",
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
            "http_filters": [filter_config, ROUTER],
        }
        ctx = FactoryContext(stats=self.store, cluster_manager=None, server=ServerState(),  # type: ignore[arg-type]
                             loop=self.loop)
        self.config: HcmConfig = HttpConnectionManagerFactory(
            parse_message(doc, hcm_pb2.HttpConnectionManager), "hcm", ctx).config
        self.factory: AdaptiveConcurrencyFactory = self.config.filter_factories[0]
        self.config.filter_factories.insert(0, MarkHealthCheckFactory())
        if hold:
            self.config.filter_factories.insert(2, HoldFactory())
        self.log = LogRecorder()
        self.config.access_loggers = [self.log]

    def request(self, headers: list[tuple[str, str]] | None = None) -> tuple[HttpConnection, FakeTransport]:
        downstream = DownstreamConnection(("127.0.0.1", 40000), ("127.0.0.1", 10000), "ingress")
        connection = HttpConnection(self.config, downstream)
        transport = FakeTransport(self.loop, connection)
        connection.connection_made(transport)  # type: ignore[arg-type]
        connection.data_received(encode_request("GET", "/", headers or []))
        return connection, transport

    def run(self) -> None:
        self.loop.run_until_complete(asyncio.sleep(0))

    def stat(self, name: str) -> int:
        return self.store.counters.get(STATS + name, self.store.gauges.get(STATS + name)).value  # type: ignore[union-attr]


@pytest.fixture
def proxies() -> Iterator[list[Proxy]]:
    made: list[Proxy] = []
    yield made
    for proxy in made:
        proxy.loop.close()


def test_blocked_request_gets_envoys_local_reply_and_is_counted(proxies: list[Proxy]) -> None:
    proxy = Proxy(adaptive(min_concurrency=2), hold=True)
    proxies.append(proxy)
    held = [proxy.request(), proxy.request()]
    assert all(not transport.data for _, transport in held)
    _, blocked = proxy.request()
    head, _, body = bytes(blocked.data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"content-type: text/plain" in head
    assert body == b"reached concurrency limit"
    assert proxy.stat("rq_blocked") == 1
    (info,) = proxy.log.infos
    assert info.response_code == 503
    assert info.response_code_details == "reached_concurrency_limit"
    assert info.response_flags == []  # Envoy sets no response flag for it
    # a held request whose client goes away gives its slot back, without a latency sample
    held[0][1].close()
    proxy.run()
    assert proxy.factory.controller.outstanding == 1
    assert proxy.factory.controller.samples == []
    _, admitted = proxy.request()
    assert not admitted.data


def test_custom_status(proxies: list[Proxy]) -> None:
    proxy = Proxy(adaptive(min_concurrency=1, concurrency_limit_exceeded_status={"code": 429}), hold=True)
    proxies.append(proxy)
    proxy.request()
    _, blocked = proxy.request()
    assert bytes(blocked.data).startswith(b"HTTP/1.1 429 ")


def test_completed_responses_are_sampled_when_the_stream_ends(proxies: list[Proxy]) -> None:
    proxy = Proxy(adaptive(min_concurrency=1, request_count=3))
    proxies.append(proxy)
    controller = proxy.factory.controller
    for expected in (1, 2):
        _, transport = proxy.request()
        assert bytes(transport.data).startswith(b"HTTP/1.1 200 ")
        assert len(controller.samples) == expected
        assert controller.outstanding == 0
    proxy.request()  # the third sample completes the minRTT window
    assert controller.samples == [] and not controller.in_min_rtt_window
    assert proxy.store.gauges[STATS + "min_rtt_calculation_active"].value == 0


def test_health_checks_are_neither_limited_nor_sampled(proxies: list[Proxy]) -> None:
    proxy = Proxy(adaptive(min_concurrency=1), hold=True)
    proxies.append(proxy)
    proxy.request()
    for _ in range(3):
        _, transport = proxy.request([("x-health-check", "1")])
        assert not transport.data  # held by the next filter, not refused
    assert proxy.factory.controller.outstanding == 1
    assert proxy.stat("rq_blocked") == 0


def test_disabled_filter_never_blocks(proxies: list[Proxy]) -> None:
    proxy = Proxy(adaptive(min_concurrency=1, enabled={"default_value": False, "runtime_key": "ac"}), hold=True)
    proxies.append(proxy)
    for _ in range(3):
        _, transport = proxy.request()
        assert not transport.data
    assert not proxy.factory.controller.started


# --------------------------------------------------------------------------- a real proxy, a saturated backend


class SerialBackend:
    """Answers one request at a time, each after ``service_time``: latency grows with concurrency."""

    def __init__(self, service_time: float) -> None:
        self.service_time = service_time
        self.lock = threading.Lock()
        self.count_lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def __call__(self, conn: BackendConnection) -> None:
        while conn.read_request() is not None:
            with self.count_lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            with self.lock:
                time.sleep(self.service_time)
            with self.count_lock:
                self.in_flight -= 1
            conn.sock.sendall(encode_response(200, body=b"ok"))


def test_saturated_backend_gets_fast_503s_instead_of_a_queue(tmp_path: Path) -> None:
    backend_handler = SerialBackend(0.02)
    clients = 50
    results: list[tuple[int, bytes, float]] = []
    results_lock = threading.Lock()
    stop = threading.Event()

    def client(port: int) -> None:
        mine = []
        with Client(port, timeout=30) as connection:
            while not stop.is_set():
                started = time.monotonic()
                response = connection.request("GET", "/")
                mine.append((response.status, response.body, time.monotonic() - started))
                if response.header("connection") == "close":
                    break
                if response.status == 503:
                    time.sleep(0.01)  # a polite client backs off (and the test stays light on CPU)
        with results_lock:
            results.extend(mine)

    with RawBackend(backend_handler) as backend, http_proxy(
            tmp_path, simple_route("serial"), [static_cluster("serial", [backend.port])],
            http_filters=[adaptive(min_concurrency=2, request_count=5), ROUTER]) as (proxy, port):
        threads = [threading.Thread(target=client, args=(port,), daemon=True) for _ in range(clients)]
        for thread in threads:
            thread.start()

        def saturated() -> bool:
            """The controller measured its min RTT and both outcomes have a sample to compare."""
            stats = proxy.stats()
            return (stats[STATS + "min_rtt_msecs"] > 0 and stats[STATS + "rq_blocked"] >= 20
                    and stats.get("cluster.serial.upstream_rq_200", 0) >= 20)

        assert wait_until(saturated, 60)
        stop.set()
        for thread in threads:
            thread.join(30)
        stats = proxy.stats()

    served = [elapsed for status, _, elapsed in results if status == 200]
    shed = [(body, elapsed) for status, body, elapsed in results if status == 503]
    assert served and shed, (len(served), len(shed))
    assert {body for body, _ in shed} == {b"reached concurrency limit"}
    assert {status for status, _, _ in results} == {200, 503}
    # refused at once rather than queued behind the backend
    assert statistics.median(elapsed for _, elapsed in shed) < statistics.median(served)
    limit = stats[STATS + "concurrency_limit"]
    assert 2 <= limit < clients
    assert stats[STATS + "rq_blocked"] == len(shed)
    assert stats[STATS + "min_rtt_msecs"] > 0
    # the backend never saw the clients' concurrency: the proxy held it to its limit
    assert backend_handler.max_in_flight < clients
