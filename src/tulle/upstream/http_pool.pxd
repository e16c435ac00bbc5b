# C-level declarations for http_pool.py (Cython pure-Python mode; see tulle/compiled.py).
# Http1ClientConnection is a cdef class that is an asyncio.Protocol by its methods (a cdef class cannot
# inherit from a Python class). The transport calls its protocol methods through Python; the
# ResponseParser calls its parser callbacks (CodecCallbacks, cpdef) and the pool and the router what
# they call per request (cpdef) at C level.
# A connection's callbacks subclass UpstreamCallbacks (the router's UpstreamRequest is a cdef
# subclass: called at C level; a shadow request or a test recorder is a Python subclass). The
# PoolCallbacks (duck-typed), the cluster and the host are typed object.

cimport cython

from tulle.http cimport http1
from tulle.http.headers cimport HeaderMap, wire_headers
from tulle.upstream.request_encoder cimport RequestEncoder, UpstreamCallbacks
from tulle.upstream.resource_manager cimport Resource, ResourceManager

cdef list _STATUS_TEXT
cdef frozenset _METHODS_WITH_BODY
cdef bytes _CONTENT_LENGTH_ZERO

cdef class HttpConnectionPool

cpdef bint queue_pending(pending, callbacks, ResourceManager manager, stats) except -1
cpdef bint cancel_pending(pending, callbacks, stats) except -1
cpdef fail_pending(pending, stats, str flag, str reason)


cdef class Http1ClientConnection(RequestEncoder):
    cdef public HttpConnectionPool pool
    cdef public object transport
    cdef public object parser
    cdef public UpstreamCallbacks callbacks
    cdef public bint is_head
    cdef public bint chunked
    cdef public bint upgrading
    cdef public bint tunnel
    cdef public int status
    cdef public bint headers_sent
    cdef public bint close_delimited
    cdef public bint response_done
    cdef public bint ended
    cdef public Py_ssize_t requests
    cdef public bint closed
    cdef public double idle_since
    cdef public double created
    cdef public str local_reason
    cdef public Resource rq_resource
    cdef public Resource cx_resource
    cdef public bint expired
    cdef public object age_timer

    cpdef on_response_head(self, int status, bint http10, bytes block, content_length, transfer_encoding,
                           bint keep_alive)
    cpdef on_body(self, body)
    cpdef on_message_complete(self, bint keep_alive)
    cpdef _complete(self, bint keep_alive)
    cpdef encode_headers(self, UpstreamCallbacks callbacks, headers, bint end_stream)
    cpdef encode_data(self, data, bint end_stream)
    cpdef start_request(self, callbacks, bytes head, bint is_head)
    cpdef write(self, data)
    cpdef pause_reading(self)
    cpdef resume_reading(self)
    cpdef _end_request(self)
    cpdef _reset(self, str flag, str reason)
    cpdef _protocol_error(self, str reason)
    cpdef abort(self, str reason=*)
    cpdef close(self, str reason=*)


cdef class HttpConnectionPool:
    cdef public object cluster
    cdef public object host
    cdef public object loop
    cdef public list idle
    cdef public set all
    cdef public bint closing
    cdef public object pending          # deque[(PoolCallbacks, ResourceManager)]
    cdef public Py_ssize_t connecting
    cdef public bint _serve_scheduled
    cdef public object stats_rx
    cdef public object stats_tx
    cdef public object _idle_timer

    cpdef Http1ClientConnection acquire(self, callbacks, ResourceManager manager)
    cpdef _enqueue(self, callbacks, ResourceManager manager)
    cpdef bint cancel(self, callbacks) except -1
    cpdef bint _attach_oldest(self, Http1ClientConnection conn) except -1
    cpdef _schedule_serve(self)
    cpdef _serve_pending(self)
    cpdef _purge_pending(self, str flag, str reason)
    cpdef _create_connections(self, ResourceManager manager)
    cpdef Http1ClientConnection take_idle(self)
    cpdef release(self, Http1ClientConnection conn, bint keep_alive)
    cpdef _connection_aged(self, Http1ClientConnection conn)
    cpdef on_connection_closed(self, Http1ClientConnection conn, bint remote)
    cpdef drain(self)


cpdef pool_for(host, cluster, loop)  # whatever pool the host holds (tests hang fakes there)
