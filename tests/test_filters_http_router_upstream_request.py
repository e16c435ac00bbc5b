"""UpstreamRequest: one attempt's connection handling (pooled, waited for, given up, retried), with fakes."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from tulle.filters.http.router.config import RouterFactory
from tulle.filters.http.router.filter import RouterFilter
from tulle.filters.http.router.upstream_request import UpstreamRequest
from tulle.http.headers import HeaderMap
from tulle.stats.store import Store
from tulle.upstream.cluster_stats import ClusterStats
from tulle.upstream.host import Host
from tulle.upstream.http_pool import Http1ClientConnection


class FakeConn(Http1ClientConnection):
    """A pooled connection (the attempt holds it as the real class) that records what it is told."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.aborted = ""
        self.callbacks: Any = None

    def encode_headers(self, callbacks: Any, headers: HeaderMap, end_stream: bool) -> None:
        self.callbacks = callbacks
        self.written.append((headers.method, end_stream))

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        self.written.append((data, end_stream))

    def abort(self, reason: str = "") -> None:
        self.aborted = reason

    def pause_reading(self) -> None:
        pass


class FakePool:
    def __init__(self, conn: FakeConn | None) -> None:
        self.conn = conn
        self.released: list[tuple[FakeConn, bool]] = []
        self.cancelled: list[Any] = []

    def acquire(self, callbacks: Any, manager: Any) -> FakeConn | None:
        return self.conn

    def release_unused(self, conn: FakeConn) -> None:
        self.released.append((conn, True))

    def cancel(self, callbacks: Any) -> bool:
        self.cancelled.append(callbacks)
        return True


class FakeDownstream:
    write_paused = False

    def __init__(self) -> None:
        self.corks = 0

    def cork(self) -> None:
        self.corks += 1

    def uncork(self) -> None:
        self.corks -= 1


class FakeStream:
    def __init__(self) -> None:
        self.connection = FakeDownstream()
        self.headers = HeaderMap([(":method", "POST"), (":path", "/")])
        self.info = SimpleNamespace(protocol="HTTP/1.1")


def small_buffer_factory() -> RouterFactory:
    factory = RouterFactory.__new__(RouterFactory)  # only what an attempt reads: the buffer limit
    factory.buffer_limit = 10
    return factory


class FakeRouter(RouterFilter):
    """A router (the attempt's callbacks into it are typed) that records what its attempt tells it."""

    def __init__(self, request_ended: bool = True) -> None:
        self.stream = FakeStream()
        self.factory = small_buffer_factory()
        self.trailers = None
        self.request_ended = request_ended
        self.attempts = None
        self.upstream: Any = None
        self.route = SimpleNamespace(priority=0)
        self.paused = False
        self.calls: list[tuple[Any, ...]] = []

    def pause_downstream(self) -> None:
        self.paused = True

    def resume_downstream(self) -> None:
        self.paused = False

    def on_attempt_headers(self, upstream: Any, status: int, headers: HeaderMap, end_stream: bool) -> None:
        self.calls.append(("headers", status, end_stream))

    def on_attempt_data(self, upstream: Any, data: bytes, end_stream: bool) -> None:
        self.calls.append(("data", data, end_stream))

    def on_attempt_reset(self, upstream: Any, flag: str, reason: str) -> None:
        self.calls.append(("reset", flag))

    def on_attempt_pool_failure(self, upstream: Any, flag: str, reason: str) -> None:
        self.calls.append(("pool_failure", flag))


class FakeCluster:
    def __init__(self) -> None:
        self.stats = ClusterStats(Store(), "c")
        self.resource_managers = [object(), object()]  # DEFAULT, HIGH
        self.http2_capable = False  # HTTP/1.1 only: the host's HTTP/1 pool


def attempt(conn: FakeConn | None, **router: Any) -> tuple[UpstreamRequest, FakeRouter, FakePool, FakeCluster]:
    """A started attempt."""
    host = Host("127.0.0.1", 80)
    pool = host.pool = FakePool(conn)
    fake_router = FakeRouter(**router)
    cluster = FakeCluster()
    upstream = UpstreamRequest(fake_router, host, cluster, loop=None)  # type: ignore[arg-type]
    assert fake_router.upstream is upstream  # the attempt is the router's current one
    return upstream, fake_router, pool, cluster


def test_an_idle_connection_carries_the_request_at_once() -> None:
    conn = FakeConn()
    upstream, router, _, cluster = attempt(conn)
    assert conn.callbacks is upstream
    assert conn.written == [("POST", True)]  # the whole request: its end goes with the headers
    assert upstream.end_sent and upstream.active
    assert cluster.stats.upstream_rq_active.value == 1 and upstream.host.stats.rq_active == 1
    upstream.on_upstream_headers(200, HeaderMap([(":status", "200")]), False)
    upstream.on_upstream_data(b"x", True)
    assert router.calls == [("headers", 200, False), ("data", b"x", True)]
    upstream.finish(cluster, success=True)
    upstream.finish(cluster, success=True)
    assert cluster.stats.upstream_rq_active.value == 0  # counted out once


def test_an_attempt_counts_as_an_upstream_request_once_a_connection_takes_it() -> None:
    upstream, router, _, cluster = attempt(None)
    stats, host = cluster.stats, upstream.host
    assert (stats.upstream_rq_total.value, stats.upstream_rq_active.value, host.stats.rq_total) == (0, 0, 0)
    upstream.on_pool_ready(FakeConn())  # type: ignore[arg-type]
    assert (stats.upstream_rq_total.value, stats.upstream_rq_active.value) == (1, 1)
    assert (host.stats.rq_total, host.stats.rq_active) == (1, 1)
    upstream.finish(cluster, success=True)
    assert stats.upstream_rq_active.value == 0 and host.stats.rq_active == 0


def test_a_refused_attempt_is_never_an_upstream_request() -> None:
    upstream, router, _, cluster = attempt(None)
    upstream.on_pool_failure("UO", "overflow")
    assert router.calls == [("pool_failure", "UO")]
    upstream.finish(cluster, success=False)
    stats = cluster.stats
    assert (stats.upstream_rq_total.value, stats.upstream_rq_active.value) == (0, 0)
    assert (upstream.host.stats.rq_total, upstream.host.stats.rq_active) == (0, 0)


def test_a_body_waits_for_the_connection_and_pauses_the_client_past_the_limit() -> None:
    upstream, router, pool, cluster = attempt(None, request_ended=False)
    upstream.send(b"12345", False, router)  # type: ignore[arg-type]
    assert not router.paused
    upstream.send(b"678901", True, router)  # type: ignore[arg-type]
    assert router.paused and upstream.pending == [b"12345", b"678901"]
    conn = FakeConn()
    router.request_ended = True
    upstream.on_pool_ready(conn)  # type: ignore[arg-type]
    assert conn.written == [("POST", False), (b"12345", False), (b"678901", True)]
    assert not router.paused and upstream.end_sent


def test_an_attempt_given_up_while_waiting_leaves_the_queue() -> None:
    upstream, router, pool, cluster = attempt(None)
    upstream.reset(cluster, "downstream reset")
    assert pool.cancelled == [upstream]
    assert cluster.stats.upstream_rq_active.value == 0
    late = FakeConn()
    upstream.on_pool_ready(late)  # type: ignore[arg-type]
    assert pool.released == [(late, True)]  # a connection that came anyway goes back warm
    upstream.on_pool_failure("UF", "refused")
    assert router.calls == []


def test_a_reset_attempt_closes_its_connection_and_stays_silent() -> None:
    conn = FakeConn()
    upstream, router, pool, cluster = attempt(conn)
    upstream.reset(cluster, "upstream per try timeout")
    assert conn.aborted == "upstream per try timeout" and pool.cancelled == []
    upstream.on_upstream_headers(200, HeaderMap([(":status", "200")]), True)
    upstream.on_upstream_reset("UC", "closed")
    assert router.calls == []


def test_a_retried_complete_response_keeps_its_connection() -> None:
    conn = FakeConn()
    upstream, router, _, cluster = attempt(conn)
    upstream.discard(cluster, end_stream=True)
    assert not conn.aborted and not upstream.draining and upstream.router is None
    assert cluster.stats.upstream_rq_active.value == 0


def test_a_retried_response_body_is_drained() -> None:
    conn = FakeConn()
    upstream, router, _, cluster = attempt(conn)
    upstream.discard(cluster, end_stream=False)
    assert upstream.draining and not conn.aborted
    upstream.on_upstream_data(b"rest of the 503 body", False)
    upstream.on_upstream_data(b"", True)
    assert not upstream.draining and upstream.conn is None
    assert router.calls == []


def test_a_retried_response_to_an_unfinished_request_closes_the_connection() -> None:
    conn = FakeConn()
    upstream, router, _, cluster = attempt(conn, request_ended=False)
    upstream.discard(cluster, end_stream=True)
    # the upstream still expects the rest of the body: the connection cannot be reused
    assert conn.aborted == "upstream response retried"


def test_cork_pairs_even_after_the_router_is_gone() -> None:
    conn = FakeConn()
    upstream, router, _, cluster = attempt(conn)
    upstream.on_upstream_read_begin()
    upstream.reset(cluster, "gone")
    upstream.on_upstream_read_end()
    assert router.stream.connection.corks == 0
