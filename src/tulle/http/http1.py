"""HTTP/1.1 wire encoding helpers shared by the downstream and upstream codecs.

Parsing is httptools' job (llhttp); this module only turns Envoy-style header
maps back into HTTP/1.1 head blocks and frames bodies.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate

import cython

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
    if cython.compiled and headers.wire is None:
        head = _encode_request_head_ascii(headers._items, body_framing)
        if head is not None:
            return head
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


# --- compiled only: heads assembled in one C buffer ------------------------------------------------
if not cython.compiled:  # C functions cimported by http1.pxd; only the compiled branches call them
    PyUnicode_IS_ASCII = PyUnicode_AsUTF8AndSize = memcpy = PyMem_Malloc = PyMem_Free = None
    PyBytes_AS_STRING = PyBytes_GET_SIZE = PyBytes_FromStringAndSize = None
# Names and values are str holding latin-1; an ASCII str's bytes are its UTF-8 buffer, which CPython
# keeps inside the object, so these copy them without encoding. A head with any non-ASCII character
# (rare: obs-text) returns None and takes the general path above.

def _ascii(text: str, size: cython.p_Py_ssize_t) -> cython.p_const_char:
    """The bytes of an ASCII ``text`` (NULL when it is not ASCII)."""
    if not PyUnicode_IS_ASCII(text):
        return cython.NULL
    return PyUnicode_AsUTF8AndSize(text, size)


def _name_is(name: cython.p_const_char, length: cython.Py_ssize_t, lower: cython.p_const_char,
             lower_length: cython.Py_ssize_t) -> cython.bint:
    """ASCII case-insensitive ``name == lower`` (``lower`` is lower case); the llhttp binding uses it too."""
    i = cython.declare(cython.Py_ssize_t)
    c = cython.declare(cython.char)
    if length != lower_length:
        return False
    for i in range(length):
        c = name[i]
        if 65 <= c <= 90:
            c += 32
        if c != lower[i]:
            return False
    return True


def _is_hop_by_hop(name: cython.p_const_char, length: cython.Py_ssize_t) -> cython.bint:
    """``name`` (any case) is one of HOP_BY_HOP or content-length."""
    if length == 2:
        return _name_is(name, length, b"te", 2)
    if length == 7:
        return _name_is(name, length, b"upgrade", 7) or _name_is(name, length, b"trailer", 7)
    if length == 10:
        return _name_is(name, length, b"connection", 10) or _name_is(name, length, b"keep-alive", 10)
    if length == 14:
        return _name_is(name, length, b"content-length", 14)
    if length == 16:
        return _name_is(name, length, b"proxy-connection", 16)
    if length == 17:
        return _name_is(name, length, b"transfer-encoding", 17)
    if length == 18:
        return _name_is(name, length, b"proxy-authenticate", 18)
    if length == 19:
        return _name_is(name, length, b"proxy-authorization", 19)
    return False


def _put(out: cython.p_char, pos: cython.Py_ssize_t, data: cython.p_const_char, n: cython.Py_ssize_t) -> int:
    """Copy ``n`` bytes to ``out`` at ``pos``; the position after them."""
    memcpy(out + pos, data, n)
    return pos + n


def _put_text(out: cython.p_char, pos: cython.Py_ssize_t, text: str) -> int:
    """An ASCII ``text`` (the caller checked) at ``pos``."""
    n = cython.declare(cython.Py_ssize_t, 0)
    data = cython.declare(cython.p_const_char, _ascii(text, cython.address(n)))
    return _put(out, pos, data, n)


def _put_bytes(out: cython.p_char, pos: cython.Py_ssize_t, data: bytes) -> int:
    return _put(out, pos, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


def _encode_request_head_ascii(items: list, body_framing: bytes) -> object:
    method = path = authority = ""
    size = cython.declare(cython.Py_ssize_t, PyBytes_GET_SIZE(body_framing) + 32)
    count = cython.declare(cython.Py_ssize_t, len(items))
    i = cython.declare(cython.Py_ssize_t)
    pos = cython.declare(cython.Py_ssize_t, 0)
    n = cython.declare(cython.Py_ssize_t, 0)
    for i in range(count):
        item = cython.cast(tuple, items[i])
        name = cython.cast(str, item[0])
        value = cython.cast(str, item[1])
        if not PyUnicode_IS_ASCII(name) or not PyUnicode_IS_ASCII(value):
            return None
        size += len(name) + len(value) + 4
        if name[0] == ":":
            if name == ":method":
                method = value
            elif name == ":path":
                path = value
            elif name == ":authority":
                authority = value
    out = cython.declare(cython.p_char, cython.cast(cython.p_char, PyMem_Malloc(size)))
    if out == cython.NULL:
        raise MemoryError()
    try:
        pos = _put_text(out, pos, method)
        pos = _put(out, pos, b" ", 1)
        pos = _put_text(out, pos, path)
        pos = _put(out, pos, b" HTTP/1.1\r\nhost: ", 17)
        pos = _put_text(out, pos, authority)
        pos = _put(out, pos, b"\r\n", 2)
        for i in range(count):
            item = cython.cast(tuple, items[i])
            data = cython.declare(cython.p_const_char, _ascii(cython.cast(str, item[0]), cython.address(n)))
            if n == 0 or data[0] == 58:  # ':' pseudo-headers are the request line
                continue
            if _is_hop_by_hop(data, n) or _name_is(data, n, b"host", 4):
                continue
            pos = _put(out, pos, data, n)
            pos = _put(out, pos, b": ", 2)
            pos = _put_text(out, pos, cython.cast(str, item[1]))
            pos = _put(out, pos, b"\r\n", 2)
        pos = _put_bytes(out, pos, body_framing)
        pos = _put(out, pos, b"\r\n", 2)
        return PyBytes_FromStringAndSize(out, pos)
    finally:
        PyMem_Free(out)


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
        if cython.compiled:
            head = _encode_wire_response_head(status_line(status), wire, sets, body_framing, tail)
            if head is not None:
                return head
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


def _overwritten(name: cython.p_const_char, length: cython.Py_ssize_t, sets: dict) -> cython.bint:
    """A wire line's name (any case) is one of the names set() anew (lower case, ASCII)."""
    n = cython.declare(cython.Py_ssize_t, 0)
    other = cython.declare(cython.p_const_char)
    for key in sets:
        other = _ascii(cython.cast(str, key), cython.address(n))
        if _name_is(name, length, other, n):
            return True
    return False


def _encode_wire_response_head(line: bytes, wire: bytes, sets: dict, body_framing: bytes, tail: bytes) -> object:
    """status line + the upstream's block minus hop-by-hop and overwritten lines + the set()s +
    framing + tail, in one pass over the block (the compiled peer of the _strip_pattern path).
    None when a set() name or value is not ASCII."""
    size = cython.declare(cython.Py_ssize_t, PyBytes_GET_SIZE(line) + PyBytes_GET_SIZE(wire)
                          + PyBytes_GET_SIZE(body_framing) + PyBytes_GET_SIZE(tail) + 2)
    if sets:
        for key, value in sets.items():
            if not PyUnicode_IS_ASCII(key) or not PyUnicode_IS_ASCII(value):
                return None
            size += len(key) + len(value) + 4
    out = cython.declare(cython.p_char, cython.cast(cython.p_char, PyMem_Malloc(size)))
    if out == cython.NULL:
        raise MemoryError()
    src = cython.declare(cython.p_const_char, PyBytes_AS_STRING(wire))
    end = cython.declare(cython.Py_ssize_t, PyBytes_GET_SIZE(wire))
    start = cython.declare(cython.Py_ssize_t, 0)
    stop = cython.declare(cython.Py_ssize_t)
    name_end = cython.declare(cython.Py_ssize_t)
    pos = cython.declare(cython.Py_ssize_t)
    try:
        pos = _put(out, 0, PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line) - 2)  # the block brings its CRLF
        while start < end:  # each line is "\r\nname: value"
            stop = start + 2
            while stop < end and src[stop] != 13:
                stop += 1
            name_end = start + 2
            while name_end < stop and src[name_end] != 58:
                name_end += 1
            while name_end > start + 2 and (src[name_end - 1] == 32 or src[name_end - 1] == 9):
                name_end -= 1
            if not (_is_hop_by_hop(src + start + 2, name_end - start - 2)
                    or (sets and _overwritten(src + start + 2, name_end - start - 2, sets))):
                pos = _put(out, pos, src + start, stop - start)
            start = stop
        if sets:
            for key, value in sets.items():
                pos = _put(out, pos, b"\r\n", 2)
                pos = _put_text(out, pos, cython.cast(str, key))
                pos = _put(out, pos, b": ", 2)
                pos = _put_text(out, pos, cython.cast(str, value))
        pos = _put(out, pos, b"\r\n", 2)
        pos = _put_bytes(out, pos, body_framing)
        pos = _put_bytes(out, pos, tail)
        return PyBytes_FromStringAndSize(out, pos)
    finally:
        PyMem_Free(out)


def content_length_line(length: int) -> bytes:
    return b"content-length: %d\r\n" % length


def content_length_framing(value: str | None) -> bytes | None:
    """``content-length: N\\r\\n`` for a Content-Length value of ASCII digits (N in canonical form,
    without leading zeros); None when there is no value or it is not a plain decimal number."""
    if value is None:
        return None
    if cython.compiled:  # the digits copied straight into the line, no int in between
        return _content_length_framing(value)
    if value.isascii() and value.isdigit():
        return content_length_line(int(value))
    return None


def _content_length_framing(value: str) -> object:
    line = cython.declare(cython.char[64])
    size = cython.declare(cython.Py_ssize_t, 0)
    i = cython.declare(cython.Py_ssize_t)
    start = cython.declare(cython.Py_ssize_t, 0)
    if not PyUnicode_IS_ASCII(value):
        return None
    digits = cython.declare(cython.p_const_char, PyUnicode_AsUTF8AndSize(value, cython.address(size)))
    if size == 0:
        return None
    for i in range(size):
        if not 48 <= digits[i] <= 57:
            return None
    while start < size - 1 and digits[start] == 48:  # "007" -> "7", "0" stays
        start += 1
    if size - start > 40:
        return content_length_line(int(value))
    memcpy(line, b"content-length: ", 16)
    memcpy(line + 16, digits + start, size - start)
    line[16 + size - start] = 13
    line[17 + size - start] = 10
    return PyBytes_FromStringAndSize(line, 18 + size - start)


CHUNKED = b"transfer-encoding: chunked\r\n"
LAST_CHUNK = b"0\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)
