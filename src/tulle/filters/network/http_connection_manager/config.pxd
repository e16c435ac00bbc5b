# C-level declarations for config.py (Cython pure-Python mode; see tulle/compiled.py).
# HcmConfig is what the connection manager reads per request: compiled, its reads are C field
# reads. Every field is public (filters, xDS, overload actions and tests read and set them).


cdef class HcmConfig:
    cdef object __weakref__                     # OverloadState.connection_managers is a WeakSet
    cdef public object ctx                      # FactoryContext
    cdef public object server_state
    cdef public str stat_prefix
    cdef public object stats                    # HcmStats (typed where the connection manager reads it)
    cdef public object cluster_manager
    cdef public double idle_timeout             # seconds; overload actions scale it
    cdef public Py_ssize_t max_headers_count
    cdef public bint accept_http_10
    cdef public str default_host_for_http_10
    cdef public Py_ssize_t max_request_headers_bytes
    cdef public str codec                       # "auto", "http1" or "http2" (codec_type)
    cdef public object http2_settings           # http2_options.Http2Settings (http2_protocol_options)
    cdef public tuple http2_keepalive           # connection_keepalive: (interval, timeout, jitter) seconds
    cdef public double stream_idle_timeout
    cdef public double request_timeout
    cdef public double max_stream_duration
    cdef public double request_headers_timeout
    cdef public double stream_timeout_span
    cdef public double head_timeout
    cdef public str head_timeout_kind
    cdef public str server_name
    cdef public long server_header_transformation
    cdef public bint use_remote_address
    cdef public bint skip_xff_append
    cdef public str via
    cdef public str user_agent                  # add_user_agent: the node's cluster ("" when off)
    cdef public str service_node                # add_user_agent: the node's id ("" when off)
    cdef public dict upgrade_types              # upgrade_configs: type (lower case) -> enabled by default
    cdef public bint generate_request_id
    cdef public bint preserve_external_request_id
    cdef public bint always_set_request_id_in_response
    cdef public bint merge_slashes
    cdef public tuple strip_envoy_headers
    cdef public object buffer_limit             # int; the listener sets its own
    cdef public object connections              # set[HttpConnection]
    cdef public object overload                 # OverloadState
    cdef public list filter_factories
    cdef public str strip_port
    cdef public object listener_port
    cdef public bint normalize_host
    cdef public str route_config_name
    cdef public str rds_field
    cdef public object rds_config_source
    cdef public object route_table              # RouteTable; RDS replaces it
    cdef public bint encoder_filters
    cdef public bint skippable_filters
    cdef public list access_loggers
