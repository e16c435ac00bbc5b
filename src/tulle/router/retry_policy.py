"""RetryPolicy and the other per-route timing settings, compiled (Envoy's RetryPolicyImpl).

A route's retry policy is its own ``route.retry_policy``, else its virtual host's (the whole
policy, no merging, as in Envoy). What the router needs per request is precomputed here: the
``retry_on`` bit set, intervals in milliseconds, header predicates. The per-request decisions
live in ``filters/http/router/retry_state.py``.

Refused by field name: ``retry_priority``, ``retry_options_predicates``,
``rate_limited_retry_back_off`` and any host predicate other than
``envoy.retry_host_predicates.previous_hosts``.
"""

from __future__ import annotations

from google.protobuf import message

from tulle.config.errors import ConfigError, UnsupportedFeature, join
from tulle.config.loader import type_name_of, unpack_any
from tulle.config.support import check_fields
from tulle.router.matchers import HeaderPredicate, compile_header_matcher

# retry_on bits (Envoy's RetryPolicy::RETRY_ON_*)
RETRY_ON_5XX = 1 << 0
RETRY_ON_GATEWAY_ERROR = 1 << 1
RETRY_ON_CONNECT_FAILURE = 1 << 2
RETRY_ON_RETRIABLE_4XX = 1 << 3
RETRY_ON_REFUSED_STREAM = 1 << 4
RETRY_ON_RETRIABLE_STATUS_CODES = 1 << 5
RETRY_ON_RETRIABLE_HEADERS = 1 << 6
RETRY_ON_RESET = 1 << 7
RETRY_ON_RESET_BEFORE_REQUEST = 1 << 8
RETRY_ON_ENVOY_RATE_LIMITED = 1 << 9
RETRY_ON_HTTP3_POST_CONNECT_FAILURE = 1 << 10
RETRY_ON_GRPC_CANCELLED = 1 << 11
RETRY_ON_GRPC_DEADLINE_EXCEEDED = 1 << 12
RETRY_ON_GRPC_RESOURCE_EXHAUSTED = 1 << 13
RETRY_ON_GRPC_UNAVAILABLE = 1 << 14
RETRY_ON_GRPC_INTERNAL = 1 << 15

# x-envoy-retry-on values (also valid in retry_on)
HTTP_RETRY_ON = {
    "5xx": RETRY_ON_5XX,
    "gateway-error": RETRY_ON_GATEWAY_ERROR,
    "connect-failure": RETRY_ON_CONNECT_FAILURE,
    "envoy-ratelimited": RETRY_ON_ENVOY_RATE_LIMITED,
    "retriable-4xx": RETRY_ON_RETRIABLE_4XX,
    # HTTP/2 and HTTP/3 conditions: accepted, and never true on Tulle's HTTP/1.1 upstreams
    "refused-stream": RETRY_ON_REFUSED_STREAM,
    "http3-post-connect-failure": RETRY_ON_HTTP3_POST_CONNECT_FAILURE,
    "retriable-status-codes": RETRY_ON_RETRIABLE_STATUS_CODES,
    "retriable-headers": RETRY_ON_RETRIABLE_HEADERS,
    "reset": RETRY_ON_RESET,
    "reset-before-request": RETRY_ON_RESET_BEFORE_REQUEST,
}
# x-envoy-retry-grpc-on values (also valid in retry_on)
GRPC_RETRY_ON = {
    "cancelled": RETRY_ON_GRPC_CANCELLED,
    "deadline-exceeded": RETRY_ON_GRPC_DEADLINE_EXCEEDED,
    "resource-exhausted": RETRY_ON_GRPC_RESOURCE_EXHAUSTED,
    "unavailable": RETRY_ON_GRPC_UNAVAILABLE,
    "internal": RETRY_ON_GRPC_INTERNAL,
}
GRPC_ANY = (RETRY_ON_GRPC_CANCELLED | RETRY_ON_GRPC_DEADLINE_EXCEEDED | RETRY_ON_GRPC_RESOURCE_EXHAUSTED
            | RETRY_ON_GRPC_UNAVAILABLE | RETRY_ON_GRPC_INTERNAL)

DEFAULT_BASE_INTERVAL_MS = 25  # Envoy's upstream.base_retry_backoff_ms default
PREVIOUS_HOSTS = "envoy.retry_host_predicates.previous_hosts"
PREVIOUS_HOSTS_TYPE = "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"

_FIELDS = (
    "retry_on", "num_retries", "per_try_timeout", "per_try_idle_timeout", "retry_host_predicate",
    "host_selection_retry_max_attempts", "retriable_status_codes", "retry_back_off", "retriable_headers",
    "retriable_request_headers",
)


def parse_retry_on(value: str, table: dict[str, int]) -> int:
    """The bits of a comma-separated list; unknown tokens are skipped (Envoy ignores them in headers)."""
    bits = 0
    for token in value.split(","):
        bits |= table.get(token.strip(), 0)
    return bits


def duration_ms(duration: message.Message) -> int:
    """Whole milliseconds (Envoy's PROTOBUF_GET_MS)."""
    return duration.seconds * 1000 + duration.nanos // 1_000_000  # type: ignore[attr-defined]


class RetryPolicy:
    """One compiled ``config.route.v3.RetryPolicy``."""

    __slots__ = (
        "retry_on", "num_retries", "per_try_timeout", "per_try_idle_timeout", "base_interval_ms",
        "max_interval_ms", "retriable_status_codes", "retriable_headers", "retriable_request_headers",
        "previous_hosts", "host_selection_max_attempts", "retriable_statuses", "reads_headers",
    )

    def __init__(self, msg: message.Message, field: str) -> None:
        check_fields(msg, _FIELDS, field)
        self.retry_on = 0
        for token in msg.retry_on.split(","):  # type: ignore[attr-defined]
            token = token.strip()
            if not token:
                continue
            bit = HTTP_RETRY_ON.get(token) or GRPC_RETRY_ON.get(token)
            if bit is None:
                raise ConfigError(f"unknown retry_on value {token!r}", field=join(field, "retry_on"))
            self.retry_on |= bit
        self.num_retries: int = msg.num_retries.value if msg.HasField("num_retries") else 1
        # seconds; 0 = none
        self.per_try_timeout = duration_ms(msg.per_try_timeout) / 1000  # type: ignore[attr-defined]
        self.per_try_idle_timeout = duration_ms(msg.per_try_idle_timeout) / 1000  # type: ignore[attr-defined]
        self.base_interval_ms = DEFAULT_BASE_INTERVAL_MS
        self.max_interval_ms = 0
        if msg.HasField("retry_back_off"):
            self._back_off(msg.retry_back_off, join(field, "retry_back_off"))  # type: ignore[attr-defined]
        if not self.max_interval_ms:
            self.max_interval_ms = 10 * self.base_interval_ms
        self.retriable_status_codes = frozenset(msg.retriable_status_codes)  # type: ignore[attr-defined]
        self.retriable_headers: tuple[HeaderPredicate, ...] = tuple(
            compile_header_matcher(m, f"{join(field, 'retriable_headers')}[{i}]")
            for i, m in enumerate(msg.retriable_headers))  # type: ignore[attr-defined]
        self.retriable_request_headers: tuple[HeaderPredicate, ...] = tuple(
            compile_header_matcher(m, f"{join(field, 'retriable_request_headers')}[{i}]")
            for i, m in enumerate(msg.retriable_request_headers))  # type: ignore[attr-defined]
        self.previous_hosts = False
        for index, predicate in enumerate(msg.retry_host_predicate):  # type: ignore[attr-defined]
            self._host_predicate(predicate, f"{join(field, 'retry_host_predicate')}[{index}]")
        # Envoy: "If unspecified, this will default to retrying once."
        self.host_selection_max_attempts: int = msg.host_selection_retry_max_attempts or 1  # type: ignore[attr-defined]
        # for may_retry(): the statuses a response could be retried for, and whether other headers count
        statuses: set[int] = set()
        if self.retry_on & RETRY_ON_5XX:
            statuses.update(range(500, 600))
        if self.retry_on & RETRY_ON_GATEWAY_ERROR:
            statuses.update((502, 503, 504))
        if self.retry_on & RETRY_ON_RETRIABLE_4XX:
            statuses.add(409)
        if self.retry_on & RETRY_ON_RETRIABLE_STATUS_CODES:
            statuses.update(self.retriable_status_codes)
        self.retriable_statuses = frozenset(statuses)
        self.reads_headers = bool(self.retry_on & (RETRY_ON_RETRIABLE_HEADERS | RETRY_ON_ENVOY_RATE_LIMITED | GRPC_ANY))

    def may_retry(self, status: int) -> bool:
        """Could a response with ``status`` be retried under this policy alone? (No: the request
        never needs its retry state.)"""
        return self.reads_headers or status in self.retriable_statuses

    def _back_off(self, msg: message.Message, field: str) -> None:
        check_fields(msg, ("base_interval", "max_interval"), field)
        if not msg.HasField("base_interval"):
            raise ConfigError("base_interval is required", field=join(field, "base_interval"))
        base = msg.base_interval  # type: ignore[attr-defined]
        if base.seconds < 0 or (base.seconds == 0 and base.nanos <= 0):
            raise ConfigError("base_interval must be greater than 0", field=join(field, "base_interval"))
        self.base_interval_ms = max(1, duration_ms(base))  # below 1 ms rounds up, as in Envoy
        if msg.HasField("max_interval"):
            max_ms = duration_ms(msg.max_interval)  # type: ignore[attr-defined]
            if max_ms < self.base_interval_ms:
                raise ConfigError("max_interval must be greater than or equal to the base_interval",
                                  field=join(field, "max_interval"))
            self.max_interval_ms = max_ms

    def _host_predicate(self, msg: message.Message, field: str) -> None:
        check_fields(msg, ("name", "typed_config"), field)
        type_name = type_name_of(msg.typed_config) if msg.HasField("typed_config") else ""  # type: ignore[attr-defined]
        if type_name == PREVIOUS_HOSTS_TYPE or (not type_name and msg.name == PREVIOUS_HOSTS):  # type: ignore[attr-defined]
            # Unpacking imports the type, so that the admin's /config_dump can print it too
            # (a config from xDS arrives as bytes: nothing else would have imported it).
            predicate = unpack_any(msg.typed_config, field=join(field, "typed_config")) if type_name else None  # type: ignore[attr-defined]
            if predicate is not None:
                check_fields(predicate, (), join(field, "typed_config"))
            self.previous_hosts = True  # the predicate has no settings
            return
        raise UnsupportedFeature(f"retry host predicate {msg.name or type_name!r}", field=field)  # type: ignore[attr-defined]


def retry_policy(msg: message.Message, field: str, inherited: RetryPolicy | None) -> RetryPolicy | None:
    """``msg.retry_policy`` (RouteAction or VirtualHost) compiled, else the inherited policy."""
    if not msg.HasField("retry_policy"):
        return inherited
    return RetryPolicy(msg.retry_policy, join(field, "retry_policy"))  # type: ignore[attr-defined]


class VirtualHostRetryOptions:
    """The virtual host's retry settings its routes inherit (routes may override the policy and buffer limit)."""

    __slots__ = ("retry_policy", "include_request_attempt_count", "include_attempt_count_in_response",
                 "per_request_buffer_limit_bytes")

    def __init__(self, msg: message.Message | None = None, field: str = "") -> None:
        self.retry_policy = retry_policy(msg, field, None) if msg is not None else None
        self.include_request_attempt_count: bool = bool(msg and msg.include_request_attempt_count)  # type: ignore[attr-defined]
        self.include_attempt_count_in_response: bool = bool(
            msg and msg.include_attempt_count_in_response)  # type: ignore[attr-defined]
        self.per_request_buffer_limit_bytes: int | None = (
            msg.per_request_buffer_limit_bytes.value  # type: ignore[attr-defined]
            if msg is not None and msg.HasField("per_request_buffer_limit_bytes") else None)


NO_VIRTUAL_HOST_RETRY = VirtualHostRetryOptions()
