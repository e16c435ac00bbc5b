# C-level declarations for store.py (Cython pure-Python mode; see tulle/compiled.py).
# Compiled callers bump ``.value`` as a C field; Python code (admin, snapshots, tests) reads and
# writes the same fields as ordinary attributes. A Python subclass may override ``value`` with a
# property (resource_manager's _LiveGauge): only Python-level access (snapshot) sees it, so the store
# reads stats untyped.

from cpython.mem cimport PyMem_Free, PyMem_Malloc


cdef class Counter:
    cdef public object name
    cdef public long long value
    cpdef inc(self, long long amount=*)


cdef class Gauge:
    cdef public object name
    # a Python int, not a C one: some gauges are Envoy's uint64 hashes (xDS `version`)
    cdef public object value
    cdef public bint per_worker
    cpdef inc(self, amount=*)
    cpdef dec(self, amount=*)
    cpdef set(self, value)


cdef class Histogram:
    cdef public object name
    cdef public object buckets       # tuple of bounds
    cdef public list counts
    cdef public double sum
    cdef public long long count
    cdef double* _bounds
    cdef Py_ssize_t _nbounds
    cpdef record(self, double value)
