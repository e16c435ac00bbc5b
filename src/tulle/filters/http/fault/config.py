"""Factory for ``envoy.filters.http.fault`` (Envoy's fault config.cc, FaultSettings, fault_config.cc).

An ``HTTPFault`` is parsed once into :class:`FaultSettings`, both for the filter in
``http_filters`` and for each ``typed_per_filter_config`` entry of a route, virtual
host or route configuration (:func:`parse_per_route_config`, registered in
``extensions.registry.PER_ROUTE_FILTER_CONFIGS``). A route's settings replace the
filter's whole settings for requests on that route, as in Envoy.

Supported: ``delay`` (``fixed_delay`` or ``header_delay``), ``abort`` (``http_status``,
``grpc_status`` or ``header_abort``), their ``percentage``, ``headers``,
``upstream_cluster``, ``downstream_nodes``, ``max_active_faults``,
``disable_downstream_cluster_stats`` and the runtime keys that override them
(``delay_percent_runtime``, ``abort_percent_runtime``, ``delay_duration_runtime``,
``abort_http_status_runtime``, ``abort_grpc_status_runtime``, ``max_active_faults_runtime``;
Envoy's ``fault.http.*`` names when unset). Refused: ``response_rate_limit`` (no response
throttling yet) and ``filter_metadata`` (no dynamic metadata).

The runtime is read per request only when the bootstrap configures ``layered_runtime``
(:attr:`FaultSettings.runtime`); without it every key misses, as in an Envoy whose runtime
does not set them, and the request path is what it was without runtime support.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import cython
from google.protobuf import message

from tulle.config.errors import ConfigError, join
from tulle.config.support import check_fields
from tulle.filters.http.fault.filter import FaultFilter
from tulle.router.matchers import compile_header_matcher
from tulle.runtime import Entry, Runtime, in_scope
from tulle.stats.store import Counter, Gauge, Store

# FractionalPercent.DenominatorType (HUNDRED, TEN_THOUSAND, MILLION) -> its value
_DENOMINATORS = {0: 100, 1: 10_000, 2: 1_000_000}

_HTTP_FAULT_FIELDS = (
    "delay", "abort", "upstream_cluster", "headers", "downstream_nodes", "max_active_faults",
    "disable_downstream_cluster_stats", "delay_percent_runtime", "abort_percent_runtime", "delay_duration_runtime",
    "abort_http_status_runtime", "abort_grpc_status_runtime", "max_active_faults_runtime",
)
# Only read for response_rate_limit, which is refused: naming the key cannot change behaviour.
_IGNORED_FIELDS = ("response_rate_limit_percent_runtime",)


class Percentage:
    """A FractionalPercent, evaluated as Envoy's runtime featureEnabled() does when no
    runtime key overrides it: ``random % denominator < numerator``."""

    __slots__ = ("numerator", "denominator")

    def __init__(self, numerator: int, denominator: int) -> None:
        self.numerator = numerator
        self.denominator = denominator

    @classmethod
    def from_proto(cls, owner: message.Message, field: str) -> Percentage:
        """``owner.percentage``; unset means 0%: Envoy then never injects the fault."""
        if not owner.HasField("percentage"):
            return cls(0, 100)
        percent = owner.percentage  # type: ignore[attr-defined]
        check_fields(percent, ("numerator", "denominator"), join(field, "percentage"))
        if percent.denominator not in _DENOMINATORS:
            raise ConfigError(f"unknown denominator {percent.denominator}",
                              field=join(join(field, "percentage"), "denominator"))
        return cls(percent.numerator, _DENOMINATORS[percent.denominator])


class FaultDelay:
    """``fixed_ms`` is None for header_delay: the x-envoy-fault-delay-request header gives it."""

    __slots__ = ("fixed_ms", "percentage")

    def __init__(self, msg: message.Message, field: str) -> None:
        check_fields(msg, ("fixed_delay", "header_delay", "percentage"), field)
        kind = msg.WhichOneof("fault_delay_secifier")
        if kind is None:
            raise ConfigError("one of fixed_delay or header_delay is required", field=field)
        self.fixed_ms: int | None = None
        if kind == "fixed_delay":
            delay = msg.fixed_delay  # type: ignore[attr-defined]
            if delay.seconds < 0 or delay.nanos < 0 or (delay.seconds == 0 and delay.nanos == 0):
                raise ConfigError("fixed_delay must be greater than 0s", field=join(field, "fixed_delay"))
            # Envoy's PROTOBUF_GET_MS_REQUIRED: whole milliseconds (a delay under 1 ms is no delay)
            self.fixed_ms = delay.seconds * 1000 + delay.nanos // 1_000_000
        self.percentage = Percentage.from_proto(msg, field)


class FaultAbort:
    """Exactly one of ``http_status``, ``grpc_status`` or ``from_header`` (header_abort)."""

    __slots__ = ("http_status", "grpc_status", "from_header", "percentage")

    def __init__(self, msg: message.Message, field: str) -> None:
        check_fields(msg, ("http_status", "grpc_status", "header_abort", "percentage"), field)
        kind = msg.WhichOneof("error_type")
        if kind is None:
            raise ConfigError("one of http_status, grpc_status or header_abort is required", field=field)
        self.http_status: int | None = None
        self.grpc_status: int | None = None
        self.from_header = kind == "header_abort"
        if kind == "http_status":
            status = msg.http_status  # type: ignore[attr-defined]
            if not 200 <= status < 600:
                raise ConfigError("http_status must be in [200, 600)", field=join(field, "http_status"))
            self.http_status = status
        elif kind == "grpc_status":
            self.grpc_status = msg.grpc_status  # type: ignore[attr-defined]
        self.percentage = Percentage.from_proto(msg, field)


class FaultSettings:
    """One HTTPFault, compiled: what the filter reads per request, nothing else."""

    __slots__ = (
        "delay", "abort", "upstream_cluster", "header_matchers", "downstream_nodes", "max_active_faults",
        "downstream_cluster_stats", "can_inject", "runtime", "delay_percent_key", "abort_percent_key",
        "delay_duration_key", "abort_http_status_key", "abort_grpc_status_key", "max_active_faults_key",
        "_checked_values", "_may_inject",
    )

    def __init__(self, proto: message.Message, field: str, runtime: Runtime | None = None) -> None:
        """``runtime``: the worker's; by default the one of the route table being built (if any)."""
        if runtime is None:
            runtime = in_scope()
        check_fields(proto, _HTTP_FAULT_FIELDS, field, ignored=_IGNORED_FIELDS)
        self.delay = FaultDelay(proto.delay, join(field, "delay")) if proto.HasField("delay") else None
        self.abort = FaultAbort(proto.abort, join(field, "abort")) if proto.HasField("abort") else None
        self.upstream_cluster: str = proto.upstream_cluster
        self.header_matchers = tuple(
            compile_header_matcher(header, f"{join(field, 'headers')}[{index}]")
            for index, header in enumerate(proto.headers)
        )
        self.downstream_nodes = frozenset(proto.downstream_nodes)
        self.max_active_faults: int | None = (
            proto.max_active_faults.value if proto.HasField("max_active_faults") else None
        )
        self.downstream_cluster_stats = not proto.disable_downstream_cluster_stats
        # Envoy's runtime keys (the per-downstream-cluster ones are made per request by the filter)
        self.delay_percent_key: str = proto.delay_percent_runtime or "fault.http.delay.fixed_delay_percent"
        self.abort_percent_key: str = proto.abort_percent_runtime or "fault.http.abort.abort_percent"
        self.delay_duration_key: str = proto.delay_duration_runtime or "fault.http.delay.fixed_duration_ms"
        self.abort_http_status_key: str = proto.abort_http_status_runtime or "fault.http.abort.http_status"
        self.abort_grpc_status_key: str = proto.abort_grpc_status_runtime or "fault.http.abort.grpc_status"
        self.max_active_faults_key: str = proto.max_active_faults_runtime or "fault.http.max_active_faults"
        # A header can lower a percentage but never raise it above the configured numerator,
        # so settings whose faults are all at 0% can skip the request at once...
        self.can_inject = any(
            fault is not None and fault.percentage.numerator > 0 for fault in (self.delay, self.abort)
        )
        # ...unless a runtime may raise them (None without layered_runtime: no key can be set)
        self.runtime: Runtime | None = runtime if runtime.layered else None
        self._checked_values: object = None
        self._may_inject = self.can_inject
        if self.runtime is not None and not self.can_inject:
            self.can_inject = self.delay is not None or self.abort is not None
            self._may_inject = False

    def may_inject(self, values: Mapping[str, Entry]) -> bool:
        """Whether, with these runtime values, a request could get a fault (worked out once per
        snapshot): a percentage above 0% configured, under its runtime key, or under a
        downstream cluster's key (``fault.http.<cluster>.abort.abort_percent`` ...)."""
        if values is self._checked_values:
            return self._may_inject
        self._checked_values = values
        may = self._may_inject = any(fault.percentage.numerator > 0 for fault in (self.delay, self.abort)
                                     if fault is not None) or self._raised_by(values)
        return may

    def _raised_by(self, values: Mapping[str, Entry]) -> bool:
        kinds = []
        if self.delay is not None:
            kinds.append((self.delay_percent_key, ".delay.fixed_delay_percent"))
        if self.abort is not None:
            kinds.append((self.abort_percent_key, ".abort.abort_percent"))
        for key, entry in values.items():
            fraction = entry.fraction
            if fraction is None or fraction.numerator == 0:
                continue
            for own_key, cluster_suffix in kinds:
                if key == own_key or (key.startswith("fault.http.") and key.endswith(cluster_suffix)):
                    return True
        return False


def parse_per_route_config(proto: message.Message, field: str) -> FaultSettings:
    """The per-route parser for HTTPFault (Envoy's createRouteSpecificFilterConfig). As in Envoy,
    a route's settings read the runtime through their own keys too."""
    return FaultSettings(proto, field)


class FaultStats:
    """``http.<stat_prefix>.fault.*``, shared by every fault filter of one connection manager."""

    __slots__ = ("prefix", "store", "delays_injected", "aborts_injected", "faults_overflow",
                 "response_rl_injected", "active_faults")

    def __init__(self, store: Store, stat_prefix: str) -> None:
        self.prefix = f"http.{stat_prefix}.fault."
        self.store = store
        self.delays_injected: Counter = store.counter(self.prefix + "delays_injected")
        self.aborts_injected: Counter = store.counter(self.prefix + "aborts_injected")
        self.faults_overflow: Counter = store.counter(self.prefix + "faults_overflow")
        # Envoy defines it; it stays 0 until response_rate_limit is implemented
        self.response_rl_injected: Counter = store.counter(self.prefix + "response_rl_injected")
        self.active_faults: Gauge = store.gauge(self.prefix + "active_faults")

    def downstream_cluster(self, cluster: str, name: str) -> Counter:
        """``http.<prefix>.fault.<x-envoy-downstream-service-cluster>.<name>``, made on first use."""
        return self.store.counter(f"{self.prefix}{cluster}.{name}")


def _random_uint64() -> int:
    return random.getrandbits(64)


class FaultFactory:
    """A cdef class when compiled: create_filter runs per request stream."""

    name = "envoy.filters.http.fault"
    encodes = False
    if not cython.compiled:
        __slots__ = ("settings", "stats", "buffer_limit", "random_value", "skippable", "config_name")

    def __init__(self, proto: Any, field: str, hcm: Any, *,
                 random_value: Callable[[], int] | None = None) -> None:
        # The key of this filter's typed_per_filter_config entries; the connection manager sets it
        # to the name the filter has in http_filters (Envoy looks per-route configs up by that name).
        self.config_name = "envoy.filters.http.fault"
        self.settings = FaultSettings(proto, field, hcm.ctx.runtime)
        self.stats = FaultStats(hcm.ctx.stats, hcm.stat_prefix)
        self.buffer_limit: int = hcm.buffer_limit
        # one uint64 per percentage evaluated, like Envoy's random generator; tests inject their own
        self.random_value = random_value or _random_uint64
        # Nothing to inject at this level and no runtime that could turn it on: the filter then
        # matters only on routes with a fault config of their own (create_filter returns None for
        # the others, so a configured-but-idle fault filter costs a route lookup, not a filter).
        self.skippable = not self.settings.can_inject and self.settings.runtime is None

    def create_filter(self, stream: Any) -> FaultFilter | None:
        if self.skippable:
            route = stream.get_route()
            if route is None or route.per_filter_config(self.config_name) is None:
                return None
        return FaultFilter(stream, self)
