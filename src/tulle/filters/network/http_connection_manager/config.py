"""Factory for ``envoy.filters.network.http_connection_manager`` (Envoy's config.cc).

Validates the HttpConnectionManager proto once per worker, builds the route
table, the HTTP filter factories and the access loggers, and hands every
accepted connection an :class:`HttpConnection` sharing this immutable config.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import cython
from envoy.config.route.v3.route_pb2 import RouteConfiguration
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from tulle.config.errors import ConfigError, UnsupportedFeature, join
from tulle.config.loader import type_name_of, unpack_any
from tulle.config.support import check_fields, duration_seconds
from tulle.extensions import registry
from tulle.filters.network.http_connection_manager.stats import HcmStats
from tulle.http.http2_options import http2_settings, keepalive
from tulle.runtime import configuring
from tulle.server.context import DownstreamConnection, FactoryContext

if TYPE_CHECKING:
    # imported when a connection is made: compiled, the connection manager cimports this module
    from tulle.filters.network.http_connection_manager.connection_manager import HttpConnection

HCM = hcm_pb2.HttpConnectionManager

# The connection manager whose route table is being built. typed_per_filter_config parsers get
# (proto, field) only; one whose config belongs to the worker (stats, token buckets shared by the
# worker processes) reads the worker's context here, as Envoy hands them a factory context.
building_route_table: ContextVar[HcmConfig | None] = ContextVar("building_route_table", default=None)

SUPPORTED = (
    "codec_type", "stat_prefix", "route_config", "rds", "http_filters", "common_http_protocol_options",
    "http_protocol_options", "http2_protocol_options", "server_name", "server_header_transformation", "max_request_headers_kb",
    "stream_idle_timeout", "request_timeout", "request_headers_timeout", "drain_timeout", "delayed_close_timeout", "access_log",
    "use_remote_address", "skip_xff_append", "via", "add_user_agent", "generate_request_id",
    "preserve_external_request_id", "always_set_request_id_in_response", "merge_slashes",
    "strip_matching_host_port", "strip_any_host_port", "normalize_path", "upgrade_configs",
)

# x-envoy-* request headers that change how the proxy treats a request; an external
# (untrusted) client must not be able to set them (Envoy strips them at the edge).
ENVOY_CONTROL_HEADERS = (
    "x-envoy-max-retries", "x-envoy-retry-on", "x-envoy-retry-grpc-on", "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-expected-rq-timeout-ms", "x-envoy-force-trace", "x-envoy-internal",
    "x-envoy-retriable-status-codes", "x-envoy-retriable-header-names", "x-envoy-upstream-stream-duration-ms",
    "x-envoy-upstream-rq-timeout-alt-response", "x-envoy-hedge-on-per-try-timeout",
)


def parse_upgrade_configs(configs: Any, field: str) -> dict[str, bool]:
    """HCM ``upgrade_configs``: upgrade type (lower case, as Envoy compares them) -> enabled by default
    (a route's ``upgrade_configs`` may turn it on or off). Custom upgrade filter chains are refused."""
    types: dict[str, bool] = {}
    for index, config in enumerate(configs):
        entry = f"{field}[{index}]"
        check_fields(config, ("upgrade_type", "enabled"), entry)
        upgrade_type = config.upgrade_type.strip().lower()
        if not upgrade_type:
            raise ConfigError("upgrade_type must be set", field=join(entry, "upgrade_type"))
        if upgrade_type == "connect" or upgrade_type == "h2c":
            raise UnsupportedFeature(f"upgrade_type {config.upgrade_type!r} (CONNECT tunnels and h2c upgrades)",
                                     field=join(entry, "upgrade_type"))
        if upgrade_type in types:
            raise ConfigError(f"upgrade_type {config.upgrade_type!r} is configured twice", field=join(entry, "upgrade_type"))
        types[upgrade_type] = config.enabled.value if config.HasField("enabled") else True
    return types


class HcmConfig:
    """Everything an HttpConnection reads, resolved at config time (compiled: a cdef class whose
    fields are declared in config.pxd, read by the connection manager at C level)."""

    if not cython.compiled:  # compiled, a cdef class whose fields are declared in the .pxd
        __slots__ = (
            "ctx", "server_state", "stat_prefix", "stats", "cluster_manager", "idle_timeout",
            "max_headers_count", "accept_http_10", "default_host_for_http_10",
            "max_request_headers_bytes", "stream_idle_timeout", "request_timeout",
            "max_stream_duration", "request_headers_timeout", "stream_timeout_span", "head_timeout",
            "head_timeout_kind", "server_name", "server_header_transformation", "use_remote_address",
            "skip_xff_append", "via", "generate_request_id", "preserve_external_request_id",
            "always_set_request_id_in_response", "merge_slashes", "strip_envoy_headers", "buffer_limit",
            "connections", "overload", "filter_factories", "strip_port", "listener_port",
            "normalize_host", "route_config_name", "rds_field", "rds_config_source", "route_table",
            "encoder_filters", "skippable_filters", "access_loggers", "codec", "http2_settings", "http2_keepalive", "user_agent", "service_node",
            "upgrade_types", "__weakref__",
        )

    def __init__(self, proto: Any, field: str, ctx: FactoryContext, listener_port: int) -> None:
        check_fields(proto, SUPPORTED, field)
        if proto.codec_type not in (HCM.AUTO, HCM.HTTP1, HCM.HTTP2):
            raise UnsupportedFeature(
                f"codec_type {HCM.CodecType.Name(proto.codec_type)} (Tulle speaks HTTP/1.1 and HTTP/2)",
                field=join(field, "codec_type"),
            )
        if proto.normalize_path.value:
            raise UnsupportedFeature("normalize_path: true", field=join(field, "normalize_path"))
        if not proto.stat_prefix:
            raise ConfigError("stat_prefix is required", field=join(field, "stat_prefix"))
        if proto.HasField("rds"):
            rds_field = join(field, "rds")
            check_fields(proto.rds, ("config_source", "route_config_name"), rds_field)
            from tulle.upstream.cluster import check_ads_config_source

            check_ads_config_source(proto.rds.config_source, join(rds_field, "config_source"))
            if not proto.rds.route_config_name:
                raise ConfigError("route_config_name is required", field=join(rds_field, "route_config_name"))
        elif not proto.HasField("route_config"):
            raise ConfigError("one of route_config or rds is required", field=join(field, "route_config"))
        self.ctx = ctx
        self.server_state = ctx.server
        self.stat_prefix = proto.stat_prefix
        self.stats = HcmStats(ctx.stats, proto.stat_prefix)
        self.cluster_manager = ctx.cluster_manager

        common = proto.common_http_protocol_options
        check_fields(common, ("idle_timeout", "max_headers_count", "max_stream_duration"),
                     join(field, "common_http_protocol_options"))
        self.idle_timeout = duration_seconds(common.idle_timeout) if common.HasField("idle_timeout") else 3600.0
        self.max_headers_count = common.max_headers_count.value if common.HasField("max_headers_count") else 100
        http1_options = proto.http_protocol_options
        check_fields(http1_options, ("accept_http_10", "default_host_for_http_10", "allow_absolute_url"),
                     join(field, "http_protocol_options"))
        self.accept_http_10 = http1_options.accept_http_10
        self.default_host_for_http_10 = http1_options.default_host_for_http_10
        self.max_request_headers_bytes = (proto.max_request_headers_kb.value or 60) * 1024
        # AUTO (Envoy's default): HTTP/2 when a connection opens with the HTTP/2 preface, else HTTP/1
        self.codec = {HCM.AUTO: "auto", HCM.HTTP1: "http1", HCM.HTTP2: "http2"}[proto.codec_type]
        http2_options = proto.http2_protocol_options if proto.HasField("http2_protocol_options") else None
        self.http2_settings = http2_settings(
            http2_options, join(field, "http2_protocol_options"), max_header_bytes=self.max_request_headers_bytes,
            max_headers=self.max_headers_count)
        # connection_keepalive: (interval, timeout, jitter) seconds; interval 0: no pings
        self.http2_keepalive = keepalive(http2_options, join(field, "http2_protocol_options"))
        self.stream_idle_timeout = (
            duration_seconds(proto.stream_idle_timeout) if proto.HasField("stream_idle_timeout") else 300.0
        )
        self.request_timeout = duration_seconds(proto.request_timeout) if proto.HasField("request_timeout") else 0.0
        # each stream's maximum lifetime (0: none); a route's max_stream_duration overrides it
        self.max_stream_duration = (
            duration_seconds(common.max_stream_duration) if common.HasField("max_stream_duration") else 0.0)
        # from the first byte of a request head until the head is complete (0: none)
        self.request_headers_timeout = (
            duration_seconds(proto.request_headers_timeout) if proto.HasField("request_headers_timeout") else 0.0)
        # the soonest a per-stream timeout can fire after a stream starts (0: none configured)
        self.stream_timeout_span = min(
            (t for t in (self.stream_idle_timeout, self.request_timeout, self.max_stream_duration) if t), default=0.0)
        # While a head arrives, Envoy's stream (created on its first byte) runs these clocks, none of
        # which the head's bytes restart, so the shortest one is the only one that can fire. Ties go
        # in the order Envoy arms them (ActiveStream's constructor).
        self.head_timeout, self.head_timeout_kind = min(
            ((t, kind) for t, kind in ((self.stream_idle_timeout, "stream_idle"), (self.request_timeout, "request"),
                                       (self.request_headers_timeout, "request_headers"),
                                       (self.max_stream_duration, "max_duration")) if t),
            key=lambda entry: entry[0], default=(0.0, ""))
        self.server_name = proto.server_name or "envoy"
        self.server_header_transformation = proto.server_header_transformation
        self.use_remote_address = proto.use_remote_address.value
        self.skip_xff_append = proto.skip_xff_append
        self.via = proto.via
        # add_user_agent: the node's cluster (Envoy's --service-cluster) goes upstream as
        # x-envoy-downstream-service-cluster (and as user-agent when the request has none), the node's
        # id as x-envoy-downstream-service-node; a node without a cluster has nothing to add
        add_user_agent = proto.add_user_agent.value
        self.user_agent = ctx.server.node_cluster if add_user_agent else ""
        self.upgrade_types = parse_upgrade_configs(proto.upgrade_configs, join(field, "upgrade_configs"))
        self.service_node = ctx.server.node_id if add_user_agent and self.user_agent else ""
        self.generate_request_id = (
            proto.generate_request_id.value if proto.HasField("generate_request_id") else True
        )
        self.preserve_external_request_id = proto.preserve_external_request_id
        self.always_set_request_id_in_response = proto.always_set_request_id_in_response
        self.merge_slashes = proto.merge_slashes
        self.strip_envoy_headers = ENVOY_CONTROL_HEADERS if self.use_remote_address else ()
        self.buffer_limit = 1024 * 1024
        self.connections: set[HttpConnection] = set()
        # overload action states, read per request (stop_accepting_requests, disable_http_keepalive)
        self.overload = ctx.overload
        ctx.overload.connection_managers.add(self)  # reduce_timeouts scales idle_timeout

        # HTTP filters first: an unsupported filter is the clearer message when its
        # per-route config is what the route table would trip over.
        self.filter_factories = self._build_http_filters(proto, field)
        strip = "any" if proto.strip_any_host_port else ("matching" if proto.strip_matching_host_port else "none")
        self.strip_port = strip
        self.listener_port = listener_port
        self.normalize_host = strip != "none"
        # With rds the table arrives later over ADS (a dynamic listener warms until it does).
        self.route_config_name = proto.rds.route_config_name if proto.HasField("rds") else ""
        self.rds_field = join(field, "rds") if self.route_config_name else ""
        self.rds_config_source = proto.rds.config_source if self.route_config_name else None
        if self.route_config_name:
            self.route_table = self.build_route_table(RouteConfiguration(), "")  # 404 until RDS arrives
        else:
            self.route_table = self.build_route_table(proto.route_config, join(field, "route_config"))
            self.check_clusters(self.route_table, join(field, "route_config"), inline=True)
        self.encoder_filters = any(getattr(f, "encodes", False) for f in self.filter_factories)
        # a factory whose create_filter may return None (the filter has nothing to do for that request)
        self.skippable_filters = any(getattr(f, "skippable", False) for f in self.filter_factories)
        self.access_loggers: list[Any] = []
        if len(proto.access_log):
            from tulle.access_log.config import build_access_logs

            self.access_loggers = build_access_logs(proto.access_log, join(field, "access_log"), ctx)

    def build_route_table(self, route_config: Any, field: str) -> Any:
        from tulle.router.route_table import RouteTable

        token = building_route_table.set(self)
        try:
            with configuring(self.ctx.runtime):  # route matches, mirror policies, per-route configs
                return RouteTable.from_proto(route_config, field=field, strip_port=self.strip_port,
                                             listener_port=self.listener_port)
        finally:
            building_route_table.reset(token)

    def check_clusters(self, table: Any, field: str, *, inline: bool) -> None:
        """Refuse a table naming a cluster the cluster manager does not have, when it asks for that
        (``validate_clusters``). Unset, Envoy checks an inline table and not one from RDS: a route
        naming an unknown cluster then answers 503 (NC, cluster_not_found_response_code)."""
        if not (inline if table.validate_clusters is None else table.validate_clusters):
            return
        for name in sorted(table.referenced_clusters()):
            if self.cluster_manager.get(name) is None:
                raise ConfigError(f"route references unknown cluster {name!r}", field=field)

    def _build_http_filters(self, proto: Any, field: str) -> list[Any]:
        factories = []
        count = len(proto.http_filters)
        if count == 0:
            raise ConfigError("http_filters must end with envoy.filters.http.router", field=join(field, "http_filters"))
        for index, http_filter in enumerate(proto.http_filters):
            path = join(join(field, "http_filters"), f"[{index}]")
            check_fields(http_filter, ("name", "typed_config", "disabled"), path)
            if http_filter.disabled:
                raise UnsupportedFeature("disabled HTTP filters (per-route enablement)", field=join(path, "disabled"))
            if http_filter.HasField("typed_config"):
                type_name = type_name_of(http_filter.typed_config)
                message = unpack_any(http_filter.typed_config, field=join(path, "typed_config"))
            else:
                type_name = registry.NAME_TO_TYPE.get(http_filter.name, "")
                if not type_name:
                    raise UnsupportedFeature(f"HTTP filter {http_filter.name!r}", field=path)
                from google.protobuf import symbol_database

                message = symbol_database.Default().GetSymbol(type_name)()
            factory_class = registry.resolve(registry.HTTP_FILTERS, type_name)
            if factory_class is None:
                raise UnsupportedFeature(f"HTTP filter {registry.describe(http_filter.name, type_name)}", field=path)
            factory = factory_class(message, join(path, "typed_config"), self)
            # typed_per_filter_config entries are keyed by this name, as in Envoy
            factory.config_name = http_filter.name or registry.canonical_name(type_name)
            factories.append(factory)
        if factories[-1].name != "envoy.filters.http.router":
            raise ConfigError("the last HTTP filter must be envoy.filters.http.router",
                              field=join(field, f"http_filters[{count - 1}]"))
        for index, factory in enumerate(factories[:-1]):
            if factory.name == "envoy.filters.http.router":
                raise ConfigError("envoy.filters.http.router must be the last HTTP filter",
                                  field=join(field, f"http_filters[{index}]"))
        return factories

    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self.ctx.loop
        return loop if loop is not None else asyncio.get_running_loop()


class HttpConnectionManagerFactory:
    """NetworkFilterFactory for the HCM."""

    def __init__(self, proto: Any, field: str, ctx: FactoryContext, *, listener_port: int = 0) -> None:
        self.config = HcmConfig(proto, field, ctx, listener_port)

    def create_protocol(self, connection: DownstreamConnection) -> HttpConnection:
        if self.config.codec == "http2":
            from tulle.filters.network.http_connection_manager.http2_connection import Http2Connection

            return Http2Connection(self.config, connection)
        from tulle.filters.network.http_connection_manager.connection_manager import HttpConnection

        return HttpConnection(self.config, connection)

    def drain(self) -> None:
        for connection in list(self.config.connections):
            connection.drain()
