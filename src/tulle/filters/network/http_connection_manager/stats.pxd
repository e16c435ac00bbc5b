# C-level declarations for stats.py (Cython pure-Python mode; see tulle/compiled.py).
# Every field is public: the router, tests and admin read them as attributes; Store.bind sets them.

from tulle.stats.store cimport Counter, Gauge, Histogram


cdef class HcmStats:
    cdef public Counter downstream_cx_total
    cdef public Counter downstream_cx_http1_total
    cdef public Counter downstream_cx_http2_total
    cdef public Counter downstream_cx_upgrades_total
    cdef public Counter http2_keepalive_timeout   # "http2.keepalive_timeout", at the root as Envoy's codec stats
    cdef public Counter downstream_cx_destroy
    cdef public Counter downstream_cx_destroy_remote
    cdef public Counter downstream_cx_destroy_local
    cdef public Counter downstream_cx_rx_bytes_total
    cdef public Counter downstream_cx_tx_bytes_total
    cdef public Counter downstream_cx_protocol_error
    cdef public Counter downstream_cx_idle_timeout
    cdef public Counter downstream_cx_drain_close
    cdef public Counter downstream_rq_total
    cdef public Counter downstream_rq_http1_total
    cdef public Counter downstream_rq_http2_total
    cdef public Counter downstream_rq_completed
    cdef public Counter downstream_rq_rx_reset
    cdef public Counter downstream_rq_tx_reset
    cdef public Counter downstream_rq_timeout
    cdef public Counter downstream_rq_header_timeout
    cdef public Counter downstream_rq_idle_timeout
    cdef public Counter downstream_rq_too_large
    cdef public Counter downstream_flow_control_paused_reading_total
    cdef public Counter downstream_flow_control_resumed_reading_total
    cdef public Counter no_route
    cdef public Counter no_cluster
    cdef public Counter rq_redirect
    cdef public Counter rq_direct_response
    cdef public Counter rq_total
    cdef public Counter rq_reset_after_downstream_response_started
    cdef public Counter access_log_errors
    cdef public Counter downstream_rq_overload_close
    cdef public Counter downstream_cx_overload_disable_keepalive
    cdef public Counter downstream_rq_max_duration_reached
    cdef public Gauge downstream_cx_active
    cdef public Gauge downstream_cx_http1_active
    cdef public Gauge downstream_cx_http2_active
    cdef public Gauge downstream_cx_upgrades_active
    cdef public Gauge downstream_rq_active
    cdef public Histogram downstream_rq_time
    cdef public Histogram downstream_cx_length_ms
    cdef public list rq_by_class       # [Counter] by status // 100 (index 0: 5xx)
