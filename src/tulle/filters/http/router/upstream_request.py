"""One attempt at the upstream exchange (Envoy's UpstreamRequest).

The router owns the current attempt; a retry creates a new one. An attempt holds its host
and its pooled connection (taken idle, or waited for in the pool's queue: it is the pool's
``PoolCallbacks``) and is the connection's ``UpstreamCallbacks``: it forwards the response to
the router, or reads and drops it when the router retried it (``draining``). An attempt the
router gave up (``reset``) is detached from the router, so it can never write downstream.
The attempt's timers (per-try, per-try idle, stream duration) live in the router's
``Attempts``: only the current attempt has any.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import cython

from tulle.http.headers import HeaderMap
from tulle.upstream.request_encoder import RequestEncoder, UpstreamCallbacks
from tulle.upstream.upstream_protocol import pool_for

if TYPE_CHECKING:
    from tulle.filters.http.router.filter import RouterFilter

_monotonic = time.monotonic


class UpstreamRequest(UpstreamCallbacks):
    if not cython.compiled:  # compiled, the fields come from upstream_request.pxd
        __slots__ = (
            "router", "downstream", "host", "pool", "conn", "pending", "pending_bytes", "active", "end_sent", "started_at",
            "draining", "cluster_stats",
        )

    @cython.locals(router="RouterFilter", host="Host")
    def __init__(self, router: RouterFilter, host: Any, cluster: Any, loop: Any,
                 pending: list[bytes] | None = None, pending_bytes: int = 0) -> None:
        """Start the attempt: it becomes the router's current one, then asks the pool for a
        connection (the pool may answer, even fail, before this returns)."""
        router.upstream = self
        self.router: RouterFilter | None = router  # None once given up
        # the downstream connection: cork/uncork must pair even when the stream ends inside a read
        self.downstream = router.stream.connection
        self.host = host
        self.conn: RequestEncoder | None = None  # the pool's encoder for this request, once it gives one
        self.pending = pending  # body to write once the connection is ready
        self.pending_bytes = pending_bytes
        self.end_sent = False  # the whole request went out
        self.started_at = 0.0  # when a connection took the request (0: none yet)
        self.draining = False  # retried: the rest of the response is read and dropped
        # upstream_rq_total/_active and the host's rq_total/rq_active count the attempt once a
        # connection takes it, as Envoy's pool does (attachStreamToClient): a request refused by a
        # circuit breaker or failing to connect is not one of them
        self.cluster_stats = cluster.stats
        self.active = True  # not finished yet
        # the cluster's upstream protocol (HTTP/1.1, HTTP/2, or the downstream's) picks the host's pool
        pool = host.pool
        if pool is None or cluster.http2_capable:
            pool = pool_for(host, cluster, loop, router.stream.info.protocol)
        self.pool = pool
        # now, or later through on_pool_ready / on_pool_failure (maybe already called: overflow)
        # the route's priority (DEFAULT, HIGH) picks the circuit breakers the attempt counts in
        conn = pool.acquire(self, cluster.resource_managers[router.route.priority])
        if conn is not None:
            self._pool_ready(conn)

    # --- the pool's PoolCallbacks ------------------------------------------------------

    def on_pool_ready(self, conn: RequestEncoder) -> None:
        if self.router is None:
            self.pool.release_unused(conn)  # given up while waiting: keep the warm connection
            return
        self._pool_ready(conn)

    def on_pool_failure(self, flag: str, reason: str) -> None:
        router = self.router
        if router is not None:
            router.on_attempt_pool_failure(self, flag, reason)

    def _pool_ready(self, conn: RequestEncoder) -> None:
        router = self.router
        assert router is not None
        self.conn = conn
        self.started_at = _monotonic()
        host = self.host
        stats = self.cluster_stats
        stats.upstream_rq_total.value += 1
        stats.upstream_rq_active.value += 1
        host.stats.rq_total += 1
        host.stats.rq_active += 1
        host.outlier.put_connect_success()
        pending = self.pending
        ended = router.request_ended
        conn.encode_headers(self, router.stream.headers, ended and not pending and router.trailers is None)
        if pending:
            self.pending = None
            last = len(pending) - 1
            for index, chunk in enumerate(pending):
                conn.encode_data(chunk, ended and index == last and router.trailers is None)
            self.pending_bytes = 0
            router.resume_downstream()
        if ended:
            self.end_sent = True
            if router.trailers is not None:
                conn.encode_trailers(router.trailers)
        if router.attempts is not None:
            router.on_attempt_ready(self)
        if self.downstream.write_paused:
            conn.pause_reading()

    # --- the request body ------------------------------------------------------
    def send(self, data: bytes, end_stream: bool, router: RouterFilter) -> None:
        conn = self.conn
        if conn is None:
            if data:
                if self.pending is None:
                    self.pending = []
                self.pending.append(data)
                self.pending_bytes += len(data)
                if self.pending_bytes > router.factory.buffer_limit:
                    router.pause_downstream()  # held until the connection is up: stop reading the client
            return
        if end_stream:
            self.end_sent = True
        if data or end_stream:
            conn.encode_data(data, end_stream)

    def send_trailers(self, trailers: HeaderMap) -> None:
        """The request's trailers (they end it); held with the body until a connection is ready."""
        conn = self.conn
        if conn is not None and not self.end_sent:
            self.end_sent = True
            conn.encode_trailers(trailers)

    # --- the connection's callbacks (UpstreamCallbacks) ------------------------------
    def on_upstream_headers(self, status: int, headers: HeaderMap, end_stream: bool) -> None:
        router = self.router
        if router is not None:
            router.on_attempt_headers(self, status, headers, end_stream)
        elif self.draining and end_stream:
            self.draining = False
            self.conn = None  # complete: the pool takes the connection back

    def on_upstream_data(self, data: bytes, end_stream: bool) -> None:
        router = self.router
        if router is not None:
            if end_stream or router.attempts is not None:
                router.on_attempt_data(self, data, end_stream)
            elif not router.stream.done:
                router.stream.encode_data(data, False)  # the common case, one call less per chunk
        elif self.draining and end_stream:
            self.draining = False
            self.conn = None  # complete: the pool took the connection back

    def on_upstream_trailers(self, trailers: HeaderMap) -> None:
        router = self.router
        if router is not None:
            router.on_attempt_trailers(self, trailers)
        elif self.draining:
            self.draining = False
            self.conn = None  # complete: the pool took the stream back

    def on_upstream_reset(self, flag: str, reason: str) -> None:
        self.conn = None
        self.draining = False
        router = self.router
        if router is not None:
            router.on_attempt_reset(self, flag, reason)

    def on_upstream_read_begin(self) -> None:
        self.downstream.cork()

    def on_upstream_read_end(self) -> None:
        self.downstream.uncork()

    def on_upstream_pause_writing(self) -> None:
        # The upstream reads the request body slower than the client sends it.
        router = self.router
        if router is not None:
            router.pause_downstream()

    def on_upstream_resume_writing(self) -> None:
        router = self.router
        if router is not None:
            router.resume_downstream()

    # --- ending ------------------------------------------------------------------
    def finish(self, cluster: Any, success: bool) -> None:
        """The attempt is over (once): it leaves upstream_rq_active if a connection had taken it;
        on success the connection went back to its pool."""
        if not self.active:
            return
        self.active = False
        if self.started_at:
            self.cluster_stats.upstream_rq_active.value -= 1
            self.host.stats.rq_active -= 1
        if success:
            self.conn = None
            self.cluster_stats.upstream_rq_time.record((_monotonic() - self.started_at) * 1000)

    def reset(self, cluster: Any, reason: str) -> None:
        """Give the attempt up and detach it: its connection's state is unknown, so it is closed,
        not pooled; an attempt still waiting for a connection leaves the pool's queue."""
        self.router = None
        self.draining = False
        conn = self.conn
        self.conn = None
        if conn is None and self.active:
            self.pool.cancel(self)
        self.finish(cluster, success=False)
        if conn is not None:
            conn.abort(reason)

    def discard(self, cluster: Any, end_stream: bool) -> None:
        """The router retries this response: drop it and detach. When the whole request went out
        the connection stays usable: a complete response returns it to the pool at once and the rest
        of a body is read and dropped (the router cuts that short when the retry starts);
        otherwise the connection is closed."""
        if not self.end_sent or self.conn is None:
            self.reset(cluster, "upstream response retried")
            return
        self.router = None
        self.finish(cluster, success=False)
        if end_stream:
            self.conn = None  # llhttp completes the message right after this callback: pooled
        else:
            self.draining = True
