"""The cluster manager: validation of all clusters, lookup, warm-up and shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.stats.store import Store
from tulle.upstream import cluster as cluster_module
from tulle.upstream import dns
from tulle.upstream.cluster_manager import ClusterManager


def cluster(name: str, address: str = "10.0.0.1", **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": address, "port_value": 80}}}}]}]},
        **fields,
    }


def clusters_of(*clusters: dict[str, Any]):
    bootstrap = parse_message({"static_resources": {"clusters": list(clusters)}}, Bootstrap)
    return bootstrap.static_resources.clusters


def test_builds_every_cluster_and_looks_them_up():
    store = Store()
    cm = ClusterManager.from_protos(clusters_of(cluster("a"), cluster("b", "10.0.0.2", lb_policy="RANDOM")),
                                    field="static_resources.clusters", stats=store)
    assert sorted(cm.clusters) == ["a", "b"]
    assert cm.get("b").lb_policy == "RANDOM"
    assert cm.get("b").choose_host(None).ip == "10.0.0.2"
    assert cm.get("missing") is None
    assert store.gauges["cluster_manager.active_clusters"].value == 2
    assert store.counters["cluster_manager.cluster_added"].value == 2


def test_refusal_names_the_cluster_index():
    with pytest.raises(UnsupportedFeature) as caught:
        ClusterManager.from_protos(clusters_of(cluster("a"), cluster("b", outlier_detection={"monitors": [{}]})),
                                   stats=Store())
    assert caught.value.field == "static_resources.clusters[1].outlier_detection.monitors"


def test_duplicate_names_are_refused():
    with pytest.raises(ConfigError) as caught:
        ClusterManager.from_protos(clusters_of(cluster("a"), cluster("a")), stats=Store())
    assert caught.value.field == "static_resources.clusters[1].name"
    assert "duplicate" in str(caught.value)


def test_seed_makes_choices_reproducible():
    protos = clusters_of(cluster("a", lb_policy="RANDOM", load_assignment={"endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": f"10.0.0.{i}", "port_value": 80}}}}
        for i in range(1, 9)]}]}))
    first = ClusterManager.from_protos(protos, stats=Store(), seed=3).get("a")
    second = ClusterManager.from_protos(protos, stats=Store(), seed=3).get("a")
    assert [first.choose_host(None).ip for _ in range(30)] == [second.choose_host(None).ip for _ in range(30)]


def test_start_warms_dns_clusters_and_close_stops_and_closes_pools(monkeypatch):
    monkeypatch.setenv(dns.OVERRIDES_ENV, "service1=127.0.0.1")
    closed: list[str] = []

    class FakePool:
        def __init__(self, label: str) -> None:
            self.label = label

        async def close(self) -> None:
            closed.append(self.label)

    cm = ClusterManager.from_protos(
        clusters_of(cluster("static"), cluster("strict", "service1", type="STRICT_DNS", dns_refresh_rate="0.01s"),
                    cluster("logical", "service1", type="LOGICAL_DNS")),
        stats=Store(),
    )

    async def scenario() -> None:
        await cm.start()
        assert [host.address_str for host in cm.get("strict").hosts] == ["127.0.0.1:80"]
        assert [host.address_str for host in cm.get("logical").hosts] == ["127.0.0.1:80"]
        assert all(c.initialized for c in cm.clusters.values())
        cm.get("strict").hosts[0].pool = FakePool("strict")
        cm.get("static").hosts[0].pool = FakePool("static")
        await asyncio.sleep(0.05)  # let the refresh loop run a few rounds
        await cm.close()

    asyncio.run(scenario())
    assert sorted(closed) == ["static", "strict"]
    attempts = cm.get("strict").stats.update_attempt.value
    assert attempts >= 1
    asyncio.run(asyncio.sleep(0.03))  # nothing is left running after close
    assert cm.get("strict").stats.update_attempt.value == attempts


def test_warm_up_is_bounded_and_wait_for_warm_can_be_disabled(monkeypatch):
    release = None

    async def slow_resolve(name: str, family: str, **_: Any) -> list[str]:
        await release.wait()
        return ["127.0.0.1"]

    monkeypatch.setattr(cluster_module.dns, "resolve", slow_resolve)
    store = Store()
    cm = ClusterManager.from_protos(
        clusters_of(cluster("slow", "slow.local", type="STRICT_DNS"),
                    cluster("lazy", "lazy.local", type="STRICT_DNS", wait_for_warm_on_init=False)),
        stats=store,
    )
    store_gauge = store.gauges["cluster_manager.warming_clusters"]

    async def scenario() -> tuple[bool, int, list[str]]:
        nonlocal release
        release = asyncio.Event()
        await cm.start(warm_timeout=0.05)  # returns although DNS has not answered
        still_warming = not cm.get("slow").initialized
        warming = store_gauge.value
        release.set()
        for _ in range(200):
            if cm.get("slow").initialized and cm.get("lazy").initialized:
                break
            await asyncio.sleep(0.01)
        hosts = [host.ip for host in cm.get("slow").hosts + cm.get("lazy").hosts]
        await cm.close()
        return still_warming, warming, hosts

    still_warming, warming, hosts = asyncio.run(scenario())
    assert still_warming and warming == 2
    assert hosts == ["127.0.0.1", "127.0.0.1"]
    assert store_gauge.value == 0


def test_start_does_not_wait_for_an_eds_clusters_first_assignment():
    eds = {"name": "reviews", "type": "EDS", "connect_timeout": "1s",
           "eds_cluster_config": {"eds_config": {"ads": {}}}}
    cm = ClusterManager.from_protos(clusters_of(eds), stats=Store())

    async def scenario() -> bool:
        # the assignment comes over ADS, which opens after start: waiting would only cost warm_timeout
        await asyncio.wait_for(cm.start(warm_timeout=3600), 30)
        warming = not cm.get("reviews").initialized
        await cm.close()
        return warming

    assert asyncio.run(scenario())
