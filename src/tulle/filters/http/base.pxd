# C-level declarations for base.py (Cython pure-Python mode; see tulle/compiled.py).
# Built-in filters are cdef subclasses, so the connection manager calls them at C level; a filter
# written in Python subclasses HttpFilter as usual and its overrides are honoured (cpdef).


cdef class HttpFilter:
    cdef public object stream
    cpdef int decode_headers(self, headers, bint end_stream) except? -1
    cpdef int decode_data(self, data, bint end_stream) except? -1
    cpdef int decode_trailers(self, trailers) except? -1
    cpdef int encode_headers(self, headers, bint end_stream) except? -1
    cpdef int encode_data(self, data, bint end_stream) except? -1
    cpdef int encode_trailers(self, trailers) except? -1
    cpdef on_destroy(self)
