"""static_bootstrap(): translated resources run on today's Tulle proxy (Worker construction).

For every golden case the translation (TULLE_PROXY_TODAY options) is loaded into a Worker; a
field the proxy refuses is stripped and construction retried, so each case lists everything the
proxy still refuses. Those must all be known (KNOWN_REFUSALS says why); the bookinfo proxies and
the Sidecar-scoped canary must construct whole, and their route tables must route as Istio would.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import json_format

from test_controlplane_translate_translate import GOLDEN, golden_targets, load_case
from tulle.config.errors import UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.controlplane.model import MeshSnapshot, ProxyIdentity, Service, ServicePort, WorkloadInstance
from tulle.controlplane.translate import TULLE_PROXY_TODAY, translate
from tulle.controlplane.translate.static import static_bootstrap
from tulle.http.headers import HeaderMap
from tulle.server.context import ServerState
from tulle.server.worker import Worker

# What the proxy refuses today, by the last element of the refused field's path, and why.
KNOWN_REFUSALS = {
    "circuit_breakers": "Cluster.circuit_breakers: the resilience work",
    "outlier_detection": "Cluster.outlier_detection: the resilience work",
    "locality_weighted_lb_config": "CommonLbConfig.locality_weighted_lb_config: the resilience work",
    "slow_start_config": "round_robin / least_request slow_start_config (warmupDurationSecs)",
    "retry_policy": "RouteAction.retry_policy: the resilience work",
    "request_mirror_policies": "RouteAction.request_mirror_policies (mirroring)",
    "typed_per_filter_config": "Route.typed_per_filter_config (fault / CORS per route)",
    "http_filters[0]": "envoy.filters.http.fault / envoy.filters.http.cors HTTP filters",
    "http_filters[1]": "envoy.filters.http.fault / envoy.filters.http.cors HTTP filters",
    "http2_protocol_options": "HTTP/2 upstreams (GRPC / HTTP2 ports, h2UpgradePolicy)",
    "max_connection_duration": "HttpProtocolOptions.max_connection_duration",
    "ttl": "HashPolicy.Cookie.ttl (generated cookies)",
    "path": "HashPolicy.Cookie.path (generated cookies)",
    "type": "cluster type ORIGINAL_DST (resolution NONE / PASSTHROUGH)",
    "lb_policy": "lb_policy CLUSTER_PROVIDED (ORIGINAL_DST clusters)",
    "upstream_connection_options": "Cluster.upstream_connection_options (tcpKeepalive)",
}
MUST_CONSTRUCT = {("bookinfo", "productpage-v1"), ("bookinfo", "sleep"), ("sidecar-scoping", "web-canary")}
_PATH_PART = re.compile(r"([A-Za-z0-9_@]+)|\[(\d+)\]|\['([^']*)'\]")


def _delete_path(tree: dict[str, Any], path: str) -> None:
    """Remove the field (or list element) a ConfigError path names from a JSON tree."""
    parts = [name or (int(index) if index else key) for name, index, key in _PATH_PART.findall(path)]
    node: Any = tree
    for part in parts[:-1]:
        node = node[part]
    del node[parts[-1]]


def refusals(bootstrap: bootstrap_pb2.Bootstrap) -> tuple[list[str], Worker | None]:
    """Every field path the proxy refuses (stripping each in turn), and the Worker once it builds."""
    tree = json_format.MessageToDict(bootstrap, preserving_proto_field_name=True)
    refused: list[str] = []
    for _ in range(200):
        try:
            return refused, Worker(parse_message(tree, bootstrap_pb2.Bootstrap), ServerState())
        except UnsupportedFeature as error:
            refused.append(error.field)
            if error.field.endswith(".type"):  # an unsupported cluster type: drop the whole cluster
                _delete_path(tree, error.field.rsplit(".", 1)[0])
            else:
                _delete_path(tree, error.field)
    raise AssertionError("too many refusals")


@pytest.mark.parametrize(("case", "proxy_name"), golden_targets())
def test_everything_the_proxy_refuses_is_known(case: str, proxy_name: str) -> None:
    snapshot, proxies = load_case(GOLDEN / case / "input.yaml")
    refused, worker = refusals(static_bootstrap(translate(snapshot, proxies[proxy_name], TULLE_PROXY_TODAY)))
    unknown = [path for path in refused if re.split(r"\.(?![^\[]*\])", path)[-1] not in KNOWN_REFUSALS]
    assert unknown == []
    if (case, proxy_name) in MUST_CONSTRUCT:
        assert refused == []
    # ConfigErrors (anything not merely unsupported) would have escaped refusals() above.
    assert worker is not None


def _route_table(worker: Worker, listener_name: str) -> Any:
    listener = next(listener for listener in worker.listeners if listener.name == listener_name)
    return listener.factory.config.route_table


def test_bookinfo_routes_on_the_proxy_as_istio_would() -> None:
    snapshot, proxies = load_case(GOLDEN / "bookinfo" / "input.yaml")
    worker = Worker(static_bootstrap(translate(snapshot, proxies["sleep"], TULLE_PROXY_TODAY)), ServerState())
    table = _route_table(worker, "127.0.0.1_9080")
    jason = HeaderMap.of([(":authority", "reviews:9080"), (":path", "/reviews/1"), (":method", "GET"),
                          ("end-user", "jason")])
    assert table.find(jason).cluster_name(jason, 0) == "outbound|9080|v2|reviews.default.svc.cluster.local"
    anyone = HeaderMap.of([(":authority", "reviews.default"), (":path", "/"), (":method", "GET")])
    picked = {table.find(anyone).cluster_name(anyone, value) for value in (0, 89, 90, 99)}
    assert picked == {"outbound|9080|v1|reviews.default.svc.cluster.local",
                      "outbound|9080|v3|reviews.default.svc.cluster.local"}
    unknown = HeaderMap.of([(":authority", "example.com"), (":path", "/"), (":method", "GET")])
    assert table.find(unknown).direct_response is not None  # block_all: 502

    forward = _route_table(worker, "http_forward_proxy")
    ratings = HeaderMap.of([(":authority", "ratings.default.svc.cluster.local:9080"), (":path", "/"),
                            (":method", "GET")])
    assert forward.find(ratings).cluster_name(ratings, 0) == "outbound|9080|v1|ratings.default.svc.cluster.local"
    bare = HeaderMap.of([(":authority", "ratings"), (":path", "/"), (":method", "GET")])
    assert forward.find(bare).direct_response is not None  # a bare name means port 80

    clusters = worker.cluster_manager.clusters
    v1 = clusters["outbound|9080|v1|reviews.default.svc.cluster.local"]
    assert [host.address_str for host in v1.hosts] == ["10.1.0.21:9080"]
    v2 = clusters["outbound|9080|v2|reviews.default.svc.cluster.local"]
    assert [host.healthy for host in v2.hosts] == [False]
    inbound = clusters["inbound|8080||"]
    assert [host.address_str for host in inbound.hosts] == ["127.0.0.1:8080"]


def _single_service_snapshot() -> tuple[MeshSnapshot, ProxyIdentity]:
    service = Service("echo.default.svc.cluster.local", "default", [ServicePort("http", 8080, "HTTP")])
    instance = WorkloadInstance("echo-1", "default", "10.0.0.1", {"http": 8080},
                                service_hostnames=(service.hostname,))
    return MeshSnapshot([], [service], [instance]), ProxyIdentity("client", "default", workload_name="client")


def test_eds_clusters_become_static_with_their_assignment() -> None:
    snapshot, proxy = _single_service_snapshot()
    bootstrap = static_bootstrap(translate(snapshot, proxy), node_id="client.default")
    assert bootstrap.node.id == "client.default"
    (cluster,) = [c for c in bootstrap.static_resources.clusters if c.name.startswith("outbound")]
    assert cluster.type == cluster_pb2.Cluster.STATIC
    assert not cluster.HasField("eds_cluster_config")
    endpoint = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (endpoint.address, endpoint.port_value) == ("10.0.0.1", 8080)


def test_rds_becomes_an_inline_route_config() -> None:
    snapshot, proxy = _single_service_snapshot()
    resources = translate(snapshot, proxy)
    bootstrap = static_bootstrap(resources)
    text = json_format.MessageToJson(bootstrap)
    assert '"rds"' not in text
    listener_names = [listener.name for listener in bootstrap.static_resources.listeners]
    assert listener_names == ["127.0.0.1_8080", "http_forward_proxy"]
    assert '"name": "8080"' in text and '"name": "http_proxy"' in text
    # the originals are not modified
    original = next(iter(resources["type.googleapis.com/envoy.config.listener.v3.Listener"].values()))
    assert "rds" in json_format.MessageToJson(original)
