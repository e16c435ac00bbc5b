"""CDS: outbound clusters with DestinationRule traffic policy applied, and inbound clusters.

Follows istio/istio pilot/pkg/networking/core cluster_builder.go and cluster_traffic_policy.go:
connection pool -> circuit breakers, connect timeout and HTTP protocol options; outlier
detection (success-rate ejection off, panic threshold from minHealthPercent); load balancer
simple / consistentHash (RING_HASH, MAGLEV) / localityLbSetting; LEAST_REQUEST by default.
"""

from __future__ import annotations

from typing import Any

from tulle.controlplane.translate.endpoints import load_assignment
from tulle.controlplane.translate.names import inbound_cluster_name, is_http2
from tulle.controlplane.translate.plan import EDS, LOGICAL_DNS, ORIGINAL_DST, STATIC, STRICT_DNS, ClusterPlan
from tulle.controlplane.translate.policy import port_traffic_policy
from tulle.controlplane.translate.scope import ProxyScope
from tulle.controlplane.translate.values import UINT32_MAX, duration, duration_seconds

HTTP_PROTOCOL_OPTIONS_TYPE = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
DEFAULT_RING_SIZE = 1024

# Istio's simple load balancer names -> lb_policy (LEAST_CONN is the deprecated LEAST_REQUEST).
SIMPLE_LB_POLICIES = {
    "ROUND_ROBIN": "ROUND_ROBIN", "LEAST_REQUEST": "LEAST_REQUEST", "LEAST_CONN": "LEAST_REQUEST",
    "RANDOM": "RANDOM", "UNSPECIFIED": "LEAST_REQUEST",
}


def ads_config_source() -> dict[str, Any]:
    """Resources come over the same ADS stream; 0s: a proxy never stops waiting for them."""
    return {"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"}


def _circuit_breakers(connection_pool: dict[str, Any], defaults: bool) -> dict[str, Any] | None:
    """Istio's thresholds: every limit at 2^32-1 unless the connectionPool sets it (a 0 is unset)."""
    http = connection_pool.get("http") or {}
    tcp = connection_pool.get("tcp") or {}
    thresholds: dict[str, Any] = (
        {"max_connections": UINT32_MAX, "max_pending_requests": UINT32_MAX, "max_requests": UINT32_MAX,
         "max_retries": UINT32_MAX, "track_remaining": True}
        if defaults else {}
    )
    for source, key, target in (
        (tcp, "maxConnections", "max_connections"),
        (http, "http1MaxPendingRequests", "max_pending_requests"),
        (http, "http2MaxRequests", "max_requests"),
        (http, "maxRetries", "max_retries"),
    ):
        if int(source.get(key) or 0) > 0:
            thresholds[target] = int(source[key])
    if not thresholds:
        return None
    return {"thresholds": [thresholds]}


def _http_protocol_options(
    connection_pool: dict[str, Any], http2: bool, use_client_protocol: bool
) -> dict[str, Any] | None:
    """typed_extension_protocol_options' HttpProtocolOptions: idle timeout, requests per
    connection, max connection duration and the upstream protocol."""
    http = connection_pool.get("http") or {}
    tcp = connection_pool.get("tcp") or {}
    common: dict[str, Any] = {}
    idle_timeout = http.get("idleTimeout") if http.get("idleTimeout") is not None else tcp.get("idleTimeout")
    if idle_timeout is not None:
        common["idle_timeout"] = duration(idle_timeout)
    if int(http.get("maxRequestsPerConnection") or 0) > 0:
        common["max_requests_per_connection"] = int(http["maxRequestsPerConnection"])
    if tcp.get("maxConnectionDuration") is not None:
        common["max_connection_duration"] = duration(tcp["maxConnectionDuration"])
    if not common and not http2 and not use_client_protocol:
        return None
    options: dict[str, Any] = {"@type": HTTP_PROTOCOL_OPTIONS_TYPE}
    if common:
        options["common_http_protocol_options"] = common
    if use_client_protocol:
        options["use_downstream_protocol_config"] = {"http_protocol_options": {}, "http2_protocol_options": {}}
    elif http2:
        http2_options: dict[str, Any] = {}
        if int(http.get("maxConcurrentStreams") or 0) > 0:
            http2_options["max_concurrent_streams"] = int(http["maxConcurrentStreams"])
        options["explicit_http_config"] = {"http2_protocol_options": http2_options}
    else:
        options["explicit_http_config"] = {"http_protocol_options": {}}
    return options


def apply_connection_pool(
    cluster: dict[str, Any], connection_pool: dict[str, Any] | None, *, defaults: bool, http2: bool = False
) -> None:
    pool = connection_pool or {}
    tcp = pool.get("tcp") or {}
    http = pool.get("http") or {}
    if tcp.get("connectTimeout") is not None:
        cluster["connect_timeout"] = duration(tcp["connectTimeout"])
    breakers = _circuit_breakers(pool, defaults)
    if breakers is not None:
        cluster["circuit_breakers"] = breakers
    upgrade = http.get("h2UpgradePolicy")
    if upgrade == "UPGRADE":
        http2 = True
    elif upgrade == "DO_NOT_UPGRADE":
        http2 = False
    options = _http_protocol_options(pool, http2, bool(http.get("useClientProtocol")))
    if options is not None:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options,
        }
    if tcp.get("tcpKeepalive"):
        keepalive = tcp["tcpKeepalive"]
        settings: dict[str, Any] = {}
        if keepalive.get("probes"):
            settings["keepalive_probes"] = int(keepalive["probes"])
        # Envoy counts keepalive time and interval in whole seconds.
        if keepalive.get("time") is not None:
            settings["keepalive_time"] = max(int(duration_seconds(keepalive["time"])), 1)
        if keepalive.get("interval") is not None:
            settings["keepalive_interval"] = max(int(duration_seconds(keepalive["interval"])), 1)
        cluster["upstream_connection_options"] = {"tcp_keepalive": settings}


def apply_outlier_detection(cluster: dict[str, Any], outlier: dict[str, Any] | None) -> None:
    if not outlier:
        return
    out: dict[str, Any] = {"enforcing_success_rate": 0}  # Istio turns success-rate ejection off
    for key, target, enforcing in (
        ("consecutive5xxErrors", "consecutive_5xx", "enforcing_consecutive_5xx"),
        ("consecutiveGatewayErrors", "consecutive_gateway_failure", "enforcing_consecutive_gateway_failure"),
    ):
        if outlier.get(key) is not None:
            value = int(outlier[key])
            out[target] = value
            out[enforcing] = 100 if value > 0 else 0
    if outlier.get("interval") is not None:
        out["interval"] = duration(outlier["interval"])
    if outlier.get("baseEjectionTime") is not None:
        out["base_ejection_time"] = duration(outlier["baseEjectionTime"])
    if int(outlier.get("maxEjectionPercent") or 0) > 0:
        out["max_ejection_percent"] = int(outlier["maxEjectionPercent"])
    if outlier.get("splitExternalLocalOriginErrors"):
        out["split_external_local_origin_errors"] = True
        if int(outlier.get("consecutiveLocalOriginFailures") or 0) > 0:
            out["consecutive_local_origin_failure"] = int(outlier["consecutiveLocalOriginFailures"])
            out["enforcing_consecutive_local_origin_failure"] = 100
        out["enforcing_local_origin_success_rate"] = 0
    cluster["outlier_detection"] = out
    # Istio disables the panic threshold unless minHealthPercent sets one: with few endpoints
    # per service, panic mode would send traffic to ejected hosts.
    cluster.setdefault("common_lb_config", {})["healthy_panic_threshold"] = {
        "value": float(outlier.get("minHealthPercent") or 0)
    }


def apply_load_balancer(cluster: dict[str, Any], plan: ClusterPlan) -> None:
    load_balancer = (plan.policy or {}).get("loadBalancer") or {}
    if cluster["type"] == ORIGINAL_DST:
        cluster["lb_policy"] = "CLUSTER_PROVIDED"
        return
    cluster["lb_policy"] = SIMPLE_LB_POLICIES.get(str(load_balancer.get("simple") or "UNSPECIFIED"), "LEAST_REQUEST")
    warmup = load_balancer.get("warmupDurationSecs")
    if warmup is not None and cluster["lb_policy"] in ("ROUND_ROBIN", "LEAST_REQUEST"):
        key = "round_robin_lb_config" if cluster["lb_policy"] == "ROUND_ROBIN" else "least_request_lb_config"
        cluster[key] = {"slow_start_config": {"slow_start_window": duration(warmup)}}
    consistent_hash = load_balancer.get("consistentHash")
    if consistent_hash:
        if consistent_hash.get("maglev") is not None:
            cluster["lb_policy"] = "MAGLEV"
            table_size = int(consistent_hash["maglev"].get("tableSize") or 0)
            if table_size:
                cluster["maglev_lb_config"] = {"table_size": table_size}
        elif consistent_hash.get("ringHash") is not None:
            cluster["lb_policy"] = "RING_HASH"
            ring_size = int(consistent_hash["ringHash"].get("minimumRingSize") or 0)
            if ring_size:
                cluster["ring_hash_lb_config"] = {"minimum_ring_size": ring_size}
        else:
            cluster["lb_policy"] = "RING_HASH"
            ring_size = int(consistent_hash.get("minimumRingSize") or 0) or DEFAULT_RING_SIZE
            cluster["ring_hash_lb_config"] = {"minimum_ring_size": ring_size}
    setting = plan.locality_setting
    if setting is not None and (
        setting.get("distribute")
        or (plan.failover_enabled and (setting.get("failover") or setting.get("failoverPriority")))
    ):
        cluster.setdefault("common_lb_config", {})["locality_weighted_lb_config"] = {}


def build_outbound_cluster(scope: ProxyScope, plan: ClusterPlan) -> dict[str, Any] | None:
    """One outbound Cluster (JSON); None for a DNS/STATIC cluster without endpoints (as Istio)."""
    cluster: dict[str, Any] = {
        "name": plan.name,
        "type": plan.discovery_type,
        "connect_timeout": duration(scope.options.connect_timeout),
        "common_lb_config": {},
    }
    if plan.discovery_type == EDS:
        cluster["eds_cluster_config"] = {"service_name": plan.name, "eds_config": ads_config_source()}
    elif plan.discovery_type in (STRICT_DNS, LOGICAL_DNS, STATIC):
        assignment = load_assignment(scope, plan)
        endpoint_count = sum(len(group["lb_endpoints"]) for group in assignment["endpoints"])
        if endpoint_count == 0:
            return None
        if plan.discovery_type == LOGICAL_DNS:
            # LOGICAL_DNS takes a single endpoint: the first, as Istio does.
            first = assignment["endpoints"][0]
            first["lb_endpoints"] = first["lb_endpoints"][:1]
            assignment["endpoints"] = [first]
        cluster["load_assignment"] = assignment
        cluster["dns_lookup_family"] = "V4_ONLY"
    policy = plan.policy or {}
    apply_connection_pool(
        cluster, policy.get("connectionPool"), defaults=scope.options.circuit_breaker_defaults,
        http2=is_http2(plan.port.protocol),
    )
    apply_outlier_detection(cluster, policy.get("outlierDetection"))
    apply_load_balancer(cluster, plan)
    return cluster


def build_inbound_clusters(scope: ProxyScope) -> list[dict[str, Any]]:
    """``inbound|<port>||``: the proxy's own workload ports, STATIC to 127.0.0.1:<port>.

    Named by the workload (target) port as Istio does; the service's DestinationRule connection
    pool applies here too, so the server side admits the traffic its clients may send.
    """
    clusters = []
    app_ports = dict(scope.options.app_ports)
    for inbound in scope.inbound_ports():
        name = inbound_cluster_name(inbound.workload_port)
        local_port = app_ports.get(inbound.workload_port, inbound.workload_port)
        cluster: dict[str, Any] = {
            "name": name,
            "type": STATIC,
            "connect_timeout": duration(scope.options.connect_timeout),
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{
                "endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                            "port_value": local_port}}},
            }]}]},
        }
        rule = scope.destination_rule_for(inbound.service.hostname, inbound.service.namespace)
        policy = port_traffic_policy((rule.spec if rule else {}).get("trafficPolicy"), inbound.port.port) or {}
        apply_connection_pool(cluster, policy.get("connectionPool"), defaults=scope.options.circuit_breaker_defaults)
        clusters.append(cluster)
    return clusters
