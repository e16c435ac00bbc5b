"""ClusterLoadAssignments: subset filtering, ports, health, localities and locality load balancing."""

from __future__ import annotations

from envoy.config.endpoint.v3 import endpoint_pb2

from tulle.config.loader import parse_message
from tulle.controlplane.model import (
    MeshSnapshot,
    ProxyIdentity,
    Resource,
    Service,
    ServicePort,
    WorkloadInstance,
)
from tulle.controlplane.translate.endpoints import (
    Endpoint,
    LocalityGroup,
    apply_failover_priority,
    apply_locality_failover,
    apply_locality_weights,
    cluster_endpoints,
    group_by_locality,
    load_assignment,
    locality_matches,
    locality_priority,
    parse_locality,
)
from tulle.controlplane.translate.plan import plan_outbound_clusters
from tulle.controlplane.translate.scope import build_scope
from tulle.upstream.cluster import parse_assignment

HOST = "api.default.svc.cluster.local"


def instance(name: str, address: str, locality: str = "", **labels: str) -> WorkloadInstance:
    return WorkloadInstance(name, "default", address, {"http": 8080}, labels, locality=locality,
                            service_hostnames=(HOST,))


def plans(resources: list[Resource], instances: list[WorkloadInstance], resolution: str = "STATIC",
          proxy: ProxyIdentity | None = None) -> tuple:
    service = Service(HOST, "default", [ServicePort("http", 80, "HTTP", 8080)], resolution=resolution)
    scope = build_scope(MeshSnapshot(resources, [service], instances),
                        proxy or ProxyIdentity("c", "default", workload_name="c"))
    return scope, {plan.name: plan for plan in plan_outbound_clusters(scope)}


def endpoint(locality: str, weight: int = 1, **labels: str) -> Endpoint:
    return Endpoint("10.0.0.1", 80, weight, True, parse_locality(locality), labels)


def test_subsets_filter_by_labels_and_ports_come_from_the_instance() -> None:
    dr = Resource("DestinationRule", "v1", "r", spec={"host": "api", "subsets": [{"name": "v2",
                                                                                  "labels": {"v": "2"}}]})
    instances = [instance("a", "10.0.0.2", v="1"), instance("b", "10.0.0.1", v="2"),
                 WorkloadInstance("c", "default", "10.0.0.3", {}, {"v": "2"}, healthy=False, weight=5,
                                  service_hostnames=(HOST,)),
                 instance("no-address", "", v="2")]
    scope, by_name = plans([dr], instances)
    every = cluster_endpoints(scope, by_name[f"outbound|80||{HOST}"])
    assert [(e.address, e.port) for e in every] == [("10.0.0.1", 8080), ("10.0.0.2", 8080), ("10.0.0.3", 8080)]
    subset = cluster_endpoints(scope, by_name[f"outbound|80|v2|{HOST}"])
    assert [(e.address, e.healthy, e.weight) for e in subset] == [("10.0.0.1", True, 1), ("10.0.0.3", False, 5)]
    assignment = load_assignment(scope, by_name[f"outbound|80|v2|{HOST}"])
    statuses = [lb["health_status"] for group in assignment["endpoints"] for lb in group["lb_endpoints"]]
    assert statuses == ["HEALTHY", "UNHEALTHY"]
    assert assignment["endpoints"][0]["load_balancing_weight"] == 6
    parse_message(assignment, endpoint_pb2.ClusterLoadAssignment)


def test_endpoints_a_proxy_would_refuse_are_left_out_and_the_others_still_sent(caplog) -> None:
    good = [instance("good-1", "10.0.0.1"), instance("good-2", "fd00::2")]
    bad = [instance("not-an-ip", "not-an-ip"), instance("unix", "unix:///var/run/app.sock"),
           WorkloadInstance("port-0", "default", "10.0.0.3", {"http": 0}, service_hostnames=(HOST,)),
           WorkloadInstance("port-big", "default", "10.0.0.4", {"http": 70000}, service_hostnames=(HOST,)),
           WorkloadInstance("heavy", "default", "10.0.0.5", {"http": 8080}, weight=2**32, service_hostnames=(HOST,))]
    scope, by_name = plans([], good + bad)
    plan = by_name[f"outbound|80||{HOST}"]
    assert [e.address for e in cluster_endpoints(scope, plan)] == ["10.0.0.1", "fd00::2"]
    # What the proxy itself parses (and would NACK as a whole if one endpoint were bad).
    parse_assignment(parse_message(load_assignment(scope, plan), endpoint_pb2.ClusterLoadAssignment), "eds")
    assert "instance default/not-an-ip left out: address 'not-an-ip' is not an IP address" in caplog.text
    assert "instance default/port-big left out: port 70000 is not 1-65535" in caplog.text

    # Host names back DNS clusters (as Istio's DNS-only WorkloadEntries); junk still does not.
    scope, by_name = plans([], [instance("a", "a.example.com"), instance("b", "bad host!")], resolution="DNS")
    assert [e.address for e in cluster_endpoints(scope, by_name[f"outbound|80||{HOST}"])] == ["a.example.com"]


def test_a_bad_endpoint_is_logged_once_not_at_every_push(caplog) -> None:
    scope, by_name = plans([], [instance("bad", "999.0.0.1")])
    for _ in range(3):
        assert cluster_endpoints(scope, by_name[f"outbound|80||{HOST}"]) == []
    assert caplog.text.count("instance default/bad left out") == 1


def test_dns_services_without_endpoints_resolve_their_host() -> None:
    scope, by_name = plans([], [], resolution="DNS")
    (only,) = cluster_endpoints(scope, by_name[f"outbound|80||{HOST}"])
    assert (only.address, only.port) == (HOST, 8080)
    scope, by_name = plans([], [instance("a", "a.example.com")], resolution="DNS")
    assert [e.address for e in cluster_endpoints(scope, by_name[f"outbound|80||{HOST}"])] == ["a.example.com"]
    scope, by_name = plans([], [], resolution="NONE")
    assert cluster_endpoints(scope, by_name[f"outbound|80||{HOST}"]) == []


def test_endpoints_group_by_locality_sorted() -> None:
    groups = group_by_locality([endpoint("b/z"), endpoint("a/z/s"), endpoint("b/z", weight=3), endpoint("")])
    assert [group.locality for group in groups] == [("", "", ""), ("a", "z", "s"), ("b", "z", "")]
    assert groups[2].to_json()["load_balancing_weight"] == 4
    assert "locality" not in groups[0].to_json()
    assert groups[1].to_json()["locality"] == {"region": "a", "zone": "z", "sub_zone": "s"}


def test_locality_patterns_and_priorities() -> None:
    assert locality_matches(("us", "a", "1"), "us/*")
    assert locality_matches(("us", "a", "1"), "us")
    assert locality_matches(("us", "a", "1"), "*")
    assert not locality_matches(("us", "a", "1"), "us/b/*")
    proxy = ("us", "a", "1")
    assert [locality_priority(proxy, other) for other in (("us", "a", "1"), ("us", "a", "2"), ("us", "b", "1"),
                                                          ("eu", "a", "1"))] == [0, 1, 2, 3]


def test_failover_orders_by_closeness_and_demotes_other_regions() -> None:
    groups = [LocalityGroup(parse_locality(text), [endpoint(text)]) for text in ("eu/a/1", "us/a/1", "ap/a/1",
                                                                                "us/b/1")]
    apply_locality_failover(groups, ("us", "a", "1"), [{"from": "us", "to": "eu"}])
    assert [(group.locality[0], group.priority) for group in groups] == [("eu", 2), ("us", 0), ("ap", 3), ("us", 1)]
    groups = [LocalityGroup(parse_locality(text), [endpoint(text)]) for text in ("eu/a/1", "ap/a/1")]
    apply_locality_failover(groups, ("us", "a", "1"), [])
    assert [group.priority for group in groups] == [0, 0]  # gaps closed: both remote regions are priority 0


def test_distribute_sets_locality_weights_and_drops_the_rest() -> None:
    groups = [LocalityGroup(parse_locality(text), [endpoint(text, weight)]) for text, weight in (
        ("us/a/1", 1), ("us/a/2", 3), ("us/b/1", 1), ("eu/a/1", 1))]
    apply_locality_weights(groups, ("us", "a", "1"), [
        {"from": "eu/*", "to": {"eu/*": 100}},
        {"from": "us/a/*", "to": {"us/a/*": 80, "us/b/*": 20}},
    ])
    assert [group.weight for group in groups] == [20, 60, 20, 0]
    assert groups[3].endpoints == [] and "load_balancing_weight" not in groups[3].to_json()


def test_failover_priority_splits_localities_by_label_agreement() -> None:
    group = LocalityGroup(("us", "a", "1"), [endpoint("us/a/1", net="n1", zone="z1"),
                                            endpoint("us/a/1", net="n1", zone="z2"),
                                            endpoint("us/a/1", net="n2", zone="z1")])
    split = apply_failover_priority([group], {"net": "n1", "zone": "z1"}, ["net", "zone"])
    assert [(g.priority, [e.labels for e in g.endpoints]) for g in split] == [
        (0, [{"net": "n1", "zone": "z1"}]), (1, [{"net": "n1", "zone": "z2"}]), (2, [{"net": "n2", "zone": "z1"}])]
    forced = apply_failover_priority([group], {"net": "n1"}, ["net=n2"])
    assert [g.priority for g in forced] == [0, 1] and forced[0].endpoints[0].labels["net"] == "n2"
    assert apply_failover_priority([group], {}, ["net"]) == [group]


def test_locality_lb_applies_only_with_outlier_detection_for_failover() -> None:
    me = WorkloadInstance("c", "default", "10.9.9.9", {}, locality="us/a/1")
    instances = [me, instance("far", "10.0.0.1", "eu/a/1"), instance("near", "10.0.0.2", "us/a/1")]
    proxy = ProxyIdentity("c", "default", workload_name="c")
    with_outlier = Resource("DestinationRule", "v1", "r", spec={"host": "api", "trafficPolicy": {
        "outlierDetection": {"consecutive5xxErrors": 2}}})
    scope, by_name = plans([with_outlier], instances, proxy=proxy)
    priorities = [g.get("priority", 0) for g in load_assignment(scope, by_name[f"outbound|80||{HOST}"])["endpoints"]]
    assert priorities == [1, 0]
    scope, by_name = plans([], instances, proxy=proxy)
    priorities = [g.get("priority", 0) for g in load_assignment(scope, by_name[f"outbound|80||{HOST}"])["endpoints"]]
    assert priorities == [0, 0]
