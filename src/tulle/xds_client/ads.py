"""The proxy's ADS client: one gRPC stream for clusters, endpoints, listeners and routes.

State of the world (``api_type: GRPC``) and incremental (``DELTA_GRPC``). As in
Envoy, clusters and listeners are subscribed to only when the bootstrap's
``cds_config``/``lds_config`` ask for them; endpoints and routes follow what the
clusters and listeners in use, static or dynamic, name. Each response is applied
whole or NACKed with the reason (the last good config keeps serving). When the
stream fails the proxy keeps serving and reconnects with Envoy's jittered
exponential back-off (a random delay below 500 ms doubling up to 30 s, back to
500 ms once a response arrives), logging each distinct error once; on reconnect
it tells the server what it has (SotW: last versions; delta: resource versions).
Envoy's xDS stats are kept as Envoy keeps them (:mod:`tulle.xds_client.stats`).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, message
from google.rpc import status_pb2

from tulle.config.loader import unpack_any
from tulle.stats.store import Store
from tulle.xds_client.apply import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    SUBSCRIPTION_ORDER,
    WILDCARD_TYPES,
    UpdateRejected,
    Watch,
    XdsApplier,
    resource_name,
)
from tulle.xds_client.stats import (
    CDS_PREFIX,
    LDS_PREFIX,
    ControlPlaneStats,
    EdsStats,
    RdsStats,
    SubscriptionStats,
)

log = logging.getLogger("tulle.xds")

INVALID_ARGUMENT = 3  # google.rpc.Code
MAX_RECEIVE_FIELD = "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.max_receive_message_length"
_KIND = {CLUSTER_TYPE: "clusters", ENDPOINT_TYPE: "endpoints", LISTENER_TYPE: "listeners", ROUTE_TYPE: "routes"}


class _Subscription:
    """One of Envoy's subscriptions: its stats and its initial-fetch timer."""

    __slots__ = ("watch", "stats", "label", "timer")

    def __init__(self, watch: Watch, stats: SubscriptionStats, label: str) -> None:
        self.watch = watch
        self.stats = stats
        self.label = label  # for logs: "listeners", "routes '9080'", ...
        self.timer: asyncio.TimerHandle | None = None

    def start(self, on_timeout: Callable[[_Subscription], None]) -> None:
        self.stats.started()
        if self.watch.initial_fetch_timeout > 0:
            self.timer = asyncio.get_running_loop().call_later(
                self.watch.initial_fetch_timeout, on_timeout, self)

    def delivered(self) -> None:
        """An update for it arrived (accepted or not): the initial fetch is over."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _TypeState:
    __slots__ = ("version", "nonce", "names", "resource_versions", "subscribed", "subscriptions")

    def __init__(self) -> None:
        self.version = ""  # last accepted (SotW)
        self.nonce = ""
        self.names: set[str] = set()  # subscribed names (non-wildcard types)
        self.resource_versions: dict[str, str] = {}  # delta: what we hold
        self.subscribed = False  # a request for this type went out on the current stream
        self.subscriptions: dict[str, _Subscription] = {}  # LDS/CDS: one, keyed ""; RDS: by route; EDS: by cluster


class AdsClient:
    def __init__(
        self,
        target: str,
        node: message.Message,
        applier: XdsApplier,
        *,
        delta: bool = False,
        wildcard: dict[str, float] | None = None,
        max_receive_message_length: int = 0,
        stats: Store | None = None,
        on_applied: Callable[[str, dict[str, message.Message], set[str], bool], Any] | None = None,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        """``wildcard``: the LDS/CDS types the bootstrap asks for, each with its initial fetch timeout
        in seconds (0: none). ``max_receive_message_length``: the largest response accepted, in bytes;
        0 means no limit, as for Envoy's own gRPC client."""
        self.target = target
        self.node = node
        self.applier = applier
        self.delta = delta
        self.wildcard = dict(wildcard or {})
        self.max_receive_message_length = max_receive_message_length
        self.store = stats if stats is not None else Store()
        self.on_applied = on_applied
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.states = {type_url: _TypeState() for type_url in SUBSCRIPTION_ORDER}
        self.control_plane = ControlPlaneStats(self.store)
        for type_url, timeout in self.wildcard.items():
            prefix = CDS_PREFIX if type_url == CLUSTER_TYPE else LDS_PREFIX
            self.states[type_url].subscriptions[""] = _Subscription(
                Watch("", prefix, timeout), SubscriptionStats(self.store, prefix), _KIND[type_url])
        self.connected = asyncio.Event()  # set while responses arrive on a live stream
        self._outbox: asyncio.Queue[message.Message | None] | None = None
        self._node_sent = False
        self._responded = False  # a response arrived on the current stream
        self._stopped = False
        self._last_error: str | None = None  # the stream's last failure, logged once until it changes
        self._last_rejection: dict[str, str] = {}  # type -> the last NACK's reason, logged once
        self._warned: set[str] = set()

    # --- lifecycle -----------------------------------------------------------------
    async def run(self) -> None:
        for type_url in self.wildcard:
            self.states[type_url].subscriptions[""].start(self._initial_fetch_timed_out)
        backoff = self.initial_backoff
        while not self._stopped:
            self._responded = False
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                self._stream_closed(self._describe(exc))
            except Exception as exc:  # noqa: BLE001 - the proxy keeps serving whatever went wrong
                self._stream_closed(f"{type(exc).__name__}: {exc}", exc)
            else:
                self._stream_closed("the server closed the stream")
            if self._stopped:
                return
            if self._responded:
                backoff = self.initial_backoff  # Envoy resets its back-off once a response arrives
            delay = random.uniform(0, backoff)  # full jitter: a restarted control plane is not stampeded
            log.debug("reconnecting to %s in %.2fs", self.target, delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self.max_backoff)

    def stop(self) -> None:
        self._stopped = True
        for state in self.states.values():
            for subscription in state.subscriptions.values():
                subscription.delivered()
        if self._outbox is not None:
            self._outbox.put_nowait(None)

    def _describe(self, exc: grpc.aio.AioRpcError) -> str:
        text = f"{exc.code().name} {exc.details()}"
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            limit = f"{self.max_receive_message_length} bytes" if self.max_receive_message_length else "not set"
            text += f"; a response is larger than {MAX_RECEIVE_FIELD} ({limit})"
        return text

    def _stream_closed(self, error: str, exc: BaseException | None = None) -> None:
        """Envoy's onEstablishmentFailure: every subscription counts a failed update."""
        self.connected.clear()
        self.control_plane.connected_state.set(0)
        for state in self.states.values():
            for subscription in state.subscriptions.values():
                subscription.stats.failed()
        if self._stopped:
            return
        if error != self._last_error:
            log.warning("xDS stream to %s failed: %s; serving the last good config and retrying with back-off",
                        self.target, error, exc_info=exc)
            self._last_error = error
        else:
            log.debug("xDS stream to %s failed again: %s", self.target, error)

    async def _session(self) -> None:
        outbox: asyncio.Queue[message.Message | None] = asyncio.Queue()
        self._outbox = outbox
        self._node_sent = False
        for state in self.states.values():
            state.subscribed = False

        async def requests() -> AsyncIterator[message.Message]:
            while True:
                request = await outbox.get()
                if request is None:
                    return
                yield request

        options = (
            # The xDS stream goes straight to the control plane, never through an HTTP proxy from the
            # environment (a sidecar's own HTTP_PROXY would point back at itself).
            ("grpc.enable_http_proxy", 0),
            # gRPC's default is 4 MiB; a large mesh's listeners or routes are bigger (-1: no limit).
            ("grpc.max_receive_message_length", self.max_receive_message_length or -1),
        )
        async with grpc.aio.insecure_channel(self.target, options=options) as channel:
            ready = asyncio.ensure_future(self._connected_when_ready(channel))
            try:
                stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
                if self.delta:
                    call = stub.DeltaAggregatedResources(requests())
                else:
                    call = stub.StreamAggregatedResources(requests())
                self._subscribe_all()
                async for response in call:
                    await self._handle(response)
            finally:
                ready.cancel()
                await asyncio.gather(ready, return_exceptions=True)

    async def _connected_when_ready(self, channel: grpc.aio.Channel) -> None:
        """control_plane.connected_state is 1 once the connection is up, before any response."""
        await channel.channel_ready()
        self.control_plane.connected_state.set(1)

    # --- requests ------------------------------------------------------------------
    def _subscribe_all(self) -> None:
        """A new stream: ask for everything wanted, in Envoy's order (clusters, endpoints, listeners,
        routes), saying what we already hold."""
        for type_url in SUBSCRIPTION_ORDER:
            state = self.states[type_url]
            if type_url in WILDCARD_TYPES:
                if type_url in self.wildcard:
                    self._send(self._initial_request(type_url))
                continue
            state.names = self._follow_watches(type_url)
            if state.names:
                self._send(self._initial_request(type_url))

    def _initial_request(self, type_url: str) -> message.Message:
        state = self.states[type_url]
        state.subscribed = True
        if self.delta:
            request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url)
            held = state.resource_versions
            if type_url not in WILDCARD_TYPES:
                request.resource_names_subscribe.extend(sorted(state.names))
                held = {name: version for name, version in held.items() if name in state.names}
            request.initial_resource_versions.update(held)
            return request
        request = discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=state.version)
        if type_url not in WILDCARD_TYPES:
            request.resource_names.extend(sorted(state.names))
        return request

    def _send(self, request: message.Message) -> None:
        if self._outbox is None:
            return
        if not self._node_sent:  # the node goes on the stream's first request, whatever its type
            request.node.CopyFrom(self.node)
            self._node_sent = True
        self._outbox.put_nowait(request)

    def _ack(self, type_url: str, nonce: str, error: str = "") -> None:
        state = self.states[type_url]
        if self.delta:
            request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=nonce)
        else:
            request = discovery_pb2.DiscoveryRequest(type_url=type_url, response_nonce=nonce,
                                                     version_info=state.version)
            if type_url not in WILDCARD_TYPES:
                request.resource_names.extend(sorted(state.names))
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=INVALID_ARGUMENT, message=error))
        self._send(request)

    def _follow_watches(self, type_url: str) -> set[str]:
        """Start a subscription for every new route/endpoint watch and end those gone; the names wanted."""
        watches = self.applier.watches(type_url)
        subscriptions = self.states[type_url].subscriptions
        for key in list(subscriptions):
            watch, current = watches.get(key), subscriptions[key].watch
            # an RDS subscription is shared: it lives (stats and all) while any connection manager uses it
            kept = watch == current if type_url == ENDPOINT_TYPE else watch is not None
            if not kept:
                subscriptions.pop(key).delivered()
        for key, watch in watches.items():
            if key not in subscriptions:
                if type_url == ROUTE_TYPE:
                    stats: SubscriptionStats = RdsStats(self.store, watch.stat_prefix)
                    label = f"routes {key!r}"
                else:
                    stats = EdsStats(self.store, watch.stat_prefix)
                    label = f"endpoints {watch.resource_name!r} of cluster {key!r}"
                subscription = subscriptions[key] = _Subscription(watch, stats, label)
                subscription.start(self._initial_fetch_timed_out)
        return {watch.resource_name for watch in watches.values()}

    def _follow_subscriptions(self) -> None:
        """Endpoints and routes to subscribe to follow the clusters and listeners in use."""
        for type_url in (ENDPOINT_TYPE, ROUTE_TYPE):
            state = self.states[type_url]
            wanted = self._follow_watches(type_url)
            if wanted == state.names and (state.subscribed or not wanted):
                continue
            if not state.subscribed:
                state.names = wanted
                self._send(self._initial_request(type_url))
                continue
            added, dropped = wanted - state.names, state.names - wanted
            state.names = wanted
            if self.delta:
                request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url)
                request.resource_names_subscribe.extend(sorted(added))
                request.resource_names_unsubscribe.extend(sorted(dropped))
                for name in dropped:
                    state.resource_versions.pop(name, None)
            else:
                request = discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=state.version,
                                                         response_nonce=state.nonce)
                request.resource_names.extend(sorted(wanted))
            self._send(request)

    def _initial_fetch_timed_out(self, subscription: _Subscription) -> None:
        subscription.timer = None
        subscription.stats.timed_out()
        log.warning("xDS: initial fetch of %s timed out after %gs (initial_fetch_timeout)", subscription.label,
                    subscription.watch.initial_fetch_timeout)

    # --- responses -----------------------------------------------------------------
    async def _handle(self, response: message.Message) -> None:
        type_url = response.type_url
        state = self.states.get(type_url)
        if state is None or not state.subscribed:
            # As Envoy: a response for a type nobody asked for is neither applied nor answered.
            if type_url not in self._warned:
                self._warned.add(type_url)
                log.warning("xDS: ignoring %s from %s: the proxy did not subscribe to them",
                            _KIND.get(type_url, type_url), self.target)
            return
        self._responding(response)
        receivers: list[_Subscription] = []
        try:
            resources, removed = self._decode(type_url, response)
            receivers = self._receivers(type_url, resources, removed)
            if self.delta:
                for subscription in receivers:  # Envoy's delta subscription counts the attempt first
                    subscription.stats.update_attempt.value += 1
            previous = dict(self.applier.route_protos) if type_url == ROUTE_TYPE else {}
            started = time.monotonic()
            await self.applier.apply(type_url, resources, removed, not self.delta)
        except UpdateRejected as exc:
            for subscription in state.subscriptions.values():
                subscription.delivered()
                subscription.stats.rejected()
            self._rejected(type_url, response.nonce, str(exc))
            return
        duration_ms = (time.monotonic() - started) * 1000
        version = response.system_version_info if self.delta else response.version_info
        for subscription in receivers:
            subscription.delivered()
            subscription.stats.accepted(version, duration_ms, attempt=not self.delta)
            name = subscription.watch.resource_name
            if isinstance(subscription.stats, RdsStats) and name in resources and resources[name] != previous.get(name):
                subscription.stats.reloaded()
            if isinstance(subscription.stats, EdsStats) and name in removed and name not in resources:
                subscription.stats.update_empty.value += 1  # Envoy keeps the cluster's endpoints
        self._last_rejection.pop(type_url, None)
        state.nonce = response.nonce
        if self.delta:
            for item in response.resources:
                if item.name in resources:
                    state.resource_versions[item.name] = item.version
            for name in removed:
                state.resource_versions.pop(name, None)
        else:
            state.version = response.version_info
        self._ack(type_url, response.nonce)
        if self.on_applied is not None:
            self.on_applied(type_url, resources, removed, not self.delta)
        self._follow_subscriptions()

    def _responding(self, response: message.Message) -> None:
        self._responded = True
        self.connected.set()
        self.control_plane.connected_state.set(1)
        if response.HasField("control_plane"):
            self.control_plane.identifier.set(response.control_plane.identifier)
        if self._last_error is not None:
            log.info("xDS stream to %s re-established", self.target)
            self._last_error = None

    def _decode(self, type_url: str, response: message.Message) -> tuple[dict[str, message.Message], set[str]]:
        if self.delta:
            resources = {item.name: self._unpack(type_url, item.resource) for item in response.resources}
            removed = set(response.removed_resources)
        else:
            resources = {}
            for item in response.resources:
                resource = self._unpack(type_url, item)
                resources[resource_name(resource)] = resource
            removed = set()
        if type_url not in WILDCARD_TYPES:
            # As Envoy: only what a route/endpoint watch asked for is delivered.
            wanted = self.states[type_url].names
            resources = {name: resource for name, resource in resources.items() if name in wanted}
            removed &= wanted
        return resources, removed

    def _receivers(self, type_url: str, resources: dict[str, message.Message], removed: set[str]) -> list[_Subscription]:
        """The subscriptions this update is for: LDS/CDS's one always; RDS/EDS watches of a named resource."""
        subscriptions = self.states[type_url].subscriptions.values()
        if type_url in WILDCARD_TYPES:
            return list(subscriptions)
        return [s for s in subscriptions if s.watch.resource_name in resources or s.watch.resource_name in removed]

    def _rejected(self, type_url: str, nonce: str, reason: str) -> None:
        state = self.states[type_url]
        kind = type_url.rsplit(".", 1)[-1]
        if self._last_rejection.get(type_url) != reason:
            log.warning("NACK %s (nonce %s): %s", kind, nonce, reason)
            self._last_rejection[type_url] = reason
        else:
            log.debug("NACK %s (nonce %s) again: %s", kind, nonce, reason)
        state.nonce = nonce
        self._ack(type_url, nonce, reason)

    @staticmethod
    def _unpack(type_url: str, value: any_pb2.Any) -> message.Message:
        if value.type_url != type_url:
            raise UpdateRejected(f"resource of type {value.type_url} in a {type_url} response")
        try:
            return unpack_any(value)
        except Exception as exc:  # noqa: BLE001 - a resource that does not decode is a NACK
            raise UpdateRejected(f"cannot decode {type_url}: {exc}") from None
