"""Host resolution, wildcard matching, exportTo, cluster names and virtual host domains."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tulle.controlplane.translate.names import (
    domain_with_port,
    host_matches,
    inbound_cluster_name,
    is_http,
    is_http2,
    kubernetes_alt_hosts,
    labels_match,
    match_specificity,
    outbound_cluster_name,
    parse_cluster_name,
    resolve_host,
    virtual_host_domains,
    visible_to,
)


def test_short_names_resolve_in_the_resource_namespace() -> None:
    assert resolve_host("reviews", "prod", "cluster.local") == "reviews.prod.svc.cluster.local"
    assert resolve_host("Reviews", "prod", "example.org") == "reviews.prod.svc.example.org"


def test_names_with_a_dot_and_the_wildcard_are_already_qualified() -> None:
    assert resolve_host("reviews.other", "prod", "cluster.local") == "reviews.other"
    assert resolve_host("reviews.other", "prod", "cluster.local", {"other"}) == "reviews.other.svc.cluster.local"
    assert resolve_host("reviews.other.svc", "prod", "cluster.local") == "reviews.other.svc.cluster.local"
    assert resolve_host("*.example.com", "prod", "cluster.local") == "*.example.com"
    assert resolve_host("*", "prod", "cluster.local") == "*"
    assert resolve_host("", "prod", "cluster.local") == ""


def test_wildcards_match_suffixes_in_both_directions() -> None:
    assert host_matches("*.example.com", "a.example.com")
    assert host_matches("a.example.com", "*.example.com")
    assert host_matches("*.example.com", "*.b.example.com")
    assert host_matches("*", "anything.at.all")
    assert not host_matches("*.example.com", "example.com")
    assert not host_matches("a.example.com", "b.example.com")
    assert host_matches("a.example.com", "a.example.com")


@given(st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){0,3}", fullmatch=True),
       st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){0,3}", fullmatch=True))
def test_host_matching_is_symmetric(first: str, second: str) -> None:
    for a, b in ((first, second), ("*." + first, second), ("*." + first, "*." + second)):
        assert host_matches(a, b) == host_matches(b, a)


def test_exact_hosts_are_more_specific_than_wildcards_and_long_wildcards_than_short() -> None:
    ordered = sorted(["*", "*.example.com", "a.example.com", "*.a.example.com"], key=match_specificity)
    assert ordered == ["a.example.com", "*.a.example.com", "*.example.com", "*"]


def test_export_to() -> None:
    assert visible_to(("*",), "a", "b")
    assert visible_to((), "a", "b")
    assert visible_to((".",), "a", "a")
    assert not visible_to((".",), "a", "b")
    assert visible_to(("b", "c"), "a", "c")
    assert not visible_to(("~",), "a", "a")


def test_label_selectors() -> None:
    assert labels_match({}, {"app": "x"})
    assert labels_match(None, {})
    assert labels_match({"app": "x"}, {"app": "x", "version": "v1"})
    assert not labels_match({"app": "x", "version": "v2"}, {"app": "x", "version": "v1"})


def test_cluster_names_follow_istio() -> None:
    assert outbound_cluster_name(9080, "reviews.default.svc.cluster.local", "v1") == (
        "outbound|9080|v1|reviews.default.svc.cluster.local")
    assert outbound_cluster_name(80, "httpbin.org") == "outbound|80||httpbin.org"
    assert inbound_cluster_name(8080) == "inbound|8080||"
    assert parse_cluster_name("inbound|8080||") == ("inbound", 8080, "", "")
    assert parse_cluster_name("outbound|x||host") is None
    assert parse_cluster_name("BlackHoleCluster") is None


@given(st.integers(1, 65535), st.from_regex(r"[a-z0-9-]{0,10}", fullmatch=True),
       st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){0,4}", fullmatch=True))
def test_cluster_names_parse_back(port: int, subset: str, host: str) -> None:
    assert parse_cluster_name(outbound_cluster_name(port, host, subset)) == ("outbound", port, subset, host)


def test_alt_hosts_depend_on_the_client_namespace() -> None:
    host = "reviews.prod.svc.cluster.local"
    assert kubernetes_alt_hosts(host, "prod", "cluster.local") == ["reviews", "reviews.prod.svc", "reviews.prod"]
    assert kubernetes_alt_hosts(host, "other", "cluster.local") == ["reviews.prod", "reviews.prod.svc"]
    assert kubernetes_alt_hosts("httpbin.org", "prod", "cluster.local") == []
    assert kubernetes_alt_hosts(host, "prod", "example.org") == []


def test_virtual_host_domains_with_and_without_port() -> None:
    domains = virtual_host_domains("reviews.prod.svc.cluster.local", 9080, "prod", "cluster.local",
                                   ("10.0.0.1", "10.1.0.0/16", "0.0.0.0", "fd00::1"))
    assert domains[:2] == ["reviews.prod.svc.cluster.local", "reviews.prod.svc.cluster.local:9080"]
    assert "reviews" in domains and "reviews:9080" in domains
    assert "10.0.0.1:9080" in domains and "[fd00::1]:9080" in domains and "[fd00::1]" in domains
    assert not any("/" in domain or domain.startswith("0.0.0.0") for domain in domains)
    assert len(domains) == len(set(domains))
    assert domain_with_port("::1", 80) == "[::1]:80"


def test_protocol_families() -> None:
    assert all(is_http(name) for name in ("HTTP", "http2", "GRPC", "GRPC-WEB"))
    assert not any(is_http(name) for name in ("TCP", "TLS", "HTTPS", "MONGO", ""))
    assert is_http2("grpc") and not is_http2("HTTP")
