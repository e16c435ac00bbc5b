"""Attempts: the effective timeouts of a request (Envoy's finalTimeout / setTimeoutHeaders) and its
replay buffer, with a fake clock."""

from __future__ import annotations

import random
from typing import Any

import pytest
from envoy.config.route.v3 import route_pb2

from tulle.config.loader import parse_message
from tulle.filters.http.router.attempts import Attempts
from tulle.filters.http.router.envoy_headers import EnvoyRequestHeaders
from tulle.http.headers import HeaderMap
from tulle.router.route_table import RouteTable
from tulle.stats.store import Store
from tulle.upstream.cluster_stats import ClusterStats


class FakeFactory:
    def __init__(self, respect_expected_rq_timeout: bool = False, buffer_limit: int = 1024 * 1024) -> None:
        self.respect_expected_rq_timeout = respect_expected_rq_timeout
        self.buffer_limit = buffer_limit
        self.random = random.Random(1)


class FakeCluster:
    def __init__(self, max_stream_duration: float | None = None) -> None:
        self.stats = ClusterStats(Store(), "c")
        self.max_stream_duration = max_stream_duration


def make(action: dict[str, Any] | None = None, headers: tuple[tuple[str, str], ...] = (),
         factory: FakeFactory | None = None, cluster: FakeCluster | None = None, **route: Any) -> Attempts:
    config = {"name": "rc", "virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": "c", **(action or {})}, **route}]}]}
    table = RouteTable.from_proto(parse_message(config, route_pb2.RouteConfiguration), "rc")
    request = HeaderMap([(":method", "GET"), (":path", "/"), (":authority", "a"), *headers])
    factory = factory or FakeFactory()
    envoy = EnvoyRequestHeaders.take(request, factory.respect_expected_rq_timeout)
    return Attempts(table.virtual_hosts[0].routes[0], request, envoy, cluster or FakeCluster(), factory)


def test_route_and_policy_timeouts() -> None:
    attempts = make({"timeout": "3s", "retry_policy": {"retry_on": "5xx", "per_try_timeout": "1s",
                                                        "per_try_idle_timeout": "0.5s"}})
    assert (attempts.global_timeout, attempts.per_try_timeout, attempts.per_try_idle_timeout) == (3.0, 1.0, 0.5)
    assert attempts.timeout_status == 504
    assert make().global_timeout == 15.0  # Envoy's default route timeout
    assert make({"timeout": "0s"}).global_timeout == 0.0


def test_a_per_try_timeout_not_below_the_route_timeout_is_ignored() -> None:
    assert make({"timeout": "1s", "retry_policy": {"per_try_timeout": "1s"}}).per_try_timeout == 0.0
    assert make({"timeout": "0s", "retry_policy": {"per_try_timeout": "5s"}}).per_try_timeout == 5.0


def test_request_headers_override_the_route() -> None:
    attempts = make({"timeout": "3s"}, headers=(("x-envoy-upstream-rq-timeout-ms", "800"),
                                                 ("x-envoy-upstream-rq-per-try-timeout-ms", "200"),
                                                 ("x-envoy-upstream-rq-timeout-alt-response", "")))
    assert (attempts.global_timeout, attempts.per_try_timeout, attempts.timeout_status) == (0.8, 0.2, 204)
    infinite = make({"timeout": "3s"}, headers=(("x-envoy-upstream-rq-timeout-ms", "0"),))
    assert infinite.global_timeout == 0.0
    ignored = make({"timeout": "3s"}, headers=(("x-envoy-upstream-rq-timeout-ms", "soon"),))
    assert ignored.global_timeout == 3.0
    duration = make(headers=(("x-envoy-upstream-stream-duration-ms", "1500"),))
    assert duration.max_duration == 1.5


def test_the_clusters_max_stream_duration_limits_each_attempt_unless_a_header_overrides_it() -> None:
    assert make(cluster=FakeCluster(max_stream_duration=2.0)).max_duration == 2.0
    overridden = make(headers=(("x-envoy-upstream-stream-duration-ms", "300"),),
                      cluster=FakeCluster(max_stream_duration=2.0))
    assert overridden.max_duration == 0.3
    assert make().max_duration == 0.0


def test_respect_expected_rq_timeout() -> None:
    headers = (("x-envoy-expected-rq-timeout-ms", "600"), ("x-envoy-upstream-rq-timeout-ms", "900"))
    assert make({"timeout": "3s"}, headers=headers).global_timeout == 0.9
    respected = make({"timeout": "3s"}, headers=headers, factory=FakeFactory(respect_expected_rq_timeout=True))
    assert respected.global_timeout == 0.6


def test_expected_timeout_header_counts_the_time_already_spent() -> None:
    attempts = make({"timeout": "3s", "retry_policy": {"retry_on": "5xx", "per_try_timeout": "1s"}})
    assert attempts.expected_timeout_ms(now=100.0) == 1000  # the per-try timeout while it fits
    attempts.request_complete_at = 100.0
    assert attempts.expected_timeout_ms(now=102.5) == 500  # what is left of the route timeout
    assert attempts.expected_timeout_ms(now=104.0) == 1  # out of time: 1 ms, never 0 (= none)
    no_per_try = make({"timeout": "2s", "retry_policy": {"retry_on": "5xx"}})
    assert no_per_try.expected_timeout_ms(now=0.0) == 2000
    assert make({"timeout": "0s", "retry_policy": {"retry_on": "5xx"}}).expected_timeout_ms(now=0.0) == 0


@pytest.mark.parametrize(("route_limit", "listener_limit", "expected"), [
    (None, 4096, 4096), (100, 4096, 100), (10_000, 4096, 4096),
])
def test_buffer_limit(route_limit: int | None, listener_limit: int, expected: int) -> None:
    extra = {} if route_limit is None else {"per_request_buffer_limit_bytes": route_limit}
    attempts = make({"retry_policy": {"retry_on": "5xx"}}, factory=FakeFactory(buffer_limit=listener_limit), **extra)
    assert attempts.buffer_limit == expected


def test_the_body_is_kept_up_to_the_limit() -> None:
    attempts = make({"retry_policy": {"retry_on": "5xx"}}, per_request_buffer_limit_bytes=10)
    assert attempts.keep_body(b"12345") and attempts.keep_body(b"67890")
    assert attempts.body == [b"12345", b"67890"] and attempts.body_bytes == 10
    assert not attempts.keep_body(b"x")
    assert attempts.body is None  # given up: nothing is held any more


def test_no_retry_state_means_no_body_kept() -> None:
    attempts = make({"retry_policy": {"per_try_timeout": "1s"}})  # per-try timeouts but nothing to retry on
    assert attempts.retry_state is None and attempts.body is None
