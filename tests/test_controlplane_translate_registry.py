"""ServiceEntries and WorkloadEntries as services and instances; target ports."""

from __future__ import annotations

from tulle.controlplane.model import MeshSnapshot, Resource, Service, ServicePort, WorkloadInstance
from tulle.controlplane.translate.registry import build_registry, target_port


def entry(kind: str, name: str, spec: dict, namespace: str = "default", labels: dict | None = None) -> Resource:
    return Resource(kind, "networking.istio.io/v1", name, namespace, spec=spec, labels=labels or {})


def test_a_service_entry_gives_one_service_per_host() -> None:
    snapshot = MeshSnapshot([entry("ServiceEntry", "ext", {
        "hosts": ["a.example.com", "B.example.com"], "resolution": "DNS", "exportTo": ["."],
        "addresses": ["240.0.0.1"],
        "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}, {"number": 80, "name": "http", "protocol": "http",
                                                                     "targetPort": 8080}],
    })], [], [])
    registry = build_registry(snapshot)
    assert [service.hostname for service in registry.services] == ["a.example.com", "b.example.com"]
    service = registry.services[0]
    assert service.resolution == "DNS" and service.export_to == (".",) and service.addresses == ("240.0.0.1",)
    assert service.origin == "ServiceEntry default/ext"
    assert [(p.name, p.port, p.protocol, p.target_port) for p in service.ports] == [
        ("tls", 443, "TLS", 0), ("http", 80, "HTTP", 8080)]
    assert registry.instances == []


def test_resolution_defaults_to_none() -> None:
    snapshot = MeshSnapshot([entry("ServiceEntry", "x", {"hosts": ["x.internal"], "ports": []})], [], [])
    assert build_registry(snapshot).services[0].resolution == "NONE"


def test_inline_endpoints_become_instances_of_every_host() -> None:
    snapshot = MeshSnapshot([entry("ServiceEntry", "db", {
        "hosts": ["db.internal", "db2.internal"], "resolution": "STATIC",
        "ports": [{"number": 5432, "name": "tcp", "protocol": "TCP"}],
        "endpoints": [{"address": "10.0.0.5", "ports": {"tcp": 15432}, "labels": {"v": "1"}, "weight": 3,
                       "locality": "r/z", "serviceAccount": "db"}],
    })], [], [])
    registry = build_registry(snapshot)
    (instance,) = registry.instances
    assert instance.service_hostnames == ("db.internal", "db2.internal")
    assert (instance.address, instance.ports, instance.labels, instance.weight, instance.locality) == (
        "10.0.0.5", {"tcp": 15432}, {"v": "1"}, 3, "r/z")
    assert registry.instances_of("db2.internal") == [instance]
    assert registry.instances_of("other") == []


def test_workload_selector_picks_entries_and_instances_of_its_namespace_only() -> None:
    resources = [
        entry("ServiceEntry", "vm", {"hosts": ["vm.internal"], "resolution": "STATIC",
                                     "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                                     "workloadSelector": {"labels": {"app": "vm"}}}),
        entry("WorkloadEntry", "vm-1", {"address": "10.1.0.1", "labels": {"app": "vm"}}),
        entry("WorkloadEntry", "vm-other", {"address": "10.1.0.2", "labels": {"app": "vm"}}, namespace="other"),
        entry("WorkloadEntry", "db-1", {"address": "10.1.0.3", "labels": {"app": "db"}}),
    ]
    pod = WorkloadInstance("pod-1", "default", "10.2.0.1", {"http": 8080}, {"app": "vm"})
    registry = build_registry(MeshSnapshot(resources, [], [pod]))
    backing = registry.instances_of("vm.internal")
    assert sorted(instance.address for instance in backing) == ["10.1.0.1", "10.2.0.1"]
    assert all(instance.service_hostnames == ("vm.internal",) for instance in backing)
    assert pod.service_hostnames == ()  # the snapshot's own instance is left alone


def test_hosts_the_snapshot_already_carries_are_not_duplicated() -> None:
    existing = Service("a.example.com", "default", [ServicePort("http", 80, "HTTP")], origin="ServiceEntry default/ext")
    snapshot = MeshSnapshot([entry("ServiceEntry", "ext", {"hosts": ["a.example.com"], "ports": [],
                                                           "endpoints": [{"address": "1.2.3.4"}]})], [existing], [])
    registry = build_registry(snapshot)
    assert registry.services == [existing]
    assert registry.instances == []


def test_target_port_by_name_then_number_then_target_port() -> None:
    port = ServicePort("http", 80, "HTTP", target_port=8080)
    assert target_port(WorkloadInstance("a", "d", "1.1.1.1", {"http": 9000}), port) == 9000
    assert target_port(WorkloadInstance("a", "d", "1.1.1.1", {"80": 9001}), port) == 9001
    assert target_port(WorkloadInstance("a", "d", "1.1.1.1", {}), port) == 8080
    assert target_port(WorkloadInstance("a", "d", "1.1.1.1", {}), ServicePort("http", 80, "HTTP")) == 80
