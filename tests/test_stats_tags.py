"""Envoy's default tag extraction on the stat names Tulle emits."""

from __future__ import annotations

import pytest

from tulle.stats.tags import (
    CLUSTER_NAME,
    HTTP_CONN_MANAGER_PREFIX,
    LISTENER_ADDRESS,
    RDS_ROUTE_CONFIG,
    RESPONSE_CODE,
    RESPONSE_CODE_CLASS,
    TCP_PREFIX,
    VIRTUAL_CLUSTER,
    VIRTUAL_HOST,
    WORKER_ID,
    extract_tags,
)


@pytest.mark.parametrize(
    ("stat", "extracted", "tags"),
    [
        ("cluster.foo.upstream_rq_total", "cluster.upstream_rq_total", ((CLUSTER_NAME, "foo"),)),
        (
            "cluster.foo.upstream_rq_200",
            "cluster.upstream_rq",
            ((RESPONSE_CODE, "200"), (CLUSTER_NAME, "foo")),
        ),
        (
            "cluster.foo.upstream_rq_2xx",
            "cluster.upstream_rq_xx",
            ((RESPONSE_CODE_CLASS, "2"), (CLUSTER_NAME, "foo")),
        ),
        (
            "http.ingress_http.downstream_rq_total",
            "http.downstream_rq_total",
            ((HTTP_CONN_MANAGER_PREFIX, "ingress_http"),),
        ),
        (
            "listener.0.0.0.0_10000.downstream_cx_total",
            "listener.downstream_cx_total",
            ((LISTENER_ADDRESS, "0.0.0.0_10000"),),
        ),
        ("listener.[__1]_80.downstream_cx_total", "listener.downstream_cx_total", ((LISTENER_ADDRESS, "[__1]_80"),)),
        ("tcp.ingress_tcp.downstream_cx_total", "tcp.downstream_cx_total", ((TCP_PREFIX, "ingress_tcp"),)),
        (
            "listener.0.0.0.0_10000.http.ingress_http.downstream_rq_5xx",
            "listener.http.downstream_rq_xx",
            (
                (RESPONSE_CODE_CLASS, "5"),
                (HTTP_CONN_MANAGER_PREFIX, "ingress_http"),
                (LISTENER_ADDRESS, "0.0.0.0_10000"),
            ),
        ),
        (
            "vhost.vh.vcluster.vc.upstream_rq_503",
            "vhost.vcluster.upstream_rq",
            ((RESPONSE_CODE, "503"), (VIRTUAL_CLUSTER, "vc"), (VIRTUAL_HOST, "vh")),
        ),
        (
            "listener_manager.worker_3.dispatcher.loop_duration_us",
            "listener_manager.worker_dispatcher.loop_duration_us",
            ((WORKER_ID, "3"),),
        ),
    ],
)
def test_default_extractors(stat: str, extracted: str, tags: tuple[tuple[str, str], ...]) -> None:
    assert extract_tags(stat) == (extracted, tags)


def test_untagged_names_are_unchanged() -> None:
    assert extract_tags("server.live") == ("server.live", ())
    # a trailing "**" needs at least one token after the value, as in Envoy
    assert extract_tags("cluster.foo") == ("cluster.foo", ())


def test_admin_listener_is_not_an_address() -> None:
    name, tags = extract_tags("listener.admin.downstream_cx_total")
    assert name == "listener.admin.downstream_cx_total"
    assert tags == ()


def test_response_code_needs_three_digits() -> None:
    name, tags = extract_tags("cluster.foo.upstream_rq_20")
    assert name == "cluster.upstream_rq_20"
    assert tags == ((CLUSTER_NAME, "foo"),)


def test_first_matching_extractor_per_tag_name_wins() -> None:
    # both the listener-scoped and the plain http extractor define http_conn_manager_prefix
    _, tags = extract_tags("listener.1.2.3.4_80.http.hcm.downstream_rq_total")
    assert [name for name, _ in tags].count(HTTP_CONN_MANAGER_PREFIX) == 1


def test_cluster_names_with_dots_are_not_split_oddly() -> None:
    # Envoy's cluster.$.** takes the first token after "cluster" only.
    name, tags = extract_tags("cluster.outbound|80||svc.ns.upstream_rq_total")
    assert tags == ((CLUSTER_NAME, "outbound|80||svc"),)
    assert name == "cluster.ns.upstream_rq_total"


@pytest.mark.parametrize(("stat", "extracted", "tags"), [
    ("control_plane.connected_state", "control_plane.connected_state", ()),
    ("cluster_manager.cds.update_success", "cluster_manager.cds.update_success", ()),
    ("listener_manager.lds.version", "listener_manager.lds.version", ()),
    ("http.inbound_9080.rds.inbound_9080.update_rejected", "http.rds.update_rejected",
     ((HTTP_CONN_MANAGER_PREFIX, "inbound_9080"), (RDS_ROUTE_CONFIG, "inbound_9080"))),
    ("http.outbound.rds.reviews.default_9080.version_text", "http.rds.version_text",
     ((HTTP_CONN_MANAGER_PREFIX, "outbound"), (RDS_ROUTE_CONFIG, "reviews.default_9080"))),
    ("cluster.reviews.update_empty", "cluster.update_empty", ((CLUSTER_NAME, "reviews"),)),
])
def test_xds_stats_are_tagged_as_envoy_tags_them(stat: str, extracted: str, tags: tuple[tuple[str, str], ...]) -> None:
    assert extract_tags(stat) == (extracted, tags)
