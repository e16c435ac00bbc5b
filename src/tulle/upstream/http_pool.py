"""HTTP/1.1 upstream connections and the per-host pool that reuses them.

One request at a time per connection (no upstream pipelining, like Envoy).
The pool keeps idle connections in a LIFO stack so that the most recently
used (warmest) connection is reused and the rest can age out on the idle
timeout. Reusing an idle connection is synchronous: no coroutine, no task,
no ``connect()`` on the fast path.

Responses are parsed by :class:`tulle.http.http1_parser.ResponseParser` (llhttp called from C
when compiled): one ``on_response_head`` per response head, whose header block becomes the
``HeaderMap`` as bytes (``HeaderMap.from_wire``), and ``on_message_complete(keep_alive)`` with
llhttp's keep-alive decision for the message. A response to HEAD ends with its head
(``expect_no_body``); 1xx interim responses are swallowed.

The router asks for a connection with :meth:`HttpConnectionPool.acquire`, which applies the
cluster's circuit breakers (:mod:`tulle.upstream.resource_manager`) as Envoy's connection pool
does: an idle connection is taken at once if ``max_requests`` allows; otherwise the request
joins the pool's FIFO of pending requests (``max_pending_requests``, else it overflows with
UO) and a connection is opened for it if ``max_connections`` allows. A pending request gets
the next connection that connects or comes back, oldest first. A failed connect fails every
pending request of the pool, as in Envoy.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

import cython

from tulle import stream_info as flags
from tulle.http import http1
from tulle.http.headers import HeaderMap, wire_headers
from tulle.http.http1_parser import ParserError, ParserUpgrade, ResponseParser
from tulle.upstream.request_encoder import RequestEncoder, UpstreamCallbacks

if TYPE_CHECKING:
    from tulle.upstream.cluster import Cluster
    from tulle.upstream.host import Host
    from tulle.upstream.resource_manager import Resource, ResourceManager


# Envoy's default max_response_headers_kb
MAX_RESPONSE_HEAD_BYTES = 60 * 1024
_STATUS_TEXT = [str(code) for code in range(600)]  # the :status of a response, made once per code
# Envoy's reset reason when a circuit breaker refuses a request (Http::StreamResetReason::Overflow)
OVERFLOW = "overflow"
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_CONTENT_LENGTH_ZERO = b"content-length: 0\r\n"


class PoolCallbacks(Protocol):
    """What :meth:`HttpConnectionPool.acquire` reports to when it cannot answer at once."""

    def on_pool_ready(self, conn: RequestEncoder) -> None:
        """A pending request got its encoder (and its ``max_requests`` slot)."""

    def on_pool_failure(self, flag: str, reason: str) -> None:
        """No connection: UO + "overflow" from a circuit breaker, else the connect failure."""


# --- the queue of requests waiting for a connection (Envoy's pending requests), shared by both pools ---
def queue_pending(pending: deque[tuple[PoolCallbacks, ResourceManager]], callbacks: PoolCallbacks,
                  manager: ResourceManager, stats: Any) -> bool:
    """Queue a request as ``max_pending_requests`` allows; False when it overflowed (told already, UO)."""
    if not manager.pending_requests.try_acquire():
        stats.upstream_rq_pending_overflow.value += 1
        callbacks.on_pool_failure(flags.UPSTREAM_OVERFLOW, OVERFLOW)
        return False
    stats.upstream_rq_pending_total.value += 1
    stats.upstream_rq_pending_active.value += 1
    pending.append((callbacks, manager))
    return True


def cancel_pending(pending: deque[tuple[PoolCallbacks, ResourceManager]], callbacks: PoolCallbacks,
                   stats: Any) -> bool:
    """A pending request gave up (client gone, timeout): it leaves the queue."""
    for entry in pending:
        if entry[0] is callbacks:
            pending.remove(entry)
            entry[1].pending_requests.dec()
            stats.upstream_rq_pending_active.value -= 1
            stats.upstream_rq_cancelled.value += 1
            return True
    return False


def fail_pending(pending: deque[tuple[PoolCallbacks, ResourceManager]], stats: Any, flag: str, reason: str) -> None:
    """Fail every request of a queue the pool has let go of (Envoy does so on a connect failure: the
    host is suspect; the pool starts a new queue first, so a retry that comes back in queues afresh)."""
    for _, manager in pending:
        manager.pending_requests.dec()
        stats.upstream_rq_pending_active.value -= 1
        stats.upstream_rq_pending_failure_eject.value += 1
    for callbacks, _ in pending:
        callbacks.on_pool_failure(flag, reason)


class ConnectError(Exception):
    def __init__(self, flag: str, reason: str) -> None:
        super().__init__(reason)
        self.flag = flag
        self.reason = reason


class Http1ClientConnection(RequestEncoder):
    """An HTTP/1.1 connection, and the encoder of the one request it carries at a time. An
    asyncio.Protocol by its methods (compiled, this is a cdef class, which cannot inherit from
    asyncio.Protocol; the event loop only calls the methods)."""

    if not cython.compiled:  # compiled, the fields come from http_pool.pxd
        __slots__ = (
            "pool", "transport", "parser", "callbacks", "is_head", "status", "headers_sent",
            "close_delimited", "requests", "closed", "idle_since", "created", "local_reason",
            "response_done", "ended", "rq_resource", "cx_resource", "expired", "age_timer", "chunked",
            "upgrading", "tunnel",
        )

    def __init__(self, pool: HttpConnectionPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser(self, MAX_RESPONSE_HEAD_BYTES)
        self.callbacks: UpstreamCallbacks | None = None
        self.is_head = False
        self.chunked = False  # the current request's body goes out chunked
        self.upgrading = False  # the current request asks for an upgrade (websocket)
        self.tunnel = False  # the upstream said 101: the bytes are the upgraded protocol's, both ways
        self.status = 0
        self.headers_sent = False
        self.close_delimited = False
        self.response_done = True
        self.ended = True  # the end of the response was delivered to callbacks
        self.requests = 0
        self.closed = False
        self.idle_since = 0.0
        self.created = time.monotonic()
        self.local_reason = ""
        # circuit-breaker slots held: the current request's (max_requests), the connection's own
        self.rq_resource: Resource | None = None
        self.cx_resource: Resource | None = None
        # past the cluster's max_connection_duration: closed when its request ends
        self.expired = False
        self.age_timer: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ----------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        cluster = self.pool.cluster
        limit = cluster.per_connection_buffer_limit_bytes
        transport.set_write_buffer_limits(high=limit, low=limit // 2)
        if cluster.tcp_keepalive is not None:
            cluster.tcp_keepalive.apply(transport.get_extra_info("socket"))

    @cython.locals(callbacks=UpstreamCallbacks)
    def data_received(self, data: bytes) -> None:
        self.pool.stats_rx.value += len(data)
        if self.callbacks is None:
            # Bytes on an idle connection are a protocol violation: drop the connection.
            self.close()
            return
        callbacks = self.callbacks
        callbacks.on_upstream_read_begin()
        try:
            if self.tunnel:
                callbacks.on_upstream_data(data, False)
            else:
                self.parser.feed_data(data)
        except ParserError as exc:  # not HTTP/1.1, or a head over MAX_RESPONSE_HEAD_BYTES
            self._protocol_error(f"protocol error: {exc}")
        except ParserUpgrade as exc:
            if self.tunnel:  # the 101 we asked for: what follows it is the upgraded protocol's
                rest = data[exc.offset:]
                if rest and self.callbacks is not None:
                    self.callbacks.on_upstream_data(rest, False)
            else:  # a 101 we never asked for: what follows is not HTTP
                self._protocol_error("protocol error: unexpected upgrade")
        except Exception as exc:  # raised by our callbacks: the exchange is lost, as a codec error
            self._protocol_error(f"protocol error: callback failed: {exc!r}")
        finally:
            callbacks.on_upstream_read_end()

    def eof_received(self) -> bool | None:
        return None  # let the transport close

    @cython.locals(callbacks=UpstreamCallbacks)
    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._end_request()
        self.pool.on_connection_closed(self, remote=not self.local_reason)
        callbacks = self.callbacks
        if callbacks is None:
            return
        if self.close_delimited and self.headers_sent and not self.response_done:
            self.response_done = True
            self.callbacks = None
            if not self.ended:
                self.ended = True
                callbacks.on_upstream_data(b"", True)
            return
        self.callbacks = None
        if isinstance(exc, ConnectionResetError):
            callbacks.on_upstream_reset(flags.UPSTREAM_REMOTE_RESET, "remote reset")
        else:
            callbacks.on_upstream_reset(flags.UPSTREAM_CONNECTION_TERMINATION, "connection termination")

    def pause_writing(self) -> None:
        if self.callbacks is not None:
            self.callbacks.on_upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.callbacks is not None:
            self.callbacks.on_upstream_resume_writing()

    # --- ResponseParser callbacks --------------------------------------
    def on_response_head(self, status: int, http10: bool, block: bytes, content_length: str | None,
                         transfer_encoding: str | None, keep_alive: bool) -> None:
        self.status = status
        if 100 <= status < 200:
            if status == 101 and self.upgrading:
                # the upgrade is accepted: the connection becomes a tunnel for this stream, never pooled
                self.tunnel = True
                self.headers_sent = True
                self.close_delimited = True  # its end is the connection's close
                self.callbacks.on_upstream_headers(101, wire_headers([(":status", "101")], block, {}), False)  # type: ignore[union-attr]
            return  # else an interim response (we answered Expect ourselves): swallowed
        headers = wire_headers(
            [(":status", _STATUS_TEXT[status] if 200 <= status < 600 else str(status))], block,
            {"content-length": content_length, "transfer-encoding": transfer_encoding},
        )
        self.headers_sent = True
        if self.is_head:
            end_stream = True  # the parser was told (expect_no_body): the head ends the response
        else:
            end_stream = status == 204 or status == 304 or (
                content_length is not None and content_length.strip() == "0")
            self.close_delimited = (content_length is None and not end_stream and (
                transfer_encoding is None or "chunked" not in transfer_encoding.lower()))
        self.ended = end_stream
        self.callbacks.on_upstream_headers(status, headers, end_stream)  # type: ignore[union-attr]

    @cython.locals(callbacks=UpstreamCallbacks)
    def on_body(self, body: bytes) -> None:
        callbacks = self.callbacks
        if callbacks is not None:
            callbacks.on_upstream_data(body, False)

    def on_message_complete(self, keep_alive: bool) -> None:
        if 100 <= self.status < 200:
            return
        self._complete(keep_alive)

    # --- RequestEncoder --------------------------------------------------
    @cython.locals(method=str, framing=bytes)
    def encode_headers(self, callbacks: UpstreamCallbacks, headers: HeaderMap, end_stream: bool) -> None:
        """The request head, framed as Envoy's HTTP/1 codec does: no body, Content-Length when
        the request says it, else chunked."""
        method = headers.get(":method") or ""
        self.chunked = False
        self.upgrading = False
        if end_stream:
            framing = _CONTENT_LENGTH_ZERO if method in _METHODS_WITH_BODY else b""
            upgrade = headers.get("upgrade")
            if upgrade is not None:  # an upgrade the connection manager allowed: its headers go along
                self.upgrading = True
                framing += b"connection: upgrade\r\nupgrade: " + upgrade.encode("latin-1") + b"\r\n"
        else:
            framing = http1.content_length_framing(headers.get("content-length"))
            if framing is None:
                framing = http1.CHUNKED
                self.chunked = True
        self.start_request(callbacks, http1.encode_request_head(headers, framing), method == "HEAD")

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if self.chunked:
            if data:
                self.write(http1.chunk(data))
            if end_stream:
                self.chunked = False
                self.write(http1.LAST_CHUNK)
        elif data:
            self.write(data)

    # --- driving -------------------------------------------------------
    @cython.locals(callbacks="UpstreamCallbacks")
    def _complete(self, keep_alive: bool) -> None:
        callbacks = self.callbacks
        self.response_done = True
        self.callbacks = None
        # Release before delivering the end: the next (pipelined) request may reuse us at once.
        # A connection aborted or closed inside this read (its transport is going) is not reused.
        self.pool.release(self, keep_alive and not self.close_delimited and not self.local_reason)
        if callbacks is not None and not self.ended:
            self.ended = True
            callbacks.on_upstream_data(b"", True)

    def start_request(self, callbacks: UpstreamCallbacks, head: bytes, is_head: bool) -> None:
        self.callbacks = callbacks
        self.is_head = is_head
        self.headers_sent = False
        self.close_delimited = False
        self.response_done = False
        self.ended = False
        self.requests += 1
        if is_head:
            self.parser.expect_no_body()
        self.pool.stats_tx.value += len(head)
        self.transport.write(head)  # type: ignore[union-attr]

    def write(self, data: bytes) -> None:
        self.pool.stats_tx.value += len(data)
        self.transport.write(data)  # type: ignore[union-attr]

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    def _end_request(self) -> None:
        """The request on this connection is over: give its ``max_requests`` slot back."""
        resource = self.rq_resource
        if resource is not None:
            self.rq_resource = None
            resource.dec()

    @cython.locals(callbacks="UpstreamCallbacks")
    def _reset(self, flag: str, reason: str) -> None:
        self._end_request()
        callbacks = self.callbacks
        self.callbacks = None
        if callbacks is not None:
            callbacks.on_upstream_reset(flag, reason)

    def _protocol_error(self, reason: str) -> None:
        """The upstream sent something that is not HTTP/1.1 (Envoy's codec error: counted, connection closed)."""
        self.pool.cluster.stats.upstream_cx_protocol_error.value += 1
        self._reset(flags.UPSTREAM_PROTOCOL_ERROR, reason)
        self.close()

    def abort(self, reason: str = "local reset") -> None:
        """The downstream went away or timed out: this connection's state is unknown, drop it."""
        self._end_request()
        self.callbacks = None
        self.local_reason = reason
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def close(self, reason: str = "local close") -> None:
        self.local_reason = reason
        if self.transport is not None and not self.closed:
            self.transport.close()


class HttpConnectionPool:
    """HTTP/1.1 connections to one host: idle ones (LIFO) and the requests waiting for one (FIFO)."""

    if not cython.compiled:  # compiled, the fields come from http_pool.pxd
        __slots__ = (
            "cluster", "host", "loop", "idle", "all", "closing", "pending", "connecting", "_serve_scheduled",
            "stats_rx", "stats_tx", "_idle_timer",
        )

    def __init__(self, cluster: Cluster, host: Host, loop: asyncio.AbstractEventLoop) -> None:
        self.cluster = cluster
        self.host = host
        self.loop = loop
        self.idle: list[Http1ClientConnection] = []
        self.all: set[Http1ClientConnection] = set()
        self.closing = False
        # requests waiting for a connection, oldest first, with the circuit breakers they count in
        self.pending: deque[tuple[PoolCallbacks, ResourceManager]] = deque()
        self.connecting = 0  # connects under way for pending requests
        self._serve_scheduled = False
        stats = cluster.stats
        self.stats_rx = stats.upstream_cx_rx_bytes_total
        self.stats_tx = stats.upstream_cx_tx_bytes_total
        self._idle_timer: asyncio.TimerHandle | None = None

    # --- requests ------------------------------------------------------
    @cython.locals(conn="Http1ClientConnection", requests="Resource")
    def acquire(self, callbacks: PoolCallbacks, manager: ResourceManager) -> Http1ClientConnection | None:
        """A connection for one request now, or None: then the request either waits for
        ``callbacks.on_pool_ready`` / ``on_pool_failure`` or was refused (``on_pool_failure``
        already called). Requests already waiting go first."""
        if not self.pending:
            idle = self.idle
            while idle:
                conn = idle.pop()
                if conn.closed:
                    continue
                requests = manager.requests
                if requests.try_acquire():
                    conn.rq_resource = requests
                    return conn
                idle.append(conn)
                self.cluster.stats.upstream_rq_active_overflow.value += 1
                callbacks.on_pool_failure(flags.UPSTREAM_OVERFLOW, OVERFLOW)
                return None
        return self._enqueue(callbacks, manager)

    def _enqueue(self, callbacks: PoolCallbacks, manager: ResourceManager) -> None:
        if queue_pending(self.pending, callbacks, manager, self.cluster.stats):
            self._create_connections(manager)
        return None

    def cancel(self, callbacks: PoolCallbacks) -> bool:
        """A pending request gave up (client gone, timeout): it leaves the queue."""
        return cancel_pending(self.pending, callbacks, self.cluster.stats)

    @cython.locals(manager="ResourceManager", requests="Resource")
    def _attach_oldest(self, conn: Http1ClientConnection) -> bool:
        """Hand ``conn`` to the oldest pending request that ``max_requests`` admits."""
        pending = self.pending
        stats = self.cluster.stats
        while pending:
            callbacks, manager = pending.popleft()
            manager.pending_requests.dec()
            stats.upstream_rq_pending_active.value -= 1
            requests = manager.requests
            if requests.try_acquire():
                conn.rq_resource = requests
                callbacks.on_pool_ready(conn)
                return True
            stats.upstream_rq_active_overflow.value += 1
            callbacks.on_pool_failure(flags.UPSTREAM_OVERFLOW, OVERFLOW)
        return False

    def _schedule_serve(self) -> None:
        # Deferred like Envoy's onUpstreamReady: a connection comes back from inside its parser
        # callbacks, where starting the next request on it would re-enter them.
        if not self._serve_scheduled:
            self._serve_scheduled = True
            self.loop.call_soon(self._serve_pending)

    @cython.locals(conn="Http1ClientConnection")
    def _serve_pending(self) -> None:
        self._serve_scheduled = False
        idle = self.idle
        while self.pending and idle:
            conn = idle.pop()
            if conn.closed:
                continue
            if not self._attach_oldest(conn):
                idle.append(conn)

    def _purge_pending(self, flag: str, reason: str) -> None:
        """Fail every pending request (Envoy does so on a connect failure: the host is suspect)."""
        pending = self.pending
        if not pending:
            return
        self.pending = deque()  # a retry that comes back in while we call out queues afresh
        fail_pending(pending, self.cluster.stats, flag, reason)

    # --- connections ---------------------------------------------------
    def _create_connections(self, manager: ResourceManager) -> None:
        """One connection under way per pending request not covered by an idle one, as far as
        ``max_connections`` (and the per-host limit) allow."""
        while self.connecting + len(self.idle) < len(self.pending):
            connections = manager.connections
            if not (manager.host_allows_connection(self.host, self.connecting) and connections.try_acquire()):
                self.cluster.stats.upstream_cx_overflow.value += 1
                if self.all or self.connecting:
                    return  # a connection of this pool serves the queue when it frees up
                # As Envoy: a pool with no connection at all gets one anyway, or its queue
                # could wait on connections held by other hosts' (or workers') pools forever.
                connections.inc()
            self.connecting += 1
            self.loop.create_task(self._connect_pending(connections))

    async def _connect_pending(self, resource: Resource) -> None:
        try:
            conn = await self.connect(resource)
        except ConnectError as exc:
            self.connecting -= 1
            self._purge_pending(exc.flag, exc.reason)
            return
        except BaseException:
            self.connecting -= 1
            raise
        self.connecting -= 1
        if not (self.pending and self._attach_oldest(conn)):
            self.release(conn, True)

    @cython.locals(conn="Http1ClientConnection")
    def take_idle(self) -> Http1ClientConnection | None:
        """An idle connection, bypassing the circuit breakers and the queue (prefer :meth:`acquire`)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def connect(self, resource: Resource | None = None) -> Http1ClientConnection:
        """Open a connection; ``resource`` is the ``max_connections`` slot it holds until it closes."""
        cluster = self.cluster
        stats = cluster.stats
        host = self.host
        stats.upstream_cx_total.value += 1
        stats.upstream_cx_http1_total.value += 1
        host.stats.cx_total += 1
        started = time.monotonic()
        conn = Http1ClientConnection(self)
        try:
            await asyncio.wait_for(
                self.loop.create_connection(lambda: conn, host.ip, host.port),
                cluster.connect_timeout,
            )
        except TimeoutError:
            if resource is not None:
                resource.dec()
            stats.connect_failed(True)
            host.stats.cx_connect_fail += 1
            raise ConnectError(flags.UPSTREAM_CONNECTION_FAILURE, "connection timeout") from None
        except OSError as exc:
            if resource is not None:
                resource.dec()
            stats.connect_failed(False)
            host.stats.cx_connect_fail += 1
            raise ConnectError(flags.UPSTREAM_CONNECTION_FAILURE, exc.strerror or str(exc)) from None
        except BaseException:  # cancelled (shutdown)
            if resource is not None:
                resource.dec()
            raise
        stats.upstream_cx_connect_ms.record((time.monotonic() - started) * 1000)
        stats.upstream_cx_active.value += 1
        host.stats.cx_active += 1
        conn.cx_resource = resource  # given back in on_connection_closed
        if cluster.max_connection_duration:
            conn.age_timer = self.loop.call_later(cluster.max_connection_duration, self._connection_aged, conn)
        self.all.add(conn)
        if self.closing:
            conn.close("pool closed")
            raise ConnectError(flags.UPSTREAM_CONNECTION_FAILURE, "connection pool closed")
        return conn

    def _connection_aged(self, conn: Http1ClientConnection) -> None:
        """max_connection_duration reached: an idle connection closes now, a busy one after its request."""
        conn.age_timer = None
        if conn.closed:
            return
        self.cluster.stats.upstream_cx_max_duration_reached.value += 1
        if conn in self.idle:
            self.idle.remove(conn)
            conn.close("max connection duration")
        else:
            conn.expired = True

    def release(self, conn: Http1ClientConnection, keep_alive: bool) -> None:
        conn._end_request()
        limit = self.cluster.max_requests_per_connection
        if limit and conn.requests >= limit:
            self.cluster.stats.upstream_cx_max_requests.value += 1
            keep_alive = False
        if conn.expired:
            keep_alive = False
        if not keep_alive or self.closing or conn.closed:
            conn.close("no keep-alive")
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)
        if self.pending:
            self._schedule_serve()
        if self._idle_timer is None and self.cluster.idle_timeout:
            self._idle_timer = self.loop.call_later(self.cluster.idle_timeout, self._sweep_idle)

    def _sweep_idle(self) -> None:
        self._idle_timer = None
        timeout = self.cluster.idle_timeout
        if not timeout:
            return
        now = self.loop.time()
        keep = []
        for conn in self.idle:
            if conn.closed:
                continue
            if now - conn.idle_since >= timeout:
                self.cluster.stats.upstream_cx_idle_timeout.value += 1
                conn.close("idle timeout")
            else:
                keep.append(conn)
        self.idle = keep
        if keep:
            earliest = min(conn.idle_since for conn in keep)
            self._idle_timer = self.loop.call_later(max(0.01, earliest + timeout - now), self._sweep_idle)

    def on_connection_closed(self, conn: Http1ClientConnection, remote: bool) -> None:
        if conn not in self.all:
            return
        self.all.discard(conn)
        if conn.age_timer is not None:
            conn.age_timer.cancel()
            conn.age_timer = None
        resource = conn.cx_resource
        if resource is not None:
            conn.cx_resource = None
            resource.dec()
        self.cluster.stats.connection_destroyed(remote, conn.callbacks is not None, conn.created)
        self.host.stats.cx_active -= 1
        if self.pending and not self.closing:
            self._create_connections(self.pending[0][1])  # a connection slot just came free

    def drain(self) -> None:
        """The host left the cluster: close idle connections now, busy ones when their request ends."""
        self.closing = True
        for conn in self.idle:
            conn.close("host removed")
        self.idle.clear()
        self._purge_pending(flags.UPSTREAM_CONNECTION_FAILURE, "connection pool closed")

    async def close(self) -> None:
        self.closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for conn in list(self.all):
            conn.close("pool closed")
        self.idle.clear()
        self._purge_pending(flags.UPSTREAM_CONNECTION_FAILURE, "connection pool closed")


def pool_for(host: Any, cluster: Any, loop: asyncio.AbstractEventLoop) -> HttpConnectionPool:
    pool = host.pool
    if pool is None:
        pool = host.pool = HttpConnectionPool(cluster, host, loop)
    return pool
