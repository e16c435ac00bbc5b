# C-level declarations for host.py (Cython pure-Python mode; see tulle/compiled.py).
# Per request the load balancer reads a host's weight, health and stats.rq_active, the router
# bumps its stats and reports results to host.outlier (a no-op monitor unless outlier detection).

cdef frozenset _UNHEALTHY_STATUSES
cdef tuple _HOST_STAT_NAMES


cdef class HostStats:
    cdef public Py_ssize_t cx_total
    cdef public Py_ssize_t cx_active
    cdef public Py_ssize_t cx_connect_fail
    cdef public Py_ssize_t rq_total
    cdef public Py_ssize_t rq_success
    cdef public Py_ssize_t rq_error
    cdef public Py_ssize_t rq_active
    cdef public Py_ssize_t rq_timeout


cdef class NoOutlierMonitor:
    cpdef put_http_status(self, status)
    cpdef put_connect_success(self)
    cpdef put_connect_success_final(self)
    cpdef put_local_origin_failure(self)


cdef class Host:
    cdef public str ip
    cdef public object port
    cdef public str address_str
    cdef public str hostname
    cdef public object weight
    cdef public object priority
    cdef public object locality
    cdef public object locality_weight
    cdef public object health_check_port
    cdef public object health_status
    cdef public str health_flags
    cdef public bint healthy
    cdef public bint degraded
    cdef public HostStats stats
    cdef public object pool
    cdef public object http2_pool
    cdef public bint failed_active_hc
    cdef public bint degraded_active_hc
    cdef public bint active_hc_timeout
    cdef public bint failed_outlier_check
    cdef public bint pending_dynamic_removal
    cdef public object outlier
