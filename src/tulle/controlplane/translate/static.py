"""Translated resources as a static bootstrap, for a proxy that has no xDS client yet.

EDS clusters become STATIC clusters carrying their ClusterLoadAssignment; HTTP connection
managers that name an RDS route get that RouteConfiguration inline. Everything else is copied
unchanged, so whatever a proxy refuses in the result, it would refuse over xDS too.
"""

from __future__ import annotations

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2

from tulle.controlplane.translate.translate import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    Resources,
)

HCM_TYPE_NAME = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def _static_cluster(cluster: cluster_pb2.Cluster, resources: Resources) -> cluster_pb2.Cluster:
    if cluster.type != cluster_pb2.Cluster.EDS:
        return cluster
    static = cluster_pb2.Cluster()
    static.CopyFrom(cluster)
    static.ClearField("eds_cluster_config")
    static.type = cluster_pb2.Cluster.STATIC
    service_name = cluster.eds_cluster_config.service_name or cluster.name
    assignment = resources.get(ENDPOINT_TYPE, {}).get(service_name)
    if assignment is not None:
        static.load_assignment.CopyFrom(assignment)
    else:
        static.load_assignment.cluster_name = service_name
    return static


def _inline_routes(listener: listener_pb2.Listener, resources: Resources) -> listener_pb2.Listener:
    inlined = listener_pb2.Listener()
    inlined.CopyFrom(listener)
    for chain in inlined.filter_chains:
        for network_filter in chain.filters:
            if not network_filter.typed_config.type_url.endswith(HCM_TYPE_NAME):
                continue
            manager = http_connection_manager_pb2.HttpConnectionManager()
            network_filter.typed_config.Unpack(manager)
            if not manager.HasField("rds"):
                continue
            name = manager.rds.route_config_name
            manager.ClearField("rds")
            route = resources.get(ROUTE_TYPE, {}).get(name)
            manager.route_config.CopyFrom(route if route is not None else route_pb2.RouteConfiguration(name=name))
            network_filter.typed_config.Pack(manager)
    return inlined


def static_bootstrap(resources: Resources, node_id: str = "tulle-proxy") -> bootstrap_pb2.Bootstrap:
    bootstrap = bootstrap_pb2.Bootstrap()
    bootstrap.node.id = node_id
    for cluster in resources.get(CLUSTER_TYPE, {}).values():
        bootstrap.static_resources.clusters.append(_static_cluster(cluster, resources))
    for listener in resources.get(LISTENER_TYPE, {}).values():
        bootstrap.static_resources.listeners.append(_inline_routes(listener, resources))
    return bootstrap
