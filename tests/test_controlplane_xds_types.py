"""Type URLs agree with the protobuf descriptors; push order follows Envoy's ADS guidance."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.runtime.v3 import rtds_pb2
from google.protobuf import duration_pb2

from tulle.controlplane.xds import types


@pytest.mark.parametrize(
    ("message", "type_url"),
    [
        (listener_pb2.Listener(), types.LISTENER),
        (route_pb2.RouteConfiguration(), types.ROUTE),
        (scoped_route_pb2.ScopedRouteConfiguration(), types.SCOPED_ROUTE),
        (cluster_pb2.Cluster(), types.CLUSTER),
        (endpoint_pb2.ClusterLoadAssignment(), types.ENDPOINT),
        (secret_pb2.Secret(), types.SECRET),
        (rtds_pb2.Runtime(), types.RUNTIME),
    ],
)
def test_type_urls_name_the_real_messages(message: object, type_url: str) -> None:
    assert types.type_url_of(message) == type_url  # type: ignore[arg-type]
    assert type_url.startswith(types.TYPE_PREFIX)
    assert type_url in types.PUSH_ORDER


def test_push_order_is_make_before_break() -> None:
    rank = types.push_rank
    assert rank(types.CLUSTER) < rank(types.ENDPOINT) < rank(types.LISTENER) < rank(types.ROUTE)
    assert rank("type.googleapis.com/some.Unknown") == len(types.PUSH_ORDER)
    shuffled = [types.ROUTE, types.ENDPOINT, types.LISTENER, types.CLUSTER]
    assert sorted(shuffled, key=rank) == [types.CLUSTER, types.ENDPOINT, types.LISTENER, types.ROUTE]


def test_only_listeners_and_clusters_have_wildcard_subscriptions() -> None:
    assert types.WILDCARD_TYPES == {types.LISTENER, types.CLUSTER}


def test_resource_names_use_cluster_name_for_endpoints() -> None:
    assert types.resource_name(endpoint_pb2.ClusterLoadAssignment(cluster_name="outbound|80||a")) == (
        "outbound|80||a"
    )
    assert types.resource_name(cluster_pb2.Cluster(name="c")) == "c"
    assert types.resource_name(listener_pb2.Listener(name="l")) == "l"
    with pytest.raises(ValueError, match="Duration"):
        types.resource_name(duration_pb2.Duration())


def test_short_names() -> None:
    assert [types.short_name(t) for t in (types.CLUSTER, types.ENDPOINT, types.LISTENER, types.ROUTE)] == [
        "CDS",
        "EDS",
        "LDS",
        "RDS",
    ]
    assert types.short_name("type.googleapis.com/x.y.Thing") == "Thing"
