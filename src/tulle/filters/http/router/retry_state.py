"""Per-request retry decisions (Envoy's RetryStateImpl).

Created only for a request that may retry (a route or virtual host ``retry_policy`` or an
``x-envoy-retry-on`` / ``x-envoy-retry-grpc-on`` request header): a request that cannot retry
carries no retry state at all. The router asks ``would_retry_headers`` / ``would_retry_reset``
about each failed attempt and ``should_retry`` whether to go again; ``should_retry`` counts
Envoy's cluster stats and asks the cluster's circuit breakers in :meth:`RetryState.admit`.
"""

from __future__ import annotations

import random
from typing import Any

from tulle.filters.http.router.envoy_headers import EnvoyRequestHeaders
from tulle.http.headers import HeaderMap
from tulle.router.matchers import HeaderPredicate, compile_header_matcher
from tulle.router.retry_policy import (
    DEFAULT_BASE_INTERVAL_MS,
    GRPC_ANY,
    GRPC_RETRY_ON,
    HTTP_RETRY_ON,
    RETRY_ON_5XX,
    RETRY_ON_CONNECT_FAILURE,
    RETRY_ON_ENVOY_RATE_LIMITED,
    RETRY_ON_GATEWAY_ERROR,
    RETRY_ON_GRPC_CANCELLED,
    RETRY_ON_GRPC_DEADLINE_EXCEEDED,
    RETRY_ON_GRPC_INTERNAL,
    RETRY_ON_GRPC_RESOURCE_EXHAUSTED,
    RETRY_ON_GRPC_UNAVAILABLE,
    RETRY_ON_REFUSED_STREAM,
    RETRY_ON_RESET,
    RETRY_ON_RESET_BEFORE_REQUEST,
    RETRY_ON_RETRIABLE_4XX,
    RETRY_ON_RETRIABLE_HEADERS,
    RETRY_ON_RETRIABLE_STATUS_CODES,
    RetryPolicy,
    parse_retry_on,
)

# should_retry() answers (Envoy's RetryStatus)
NO = 0
YES = 1
NO_RETRY_LIMIT_EXCEEDED = 2
NO_OVERFLOW = 3

# why an attempt ended without a response (the Http::StreamResetReason values retries care about)
CONNECT_FAILURE = "connect_failure"
OVERFLOW = "overflow"  # a circuit breaker refused the attempt: never retried
RESET = "reset"  # remote reset, connection termination, protocol error, local reset (timeouts)
REFUSED_STREAM = "refused_stream"  # an HTTP/2 upstream refused the stream (RST_STREAM or GOAWAY)

_STATUS_BITS = RETRY_ON_5XX | RETRY_ON_GATEWAY_ERROR | RETRY_ON_RETRIABLE_4XX | RETRY_ON_RETRIABLE_STATUS_CODES
# conditions that need the response headers, not just the status
_HEADER_BITS = RETRY_ON_RETRIABLE_HEADERS | RETRY_ON_ENVOY_RATE_LIMITED | GRPC_ANY
_GRPC_BY_STATUS = {
    1: RETRY_ON_GRPC_CANCELLED, 4: RETRY_ON_GRPC_DEADLINE_EXCEEDED, 8: RETRY_ON_GRPC_RESOURCE_EXHAUSTED,
    13: RETRY_ON_GRPC_INTERNAL, 14: RETRY_ON_GRPC_UNAVAILABLE,
}
_EMPTY_CODES: frozenset[int] = frozenset()


class JitteredBackOff:
    """Envoy's JitteredExponentialBackOffStrategy: attempt N waits uniformly in [0, min(2^(N-1) * base, max))."""

    __slots__ = ("base_ms", "max_ms", "next_ms", "random")

    def __init__(self, base_ms: int, max_ms: int, rng: random.Random | Any = random) -> None:
        self.base_ms = base_ms
        self.max_ms = max_ms
        self.next_ms = base_ms
        self.random = rng

    def next_back_off_ms(self) -> int:
        interval = self.next_ms
        # double until doubling would pass the maximum, then stay at the maximum
        self.next_ms = interval * 2 if interval < self.max_ms // 2 else self.max_ms
        return self.random.getrandbits(64) % interval


class RetryState:
    __slots__ = (
        "retry_on", "retries_remaining", "status_codes", "retriable_headers", "back_off", "cluster", "resource_manager",
        "previous_hosts", "attempted_hosts", "host_selection_max_attempts", "armed",
    )

    def __init__(self, policy: RetryPolicy | None, retry_on: int, cluster: Any, rng: random.Random | Any,
                 resource_manager: Any = None) -> None:
        self.retry_on = retry_on
        self.cluster = cluster
        # the circuit breakers of the route's priority (max_retries, retry budget); None: no limit
        self.resource_manager = resource_manager
        if policy is not None:
            self.retries_remaining = policy.num_retries
            self.status_codes = policy.retriable_status_codes
            self.retriable_headers: tuple[HeaderPredicate, ...] = policy.retriable_headers
            self.back_off = JitteredBackOff(policy.base_interval_ms, policy.max_interval_ms, rng)
            self.previous_hosts = policy.previous_hosts
            self.host_selection_max_attempts = policy.host_selection_max_attempts
        else:  # retries asked for by request headers only
            self.retries_remaining = 1
            self.status_codes = _EMPTY_CODES
            self.retriable_headers = ()
            self.back_off = JitteredBackOff(DEFAULT_BASE_INTERVAL_MS, 10 * DEFAULT_BASE_INTERVAL_MS, rng)
            self.previous_hosts = False
            self.host_selection_max_attempts = 1
        self.attempted_hosts: list[Any] = []
        self.armed = False  # a retry was admitted and holds a circuit-breaker retry slot

    @classmethod
    def create(cls, policy: RetryPolicy | None, headers: HeaderMap, envoy: EnvoyRequestHeaders | None,
               cluster: Any, rng: random.Random | Any = random, resource_manager: Any = None) -> RetryState | None:
        """The retry state of one request, or None when it cannot retry (Envoy's RetryStateImpl::create)."""
        retry_on = policy.retry_on if policy is not None else 0
        if envoy is not None:
            if envoy.retry_on is not None:
                retry_on |= parse_retry_on(envoy.retry_on, HTTP_RETRY_ON)
            if envoy.retry_grpc_on is not None:
                retry_on |= parse_retry_on(envoy.retry_grpc_on, GRPC_RETRY_ON)
        if not retry_on:
            return None
        if policy is not None and policy.retriable_request_headers and not any(
                matches(headers) for matches in policy.retriable_request_headers):
            return None  # the route limits retries to requests with matching headers
        state = cls(policy, retry_on, cluster, rng, resource_manager)
        if envoy is None:
            return state
        if envoy.max_retries is not None and envoy.max_retries.isdigit():
            state.retries_remaining = int(envoy.max_retries)  # the header wins over the policy
        if envoy.retriable_status_codes is not None:
            codes = {int(code) for code in envoy.retriable_status_codes.split(",") if code.strip().isdigit()}
            if codes:
                state.status_codes = state.status_codes | codes
        if envoy.retriable_header_names is not None:
            # name-only matchers, as Envoy does for this header
            from envoy.config.route.v3.route_components_pb2 import HeaderMatcher

            names = [name.strip() for name in envoy.retriable_header_names.split(",") if name.strip()]
            state.retriable_headers = state.retriable_headers + tuple(
                compile_header_matcher(HeaderMatcher(name=name.lower()), "x-envoy-retriable-header-names")
                for name in names)
        return state

    # --- would this outcome be retried? ------------------------------------------
    def would_retry_headers(self, status: int, headers: HeaderMap) -> bool:
        """Envoy's wouldRetryFromHeaders; reads the headers only when a condition needs them."""
        retry_on = self.retry_on
        by_status = bool(retry_on & _STATUS_BITS) and (
            (retry_on & RETRY_ON_5XX and 500 <= status < 600)
            or (retry_on & RETRY_ON_GATEWAY_ERROR and 502 <= status <= 504)
            or (retry_on & RETRY_ON_RETRIABLE_4XX and status == 409)
            or (retry_on & RETRY_ON_RETRIABLE_STATUS_CODES and status in self.status_codes))
        if not by_status and not retry_on & _HEADER_BITS:
            return False
        # A response rate limited by an upstream Envoy is retried only under envoy-ratelimited.
        if headers.get("x-envoy-ratelimited") is not None:
            return bool(retry_on & RETRY_ON_ENVOY_RATE_LIMITED)
        if by_status:
            return True
        if retry_on & RETRY_ON_RETRIABLE_HEADERS:
            for matches in self.retriable_headers:
                if matches(headers):
                    return True
        if retry_on & GRPC_ANY:
            grpc_status = headers.get("grpc-status")
            if grpc_status is not None and grpc_status.strip().isdigit():
                return bool(retry_on & _GRPC_BY_STATUS.get(int(grpc_status), 0))
        return False

    def would_retry_reset(self, reason: str, request_started: bool) -> bool:
        """Envoy's wouldRetryFromReset. ``request_started``: a byte of this request went upstream."""
        if reason == OVERFLOW:
            return False
        retry_on = self.retry_on
        if reason == CONNECT_FAILURE and retry_on & RETRY_ON_CONNECT_FAILURE:
            return True
        if reason == REFUSED_STREAM and retry_on & RETRY_ON_REFUSED_STREAM:
            return True
        if retry_on & RETRY_ON_RESET_BEFORE_REQUEST and not request_started:
            return True
        # 5xx and gateway-error count a reset (a refused stream too) as the 5xx it turns into
        return bool(retry_on & (RETRY_ON_RESET | RETRY_ON_5XX | RETRY_ON_GATEWAY_ERROR))

    # --- the decision ----------------------------------------------------------
    def should_retry(self, would_retry: bool) -> int:
        """Envoy's shouldRetry: YES schedules a retry; the others say why not. Counts the cluster stats."""
        stats = self.cluster.stats
        if self.armed and not would_retry:
            stats.upstream_rq_retry_success.value += 1  # the previous retry worked
        self.release()
        if not would_retry:
            return NO
        if self.retries_remaining == 0:
            stats.upstream_rq_retry_limit_exceeded.value += 1
            return NO_RETRY_LIMIT_EXCEEDED
        self.retries_remaining -= 1
        if not self.admit():
            stats.upstream_rq_retry_overflow.value += 1
            return NO_OVERFLOW
        self.armed = True
        if self.resource_manager is not None:
            self.resource_manager.retries.inc()
        stats.upstream_rq_retry.value += 1
        stats.upstream_rq_retry_backoff_exponential.value += 1
        return YES

    def admit(self) -> bool:
        """May one more retry start now? The only place that asks the cluster's circuit breakers
        (``max_retries``, or the retry budget when one is configured)."""
        resource_manager = self.resource_manager
        if resource_manager is None:
            return True
        # the budget counts the cluster's own active and pending requests and active retries
        return resource_manager.retries.can_create() and resource_manager.retry_budget_allows()

    def release(self) -> None:
        """The admitted retry is over (its outcome is being decided, or the request ended)."""
        if self.armed:
            self.armed = False
            if self.resource_manager is not None:
                self.resource_manager.retries.dec()

    def next_back_off(self) -> float:
        """Seconds to wait before the admitted retry starts."""
        return self.back_off.next_back_off_ms() / 1000

    # --- host selection (retry_host_predicate) ------------------------------------
    def on_host_attempted(self, host: Any) -> None:
        if self.previous_hosts:
            self.attempted_hosts.append(host)

    def should_select_another_host(self, host: Any) -> bool:
        return host in self.attempted_hosts
