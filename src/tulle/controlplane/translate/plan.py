"""Which outbound clusters a proxy gets: one per visible service port and per DestinationRule subset.

CDS and EDS both read these plans, so a cluster and its ClusterLoadAssignment always agree on
the subset labels and the traffic policy (locality settings shape the endpoints).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tulle.controlplane.model import Resource, Service, ServicePort
from tulle.controlplane.translate.names import outbound_cluster_name
from tulle.controlplane.translate.policy import cluster_policy, locality_setting, subset_labels
from tulle.controlplane.translate.scope import ProxyScope

EDS = "EDS"
STATIC = "STATIC"
STRICT_DNS = "STRICT_DNS"
LOGICAL_DNS = "LOGICAL_DNS"
ORIGINAL_DST = "ORIGINAL_DST"

# Service resolution -> Envoy discovery type (Istio: ClientSideLB, DNSLB, DNSRoundRobinLB, Passthrough).
DISCOVERY_TYPES = {"STATIC": EDS, "DNS": STRICT_DNS, "DNS_ROUND_ROBIN": LOGICAL_DNS, "NONE": ORIGINAL_DST}


@dataclass(frozen=True)
class ClusterPlan:
    name: str
    service: Service
    port: ServicePort
    subset: str
    labels: dict[str, str]  # subset labels (empty: every endpoint)
    policy: dict[str, Any] | None  # the effective DestinationRule traffic policy
    discovery_type: str
    rule: Resource | None
    locality_setting: dict[str, Any] | None = None  # localityLbSetting in force (DestinationRule or mesh)

    @property
    def failover_enabled(self) -> bool:
        # Istio fails over only with outlier detection (even an empty one): without it no endpoint
        # ever leaves priority 0.
        return (self.policy or {}).get("outlierDetection") is not None


def discovery_type(service: Service, policy: dict[str, Any] | None) -> str:
    if ((policy or {}).get("loadBalancer") or {}).get("simple") == "PASSTHROUGH":
        return ORIGINAL_DST
    return DISCOVERY_TYPES.get(service.resolution.upper(), EDS)


def plan_outbound_clusters(scope: ProxyScope) -> list[ClusterPlan]:
    plans = []
    mesh_locality = scope.options.mesh_locality_lb_setting
    for service in scope.services:
        rule = scope.destination_rule_for(service.hostname, service.namespace)
        rule_spec = rule.spec if rule is not None else None
        subsets = [str(entry.get("name")) for entry in (rule_spec or {}).get("subsets") or [] if entry.get("name")]
        for port in sorted(service.ports, key=lambda p: p.port):
            for subset in ["", *subsets]:
                policy = cluster_policy(rule_spec, port.port, subset)
                plans.append(ClusterPlan(
                    name=outbound_cluster_name(port.port, service.hostname, subset), service=service, port=port,
                    subset=subset, labels=(subset_labels(rule_spec, subset) or {}) if subset else {},
                    policy=policy, discovery_type=discovery_type(service, policy), rule=rule,
                    locality_setting=locality_setting(mesh_locality, policy),
                ))
    return plans
