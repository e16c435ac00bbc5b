"""The admin listener: a small HTTP/1.1 server (httptools) in front of :class:`AdminHandlers`.

Not a hot path, so it favours robustness: requests on a connection are
answered strictly in order (pipelining works), keep-alive follows HTTP/1.x
rules, malformed input gets a 400 and the connection is closed, oversized
headers/bodies get 431/413, and a failing handler yields a 500 instead of
taking the server down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus

import httptools

from tulle.admin.backend import AdminBackend
from tulle.admin.handlers import TEXT, AdminHandlers, AdminResponse

log = logging.getLogger("tulle.admin")

MAX_HEADER_BYTES = 60 * 1024  # Envoy's default max_request_headers_kb
MAX_BODY_BYTES = 1024 * 1024
MAX_PIPELINED = 32
LINGER_SECONDS = 2.0


class _Request:
    __slots__ = ("method", "target", "keep_alive", "head_only")

    def __init__(self, method: str, target: str, keep_alive: bool) -> None:
        self.method = method
        self.target = target
        self.keep_alive = keep_alive
        self.head_only = method == "HEAD"


class _AdminConnection(asyncio.Protocol):
    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = bytearray()
        self.header_bytes = 0
        self.body_bytes = 0
        self.expect_continue = False
        self.queue: asyncio.Queue[_Request] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None
        self.paused = False
        self.closing = False
        self.busy = False
        # the answer to a request that could not be parsed, sent after the queued ones
        self.failure: AdminResponse | None = None
        self.rejection: tuple[int, str] | None = None

    # --- asyncio.Protocol ----------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.server.connections.add(self)
        self.worker = asyncio.get_running_loop().create_task(self._serve())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.server.connections.discard(self)
        if self.worker is not None:
            self.worker.cancel()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "upgrade is not supported by the admin interface\n")
        except (httptools.HttpParserError, _Reject):
            # httptools re-raises a callback's exception wrapped, so the reason is kept aside.
            if self.rejection is not None:
                self._fail(*self.rejection)
            else:
                self._fail(400, "malformed HTTP request\n")

    # --- httptools callbacks -------------------------------------------
    def on_message_begin(self) -> None:
        self.url.clear()
        self.header_bytes = 0
        self.body_bytes = 0
        self.expect_continue = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_header(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header(len(name) + len(value))
        if name.lower() == b"expect" and value.lower() == b"100-continue":
            self.expect_continue = True

    def on_headers_complete(self) -> None:
        # Only when idle: an interim response must not overtake earlier pipelined answers.
        if self.expect_continue and not self.busy and self.queue.empty() and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        # Admin requests carry their arguments in the query; bodies are read and dropped.
        self.body_bytes += len(body)
        if self.body_bytes > MAX_BODY_BYTES:
            self._reject(413, "request body too large\n")

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode("ascii", "replace")
        target = self.url.decode("latin-1")
        self.queue.put_nowait(_Request(method, target, self.parser.should_keep_alive()))
        if self.queue.qsize() >= MAX_PIPELINED and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    # --- serving ---------------------------------------------------------
    def _count_header(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > MAX_HEADER_BYTES:
            self._reject(431, "request headers too large\n")

    def _reject(self, status: int, body: str) -> None:
        self.rejection = (status, body)
        raise _Reject(body)

    def _fail(self, status: int, body: str) -> None:
        """Answer a request that could not be parsed, after those already queued, then close."""
        self.closing = True
        self.failure = AdminResponse(status, body)
        self.queue.put_nowait(_Request("", "", False))
        if self.transport is not None:
            self.transport.pause_reading()

    async def _serve(self) -> None:
        while True:
            request = await self.queue.get()
            if self.paused and self.queue.qsize() < MAX_PIPELINED // 2 and self.transport is not None:
                self.paused = False
                self.transport.resume_reading()
            if not request.method and self.failure is not None:
                self._write(self.failure, False, False)
                self._linger_close()
                return
            self.busy = True
            response = await self._respond(request)
            self.busy = False
            self._write(response, request.keep_alive, request.head_only)
            if response.after_send is not None:
                self.server.run_after_send(response.after_send)
            if not request.keep_alive:
                self._close()
                return

    async def _respond(self, request: _Request) -> AdminResponse:
        try:
            return await self.server.handlers.handle(request.method, request.target)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("admin handler for %s %s failed", request.method, request.target)
            return AdminResponse(500, f"internal error: {type(exc).__name__}: {exc}\n")

    def _write(self, response: AdminResponse, keep_alive: bool, head_only: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        body = response.body.encode("utf-8")
        reason = _reason(response.status)
        head = (
            f"HTTP/1.1 {response.status} {reason}\r\n"
            f"content-type: {response.content_type or TEXT}\r\n"
            f"content-length: {len(body)}\r\n"
            "cache-control: no-cache, max-age=0\r\n"
            "x-content-type-options: nosniff\r\n"
            f"date: {formatdate(usegmt=True)}\r\n"
            "server: tulle\r\n"
            + ("" if keep_alive else "connection: close\r\n")
            + "\r\n"
        ).encode("latin-1")
        self.transport.write(head if head_only else head + body)

    def _linger_close(self) -> None:
        """Half-close and keep discarding input for a while: closing a socket with unread
        data sends a reset, which can destroy the error response before the client reads it."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        transport.resume_reading()
        asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
        if self.transport is not None:
            self.transport.abort()


class _Reject(Exception):
    """Stops the parser from inside a callback; the response is in ``rejection``."""


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class AdminServer:
    """``await start()`` binds ``host:port`` (port 0 picks one: read ``.port``); ``await close()``."""

    def __init__(self, backend: AdminBackend, host: str, port: int) -> None:
        self.handlers = AdminHandlers(backend)
        self.host = host
        self.port = port
        self.connections: set[_AdminConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._background: set[asyncio.Task[None]] = set()

    async def start(self, sock: socket.socket | None = None) -> None:
        """Serve on ``sock`` when given (bound and listening already), else bind ``host:port``."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(lambda: _AdminConnection(self), sock=sock)
        else:
            self._server = await loop.create_server(lambda: _AdminConnection(self), self.host, self.port)
        sockets = self._server.sockets or ()
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("admin address: %s:%d", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    def run_after_send(self, action: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            # Let the transport flush the response before acting (e.g. shutting down).
            await asyncio.sleep(0)
            try:
                await action()
            except Exception:
                log.exception("admin post-response action failed")

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
