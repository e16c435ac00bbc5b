# C-level declarations for request_encoder.py (Cython pure-Python mode; see tulle/compiled.py).
# The router's UpstreamRequest is a cdef UpstreamCallbacks, so a codec calls it at C level; a
# shadow request or a test recorder is a Python subclass (its overrides are honoured). The codecs'
# encoders (Http1ClientConnection, Http2ClientStream) derive from RequestEncoder, so the router
# calls them at C level.

from tulle.http.codec_callbacks cimport CodecCallbacks


cdef class UpstreamCallbacks:
    cpdef on_upstream_headers(self, int status, headers, bint end_stream)
    cpdef on_upstream_data(self, data, bint end_stream)
    cpdef on_upstream_trailers(self, trailers)
    cpdef on_upstream_reset(self, str flag, str reason)
    cpdef on_upstream_pause_writing(self)
    cpdef on_upstream_resume_writing(self)
    cpdef on_upstream_read_begin(self)
    cpdef on_upstream_read_end(self)


cdef class RequestEncoder(CodecCallbacks):
    cpdef encode_headers(self, UpstreamCallbacks callbacks, headers, bint end_stream)
    cpdef encode_data(self, data, bint end_stream)
    cpdef encode_trailers(self, trailers)
    cpdef pause_reading(self)
    cpdef resume_reading(self)
    cpdef abort(self, str reason=*)
