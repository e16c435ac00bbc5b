"""HTTP/2 upstream connections and the per-host pool that multiplexes requests onto them.

Envoy's multiplexed pool (``Http2::ConnPoolImpl``): a request becomes a stream of a connection
that has room for it, as many at once as ``min(max_concurrent_streams configured, the server's
SETTINGS_MAX_CONCURRENT_STREAMS)`` allow; a connection opens when the streams waiting exceed the
room of the connections already opening, within the cluster's circuit breakers (``max_requests``
counts streams, ``max_pending_requests`` the queue, ``max_connections`` connections; a pool
with no connection gets one anyway, as in Envoy). ``max_requests_per_connection`` and
``max_connection_duration`` retire a connection (it takes no new stream and closes when its last
one ends); ``idle_timeout`` closes one without streams. A GOAWAY from the server retires it too,
and its streams above the GOAWAY's last stream id fail as refused (``retry_on: refused-stream``).

Each request's :class:`Http2ClientStream` is the router's ``RequestEncoder``: it turns the request's
``HeaderMap`` into HTTP/2 header fields (connection-specific headers dropped, ``te: trailers``
kept), streams the body with the server's flow control pushing back on the client past the
buffer limit, and returns window to the server only as the response is forwarded, so a slow
client slows the server down. Frames produced while handling requests leave together once the
event loop comes round (one write for many streams); what a read produces leaves when it ends.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import cython

from tulle import stream_info as flags
from tulle.http.codec_callbacks import CodecCallbacks
from tulle.http.headers import HeaderMap
from tulle.http.http2_codec import CANCEL, NO_ERROR, REFUSED_STREAM, Http2Error, Http2Session
from tulle.upstream.http_pool import OVERFLOW, ConnectError, cancel_pending, fail_pending, queue_pending
from tulle.upstream.request_encoder import REMOTE_REFUSED, RequestEncoder, UpstreamCallbacks

if TYPE_CHECKING:
    from tulle.upstream.cluster import Cluster
    from tulle.upstream.host import Host
    from tulle.upstream.resource_manager import Resource, ResourceManager

# RFC 9113 section 8.2.2: not carried by HTTP/2 (``te`` only as "trailers"); ``host`` becomes :authority
_CONNECTION_SPECIFIC = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host",
})
# Envoy's StreamResetReason strings, as in its local replies and %UPSTREAM_TRANSPORT_FAILURE_REASON%
REMOTE_RESET = "remote reset"
_random = random.random


def request_fields(headers: HeaderMap) -> list[tuple[str, str]]:
    """The request's HTTP/2 header list: pseudo-headers first (RFC 9113 section 8.3.1)."""
    if headers.wire is not None:
        headers._decode()
    method = path = authority = ""
    scheme = "http"
    fields: list[tuple[str, str]] = []
    for name, value in headers._items:
        if name[0] == ":":
            if name == ":method":
                method = value
            elif name == ":path":
                path = value
            elif name == ":authority":
                authority = value
            elif name == ":scheme":
                scheme = value
            continue
        if name in _CONNECTION_SPECIFIC:
            continue
        if name == "te" and value.strip().lower() != "trailers":
            continue
        fields.append((name, value))
    return [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path), *fields]


def response_headers(fields: list[tuple[str, str]]) -> tuple[int, HeaderMap]:
    """(status, HeaderMap) of a response's HEADERS; nghttp2 checked that :status leads and is valid."""
    status_text = "200"
    items: list[tuple[str, str]] = [(":status", status_text)]
    for name, value in fields:
        if name[0] == ":":
            if name == ":status":
                status_text = value
            continue
        items.append((name, value))
    items[0] = (":status", status_text)
    return int(status_text), HeaderMap.of(items)


class Http2ClientStream(RequestEncoder):
    """One request on an HTTP/2 connection (the router's encoder for it)."""

    if not cython.compiled:  # compiled, the fields come from http2_pool.pxd
        __slots__ = ("connection", "stream_id", "callbacks", "rq_resource", "headers_received", "local_ended",
                     "read_paused", "held", "write_paused", "in_read")

    def __init__(self, connection: Http2ClientConnection, rq_resource: Resource | None) -> None:
        self.connection = connection
        self.stream_id = 0  # given when the request's HEADERS are submitted
        self.callbacks: UpstreamCallbacks | None = None
        self.rq_resource = rq_resource  # its max_requests slot, given back when the stream ends
        self.headers_received = False  # the response's headers came (what follows is DATA, then trailers)
        self.local_ended = False
        self.read_paused = 0
        self.held = 0  # response bytes forwarded while paused: their window goes back on resume
        self.write_paused = False
        self.in_read = False

    # --- RequestEncoder ------------------------------------------------
    def encode_headers(self, callbacks: UpstreamCallbacks, headers: HeaderMap, end_stream: bool) -> None:
        connection = self.connection
        self.callbacks = callbacks
        self.local_ended = end_stream
        fields = request_fields(headers)
        try:
            self.stream_id = connection.session.submit_request(fields, end_stream)
        except Http2Error as exc:  # the session refused it (closed, out of stream ids)
            connection.loop.call_soon(self._refused, f"protocol error: {exc.details}")
            return
        connection.streams[self.stream_id] = self
        connection.flush_soon()

    def _refused(self, reason: str) -> None:
        self.connection.stream_closed(self)
        callbacks = self.callbacks
        self.callbacks = None
        if callbacks is not None:
            callbacks.on_upstream_reset(flags.UPSTREAM_PROTOCOL_ERROR, reason)

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        connection = self.connection
        if not self.stream_id or self.local_ended:
            return
        if end_stream:
            self.local_ended = True
        if data:
            connection.pool.stats_tx.value += len(data)
        buffered = connection.session.send_data(self.stream_id, data, end_stream)
        if buffered > connection.pool.cluster.per_connection_buffer_limit_bytes and not self.write_paused:
            # the server's window is closed and this request's body piles up: stop reading the client
            self.write_paused = True
            if self.callbacks is not None:
                self.callbacks.on_upstream_pause_writing()
        connection.flush_soon()

    def encode_trailers(self, trailers: HeaderMap) -> None:
        if not self.stream_id or self.local_ended:
            return
        self.local_ended = True
        items = [(name, value) for name, value in trailers if name[0] != ":" and name not in _CONNECTION_SPECIFIC]
        self.connection.session.send_trailers(self.stream_id, items)
        self.connection.flush_soon()

    def pause_reading(self) -> None:
        self.read_paused += 1

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused -= 1
            if not self.read_paused and self.held:
                held, self.held = self.held, 0
                self.connection.session.consume(self.stream_id, held)
                self.connection.flush_soon()

    def abort(self, reason: str = "local reset") -> None:
        """The router gave the request up: RST_STREAM(CANCEL), and the stream's room is free again."""
        self.callbacks = None
        connection = self.connection
        if self.stream_id and self.rq_resource is not None and not connection.closed:  # still open
            connection.session.reset_stream(self.stream_id, CANCEL)
            connection.flush_soon()
        connection.stream_closed(self)


class Http2ClientConnection(CodecCallbacks):
    """An HTTP/2 connection to one host: an asyncio.Protocol by its methods, and the session's owner."""

    if not cython.compiled:  # compiled, the fields come from http2_pool.pxd
        __slots__ = ("pool", "loop", "transport", "session", "streams", "active", "total", "closed", "retired",
                     "created", "idle_since", "cx_resource", "local_reason", "age_timer", "receiving",
                     "flush_scheduled", "touched", "keepalive_timer", "ping_outstanding", "write_paused")

    def __init__(self, pool: Http2ConnectionPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.session = Http2Session(self, False, pool.cluster.http2_settings)
        self.streams: dict[int, Http2ClientStream] = {}  # by stream id, once submitted
        self.active = 0  # streams given out (submitted or about to be) and not ended
        self.total = 0  # streams ever given out (max_requests_per_connection)
        self.closed = False
        self.retired = False  # takes no new stream (GOAWAY, max requests, max duration, pool drained)
        self.created = time.monotonic()
        self.idle_since = 0.0
        self.cx_resource: Resource | None = None
        self.local_reason = ""
        self.age_timer: asyncio.TimerHandle | None = None
        self.receiving = False  # inside session.receive: nghttp2 must not be asked to send
        self.flush_scheduled = False
        self.touched: list[tuple[Http2ClientStream, UpstreamCallbacks]] = []  # streams a read delivered to
        self.keepalive_timer: asyncio.TimerHandle | None = None
        self.ping_outstanding = False
        self.write_paused = False

    def room(self) -> int:
        """How many more streams this connection takes now."""
        if self.retired or self.closed:
            return 0
        limit = min(self.pool.cluster.http2_settings.max_concurrent_streams, self.session.remote_max_concurrent_streams())
        room = limit - self.active
        max_requests = self.pool.cluster.max_requests_per_connection
        if max_requests:
            room = min(room, max_requests - self.total)
        return max(room, 0)

    def new_stream(self, rq_resource: Resource | None) -> Http2ClientStream:
        self.active += 1
        self.total += 1
        max_requests = self.pool.cluster.max_requests_per_connection
        if max_requests and self.total >= max_requests:
            self.pool.cluster.stats.upstream_cx_max_requests.value += 1
            self.retire()
        return Http2ClientStream(self, rq_resource)

    def stream_closed(self, stream: Http2ClientStream) -> None:
        """The stream is over (ended both ways, reset or refused): its slots come back."""
        resource = stream.rq_resource
        if resource is None:
            return  # already counted out
        stream.rq_resource = None
        resource.dec()
        if stream.stream_id:
            self.streams.pop(stream.stream_id, None)
        self.active -= 1
        self.pool.on_stream_closed(self)

    def retire(self) -> None:
        if not self.retired:
            self.retired = True
            self.pool.on_retired(self)
            if not self.active:
                self.close("retired")

    # --- asyncio.Protocol ----------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        cluster = self.pool.cluster
        limit = cluster.per_connection_buffer_limit_bytes
        transport.set_write_buffer_limits(high=limit, low=limit // 2)
        if cluster.tcp_keepalive is not None:
            cluster.tcp_keepalive.apply(transport.get_extra_info("socket"))
        self.flush()  # the connection preface and our SETTINGS
        if cluster.http2_keepalive[0]:
            self._schedule_ping()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.pool.stats_rx.value += len(data)
        self.receiving = True
        try:
            self.session.receive(data)
        except Http2Error as exc:
            self.receiving = False
            self._protocol_error(f"protocol error: {exc.details}")
            return
        except Exception as exc:  # noqa: BLE001 - raised by the router through our callbacks
            self.receiving = False
            self._protocol_error(f"protocol error: callback failed: {exc!r}")
            return
        finally:
            self.receiving = False
            self._end_read()
        self.flush()
        if not self.session.wants_io() and not self.closed:
            self.close("session ended")
        elif self.pool.pending:
            self.pool.schedule_serve()  # the server's SETTINGS may have made room

    def _end_read(self) -> None:
        touched = self.touched
        if touched:
            self.touched = []
            for stream, callbacks in touched:
                stream.in_read = False
                callbacks.on_upstream_read_end()

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.keepalive_timer is not None:
            self.keepalive_timer.cancel()
            self.keepalive_timer = None
        streams = list(self.streams.values())
        self.streams = {}
        with_streams = self.active > 0
        self.pool.on_connection_closed(self, remote=not self.local_reason, with_streams=with_streams)
        if isinstance(exc, ConnectionResetError):
            flag, reason = flags.UPSTREAM_REMOTE_RESET, REMOTE_RESET
        else:
            flag, reason = flags.UPSTREAM_CONNECTION_TERMINATION, "connection termination"
        for stream in streams:
            self._fail(stream, flag, reason)
        self.session.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in list(self.streams.values()):
            if stream.callbacks is not None:
                stream.callbacks.on_upstream_pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            if stream.callbacks is not None and not stream.write_paused:
                stream.callbacks.on_upstream_resume_writing()

    # --- the session's callbacks ---------------------------------------
    def _deliver_to(self, stream: Http2ClientStream) -> UpstreamCallbacks | None:
        callbacks = stream.callbacks
        if callbacks is not None and not stream.in_read:
            stream.in_read = True
            self.touched.append((stream, callbacks))
            callbacks.on_upstream_read_begin()  # cork the client: what this read brings leaves in one write
        return callbacks

    def on_h2_headers(self, stream_id: int, fields: list[tuple[str, str]], end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        callbacks = self._deliver_to(stream)
        if stream.headers_received:  # trailers (nghttp2 delivers them only with END_STREAM)
            self._remote_ended(stream)
            if callbacks is not None:
                callbacks.on_upstream_trailers(HeaderMap.of([item for item in fields if item[0][0] != ":"]))
            return
        status, headers = response_headers(fields)
        if 100 <= status < 200:
            return  # interim (we answered Expect ourselves): swallowed, as on HTTP/1
        stream.headers_received = True
        if end_stream:
            self._remote_ended(stream)
        if callbacks is not None:
            callbacks.on_upstream_headers(status, headers, end_stream)

    def on_h2_headers_too_large(self, stream_id: int) -> None:
        # nghttp2 resets the stream (INTERNAL_ERROR) and on_h2_stream_close follows; Envoy's codec says why
        stream = self.streams.get(stream_id)
        if stream is not None:
            self.pool.cluster.stats.upstream_cx_protocol_error.value += 1
            self._fail(stream, flags.UPSTREAM_PROTOCOL_ERROR, "protocol error: response headers too large")

    def on_h2_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        stream = self.streams.get(stream_id)
        size = len(data)
        if stream is None:
            self.session.consume(stream_id, size)  # nobody reads it: the window goes straight back
            return
        callbacks = self._deliver_to(stream)
        if size:
            if stream.read_paused:
                stream.held += size  # the client reads slowly: the server's window comes back on resume
            else:
                self.session.consume(stream_id, size)
        if end_stream:
            self._remote_ended(stream)
        if callbacks is not None and (size or end_stream):
            callbacks.on_upstream_data(data, end_stream)

    def on_h2_stream_close(self, stream_id: int, error_code: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            return
        if error_code == REFUSED_STREAM:
            self._fail(stream, flags.UPSTREAM_REMOTE_RESET, REMOTE_REFUSED)
        else:
            self._fail(stream, flags.UPSTREAM_REMOTE_RESET, REMOTE_RESET)

    def on_h2_ping_ack(self) -> None:
        if self.ping_outstanding:
            self.ping_outstanding = False
            if self.keepalive_timer is not None:
                self.keepalive_timer.cancel()
            self._schedule_ping()

    def on_h2_goaway(self, last_stream_id: int, error_code: int) -> None:
        """The server is going away: no new stream here; those it will not process failed, refused."""
        self.retire()
        for stream_id, stream in list(self.streams.items()):
            if stream_id > last_stream_id:
                self._fail(stream, flags.UPSTREAM_REMOTE_RESET, REMOTE_REFUSED)

    # --- stream ends ---------------------------------------------------
    def _remote_ended(self, stream: Http2ClientStream) -> None:
        """The response is complete. A request still being sent is cut off (RST_STREAM(CANCEL)), as
        Envoy's router does once the response has ended."""
        if not stream.local_ended:
            stream.local_ended = True
            self.session.reset_stream(stream.stream_id, CANCEL)
        self.stream_closed(stream)

    def _fail(self, stream: Http2ClientStream, flag: str, reason: str) -> None:
        self.stream_closed(stream)
        callbacks = stream.callbacks
        stream.callbacks = None
        if callbacks is not None:
            callbacks.on_upstream_reset(flag, reason)

    def _protocol_error(self, reason: str) -> None:
        """The server broke HTTP/2 (Envoy's codec error): counted, its streams fail, GOAWAY and close."""
        self.pool.cluster.stats.upstream_cx_protocol_error.value += 1
        self.retire()
        for stream in list(self.streams.values()):
            self._fail(stream, flags.UPSTREAM_PROTOCOL_ERROR, reason)
        self.flush()
        self.close("protocol error")

    # --- output --------------------------------------------------------
    def flush_soon(self) -> None:
        """Write what the session has once the event loop comes round: the frames of every stream
        started meanwhile leave in one write."""
        if not self.flush_scheduled and not self.receiving:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.closed or self.receiving or self.transport is None:
            return
        data = self.session.take_output()
        if data:
            self.pool.stats_tx.value += len(data)
            self.transport.write(data)
        if self.session.drained:
            self.session.drained = False
            self._resume_drained_streams()

    def _resume_drained_streams(self) -> None:
        low = self.pool.cluster.per_connection_buffer_limit_bytes // 2
        for stream in list(self.streams.values()):
            if stream.write_paused and self.session.buffered(stream.stream_id) <= low:
                stream.write_paused = False
                if stream.callbacks is not None:
                    stream.callbacks.on_upstream_resume_writing()

    # --- connection_keepalive: a PING every interval; no ACK within timeout closes ---
    def _schedule_ping(self) -> None:
        interval, _, jitter = self.pool.cluster.http2_keepalive
        self.keepalive_timer = self.loop.call_later(interval * (1.0 + jitter * _random()), self._send_ping)

    def _send_ping(self) -> None:
        if self.closed:
            return
        self.ping_outstanding = True
        self.session.ping()
        self.flush()
        self.keepalive_timer = self.loop.call_later(self.pool.cluster.http2_keepalive[1], self._ping_timed_out)

    def _ping_timed_out(self) -> None:
        self.keepalive_timer = None
        if self.closed or not self.ping_outstanding:
            return
        self.local_reason = "keepalive timeout"
        if self.transport is not None:
            self.transport.abort()  # the server is gone or stuck: its streams fail as connection termination

    def close(self, reason: str = "local close") -> None:
        if self.closed:
            return
        self.local_reason = reason
        if self.transport is not None:
            self.session.goaway(NO_ERROR)
            self.flush()
            self.transport.close()


class Http2ConnectionPool:
    """HTTP/2 connections to one host: those with room take streams; requests without room wait (FIFO)."""

    if not cython.compiled:  # compiled, the fields come from http2_pool.pxd
        __slots__ = ("cluster", "host", "loop", "ready", "all", "connecting", "pending", "closing",
                     "_serve_scheduled", "_idle_timer", "stats_rx", "stats_tx")

    def __init__(self, cluster: Cluster, host: Host, loop: asyncio.AbstractEventLoop) -> None:
        self.cluster = cluster
        self.host = host
        self.loop = loop
        self.ready: list[Http2ClientConnection] = []  # connected and not retired
        self.all: set[Http2ClientConnection] = set()
        self.connecting = 0  # connections being opened, each expected to take max_concurrent_streams
        self.pending: deque[tuple[Any, ResourceManager]] = deque()
        self.closing = False
        self._serve_scheduled = False
        self._idle_timer: asyncio.TimerHandle | None = None
        stats = cluster.stats
        self.stats_rx = stats.upstream_cx_rx_bytes_total
        self.stats_tx = stats.upstream_cx_tx_bytes_total

    # --- requests ------------------------------------------------------
    def acquire(self, callbacks: Any, manager: ResourceManager) -> Http2ClientStream | None:
        """A stream for one request now, or None (then ``callbacks.on_pool_ready`` /
        ``on_pool_failure`` answer later, or already did: overflow)."""
        if not self.pending:
            conn = self._with_room()
            if conn is not None:
                requests = manager.requests
                if requests.try_acquire():
                    return conn.new_stream(requests)
                self.cluster.stats.upstream_rq_active_overflow.value += 1
                callbacks.on_pool_failure(flags.UPSTREAM_OVERFLOW, OVERFLOW)
                return None
        if queue_pending(self.pending, callbacks, manager, self.cluster.stats):
            self._create_connections(manager)
        return None

    def _with_room(self) -> Http2ClientConnection | None:
        for conn in self.ready:
            if conn.room() > 0:
                return conn
        return None

    def cancel(self, callbacks: Any) -> bool:
        return cancel_pending(self.pending, callbacks, self.cluster.stats)

    def release_unused(self, stream: Http2ClientStream) -> None:
        """A stream given to a request that was gone by then: its room comes back."""
        stream.connection.stream_closed(stream)

    def schedule_serve(self) -> None:
        if not self._serve_scheduled:
            self._serve_scheduled = True
            self.loop.call_soon(self._serve_pending)

    def _serve_pending(self) -> None:
        self._serve_scheduled = False
        stats = self.cluster.stats
        while self.pending:
            conn = self._with_room()
            if conn is None:
                self._create_connections(self.pending[0][1])
                return
            callbacks, manager = self.pending.popleft()
            manager.pending_requests.dec()
            stats.upstream_rq_pending_active.value -= 1
            requests = manager.requests
            if requests.try_acquire():
                callbacks.on_pool_ready(conn.new_stream(requests))
            else:
                stats.upstream_rq_active_overflow.value += 1
                callbacks.on_pool_failure(flags.UPSTREAM_OVERFLOW, OVERFLOW)

    def _purge_pending(self, flag: str, reason: str) -> None:
        pending = self.pending
        if not pending:
            return
        self.pending = deque()
        fail_pending(pending, self.cluster.stats, flag, reason)

    # --- connections ---------------------------------------------------
    def _create_connections(self, manager: ResourceManager) -> None:
        """Open connections until those being opened can take every waiting request."""
        per_connection = self.cluster.http2_settings.max_concurrent_streams
        if self.cluster.max_requests_per_connection:
            per_connection = min(per_connection, self.cluster.max_requests_per_connection)
        while self.connecting * per_connection < len(self.pending) and not self.closing:
            connections = manager.connections
            if not (manager.host_allows_connection(self.host, self.connecting) and connections.try_acquire()):
                self.cluster.stats.upstream_cx_overflow.value += 1
                if self.all or self.connecting:
                    return  # a stream of this pool's connections serves the queue when it ends
                connections.inc()  # as Envoy: a pool with no connection gets one anyway
            self.connecting += 1
            self.loop.create_task(self._connect(connections))

    async def _connect(self, resource: Resource) -> None:
        cluster = self.cluster
        stats = cluster.stats
        host = self.host
        stats.upstream_cx_total.value += 1
        stats.upstream_cx_http2_total.value += 1
        host.stats.cx_total += 1
        started = time.monotonic()
        conn = Http2ClientConnection(self)
        try:
            await asyncio.wait_for(self.loop.create_connection(lambda: conn, host.ip, host.port),
                                   cluster.connect_timeout)
        except (TimeoutError, OSError) as exc:
            self.connecting -= 1
            resource.dec()
            conn.session.close()
            timed_out = isinstance(exc, TimeoutError)
            reason = "connection timeout" if timed_out else exc.strerror or str(exc)
            stats.connect_failed(timed_out)
            host.stats.cx_connect_fail += 1
            self._purge_pending(flags.UPSTREAM_CONNECTION_FAILURE, reason)
            return
        except BaseException:  # cancelled (shutdown)
            self.connecting -= 1
            resource.dec()
            conn.session.close()
            raise
        self.connecting -= 1
        stats.upstream_cx_connect_ms.record((time.monotonic() - started) * 1000)
        stats.upstream_cx_active.value += 1
        host.stats.cx_active += 1
        conn.cx_resource = resource
        self.all.add(conn)
        if self.closing:
            conn.close("pool closed")
            return
        if cluster.max_connection_duration:
            conn.age_timer = self.loop.call_later(cluster.max_connection_duration, self._connection_aged, conn)
        self.ready.append(conn)
        conn.idle_since = self.loop.time()
        self._serve_pending()
        self._arm_idle_timer()

    def _connection_aged(self, conn: Http2ClientConnection) -> None:
        conn.age_timer = None
        if not conn.closed:
            self.cluster.stats.upstream_cx_max_duration_reached.value += 1
            conn.retire()

    def on_retired(self, conn: Http2ClientConnection) -> None:
        if conn in self.ready:
            self.ready.remove(conn)
        if self.pending and not self.closing:
            self._create_connections(self.pending[0][1])

    def on_stream_closed(self, conn: Http2ClientConnection) -> None:
        if conn.retired:
            if not conn.active:
                conn.close("retired")
            return
        if self.pending:
            self.schedule_serve()
        elif not conn.active:
            conn.idle_since = self.loop.time()
            self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        if self._idle_timer is None and self.cluster.idle_timeout:
            self._idle_timer = self.loop.call_later(self.cluster.idle_timeout, self._sweep_idle)

    def _sweep_idle(self) -> None:
        self._idle_timer = None
        timeout = self.cluster.idle_timeout
        now = self.loop.time()
        soonest = 0.0
        for conn in list(self.ready):
            if conn.active:
                continue
            if now - conn.idle_since >= timeout:
                self.cluster.stats.upstream_cx_idle_timeout.value += 1
                self.ready.remove(conn)
                conn.retired = True
                conn.close("idle timeout")
            elif not soonest or conn.idle_since + timeout < soonest:
                soonest = conn.idle_since + timeout
        if self.ready:
            self._idle_timer = self.loop.call_later(max(0.01, (soonest or now + timeout) - now), self._sweep_idle)

    def on_connection_closed(self, conn: Http2ClientConnection, remote: bool, with_streams: bool) -> None:
        if conn not in self.all:
            return
        self.all.discard(conn)
        if conn in self.ready:
            self.ready.remove(conn)
        if conn.age_timer is not None:
            conn.age_timer.cancel()
            conn.age_timer = None
        resource = conn.cx_resource
        if resource is not None:
            conn.cx_resource = None
            resource.dec()
        self.cluster.stats.connection_destroyed(remote, with_streams, conn.created)
        self.host.stats.cx_active -= 1
        if self.pending and not self.closing:
            self._create_connections(self.pending[0][1])

    def drain(self) -> None:
        """The host left the cluster: connections take no new stream and close when their last ends."""
        self.closing = True
        for conn in list(self.ready):
            conn.retire()
        self._purge_pending(flags.UPSTREAM_CONNECTION_FAILURE, "connection pool closed")

    async def close(self) -> None:
        self.closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for conn in list(self.all):
            conn.retired = True
            conn.close("pool closed")
        self.ready.clear()
        self._purge_pending(flags.UPSTREAM_CONNECTION_FAILURE, "connection pool closed")


__all__ = ["ConnectError", "Http2ClientConnection", "Http2ClientStream", "Http2ConnectionPool", "request_fields",
           "response_headers"]
