"""Registry: durable Services, leased instances, ServiceEntry/WorkloadEntry contributions, protocols."""

from __future__ import annotations

import asyncio

import pytest

from tulle.controlplane.model import Resource, Service, WorkloadInstance
from tulle.controlplane.registry import (
    SERVICE_API_VERSION,
    Registry,
    RegistryError,
    port_protocol,
    service_resource,
    validate_service,
)
from tulle.controlplane.store import MemoryStore, SqliteStore


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def registry(clock: FakeClock) -> Registry:
    return Registry(MemoryStore(), clock=clock)


def service_entry(name: str, namespace: str = "default", **spec: object) -> Resource:
    return Resource(kind="ServiceEntry", api_version="networking.istio.io/v1", name=name, namespace=namespace,
                    spec=dict(spec))


def workload_entry(name: str, address: str, namespace: str = "default", **labels: str) -> Resource:
    return Resource(kind="WorkloadEntry", api_version="networking.istio.io/v1", name=name, namespace=namespace,
                    spec={"address": address, "labels": labels, "ports": {"http": 9080}})


def by_hostname(services: list[Service]) -> dict[str, Service]:
    return {service.hostname: service for service in services}


def instances_of(instances: list[WorkloadInstance], hostname: str) -> list[str]:
    return sorted(instance.address for instance in instances if hostname in instance.service_hostnames)


# --- protocols --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "app_protocol", "protocol", "expected"), [
    ("http", None, None, "HTTP"),
    ("http-web", None, None, "HTTP"),
    ("HTTP2", None, None, "HTTP2"),
    ("http2-api", None, None, "HTTP2"),
    ("grpc", None, None, "GRPC"),
    ("grpc-web", None, None, "GRPC-WEB"),
    ("grpc-web-frontend", None, None, "GRPC-WEB"),
    ("grpc-backend", None, None, "GRPC"),
    ("tcp-db", None, None, "TCP"),
    ("tls", None, None, "TLS"),
    ("https-admin", None, None, "HTTPS"),
    ("mongo", None, None, "MONGO"),
    ("redis-cache", None, None, "REDIS"),
    ("mysql", None, None, "MYSQL"),
    ("", None, None, "TCP"),  # unnamed: Istio sniffs, Tulle treats as TCP
    ("web", None, None, "TCP"),  # not <protocol>[-suffix]
    ("httpfoo", None, None, "TCP"),  # the prefix must end at a dash
    ("foo-http", None, None, "TCP"),
    ("udp", None, None, "TCP"),  # UDP comes only from the L4 protocol
    ("tcp", "http", None, "HTTP"),  # appProtocol wins over the name
    ("http", "grpc", None, "GRPC"),
    ("http", "kubernetes.io/h2c", None, "HTTP2"),
    ("tcp", "kubernetes.io/ws", None, "HTTP"),
    ("tcp", "kubernetes.io/wss", None, "HTTPS"),
    ("http", "example.com/custom", None, "TCP"),  # appProtocol replaces the name even when unknown
    ("http", "grpc", "TCP", "TCP"),  # an explicit protocol wins over everything
    ("web", None, "UDP", "UDP"),
    ("web", None, "redis", "REDIS"),
])
def test_port_protocol(name: str, app_protocol: str | None, protocol: str | None, expected: str) -> None:
    assert port_protocol(name, app_protocol, protocol) == expected


# --- services ---------------------------------------------------------------------------


def test_put_service_persists_as_a_store_resource(clock: FakeClock) -> None:
    store = MemoryStore()
    registry = Registry(store, clock=clock)
    service = registry.put_service("reviews", "prod", [{"name": "http", "port": 9080},
                                                        {"name": "metrics", "port": 15090, "appProtocol": "http"},
                                                        {"port": 5000, "targetPort": 5001}], labels={"app": "reviews"})
    assert service.hostname == "reviews.prod.svc.cluster.local"
    assert [(p.name, p.port, p.protocol, p.target_port) for p in service.ports] == [
        ("http", 9080, "HTTP", 0), ("metrics", 15090, "HTTP", 0), ("5000", 5000, "TCP", 5001)]
    stored = store.get("Service", "prod", "reviews")
    assert stored is not None and stored.api_version == SERVICE_API_VERSION
    assert stored.spec["ports"][0] == {"name": "http", "port": 9080}
    assert registry.services() == [service]


def test_services_and_instances_survive_a_restart_and_leases_start_afresh(tmp_path, clock: FakeClock) -> None:
    store = SqliteStore(tmp_path)
    registry = Registry(store, clock=clock)
    registry.put_service("reviews", "default", [{"name": "http", "port": 9080}])
    kept = registry.register("reviews-1", "default", "10.0.0.1", {"http": 9080}, labels={"v": "1"},
                             service_account="sa", locality="eu/west", services=["reviews"], ttl=10, weight=3)
    gone = registry.register("reviews-2", "default", "10.0.0.2", services=["reviews"], ttl=10)
    registry.deregister(gone)
    clock.advance(9)  # one second left on the lease when the control plane stops
    registry.close()
    store.close()

    clock.advance(60)  # down for a minute: no heartbeat could have arrived
    reopened = SqliteStore(tmp_path)
    try:
        restarted = Registry(reopened, clock=clock)
        services, instances = restarted.snapshot()
        assert [s.hostname for s in services] == ["reviews.default.svc.cluster.local"]
        (instance,) = instances
        assert (instance.name, instance.address, instance.ports, instance.labels, instance.service_account,
                instance.locality, instance.weight) == ("reviews-1", "10.0.0.1", {"http": 9080}, {"v": "1"}, "sa",
                                                        "eu/west", 3)
        assert instance.service_hostnames == ("reviews.default.svc.cluster.local",)
        clock.advance(9)  # a whole TTL from the restart, not what was left before it
        assert restarted.heartbeat(kept)
        # Registering the same workload again replaces the restored lease.
        again = restarted.register("reviews-1", "default", "10.0.0.1", services=["reviews"])
        assert [lease.id for lease in restarted.leases()] == [again]
        restarted.close()
    finally:
        reopened.close()


def test_expired_leases_are_not_restored(tmp_path, clock: FakeClock) -> None:
    store = SqliteStore(tmp_path)
    registry = Registry(store, clock=clock)
    registry.register("a", "default", "10.0.0.1", ttl=5)
    registry.save_leases()
    clock.advance(6)
    registry.expire()
    registry.close()
    store.close()
    reopened = SqliteStore(tmp_path)
    try:
        assert Registry(reopened, clock=clock).leases() == []
    finally:
        reopened.close()


# --- leases while the control plane is stalled ------------------------------------------


def test_a_lease_survives_a_stall_of_the_control_plane(registry: Registry, clock: FakeClock) -> None:
    lease_id = registry.register("a", "default", "10.0.0.1", ttl=10)
    registry.sweep(1.0)
    clock.advance(25)  # the event loop was blocked: no sweep, no heartbeat answered for 25 s
    assert registry.lease(lease_id) is not None  # the lateness is not lease time, even before a sweep
    assert registry.sweep(1.0) == []
    assert registry.heartbeat(lease_id)


def test_a_dead_lease_still_expires_after_a_stall(registry: Registry, clock: FakeClock) -> None:
    lease_id = registry.register("a", "default", "10.0.0.1", ttl=10)
    registry.sweep(1.0)
    clock.advance(25)
    registry.sweep(1.0)
    # Lease time counted 1.25 s of the stall (a sweep interval and the tolerance): 8.75 s are left.
    for _ in range(8):  # the control plane is responsive again: sweeps on time, no heartbeat
        clock.advance(1.0)
        assert registry.sweep(1.0) == []
    clock.advance(1.0)
    assert registry.sweep(1.0) == [lease_id]


def test_sweeps_on_time_do_not_extend_leases(registry: Registry, clock: FakeClock) -> None:
    lease_id = registry.register("a", "default", "10.0.0.1", ttl=3)
    registry.sweep(1.0)
    for _ in range(2):
        clock.advance(1.2)  # a little late: scheduling noise below the tolerance
        assert registry.sweep(1.0) == []
    clock.advance(0.6)
    assert registry.sweep(1.0) == [lease_id]


def test_remove_service(registry: Registry) -> None:
    registry.put_service("reviews", "default", [{"name": "http", "port": 9080}])
    assert registry.remove_service("default", "reviews") is True
    assert registry.remove_service("default", "reviews") is False
    assert registry.services() == []


@pytest.mark.parametrize(("spec", "field"), [
    ({"ports": []}, "spec.ports"),
    ({"ports": [{"name": "http", "port": 0}]}, "spec.ports[0].port"),
    ({"ports": [{"name": "http", "port": "80"}]}, "spec.ports[0].port"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}]}, "spec.ports[1].port"),
    ({"ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]}, "spec.ports[1].name"),
    ({"ports": [{"name": "a", "port": 80, "protocol": "QUIC"}]}, "spec.ports[0].protocol"),
    ({"ports": [{"name": "a", "port": 80, "targetport": 81}]}, "spec.ports[0].targetport"),
    ({"ports": [{"name": "a", "port": 80}], "selecter": {"app": "x"}}, "spec.selecter"),
    ({"ports": [{"name": "a", "port": 80}], "selector": {"version": 1}}, "spec.selector[version]"),
    ({"ports": [{"name": "a", "port": 80}], "resolution": "MAGIC"}, "spec.resolution"),
    ({"ports": [{"name": "HTTP web", "port": 80}]}, "spec.ports[0].name"),
    ({"ports": [{"name": f"p{i}", "port": 1000 + i} for i in range(101)]}, "spec.ports"),
    ({"ports": [{"name": "a", "port": 80}], "selector": {"app": "a b"}}, "spec.selector[app]"),
    ({"ports": [{"name": "a", "port": 80}], "addresses": ["not-an-ip"]}, "spec.addresses[0]"),
    ({"ports": [{"name": "a", "port": 80}], "addresses": ["10.0.0.0/33"]}, "spec.addresses[0]"),
    ({"ports": [{"name": "a", "port": 80}], "exportTo": ["Prod"]}, "spec.exportTo[0]"),
])
def test_invalid_services_are_refused(registry: Registry, spec: dict, field: str) -> None:
    resource = Resource(kind="Service", api_version=SERVICE_API_VERSION, name="svc", spec=spec)
    assert field in [d.field for d in validate_service(resource)]
    rest = {key: value for key, value in spec.items() if key not in ("ports", "selector")}
    with pytest.raises(RegistryError, match=field.replace("[", r"\[").replace("]", r"\]")):
        registry.put_service("svc", "default", spec["ports"], selector=spec.get("selector"), **rest)
    assert registry.store.list() == []


def test_service_name_must_be_a_dns_label(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="metadata.name"):
        registry.put_service("Reviews_v1", "default", [{"name": "http", "port": 80}])
    wrong_version = service_resource("ok", "default", [{"name": "http", "port": 80}])
    wrong_version = Resource(**{**wrong_version.__dict__, "api_version": "v1"})
    assert [d.field for d in validate_service(wrong_version)] == ["apiVersion"]


# --- leases -----------------------------------------------------------------------------


def test_instance_disappears_after_ttl_without_heartbeat(registry: Registry, clock: FakeClock) -> None:
    registry.put_service("reviews", "default", [{"name": "http", "port": 9080}])
    lease_id = registry.register("reviews-1", "default", "10.0.0.1", {"http": 9080}, services=["reviews"], ttl=10)
    _, instances = registry.snapshot()
    assert instances_of(instances, "reviews.default.svc.cluster.local") == ["10.0.0.1"]

    clock.advance(9.9)
    assert registry.expire() == []
    assert len(registry.snapshot()[1]) == 1
    clock.advance(0.2)
    # Past the deadline it is gone from snapshots even before expire() collects it.
    assert registry.snapshot()[1] == []
    assert registry.expire() == [lease_id]
    assert registry.heartbeat(lease_id) is False


def test_heartbeats_keep_an_instance(registry: Registry, clock: FakeClock) -> None:
    lease_id = registry.register("reviews-1", "default", "10.0.0.1", ttl=10)
    for _ in range(5):
        clock.advance(8)
        assert registry.heartbeat(lease_id) is True
        assert registry.expire() == []
    assert [i.address for i in registry.snapshot()[1]] == ["10.0.0.1"]
    clock.advance(10)
    assert registry.expire() == [lease_id]


def test_heartbeat_after_deadline_fails_even_before_expiry_runs(registry: Registry, clock: FakeClock) -> None:
    lease_id = registry.register("reviews-1", "default", "10.0.0.1", ttl=5)
    clock.advance(6)
    assert registry.heartbeat(lease_id) is False
    assert registry.leases() == []


def test_default_ttl_is_thirty_seconds(registry: Registry, clock: FakeClock) -> None:
    lease_id = registry.register("a", "default", "10.0.0.1")
    clock.advance(29)
    assert registry.expire() == []
    clock.advance(1)
    assert registry.expire() == [lease_id]


def test_deregister(registry: Registry) -> None:
    lease_id = registry.register("a", "default", "10.0.0.1")
    assert registry.deregister(lease_id) is True
    assert registry.deregister(lease_id) is False
    assert registry.heartbeat(lease_id) is False
    assert registry.snapshot()[1] == []


def test_registering_the_same_workload_again_replaces_the_lease(registry: Registry) -> None:
    first = registry.register("a", "default", "10.0.0.1")
    second = registry.register("a", "default", "10.0.0.1")
    assert first != second
    assert [lease.id for lease in registry.leases()] == [second]
    registry.register("a", "default", "10.0.0.2")
    assert len(registry.leases()) == 2


@pytest.mark.parametrize(("bad", "field"), [
    ({"address": ""}, "address"),
    ({"address": "not-an-ip"}, "address"),  # a host name, for an instance of no DNS service
    ({"address": "10.0.0.300"}, "address"),
    ({"address": "0.0.0.0"}, "address"),
    ({"address": "::"}, "address"),
    ({"address": "224.0.0.1"}, "address"),
    ({"address": "255.255.255.255"}, "address"),
    ({"address": "10.0.0.1:80"}, "address"),
    ({"name": "Reviews_1"}, "name"),
    ({"name": "x" * 254}, "name"),
    ({"namespace": "Prod"}, "namespace"),
    ({"namespace": "a.b"}, "namespace"),
    ({"ports": {"http": 0}}, "ports[http]"),
    ({"ports": {"http": 65536}}, "ports[http]"),
    ({"ports": {"http": "80"}}, "ports[http]"),
    ({"ports": {"http": True}}, "ports[http]"),
    ({"ports": {"bad name": 80}}, "ports[bad name]"),
    ({"ports": {f"p{i}": 1000 + i for i in range(101)}}, "ports"),
    ({"labels": {"v": 1}}, "labels[v]"),
    ({"labels": {"-v": "1"}}, "labels[-v]"),
    ({"labels": {"Example.com/v": "1"}}, "labels[Example.com/v]"),
    ({"labels": {"v": "x" * 64}}, "labels[v]"),
    ({"labels": {"v": "a b"}}, "labels[v]"),
    ({"labels": {f"l{i}": "x" for i in range(65)}}, "labels"),
    ({"service_account": "Bad SA"}, "serviceAccount"),
    ({"locality": "a/b/c/d"}, "locality"),
    ({"locality": "a//c"}, "locality"),
    ({"locality": "*"}, "locality"),
    ({"services": "reviews"}, "services"),
    ({"services": ["bad host!"]}, "services[0]"),
    ({"services": [f"s{i}" for i in range(65)]}, "services"),
    ({"ttl": 0}, "ttlSeconds"),
    ({"ttl": -1}, "ttlSeconds"),
    ({"ttl": 0.5}, "ttlSeconds"),
    ({"ttl": 86401}, "ttlSeconds"),
    ({"ttl": float("inf")}, "ttlSeconds"),
    ({"ttl": float("nan")}, "ttlSeconds"),
    ({"ttl": True}, "ttlSeconds"),
    ({"weight": 0}, "weight"),
    ({"weight": 65536}, "weight"),
])
def test_invalid_registrations_are_refused_naming_the_field(registry: Registry, bad: dict, field: str) -> None:
    arguments = {"name": "a", "namespace": "default", "address": "10.0.0.1", **bad}
    with pytest.raises(RegistryError) as refused:
        registry.register(**arguments)
    assert [d.field for d in refused.value.diagnostics] == [field]
    assert refused.value.diagnostics[0].resource.startswith("instance ")
    assert registry.leases() == []


def test_every_valid_form_is_accepted(registry: Registry) -> None:
    registry.register("reviews-v1.vm", "prod-1", "fd00::1", {"http": 9080, "9443": 9443},
                      labels={"app.kubernetes.io/name": "reviews", "version": "v1", "empty": ""},
                      service_account="bookinfo.reviews", locality="eu-west1/eu-west1-b/rack_1",
                      services=["reviews", "reviews.prod-1.svc.cluster.local."], ttl=86400, weight=65535)
    registry.register("a", "default", "127.0.10.4", ttl=1, locality="us")
    assert len(registry.leases()) == 2


def test_a_host_name_address_is_only_for_instances_of_dns_services(registry: Registry) -> None:
    registry.put_service("static", "default", [{"name": "http", "port": 80}])
    registry.put_service("external", "default", [{"name": "http", "port": 80}], resolution="DNS")
    for services in ([], ["static"], ["external", "static"], ["unknown"]):
        with pytest.raises(RegistryError, match="a host name is allowed only for an instance of DNS services"):
            registry.register("vm", "default", "vm-1.example.com", services=services)
    registry.register("vm", "default", "vm-1.example.com", services=["external"])
    _, instances = registry.snapshot()
    assert instances_of(instances, "external.default.svc.cluster.local") == ["vm-1.example.com"]


def test_short_and_qualified_service_names_resolve(registry: Registry) -> None:
    registry.put_service("reviews", "prod", [{"name": "http", "port": 9080}])
    registry.register("a", "prod", "10.0.0.1", services=["reviews"])
    registry.register("b", "default", "10.0.0.2", services=["reviews.prod"])
    registry.register("c", "default", "10.0.0.3", services=["reviews.prod.svc"])
    registry.register("d", "default", "10.0.0.4", services=["reviews.prod.svc.cluster.local"])
    _, instances = registry.snapshot()
    assert instances_of(instances, "reviews.prod.svc.cluster.local") == ["10.0.0.1", "10.0.0.2", "10.0.0.3",
                                                                        "10.0.0.4"]


def test_domain_suffix_is_configurable(clock: FakeClock) -> None:
    registry = Registry(MemoryStore(), clock=clock, domain_suffix="mesh.internal")
    registry.put_service("reviews", "default", [{"name": "http", "port": 9080}])
    registry.register("a", "default", "10.0.0.1", services=["reviews"])
    services, instances = registry.snapshot()
    assert services[0].hostname == "reviews.default.svc.mesh.internal"
    assert instances[0].service_hostnames == ("reviews.default.svc.mesh.internal",)


def test_service_selector_picks_registered_instances_and_workload_entries(registry: Registry) -> None:
    registry.put_service("reviews", "default", [{"name": "http", "port": 9080}], selector={"app": "reviews"})
    registry.register("r1", "default", "10.0.0.1", labels={"app": "reviews", "version": "v1"})
    registry.register("other", "default", "10.0.0.2", labels={"app": "ratings"})
    registry.register("elsewhere", "prod", "10.0.0.3", labels={"app": "reviews"})
    registry.store.apply([workload_entry("vm-1", "10.1.0.1", app="reviews")])
    _, instances = registry.snapshot()
    assert instances_of(instances, "reviews.default.svc.cluster.local") == ["10.0.0.1", "10.1.0.1"]


def test_async_run_expiry_collects_leases(clock: FakeClock) -> None:
    registry = Registry(MemoryStore(), clock=clock)
    registry.register("a", "default", "10.0.0.1", ttl=1)
    heard: list[bool] = []
    registry.subscribe(heard.append)  # expire() notifies once it dropped the lease
    clock.advance(2)

    async def scenario() -> None:
        task = asyncio.create_task(registry.run_expiry(0.001))
        for _ in range(500):
            await asyncio.sleep(0.001)
            if heard:
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert heard == [True]
    assert registry.expire() == []  # already collected


# --- ServiceEntry / WorkloadEntry -------------------------------------------------------


def test_service_entry_hosts_times_ports_with_endpoints(registry: Registry) -> None:
    registry.store.apply([service_entry(
        "external", hosts=["api.example.com", "API.example.org"], location="MESH_EXTERNAL", resolution="DNS",
        ports=[{"number": 443, "name": "https", "protocol": "HTTPS"}, {"number": 80, "name": "web", "protocol": "http"},
               {"number": 8000, "name": "http-alt"}],
        endpoints=[{"address": "1.2.3.4", "ports": {"https": 8443}, "locality": "eu/west/a", "weight": 3},
                   {"address": "5.6.7.8"}],
        exportTo=["."], addresses=["240.0.0.1"],
    )])
    services, instances = registry.snapshot()
    found = by_hostname(services)
    assert sorted(found) == ["api.example.com", "api.example.org"]
    for service in found.values():
        assert [(p.port, p.protocol) for p in service.ports] == [(443, "HTTPS"), (80, "HTTP"), (8000, "TCP")]
        assert (service.resolution, service.export_to, service.addresses) == ("DNS", (".",), ("240.0.0.1",))
        assert service.origin == "ServiceEntry default/external"
    assert instances_of(instances, "api.example.com") == ["1.2.3.4", "5.6.7.8"]
    first = next(i for i in instances if i.address == "1.2.3.4")
    assert (first.ports, first.locality, first.weight, first.name) == ({"https": 8443}, "eu/west/a", 3, "external-0")
    assert first.service_hostnames == ("api.example.com", "api.example.org")


def test_service_entry_resolution_defaults_to_none(registry: Registry) -> None:
    registry.store.apply([service_entry("e", hosts=["db.example.com"], ports=[{"number": 5432, "name": "tcp"}])])
    services, _ = registry.snapshot()
    assert services[0].resolution == "NONE"


def test_workload_selector_selects_workload_entries_and_instances_in_its_namespace(registry: Registry) -> None:
    registry.store.apply([
        service_entry("vms", hosts=["vm.internal"], ports=[{"number": 9080, "name": "http", "protocol": "HTTP"}],
                      resolution="STATIC", workloadSelector={"labels": {"app": "vm"}}),
        workload_entry("vm-1", "10.1.0.1", app="vm"),
        workload_entry("vm-2", "10.1.0.2", app="other"),
        workload_entry("vm-3", "10.1.0.3", namespace="prod", app="vm"),
    ])
    registry.register("agent", "default", "10.2.0.1", labels={"app": "vm"})
    _, instances = registry.snapshot()
    assert instances_of(instances, "vm.internal") == ["10.1.0.1", "10.2.0.1"]
    vm1 = next(i for i in instances if i.name == "vm-1")
    assert vm1.ports == {"http": 9080}
    # Unselected WorkloadEntries are still instances (e.g. for their own inbound config), backing nothing.
    assert next(i for i in instances if i.name == "vm-2").service_hostnames == ()


def test_a_workload_entry_backing_two_services_is_one_instance(registry: Registry) -> None:
    registry.put_service("reviews", "default", [{"name": "http", "port": 9080}], selector={"app": "reviews"})
    registry.store.apply([
        service_entry("legacy", hosts=["reviews.legacy"], ports=[{"number": 9080, "name": "http", "protocol": "HTTP"}],
                      workloadSelector={"labels": {"app": "reviews"}}),
        workload_entry("vm", "10.1.0.1", app="reviews"),
    ])
    _, instances = registry.snapshot()
    assert len(instances) == 1
    assert set(instances[0].service_hostnames) == {"reviews.default.svc.cluster.local", "reviews.legacy"}


def test_registry_service_wins_over_a_service_entry_with_the_same_host(registry: Registry) -> None:
    registry.put_service("reviews", "default", [{"name": "http", "port": 9080}])
    registry.store.apply([service_entry(
        "dup", hosts=["reviews.default.svc.cluster.local"], ports=[{"number": 1, "name": "tcp", "protocol": "TCP"}],
        endpoints=[{"address": "10.9.9.9"}])])
    services, instances = registry.snapshot()
    assert [(s.hostname, s.origin) for s in services] == [("reviews.default.svc.cluster.local", "registry")]
    assert instances_of(instances, "reviews.default.svc.cluster.local") == ["10.9.9.9"]


# --- subscribers ------------------------------------------------------------------------


def test_subscribers_hear_whether_a_change_is_endpoints_only(registry: Registry, clock: FakeClock) -> None:
    heard: list[bool] = []
    registry.subscribe(heard.append)
    registry.put_service("reviews", "default", [{"name": "http", "port": 9080}])
    assert heard == [False]
    lease_id = registry.register("a", "default", "10.0.0.1", services=["reviews"], ttl=5)
    assert heard == [False, True]
    registry.heartbeat(lease_id)
    assert heard == [False, True]  # a renewal changes nothing
    clock.advance(6)
    registry.expire()
    assert heard == [False, True, True]
    registry.store.apply([workload_entry("vm", "10.1.0.1", app="x")])
    assert heard[-1] is True
    registry.store.apply([Resource(kind="VirtualService", api_version="networking.istio.io/v1", name="vs")])
    assert len(heard) == 4  # not a registry kind


def test_instances_of_dns_services_need_a_full_push(registry: Registry) -> None:
    registry.put_service("legacy", "default", [{"name": "http", "port": 80}], resolution="DNS")
    heard: list[bool] = []
    registry.subscribe(heard.append)
    lease_id = registry.register("a", "default", "legacy-host.example", services=["legacy"])
    registry.deregister(lease_id)
    registry.store.apply([workload_entry("vm", "10.1.0.1", app="x")])
    assert heard == [False, False, False]


def test_close_stops_listening_to_the_store(registry: Registry) -> None:
    heard: list[bool] = []
    registry.subscribe(heard.append)
    registry.close()
    registry.store.apply([service_entry("e", hosts=["x.example.com"], ports=[{"number": 80, "name": "http"}])])
    assert heard == []


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.lists = 0

    def list(self, kind=None, namespace=None):  # type: ignore[no-untyped-def]
        self.lists += 1
        return super().list(kind, namespace)


def test_registering_does_not_rebuild_the_mesh_each_time(clock: FakeClock) -> None:
    """Registration must stay cheap in a big mesh: the store is read once per change of its
    registry resources, and snapshot() is rebuilt only when something changed."""
    store = CountingStore()
    registry = Registry(store, clock=clock)
    registry.put_service("reviews", "default", [{"name": "http", "port": 9080}], selector={"app": "reviews"})
    reads = store.lists
    for index in range(200):
        registry.register(f"reviews-{index}", "default", f"10.0.{index // 250}.{index % 250}",
                          labels={"app": "reviews"})
    assert store.lists - reads <= 1
    first = registry.snapshot()
    assert registry.snapshot() == first and store.lists - reads <= 1
    assert len(first[1]) == 200


def test_a_cached_snapshot_still_drops_a_lease_past_its_deadline(registry: Registry, clock: FakeClock) -> None:
    registry.register("a", "default", "10.0.0.1", ttl=10)
    assert len(registry.snapshot()[1]) == 1
    clock.advance(10.1)  # expiry has not run yet
    assert registry.snapshot()[1] == []
