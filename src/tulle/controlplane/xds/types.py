"""Envoy v3 xDS resource type URLs, their push order and how each resource is named."""

from __future__ import annotations

from google.protobuf.message import Message

TYPE_PREFIX = "type.googleapis.com/"

LISTENER = TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
SCOPED_ROUTE = TYPE_PREFIX + "envoy.config.route.v3.ScopedRouteConfiguration"
VIRTUAL_HOST = TYPE_PREFIX + "envoy.config.route.v3.VirtualHost"
CLUSTER = TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
SECRET = TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
RUNTIME = TYPE_PREFIX + "envoy.service.runtime.v3.Runtime"

# Envoy's "make before break" guidance for ADS: clusters first, then their endpoints, then the
# listeners that use them, then the routes those listeners name (istiod pushes in the same order).
PUSH_ORDER: tuple[str, ...] = (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    SCOPED_ROUTE,
    ROUTE,
    VIRTUAL_HOST,
    SECRET,
    RUNTIME,
)

# Types whose resources name clusters (a listener's inline routes or tcp_proxy, route configurations):
# when a push stops using a cluster and removes it, the cluster goes only after their updates of that
# push ("make before break"), so that nothing in use is removed before what replaces it arrived.
CLUSTER_USERS: frozenset[str] = frozenset({LISTENER, SCOPED_ROUTE, ROUTE, VIRTUAL_HOST})

# Only these types have a wildcard ("give me everything for this node") subscription; for the others
# an empty name list means "nothing" (xDS protocol, "How the client specifies what to return").
WILDCARD_TYPES: frozenset[str] = frozenset({LISTENER, CLUSTER})

WILDCARD_NAME = "*"

# In state of the world, a response of these types is the complete set the client should hold (what
# it leaves out is deleted); responses of the other types may carry just some of the resources, and
# the client keeps the ones not mentioned (xDS protocol, "Grouping Resources into Responses").
SOTW_COMPLETE_TYPES: frozenset[str] = frozenset({LISTENER, CLUSTER})

SHORT_NAMES: dict[str, str] = {
    LISTENER: "LDS",
    ROUTE: "RDS",
    SCOPED_ROUTE: "SRDS",
    VIRTUAL_HOST: "VHDS",
    CLUSTER: "CDS",
    ENDPOINT: "EDS",
    SECRET: "SDS",
    RUNTIME: "RTDS",
}


def type_url_of(message: Message) -> str:
    return TYPE_PREFIX + message.DESCRIPTOR.full_name


def short_name(type_url: str) -> str:
    """``CDS`` for the Cluster type URL; the bare message name for types without an xDS acronym."""
    return SHORT_NAMES.get(type_url) or type_url.rsplit(".", 1)[-1]


def push_rank(type_url: str) -> int:
    """Sort key following PUSH_ORDER; unknown types go last."""
    try:
        return PUSH_ORDER.index(type_url)
    except ValueError:
        return len(PUSH_ORDER)


def resource_name(message: Message) -> str:
    """The name xDS clients subscribe to: ``cluster_name`` for ClusterLoadAssignment, else ``name``."""
    fields = message.DESCRIPTOR.fields_by_name
    if "cluster_name" in fields:
        return str(message.cluster_name)  # type: ignore[attr-defined]
    if "name" in fields:
        return str(message.name)  # type: ignore[attr-defined]
    raise ValueError(f"{message.DESCRIPTOR.full_name} has no name field to serve it by")
