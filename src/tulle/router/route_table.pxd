# C-level declarations for route_table.py (Cython pure-Python mode; see tulle/compiled.py).
# Per request: RouteTable.find (virtual host by domain, then the first matching route), and the
# Route fields and methods the connection manager and router filter read. `_getrandbits` stays a
# plain module global: tests replace it.

from tulle.http.headers cimport HeaderMap
from tulle.router.header_mutation cimport HeaderMutation, apply_all
from tulle.router.matchers cimport ascii_lower, remove_query_and_fragment, parse_query, simple_atoi

cdef dict _NO_QUERY

@cython.locals(colon=Py_ssize_t, bracket=Py_ssize_t)
cpdef Py_ssize_t port_start(str host) except? -2

@cython.locals(colon=Py_ssize_t)
cpdef str strip_host_port(str host, str mode, listener_port)


cdef class WeightedClusterEntry:
    cdef public str name
    cdef public str cluster_header
    cdef public object weight
    cdef public HeaderMutation request_mutation
    cdef public HeaderMutation response_mutation
    cdef public str host_rewrite
    cpdef cluster_name(self, HeaderMap headers)


cdef class Route:
    cdef public str name
    cdef public str virtual_host_name
    cdef public str kind
    cdef public bint is_redirect
    cdef public tuple direct_response
    cdef public long cluster_not_found_response_code
    cdef public object timeout                  # float | None
    cdef public str timeout_header_value
    cdef public object max_grpc_timeout         # float | None
    cdef public double grpc_timeout_offset
    cdef public dict upgrade_overrides          # upgrade type -> enabled here; None: the HCM's defaults
    cdef public bint auto_host_rewrite
    cdef public object hash_policy
    cdef public bint needs_query
    cdef public str plain_prefix
    cdef public object _path_matches
    cdef public tuple _header_matchers
    cdef public tuple _query_matchers
    cdef public object _matched_prefix_length   # int | None
    cdef public str _cluster
    cdef public str _cluster_header
    cdef public tuple _weighted
    cdef public object _total_weight
    cdef public str _random_value_header
    cdef public dict _weighted_by_name
    cdef public str _prefix_rewrite
    cdef public object _regex_rewrite
    cdef public str _host_rewrite
    cdef public str _host_rewrite_header
    cdef public object _host_rewrite_path_regex
    cdef public object _redirect
    cdef public tuple _request_mutations
    cdef public tuple _response_mutations
    cdef public dict _filter_configs
    cdef public tuple mirror_policies
    cdef public object retry_policy
    cdef public object stream_timeouts
    cdef public bint include_request_attempt_count
    cdef public bint include_attempt_count_in_response
    cdef public object retry_buffer_limit       # int | None
    cdef public bint needs_attempts
    cdef public long priority
    cdef public object runtime_fraction
    cdef public object attempt_defaults         # owned by the router filter
    cdef public double fast_per_try
    cdef public str expected_rq_timeout_value

    cpdef per_filter_config(self, str filter_name)
    cpdef bint matches(self, str path, HeaderMap headers, dict query) except -1
    cpdef bint matches_beyond_path(self, HeaderMap headers, dict query) except -1
    cpdef request_timeout(self, HeaderMap headers)
    cpdef bint upgrade_allowed(self, str upgrade_type, bint default) except -1
    cpdef tuple select_cluster(self, HeaderMap headers, random_value)
    cpdef cluster_name(self, HeaderMap headers, random_value)
    cdef WeightedClusterEntry _pick_weighted(self, HeaderMap headers, random_value)
    cpdef hash_key(self, HeaderMap headers, remote_ip)
    cdef WeightedClusterEntry _weighted_entry(self, cluster_name, WeightedClusterEntry weighted_entry)
    cpdef finalize_request_headers(self, HeaderMap headers, info, cluster_name, WeightedClusterEntry weighted_entry,
                                   bint insert_envoy_original_path)
    cpdef finalize_response_headers(self, HeaderMap headers, info, cluster_name, WeightedClusterEntry weighted_entry)
    cpdef str _rewritten_path(self, str path, str prefix_rewrite, regex_rewrite)


cdef class VirtualHost:
    cdef public str name
    cdef public tuple routes
    cdef public bint needs_query
    cdef public tuple _entries
    cpdef Route find(self, HeaderMap headers)


cdef class RuntimeFractionVirtualHost(VirtualHost):
    cpdef Route find(self, HeaderMap headers)


cdef class RouteTable:
    cdef public str name
    cdef public tuple virtual_hosts
    cdef public object validate_clusters        # bool | None
    cdef public str strip_port
    cdef public object listener_port            # int | None
    cdef public dict _exact
    cdef public tuple _suffixes
    cdef public tuple _prefixes
    cdef public VirtualHost _default
    cdef public bint _only_default
    cdef public bint _ignore_port

    cpdef normalize_host(self, HeaderMap headers)
    cpdef VirtualHost select_virtual_host(self, HeaderMap headers)
    cpdef Route find(self, HeaderMap headers)
