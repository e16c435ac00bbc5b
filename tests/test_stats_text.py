"""Envoy /stats text and JSON rendering of a known snapshot."""

from __future__ import annotations

import json
import math

import re2

from tulle.stats.store import Store
from tulle.stats.text import (
    SUPPORTED_QUANTILES,
    StatsQuery,
    format_double,
    histogram_quantiles,
    render_json,
    render_text,
)


def _snapshot() -> dict:
    store = Store()
    store.counter("cluster.foo.upstream_rq_total").inc(7)
    store.counter("cluster.foo.upstream_rq_200").inc(7)
    store.counter("http.ingress.downstream_rq_total").inc(0)
    store.gauge("server.live").set(1)
    store.gauge("cluster.foo.upstream_cx_active").set(2)
    latency = store.histogram("cluster.foo.upstream_rq_time")
    for value in (2, 3, 4, 8):
        latency.record(value)
    store.histogram("http.ingress.downstream_rq_time")
    return store.snapshot()


def test_text_sorts_counters_and_gauges_together_then_histograms() -> None:
    lines = render_text(_snapshot()).splitlines()
    numeric = lines[:5]
    assert numeric == [
        "cluster.foo.upstream_cx_active: 2",
        "cluster.foo.upstream_rq_200: 7",
        "cluster.foo.upstream_rq_total: 7",
        "http.ingress.downstream_rq_total: 0",
        "server.live: 1",
    ]
    assert lines[5].startswith("cluster.foo.upstream_rq_time: P0(nan,")
    assert lines[6] == "http.ingress.downstream_rq_time: No recorded values"


def test_text_histogram_line_has_every_quantile_in_envoy_format() -> None:
    line = next(line for line in render_text(_snapshot()).splitlines() if "upstream_rq_time" in line)
    labels = [part.split("(")[0] for part in line.split(": ", 1)[1].split(" ")]
    assert labels == ["P0", "P25", "P50", "P75", "P90", "P95", "P99", "P99.5", "P99.9", "P100"]
    assert "P100(nan,10)" in line  # 8 lands in the (5, 10] bucket


def test_quantiles_interpolate_within_buckets() -> None:
    hist = {"buckets": [1, 5, 10], "counts": [0, 2, 2, 0], "sum": 16, "count": 4}
    values = dict(zip(SUPPORTED_QUANTILES, histogram_quantiles(hist), strict=True))
    assert values[0.5] == 5  # half the samples are at or below the first occupied bucket's top
    assert 5 < values[0.75] < 10
    assert values[1] == 10


def test_quantiles_of_empty_histogram_are_nan() -> None:
    hist = {"buckets": [1, 5], "counts": [0, 0, 0], "sum": 0, "count": 0}
    assert all(math.isnan(value) for value in histogram_quantiles(hist))


def test_filter_usedonly_and_type() -> None:
    snapshot = _snapshot()
    filtered = render_text(snapshot, StatsQuery(name_filter=re2.compile(r"rq_total$")))
    assert filtered.splitlines() == ["cluster.foo.upstream_rq_total: 7", "http.ingress.downstream_rq_total: 0"]
    used = render_text(snapshot, StatsQuery(used_only=True))
    assert "http.ingress.downstream_rq_total" not in used
    assert "No recorded values" not in used
    gauges = render_text(snapshot, StatsQuery(stat_type="Gauges"))
    assert gauges.splitlines() == ["cluster.foo.upstream_cx_active: 2", "server.live: 1"]


def test_json_shape() -> None:
    document = json.loads(render_json(_snapshot()))
    stats = document["stats"]
    assert stats[0] == {"name": "cluster.foo.upstream_cx_active", "value": 2}
    histograms = stats[-1]["histograms"]
    assert histograms["supported_quantiles"] == [0, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 100]
    computed = {entry["name"]: entry["values"] for entry in histograms["computed_quantiles"]}
    assert len(computed["cluster.foo.upstream_rq_time"]) == 10
    assert computed["cluster.foo.upstream_rq_time"][-1] == {"cumulative": 10, "interval": None}
    assert computed["http.ingress.downstream_rq_time"][0] == {"cumulative": None, "interval": None}


def test_json_without_histograms_has_no_histogram_entry() -> None:
    document = json.loads(render_json(_snapshot(), StatsQuery(stat_type="Counters")))
    assert all("histograms" not in entry for entry in document["stats"])
    assert {entry["name"] for entry in document["stats"]} == {
        "cluster.foo.upstream_rq_200", "cluster.foo.upstream_rq_total", "http.ingress.downstream_rq_total",
    }


def test_format_double_matches_fmt() -> None:
    assert format_double(1.0) == "1"
    assert format_double(2.5) == "2.5"
    assert format_double(math.nan) == "nan"


def _with_text_readouts() -> dict:
    store = Store()
    store.counter("cluster_manager.cds.update_success").inc(2)
    store.text_readout("listener_manager.lds.version_text").set("l2")
    store.text_readout("cluster_manager.cds.version_text").set("c1")
    store.text_readout("control_plane.identifier")  # never set
    return store.snapshot()


def test_text_readouts_come_first_quoted_and_sorted_as_in_envoy() -> None:
    lines = render_text(_with_text_readouts()).splitlines()
    assert lines == [
        'cluster_manager.cds.version_text: "c1"',
        'control_plane.identifier: ""',
        'listener_manager.lds.version_text: "l2"',
        "cluster_manager.cds.update_success: 2",
    ]
    only = render_text(_with_text_readouts(), StatsQuery(stat_type="TextReadouts", used_only=True)).splitlines()
    assert only == ['cluster_manager.cds.version_text: "c1"', 'listener_manager.lds.version_text: "l2"']
    assert "version_text" not in render_text(_with_text_readouts(), StatsQuery(stat_type="Counters"))


def test_text_readouts_in_json_are_strings() -> None:
    stats = json.loads(render_json(_with_text_readouts()))["stats"]
    assert stats[0] == {"name": "cluster_manager.cds.version_text", "value": "c1"}
    assert {"name": "cluster_manager.cds.update_success", "value": 2} in stats
