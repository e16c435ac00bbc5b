# C-level declarations for filter.py (Cython pure-Python mode; see tulle/compiled.py).
# RouterFilter is a cdef subclass of HttpFilter: the connection manager calls decode_headers /
# decode_data / on_destroy at C level. Its current attempt is an UpstreamRequest (C-level calls
# and attribute reads); the attempt calls back into the router through the cpdef on_attempt_*
# methods; its factory's settings are C attributes. The stream, route, host and stream info are
# C types inside decode_headers and on_attempt_headers (their @cython.locals, on the .py methods:
# Cython ignores method-level locals in a .pxd); the cluster, Attempts and the shadows stay Python
# objects. What runs only on retries, timeouts, local answers and errors stays def (ordinary Python
# methods of the compiled class).

from tulle.filters.http.base cimport HttpFilter
from tulle.filters.http.router.config cimport RouterFactory
from tulle.filters.http.router.upstream_request cimport UpstreamRequest
from tulle.filters.network.http_connection_manager.connection_manager cimport ActiveStream
from tulle.filters.network.http_connection_manager.stats cimport HcmStats
from tulle.http cimport http1
from tulle.http.headers cimport HeaderMap
from tulle.router.route_table cimport Route
from tulle.stream_info cimport StreamInfo
from tulle.upstream.host cimport Host


cdef class RouterFilter(HttpFilter):
    cdef public RouterFactory factory
    cdef public object route
    cdef public object cluster
    cdef public object weighted_entry
    cdef public HeaderMap trailers
    cdef public UpstreamRequest upstream
    cdef public bint paused_downstream
    cdef public bint request_ended
    cdef public bint response_started
    cdef public double timeout_at
    cdef public double per_try_at
    cdef public object attempts     # Attempts | None
    cdef public object shadows      # list[ShadowRequest] | None

    cpdef int decode_headers(self, headers, bint end_stream) except? -1
    cpdef int decode_data(self, data, bint end_stream) except? -1
    cpdef int decode_trailers(self, trailers) except? -1
    cpdef _on_request_complete(self)
    cpdef on_attempt_ready(self, UpstreamRequest upstream)
    cpdef on_attempt_headers(self, UpstreamRequest upstream, int status, headers, bint end_stream)
    cpdef on_attempt_data(self, UpstreamRequest upstream, data, bint end_stream)
    cpdef on_attempt_trailers(self, UpstreamRequest upstream, trailers)
    cpdef on_attempt_reset(self, UpstreamRequest upstream, str flag, str reason)
    cpdef on_attempt_pool_failure(self, UpstreamRequest upstream, str flag, str reason)
    cpdef _attempt_finished(self, UpstreamRequest upstream, bint success)
    cpdef _arm(self)
    cpdef _on_deadline(self)
    cpdef pause_downstream(self)
    cpdef resume_downstream(self)
    cpdef on_downstream_pause_writing(self)
    cpdef on_downstream_resume_writing(self)
    cpdef on_destroy(self)
