# C-level declarations for outlier_detection.py (Cython pure-Python mode; see tulle/compiled.py).
# Per request the router reports each result to host.outlier: with outlier detection configured
# that is a HostOutlierMonitor (put_http_status, and the put_* callables bound at construction).

cdef class HostOutlierMonitor:
    cdef public object host
    cdef public object detector
    cdef public object config
    cdef public bint attached
    cdef public Py_ssize_t consecutive_5xx
    cdef public Py_ssize_t consecutive_gateway_failure
    cdef public Py_ssize_t consecutive_local_origin_failure
    cdef public object num_ejections
    cdef public object eject_time_backoff
    cdef public object last_ejection_time
    cdef public object last_unejection_time
    cdef public object jitter
    cdef public Py_ssize_t external_total
    cdef public Py_ssize_t external_success
    cdef public Py_ssize_t local_total
    cdef public Py_ssize_t local_success
    cdef public tuple external_window
    cdef public tuple local_window
    cdef public object success_rate
    cdef public object local_origin_success_rate
    cdef public object put_connect_success
    cdef public object put_connect_success_final
    cdef public object put_local_origin_failure
    cpdef put_http_status(self, status)
