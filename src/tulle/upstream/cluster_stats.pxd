# C-level declarations for cluster_stats.py (Cython pure-Python mode; see tulle/compiled.py).
# The stats objects are the stats store's (Counter, Gauge, Histogram): typed object here so this
# module does not depend on how the store is compiled; the hot path reads them as C attributes.


cdef class ClusterStats:
    cdef public object upstream_cx_total
    cdef public object upstream_cx_http1_total
    cdef public object upstream_cx_connect_fail
    cdef public object upstream_cx_connect_timeout
    cdef public object upstream_cx_destroy
    cdef public object upstream_cx_destroy_local
    cdef public object upstream_cx_destroy_remote
    cdef public object upstream_cx_destroy_with_active_rq
    cdef public object upstream_cx_rx_bytes_total
    cdef public object upstream_cx_tx_bytes_total
    cdef public object upstream_cx_idle_timeout
    cdef public object upstream_cx_none_healthy
    cdef public object upstream_cx_max_requests
    cdef public object upstream_cx_max_duration_reached
    cdef public object upstream_cx_protocol_error
    cdef public object upstream_rq_total
    cdef public object upstream_rq_pending_total
    cdef public object upstream_rq_timeout
    cdef public object upstream_rq_rx_reset
    cdef public object upstream_rq_tx_reset
    cdef public object upstream_rq_completed
    cdef public object membership_change
    cdef public object update_attempt
    cdef public object update_success
    cdef public object update_failure
    cdef public object update_empty
    cdef public object lb_healthy_panic
    cdef public object upstream_cx_overflow
    cdef public object upstream_cx_pool_overflow
    cdef public object upstream_rq_pending_overflow
    cdef public object upstream_rq_active_overflow
    cdef public object upstream_rq_retry_overflow
    cdef public object upstream_rq_cancelled
    cdef public object upstream_rq_pending_failure_eject
    cdef public object upstream_rq_retry
    cdef public object upstream_rq_retry_success
    cdef public object upstream_rq_retry_limit_exceeded
    cdef public object upstream_rq_retry_backoff_exponential
    cdef public object upstream_rq_per_try_timeout
    cdef public object upstream_rq_per_try_idle_timeout
    cdef public object upstream_rq_max_duration_reached
    cdef public object retry_or_shadow_abandoned
    cdef public object upstream_cx_active
    cdef public object upstream_rq_active
    cdef public object upstream_rq_pending_active
    cdef public object membership_healthy
    cdef public object membership_total
    cdef public object membership_degraded
    cdef public object max_host_weight
    cdef public object upstream_rq_time
    cdef public object upstream_cx_length_ms
    cdef public object upstream_cx_connect_ms
    cdef public str prefix
    cdef public object _store
    cdef public dict _by_code
    cdef public dict _by_class
    cpdef rq_completed(self, long status)
    cpdef tuple _counters_for(self, long status)
