# C-level declarations for load_balancer.py (Cython pure-Python mode; see tulle/compiled.py).
# Per request: LoadBalancer.choose_host (a table lookup, the panic counter, then the source's
# picker). Everything else runs when membership or health changes.

from tulle.upstream.host cimport Host

cdef object _MASK64


cdef class LoadBalancerContext:
    cdef public object hash_key


cdef class _HostSource:
    cdef public object pick
    cdef public bint panic
    cdef public list hosts


cdef class LoadBalancer:
    cdef public object settings
    cdef public object stats
    cdef public object rng
    cdef public object loads
    cdef public list _table
    cdef public _HostSource _direct
    cdef public object _panic_counter
    cpdef choose_host(self, context=*)


cdef class RoundRobinLoadBalancer(LoadBalancer):
    pass


cdef class LeastRequestLoadBalancer(LoadBalancer):
    pass


cdef class RandomLoadBalancer(LoadBalancer):
    pass


cdef class _HashingLoadBalancer(LoadBalancer):
    cpdef choose_host(self, context=*)


cdef class RingHashLoadBalancer(_HashingLoadBalancer):
    pass


cdef class MaglevLoadBalancer(_HashingLoadBalancer):
    pass


cdef class _EdfScheduler:
    cdef public list _heap
    cdef public Py_ssize_t _order
    cdef public object _weight_of
    cpdef pick(self)
