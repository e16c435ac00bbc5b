"""Outbound and inbound clusters with DestinationRule traffic policies applied."""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2

from tulle.config.loader import parse_message
from tulle.controlplane.model import (
    MeshSnapshot,
    ProxyIdentity,
    Resource,
    Service,
    ServicePort,
    WorkloadInstance,
)
from tulle.controlplane.translate.clusters import (
    apply_connection_pool,
    apply_outlier_detection,
    build_inbound_clusters,
    build_outbound_cluster,
    tcp_proxy_settings,
)
from tulle.controlplane.translate.options import ISTIO_DEFAULTS, TranslateOptions
from tulle.controlplane.translate.plan import plan_outbound_clusters
from tulle.controlplane.translate.scope import build_scope
from tulle.controlplane.translate.values import UINT32_MAX

HOST = "api.default.svc.cluster.local"
CLIENT = ProxyIdentity("c", "default", workload_name="c")
NO_DEFAULTS = TranslateOptions(circuit_breaker_defaults=False)
HTTP1_ONLY = TranslateOptions(proxy_lacks=frozenset({"http2_protocol_options"}))


def clusters(policy: dict | None = None, *, resolution: str = "STATIC", protocol: str = "HTTP",
             instances: tuple[WorkloadInstance, ...] = (), options: TranslateOptions | None = None,
             subsets: list | None = None) -> dict[str, dict[str, Any] | None]:
    service = Service(HOST, "default", [ServicePort("p", 80, protocol)], resolution=resolution)
    resources = []
    if policy is not None or subsets:
        resources.append(Resource("DestinationRule", "networking.istio.io/v1", "r", spec={
            "host": "api", "trafficPolicy": policy or {}, "subsets": subsets or []}))
    snapshot = MeshSnapshot(resources, [service], list(instances))
    scope = build_scope(snapshot, CLIENT, options or ISTIO_DEFAULTS)
    built = {plan.name: build_outbound_cluster(scope, plan) for plan in plan_outbound_clusters(scope)}
    for cluster in built.values():
        if cluster is not None:
            parse_message(cluster, cluster_pb2.Cluster)  # every cluster is a valid Envoy Cluster
    return built


def default_cluster(**kwargs: Any) -> dict[str, Any]:
    cluster = clusters(**kwargs)[f"outbound|80||{HOST}"]
    assert cluster is not None
    return cluster


def test_registry_services_are_eds_with_ads_and_istio_defaults() -> None:
    cluster = default_cluster()
    assert cluster["type"] == "EDS"
    assert cluster["eds_cluster_config"] == {"service_name": f"outbound|80||{HOST}", "eds_config": {
        "ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}}
    assert cluster["lb_policy"] == "LEAST_REQUEST" and cluster["connect_timeout"] == "10s"
    assert cluster["circuit_breakers"]["thresholds"][0]["max_requests"] == UINT32_MAX
    assert "circuit_breakers" not in default_cluster(options=NO_DEFAULTS)


def test_connection_pool() -> None:
    cluster = default_cluster(policy={"connectionPool": {
        "tcp": {"maxConnections": 7, "connectTimeout": "250ms", "maxConnectionDuration": "1h",
                "tcpKeepalive": {"probes": 3, "time": "90s", "interval": "500ms"}},
        "http": {"http1MaxPendingRequests": 5, "http2MaxRequests": 9, "maxRetries": 0,
                 "maxRequestsPerConnection": 4, "idleTimeout": "30s"},
    }}, options=NO_DEFAULTS)
    assert cluster["connect_timeout"] == "0.25s"
    assert cluster["circuit_breakers"] == {"thresholds": [
        {"max_connections": 7, "max_pending_requests": 5, "max_requests": 9}]}  # maxRetries 0 is unset
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["common_http_protocol_options"] == {
        "idle_timeout": "30s", "max_requests_per_connection": 4, "max_connection_duration": "3600s"}
    assert options["explicit_http_config"] == {"http_protocol_options": {}}
    assert cluster["upstream_connection_options"] == {"tcp_keepalive": {
        "keepalive_probes": 3, "keepalive_time": 90, "keepalive_interval": 1}}


def test_upstream_protocol() -> None:
    def protocol_options(cluster: dict[str, Any]) -> dict[str, Any] | None:
        return (cluster.get("typed_extension_protocol_options") or {}).get(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions")

    assert protocol_options(default_cluster()) is None
    assert protocol_options(default_cluster(protocol="GRPC"))["explicit_http_config"] == {"http2_protocol_options": {}}
    upgraded = default_cluster(policy={"connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE",
                                                                   "maxConcurrentStreams": 10}}})
    assert protocol_options(upgraded)["explicit_http_config"] == {"http2_protocol_options": {
        "max_concurrent_streams": 10}}
    # DO_NOT_UPGRADE only declines an upgrade: a GRPC port still speaks HTTP/2 (Istio's setUpstreamProtocol)
    kept = default_cluster(protocol="GRPC", policy={"connectionPool": {"http": {"h2UpgradePolicy": "DO_NOT_UPGRADE"}}})
    assert protocol_options(kept)["explicit_http_config"] == {"http2_protocol_options": {}}
    client = default_cluster(policy={"connectionPool": {"http": {"useClientProtocol": True,
                                                                 "h2UpgradePolicy": "UPGRADE"}}})
    assert protocol_options(client)["use_downstream_protocol_config"] == {
        "http_protocol_options": {}, "http2_protocol_options": {}}
    # maxConcurrentStreams alone: Istio still builds the options (HTTP/1.1 ignores the setting)
    streams = default_cluster(policy={"connectionPool": {"http": {"maxConcurrentStreams": 10}}})
    assert protocol_options(streams)["explicit_http_config"] == {"http_protocol_options": {}}
    assert protocol_options(streams)["common_http_protocol_options"] == {}
    # A proxy lacking HTTP/2 upstreams (Tulle) keeps HTTP/1.1 for everything
    for http1 in (default_cluster(protocol="GRPC", options=HTTP1_ONLY),
                  default_cluster(policy={"connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE"}}},
                                  options=HTTP1_ONLY)):
        assert protocol_options(http1) is None or protocol_options(http1)["explicit_http_config"] == {
            "http_protocol_options": {}}
    tulle_client = default_cluster(policy={"connectionPool": {"http": {"useClientProtocol": True}}},
                                   options=HTTP1_ONLY)
    assert protocol_options(tulle_client)["use_downstream_protocol_config"] == {"http_protocol_options": {}}


def test_outlier_detection() -> None:
    cluster: dict[str, Any] = {}
    apply_outlier_detection(cluster, {"consecutive5xxErrors": 5, "consecutiveGatewayErrors": 0, "interval": "5s",
                                      "baseEjectionTime": "1m", "maxEjectionPercent": 30, "minHealthPercent": 40})
    assert cluster["outlier_detection"] == {
        "enforcing_success_rate": 0, "consecutive_5xx": 5, "enforcing_consecutive_5xx": 100,
        "consecutive_gateway_failure": 0, "enforcing_consecutive_gateway_failure": 0, "interval": "5s",
        "base_ejection_time": "60s", "max_ejection_percent": 30}
    assert cluster["common_lb_config"]["healthy_panic_threshold"] == {"value": 40.0}
    untouched: dict[str, Any] = {}
    apply_outlier_detection(untouched, None)
    assert untouched == {}


def test_load_balancer_policies() -> None:
    assert default_cluster(policy={"loadBalancer": {"simple": "ROUND_ROBIN"}})["lb_policy"] == "ROUND_ROBIN"
    assert default_cluster(policy={"loadBalancer": {"simple": "LEAST_CONN"}})["lb_policy"] == "LEAST_REQUEST"
    assert default_cluster(policy={"loadBalancer": {"simple": "RANDOM"}})["lb_policy"] == "RANDOM"
    maglev = default_cluster(policy={"loadBalancer": {"consistentHash": {"maglev": {"tableSize": 1031}}}})
    assert (maglev["lb_policy"], maglev["maglev_lb_config"]) == ("MAGLEV", {"table_size": 1031})
    ring = default_cluster(policy={"loadBalancer": {"consistentHash": {"httpHeaderName": "x"}}})
    assert (ring["lb_policy"], ring["ring_hash_lb_config"]) == ("RING_HASH", {"minimum_ring_size": 1024})
    warm = default_cluster(policy={"loadBalancer": {"simple": "ROUND_ROBIN", "warmupDurationSecs": "20s"}})
    assert warm["round_robin_lb_config"] == {"slow_start_config": {"slow_start_window": "20s"}}
    passthrough = default_cluster(policy={"loadBalancer": {"simple": "PASSTHROUGH"}})
    assert (passthrough["type"], passthrough["lb_policy"]) == ("ORIGINAL_DST", "CLUSTER_PROVIDED")
    assert "eds_cluster_config" not in passthrough


def test_locality_weighted_config_only_when_locality_lb_acts() -> None:
    failover = {"loadBalancer": {"localityLbSetting": {"failover": [{"from": "a", "to": "b"}]}}}
    assert "locality_weighted_lb_config" not in default_cluster(policy=failover)["common_lb_config"]
    failover["outlierDetection"] = {"consecutive5xxErrors": 1}
    assert default_cluster(policy=failover)["common_lb_config"]["locality_weighted_lb_config"] == {}
    distribute = {"loadBalancer": {"localityLbSetting": {"distribute": [{"from": "*", "to": {"*": 100}}]}}}
    assert "locality_weighted_lb_config" in default_cluster(policy=distribute)["common_lb_config"]


def test_dns_clusters_carry_endpoints_and_skip_empty_subsets() -> None:
    built = clusters(resolution="DNS", subsets=[{"name": "v1", "labels": {"v": "1"}}])
    cluster = built[f"outbound|80||{HOST}"]
    assert cluster["type"] == "STRICT_DNS" and cluster["dns_lookup_family"] == "V4_ONLY"
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"socket_address": {"address": HOST, "port_value": 80}}
    assert built[f"outbound|80|v1|{HOST}"] is None  # no endpoint carries the subset's labels
    logical = default_cluster(resolution="DNS_ROUND_ROBIN", instances=(
        WorkloadInstance("a", "default", "a.example.com", {}, service_hostnames=(HOST,)),
        WorkloadInstance("b", "default", "b.example.com", {}, locality="r/z", service_hostnames=(HOST,))))
    assert logical["type"] == "LOGICAL_DNS"
    assert [len(group["lb_endpoints"]) for group in logical["load_assignment"]["endpoints"]] == [1]


def test_inbound_clusters_for_the_proxys_own_ports() -> None:
    service = Service("web.default.svc.cluster.local", "default",
                      [ServicePort("http", 80, "HTTP", 8080), ServicePort("tcp", 5000, "TCP")])
    mine = WorkloadInstance("c", "default", "10.0.0.1", {"http": 8081}, service_hostnames=(service.hostname,))
    rule = Resource("DestinationRule", "networking.istio.io/v1", "web", spec={"host": "web", "trafficPolicy": {
        "connectionPool": {"tcp": {"maxConnections": 3}}}})
    scope = build_scope(MeshSnapshot([rule], [service], [mine]), CLIENT, NO_DEFAULTS)
    inbound = build_inbound_clusters(scope)
    assert [cluster["name"] for cluster in inbound] == ["inbound|5000||", "inbound|8081||"]
    socket = inbound[1]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert socket == {"address": "127.0.0.1", "port_value": 8081}
    assert inbound[1]["type"] == "STATIC"
    assert inbound[1]["circuit_breakers"] == {"thresholds": [{"max_connections": 3}]}
    for cluster in inbound:
        parse_message(cluster, cluster_pb2.Cluster)


def test_connection_pool_without_settings_adds_defaults_only() -> None:
    cluster: dict[str, Any] = {}
    apply_connection_pool(cluster, None, defaults=False)
    assert cluster == {}
    apply_connection_pool(cluster, {}, defaults=True)
    assert list(cluster) == ["circuit_breakers"]


def test_an_empty_outlier_detection_still_turns_it_and_failover_on() -> None:
    cluster = default_cluster(policy={"outlierDetection": {}, "loadBalancer": {
        "localityLbSetting": {"failover": [{"from": "a", "to": "b"}]}}})
    assert cluster["outlier_detection"] == {"enforcing_success_rate": 0}
    assert cluster["common_lb_config"] == {"healthy_panic_threshold": {"value": 0.0}, "locality_weighted_lb_config": {}}


def test_port_level_settings_do_not_inherit_the_rules_components() -> None:
    policy = {"outlierDetection": {"consecutive5xxErrors": 2},
              "connectionPool": {"http": {"http2MaxRequests": 5}},
              "portLevelSettings": [{"port": {"number": 80}, "loadBalancer": {"simple": "RANDOM"}}]}
    cluster = default_cluster(policy=policy)
    assert cluster["lb_policy"] == "RANDOM"
    assert "outlier_detection" not in cluster
    assert cluster["circuit_breakers"]["thresholds"][0]["max_requests"] == UINT32_MAX  # Istio's default


def test_subset_port_level_settings_replace_the_subsets_components() -> None:
    built = clusters(policy={"connectionPool": {"tcp": {"maxConnections": 1}}}, subsets=[
        {"name": "v1", "labels": {"v": "1"}, "trafficPolicy": {
            "outlierDetection": {"consecutiveGatewayErrors": 3},
            "portLevelSettings": [{"port": {"number": 80}, "connectionPool": {"tcp": {"maxConnections": 9}}}]}}])
    subset = built[f"outbound|80|v1|{HOST}"]
    assert subset["circuit_breakers"]["thresholds"][0]["max_connections"] == 9
    assert "outlier_detection" not in subset  # the subset's port level replaced it too


def test_inbound_connection_pool_from_the_sidecar_wins_and_nothing_is_upgraded() -> None:
    service = Service("web.default.svc.cluster.local", "default",
                      [ServicePort("http", 80, "HTTP", 8080), ServicePort("grpc", 90, "GRPC")])
    mine = WorkloadInstance("c", "default", "10.0.0.1", {"http": 8080, "grpc": 90},
                            service_hostnames=(service.hostname,))
    rule = Resource("DestinationRule", "networking.istio.io/v1", "web", spec={"host": "web", "trafficPolicy": {
        "connectionPool": {"tcp": {"maxConnections": 3}, "http": {"h2UpgradePolicy": "UPGRADE"}}}})
    sidecar = Resource("Sidecar", "networking.istio.io/v1", "default", spec={
        "ingress": [{"port": {"number": 8080, "protocol": "HTTP"}, "defaultEndpoint": "127.0.0.1:8080",
                     "connectionPool": {"http": {"http1MaxPendingRequests": 4}}}],
        "inboundConnectionPool": {"tcp": {"maxConnections": 11}}})
    scope = build_scope(MeshSnapshot([rule, sidecar], [service], [mine]), CLIENT, ISTIO_DEFAULTS)
    by_name = {cluster["name"]: cluster for cluster in build_inbound_clusters(scope)}
    http, grpc = by_name["inbound|8080||"], by_name["inbound|90||"]
    assert http["circuit_breakers"]["thresholds"][0]["max_pending_requests"] == 4
    assert http["circuit_breakers"]["thresholds"][0]["max_connections"] == UINT32_MAX
    assert grpc["circuit_breakers"]["thresholds"][0]["max_connections"] == 11
    assert "typed_extension_protocol_options" not in http  # h2UpgradePolicy is outbound only
    protocol = grpc["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert protocol["explicit_http_config"] == {"http2_protocol_options": {}}  # the port's own protocol


def test_tcp_proxy_settings_come_from_the_rule_level_tcp_pool() -> None:
    service = Service("db.default.svc.cluster.local", "default", [ServicePort("tcp", 5432, "TCP")])
    rule = Resource("DestinationRule", "networking.istio.io/v1", "db", spec={"host": "db", "trafficPolicy": {
        "connectionPool": {"tcp": {"idleTimeout": "30s", "maxConnectionDuration": "1h"}},
        "portLevelSettings": [{"port": {"number": 5432}, "connectionPool": {"tcp": {"idleTimeout": "5s"}}}]}})
    scope = build_scope(MeshSnapshot([rule], [service], []), CLIENT, ISTIO_DEFAULTS)
    assert tcp_proxy_settings(scope, service.hostname) == {
        "idle_timeout": "30s", "max_downstream_connection_duration": "3600s"}
    assert tcp_proxy_settings(scope, "other.default.svc.cluster.local") == {}


def test_what_a_proxy_lacks_is_left_out() -> None:
    lacking = TranslateOptions(proxy_lacks=frozenset({
        "upstream_connection_options", "max_connection_duration", "slow_start_config"}))
    cluster = default_cluster(policy={
        "connectionPool": {"tcp": {"maxConnectionDuration": "1h", "idleTimeout": "1m", "tcpKeepalive": {"probes": 2}}},
        "loadBalancer": {"simple": "ROUND_ROBIN", "warmupDurationSecs": "10s"}}, options=lacking)
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert options["common_http_protocol_options"] == {"idle_timeout": "60s"}
    assert "upstream_connection_options" not in cluster and "round_robin_lb_config" not in cluster


def test_clusters_record_the_destination_rule_that_shaped_them() -> None:
    """istiod's filter_metadata istio.config (and .subset): what `proxy-config clusters` shows as
    DESTINATION RULE."""
    built = clusters({"loadBalancer": {"simple": "RANDOM"}}, subsets=[{"name": "v1", "labels": {"version": "v1"}}])
    config = "/apis/networking.istio.io/v1/namespaces/default/destination-rule/r"
    assert built[f"outbound|80||{HOST}"]["metadata"] == {"filter_metadata": {"istio": {"config": config}}}
    assert built[f"outbound|80|v1|{HOST}"]["metadata"] == {
        "filter_metadata": {"istio": {"config": config, "subset": "v1"}}}
    assert "metadata" not in default_cluster()  # no rule, no metadata


def test_clusters_record_tls_their_rule_sets_and_tulle_does_not_apply_yet() -> None:
    """`proxy-config clusters` says which clusters stay plaintext although their rule asks for TLS."""
    built = clusters({"tls": {"mode": "ISTIO_MUTUAL"}}, subsets=[
        {"name": "v1", "labels": {"version": "v1"}},
        {"name": "plain", "labels": {"version": "v2"}, "trafficPolicy": {"tls": {"mode": "DISABLE"}}}])
    note = ["tls (mode ISTIO_MUTUAL): no transport socket yet, this cluster's traffic is plaintext"]
    assert built[f"outbound|80||{HOST}"]["metadata"]["filter_metadata"]["tulle"] == {"not_applied": note}
    assert built[f"outbound|80|v1|{HOST}"]["metadata"]["filter_metadata"]["tulle"] == {"not_applied": note}
    assert "tulle" not in built[f"outbound|80|plain|{HOST}"]["metadata"]["filter_metadata"]  # DISABLE: nothing
    assert "transport_socket" not in built[f"outbound|80||{HOST}"]  # indeed not applied
