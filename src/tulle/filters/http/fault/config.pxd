# C-level declarations for config.py (Cython pure-Python mode; see tulle/compiled.py).
# The connection manager calls create_filter once per request stream; an idle fault filter
# (nothing to inject at this level) answers None there without a Python-level call.

cdef class FaultFactory:
    cdef public object settings
    cdef public object stats
    cdef public object buffer_limit
    cdef public object random_value
    cdef public bint skippable
    cdef public str config_name
    cpdef create_filter(self, stream)
