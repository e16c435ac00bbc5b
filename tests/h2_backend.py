"""A real HTTP/2 (h2c, prior knowledge) origin for tests, on the ``h2`` library and threads.

Every request is answered once it has ended, with a JSON echo of what arrived (method, path,
authority, headers, body length, trailers) unless its path asks for something else:

- ``/trailers``: the echo, then trailers ``grpc-status: 0`` and ``x-trailer: yes``;
- ``/reset``: RST_STREAM(INTERNAL_ERROR) instead of a response;
- ``/refuse``: RST_STREAM(REFUSED_STREAM);
- ``/goaway``: GOAWAY(last stream = this one - 2): this stream is not processed;
- ``/big?n=N``: N bytes of body;
- ``/hold``: no answer until ``release_held()``.

``connections`` counts accepted connections, ``requests`` lists (connection number, stream id, path).
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings


class H2Backend:
    def __init__(self, max_concurrent_streams: int | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.max_concurrent_streams = max_concurrent_streams
        self.connections = 0
        self.requests: list[tuple[int, int, str]] = []
        self.lock = threading.Lock()
        self.held: list[tuple[Any, socket.socket, threading.Lock, int, bytes]] = []
        self.closed = False
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                number = self.connections
                self.sockets.append(sock)
            threading.Thread(target=self._serve, args=(sock, number), daemon=True).start()

    def _serve(self, sock: socket.socket, number: int) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding="latin-1")
        conn = h2.connection.H2Connection(config=config)
        if self.max_concurrent_streams is not None:
            conn.local_settings = h2.settings.Settings(client=False, initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_concurrent_streams})
        conn.initiate_connection()
        write_lock = threading.Lock()
        sock.sendall(conn.data_to_send())
        streams: dict[int, dict[str, Any]] = {}
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                with write_lock:
                    events = conn.receive_data(data)
                for event in events:
                    if isinstance(event, h2.events.RequestReceived):
                        streams[event.stream_id] = {"headers": list(event.headers), "body": b"", "trailers": []}
                    elif isinstance(event, h2.events.DataReceived):
                        streams[event.stream_id]["body"] += event.data
                        with write_lock:
                            conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, h2.events.TrailersReceived):
                        streams[event.stream_id]["trailers"] = list(event.headers)
                    elif isinstance(event, h2.events.StreamEnded):
                        self._answer(conn, sock, write_lock, number, event.stream_id, streams.pop(event.stream_id))
                    elif isinstance(event, h2.events.StreamReset):
                        streams.pop(event.stream_id, None)
                with write_lock:
                    out = conn.data_to_send()
                if out:
                    sock.sendall(out)
        except (OSError, h2.exceptions.ProtocolError):
            return  # the peer went away, or does not speak HTTP/2 (a test's HTTP/1.1 client): hang up
        finally:
            sock.close()

    def _answer(self, conn: Any, sock: socket.socket, lock: threading.Lock, number: int, stream_id: int,
                request: dict[str, Any]) -> None:
        headers = dict(request["headers"])
        path = headers.get(":path", "")
        with self.lock:
            self.requests.append((number, stream_id, path))
        echo = json.dumps({
            "method": headers.get(":method"), "path": path, "authority": headers.get(":authority"),
            "scheme": headers.get(":scheme"), "headers": [list(item) for item in request["headers"]],
            "body_length": len(request["body"]), "trailers": [list(item) for item in request["trailers"]],
            "connection": number,
        }).encode()
        with lock:
            if path == "/reset":
                conn.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            elif path == "/refuse":
                conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            elif path == "/goaway":
                conn.close_connection(last_stream_id=max(stream_id - 2, 0))
            elif path == "/hold":
                self.held.append((conn, sock, lock, stream_id, echo))
                return
            else:
                body = echo
                if path.startswith("/big?n="):
                    body = b"x" * int(path.split("=", 1)[1])
                self._respond(conn, stream_id, body, trailers=path == "/trailers")
            sock.sendall(conn.data_to_send())

    @staticmethod
    def _respond(conn: Any, stream_id: int, body: bytes, trailers: bool = False) -> None:
        conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/json"),
                                      ("x-origin", "h2")])
        offset = 0
        while offset < len(body):
            window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
            if window <= 0:
                break  # the tests' bodies fit the proxy's large windows
            conn.send_data(stream_id, body[offset:offset + window])
            offset += window
        if trailers:
            conn.send_headers(stream_id, [("grpc-status", "0"), ("x-trailer", "yes")], end_stream=True)
        else:
            conn.end_stream(stream_id)

    def release_held(self) -> None:
        held, self.held = self.held, []
        for conn, sock, lock, stream_id, echo in held:
            with lock:
                self._respond(conn, stream_id, echo)
                sock.sendall(conn.data_to_send())

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


@contextmanager
def h2_backend(**options: Any) -> Iterator[H2Backend]:
    backend = H2Backend(**options)
    try:
        yield backend
    finally:
        backend.close()
