# C-level declarations for cluster_manager.py (Cython pure-Python mode; see tulle/compiled.py).
# Per request the router looks its cluster up by name (get); the rest runs on config changes.

cdef class ClusterManager:
    cdef public dict clusters
    cdef public object _stats
    cdef public list _warming
    cdef public object _warming_gauge
    cpdef get(self, name)
