"""gRPC xDS server (grpc.aio): ADS state-of-the-world and incremental (delta) streams.

It serves whatever the :class:`SnapshotCache` holds for the node named by a stream's first
request and knows nothing of how those resources were built. Each stream runs one loop over a
queue fed by two sources, the client's requests and the cache's change callbacks, so all of a
stream's protocol state is touched by one task only. Whenever it handles either, it catches up
with the node's current snapshot, type by type in Envoy's ADS order (CDS, EDS, LDS, RDS:
``types.PUSH_ORDER``).

Ordering (xDS protocol, "Eventual consistency considerations": make before break). On one stream,
an update of a later type never goes out before the earlier types' updates of the same snapshot:
when a state-of-the-world CDS update is still unanswered (one per type is in flight), the
listeners and routes of a newer snapshot wait for the client's answer and the CDS update that
follows it, so a listener or route never names a cluster the client has not been sent. (No ACK
is awaited beyond that, as in istiod: Envoy applies a stream's responses in order and counts a
warming cluster as known.) The other way round, a cluster the client holds that a snapshot drops
while its listeners or routes change too is removed only after their updates went out: the
state-of-the-world CDS update keeps it and a later one removes it, a delta one holds the removal
back. Separate per-type streams have no common order (that is what ADS is for).

State of the world, per type (xDS protocol, "ACK/NACK", "When to send an update"):
  * LDS/CDS requests with no names (and never any names before) or with ``*`` are wildcard;
    otherwise only the named resources that exist are sent.
  * An update goes out when the client has answered our last one of that type (as in
    go-control-plane, one update per type is in flight), the earlier types have sent theirs (see
    Ordering), and either the snapshot's version differs from what we last sent on the stream,
    the subscribed names changed, or it is the type's first request on the stream.
  * LDS and CDS updates carry every resource the client should hold. The other types (EDS,
    RDS) carry everything only in the stream's first update; later ones carry just the
    resources whose version changed and the ones newly subscribed, as istiod does for EDS: a
    client keeps what a response of those types does not mention ("Grouping Resources into
    Responses"), and drops it when the cluster or listener naming it goes away. The EDS update
    after a CDS update is whole again (Envoy waits for the endpoints of clusters it rebuilt).
  * A request whose ``response_nonce`` is not the last nonce we sent is stale and ignored.
    With the current nonce it is an ACK, or a NACK when ``error_detail`` is set: the NACK is
    recorded and the rejected version is not sent again; the next version is.
Incremental, per type: the server tracks the versions the client holds (from
``initial_resource_versions`` on reconnect, then from what it sent) and sends only resources
whose version differs, plus ``removed_resources`` for those gone from the snapshot or subscribed
but nonexistent. Subscription changes are honoured whatever the nonce; ACK/NACK is matched to
the nonce that carried it.

Message size. gRPC refuses messages over a limit (4 MiB unless raised): the server's limit is
``max_message_bytes`` (64 MiB by default, ``--xds-max-message-bytes``), sent and received. An
update that the protocol lets us split (state-of-the-world EDS/RDS, any delta update) goes out
as several responses of at most 4 MiB each (gRPC's default receive limit, so that clients which
never raised theirs still get a large mesh; a resource larger than that goes alone). An update
that does not fit the limit is not sent at all: the error names the node, type and size,
``proxy-status`` shows TOO LARGE, and that version is not tried again on the stream (nor, being
refused the same way, on a reconnect); the next version is.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.listener.v3 import lds_pb2_grpc
from envoy.service.route.v3 import rds_pb2_grpc
from google.protobuf import any_pb2

from tulle.controlplane.xds import types
from tulle.controlplane.xds.cache import EMPTY_SET, ResourceSet, Snapshot, SnapshotCache, StreamStatus, Watch

log = logging.getLogger("tulle.controlplane.xds")

_MAX_OUTSTANDING_DELTA_NONCES = 32  # unanswered delta responses whose ACK we can still attribute

DEFAULT_MAX_XDS_MESSAGE_BYTES = 64 * 1024 * 1024
# gRPC's default receive limit: clients that never raised theirs refuse anything larger.
GRPC_DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A resource costs a little more in a response than its own bytes: the field's tag and length.
_FIELD_OVERHEAD = 6
_ENVELOPE_BYTES = 1024  # a response's version, nonce, type URL and control plane, with room to spare


def split_by_size(sizes: Sequence[int], limit: int) -> list[range]:
    """Consecutive groups of items whose sizes add up to at most ``limit`` each; an item larger
    than ``limit`` makes a group of its own. No items, no groups."""
    groups = []
    start, total = 0, 0
    for index, size in enumerate(sizes):
        if index > start and total + size > limit:
            groups.append(range(start, index))
            start, total = index, 0
        total += size
    if start < len(sizes):
        groups.append(range(start, len(sizes)))
    return groups


@dataclass
class _Update:
    """The responses one update of one type went out as (one, unless it was split)."""

    responses: list[Any]
    sizes: list[int]

    @property
    def size(self) -> int:
        return sum(self.sizes)


class XdsServer:
    """Serves ``cache`` over gRPC: ADS always, the per-type LDS/CDS/RDS/EDS services optionally."""

    def __init__(
        self,
        cache: SnapshotCache,
        *,
        serve_separate_services: bool = True,
        control_plane_id: str = "tulle",
        grpc_options: Sequence[tuple[str, Any]] = (),
        max_message_bytes: int = DEFAULT_MAX_XDS_MESSAGE_BYTES,
        split_bytes: int = GRPC_DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if max_message_bytes < 1:
            raise ValueError(f"max_message_bytes must be positive, not {max_message_bytes}")
        self.cache = cache
        self.serve_separate_services = serve_separate_services
        self.control_plane = base_pb2.ControlPlane(identifier=control_plane_id)
        self.max_message_bytes = max_message_bytes
        # What may be split is split to this size (never above the limit itself).
        self.split_bytes = min(split_bytes, max_message_bytes)
        self._grpc_options = [
            *grpc_options,
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Bind and start serving; returns the bound port (useful with ``port=0``)."""
        bound = self.bind(host, port)
        await self.serve()
        return bound

    def bind(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Bind ``host:port`` without serving yet; the bound port. OSError if it is in use: gRPC
        sets SO_REUSEPORT unless told not to, which let a second control plane bind the same port
        and take half of the proxies' streams."""
        if self._server is not None:
            raise RuntimeError("xDS server already bound")
        server = grpc.aio.server(options=[*self._grpc_options, ("grpc.so_reuseport", 0)])
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_AdsServicer(self), server)
        if self.serve_separate_services:
            _add_single_type_services(self, server)
        address = f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:  # gRPC's "Failed to bind to address": it does not say why
            bound = 0
        if bound == 0:
            raise OSError(f"cannot bind {address}")
        self._server, self.port = server, bound
        return bound

    async def serve(self) -> None:
        assert self._server is not None, "bind() first"
        await self._server.start()
        log.info("xDS server listening on port %d", self.port)

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting streams; open streams are cancelled after ``grace`` seconds."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)

    async def wait_for_termination(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def serve_sotw(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, fixed_type: str | None = None
    ) -> None:
        await _SotwStream(self, context, fixed_type).run(requests)

    async def serve_delta(
        self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, fixed_type: str | None = None
    ) -> None:
        await _DeltaStream(self, context, fixed_type).run(requests)


class _AdsServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    def __init__(self, server: XdsServer) -> None:
        self._server = server

    async def StreamAggregatedResources(self, request_iterator: Any, context: Any) -> None:  # noqa: N802
        await self._server.serve_sotw(request_iterator, context)

    async def DeltaAggregatedResources(self, request_iterator: Any, context: Any) -> None:  # noqa: N802
        await self._server.serve_delta(request_iterator, context)


def _add_single_type_services(xds: XdsServer, server: grpc.aio.Server) -> None:
    """The non-aggregated discovery services: same streams, each pinned to one type URL.
    Their unary Fetch* methods stay UNIMPLEMENTED (the base servicers' default)."""
    services = (
        (lds_pb2_grpc, "ListenerDiscoveryService", "Listeners", types.LISTENER),
        (cds_pb2_grpc, "ClusterDiscoveryService", "Clusters", types.CLUSTER),
        (rds_pb2_grpc, "RouteDiscoveryService", "Routes", types.ROUTE),
        (eds_pb2_grpc, "EndpointDiscoveryService", "Endpoints", types.ENDPOINT),
    )
    for module, service, noun, type_url in services:

        async def stream(_self: Any, request_iterator: Any, context: Any, _type: str = type_url) -> None:
            await xds.serve_sotw(request_iterator, context, _type)

        async def delta(_self: Any, request_iterator: Any, context: Any, _type: str = type_url) -> None:
            await xds.serve_delta(request_iterator, context, _type)

        base = getattr(module, f"{service}Servicer")
        servicer_class = type(f"_{service}", (base,), {f"Stream{noun}": stream, f"Delta{noun}": delta})
        getattr(module, f"add_{service}Servicer_to_server")(servicer_class(), server)


class _Stream:
    """The loop shared by both protocols: first request names the node, then requests and
    snapshot changes are handled one at a time in arrival order."""

    protocol = ""

    def __init__(self, server: XdsServer, context: grpc.aio.ServicerContext, fixed_type: str | None) -> None:
        self.server = server
        self.cache = server.cache
        self.context = context
        self.fixed_type = fixed_type
        self.node_id = ""
        self.status: StreamStatus | None = None
        self.types: dict[str, Any] = {}  # type URL -> the protocol's per-type state
        self._nonce_prefix = os.urandom(4).hex()
        self._nonce_counter = 0
        # type URL -> (version, bytes) of a response over gRPC's default limit not answered yet
        self._unanswered_large: dict[str, tuple[str, int]] = {}

    def next_nonce(self) -> str:
        self._nonce_counter += 1
        return f"{self._nonce_prefix}-{self._nonce_counter}"

    async def run(self, requests: AsyncIterator[Any]) -> None:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        async def read_requests() -> None:
            try:
                async for request in requests:
                    events.put_nowait(("request", request))
            except Exception as error:  # the client went away mid-read; nothing to answer
                log.debug("xDS stream of node %s ended: %r", self.node_id or "?", error)
            finally:
                events.put_nowait(("end", None))

        def on_change(_changed: frozenset[str]) -> None:
            # Only a wake-up: catch_up() works out what each type owes the client.
            try:
                loop.call_soon_threadsafe(events.put_nowait, ("changed", None))
            except RuntimeError:  # loop closed: the stream is gone
                pass

        reader = asyncio.create_task(read_requests())
        watch: Watch | None = None
        try:
            while True:
                kind, payload = await events.get()
                if kind == "end":
                    break
                if kind == "changed":
                    await self.catch_up()
                    continue
                if self.status is None:
                    node = payload.node
                    if not node.id:
                        await self.context.abort(
                            grpc.StatusCode.INVALID_ARGUMENT, "the first xDS request must carry node.id"
                        )
                    self.node_id = node.id
                    # Watch first: on_node_connected may set the snapshot right away.
                    watch = self.cache.watch(self.node_id, on_change)
                    self.status = self.cache.stream_opened(node, self.protocol)
                    log.info(
                        "%s xDS stream %d opened by node %s", self.protocol, self.status.stream_id, node.id
                    )
                type_url = payload.type_url or self.fixed_type or ""
                if not type_url or (self.fixed_type and type_url != self.fixed_type):
                    await self.context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"type_url {payload.type_url!r} is not served on this stream",
                    )
                self.on_request(type_url, payload)
                await self.catch_up()
        finally:
            reader.cancel()
            if watch is not None:
                watch.cancel()
            if self.status is not None:
                log.info("xDS stream %d of node %s closed", self.status.stream_id, self.node_id)
                self._warn_about_unanswered_large_responses()
                self.cache.stream_closed(self.status)

    def _warn_about_unanswered_large_responses(self) -> None:
        """A client whose receive limit is below a response's size drops the stream without
        answering (RESOURCE_EXHAUSTED on its side): the server cannot tell, but can say so."""
        for type_url, (version, size) in self._unanswered_large.items():
            log.warning(
                "node %s closed its xDS stream without answering %s version %s, a %d-byte response:"
                " if the proxy logs RESOURCE_EXHAUSTED, raise its gRPC receive limit above that"
                " (gRPC's default is %d bytes)",
                self.node_id, types.short_name(type_url), version, size, GRPC_DEFAULT_MAX_MESSAGE_BYTES,
            )

    async def catch_up(self) -> None:
        """Bring every type of the stream up to the node's current snapshot, in push order (CDS,
        EDS, LDS, RDS), then send the cluster removals held back for the types naming clusters
        (make before break). Every type is looked at, not only the changed ones: one held back by
        an earlier type goes out as soon as that type's answer lets it (a type with nothing owed
        costs a comparison of versions)."""
        snapshot = self.cache.get_snapshot(self.node_id)
        if snapshot is None:
            return
        for type_url in sorted(self.types, key=types.push_rank):
            await self.respond_if_needed(type_url, snapshot)
        if types.CLUSTER in self.types:
            await self.respond_if_needed(types.CLUSTER, snapshot)

    def cluster_users_behind(self, snapshot: Snapshot) -> bool:
        """Whether a type whose resources name clusters has yet to get its update of ``snapshot``
        (or to be found not to need one): until then, clusters it may name are not removed."""
        return any(
            state.handled_version != snapshot.version(type_url)
            for type_url, state in self.types.items()
            if type_url in types.CLUSTER_USERS and snapshot.has_type(type_url)
        )

    def on_request(self, type_url: str, request: Any) -> None:
        """Update the type's subscription and ACK/NACK state from a client request."""
        raise NotImplementedError

    async def respond_if_needed(self, type_url: str, snapshot: Snapshot) -> None:
        raise NotImplementedError

    def build_update(
        self, type_url: str, version: str, items: Sequence[Any], make_response: Callable[[list[Any]], Any],
        splittable: bool, names: Sequence[str],
    ) -> _Update | None:
        """Pack ``items`` (the response's repeated resources) into responses made by
        ``make_response``: one, or (``splittable``) as many as keep each under the server's split
        size. None, after recording and logging why, when a response would be over the limit.
        The responses copy the items: callers pass a temporary list, so that it is freed before
        the responses are written (2,000 streams writing at once would otherwise hold both)."""
        server = self.server
        sizes = [item.ByteSize() + _FIELD_OVERHEAD for item in items]
        if splittable:
            groups = split_by_size(sizes, server.split_bytes - _ENVELOPE_BYTES) or [range(0)]
        else:
            groups = [range(len(items))]
        update = _Update([], [])
        for group in groups:
            response = make_response([items[index] for index in group])
            update.responses.append(response)
            update.sizes.append(response.ByteSize())
        largest = max(update.sizes)
        if largest <= server.max_message_bytes:
            return update
        if splittable:  # only a resource too large on its own can overflow a split update
            index = max(range(len(sizes)), key=sizes.__getitem__)
            what = f"its resource {names[index]!r} alone is {sizes[index]} bytes"
        else:
            what = f"its {len(items)} resources make a {largest}-byte response"
        message = (
            f"{types.short_name(type_url)} version {version} for node {self.node_id} was not sent: {what}, over"
            f" the {server.max_message_bytes}-byte xDS message limit (tulle control-plane --xds-max-message-bytes)"
        )
        log.error("%s", message)
        assert self.status is not None
        self.status.record_refused(type_url, version, largest, server.max_message_bytes, message)
        return None

    async def write_update(self, type_url: str, version: str, update: _Update) -> None:
        for response, size in zip(update.responses, update.sizes, strict=True):
            if size > GRPC_DEFAULT_MAX_MESSAGE_BYTES:
                self._unanswered_large[type_url] = (version, size)
            await self.context.write(response)

    def record_client_answer(
        self, type_url: str, version: str, nonce: str, error_message: str | None
    ) -> None:
        assert self.status is not None
        self._unanswered_large.pop(type_url, None)
        if error_message is None:
            self.status.record_ack(type_url, version, nonce)
            return
        self.status.record_nack(type_url, version, nonce, error_message)
        log.warning(
            "node %s rejected %s version %s (nonce %s): %s",
            self.node_id,
            types.short_name(type_url),
            version,
            nonce,
            error_message,
        )


# --- state of the world -------------------------------------------------------------------------


@dataclass
class _SotwType:
    type_url: str
    wildcard: bool = False
    names: frozenset[str] = frozenset()
    ever_named: bool = False  # once names were sent, an empty list means "none", not wildcard
    awaiting_response: bool = False  # the client's latest request has not been answered yet
    names_changed: bool = False
    responded: bool = False
    sent_version: str = ""  # the version_info of our last update: what an ACK of it names
    sent_nonce: str = ""  # the nonce of its last response: the answer to it settles the update
    update_nonces: frozenset[str] = frozenset()  # every response's nonce, when the update was split
    part_rejected: str | None = None  # a NACK of an earlier response of a split update
    handled_version: str = ""  # the version last sent or refused: not tried again
    # The snapshot version whose resources that update carried: handled_version, except for a CDS
    # update that also kept clusters the snapshot dropped (``removals_held``; their removal waits
    # for the types naming clusters). A later type waits for the earlier ones to carry its snapshot.
    made_version: str = ""
    removals_held: bool = False
    # What the client holds is the set of the last update (shared with every stream that has it, so
    # nothing per stream), restricted to ``held_names`` (None: all of it): EDS and RDS updates after
    # the first carry only what it does not hold, a CDS update keeps what is still held and in use.
    # Optimistic, as for delta: a rejected resource counts as held, so the same version is not sent
    # again.
    held_set: ResourceSet = EMPTY_SET
    held_names: frozenset[str] | None = frozenset()
    # EDS after a CDS update: Envoy rebuilds a cluster whose definition changed and waits (warming)
    # for its endpoints, asking again with the same names: the next EDS update is whole, as istiod's,
    # and a request after the CDS update is answered even at the same version.
    whole_next: bool = False
    whole_asked: bool = False

    def holds(self, name: str, version: str) -> bool:
        held = self.held_set.entries.get(name)
        return held is not None and held.version == version and (self.held_names is None or name in self.held_names)

    @property
    def partial(self) -> bool:
        """Whether the next update may carry only what changed (a first update is always whole)."""
        return self.responded and not self.whole_next and self.type_url not in types.SOTW_COMPLETE_TYPES


class _SotwStream(_Stream):
    protocol = "sotw"

    def __init__(self, server: XdsServer, context: grpc.aio.ServicerContext, fixed_type: str | None) -> None:
        super().__init__(server, context, fixed_type)
        self.types: dict[str, _SotwType] = {}

    def on_request(self, type_url: str, request: discovery_pb2.DiscoveryRequest) -> None:
        assert self.status is not None
        state = self.types.get(type_url)
        if state is None:
            # A nonce from an earlier stream means nothing here: treat this as a first request.
            state = self.types[type_url] = _SotwType(type_url)
        elif request.response_nonce:
            if request.response_nonce != state.sent_nonce:
                if request.response_nonce in state.update_nonces and request.HasField("error_detail"):
                    state.part_rejected = request.error_detail.message  # the update as a whole was
                return  # superseded by a later response of ours; its answer will come
            if request.HasField("error_detail"):
                error: str | None = request.error_detail.message
            elif request.version_info != state.sent_version:
                # Clients predating error_detail NACK by answering with their old version.
                error = f"kept version {request.version_info!r} (no error_detail)"
            else:
                error = state.part_rejected
            state.update_nonces, state.part_rejected = frozenset(), None
            self.record_client_answer(type_url, state.sent_version, request.response_nonce, error)
        names = frozenset(request.resource_names)
        if names:
            state.ever_named = True
        wildcard = types.WILDCARD_NAME in names or (
            not names and not state.ever_named and type_url in types.WILDCARD_TYPES
        )
        names -= {types.WILDCARD_NAME}
        state.whole_asked = state.whole_next
        if (wildcard, names) != (state.wildcard, state.names):
            state.wildcard, state.names, state.names_changed = wildcard, names, True
            if not wildcard:  # the client forgets what it unsubscribed; a new subscription is sent again
                state.held_names = names if state.held_names is None else state.held_names & names
            self.status.record_subscription(type_url, names, wildcard)
        state.awaiting_response = True

    def held_back(self, type_url: str, snapshot: Snapshot) -> bool:
        """Whether an earlier type (push order) has yet to send its update of ``snapshot``: its last
        response is still unanswered, and only one per type is in flight. A listener or route must
        not reach the client before the clusters it names (xDS protocol, "Eventual consistency
        considerations"), so the later type waits for that answer too."""
        rank = types.push_rank(type_url)
        return any(
            state.made_version != snapshot.version(other)
            for other, state in self.types.items()
            if types.push_rank(other) < rank and snapshot.has_type(other)
        )

    def clusters_to_keep(self, state: _SotwType, resource_set: ResourceSet, snapshot: Snapshot) -> dict[str, Any]:
        """Clusters the client holds and still subscribes to that ``resource_set`` dropped, while
        listeners or routes that may name them have yet to get this snapshot's update: kept (make
        before break), then removed by the CDS update that follows theirs."""
        if not state.responded or not self.cluster_users_behind(snapshot):
            return {}
        return {
            name: entry
            for name, entry in state.held_set.entries.items()
            if name not in resource_set.entries
            and (state.held_names is None or name in state.held_names)
            and (state.wildcard or name in state.names)
        }

    async def respond_if_needed(self, type_url: str, snapshot: Snapshot) -> None:
        state = self.types.get(type_url)
        if state is None or not state.awaiting_response or not snapshot.has_type(state.type_url):
            return
        snapshot_version = snapshot.version(state.type_url)
        if (
            state.responded
            and not (state.names_changed or state.whole_asked or state.removals_held)
            and snapshot_version == state.made_version
        ):
            return  # the client has (or rejected) exactly this, or it was refused; wait for a newer version
        if self.held_back(state.type_url, snapshot):
            return  # the earlier type's answer sweeps this stream again
        resource_set, version = snapshot.resource_set(state.type_url), snapshot_version
        kept = self.clusters_to_keep(state, resource_set, snapshot) if state.type_url == types.CLUSTER else {}
        if kept:  # a version of its own: the snapshot's clusters plus the kept ones
            resource_set = resource_set.merged(ResourceSet(kept))
            version = resource_set.version
        if state.responded and not (state.names_changed or state.whole_asked) and version == state.handled_version:
            # What the client has already carries this snapshot's clusters (and maybe kept ones).
            state.made_version, state.removals_held = snapshot_version, bool(kept)
            return
        entries = resource_set.entries
        selected = sorted(entries) if state.wildcard else sorted(state.names & entries.keys())
        if state.partial:
            selected = [name for name in selected if not state.holds(name, entries[name].version)]
            if not selected and not state.names_changed:
                state.handled_version = state.made_version = version  # nothing this client holds changed
                return
        state.handled_version, state.made_version, state.names_changed = version, snapshot_version, False
        state.removals_held = bool(kept)
        nonces: list[str] = []

        def make_response(resources: list[Any]) -> discovery_pb2.DiscoveryResponse:
            nonces.append(self.next_nonce())
            return discovery_pb2.DiscoveryResponse(
                version_info=version, type_url=state.type_url, nonce=nonces[-1],
                control_plane=self.server.control_plane, resources=resources,
            )

        splittable = state.type_url not in types.SOTW_COMPLETE_TYPES
        update = self.build_update(
            state.type_url, version,
            [any_pb2.Any(type_url=state.type_url, value=entries[name].serialized) for name in selected],
            make_response, splittable, selected,
        )
        if update is None:  # refused; the request stays unanswered until a newer version fits
            return
        # Envoy rebuilds a cluster whose definition changed (not one only removed around it) and
        # waits for its endpoints.
        rebuilt = state.type_url == types.CLUSTER and any(
            not state.holds(name, entries[name].version) for name in selected
        )
        state.sent_version, state.sent_nonce = version, nonces[-1]
        state.update_nonces, state.part_rejected = frozenset(nonces), None
        state.awaiting_response = state.whole_next = state.whole_asked = False
        state.responded = True
        if rebuilt and types.ENDPOINT in self.types:
            self.types[types.ENDPOINT].whole_next = True
        # What it did not hold it has now: the client holds this set.
        state.held_set = resource_set
        state.held_names = None if state.wildcard else state.names
        assert self.status is not None
        self.status.record_sent(state.type_url, version, nonces[-1], len(selected), update.size)
        log.debug(
            "push %s version %s (%d resources, %d bytes in %d responses%s) to %s",
            types.short_name(state.type_url),
            version,
            len(selected),
            update.size,
            len(update.responses),
            f", {len(kept)} kept until listeners and routes moved off them" if kept else "",
            self.node_id,
        )
        await self.write_update(state.type_url, version, update)


# --- incremental (delta) ------------------------------------------------------------------------


@dataclass
class _DeltaType:
    type_url: str
    wildcard: bool = False
    subscribed: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # name -> version the client holds
    # Names owed an answer although nothing about them changed: newly (re)subscribed ones, and
    # names unsubscribed while a wildcard may still cover them (xDS protocol, "Unsubscribing").
    owed: set[str] = field(default_factory=set)
    responded: bool = False
    # nonce -> (system version sent, the nonce of the last response of its update)
    outstanding: dict[str, tuple[str, str]] = field(default_factory=dict)
    part_rejected: dict[str, str] = field(default_factory=dict)  # last nonce of an update -> a NACK of a part
    # The system version last sent (or refused as too large: not tried again), with nothing owed
    # since; not set while cluster removals are held back for the types naming clusters.
    handled_version: str = ""

    def interested_in(self, name: str) -> bool:
        return self.wildcard or name in self.subscribed


class _DeltaStream(_Stream):
    protocol = "delta"

    def __init__(self, server: XdsServer, context: grpc.aio.ServicerContext, fixed_type: str | None) -> None:
        super().__init__(server, context, fixed_type)
        self.types: dict[str, _DeltaType] = {}

    def on_request(self, type_url: str, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        assert self.status is not None
        subscribe = list(request.resource_names_subscribe)
        unsubscribe = list(request.resource_names_unsubscribe)
        state = self.types.get(type_url)
        if state is None:
            state = self.types[type_url] = _DeltaType(type_url)
            # Legacy wildcard: a first request that names nothing at all.
            state.wildcard = type_url in types.WILDCARD_TYPES and not subscribe and not unsubscribe
            state.known = dict(request.initial_resource_versions)
            initial = True
        else:
            initial = False
            self._record_answer(state, request)
        for name in unsubscribe:
            if name == types.WILDCARD_NAME:
                state.wildcard = False
                continue
            state.subscribed.discard(name)
            state.owed.discard(name)
            if state.wildcard:
                state.known.pop(name, None)
                state.owed.add(name)  # say whether the wildcard still covers it
        for name in subscribe:
            if name == types.WILDCARD_NAME:
                state.wildcard = True
                continue
            state.subscribed.add(name)
            if not initial:
                # The client may have forgotten it: a subscribe always gets an answer.
                state.known.pop(name, None)
            state.owed.add(name)
        # Whatever the client holds but no longer wants, it drops itself: no removal needed.
        for name in [n for n in state.known if not state.interested_in(n)]:
            del state.known[name]
        if subscribe or unsubscribe or initial:
            state.handled_version = ""  # what the client wants changed: compare again
            self.status.record_subscription(type_url, state.subscribed, state.wildcard)

    def _record_answer(self, state: _DeltaType, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        nonce = request.response_nonce
        if not nonce or nonce not in state.outstanding:
            return
        version, last_nonce = state.outstanding[nonce]
        # This answer also settles every earlier response still outstanding.
        for sent_nonce in list(state.outstanding):
            del state.outstanding[sent_nonce]
            if sent_nonce == nonce:
                break
        error = request.error_detail.message if request.HasField("error_detail") else None
        if nonce != last_nonce:  # one part of a split update: the answer to its last part settles it
            if error is not None:
                state.part_rejected[last_nonce] = error
            return
        error = error if error is not None else state.part_rejected.get(last_nonce)
        state.part_rejected = {n: e for n, e in state.part_rejected.items() if n in state.outstanding}
        self.record_client_answer(state.type_url, version, nonce, error)

    async def respond_if_needed(self, type_url: str, snapshot: Snapshot) -> None:
        state = self.types.get(type_url)
        if state is None or not snapshot.has_type(type_url):
            return
        version = snapshot.version(type_url)
        if version == state.handled_version and not state.owed:
            return  # sent, or too large at this version (a newer one is tried)
        available = snapshot.resources(type_url)
        versions = snapshot.resource_versions(type_url)
        updated = sorted(
            name
            for name in available
            if state.interested_in(name) and state.known.get(name) != versions[name]
        )
        removed = {name for name in state.owed if name not in available}
        gone = {name for name in state.known if name not in available}
        # Make before break: a cluster the client holds goes once listeners and routes that may
        # name it got this snapshot's update (the end of catch_up() comes back for it).
        hold = bool(gone) and type_url == types.CLUSTER and self.cluster_users_behind(snapshot)
        if not hold:
            removed |= gone
        # Envoy needs an answer to its first wildcard request to finish initializing, even if empty.
        if not updated and not removed and (state.responded or not state.wildcard):
            state.owed.clear()
            if not hold:
                state.handled_version = version
            return
        nonces: list[str] = []

        def make_response(resources: list[Any]) -> discovery_pb2.DeltaDiscoveryResponse:
            nonces.append(self.next_nonce())
            return discovery_pb2.DeltaDiscoveryResponse(
                system_version_info=version, type_url=type_url, nonce=nonces[-1],
                control_plane=self.server.control_plane, resources=resources,
                removed_resources=sorted(removed) if len(nonces) == 1 else (),
            )

        # Delta updates may always be split: each resource could have had a response of its own.
        update = self.build_update(type_url, version, [
            discovery_pb2.Resource(
                name=name,
                version=versions[name],
                resource=any_pb2.Any(type_url=type_url, value=snapshot.serialized(type_url, name)),
            )
            for name in updated
        ], make_response, True, updated)
        state.owed.clear()
        if not hold:
            state.handled_version = version
        if update is None:
            return
        # Optimistic: a NACKed resource counts as held, so the same version is not sent again.
        for name in updated:
            state.known[name] = versions[name]
        for name in removed:
            state.known.pop(name, None)
        state.responded = True
        for nonce in nonces:
            state.outstanding[nonce] = (version, nonces[-1])
        while len(state.outstanding) > _MAX_OUTSTANDING_DELTA_NONCES:
            del state.outstanding[next(iter(state.outstanding))]
        assert self.status is not None
        self.status.record_sent(type_url, version, nonces[-1], len(updated) + len(removed), update.size)
        log.debug(
            "delta push %s: %d updated, %d removed (%d bytes in %d responses) to %s",
            types.short_name(type_url),
            len(updated),
            len(removed),
            update.size,
            len(update.responses),
            self.node_id,
        )
        await self.write_update(type_url, version, update)
