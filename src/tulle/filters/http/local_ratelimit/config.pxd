# C-level declarations for config.py (Cython pure-Python mode; see tulle/compiled.py).
# The connection manager calls create_filter once per request stream; the filter reads a
# RateLimitSettings and its stats per request, as C fields.

from tulle.stats.store cimport Counter


cdef class RateLimitStats:
    cdef public Counter enabled
    cdef public Counter enforced
    cdef public Counter rate_limited
    cdef public Counter ok


cdef class RateLimitSettings:
    cdef public RateLimitStats stats
    cdef public object bucket               # TokenBucket | SharedTokenBucket | None
    cdef public long status
    cdef public object enabled              # Fraction | RuntimeFraction
    cdef public object enforced
    cdef public object response_headers     # HeaderMutation | None
    cdef public object request_headers
    cdef public bint x_ratelimit_headers


cdef class LocalRateLimitFactory:
    cdef public object settings
    cdef public bint encodes
    cdef public str config_name
    cpdef create_filter(self, stream)
