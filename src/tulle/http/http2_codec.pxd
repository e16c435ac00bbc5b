# C-level declarations for http2_codec.pyx: libnghttp2's API as the binding uses it, and the
# session's fields (the HTTP/2 connections cimport Http2Session to call it at C level).

from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t

from tulle.http.codec_callbacks cimport CodecCallbacks


cdef extern from "nghttp2/nghttp2.h":
    ctypedef struct nghttp2_session:
        pass
    ctypedef struct nghttp2_session_callbacks:
        pass
    ctypedef struct nghttp2_option:
        pass

    ctypedef struct nghttp2_frame_hd:
        size_t length
        int32_t stream_id
        uint8_t type
        uint8_t flags

    ctypedef struct nghttp2_headers:
        nghttp2_frame_hd hd
        int cat

    ctypedef struct nghttp2_goaway:
        nghttp2_frame_hd hd
        int32_t last_stream_id
        uint32_t error_code

    ctypedef struct nghttp2_rst_stream:
        nghttp2_frame_hd hd
        uint32_t error_code

    ctypedef union nghttp2_frame:
        nghttp2_frame_hd hd
        nghttp2_headers headers
        nghttp2_goaway goaway
        nghttp2_rst_stream rst_stream

    ctypedef struct nghttp2_nv:
        uint8_t* name
        uint8_t* value
        size_t namelen
        size_t valuelen
        uint8_t flags

    ctypedef struct nghttp2_settings_entry:
        int32_t settings_id
        uint32_t value

    ctypedef union nghttp2_data_source:
        int fd
        void* ptr

    ctypedef ssize_t (*nghttp2_data_source_read_callback)(
        nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length, uint32_t* data_flags,
        nghttp2_data_source* source, void* user_data) noexcept

    ctypedef struct nghttp2_data_provider:
        nghttp2_data_source source
        nghttp2_data_source_read_callback read_callback

    ctypedef int (*nghttp2_on_begin_headers_callback)(nghttp2_session*, const nghttp2_frame*, void*) noexcept
    ctypedef int (*nghttp2_on_header_callback)(
        nghttp2_session*, const nghttp2_frame*, const uint8_t*, size_t, const uint8_t*, size_t, uint8_t,
        void*) noexcept
    ctypedef int (*nghttp2_on_frame_recv_callback)(nghttp2_session*, const nghttp2_frame*, void*) noexcept
    ctypedef int (*nghttp2_on_data_chunk_recv_callback)(
        nghttp2_session*, uint8_t, int32_t, const uint8_t*, size_t, void*) noexcept
    ctypedef int (*nghttp2_on_stream_close_callback)(nghttp2_session*, int32_t, uint32_t, void*) noexcept
    ctypedef int (*nghttp2_on_invalid_frame_recv_callback)(
        nghttp2_session*, const nghttp2_frame*, int, void*) noexcept

    int nghttp2_session_callbacks_new(nghttp2_session_callbacks** callbacks_ptr)
    void nghttp2_session_callbacks_del(nghttp2_session_callbacks* callbacks)
    void nghttp2_session_callbacks_set_on_begin_headers_callback(
        nghttp2_session_callbacks*, nghttp2_on_begin_headers_callback)
    void nghttp2_session_callbacks_set_on_header_callback(nghttp2_session_callbacks*, nghttp2_on_header_callback)
    void nghttp2_session_callbacks_set_on_frame_recv_callback(
        nghttp2_session_callbacks*, nghttp2_on_frame_recv_callback)
    void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
        nghttp2_session_callbacks*, nghttp2_on_data_chunk_recv_callback)
    void nghttp2_session_callbacks_set_on_stream_close_callback(
        nghttp2_session_callbacks*, nghttp2_on_stream_close_callback)
    void nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(
        nghttp2_session_callbacks*, nghttp2_on_invalid_frame_recv_callback)

    int nghttp2_option_new(nghttp2_option** option_ptr)
    void nghttp2_option_del(nghttp2_option* option)
    void nghttp2_option_set_no_auto_window_update(nghttp2_option* option, int val)
    void nghttp2_option_set_peer_max_concurrent_streams(nghttp2_option* option, uint32_t val)
    void nghttp2_option_set_max_outbound_ack(nghttp2_option* option, size_t val)
    void nghttp2_option_set_max_settings(nghttp2_option* option, size_t val)
    void nghttp2_option_set_stream_reset_rate_limit(nghttp2_option* option, uint64_t burst, uint64_t rate)
    void nghttp2_option_set_max_continuations(nghttp2_option* option, size_t val)

    int nghttp2_session_server_new2(nghttp2_session** session_ptr, const nghttp2_session_callbacks* callbacks,
                                    void* user_data, const nghttp2_option* option)
    int nghttp2_session_client_new2(nghttp2_session** session_ptr, const nghttp2_session_callbacks* callbacks,
                                    void* user_data, const nghttp2_option* option)
    void nghttp2_session_del(nghttp2_session* session)
    ssize_t nghttp2_session_mem_recv(nghttp2_session* session, const uint8_t* data, size_t length)
    ssize_t nghttp2_session_mem_send(nghttp2_session* session, const uint8_t** data_ptr)
    int nghttp2_session_want_read(nghttp2_session* session)
    int nghttp2_session_want_write(nghttp2_session* session)
    int nghttp2_submit_settings(nghttp2_session* session, uint8_t flags, const nghttp2_settings_entry* iv,
                                size_t niv)
    int nghttp2_submit_response(nghttp2_session* session, int32_t stream_id, const nghttp2_nv* nva, size_t nvlen,
                                const nghttp2_data_provider* data_prd)
    int32_t nghttp2_submit_request(nghttp2_session* session, const void* pri_spec, const nghttp2_nv* nva,
                                   size_t nvlen, const nghttp2_data_provider* data_prd, void* stream_user_data)
    int nghttp2_submit_trailer(nghttp2_session* session, int32_t stream_id, const nghttp2_nv* nva, size_t nvlen)
    int32_t nghttp2_submit_headers(nghttp2_session* session, uint8_t flags, int32_t stream_id, const void* pri_spec,
                                   const nghttp2_nv* nva, size_t nvlen, void* stream_user_data)
    int nghttp2_submit_rst_stream(nghttp2_session* session, uint8_t flags, int32_t stream_id, uint32_t error_code)
    int nghttp2_submit_goaway(nghttp2_session* session, uint8_t flags, int32_t last_stream_id, uint32_t error_code,
                              const uint8_t* opaque_data, size_t opaque_data_len)
    int nghttp2_submit_shutdown_notice(nghttp2_session* session)
    int nghttp2_submit_ping(nghttp2_session* session, uint8_t flags, const uint8_t* opaque_data)
    int nghttp2_session_set_local_window_size(nghttp2_session* session, uint8_t flags, int32_t stream_id,
                                              int32_t window_size)
    int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session* session)
    uint32_t nghttp2_session_get_remote_settings(nghttp2_session* session, int id)
    int nghttp2_session_terminate_session(nghttp2_session* session, uint32_t error_code)
    int nghttp2_session_consume(nghttp2_session* session, int32_t stream_id, size_t size)
    int nghttp2_session_resume_data(nghttp2_session* session, int32_t stream_id)
    const char* nghttp2_strerror(int lib_error_code)
    const char* nghttp2_http2_strerror(uint32_t error_code)

    enum:
        NGHTTP2_DATA = 0
        NGHTTP2_HEADERS = 1
        NGHTTP2_RST_STREAM = 3
        NGHTTP2_SETTINGS = 4
        NGHTTP2_PING = 6
        NGHTTP2_GOAWAY = 7
        NGHTTP2_FLAG_NONE = 0
        NGHTTP2_FLAG_END_STREAM = 1
        NGHTTP2_FLAG_ACK = 1
        NGHTTP2_NV_FLAG_NONE = 0
        NGHTTP2_NV_FLAG_NO_COPY_NAME = 2
        NGHTTP2_NV_FLAG_NO_COPY_VALUE = 4
        NGHTTP2_HCAT_REQUEST = 0
        NGHTTP2_HCAT_RESPONSE = 1
        NGHTTP2_HCAT_PUSH_RESPONSE = 2
        NGHTTP2_HCAT_HEADERS = 3
        NGHTTP2_DATA_FLAG_NONE = 0
        NGHTTP2_DATA_FLAG_EOF = 1
        NGHTTP2_DATA_FLAG_NO_END_STREAM = 2
        NGHTTP2_ERR_DEFERRED = -508
        NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE = -521
        NGHTTP2_ERR_CALLBACK_FAILURE = -902
        NGHTTP2_ERR_FLOODED = -904
        NGHTTP2_SETTINGS_HEADER_TABLE_SIZE = 1
        NGHTTP2_SETTINGS_ENABLE_PUSH = 2
        NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS = 3
        NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE = 4
        NGHTTP2_SETTINGS_MAX_FRAME_SIZE = 5
        NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE = 6
        NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL = 8
        NGHTTP2_NO_ERROR = 0
        NGHTTP2_PROTOCOL_ERROR = 1
        NGHTTP2_INTERNAL_ERROR = 2
        NGHTTP2_FLOW_CONTROL_ERROR = 3
        NGHTTP2_REFUSED_STREAM = 7
        NGHTTP2_CANCEL = 8
        NGHTTP2_ENHANCE_YOUR_CALM = 11



cdef class _OutStream:
    cdef list chunks
    cdef Py_ssize_t offset      # into chunks[0]
    cdef Py_ssize_t buffered
    cdef bint ended             # end_stream was given: END_STREAM goes on the last DATA frame
    cdef list trailers          # [(name, value)] sent instead of END_STREAM on the last DATA, or None
    cdef bint deferred          # nghttp2 was told "no data now": resume_data when some comes


cdef class _HeaderBlock:
    cdef nghttp2_nv* nva
    cdef Py_ssize_t count
    cdef list keep              # the encoded bytes the array points into


cdef class Http2Session:
    cdef nghttp2_session* session
    cdef CodecCallbacks owner
    cdef readonly bint server
    cdef readonly object settings    # http2_options.Http2Settings
    cdef Py_ssize_t max_header_bytes # its per-header limits, as C integers
    cdef Py_ssize_t max_headers
    cdef dict outgoing          # stream id -> _OutStream
    cdef list fields            # the header block being received
    cdef Py_ssize_t header_bytes
    cdef bint header_overflow
    cdef object failure         # an exception raised in a callback, re-raised by receive/take_output
    cdef public bint drained    # some buffered DATA was framed since the connection last looked

    cpdef close(self)
    cpdef receive(self, bytes data)
    cpdef bytes take_output(self)
    cpdef bint wants_io(self)
    cdef _OutStream _data_provider(self, int32_t stream_id, nghttp2_data_provider* provider)
    cpdef submit_headers(self, int stream_id, list items, bint end_stream)
    cpdef int submit_request(self, list items, bint end_stream) except -1
    cpdef Py_ssize_t send_data(self, int stream_id, bytes data, bint end_stream) except -1
    cpdef send_trailers(self, int stream_id, list items)
    cpdef Py_ssize_t buffered(self, int stream_id)
    cpdef reset_stream(self, int stream_id, unsigned int error_code)
    cpdef consume(self, int stream_id, Py_ssize_t size)
    cpdef goaway(self, unsigned int error_code=*)
    cpdef ping(self)
    cpdef unsigned int remote_max_concurrent_streams(self)
