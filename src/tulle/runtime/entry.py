"""One runtime value, parsed once when a layer is loaded (Envoy's SnapshotImpl::createEntry).

Envoy keeps the raw string and, as a lookup-time optimisation, every typed reading of it
that parses (resolveEntryType), and so does :class:`Entry`:

* boolean: the stripped text is an unsigned integer (non-zero: true; parsing goes on) or
  ``true``/``false`` in any case (parsing stops there);
* double: the text parses as a floating-point number; when it is in [0, 2^64) the
  integer reading is its truncation (``"3.7"`` reads as 3);
* fractional percent: otherwise, the text as YAML/JSON of an ``envoy.type.v3.FractionalPercent``
  (``numerator: 5\\ndenominator: TEN_THOUSAND``).

``fraction`` is what ``featureEnabled(key, default, random)`` uses when the key is set: the
fractional percent, or for an integer N the legacy "N out of 100". Entries are immutable.
"""

from __future__ import annotations

import math
import random
from typing import Any

import cython

from tulle.router.matchers import UINT64_MAX, simple_atoi

_ASCII_SPACE = " \t\n\v\f\r"
# FractionalPercent.DenominatorType names and numbers -> the denominator's value
DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}
_DENOMINATOR_NAMES = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}
_UINT32_MAX = 2**32 - 1

_getrandbits = random.getrandbits


class Fraction:
    """A FractionalPercent evaluated as Envoy's featureEnabled(): ``random % denominator < numerator``."""

    if not cython.compiled:
        __slots__ = ("numerator", "denominator", "always", "never")

    def __init__(self, numerator: int, denominator: int) -> None:
        self.numerator = numerator
        self.denominator = denominator
        # the usual 0% and 100% settle without drawing a random number
        self.always = numerator >= denominator
        self.never = numerator == 0

    def enabled(self, random_value: int) -> bool:
        return random_value % self.denominator < self.numerator

    def hit(self) -> bool:
        """Drawn with a fresh random number (featureEnabled without a caller's random value)."""
        if self.always:
            return True
        if self.never:
            return False
        return _getrandbits(64) % self.denominator < self.numerator

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Fraction) and self.numerator == other.numerator
                and self.denominator == other.denominator)

    def __hash__(self) -> int:
        return hash((self.numerator, self.denominator))

    def __repr__(self) -> str:
        return f"Fraction({self.numerator}, {self.denominator})"


class Entry:
    __slots__ = ("raw", "bool_value", "uint_value", "double_value", "fraction")

    def __init__(self, raw: str) -> None:
        self.raw = raw
        self.bool_value: bool | None = None
        self.uint_value: int | None = None
        self.double_value: float | None = None
        self.fraction: Fraction | None = None
        if self._parse_boolean():
            return
        double = parse_double(raw)
        if double is not None:
            self.double_value = double
            if 0 <= double <= UINT64_MAX:
                self.uint_value = min(int(double), UINT64_MAX)
                # Envoy's legacy integer percentage: N out of 100 (above 100: always)
                self.fraction = Fraction(self.uint_value, 100)
                return
        self.fraction = parse_fractional_percent(raw)

    def _parse_boolean(self) -> bool:
        """True when the value is a boolean literal (nothing else to parse)."""
        stripped = self.raw.strip(_ASCII_SPACE)
        number = simple_atoi(stripped, 0, UINT64_MAX)
        if number is not None:
            self.bool_value = number != 0
            return False  # an integer: it is a number too
        lowered = stripped.lower()
        if lowered in ("true", "false"):
            self.bool_value = lowered == "true"
            return True
        return False

    def __repr__(self) -> str:
        return f"Entry({self.raw!r})"


def parse_double(text: str) -> float | None:
    """absl::SimpleAtod: optional surrounding ASCII whitespace, decimal or exponent notation,
    inf and nan; no digit separators or non-ASCII digits (Python's float() would take those)."""
    stripped = text.strip(_ASCII_SPACE)
    if not stripped or not stripped.isascii() or "_" in stripped:
        return None
    try:
        return float(stripped)
    except ValueError:
        return None


def parse_fractional_percent(text: str) -> Fraction | None:
    """``text`` as a FractionalPercent in YAML or JSON, validated as Envoy does; None otherwise."""
    import yaml  # only values that are not numbers get this far

    try:
        document: Any = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if not isinstance(document, dict) or not set(document) <= {"numerator", "denominator"}:
        return None
    numerator = document.get("numerator", 0)
    if isinstance(numerator, bool) or not isinstance(numerator, int) or not 0 <= numerator <= _UINT32_MAX:
        return None
    denominator = document.get("denominator", "HUNDRED")
    if isinstance(denominator, str):
        value = _DENOMINATOR_NAMES.get(denominator)
    elif isinstance(denominator, int) and not isinstance(denominator, bool):
        value = DENOMINATORS.get(denominator)
    else:
        value = None
    if value is None:
        return None
    return Fraction(numerator, value)


def entry_from_value(value: Any) -> Entry:
    """A static layer's scalar or fractional-percent struct, rendered to text the way Envoy renders
    it (as YAML) before parsing it like any other value."""
    if isinstance(value, bool):
        return Entry("true" if value else "false")
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 2**53:
            return Entry(str(int(value)))
        return Entry(repr(value) if math.isfinite(value) else str(value))
    if isinstance(value, dict):
        if not value:
            return Entry("{}")
        # a Struct's fields come in no particular order: numerator first, as people write it
        names = sorted(value, key=lambda name: (name != "numerator", name != "denominator", name))
        return Entry("\n".join(f"{name}: {_scalar(value[name])}" for name in names))
    return Entry(str(value))


def _scalar(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
