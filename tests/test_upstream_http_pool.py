"""HTTP/1.1 upstream connections and their pool.

Unit tests drive ``HttpConnectionPool`` and ``Http1ClientConnection`` directly
against scripted asyncio servers (a real Cluster and Host from a cluster proto);
the integration tests check reuse through a real proxy process.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from backends import Client, RawBackend, close_delimited, echo_backend, get, http_proxy, respond
from proxy_harness import free_port, simple_route, static_cluster
from tulle.config.loader import parse_message
from tulle.http.headers import HeaderMap
from tulle.stats.store import Store
from tulle.upstream.cluster_manager import ClusterManager
from tulle.upstream.http_pool import (
    ConnectError,
    Http1ClientConnection,
    HttpConnectionPool,
    pool_for,
)
from tulle.upstream.request_encoder import UpstreamCallbacks

ServerScript = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Recorder(UpstreamCallbacks):
    """UpstreamCallbacks that remember what the connection told them."""

    def __init__(self) -> None:
        self.status = 0
        self.headers: HeaderMap | None = None
        self.chunks: list[bytes] = []
        self.ended = False
        self.reset: tuple[str, str] | None = None
        self.header_events = 0
        self.paused = 0
        self.resumed = 0
        self.finished = asyncio.Event()

    def on_upstream_headers(self, status: int, headers: HeaderMap, end_stream: bool) -> None:
        self.header_events += 1
        self.status = status
        self.headers = headers
        if end_stream:
            self.ended = True
            self.finished.set()

    def on_upstream_data(self, data: bytes, end_stream: bool) -> None:
        self.chunks.append(data)
        if end_stream:
            self.ended = True
            self.finished.set()

    def on_upstream_reset(self, flag: str, reason: str) -> None:
        self.reset = (flag, reason)
        self.finished.set()

    def on_upstream_pause_writing(self) -> None:
        self.paused += 1

    def on_upstream_resume_writing(self) -> None:
        self.resumed += 1

    def on_upstream_read_begin(self) -> None:
        pass

    def on_upstream_read_end(self) -> None:
        pass

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


class Upstream:
    """One scripted upstream server plus the pool of a one-host cluster pointing at it."""

    def __init__(self, store: Store, pool: HttpConnectionPool, server: asyncio.AbstractServer | None) -> None:
        self.store = store
        self.pool = pool
        self.server = server

    def stat(self, name: str) -> int:
        return self.store.counter(f"cluster.up.{name}").value

    async def exchange(self, conn: Http1ClientConnection, head: bytes = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n",
                       *, is_head: bool = False) -> Recorder:
        recorder = Recorder()
        conn.start_request(recorder, head, is_head)
        await asyncio.wait_for(recorder.finished.wait(), 5)
        return recorder


def run_with_upstream(script: ServerScript | None, test: Callable[[Upstream], Awaitable[None]],
                      **cluster_extra: Any) -> None:
    async def main() -> None:
        server = await asyncio.start_server(script, "127.0.0.1", 0) if script is not None else None
        port = server.sockets[0].getsockname()[1] if server is not None else free_port()
        store = Store()
        proto = parse_message(static_cluster("up", [port], **cluster_extra), cluster_pb2.Cluster)
        cluster = ClusterManager.from_protos([proto], stats=store).get("up")
        assert cluster is not None
        pool = pool_for(cluster.hosts[0], cluster, asyncio.get_running_loop())
        try:
            await test(Upstream(store, pool, server))
        finally:
            await pool.close()
            if server is not None:
                server.close()

    asyncio.run(main())


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


def answer_each(response: bytes) -> ServerScript:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await read_head(reader)
                writer.write(response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return script


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"


# --------------------------------------------------------------------------- unit: reuse


def test_completed_exchange_returns_the_connection_and_idle_reuse_is_lifo() -> None:
    async def test(up: Upstream) -> None:
        first = await up.pool.connect()
        second = await up.pool.connect()
        for conn in (first, second):
            recorder = await up.exchange(conn)
            assert (recorder.status, recorder.body, recorder.ended) == (200, b"hello", True)
        assert up.pool.take_idle() is second  # the warmest first
        assert up.pool.take_idle() is first
        assert up.pool.take_idle() is None
        assert up.stat("upstream_cx_total") == 2
        assert up.pool.host.stats.cx_total == 2
        assert up.store.gauge("cluster.up.upstream_cx_active").value == 2

    run_with_upstream(answer_each(OK), test)


def test_a_connection_serves_many_requests_in_turn() -> None:
    async def test(up: Upstream) -> None:
        conn = await up.pool.connect()
        for _ in range(5):
            recorder = await up.exchange(conn)
            assert recorder.body == b"hello"
            assert up.pool.take_idle() is conn
        assert conn.requests == 5
        assert up.stat("upstream_cx_total") == 1

    run_with_upstream(answer_each(OK), test)


def test_connection_close_response_is_not_reused() -> None:
    response = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"

    async def test(up: Upstream) -> None:
        conn = await up.pool.connect()
        recorder = await up.exchange(conn)
        assert recorder.body == b"ok"
        assert up.pool.take_idle() is None
        for _ in range(100):
            if conn.closed:
                break
            await asyncio.sleep(0.01)
        assert conn.closed
        assert up.stat("upstream_cx_destroy") == 1

    run_with_upstream(answer_each(response), test)


def test_max_requests_per_connection_retires_the_connection() -> None:
    async def test(up: Upstream) -> None:
        conn = await up.pool.connect()
        await up.exchange(conn)
        assert up.pool.take_idle() is conn
        await up.exchange(conn)
        assert up.pool.take_idle() is None
        assert up.stat("upstream_cx_max_requests") == 1

    run_with_upstream(answer_each(OK), test, max_requests_per_connection=2)


def test_idle_timeout_closes_idle_connections() -> None:
    async def test(up: Upstream) -> None:
        conn = await up.pool.connect()
        await up.exchange(conn)
        for _ in range(200):
            if up.stat("upstream_cx_idle_timeout"):
                break
            await asyncio.sleep(0.01)
        assert up.stat("upstream_cx_idle_timeout") == 1
        assert up.pool.take_idle() is None

    run_with_upstream(answer_each(OK), test, common_http_protocol_options={"idle_timeout": "0.05s"})


def test_bytes_on_an_idle_connection_close_it() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")  # unsolicited
        await writer.drain()
        await asyncio.sleep(1)

    async def test(up: Upstream) -> None:
        conn = await up.pool.connect()
        await up.exchange(conn)
        for _ in range(100):
            if conn.closed:
                break
            await asyncio.sleep(0.01)
        assert conn.closed
        assert up.pool.take_idle() is None

    run_with_upstream(script, test)


# --------------------------------------------------------------------------- unit: framing


def test_chunked_response_is_delivered_whole_and_reusable() -> None:
    response = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"

    async def test(up: Upstream) -> None:
        conn = await up.pool.connect()
        recorder = await up.exchange(conn)
        assert recorder.body == b"hello world"
        assert recorder.headers is not None and recorder.headers.get(":status") == "200"
        assert up.pool.take_idle() is conn

    run_with_upstream(answer_each(response), test)


def test_close_delimited_response_ends_at_eof_and_is_not_reused() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n")
        for index in range(10):
            writer.write(b"%d" % index * 1000)
            await writer.drain()
        writer.close()

    async def test(up: Upstream) -> None:
        conn = await up.pool.connect()
        recorder = await up.exchange(conn)
        assert recorder.reset is None
        assert recorder.ended
        assert recorder.body == b"".join(b"%d" % index * 1000 for index in range(10))
        assert up.pool.take_idle() is None

    run_with_upstream(script, test)


def test_head_response_completes_on_the_head_and_the_connection_stays_usable() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        assert head.startswith(b"HEAD ")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n")  # no body for HEAD
        await read_head(reader)
        writer.write(OK)
        await writer.drain()
        await asyncio.sleep(1)

    async def test(up: Upstream) -> None:
        conn = await up.pool.connect()
        head = await up.exchange(conn, b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n", is_head=True)
        assert (head.status, head.ended, head.body) == (200, True, b"")
        assert head.headers is not None and head.headers.get("content-length") == "100"
        assert up.pool.take_idle() is conn
        follow_up = await up.exchange(conn)
        assert follow_up.body == b"hello"

    run_with_upstream(script, test)


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_complete_on_the_head(status: int) -> None:
    response = b"HTTP/1.1 %d X\r\n\r\n" % status

    async def test(up: Upstream) -> None:
        conn = await up.pool.connect()
        recorder = await up.exchange(conn)
        assert (recorder.status, recorder.ended, recorder.body) == (status, True, b"")
        assert up.pool.take_idle() is conn

    run_with_upstream(answer_each(response), test)


def test_interim_100_continue_is_swallowed() -> None:
    response = b"HTTP/1.1 100 Continue\r\n\r\n" + OK

    async def test(up: Upstream) -> None:
        conn = await up.pool.connect()
        recorder = await up.exchange(conn)
        assert recorder.header_events == 1
        assert (recorder.status, recorder.body) == (200, b"hello")

    run_with_upstream(answer_each(response), test)


# --------------------------------------------------------------------------- unit: failures


def test_connect_failure_raises_uf_and_counts() -> None:
    async def test(up: Upstream) -> None:
        with pytest.raises(ConnectError) as caught:
            await up.pool.connect()
        assert caught.value.flag == "UF"
        assert up.stat("upstream_cx_connect_fail") == 1
        assert up.stat("upstream_cx_total") == 1
        assert up.pool.host.stats.cx_connect_fail == 1
        assert up.store.gauge("cluster.up.upstream_cx_active").value == 0

    run_with_upstream(None, test)


def test_close_before_headers_is_connection_termination() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.close()

    async def test(up: Upstream) -> None:
        recorder = await up.exchange(await up.pool.connect())
        assert recorder.reset is not None and recorder.reset[0] == "UC"
        assert up.stat("upstream_cx_destroy_remote") == 1
        assert up.stat("upstream_cx_destroy_with_active_rq") == 1

    run_with_upstream(script, test)


def test_reset_before_headers_is_remote_reset() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def test(up: Upstream) -> None:
        recorder = await up.exchange(await up.pool.connect())
        assert recorder.reset is not None and recorder.reset[0] == "UR"

    run_with_upstream(script, test)


def test_malformed_response_is_a_protocol_error() -> None:
    async def test(up: Upstream) -> None:
        conn = await up.pool.connect()
        recorder = await up.exchange(conn)
        assert recorder.reset is not None and recorder.reset[0] == "UPE"
        assert up.pool.take_idle() is None

    run_with_upstream(answer_each(b"HTTP/1.1 abc nonsense\r\n\r\n"), test)


def test_a_response_head_over_the_limit_is_a_protocol_error() -> None:
    # Envoy's max_response_headers_kb (60 KiB): the head is refused before it completes
    from tulle.upstream.http_pool import MAX_RESPONSE_HEAD_BYTES

    head = b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * MAX_RESPONSE_HEAD_BYTES

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(head)  # never finished: the limit alone ends it
        await writer.drain()
        await reader.read()
        writer.close()

    async def test(up: Upstream) -> None:
        conn = await up.pool.connect()
        recorder = await up.exchange(conn)
        assert recorder.reset == ("UPE", "protocol error: response headers too large")
        assert recorder.header_events == 0
        assert up.stat("upstream_cx_protocol_error") == 1
        assert up.pool.take_idle() is None

    run_with_upstream(script, test)


def test_a_response_head_just_under_the_limit_is_accepted() -> None:
    from tulle.upstream.http_pool import MAX_RESPONSE_HEAD_BYTES

    start = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-big: "
    response = start + b"a" * (MAX_RESPONSE_HEAD_BYTES - len(start) - 4) + b"\r\n\r\nok"

    async def test(up: Upstream) -> None:
        recorder = await up.exchange(await up.pool.connect())
        assert (recorder.reset, recorder.status, recorder.body) == (None, 200, b"ok")
        assert recorder.headers is not None and len(recorder.headers.get("x-big") or "") > 60000

    run_with_upstream(answer_each(response), test)


def test_an_unrequested_upgrade_is_a_protocol_error() -> None:
    response = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nxx"

    async def test(up: Upstream) -> None:
        recorder = await up.exchange(await up.pool.connect())
        assert recorder.reset is not None and recorder.reset[0] == "UPE"
        assert recorder.header_events == 0
        assert up.stat("upstream_cx_protocol_error") == 1

    run_with_upstream(answer_each(response), test)


def test_interim_then_final_response_to_head_completes_on_the_final_head() -> None:
    response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n"

    async def test(up: Upstream) -> None:
        conn = await up.pool.connect()
        head = await up.exchange(conn, b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n", is_head=True)
        assert (head.header_events, head.status, head.ended, head.body) == (1, 200, True, b"")
        assert up.pool.take_idle() is conn

    run_with_upstream(answer_each(response), test)


def test_head_response_with_connection_close_is_not_reused() -> None:
    response = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 100\r\n\r\n"

    async def test(up: Upstream) -> None:
        conn = await up.pool.connect()
        head = await up.exchange(conn, b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n", is_head=True)
        assert (head.status, head.ended) == (200, True)
        assert up.pool.take_idle() is None

    run_with_upstream(answer_each(response), test)


def test_response_head_split_over_reads_is_parsed_whole() -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        for piece in (b"HTTP/1.1 200 OK\r\ncontent-", b"length: 5\r\nx-a: b", b"\r\n\r", b"\nhel", b"lo"):
            writer.write(piece)
            await writer.drain()
        await reader.read()
        writer.close()

    async def test(up: Upstream) -> None:
        conn = await up.pool.connect()
        recorder = await up.exchange(conn)
        assert (recorder.status, recorder.body, recorder.reset) == (200, b"hello", None)
        assert recorder.headers is not None and recorder.headers.get("x-a") == "b"
        assert up.pool.take_idle() is conn

    run_with_upstream(script, test)


def test_slow_upstream_reader_pauses_the_writer() -> None:
    release = asyncio.Event()
    total = 64 * 1024 * 1024  # more than loopback socket buffers absorb
    piece = b"p" * 65536

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await release.wait()
        await reader.readexactly(total)
        writer.write(OK)
        await writer.drain()

    async def test(up: Upstream) -> None:
        conn = await up.pool.connect()
        recorder = Recorder()
        conn.start_request(recorder, b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % total, False)
        written = 0
        while written < total and not recorder.paused:
            conn.write(piece)
            written += len(piece)
            await asyncio.sleep(0)
        assert recorder.paused == 1  # the transport's buffer passed the cluster's limit
        assert written < total
        assert recorder.resumed == 0
        release.set()
        while written < total:
            conn.write(piece)
            written += len(piece)
        await asyncio.wait_for(recorder.finished.wait(), 10)
        assert recorder.resumed >= 1
        assert recorder.body == b"hello"

    run_with_upstream(script, test, per_connection_buffer_limit_bytes=65536)


def test_pool_close_closes_every_connection() -> None:
    async def test(up: Upstream) -> None:
        conns = [await up.pool.connect() for _ in range(3)]
        await up.pool.close()
        for _ in range(100):
            if all(conn.closed for conn in conns):
                break
            await asyncio.sleep(0.01)
        assert all(conn.closed for conn in conns)
        assert up.store.gauge("cluster.up.upstream_cx_active").value == 0
        assert up.stat("upstream_cx_destroy_local") == 3

    run_with_upstream(answer_each(OK), test)


# --------------------------------------------------------------------------- unit: circuit breakers, pending queue


class Waiter:
    """A request asking the pool for a connection (PoolCallbacks); on one, it sends a GET."""

    def __init__(self, up: Upstream, name: str, served: list[str]) -> None:
        self.up = up
        self.name = name
        self.served = served
        self.recorder = Recorder()
        self.failure: tuple[str, str] | None = None
        self.conn: Http1ClientConnection | None = None

    def ask(self) -> Waiter:
        conn = self.up.pool.acquire(self, self.up.pool.cluster.resource_manager)
        if conn is not None:
            self.on_pool_ready(conn)
        return self

    def on_pool_ready(self, conn: Http1ClientConnection) -> None:
        self.conn = conn
        self.served.append(self.name)
        conn.start_request(self.recorder, f"GET /{self.name} HTTP/1.1\r\nhost: a\r\n\r\n".encode(), False)

    def on_pool_failure(self, flag: str, reason: str) -> None:
        self.failure = (flag, reason)
        self.recorder.finished.set()

    async def done(self) -> Waiter:
        await asyncio.wait_for(self.recorder.finished.wait(), 5)
        return self


def gauge(up: Upstream, name: str) -> int:
    return up.store.gauge(f"cluster.up.{name}").value


def test_acquire_takes_an_idle_connection_and_holds_a_request_slot() -> None:
    async def test(up: Upstream) -> None:
        up.pool.release(await up.pool.connect(), True)
        requests = up.pool.cluster.resource_manager.requests
        waiter = Waiter(up, "a", []).ask()
        assert waiter.conn is not None and requests.count == 1
        await waiter.done()
        assert waiter.recorder.body == b"hello"
        assert requests.count == 0  # given back with the connection
        assert up.stat("upstream_rq_pending_total") == 0  # never waited

    run_with_upstream(answer_each(OK), test)


def test_max_requests_refuses_even_with_an_idle_connection() -> None:
    async def test(up: Upstream) -> None:
        for conn in [await up.pool.connect(), await up.pool.connect()]:
            up.pool.release(conn, True)
        first = Waiter(up, "first", []).ask()
        second = Waiter(up, "second", []).ask()
        assert first.conn is not None
        assert second.failure == ("UO", "overflow")
        assert up.stat("upstream_rq_active_overflow") == 1
        assert up.stat("upstream_rq_pending_overflow") == 0
        await first.done()
        assert Waiter(up, "third", []).ask().conn is not None  # the slot came back

    run_with_upstream(answer_each(OK), test, circuit_breakers={"thresholds": [{"max_requests": 1}]})


def test_zero_pending_requests_refuses_a_request_that_needs_a_new_connection() -> None:
    # Envoy's behaviour: waiting for a connect is pending, so with max_pending_requests 0 only
    # idle connections serve requests.
    async def test(up: Upstream) -> None:
        waiter = Waiter(up, "a", []).ask()
        assert waiter.failure == ("UO", "overflow")
        assert up.stat("upstream_rq_pending_overflow") == 1
        assert up.stat("upstream_cx_total") == 0
        up.pool.release(await up.pool.connect(), True)
        assert (await Waiter(up, "b", []).ask().done()).recorder.status == 200

    run_with_upstream(answer_each(OK), test, circuit_breakers={"thresholds": [{"max_pending_requests": 0}]})


def test_requests_beyond_max_connections_wait_and_are_served_in_order() -> None:
    async def test(up: Upstream) -> None:
        served: list[str] = []
        waiters = [Waiter(up, f"r{index}", served).ask() for index in range(5)]
        assert all(waiter.conn is None for waiter in waiters)
        assert gauge(up, "upstream_rq_pending_active") == 5
        assert up.pool.connecting == 2
        for waiter in waiters:
            await waiter.done()
            assert len(up.pool.all) <= 2
        assert served == [f"r{index}" for index in range(5)]
        assert all(waiter.recorder.body == b"hello" for waiter in waiters)
        assert up.stat("upstream_cx_total") == 2
        assert up.stat("upstream_cx_overflow") == 3  # each waiter that found the limit reached
        assert up.stat("upstream_rq_pending_total") == 5
        assert gauge(up, "upstream_rq_pending_active") == 0
        manager = up.pool.cluster.resource_manager
        assert (manager.pending_requests.count, manager.requests.count, manager.connections.count) == (0, 0, 2)

    run_with_upstream(answer_each(OK), test, circuit_breakers={"thresholds": [{"max_connections": 2}]})


def test_max_pending_requests_overflows_the_queue() -> None:
    async def test(up: Upstream) -> None:
        waiters = [Waiter(up, f"r{index}", []).ask() for index in range(4)]
        assert [waiter.failure for waiter in waiters] == [None, None, ("UO", "overflow"), ("UO", "overflow")]
        assert up.stat("upstream_rq_pending_overflow") == 2
        for waiter in waiters[:2]:
            assert (await waiter.done()).recorder.status == 200

    run_with_upstream(answer_each(OK), test,
                      circuit_breakers={"thresholds": [{"max_connections": 1, "max_pending_requests": 2}]})


def test_a_request_that_gives_up_leaves_the_queue() -> None:
    async def test(up: Upstream) -> None:
        served: list[str] = []
        first, second, third = (Waiter(up, name, served).ask() for name in ("first", "second", "third"))
        assert up.pool.cancel(second)
        assert not up.pool.cancel(second)
        assert up.stat("upstream_rq_cancelled") == 1
        assert gauge(up, "upstream_rq_pending_active") == 2
        await first.done()
        await third.done()
        assert served == ["first", "third"]
        assert up.pool.cluster.resource_manager.pending_requests.count == 0

    run_with_upstream(answer_each(OK), test, circuit_breakers={"thresholds": [{"max_connections": 1}]})


def test_a_connect_failure_fails_every_pending_request() -> None:
    async def test(up: Upstream) -> None:
        waiters = [Waiter(up, f"r{index}", []).ask() for index in range(3)]
        for waiter in waiters:
            await waiter.done()
            assert waiter.failure is not None and waiter.failure[0] == "UF"
        assert up.stat("upstream_rq_pending_failure_eject") == 3
        manager = up.pool.cluster.resource_manager
        assert (manager.pending_requests.count, manager.connections.count) == (0, 0)
        assert gauge(up, "upstream_rq_pending_active") == 0

    run_with_upstream(None, test, circuit_breakers={"thresholds": [{"max_connections": 1}]})


def test_a_pool_without_any_connection_opens_one_even_at_the_limit() -> None:
    async def test(up: Upstream) -> None:
        manager = up.pool.cluster.resource_manager
        manager.connections.inc()  # another host's pool holds the cluster's only connection
        first, second = Waiter(up, "first", []).ask(), Waiter(up, "second", []).ask()
        await first.done()
        await second.done()
        assert up.stat("upstream_cx_total") == 1
        assert up.stat("upstream_cx_overflow") >= 1
        assert manager.connections.count == 2  # over the limit by this pool's one connection
        await up.pool.close()
        for _ in range(100):
            if manager.connections.count == 1:
                break
            await asyncio.sleep(0.01)
        assert manager.connections.count == 1  # the closed connection gave its slot back

    run_with_upstream(answer_each(OK), test, circuit_breakers={"thresholds": [{"max_connections": 1}]})


def test_per_host_max_connections() -> None:
    async def test(up: Upstream) -> None:
        waiters = [Waiter(up, f"r{index}", []).ask() for index in range(3)]
        assert up.pool.connecting == 1
        for waiter in waiters:
            await waiter.done()
        assert up.stat("upstream_cx_total") == 1

    run_with_upstream(answer_each(OK), test, circuit_breakers={"per_host_thresholds": [{"max_connections": 1}]})


# --------------------------------------------------------------------------- through the proxy


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    with echo_backend("echo") as port:
        yield port


def test_upstream_connection_is_shared_by_successive_client_connections(tmp_path: Path, echo_port: int) -> None:
    with http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [echo_port])]) as (proxy, port):
        for index in range(10):
            assert get(port, f"/c/{index}").json()["path"] == f"/c/{index}"
        stats = proxy.stats()
        clusters = proxy.admin("GET", "/clusters")[1]
    assert stats["http.ingress.downstream_cx_total"] == 10
    assert stats["cluster.backend.upstream_cx_total"] == 1
    assert f"backend::127.0.0.1:{echo_port}::cx_total::1" in clusters
    assert f"backend::127.0.0.1:{echo_port}::rq_total::10" in clusters
    assert f"backend::127.0.0.1:{echo_port}::rq_success::10" in clusters


def test_upstream_connection_close_forces_a_new_connection(tmp_path: Path, echo_port: int) -> None:
    with http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [echo_port])]) as (proxy, port), \
            Client(port) as client:
        closing = client.request("GET", "/close")
        assert (closing.status, closing.body) == (200, b"bye\n")
        assert closing.header("connection") is None  # the upstream's close is not the client's
        assert client.request("GET", "/after").status == 200
        stats = proxy.stats()
    assert stats["cluster.backend.upstream_cx_total"] == 2
    assert stats["http.ingress.downstream_cx_total"] == 1


def test_head_and_get_share_the_upstream_connection(tmp_path: Path, echo_port: int) -> None:
    with http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [echo_port])]) as (proxy, port), \
            Client(port) as client:
        for _ in range(3):
            assert client.request("HEAD", "/bytes/10").header("content-length") == "10"
            assert client.request("GET", "/bytes/10").body == b"x" * 10
        stats = proxy.stats()
    assert stats["cluster.backend.upstream_cx_total"] == 1


def test_close_delimited_upstream_body_is_chunked_to_an_http11_client(tmp_path: Path) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB
    with RawBackend(close_delimited(body)) as backend, \
            http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [backend.port])]) as (
                proxy, port), Client(port) as client:
        response = client.request("GET", "/eof")
        assert response.status == 200
        assert response.header("transfer-encoding") == "chunked"
        assert response.body == body
        second = client.request("GET", "/eof")  # the client connection survives; the upstream one did not
        assert second.body == body
        assert proxy.stats()["cluster.backend.upstream_cx_total"] == 2
    assert backend.connections == 2


def test_upstream_keep_alive_response_headers_do_not_close_the_client(tmp_path: Path) -> None:
    with RawBackend(respond(200, [("connection", "keep-alive")], b"fine")) as backend, \
            http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [backend.port])]) as (
                proxy, port), Client(port) as client:
        for _ in range(3):
            assert client.request("GET", "/ka").body == b"fine"
        assert proxy.stats()["cluster.backend.upstream_cx_total"] == 1
    assert backend.connections == 1


# --------------------------------------------------------------------------- connection options


def test_tcp_keepalive_is_set_on_upstream_sockets() -> None:
    async def test(up: Upstream) -> None:
        conn = await up.pool.connect()
        sock = conn.transport.get_extra_info("socket")  # type: ignore[union-attr]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 90
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 7

    run_with_upstream(answer_each(OK), test, upstream_connection_options={"tcp_keepalive": {
        "keepalive_probes": 3, "keepalive_time": 90, "keepalive_interval": 7}})


def test_max_connection_duration_closes_idle_connections_and_busy_ones_after_their_request() -> None:
    async def test(up: Upstream) -> None:
        idle = await up.pool.connect()
        assert (await up.exchange(idle)).status == 200
        assert up.pool.take_idle() is idle
        up.pool.release(idle, True)  # back to idle: aged out by the timer
        busy = await up.pool.connect()
        recorder = Recorder()
        busy.start_request(recorder, b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n", False)
        await asyncio.sleep(0.4)
        assert idle.closed and up.pool.take_idle() is None
        assert not busy.closed  # mid-request: it finishes first
        await asyncio.wait_for(recorder.finished.wait(), 5)
        assert recorder.status == 200
        await asyncio.sleep(0.05)
        assert busy.closed and up.pool.take_idle() is None
        assert up.stat("upstream_cx_max_duration_reached") == 2

    async def slow_second(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await read_head(reader)
                if b"/slow" in head:
                    await asyncio.sleep(0.6)
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    run_with_upstream(slow_second, test, common_http_protocol_options={"max_connection_duration": "0.3s"})
