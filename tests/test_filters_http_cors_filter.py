"""envoy.filters.http.cors: preflights answered by the proxy, CORS headers on allowed origins'
responses, and policies read per setting from the most specific level, through a real proxy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends import Client, bootstrap, echo_backend
from proxy_harness import ProxyProcess, free_port, http_listener, static_cluster

pytestmark = pytest.mark.integration

POLICY = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
CORS = {"name": "envoy.filters.http.cors",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}
ROUTER = {"name": "envoy.filters.http.router",
          "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}


def policy(**fields: Any) -> dict[str, Any]:
    return {"envoy.filters.http.cors": {"@type": POLICY, **fields}}


def routes() -> dict[str, Any]:
    return {"name": "local", "virtual_hosts": [{
        "name": "www", "domains": ["*"],
        "typed_per_filter_config": policy(
            allow_origin_string_match=[{"safe_regex": {"regex": r"\*"}}], allow_methods="GET",
            expose_headers="x-exposed", max_age="600", allow_credentials=True),
        "routes": [
            {"match": {"prefix": "/open"}, "route": {"cluster": "echo"}},
            {"match": {"prefix": "/disabled"}, "route": {"cluster": "echo"},
             "typed_per_filter_config": policy(filter_enabled={"default_value": {"numerator": 0}})},
            {"match": {"prefix": "/restricted"}, "route": {"cluster": "echo"},
             "typed_per_filter_config": policy(
                 allow_origin_string_match=[{"safe_regex": {"regex": r".*\.example\.com"}}],
                 allow_methods="GET,PUT", allow_headers="*", forward_not_matching_preflights=False)},
        ]}]}


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    with echo_backend() as port:
        yield port


@pytest.fixture
def proxy(tmp_path: Path, echo_port: int) -> Iterator[tuple[ProxyProcess, int]]:
    port = free_port()
    config = bootstrap([http_listener("ingress", port, routes(), http_filters=[CORS, ROUTER])],
                       [static_cluster("echo", [echo_port])])
    with ProxyProcess(config, tmp_path) as running:
        yield running, port


def preflight(client: Client, path: str, origin: str, **extra: str) -> Any:
    return client.request("OPTIONS", path, [("origin", origin), ("access-control-request-method", "PUT"),
                                            *((name.replace("_", "-"), value) for name, value in extra.items())])


def test_a_preflight_is_answered_by_the_proxy(proxy: tuple[ProxyProcess, int]) -> None:
    process, port = proxy
    with Client(port) as client:
        response = preflight(client, "/open", "https://anywhere.test")
    assert response.status == 200
    assert response.header("access-control-allow-origin") == "https://anywhere.test"
    assert response.header("access-control-allow-methods") == "GET"
    assert response.header("access-control-max-age") == "600"
    assert response.header("access-control-allow-credentials") == "true"
    assert response.header("x-served-by") is None  # never reached the upstream
    assert process.stats()["http.ingress.cors.origin_valid"] == 1


def test_an_allowed_origins_response_gets_the_cors_headers(proxy: tuple[ProxyProcess, int]) -> None:
    _, port = proxy
    with Client(port) as client:
        response = client.request("GET", "/open", [("origin", "https://anywhere.test")])
        plain = client.request("GET", "/open")
    assert response.status == 200 and response.header("x-served-by") is not None
    assert response.header("access-control-allow-origin") == "https://anywhere.test"
    assert response.header("access-control-expose-headers") == "x-exposed"
    assert plain.header("access-control-allow-origin") is None  # no Origin: not a CORS request


def test_a_route_policy_overrides_setting_by_setting(proxy: tuple[ProxyProcess, int]) -> None:
    process, port = proxy
    with Client(port) as client:
        allowed = preflight(client, "/restricted", "https://app.example.com",
                            access_control_request_headers="x-a, x-b")
        refused = preflight(client, "/restricted", "https://evil.test")
    assert allowed.header("access-control-allow-methods") == "GET,PUT"  # the route's
    assert allowed.header("access-control-allow-headers") == "x-a, x-b"  # "*" echoes the request's
    assert allowed.header("access-control-max-age") == "600"  # inherited from the virtual host
    # a preflight from an origin that does not match, with forward_not_matching_preflights off:
    # answered here, without Access-Control-Allow-Origin
    assert refused.status == 200 and refused.header("access-control-allow-origin") is None
    assert refused.header("x-served-by") is None
    assert process.stats()["http.ingress.cors.origin_invalid"] == 1


def test_a_disabled_policy_leaves_requests_alone(proxy: tuple[ProxyProcess, int]) -> None:
    _, port = proxy
    with Client(port) as client:
        response = preflight(client, "/disabled", "https://anywhere.test")
    assert response.header("x-served-by") is not None  # forwarded: the filter is off on this route
    assert response.header("access-control-allow-origin") is None
