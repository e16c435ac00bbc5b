"""A small HTTP/1.1 backend for the demo and the integration tests.

``python -m tulle.samples.echo_server --port 8081 --name v1`` serves:
- ``/status/<code>``: that status; ``/bytes/<n>``: n bytes; ``/delay/<ms>``: answers after ms;
- ``/chunked/<n>``: n bytes in chunked encoding; ``/close``: answers then closes;
- anything else: a JSON echo of method, path, headers, body length and the server's name.
Keep-alive, Content-Length and chunked request bodies are handled by http.server.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_name_label = "echo"
    # One write per response: the head and a small body leave in one segment (the buffer is
    # flushed after each request), and TCP_NODELAY sends it at once. Written separately, the body
    # waited for the client's delayed ACK of the head (Nagle): ~40 ms per keep-alive request.
    wbufsize = -1
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet by default
        pass

    def handle_expect_100(self) -> bool:
        accepted = super().handle_expect_100()
        self.wfile.flush()  # the interim response cannot wait in the buffer for the final one
        return accepted

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, content_type: str = "application/json", close: bool = False) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("x-served-by", self.server.label)  # type: ignore[attr-defined]
        if close:
            self.send_header("connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        body = self._read_body()
        parts = self.path.split("?")[0].strip("/").split("/")
        head = parts[0]
        if head == "status" and len(parts) > 1:
            self._send(int(parts[1]), b"status %s\n" % parts[1].encode(), "text/plain")
        elif head == "bytes" and len(parts) > 1:
            self._send(200, b"x" * int(parts[1]), "application/octet-stream")
        elif head == "delay" and len(parts) > 1:
            time.sleep(int(parts[1]) / 1000)
            self._send(200, b"delayed\n", "text/plain")
        elif head == "close":
            self._send(200, b"bye\n", "text/plain", close=True)
        elif head == "chunked" and len(parts) > 1:
            self.send_response(200)
            self.send_header("transfer-encoding", "chunked")
            self.send_header("x-served-by", self.server.label)  # type: ignore[attr-defined]
            self.end_headers()
            remaining = int(parts[1])
            while remaining > 0:
                piece = min(remaining, 1000)
                self.wfile.write(b"%x\r\n%s\r\n" % (piece, b"y" * piece))
                remaining -= piece
            self.wfile.write(b"0\r\n\r\n")
        else:
            echo = {
                "server": self.server.label,  # type: ignore[attr-defined]
                "method": self.command,
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body_length": len(body),
            }
            self._send(200, json.dumps(echo).encode() + b"\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


def serve(port: int, name: str, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), EchoHandler)
    server.daemon_threads = True
    server.label = name  # type: ignore[attr-defined]
    return server


def start_in_thread(name: str = "echo", port: int = 0) -> ThreadingHTTPServer:
    server = serve(port, name)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tulle.samples.echo_server", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="echo")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()
    try:
        server = serve(args.port, args.name, args.host)
    except OSError as exc:  # the port is taken: say which, no traceback
        raise SystemExit(f"{parser.prog}: error: {args.name} cannot listen on {args.host}:{args.port}: "
                         f"{exc.strerror or exc}") from None
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
