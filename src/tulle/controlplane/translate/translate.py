"""MeshSnapshot + ProxyIdentity -> xDS resources: type URL -> name -> Envoy v3 message.

Pure: no I/O, no clock; the same input gives the same resources in the same order (names
sorted within each type). Every message is built as protobuf JSON and parsed strictly, so a
field the Envoy API does not have fails here, not on a proxy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format, message

from tulle.config.loader import parse_message
from tulle.controlplane.model import MeshSnapshot, ProxyIdentity
from tulle.controlplane.translate.clusters import build_inbound_clusters, build_outbound_cluster
from tulle.controlplane.translate.endpoints import is_eds, load_assignment
from tulle.controlplane.translate.listeners import (
    INBOUND_ROUTE_NAME,
    OutboundPorts,
    forward_proxy_listener,
    inbound_listener,
    outbound_listeners,
    outbound_ports,
    per_port_inbound_listeners,
    upstream_listeners,
)
from tulle.controlplane.translate.options import ISTIO_DEFAULTS, TranslateOptions
from tulle.controlplane.translate.plan import plan_outbound_clusters
from tulle.controlplane.translate.routes import (
    HTTP_PROXY_ROUTE_NAME,
    forward_proxy_route_configuration,
    http_filters_needed,
    inbound_route_configuration,
    outbound_route_configuration,
)
from tulle.controlplane.translate.scope import ProxyScope, build_scope

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
TYPE_URLS = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)  # the order a proxy asks for them

MESSAGE_CLASSES: dict[str, type[message.Message]] = {
    LISTENER_TYPE: listener_pb2.Listener,
    ROUTE_TYPE: route_pb2.RouteConfiguration,
    CLUSTER_TYPE: cluster_pb2.Cluster,
    ENDPOINT_TYPE: endpoint_pb2.ClusterLoadAssignment,
}

JsonResources = dict[str, dict[str, dict[str, Any]]]
Resources = dict[str, dict[str, message.Message]]


def _by_name(items: list[dict[str, Any]], key: str = "name") -> dict[str, dict[str, Any]]:
    return {item[key]: item for item in sorted(items, key=lambda item: item[key])}


@dataclass
class SharedJson:
    """The part of a sidecar's config that every proxy with the same view shares: outbound
    clusters and their endpoints, the outbound and forward-proxy routes, and what the proxy's
    own listeners need to know about them (see :mod:`tulle.controlplane.translate.sharing`)."""

    clusters: list[dict[str, Any]]
    assignments: list[dict[str, Any]]
    routes: list[dict[str, Any]]
    ports: OutboundPorts | None = None
    filters_by_route: dict[str, set[str]] = field(default_factory=dict)
    forward_filters: set[str] = field(default_factory=set)


def shared_json(scope: ProxyScope) -> SharedJson:
    """Outbound clusters, endpoints and routes: they depend on what the proxy sees, not on where it
    runs (its address, its own workload's listeners and clusters)."""
    clusters, assignments = [], []
    for plan in plan_outbound_clusters(scope):
        cluster = build_outbound_cluster(scope, plan)
        if cluster is None:
            continue
        clusters.append(cluster)
        if is_eds(plan):
            assignments.append(load_assignment(scope, plan))
    shared = SharedJson(clusters, assignments, [])
    if scope.proxy.kind == "sidecar":  # gateways get listeners from Gateway resources (not translated yet)
        shared.ports = outbound_ports(scope)
        shared.routes = [outbound_route_configuration(scope, port) for port in shared.ports.http]
        shared.filters_by_route = {route["name"]: http_filters_needed([route]) for route in shared.routes}
        # The forward proxy reaches every HTTP service, also those whose port has no listener.
        forward_route = forward_proxy_route_configuration(
            scope, sorted({port.port for service in scope.services for port in service.ports}))
        shared.forward_filters = http_filters_needed([forward_route])
        shared.routes.append(forward_route)
    return shared


def proxy_json(scope: ProxyScope, shared: SharedJson) -> JsonResources:
    """What is this proxy's own: its listeners (bound to its address) and inbound clusters."""
    options = scope.options
    clusters: list[dict[str, Any]] = []
    listeners: list[dict[str, Any]] = []
    if scope.proxy.kind == "sidecar" and shared.ports is not None:
        clusters = build_inbound_clusters(scope)
        listeners = outbound_listeners(scope, shared.ports, shared.filters_by_route)
        listeners.append(forward_proxy_listener(scope, shared.forward_filters))
        if options.workload_address:
            listeners.extend(per_port_inbound_listeners(scope, options.workload_address))
            listeners.extend(upstream_listeners(scope, options.upstreams, options.workload_address))
        else:
            inbound_routes = inbound_route_configuration(scope, INBOUND_ROUTE_NAME)
            if inbound_routes is not None:
                listeners.append(inbound_listener(scope, inbound_routes))
    return {CLUSTER_TYPE: _by_name(clusters), LISTENER_TYPE: _by_name(listeners)}


def translate_json(
    snapshot: MeshSnapshot, proxy: ProxyIdentity, options: TranslateOptions = ISTIO_DEFAULTS
) -> JsonResources:
    """The resources as protobuf JSON (snake_case field names), before parsing."""
    scope = build_scope(snapshot, proxy, options)
    shared = shared_json(scope)
    own = proxy_json(scope, shared)
    return {
        CLUSTER_TYPE: _by_name(shared.clusters + list(own[CLUSTER_TYPE].values())),
        ENDPOINT_TYPE: _by_name(shared.assignments, "cluster_name"),
        LISTENER_TYPE: own[LISTENER_TYPE],
        ROUTE_TYPE: _by_name(shared.routes),
    }


def to_messages(resources: JsonResources) -> Resources:
    return {
        type_url: {
            name: parse_message(body, MESSAGE_CLASSES[type_url], source=f"{type_url.rsplit('.', 1)[-1]} {name}")
            for name, body in by_name.items()
        }
        for type_url, by_name in resources.items()
    }


def translate(snapshot: MeshSnapshot, proxy: ProxyIdentity, options: TranslateOptions = ISTIO_DEFAULTS) -> Resources:
    """Listeners, RouteConfigurations, Clusters and ClusterLoadAssignments for one proxy."""
    return to_messages(translate_json(snapshot, proxy, options))


def _plain(value: Any) -> Any:
    """json_format returns OrderedDicts inside Any payloads: make everything plain dicts/lists."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def to_dicts(resources: Resources) -> dict[str, dict[str, dict[str, Any]]]:
    """Messages back to JSON dicts (proto field names), e.g. for golden files or a config dump."""
    return {
        type_url: {
            name: _plain(json_format.MessageToDict(body, preserving_proto_field_name=True))
            for name, body in by_name.items()
        }
        for type_url, by_name in resources.items()
    }


__all__ = [
    "CLUSTER_TYPE", "ENDPOINT_TYPE", "HTTP_PROXY_ROUTE_NAME", "LISTENER_TYPE", "ROUTE_TYPE", "TYPE_URLS",
    "SharedJson", "proxy_json", "shared_json", "translate", "translate_json", "to_dicts", "to_messages",
]
