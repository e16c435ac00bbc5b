"""Sidecar listeners: outbound per port, the HTTP forward proxy, inbound; TCP proxies."""

from __future__ import annotations

from typing import Any

from envoy.config.listener.v3 import listener_pb2

from tulle.config.loader import parse_message
from tulle.controlplane.model import (
    MeshSnapshot,
    ProxyIdentity,
    Resource,
    Service,
    ServicePort,
    WorkloadInstance,
)
from tulle.controlplane.translate.listeners import (
    forward_proxy_listener,
    http_filters,
    inbound_listener,
    outbound_listeners,
    outbound_ports,
    tcp_proxy,
)
from tulle.controlplane.translate.routes import CORS_FILTER, FAULT_FILTER, inbound_route_configuration
from tulle.controlplane.translate.scope import ProxyScope, build_scope

SUFFIX = "svc.cluster.local"


def svc(name: str, *ports: tuple[str, int, str], namespace: str = "default") -> Service:
    return Service(f"{name}.{namespace}.{SUFFIX}", namespace, [ServicePort(n, p, proto) for n, p, proto in ports])


def scope_of(services: list[Service], resources: list[Resource] = (), instances: list[WorkloadInstance] = (),
             labels: dict[str, str] | None = None) -> ProxyScope:
    proxy = ProxyIdentity("me", "default", tuple(sorted((labels or {}).items())), workload_name="me")
    return build_scope(MeshSnapshot(list(resources), services, list(instances)), proxy)


def test_ports_by_protocol_with_the_first_service_deciding() -> None:
    services = [svc("a", ("http", 8080, "HTTP"), ("tcp", 5432, "TCP")), svc("b", ("tcp", 8080, "TCP")),
                svc("c", ("mongo", 5432, "MONGO")), svc("d", ("http", 5432, "HTTP")),
                Service("*.wild.example", "default", [ServicePort("tls", 443, "TLS")]),
                Service("z.example", "default", [ServicePort("tls", 443, "TLS")])]
    ports = outbound_ports(scope_of(services))
    assert ports.http == [8080]
    assert {port: service.hostname for port, (service, _) in ports.tcp.items()} == {
        443: "z.example", 5432: f"a.default.{SUFFIX}"}  # concrete hosts before wildcards
    assert ports.skipped == []


def test_the_workloads_own_ports_and_reserved_ports_get_no_outbound_listener() -> None:
    own = svc("me", ("http", 9080, "HTTP"))
    mine = WorkloadInstance("me", "default", "10.0.0.1", {"http": 9080}, service_hostnames=(own.hostname,))
    scope = scope_of([own, svc("x", ("http", 9080, "HTTP"), ("http", 15001, "HTTP"), ("http", 81, "HTTP"))],
                     instances=[mine])
    ports = outbound_ports(scope)
    assert ports.http == [81] and ports.skipped == [9080, 15001]


def test_outbound_listeners_bind_loopback_with_rds_and_needed_filters() -> None:
    scope = scope_of([svc("a", ("http", 8080, "HTTP")), svc("db", ("tcp", 5432, "TCP"))])
    listeners = outbound_listeners(scope, outbound_ports(scope), {"8080": {FAULT_FILTER}})
    assert [listener["name"] for listener in listeners] == ["127.0.0.1_5432", "127.0.0.1_8080"]
    http = listeners[1]
    assert http["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 8080}}
    assert http["traffic_direction"] == "OUTBOUND"
    manager = http["filter_chains"][0]["filters"][0]["typed_config"]
    assert manager["rds"]["route_config_name"] == "8080" and manager["rds"]["config_source"]["ads"] == {}
    assert [f["name"] for f in manager["http_filters"]] == [FAULT_FILTER, "envoy.filters.http.router"]
    assert manager["stat_prefix"] == "outbound_127.0.0.1_8080"
    for listener in listeners:
        parse_message(listener, listener_pb2.Listener)


def test_http_filter_order() -> None:
    assert [f["name"] for f in http_filters({FAULT_FILTER, CORS_FILTER})] == [
        CORS_FILTER, FAULT_FILTER, "envoy.filters.http.router"]


def tcp_config(scope: ProxyScope, service: Service) -> dict[str, Any]:
    return tcp_proxy(scope, service, service.ports[0])["typed_config"]


def test_tcp_proxy_follows_the_first_applicable_tcp_route() -> None:
    db = svc("db", ("tcp", 5432, "TCP"))
    vs = Resource("VirtualService", "networking.istio.io/v1", "db", spec={"hosts": ["db"], "tcp": [
        {"match": [{"sourceLabels": {"role": "batch"}}], "route": [{"destination": {"host": "db", "subset": "ro"}}]},
        {"match": [{"port": 5432}], "route": [
            {"destination": {"host": "db", "subset": "v1"}, "weight": 80},
            {"destination": {"host": "db", "subset": "v2"}, "weight": 20},
            {"destination": {"host": "db", "subset": "v3"}, "weight": 0}]},
    ]})
    rule = Resource("DestinationRule", "networking.istio.io/v1", "db", spec={"host": "db", "trafficPolicy": {
        "connectionPool": {"tcp": {"idleTimeout": "5m"}}}})
    config = tcp_config(scope_of([db], [vs, rule]), db)
    assert "cluster" not in config and config["idle_timeout"] == "300s"
    assert config["weighted_clusters"]["clusters"] == [
        {"name": f"outbound|5432|v1|{db.hostname}", "weight": 80}, {"name": f"outbound|5432|v2|{db.hostname}",
                                                                   "weight": 20}]
    batch = tcp_config(scope_of([db], [vs], labels={"role": "batch"}), db)
    assert batch["cluster"] == f"outbound|5432|ro|{db.hostname}"
    plain = tcp_config(scope_of([db]), db)
    assert plain == {"@type": plain["@type"], "stat_prefix": f"outbound|5432||{db.hostname}",
                     "cluster": f"outbound|5432||{db.hostname}"}


def test_forward_proxy_listener_accepts_absolute_urls() -> None:
    listener = forward_proxy_listener(scope_of([]), {CORS_FILTER})
    parse_message(listener, listener_pb2.Listener)
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert listener["name"] == "http_forward_proxy"
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 15001}
    assert manager["http_protocol_options"] == {"allow_absolute_url": True}
    assert manager["rds"]["route_config_name"] == "http_proxy"
    assert manager["http_filters"][0]["name"] == CORS_FILTER


def test_inbound_listener_routes_by_host_port_to_inbound_clusters() -> None:
    own = svc("me", ("http", 80, "HTTP"), ("grpc", 9090, "GRPC"), ("tcp", 5000, "TCP"))
    mine = WorkloadInstance("me", "default", "10.0.0.1", {"http": 8080}, service_hostnames=(own.hostname,))
    scope = scope_of([own], instances=[mine])
    routes = inbound_route_configuration(scope, "inbound|http")
    assert [(vh["name"], vh["domains"]) for vh in routes["virtual_hosts"]] == [
        ("inbound|http|8080", ["*:80", "*:8080", "*"]), ("inbound|http|9090", ["*:9090"])]
    assert routes["virtual_hosts"][1]["routes"][0]["route"]["cluster"] == "inbound|9090||"
    listener = inbound_listener(scope, routes)
    parse_message(listener, listener_pb2.Listener)
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 15006}
    assert listener["traffic_direction"] == "INBOUND"
    assert listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"] is routes
    assert inbound_route_configuration(scope_of([own]), "x") is None  # not this proxy's service
