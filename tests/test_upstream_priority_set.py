"""Priorities and localities across the cluster layer: how STATIC, STRICT_DNS and EDS clusters group
their hosts for the balancer (and regroup on updates), the endpoint health check port, and real
proxies failing traffic over between localities and priorities on active health checks and outlier
ejection, then taking it back."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster as ClusterProto
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from backends import BackendConnection, RawBackend, encode_response, get, http_proxy, wait_until
from proxy_harness import free_port, simple_route
from tulle.config.errors import ConfigError
from tulle.config.loader import parse_message
from tulle.samples.echo_server import start_in_thread
from tulle.stats.store import Store
from tulle.upstream import dns
from tulle.upstream.cluster import Cluster, EdsCluster, build_cluster
from tulle.upstream.host import Locality


def locality(zone: str, addresses: list[tuple[str, int]], *, priority: int = 0, weight: int | None = 1,
             region: str = "r", health_status: str = "UNKNOWN", **endpoint: Any) -> dict[str, Any]:
    """One LocalityLbEndpoints; ``weight=None`` leaves load_balancing_weight out, ``zone=""`` the locality."""
    entry: dict[str, Any] = {"priority": priority, "lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}, **endpoint},
         "health_status": health_status}
        for address, port in addresses]}
    if zone:
        entry["locality"] = {"region": region, "zone": zone}
    if weight is not None:
        entry["load_balancing_weight"] = weight
    return entry


def cluster_data(localities: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    return {"name": "svc", "connect_timeout": "1s", "common_lb_config": {"locality_weighted_lb_config": {}},
            "load_assignment": {"cluster_name": "svc", "endpoints": localities}, **fields}


def build(data: dict[str, Any], store: Store | None = None) -> Cluster:
    return build_cluster(parse_message(data, ClusterProto), "clusters[0]", store or Store(), random.Random(3))


def zone_shares(cluster: Cluster, picks: int) -> dict[str, float]:
    zones = Counter(cluster.choose_host(None).locality.zone for _ in range(picks))
    return {zone: count / picks for zone, count in zones.items()}


# --- grouping per discovery type ----------------------------------------------------------------


def test_static_cluster_groups_priorities_and_weighs_localities():
    cluster = build(cluster_data([
        locality("zone-1", [("10.0.0.1", 80), ("10.0.0.2", 80)], weight=1),
        locality("zone-2", [("10.0.0.3", 80)], weight=3),
        locality("zone-3", [("10.0.1.1", 80)], priority=1),
        locality("", [("10.0.1.2", 80)], priority=1, weight=7),  # a weight without a locality counts as 0
    ]))
    assert [len(hosts) for hosts in cluster.hosts_per_priority] == [3, 2]
    assert [host.locality_weight for host in cluster.hosts] == [1, 1, 3, 1, 0]
    assert cluster.hosts[0].locality == Locality("r", "zone-1")
    # by locality weight, not host count (which would give zone-1 two thirds); whole EDF cycles: exact
    assert zone_shares(cluster, 400) == {"zone-1": 0.25, "zone-2": 0.75}
    assert Counter(cluster.choose_host(None).ip for _ in range(400))["10.0.0.1"] == 50  # RR inside zone-1


def test_endpoint_health_check_port_is_parsed_and_bounded():
    cluster = build(cluster_data([locality("z", [("10.0.0.1", 80)], health_check_config={"port_value": 9000})]))
    assert cluster.hosts[0].health_check_port == 9000 and cluster.hosts[0].port == 80
    with pytest.raises(ConfigError) as caught:
        build(cluster_data([locality("z", [("10.0.0.1", 80)], health_check_config={"port_value": 70000})]))
    assert caught.value.field == (
        "clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.health_check_config.port_value")


def test_strict_dns_hosts_keep_priority_locality_and_eds_health(monkeypatch):
    monkeypatch.setenv(dns.OVERRIDES_ENV, "local=127.0.0.1,127.0.0.2;remote=127.0.0.3")
    cluster = build(cluster_data(
        [locality("zone-1", [("local", 80)], health_status="UNHEALTHY"),
         locality("zone-2", [("remote", 80)], priority=1, weight=3)],
        type="STRICT_DNS",
    ))
    asyncio.run(cluster.initialize())
    assert [[host.ip for host in hosts] for hosts in cluster.hosts_per_priority] == [
        ["127.0.0.1", "127.0.0.2"], ["127.0.0.3"]]
    assert [host.locality.zone for host in cluster.hosts] == ["zone-1", "zone-1", "zone-2"]
    assert cluster.hosts[2].locality_weight == 3
    assert zone_shares(cluster, 50) == {"zone-2": 1.0}  # P0 is down by its EDS health status


def eds_assignment(*localities: dict[str, Any]) -> ClusterLoadAssignment:
    return parse_message({"cluster_name": "svc", "endpoints": list(localities)}, ClusterLoadAssignment)


def test_eds_updates_regroup_priorities_and_localities():
    data = {"name": "svc", "type": "EDS", "eds_cluster_config": {"eds_config": {"ads": {}}},
            "common_lb_config": {"locality_weighted_lb_config": {}}}
    cluster = build(data)
    assert isinstance(cluster, EdsCluster)
    cluster.apply_assignment(eds_assignment(
        locality("a", [("10.0.0.1", 80)]), locality("b", [("10.0.0.2", 80)]),
        locality("c", [("10.0.0.3", 80)], priority=1)))
    assert zone_shares(cluster, 200) == {"a": 0.5, "b": 0.5}
    moved = next(host for host in cluster.hosts if host.ip == "10.0.0.2")

    # a is down (EDS health), b moved to P1: P0 has nothing healthy and P1 (b and c) takes it all
    cluster.apply_assignment(eds_assignment(
        locality("a", [("10.0.0.1", 80)], weight=3, health_status="UNHEALTHY"),
        locality("b", [("10.0.0.2", 80)], priority=1), locality("c", [("10.0.0.3", 80)], priority=1)))
    assert [len(hosts) for hosts in cluster.hosts_per_priority] == [1, 2]
    assert next(host for host in cluster.hosts if host.ip == "10.0.0.2") is moved  # same Host, regrouped
    assert zone_shares(cluster, 200) == {"b": 0.5, "c": 0.5}

    # a is back with weight 3 next to b (weight 1) in P0; b's checks move to another port
    cluster.apply_assignment(eds_assignment(
        locality("a", [("10.0.0.1", 80)], weight=3),
        locality("b", [("10.0.0.2", 80)], health_check_config={"port_value": 8081}),
        locality("c", [("10.0.0.3", 80)], priority=1)))
    assert zone_shares(cluster, 400) == {"a": 0.75, "b": 0.25}
    assert moved.priority == 0 and moved.health_check_port == 8081


def test_active_checks_go_to_the_endpoint_health_check_port():
    async def scenario() -> None:
        checked = start_in_thread("health")
        try:
            # a timeout long enough never to fail a check of a live port, however loaded the machine
            health_check = {"timeout": "10s", "interval": "0.05s", "unhealthy_threshold": 1, "healthy_threshold": 1,
                            "http_health_check": {"path": "/"}}
            closed = free_port()
            cluster = build(cluster_data(
                [locality("a", [("127.0.0.1", closed)], health_check_config={"port_value": checked.server_port}),
                 locality("b", [("127.0.0.1", free_port())])],
                health_checks=[health_check]))
            await cluster.initialize()
            # the first host's serving port is closed but its checks go to the live port
            assert [host.healthy for host in cluster.hosts] == [True, False]
            await cluster.close()
        finally:
            checked.shutdown()
            checked.server_close()

    asyncio.run(scenario())


# --- real proxies -------------------------------------------------------------------------------


class Switchable:
    """A keep-alive backend answering 503 to everything while ``failing`` is set (the Envoy sandbox's
    ``/unhealthy`` switch), 200 otherwise; ``x-served-by`` names it. One write per response, so no
    Nagle/delayed-ACK stall per request as with http.server's two writes."""

    def __init__(self, name: str, failing: bool = False) -> None:
        self.name = name
        self.failing = threading.Event()
        if failing:
            self.failing.set()
        self.backend = RawBackend(self._serve)

    def _serve(self, conn: BackendConnection) -> None:
        while conn.read_request() is not None:
            status = 503 if self.failing.is_set() else 200
            conn.sock.sendall(encode_response(status, [("x-served-by", self.name)], self.name.encode()))


def served_by(port: int, requests: int) -> Counter[str]:
    return Counter(get(port, "/").header("x-served-by") or "" for _ in range(requests))


def clusters_lines(proxy: Any, port: int) -> dict[str, str]:
    """``/clusters`` text lines of the host on ``port``: {field: value}."""
    marker = f":{port}::"
    lines = {}
    for line in proxy.admin("GET", "/clusters")[1].splitlines():
        if marker in line:
            key, _, value = line.split(marker, 1)[1].partition("::")
            lines[key] = value
    return lines


def health_flags(proxy: Any, port: int) -> str:
    return clusters_lines(proxy, port).get("health_flags", "")


@pytest.mark.integration
def test_proxy_fails_over_between_localities_and_priorities_on_health_checks(tmp_path: Path):
    """P0: zone-a (weight 2, switchable "a") and zone-b (weight 1, echo "b"); P1: zone-c (echo "c")."""
    a, b, c = Switchable("a"), Switchable("b"), Switchable("c")
    # one failed check takes a host out: the timeout must never be what fails it, however loaded the machine
    health_check = {"timeout": "10s", "interval": "0.05s", "unhealthy_threshold": 1, "healthy_threshold": 1,
                    "http_health_check": {"path": "/"}}
    with a.backend, b.backend, c.backend:
        port_c = c.backend.port
        cluster = cluster_data([
            locality("zone-a", [("127.0.0.1", a.backend.port)], weight=2),
            locality("zone-b", [("127.0.0.1", b.backend.port)], weight=1),
            locality("zone-c", [("127.0.0.1", port_c)], priority=1, region="remote"),
        ], health_checks=[health_check])
        with http_proxy(tmp_path, simple_route("svc"), [cluster]) as (proxy, port):
            assert served_by(port, 30) == {"a": 20, "b": 10}  # EDF over localities, whole cycles
            lines = clusters_lines(proxy, port_c)
            locality_lines = (lines["region"], lines["zone"], lines["sub_zone"], lines["priority"])
            assert locality_lines == ("remote", "zone-c", "", "1")

            a.failing.set()  # zone-a down: P0 is 50% healthy -> 70% of traffic, all of it to zone-b
            assert wait_until(lambda: health_flags(proxy, a.backend.port) == "/failed_active_hc")
            shares = served_by(port, 200)
            assert shares["a"] == 0
            assert 0.55 < shares["b"] / 200 < 0.85 and shares["c"] > 0

            a.failing.clear()  # back: traffic returns to zone-a and leaves P1
            assert wait_until(lambda: health_flags(proxy, a.backend.port) == "healthy")
            assert served_by(port, 30) == {"a": 20, "b": 10}
            assert proxy.stats()["cluster.svc.lb_healthy_panic"] == 0


@pytest.mark.integration
def test_proxy_outlier_ejection_moves_a_priority_to_the_next_and_back(tmp_path: Path):
    local, remote = Switchable("local", failing=True), Switchable("remote")
    # the ejection must outlast the ten requests that check it, however loaded the machine
    outlier = {"consecutive_5xx": 2, "interval": "0.1s", "base_ejection_time": "3s",
               "max_ejection_percent": 100}
    with local.backend, remote.backend:
        cluster = cluster_data([
            locality("local", [("127.0.0.1", local.backend.port)]),
            locality("remote", [("127.0.0.1", remote.backend.port)], priority=1),
        ], outlier_detection=outlier)
        with http_proxy(tmp_path, simple_route("svc"), [cluster]) as (proxy, port):
            assert [get(port, "/").status for _ in range(2)] == [503, 503]  # P0 takes it all until ejected
            assert health_flags(proxy, local.backend.port) == "/failed_outlier_check"
            assert served_by(port, 10) == {"remote": 10}

            local.failing.clear()
            assert wait_until(lambda: health_flags(proxy, local.backend.port) == "healthy")
            assert served_by(port, 10) == {"local": 10}
