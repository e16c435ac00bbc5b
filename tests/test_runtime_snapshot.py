"""Snapshots: later layers win key by key; typed lookups fall back to the caller's default."""

from __future__ import annotations

from tulle.runtime.entry import Entry, Fraction
from tulle.runtime.layers import Layer
from tulle.runtime.snapshot import Snapshot


def layer(name: str, **values: str) -> Layer:
    return Layer(name, {key: Entry(value) for key, value in values.items()})


def test_later_layers_override_earlier_ones() -> None:
    snapshot = Snapshot([layer("base", a="1", b="2"), layer("disk", b="3"), layer("admin", c="x")])
    assert (snapshot.get("a"), snapshot.get("b"), snapshot.get("c"), snapshot.get("d")) == ("1", "3", "x", None)
    assert [each.name for each in snapshot.layers] == ["base", "disk", "admin"]


def test_typed_lookups_and_their_defaults() -> None:
    snapshot = Snapshot([layer("l", n="12", d="2.5", t="true", f="numerator: 3", s="text")])
    assert snapshot.integer("n", 7) == 12 and snapshot.integer("t", 7) == 7 and snapshot.integer("nope", 7) == 7
    assert snapshot.integer("d", 0) == 2
    assert snapshot.double("d", 0.0) == 2.5 and snapshot.double("s", 1.5) == 1.5
    assert snapshot.boolean("t", False) is True and snapshot.boolean("n", False) is True
    assert snapshot.boolean("s", False) is False and snapshot.boolean("d", True) is True  # 2.5: no boolean
    default = Fraction(1, 100)
    assert snapshot.fraction("f", default) == Fraction(3, 100)
    assert snapshot.fraction("n", default) == Fraction(12, 100)
    assert snapshot.fraction("s", default) is default and snapshot.fraction("", default) is default


def test_feature_enabled_uses_the_callers_random_value() -> None:
    snapshot = Snapshot([layer("l", k="numerator: 5\ndenominator: TEN_THOUSAND")])
    assert snapshot.feature_enabled("k", Fraction(0, 100), 10_004)
    assert not snapshot.feature_enabled("k", Fraction(0, 100), 10_005)
    assert snapshot.feature_enabled("missing", Fraction(100, 100), 12345)
