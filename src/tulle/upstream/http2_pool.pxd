# C-level declarations for http2_pool.py (Cython pure-Python mode; see tulle/compiled.py).
# Http2ClientStream is the router's RequestEncoder for one HTTP/2 stream (the router calls it at C
# level); Http2ClientConnection owns the nghttp2 session (Http2Session calls its on_h2_* methods at C
# level) and is an asyncio.Protocol by its methods; the pool's entry points stay Python-callable.

from tulle.http.codec_callbacks cimport CodecCallbacks
from tulle.http.headers cimport HeaderMap
from tulle.http.http2_codec cimport Http2Session
from tulle.upstream.request_encoder cimport RequestEncoder, UpstreamCallbacks

cdef frozenset _CONNECTION_SPECIFIC
cdef object _random

cdef class Http2ConnectionPool
cdef class Http2ClientConnection


cpdef list request_fields(HeaderMap headers)


cdef class Http2ClientStream(RequestEncoder):
    cdef public Http2ClientConnection connection
    cdef public int stream_id
    cdef public UpstreamCallbacks callbacks
    cdef public object rq_resource
    cdef public bint headers_received
    cdef public bint local_ended
    cdef public int read_paused
    cdef public Py_ssize_t held
    cdef public bint write_paused
    cdef public bint in_read


cdef class Http2ClientConnection(CodecCallbacks):
    cdef public Http2ConnectionPool pool
    cdef public object loop
    cdef public object transport
    cdef public Http2Session session
    cdef public dict streams
    cdef public Py_ssize_t active
    cdef public Py_ssize_t total
    cdef public bint closed
    cdef public bint retired
    cdef public double created
    cdef public double idle_since
    cdef public object cx_resource
    cdef public str local_reason
    cdef public object age_timer
    cdef public bint receiving
    cdef public bint flush_scheduled
    cdef public list touched
    cdef public object keepalive_timer
    cdef public bint ping_outstanding
    cdef public bint write_paused

    cpdef Py_ssize_t room(self) except -1
    cpdef Http2ClientStream new_stream(self, rq_resource)
    cpdef stream_closed(self, Http2ClientStream stream)
    cpdef flush_soon(self)
    cpdef flush(self)


cdef class Http2ConnectionPool:
    cdef public object cluster
    cdef public object host
    cdef public object loop
    cdef public list ready
    cdef public set all
    cdef public Py_ssize_t connecting
    cdef public object pending
    cdef public bint closing
    cdef public bint _serve_scheduled
    cdef public object _idle_timer
    cdef public object stats_rx
    cdef public object stats_tx

    cpdef Http2ClientConnection _with_room(self)
    cpdef on_stream_closed(self, Http2ClientConnection conn)
