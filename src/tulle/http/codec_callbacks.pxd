# C-level declarations for codec_callbacks.py (Cython pure-Python mode; see tulle/compiled.py).
# The llhttp binding (http1_parser.pyx) and the libnghttp2 one (http2_codec.pyx) call these cpdef methods
# at C level on a connection that derives from CodecCallbacks; a Python subclass's overrides are honoured.
# ProtocolCallbacks wraps any
# other protocol object for the binding.

cdef class CodecCallbacks:
    cpdef on_request_head(self, str method, str target, bint http10, list fields)
    cpdef on_response_head(self, int status, bint http10, bytes block, content_length, transfer_encoding,
                           bint keep_alive)
    cpdef on_body(self, body)
    cpdef on_message_complete(self, bint keep_alive)
    cpdef on_h2_headers(self, int stream_id, list fields, bint end_stream)
    cpdef on_h2_headers_too_large(self, int stream_id)
    cpdef on_h2_data(self, int stream_id, bytes data, bint end_stream)
    cpdef on_h2_stream_close(self, int stream_id, unsigned int error_code)
    cpdef on_h2_ping_ack(self)
    cpdef on_h2_goaway(self, int last_stream_id, unsigned int error_code)


cdef class ProtocolCallbacks(CodecCallbacks):
    cdef object protocol

