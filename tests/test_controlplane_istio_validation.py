"""Istio resource validation (the webhook's rules) and cross-resource analysis (istioctl analyze)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tulle.controlplane.istio.documents import load_files
from tulle.controlplane.istio.validation import analyze, parse_duration, parse_protocol, validate
from tulle.controlplane.model import Resource

DATA = Path(__file__).parent / "data" / "istio"
VALID_RESOURCES, _ = load_files([DATA / "valid.yaml"])


def _resource(kind: str, spec: dict[str, Any], name: str = "r", namespace: str = "default",
              annotations: dict[str, str] | None = None, api_version: str = "networking.istio.io/v1") -> Resource:
    return Resource(kind=kind, api_version=api_version, name=name, namespace=namespace, spec=spec,
                    annotations=annotations or {}, source="test.yaml#1")


def _findings(kind: str, spec: dict[str, Any], **options: Any) -> list[tuple[str, str, str]]:
    return [(d.level, d.field, d.message) for d in validate(_resource(kind, spec, **options))]


def _has(findings: list[tuple[str, str, str]], level: str, field: str, text: str) -> bool:
    return any(f == (level, field, f[2]) and text in f[2] for f in findings)


def _expect(kind: str, spec: dict[str, Any], level: str, field: str, text: str, **options: Any) -> None:
    findings = _findings(kind, spec, **options)
    assert _has(findings, level, field, text), findings


def _errors(kind: str, spec: dict[str, Any], **options: Any) -> list[tuple[str, str, str]]:
    return [f for f in _findings(kind, spec, **options) if f[0] == "error"]


def _route(**extra: Any) -> dict[str, Any]:
    """One HTTP route to reviews, with extra fields."""
    return {"route": [{"destination": {"host": "reviews"}}], **extra}


def _vs(*http: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"hosts": ["reviews"], "http": list(http) or [_route()], **spec}


# --- valid documents ------------------------------------------------------------------------


@pytest.mark.parametrize("resource", VALID_RESOURCES, ids=lambda r: f"{r.kind}-{r.name}")
def test_documented_examples_are_valid(resource: Resource) -> None:
    assert validate(resource) == []


@pytest.mark.parametrize("version", ["v1", "v1beta1", "v1alpha3"])
def test_all_api_versions_share_one_schema(version: str) -> None:
    assert _findings("VirtualService", _vs(), api_version=f"networking.istio.io/{version}") == []
    assert _findings("VirtualService", {"hots": ["x"]}, api_version=f"networking.istio.io/{version}")


def test_registry_services_are_validated_by_the_registry_as_tulle_apply_does() -> None:
    service = _resource("Service", {"ports": [{"name": "http", "port": 70000}]}, api_version="registry.tulle.dev/v1")
    findings = validate(service)
    assert findings and all(d.level == "error" and d.code == "IST0106" for d in findings)
    assert validate(_resource("Service", {"ports": [{"name": "http", "port": 9080}]},
                              api_version="registry.tulle.dev/v1")) == []


def test_unsupported_kind_reports_only_that() -> None:
    findings = _findings("AuthorizationPolicy", {"anything": 1}, api_version="security.istio.io/v1")
    assert [(level, field) for level, field, _ in findings] == [("error", "kind")]


def test_diagnostic_renders_source_resource_field_and_message() -> None:
    diagnostic = validate(_resource("DestinationRule", {"host": "reviews", "subsets": [{"name": "v1", "lables": {}}]},
                                    name="reviews", namespace="prod"))[0]
    assert diagnostic.resource == "DestinationRule prod/reviews"
    assert str(diagnostic) == ("test.yaml#1: DestinationRule prod/reviews: spec.subsets[0].lables: unknown field "
                               "'lables' in Subset; did you mean 'labels'?")


# --- structure: unknown fields, types, enums, required fields, oneofs --------------------------


def test_unknown_nested_field_names_path_and_suggests() -> None:
    spec = _vs(_route(), {"route": [{"destination": {"host": "a"}, "weight": 50},
                                    {"destination": {"hots": "b"}, "weight": 50}]})
    _expect("VirtualService", spec, "error", "spec.http[1].route[1].destination.hots", "did you mean 'host'?")


def test_proto_field_names_suggest_the_json_name() -> None:
    _expect("VirtualService", _vs(export_to=["."]), "error", "spec.export_to", "did you mean 'exportTo'?")


@pytest.mark.parametrize(("kind", "spec", "field", "text"), [
    ("VirtualService", {"hosts": "reviews", "http": [_route()]}, "spec.hosts", "expected a list, got string"),
    ("VirtualService", _vs({"route": [{"destination": {"host": "a"}, "weight": "50"}]}),
     "spec.http[0].route[0].weight", "expected an integer (int32), got string '50' (remove the quotes)"),
    ("VirtualService", _vs(_route(match=[{"ignoreUriCase": "yes"}])), "spec.http[0].match[0].ignoreUriCase",
     "expected true or false"),
    ("VirtualService", _vs(_route(match=[{"sourceLabels": {"version": 1}}])),
     "spec.http[0].match[0].sourceLabels[version]", "expected a string, got integer"),
    ("VirtualService", _vs(_route(mirror={"host": "m"}, mirrorPercentage={"value": "half"})),
     "spec.http[0].mirrorPercentage.value", "expected a number"),
    ("VirtualService", _vs(_route(timeout=5)), "spec.http[0].timeout", "invalid duration 5"),
    ("VirtualService", _vs({"directResponse": {"status": 200, "body": {"bytes": "!!!"}}}),
     "spec.http[0].directResponse.body.bytes", "invalid base64"),
    ("VirtualService", _vs({"route": [{"destination": "reviews"}]}), "spec.http[0].route[0].destination",
     "expected a mapping (Destination), got string"),
    ("VirtualService", _vs({"route": [None]}), "spec.http[0].route[0]", "may not be null"),
    ("DestinationRule", {"host": "r", "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": 3_000_000_000}}}},
     "spec.trafficPolicy.connectionPool.tcp.maxConnections", "out of range for int32"),
    ("ServiceEntry", {"hosts": ["a.com"], "ports": [{"number": -1, "name": "http", "protocol": "HTTP"}]},
     "spec.ports[0].number", "out of range for uint32"),
    ("ServiceEntry", {"hosts": ["a.com"], "resolution": "dns"}, "spec.resolution",
     "must be one of NONE, STATIC, DNS, DNS_ROUND_ROBIN, DYNAMIC_DNS; did you mean 'DNS'?"),
    ("WorkloadEntry", {"address": "1.1.1.1", "ports": {80: 8080}}, "spec.ports[80]", "map keys must be strings"),
])
def test_wrong_types_name_the_field(kind: str, spec: dict[str, Any], field: str, text: str) -> None:
    _expect(kind, spec, "error", field, text)


def test_required_fields() -> None:
    _expect("DestinationRule", {"subsets": []}, "error", "spec.host", "required field missing")
    _expect("VirtualService", _vs({"route": [{"weight": 100}]}), "error", "spec.http[0].route[0].destination",
            "required field missing")
    _expect("Gateway", {"servers": [{"hosts": ["a.com"]}]}, "error", "spec.servers[0].port", "required field missing")


def test_oneof_fields_are_exclusive() -> None:
    _expect("VirtualService", _vs(_route(match=[{"uri": {"exact": "/a", "prefix": "/"}}])), "error",
            "spec.http[0].match[0].uri", "only one of exact, prefix, regex may be set, found exact and prefix")
    _expect("DestinationRule", {"host": "r", "trafficPolicy": {"loadBalancer": {
        "simple": "RANDOM", "consistentHash": {"useSourceIp": True}}}},
            "error", "spec.trafficPolicy.loadBalancer", "only one of simple, consistentHash")


def test_deprecated_fields_warn() -> None:
    _expect("VirtualService", _vs(_route(mirror={"host": "m"}, mirrorPercent=10)), "warning",
            "spec.http[0].mirrorPercent", 'use "mirrorPercentage" instead')


# --- durations and percentages ----------------------------------------------------------------


@pytest.mark.parametrize(("text", "nanos"), [
    ("1.5s", 1_500_000_000), ("100ms", 100_000_000), ("1h30m", 5_400_000_000_000), ("2m", 120_000_000_000),
    ("0", 0), ("10us", 10_000), ("-1s", -1_000_000_000), (".5s", 500_000_000),
])
def test_parse_duration(text: str, nanos: int) -> None:
    assert parse_duration(text) == nanos


@pytest.mark.parametrize("text", ["", "5", "5 seconds", "1.5", "s", "1d", "1s2"])
def test_parse_duration_refuses(text: str) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize(("value", "text"), [
    ("100us", "duration must be greater than 1ms"),
    ("-1s", "duration must be greater than 1ms"),
    ("1.0005s", "only durations to ms precision are supported"),
    ("5 seconds", "invalid duration"),
])
def test_duration_rules(value: str, text: str) -> None:
    _expect("VirtualService", _vs(_route(timeout=value)), "error", "spec.http[0].timeout", text)


def test_cookie_ttl_may_be_zero() -> None:
    spec = {"host": "r", "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpCookie": {"name": "u", "ttl": "0s"}}}}}
    assert _findings("DestinationRule", spec) == []


@pytest.mark.parametrize(("value", "valid"), [(0, True), (0.0001, True), (100, True), (101, False),
                                              (0.00001, False), (-1, False)])
def test_fault_percentage_range(value: float, valid: bool) -> None:
    spec = _vs(_route(fault={"abort": {"httpStatus": 503, "percentage": {"value": value}}}))
    findings = _errors("VirtualService", spec)
    assert (findings == []) is valid, findings
    if not valid:
        assert findings[0][1] == "spec.http[0].fault.abort.percentage.value"


def test_mirror_percentage_range() -> None:
    spec = _vs(_route(mirror={"host": "m"}, mirrorPercentage={"value": 150}))
    _expect("VirtualService", spec, "error", "spec.http[0].mirrorPercentage.value", "max value of 100")
    spec = _vs(_route(mirrors=[{"destination": {"host": "m"}, "percentage": {"value": -5}}]))
    _expect("VirtualService", spec, "error", "spec.http[0].mirrors[0].percentage.value", "min value of 0")


# --- ports, headers, regexes, match rules ------------------------------------------------------


def test_port_ranges() -> None:
    _expect("VirtualService", _vs(_route(match=[{"port": 70000}])), "error", "spec.http[0].match[0].port",
            "port number 70000 must be in the range 1..65535")
    _expect("VirtualService", _vs({"route": [{"destination": {"host": "r", "port": {}}}]}), "error",
            "spec.http[0].route[0].destination.port.number", "port number 0")
    _expect("ServiceEntry", {"hosts": ["a.com"], "ports": [{"number": 65536, "name": "http", "protocol": "HTTP"}]},
            "error", "spec.ports[0].number", "port number 65536")


def test_header_names_in_matches() -> None:
    spec = _vs(_route(match=[{"headers": {"bad header": {"exact": "x"}, "end-user": {"exact": "jason"}}}]))
    findings = _errors("VirtualService", spec)
    assert findings == [("error", "spec.http[0].match[0].headers[bad header]",
                         "header name bad header is not a valid header name")]


def test_jwt_claim_routes_need_a_gateway() -> None:
    match = [{"headers": {"@request.auth.claims.group": {"exact": "admin"}}}]
    _expect("VirtualService", _vs(_route(match=match)), "error",
            "spec.http[0].match[0].headers[@request.auth.claims.group]", "only supported for gateway")
    assert _errors("VirtualService", _vs(_route(match=match), gateways=["edge/gw"])) == []


def test_regexes_are_checked_with_re2() -> None:
    # A backreference is fine for Python's re but not for RE2, which Envoy uses.
    _expect("VirtualService", _vs(_route(match=[{"uri": {"regex": "(a)\\1"}}])), "error",
            "spec.http[0].match[0].uri.regex", "Istio uses RE2 style regex")
    _expect("VirtualService", _vs(_route(match=[{"queryParams": {"q": {"regex": "a" * 1025}}}])), "error",
            "spec.http[0].match[0].queryParams[q].regex", "regex is too large")
    assert _errors("VirtualService", _vs(_route(match=[{"uri": {"regex": "/api/v[0-9]+/.*"}}]))) == []


def test_match_rules() -> None:
    spec = _vs(_route(match=[{
        "uri": {"prefix": ""},  # allowed: Envoy matches every path
        "authority": {"prefix": ""},
        "gateways": ["ns/"],
        "sourceNamespace": "Not_A_Namespace",
        "withoutHeaders": {"x-canary": {"regex": "*"}},  # "*" means "present", not a regex
    }]))
    findings = _errors("VirtualService", spec)
    assert {field for _, field, _ in findings} == {
        "spec.http[0].match[0].authority.prefix",
        "spec.http[0].match[0].gateways[0]",
        "spec.http[0].match[0].sourceNamespace",
    }


def test_header_operations() -> None:
    headers = {"request": {"set": {":path": "/x", "x-ok": "a%%b"}, "remove": ["host"]},
               "response": {"add": {"x-bad": "%START_TIME", "x-ctl": "a\x01b"}, "set": {"host": "h"}}}
    findings = {field: message for _, field, message in _errors("VirtualService", _vs(_route(headers=headers)))}
    expected = {
        "spec.http[0].headers.request.set[:path]": 'invalid header ":path": header cannot have ":" prefix',
        "spec.http[0].headers.request.remove[0]": 'invalid header "host": cannot set Host header',
        "spec.http[0].headers.response.add[x-bad]": "header value configuration: invalid header configuration. "
                                                    "Un-terminated variable expression '%START_TIME'",
        "spec.http[0].headers.response.add[x-ctl]": "header value configuration a\x01b is invalid",
        "spec.http[0].headers.response.set[host]": 'invalid header "host": cannot set Host header',
    }
    assert findings == expected


def test_header_values_accept_envoy_variables() -> None:
    headers = {"request": {"set": {"x-a": "%DOWNSTREAM_REMOTE_ADDRESS%", "x-b": '%REQ(x-id)%',
                                   "x-c": '%UPSTREAM_METADATA(["a", "b"])%', "x-d": "100%%"}}}
    assert _errors("VirtualService", _vs(_route(headers=headers))) == []


def test_authority_can_be_rewritten_in_one_place_only() -> None:
    spec = _vs(_route(rewrite={"authority": "a"}, headers={"request": {"set": {":authority": "b"}}}))
    _expect("VirtualService", spec, "error", "spec.http[0].headers.request.set[:authority]",
            "authority header cannot be set multiple times")


# --- HTTP route actions ------------------------------------------------------------------------


def test_weights_sum_to_100_when_there_are_several_destinations() -> None:
    def route(*weights: int) -> dict[str, Any]:
        return {"route": [{"destination": {"host": f"h{i}"}, "weight": w} for i, w in enumerate(weights)]}

    assert _findings("VirtualService", _vs(route(80, 20))) == []
    assert _findings("VirtualService", _vs(route(7))) == []
    _expect("VirtualService", _vs(route(60, 60)), "warning", "spec.http[0].route", "add up to 120, not 100")
    _expect("VirtualService", _vs(route(0, 0)), "error", "spec.http[0].route", "total destination weight = 0")
    _expect("VirtualService", _vs(route(-10, 110)), "error", "spec.http[0].route[0].weight", "weight -10 < 0")


def test_route_redirect_or_direct_response_is_required() -> None:
    _expect("VirtualService", _vs({"name": "empty"}), "error", "spec.http[0].route",
            "HTTP route, redirect or direct_response is required")


def test_direct_response_excludes_route_and_redirect() -> None:
    _expect("VirtualService", _vs(_route(directResponse={"status": 503})), "error", "spec.http[0].directResponse",
            "cannot contain both route and direct_response")
    _expect("VirtualService", _vs({"redirect": {"uri": "/a"}, "directResponse": {"status": 503}}), "error",
            "spec.http[0].redirect", "cannot contain both direct_response and redirect")
    _expect("VirtualService", _vs({"directResponse": {"status": 100}}), "error",
            "spec.http[0].directResponse.status", "HTTP status 100 is not in range 200-599")


def test_direct_response_body_size() -> None:
    _expect("VirtualService", _vs({"directResponse": {"status": 200, "body": {"string": "x" * 200_000}}}), "warning",
            "spec.http[0].directResponse.body", "may impact control plane performance")
    _expect("VirtualService", _vs({"directResponse": {"status": 200, "body": {"string": "x" * 1_100_000}}}), "error",
            "spec.http[0].directResponse.body", "must be less than 1MB")


@pytest.mark.parametrize(("redirect", "field", "text"), [
    ({}, "spec.http[0].redirect", "redirect must specify URI, authority, scheme, or port"),
    ({"uri": "/a", "redirectCode": 200}, "spec.http[0].redirect.redirectCode", "200 is not a valid redirect code"),
    ({"scheme": "ftp"}, "spec.http[0].redirect.scheme", 'must be "http" or "https"'),
    ({"port": 70000}, "spec.http[0].redirect.port", "port number 70000"),
])
def test_redirect_rules(redirect: dict[str, Any], field: str, text: str) -> None:
    _expect("VirtualService", _vs({"redirect": redirect}), "error", field, text)


@pytest.mark.parametrize(("rewrite", "text"), [
    ({"uri": "/a", "uriRegexRewrite": {"match": "a", "rewrite": "b"}}, "only contain one of URI or UriRegexRewrite"),
    ({}, "rewrite must specify at least one of URI, UriRegexRewrite, or authority"),
    ({"uriRegexRewrite": {"match": "^/a"}}, "requires both Rewrite and Match"),
])
def test_rewrite_rules(rewrite: dict[str, Any], text: str) -> None:
    findings = _errors("VirtualService", _vs(_route(rewrite=rewrite)))
    assert findings and findings[0][1].startswith("spec.http[0].rewrite") and text in findings[0][2], findings


def test_rewrite_regex_is_checked() -> None:
    _expect("VirtualService", _vs(_route(rewrite={"uriRegexRewrite": {"match": "a(", "rewrite": "b"}})), "error",
            "spec.http[0].rewrite.uriRegexRewrite.match", "Istio uses RE2 style regex")


@pytest.mark.parametrize(("retries", "field", "text"), [
    ({"attempts": -1}, "spec.http[0].retries.attempts", "attempts cannot be negative"),
    ({"perTryTimeout": "2s"}, "spec.http[0].retries.attempts", "configured when attempts are set to 0"),
    ({"attempts": 3, "retryOn": "5xx,bogus"}, "spec.http[0].retries.retryOn", "'bogus' is not a valid retryOn policy"),
    ({"attempts": 3, "perTryTimeout": "0.5ms"}, "spec.http[0].retries.perTryTimeout", "greater than 1ms"),
])
def test_retry_rules(retries: dict[str, Any], field: str, text: str) -> None:
    _expect("VirtualService", _vs(_route(retries=retries)), "error", field, text)


def test_retry_on_accepts_policies_and_status_codes() -> None:
    retries = {"attempts": 2, "retryOn": "gateway-error,retriable-4xx,503,cancelled"}
    assert _errors("VirtualService", _vs(_route(retries=retries))) == []


@pytest.mark.parametrize(("fault", "level", "field", "text"), [
    ({}, "error", "spec.http[0].fault", "must have an abort and/or a delay"),
    ({"abort": {"percentage": {"value": 5}}}, "warning", "spec.http[0].fault.abort", "error type not set"),
    ({"abort": {"http2Error": "x"}}, "error", "spec.http[0].fault.abort.http2Error", "not supported yet"),
    ({"abort": {"httpStatus": 700}}, "error", "spec.http[0].fault.abort.httpStatus", "HTTP status 700"),
    ({"abort": {"grpcStatus": "NOPE"}}, "error", "spec.http[0].fault.abort.grpcStatus", "gRPC status 'NOPE'"),
    ({"delay": {"exponentialDelay": "1s"}}, "error", "spec.http[0].fault.delay.exponentialDelay", "not supported"),
    ({"delay": {"percentage": {"value": 5}}}, "error", "spec.http[0].fault.delay.fixedDelay", "required"),
    ({"delay": {"fixedDelay": "0s"}}, "error", "spec.http[0].fault.delay.fixedDelay", "greater than 1ms"),
])
def test_fault_rules(fault: dict[str, Any], level: str, field: str, text: str) -> None:
    _expect("VirtualService", _vs(_route(fault=fault)), level, field, text)


def test_grpc_abort_is_valid() -> None:
    assert _errors("VirtualService", _vs(_route(fault={"abort": {"grpcStatus": "UNAVAILABLE"}}))) == []


def test_mirror_rules() -> None:
    _expect("VirtualService", _vs(_route(mirror={"host": "a"}, mirrors=[{"destination": {"host": "b"}}])), "error",
            "spec.http[0].mirrors", "cannot contain both mirror and mirrors")
    _expect("VirtualService", _vs(_route(mirror={"host": "*"})), "error", "spec.http[0].mirror.host",
            "invalid destination host *")
    _expect("VirtualService", _vs(_route(mirrors=[{"percentage": {"value": 5}}])), "error",
            "spec.http[0].mirrors[0].destination", "required field missing")


def test_cors_policy_rules() -> None:
    cors = {"allowOrigins": [{"exact": ""}, {"regex": "a("}], "allowMethods": ["GET", "FETCH"],
            "allowHeaders": ["x ok"], "exposeHeaders": ["*"], "maxAge": "1500ms"}
    findings = _errors("VirtualService", _vs(_route(corsPolicy=cors)))
    assert {field for _, field, _ in findings} == {
        "spec.http[0].corsPolicy.allowOrigins[0]", "spec.http[0].corsPolicy.allowOrigins[1].regex",
        "spec.http[0].corsPolicy.allowMethods[1]", "spec.http[0].corsPolicy.allowHeaders[0]",
        "spec.http[0].corsPolicy.maxAge",
    }


def test_subset_names_are_dns_labels() -> None:
    _expect("VirtualService", _vs({"route": [{"destination": {"host": "r", "subset": "v_1"}}]}), "error",
            "spec.http[0].route[0].destination.subset", "subset name is invalid: v_1")


# --- VirtualService as a whole, TCP and TLS routes -------------------------------------------


def test_virtual_service_needs_routes() -> None:
    _expect("VirtualService", {"hosts": ["reviews"]}, "error", "spec", "http, tcp or tls must be provided")


def test_virtual_service_hosts() -> None:
    _expect("VirtualService", _vs(hosts=["*"]), "error", "spec.hosts[0]", "wildcard host * is not allowed")
    assert _errors("VirtualService", _vs(hosts=["*"], gateways=["edge/gw"])) == []
    _expect("VirtualService", _vs(hosts=["a.example.com", "*.example.com"]), "error", "spec.hosts[1]",
            "duplicate hosts in virtual service")
    _expect("VirtualService", _vs(hosts=["bad_host.com"]), "error", "spec.hosts[0]", "invalid (label 'bad_host'")
    assert _errors("VirtualService", _vs(hosts=["10.0.0.1"])) == []


def test_delegate_virtual_service_rules() -> None:
    spec = {"gateways": ["edge/gw"], "http": [_route()], "tcp": [{"route": [{"destination": {"host": "r"}}]}]}
    findings = _errors("VirtualService", spec)
    assert ("error", "spec.gateways", "delegate virtual service must have no gateways specified") in findings
    assert ("error", "spec.tcp", "delegate virtual service must have no tcp route specified") in findings
    _expect("VirtualService", {"http": [{"delegate": {"name": "d"}, **_route()}]}, "error",
            "spec.http[0].delegate", "delegate HTTP route cannot contain delegate")


def test_root_route_with_delegate_must_not_route() -> None:
    _expect("VirtualService", _vs({"name": "root", "delegate": {"name": "d", "namespace": "n"}, **_route()}),
            "error", "spec.http[0].route", "root HTTP route root must not specify route")


def test_gateway_names() -> None:
    _expect("VirtualService", _vs(gateways=["Bad_NS/gw"]), "error", "spec.gateways[0]", "invalid value for namespace")
    _expect("VirtualService", _vs(gateways=["gw.edge.svc.cluster.local"]), "warning", "spec.gateways[0]",
            "prefer the <namespace>/<name> format: 'edge/gw'")


def test_export_to_rules() -> None:
    _expect("VirtualService", _vs(exportTo=["default", "."]), "error", "spec.exportTo",
            "duplicate entries in exportTo: . and current namespace default")
    _expect("VirtualService", _vs(exportTo=["other", "other"]), "error", "spec.exportTo",
            "duplicate entries in exportTo for entry other")
    _expect("VirtualService", _vs(exportTo=["*", "other"]), "error", "spec.exportTo", "both public (*) and non-public")
    _expect("VirtualService", _vs(exportTo=["~"]), "error", "spec.exportTo", "exportTo ~ (none) is not allowed")
    assert _errors("ServiceEntry", {"hosts": ["a.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
                                    "exportTo": ["~"]}) == []


def test_tls_routes() -> None:
    spec = {"hosts": ["*.bookinfo.com"], "gateways": ["edge/gw"], "tls": [
        {"match": [{"sniHosts": ["login.bookinfo.com", "other.com", "10.0.0.1"]}]},
        {"match": [], "route": [{"destination": {"host": "r"}}]},
    ]}
    findings = _findings("VirtualService", spec)
    assert ("error", "spec.tls[0].route", "TLS route is required") in findings
    assert _has(findings, "error", "spec.tls[0].match[0].sniHosts[1]", "not a compatible subset")
    assert _has(findings, "warning", "spec.tls[0].match[0].sniHosts[2]", "goes against SNI spec")
    assert ("error", "spec.tls[1].match", "TLS route must have at least one match condition") in findings
    assert not _has(findings, "error", "spec.tls[0].match[0].sniHosts[0]", "")


def test_tcp_routes() -> None:
    spec = {"hosts": ["mongo"], "tcp": [{"match": [{"port": 27017, "destinationSubnets": ["10.0.0.0/33"]}]}]}
    findings = _errors("VirtualService", spec)
    assert ("error", "spec.tcp[0].route", "TCP route is required") in findings
    assert ("error", "spec.tcp[0].match[0].destinationSubnets[0]", "10.0.0.0/33 is not a valid CIDR block") in findings


def test_unreachable_and_shadowed_rules_warn() -> None:
    spec = _vs(
        _route(name="first", match=[{"uri": {"prefix": "/api"}}]),
        _route(name="again", match=[{"uri": {"prefix": "/api"}, "name": "renamed"}]),
        _route(name="longer", match=[{"uri": {"prefix": "/api/v2"}}]),
        _route(name="catch-all"),
        _route(name="second-catch-all"),
    )
    findings = _findings("VirtualService", spec)
    # istioctl: IST0131 VirtualServiceIneffectiveMatch (Info), IST0130 VirtualServiceUnreachableRule (Warning)
    assert _has(findings, "info", "spec.http[1].match[0]", 'VirtualService rule "again" match "renamed" is not used')
    assert _has(findings, "warning", "spec.http[1]", 'VirtualService rule "again" not used (all matches used by prior '
                                                     'rules).')
    assert _has(findings, "info", "spec.http[2].match[0]", 'of prefix /api/v2 is not used')
    assert _has(findings, "warning", "spec.http[4]", "only the last rule can have no matches")
    assert _errors("VirtualService", spec) == []
    codes = {(d.field, d.code) for d in validate(_resource("VirtualService", spec))}
    assert codes == {("spec.http[1].match[0]", "IST0131"), ("spec.http[1]", "IST0130"),
                     ("spec.http[2].match[0]", "IST0131"), ("spec.http[4]", "IST0130")}


def test_matches_after_a_catch_all_rule_are_unreachable() -> None:
    # Istio (analyzeUnreachableHTTPRules): every match of a rule after one without matches.
    spec = _vs(_route(name="all"), _route(name="late", match=[{"uri": {"prefix": "/a"}}, {"uri": {"prefix": "/b"}}]))
    assert [(f[0], f[1]) for f in _findings("VirtualService", spec)] == [
        ("warning", "spec.http[1].match[0]"), ("warning", "spec.http[1].match[1]")]
    assert 'VirtualService rule "late" not used (route without matches defined before).' in _findings(
        "VirtualService", spec)[0][2]


# --- DestinationRule --------------------------------------------------------------------------


def _dr(**policy: Any) -> dict[str, Any]:
    return {"host": "reviews", "trafficPolicy": policy}


@pytest.mark.parametrize(("spec", "field", "text"), [
    ({"host": "reviews", "trafficPolicy": {}}, "spec.trafficPolicy", "traffic policy must have at least one field"),
    (_dr(connectionPool={}), "spec.trafficPolicy.connectionPool", "connection pool must have at least one field"),
    (_dr(connectionPool={"http": {"maxRetries": -1}}), "spec.trafficPolicy.connectionPool.http.maxRetries",
     "max retries must be non-negative"),
    (_dr(connectionPool={"http": {"h2UpgradePolicy": "UPGRADE", "useClientProtocol": True}}),
     "spec.trafficPolicy.connectionPool.http.useClientProtocol", "must not be true when H2UpgradePolicy is UPGRADE"),
    (_dr(outlierDetection={"consecutiveLocalOriginFailures": 3}),
     "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures", "split external local origin errors"),
    (_dr(outlierDetection={"maxEjectionPercent": 101}), "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
     "percentage 101 is not in range 0..100"),
    (_dr(outlierDetection={"interval": "1us"}), "spec.trafficPolicy.outlierDetection.interval", "greater than 1ms"),
    (_dr(loadBalancer={"consistentHash": {"httpCookie": {"name": ""}}}),
     "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name", "name required for HttpCookie"),
    (_dr(loadBalancer={"consistentHash": {"httpCookie": {"path": "/"}}}),
     "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name", "required field missing"),
    (_dr(loadBalancer={"consistentHash": {"useSourceIp": True, "maglev": {"tableSize": 65536}}}),
     "spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize", "tableSize must be a prime number"),
    (_dr(loadBalancer={"consistentHash": {"httpHeaderName": "x", "httpQueryParameterName": "q"}}),
     "spec.trafficPolicy.loadBalancer.consistentHash", "only one of httpHeaderName, httpCookie"),
    (_dr(loadBalancer={"localityLbSetting": {"distribute": [{"from": "us/*", "to": {"us/a/*": 60, "us/b/*": 30}}]}}),
     "spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to", "total locality weight 90 != 100"),
    (_dr(loadBalancer={"localityLbSetting": {"failover": [{"from": "us", "to": "us"}]}}, outlierDetection={
        "consecutive5xxErrors": 1}),
     "spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0]", "must specify different regions"),
    (_dr(loadBalancer={"localityLbSetting": {"distribute": [{"from": "a", "to": {"b": 100}}],
                                             "failover": [{"from": "a", "to": "b"}]}}),
     "spec.trafficPolicy.loadBalancer.localityLbSetting", "can not simultaneously specify 'distribute' and 'failover'"),
    (_dr(tls={"mode": "MUTUAL"}), "spec.trafficPolicy.tls.clientCertificate", "client certificate required"),
    (_dr(tls={"mode": "SIMPLE", "insecureSkipVerify": True, "caCertificates": "/ca.pem"}), "spec.trafficPolicy.tls",
     "when InsecureSkipVerify is set true"),
    (_dr(portLevelSettings=[{"loadBalancer": {"simple": "RANDOM"}}]), "spec.trafficPolicy.portLevelSettings[0].port",
     "portTrafficPolicy must have valid port"),
    (_dr(portLevelSettings=[{"port": {"number": 80}}]), "spec.trafficPolicy.portLevelSettings[0]",
     "port traffic policy must have at least one field"),
    (_dr(tunnel={"protocol": "GET", "targetHost": "proxy.example.com", "targetPort": 8080}),
     "spec.trafficPolicy.tunnel.protocol", 'tunnel protocol must be "CONNECT" or "POST"'),
    (_dr(tunnel={"targetHost": "10.0.0.1", "targetPort": 0}), "spec.trafficPolicy.tunnel.targetPort",
     "tunnel target port is invalid"),
    ({"host": "reviews", "subsets": [{"name": "v1"}, {"name": "v1"}]}, "spec.subsets[1].name",
     "duplicate subset names: v1"),
    ({"host": "reviews", "subsets": [{"name": "v.1"}]}, "spec.subsets[0].name", "subset name is invalid: v.1"),
    ({"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "bad value!"}}]}, "spec.subsets[0].labels",
     "invalid tag value"),
    ({"host": "reviews", "subsets": [{"name": "v1", "trafficPolicy": {}}]}, "spec.subsets[0].trafficPolicy",
     "traffic policy must have at least one field"),
    ({"host": "*"}, "spec.host", ""),
    ({"host": "reviews", "workloadSelector": {"matchLabels": {"app": "r"}}, "exportTo": ["*"]}, "spec.exportTo",
     "destination rule with workload selector cannot have exportTo beyond current namespace"),
])
def test_destination_rule_rules(spec: dict[str, Any], field: str, text: str) -> None:
    if spec == {"host": "*"}:
        assert _errors("DestinationRule", spec) == []  # a wildcard host is a valid DestinationRule host
        return
    _expect("DestinationRule", spec, "error", field, text)


def test_destination_rule_warnings() -> None:
    _expect("DestinationRule", _dr(loadBalancer={"localityLbSetting": {"failover": [{"from": "a", "to": "b"}]}}),
            "warning", "spec.trafficPolicy.loadBalancer.localityLbSetting", "outlier detection policy must be provided")
    _expect("DestinationRule", _dr(outlierDetection={"consecutiveErrors": 5}), "warning",
            "spec.trafficPolicy.outlierDetection.consecutiveErrors", "deprecated")
    _expect("DestinationRule", {"host": "r", "workloadSelector": {}}, "warning", "spec.workloadSelector",
            "workload selector specified without labels")


# --- Gateway ----------------------------------------------------------------------------------


def _server(**fields: Any) -> dict[str, Any]:
    return {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["a.example.com"], **fields}


@pytest.mark.parametrize(("spec", "level", "field", "text"), [
    ({"servers": []}, "error", "spec.servers", "gateway must have at least one server"),
    ({"servers": [_server(hosts=[])]}, "error", "spec.servers[0].hosts", "at least one host"),
    ({"servers": [_server(hosts=["short"])]}, "error", "spec.servers[0].hosts[0]", "short names (non FQDN)"),
    ({"servers": [_server(hosts=["ns/a*.example.com"])]}, "error", "spec.servers[0].hosts[0]", "partial wildcard"),
    ({"servers": [_server(port={"number": 80, "name": "h", "protocol": "SMTP"})]}, "error",
     "spec.servers[0].port.protocol", "invalid protocol 'SMTP'"),
    ({"servers": [_server(port={"number": 0, "name": "h", "protocol": "HTTP"})]}, "error",
     "spec.servers[0].port.number", "port number 0"),
    ({"servers": [_server(port={"number": 80, "name": "h", "protocol": "HTTP", "targetPort": 8080})]}, "error",
     "spec.servers[0].port.targetPort", "targetPort has no impact on Gateways"),
    ({"servers": [_server(port={"number": 443, "name": "https", "protocol": "HTTPS"})]}, "error",
     "spec.servers[0].tls", "server must have TLS settings for HTTPS/TLS protocols"),
    ({"servers": [_server(tls={"mode": "SIMPLE", "credentialName": "c"})]}, "error", "spec.servers[0].tls",
     "server cannot have TLS settings for plain text HTTP ports"),
    ({"servers": [_server(port={"number": 27017, "name": "m", "protocol": "MONGO"}, tls={"httpsRedirect": True})]},
     "warning", "spec.servers[0].tls.httpsRedirect", "should only be used with http servers"),
    ({"servers": [_server(), _server(port={"number": 81, "name": "http", "protocol": "HTTP"})]}, "error",
     "spec.servers[1].port.name", "port names in servers must be unique"),
    ({"servers": [_server(port={"number": 443, "name": "s", "protocol": "HTTPS"},
                          tls={"mode": "ISTIO_MUTUAL", "serverCertificate": "/c.pem"})]}, "error",
     "spec.servers[0].tls.serverCertificate", "ISTIO_MUTUAL TLS cannot have associated server certificate"),
    ({"servers": [_server(port={"number": 443, "name": "s", "protocol": "HTTPS"},
                          tls={"mode": "MUTUAL", "serverCertificate": "/c", "privateKey": "/k"})]}, "error",
     "spec.servers[0].tls.caCertificates", "MUTUAL TLS requires a client CA bundle"),
    ({"servers": [_server(port={"number": 443, "name": "s", "protocol": "HTTPS"},
                          tls={"mode": "SIMPLE", "credentialName": "c", "cipherSuites": ["NOPE-CIPHER"]})]},
     "warning", "spec.servers[0].tls.cipherSuites", "ignoring invalid cipher suites: ['NOPE-CIPHER']"),
    ({"servers": [_server(bind="unix:///var/run/gw.sock")]}, "error", "spec.servers[0].port.number",
     "port number must be 0 for unix domain socket"),
    ({"servers": [_server(bind="not-an-ip")]}, "error", "spec.servers[0].bind", "not-an-ip is not a valid IP"),
])
def test_gateway_rules(spec: dict[str, Any], level: str, field: str, text: str) -> None:
    _expect("Gateway", spec, level, field, text)


def test_gateway_name_must_be_a_dns_label() -> None:
    _expect("Gateway", {"servers": [_server()]}, "error", "metadata.name", "invalid gateway name", name="edge.gw")


def test_unix_socket_gateway_server_is_valid() -> None:
    server = _server(bind="unix:///var/run/gw.sock", port={"number": 0, "name": "uds", "protocol": "HTTP"})
    assert _errors("Gateway", {"servers": [server]}) == []


# --- ServiceEntry and WorkloadEntry -------------------------------------------------------------


def _se(**spec: Any) -> dict[str, Any]:
    return {"hosts": ["api.example.com"], "ports": [{"number": 443, "name": "https", "protocol": "TLS"}], **spec}


@pytest.mark.parametrize(("spec", "level", "field", "text"), [
    (_se(resolution="NONE", endpoints=[{"address": "1.1.1.1"}]), "error", "spec.endpoints",
     "no endpoints should be provided for resolution type none"),
    (_se(hosts=["*.example.com"], resolution="DNS"), "error", "spec.hosts[0]",
     "hosts must be FQDN if no endpoints are provided for resolution mode DNS"),
    (_se(resolution="DNS_ROUND_ROBIN", endpoints=[{"address": "a.example.com"}, {"address": "b.example.com"}]),
     "error", "spec.endpoints", "there must only be 0 or 1 endpoint"),
    (_se(resolution="STATIC", endpoints=[{"address": "db.example.com"}]), "error", "spec.endpoints[0].address",
     "is not a valid IP address"),
    (_se(resolution="STATIC", endpoints=[{"address": "1.1.1.1", "ports": {"http": 8080}}]), "error",
     "spec.endpoints[0].ports[http]", "endpoint port 8080 is not defined by the service entry"),
    (_se(resolution="DNS", addresses=["10.0.0.0/24"]), "error", "spec.addresses",
     "CIDR addresses are allowed only for NONE/STATIC resolution types"),
    (_se(addresses=["10.0.0.300"]), "error", "spec.addresses[0]", "10.0.0.300 is not a valid IP"),
    (_se(hosts=["a.example.com", "b.example.com"], resolution="DNS",
         ports=[{"number": 3306, "name": "mysql", "protocol": "TCP"}], addresses=["10.1.1.1"]),
     "error", "spec.ports[0]", "multiple hosts provided with non-HTTP, non-TLS ports"),
    (_se(ports=[{"number": 80, "name": "http", "protocol": "HTTP"}, {"number": 80, "name": "http2", "protocol": "HTTP"}]),
     "error", "spec.ports[1].number", "service entry port 80 already defined"),
    (_se(ports=[{"number": 80, "name": "Not_Valid", "protocol": "HTTP"}]), "error", "spec.ports[0].name",
     "invalid port name: Not_Valid"),
    (_se(hosts=["*"]), "error", "spec.hosts[0]", "invalid host *"),
    (_se(hosts=["api*.example.com"]), "warning", "spec.hosts[0]", "partial wildcard"),
    (_se(workloadSelector={"labels": {"app": "x"}}, endpoints=[]), "error", "spec.workloadSelector",
     "only one of WorkloadSelector or Endpoints"),
    (_se(resolution="DNS", workloadSelector={"labels": {"app": "x"}}), "warning", "spec.workloadSelector",
     "workloadSelector should not be set when resolution mode is DNS"),
    (_se(ports=[{"number": 5432, "name": "pg", "protocol": "TCP"}]), "warning", "spec.ports[0]",
     "addresses are required for ports serving TCP"),
    (_se(ports=[{"number": 80, "name": "http", "protocol": "HTTP", "targetPort": 70000}], resolution="STATIC"),
     "error", "spec.ports[0].targetPort", "port number 70000"),
])
def test_service_entry_rules(spec: dict[str, Any], level: str, field: str, text: str) -> None:
    _expect("ServiceEntry", spec, level, field, text)


def test_service_entry_with_dns_endpoints_may_use_wildcard_hosts() -> None:
    assert _errors("ServiceEntry", _se(hosts=["*.example.com"], resolution="DNS",
                                       endpoints=[{"address": "proxy.example.com", "ports": {"https": 8443}}])) == []


@pytest.mark.parametrize(("spec", "field", "text"), [
    ({"ports": {"http": 80}}, "spec.address", "address is required"),
    ({"address": "unix:///var/run/app.sock", "ports": {"http": 80}}, "spec.ports", "must not include ports"),
    ({"address": "unix://relative.sock"}, "spec.address", "is not an absolute path"),
    ({"address": "not valid!"}, "spec.address", "is not a valid FQDN or an IP address"),
    ({"address": "1.1.1.1", "ports": {"HTTP_PORT": 80}}, "spec.ports[HTTP_PORT]", "invalid port name"),
    ({"address": "1.1.1.1", "ports": {"http": 0}}, "spec.ports[http]", "port number 0"),
    ({"address": "1.1.1.1", "labels": {"app": "bad value!"}}, "spec.labels", "invalid tag value"),
])
def test_workload_entry_rules(spec: dict[str, Any], field: str, text: str) -> None:
    _expect("WorkloadEntry", spec, "error", field, text)


def test_workload_entry_accepts_fqdn_and_network_only() -> None:
    assert _errors("WorkloadEntry", {"address": "vm1.example.com", "ports": {"http": 8080}}) == []
    _expect("WorkloadEntry", {"network": "vpc-1"}, "warning", "spec.address", "address is unset with network")


# --- fields current Istio added (istio.io/api as pinned by istio/istio 86c9f01fd735) ---------------

_POOL = "spec.trafficPolicy.connectionPool"
_LB = "spec.trafficPolicy.loadBalancer"


@pytest.mark.parametrize(("kind", "spec", "field", "text"), [
    ("DestinationRule", _dr(loadBalancer={"warmup": {"duration": "300s", "minimumPercent": 150.0}}),
     f"{_LB}.warmup.minimumPercent", "150.0 must be less than or equal to 100"),
    ("DestinationRule", _dr(loadBalancer={"warmup": {"duration": "300s", "aggression": -0.1}}),
     f"{_LB}.warmup.aggression", "-0.1 must be greater than or equal to 0"),
    ("DestinationRule", _dr(loadBalancer={"warmup": {"duration": "300s", "aggression": 0}}),
     f"{_LB}.warmup.aggression", "aggression should be greater than 0"),
    ("DestinationRule", _dr(connectionPool={"http": {"http2KeepAlive": {"interval": "15s"}}}),
     f"{_POOL}.http.http2KeepAlive.timeout", "http2 keepalive timeout is required"),
    ("DestinationRule", _dr(connectionPool={"http": {"http2KeepAlive": {"interval": "1us", "timeout": "5s"}}}),
     f"{_POOL}.http.http2KeepAlive.interval", "greater than 1ms"),
    ("DestinationRule", _dr(retryBudget={"percent": 120}), "spec.trafficPolicy.retryBudget.percent",
     "must be less than or equal to 100"),
    ("DestinationRule", _dr(retryBudget={"budgetInterval": "soon"}), "spec.trafficPolicy.retryBudget.budgetInterval",
     "invalid duration"),
    ("DestinationRule", _dr(loadBalancer={"localityLbSetting": {}, "zoneAwareLbSetting": {}}), _LB,
     "only one of localityLbSetting and zoneAwareLbSetting can be set"),
    ("DestinationRule", _dr(loadBalancer={"zoneAwareLbSetting": {"minClusterSize": 0}}),
     f"{_LB}.zoneAwareLbSetting.minClusterSize", "0 must be greater than or equal to 1"),
    ("DestinationRule", _dr(loadBalancer={"zoneAwareLbSetting": {"failoverPriority": ["topology.kubernetes.io/zone"]}},
                            outlierDetection={"consecutive5xxErrors": 1}),
     f"{_LB}.zoneAwareLbSetting.failoverPriority", "must not use topology label 'topology.kubernetes.io/zone'"),
    ("DestinationRule", _dr(loadBalancer={"zoneAwareLbSetting": {"failover": [{"from": "us/a", "to": "eu"}]}},
                            outlierDetection={"consecutive5xxErrors": 1}),
     f"{_LB}.zoneAwareLbSetting.failover[0]", "zone aware lb failover only specifies region"),
    ("DestinationRule", _dr(loadBalancer={"simple": "RANDOM", "backendUtilization": {}}), _LB,
     "only one of simple, consistentHash, backendUtilization may be set"),
    ("DestinationRule", _dr(outlierDetection={"outlierDetectionHttpErrorCodes": [503, 99]}),
     "spec.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes[1]", "99 must be greater than or equal to 100"),
    ("VirtualService", _vs({"redirect": {"uri": "/a", "prefixRewrite": "/b"}}), "spec.http[0].redirect",
     "redirect may only specify one of uri or prefix_rewrite"),
    ("VirtualService", _vs({"match": [{"uri": {"exact": "/a"}}], "redirect": {"prefixRewrite": "/b"}}),
     "spec.http[0].redirect.prefixRewrite", "requires all URI matches to use prefix match type"),
    ("VirtualService", _vs(_route(mirror={"host": "m"}, mirrorPercent=5, mirror_percent=5)),
     "spec.http[0].mirror_percent", "mirror_percent and mirrorPercent are the same field"),
    ("VirtualService", _vs(_route(mirror={"host": "m"}, mirror_percent=101)), "spec.http[0].mirror_percent",
     "mirror_percent must have a max value of 100"),
    ("ServiceEntry", _se(resolution="DYNAMIC_DNS", hosts=["api.example.com"]), "spec.hosts[0]",
     "host must be wildcarded for resolution mode DYNAMIC_DNS"),
    ("ServiceEntry", _se(resolution="DYNAMIC_DNS", hosts=["*.example.com"], addresses=["10.0.0.1"]), "spec.addresses",
     "addresses cannot be set for resolution type DYNAMIC_DNS"),
    ("ServiceEntry", _se(resolution="DYNAMIC_DNS", hosts=["*.example.com"],
                         ports=[{"number": 5432, "name": "pg", "protocol": "TCP"}]), "spec.ports[0].protocol",
     "only HTTP, TLS, GRPC, and HTTP2 protocols are supported for resolution type DYNAMIC_DNS"),
    ("Gateway", {"servers": [_server(port={"name": "http", "protocol": "HTTP"})]}, "spec.servers[0].port.number",
     "required field missing"),
    ("Gateway", {"servers": [_server(port={"number": 443, "name": "s", "protocol": "HTTPS"},
                                     tls={"mode": "SIMPLE", "credentialName": "a", "credentialNames": ["b"]})]},
     "spec.servers[0].tls", "only one of credentialName or credentialNames can be set"),
    ("Gateway", {"servers": [_server(port={"number": 443, "name": "s", "protocol": "HTTPS"},
                                     tls={"mode": "SIMPLE", "serverCertificate": "/c", "privateKey": "/k",
                                          "credentialName": "a"})]},
     "spec.servers[0].tls", "only one of credential_name, credential_names, server_certificate/private_key"),
    ("Gateway", {"servers": [_server(port={"number": 443, "name": "s", "protocol": "HTTPS"},
                                     tls={"mode": "SIMPLE", "tlsCertificates": [{"serverCertificate": "/c"}]})]},
     "spec.servers[0].tls.tlsCertificates[0].privateKey", "SIMPLE TLS requires a private key"),
])
def test_fields_current_istio_added_are_validated(kind: str, spec: dict[str, Any], field: str, text: str) -> None:
    _expect(kind, spec, "error", field, text)


@pytest.mark.parametrize(("kind", "spec"), [
    ("DestinationRule", _dr(retryBudget={"percent": 20, "minRetryConcurrency": 3, "budgetInterval": "10s"})),
    ("DestinationRule", _dr(connectionPool={"http": {"http2KeepAlive": {"interval": "15s", "timeout": "5s"}}})),
    ("DestinationRule", _dr(loadBalancer={"simple": "ROUND_ROBIN", "zoneAwareLbSetting": {
        "enabled": True, "minClusterSize": 3, "failover": [{"from": "us", "to": "eu"}]}},
        outlierDetection={"consecutive5xxErrors": 1, "outlierDetectionHttpErrorCodes": [500, 503]})),
    ("DestinationRule", _dr(loadBalancer={"backendUtilization": {
        "errorUtilizationPenaltyPercent": 50, "metricNamesForComputingUtilization": ["cpu"],
        "weightUpdatePeriod": "1s"}})),
    ("VirtualService", _vs({"match": [{"uri": {"prefix": "/old"}}], "redirect": {"prefixRewrite": "/new"}})),
    ("VirtualService", {"hosts": ["db"], "tcp": [{"match": [{"sourceSubnet": "10.0.0.0/8"}],
                                                  "route": [{"destination": {"host": "db"}}]}]}),
    ("ServiceEntry", _se(resolution="DYNAMIC_DNS", hosts=["*.example.com"], location="MESH_EXTERNAL")),
    ("Gateway", {"servers": [_server(port={"number": 443, "name": "s", "protocol": "HTTPS"},
                                     tls={"mode": "SIMPLE", "credentialName": "c", "ecdhCurves": ["X25519"],
                                          "insecureSkipVerify": True})]}),
])
def test_fields_current_istio_added_are_accepted(kind: str, spec: dict[str, Any]) -> None:
    assert _errors(kind, spec) == []


# --- Sidecar ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "level", "field", "text"), [
    ({}, "error", "spec", "sidecar: empty configuration provided"),
    ({"egress": [{"hosts": ["foo.com"]}]}, "error", "spec.egress[0].hosts[0]", "host must be of form namespace/dnsName"),
    ({"egress": [{"hosts": ["Bad_NS/*"]}]}, "error", "spec.egress[0].hosts[0]", "invalid namespace value"),
    ({"egress": [{"hosts": []}]}, "error", "spec.egress[0].hosts", "must contain at least one host"),
    ({"egress": [{"hosts": ["./*"]}, {"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["./*"]}]}, "error",
     "spec.egress[0]", "the egress listener with empty port should be the last listener"),
    ({"egress": [{"port": {"number": 80}, "hosts": ["./*"]}, {"port": {"number": 80}, "hosts": ["./*"]}]}, "error",
     "spec.egress[1].port.number", "ports on IP bound listeners must be unique"),
    ({"egress": [{"port": {"number": 0}, "bind": "unix:///s.sock", "captureMode": "IPTABLES", "hosts": ["./*"]}]},
     "error", "spec.egress[0].captureMode", "captureMode must be DEFAULT/NONE for unix domain socket listeners"),
    ({"egress": [{"port": {"number": 0}, "hosts": ["./*"]}]}, "error", "spec.egress[0].bind",
     "ports with 0 value must have a unix domain socket bind address"),
    ({"egress": [{"hosts": ["*/*", "ns/a.com"]}]}, "warning", "spec.egress[0].hosts", "`*/*` host select all"),
    ({"egress": [{"hosts": ["ns/*", "ns/a.com"]}]}, "warning", "spec.egress[0].hosts[1]", "duplicated egress host"),
    ({"ingress": [{"defaultEndpoint": "127.0.0.1:80"}]}, "error", "spec.ingress[0].port", "required field missing"),
    ({"ingress": [{"port": {"number": 80, "protocol": "HTTP"}, "defaultEndpoint": "10.0.0.1:8080"}]}, "error",
     "spec.ingress[0].defaultEndpoint", "defaultEndpoint must be of form 127.0.0.1:<port>"),
    ({"ingress": [{"port": {"number": 80, "protocol": "HTTP"}, "defaultEndpoint": "127.0.0.1"}]}, "error",
     "spec.ingress[0].defaultEndpoint", "missing port in address"),
    ({"ingress": [{"port": {"number": 443, "protocol": "HTTPS"}, "tls": {"mode": "ISTIO_MUTUAL"}}]}, "error",
     "spec.ingress[0].tls.mode", "cannot set mode to ISTIO_MUTUAL in sidecar ingress tls"),
    ({"ingress": [{"port": {"number": 3306, "protocol": "TCP"}, "connectionPool": {"http": {"maxRetries": 1}}}]},
     "warning", "spec.ingress[0].connectionPool.http", "only TCP settings will apply"),
    ({"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY", "egressProxy": {"host": "p.example.com"}}}, "error",
     "spec.outboundTrafficPolicy.egressProxy", "must be set only with ALLOW_ANY"),
    ({"outboundTrafficPolicy": {"mode": "ALLOW_ANY", "egressProxy": {"host": "p.example.com"}}}, "error",
     "spec.outboundTrafficPolicy.egressProxy.port", "egress_proxy port must be non-nil"),
    ({"workloadSelector": {}, "egress": [{"hosts": ["./*"]}]}, "warning", "spec.workloadSelector",
     "will be applied to all services in namespace"),
    ({"workloadSelector": {"labels": {"app": "*"}}, "egress": [{"hosts": ["./*"]}]}, "error",
     "spec.workloadSelector.labels", "wildcard is not supported in selector"),
])
def test_sidecar_rules(spec: dict[str, Any], level: str, field: str, text: str) -> None:
    _expect("Sidecar", spec, level, field, text)


def test_sidecar_ipv6_default_endpoint_is_valid() -> None:
    spec = {"ingress": [{"port": {"number": 80, "protocol": "HTTP", "name": "http"}, "defaultEndpoint": "[::1]:8080"}]}
    assert _errors("Sidecar", spec) == []


# --- metadata -----------------------------------------------------------------------------------


def test_metadata_rules() -> None:
    _expect("VirtualService", _vs(), "error", "metadata.name", "must be a lower case RFC 1123 subdomain",
            name="Reviews")
    _expect("VirtualService", _vs(), "error", "metadata.namespace", "invalid namespace", namespace="Prod")
    _expect("VirtualService", _vs(), "error", "metadata.annotations[istio.io/dry-run]", "unsupported annotation",
            annotations={"istio.io/dry-run": "true"})


def test_parse_protocol() -> None:
    assert parse_protocol("http2") == "HTTP2"
    assert parse_protocol("GRPC-WEB") == "GRPC-Web"
    assert parse_protocol("smtp") is None


# --- robustness ---------------------------------------------------------------------------------


_junk = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6) | st.integers(0, 3),
                                                                       children, max_size=3),
    max_leaves=8,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    paths = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            paths.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths.extend(_paths(item, (*prefix, index)))
    return paths


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_mutation_of_a_valid_spec_is_reported_not_crashed(data: st.DataObject) -> None:
    original = data.draw(st.sampled_from(VALID_RESOURCES))
    spec = copy.deepcopy(original.spec)
    path = data.draw(st.sampled_from(_paths(spec)[1:]))
    junk = data.draw(_junk)
    target = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = junk
    resource = Resource(kind=original.kind, api_version=original.api_version, name=original.name,
                        namespace=original.namespace, spec=spec, source=original.source)
    for diagnostic in validate(resource):
        assert diagnostic.level in ("error", "warning", "info")
        assert diagnostic.resource == original.ref
    analyze([resource, *VALID_RESOURCES], known_services=set())


# --- analyze --------------------------------------------------------------------------------------


def _analyze(*resources: Resource, known: set[str] | None = None) -> list[tuple[str, str, str, str]]:
    """Findings, less what Tulle does not translate (TUL0001, tested on its own)."""
    return [(d.level, d.resource, d.field, d.message) for d in analyze(list(resources), known_services=known)
            if d.code != "TUL0001"]


def _vs_to(host: str, subset: str = "", namespace: str = "default", name: str = "vs", **spec: Any) -> Resource:
    destination = {"host": host, **({"subset": subset} if subset else {})}
    return _resource("VirtualService", {"hosts": [f"{name}.example.com"], "http": [{"route": [{"destination":
                                        destination}]}], **spec}, name=name, namespace=namespace)


def _rule(host: str, *subsets: str, namespace: str = "default", name: str = "dr", **spec: Any) -> Resource:
    return _resource("DestinationRule", {"host": host, "subsets": [{"name": s, "labels": {"version": s}}
                                                                   for s in subsets], **spec},
                     name=name, namespace=namespace)


def _entry(*hosts: str, namespace: str = "default", name: str = "se", **spec: Any) -> Resource:
    return _resource("ServiceEntry", {"hosts": list(hosts), "ports": [{"number": 443, "name": "https",
                                      "protocol": "TLS"}], "resolution": "NONE", **spec}, name=name,
                     namespace=namespace)


def test_destination_host_must_be_a_known_service_or_service_entry() -> None:
    findings = _analyze(_vs_to("reviews"), _vs_to("ratings", name="other"),
                        known={"reviews.default.svc.cluster.local"})
    # IST0101 ReferencedResourceNotFound is an Error in istioctl (messages.yaml)
    assert findings == [("error", "VirtualService default/other", "spec.http[0].route[0].destination.host",
                         'Referenced host not found: "ratings"')]
    assert {d.code for d in analyze([_vs_to("ratings")], known_services=set())} == {"IST0101"}


def test_service_entry_hosts_count_as_known_including_wildcards() -> None:
    assert _analyze(_vs_to("api.example.com"), _vs_to("en.wikipedia.org", name="wiki"),
                    _entry("api.example.com"), _entry("*.wikipedia.org", name="wiki"), known=set()) == []


def test_service_entry_not_exported_to_the_namespace_is_not_known() -> None:
    findings = _analyze(_vs_to("api.example.com", namespace="app"), _entry("api.example.com", namespace="infra",
                                                                            exportTo=["."]), known=set())
    assert [f[3] for f in findings] == ['Referenced host not found: "api.example.com"']


def test_host_check_is_skipped_without_a_registry() -> None:
    assert _analyze(_vs_to("reviews")) == []


def test_name_dot_namespace_destinations_resolve_against_the_registry() -> None:
    assert _analyze(_vs_to("reviews.prod"), known={"reviews.prod.svc.cluster.local"}) == []


def test_subset_must_be_defined_by_a_destination_rule() -> None:
    known = {"reviews.default.svc.cluster.local"}
    assert _analyze(_vs_to("reviews", "v1"), _rule("reviews", "v1", "v2"), known=known) == []
    assert _analyze(_vs_to("reviews", "v1"), _rule("reviews.default.svc.cluster.local", "v1"), known=known) == []
    findings = _analyze(_vs_to("reviews", "v3"), _rule("reviews", "v1", "v2"), known=known)
    assert findings == [("error", "VirtualService default/vs", "spec.http[0].route[0].destination.subset",
                         'Referenced host+subset in destinationrule not found: "reviews+v3"')]
    assert [f[2] for f in _analyze(_vs_to("reviews", "v1"), known=known)] == ["spec.http[0].route[0].destination.subset"]


def test_subset_from_a_destination_rule_hidden_by_export_to_is_not_found() -> None:
    vs = _vs_to("reviews.prod.svc.cluster.local", "v1", namespace="app")
    hidden = _rule("reviews", "v1", namespace="prod", exportTo=["."])
    assert [f[2] for f in _analyze(vs, hidden)] == ["spec.http[0].route[0].destination.subset"]
    assert _analyze(vs, _rule("reviews", "v1", namespace="prod")) == []


def test_two_destination_rules_for_one_host_warn() -> None:
    findings = _analyze(_rule("reviews", "v1", name="a"), _rule("reviews.default.svc.cluster.local", "v2", name="b"))
    assert len(findings) == 1
    level, resource, field, message = findings[0]
    assert (level, resource, field) == ("warning", "DestinationRule default/b", "spec.host")
    assert "DestinationRule default/a" in message
    # Different namespaces, or a workload-scoped rule, are the documented ways to layer rules.
    assert _analyze(_rule("reviews.prod.svc.cluster.local", namespace="prod", name="a"),
                    _rule("reviews.prod.svc.cluster.local", namespace="app", name="b")) == []
    assert _analyze(_rule("reviews", name="a"),
                    _rule("reviews", name="b", workloadSelector={"matchLabels": {"app": "x"}})) == []


def test_gateway_references_must_exist() -> None:
    gateway = _resource("Gateway", {"servers": [_server()]}, name="edge", namespace="ingress")
    ok = _vs_to("reviews", gateways=["ingress/edge", "mesh"])
    missing = _vs_to("reviews", name="missing", gateways=["ingress/nope", "edge"])
    findings = _analyze(gateway, ok, missing)
    assert findings == [
        ("error", "VirtualService default/missing", "spec.gateways[0]",
         'Referenced gateway not found: "ingress/nope"'),
        ("error", "VirtualService default/missing", "spec.gateways[1]",
         'Referenced gateway not found: "default/edge"'),
    ]


def test_match_level_gateway_references_are_checked() -> None:
    vs = _resource("VirtualService", {"hosts": ["a.example.com"], "gateways": ["mesh"], "http": [
        {"match": [{"gateways": ["edge"]}], "route": [{"destination": {"host": "a"}}]}]})
    assert [f[2] for f in _analyze(vs)] == ["spec.http[0].match[0].gateways[0]"]


def test_analyze_includes_per_resource_errors_and_duplicates() -> None:
    broken = _resource("DestinationRule", {"host": "reviews", "trafficPolicy": {}})
    findings = _analyze(broken, broken)
    assert ("error", "DestinationRule default/r", "spec.trafficPolicy", "traffic policy must have at least one field") \
        in findings
    assert any(f[0] == "warning" and "defined more than once" in f[3] for f in findings)


def test_conflicting_mesh_virtual_services_are_an_error_reported_once_per_virtual_service() -> None:
    first = _resource("VirtualService", _vs(), name="one")
    second = _resource("VirtualService", _vs(hosts=["reviews", "reviews.default.svc.cluster.local"]), name="two")
    gateway_only = _resource("VirtualService", _vs(gateways=["default/edge"]), name="three")
    # A directory holding two versions of "one" (Istio's samples do): one VirtualService, its last definition.
    again = _resource("VirtualService", _vs(), name="one")
    conflicts = [d for d in analyze([first, second, gateway_only, again]) if d.code == "IST0109"]
    assert [(d.level, d.resource) for d in conflicts] == [
        ("error", "VirtualService default/one"), ("error", "VirtualService default/two")]
    assert all(d.message.startswith("The VirtualServices default/one,default/two associated with mesh gateway "
                                    "define the same host reviews.default.svc.cluster.local ") for d in conflicts)
    assert conflicts[0].source == again.source


def test_analysis_says_what_tulle_proxies_cannot_honour_yet() -> None:
    from tulle.controlplane.translate.options import LACKABLE, TULLE_PROXY_TODAY

    rule = _resource("DestinationRule", {"host": "reviews", "trafficPolicy": {
        "connectionPool": {"tcp": {"tcpKeepalive": {"probes": 3}, "maxConnectionDuration": "1h"},
                           "http": {"h2UpgradePolicy": "UPGRADE"}},
        "loadBalancer": {"simple": "ROUND_ROBIN", "warmupDurationSecs": "10s"}},
        "subsets": [{"name": "v1", "labels": {"v": "1"}, "trafficPolicy": {"portLevelSettings": [
            {"port": {"number": 80}, "connectionPool": {"tcp": {"tcpKeepalive": {}}}}]}}]})
    service = _resource("VirtualService", _vs(_route(retries={"attempts": 2, "retryRemoteLocalities": True})))
    gaps = {(d.field, envoy) for d in analyze([rule, service]) for envoy in LACKABLE
            if d.message.startswith("Tulle proxies do not support") and f"({envoy})" in d.message}
    expected = {
        ("spec.trafficPolicy.connectionPool.tcp.tcpKeepalive", "upstream_connection_options"),
        ("spec.trafficPolicy.connectionPool.tcp.maxConnectionDuration", "max_connection_duration"),
        ("spec.trafficPolicy.connectionPool.http.h2UpgradePolicy", "http2_protocol_options"),
        ("spec.trafficPolicy.loadBalancer.warmupDurationSecs", "slow_start_config"),
        ("spec.subsets[0].trafficPolicy.portLevelSettings[0].connectionPool.tcp.tcpKeepalive",
         "upstream_connection_options"),
        ("spec.http[0].retries.retryRemoteLocalities", "retry_priority"),
    }
    # only what today's Tulle proxy still lacks is reported
    assert gaps == {(field, envoy) for field, envoy in expected if envoy in TULLE_PROXY_TODAY.proxy_lacks}
    assert all(d.level == "warning" for d in analyze([rule, service]))


# --- accepted, not acted on yet: said where it is asked for (TUL0001) ---------------------------------


def _gaps(*resources: Resource) -> list[tuple[str, str]]:
    return [(d.resource, d.field) for d in analyze(list(resources)) if d.code == "TUL0001"]


def test_destination_rule_tls_is_reported_at_every_level_until_tls_lands() -> None:
    tls = {"mode": "ISTIO_MUTUAL"}
    rule = _resource("DestinationRule", {"host": "reviews", "trafficPolicy": {
        "tls": tls, "portLevelSettings": [{"port": {"number": 443}, "tls": {"mode": "SIMPLE", "caCertificates": "/c"}}]},
        "subsets": [{"name": "v1", "labels": {"v": "1"}, "trafficPolicy": {"tls": tls}}]}, name="reviews")
    findings = [d for d in analyze([rule]) if d.code == "TUL0001"]
    assert [(d.level, d.field) for d in findings] == [
        ("warning", "spec.trafficPolicy.tls"), ("warning", "spec.trafficPolicy.portLevelSettings[0].tls"),
        ("warning", "spec.subsets[0].trafficPolicy.tls")]
    assert findings[0].message == ("Tulle does not translate TLS origination (tls) yet: clusters get no transport "
                                   "socket, so traffic to this host is sent in plaintext")
    # Plaintext is what DISABLE asks for: nothing to say.
    assert _gaps(_resource("DestinationRule", _dr(tls={"mode": "DISABLE"}))) == []


def test_istio_samples_with_tls_are_reported() -> None:
    resources, _ = load_files([DATA / "destination-rule-all-mtls.yaml", DATA / "egress-rule-google-apis.yaml"])
    assert ("DestinationRule default/reviews", "spec.trafficPolicy.tls") in _gaps(*resources)
    assert ("DestinationRule default/originate-tls-for-googleapis",
            "spec.trafficPolicy.portLevelSettings[0].tls") in _gaps(*resources)
    # istioctl reports the SIMPLE TLS without caCertificates too (IST0129, a Warning).
    unverified = [d for d in analyze(resources) if d.code == "IST0129"]
    assert [(d.level, d.field, d.message) for d in unverified] == [(
        "warning", "spec.trafficPolicy.portLevelSettings[0].tls",
        "DestinationRule default/originate-tls-for-googleapis in namespace default has TLS mode set to SIMPLE but no "
        "caCertificates are set to validate server identity for host: www.googleapis.com at port number:443")]


def test_gateways_and_what_binds_to_them_are_reported_as_not_served() -> None:
    resources, _ = load_files([DATA / "bookinfo-gateway.yaml"])
    findings = [(d.resource, d.field, d.message) for d in analyze(resources) if d.code == "TUL0001"]
    assert findings == [
        ("Gateway default/bookinfo-gateway", "spec.servers",
         "Tulle does not serve Gateway resources yet: no gateway proxy receives listeners for this Gateway"),
        ("VirtualService default/bookinfo", "spec.gateways",
         "this VirtualService is bound only to gateways (bookinfo-gateway), which Tulle does not serve yet: no proxy "
         "receives its routes"),
    ]
    both = _resource("VirtualService", _vs(gateways=["mesh", "edge"]))
    assert [d.message for d in analyze([both]) if d.code == "TUL0001"] == [
        "Tulle does not serve gateways yet: sidecars get this VirtualService's routes, edge gets nothing"]
    at_match = _resource("VirtualService", _vs(_route(match=[{"gateways": ["edge"]}, {"uri": {"prefix": "/"}}])))
    assert _gaps(at_match) == [("VirtualService default/r", "spec.http[0].match[0].gateways")]
    assert _gaps(_resource("VirtualService", _vs(gateways=["mesh"]))) == []


@pytest.mark.parametrize(("kind", "spec", "field"), [
    ("DestinationRule", _dr(connectionPool={"http": {"http2KeepAlive": {"interval": "15s", "timeout": "5s"}}}),
     "spec.trafficPolicy.connectionPool.http.http2KeepAlive"),
    ("DestinationRule", _dr(retryBudget={"percent": 20}), "spec.trafficPolicy.retryBudget"),
    ("DestinationRule", _dr(loadBalancer={"warmup": {"duration": "10s"}}), "spec.trafficPolicy.loadBalancer.warmup"),
    ("DestinationRule", _dr(tunnel={"targetHost": "proxy.example.com", "targetPort": 8080}),
     "spec.trafficPolicy.tunnel"),
    ("VirtualService", _vs(_route(delegate={"name": "other"}, route=None)), "spec.http[0].delegate"),
    ("VirtualService", {"hosts": ["a.example.com"], "tls": [{"match": [{"sniHosts": ["a.example.com"]}],
                                                             "route": [{"destination": {"host": "a"}}]}]}, "spec.tls"),
    ("ServiceEntry", _se(subjectAltNames=["spiffe://x"]), "spec.subjectAltNames"),
    ("Sidecar", {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}, "spec.outboundTrafficPolicy"),
])
def test_settings_the_translation_leaves_out_are_reported(kind: str, spec: dict[str, Any], field: str) -> None:
    assert ("VirtualService default/r" if kind == "VirtualService" else f"{kind} default/r", field) in _gaps(
        _resource(kind, spec))


def test_the_untranslated_table_names_fields_of_the_schema() -> None:
    from tulle.controlplane.istio.kinds import MESSAGES
    from tulle.controlplane.translate.coverage import NOT_TRANSLATED

    for message, field in NOT_TRANSLATED:
        assert field in MESSAGES[message].fields, f"{message}.{field}"


def test_valid_examples_without_such_settings_have_nothing_to_report() -> None:
    plain = [_resource("DestinationRule", _dr(loadBalancer={"simple": "ROUND_ROBIN"})), _resource("VirtualService", _vs())]
    assert _gaps(*plain) == []
