"""What a codec calls back: the interface between a codec and the connection it feeds.

The HTTP/1 parser (llhttp) calls ``on_request_head``/``on_response_head``, ``on_body`` and
``on_message_complete``; an HTTP/2 session (libnghttp2) calls the ``on_h2_*`` methods. One base
class for both because, compiled, the connections are cdef classes (single inheritance): the
downstream connections (``HttpConnection``, ``Http2Connection``) and the upstream ones
(``Http1ClientConnection``) derive from ``CodecCallbacks``, so the compiled bindings call them at
C level. Any other object with the HTTP/1 methods works with the HTTP/1 parser too: the binding
wraps it in ``ProtocolCallbacks`` (the pure parser calls whatever it is given).
"""

from __future__ import annotations

from typing import Any

import cython


class CodecCallbacks:
    if not cython.compiled:
        __slots__ = ()

    def on_request_head(self, method: str, target: str, http10: bool, fields: list[tuple[str, str]]) -> None:
        """A complete request head (a request parser's connection implements it)."""
        raise NotImplementedError

    def on_response_head(self, status: int, http10: bool, block: bytes, content_length: str | None,
                         transfer_encoding: str | None, keep_alive: bool) -> None:
        """A complete response head (a response parser's connection implements it)."""
        raise NotImplementedError

    def on_body(self, body: bytes) -> None:
        raise NotImplementedError

    def on_message_complete(self, keep_alive: bool) -> None:
        raise NotImplementedError

    # --- an HTTP/2 session's (tulle.http.http2_codec); stream ids are the peer's or ours
    def on_h2_headers(self, stream_id: int, fields: list[tuple[str, str]], end_stream: bool) -> None:
        """A complete header block (request or response headers, or trailers), validated by nghttp2."""
        raise NotImplementedError

    def on_h2_headers_too_large(self, stream_id: int) -> None:
        """A header block over the size or count limit: the session resets the stream."""
        raise NotImplementedError

    def on_h2_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        """A DATA chunk, or (``data`` empty, ``end_stream``) the end of the stream's DATA."""
        raise NotImplementedError

    def on_h2_stream_close(self, stream_id: int, error_code: int) -> None:
        """The stream is closed both ways (``error_code`` 0) or was reset."""
        raise NotImplementedError

    def on_h2_ping_ack(self) -> None:
        """The peer answered one of our PINGs (connection keepalive)."""
        raise NotImplementedError

    def on_h2_goaway(self, last_stream_id: int, error_code: int) -> None:
        """The peer sent GOAWAY: streams above ``last_stream_id`` were not processed."""
        raise NotImplementedError


class ProtocolCallbacks(CodecCallbacks):
    """Any object with the four methods, as CodecCallbacks: each call forwarded through Python."""

    if not cython.compiled:
        __slots__ = ("protocol",)

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol

    def on_request_head(self, method: str, target: str, http10: bool, fields: list[tuple[str, str]]) -> None:
        self.protocol.on_request_head(method, target, http10, fields)

    def on_response_head(self, status: int, http10: bool, block: bytes, content_length: str | None,
                         transfer_encoding: str | None, keep_alive: bool) -> None:
        self.protocol.on_response_head(status, http10, block, content_length, transfer_encoding, keep_alive)

    def on_body(self, body: bytes) -> None:
        self.protocol.on_body(body)

    def on_message_complete(self, keep_alive: bool) -> None:
        self.protocol.on_message_complete(keep_alive)

