"""Runtime values parsed the way Envoy's SnapshotImpl::resolveEntryType reads them."""

from __future__ import annotations

import math

import pytest

from tulle.runtime import entry as entry_module
from tulle.runtime.entry import Entry, Fraction, entry_from_value, parse_double, parse_fractional_percent


def readings(raw: str) -> tuple:
    entry = Entry(raw)
    fraction = None if entry.fraction is None else (entry.fraction.numerator, entry.fraction.denominator)
    return entry.bool_value, entry.uint_value, entry.double_value, fraction


@pytest.mark.parametrize(("raw", "expected"), [
    ("100", (True, 100, 100.0, (100, 100))),
    (" 42 \n", (True, 42, 42.0, (42, 100))),  # whitespace around numbers is ignored
    ("0", (False, 0, 0.0, (0, 100))),
    ("3.7", (None, 3, 3.7, (3, 100))),  # the integer reading truncates
    ("-1", (None, None, -1.0, None)),  # negative: a double only
    ("true", (True, None, None, None)),  # a boolean literal is nothing else
    ("FALSE", (False, None, None, None)),
    ("numerator: 5\ndenominator: TEN_THOUSAND", (None, None, None, (5, 10_000))),
    ('{"numerator": 50, "denominator": "MILLION"}', (None, None, None, (50, 1_000_000))),
    ("numerator: 5", (None, None, None, (5, 100))),  # HUNDRED is the default denominator
    ("{}", (None, None, None, (0, 100))),
    ("numerator: 5\ndenominator: BOGUS", (None, None, None, None)),
    ("numerator: 5\nextra: 1", (None, None, None, None)),
    ("numerator: -5", (None, None, None, None)),
    ("hello", (None, None, None, None)),
    ("1_000", (None, None, None, None)),  # Python's float() would take it; absl does not
    ("", (None, None, None, None)),
])
def test_readings(raw: str, expected: tuple) -> None:
    assert readings(raw) == expected
    assert Entry(raw).raw == raw


def test_inf_and_nan_are_doubles_without_integer_reading() -> None:
    assert readings("inf")[:2] == (None, None) and math.isinf(Entry("inf").double_value)  # type: ignore[arg-type]
    assert math.isnan(Entry("nan").double_value)  # type: ignore[arg-type]
    assert Entry("1e400").uint_value is None  # overflows to inf


def test_parse_helpers_refuse_non_ascii_and_junk() -> None:
    assert parse_double("\u0661") is None  # an Arabic-Indic digit: float() takes it, absl does not
    assert parse_double("+2.5") == 2.5
    assert parse_fractional_percent("[1, 2]") is None
    assert parse_fractional_percent(": :") is None  # not YAML


def test_fraction_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([149, 150])
    monkeypatch.setattr(entry_module, "_getrandbits", lambda bits: next(draws))
    fifty = Fraction(50, 100)
    assert fifty.hit() is True and fifty.hit() is False  # 149 % 100 < 50, 150 % 100 is not
    assert Fraction(250, 100).hit() and not Fraction(0, 100).hit()  # no draw left: none was made
    assert Fraction(1, 10_000).enabled(20_000) and not Fraction(1, 10_000).enabled(20_001)
    assert Fraction(3, 100) == Fraction(3, 100) != Fraction(3, 1000)


@pytest.mark.parametrize(("value", "raw"), [
    (True, "true"), (100.0, "100"), (0.5, "0.5"), ("text", "text"), ({}, "{}"),
    ({"numerator": 5.0, "denominator": "TEN_THOUSAND"}, "numerator: 5\ndenominator: TEN_THOUSAND"),
])
def test_static_layer_values_are_rendered_as_envoy_renders_them(value: object, raw: str) -> None:
    assert entry_from_value(value).raw == raw
