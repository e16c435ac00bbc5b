"""RDS: VirtualService HTTP routes -> Envoy routes, virtual hosts and route configurations.

Follows istio/istio pilot/pkg/networking/core/route/route.go: routes in VirtualService order,
one Envoy route per match (a route without match is one catch-all route, and nothing after a
catch-all is generated), matches filtered by port, sourceLabels, sourceNamespace and gateways
for this proxy; a service without a VirtualService gets Istio's "default" route.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from tulle.controlplane.model import Resource, Service, ServicePort
from tulle.controlplane.translate.names import (
    domain_with_port,
    inbound_cluster_name,
    is_http,
    labels_match,
    outbound_cluster_name,
    virtual_host_domains,
    virtual_host_name,
)
from tulle.controlplane.translate.options import TranslateOptions
from tulle.controlplane.translate.policy import consistent_hash_for_destination, consistent_hash_for_service
from tulle.controlplane.translate.scope import MESH_GATEWAY, ProxyScope
from tulle.controlplane.translate.values import (
    duration,
    duration_seconds,
    fractional_percent,
    grpc_status,
    integer_percent,
)

FAULT_FILTER = "envoy.filters.http.fault"
CORS_FILTER = "envoy.filters.http.cors"
FAULT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
CORS_POLICY_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
PREVIOUS_HOSTS_TYPE = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
PREVIOUS_PRIORITIES_TYPE = (
    "type.googleapis.com/envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig"
)
DEFAULT_ROUTE_NAME = "default"
BLOCK_ALL = "block_all"
HTTP_PROXY_ROUTE_NAME = "http_proxy"  # Istio's RDSHttpProxy
MAX_DIRECT_RESPONSE_BODY_BYTES = 1024 * 1024  # Istio raises Envoy's 4 KiB to its validation limit
DEFAULT_RETRY_ON = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
# Istio's EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY (default true): a 503 may come from a server that
# already acted on the request, so the default policy lists no status code; its
# "retriable-status-codes" condition then matches nothing.
DEFAULT_RETRIABLE_STATUS_CODES: tuple[int, ...] = ()
# Istio's inbound default (ENABLE_INBOUND_RETRY_POLICY): retry what never reached the app.
INBOUND_RETRY_POLICY = {"retry_on": "reset-before-request", "num_retries": 2}
NO_TIMEOUT = "0s"

# Go's http.StatusText: a retryOn part that names a known status code is a retriable code.
HTTP_STATUS_CODES = frozenset(int(status) for status in HTTPStatus)
GRPC_PROTOCOLS = frozenset({"GRPC", "GRPC-WEB"})  # Istio's protocol.IsGRPC


# --- matches ---------------------------------------------------------------------------------


def string_matcher(match: dict[str, Any] | None) -> dict[str, Any] | None:
    """Istio StringMatch -> envoy.type.matcher.v3.StringMatcher."""
    match = match or {}
    if "exact" in match:
        return {"exact": str(match["exact"])}
    if "prefix" in match:
        return {"prefix": str(match["prefix"])}
    if "regex" in match:
        return {"safe_regex": {"regex": str(match["regex"])}}
    return None


def _present_match(match: dict[str, Any] | None) -> bool:
    """An empty match, or the regex "*" (not RE2: Istio reads it as "any value"), is presence."""
    return not match or (set(match) == {"regex"} and match["regex"] == "*")


def header_matcher(name: str, match: dict[str, Any] | None, *, invert: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if _present_match(match):
        out["present_match"] = True
    else:
        matcher = string_matcher(match)
        if matcher is not None:
            out["string_match"] = matcher
    if invert:
        out["invert_match"] = True
        if not _present_match(match):
            out["treat_missing_header_as_empty"] = True
    return out


def query_parameter_matcher(name: str, match: dict[str, Any] | None) -> dict[str, Any]:
    if _present_match(match):
        return {"name": name, "present_match": True}
    matcher = string_matcher(match)
    return {"name": name, "string_match": matcher} if matcher else {"name": name}


def route_match(match: dict[str, Any] | None) -> dict[str, Any]:
    """HTTPMatchRequest -> RouteMatch (uri, headers, withoutHeaders, method, authority, scheme, queryParams)."""
    out: dict[str, Any] = {"prefix": "/"}
    if match is None:
        return out
    headers = [header_matcher(name, value) for name, value in (match.get("headers") or {}).items()]
    headers += [header_matcher(name, value, invert=True) for name, value in (match.get("withoutHeaders") or {}).items()]
    headers.sort(key=lambda matcher: matcher["name"])
    uri = match.get("uri") or {}
    if "exact" in uri:
        out = {"path": str(uri["exact"])}
    elif "prefix" in uri:
        out = {"prefix": str(uri["prefix"])}
    elif "regex" in uri:
        out = {"safe_regex": {"regex": str(uri["regex"])}}
    out["case_sensitive"] = not bool(match.get("ignoreUriCase"))
    for pseudo_header, key in ((":method", "method"), (":authority", "authority"), (":scheme", "scheme")):
        if match.get(key) is not None:
            headers.append(header_matcher(pseudo_header, match[key]))
    if headers:
        out["headers"] = headers
    query = [query_parameter_matcher(name, value) for name, value in sorted((match.get("queryParams") or {}).items())]
    if query:
        out["query_parameters"] = query
    return out


def is_catch_all(route: dict[str, Any]) -> bool:
    match = route["match"]
    path_catch_all = match.get("prefix") == "/" or (match.get("safe_regex") or {}).get("regex") == ".*"
    return path_catch_all and not match.get("headers") and not match.get("query_parameters")


def source_matches(match: dict[str, Any] | None, scope: ProxyScope) -> bool:
    """Whether this proxy sends the traffic a match describes (gateways, sourceLabels, sourceNamespace)."""
    if match is None:
        return True
    gateways = match.get("gateways")
    if gateways:
        return MESH_GATEWAY in gateways
    if not labels_match(match.get("sourceLabels"), scope.proxy_labels):
        return False
    namespace = match.get("sourceNamespace")
    return not namespace or namespace == scope.proxy.namespace


# --- header operations ---------------------------------------------------------------------


def _is_pseudo_or_host(name: str) -> bool:
    return name.startswith(":") or name.lower() == "host"


def _is_authority(name: str) -> bool:
    return name.lower() in (":authority", "host")


@dataclass
class HeaderOperations:
    request_add: list[dict[str, Any]] = field(default_factory=list)
    request_remove: list[str] = field(default_factory=list)
    response_add: list[dict[str, Any]] = field(default_factory=list)
    response_remove: list[str] = field(default_factory=list)
    authority: str = ""

    def apply(self, target: dict[str, Any]) -> None:
        for key, values in (
            ("request_headers_to_add", self.request_add), ("request_headers_to_remove", self.request_remove),
            ("response_headers_to_add", self.response_add), ("response_headers_to_remove", self.response_remove),
        ):
            if values:
                target.setdefault(key, []).extend(values)


def _header_values(headers: dict[str, Any] | None, append: bool) -> tuple[list[dict[str, Any]], str]:
    """set -> OVERWRITE_IF_EXISTS_OR_ADD, add -> APPEND_IF_EXISTS_OR_ADD; sorted by name; the
    authority (":authority"/"host") becomes a host rewrite instead."""
    options, authority = [], ""
    for name, value in sorted((headers or {}).items()):
        if _is_authority(name):
            authority = str(value)
        if _is_pseudo_or_host(name):
            continue
        options.append({
            "header": {"key": name, "value": str(value)},
            "append_action": "APPEND_IF_EXISTS_OR_ADD" if append else "OVERWRITE_IF_EXISTS_OR_ADD",
        })
    return options, authority


def header_operations(headers: dict[str, Any] | None) -> HeaderOperations:
    request = (headers or {}).get("request") or {}
    response = (headers or {}).get("response") or {}
    request_set, set_authority = _header_values(request.get("set"), append=False)
    request_add, add_authority = _header_values(request.get("add"), append=True)
    response_set, _ = _header_values(response.get("set"), append=False)
    response_add, _ = _header_values(response.get("add"), append=True)
    return HeaderOperations(
        request_add=request_set + request_add,
        request_remove=[name for name in request.get("remove") or [] if not _is_pseudo_or_host(name)],
        response_add=response_set + response_add,
        response_remove=[name for name in response.get("remove") or [] if not _is_pseudo_or_host(name)],
        authority=set_authority or add_authority,
    )


# --- route actions -----------------------------------------------------------------------------


def destination_port(scope: ProxyScope, destination: dict[str, Any], hostname: str, listen_port: int) -> int:
    """The port a destination names, else the service's only port, else the listener's."""
    number = (destination.get("port") or {}).get("number")
    if number:
        return int(number)
    service = scope.service(hostname)
    if service is not None and len(service.ports) == 1:
        return service.ports[0].port
    return listen_port


def destination_cluster(scope: ProxyScope, destination: dict[str, Any], namespace: str, listen_port: int) -> str:
    hostname = scope.resolve(str(destination.get("host") or ""), namespace)
    port = destination_port(scope, destination, hostname, listen_port)
    return outbound_cluster_name(port, hostname, str(destination.get("subset") or ""))


def hash_policy(consistent_hash: dict[str, Any] | None) -> dict[str, Any] | None:
    """DestinationRule consistentHash -> the route's hash policy (header, cookie, source IP, query)."""
    if not consistent_hash:
        return None
    if consistent_hash.get("httpHeaderName"):
        return {"header": {"header_name": str(consistent_hash["httpHeaderName"])}}
    if consistent_hash.get("httpCookie"):
        cookie = consistent_hash["httpCookie"]
        out: dict[str, Any] = {"name": str(cookie.get("name") or "")}
        if cookie.get("ttl") is not None:
            out["ttl"] = duration(cookie["ttl"])
        if cookie.get("path"):
            out["path"] = str(cookie["path"])
        return {"cookie": out}
    if consistent_hash.get("useSourceIp"):
        return {"connection_properties": {"source_ip": True}}
    if consistent_hash.get("httpQueryParameterName"):
        return {"query_parameter": {"name": str(consistent_hash["httpQueryParameterName"])}}
    return None


def _destination_hash(scope: ProxyScope, destination: dict[str, Any], namespace: str) -> dict[str, Any] | None:
    hostname = scope.resolve(str(destination.get("host") or ""), namespace)
    service = scope.service(hostname)
    rule = scope.destination_rule_for(hostname, service.namespace if service else namespace)
    if rule is None:
        return None
    number = (destination.get("port") or {}).get("number")
    return consistent_hash_for_destination(rule.spec, int(number) if number else None,
                                           str(destination.get("subset") or ""))


def retry_policy(
    retries: dict[str, Any] | None, consistent_hash: bool, lacks: frozenset[str] = frozenset()
) -> dict[str, Any] | None:
    """Istio's retry.ConvertPolicy: its default policy, overridden by the VirtualService's
    retries; ``attempts: 0`` turns retries off. With consistent hashing a retry must stay on
    the same host, so the previous-hosts predicate is left out."""
    policy: dict[str, Any] = {"retry_on": DEFAULT_RETRY_ON, "num_retries": 2, "host_selection_retry_max_attempts": 5}
    if DEFAULT_RETRIABLE_STATUS_CODES:
        policy["retriable_status_codes"] = list(DEFAULT_RETRIABLE_STATUS_CODES)
    if not consistent_hash:
        policy["retry_host_predicate"] = [
            {"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {"@type": PREVIOUS_HOSTS_TYPE}}
        ]
    if retries is None:
        return policy
    attempts = int(retries.get("attempts") or 0)
    if attempts <= 0:
        return None
    policy["num_retries"] = attempts
    if retries.get("retryOn"):
        conditions, codes = [], []
        for part in str(retries["retryOn"]).split(","):
            part = part.strip()
            if part.isdigit() and int(part) in HTTP_STATUS_CODES:
                codes.append(int(part))
            elif part:
                conditions.append(part)
        policy["retry_on"] = ",".join(conditions)
        policy.pop("retriable_status_codes", None)
        if codes:
            policy["retriable_status_codes"] = codes
            if "retriable-status-codes" not in policy["retry_on"]:
                policy["retry_on"] = ",".join([*conditions, "retriable-status-codes"])
    if retries.get("perTryTimeout") is not None:
        policy["per_try_timeout"] = duration(retries["perTryTimeout"])
    if retries.get("retryIgnorePreviousHosts") is not None:
        if retries["retryIgnorePreviousHosts"]:
            policy["retry_host_predicate"] = [
                {"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {"@type": PREVIOUS_HOSTS_TYPE}}
            ]
        else:
            policy.pop("retry_host_predicate", None)
    if retries.get("retryRemoteLocalities") and "retry_priority" not in lacks:
        policy["retry_priority"] = {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {"@type": PREVIOUS_PRIORITIES_TYPE, "update_frequency": 2},
        }
    if retries.get("backoff") is not None:
        policy["retry_back_off"] = {"base_interval": duration(retries["backoff"])}
    return policy


def fault_filter_config(fault: dict[str, Any] | None) -> dict[str, Any] | None:
    """HTTPFaultInjection -> envoy.extensions.filters.http.fault.v3.HTTPFault (None: nothing to inject)."""
    if not fault:
        return None
    out: dict[str, Any] = {"@type": FAULT_TYPE}
    delay = fault.get("delay") or {}
    if delay.get("fixedDelay") is not None:  # exponentialDelay: not supported by Istio either
        percentage = (fractional_percent(float((delay.get("percentage") or {}).get("value", 0)))
                      if delay.get("percentage") is not None else integer_percent(int(delay.get("percent") or 0)))
        out["delay"] = {"fixed_delay": duration(delay["fixedDelay"]), "percentage": percentage}
    abort = fault.get("abort") or {}
    abort_out: dict[str, Any] = {}
    if abort.get("httpStatus") is not None:
        abort_out["http_status"] = int(abort["httpStatus"])
    elif abort.get("grpcStatus") is not None:
        abort_out["grpc_status"] = grpc_status(abort["grpcStatus"])
    if abort_out:
        if abort.get("percentage") is not None:
            abort_out["percentage"] = fractional_percent(float(abort["percentage"].get("value", 0)))
        out["abort"] = abort_out
    return out if len(out) > 1 else None


def cors_filter_config(cors: dict[str, Any]) -> dict[str, Any]:
    """CorsPolicy -> envoy.extensions.filters.http.cors.v3.CorsPolicy (per route)."""
    out: dict[str, Any] = {"@type": CORS_POLICY_TYPE}
    if cors.get("allowOrigins") is not None:
        out["allow_origin_string_match"] = [m for m in (string_matcher(o) for o in cors["allowOrigins"]) if m]
    elif cors.get("allowOrigin") is not None:
        out["allow_origin_string_match"] = [{"exact": str(origin)} for origin in cors["allowOrigin"]]
    for key, target in (("allowMethods", "allow_methods"), ("allowHeaders", "allow_headers"),
                        ("exposeHeaders", "expose_headers")):
        if cors.get(key):
            out[target] = ",".join(str(value) for value in cors[key])
    if cors.get("maxAge") is not None:
        out["max_age"] = str(int(duration_seconds(cors["maxAge"])))
    if cors.get("allowCredentials") is not None:
        out["allow_credentials"] = bool(cors["allowCredentials"])
    out["filter_enabled"] = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    out["forward_not_matching_preflights"] = cors.get("unmatchedPreflights") != "IGNORE"
    return out


def _mirror_fraction(percentage: Any, legacy_percent: Any) -> dict[str, Any] | None:
    """None: no mirroring (an explicit 0%); unset: 100%."""
    if percentage is not None:
        value = float(percentage.get("value", 0))
        return {"default_value": fractional_percent(value)} if value > 0 else None
    if legacy_percent is not None:
        value = int(legacy_percent.get("value", 0) if isinstance(legacy_percent, dict) else legacy_percent)
        return {"default_value": integer_percent(value)} if value > 0 else None
    return {"default_value": integer_percent(100)}


def mirror_policies(scope: ProxyScope, http: dict[str, Any], namespace: str, listen_port: int) -> list[dict[str, Any]]:
    mirrors: list[tuple[dict[str, Any], dict[str, Any] | None]] = []
    if http.get("mirror"):
        mirrors.append((http["mirror"], _mirror_fraction(http.get("mirrorPercentage"), http.get("mirrorPercent"))))
    for mirror in http.get("mirrors") or []:
        if mirror.get("destination"):
            mirrors.append((mirror["destination"], _mirror_fraction(mirror.get("percentage"), None)))
    return [
        {"cluster": destination_cluster(scope, destination, namespace, listen_port), "runtime_fraction": fraction,
         "trace_sampled": False}
        for destination, fraction in mirrors if fraction is not None
    ]


def redirect_action(redirect: dict[str, Any], listen_port: int) -> dict[str, Any] | None:
    codes = {None: "MOVED_PERMANENTLY", 0: "MOVED_PERMANENTLY", 301: "MOVED_PERMANENTLY", 302: "FOUND",
             303: "SEE_OTHER", 307: "TEMPORARY_REDIRECT", 308: "PERMANENT_REDIRECT"}
    code = redirect.get("redirectCode")
    if (int(code) if code is not None else None) not in codes:
        return None  # Istio drops a route with a redirect code Envoy cannot send
    out: dict[str, Any] = {}
    if redirect.get("authority"):
        out["host_redirect"] = str(redirect["authority"])
    if redirect.get("uri"):
        out["path_redirect"] = str(redirect["uri"])
    if redirect.get("scheme"):
        out["scheme_redirect"] = str(redirect["scheme"])
    port = 0
    if redirect.get("port"):
        port = int(redirect["port"])
    elif redirect.get("derivePort") == "FROM_REQUEST_PORT":
        port = listen_port  # routes are built per listener port, so the request's port is known
    if redirect.get("port") or redirect.get("derivePort"):
        scheme = redirect.get("scheme") or "http"
        if (port, scheme) in ((80, "http"), (443, "https")):
            port = 0
        if port:
            out["port_redirect"] = port
    response_code = codes[int(code) if code is not None else None]
    if response_code != "MOVED_PERMANENTLY":
        out["response_code"] = response_code
    return out


def direct_response_action(direct: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"status": int(direct["status"])}
    body = direct.get("body") or {}
    if body.get("string") is not None:
        out["body"] = {"inline_string": str(body["string"])}
    elif body.get("bytes") is not None:
        out["body"] = {"inline_bytes": str(body["bytes"])}  # base64 in both Istio's YAML and protobuf JSON
    return out


def _route_action(
    scope: ProxyScope, resource: Resource, http: dict[str, Any], listen_port: int, route: dict[str, Any],
    authority: str,
) -> dict[str, Any]:
    namespace = resource.namespace
    action: dict[str, Any] = {}
    destinations = list(http.get("route") or [])
    consistent = False
    if len(destinations) == 1:
        destination = destinations[0].get("destination") or {}
        action["cluster"] = destination_cluster(scope, destination, namespace, listen_port)
        operations = header_operations(destinations[0].get("headers"))
        operations.apply(route)
        if operations.authority and not authority:
            authority = operations.authority
        chosen_hash = hash_policy(_destination_hash(scope, destination, namespace))
        if chosen_hash is not None:
            action["hash_policy"] = [chosen_hash]
            consistent = True
    else:
        weighted = []
        hashes = []
        for entry in destinations:
            if int(entry.get("weight") or 0) == 0:
                continue  # a 0 weight among several destinations gets no traffic at all
            destination = entry.get("destination") or {}
            cluster: dict[str, Any] = {
                "name": destination_cluster(scope, destination, namespace, listen_port),
                "weight": int(entry["weight"]),
            }
            operations = header_operations(entry.get("headers"))
            operations.apply(cluster)
            if operations.authority:
                cluster["host_rewrite_literal"] = operations.authority
            weighted.append(cluster)
            chosen_hash = hash_policy(_destination_hash(scope, destination, namespace))
            if chosen_hash is not None:
                hashes.append(chosen_hash)
        action["weighted_clusters"] = {"clusters": weighted}
        if hashes:
            action["hash_policy"] = hashes
    rewrite = http.get("rewrite") or {}
    if rewrite.get("uriRegexRewrite"):
        regex_rewrite = rewrite["uriRegexRewrite"]
        action["regex_rewrite"] = {"pattern": {"regex": str(regex_rewrite.get("match") or "")},
                                   "substitution": str(regex_rewrite.get("rewrite") or "")}
    elif rewrite.get("uri"):
        action["prefix_rewrite"] = str(rewrite["uri"])
    if rewrite.get("authority"):
        authority = str(rewrite["authority"])
    if authority:
        action["host_rewrite_literal"] = authority
    set_timeout(action, http.get("timeout"), scope.options)
    retries = http.get("retries")
    if retries is not None or scope.options.default_http_retries:
        policy = retry_policy(retries, consistent, scope.options.proxy_lacks)
        if policy is not None:
            action["retry_policy"] = policy
    mirrors = mirror_policies(scope, http, namespace, listen_port)
    if mirrors:
        action["request_mirror_policies"] = mirrors
    return action


def set_timeout(action: dict[str, Any], timeout: Any, options: TranslateOptions) -> None:
    """Istio's setTimeout: the VirtualService's timeout, else none (0s: Envoy's 15 s default is
    off); a gRPC client's grpc-timeout header is honoured, capped by that timeout."""
    action["timeout"] = duration(timeout) if timeout is not None else NO_TIMEOUT
    if "max_grpc_timeout" not in options.proxy_lacks:
        action["max_grpc_timeout"] = action["timeout"]


def translate_route(
    scope: ProxyScope, resource: Resource, http: dict[str, Any], match: dict[str, Any] | None, listen_port: int
) -> dict[str, Any] | None:
    """One HTTPRoute x one of its matches -> an Envoy route; None when it does not apply here."""
    if match is not None and match.get("port") and int(match["port"]) != listen_port:
        return None
    if not source_matches(match, scope):
        return None
    name = str(http.get("name") or "")
    if match is not None and match.get("name"):
        name = f"{name}.{match['name']}"
    route: dict[str, Any] = {}
    if name:
        route["name"] = name
    route["match"] = route_match(match)
    operations = header_operations(http.get("headers"))
    operations.apply(route)
    if http.get("redirect"):
        redirect = redirect_action(http["redirect"], listen_port)
        if redirect is None:
            return None
        route["redirect"] = redirect
    elif http.get("directResponse"):
        route["direct_response"] = direct_response_action(http["directResponse"])
    elif http.get("route"):
        route["route"] = _route_action(scope, resource, http, listen_port, route, operations.authority)
    else:
        return None  # delegate VirtualServices are not supported yet
    per_filter: dict[str, Any] = {}
    fault = fault_filter_config(http.get("fault"))
    if fault is not None:
        per_filter[FAULT_FILTER] = fault
    if http.get("corsPolicy"):
        per_filter[CORS_FILTER] = cors_filter_config(http["corsPolicy"])
    if per_filter:
        route["typed_per_filter_config"] = per_filter
    return route


def virtual_service_routes(scope: ProxyScope, resource: Resource, listen_port: int) -> list[dict[str, Any]]:
    """All routes a VirtualService gives one listener port, stopping after a catch-all."""
    routes: list[dict[str, Any]] = []
    for http in resource.spec.get("http") or []:
        matches = http.get("match") or [None]
        catch_all = not http.get("match")
        for match in matches:
            route = translate_route(scope, resource, http, match, listen_port)
            if route is None:
                continue
            routes.append(route)
            if is_catch_all(route):
                catch_all = True
                break
        if catch_all:
            break
    return routes


def default_route(scope: ProxyScope, service: Service, port: ServicePort) -> dict[str, Any]:
    """Istio's route for a service without VirtualService: everything to its cluster."""
    action: dict[str, Any] = {"cluster": outbound_cluster_name(port.port, service.hostname)}
    set_timeout(action, None, scope.options)
    rule = scope.destination_rule_for(service.hostname, service.namespace)
    chosen_hash = hash_policy(consistent_hash_for_service(rule.spec if rule else None, port.port))
    if chosen_hash is not None:
        action["hash_policy"] = [chosen_hash]
    if scope.options.default_http_retries:
        action["retry_policy"] = retry_policy(None, consistent_hash=False)
    return {"name": DEFAULT_ROUTE_NAME, "match": {"prefix": "/"}, "route": action}


# --- virtual hosts and route configurations ---------------------------------------------------


def service_routes(scope: ProxyScope, service: Service, port: ServicePort) -> list[dict[str, Any]]:
    resource = scope.virtual_service_for(service.hostname)
    if resource is not None:
        routes = virtual_service_routes(scope, resource, port.port)
        if routes:
            return routes
    return [default_route(scope, service, port)]


def http_services_on_port(scope: ProxyScope, port_number: int) -> list[tuple[Service, ServicePort]]:
    found = []
    for service in scope.services:
        for port in service.ports:
            if port.port == port_number and is_http(port.protocol):
                found.append((service, port))
    return found


def virtual_hosts_for_port(scope: ProxyScope, port_number: int) -> list[dict[str, Any]]:
    virtual_hosts = []
    for service, port in http_services_on_port(scope, port_number):
        virtual_hosts.append({
            "name": virtual_host_name(service.hostname, port.port),
            "domains": virtual_host_domains(service.hostname, port.port, scope.proxy.namespace, scope.domain_suffix,
                                            service.addresses),
            "routes": service_routes(scope, service, port),
        })
    return virtual_hosts


def block_all_virtual_host() -> dict[str, Any]:
    """Unknown hosts get a 502 (Istio's REGISTRY_ONLY): Tulle has no passthrough cluster."""
    return {"name": BLOCK_ALL, "domains": ["*"],
            "routes": [{"name": BLOCK_ALL, "match": {"prefix": "/"}, "direct_response": {"status": 502}}]}


def _dedupe_domains(virtual_hosts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A domain may appear in one virtual host only (Envoy refuses duplicates): the first keeps it."""
    seen: set[str] = set()
    kept = []
    for virtual_host in virtual_hosts:
        domains = [domain for domain in virtual_host["domains"] if domain.lower() not in seen]
        seen.update(domain.lower() for domain in domains)
        if domains:
            kept.append({**virtual_host, "domains": domains})
    return kept


def route_configuration(name: str, virtual_hosts: list[dict[str, Any]]) -> dict[str, Any]:
    ordered = _dedupe_domains(sorted(virtual_hosts, key=lambda virtual_host: virtual_host["name"]))
    return {
        "name": name,
        "virtual_hosts": [*ordered, block_all_virtual_host()],
        "validate_clusters": False,
        "max_direct_response_body_size_bytes": MAX_DIRECT_RESPONSE_BODY_BYTES,
    }


def outbound_route_configuration(scope: ProxyScope, port_number: int) -> dict[str, Any]:
    """RouteConfiguration "<port>": one virtual host per service on that port."""
    return route_configuration(str(port_number), virtual_hosts_for_port(scope, port_number))


def forward_proxy_route_configuration(scope: ProxyScope, port_numbers: list[int]) -> dict[str, Any]:
    """RouteConfiguration "http_proxy" for HTTP_PROXY clients: every HTTP service on every port.

    The Host of an absolute-form request carries the port unless it is 80, so only port 80
    keeps the bare names (Istio's mergeAllVirtualHosts).
    """
    virtual_hosts = []
    for port_number in port_numbers:
        for virtual_host in virtual_hosts_for_port(scope, port_number):
            if port_number != 80:
                suffix = f":{port_number}"
                virtual_host["domains"] = [d for d in virtual_host["domains"] if d.endswith(suffix)]
            virtual_hosts.append(virtual_host)
    return route_configuration(HTTP_PROXY_ROUTE_NAME, virtual_hosts)


def inbound_route(options: TranslateOptions, cluster: str, port: ServicePort) -> dict[str, Any]:
    """Istio's BuildDefaultHTTPInboundRoute: no timeout, no stream duration limit (a gRPC client's
    grpc-timeout still applies) and, for HTTP but not gRPC, retries of requests reset before
    they reached the app."""
    action: dict[str, Any] = {"cluster": cluster, "timeout": NO_TIMEOUT}
    action["max_stream_duration"] = {"max_stream_duration": NO_TIMEOUT, "grpc_timeout_header_max": NO_TIMEOUT}
    if options.default_http_retries and port.protocol.upper() not in GRPC_PROTOCOLS:
        action["retry_policy"] = dict(INBOUND_RETRY_POLICY)
    return {"name": DEFAULT_ROUTE_NAME, "match": {"prefix": "/"}, "route": action}


def inbound_route_configuration(scope: ProxyScope, name: str) -> dict[str, Any] | None:
    """The inline route table of the inbound listener, None when the workload serves no HTTP.

    Without iptables the original destination port is unknown, so the Host's port picks the
    workload port (``*:<service port>``, ``*:<workload port>``); the lowest port also takes
    any other Host.
    """
    virtual_hosts = []
    for inbound in scope.inbound_ports():
        if not is_http(inbound.port.protocol):
            continue
        domains = list(dict.fromkeys(domain_with_port("*", n) for n in (inbound.port.port, inbound.workload_port)))
        if not virtual_hosts:
            domains.append("*")
        virtual_hosts.append({
            "name": f"inbound|http|{inbound.workload_port}",
            "domains": domains,
            "routes": [inbound_route(scope.options, inbound_cluster_name(inbound.workload_port), inbound.port)],
        })
    if not virtual_hosts:
        return None
    return {"name": name, "virtual_hosts": _dedupe_domains(virtual_hosts), "validate_clusters": False}


def http_filters_needed(route_configurations: list[dict[str, Any]]) -> set[str]:
    """The per-route filters (fault, CORS) some route relies on: the HCM must carry them."""
    needed: set[str] = set()
    for configuration in route_configurations:
        for virtual_host in configuration["virtual_hosts"]:
            for route in virtual_host["routes"]:
                needed.update(route.get("typed_per_filter_config") or {})
    return needed
