"""Which protocol a cluster speaks to its hosts, and which of a host's pools carries a request.

Envoy's ``envoy.extensions.upstreams.http.v3.HttpProtocolOptions`` (in the cluster's
``typed_extension_protocol_options``) or the deprecated cluster fields pick it:

- ``explicit_http_config``: HTTP/1.1 (``http_protocol_options``) or HTTP/2 (``http2_protocol_options``,
  prior-knowledge h2c until TLS lands), for every request;
- ``use_downstream_protocol_config``: the protocol the client used, among those configured (an
  HTTP/2 client is carried over HTTP/1.1 when only ``http_protocol_options`` is set, as in Envoy);
- ``auto_config`` chooses by ALPN, which needs a TLS transport socket: refused until clusters have one;
- none of them: HTTP/1.1; the deprecated ``Cluster.http2_protocol_options`` and
  ``protocol_selection: USE_DOWNSTREAM_PROTOCOL`` mean what they meant.

A host has one pool per protocol (``host.pool`` for HTTP/1.1, ``host.http2_pool``), made on first use.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from tulle.config.errors import UnsupportedFeature, join
from tulle.config.support import check_fields
from tulle.http.http2_options import Http2Settings, http2_settings, keepalive
from tulle.upstream.http2_pool import Http2ConnectionPool
from tulle.upstream.http_pool import MAX_RESPONSE_HEAD_BYTES
from tulle.upstream.http_pool import pool_for as http1_pool_for

HTTP1 = "HTTP/1.1"
HTTP2 = "HTTP/2"
DOWNSTREAM = "downstream"  # use_downstream_protocol_config with HTTP/2 allowed

# Envoy's default max_response_headers_count (max_response_headers_kb: http_pool's, shared by HTTP/1)
MAX_RESPONSE_HEADERS = 100


@dataclass(frozen=True, slots=True)
class UpstreamProtocol:
    kind: str = HTTP1
    http2_settings: Http2Settings | None = None  # when HTTP/2 may be spoken
    http2_keepalive: tuple[float, float, float] = (0.0, 0.0, 0.0)  # connection_keepalive: interval, timeout, jitter


DEFAULT = UpstreamProtocol()


def _http2(options: Any, field: str) -> tuple[Http2Settings, tuple[float, float, float]]:
    settings = http2_settings(options, field, max_header_bytes=MAX_RESPONSE_HEAD_BYTES,
                              max_headers=MAX_RESPONSE_HEADERS)
    return settings, keepalive(options, field)


def _http1(options: Any, field: str) -> None:
    check_fields(options, (), field)  # no HTTP/1.1 option changes what Tulle does yet: refused by name


def from_typed_options(options: Any, field: str) -> UpstreamProtocol:
    """From an ``HttpProtocolOptions`` (its common options are the cluster's business)."""
    if options.HasField("auto_config"):
        raise UnsupportedFeature(
            "auto_config (HTTP/2 or HTTP/1.1 chosen by ALPN needs a TLS transport socket, which Tulle "
            "clusters do not have yet; use explicit_http_config or use_downstream_protocol_config)",
            field=join(field, "auto_config"))
    if options.HasField("explicit_http_config"):
        explicit = options.explicit_http_config
        explicit_field = join(field, "explicit_http_config")
        check_fields(explicit, ("http_protocol_options", "http2_protocol_options"), explicit_field)
        if explicit.HasField("http2_protocol_options"):
            settings, ping = _http2(explicit.http2_protocol_options, join(explicit_field, "http2_protocol_options"))
            return UpstreamProtocol(HTTP2, settings, ping)
        if explicit.HasField("http_protocol_options"):
            _http1(explicit.http_protocol_options, join(explicit_field, "http_protocol_options"))
        return DEFAULT
    if options.HasField("use_downstream_protocol_config"):
        chosen = options.use_downstream_protocol_config
        chosen_field = join(field, "use_downstream_protocol_config")
        check_fields(chosen, ("http_protocol_options", "http2_protocol_options"), chosen_field)
        if chosen.HasField("http_protocol_options"):
            _http1(chosen.http_protocol_options, join(chosen_field, "http_protocol_options"))
        if chosen.HasField("http2_protocol_options"):
            settings, ping = _http2(chosen.http2_protocol_options, join(chosen_field, "http2_protocol_options"))
            return UpstreamProtocol(DOWNSTREAM, settings, ping)
        return DEFAULT
    return DEFAULT


def from_deprecated_fields(cluster: Any, field: str) -> UpstreamProtocol:
    """From ``Cluster.http2_protocol_options`` / ``protocol_selection`` (v3, deprecated)."""
    if cluster.HasField("http_protocol_options"):
        _http1(cluster.http_protocol_options, join(field, "http_protocol_options"))
    downstream = cluster.protocol_selection == 1  # USE_DOWNSTREAM_PROTOCOL
    if not cluster.HasField("http2_protocol_options"):
        return DEFAULT
    settings, ping = _http2(cluster.http2_protocol_options, join(field, "http2_protocol_options"))
    return UpstreamProtocol(DOWNSTREAM if downstream else HTTP2, settings, ping)


def pool_for(host: Any, cluster: Any, loop: asyncio.AbstractEventLoop, downstream_protocol: str = HTTP1) -> Any:
    """The host's pool for a request that came in over ``downstream_protocol``."""
    kind = cluster.upstream_protocol
    if kind == HTTP2 or (kind == DOWNSTREAM and downstream_protocol == HTTP2):
        pool = host.http2_pool
        if pool is None:
            pool = host.http2_pool = Http2ConnectionPool(cluster, host, loop)
        return pool
    return http1_pool_for(host, cluster, loop)


def host_pools(host: Any) -> list[Any]:
    """Every pool the host has made (for draining and closing)."""
    return [pool for pool in (host.pool, host.http2_pool) if pool is not None]
