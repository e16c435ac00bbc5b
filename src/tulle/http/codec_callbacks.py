"""What an HTTP/1 parser calls back: the interface between the codec and the connection it feeds.

The downstream connection (``HttpConnection``, requests) and the upstream one
(``Http1ClientConnection``, responses) derive from ``ParserCallbacks``, so the compiled llhttp
binding calls them at C level. Any other object with these methods works too: the binding wraps it
in ``ProtocolCallbacks`` (the pure parser calls whatever it is given).
"""

from __future__ import annotations

from typing import Any

import cython


class ParserCallbacks:
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


class ProtocolCallbacks(ParserCallbacks):
    """Any object with the four methods, as ParserCallbacks: each call forwarded through Python."""

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
