"""Responses the proxy makes itself, worded the way Envoy words them.

Dashboards, tests and runbooks written for Envoy grep for these bodies
("no healthy upstream", "upstream request timeout", ...), so keep them identical.
"""

from __future__ import annotations

from tulle import stream_info as flags

# response flag -> (status, body, response_code_details)
BY_FLAG: dict[str, tuple[int, bytes, str]] = {
    flags.NO_ROUTE_FOUND: (404, b"", "route_not_found"),
    flags.NO_CLUSTER_FOUND: (503, b"", "cluster_not_found"),
    flags.NO_HEALTHY_UPSTREAM: (503, b"no healthy upstream", "no_healthy_upstream"),
    flags.UPSTREAM_CONNECTION_FAILURE: (
        503,
        b"upstream connect error or disconnect/reset before headers. reset reason: connection failure",
        "upstream_reset_before_response_started{connection_failure}",
    ),
    flags.UPSTREAM_CONNECTION_TERMINATION: (
        503,
        b"upstream connect error or disconnect/reset before headers. reset reason: connection termination",
        "upstream_reset_before_response_started{connection_termination}",
    ),
    flags.UPSTREAM_REMOTE_RESET: (
        503,
        b"upstream connect error or disconnect/reset before headers. reset reason: remote reset",
        "upstream_reset_before_response_started{remote_reset}",
    ),
    # Envoy's router answers an upstream protocol error (a response it cannot parse) 502, not 503
    flags.UPSTREAM_PROTOCOL_ERROR: (
        502,
        b"upstream connect error or disconnect/reset before headers. reset reason: protocol error",
        "upstream_reset_before_response_started{protocol_error}",
    ),
    flags.UPSTREAM_OVERFLOW: (
        503,
        b"upstream connect error or disconnect/reset before headers. reset reason: overflow",
        "upstream_reset_before_response_started{overflow}",
    ),
    flags.UPSTREAM_REQUEST_TIMEOUT: (504, b"upstream request timeout", "upstream_response_timeout"),
    flags.STREAM_IDLE_TIMEOUT: (408, b"stream timeout", "stream_idle_timeout"),
}
