"""Istio's API -> xDS for proxyless gRPC clients (translate.grpc)."""

from __future__ import annotations

from typing import Any

import pytest

from tulle.controlplane.model import (
    MeshSnapshot,
    ProxyIdentity,
    Resource,
    Service,
    ServicePort,
    WorkloadInstance,
)
from tulle.controlplane.translate.grpc import (
    CHANNEL_ID_KEY,
    MAX_RING_SIZE,
    grpc_hash_policy,
    grpc_retry_policy,
    grpc_route,
    is_proxyless,
    listener_names,
    translate_grpc,
    translate_grpc_json,
)
from tulle.controlplane.translate.routes import CORS_FILTER, FAULT_FILTER, retry_policy
from tulle.controlplane.translate.translate import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    to_dicts,
)

REVIEWS = "reviews.default.svc.cluster.local"
RATINGS = "ratings.prod.svc.cluster.local"
REVIEWS_ROUTE = f"outbound|9080||{REVIEWS}"


def istio(kind: str, name: str, spec: dict[str, Any], namespace: str = "default") -> Resource:
    return Resource(kind, "networking.istio.io/v1", name, namespace, spec=spec)


def mesh(*resources: Resource) -> MeshSnapshot:
    services = [Service(REVIEWS, "default", [ServicePort("grpc", 9080, "GRPC")]),
                Service(RATINGS, "prod", [ServicePort("grpc", 9090, "GRPC"), ServicePort("grpc-admin", 9091, "GRPC")])]
    instances = [
        WorkloadInstance(f"reviews-{version}", "default", f"10.0.0.{n}", {"grpc": 5000 + n},
                         {"app": "reviews", "version": version}, service_hostnames=(REVIEWS,))
        for n, version in enumerate(("v1", "v2"), start=1)
    ] + [WorkloadInstance("ratings-1", "prod", "10.0.1.1", {"grpc": 6000}, {"app": "ratings"},
                          locality="eu/zone-a/", service_hostnames=(RATINGS,))]
    return MeshSnapshot(list(resources), services, instances)


def client(namespace: str = "default") -> ProxyIdentity:
    return ProxyIdentity(f"sidecar~10.0.9.9~client.{namespace}~{namespace}.svc.cluster.local", namespace)


def routes_of(snapshot: MeshSnapshot, name: str = REVIEWS_ROUTE) -> list[dict[str, Any]]:
    configuration = translate_grpc_json(snapshot, client())[ROUTE_TYPE][name]
    assert len(configuration["virtual_hosts"]) == 1
    return configuration["virtual_hosts"][0]["routes"]


def test_proxyless_nodes_are_named_by_generator_metadata_or_id_prefix() -> None:
    assert is_proxyless("sidecar~10.0.0.1~a.default~default.svc.cluster.local", {"GENERATOR": "grpc"})
    assert is_proxyless("proxyless~10.0.0.1~a.default~default.svc.cluster.local", {})
    assert not is_proxyless("sidecar~10.0.0.1~a.default~default.svc.cluster.local", {"TULLE_AGENT": True})
    assert not is_proxyless("router~10.0.0.1~gw.default~default.svc.cluster.local", {"GENERATOR": "envoy"})


def test_listener_names_are_every_target_a_client_may_dial_from_its_namespace() -> None:
    reviews = Service(REVIEWS, "default", [ServicePort("grpc", 9080, "GRPC")])
    port = reviews.ports[0]
    same = listener_names(reviews, port, "default", "cluster.local")
    assert same[0] == f"{REVIEWS}:9080"
    assert set(same) == {f"{REVIEWS}:9080", "reviews:9080", "reviews.default:9080", "reviews.default.svc:9080"}
    other = listener_names(reviews, port, "prod", "cluster.local")
    assert "reviews:9080" not in other and "reviews.default:9080" in other
    external = Service("api.example.com", "default", [ServicePort("grpc", 443, "GRPC")])
    assert listener_names(external, external.ports[0], "default", "cluster.local") == ["api.example.com:443"]


def test_every_listener_is_an_api_listener_with_rds_and_the_filters_grpc_knows() -> None:
    listeners = translate_grpc_json(mesh(), client())[LISTENER_TYPE]
    # ratings lives in "prod": no bare short name for a client in "default"
    assert "ratings:9090" not in listeners and "ratings.prod:9091" in listeners
    assert {"reviews:9080", f"{REVIEWS}:9080", f"{RATINGS}:9090", f"{RATINGS}:9091"} <= set(listeners)
    for name, listener in listeners.items():
        assert listener["name"] == name and "filter_chains" not in listener
        manager = listener["api_listener"]["api_listener"]
        assert manager["@type"].endswith("HttpConnectionManager")
        host, port = name.rsplit(":", 1)
        fqdn = REVIEWS if host.startswith("reviews") else RATINGS
        assert manager["rds"]["route_config_name"] == f"outbound|{port}||{fqdn}"
        assert "ads" in manager["rds"]["config_source"]
        assert [f["name"] for f in manager["http_filters"]] == [FAULT_FILTER, "envoy.filters.http.router"]


def test_a_name_two_services_could_claim_goes_to_the_service_whose_fqdn_it_is() -> None:
    # A ServiceEntry host spelled like another service's short name must not be shadowed by it.
    entry = istio("ServiceEntry", "odd", {"hosts": ["reviews.default"], "ports": [
        {"number": 9080, "name": "grpc", "protocol": "GRPC"}], "resolution": "DNS"})
    listeners = translate_grpc_json(mesh(entry), client())[LISTENER_TYPE]
    assert listeners["reviews.default:9080"]["api_listener"]["api_listener"]["rds"]["route_config_name"] == (
        "outbound|9080||reviews.default")
    assert listeners["reviews:9080"]["api_listener"]["api_listener"]["rds"]["route_config_name"] == REVIEWS_ROUTE


def test_route_configuration_has_the_services_one_virtual_host_with_its_names() -> None:
    routes = translate_grpc_json(mesh(), client())[ROUTE_TYPE]
    assert set(routes) == {REVIEWS_ROUTE, f"outbound|9090||{RATINGS}", f"outbound|9091||{RATINGS}"}
    virtual_host = routes[REVIEWS_ROUTE]["virtual_hosts"][0]
    # gRPC picks the virtual host by the target's authority: every listener name must be a domain.
    listener_targets = [name for name in translate_grpc_json(mesh(), client())[LISTENER_TYPE] if "reviews" in name]
    assert set(listener_targets) <= set(virtual_host["domains"])
    assert virtual_host["routes"][0]["route"]["cluster"] == REVIEWS_ROUTE


def test_virtual_service_routes_keep_matches_splits_and_faults_and_drop_what_grpc_refuses_or_ignores() -> None:
    subsets = istio("DestinationRule", "reviews", {"host": "reviews", "subsets": [
        {"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]})
    routing = istio("VirtualService", "reviews", {"hosts": ["reviews"], "http": [
        {"match": [{"headers": {"end-user": {"exact": "jason"}}}],
         "fault": {"abort": {"grpcStatus": "UNAVAILABLE", "percentage": {"value": 50}}},
         "corsPolicy": {"allowOrigins": [{"exact": "https://a.example"}]},
         "headers": {"request": {"set": {"x-a": "1"}}},
         "timeout": "2s",
         "route": [{"destination": {"host": "reviews", "subset": "v2"}}]},
        {"rewrite": {"uri": "/other"}, "mirror": {"host": "reviews", "subset": "v1"},
         "route": [{"destination": {"host": "reviews", "subset": "v1"}, "weight": 80,
                    "headers": {"request": {"set": {"x-b": "2"}}}},
                   {"destination": {"host": "reviews", "subset": "v2"}, "weight": 20}]},
    ]})
    first, second = routes_of(mesh(subsets, routing))
    assert first["match"]["headers"] == [{"name": "end-user", "string_match": {"exact": "jason"}}]
    assert set(first["typed_per_filter_config"]) == {FAULT_FILTER}  # CORS would make gRPC NACK
    assert first["typed_per_filter_config"][FAULT_FILTER]["abort"]["grpc_status"] == 14
    assert "request_headers_to_add" not in first
    action = first["route"]
    assert action["cluster"] == f"outbound|9080|v2|{REVIEWS}"
    assert action["max_stream_duration"] == {"max_stream_duration": "2s", "grpc_timeout_header_max": "2s"}
    assert "timeout" not in action
    split = second["route"]
    assert split["weighted_clusters"] == {"clusters": [
        {"name": f"outbound|9080|v1|{REVIEWS}", "weight": 80}, {"name": f"outbound|9080|v2|{REVIEWS}", "weight": 20}]}
    assert not {"prefix_rewrite", "request_mirror_policies", "max_stream_duration"} & set(split)


@pytest.mark.parametrize(("retries", "expected"), [
    (None, {"retry_on": "unavailable,cancelled", "num_retries": 2}),  # Istio's default policy
    ({"attempts": 3, "retryOn": "unavailable,connect-failure,503", "perTryTimeout": "1s", "backoff": "50ms"},
     {"retry_on": "unavailable", "num_retries": 3, "retry_back_off": {"base_interval": "0.05s"}}),
    ({"attempts": 4, "retryOn": "5xx,gateway-error"}, None),  # nothing gRPC can retry on
    ({"attempts": 0}, None),
])
def test_retry_policies_keep_only_what_grpc_implements(retries: dict[str, Any] | None,
                                                      expected: dict[str, Any] | None) -> None:
    assert grpc_retry_policy(retry_policy(retries, consistent_hash=False)) == expected


def test_retry_policy_in_a_route_follows_the_virtual_service() -> None:
    routing = istio("VirtualService", "reviews", {"hosts": ["reviews"], "http": [
        {"retries": {"attempts": 3, "retryOn": "unavailable,resource-exhausted"},
         "route": [{"destination": {"host": "reviews"}}]}]})
    assert routes_of(mesh(routing))[0]["route"]["retry_policy"] == {
        "retry_on": "unavailable,resource-exhausted", "num_retries": 3}
    assert "retry_policy" not in grpc_route({"match": {"prefix": "/"}, "route": {
        "cluster": "c", "retry_policy": {"retry_on": "connect-failure", "num_retries": 2}}})["route"]


def test_hash_policies_become_those_grpc_evaluates() -> None:
    header = {"header": {"header_name": "x-user"}}
    assert grpc_hash_policy([header]) == [header]
    assert grpc_hash_policy([{"connection_properties": {"source_ip": True}}]) == [
        {"filter_state": {"key": CHANNEL_ID_KEY}}]
    assert grpc_hash_policy([{"cookie": {"name": "session"}}, {"query_parameter": {"name": "q"}}]) == []
    action = grpc_route({"match": {"prefix": "/"}, "route": {"cluster": "c", "hash_policy": [{"cookie": {"name": "s"}}]}})
    assert "hash_policy" not in action["route"]


def test_direct_responses_stay_so_grpc_fails_the_calls_they_match() -> None:
    routing = istio("VirtualService", "reviews", {"hosts": ["reviews"], "http": [
        {"match": [{"headers": {"x-block": {"exact": "1"}}}], "directResponse": {"status": 503}},
        {"route": [{"destination": {"host": "reviews"}}]}]})
    blocked, default = routes_of(mesh(routing))
    assert blocked["direct_response"]["status"] == 503
    assert default["route"]["cluster"] == REVIEWS_ROUTE


def test_clusters_are_eds_with_round_robin_or_ring_hash() -> None:
    rule = istio("DestinationRule", "reviews", {"host": "reviews", "trafficPolicy": {
        "loadBalancer": {"simple": "LEAST_REQUEST"},
        "connectionPool": {"http": {"http2MaxRequests": 100, "http1MaxPendingRequests": 7}},
        "outlierDetection": {"consecutive5xxErrors": 3}},
        "subsets": [
            {"name": "sticky", "labels": {"version": "v1"},
             "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}}},
            {"name": "maglev", "labels": {"version": "v2"}, "trafficPolicy": {"loadBalancer": {
                "consistentHash": {"httpHeaderName": "x-user", "maglev": {"tableSize": 65537}}}}},
            {"name": "huge", "labels": {"version": "v2"}, "trafficPolicy": {"loadBalancer": {
                "consistentHash": {"httpHeaderName": "x-user", "ringHash": {"minimumRingSize": 2**24}}}}}]})
    clusters = translate_grpc_json(mesh(rule), client())[CLUSTER_TYPE]
    default = clusters[REVIEWS_ROUTE]
    assert default["type"] == "EDS" and default["eds_cluster_config"]["service_name"] == REVIEWS_ROUTE
    assert default["lb_policy"] == "ROUND_ROBIN"
    assert default["circuit_breakers"] == {"thresholds": [{"max_requests": 100}]}
    assert "outlier_detection" not in default  # gRPC ignores consecutive-error ejection
    sticky = clusters[f"outbound|9080|sticky|{REVIEWS}"]
    assert sticky["lb_policy"] == "RING_HASH" and sticky["ring_hash_lb_config"]["minimum_ring_size"] > 0
    assert clusters[f"outbound|9080|maglev|{REVIEWS}"]["lb_policy"] == "RING_HASH"
    assert clusters[f"outbound|9080|huge|{REVIEWS}"]["ring_hash_lb_config"] == {"minimum_ring_size": MAX_RING_SIZE}


def test_dns_services_get_one_logical_dns_address_and_passthrough_none() -> None:
    dns = istio("ServiceEntry", "api", {"hosts": ["api.example.com"], "resolution": "DNS", "ports": [
        {"number": 443, "name": "grpc", "protocol": "GRPC"}], "endpoints": [
        {"address": "a.example.com"}, {"address": "b.example.com"}]})
    passthrough = istio("ServiceEntry", "any", {"hosts": ["any.example.com"], "resolution": "NONE", "ports": [
        {"number": 443, "name": "grpc", "protocol": "GRPC"}]})
    resources = translate_grpc_json(mesh(dns, passthrough), client())
    cluster = resources[CLUSTER_TYPE]["outbound|443||api.example.com"]
    assert cluster["type"] == "LOGICAL_DNS"
    endpoints = cluster["load_assignment"]["endpoints"]
    assert len(endpoints) == 1 and len(endpoints[0]["lb_endpoints"]) == 1
    assert "outbound|443||api.example.com" not in resources[ENDPOINT_TYPE]
    assert "outbound|443||any.example.com" not in resources[CLUSTER_TYPE]


def test_every_locality_group_names_its_locality() -> None:
    assignments = translate_grpc_json(mesh(), client())[ENDPOINT_TYPE]
    groups = [group for assignment in assignments.values() for group in assignment["endpoints"]]
    assert groups and all("locality" in group for group in groups)
    assert assignments[f"outbound|9090||{RATINGS}"]["endpoints"][0]["locality"] == {"region": "eu", "zone": "zone-a"}
    # an empty locality survives the round trip through the protobuf message (gRPC checks presence)
    messages = translate_grpc(mesh(), client())[ENDPOINT_TYPE]
    assert messages[REVIEWS_ROUTE].endpoints[0].HasField("locality")


def test_sidecar_egress_scopes_what_a_client_gets() -> None:
    sidecar = istio("Sidecar", "default", {"egress": [{"hosts": ["./*"]}]})
    resources = translate_grpc_json(mesh(sidecar), client())
    assert all("ratings" not in name for name in resources[LISTENER_TYPE])
    assert set(resources[ROUTE_TYPE]) == {REVIEWS_ROUTE}


def test_messages_parse_and_translation_is_deterministic() -> None:
    rule = istio("DestinationRule", "reviews", {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]})
    first = to_dicts(translate_grpc(mesh(rule), client()))
    assert first == to_dicts(translate_grpc(mesh(rule), client()))
    assert set(first) == {CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE}
    assert f"outbound|9080|v1|{REVIEWS}" in first[CLUSTER_TYPE]
    assert CORS_FILTER not in str(first)
