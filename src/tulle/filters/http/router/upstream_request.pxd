# C-level declarations for upstream_request.py (Cython pure-Python mode; see tulle/compiled.py).
# The attempt and its router call each other at C level (filter.pxd and this file cimport each
# other); it is a cdef UpstreamCallbacks, so its connection calls it at C level too. Its host, connection
# and cluster stats are C types; the pool and the cluster stay Python objects (the unit tests fake them).

from tulle.filters.http.router.filter cimport RouterFilter
from tulle.upstream.cluster_stats cimport ClusterStats
from tulle.upstream.host cimport Host
from tulle.upstream.request_encoder cimport RequestEncoder, UpstreamCallbacks

cdef object _monotonic


cdef class UpstreamRequest(UpstreamCallbacks):
    cdef public RouterFilter router   # None once given up
    cdef public object downstream
    cdef public Host host
    cdef public object pool                  # the host's pool for the cluster's protocol
    cdef public RequestEncoder conn          # None: not connected (yet), or handed back
    cdef public list pending
    cdef public Py_ssize_t pending_bytes
    cdef public bint active
    cdef public bint end_sent
    cdef public double started_at
    cdef public bint draining
    cdef public ClusterStats cluster_stats

    cpdef on_pool_ready(self, RequestEncoder conn)
    cpdef on_pool_failure(self, str flag, str reason)
    cpdef _pool_ready(self, RequestEncoder conn)
    cpdef send(self, data, bint end_stream, RouterFilter router)
    cpdef send_trailers(self, trailers)
    cpdef on_upstream_trailers(self, trailers)
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
