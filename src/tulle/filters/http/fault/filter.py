"""The fault filter: delay and/or abort requests (Envoy's FaultFilter, fault_filter.cc).

Per request, in Envoy's order: the route's settings replace the filter's; then
upstream_cluster, downstream_nodes and the header matchers must all match; then a
delay is drawn, and if none is injected an abort is drawn. A delay stops the chain
on a loop timer (nothing blocks) and holds the request body; when it fires an abort
is drawn again (Envoy's "delay then abort"), else the chain continues and the held
body follows. A stream that ends during the delay (client gone, timeout) cancels it.

Each percentage is one random draw per request, ``random % denominator < numerator``;
header-controlled faults (x-envoy-fault-*) may lower a percentage, never raise it.

With a runtime (``layered_runtime``), Envoy's keys override the configured values: the
percentages (``fault.http.delay.fixed_delay_percent``, ``fault.http.abort.abort_percent``),
the delay, the abort status and max_active_faults. A request carrying
x-envoy-downstream-service-cluster uses ``fault.http.<cluster>.*`` instead for the
percentages, and after the general keys for the delay and the status, as Envoy does.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import cython

from tulle import stream_info as flags
from tulle.filters.http.base import CONTINUE, STOP, HttpFilter
from tulle.http.headers import HeaderMap
from tulle.router.matchers import UINT64_MAX, simple_atoi
from tulle.router.route_table import WEIGHTED_CLUSTER_RANDOM_VALUE

if TYPE_CHECKING:
    from asyncio import TimerHandle

    from tulle.filters.http.fault.config import FaultFactory, FaultSettings
    from tulle.runtime import Runtime
    from tulle.stats.store import Counter

UINT32_MAX = 2**32 - 1
_getrandbits = random.getrandbits

DELAY_REQUEST = "x-envoy-fault-delay-request"
DELAY_REQUEST_PERCENTAGE = "x-envoy-fault-delay-request-percentage"
ABORT_REQUEST = "x-envoy-fault-abort-request"
ABORT_GRPC_REQUEST = "x-envoy-fault-abort-grpc-request"
ABORT_REQUEST_PERCENTAGE = "x-envoy-fault-abort-request-percentage"
DOWNSTREAM_SERVICE_CLUSTER = "x-envoy-downstream-service-cluster"
DOWNSTREAM_SERVICE_NODE = "x-envoy-downstream-service-node"

ABORT_BODY = b"fault filter abort"
ABORT_DETAILS = "fault_filter_abort"


class FaultFilter(HttpFilter):
    if not cython.compiled:
        __slots__ = ("factory", "settings", "timer", "fault_active", "held", "held_bytes", "read_paused")

    def __init__(self, stream: Any, factory: FaultFactory) -> None:
        self.stream = stream
        self.factory = factory
        self.settings: FaultSettings | None = None  # set once the request qualifies for a fault
        self.timer: TimerHandle | None = None
        self.fault_active = False  # counted in active_faults (at most once per request, as Envoy)
        self.held: list[tuple[bytes, bool]] | None = None  # request body arriving during the delay
        self.held_bytes = 0
        self.read_paused = False

    # --- request path --------------------------------------------------
    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        factory = self.factory
        settings = factory.settings
        route = self.stream.get_route()
        if route is not None:
            per_route = route.per_filter_config(factory.config_name)
            if per_route is not None:
                settings = per_route
        if not settings.can_inject:
            return CONTINUE
        runtime = settings.runtime
        if runtime is not None and not settings.may_inject(runtime.values):
            return CONTINUE
        if settings.upstream_cluster and not self._bound_to(settings.upstream_cluster, route, headers):
            return CONTINUE
        if settings.downstream_nodes and headers.get(DOWNSTREAM_SERVICE_NODE) not in settings.downstream_nodes:
            return CONTINUE
        for header_matches in settings.header_matchers:
            if not header_matches(headers):
                return CONTINUE
        self.settings = settings

        delay_ms = self._delay_ms(settings, headers)
        if delay_ms is not None and self._try_activate(settings):
            stream = self.stream
            self.timer = stream.connection.loop.call_later(delay_ms / 1000, self._on_delay_elapsed)
            self._count(factory.stats.delays_injected, "delays_injected", headers)
            stream.info.add_flag(flags.DELAY_INJECTED)
            return STOP
        abort = self._abort_status(settings, headers)
        if abort is not None and self._try_activate(settings):
            self._abort(abort[0], abort[1], headers)
            return STOP
        return CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        if self.timer is None:
            return CONTINUE
        # Delayed: the body waits here (Envoy's StopIterationAndWatermark), up to the buffer limit
        # before the client is paused.
        held = self.held
        if held is None:
            held = self.held = []
        held.append((data, end_stream))
        self.held_bytes += len(data)
        if self.held_bytes > self.factory.buffer_limit and not self.read_paused:
            self.read_paused = True
            self.stream.read_disable(True)
        return STOP

    def decode_trailers(self, trailers: HeaderMap) -> int:
        if self.timer is None:
            return CONTINUE
        if self.held is None:
            self.held = []
        self.held.append((trailers, True))  # they end the request: replayed after the body
        return STOP

    def on_destroy(self) -> None:
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()
        self.held = None
        if self.read_paused:
            self.read_paused = False
            self.stream.read_disable(False)
        if self.fault_active:
            self.fault_active = False
            self.factory.stats.active_faults.value -= 1

    # --- matching ------------------------------------------------------
    def _bound_to(self, cluster: str, route: Any, headers: HeaderMap) -> bool:
        """Whether the request goes to ``cluster`` (Envoy: the route entry's cluster name)."""
        if route is None or route.kind != "cluster":
            return False
        # A weighted pick must be the one the router makes: draw it here and leave it for the router.
        info = self.stream.info
        state = info.filter_state
        if state is None:
            state = info.filter_state = {}
        random_value = state.get(WEIGHTED_CLUSTER_RANDOM_VALUE)
        if random_value is None:
            random_value = state[WEIGHTED_CLUSTER_RANDOM_VALUE] = _getrandbits(32)
        return route.cluster_name(headers, random_value) == cluster

    def _enabled(self, numerator: int, denominator: int) -> bool:
        return self.factory.random_value() % denominator < numerator

    @staticmethod
    def _runtime_percent(runtime: Runtime, key: str, numerator: int, denominator: int) -> tuple[int, int]:
        """featureEnabled's percentage: the key's fractional percent or integer percentage when set."""
        entry = runtime.values.get(key)
        if entry is not None:
            fraction = entry.fraction
            if fraction is not None:
                return fraction.numerator, fraction.denominator
        return numerator, denominator

    @staticmethod
    def _runtime_status(runtime: Runtime, key: str, cluster_key: str | None, configured: int, low: int,
                        high: int) -> int:
        """getInteger(key, configured), then (Envoy's order) getInteger(cluster_key, configured); a value
        outside [low, high] is not a status Tulle can send, so the configured one stays."""
        snapshot = runtime.snapshot
        status = snapshot.integer(key, configured)
        if cluster_key is not None:
            status = snapshot.integer(cluster_key, configured)
        return status if low <= status <= high else configured

    @staticmethod
    def _header_numerator(headers: HeaderMap, name: str, configured: int) -> int:
        """Envoy's HeaderPercentageProvider: the header's numerator, capped by the configured one."""
        value = headers.get(name)
        if value is None:
            return configured
        from_header = simple_atoi(value, 0, UINT32_MAX)
        return configured if from_header is None else min(from_header, configured)

    def _drawn(self, settings: FaultSettings, headers: HeaderMap, percentage: Any, percentage_header: str | None,
               runtime_key: str, cluster_key: str) -> tuple[bool, str | None]:
        """Whether this request gets the fault, from its percentage: the configured one, the
        request's header for header-controlled faults, then the runtime (per downstream cluster when
        the request names one, as Envoy). Also the downstream cluster the runtime keys used."""
        numerator = percentage.numerator
        denominator = percentage.denominator
        if percentage_header is not None:
            numerator = self._header_numerator(headers, percentage_header, numerator)
        runtime = settings.runtime
        cluster = None
        if runtime is not None:
            cluster = headers.get(DOWNSTREAM_SERVICE_CLUSTER)
            key = runtime_key if cluster is None else f"fault.http.{cluster}.{cluster_key}"
            numerator, denominator = self._runtime_percent(runtime, key, numerator, denominator)
        return self._enabled(numerator, denominator), cluster

    def _delay_ms(self, settings: FaultSettings, headers: HeaderMap) -> int | None:
        delay = settings.delay
        if delay is None:
            return None
        fixed_ms = delay.fixed_ms
        drawn, cluster = self._drawn(settings, headers, delay.percentage,
                                     DELAY_REQUEST_PERCENTAGE if fixed_ms is None else None,
                                     settings.delay_percent_key, "delay.fixed_delay_percent")
        if not drawn:
            return None
        runtime = settings.runtime
        if fixed_ms is None:
            value = headers.get(DELAY_REQUEST)
            fixed_ms = None if value is None else simple_atoi(value, 0, UINT64_MAX)
            if fixed_ms is None:
                return None
        if runtime is not None:
            snapshot = runtime.snapshot
            fixed_ms = snapshot.integer(settings.delay_duration_key, fixed_ms)
            if cluster is not None:
                fixed_ms = snapshot.integer(f"fault.http.{cluster}.delay.fixed_duration_ms", fixed_ms)
        return fixed_ms if fixed_ms else None  # Envoy delays only for more than 0 ms

    def _abort_status(self, settings: FaultSettings, headers: HeaderMap) -> tuple[int, int | None] | None:
        """(HTTP status, gRPC status or None) when an abort is drawn, else None."""
        abort = settings.abort
        if abort is None:
            return None
        drawn, cluster = self._drawn(settings, headers, abort.percentage,
                                     ABORT_REQUEST_PERCENTAGE if abort.from_header else None,
                                     settings.abort_percent_key, "abort.abort_percent")
        if not drawn:
            return None
        runtime = settings.runtime
        http_status = abort.http_status
        grpc_status = abort.grpc_status
        if abort.from_header:
            value = headers.get(ABORT_REQUEST)
            if value is not None:
                status = simple_atoi(value, 0, UINT64_MAX)
                if status is not None and 200 <= status < 600:
                    http_status = status  # a valid HTTP status wins over the gRPC header
            if http_status is None:
                value = headers.get(ABORT_GRPC_REQUEST)
                if value is not None:
                    grpc_status = simple_atoi(value, 0, UINT32_MAX)
        if http_status is not None:
            if runtime is not None:
                http_status = self._runtime_status(
                    runtime, settings.abort_http_status_key,
                    None if cluster is None else f"fault.http.{cluster}.abort.http_status", http_status, 200, 599)
            return http_status, None
        if grpc_status is not None:
            if runtime is not None:
                grpc_status = self._runtime_status(
                    runtime, settings.abort_grpc_status_key,
                    None if cluster is None else f"fault.http.{cluster}.abort.grpc_status", grpc_status, 0, UINT32_MAX)
            return 200, grpc_status  # Envoy answers a gRPC abort with HTTP 200
        return None

    # --- injecting -----------------------------------------------------
    def _try_activate(self, settings: FaultSettings) -> bool:
        """Envoy's tryIncActiveFaults: one active fault per request, unless max_active_faults is reached."""
        if self.fault_active:
            return True
        stats = self.factory.stats
        limit = settings.max_active_faults
        runtime = settings.runtime
        if runtime is not None:
            limit = runtime.snapshot.integer(settings.max_active_faults_key, UINT64_MAX if limit is None else limit)
        if limit is not None and stats.active_faults.value >= limit:
            stats.faults_overflow.value += 1
            return False
        stats.active_faults.value += 1
        self.fault_active = True
        return True

    def _count(self, counter: Counter, name: str, headers: HeaderMap) -> None:
        counter.value += 1
        settings = self.settings
        if settings is not None and settings.downstream_cluster_stats:
            downstream_cluster = headers.get(DOWNSTREAM_SERVICE_CLUSTER)
            if downstream_cluster:
                self.factory.stats.downstream_cluster(downstream_cluster, name).value += 1

    def _abort(self, http_status: int, grpc_status: int | None, headers: HeaderMap) -> None:
        self._count(self.factory.stats.aborts_injected, "aborts_injected", headers)
        stream = self.stream
        # a gRPC request gets the abort as a gRPC error (the connection manager maps it; an explicit
        # grpc_status in the fault config wins)
        stream.send_local_reply(flags.FAULT_INJECTED, status=http_status, body=ABORT_BODY, details=ABORT_DETAILS,
                                grpc_status=grpc_status)

    def _on_delay_elapsed(self) -> None:
        self.timer = None
        stream = self.stream
        settings = self.settings
        if stream.done or settings is None:
            return
        abort = self._abort_status(settings, stream.headers)
        if abort is not None:
            self._abort(abort[0], abort[1], stream.headers)
            return
        # The delay is over and nothing else is injected: no longer an active fault (as Envoy).
        self.fault_active = False
        self.factory.stats.active_faults.value -= 1
        held = self.held
        self.held = None
        self.held_bytes = 0
        stream.continue_decoding()
        if held and not stream.done:
            filters = stream.filters
            after_me = filters[filters.index(self) + 1:]
            for data, end_stream in held:
                for flt in after_me:
                    if isinstance(data, HeaderMap):
                        result = flt.decode_trailers(data)
                    else:
                        result = flt.decode_data(data, end_stream)
                    if result != CONTINUE or stream.done:
                        break
                if stream.done:
                    break
        if self.read_paused:
            self.read_paused = False
            stream.read_disable(False)
