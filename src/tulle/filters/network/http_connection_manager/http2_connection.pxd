# C-level declarations for http2_connection.py (Cython pure-Python mode; see tulle/compiled.py).
# Http2Connection extends the HTTP/1 HttpConnection (its cpdef/cdef methods are overridden here, so
# ActiveStream's calls reach the HTTP/2 versions); the session calls the on_h2_* methods at C level.

from tulle.filters.network.http_connection_manager.connection_manager cimport (
    ActiveStream, HttpConnection, _check_authority, _tell_filters,
)
from tulle.http.headers cimport HeaderMap
from tulle.http.http2_codec cimport Http2Session
from tulle.stream_info cimport StreamInfo

cdef frozenset _CONNECTION_SPECIFIC
cdef object _monotonic
cdef object _random


cdef class Http2Connection(HttpConnection):
    cdef public Http2Session session
    cdef public dict h2_streams             # stream id -> ActiveStream
    cdef public set write_paused_streams    # stream ids whose unsent DATA is over the buffer limit
    cdef public list resets_after_output    # streams to reset (NO_ERROR) once their response is written
    cdef public bint receiving              # inside session.receive: output waits until it returns
    cdef public object keepalive_timer      # connection_keepalive: the next PING, or its ACK's deadline
    cdef public bint ping_outstanding
    cdef public dict held_windows           # read-disabled stream id -> [count, bytes not acknowledged]

    cpdef adopt(self, transport, bytes data)
    cdef _new_stream(self, int stream_id, list fields, bint end_stream)
    cpdef flush(self)
    cdef _schedule_ping(self)
    cdef _resume_drained_streams(self)

