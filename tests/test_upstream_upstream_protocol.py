"""Which protocol a cluster speaks upstream (Envoy's HttpProtocolOptions and the deprecated fields),
and which of a host's pools a request takes."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.cluster.v3 import cluster_pb2

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.stats.store import Store
from tulle.upstream.cluster import parse_cluster
from tulle.upstream.cluster_stats import ClusterStats
from tulle.upstream.host import Host
from tulle.upstream.http2_pool import Http2ConnectionPool
from tulle.upstream.http_pool import HttpConnectionPool
from tulle.upstream.upstream_protocol import DOWNSTREAM, HTTP1, HTTP2, host_pools, pool_for

OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def cluster(**fields: Any):  # noqa: ANN201 - ClusterConfig
    proto = {"name": "c", "type": "STATIC", "connect_timeout": "1s", **fields}
    return parse_cluster(parse_message(proto, cluster_pb2.Cluster), "clusters[0]")


def typed(**selection: Any) -> dict[str, Any]:
    return {"typed_extension_protocol_options": {OPTIONS: {"@type": f"type.googleapis.com/{OPTIONS}", **selection}}}


def test_http1_by_default_and_with_http_protocol_options() -> None:
    assert cluster().upstream_protocol.kind == HTTP1
    assert cluster(**typed(explicit_http_config={"http_protocol_options": {}})).upstream_protocol.kind == HTTP1
    # use_downstream_protocol without HTTP/2 configured: HTTP/1.1 whatever the client spoke (Envoy)
    assert cluster(**typed(use_downstream_protocol_config={"http_protocol_options": {}})).upstream_protocol.kind == HTTP1


def test_explicit_http2_carries_its_settings() -> None:
    protocol = cluster(**typed(explicit_http_config={"http2_protocol_options": {
        "max_concurrent_streams": 7, "initial_stream_window_size": 70000,
        "connection_keepalive": {"interval": "5s", "timeout": "1s"}}})).upstream_protocol
    assert protocol.kind == HTTP2
    assert protocol.http2_settings.max_concurrent_streams == 7
    assert protocol.http2_settings.initial_stream_window_size == 70000
    assert protocol.http2_keepalive[:2] == (5.0, 1.0)


def test_use_downstream_with_http2_follows_the_client() -> None:
    protocol = cluster(**typed(use_downstream_protocol_config={
        "http_protocol_options": {}, "http2_protocol_options": {}})).upstream_protocol
    assert protocol.kind == DOWNSTREAM and protocol.http2_settings is not None


def test_the_deprecated_fields_mean_what_they_meant() -> None:
    assert cluster(http2_protocol_options={}).upstream_protocol.kind == HTTP2
    downstream = cluster(http2_protocol_options={}, protocol_selection="USE_DOWNSTREAM_PROTOCOL")
    assert downstream.upstream_protocol.kind == DOWNSTREAM


def test_the_same_options_parse_equal_so_an_unchanged_cluster_is_not_rebuilt() -> None:
    options = typed(explicit_http_config={"http2_protocol_options": {"max_concurrent_streams": 3}})
    assert cluster(**options) == cluster(**options)
    other = typed(explicit_http_config={"http2_protocol_options": {"max_concurrent_streams": 4}})
    assert cluster(**options) != cluster(**other)


def test_auto_config_needs_tls_and_is_refused_by_name() -> None:
    with pytest.raises(UnsupportedFeature) as caught:
        cluster(**typed(auto_config={"http2_protocol_options": {}}))
    assert "auto_config" in str(caught.value) and "TLS" in str(caught.value)


def test_typed_and_deprecated_http2_options_cannot_be_mixed() -> None:
    with pytest.raises(ConfigError) as caught:
        cluster(http2_protocol_options={}, **typed(explicit_http_config={"http2_protocol_options": {}}))
    assert "http2_protocol_options" in str(caught.value)


class StatsCluster:
    """What a pool reads of its cluster when it is made."""

    def __init__(self, kind: str) -> None:
        self.upstream_protocol = kind
        self.stats = ClusterStats(Store(), "c")


@pytest.mark.parametrize(("kind", "downstream", "expected"), [
    (HTTP1, "HTTP/1.1", HttpConnectionPool), (HTTP1, "HTTP/2", HttpConnectionPool),
    (HTTP2, "HTTP/1.1", Http2ConnectionPool), (DOWNSTREAM, "HTTP/2", Http2ConnectionPool),
    (DOWNSTREAM, "HTTP/1.1", HttpConnectionPool), (DOWNSTREAM, "HTTP/1.0", HttpConnectionPool),
])
def test_pool_for_picks_the_hosts_pool_for_the_protocol(kind: str, downstream: str, expected: type) -> None:
    host = Host("127.0.0.1", 80)
    pool = pool_for(host, StatsCluster(kind), None, downstream)  # type: ignore[arg-type]
    assert isinstance(pool, expected)
    assert pool_for(host, StatsCluster(kind), None, downstream) is pool  # made once per host  # type: ignore[arg-type]
    assert host_pools(host) == [pool]
