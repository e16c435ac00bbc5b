# C-level declarations for entry.py (Cython pure-Python mode; see tulle/compiled.py).
# Fraction.hit runs per request wherever a FractionalPercent gates a feature (the local rate
# limit's filter_enabled/filter_enforced). `_getrandbits` stays a plain module global: tests
# replace it.

cdef class Fraction:
    cdef public object numerator
    cdef public object denominator
    cdef public bint always
    cdef public bint never
    cpdef bint hit(self) except -1
