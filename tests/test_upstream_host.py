"""Hosts: addresses, health flags from EDS health_status, locality shape."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import health_check_pb2

from tulle.upstream.host import DEGRADED_EDS_HEALTH, FAILED_EDS_HEALTH, Host, Locality, format_address


def test_address_strings_follow_envoy():
    assert format_address("10.0.0.1", 80) == "10.0.0.1:80"
    assert format_address("::1", 8080) == "[::1]:8080"
    assert Host("::1", 9).address_str == "[::1]:9"


@pytest.mark.parametrize(
    ("status", "healthy", "degraded", "flags"),
    [
        (health_check_pb2.UNKNOWN, True, False, "healthy"),
        (health_check_pb2.HEALTHY, True, False, "healthy"),
        (health_check_pb2.UNHEALTHY, False, False, FAILED_EDS_HEALTH),
        (health_check_pb2.DRAINING, False, False, FAILED_EDS_HEALTH),
        (health_check_pb2.TIMEOUT, False, False, FAILED_EDS_HEALTH),
        (health_check_pb2.DEGRADED, False, True, DEGRADED_EDS_HEALTH),
    ],
)
def test_health_status_maps_to_envoy_flags(status, healthy, degraded, flags):
    host = Host("10.0.0.1", 80, health_status=status)
    assert (host.healthy, host.degraded, host.health_flags) == (healthy, degraded, flags)


def test_defaults_and_fields():
    host = Host("10.0.0.1", 80, hostname="svc", weight=3, priority=2, locality=Locality("r", "z", "s"))
    assert (host.hostname, host.weight, host.priority) == ("svc", 3, 2)
    assert host.locality.zone == "z" and host.locality[0] == "r" and tuple(host.locality) == ("r", "z", "s")
    assert host.pool is None
    assert host.stats.as_dict() == dict.fromkeys(
        ("cx_total", "cx_active", "cx_connect_fail", "rq_total", "rq_success", "rq_error", "rq_active",
         "rq_timeout"), 0)
    host.stats.rq_total += 2
    assert host.stats.as_dict()["rq_total"] == 2


def test_set_address_updates_ip_and_address_string():
    host = Host("10.0.0.1", 443)
    host.set_address("10.0.0.9")
    assert (host.ip, host.port, host.address_str) == ("10.0.0.9", 443, "10.0.0.9:443")
