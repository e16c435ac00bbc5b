"""``envoy.filters.http.cors``: CORS preflights answered at the proxy and CORS headers added to the
responses of allowed origins, as Envoy's filter does (its behaviour is described in config.py's
docstring and in Envoy's docs: a preflight is an OPTIONS request with Origin and
Access-Control-Request-Method; an origin is allowed when a matcher matches it, or matches ``*``).
"""

from __future__ import annotations

from typing import Any

from tulle.filters.http.base import CONTINUE, STOP, HttpFilter
from tulle.http.headers import HeaderMap


class CorsStats:
    """``http.<stat_prefix>.cors.origin_valid`` / ``origin_invalid``."""

    __slots__ = ("origin_valid", "origin_invalid")

    def __init__(self, store: Any, stat_prefix: str) -> None:
        self.origin_valid = store.counter(f"http.{stat_prefix}.cors.origin_valid")
        self.origin_invalid = store.counter(f"http.{stat_prefix}.cors.origin_invalid")


def origin_allowed(matchers: tuple[Any, ...], origin: str) -> bool:
    return any(matches("*") or matches(origin) for matches in matchers)


class CorsFilter(HttpFilter):
    __slots__ = ("factory", "policy", "latched_origin", "is_cors_request")

    def __init__(self, stream: Any, factory: Any) -> None:
        super().__init__(stream)
        self.factory = factory
        self.policy: Any = None
        self.latched_origin = ""
        self.is_cors_request = False

    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        stream = self.stream
        route = stream.get_route()
        if route is None or route.kind != "cluster":
            return CONTINUE  # Envoy: only a route entry (not a redirect or direct response) has policies
        policy = route.per_filter_config(self.factory.config_name)
        if policy is None:
            return CONTINUE
        self.policy = policy
        enabled = policy.enabled()
        shadow = policy.shadow()
        if not enabled and not shadow:
            return CONTINUE
        origin = headers.get("origin")
        if not origin:
            return CONTINUE
        allowed = origin_allowed(policy.first("allow_origins", ()), origin)
        stats = self.factory.stats
        if allowed:
            stats.origin_valid.value += 1
            self.latched_origin = origin
        else:
            stats.origin_invalid.value += 1
        if shadow and not enabled:
            return CONTINUE
        self.is_cors_request = True
        request_method = headers.get("access-control-request-method")
        if headers.get(":method") != "OPTIONS" or not request_method:
            return CONTINUE
        # a preflight
        if not allowed and policy.first("forward_not_matching_preflights", None) is not False:
            return CONTINUE  # Envoy forwards a preflight its policies do not match, unless told not to
        response = HeaderMap([(":status", "200")])
        if allowed:
            response.add("access-control-allow-origin", origin)
        if policy.first("allow_credentials", None):
            response.add("access-control-allow-credentials", "true")
        methods = policy.first("allow_methods", "")
        if methods:
            response.add("access-control-allow-methods", request_method if methods == "*" else methods)
        allow_headers = policy.first("allow_headers", "")
        if allow_headers:
            requested = headers.get("access-control-request-headers") or ""
            response.add("access-control-allow-headers", requested if allow_headers == "*" else allow_headers)
        max_age = policy.first("max_age", "")
        if max_age:
            response.add("access-control-max-age", max_age)
        if policy.first("allow_private_network_access", None) and \
                headers.get("access-control-request-private-network") == "true":
            response.add("access-control-allow-private-network", "true")
        stream.info.response_code_details = "cors_response"
        stream.encode_headers(response, True)
        return STOP

    def encode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        if not self.is_cors_request or not self.latched_origin:
            return CONTINUE
        policy = self.policy
        headers.set("access-control-allow-origin", self.latched_origin)
        if policy.first("allow_credentials", None):
            headers.set("access-control-allow-credentials", "true")
        expose = policy.first("expose_headers", "")
        if expose:
            headers.set("access-control-expose-headers", expose)
        return CONTINUE
