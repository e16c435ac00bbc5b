# C-level declarations for http1.py (Cython pure-Python mode; see tulle/compiled.py).

from tulle.http.headers cimport HeaderMap

cdef dict _STATUS_LINES
cdef list _date_cache
cdef tuple _ALWAYS_STRIPPED
cdef dict _strip_cache

cpdef bytes status_line(long code)
cpdef str http_date()

@cython.locals(name=str, value=str, lines=list)
cpdef bytes encode_request_head(HeaderMap headers, bytes body_framing)

cdef object _strip_pattern(tuple overwritten)

@cython.locals(name=str, value=str, lines=list, sets=dict)
cpdef bytes encode_response_head(long status, HeaderMap headers, bytes body_framing, bint close)

cpdef bytes content_length_line(long long length)
cpdef bytes chunk(data)
