"""Envoy's xDS stats: names, types and how each event moves them."""

from __future__ import annotations

from tulle.stats.store import Store
from tulle.xds_client.stats import (
    ControlPlaneStats,
    EdsStats,
    RdsStats,
    SubscriptionStats,
    rds_prefix,
    version_hash,
)


def test_version_is_xxhash64_of_the_version_string_with_seed_0() -> None:
    assert version_hash("") == 0xEF46DB3751D8E999  # XXH64 of the empty input, seed 0
    assert version_hash("v1") != version_hash("v2")


def test_rds_prefix_replaces_colons_as_envoy_does() -> None:
    assert rds_prefix("outbound_0.0.0.0_9080", "reviews.default:9080") == \
        "http.outbound_0.0.0.0_9080.rds.reviews.default_9080."


def test_subscription_stats_are_envoys_names_and_types() -> None:
    store = Store()
    SubscriptionStats(store, "cluster_manager.cds.")
    assert {n for n in store.counters} == {f"cluster_manager.cds.{n}" for n in (
        "init_fetch_timeout", "update_attempt", "update_failure", "update_rejected", "update_success")}
    assert set(store.gauges) == {"cluster_manager.cds.update_time", "cluster_manager.cds.version"}
    assert set(store.histograms) == {"cluster_manager.cds.update_duration"}
    assert set(store.text_readouts) == {"cluster_manager.cds.version_text"}
    # only the process holding the stream sets them: never summed across workers
    assert not any(gauge.per_worker for gauge in store.gauges.values())


def test_each_event_moves_the_stats_as_envoys_grpc_subscription() -> None:
    store = Store()
    stats = SubscriptionStats(store, "listener_manager.lds.")
    stats.started()
    stats.accepted("l1", 3.0)
    stats.rejected()
    stats.failed()
    stats.timed_out()
    stats.accepted("l2", 1.0, attempt=False)  # delta counted its attempt before applying
    counters = {n.rsplit(".", 1)[1]: c.value for n, c in store.counters.items()}
    assert counters == {"init_fetch_timeout": 1, "update_attempt": 5, "update_failure": 1, "update_rejected": 1,
                        "update_success": 2}
    assert stats.version.value == version_hash("l2") and stats.version_text.value == "l2"
    assert stats.update_time.value > 0 and stats.update_duration.count == 2


def test_rds_eds_and_control_plane_stats() -> None:
    store = Store()
    rds = RdsStats(store, "http.ingress.rds.local.")
    rds.reloaded()
    assert store.counters["http.ingress.rds.local.config_reload"].value == 1
    assert store.gauges["http.ingress.rds.local.config_reload_time_ms"].value > 0
    assert "http.ingress.rds.local.update_empty" in store.counters
    EdsStats(store, "cluster.reviews.")
    assert "cluster.reviews.update_empty" in store.counters
    ControlPlaneStats(store)
    assert store.gauges["control_plane.connected_state"].value == 0
    assert "control_plane.rate_limit_enforced" in store.counters
    assert "control_plane.pending_requests" in store.gauges
    assert "control_plane.identifier" in store.text_readouts
