# C-level declarations for resource_manager.py (Cython pure-Python mode; see tulle/compiled.py).
# Resource.try_acquire / dec run per request (max_requests in the connection pool); the rest of
# this module is config time and stays ordinary Python objects.


cdef class Resource:
    cdef public Py_ssize_t limit
    cdef public object _cells     # list[int] (one worker) or a memoryview of the SharedSlab
    cdef public Py_ssize_t _index
    cpdef Py_ssize_t max(self)
    cpdef bint can_create(self) except -1
    cpdef bint try_acquire(self) except -1
    cpdef inc(self)
    cpdef dec(self)


cdef class SharedResource(Resource):
    cdef public object _acquire
    cdef public object _release
    cpdef bint try_acquire(self) except -1
    cpdef inc(self)
    cpdef dec(self)


cdef class RetryResource:
    cdef public Resource retries
    cdef public object budget_percent     # float | None
    cdef public Py_ssize_t min_retry_concurrency
    cdef public Resource _requests
    cdef public Resource _pending
    cpdef Py_ssize_t max(self) except? -1
    cpdef Py_ssize_t budget_max(self, Py_ssize_t active_requests) except? -1
    cpdef bint can_create(self) except -1
    cpdef inc(self)
    cpdef dec(self)


cdef class ResourceManager:
    cdef public Py_ssize_t priority
    cdef public object thresholds
    cdef public Resource connections
    cdef public Resource pending_requests
    cdef public Resource requests
    cdef public RetryResource retries
    cdef public object max_connections_per_host   # int | None
    cdef public bint shared
    cpdef bint host_allows_connection(self, host, Py_ssize_t connecting=*) except -1
