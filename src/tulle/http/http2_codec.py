"""HTTP/2 framing, uncompiled: the pure-Python peer of http2_codec.pyx, on the ``h2`` library.

Loaded only with TULLE_PURE_PYTHON=1 (debugging, profiling in Python, a machine without a C
compiler); the compiled build calls libnghttp2 instead (read http2_codec.pyx for the contract:
``receive`` what was read, write what ``take_output`` returns; the connection is called back
through ``CodecCallbacks``' ``on_h2_*`` methods). The same API and the same callbacks, with two
differences that are the libraries': nghttp2's flood limits (PING/SETTINGS floods, CONTINUATION
floods, rapid reset) have no h2 equivalent, and a header block h2 finds malformed ends the
connection rather than only its stream.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame

from tulle.http.http2_options import Http2Settings

NO_ERROR = 0
PROTOCOL_ERROR = 1
INTERNAL_ERROR = 2
FLOW_CONTROL_ERROR = 3
REFUSED_STREAM = 7
CANCEL = 8
ENHANCE_YOUR_CALM = 11

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_DEFAULT_WINDOW = 65535


class Http2Error(Exception):
    """The peer broke the protocol at connection level: a GOAWAY with ``error_code`` is queued;
    close after writing ``take_output()``."""

    def __init__(self, details: str, error_code: int = PROTOCOL_ERROR) -> None:
        super().__init__(details)
        self.details = details
        self.error_code = error_code


class _Closed:
    """The owner of a closed session: whatever h2 still reports goes nowhere."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args: None


class _OutStream:
    __slots__ = ("chunks", "buffered", "ended", "trailers")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.ended = False
        self.trailers: list[tuple[str, str]] | None = None


class _Connection(h2.connection.H2Connection):
    """h2's connection, except that a header list over our advertised limit resets only its stream
    (as nghttp2 does, by the session's own count) instead of failing the whole connection."""

    def _local_settings_acked(self):  # noqa: ANN202 - h2's private hook
        changes = super()._local_settings_acked()
        self.decoder.max_header_list_size = self.DEFAULT_MAX_HEADER_LIST_SIZE
        return changes


def _encode(items: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in items]


def _decode(headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]


class Http2Session:
    """One HTTP/2 connection's framing state (see the module docstring)."""

    def __init__(self, owner: Any, server: bool, settings: Http2Settings) -> None:
        self.owner = owner
        self.server = server
        self.settings = settings
        self.outgoing: dict[int, _OutStream] = {}
        self.drained = False
        self._ended: set[int] = set()  # streams whose end was reported to the owner
        self._closed_streams: list[tuple[int, int]] = []  # (stream id, code) reset by us, reported after output
        self.closed = False
        config = h2.config.H2Configuration(client_side=not server, header_encoding=None,
                                           validate_outbound_headers=False, normalize_inbound_headers=False)
        self.conn = _Connection(config=config)
        initial = {
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: settings.initial_stream_window_size,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_bytes,
        }
        if not server:
            initial[h2.settings.SettingCodes.ENABLE_PUSH] = 0
        if settings.hpack_table_size != 4096:
            initial[h2.settings.SettingCodes.HEADER_TABLE_SIZE] = settings.hpack_table_size
        self.conn.local_settings = h2.settings.Settings(client=not server, initial_values=initial)
        self.conn.initiate_connection()
        if settings.initial_connection_window_size > _DEFAULT_WINDOW:
            self.conn.increment_flow_control_window(settings.initial_connection_window_size - _DEFAULT_WINDOW)

    def close(self) -> None:
        """Let go of the connection (they refer to each other); the session sends nothing more."""
        self.owner = _Closed()
        self.outgoing = {}
        self.closed = True

    # --- input ---------------------------------------------------------
    def receive(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            code = int(getattr(exc, "error_code", PROTOCOL_ERROR) or PROTOCOL_ERROR)
            try:
                self.conn.close_connection(error_code=code)
            except h2.exceptions.ProtocolError:
                pass  # the state machine is already closed: nothing more can be sent
            raise Http2Error(str(exc) or type(exc).__name__, code) from None
        for event in events:
            self._dispatch(event)

    def _dispatch(self, event: object) -> None:
        owner = self.owner
        if isinstance(event, (h2.events.RequestReceived, h2.events.ResponseReceived,
                              h2.events.InformationalResponseReceived, h2.events.TrailersReceived)):
            stream_id = event.stream_id
            ended = isinstance(event, h2.events.TrailersReceived) or event.stream_ended is not None
            fields = _decode(event.headers)
            if len(fields) > self.settings.max_headers or (
                    sum(len(name) + len(value) for name, value in fields) > self.settings.max_header_bytes):
                owner.on_h2_headers_too_large(stream_id)
                self.reset_stream(stream_id, INTERNAL_ERROR)
                return
            if ended:
                self._ended.add(stream_id)
            owner.on_h2_headers(stream_id, fields, ended)
        elif isinstance(event, h2.events.DataReceived):
            if event.data:
                owner.on_h2_data(event.stream_id, event.data, False)
            padding = event.flow_controlled_length - len(event.data)
            if padding:
                self.conn.acknowledge_received_data(padding, event.stream_id)
            if event.stream_ended is not None and event.stream_id not in self._ended:
                self._ended.add(event.stream_id)
                owner.on_h2_data(event.stream_id, b"", True)
        elif isinstance(event, h2.events.StreamEnded):
            if event.stream_id not in self._ended:
                self._ended.add(event.stream_id)
                owner.on_h2_data(event.stream_id, b"", True)
        elif isinstance(event, h2.events.StreamReset):
            self.outgoing.pop(event.stream_id, None)
            self._ended.discard(event.stream_id)
            owner.on_h2_stream_close(event.stream_id, int(event.error_code))
        elif isinstance(event, h2.events.PingAckReceived):
            owner.on_h2_ping_ack()
        elif isinstance(event, h2.events.ConnectionTerminated):
            owner.on_h2_goaway(event.last_stream_id or 0, int(event.error_code))

    # --- output --------------------------------------------------------
    def take_output(self) -> bytes:
        if self.closed:
            return b""
        for stream_id in list(self.outgoing):
            self._send_pending(stream_id)
        data = self.conn.data_to_send()
        closed, self._closed_streams = self._closed_streams, []
        for stream_id, code in closed:
            self.owner.on_h2_stream_close(stream_id, code)
        return data

    def _send_pending(self, stream_id: int) -> None:
        """Frame the stream's queued DATA as far as the windows allow, then its end or trailers."""
        out = self.outgoing[stream_id]
        conn = self.conn
        while out.chunks:
            try:
                window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            except h2.exceptions.StreamClosedError:
                del self.outgoing[stream_id]
                return
            if window <= 0:
                return
            chunk = out.chunks[0]
            piece = chunk[:window]
            if len(piece) == len(chunk):
                out.chunks.pop(0)
            else:
                out.chunks[0] = chunk[window:]
            out.buffered -= len(piece)
            self.drained = True
            last = out.ended and not out.chunks and out.trailers is None
            conn.send_data(stream_id, piece, end_stream=last)
            if last:
                del self.outgoing[stream_id]
                return
        if out.ended:
            if out.trailers is not None:
                conn.send_headers(stream_id, _encode(out.trailers), end_stream=True)
            else:
                conn.end_stream(stream_id)
            del self.outgoing[stream_id]

    def wants_io(self) -> bool:
        if self.closed:
            return False
        return self.conn.state_machine.state != h2.connection.ConnectionState.CLOSED

    def submit_headers(self, stream_id: int, items: list[tuple[str, str]], end_stream: bool) -> None:
        if self.closed:
            return
        informational = bool(items) and items[0][0] == ":status" and items[0][1][:1] == "1"
        self.conn.send_headers(stream_id, _encode(items), end_stream=end_stream and not informational)
        if not end_stream and not informational:
            self.outgoing[stream_id] = _OutStream()

    def submit_request(self, items: list[tuple[str, str]], end_stream: bool) -> int:
        if self.closed:
            raise Http2Error("the session is closed")
        stream_id = self.conn.get_next_available_stream_id()
        self.conn.send_headers(stream_id, _encode(items), end_stream=end_stream)
        if not end_stream:
            self.outgoing[stream_id] = _OutStream()
        return stream_id

    def send_data(self, stream_id: int, data: bytes, end_stream: bool) -> int:
        if self.closed:
            return 0
        out = self.outgoing.get(stream_id)
        if out is None:
            return 0
        if data:
            out.chunks.append(data)
            out.buffered += len(data)
        if end_stream:
            out.ended = True
        return out.buffered

    def send_trailers(self, stream_id: int, items: list[tuple[str, str]]) -> None:
        out = self.outgoing.get(stream_id)
        if out is not None:
            out.trailers = items
            out.ended = True

    def buffered(self, stream_id: int) -> int:
        out = self.outgoing.get(stream_id)
        return 0 if out is None else out.buffered

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        if self.closed:
            return
        self.outgoing.pop(stream_id, None)
        try:
            self.conn.reset_stream(stream_id, error_code)
        except h2.exceptions.StreamClosedError:
            return  # already closed both ways: nothing to reset
        self._closed_streams.append((stream_id, error_code))

    def consume(self, stream_id: int, size: int) -> None:
        if self.closed:
            return
        if size > 0:
            self.conn.acknowledge_received_data(size, stream_id)  # a closed stream: the connection's window only

    def goaway(self, error_code: int = NO_ERROR) -> None:
        """GOAWAY with the last stream processed. Framed here rather than by h2's close_connection,
        which also closes h2's state machine: the streams already open must still be answered."""
        if self.closed:
            return
        frame = hyperframe.frame.GoAwayFrame(0)
        frame.last_stream_id = self.conn.highest_inbound_stream_id
        frame.error_code = error_code
        self.conn._prepare_for_sending([frame])

    def ping(self) -> None:
        if not self.closed:
            self.conn.ping(b"tulle-ka")


    def remote_max_concurrent_streams(self) -> int:
        """The peer's SETTINGS_MAX_CONCURRENT_STREAMS (unlimited until its SETTINGS arrive)."""
        if self.closed:
            return 0
        return min(int(self.conn.remote_settings.max_concurrent_streams), 0xFFFFFFFF)


def error_name(code: int) -> str:
    """RFC 9113's name for an error code (``PROTOCOL_ERROR``)."""
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return f"unknown error code {code}"
