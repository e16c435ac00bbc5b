# C-level declarations for cluster_stats.py (Cython pure-Python mode; see tulle/compiled.py).
# The stats objects are the stats store's (Counter, Gauge, Histogram), typed: a compiled caller bumps
# ``stats.upstream_rq_total.value`` as two C field accesses.

from tulle.stats.store cimport Counter, Gauge, Histogram


cdef class ClusterStats:
    cdef public Counter upstream_cx_total
    cdef public Counter upstream_cx_http1_total
    cdef public Counter upstream_cx_http2_total
    cdef public Counter upstream_cx_connect_fail
    cdef public Counter upstream_cx_connect_timeout
    cdef public Counter upstream_cx_destroy
    cdef public Counter upstream_cx_destroy_local
    cdef public Counter upstream_cx_destroy_remote
    cdef public Counter upstream_cx_destroy_with_active_rq
    cdef public Counter upstream_cx_rx_bytes_total
    cdef public Counter upstream_cx_tx_bytes_total
    cdef public Counter upstream_cx_idle_timeout
    cdef public Counter upstream_cx_none_healthy
    cdef public Counter upstream_cx_max_requests
    cdef public Counter upstream_cx_max_duration_reached
    cdef public Counter upstream_cx_protocol_error
    cdef public Counter upstream_rq_total
    cdef public Counter upstream_rq_pending_total
    cdef public Counter upstream_rq_timeout
    cdef public Counter upstream_rq_rx_reset
    cdef public Counter upstream_rq_tx_reset
    cdef public Counter upstream_rq_completed
    cdef public Counter membership_change
    cdef public Counter update_attempt
    cdef public Counter update_success
    cdef public Counter update_failure
    cdef public Counter update_empty
    cdef public Counter lb_healthy_panic
    cdef public Counter upstream_cx_overflow
    cdef public Counter upstream_cx_pool_overflow
    cdef public Counter upstream_rq_pending_overflow
    cdef public Counter upstream_rq_active_overflow
    cdef public Counter upstream_rq_retry_overflow
    cdef public Counter upstream_rq_cancelled
    cdef public Counter upstream_rq_pending_failure_eject
    cdef public Counter upstream_rq_retry
    cdef public Counter upstream_rq_retry_success
    cdef public Counter upstream_rq_retry_limit_exceeded
    cdef public Counter upstream_rq_retry_backoff_exponential
    cdef public Counter upstream_rq_per_try_timeout
    cdef public Counter upstream_rq_per_try_idle_timeout
    cdef public Counter upstream_rq_max_duration_reached
    cdef public Counter retry_or_shadow_abandoned
    cdef public Gauge upstream_cx_active
    cdef public Gauge upstream_rq_active
    cdef public Gauge upstream_rq_pending_active
    cdef public Gauge membership_healthy
    cdef public Gauge membership_total
    cdef public Gauge membership_degraded
    cdef public Gauge max_host_weight
    cdef public Histogram upstream_rq_time
    cdef public Histogram upstream_cx_length_ms
    cdef public Histogram upstream_cx_connect_ms
    cdef public str prefix
    cdef public object _store
    cdef public dict _by_code
    cdef public dict _by_class
    cpdef connect_failed(self, bint timed_out)
    cpdef connection_destroyed(self, bint remote, bint with_requests, double created)
    cpdef rq_completed(self, long status)
    cpdef tuple _counters_for(self, long status)
