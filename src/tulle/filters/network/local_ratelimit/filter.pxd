# C-level declarations for filter.py (Cython pure-Python mode; see tulle/compiled.py).
# TokenBucket.consume runs per request for the HTTP local rate limit filter (and per connection
# for the network one). `_monotonic` stays a plain module global: tests replace it.

cdef class TokenBucket:
    cdef public object max_tokens
    cdef public double fill_rate
    cdef public double tokens
    cdef public double last_fill
    cdef public object empty_reset_seconds
    cdef object __weakref__
    cpdef bint consume(self) except -1
