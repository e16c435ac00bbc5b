# C-level declarations for upstream_request.py (Cython pure-Python mode; see tulle/compiled.py).
# The attempt and its router call each other at C level (filter.pxd and this file cimport each
# other); it is a cdef UpstreamCallbacks, so its connection calls it at C level too. The connection,
# its pool, the host and the cluster are typed object: the unit tests drive the attempt with fakes.

from tulle.filters.http.router.filter cimport RouterFilter
from tulle.upstream.http_pool cimport UpstreamCallbacks

cdef object _monotonic


cdef class UpstreamRequest(UpstreamCallbacks):
    cdef public RouterFilter router   # None once given up
    cdef public object downstream
    cdef public object host
    cdef public object conn         # Http1ClientConnection | None
    cdef public list pending
    cdef public Py_ssize_t pending_bytes
    cdef public bint active
    cdef public bint end_sent
    cdef public double started_at
    cdef public bint draining
    cdef public object cluster_stats

    cpdef on_pool_ready(self, conn)
    cpdef on_pool_failure(self, str flag, str reason)
    cpdef _pool_ready(self, conn)
    cpdef send(self, data, bint end_stream, RouterFilter router)
    cpdef _end(self, conn, RouterFilter router)
    cpdef on_upstream_headers(self, int status, headers, bint end_stream)
    cpdef on_upstream_data(self, data, bint end_stream)
    cpdef on_upstream_reset(self, str flag, str reason)
    cpdef on_upstream_read_begin(self)
    cpdef on_upstream_read_end(self)
    cpdef on_upstream_pause_writing(self)
    cpdef on_upstream_resume_writing(self)
    cpdef finish(self, cluster, bint success)
    cpdef reset(self, cluster, str reason)
    cpdef discard(self, cluster, bint end_stream)
