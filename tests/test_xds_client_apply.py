"""The xDS applier on one in-process worker: what it watches and what a response changes, and a
listener whose address another process listens on rejected whole (Envoy: "cannot bind ...: Address
already in use"), never shared through SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap

from proxy_harness import http_listener, static_cluster
from scripted_ads import assignment, eds_cluster, rds_listener, route_config
from tulle.config.loader import parse_message
from tulle.server.context import ServerState
from tulle.server.worker import Worker
from tulle.xds_client.apply import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    UpdateRejected,
    Watch,
    XdsApplier,
)

ADS = {"ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                      "grpc_services": [{"envoy_grpc": {"cluster_name": "xds"}}]}}


def _static_rds_listener(name: str, route: str, *, timeout: str | None = None) -> dict[str, Any]:
    listener = http_listener(name, 0, {})
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["route_config"]
    hcm["rds"] = {"route_config_name": route, "config_source": {"ads": {}}}
    if timeout is not None:
        hcm["rds"]["config_source"]["initial_fetch_timeout"] = timeout
    return listener


def _applier(listeners: list[dict[str, Any]] = (), clusters: list[dict[str, Any]] = ()) -> XdsApplier:
    bootstrap = parse_message({"dynamic_resources": ADS, "static_resources": {
        "listeners": list(listeners), "clusters": [static_cluster("xds", [1]), *clusters]}}, Bootstrap)
    return XdsApplier(Worker(bootstrap, ServerState()))


def _route_of(applier: XdsApplier, listener_name: str) -> Any:
    listener = next(item for item in applier.worker.listeners if item.name == listener_name)
    return listener.factory.config


def test_static_listeners_using_rds_are_watched_and_get_their_routes() -> None:
    applier = _applier([_static_rds_listener("ingress", "local", timeout="2s")])
    assert applier.watches(ROUTE_TYPE) == {"local": Watch("local", "http.ingress.rds.local.", 2.0)}
    config = _route_of(applier, "ingress")
    assert not config.route_table.virtual_hosts  # 404 until RDS arrives
    asyncio.run(applier.apply(ROUTE_TYPE, {"local": route_config("local", "xds")}, set(), True))
    assert [vhost.name for vhost in config.route_table.virtual_hosts] == ["all"]


def test_route_watch_names_stats_after_the_first_connection_manager_and_sanitizes_colons() -> None:
    applier = _applier([_static_rds_listener("first", "svc:9080"), _static_rds_listener("second", "svc:9080")])
    assert applier.watches(ROUTE_TYPE) == {"svc:9080": Watch("svc:9080", "http.first.rds.svc_9080.", 15.0)}


def test_static_and_dynamic_eds_clusters_are_watched_with_their_stats_prefix() -> None:
    static_eds = {"name": "ratings", "type": "EDS", "connect_timeout": "1s", "alt_stat_name": "ratings_alt",
                  "eds_cluster_config": {"service_name": "ratings.v1", "eds_config": {
                      "ads": {}, "initial_fetch_timeout": "0s"}}}
    applier = _applier(clusters=[static_eds])
    asyncio.run(applier.apply(CLUSTER_TYPE, {"reviews": eds_cluster("reviews")}, set(), True))
    assert applier.watches(ENDPOINT_TYPE) == {
        "ratings": Watch("ratings.v1", "cluster.ratings_alt.", 0.0),
        "reviews": Watch("reviews", "cluster.reviews.", 15.0),
    }
    assert applier.wanted(ENDPOINT_TYPE) == {"ratings.v1", "reviews"}


def test_a_partial_eds_response_changes_only_the_assignments_it_names() -> None:
    applier = _applier()

    async def scenario() -> None:
        await applier.apply(CLUSTER_TYPE, {"a": eds_cluster("a"), "b": eds_cluster("b")}, set(), True)
        await applier.apply(ENDPOINT_TYPE, {"a": assignment("a", 1001), "b": assignment("b", 2001)}, set(), True)
        await applier.apply(ENDPOINT_TYPE, {"a": assignment("a", 1002)}, set(), True)

    asyncio.run(scenario())
    ports = {name: [host.port for host in applier.worker.cluster_manager.get(name).hosts] for name in ("a", "b")}
    assert ports == {"a": [1002], "b": [2001]}
    assert set(applier.assignments) == {"a", "b"}


def test_a_partial_rds_response_changes_only_the_route_configurations_it_names() -> None:
    applier = _applier()

    async def scenario() -> None:
        await applier.apply(LISTENER_TYPE, {"one": rds_listener("one", 0, "r1", "one"),
                                            "two": rds_listener("two", 0, "r2", "two")}, set(), True)
        await applier.apply(ROUTE_TYPE, {"r1": route_config("r1", "xds", "first"),
                                         "r2": route_config("r2", "xds", "first")}, set(), True)
        tables = {name: dynamic.listener.factory.config.route_table for name, dynamic in applier.listeners.items()}
        await applier.apply(ROUTE_TYPE, {"r1": route_config("r1", "xds", "second")}, set(), True)
        assert applier.listeners["one"].listener.factory.config.route_table is not tables["one"]
        assert applier.listeners["two"].listener.factory.config.route_table is tables["two"]
        for dynamic in applier.listeners.values():
            applier._retire(dynamic)

    asyncio.run(scenario())
    assert applier.route_protos["r1"] == route_config("r1", "xds", "second")
    assert applier.route_protos["r2"] == route_config("r2", "xds", "first")


def test_routes_and_assignments_go_with_the_last_listener_or_cluster_using_them() -> None:
    applier = _applier()

    async def scenario() -> None:
        await applier.apply(CLUSTER_TYPE, {"a": eds_cluster("a"), "b": eds_cluster("b")}, set(), True)
        await applier.apply(ENDPOINT_TYPE, {"a": assignment("a", 1001), "b": assignment("b", 2001)}, set(), True)
        await applier.apply(LISTENER_TYPE, {"one": rds_listener("one", 0, "r1", "one"),
                                            "two": rds_listener("two", 0, "r2", "two")}, set(), True)
        await applier.apply(ROUTE_TYPE, {"r1": route_config("r1", "a"), "r2": route_config("r2", "b")}, set(), True)
        # SotW: CDS and LDS carry everything; what they no longer name goes, and with it what only it used
        await applier.apply(CLUSTER_TYPE, {"a": eds_cluster("a")}, set(), True)
        await applier.apply(LISTENER_TYPE, {"one": rds_listener("one", 0, "r1", "one")}, set(), True)
        assert set(applier.assignments) == {"a"}
        assert set(applier.route_protos) == {"r1"}
        # delta: a removed cluster takes its assignment along
        await applier.apply(CLUSTER_TYPE, {}, {"a"}, False)
        assert applier.assignments == {}
        # one added back waits for EDS rather than serving a stale assignment
        await applier.apply(CLUSTER_TYPE, {"b": eds_cluster("b")}, set(), True)
        assert applier.worker.cluster_manager.get("b").hosts == []
        for dynamic in applier.listeners.values():
            applier._retire(dynamic)

    asyncio.run(scenario())


def test_removing_an_assignment_or_route_by_name_keeps_it_as_envoy_does() -> None:
    applier = _applier()

    async def scenario() -> None:
        await applier.apply(CLUSTER_TYPE, {"a": eds_cluster("a")}, set(), False)
        await applier.apply(ENDPOINT_TYPE, {"a": assignment("a", 1001)}, set(), False)
        await applier.apply(ENDPOINT_TYPE, {}, {"a"}, False)

    asyncio.run(scenario())
    assert [host.port for host in applier.worker.cluster_manager.get("a").hosts] == [1001]


def _routes_to(name: str, cluster: str, validate_clusters: bool | None) -> Any:
    proto = route_config(name, cluster)
    if validate_clusters is not None:
        proto.validate_clusters.value = validate_clusters
    return proto


def test_rds_routes_naming_an_unknown_cluster_are_checked_only_when_they_ask_as_in_envoy() -> None:
    """Envoy checks an RDS route table's clusters only with validate_clusters: true (its default is
    false for RDS): a route naming a cluster CDS has not delivered yet answers 503 NC meanwhile."""
    applier = _applier([_static_rds_listener("ingress", "local")])
    config = _route_of(applier, "ingress")
    asyncio.run(applier.apply(ROUTE_TYPE, {"local": _routes_to("local", "not-yet", None)}, set(), True))
    assert config.route_table.referenced_clusters() == {"not-yet"}
    with pytest.raises(UpdateRejected, match="RouteConfiguration 'local': route references unknown cluster 'gone'"):
        asyncio.run(applier.apply(ROUTE_TYPE, {"local": _routes_to("local", "gone", True)}, set(), True))
    assert config.route_table.referenced_clusters() == {"not-yet"}  # the last good one serves
    asyncio.run(applier.apply(ROUTE_TYPE, {"local": _routes_to("local", "xds", True)}, set(), True))
    assert config.route_table.referenced_clusters() == {"xds"}


# --- a listener on an address another process holds ---------------------------------------------


def applier(worker_index: int = 0) -> XdsApplier:
    bootstrap = bootstrap_pb2.Bootstrap()
    bootstrap.node.id = "sidecar-1"
    return XdsApplier(Worker(bootstrap, ServerState(worker_index=worker_index)))


def another_proxys_listener() -> socket.socket:
    """What another Tulle proxy's worker holds: a listening SO_REUSEPORT socket."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


async def close_listeners(target: XdsApplier) -> None:
    for listener in target.worker.listeners:
        listener.stop_accepting()
        for sock in listener.sockets:
            sock.close()


def test_a_listener_on_an_address_in_use_is_rejected_and_nothing_is_applied() -> None:
    async def scenario() -> None:
        target = applier()
        with another_proxys_listener() as taken:
            port = taken.getsockname()[1]
            with pytest.raises(UpdateRejected) as caught:
                await target.apply(LISTENER_TYPE, {"outbound": rds_listener("outbound", port, "80")}, set(), True)
            assert str(caught.value) == (f"Listener 'outbound': cannot bind '127.0.0.1:{port}': "
                                         "Address already in use")
            assert target.listeners == {} and target.worker.listeners == []

    asyncio.run(scenario())


def test_the_main_process_binds_a_free_address_and_its_workers_join_it() -> None:
    async def scenario() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        main, worker = applier(0), applier(1)
        try:
            for target in (main, worker):  # the worker gets the update the main process applied
                await target.apply(LISTENER_TYPE, {"outbound": rds_listener("outbound", port, "80")}, set(), True)
                await target.apply(ROUTE_TYPE, {"80": route_config("80", "nowhere")}, set(), True)
                assert [listener.port for listener in target.worker.listeners] == [port]
            # a new version of the listener at the same address keeps its socket: not "in use"
            await main.apply(LISTENER_TYPE, {"outbound": rds_listener("outbound", port, "80", "renamed")},
                             set(), True)
            assert main.listeners["outbound"].listener.sockets[0].getsockname()[1] == port
        finally:
            await close_listeners(main)
            await close_listeners(worker)

    asyncio.run(scenario())
