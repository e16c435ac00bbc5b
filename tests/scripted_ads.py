"""A scripted ADS server for tests, and builders for the resources it serves.

A test double written for the proxy-side tests (the control plane's own xDS
server has its own suite): it records every request and sends whatever each
test publishes, so the client's protocol behaviour is visible.
"""

from __future__ import annotations

import asyncio
from typing import Any

from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.endpoint.v3.endpoint_pb2 import ClusterLoadAssignment
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2

from tulle.config.loader import parse_message
from tulle.xds_client.apply import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


class ScriptedAds(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    """Answers every request for a type with the latest scripted response for it, once per version and
    stream (a new stream gets it again, as from a real server)."""

    def __init__(self, *, unsolicited: tuple[str, ...] = ()) -> None:
        """``unsolicited``: types sent whether or not the client asked for them (a misbehaving server)."""
        self.unsolicited = set(unsolicited)
        self.requests: list[Any] = []
        self.latest: dict[str, discovery_pb2.DiscoveryResponse] = {}
        self.wake = asyncio.Event()
        self.nonce = 0

    def publish(self, type_url: str, version: str, resources: list[Any]) -> None:
        self.nonce += 1
        response = discovery_pb2.DiscoveryResponse(type_url=type_url, version_info=version, nonce=str(self.nonce))
        for resource in resources:
            packed = any_pb2.Any()
            packed.Pack(resource)
            response.resources.append(packed)
        self.latest[type_url] = response
        self.wake.set()

    async def StreamAggregatedResources(self, request_iterator, context):  # noqa: N802 - gRPC's name
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def read() -> None:
            async for request in request_iterator:
                self.requests.append(request)
                await queue.put(request)

        reader = asyncio.ensure_future(read())
        subscribed: set[str] = set(self.unsolicited)
        sent: dict[str, str] = {}  # type -> nonce of what this stream got last
        try:
            while True:
                waiter = asyncio.ensure_future(queue.get())
                woken = asyncio.ensure_future(self.wake.wait())
                done, _ = await asyncio.wait({waiter, woken}, return_when=asyncio.FIRST_COMPLETED)
                if waiter in done:
                    subscribed.add(waiter.result().type_url)
                else:
                    waiter.cancel()
                self.wake.clear()
                woken.cancel()
                for type_url in sorted(subscribed):
                    response = self.latest.get(type_url)
                    if response is not None and sent.get(type_url) != response.nonce:
                        sent[type_url] = response.nonce
                        yield response
        finally:
            reader.cancel()

    async def DeltaAggregatedResources(self, request_iterator, context):  # noqa: N802 - gRPC's name
        """Incremental: send each subscribed resource whose version the client does not have."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        known: dict[str, dict[str, str]] = {}  # type -> name -> version the client holds
        wildcard: set[str] = set()
        names: dict[str, set[str]] = {}

        async def read() -> None:
            async for request in request_iterator:
                self.requests.append(request)
                await queue.put(request)

        reader = asyncio.ensure_future(read())
        try:
            while True:
                waiter = asyncio.ensure_future(queue.get())
                woken = asyncio.ensure_future(self.wake.wait())
                done, _ = await asyncio.wait({waiter, woken}, return_when=asyncio.FIRST_COMPLETED)
                if waiter in done:
                    request = waiter.result()
                    held = known.setdefault(request.type_url, {})
                    held.update(request.initial_resource_versions)
                    if request.type_url in (CLUSTER_TYPE, LISTENER_TYPE):
                        wildcard.add(request.type_url)
                    wanted = names.setdefault(request.type_url, set())
                    wanted |= set(request.resource_names_subscribe)
                    wanted -= set(request.resource_names_unsubscribe)
                else:
                    waiter.cancel()
                self.wake.clear()
                woken.cancel()
                for type_url, response in sorted(self.latest.items()):
                    held = known.setdefault(type_url, {})
                    delta = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url, nonce=response.nonce,
                                                                 system_version_info=response.version_info)
                    current = {}
                    for packed in response.resources:
                        resource = {
                            CLUSTER_TYPE: Cluster, ENDPOINT_TYPE: ClusterLoadAssignment,
                            LISTENER_TYPE: Listener, ROUTE_TYPE: RouteConfiguration,
                        }[type_url]()
                        packed.Unpack(resource)
                        name = getattr(resource, "cluster_name", "") or resource.name
                        current[name] = (packed, response.version_info)
                    subscribed = set(current) if type_url in wildcard else names.get(type_url, set())
                    for name in sorted(subscribed & set(current)):
                        packed, version = current[name]
                        if held.get(name) != version:
                            delta.resources.add(name=name, version=version, resource=packed)
                            held[name] = version
                    for name in sorted(set(held) - set(current)):
                        if type_url in wildcard or name in subscribed:
                            delta.removed_resources.append(name)
                            del held[name]
                    if delta.resources or delta.removed_resources:
                        yield delta
        finally:
            reader.cancel()

    def acks(self, type_url: str) -> list[Any]:
        return [r for r in self.requests if r.type_url == type_url and r.response_nonce and not r.HasField("error_detail")]

    def nacks(self, type_url: str) -> list[Any]:
        return [r for r in self.requests if r.type_url == type_url and r.HasField("error_detail")]


def eds_cluster(name: str) -> Cluster:
    return parse_message({"name": name, "type": "EDS", "connect_timeout": "1s",
                          "eds_cluster_config": {"eds_config": {"ads": {}}, "service_name": name}}, Cluster)


def assignment(name: str, *ports: int) -> ClusterLoadAssignment:
    return parse_message({"cluster_name": name, "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
        for port in ports]}]}, ClusterLoadAssignment)


def rds_listener(name: str, port: int, route_name: str, stat_prefix: str = "outbound") -> Listener:
    return parse_message({
        "name": name, "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": HCM, "stat_prefix": stat_prefix,
            "rds": {"route_config_name": route_name, "config_source": {"ads": {}}},
            "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
        }}]}],
    }, Listener)


def route_config(name: str, cluster: str, header: str = "") -> RouteConfiguration:
    headers = [{"header": {"key": "x-route", "value": header}}] if header else []
    return parse_message({"name": name, "virtual_hosts": [{
        "name": "all", "domains": ["*"], "response_headers_to_add": headers,
        "routes": [{"match": {"prefix": "/"}, "route": {"cluster": cluster}}]}]}, RouteConfiguration)
