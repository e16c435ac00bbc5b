"""RetryState: Envoy's retry decisions, stats, back-off and host predicate, without sockets."""

from __future__ import annotations

import random
from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2

from tulle.config.loader import parse_message
from tulle.filters.http.router.envoy_headers import EnvoyRequestHeaders
from tulle.filters.http.router.retry_state import (
    CONNECT_FAILURE,
    NO,
    NO_OVERFLOW,
    NO_RETRY_LIMIT_EXCEEDED,
    OVERFLOW,
    RESET,
    YES,
    JitteredBackOff,
    RetryState,
)
from tulle.http.headers import HeaderMap
from tulle.router.retry_policy import RetryPolicy
from tulle.stats.store import Store
from tulle.upstream.cluster_stats import ClusterStats


class FixedRandom:
    """getrandbits() always returns ``value`` (Envoy's tests pin the random generator the same way)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def getrandbits(self, bits: int) -> int:
        return self.value


class FakeResource:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.active = 0

    def can_create(self) -> bool:
        return self.active < self.limit

    def inc(self) -> None:
        self.active += 1

    def dec(self) -> None:
        self.active -= 1


class FakeResourceManager:
    def __init__(self, max_retries: int, budget_allows: bool = True) -> None:
        self.retries = FakeResource(max_retries)
        self.budget_allows = budget_allows

    def retry_budget_allows(self) -> bool:
        return self.budget_allows


class FakeCluster:
    def __init__(self, resource_manager: Any = None) -> None:
        self.stats = ClusterStats(Store(), "c")
        if resource_manager is not None:
            self.resource_manager = resource_manager


def policy(**fields: Any) -> RetryPolicy:
    return RetryPolicy(parse_message(fields, route_components_pb2.RetryPolicy), "retry_policy")


def request(**headers: str) -> HeaderMap:
    items = [(":method", "GET"), (":path", "/"), (":authority", "a"), (":scheme", "http")]
    return HeaderMap(items + [(name.replace("_", "-"), value) for name, value in headers.items()])


def state(retry_on: str = "5xx", cluster: Any = None, headers: HeaderMap | None = None,
          **fields: Any) -> RetryState | None:
    headers = headers if headers is not None else request()
    envoy = EnvoyRequestHeaders.take(headers, False)
    cluster = cluster or FakeCluster()
    return RetryState.create(policy(retry_on=retry_on, **fields) if retry_on is not None else None, headers,
                             envoy, cluster, FixedRandom(0), getattr(cluster, "resource_manager", None))


def response(status: int, **headers: str) -> HeaderMap:
    return HeaderMap([(":status", str(status))] + [(k.replace("_", "-"), v) for k, v in headers.items()])


# --- back-off -------------------------------------------------------------------


def test_back_off_intervals_double_up_to_the_maximum() -> None:
    # a draw of interval - 1 shows each interval's upper bound: [0, 25), [0, 50), [0, 100), [0, 200), then the cap
    back_off = JitteredBackOff(25, 250, FixedRandom(999_999))  # one less than a multiple of every interval
    bounds = [back_off.next_back_off_ms() + 1 for _ in range(7)]
    assert bounds == [25, 50, 100, 200, 250, 250, 250]


def test_back_off_is_fully_jittered_and_bounded() -> None:
    rng = random.Random(7)
    draws = []
    for _ in range(300):
        back_off = JitteredBackOff(25, 250, rng)
        draws.append([back_off.next_back_off_ms() for _ in range(6)])
    for attempt, bound in enumerate([25, 50, 100, 200, 250, 250]):
        values = [row[attempt] for row in draws]
        assert all(0 <= value < bound for value in values)
        # jittered: spread over the whole interval, not pinned to its end
        assert min(values) < bound * 0.1 and max(values) > bound * 0.9
        assert len(set(values)) > bound // 4 or len(set(values)) > 20


def test_back_off_defaults_and_configured_intervals() -> None:
    default = policy(retry_on="5xx")
    assert (default.base_interval_ms, default.max_interval_ms) == (25, 250)
    configured = policy(retry_on="5xx", retry_back_off={"base_interval": "0.1s"})
    assert (configured.base_interval_ms, configured.max_interval_ms) == (100, 1000)
    capped = policy(retry_on="5xx", retry_back_off={"base_interval": "0.1s", "max_interval": "0.15s"})
    back_off = JitteredBackOff(capped.base_interval_ms, capped.max_interval_ms, FixedRandom(299_999))
    assert [back_off.next_back_off_ms() + 1 for _ in range(3)] == [100, 150, 150]


def test_next_back_off_is_in_seconds() -> None:
    retry_state = state("5xx")
    assert retry_state is not None
    retry_state.back_off.random = FixedRandom(24)
    assert retry_state.next_back_off() == pytest.approx(0.024)


# --- would this be retried? ----------------------------------------------------------


@pytest.mark.parametrize(("retry_on", "status", "expected"), [
    ("5xx", 500, True), ("5xx", 503, True), ("5xx", 599, True), ("5xx", 404, False), ("5xx", 200, False),
    ("gateway-error", 502, True), ("gateway-error", 503, True), ("gateway-error", 504, True),
    ("gateway-error", 500, False), ("retriable-4xx", 409, True), ("retriable-4xx", 429, False),
    ("reset", 503, False), ("connect-failure", 503, False), ("retriable-status-codes", 503, False),
])
def test_would_retry_by_status(retry_on: str, status: int, expected: bool) -> None:
    retry_state = state(retry_on)
    assert retry_state is not None
    assert retry_state.would_retry_headers(status, response(status)) is expected


def test_retriable_status_codes_from_policy_and_header() -> None:
    retry_state = state("retriable-status-codes", retriable_status_codes=[429])
    assert retry_state is not None
    assert retry_state.would_retry_headers(429, response(429))
    assert not retry_state.would_retry_headers(418, response(418))
    with_header = state("retriable-status-codes", retriable_status_codes=[429],
                        headers=request(x_envoy_retriable_status_codes="418, 420,x"))
    assert with_header is not None
    assert with_header.status_codes == {429, 418, 420}
    # the codes alone do nothing without the retriable-status-codes policy
    only_5xx = state("5xx", retriable_status_codes=[429])
    assert only_5xx is not None and not only_5xx.would_retry_headers(429, response(429))


def test_retriable_headers_from_policy_and_header() -> None:
    retry_state = state("retriable-headers", retriable_headers=[{"name": "x-upstream-retry",
                                                                 "string_match": {"exact": "yes"}}])
    assert retry_state is not None
    assert retry_state.would_retry_headers(200, response(200, x_upstream_retry="yes"))
    assert not retry_state.would_retry_headers(200, response(200, x_upstream_retry="no"))
    assert not retry_state.would_retry_headers(200, response(200))
    by_name = state("retriable-headers", headers=request(x_envoy_retriable_header_names="X-Try-Again, x-other"))
    assert by_name is not None
    assert by_name.would_retry_headers(200, response(200, x_try_again="1"))
    assert by_name.would_retry_headers(201, response(201, x_other=""))
    assert not by_name.would_retry_headers(200, response(200))


def test_envoy_ratelimited_responses_retry_only_under_envoy_ratelimited() -> None:
    five = state("5xx")
    assert five is not None
    assert not five.would_retry_headers(503, response(503, x_envoy_ratelimited="true"))
    limited = state("envoy-ratelimited")
    assert limited is not None
    assert limited.would_retry_headers(429, response(429, x_envoy_ratelimited="true"))
    assert not limited.would_retry_headers(429, response(429))


@pytest.mark.parametrize(("retry_on", "grpc_status", "expected"), [
    ("cancelled", "1", True), ("deadline-exceeded", "4", True), ("resource-exhausted", "8", True),
    ("internal", "13", True), ("unavailable", "14", True), ("unavailable", "13", False),
    ("cancelled,unavailable", "14", True), ("unavailable", "0", False),
])
def test_grpc_status_in_response_headers(retry_on: str, grpc_status: str, expected: bool) -> None:
    retry_state = state(retry_on)
    assert retry_state is not None
    assert retry_state.would_retry_headers(200, response(200, grpc_status=grpc_status)) is expected
    assert not retry_state.would_retry_headers(200, response(200))


def test_grpc_retry_on_from_the_request_header() -> None:
    retry_state = state(None, headers=request(x_envoy_retry_grpc_on="unavailable"))
    assert retry_state is not None
    assert retry_state.would_retry_headers(200, response(200, grpc_status="14"))


@pytest.mark.parametrize(("retry_on", "reason", "started", "expected"), [
    ("connect-failure", CONNECT_FAILURE, False, True),
    ("connect-failure", RESET, True, False),
    ("reset", RESET, True, True),
    ("reset", CONNECT_FAILURE, False, True),
    ("reset-before-request", CONNECT_FAILURE, False, True),
    ("reset-before-request", RESET, False, True),
    ("reset-before-request", RESET, True, False),
    ("5xx", RESET, True, True),
    ("5xx", CONNECT_FAILURE, False, True),
    ("gateway-error", RESET, True, True),
    ("refused-stream", RESET, True, False),  # HTTP/2 only: never on HTTP/1.1
    ("retriable-4xx", RESET, True, False),
    ("5xx,reset,connect-failure", OVERFLOW, False, False),  # a circuit breaker's no is never retried
])
def test_would_retry_reset(retry_on: str, reason: str, started: bool, expected: bool) -> None:
    retry_state = state(retry_on)
    assert retry_state is not None
    assert retry_state.would_retry_reset(reason, started) is expected


# --- should we, and the stats -------------------------------------------------------------


def counters(cluster: FakeCluster) -> dict[str, int]:
    stats = cluster.stats
    return {name: getattr(stats, f"upstream_rq_{name}").value
            for name in ("retry", "retry_success", "retry_limit_exceeded", "retry_overflow",
                         "retry_backoff_exponential")}


def test_num_retries_default_is_one_and_limit_is_counted() -> None:
    cluster = FakeCluster()
    retry_state = state("5xx", cluster=cluster)
    assert retry_state is not None
    assert retry_state.should_retry(True) == YES
    assert retry_state.should_retry(True) == NO_RETRY_LIMIT_EXCEEDED
    assert counters(cluster) == {"retry": 1, "retry_success": 0, "retry_limit_exceeded": 1, "retry_overflow": 0,
                                 "retry_backoff_exponential": 1}


def test_a_retry_that_works_counts_success() -> None:
    cluster = FakeCluster()
    retry_state = state("5xx", cluster=cluster, num_retries=3)
    assert retry_state is not None
    assert [retry_state.should_retry(True), retry_state.should_retry(True), retry_state.should_retry(False)] == [
        YES, YES, NO]
    assert counters(cluster)["retry"] == 2
    assert counters(cluster)["retry_success"] == 1
    # no retry before: not a retry success
    fresh = state("5xx", cluster=cluster)
    assert fresh is not None and fresh.should_retry(False) == NO
    assert counters(cluster)["retry_success"] == 1


def test_max_retries_header_wins_over_the_policy() -> None:
    retry_state = state("5xx", num_retries=5, headers=request(x_envoy_max_retries="2"))
    assert retry_state is not None
    assert retry_state.retries_remaining == 2
    zero = state("5xx", num_retries=5, headers=request(x_envoy_max_retries="0"))
    assert zero is not None and zero.should_retry(True) == NO_RETRY_LIMIT_EXCEEDED
    junk = state("5xx", num_retries=5, headers=request(x_envoy_max_retries="many"))
    assert junk is not None and junk.retries_remaining == 5


def test_retry_on_header_adds_to_the_policy_and_creates_state_alone() -> None:
    both = state("connect-failure", headers=request(x_envoy_retry_on="5xx,bogus"))
    assert both is not None
    assert both.would_retry_headers(503, response(503))
    assert both.would_retry_reset(CONNECT_FAILURE, False)
    alone = state(None, headers=request(x_envoy_retry_on="gateway-error"))
    assert alone is not None and alone.retries_remaining == 1
    assert state(None) is None  # no policy, no header: the request cannot retry at all
    assert state("") is None


def test_retriable_request_headers_limit_which_requests_retry() -> None:
    fields = {"retriable_request_headers": [{"name": ":method", "string_match": {"exact": "GET"}}]}
    assert state("5xx", **fields) is not None
    post = HeaderMap([(":method", "POST"), (":path", "/"), (":authority", "a")])
    assert state("5xx", headers=post, **fields) is None


def test_circuit_breaker_refusal_is_overflow_and_slots_are_released() -> None:
    manager = FakeResourceManager(max_retries=1)
    cluster = FakeCluster(manager)
    first = state("5xx", cluster=cluster, num_retries=3)
    second = state("5xx", cluster=cluster, num_retries=3)
    assert first is not None and second is not None
    assert first.should_retry(True) == YES
    assert manager.retries.active == 1
    assert second.should_retry(True) == NO_OVERFLOW
    assert counters(cluster)["retry_overflow"] == 1
    # the admitted retry's outcome frees its slot, whatever it is
    assert first.should_retry(False) == NO
    assert manager.retries.active == 0
    assert second.should_retry(True) == YES
    second.release()
    second.release()
    assert manager.retries.active == 0


def test_retry_budget_refusal_is_overflow() -> None:
    cluster = FakeCluster(FakeResourceManager(max_retries=10, budget_allows=False))
    retry_state = state("5xx", cluster=cluster)
    assert retry_state is not None
    assert not retry_state.admit()
    assert retry_state.should_retry(True) == NO_OVERFLOW


# --- previous_hosts -----------------------------------------------------------------------


def test_previous_hosts_predicate() -> None:
    retry_state = state("connect-failure", retry_host_predicate=[
        {"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
        host_selection_retry_max_attempts=4)
    assert retry_state is not None
    assert retry_state.previous_hosts and retry_state.host_selection_max_attempts == 4
    first, second = object(), object()
    retry_state.on_host_attempted(first)
    assert retry_state.should_select_another_host(first)
    assert not retry_state.should_select_another_host(second)


def test_without_the_predicate_hosts_are_not_remembered() -> None:
    retry_state = state("connect-failure")
    assert retry_state is not None
    host = object()
    retry_state.on_host_attempted(host)
    assert not retry_state.should_select_another_host(host)
    assert retry_state.host_selection_max_attempts == 1
