"""The ADS server over real gRPC on 127.0.0.1, driven by a grpc.aio client playing Envoy.

"Nothing else was sent" is checked without waiting on a clock: the client then asks for something
that must be answered, and the next message on the stream has to be that answer (a stream's
responses leave in the order its events were handled).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.rpc import status_pb2

from test_controlplane_xds_cache import (
    make_cluster,
    make_endpoints,
    make_listener,
    make_node,
    make_route,
    make_snapshot,
)
from tulle.controlplane.xds import types
from tulle.controlplane.xds.cache import Snapshot, SnapshotCache
from tulle.controlplane.xds.server import DEFAULT_MAX_XDS_MESSAGE_BYTES, XdsServer, split_by_size

READ_TIMEOUT = 1.5  # a safety net against hanging, never an assertion


@asynccontextmanager
async def serving(cache: SnapshotCache, **options: Any) -> AsyncIterator[grpc.aio.Channel]:
    server = XdsServer(cache, **options)
    port = await server.start("127.0.0.1", 0)
    # The client takes anything: what the server sends and refuses is what these tests check.
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", -1)])
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(None)


def run(
    test: Callable[[SnapshotCache, grpc.aio.Channel], Awaitable[None]],
    cache: SnapshotCache | None = None,
    **options: Any,
) -> None:
    async def main() -> None:
        the_cache = cache or SnapshotCache()
        async with serving(the_cache, **options) as channel:
            await asyncio.wait_for(test(the_cache, channel), 10)

    asyncio.run(main())


class SotwClient:
    """One state-of-the-world ADS stream, answering like Envoy does."""

    def __init__(self, channel: grpc.aio.Channel, node: base_pb2.Node | str) -> None:
        self.node = make_node(node) if isinstance(node, str) else node
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
        self.sent_node = False
        self.applied: dict[str, str] = {}  # type URL -> version last accepted

    async def request(
        self,
        type_url: str,
        names: Iterable[str] = (),
        *,
        nonce: str = "",
        version: str | None = None,
        error: str | None = None,
    ) -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=list(names),
            response_nonce=nonce,
            version_info=self.applied.get(type_url, "") if version is None else version,
        )
        if not self.sent_node:
            request.node.CopyFrom(self.node)
            self.sent_node = True
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(request)

    async def read(self) -> discovery_pb2.DiscoveryResponse:
        response = await asyncio.wait_for(self.call.read(), READ_TIMEOUT)
        assert response is not grpc.aio.EOF, "stream ended"
        return response

    async def ack(self, response: discovery_pb2.DiscoveryResponse, names: Iterable[str] = ()) -> None:
        self.applied[response.type_url] = response.version_info
        await self.request(response.type_url, names, nonce=response.nonce)

    async def nack(
        self, response: discovery_pb2.DiscoveryResponse, message: str, names: Iterable[str] = ()
    ) -> None:
        await self.request(response.type_url, names, nonce=response.nonce, error=message)

    async def subscribe_all(self) -> dict[str, discovery_pb2.DiscoveryResponse]:
        """Envoy's start-up: CDS, EDS for c1/c2, LDS, RDS for r1/r2, each ACKed."""
        responses = {}
        for type_url, names in SUBSCRIPTIONS.items():
            await self.request(type_url, names)
            responses[type_url] = response = await self.read()
            assert response.type_url == type_url
            await self.ack(response, names)
        return responses


SUBSCRIPTIONS = {
    types.CLUSTER: (),
    types.ENDPOINT: ("c1", "c2"),
    types.LISTENER: (),
    types.ROUTE: ("r1", "r2"),
}


def subscriptions_of(cache: SnapshotCache, node_id: str) -> dict[str, tuple[str, ...]]:
    status = cache.node_status(node_id)
    return {} if status is None else {t: s.subscribed for t, s in status.types().items()}


def names_in(response: discovery_pb2.DiscoveryResponse | discovery_pb2.DeltaDiscoveryResponse) -> list[str]:
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return [resource.name for resource in response.resources]
    return [types.resource_name(unpack(any_message)) for any_message in response.resources]


def unpack(any_message: Any) -> Any:
    return MESSAGE_CLASSES[any_message.type_url].FromString(any_message.value)


MESSAGE_CLASSES = {
    types.CLUSTER: cluster_pb2.Cluster,
    types.ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    types.LISTENER: listener_pb2.Listener,
    types.ROUTE: route_pb2.RouteConfiguration,
}


# --- state of the world ------------------------------------------------------------------------



async def assert_eds_nacked(client: Any, cache: SnapshotCache, message: str) -> None:
    """After a split EDS update was answered: node n1's EDS is NACKED with ``message``, once the
    server has read every answer (a CDS request, answered after them, is the probe)."""
    await client.request(types.CLUSTER)
    assert (await client.read()).type_url == types.CLUSTER
    status = cache.node_status("n1")
    assert status is not None
    eds = status.types()[types.ENDPOINT]
    assert eds.sync_state == "NACKED" and eds.last_nack is not None
    assert eds.last_nack.message == message

def test_sotw_initial_push_of_all_four_types() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        snapshot = make_snapshot()
        cache.set_snapshot("n1", snapshot)
        client = SotwClient(channel, "n1")
        responses = await client.subscribe_all()
        assert len({r.nonce for r in responses.values()}) == 4
        for type_url, response in responses.items():
            assert response.version_info == snapshot.version(type_url)
            assert response.control_plane.identifier == "tulle"
            assert names_in(response) == sorted(snapshot.resources(type_url))
            for any_message in response.resources:
                message = unpack(any_message)
                assert message == snapshot.resources(type_url)[types.resource_name(message)]

    run(test)


def test_sotw_waits_for_a_snapshot_then_pushes() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        client = SotwClient(channel, "n1")
        await client.request(types.LISTENER)
        await client.request(types.CLUSTER)
        while not {types.LISTENER, types.CLUSTER} <= set(subscriptions_of(cache, "n1")):
            await asyncio.sleep(0.005)  # until the server has taken both requests in
        snapshot = make_snapshot()
        cache.set_snapshot("n1", snapshot)
        first, second = await client.read(), await client.read()
        assert [first.type_url, second.type_url] == [types.CLUSTER, types.LISTENER]  # push order
        assert first.version_info == snapshot.version(types.CLUSTER)

    run(test)


def test_ack_is_recorded_and_nothing_is_resent() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        snapshot = make_snapshot()
        cache.set_snapshot("n1", snapshot)
        client = SotwClient(channel, "n1")
        await client.request(types.CLUSTER)
        cds = await client.read()
        await client.ack(cds)
        await client.request(types.LISTENER)  # probe: the next message must answer this
        assert (await client.read()).type_url == types.LISTENER
        status = cache.node_status("n1")
        assert status is not None
        cds_status = status.types()[types.CLUSTER]
        assert (cds_status.acked_version, cds_status.acked_nonce) == (cds.version_info, cds.nonce)
        assert cds_status.sync_state == "SYNCED" and cds_status.last_nack is None

    run(test)


def test_nack_is_recorded_and_the_rejected_version_not_resent() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        good = make_snapshot()
        cache.set_snapshot("n1", good)
        client = SotwClient(channel, "n1")
        await client.request(types.CLUSTER)
        await client.ack(await client.read())

        rejected = make_snapshot(clusters=("c1", "c2", "c3"))
        cache.set_snapshot("n1", rejected)
        update = await client.read()
        assert update.version_info == rejected.version(types.CLUSTER)
        await client.nack(update, "cluster c3: bad connect_timeout")
        await client.request(types.LISTENER)  # probe
        assert (await client.read()).type_url == types.LISTENER

        status = cache.node_status("n1")
        assert status is not None
        cds_status = status.types()[types.CLUSTER]
        assert cds_status.last_nack is not None
        assert cds_status.last_nack.message == "cluster c3: bad connect_timeout"
        assert (cds_status.last_nack.version, cds_status.last_nack.nonce) == (
            update.version_info,
            update.nonce,
        )
        assert cds_status.acked_version == good.version(types.CLUSTER)  # the client runs the old one
        assert cds_status.sync_state == "NACKED"

        fixed = make_snapshot(clusters=("c1", "c2", "c4"))
        cache.set_snapshot("n1", fixed)
        retry = await client.read()
        assert retry.type_url == types.CLUSTER and retry.version_info == fixed.version(types.CLUSTER)
        assert names_in(retry) == ["c1", "c2", "c4"]

    run(test)


def test_a_client_rejecting_every_version_keeps_its_stream_and_gets_each_version_once() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = SotwClient(channel, "n1")
        await client.request(types.CLUSTER)
        await client.nack(await client.read(), "rejected")
        status = cache.node_status("n1")
        assert status is not None
        stream_ids = set(status.streams)
        for extra in ("c3", "c4", "c5"):
            cache.set_snapshot("n1", make_snapshot(clusters=("c1", "c2", extra)))
            update = await client.read()  # the next version, never the rejected one again
            assert names_in(update) == ["c1", "c2", extra]
            await client.nack(update, f"{extra} rejected")
        await client.request(types.LISTENER)  # probe: nothing else came
        assert (await client.read()).type_url == types.LISTENER
        assert set(status.streams) == stream_ids  # a NACK never ends the stream
        assert status.types()[types.CLUSTER].sync_state == "NACKED"

    run(test)


def test_new_snapshot_pushes_only_changed_types() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = SotwClient(channel, "n1")
        initial = await client.subscribe_all()

        cache.set_snapshot("n1", make_snapshot(listener_port=8181))
        lds = await client.read()  # a spurious CDS/EDS push would come first (push order)
        assert lds.type_url == types.LISTENER and lds.version_info != initial[types.LISTENER].version_info
        await client.ack(lds)

        cache.set_snapshot("n1", make_snapshot(listener_port=8181, route_cluster="c2"))
        rds = await client.read()  # a spurious RDS for the previous change would have matched too,
        assert rds.type_url == types.ROUTE  # so check it carries the new route
        assert unpack(rds.resources[0]).virtual_hosts[0].routes[0].route.cluster == "c2"
        status = cache.node_status("n1")
        assert status is not None
        assert status.types()[types.CLUSTER].sent_nonce == initial[types.CLUSTER].nonce

    run(test)


def test_endpoint_only_change_wakes_only_eds() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = SotwClient(channel, "n1")
        initial = await client.subscribe_all()

        moved = make_snapshot(c1_ip="10.7.7.7")
        assert cache.set_snapshot("n1", moved) == {types.ENDPOINT}
        eds = await client.read()
        assert eds.type_url == types.ENDPOINT and eds.version_info == moved.version(types.ENDPOINT)
        # SotW EDS after the first update: only what changed (c2 is kept by the client)
        assert names_in(eds) == ["c1"]
        await client.ack(eds, SUBSCRIPTIONS[types.ENDPOINT])

        cache.set_snapshot("n1", make_snapshot(c1_ip="10.7.7.7", listener_port=1234))
        assert (await client.read()).type_url == types.LISTENER  # no CDS was queued before it
        status = cache.node_status("n1")
        assert status is not None
        for type_url in (types.CLUSTER, types.ROUTE):
            assert status.types()[type_url].sent_nonce == initial[type_url].nonce

    run(test)


def test_resource_names_select_what_rds_and_eds_get() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = SotwClient(channel, "n1")
        await client.request(types.ENDPOINT, ["c1"])
        first = await client.read()
        assert names_in(first) == ["c1"]
        await client.ack(first, ["c1", "c2", "missing"])  # ACK plus a new name: answered at the same version
        second = await client.read()
        # only the newly subscribed resource: the client keeps c1 (xDS: EDS/RDS need not be complete)
        assert names_in(second) == ["c2"] and second.version_info == first.version_info
        await client.ack(second, ["c2"])
        third = await client.read()
        assert names_in(third) == []  # nothing new to hold; the client dropped c1 itself
        await client.ack(third, ["c1", "c2"])
        fourth = await client.read()
        assert names_in(fourth) == ["c1"]  # subscribed again: sent again
        await client.ack(fourth, [])  # no names: nothing wanted (EDS has no wildcard)
        assert names_in(await client.read()) == []

        await client.request(types.ROUTE, ["r2"])
        rds = await client.read()
        assert names_in(rds) == ["r2"]
        status = cache.node_status("n1")
        assert status is not None
        assert status.types()[types.ROUTE].subscribed == ("r2",)
        assert status.types()[types.ENDPOINT].subscribed == ()

    run(test)


def test_wildcard_rules_for_listeners_and_clusters() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = SotwClient(channel, "n1")
        await client.request(types.LISTENER, ["l2"])  # proxyless gRPC names its listener
        named = await client.read()
        assert names_in(named) == ["l2"]
        await client.ack(named, ["*", "l2"])
        assert names_in(await client.read()) == ["l1", "l2"]
        await client.request(types.CLUSTER, ["c1"], nonce="")
        cds = await client.read()
        assert names_in(cds) == ["c1"]
        await client.ack(cds, [])  # names sent before, so empty now means none, not wildcard
        assert names_in(await client.read()) == []

    run(test)


def test_a_newer_version_waits_until_the_client_answered_the_last_response() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = SotwClient(channel, "n1")
        await client.request(types.CLUSTER)
        first = await client.read()
        newer = make_snapshot(clusters=("c1", "c2", "c3"))
        cache.set_snapshot("n1", newer)  # the client is still applying the first response
        await client.request(types.LISTENER)  # listeners wait for the clusters of the same snapshot
        await client.ack(first)
        second = await client.read()
        assert second.type_url == types.CLUSTER and second.version_info == newer.version(types.CLUSTER)
        assert (await client.read()).type_url == types.LISTENER

    run(test)


def snapshot_moving_r2_to(cluster: str, clusters: tuple[str, ...], listener_port: int = 8080) -> Snapshot:
    """make_snapshot's, with route r2 sent to ``cluster`` and listener l1 on ``listener_port``."""
    messages = [
        make_listener("l1", listener_port, "r1"),
        make_listener("l2", 9090, "r2"),
        make_route("r1", "c1"),
        make_route("r2", cluster),
    ]
    for name in clusters:
        messages += [make_cluster(name), make_endpoints(name, "10.0.1.1")]
    return Snapshot.from_messages(messages)


def test_an_update_naming_a_new_cluster_never_overtakes_the_cds_update_adding_it() -> None:
    """The canary race: the client has not answered CDS yet when a push adds cluster c3 and a
    listener and route using it. The listener and route must wait for that CDS update (xDS
    protocol, "Eventual consistency considerations": CDS, then EDS, then LDS, then RDS)."""

    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = SotwClient(channel, "n1")
        await client.request(types.CLUSTER)
        cds = await client.read()  # the client is still applying it
        newer = snapshot_moving_r2_to("c3", ("c1", "c2", "c3"), listener_port=8181)
        cache.set_snapshot("n1", newer)
        await client.request(types.LISTENER)  # Envoy asks for listeners and routes meanwhile
        await client.request(types.ROUTE, ["r1", "r2"])
        await client.ack(cds)
        order = [await client.read() for _ in range(3)]
        assert [response.type_url for response in order] == [types.CLUSTER, types.LISTENER, types.ROUTE]
        assert names_in(order[0]) == ["c1", "c2", "c3"]
        assert [response.version_info for response in order] == [
            newer.version(type_url) for type_url in (types.CLUSTER, types.LISTENER, types.ROUTE)
        ]

    run(test)


def test_a_cluster_still_named_by_a_route_is_removed_after_the_route_moves_off_it() -> None:
    """Make before break: a push that adds c3, moves route r2 from c2 to c3 and drops c2 sends a CDS
    update keeping c2 first, and the one removing c2 only after the route's."""

    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = SotwClient(channel, "n1")
        await client.subscribe_all()
        moved = snapshot_moving_r2_to("c3", ("c1", "c3"))
        cache.set_snapshot("n1", moved)
        responses: list[discovery_pb2.DiscoveryResponse] = []
        while not responses or responses[-1].version_info != moved.version(types.CLUSTER):
            responses.append(await client.read())
            await client.ack(responses[-1], SUBSCRIPTIONS.get(responses[-1].type_url, ()))
        kinds = [response.type_url for response in responses]
        assert kinds[0] == types.CLUSTER and names_in(responses[0]) == ["c1", "c2", "c3"]
        assert kinds.count(types.CLUSTER) == 2 and kinds.index(types.ROUTE) < len(kinds) - 1
        assert names_in(responses[-1]) == ["c1", "c3"]
        route = [unpack(r.resources[0]) for r in responses if r.type_url == types.ROUTE][0]
        assert route.name == "r2" and route.virtual_hosts[0].routes[0].route.cluster == "c3"
        await client.request(types.ENDPOINT, ["c1", "c3"])  # probe (Envoy's request for the new cluster)
        probe = await client.read()  # nothing else was owed: the next message answers it
        assert probe.type_url == types.ENDPOINT and names_in(probe) == ["c3"]

    run(test)


def test_a_cluster_the_client_holds_is_removed_after_the_route_moves_off_it() -> None:
    """When keeping c2 leaves the clusters as the client has them, no CDS update goes first."""

    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = SotwClient(channel, "n1")
        await client.subscribe_all()
        moved = snapshot_moving_r2_to("c1", ("c1",))
        cache.set_snapshot("n1", moved)
        responses = [await client.read()]
        while responses[-1].type_url != types.CLUSTER:
            await client.ack(responses[-1], SUBSCRIPTIONS[responses[-1].type_url])
            responses.append(await client.read())
        assert [response.type_url for response in responses] == [types.ENDPOINT, types.ROUTE, types.CLUSTER]
        assert names_in(responses[-1]) == ["c1"] and responses[-1].version_info == moved.version(types.CLUSTER)

    run(test)


def test_a_cluster_removal_alone_is_not_delayed() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot(clusters=("c1", "c2", "c3")))
        client = SotwClient(channel, "n1")
        await client.subscribe_all()
        cache.set_snapshot("n1", make_snapshot(clusters=("c1", "c2")))  # no route or listener changes
        cds = await client.read()
        assert cds.type_url == types.CLUSTER and names_in(cds) == ["c1", "c2"]

    run(test)


def test_an_answer_with_the_old_version_and_no_error_detail_counts_as_nack() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = SotwClient(channel, "n1")
        await client.request(types.CLUSTER)
        response = await client.read()
        await client.request(types.CLUSTER, nonce=response.nonce, version="")  # kept the old one
        await client.request(types.LISTENER)  # probe; also shows the rejected version is not resent
        assert (await client.read()).type_url == types.LISTENER
        status = cache.node_status("n1")
        assert status is not None
        nack = status.types()[types.CLUSTER].last_nack
        assert (
            nack is not None and nack.version == response.version_info and "no error_detail" in nack.message
        )

    run(test)


def test_stale_nonce_is_ignored() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = SotwClient(channel, "n1")
        await client.request(types.ENDPOINT, ["c1"])
        first = await client.read()
        await client.ack(first, ["c1"])
        cache.set_snapshot("n1", make_snapshot(c1_ip="10.5.5.5"))
        second = await client.read()
        # An answer to the superseded response, with new names: must not trigger a push.
        await client.request(types.ENDPOINT, ["c1", "c2"], nonce=first.nonce)
        await client.request(types.LISTENER)
        assert (await client.read()).type_url == types.LISTENER
        status = cache.node_status("n1")
        assert status is not None and status.types()[types.ENDPOINT].sync_state == "STALE"
        assert status.types()[types.ENDPOINT].sent_nonce == second.nonce

    run(test)


def test_reconnecting_client_gets_a_first_response_even_at_the_same_version() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        snapshot = make_snapshot()
        cache.set_snapshot("n1", snapshot)
        client = SotwClient(channel, "n1")
        await client.request(types.CLUSTER, version=snapshot.version(types.CLUSTER))
        response = await client.read()
        assert response.version_info == snapshot.version(types.CLUSTER) and len(response.resources) == 2

    run(test)


def test_first_request_without_node_id_is_refused() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        client = SotwClient(channel, base_pb2.Node())
        await client.request(types.CLUSTER)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.read()
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(test)


def test_two_nodes_are_isolated() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("a", make_snapshot(clusters=("c1",)))
        cache.set_snapshot("b", make_snapshot(clusters=("c2",)))
        client_a, client_b = SotwClient(channel, "a"), SotwClient(channel, "b")
        for client in (client_a, client_b):
            await client.request(types.CLUSTER)
        cds_a, cds_b = await client_a.read(), await client_b.read()
        assert (names_in(cds_a), names_in(cds_b)) == (["c1"], ["c2"])
        await client_a.ack(cds_a)
        await client_b.ack(cds_b)

        cache.set_snapshot("a", make_snapshot(clusters=("c1", "c3")))
        assert names_in(await client_a.read()) == ["c1", "c3"]
        await client_b.request(types.LISTENER)  # probe: b got no CDS push for a's change
        assert (await client_b.read()).type_url == types.LISTENER

    run(test)


def test_node_status_content_and_connection_hooks() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        client = SotwClient(
            channel, make_node("sidecar~10.0.0.5~reviews-v1.default~default.svc", ISTIO_VERSION="1.23")
        )
        await client.request(types.CLUSTER)
        cds = await client.read()  # served from the snapshot the hook computed on connect
        await client.ack(cds)
        await client.request(types.ENDPOINT, ["c1"])
        eds = await client.read()
        await client.nack(eds, "endpoint c1: bad address", ["c1"])
        await client.request(types.ROUTE, ["r1"])
        await client.read()  # everything before it has been processed

        status = cache.node_status(client.node.id)
        assert status is not None and status.metadata == {"ISTIO_VERSION": "1.23"}
        assert status.cluster == "reviews.default" and len(status.streams) == 1
        (stream,) = status.streams.values()
        assert stream.protocol == "sotw" and stream.connected_at >= status.connected_at - 1
        per_type = status.types()
        assert per_type[types.CLUSTER].subscribed == ("*",)
        assert (per_type[types.CLUSTER].sent_version, per_type[types.CLUSTER].acked_version) == (
            cds.version_info,
            cds.version_info,
        )
        assert per_type[types.CLUSTER].sent_resources == 2
        assert per_type[types.ENDPOINT].last_nack is not None
        assert per_type[types.ENDPOINT].last_nack.message == "endpoint c1: bad address"
        assert per_type[types.ENDPOINT].acked_version == ""
        assert per_type[types.ROUTE].sync_state == "STALE"
        rendered = status.to_dict()
        assert [t["type"] for t in rendered["streams"][0]["types"]] == ["CDS", "EDS", "RDS"]

        client.call.cancel()
        await asyncio.wait_for(disconnected.wait(), READ_TIMEOUT)
        assert cache.node_status(client.node.id) is None

    disconnected = asyncio.Event()
    connected: list[str] = []
    holder: dict[str, SnapshotCache] = {}

    def on_connected(node: base_pb2.Node) -> None:
        connected.append(node.id)
        holder["cache"].set_snapshot(node.id, make_snapshot())

    cache = SnapshotCache(on_node_connected=on_connected, on_node_disconnected=lambda _id: disconnected.set())
    holder["cache"] = cache

    async def main() -> None:
        async with serving(cache) as channel:
            await asyncio.wait_for(test(cache, channel), 10)

    asyncio.run(main())
    assert connected == ["sidecar~10.0.0.5~reviews-v1.default~default.svc"]


def test_separate_cluster_discovery_service() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        call = cds_pb2_grpc.ClusterDiscoveryServiceStub(channel).StreamClusters()
        request = discovery_pb2.DiscoveryRequest(node=make_node("n1"))  # type_url implied by the service
        await call.write(request)
        response = await asyncio.wait_for(call.read(), READ_TIMEOUT)
        assert response.type_url == types.CLUSTER and names_in(response) == ["c1", "c2"]
        await call.write(discovery_pb2.DiscoveryRequest(type_url=types.LISTENER))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await asyncio.wait_for(call.read(), READ_TIMEOUT)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    run(test)


def test_sotw_rds_updates_carry_only_changed_routes_while_lds_and_cds_stay_complete() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = SotwClient(channel, "n1")
        initial = await client.subscribe_all()
        cache.set_snapshot("n1", make_snapshot(route_cluster="c2"))  # r1 changes, r2 does not
        rds = await client.read()
        assert rds.type_url == types.ROUTE and names_in(rds) == ["r1"]
        await client.ack(rds, SUBSCRIPTIONS[types.ROUTE])
        cache.set_snapshot("n1", make_snapshot(route_cluster="c2", clusters=("c1", "c2", "c3")))
        cds = await client.read()
        assert names_in(cds) == ["c1", "c2", "c3"]  # CDS: the state of the world, unchanged ones too
        await client.ack(cds)
        # The EDS update after a CDS update is whole (Envoy waits for the endpoints of every cluster
        # it rebuilt), although c1's and c2's did not change.
        eds = await client.read()
        assert eds.type_url == types.ENDPOINT and names_in(eds) == ["c1", "c2"]
        await client.ack(eds, ["c1", "c2", "c3"])
        assert names_in(await client.read()) == ["c3"]  # then only what is new or changed again
        assert initial[types.ENDPOINT].nonce != eds.nonce

    run(test)


def test_sotw_eds_change_not_held_by_the_client_sends_nothing() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = SotwClient(channel, "n1")
        await client.request(types.ENDPOINT, ["c2"])
        await client.ack(await client.read(), ["c2"])
        cache.set_snapshot("n1", make_snapshot(c1_ip="10.3.3.3"))  # EDS version moves, c2 stays
        await client.request(types.LISTENER)  # probe
        assert (await client.read()).type_url == types.LISTENER
        cache.set_snapshot("n1", make_snapshot(c1_ip="10.3.3.3", clusters=("c1", "c2")))
        status = cache.node_status("n1")
        assert status is not None and status.types()[types.ENDPOINT].sync_state == "SYNCED"

    run(test)


def endpoints_snapshot(count: int, ip: str = "10.0.0.1") -> Snapshot:
    clusters = [f"c{index:03d}" for index in range(count)]
    return Snapshot.from_messages(
        [make_cluster(name) for name in clusters] + [make_endpoints(name, ip) for name in clusters]
        + [make_listener("l1", 8080)]
    )


def test_split_by_size() -> None:
    assert split_by_size([], 10) == []
    assert split_by_size([4, 4, 4, 20, 1], 10) == [range(0, 2), range(2, 3), range(3, 4), range(4, 5)]
    assert split_by_size([5, 5], 10) == [range(0, 2)]


def test_sotw_eds_larger_than_the_split_size_goes_out_in_several_responses_of_one_version() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        snapshot = endpoints_snapshot(40)
        names = sorted(snapshot.resources(types.ENDPOINT))
        cache.set_snapshot("n1", snapshot)
        client = SotwClient(channel, "n1")
        await client.request(types.ENDPOINT, names)
        parts = [await client.read()]
        while sum(len(part.resources) for part in parts) < len(names):
            parts.append(await client.read())
        assert len(parts) > 2 and all(part.ByteSize() <= 2048 for part in parts)
        assert [name for part in parts for name in names_in(part)] == names
        assert {part.version_info for part in parts} == {snapshot.version(types.ENDPOINT)}
        assert len({part.nonce for part in parts}) == len(parts)
        for part in parts[:-1]:
            await client.ack(part, names)  # answers to earlier parts settle nothing yet
        status = cache.node_status("n1")
        assert status is not None
        await client.request(types.LISTENER)  # probe: nothing was resent for those answers
        assert (await client.read()).type_url == types.LISTENER
        assert status.types()[types.ENDPOINT].sync_state == "STALE"
        await client.ack(parts[-1], names)
        await client.request(types.CLUSTER)  # probe
        assert (await client.read()).type_url == types.CLUSTER
        eds = status.types()[types.ENDPOINT]
        assert eds.sync_state == "SYNCED" and eds.sent_resources == 40
        assert eds.sent_bytes == sum(part.ByteSize() for part in parts)

    run(test, split_bytes=2048)


def test_a_nack_of_one_part_of_a_split_update_is_the_update_s() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        snapshot = endpoints_snapshot(20)
        names = sorted(snapshot.resources(types.ENDPOINT))
        cache.set_snapshot("n1", snapshot)
        client = SotwClient(channel, "n1")
        await client.request(types.ENDPOINT, names)
        parts = [await client.read()]
        while sum(len(part.resources) for part in parts) < len(names):
            parts.append(await client.read())
        assert len(parts) > 2
        await client.nack(parts[0], "c000: bad endpoint", names)
        for part in parts[1:]:
            await client.ack(part, names)
        await assert_eds_nacked(client, cache, "c000: bad endpoint")

    run(test, split_bytes=1500)


def test_an_update_over_the_message_limit_is_refused_visibly_and_not_retried() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        small = make_snapshot()
        cache.set_snapshot("n1", small)
        client = SotwClient(channel, "n1")
        await client.request(types.CLUSTER)
        await client.ack(await client.read())
        big = Snapshot.from_messages(
            [make_cluster(f"c{index:03d}") for index in range(100)] + [make_listener("l1", 8080)]
        )
        cache.set_snapshot("n1", big)  # CDS of 100 clusters: one response, over the limit
        await client.request(types.LISTENER)  # probe: the CDS update never comes
        assert (await client.read()).type_url == types.LISTENER
        status = cache.node_status("n1")
        assert status is not None
        cds = status.types()[types.CLUSTER]
        assert cds.sync_state == "TOO LARGE" and cds.refusals == 1
        assert cds.refused is not None and cds.refused.version == big.version(types.CLUSTER)
        assert cds.refused.limit == 1024 and cds.refused.size > 1024
        assert "CDS version" in cds.refused.message and "n1" in cds.refused.message
        assert cds.to_dict()["refused"]["bytes"] == cds.refused.size
        assert cds.acked_version == small.version(types.CLUSTER)  # the client keeps running that

        again = SotwClient(channel, "n1")  # a reconnect is refused the same way, not sent
        await again.request(types.CLUSTER)
        await again.request(types.LISTENER)
        assert (await again.read()).type_url == types.LISTENER

        fits = make_snapshot(clusters=("c1", "c2", "c3"))
        cache.set_snapshot("n1", fits)
        update = await client.read()
        assert update.type_url == types.CLUSTER and names_in(update) == ["c1", "c2", "c3"]
        assert status.types()[types.CLUSTER].sync_state == "STALE"  # sent: no longer refused

    run(test, max_message_bytes=1024)


def test_a_resource_too_large_alone_refuses_a_split_update_naming_it() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        many = make_endpoints("huge", *[f"10.1.{index // 250}.{index % 250}" for index in range(100)])
        cache.set_snapshot("n1", Snapshot.from_messages([make_cluster("huge"), make_cluster("c1"), many,
                                                          make_endpoints("c1", "10.0.0.1")]))
        client = SotwClient(channel, "n1")
        await client.request(types.ENDPOINT, ["c1", "huge"])
        await client.request(types.CLUSTER)  # probe
        assert (await client.read()).type_url == types.CLUSTER
        status = cache.node_status("n1")
        assert status is not None
        refused = status.types()[types.ENDPOINT].refused
        assert refused is not None and "'huge' alone is" in refused.message

    run(test, max_message_bytes=1024)


def test_message_limits_default_to_64_mib_each_way() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        # Well over gRPC's 4 MiB default: a one-resource RDS response and a request naming it.
        wide = make_route("wide", "c1")
        host = wide.virtual_hosts[0]
        host.domains.extend(f"host-{index:07d}.example.com" for index in range(220_000))
        assert wide.ByteSize() > 5 * 1024 * 1024
        cache.set_snapshot("n1", Snapshot.from_messages([wide]))
        client = SotwClient(channel, "n1")
        names = ["wide", *(f"unknown-{index:07d}-{'x' * 20}" for index in range(150_000))]
        await client.request(types.ROUTE, names)
        response = await client.read()
        assert names_in(response) == ["wide"] and response.ByteSize() > 5 * 1024 * 1024

    assert DEFAULT_MAX_XDS_MESSAGE_BYTES == 64 * 1024 * 1024
    run(test)


def test_a_stream_dropped_under_a_large_response_is_logged(caplog: pytest.LogCaptureFixture,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import tulle.controlplane.xds.server as server_module

    monkeypatch.setattr(server_module, "GRPC_DEFAULT_MAX_MESSAGE_BYTES", 100)

    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = SotwClient(channel, "n1")
        await client.request(types.CLUSTER)
        await client.read()
        client.call.cancel()  # as a client refusing the message (RESOURCE_EXHAUSTED) does
        while cache.node_status("n1") is not None:
            await asyncio.sleep(0.005)

    with caplog.at_level("WARNING", logger="tulle.controlplane.xds"):
        run(test)
    assert any("closed its xDS stream without answering CDS" in record.getMessage() for record in caplog.records)


# --- incremental (delta) -----------------------------------------------------------------------


class DeltaClient:
    def __init__(self, channel: grpc.aio.Channel, node_id: str) -> None:
        self.node = make_node(node_id)
        self.call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources()
        self.sent_node = False

    async def request(
        self,
        type_url: str,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        *,
        nonce: str = "",
        initial: dict[str, str] | None = None,
        error: str | None = None,
    ) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce,
            initial_resource_versions=initial or {},
        )
        if not self.sent_node:
            request.node.CopyFrom(self.node)
            self.sent_node = True
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        await self.call.write(request)

    async def read(self) -> discovery_pb2.DeltaDiscoveryResponse:
        response = await asyncio.wait_for(self.call.read(), READ_TIMEOUT)
        assert response is not grpc.aio.EOF, "stream ended"
        return response

    async def ack(self, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        await self.request(response.type_url, nonce=response.nonce)


def versions_in(response: discovery_pb2.DeltaDiscoveryResponse) -> dict[str, str]:
    return {resource.name: resource.version for resource in response.resources}


def test_delta_initial_push() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        snapshot = make_snapshot()
        cache.set_snapshot("n1", snapshot)
        client = DeltaClient(channel, "n1")
        await client.request(types.CLUSTER)  # legacy wildcard: names nothing
        cds = await client.read()
        assert versions_in(cds) == dict(snapshot.resource_versions(types.CLUSTER))
        assert cds.system_version_info == snapshot.version(types.CLUSTER) and not cds.removed_resources
        decoded = cluster_pb2.Cluster.FromString(cds.resources[0].resource.value)
        assert decoded == snapshot.resources(types.CLUSTER)["c1"]
        await client.ack(cds)
        await client.request(types.ENDPOINT, ["c1"])
        eds = await client.read()
        assert names_in(eds) == ["c1"] and eds.nonce != cds.nonce
        await client.ack(eds)
        await client.request(types.ROUTE, ["r1"])
        await client.read()
        status = cache.node_status("n1")
        assert status is not None and status.streams[next(iter(status.streams))].protocol == "delta"
        assert status.types()[types.ENDPOINT].sync_state == "SYNCED"
        assert status.types()[types.CLUSTER].subscribed == ("*",)

    run(test)


def test_delta_first_wildcard_request_is_answered_even_when_empty() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", Snapshot({types.LISTENER: {}, types.CLUSTER: {"c1": make_cluster("c1")}}))
        client = DeltaClient(channel, "n1")
        await client.request(types.LISTENER)
        lds = await client.read()
        assert lds.type_url == types.LISTENER and not lds.resources and not lds.removed_resources

    run(test)


def test_delta_subscribe_and_unsubscribe() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = DeltaClient(channel, "n1")
        await client.request(types.ENDPOINT, ["c1"])
        await client.ack(await client.read())
        await client.request(types.ENDPOINT, ["c2"])
        added = await client.read()
        assert names_in(added) == ["c2"]  # c1 is unchanged and not resent
        await client.ack(added)
        await client.request(types.ENDPOINT, unsubscribe=["c1"])  # needs no answer
        await client.request(types.ENDPOINT, ["c1"])  # resubscribe: must be resent, even unchanged
        assert names_in(await client.read()) == ["c1"]
        await client.request(types.ENDPOINT, unsubscribe=["c1"])
        while subscriptions_of(cache, "n1")[types.ENDPOINT] != ("c2",):
            await asyncio.sleep(0.005)  # until the server has taken the unsubscribe in

        cache.set_snapshot("n1", make_snapshot(c1_ip="10.8.8.8"))  # c1 changed: no longer wanted
        await client.request(types.ENDPOINT, ["missing"])  # probe: does-not-exist notice
        notice = await client.read()
        assert names_in(notice) == [] and list(notice.removed_resources) == ["missing"]
        status = cache.node_status("n1")
        assert status is not None and status.types()[types.ENDPOINT].subscribed == ("c2", "missing")

    run(test)


def test_delta_unsubscribing_a_name_under_wildcard_gets_an_answer() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = DeltaClient(channel, "n1")
        await client.request(types.CLUSTER, ["*", "c1", "gone"])
        first = await client.read()
        assert names_in(first) == ["c1", "c2"] and list(first.removed_resources) == ["gone"]
        await client.ack(first)
        await client.request(types.CLUSTER, unsubscribe=["c1", "gone"])
        answer = await client.read()  # c1 is still covered by the wildcard; "gone" is not
        assert names_in(answer) == ["c1"] and list(answer.removed_resources) == ["gone"]

    run(test)


def test_delta_removal_is_reported() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = DeltaClient(channel, "n1")
        await client.request(types.CLUSTER)
        await client.ack(await client.read())
        await client.request(types.ENDPOINT, ["c1", "c2"])
        await client.ack(await client.read())

        cache.set_snapshot("n1", make_snapshot(clusters=("c1",)))
        cds, eds = await client.read(), await client.read()
        assert (cds.type_url, eds.type_url) == (types.CLUSTER, types.ENDPOINT)
        assert list(cds.removed_resources) == ["c2"] and not cds.resources
        assert list(eds.removed_resources) == ["c2"] and not eds.resources

    run(test)


def test_delta_cluster_removal_waits_for_the_route_moving_off_it() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = DeltaClient(channel, "n1")
        for type_url, names in SUBSCRIPTIONS.items():
            await client.request(type_url, names)
            await client.ack(await client.read())
        cache.set_snapshot("n1", snapshot_moving_r2_to("c1", ("c1",)))
        responses = [await client.read()]
        while types.CLUSTER not in [r.type_url for r in responses]:
            responses.append(await client.read())
        kinds = [r.type_url for r in responses]
        assert kinds.index(types.ROUTE) < kinds.index(types.CLUSTER)
        assert list(responses[-1].removed_resources) == ["c2"] and not responses[-1].resources

    run(test)


def test_delta_reconnect_with_initial_versions_gets_only_changes() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot(clusters=("c1", "c2", "c3")))
        first_stream = DeltaClient(channel, "n1")
        await first_stream.request(types.ENDPOINT, ["c1", "c2", "c3"])
        held = versions_in(await first_stream.read())
        assert set(held) == {"c1", "c2", "c3"}
        first_stream.call.cancel()

        now = make_snapshot(clusters=("c1", "c2"), c1_ip="10.6.6.6")
        cache.set_snapshot("n1", now)
        second_stream = DeltaClient(channel, "n1")
        await second_stream.request(types.ENDPOINT, ["c1", "c2", "c3"], initial=held)
        catch_up = await second_stream.read()
        assert names_in(catch_up) == ["c1"]  # c2 unchanged
        assert list(catch_up.removed_resources) == ["c3"]

        cluster_versions = now.resource_versions(types.CLUSTER)
        await second_stream.request(
            types.CLUSTER, initial={"c1": "stale", "c2": cluster_versions["c2"], "c9": "x"}
        )
        cds = await second_stream.read()  # wildcard: every cluster compared with what is held
        assert names_in(cds) == ["c1"] and list(cds.removed_resources) == ["c9"]

    run(test)


def test_delta_nack_is_recorded_and_not_resent() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("n1", make_snapshot())
        client = DeltaClient(channel, "n1")
        await client.request(types.CLUSTER)
        await client.ack(await client.read())
        bad = make_snapshot(clusters=("c1", "c2", "c3"))
        cache.set_snapshot("n1", bad)
        update = await client.read()
        assert names_in(update) == ["c3"]
        await client.request(types.CLUSTER, nonce=update.nonce, error="c3 rejected")
        await client.request(types.ENDPOINT, ["c1"])  # probe
        assert (await client.read()).type_url == types.ENDPOINT
        status = cache.node_status("n1")
        assert status is not None
        nack = status.types()[types.CLUSTER].last_nack
        assert nack is not None and (nack.message, nack.nonce) == ("c3 rejected", update.nonce)
        assert nack.version == bad.version(types.CLUSTER)

    run(test)


def test_delta_nodes_are_isolated() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        cache.set_snapshot("a", make_snapshot())
        cache.set_snapshot("b", make_snapshot())
        client_a, client_b = DeltaClient(channel, "a"), DeltaClient(channel, "b")
        for client in (client_a, client_b):
            await client.request(types.ENDPOINT, ["c1"])
            await client.ack(await client.read())
        cache.set_snapshot("a", make_snapshot(c1_ip="10.4.4.4"))
        assert names_in(await client_a.read()) == ["c1"]
        await client_b.request(types.ENDPOINT, ["c2"])  # probe
        assert names_in(await client_b.read()) == ["c2"]

    run(test)


def test_delta_updates_are_split_and_the_last_answer_settles_them() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        snapshot = endpoints_snapshot(30)
        names = sorted(snapshot.resources(types.ENDPOINT))
        cache.set_snapshot("n1", snapshot)
        client = DeltaClient(channel, "n1")
        await client.request(types.ENDPOINT, names)
        parts = [await client.read()]
        while sum(len(part.resources) for part in parts) < len(names):
            parts.append(await client.read())
        assert len(parts) > 1 and [name for part in parts for name in names_in(part)] == names
        await client.request(types.ENDPOINT, nonce=parts[0].nonce, error="c000 rejected")
        await client.ack(parts[-1])
        await assert_eds_nacked(client, cache, "c000 rejected")

    run(test, split_bytes=1500)


def test_delta_update_over_the_limit_is_refused_once_per_version() -> None:
    async def test(cache: SnapshotCache, channel: grpc.aio.Channel) -> None:
        huge = make_endpoints("c1", *[f"10.1.{index // 250}.{index % 250}" for index in range(100)])
        cache.set_snapshot("n1", Snapshot.from_messages([huge]))
        client = DeltaClient(channel, "n1")
        await client.request(types.ENDPOINT, ["c1"])
        await client.request(types.CLUSTER)  # probe (no snapshot of clusters: nothing comes)
        await client.request(types.ENDPOINT)  # asks again: not tried again at the same version
        status = cache.node_status("n1")
        while status is None or types.CLUSTER not in status.types():  # the server has read all three
            await asyncio.sleep(0.005)
            status = cache.node_status("n1")
        small = make_endpoints("c1", "10.0.0.1")
        cache.set_snapshot("n1", Snapshot.from_messages([small]))
        update = await client.read()
        assert names_in(update) == ["c1"]
        eds = status.types()[types.ENDPOINT]
        assert eds.refusals == 1 and eds.refused is None

    run(test, max_message_bytes=1024)
