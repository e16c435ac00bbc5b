"""Istio host rules: short-name resolution, wildcard matching, exportTo visibility."""

from __future__ import annotations

import pytest

from tulle.controlplane.istio.hosts import export_to, host_matches, hosts_overlap, resolve_host, visible
from tulle.controlplane.model import Resource


@pytest.mark.parametrize(("host", "namespace", "expected"), [
    ("reviews", "default", "reviews.default.svc.cluster.local"),
    ("reviews", "prod", "reviews.prod.svc.cluster.local"),
    ("reviews.prod.svc", "default", "reviews.prod.svc.cluster.local"),
    ("reviews.prod.svc.cluster.local", "default", "reviews.prod.svc.cluster.local"),
    ("api.example.com", "default", "api.example.com"),
    ("*.example.com", "default", "*.example.com"),
    ("*", "default", "*"),
    ("10.0.0.1", "default", "10.0.0.1"),
    ("2001:db8::1", "default", "2001:db8::1"),
    ("", "default", ""),
])
def test_resolve_host(host: str, namespace: str, expected: str) -> None:
    assert resolve_host(host, namespace, "cluster.local") == expected


def test_resolve_host_uses_the_domain_suffix() -> None:
    assert resolve_host("reviews", "default", "mesh.internal") == "reviews.default.svc.mesh.internal"


def test_name_dot_namespace_expands_only_for_known_namespaces() -> None:
    namespaces = {"default", "prod"}
    assert resolve_host("reviews.prod", "default", "cluster.local", namespaces) == "reviews.prod.svc.cluster.local"
    # "example.com" is not "service example in namespace com" unless com is a namespace of the mesh.
    assert resolve_host("example.com", "default", "cluster.local", namespaces) == "example.com"
    assert resolve_host("reviews.prod", "default", "cluster.local") == "reviews.prod"


@pytest.mark.parametrize(("pattern", "host", "expected"), [
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "a.b.example.com", True),
    ("*.example.com", "example.com", False),
    ("*.example.com", "a.example.org", False),
    ("*", "anything.at.all", True),
    ("*", "*.example.com", True),
    ("*.com", "*.example.com", True),
    ("*.example.com", "*.com", False),
    ("a.example.com", "a.example.com", True),
    ("A.Example.com", "a.example.COM", True),
    ("a.example.com", "b.example.com", False),
    ("a.example.com", "*.example.com", False),
])
def test_host_matches(pattern: str, host: str, expected: bool) -> None:
    assert host_matches(pattern, host) is expected


def test_hosts_overlap_is_symmetric() -> None:
    assert hosts_overlap("*.example.com", "a.example.com")
    assert hosts_overlap("a.example.com", "*.example.com")
    assert not hosts_overlap("*.example.com", "example.com")
    assert not hosts_overlap("a.example.com", "b.example.com")


def _resource(kind: str, namespace: str = "app", **spec: object) -> Resource:
    return Resource(kind=kind, api_version="networking.istio.io/v1", name="r", namespace=namespace, spec=dict(spec))


def test_export_to_defaults_to_everyone() -> None:
    resource = _resource("VirtualService")
    assert export_to(resource) == ["*"]
    assert visible(resource, "app")
    assert visible(resource, "other")


@pytest.mark.parametrize(("entries", "seen_from", "expected"), [
    (["."], "app", True),
    (["."], "other", False),
    (["*"], "other", True),
    (["~"], "app", False),
    (["other"], "other", True),
    (["other"], "third", False),
    ([".", "third"], "third", True),
    ([".", "third"], "fourth", False),
])
def test_export_to_entries(entries: list[str], seen_from: str, expected: bool) -> None:
    assert visible(_resource("ServiceEntry", exportTo=entries), seen_from) is expected


def test_destination_rule_with_workload_selector_stays_in_its_namespace() -> None:
    rule = _resource("DestinationRule", exportTo=["*"], workloadSelector={"matchLabels": {"app": "x"}})
    assert visible(rule, "app")
    assert not visible(rule, "other")


def test_sidecar_applies_to_its_namespace_and_root_sidecar_to_all() -> None:
    assert visible(_resource("Sidecar", "app"), "app")
    assert not visible(_resource("Sidecar", "app"), "other")
    assert visible(_resource("Sidecar", "istio-system"), "other", root_namespace="istio-system")
    assert not visible(_resource("Sidecar", "istio-system"), "other", root_namespace="mesh-root")


def test_gateways_are_visible_everywhere_whatever_they_say() -> None:
    assert visible(_resource("Gateway", exportTo=["."]), "other")
