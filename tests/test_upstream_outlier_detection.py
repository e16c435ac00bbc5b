"""Outlier detection: config, consecutive errors, ejection time and back-off, rate algorithms,
the cluster's load balancing around ejected hosts, and a real proxy ejecting a failing backend."""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster as ClusterProto
from envoy.config.cluster.v3.outlier_detection_pb2 import OutlierDetection

from backends import BackendConnection, RawBackend, echo_backend, encode_response, get, http_proxy, wait_until
from proxy_harness import ProxyProcess, free_port, simple_route, static_cluster
from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.stats.store import Store
from tulle.upstream.cluster import build_cluster
from tulle.upstream.cluster_stats import OutlierDetectionStats
from tulle.upstream.host import FAILED_OUTLIER_CHECK, NO_OUTLIER_MONITOR, Host
from tulle.upstream.outlier_detection import (
    OutlierDetectionConfig,
    OutlierDetector,
    parse_outlier_detection,
)

PREFIX = "cluster.svc.outlier_detection."


def parse(data: dict[str, Any]) -> OutlierDetectionConfig:
    return parse_outlier_detection(parse_message(data, OutlierDetection), "clusters[0].outlier_detection")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A detector over ``count`` hosts with a fake clock, counting load-balancer rebuilds."""

    def __init__(self, count: int = 3, **config: Any) -> None:
        self.store = Store()
        self.clock = Clock()
        self.changes = 0
        self.config = OutlierDetectionConfig(**config)
        self.detector = OutlierDetector(
            self.config, OutlierDetectionStats(self.store, "svc"), self._changed, rng=random.Random(1),
            clock=self.clock,
        )
        self.hosts = [Host(f"10.0.0.{i + 1}", 80) for i in range(count)]
        for host in self.hosts:
            self.detector.add_host(host)

    def _changed(self) -> None:
        self.changes += 1

    def counter(self, name: str) -> int:
        return self.store.counters[PREFIX + name].value

    def active(self) -> int:
        return self.store.gauges[PREFIX + "ejections_active"].value

    def sweep_at(self, seconds_later: float) -> None:
        self.clock.now += seconds_later
        self.detector.sweep()


# --- configuration ----------------------------------------------------------------


def test_defaults_are_envoys():
    config = parse({})
    assert (config.interval, config.base_ejection_time, config.max_ejection_time) == (10.0, 30.0, 300.0)
    assert (config.consecutive_5xx, config.consecutive_gateway_failure, config.max_ejection_percent) == (5, 5, 10)
    assert (config.enforcing_consecutive_5xx, config.enforcing_consecutive_gateway_failure) == (100, 0)
    assert (config.enforcing_success_rate, config.enforcing_failure_percentage) == (100, 0)
    assert (config.success_rate_minimum_hosts, config.success_rate_request_volume) == (5, 100)
    assert config.success_rate_stdev_factor == 1900
    assert config.successful_active_health_check_uneject_host and not config.split_external_local_origin_errors


def test_settings_are_read():
    config = parse({
        "consecutive_5xx": 3, "interval": "0.5s", "base_ejection_time": "2s", "max_ejection_time": "5s",
        "max_ejection_time_jitter": "0.25s", "max_ejection_percent": 50, "enforcing_consecutive_gateway_failure": 40,
        "split_external_local_origin_errors": True, "consecutive_local_origin_failure": 2,
        "always_eject_one_host": True, "successful_active_health_check_uneject_host": False,
    })
    assert (config.consecutive_5xx, config.interval, config.base_ejection_time) == (3, 0.5, 2.0)
    assert (config.max_ejection_time, config.max_ejection_time_jitter_ms) == (5.0, 250)
    assert (config.max_ejection_percent, config.enforcing_consecutive_gateway_failure) == (50, 40)
    assert config.split_external_local_origin_errors and config.consecutive_local_origin_failure == 2
    assert config.always_eject_one_host and not config.successful_active_health_check_uneject_host


def test_unset_max_ejection_time_follows_a_larger_base():
    assert parse({"base_ejection_time": "600s"}).max_ejection_time == 600.0


@pytest.mark.parametrize(("data", "field", "message"), [
    ({"max_ejection_percent": 101}, "max_ejection_percent.value", "at most 100"),
    ({"enforcing_success_rate": 150}, "enforcing_success_rate.value", "at most 100"),
    ({"failure_percentage_threshold": 101}, "failure_percentage_threshold.value", "at most 100"),
    ({"interval": "0s"}, "interval", "greater than 0s"),
    ({"base_ejection_time": "10s", "max_ejection_time": "5s"}, "max_ejection_time", "cannot be smaller"),
])
def test_invalid_settings_name_their_field(data, field, message):
    with pytest.raises(ConfigError, match=message) as caught:
        parse(data)
    assert caught.value.field == f"clusters[0].outlier_detection.{field}"


def test_monitor_extensions_are_refused():
    with pytest.raises(UnsupportedFeature) as caught:
        parse({"monitors": [{"name": "custom"}]})
    assert caught.value.field == "clusters[0].outlier_detection.monitors"


# --- consecutive errors -----------------------------------------------------------


def test_consecutive_5xx_ejects_and_counts_envoys_stats():
    harness = Harness(consecutive_5xx=3, max_ejection_percent=50)
    bad = harness.hosts[0]
    for _ in range(2):
        bad.outlier.put_http_status(500)
    assert not bad.failed_outlier_check and harness.changes == 0
    bad.outlier.put_http_status(500)
    assert bad.failed_outlier_check and not bad.healthy and bad.health_flags == FAILED_OUTLIER_CHECK
    assert harness.changes == 1 and harness.active() == 1
    for name in ("ejections_detected_consecutive_5xx", "ejections_enforced_consecutive_5xx",
                 "ejections_enforced_total", "ejections_total", "ejections_consecutive_5xx"):
        assert harness.counter(name) == 1, name


def test_a_success_resets_the_run_of_errors():
    harness = Harness(consecutive_5xx=3, max_ejection_percent=100)
    host = harness.hosts[0]
    for status in (503, 503, 200, 503, 503):
        host.outlier.put_http_status(status)
    assert not host.failed_outlier_check
    host.outlier.put_http_status(503)
    assert host.failed_outlier_check


def test_gateway_failures_are_detected_but_not_enforced_by_default():
    harness = Harness(consecutive_gateway_failure=2, consecutive_5xx=10, max_ejection_percent=100)
    host = harness.hosts[0]
    host.outlier.put_http_status(502)
    host.outlier.put_http_status(504)
    assert harness.counter("ejections_detected_consecutive_gateway_failure") == 1
    assert harness.counter("ejections_enforced_consecutive_gateway_failure") == 0
    assert not host.failed_outlier_check and harness.active() == 0
    # a 500 is a 5xx but not a gateway failure: it breaks the gateway run
    enforced = Harness(consecutive_gateway_failure=2, enforcing_consecutive_gateway_failure=100,
                       max_ejection_percent=100)
    target = enforced.hosts[1]
    for status in (502, 500, 503):
        target.outlier.put_http_status(status)
    assert not target.failed_outlier_check
    target.outlier.put_http_status(503)
    assert target.failed_outlier_check
    assert enforced.counter("ejections_enforced_consecutive_gateway_failure") == 1


def test_max_ejection_percent_overflows_unless_one_host_is_always_ejected():
    harness = Harness(consecutive_5xx=1)  # 10%: ejecting one host of three would be 33%
    harness.hosts[0].outlier.put_http_status(500)
    assert not harness.hosts[0].failed_outlier_check
    assert harness.counter("ejections_overflow") == 1 and harness.counter("ejections_detected_consecutive_5xx") == 1
    always = Harness(consecutive_5xx=1, always_eject_one_host=True)
    always.hosts[0].outlier.put_http_status(500)
    always.hosts[1].outlier.put_http_status(500)
    assert always.hosts[0].failed_outlier_check and not always.hosts[1].failed_outlier_check
    assert always.counter("ejections_overflow") == 1


def test_the_default_max_ejection_percent_binds_the_first_ejection_too():
    # Envoy >= 1.28 (check_mep_on_first_eject): 1 host of 10 is 10 %, within the default; 1 of 9 is not
    ten = Harness(count=10, consecutive_5xx=1)
    ten.hosts[0].outlier.put_http_status(500)
    assert ten.hosts[0].failed_outlier_check and ten.active() == 1
    nine = Harness(count=9, consecutive_5xx=1)
    nine.hosts[0].outlier.put_http_status(500)
    assert not nine.hosts[0].failed_outlier_check and nine.active() == 0
    assert nine.counter("ejections_overflow") == 1


def test_enforcement_percentage_zero_never_ejects():
    harness = Harness(consecutive_5xx=1, enforcing_consecutive_5xx=0, max_ejection_percent=100)
    harness.hosts[0].outlier.put_http_status(500)
    assert not harness.hosts[0].failed_outlier_check
    assert harness.counter("ejections_detected_consecutive_5xx") == 1
    assert harness.counter("ejections_total") == 1 and harness.counter("ejections_enforced_total") == 0


def test_local_origin_failures_count_as_503_without_the_split():
    harness = Harness(consecutive_5xx=2, consecutive_gateway_failure=2, max_ejection_percent=100)
    host = harness.hosts[0]
    host.outlier.put_connect_success()  # an HTTP connect is no result of its own
    host.outlier.put_local_origin_failure()
    host.outlier.put_local_origin_failure()
    assert host.failed_outlier_check
    assert harness.counter("ejections_detected_consecutive_gateway_failure") == 1
    other = harness.hosts[1]
    other.outlier.put_local_origin_failure()
    other.outlier.put_connect_success_final()  # a finished TCP connect is a 200
    other.outlier.put_local_origin_failure()
    assert not other.failed_outlier_check


def test_split_keeps_local_origin_failures_apart():
    harness = Harness(split_external_local_origin_errors=True, consecutive_5xx=2,
                      consecutive_local_origin_failure=3, max_ejection_percent=100)
    host = harness.hosts[0]
    for _ in range(2):
        host.outlier.put_local_origin_failure()
    host.outlier.put_connect_success()  # resets the local-origin run
    for _ in range(2):
        host.outlier.put_local_origin_failure()
    assert not host.failed_outlier_check and host.outlier.consecutive_5xx == 0
    host.outlier.put_local_origin_failure()
    assert host.failed_outlier_check
    assert harness.counter("ejections_enforced_consecutive_local_origin_failure") == 1
    assert harness.counter("ejections_total") == 0  # Envoy counts only 5xx and success-rate ejections there


# --- ejection time ----------------------------------------------------------------


def test_ejection_time_grows_with_each_ejection_and_is_capped():
    harness = Harness(consecutive_5xx=1, max_ejection_percent=100, base_ejection_time=10.0, max_ejection_time=25.0,
                      interval=1.0)
    host = harness.hosts[0]
    durations = []
    for _ in range(4):
        host.outlier.put_http_status(500)
        assert host.failed_outlier_check
        out_for = 0
        while host.failed_outlier_check:
            harness.sweep_at(1.0)
            out_for += 1
        durations.append(out_for)
    assert durations == [10, 20, 25, 25]
    assert host.outlier.num_ejections == 4 and harness.active() == 0


def test_back_off_decays_while_the_host_stays_in():
    harness = Harness(consecutive_5xx=1, max_ejection_percent=100, base_ejection_time=10.0, interval=1.0)
    host = harness.hosts[0]
    host.outlier.put_http_status(500)
    harness.sweep_at(10.0)
    assert not host.failed_outlier_check and host.outlier.eject_time_backoff == 1
    harness.sweep_at(1.0)  # one full interval back in service
    assert host.outlier.eject_time_backoff == 0
    host.outlier.put_http_status(500)
    harness.sweep_at(9.0)
    assert host.failed_outlier_check
    harness.sweep_at(1.0)
    assert not host.failed_outlier_check  # base time again, not twice the base


def test_unejection_resets_the_counters_and_rebuilds_once_per_sweep():
    harness = Harness(consecutive_5xx=3, max_ejection_percent=100, base_ejection_time=5.0)
    for host in harness.hosts[:2]:
        for _ in range(3):
            host.outlier.put_http_status(500)
    assert harness.changes == 2 and harness.active() == 2
    harness.hosts[0].outlier.consecutive_5xx = 2
    harness.sweep_at(5.0)
    assert harness.changes == 3  # both came back: one rebuild
    assert harness.active() == 0 and harness.hosts[0].outlier.consecutive_5xx == 0


def test_passing_active_health_check_unejects():
    harness = Harness(consecutive_5xx=1, max_ejection_percent=100)
    host = harness.hosts[0]
    host.outlier.put_http_status(500)
    harness.detector.on_active_health_check_success(host)
    assert not host.failed_outlier_check and harness.active() == 0
    off = Harness(consecutive_5xx=1, max_ejection_percent=100, successful_active_health_check_uneject_host=False)
    off.hosts[0].outlier.put_http_status(500)
    off.detector.on_active_health_check_success(off.hosts[0])
    assert off.hosts[0].failed_outlier_check


def test_removed_host_leaves_the_active_count_and_reports_nowhere():
    harness = Harness(consecutive_5xx=1, max_ejection_percent=100)
    host = harness.hosts[0]
    monitor = host.outlier
    host.outlier.put_http_status(500)
    harness.detector.remove_host(host)
    assert harness.active() == 0 and host.outlier is NO_OUTLIER_MONITOR
    monitor.put_http_status(500)  # a request still in flight on the removed host
    assert harness.counter("ejections_detected_consecutive_5xx") == 1


# --- success rate and failure percentage -----------------------------------------


def feed(host: Host, successes: int, failures: int) -> None:
    for _ in range(successes):
        host.outlier.put_http_status(200)
    for _ in range(failures):
        host.outlier.put_http_status(500)


def test_success_rate_ejects_the_outlier_of_the_last_interval():
    harness = Harness(count=5, max_ejection_percent=100, consecutive_5xx=1000, success_rate_request_volume=20,
                      success_rate_stdev_factor=1000)
    for host in harness.hosts[:4]:
        feed(host, 20, 0)
    feed(harness.hosts[4], 10, 10)
    harness.sweep_at(10.0)
    assert harness.hosts[4].failed_outlier_check
    assert [host.failed_outlier_check for host in harness.hosts[:4]] == [False] * 4
    assert harness.counter("ejections_detected_success_rate") == 1
    assert harness.counter("ejections_enforced_success_rate") == 1 and harness.counter("ejections_success_rate") == 1
    assert harness.hosts[0].outlier.success_rate == 100.0
    harness.sweep_at(10.0)  # no traffic in the last interval: no rate to print
    assert harness.hosts[0].outlier.success_rate == -1.0


def test_success_rate_needs_enough_hosts_with_enough_requests():
    harness = Harness(count=5, max_ejection_percent=100, consecutive_5xx=1000, success_rate_request_volume=20)
    for host in harness.hosts[:3]:
        feed(host, 20, 0)
    feed(harness.hosts[4], 0, 20)
    harness.sweep_at(10.0)
    assert not any(host.failed_outlier_check for host in harness.hosts)


def test_failure_percentage_ejects_when_enforced():
    harness = Harness(count=5, max_ejection_percent=100, consecutive_5xx=1000, failure_percentage_request_volume=10,
                      failure_percentage_threshold=50, enforcing_failure_percentage=100, enforcing_success_rate=0)
    for host in harness.hosts[:4]:
        feed(host, 10, 0)
    feed(harness.hosts[4], 4, 6)
    harness.sweep_at(10.0)
    assert harness.hosts[4].failed_outlier_check
    assert harness.counter("ejections_enforced_failure_percentage") == 1


def test_local_origin_rates_use_their_own_window():
    harness = Harness(count=5, max_ejection_percent=100, split_external_local_origin_errors=True,
                      consecutive_local_origin_failure=1000, failure_percentage_request_volume=10,
                      enforcing_failure_percentage_local_origin=100, enforcing_local_origin_success_rate=0)
    for host in harness.hosts[:4]:
        for _ in range(10):
            host.outlier.put_connect_success()
    for _ in range(10):
        harness.hosts[4].outlier.put_local_origin_failure()
    harness.sweep_at(10.0)
    assert harness.hosts[4].failed_outlier_check
    assert harness.counter("ejections_enforced_local_origin_failure_percentage") == 1
    assert harness.hosts[0].outlier.local_origin_success_rate == 100.0


# --- the cluster around it ------------------------------------------------------------


def cluster_with(outlier: dict[str, Any], count: int = 3, **fields: Any):
    endpoints = [{"endpoint": {"address": {"socket_address": {"address": f"10.0.0.{i + 1}", "port_value": 80}}}}
                 for i in range(count)]
    data = {"name": "svc", "load_assignment": {"cluster_name": "svc", "endpoints": [{"lb_endpoints": endpoints}]},
            "outlier_detection": outlier, **fields}
    store = Store()
    return build_cluster(parse_message(data, ClusterProto), "clusters[0]", store, random.Random(3)), store


def test_cluster_load_balances_around_ejected_hosts():
    cluster, store = cluster_with({"consecutive_5xx": 2, "max_ejection_percent": 100})
    bad = cluster.hosts[0]
    assert bad.outlier is not NO_OUTLIER_MONITOR
    bad.outlier.put_http_status(503)
    bad.outlier.put_http_status(503)
    assert {cluster.choose_host(None).ip for _ in range(30)} == {"10.0.0.2", "10.0.0.3"}
    assert store.gauges["cluster.svc.membership_healthy"].value == 2


def test_panic_threshold_still_applies_to_ejections():
    cluster, store = cluster_with({"consecutive_5xx": 1, "max_ejection_percent": 100})
    for host in cluster.hosts[:2]:
        host.outlier.put_http_status(500)
    picked = {cluster.choose_host(None).ip for _ in range(60)}
    assert picked == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}  # 33% healthy < 50%: panic uses every host
    assert store.counters["cluster.svc.lb_healthy_panic"].value == 60


def test_clusters_without_outlier_detection_report_into_a_no_op():
    data = {"name": "plain", "load_assignment": {"cluster_name": "plain", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}}}}]}]}}
    store = Store()
    cluster = build_cluster(parse_message(data, ClusterProto), "clusters[0]", store)
    host = cluster.hosts[0]
    assert host.outlier is NO_OUTLIER_MONITOR
    for _ in range(10):
        host.outlier.put_http_status(500)
        host.outlier.put_local_origin_failure()
    assert host.healthy and not any("outlier_detection" in name for name in store.counters)


# --- a real proxy ---------------------------------------------------------------------


class Switchable:
    """A keep-alive backend answering 503 while ``failing`` is set, 200 otherwise."""

    def __init__(self) -> None:
        self.failing = threading.Event()
        self.failing.set()
        self.backend = RawBackend(self._serve)

    def _serve(self, conn: BackendConnection) -> None:
        while conn.read_request() is not None:
            status = 503 if self.failing.is_set() else 200
            conn.sock.sendall(encode_response(status, [("x-served-by", "switchable")], b"switchable"))


def host_flags(proxy: ProxyProcess, port: int) -> str:
    """The host's health_flags line of the text /clusters."""
    marker = f":{port}::health_flags::"
    for line in proxy.admin("GET", "/clusters")[1].splitlines():
        if marker in line:
            return line.split(marker, 1)[1]
    return ""


@pytest.mark.integration
def test_proxy_ejects_a_failing_backend_and_takes_it_back(tmp_path: Path):
    switchable = Switchable()
    # the ejection must outlast the checks that follow it, however loaded the machine
    outlier = {"consecutive_5xx": 3, "interval": "0.1s", "base_ejection_time": "3s", "max_ejection_percent": 50}
    with switchable.backend, echo_backend("a") as port_a, echo_backend("b") as port_b:
        bad_port = switchable.backend.port
        cluster = static_cluster("svc", [port_a, port_b, bad_port], outlier_detection=outlier)
        with http_proxy(tmp_path, simple_route("svc"), [cluster]) as (proxy, port):
            statuses = [get(port, "/").status for _ in range(9)]  # round robin: three 503s from the bad one
            assert statuses.count(503) == 3
            assert host_flags(proxy, bad_port) == "/failed_outlier_check"
            assert all(get(port, "/").status == 200 for _ in range(6))
            stats = proxy.stats()
            assert stats[PREFIX + "ejections_enforced_total"] == 1
            assert stats[PREFIX + "ejections_enforced_consecutive_5xx"] == 1
            assert stats[PREFIX + "ejections_active"] == 1
            switchable.failing.clear()
            assert wait_until(lambda: host_flags(proxy, bad_port) == "healthy")
            assert proxy.stats()[PREFIX + "ejections_active"] == 0
            served = {get(port, "/").header("x-served-by") for _ in range(6)}
            assert "switchable" in served


def tcp_proxy_bootstrap(listen_port: int, cluster: dict[str, Any]) -> dict[str, Any]:
    return {"static_resources": {"clusters": [cluster], "listeners": [{
        "name": "tcp", "address": {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.tcp_proxy", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": "tcp", "cluster": cluster["name"]}}]}],
    }]}}


def tcp_round_trip(port: int) -> bytes:
    """An HTTP request through the tcp_proxy; b"" when the proxy closed without an answer."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return b"".join(chunks)


@pytest.mark.integration
def test_tcp_proxy_connect_failures_eject_the_host(tmp_path: Path):
    closed_port = free_port()
    outlier = {"consecutive_5xx": 2, "interval": "5s", "max_ejection_percent": 50}
    with echo_backend("up") as live_port:
        cluster = static_cluster("svc", [live_port, closed_port], outlier_detection=outlier)
        listen_port = free_port()
        with ProxyProcess(tcp_proxy_bootstrap(listen_port, cluster), tmp_path) as proxy:
            answers = [tcp_round_trip(listen_port) for _ in range(4)]  # alternate: two refused connects
            assert sum(1 for answer in answers if answer == b"") == 2
            assert host_flags(proxy, closed_port) == "/failed_outlier_check"
            assert all(tcp_round_trip(listen_port).startswith(b"HTTP/1.1 200") for _ in range(4))
            assert proxy.stats()[PREFIX + "ejections_enforced_consecutive_5xx"] == 1
