"""Render a stats snapshot in the Prometheus text exposition format, the way Envoy does.

Every stat goes through Envoy's default tag extraction (:mod:`tulle.stats.tags`);
the tag-extracted name, sanitized and prefixed with ``envoy_``, is the metric
family and the tags are its labels. Families are grouped per type (counters,
then gauges, then text readouts when asked for, then histograms), sorted by
extracted name, each with a ``# TYPE`` line, its samples sorted by full stat
name, and a blank line. A text readout is a gauge of value 0 whose text is its
``text_value`` label (Envoy's ``/stats/prometheus?text_readouts``).
"""

from __future__ import annotations

import re
from typing import Any

from tulle.stats.tags import Tags, extract_tags
from tulle.stats.text import StatsQuery, is_used

_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def sanitize_name(name: str) -> str:
    return _INVALID_NAME_CHARS.sub("_", name)


def metric_name(tag_extracted_name: str) -> str:
    return "envoy_" + sanitize_name(tag_extracted_name)


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_labels(tags: Tags) -> str:
    return ",".join(f'{sanitize_name(name)}="{_escape_label_value(value)}"' for name, value in tags)


def _format_number(value: float) -> str:
    """fmt's ``{:.32g}``, as Envoy prints bucket bounds and sums."""
    if isinstance(value, int):
        return str(value)
    if value != value:  # NaN
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return format(value, ".32g")


def _group(stats: dict[str, Any], kind: str, query: StatsQuery) -> dict[str, list[tuple[str, Tags, Any]]]:
    families: dict[str, list[tuple[str, Tags, Any]]] = {}
    for name, value in stats.items():
        used = bool(value) if kind == "text_readouts" else is_used(kind, value)
        if not query.wants(name, used):
            continue
        extracted, tags = extract_tags(name)
        families.setdefault(extracted, []).append((name, tags, value))
    return families


def render_prometheus(snapshot: dict[str, Any], query: StatsQuery = StatsQuery(), *,
                      text_readouts: bool = False) -> str:
    out: list[str] = []
    kinds = [("counters", "counter"), ("gauges", "gauge")]
    if text_readouts:
        kinds.append(("text_readouts", "gauge"))
    for kind, prom_type in kinds:
        families = _group(snapshot.get(kind, {}), kind, query)
        for extracted in sorted(families):
            family = metric_name(extracted)
            out.append(f"# TYPE {family} {prom_type}\n")
            for _name, tags, value in sorted(families[extracted], key=lambda item: item[0]):
                if kind == "text_readouts":
                    out.append(f"{family}{{{format_labels((*tags, ('text_value', value)))}}} 0\n")
                else:
                    out.append(f"{family}{{{format_labels(tags)}}} {value}\n")
            out.append("\n")

    families = _group(snapshot.get("histograms", {}), "histograms", query)
    for extracted in sorted(families):
        family = metric_name(extracted)
        out.append(f"# TYPE {family} histogram\n")
        for _name, tags, hist in sorted(families[extracted], key=lambda item: item[0]):
            labels = format_labels(tags)
            bucket_labels = labels + "," if labels else ""
            cumulative = 0
            for bound, count in zip(hist["buckets"], hist["counts"], strict=False):
                cumulative += count
                out.append(f'{family}_bucket{{{bucket_labels}le="{_format_number(bound)}"}} {cumulative}\n')
            out.append(f'{family}_bucket{{{bucket_labels}le="+Inf"}} {hist["count"]}\n')
            out.append(f"{family}_sum{{{labels}}} {_format_number(hist['sum'])}\n")
            out.append(f"{family}_count{{{labels}}} {hist['count']}\n")
        out.append("\n")
    return "".join(out)
