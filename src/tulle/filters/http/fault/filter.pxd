# C-level declarations for filter.py (Cython pure-Python mode; see tulle/compiled.py).
# A cdef subclass of HttpFilter: the connection manager calls it at C level, and a request that
# draws no fault costs no Python-level call here. `_getrandbits` stays a plain module global
# (tests replace it).

from tulle.filters.http.base cimport HttpFilter


cdef class FaultFilter(HttpFilter):
    cdef public object factory
    cdef public object settings
    cdef public object timer
    cdef public bint fault_active
    cdef public list held
    cdef public Py_ssize_t held_bytes
    cdef public bint read_paused
    cpdef int decode_headers(self, headers, bint end_stream) except? -1
    cpdef int decode_data(self, data, bint end_stream) except? -1
    cpdef int decode_trailers(self, trailers) except? -1
    cpdef on_destroy(self)
