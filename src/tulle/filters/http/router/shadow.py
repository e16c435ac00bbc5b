"""The shadow writer: fire-and-forget copies of a request to mirror clusters (Envoy's shadowing).

For each of the route's mirror policies that samples the request (``router/mirror_policy.py``),
the router starts a :class:`ShadowRequest` right after it has prepared the request it sends
upstream: same method, path and headers (after every header mutation), with ``-shadow``
appended to the host part of ``:authority``. The request body is copied to the shadows as it
arrives. A shadow's response is read and discarded; whatever happens to it (connect failure,
reset, timeout, an upstream that never answers) never reaches the caller.

A shadow is a normal upstream request of its cluster: it takes a pooled connection the way
the router does and counts in ``cluster.<mirror>.upstream_rq_*``. It keeps no reference to the
downstream stream, so the main exchange finishes and is freed at full speed; the pooled
connection, the connect task and the route-timeout timer keep the shadow alive until it ends.

Deviations from Envoy, both so that a shadow never slows the caller:
- Envoy lets a shadow that reads the body slowly push back on the client (watermarks); here a
  shadow holding more than the buffer limit of unsent body is abandoned instead
  (``cluster.<main>.retry_or_shadow_abandoned``, and an ``upstream_rq_tx_reset`` of the mirror).
- Envoy has no stat for a mirror cluster missing at request time (it only logs); here it counts
  in ``http.<stat_prefix>.shadow_no_cluster`` (a Tulle name).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Any

from tulle import stream_info as flags
from tulle.http.headers import HeaderMap
from tulle.router.route_table import port_start
from tulle.upstream.request_encoder import RequestEncoder, UpstreamCallbacks
from tulle.upstream.upstream_protocol import pool_for

if TYPE_CHECKING:
    from tulle.filters.http.router.config import RouterFactory

SHADOW_SUFFIX = "-shadow"
_monotonic = time.monotonic
_getrandbits = random.getrandbits


def shadow_host(host: str) -> str:
    """Envoy's shadowAppendedHost: the suffix goes before the port (``a:8080`` -> ``a-shadow:8080``)."""
    colon = port_start(host)
    if colon < 0:
        return host + SHADOW_SUFFIX
    return host[:colon] + SHADOW_SUFFIX + host[colon:]


def start_shadows(factory: RouterFactory, route: Any, headers: HeaderMap, end_stream: bool,
                  main_cluster: Any, loop: asyncio.AbstractEventLoop,
                  downstream_protocol: str = "HTTP/1.1") -> list[ShadowRequest] | None:
    """Start the shadows of one request; returns those that still wait for the request body.

    ``headers`` is the request as the router sends it upstream.
    """
    method = headers.method
    if method == "CONNECT":
        return None  # Envoy does not shadow CONNECT
    # one draw for every policy of the request, like Envoy's stable random (the stream id)
    random_value = _getrandbits(64)
    hcm = factory.hcm
    waiting: list[ShadowRequest] | None = None
    for policy in route.mirror_policies:
        if not policy.enabled(random_value):
            continue
        name = policy.cluster_name(headers)
        if name is None:
            continue  # Envoy: no cluster name in the header, no shadow
        cluster = factory.cluster_manager.get(name)
        if cluster is None:
            hcm.ctx.stats.counter(f"http.{hcm.stat_prefix}.shadow_no_cluster").inc()
            continue
        shadow_headers = headers.copy()
        authority = shadow_headers.get(":authority")
        if policy.append_suffix and authority:
            shadow_headers.set(":authority", shadow_host(authority))
        shadow = ShadowRequest(
            cluster, loop, shadow_headers, end_stream, route.timeout, hcm.buffer_limit, hcm.ctx.stats,
            main_cluster.stats.prefix, downstream_protocol,
        )
        shadow.start()
        if not end_stream and shadow.active:
            if waiting is None:
                waiting = []
            waiting.append(shadow)
    return waiting


def feed_shadows(shadows: list[ShadowRequest], data: bytes, end_stream: bool) -> None:
    for shadow in shadows:
        shadow.feed(data, end_stream)


def cancel_shadows(shadows: list[ShadowRequest]) -> None:
    """The downstream request ended before its body did: the shadows cannot complete (Envoy cancels them)."""
    for shadow in shadows:
        shadow.cancel()


class ShadowRequest(UpstreamCallbacks):
    """One mirrored request; implements the callbacks the connection pool expects."""

    __slots__ = (
        "cluster", "loop", "headers", "request_ended", "timeout", "limit", "store", "downstream_protocol",
        "main_stat_prefix", "host", "pool", "conn", "pending", "pending_bytes", "active", "write_paused",
        "response_started", "upstream_start", "timer",
    )

    def __init__(self, cluster: Any, loop: asyncio.AbstractEventLoop, headers: HeaderMap, request_ended: bool,
                 timeout: float | None, limit: int, store: Any, main_stat_prefix: str,
                 downstream_protocol: str = "HTTP/1.1") -> None:
        self.cluster = cluster
        self.loop = loop
        self.headers = headers
        self.downstream_protocol = downstream_protocol
        self.request_ended = request_ended
        self.timeout = timeout
        self.limit = limit
        self.store = store
        self.main_stat_prefix = main_stat_prefix
        self.host: Any = None
        self.pool: Any = None
        self.conn: RequestEncoder | None = None
        self.pending: list[bytes] | None = None  # body that arrived while connecting
        self.pending_bytes = 0
        self.active = False
        self.write_paused = False
        self.response_started = False
        self.upstream_start = 0.0
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        cluster = self.cluster
        host = cluster.choose_host(None)
        if host is None:
            cluster.stats.upstream_cx_none_healthy.value += 1
            return
        self.host = host
        self.active = True
        if self.request_ended:
            self._arm_timeout()
        pool = self.pool = pool_for(host, cluster, self.loop, self.downstream_protocol)
        # As in Envoy, a shadow counts in its cluster's circuit breakers; it waits in the pool's
        # queue like any request (on_pool_ready / on_pool_failure), or overflows.
        conn = pool.acquire(self, cluster.resource_manager)
        if conn is not None:
            self._attach(conn)

    # --- the pool's callbacks ------------------------------------------------------------
    def on_pool_ready(self, conn: RequestEncoder) -> None:
        if not self.active:
            self.pool.release_unused(conn)  # cancelled or timed out while waiting: keep the warm connection
            return
        self._attach(conn)

    def on_pool_failure(self, flag: str, reason: str) -> None:
        if not self.active:
            return
        if flag != flags.UPSTREAM_OVERFLOW:  # a circuit breaker's refusal says nothing about the host
            self.host.outlier.put_local_origin_failure()
        self._finish(success=False)

    def _attach(self, conn: RequestEncoder) -> None:
        self.conn = conn
        self.upstream_start = _monotonic()
        # counted once a connection takes it, as Envoy's pool does (not when refused or unconnected)
        stats = self.cluster.stats
        stats.upstream_rq_total.value += 1
        stats.upstream_rq_active.value += 1
        host = self.host
        host.stats.rq_total += 1
        host.stats.rq_active += 1
        host.outlier.put_connect_success()
        pending = self.pending
        ended = self.request_ended
        conn.encode_headers(self, self.headers, ended and not pending)
        if pending:
            self.pending = None
            self.pending_bytes = 0
            last = len(pending) - 1
            for index, chunk in enumerate(pending):
                if self.conn is conn:
                    conn.encode_data(chunk, ended and index == last)

    # --- the request body, from the router ---------------------------------------------
    def feed(self, data: bytes, end_stream: bool) -> None:
        if not self.active:
            return
        conn = self.conn
        if data:
            if conn is None:
                if self.pending is None:
                    self.pending = []
                self.pending.append(data)
                self.pending_bytes += len(data)
                if self.pending_bytes > self.limit:
                    self._abandon()
                    return
            elif self.write_paused:  # the mirror's unsent body is past the buffer limit already
                self._abandon()
                return
        if conn is not None and (data or end_stream):
            conn.encode_data(data, end_stream)
        if end_stream:
            self.request_ended = True
            self._arm_timeout()

    def _abandon(self) -> None:
        """More unsent body than the buffer limit: give the shadow up rather than slow the caller."""
        self.store.counter(self.main_stat_prefix + "retry_or_shadow_abandoned").inc()
        self.cancel()

    def cancel(self) -> None:
        if not self.active:
            return
        self.cluster.stats.upstream_rq_tx_reset.value += 1
        conn = self.conn
        self._finish(success=False)
        if conn is not None:
            conn.abort("shadow cancelled")

    # --- upstream callbacks (the response is read and discarded) -----------------------
    def on_upstream_headers(self, status: int, headers: HeaderMap, end_stream: bool) -> None:
        if not self.active:
            return
        self.response_started = True
        self.cluster.stats.rq_completed(status)
        host = self.host
        host.outlier.put_http_status(status)
        if status >= 500:
            host.stats.rq_error += 1
        else:
            host.stats.rq_success += 1
        if end_stream:
            self._response_complete()

    def on_upstream_data(self, data: bytes, end_stream: bool) -> None:
        if end_stream:
            self._response_complete()

    def on_upstream_reset(self, flag: str, reason: str) -> None:
        self.conn = None
        if not self.active:
            return
        self.host.outlier.put_local_origin_failure()
        if flag == flags.UPSTREAM_REMOTE_RESET or flag == flags.UPSTREAM_CONNECTION_TERMINATION:
            self.cluster.stats.upstream_rq_rx_reset.value += 1
        self._finish(success=False)

    def on_upstream_pause_writing(self) -> None:
        self.write_paused = True

    def on_upstream_resume_writing(self) -> None:
        self.write_paused = False

    def on_upstream_read_begin(self) -> None:
        pass

    def on_upstream_read_end(self) -> None:
        pass

    # --- bookkeeping ---------------------------------------------------------------------
    def _response_complete(self) -> None:
        if not self.active:
            return
        conn = self.conn
        self._finish(success=True)
        if conn is not None and not self.request_ended:
            # Answered before the whole body was sent: on HTTP/1 the rest of the body would be read
            # as the next request, so the connection goes; on HTTP/2 the stream is reset.
            conn.abort("response before the request body ended")

    def _arm_timeout(self) -> None:
        # Envoy gives shadows the route's timeout, from the end of the request
        if self.timeout and self.timer is None and self.active:
            self.timer = self.loop.call_later(self.timeout, self._on_timeout)

    def _on_timeout(self) -> None:
        self.timer = None
        if not self.active:
            return
        self.cluster.stats.upstream_rq_timeout.value += 1
        host = self.host
        host.stats.rq_timeout += 1
        if not self.response_started:
            host.outlier.put_local_origin_failure()
        conn = self.conn
        self._finish(success=False)
        if conn is not None:
            conn.abort("upstream request timeout")

    def _finish(self, success: bool) -> None:
        if not self.active:
            return
        self.active = False
        stats = self.cluster.stats
        if self.upstream_start:
            stats.upstream_rq_active.value -= 1
            self.host.stats.rq_active -= 1
        if success:
            stats.upstream_rq_time.record((_monotonic() - self.upstream_start) * 1000)
        if self.conn is None and self.pool is not None:
            self.pool.cancel(self)  # still queued for a connection: leave the queue
        self.conn = None
        self.pending = None
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()
