"""Outlier detection (Envoy's ``envoy.config.cluster.v3.OutlierDetection``): passive health checking.

Each host of a cluster with outlier detection gets a :class:`HostOutlierMonitor` as
``host.outlier``; the router and tcp_proxy report every result to it (a status code,
a connect success, a local-origin failure: connect failure, reset or timeout). Without
outlier detection ``host.outlier`` is :data:`tulle.upstream.host.NO_OUTLIER_MONITOR`,
whose methods do nothing.

As in Envoy:

* Consecutive errors (5xx, gateway failures 502/503/504, local-origin failures) are
  counted per host and eject the host the moment a counter reaches its threshold.
  Without ``split_external_local_origin_errors`` a local-origin failure counts as a 503
  and a connect success as nothing (a tcp_proxy connect as a 200); with it, they feed
  separate local-origin counters and success rates.
* Every ``interval`` one timer per cluster sweeps all hosts: ejected hosts whose time is
  up come back, the success-rate and failure-percentage algorithms run over the last
  interval's results, and the ejection back-off of hosts that stayed in decays.
* An ejection is refused (``ejections_overflow``) when it would take more than
  ``max_ejection_percent`` of the hosts out, and is enforced only with the matching
  ``enforcing_*`` probability; detected and enforced ejections are counted apart.
* An ejected host is flagged ``/failed_outlier_check`` and leaves the load balancer's
  healthy set (the panic threshold still applies). It stays out for
  ``min(base_ejection_time * back-off, max_ejection_time) + jitter`` where the back-off
  grows by one per ejection and shrinks by one per interval the host stays in.

Envoy collects results on every worker thread and decides on the main thread; here each
worker process has its own clusters, so each decides from its own traffic.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cython
from envoy.config.cluster.v3 import outlier_detection_pb2
from google.protobuf import message

from tulle.config.errors import ConfigError, join
from tulle.config.support import check_fields, duration_seconds
from tulle.upstream.cluster_stats import OutlierDetectionStats
from tulle.upstream.host import NO_OUTLIER_MONITOR

if TYPE_CHECKING:
    from tulle.upstream.host import Host

log = logging.getLogger("tulle.upstream")

# Ejection types, named as in Envoy's stats (ejections_detected_<type>, ejections_enforced_<type>).
CONSECUTIVE_5XX = "consecutive_5xx"
CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"
CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "consecutive_local_origin_failure"
SUCCESS_RATE = "success_rate"
LOCAL_ORIGIN_SUCCESS_RATE = "local_origin_success_rate"
FAILURE_PERCENTAGE = "failure_percentage"
LOCAL_ORIGIN_FAILURE_PERCENTAGE = "local_origin_failure_percentage"

_GATEWAY_ERRORS = frozenset((502, 503, 504))

# Envoy's defaults (outlier_detection.proto / DetectorConfig).
DEFAULT_INTERVAL = 10.0
DEFAULT_BASE_EJECTION_TIME = 30.0
DEFAULT_MAX_EJECTION_TIME = 300.0

_SUPPORTED_FIELDS = (
    "consecutive_5xx", "interval", "base_ejection_time", "max_ejection_percent", "enforcing_consecutive_5xx",
    "enforcing_success_rate", "success_rate_minimum_hosts", "success_rate_request_volume",
    "success_rate_stdev_factor", "consecutive_gateway_failure", "enforcing_consecutive_gateway_failure",
    "split_external_local_origin_errors", "consecutive_local_origin_failure",
    "enforcing_consecutive_local_origin_failure", "enforcing_local_origin_success_rate",
    "failure_percentage_threshold", "enforcing_failure_percentage", "enforcing_failure_percentage_local_origin",
    "failure_percentage_minimum_hosts", "failure_percentage_request_volume", "max_ejection_time",
    "max_ejection_time_jitter", "successful_active_health_check_uneject_host", "always_eject_one_host",
)
# (field, default) of the UInt32Value settings; those in _PERCENTAGES must be at most 100.
_COUNTS = (
    ("consecutive_5xx", 5), ("consecutive_gateway_failure", 5), ("consecutive_local_origin_failure", 5),
    ("max_ejection_percent", 10), ("success_rate_minimum_hosts", 5), ("success_rate_request_volume", 100),
    ("success_rate_stdev_factor", 1900), ("failure_percentage_threshold", 85),
    ("failure_percentage_minimum_hosts", 5), ("failure_percentage_request_volume", 50),
    ("enforcing_consecutive_5xx", 100), ("enforcing_consecutive_gateway_failure", 0),
    ("enforcing_consecutive_local_origin_failure", 100), ("enforcing_success_rate", 100),
    ("enforcing_local_origin_success_rate", 100), ("enforcing_failure_percentage", 0),
    ("enforcing_failure_percentage_local_origin", 0),
)
_PERCENTAGES = frozenset(
    name for name, _ in _COUNTS if name.startswith("enforcing_") or name.endswith(("_percent", "_threshold"))
)


@dataclass(frozen=True, slots=True)
class OutlierDetectionConfig:
    interval: float = DEFAULT_INTERVAL
    base_ejection_time: float = DEFAULT_BASE_EJECTION_TIME
    max_ejection_time: float = DEFAULT_MAX_EJECTION_TIME
    max_ejection_time_jitter_ms: int = 0
    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    consecutive_local_origin_failure: int = 5
    max_ejection_percent: int = 10
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900
    failure_percentage_threshold: int = 85
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    enforcing_consecutive_5xx: int = 100
    enforcing_consecutive_gateway_failure: int = 0
    enforcing_consecutive_local_origin_failure: int = 100
    enforcing_success_rate: int = 100
    enforcing_local_origin_success_rate: int = 100
    enforcing_failure_percentage: int = 0
    enforcing_failure_percentage_local_origin: int = 0
    split_external_local_origin_errors: bool = False
    successful_active_health_check_uneject_host: bool = True
    always_eject_one_host: bool = False

    def enforcing(self, ejection_type: str) -> int:
        """The ``enforcing_*`` percentage that applies to an ejection of this type."""
        return {
            CONSECUTIVE_5XX: self.enforcing_consecutive_5xx,
            CONSECUTIVE_GATEWAY_FAILURE: self.enforcing_consecutive_gateway_failure,
            CONSECUTIVE_LOCAL_ORIGIN_FAILURE: self.enforcing_consecutive_local_origin_failure,
            SUCCESS_RATE: self.enforcing_success_rate,
            LOCAL_ORIGIN_SUCCESS_RATE: self.enforcing_local_origin_success_rate,
            FAILURE_PERCENTAGE: self.enforcing_failure_percentage,
            LOCAL_ORIGIN_FAILURE_PERCENTAGE: self.enforcing_failure_percentage_local_origin,
        }[ejection_type]


def _positive_duration(msg: message.Message, name: str, field: str, default: float) -> float:
    if not msg.HasField(name):
        return default
    seconds = duration_seconds(getattr(msg, name))
    if seconds <= 0:
        raise ConfigError("must be greater than 0s", field=join(field, name))
    return seconds


def parse_outlier_detection(msg: outlier_detection_pb2.OutlierDetection, field: str) -> OutlierDetectionConfig:
    """Validate ``Cluster.outlier_detection``; ``monitors`` (extensions) are refused."""
    check_fields(msg, _SUPPORTED_FIELDS, field)
    values: dict[str, object] = {}
    for name, default in _COUNTS:
        value = getattr(msg, name).value if msg.HasField(name) else default
        if name in _PERCENTAGES and value > 100:
            raise ConfigError("must be at most 100", field=join(field, f"{name}.value"))
        values[name] = value
    base = _positive_duration(msg, "base_ejection_time", field, DEFAULT_BASE_EJECTION_TIME)
    # Envoy: an unset max_ejection_time is the default or base_ejection_time, whichever is larger.
    maximum = _positive_duration(msg, "max_ejection_time", field, max(DEFAULT_MAX_EJECTION_TIME, base))
    if maximum < base:
        raise ConfigError(
            "outlier detector's max_ejection_time cannot be smaller than base_ejection_time",
            field=join(field, "max_ejection_time"),
        )
    jitter = duration_seconds(msg.max_ejection_time_jitter) if msg.HasField("max_ejection_time_jitter") else 0.0
    if jitter < 0:
        raise ConfigError("must be at least 0s", field=join(field, "max_ejection_time_jitter"))
    return OutlierDetectionConfig(
        interval=_positive_duration(msg, "interval", field, DEFAULT_INTERVAL),
        base_ejection_time=base,
        max_ejection_time=maximum,
        max_ejection_time_jitter_ms=round(jitter * 1000),
        split_external_local_origin_errors=msg.split_external_local_origin_errors,
        successful_active_health_check_uneject_host=(
            msg.successful_active_health_check_uneject_host.value
            if msg.HasField("successful_active_health_check_uneject_host") else True
        ),
        always_eject_one_host=msg.always_eject_one_host.value if msg.HasField("always_eject_one_host") else False,
        **values,  # type: ignore[arg-type]
    )


# --- per host -------------------------------------------------------------------


class HostOutlierMonitor:
    """One host's results: consecutive error counters and this interval's success counts.

    ``put_connect_success``, ``put_connect_success_final`` and ``put_local_origin_failure``
    are bound once to the implementation the split setting calls for, so reporting is
    one call with no branch on the configuration.
    """

    if not cython.compiled:
        __slots__ = (
            "host", "detector", "config", "attached", "consecutive_5xx", "consecutive_gateway_failure",
            "consecutive_local_origin_failure", "num_ejections", "eject_time_backoff", "last_ejection_time",
            "last_unejection_time", "jitter", "external_total", "external_success", "local_total", "local_success",
            "external_window", "local_window", "success_rate", "local_origin_success_rate",
            "put_connect_success", "put_connect_success_final", "put_local_origin_failure",
        )

    def __init__(self, host: Host, detector: OutlierDetector) -> None:
        self.host = host
        self.detector = detector
        self.config = config = detector.config
        self.attached = True
        self.consecutive_5xx = 0
        self.consecutive_gateway_failure = 0
        self.consecutive_local_origin_failure = 0
        self.num_ejections = 0
        self.eject_time_backoff = 0
        self.last_ejection_time: float | None = None
        self.last_unejection_time: float | None = None
        self.jitter = 0.0
        # results of the interval in progress, and (total, successes) of the last complete one
        self.external_total = 0
        self.external_success = 0
        self.local_total = 0
        self.local_success = 0
        self.external_window = (0, 0)
        self.local_window = (0, 0)
        self.success_rate = -1.0  # /clusters prints -1 until an interval had enough requests
        self.local_origin_success_rate = -1.0
        if config.split_external_local_origin_errors:
            self.put_connect_success = self._local_origin_success
            self.put_connect_success_final = self._local_origin_success
            self.put_local_origin_failure = self._local_origin_failure
        else:
            # Envoy maps local-origin results to HTTP codes: a connect is not a result of its own
            # for HTTP (the response is), a finished TCP connect is a 200 and a failure a 503.
            self.put_connect_success = NO_OUTLIER_MONITOR.put_connect_success
            self.put_connect_success_final = self._success_as_200
            self.put_local_origin_failure = self._failure_as_503

    def put_http_status(self, status: int) -> None:
        """A response came back from the host (or a local-origin result mapped to a code)."""
        self.external_total += 1
        if 500 <= status < 600:
            if status in _GATEWAY_ERRORS:
                self.consecutive_gateway_failure += 1
                if self.consecutive_gateway_failure == self.config.consecutive_gateway_failure:
                    self.detector.on_consecutive_error(self, CONSECUTIVE_GATEWAY_FAILURE)
            else:
                self.consecutive_gateway_failure = 0
            self.consecutive_5xx += 1
            if self.consecutive_5xx == self.config.consecutive_5xx:
                self.detector.on_consecutive_error(self, CONSECUTIVE_5XX)
        else:
            self.external_success += 1
            self.consecutive_5xx = 0
            self.consecutive_gateway_failure = 0

    def _success_as_200(self) -> None:
        self.put_http_status(200)

    def _failure_as_503(self) -> None:
        self.put_http_status(503)

    def _local_origin_success(self) -> None:
        self.local_total += 1
        self.local_success += 1
        self.consecutive_local_origin_failure = 0

    def _local_origin_failure(self) -> None:
        self.local_total += 1
        self.consecutive_local_origin_failure += 1
        if self.consecutive_local_origin_failure == self.config.consecutive_local_origin_failure:
            self.detector.on_consecutive_error(self, CONSECUTIVE_LOCAL_ORIGIN_FAILURE)

    def close_interval(self) -> None:
        """The sweep starts: this interval's counts become the window the algorithms read."""
        self.external_window = (self.external_total, self.external_success)
        self.local_window = (self.local_total, self.local_success)
        self.external_total = self.external_success = self.local_total = self.local_success = 0
        self.success_rate = -1.0
        self.local_origin_success_rate = -1.0

    def reset_consecutive(self) -> None:
        self.consecutive_5xx = 0
        self.consecutive_gateway_failure = 0
        self.consecutive_local_origin_failure = 0


# --- per cluster ----------------------------------------------------------------


class OutlierDetector:
    """All monitors of one cluster, its ejection decisions and its interval timer.

    ``on_change`` is called (once per batch) whenever a host was ejected or returned, so
    the cluster can rebuild its load balancer. ``clock`` is monotonic seconds.
    """

    def __init__(
        self,
        config: OutlierDetectionConfig,
        stats: OutlierDetectionStats,
        on_change: Callable[[], None],
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.stats = stats
        self.monitors: dict[int, HostOutlierMonitor] = {}  # id(host) -> monitor
        self.ejections_active = 0
        self._on_change = on_change
        self._rng = rng or random.Random()
        self._clock = clock
        self._timer: asyncio.TimerHandle | None = None
        self._sweeping = False
        self._changed_in_sweep = False

    # --- membership ---------------------------------------------------------
    def add_host(self, host: Host) -> None:
        monitor = HostOutlierMonitor(host, self)
        self.monitors[id(host)] = monitor
        host.outlier = monitor

    def remove_host(self, host: Host) -> None:
        monitor = self.monitors.pop(id(host), None)
        if monitor is None:
            return
        monitor.attached = False
        if host.failed_outlier_check:
            self._count_active(-1)
        if host.outlier is monitor:
            host.outlier = NO_OUTLIER_MONITOR

    # --- timer ----------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None:
            self._timer = loop.call_later(self.config.interval, self._on_timer, loop)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # As Envoy's detector destructor: the ejections this detector holds no longer count.
        self._count_active(-self.ejections_active)

    def _on_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            self.sweep()
        except Exception:  # one bad sweep must not stop detection for good
            log.exception("outlier detection sweep failed")
        self._timer = loop.call_later(self.config.interval, self._on_timer, loop)

    # --- decisions ------------------------------------------------------------
    def on_consecutive_error(self, monitor: HostOutlierMonitor, ejection_type: str) -> None:
        """A consecutive-error counter reached its threshold."""
        host = monitor.host
        if not monitor.attached or host.failed_outlier_check:
            return
        self.stats.detected[ejection_type].inc()
        self._eject(monitor, ejection_type)
        # Reset the counter that fired so a new run of errors can be detected, ejected or not.
        if ejection_type == CONSECUTIVE_5XX:
            self.stats.counters["ejections_consecutive_5xx"].inc()
            monitor.consecutive_5xx = 0
        elif ejection_type == CONSECUTIVE_GATEWAY_FAILURE:
            monitor.consecutive_gateway_failure = 0
        else:
            monitor.consecutive_local_origin_failure = 0

    def on_active_health_check_success(self, host: Host) -> None:
        """An active health check passed: an ejected host that passes it comes back (Envoy's
        ``successful_active_health_check_uneject_host``, on by default)."""
        if not self.config.successful_active_health_check_uneject_host:
            return
        monitor = self.monitors.get(id(host))
        if monitor is not None and host.failed_outlier_check and not host.failed_active_hc:
            self._uneject(monitor, self._clock())
            self._notify()

    def _eject(self, monitor: HostOutlierMonitor, ejection_type: str) -> None:
        config = self.config
        counters = self.stats.counters
        ejected_percent = 100.0 * (self.ejections_active + 1) / len(self.monitors)
        allowed = ejected_percent <= min(100, config.max_ejection_percent)
        if config.always_eject_one_host and self.ejections_active == 0:
            allowed = True
        if not allowed:
            counters["ejections_overflow"].inc()
            return
        if ejection_type in (CONSECUTIVE_5XX, SUCCESS_RATE):
            counters["ejections_total"].inc()  # deprecated in Envoy, kept for its dashboards
        if self._rng.randrange(100) >= config.enforcing(ejection_type):
            return  # detected, not enforced
        self._count_active(1)
        counters["ejections_enforced_total"].inc()
        self.stats.enforced[ejection_type].inc()
        host = monitor.host
        host.failed_outlier_check = True
        host.refresh_health()
        monitor.num_ejections += 1
        monitor.last_ejection_time = self._clock()
        # Jitter spreads the returns of hosts ejected together (no reconnect storm).
        monitor.jitter = self._rng.randint(0, config.max_ejection_time_jitter_ms) / 1000
        if monitor.eject_time_backoff * config.base_ejection_time < config.max_ejection_time + config.base_ejection_time:
            monitor.eject_time_backoff += 1
        self._notify()

    def _uneject(self, monitor: HostOutlierMonitor, now: float) -> None:
        self._count_active(-1)
        host = monitor.host
        host.failed_outlier_check = False
        host.refresh_health()
        # A fresh start: a counter close to its threshold must not eject again after a few errors.
        monitor.reset_consecutive()
        monitor.last_unejection_time = now

    def _ejection_over(self, monitor: HostOutlierMonitor, now: float) -> bool:
        config = self.config
        assert monitor.last_ejection_time is not None
        duration = min(config.base_ejection_time * monitor.eject_time_backoff, config.max_ejection_time)
        return duration + monitor.jitter <= now - monitor.last_ejection_time

    def sweep(self) -> None:
        """One interval: return hosts whose ejection is over, run the rate algorithms, decay back-offs."""
        now = self._clock()
        self._sweeping = True
        try:
            monitors = list(self.monitors.values())
            for monitor in monitors:
                if monitor.host.failed_outlier_check and self._ejection_over(monitor, now):
                    self._uneject(monitor, now)
                    self._changed_in_sweep = True
                monitor.close_interval()
            self._success_rate_ejections(monitors, local_origin=False)
            self._success_rate_ejections(monitors, local_origin=True)
            interval = self.config.interval
            for monitor in monitors:
                if (not monitor.host.failed_outlier_check and monitor.last_unejection_time is not None
                        and now - monitor.last_unejection_time >= interval and monitor.eject_time_backoff):
                    monitor.eject_time_backoff -= 1
        finally:
            self._sweeping = False
        if self._changed_in_sweep:
            self._changed_in_sweep = False
            self._on_change()

    def _success_rate_ejections(self, monitors: list[HostOutlierMonitor], *, local_origin: bool) -> None:
        """Envoy's success-rate (mean - stdev_factor * stdev) and failure-percentage algorithms."""
        config = self.config
        if len(monitors) < config.success_rate_minimum_hosts and len(monitors) < config.failure_percentage_minimum_hosts:
            return
        success_rate_volume = config.success_rate_request_volume
        failure_percentage_volume = config.failure_percentage_request_volume
        for_success_rate: list[tuple[HostOutlierMonitor, float]] = []
        for_failure_percentage: list[tuple[HostOutlierMonitor, float]] = []
        for monitor in monitors:
            if monitor.host.failed_outlier_check:
                continue
            total, successes = monitor.local_window if local_origin else monitor.external_window
            if not total:
                continue
            rate = successes * 100.0 / total
            if total >= min(success_rate_volume, failure_percentage_volume):
                if local_origin:
                    monitor.local_origin_success_rate = rate
                else:
                    monitor.success_rate = rate
            if total >= success_rate_volume:
                for_success_rate.append((monitor, rate))
            if total >= failure_percentage_volume:
                for_failure_percentage.append((monitor, rate))

        if for_success_rate and len(for_success_rate) >= config.success_rate_minimum_hosts:
            rates = [rate for _, rate in for_success_rate]
            mean = sum(rates) / len(rates)
            stdev = math.sqrt(sum((rate - mean) ** 2 for rate in rates) / len(rates))
            threshold = mean - config.success_rate_stdev_factor / 1000.0 * stdev
            ejection_type = LOCAL_ORIGIN_SUCCESS_RATE if local_origin else SUCCESS_RATE
            for monitor, rate in for_success_rate:
                if rate < threshold and not monitor.host.failed_outlier_check:
                    self.stats.counters["ejections_success_rate"].inc()  # deprecated in Envoy
                    self.stats.detected[ejection_type].inc()
                    self._eject(monitor, ejection_type)

        if for_failure_percentage and len(for_failure_percentage) >= config.failure_percentage_minimum_hosts:
            ejection_type = LOCAL_ORIGIN_FAILURE_PERCENTAGE if local_origin else FAILURE_PERCENTAGE
            for monitor, rate in for_failure_percentage:
                if 100.0 - rate >= config.failure_percentage_threshold and not monitor.host.failed_outlier_check:
                    self.stats.detected[ejection_type].inc()
                    self._eject(monitor, ejection_type)

    # --- bookkeeping ------------------------------------------------------------
    def _count_active(self, delta: int) -> None:
        self.ejections_active += delta
        self.stats.ejections_active.inc(delta)

    def _notify(self) -> None:
        if self._sweeping:
            self._changed_in_sweep = True  # one load-balancer rebuild at the end of the sweep
        else:
            self._on_change()
