"""Mesh-wide settings the translation reads (the part of Istio's MeshConfig it needs)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class TranslateOptions:
    # MeshConfig.connectTimeout (Istio's default 10s); DestinationRule tcp.connectTimeout overrides it.
    connect_timeout: str = "10s"
    # Istio gives every outbound route without VirtualService retries 2 retries on connect
    # failures and 503s (MeshConfig.defaultHttpRetryPolicy unset).
    default_http_retries: bool = True
    # Istio puts circuit breaker thresholds at 2^32-1 on every cluster (Envoy's defaults are 1024);
    # without them a cluster gets thresholds only when a connectionPool sets some.
    circuit_breaker_defaults: bool = True
    # MeshConfig.localityLbSetting (Istio's default: enabled, so a DestinationRule with
    # outlierDetection fails over by locality). None: off unless a DestinationRule turns it on.
    mesh_locality_lb_setting: dict[str, Any] | None = field(default_factory=lambda: {"enabled": True})
    # Where a sidecar without iptables listens (docs/control-plane.md: ports).
    outbound_bind_address: str = "127.0.0.1"
    forward_proxy_port: int = 15001
    inbound_port: int = 15006
    reserved_ports: tuple[int, ...] = (15000, 15001, 15006, 15010, 15020, 15021, 15090)
    # A workload's own loopback address (docs/control-plane.md, "Sidecars without iptables"): when
    # set, every listener binds it and inbound gets one listener per service port the workload serves,
    # at <workload address>:<service port>, which is the endpoint registered for it.
    workload_address: str | None = None
    # Where the app listens locally, by workload port (node metadata APP_PORTS): the inbound clusters
    # go to 127.0.0.1:<app port>; without an entry, to the workload port itself.
    app_ports: tuple[tuple[int, int], ...] = ()
    # Explicit local upstream ports (node metadata UPSTREAMS): ("reviews:9080", 19080), ...
    upstreams: tuple[tuple[str, int], ...] = ()

    def __hash__(self) -> int:
        # Options key shared translations (translate/sharing.py); the locality setting is a dict.
        return self._hash

    @cached_property
    def _hash(self) -> int:
        return hash(tuple(json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
                          for value in (getattr(self, item.name) for item in fields(self))))


ISTIO_DEFAULTS = TranslateOptions()

# What today's Tulle proxy accepts: it refuses retry_policy and circuit_breakers until the
# resilience work lands, so routes and clusters carry them only when a resource asks.
TULLE_PROXY_TODAY = TranslateOptions(default_http_retries=False, circuit_breaker_defaults=False)
