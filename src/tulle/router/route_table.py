"""Route tables built from envoy.config.route.v3.RouteConfiguration (pure, no I/O per request).

Everything a request needs is precomputed here: lower-cased domain tables,
compiled regexes, one small path predicate per route, compiled header
mutations in Envoy's evaluation order. ``find()`` never touches a proto.

Virtual host selection (Envoy's RouteMatcher::findVirtualHost): the
``:authority`` value, optionally without its port, lower-cased, is looked up as
an exact domain, then against ``*suffix`` wildcards (longest first), then
``prefix*`` wildcards (longest first), then the ``*`` virtual host. A wildcard
never matches an empty remainder (``*.foo.com`` does not match ``.foo.com``).
Domains may carry ports: without port stripping ``example.com`` does not match
``Host: example.com:8080``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from typing import Literal

import cython
from google.protobuf import any_pb2, message

from tulle.config.errors import ConfigError, UnsupportedFeature, join
from tulle.config.loader import type_name_of, unpack_any
from tulle.config.support import check_fields
from tulle.extensions import registry
from tulle.http.grpc import is_grpc_request
from tulle.http.headers import HeaderMap
from tulle.router.hash_policy import HashPolicy
from tulle.router.header_mutation import HeaderMutation, apply_all
from tulle.router.matchers import (
    UINT64_MAX,
    QueryPredicate,
    Regex,
    RegexRewrite,
    ascii_lower,
    compile_header_matcher,
    compile_query_parameter_matcher,
    compile_regex_matcher,
    parse_query,
    remove_query_and_fragment,
    require_header_safe,
    simple_atoi,
    wire,
)
from tulle.router.mirror_policy import MirrorPolicy, mirror_policies
from tulle.router.retry_policy import (
    NO_VIRTUAL_HOST_RETRY,
    RetryPolicy,
    VirtualHostRetryOptions,
    retry_policy,
)
from tulle.router.stream_timeouts import StreamTimeouts, grpc_timeout
from tulle.runtime import Fraction, RuntimeFraction, in_scope, runtime_fractional_percent
from tulle.stream_info import StreamInfo

StripPort = Literal["none", "any", "matching"]
PathPredicate = Callable[[str], bool]

DEFAULT_ROUTE_TIMEOUT_MS = 15_000
DEFAULT_MAX_DIRECT_RESPONSE_BODY_SIZE_BYTES = 4096
ENVOY_ORIGINAL_PATH = "x-envoy-original-path"

_REDIRECT_CODES = {0: 301, 1: 302, 2: 303, 3: 307, 4: 308}
_CLUSTER_NOT_FOUND_CODES = {0: 503, 1: 404, 2: 500}
_NO_QUERY: dict[str, str] = {}
_getrandbits = random.getrandbits

# StreamInfo.filter_state key: the random value for a weighted_clusters pick, when a filter before
# the router had to know the pick (Envoy picks once per stream, from the stream id).
WEIGHTED_CLUSTER_RANDOM_VALUE = "tulle.route.weighted_cluster_random_value"
_FILTER_CONFIG_TYPE = "envoy.config.route.v3.FilterConfig"
# typed_per_filter_config of no level at all: shared by every route without one
_NO_FILTER_CONFIGS: Mapping[str, object] = {}

_ROUTE_CONFIGURATION_FIELDS = (
    "name", "virtual_hosts", "request_headers_to_add", "request_headers_to_remove",
    "response_headers_to_add", "response_headers_to_remove", "most_specific_header_mutations_wins",
    "validate_clusters", "max_direct_response_body_size_bytes", "ignore_port_in_host_matching",
    "typed_per_filter_config", "request_mirror_policies",
)
_VIRTUAL_HOST_FIELDS = (
    "name", "domains", "routes", "request_headers_to_add", "request_headers_to_remove",
    "response_headers_to_add", "response_headers_to_remove", "typed_per_filter_config", "request_mirror_policies",
    "retry_policy", "include_request_attempt_count", "include_attempt_count_in_response",
    "per_request_buffer_limit_bytes",
)
_ROUTE_FIELDS = (
    "name", "match", "route", "redirect", "direct_response", "request_headers_to_add",
    "request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove",
    "typed_per_filter_config", "per_request_buffer_limit_bytes",
)
_ROUTE_MATCH_FIELDS = (
    "prefix", "path", "safe_regex", "path_separated_prefix", "case_sensitive", "headers", "query_parameters",
    "runtime_fraction", "grpc",
)
_ROUTE_ACTION_FIELDS = (
    "cluster", "cluster_header", "weighted_clusters", "cluster_not_found_response_code", "prefix_rewrite",
    "regex_rewrite", "host_rewrite_literal", "auto_host_rewrite", "host_rewrite_header",
    "host_rewrite_path_regex", "timeout", "hash_policy", "request_mirror_policies", "retry_policy",
    "idle_timeout", "max_stream_duration", "priority", "max_grpc_timeout", "grpc_timeout_offset", "upgrade_configs",
)
_CLUSTER_WEIGHT_FIELDS = (
    "name", "cluster_header", "weight", "request_headers_to_add", "request_headers_to_remove",
    "response_headers_to_add", "response_headers_to_remove", "host_rewrite_literal",
)
_REDIRECT_FIELDS = (
    "https_redirect", "scheme_redirect", "host_redirect", "port_redirect", "path_redirect", "prefix_rewrite",
    "regex_rewrite", "response_code", "strip_query",
)


# --- host helpers (Envoy's HeaderUtility::getPortStart / stripPortFromHost) ---------


def port_start(host: str) -> int:
    """Index of the ':' before the port, or -1 (an IPv6 literal's colons are not a port)."""
    colon = host.rfind(":")
    if colon < 0:
        return -1
    bracket = host.rfind("]")
    if bracket < 0 or bracket < colon:
        return colon
    return -1


def strip_host_port(host: str, mode: StripPort, listener_port: int | None) -> str:
    """The host without its port per HCM strip_any_host_port / strip_matching_host_port."""
    if mode == "none":
        return host
    colon = port_start(host)
    if colon < 0:
        return host
    port = simple_atoi(host[colon + 1 :], 0, 0xFFFFFFFF)
    if port is None or (mode == "matching" and port != listener_port):
        return host
    return host[:colon]


def _duration_ms(duration: message.Message) -> int:
    """Envoy's PROTOBUF_GET_MS: whole milliseconds, sub-millisecond parts dropped."""
    return duration.seconds * 1000 + duration.nanos // 1_000_000  # type: ignore[attr-defined]


def _is_https(scheme: str) -> bool:
    return ascii_lower(scheme) == "https"


def _is_http(scheme: str) -> bool:
    return ascii_lower(scheme) == "http"


def _redirect_host(request_host: str, forwarded_proto: str, new_scheme: str, new_port: str) -> str:
    """Envoy's processRequestHost: drop the request's port when a new port is set or when it
    is the default port of the request's scheme and the scheme changes."""
    if not request_host:
        return request_host
    if request_host[0] == "[":
        host_end = request_host.rfind("]:")
        if host_end >= 0:
            host_end += 1
    else:
        host_end = request_host.rfind(":")
    if host_end < 0:
        return request_host
    request_port = request_host[host_end:]
    remove_port = bool(new_port)
    if new_scheme != forwarded_proto:
        remove_port = remove_port or (_is_https(forwarded_proto) and request_port == ":443")
        remove_port = remove_port or (_is_http(forwarded_proto) and request_port == ":80")
    return request_host[:host_end] if remove_port else request_host


def _new_uri(headers: HeaderMap, scheme: str, redirect: _Redirect | None, path: str) -> str:
    """Envoy's Http::Utility::newUri for a redirect (or a 201/3xx direct response)."""
    if redirect is not None and redirect.scheme:
        final_scheme = redirect.scheme
    elif redirect is not None and redirect.https:
        final_scheme = "https"
    else:
        final_scheme = scheme
    final_port = redirect.port if redirect is not None else ""
    if redirect is not None and redirect.host:
        final_host = redirect.host
    else:
        forwarded_proto = headers.get("x-forwarded-proto")
        final_host = _redirect_host(
            headers.authority, scheme if forwarded_proto is None else forwarded_proto, final_scheme, final_port
        )
    path_has_query = redirect is not None and redirect.path_has_query
    if redirect is not None and redirect.path:
        if path_has_query:
            final_path = redirect.path
        else:
            query_start = path.find("?")
            final_path = redirect.path if query_start < 0 else redirect.path + path[query_start:]
    else:
        final_path = path
    if not final_path.startswith("/"):
        final_path = "/" + final_path
    if redirect is not None and redirect.strip_query and not path_has_query:
        query_start = final_path.find("?")
        if query_start >= 0:
            final_path = final_path[:query_start]
    return f"{final_scheme}://{final_host}{final_port}{final_path}"


# --- typed_per_filter_config ---------------------------------------------------------


def _filter_config(name: str, value: any_pb2.Any, field: str) -> object | None:
    """One typed_per_filter_config entry, parsed by the parser registered for its type.

    ``field`` is the map's path. As in Envoy the type (not the key) picks the parser; a
    FilterConfig wrapper may mark the entry optional, so that a type Tulle cannot parse is
    skipped (None) instead of refused.
    """
    entry_field = f"{field}[{name!r}]"
    is_optional = False
    if type_name_of(value) == _FILTER_CONFIG_TYPE:
        wrapper = unpack_any(value, field=entry_field)
        # disabled turns a filter off for the route: the filter chain cannot skip filters yet
        check_fields(wrapper, ("config", "is_optional"), entry_field)
        if not wrapper.HasField("config"):  # type: ignore[attr-defined]
            raise ConfigError(f"Empty route/virtual host per filter configuration for {name} filter",
                              field=entry_field)
        value = wrapper.config  # type: ignore[attr-defined]
        is_optional = wrapper.is_optional  # type: ignore[attr-defined]
        entry_field = join(entry_field, "config")
        if not value.type_url:
            return None  # Envoy: "enabled explicitly", which only matters for filters disabled by default
    type_name = type_name_of(value)
    parse = registry.resolve(registry.PER_ROUTE_FILTER_CONFIGS, type_name)
    if parse is None:
        if is_optional:
            return None
        # The map's own path (the key is in the message): an entry is refused as the map was before.
        raise UnsupportedFeature(f"per-route config of HTTP filter {registry.describe(name, type_name)}",
                                 field=field)
    return parse(unpack_any(value, field=entry_field), entry_field)


def _per_filter_configs(msg: message.Message, field: str, inherited: Mapping[str, object]) -> Mapping[str, object]:
    """This level's typed_per_filter_config over the less specific levels' (Envoy: the most specific wins).

    Each entry is parsed once here; a level without entries shares its parent's mapping. A parsed
    config with ``chain_over(parent)`` keeps the less specific level's behind it instead of replacing
    it (CORS reads each setting from the most specific policy that sets it).
    """
    entries = msg.typed_per_filter_config  # type: ignore[attr-defined]
    if not entries:
        return inherited
    map_field = join(field, "typed_per_filter_config")
    merged = dict(inherited)
    for name in sorted(entries):  # map order is arbitrary: refuse the same entry every time
        parsed = _filter_config(name, entries[name], map_field)
        if parsed is not None:  # a skipped optional entry leaves the less specific level's config
            chain_over = getattr(parsed, "chain_over", None)
            merged[name] = parsed if chain_over is None else chain_over(inherited.get(name))
    return merged


# --- pieces of a route ---------------------------------------------------------------


class _Redirect:
    __slots__ = (
        "code", "scheme", "https", "host", "port", "path", "path_has_query", "prefix_rewrite",
        "regex_rewrite", "strip_query",
    )

    def __init__(self, msg: message.Message, field: str) -> None:
        check_fields(msg, _REDIRECT_FIELDS, field)
        if msg.response_code not in _REDIRECT_CODES:
            raise ConfigError(f"unknown response_code {msg.response_code}", field=join(field, "response_code"))
        for name in ("scheme_redirect", "host_redirect", "path_redirect", "prefix_rewrite"):
            require_header_safe(getattr(msg, name), join(field, name))
        if msg.port_redirect > 65535:
            raise ConfigError("port_redirect must be at most 65535", field=join(field, "port_redirect"))
        self.code: int = _REDIRECT_CODES[msg.response_code]
        self.scheme = wire(msg.scheme_redirect)
        self.https: bool = msg.https_redirect
        self.host = wire(msg.host_redirect)
        self.port = f":{msg.port_redirect}" if msg.port_redirect else ""
        self.path = wire(msg.path_redirect)
        self.path_has_query = "?" in self.path
        self.prefix_rewrite = wire(msg.prefix_rewrite)
        self.regex_rewrite = (
            RegexRewrite(msg.regex_rewrite, join(field, "regex_rewrite")) if msg.HasField("regex_rewrite") else None
        )
        self.strip_query: bool = msg.strip_query


class WeightedClusterEntry:
    """One entry of weighted_clusters with its own header mutations."""

    if not cython.compiled:
        __slots__ = ("name", "cluster_header", "weight", "request_mutation", "response_mutation", "host_rewrite")

    def __init__(self, msg: message.Message, field: str) -> None:
        check_fields(msg, _CLUSTER_WEIGHT_FIELDS, field)
        if bool(msg.name) == bool(msg.cluster_header):
            raise ConfigError("exactly one of name or cluster_header must be specified", field=field)
        if not msg.HasField("weight"):
            raise ConfigError("weight is required", field=join(field, "weight"))
        require_header_safe(msg.host_rewrite_literal, join(field, "host_rewrite_literal"))
        self.name: str = msg.name
        self.cluster_header = ascii_lower(wire(msg.cluster_header))
        self.weight: int = msg.weight.value
        self.host_rewrite = wire(msg.host_rewrite_literal)
        self.request_mutation = HeaderMutation.from_protos(
            msg.request_headers_to_add, msg.request_headers_to_remove,
            add_field=join(field, "request_headers_to_add"), remove_field=join(field, "request_headers_to_remove"),
        )
        self.response_mutation = HeaderMutation.from_protos(
            msg.response_headers_to_add, msg.response_headers_to_remove,
            add_field=join(field, "response_headers_to_add"),
            remove_field=join(field, "response_headers_to_remove"),
        )

    def cluster_name(self, headers: HeaderMap) -> str | None:
        if not self.cluster_header:
            return self.name
        return headers.get(self.cluster_header) or None


def _path_predicate(kind: str, value: str, case_sensitive: bool) -> PathPredicate:
    if kind == "prefix":
        if case_sensitive:
            return lambda path: path.startswith(value)
        lowered, length = ascii_lower(value), len(value)
        return lambda path: ascii_lower(path[:length]) == lowered
    if kind == "path":
        if case_sensitive:
            return lambda path: path == value
        lowered = ascii_lower(value)
        return lambda path: len(path) == len(lowered) and ascii_lower(path) == lowered
    # path_separated_prefix: the prefix is the whole path or is followed by '/'
    length = len(value)
    if case_sensitive:
        return lambda path: path.startswith(value) and (len(path) == length or path[length] == "/")
    lowered = ascii_lower(value)
    return lambda path: (
        ascii_lower(path[:length]) == lowered and (len(path) == length or path[length] == "/")
    )


class Route:
    """One route, precomputed. ``kind`` is "cluster", "redirect" or "direct_response"."""

    if not cython.compiled:
        __slots__ = (
            "name", "virtual_host_name", "kind", "is_redirect", "direct_response",
            "cluster_not_found_response_code", "timeout", "timeout_header_value", "max_grpc_timeout",
            "grpc_timeout_offset", "upgrade_overrides", "auto_host_rewrite",
            "hash_policy", "needs_query", "plain_prefix", "_path_matches", "_header_matchers",
            "_query_matchers", "_matched_prefix_length", "_cluster", "_cluster_header", "_weighted",
            "_total_weight", "_random_value_header", "_weighted_by_name", "_prefix_rewrite", "_regex_rewrite",
            "_host_rewrite", "_host_rewrite_header", "_host_rewrite_path_regex", "_redirect",
            "_request_mutations", "_response_mutations", "_filter_configs", "mirror_policies", "retry_policy",
            "stream_timeouts", "include_request_attempt_count", "include_attempt_count_in_response",
            "retry_buffer_limit", "needs_attempts", "priority", "runtime_fraction", "attempt_defaults",
            "fast_per_try", "expected_rq_timeout_value",
        )

    def __init__(
        self,
        msg: message.Message,
        field: str,
        virtual_host_name: str,
        vhost_mutations: tuple[HeaderMutation | None, HeaderMutation | None],
        global_mutations: tuple[HeaderMutation | None, HeaderMutation | None],
        most_specific_wins: bool,
        max_body_bytes: int,
        inherited_filter_configs: Mapping[str, object] = _NO_FILTER_CONFIGS,
        *,
        inherited_mirror_policies: tuple[MirrorPolicy, ...] = (),
        vhost_retry: VirtualHostRetryOptions = NO_VIRTUAL_HOST_RETRY,
    ) -> None:
        check_fields(msg, _ROUTE_FIELDS, field)
        self.name: str = msg.name
        self.virtual_host_name = virtual_host_name
        if not msg.HasField("match"):
            raise ConfigError("match is required", field=join(field, "match"))
        self._compile_match(msg.match, join(field, "match"))

        action = msg.WhichOneof("action")
        self.kind = {"route": "cluster", "redirect": "redirect", "direct_response": "direct_response"}.get(
            action or "", ""
        )
        if not self.kind:
            raise ConfigError("one of route, redirect, direct_response is required", field=field)
        self.is_redirect = self.kind == "redirect"
        self.direct_response: tuple[int, bytes] | None = None
        self.cluster_not_found_response_code = 503
        self.timeout: float | None = None
        self.timeout_header_value = ""
        # set by a route action; redirects and direct responses have none of these
        self.max_grpc_timeout: float | None = None
        self.grpc_timeout_offset = 0.0
        self.upgrade_overrides: dict[str, bool] | None = None
        self.auto_host_rewrite = False
        self.hash_policy: HashPolicy | None = None
        self._cluster = ""
        self._cluster_header = ""
        self._weighted: tuple[WeightedClusterEntry, ...] = ()
        self._total_weight = 0
        self._random_value_header = ""
        self._weighted_by_name: dict[str, WeightedClusterEntry] = {}
        self._prefix_rewrite = ""
        self._regex_rewrite: RegexRewrite | None = None
        self._host_rewrite = ""
        self._host_rewrite_header = ""
        self._host_rewrite_path_regex: RegexRewrite | None = None
        self._redirect: _Redirect | None = None
        # RoutingPriority (0 DEFAULT, 1 HIGH): which of the cluster's circuit breakers count the request
        self.priority = 0
        # request mirroring: the route's own policies, else its virtual host's (only routes forward)
        self.mirror_policies: tuple[MirrorPolicy, ...] = ()
        # retries and stream timing (read by filters/http/router and the HCM)
        self.retry_policy: RetryPolicy | None = None
        self.stream_timeouts: StreamTimeouts | None = None
        self.include_request_attempt_count = vhost_retry.include_request_attempt_count
        self.include_attempt_count_in_response = vhost_retry.include_attempt_count_in_response
        self.retry_buffer_limit: int | None = (
            msg.per_request_buffer_limit_bytes.value if msg.HasField("per_request_buffer_limit_bytes")
            else vhost_retry.per_request_buffer_limit_bytes)
        if action == "route":
            self._compile_action(msg.route, join(field, "route"))
            self._compile_retries(msg.route, join(field, "route"), vhost_retry)
            self.mirror_policies = mirror_policies(msg.route, join(field, "route"), inherited_mirror_policies)
        elif action == "redirect":
            self._redirect = _Redirect(msg.redirect, join(field, "redirect"))
        else:
            self.direct_response = _direct_response(msg.direct_response, join(field, "direct_response"),
                                                    max_body_bytes)

        route_request = HeaderMutation.from_protos(
            msg.request_headers_to_add, msg.request_headers_to_remove,
            add_field=join(field, "request_headers_to_add"), remove_field=join(field, "request_headers_to_remove"),
        )
        route_response = HeaderMutation.from_protos(
            msg.response_headers_to_add, msg.response_headers_to_remove,
            add_field=join(field, "response_headers_to_add"),
            remove_field=join(field, "response_headers_to_remove"),
        )
        # Later levels win: by default route, then virtual host, then route configuration
        # (the route configuration wins); most_specific_header_mutations_wins reverses it.
        request_levels = (route_request, vhost_mutations[0], global_mutations[0])
        response_levels = (route_response, vhost_mutations[1], global_mutations[1])
        if most_specific_wins:
            request_levels, response_levels = request_levels[::-1], response_levels[::-1]
        self._request_mutations = tuple(level for level in request_levels if level is not None)
        self._response_mutations = tuple(level for level in response_levels if level is not None)
        self._filter_configs = _per_filter_configs(msg, field, inherited_filter_configs)
        # Whether the router tracks attempts from the start (per-try timers, attempt-count headers);
        # a plain retry policy costs nothing until a response or failure could be retried.
        policy = self.retry_policy
        self.attempt_defaults: tuple[object, dict[str, object] | None] | None = None  # filled by the router
        self.needs_attempts = (
            self.include_request_attempt_count or self.include_attempt_count_in_response
            or (policy is not None and bool(policy.per_try_timeout or policy.per_try_idle_timeout)))
        # A per-try timeout alone keeps the fast path: the router arms it next to the route timeout
        # when the attempt is connected and the request complete at once (a GET on a pooled
        # connection), and builds the attempts only if it fires or the request needs them anyway.
        self.fast_per_try = 0.0
        if (policy is not None and policy.per_try_timeout and not policy.per_try_idle_timeout
                and not self.include_request_attempt_count and not self.include_attempt_count_in_response):
            self.needs_attempts = False
            if not self.timeout or policy.per_try_timeout < self.timeout:  # else it is ignored (Envoy)
                self.fast_per_try = policy.per_try_timeout
        # x-envoy-expected-rq-timeout-ms on the fast path: the per-try timeout, else the route's
        if self.fast_per_try:
            self.expected_rq_timeout_value = str(int(self.fast_per_try * 1000 + 0.5))
        else:
            self.expected_rq_timeout_value = self.timeout_header_value if self.timeout else ""

    # --- config time -------------------------------------------------------------------

    def _compile_retries(self, action: message.Message, field: str, vhost_retry: VirtualHostRetryOptions) -> None:
        self.retry_policy = retry_policy(action, field, vhost_retry.retry_policy)
        self.stream_timeouts = StreamTimeouts.of(action, field)
        if action.HasField("max_stream_duration"):
            # Envoy's "new timeouts": with max_stream_duration the route timeout is not used
            self.timeout = None
            self.timeout_header_value = ""

    def _compile_match(self, match: message.Message, field: str) -> None:
        check_fields(match, _ROUTE_MATCH_FIELDS, field)
        kind = match.WhichOneof("path_specifier")
        if kind is None:
            raise ConfigError("one of prefix, path, safe_regex, path_separated_prefix is required", field=field)
        case_sensitive = match.case_sensitive.value if match.HasField("case_sensitive") else True
        # length of the path part replaced by prefix_rewrite; None: the whole path (regex)
        self._matched_prefix_length: int | None = None
        # a case-sensitive prefix, checked inline by VirtualHost.find (the common case)
        self.plain_prefix: str | None = None
        if kind == "safe_regex":
            regex: Regex = compile_regex_matcher(match.safe_regex, join(field, "safe_regex"))
            self._path_matches: PathPredicate = regex.full_match
        else:
            value = wire(getattr(match, kind))
            require_header_safe(value, join(field, kind))
            if kind == "path_separated_prefix" and (
                not value or "?" in value or "#" in value or value.endswith("/")
            ):
                raise ConfigError(
                    "path_separated_prefix must be non-empty, without '?' or '#', and not end with '/'",
                    field=join(field, kind),
                )
            self._path_matches = _path_predicate(kind, value, case_sensitive)
            self._matched_prefix_length = len(value)
            if kind == "prefix" and case_sensitive:
                self.plain_prefix = value
        self._header_matchers = tuple(
            compile_header_matcher(header, f"{join(field, 'headers')}[{i}]") for i, header in enumerate(match.headers)
        )
        if match.HasField("grpc"):  # RouteMatch.grpc: only gRPC requests (by their content-type, as Envoy)
            self._header_matchers += (is_grpc_request,)
        self._query_matchers: tuple[QueryPredicate, ...] = tuple(
            compile_query_parameter_matcher(param, f"{join(field, 'query_parameters')}[{i}]")
            for i, param in enumerate(match.query_parameters)
        )
        self.needs_query = bool(self._query_matchers)
        # RouteMatch.runtime_fraction: the route matches only for that share of lookups (the runtime
        # key, when set, overrides default_value); see RuntimeFractionVirtualHost
        self.runtime_fraction: Fraction | RuntimeFraction | None = None
        if match.HasField("runtime_fraction"):
            self.runtime_fraction = runtime_fractional_percent(in_scope(), match.runtime_fraction,
                                                               join(field, "runtime_fraction"))

    def _compile_action(self, action: message.Message, field: str) -> None:
        check_fields(action, _ROUTE_ACTION_FIELDS, field)
        specifier = action.WhichOneof("cluster_specifier")
        if specifier == "cluster":
            if not action.cluster:
                raise ConfigError("cluster must not be empty", field=join(field, "cluster"))
            self._cluster = action.cluster
        elif specifier == "cluster_header":
            require_header_safe(action.cluster_header, join(field, "cluster_header"))
            self._cluster_header = ascii_lower(wire(action.cluster_header))
        elif specifier == "weighted_clusters":
            self._compile_weighted(action.weighted_clusters, join(field, "weighted_clusters"))
        else:
            raise ConfigError("one of cluster, cluster_header, weighted_clusters is required", field=field)

        code = action.cluster_not_found_response_code
        if code not in _CLUSTER_NOT_FOUND_CODES:
            raise ConfigError(f"unknown cluster_not_found_response_code {code}",
                              field=join(field, "cluster_not_found_response_code"))
        self.cluster_not_found_response_code = _CLUSTER_NOT_FOUND_CODES[code]
        timeout_ms = _duration_ms(action.timeout) if action.HasField("timeout") else DEFAULT_ROUTE_TIMEOUT_MS
        self.timeout = timeout_ms / 1000 if timeout_ms > 0 else None
        # x-envoy-expected-rq-timeout-ms, formatted once
        self.timeout_header_value = str(timeout_ms)
        # max_grpc_timeout (deprecated in Envoy, what Istio sets): a gRPC request's grpc-timeout header,
        # capped by it (0: uncapped), is its route timeout. None: not set, the route timeout applies.
        self.max_grpc_timeout = _duration_ms(action.max_grpc_timeout) / 1000 if action.HasField(
            "max_grpc_timeout") else None
        self.grpc_timeout_offset = _duration_ms(action.grpc_timeout_offset) / 1000
        # upgrade_configs: upgrade type -> enabled on this route, over the connection manager's default
        self.upgrade_overrides: dict[str, bool] | None = None
        for index, upgrade in enumerate(action.upgrade_configs):
            entry = f"{join(field, 'upgrade_configs')}[{index}]"
            check_fields(upgrade, ("upgrade_type", "enabled"), entry)
            if self.upgrade_overrides is None:
                self.upgrade_overrides = {}
            enabled = upgrade.enabled.value if upgrade.HasField("enabled") else True
            self.upgrade_overrides[upgrade.upgrade_type.strip().lower()] = enabled

        if action.prefix_rewrite and action.HasField("regex_rewrite"):
            raise ConfigError("Specify only one of prefix_rewrite, regex_rewrite or path_rewrite_policy", field=field)
        require_header_safe(action.prefix_rewrite, join(field, "prefix_rewrite"))
        self._prefix_rewrite = wire(action.prefix_rewrite)
        if action.HasField("regex_rewrite"):
            self._regex_rewrite = RegexRewrite(action.regex_rewrite, join(field, "regex_rewrite"))

        host_rewrite = action.WhichOneof("host_rewrite_specifier")
        if host_rewrite == "host_rewrite_literal":
            require_header_safe(action.host_rewrite_literal, join(field, "host_rewrite_literal"))
            self._host_rewrite = wire(action.host_rewrite_literal)
        elif host_rewrite == "auto_host_rewrite":
            self.auto_host_rewrite = action.auto_host_rewrite.value
        elif host_rewrite == "host_rewrite_header":
            require_header_safe(action.host_rewrite_header, join(field, "host_rewrite_header"))
            self._host_rewrite_header = ascii_lower(wire(action.host_rewrite_header))
        elif host_rewrite == "host_rewrite_path_regex":
            self._host_rewrite_path_regex = RegexRewrite(
                action.host_rewrite_path_regex, join(field, "host_rewrite_path_regex")
            )
        self.hash_policy = HashPolicy.from_protos(action.hash_policy, join(field, "hash_policy"))
        self.priority = action.priority

    def _compile_weighted(self, weighted: message.Message, field: str) -> None:
        # total_weight is deprecated and Envoy ignores it: the sum of the weights is the total.
        check_fields(weighted, ("clusters", "header_name"), field, ignored=("total_weight",))
        clusters_field = join(field, "clusters")
        entries = tuple(WeightedClusterEntry(entry, f"{clusters_field}[{i}]")
                        for i, entry in enumerate(weighted.clusters))
        if not entries:
            raise ConfigError("at least one weighted cluster is required", field=clusters_field)
        total = sum(entry.weight for entry in entries)
        if total == 0:
            raise ConfigError("Sum of weights in the weighted_cluster must be greater than 0.", field=clusters_field)
        self._weighted = entries
        self._total_weight = total
        self._random_value_header = ascii_lower(wire(weighted.header_name))
        for entry in entries:
            if entry.name:
                self._weighted_by_name.setdefault(entry.name, entry)

    # --- per request ---------------------------------------------------------------------

    def per_filter_config(self, filter_name: str) -> object | None:
        """The parsed typed_per_filter_config for the HTTP filter named ``filter_name`` in
        http_filters: the route's own, else its virtual host's, else the route configuration's."""
        return self._filter_configs.get(filter_name)

    def matches(self, path: str, headers: HeaderMap, query: dict[str, str]) -> bool:
        """``path`` is :path without query/fragment; ``query`` from parse_query when needs_query."""
        return self._path_matches(path) and self.matches_beyond_path(headers, query)

    def matches_beyond_path(self, headers: HeaderMap, query: dict[str, str]) -> bool:
        for header_matches in self._header_matchers:
            if not header_matches(headers):
                return False
        for parameter_matches in self._query_matchers:
            if not parameter_matches(query):
                return False
        return True

    def upgrade_allowed(self, upgrade_type: str, default: bool) -> bool:
        """Whether this route takes an upgrade (Envoy's createUpgradeFilterChain): the route's
        ``upgrade_configs`` entry for the type when it has one (it can enable a type the connection
        manager does not list, or disable one it does), else ``default``, the connection manager's."""
        overrides = self.upgrade_overrides
        if overrides is None:
            return default
        return overrides.get(upgrade_type, default)

    def request_timeout(self, headers: HeaderMap) -> float | None:
        """The route timeout of this request (Envoy's FilterUtility::finalTimeout before x-envoy-*
        overrides): with max_grpc_timeout, a gRPC request's grpc-timeout less grpc_timeout_offset
        (when that leaves some), capped by max_grpc_timeout unless it is 0; None: no timeout."""
        if self.max_grpc_timeout is None or not is_grpc_request(headers):
            return self.timeout
        timeout = grpc_timeout(headers) or 0.0
        offset = self.grpc_timeout_offset
        if offset and offset < timeout:
            timeout -= offset
        cap = self.max_grpc_timeout
        if cap and (not timeout or timeout > cap):
            timeout = cap
        return timeout or None

    def select_cluster(self, headers: HeaderMap, random_value: int) -> tuple[str | None, WeightedClusterEntry | None]:
        """The upstream cluster name (None: not found) and the weighted entry that chose it."""
        if self._cluster:
            return self._cluster, None
        if self._cluster_header:
            return headers.get(self._cluster_header) or None, None
        if not self._weighted:
            return None, None
        entry = self._pick_weighted(headers, random_value)
        return entry.cluster_name(headers), entry

    def cluster_name(self, headers: HeaderMap, random_value: int) -> str | None:
        return self.select_cluster(headers, random_value)[0]

    @cython.locals(entry="WeightedClusterEntry", values=list)
    def _pick_weighted(self, headers: HeaderMap, random_value: int) -> WeightedClusterEntry:
        if self._random_value_header:
            # Envoy uses the header only when it has exactly one value that parses as uint64.
            values = headers.get_all(self._random_value_header)
            if len(values) == 1:
                from_header = simple_atoi(values[0], 0, UINT64_MAX)
                if from_header is not None:
                    random_value = from_header
        selected = random_value % self._total_weight
        end = 0
        for entry in self._weighted:
            end += entry.weight
            if selected < end:
                return entry
        return self._weighted[-1]  # unreachable: selected < total weight

    def referenced_clusters(self) -> set[str]:
        names = {entry.name for entry in self._weighted if entry.name}
        if self._cluster:
            names.add(self._cluster)
        # Envoy validates statically named mirror clusters too ("unknown shadow cluster")
        names.update(policy.cluster for policy in self.mirror_policies if policy.cluster)
        return names

    def hash_key(self, headers: HeaderMap, remote_ip: str) -> int | None:
        return None if self.hash_policy is None else self.hash_policy.hash_key(headers, remote_ip)

    def _weighted_entry(self, cluster_name: str | None,
                        weighted_entry: WeightedClusterEntry | None) -> WeightedClusterEntry | None:
        if weighted_entry is not None or not self._weighted or cluster_name is None:
            return weighted_entry
        return self._weighted_by_name.get(cluster_name)

    def finalize_request(
        self,
        headers: HeaderMap,
        info: StreamInfo | None,
        cluster_name: str | None = None,
        *,
        weighted_entry: WeightedClusterEntry | None = None,
        insert_envoy_original_path: bool = True,
    ) -> None:
        """Envoy's finalizeRequestHeaders for a cluster route, before forwarding upstream.

        Pass the chosen ``cluster_name`` (or the ``weighted_entry`` from select_cluster)
        so a weighted cluster's own header mutations run first, as in Envoy.
        """
        self.finalize_request_headers(headers, info, cluster_name, weighted_entry, insert_envoy_original_path)

    def finalize_request_headers(self, headers: HeaderMap, info: StreamInfo | None, cluster_name: str | None,
                                 weighted_entry: WeightedClusterEntry | None, insert_envoy_original_path: bool) -> None:
        """finalize_request with positional arguments: the router's per-request call, made at C level."""
        if self.kind != "cluster":
            return  # Envoy forwards nothing for redirects and direct responses
        entry = self._weighted_entry(cluster_name, weighted_entry)
        if entry is not None:
            if entry.request_mutation is not None:
                entry.request_mutation.apply(headers, info)
            if entry.host_rewrite:
                headers.set(":authority", entry.host_rewrite)
        apply_all(self._request_mutations, headers, info)
        if self._host_rewrite:
            headers.set(":authority", self._host_rewrite)
        elif self._host_rewrite_header:
            value = headers.get(self._host_rewrite_header)
            if value:
                headers.set(":authority", value)
        elif self._host_rewrite_path_regex is not None:
            headers.set(":authority", self._host_rewrite_path_regex.apply(remove_query_and_fragment(headers.path)))
        if self._prefix_rewrite or self._regex_rewrite is not None:
            original = headers.path
            new_path = self._rewritten_path(original, self._prefix_rewrite, self._regex_rewrite)
            if insert_envoy_original_path:
                headers.set(ENVOY_ORIGINAL_PATH, original)
            headers.set(":path", new_path)

    def _rewritten_path(self, path: str, prefix_rewrite: str, regex_rewrite: RegexRewrite | None) -> str:
        just_path = remove_query_and_fragment(path)
        if regex_rewrite is not None:
            return regex_rewrite.apply(just_path) + path[len(just_path) :]
        matched = len(just_path) if self._matched_prefix_length is None else self._matched_prefix_length
        return prefix_rewrite + path[matched:]

    def finalize_response(
        self,
        headers: HeaderMap,
        info: StreamInfo | None,
        cluster_name: str | None = None,
        *,
        weighted_entry: WeightedClusterEntry | None = None,
    ) -> None:
        """response_headers_to_add/remove: weighted entry first, then the levels in Envoy's order.

        Also for redirects and direct responses (Envoy finalizes those local replies too).
        """
        self.finalize_response_headers(headers, info, cluster_name, weighted_entry)

    def finalize_response_headers(self, headers: HeaderMap, info: StreamInfo | None, cluster_name: str | None,
                                  weighted_entry: WeightedClusterEntry | None) -> None:
        """finalize_response with positional arguments (the router's call)."""
        entry = self._weighted_entry(cluster_name, weighted_entry)
        if entry is not None and entry.response_mutation is not None:
            entry.response_mutation.apply(headers, info)
        apply_all(self._response_mutations, headers, info)

    def redirect(self, headers: HeaderMap, scheme: str) -> tuple[int, str]:
        """(status, Location) of a redirect route; ``scheme`` is the request's :scheme."""
        redirect = self._redirect
        if redirect is None:
            raise ValueError(f"route {self.name!r} is not a redirect")
        path = headers.path
        if redirect.prefix_rewrite or redirect.regex_rewrite is not None:
            path = self._rewritten_path(path, redirect.prefix_rewrite, redirect.regex_rewrite)
        return redirect.code, _new_uri(headers, scheme, redirect, path)

    def location(self, headers: HeaderMap, scheme: str) -> str | None:
        """The Location header Envoy sends: redirects, and direct responses with 201 or 3xx."""
        if self._redirect is not None:
            return self.redirect(headers, scheme)[1]
        if self.direct_response is not None:
            status = self.direct_response[0]
            if status == 201 or 300 <= status < 400:
                return _new_uri(headers, scheme, None, headers.path)
        return None


def _direct_response(msg: message.Message, field: str, max_body_bytes: int) -> tuple[int, bytes]:
    check_fields(msg, ("status", "body"), field)
    if not 200 <= msg.status < 600:
        raise ConfigError("status must be in [200, 600)", field=join(field, "status"))
    body = b""
    if msg.HasField("body"):
        body = _data_source(msg.body, join(field, "body"), max_body_bytes)
    return msg.status, body


def _data_source(msg: message.Message, field: str, max_bytes: int) -> bytes:
    check_fields(msg, ("filename", "inline_bytes", "inline_string", "environment_variable"), field)
    kind = msg.WhichOneof("specifier")
    if kind == "filename":
        try:
            with open(msg.filename, "rb") as handle:
                data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise ConfigError(f"cannot read response body file {msg.filename}: {exc.strerror}",
                              field=join(field, "filename")) from None
        if len(data) > max_bytes:
            raise ConfigError(f"response body file {msg.filename} is larger than the maximum of {max_bytes} bytes",
                              field=join(field, "filename"))
        return data
    if kind == "environment_variable":
        value = os.environ.get(msg.environment_variable)
        if value is None:
            raise ConfigError(f"Environment variable doesn't exist: {msg.environment_variable}",
                              field=join(field, "environment_variable"))
        data = value.encode("utf-8", "surrogateescape")
    elif kind == "inline_bytes":
        data = msg.inline_bytes
    elif kind == "inline_string":
        data = msg.inline_string.encode("utf-8")
    else:
        data = b""
    if len(data) > max_bytes:
        raise ConfigError(f"response body size is {len(data)} bytes; maximum is {max_bytes}", field=field)
    return data


class VirtualHost:
    if not cython.compiled:
        __slots__ = ("name", "routes", "needs_query", "_entries")

    def __init__(self, name: str, routes: tuple[Route, ...]) -> None:
        self.name = name
        self.routes = routes
        self.needs_query = any(route.needs_query for route in routes)
        # Flattened per route so that the loop in find() makes no method call for the
        # usual case-sensitive prefix and none at all for routes without extra matchers.
        self._entries = tuple(
            (route.plain_prefix, route._path_matches, route._header_matchers or route._query_matchers, route)
            for route in routes
        )

    @cython.locals(full_path=str, path=str, query=dict, prefix=str, route="Route")
    def find(self, headers: HeaderMap) -> Route | None:
        full_path = headers.get(":path")
        if full_path is None:
            return None  # every supported route needs a path (Envoy skips them all)
        path = remove_query_and_fragment(full_path)
        query = parse_query(full_path) if self.needs_query else _NO_QUERY
        for prefix, path_matches, has_more_matchers, route in self._entries:
            if prefix is not None:
                if not path.startswith(prefix):
                    continue
            elif not path_matches(path):
                continue
            if not has_more_matchers or route.matches_beyond_path(headers, query):
                return route
        return None


class RuntimeFractionVirtualHost(VirtualHost):
    """A virtual host with runtime_fraction routes. As in Envoy, one random value per lookup is
    shared by all of its routes (Envoy's stream id), so two routes at 30% and 50% take 30% and 20%
    of the traffic: the traffic-shifting pattern. Other virtual hosts draw nothing."""

    if not cython.compiled:
        __slots__ = ()

    @cython.locals(full_path=str, path=str, query=dict, prefix=str, route="Route")
    def find(self, headers: HeaderMap) -> Route | None:
        full_path = headers.get(":path")
        if full_path is None:
            return None
        path = remove_query_and_fragment(full_path)
        query = parse_query(full_path) if self.needs_query else _NO_QUERY
        random_value = _getrandbits(64)
        for prefix, path_matches, has_more_matchers, route in self._entries:
            fraction = route.runtime_fraction
            if fraction is not None and not fraction.enabled(random_value):
                continue
            if prefix is not None:
                if not path.startswith(prefix):
                    continue
            elif not path_matches(path):
                continue
            if not has_more_matchers or route.matches_beyond_path(headers, query):
                return route
        return None


_WildcardTable = tuple[tuple[int, dict[str, VirtualHost]], ...]


class RouteTable:
    """A compiled RouteConfiguration: ``find(headers)`` returns the first matching Route or None."""

    def __init__(
        self,
        *,
        name: str,
        exact: dict[str, VirtualHost],
        suffixes: _WildcardTable,
        prefixes: _WildcardTable,
        default: VirtualHost | None,
        virtual_hosts: tuple[VirtualHost, ...],
        validate_clusters: bool | None,
        strip_port: StripPort,
        listener_port: int | None,
        ignore_port_in_host_matching: bool,
    ) -> None:
        self.name = name
        self.virtual_hosts = virtual_hosts
        # The proto's validate_clusters (None: unset, so the HCM's default applies).
        self.validate_clusters = validate_clusters
        self.strip_port = strip_port
        self.listener_port = listener_port
        self._exact = exact
        self._suffixes = suffixes
        self._prefixes = prefixes
        self._default = default
        self._only_default = not exact and not suffixes and not prefixes
        self._ignore_port = ignore_port_in_host_matching

    @classmethod
    def from_proto(
        cls,
        config: message.Message,
        field: str = "route_config",
        *,
        strip_port: StripPort = "none",
        listener_port: int | None = None,
    ) -> RouteTable:
        """Validate and compile; raises ConfigError / UnsupportedFeature naming the field path.

        ``strip_port`` / ``listener_port`` mirror the HCM's strip_any_host_port ("any") and
        strip_matching_host_port ("matching": only a port equal to the listener's).
        """
        if strip_port not in ("none", "any", "matching"):
            raise ValueError(f"strip_port must be 'none', 'any' or 'matching', not {strip_port!r}")
        if strip_port == "matching" and listener_port is None:
            raise ValueError("strip_port='matching' needs the listener_port")
        check_fields(config, _ROUTE_CONFIGURATION_FIELDS, field)
        max_body_bytes = DEFAULT_MAX_DIRECT_RESPONSE_BODY_SIZE_BYTES
        if config.HasField("max_direct_response_body_size_bytes"):
            max_body_bytes = config.max_direct_response_body_size_bytes.value
        global_mutations = _level_mutations(config, field)
        most_specific_wins = config.most_specific_header_mutations_wins
        global_filter_configs = _per_filter_configs(config, field, _NO_FILTER_CONFIGS)
        global_mirror_policies = mirror_policies(config, field)

        exact: dict[str, VirtualHost] = {}
        suffixes: dict[int, dict[str, VirtualHost]] = {}
        prefixes: dict[int, dict[str, VirtualHost]] = {}
        default: VirtualHost | None = None
        virtual_hosts: list[VirtualHost] = []
        for index, vhost_msg in enumerate(config.virtual_hosts):
            vhost_field = f"{join(field, 'virtual_hosts')}[{index}]"
            vhost = _virtual_host(vhost_msg, vhost_field, global_mutations, most_specific_wins, max_body_bytes,
                                  global_filter_configs, global_mirror_policies)
            virtual_hosts.append(vhost)
            for domain_index, raw_domain in enumerate(vhost_msg.domains):
                domain_field = f"{join(vhost_field, 'domains')}[{domain_index}]"
                require_header_safe(raw_domain, domain_field)
                domain = ascii_lower(wire(raw_domain))
                duplicate = False
                if domain == "*":
                    if default is not None:
                        raise ConfigError(
                            f"Only a single wildcard domain is permitted in route {config.name}", field=domain_field
                        )
                    default = vhost
                elif domain.startswith("*"):
                    table = suffixes.setdefault(len(domain) - 1, {})
                    duplicate = domain[1:] in table
                    table.setdefault(domain[1:], vhost)
                elif domain.endswith("*"):
                    table = prefixes.setdefault(len(domain) - 1, {})
                    duplicate = domain[:-1] in table
                    table.setdefault(domain[:-1], vhost)
                else:
                    duplicate = domain in exact
                    exact.setdefault(domain, vhost)
                if duplicate:
                    raise ConfigError(
                        f"Only unique values for domains are permitted. Duplicate entry of domain {domain} "
                        f"in route {config.name}",
                        field=domain_field,
                    )
        return cls(
            name=config.name,
            exact=exact,
            suffixes=tuple(sorted(suffixes.items(), reverse=True)),
            prefixes=tuple(sorted(prefixes.items(), reverse=True)),
            default=default,
            virtual_hosts=tuple(virtual_hosts),
            validate_clusters=config.validate_clusters.value if config.HasField("validate_clusters") else None,
            strip_port=strip_port,
            listener_port=listener_port,
            ignore_port_in_host_matching=config.ignore_port_in_host_matching,
        )

    def referenced_clusters(self) -> set[str]:
        """Cluster names named statically (cluster, weighted_clusters) for validate_clusters."""
        names: set[str] = set()
        for vhost in self.virtual_hosts:
            for route in vhost.routes:
                names |= route.referenced_clusters()
        return names

    def normalize_host(self, headers: HeaderMap) -> None:
        """Strip the :authority port in place as the HCM does (strip_any/matching_host_port).

        find() applies the same stripping for matching, so calling this first is only
        needed for the upstream request to carry the stripped host, as in Envoy.
        """
        if self.strip_port == "none":
            return
        host = headers.get(":authority")
        if host is not None:
            stripped = strip_host_port(host, self.strip_port, self.listener_port)
            if stripped != host:
                headers.set(":authority", stripped)

    @cython.locals(host=str, colon=cython.Py_ssize_t, length=cython.Py_ssize_t, suffix_length=cython.Py_ssize_t,
                   prefix_length=cython.Py_ssize_t, table=dict, vhost="VirtualHost")
    def select_virtual_host(self, headers: HeaderMap) -> VirtualHost | None:
        if self._only_default:
            return self._default
        host = headers.get(":authority")
        if host is None:
            return None
        if self.strip_port != "none":
            host = strip_host_port(host, self.strip_port, self.listener_port)
        if self._ignore_port:
            colon = port_start(host)
            if colon >= 0:
                host = host[:colon]
        host = ascii_lower(host)
        vhost = self._exact.get(host)
        if vhost is not None:
            return vhost
        length = len(host)
        for suffix_length, table in self._suffixes:
            if suffix_length < length:
                vhost = table.get(host[length - suffix_length :])
                if vhost is not None:
                    return vhost
        for prefix_length, table in self._prefixes:
            if prefix_length < length:
                vhost = table.get(host[:prefix_length])
                if vhost is not None:
                    return vhost
        return self._default

    @cython.locals(vhost="VirtualHost")
    def find(self, headers: HeaderMap) -> Route | None:
        vhost = self.select_virtual_host(headers)
        return None if vhost is None else vhost.find(headers)


def _level_mutations(msg: message.Message, field: str) -> tuple[HeaderMutation | None, HeaderMutation | None]:
    request = HeaderMutation.from_protos(
        msg.request_headers_to_add, msg.request_headers_to_remove,
        add_field=join(field, "request_headers_to_add"), remove_field=join(field, "request_headers_to_remove"),
    )
    response = HeaderMutation.from_protos(
        msg.response_headers_to_add, msg.response_headers_to_remove,
        add_field=join(field, "response_headers_to_add"), remove_field=join(field, "response_headers_to_remove"),
    )
    return request, response


def _virtual_host(
    msg: message.Message,
    field: str,
    global_mutations: tuple[HeaderMutation | None, HeaderMutation | None],
    most_specific_wins: bool,
    max_body_bytes: int,
    global_filter_configs: Mapping[str, object] = _NO_FILTER_CONFIGS,
    global_mirror_policies: tuple[MirrorPolicy, ...] = (),
) -> VirtualHost:
    check_fields(msg, _VIRTUAL_HOST_FIELDS, field)
    if not msg.name:
        raise ConfigError("virtual host name must not be empty", field=join(field, "name"))
    if not msg.domains:
        raise ConfigError("at least one domain is required", field=join(field, "domains"))
    vhost_mutations = _level_mutations(msg, field)
    vhost_filter_configs = _per_filter_configs(msg, field, global_filter_configs)
    vhost_mirror_policies = mirror_policies(msg, field, global_mirror_policies)
    vhost_retry = VirtualHostRetryOptions(msg, field)
    routes = tuple(
        Route(route, f"{join(field, 'routes')}[{i}]", msg.name, vhost_mutations, global_mutations,
              most_specific_wins, max_body_bytes, vhost_filter_configs,
              inherited_mirror_policies=vhost_mirror_policies, vhost_retry=vhost_retry)
        for i, route in enumerate(msg.routes)
    )
    if any(route.runtime_fraction is not None for route in routes):
        return RuntimeFractionVirtualHost(msg.name, routes)
    return VirtualHost(msg.name, routes)
