# C-level declarations for filter.py (Cython pure-Python mode; see tulle/compiled.py).
# A cdef subclass of HttpFilter: the connection manager calls decode_headers at C level, and when
# the bucket has a token the request costs no Python-level call here.

from tulle.filters.http.base cimport HttpFilter
from tulle.filters.http.local_ratelimit.config cimport RateLimitSettings, RateLimitStats
from tulle.filters.network.local_ratelimit.filter cimport TokenBucket
from tulle.runtime.entry cimport Fraction


cdef class LocalRateLimitFilter(HttpFilter):
    cdef public object factory
    cdef public object headers_bucket
    cpdef settings(self)
    cpdef int decode_headers(self, headers, bint end_stream) except? -1
    cpdef int encode_headers(self, headers, bint end_stream) except? -1
