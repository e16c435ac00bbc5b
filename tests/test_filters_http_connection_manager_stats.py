"""HcmStats: the connection manager's ``http.<stat_prefix>.*`` stats, bound to the store by name."""

from __future__ import annotations

import pytest

from tulle.filters.network.http_connection_manager import config
from tulle.filters.network.http_connection_manager.stats import HcmStats
from tulle.stats.store import Store


def test_every_stat_is_the_stores_stat_of_its_envoy_name() -> None:
    store = Store()
    stats = HcmStats(store, "ingress")
    for name in HcmStats.COUNTERS:
        assert getattr(stats, name) is store.counters[f"http.ingress.{name}"]
    for name in HcmStats.GAUGES:
        assert getattr(stats, name) is store.gauges[f"http.ingress.{name}"]
    for name in HcmStats.HISTOGRAMS:
        assert getattr(stats, name) is store.histograms[f"http.ingress.{name}"]


def test_counting_through_the_attributes_shows_in_the_store() -> None:
    store = Store()
    stats = HcmStats(store, "ingress")
    stats.downstream_rq_total.value += 2
    stats.downstream_rq_active.value += 1
    stats.downstream_rq_time.record(3.0)
    assert store.counters["http.ingress.downstream_rq_total"].value == 2
    assert store.gauges["http.ingress.downstream_rq_active"].value == 1
    assert store.histograms["http.ingress.downstream_rq_time"].count == 1


def test_responses_by_class_are_indexed_by_status_hundreds_with_5xx_at_zero() -> None:
    store = Store()
    stats = HcmStats(store, "egress")
    assert [counter.name for counter in stats.rq_by_class] == [
        "http.egress.downstream_rq_5xx", "http.egress.downstream_rq_1xx", "http.egress.downstream_rq_2xx",
        "http.egress.downstream_rq_3xx", "http.egress.downstream_rq_4xx", "http.egress.downstream_rq_5xx"]
    assert stats.rq_by_class[0] is stats.rq_by_class[5]


def test_the_config_module_still_names_the_class() -> None:
    assert config.HcmStats is HcmStats


def test_a_stat_that_is_not_one_of_its_names_is_refused() -> None:
    stats = HcmStats(Store(), "ingress")
    with pytest.raises(AttributeError):
        stats.no_such_stat = 1  # type: ignore[attr-defined]


def test_the_loaded_module_is_the_compiled_one_unless_pure_python_is_requested() -> None:
    from tulle import compiled

    assert "tulle.filters.network.http_connection_manager.stats" in compiled.MODULES
    assert compiled.is_compiled("tulle.filters.network.http_connection_manager.stats") == (not compiled.pure_python_requested())
