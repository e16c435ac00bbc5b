"""Istio field values -> Envoy JSON values: durations, percentages, gRPC status names."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": Decimal("1e-9"), "us": Decimal("1e-6"), "µs": Decimal("1e-6"), "ms": Decimal("0.001"),
    "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600),
}


def duration_seconds(value: Any) -> Decimal:
    """Istio durations as written ("10s", "1.5s", "3m", "1h30m", "300ms"); a YAML number is seconds,
    a string needs its unit (only "0" may omit it)."""
    if isinstance(value, int | float):
        return Decimal(str(value))
    text = str(value).strip()
    if text in ("0", ""):
        return Decimal(0)
    position = 0
    total = Decimal(0)
    for part in _GO_DURATION_PART.finditer(text):
        if part.start() != position:
            break
        total += Decimal(part.group(1)) * _UNIT_SECONDS[part.group(2)]
        position = part.end()
    if position != len(text):
        raise ValueError(f"not a duration: {value!r}")
    return total


def duration(value: Any) -> str:
    """A protobuf JSON Duration ("2.500s"), whole nanoseconds as protobuf keeps them."""
    seconds = duration_seconds(value).quantize(Decimal("1e-9"))
    text = format(seconds.normalize(), "f")
    return f"{text}s"


def fractional_percent(value: float) -> dict[str, Any]:
    """Istio Percent (a float 0-100) -> FractionalPercent per million, as Istio translates it."""
    return {"numerator": int(Decimal(str(value)) * 10000), "denominator": "MILLION"}


def integer_percent(value: int) -> dict[str, Any]:
    return {"numerator": int(value), "denominator": "HUNDRED"}


# gRPC status names Istio accepts in fault.abort.grpcStatus (google.rpc.Code).
GRPC_STATUS_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
    "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}


def grpc_status(value: Any) -> int:
    if isinstance(value, int):
        return value
    text = str(value).strip().upper()
    return int(text) if text.isdigit() else GRPC_STATUS_CODES[text]


UINT32_MAX = 2**32 - 1
