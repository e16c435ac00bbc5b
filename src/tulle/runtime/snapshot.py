"""An immutable view of every layer at one moment (Envoy's SnapshotImpl).

Later layers override earlier ones key by key. Lookups never fail: a key that is unset, or
whose value has no reading of the asked type, gives the caller's default, as in Envoy.
"""

from __future__ import annotations

from collections.abc import Sequence

from tulle.runtime.entry import Entry, Fraction
from tulle.runtime.layers import Layer


class Snapshot:
    __slots__ = ("layers", "values")

    def __init__(self, layers: Sequence[Layer] = ()) -> None:
        self.layers = tuple(layers)
        values: dict[str, Entry] = {}
        for layer in self.layers:
            values.update(layer.values)
        self.values = values

    def get(self, key: str) -> str | None:
        entry = self.values.get(key)
        return None if entry is None else entry.raw

    def integer(self, key: str, default: int) -> int:
        entry = self.values.get(key)
        if entry is None or entry.uint_value is None:
            return default
        return entry.uint_value

    def double(self, key: str, default: float) -> float:
        entry = self.values.get(key)
        if entry is None or entry.double_value is None:
            return default
        return entry.double_value

    def boolean(self, key: str, default: bool) -> bool:
        entry = self.values.get(key)
        if entry is None or entry.bool_value is None:
            return default
        return entry.bool_value

    def fraction(self, key: str, default: Fraction) -> Fraction:
        """What featureEnabled(key, default, random) evaluates: the key's fractional percent or
        integer percentage when set, else ``default``."""
        entry = self.values.get(key)
        if entry is None or entry.fraction is None:
            return default
        return entry.fraction

    def feature_enabled(self, key: str, default: Fraction, random_value: int) -> bool:
        return self.fraction(key, default).enabled(random_value)


EMPTY = Snapshot()
