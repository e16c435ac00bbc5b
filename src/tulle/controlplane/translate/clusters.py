"""CDS: outbound clusters with DestinationRule traffic policy applied, and inbound clusters.

Follows istio/istio pilot/pkg/networking/core cluster_builder.go and cluster_traffic_policy.go:
connection pool -> circuit breakers, connect timeout and HTTP protocol options; outlier
detection (success-rate ejection off, panic threshold from minHealthPercent); load balancer
simple / consistentHash (RING_HASH, MAGLEV) / localityLbSetting; LEAST_REQUEST by default.
"""

from __future__ import annotations

from typing import Any

from tulle.controlplane.model import Resource
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
    connection_pool: dict[str, Any], http2: bool, use_client_protocol: bool, http2_upstreams: bool
) -> dict[str, Any] | None:
    """typed_extension_protocol_options' HttpProtocolOptions: idle timeout, requests per
    connection, max connection duration and the upstream protocol (Istio: HTTP/1.1 unless the
    port is HTTP/2 or upgraded, or the client's protocol)."""
    http = connection_pool.get("http") or {}
    tcp = connection_pool.get("tcp") or {}
    common: dict[str, Any] = {}
    # http.idleTimeout, else tcp.idleTimeout: both mean "close an idle upstream connection".
    idle_timeout = http.get("idleTimeout") if http.get("idleTimeout") is not None else tcp.get("idleTimeout")
    if idle_timeout is not None:
        common["idle_timeout"] = duration(idle_timeout)
    if int(http.get("maxRequestsPerConnection") or 0) > 0:
        common["max_requests_per_connection"] = int(http["maxRequestsPerConnection"])
    if tcp.get("maxConnectionDuration") is not None:
        common["max_connection_duration"] = duration(tcp["maxConnectionDuration"])
    max_streams = int(http.get("maxConcurrentStreams") or 0)
    if not common and max_streams <= 0 and not http2 and not use_client_protocol:
        return None
    options: dict[str, Any] = {"@type": HTTP_PROTOCOL_OPTIONS_TYPE}
    if common or max_streams > 0:
        options["common_http_protocol_options"] = common
    if use_client_protocol:
        downstream: dict[str, Any] = {"http_protocol_options": {}}
        if http2_upstreams:
            downstream["http2_protocol_options"] = {}
        options["use_downstream_protocol_config"] = downstream
    elif http2:
        http2_options: dict[str, Any] = {}
        if max_streams > 0:
            http2_options["max_concurrent_streams"] = max_streams
        options["explicit_http_config"] = {"http2_protocol_options": http2_options}
    else:
        options["explicit_http_config"] = {"http_protocol_options": {}}
    return options


def upstream_http2(http: dict[str, Any], port_http2: bool, *, outbound: bool) -> bool:
    """Istio's setUpstreamProtocol + shouldH2Upgrade: HTTP2/GRPC ports speak HTTP/2; an outbound
    cluster is upgraded by h2UpgradePolicy UPGRADE (on any port) unless useClientProtocol is set;
    DO_NOT_UPGRADE (and the mesh default) leave the port's protocol alone."""
    if outbound and not http.get("useClientProtocol") and http.get("h2UpgradePolicy") == "UPGRADE":
        return True
    return port_http2


def apply_tcp_keepalive(cluster: dict[str, Any], keepalive: dict[str, Any] | None) -> None:
    """SO_KEEPALIVE with the probes / idle time / interval set. Envoy counts whole seconds; Istio
    truncates, which turns a sub-second value into 0, a socket option Linux refuses: here it
    becomes 1s instead."""
    if keepalive is None:
        return
    settings = cluster.setdefault("upstream_connection_options", {}).setdefault("tcp_keepalive", {})
    if int(keepalive.get("probes") or 0) > 0:
        settings["keepalive_probes"] = int(keepalive["probes"])
    for key, target in (("time", "keepalive_time"), ("interval", "keepalive_interval")):
        if keepalive.get(key) is not None:
            settings[target] = max(int(duration_seconds(keepalive[key])), 1)


def apply_connection_pool(
    cluster: dict[str, Any], connection_pool: dict[str, Any] | None, *, defaults: bool, http2: bool = False,
    outbound: bool = True, lacks: frozenset[str] = frozenset(),
) -> None:
    """Istio's applyH2Upgrade + applyConnectionPool. ``http2``: the port speaks HTTP/2 (HTTP2,
    GRPC); ``lacks``: TranslateOptions.proxy_lacks (a proxy without http2_protocol_options
    speaks HTTP/1.1 to every upstream)."""
    pool = connection_pool or {}
    tcp = pool.get("tcp") or {}
    http = pool.get("http") or {}
    if tcp.get("connectTimeout") is not None:
        cluster["connect_timeout"] = duration(tcp["connectTimeout"])
    breakers = _circuit_breakers(pool, defaults)
    if breakers is not None:
        cluster["circuit_breakers"] = breakers
    http2_upstreams = "http2_protocol_options" not in lacks
    http2 = http2_upstreams and upstream_http2(http, http2, outbound=outbound)
    if "max_connection_duration" in lacks:
        pool = {**pool, "tcp": {key: value for key, value in tcp.items() if key != "maxConnectionDuration"}}
    options = _http_protocol_options(pool, http2, bool(http.get("useClientProtocol")), http2_upstreams)
    if options is not None:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": options,
        }
    if "upstream_connection_options" not in lacks:
        apply_tcp_keepalive(cluster, tcp.get("tcpKeepalive"))


def apply_outlier_detection(cluster: dict[str, Any], outlier: dict[str, Any] | None) -> None:
    """Istio's applyOutlierDetection; an empty ``outlierDetection: {}`` still turns it (and
    locality failover) on, with Envoy's defaults."""
    if outlier is None:
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


def apply_load_balancer(cluster: dict[str, Any], plan: ClusterPlan, lacks: frozenset[str] = frozenset()) -> None:
    load_balancer = (plan.policy or {}).get("loadBalancer") or {}
    if cluster["type"] == ORIGINAL_DST:
        cluster["lb_policy"] = "CLUSTER_PROVIDED"
        return
    cluster["lb_policy"] = SIMPLE_LB_POLICIES.get(str(load_balancer.get("simple") or "UNSPECIFIED"), "LEAST_REQUEST")
    warmup = load_balancer.get("warmupDurationSecs")
    if "slow_start_config" in lacks:
        warmup = None
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
        http2=is_http2(plan.port.protocol), lacks=scope.options.proxy_lacks,
    )
    apply_outlier_detection(cluster, policy.get("outlierDetection"))
    apply_load_balancer(cluster, plan, scope.options.proxy_lacks)
    if plan.rule is not None:
        cluster["metadata"] = {"filter_metadata": {"istio": destination_rule_metadata(plan.rule, plan.subset)}}
        not_applied = not_applied_policy(policy)
        if not_applied:
            cluster["metadata"]["filter_metadata"]["tulle"] = {"not_applied": not_applied}
    return cluster


def not_applied_policy(policy: dict[str, Any]) -> list[str]:
    """What of the cluster's effective traffic policy is accepted but not acted on yet, for
    `tulle proxy-config clusters` to show beside the warning `apply` gave (TUL0001)."""
    tls = policy.get("tls") or {}
    mode = tls.get("mode", "DISABLE")  # Istio's ClientTLSSettings default
    if mode == "DISABLE":
        return []
    return [f"tls (mode {mode}): no transport socket yet, this cluster's traffic is plaintext"]


def destination_rule_metadata(rule: Resource, subset: str) -> dict[str, Any]:
    """Which DestinationRule shaped a cluster, as istiod records it for tooling (util.AddConfigInfoMetadata,
    AddSubsetToMetadata): ``config`` is the rule's API path, and what `proxy-config clusters` shows."""
    metadata = {"config": f"/apis/{rule.api_version}/namespaces/{rule.namespace}/destination-rule/{rule.name}"}
    if subset:
        metadata["subset"] = subset
    return metadata


def build_inbound_clusters(scope: ProxyScope) -> list[dict[str, Any]]:
    """``inbound|<port>||``: the proxy's own workload ports, STATIC to 127.0.0.1:<port>.

    Named by the workload (target) port as Istio does; the service's DestinationRule connection
    pool (port level resolved) applies here too, so the server side admits the traffic its clients
    may send, unless the Sidecar sets an inbound connection pool (its ingress listener's for that
    port, else its inboundConnectionPool). Nothing is upgraded to HTTP/2 on the inbound side.
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
        pool = sidecar_inbound_connection_pool(scope, inbound.workload_port)
        apply_connection_pool(
            cluster, pool if pool is not None else policy.get("connectionPool"),
            defaults=scope.options.circuit_breaker_defaults, http2=is_http2(inbound.port.protocol),
            outbound=False, lacks=scope.options.proxy_lacks,
        )
        clusters.append(cluster)
    return clusters


def sidecar_inbound_connection_pool(scope: ProxyScope, port: int) -> dict[str, Any] | None:
    """Istio's SidecarScope.InboundConnectionPoolForPort."""
    spec = scope.sidecar.spec if scope.sidecar is not None else {}
    for listener in spec.get("ingress") or []:
        if int((listener.get("port") or {}).get("number") or 0) == port and listener.get("connectionPool"):
            return dict(listener["connectionPool"])
    return spec.get("inboundConnectionPool")


def tcp_proxy_settings(scope: ProxyScope, hostname: str) -> dict[str, Any]:
    """What Istio's tcp_proxy takes from the DestinationRule of the (first) destination host: the
    rule-level connectionPool.tcp (not a port's or a subset's) idle timeout and maximum connection
    duration."""
    service = scope.service(hostname)
    rule = scope.destination_rule_for(hostname, service.namespace if service else scope.proxy.namespace)
    policy = (rule.spec if rule is not None else {}).get("trafficPolicy") or {}
    tcp = (policy.get("connectionPool") or {}).get("tcp") or {}
    settings: dict[str, Any] = {}
    if tcp.get("idleTimeout") is not None:
        settings["idle_timeout"] = duration(tcp["idleTimeout"])
    if tcp.get("maxConnectionDuration") is not None:
        settings["max_downstream_connection_duration"] = duration(tcp["maxConnectionDuration"])
    return settings
