"""Clusters: STATIC build, connection options, refusals with field paths, DNS clusters."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster as ClusterProto
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.stats.store import Store
from tulle.upstream import dns
from tulle.upstream.cluster import (
    LOGICAL_DNS,
    STATIC,
    STRICT_DNS,
    Cluster,
    LogicalDnsCluster,
    StrictDnsCluster,
    build_cluster,
)
from tulle.upstream.host import FAILED_EDS_HEALTH
from tulle.upstream.load_balancer import LoadBalancerContext

HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def endpoint(address: str, port: int = 80, **extra: Any) -> dict[str, Any]:
    return {"endpoint": {"address": {"socket_address": {"address": address, "port_value": port}}}, **extra}


def cluster_dict(name: str = "backend", endpoints: list[dict[str, Any]] | None = None, **fields: Any) -> dict:
    lb_endpoints = endpoints if endpoints is not None else [endpoint("10.0.0.1"), endpoint("10.0.0.2")]
    return {
        "name": name,
        "connect_timeout": "0.25s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
        **fields,
    }


def build(data: dict[str, Any], store: Store | None = None) -> Cluster:
    return build_cluster(parse_message(data, ClusterProto), "static_resources.clusters[0]", store or Store(),
                         random.Random(5))


# --- STATIC ----------------------------------------------------------------------


def test_static_cluster_build_and_defaults():
    store = Store()
    cluster = build({"name": "plain", "load_assignment": {"cluster_name": "plain", "endpoints": [
        {"lb_endpoints": [endpoint("10.0.0.1", 8080)]}]}}, store)
    assert type(cluster) is Cluster
    assert (cluster.name, cluster.type_name, cluster.lb_policy) == ("plain", STATIC, "ROUND_ROBIN")
    assert cluster.connect_timeout == 5.0
    assert cluster.per_connection_buffer_limit_bytes == 1024 * 1024
    assert cluster.idle_timeout == 3600.0
    assert cluster.max_requests_per_connection is None
    assert [host.address_str for host in cluster.hosts] == ["10.0.0.1:8080"]
    assert cluster.choose_host(None) is cluster.hosts[0]
    assert cluster.initialized
    gauges = {name: gauge.value for name, gauge in store.gauges.items()}
    assert gauges["cluster.plain.membership_total"] == 1
    assert gauges["cluster.plain.membership_healthy"] == 1
    assert gauges["cluster.plain.max_host_weight"] == 1
    assert store.counters["cluster.plain.membership_change"].value == 1


def test_static_endpoints_carry_weight_priority_locality_health_and_hostname():
    data = cluster_dict(endpoints=[])
    data["load_assignment"]["endpoints"] = [
        {"locality": {"region": "eu", "zone": "eu-1", "sub_zone": "rack7"}, "load_balancing_weight": 3,
         "lb_endpoints": [
             {**endpoint("10.0.0.1"), "load_balancing_weight": 5},
             {"endpoint": {"address": {"socket_address": {"address": "10.0.0.2", "port_value": 81}},
                           "hostname": "two.local", "health_check_config": {}},
              "health_status": "UNHEALTHY"},
         ]},
        {"priority": 1, "lb_endpoints": [endpoint("::1", 82)]},
    ]
    store = Store()
    cluster = build(data, store)
    first, second, third = cluster.hosts
    assert (first.weight, first.priority, tuple(first.locality)) == (5, 0, ("eu", "eu-1", "rack7"))
    assert (second.hostname, second.healthy, second.health_flags) == ("two.local", False, FAILED_EDS_HEALTH)
    assert (third.address_str, third.priority) == ("[::1]:82", 1)
    assert [len(level) for level in cluster.hosts_per_priority] == [2, 1]
    assert store.gauges["cluster.backend.membership_healthy"].value == 2
    assert store.gauges["cluster.backend.max_host_weight"].value == 5


def test_alt_stat_name_names_the_stats():
    store = Store()
    cluster = build(cluster_dict(alt_stat_name="shown"), store)
    assert cluster.observability_name == "shown"
    assert "cluster.shown.upstream_rq_total" in store.counters
    assert "cluster.backend.upstream_rq_total" not in store.counters


def test_circuit_breakers_default_to_envoys_limits_and_take_the_configured_ones():
    store = Store()
    plain = build(cluster_dict("plain"), store)
    assert plain.circuit_breakers_status()["default"] == {
        "max_connections": 1024, "max_pending_requests": 1024, "max_requests": 1024, "max_retries": 3}
    limited = build(cluster_dict("limited", circuit_breakers={"thresholds": [
        {"max_connections": 1}, {"priority": "HIGH", "max_requests": 2}]}), store)
    assert limited.resource_manager.connections.limit == 1
    assert limited.resource_manager_for(1).requests.limit == 2
    assert "cluster.limited.circuit_breakers.high.rq_open" in store.gauges


def test_choose_host_uses_the_configured_policy():
    cluster = build(cluster_dict(lb_policy="MAGLEV", maglev_lb_config={"table_size": 307}))
    context = LoadBalancerContext(hash_key=123456789)
    assert cluster.lb_policy == "MAGLEV"
    assert len({cluster.choose_host(context) for _ in range(20)}) == 1


def test_typed_http_protocol_options():
    cluster = build(cluster_dict(
        per_connection_buffer_limit_bytes=32768,
        typed_extension_protocol_options={"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": HTTP_OPTIONS,
            "common_http_protocol_options": {"idle_timeout": "30s", "max_requests_per_connection": 100},
            "explicit_http_config": {"http_protocol_options": {}},
        }},
    ))
    assert (cluster.idle_timeout, cluster.max_requests_per_connection) == (30.0, 100)
    assert cluster.connect_timeout == 0.25
    assert cluster.per_connection_buffer_limit_bytes == 32768


def test_deprecated_cluster_level_protocol_options():
    cluster = build(cluster_dict(
        common_http_protocol_options={"idle_timeout": "0s"}, http_protocol_options={},
        max_requests_per_connection=7,
    ))
    assert cluster.idle_timeout is None  # 0 disables the idle timeout
    assert cluster.max_requests_per_connection == 7


def test_typed_and_deprecated_protocol_options_cannot_be_mixed():
    with pytest.raises(ConfigError) as caught:
        build(cluster_dict(
            max_requests_per_connection=7,
            typed_extension_protocol_options={"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": HTTP_OPTIONS, "explicit_http_config": {"http_protocol_options": {}}}},
        ))
    assert caught.value.field == "static_resources.clusters[0].max_requests_per_connection"


REFUSALS = [
    ({"transport_socket": {"name": "envoy.transport_sockets.tls"}}, "transport_socket"),
    ({"health_checks": [{"timeout": "1s", "interval": "1s", "unhealthy_threshold": 1, "healthy_threshold": 1,
                         "custom_health_check": {"name": "x"}}]}, "health_checks[0].custom_health_check"),
    ({"outlier_detection": {"monitors": [{"name": "custom"}]}}, "outlier_detection.monitors"),
    ({"circuit_breakers": {"thresholds": [{"max_connection_pools": 1}]}},
     "circuit_breakers.thresholds[0].max_connection_pools"),
    ({"circuit_breakers": {"per_host_thresholds": [{"max_requests": 1}]}},
     "circuit_breakers.per_host_thresholds[0].max_requests"),
    ({"http2_protocol_options": {"allow_connect": True}}, "http2_protocol_options.allow_connect"),
    ({"upstream_bind_config": {"source_address": {"address": "0.0.0.0", "port_value": 0}}}, "upstream_bind_config"),
    ({"lb_subset_config": {"fallback_policy": "ANY_ENDPOINT"}}, "lb_subset_config"),
    ({"common_lb_config": {"zone_aware_lb_config": {}}}, "common_lb_config.zone_aware_lb_config"),
    ({"dns_resolvers": [{"socket_address": {"address": "8.8.8.8", "port_value": 53}}]}, "dns_resolvers"),
    ({"typed_dns_resolver_config": {"name": "envoy.network.dns_resolver.cares"}}, "typed_dns_resolver_config"),
    ({"respect_dns_ttl": True}, "respect_dns_ttl"),
    ({"type": "ORIGINAL_DST"}, "type"),
    ({"type": "EDS", "eds_cluster_config": {"eds_config": {"path_config_source": {"path": "/x"}}}},
     "eds_cluster_config.eds_config.path_config_source"),
    ({"cluster_type": {"name": "envoy.clusters.aggregate"}}, "cluster_type"),
    ({"upstream_connection_options": {"set_local_interface_name_on_upstream_connections": True}},
     "upstream_connection_options.set_local_interface_name_on_upstream_connections"),
    ({"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": HTTP_OPTIONS, "explicit_http_config": {"http3_protocol_options": {}}}}},
     "typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions']"
     ".explicit_http_config.http3_protocol_options"),
    ({"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": HTTP_OPTIONS, "use_downstream_protocol_config": {"http2_protocol_options": {
            "allow_metadata": True}}}}},
     "typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions']"
     ".use_downstream_protocol_config.http2_protocol_options.allow_metadata"),
    ({"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": HTTP_OPTIONS, "auto_config": {}}}},
     "typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions'].auto_config"),
    ({"common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"}},
     "common_http_protocol_options.headers_with_underscores_action"),
    ({"http_protocol_options": {"header_key_format": {"proper_case_words": {}}}},
     "http_protocol_options.header_key_format"),
]


@pytest.mark.parametrize(("fields", "path"), REFUSALS, ids=[path for _, path in REFUSALS])
def test_unsupported_cluster_features_are_refused_with_their_path(fields, path):
    with pytest.raises(UnsupportedFeature) as caught:
        build(cluster_dict(**fields))
    assert caught.value.field == f"static_resources.clusters[0].{path}"
    assert "unsupported by Tulle" in str(caught.value)


def test_eds_cluster_needs_an_ads_config_source():
    with pytest.raises(UnsupportedFeature, match="other than ads"):
        build(cluster_dict(type="EDS", eds_cluster_config={"eds_config": {"resource_api_version": "V3"}}))
    with pytest.raises(ConfigError, match="only for clusters of type EDS"):
        build(cluster_dict(eds_cluster_config={"service_name": "x"}))


def test_eds_cluster_applies_assignments_and_keeps_surviving_hosts():
    data = cluster_dict(type="EDS", eds_cluster_config={"eds_config": {"ads": {}}, "service_name": "svc"})
    del data["load_assignment"]
    cluster = build(data)
    assert cluster.service_name == "svc" and not cluster.initialized and cluster.choose_host(None) is None

    def assignment(*endpoints):
        return parse_message({"cluster_name": "svc", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": ip, "port_value": port}}},
             "load_balancing_weight": weight} for ip, port, weight in endpoints]}]}, ClusterLoadAssignment)

    cluster.apply_assignment(assignment(("10.0.0.1", 80, 1), ("10.0.0.2", 80, 1)))
    assert cluster.initialized and len(cluster.hosts) == 2
    survivor = next(h for h in cluster.hosts if h.ip == "10.0.0.2")
    survivor.pool = object()  # stands for a live connection pool
    cluster.apply_assignment(assignment(("10.0.0.2", 80, 5), ("10.0.0.3", 80, 1)))
    assert {h.address_str for h in cluster.hosts} == {"10.0.0.2:80", "10.0.0.3:80"}
    kept = next(h for h in cluster.hosts if h.ip == "10.0.0.2")
    assert kept is survivor and kept.weight == 5 and kept.pool is not None
    assert cluster.stats.membership_total.value == 2
    with pytest.raises(ConfigError) as err:
        cluster.apply_assignment(assignment(("not-an-ip", 80, 1)))
    assert "malformed IP address" in str(err.value)
    assert {h.address_str for h in cluster.hosts} == {"10.0.0.2:80", "10.0.0.3:80"}  # unchanged


ENDPOINT_REFUSALS = [
    ({"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 80}},
                   "health_check_config": {"hostname": "checks.local"}}},
     "lb_endpoints[0].endpoint.health_check_config.hostname"),
    ({"endpoint": {"address": {"socket_address": {"address": "10.0.0.1", "port_value": 80, "protocol": "UDP"}}}},
     "lb_endpoints[0].endpoint.address.socket_address.protocol"),
    ({"endpoint": {"address": {"pipe": {"path": "/tmp/sock"}}}}, "lb_endpoints[0].endpoint.address.pipe"),
    ({"endpoint_name": "named"}, "lb_endpoints[0].endpoint_name"),
]


@pytest.mark.parametrize(("lb_endpoint", "path"), ENDPOINT_REFUSALS, ids=[p for _, p in ENDPOINT_REFUSALS])
def test_unsupported_endpoint_features_are_refused(lb_endpoint, path):
    with pytest.raises(UnsupportedFeature) as caught:
        build(cluster_dict(endpoints=[lb_endpoint]))
    assert caught.value.field == f"static_resources.clusters[0].load_assignment.endpoints[0].{path}"


def test_load_assignment_policy_refusals_and_overprovisioning():
    data = cluster_dict()
    data["load_assignment"]["policy"] = {"overprovisioning_factor": 200}
    assert build(data).overprovisioning_factor == 200
    data["load_assignment"]["policy"] = {"drop_overloads": [{"category": "x", "drop_percentage": {}}]}
    with pytest.raises(UnsupportedFeature) as caught:
        build(data)
    assert caught.value.field == "static_resources.clusters[0].load_assignment.policy.drop_overloads"


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (cluster_dict(endpoints=[endpoint("backend.local")]),
         "load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address"),
        (cluster_dict(endpoints=[{**endpoint("10.0.0.1"), "load_balancing_weight": 0}]),
         "load_assignment.endpoints[0].lb_endpoints[0].load_balancing_weight.value"),
        (cluster_dict(connect_timeout="0s"), "connect_timeout"),
        (cluster_dict(type="LOGICAL_DNS", endpoints=[endpoint("a.local"), endpoint("b.local")]), "load_assignment"),
        (cluster_dict(type="STRICT_DNS", dns_failure_refresh_rate={"base_interval": "5s", "max_interval": "1s"}),
         "dns_failure_refresh_rate.max_interval"),
        (cluster_dict(name=""), "name"),
    ],
)
def test_invalid_values_are_config_errors_with_paths(data, path):
    with pytest.raises(ConfigError) as caught:
        build(data)
    assert not isinstance(caught.value, UnsupportedFeature)
    assert caught.value.field == f"static_resources.clusters[0].{path}"


def test_static_cluster_rejects_names_with_a_hint():
    with pytest.raises(ConfigError, match="STRICT_DNS"):
        build(cluster_dict(endpoints=[endpoint("backend.local")]))


# --- DNS clusters --------------------------------------------------------------------------


def test_strict_dns_resolves_every_address_and_reuses_hosts(monkeypatch):
    monkeypatch.setenv(dns.OVERRIDES_ENV, "service1=127.0.0.1,127.0.0.2;service2=127.0.0.3")
    store = Store()
    cluster = build(cluster_dict(type="STRICT_DNS", endpoints=[endpoint("service1", 8000), endpoint("service2", 9000)]),
                    store)
    assert isinstance(cluster, StrictDnsCluster) and cluster.type_name == STRICT_DNS
    assert cluster.hosts == [] and not cluster.initialized
    assert cluster.choose_host(None) is None

    asyncio.run(cluster.initialize())
    assert cluster.initialized
    assert [host.address_str for host in cluster.hosts] == ["127.0.0.1:8000", "127.0.0.2:8000", "127.0.0.3:9000"]
    assert [host.hostname for host in cluster.hosts] == ["service1", "service1", "service2"]
    counters = store.counters
    assert counters["cluster.backend.update_attempt"].value == 2
    assert counters["cluster.backend.update_success"].value == 2
    assert counters["cluster.backend.membership_change"].value == 2  # one per endpoint name
    kept = cluster.hosts[1]
    kept.pool = object()  # stands in for a connection pool that must survive

    asyncio.run(cluster.refresh())  # same answers: nothing changes
    assert counters["cluster.backend.membership_change"].value == 2
    assert cluster.hosts[1] is kept

    monkeypatch.setenv(dns.OVERRIDES_ENV, "service1=127.0.0.2,127.0.0.9;service2=127.0.0.3")
    asyncio.run(cluster.refresh())
    assert [host.ip for host in cluster.hosts] == ["127.0.0.2", "127.0.0.9", "127.0.0.3"]
    assert cluster.hosts[0] is kept and kept.pool is not None
    assert counters["cluster.backend.membership_change"].value == 3
    assert store.gauges["cluster.backend.membership_total"].value == 3
    assert {cluster.choose_host(None) for _ in range(3)} == set(cluster.hosts)


def test_strict_dns_removed_host_pool_is_drained(monkeypatch):
    drained = []

    class FakePool:
        def drain(self) -> None:
            drained.append(self)

    monkeypatch.setenv(dns.OVERRIDES_ENV, "svc=127.0.0.1,127.0.0.2")
    cluster = build(cluster_dict(type="STRICT_DNS", endpoints=[endpoint("svc")]))
    asyncio.run(cluster.initialize())
    leaving = cluster.hosts[1]
    leaving.pool = FakePool()
    monkeypatch.setenv(dns.OVERRIDES_ENV, "svc=127.0.0.1")
    asyncio.run(cluster.refresh())
    assert drained == [leaving.pool]
    assert leaving not in cluster.hosts


def test_dns_failure_keeps_hosts_and_counts(monkeypatch):
    monkeypatch.setenv(dns.OVERRIDES_ENV, "svc=127.0.0.1")
    store = Store()
    cluster = build(cluster_dict(type="STRICT_DNS", dns_lookup_family="V4_ONLY", endpoints=[endpoint("svc")]), store)
    asyncio.run(cluster.initialize())
    monkeypatch.setenv(dns.OVERRIDES_ENV, "svc=::1")  # no IPv4 answer for V4_ONLY
    asyncio.run(cluster.refresh())
    assert [host.ip for host in cluster.hosts] == ["127.0.0.1"]
    assert store.counters["cluster.backend.update_failure"].value == 1
    assert store.counters["cluster.backend.update_attempt"].value == 2


def test_dns_failures_are_logged_once_per_outage(monkeypatch, caplog):
    monkeypatch.setenv(dns.OVERRIDES_ENV, "svc=::1")  # no IPv4 answer for V4_ONLY
    store = Store()
    cluster = build(cluster_dict(type="STRICT_DNS", dns_lookup_family="V4_ONLY", endpoints=[endpoint("svc")]), store)

    def logged(level: int) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "tulle.upstream" and r.levelno == level]

    with caplog.at_level(logging.DEBUG, logger="tulle.upstream"):
        asyncio.run(cluster.initialize())
        for _ in range(3):
            asyncio.run(cluster.refresh())
        assert len(logged(logging.WARNING)) == 1 and "svc" in logged(logging.WARNING)[0]
        assert len(logged(logging.DEBUG)) == 3  # each later failure, for whoever debugs
        assert store.counters["cluster.backend.update_failure"].value == 4
        monkeypatch.setenv(dns.OVERRIDES_ENV, "svc=127.0.0.1")
        asyncio.run(cluster.refresh())
        asyncio.run(cluster.refresh())
        assert logged(logging.INFO) == ["cluster backend: svc resolves again"]
        monkeypatch.setenv(dns.OVERRIDES_ENV, "svc=::1")
        asyncio.run(cluster.refresh())
        assert len(logged(logging.WARNING)) == 2  # a new outage is news again


def test_strict_dns_real_localhost_lookup(monkeypatch):
    monkeypatch.delenv(dns.OVERRIDES_ENV, raising=False)
    cluster = build(cluster_dict(type="STRICT_DNS", dns_lookup_family="V4_ONLY", endpoints=[endpoint("localhost", 81)]))
    asyncio.run(cluster.initialize())
    assert [host.address_str for host in cluster.hosts] == ["127.0.0.1:81"]
    assert cluster.hosts[0].hostname == "localhost"


def test_logical_dns_single_host_follows_first_address(monkeypatch):
    monkeypatch.setenv(dns.OVERRIDES_ENV, "svc=127.0.0.1,127.0.0.2")
    store = Store()
    cluster = build(cluster_dict(type="LOGICAL_DNS", endpoints=[endpoint("svc", 7000)]), store)
    assert isinstance(cluster, LogicalDnsCluster) and cluster.type_name == LOGICAL_DNS
    asyncio.run(cluster.initialize())
    assert [host.address_str for host in cluster.hosts] == ["127.0.0.1:7000"]
    logical = cluster.hosts[0]
    monkeypatch.setenv(dns.OVERRIDES_ENV, "svc=127.0.0.3")
    asyncio.run(cluster.refresh())
    assert cluster.hosts == [logical]
    assert logical.address_str == "127.0.0.3:7000"
    assert cluster.choose_host(None) is logical
    assert store.counters["cluster.backend.membership_change"].value == 1


def test_dns_refresh_loop_picks_up_changes(monkeypatch):
    monkeypatch.setenv(dns.OVERRIDES_ENV, "svc=127.0.0.1")
    cluster = build(cluster_dict(type="STRICT_DNS", dns_refresh_rate="0.01s", endpoints=[endpoint("svc")]))

    async def scenario() -> list[str]:
        await cluster.initialize()
        cluster.start_refreshing()
        monkeypatch.setenv(dns.OVERRIDES_ENV, "svc=127.0.0.7")
        for _ in range(500):  # generous bound; the loop normally needs one or two rounds
            if cluster.hosts and cluster.hosts[0].ip == "127.0.0.7":
                break
            await asyncio.sleep(0.01)
        await cluster.close()
        return [host.ip for host in cluster.hosts]

    assert asyncio.run(scenario()) == ["127.0.0.7"]
    assert cluster.stats.update_attempt.value >= 2


def test_dns_settings_are_parsed():
    cluster = build(cluster_dict(type="STRICT_DNS", dns_lookup_family="V4_PREFERRED", dns_refresh_rate="2s",
                                 dns_failure_refresh_rate={"base_interval": "1s"}, endpoints=[endpoint("svc")]))
    assert cluster.dns_lookup_family == "V4_PREFERRED"
    assert cluster.dns_refresh_rate == 2.0
    assert cluster.config.dns_failure_refresh_rate == (1.0, 10.0)
