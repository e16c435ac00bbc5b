"""Render a stats snapshot (``Store.snapshot()`` / ``merge()`` shape) as Envoy's /stats output.

Text: text readouts sorted by name as ``name: "value"``, then counters and gauges
merged and sorted by name as ``name: value``, then histograms sorted by name as ``name: P0(interval,cumulative) P25(...) ...``
(or ``name: No recorded values``), Envoy's order. JSON: ``{"stats": [{"name", "value"}...,
{"histograms": {"supported_quantiles": [...], "computed_quantiles": [...]}}]}``.

Tulle keeps cumulative histograms only (no per-flush interval), so the
interval half of each quantile pair is ``nan`` in text and ``null`` in JSON,
which is what Envoy shows for an interval without samples. Quantiles are
interpolated linearly inside the fixed buckets.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

# Envoy's supported quantiles (HistogramStatisticsImpl::supportedQuantiles).
SUPPORTED_QUANTILES: tuple[float, ...] = (0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1)
_QUANTILE_LABELS = ("0", "25", "50", "75", "90", "95", "99", "99.5", "99.9", "100")
_JSON_SUPPORTED_QUANTILES = [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]

STAT_TYPES = ("All", "Counters", "Gauges", "Histograms", "TextReadouts")


@dataclass(frozen=True)
class StatsQuery:
    """The /stats selection parameters: ``filter`` (a compiled re2 searched in the full name),
    ``usedonly`` and ``type`` (one of :data:`STAT_TYPES`)."""

    name_filter: Any = None
    used_only: bool = False
    stat_type: str = "All"

    def wants(self, name: str, used: bool) -> bool:
        if self.used_only and not used:
            return False
        return self.name_filter is None or self.name_filter.search(name) is not None

    def wants_kind(self, kind: str) -> bool:
        return self.stat_type == "All" or self.stat_type == kind


def is_used(kind: str, value: Any) -> bool:
    """Envoy's "used" means written at least once; a snapshot only has values, so a stat
    counts as used once it is non-zero (a histogram once it has a sample)."""
    if kind == "histograms":
        return bool(value["count"])
    return value != 0


def select_numeric(snapshot: dict[str, Any], query: StatsQuery) -> list[tuple[str, int]]:
    """Counters and gauges wanted by ``query``, merged and sorted by name (Envoy's order)."""
    selected: list[tuple[str, int]] = []
    for kind, type_name in (("counters", "Counters"), ("gauges", "Gauges")):
        if not query.wants_kind(type_name):
            continue
        for name, value in snapshot.get(kind, {}).items():
            if query.wants(name, is_used(kind, value)):
                selected.append((name, value))
    selected.sort()
    return selected


def select_text_readouts(snapshot: dict[str, Any], query: StatsQuery) -> list[tuple[str, str]]:
    if not query.wants_kind("TextReadouts"):
        return []
    return sorted(
        (name, text) for name, text in snapshot.get("text_readouts", {}).items()
        if query.wants(name, bool(text))
    )


def select_histograms(snapshot: dict[str, Any], query: StatsQuery) -> list[tuple[str, dict[str, Any]]]:
    if not query.wants_kind("Histograms"):
        return []
    return sorted(
        (name, hist)
        for name, hist in snapshot.get("histograms", {}).items()
        if query.wants(name, is_used("histograms", hist))
    )


def histogram_quantiles(hist: dict[str, Any]) -> list[float]:
    """Each of :data:`SUPPORTED_QUANTILES`, interpolated inside the buckets; NaN when empty."""
    total = hist["count"]
    if not total:
        return [math.nan] * len(SUPPORTED_QUANTILES)
    bounds: list[float] = hist["buckets"]
    counts: list[int] = hist["counts"]
    values = []
    for quantile in SUPPORTED_QUANTILES:
        values.append(_quantile(bounds, counts, total, quantile))
    return values


def _quantile(bounds: list[float], counts: list[int], total: int, quantile: float) -> float:
    target = quantile * total
    below = 0
    for index, in_bucket in enumerate(counts):
        if not in_bucket:
            continue
        if below + in_bucket >= target:
            lower = bounds[index - 1] if index > 0 else 0.0
            if index >= len(bounds):
                return float(lower)  # overflow bucket: nothing is known above the largest bound
            upper = bounds[index]
            fraction = max(0.0, (target - below) / in_bucket)
            return float(lower + (upper - lower) * fraction)
        below += in_bucket
    return float(bounds[-1])


def format_double(value: float) -> str:
    """Like fmt's ``{}`` for a double: shortest round-trip form, no trailing ``.0``."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _json_number(value: float) -> float | int | None:
    """NaN has no JSON form (Envoy writes null); integral values print without ``.0`` as Envoy's do."""
    if math.isnan(value):
        return None
    return int(value) if value.is_integer() else value


def render_text(snapshot: dict[str, Any], query: StatsQuery = StatsQuery()) -> str:
    lines = [f'{name}: "{text}"\n' for name, text in select_text_readouts(snapshot, query)]
    lines += [f"{name}: {value}\n" for name, value in select_numeric(snapshot, query)]
    for name, hist in select_histograms(snapshot, query):
        if not hist["count"]:
            lines.append(f"{name}: No recorded values\n")
            continue
        summary = " ".join(
            f"P{label}(nan,{format_double(value)})"
            for label, value in zip(_QUANTILE_LABELS, histogram_quantiles(hist), strict=True)
        )
        lines.append(f"{name}: {summary}\n")
    return "".join(lines)


def render_json(snapshot: dict[str, Any], query: StatsQuery = StatsQuery()) -> str:
    stats: list[dict[str, Any]] = [
        {"name": name, "value": text} for name, text in select_text_readouts(snapshot, query)
    ]
    stats += [{"name": name, "value": value} for name, value in select_numeric(snapshot, query)]
    histograms = select_histograms(snapshot, query)
    if histograms:
        computed = []
        for name, hist in histograms:
            values = [
                {"cumulative": _json_number(value), "interval": None} for value in histogram_quantiles(hist)
            ]
            computed.append({"name": name, "values": values})
        stats.append(
            {
                "histograms": {
                    "supported_quantiles": _JSON_SUPPORTED_QUANTILES,
                    "computed_quantiles": computed,
                }
            }
        )
    return json.dumps({"stats": stats}, separators=(",", ":"))
