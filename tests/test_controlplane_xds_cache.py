"""Snapshot versions, watches that wake only for changed types, and node status bookkeeping."""

from __future__ import annotations

import asyncio
import threading

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from google.protobuf import duration_pb2, struct_pb2

from tulle.controlplane.xds import types
from tulle.controlplane.xds.cache import Snapshot, SnapshotCache

# --- resource builders (shared with test_controlplane_xds_server) ------------------------------


def make_listener(name: str, port: int, route_name: str = "r1") -> listener_pb2.Listener:
    message = listener_pb2.Listener(name=name)
    message.address.socket_address.address = "0.0.0.0"
    message.address.socket_address.port_value = port
    message.stat_prefix = route_name
    return message


def make_cluster(name: str, timeout_seconds: int = 1) -> cluster_pb2.Cluster:
    return cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.EDS,
        connect_timeout=duration_pb2.Duration(seconds=timeout_seconds),
    )


def make_route(name: str, cluster: str) -> route_pb2.RouteConfiguration:
    route = route_components_pb2.Route(
        match=route_components_pb2.RouteMatch(prefix="/"),
        route=route_components_pb2.RouteAction(cluster=cluster),
    )
    host = route_components_pb2.VirtualHost(name=f"{name}-vh", domains=["*"], routes=[route])
    return route_pb2.RouteConfiguration(name=name, virtual_hosts=[host])


def make_endpoints(cluster: str, *ips: str, port: int = 8080) -> endpoint_pb2.ClusterLoadAssignment:
    lb_endpoints = [
        endpoint_components_pb2.LbEndpoint(
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=ip, port_value=port)
                )
            )
        )
        for ip in ips
    ]
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=cluster,
        endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb_endpoints)],
    )


def make_snapshot(
    *,
    clusters: tuple[str, ...] = ("c1", "c2"),
    listener_port: int = 8080,
    c1_ip: str = "10.0.0.1",
    route_cluster: str = "c1",
) -> Snapshot:
    """Two listeners, two routes, the given clusters and one endpoint each."""
    messages = [
        make_listener("l1", listener_port, "r1"),
        make_listener("l2", 9090, "r2"),
        make_route("r1", route_cluster),
        make_route("r2", "c2"),
    ]
    for cluster in clusters:
        messages.append(make_cluster(cluster))
        messages.append(make_endpoints(cluster, c1_ip if cluster == "c1" else "10.0.1.1"))
    return Snapshot.from_messages(messages)


def make_node(node_id: str, **metadata: str) -> base_pb2.Node:
    node = base_pb2.Node(id=node_id, cluster="reviews.default")
    node.metadata.CopyFrom(struct_pb2.Struct())
    node.metadata.update(metadata)
    return node


# --- Snapshot ----------------------------------------------------------------------------------


def test_snapshot_groups_messages_by_type_and_xds_name() -> None:
    snapshot = make_snapshot()
    assert set(snapshot.type_urls) == {types.LISTENER, types.ROUTE, types.CLUSTER, types.ENDPOINT}
    assert snapshot.type_urls[0] == types.CLUSTER  # listed in push order
    assert set(snapshot.resources(types.ENDPOINT)) == {"c1", "c2"}
    assert snapshot.resources(types.ROUTE)["r2"].virtual_hosts[0].routes[0].route.cluster == "c2"
    assert snapshot.version(types.SECRET) == "" and not snapshot.has_type(types.SECRET)
    assert snapshot.resources(types.SECRET) == {}


def test_versions_are_stable_hashes_of_content() -> None:
    first, again = make_snapshot(), make_snapshot()
    for type_url in first.type_urls:
        assert first.version(type_url) == again.version(type_url) != ""
        assert first.resource_versions(type_url) == again.resource_versions(type_url)
    moved = make_snapshot(c1_ip="10.9.9.9")
    assert moved.resource_versions(types.ENDPOINT)["c1"] != first.resource_versions(types.ENDPOINT)["c1"]
    assert moved.resource_versions(types.ENDPOINT)["c2"] == first.resource_versions(types.ENDPOINT)["c2"]
    assert moved.changed_types(first) == {types.ENDPOINT}
    assert first.changed_types(None) == set(first.type_urls)


def test_serialized_bytes_round_trip() -> None:
    snapshot = make_snapshot()
    data = snapshot.serialized(types.CLUSTER, "c1")
    assert cluster_pb2.Cluster.FromString(data) == snapshot.resources(types.CLUSTER)["c1"]


def test_explicit_type_versions_override_hashes() -> None:
    snapshot = Snapshot({types.CLUSTER: {"c1": make_cluster("c1")}}, {types.CLUSTER: "v7"})
    assert snapshot.version(types.CLUSTER) == "v7"
    assert snapshot.resource_versions(types.CLUSTER)["c1"] != "v7"
    with pytest.raises(ValueError, match="no resources entry"):
        Snapshot({}, {types.LISTENER: "v1"})


def test_dropped_type_counts_as_changed() -> None:
    full = make_snapshot()
    only_clusters = Snapshot({types.CLUSTER: dict(full.resources(types.CLUSTER))})
    assert only_clusters.changed_types(full) == {types.LISTENER, types.ROUTE, types.ENDPOINT}


def test_snapshot_refuses_mismatched_or_duplicate_resources() -> None:
    with pytest.raises(TypeError, match="envoy.config.cluster.v3.Cluster"):
        Snapshot({types.LISTENER: {"c1": make_cluster("c1")}})
    with pytest.raises(ValueError, match="duplicate CDS resource 'c1'"):
        Snapshot.from_messages([make_cluster("c1"), make_cluster("c1", 2)])


# --- cache and watches -------------------------------------------------------------------------


def test_set_get_clear() -> None:
    cache = SnapshotCache()
    assert cache.get_snapshot("n1") is None
    snapshot = make_snapshot()
    assert cache.set_snapshot("n1", snapshot) == set(snapshot.type_urls)
    assert cache.get_snapshot("n1") is snapshot
    assert cache.node_ids() == ["n1"]
    assert cache.set_snapshot("n1", make_snapshot()) == frozenset()  # same content: nothing changed
    assert cache.clear("n1") and not cache.clear("n1")
    assert cache.get_snapshot("n1") is None


def test_watches_wake_only_for_changed_types_of_their_node() -> None:
    cache = SnapshotCache()
    cache.set_snapshot("n1", make_snapshot())
    seen: dict[str, list[frozenset[str]]] = {"any": [], "eds": [], "cds": [], "other": []}
    cache.watch("n1", seen["any"].append)
    cache.watch("n1", seen["eds"].append, [types.ENDPOINT])
    cache.watch("n1", seen["cds"].append, [types.CLUSTER])
    cache.watch("n2", seen["other"].append)

    cache.set_snapshot("n1", make_snapshot(c1_ip="10.2.2.2"))
    assert seen == {"any": [{types.ENDPOINT}], "eds": [{types.ENDPOINT}], "cds": [], "other": []}

    cache.set_snapshot("n1", make_snapshot(c1_ip="10.2.2.2", listener_port=8181))
    assert seen["any"][-1] == {types.LISTENER} and len(seen["eds"]) == 1 and seen["cds"] == []


def test_cancelled_watch_is_not_called_and_a_failing_one_does_not_block_others() -> None:
    cache = SnapshotCache()
    calls: list[frozenset[str]] = []

    def broken(_changed: frozenset[str]) -> None:
        raise RuntimeError("boom")

    cache.watch("n1", broken)
    cancelled = cache.watch("n1", calls.append)
    kept = cache.watch("n1", calls.append)
    cancelled.cancel()
    cancelled.cancel()  # idempotent
    cache.set_snapshot("n1", make_snapshot())
    assert len(calls) == 1
    kept.cancel()


def test_wait_for_change_returns_at_once_or_after_a_newer_version() -> None:
    async def main() -> None:
        cache = SnapshotCache()
        first = make_snapshot()
        cache.set_snapshot("n1", first)
        assert await cache.wait_for_change("n1", types.CLUSTER, "") is first

        waiter = asyncio.create_task(
            cache.wait_for_change("n1", types.ENDPOINT, first.version(types.ENDPOINT))
        )
        await asyncio.sleep(0)
        cache.set_snapshot("n1", make_snapshot(listener_port=1))  # LDS only: keeps waiting
        await asyncio.sleep(0)
        assert not waiter.done()
        # A snapshot set from another thread still wakes the waiter.
        newer = make_snapshot(c1_ip="10.3.3.3")
        thread = threading.Thread(target=cache.set_snapshot, args=("n1", newer))
        thread.start()
        assert await asyncio.wait_for(waiter, 10) is newer  # a deadline: the thread may start late
        thread.join()
        assert cache._watches == {}  # the waiter's watch is gone

    asyncio.run(main())


# --- node status -------------------------------------------------------------------------------


def test_stream_bookkeeping_and_hooks() -> None:
    events: list[tuple[str, str]] = []
    cache = SnapshotCache(
        on_node_connected=lambda node: events.append(("connected", node.id)),
        on_node_disconnected=lambda node_id: events.append(("disconnected", node_id)),
    )
    first = cache.stream_opened(make_node("n1", ISTIO_VERSION="1.22"), "sotw")
    second = cache.stream_opened(make_node("n1", ISTIO_VERSION="1.23"), "delta")
    assert events == [("connected", "n1")]
    status = cache.node_status("n1")
    assert status is not None and set(status.streams) == {first.stream_id, second.stream_id}
    assert status.metadata == {"ISTIO_VERSION": "1.23"} and status.cluster == "reviews.default"

    first.record_subscription(types.CLUSTER, [], wildcard=True)
    first.record_sent(types.CLUSTER, "v1", "n-1", 2)
    assert first.types[types.CLUSTER].sync_state == "STALE"
    first.record_ack(types.CLUSTER, "v1", "n-1")
    assert first.types[types.CLUSTER].sync_state == "SYNCED"
    second.record_sent(types.CLUSTER, "v2", "n-9", 2)
    second.record_nack(types.CLUSTER, "v2", "n-9", "bad cluster")
    assert second.types[types.CLUSTER].sync_state == "NACKED"
    assert status.types()[types.CLUSTER] is second.types[types.CLUSTER]  # the newer stream wins
    rendered = status.to_dict()
    assert rendered["node_id"] == "n1" and len(rendered["streams"]) == 2
    assert rendered["streams"][0]["types"][0]["subscribed"] == ["*"]
    assert rendered["streams"][1]["types"][0]["last_nack"]["message"] == "bad cluster"

    cache.stream_closed(first)
    assert events == [("connected", "n1")] and cache.node_status("n1") is not None
    cache.stream_closed(second)
    cache.stream_closed(second)  # twice is harmless
    assert events == [("connected", "n1"), ("disconnected", "n1")]
    assert cache.node_status("n1") is None and cache.node_statuses() == []


def test_a_failing_connect_hook_does_not_fail_the_stream() -> None:
    def hook(_node: base_pb2.Node) -> None:
        raise RuntimeError("translation failed")

    cache = SnapshotCache(on_node_connected=hook)
    stream = cache.stream_opened(make_node("n1"), "sotw")
    assert [s.node_id for s in cache.node_statuses()] == ["n1"] and stream.protocol == "sotw"
    assert stream.type_status(types.LISTENER).sync_state == "NOT SENT"
