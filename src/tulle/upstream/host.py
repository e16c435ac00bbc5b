"""Upstream hosts: one resolved address of a cluster, with its weight, priority and health.

A Host outlives DNS refreshes as long as its address stays in the answer, so
the connection pool hung on ``host.pool`` (owned by the connection-pool code)
survives re-resolution. Per-host stats are plain ints: the router and pools
bump them on every request and an attribute add is the cheapest thing Python does.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from envoy.config.core.v3 import health_check_pb2

# Envoy's HealthFlag names as the admin /clusters endpoint prints them.
FAILED_EDS_HEALTH = "/failed_eds_health"
DEGRADED_EDS_HEALTH = "/degraded_eds_health"

_UNHEALTHY_STATUSES = frozenset(
    {health_check_pb2.UNHEALTHY, health_check_pb2.DRAINING, health_check_pb2.TIMEOUT}
)


class Locality(NamedTuple):
    """(region, zone, sub_zone); a tuple so callers may also index or unpack it."""

    region: str = ""
    zone: str = ""
    sub_zone: str = ""


NO_LOCALITY = Locality()


class HostStats:
    """Envoy's per-host stats (``/clusters`` prints them as ``<host>::cx_total::3``)."""

    __slots__ = (
        "cx_total", "cx_active", "cx_connect_fail", "rq_total", "rq_success", "rq_error",
        "rq_active", "rq_timeout",
    )

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
        return {name: getattr(self, name) for name in self.__slots__}


def format_address(ip: str, port: int) -> str:
    """Envoy's address string: ``10.0.0.1:80`` and ``[::1]:80``."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def health_flags_for(health_status: int) -> str:
    """The EDS-derived part of Envoy's health flags for an endpoint's ``health_status``."""
    if health_status in _UNHEALTHY_STATUSES:
        return FAILED_EDS_HEALTH
    if health_status == health_check_pb2.DEGRADED:
        return DEGRADED_EDS_HEALTH
    return ""


class Host:
    __slots__ = (
        "ip", "port", "address_str", "hostname", "weight", "priority", "locality",
        "health_status", "health_flags", "healthy", "degraded", "stats", "pool",
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
        health_status: int = health_check_pb2.UNKNOWN,
    ) -> None:
        self.ip = ip
        self.port = port
        self.address_str = format_address(ip, port)
        self.hostname = hostname
        self.weight = weight
        self.priority = priority
        self.locality = locality
        self.health_status = health_status
        flags = health_flags_for(health_status)
        # Envoy prints "healthy" when no flag is set, else the concatenated flags.
        self.health_flags = flags or "healthy"
        self.healthy = not flags
        self.degraded = flags == DEGRADED_EDS_HEALTH
        self.stats = HostStats()
        self.pool: Any = None  # the connection pool, owned by upstream.http_pool

    def update_from(self, other: Host) -> None:
        """EDS: the same ip:port came back with new weight/priority/locality/health.

        The Host object (its stats and connection pool) survives; only its attributes change.
        """
        self.hostname = other.hostname
        self.weight = other.weight
        self.priority = other.priority
        self.locality = other.locality
        self.health_status = other.health_status
        self.health_flags = other.health_flags
        self.healthy = other.healthy
        self.degraded = other.degraded

    def set_address(self, ip: str) -> None:
        """LOGICAL_DNS: the one logical host follows the latest DNS answer; new connections use it."""
        self.ip = ip
        self.address_str = format_address(ip, self.port)

    def __repr__(self) -> str:
        return f"Host({self.address_str}, weight={self.weight}, priority={self.priority}, {self.health_flags})"
