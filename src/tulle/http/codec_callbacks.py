"""What an HTTP/1 parser calls back: the interface between the codec and the connection it feeds.

The downstream connection (``HttpConnection``, requests) and the upstream one
(``Http1ClientConnection``, responses) derive from ``ParserCallbacks``, so the compiled llhttp
binding calls them at C level; any other object with these methods works too (through Python),
as the pure parser and the parser's own tests use it.
"""

from __future__ import annotations


class ParserCallbacks:
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
