"""What a request needs beyond the router's fast path (Envoy's TimeoutData, retry state, replay buffer).

Built from the start for a route with per-try timeouts or attempt-count headers, or a request
carrying x-envoy-* headers the router consumes; for a route with only a retry policy, when the
first response or failure could be retried (or a body must be kept for replay). Every other
request forwards with the route timeout alone and never allocates one of these.

Most fields keep their class-level default for the whole request (no ``__slots__``: creating
one sets only what differs), because this object sits on the per-request path of such routes.
"""

from __future__ import annotations

from typing import Any

from tulle.filters.http.router.envoy_headers import EnvoyRequestHeaders, parse_ms
from tulle.filters.http.router.retry_state import RetryState
from tulle.http.grpc import is_grpc_request
from tulle.http.headers import HeaderMap


class Attempts:
    # the retry state (created when first needed), and whether a retry is still possible at all
    retry_state: RetryState | None = None
    retriable = False
    # effective timeouts in seconds (0 = none) after x-envoy-* overrides, and in whole ms
    global_timeout = 0.0
    per_try_timeout = 0.0
    per_try_idle_timeout = 0.0
    global_ms = 0
    per_try_ms = 0
    timeout_status = 504  # 204 with x-envoy-upstream-rq-timeout-alt-response
    # each attempt's lifetime: the cluster's max_stream_duration, x-envoy-upstream-stream-duration-ms over it
    max_duration = 0.0
    count = 1
    count_in_request = False
    count_in_response = False
    # the request body kept for replay while a retry is possible
    body: list[bytes] | None = None
    body_bytes = 0
    buffer_limit = 0
    retry_at = 0.0  # loop time the scheduled retry starts; 0: none scheduled
    request_started = False  # a byte of this request went upstream in some attempt
    request_complete_at = 0.0  # loop time the downstream request ended
    draining: Any = None  # the retried attempt still reading its response (UpstreamRequest)
    refusal = ""  # URX or UO: why a failure was not retried
    # the current attempt's deadlines in loop time (0 = none), multiplexed by the router
    per_try_at = 0.0
    idle_timeout = 0.0  # per_try_idle_timeout while it runs: since the last response byte
    last_rx = 0.0
    duration_at = 0.0

    def __init__(self, route: Any, headers: HeaderMap, envoy: EnvoyRequestHeaders | None, cluster: Any,
                 factory: Any) -> None:
        self.route = route
        self.headers = headers
        self.cluster = cluster
        self.factory = factory
        if envoy is None and not cluster.max_stream_duration and (
                route.max_grpc_timeout is None or not is_grpc_request(headers)):
            # What the route alone decides is worked out once per route and router config.
            cached = route.attempt_defaults
            if cached is None or cached[0] is not factory:
                cached = route.attempt_defaults = (factory, self._route_defaults(route, factory))
            defaults = cached[1]
            if defaults is not None:
                self.__dict__.update(defaults)
                if self.retriable:
                    self.body = []
                return
        self._configure(route, headers, envoy, cluster, factory)

    @classmethod
    def _route_defaults(cls, route: Any, factory: Any) -> dict[str, Any] | None:
        """The attributes ``_configure`` sets for a request without x-envoy-* headers, or None
        when they depend on the request (retriable_request_headers)."""
        policy = route.retry_policy
        if policy is not None and policy.retriable_request_headers:
            return None
        probe = cls.__new__(cls)
        probe._configure(route, HeaderMap([]), None, None, factory)
        defaults = dict(probe.__dict__)
        defaults.pop("body", None)  # a fresh list per request
        return defaults

    def _configure(self, route: Any, headers: HeaderMap, envoy: EnvoyRequestHeaders | None, cluster: Any,
                   factory: Any) -> None:
        policy = route.retry_policy
        global_timeout = route.request_timeout(headers) or 0.0
        if cluster is not None and cluster.max_stream_duration:
            self.max_duration = cluster.max_stream_duration
        per_try = 0.0
        if policy is not None:
            per_try = policy.per_try_timeout
            if policy.per_try_idle_timeout:
                self.per_try_idle_timeout = policy.per_try_idle_timeout
        if envoy is not None:  # Envoy's FilterUtility::finalTimeout
            override = None
            if factory.respect_expected_rq_timeout and envoy.expected_rq_timeout_ms is not None:
                override = parse_ms(envoy.expected_rq_timeout_ms)  # set by an egress Envoy before us
            elif envoy.rq_timeout_ms is not None:
                override = parse_ms(envoy.rq_timeout_ms)
            if override is not None:
                global_timeout = override
            header_per_try = parse_ms(envoy.per_try_timeout_ms)
            if header_per_try is not None:
                per_try = header_per_try
            if envoy.timeout_alt_response is not None:
                self.timeout_status = 204
            duration = parse_ms(envoy.stream_duration_ms)
            if duration:
                self.max_duration = duration
        if global_timeout and per_try >= global_timeout:
            per_try = 0.0  # a per-try timeout not below the route timeout is ignored
        if global_timeout:
            self.global_timeout = global_timeout
            self.global_ms = int(global_timeout * 1000 + 0.5)
        if per_try:
            self.per_try_timeout = per_try
            self.per_try_ms = int(per_try * 1000 + 0.5)
        if route.include_request_attempt_count:
            self.count_in_request = True
        if route.include_attempt_count_in_response:
            self.count_in_response = True
        # With x-envoy-* retry headers the state is built now (they are consumed now); a route's
        # policy alone gets it at the first response or failure it could retry (new_retry_state).
        if envoy is not None:
            self.retry_state = self._create_retry_state(envoy)
            retriable = self.retry_state is not None
        else:
            retriable = policy is not None and bool(policy.retry_on) and (
                not policy.retriable_request_headers
                or any(matches(headers) for matches in policy.retriable_request_headers))
        if retriable:
            self.retriable = True
            self.body = []
            limit = factory.buffer_limit
            if route.retry_buffer_limit is not None:
                limit = min(limit, route.retry_buffer_limit)
            self.buffer_limit = limit

    def _create_retry_state(self, envoy: EnvoyRequestHeaders | None) -> RetryState | None:
        managers = getattr(self.cluster, "resource_managers", None)  # per routing priority
        return RetryState.create(self.route.retry_policy, self.headers, envoy, self.cluster, self.factory.random,
                                 managers[self.route.priority] if managers else None)

    def new_retry_state(self, first_host: Any) -> RetryState | None:
        """The retry state of a request that had none yet; ``first_host`` is the host tried so far."""
        state = self.retry_state = self._create_retry_state(None)
        if state is not None:
            state.on_host_attempted(first_host)
        return state

    def expected_timeout_ms(self, now: float) -> int:
        """x-envoy-expected-rq-timeout-ms for the next attempt (Envoy's setTimeoutHeaders); 0: none."""
        global_ms = self.global_ms
        expected = self.per_try_ms or global_ms
        if expected and global_ms and self.request_complete_at:
            elapsed = round((now - self.request_complete_at) * 1000)
            expected = 1 if elapsed >= global_ms else min(expected, global_ms - elapsed)
        return expected

    def keep_body(self, data: bytes) -> bool:
        """Keep ``data`` for replay; False when that passes the buffer limit (then nothing is kept)."""
        body_bytes = self.body_bytes + len(data)
        if body_bytes > self.buffer_limit:
            self.body = None
            return False
        self.body.append(data)  # type: ignore[union-attr]
        self.body_bytes = body_bytes
        return True

    def new_attempt(self) -> None:
        """Timers belong to one attempt."""
        self.per_try_at = self.idle_timeout = self.duration_at = 0.0
