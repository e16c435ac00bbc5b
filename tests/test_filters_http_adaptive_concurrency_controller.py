"""The gradient controller's windows and arithmetic, on a fake clock and fake timers."""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from typing import Any

import pytest

from tulle.filters.http.adaptive_concurrency.controller import (
    GradientController,
    GradientControllerConfig,
    GradientControllerStats,
    quantile,
)
from tulle.stats.store import Store

PREFIX = "http.ingress.adaptive_concurrency.gradient_controller."


class FakeTimers:
    """A clock and ``loop.call_later`` whose time only moves in ``advance``."""

    def __init__(self) -> None:
        self.now = 100.0
        self.pending: list[FakeHandle] = []

    def __call__(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> FakeHandle:
        handle = FakeHandle(self.now + delay, callback, args)
        self.pending.append(handle)
        return handle

    def due(self) -> list[float]:
        return sorted(round(h.when - self.now, 6) for h in self.pending if not h.cancelled)

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            live = [h for h in self.pending if not h.cancelled and h.when <= end]
            if not live:
                break
            handle = min(live, key=lambda h: h.when)
            self.pending.remove(handle)
            self.now = max(self.now, handle.when)
            handle.callback(*handle.args)
        self.now = end
        self.pending = [h for h in self.pending if not h.cancelled]


class FakeHandle:
    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def make(timers: FakeTimers, *, start: bool = True, random_value: int = 0, **overrides: Any,
         ) -> tuple[GradientController, Store]:
    settings: dict[str, Any] = {"sample_rtt_calc_interval": 0.1, "min_rtt_calc_interval": 10.0, "jitter": 0.0,
                                "min_rtt_aggregate_request_count": 4, "min_concurrency": 3}
    settings.update(overrides)
    store = Store()
    controller = GradientController(GradientControllerConfig(**settings), GradientControllerStats(store, "ingress"),
                                    clock=timers, random_value=lambda: random_value)
    if start:
        controller.start(timers.call_later)
    return controller, store


def gauge(store: Store, name: str) -> int:
    return store.gauges[PREFIX + name].value


def complete(controller: GradientController, timers: FakeTimers, latencies: list[float]) -> None:
    """Admit one request per latency (all at once), then complete each after its latency."""
    start = timers.now
    for _ in latencies:
        assert controller.forward()
    for latency in sorted(latencies):
        timers.now = start + latency
        controller.record_latency_sample(start)
    timers.now = start + max(latencies)


def finish_min_rtt_window(controller: GradientController, timers: FakeTimers, latency: float) -> None:
    for _ in range(controller.config.min_rtt_aggregate_request_count):
        complete(controller, timers, [latency])


def test_starts_in_a_min_rtt_window_pinned_to_min_concurrency() -> None:
    timers = FakeTimers()
    controller, store = make(timers, min_concurrency=2)
    assert controller.in_min_rtt_window
    assert gauge(store, "min_rtt_calculation_active") == 1
    assert gauge(store, "concurrency_limit") == 2
    assert controller.forward() and controller.forward()
    assert not controller.forward()
    assert store.counters[PREFIX + "rq_blocked"].value == 1
    controller.cancel_latency_sample()
    assert controller.forward()  # a cancelled request gives its slot back without a sample
    assert controller.samples == []


def test_min_rtt_is_the_percentile_of_request_count_samples_then_the_limit_is_restored() -> None:
    timers = FakeTimers()
    controller, store = make(timers, sample_aggregate_percentile=0.5, min_rtt_aggregate_request_count=3)
    complete(controller, timers, [0.010, 0.030, 0.020])
    assert not controller.in_min_rtt_window
    assert controller.min_rtt == 20_000
    assert gauge(store, "min_rtt_msecs") == 20
    assert gauge(store, "min_rtt_calculation_active") == 0
    assert gauge(store, "concurrency_limit") == 3  # the limit before the window (the start value)
    # the next window after the interval (no jitter), the sample window after its interval
    assert timers.due() == [0.1, 10.0]


def test_the_gradient_formula_with_buffer_headroom_and_envoy_gauges() -> None:
    timers = FakeTimers()
    controller, store = make(timers, min_rtt_buffer=0.25, max_concurrency_limit=1000)
    finish_min_rtt_window(controller, timers, 0.010)
    controller.concurrency_limit = 100
    controller.samples = [20_000]
    controller.on_sample_timer()
    # gradient = 10ms * 1.25 / 20ms = 0.625; limit = 100 * 0.625 = 62.5; headroom = sqrt(62.5) = 7.9
    assert controller.concurrency_limit == int(62.5 + math.sqrt(62.5)) == 70
    assert gauge(store, "gradient") == 625
    assert gauge(store, "burst_queue_size") == 7
    assert gauge(store, "sample_rtt_msecs") == 20
    assert gauge(store, "concurrency_limit") == 70
    assert controller.samples == []


def test_gradient_is_clamped_to_half_and_double_and_the_limit_to_its_bounds() -> None:
    timers = FakeTimers()
    controller, store = make(timers, max_concurrency_limit=50, min_concurrency=3)
    finish_min_rtt_window(controller, timers, 0.010)
    controller.concurrency_limit = 40
    controller.samples = [1_000]  # raw gradient 12.5 -> 2.0: 80 + 8.9 -> capped at 50
    controller.reset_sample_window()
    assert gauge(store, "gradient") == 2000
    assert controller.concurrency_limit == 50
    controller.concurrency_limit = 4
    controller.samples = [10_000_000]  # raw gradient 0.00125 -> 0.5: 2 + 1.41 = 3
    controller.reset_sample_window()
    assert gauge(store, "gradient") == 500
    assert controller.concurrency_limit == 3
    controller.concurrency_limit = 3
    controller.samples = [10_000_000]  # 1.5 + 1.22 = 2 -> raised to min_concurrency
    controller.reset_sample_window()
    assert controller.concurrency_limit == 3


def test_limit_grows_while_samples_stay_near_min_rtt() -> None:
    timers = FakeTimers()
    controller, _ = make(timers)
    finish_min_rtt_window(controller, timers, 0.010)
    limits = []
    for _ in range(6):
        complete(controller, timers, [0.010])
        timers.advance(0.1)
        limits.append(controller.concurrency_limit)
    assert limits == sorted(limits) and limits[-1] > limits[0] > 3


def test_an_empty_sample_window_keeps_the_limit() -> None:
    timers = FakeTimers()
    controller, _ = make(timers)
    finish_min_rtt_window(controller, timers, 0.010)
    controller.concurrency_limit = 17
    timers.advance(0.35)
    assert controller.concurrency_limit == 17
    assert timers.due()[0] == pytest.approx(0.05)  # the sample timer keeps ticking


def test_sample_timer_does_nothing_during_a_min_rtt_window_and_is_rearmed_after_it() -> None:
    timers = FakeTimers()
    controller, _ = make(timers)
    complete(controller, timers, [0.010])  # 1 of 4 samples: still in the window
    timers.advance(0.5)
    assert controller.in_min_rtt_window
    assert controller.samples == [10_000]
    assert timers.due() == []  # the sample timer fired once and gave up
    for _ in range(3):
        complete(controller, timers, [0.010])
    assert timers.due() == [0.1, 10.0]


def test_next_min_rtt_window_pins_the_limit_and_drops_older_requests_samples() -> None:
    timers = FakeTimers()
    controller, store = make(timers)
    finish_min_rtt_window(controller, timers, 0.010)
    controller.concurrency_limit = 20
    sent_before = timers.now
    assert controller.forward()
    timers.advance(10.0)  # the minRTT timer fires
    assert controller.in_min_rtt_window and controller.concurrency_limit == 3
    assert gauge(store, "min_rtt_calculation_active") == 1
    controller.record_latency_sample(sent_before)
    assert controller.samples == []  # admitted before the window: not sampled
    assert controller.outstanding == 0
    finish_min_rtt_window(controller, timers, 0.030)
    assert controller.concurrency_limit == 20  # deferred value restored
    assert controller.min_rtt == 30_000


def test_five_windows_at_min_concurrency_in_a_row_remeasure_min_rtt_at_once() -> None:
    timers = FakeTimers()
    controller, _ = make(timers, min_concurrency=3)
    finish_min_rtt_window(controller, timers, 0.010)
    for round_index in range(5):
        assert not controller.in_min_rtt_window, round_index
        controller.samples = [1_000_000]  # far above minRTT: the limit stays at the floor
        controller.on_sample_timer()
    assert controller.consecutive_min_concurrency == 5
    assert 0.0 in timers.due()
    timers.advance(0.0)
    assert controller.in_min_rtt_window
    assert controller.consecutive_min_concurrency == 0


def test_min_rtt_window_start_is_jittered() -> None:
    timers = FakeTimers()
    # 10 s interval, 15% jitter: 10000 ms + 2000 % 1500 ms
    controller, _ = make(timers, jitter=0.15, random_value=2000)
    finish_min_rtt_window(controller, timers, 0.010)
    assert timers.due() == [0.1, 10.5]


def test_fixed_min_rtt_never_samples_it() -> None:
    timers = FakeTimers()
    controller, store = make(timers, min_rtt_calc_interval=0.0, fixed_min_rtt=0.050)
    assert not controller.in_min_rtt_window
    assert gauge(store, "min_rtt_msecs") == 50
    assert gauge(store, "min_rtt_calculation_active") == 0
    complete(controller, timers, [0.040, 0.040, 0.040])
    timers.advance(0.1)
    # gradient = 62.5 / 40 -> 1.5625; 3 * 1.5625 = 4.69 + 2.17 = 6
    assert controller.concurrency_limit == 6
    for _ in range(6):
        controller.concurrency_limit = 3
        controller.samples = [1_000_000]
        controller.on_sample_timer()
    assert not controller.in_min_rtt_window  # no re-measuring of a fixed minRTT


def test_timers_hold_the_controller_weakly() -> None:
    timers = FakeTimers()
    controller, _ = make(timers)
    finish_min_rtt_window(controller, timers, 0.010)
    del controller
    gc.collect()
    timers.advance(20.0)  # the pending timers fire into nothing instead of keeping it alive


def test_timers_wait_for_start() -> None:
    timers = FakeTimers()
    controller, store = make(timers, start=False)
    assert not controller.started
    assert timers.due() == []
    assert gauge(store, "concurrency_limit") == 3
    controller.start(timers.call_later)
    assert controller.started and controller.in_min_rtt_window
    assert timers.due() == [0.1]


def test_quantile_interpolates_between_order_statistics() -> None:
    assert quantile([5.0], 0.9) == 5.0
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == pytest.approx(2.5)
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.9) == pytest.approx(4.6)
    assert quantile([1.0, 2.0], 1.0) == 2.0
    assert quantile([1.0, 2.0], 0.0) == 1.0
