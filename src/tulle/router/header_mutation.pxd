# C-level declarations for header_mutation.py (Cython pure-Python mode; see tulle/compiled.py).
# apply()/apply_all() run per request for routes and virtual hosts with headers_to_add/remove.

from tulle.http.headers cimport HeaderMap


cdef class _HeaderToAdd:
    cdef public str name
    cdef public str value
    cdef public object formatter
    cdef public long action
    cdef public bint keep_empty


cdef class HeaderMutation:
    cdef public tuple removes
    cdef public tuple adds
    cpdef apply(self, HeaderMap headers, info)


@cython.locals(mutation=HeaderMutation)
cpdef apply_all(tuple mutations, HeaderMap headers, info)
