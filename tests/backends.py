"""Loopback backends and a raw HTTP/1.1 client for the proxy integration tests.

What these tests check is the proxy's framing, so the client speaks raw bytes
(http.client would hide chunking, close-delimited bodies and pipelining) and the
misbehaving backends are plain sockets: they close before answering, reset,
never answer, answer with a close-delimited body or read their request slowly.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy_harness import ProxyProcess, free_port, http_listener
from tulle.samples.echo_server import start_in_thread

Headers = Iterable[tuple[str, str]]
READ_SIZE = 256 * 1024


# --------------------------------------------------------------------------- wire parsing


@dataclass
class Message:
    """One parsed HTTP/1.x request or response, with its raw head for exact checks."""

    start_line: str
    headers: list[tuple[str, str]]  # names lower-cased, order and repeats kept
    body: bytes
    head: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def header_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    @property
    def status(self) -> int:
        return int(self.start_line.split(" ", 2)[1])

    @property
    def version(self) -> str:
        return self.start_line.split(" ", 1)[0]

    @property
    def method(self) -> str:
        return self.start_line.split(" ", 1)[0]

    @property
    def target(self) -> str:
        return self.start_line.split(" ", 2)[1]

    def json(self) -> Any:
        return json.loads(self.body)


class Reader:
    """Buffered reads from a blocking socket: heads, exact lengths, chunked bodies, EOF."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(READ_SIZE)
        if not data:
            return False
        self.buffer += data
        return True

    def read_head(self) -> bytes | None:
        """Bytes up to and including the blank line; None on a clean EOF before any byte."""
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buffer[: end + 4])
                del self.buffer[: end + 4]
                return head
            if not self._fill():
                if self.buffer:
                    raise ConnectionError(f"EOF inside a head: {bytes(self.buffer[:200])!r}")
                return None

    def read_line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 2]
                return line
            if not self._fill():
                raise ConnectionError("EOF inside a line")

    def read_exact(self, size: int) -> bytes:
        parts = []
        taken = min(size, len(self.buffer))
        if taken:
            parts.append(bytes(self.buffer[:taken]))
            del self.buffer[:taken]
        remaining = size - taken
        while remaining:
            data = self.sock.recv(min(remaining, READ_SIZE))
            if not data:
                raise ConnectionError(f"EOF with {remaining} of {size} bytes missing")
            parts.append(data)
            remaining -= len(data)
        return b"".join(parts)

    def read_chunked(self) -> bytes:
        parts = []
        while True:
            size = int(self.read_line().split(b";")[0], 16)
            if size == 0:
                while self.read_line():  # trailers end with an empty line
                    pass
                return b"".join(parts)
            parts.append(self.read_exact(size))
            if self.read_line() != b"":
                raise ConnectionError("chunk not followed by CRLF")

    def read_to_eof(self) -> bytes:
        parts = [bytes(self.buffer)]
        self.buffer.clear()
        while True:
            data = self.sock.recv(READ_SIZE)
            if not data:
                return b"".join(parts)
            parts.append(data)


def parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
    return lines[0], headers


def _is_chunked(headers: list[tuple[str, str]]) -> bool:
    return any(name == "transfer-encoding" and "chunked" in value.lower() for name, value in headers)


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    for name, value in headers:
        if name == "content-length":
            return int(value)
    return None


def read_response(reader: Reader, *, head_request: bool = False) -> Message | None:
    """The next response (interim 1xx ones included); None on EOF before it starts."""
    head = reader.read_head()
    if head is None:
        return None
    start_line, headers = parse_head(head)
    status = int(start_line.split(" ", 2)[1])
    if head_request or status < 200 or status in (204, 304):
        body = b""
    elif _is_chunked(headers):
        body = reader.read_chunked()
    elif (length := _content_length(headers)) is not None:
        body = reader.read_exact(length)
    else:
        body = reader.read_to_eof()  # close-delimited
    return Message(start_line, headers, body, head)


def read_request(reader: Reader) -> Message | None:
    head = reader.read_head()
    if head is None:
        return None
    start_line, headers = parse_head(head)
    if _is_chunked(headers):
        body = reader.read_chunked()
    else:
        body = reader.read_exact(_content_length(headers) or 0)
    return Message(start_line, headers, body, head)


def encode_request(method: str = "GET", path: str = "/", headers: Headers = (), body: bytes | None = None,
                   *, host: str | None = "example.com", version: str = "HTTP/1.1") -> bytes:
    headers = list(headers)
    lines = [f"{method} {path} {version}"]
    if host is not None:
        lines.append(f"host: {host}")
    lines += [f"{name}: {value}" for name, value in headers]
    names = {name.lower() for name, _ in headers}
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def chunked_body(data: bytes, piece: int = 64 * 1024) -> bytes:
    out = [b"%x\r\n%b\r\n" % (len(data[i:i + piece]), data[i:i + piece]) for i in range(0, len(data), piece)]
    return b"".join(out) + b"0\r\n\r\n"


# --------------------------------------------------------------------------- client


class Client:
    """One raw client connection to the proxy."""

    def __init__(self, port: int, timeout: float = 15.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.reader = Reader(self.sock)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request(self, method: str = "GET", path: str = "/", headers: Headers = (), body: bytes | None = None,
                **kwargs: Any) -> Message:
        self.send(encode_request(method, path, headers, body, **kwargs))
        return self.response(head_request=method == "HEAD")

    def response(self, *, head_request: bool = False) -> Message:
        response = read_response(self.reader, head_request=head_request)
        if response is None:
            raise ConnectionError("the proxy closed the connection instead of answering")
        return response

    def closed_by_peer(self) -> bool:
        """True when the proxy has closed (EOF or reset) with nothing more to read."""
        if self.reader.buffer:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def reset(self) -> None:
        """Close with RST, as a client that crashes does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close(self) -> None:
        self.sock.close()


def get(port: int, path: str = "/", headers: Headers = (), **kwargs: Any) -> Message:
    """One request on a fresh connection."""
    with Client(port) as client:
        return client.request("GET", path, headers, **kwargs)


# --------------------------------------------------------------------------- backends


class BackendConnection:
    def __init__(self, sock: socket.socket, backend: RawBackend) -> None:
        self.sock = sock
        self.reader = Reader(sock)
        self.backend = backend

    def read_request(self) -> Message | None:
        try:
            request = read_request(self.reader)
        except (ConnectionError, OSError):
            return None
        if request is not None:
            self.backend.record(request)
        return request

    def wait_for_peer_close(self) -> None:
        """Block until the proxy closes this connection (or the backend stops)."""
        self.sock.settimeout(0.1)
        while not self.backend.stopped.is_set():
            try:
                if self.sock.recv(READ_SIZE) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
        with self.backend.lock:
            self.backend.peer_closes += 1

    def reset(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


Handler = Callable[[BackendConnection], None]


class RawBackend:
    """A loopback TCP server running ``handler`` on its own thread for every connection."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.connections = 0
        self.peer_closes = 0
        self.requests: list[Message] = []
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def __enter__(self) -> RawBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def record(self, request: Message) -> None:
        with self.lock:
            self.requests.append(request)

    def _accept_loop(self) -> None:
        while not self.stopped.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            with self.lock:
                self.connections += 1
                self._sockets.append(sock)
            threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.handler(BackendConnection(sock, self))
        with contextlib.suppress(OSError):
            sock.close()

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()
        with self.lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(5)


def encode_response(status: int, headers: Headers = (), body: bytes = b"", *, add_length: bool = True,
                    reason: str = "X") -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{name}: {value}" for name, value in headers]
    if add_length:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def respond(status: int = 200, headers: Headers = (), body: bytes = b"", *, add_length: bool = True) -> Handler:
    """Answer every request on the connection with the same response (keep-alive)."""
    payload = encode_response(status, headers, body, add_length=add_length)

    def handler(conn: BackendConnection) -> None:
        while conn.read_request() is not None:
            conn.sock.sendall(payload)

    return handler


def close_after_request(conn: BackendConnection) -> None:
    """Read the request, then close without a byte of response (Envoy: UC)."""
    conn.read_request()


def reset_after_request(conn: BackendConnection) -> None:
    """Read the request, then close with a TCP RST (Envoy: UR)."""
    conn.read_request()
    conn.reset()


def never_answer(conn: BackendConnection) -> None:
    """Read the request and keep the connection open without answering, until the proxy closes it."""
    conn.read_request()
    conn.wait_for_peer_close()


def close_delimited(body: bytes, piece: int = 16 * 1024) -> Handler:
    """Answer without content-length or chunking; the end of the body is the end of the connection."""

    def handler(conn: BackendConnection) -> None:
        conn.read_request()
        conn.sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\r\n")
        for start in range(0, len(body), piece):
            conn.sock.sendall(body[start:start + piece])

    return handler


class SlowReader:
    """Reads a request head, then does not read the body until ``release`` is set;
    answers with the body length it got."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.head_seen = threading.Event()

    def __call__(self, conn: BackendConnection) -> None:
        head = conn.reader.read_head()
        if head is None:
            return
        self.head_seen.set()
        self.release.wait(30)
        _, headers = parse_head(head)
        if _is_chunked(headers):
            received = len(conn.reader.read_chunked())
        else:
            received = len(conn.reader.read_exact(_content_length(headers) or 0))
        body = json.dumps({"body_length": received}).encode()
        conn.sock.sendall(encode_response(200, [("content-type", "application/json")], body))


@contextlib.contextmanager
def echo_backend(name: str = "echo") -> Iterator[int]:
    """tulle.samples.echo_server on an ephemeral port."""
    server = start_in_thread(name)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


class RecordingSocket(socket.socket):
    """An accepted connection that records the writes and socket options of its handler."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes = 0
        self.options: set[tuple[int, int, Any]] = set()

    def setsockopt(self, level: int, option: int, value: Any, *rest: Any) -> None:
        self.options.add((level, option, bool(value)))
        super().setsockopt(level, option, value, *rest)

    def send(self, data: Any, *args: Any) -> int:
        self.writes += 1
        return super().send(data, *args)

    def sendall(self, data: Any, *args: Any) -> None:
        self.writes += 1
        super().sendall(data, *args)


def handle_one_connection(server: Any) -> tuple[list[RecordingSocket], threading.Thread]:
    """Accept one connection on ``server`` and run its request handler over a RecordingSocket."""
    accepted: list[RecordingSocket] = []

    def run() -> None:
        connection, address = server.socket.accept()
        recording = RecordingSocket(connection.family, connection.type, fileno=connection.detach())
        accepted.append(recording)
        with recording:
            server.RequestHandlerClass(recording, address, server)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return accepted, thread


# --------------------------------------------------------------------------- proxy config and observation


def bootstrap(listeners: list[dict[str, Any]], clusters: list[dict[str, Any]]) -> dict[str, Any]:
    return {"static_resources": {"listeners": listeners, "clusters": clusters}}


def file_access_log(path: Path, text_format: str) -> list[dict[str, Any]]:
    """An HCM ``access_log`` list with one file logger using ``text_format``."""
    return [{"name": "envoy.access_loggers.file", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
        "path": str(path),
        "log_format": {"text_format_source": {"inline_string": text_format}},
    }}]


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02) -> Any:
    """Poll ``predicate`` until it returns something truthy; returns its last value."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def read_lines(path: Path, count: int, timeout: float = 15.0) -> list[str]:
    """The file's lines once it has at least ``count`` (access logs flush about once a second)."""

    def lines() -> list[str]:
        if not path.exists():
            return []
        found = path.read_text().splitlines()
        return found if len(found) >= count else []

    return wait_until(lines, timeout) or (path.read_text().splitlines() if path.exists() else [])


def proc_status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status such as VmRSS or VmHWM."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def child_pids(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as children:
        return [int(p) for p in children.read().split()]


def established_on_port(pid: int, port: int) -> int:
    """How many ESTABLISHED TCP sockets with local ``port`` the process ``pid`` holds."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            target = os.readlink(f"{fd_dir}/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    # a set: the kernel lists its tables a page at a time, so a socket can show twice while others churn
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01" and fields[9] in inodes:
                    established.add(fields[9])
    return len(established)


ProxyContext = contextlib.AbstractContextManager[tuple[ProxyProcess, int]]


@contextlib.contextmanager
def http_proxy(tmp_path: Path, route_config: dict[str, Any], clusters: list[dict[str, Any]], *,
               concurrency: int = 1, **hcm: Any) -> Iterator[tuple[ProxyProcess, int]]:
    """A running proxy with one HTTP listener named ``ingress`` (stat prefix ``ingress``); yields (proxy, port)."""
    port = free_port()
    config = bootstrap([http_listener("ingress", port, route_config, **hcm)], clusters)
    with ProxyProcess(config, tmp_path, concurrency=concurrency) as proxy:
        yield proxy, port
