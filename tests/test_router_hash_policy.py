"""RouteAction.hash_policy: XXH64 of the same bytes Envoy hashes, combined like Envoy."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import xxhash
from envoy.config.route.v3 import route_components_pb2 as rc

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.http.headers import HeaderMap
from tulle.router.hash_policy import HashPolicy, cookie_value

MASK = (1 << 64) - 1


def policy(specs: list[dict]) -> HashPolicy | None:
    action = parse_message({"cluster": "c", "hash_policy": specs}, rc.RouteAction)
    return HashPolicy.from_protos(action.hash_policy, "route.hash_policy")


def combine(first: int, second: int) -> int:
    return (((first << 1) | (first >> 63)) & MASK) ^ second


def test_header_hash_is_xxh64_of_the_value():
    hashed = policy([{"header": {"header_name": "X-User"}}])
    assert hashed.hash_key(HeaderMap([("x-user", "alice")]), "") == xxhash.xxh64_intdigest(b"alice")
    assert hashed.hash_key(HeaderMap([("x-other", "alice")]), "") is None


def test_repeated_header_values_hash_sorted_and_concatenated():
    hashed = policy([{"header": {"header_name": "x-user"}}])
    one_order = hashed.hash_key(HeaderMap([("x-user", "b"), ("x-user", "a")]), "")
    other_order = hashed.hash_key(HeaderMap([("x-user", "a"), ("x-user", "b")]), "")
    assert one_order == other_order == xxhash.xxh64_intdigest(b"ab")


def test_header_hash_with_regex_rewrite():
    hashed = policy([{"header": {"header_name": ":path", "regex_rewrite": {
        "pattern": {"regex": "^/users/(\\d+)/.*$"}, "substitution": "\\1"}}}])
    assert hashed.hash_key(HeaderMap([(":path", "/users/42/profile")]), "") == xxhash.xxh64_intdigest(b"42")


def test_cookie_hash():
    hashed = policy([{"cookie": {"name": "session"}}])
    headers = HeaderMap([("cookie", "a=1; session=\"xyz\""), ("cookie", "session=later")])
    assert hashed.hash_key(headers, "") == xxhash.xxh64_intdigest(b"xyz")
    assert hashed.hash_key(HeaderMap([("cookie", "other=1")]), "") is None


def test_cookie_value_parsing():
    headers = HeaderMap([("cookie", "novalue; a=1;  b = 2 ;c=\"q\""), ("cookie", "d=4")])
    assert cookie_value(headers, "a") == "1"
    assert cookie_value(headers, "b ") == " 2 "  # Envoy trims leading spaces of the name only
    assert cookie_value(headers, "c") == "q"
    assert cookie_value(headers, "d") == "4"
    assert cookie_value(headers, "novalue") is None


def test_cookie_ttl_is_unsupported():
    with pytest.raises(UnsupportedFeature) as info:
        policy([{"cookie": {"name": "s", "ttl": "10s"}}])
    assert info.value.field == "route.hash_policy[0].cookie.ttl"


def test_source_ip_hash():
    hashed = policy([{"connection_properties": {"source_ip": True}}])
    assert hashed.hash_key(HeaderMap(), "192.0.2.1") == xxhash.xxh64_intdigest(b"192.0.2.1")
    assert hashed.hash_key(HeaderMap(), "") is None


def test_source_ip_false_adds_no_policy():
    assert policy([{"connection_properties": {"source_ip": False}}]) is None


def test_query_parameter_hash():
    hashed = policy([{"query_parameter": {"name": "user"}}])
    assert hashed.hash_key(HeaderMap([(":path", "/p?x=1&user=bob&user=eve")]), "") == xxhash.xxh64_intdigest(b"bob")
    assert hashed.hash_key(HeaderMap([(":path", "/p?x=1")]), "") is None
    assert hashed.hash_key(HeaderMap([(":path", "/p")]), "") is None


def test_hashes_combine_with_rotation():
    hashed = policy([{"header": {"header_name": "x-a"}}, {"header": {"header_name": "x-b"}}])
    first, second = xxhash.xxh64_intdigest(b"1"), xxhash.xxh64_intdigest(b"2")
    assert hashed.hash_key(HeaderMap([("x-a", "1"), ("x-b", "2")]), "") == combine(first, second)
    # a policy with nothing to hash is skipped
    assert hashed.hash_key(HeaderMap([("x-b", "2")]), "") == second


def test_identical_rules_do_not_cancel_out():
    hashed = policy([{"header": {"header_name": "x-a"}}, {"header": {"header_name": "x-a"}}])
    value = xxhash.xxh64_intdigest(b"1")
    key = hashed.hash_key(HeaderMap([("x-a", "1")]), "")
    assert key == combine(value, value)
    assert key != 0


def test_terminal_stops_once_a_hash_exists():
    hashed = policy([
        {"header": {"header_name": "x-a"}, "terminal": True},
        {"header": {"header_name": "x-b"}},
    ])
    both = HeaderMap([("x-a", "1"), ("x-b", "2")])
    assert hashed.hash_key(both, "") == xxhash.xxh64_intdigest(b"1")
    # the terminal policy produced nothing, so evaluation goes on
    assert hashed.hash_key(HeaderMap([("x-b", "2")]), "") == xxhash.xxh64_intdigest(b"2")


def test_hash_is_stable_across_processes():
    code = (
        "from tulle.http.headers import HeaderMap\n"
        "from tulle.config.loader import parse_message\n"
        "from envoy.config.route.v3 import route_components_pb2 as rc\n"
        "from tulle.router.hash_policy import HashPolicy\n"
        "a = parse_message({'cluster': 'c', 'hash_policy': [{'header': {'header_name': 'x-user'}}]}, rc.RouteAction)\n"
        "print(HashPolicy.from_protos(a.hash_policy, 'f').hash_key(HeaderMap([('x-user', 'alice')]), ''))\n"
    )
    outputs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
        for seed in ("1", "2")
    }
    local = policy([{"header": {"header_name": "x-user"}}]).hash_key(HeaderMap([("x-user", "alice")]), "")
    assert outputs == {str(local)}


def test_filter_state_is_unsupported_and_empty_names_refused():
    with pytest.raises(UnsupportedFeature) as info:
        policy([{"filter_state": {"key": "k"}}])
    assert info.value.field == "route.hash_policy[0].filter_state"
    with pytest.raises(ConfigError) as info:
        policy([{"header": {"header_name": ""}}])
    assert info.value.field == "route.hash_policy[0].header.header_name"
