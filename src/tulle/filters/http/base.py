"""The HTTP filter interface (Envoy's StreamDecoderFilter / StreamEncoderFilter).

A filter factory (``config.py`` of each filter) validates its proto once and
creates a fresh filter object per request stream. Decoder callbacks run in
chain order on the request; encoder callbacks run in reverse order on the
response. Returning ``STOP`` halts the chain until the filter calls
``stream.continue_decoding()`` (e.g. after a delay). The router is always
last and always stops: it owns the request from there on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import cython

if TYPE_CHECKING:
    from tulle.filters.network.http_connection_manager.connection_manager import ActiveStream
    from tulle.http.headers import HeaderMap

CONTINUE = 0
STOP = 1


class HttpFilter:
    """Base with pass-through defaults; filters override what they need."""

    if not cython.compiled:
        __slots__ = ("stream",)

    def __init__(self, stream: ActiveStream) -> None:
        self.stream = stream

    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        return CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        return CONTINUE

    def decode_trailers(self, trailers: HeaderMap) -> int:
        """The request's trailers: they end the request (after the last ``decode_data``)."""
        return CONTINUE

    def encode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        return CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> int:
        return CONTINUE

    def encode_trailers(self, trailers: HeaderMap) -> int:
        """The response's trailers: they end the response (gRPC's status travels in them)."""
        return CONTINUE

    def on_destroy(self) -> None:
        """The stream is over (complete or reset): release timers and upstream resources."""


class HttpFilterFactory(Protocol):
    name: str
    # True when encode_* must be called on this filter (saves calls on the hot path otherwise)
    encodes: bool
    # True when create_filter may return None: the filter has nothing to do for that request and
    # is left out of its chain (e.g. a fault filter that can only act through per-route config)
    skippable: bool

    def create_filter(self, stream: ActiveStream) -> HttpFilter | None: ...
