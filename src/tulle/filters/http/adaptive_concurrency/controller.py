"""Envoy's gradient concurrency controller (adaptive_concurrency/controller/gradient_controller.cc).

The controller admits a request while fewer than ``concurrency_limit`` are outstanding and
samples the latency of each one admitted. Two kinds of window alternate:

- the minRTT window: the limit is pinned to ``min_concurrency`` until ``request_count``
  samples have come in; their ``sample_aggregate_percentile`` becomes minRTT, the limit goes
  back to its value before the window, and the next window is due after ``interval`` plus a
  random ``jitter`` (a percent of the interval). The controller starts in one. Five limit
  updates in a row that leave the limit at ``min_concurrency`` start one at once (the minRTT
  is probably stale). With ``fixed_value`` minRTT is that value and never sampled.
- between them, every ``concurrency_update_interval`` the window's samples summarise into
  sampleRTT and the limit becomes ``limit * gradient + sqrt(limit * gradient)``, clamped to
  [min_concurrency, max_concurrency_limit], where ``gradient = minRTT * (1 + buffer) /
  sampleRTT`` clamped to [0.5, 2].

Samples of requests admitted before the current minRTT window started are dropped.
Latencies are whole microseconds, as Envoy's; the gauges are Envoy's (milliseconds,
gradient x 1000).

One controller per filter config per worker process: Envoy's is shared by its worker
threads, Tulle's workers are processes, so each enforces its own limit.
"""

from __future__ import annotations

import math
import random
import time
import weakref
from collections.abc import Callable
from typing import Any

from tulle.stats.store import Store

# loop.call_later(delay, callback, *args) -> a handle with cancel()
Schedule = Callable[..., Any]


class GradientControllerConfig:
    """Parsed GradientControllerConfig: intervals in seconds, percents as fractions of 1."""

    __slots__ = (
        "sample_rtt_calc_interval", "max_concurrency_limit", "min_rtt_calc_interval", "fixed_min_rtt",
        "min_rtt_aggregate_request_count", "jitter", "min_concurrency", "min_rtt_buffer",
        "sample_aggregate_percentile",
    )

    def __init__(self, *, sample_rtt_calc_interval: float, min_rtt_calc_interval: float = 0.0,
                 fixed_min_rtt: float = 0.0, max_concurrency_limit: int = 1000,
                 min_rtt_aggregate_request_count: int = 50, jitter: float = 0.15, min_concurrency: int = 3,
                 min_rtt_buffer: float = 0.25, sample_aggregate_percentile: float = 0.5) -> None:
        self.sample_rtt_calc_interval = sample_rtt_calc_interval
        self.min_rtt_calc_interval = min_rtt_calc_interval
        self.fixed_min_rtt = fixed_min_rtt  # > 0: minRTT is not sampled
        self.max_concurrency_limit = max_concurrency_limit
        self.min_rtt_aggregate_request_count = min_rtt_aggregate_request_count
        self.jitter = jitter
        self.min_concurrency = min_concurrency
        self.min_rtt_buffer = min_rtt_buffer
        self.sample_aggregate_percentile = sample_aggregate_percentile


class GradientControllerStats:
    """``http.<stat_prefix>.adaptive_concurrency.gradient_controller.*``. With several workers the
    limit and the window flag add up across them (the process's total); the RTTs, gradient and
    headroom are one worker's (the main process's) view, not a meaningless sum."""

    def __init__(self, store: Store, stat_prefix: str) -> None:
        store.bind(self, f"http.{stat_prefix}.adaptive_concurrency.gradient_controller.",
                   counters=("rq_blocked",),
                   gauges=("concurrency_limit", "min_rtt_calculation_active", "min_rtt_msecs",
                           "sample_rtt_msecs", "gradient", "burst_queue_size"),
                   process_wide=frozenset({"min_rtt_msecs", "sample_rtt_msecs", "gradient", "burst_queue_size"}))


def quantile(samples: list[int] | list[float], q: float) -> float:
    """The q-quantile of the samples, interpolated between order statistics (Envoy approximates
    it from a log-linear histogram, within a few percent of this)."""
    ordered = sorted(samples)
    position = q * (len(ordered) - 1)
    low = int(position)
    if low + 1 >= len(ordered):
        return ordered[-1]
    return ordered[low] + (ordered[low + 1] - ordered[low]) * (position - low)


def _fire(controller_ref: weakref.ref[GradientController], method: str) -> None:
    # Timers hold the controller weakly: a filter config dropped by an xDS update stops ticking.
    controller = controller_ref()
    if controller is not None:
        getattr(controller, method)()


class GradientController:
    __slots__ = (
        "config", "stats", "clock", "random_value", "schedule", "concurrency_limit", "outstanding",
        "deferred_limit", "min_rtt", "sample_rtt", "samples", "min_rtt_epoch", "consecutive_min_concurrency",
        "min_rtt_timer", "sample_timer", "__weakref__",
    )

    def __init__(self, config: GradientControllerConfig, stats: GradientControllerStats, *,
                 clock: Callable[[], float] = time.monotonic,
                 random_value: Callable[[], int] = lambda: random.getrandbits(64)) -> None:
        self.config = config
        self.stats = stats
        self.clock = clock
        self.random_value = random_value
        self.schedule: Schedule | None = None  # set by start(): timers need the worker's loop
        self.concurrency_limit = config.min_concurrency
        self.outstanding = 0
        self.deferred_limit = 0  # the limit before the minRTT window; > 0 while in one
        self.min_rtt = 0  # microseconds
        self.sample_rtt = 0
        self.samples: list[int] = []  # latencies in microseconds
        self.min_rtt_epoch = 0.0
        self.consecutive_min_concurrency = 0
        self.min_rtt_timer: Any = None
        self.sample_timer: Any = None
        stats.concurrency_limit.value = self.concurrency_limit

    @property
    def started(self) -> bool:
        return self.schedule is not None

    @property
    def sampling_min_rtt(self) -> bool:
        return self.config.fixed_min_rtt <= 0.0

    @property
    def in_min_rtt_window(self) -> bool:
        return self.deferred_limit > 0

    def start(self, schedule: Schedule) -> None:
        """What Envoy's constructor does, once the worker's loop runs (``loop.call_later``)."""
        self.schedule = schedule
        if self.sampling_min_rtt:
            self.enter_min_rtt_window()
        else:
            self.min_rtt = round(self.config.fixed_min_rtt * 1000) * 1000  # Envoy keeps whole milliseconds
            self.stats.min_rtt_msecs.value = self.min_rtt // 1000
            self.update_concurrency_limit(self.config.min_concurrency)
        self._enable_sample_timer()
        self.stats.concurrency_limit.value = self.concurrency_limit

    # --- per request -----------------------------------------------------
    def forward(self) -> bool:
        """Envoy's forwardingDecision: admit (and count as outstanding) or block."""
        if self.outstanding < self.concurrency_limit:
            self.outstanding += 1
            return True
        self.stats.rq_blocked.value += 1
        return False

    def record_latency_sample(self, sent_at: float) -> None:
        """An admitted request's response is complete: sample its latency."""
        self.outstanding -= 1
        if sent_at < self.min_rtt_epoch:
            return  # admitted before this minRTT window: not an ideal-conditions sample
        self.samples.append(round((self.clock() - sent_at) * 1_000_000))
        if self.deferred_limit:  # in a minRTT window (the per-request path stops here otherwise)
            self.update_min_rtt()

    def cancel_latency_sample(self) -> None:
        """An admitted request ended without a complete response (reset, client gone)."""
        self.outstanding -= 1

    # --- windows ---------------------------------------------------------
    def enter_min_rtt_window(self) -> None:
        if self.in_min_rtt_window:
            return  # a second trigger while one is running (Envoy guards the same race)
        self.stats.min_rtt_calculation_active.value = 1
        self.deferred_limit = self.concurrency_limit
        self.update_concurrency_limit(self.config.min_concurrency)
        self.samples.clear()  # samples from before the window may not represent the minRTT
        self.min_rtt_epoch = self.clock()

    def update_min_rtt(self) -> None:
        if (not self.sampling_min_rtt or not self.in_min_rtt_window
                or len(self.samples) < self.config.min_rtt_aggregate_request_count):
            return
        self.min_rtt = self._aggregate_and_clear()
        self.stats.min_rtt_msecs.value = self.min_rtt // 1000
        self.update_concurrency_limit(self.deferred_limit)
        self.deferred_limit = 0
        self.stats.min_rtt_calculation_active.value = 0
        self._enable_min_rtt_timer(self._jittered(self.config.min_rtt_calc_interval))
        self._enable_sample_timer()

    def on_sample_timer(self) -> None:
        if self.in_min_rtt_window:
            return  # re-armed when the minRTT window ends
        self.reset_sample_window()
        self._enable_sample_timer()

    def reset_sample_window(self) -> None:
        if not self.samples:
            return
        self.sample_rtt = self._aggregate_and_clear()
        self.stats.sample_rtt_msecs.value = self.sample_rtt // 1000
        self.update_concurrency_limit(self.calculate_new_limit())

    def calculate_new_limit(self) -> int:
        config = self.config
        buffered_min_rtt = self.min_rtt + self.min_rtt * config.min_rtt_buffer
        raw_gradient = buffered_min_rtt / self.sample_rtt if self.sample_rtt > 0 else 2.0
        gradient = max(0.5, min(2.0, raw_gradient))
        self.stats.gradient.value = int(gradient * 1000)  # Envoy reports it x 1000 to keep its detail
        limit = self.concurrency_limit * gradient
        burst_headroom = math.sqrt(limit)
        self.stats.burst_queue_size.value = int(burst_headroom)
        new_limit = int(limit + burst_headroom)
        return max(config.min_concurrency, min(config.max_concurrency_limit, new_limit))

    def update_concurrency_limit(self, new_limit: int) -> None:
        old_limit = self.concurrency_limit
        self.concurrency_limit = new_limit
        self.stats.concurrency_limit.value = new_limit
        floor = self.config.min_concurrency
        if not self.in_min_rtt_window and old_limit == floor and new_limit == floor:
            self.consecutive_min_concurrency += 1
        else:
            self.consecutive_min_concurrency = 0
        if self.consecutive_min_concurrency >= 5 and self.sampling_min_rtt:
            self._enable_min_rtt_timer(0.0)  # stuck at the floor: measure minRTT again now

    # --- helpers ---------------------------------------------------------
    def _aggregate_and_clear(self) -> int:
        value = int(quantile(self.samples, self.config.sample_aggregate_percentile))
        self.samples.clear()
        return value

    def _jittered(self, interval: float) -> float:
        """Envoy's applyJitter, in whole milliseconds: interval + random % ceil(interval * jitter)."""
        jitter = self.config.jitter
        if jitter == 0:
            return interval
        interval_ms = int(interval * 1000)
        jitter_range_ms = math.ceil(interval_ms * jitter)
        if jitter_range_ms == 0:
            return interval
        return (interval_ms + self.random_value() % jitter_range_ms) / 1000

    def _enable_min_rtt_timer(self, delay: float) -> None:
        self.min_rtt_timer = self._rearm(self.min_rtt_timer, delay, "enter_min_rtt_window")

    def _enable_sample_timer(self) -> None:
        self.sample_timer = self._rearm(self.sample_timer, self.config.sample_rtt_calc_interval, "on_sample_timer")

    def _rearm(self, timer: Any, delay: float, method: str) -> Any:
        if timer is not None:
            timer.cancel()
        if self.schedule is None:
            return None
        return self.schedule(delay, _fire, weakref.ref(self), method)
