"""Malformed HTTP/1.1 against a real ``tulle proxy``: every input gets an HTTP answer or a clean close.

One proxy (two workers, a STATIC cluster to an echo backend) takes hypothesis-generated garbage: bad
request lines, bad header names and values, bare CR/LF, NUL bytes, conflicting framing, bad chunk sizes,
oversized and too many headers, truncations, binary noise, the HTTP/2 preface, and mutations of valid
requests. For each input the client sends the bytes and reads until the proxy closes; if the proxy falls
silent without having announced ``connection: close`` the client half-closes, and the proxy must then
close too (no half-open hang). What it sent must be HTTP/1.1 responses only; a local reply to a protocol
error must be the last response, say ``connection: close`` and be followed by the close. Every 50
examples and after the run a well-formed request must still get a 200, and no worker may have died.

The regression cases at the end pin Envoy's answers to the classics (Envoy's HTTP/1 codec and HCM).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http.client
import os
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy_harness import ProxyProcess, free_port, http_listener, simple_route, static_cluster
from tulle.samples import echo_server

pytestmark = pytest.mark.integration

STAT_PREFIX = "fuzz"
CLUSTER = "echo"
BACKEND_LABEL = "fuzz-echo"
CONCURRENCY = 2
# Local replies for malformed input: the proxy must close the connection after them.
PROTOCOL_ERROR_STATUSES = {400, 413, 426, 431, 501, 505}
SETTLE_SECONDS = 0.25  # silence after which the client gives up waiting and half-closes
REGRESSION_SETTLE_SECONDS = 1.0  # the explicit cases can afford to wait longer for a slow reply
CLOSE_DEADLINE_SECONDS = 10.0  # after our half-close the proxy must close within this (a loaded machine is slow)
HEALTH_CHECK_EVERY = 50
MAX_HEADERS_BYTES = 60 * 1024  # Envoy's default max_request_headers_kb
MAX_HEADERS_COUNT = 100  # Envoy's default common_http_protocol_options.max_headers_count


# --- the client side ------------------------------------------------------------------------------


ANNOUNCED_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close\r\n", re.IGNORECASE)


@dataclass
class Exchange:
    data: bytes
    proxy_closed_first: bool  # FIN or RST from the proxy before our half-close
    finished: bool  # the connection ended before the deadline
    bytes_before_half_close: int  # len(data) when we half-closed (all of it if we never did)


def exchange(port: int, payload: bytes, settle: float = SETTLE_SECONDS) -> Exchange:
    """Send ``payload``, read until the proxy closes or is silent, half-close, read until it closes.

    Once the proxy has announced ``connection: close`` the client waits for that close instead of
    half-closing, so a proxy that promises to close but does not is caught, not masked.
    """
    data = bytearray()
    half_closed = finished = False
    bytes_before_half_close = 0
    with socket.create_connection(("127.0.0.1", port), timeout=CLOSE_DEADLINE_SECONDS) as sock:
        try:
            sock.sendall(payload)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            # The proxy answered early and closed (e.g. 431 mid-upload) or stopped reading (a pipelined
            # request waits its turn): what it sent is still to be read and judged.
            pass
        deadline = time.monotonic() + CLOSE_DEADLINE_SECONDS
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            waiting_for_close = half_closed or ANNOUNCED_CLOSE.search(data) is not None
            sock.settimeout(remaining if waiting_for_close else min(settle, remaining))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if waiting_for_close:
                    break
                sock.shutdown(socket.SHUT_WR)
                half_closed = True
                bytes_before_half_close = len(data)
                deadline = time.monotonic() + CLOSE_DEADLINE_SECONDS
                continue
            except ConnectionResetError:
                finished = True
                break
            if not chunk:
                finished = True
                break
            data += chunk
    if not half_closed:
        bytes_before_half_close = len(data)
    return Exchange(bytes(data), proxy_closed_first=finished and not half_closed, finished=finished,
                    bytes_before_half_close=bytes_before_half_close)


class NotHttp(AssertionError):
    pass


@dataclass
class WireResponse:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    complete: bool = True
    end: int = 0  # offset just past this response in the received bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5]\d\d) [^\r\n]*\r\n")
CHUNK_SIZE = re.compile(rb"([0-9a-fA-F]+)[^\r\n]*\r\n")


def parse_responses(data: bytes) -> list[WireResponse]:
    """Split what the proxy sent into HTTP/1.1 responses; raise NotHttp on anything else.

    Requests here are never HEAD, so a content-length always announces body bytes. A response cut
    short is returned with ``complete=False`` and ends the list.
    """
    responses: list[WireResponse] = []
    offset = 0
    while offset < len(data):
        status_line = STATUS_LINE.match(data, offset)
        if status_line is None:
            rest = data[offset:]
            if b"\n" in rest or not b"HTTP/1.1 ".startswith(rest[:9]):
                raise NotHttp(f"non-HTTP bytes at offset {offset}: {rest[:80]!r}")
            responses.append(WireResponse(0, complete=False))  # a status line cut short
            break
        response = WireResponse(int(status_line.group(1)))
        responses.append(response)
        head_end = data.find(b"\r\n\r\n", status_line.end() - 2)
        if head_end < 0:
            response.complete = False
            break
        header_block = data[status_line.end():head_end]  # empty when the status line ends the head
        for line in header_block.split(b"\r\n") if header_block else []:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip():
                raise NotHttp(f"malformed response header line {line!r}")
            response.headers.append((name.lower(), value.strip()))
        body_end = _body_end(data, head_end + 4, response)
        if body_end is None:
            response.complete = False
            break
        response.end = offset = body_end
    return responses


def _body_end(data: bytes, start: int, response: WireResponse) -> int | None:
    """Offset just past the body that starts at ``start``, or None if not all of it arrived."""
    if response.status < 200 or response.status in (204, 304):
        return start
    if (response.header(b"transfer-encoding") or b"").lower() == b"chunked":
        offset = start
        while True:
            size_line = CHUNK_SIZE.match(data, offset)
            if size_line is None:
                return None
            size = int(size_line.group(1), 16)
            offset = size_line.end() + size + 2
            if offset > len(data):
                return None
            if size == 0:
                return offset
    length = response.header(b"content-length")
    if length is None:
        return len(data)  # delimited by the close
    end = start + int(length)
    return end if end <= len(data) else None


def child_pids(pid: int) -> set[int]:
    """Live (non-zombie) children of ``pid``: the forked workers."""
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            children.add(int(entry))
    return children


# --- the proxy under test -------------------------------------------------------------------------


@dataclass
class FuzzProxy:
    proxy: ProxyProcess
    port: int
    workers: set[int]
    examples: int = 0
    error_replies_seen: int = 0

    def assert_healthy(self) -> None:
        process = self.proxy.process
        assert process is not None and process.poll() is None, f"proxy died:\n{self.proxy.output()[-3000:]}"
        assert child_pids(process.pid) == self.workers, f"a worker died:\n{self.proxy.output()[-3000:]}"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", "/still-serving", headers={"host": "fuzz.test"})
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            assert response.getheader("x-served-by") == BACKEND_LABEL
        finally:
            connection.close()

    def stat(self, name: str) -> int:
        return self.proxy.stats().get(name, 0)


@pytest.fixture(scope="module")
def fuzz_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzProxy]:
    backend = echo_server.start_in_thread(BACKEND_LABEL)
    port = free_port()
    bootstrap = {"static_resources": {
        # codec_type HTTP1: the HTTP/1 codec is what is fuzzed (AUTO would hand an input that starts
        # with the HTTP/2 preface to the HTTP/2 codec, which tests/test_http_http2_codec.py covers)
        "listeners": [http_listener(STAT_PREFIX, port, simple_route(CLUSTER), codec_type="HTTP1")],
        "clusters": [static_cluster(CLUSTER, [backend.server_address[1]])],
    }}
    try:
        with ProxyProcess(bootstrap, tmp_path_factory.mktemp("fuzz"), concurrency=CONCURRENCY) as proxy:
            assert proxy.process is not None
            workers = child_pids(proxy.process.pid)
            assert len(workers) == CONCURRENCY - 1
            fuzz = FuzzProxy(proxy, port, workers)
            fuzz.assert_healthy()
            yield fuzz
    finally:
        backend.shutdown()
        backend.server_close()


def assert_acceptable(fuzz: FuzzProxy, payload: bytes, result: Exchange) -> None:
    """The property every input must satisfy (see the module docstring)."""
    context = f"payload {payload[:300]!r}{'...' if len(payload) > 300 else ''} -> {result.data[:300]!r}"
    assert result.finished, (
        f"connection still open {CLOSE_DEADLINE_SECONDS}s after the proxy announced close or we half-closed: {context}")
    responses = parse_responses(result.data)
    if result.proxy_closed_first:
        assert responses, f"the proxy closed without an HTTP reply: {context}"
        assert responses[-1].complete, f"the proxy closed in the middle of a response: {context}"
    for index, response in enumerate(responses):
        if not response.complete:
            continue  # cut short because our half-close aborted the exchange
        from_backend = response.header(b"x-served-by") == BACKEND_LABEL.encode()
        if from_backend or response.status < 200:
            continue
        fuzz.error_replies_seen += 1
        assert response.status >= 400, f"a local reply that is not an error: {context}"
        if response.status in PROTOCOL_ERROR_STATUSES:
            assert index == len(responses) - 1, f"responses after a protocol error reply: {context}"
            assert response.header(b"connection") == b"close", f"protocol error reply without close: {context}"
            if response.end <= result.bytes_before_half_close:
                # It arrived while we were still listening: the proxy must close without our help.
                assert result.proxy_closed_first, f"protocol error reply but the connection stayed open: {context}"


# --- generators -----------------------------------------------------------------------------------

HOST = b"Host: fuzz.test"
METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]  # no HEAD: see parse_responses
SEPARATORS = b'()<>@,;:\\"/[]?={} \t'
CONTROLS = bytes(range(0, 9)) + bytes(range(10, 32)) + b"\x7f"
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def build(request_line: bytes, headers: list[bytes], body: bytes = b"") -> bytes:
    return request_line + b"\r\n" + b"".join(header + b"\r\n" for header in headers) + b"\r\n" + body


def chunked(body: bytes, piece: int) -> bytes:
    pieces = [body[i:i + piece] for i in range(0, len(body), piece)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


def _join_path(parts: list[bytes]) -> bytes:
    return b"/" + b"/".join(parts)


def _header_value(text: str) -> bytes:
    return text.strip().encode()


def _header_line(pair: tuple[bytes, bytes]) -> bytes:
    return pair[0] + b": " + pair[1]


def _single_line(raw: bytes) -> bool:
    return b"\r" not in raw and b"\n" not in raw


# Named functions rather than lambdas: hypothesis would otherwise parse their source to describe them.
paths = st.lists(st.sampled_from([b"a", b"fuzz", b"x.y", b"%41", b"~t", b"q?x=1", b""]), max_size=4).map(_join_path)
header_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=20).map(
    _header_value)
benign_headers = st.tuples(
    st.sampled_from([b"X-Fuzz", b"Accept", b"User-Agent", b"X-Trace-Id"]), header_values).map(_header_line)


@st.composite
def valid_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(METHODS))
    headers = [HOST, *draw(st.lists(benign_headers, max_size=3))]
    body = draw(st.binary(max_size=48)) if method in (b"POST", b"PUT", b"PATCH") else b""
    if body and draw(st.booleans()):
        headers.append(b"Transfer-Encoding: chunked")
        body = chunked(body, draw(st.integers(1, 16)))
    elif body or method == b"POST":
        headers.append(b"Content-Length: %d" % len(body))
    return build(method + b" " + draw(paths) + b" HTTP/1.1", headers, body)


@st.composite
def bad_request_lines(draw: st.DrawFn) -> bytes:
    method, target, version = b"GET", b"/", b"HTTP/1.1"
    part = draw(st.sampled_from(["method", "target", "version", "shape"]))
    if part == "method":
        method = draw(st.one_of(st.sampled_from([b"get", b"G ET", b"GET\x00", b"", b"FOO", b"PRI", b"GE\x7fT"]),
                                st.binary(min_size=1, max_size=10)))
    elif part == "target":
        target = draw(st.one_of(st.sampled_from([b"", b"/a b", b"/\x00", b"/\x7f", b"/\r", b"a/b", b"/%zz", b"*"]),
                                st.binary(max_size=16)))
    elif part == "version":
        version = draw(st.sampled_from([b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1", b"http/1.1",
                                        b"HTTP/11.1", b"HTTP/1.1x", b"", b"HTTP/a.b", b"HTTPS/1.1", b"HTTP/1.1 x"]))
    else:
        separator = draw(st.sampled_from([b"  ", b"\t", b"", b" \x00 "]))
        return build(separator.join([method, target, version]), [HOST])
    return build(b" ".join([method, target, version]), [HOST])


@st.composite
def bad_headers(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from([b"X-Bad", b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection"]))
    value = draw(header_values)
    flaw = draw(st.sampled_from(["name_separator", "name_control", "value_control", "no_colon", "space_before_colon",
                                 "empty_name", "obs_fold", "binary"]))
    if flaw == "name_separator":
        at = draw(st.integers(0, len(name)))
        line = name[:at] + bytes([draw(st.sampled_from(SEPARATORS))]) + name[at:] + b": " + value
    elif flaw == "name_control":
        line = name + bytes([draw(st.sampled_from(CONTROLS))]) + b": " + value
    elif flaw == "value_control":
        at = draw(st.integers(0, len(value)))
        line = name + b": " + value[:at] + bytes([draw(st.sampled_from(CONTROLS))]) + value[at:]
    elif flaw == "no_colon":
        line = name + b" " + value
    elif flaw == "space_before_colon":
        line = name + b" : " + value
    elif flaw == "empty_name":
        line = b": " + value
    elif flaw == "obs_fold":
        line = name + b": " + value + b"\r\n folded"
    else:
        line = draw(st.binary(min_size=1, max_size=40)).replace(b"\r\n", b"")
    headers = [HOST, line] if name != b"Host" else [line]
    return build(b"GET /bad-header HTTP/1.1", headers)


@st.composite
def odd_line_endings(draw: st.DrawFn) -> bytes:
    lines = draw(valid_requests()).split(b"\r\n")
    endings = [draw(st.sampled_from([b"\r\n", b"\n", b"\r", b"\n\r", b"\r\r\n"])) for _ in lines[:-1]]
    return b"".join(line + ending for line, ending in zip(lines, endings, strict=False)) + lines[-1]


@st.composite
def with_nul_bytes(draw: st.DrawFn) -> bytes:
    request = bytearray(draw(valid_requests()))
    for _ in range(draw(st.integers(1, 3))):
        request.insert(draw(st.integers(0, len(request))), 0)
    return bytes(request)


FRAMING_CONFLICTS = [
    [b"Content-Length: 5", b"Transfer-Encoding: chunked"],
    [b"Transfer-Encoding: chunked", b"Content-Length: 5"],
    [b"Content-Length: 5", b"Content-Length: 6"],
    [b"Content-Length: 5, 6"],
    [b"Content-Length: -1"],
    [b"Content-Length: +5"],
    [b"Content-Length: 5x"],
    [b"Content-Length: 99999999999999999999999"],
    [b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked"],
    [b"Transfer-Encoding: gzip"],
    [b"Transfer-Encoding: gzip, chunked"],
    [b"Transfer-Encoding: chunked, gzip"],
    [b"Transfer-Encoding: identity"],
    [b"Transfer-Encoding:  chunked"],
    [b"Transfer-Encoding: chunked\x0b"],
    [b"Transfer-Encoding: xchunked"],
]


@st.composite
def framing_conflicts(draw: st.DrawFn) -> bytes:
    headers = [HOST, *draw(st.sampled_from(FRAMING_CONFLICTS))]
    body = draw(st.sampled_from([b"0\r\n\r\n", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b""]))
    smuggled = draw(st.sampled_from([b"", b"GET /smuggled HTTP/1.1\r\nHost: fuzz.test\r\n\r\n"]))
    return build(b"POST /framing HTTP/1.1", headers, body + smuggled)


@st.composite
def bad_chunked_bodies(draw: st.DrawFn) -> bytes:
    size = draw(st.one_of(
        st.sampled_from([b"zz", b"-1", b"", b"0x5", b"fffffffffffffffffffff", b"5 5", b"+5", b"\t5", b"5\x00"]),
        st.binary(min_size=1, max_size=6).filter(_single_line),
    ))
    tail = draw(st.sampled_from([b"\r\nhello\r\n0\r\n\r\n", b"\r\nhelloXX0\r\n\r\n", b"\r\n", b"\nhello\n0\n\n"]))
    return build(b"POST /chunks HTTP/1.1", [HOST, b"Transfer-Encoding: chunked"], size + tail)


@st.composite
def oversized_headers(draw: st.DrawFn) -> bytes:
    total = draw(st.integers(MAX_HEADERS_BYTES + 1, MAX_HEADERS_BYTES + 12 * 1024))
    where = draw(st.sampled_from(["value", "url", "spread"]))
    if where == "value":
        return build(b"GET / HTTP/1.1", [HOST, b"X-Big: " + b"v" * total])
    if where == "url":
        return build(b"GET /" + b"u" * total + b" HTTP/1.1", [HOST])
    per_header = 2000
    return build(b"GET / HTTP/1.1", [HOST] + [b"X-Spread-%d: %s" % (i, b"s" * per_header)
                                              for i in range(total // per_header + 1)])


@st.composite
def too_many_headers(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(MAX_HEADERS_COUNT + 1, MAX_HEADERS_COUNT + 60))
    return build(b"GET / HTTP/1.1", [HOST] + [b"X-N-%d: v" % i for i in range(count)])


@st.composite
def truncated_requests(draw: st.DrawFn) -> bytes:
    request = draw(valid_requests())
    return request[:draw(st.integers(1, len(request) - 1))]


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    request = bytearray(draw(valid_requests()))
    for _ in range(draw(st.integers(1, 4))):
        if not request:
            break
        at = draw(st.integers(0, len(request) - 1))
        operation = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate"]))
        if operation == "flip":
            request[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "insert":
            request[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif operation == "delete":
            del request[at:at + draw(st.integers(1, 8))]
        elif operation == "truncate":
            del request[at:]
        else:
            request[at:at] = request[at:at + draw(st.integers(1, 16))]
    return bytes(request) or b"\r\n"


@st.composite
def pipelined(draw: st.DrawFn) -> bytes:
    return draw(valid_requests()) + draw(st.one_of(valid_requests(), bad_headers(), bad_request_lines()))


malformed_requests = st.one_of(
    bad_request_lines(), bad_headers(), odd_line_endings(), with_nul_bytes(), framing_conflicts(),
    bad_chunked_bodies(), oversized_headers(), too_many_headers(), truncated_requests(),
    st.binary(min_size=1, max_size=256), st.sampled_from([H2_PREFACE, H2_PREFACE + H2_SETTINGS_FRAME]),
    mutated_requests(), pipelined(), valid_requests(),
)


# --- the property ---------------------------------------------------------------------------------


def test_malformed_requests_never_break_the_proxy(fuzz_proxy: FuzzProxy) -> None:
    errors_before = (fuzz_proxy.stat(f"http.{STAT_PREFIX}.downstream_rq_4xx")
                     + fuzz_proxy.stat(f"http.{STAT_PREFIX}.downstream_rq_5xx"))

    @settings(max_examples=300, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(payload=malformed_requests)
    def one_input(payload: bytes) -> None:
        assert_acceptable(fuzz_proxy, payload, exchange(fuzz_proxy.port, payload))
        fuzz_proxy.examples += 1
        if fuzz_proxy.examples % HEALTH_CHECK_EVERY == 0:
            fuzz_proxy.assert_healthy()

    one_input()
    fuzz_proxy.assert_healthy()
    # Every error reply the clients saw was counted (the proxy may have counted more: replies our
    # half-close cut off never reached us).
    errors_after = (fuzz_proxy.stat(f"http.{STAT_PREFIX}.downstream_rq_4xx")
                    + fuzz_proxy.stat(f"http.{STAT_PREFIX}.downstream_rq_5xx"))
    assert errors_after - errors_before >= fuzz_proxy.error_replies_seen > 0


# --- regression cases -----------------------------------------------------------------------------


def single_local_reply(fuzz: FuzzProxy, payload: bytes) -> WireResponse:
    """Send ``payload``; assert exactly one local reply came back, then the proxy closed."""
    result = exchange(fuzz.port, payload, settle=REGRESSION_SETTLE_SECONDS)
    responses = parse_responses(result.data)
    assert len(responses) == 1, result.data
    reply = responses[0]
    assert reply.complete, result.data
    assert reply.header(b"x-served-by") is None, "the request reached the backend"
    assert reply.header(b"connection") == b"close"
    assert result.proxy_closed_first, "the proxy did not close after its error reply"
    return reply


def test_content_length_with_chunked_is_refused_not_smuggled(fuzz_proxy: FuzzProxy) -> None:
    # Envoy refuses both framings at once (allow_chunked_length defaults to false): 400, nothing forwarded.
    upstream_before = fuzz_proxy.stat(f"cluster.{CLUSTER}.upstream_rq_total")
    payload = build(b"POST /front HTTP/1.1", [HOST, b"Content-Length: 4", b"Transfer-Encoding: chunked"],
                    b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: fuzz.test\r\n\r\n")
    assert single_local_reply(fuzz_proxy, payload).status == 400
    assert fuzz_proxy.stat(f"cluster.{CLUSTER}.upstream_rq_total") == upstream_before


@pytest.mark.parametrize("where", ["one_header", "url", "spread_over_headers"])
def test_headers_over_max_request_headers_kb_get_431(fuzz_proxy: FuzzProxy, where: str) -> None:
    big = MAX_HEADERS_BYTES + 1024
    payload = {
        "one_header": build(b"GET / HTTP/1.1", [HOST, b"X-Big: " + b"v" * big]),
        "url": build(b"GET /" + b"u" * big + b" HTTP/1.1", [HOST]),
        "spread_over_headers": build(b"GET / HTTP/1.1", [HOST] + [b"X-S-%d: %s" % (i, b"s" * 1024)
                                                                  for i in range(big // 1024 + 1)]),
    }[where]
    assert single_local_reply(fuzz_proxy, payload).status == 431


def test_more_than_max_headers_count_gets_431(fuzz_proxy: FuzzProxy) -> None:
    payload = build(b"GET / HTTP/1.1", [HOST] + [b"X-N-%d: v" % i for i in range(MAX_HEADERS_COUNT + 1)])
    assert single_local_reply(fuzz_proxy, payload).status == 431


def test_http11_without_host_gets_400(fuzz_proxy: FuzzProxy) -> None:
    assert single_local_reply(fuzz_proxy, build(b"GET / HTTP/1.1", [b"Accept: */*"])).status == 400


def test_http10_without_accept_http_10_gets_426(fuzz_proxy: FuzzProxy) -> None:
    assert single_local_reply(fuzz_proxy, build(b"GET / HTTP/1.0", [HOST])).status == 426


@pytest.mark.parametrize("version", [b"HTTP/0.9", b"HTTP/2.0"])
def test_other_http_versions_are_not_proxied(fuzz_proxy: FuzzProxy, version: bytes) -> None:
    # Envoy's codec treats every version but 1.1 as HTTP/1.0 (426 without accept_http_10); 505 would be
    # the RFC's answer. Forwarding it as HTTP/1.1 is neither.
    assert single_local_reply(fuzz_proxy, build(b"GET / " + version, [HOST])).status in (426, 505)


@pytest.mark.parametrize("size", [b"zz", b"-1", b"fffffffffffffffffffff"])
def test_invalid_chunk_size_gets_400(fuzz_proxy: FuzzProxy, size: bytes) -> None:
    payload = build(b"POST /chunks HTTP/1.1", [HOST, b"Transfer-Encoding: chunked"], size + b"\r\nhello\r\n0\r\n\r\n")
    assert single_local_reply(fuzz_proxy, payload).status == 400


@pytest.mark.parametrize("coding", [b"gzip", b"gzip, chunked"])
def test_transfer_codings_other_than_chunked_get_501(fuzz_proxy: FuzzProxy, coding: bytes) -> None:
    # Envoy's HTTP/1 codec rejects any Transfer-Encoding other than exactly "chunked" with 501.
    payload = build(b"POST /coded HTTP/1.1", [HOST, b"Transfer-Encoding: " + coding], b"0\r\n\r\n")
    assert single_local_reply(fuzz_proxy, payload).status == 501


def test_pipelined_good_then_bad_answers_in_order_then_closes(fuzz_proxy: FuzzProxy) -> None:
    # Envoy parses one request at a time: the first is answered before the second's error is found.
    payload = (build(b"GET /first HTTP/1.1", [HOST])
               + build(b"GET /second HTTP/1.1", [HOST, b"Bad Header: space in the name"]))
    result = exchange(fuzz_proxy.port, payload, settle=REGRESSION_SETTLE_SECONDS)
    responses = parse_responses(result.data)
    assert [response.status for response in responses] == [200, 400], result.data
    assert responses[0].header(b"x-served-by") == BACKEND_LABEL.encode()
    assert responses[1].header(b"x-served-by") is None
    assert responses[1].header(b"connection") == b"close"
    assert result.proxy_closed_first


@pytest.mark.parametrize("queued", [2, 3, 5])
def test_after_pipelined_requests_the_connection_still_reads(fuzz_proxy: FuzzProxy, queued: int) -> None:
    # Found by the slow fuzz run: with three or more requests in one segment, reading was paused once per
    # queued request but resumed once, so the connection stopped reading for good (no answer, no close).
    with socket.create_connection(("127.0.0.1", fuzz_proxy.port), timeout=CLOSE_DEADLINE_SECONDS) as sock:
        sock.sendall(b"".join(build(b"GET /queued-%d HTTP/1.1" % i, [HOST]) for i in range(queued)))
        data = b""
        while data.count(b"x-served-by: " + BACKEND_LABEL.encode()) < queued:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        answered = parse_responses(data)
        assert [response.status for response in answered] == [200] * queued and answered[-1].complete
        sock.sendall(build(b"GET /after HTTP/1.1", [HOST]))
        data = b""
        while not (responses := parse_responses(data)) or not responses[-1].complete:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        assert responses[0].status == 200 and responses[0].header(b"x-served-by") == BACKEND_LABEL.encode()


def test_h2_preface_on_http1_listener_gets_an_http1_error(fuzz_proxy: FuzzProxy) -> None:
    reply = single_local_reply(fuzz_proxy, H2_PREFACE + H2_SETTINGS_FRAME)
    assert 400 <= reply.status < 600


def test_proxy_survives_the_regression_cases(fuzz_proxy: FuzzProxy) -> None:
    fuzz_proxy.assert_healthy()


# --- the slow suite: >= 200,000 inputs against the compiled codec ----------------------------------
#
# Hypothesis draws ~300 examples a second here at best, and every example waits for the proxy's
# silence; 200k of them would take hours. This generator makes the same shapes (and plain mutations
# of valid requests) from a seeded ``random.Random``, and many inputs share a connection: each
# input is followed on the wire by a sentinel request (``GET /fuzz-sentinel/<n>``); once the
# sentinel's echo has arrived as the last of complete responses, the proxy has consumed the input,
# answered everything in order and kept the connection, so the next input follows on it. Otherwise
# the proxy must close (after a protocol error reply), or, when it waits for bytes that never come,
# close after our half-close. Clients run in parallel on asyncio; the backend is a separate process.

SLOW_INPUTS = int(os.environ.get("TULLE_FUZZ_INPUTS", "200000"))
SLOW_SEED = int(os.environ.get("TULLE_FUZZ_SEED", "20261207"))
SLOW_CLIENTS = 48  # connections in flight at once
SLOW_SETTLE_SECONDS = 0.3  # silence before the client half-closes (many clients wait at once)
SLOW_HEALTH_EVERY = 20_000
SENTINEL_PATH = b"/fuzz-sentinel/"


class FastMalformed:
    """Malformed HTTP/1.1 from a seeded ``random.Random``: the shapes of the strategies above."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        shapes = [
            (self.bad_request_line, 10), (self.bad_header, 14), (self.odd_line_endings, 8),
            (self.with_nul_bytes, 5), (self.framing_conflict, 8), (self.bad_chunked_body, 8),
            (self.oversized_headers, 0.5), (self.too_many_headers, 1), (self.truncated, 6),
            (self.binary, 6), (self.h2_preface, 1), (self.mutated, 25), (self.pipelined, 4),
            (self.valid, 3),
        ]
        self.shapes = [shape for shape, _ in shapes]
        self.weights = [weight for _, weight in shapes]

    def __call__(self) -> bytes:
        return self.rng.choices(self.shapes, self.weights)[0]()

    def text(self, size: int) -> bytes:
        return bytes(self.rng.randrange(0x20, 0x7f) for _ in range(self.rng.randrange(size + 1))).strip()

    def binary_bytes(self, low: int, high: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(low, high))

    def path(self) -> bytes:
        parts = [self.rng.choice([b"a", b"fuzz", b"x.y", b"%41", b"~t", b"q?x=1", b""])
                 for _ in range(self.rng.randrange(5))]
        return _join_path(parts)

    def valid(self) -> bytes:
        rng = self.rng
        method = rng.choice(METHODS)
        headers = [HOST] + [rng.choice([b"X-Fuzz", b"Accept", b"User-Agent", b"X-Trace-Id"]) + b": " + self.text(20)
                            for _ in range(rng.randrange(4))]
        body = self.binary_bytes(0, 48) if method in (b"POST", b"PUT", b"PATCH") else b""
        if body and rng.random() < 0.5:
            headers.append(b"Transfer-Encoding: chunked")
            body = chunked(body, rng.randint(1, 16))
        elif body or method == b"POST":
            headers.append(b"Content-Length: %d" % len(body))
        return build(method + b" " + self.path() + b" HTTP/1.1", headers, body)

    def bad_request_line(self) -> bytes:
        rng = self.rng
        method, target, version = b"GET", b"/", b"HTTP/1.1"
        part = rng.choice(["method", "target", "version", "shape"])
        if part == "method":
            method = (rng.choice([b"get", b"G ET", b"GET\x00", b"", b"FOO", b"PRI", b"GE\x7fT"])
                      if rng.random() < 0.5 else self.binary_bytes(1, 10))
        elif part == "target":
            target = (rng.choice([b"", b"/a b", b"/\x00", b"/\x7f", b"/\r", b"a/b", b"/%zz", b"*"])
                      if rng.random() < 0.5 else self.binary_bytes(0, 16))
        elif part == "version":
            version = rng.choice([b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1", b"http/1.1", b"HTTP/11.1",
                                  b"HTTP/1.1x", b"", b"HTTP/a.b", b"HTTPS/1.1", b"HTTP/1.1 x", b"HTTP/1.0"])
        else:
            return build(rng.choice([b"  ", b"\t", b"", b" \x00 "]).join([method, target, version]), [HOST])
        return build(b" ".join([method, target, version]), [HOST])

    def bad_header(self) -> bytes:
        rng = self.rng
        name = rng.choice([b"X-Bad", b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection"])
        value = self.text(20)
        flaw = rng.choice(["name_separator", "name_control", "value_control", "no_colon", "space_before_colon",
                           "empty_name", "obs_fold", "binary"])
        if flaw == "name_separator":
            at = rng.randint(0, len(name))
            line = name[:at] + bytes([rng.choice(SEPARATORS)]) + name[at:] + b": " + value
        elif flaw == "name_control":
            line = name + bytes([rng.choice(CONTROLS)]) + b": " + value
        elif flaw == "value_control":
            at = rng.randint(0, len(value))
            line = name + b": " + value[:at] + bytes([rng.choice(CONTROLS)]) + value[at:]
        elif flaw == "no_colon":
            line = name + b" " + value
        elif flaw == "space_before_colon":
            line = name + b" : " + value
        elif flaw == "empty_name":
            line = b": " + value
        elif flaw == "obs_fold":
            line = name + b": " + value + b"\r\n folded"
        else:
            line = self.binary_bytes(1, 40).replace(b"\r\n", b"")
        return build(b"GET /bad-header HTTP/1.1", [HOST, line] if name != b"Host" else [line])

    def odd_line_endings(self) -> bytes:
        lines = self.valid().split(b"\r\n")
        endings = [self.rng.choice([b"\r\n", b"\n", b"\r", b"\n\r", b"\r\r\n"]) for _ in lines[:-1]]
        return b"".join(line + ending for line, ending in zip(lines, endings, strict=False)) + lines[-1]

    def with_nul_bytes(self) -> bytes:
        request = bytearray(self.valid())
        for _ in range(self.rng.randint(1, 3)):
            request.insert(self.rng.randint(0, len(request)), 0)
        return bytes(request)

    def framing_conflict(self) -> bytes:
        rng = self.rng
        body = rng.choice([b"0\r\n\r\n", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b""])
        smuggled = rng.choice([b"", b"GET /smuggled HTTP/1.1\r\nHost: fuzz.test\r\n\r\n"])
        return build(b"POST /framing HTTP/1.1", [HOST, *rng.choice(FRAMING_CONFLICTS)], body + smuggled)

    def bad_chunked_body(self) -> bytes:
        rng = self.rng
        if rng.random() < 0.5:
            size = rng.choice([b"zz", b"-1", b"", b"0x5", b"fffffffffffffffffffff", b"5 5", b"+5", b"\t5", b"5\x00"])
        else:
            size = self.binary_bytes(1, 6).replace(b"\r", b"").replace(b"\n", b"") or b"g"
        tail = rng.choice([b"\r\nhello\r\n0\r\n\r\n", b"\r\nhelloXX0\r\n\r\n", b"\r\n", b"\nhello\n0\n\n"])
        return build(b"POST /chunks HTTP/1.1", [HOST, b"Transfer-Encoding: chunked"], size + tail)

    def oversized_headers(self) -> bytes:
        rng = self.rng
        total = rng.randint(MAX_HEADERS_BYTES + 1, MAX_HEADERS_BYTES + 12 * 1024)
        where = rng.choice(["value", "url", "spread"])
        if where == "value":
            return build(b"GET / HTTP/1.1", [HOST, b"X-Big: " + b"v" * total])
        if where == "url":
            return build(b"GET /" + b"u" * total + b" HTTP/1.1", [HOST])
        return build(b"GET / HTTP/1.1", [HOST] + [b"X-Spread-%d: %s" % (i, b"s" * 2000) for i in range(total // 2000 + 1)])

    def too_many_headers(self) -> bytes:
        count = self.rng.randint(MAX_HEADERS_COUNT + 1, MAX_HEADERS_COUNT + 60)
        return build(b"GET / HTTP/1.1", [HOST] + [b"X-N-%d: v" % i for i in range(count)])

    def truncated(self) -> bytes:
        request = self.valid()
        return request[:self.rng.randint(1, len(request) - 1)]

    def binary(self) -> bytes:
        return self.binary_bytes(1, 256)

    def h2_preface(self) -> bytes:
        return H2_PREFACE + (H2_SETTINGS_FRAME if self.rng.random() < 0.5 else b"")

    def mutated(self) -> bytes:
        rng = self.rng
        request = bytearray(self.valid())
        for _ in range(rng.randint(1, 4)):
            if not request:
                break
            at = rng.randrange(len(request))
            operation = rng.choice(["flip", "insert", "delete", "truncate", "duplicate", "swap_byte"])
            if operation == "flip":
                request[at] ^= 1 << rng.randrange(8)
            elif operation == "insert":
                request[at:at] = self.binary_bytes(1, 8)
            elif operation == "delete":
                del request[at:at + rng.randint(1, 8)]
            elif operation == "truncate":
                del request[at:]
            elif operation == "duplicate":
                request[at:at] = request[at:at + rng.randint(1, 16)]
            else:
                request[at] = rng.choice(b"\r\n\x00 :\t\x7f\xff")
        return bytes(request) or b"\r\n"

    def pipelined(self) -> bytes:
        return self.valid() + self.rng.choice([self.valid, self.bad_header, self.bad_request_line])()


def sentinel(number: int) -> tuple[bytes, bytes]:
    """The request that follows each input, and the bytes of its echo that show it was answered."""
    marker = SENTINEL_PATH + b"%d" % number
    return build(b"GET " + marker + b" HTTP/1.1", [HOST]), b'"' + marker + b'"'


def answered_through(segment: bytes, marker: bytes) -> bool:
    """The sentinel's echo is in ``segment`` and every response there is complete, the last ending it."""
    if marker not in segment:
        return False
    responses = parse_responses(segment)
    last = responses[-1]
    last_start = responses[-2].end if len(responses) > 1 else 0
    return (all(response.complete for response in responses) and last.end == len(segment)
            and last.header(b"x-served-by") == BACKEND_LABEL.encode() and marker in segment[last_start:])


@dataclass
class SlowRun:
    inputs: int = 0
    connections: int = 0
    reused: int = 0  # inputs answered on a kept connection (the sentinel came back)
    proxy_closed: int = 0  # connections the proxy closed on its own
    half_closed: int = 0  # connections where the client had to half-close first
    left_open: int = 0  # kept connections the client closed when the inputs ran out


@contextlib.contextmanager
def _after(history: collections.deque[tuple[bytes, bytes]]) -> Iterator[None]:
    """A failure's message names the inputs that came before it on the same connection."""
    try:
        yield
    except AssertionError as failure:
        earlier = "".join(f"\n  earlier input {sent[:400]!r}\n    -> {answer[:200]!r}" for sent, answer in history)
        raise AssertionError(f"{failure}\nafter, on the same connection:{earlier or ' nothing'}") from None


async def fuzz_connection(fuzz: FuzzProxy, generate: FastMalformed, run: SlowRun, budget: list[int]) -> None:
    """Inputs on one connection until the proxy closes it; raises AssertionError on a violation."""
    reader, writer = await asyncio.open_connection("127.0.0.1", fuzz.port)
    run.connections += 1
    sent = bytearray()  # since the last answered sentinel: the context of a failure
    history: collections.deque[tuple[bytes, bytes]] = collections.deque(maxlen=4)  # earlier inputs, answers
    data = bytearray()
    segment_start = 0
    try:
        while budget[0] > 0:
            budget[0] -= 1
            run.inputs += 1
            payload = generate()
            request, marker = sentinel(run.inputs)
            sent[:] = payload
            writer.write(payload + request)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            half_closed = finished = False
            bytes_before_half_close = 0
            deadline = time.monotonic() + CLOSE_DEADLINE_SECONDS
            while True:
                waiting_for_close = half_closed or ANNOUNCED_CLOSE.search(data, segment_start) is not None
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    chunk = await asyncio.wait_for(reader.read(65536),
                                                   timeout if waiting_for_close else min(SLOW_SETTLE_SECONDS, timeout))
                except TimeoutError:
                    if waiting_for_close:
                        break
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    half_closed = True
                    bytes_before_half_close = len(data) - segment_start
                    deadline = time.monotonic() + CLOSE_DEADLINE_SECONDS
                    continue
                except ConnectionError:
                    finished = True
                    break
                if not chunk:
                    finished = True
                    break
                data += chunk
                if not waiting_for_close and answered_through(bytes(data[segment_start:]), marker):
                    break
            segment = bytes(data[segment_start:])
            if finished or half_closed or not answered_through(segment, marker):
                # the connection is over: judge its last segment as one exchange
                if not half_closed:
                    bytes_before_half_close = len(segment)
                result = Exchange(segment, proxy_closed_first=finished and not half_closed, finished=finished,
                                  bytes_before_half_close=bytes_before_half_close)
                with _after(history):
                    assert_acceptable(fuzz, bytes(sent) + request, result)
                run.half_closed += half_closed
                run.proxy_closed += finished and not half_closed
                return
            # kept alive: everything answered, in order, the sentinel last; no protocol error on the way
            with _after(history):
                assert_acceptable(fuzz, bytes(sent) + request, Exchange(segment, proxy_closed_first=False,
                                                                        finished=True, bytes_before_half_close=0))
            history.append((bytes(sent) + request, segment))
            run.reused += 1
            segment_start = len(data)
            if segment_start > 1 << 20:
                del data[:segment_start]
                segment_start = 0
        run.left_open += 1
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def fuzz_many(fuzz: FuzzProxy, inputs: int, seed: int, run: SlowRun) -> None:
    budget = [inputs]

    async def client(index: int) -> None:
        generate = FastMalformed(random.Random(seed * 1000 + index))
        while budget[0] > 0:
            await fuzz_connection(fuzz, generate, run, budget)

    await asyncio.gather(*(client(index) for index in range(SLOW_CLIENTS)))


def loaded_extension_files(pid: int) -> set[str]:
    """Paths of the shared objects mapped into process ``pid``."""
    paths = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].endswith(".so"):
            paths.add(fields[5])
    return paths


def compiled_modules_loaded(pid: int) -> dict[str, bool]:
    """Each module of ``tulle.compiled.MODULES``: is its extension module mapped into ``pid``?"""
    from importlib.machinery import EXTENSION_SUFFIXES

    from tulle.compiled import MODULES

    mapped = loaded_extension_files(pid)
    return {name: any(path.endswith("/" + name.replace(".", "/") + suffix)
                      for path in mapped for suffix in EXTENSION_SUFFIXES) for name in MODULES}


@pytest.fixture
def slow_fuzz_proxy(tmp_path: Path) -> Iterator[FuzzProxy]:
    backend_port = free_port()
    backend = subprocess.Popen([sys.executable, "-m", "tulle.samples.echo_server", "--port", str(backend_port),
                                "--name", BACKEND_LABEL], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        port = free_port()
        bootstrap = {"static_resources": {
            # codec_type HTTP1: the HTTP/1 codec is what is fuzzed
            "listeners": [http_listener(STAT_PREFIX, port, simple_route(CLUSTER), codec_type="HTTP1")],
            "clusters": [static_cluster(CLUSTER, [backend_port])],
        }}
        with ProxyProcess(bootstrap, tmp_path, concurrency=CONCURRENCY) as proxy:
            assert proxy.process is not None
            workers = child_pids(proxy.process.pid)
            assert len(workers) == CONCURRENCY - 1
            fuzz = FuzzProxy(proxy, port, workers)
            deadline = time.monotonic() + 30
            while True:  # the backend is a separate process: wait until it answers through the proxy
                try:
                    fuzz.assert_healthy()
                    break
                except (AssertionError, OSError):
                    if time.monotonic() > deadline or backend.poll() is not None:
                        raise
                    time.sleep(0.1)
            yield fuzz
    finally:
        backend.terminate()
        backend.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_hundreds_of_thousands_of_malformed_inputs_against_the_compiled_codec(slow_fuzz_proxy: FuzzProxy) -> None:
    from tulle.compiled import pure_python_requested

    fuzz = slow_fuzz_proxy
    assert fuzz.proxy.process is not None
    pids = [fuzz.proxy.process.pid, *fuzz.workers]
    errors_before = fuzz.stat(f"http.{STAT_PREFIX}.downstream_rq_4xx") + fuzz.stat(f"http.{STAT_PREFIX}.downstream_rq_5xx")
    run = SlowRun()
    started = time.monotonic()
    done = 0
    while done < SLOW_INPUTS:
        batch = min(SLOW_HEALTH_EVERY, SLOW_INPUTS - done)
        asyncio.run(fuzz_many(fuzz, batch, SLOW_SEED + done, run))
        done += batch
        fuzz.assert_healthy()
    elapsed = time.monotonic() - started
    print(f"\n{run.inputs} malformed inputs in {elapsed:.0f} s ({run.inputs / elapsed:.0f}/s) over {run.connections} "
          f"connections: {run.reused} answered on a kept connection, {run.proxy_closed} closed by the proxy, "
          f"{run.half_closed} closed after our half-close, {run.left_open} left open at the end; "
          f"{fuzz.error_replies_seen} error replies seen")
    assert run.inputs >= SLOW_INPUTS
    assert run.connections == run.proxy_closed + run.half_closed + run.left_open
    errors_after = fuzz.stat(f"http.{STAT_PREFIX}.downstream_rq_4xx") + fuzz.stat(f"http.{STAT_PREFIX}.downstream_rq_5xx")
    assert errors_after - errors_before >= fuzz.error_replies_seen > 0
    # the codec under test is the compiled one: its extension modules are mapped into the proxy and every
    # worker (under TULLE_PURE_PYTHON=1 the same run covers the pure sources, and none may be mapped)
    # (the codec's modules: filters this config does not use are never imported, compiled or not)
    expected = not pure_python_requested()
    codec = ("tulle.http.http1_parser", "tulle.http.http1", "tulle.http.headers",
             "tulle.filters.network.http_connection_manager.connection_manager")
    for pid in pids:
        loaded = compiled_modules_loaded(pid)
        assert {name: loaded[name] for name in codec} == dict.fromkeys(codec, expected), (
            f"process {pid} of the proxy: {loaded}, expected compiled={expected}")
        if not expected:
            assert not any(loaded.values()), loaded
