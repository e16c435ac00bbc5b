"""A blocking HTTP/2 client over a socket, for tests: the ``h2`` library (pure Python, frame-level
control), so tests can also send what a well-behaved client never would."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions


@dataclass
class H2Response:
    stream_id: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    ended: bool = False
    reset_code: int | None = None
    informational: list[list[tuple[str, str]]] = field(default_factory=list)  # 1xx header blocks

    @property
    def status(self) -> int:
        return int(self.header(":status") or 0)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class H2Client:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 15.0, *,
                 max_inbound_frame_size: int = 16384) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.timeout = timeout
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8", validate_outbound_headers=False,
                                           normalize_outbound_headers=False, validate_inbound_headers=False)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.responses: dict[int, H2Response] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None  # the last GOAWAY
        self.goaways: list[int] = []  # every GOAWAY's error code, in order
        self.closed = False
        self.pings_acked = 0
        self.auto_ack = True  # return flow-control window for DATA as it is read
        self.pings_received = 0
        self.flush()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def send_request(self, method: str = "GET", path: str = "/", headers: list[tuple[str, str]] | tuple = (),
                     body: bytes | None = None, authority: str = "example.com", end_stream: bool | None = None) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        pseudo = [(":method", method), (":scheme", "http"), (":authority", authority), (":path", path)]
        ends = True if end_stream is None else end_stream
        self.conn.send_headers(stream_id, pseudo + list(headers), end_stream=ends and not body)
        self.responses[stream_id] = H2Response(stream_id)
        self.flush()
        if body:
            self.send_body(stream_id, body, end_stream=ends)
        return stream_id

    def send_body(self, stream_id: int, body: bytes, end_stream: bool = True) -> None:
        """Send ``body`` in frames as the peer's windows allow (reading meanwhile)."""
        offset = 0
        while offset < len(body) or end_stream:
            window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if window <= 0 and offset < len(body):
                if not self.pump():
                    return
                continue
            piece = body[offset:offset + window]
            offset += len(piece)
            last = end_stream and offset >= len(body)
            self.conn.send_data(stream_id, piece, end_stream=last)
            self.flush()
            if last:
                return

    def send_some(self, stream_id: int, body: bytes) -> int:
        """Send as much of ``body`` as the windows allow now, without waiting; returns the bytes sent."""
        sent = 0
        while sent < len(body):
            window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
            if window <= 0:
                # read what the server has sent meanwhile (window updates), without blocking long
                self.sock.settimeout(1.0)
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    break
                finally:
                    self.sock.settimeout(self.timeout)
                if not data:
                    break
                for event in self.conn.receive_data(data):
                    self._on_event(event)
                continue
            piece = body[sent:sent + window]
            self.conn.send_data(stream_id, piece)
            self.flush()
            sent += len(piece)
        return sent

    def request(self, method: str = "GET", path: str = "/", headers: list[tuple[str, str]] | tuple = (),
                body: bytes | None = None, authority: str = "example.com") -> H2Response:
        stream_id = self.send_request(method, path, headers, body, authority)
        return self.wait(stream_id)

    def wait(self, stream_id: int) -> H2Response:
        response = self.responses[stream_id]
        while not (response.ended or response.reset_code is not None):
            if not self.pump():
                break
        return response

    def pump(self) -> bool:
        """Read once and process the events; False when the connection closed."""
        if self.closed:
            return False
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.closed = True
            return False
        for event in self.conn.receive_data(data):
            self._on_event(event)
        self.flush()
        return True

    def ping(self) -> bool:
        """True when the peer answers a PING: the connection is alive and being read."""
        self.pings_acked = 0
        self.conn.ping(b"tulle-h2")
        self.flush()
        while not self.pings_acked:
            if not self.pump():
                return False
        return True

    def read_until_closed(self) -> None:
        while self.pump():
            pass

    def _on_event(self, event: object) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.responses[event.stream_id].headers = list(event.headers)
        elif isinstance(event, h2.events.InformationalResponseReceived):
            self.responses[event.stream_id].informational.append(list(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            self.responses[event.stream_id].body += event.data
            if self.auto_ack:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            self.responses[event.stream_id].trailers = list(event.headers)
        elif isinstance(event, h2.events.PingAckReceived):
            self.pings_acked += 1
        elif isinstance(event, h2.events.PingReceived):
            self.pings_received += 1  # h2 answers it (the ACK goes out with the next flush)
        elif isinstance(event, h2.events.StreamEnded):
            self.responses[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            if event.stream_id in self.responses:
                self.responses[event.stream_id].reset_code = int(event.error_code)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
            self.goaways.append(int(event.error_code))
            if event.error_code == 0:
                # RFC 9113 section 6.8: streams up to last_stream_id still complete after a graceful
                # GOAWAY; the h2 library closes its state machine at once, so reopen it to read them
                self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
