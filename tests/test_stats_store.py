"""The stats store: Envoy-named counters/gauges/histograms, summed across workers."""

from __future__ import annotations

import bisect

from tulle.stats.store import DEFAULT_BUCKETS, Gauge, Histogram, Store, merge


def test_store_returns_the_same_stat_for_a_name() -> None:
    store = Store()
    counter = store.counter("cluster.a.upstream_rq_total")
    counter.inc()
    counter.value += 2
    assert store.counter("cluster.a.upstream_rq_total") is counter
    assert store.snapshot()["counters"]["cluster.a.upstream_rq_total"] == 3


def test_gauges_go_up_and_down() -> None:
    gauge = Store().gauge("cluster.a.upstream_cx_active")
    gauge.inc()
    gauge.inc(4)
    gauge.dec(2)
    assert gauge.value == 3
    gauge.set(7)
    assert gauge.value == 7


def test_histogram_buckets_sum_count_and_quantiles() -> None:
    hist = Histogram("x")
    for value in (0.2, 3, 3, 40, 70_000):
        hist.record(value)
    assert hist.count == 5
    assert hist.sum == 0.2 + 3 + 3 + 40 + 70_000
    assert hist.counts[0] == 1  # <= 0.5
    assert hist.counts[DEFAULT_BUCKETS.index(5)] == 2  # (1, 5]
    assert hist.quantile(0.5) == 5
    assert hist.quantile(1.0) == 300000
    assert Histogram("empty").quantile(0.5) is None


def test_histogram_bucket_edges_are_bisect_left() -> None:
    """A value equal to a bound counts in that bound's bucket (Prometheus' le); above the last bound
    in the overflow slot; for the default bounds and custom ones (the compiled search is in C)."""
    for bounds in (DEFAULT_BUCKETS, (1.0,), (), (0.25, 0.5, 2.0, 8.0)):
        hist = Histogram("edges", bounds)
        values = [-1.0, 0.0, float("inf"), *bounds, *(b + 1e-9 for b in bounds), *(b - 1e-9 for b in bounds)]
        expected = [0] * (len(bounds) + 1)
        for value in values:
            hist.record(value)
            expected[bisect.bisect_left(bounds, value)] += 1
        assert hist.counts == expected, bounds


def test_merge_sums_workers() -> None:
    first, second = Store(), Store()
    first.counter("c").inc(2)
    second.counter("c").inc(5)
    second.counter("only_second").inc()
    first.gauge("g").set(1)
    second.gauge("g").set(2)
    first.histogram("h").record(1)
    second.histogram("h").record(1000)
    merged = merge([first.snapshot(), second.snapshot()])
    assert merged["counters"] == {"c": 7, "only_second": 1}
    assert merged["gauges"] == {"g": 3}
    assert merged["histograms"]["h"]["count"] == 2
    assert sum(merged["histograms"]["h"]["counts"]) == 2
    # merging must not alias the first worker's lists
    assert first.snapshot()["histograms"]["h"]["count"] == 1


def test_bind_sets_attributes_to_named_stats() -> None:
    class Stats:
        pass

    store, stats = Store(), Stats()
    store.bind(stats, "cluster.a.", counters=("upstream_rq_total",), gauges=("upstream_cx_active", "membership_total"),
               histograms=("upstream_rq_time",), process_wide=frozenset({"membership_total"}))
    assert stats.upstream_rq_total is store.counter("cluster.a.upstream_rq_total")
    assert stats.upstream_rq_time is store.histogram("cluster.a.upstream_rq_time")
    assert stats.upstream_cx_active.per_worker and not stats.membership_total.per_worker
    assert store.snapshot()["process_wide_gauges"] == ["cluster.a.membership_total"]


def test_text_readouts_are_snapshotted_and_merged_from_the_process_that_sets_them() -> None:
    main, child = Store(), Store()
    assert main.text_readout("cluster_manager.cds.version_text") is main.text_readout("cluster_manager.cds.version_text")
    main.text_readout("cluster_manager.cds.version_text").set("v7")
    child.text_readout("cluster_manager.cds.version_text")  # created, never set: ""
    assert main.snapshot()["text_readouts"] == {"cluster_manager.cds.version_text": "v7"}
    # whichever worker answers first, the value set by the one that owns it wins
    for snapshots in ([child.snapshot(), main.snapshot()], [main.snapshot(), child.snapshot()]):
        assert merge(snapshots)["text_readouts"] == {"cluster_manager.cds.version_text": "v7"}


def test_a_gauge_holds_envoys_uint64_values() -> None:
    # the xDS `version` gauge is a 64-bit hash of the version text: a C long would overflow (compiled)
    gauge = Gauge("control_plane.version")
    gauge.set(2**64 - 1)
    gauge.inc()
    gauge.dec(2)
    assert gauge.value == 2**64 - 2
