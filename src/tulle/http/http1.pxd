# C-level declarations for http1.py (Cython pure-Python mode; see tulle/compiled.py).

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memcpy

from tulle.http.headers cimport HeaderMap

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object text)
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL

cdef dict _STATUS_LINES
cdef list _date_cache
cdef tuple _ALWAYS_STRIPPED
cdef dict _strip_cache

cpdef bytes status_line(long code)
cpdef str http_date()

@cython.locals(name=str, value=str, lines=list)
cpdef bytes encode_request_head(HeaderMap headers, bytes body_framing)

cdef const char* _ascii(str text, Py_ssize_t* size) except? NULL
cdef Py_ssize_t _put(char* out, Py_ssize_t pos, const char* data, Py_ssize_t n) noexcept
cdef Py_ssize_t _put_text(char* out, Py_ssize_t pos, str text) except -1
cdef Py_ssize_t _put_bytes(char* out, Py_ssize_t pos, bytes data) noexcept
cdef bint _name_is(const char* name, Py_ssize_t length, const char* lower, Py_ssize_t lower_length) noexcept
cdef bint _is_hop_by_hop(const char* name, Py_ssize_t length) noexcept
@cython.locals(item=tuple, name=str, value=str, method=str, path=str, authority=str)
cdef object _encode_request_head_ascii(list items, bytes body_framing)

cdef object _strip_pattern(tuple overwritten)

@cython.locals(name=str, value=str, lines=list, sets=dict)
cpdef bytes encode_response_head(long status, HeaderMap headers, bytes body_framing, bint close)

cdef bint _overwritten(const char* name, Py_ssize_t length, dict sets) except -1
cdef object _encode_wire_response_head(bytes line, bytes wire, dict sets, bytes body_framing, bytes tail)

cpdef bytes content_length_line(length)
cpdef content_length_framing(value)
cdef object _content_length_framing(str value)
cpdef bytes chunk(data)
