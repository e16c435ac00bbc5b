"""Cluster stats carry Envoy's full names and per-status-code counters."""

from __future__ import annotations

from tulle.stats.store import Counter, Gauge, Histogram, Store
from tulle.upstream.cluster_stats import COUNTERS, GAUGES, HISTOGRAMS, ClusterStats


def test_every_stat_is_registered_under_its_envoy_name():
    store = Store()
    stats = ClusterStats(store, "backend")
    for name in COUNTERS:
        assert isinstance(getattr(stats, name), Counter)
        assert store.counters[f"cluster.backend.{name}"] is getattr(stats, name)
    for name in GAUGES:
        assert isinstance(getattr(stats, name), Gauge)
        assert store.gauges[f"cluster.backend.{name}"] is getattr(stats, name)
    for name in HISTOGRAMS:
        assert isinstance(getattr(stats, name), Histogram)
        assert store.histograms[f"cluster.backend.{name}"] is getattr(stats, name)
    assert "cluster.backend.upstream_cx_active" in store.gauges
    assert "cluster.backend.upstream_rq_time" in store.histograms


def test_rq_completed_bumps_total_class_and_code():
    store = Store()
    stats = ClusterStats(store, "b")
    for status in (200, 200, 204, 503):
        stats.rq_completed(status)
    counters = {name: counter.value for name, counter in store.counters.items()}
    assert counters["cluster.b.upstream_rq_completed"] == 4
    assert counters["cluster.b.upstream_rq_2xx"] == 3
    assert counters["cluster.b.upstream_rq_200"] == 2
    assert counters["cluster.b.upstream_rq_204"] == 1
    assert counters["cluster.b.upstream_rq_5xx"] == 1
    assert counters["cluster.b.upstream_rq_503"] == 1
    assert "cluster.b.upstream_rq_4xx" not in counters


def test_two_clusters_do_not_share_stats():
    store = Store()
    first, second = ClusterStats(store, "a"), ClusterStats(store, "b")
    first.upstream_rq_total.value += 1
    first.rq_completed(200)
    assert second.upstream_rq_total.value == 0
    assert store.counters["cluster.a.upstream_rq_200"].value == 1
    assert "cluster.b.upstream_rq_200" not in store.counters


def test_connection_lifecycle_counters_shared_by_both_pools():
    import time

    stats = ClusterStats(Store(), "backend")
    stats.connect_failed(True)
    stats.connect_failed(False)
    assert (stats.upstream_cx_connect_fail.value, stats.upstream_cx_connect_timeout.value) == (2, 1)
    stats.upstream_cx_active.value = 2
    stats.connection_destroyed(True, False, time.monotonic())
    stats.connection_destroyed(False, True, time.monotonic())
    assert stats.upstream_cx_active.value == 0 and stats.upstream_cx_destroy.value == 2
    assert (stats.upstream_cx_destroy_remote.value, stats.upstream_cx_destroy_local.value) == (1, 1)
    assert stats.upstream_cx_destroy_with_active_rq.value == 1
