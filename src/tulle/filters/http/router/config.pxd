# C-level declarations for config.py (Cython pure-Python mode; see tulle/compiled.py).
# The router reads its factory's settings per request: a cdef class, typed in filter.pxd, makes
# those C attribute reads. ``name`` and ``encodes`` stay class attributes (read at config time).


cdef class RouterFactory:
    cdef public bint suppress_envoy_headers
    cdef public bint respect_expected_rq_timeout
    cdef public object hcm
    cdef public object stats
    cdef public object cluster_manager
    cdef public object buffer_limit
    cdef public object random
    cdef public object _store
    cdef public dict _retried
    cdef public str config_name     # set by the connection manager's config (typed_per_filter_config key)
    cpdef create_filter(self, stream)
