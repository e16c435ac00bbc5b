"""Extension factories by the full proto type name of their ``typed_config``.

Envoy selects an extension by the type of its typed_config (the ``name`` is a
human label). A type that is a valid Envoy API but not in these tables is
refused as an unsupported feature, naming the extension.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# type name -> "module:attribute" of a factory(proto, field_path, FactoryContext)
# imported lazily so that validating a config does not import every filter.
NETWORK_FILTERS: dict[str, str] = {
    "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy":
        "tulle.filters.network.tcp_proxy.config:TcpProxyFactory",
    "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager":
        "tulle.filters.network.http_connection_manager.config:HttpConnectionManagerFactory",
    "envoy.extensions.filters.network.local_ratelimit.v3.LocalRateLimit":
        "tulle.filters.network.local_ratelimit.config:LocalRateLimitFactory",
}

HTTP_FILTERS: dict[str, str] = {
    "envoy.extensions.filters.http.router.v3.Router": "tulle.filters.http.router.config:RouterFactory",
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit":
        "tulle.filters.http.local_ratelimit.config:LocalRateLimitFactory",
    "envoy.extensions.filters.http.fault.v3.HTTPFault": "tulle.filters.http.fault.config:FaultFactory",
    "envoy.extensions.filters.http.adaptive_concurrency.v3.AdaptiveConcurrency":
        "tulle.filters.http.adaptive_concurrency.config:AdaptiveConcurrencyFactory",
    "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig": "tulle.filters.http.grpc_stats.config:GrpcStatsFactory",
    "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb": "tulle.filters.http.grpc_web.config:GrpcWebFactory",
    "envoy.extensions.filters.http.cors.v3.Cors": "tulle.filters.http.cors.config:CorsFactory",
    "envoy.extensions.filters.http.compressor.v3.Compressor":
        "tulle.filters.http.compressor.config:CompressorFactory",
    "envoy.extensions.filters.http.decompressor.v3.Decompressor":
        "tulle.filters.http.decompressor.config:DecompressorFactory",
}

# typed_per_filter_config (route, virtual host, route configuration): type name -> "module:attribute"
# of a parser(proto, field_path) whose result a filter reads with route.per_filter_config(<its name
# in http_filters>). Parsed once at config time; a type absent here is refused where it appears.
PER_ROUTE_FILTER_CONFIGS: dict[str, str] = {
    "envoy.extensions.filters.http.fault.v3.HTTPFault": "tulle.filters.http.fault.config:parse_per_route_config",
    "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit":
        "tulle.filters.http.local_ratelimit.config:parse_per_route_config",
    "envoy.extensions.filters.http.cors.v3.CorsPolicy": "tulle.filters.http.cors.config:parse_per_route_config",
}

# Bootstrap overload_manager resource monitors: type name -> "module:attribute" of a
# factory(proto, field_path, ServerState) returning a monitor (tulle.overload.monitors).
RESOURCE_MONITORS: dict[str, str] = {
    "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig": "tulle.overload.monitors:fixed_heap",
    "envoy.extensions.resource_monitors.injected_resource.v3.InjectedResourceConfig":
        "tulle.overload.monitors:injected_resource",
    "envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig":
        "tulle.overload.monitors:downstream_connections",
}

ACCESS_LOGGERS: dict[str, str] = {
    "envoy.extensions.access_loggers.file.v3.FileAccessLog": "tulle.access_log.loggers:FileAccessLogFactory",
    "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog": "tulle.access_log.loggers:StdoutAccessLogFactory",
    "envoy.extensions.access_loggers.stream.v3.StderrAccessLog": "tulle.access_log.loggers:StderrAccessLogFactory",
}

# Well-known extension names for configs that give a name but no typed_config.
NAME_TO_TYPE: dict[str, str] = {
    "envoy.filters.network.tcp_proxy": "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
    "envoy.filters.network.http_connection_manager":
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
    "envoy.filters.http.router": "envoy.extensions.filters.http.router.v3.Router",
    "envoy.filters.http.fault": "envoy.extensions.filters.http.fault.v3.HTTPFault",
    "envoy.filters.http.adaptive_concurrency":
        "envoy.extensions.filters.http.adaptive_concurrency.v3.AdaptiveConcurrency",
    "envoy.filters.http.grpc_stats": "envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
    "envoy.filters.http.grpc_web": "envoy.extensions.filters.http.grpc_web.v3.GrpcWeb",
    "envoy.filters.http.cors": "envoy.extensions.filters.http.cors.v3.Cors",
    "envoy.filters.http.compressor": "envoy.extensions.filters.http.compressor.v3.Compressor",
    "envoy.filters.http.decompressor": "envoy.extensions.filters.http.decompressor.v3.Decompressor",
}


def resolve(table: dict[str, str], type_name: str) -> Callable[..., Any] | None:
    target = table.get(type_name)
    if target is None:
        return None
    module_name, attribute = target.split(":")
    return getattr(importlib.import_module(module_name), attribute)


def canonical_name(type_name: str) -> str:
    """Envoy's extension name for a typed_config type, e.g.
    envoy.extensions.filters.http.lua.v3.Lua -> envoy.filters.http.lua (for messages)."""
    for name, known_type in NAME_TO_TYPE.items():
        if known_type == type_name:
            return name
    parts = type_name.split(".")
    if len(parts) > 3 and parts[:2] == ["envoy", "extensions"] and parts[-2].startswith("v"):
        return ".".join(["envoy", *parts[2:-2]])
    return type_name


def describe(user_name: str, type_name: str) -> str:
    """'lua_filter (envoy.filters.http.lua, type envoy.extensions.filters.http.lua.v3.Lua)'."""
    canonical = canonical_name(type_name)
    label = user_name or canonical
    if canonical != type_name and canonical != label:
        return f"{label} ({canonical}, type {type_name})"
    return f"{label} ({type_name})"
