"""VirtualService HTTP routes -> Envoy routes, virtual hosts and route configurations."""

from __future__ import annotations

from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2, route_pb2

from tulle.config.loader import parse_message
from tulle.controlplane.model import MeshSnapshot, ProxyIdentity, Resource, Service, ServicePort
from tulle.controlplane.translate.options import ISTIO_DEFAULTS, TranslateOptions
from tulle.controlplane.translate.routes import (
    CORS_FILTER,
    FAULT_FILTER,
    cors_filter_config,
    fault_filter_config,
    forward_proxy_route_configuration,
    header_matcher,
    header_operations,
    http_filters_needed,
    inbound_route,
    outbound_route_configuration,
    redirect_action,
    retry_policy,
    route_match,
    virtual_service_routes,
)
from tulle.controlplane.translate.scope import ProxyScope, build_scope

SUFFIX = "svc.cluster.local"
NO_DEFAULT_RETRIES = TranslateOptions(default_http_retries=False)
NO_GRPC_TIMEOUT = TranslateOptions(proxy_lacks=frozenset({"max_grpc_timeout"}))
API = f"api.default.{SUFFIX}"


def scope_with(http: list[dict[str, Any]], *, labels: dict[str, str] | None = None,
               options: TranslateOptions = ISTIO_DEFAULTS, extra: list[Resource] = ()) -> tuple[ProxyScope, Resource]:
    services = [Service(API, "default", [ServicePort("http", 8080, "HTTP"), ServicePort("http-alt", 9090, "HTTP")]),
                Service(f"web.default.{SUFFIX}", "default", [ServicePort("http", 80, "HTTP")]),
                Service(f"db.default.{SUFFIX}", "default", [ServicePort("tcp", 5432, "TCP")])]
    vs = Resource("VirtualService", "networking.istio.io/v1", "api", "default", spec={"hosts": ["api"], "http": http})
    proxy = ProxyIdentity("c", "default", tuple(sorted((labels or {}).items())), workload_name="c")
    return build_scope(MeshSnapshot([vs, *extra], services, []), proxy, options), vs


def routes_for(http: list[dict[str, Any]], port: int = 8080, **kwargs: Any) -> list[dict[str, Any]]:
    scope, vs = scope_with(http, **kwargs)
    return virtual_service_routes(scope, vs, port)


def to_api(subset: str = "", **extra: Any) -> dict[str, Any]:
    destination: dict[str, Any] = {"host": "api"}
    if subset:
        destination["subset"] = subset
    return {"destination": destination, **extra}


def test_matches() -> None:
    assert route_match(None) == {"prefix": "/"}
    match = route_match({"uri": {"exact": "/a"}, "ignoreUriCase": True, "method": {"regex": "GET|HEAD"},
                         "scheme": {"exact": "https"}, "headers": {"b": {"prefix": "x"}, "a": {"regex": "*"}},
                         "queryParams": {"z": {}, "q": {"exact": "1"}}})
    assert match["path"] == "/a" and match["case_sensitive"] is False
    assert [header["name"] for header in match["headers"]] == ["a", "b", ":method", ":scheme"]
    assert match["headers"][0] == {"name": "a", "present_match": True}
    assert match["headers"][2]["string_match"] == {"safe_regex": {"regex": "GET|HEAD"}}
    assert match["query_parameters"] == [{"name": "q", "string_match": {"exact": "1"}},
                                         {"name": "z", "present_match": True}]
    assert route_match({"uri": {"regex": "/v[0-9]"}})["safe_regex"] == {"regex": "/v[0-9]"}
    assert header_matcher("x", {"exact": "1"}, invert=True) == {
        "name": "x", "string_match": {"exact": "1"}, "invert_match": True, "treat_missing_header_as_empty": True}
    assert header_matcher("x", {}, invert=True) == {"name": "x", "present_match": True, "invert_match": True}


def test_header_operations_skip_pseudo_headers_and_take_the_authority() -> None:
    operations = header_operations({
        "request": {"set": {"b": "2", "a": "1", "host": "h1"}, "add": {":authority": "h2", "c": "3"},
                    "remove": ["x", ":path", "Host"]},
        "response": {"add": {"r": "v"}, "remove": ["server"]},
    })
    assert [(o["header"]["key"], o["append_action"]) for o in operations.request_add] == [
        ("a", "OVERWRITE_IF_EXISTS_OR_ADD"), ("b", "OVERWRITE_IF_EXISTS_OR_ADD"), ("c", "APPEND_IF_EXISTS_OR_ADD")]
    assert operations.authority == "h1"  # set wins over add
    assert operations.request_remove == ["x"]
    assert operations.response_remove == ["server"] and len(operations.response_add) == 1


def test_routes_in_order_one_per_match_stopping_after_a_catch_all() -> None:
    routes = routes_for([
        {"name": "r1", "match": [{"name": "m1", "uri": {"prefix": "/a"}}, {"uri": {"prefix": "/b"}}],
         "route": [to_api("v1")]},
        {"name": "all", "match": [{"uri": {"prefix": "/"}}, {"uri": {"prefix": "/never"}}], "route": [to_api()]},
        {"name": "unreachable", "route": [to_api()]},
    ])
    assert [(route.get("name"), route["match"].get("prefix")) for route in routes] == [
        ("r1.m1", "/a"), ("r1", "/b"), ("all", "/")]
    assert routes[0]["route"]["cluster"] == f"outbound|8080|v1|{API}"


def test_matches_that_do_not_apply_to_this_proxy_or_port_are_dropped() -> None:
    http = [{"name": "n", "match": [
        {"sourceLabels": {"env": "prod"}, "uri": {"prefix": "/prod"}},
        {"sourceNamespace": "other", "uri": {"prefix": "/other-ns"}},
        {"port": 9090, "uri": {"prefix": "/alt"}},
        {"gateways": ["mesh"], "uri": {"prefix": "/mesh"}},
        {"gateways": ["ingress"], "uri": {"prefix": "/gateway"}},
    ], "route": [to_api()]}]
    assert [r["match"]["prefix"] for r in routes_for(http, labels={"env": "prod"})] == ["/prod", "/mesh"]
    assert [r["match"]["prefix"] for r in routes_for(http, port=9090)] == ["/alt", "/mesh"]


def test_destination_ports_subsets_and_weights() -> None:
    routes = routes_for([{"route": [to_api("v1", weight=70), to_api("v2", weight=30, headers={
        "request": {"set": {"x": "1", ":authority": "api.internal"}}}), to_api("v3", weight=0)]}], port=9090)
    clusters = routes[0]["route"]["weighted_clusters"]["clusters"]
    assert [(c["name"], c["weight"]) for c in clusters] == [(f"outbound|9090|v1|{API}", 70),
                                                            (f"outbound|9090|v2|{API}", 30)]
    assert clusters[1]["host_rewrite_literal"] == "api.internal"
    assert clusters[1]["request_headers_to_add"][0]["header"] == {"key": "x", "value": "1"}
    web = routes_for([{"route": [{"destination": {"host": "web"}}]}])
    assert web[0]["route"]["cluster"] == f"outbound|80||web.default.{SUFFIX}"  # its only port
    explicit = routes_for([{"route": [{"destination": {"host": "api", "port": {"number": 9090}}}]}])
    assert explicit[0]["route"]["cluster"] == f"outbound|9090||{API}"


def test_rewrites_timeouts_and_authority_precedence() -> None:
    (route,) = routes_for([{"rewrite": {"uri": "/v2", "authority": "rewritten"}, "timeout": "3s",
                            "headers": {"request": {"set": {"host": "from-headers"}}},
                            "route": [to_api(headers={"request": {"set": {":authority": "from-destination"}}})]}])
    assert route["route"]["prefix_rewrite"] == "/v2"
    assert route["route"]["host_rewrite_literal"] == "rewritten"
    assert route["route"]["timeout"] == "3s"
    (route,) = routes_for([{"headers": {"request": {"set": {"host": "from-headers"}}}, "route": [to_api(
        headers={"request": {"set": {":authority": "from-destination"}}})]}])
    assert route["route"]["host_rewrite_literal"] == "from-headers"
    (route,) = routes_for([{"rewrite": {"uriRegexRewrite": {"match": "^/a/(.*)", "rewrite": "/\\1"}},
                            "route": [to_api()]}])
    assert route["route"]["regex_rewrite"] == {"pattern": {"regex": "^/a/(.*)"}, "substitution": "/\\1"}
    assert route["route"]["timeout"] == "0s"


def test_retry_policy_conversion() -> None:
    default = retry_policy(None, consistent_hash=False)
    # Istio's EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY: no 503 in the default policy
    assert default["num_retries"] == 2 and "retriable_status_codes" not in default
    assert default["retry_on"] == "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
    assert default["host_selection_retry_max_attempts"] == 5
    assert default["retry_host_predicate"][0]["name"] == "envoy.retry_host_predicates.previous_hosts"
    assert "retry_host_predicate" not in retry_policy(None, consistent_hash=True)
    assert retry_policy({"attempts": 0}, consistent_hash=False) is None
    custom = retry_policy({"attempts": 5, "retryOn": "gateway-error, 502,connect-failure,999", "perTryTimeout": "1s",
                           "retryIgnorePreviousHosts": False, "backoff": "25ms"}, consistent_hash=False)
    assert custom["retry_on"] == "gateway-error,connect-failure,999,retriable-status-codes"
    assert custom["retriable_status_codes"] == [502]
    assert (custom["num_retries"], custom["per_try_timeout"]) == (5, "1s")
    assert "retry_host_predicate" not in custom
    assert custom["retry_back_off"] == {"base_interval": "0.025s"}
    plain = retry_policy({"attempts": 1, "retryOn": "reset"}, consistent_hash=False)
    assert plain["retry_on"] == "reset" and "retriable_status_codes" not in plain
    # parts that are known HTTP status codes (Go's http.StatusText) are codes; 599 is not one
    codes = retry_policy({"attempts": 2, "retryOn": "503,599,425"}, consistent_hash=False)
    assert codes["retry_on"] == "599,retriable-status-codes" and codes["retriable_status_codes"] == [503, 425]
    # attempts without retryOn keep the default conditions; perTryTimeout alone too
    attempts_only = retry_policy({"attempts": 4, "perTryTimeout": "2s"}, consistent_hash=True)
    assert attempts_only["retry_on"] == default["retry_on"] and attempts_only["per_try_timeout"] == "2s"
    assert "retry_host_predicate" not in attempts_only
    remote = retry_policy({"attempts": 1, "retryRemoteLocalities": True}, consistent_hash=False)
    assert remote["retry_priority"]["typed_config"]["update_frequency"] == 2
    lacking = retry_policy({"attempts": 1, "retryRemoteLocalities": True}, False, frozenset({"retry_priority"}))
    assert "retry_priority" not in lacking


def test_default_retries_follow_the_options() -> None:
    http = [{"route": [to_api()]}]
    assert "retry_policy" in routes_for(http)[0]["route"]
    assert "retry_policy" not in routes_for(http, options=NO_DEFAULT_RETRIES)[0]["route"]
    asked = routes_for([{"retries": {"attempts": 3}, "route": [to_api()]}], options=NO_DEFAULT_RETRIES)
    assert asked[0]["route"]["retry_policy"]["num_retries"] == 3


def test_fault_injection() -> None:
    assert fault_filter_config(None) is None
    assert fault_filter_config({"delay": {"exponentialDelay": "1s"}}) is None
    fault = fault_filter_config({"delay": {"fixedDelay": "5s", "percent": 10},
                                 "abort": {"grpcStatus": "NOT_FOUND", "percentage": {"value": 1}}})
    assert fault["delay"] == {"fixed_delay": "5s", "percentage": {"numerator": 10, "denominator": "HUNDRED"}}
    assert fault["abort"] == {"grpc_status": 5, "percentage": {"numerator": 10000, "denominator": "MILLION"}}
    (route,) = routes_for([{"fault": {"abort": {"httpStatus": 500}}, "route": [to_api()]}])
    assert route["typed_per_filter_config"][FAULT_FILTER]["abort"] == {"http_status": 500}


def test_cors() -> None:
    cors = cors_filter_config({"allowOrigin": ["https://a"], "allowMethods": ["GET"], "maxAge": "1m",
                               "unmatchedPreflights": "IGNORE"})
    assert cors["allow_origin_string_match"] == [{"exact": "https://a"}]
    assert (cors["allow_methods"], cors["max_age"], cors["forward_not_matching_preflights"]) == ("GET", "60", False)
    assert "allow_credentials" not in cors


def test_mirrors() -> None:
    (route,) = routes_for([{"mirror": {"host": "web"}, "mirrors": [
        {"destination": {"host": "api", "subset": "v9"}, "percentage": {"value": 0}},
        {"destination": {"host": "api"}, "percentage": {"value": 1.5}}], "route": [to_api()]}])
    assert route["route"]["request_mirror_policies"] == [
        {"cluster": f"outbound|80||web.default.{SUFFIX}", "trace_sampled": False,
         "runtime_fraction": {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}},
        {"cluster": f"outbound|8080||{API}", "trace_sampled": False,
         "runtime_fraction": {"default_value": {"numerator": 15000, "denominator": "MILLION"}}}]
    (route,) = routes_for([{"mirror": {"host": "web"}, "mirrorPercentage": {"value": 0}, "route": [to_api()]}])
    assert "request_mirror_policies" not in route["route"]


@pytest.mark.parametrize(("redirect", "expected"), [
    ({"uri": "/new"}, {"path_redirect": "/new"}),
    ({"authority": "h", "redirectCode": 308}, {"host_redirect": "h", "response_code": "PERMANENT_REDIRECT"}),
    ({"port": 80}, {}),
    ({"port": 443, "scheme": "https"}, {"scheme_redirect": "https"}),
    ({"derivePort": "FROM_REQUEST_PORT"}, {"port_redirect": 8080}),
    ({"redirectCode": 399}, None),
])
def test_redirects(redirect: dict[str, Any], expected: dict[str, Any] | None) -> None:
    assert redirect_action(redirect, 8080) == expected


def test_route_configuration_default_routes_and_block_all() -> None:
    scope, _ = scope_with([{"directResponse": {"status": 204}}])
    config = outbound_route_configuration(scope, 80)
    parse_message(config, route_pb2.RouteConfiguration)
    assert [vh["name"] for vh in config["virtual_hosts"]] == [f"web.default.{SUFFIX}:80", "block_all"]
    (route,) = config["virtual_hosts"][0]["routes"]
    assert route["name"] == "default" and route["route"]["cluster"] == f"outbound|80||web.default.{SUFFIX}"
    assert config["virtual_hosts"][-1]["routes"][0]["direct_response"] == {"status": 502}
    api_routes = outbound_route_configuration(scope, 8080)["virtual_hosts"][0]["routes"]
    assert api_routes[0]["direct_response"] == {"status": 204}
    assert outbound_route_configuration(scope, 5432)["virtual_hosts"][0]["name"] == "block_all"  # TCP: no vhost


def test_a_virtual_service_without_routes_here_falls_back_to_the_default_route() -> None:
    scope, _ = scope_with([{"match": [{"sourceLabels": {"env": "dev"}}], "route": [to_api("v1")]}])
    (route,) = outbound_route_configuration(scope, 8080)["virtual_hosts"][0]["routes"]
    assert route["name"] == "default"


def test_default_route_hash_policy_from_the_destination_rule() -> None:
    rule = Resource("DestinationRule", "networking.istio.io/v1", "web", spec={"host": "web", "trafficPolicy": {
        "loadBalancer": {"consistentHash": {"httpCookie": {"name": "c", "ttl": "10s"}}}}})
    scope, _ = scope_with([], extra=[rule])
    (route,) = outbound_route_configuration(scope, 80)["virtual_hosts"][0]["routes"]
    assert route["route"]["hash_policy"] == [{"cookie": {"name": "c", "ttl": "10s"}}]
    assert "retry_host_predicate" in route["route"]["retry_policy"]  # Istio keeps it on default routes


def test_forward_proxy_routes_every_port_with_port_qualified_domains() -> None:
    scope, _ = scope_with([{"route": [to_api()]}])
    config = forward_proxy_route_configuration(scope, [80, 5432, 8080, 9090])
    parse_message(config, route_pb2.RouteConfiguration)
    by_name = {vh["name"]: vh for vh in config["virtual_hosts"]}
    assert list(by_name) == [f"{API}:8080", f"{API}:9090", f"web.default.{SUFFIX}:80", "block_all"]
    assert all(domain.endswith(":8080") for domain in by_name[f"{API}:8080"]["domains"])
    assert "web" in by_name[f"web.default.{SUFFIX}:80"]["domains"]  # port 80 keeps bare names
    assert by_name[f"{API}:9090"]["routes"][0]["route"]["cluster"] == f"outbound|9090||{API}"
    domains = [d for vh in config["virtual_hosts"] for d in vh["domains"]]
    assert len(domains) == len(set(domains))


def test_http_filters_needed() -> None:
    scope, _ = scope_with([{"match": [{"uri": {"prefix": "/f"}}], "fault": {"abort": {"httpStatus": 503}},
                            "route": [to_api()]},
                           {"corsPolicy": {"allowMethods": ["GET"]}, "route": [to_api()]}])
    assert http_filters_needed([outbound_route_configuration(scope, 8080)]) == {FAULT_FILTER, CORS_FILTER}
    assert http_filters_needed([outbound_route_configuration(scope, 80)]) == set()


def test_timeouts_no_timeout_by_default_and_the_grpc_timeout_header() -> None:
    (timed,) = routes_for([{"timeout": "2.5s", "route": [to_api()]}])
    assert (timed["route"]["timeout"], timed["route"]["max_grpc_timeout"]) == ("2.5s", "2.5s")
    (untimed,) = routes_for([{"route": [to_api()]}])
    # Istio's default: no route timeout (Envoy's own 15 s is turned off), grpc-timeout uncapped
    assert (untimed["route"]["timeout"], untimed["route"]["max_grpc_timeout"]) == ("0s", "0s")
    (tulle,) = routes_for([{"timeout": "1s", "route": [to_api()]}], options=NO_GRPC_TIMEOUT)
    assert tulle["route"]["timeout"] == "1s" and "max_grpc_timeout" not in tulle["route"]
    scope, _ = scope_with([])
    (default,) = outbound_route_configuration(scope, 80)["virtual_hosts"][0]["routes"]
    assert (default["route"]["timeout"], default["route"]["max_grpc_timeout"]) == ("0s", "0s")


def test_inbound_routes_retry_resets_before_the_app_and_never_time_out() -> None:
    http = inbound_route(ISTIO_DEFAULTS, "inbound|8080||", ServicePort("http", 8080, "HTTP"))
    parse_message(http, route_components_pb2.Route)
    assert http["route"] == {
        "cluster": "inbound|8080||", "timeout": "0s",
        "max_stream_duration": {"max_stream_duration": "0s", "grpc_timeout_header_max": "0s"},
        "retry_policy": {"retry_on": "reset-before-request", "num_retries": 2}}
    grpc = inbound_route(ISTIO_DEFAULTS, "inbound|9090||", ServicePort("grpc", 9090, "GRPC"))
    assert "retry_policy" not in grpc["route"]  # Istio: not for gRPC
    quiet = TranslateOptions(default_http_retries=False)
    assert "retry_policy" not in inbound_route(quiet, "inbound|8080||", ServicePort("http", 8080, "HTTP"))["route"]
