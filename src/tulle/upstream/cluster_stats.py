"""Envoy's per-cluster stats (``cluster.<name>.<stat>``), created once per cluster.

Hot-path code holds these objects and bumps ``.value`` directly; only the
per-status-code counters are created lazily (there are too many possible codes)
and then cached by code.
"""

from __future__ import annotations

import time

import cython

from tulle.stats.store import Counter, Gauge, Histogram, Store

COUNTERS = (
    "upstream_cx_total", "upstream_cx_http1_total", "upstream_cx_http2_total", "upstream_cx_connect_fail",
    "upstream_cx_connect_timeout", "upstream_cx_destroy", "upstream_cx_destroy_local",
    "upstream_cx_destroy_remote", "upstream_cx_destroy_with_active_rq", "upstream_cx_rx_bytes_total",
    "upstream_cx_tx_bytes_total", "upstream_cx_idle_timeout", "upstream_cx_none_healthy",
    "upstream_cx_max_requests", "upstream_cx_max_duration_reached", "upstream_cx_protocol_error", "upstream_rq_total", "upstream_rq_pending_total", "upstream_rq_timeout",
    "upstream_rq_rx_reset", "upstream_rq_tx_reset", "upstream_rq_completed", "membership_change",
    "update_attempt", "update_success", "update_failure", "update_empty", "lb_healthy_panic",
    # circuit breakers (tulle.upstream.resource_manager) and the pending-request queue
    "upstream_cx_overflow", "upstream_cx_pool_overflow", "upstream_rq_pending_overflow",
    "upstream_rq_active_overflow", "upstream_rq_retry_overflow", "upstream_rq_cancelled",
    "upstream_rq_pending_failure_eject",
    # router retries and timeouts (tulle.filters.http.router)
    "upstream_rq_retry", "upstream_rq_retry_success", "upstream_rq_retry_limit_exceeded",
    "upstream_rq_retry_backoff_exponential", "upstream_rq_per_try_timeout", "upstream_rq_per_try_idle_timeout",
    "upstream_rq_max_duration_reached", "retry_or_shadow_abandoned",
)
GAUGES = (
    "upstream_cx_active", "upstream_rq_active", "upstream_rq_pending_active", "membership_healthy",
    "membership_total", "membership_degraded", "max_host_weight",
)
HISTOGRAMS = ("upstream_rq_time", "upstream_cx_length_ms", "upstream_cx_connect_ms")


class ClusterStats:
    if not cython.compiled:  # compiled, the fields come from cluster_stats.pxd
        __slots__ = (
            *COUNTERS, *GAUGES, *HISTOGRAMS, "prefix", "_store", "_by_code", "_by_class",
        )

    upstream_cx_total: Counter
    upstream_cx_http1_total: Counter
    upstream_cx_http2_total: Counter
    upstream_cx_connect_fail: Counter
    upstream_cx_connect_timeout: Counter
    upstream_cx_destroy: Counter
    upstream_cx_destroy_local: Counter
    upstream_cx_destroy_remote: Counter
    upstream_cx_destroy_with_active_rq: Counter
    upstream_cx_rx_bytes_total: Counter
    upstream_cx_tx_bytes_total: Counter
    upstream_cx_idle_timeout: Counter
    upstream_cx_none_healthy: Counter
    upstream_cx_max_requests: Counter
    upstream_cx_max_duration_reached: Counter
    upstream_cx_protocol_error: Counter
    upstream_rq_total: Counter
    upstream_rq_pending_total: Counter
    upstream_rq_timeout: Counter
    upstream_rq_rx_reset: Counter
    upstream_rq_tx_reset: Counter
    upstream_rq_completed: Counter
    membership_change: Counter
    update_attempt: Counter
    update_success: Counter
    update_failure: Counter
    update_empty: Counter
    lb_healthy_panic: Counter
    upstream_cx_overflow: Counter
    upstream_cx_pool_overflow: Counter
    upstream_rq_pending_overflow: Counter
    upstream_rq_active_overflow: Counter
    upstream_rq_retry_overflow: Counter
    upstream_rq_cancelled: Counter
    upstream_rq_pending_failure_eject: Counter
    upstream_rq_retry: Counter
    upstream_rq_retry_success: Counter
    upstream_rq_retry_limit_exceeded: Counter
    upstream_rq_retry_backoff_exponential: Counter
    upstream_rq_per_try_timeout: Counter
    upstream_rq_per_try_idle_timeout: Counter
    upstream_rq_max_duration_reached: Counter
    retry_or_shadow_abandoned: Counter
    upstream_cx_active: Gauge
    upstream_rq_active: Gauge
    upstream_rq_pending_active: Gauge
    membership_healthy: Gauge
    membership_total: Gauge
    membership_degraded: Gauge
    max_host_weight: Gauge
    upstream_rq_time: Histogram
    upstream_cx_length_ms: Histogram
    upstream_cx_connect_ms: Histogram

    def __init__(self, store: Store, stat_name: str) -> None:
        """``stat_name`` is the cluster's ``alt_stat_name`` when set, else its name (as in Envoy)."""
        self.prefix = f"cluster.{stat_name}."
        self._store = store
        # membership and weights are the same in every worker; activity gauges add up
        process_wide = frozenset(n for n in GAUGES if n.startswith("membership_") or n == "max_host_weight")
        store.bind(self, self.prefix, counters=COUNTERS, gauges=GAUGES, histograms=HISTOGRAMS,
                   process_wide=process_wide)
        # status code -> (upstream_rq_<Nxx>, upstream_rq_<code>)
        self._by_code: dict[int, tuple[Counter, Counter]] = {}
        self._by_class: dict[int, Counter] = {}

    def connect_failed(self, timed_out: bool) -> None:
        """An upstream connect failed (either pool's): upstream_cx_connect_fail, and _timeout if it was one."""
        if timed_out:
            self.upstream_cx_connect_timeout.value += 1
        self.upstream_cx_connect_fail.value += 1

    def connection_destroyed(self, remote: bool, with_requests: bool, created: float) -> None:
        """A pooled upstream connection closed (either pool's): Envoy's upstream_cx_destroy* and
        upstream_cx_length_ms (``created``: its time.monotonic() at creation)."""
        self.upstream_cx_active.value -= 1
        self.upstream_cx_destroy.value += 1
        if remote:
            self.upstream_cx_destroy_remote.value += 1
        else:
            self.upstream_cx_destroy_local.value += 1
        if with_requests:
            self.upstream_cx_destroy_with_active_rq.value += 1
        self.upstream_cx_length_ms.record((time.monotonic() - created) * 1000)

    def rq_completed(self, status: int) -> None:
        """A response with ``status`` came back: upstream_rq_completed, _<N>xx and _<code>."""
        pair = self._by_code.get(status)
        if pair is None:
            pair = self._counters_for(status)
        self.upstream_rq_completed.value += 1
        pair[0].value += 1
        pair[1].value += 1

    def _counters_for(self, status: int) -> tuple[Counter, Counter]:
        status_class = status // 100
        class_counter = self._by_class.get(status_class)
        if class_counter is None:
            class_counter = self._store.counter(f"{self.prefix}upstream_rq_{status_class}xx")
            self._by_class[status_class] = class_counter
        pair = (class_counter, self._store.counter(f"{self.prefix}upstream_rq_{status}"))
        self._by_code[status] = pair
        return pair


# Envoy's health checker stats, ``cluster.<name>.health_check.<stat>`` (only with health_checks).
HEALTH_CHECK_COUNTERS = ("attempt", "success", "failure", "passive_failure", "network_failure", "verify_cluster")
HEALTH_CHECK_GAUGES = ("healthy", "degraded")


class HealthCheckStats:
    __slots__ = (*HEALTH_CHECK_COUNTERS, *HEALTH_CHECK_GAUGES)

    attempt: Counter
    success: Counter
    failure: Counter
    passive_failure: Counter
    network_failure: Counter
    verify_cluster: Counter
    healthy: Gauge
    degraded: Gauge

    def __init__(self, store: Store, stat_name: str) -> None:
        prefix = f"cluster.{stat_name}.health_check."
        # Every worker checks every host and converges on the same answer: summing the
        # workers' counts would multiply the number of hosts.
        store.bind(self, prefix, counters=HEALTH_CHECK_COUNTERS, gauges=HEALTH_CHECK_GAUGES,
                   process_wide=frozenset(HEALTH_CHECK_GAUGES))


# Envoy's outlier detection stats, ``cluster.<name>.outlier_detection.<stat>`` (only with
# outlier_detection). ejections_total, ejections_consecutive_5xx and ejections_success_rate are
# deprecated in Envoy but still emitted there, so they are here.
EJECTION_TYPES = (
    "consecutive_5xx", "consecutive_gateway_failure", "consecutive_local_origin_failure", "success_rate",
    "local_origin_success_rate", "failure_percentage", "local_origin_failure_percentage",
)
OUTLIER_DETECTION_COUNTERS = (
    "ejections_total", "ejections_overflow", "ejections_consecutive_5xx", "ejections_success_rate",
    "ejections_enforced_total",
    *(f"ejections_detected_{kind}" for kind in EJECTION_TYPES),
    *(f"ejections_enforced_{kind}" for kind in EJECTION_TYPES),
)


class OutlierDetectionStats:
    """Counters by name; ``detected[type]`` / ``enforced[type]`` index the per-type ones by ejection type."""

    __slots__ = ("counters", "ejections_active", "detected", "enforced")

    def __init__(self, store: Store, stat_name: str) -> None:
        prefix = f"cluster.{stat_name}.outlier_detection."
        self.counters = {name: store.counter(prefix + name) for name in OUTLIER_DETECTION_COUNTERS}
        # Each worker ejects on what its own traffic shows, so the active ejections add up.
        self.ejections_active = store.gauge(prefix + "ejections_active")
        self.detected = {kind: self.counters[f"ejections_detected_{kind}"] for kind in EJECTION_TYPES}
        self.enforced = {kind: self.counters[f"ejections_enforced_{kind}"] for kind in EJECTION_TYPES}
