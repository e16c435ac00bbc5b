"""HTTP/1.1 request and response head parsing on llhttp: the pure-Python peer of http1_parser.pyx.

The compiled build (http1_parser.pyx, which calls the vendored llhttp directly from C) is what
Tulle loads; this module, on httptools' Python callbacks, runs with ``TULLE_PURE_PYTHON=1`` and is
the readable statement of the contract both implement:

- ``RequestParser(protocol, max_head_bytes, max_headers)``: ``feed_data(data)`` calls
  ``protocol.on_request_head(method, target, http10, headers)`` once per request head (names
  lower-cased, values as llhttp trims them, both latin-1 ``str``, in order, repeats kept),
  ``protocol.on_body(data)`` per body piece and ``protocol.on_message_complete(keep_alive)``.
  ``in_head`` is true when a head began and was not complete at the end of the last data fed.
- ``ResponseParser(protocol, max_head_bytes)``: the same with
  ``protocol.on_response_head(status, http10, block, content_length, transfer_encoding,
  keep_alive)``; ``block`` is the header lines exactly as received, each preceded by CRLF, without
  the final CRLF (what ``HeaderMap.from_wire`` takes). ``expect_no_body()`` before a response to
  HEAD makes the next final response end with its head. 1xx interim responses are reported too.
- Errors: ``ParserError`` (``status`` 400 for input that is not HTTP/1.1, 431 for a head over
  ``max_head_bytes`` or with more than ``max_headers`` headers, 501 for a request transfer coding
  other than exactly "chunked"; ``details`` is Envoy's response code details); ``ParserUpgrade``
  (``offset``: llhttp stopped after an Upgrade/CONNECT message, the bytes of the last data fed from
  there on are not HTTP). An exception raised by a protocol callback leaves ``feed_data`` as
  itself; after any error but ``ParserUpgrade`` the parser refuses further input.

The request head limit counts as Envoy's ``max_request_headers_kb`` did in the connection manager:
the URL and every header name and value at the end of the head, and, while a head is incomplete
after a read, the bytes of the reads it spans. A response head (status line to its final CRLF)
over ``max_head_bytes`` is refused. llhttp (9.x, strict) refuses obs-folds and bare-LF line ends,
so the response block is always CRLF-delimited header lines.
"""

from __future__ import annotations

from typing import Any

import httptools


class ParserError(Exception):
    """The input is not HTTP/1.1 (400), or its head is over a limit (431), or its transfer coding is
    not exactly chunked (501). ``details`` is Envoy's response code details for the reply."""

    def __init__(self, message: str = "", status: int = 400, details: str = "http1.codec_error") -> None:
        super().__init__(message)
        self.status = status
        self.details = details


class ParserUpgrade(Exception):
    """llhttp stopped at an Upgrade/CONNECT: bytes from ``offset`` of the last data fed are not HTTP."""

    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


def _headers_too_large(what: str) -> ParserError:
    return ParserError(f"{what} headers too large", 431, "http1.headers_too_large")


class _Forwarding:
    """What both parsers do with httptools' body and end callbacks: forward them to the protocol, and
    remember an exception the protocol raised so that feed_data re-raises it as itself."""

    __slots__ = ()

    def on_body(self, body: bytes) -> None:
        try:
            self.protocol.on_body(body)
        except BaseException as exc:
            self.error = exc
            raise

    def _message_complete(self) -> None:
        try:
            self.protocol.on_message_complete(self.parser.should_keep_alive())
        except BaseException as exc:
            self.error = exc
            raise


class RequestParser(_Forwarding):
    """Parses requests for ``protocol`` (see the module docstring)."""

    __slots__ = ("protocol", "max_head_bytes", "max_headers", "in_head", "parser", "url", "raw",
                 "head_bytes", "error", "failed")

    def __init__(self, protocol: Any, max_head_bytes: int, max_headers: int) -> None:
        self.protocol = protocol
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.in_head = False
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.raw: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0  # bytes of the reads that ended inside the current head
        self.error: BaseException | None = None  # raised in a callback, re-raised by feed_data
        self.failed = False

    def feed_data(self, data: bytes) -> None:
        if self.failed:
            raise ParserError("the parser failed on earlier input")
        try:
            self.parser.feed_data(data)
            if self.in_head:
                self.head_bytes += len(data)
                if self.head_bytes > self.max_head_bytes:
                    raise _headers_too_large("request")
        except httptools.HttpParserUpgrade as exc:
            raise ParserUpgrade(exc.args[0]) from None
        except httptools.HttpParserError as exc:
            self.failed = True
            error, self.error = self.error, None
            if error is not None:
                raise error from None
            raise ParserError(str(exc)) from None
        except BaseException:
            self.failed = True
            raise

    # --- httptools callbacks -------------------------------------------
    def on_message_begin(self) -> None:
        self.url = b""
        self.raw = []
        self.head_bytes = 0
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_head:  # not the trailers of a chunked body
            self.raw.append((name, value))

    def on_headers_complete(self) -> None:
        try:
            self.in_head = False
            raw = self.raw
            if len(raw) > self.max_headers:
                raise ParserError("too many request headers", 431, "http1.too_many_headers")
            if sum(len(name) + len(value) for name, value in raw) + len(self.url) > self.max_head_bytes:
                raise _headers_too_large("request")
            headers = []
            for name, value in raw:
                lower = name.decode("latin-1").lower()
                if lower == "transfer-encoding" and value.rstrip(b" \t").lower() != b"chunked":
                    # Envoy's codec answers 501 to any transfer coding but exactly "chunked"
                    raise ParserError("unsupported transfer coding", 501, "http1.invalid_transfer_encoding")
                headers.append((lower, value.decode("latin-1")))
            parser = self.parser
            self.protocol.on_request_head(parser.get_method().decode("latin-1"), self.url.decode("latin-1"),
                                          parser.get_http_version() != "1.1", headers)
        except BaseException as exc:
            self.error = exc
            raise

    def on_message_complete(self) -> None:
        self._message_complete()


# ResponseParser phases: where the next byte fed belongs
_HEAD, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)


class ResponseParser(_Forwarding):
    """Parses responses for ``protocol`` (see the module docstring).

    httptools reports no positions, so this finds them itself to cut each head out of the stream:
    the head ends at the first CRLFCRLF (llhttp accepts no other end), a body of known length ends
    that many bytes later, and a chunked body can only end right after a CRLFCRLF, so the data of
    a chunked body is fed in pieces cut there and the end seen after the piece that completed it.
    """

    __slots__ = ("protocol", "max_head_bytes", "parser", "no_body", "head", "phase", "remaining",
                 "tail", "raw", "head_done", "completed", "error", "failed", "skipped", "head_keep_alive",
                 "closed")

    def __init__(self, protocol: Any, max_head_bytes: int) -> None:
        self.protocol = protocol
        self.max_head_bytes = max_head_bytes
        self.parser = httptools.HttpResponseParser(self)
        self.no_body = False
        self.head = b""  # the current head's bytes so far (from its first byte)
        self.phase = _HEAD
        self.remaining = 0  # body bytes still to come (_LENGTH)
        self.tail = b""  # the last bytes of a chunked body fed (a CRLFCRLF may straddle reads)
        self.raw: list[tuple[bytes, bytes]] = []
        self.head_done = b""  # the complete head being reported
        self.completed = False
        self.skipped = False  # the head being reported ends its response (expect_no_body)
        self.head_keep_alive = False
        self.closed = False  # a response to HEAD that does not keep the connection alive ended
        self.error: BaseException | None = None
        self.failed = False

    @property
    def in_head(self) -> bool:
        return bool(self.head)

    def expect_no_body(self) -> None:
        """The next final (non-1xx) response answers HEAD: it ends with its head."""
        self.no_body = True

    def feed_data(self, data: bytes) -> None:
        if self.failed:
            raise ParserError("the parser failed on earlier input")
        try:
            self._feed(data)
        except ParserUpgrade:
            raise
        except BaseException:
            self.failed = True
            raise

    def _feed(self, data: bytes) -> None:
        pos = 0
        size = len(data)
        while pos < size:
            phase = self.phase
            if phase == _HEAD:
                if not self.head:
                    while pos < size and data[pos] in b"\r\n":
                        pos += 1  # llhttp skips line ends between messages
                    if pos == size:
                        return
                    if self.closed:
                        raise ParserError("Data after `Connection: close`")
                head = self.head + data[pos:] if self.head else data[pos:]
                end = head.find(b"\r\n\r\n")
                if end < 0:
                    self._execute(data, pos, size)
                    self.head = head
                    if len(head) > self.max_head_bytes:
                        raise _headers_too_large("response")
                    return
                stop = pos + end + 4 - len(self.head)
                self.head_done = head[:end + 4]
                self.head = b""
                self.completed = False
                self._execute(data, pos, stop)
                pos = stop
                if self.skipped and not self.completed:
                    # a response to HEAD: llhttp through httptools would wait for its body
                    self.parser = httptools.HttpResponseParser(self)
                    self.phase = _HEAD
                    self.closed = not self.head_keep_alive  # as llhttp: no message after this one
                    self.protocol.on_message_complete(self.head_keep_alive)
            elif phase == _LENGTH:
                stop = min(size, pos + self.remaining)
                self.remaining -= stop - pos
                self._execute(data, pos, stop)
                pos = stop
            elif phase == _CHUNKED:
                tail = self.tail
                scan = tail + data[pos:]
                cut = scan.find(b"\r\n\r\n")
                stop = size if cut < 0 else pos + cut + 4 - len(tail)
                self.tail = scan[-3:] if cut < 0 else b""
                self._execute(data, pos, stop)
                pos = stop
            else:
                self._execute(data, pos, size)
                return

    def _execute(self, data: bytes, start: int, stop: int) -> None:
        piece = data[start:stop] if start or stop != len(data) else data
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserUpgrade as exc:
            raise ParserUpgrade(start + exc.args[0]) from None
        except httptools.HttpParserError as exc:
            error, self.error = self.error, None
            if error is not None:
                raise error from None
            if str(exc) == "Pause on CONNECT/Upgrade":
                # a 101 without Upgrade/Connection headers: llhttp stops after it all the same,
                # but httptools reports an error and stays paused; what follows is not HTTP
                self.parser = httptools.HttpResponseParser(self)
                raise ParserUpgrade(stop) from None
            raise ParserError(str(exc)) from None

    # --- httptools callbacks -------------------------------------------
    def on_message_begin(self) -> None:
        self.raw = []

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.phase == _HEAD:  # not the trailers of a chunked body
            self.raw.append((name, value))

    def on_headers_complete(self) -> None:
        try:
            head = self.head_done
            if len(head) > self.max_head_bytes:
                raise _headers_too_large("response")
            parser = self.parser
            status = parser.get_status_code()
            content_length = transfer_encoding = None
            connection = []
            for name, value in self.raw:
                lower = name.lower()
                if lower == b"content-length":
                    if content_length is None:
                        content_length = value.rstrip(b" \t").decode("latin-1")
                elif lower == b"transfer-encoding":
                    if transfer_encoding is None:
                        transfer_encoding = value.rstrip(b" \t").decode("latin-1")
                    last_coding = value.rsplit(b",", 1)[-1].strip(b" \t").lower()
                elif lower == b"connection":
                    connection.extend(token.strip(b" \t").lower() for token in value.split(b","))
            http10 = parser.get_http_version() != "1.1"
            self.skipped = skipped = self.no_body and not 100 <= status < 200
            if skipped:
                self.no_body = False
                # llhttp's should_keep_alive for a message without a body (F_SKIPBODY)
                keep_alive = (b"keep-alive" in connection) if http10 else (b"close" not in connection)
                self.head_keep_alive = keep_alive
                self.phase = _HEAD
            else:
                keep_alive = parser.should_keep_alive()
                if 100 <= status < 200 or status in (204, 304):
                    self.phase = _HEAD
                elif transfer_encoding is not None:
                    self.phase = _CHUNKED if last_coding == b"chunked" else _UNTIL_CLOSE
                    self.tail = b""
                elif content_length is not None:
                    self.remaining = int(content_length)
                    self.phase = _LENGTH if self.remaining else _HEAD
                else:
                    self.phase = _UNTIL_CLOSE
            first = head.find(b"\r\n")
            self.protocol.on_response_head(status, http10, head[first:len(head) - 4], content_length,
                                           transfer_encoding, keep_alive)
        except BaseException as exc:
            self.error = exc
            raise

    def on_message_complete(self) -> None:
        self.completed = True
        self.phase = _HEAD
        self._message_complete()
