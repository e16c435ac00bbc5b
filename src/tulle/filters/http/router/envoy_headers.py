"""The x-envoy-* request headers the router consumes (reads, then removes before forwarding).

Read only when the connection manager saw an ``x-envoy-`` request header at all
(``stream.has_envoy_headers``): the common request pays nothing. An edge proxy
(``use_remote_address``) strips them from untrusted clients before the router runs, so
what reaches here came from a trusted (internal) peer, as in Envoy.
"""

from __future__ import annotations

from tulle.http.headers import HeaderMap

RETRY_ON = "x-envoy-retry-on"
RETRY_GRPC_ON = "x-envoy-retry-grpc-on"
MAX_RETRIES = "x-envoy-max-retries"
RETRIABLE_STATUS_CODES = "x-envoy-retriable-status-codes"
RETRIABLE_HEADER_NAMES = "x-envoy-retriable-header-names"
UPSTREAM_RQ_TIMEOUT_MS = "x-envoy-upstream-rq-timeout-ms"
UPSTREAM_RQ_PER_TRY_TIMEOUT_MS = "x-envoy-upstream-rq-per-try-timeout-ms"
UPSTREAM_RQ_TIMEOUT_ALT_RESPONSE = "x-envoy-upstream-rq-timeout-alt-response"
UPSTREAM_STREAM_DURATION_MS = "x-envoy-upstream-stream-duration-ms"
HEDGE_ON_PER_TRY_TIMEOUT = "x-envoy-hedge-on-per-try-timeout"
EXPECTED_RQ_TIMEOUT_MS = "x-envoy-expected-rq-timeout-ms"

_CONSUMED = {
    RETRY_ON: "retry_on", RETRY_GRPC_ON: "retry_grpc_on", MAX_RETRIES: "max_retries",
    RETRIABLE_STATUS_CODES: "retriable_status_codes", RETRIABLE_HEADER_NAMES: "retriable_header_names",
    UPSTREAM_RQ_TIMEOUT_MS: "rq_timeout_ms", UPSTREAM_RQ_PER_TRY_TIMEOUT_MS: "per_try_timeout_ms",
    UPSTREAM_RQ_TIMEOUT_ALT_RESPONSE: "timeout_alt_response", UPSTREAM_STREAM_DURATION_MS: "stream_duration_ms",
    # hedging is not supported (hedge_policy is refused); the header is consumed like Envoy does
    HEDGE_ON_PER_TRY_TIMEOUT: "hedge_on_per_try_timeout",
}


def parse_ms(value: str | None) -> float | None:
    """A whole number of milliseconds as seconds; None when absent or not a number (then ignored, as Envoy)."""
    if value is None:
        return None
    value = value.strip()
    return int(value) / 1000 if value.isdigit() else None


class EnvoyRequestHeaders:
    """First values of the consumed headers (None when absent); ``expected_rq_timeout_ms`` is read, not removed."""

    __slots__ = (*_CONSUMED.values(), "expected_rq_timeout_ms")

    def __init__(self) -> None:
        for slot in self.__slots__:
            setattr(self, slot, None)

    @classmethod
    def take(cls, headers: HeaderMap, respect_expected_rq_timeout: bool) -> EnvoyRequestHeaders | None:
        """Collect and remove the router's x-envoy-* request headers in one pass; None when
        none of them (that matter here) is present."""
        found = cls()
        kept = []
        consumed = _CONSUMED
        for item in headers.items():
            slot = consumed.get(item[0])
            if slot is None:
                if item[0] == EXPECTED_RQ_TIMEOUT_MS and found.expected_rq_timeout_ms is None:
                    found.expected_rq_timeout_ms = item[1]
                kept.append(item)
            elif getattr(found, slot) is None:
                setattr(found, slot, item[1])
        if len(kept) != len(headers):
            headers._items = kept  # noqa: SLF001 - one rebuild instead of a remove() per header
        elif found.expected_rq_timeout_ms is None or not respect_expected_rq_timeout:
            return None
        return found
