"""DNS resolution for STRICT_DNS and LOGICAL_DNS clusters, off the event loop.

``loop.getaddrinfo`` runs the system resolver in a thread (libuv's pool under
uvloop), so a slow DNS server never stalls request processing. One
``AF_UNSPEC`` lookup is filtered by Envoy's ``dns_lookup_family``:

* AUTO: IPv6 addresses if there are any, else IPv4 (Envoy's "V6 preferred").
* V4_PREFERRED: IPv4 addresses if there are any, else IPv6.
* V4_ONLY / V6_ONLY: only that family.
* ALL: both families, in the resolver's order.

TEST-ONLY: the environment variable ``TULLE_TEST_DNS_OVERRIDES`` ("name=ip;name2=ip1,ip2")
is consulted before real resolution so that conformance tests written for
docker-compose names (``service1``) can run on loopback. It is read on every
lookup and is not meant for production use.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import socket

OVERRIDES_ENV = "TULLE_TEST_DNS_OVERRIDES"

AUTO = "AUTO"
V4_ONLY = "V4_ONLY"
V6_ONLY = "V6_ONLY"
V4_PREFERRED = "V4_PREFERRED"
ALL = "ALL"
LOOKUP_FAMILIES = (AUTO, V4_ONLY, V6_ONLY, V4_PREFERRED, ALL)

# Bound on one lookup, like c-ares' default timeout in Envoy; the thread is left to finish.
DEFAULT_LOOKUP_TIMEOUT = 5.0


class DnsResolutionError(Exception):
    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(f"cannot resolve {name!r}: {reason}")


def parse_overrides(text: str) -> dict[str, list[str]]:
    """``"a=1.2.3.4;b=::1,10.0.0.2"`` -> ``{"a": ["1.2.3.4"], "b": ["::1", "10.0.0.2"]}``."""
    overrides: dict[str, list[str]] = {}
    for item in text.split(";"):
        name, sep, ips = item.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            continue
        addresses = [ip.strip() for ip in ips.split(",") if ip.strip()]
        for ip in addresses:
            ipaddress.ip_address(ip)  # a typo in a test fixture should fail loudly
        overrides[name] = addresses
    return overrides


def overrides_from_env() -> dict[str, list[str]]:
    text = os.environ.get(OVERRIDES_ENV, "")
    return parse_overrides(text) if text else {}


def _is_v6(ip: str) -> bool:
    return ":" in ip


def select_family(addresses: list[str], family: str) -> list[str]:
    """Apply a ``dns_lookup_family`` policy to an ordered, de-duplicated address list."""
    v4 = [ip for ip in addresses if not _is_v6(ip)]
    v6 = [ip for ip in addresses if _is_v6(ip)]
    if family == V4_ONLY:
        return v4
    if family == V6_ONLY:
        return v6
    if family == V4_PREFERRED:
        return v4 or v6
    if family == AUTO:
        return v6 or v4
    return addresses


def _address_family(family: str) -> int:
    if family == V4_ONLY:
        return socket.AF_INET
    if family == V6_ONLY:
        return socket.AF_INET6
    return socket.AF_UNSPEC


async def resolve(
    name: str,
    family: str = AUTO,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    timeout: float = DEFAULT_LOOKUP_TIMEOUT,
) -> list[str]:
    """Resolve ``name`` to IP strings by the lookup-family policy; raise DnsResolutionError."""
    overridden = overrides_from_env().get(name.lower())
    if overridden is not None:
        addresses = overridden
    else:
        try:
            literal = ipaddress.ip_address(name)
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [str(literal)]
        else:
            addresses = await _getaddrinfo(name, family, loop or asyncio.get_running_loop(), timeout)
    selected = select_family(addresses, family)
    if not selected:
        raise DnsResolutionError(name, f"no address for lookup family {family}")
    return selected


async def _getaddrinfo(
    name: str, family: str, loop: asyncio.AbstractEventLoop, timeout: float
) -> list[str]:
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(name, None, family=_address_family(family), type=socket.SOCK_STREAM),
            timeout,
        )
    except TimeoutError:
        raise DnsResolutionError(name, f"timed out after {timeout:g}s") from None
    except OSError as exc:  # socket.gaierror is an OSError
        raise DnsResolutionError(name, exc.strerror or str(exc)) from None
    seen: dict[str, None] = {}
    for info_family, _type, _proto, _canon, sockaddr in infos:
        if info_family in (socket.AF_INET, socket.AF_INET6):
            seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


class FailureBackoff:
    """Envoy's jittered exponential back-off for ``dns_failure_refresh_rate``.

    Each failure waits a uniformly random time below the current interval, which
    doubles up to ``max_interval``; a success resets it to ``base_interval``.
    """

    __slots__ = ("base_interval", "max_interval", "_next", "_rng")

    def __init__(self, base_interval: float, max_interval: float, rng: random.Random) -> None:
        self.base_interval = base_interval
        self.max_interval = max_interval
        self._next = base_interval
        self._rng = rng

    def next_delay(self) -> float:
        interval = self._next
        self._next = min(interval * 2, self.max_interval)
        # a floor keeps an unlucky draw of ~0 from turning into a busy loop
        return max(0.001, min(self._rng.random() * interval, self.max_interval))

    def reset(self) -> None:
        self._next = self.base_interval
