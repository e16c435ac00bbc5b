# C-level declarations for matchers.py (Cython pure-Python mode; see tulle/compiled.py).
# The path helpers run on every request (RouteTable.find); the compiled predicates (closures
# made by compile_*_matcher) run for routes with header or query matchers.

cdef str _ASCII_SPACE

cpdef str wire(str text)
cpdef bytes to_bytes(str value)
cpdef str ascii_lower(str text)
cpdef simple_atoi(str text, low, high)

@cython.locals(query=Py_ssize_t, end=Py_ssize_t, fragment=Py_ssize_t)
cpdef str remove_query_and_fragment(str path)

@cython.locals(start=Py_ssize_t, params=dict)
cpdef dict parse_query(str path)


cdef class Regex:
    cdef public str pattern
    cdef public object groups
    cdef public object _compiled
    cpdef bint full_match(self, str value)
    cpdef str replace_all(self, str value, tuple substitution)


cdef class RegexRewrite:
    cdef public Regex regex
    cdef public tuple substitution
    cpdef str apply(self, str value)
