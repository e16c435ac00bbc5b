# cython: language_level=3, boundscheck=False, wraparound=False
"""HTTP/2 framing: libnghttp2 (the codec Envoy used for years) called directly from C.

One ``Http2Session`` per connection, server or client side. The connection feeds it what it reads
(``receive``) and writes what ``take_output`` returns after each read or submit: every frame the
session owes (SETTINGS, WINDOW_UPDATE, PING ACKs, HEADERS, DATA, RST_STREAM, GOAWAY) leaves in one
write. nghttp2's callbacks are C functions here; they call the connection (a ``CodecCallbacks``,
see codec_callbacks.py) once per header block, DATA chunk, end of stream and stream close.

nghttp2 validates the HTTP/2 messaging rules (pseudo-headers, connection-specific headers,
content-length against DATA, lower-case names): a malformed stream is reset with PROTOCOL_ERROR
and never reaches the connection. The flood protections are nghttp2's: a cap on pending outbound
ACKs (PING/SETTINGS floods), on SETTINGS entries, on CONTINUATION frames per header block, and a
rate limit on streams reset by the peer (rapid reset, CVE-2023-44487); their limits are options of
the session. Header blocks are also cut at ``max_header_bytes`` / ``max_headers`` (Envoy's
max_request_headers_kb and max_headers_count): such a stream is reset, not buffered.

Window updates are manual (``consume``): the connection returns a stream's window as the data
is forwarded, so a slow reader on the other side back-pressures the sender.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport (
    PyUnicode_1BYTE_DATA, PyUnicode_1BYTE_KIND, PyUnicode_DecodeLatin1, PyUnicode_GET_LENGTH, PyUnicode_KIND,
)
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from tulle.http.http2_options import Http2Settings  # what a session is made with (built at config time)


# HTTP/2 error codes by name (RFC 9113 section 7), for the connection and the tests
NO_ERROR = NGHTTP2_NO_ERROR
PROTOCOL_ERROR = NGHTTP2_PROTOCOL_ERROR
INTERNAL_ERROR = NGHTTP2_INTERNAL_ERROR
FLOW_CONTROL_ERROR = NGHTTP2_FLOW_CONTROL_ERROR
REFUSED_STREAM = NGHTTP2_REFUSED_STREAM
CANCEL = NGHTTP2_CANCEL
ENHANCE_YOUR_CALM = NGHTTP2_ENHANCE_YOUR_CALM

# The client connection preface (RFC 9113 section 3.4): what AUTO codec selection looks for.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Http2Error(Exception):
    """The peer broke the protocol at connection level: the session queued a GOAWAY with
    ``error_code``; close after writing ``take_output()``."""

    def __init__(self, details, error_code=NGHTTP2_PROTOCOL_ERROR):
        super().__init__(details)
        self.details = details
        self.error_code = error_code


cdef class _OutStream:
    """A stream's DATA still to be framed: the peer's flow-control window decides when."""

    def __cinit__(self):
        self.chunks = []


cdef int _on_begin_headers(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) noexcept:
    cdef Http2Session self = <Http2Session>user_data
    self.fields = []
    self.header_bytes = 0
    self.header_overflow = False
    return 0


cdef int _on_header(nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                    const uint8_t* value, size_t valuelen, uint8_t flags, void* user_data) noexcept:
    cdef Http2Session self = <Http2Session>user_data
    if self.header_overflow:
        return 0
    self.header_bytes += namelen + valuelen
    if self.header_bytes > self.max_header_bytes or len(self.fields) >= self.max_headers:
        # over max_request_headers_kb / max_headers_count: the stream is reset once its block ends
        self.header_overflow = True
        self.fields = None
        return 0
    try:
        self.fields.append((PyUnicode_DecodeLatin1(<const char*>name, namelen, NULL),
                            PyUnicode_DecodeLatin1(<const char*>value, valuelen, NULL)))
    except BaseException as exc:
        self.failure = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_frame_recv(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) noexcept:
    cdef Http2Session self = <Http2Session>user_data
    cdef int32_t stream_id = frame.hd.stream_id
    cdef bint end_stream = (frame.hd.flags & NGHTTP2_FLAG_END_STREAM) != 0
    cdef list fields
    try:
        if frame.hd.type == NGHTTP2_HEADERS:
            if self.header_overflow:
                self.header_overflow = False
                self.owner.on_h2_headers_too_large(stream_id)
                nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_INTERNAL_ERROR)
                return 0
            fields = self.fields
            self.fields = None
            self.owner.on_h2_headers(stream_id, fields, end_stream)
        elif frame.hd.type == NGHTTP2_DATA:
            if end_stream:
                self.owner.on_h2_data(stream_id, b"", True)
        elif frame.hd.type == NGHTTP2_PING:
            if frame.hd.flags & NGHTTP2_FLAG_ACK:
                self.owner.on_h2_ping_ack()
        elif frame.hd.type == NGHTTP2_GOAWAY:
            self.owner.on_h2_goaway(frame.goaway.last_stream_id, frame.goaway.error_code)
    except BaseException as exc:
        self.failure = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_data_chunk(nghttp2_session* session, uint8_t flags, int32_t stream_id, const uint8_t* data,
                        size_t length, void* user_data) noexcept:
    cdef Http2Session self = <Http2Session>user_data
    try:
        self.owner.on_h2_data(stream_id, PyBytes_FromStringAndSize(<const char*>data, length), False)
    except BaseException as exc:
        self.failure = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_stream_close(nghttp2_session* session, int32_t stream_id, uint32_t error_code,
                          void* user_data) noexcept:
    cdef Http2Session self = <Http2Session>user_data
    try:
        self.outgoing.pop(stream_id, None)
        self.owner.on_h2_stream_close(stream_id, error_code)
    except BaseException as exc:
        self.failure = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef ssize_t _read_data(nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length,
                        uint32_t* data_flags, nghttp2_data_source* source, void* user_data) noexcept:
    """nghttp2 asks for up to ``length`` bytes of the stream's DATA (its window allows that much)."""
    cdef _OutStream out = <_OutStream>source.ptr
    cdef size_t written = 0
    cdef Py_ssize_t available, take
    cdef bytes chunk
    cdef _HeaderBlock block
    cdef Http2Session self = <Http2Session>user_data
    while written < length and out.chunks:
        chunk = <bytes>out.chunks[0]
        available = PyBytes_GET_SIZE(chunk) - out.offset
        take = available if <size_t>available <= length - written else <Py_ssize_t>(length - written)
        memcpy(buf + written, PyBytes_AS_STRING(chunk) + out.offset, take)
        written += take
        out.offset += take
        if out.offset == PyBytes_GET_SIZE(chunk):
            del out.chunks[0]
            out.offset = 0
    out.buffered -= written
    if not out.chunks:
        if out.ended:
            data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
            if out.trailers is not None:
                # END_STREAM goes on the trailers, submitted here as nghttp2 allows
                data_flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM
                try:
                    block = _HeaderBlock(out.trailers)
                except BaseException as exc:
                    self.failure = exc
                    return NGHTTP2_ERR_CALLBACK_FAILURE
                out.trailers = None
                nghttp2_submit_trailer(session, stream_id, block.nva, block.count)
        elif written == 0:
            out.deferred = True
            return NGHTTP2_ERR_DEFERRED
    self.drained = True
    return written


cdef class _HeaderBlock:
    """An nghttp2_nv array over a list of (name, value) str pairs, valid while this object lives.

    A str whose characters are all Latin-1 (every header this proxy makes) is stored one byte per
    character: the array points into it, nothing is encoded. nghttp2 copies the array when a frame
    is submitted."""

    def __cinit__(self, list items):
        cdef Py_ssize_t index = 0
        self.count = len(items)
        self.keep = [items]
        self.nva = <nghttp2_nv*>malloc(sizeof(nghttp2_nv) * (self.count or 1))
        if self.nva == NULL:
            raise MemoryError()
        for item in items:
            _point_at(item[0], &self.nva[index].name, &self.nva[index].namelen, self.keep)
            _point_at(item[1], &self.nva[index].value, &self.nva[index].valuelen, self.keep)
            self.nva[index].flags = NGHTTP2_NV_FLAG_NONE
            index += 1

    def __dealloc__(self):
        free(self.nva)


cdef int _point_at(object text, uint8_t** data, size_t* length, list keep) except -1:
    """``data``/``length`` over ``text``'s Latin-1 bytes (its own buffer when it is stored one byte
    per character; else encoded, and the bytes kept alive in ``keep``)."""
    cdef bytes encoded
    if PyUnicode_KIND(text) == PyUnicode_1BYTE_KIND:
        data[0] = <uint8_t*>PyUnicode_1BYTE_DATA(text)
        length[0] = <size_t>PyUnicode_GET_LENGTH(text)
        return 0
    encoded = (<str>text).encode("latin-1")  # UnicodeEncodeError for a character beyond Latin-1
    keep.append(encoded)
    data[0] = <uint8_t*>PyBytes_AS_STRING(encoded)
    length[0] = <size_t>PyBytes_GET_SIZE(encoded)
    return 0


cdef nghttp2_session_callbacks* _CALLBACKS = NULL


cdef nghttp2_session_callbacks* _callbacks() except NULL:
    global _CALLBACKS
    if _CALLBACKS == NULL:
        if nghttp2_session_callbacks_new(&_CALLBACKS) != 0:
            raise MemoryError()
        nghttp2_session_callbacks_set_on_begin_headers_callback(_CALLBACKS, _on_begin_headers)
        nghttp2_session_callbacks_set_on_header_callback(_CALLBACKS, _on_header)
        nghttp2_session_callbacks_set_on_frame_recv_callback(_CALLBACKS, _on_frame_recv)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(_CALLBACKS, _on_data_chunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(_CALLBACKS, _on_stream_close)
    return _CALLBACKS


cdef class Http2Session:
    """One HTTP/2 connection's framing state (see the module docstring)."""

    def __cinit__(self, CodecCallbacks owner, bint server, settings):
        cdef nghttp2_option* option = NULL
        cdef nghttp2_settings_entry entries[7]
        cdef int rc
        cdef size_t count = 0
        self.owner = owner
        self.server = server
        self.settings = settings
        self.max_header_bytes = settings.max_header_bytes  # read per header: C copies
        self.max_headers = settings.max_headers
        self.outgoing = {}
        if nghttp2_option_new(&option) != 0:
            raise MemoryError()
        try:
            nghttp2_option_set_no_auto_window_update(option, 1)
            nghttp2_option_set_max_outbound_ack(option, settings.max_outbound_ack)
            nghttp2_option_set_max_settings(option, settings.max_settings)
            nghttp2_option_set_max_continuations(option, settings.max_continuations)
            nghttp2_option_set_stream_reset_rate_limit(option, settings.reset_burst, settings.reset_rate)
            if server:
                rc = nghttp2_session_server_new2(&self.session, _callbacks(), <void*>self, option)
            else:
                rc = nghttp2_session_client_new2(&self.session, _callbacks(), <void*>self, option)
        finally:
            nghttp2_option_del(option)
        if rc != 0:
            raise MemoryError()
        entries[count].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        entries[count].value = settings.max_concurrent_streams
        count += 1
        entries[count].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        entries[count].value = settings.initial_stream_window_size
        count += 1
        entries[count].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        entries[count].value = settings.max_header_bytes
        count += 1
        if settings.hpack_table_size != 4096:
            entries[count].settings_id = NGHTTP2_SETTINGS_HEADER_TABLE_SIZE
            entries[count].value = settings.hpack_table_size
            count += 1
        if not server:
            entries[count].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
            entries[count].value = 0
            count += 1
        elif settings.allow_connect:
            entries[count].settings_id = NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL
            entries[count].value = 1
            count += 1
        nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, entries, count)
        if settings.initial_connection_window_size > 65535:
            nghttp2_session_set_local_window_size(self.session, NGHTTP2_FLAG_NONE, 0,
                                                  settings.initial_connection_window_size)

    def __dealloc__(self):
        if self.session != NULL:
            nghttp2_session_del(self.session)
            self.session = NULL

    cpdef close(self):
        """Free nghttp2's state now and let go of the connection (they refer to each other: without
        this a closed connection's session would wait for the cyclic GC). Every call after it is a no-op."""
        if self.session != NULL:
            nghttp2_session_del(self.session)
            self.session = NULL
        self.owner = None
        self.outgoing = {}

    cpdef receive(self, bytes data):
        """Process what was read. Raises Http2Error when the connection must end (a GOAWAY is
        queued: write ``take_output()``, then close)."""
        if self.session == NULL:
            return
        cdef ssize_t done
        done = nghttp2_session_mem_recv(self.session, <const uint8_t*>PyBytes_AS_STRING(data),
                                        PyBytes_GET_SIZE(data))
        if self.failure is not None:
            failure = self.failure
            self.failure = None
            raise failure
        if done < 0:
            # fatal: tell the peer why (GOAWAY) before the connection closes
            code = NGHTTP2_ENHANCE_YOUR_CALM if done == NGHTTP2_ERR_FLOODED else NGHTTP2_PROTOCOL_ERROR
            nghttp2_session_terminate_session(self.session, code)
            raise Http2Error(nghttp2_strerror(<int>done).decode(), code)

    cpdef bytes take_output(self):
        """Every frame the session has ready, as one bytes (b"" when none)."""
        if self.session == NULL:
            return b""
        cdef const uint8_t* data = NULL
        cdef ssize_t length
        cdef list pieces = None
        cdef bytes first = None
        cdef bytes piece
        while True:
            length = nghttp2_session_mem_send(self.session, &data)
            if length < 0:
                raise Http2Error(nghttp2_strerror(<int>length).decode())
            if length == 0:
                break
            piece = PyBytes_FromStringAndSize(<const char*>data, length)
            if first is None:
                first = piece
            else:
                if pieces is None:
                    pieces = [first]
                pieces.append(piece)
        if self.failure is not None:
            failure = self.failure
            self.failure = None
            raise failure
        if pieces is not None:
            return b"".join(pieces)
        return first if first is not None else b""

    cpdef bint wants_io(self):
        """False once the session is done (GOAWAY both ways, nothing left to send): close."""
        if self.session == NULL:
            return False
        return nghttp2_session_want_read(self.session) != 0 or nghttp2_session_want_write(self.session) != 0

    cdef _OutStream _data_provider(self, int32_t stream_id, nghttp2_data_provider* provider):
        out = _OutStream()
        self.outgoing[stream_id] = out
        provider.source.ptr = <void*>out
        provider.read_callback = _read_data
        return out

    cpdef submit_headers(self, int stream_id, list items, bint end_stream):
        """Response headers (server) for ``stream_id``; informational (1xx) ones keep the stream open."""
        if self.session == NULL:
            return
        cdef _HeaderBlock block = _HeaderBlock(items)
        cdef nghttp2_data_provider provider
        cdef int rc
        if items and items[0][1][:1] == "1" and items[0][0] == ":status":
            rc = nghttp2_submit_headers(self.session, NGHTTP2_FLAG_NONE, stream_id, NULL, block.nva, block.count,
                                        NULL)
        elif end_stream:
            rc = nghttp2_submit_response(self.session, stream_id, block.nva, block.count, NULL)
        else:
            self._data_provider(stream_id, &provider)
            rc = nghttp2_submit_response(self.session, stream_id, block.nva, block.count, &provider)
        if rc < 0:
            raise Http2Error(nghttp2_strerror(rc).decode())

    cpdef int submit_request(self, list items, bint end_stream) except -1:
        """A request (client): returns the new stream's id."""
        if self.session == NULL:
            raise Http2Error("the session is closed")
        cdef _HeaderBlock block = _HeaderBlock(items)
        cdef nghttp2_data_provider provider
        cdef int32_t stream_id
        if end_stream:
            stream_id = nghttp2_submit_request(self.session, NULL, block.nva, block.count, NULL, NULL)
        else:
            out = _OutStream()
            provider.source.ptr = <void*>out
            provider.read_callback = _read_data
            stream_id = nghttp2_submit_request(self.session, NULL, block.nva, block.count, &provider, NULL)
            if stream_id > 0:
                self.outgoing[stream_id] = out
        if stream_id < 0:
            raise Http2Error(nghttp2_strerror(stream_id).decode())
        return stream_id

    cpdef Py_ssize_t send_data(self, int stream_id, bytes data, bint end_stream) except -1:
        """Queue DATA for a stream whose headers went without END_STREAM; returns the bytes it
        holds unsent (the peer's window decides), for the connection's flow control."""
        if self.session == NULL:
            return 0
        cdef _OutStream out = self.outgoing.get(stream_id)
        if out is None:
            return 0  # the stream is gone (reset): nothing to send it
        if data:
            out.chunks.append(data)
            out.buffered += PyBytes_GET_SIZE(data)
        if end_stream:
            out.ended = True
        if out.deferred:
            out.deferred = False
            nghttp2_session_resume_data(self.session, stream_id)
        return out.buffered

    cpdef send_trailers(self, int stream_id, list items):
        """End a stream with trailers, after any DATA already queued."""
        if self.session == NULL:
            return
        cdef _OutStream out = self.outgoing.get(stream_id)
        if out is None:
            return
        out.trailers = items
        out.ended = True
        if out.deferred:
            out.deferred = False
            nghttp2_session_resume_data(self.session, stream_id)

    cpdef Py_ssize_t buffered(self, int stream_id):
        cdef _OutStream out = self.outgoing.get(stream_id)
        return 0 if out is None else out.buffered

    cpdef reset_stream(self, int stream_id, unsigned int error_code):
        if self.session == NULL:
            return
        self.outgoing.pop(stream_id, None)
        nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, stream_id, error_code)

    cpdef consume(self, int stream_id, Py_ssize_t size):
        """Return ``size`` bytes of window to the peer (the data was forwarded)."""
        if self.session == NULL:
            return
        if size > 0:
            nghttp2_session_consume(self.session, stream_id, size)

    cpdef goaway(self, unsigned int error_code=NGHTTP2_NO_ERROR):
        """The final GOAWAY: streams above the last one processed will not be."""
        if self.session == NULL:
            return
        nghttp2_submit_goaway(self.session, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(self.session),
                              error_code, NULL, 0)

    cpdef ping(self):
        """A PING (connection keepalive); the peer's ACK calls ``on_h2_ping_ack``."""
        if self.session == NULL:
            return
        nghttp2_submit_ping(self.session, NGHTTP2_FLAG_NONE, NULL)


    cpdef unsigned int remote_max_concurrent_streams(self):
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (unlimited until its SETTINGS arrive)."""
        if self.session == NULL:
            return 0
        return nghttp2_session_get_remote_settings(self.session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)


def error_name(unsigned int code):
    """RFC 9113's name for an error code (``PROTOCOL_ERROR``)."""
    return nghttp2_http2_strerror(code).decode()
