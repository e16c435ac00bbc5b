# C-level declarations for connection_manager.py (Cython pure-Python mode; see tulle/compiled.py).
# The filter chain is called through HttpFilter's cpdef methods (C calls for compiled filters);
# Locals of methods are typed with @cython.locals in the .py: Cython (3.3.2) ignored
# @cython.locals in this .pxd on the methods of these cdef classes (cpdef always, cdef here too),
# while it honours it on module-level functions.
# The request parser (tulle.http.http1_parser) calls on_request_head, on_body and
# on_message_complete through their Python entry points: once per head, body piece and request end.

from cpython.unicode cimport PyUnicode_DecodeLatin1

from tulle.filters.http.base cimport HttpFilter
from tulle.filters.network.http_connection_manager.config cimport HcmConfig
from tulle.filters.network.http_connection_manager.stats cimport HcmStats
from tulle.http cimport http1
from tulle.http.codec_callbacks cimport CodecCallbacks
from tulle.http.headers cimport HeaderMap
from tulle.stats.store cimport Counter
from tulle.stream_info cimport StreamInfo

cdef object _getrandbits
cdef object _monotonic
cdef int CONTINUE
cdef object _INVALID_AUTHORITY_CHAR
cdef set _valid_authorities
cdef Py_ssize_t _VALID_AUTHORITIES_MAX
cdef Py_ssize_t _CACHED_AUTHORITY_MAX_LEN

cpdef str request_id()
cdef unsigned long long _random_state
cdef unsigned long long _next_random64() noexcept
cdef const char* _HEX_DIGITS
cdef dict _STATUS_CODES
cdef str _uuid_text(unsigned long long high, unsigned long long low)

cpdef _check_authority(str authority)

cdef class HttpConnection


cdef class ActiveStream:
    cdef public HttpConnection connection
    cdef public HcmConfig config
    cdef public HeaderMap headers
    cdef public StreamInfo info
    cdef public list filters             # [HttpFilter]
    cdef public Py_ssize_t decode_index
    cdef public bint request_complete
    cdef public bint end_stream_at_headers
    cdef public bint response_started
    cdef public bint response_complete
    cdef public bint keep_alive
    cdef public bint is_head
    cdef public bint http10
    cdef public bint chunked_response
    cdef public bint close_delimited
    cdef public list pending_body        # [bytes] | None
    cdef public object route
    cdef public bint route_resolved
    cdef public double last_activity
    cdef public double deadline
    cdef public object deadline_callback
    cdef public bint done
    cdef public bint expect_continue
    cdef public bint upgrade_h2c
    cdef public bint has_envoy_headers
    cdef public tuple error_reply        # (status, details, body) | None
    cdef public double idle_timeout
    cdef public double duration_deadline
    cdef public int codec_stream_id
    cdef public str upgrade_type

    cpdef get_route(self)
    cpdef _apply_route_timeouts(self, timeouts)
    cpdef clear_route_cache(self)
    cpdef set_deadline(self, double deadline, callback)
    cpdef read_disable(self, bint disable)
    cpdef continue_decoding(self)
    cpdef dispatch(self)
    cdef _decode_headers_from(self, Py_ssize_t start)
    cpdef decode_data(self, data, bint end_stream)
    cpdef decode_trailers(self, trailers)
    cpdef encode_headers(self, HeaderMap headers, bint end_stream)
    cpdef encode_data(self, data, bint end_stream)
    cpdef encode_trailers(self, trailers)
    cdef _response_done(self)
    cpdef reset(self, str flag)
    cpdef destroy(self)


cdef class HttpConnection(CodecCallbacks):
    cdef public HcmConfig config
    cdef public object downstream
    cdef public object transport
    cdef public object parser
    cdef public object loop
    cdef public object streams           # deque[ActiveStream]
    cdef public ActiveStream parsing
    cdef public double head_started
    cdef public bint parse_failed
    cdef public Py_ssize_t read_disabled
    cdef public bint close_when_done
    cdef public bint closed
    cdef public double last_activity
    cdef public object timer
    cdef public double timer_when
    cdef public Counter stats_rx
    cdef public Counter stats_tx
    cdef public list stats_rq_by_class
    cdef public str remote_str
    cdef public str local_str
    cdef public bint write_paused
    cdef public bint corked
    cdef public list out
    cdef public bytes sniff
    cdef public bint http1_counted
    cdef public ActiveStream tunnel

    cpdef double loop_time(self)
    cdef _start(self, transport)
    cdef _count_http1(self)
    cpdef data_received(self, data)
    cdef bytes _sniff(self, bytes data)
    cdef _hand_over_to_http2(self, bytes data)
    cpdef on_request_head(self, str method, str target, bint http10, list fields)
    cpdef on_body(self, body)
    cpdef on_message_complete(self, bint keep_alive)
    cdef _prepare_request(self, ActiveStream stream, HeaderMap headers, bint request_id_seen,
                          bint forwarded_proto_seen)
    cpdef bint encode_response_head(self, ActiveStream stream, long status, HeaderMap headers, bint end_stream) except -1
    cpdef encode_response_body(self, ActiveStream stream, data, bint end_stream)
    cpdef encode_response_trailers(self, ActiveStream stream, trailers)
    cpdef bint should_close_after(self, ActiveStream stream)
    cpdef stream_finished(self, ActiveStream stream, bint reset=*)
    cdef _finalize(self, ActiveStream stream)
    cpdef protocol_error(self, long status, str details)
    cdef ActiveStream _stream_without_head(self)
    cdef _head_pending(self)
    cdef _head_timed_out(self)
    cpdef write(self, data)
    cpdef cork(self)
    cpdef uncork(self)
    cpdef close_transport(self)
    cpdef read_disable(self, bint disable)
    cpdef stream_read_disable(self, ActiveStream stream, bint disable)
    cpdef drain(self)
    cpdef watch_deadline(self, double deadline)
    cdef _arm_timer(self, double when)
    cdef double _next_deadline(self) except? -1.0
    cdef list _timed_streams(self)
    cdef list _take_open_streams(self)
    cdef _codec_closed(self)
    cdef _close_idle(self)
    cdef _stream_deadlines(self, ActiveStream stream, list candidates)
    cdef _expire_stream(self, ActiveStream stream, double now)


cpdef _tell_filters(ActiveStream stream, str hook)

@cython.locals(started=double)
cdef _start_stream_at(StreamInfo info, double started)

@cython.locals(query_at=Py_ssize_t, path=str, query=str)
cpdef str _merge_slashes(str target)
