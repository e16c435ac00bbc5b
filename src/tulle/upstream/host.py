"""Upstream hosts: one resolved address of a cluster, with its weight, priority and health.

A Host outlives DNS refreshes as long as its address stays in the answer, so
the connection pool hung on ``host.pool`` (owned by the connection-pool code)
survives re-resolution. Per-host stats are plain ints: the router and pools
bump them on every request and an attribute add is the cheapest thing Python does.

Health is Envoy's set of health flags: EDS status, active health checking
(:mod:`tulle.upstream.health_check`) and outlier detection
(:mod:`tulle.upstream.outlier_detection`) each own some of them, and
:meth:`Host.refresh_health` folds them into ``healthy`` / ``degraded`` (what the
load balancer reads) and ``health_flags`` (what /clusters prints).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import cython
from envoy.config.core.v3 import health_check_pb2

# Envoy's HealthFlag names as the admin /clusters endpoint prints them.
FAILED_ACTIVE_HC = "/failed_active_hc"
FAILED_OUTLIER_CHECK = "/failed_outlier_check"
FAILED_EDS_HEALTH = "/failed_eds_health"
DEGRADED_ACTIVE_HC = "/degraded_active_hc"
DEGRADED_EDS_HEALTH = "/degraded_eds_health"
PENDING_DYNAMIC_REMOVAL = "/pending_dynamic_removal"
ACTIVE_HC_TIMEOUT = "/active_hc_timeout"

_UNHEALTHY_STATUSES = frozenset(
    {health_check_pb2.UNHEALTHY, health_check_pb2.DRAINING, health_check_pb2.TIMEOUT}
)


class Locality(NamedTuple):
    """(region, zone, sub_zone); a tuple so callers may also index or unpack it."""

    region: str = ""
    zone: str = ""
    sub_zone: str = ""


NO_LOCALITY = Locality()


_HOST_STAT_NAMES = (
    "cx_total", "cx_active", "cx_connect_fail", "rq_total", "rq_success", "rq_error", "rq_active", "rq_timeout",
)


class HostStats:
    """Envoy's per-host stats (``/clusters`` prints them as ``<host>::cx_total::3``)."""

    if not cython.compiled:
        __slots__ = _HOST_STAT_NAMES

    def __init__(self) -> None:
        self.cx_total = 0
        self.cx_active = 0
        self.cx_connect_fail = 0
        self.rq_total = 0
        self.rq_success = 0
        self.rq_error = 0
        self.rq_active = 0
        self.rq_timeout = 0

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in _HOST_STAT_NAMES}


def format_address(ip: str, port: int) -> str:
    """Envoy's address string: ``10.0.0.1:80`` and ``[::1]:80``."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


class NoOutlierMonitor:
    """``host.outlier`` when the cluster has no outlier detection: every report is a no-op.

    The router and tcp_proxy call these on every request unconditionally; an empty
    method is cheaper than a None check plus the call it would guard in the common case.
    """

    if not cython.compiled:
        __slots__ = ()
    success_rate = -1.0
    local_origin_success_rate = -1.0

    def put_http_status(self, status: int) -> None:
        pass

    def put_connect_success(self) -> None:
        pass

    def put_connect_success_final(self) -> None:
        pass

    def put_local_origin_failure(self) -> None:
        pass


NO_OUTLIER_MONITOR = NoOutlierMonitor()


def health_flags_for(health_status: int) -> str:
    """The EDS-derived part of Envoy's health flags for an endpoint's ``health_status``."""
    if health_status in _UNHEALTHY_STATUSES:
        return FAILED_EDS_HEALTH
    if health_status == health_check_pb2.DEGRADED:
        return DEGRADED_EDS_HEALTH
    return ""


class Host:
    """One endpoint of a cluster (a cdef class when compiled: the balancer reads it per request)."""

    if not cython.compiled:
        __slots__ = (
            "ip", "port", "address_str", "hostname", "weight", "priority", "locality", "locality_weight",
            "health_check_port", "health_status", "health_flags", "healthy", "degraded", "stats", "pool", "http2_pool",
            "failed_active_hc", "degraded_active_hc", "active_hc_timeout", "failed_outlier_check",
            "pending_dynamic_removal", "outlier",
        )

    def __init__(
        self,
        ip: str,
        port: int,
        *,
        hostname: str = "",
        weight: int = 1,
        priority: int = 0,
        locality: Locality = NO_LOCALITY,
        locality_weight: int = 0,
        health_check_port: int = 0,
        health_status: int = health_check_pb2.UNKNOWN,
    ) -> None:
        self.ip = ip
        self.port = port
        self.address_str = format_address(ip, port)
        self.hostname = hostname
        self.weight = weight
        self.priority = priority
        self.locality = locality
        # Its LocalityLbEndpoints' load_balancing_weight (0: none given), read only by
        # locality weighted load balancing; Envoy keeps it per (priority, locality).
        self.locality_weight = locality_weight
        # Endpoint.health_check_config.port_value: active checks go there (0: the serving port).
        self.health_check_port = health_check_port
        self.health_status = health_status
        # Flags owned by active health checking and outlier detection (see refresh_health).
        self.failed_active_hc = False
        self.degraded_active_hc = False
        self.active_hc_timeout = False
        self.failed_outlier_check = False
        self.pending_dynamic_removal = False
        self.outlier: Any = NO_OUTLIER_MONITOR  # the cluster's outlier detector replaces it
        self.health_flags = "healthy"
        self.healthy = True
        self.degraded = False
        self.refresh_health()
        self.stats = HostStats()
        self.pool: Any = None  # the HTTP/1.1 connection pool (upstream.http_pool), made on first use
        self.http2_pool: Any = None  # the HTTP/2 one (upstream.http2_pool)

    def refresh_health(self) -> None:
        """Recompute ``healthy``, ``degraded`` and ``health_flags`` after any flag changed.

        Envoy's coarse health: any FAILED_* flag makes the host unhealthy, else any
        DEGRADED_* flag makes it degraded. Flags print in Envoy's HealthFlag order and
        the string is "healthy" when none is set.
        """
        status = self.health_status
        failed_eds = status in _UNHEALTHY_STATUSES
        degraded_eds = status == health_check_pb2.DEGRADED
        flags = "".join(
            name for name, is_set in (
                (FAILED_ACTIVE_HC, self.failed_active_hc),
                (FAILED_OUTLIER_CHECK, self.failed_outlier_check),
                (FAILED_EDS_HEALTH, failed_eds),
                (DEGRADED_ACTIVE_HC, self.degraded_active_hc),
                (DEGRADED_EDS_HEALTH, degraded_eds),
                (PENDING_DYNAMIC_REMOVAL, self.pending_dynamic_removal),
                (ACTIVE_HC_TIMEOUT, self.active_hc_timeout),
            ) if is_set
        )
        self.health_flags = flags or "healthy"
        failed = self.failed_active_hc or self.failed_outlier_check or failed_eds
        degraded = self.degraded_active_hc or degraded_eds
        self.healthy = not failed and not degraded
        self.degraded = not failed and degraded

    def reset_monitoring(self, *, active_health_checked: bool) -> None:
        """The host joins a cluster: drop flags another cluster's checkers left on it.

        Under active health checking a new host starts as failed until its first
        check, as in Envoy (the cluster's warm-up waits for that first check).
        """
        self.failed_active_hc = active_health_checked
        self.degraded_active_hc = False
        self.active_hc_timeout = False
        self.failed_outlier_check = False
        self.pending_dynamic_removal = False
        self.outlier = NO_OUTLIER_MONITOR
        self.refresh_health()

    def update_from(self, other: Host) -> None:
        """EDS: the same ip:port came back with new weight/priority/locality/health.

        The Host object (its stats and connection pool) survives; only its attributes change.
        """
        self.hostname = other.hostname
        self.weight = other.weight
        self.priority = other.priority
        self.locality = other.locality
        self.locality_weight = other.locality_weight
        self.health_check_port = other.health_check_port
        self.health_status = other.health_status
        # Active health checking and outlier detection flags are this host's own: keep them.
        self.refresh_health()

    def set_address(self, ip: str) -> None:
        """LOGICAL_DNS: the one logical host follows the latest DNS answer; new connections use it."""
        self.ip = ip
        self.address_str = format_address(ip, self.port)

    def __repr__(self) -> str:
        return f"Host({self.address_str}, weight={self.weight}, priority={self.priority}, {self.health_flags})"
