"""The proxy's ADS client: one gRPC stream for clusters, endpoints, listeners and routes.

State of the world (``api_type: GRPC``) and incremental (``DELTA_GRPC``). Each
response is applied whole or NACKed with the reason (the last good config keeps
serving); subscriptions to endpoints and routes follow what the applied
clusters and listeners name. When the control plane goes away the proxy keeps
serving and reconnects with exponential back-off and jitter; on reconnect it
tells the server what it has (SotW: last versions; delta: resource versions).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, message
from google.rpc import status_pb2

from tulle.config.loader import unpack_any
from tulle.xds_client.apply import (
    SUBSCRIPTION_ORDER,
    WILDCARD_TYPES,
    UpdateRejected,
    XdsApplier,
    resource_name,
)

log = logging.getLogger("tulle.xds")

INVALID_ARGUMENT = 3  # google.rpc.Code


class _TypeState:
    __slots__ = ("version", "nonce", "names", "resource_versions", "subscribed")

    def __init__(self) -> None:
        self.version = ""  # last accepted (SotW)
        self.nonce = ""
        self.names: set[str] = set()  # subscribed names (non-wildcard types)
        self.resource_versions: dict[str, str] = {}  # delta: what we hold
        self.subscribed = False


class AdsClient:
    def __init__(
        self,
        target: str,
        node: message.Message,
        applier: XdsApplier,
        *,
        delta: bool = False,
        on_applied: Callable[[str, dict[str, message.Message], set[str], bool], Any] | None = None,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self.target = target
        self.node = node
        self.applier = applier
        self.delta = delta
        self.on_applied = on_applied
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.states = {type_url: _TypeState() for type_url in SUBSCRIPTION_ORDER}
        self.connected = asyncio.Event()
        self.updates_applied = 0
        self.updates_rejected = 0
        self.last_rejection = ""
        self._outbox: asyncio.Queue[message.Message | None] | None = None
        self._stopped = False

    # --- lifecycle -----------------------------------------------------------------
    async def run(self) -> None:
        backoff = self.initial_backoff
        while not self._stopped:
            try:
                await self._session()
                backoff = self.initial_backoff
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning("xDS stream to %s ended: %s %s", self.target, exc.code().name, exc.details())
            except Exception:  # noqa: BLE001 - the proxy keeps serving whatever went wrong
                log.exception("xDS stream to %s failed", self.target)
            self.connected.clear()
            if self._stopped:
                return
            delay = backoff * (0.5 + random.random())  # jitter: a restarted control plane is not stampeded
            log.info("reconnecting to %s in %.1fs (serving the last good config meanwhile)", self.target, delay)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self.max_backoff)

    def stop(self) -> None:
        self._stopped = True
        if self._outbox is not None:
            self._outbox.put_nowait(None)

    async def _session(self) -> None:
        outbox: asyncio.Queue[message.Message | None] = asyncio.Queue()
        self._outbox = outbox

        async def requests() -> AsyncIterator[message.Message]:
            while True:
                request = await outbox.get()
                if request is None:
                    return
                yield request

        # The xDS stream goes straight to the control plane, never through an HTTP proxy from the
        # environment (a sidecar's own HTTP_PROXY would point back at itself).
        async with grpc.aio.insecure_channel(self.target, options=(("grpc.enable_http_proxy", 0),)) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            if self.delta:
                call = stub.DeltaAggregatedResources(requests())
            else:
                call = stub.StreamAggregatedResources(requests())
            first = True
            for type_url in WILDCARD_TYPES:
                outbox.put_nowait(self._initial_request(type_url, with_node=first))
                first = False
            for type_url in SUBSCRIPTION_ORDER:  # names learnt before a reconnect
                if type_url not in WILDCARD_TYPES and self.states[type_url].names:
                    outbox.put_nowait(self._initial_request(type_url, with_node=False))
            async for response in call:
                self.connected.set()
                await self._handle(response)

    # --- requests ------------------------------------------------------------------
    def _initial_request(self, type_url: str, with_node: bool) -> message.Message:
        state = self.states[type_url]
        state.subscribed = True
        node = self.node if with_node else None
        if self.delta:
            request = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url)
            if node is not None:
                request.node.CopyFrom(node)
            if type_url not in WILDCARD_TYPES:
                request.resource_names_subscribe.extend(sorted(state.names))
            request.initial_resource_versions.update(state.resource_versions)
            return request
        request = discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=state.version)
        if node is not None:
            request.node.CopyFrom(node)
        if type_url not in WILDCARD_TYPES:
            request.resource_names.extend(sorted(state.names))
        return request

    def _send(self, request: message.Message) -> None:
        if self._outbox is not None:
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

    def _follow_subscriptions(self) -> None:
        """Endpoints and routes to subscribe to follow the clusters and listeners in use."""
        for type_url in SUBSCRIPTION_ORDER:
            if type_url in WILDCARD_TYPES:
                continue
            state = self.states[type_url]
            wanted = self.applier.wanted(type_url)
            if wanted == state.names and state.subscribed:
                continue
            added, dropped = wanted - state.names, state.names - wanted
            state.names = wanted
            state.subscribed = True
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
            if added or dropped or not self.delta:
                self._send(request)

    # --- responses -----------------------------------------------------------------
    async def _handle(self, response: message.Message) -> None:
        type_url = response.type_url
        if type_url not in self.states:
            self._ack(type_url, response.nonce, f"unsupported resource type {type_url}")
            return
        state = self.states[type_url]
        try:
            if self.delta:
                resources = {item.name: self._unpack(type_url, item.resource) for item in response.resources}
                removed = set(response.removed_resources)
            else:
                resources = {}
                for item in response.resources:
                    resource = self._unpack(type_url, item)
                    resources[resource_name(resource)] = resource
                removed = set()
            await self.applier.apply(type_url, resources, removed, not self.delta)
        except UpdateRejected as exc:
            self.updates_rejected += 1
            self.last_rejection = str(exc)
            log.warning("NACK %s (nonce %s): %s", type_url.rsplit(".", 1)[-1], response.nonce, exc)
            state.nonce = response.nonce
            self._ack(type_url, response.nonce, str(exc))
            return
        self.updates_applied += 1
        state.nonce = response.nonce
        if self.delta:
            for item in response.resources:
                state.resource_versions[item.name] = item.version
            for name in response.removed_resources:
                state.resource_versions.pop(name, None)
        else:
            state.version = response.version_info
        self._ack(type_url, response.nonce)
        if self.on_applied is not None:
            self.on_applied(type_url, resources, removed, not self.delta)
        self._follow_subscriptions()

    @staticmethod
    def _unpack(type_url: str, value: any_pb2.Any) -> message.Message:
        if value.type_url != type_url:
            raise UpdateRejected(f"resource of type {value.type_url} in a {type_url} response")
        try:
            return unpack_any(value)
        except Exception as exc:  # noqa: BLE001 - a resource that does not decode is a NACK
            raise UpdateRejected(f"cannot decode {type_url}: {exc}") from None
