"""DNS: lookup-family policies, the test-only override variable, real resolution, back-off."""

from __future__ import annotations

import asyncio
import random

import pytest

from tulle.upstream import dns


def test_parse_overrides():
    assert dns.parse_overrides("service1=127.0.0.1; B = ::1,10.0.0.2 ;;junk") == {
        "service1": ["127.0.0.1"], "b": ["::1", "10.0.0.2"],
    }
    with pytest.raises(ValueError):
        dns.parse_overrides("a=not-an-ip")


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        (dns.V4_ONLY, ["10.0.0.1", "10.0.0.2"]),
        (dns.V6_ONLY, ["::1"]),
        (dns.V4_PREFERRED, ["10.0.0.1", "10.0.0.2"]),
        (dns.AUTO, ["::1"]),
        (dns.ALL, ["10.0.0.1", "::1", "10.0.0.2"]),
    ],
)
def test_select_family(family, expected):
    assert dns.select_family(["10.0.0.1", "::1", "10.0.0.2"], family) == expected


def test_preferences_fall_back_to_the_other_family():
    assert dns.select_family(["10.0.0.1"], dns.AUTO) == ["10.0.0.1"]
    assert dns.select_family(["::2"], dns.V4_PREFERRED) == ["::2"]
    assert dns.select_family(["::2"], dns.V4_ONLY) == []


def test_override_is_consulted_first(monkeypatch):
    monkeypatch.setenv(dns.OVERRIDES_ENV, "service1=127.0.0.5;Other=::1")
    assert asyncio.run(dns.resolve("service1", dns.AUTO)) == ["127.0.0.5"]
    assert asyncio.run(dns.resolve("OTHER", dns.ALL)) == ["::1"]
    with pytest.raises(dns.DnsResolutionError, match="V4_ONLY"):
        asyncio.run(dns.resolve("other", dns.V4_ONLY))


def test_ip_literals_resolve_to_themselves(monkeypatch):
    monkeypatch.delenv(dns.OVERRIDES_ENV, raising=False)
    assert asyncio.run(dns.resolve("10.1.2.3", dns.AUTO)) == ["10.1.2.3"]
    assert asyncio.run(dns.resolve("::0001", dns.V6_ONLY)) == ["::1"]


def test_real_localhost_lookup(monkeypatch):
    monkeypatch.delenv(dns.OVERRIDES_ENV, raising=False)
    assert asyncio.run(dns.resolve("localhost", dns.V4_ONLY)) == ["127.0.0.1"]
    auto = asyncio.run(dns.resolve("localhost", dns.AUTO))
    assert auto and all(ip in ("127.0.0.1", "::1") for ip in auto)


def test_unresolvable_name_raises(monkeypatch):
    monkeypatch.delenv(dns.OVERRIDES_ENV, raising=False)
    with pytest.raises(dns.DnsResolutionError) as caught:
        asyncio.run(dns.resolve("no-such-host.invalid", dns.V4_ONLY))
    assert caught.value.name == "no-such-host.invalid"


def test_failure_backoff_is_jittered_exponential_and_resets():
    backoff = dns.FailureBackoff(1.0, 5.0, random.Random(1))
    delays = [backoff.next_delay() for _ in range(6)]
    bounds = [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert all(0 < delay <= bound for delay, bound in zip(delays, bounds, strict=True))
    assert max(delays[3:]) > 1.0  # the interval really grew
    backoff.reset()
    after_reset = [backoff.next_delay() for _ in range(40)]
    assert after_reset[0] <= 1.0
    assert max(after_reset) <= 5.0
