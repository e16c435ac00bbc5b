"""``http.<stat_prefix>.*``: the connection manager's stats, as attributes for the hot path.

Compiled (see ``tulle/compiled.py``), :class:`HcmStats` is a cdef class whose fields are typed
``Counter``/``Gauge``/``Histogram`` in ``stats.pxd``: the connection manager bumps them at C level.
``config.HcmStats`` is this class.
"""

from __future__ import annotations

import cython

from tulle.stats.store import Store


class HcmStats:
    """``http.<stat_prefix>.*`` stats, attributes for the hot path."""

    COUNTERS = (
        "downstream_cx_total", "downstream_cx_http1_total", "downstream_cx_http2_total", "downstream_cx_destroy",
        "downstream_cx_destroy_remote", "downstream_cx_destroy_local", "downstream_cx_rx_bytes_total",
        "downstream_cx_tx_bytes_total", "downstream_cx_protocol_error", "downstream_cx_idle_timeout",
        "downstream_cx_drain_close", "downstream_rq_total", "downstream_rq_http1_total", "downstream_rq_http2_total",
        "downstream_rq_completed", "downstream_rq_rx_reset", "downstream_rq_tx_reset", "downstream_rq_timeout",
        "downstream_rq_header_timeout",
        "downstream_rq_idle_timeout", "downstream_rq_too_large",
        "downstream_flow_control_paused_reading_total", "downstream_flow_control_resumed_reading_total",
        "no_route", "no_cluster", "rq_redirect", "rq_direct_response", "rq_total",
        "rq_reset_after_downstream_response_started", "access_log_errors",
        "downstream_rq_overload_close", "downstream_cx_overload_disable_keepalive",
        "downstream_rq_max_duration_reached", "downstream_cx_upgrades_total",
    )
    GAUGES = ("downstream_cx_active", "downstream_cx_http1_active", "downstream_cx_http2_active",
              "downstream_rq_active", "downstream_cx_upgrades_active")
    HISTOGRAMS = ("downstream_rq_time", "downstream_cx_length_ms")

    if not cython.compiled:  # compiled, a cdef class whose fields are declared in the .pxd
        __slots__ = COUNTERS + GAUGES + HISTOGRAMS + ("rq_by_class", "http2_keepalive_timeout")

    def __init__(self, store: Store, prefix: str) -> None:
        base = f"http.{prefix}."
        store.bind(self, base, counters=self.COUNTERS, gauges=self.GAUGES, histograms=self.HISTOGRAMS)
        # index by status // 100 (1..5); index 0 unused
        # Envoy's HTTP/2 codec stats are rooted at "http2." (not per connection manager)
        self.http2_keepalive_timeout = store.counter("http2.keepalive_timeout")
        self.rq_by_class = [store.counter(base + "downstream_rq_5xx")] + [
            store.counter(f"{base}downstream_rq_{n}xx") for n in range(1, 6)
        ]
