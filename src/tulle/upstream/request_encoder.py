"""The seam between the router and an upstream codec (Envoy's RequestEncoder / ResponseDecoder).

A pool hands the router a :class:`RequestEncoder` for one request: on HTTP/1.1 the pooled
connection itself (one request at a time), on HTTP/2 one stream of a multiplexed connection.
The router writes the request through it (``encode_headers``, ``encode_data``,
``encode_trailers``) and hears the response on its :class:`UpstreamCallbacks`; framing (HTTP/1
chunking and Content-Length, HTTP/2 HEADERS and DATA frames and flow control) is the codec's
business, so the router, retries and shadows are the same for both protocols.

Both are cdef classes when compiled, so that the router and the codecs call each other at C level.
``RequestEncoder`` derives from ``CodecCallbacks`` only because a cdef class has a single base and
the HTTP/1 connection is both a parser's callbacks and an encoder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import cython

from tulle.http.codec_callbacks import CodecCallbacks

if TYPE_CHECKING:
    from tulle.http.headers import HeaderMap


# Envoy's reset reason for a stream an HTTP/2 upstream refused (RST_STREAM REFUSED_STREAM, or above a
# GOAWAY's last stream): retriable under ``retry_on: refused-stream``
REMOTE_REFUSED = "remote refused stream reset"


class UpstreamCallbacks:
    """What an encoder reports its response to: the base of the router's upstream request and of
    a shadow request, which override every method. A base class rather than a Protocol so that,
    compiled, the codec calls the router's at C level."""

    if not cython.compiled:
        __slots__ = ()

    def on_upstream_headers(self, status: int, headers: HeaderMap, end_stream: bool) -> None:
        raise NotImplementedError

    def on_upstream_data(self, data: bytes, end_stream: bool) -> None:
        raise NotImplementedError

    def on_upstream_trailers(self, trailers: HeaderMap) -> None:
        """The response's trailers: they end it (HTTP/2 only; an HTTP/1 codec drops them)."""
        self.on_upstream_data(b"", True)

    def on_upstream_reset(self, flag: str, reason: str) -> None:
        raise NotImplementedError

    def on_upstream_pause_writing(self) -> None:
        """The upstream reads the request body slower than it is sent."""

    def on_upstream_resume_writing(self) -> None:
        """The upstream caught up."""

    def on_upstream_read_begin(self) -> None:
        """Before the codec delivers what one read brought (cork the downstream)."""

    def on_upstream_read_end(self) -> None:
        """After it (uncork)."""


class RequestEncoder(CodecCallbacks):
    """One request's way upstream, given by a pool's ``acquire`` (or ``on_pool_ready``)."""

    if not cython.compiled:
        __slots__ = ()

    def encode_headers(self, callbacks: UpstreamCallbacks, headers: HeaderMap, end_stream: bool) -> None:
        """Start the request; its response goes to ``callbacks``."""
        raise NotImplementedError

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        raise NotImplementedError

    def encode_trailers(self, trailers: HeaderMap) -> None:
        """End the request with trailers (an HTTP/1 codec ends the body and drops them, as Envoy's
        does unless ``enable_trailers``)."""
        self.encode_data(b"", True)

    def pause_reading(self) -> None:
        """Stop delivering the response (the client reads slower than the upstream sends)."""

    def resume_reading(self) -> None:
        """Deliver it again."""

    def abort(self, reason: str = "local reset") -> None:
        """Give the request up: its callbacks hear nothing more (HTTP/1 drops the connection,
        HTTP/2 resets the stream)."""
        raise NotImplementedError
