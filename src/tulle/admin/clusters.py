"""/clusters and /listeners in Envoy's text and JSON shapes.

JSON goes through the official ``envoy.admin.v3`` messages so field names,
enum spellings and the uint64-as-string encoding are exactly Envoy's.
"""

from __future__ import annotations

from typing import Any

from envoy.admin.v3 import clusters_pb2, listeners_pb2, metrics_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2
from google.protobuf import json_format

from tulle.upstream import resource_manager

# Envoy's circuit breaker defaults, for a backend that does not report a cluster's thresholds;
# the server reports each cluster's limits in force (Cluster.circuit_breakers_status).
DEFAULT_THRESHOLDS = {
    "max_connections": resource_manager.DEFAULT_MAX_CONNECTIONS,
    "max_pending_requests": resource_manager.DEFAULT_MAX_PENDING_REQUESTS,
    "max_requests": resource_manager.DEFAULT_MAX_REQUESTS,
    "max_retries": resource_manager.DEFAULT_MAX_RETRIES,
}
# Envoy's host stats: counters first, then gauges, each in Envoy's declaration order.
HOST_COUNTERS = ("cx_connect_fail", "cx_total", "rq_error", "rq_success", "rq_timeout", "rq_total")
HOST_GAUGES = ("cx_active", "rq_active")

_FLAG_FIELDS = {
    "failed_active_hc": "failed_active_health_check",
    "failed_outlier_check": "failed_outlier_check",
    "degraded_active_hc": "failed_active_degraded_check",
    "pending_dynamic_removal": "pending_dynamic_removal",
    "pending_active_hc": "pending_active_hc",
    "excluded_via_immediate_hc_fail": "excluded_via_immediate_hc_fail",
    "active_hc_timeout": "active_hc_timeout",
}


def split_address(address: str) -> tuple[str, int]:
    """``"1.2.3.4:80"`` / ``"[::1]:80"`` -> (ip, port)."""
    host, _, port = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port) if port.isdigit() else 0


def _address_proto(address: str) -> address_pb2.Address:
    ip, port = split_address(address)
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ip, port_value=port))


def _thresholds(cluster: dict[str, Any], priority: str) -> dict[str, int]:
    configured = cluster.get("circuit_breakers", {}).get(priority, {})
    return {key: configured.get(key, default) for key, default in DEFAULT_THRESHOLDS.items()}


def _format_rate(rate: float) -> str:
    return str(int(rate)) if float(rate).is_integer() else repr(float(rate))


def render_clusters_text(clusters: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for cluster in sorted(clusters, key=lambda c: c["name"]):
        name = cluster["name"]
        for priority in ("default", "high"):
            for key, value in _thresholds(cluster, priority).items():
                lines.append(f"{name}::{priority}_priority::{key}::{value}\n")
        lines.append(f"{name}::added_via_api::{str(cluster.get('added_via_api', False)).lower()}\n")
        for host in cluster.get("hosts", []):
            prefix = f"{name}::{host['address']}::"
            for stat, value in sorted(host.get("stats", {}).items()):
                lines.append(f"{prefix}{stat}::{value}\n")
            lines.append(f"{prefix}hostname::{host.get('hostname', '')}\n")
            lines.append(f"{prefix}health_flags::{host.get('health_flags', 'healthy')}\n")
            lines.append(f"{prefix}weight::{host.get('weight', 1)}\n")
            lines.append(f"{prefix}region::{host.get('region', '')}\n")
            lines.append(f"{prefix}zone::{host.get('zone', '')}\n")
            lines.append(f"{prefix}sub_zone::{host.get('sub_zone', '')}\n")
            lines.append(f"{prefix}canary::{str(host.get('canary', False)).lower()}\n")
            lines.append(f"{prefix}priority::{host.get('priority', 0)}\n")
            lines.append(f"{prefix}success_rate::{_format_rate(host.get('success_rate', -1))}\n")
            lines.append(f"{prefix}local_origin_success_rate::-1\n")
    return "".join(lines)


def _health_status(flags: str) -> clusters_pb2.HostHealthStatus:
    status = clusters_pb2.HostHealthStatus(eds_health_status=health_check_pb2.HEALTHY)
    for flag in filter(None, flags.split("/")):
        if flag in _FLAG_FIELDS:
            setattr(status, _FLAG_FIELDS[flag], True)
        elif flag == "failed_eds_health":
            status.eds_health_status = health_check_pb2.UNHEALTHY
        elif flag == "degraded_eds_health" and status.eds_health_status == health_check_pb2.HEALTHY:
            status.eds_health_status = health_check_pb2.DEGRADED
    return status


def _host_status(host: dict[str, Any]) -> clusters_pb2.HostStatus:
    status = clusters_pb2.HostStatus(
        address=_address_proto(host["address"]),
        hostname=host.get("hostname", ""),
        weight=host.get("weight", 1),
        priority=host.get("priority", 0),
        locality=base_pb2.Locality(
            region=host.get("region", ""), zone=host.get("zone", ""), sub_zone=host.get("sub_zone", "")
        ),
        health_status=_health_status(host.get("health_flags", "healthy")),
    )
    stats = host.get("stats", {})
    known = HOST_COUNTERS + HOST_GAUGES
    ordered = [n for n in HOST_COUNTERS if n in stats] + sorted(n for n in stats if n not in known)
    ordered += [n for n in HOST_GAUGES if n in stats]
    for stat in ordered:
        metric_type = metrics_pb2.SimpleMetric.GAUGE if stat in HOST_GAUGES else metrics_pb2.SimpleMetric.COUNTER
        status.stats.add(name=stat, value=max(0, int(stats[stat])), type=metric_type)
    rate = host.get("success_rate", -1)
    if rate >= 0:
        status.success_rate.value = rate
    return status


def render_clusters_json(clusters: list[dict[str, Any]]) -> str:
    message = clusters_pb2.Clusters()
    for cluster in sorted(clusters, key=lambda c: c["name"]):
        status = message.cluster_statuses.add(
            name=cluster["name"],
            added_via_api=bool(cluster.get("added_via_api", False)),
            observability_name=cluster.get("observability_name", cluster["name"]),
        )
        for priority, enum_value in (("default", base_pb2.DEFAULT), ("high", base_pb2.HIGH)):
            thresholds = status.circuit_breakers.thresholds.add(priority=enum_value)
            for key, value in _thresholds(cluster, priority).items():
                getattr(thresholds, key).value = value
        for host in cluster.get("hosts", []):
            status.host_statuses.append(_host_status(host))
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=1) + "\n"


def render_listeners_text(listeners: list[dict[str, Any]]) -> str:
    return "".join(f"{listener['name']}::{listener['address']}\n" for listener in listeners)


def render_listeners_json(listeners: list[dict[str, Any]]) -> str:
    message = listeners_pb2.Listeners()
    for listener in listeners:
        message.listener_statuses.add(name=listener["name"], local_address=_address_proto(listener["address"]))
    return json_format.MessageToJson(message, preserving_proto_field_name=True, indent=1) + "\n"
