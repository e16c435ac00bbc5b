"""Istio value forms -> Envoy JSON values."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tulle.controlplane.translate.values import (
    duration,
    duration_seconds,
    fractional_percent,
    grpc_status,
    integer_percent,
)


@pytest.mark.parametrize(("text", "seconds"), [
    ("10s", "10"), ("1.5s", "1.5"), ("3m", "180"), ("1h30m", "5400"), ("300ms", "0.3"), ("0", "0"),
    ("250us", "0.00025"), (2, "2"), (2.5, "2.5"), ("1m0.5s", "60.5"),
])
def test_go_and_protobuf_durations(text: object, seconds: str) -> None:
    assert duration_seconds(text) == Decimal(seconds)


@pytest.mark.parametrize("text", ["10", "s", "1x", "1s2", "-1s", "1.5.5s"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        duration_seconds(text)


def test_protobuf_json_duration_text() -> None:
    assert duration("10s") == "10s"
    assert duration("1.5s") == "1.5s"
    assert duration("3m") == "180s"
    assert duration("0s") == "0s"
    assert duration("1ns") == "0.000000001s"


@given(st.integers(0, 10**6), st.integers(0, 999_999_999))
def test_durations_keep_nanoseconds(seconds: int, nanos: int) -> None:
    text = f"{seconds}.{nanos:09d}s"
    assert duration_seconds(duration(text)) == duration_seconds(text)


def test_percentages() -> None:
    assert fractional_percent(12.5) == {"numerator": 125000, "denominator": "MILLION"}
    assert fractional_percent(0.1) == {"numerator": 1000, "denominator": "MILLION"}
    assert integer_percent(100) == {"numerator": 100, "denominator": "HUNDRED"}


def test_grpc_status_names() -> None:
    assert grpc_status("UNAVAILABLE") == 14
    assert grpc_status("unavailable") == 14
    assert grpc_status("4") == 4
    assert grpc_status(7) == 7
    with pytest.raises(KeyError):
        grpc_status("NOT_A_CODE")
