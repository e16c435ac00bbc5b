"""Feature helpers: Envoy's Runtime* protos compiled once, resolved now unless the runtime can change."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.bootstrap.v3.bootstrap_pb2 import LayeredRuntime
from envoy.config.core.v3 import base_pb2
from envoy.type.v3 import percent_pb2

from tulle.config.errors import ConfigError
from tulle.config.loader import parse_message
from tulle.runtime import (
    Fraction,
    Runtime,
    RuntimeFlag,
    RuntimeFraction,
    RuntimeNumber,
    feature_flag,
    fractional_percent,
    runtime_fractional_percent,
    runtime_number,
)


def runtime(*layers: dict[str, Any]) -> Runtime:
    return Runtime.from_proto(parse_message({"layers": list(layers)}, LayeredRuntime), "layered_runtime")


ADMIN = {"name": "admin", "admin_layer": {}}


def static(**values: Any) -> dict[str, Any]:
    return {"name": "static", "static_layer": values}


def fractional(doc: dict[str, Any]) -> Any:
    return parse_message(doc, base_pb2.RuntimeFractionalPercent)


def test_fractional_percent_validation() -> None:
    assert fractional_percent(parse_message({"numerator": 3, "denominator": "MILLION"},
                                            percent_pb2.FractionalPercent), "f") == Fraction(3, 1_000_000)
    unknown = percent_pb2.FractionalPercent(numerator=1, denominator=7)
    with pytest.raises(ConfigError) as info:
        fractional_percent(unknown, "f")
    assert info.value.field == "f.denominator"


def test_runtime_fraction_without_a_changing_runtime_is_resolved_now() -> None:
    doc = {"default_value": {"numerator": 10}, "runtime_key": "share"}
    assert runtime_fractional_percent(Runtime(), fractional(doc), "f") == Fraction(10, 100)
    # a static layer never changes either: its value is taken once
    assert runtime_fractional_percent(runtime(static(share=40)), fractional(doc), "f") == Fraction(40, 100)


def test_runtime_fraction_with_an_admin_layer_is_looked_up_per_use() -> None:
    layered = runtime(static(share=40), ADMIN)
    fraction = runtime_fractional_percent(layered, fractional(
        {"default_value": {"numerator": 10}, "runtime_key": "share"}), "f")
    assert isinstance(fraction, RuntimeFraction) and fraction.current() == Fraction(40, 100)
    layered.merge_admin({"share": "100"})
    assert fraction.hit() and fraction.enabled(99)
    layered.merge_admin({"share": "not a number"})  # no percentage reading: the default
    assert fraction.current() == Fraction(10, 100) and not fraction.enabled(10)
    no_key = runtime_fractional_percent(layered, fractional({"default_value": {"numerator": 10}}), "f")
    assert no_key == Fraction(10, 100)  # no key: nothing to look up


def test_runtime_fraction_needs_a_default_value() -> None:
    with pytest.raises(ConfigError) as info:
        runtime_fractional_percent(Runtime(), fractional({"runtime_key": "k"}), "f")
    assert info.value.field == "f.default_value"


def test_feature_flag() -> None:
    flag = parse_message({"default_value": True, "runtime_key": "on"}, base_pb2.RuntimeFeatureFlag)
    assert feature_flag(Runtime(), flag, "f") is True
    assert feature_flag(runtime(static(on=False)), flag, "f") is False
    layered = runtime(ADMIN)
    dynamic = feature_flag(layered, flag, "f")
    assert isinstance(dynamic, RuntimeFlag) and bool(dynamic) is True
    layered.merge_admin({"on": "0"})
    assert not dynamic
    layered.merge_admin({"on": "2.5"})  # not a boolean reading: the default
    assert dynamic
    for missing, field in (({"runtime_key": "k"}, "f.default_value"), ({"default_value": True}, "f.runtime_key")):
        with pytest.raises(ConfigError) as info:
            feature_flag(Runtime(), parse_message(missing, base_pb2.RuntimeFeatureFlag), "f")
        assert info.value.field == field


def test_runtime_numbers() -> None:
    layered = runtime(static(big=2**32 + 5, ratio=0.25, pct=150), ADMIN)
    uint32 = runtime_number(layered, parse_message({"default_value": 9, "runtime_key": "big"}, base_pb2.RuntimeUInt32),
                            "f", "uint32")
    double = runtime_number(layered, parse_message({"default_value": 1.0, "runtime_key": "ratio"},
                                                   base_pb2.RuntimeDouble), "f", "double")
    percent = runtime_number(layered, parse_message({"default_value": {"value": 20}, "runtime_key": "pct"},
                                                    base_pb2.RuntimePercent), "f", "percent")
    assert isinstance(uint32, RuntimeNumber) and uint32.value() == 5  # narrowed to 32 bits, as Envoy does
    assert double.value() == 0.25  # type: ignore[union-attr]
    assert percent.value() == 20  # type: ignore[union-attr]  # 150 is no percentage: the default
    layered.merge_admin({"pct": "42.5"})
    assert percent.value() == 42.5  # type: ignore[union-attr]
    constant = runtime_number(Runtime(), parse_message({"default_value": 9, "runtime_key": "big"},
                                                       base_pb2.RuntimeUInt32), "f", "uint32")
    assert constant == 9
    with pytest.raises(ConfigError) as info:
        runtime_number(Runtime(), parse_message({"default_value": {"value": 101}, "runtime_key": "k"},
                                                base_pb2.RuntimePercent), "f", "percent")
    assert info.value.field == "f.default_value.value"
