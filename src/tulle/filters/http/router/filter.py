"""The router: route -> cluster -> host -> pooled upstream connection, streaming both ways.

It is the last HTTP filter and owns the request once it sees the headers. Each try at the
upstream exchange is an :class:`UpstreamRequest`; a retry replaces it with a new one
(Envoy's Router::Filter and UpstreamRequest). A request whose route has no retry policy and
that carries no x-envoy-* control header takes the fast path: no :class:`Attempts`, one
deadline (the route timeout), nothing buffered for replay.

Back-pressure is symmetric: a slow client pauses reading from the upstream, a slow upstream
pauses reading from the client, and a request body that arrives before the upstream
connection is up is held only up to the buffer limit before the client is paused. A body
kept for retries is bounded by the route's ``per_request_buffer_limit_bytes`` (else the
listener buffer limit); past it the request stops being retriable
(``retry_or_shadow_abandoned``) and keeps streaming.

Every timer of a request (route timeout, per-try and per-try-idle timeouts, the upstream
stream duration, the retry back-off) is multiplexed onto the stream's one lazy deadline.
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

import cython

from tulle import stream_info as flags
from tulle.filters.http.base import STOP, HttpFilter
from tulle.filters.http.router.attempts import Attempts
from tulle.filters.http.router.envoy_headers import EXPECTED_RQ_TIMEOUT_MS, EnvoyRequestHeaders
from tulle.filters.http.router.retry_state import (
    CONNECT_FAILURE,
    NO,
    NO_OVERFLOW,
    NO_RETRY_LIMIT_EXCEEDED,
    OVERFLOW,
    REFUSED_STREAM,
    RESET,
    YES,
)
from tulle.filters.http.router.shadow import cancel_shadows, feed_shadows, start_shadows
from tulle.filters.http.router.upstream_request import UpstreamRequest
from tulle.http import http1
from tulle.http.headers import HeaderMap
from tulle.http.local_reply import BY_FLAG
from tulle.router.route_table import WEIGHTED_CLUSTER_RANDOM_VALUE
from tulle.upstream.load_balancer import LoadBalancerContext
from tulle.upstream.request_encoder import REMOTE_REFUSED

if TYPE_CHECKING:
    from tulle.filters.http.router.config import RouterFactory

_monotonic = time.monotonic
_getrandbits = random.getrandbits
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
ATTEMPT_COUNT = "x-envoy-attempt-count"
# Envoy's local reply for a stream an HTTP/2 upstream refused (its flag, UR, says "remote reset")
_REFUSED_BODY = b"upstream connect error or disconnect/reset before headers. reset reason: " + REMOTE_REFUSED.encode()
_RESET_FLAGS = frozenset({
    flags.UPSTREAM_CONNECTION_FAILURE, flags.UPSTREAM_CONNECTION_TERMINATION, flags.UPSTREAM_REMOTE_RESET,
    flags.UPSTREAM_PROTOCOL_ERROR, flags.UPSTREAM_OVERFLOW,
})


class RouterFilter(HttpFilter):
    if not cython.compiled:  # compiled, the fields come from filter.pxd
        __slots__ = (
            "factory", "route", "cluster", "weighted_entry", "trailers", "upstream",
            "paused_downstream", "request_ended", "response_started", "timeout_at", "attempts",
            "shadows", "per_try_at",
        )

    def __init__(self, stream: Any, factory: RouterFactory) -> None:
        self.stream = stream
        self.factory = factory
        self.route: Any = None
        self.cluster: Any = None
        self.weighted_entry: Any = None
        self.trailers: HeaderMap | None = None  # the request's trailers (kept for a retry)
        self.upstream: UpstreamRequest | None = None  # the current attempt
        self.paused_downstream = False
        self.request_ended = False
        self.response_started = False
        self.timeout_at = 0.0  # the route (global) timeout, loop time; 0 = none
        self.per_try_at = 0.0  # the fast path's per-try timeout (route.fast_per_try), loop time
        self.attempts: Attempts | None = None  # retries, per-try timeouts, x-envoy-* overrides
        self.shadows: list[Any] | None = None  # mirror requests still waiting for the body

    # --- request path --------------------------------------------------
    @cython.locals(stream="ActiveStream", route="Route", host="Host", info="StreamInfo", stats="HcmStats",
                   method=str)
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
        if stream.upgrade_type is not None and not route.upgrade_allowed(
                stream.upgrade_type, stream.config.upgrade_types.get(stream.upgrade_type, False)):
            stream.send_local_reply("", status=403, body=b"", details="upgrade_failed")  # Envoy's answer
            return STOP
        kind = route.kind
        if kind != "cluster":
            self._answer_locally(route, headers, kind)
            return STOP
        # a filter before the router that needed the weighted pick (fault's upstream_cluster) drew it
        state = stream.info.filter_state
        random_value = state.get(WEIGHTED_CLUSTER_RANDOM_VALUE) if state else None
        if random_value is None:  # drawn only where a weighted pick uses it
            random_value = _getrandbits(32) if route._weighted else 0
        cluster_name, self.weighted_entry = route.select_cluster(headers, random_value)
        cluster = factory.cluster_manager.get(cluster_name) if cluster_name else None
        info = stream.info
        if cluster is None:
            stats.no_cluster.value += 1
            stream.send_local_reply(flags.NO_CLUSTER_FOUND, status=route.cluster_not_found_response_code)
            return STOP
        self.cluster = cluster
        info.upstream_cluster = cluster.name
        envoy = None
        if stream.has_envoy_headers:
            envoy = EnvoyRequestHeaders.take(headers, factory.respect_expected_rq_timeout)
        attempts = None
        if envoy is not None or route.needs_attempts or cluster.max_stream_duration:
            attempts = self.attempts = Attempts(route, headers, envoy, cluster, factory)
            if attempts.retry_state is None and route.hash_policy is None:
                host = cluster.choose_host(None)
            else:
                host = self._choose_host(cluster, headers)
        elif route.hash_policy is None:
            host = cluster.choose_host(None)
        else:
            host = self._choose_host(cluster, headers)
        if host is None:
            cluster.stats.upstream_cx_none_healthy.value += 1
            self._reply(flags.NO_HEALTHY_UPSTREAM)
            return STOP
        info.upstream_host = host.address_str
        route.finalize_request_headers(headers, info, cluster_name, self.weighted_entry,
                                       not factory.suppress_envoy_headers)
        if route.auto_host_rewrite and host.hostname:
            headers.set(":authority", host.hostname)
        if attempts is None:
            expected = route.expected_rq_timeout_value
            if expected and not factory.suppress_envoy_headers:
                if stream.has_envoy_headers:
                    headers.set(EXPECTED_RQ_TIMEOUT_MS, expected)
                else:
                    headers._items.append((EXPECTED_RQ_TIMEOUT_MS, expected))
        else:
            self._attempt_headers(headers, attempts, first=True)
        self.request_ended = end_stream
        if route.mirror_policies:
            self.shadows = start_shadows(factory, route, headers, end_stream, cluster, stream.connection.loop,
                                         stream.info.protocol)
        loop = stream.connection.loop
        if attempts is None:
            timeout = route.timeout if route.max_grpc_timeout is None else route.request_timeout(headers)
            if end_stream and timeout:
                self.timeout_at = loop.time() + timeout
                stream.set_deadline(self.timeout_at, self._on_deadline)
            upstream = UpstreamRequest(self, host, cluster, loop)
            per_try = route.fast_per_try
            if per_try:
                if end_stream and upstream.conn is not None:  # connected, request complete: it starts now
                    self.per_try_at = loop.time() + per_try
                    if not self.timeout_at or self.per_try_at < self.timeout_at:
                        stream.set_deadline(self.per_try_at, self._on_deadline)
                elif self.upstream is upstream:  # waits for a connection or the body: the general path
                    self._lazy_attempts(upstream)
                    if upstream.conn is None:
                        self._arm()
            return STOP
        if end_stream:  # the route timeout starts now (armed with the attempt's timers)
            now = attempts.request_complete_at = loop.time()
            if attempts.global_timeout:
                self.timeout_at = now + attempts.global_timeout
        upstream = UpstreamRequest(self, host, cluster, loop)
        if upstream.conn is None:
            self._arm()  # else on_attempt_ready armed every timer
        return STOP

    def _choose_host(self, cluster: Any, headers: HeaderMap) -> Any:
        """The load balancer's pick; under retry_host_predicate previous_hosts a host already
        tried is re-picked up to host_selection_retry_max_attempts times (then used anyway)."""
        route = self.route
        context = None
        if route.hash_policy is not None:
            remote_ip = self.stream.connection.downstream.remote_address[0]
            context = LoadBalancerContext(hash_key=route.hash_key(headers, remote_ip))
        host = cluster.choose_host(context)
        attempts = self.attempts
        if host is None or attempts is None or attempts.retry_state is None:
            return host
        retry_state = attempts.retry_state
        if retry_state.previous_hosts:
            left = retry_state.host_selection_max_attempts
            while left and retry_state.should_select_another_host(host):
                left -= 1
                other = cluster.choose_host(context)
                if other is None:
                    break
                host = other
            retry_state.on_host_attempted(host)
        return host

    def _attempt_headers(self, headers: HeaderMap, attempts: Attempts, first: bool) -> None:
        """x-envoy-attempt-count and x-envoy-expected-rq-timeout-ms for the next attempt."""
        # appended when known absent (no x-envoy-* came in), as on the fast path
        put = headers._items.append if first and not self.stream.has_envoy_headers else None
        if attempts.count_in_request:
            if put is not None:
                put((ATTEMPT_COUNT, str(attempts.count)))
            else:
                headers.set(ATTEMPT_COUNT, str(attempts.count))
        if not self.factory.suppress_envoy_headers:
            if first:
                expected = attempts.per_try_ms or attempts.global_ms
            else:
                expected = attempts.expected_timeout_ms(self.stream.connection.loop.time())
            if expected:
                if put is not None:
                    put((EXPECTED_RQ_TIMEOUT_MS, str(expected)))
                else:
                    headers.set(EXPECTED_RQ_TIMEOUT_MS, str(expected))

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

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        if self.shadows is not None:
            feed_shadows(self.shadows, data, end_stream)
            if end_stream:
                self.shadows = None
        attempts = self.attempts
        if attempts is None:
            upstream = self.upstream
            if upstream is None or not upstream.active:
                return STOP  # nothing to carry it (answered locally, or the exchange is over)
            if data and self.route.retry_policy is not None and not self.response_started:
                attempts = self._lazy_attempts(upstream)  # the body must be kept for a retry
        if attempts is not None and attempts.body is not None and data and not attempts.keep_body(data):
            self._abandon_retries(attempts)
            if self.upstream is None:
                # waiting to retry, and the retry can no longer carry the whole request
                self._reply("", status=507, body=b"exceeded request buffer limit while retrying upstream",
                            details="request_payload_exceeded_retry_buffer_limit")
                return STOP
        if end_stream:
            self.request_ended = True
        upstream = self.upstream
        if upstream is not None and upstream.active:
            upstream.send(data, end_stream, self)
        if end_stream:
            self._on_request_complete()
        return STOP

    def decode_trailers(self, trailers: HeaderMap) -> int:
        """The request's trailers end it: forwarded (an HTTP/1 upstream drops them, as Envoy's
        codec does) and kept for a retry."""
        if self.shadows is not None:
            feed_shadows(self.shadows, b"", True)
            self.shadows = None
        self.trailers = trailers
        self.request_ended = True
        upstream = self.upstream
        if upstream is not None and upstream.active:
            upstream.send_trailers(trailers)
        self._on_request_complete()
        return STOP

    def _on_request_complete(self) -> None:
        """The whole request arrived: the route timeout (and per-try timers) start now, as in Envoy."""
        stream = self.stream
        now = stream.connection.loop.time()
        attempts = self.attempts
        if attempts is None:
            route = self.route
            timeout = route.timeout if route.max_grpc_timeout is None else route.request_timeout(stream.headers)
            if timeout:
                self.timeout_at = now + timeout
                stream.set_deadline(self.timeout_at, self._on_deadline)
            return
        attempts.request_complete_at = now
        if attempts.global_timeout:
            self.timeout_at = now + attempts.global_timeout
        upstream = self.upstream
        if upstream is not None and upstream.conn is not None:
            self._start_per_try(attempts, now)
        self._arm()

    # --- attempts ------------------------------------------------------
    def on_attempt_ready(self, upstream: UpstreamRequest) -> None:
        """The attempt got its connection and sent its head (Envoy's onPoolReady)."""
        attempts = self.attempts
        if attempts is None:
            return
        attempts.request_started = True
        now = self.stream.connection.loop.time()
        if attempts.max_duration:
            attempts.duration_at = now + attempts.max_duration
        if self.request_ended:
            self._start_per_try(attempts, now)
        self._arm()

    def _start_per_try(self, attempts: Attempts, now: float) -> None:
        """Per-try timers start once the attempt is connected and the whole request arrived (Envoy)."""
        if attempts.per_try_timeout and not attempts.per_try_at:
            attempts.per_try_at = now + attempts.per_try_timeout
        if attempts.per_try_idle_timeout and not attempts.idle_timeout:
            attempts.idle_timeout = attempts.per_try_idle_timeout
            attempts.last_rx = now

    @cython.locals(stream="ActiveStream", host="Host", info="StreamInfo", route="Route", now=cython.double,
                   service_ms=cython.longlong)
    def on_attempt_headers(self, upstream: UpstreamRequest, status: int, headers: HeaderMap,
                           end_stream: bool) -> None:
        stream = self.stream
        if stream.done or upstream is not self.upstream:
            return
        host = upstream.host
        host.outlier.put_http_status(status)
        cluster = self.cluster
        attempts = self.attempts
        if attempts is None:
            policy = self.route.retry_policy
            if policy is not None and policy.may_retry(status):
                attempts = self._lazy_attempts(upstream)
        if attempts is not None:
            if attempts.idle_timeout:
                attempts.last_rx = stream.connection.loop.time()
            if attempts.retriable:
                retry_state = attempts.retry_state
                if retry_state is None and attempts.route.retry_policy.may_retry(status):
                    retry_state = attempts.new_retry_state(host)
                if retry_state is None:
                    result = NO
                    attempts.retriable = False  # the response goes downstream: retries are over
                    attempts.body = None
                else:
                    result = retry_state.should_retry(retry_state.would_retry_headers(status, headers))
                if result == YES:
                    host.stats.rq_error += 1
                    self.factory.count_retried_response(cluster, status)
                    upstream.discard(cluster, end_stream)
                    if upstream.draining:
                        attempts.draining = upstream
                    self._schedule_retry(attempts)
                    return
                if result == NO_OVERFLOW:
                    stream.info.add_flag(flags.UPSTREAM_OVERFLOW)
                elif result == NO_RETRY_LIMIT_EXCEEDED:
                    stream.info.add_flag(flags.UPSTREAM_RETRY_LIMIT_EXCEEDED)
                if retry_state is not None:
                    self._end_retries(attempts)  # the response goes downstream: no retry after this
            attempts.per_try_at = 0.0  # moot once the response starts (the idle timeout still runs)
            if attempts.count_in_response:
                headers.set(ATTEMPT_COUNT, str(attempts.count))
        self.response_started = True
        info = stream.info
        now = _monotonic()
        info.first_upstream_rx_monotonic = now
        info.response_code_details = "via_upstream"
        cluster.stats.rq_completed(status)
        if status >= 500:
            host.stats.rq_error += 1
        else:
            host.stats.rq_success += 1
        route = self.route
        route.finalize_response_headers(headers, info, cluster.name, self.weighted_entry)
        if not self.factory.suppress_envoy_headers:
            service_ms = int((now - upstream.started_at) * 1000)
            headers.set("x-envoy-upstream-service-time", str(service_ms))
        if end_stream:
            upstream.finish(cluster, success=True)
            if self.paused_downstream:
                self.resume_downstream()
        stream.encode_headers(headers, end_stream)

    def on_attempt_data(self, upstream: UpstreamRequest, data: bytes, end_stream: bool) -> None:
        stream = self.stream
        if stream.done or upstream is not self.upstream:
            return
        if end_stream:
            upstream.finish(self.cluster, success=True)
            if self.paused_downstream:
                self.resume_downstream()
        elif self.attempts is not None and self.attempts.idle_timeout:
            self.attempts.last_rx = stream.connection.loop.time()
        stream.encode_data(data, end_stream)

    def on_attempt_trailers(self, upstream: UpstreamRequest, trailers: HeaderMap) -> None:
        """The response's trailers end it (gRPC's grpc-status travels here)."""
        stream = self.stream
        if stream.done or upstream is not self.upstream:
            return
        upstream.finish(self.cluster, success=True)
        if self.paused_downstream:
            self.resume_downstream()
        stream.encode_trailers(trailers)

    def on_attempt_reset(self, upstream: UpstreamRequest, flag: str, reason: str) -> None:
        """The connection reset, closed or spoke nonsense before the response ended."""
        stream = self.stream
        if stream.done or upstream is not self.upstream or not upstream.active:
            return
        upstream.host.outlier.put_local_origin_failure()
        if flag == flags.UPSTREAM_REMOTE_RESET or flag == flags.UPSTREAM_CONNECTION_TERMINATION:
            self.cluster.stats.upstream_rq_rx_reset.value += 1
        self._attempt_finished(upstream, success=False)
        stream.info.connection_termination_details = reason
        if self.response_started:
            self.factory.stats.rq_reset_after_downstream_response_started.value += 1
            stream.reset(flag)
            return
        if self._retry_reset(upstream, REFUSED_STREAM if reason == REMOTE_REFUSED else RESET):
            return
        self._charge_abort(upstream, 502 if flag == flags.UPSTREAM_PROTOCOL_ERROR else 503)
        self._reply(flag, body=_REFUSED_BODY if reason == REMOTE_REFUSED else None)

    def on_attempt_pool_failure(self, upstream: UpstreamRequest, flag: str, reason: str) -> None:
        """No connection for the attempt: a connect failure, or a circuit breaker said no (UO)."""
        overflow = flag == flags.UPSTREAM_OVERFLOW
        if not overflow:
            upstream.host.outlier.put_local_origin_failure()  # Envoy leaves overflow out of it
        stream = self.stream
        if stream.done or upstream is not self.upstream:
            return
        self._attempt_finished(upstream, success=False)
        stream.info.connection_termination_details = reason
        if self._retry_reset(upstream, OVERFLOW if overflow else CONNECT_FAILURE):
            return
        self._charge_abort(upstream, 503)
        self._reply(flag)

    def _attempt_finished(self, upstream: UpstreamRequest, success: bool) -> None:
        upstream.finish(self.cluster, success)
        self.resume_downstream()

    # --- retries -------------------------------------------------------
    def _retry_reset(self, upstream: UpstreamRequest, reason: str) -> bool:
        """Envoy's maybeRetryReset: True when a retry of this failed attempt is scheduled."""
        if self.response_started:
            return False
        attempts = self.attempts
        if attempts is None:
            if self.route.retry_policy is None:
                return False
            attempts = self._lazy_attempts(upstream)
        if not attempts.retriable:
            return False
        retry_state = attempts.retry_state or attempts.new_retry_state(upstream.host)
        if retry_state is None:
            attempts.retriable = False
            return False
        result = retry_state.should_retry(retry_state.would_retry_reset(reason, attempts.request_started))
        if result == YES:
            upstream.host.stats.rq_error += 1
            self._schedule_retry(attempts)
            return True
        if result == NO_OVERFLOW:
            attempts.refusal = flags.UPSTREAM_OVERFLOW
        elif result == NO_RETRY_LIMIT_EXCEEDED:
            attempts.refusal = flags.UPSTREAM_RETRY_LIMIT_EXCEEDED
        return False

    def _lazy_attempts(self, upstream: UpstreamRequest | None) -> Attempts:
        """A route with only a retry policy gets its Attempts when first needed (a retriable
        failure, a body to keep): what the first attempt did is filled in as if it had been there."""
        attempts = self.attempts = Attempts(self.route, self.stream.headers, None, self.cluster, self.factory)
        if upstream is not None:
            attempts.request_started = upstream.started_at != 0.0  # its head went out
        if self.timeout_at:
            attempts.request_complete_at = self.timeout_at - attempts.global_timeout
        return attempts

    def _schedule_retry(self, attempts: Attempts) -> None:
        self.upstream = None
        self.resume_downstream()
        attempts.retry_at = self.stream.connection.loop.time() + attempts.retry_state.next_back_off()  # type: ignore[union-attr]
        self._arm()

    def _do_retry(self, attempts: Attempts) -> None:
        """The back-off is over: a new attempt, on a freshly picked host, replaying the body."""
        stream = self.stream
        draining = attempts.draining
        if draining is not None:
            attempts.draining = None
            if draining.draining:
                draining.reset(self.cluster, "retried response not drained in time")
        # the cluster may have been replaced (or removed) over CDS meanwhile
        cluster = self.factory.cluster_manager.get(self.cluster.name)
        headers = stream.headers
        host = self._choose_host(cluster, headers) if cluster is not None else None
        if host is None:
            if cluster is not None:
                cluster.stats.upstream_cx_none_healthy.value += 1
            self._end_retries(attempts)
            self._reply(flags.NO_HEALTHY_UPSTREAM)
            return
        self.cluster = cluster
        attempts.count += 1
        attempts.new_attempt()
        stream.info.upstream_host = host.address_str
        self._attempt_headers(headers, attempts, first=False)
        if self.route.auto_host_rewrite and host.hostname:
            headers.set(":authority", host.hostname)
        # the kept body goes out once the connection is ready
        body = list(attempts.body) if attempts.body else None
        UpstreamRequest(self, host, cluster, stream.connection.loop, body, attempts.body_bytes)

    def _abandon_retries(self, attempts: Attempts) -> None:
        """The body outgrew the buffer limit: it can no longer be replayed (Envoy's retry_or_shadow_abandoned)."""
        self.cluster.stats.retry_or_shadow_abandoned.value += 1
        self._end_retries(attempts)

    def _end_retries(self, attempts: Attempts) -> None:
        if attempts.retry_state is not None:
            attempts.retry_state.release()
            attempts.retry_state = None
        attempts.retriable = False
        attempts.body = None
        attempts.retry_at = 0.0

    # --- timers --------------------------------------------------------
    def _arm(self) -> None:
        """Point the stream's deadline at the soonest of this request's timers."""
        stream = self.stream
        if stream.done:
            return
        soonest = self.timeout_at
        attempts = self.attempts
        if attempts is not None:
            idle_at = attempts.last_rx + attempts.idle_timeout if attempts.idle_timeout else 0.0
            for when in (attempts.retry_at, attempts.per_try_at, attempts.duration_at, idle_at):
                if when and (not soonest or when < soonest):
                    soonest = when
        stream.set_deadline(soonest, self._on_deadline)

    def _on_deadline(self) -> None:
        stream = self.stream
        now = stream.connection.loop.time()
        if self.timeout_at and now >= self.timeout_at:
            self.timeout_at = 0.0
            self._on_route_timeout()
        else:
            attempts = self.attempts
            upstream = self.upstream
            if self.per_try_at and now >= self.per_try_at:  # the fast path's per-try timeout
                self.per_try_at = 0.0
                if attempts is None and upstream is not None and not self.response_started:
                    self._lazy_attempts(upstream)
                    self._on_per_try_timeout(upstream, idle=False)
            elif attempts is not None:
                if upstream is not None and attempts.per_try_at and now >= attempts.per_try_at:
                    attempts.per_try_at = 0.0
                    self._on_per_try_timeout(upstream, idle=False)
                elif upstream is not None and attempts.idle_timeout and now >= attempts.last_rx + attempts.idle_timeout:
                    attempts.idle_timeout = 0.0
                    self._on_per_try_timeout(upstream, idle=True)
                elif upstream is not None and attempts.duration_at and now >= attempts.duration_at:
                    attempts.duration_at = 0.0
                    self._on_max_stream_duration(upstream)
                elif attempts.retry_at and now >= attempts.retry_at:
                    attempts.retry_at = 0.0
                    self._do_retry(attempts)
        self._arm()

    def _on_route_timeout(self) -> None:
        """The route timeout covers the whole request, retries and back-offs included: never retried."""
        cluster = self.cluster
        cluster.stats.upstream_rq_timeout.value += 1
        attempts = self.attempts
        status = attempts.timeout_status if attempts is not None else 504
        upstream = self.upstream
        if upstream is not None and upstream.active:
            upstream.host.stats.rq_timeout += 1
            upstream.reset(cluster, "upstream request timeout")
            self.resume_downstream()
            if not self.response_started:
                upstream.host.outlier.put_local_origin_failure()  # Envoy counts a timeout only before the response
                self._charge_abort(upstream, status)
        if attempts is not None:
            self._end_retries(attempts)
        if self.response_started:
            self.stream.reset(flags.UPSTREAM_REQUEST_TIMEOUT)
        else:
            self._reply(flags.UPSTREAM_REQUEST_TIMEOUT, status=status,
                        body=b"upstream request timeout" if status == 504 else b"")

    def _on_per_try_timeout(self, upstream: UpstreamRequest, idle: bool) -> None:
        if not idle and self.response_started:
            return  # Envoy: once the response started only the route timeout applies
        cluster = self.cluster
        counter = cluster.stats.upstream_rq_per_try_idle_timeout if idle else cluster.stats.upstream_rq_per_try_timeout
        counter.value += 1
        upstream.host.stats.rq_timeout += 1
        upstream.reset(cluster, "upstream per try timeout")
        self.resume_downstream()
        upstream.host.outlier.put_local_origin_failure()
        if self._retry_reset(upstream, RESET):
            return
        if self.response_started:
            self.stream.reset(flags.UPSTREAM_REQUEST_TIMEOUT)
            return
        attempts = self.attempts
        status = attempts.timeout_status if attempts is not None else 504
        self._charge_abort(upstream, status)
        self._reply(flags.UPSTREAM_REQUEST_TIMEOUT, status=status,
                    body=b"upstream request timeout" if status == 504 else b"",
                    details="upstream_per_try_idle_timeout" if idle else "upstream_per_try_timeout")

    def _on_max_stream_duration(self, upstream: UpstreamRequest) -> None:
        """x-envoy-upstream-stream-duration-ms reached (Envoy's onStreamMaxDurationReached)."""
        cluster = self.cluster
        cluster.stats.upstream_rq_max_duration_reached.value += 1
        upstream.reset(cluster, "upstream max stream duration reached")
        self.resume_downstream()
        if self._retry_reset(upstream, RESET):
            return
        self._reply(flags.UPSTREAM_MAX_STREAM_DURATION_REACHED, status=504 if self.stream.request_complete else 408,
                    body=b"upstream max stream duration reached", details="upstream_max_stream_duration_reached")

    # --- local replies and stats -------------------------------------------
    def _reply(self, flag: str, *, status: int = 0, body: bytes | None = None, details: str = "") -> None:
        """A local reply for this request: Envoy's flags and x-envoy-attempt-count, and the
        "retried and the latest reset reason" wording after a retry."""
        stream = self.stream
        attempts = self.attempts
        extra = None
        if attempts is not None:
            if attempts.refusal:
                if flag:
                    stream.info.add_flag(flag)  # Envoy lists the failure before URX / UO
                stream.info.add_flag(attempts.refusal)
            if attempts.count_in_response:
                extra = [(ATTEMPT_COUNT, str(attempts.count))]
            if attempts.count > 1 and flag in _RESET_FLAGS:
                body = (body or BY_FLAG[flag][1]).replace(b"before headers. ", b"before headers. retried and the latest ")
        if flag == flags.UPSTREAM_OVERFLOW and not self.factory.suppress_envoy_headers:
            extra = [*(extra or ()), ("x-envoy-overloaded", "true")]  # a circuit breaker refused it (Envoy)
        stream.send_local_reply(flag, status=status, body=body, details=details, extra_headers=extra)

    def _charge_abort(self, upstream: UpstreamRequest, status: int) -> None:
        """Envoy's chargeUpstreamAbort: the status the failed attempt turns into counts like a response."""
        self.cluster.stats.rq_completed(status)
        upstream.host.stats.rq_error += 1

    # --- flow control ----------------------------------------------------
    def pause_downstream(self) -> None:
        if not self.paused_downstream:
            self.paused_downstream = True
            self.stream.read_disable(True)

    def resume_downstream(self) -> None:
        if self.paused_downstream:
            self.paused_downstream = False
            self.stream.read_disable(False)

    def on_downstream_pause_writing(self) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.conn is not None:
            upstream.conn.pause_reading()

    def on_downstream_resume_writing(self) -> None:
        upstream = self.upstream
        if upstream is not None and upstream.conn is not None:
            upstream.conn.resume_reading()

    def on_destroy(self) -> None:
        # The stream is over: anything still running upstream is given up (client gone, local
        # reply, timeout). Attempts point back at the filter: drop them so nothing is kept alive.
        if self.shadows is not None:
            cancel_shadows(self.shadows)
            self.shadows = None
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            if upstream.active:
                self.cluster.stats.upstream_rq_tx_reset.value += 1
                upstream.reset(self.cluster, "downstream reset")
            else:
                upstream.router = None
        attempts = self.attempts
        if attempts is not None:
            if attempts.retriable or attempts.retry_state is not None:
                self._end_retries(attempts)
            draining = attempts.draining
            if draining is not None:
                attempts.draining = None
                draining.reset(self.cluster, "downstream reset")
