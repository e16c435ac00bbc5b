# C-level declarations for codec_callbacks.py (Cython pure-Python mode; see tulle/compiled.py).
# The llhttp binding (http1_parser.pyx) calls these cpdef methods at C level on a connection that
# derives from ParserCallbacks; a Python subclass's overrides are honoured. ProtocolCallbacks wraps any
# other protocol object for the binding.

cdef class ParserCallbacks:
    cpdef on_request_head(self, str method, str target, bint http10, list fields)
    cpdef on_response_head(self, int status, bint http10, bytes block, content_length, transfer_encoding,
                           bint keep_alive)
    cpdef on_body(self, body)
    cpdef on_message_complete(self, bint keep_alive)


cdef class ProtocolCallbacks(ParserCallbacks):
    cdef object protocol
