"""The router: route -> cluster -> host -> pooled upstream connection, streaming both ways.

It is the last HTTP filter and owns the request once it sees the headers.
Back-pressure is symmetric: a slow client pauses reading from the upstream,
a slow upstream pauses reading from the client, and a request body that
arrives before the upstream connection is up is held only up to the buffer
limit before the client is paused.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from tulle import stream_info as flags
from tulle.filters.http.base import STOP, HttpFilter
from tulle.http import http1
from tulle.http.headers import HeaderMap
from tulle.router.route_table import WEIGHTED_CLUSTER_RANDOM_VALUE
from tulle.upstream.http_pool import ConnectError, Http1ClientConnection, pool_for
from tulle.upstream.load_balancer import LoadBalancerContext

if TYPE_CHECKING:
    from tulle.filters.http.router.config import RouterFactory

_monotonic = time.monotonic
_getrandbits = random.getrandbits
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


class RouterFilter(HttpFilter):
    __slots__ = (
        "factory", "route", "cluster", "host", "conn", "head", "is_head", "chunked", "pending",
        "pending_bytes", "paused_downstream", "request_ended", "upstream_start", "active",
        "response_started", "weighted_entry",
    )

    def __init__(self, stream: Any, factory: RouterFactory) -> None:
        self.stream = stream
        self.factory = factory
        self.route: Any = None
        self.cluster: Any = None
        self.host: Any = None
        self.conn: Http1ClientConnection | None = None
        self.head = b""
        self.is_head = False
        self.chunked = False
        self.pending: list[bytes] | None = None
        self.pending_bytes = 0
        self.paused_downstream = False
        self.request_ended = False
        self.upstream_start = 0.0
        self.active = False
        self.response_started = False
        self.weighted_entry: Any = None

    # --- request path --------------------------------------------------
    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        stream = self.stream
        factory = self.factory
        stats = factory.stats
        stats.rq_total.value += 1
        route = stream.get_route()
        if route is None:
            stats.no_route.value += 1
            stream.send_local_reply(flags.NO_ROUTE_FOUND)
            return STOP
        self.route = route
        kind = route.kind
        if kind != "cluster":
            self._answer_locally(route, headers, kind)
            return STOP
        # a filter before the router that needed the weighted pick (fault's upstream_cluster) drew it
        state = stream.info.filter_state
        random_value = state.get(WEIGHTED_CLUSTER_RANDOM_VALUE) if state else None
        cluster_name, self.weighted_entry = route.select_cluster(
            headers, _getrandbits(32) if random_value is None else random_value)
        cluster = factory.cluster_manager.get(cluster_name) if cluster_name else None
        info = stream.info
        if cluster is None:
            stats.no_cluster.value += 1
            stream.send_local_reply(flags.NO_CLUSTER_FOUND, status=route.cluster_not_found_response_code)
            return STOP
        self.cluster = cluster
        info.upstream_cluster = cluster.name
        context = None
        if route.hash_policy is not None:
            context = LoadBalancerContext(hash_key=route.hash_key(headers, stream.connection.downstream.remote_address[0]))
        host = cluster.choose_host(context)
        if host is None:
            cluster.stats.upstream_cx_none_healthy.value += 1
            stream.send_local_reply(flags.NO_HEALTHY_UPSTREAM)
            return STOP
        self.host = host
        info.upstream_host = host.address_str
        route.finalize_request(headers, info, cluster_name, weighted_entry=self.weighted_entry,
                               insert_envoy_original_path=not factory.suppress_envoy_headers)
        if route.auto_host_rewrite and host.hostname:
            headers.set(":authority", host.hostname)
        timeout = route.timeout
        if timeout and not factory.suppress_envoy_headers:
            if stream.has_envoy_headers:
                headers.set("x-envoy-expected-rq-timeout-ms", route.timeout_header_value)
            else:
                headers._items.append(("x-envoy-expected-rq-timeout-ms", route.timeout_header_value))
        method = headers.method
        self.is_head = method == "HEAD"
        if end_stream:
            framing = b"content-length: 0\r\n" if method in _METHODS_WITH_BODY else b""
        else:
            length = headers.get("content-length")
            if length is not None and length.isdigit():
                framing = http1.content_length_line(int(length))
            else:
                framing = http1.CHUNKED
                self.chunked = True
        self.head = http1.encode_request_head(headers, framing)
        self.request_ended = end_stream

        cluster_stats = cluster.stats
        cluster_stats.upstream_rq_total.value += 1
        cluster_stats.upstream_rq_active.value += 1
        host.stats.rq_total += 1
        host.stats.rq_active += 1
        self.active = True
        pool = host.pool or pool_for(host, cluster, stream.connection.loop)
        conn = pool.take_idle()
        if conn is not None:
            self._start(conn)
        else:
            cluster_stats.upstream_rq_pending_total.value += 1
            stream.connection.loop.create_task(self._connect(pool))
        return STOP

    def _answer_locally(self, route: Any, headers: HeaderMap, kind: str) -> None:
        stream = self.stream
        stats = self.factory.stats
        if kind == "direct_response":
            stats.rq_direct_response.value += 1
            status, body = route.direct_response
            response = HeaderMap([(":status", str(status))])
            if body:
                response.add("content-type", "text/plain")
            response.add("content-length", str(len(body)))
            response.add("date", http1.http_date())
            location = route.location(headers, "http")
            if location is not None:
                response.add("location", location)
            stream.info.response_code_details = "direct_response"
        else:
            stats.rq_redirect.value += 1
            status, location = route.redirect(headers, "http")
            body = b""
            response = HeaderMap([(":status", str(status)), ("location", location), ("content-length", "0"),
                                  ("date", http1.http_date())])
            stream.info.response_code_details = "direct_response"
        route.finalize_response(response, stream.info)
        stream.encode_headers(response, not body)
        if body and not stream.done:
            stream.encode_data(body, True)

    async def _connect(self, pool: Any) -> None:
        try:
            conn = await pool.connect()
        except ConnectError as exc:
            self.host.outlier.put_local_origin_failure()
            if self.stream.done:
                return
            self._upstream_finished(success=False)
            self.stream.info.connection_termination_details = exc.reason
            self.stream.send_local_reply(exc.flag)
            return
        if self.stream.done or not self.active:
            pool.release(conn, True)  # the client left while we connected: keep the warm connection
            return
        self._start(conn)

    def _start(self, conn: Http1ClientConnection) -> None:
        self.conn = conn
        self.upstream_start = _monotonic()
        self.host.outlier.put_connect_success()
        conn.start_request(self, self.head, self.is_head)
        pending = self.pending
        if pending:
            self.pending = None
            for chunk in pending:
                self._write_body(conn, chunk)
            self.pending_bytes = 0
            if self.paused_downstream:
                self.paused_downstream = False
                self.stream.read_disable(False)
        if self.request_ended:
            if self.chunked:
                conn.write(http1.LAST_CHUNK)
            self._arm_timeout()
        if self.stream.connection.write_paused:
            conn.pause_reading()

    def _write_body(self, conn: Http1ClientConnection, data: bytes) -> None:
        conn.write(http1.chunk(data) if self.chunked else data)

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        conn = self.conn
        if conn is None:
            if not self.active:
                return STOP
            if data:
                if self.pending is None:
                    self.pending = []
                self.pending.append(data)
                self.pending_bytes += len(data)
                if self.pending_bytes > self.factory.buffer_limit and not self.paused_downstream:
                    self.paused_downstream = True
                    self.stream.read_disable(True)
            if end_stream:
                self.request_ended = True
            return STOP
        if data:
            self._write_body(conn, data)
        if end_stream:
            self.request_ended = True
            if self.chunked:
                conn.write(http1.LAST_CHUNK)
            self._arm_timeout()
        return STOP

    def _arm_timeout(self) -> None:
        timeout = self.route.timeout
        if timeout:
            stream = self.stream
            stream.set_deadline(stream.connection.loop.time() + timeout, self._on_timeout)

    # --- upstream callbacks ---------------------------------------------
    def on_upstream_headers(self, status: int, headers: HeaderMap, end_stream: bool) -> None:
        stream = self.stream
        if stream.done:
            return
        self.response_started = True
        info = stream.info
        now = _monotonic()
        info.first_upstream_rx_monotonic = now
        info.response_code_details = "via_upstream"
        self.cluster.stats.rq_completed(status)
        self.host.outlier.put_http_status(status)
        if status >= 500:
            self.host.stats.rq_error += 1
        else:
            self.host.stats.rq_success += 1
        self.route.finalize_response(headers, info, self.cluster.name, weighted_entry=self.weighted_entry)
        if not self.factory.suppress_envoy_headers:
            headers.set("x-envoy-upstream-service-time", str(int((now - self.upstream_start) * 1000)))
        if end_stream:
            self._upstream_finished(success=True)
        stream.encode_headers(headers, end_stream)

    def on_upstream_data(self, data: bytes, end_stream: bool) -> None:
        stream = self.stream
        if stream.done:
            return
        if end_stream:
            self._upstream_finished(success=True)
        stream.encode_data(data, end_stream)

    def on_upstream_reset(self, flag: str, reason: str) -> None:
        self.conn = None
        stream = self.stream
        if stream.done or not self.active:
            return
        self.host.outlier.put_local_origin_failure()
        cluster_stats = self.cluster.stats
        if flag == flags.UPSTREAM_REMOTE_RESET or flag == flags.UPSTREAM_CONNECTION_TERMINATION:
            cluster_stats.upstream_rq_rx_reset.value += 1
        self._upstream_finished(success=False)
        stream.info.connection_termination_details = reason
        if self.response_started:
            self.factory.stats.rq_reset_after_downstream_response_started.value += 1
            stream.reset(flag)
        else:
            stream.send_local_reply(flag)

    def on_upstream_read_begin(self) -> None:
        self.stream.connection.cork()

    def on_upstream_read_end(self) -> None:
        self.stream.connection.uncork()

    def on_upstream_pause_writing(self) -> None:
        # The upstream reads the request body slower than the client sends it.
        if not self.paused_downstream:
            self.paused_downstream = True
            self.stream.read_disable(True)

    def on_upstream_resume_writing(self) -> None:
        if self.paused_downstream:
            self.paused_downstream = False
            self.stream.read_disable(False)

    def on_downstream_pause_writing(self) -> None:
        if self.conn is not None:
            self.conn.pause_reading()

    def on_downstream_resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.resume_reading()

    def _on_timeout(self) -> None:
        if not self.active:
            return
        self.cluster.stats.upstream_rq_timeout.value += 1
        self.host.stats.rq_timeout += 1
        conn = self.conn
        self.conn = None
        if conn is not None:
            conn.abort("upstream request timeout")
        self._upstream_finished(success=False)
        stream = self.stream
        if self.response_started:
            stream.reset(flags.UPSTREAM_REQUEST_TIMEOUT)
        else:
            self.host.outlier.put_local_origin_failure()  # Envoy counts a timeout only before the response
            stream.send_local_reply(flags.UPSTREAM_REQUEST_TIMEOUT)

    # --- bookkeeping -----------------------------------------------------
    def _upstream_finished(self, success: bool) -> None:
        if not self.active:
            return
        self.active = False
        cluster_stats = self.cluster.stats
        cluster_stats.upstream_rq_active.value -= 1
        self.host.stats.rq_active -= 1
        if success:
            self.conn = None  # the connection went back to its pool
            cluster_stats.upstream_rq_time.record((_monotonic() - self.upstream_start) * 1000)
        if self.paused_downstream:
            self.paused_downstream = False
            self.stream.read_disable(False)

    def on_destroy(self) -> None:
        # The stream ended before the upstream exchange did (client gone, local reply, timeout).
        conn = self.conn
        self.conn = None
        if self.active:
            self.cluster.stats.upstream_rq_tx_reset.value += 1
            self._upstream_finished(success=False)
        if conn is not None:
            conn.abort("downstream reset")
