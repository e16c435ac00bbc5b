"""HTTP/1.1 wire encoding helpers shared by the downstream and upstream codecs.

Parsing is httptools' job (llhttp); this module only turns Envoy-style header
maps back into HTTP/1.1 head blocks and frames bodies.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate

from tulle.http.headers import HOP_BY_HOP, HeaderMap

REASONS: dict[int, str] = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 202: "Accepted",
    203: "Non-Authoritative Information", 204: "No Content", 205: "Reset Content", 206: "Partial Content",
    300: "Multiple Choices", 301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request", 401: "Unauthorized",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
    409: "Conflict", 410: "Gone", 411: "Length Required", 413: "Payload Too Large", 414: "URI Too Long",
    415: "Unsupported Media Type", 426: "Upgrade Required", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

# Status lines are the same for every response with a given code: build each once.
_STATUS_LINES: dict[int, bytes] = {}


def status_line(code: int) -> bytes:
    line = _STATUS_LINES.get(code)
    if line is None:
        line = f"HTTP/1.1 {code} {REASONS.get(code, 'Unknown')}\r\n".encode("latin-1")
        _STATUS_LINES[code] = line
    return line


_date_cache: list = [0, ""]


def http_date() -> str:
    """RFC 9110 date, recomputed at most once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True)
    return _date_cache[1]


def encode_request_head(headers: HeaderMap, body_framing: bytes) -> bytes:
    """``:method :path`` + headers (:authority -> Host) + our framing header.

    ``body_framing`` is b"" (no body), b"content-length: N\\r\\n" or
    b"transfer-encoding: chunked\\r\\n", decided by the caller.
    """
    method = path = authority = ""
    lines = []
    for name, value in headers:
        if name[0] == ":":
            if name == ":method":
                method = value
            elif name == ":path":
                path = value
            elif name == ":authority":
                authority = value
            continue
        if name in HOP_BY_HOP or name == "content-length" or name == "host":
            continue
        lines.append(f"{name}: {value}\r\n")
    head = f"{method} {path} HTTP/1.1\r\nhost: {authority}\r\n{''.join(lines)}"
    return head.encode("latin-1") + body_framing + b"\r\n"


# Lines an HTTP/1 proxy never forwards, plus the framing it decides itself.
_ALWAYS_STRIPPED = tuple(sorted(HOP_BY_HOP | {"content-length"}))
_strip_cache: dict[tuple[str, ...], re.Pattern[bytes]] = {}


def _strip_pattern(overwritten: tuple[str, ...]) -> re.Pattern[bytes]:
    """One regex removing hop-by-hop lines and the lines of headers that were set() anew."""
    pattern = _strip_cache.get(overwritten)
    if pattern is None:
        names = sorted(set(_ALWAYS_STRIPPED) | set(overwritten))
        alternatives = b"|".join(re.escape(name.encode("latin-1")) for name in names)
        pattern = re.compile(rb"\r\n(?:" + alternatives + rb")[ \t]*:[^\r\n]*", re.I)
        if len(_strip_cache) < 256:
            _strip_cache[overwritten] = pattern
    return pattern


def encode_response_head(status: int, headers: HeaderMap, body_framing: bytes, close: bool) -> bytes:
    tail = b"connection: close\r\n\r\n" if close else b"\r\n"
    wire = headers.wire
    if wire is not None:
        # Pass the upstream's header block through, minus hop-by-hop and overwritten lines.
        sets = headers.wire_sets
        if sets:
            block = _strip_pattern(tuple(sets)).sub(b"", wire)
            block += "".join([f"\r\n{name}: {value}" for name, value in sets.items()]).encode("latin-1")
        else:
            block = _strip_pattern(()).sub(b"", wire)
        return status_line(status)[:-2] + block + b"\r\n" + body_framing + tail
    lines = []
    for name, value in headers:
        if name[0] == ":" or name in HOP_BY_HOP or name == "content-length":
            continue
        lines.append(f"{name}: {value}\r\n")
    return status_line(status) + "".join(lines).encode("latin-1") + body_framing + tail


def content_length_line(length: int) -> bytes:
    return b"content-length: %d\r\n" % length


CHUNKED = b"transfer-encoding: chunked\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)
