"""tcp_proxy configuration: validate the TcpProxy proto, build the per-worker factory.

Mirrors Envoy's tcp_proxy config.cc: everything that can be decided once
(cluster names, weights, timeouts, stat objects, access loggers) is decided
here so the per-connection code only reads precomputed attributes.
"""

from __future__ import annotations

import asyncio
import bisect
import random
from typing import Any

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2, message

from tulle.config.errors import ConfigError, join
from tulle.config.loader import unpack_any
from tulle.config.support import check_fields, duration_seconds
from tulle.filters.network.tcp_proxy.filter import TcpProxySession
from tulle.server.context import DownstreamConnection, FactoryContext
from tulle.stats.store import Counter, Gauge, Store

TCP_PROXY_TYPE = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"

# Envoy's defaults: the idle timeout is on unless explicitly set to 0, and a
# failed connect is not retried unless max_connect_attempts says so.
DEFAULT_IDLE_TIMEOUT_SECONDS = 3600.0
DEFAULT_MAX_CONNECT_ATTEMPTS = 1

SUPPORTED_FIELDS = (
    "stat_prefix",
    "cluster",
    "weighted_clusters",
    "idle_timeout",
    "access_log",
    "max_connect_attempts",
    "max_downstream_connection_duration",
)
SUPPORTED_WEIGHTED_CLUSTER_FIELDS = ("clusters",)
SUPPORTED_CLUSTER_WEIGHT_FIELDS = ("name", "weight")

_COUNTER_NAMES = (
    "downstream_cx_total",
    "downstream_cx_no_route",
    "downstream_cx_rx_bytes_total",
    "downstream_cx_tx_bytes_total",
    "downstream_flow_control_paused_reading_total",
    "downstream_flow_control_resumed_reading_total",
    "idle_timeout",
    "max_downstream_connection_duration",
    "upstream_flush_total",
)
_GAUGE_NAMES = (
    "downstream_cx_rx_bytes_buffered",
    "downstream_cx_tx_bytes_buffered",
    "upstream_flush_active",
)


class TcpProxyStats:
    """The ``tcp.<stat_prefix>.*`` stats, resolved once so connections bump them directly."""

    __slots__ = _COUNTER_NAMES + _GAUGE_NAMES

    downstream_cx_total: Counter
    downstream_cx_no_route: Counter
    downstream_cx_rx_bytes_total: Counter
    downstream_cx_tx_bytes_total: Counter
    downstream_flow_control_paused_reading_total: Counter
    downstream_flow_control_resumed_reading_total: Counter
    idle_timeout: Counter
    max_downstream_connection_duration: Counter
    upstream_flush_total: Counter
    downstream_cx_rx_bytes_buffered: Gauge
    downstream_cx_tx_bytes_buffered: Gauge
    upstream_flush_active: Gauge

    def __init__(self, store: Store, stat_prefix: str) -> None:
        store.bind(self, f"tcp.{stat_prefix}.", counters=_COUNTER_NAMES, gauges=_GAUGE_NAMES)


class TcpProxyConfig:
    """Validated, precomputed settings shared by every connection of one factory."""

    __slots__ = (
        "stat_prefix", "stats", "cluster_manager", "cluster_names", "_cumulative_weights",
        "_total_weight", "idle_timeout", "max_connect_attempts",
        "max_downstream_connection_duration", "access_logs",
    )

    def __init__(
        self,
        *,
        stat_prefix: str,
        stats: TcpProxyStats,
        cluster_manager: Any,
        cluster_names: list[str],
        weights: list[int],
        idle_timeout: float | None,
        max_connect_attempts: int,
        max_downstream_connection_duration: float | None,
        access_logs: list[Any],
    ) -> None:
        self.stat_prefix = stat_prefix
        self.stats = stats
        self.cluster_manager = cluster_manager
        self.cluster_names = cluster_names
        running = 0
        cumulative = []
        for weight in weights:
            running += weight
            cumulative.append(running)
        self._cumulative_weights = cumulative
        self._total_weight = running
        self.idle_timeout = idle_timeout
        self.max_connect_attempts = max_connect_attempts
        self.max_downstream_connection_duration = max_downstream_connection_duration
        self.access_logs = access_logs

    def pick_cluster(self) -> str:
        """The cluster for one connection: fixed, or weighted-random like Envoy's WeightedClusterEntry."""
        names = self.cluster_names
        if len(names) == 1:
            return names[0]
        point = int(random.random() * self._total_weight)
        return names[bisect.bisect_right(self._cumulative_weights, point)]


def _positive_duration(duration: message.Message, field: str) -> float:
    seconds = duration_seconds(duration)
    if seconds < 0:
        raise ConfigError("duration must not be negative", field=field)
    return seconds


def _cluster_named(name: str, field: str) -> None:
    """Only that a name is given: as in Envoy, a cluster CDS has not delivered (yet) is not a config
    error; a connection while it is missing is closed (NC, downstream_cx_no_route)."""
    if not name:
        raise ConfigError("cluster name must not be empty", field=field)


def parse_tcp_proxy(proto: tcp_proxy_pb2.TcpProxy, field: str, ctx: FactoryContext) -> TcpProxyConfig:
    """Validate ``proto`` (Envoy's PGV rules plus Tulle's whitelist) into a TcpProxyConfig."""
    check_fields(proto, SUPPORTED_FIELDS, field)
    if not proto.stat_prefix:
        raise ConfigError("stat_prefix must not be empty", field=join(field, "stat_prefix"))

    specifier = proto.WhichOneof("cluster_specifier")
    names: list[str] = []
    weights: list[int] = []
    if specifier == "cluster":
        _cluster_named(proto.cluster, join(field, "cluster"))
        names.append(proto.cluster)
        weights.append(1)
    elif specifier == "weighted_clusters":
        weighted_field = join(field, "weighted_clusters")
        check_fields(proto.weighted_clusters, SUPPORTED_WEIGHTED_CLUSTER_FIELDS, weighted_field)
        clusters_field = join(weighted_field, "clusters")
        if not proto.weighted_clusters.clusters:
            raise ConfigError("at least one cluster is required", field=clusters_field)
        for index, entry in enumerate(proto.weighted_clusters.clusters):
            entry_field = join(clusters_field, f"[{index}]")
            check_fields(entry, SUPPORTED_CLUSTER_WEIGHT_FIELDS, entry_field)
            _cluster_named(entry.name, join(entry_field, "name"))
            if entry.weight < 1:
                raise ConfigError("weight must be at least 1", field=join(entry_field, "weight"))
            names.append(entry.name)
            weights.append(entry.weight)
    else:
        raise ConfigError("one of cluster or weighted_clusters is required", field=field)

    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_SECONDS
    if proto.HasField("idle_timeout"):
        idle_timeout = _positive_duration(proto.idle_timeout, join(field, "idle_timeout")) or None

    max_connect_attempts = DEFAULT_MAX_CONNECT_ATTEMPTS
    if proto.HasField("max_connect_attempts"):
        max_connect_attempts = proto.max_connect_attempts.value
        if max_connect_attempts < 1:
            raise ConfigError("must be at least 1", field=join(field, "max_connect_attempts"))

    max_duration: float | None = None
    if proto.HasField("max_downstream_connection_duration"):
        duration_field = join(field, "max_downstream_connection_duration")
        max_duration = _positive_duration(proto.max_downstream_connection_duration, duration_field)
        if max_duration < 0.001:
            raise ConfigError("must be at least 1ms", field=duration_field)

    access_logs: list[Any] = []
    if proto.access_log:
        # imported only when used: validating a config must not pull in every logger
        from tulle.access_log.config import build_access_logs

        access_logs = list(build_access_logs(proto.access_log, join(field, "access_log"), ctx))

    return TcpProxyConfig(
        stat_prefix=proto.stat_prefix,
        stats=TcpProxyStats(ctx.stats, proto.stat_prefix),
        cluster_manager=ctx.cluster_manager,
        cluster_names=names,
        weights=weights,
        idle_timeout=idle_timeout,
        max_connect_attempts=max_connect_attempts,
        max_downstream_connection_duration=max_duration,
        access_logs=access_logs,
    )


class TcpProxyFactory:
    """Envoy's tcp_proxy as a terminal NetworkFilterFactory (see server/context.py)."""

    def __init__(self, proto: message.Message, field: str, ctx: FactoryContext) -> None:
        if isinstance(proto, any_pb2.Any):
            proto = unpack_any(proto, field=field)
        if proto.DESCRIPTOR.full_name != TCP_PROXY_TYPE:
            raise ConfigError(f"expected {TCP_PROXY_TYPE}, got {proto.DESCRIPTOR.full_name}", field=field)
        self.config = parse_tcp_proxy(proto, field, ctx)  # type: ignore[arg-type]
        self.draining = False

    def create_protocol(self, connection: DownstreamConnection) -> asyncio.Protocol:
        return TcpProxySession(self.config, connection)

    def drain(self) -> None:
        """Raw TCP has no in-band way to ask a peer to finish, so (as in Envoy) open
        connections keep flowing until they close or the listener's drain period ends."""
        self.draining = True
