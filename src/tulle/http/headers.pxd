# C-level declarations for headers.py (Cython pure-Python mode; see tulle/compiled.py).

cdef object _ABSENT

cdef class HeaderMap:
    cdef public list _items
    cdef public object wire          # bytes | None
    cdef public dict wire_index
    cdef public dict wire_sets
    cdef void _decode(self)
    cpdef get(self, str name, default=*)
    cpdef list get_all(self, str name)
    cpdef add(self, str name, str value)
    cpdef set(self, str name, str value)
    cpdef set_default(self, str name, str value)
    cpdef int remove(self, str name)


cpdef HeaderMap wire_headers(list pseudo, bytes block, dict index)
