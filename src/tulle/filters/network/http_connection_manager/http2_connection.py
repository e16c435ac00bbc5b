"""The HTTP/2 connection manager: one ``asyncio.Protocol`` per downstream HTTP/2 connection.

The HTTP/1 connection manager's second codec (Envoy's codec seam): libnghttp2 frames the
connection (``tulle.http.http2_codec``) and every request stream becomes the same
:class:`ActiveStream`, running the same HTTP filter chain and router, as on HTTP/1. Only the
codec's half differs: streams are concurrent (not queued), a response is HEADERS and DATA frames,
a reset is RST_STREAM, and a drain is GOAWAY.

Everything the session owes the peer after a read (SETTINGS and WINDOW_UPDATE, PING ACKs, the
responses the read produced) leaves in one write; a response produced by an upstream read leaves
when that read ends (the router corks this connection around it). Request DATA returns its window
to the client as it is forwarded; response DATA waits in the session for the client's window, and
a stream whose unsent DATA exceeds the buffer limit tells its filters to stop reading the upstream
until it drains (Envoy's per-stream watermarks).
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING

import cython

from tulle import stream_info as flags
from tulle.filters.network.http_connection_manager.connection_manager import (
    ActiveStream,
    CodecError,
    HttpConnection,
    _check_authority,
    _tell_filters,
)
from tulle.http.headers import HeaderMap
from tulle.http.http2_codec import INTERNAL_ERROR, NO_ERROR, Http2Error, Http2Session
from tulle.stream_info import StreamInfo

if TYPE_CHECKING:
    import asyncio

    from tulle.filters.network.http_connection_manager.config import HcmConfig
    from tulle.server.context import DownstreamConnection

# Connection-specific headers (RFC 9113 section 8.2.2): an HTTP/1 upstream's response may carry
# them; an HTTP/2 response must not.
_CONNECTION_SPECIFIC = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"})
_monotonic = time.monotonic
_random = random.random


class Http2Connection(HttpConnection):
    """An HTTP/2 server connection (compiled, a cdef class: see http2_connection.pxd)."""

    if not cython.compiled:
        __slots__ = ("session", "h2_streams", "write_paused_streams", "held_windows", "resets_after_output",
                     "receiving", "keepalive_timer", "ping_outstanding")

    def __init__(self, config: HcmConfig, downstream: DownstreamConnection) -> None:
        super().__init__(config, downstream)
        self.parser = None  # no HTTP/1 parser: the session frames this connection
        self.sniff = None
        self.session = Http2Session(self, True, config.http2_settings)
        self.h2_streams: dict[int, ActiveStream] = {}
        self.write_paused_streams: set[int] = set()
        self.held_windows: dict[int, list[int]] = {}  # read-disabled stream -> [count, bytes not acknowledged]
        self.resets_after_output: list[int] = []  # streams to reset once their response is written
        self.receiving = False  # inside session.receive (nghttp2's callbacks): no output until it returns
        self.keepalive_timer = None  # connection_keepalive: the next PING, or the deadline for its ACK
        self.ping_outstanding = False

    # --- asyncio.Protocol ----------------------------------------------
    def adopt(self, transport: asyncio.BaseTransport, data: bytes) -> None:
        """Take over a connection that codec_type AUTO found to speak HTTP/2 (its first ``data``)."""
        self._start(transport)
        self.data_received(data)

    def _start(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        stats = self.config.stats
        stats.downstream_cx_http2_total.value += 1
        stats.downstream_cx_http2_active.value += 1
        self.config.connections.add(self)
        self.last_activity = self.loop.time()
        self.flush()  # our SETTINGS: the server's half of the connection preface
        self._arm_timer(self._next_deadline())
        if self.config.http2_keepalive[0]:
            self._schedule_ping()

    def data_received(self, data: bytes) -> None:
        if self.parse_failed:
            return
        self.stats_rx.value += len(data)
        self.last_activity = self.loop.time()
        self.corked = True  # the frames this read produces leave in one write
        self.receiving = True
        try:
            self.session.receive(data)
        except Http2Error as exc:
            self.receiving = False
            self.protocol_error(400, exc.details)
            return
        except CodecError as exc:
            self.receiving = False
            self.protocol_error(exc.status, exc.details)
            return
        except Exception:  # noqa: BLE001 - a failure in the filter chain inside nghttp2's callbacks
            # leaves the session unusable (a callback failure is fatal to nghttp2): close, as HTTP/1 does
            self.receiving = False
            self.session.goaway(INTERNAL_ERROR)
            self.protocol_error(500, "filter_chain_failure")
            return
        finally:
            self.receiving = False
            self.uncork()
        if not self.session.wants_io():
            if not self.close_when_done:
                # nghttp2 ended the session itself (a GOAWAY for a violation it handles without an
                # error return: too many streams, the rapid-reset limit, a bad frame on a stream)
                self.config.stats.downstream_cx_protocol_error.value += 1
                self.close_when_done = True
            self.close_transport()

    def _take_open_streams(self) -> list[ActiveStream]:
        streams = list(self.h2_streams.values())
        self.h2_streams.clear()
        return streams

    def _codec_closed(self) -> None:
        self.config.stats.downstream_cx_http2_active.value -= 1
        if self.keepalive_timer is not None:
            self.keepalive_timer.cancel()
            self.keepalive_timer = None
        self.session.close()  # nghttp2's memory goes now, not when the cyclic GC finds the pair

    def pause_writing(self) -> None:
        # The client reads slower than we write: stop the upstreams, and stop reading the client,
        # so that it cannot make us queue frames without bound (PING and SETTINGS floods answered
        # into a full socket: Envoy's outbound frame limits have the same aim).
        self.write_paused = True
        self.config.stats.downstream_flow_control_paused_reading_total.value += 1
        self.read_disable(True)
        for stream in self._timed_streams():
            _tell_filters(stream, "on_downstream_pause_writing")

    def resume_writing(self) -> None:
        self.write_paused = False
        self.config.stats.downstream_flow_control_resumed_reading_total.value += 1
        self.read_disable(False)
        for stream in self._timed_streams():
            if stream.codec_stream_id not in self.write_paused_streams:
                _tell_filters(stream, "on_downstream_resume_writing")

    def stream_read_disable(self, stream: ActiveStream, disable: bool) -> None:
        """Per-stream flow control (Envoy's readDisable on an HTTP/2 stream): while disabled the
        stream's DATA is not acknowledged, so the client stops once the stream's window is spent;
        other streams are unaffected. Counted, as Envoy's."""
        stream_id = stream.codec_stream_id
        held = self.held_windows.get(stream_id)
        if disable:
            if held is None:
                self.held_windows[stream_id] = [1, 0]
            else:
                held[0] += 1
        elif held is not None:
            held[0] -= 1
            if held[0] <= 0:
                del self.held_windows[stream_id]
                self.session.consume(stream_id, held[1])
                if not self.corked:
                    self.flush()

    # --- the session's callbacks (tulle.http.http2_codec) --------------
    @cython.locals(stream=ActiveStream)
    def on_h2_headers(self, stream_id: int, fields: list[tuple[str, str]], end_stream: bool) -> None:
        stream = self.h2_streams.get(stream_id)
        if stream is not None:
            # trailers: nghttp2 delivers them only with END_STREAM; they end the request
            stream.request_complete = True
            stream.info.last_downstream_rx_monotonic = _monotonic()
            if stream.done:
                return
            if stream.response_complete:
                self.stream_finished(stream)
            else:
                stream.decode_trailers(HeaderMap.of([item for item in fields if item[0][0] != ":"]))
            return
        if self.close_when_done:
            self.session.reset_stream(stream_id, 7)  # REFUSED_STREAM: past our GOAWAY
            return
        self._new_stream(stream_id, fields, end_stream)

    def on_h2_headers_too_large(self, stream_id: int) -> None:
        # Envoy resets a stream whose headers exceed max_request_headers_kb / max_headers_count
        self.config.stats.downstream_rq_too_large.value += 1

    @cython.locals(stream=ActiveStream, size=cython.Py_ssize_t)
    def on_h2_data(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        stream = self.h2_streams.get(stream_id)
        size = len(data)
        if stream is None or stream.done:
            self.session.consume(stream_id, size)  # nobody reads it: the window goes straight back
            return
        if size:
            stream.last_activity = self.last_activity
            stream.info.bytes_received += size
            stream.decode_data(data, False)
            held = self.held_windows.get(stream_id)
            if held is None:
                self.session.consume(stream_id, size)  # forwarded: the client may send as much again
            else:
                held[1] += size  # the stream is read-disabled: its window comes back when it resumes
        if end_stream:
            stream.request_complete = True
            stream.info.last_downstream_rx_monotonic = _monotonic()
            if stream.done:
                return
            if stream.response_complete:
                self.stream_finished(stream)
            elif not stream.end_stream_at_headers:
                stream.decode_data(b"", True)

    @cython.locals(stream=ActiveStream)
    def on_h2_stream_close(self, stream_id: int, error_code: int) -> None:
        self.write_paused_streams.discard(stream_id)
        self.held_windows.pop(stream_id, None)
        stream = self.h2_streams.pop(stream_id, None)
        if stream is None or stream.done:
            return
        # the client reset the stream (or the session did, for a protocol violation)
        stream.info.add_flag(flags.DOWNSTREAM_REMOTE_RESET)
        self.config.stats.downstream_rq_rx_reset.value += 1
        self._finalize(stream)

    def on_h2_ping_ack(self) -> None:
        if self.ping_outstanding:
            self.ping_outstanding = False
            if self.keepalive_timer is not None:
                self.keepalive_timer.cancel()
            self._schedule_ping()

    # --- connection_keepalive (Envoy's): a PING every interval; no ACK within timeout closes ---
    def _schedule_ping(self) -> None:
        interval, _, jitter = self.config.http2_keepalive
        self.keepalive_timer = self.loop.call_later(interval * (1.0 + jitter * _random()), self._send_ping)

    def _send_ping(self) -> None:
        if self.closed:
            return
        self.ping_outstanding = True
        self.session.ping()
        if not self.corked:
            self.flush()
        self.keepalive_timer = self.loop.call_later(self.config.http2_keepalive[1], self._ping_timed_out)

    def _ping_timed_out(self) -> None:
        self.keepalive_timer = None
        if self.closed or not self.ping_outstanding:
            return
        self.config.stats.http2_keepalive_timeout.value += 1
        self.close_when_done = True
        self.session.goaway(NO_ERROR)
        self.flush()
        self.transport.abort()  # type: ignore[union-attr] # the peer is gone or stuck: do not wait for it

    def on_h2_goaway(self, last_stream_id: int, error_code: int) -> None:
        self.close_when_done = True  # the client is going away: finish what is open, take nothing new

    # --- a new request stream ------------------------------------------
    @cython.locals(info=StreamInfo, headers=HeaderMap, stream=ActiveStream, items=list, item=tuple, name=str,
                   request_id_seen=cython.bint, forwarded_proto_seen=cython.bint, envoy_seen=cython.bint,
                   expect=cython.bint)
    def _new_stream(self, stream_id: int, fields: list[tuple[str, str]], end_stream: bool) -> None:
        """A request's HEADERS: nghttp2 has checked the pseudo-headers (:method, :scheme, :path;
        :authority or Host) and refused connection-specific headers."""
        config = self.config
        method = path = authority = ""
        scheme = "http"
        cookies = None
        expect = False
        request_id_seen = forwarded_proto_seen = envoy_seen = False
        items = [None, None, None, None]
        for item in fields:
            name = item[0]
            if name[0] == ":":
                if name == ":method":
                    method = item[1]
                elif name == ":path":
                    path = item[1]
                elif name == ":authority":
                    authority = item[1]
                elif name == ":scheme":
                    scheme = item[1]
                continue
            if name == "host":
                if not authority:
                    authority = item[1]
                continue
            if name == "expect" and item[1].lower() == "100-continue":
                expect = True  # answered here, as on HTTP/1 (Envoy's HCM: proxy_100_continue off)
                continue
            if name == "cookie":
                # HTTP/2 may split the Cookie header into crumbs; HTTP/1 needs them as one (RFC 9113 8.2.3)
                if cookies is None:
                    cookies = []
                cookies.append(item[1])
                continue
            if name[0] == "x":
                if name == "x-request-id":
                    request_id_seen = True
                elif name == "x-forwarded-proto":
                    forwarded_proto_seen = True
                elif name.startswith("x-envoy-"):
                    envoy_seen = True
            items.append(item)
        if cookies is not None:
            items.append(("cookie", "; ".join(cookies)))
        items[0] = (":method", method)
        items[1] = (":path", path)
        items[2] = (":authority", authority)
        items[3] = (":scheme", scheme)
        info = StreamInfo(self.remote_str, self.local_str)
        info.protocol = "HTTP/2"
        headers = HeaderMap.of(items)
        stream = ActiveStream(self, headers, info)
        stream.codec_stream_id = stream_id
        info.request_headers = headers
        stream.is_head = method == "HEAD"
        stream.end_stream_at_headers = end_stream
        stream.request_complete = end_stream
        if end_stream:
            info.last_downstream_rx_monotonic = _monotonic()
        self.h2_streams[stream_id] = stream
        stats = config.stats
        stats.downstream_rq_total.value += 1
        stats.downstream_rq_http2_total.value += 1
        stats.downstream_rq_active.value += 1
        stream.has_envoy_headers = envoy_seen
        error = None
        if not authority:
            error = (400, "missing_host_header")
        else:
            try:
                _check_authority(authority)
            except CodecError as exc:
                error = (exc.status, exc.details)
        if method == "CONNECT":
            error = (403, "upgrade_failed")  # CONNECT tunnels (upgrade_configs) are not configured
        self._prepare_request(stream, headers, request_id_seen, forwarded_proto_seen)
        if config.normalize_host:
            config.route_table.normalize_host(headers)
        if error is not None:
            stream.error_reply = (*error, b"")
        elif expect and not end_stream:
            self.session.submit_headers(stream_id, [(":status", "100")], False)
        stream.dispatch()

    # --- the codec's half of a response --------------------------------
    @cython.locals(items=list, item=tuple, end=cython.bint)
    def encode_response_head(self, stream: ActiveStream, status: int, headers: HeaderMap, end_stream: bool) -> bool:
        items = [(":status", str(status))]
        if headers.wire is not None:
            headers._decode()  # an HTTP/1 upstream's head, still in wire form
        for item in headers._items:
            if item[0][0] != ":" and item[0] not in _CONNECTION_SPECIFIC:
                items.append(item)
        end = end_stream or stream.is_head or status in (204, 304)
        if stream.done or self.closed:
            return end
        self.session.submit_headers(stream.codec_stream_id, items, end)
        if not self.corked:
            self.flush()
        return end

    @cython.locals(buffered=cython.Py_ssize_t)
    def encode_response_body(self, stream: ActiveStream, data: bytes, end_stream: bool) -> None:
        if stream.is_head or self.closed:
            return
        buffered = self.session.send_data(stream.codec_stream_id, data, end_stream)
        if buffered > self.config.buffer_limit and stream.codec_stream_id not in self.write_paused_streams:
            # the client's window is closed and this stream's DATA piles up: stop its upstream
            self.write_paused_streams.add(stream.codec_stream_id)
            self.config.stats.downstream_flow_control_paused_reading_total.value += 1
            _tell_filters(stream, "on_downstream_pause_writing")
        if not self.corked:
            self.flush()

    @cython.locals(items=list, item=tuple)
    def encode_response_trailers(self, stream: ActiveStream, trailers: HeaderMap) -> None:
        if stream.is_head or self.closed:
            return
        items = [item for item in trailers._items if item[0][0] != ":" and item[0] not in _CONNECTION_SPECIFIC]
        if items:
            self.session.send_trailers(stream.codec_stream_id, items)
        else:
            self.session.send_data(stream.codec_stream_id, b"", True)  # empty trailers: END_STREAM on DATA
        if not self.corked:
            self.flush()

    def should_close_after(self, stream: ActiveStream) -> bool:
        return False  # streams end, the connection stays (GOAWAY ends it)

    def stream_finished(self, stream: ActiveStream, reset: bool = False) -> None:
        if stream.done:
            return
        stream_id = stream.codec_stream_id
        if reset:
            self.session.reset_stream(stream_id, NO_ERROR)  # Envoy's code for a local reset
        elif not stream.request_complete and self.session.buffered(stream_id) == 0:
            # The response is complete before the request: once it is out, RST_STREAM(NO_ERROR)
            # tells the client to stop sending (RFC 9113 section 8.1). nghttp2 sends a reset ahead of
            # queued frames, so the response leaves first. (With DATA still waiting for the client's
            # window, the stream stays half-closed instead and later DATA is discarded.)
            self.resets_after_output.append(stream_id)
        self.h2_streams.pop(stream_id, None)
        self.write_paused_streams.discard(stream_id)
        self.held_windows.pop(stream_id, None)
        self._finalize(stream)
        if self.closed:
            return
        if not self.corked:
            self.flush()
        if not self.h2_streams:
            if self.close_when_done:
                self.close_transport()
                return
            self._arm_timer(self._next_deadline())

    def protocol_error(self, status: int, details: str) -> None:
        """A connection-level violation: nghttp2 queued a GOAWAY; send it, then close."""
        self.config.stats.downstream_cx_protocol_error.value += 1
        self.parse_failed = True
        self.close_when_done = True
        self.close_transport()

    # --- output --------------------------------------------------------
    def flush(self) -> None:
        """Write every frame the session has ready (one write), and resume streams whose DATA drained."""
        if self.closed or self.receiving:
            return  # nghttp2 must not send from inside its receive callbacks: data_received flushes after
        data = self.session.take_output()
        if self.resets_after_output:
            for stream_id in self.resets_after_output:
                self.session.reset_stream(stream_id, NO_ERROR)
            self.resets_after_output = []
            data += self.session.take_output()
        if data:
            self.write(data)
        if self.write_paused_streams and self.session.drained:
            self.session.drained = False
            self._resume_drained_streams()

    @cython.locals(stream=ActiveStream)
    def _resume_drained_streams(self) -> None:
        low = self.config.buffer_limit // 2
        for stream_id in list(self.write_paused_streams):
            if self.session.buffered(stream_id) <= low:
                self.write_paused_streams.discard(stream_id)
                stream = self.h2_streams.get(stream_id)
                if stream is not None:
                    self.config.stats.downstream_flow_control_resumed_reading_total.value += 1
                    _tell_filters(stream, "on_downstream_resume_writing")

    def uncork(self) -> None:
        self.corked = False
        self.flush()
        HttpConnection.uncork(self)

    def close_transport(self) -> None:
        self.flush()
        HttpConnection.close_transport(self)

    def drain(self) -> None:
        """Envoy's drain: GOAWAY (no new streams), finish the open ones, then close."""
        if self.closed or self.transport is None:
            return
        if not self.close_when_done:
            self.close_when_done = True
            self.session.goaway(NO_ERROR)
            self.flush()
        if not self.h2_streams:
            self.config.stats.downstream_cx_drain_close.value += 1
            self.close_transport()

    # --- timers and back-pressure: every open stream's, not just the first ---
    def _timed_streams(self) -> list[ActiveStream]:
        return list(self.h2_streams.values())

    def _close_idle(self) -> None:
        self.config.stats.downstream_cx_idle_timeout.value += 1
        self.close_when_done = True
        self.session.goaway(NO_ERROR)
        self.close_transport()
