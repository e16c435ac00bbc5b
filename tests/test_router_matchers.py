"""Matchers compiled from Envoy protos: strings, headers, query parameters, RE2 rewrites."""

from __future__ import annotations

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.http.headers import HeaderMap
from tulle.router.matchers import (
    MAX_REGEX_PROGRAM_SIZE,
    Regex,
    RegexRewrite,
    ascii_lower,
    compile_header_matcher,
    compile_query_parameter_matcher,
    compile_string_matcher,
    parse_query,
    remove_query_and_fragment,
    simple_atoi,
    wire,
)


def string_matcher(spec: dict):
    return compile_string_matcher(parse_message(spec, string_pb2.StringMatcher), "m")


def header_matcher(spec: dict):
    return compile_header_matcher(parse_message(spec, rc.HeaderMatcher), "h")


def rewrite(pattern: str, substitution: str) -> RegexRewrite:
    msg = parse_message({"pattern": {"regex": pattern}, "substitution": substitution},
                        regex_pb2.RegexMatchAndSubstitute)
    return RegexRewrite(msg, "rw")


# --- helpers -------------------------------------------------------------------


def test_wire_maps_config_unicode_to_utf8_bytes_as_latin1():
    assert wire("/caf\u00e9") == "/caf\u00c3\u00a9"
    assert wire("/plain") == "/plain"


def test_ascii_lower_leaves_non_ascii_letters_alone():
    assert ascii_lower("ABC\u00c9") == "abc\u00c9"
    assert ascii_lower("MiXeD") == "mixed"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("42", 42), (" 7 ", 7), ("+3", 3), ("-4", -4), ("1_0", None), ("", None), ("x", None), ("\u0663", None)],
)
def test_simple_atoi_accepts_what_absl_accepts(text, expected):
    assert simple_atoi(text, -100, 100) == expected


def test_simple_atoi_range_check():
    assert simple_atoi("101", 0, 100) is None
    assert simple_atoi("-1", 0, 100) is None


def test_remove_query_and_fragment():
    assert remove_query_and_fragment("/a?b#c") == "/a"
    assert remove_query_and_fragment("/a#c?b") == "/a"
    assert remove_query_and_fragment("/a") == "/a"


def test_parse_query_first_value_wins_and_no_decoding():
    params = parse_query("/p?a=1&b&a=2&c=x%20y&d=e=f")
    assert params == {"a": "1", "b": "", "c": "x%20y", "d": "e=f"}
    assert parse_query("/p") == {}


# --- string matchers -----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "matching", "not_matching"),
    [
        ({"exact": "abc"}, "abc", "abcd"),
        ({"exact": "abc", "ignore_case": True}, "ABC", "abd"),
        ({"prefix": "ab"}, "abz", "Abz"),
        ({"prefix": "ab", "ignore_case": True}, "ABz", "zab"),
        ({"suffix": "yz"}, "xyz", "xyZ"),
        ({"suffix": "yz", "ignore_case": True}, "XYZ", "yzx"),
        ({"contains": "mid"}, "amidb", "aMidb"),
        ({"contains": "mid", "ignore_case": True}, "aMIDb", "mi"),
        ({"safe_regex": {"regex": "a+b"}}, "aaab", "aaabc"),
    ],
)
def test_string_matcher_kinds(spec, matching, not_matching):
    predicate = string_matcher(spec)
    assert predicate(matching)
    assert not predicate(not_matching)


def test_string_matcher_refusals():
    with pytest.raises(ConfigError, match="ignore_case has no effect") as info:
        string_matcher({"safe_regex": {"regex": "a"}, "ignore_case": True})
    assert info.value.field == "m.ignore_case"
    with pytest.raises(ConfigError) as info:
        string_matcher({"prefix": ""})
    assert info.value.field == "m.prefix"
    with pytest.raises(ConfigError, match="required"):
        string_matcher({})
    with pytest.raises(UnsupportedFeature) as info:
        string_matcher({"custom": {"name": "x", "typed_config": {
            "@type": "type.googleapis.com/google.protobuf.Empty"}}})
    assert info.value.field == "m.custom"


def test_string_matcher_compares_utf8_bytes():
    predicate = string_matcher({"exact": "caf\u00e9"})
    assert predicate("caf\u00e9".encode().decode("latin-1"))
    assert not predicate("caf\u00e9")


# --- regexes -------------------------------------------------------------------


def test_regex_is_a_full_match():
    regex = Regex("/a/[0-9]+", "f")
    assert regex.full_match("/a/12")
    assert not regex.full_match("/a/12/")
    assert not regex.full_match("x/a/12")


def test_regex_errors_name_the_field():
    with pytest.raises(ConfigError) as info:
        Regex("(", "the.field")
    assert info.value.field == "the.field"
    with pytest.raises(ConfigError, match="empty"):
        Regex("", "f")


def test_regex_program_size_limit():
    big = "a{1,200}"  # RE2 expands counted repetition: several hundred instructions
    with pytest.raises(ConfigError, match="program size"):
        Regex(big, "f")
    assert Regex(big, "f", max_program_size=10_000).full_match("aaa")
    assert MAX_REGEX_PROGRAM_SIZE == 100


def test_google_re2_max_program_size_raises_the_limit():
    big = "a{1,200}"
    with pytest.raises(ConfigError, match="program size"):
        string_matcher({"safe_regex": {"regex": big}})
    matcher = string_matcher({"safe_regex": {"google_re2": {"max_program_size": 100000}, "regex": big}})
    assert matcher("a" * 200)
    assert not matcher("a" * 201)


def test_rewrite_groups_and_escapes():
    assert rewrite("^/v1/(\\w+)/(\\d+)$", "/v2/\\2/\\1").apply("/v1/item/42") == "/v2/42/item"
    assert rewrite("a", "\\\\").apply("bab") == "b\\b"
    assert rewrite("x", "y").apply("abc") == "abc"


def test_rewrite_replaces_all_non_overlapping_matches():
    assert rewrite("o", "0").apply("foo boo") == "f00 b00"


def test_rewrite_empty_matches_follow_re2_global_replace():
    # RE2 never takes an empty match right where the previous match ended,
    # unlike Python's re.sub ("-b--c-").
    assert rewrite("a*", "-").apply("baac") == "-b-c-"
    assert rewrite("x*", "-").apply("abc") == "-a-b-c-"


def test_rewrite_steps_over_whole_utf8_characters():
    value = "\u00e9".encode().decode("latin-1")  # two wire bytes
    assert rewrite("x*", "-").apply(value) == "-" + value + "-"


def test_rewrite_substitution_validation():
    with pytest.raises(ConfigError, match="group"):
        rewrite("(a)", "\\2")
    with pytest.raises(ConfigError, match="invalid rewrite"):
        rewrite("a", "\\n")


# --- header matchers -----------------------------------------------------------

HEADERS = HeaderMap([(":method", "GET"), ("x-a", "one"), ("x-a", "two"), ("x-num", "15"), ("x-empty", "")])


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"name": "x-a", "exact_match": "one,two"}, True),
        ({"name": "x-a", "exact_match": "one"}, False),
        ({"name": "x-a", "exact_match": ""}, True),
        ({"name": "X-A", "prefix_match": "one,"}, True),
        ({"name": "x-a", "suffix_match": ",two"}, True),
        ({"name": "x-a", "contains_match": "e,t"}, True),
        ({"name": "x-a", "safe_regex_match": {"regex": "one,t.o"}}, True),
        ({"name": "x-a", "safe_regex_match": {"regex": "one"}}, False),
        ({"name": ":method", "string_match": {"exact": "get", "ignore_case": True}}, True),
        ({"name": ":method", "string_match": {"exact": "get"}}, False),
        ({"name": "x-num", "range_match": {"start": "10", "end": "16"}}, True),
        ({"name": "x-num", "range_match": {"start": "10", "end": "15"}}, False),
        ({"name": "x-a", "range_match": {"start": "0", "end": "100"}}, False),
        ({"name": "x-a", "present_match": True}, True),
        ({"name": "x-missing", "present_match": True}, False),
        ({"name": "x-missing", "present_match": False}, True),
        ({"name": "x-a"}, True),
        ({"name": "x-missing"}, False),
    ],
)
def test_header_matcher_kinds(spec, expected):
    assert header_matcher(spec)(HEADERS) is expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"name": "x-num", "range_match": {"start": "0", "end": "10"}, "invert_match": True}, True),
        ({"name": "x-num", "exact_match": "15", "invert_match": True}, False),
        ({"name": "x-a", "present_match": True, "invert_match": True}, False),
        ({"name": "x-missing", "present_match": True, "invert_match": True}, True),
        # a missing header never matches a value matcher, even inverted
        ({"name": "x-missing", "exact_match": "v", "invert_match": True}, False),
    ],
)
def test_header_matcher_invert(spec, expected):
    assert header_matcher(spec)(HEADERS) is expected


def test_treat_missing_header_as_empty():
    empty_regex = {"name": "x-missing", "string_match": {"safe_regex": {"regex": "^$"}}}
    assert header_matcher(empty_regex)(HEADERS) is False
    assert header_matcher({**empty_regex, "treat_missing_header_as_empty": True})(HEADERS) is True
    inverted_range = {"name": "x-missing", "range_match": {"start": "0", "end": "10"}, "invert_match": True}
    assert header_matcher(inverted_range)(HEADERS) is False
    assert header_matcher({**inverted_range, "treat_missing_header_as_empty": True})(HEADERS) is True


def test_header_matcher_refusals():
    with pytest.raises(ConfigError) as info:
        header_matcher({"name": ""})
    assert info.value.field == "h.name"
    with pytest.raises(ConfigError) as info:
        header_matcher({"name": "x", "prefix_match": ""})
    assert info.value.field == "h.prefix_match"
    with pytest.raises(ConfigError) as info:
        header_matcher({"name": "x", "safe_regex_match": {"regex": "("}})
    assert info.value.field == "h.safe_regex_match.regex"


# --- query parameter matchers ---------------------------------------------------


def query_matcher(spec: dict):
    return compile_query_parameter_matcher(parse_message(spec, rc.QueryParameterMatcher), "q")


def test_query_parameter_matchers():
    params = parse_query("/p?debug&user=Alice&user=bob")
    assert query_matcher({"name": "debug", "present_match": True})(params)
    assert query_matcher({"name": "debug"})(params)
    assert not query_matcher({"name": "nope", "present_match": True})(params)
    assert query_matcher({"name": "user", "string_match": {"exact": "Alice"}})(params)
    assert not query_matcher({"name": "user", "string_match": {"exact": "bob"}})(params)
    assert query_matcher({"name": "user", "string_match": {"prefix": "al", "ignore_case": True}})(params)
    assert not query_matcher({"name": "nope", "string_match": {"prefix": "a"}})(params)


def test_query_parameter_name_required():
    with pytest.raises(ConfigError) as info:
        query_matcher({"name": "", "present_match": True})
    assert info.value.field == "q.name"
