"""ClusterLoadAssignments: workload instances -> endpoints grouped by locality.

Used for EDS (one assignment per EDS cluster) and inline for DNS clusters. An instance
backs a cluster when it backs the service and carries the subset's labels; its port is the
workload port for the service port's name. Unhealthy instances are sent as UNHEALTHY so the
proxy can show them.

An endpoint a proxy would refuse is left out, with a warning, never sent: a proxy NACKs the
whole update for one bad endpoint, which would hold back every later change of the cluster.
EDS (and STATIC) endpoints need an IP address, as Envoy's do; a host name backs only DNS
clusters, as Istio lets a WorkloadEntry with a host name back only DNS ServiceEntries. Ports
must be 1-65535 and weights fit Envoy's uint32. The registry and Istio validation refuse such
input already; this catches what reached the store before they did, or by another way. Locality load balancing (Istio's loadbalancer.ApplyLocalityLoadBalancer)
rewrites priorities (failover, failoverPriority) or locality weights (distribute) relative to
the proxy's own locality.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

from tulle.controlplane.model import WorkloadInstance
from tulle.controlplane.translate.names import labels_match
from tulle.controlplane.translate.plan import EDS, LOGICAL_DNS, ORIGINAL_DST, STATIC, STRICT_DNS, ClusterPlan
from tulle.controlplane.translate.registry import target_port
from tulle.controlplane.translate.scope import ProxyScope

log = logging.getLogger(__name__)

Locality = tuple[str, str, str]
MAX_UINT32 = 2**32 - 1
IP_ONLY_TYPES = (EDS, STATIC)
_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[-A-Za-z0-9]*[A-Za-z0-9])?$")
_MAX_WARNED = 10_000
_warned: set[tuple[str, str, int, str]] = set()  # (cluster, address, port, problem) already logged


def parse_locality(text: str) -> Locality:
    parts = (text.split("/") + ["", "", ""])[:3] if text else ["", "", ""]
    return parts[0], parts[1], parts[2]


@dataclass(frozen=True)
class Endpoint:
    address: str
    port: int
    weight: int
    healthy: bool
    locality: Locality
    labels: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": {"address": {"socket_address": {"address": self.address, "port_value": self.port}}},
            "health_status": "HEALTHY" if self.healthy else "UNHEALTHY",
            "load_balancing_weight": self.weight,
        }


@dataclass
class LocalityGroup:
    locality: Locality
    endpoints: list[Endpoint]
    priority: int = 0
    weight: int | None = None  # locality weight; None: the sum of the endpoints' weights

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {}
        region, zone, sub_zone = self.locality
        locality = {key: value for key, value in (("region", region), ("zone", zone), ("sub_zone", sub_zone)) if value}
        if locality:
            entry["locality"] = locality
        entry["lb_endpoints"] = [endpoint.to_json() for endpoint in self.endpoints]
        weight = self.weight if self.weight is not None else sum(endpoint.weight for endpoint in self.endpoints)
        if weight > 0:
            entry["load_balancing_weight"] = weight
        if self.priority:
            entry["priority"] = self.priority
        return entry


def _instance_endpoint(instance: WorkloadInstance, plan: ClusterPlan) -> Endpoint:
    return Endpoint(
        address=instance.address, port=target_port(instance, plan.port), weight=max(instance.weight, 1),
        healthy=instance.healthy, locality=parse_locality(instance.locality), labels=dict(instance.labels),
    )


def endpoint_problem(endpoint: Endpoint, discovery_type: str) -> str:
    """Why a proxy would refuse this endpoint in a cluster of ``discovery_type``; "" when it would not."""
    try:
        ipaddress.ip_address(endpoint.address)
    except ValueError:
        if discovery_type in IP_ONLY_TYPES:
            return f"address {endpoint.address!r} is not an IP address (a host name backs only DNS services)"
        if not _is_host_name(endpoint.address):
            return f"address {endpoint.address!r} is neither an IP address nor a host name"
    if not 1 <= endpoint.port <= 65535:
        return f"port {endpoint.port} is not 1-65535"
    if not 1 <= endpoint.weight <= MAX_UINT32:
        return f"weight {endpoint.weight} is not 1-{MAX_UINT32}"
    return ""


def _is_host_name(text: str) -> bool:
    name = text[:-1] if text.endswith(".") else text
    return 0 < len(name) <= 253 and all(len(label) <= 63 and _HOST_LABEL.match(label) for label in name.split("."))


def _acceptable(endpoint: Endpoint, plan: ClusterPlan, instance: WorkloadInstance) -> bool:
    problem = endpoint_problem(endpoint, plan.discovery_type)
    if not problem:
        return True
    key = (plan.name, endpoint.address, endpoint.port, problem)
    if key not in _warned:  # every push translates it again: say it once
        if len(_warned) >= _MAX_WARNED:
            _warned.clear()
        _warned.add(key)
        log.warning("cluster %s: instance %s/%s left out: %s", plan.name, instance.namespace, instance.name, problem)
    return False


def cluster_endpoints(scope: ProxyScope, plan: ClusterPlan) -> list[Endpoint]:
    """The endpoints of one cluster, sorted; DNS services without endpoints resolve their host.
    Endpoints a proxy would refuse are left out (see the module docstring)."""
    if plan.discovery_type == ORIGINAL_DST:
        return []
    instances = [
        instance for instance in scope.registry.instances_of(plan.service.hostname)
        if instance.address and labels_match(plan.labels, instance.labels)
    ]
    if not instances and plan.discovery_type in (STRICT_DNS, LOGICAL_DNS) and not plan.labels:
        if not scope.registry.instances_of(plan.service.hostname):
            host = plan.service.hostname
            if host.startswith("*"):
                return []  # a wildcard host names no server to resolve
            return [Endpoint(host, plan.port.target_port or plan.port.port, 1, True, ("", "", ""))]
    endpoints: dict[Endpoint, None] = {}
    for instance in instances:
        endpoint = _instance_endpoint(instance, plan)
        if _acceptable(endpoint, plan, instance):
            endpoints[endpoint] = None
    return sorted(endpoints, key=lambda e: (e.locality, e.address, e.port))


def group_by_locality(endpoints: list[Endpoint]) -> list[LocalityGroup]:
    groups: dict[Locality, LocalityGroup] = {}
    for endpoint in endpoints:
        groups.setdefault(endpoint.locality, LocalityGroup(endpoint.locality, [])).endpoints.append(endpoint)
    return [groups[locality] for locality in sorted(groups)]


# --- locality load balancing ----------------------------------------------------------------


def locality_matches(locality: Locality, pattern: str) -> bool:
    """Istio's util.LocalityMatch: "region/zone/subzone" where "*" or a missing part matches any."""
    rule_region, rule_zone, rule_sub_zone = parse_locality(pattern)
    return (
        (rule_region == "*" or locality[0] == rule_region)
        and (rule_zone in ("*", "") or locality[1] == rule_zone)
        and (rule_sub_zone in ("*", "") or locality[2] == rule_sub_zone)
    )


def locality_priority(proxy: Locality, endpoint: Locality) -> int:
    """0: same sub-zone, 1: same zone, 2: same region, 3: elsewhere (Istio's util.LbPriority)."""
    if proxy[0] != endpoint[0]:
        return 3
    if proxy[1] != endpoint[1]:
        return 2
    return 0 if proxy[2] == endpoint[2] else 1


def _compact_priorities(groups: list[LocalityGroup]) -> None:
    """Priorities must run 0..N without gaps."""
    ranks = {priority: rank for rank, priority in enumerate(sorted({group.priority for group in groups}))}
    for group in groups:
        group.priority = ranks[group.priority]


def apply_locality_weights(groups: list[LocalityGroup], proxy: Locality, distribute: list[dict[str, Any]]) -> None:
    """``distribute``: the first rule whose ``from`` matches the proxy sets locality weights; localities
    it does not name get no traffic (their endpoints are dropped, as in Istio)."""
    for rule in distribute:
        if not locality_matches(proxy, str(rule.get("from") or "")):
            continue
        unmatched = set(range(len(groups)))
        for pattern, weight in (rule.get("to") or {}).items():
            chosen = [i for i in sorted(unmatched) if locality_matches(groups[i].locality, str(pattern))]
            unmatched -= set(chosen)
            total = sum(sum(e.weight for e in groups[i].endpoints) for i in chosen)
            for i in chosen:
                own = sum(e.weight for e in groups[i].endpoints)
                share = own * int(weight) / total if total else 0
                if share > 0:
                    groups[i].weight = math.ceil(share)
        for i in unmatched:
            groups[i].endpoints = []
            groups[i].weight = 0
        return


def apply_locality_failover(groups: list[LocalityGroup], proxy: Locality, failover: list[dict[str, Any]]) -> None:
    """Priority by closeness to the proxy; ``failover`` (from region -> to region) demotes every
    other remote region below the named one."""
    for group in groups:
        priority = locality_priority(proxy, group.locality)
        if priority == 3:
            for rule in failover:
                if rule.get("from") == proxy[0]:
                    if group.locality[0] != rule.get("to"):
                        priority = 4
                    break
        group.priority = group.priority * 5 + priority  # keeps failoverPriority's order on top
    _compact_priorities(groups)


def _failover_label_values(failover_priority: list[str], proxy_labels: dict[str, str]) -> list[tuple[str, str | None]]:
    """"label" compares the endpoint's value with the proxy's; "label=value" with that value."""
    values = []
    for entry in failover_priority:
        name, separator, value = entry.partition("=")
        values.append((name, value if separator else proxy_labels.get(name)))
    return values


def apply_failover_priority(
    groups: list[LocalityGroup], proxy_labels: dict[str, str], failover_priority: list[str]
) -> list[LocalityGroup]:
    """Split each locality by how many leading ``failoverPriority`` labels an endpoint shares with
    the proxy: all of them -> priority 0; a mismatch on label j -> len - j."""
    if not proxy_labels:
        return groups
    labels = _failover_label_values(failover_priority, proxy_labels)
    lowest = len(labels)
    split: list[LocalityGroup] = []
    for group in groups:
        by_priority: dict[int, list[Endpoint]] = {}
        for endpoint in group.endpoints:
            priority = 0
            for index, (name, wanted) in enumerate(labels):
                if endpoint.labels.get(name) != wanted:
                    priority = lowest - index
                    break
            by_priority.setdefault(priority, []).append(endpoint)
        for priority in sorted(by_priority):
            split.append(LocalityGroup(group.locality, by_priority[priority], priority))
    _compact_priorities(split)
    return split


def apply_locality_lb(
    groups: list[LocalityGroup], plan: ClusterPlan, proxy_locality: Locality, proxy_labels: dict[str, str]
) -> list[LocalityGroup]:
    setting = plan.locality_setting
    if setting is None:
        return groups
    if setting.get("distribute"):
        apply_locality_weights(groups, proxy_locality, list(setting["distribute"]))
    elif plan.failover_enabled:
        failover = list(setting.get("failover") or [])
        if setting.get("failoverPriority"):
            groups = apply_failover_priority(groups, proxy_labels, list(setting["failoverPriority"]))
            if failover:
                apply_locality_failover(groups, proxy_locality, failover)
        else:
            apply_locality_failover(groups, proxy_locality, failover)
    return groups


def load_assignment(scope: ProxyScope, plan: ClusterPlan) -> dict[str, Any]:
    """envoy.config.endpoint.v3.ClusterLoadAssignment (JSON) of one cluster."""
    groups = group_by_locality(cluster_endpoints(scope, plan))
    groups = apply_locality_lb(groups, plan, parse_locality(scope.locality), scope.proxy_labels)
    return {"cluster_name": plan.name, "endpoints": [group.to_json() for group in groups]}


def is_eds(plan: ClusterPlan) -> bool:
    return plan.discovery_type == EDS
