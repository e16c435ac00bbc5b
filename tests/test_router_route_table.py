"""RouteTable: virtual host selection, route matching, clusters, rewrites, redirects, headers."""

from __future__ import annotations

from collections import Counter

import pytest
from envoy.config.route.v3 import route_pb2

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.http.headers import HeaderMap
from tulle.router.route_table import RouteTable, port_start, strip_host_port
from tulle.stream_info import StreamInfo

FIELD = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config"


def table(config: dict, **kwargs) -> RouteTable:
    return RouteTable.from_proto(parse_message(config, route_pb2.RouteConfiguration), FIELD, **kwargs)


def one_vhost(routes: list[dict], **vhost) -> dict:
    return {"name": "rc", "virtual_hosts": [{"name": "vh", "domains": ["*"], "routes": routes, **vhost}]}


def request(path: str = "/", authority: str = "example.com", method: str = "GET", **extra: str) -> HeaderMap:
    headers = [(":method", method), (":path", path), (":authority", authority), (":scheme", "http")]
    return HeaderMap(headers + [(name.replace("_", "-"), value) for name, value in extra.items()])


def route_to(cluster: str, **match) -> dict:
    return {"name": cluster, "match": match or {"prefix": "/"}, "route": {"cluster": cluster}}


# --- virtual host selection --------------------------------------------------------

DOMAINS = {
    "name": "rc",
    "virtual_hosts": [
        {"name": name, "domains": domains, "routes": [route_to(name)]}
        for name, domains in [
            ("exact", ["www.example.com", "api.example.com:8080"]),
            ("suffix_dot", ["*.example.com"]),
            ("suffix_dash", ["*-bar.example.com"]),
            ("prefix", ["www.example.*"]),
            ("prefix_long", ["www.example.co*"]),
            ("default", ["*"]),
        ]
    ],
}


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("www.example.com", "exact"),
        ("WWW.Example.COM", "exact"),
        ("foo.example.com", "suffix_dot"),
        ("foo-bar.example.com", "suffix_dash"),  # the longer wildcard wins
        (".example.com", "default"),  # a wildcard never matches an empty remainder
        ("www.example.org", "prefix"),
        ("www.example.com.au", "prefix_long"),  # the longer prefix wins
        ("unknown.test", "default"),
        ("api.example.com:8080", "exact"),
        ("api.example.com", "suffix_dot"),
        ("www.example.com:8080", "prefix_long"),
    ],
)
def test_virtual_host_selection_order(authority, expected):
    route = table(DOMAINS).find(request(authority=authority))
    assert route is not None
    assert route.virtual_host_name == expected


def test_exact_beats_suffix_beats_prefix_beats_default():
    config = {
        "name": "rc",
        "virtual_hosts": [
            {"name": "default", "domains": ["*"], "routes": [route_to("d")]},
            {"name": "prefix", "domains": ["a.b.*"], "routes": [route_to("p")]},
            {"name": "suffix", "domains": ["*.b.c"], "routes": [route_to("s")]},
            {"name": "exact", "domains": ["a.b.c"], "routes": [route_to("e")]},
        ],
    }
    compiled = table(config)
    assert compiled.find(request(authority="a.b.c")).virtual_host_name == "exact"
    assert compiled.find(request(authority="x.b.c")).virtual_host_name == "suffix"
    assert compiled.find(request(authority="a.b.x")).virtual_host_name == "prefix"
    assert compiled.find(request(authority="zzz")).virtual_host_name == "default"


def test_no_matching_virtual_host():
    config = {"name": "rc", "virtual_hosts": [{"name": "only", "domains": ["a.test"], "routes": [route_to("c")]}]}
    assert table(config).find(request(authority="b.test")) is None
    assert table(config).find(HeaderMap([(":path", "/")])) is None


def test_only_default_virtual_host_needs_no_authority():
    assert table(one_vhost([route_to("c")])).find(HeaderMap([(":method", "GET"), (":path", "/")])).name == "c"


PORTS = {
    "name": "rc",
    "virtual_hosts": [
        {"name": "plain", "domains": ["example.com"], "routes": [route_to("plain")]},
        {"name": "ported", "domains": ["example.com:9000"], "routes": [route_to("ported")]},
    ],
}


def test_port_in_host_must_match_domain_without_stripping():
    compiled = table(PORTS)
    assert compiled.find(request(authority="example.com:9000")).virtual_host_name == "ported"
    assert compiled.find(request(authority="example.com:8080")) is None


def test_strip_any_host_port():
    compiled = table(PORTS, strip_port="any")
    assert compiled.find(request(authority="example.com:8080")).virtual_host_name == "plain"
    assert compiled.find(request(authority="example.com:9000")).virtual_host_name == "plain"


def test_strip_matching_host_port_only_strips_the_listener_port():
    compiled = table(PORTS, strip_port="matching", listener_port=8080)
    assert compiled.find(request(authority="example.com:8080")).virtual_host_name == "plain"
    assert compiled.find(request(authority="example.com:9000")).virtual_host_name == "ported"


def test_normalize_host_rewrites_authority_like_the_hcm():
    compiled = table(PORTS, strip_port="matching", listener_port=8080)
    headers = request(authority="example.com:8080")
    compiled.normalize_host(headers)
    assert headers.authority == "example.com"
    other = request(authority="example.com:9000")
    compiled.normalize_host(other)
    assert other.authority == "example.com:9000"


def test_ignore_port_in_host_matching():
    compiled = table({**PORTS, "virtual_hosts": PORTS["virtual_hosts"][:1], "ignore_port_in_host_matching": True})
    assert compiled.find(request(authority="example.com:1234")).virtual_host_name == "plain"


@pytest.mark.parametrize(
    ("host", "mode", "port", "expected"),
    [
        ("a.test:80", "any", None, "a.test"),
        ("a.test", "any", None, "a.test"),
        ("[::1]:80", "any", None, "[::1]"),
        ("[::1]", "any", None, "[::1]"),
        ("a.test:x", "any", None, "a.test:x"),
        ("a.test:80", "matching", 80, "a.test"),
        ("a.test:81", "matching", 80, "a.test:81"),
        ("a.test:80", "none", None, "a.test:80"),
    ],
)
def test_strip_host_port(host, mode, port, expected):
    assert strip_host_port(host, mode, port) == expected


def test_port_start_ignores_ipv6_colons():
    assert port_start("[::1]") == -1
    assert port_start("[::1]:5") == 5
    assert port_start("h:5") == 1


def test_domain_errors_name_the_field():
    duplicate = {"name": "rc", "virtual_hosts": [
        {"name": "a", "domains": ["x.test"], "routes": []},
        {"name": "b", "domains": ["X.test"], "routes": []},
    ]}
    with pytest.raises(ConfigError, match="Duplicate entry of domain x.test") as info:
        table(duplicate)
    assert info.value.field == f"{FIELD}.virtual_hosts[1].domains[0]"
    two_defaults = {"name": "rc", "virtual_hosts": [
        {"name": "a", "domains": ["*"], "routes": []},
        {"name": "b", "domains": ["*"], "routes": []},
    ]}
    with pytest.raises(ConfigError, match="single wildcard"):
        table(two_defaults)
    with pytest.raises(ConfigError) as info:
        table({"name": "rc", "virtual_hosts": [{"name": "a", "domains": [], "routes": []}]})
    assert info.value.field == f"{FIELD}.virtual_hosts[0].domains"


# --- route matching -----------------------------------------------------------------


def first_match(routes: list[dict], headers: HeaderMap) -> str | None:
    route = table(one_vhost(routes)).find(headers)
    return None if route is None else route.name


def test_first_match_wins_in_order():
    routes = [route_to("specific", prefix="/api/v1"), route_to("api", prefix="/api"), route_to("all", prefix="/")]
    assert first_match(routes, request("/api/v1/x")) == "specific"
    assert first_match(routes, request("/api/v2")) == "api"
    assert first_match(routes, request("/other")) == "all"
    assert first_match(list(reversed(routes)), request("/api/v1/x")) == "all"


def test_prefix_ignores_query_string():
    assert first_match([route_to("p", prefix="/a?x")], request("/a?x=1")) is None
    assert first_match([route_to("p", path="/a")], request("/a?x=1")) == "p"
    assert first_match([route_to("p", path="/a")], request("/a#frag")) == "p"


def test_path_is_exact():
    routes = [route_to("p", path="/exact")]
    assert first_match(routes, request("/exact")) == "p"
    assert first_match(routes, request("/exact/")) is None
    assert first_match(routes, request("/EXACT")) is None


def test_case_insensitive_prefix_and_path():
    assert first_match([route_to("p", prefix="/Api", case_sensitive=False)], request("/aPI/x")) == "p"
    assert first_match([route_to("p", path="/Api", case_sensitive=False)], request("/API")) == "p"
    assert first_match([route_to("p", prefix="/Api")], request("/api")) is None


def test_safe_regex_is_a_full_match_on_the_path_without_query():
    routes = [route_to("r", safe_regex={"regex": "/items/[0-9]+"})]
    assert first_match(routes, request("/items/42?x=1")) == "r"
    assert first_match(routes, request("/items/42/more")) is None
    assert first_match(routes, request("/v/items/42")) is None


def test_path_separated_prefix():
    routes = [route_to("s", path_separated_prefix="/api")]
    assert first_match(routes, request("/api")) == "s"
    assert first_match(routes, request("/api/x")) == "s"
    assert first_match(routes, request("/api?q")) == "s"
    assert first_match(routes, request("/apix")) is None
    insensitive = [route_to("s", path_separated_prefix="/api", case_sensitive=False)]
    assert first_match(insensitive, request("/API/x")) == "s"


@pytest.mark.parametrize("prefix", ["/api/", "/a?b", ""])
def test_path_separated_prefix_validation(prefix):
    with pytest.raises(ConfigError) as info:
        table(one_vhost([route_to("s", path_separated_prefix=prefix)]))
    assert info.value.field == f"{FIELD}.virtual_hosts[0].routes[0].match.path_separated_prefix"


def test_header_matchers_all_must_match_including_pseudo_headers():
    routes = [
        route_to("get_json", prefix="/", headers=[
            {"name": ":method", "exact_match": "GET"},
            {"name": "content-type", "string_match": {"prefix": "application/json"}},
        ]),
        route_to("fallback", prefix="/"),
    ]
    assert first_match(routes, request(content_type="application/json; x")) == "get_json"
    assert first_match(routes, request(method="POST", content_type="application/json")) == "fallback"
    assert first_match(routes, request()) == "fallback"


def test_grpc_route_match_takes_only_grpc_requests():
    routes = [route_to("grpc", prefix="/", grpc={}), route_to("rest", prefix="/")]
    assert first_match(routes, request(content_type="application/grpc")) == "grpc"
    assert first_match(routes, request(content_type="application/grpc+proto")) == "grpc"
    assert first_match(routes, request(content_type="application/grpc-web")) == "rest"
    assert first_match(routes, request()) == "rest"


def test_inverted_header_matcher_in_a_route():
    routes = [route_to("not_beta", prefix="/", headers=[{"name": "x-beta", "present_match": True,
                                                         "invert_match": True}])]
    assert first_match(routes, request()) == "not_beta"
    assert first_match(routes, request(x_beta="1")) is None


def test_query_parameter_matchers_in_a_route():
    routes = [
        route_to("debug", prefix="/", query_parameters=[{"name": "debug", "present_match": True},
                                                        {"name": "v", "string_match": {"exact": "2"}}]),
        route_to("plain", prefix="/"),
    ]
    assert first_match(routes, request("/x?debug&v=2")) == "debug"
    assert first_match(routes, request("/x?debug&v=3")) == "plain"
    assert first_match(routes, request("/x")) == "plain"


def test_route_without_path_header_never_matches():
    assert table(one_vhost([route_to("c")])).find(HeaderMap([(":method", "GET"), (":authority", "a")])) is None


# --- clusters ---------------------------------------------------------------------


def test_static_cluster_and_defaults():
    route = table(one_vhost([route_to("svc")])).find(request())
    assert route.kind == "cluster"
    assert not route.is_redirect
    assert route.cluster_name(request(), 0) == "svc"
    assert route.timeout == 15.0
    assert route.cluster_not_found_response_code == 503
    assert route.auto_host_rewrite is False
    assert route.direct_response is None


def test_route_action_options():
    compiled = table(one_vhost([{"match": {"prefix": "/"}, "route": {
        "cluster": "svc", "timeout": "2.5s", "cluster_not_found_response_code": "NOT_FOUND",
        "auto_host_rewrite": True}}]))
    route = compiled.find(request())
    assert route.timeout == 2.5
    assert route.cluster_not_found_response_code == 404
    assert route.auto_host_rewrite is True


def test_zero_timeout_disables_it():
    compiled = table(one_vhost([{"match": {"prefix": "/"}, "route": {"cluster": "svc", "timeout": "0s"}}]))
    assert compiled.find(request()).timeout is None


def grpc_timed_route(**action: str):  # noqa: ANN201 - Route
    return table(one_vhost([{"match": {"prefix": "/"}, "route": {"cluster": "svc", **action}}])).find(request())


def test_max_grpc_timeout_makes_a_grpc_requests_own_deadline_its_route_timeout():
    grpc = {"content_type": "application/grpc"}
    route = grpc_timed_route(timeout="9s", max_grpc_timeout="2s")
    assert route.request_timeout(request(grpc_timeout="500m", **grpc)) == 0.5
    assert route.request_timeout(request(grpc_timeout="10S", **grpc)) == 2.0  # capped
    assert route.request_timeout(request(**grpc)) == 2.0  # no header: the cap
    assert route.request_timeout(request(grpc_timeout="500m")) == 9.0  # not gRPC: the route timeout
    uncapped = grpc_timed_route(timeout="9s", max_grpc_timeout="0s")
    assert uncapped.request_timeout(request(grpc_timeout="30S", **grpc)) == 30.0
    assert uncapped.request_timeout(request(**grpc)) is None  # 0 is infinity, as in Envoy
    offset = grpc_timed_route(max_grpc_timeout="0s", grpc_timeout_offset="0.1s")
    assert offset.request_timeout(request(grpc_timeout="500m", **grpc)) == 0.4
    assert offset.request_timeout(request(grpc_timeout="50m", **grpc)) == 0.05  # never to 0 or below
    plain = grpc_timed_route(timeout="3s")
    assert plain.request_timeout(request(grpc_timeout="1S", **grpc)) == 3.0  # without max_grpc_timeout: ignored


def test_routes_without_an_action_answer_the_action_questions():
    compiled = table(one_vhost([{"match": {"prefix": "/"}, "direct_response": {"status": 200}}]))
    route = compiled.find(request())
    assert route.upgrade_allowed("websocket", False) is False and route.upgrade_allowed("websocket", True) is True
    assert route.max_grpc_timeout is None and route.request_timeout(request()) is None


def test_cluster_header():
    compiled = table(one_vhost([{"match": {"prefix": "/"}, "route": {"cluster_header": "X-Cluster"}}]))
    route = compiled.find(request())
    assert route.cluster_name(request(x_cluster="blue"), 0) == "blue"
    assert route.cluster_name(request(), 0) is None
    assert route.cluster_name(request(x_cluster=""), 0) is None
    assert compiled.referenced_clusters() == set()


WEIGHTED = one_vhost([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
    {"name": "a", "weight": 1},
    {"name": "zero", "weight": 0},
    {"name": "b", "weight": 3},
]}}}])


def test_weighted_clusters_walk_intervals_in_order():
    route = table(WEIGHTED).find(request())
    expected = ["a", "b", "b", "b"]  # [0,1) -> a, [1,4) -> b, zero weight never chosen
    for random_value in range(12):
        assert route.cluster_name(request(), random_value) == expected[random_value % 4]


def test_weighted_distribution_is_proportional():
    route = table(WEIGHTED).find(request())
    counts = Counter(route.cluster_name(request(), value) for value in range(4000))
    assert counts == {"a": 1000, "b": 3000}


def test_weighted_random_value_header():
    config = one_vhost([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {
        "header_name": "x-random", "clusters": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}}}])
    route = table(config).find(request())
    assert route.cluster_name(request(x_random="1"), 0) == "b"
    assert route.cluster_name(request(x_random="nope"), 0) == "a"  # falls back to the stream's value
    repeated = HeaderMap([(":path", "/"), ("x-random", "1"), ("x-random", "1")])
    assert route.cluster_name(repeated, 0) == "a"


def test_weighted_cluster_header_entry():
    config = one_vhost([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"cluster_header": "x-target", "weight": 1}]}}}])
    route = table(config).find(request())
    assert route.cluster_name(request(x_target="green"), 7) == "green"
    assert route.cluster_name(request(), 7) is None


def test_weighted_cluster_validation():
    zero = one_vhost([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "a", "weight": 0}]}}}])
    with pytest.raises(ConfigError, match="greater than 0"):
        table(zero)
    both = one_vhost([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "a", "cluster_header": "x", "weight": 1}]}}}])
    with pytest.raises(ConfigError) as info:
        table(both)
    assert info.value.field == f"{FIELD}.virtual_hosts[0].routes[0].route.weighted_clusters.clusters[0]"


def test_referenced_clusters():
    config = {"name": "rc", "virtual_hosts": [
        {"name": "a", "domains": ["a"], "routes": [route_to("one"), {"match": {"prefix": "/"},
                                                                      "redirect": {"host_redirect": "x"}}]},
        {"name": "b", "domains": ["b"], "routes": [{"match": {"prefix": "/"}, "route": {"weighted_clusters": {
            "clusters": [{"name": "two", "weight": 1}, {"cluster_header": "h", "weight": 1}]}}}]},
    ]}
    assert table(config).referenced_clusters() == {"one", "two"}


def test_validate_clusters_is_exposed():
    assert table({"name": "rc"}).validate_clusters is None
    assert table({"name": "rc", "validate_clusters": False}).validate_clusters is False


# --- rewrites ------------------------------------------------------------------------


def finalize(route_spec: dict, headers: HeaderMap, **kwargs) -> HeaderMap:
    route = table(one_vhost([route_spec])).find(headers)
    assert route is not None
    route.finalize_request(headers, StreamInfo(), route.cluster_name(headers, 0), **kwargs)
    return headers


def test_prefix_rewrite_keeps_the_rest_and_records_the_original_path():
    headers = finalize({"match": {"prefix": "/old"}, "route": {"cluster": "c", "prefix_rewrite": "/new"}},
                       request("/old/x?q=1"))
    assert headers.path == "/new/x?q=1"
    assert headers.get("x-envoy-original-path") == "/old/x?q=1"


def test_prefix_rewrite_on_case_insensitive_prefix():
    headers = finalize({"match": {"prefix": "/OLD", "case_sensitive": False},
                        "route": {"cluster": "c", "prefix_rewrite": "/"}}, request("/old/x"))
    assert headers.path == "//x"


def test_prefix_rewrite_on_path_and_regex_routes_replaces_the_whole_path():
    on_path = finalize({"match": {"path": "/a"}, "route": {"cluster": "c", "prefix_rewrite": "/b"}},
                       request("/a?k=v"))
    assert on_path.path == "/b?k=v"
    on_regex = finalize({"match": {"safe_regex": {"regex": "/v[0-9]/.*"}},
                         "route": {"cluster": "c", "prefix_rewrite": "/x"}}, request("/v1/y?k"))
    assert on_regex.path == "/x?k"


def test_regex_rewrite_keeps_the_query():
    headers = finalize({"match": {"prefix": "/"}, "route": {"cluster": "c", "regex_rewrite": {
        "pattern": {"regex": "^/service/([^/]+)(/.*)$"}, "substitution": "\\2/instance/\\1"}}},
        request("/service/foo/v1/api?x=1"))
    assert headers.path == "/v1/api/instance/foo?x=1"
    assert headers.get("x-envoy-original-path") == "/service/foo/v1/api?x=1"


def test_original_path_header_can_be_suppressed():
    headers = finalize({"match": {"prefix": "/old"}, "route": {"cluster": "c", "prefix_rewrite": "/new"}},
                       request("/old"), insert_envoy_original_path=False)
    assert headers.path == "/new"
    assert "x-envoy-original-path" not in headers


def test_no_rewrite_no_original_path():
    headers = finalize(route_to("c"), request("/x"))
    assert headers.path == "/x"
    assert "x-envoy-original-path" not in headers


def test_prefix_and_regex_rewrite_together_are_refused():
    with pytest.raises(ConfigError, match="only one of prefix_rewrite"):
        table(one_vhost([{"match": {"prefix": "/"}, "route": {"cluster": "c", "prefix_rewrite": "/a",
                                                              "regex_rewrite": {"pattern": {"regex": "a"},
                                                                                "substitution": "b"}}}]))


def test_host_rewrites():
    literal = finalize({"match": {"prefix": "/"}, "route": {"cluster": "c", "host_rewrite_literal": "up.test"}},
                       request())
    assert literal.authority == "up.test"
    from_header = finalize({"match": {"prefix": "/"}, "route": {"cluster": "c", "host_rewrite_header": "X-Host"}},
                           request(x_host="h.test"))
    assert from_header.authority == "h.test"
    header_missing = finalize({"match": {"prefix": "/"}, "route": {"cluster": "c", "host_rewrite_header": "x-h"}},
                              request())
    assert header_missing.authority == "example.com"
    from_path = finalize({"match": {"prefix": "/"}, "route": {"cluster": "c", "host_rewrite_path_regex": {
        "pattern": {"regex": "^/([^/]+)/.*$"}, "substitution": "\\1.svc"}}}, request("/tenant/x?y"))
    assert from_path.authority == "tenant.svc"


# --- redirects and direct responses ----------------------------------------------


def redirect(spec: dict, headers: HeaderMap, scheme: str = "http") -> tuple[int, str]:
    route = table(one_vhost([{"match": {"prefix": "/"}, "redirect": spec}])).find(headers)
    assert route.kind == "redirect" and route.is_redirect
    assert route.location(headers, scheme) == route.redirect(headers, scheme)[1]
    return route.redirect(headers, scheme)


def test_redirect_defaults_to_301_same_url():
    assert redirect({}, request("/p?q", "h.test")) == (301, "http://h.test/p?q")


def test_https_redirect_drops_the_default_http_port():
    headers = request("/p", "h.test:80", x_forwarded_proto="http")
    assert redirect({"https_redirect": True}, headers) == (301, "https://h.test/p")
    custom_port = request("/p", "h.test:8080", x_forwarded_proto="http")
    assert redirect({"https_redirect": True}, custom_port) == (301, "https://h.test:8080/p")


def test_scheme_redirect():
    assert redirect({"scheme_redirect": "ftp"}, request("/p", "h.test"))[1] == "ftp://h.test/p"


def test_host_and_port_redirect():
    assert redirect({"host_redirect": "new.test"}, request("/p", "h.test:81"))[1] == "http://new.test/p"
    assert redirect({"port_redirect": 8443}, request("/p", "h.test:81"))[1] == "http://h.test:8443/p"
    ipv6 = request("/p", "[::1]:81")
    assert redirect({"port_redirect": 9}, ipv6)[1] == "http://[::1]:9/p"


def test_path_redirect_and_query_handling():
    assert redirect({"path_redirect": "/new"}, request("/old?q=1"))[1] == "http://example.com/new?q=1"
    assert redirect({"path_redirect": "/new?own"}, request("/old?q=1"))[1] == "http://example.com/new?own"
    assert redirect({"path_redirect": "/new", "strip_query": True}, request("/old?q=1"))[1] == (
        "http://example.com/new")
    # a query in path_redirect is never stripped
    assert redirect({"path_redirect": "/new?own", "strip_query": True}, request("/old?q"))[1] == (
        "http://example.com/new?own")
    assert redirect({"strip_query": True}, request("/old?q=1"))[1] == "http://example.com/old"


def test_prefix_rewrite_redirect():
    route = table(one_vhost([{"match": {"prefix": "/old"}, "redirect": {"prefix_rewrite": "/new"}}]))
    headers = request("/old/x?q")
    assert route.find(headers).redirect(headers, "http") == (301, "http://example.com/new/x?q")


def test_regex_rewrite_redirect():
    spec = {"regex_rewrite": {"pattern": {"regex": "^/u/([0-9]+)$"}, "substitution": "/users/\\1"}}
    assert redirect(spec, request("/u/7?z"))[1] == "http://example.com/users/7?z"


@pytest.mark.parametrize(
    ("code", "status"),
    [("MOVED_PERMANENTLY", 301), ("FOUND", 302), ("SEE_OTHER", 303), ("TEMPORARY_REDIRECT", 307),
     ("PERMANENT_REDIRECT", 308)],
)
def test_redirect_response_codes(code, status):
    assert redirect({"response_code": code}, request())[0] == status


def test_direct_response_bodies(tmp_path, monkeypatch):
    body_file = tmp_path / "body.txt"
    body_file.write_bytes(b"from file")
    monkeypatch.setenv("TULLE_TEST_BODY", "from env")
    sources = [
        ({"inline_string": "caf\u00e9"}, "caf\u00e9".encode()),
        ({"inline_bytes": "AAEC"}, b"\x00\x01\x02"),
        ({"filename": str(body_file)}, b"from file"),
        ({"environment_variable": "TULLE_TEST_BODY"}, b"from env"),
    ]
    for source, expected in sources:
        route = table(one_vhost([{"match": {"prefix": "/"}, "direct_response": {"status": 418, "body": source}}]))
        found = route.find(request())
        assert found.kind == "direct_response"
        assert found.direct_response == (418, expected)
        assert found.location(request(), "http") is None
    no_body = table(one_vhost([{"match": {"prefix": "/"}, "direct_response": {"status": 204}}]))
    assert no_body.find(request()).direct_response == (204, b"")


def test_direct_response_redirect_status_has_a_location():
    route = table(one_vhost([{"match": {"prefix": "/"}, "direct_response": {"status": 302}}])).find(request())
    assert route.location(request("/here?x", "h.test"), "https") == "https://h.test/here?x"


def test_direct_response_body_limit():
    big = "x" * 4097
    with pytest.raises(ConfigError, match="4097 bytes; maximum is 4096"):
        table(one_vhost([{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {
            "inline_string": big}}}]))
    raised = table({**one_vhost([{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {
        "inline_string": big}}}]), "max_direct_response_body_size_bytes": 5000})
    assert len(raised.find(request()).direct_response[1]) == 4097


def test_direct_response_missing_sources_are_config_errors(tmp_path):
    with pytest.raises(ConfigError) as info:
        table(one_vhost([{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {
            "filename": str(tmp_path / "missing")}}}]))
    assert info.value.field == f"{FIELD}.virtual_hosts[0].routes[0].direct_response.body.filename"
    with pytest.raises(ConfigError, match="Environment variable"):
        table(one_vhost([{"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {
            "environment_variable": "TULLE_SURELY_UNSET_VARIABLE"}}}]))


# --- header mutations at three levels -------------------------------------------


def levels_config(most_specific_wins: bool, weighted: bool = False) -> dict:
    def overwrite(value: str) -> list[dict]:
        return [{"header": {"key": "x-level", "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]

    def append(value: str) -> list[dict]:
        return [{"header": {"key": "x-trail", "value": value}}]

    action: dict = {"cluster": "c"}
    if weighted:
        action = {"weighted_clusters": {"clusters": [{
            "name": "c", "weight": 1,
            "request_headers_to_add": overwrite("cluster") + append("cluster"),
            "response_headers_to_add": overwrite("cluster") + append("cluster"),
        }]}}
    return {
        "name": "rc",
        "most_specific_header_mutations_wins": most_specific_wins,
        "request_headers_to_add": overwrite("global") + append("global"),
        "response_headers_to_add": overwrite("global") + append("global"),
        "request_headers_to_remove": ["x-drop-global"],
        "virtual_hosts": [{
            "name": "vh", "domains": ["*"],
            "request_headers_to_add": overwrite("vhost") + append("vhost"),
            "response_headers_to_add": overwrite("vhost") + append("vhost"),
            "response_headers_to_remove": ["x-drop-vhost"],
            "routes": [{
                "match": {"prefix": "/"}, "route": action,
                "request_headers_to_add": overwrite("route") + append("route"),
                "response_headers_to_add": overwrite("route") + append("route"),
            }],
        }],
    }


def test_default_order_lets_the_route_configuration_win():
    route = table(levels_config(False)).find(request())
    headers = request(x_drop_global="1")
    route.finalize_request(headers, StreamInfo(), "c")
    assert headers.get_all("x-level") == ["global"]
    assert headers.get_all("x-trail") == ["route", "vhost", "global"]
    assert "x-drop-global" not in headers
    response = HeaderMap([(":status", "200"), ("x-drop-vhost", "1")])
    route.finalize_response(response, StreamInfo(), "c")
    assert response.get_all("x-level") == ["global"]
    assert response.get_all("x-trail") == ["route", "vhost", "global"]
    assert "x-drop-vhost" not in response


def test_most_specific_header_mutations_wins():
    route = table(levels_config(True)).find(request())
    headers = request()
    route.finalize_request(headers, StreamInfo(), "c")
    assert headers.get_all("x-level") == ["route"]
    assert headers.get_all("x-trail") == ["global", "vhost", "route"]
    response = HeaderMap([(":status", "200")])
    route.finalize_response(response, StreamInfo(), "c")
    assert response.get_all("x-level") == ["route"]


def test_weighted_cluster_mutations_run_first():
    route = table(levels_config(True, weighted=True)).find(request())
    name, entry = route.select_cluster(request(), 0)
    assert name == "c"
    by_name = request()
    route.finalize_request(by_name, StreamInfo(), name)
    assert by_name.get_all("x-trail") == ["cluster", "global", "vhost", "route"]
    by_entry = request()
    route.finalize_request(by_entry, StreamInfo(), weighted_entry=entry)
    assert by_entry.get_all("x-trail") == by_name.get_all("x-trail")
    response = HeaderMap([(":status", "200")])
    route.finalize_response(response, StreamInfo(), name)
    assert response.get_all("x-trail") == ["cluster", "global", "vhost", "route"]
    assert response.get_all("x-level") == ["route"]


def test_weighted_cluster_host_rewrite():
    config = one_vhost([{"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "c", "weight": 1, "host_rewrite_literal": "c.internal"}]}}}])
    route = table(config).find(request())
    headers = request()
    route.finalize_request(headers, StreamInfo(), route.cluster_name(headers, 0))
    assert headers.authority == "c.internal"


def test_request_mutations_do_not_apply_to_redirects():
    config = one_vhost([{"match": {"prefix": "/"}, "redirect": {"host_redirect": "x"},
                         "request_headers_to_add": [{"header": {"key": "x-a", "value": "1"}}]}])
    route = table(config).find(request())
    headers = request()
    route.finalize_request(headers, StreamInfo())
    assert "x-a" not in headers


# --- hash policy through the route ---------------------------------------------


def test_route_hash_key():
    config = one_vhost([{"match": {"prefix": "/"}, "route": {"cluster": "c", "hash_policy": [
        {"header": {"header_name": "x-user"}}]}}])
    route = table(config).find(request())
    assert route.hash_key(request(x_user="a"), "10.0.0.1") == route.hash_key(request(x_user="a"), "10.0.0.2")
    assert route.hash_key(request(x_user="a"), "") != route.hash_key(request(x_user="b"), "")
    assert route.hash_key(request(), "") is None
    assert table(one_vhost([route_to("c")])).find(request()).hash_key(request(x_user="a"), "") is None


# --- refusals ---------------------------------------------------------------------

ROUTE = f"{FIELD}.virtual_hosts[0].routes[0]"


@pytest.mark.parametrize(
    ("route", "path"),
    [
        ({"match": {"connect_matcher": {}}, "route": {"cluster": "c"}}, "match.connect_matcher"),
        ({"match": {"prefix": "/", "tls_context": {"presented": True}}, "route": {"cluster": "c"}},
         "match.tls_context"),
        ({"match": {"prefix": "/", "dynamic_metadata": [{"filter": "f", "path": [{"key": "k"}],
                                                         "value": {"present_match": True}}]},
          "route": {"cluster": "c"}}, "match.dynamic_metadata"),
        ({"match": {"prefix": "/"}, "route": {"cluster": "c", "retry_policy": {"retry_on": "5xx",
                                                                             "retry_priority": {"name": "p"}}}},
         "route.retry_policy.retry_priority"),
        ({"match": {"prefix": "/"}, "route": {"cluster": "c", "hedge_policy": {"hedge_on_per_try_timeout": True}}},
         "route.hedge_policy"),
        ({"match": {"prefix": "/"}, "route": {"cluster": "c", "flush_timeout": "1s"}}, "route.flush_timeout"),
        ({"match": {"prefix": "/"}, "route": {"cluster": "c", "upgrade_configs": [
            {"upgrade_type": "CONNECT", "connect_config": {}}]}}, "route.upgrade_configs[0].connect_config"),
        ({"match": {"prefix": "/"}, "route": {"cluster_specifier_plugin": "p"}}, "route.cluster_specifier_plugin"),
        ({"match": {"prefix": "/"}, "route": {"cluster": "c"}, "decorator": {"operation": "op"}}, "decorator"),
        ({"match": {"prefix": "/"}, "route": {"cluster": "c"}, "request_body_buffer_limit": 10},
         "request_body_buffer_limit"),
        ({"match": {"prefix": "/"}, "route": {"cluster": "c"}, "tracing": {}}, "tracing"),
        ({"match": {"prefix": "/"}, "route": {"weighted_clusters": {"runtime_key_prefix": "k", "clusters": [
            {"name": "a", "weight": 1}]}}}, "route.weighted_clusters.runtime_key_prefix"),
        ({"match": {"prefix": "/"}, "direct_response": {"status": 200, "body_format": {}}},
         "direct_response.body_format"),
    ],
)
def test_unsupported_route_fields_are_refused_with_their_path(route, path):
    with pytest.raises(UnsupportedFeature) as info:
        table(one_vhost([route]))
    assert info.value.field == f"{ROUTE}.{path}"
    assert "unsupported by Tulle" in str(info.value)
    assert info.value.field in str(info.value)


@pytest.mark.parametrize(
    ("vhost", "path"),
    [
        ({"require_tls": "ALL"}, "require_tls"),
        ({"cors": {}}, "cors"),
        ({"retry_policy_typed_config": {"@type": "type.googleapis.com/google.protobuf.Empty"}},
         "retry_policy_typed_config"),
        ({"hedge_policy": {"initial_requests": 2}}, "hedge_policy"),
        ({"virtual_clusters": [{"name": "v", "headers": [{"name": ":path", "present_match": True}]}]},
         "virtual_clusters"),
        ({"rate_limits": [{"actions": [{"remote_address": {}}]}]}, "rate_limits"),
        ({"typed_per_filter_config": {"f": {"@type": "type.googleapis.com/google.protobuf.Empty"}}},
         "typed_per_filter_config"),
    ],
)
def test_unsupported_virtual_host_fields_are_refused(vhost, path):
    with pytest.raises(UnsupportedFeature) as info:
        table(one_vhost([route_to("c")], **vhost))
    assert info.value.field == f"{FIELD}.virtual_hosts[0].{path}"


@pytest.mark.parametrize(
    ("extra", "path"),
    [
        ({"internal_only_headers": ["x-internal"]}, "internal_only_headers"),
        ({"vhds": {"config_source": {"ads": {}}}}, "vhds"),
        ({"ignore_path_parameters_in_path_matching": True}, "ignore_path_parameters_in_path_matching"),
    ],
)
def test_unsupported_route_configuration_fields_are_refused(extra, path):
    with pytest.raises(UnsupportedFeature) as info:
        table({"name": "rc", **extra})
    assert info.value.field == f"{FIELD}.{path}"


def test_missing_required_parts_are_config_errors():
    with pytest.raises(ConfigError) as info:
        table(one_vhost([{"match": {"prefix": "/"}}]))
    assert info.value.field == ROUTE
    with pytest.raises(ConfigError) as info:
        table(one_vhost([{"route": {"cluster": "c"}}]))
    assert info.value.field == f"{ROUTE}.match"
    with pytest.raises(ConfigError) as info:
        table(one_vhost([{"match": {}, "route": {"cluster": "c"}}]))
    assert info.value.field == f"{ROUTE}.match"
    with pytest.raises(ConfigError) as info:
        table(one_vhost([{"match": {"prefix": "/"}, "route": {}}]))
    assert info.value.field == f"{ROUTE}.route"
    with pytest.raises(ConfigError) as info:
        table(one_vhost([{"match": {"safe_regex": {"regex": "(unclosed"}}, "route": {"cluster": "c"}}]))
    assert info.value.field == f"{ROUTE}.match.safe_regex.regex"


def test_route_matches_api_and_non_ascii_config_paths():
    compiled = table(one_vhost([route_to("cafe", prefix="/caf\u00e9", headers=[{"name": "x-a", "present_match": True}])]))
    route = compiled.virtual_hosts[0].routes[0]
    wire_path = "/caf\u00e9/menu".encode().decode("latin-1")  # how the codec hands the bytes over
    assert route.matches(wire_path, request(wire_path, x_a="1"), {})
    assert not route.matches(wire_path, request(wire_path), {})
    assert not route.matches("/caf\u00e9/menu", request("/", x_a="1"), {})
    assert compiled.find(request(wire_path, x_a="1")) is route


# --- typed_per_filter_config ---------------------------------------------------------

FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
CSRF_TYPE = "type.googleapis.com/envoy.extensions.filters.http.csrf.v3.CsrfPolicy"
FILTER_CONFIG_TYPE = "type.googleapis.com/envoy.config.route.v3.FilterConfig"
FAULT = "envoy.filters.http.fault"


def fault_abort(status: int) -> dict:
    return {"@type": FAULT_TYPE, "abort": {"http_status": status, "percentage": {"numerator": 100}}}


def abort_status(config: object) -> int:
    return config.abort.http_status  # type: ignore[attr-defined]


def test_per_filter_config_most_specific_level_wins():
    compiled = table({
        "name": "rc",
        "typed_per_filter_config": {FAULT: fault_abort(500), "other_fault": fault_abort(501)},
        "virtual_hosts": [
            {"name": "vh", "domains": ["*"], "typed_per_filter_config": {FAULT: fault_abort(502)}, "routes": [
                {**route_to("own", prefix="/own"), "typed_per_filter_config": {FAULT: fault_abort(503)}},
                route_to("inherits", prefix="/"),
            ]},
            {"name": "bare", "domains": ["bare.example"], "routes": [route_to("global")]},
        ],
    })
    own = compiled.find(request("/own"))
    inherits = compiled.find(request("/x"))
    from_global = compiled.find(request("/", authority="bare.example"))
    assert abort_status(own.per_filter_config(FAULT)) == 503
    assert abort_status(inherits.per_filter_config(FAULT)) == 502
    assert abort_status(from_global.per_filter_config(FAULT)) == 500
    # levels merge by filter name: an entry only the route configuration has reaches every route
    assert abort_status(own.per_filter_config("other_fault")) == 501
    assert own.per_filter_config("envoy.filters.http.cors") is None


def test_per_filter_configs_are_parsed_once_and_shared():
    compiled = table(one_vhost([route_to("a", prefix="/a"), route_to("b")],
                               typed_per_filter_config={FAULT: fault_abort(503)}))
    first, second = compiled.virtual_hosts[0].routes
    assert first.per_filter_config(FAULT) is second.per_filter_config(FAULT)
    plain = table(one_vhost([route_to("a", prefix="/a"), route_to("b")]))
    first, second = plain.virtual_hosts[0].routes
    assert first.per_filter_config(FAULT) is None
    assert first._filter_configs is second._filter_configs  # one shared empty mapping


def test_per_filter_config_keys_are_filter_names_and_the_type_picks_the_parser():
    compiled = table(one_vhost([{**route_to("c"), "typed_per_filter_config": {"chaos": fault_abort(418)}}]))
    route = compiled.virtual_hosts[0].routes[0]
    assert abort_status(route.per_filter_config("chaos")) == 418
    assert route.per_filter_config(FAULT) is None


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"name": "rc", "typed_per_filter_config": {"csrf": {"@type": CSRF_TYPE}}}, "typed_per_filter_config"),
        (one_vhost([route_to("c")], typed_per_filter_config={"csrf": {"@type": CSRF_TYPE}}),
         "virtual_hosts[0].typed_per_filter_config"),
        (one_vhost([{**route_to("c"), "typed_per_filter_config": {"csrf": {"@type": CSRF_TYPE}}}]),
         "virtual_hosts[0].routes[0].typed_per_filter_config"),
    ],
)
def test_per_filter_config_of_an_unsupported_filter_is_refused_naming_it(config, path):
    with pytest.raises(UnsupportedFeature) as info:
        table(config)
    assert info.value.field == f"{FIELD}.{path}"
    assert "csrf (envoy.filters.http.csrf, type envoy.extensions.filters.http.csrf.v3.CsrfPolicy)" in info.value.feature


def test_errors_inside_a_per_filter_config_name_the_entry():
    with pytest.raises(ConfigError) as info:
        table(one_vhost([{**route_to("c"), "typed_per_filter_config": {FAULT: fault_abort(99)}}]))
    assert info.value.field == f"{ROUTE}.typed_per_filter_config['{FAULT}'].abort.http_status"


def test_filter_config_wrapper():
    wrapped = {"@type": FILTER_CONFIG_TYPE, "config": fault_abort(503)}
    compiled = table(one_vhost([{**route_to("c"), "typed_per_filter_config": {FAULT: wrapped}}]))
    assert abort_status(compiled.virtual_hosts[0].routes[0].per_filter_config(FAULT)) == 503


def test_an_optional_entry_of_an_unsupported_filter_is_skipped():
    optional = {"@type": FILTER_CONFIG_TYPE, "is_optional": True, "config": {"@type": CSRF_TYPE}}
    compiled = table(one_vhost([{**route_to("c"), "typed_per_filter_config": {FAULT: optional}}],
                               typed_per_filter_config={FAULT: fault_abort(502)}))
    # nothing at the route level: the virtual host's entry applies
    assert abort_status(compiled.virtual_hosts[0].routes[0].per_filter_config(FAULT)) == 502
    mandatory = {"@type": FILTER_CONFIG_TYPE, "config": {"@type": CSRF_TYPE}}
    with pytest.raises(UnsupportedFeature) as info:
        table(one_vhost([{**route_to("c"), "typed_per_filter_config": {"cors": mandatory}}]))
    assert info.value.field == f"{ROUTE}.typed_per_filter_config"


def test_filter_config_wrapper_limits():
    disabled = {"@type": FILTER_CONFIG_TYPE, "disabled": True}
    with pytest.raises(UnsupportedFeature) as info:
        table(one_vhost([{**route_to("c"), "typed_per_filter_config": {FAULT: disabled}}]))
    assert info.value.field == f"{ROUTE}.typed_per_filter_config['{FAULT}'].disabled"
    with pytest.raises(ConfigError) as info:
        table(one_vhost([{**route_to("c"), "typed_per_filter_config": {FAULT: {"@type": FILTER_CONFIG_TYPE}}}]))
    assert info.value.field == f"{ROUTE}.typed_per_filter_config['{FAULT}']"
    assert "Empty route/virtual host per filter configuration" in info.value.reason


def test_weighted_cluster_entries_still_refuse_per_filter_configs():
    route = {"match": {"prefix": "/"}, "route": {"weighted_clusters": {"clusters": [
        {"name": "a", "weight": 1, "typed_per_filter_config": {FAULT: fault_abort(503)}}]}}}
    with pytest.raises(UnsupportedFeature) as info:
        table(one_vhost([route]))
    assert info.value.field == f"{ROUTE}.route.weighted_clusters.clusters[0].typed_per_filter_config"


# --- match.runtime_fraction ----------------------------------------------------------


def shifting_table(runtime=None) -> RouteTable:
    """Envoy's traffic-shifting example: v2 takes its fraction, the rest falls through to v1."""
    from tulle.runtime import configuring

    routes = [route_to("v2", prefix="/", runtime_fraction={
                  "default_value": {"numerator": 30}, "runtime_key": "routing.traffic_shift.helloworld"}),
              route_to("v3", prefix="/", runtime_fraction={"default_value": {"numerator": 50}}),
              route_to("v1")]
    if runtime is None:
        return table(one_vhost(routes))
    with configuring(runtime):
        return table(one_vhost(routes))


def picks(compiled: RouteTable, draws: list[int], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from tulle.router import route_table as module

    values = iter(draws)
    monkeypatch.setattr(module, "_getrandbits", lambda bits: next(values))
    return [compiled.find(request()).name for _ in draws]


def test_runtime_fraction_routes_share_one_random_value_per_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    # 29 < 30: v2; 30..49 fail v2's 30% but pass v3's 50% with the same value; from 50: v1
    assert picks(shifting_table(), [129, 130, 249, 250, 99], monkeypatch) == ["v2", "v3", "v3", "v1", "v1"]


def test_runtime_fraction_key_overrides_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from envoy.config.bootstrap.v3.bootstrap_pb2 import LayeredRuntime

    from tulle.runtime import Runtime

    runtime = Runtime.from_proto(parse_message({"layers": [{"name": "admin", "admin_layer": {}}]}, LayeredRuntime),
                                 "layered_runtime")
    compiled = shifting_table(runtime)
    assert picks(compiled, [40], monkeypatch) == ["v3"]
    runtime.merge_admin({"routing.traffic_shift.helloworld": "100"})  # shift everything to v2, no reload
    assert picks(compiled, [40, 99], monkeypatch) == ["v2", "v2"]
    runtime.merge_admin({"routing.traffic_shift.helloworld": "0"})
    assert picks(compiled, [0, 10], monkeypatch) == ["v3", "v3"]


def test_virtual_hosts_without_runtime_fractions_draw_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled = table(one_vhost([route_to("a")]))
    assert picks(compiled, [], monkeypatch) == [] and compiled.find(request()).name == "a"  # no draw was available


def test_runtime_fraction_needs_a_default_value() -> None:
    with pytest.raises(ConfigError) as info:
        table(one_vhost([route_to("a", prefix="/", runtime_fraction={"runtime_key": "k"})]))
    assert info.value.field == f"{FIELD}.virtual_hosts[0].routes[0].match.runtime_fraction.default_value"
