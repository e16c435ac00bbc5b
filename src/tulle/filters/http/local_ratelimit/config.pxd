# C-level declarations for config.py (Cython pure-Python mode; see tulle/compiled.py).
# The connection manager calls create_filter once per request stream.

cdef class LocalRateLimitFactory:
    cdef public object settings
    cdef public bint encodes
    cdef public str config_name
    cpdef create_filter(self, stream)
