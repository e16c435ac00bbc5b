"""The fault filter: Envoy's delays, aborts, header control, matching, limits and per-route configs.

Most cases run the real connection manager, fault filter and router in-process over a fake
transport, with the percentages' random draws injected; a module-scoped real ``tulle proxy``
then checks the same behaviour end to end (access log flags, stats, upstream traffic).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.config.bootstrap.v3.bootstrap_pb2 import LayeredRuntime
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from backends import Client, encode_request, file_access_log, http_proxy, read_lines, wait_until
from proxy_harness import static_cluster
from tulle.config.loader import parse_message
from tulle.filters.http.base import CONTINUE, STOP, HttpFilter
from tulle.filters.http.fault.config import FaultFactory
from tulle.filters.http.fault.filter import FaultFilter
from tulle.filters.network.http_connection_manager.config import HcmConfig, HttpConnectionManagerFactory
from tulle.filters.network.http_connection_manager.connection_manager import HttpConnection
from tulle.http.headers import HeaderMap
from tulle.router.route_table import WEIGHTED_CLUSTER_RANDOM_VALUE
from tulle.runtime import Runtime
from tulle.samples.echo_server import start_in_thread
from tulle.server.context import DownstreamConnection, FactoryContext, ServerState
from tulle.stats.store import Store
from tulle.stream_info import StreamInfo

FIELD = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
FAULT = "envoy.filters.http.fault"
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
OK_ROUTE = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
STATS = "http.ingress_http.fault."


def fault_config(**fault: Any) -> dict[str, Any]:
    return {"@type": FAULT_TYPE, **fault}


def abort(status: int = 503, numerator: int = 100, **extra: Any) -> dict[str, Any]:
    return {"abort": {"http_status": status, "percentage": {"numerator": numerator}}, **extra}


def delay(duration: str = "0.02s", numerator: int = 100, **extra: Any) -> dict[str, Any]:
    return {"delay": {"fixed_delay": duration, "percentage": {"numerator": numerator}}, **extra}


# --------------------------------------------------------------------------- in-process harness


class RecordingClusters:
    """A cluster manager without clusters that remembers what the router asked for (it answers NC)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def get(self, name: str) -> None:
        self.asked.append(name)


class FakeTransport:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.data = bytearray()
        self.paused = False
        self.closed = False
        self.protocol: HttpConnection | None = None

    def write(self, data: bytes) -> None:
        self.data += data

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.call_soon(self.protocol.connection_lost, None)  # type: ignore[union-attr]

    abort = close


class Recorder(HttpFilter):
    """Placed between the fault filter and the router: records what the chain hands on
    (and with ``hold`` keeps the request from the router, which would answer and end it)."""

    __slots__ = ("calls", "hold")

    def __init__(self, stream: Any, calls: list[tuple[str, Any, bool]], hold: bool) -> None:
        self.stream = stream
        self.calls = calls
        self.hold = hold

    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        self.calls.append(("headers", headers.path, end_stream))
        return STOP if self.hold else CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        self.calls.append(("data", data, end_stream))
        return CONTINUE


class RecorderFactory:
    name = "recorder"
    encodes = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, bool]] = []
        self.hold = False

    def create_filter(self, stream: Any) -> Recorder:
        return Recorder(stream, self.calls, self.hold)


class LogRecorder:
    def __init__(self) -> None:
        self.infos: list[StreamInfo] = []

    def log(self, info: StreamInfo) -> None:
        self.infos.append(info)


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class Proxy:
    """One HCM (fault filter, optional recorder, router) on its own event loop."""

    def __init__(self, fault: dict[str, Any] | None, *, routes: list[dict[str, Any]] | None = None,
                 vhost: dict[str, Any] | None = None, route_config: dict[str, Any] | None = None,
                 draws: Callable[[], int] | None = None, recorder: bool = False, filter_name: str = FAULT,
                 runtime: Runtime | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self.store = Store()
        self.clusters = RecordingClusters()
        fault_filter: dict[str, Any] = {"name": filter_name, "typed_config": fault_config(**(fault or {}))}
        doc = {
            "stat_prefix": "ingress_http",
            "route_config": {"name": "local", "validate_clusters": False, **(route_config or {}), "virtual_hosts": [
                {"name": "all", "domains": ["*"], "routes": routes or [OK_ROUTE], **(vhost or {})}]},
            "http_filters": [fault_filter, ROUTER],
        }
        ctx = FactoryContext(stats=self.store, cluster_manager=self.clusters,  # type: ignore[arg-type]
                             server=ServerState(), loop=self.loop)
        if runtime is not None:
            ctx.runtime = runtime
        self.config: HcmConfig = HttpConnectionManagerFactory(
            parse_message(doc, hcm_pb2.HttpConnectionManager), FIELD, ctx).config
        self.fault: FaultFactory = self.config.filter_factories[0]
        self.draw_count = 0
        if draws is not None:
            def counted() -> int:
                self.draw_count += 1
                return draws()

            self.fault.random_value = counted
        self.recorder = RecorderFactory()
        if recorder:
            self.config.filter_factories.insert(1, self.recorder)
        self.log = LogRecorder()
        self.config.access_loggers = [self.log]

    def close(self) -> None:
        self.loop.close()

    def connect(self) -> tuple[HttpConnection, FakeTransport]:
        downstream = DownstreamConnection(("127.0.0.1", 40000), ("127.0.0.1", 10000), "ingress")
        connection = HttpConnection(self.config, downstream)
        transport = FakeTransport(self.loop)
        transport.protocol = connection
        connection.connection_made(transport)  # type: ignore[arg-type]
        return connection, transport

    def run(self, seconds: float) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def request(self, path: str = "/", headers: list[tuple[str, str]] | None = None,
                body: bytes | None = None, method: str = "GET", wait: float = 0.0) -> Response | None:
        """One request on a new connection; the response, if any came within ``wait`` seconds."""
        connection, transport = self.connect()
        connection.data_received(encode_request(method, path, headers or [], body))
        if wait:
            self.run(wait)
        return parse_response(bytes(transport.data))

    def counter(self, name: str) -> int:
        return self.store.counters[STATS + name].value

    def active_faults(self) -> int:
        return self.store.gauges[STATS + "active_faults"].value


def parse_response(data: bytes) -> Response | None:
    head, separator, rest = data.partition(b"\r\n\r\n")
    if not separator:
        return None
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    return Response(int(lines[0].split(" ")[1]), headers, rest[:length])


@pytest.fixture
def proxies() -> Iterator[Callable[..., Proxy]]:
    made: list[Proxy] = []

    def make(fault: dict[str, Any] | None, **kwargs: Any) -> Proxy:
        made.append(Proxy(fault, **kwargs))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()


def always(value: int) -> Callable[[], int]:
    return lambda: value


def sequence(*values: int) -> Callable[[], int]:
    it = iter(values)
    return lambda: next(it)


# --------------------------------------------------------------------------- aborts


def test_abort_answers_with_envoys_local_reply(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies(abort(503))
    response = proxy.request()
    assert response is not None and response.status == 503
    assert response.body == b"fault filter abort"
    assert response.headers["content-type"] == "text/plain"
    (info,) = proxy.log.infos
    assert info.response_flags == ["FI"]
    assert info.response_code_details == "fault_filter_abort"
    assert proxy.counter("aborts_injected") == 1
    assert proxy.counter("delays_injected") == 0
    assert proxy.active_faults() == 0  # the request is over
    assert proxy.clusters.asked == []  # the router never ran


@pytest.mark.parametrize(
    ("numerator", "denominator", "draw", "aborted"),
    [
        (30, "HUNDRED", 129, True),  # 129 % 100 = 29 < 30
        (30, "HUNDRED", 130, False),
        (1, "TEN_THOUSAND", 20_000, True),
        (1, "TEN_THOUSAND", 20_001, False),
        (250_000, "MILLION", 1_249_999, True),
        (250_000, "MILLION", 1_250_000, False),
        (101, "HUNDRED", 99, True),  # over 100%: always
    ],
)
def test_a_percentage_is_one_draw_modulo_the_denominator(proxies: Callable[..., Proxy], numerator: int,
                                                          denominator: str, draw: int, aborted: bool) -> None:
    proxy = proxies({"abort": {"http_status": 500, "percentage": {"numerator": numerator,
                                                                 "denominator": denominator}}},
                    draws=always(draw))
    response = proxy.request()
    assert response is not None and response.status == (500 if aborted else 200)
    assert proxy.draw_count == 1


def test_zero_percent_does_nothing_and_draws_nothing(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies({**abort(503, 0), **delay("1s", 0)}, draws=always(0))
    response = proxy.request()
    assert response is not None and response.status == 200 and response.body == b"ok"
    assert proxy.draw_count == 0
    assert proxy.log.infos[0].response_flags == []
    assert proxy.counter("aborts_injected") == proxy.counter("delays_injected") == 0


def test_grpc_abort_of_a_plain_http_request_is_200_with_envoys_body(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies({"abort": {"grpc_status": 14, "percentage": {"numerator": 100}}})
    response = proxy.request()
    assert response is not None and response.status == 200
    assert response.body == b"fault filter abort"
    assert proxy.log.infos[0].response_flags == ["FI"]


def test_grpc_request_gets_a_trailers_only_style_grpc_reply(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies({"abort": {"grpc_status": 8, "percentage": {"numerator": 100}}})
    response = proxy.request("/svc/Method", [("content-type", "application/grpc")], body=b"", method="POST")
    assert response is not None and response.status == 200
    assert response.headers["grpc-status"] == "8"
    assert response.headers["grpc-message"] == "fault filter abort"
    assert response.headers["content-type"] == "application/grpc"
    assert response.body == b""


def test_http_abort_of_a_grpc_request_maps_the_status_like_envoy(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies(abort(503))
    response = proxy.request("/svc/M", [("content-type", "application/grpc+proto")], body=b"", method="POST")
    assert response is not None and response.status == 200
    assert response.headers["grpc-status"] == "14"  # UNAVAILABLE


# --------------------------------------------------------------------------- delays


def test_a_delay_stops_the_chain_on_a_timer_then_continues(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies(delay("0.05s"), recorder=True)
    connection, transport = proxy.connect()
    connection.data_received(encode_request("GET", "/"))
    # the loop has not run: the request waits on the timer, nothing is sent, nothing is forwarded
    assert transport.data == b""
    assert proxy.recorder.calls == []
    assert proxy.active_faults() == 1
    assert proxy.counter("delays_injected") == 1
    wait_until_response(proxy, transport)
    response = parse_response(bytes(transport.data))
    assert response is not None and response.status == 200 and response.body == b"ok"
    assert proxy.recorder.calls == [("headers", "/", True)]
    assert proxy.log.infos[0].response_flags == ["DI"]
    assert proxy.active_faults() == 0


def wait_until_response(proxy: Proxy, transport: FakeTransport, limit: float = 2.0) -> None:
    deadline = time.monotonic() + limit
    while parse_response(bytes(transport.data)) is None and time.monotonic() < deadline:
        proxy.run(0.01)


def test_delay_then_abort_draws_the_abort_after_the_delay(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies({**delay("0.02s"), **abort(502)}, draws=always(0))
    connection, transport = proxy.connect()
    connection.data_received(encode_request("GET", "/"))
    assert proxy.draw_count == 1  # only the delay so far
    wait_until_response(proxy, transport)
    response = parse_response(bytes(transport.data))
    assert response is not None and response.status == 502
    assert proxy.draw_count == 2
    assert proxy.log.infos[0].response_flags == ["DI", "FI"]
    assert proxy.counter("delays_injected") == proxy.counter("aborts_injected") == 1
    assert proxy.active_faults() == 0


def test_an_abort_is_drawn_when_no_delay_is(proxies: Callable[..., Proxy]) -> None:
    # draws: delay 50 (not < 50: no delay), then abort 0
    proxy = proxies({**delay("5s", 50), **abort(500, 50)}, draws=sequence(50, 0))
    response = proxy.request()
    assert response is not None and response.status == 500
    assert proxy.log.infos[0].response_flags == ["FI"]


def test_the_body_waits_during_the_delay_and_follows_the_headers(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies(delay("0.03s"), recorder=True)
    proxy.recorder.hold = True
    connection, _ = proxy.connect()
    connection.data_received(encode_request("POST", "/upload", [("content-length", "10")]) + b"01234")
    connection.data_received(b"56789")
    assert proxy.recorder.calls == []
    proxy.run(0.1)
    assert proxy.recorder.calls == [("headers", "/upload", False), ("data", b"01234", False),
                                    ("data", b"56789", False), ("data", b"", True)]


def test_a_body_over_the_buffer_limit_pauses_the_client_until_the_delay_ends(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies(delay("0.03s"), recorder=True)
    proxy.recorder.hold = True
    proxy.fault.buffer_limit = 8
    connection, transport = proxy.connect()
    connection.data_received(encode_request("POST", "/", [("content-length", "20")]) + b"x" * 12)
    assert transport.paused
    proxy.run(0.1)
    assert not transport.paused
    assert ("data", b"x" * 12, False) in proxy.recorder.calls


def test_a_client_that_leaves_during_the_delay_cancels_it(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies(delay("0.05s"), recorder=True, routes=[{"match": {"prefix": "/"}, "route": {"cluster": "c"}}])
    connection, transport = proxy.connect()
    connection.data_received(encode_request("GET", "/"))
    fault_filter = connection.streams[0].filters[0]
    assert isinstance(fault_filter, FaultFilter)
    timer = fault_filter.timer
    assert timer is not None
    connection.connection_lost(None)
    assert timer.cancelled()
    assert proxy.active_faults() == 0
    proxy.run(0.1)  # well past the delay
    assert proxy.recorder.calls == [] and proxy.clusters.asked == []
    assert transport.data == b""
    assert proxy.log.infos[0].response_flags == ["DI", "DC"]
    assert proxy.store.counters["http.ingress_http.downstream_rq_rx_reset"].value == 1


def test_a_delay_ending_in_a_timeout_reply_is_cancelled(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies(delay("10s"))
    proxy.config.request_timeout = 0.02  # the request times out first
    proxy.config.stream_timeout_span = 0.02
    connection, transport = proxy.connect()
    connection.data_received(encode_request("POST", "/", [("content-length", "5")]))
    fault_filter = connection.streams[0].filters[0]
    timer = fault_filter.timer  # type: ignore[attr-defined]
    wait_until_response(proxy, transport)
    response = parse_response(bytes(transport.data))
    assert response is not None and response.status == 408
    assert timer.cancelled()
    assert proxy.active_faults() == 0


# --------------------------------------------------------------------------- header control


HEADER_FAULTS = {"delay": {"header_delay": {}, "percentage": {"numerator": 100}},
                 "abort": {"header_abort": {}, "percentage": {"numerator": 100}}}


@pytest.mark.parametrize(
    ("headers", "delayed"),
    [
        ([("x-envoy-fault-delay-request", "20")], True),
        ([("x-envoy-fault-delay-request", " 20 ")], True),  # SimpleAtoi allows surrounding spaces
        ([("x-envoy-fault-delay-request", "0")], False),  # Envoy delays only for more than 0 ms
        ([("x-envoy-fault-delay-request", "soon")], False),
        ([("x-envoy-fault-delay-request", "-5")], False),
        ([], False),
        ([("x-envoy-fault-delay-request", "20"), ("x-envoy-fault-delay-request-percentage", "0")], False),
        ([("x-envoy-fault-delay-request", "20"), ("x-envoy-fault-delay-request-percentage", "100")], True),
        ([("x-envoy-fault-delay-request", "20"), ("x-envoy-fault-delay-request-percentage", "bad")], True),
    ],
)
def test_header_delay(proxies: Callable[..., Proxy], headers: list[tuple[str, str]], delayed: bool) -> None:
    proxy = proxies({"delay": HEADER_FAULTS["delay"]}, draws=always(0))
    connection, transport = proxy.connect()
    connection.data_received(encode_request("GET", "/", headers))
    assert (transport.data == b"") == delayed
    wait_until_response(proxy, transport)
    response = parse_response(bytes(transport.data))
    assert response is not None and response.status == 200
    assert proxy.counter("delays_injected") == int(delayed)


def test_a_header_percentage_cannot_raise_the_configured_one(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies({"abort": {"header_abort": {}, "percentage": {"numerator": 10}}}, draws=always(50))
    response = proxy.request(headers=[("x-envoy-fault-abort-request", "503"),
                                      ("x-envoy-fault-abort-request-percentage", "100")])
    assert response is not None and response.status == 200  # 50 is not < min(100, 10)
    proxy.fault.random_value = always(5)
    response = proxy.request(headers=[("x-envoy-fault-abort-request", "503"),
                                      ("x-envoy-fault-abort-request-percentage", "6")])
    assert response is not None and response.status == 503
    response = proxy.request(headers=[("x-envoy-fault-abort-request", "503"),
                                      ("x-envoy-fault-abort-request-percentage", "5")])
    assert response is not None and response.status == 200


@pytest.mark.parametrize(
    ("headers", "status", "grpc_status"),
    [
        ([("x-envoy-fault-abort-request", "418")], 418, None),
        ([("x-envoy-fault-abort-request", "600")], 200, None),  # out of [200, 600): no abort
        ([("x-envoy-fault-abort-request", "199")], 200, None),
        ([("x-envoy-fault-abort-request", "teapot")], 200, None),
        ([], 200, None),
        ([("x-envoy-fault-abort-grpc-request", "14"), ("content-type", "application/grpc")], 200, "14"),
        # both: the valid HTTP status wins and the gRPC header is ignored
        ([("x-envoy-fault-abort-request", "503"), ("x-envoy-fault-abort-grpc-request", "14")], 503, None),
        ([("x-envoy-fault-abort-request", "700"), ("x-envoy-fault-abort-grpc-request", "5"),
          ("content-type", "application/grpc")], 200, "5"),
    ],
)
def test_header_abort(proxies: Callable[..., Proxy], headers: list[tuple[str, str]], status: int,
                      grpc_status: str | None) -> None:
    proxy = proxies({"abort": HEADER_FAULTS["abort"]})
    response = proxy.request(headers=headers, body=b"", method="POST")
    assert response is not None and response.status == status
    assert response.headers.get("grpc-status") == grpc_status
    aborted = status != 200 or grpc_status is not None
    assert proxy.counter("aborts_injected") == int(aborted)
    assert (response.body == b"ok") == (not aborted)


def test_a_grpc_abort_header_on_a_plain_request_answers_200_with_the_abort_body(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies({"abort": HEADER_FAULTS["abort"]})
    response = proxy.request(headers=[("x-envoy-fault-abort-grpc-request", "3")])
    assert response is not None and response.status == 200 and response.body == b"fault filter abort"
    assert proxy.log.infos[0].response_flags == ["FI"]


# --------------------------------------------------------------------------- which requests


def test_header_matchers_must_all_match(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies(abort(503, headers=[{"name": "x-user", "string_match": {"exact": "tester"}},
                                        {"name": "x-canary", "present_match": True}]))
    assert proxy.request(headers=[("x-user", "tester"), ("x-canary", "1")]).status == 503  # type: ignore[union-attr]
    assert proxy.request(headers=[("x-user", "tester")]).status == 200  # type: ignore[union-attr]
    assert proxy.request(headers=[("x-user", "other"), ("x-canary", "1")]).status == 200  # type: ignore[union-attr]


def test_downstream_nodes(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies(abort(503, downstream_nodes=["node-a"]))
    assert proxy.request(headers=[("x-envoy-downstream-service-node", "node-a")]).status == 503  # type: ignore[union-attr]
    assert proxy.request(headers=[("x-envoy-downstream-service-node", "node-b")]).status == 200  # type: ignore[union-attr]
    assert proxy.request().status == 200  # type: ignore[union-attr]


def test_upstream_cluster_matches_the_routes_cluster(proxies: Callable[..., Proxy]) -> None:
    routes = [{"match": {"prefix": "/a"}, "route": {"cluster": "a"}},
              {"match": {"prefix": "/h"}, "route": {"cluster_header": "x-cluster"}},
              {"match": {"prefix": "/direct"}, "direct_response": {"status": 204}}]
    proxy = proxies(abort(418, upstream_cluster="a"), routes=routes)
    assert proxy.request("/a").status == 418  # type: ignore[union-attr]
    assert proxy.request("/h", [("x-cluster", "a")]).status == 418  # type: ignore[union-attr]
    assert proxy.request("/h", [("x-cluster", "b")]).status == 503  # type: ignore[union-attr] # NC
    assert proxy.request("/h").status == 503  # type: ignore[union-attr]
    assert proxy.request("/direct").status == 204  # type: ignore[union-attr] # no route entry: no match
    assert proxy.request("/nowhere").status == 404  # type: ignore[union-attr]


def test_upstream_cluster_sees_the_weighted_pick_the_router_makes(proxies: Callable[..., Proxy],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    routes = [{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}}}]
    proxy = proxies(abort(418, upstream_cluster="b"), routes=routes)
    for value, picked in ((0, "a"), (1, "b"), (2, "a"), (3, "b")):
        monkeypatch.setattr("tulle.filters.http.fault.filter._getrandbits", lambda bits, value=value: value)
        proxy.clusters.asked.clear()
        response = proxy.request()
        assert response is not None
        if picked == "b":
            assert response.status == 418 and proxy.clusters.asked == []
        else:
            # not aborted: the router used the same draw, so it went for "a" (unknown here: NC)
            assert response.status == 503 and proxy.clusters.asked == ["a"]
        assert proxy.log.infos[-1].filter_state == {WEIGHTED_CLUSTER_RANDOM_VALUE: value}


def test_max_active_faults_overflows(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies({**delay("0.05s"), **abort(503, 0), "max_active_faults": 1})
    first, first_transport = proxy.connect()
    first.data_received(encode_request("GET", "/"))
    assert proxy.active_faults() == 1
    second = proxy.request()
    assert second is not None and second.status == 200  # no fault: the limit is reached
    assert proxy.counter("faults_overflow") == 1
    assert proxy.counter("delays_injected") == 1
    wait_until_response(proxy, first_transport)
    assert proxy.active_faults() == 0
    assert proxy.request(wait=0.1).status == 200  # type: ignore[union-attr]
    assert proxy.counter("delays_injected") == 2


def test_downstream_cluster_stats(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies(abort(503))
    proxy.request(headers=[("x-envoy-downstream-service-cluster", "web")])
    assert proxy.store.counters[STATS + "web.aborts_injected"].value == 1
    assert proxy.counter("aborts_injected") == 1
    quiet = proxies(abort(503, disable_downstream_cluster_stats=True))
    quiet.request(headers=[("x-envoy-downstream-service-cluster", "web")])
    assert STATS + "web.aborts_injected" not in quiet.store.counters


# --------------------------------------------------------------------------- per-route configuration


def per_route(fault: dict[str, Any], name: str = FAULT) -> dict[str, Any]:
    return {"typed_per_filter_config": {name: fault_config(**fault)}}


def test_route_config_replaces_the_filters_config(proxies: Callable[..., Proxy]) -> None:
    routes = [{**OK_ROUTE, "match": {"prefix": "/teapot"}, **per_route(abort(418))},
              {**OK_ROUTE, "match": {"prefix": "/calm"}, **per_route({})},
              OK_ROUTE]
    proxy = proxies(abort(503), routes=routes)
    assert proxy.request("/teapot").status == 418  # type: ignore[union-attr]
    assert proxy.request("/calm").status == 200  # type: ignore[union-attr] # an empty route config: no faults
    assert proxy.request("/other").status == 503  # type: ignore[union-attr]


def test_most_specific_level_wins(proxies: Callable[..., Proxy]) -> None:
    routes = [{**OK_ROUTE, "match": {"prefix": "/route"}, **per_route(abort(418))}, OK_ROUTE]
    proxy = proxies({}, routes=routes, vhost=per_route(abort(502)), route_config=per_route(abort(500)))
    assert proxy.request("/route").status == 418  # type: ignore[union-attr]
    assert proxy.request("/vhost").status == 502  # type: ignore[union-attr]
    only_global = proxies({}, route_config=per_route(abort(500)))
    assert only_global.request().status == 500  # type: ignore[union-attr]


def test_per_route_configs_follow_the_filters_name_in_http_filters(proxies: Callable[..., Proxy]) -> None:
    routes = [{**OK_ROUTE, "match": {"prefix": "/mine"}, **per_route(abort(418), "chaos")},
              {**OK_ROUTE, "match": {"prefix": "/canonical"}, **per_route(abort(418))}]
    proxy = proxies({}, routes=routes, filter_name="chaos")
    assert proxy.request("/mine").status == 418  # type: ignore[union-attr]
    assert proxy.request("/canonical").status == 200  # type: ignore[union-attr] # another filter's entry


def test_route_settings_bring_their_own_max_active_faults(proxies: Callable[..., Proxy]) -> None:
    routes = [{**OK_ROUTE, **per_route({**abort(503), "max_active_faults": 0})}]
    proxy = proxies(abort(500), routes=routes)
    assert proxy.request().status == 200  # type: ignore[union-attr]
    assert proxy.counter("faults_overflow") == 1


# --------------------------------------------------------------------------- a real proxy


@pytest.fixture(scope="module")
def real_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, int, Path]]:
    tmp_path = tmp_path_factory.mktemp("fault")
    log_path = tmp_path / "access.log"
    echo = start_in_thread("echo")
    try:
        def to_echo(prefix: str, fault: dict[str, Any] | None = None) -> dict[str, Any]:
            route = {"match": {"prefix": prefix}, "route": {"cluster": "echo"}}
            return {**route, **per_route(fault)} if fault is not None else route

        route_config = {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            to_echo("/abort", abort(503)),
            to_echo("/delay", delay("0.2s")),
            to_echo("/slow", delay("1s")),
            to_echo("/zero", {**abort(503, 0), **delay("1s", 0)}),
            to_echo("/"),
        ]}]}
        listener_fault = {"name": FAULT, "typed_config": fault_config(**HEADER_FAULTS)}
        with http_proxy(tmp_path, route_config, [static_cluster("echo", [echo.server_address[1]])],
                        http_filters=[listener_fault, ROUTER],
                        access_log=file_access_log(log_path, "%REQ(X-CASE)% %RESPONSE_CODE% %RESPONSE_FLAGS% "
                                                             "%RESPONSE_CODE_DETAILS%\n")) as (proxy, port):
            yield proxy, port, log_path
    finally:
        echo.shutdown()
        echo.server_close()


def log_line(log_path: Path, case: str) -> list[str]:
    def find() -> list[str] | None:
        if not log_path.exists():
            return None
        for line in log_path.read_text().splitlines():
            if line.startswith(case + " "):
                return line.split(" ")[1:]
        return None

    found = wait_until(find)
    assert found, f"no access log line for {case}: {read_lines(log_path, 0)}"
    return found


def real_request(port: int, case: str, path: str, headers: list[tuple[str, str]] | None = None,
                 body: bytes | None = None) -> Any:
    with Client(port) as client:
        return client.request("POST" if body is not None else "GET", path, [("x-case", case), *(headers or [])],
                              body)


def test_real_proxy_aborts_with_fi_in_the_access_log(real_proxy: tuple[Any, int, Path]) -> None:
    proxy, port, log_path = real_proxy
    before = proxy.stats()
    response = real_request(port, "abort", "/abort")
    assert response.status == 503 and response.body == b"fault filter abort"
    assert log_line(log_path, "abort") == ["503", "FI", "fault_filter_abort"]
    after = proxy.stats()
    assert after["http.ingress.fault.aborts_injected"] == before["http.ingress.fault.aborts_injected"] + 1
    assert after["cluster.echo.upstream_rq_total"] == before["cluster.echo.upstream_rq_total"]


def test_real_proxy_delays_then_forwards(real_proxy: tuple[Any, int, Path]) -> None:
    proxy, port, log_path = real_proxy
    before = proxy.stats()["http.ingress.fault.delays_injected"]
    response = real_request(port, "delay", "/delay", body=b"b" * 100_000)
    assert response.status == 200
    echoed = response.json()
    assert echoed["path"] == "/delay" and echoed["body_length"] == 100_000  # the held body followed
    assert log_line(log_path, "delay") == ["200", "DI", "via_upstream"]
    stats = proxy.stats()
    assert stats["http.ingress.fault.delays_injected"] == before + 1
    assert stats["http.ingress.fault.active_faults"] == 0


def test_real_proxy_header_controlled_faults(real_proxy: tuple[Any, int, Path]) -> None:
    _, port, log_path = real_proxy
    response = real_request(port, "header-abort", "/", [("x-envoy-fault-abort-request", "429")])
    assert response.status == 429 and response.body == b"fault filter abort"
    response = real_request(port, "header-delay", "/", [("x-envoy-fault-delay-request", "50")])
    assert response.status == 200 and response.json()["headers"]["x-envoy-fault-delay-request"] == "50"
    response = real_request(port, "header-none", "/")
    assert response.status == 200
    assert log_line(log_path, "header-abort") == ["429", "FI", "fault_filter_abort"]
    assert log_line(log_path, "header-delay") == ["200", "DI", "via_upstream"]
    assert log_line(log_path, "header-none") == ["200", "-", "via_upstream"]


def test_real_proxy_route_config_overrides_the_listeners(real_proxy: tuple[Any, int, Path]) -> None:
    _, port, log_path = real_proxy
    # the route's fixed 503 replaces the listener's header control: the header's 418 is not used
    response = real_request(port, "override", "/abort", [("x-envoy-fault-abort-request", "418")])
    assert response.status == 503
    # the route's 0% config replaces it too: the header asks for an abort in vain
    response = real_request(port, "override-zero", "/zero", [("x-envoy-fault-abort-request", "418")])
    assert response.status == 200
    assert log_line(log_path, "override-zero") == ["200", "-", "via_upstream"]


def test_real_proxy_zero_percent_does_nothing(real_proxy: tuple[Any, int, Path]) -> None:
    proxy, port, log_path = real_proxy
    before = proxy.stats()
    response = real_request(port, "zero", "/zero")
    assert response.status == 200 and response.json()["path"] == "/zero"
    assert log_line(log_path, "zero") == ["200", "-", "via_upstream"]
    after = proxy.stats()
    for name in ("delays_injected", "aborts_injected", "faults_overflow"):
        assert after[f"http.ingress.fault.{name}"] == before[f"http.ingress.fault.{name}"]


def test_real_proxy_client_leaving_during_a_delay_cancels_it(real_proxy: tuple[Any, int, Path]) -> None:
    proxy, port, log_path = real_proxy
    before = proxy.stats()
    client = Client(port)
    client.send(encode_request("GET", "/slow", [("x-case", "leaves")]))
    assert wait_until(lambda: proxy.stats()["http.ingress.fault.active_faults"] == 1)
    client.close()
    assert log_line(log_path, "leaves") == ["0", "DI,DC", "-"]
    assert proxy.stats()["http.ingress.fault.active_faults"] == 0
    time.sleep(1.1)  # past the 1 s delay: a timer left behind would now forward the request
    after = proxy.stats()
    assert after["cluster.echo.upstream_rq_total"] == before["cluster.echo.upstream_rq_total"]
    assert after["http.ingress.downstream_rq_rx_reset"] == before["http.ingress.downstream_rq_rx_reset"] + 1


def test_stats_are_in_the_admin_json(real_proxy: tuple[Any, int, Path]) -> None:
    proxy, _, _ = real_proxy
    names = set(proxy.stats())
    for name in ("delays_injected", "aborts_injected", "faults_overflow", "response_rl_injected", "active_faults"):
        assert f"http.ingress.fault.{name}" in names


# --------------------------------------------------------------------------- runtime overrides


def admin_runtime(**values: str) -> Runtime:
    """A runtime with an admin layer holding ``values`` (dots spelled as double underscores)."""
    runtime = Runtime.from_proto(parse_message({"layers": [{"name": "admin", "admin_layer": {}}]}, LayeredRuntime),
                                 "layered_runtime")
    runtime.merge_admin({key.replace("__", "."): value for key, value in values.items()})
    return runtime


def test_runtime_percent_and_status_override_the_configured_ones(proxies: Callable[..., Proxy]) -> None:
    # the fault-injection sandbox: faults at 0% in the config, switched on through the runtime
    runtime = admin_runtime()
    proxy = proxies({**abort(503, 0), **delay("3s", 0)}, runtime=runtime, draws=always(0))
    assert proxy.request().status == 200  # type: ignore[union-attr]
    assert proxy.draw_count == 0  # nothing can inject yet: no draw at all
    runtime.merge_admin({"fault.http.abort.abort_percent": "100", "fault.http.abort.http_status": "418"})
    response = proxy.request()
    assert response is not None and response.status == 418 and response.body == b"fault filter abort"
    assert proxy.log.infos[-1].response_flags == ["FI"]
    runtime.merge_admin({"fault.http.abort.abort_percent": ""})  # removed: back to the configured 0%
    assert proxy.request().status == 200  # type: ignore[union-attr]


def test_runtime_delay_percent_and_duration(proxies: Callable[..., Proxy]) -> None:
    runtime = admin_runtime(fault__http__delay__fixed_delay_percent="100", fault__http__delay__fixed_duration_ms="30")
    proxy = proxies(delay("60s", 0), runtime=runtime, recorder=True)
    connection, _ = proxy.connect()
    connection.data_received(encode_request("GET", "/"))
    assert proxy.recorder.calls == [] and proxy.counter("delays_injected") == 1
    proxy.run(0.2)  # 30 ms from the runtime, not the configured 60 s
    assert proxy.recorder.calls == [("headers", "/", True)]
    runtime.merge_admin({"fault.http.delay.fixed_duration_ms": "0"})  # Envoy delays only above 0 ms
    proxy.request()
    assert proxy.counter("delays_injected") == 1


@pytest.mark.parametrize(("value", "draw", "aborted"), [
    ("numerator: 1\ndenominator: TEN_THOUSAND", 10_000, True),  # a fractional percent
    ("numerator: 1\ndenominator: TEN_THOUSAND", 10_001, False),
    ('{"numerator": 20, "denominator": "HUNDRED"}', 119, True),  # JSON is YAML too
    ("7", 106, True),  # an integer: N out of 100
    ("7", 107, False),
    ("250", 99, True),  # above 100: always
    ("true", 0, False),  # not a percentage: the configured 0% stays
])
def test_runtime_percentages_are_read_as_envoy_reads_them(proxies: Callable[..., Proxy], value: str, draw: int,
                                                         aborted: bool) -> None:
    proxy = proxies(abort(503, 0), runtime=admin_runtime(fault__http__abort__abort_percent=value),
                    draws=always(draw))
    assert proxy.request().status == (503 if aborted else 200)  # type: ignore[union-attr]


def test_custom_runtime_keys_replace_envoys_names(proxies: Callable[..., Proxy]) -> None:
    runtime = admin_runtime(fault__http__abort__abort_percent="100", my__abort="100", my__status="429")
    proxy = proxies({**abort(503, 0), "abort_percent_runtime": "my.abort", "abort_http_status_runtime": "my.status"},
                    runtime=runtime)
    assert proxy.request().status == 429  # type: ignore[union-attr]
    runtime.merge_admin({"my.abort": ""})  # the default key is not read any more
    assert proxy.request().status == 200  # type: ignore[union-attr]


def test_runtime_status_outside_what_can_be_sent_keeps_the_configured_one(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies(abort(503), runtime=admin_runtime(fault__http__abort__http_status="99"))
    assert proxy.request().status == 503  # type: ignore[union-attr]


def test_runtime_grpc_status(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies({"abort": {"grpc_status": 14, "percentage": {"numerator": 100}}},
                    runtime=admin_runtime(fault__http__abort__grpc_status="4"))
    response = proxy.request("/svc/M", [("content-type", "application/grpc")], body=b"", method="POST")
    assert response is not None and response.headers["grpc-status"] == "4"


def test_downstream_cluster_keys_replace_the_general_percentages(proxies: Callable[..., Proxy]) -> None:
    runtime = admin_runtime(fault__http__abort__abort_percent="100", fault__http__web__abort__abort_percent="0",
                            fault__http__api__abort__abort_percent="100", fault__http__api__abort__http_status="502",
                            fault__http__abort__http_status="504")
    proxy = proxies(abort(503, 0), runtime=runtime)
    assert proxy.request().status == 504  # type: ignore[union-attr]  # no header: the general keys
    web = proxy.request(headers=[("x-envoy-downstream-service-cluster", "web")])
    assert web is not None and web.status == 200  # its own key says 0%, whatever the general one says
    api = proxy.request(headers=[("x-envoy-downstream-service-cluster", "api")])
    assert api is not None and api.status == 502
    other = proxy.request(headers=[("x-envoy-downstream-service-cluster", "other")])
    assert other is not None and other.status == 200  # no key of its own: the configured 0%
    assert proxy.counter("api.aborts_injected") == 1


def test_downstream_cluster_key_alone_makes_settings_candidates(proxies: Callable[..., Proxy]) -> None:
    proxy = proxies(delay("60s", 0), runtime=admin_runtime(fault__http__batch__delay__fixed_delay_percent="100",
                                                           fault__http__batch__delay__fixed_duration_ms="10"),
                    recorder=True)
    proxy.request(headers=[("x-envoy-downstream-service-cluster", "batch")])
    assert proxy.counter("delays_injected") == 1 and proxy.recorder.calls == []
    proxy.run(0.2)
    assert len(proxy.recorder.calls) == 1


def test_runtime_max_active_faults(proxies: Callable[..., Proxy]) -> None:
    runtime = admin_runtime(fault__http__max_active_faults="1")
    proxy = proxies(delay("1s", 100, max_active_faults=5), runtime=runtime, recorder=True)
    proxy.request()
    proxy.request()  # the runtime's limit of 1, not the configured 5
    assert proxy.counter("delays_injected") == 1 and proxy.counter("faults_overflow") == 1
    runtime.merge_admin({"fault.http.max_active_faults": ""})
    proxy.request()
    assert proxy.counter("delays_injected") == 2


def test_route_settings_read_the_runtime_too(proxies: Callable[..., Proxy]) -> None:
    runtime = admin_runtime(route__abort="100")
    route = {**OK_ROUTE, "typed_per_filter_config": {FAULT: fault_config(
        **abort(500, 0), abort_percent_runtime="route.abort")}}
    proxy = proxies(abort(503, 0), routes=[route], runtime=runtime)
    assert proxy.request().status == 500  # type: ignore[union-attr]


def test_static_layer_only(proxies: Callable[..., Proxy]) -> None:
    runtime = Runtime.from_proto(parse_message({"layers": [{"name": "base", "static_layer": {
        "fault": {"http": {"abort": {"abort_percent": 100}}}}}]}, LayeredRuntime), "layered_runtime")
    proxy = proxies(abort(503, 0), runtime=runtime)
    assert proxy.request().status == 503  # type: ignore[union-attr]
