"""Prometheus exposition with Envoy's tag extraction."""

from __future__ import annotations

import re2

from tulle.stats.prometheus import format_labels, metric_name, render_prometheus, sanitize_name
from tulle.stats.store import Store
from tulle.stats.text import StatsQuery


def _snapshot() -> dict:
    store = Store()
    store.counter("cluster.foo.upstream_rq_total").inc(3)
    store.counter("cluster.bar.upstream_rq_total").inc(1)
    store.counter("cluster.foo.upstream_rq_200").inc(2)
    store.counter("cluster.foo.upstream_rq_2xx").inc(2)
    store.counter("http.ingress_http.downstream_rq_total").inc(5)
    store.counter("listener.0.0.0.0_10000.downstream_cx_total").inc(4)
    store.counter("tcp.db.downstream_cx_total")
    store.gauge("server.live").set(1)
    hist = store.histogram("cluster.foo.upstream_rq_time")
    for value in (0.3, 7, 7, 2000):
        hist.record(value)
    return store.snapshot()


def test_counters_are_tagged_as_envoy_does() -> None:
    text = render_prometheus(_snapshot())
    assert 'envoy_cluster_upstream_rq_total{envoy_cluster_name="foo"} 3\n' in text
    assert 'envoy_cluster_upstream_rq{envoy_response_code="200",envoy_cluster_name="foo"} 2\n' in text
    assert 'envoy_cluster_upstream_rq_xx{envoy_response_code_class="2",envoy_cluster_name="foo"} 2\n' in text
    assert 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress_http"} 5\n' in text
    assert 'envoy_listener_downstream_cx_total{envoy_listener_address="0.0.0.0_10000"} 4\n' in text
    assert 'envoy_tcp_downstream_cx_total{envoy_tcp_prefix="db"} 0\n' in text
    assert "envoy_server_live{} 1\n" in text


def test_families_have_one_type_line_and_are_sorted() -> None:
    text = render_prometheus(_snapshot())
    type_lines = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert type_lines.count("# TYPE envoy_cluster_upstream_rq_total counter") == 1
    counters = [line.split()[2] for line in type_lines if line.endswith(" counter")]
    assert counters == sorted(counters)
    assert "# TYPE envoy_server_live gauge" in type_lines
    assert "# TYPE envoy_cluster_upstream_rq_time histogram" in type_lines
    # counters, then gauges, then histograms
    kinds = [line.rsplit(" ", 1)[1] for line in type_lines]
    assert kinds == sorted(kinds, key=["counter", "gauge", "histogram"].index)
    family = text.split("# TYPE envoy_cluster_upstream_rq_total counter\n", 1)[1].split("\n\n", 1)[0]
    assert family.splitlines() == [
        'envoy_cluster_upstream_rq_total{envoy_cluster_name="bar"} 1',
        'envoy_cluster_upstream_rq_total{envoy_cluster_name="foo"} 3',
    ]


def test_histogram_buckets_are_cumulative() -> None:
    text = render_prometheus(_snapshot())
    lines = [line for line in text.splitlines() if line.startswith("envoy_cluster_upstream_rq_time")]
    assert 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="0.5"} 1' in lines
    assert 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="10"} 3' in lines
    assert 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="2500"} 4' in lines
    assert 'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="foo",le="+Inf"} 4' in lines
    assert 'envoy_cluster_upstream_rq_time_count{envoy_cluster_name="foo"} 4' in lines
    sum_line = next(line for line in lines if "_sum" in line)
    assert float(sum_line.rsplit(" ", 1)[1]) == 2014.3
    counts = [int(line.rsplit(" ", 1)[1]) for line in lines if "_bucket" in line]
    assert counts == sorted(counts)


def test_filter_and_usedonly() -> None:
    text = render_prometheus(_snapshot(), StatsQuery(name_filter=re2.compile("^tcp"), used_only=False))
    assert text == '# TYPE envoy_tcp_downstream_cx_total counter\nenvoy_tcp_downstream_cx_total{envoy_tcp_prefix="db"} 0\n\n'
    assert "envoy_tcp_" not in render_prometheus(_snapshot(), StatsQuery(used_only=True))


def test_names_and_labels_are_sanitized() -> None:
    assert sanitize_name("a.b-c/d") == "a_b_c_d"
    assert metric_name("cluster.upstream_rq") == "envoy_cluster_upstream_rq"
    assert format_labels((("envoy.cluster_name", 'a"b\\c'),)) == 'envoy_cluster_name="a\\"b\\\\c"'


def test_text_readouts_only_on_request_as_zero_gauges_with_a_text_value_label() -> None:
    store = Store()
    store.gauge("control_plane.connected_state").set(1)
    store.text_readout("http.ingress.rds.local_route.version_text").set('v"1')
    snapshot = store.snapshot()
    assert "version_text" not in render_prometheus(snapshot)
    text = render_prometheus(snapshot, text_readouts=True)
    assert text.index("envoy_control_plane_connected_state") < text.index("envoy_http_rds_version_text")
    assert ("# TYPE envoy_http_rds_version_text gauge\n"
            'envoy_http_rds_version_text{envoy_http_conn_manager_prefix="ingress",'
            'envoy_rds_route_config="local_route",text_value="v\\"1"} 0\n') in text
