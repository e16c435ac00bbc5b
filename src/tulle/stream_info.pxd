# C-level declarations for stream_info.py (Cython pure-Python mode; see tulle/compiled.py).

from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec


cdef class StreamInfo:
    cdef public double start_time
    cdef public double start_monotonic
    cdef public object end_monotonic                # float | None
    cdef public object first_upstream_rx_monotonic  # float | None
    cdef public str protocol
    cdef public object request_headers              # HeaderMap | None
    cdef public object response_headers             # HeaderMap | None
    cdef public object response_trailers            # HeaderMap | None
    cdef public long response_code
    cdef public str response_code_details
    cdef public list response_flags
    cdef public long long bytes_received
    cdef public long long bytes_sent
    cdef public str upstream_host
    cdef public str upstream_cluster
    cdef public str upstream_local_address
    cdef public str downstream_remote_address
    cdef public str downstream_local_address
    cdef public str route_name
    cdef public str request_id
    cdef public str connection_termination_details
    cdef public dict filter_state
    cdef public object last_downstream_rx_monotonic  # float | None
    cdef public bint health_check
    cpdef add_flag(self, str flag)
    cpdef str flags_string(self)
