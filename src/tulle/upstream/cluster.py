"""Clusters: validated Envoy v3 ``Cluster`` protos turned into hosts, a load balancer and stats.

Three discovery types, as in Envoy:

* STATIC: endpoints are IP literals; hosts are built once.
* STRICT_DNS: every endpoint name is resolved on its own schedule and every
  address becomes a host. A refresh keeps the Host objects whose address is
  still in the answer (their connection pools survive) and bumps
  ``membership_change`` only when the set of addresses changed.
* LOGICAL_DNS: exactly one endpoint and one logical host whose address follows
  the first address of the latest answer; open connections are left alone.

DNS answers never block the event loop (see :mod:`tulle.upstream.dns`).

``health_checks`` and ``outlier_detection`` attach a :class:`HealthChecker` and an
:class:`OutlierDetector` that set hosts' health flags; the cluster rebuilds its load
balancer whenever a host's health changes. As in Envoy, with active health checking a
host that service discovery removes stays (``/pending_dynamic_removal``) until it fails
its checks, unless ``ignore_health_on_host_removal`` is set.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import message

from tulle.config.errors import ConfigError, UnsupportedFeature, join
from tulle.config.loader import type_name_of, unpack_any
from tulle.config.support import check_fields, duration_seconds
from tulle.stats.store import Store
from tulle.upstream import dns, upstream_protocol
from tulle.upstream.cluster_stats import ClusterStats, HealthCheckStats, OutlierDetectionStats
from tulle.upstream.health_check import HealthCheckConfig, HealthChecker, parse_health_checks
from tulle.upstream.host import Host, Locality
from tulle.upstream.load_balancer import (
    DEFAULT_OVERPROVISIONING_FACTOR,
    LbSettings,
    LoadBalancer,
    LoadBalancerContext,
    create_load_balancer,
    lb_settings_from_cluster,
)
from tulle.upstream.outlier_detection import OutlierDetectionConfig, OutlierDetector, parse_outlier_detection
from tulle.upstream.resource_manager import (
    DEFAULT_CIRCUIT_BREAKERS,
    CircuitBreakersConfig,
    ResourceManager,
    build_resource_managers,
    parse_circuit_breakers,
)
from tulle.upstream.socket_options import TcpKeepalive, parse_upstream_connection_options
from tulle.upstream.upstream_protocol import UpstreamProtocol, host_pools

log = logging.getLogger("tulle.upstream")

STATIC = "STATIC"
STRICT_DNS = "STRICT_DNS"
LOGICAL_DNS = "LOGICAL_DNS"
EDS = "EDS"

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_BUFFER_LIMIT = 1024 * 1024
DEFAULT_IDLE_TIMEOUT = 3600.0
DEFAULT_DNS_REFRESH_RATE = 5.0
MAX_PRIORITY = 128  # Envoy's validation bound for LocalityLbEndpoints.priority
HTTP_PROTOCOL_OPTIONS_TYPE = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"

_CLUSTER_FIELDS = (
    "name", "alt_stat_name", "type", "connect_timeout", "per_connection_buffer_limit_bytes", "lb_policy",
    "load_assignment", "max_requests_per_connection", "common_http_protocol_options",
    "http_protocol_options", "http2_protocol_options", "protocol_selection", "typed_extension_protocol_options",
    "dns_refresh_rate",
    "dns_failure_refresh_rate", "dns_lookup_family", "wait_for_warm_on_init", "round_robin_lb_config",
    "least_request_lb_config", "ring_hash_lb_config", "maglev_lb_config", "common_lb_config",
    "eds_cluster_config", "health_checks", "outlier_detection", "ignore_health_on_host_removal",
    "circuit_breakers", "upstream_connection_options",
)
# metadata only feeds subset load balancing and filters, which Tulle refuses or does not read.
_CLUSTER_IGNORED = ("metadata",)
_COMMON_HTTP_FIELDS = ("idle_timeout", "max_requests_per_connection", "max_stream_duration",
                       "max_connection_duration")
# (idle_timeout, max_requests_per_connection, max_stream_duration, max_connection_duration) of
# upstream HTTP connections and streams
ConnectionOptions = tuple[float | None, int | None, float | None, float | None]
_DISCOVERY_TYPES = dict(cluster_pb2.Cluster.DiscoveryType.items())


@dataclass(frozen=True, slots=True)
class EndpointConfig:
    """One ``lb_endpoints`` entry: an IP (STATIC) or a name to resolve (DNS types)."""

    address: str
    port: int
    hostname: str
    weight: int
    priority: int
    locality: Locality
    health_status: int
    field: str
    locality_weight: int = 0  # the LocalityLbEndpoints' load_balancing_weight; 0 when unset
    health_check_port: int = 0  # health_check_config.port_value; 0: check the serving port

    def make_host(self, ip: str, hostname: str | None = None) -> Host:
        return Host(
            ip, self.port, hostname=self.hostname if hostname is None else hostname, weight=self.weight,
            priority=self.priority, locality=self.locality, locality_weight=self.locality_weight,
            health_check_port=self.health_check_port, health_status=self.health_status,
        )


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    name: str
    stat_name: str
    type_name: str
    connect_timeout: float
    per_connection_buffer_limit_bytes: int
    max_requests_per_connection: int | None
    idle_timeout: float | None
    endpoints: tuple[EndpointConfig, ...]
    overprovisioning_factor: int
    dns_lookup_family: str
    dns_refresh_rate: float
    dns_failure_refresh_rate: tuple[float, float] | None  # (base, max) seconds
    wait_for_warm_on_init: bool
    lb: LbSettings
    eds_service_name: str = ""  # EDS clusters: the ClusterLoadAssignment name to subscribe to
    health_check: HealthCheckConfig | None = None
    outlier_detection: OutlierDetectionConfig | None = None
    ignore_health_on_host_removal: bool = False
    max_stream_duration: float | None = None  # common_http_protocol_options.max_stream_duration
    max_connection_duration: float | None = None  # common_http_protocol_options.max_connection_duration
    tcp_keepalive: TcpKeepalive | None = None  # upstream_connection_options.tcp_keepalive
    circuit_breakers: CircuitBreakersConfig = DEFAULT_CIRCUIT_BREAKERS
    upstream_protocol: UpstreamProtocol = upstream_protocol.DEFAULT  # HTTP/1.1, HTTP/2 or the downstream's


# --- parsing ------------------------------------------------------------------


def _positive_seconds(msg: message.Message, name: str, field: str, default: float) -> float:
    if not msg.HasField(name):
        return default
    seconds = duration_seconds(getattr(msg, name))
    if seconds <= 0:
        raise ConfigError("must be greater than 0s", field=join(field, name))
    return seconds


def _common_http_options(options: protocol_pb2.HttpProtocolOptions, field: str) -> ConnectionOptions:
    check_fields(options, _COMMON_HTTP_FIELDS, field)
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    if options.HasField("idle_timeout"):
        idle_timeout = duration_seconds(options.idle_timeout) or None  # 0 disables it, as in Envoy
    max_requests = options.max_requests_per_connection.value or None
    # each upstream stream's lifetime; reaching it resets the stream (UMSDR). 0: no limit
    max_stream_duration = duration_seconds(options.max_stream_duration) or None
    # a connection's lifetime: past it the connection closes once idle (never mid-request)
    max_connection_duration = duration_seconds(options.max_connection_duration) or None
    return idle_timeout, max_requests, max_stream_duration, max_connection_duration


def _typed_http_options(options: http_protocol_options_pb2.HttpProtocolOptions, field: str) -> ConnectionOptions:
    check_fields(
        options,
        ("common_http_protocol_options", "explicit_http_config", "use_downstream_protocol_config", "auto_config"),
        field,
    )
    if options.HasField("common_http_protocol_options"):
        return _common_http_options(
            options.common_http_protocol_options, join(field, "common_http_protocol_options")
        )
    return DEFAULT_IDLE_TIMEOUT, None, None, None


def _connection_options(cluster: cluster_pb2.Cluster, field: str) -> tuple[ConnectionOptions, UpstreamProtocol]:
    """(idle_timeout, max_requests_per_connection, max_stream_duration, max_connection_duration) and
    the upstream protocol, from the typed or the deprecated fields."""
    typed: ConnectionOptions | None = None
    protocol = upstream_protocol.DEFAULT
    for key, value in cluster.typed_extension_protocol_options.items():
        entry_field = join(field, f"typed_extension_protocol_options[{key!r}]")
        if type_name_of(value) != HTTP_PROTOCOL_OPTIONS_TYPE:
            raise UnsupportedFeature(f"protocol options {type_name_of(value) or key}", field=entry_field)
        options = unpack_any(value, field=entry_field)
        assert isinstance(options, http_protocol_options_pb2.HttpProtocolOptions)
        typed = _typed_http_options(options, entry_field)
        protocol = upstream_protocol.from_typed_options(options, entry_field)

    deprecated = [
        name for name in ("common_http_protocol_options", "http_protocol_options", "http2_protocol_options",
                          "max_requests_per_connection")
        if cluster.HasField(name)
    ]
    if typed is not None:
        if deprecated:
            raise ConfigError(
                f"{deprecated[0]} cannot be combined with typed_extension_protocol_options "
                f"{HTTP_PROTOCOL_OPTIONS_TYPE}; use only the latter",
                field=join(field, deprecated[0]),
            )
        return typed, protocol

    protocol = upstream_protocol.from_deprecated_fields(cluster, field)
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    max_requests: int | None = None
    max_stream_duration: float | None = None
    max_connection_duration: float | None = None
    if cluster.HasField("common_http_protocol_options"):
        idle_timeout, max_requests, max_stream_duration, max_connection_duration = _common_http_options(
            cluster.common_http_protocol_options, join(field, "common_http_protocol_options")
        )
    if cluster.HasField("max_requests_per_connection"):
        max_requests = cluster.max_requests_per_connection.value or None
    return (idle_timeout, max_requests, max_stream_duration, max_connection_duration), protocol


def _locality(locality_endpoints: endpoint_components_pb2.LocalityLbEndpoints, field: str) -> Locality:
    if not locality_endpoints.HasField("locality"):
        return Locality()
    locality = locality_endpoints.locality
    check_fields(locality, ("region", "zone", "sub_zone"), join(field, "locality"))
    return Locality(locality.region, locality.zone, locality.sub_zone)


def _endpoint(
    lb_endpoint: endpoint_components_pb2.LbEndpoint, priority: int, locality: Locality, locality_weight: int,
    field: str,
) -> EndpointConfig:
    # metadata is read only by subset load balancing and filters Tulle does not have.
    check_fields(lb_endpoint, ("endpoint", "health_status", "load_balancing_weight"), field, ignored=("metadata",))
    endpoint = lb_endpoint.endpoint
    endpoint_field = join(field, "endpoint")
    check_fields(endpoint, ("address", "hostname", "health_check_config"), endpoint_field)
    health_check_port = 0
    if endpoint.HasField("health_check_config"):
        health_check_field = join(endpoint_field, "health_check_config")
        check_fields(endpoint.health_check_config, ("port_value",), health_check_field)
        health_check_port = endpoint.health_check_config.port_value
        if health_check_port > 65535:
            raise ConfigError("must be at most 65535", field=join(health_check_field, "port_value"))
    address_field = join(endpoint_field, "address")
    if not endpoint.HasField("address"):
        raise ConfigError("an endpoint needs an address", field=address_field)
    check_fields(endpoint.address, ("socket_address",), address_field)
    if not endpoint.address.HasField("socket_address"):
        raise ConfigError("an endpoint needs a socket_address", field=address_field)
    socket_field = join(address_field, "socket_address")
    socket_address = endpoint.address.socket_address
    # protocol UDP (a non-default enum value) is refused here as an unsupported field.
    check_fields(socket_address, ("address", "port_value"), socket_field)
    if not socket_address.address:
        raise ConfigError("address must not be empty", field=join(socket_field, "address"))
    if socket_address.port_value > 65535:
        raise ConfigError("must be at most 65535", field=join(socket_field, "port_value"))
    weight = 1
    if lb_endpoint.HasField("load_balancing_weight"):
        weight = lb_endpoint.load_balancing_weight.value
        if weight < 1:
            raise ConfigError("must be at least 1", field=join(field, "load_balancing_weight.value"))
    return EndpointConfig(
        address=socket_address.address, port=socket_address.port_value, hostname=endpoint.hostname,
        weight=weight, priority=priority, locality=locality, health_status=lb_endpoint.health_status,
        field=socket_field, locality_weight=locality_weight, health_check_port=health_check_port,
    )


def _load_assignment(
    assignment: endpoint_pb2.ClusterLoadAssignment, field: str
) -> tuple[list[EndpointConfig], int]:
    # cluster_name names the assignment for EDS; in a static assignment it is a label.
    check_fields(assignment, ("cluster_name", "endpoints", "policy"), field)
    overprovisioning_factor = DEFAULT_OVERPROVISIONING_FACTOR
    if assignment.HasField("policy"):
        policy_field = join(field, "policy")
        check_fields(assignment.policy, ("overprovisioning_factor",), policy_field)
        if assignment.policy.HasField("overprovisioning_factor"):
            overprovisioning_factor = assignment.policy.overprovisioning_factor.value
            if overprovisioning_factor < 1:
                raise ConfigError("must be greater than 0", field=join(policy_field, "overprovisioning_factor"))
    endpoints: list[EndpointConfig] = []
    for locality_index, locality_endpoints in enumerate(assignment.endpoints):
        locality_field = join(field, f"endpoints[{locality_index}]")
        # The locality weight is read only by locality weighted load balancing. metadata: see _endpoint.
        check_fields(
            locality_endpoints, ("locality", "lb_endpoints", "load_balancing_weight", "priority"),
            locality_field, ignored=("metadata",),
        )
        if locality_endpoints.HasField("load_balancing_weight") and locality_endpoints.load_balancing_weight.value < 1:
            raise ConfigError("must be at least 1", field=join(locality_field, "load_balancing_weight.value"))
        if locality_endpoints.priority > MAX_PRIORITY:
            raise ConfigError(f"must be at most {MAX_PRIORITY}", field=join(locality_field, "priority"))
        locality = _locality(locality_endpoints, locality_field)
        # As Envoy: a weight counts only next to a locality; a locality without one weighs 0.
        locality_weight = 0
        if locality_endpoints.HasField("locality") and locality_endpoints.HasField("load_balancing_weight"):
            locality_weight = locality_endpoints.load_balancing_weight.value
        for endpoint_index, lb_endpoint in enumerate(locality_endpoints.lb_endpoints):
            endpoints.append(
                _endpoint(
                    lb_endpoint, locality_endpoints.priority, locality, locality_weight,
                    join(locality_field, f"lb_endpoints[{endpoint_index}]"),
                )
            )
    return endpoints, overprovisioning_factor


def _dns_failure_refresh_rate(cluster: cluster_pb2.Cluster, field: str) -> tuple[float, float] | None:
    if not cluster.HasField("dns_failure_refresh_rate"):
        return None
    rate = cluster.dns_failure_refresh_rate
    rate_field = join(field, "dns_failure_refresh_rate")
    check_fields(rate, ("base_interval", "max_interval"), rate_field)
    if not rate.HasField("base_interval"):
        raise ConfigError("base_interval is required", field=join(rate_field, "base_interval"))
    base = _positive_seconds(rate, "base_interval", rate_field, 0.0)
    maximum = _positive_seconds(rate, "max_interval", rate_field, base * 10)
    if maximum < base:
        raise ConfigError(
            "max_interval must be greater than or equal to the base_interval", field=join(rate_field, "max_interval")
        )
    return base, maximum


def parse_cluster(cluster: cluster_pb2.Cluster, field: str) -> ClusterConfig:
    """Validate one Cluster proto; raise ConfigError / UnsupportedFeature naming the field path."""
    if cluster.HasField("cluster_type"):
        raise UnsupportedFeature(
            f"custom cluster_type {cluster.cluster_type.name or type_name_of(cluster.cluster_type.typed_config)!r}",
            field=join(field, "cluster_type"),
        )
    type_name = cluster_pb2.Cluster.DiscoveryType.Name(cluster.type)
    eds_service_name = ""
    if cluster.HasField("eds_cluster_config"):
        if type_name != EDS:
            raise ConfigError("eds_cluster_config is only for clusters of type EDS",
                              field=join(field, "eds_cluster_config"))
    if type_name == EDS:
        eds_field = join(field, "eds_cluster_config")
        check_fields(cluster.eds_cluster_config, ("eds_config", "service_name"), eds_field)
        check_ads_config_source(cluster.eds_cluster_config.eds_config, join(eds_field, "eds_config"))
        eds_service_name = cluster.eds_cluster_config.service_name or cluster.name
    elif type_name not in (STATIC, STRICT_DNS, LOGICAL_DNS):
        raise UnsupportedFeature(f"cluster type {type_name}", field=join(field, "type"))
    # Fields Envoy reads only for other cluster types (e.g. dns_* on STATIC) are accepted and, as
    # in Envoy, have no effect there.
    check_fields(cluster, _CLUSTER_FIELDS, field, ignored=_CLUSTER_IGNORED)
    if not cluster.name:
        raise ConfigError("a cluster needs a name", field=join(field, "name"))

    lb_settings = lb_settings_from_cluster(cluster, field)
    (idle_timeout, max_requests, max_stream_duration, max_connection_duration), protocol = _connection_options(
        cluster, field)
    tcp_keepalive = None
    if cluster.HasField("upstream_connection_options"):
        tcp_keepalive = parse_upstream_connection_options(
            cluster.upstream_connection_options, join(field, "upstream_connection_options"))
    health_check = parse_health_checks(list(cluster.health_checks), join(field, "health_checks"))
    outlier_detection = None
    if cluster.HasField("outlier_detection"):
        outlier_detection = parse_outlier_detection(cluster.outlier_detection, join(field, "outlier_detection"))
    endpoints: list[EndpointConfig] = []
    overprovisioning_factor = DEFAULT_OVERPROVISIONING_FACTOR
    if cluster.HasField("load_assignment"):
        endpoints, overprovisioning_factor = _load_assignment(cluster.load_assignment, join(field, "load_assignment"))

    if type_name in (STATIC, EDS):
        resolved = []
        for endpoint in endpoints:
            try:
                ip = str(ipaddress.ip_address(endpoint.address))
            except ValueError:
                raise ConfigError(
                    f"malformed IP address {endpoint.address!r}: a STATIC cluster needs IP addresses "
                    "(use STRICT_DNS or LOGICAL_DNS for names)",
                    field=join(endpoint.field, "address"),
                ) from None
            resolved.append(replace(endpoint, address=ip))
        endpoints = resolved
    elif type_name == LOGICAL_DNS and (
        len(cluster.load_assignment.endpoints) != 1 or len(cluster.load_assignment.endpoints[0].lb_endpoints) != 1
    ):
        raise ConfigError(
            "LOGICAL_DNS clusters must have a single locality_lb_endpoint and a single lb_endpoint",
            field=join(field, "load_assignment"),
        )

    buffer_limit = DEFAULT_BUFFER_LIMIT
    if cluster.HasField("per_connection_buffer_limit_bytes"):
        buffer_limit = cluster.per_connection_buffer_limit_bytes.value
    return ClusterConfig(
        name=cluster.name,
        stat_name=cluster.alt_stat_name or cluster.name,
        type_name=type_name,
        connect_timeout=_positive_seconds(cluster, "connect_timeout", field, DEFAULT_CONNECT_TIMEOUT),
        per_connection_buffer_limit_bytes=buffer_limit,
        max_requests_per_connection=max_requests,
        idle_timeout=idle_timeout,
        max_stream_duration=max_stream_duration,
        max_connection_duration=max_connection_duration,
        tcp_keepalive=tcp_keepalive,
        upstream_protocol=protocol,
        endpoints=tuple(endpoints),
        overprovisioning_factor=overprovisioning_factor,
        dns_lookup_family=cluster_pb2.Cluster.DnsLookupFamily.Name(cluster.dns_lookup_family),
        dns_refresh_rate=_positive_seconds(cluster, "dns_refresh_rate", field, DEFAULT_DNS_REFRESH_RATE),
        dns_failure_refresh_rate=_dns_failure_refresh_rate(cluster, field),
        wait_for_warm_on_init=cluster.wait_for_warm_on_init.value if cluster.HasField("wait_for_warm_on_init") else True,
        lb=lb_settings,
        eds_service_name=eds_service_name,
        health_check=health_check,
        outlier_detection=outlier_detection,
        ignore_health_on_host_removal=cluster.ignore_health_on_host_removal,
        circuit_breakers=(
            parse_circuit_breakers(cluster.circuit_breakers, join(field, "circuit_breakers"))
            if cluster.HasField("circuit_breakers") else DEFAULT_CIRCUIT_BREAKERS
        ),
    )


# --- runtime ------------------------------------------------------------------


class Cluster:
    """A STATIC cluster; the DNS types below add resolution. Built once per worker."""

    type_name = STATIC

    def __init__(self, config: ClusterConfig, *, store: Store, rng: random.Random | None = None) -> None:
        self.config = config
        self.name = config.name
        self.observability_name = config.stat_name
        self.connect_timeout = config.connect_timeout
        self.per_connection_buffer_limit_bytes = config.per_connection_buffer_limit_bytes
        self.max_requests_per_connection = config.max_requests_per_connection
        self.idle_timeout = config.idle_timeout
        self.max_stream_duration = config.max_stream_duration
        self.max_connection_duration = config.max_connection_duration
        self.tcp_keepalive = config.tcp_keepalive
        protocol = config.upstream_protocol
        self.upstream_protocol = protocol.kind  # upstream_protocol.HTTP1, HTTP2 or DOWNSTREAM
        self.http2_capable = protocol.kind != upstream_protocol.HTTP1
        self.http2_settings = protocol.http2_settings
        self.http2_keepalive = protocol.http2_keepalive
        self.overprovisioning_factor = config.overprovisioning_factor
        self.wait_for_warm_on_init = config.wait_for_warm_on_init
        self.stats = ClusterStats(store, config.stat_name)
        # circuit breakers by routing priority (DEFAULT, HIGH); counted per cluster name
        self.resource_managers = build_resource_managers(
            config.circuit_breakers, config.name, config.stat_name, store)
        self.resource_manager: ResourceManager = self.resource_managers[0]
        self.fixed_seed = rng is not None
        self.lb: LoadBalancer = create_load_balancer(config.lb, self.stats, rng)
        self.lb_policy = self.lb.policy
        # The router calls this per request: bind the balancer's method, no extra frame.
        self.choose_host: Callable[[LoadBalancerContext | None], Host | None] = self.lb.choose_host
        self.hosts: list[Host] = []
        self.hosts_per_priority: list[list[Host]] = [[]]
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.outlier_detector: OutlierDetector | None = None
        self.health_checker: HealthChecker | None = None
        if config.outlier_detection is not None:
            self.outlier_detector = OutlierDetector(
                config.outlier_detection, OutlierDetectionStats(store, config.stat_name),
                self._update_load_balancing, rng=self.lb.rng,
            )
        if config.health_check is not None:
            self.health_checker = HealthChecker(
                config.health_check, cluster_name=config.name, stats=HealthCheckStats(store, config.stat_name),
                on_health_changed=self._on_host_health_changed,
                on_check_passed=self.outlier_detector.on_active_health_check_success if self.outlier_detector else None,
                rng=self.lb.rng,
            )
        self._set_hosts([endpoint.make_host(endpoint.address) for endpoint in config.endpoints])
        # A static membership is complete at construction; Envoy counts it as one change.
        self.initialized = True
        if self.hosts:
            self.stats.membership_change.value += 1

    def _set_hosts(self, hosts: Sequence[Host]) -> None:
        """Install new membership: per-priority sets, load balancer state and gauges."""
        joining = {id(host) for host in hosts}
        for host in self.hosts:
            if id(host) not in joining:
                self._stop_monitoring_host(host)
        present = {id(host) for host in self.hosts}
        for host in hosts:
            if id(host) not in present:
                self._start_monitoring_host(host)
        ordered = sorted(hosts, key=lambda host: host.priority)  # stable: keeps config order within a priority
        levels = (ordered[-1].priority + 1) if ordered else 1
        per_priority: list[list[Host]] = [[] for _ in range(levels)]
        for host in ordered:
            per_priority[host.priority].append(host)
        self.hosts = ordered
        self.hosts_per_priority = per_priority
        stats = self.stats
        stats.membership_total.set(len(ordered))
        stats.max_host_weight.set(max((host.weight for host in ordered), default=0))
        self._update_load_balancing()

    def _update_load_balancing(self) -> None:
        """Membership or some host's health changed: rebuild the balancer and the health gauges."""
        self.lb.update(self.hosts_per_priority, self.overprovisioning_factor)
        stats = self.stats
        stats.membership_healthy.set(sum(1 for host in self.hosts if host.healthy))
        stats.membership_degraded.set(sum(1 for host in self.hosts if host.degraded))

    # --- health checking and outlier detection ------------------------------------
    def _start_monitoring_host(self, host: Host) -> None:
        host.reset_monitoring(active_health_checked=self.health_checker is not None)
        if self.outlier_detector is not None:
            self.outlier_detector.add_host(host)
        if self.health_checker is not None:
            self.health_checker.add_host(host)

    def _stop_monitoring_host(self, host: Host) -> None:
        if self.outlier_detector is not None:
            self.outlier_detector.remove_host(host)
        if self.health_checker is not None:
            self.health_checker.remove_host(host)

    def _on_host_health_changed(self, host: Host) -> None:
        if host.pending_dynamic_removal and host.failed_active_hc:
            self._remove_pending_host(host)  # discovery dropped it earlier; now it failed its checks too
        else:
            self._update_load_balancing()

    def _hold_for_health_check(self, removed: Sequence[Host]) -> list[Host]:
        """Of the hosts service discovery removed, those Envoy keeps: healthy under active checks."""
        if self.health_checker is None or self.config.ignore_health_on_host_removal:
            return []
        held = [host for host in removed if not host.failed_active_hc]
        for host in held:
            host.pending_dynamic_removal = True
            host.refresh_health()
        return held

    def _remove_pending_host(self, host: Host) -> None:
        self._set_hosts([other for other in self.hosts if other is not host])
        self._retire([host])
        self.stats.membership_change.value += 1

    def _start_monitoring(self) -> None:
        if self._closed:
            return
        if self.health_checker is not None:
            self.health_checker.start()
        if self.outlier_detector is not None:
            self.outlier_detector.start(asyncio.get_running_loop())

    def _stop_monitoring(self) -> list[asyncio.Task[None]]:
        """Stop checks and the ejection timer; returns the check tasks to await."""
        tasks: list[asyncio.Task[None]] = []
        if self.health_checker is not None:
            tasks = self.health_checker.stop()
        if self.outlier_detector is not None:
            self.outlier_detector.stop()
        return tasks

    def resource_manager_for(self, priority: int) -> ResourceManager:
        """The circuit breakers of a routing priority (0 DEFAULT, 1 HIGH)."""
        return self.resource_managers[priority]

    def circuit_breakers_status(self) -> dict[str, dict[str, int]]:
        """The thresholds in force, by priority name, as /clusters shows them."""
        return {name: manager.thresholds_status()
                for name, manager in zip(("default", "high"), self.resource_managers, strict=True)}

    def choose_host(self, context: LoadBalancerContext | None = None) -> Host | None:
        """Pick a host for one request/connection (replaced per instance by the balancer's method).

        Returns None when no host can be picked; the caller then bumps ``upstream_cx_none_healthy``.
        """
        return self.lb.choose_host(context)

    def reseed(self) -> None:
        """Fresh randomness per worker process (round-robin start points must differ between workers)."""
        if self.fixed_seed:
            return
        self.lb.rng.seed()
        if not self.lb.uses_hash:  # rings and Maglev tables do not depend on the generator
            self.lb.update(self.hosts_per_priority, self.overprovisioning_factor)

    async def initialize(self) -> None:
        """Envoy's cluster warm-up: the first membership, then (with active health checking)
        every host's first check. Health checks and the outlier timer start here."""
        self._start_monitoring()
        await self._discover()
        if self.health_checker is not None:
            await self.health_checker.wait_first_round()

    async def _discover(self) -> None:
        """First membership (DNS types resolve here); STATIC clusters are ready at construction."""

    def start_refreshing(self) -> None:
        """Start periodic work on the running loop (nothing for STATIC)."""

    def stop_refreshing(self) -> None:
        """The cluster was replaced or removed: its periodic work (DNS, health checks) ends."""
        self._closed = True
        self._stop_monitoring()
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    async def close(self) -> None:
        self._closed = True
        tasks, self._tasks = self._tasks, []
        tasks += self._stop_monitoring()
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        for host in self.hosts:
            for pool in host_pools(host):
                await pool.close()

    def _retire(self, hosts: Sequence[Host]) -> None:
        """Hosts that left the cluster: let their pools wind down (Envoy drains them)."""
        for host in hosts:
            for pool in host_pools(host):
                drain = getattr(pool, "drain", None)
                if drain is not None:
                    drain()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {self.lb_policy}, hosts={len(self.hosts)})"


class _ResolveTarget:
    """One endpoint name of a DNS cluster and the hosts its latest answer produced."""

    __slots__ = ("endpoint", "hosts", "backoff", "last_ok")

    def __init__(self, endpoint: EndpointConfig, backoff: dns.FailureBackoff | None) -> None:
        self.endpoint = endpoint
        self.hosts: list[Host] = []
        self.backoff = backoff
        self.last_ok = True


class _DnsCluster(Cluster):
    lookup_timeout = dns.DEFAULT_LOOKUP_TIMEOUT

    def __init__(self, config: ClusterConfig, *, store: Store, rng: random.Random | None = None) -> None:
        # endpoints are names here: hosts come from the first DNS answer, not the config
        super().__init__(replace(config, endpoints=()), store=store, rng=rng)
        self.config = config
        self.initialized = False
        failure = config.dns_failure_refresh_rate
        self.dns_lookup_family = config.dns_lookup_family
        self.dns_refresh_rate = config.dns_refresh_rate
        self.targets = [
            _ResolveTarget(endpoint, dns.FailureBackoff(failure[0], failure[1], self.lb.rng) if failure else None)
            for endpoint in config.endpoints
        ]

    async def _discover(self) -> None:
        await self.refresh()
        self.initialized = True

    async def refresh(self) -> None:
        """Resolve every endpoint name once now (the periodic loops do this on their own schedule)."""
        await asyncio.gather(*(self._resolve(target) for target in self.targets))

    def start_refreshing(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        self._tasks.extend(loop.create_task(self._refresh_loop(target)) for target in self.targets)

    async def _refresh_loop(self, target: _ResolveTarget) -> None:
        while True:
            if target.last_ok or target.backoff is None:
                delay = self.dns_refresh_rate
            else:
                delay = target.backoff.next_delay()
            await asyncio.sleep(delay)
            try:
                await self._resolve(target)
            except Exception:  # keep refreshing: one bad round must not freeze membership forever
                target.last_ok = False
                log.exception("cluster %s: DNS refresh of %s failed", self.name, target.endpoint.address)

    async def _resolve(self, target: _ResolveTarget) -> bool:
        stats = self.stats
        stats.update_attempt.value += 1
        name = target.endpoint.address
        try:
            addresses = await dns.resolve(name, self.dns_lookup_family, timeout=self.lookup_timeout)
        except dns.DnsResolutionError as exc:
            stats.update_failure.value += 1
            # Once per name and outage, not every refresh: a mesh of ServiceEntries whose hosts do not
            # resolve would otherwise log megabytes a minute (Envoy logs these at debug; the
            # update_failure counter keeps the count).
            failing_since_before = not target.last_ok
            target.last_ok = False
            log.log(logging.DEBUG if failing_since_before else logging.WARNING,
                    "cluster %s: DNS resolution failed, keeping %d host(s): %s%s", self.name, len(target.hosts),
                    exc, "" if failing_since_before else " (not logged again until it resolves)")
            return False
        stats.update_success.value += 1
        if not target.last_ok:
            log.info("cluster %s: %s resolves again", self.name, name)
        target.last_ok = True
        if target.backoff is not None:
            target.backoff.reset()
        self._apply(target, addresses)
        return True

    def _apply(self, target: _ResolveTarget, addresses: list[str]) -> None:
        raise NotImplementedError

    def _rebuild_from_targets(self) -> None:
        self._set_hosts([host for target in self.targets for host in target.hosts])

    def _remove_pending_host(self, host: Host) -> None:
        for target in self.targets:
            target.hosts = [other for other in target.hosts if other is not host]
        self._rebuild_from_targets()
        self._retire([host])
        self.stats.membership_change.value += 1


class StrictDnsCluster(_DnsCluster):
    type_name = STRICT_DNS

    def _apply(self, target: _ResolveTarget, addresses: list[str]) -> None:
        previous = {host.ip: host for host in target.hosts}
        if set(addresses) == {ip for ip, host in previous.items() if not host.pending_dynamic_removal}:
            return  # same membership: keep hosts, schedules and rings untouched
        endpoint = target.endpoint
        hostname = endpoint.hostname or endpoint.address
        hosts = []
        for ip in addresses:
            host = previous.get(ip)
            if host is None:
                host = endpoint.make_host(ip, hostname)
            elif host.pending_dynamic_removal:  # back in the answer before it failed its checks
                host.pending_dynamic_removal = False
                host.refresh_health()
            hosts.append(host)
        kept = set(addresses)
        removed = [host for ip, host in previous.items() if ip not in kept]
        held = self._hold_for_health_check(removed)
        target.hosts = hosts + held
        self._retire([host for host in removed if host not in held])
        self._rebuild_from_targets()
        self.stats.membership_change.value += 1


class LogicalDnsCluster(_DnsCluster):
    type_name = LOGICAL_DNS

    def _apply(self, target: _ResolveTarget, addresses: list[str]) -> None:
        first = addresses[0]
        if target.hosts:
            host = target.hosts[0]
            if host.ip != first:
                host.set_address(first)  # new connections go to the new address
            return
        endpoint = target.endpoint
        target.hosts = [endpoint.make_host(first, endpoint.hostname or endpoint.address)]
        self._rebuild_from_targets()
        self.stats.membership_change.value += 1


def check_ads_config_source(source: Any, field: str) -> None:
    """Tulle subscribes over the bootstrap's ADS stream only (Istio's way); refuse other sources."""
    check_fields(source, ("ads", "resource_api_version", "initial_fetch_timeout"), field)
    if not source.HasField("ads"):
        raise UnsupportedFeature("config sources other than ads (path, api_config_source)", field=field)


def parse_assignment(assignment: endpoint_pb2.ClusterLoadAssignment, field: str) -> tuple[list[EndpointConfig], int]:
    """A ClusterLoadAssignment from EDS: IP endpoints only (names are resolved by the control plane)."""
    endpoints, overprovisioning_factor = _load_assignment(assignment, field)
    resolved = []
    for endpoint in endpoints:
        try:
            ip = str(ipaddress.ip_address(endpoint.address))
        except ValueError:
            raise ConfigError(f"malformed IP address {endpoint.address!r}",
                              field=join(endpoint.field, "address")) from None
        resolved.append(replace(endpoint, address=ip))
    return resolved, overprovisioning_factor


class EdsCluster(Cluster):
    """Endpoints arrive over xDS as ClusterLoadAssignments; hosts whose ip:port stays keep their pools."""

    type_name = EDS

    def __init__(self, config: ClusterConfig, *, store: Store, rng: random.Random | None = None) -> None:
        super().__init__(config, store=store, rng=rng)
        self.initialized = bool(config.endpoints)  # an inline load_assignment counts as the first one
        self.service_name = config.eds_service_name
        self.assignment: endpoint_pb2.ClusterLoadAssignment | None = None
        self._first_assignment = asyncio.Event()
        if self.initialized:
            self._first_assignment.set()

    def apply_assignment(self, assignment: endpoint_pb2.ClusterLoadAssignment, field: str = "") -> None:
        """Validate, then install: nothing changes if the assignment is refused."""
        endpoints, overprovisioning_factor = parse_assignment(assignment, field)
        current = {(host.ip, host.port): host for host in self.hosts}
        hosts: list[Host] = []
        for endpoint in endpoints:
            fresh = endpoint.make_host(endpoint.address)
            existing = current.pop((fresh.ip, fresh.port), None)
            if existing is not None:
                existing.pending_dynamic_removal = False  # update_from refreshes the flags
                existing.update_from(fresh)
                hosts.append(existing)
            else:
                hosts.append(fresh)
        self.overprovisioning_factor = overprovisioning_factor
        removed = list(current.values())
        held = self._hold_for_health_check(removed)
        self._set_hosts(hosts + held)
        self._retire([host for host in removed if host not in held])
        self.assignment = assignment
        self.stats.membership_change.value += 1
        # update_attempt/update_success are the EDS subscription's, counted once by the ADS client
        # (tulle.xds_client.stats), not once per worker here
        self.initialized = True
        self._first_assignment.set()

    def adopt(self, previous: Cluster) -> None:
        """A CDS update replaced this cluster: keep serving the previous endpoints (and their pools)
        until EDS says otherwise, as Envoy keeps the old cluster until the new one is warm."""
        if isinstance(previous, EdsCluster) and previous.assignment is not None:
            self._set_hosts(previous.hosts)
            self.assignment = previous.assignment
            self.initialized = True
            self._first_assignment.set()

    async def _discover(self) -> None:
        await self._first_assignment.wait()


_CLUSTER_CLASSES: dict[str, type[Cluster]] = {
    STATIC: Cluster, STRICT_DNS: StrictDnsCluster, LOGICAL_DNS: LogicalDnsCluster, EDS: EdsCluster,
}


def build_cluster(
    proto: cluster_pb2.Cluster, field: str, store: Store, rng: random.Random | None = None
) -> Cluster:
    """Validate ``proto`` and build the cluster of its type (no I/O; DNS starts in ``initialize``)."""
    config = parse_cluster(proto, field)
    return _CLUSTER_CLASSES[config.type_name](config, store=store, rng=rng)
