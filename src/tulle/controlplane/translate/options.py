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
    # Istio's default retry policies: every outbound route without VirtualService retries gets 2
    # retries on connect failures, refused streams and gRPC unavailable/cancelled
    # (MeshConfig.defaultHttpRetryPolicy unset), every inbound HTTP route 2 retries on
    # reset-before-request (ENABLE_INBOUND_RETRY_POLICY). Off: routes retry only when asked.
    default_http_retries: bool = True
    # Istio puts circuit breaker thresholds at 2^32-1 on every cluster (Envoy's defaults are 1024);
    # without them a cluster gets thresholds only when a connectionPool sets some.
    circuit_breaker_defaults: bool = True
    # Envoy fields the target proxy does not implement (names from LACKABLE): the translation
    # leaves each out of that proxy's config, or takes the fallback LACKABLE describes, instead
    # of sending what the proxy would refuse (and NACK with everything else in the response);
    # istio/validation.py warns about resources that ask for them.
    proxy_lacks: frozenset[str] = frozenset()
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


# Envoy field -> the Istio setting that produces it and what a proxy lacking it gets instead.
LACKABLE = {
    "http2_protocol_options": ("HTTP/2 upstreams (HTTP2/GRPC ports, connectionPool.http.h2UpgradePolicy, "
                               "useClientProtocol)", "HTTP/1.1 to every upstream"),
    "max_grpc_timeout": ("the grpc-timeout header of gRPC clients", "the route timeout only"),
    "retry_priority": ("retries.retryRemoteLocalities", "retries in any locality"),
    "upstream_connection_options": ("connectionPool.tcp.tcpKeepalive", "the OS keepalive settings"),
    "max_connection_duration": ("connectionPool.tcp.maxConnectionDuration on HTTP connections",
                                "no limit on an upstream connection's age"),
    "slow_start_config": ("loadBalancer.warmupDurationSecs", "new endpoints get their full share at once"),
}

ISTIO_DEFAULTS = TranslateOptions()

# What today's Tulle proxy accepts. tests/test_controlplane_translate_options.py keeps this
# honest: it loads rich translations through the proxy's own xDS factories, with these options
# (everything must be accepted) and with ISTIO_DEFAULTS (exactly what is gated here must be
# refused, so a gate the proxy no longer needs fails the test).
TULLE_PROXY_TODAY = TranslateOptions(
    proxy_lacks=frozenset({"retry_priority", "slow_start_config"}),
)
