# C-level declarations for hash_policy.py (Cython pure-Python mode; see tulle/compiled.py).
# hash_key runs per request on routes with a hash_policy (RING_HASH / MAGLEV clusters); the
# methods it calls are compiled closures.

cdef class HashPolicy:
    cdef public tuple _methods
    cpdef hash_key(self, headers, remote_ip)
