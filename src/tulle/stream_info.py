"""What happened to one request or connection: read by access logs, stats and the admin.

Mirrors Envoy's StreamInfo. Response flags use Envoy's short names so that
access logs and dashboards built for Envoy read Tulle's the same way.
"""

from __future__ import annotations

import time
from typing import Any

import cython

# Envoy response flags (short form, as in %RESPONSE_FLAGS%).
NO_ROUTE_FOUND = "NR"
NO_HEALTHY_UPSTREAM = "UH"
UPSTREAM_CONNECTION_FAILURE = "UF"
UPSTREAM_REMOTE_RESET = "UR"
UPSTREAM_REQUEST_TIMEOUT = "UT"
DOWNSTREAM_CONNECTION_TERMINATION = "DC"
UPSTREAM_CONNECTION_TERMINATION = "UC"
UPSTREAM_OVERFLOW = "UO"
NO_CLUSTER_FOUND = "NC"
STREAM_IDLE_TIMEOUT = "SI"
DOWNSTREAM_PROTOCOL_ERROR = "DPE"
UPSTREAM_PROTOCOL_ERROR = "UPE"
DURATION_TIMEOUT = "DT"
LOCAL_RESET = "LR"
DELAY_INJECTED = "DI"
FAULT_INJECTED = "FI"
RATE_LIMITED = "RL"
DOWNSTREAM_REMOTE_RESET = "DR"
UPSTREAM_RETRY_LIMIT_EXCEEDED = "URX"
UPSTREAM_MAX_STREAM_DURATION_REACHED = "UMSDR"


if not cython.compiled:  # cimported by stream_info.pxd; only the compiled branch uses them
    CLOCK_MONOTONIC = CLOCK_REALTIME = clock_gettime = timespec = None


class StreamInfo:
    """Filled in by the connection manager, router and tcp_proxy as a stream progresses."""

    if not cython.compiled:
        __slots__ = (
            "start_time", "start_monotonic", "end_monotonic", "first_upstream_rx_monotonic",
            "protocol", "request_headers", "response_headers", "response_trailers", "response_code",
            "response_code_details",
            "response_flags", "bytes_received", "bytes_sent", "upstream_host", "upstream_cluster",
            "upstream_local_address", "downstream_remote_address", "downstream_local_address",
            "route_name", "request_id", "connection_termination_details", "filter_state",
            "last_downstream_rx_monotonic", "health_check",
        )

    def __init__(self, downstream_remote_address: str = "", downstream_local_address: str = "") -> None:
        if cython.compiled:  # the clocks time.time() and time.monotonic() read, without two Python calls
            now = cython.declare(timespec)
            clock_gettime(CLOCK_REALTIME, cython.address(now))
            self.start_time = now.tv_sec + now.tv_nsec * 1e-9
            clock_gettime(CLOCK_MONOTONIC, cython.address(now))
            self.start_monotonic = now.tv_sec + now.tv_nsec * 1e-9
        else:
            self.start_time = time.time()
            self.start_monotonic = time.monotonic()
        self.end_monotonic: float | None = None
        self.first_upstream_rx_monotonic: float | None = None
        self.protocol = "HTTP/1.1"
        self.request_headers: Any = None  # HeaderMap
        self.response_headers: Any = None  # HeaderMap
        self.response_trailers: Any = None  # HeaderMap, when the response ended with trailers (gRPC)
        self.response_code = 0
        self.response_code_details = ""
        self.response_flags: list[str] = []
        self.bytes_received = 0
        self.bytes_sent = 0
        self.upstream_host = ""  # "ip:port"
        self.upstream_cluster = ""
        self.upstream_local_address = ""
        self.downstream_remote_address = downstream_remote_address  # "ip:port"
        self.downstream_local_address = downstream_local_address
        self.route_name = ""
        self.request_id = ""
        self.connection_termination_details = ""
        self.filter_state: dict[str, Any] | None = None
        self.last_downstream_rx_monotonic: float | None = None  # request fully received
        self.health_check = False

    def add_flag(self, flag: str) -> None:
        if flag not in self.response_flags:
            self.response_flags.append(flag)

    def flags_string(self) -> str:
        return ",".join(self.response_flags) if self.response_flags else "-"

    def duration_ms(self) -> int | None:
        if self.end_monotonic is None:
            return None
        # round away float error first (0.1 s must not read 99 ms), then truncate like Envoy
        return round((self.end_monotonic - self.start_monotonic) * 1e6) // 1000
