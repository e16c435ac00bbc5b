"""xDS for proxyless gRPC clients (Istio's pilot/pkg/networking/grpcgen).

A grpcio channel on ``xds:///reviews.default.svc.cluster.local:9080`` asks LDS for the listener
named exactly like its target, expects an *API listener* (an HttpConnectionManager that is not
bound to any socket) with RDS, then RDS, CDS and EDS by name. It routes inside the client, so it
gets the same VirtualService routes and DestinationRule clusters a sidecar gets, cut down to
what gRPC implements (gRFCs A27, A28, A31, A33, A39, A42, A44):

* LDS: one API listener per visible service port under every name a client may dial in its
  namespace (``<fqdn>:<port>``, ``<name>.<ns>:<port>``, ``<name>.<ns>.svc:<port>``,
  ``<name>:<port>``), all with RDS ``outbound|<port>||<fqdn>`` (Istio's grpcgen names routes
  like clusters) and the fault + router filters, the only client filters gRPC knows;
* RDS: one virtual host, the service's routes. gRPC NACKs a per-route config for a filter it
  does not know, so CORS goes; it has no rewrites, header edits or mirroring, so those go too;
  ``timeout`` becomes ``max_stream_duration`` (gRPC ignores ``timeout``); a retry policy keeps
  the gRPC status conditions only (none left: no retries) and drops what A44 does not support;
* CDS: EDS clusters (DNS services: LOGICAL_DNS, one address), ROUND_ROBIN or RING_HASH (gRPC
  NACKs other policies), circuit breaking by ``max_requests`` only (A32);
* EDS: the sidecar's ClusterLoadAssignments, every locality group naming its locality.

Not for gRPC: ORIGINAL_DST (``PASSTHROUGH``) clusters, which a client cannot resolve, and
xDS-enabled gRPC servers (A36 inbound listeners), which are not generated yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tulle.controlplane.model import MeshSnapshot, ProxyIdentity, Service, ServicePort
from tulle.controlplane.translate.clusters import DEFAULT_RING_SIZE, ads_config_source
from tulle.controlplane.translate.endpoints import load_assignment
from tulle.controlplane.translate.listeners import FAULT_FILTER_TYPE, HCM_TYPE, ROUTER_TYPE
from tulle.controlplane.translate.names import (
    domain_with_port,
    kubernetes_alt_hosts,
    outbound_cluster_name,
    virtual_host_domains,
    virtual_host_name,
)
from tulle.controlplane.translate.options import ISTIO_DEFAULTS, TranslateOptions
from tulle.controlplane.translate.plan import (
    EDS,
    LOGICAL_DNS,
    STRICT_DNS,
    ClusterPlan,
    plan_outbound_clusters,
)
from tulle.controlplane.translate.routes import FAULT_FILTER, service_routes
from tulle.controlplane.translate.scope import ProxyScope, build_scope
from tulle.controlplane.translate.translate import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    JsonResources,
    Resources,
    to_messages,
)
from tulle.controlplane.translate.values import duration_seconds

GRPC_GENERATOR = "grpc"  # Istio's node metadata GENERATOR for proxyless gRPC
PROXYLESS_ID_PREFIX = "proxyless~"
ROUTER_FILTER = "envoy.filters.http.router"
# x-envoy-retry-grpc-on conditions: the only retry_on values gRPC turns into retryable codes (A44).
GRPC_RETRY_CONDITIONS = ("cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable")
# The hash policies gRPC evaluates (A42); the filter state key is the client channel's id.
CHANNEL_ID_KEY = "io.grpc.channel_id"
# gRPC caps ring_hash_lb_config sizes at 8M entries (A42) and NACKs more.
MAX_RING_SIZE = 8 * 1024 * 1024
# gRPC ignores these route fields: dropped so the config shows what the client does.
_IGNORED_ROUTE_KEYS = ("request_headers_to_add", "request_headers_to_remove", "response_headers_to_add",
                       "response_headers_to_remove")
_KEPT_ACTION_KEYS = ("cluster", "weighted_clusters", "hash_policy")


def is_proxyless(node_id: str, metadata: Mapping[str, Any]) -> bool:
    """A gRPC client without a sidecar: Istio's ``GENERATOR: grpc`` metadata or a ``proxyless~`` id."""
    return str(metadata.get("GENERATOR") or "") == GRPC_GENERATOR or node_id.startswith(PROXYLESS_ID_PREFIX)


# --- LDS ----------------------------------------------------------------------------------


def listener_names(service: Service, port: ServicePort, proxy_namespace: str, domain_suffix: str) -> list[str]:
    """Every ``host:port`` a client in ``proxy_namespace`` may dial for this service port, FQDN first."""
    hosts = [service.hostname, *kubernetes_alt_hosts(service.hostname, proxy_namespace, domain_suffix)]
    return [domain_with_port(host, port.port) for host in dict.fromkeys(hosts)]


def route_configuration_name(service: Service, port: ServicePort) -> str:
    """Istio's grpcgen names a client's route configuration like the service port's cluster."""
    return outbound_cluster_name(port.port, service.hostname)


def api_listener(name: str, service: Service, port: ServicePort) -> dict[str, Any]:
    manager = {
        "@type": HCM_TYPE,
        "stat_prefix": name,
        "rds": {"route_config_name": route_configuration_name(service, port), "config_source": ads_config_source()},
        # The fault filter is always present so a VirtualService adding a fault changes RDS only.
        "http_filters": [
            {"name": FAULT_FILTER, "typed_config": {"@type": FAULT_FILTER_TYPE}},
            {"name": ROUTER_FILTER, "typed_config": {"@type": ROUTER_TYPE}},
        ],
    }
    listener: dict[str, Any] = {"name": name, "api_listener": {"api_listener": manager}}
    address = next((a for a in service.addresses if a and "/" not in a and a not in ("0.0.0.0", "::")), None)
    if address:  # informational: gRPC dials by name, the VIP only shows in config dumps
        listener["address"] = {"socket_address": {"address": address, "port_value": port.port}}
    return listener


def grpc_listeners(scope: ProxyScope) -> list[dict[str, Any]]:
    """API listeners for every visible service port; a name two services could claim goes to the
    service whose FQDN it is, else to the first service by hostname."""
    chosen: dict[str, tuple[Service, ServicePort]] = {}
    for fqdn_only in (True, False):
        for service in scope.services:
            if service.hostname.startswith("*"):
                continue  # a wildcard ServiceEntry host names no target a client can dial
            for port in sorted(service.ports, key=lambda p: p.port):
                names = listener_names(service, port, scope.proxy.namespace, scope.domain_suffix)
                for name in names[:1] if fqdn_only else names[1:]:
                    chosen.setdefault(name, (service, port))
    return [api_listener(name, *chosen[name]) for name in sorted(chosen)]


# --- RDS ----------------------------------------------------------------------------------


def grpc_retry_policy(policy: dict[str, Any] | None) -> dict[str, Any] | None:
    """Envoy's retry policy as gRPC reads it (A44): gRPC status conditions, attempts, backoff."""
    if not policy:
        return None
    conditions = [part.strip() for part in str(policy.get("retry_on") or "").split(",")]
    kept = [condition for condition in conditions if condition in GRPC_RETRY_CONDITIONS]
    if not kept:
        return None  # gRPC would build no retry policy from the other conditions
    out: dict[str, Any] = {"retry_on": ",".join(dict.fromkeys(kept)), "num_retries": int(policy.get("num_retries") or 1)}
    base_interval = (policy.get("retry_back_off") or {}).get("base_interval")
    if base_interval and duration_seconds(base_interval) > 0:  # gRPC NACKs a zero base interval
        out["retry_back_off"] = {"base_interval": base_interval}
    return out


def grpc_hash_policy(policies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Header hashing as is; source-IP affinity becomes channel affinity (the client *is* the
    source); cookies and query parameters do not exist for gRPC and are dropped."""
    out = []
    for policy in policies:
        if "header" in policy:
            out.append(policy)
        elif (policy.get("connection_properties") or {}).get("source_ip"):
            out.append({"filter_state": {"key": CHANNEL_ID_KEY}})
    return out


def grpc_route_action(action: dict[str, Any]) -> dict[str, Any]:
    out = {key: action[key] for key in _KEPT_ACTION_KEYS if key in action}
    if "weighted_clusters" in out:
        out["weighted_clusters"] = {"clusters": [
            {"name": entry["name"], "weight": entry["weight"]} for entry in out["weighted_clusters"]["clusters"]]}
    if "hash_policy" in out:
        out["hash_policy"] = grpc_hash_policy(out["hash_policy"])
        if not out["hash_policy"]:
            del out["hash_policy"]
    timeout = action.get("timeout")
    if timeout and duration_seconds(timeout) > 0:  # "0s" is "no timeout": leave the client's deadline alone
        out["max_stream_duration"] = {"max_stream_duration": timeout, "grpc_timeout_header_max": timeout}
    retry = grpc_retry_policy(action.get("retry_policy"))
    if retry is not None:
        out["retry_policy"] = retry
    return out


def grpc_route(route: dict[str, Any]) -> dict[str, Any]:
    """A sidecar route cut to what gRPC evaluates. Redirects and direct responses stay: gRPC fails
    the RPCs they match (an action it cannot perform), which is closer to them than falling through."""
    out = {key: value for key, value in route.items() if key not in _IGNORED_ROUTE_KEYS}
    if "route" in out:
        out["route"] = grpc_route_action(out["route"])
    per_filter = {name: config for name, config in (route.get("typed_per_filter_config") or {}).items()
                  if name == FAULT_FILTER}
    out.pop("typed_per_filter_config", None)
    if per_filter:
        out["typed_per_filter_config"] = per_filter
    return out


def grpc_route_configuration(scope: ProxyScope, service: Service, port: ServicePort) -> dict[str, Any]:
    """The one virtual host gRPC picks by the target's authority: the service's, with its names."""
    return {
        "name": route_configuration_name(service, port),
        "virtual_hosts": [{
            "name": virtual_host_name(service.hostname, port.port),
            "domains": virtual_host_domains(service.hostname, port.port, scope.proxy.namespace, scope.domain_suffix,
                                            service.addresses),
            "routes": [grpc_route(route) for route in service_routes(scope, service, port)],
        }],
    }


# --- CDS / EDS ----------------------------------------------------------------------------


def apply_grpc_load_balancer(cluster: dict[str, Any], plan: ClusterPlan) -> None:
    """consistentHash (ring hash or maglev: both hash the same keys) -> RING_HASH, anything else
    -> ROUND_ROBIN: the two policies every gRPC client takes from CDS."""
    consistent_hash = ((plan.policy or {}).get("loadBalancer") or {}).get("consistentHash")
    if not consistent_hash:
        cluster["lb_policy"] = "ROUND_ROBIN"
        return
    ring = consistent_hash.get("ringHash") or {}
    size = int(ring.get("minimumRingSize") or consistent_hash.get("minimumRingSize") or 0) or DEFAULT_RING_SIZE
    cluster["lb_policy"] = "RING_HASH"
    cluster["ring_hash_lb_config"] = {"minimum_ring_size": min(size, MAX_RING_SIZE)}


def grpc_cluster(scope: ProxyScope, plan: ClusterPlan) -> dict[str, Any] | None:
    """One cluster for a gRPC client; None for those it cannot use (passthrough, no endpoints)."""
    cluster: dict[str, Any] = {"name": plan.name}
    if plan.discovery_type == EDS:
        cluster["type"] = EDS
        cluster["eds_cluster_config"] = {"service_name": plan.name, "eds_config": ads_config_source()}
    elif plan.discovery_type in (STRICT_DNS, LOGICAL_DNS):
        # gRPC resolves one DNS name per cluster (A37): the first endpoint, as LOGICAL_DNS does.
        groups = [group for group in grpc_load_assignment(scope, plan)["endpoints"] if group["lb_endpoints"]]
        if not groups:
            return None
        first = {key: value for key, value in groups[0].items() if key != "priority"}
        first["lb_endpoints"] = first["lb_endpoints"][:1]
        cluster["type"] = LOGICAL_DNS
        cluster["load_assignment"] = {"cluster_name": plan.name, "endpoints": [first]}
    else:
        return None
    apply_grpc_load_balancer(cluster, plan)
    max_requests = int((((plan.policy or {}).get("connectionPool") or {}).get("http") or {}).get("http2MaxRequests")
                       or 0)
    if max_requests > 0:
        cluster["circuit_breakers"] = {"thresholds": [{"max_requests": max_requests}]}
    return cluster


def grpc_load_assignment(scope: ProxyScope, plan: ClusterPlan) -> dict[str, Any]:
    """The sidecar's ClusterLoadAssignment; gRPC NACKs a locality group without ``locality``,
    which Envoy reads as the empty locality, so that is spelled out."""
    assignment = load_assignment(scope, plan)
    for group in assignment["endpoints"]:
        group.setdefault("locality", {})
    return assignment


# --- all together -------------------------------------------------------------------------


def _by_name(items: list[dict[str, Any]], key: str = "name") -> dict[str, dict[str, Any]]:
    return {item[key]: item for item in sorted(items, key=lambda item: item[key])}


def translate_grpc_json(
    snapshot: MeshSnapshot, proxy: ProxyIdentity, options: TranslateOptions = ISTIO_DEFAULTS
) -> JsonResources:
    """A proxyless client's resources as protobuf JSON; the xDS server sends the ones it names."""
    scope = build_scope(snapshot, proxy, options)
    clusters, assignments = [], []
    for plan in plan_outbound_clusters(scope):
        cluster = grpc_cluster(scope, plan)
        if cluster is None:
            continue
        clusters.append(cluster)
        if cluster["type"] == EDS:
            assignments.append(grpc_load_assignment(scope, plan))
    routes = [grpc_route_configuration(scope, service, port)
              for service in scope.services if not service.hostname.startswith("*") for port in service.ports]
    return {
        CLUSTER_TYPE: _by_name(clusters),
        ENDPOINT_TYPE: _by_name(assignments, "cluster_name"),
        LISTENER_TYPE: _by_name(grpc_listeners(scope)),
        ROUTE_TYPE: _by_name(routes),
    }


def translate_grpc(
    snapshot: MeshSnapshot, proxy: ProxyIdentity, options: TranslateOptions = ISTIO_DEFAULTS
) -> Resources:
    """Listeners, RouteConfigurations, Clusters and ClusterLoadAssignments for a proxyless gRPC client."""
    return to_messages(translate_grpc_json(snapshot, proxy, options))
