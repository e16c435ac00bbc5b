"""What features read from the runtime: Envoy's RuntimeFractionalPercent, RuntimeFeatureFlag,
RuntimeUInt32, RuntimeDouble and RuntimePercent, compiled once at config time.

Each helper validates its proto and returns the cheapest thing that is right:

* no runtime key, or a runtime that can never change (no ``layered_runtime``, or static
  layers only): the answer itself, resolved now (a :class:`Fraction`, a bool, a number), so
  the request path costs exactly what it did before runtime existed;
* otherwise a small object that looks the key up in the current snapshot on each use (one
  dict get on an immutable map, no I/O, no lock): :class:`RuntimeFraction` (``hit()`` /
  ``enabled(random)`` like a Fraction), :class:`RuntimeFlag` (truthy like a bool) and
  :class:`RuntimeNumber` (``value()``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tulle.config.errors import ConfigError, join
from tulle.config.support import check_fields
from tulle.runtime.entry import DENOMINATORS, Fraction

if TYPE_CHECKING:
    from tulle.runtime.loader import Runtime


class RuntimeFraction:
    """featureEnabled(key, default): the key's fractional percent or integer percentage, else ``default``."""

    __slots__ = ("runtime", "key", "default")

    def __init__(self, runtime: Runtime, key: str, default: Fraction) -> None:
        self.runtime = runtime
        self.key = key
        self.default = default

    def current(self) -> Fraction:
        entry = self.runtime.values.get(self.key)
        if entry is None:
            return self.default
        fraction = entry.fraction
        return self.default if fraction is None else fraction

    def hit(self) -> bool:
        entry = self.runtime.values.get(self.key)
        if entry is None or entry.fraction is None:
            return self.default.hit()
        return entry.fraction.hit()

    def enabled(self, random_value: int) -> bool:
        return self.current().enabled(random_value)


class RuntimeFlag:
    """Envoy's Runtime::FeatureFlag: getBoolean(key, default); truthy like the bool it stands for."""

    __slots__ = ("runtime", "key", "default")

    def __init__(self, runtime: Runtime, key: str, default: bool) -> None:
        self.runtime = runtime
        self.key = key
        self.default = default

    def __bool__(self) -> bool:
        entry = self.runtime.values.get(self.key)
        if entry is None or entry.bool_value is None:
            return self.default
        return entry.bool_value


class RuntimeNumber:
    """Envoy's Runtime::UInt32 / Double / Percentage: ``value()`` reads the key's number each time."""

    __slots__ = ("runtime", "key", "default", "kind")

    def __init__(self, runtime: Runtime, key: str, default: float, kind: str) -> None:
        self.runtime = runtime
        self.key = key
        self.default = default
        self.kind = kind  # "uint32", "double" or "percent"

    def value(self) -> float:
        return resolve_number(self.runtime, self.key, self.default, self.kind)


def resolve_number(runtime: Runtime, key: str, default: float, kind: str) -> float:
    snapshot = runtime.snapshot
    if kind == "uint32":
        return snapshot.integer(key, int(default)) & 0xFFFFFFFF  # Envoy narrows the uint64 it reads
    value = snapshot.double(key, default)
    if kind == "percent" and not 0.0 <= value <= 100.0:
        return default  # Envoy's Runtime::Percentage ignores an out-of-range value
    return value


def fractional_percent(msg: Any, field: str) -> Fraction:
    """An ``envoy.type.v3.FractionalPercent`` as a :class:`Fraction`."""
    check_fields(msg, ("numerator", "denominator"), field)
    denominator = DENOMINATORS.get(msg.denominator)
    if denominator is None:
        raise ConfigError(f"unknown denominator {msg.denominator}", field=join(field, "denominator"))
    return Fraction(msg.numerator, denominator)


def runtime_fractional_percent(runtime: Runtime, msg: Any, field: str) -> Fraction | RuntimeFraction:
    """A ``config.core.v3.RuntimeFractionalPercent`` (``default_value`` is required)."""
    check_fields(msg, ("default_value", "runtime_key"), field)
    if not msg.HasField("default_value"):
        raise ConfigError("default_value is required", field=join(field, "default_value"))
    return runtime.fraction(msg.runtime_key, fractional_percent(msg.default_value, join(field, "default_value")))


def feature_flag(runtime: Runtime, msg: Any, field: str) -> bool | RuntimeFlag:
    """A ``config.core.v3.RuntimeFeatureFlag`` (both fields are required, as Envoy validates)."""
    check_fields(msg, ("default_value", "runtime_key"), field)
    if not msg.HasField("default_value"):
        raise ConfigError("default_value is required", field=join(field, "default_value"))
    if not msg.runtime_key:
        raise ConfigError("runtime_key is required", field=join(field, "runtime_key"))
    return runtime.flag(msg.runtime_key, bool(msg.default_value.value))


def runtime_number(runtime: Runtime, msg: Any, field: str, kind: str) -> float | RuntimeNumber:
    """A ``RuntimeUInt32`` ("uint32"), ``RuntimeDouble`` ("double") or ``RuntimePercent`` ("percent")."""
    check_fields(msg, ("default_value", "runtime_key"), field)
    if not msg.runtime_key:
        raise ConfigError("runtime_key is required", field=join(field, "runtime_key"))
    if kind == "percent":
        check_fields(msg.default_value, ("value",), join(field, "default_value"))
        default: float = msg.default_value.value
        if not 0.0 <= default <= 100.0:
            raise ConfigError("value must be in [0, 100]", field=join(field, "default_value.value"))
    else:
        default = msg.default_value
    if not runtime.dynamic:
        return resolve_number(runtime, msg.runtime_key, default, kind)
    return RuntimeNumber(runtime, msg.runtime_key, default, kind)
