"""The HTTP/2 connection manager against a real proxy process on loopback: HTTP/2 clients (prior
knowledge, h2c) through the shared filter chain and router to HTTP/1.1 upstreams."""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import h2.errors
import h2.settings
import pytest

from backends import Client, RawBackend, SlowReader, echo_backend, http_proxy, never_answer, wait_until
from h2_client import H2Client, H2Response
from proxy_harness import simple_route, static_cluster
from tulle.compiled import is_compiled


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    with echo_backend() as port:
        yield port


@pytest.fixture
def proxy(tmp_path: Path, echo_port: int) -> Iterator[tuple[object, int]]:
    with http_proxy(tmp_path, simple_route("echo"), [static_cluster("echo", [echo_port])]) as running:
        yield running


def echoed(response) -> dict:  # noqa: ANN001
    assert response.status == 200, response
    return json.loads(response.body)


def test_prior_knowledge_h2c_through_auto_codec(proxy: tuple[object, int]) -> None:
    process, port = proxy
    with H2Client(port) as client:
        response = client.request("GET", "/hello?x=1", [("x-custom", "yes")])
    request = echoed(response)
    assert (request["method"], request["path"]) == ("GET", "/hello?x=1")
    assert request["headers"]["host"] == "example.com"  # :authority becomes Host upstream
    assert request["headers"]["x-custom"] == "yes"
    assert "x-request-id" in request["headers"]
    assert response.header("server") == "envoy"
    # connection-specific headers of the HTTP/1 upstream's response never reach an HTTP/2 client
    assert response.header("connection") is None and response.header("transfer-encoding") is None
    stats = process.stats()
    assert stats["http.ingress.downstream_cx_http2_total"] == 1
    assert stats["http.ingress.downstream_rq_http2_total"] == 1
    assert stats.get("http.ingress.downstream_cx_http1_total", 0) == 0


def test_auto_codec_still_serves_http1_on_the_same_port(proxy: tuple[object, int]) -> None:
    process, port = proxy
    with Client(port) as client:
        assert client.request("GET", "/one").status == 200
    with H2Client(port) as client:
        assert client.request("GET", "/two").status == 200
    stats = process.stats()
    assert stats["http.ingress.downstream_cx_http1_total"] == 1
    assert stats["http.ingress.downstream_cx_http2_total"] == 1


def test_preface_split_over_reads_is_still_http2(proxy: tuple[object, int]) -> None:
    _, port = proxy
    client = H2Client.__new__(H2Client)
    raw = socket.create_connection(("127.0.0.1", port), timeout=15)
    raw.sendall(b"PRI * HT")  # AUTO must wait for the rest of the preface
    H2Client.__init__(client, port)  # a second connection, complete; then finish the first
    assert client.request("GET", "/").status == 200
    client.close()
    raw.sendall(b"TP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # rest + empty SETTINGS
    raw.settimeout(15)
    first = raw.recv(9)
    assert first[3] == 0x4  # the server's SETTINGS frame: spoken to as HTTP/2
    raw.close()


def test_many_concurrent_streams_on_one_connection(proxy: tuple[object, int]) -> None:
    process, port = proxy
    with H2Client(port) as client:
        streams = [client.send_request("GET", f"/stream/{i}") for i in range(25)]
        paths = [echoed(client.wait(stream_id))["path"] for stream_id in streams]
    assert paths == [f"/stream/{i}" for i in range(25)]
    assert process.stats()["http.ingress.downstream_cx_http2_total"] == 1


def test_request_body_without_length_goes_chunked_to_http1_upstream(proxy: tuple[object, int]) -> None:
    _, port = proxy
    body = bytes(range(256)) * 800  # 200 KiB: several DATA frames and window updates
    with H2Client(port) as client:
        response = client.request("POST", "/upload", body=body)
    request = echoed(response)
    assert request["body_length"] == len(body)
    assert request["headers"].get("transfer-encoding") == "chunked"


def test_request_body_with_content_length_keeps_it(proxy: tuple[object, int]) -> None:
    _, port = proxy
    with H2Client(port) as client:
        response = client.request("PUT", "/put", [("content-length", "5")], body=b"abcde")
    request = echoed(response)
    assert request["headers"]["content-length"] == "5" and request["body_length"] == 5


def test_cookie_crumbs_are_joined_for_http1(proxy: tuple[object, int]) -> None:
    _, port = proxy
    with H2Client(port) as client:
        response = client.request("GET", "/", [("cookie", "a=1"), ("cookie", "b=2")])
    assert echoed(response)["headers"]["cookie"] == "a=1; b=2"


def test_head_response_has_no_body(proxy: tuple[object, int]) -> None:
    _, port = proxy
    with H2Client(port) as client:
        response = client.request("HEAD", "/")
    assert response.status == 200 and response.ended and response.body == b""


def test_local_replies_are_http2_responses(tmp_path: Path, echo_port: int) -> None:
    route = {"virtual_hosts": [{"name": "only", "domains": ["known.example"],
                                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}]}
    with http_proxy(tmp_path, route, [static_cluster("echo", [echo_port])]) as (process, port):
        with H2Client(port) as client:
            missing = client.request("GET", "/", authority="unknown.example")
            ok = client.request("GET", "/", authority="known.example")
        assert missing.status == 404 and ok.status == 200
        assert process.stats()["http.ingress.no_route"] == 1


def test_invalid_authority_is_refused_and_never_forwarded(proxy: tuple[object, int]) -> None:
    process, port = proxy
    with H2Client(port) as client:
        response = client.request("GET", "/", authority="bad host")
        assert client.request("GET", "/").status == 200  # only that stream is refused
    # compiled, nghttp2's HTTP messaging checks reset the stream (PROTOCOL_ERROR), as under Envoy;
    # uncompiled (h2 does not check authority characters) the connection manager answers 400
    assert response.reset_code == h2.errors.ErrorCodes.PROTOCOL_ERROR or response.status == 400
    assert process.stats()["cluster.echo.upstream_rq_total"] == 1


def test_connect_is_refused_without_upgrade_config(proxy: tuple[object, int]) -> None:
    _, port = proxy
    with H2Client(port) as client:
        stream_id = client.conn.get_next_available_stream_id()
        client.conn.send_headers(stream_id, [(":method", "CONNECT"), (":authority", "example.com:443")])
        client.responses[stream_id] = H2Response(stream_id)
        client.flush()
        response = client.wait(stream_id)
    assert response.status == 403, response


def test_oversized_headers_reset_the_stream_not_the_connection(tmp_path: Path, echo_port: int) -> None:
    with http_proxy(tmp_path, simple_route("echo"), [static_cluster("echo", [echo_port])],
                    max_request_headers_kb=2) as (process, port):
        with H2Client(port) as client:
            big = client.wait(client.send_request("GET", "/", [("x-big", "y" * 4000)]))
            after = client.request("GET", "/after")
        assert big.reset_code is not None
        assert after.status == 200
        assert process.stats()["http.ingress.downstream_rq_too_large"] == 1


def test_client_reset_cancels_the_upstream_request(tmp_path: Path) -> None:
    with RawBackend(never_answer) as backend:
        with http_proxy(tmp_path, simple_route("slow"), [static_cluster("slow", [backend.port])]) as (process, port):
            with H2Client(port) as client:
                stream_id = client.send_request("GET", "/slow")
                wait_until(lambda: backend.requests)
                client.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                client.flush()
                wait_until(lambda: process.stats().get("http.ingress.downstream_rq_rx_reset", 0) == 1)
                assert client.ping()  # the connection lives on
            wait_until(lambda: process.stats().get("cluster.slow.upstream_rq_active", 0) == 0)


@pytest.mark.skipif(not is_compiled("tulle.http.http2_codec"),
                    reason="nghttp2's rapid-reset limit; the uncompiled peer (h2) has none")
def test_rapid_reset_closes_the_connection(proxy: tuple[object, int]) -> None:
    _, port = proxy
    with H2Client(port) as client:
        for stream_id in range(1, 4001, 2):
            client.conn.send_headers(stream_id, [(":method", "GET"), (":scheme", "http"),
                                                 (":authority", "example.com"), (":path", "/")], end_stream=True)
            client.conn.reset_stream(stream_id)
        try:
            client.flush()
        except OSError:
            pass  # closed while we were still writing: also an answer
        client.read_until_closed()
        assert client.closed
        assert client.goaway is not None and client.goaway.error_code != 0


def test_drain_sends_goaway_and_finishes_open_streams(tmp_path: Path, echo_port: int) -> None:
    release = threading.Event()

    def slow_then_answer(conn) -> None:  # noqa: ANN001
        if conn.read_request() is None:
            return
        release.wait(15)
        conn.sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone")

    with RawBackend(slow_then_answer) as backend:
        with http_proxy(tmp_path, simple_route("slow"), [static_cluster("slow", [backend.port])]) as (process, port):
            with H2Client(port) as client:
                stream_id = client.send_request("GET", "/in-flight")
                wait_until(lambda: backend.requests)
                status, _ = process.admin("POST", "/drain_listeners")
                assert status == 200
                while client.goaway is None and client.pump():
                    pass
                assert client.goaway is not None and client.goaway.error_code == 0
                release.set()
                response = client.wait(stream_id)
                assert (response.status, response.body) == (200, b"done")  # nothing in flight is dropped
                client.read_until_closed()
                assert client.closed


def test_a_slow_http2_reader_back_pressures_the_upstream(tmp_path: Path) -> None:
    """The client does not open its window: the response waits in the proxy for it, the stream tells
    the router to stop reading the upstream, and everything arrives once the client reads."""
    body = bytes(range(256)) * (16 * 1024)  # 4 MiB, over the 1 MiB buffer limit
    sent = threading.Event()

    def big(conn) -> None:  # noqa: ANN001
        if conn.read_request() is None:
            return
        conn.sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body))
        conn.sock.sendall(body)
        sent.set()

    with RawBackend(big) as backend:
        with http_proxy(tmp_path, simple_route("big"), [static_cluster("big", [backend.port])]) as (process, port):
            with H2Client(port) as client:
                client.auto_ack = False  # read frames, return no window: a client that stops consuming
                stream_id = client.send_request("GET", "/big")
                wait_until(lambda: process.stats().get(
                    "http.ingress.downstream_flow_control_paused_reading_total", 0) >= 1)
                assert not client.responses[stream_id].ended
                client.auto_ack = True
                client.conn.acknowledge_received_data(len(client.responses[stream_id].body), stream_id)
                client.flush()
                response = client.wait(stream_id)
            assert response.ended and response.body == body
            assert sent.is_set()
            assert process.stats()["http.ingress.downstream_flow_control_resumed_reading_total"] >= 1


def test_a_slow_upstream_holds_the_clients_request_window(tmp_path: Path) -> None:
    """The upstream does not read: the proxy stops acknowledging the stream's DATA, so the client
    stalls at the stream window instead of the proxy buffering the whole upload."""
    slow = SlowReader()
    body = b"u" * (8 * 1024 * 1024)
    with RawBackend(slow) as backend:
        with http_proxy(tmp_path, simple_route("slow"), [static_cluster("slow", [backend.port])],
                        http2_protocol_options={"initial_stream_window_size": 65535,
                                                "initial_connection_window_size": 65535}) as (process, port):
            with H2Client(port, timeout=30) as client:
                stream_id = client.send_request("POST", "/upload", end_stream=False)
                assert slow.head_seen.wait(15)
                sent = client.send_some(stream_id, body)
                assert sent < len(body)  # the window closed before the body was out
                slow.release.set()
                client.send_body(stream_id, body[sent:], end_stream=True)
                response = client.wait(stream_id)
            assert json.loads(response.body)["body_length"] == len(body)


def test_stream_idle_timeout_ends_only_that_stream(tmp_path: Path, echo_port: int) -> None:
    with RawBackend(never_answer) as backend:
        clusters = [static_cluster("slow", [backend.port]), static_cluster("echo", [echo_port])]
        route = {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/slow"}, "route": {"cluster": "slow"}},
            {"match": {"prefix": "/"}, "route": {"cluster": "echo"}}]}]}
        with http_proxy(tmp_path, route, clusters, stream_idle_timeout="0.5s") as (process, port):
            with H2Client(port) as client:
                slow = client.send_request("GET", "/slow")
                fast = client.request("GET", "/fast")
                timed_out = client.wait(slow)
                assert fast.status == 200
                assert timed_out.status == 504
                assert client.ping()  # the connection is still open
            assert process.stats()["http.ingress.downstream_rq_idle_timeout"] == 1


def test_a_stream_over_max_concurrent_streams_ends_the_connection(tmp_path: Path) -> None:
    """RFC 9113 section 5.1.2: a peer past the limit it acknowledged is a PROTOCOL_ERROR (nghttp2, like
    h2, treats it as a connection error); the streams within the limit were forwarded, no more."""
    with RawBackend(never_answer) as backend:
        with http_proxy(tmp_path, simple_route("slow"), [static_cluster("slow", [backend.port])],
                        http2_protocol_options={"max_concurrent_streams": 2}) as (process, port):
            with H2Client(port) as client:
                client.pump()  # the server's SETTINGS, acknowledged
                # a client that ignores the limit (h2 would refuse to open the third stream itself)
                client.conn.remote_settings._settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = deque([100])
                for i in range(3):
                    client.send_request("GET", f"/s{i}")
                client.read_until_closed()
                assert client.goaways[:1] == [h2.errors.ErrorCodes.PROTOCOL_ERROR], client.goaways
            assert len(backend.requests) <= 2
            assert process.stats()["http.ingress.downstream_cx_protocol_error"] == 1


def test_connection_keepalive_closes_a_peer_that_stops_answering_pings(tmp_path: Path, echo_port: int) -> None:
    keepalive = {"connection_keepalive": {"interval": "0.2s", "timeout": "0.3s"}}
    with http_proxy(tmp_path, simple_route("echo"), [static_cluster("echo", [echo_port])],
                    http2_protocol_options=keepalive) as (process, port):
        with H2Client(port) as alive:
            assert alive.request("GET", "/").status == 200
            while alive.pings_received < 4:  # a client that reads answers every PING: it stays connected
                assert alive.pump()
            assert alive.request("GET", "/").status == 200
            assert process.stats().get("http2.keepalive_timeout", 0) == 0
        silent = socket.create_connection(("127.0.0.1", port), timeout=15)
        silent.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        # never reads, never acks: closed once a PING goes unanswered for the timeout
        wait_until(lambda: process.stats().get("http2.keepalive_timeout", 0) == 1)
        silent.close()


def test_expect_100_continue_is_answered_by_the_proxy(proxy: tuple[object, int]) -> None:
    _, port = proxy
    with H2Client(port) as client:
        stream_id = client.send_request("POST", "/upload", [("expect", "100-continue")], end_stream=False)
        while not client.responses[stream_id].informational:
            assert client.pump()
        assert client.responses[stream_id].informational == [[(":status", "100")]]
        client.send_body(stream_id, b"after the go-ahead", end_stream=True)
        request = echoed(client.wait(stream_id))
    assert request["body_length"] == len(b"after the go-ahead")
    assert "expect" not in request["headers"]  # answered here, not forwarded


class RecordingTransport:
    """Just enough of an asyncio transport for a connection driven in-process."""

    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_a_failure_inside_the_filter_chain_ends_the_connection_with_goaway() -> None:
    """A bug while handling a request (raised inside nghttp2's callbacks, which makes the session
    unusable) must close that connection cleanly, not leave it half-broken or reach the event loop."""
    import asyncio

    import h2.config
    import h2.connection
    import h2.events
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2

    from tulle.config.loader import parse_message
    from tulle.filters.network.http_connection_manager.config import HcmConfig
    from tulle.filters.network.http_connection_manager.http2_connection import Http2Connection
    from tulle.server.context import DownstreamConnection, FactoryContext, ServerState
    from tulle.stats.store import Store

    class Exploding(Http2Connection):
        def on_h2_headers(self, stream_id, fields, end_stream):  # noqa: ANN001, ANN201
            raise RuntimeError("a filter's bug")

    class NoClusters:
        def get(self, name: str) -> None:
            return None

    hcm = parse_message({"stat_prefix": "ingress", "route_config": {"validate_clusters": False},
                         "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                             "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]},
                        http_connection_manager_pb2.HttpConnectionManager)
    store = Store()

    async def drive() -> tuple[RecordingTransport, HcmConfig]:
        ctx = FactoryContext(stats=store, cluster_manager=NoClusters(), server=ServerState(),  # type: ignore[arg-type]
                             loop=asyncio.get_running_loop())
        config = HcmConfig(hcm, "hcm", ctx, 0)
        connection = Exploding(config, DownstreamConnection(("127.0.0.1", 5000), ("127.0.0.1", 10000), "ingress"))
        transport = RecordingTransport()
        connection.connection_made(transport)
        client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        client.initiate_connection()
        client.send_headers(1, [(":method", "GET"), (":scheme", "http"), (":authority", "a"), (":path", "/")],
                            end_stream=True)
        connection.data_received(client.data_to_send())  # must not raise
        events = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        events.initiate_connection()
        goaways = [e for e in events.receive_data(transport.written) if isinstance(e, h2.events.ConnectionTerminated)]
        assert goaways and goaways[0].error_code == h2.errors.ErrorCodes.INTERNAL_ERROR
        return transport, config

    transport, config = asyncio.run(drive())
    assert transport.closed
    assert config.stats.downstream_cx_protocol_error.value == 1
