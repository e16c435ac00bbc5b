"""The HTTP/1.1 connection manager: one ``asyncio.Protocol`` per downstream connection.

llhttp parses (``tulle.http.http1_parser``: one call per request head, body piece and
request end); each request becomes an :class:`ActiveStream`
that runs the HTTP filter chain (router last). Pipelined requests are parsed
as they arrive but dispatched one at a time, answered in order, and reading is
paused while one is queued so a client cannot make us buffer without bound.

Timers are lazy: one per connection, armed for the nearest deadline (idle,
stream idle, request, route timeout) and re-evaluated when it fires, so a
request costs no timer operations in the common case.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections import deque
from typing import TYPE_CHECKING

import cython

from tulle import stream_info as flags
from tulle.filters.http.base import CONTINUE, HttpFilter
from tulle.filters.network.http_connection_manager.stats import HcmStats
from tulle.http import http1
from tulle.http.codec_callbacks import CodecCallbacks
from tulle.http.grpc import is_grpc_request, local_reply_headers
from tulle.http.headers import HeaderMap
from tulle.http.http1_parser import ParserError, ParserUpgrade, RequestParser
from tulle.http.local_reply import BY_FLAG
from tulle.overload.state import bernoulli
from tulle.stats.store import Counter
from tulle.stream_info import StreamInfo

if TYPE_CHECKING:
    from tulle.filters.network.http_connection_manager.config import HcmConfig
    from tulle.server.context import DownstreamConnection

_getrandbits = random.getrandbits
_monotonic = time.monotonic
_HEX_DIGITS = b"0123456789abcdef"
_STATUS_CODES = {str(code): code for code in range(100, 600)}  # :status text -> int without parsing


@cython.locals(low=cython.ulonglong, high=cython.ulonglong, high_mask=cython.ulonglong, low_mask=cython.ulonglong,
               variant=cython.ulonglong)
def request_id() -> str:
    """A version-4 UUID string. Request ids need uniqueness, not secrecy: no syscall per request.

    122 random bits from a per-process generator seeded from the OS (again in every forked child);
    compiled it is a splitmix64 in C formatted straight into the string, uncompiled ``random``'s."""
    if cython.compiled:
        high = _next_random64()
        low = _next_random64()
    else:
        high = _getrandbits(64)
        low = _getrandbits(64)
    high_mask = 0xFFFFFFFFFFFF0FFF  # C integers: the bit operations stay in C
    low_mask = 0x3FFFFFFFFFFFFFFF
    variant = 0x8000000000000000
    high = high & high_mask | 0x4000  # version 4
    low = low & low_mask | variant  # variant RFC 4122
    if cython.compiled:
        return _uuid_text(high, low)
    return (f"{high >> 32:08x}-{(high >> 16) & 0xFFFF:04x}-{high & 0xFFFF:04x}-"
            f"{low >> 48:04x}-{low & 0xFFFFFFFFFFFF:012x}")


@cython.locals(mixed=cython.ulonglong, golden=cython.ulonglong, mix1=cython.ulonglong, mix2=cython.ulonglong)
def _next_random64() -> int:
    """Compiled only: splitmix64 (Steele, Lea and Flood), a 2^64-period generator that passes BigCrush;
    the constants are C integers so that the arithmetic wraps modulo 2^64."""
    global _random_state
    golden = 0x9E3779B97F4A7C15
    mix1 = 0xBF58476D1CE4E5B9
    mix2 = 0x94D049BB133111EB
    _random_state += golden
    mixed = _random_state
    mixed = (mixed ^ (mixed >> 30)) * mix1
    mixed = (mixed ^ (mixed >> 27)) * mix2
    return mixed ^ (mixed >> 31)


def _seed_request_ids() -> None:
    """The generator's state from the OS: at import, and in a forked child (a worker must not
    repeat its parent's or a sibling's ids)."""
    global _random_state
    _random_state = int.from_bytes(os.urandom(8), "little")


_random_state = 0
_seed_request_ids()
os.register_at_fork(after_in_child=_seed_request_ids)


if not cython.compiled:  # cimported by connection_manager.pxd; only the compiled branch calls it
    PyUnicode_DecodeLatin1 = None


def _uuid_text(high: int, low: int) -> str:
    """Compiled only: the 8-4-4-4-12 hex form written into a C buffer (no format calls)."""
    text = cython.declare(cython.char[36])
    i = cython.declare(cython.int)
    for i in range(35, 18, -1):  # low: 4-12, dash at 23
        if i == 23:
            text[i] = 45
            continue
        text[i] = _HEX_DIGITS[low & 15]
        low >>= 4
    text[18] = 45
    for i in range(17, -1, -1):  # high: 8-4-4, dashes at 8 and 13
        if i == 8 or i == 13:
            text[i] = 45
            continue
        text[i] = _HEX_DIGITS[high & 15]
        high >>= 4
    return PyUnicode_DecodeLatin1(text, 36, cython.NULL)


class CodecError(Exception):
    """Input Envoy's HTTP/1 codec refuses: answered ``status`` with the reason phrase as body
    (Envoy's sendProtocolError), flag DPE, then the connection closes."""

    status = 400
    details = "http1.codec_error"

    def __init__(self, details: str = "") -> None:
        super().__init__(details)
        if details:
            self.details = details


class HeadersTooLarge(CodecError):
    """The request head is over max_request_headers_kb (or max_headers_count): 431.
    (The request parser enforces both and reports them as ``ParserError``s with these details.)"""

    status = 431
    details = "http1.headers_too_large"


class UnsupportedTransferCoding(CodecError):
    """A transfer coding other than exactly "chunked": Envoy's codec answers 501.
    (The request parser refuses it and reports a ``ParserError`` with these details.)"""

    status = 501
    details = "http1.invalid_transfer_encoding"


class InvalidAuthority(CodecError):
    """More than one Host line, or a Host (or absolute-form authority) with a character Envoy's
    authority check refuses: RFC 9112 section 3.2 requires a 400."""

    details = "http.invalid_authority"


# Envoy's HeaderUtility::authorityIsValid (HTTP/1 and HTTP/2): RFC 3986 authority characters plus
# '@'; anything else (space, '/', '?', '#', quotes, '{', '|', non-ASCII, ...) is refused.
_INVALID_AUTHORITY_CHAR = re.compile(r"[^!$-.0-;=@-\[\]_a-z~]").search
# Authorities already found valid: a set lookup (~0.1 us) instead of the scan (~0.3-0.8 us) for the
# few hosts a proxy sees over and over. Bounded in entries and length, so clients cannot grow it.
_valid_authorities: set[str] = set()
_VALID_AUTHORITIES_MAX = 1024
_CACHED_AUTHORITY_MAX_LEN = 255


def _check_authority(authority: str) -> None:
    if authority in _valid_authorities:
        return
    if _INVALID_AUTHORITY_CHAR(authority) is not None:
        raise InvalidAuthority
    if len(_valid_authorities) < _VALID_AUTHORITIES_MAX and len(authority) <= _CACHED_AUTHORITY_MAX_LEN:
        _valid_authorities.add(authority)


class ActiveStream:
    """One request/response exchange and its filter chain."""

    if not cython.compiled:  # compiled, a cdef class whose fields are declared in the .pxd
        __slots__ = (
            "connection", "config", "headers", "info", "filters", "decode_index", "request_complete",
            "end_stream_at_headers", "response_started", "response_complete", "keep_alive", "is_head",
            "http10", "chunked_response", "close_delimited", "pending_body", "route", "route_resolved",
            "last_activity", "deadline", "deadline_callback", "done", "expect_continue", "upgrade_h2c",
            "has_envoy_headers", "error_reply", "idle_timeout", "duration_deadline", "codec_stream_id",
            "upgrade_type",
        )

    def __init__(self, connection: HttpConnection, headers: HeaderMap, info: StreamInfo) -> None:
        self.connection = connection
        self.config = connection.config
        self.headers = headers
        self.info = info
        self.filters: list[HttpFilter] = []
        self.decode_index = 0
        self.request_complete = False
        self.end_stream_at_headers = False
        self.response_started = False
        self.response_complete = False
        self.keep_alive = True
        self.is_head = False
        self.http10 = False
        self.chunked_response = False
        self.close_delimited = False
        self.pending_body: list[bytes] | None = None  # body parsed while queued behind another request
        self.route = None
        self.route_resolved = False
        self.last_activity = 0.0
        self.deadline = 0.0  # absolute loop time; 0 = none (route timeout, set by the router)
        self.deadline_callback = None
        self.done = False
        self.expect_continue = False
        self.upgrade_h2c = False
        self.has_envoy_headers = False  # any x-envoy-* request header (the router may then append blindly)
        self.error_reply: tuple[int, str, bytes] | None = None  # (status, details, body) owed instead of proxying
        # stream_idle_timeout, or the route's idle_timeout (0 = none)
        self.idle_timeout = self.config.stream_idle_timeout
        self.duration_deadline = 0.0  # max_stream_duration (HCM or route), loop time; 0 = none
        self.codec_stream_id = 0  # the HTTP/2 stream's id (0 on HTTP/1)
        self.upgrade_type: str | None = None  # an upgrade upgrade_configs allows (websocket): tunnelled once 101

    # --- for filters ---------------------------------------------------
    def get_route(self):  # noqa: ANN201 - Route | None
        if not self.route_resolved:
            self.route_resolved = True
            self.route = self.config.route_table.find(self.headers)
            if self.route is not None:
                self.info.route_name = self.route.name
                if self.route.stream_timeouts is not None:
                    self._apply_route_timeouts(self.route.stream_timeouts)
        return self.route

    @cython.locals(now=cython.double)
    def _apply_route_timeouts(self, timeouts) -> None:  # noqa: ANN001 - router.stream_timeouts.StreamTimeouts
        """The route's idle_timeout / max_stream_duration replace the HCM's for this stream
        (Envoy's refreshIdleTimeout / refreshDurationTimeout); both count from the stream start."""
        connection = self.connection
        now = connection.loop_time()
        if timeouts.idle_timeout is not None:
            self.idle_timeout = timeouts.idle_timeout
            if self.idle_timeout:
                connection.watch_deadline(now + self.idle_timeout)
        limit = timeouts.duration(self.headers, self.config.max_stream_duration)
        if limit is None:
            self.duration_deadline = 0.0
        else:
            self.duration_deadline = self.info.start_monotonic - _monotonic() + now + limit
            connection.watch_deadline(self.duration_deadline)

    def clear_route_cache(self) -> None:
        self.route_resolved = False
        self.route = None

    def set_deadline(self, deadline: float, callback) -> None:  # noqa: ANN001
        self.deadline = deadline
        self.deadline_callback = callback
        if deadline:
            self.connection.watch_deadline(deadline)

    def read_disable(self, disable: bool) -> None:
        """Stop (or resume) reading this stream's request: on HTTP/1 the connection's reading,
        on HTTP/2 the stream's flow-control window."""
        self.connection.stream_read_disable(self, disable)

    def continue_decoding(self) -> None:
        """A filter that returned STOP resumes the chain from the next filter."""
        self.decode_index += 1
        self._decode_headers_from(self.decode_index)

    # --- request path --------------------------------------------------
    @cython.locals(now=cython.double, span=cython.double, filters=list, pending=list, index=cython.Py_ssize_t,
                   last=cython.bint)
    def dispatch(self) -> None:
        if self.error_reply is not None:
            # a malformed or refused request: answered in its turn, then the connection closes
            status, details, body = self.error_reply
            self.keep_alive = False
            self.send_local_reply("", status=status, body=body, details=details)
            return
        config = self.config
        overload = config.overload
        if overload.stop_accepting_requests and bernoulli(overload.stop_accepting_requests):
            # Envoy answers before building the filter chain: under memory pressure it allocates nothing more
            config.stats.downstream_rq_overload_close.value += 1
            self.send_local_reply("", status=503, body=b"envoy overloaded", details="overload")
            return
        connection = self.connection
        now = self.last_activity = connection.loop_time()
        if config.max_stream_duration:
            self.duration_deadline = self.info.start_monotonic - _monotonic() + now + config.max_stream_duration
        span = config.stream_timeout_span
        if span and (connection.timer is None or connection.timer_when > now + span):
            connection._arm_timer(now + span)  # the lazy timer must wake up for this stream's timeouts
        filters = [factory.create_filter(self) for factory in config.filter_factories]
        self.filters = [flt for flt in filters if flt is not None] if config.skippable_filters else filters
        self._decode_headers_from(0)
        if self.done:
            return
        pending = self.pending_body
        if pending:
            self.pending_body = None
            for index, chunk in enumerate(pending):
                last = self.request_complete and index == len(pending) - 1
                self.decode_data(chunk, last)
                if self.done:
                    return
        elif self.request_complete and not self.end_stream_at_headers:
            self.decode_data(b"", True)

    @cython.locals(filters=list, end_stream=cython.bint, index=cython.Py_ssize_t, flt=HttpFilter)
    def _decode_headers_from(self, start: int) -> None:
        filters = self.filters
        end_stream = self.end_stream_at_headers
        for index in range(start, len(filters)):
            self.decode_index = index
            flt = filters[index]
            if flt.decode_headers(self.headers, end_stream) != CONTINUE or self.done:
                return

    @cython.locals(flt=HttpFilter)
    def decode_data(self, data: bytes, end_stream: bool) -> None:
        # Every filter but the router passes data through unless it overrides decode_data.
        for flt in self.filters:
            if flt.decode_data(data, end_stream) != CONTINUE or self.done:
                return

    def decode_data_after(self, source: HttpFilter, data: bytes, end_stream: bool) -> None:
        """Body that decoder filter ``source`` produces itself, in place of what it was given (Envoy's
        addDecodedData / injectDecodedDataToFilterChain): the filters after it see it."""
        filters = self.filters
        for flt in filters[filters.index(source) + 1:]:
            if flt.decode_data(data, end_stream) != CONTINUE or self.done:
                return

    @cython.locals(flt=HttpFilter)
    def decode_trailers(self, trailers: HeaderMap) -> None:
        """The request's trailers (HTTP/2): they end the request, after its last DATA."""
        for flt in self.filters:
            if flt.decode_trailers(trailers) != CONTINUE or self.done:
                return

    # --- response path -------------------------------------------------
    @cython.locals(flt=HttpFilter, info=StreamInfo, status=cython.long, counter=Counter,
                   transformation=cython.long)
    def encode_headers(self, headers: HeaderMap, end_stream: bool) -> None:
        config = self.config
        if config.encoder_filters:
            for flt in reversed(self.filters):
                if flt.encode_headers(headers, end_stream) != CONTINUE:
                    return
        self.response_started = True
        info = self.info
        status_text = headers.get(":status") or "200"
        status = _STATUS_CODES.get(status_text) or int(status_text)
        info.response_code = status
        info.response_headers = headers
        connection = self.connection
        counter = connection.stats_rq_by_class[status // 100 if 1 <= status // 100 <= 5 else 5]
        counter.value += 1

        transformation = config.server_header_transformation
        if transformation == 0:  # OVERWRITE
            headers.set("server", config.server_name)
        elif transformation == 1:  # APPEND_IF_ABSENT
            headers.set_default("server", config.server_name)
        if config.always_set_request_id_in_response and info.request_id:
            headers.set("x-request-id", info.request_id)
        if config.via:
            previous = headers.get("via")
            headers.set("via", f"{previous}, {config.via}" if previous else config.via)

        if connection.encode_response_head(self, status, headers, end_stream):
            self._response_done()

    @cython.locals(flt=HttpFilter)
    def encode_data(self, data: bytes, end_stream: bool) -> None:
        if self.done:
            return
        if self.config.encoder_filters:
            for flt in reversed(self.filters):
                if flt.encode_data(data, end_stream) != CONTINUE:
                    return
        if data:
            self.info.bytes_sent += len(data)
        self.connection.encode_response_body(self, data, end_stream)
        if end_stream:
            self._response_done()

    def encode_data_after(self, source: HttpFilter, data: bytes, end_stream: bool) -> None:
        """Body that encoder filter ``source`` produces itself (Envoy's addEncodedData / injectEncodedData):
        the filters that encode after it see it, then the codec."""
        if self.done:
            return
        filters = self.filters
        for flt in reversed(filters[:filters.index(source)]):
            if flt.encode_data(data, end_stream) != CONTINUE:
                return
        if data:
            self.info.bytes_sent += len(data)
        self.connection.encode_response_body(self, data, end_stream)
        if end_stream:
            self._response_done()

    @cython.locals(flt=HttpFilter)
    def encode_trailers(self, trailers: HeaderMap) -> None:
        """The response's trailers end it: framed by HTTP/2, dropped by HTTP/1 (as Envoy does unless
        ``enable_trailers``), which ends the body instead."""
        if self.done:
            return
        if self.config.encoder_filters:
            for flt in reversed(self.filters):
                if flt.encode_trailers(trailers) != CONTINUE:
                    return
        self.info.response_trailers = trailers
        self.connection.encode_response_trailers(self, trailers)
        self._response_done()

    def send_local_reply(self, flag: str, *, status: int = 0, body: bytes | None = None,
                         details: str = "", extra_headers: list[tuple[str, str]] | None = None,
                         grpc_status: int | None = None) -> None:
        """Answer the request ourselves, in Envoy's words; reset if a response already started.
        A gRPC request gets a gRPC error instead (HTTP 200, grpc-status mapped from ``status`` unless
        ``grpc_status`` is given, the text as grpc-message), as Envoy's sendLocalReply does."""
        if flag:
            self.info.add_flag(flag)
        default_status, default_body, default_details = BY_FLAG.get(flag, (500, b"", "local_reply"))
        status = status or default_status
        body = default_body if body is None else body
        self.info.response_code_details = details or default_details
        if self.response_started:
            self.reset(flag or flags.LOCAL_RESET)
            return
        headers = self.headers
        if headers is not None and is_grpc_request(headers):
            items = local_reply_headers(status, body.decode("latin-1"), grpc_status)
            body = b""
        else:
            items = [(":status", str(status))]
            if body:
                items.append(("content-type", "text/plain"))
        items.append(("content-length", str(len(body))))
        if extra_headers:
            items.extend(extra_headers)
        items.append(("date", http1.http_date()))
        headers = HeaderMap.of(items)
        route = self.route
        if route is not None:
            route.finalize_response(headers, self.info)
        self.encode_headers(headers, not body)
        if body and not self.done:
            self.encode_data(body, True)

    # --- completion ----------------------------------------------------
    def _response_done(self) -> None:
        self.response_complete = True
        if self.request_complete:
            self.connection.stream_finished(self)
        elif self.end_stream_at_headers:
            pass  # on_message_complete follows within the same feed_data call
        else:
            # The request body is still arriving: the connection cannot be reused.
            self.keep_alive = False
            self.connection.stream_finished(self)

    def reset(self, flag: str) -> None:
        """Abort the exchange: destroy filters; the connection closes if a response started."""
        if self.done:
            return
        self.info.add_flag(flag)
        self.keep_alive = False
        self.connection.stream_finished(self, reset=True)

    @cython.locals(flt=HttpFilter)
    def destroy(self) -> None:
        filters = self.filters
        for flt in filters:
            flt.on_destroy()
        # Filters point back at the stream: break the cycle so a finished exchange is freed by
        # reference counting at once instead of piling up for the cyclic GC (whose pauses show in p99).
        self.filters = []
        self.deadline_callback = None


class HttpConnection(CodecCallbacks):
    """An ``asyncio.Protocol`` (duck-typed: compiled, a cdef class cannot derive from a Python class)."""

    if not cython.compiled:  # compiled, a cdef class whose fields are declared in the .pxd
        __slots__ = (
            "config", "downstream", "transport", "parser", "loop", "streams", "parsing",
            "read_disabled", "close_when_done", "closed",
            "last_activity", "timer", "timer_when", "stats_rx", "stats_tx", "stats_rq_by_class",
            "remote_str", "local_str", "write_paused", "corked", "out", "parse_failed", "head_started",
            "sniff", "http1_counted", "tunnel",
        )

    def __init__(self, config: HcmConfig, downstream: DownstreamConnection) -> None:
        self.config = config
        self.downstream = downstream
        self.transport: asyncio.Transport | None = None
        # max_request_headers_kb and max_headers_count are enforced by the parser (431)
        self.parser = RequestParser(self, config.max_request_headers_bytes, config.max_headers_count)
        self.loop = config.loop()
        self.streams: deque[ActiveStream] = deque()  # [0] is dispatched; the rest wait in order
        self.parsing: ActiveStream | None = None
        # monotonic time of the first byte of a request head still incomplete after a read (0: none):
        # where Envoy's stream for it started, and its head timeouts with it
        self.head_started = 0.0
        self.parse_failed = False
        self.read_disabled = 0
        self.close_when_done = False
        self.closed = False
        self.last_activity = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_when = 0.0
        stats = config.stats
        self.stats_rx = stats.downstream_cx_rx_bytes_total
        self.stats_tx = stats.downstream_cx_tx_bytes_total
        self.stats_rq_by_class = stats.rq_by_class
        self.remote_str = downstream.remote_str
        self.local_str = downstream.local_str
        self.write_paused = False
        # While corked, writes collect in ``out`` and leave in one send(): a response's head
        # and body that arrive in one upstream read cost one syscall, as nginx's writev does.
        self.corked = False
        self.out: list[bytes] = []
        # codec_type AUTO: the first bytes read so far, until they tell HTTP/2 from HTTP/1 (None: decided)
        self.sniff: bytes | None = b"" if config.codec == "auto" else None
        self.http1_counted = False  # downstream_cx_http1_* count this connection
        # the upgraded stream (websocket) whose bytes now flow raw both ways; None: HTTP/1 as usual
        self.tunnel: ActiveStream | None = None

    def loop_time(self) -> float:
        return self.loop.time()

    # --- asyncio.Protocol ----------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        limit = self.config.buffer_limit
        transport.set_write_buffer_limits(high=limit, low=limit // 2)
        stats = self.config.stats
        stats.downstream_cx_total.value += 1
        stats.downstream_cx_active.value += 1
        self._start(transport)

    def _start(self, transport: asyncio.BaseTransport) -> None:
        """The codec's half of connection_made (HTTP/2 overrides it; AUTO's hand-over calls it)."""
        self.transport = transport  # type: ignore[assignment]
        if self.sniff is None:
            self._count_http1()
        self.config.connections.add(self)
        self.last_activity = self.loop.time()
        self._arm_timer(self._next_deadline())

    def _count_http1(self) -> None:
        self.http1_counted = True
        stats = self.config.stats
        stats.downstream_cx_http1_total.value += 1
        stats.downstream_cx_http1_active.value += 1

    def data_received(self, data: bytes) -> None:
        if self.sniff is not None:
            data = self._sniff(data)
            if not data:
                return  # HTTP/2 took the connection over, or too few bytes to tell yet
        if self.parse_failed:
            return  # after a malformed request nothing more is parsed; the connection is closing
        self.stats_rx.value += len(data)
        self.last_activity = self.loop.time()
        if self.tunnel is not None:
            self._tunnel_data(data)
            return
        parser = self.parser
        try:
            parser.feed_data(data)
        except ParserUpgrade as exc:
            self._after_upgrade(data, exc.offset)
            return
        except ParserError as exc:  # not HTTP/1.1 (400), a head over the limits (431), a coding (501)
            self.protocol_error(exc.status, exc.details)
            return
        except CodecError as exc:  # refused by on_request_head
            self.protocol_error(exc.status, exc.details)
            return
        except Exception:  # noqa: BLE001 - a failure in the filter chain while parsing: as a codec error
            self.protocol_error(400, CodecError.details)
            return
        if not self.head_started and parser.in_head:
            self._head_pending()  # a head that spans reads: once, at the end of the read it began in

    def _sniff(self, data: bytes) -> bytes:
        """codec_type AUTO on a plaintext connection (Envoy's): HTTP/2 if the client's first bytes are
        the HTTP/2 preface (prior knowledge), else HTTP/1. Returns the bytes for HTTP/1 (b"" if none)."""
        from tulle.http.http2_codec import PREFACE

        data = self.sniff + data
        length = min(len(data), len(PREFACE))
        if data[:length] == PREFACE[:length]:
            if length < len(PREFACE):
                self.sniff = data  # a prefix of the preface: wait for the rest
                return b""
            self._hand_over_to_http2(data)
            return b""
        self.sniff = None
        self._count_http1()
        return data

    def _hand_over_to_http2(self, data: bytes) -> None:
        from tulle.filters.network.http_connection_manager.http2_connection import Http2Connection

        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.closed = True  # this HTTP/1 half is done; the connection's stats continue in HTTP/2's
        self.config.connections.discard(self)
        successor = Http2Connection(self.config, self.downstream)
        self.transport.set_protocol(successor)  # type: ignore[union-attr]
        successor.adopt(self.transport, data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        stats = self.config.stats
        stats.downstream_cx_active.value -= 1
        stats.downstream_cx_destroy.value += 1
        if self.close_when_done:
            stats.downstream_cx_destroy_local.value += 1
        else:
            stats.downstream_cx_destroy_remote.value += 1
        self.config.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for stream in self._take_open_streams():
            if not stream.done:
                stream.info.add_flag(flags.DOWNSTREAM_CONNECTION_TERMINATION)
                stats.downstream_rq_rx_reset.value += 1
                self._finalize(stream)
        self._codec_closed()
        on_close = self.downstream.on_close
        if on_close is not None:
            on_close()

    def eof_received(self) -> bool | None:
        return None  # asyncio.Protocol's default: the transport closes itself

    def pause_writing(self) -> None:
        # The client reads slower than the upstream sends: stop reading the upstream.
        self.write_paused = True
        self.config.stats.downstream_flow_control_paused_reading_total.value += 1
        for stream in self._timed_streams():
            _tell_filters(stream, "on_downstream_pause_writing")

    def resume_writing(self) -> None:
        self.write_paused = False
        self.config.stats.downstream_flow_control_resumed_reading_total.value += 1
        for stream in self._timed_streams():
            _tell_filters(stream, "on_downstream_resume_writing")

    # --- what differs per codec (Http2Connection overrides these) -----
    def _timed_streams(self) -> list[ActiveStream]:
        """The streams whose timeouts run and whose filters hear of back-pressure: HTTP/1 answers
        one request at a time, so the first queued one (the rest wait, unstarted)."""
        return [self.streams[0]] if self.streams else []

    def _take_open_streams(self) -> list[ActiveStream]:
        """Every stream still held, removed from the connection (it is closing)."""
        streams = list(self.streams)
        self.streams.clear()
        return streams

    def _codec_closed(self) -> None:
        """The codec's share of connection_lost, after the streams are finalized."""
        if self.http1_counted:
            self.config.stats.downstream_cx_http1_active.value -= 1
        if self.tunnel is not None and self.tunnel.info.response_code == 101:
            self.config.stats.downstream_cx_upgrades_active.value -= 1

    def _close_idle(self) -> None:
        """The idle timeout ran out with no stream open."""
        self.config.stats.downstream_cx_idle_timeout.value += 1
        self.close_when_done = True
        self.close_transport()

    # --- request parser callbacks (tulle.http.http1_parser) ------------
    @cython.locals(head_started=cython.double, chunked=cython.bint, connection_tokens=str, expect=cython.bint,
                   request_id_seen=cython.bint, forwarded_proto_seen=cython.bint, envoy_seen=cython.bint, items=list,
                   item=tuple, name=str, scheme_end=cython.Py_ssize_t, after=str, slash=cython.Py_ssize_t,
                   info=StreamInfo, headers=HeaderMap, stream=ActiveStream, stats=HcmStats, error=tuple)
    def on_request_head(self, method: str, target: str, http10: bool, fields: list[tuple[str, str]]) -> None:
        """A complete request head: names lower-case, within max_request_headers_kb and
        max_headers_count, any transfer coding exactly "chunked" (the parser checked). ``http10``:
        Envoy treats every version but 1.1 (0.9, 1.0, 2.0 spoken as text) as HTTP/1.0."""
        config = self.config
        head_started = self.head_started
        authority = None
        content_length = None
        chunked = False
        connection_tokens = ""
        expect = False
        upgrade = None
        request_id_seen = forwarded_proto_seen = envoy_seen = False
        # the HeaderMap's items, adopted as they are: the pseudo-headers, then every field but Host
        # and "Expect: 100-continue" (answered here); :path and :authority are set once known
        items = [(":method", method), None, None, (":scheme", "http")]
        for item in fields:
            name = item[0]
            if name[0] == "x":
                if name == "x-request-id":
                    request_id_seen = True
                elif name == "x-forwarded-proto":
                    forwarded_proto_seen = True
                elif name.startswith("x-envoy-"):
                    envoy_seen = True
            elif name == "host":
                if authority is not None:
                    # RFC 9112 section 3.2: more than one Host line is a 400 (Envoy's codec would fold
                    # them into one ":authority" "a,b", which is no valid host either)
                    raise InvalidAuthority
                authority = item[1]
                continue
            if name == "content-length":
                content_length = item[1]
            elif name == "transfer-encoding":
                chunked = True
            elif name == "connection":
                connection_tokens = item[1].lower()
            elif name == "expect":
                if item[1].lower() == "100-continue":
                    expect = True
                    continue
            elif name == "upgrade":
                upgrade = item[1].lower()
            items.append(item)
        if target[:1] != "/" and target != "*":
            # absolute-form (a forward-proxy request) takes the authority from the URL
            scheme_end = target.find("://")
            if scheme_end > 0 and method != "CONNECT":
                after = target[scheme_end + 3:]
                slash = after.find("/")
                authority = after if slash < 0 else after[:slash]
                target = "/" if slash < 0 else after[slash:]
        if authority and authority not in _valid_authorities:
            _check_authority(authority)
        if config.merge_slashes and "//" in target:
            target = _merge_slashes(target)
        info = StreamInfo(self.remote_str, self.local_str)
        if head_started:
            self.head_started = 0.0
            if not self.streams:
                _start_stream_at(info, head_started)  # a head that took several reads: its first byte
        info.protocol = "HTTP/1.0" if http10 else "HTTP/1.1"
        items[1] = (":path", target)
        items[2] = (":authority", authority or "")
        headers = HeaderMap.of(items)
        stream = ActiveStream(self, headers, info)
        info.request_headers = headers
        stream.is_head = method == "HEAD"
        stream.http10 = http10
        stream.end_stream_at_headers = not chunked and (content_length is None or content_length == "0")
        stream.keep_alive = ("keep-alive" in connection_tokens) if http10 else ("close" not in connection_tokens)
        stream.expect_continue = expect
        self.parsing = stream
        self.streams.append(stream)
        stats = config.stats
        stats.downstream_rq_total.value += 1
        stats.downstream_rq_http1_total.value += 1
        stats.downstream_rq_active.value += 1

        error = None
        if http10 and not config.accept_http_10:
            error = (426, "low_version")
        elif authority is None or authority == "":
            if http10 and config.default_host_for_http_10:
                headers.set(":authority", config.default_host_for_http_10)
            elif not http10:
                error = (400, "missing_host_header")
            else:
                error = (400, "missing_host_header")
        if upgrade is not None and error is None:
            if upgrade != "h2c" and "upgrade" in connection_tokens:
                # an upgrade request: the route and upgrade_configs decide (the router answers 403
                # upgrade_failed when they do not allow it); a 101 from the upstream makes it a tunnel
                stream.upgrade_type = upgrade
                stream.keep_alive = False
            elif upgrade == "h2c":
                # Downgrade an h2c upgrade offer to plain HTTP/1.1, as Envoy does.
                headers.remove("upgrade")
                headers.remove("http2-settings")
                stream.upgrade_h2c = True
            # an Upgrade header without the Connection token is no upgrade: the header is hop-by-hop
        stream.has_envoy_headers = envoy_seen
        self._prepare_request(stream, headers, request_id_seen, forwarded_proto_seen)
        if config.normalize_host:
            config.route_table.normalize_host(headers)
        if error is not None:
            stream.keep_alive = False
            stream.error_reply = (*error, b"")  # the connection manager's own replies have no body (Envoy)
            if len(self.streams) == 1:
                stream.dispatch()
            return
        if len(self.streams) == 1:
            if expect:
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            stream.dispatch()
        elif len(self.streams) == 2:
            # pipelined: hold further input until the queue has drained to one stream (once per queue:
            # read_disable is counted, and it is re-enabled once, when the last queued stream starts)
            self.read_disable(True)

    def on_body(self, body: bytes) -> None:
        stream = self.parsing
        if stream is None or stream.done:
            return
        if self.streams and self.streams[0] is stream:
            stream.last_activity = self.last_activity
            stream.info.bytes_received += len(body)
            stream.decode_data(body, False)
        else:
            stream.info.bytes_received += len(body)
            if stream.pending_body is None:
                stream.pending_body = []
            stream.pending_body.append(body)

    def on_message_complete(self, keep_alive: bool) -> None:
        stream = self.parsing
        self.parsing = None
        if stream is None:
            return
        stream.request_complete = True
        stream.info.last_downstream_rx_monotonic = _monotonic()
        if not keep_alive:
            stream.keep_alive = False
        if stream.done:
            return
        if self.streams and self.streams[0] is stream:
            if stream.response_complete:
                self.stream_finished(stream)
            elif not stream.end_stream_at_headers:
                stream.decode_data(b"", True)

    # --- request preparation (Envoy's HCM header handling) -------------
    def _prepare_request(self, stream: ActiveStream, headers: HeaderMap, request_id_seen: bool,
                         forwarded_proto_seen: bool) -> None:
        config = self.config
        info = stream.info
        items = headers._items  # appends below are for headers known to be absent: no scans
        if config.use_remote_address:
            remote_ip = self.downstream.remote_address[0]
            if not config.skip_xff_append:
                previous = headers.get("x-forwarded-for")
                headers.set("x-forwarded-for", f"{previous},{remote_ip}" if previous else remote_ip)
            headers.set("x-forwarded-proto", "http")
            if stream.has_envoy_headers:
                # Only a trusted (internal) peer may set x-envoy-* headers that steer the proxy.
                for name in config.strip_envoy_headers:
                    headers.remove(name)
        elif not forwarded_proto_seen:
            items.append(("x-forwarded-proto", "http"))
        if config.generate_request_id:
            if not request_id_seen:
                existing = request_id()
                items.append(("x-request-id", existing))
            elif config.use_remote_address and not config.preserve_external_request_id:
                existing = request_id()
                headers.set("x-request-id", existing)
            else:
                existing = headers.get("x-request-id") or ""
            info.request_id = existing
        else:
            info.request_id = headers.get("x-request-id") or ""
        if config.via:
            previous = headers.get("via")
            headers.set("via", f"{previous}, {config.via}" if previous else config.via)
        if config.user_agent:  # add_user_agent (Envoy's mutateRequestHeaders)
            headers.set("x-envoy-downstream-service-cluster", config.user_agent)
            if not headers.get("user-agent"):
                headers.set("user-agent", config.user_agent)
            if config.service_node:
                headers.set("x-envoy-downstream-service-node", config.service_node)

    # --- stream lifecycle ----------------------------------------------
    # --- the codec's half of a response (the seam for a second codec: an HTTP/2 connection frames
    # the same stream's response as HEADERS and DATA frames; ActiveStream and the filters stay as they are)
    @cython.locals(close=cython.bint, no_body_status=cython.bint)
    def encode_response_head(self, stream: ActiveStream, status: int, headers: HeaderMap, end_stream: bool) -> bool:
        """Frame and write the response head; True when the response ends with it (HEAD, 204, 304, 1xx
        or end_stream). Picks content-length, chunked or close-delimited framing for the body."""
        if status == 101 and stream.upgrade_type is not None:
            # the upstream accepted the upgrade: the head keeps its Upgrade/Connection, and both ways
            # the stream's bytes now go raw until one side closes
            upgrade = (headers.get("upgrade") or stream.upgrade_type).encode("latin-1")
            stats = self.config.stats
            stats.downstream_cx_upgrades_total.value += 1
            stats.downstream_cx_upgrades_active.value += 1
            self.close_when_done = True
            framing = b"connection: upgrade\r\nupgrade: " + upgrade + b"\r\n"
            self.write(http1.encode_response_head(status, headers, framing, False))
            return False
        close = self.should_close_after(stream)
        if close:
            stream.keep_alive = False
        no_body_status = status in (204, 304) or status < 200
        if stream.is_head or no_body_status:
            # The head describes a body that is not sent: keep the upstream's length as is.
            framing = http1.content_length_framing(headers.get("content-length")) or b""
            end_stream = True
        elif end_stream:
            framing = b"content-length: 0\r\n"
        else:
            framing = http1.content_length_framing(headers.get("content-length"))
            if framing is None:
                if stream.http10:
                    framing = b""
                    stream.close_delimited = True
                    stream.keep_alive = False
                    close = True
                else:
                    framing = http1.CHUNKED
                    stream.chunked_response = True
        self.write(http1.encode_response_head(status, headers, framing, close))  # %BYTES_SENT%: body bytes only
        return end_stream

    def encode_response_body(self, stream: ActiveStream, data: bytes, end_stream: bool) -> None:
        if stream.chunked_response:
            if data:
                self.write(http1.chunk(data))
            if end_stream:
                self.write(http1.LAST_CHUNK)
        elif data:
            self.write(data)

    def encode_response_trailers(self, stream: ActiveStream, trailers: HeaderMap) -> None:
        self.encode_response_body(stream, b"", True)

    def should_close_after(self, stream: ActiveStream) -> bool:
        if self.close_when_done or not stream.keep_alive:
            return True
        state = self.config.server_state
        if state.draining or state.healthcheck_failed:
            self.config.stats.downstream_cx_drain_close.value += 1
            self.close_when_done = True
            return True
        overload = self.config.overload
        if overload.disable_http_keepalive and bernoulli(overload.disable_http_keepalive):
            self.config.stats.downstream_cx_overload_disable_keepalive.value += 1
            self.close_when_done = True
            return True
        return False

    @cython.locals(nxt=ActiveStream, idle=cython.double)
    def stream_finished(self, stream: ActiveStream, reset: bool = False) -> None:
        if stream.done:
            return
        if reset or not stream.keep_alive:
            self.close_when_done = True
        self._finalize(stream)
        streams = self.streams
        if streams and streams[0] is stream:
            streams.popleft()
        elif stream in streams:
            streams.remove(stream)
        if self.closed:
            return
        if self.close_when_done:
            if reset and stream.response_started:
                self.out.clear()
                self.transport.abort()  # type: ignore[union-attr] # a half-sent response must not look complete
            else:
                self.close_transport()
            return
        if streams:
            nxt = streams[0]
            if nxt.expect_continue:
                self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if len(streams) == 1:
                self.read_disable(False)
            nxt.dispatch()
        if not streams:
            if self.parser.in_head:
                # the next request's head was read meanwhile: Envoy's codec makes its stream now
                self.head_started = _monotonic()
                self.watch_deadline(self._next_deadline())
                return
            idle = self.config.idle_timeout
            # re-arm only if the armed timer would fire after the idle deadline (or none is armed)
            if self.timer is None or (idle and self.timer_when > self.last_activity + idle):
                self._arm_timer(self._next_deadline())

    @cython.locals(info=StreamInfo, stats=HcmStats)
    def _finalize(self, stream: ActiveStream) -> None:
        stream.done = True
        stream.destroy()
        config = self.config
        stats = config.stats
        stats.downstream_rq_active.value -= 1
        info = stream.info
        info.end_monotonic = _monotonic()
        if stream.response_complete:
            stats.downstream_rq_completed.value += 1
        elif stream.response_started:
            stats.downstream_rq_tx_reset.value += 1
        stats.downstream_rq_time.record((info.end_monotonic - info.start_monotonic) * 1000)
        for logger in config.access_loggers:
            try:
                logger.log(info)
            except Exception:  # noqa: BLE001 - a broken log line must never take the request down
                config.stats.access_log_errors.value += 1

    @cython.locals(stream=ActiveStream)
    def protocol_error(self, status: int, details: str) -> None:
        """Malformed input: nothing after it is read; earlier pipelined requests are still
        answered in order, then ``status``, then the connection closes (as Envoy does)."""
        self.config.stats.downstream_cx_protocol_error.value += 1
        self.parse_failed = True
        stream = self.parsing
        self.parsing = None
        if stream is not None and not stream.done and stream.response_started:
            stream.reset(flags.DOWNSTREAM_PROTOCOL_ERROR)  # its response is half out: abort
            return
        if stream is None or stream.done:
            stream = self._stream_without_head()
        stream.info.add_flag(flags.DOWNSTREAM_PROTOCOL_ERROR)
        stream.request_complete = True
        stream.keep_alive = False
        stream.error_reply = (status, details, http1.REASONS[status].encode())  # Envoy's sendProtocolError
        if self.streams[0] is stream:
            stream.dispatch()  # replaces anything the stream had started upstream

    @cython.locals(info="StreamInfo", headers="HeaderMap", stream="ActiveStream")
    def _stream_without_head(self) -> ActiveStream:
        """A stream for a request whose head never became one (malformed, or cut off by a timeout):
        Envoy's codec created the stream on the request's first byte, so it counts as a request."""
        info = StreamInfo(self.remote_str, self.local_str)
        headers = HeaderMap()  # no request headers: access logs print "-" for them, as Envoy's
        stream = ActiveStream(self, headers, info)
        info.request_headers = headers
        stats = self.config.stats
        stats.downstream_rq_total.value += 1
        stats.downstream_rq_http1_total.value += 1
        stats.downstream_rq_active.value += 1
        self.streams.append(stream)
        return stream

    # --- a request head arriving over several reads ------------------------
    def _head_pending(self) -> None:
        """A request head is still incomplete after the read it began in. Envoy's codec made its
        stream at the first byte: the connection idle timeout stops and the stream's own timeouts
        (request headers, request, stream idle, stream duration) run from that byte. Reached only
        when a head spans reads, so a request that arrives whole pays nothing for it."""
        self.head_started = _monotonic()
        head_timeout = self.config.head_timeout
        if head_timeout and not self.streams:
            self.watch_deadline(self.last_activity + head_timeout)

    @cython.locals(stream="ActiveStream", started=cython.double)
    def _head_timed_out(self) -> None:
        """The shortest head timeout ran out before the head was complete: 408 as Envoy's stream
        answers it (remote not complete), then the connection closes; nothing more is read."""
        config = self.config
        stats = config.stats
        started = self.head_started
        self.head_started = 0.0
        self.parse_failed = True
        stream = self._stream_without_head()
        _start_stream_at(stream.info, started)
        stream.keep_alive = False
        kind = config.head_timeout_kind
        if kind == "request_headers":
            stats.downstream_rq_header_timeout.value += 1
            stream.send_local_reply("", status=408, body=b"request header timeout", details="request_header_timeout")
        elif kind == "request":
            stats.downstream_rq_timeout.value += 1
            stream.send_local_reply("", status=408, body=b"request timeout", details="request_overall_timeout")
        elif kind == "stream_idle":
            stats.downstream_rq_idle_timeout.value += 1
            stream.send_local_reply(flags.STREAM_IDLE_TIMEOUT, status=408)
        else:
            stats.downstream_rq_max_duration_reached.value += 1
            stream.send_local_reply("", status=408, body=b"downstream duration timeout", details="max_duration_timeout")

    def _after_upgrade(self, data: bytes, offset: int) -> None:
        stream = self.streams[-1] if self.streams else None
        if stream is not None and stream.upgrade_h2c and not self.closed:
            config = self.config
            self.parser = RequestParser(self, config.max_request_headers_bytes, config.max_headers_count)
            rest = data[offset:]
            if rest:
                self.data_received(rest)
            return
        if stream is not None and stream.upgrade_type is not None and not stream.done and not self.closed:
            # an allowed upgrade (websocket): what follows the head is the protocol's, not HTTP
            self.tunnel = stream
            rest = data[offset:]
            if rest:
                self._tunnel_data(rest)
            return
        # Any other upgrade was answered 403 in on_headers_complete; the bytes after it are not HTTP.
        self.close_when_done = True
        if not self.streams:
            self.close_transport()

    def _tunnel_data(self, data: bytes) -> None:
        """Bytes of an upgraded stream, from the client: straight to its filters (the router)."""
        stream = self.tunnel
        if stream is None or stream.done:
            return
        stream.last_activity = self.last_activity
        stream.info.bytes_received += len(data)
        stream.decode_data(data, False)

    # --- I/O helpers ---------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.closed:
            return
        self.stats_tx.value += len(data)
        if self.corked:
            self.out.append(data)
        else:
            self.transport.write(data)  # type: ignore[union-attr]

    def cork(self) -> None:
        self.corked = True

    def uncork(self) -> None:
        self.corked = False
        out = self.out
        if out:
            self.out = []
            if not self.closed:
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))  # type: ignore[union-attr]

    def close_transport(self) -> None:
        """Close after what is written (including anything corked) has been sent."""
        self.uncork()
        if self.transport is not None and not self.closed:
            self.transport.close()

    def read_disable(self, disable: bool) -> None:
        """Reference-counted pause of downstream reading (Envoy's readDisable)."""
        if self.closed or self.transport is None:
            return
        if disable:
            self.read_disabled += 1
            if self.read_disabled == 1:
                self.transport.pause_reading()
        elif self.read_disabled > 0:
            self.read_disabled -= 1
            if self.read_disabled == 0:
                self.transport.resume_reading()

    def stream_read_disable(self, stream: ActiveStream, disable: bool) -> None:
        self.read_disable(disable)  # HTTP/1: one stream reads at a time, so its connection's reading

    def drain(self) -> None:
        """Finish in-flight work, then close (Connection: close on the next response)."""
        self.close_when_done = True
        if not self.streams and self.transport is not None and not self.closed:
            self.config.stats.downstream_cx_drain_close.value += 1
            self.close_transport()

    # --- lazy timers ---------------------------------------------------
    def watch_deadline(self, deadline: float) -> None:
        if self.timer is None or deadline < self.timer_when:
            self._arm_timer(deadline)

    def _arm_timer(self, when: float) -> None:
        if self.timer is not None:
            if when and when >= self.timer_when:
                return  # the armed timer fires first and will re-evaluate
            self.timer.cancel()
            self.timer = None
        if when and not self.closed:
            self.timer_when = when
            self.timer = self.loop.call_at(when, self._on_timer)

    @cython.locals(candidates=list, streams=list, stream=ActiveStream)
    def _next_deadline(self) -> float:
        config = self.config
        candidates = []
        streams = self._timed_streams()
        if streams:
            for stream in streams:
                self._stream_deadlines(stream, candidates)
        elif self.head_started:
            if config.head_timeout:  # a head is arriving: its stream's clocks, not the idle timeout
                candidates.append(self.head_started - _monotonic() + self.loop.time() + config.head_timeout)
        elif config.idle_timeout:
            candidates.append(self.last_activity + config.idle_timeout)
        return min(candidates) if candidates else 0.0

    def _stream_deadlines(self, stream: ActiveStream, candidates: list[float]) -> None:
        """Append when each of ``stream``'s timeouts would fire (loop time)."""
        config = self.config
        if stream.deadline:
            candidates.append(stream.deadline)
        if stream.duration_deadline:
            candidates.append(stream.duration_deadline)
        if stream.idle_timeout:
            candidates.append(max(stream.last_activity, self.last_activity) + stream.idle_timeout)
        if config.request_timeout and not stream.request_complete:
            candidates.append(stream.info.start_monotonic - _monotonic() + self.loop.time()
                              + config.request_timeout)

    @cython.locals(streams=list, stream=ActiveStream)
    def _on_timer(self) -> None:
        self.timer = None
        if self.closed:
            return
        now = self.loop.time()
        config = self.config
        streams = self._timed_streams()
        if streams:
            for stream in streams:
                if not stream.done:  # an earlier one's reply may have ended it (HTTP/2)
                    self._expire_stream(stream, now)
        elif self.head_started:
            if config.head_timeout and _monotonic() - self.head_started >= config.head_timeout:
                self._head_timed_out()
                return
        elif config.idle_timeout and now - self.last_activity >= config.idle_timeout:
            self._close_idle()
            return
        if not self.closed:
            self._arm_timer(self._next_deadline())

    def _expire_stream(self, stream: ActiveStream, now: float) -> None:
        """Whichever of ``stream``'s timeouts has run out fires (the route's first, as in Envoy)."""
        config = self.config
        if stream.deadline and now >= stream.deadline:
            callback = stream.deadline_callback
            stream.deadline = 0.0
            stream.deadline_callback = None
            if callback is not None:
                callback()
        elif config.request_timeout and not stream.request_complete and (
                _monotonic() - stream.info.start_monotonic >= config.request_timeout):
            config.stats.downstream_rq_timeout.value += 1
            stream.keep_alive = False
            # Envoy's onRequestTimeout: 408 (the request is incomplete), no response flag
            stream.send_local_reply("", status=408, body=b"request timeout", details="request_overall_timeout")
        elif stream.duration_deadline and now >= stream.duration_deadline:
            # max_stream_duration: Envoy answers 408 while the request arrives, else 504 (no flag)
            config.stats.downstream_rq_max_duration_reached.value += 1
            stream.keep_alive = False
            stream.send_local_reply("", status=504 if stream.request_complete else 408,
                                    body=b"downstream duration timeout", details="max_duration_timeout")
        elif stream.idle_timeout and (
                now - max(stream.last_activity, self.last_activity) >= stream.idle_timeout):
            config.stats.downstream_rq_idle_timeout.value += 1
            stream.keep_alive = False
            # Envoy: 408 while the request is still arriving, 504 once it is waiting on the upstream
            stream.send_local_reply(flags.STREAM_IDLE_TIMEOUT, status=504 if stream.request_complete else 0)


def _tell_filters(stream: ActiveStream, hook: str) -> None:
    """Call an optional flow-control hook (on_downstream_pause_writing / _resume_) on each filter."""
    for flt in stream.filters:
        method = getattr(flt, hook, None)
        if method is not None:
            method()


def _start_stream_at(info: StreamInfo, started: float) -> None:
    """Date ``info`` back to ``started`` (monotonic): the first byte of its request's head."""
    info.start_time -= _monotonic() - started
    info.start_monotonic = started


def _merge_slashes(target: str) -> str:
    query_at = target.find("?")
    path, query = (target, "") if query_at < 0 else (target[:query_at], target[query_at:])
    while "//" in path:
        path = path.replace("//", "/")
    return path + query
