"""Which outbound clusters a proxy gets, their discovery type and effective policy."""

from __future__ import annotations

from tulle.controlplane.model import MeshSnapshot, ProxyIdentity, Resource, Service, ServicePort
from tulle.controlplane.translate.options import TranslateOptions
from tulle.controlplane.translate.plan import discovery_type, plan_outbound_clusters
from tulle.controlplane.translate.scope import build_scope


def rule(spec: dict) -> Resource:
    return Resource("DestinationRule", "networking.istio.io/v1", "r", "default", spec=spec)


SERVICE = Service("api.default.svc.cluster.local", "default",
                  [ServicePort("grpc", 9090, "GRPC"), ServicePort("http", 8080, "HTTP")])
CLIENT = ProxyIdentity("c", "default", workload_name="c")


def test_one_cluster_per_port_and_subset() -> None:
    dr = rule({"host": "api", "subsets": [{"name": "v1", "labels": {"v": "1"}}, {"name": "v2"}],
               "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}})
    plans = plan_outbound_clusters(build_scope(MeshSnapshot([dr], [SERVICE], []), CLIENT))
    assert [plan.name for plan in plans] == [
        "outbound|8080||api.default.svc.cluster.local", "outbound|8080|v1|api.default.svc.cluster.local",
        "outbound|8080|v2|api.default.svc.cluster.local", "outbound|9090||api.default.svc.cluster.local",
        "outbound|9090|v1|api.default.svc.cluster.local", "outbound|9090|v2|api.default.svc.cluster.local",
    ]
    assert [plan.labels for plan in plans[:3]] == [{}, {"v": "1"}, {}]
    assert all(plan.policy == {"loadBalancer": {"simple": "RANDOM"}} and plan.rule is dr for plan in plans)
    assert {plan.discovery_type for plan in plans} == {"EDS"}


def test_discovery_type_from_resolution_and_passthrough() -> None:
    for resolution, expected in (("STATIC", "EDS"), ("DNS", "STRICT_DNS"), ("DNS_ROUND_ROBIN", "LOGICAL_DNS"),
                                 ("NONE", "ORIGINAL_DST")):
        assert discovery_type(Service("h", "d", [], resolution=resolution), None) == expected
    passthrough = {"loadBalancer": {"simple": "PASSTHROUGH"}}
    assert discovery_type(Service("h", "d", [], resolution="STATIC"), passthrough) == "ORIGINAL_DST"


def test_locality_setting_and_failover() -> None:
    dr = rule({"host": "api", "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 1}}})
    plan = plan_outbound_clusters(build_scope(MeshSnapshot([dr], [SERVICE], []), CLIENT))[0]
    assert plan.locality_setting == {"enabled": True} and plan.failover_enabled
    no_mesh_default = TranslateOptions(mesh_locality_lb_setting=None)
    plan = plan_outbound_clusters(build_scope(MeshSnapshot([dr], [SERVICE], []), CLIENT, no_mesh_default))[0]
    assert plan.locality_setting is None
    plan = plan_outbound_clusters(build_scope(MeshSnapshot([], [SERVICE], []), CLIENT))[0]
    assert not plan.failover_enabled and plan.policy is None and plan.rule is None
