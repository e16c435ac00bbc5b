"""YAML as kubectl/istioctl read it (sigs.k8s.io/yaml over go-yaml v2), where PyYAML's YAML 1.1 differs."""

from __future__ import annotations

import math

import pytest
import yaml

from tulle.controlplane.istio import kubeyaml


def _value(text: str) -> object:
    return kubeyaml.load(f"v: {text}")["v"]


@pytest.mark.parametrize(("text", "expected"), [
    # Flow collections: ':' ends a plain scalar only before a blank (go-yaml's scanner).
    ("[1.2.3.4, 001:db8::]", ["1.2.3.4", "001:db8::"]),
    ("{address: fe80::}", {"address": "fe80::"}),
    ("[a:, b]", ["a:", "b"]),
    ("[a: b]", [{"a": "b"}]),
    # Sexagesimal numbers and timestamps are strings (PyYAML: 80 and a date).
    ("1:20", "1:20"),
    ("2024-01-02", "2024-01-02"),
    ("2001-12-14t21:59:43.10-05:00", "2001-12-14t21:59:43.10-05:00"),
    # go-yaml v2's booleans: YAML 1.1's words plus one-letter y/n.
    ("y", True), ("Y", True), ("yes", True), ("ON", True), ("n", False), ("No", False), ("off", False),
    ("True", True), ("FALSE", False), ("yEs", "yEs"),
    ("~", None), ("null", None), ("", None), ("NULL", None),
    # Integers as strconv.ParseInt(text, 0, 64) reads them after removing underscores.
    ("0o17", 15), ("017", 15), ("0x1F", 31), ("0b101", 5), ("1_000", 1000), ("-1_0", -10), ("+7", 7),
    ("18446744073709551615", 2**64 - 1),
    # Floats: go-yaml's yamlStyleFloat (no dot needed), and text starting with '.'.
    ("1e3", 1000.0), ("08", 8.0), ("1.", 1.0), (".5", 0.5), ("+.5", 0.5), ("-.inf", -math.inf),
    ("18446744073709551616", float(2**64)),
    ("1e999", "1e999"),  # out of float64's range: ParseFloat fails, the text stays
    ("=", "="), ("+", "+"), ("0x", "0x"), ("1.2.3", "1.2.3"),
])
def test_plain_scalars_resolve_as_go_yaml_does(text: str, expected: object) -> None:
    value = _value(text)
    assert value == expected
    assert type(value) is type(expected)


def test_pyyaml_reads_these_differently_which_is_why_the_loader_exists() -> None:
    assert yaml.safe_load("v: [1.2.3.4, 001:db8::]")["v"][1] == {"001:db8:": None}
    assert yaml.safe_load("v: 1:20")["v"] == 80
    assert yaml.safe_load("v: y")["v"] == "y"


def test_quoted_scalars_are_always_strings() -> None:
    assert kubeyaml.load("a: 'yes'\nb: \"1:20\"\nc: '017'\nd: \"\"") == {"a": "yes", "b": "1:20", "c": "017", "d": ""}


def test_block_context_colon_before_end_of_line_is_still_an_error() -> None:
    with pytest.raises(yaml.YAMLError):
        kubeyaml.load("address: 001:db8::")


def test_mapping_keys_become_strings_as_yaml_to_json_writes_them() -> None:
    assert kubeyaml.load("{80: a, true: b, no: c, 1.5: d, 1e6: e, 0.00012345: f, 0.1: g}") == {
        "80": "a", "true": "b", "false": "c", "1.5": "d", "1e+06": "e", "0.00012345": "f", "0.1": "g"}


@pytest.mark.parametrize("text", ["~: a", "? [1]\n: a", "? {a: 1}\n: b"])
def test_null_list_and_mapping_keys_are_refused(text: str) -> None:
    with pytest.raises(yaml.YAMLError, match="keys must be strings, numbers or booleans"):
        kubeyaml.load(text)


def test_duplicate_keys_are_refused_also_after_conversion() -> None:
    with pytest.raises(yaml.YAMLError, match="duplicate key 'a'"):
        kubeyaml.load("a: 1\nb: 2\na: 3")
    with pytest.raises(yaml.YAMLError, match="duplicate key 'true'"):
        kubeyaml.load("true: 1\n'true': 2")


def test_merge_keys_are_overridden_by_written_keys_without_a_duplicate_error() -> None:
    data = kubeyaml.load("base: &b {port: 80, name: http}\nserver: {<<: *b, port: 8080}")
    assert data["server"] == {"port": 8080, "name": "http"}


@pytest.mark.parametrize(("text", "expected"), [
    ("!!str 017", "017"), ("!!float 3", 3.0), ("!!int 0x10", 16), ("!!bool y", True), ("!!null ~", None),
    ("!!timestamp 2001-12-14", "2001-12-14"), ("!!binary aGVsbG8=", "hello"),
])
def test_explicit_tags(text: str, expected: object) -> None:
    value = _value(text)
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("text", ["!!int x", "!!bool 1", "!!float yes", "!!binary ***"])
def test_explicit_tags_that_do_not_fit_their_value_are_errors(text: str) -> None:
    with pytest.raises(yaml.YAMLError):
        _value(text)


def test_multi_line_plain_scalars_and_comments_still_fold() -> None:
    assert kubeyaml.load("a: one\n  two # c\nb: [x, # c\n  z]") == {"a": "one two", "b": ["x", "z"]}
