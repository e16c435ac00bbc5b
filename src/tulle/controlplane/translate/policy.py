"""DestinationRule traffic policies: which settings apply to one cluster (port, subset).

As in Istio (pilot/pkg/networking/util GetPortLevelTrafficPolicy / MergeSubsetTrafficPolicy):
a matching portLevelSettings entry replaces the rule's policy as a whole, so a component it
leaves out falls back to the default instead of being inherited ("port level settings override
the destination-level settings"); a subset's policy replaces the components it sets, and a
subset's own port-level setting replaces all four (loadBalancer, connectionPool,
outlierDetection, tls) again. Components are never merged field by field.
"""

from __future__ import annotations

from typing import Any

Policy = dict[str, Any]

COMPONENTS = ("loadBalancer", "connectionPool", "outlierDetection", "tls", "proxyProtocol", "tunnel")
PORT_LEVEL_COMPONENTS = ("loadBalancer", "connectionPool", "outlierDetection", "tls")


def _port_setting(policy: Policy | None, port: int) -> Policy | None:
    for setting in (policy or {}).get("portLevelSettings") or []:
        if int((setting.get("port") or {}).get("number") or 0) == port:
            return setting
    return None


def port_traffic_policy(policy: Policy | None, port: int) -> Policy | None:
    """The policy for one port: the rule's components, or only those of the port's
    portLevelSettings entry when there is one (tunnel and proxyProtocol are not port-level)."""
    if policy is None:
        return None
    setting = _port_setting(policy, port)
    if setting is not None:
        return {name: setting[name] for name in PORT_LEVEL_COMPONENTS if setting.get(name) is not None}
    return {name: policy[name] for name in COMPONENTS if policy.get(name) is not None}


def subset_traffic_policy(base: Policy | None, subset_policy: Policy | None, port: int) -> Policy | None:
    """A subset's policy over the (port-resolved) rule policy."""
    if subset_policy is None:
        return base
    own = port_traffic_policy(subset_policy, port) or {}
    if base is None:
        return own
    merged = dict(base)
    if _port_setting(subset_policy, port) is not None:
        for name in PORT_LEVEL_COMPONENTS:  # the subset's port level replaces all four, set or not
            merged.pop(name, None)
    merged.update(own)
    return merged


def cluster_policy(rule_spec: dict[str, Any] | None, port: int, subset: str = "") -> Policy | None:
    """The effective traffic policy of cluster outbound|port|subset|host under ``rule_spec``."""
    if rule_spec is None:
        return None
    policy = port_traffic_policy(rule_spec.get("trafficPolicy"), port)
    if subset:
        for entry in rule_spec.get("subsets") or []:
            if entry.get("name") == subset:
                policy = subset_traffic_policy(policy, entry.get("trafficPolicy"), port)
    return policy


def subset_labels(rule_spec: dict[str, Any] | None, subset: str) -> dict[str, str] | None:
    """The subset's labels; None when the rule has no such subset."""
    for entry in (rule_spec or {}).get("subsets") or []:
        if entry.get("name") == subset:
            return dict(entry.get("labels") or {})
    return None


def _port_consistent_hash(policy: Policy | None, port: int | None) -> Policy | None:
    if port is None:
        return None
    setting = _port_setting(policy, port)
    return ((setting or {}).get("loadBalancer") or {}).get("consistentHash")


def consistent_hash_for_destination(
    rule_spec: dict[str, Any] | None, destination_port: int | None, subset: str
) -> Policy | None:
    """Istio's hashForHTTPDestination: the subset's port level, the subset's, the rule's port
    level (only when the destination names a port), then the rule's."""
    if rule_spec is None:
        return None
    top = rule_spec.get("trafficPolicy")
    chosen = ((top or {}).get("loadBalancer") or {}).get("consistentHash")
    port_hash = _port_consistent_hash(top, destination_port)
    subset_hash = subset_port_hash = None
    for entry in rule_spec.get("subsets") or []:
        if entry.get("name") == subset:
            subset_policy = entry.get("trafficPolicy")
            subset_hash = ((subset_policy or {}).get("loadBalancer") or {}).get("consistentHash")
            subset_port_hash = _port_consistent_hash(subset_policy, destination_port)
            break
    return subset_port_hash or subset_hash or port_hash or chosen


def consistent_hash_for_service(rule_spec: dict[str, Any] | None, port: int) -> Policy | None:
    """Istio's hashForService (the default route of a service without VirtualService)."""
    if rule_spec is None:
        return None
    top = rule_spec.get("trafficPolicy")
    chosen = ((top or {}).get("loadBalancer") or {}).get("consistentHash")
    return _port_consistent_hash(top, port) or chosen


def locality_setting(mesh_setting: Policy | None, policy: Policy | None) -> Policy | None:
    """The DestinationRule's localityLbSetting, else the mesh's; None when disabled."""
    rule_setting = ((policy or {}).get("loadBalancer") or {}).get("localityLbSetting")
    if rule_setting is not None:
        return None if rule_setting.get("enabled") is False else rule_setting
    if mesh_setting is None or mesh_setting.get("enabled") is False:
        return None
    return mesh_setting
