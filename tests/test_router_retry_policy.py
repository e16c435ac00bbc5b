"""RetryPolicy parsing, and how routes inherit retry settings from their virtual host."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.router import retry_policy as rp
from tulle.router.retry_policy import RetryPolicy
from tulle.router.route_table import RouteTable

PREVIOUS_HOSTS = {"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}


def policy(**fields: Any) -> RetryPolicy:
    return RetryPolicy(parse_message(fields, route_components_pb2.RetryPolicy), "rp")


def routes(vhost: dict[str, Any], *route_list: dict[str, Any]) -> list[Any]:
    config = {"name": "rc", "virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": list(route_list), **vhost}]}
    return list(RouteTable.from_proto(parse_message(config, route_pb2.RouteConfiguration), "rc").virtual_hosts[0].routes)


def test_retry_on_values() -> None:
    parsed = policy(retry_on="5xx, gateway-error,connect-failure,retriable-4xx,refused-stream,reset,"
                             "reset-before-request,envoy-ratelimited,retriable-status-codes,retriable-headers,"
                             "http3-post-connect-failure,cancelled,deadline-exceeded,internal,resource-exhausted,"
                             "unavailable")
    every_bit = 0
    for table in (rp.HTTP_RETRY_ON, rp.GRPC_RETRY_ON):
        for bit in table.values():
            every_bit |= bit
    assert parsed.retry_on == every_bit


def test_unknown_retry_on_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        policy(retry_on="5xx,sometimes")
    assert info.value.field == "rp.retry_on"
    assert "sometimes" in str(info.value)


def test_defaults() -> None:
    parsed = policy(retry_on="5xx")
    assert parsed.num_retries == 1
    assert (parsed.per_try_timeout, parsed.per_try_idle_timeout) == (0, 0)
    assert (parsed.base_interval_ms, parsed.max_interval_ms) == (25, 250)
    assert parsed.host_selection_max_attempts == 1
    assert not parsed.previous_hosts
    assert policy(retry_on="5xx", num_retries=0).num_retries == 0


def test_timeouts_and_host_selection() -> None:
    parsed = policy(retry_on="5xx", num_retries=4, per_try_timeout="0.25s", per_try_idle_timeout="1.5s",
                    retry_host_predicate=[PREVIOUS_HOSTS], host_selection_retry_max_attempts=3)
    assert (parsed.num_retries, parsed.per_try_timeout, parsed.per_try_idle_timeout) == (4, 0.25, 1.5)
    assert parsed.previous_hosts and parsed.host_selection_max_attempts == 3
    by_name = policy(retry_on="5xx", retry_host_predicate=[{"name": "envoy.retry_host_predicates.previous_hosts"}])
    assert by_name.previous_hosts


def test_back_off_validation() -> None:
    with pytest.raises(ConfigError) as info:
        policy(retry_on="5xx", retry_back_off={"max_interval": "1s"})
    assert info.value.field == "rp.retry_back_off.base_interval"
    with pytest.raises(ConfigError) as info:
        policy(retry_on="5xx", retry_back_off={"base_interval": "0s"})
    assert info.value.field == "rp.retry_back_off.base_interval"
    with pytest.raises(ConfigError) as info:
        policy(retry_on="5xx", retry_back_off={"base_interval": "1s", "max_interval": "0.5s"})
    assert info.value.field == "rp.retry_back_off.max_interval"
    assert policy(retry_on="5xx", retry_back_off={"base_interval": "0.0001s"}).base_interval_ms == 1


@pytest.mark.parametrize(("fields", "path"), [
    ({"retry_priority": {"name": "envoy.retry_priorities.previous_priorities"}}, "rp.retry_priority"),
    ({"retry_options_predicates": [{"name": "x"}]}, "rp.retry_options_predicates"),
    ({"rate_limited_retry_back_off": {"reset_headers": [{"name": "retry-after"}]}}, "rp.rate_limited_retry_back_off"),
    ({"retry_host_predicate": [{"name": "envoy.retry_host_predicates.omit_canary_hosts"}]},
     "rp.retry_host_predicate[0]"),
])
def test_unsupported_parts_are_refused_by_name(fields: dict[str, Any], path: str) -> None:
    with pytest.raises(UnsupportedFeature) as info:
        policy(retry_on="5xx", **fields)
    assert info.value.field == path


def test_route_policy_wins_over_the_virtual_host_policy() -> None:
    own, inherited, redirect = routes(
        {"retry_policy": {"retry_on": "connect-failure", "num_retries": 5}},
        {"match": {"prefix": "/own"}, "route": {"cluster": "c", "retry_policy": {"retry_on": "5xx"}}},
        {"match": {"prefix": "/"}, "route": {"cluster": "c"}},
        {"match": {"prefix": "/r"}, "redirect": {"path_redirect": "/x"}},
    )
    # the whole route policy replaces the virtual host's: no field-by-field merge
    assert (own.retry_policy.retry_on, own.retry_policy.num_retries) == (rp.RETRY_ON_5XX, 1)
    assert (inherited.retry_policy.retry_on, inherited.retry_policy.num_retries) == (rp.RETRY_ON_CONNECT_FAILURE, 5)
    assert redirect.retry_policy is None


def test_attempt_counts_and_buffer_limits_come_from_the_virtual_host() -> None:
    route_limit, vhost_limit = routes(
        {"include_request_attempt_count": True, "include_attempt_count_in_response": True,
         "per_request_buffer_limit_bytes": 4096},
        {"match": {"prefix": "/small"}, "route": {"cluster": "c"}, "per_request_buffer_limit_bytes": 10},
        {"match": {"prefix": "/"}, "route": {"cluster": "c"}},
    )
    assert (route_limit.retry_buffer_limit, vhost_limit.retry_buffer_limit) == (10, 4096)
    for route in (route_limit, vhost_limit):
        assert route.include_request_attempt_count and route.include_attempt_count_in_response
        assert route.needs_attempts


def test_a_route_without_retry_settings_forwards_plainly() -> None:
    (route,) = routes({}, {"match": {"prefix": "/"}, "route": {"cluster": "c"}})
    assert not route.needs_attempts and route.retry_policy is None and route.retry_buffer_limit is None
    # a plain retry policy costs nothing until a response or failure could be retried
    (with_policy,) = routes({}, {"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {}}})
    assert not with_policy.needs_attempts
    # a per-try timeout alone stays on the fast path, armed next to the route timeout
    (per_try,) = routes({}, {"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {
        "per_try_timeout": "1s"}}})
    assert not per_try.needs_attempts and per_try.fast_per_try == 1.0
    assert per_try.expected_rq_timeout_value == "1000"  # Envoy's header: the per-try timeout when set
    (ignored,) = routes({}, {"match": {"prefix": "/"}, "route": {"cluster": "c", "timeout": "1s", "retry_policy": {
        "per_try_timeout": "2s"}}})
    assert ignored.fast_per_try == 0.0 and ignored.expected_rq_timeout_value == "1000"
    (idle,) = routes({}, {"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {
        "per_try_timeout": "1s", "per_try_idle_timeout": "1s"}}})
    assert idle.needs_attempts and idle.fast_per_try == 0.0


@pytest.mark.parametrize(("retry_on", "codes", "retried", "not_retried"), [
    ("5xx", [], [500, 503, 599], [200, 404, 409]),
    ("gateway-error", [], [502, 503, 504], [500, 200]),
    ("retriable-4xx,retriable-status-codes", [429], [409, 429], [503, 200]),
    ("reset,connect-failure", [], [], [503, 200]),
])
def test_may_retry_by_status(retry_on: str, codes: list[int], retried: list[int], not_retried: list[int]) -> None:
    parsed = policy(retry_on=retry_on, retriable_status_codes=codes)
    assert all(parsed.may_retry(status) for status in retried)
    assert not any(parsed.may_retry(status) for status in not_retried)
    # conditions on other response headers make every response a candidate
    assert policy(retry_on="5xx,retriable-headers").may_retry(200)
    assert policy(retry_on="unavailable").may_retry(200)


def test_max_stream_duration_replaces_the_route_timeout() -> None:
    (route,) = routes({}, {"match": {"prefix": "/"}, "route": {
        "cluster": "c", "timeout": "3s", "max_stream_duration": {"max_stream_duration": "2s"}}})
    # Envoy's "new timeouts": with max_stream_duration the route timeout is not used
    assert route.timeout is None and route.timeout_header_value == ""
    assert route.stream_timeouts.max_stream_duration == 2.0
