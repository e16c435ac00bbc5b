"""Supported kinds and API versions, and the consistency of the spec schema."""

from __future__ import annotations

import pytest

from tulle.controlplane.istio.kinds import (
    MESSAGES,
    NETWORKING_KINDS,
    REGISTRY_SERVICE,
    ListOf,
    MapOf,
    Ref,
    check_kind,
    spec_schema,
    supported_api_versions,
)


@pytest.mark.parametrize("kind", NETWORKING_KINDS)
@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_every_kind_is_accepted_in_every_version(kind: str, version: str) -> None:
    assert check_kind(kind, f"networking.istio.io/{version}") is None
    assert spec_schema(kind).name == kind


def test_unknown_version_lists_the_supported_ones() -> None:
    field, message = check_kind("VirtualService", "networking.istio.io/v2")
    assert field == "apiVersion"
    for version in supported_api_versions():
        assert version in message


def test_wrong_group_is_refused() -> None:
    field, message = check_kind("Gateway", "gateway.networking.k8s.io/v1")
    assert field == "apiVersion"
    assert "gateway.networking.k8s.io/v1" in message


def test_unknown_kind_lists_the_supported_kinds_and_suggests() -> None:
    field, message = check_kind("VirtualServce", "networking.istio.io/v1")
    assert field == "kind"
    assert "did you mean VirtualService?" in message
    for kind in NETWORKING_KINDS:
        assert kind in message


@pytest.mark.parametrize(("kind", "api_version", "message"), [
    ("Service", "v1", "Service (v1) is a Kubernetes kind Tulle does not read: register services with "
                      "`tulle register service` or use a ServiceEntry"),
    ("Pod", "v1", "Pod (v1) is a Kubernetes kind Tulle does not read: register instances with "
                  "`tulle register instance` or use a WorkloadEntry"),
    ("Deployment", "apps/v1", "Deployment (apps/v1) is a Kubernetes kind Tulle does not read: Tulle reads "
                              "DestinationRule, Gateway, ServiceEntry, Sidecar, VirtualService, WorkloadEntry "),
    ("HTTPRoute", "gateway.networking.k8s.io/v1", "HTTPRoute (gateway.networking.k8s.io/v1) is a Kubernetes kind"),
])
def test_kubernetes_kinds_get_one_message_saying_what_to_use(kind: str, api_version: str, message: str) -> None:
    assert check_kind(kind, api_version) == ("kind", check_kind(kind, api_version)[1])
    assert check_kind(kind, api_version)[1].startswith(message)


def test_the_registry_service_is_read_and_other_service_versions_point_to_it() -> None:
    from tulle.controlplane.registry.registry import SERVICE_API_VERSION, SERVICE_KIND

    assert REGISTRY_SERVICE == (SERVICE_KIND, SERVICE_API_VERSION)  # the registry's own names
    assert check_kind(*REGISTRY_SERVICE) is None
    field, message = check_kind("Service", "networking.istio.io/v1")
    assert field == "apiVersion" and "registry.tulle.dev/v1" in message and "ServiceEntry" in message


def test_gateway_api_gateway_is_an_api_version_problem_of_istios_gateway() -> None:
    field, message = check_kind("Gateway", "gateway.networking.k8s.io/v1")
    assert field == "apiVersion"
    assert "(a Kubernetes API, which Tulle does not read)" in message


def test_security_kinds_are_reported_as_not_yet_supported() -> None:
    field, message = check_kind("AuthorizationPolicy", "security.istio.io/v1")
    assert field == "kind"
    assert "not supported yet" in message
    assert "security.istio.io" in message


def _referenced_messages(kind: object) -> list[str]:
    if isinstance(kind, Ref):
        return [kind.message]
    if isinstance(kind, ListOf):
        return _referenced_messages(kind.item)
    if isinstance(kind, MapOf):
        return _referenced_messages(kind.value)
    return []


def test_every_reference_and_oneof_names_something_that_exists() -> None:
    for message in MESSAGES.values():
        for field in message.fields.values():
            for name in _referenced_messages(field.type):
                assert name in MESSAGES, f"{message.name} refers to unknown message {name}"
        for group in message.oneofs:
            for name in group:
                assert name in message.fields, f"{message.name} oneof names unknown field {name}"


def test_schema_knows_the_fields_users_write() -> None:
    http_route = MESSAGES["HTTPRoute"].fields
    for name in ("match", "route", "redirect", "directResponse", "rewrite", "timeout", "retries", "fault",
                 "mirror", "mirrors", "mirrorPercentage", "corsPolicy", "headers", "delegate"):
        assert name in http_route
    consistent_hash = MESSAGES["ConsistentHashLB"].fields
    for name in ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName", "ringHash", "maglev"):
        assert name in consistent_hash
    assert MESSAGES["DestinationRule"].fields["host"].required
    assert MESSAGES["ServiceEntry"].fields["hosts"].required
