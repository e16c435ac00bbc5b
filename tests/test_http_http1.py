"""HTTP/1.1 head encoding and body framing: hop-by-hop headers never leave, the
caller's framing is the only framing, and chunks are framed as RFC 9112 says."""

from __future__ import annotations

import email.utils
import re

import httptools
import pytest

from tulle.http import http1
from tulle.http.headers import HOP_BY_HOP, HeaderMap


def parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    assert head.endswith(b"\r\n\r\n")
    lines = head[:-4].decode("latin-1").split("\r\n")
    pairs = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        assert sep, line
        pairs.append((name.lower(), value.strip()))
    return lines[0], pairs


HOP_BY_HOP_REQUEST = [
    ("connection", "keep-alive, x-custom"), ("keep-alive", "timeout=5"), ("proxy-connection", "keep-alive"),
    ("te", "trailers"), ("upgrade", "h2c"), ("transfer-encoding", "chunked"), ("trailer", "x-sum"),
    ("proxy-authorization", "Basic Zm9vOmJhcg=="), ("content-length", "99"), ("host", "stale.example"),
]


def request_headers(extra: list[tuple[str, str]]) -> HeaderMap:
    return HeaderMap([(":method", "POST"), (":path", "/p?q=1"), (":authority", "api.example:8080"),
                      (":scheme", "http"), ("accept", "*/*"), *extra, ("x-after", "kept")])


def test_request_head_has_request_line_host_and_our_framing_only() -> None:
    head = http1.encode_request_head(request_headers(HOP_BY_HOP_REQUEST), http1.content_length_line(12))
    start, pairs = parse_head(head)
    assert start == "POST /p?q=1 HTTP/1.1"
    names = [name for name, _ in pairs]
    assert names[0] == "host"
    assert dict(pairs)["host"] == "api.example:8080"  # from :authority, not the client's Host line
    assert names.count("host") == 1
    assert names.count("content-length") == 1 and dict(pairs)["content-length"] == "12"
    assert ("accept", "*/*") in pairs and ("x-after", "kept") in pairs
    for name in HOP_BY_HOP:
        assert name not in names, name
    assert not any(name.startswith(":") for name in names)


@pytest.mark.parametrize("framing, expected", [
    (b"", {}), (http1.CHUNKED, {"transfer-encoding": "chunked"}), (b"content-length: 0\r\n", {"content-length": "0"}),
])
def test_request_head_framing(framing: bytes, expected: dict[str, str]) -> None:
    _, pairs = parse_head(http1.encode_request_head(request_headers([("transfer-encoding", "gzip")]), framing))
    framing_headers = {name: value for name, value in pairs if name in ("content-length", "transfer-encoding")}
    assert framing_headers == expected


def test_request_head_parses_with_llhttp() -> None:
    head = http1.encode_request_head(request_headers(HOP_BY_HOP_REQUEST), http1.CHUNKED)
    seen: dict[str, object] = {}

    class Callbacks:
        def on_url(self, url: bytes) -> None:
            seen["url"] = url

        def on_headers_complete(self) -> None:
            seen["done"] = True

    parser = httptools.HttpRequestParser(Callbacks())
    parser.feed_data(head)
    assert seen == {"url": b"/p?q=1", "done": True}
    assert parser.get_method() == b"POST"


def test_response_head_strips_hop_by_hop_and_adds_framing() -> None:
    headers = HeaderMap([(":status", "200"), ("content-type", "text/plain"), ("connection", "keep-alive"),
                         ("keep-alive", "timeout=5"), ("transfer-encoding", "chunked"), ("content-length", "3"),
                         ("proxy-connection", "x"), ("upgrade", "websocket"), ("x-kept", "1")])
    head = http1.encode_response_head(200, headers, http1.content_length_line(42), close=False)
    start, pairs = parse_head(head)
    assert start == "HTTP/1.1 200 OK"
    assert pairs == [("content-type", "text/plain"), ("x-kept", "1"), ("content-length", "42")]


def test_response_head_close_adds_one_connection_close() -> None:
    headers = HeaderMap([(":status", "503"), ("connection", "keep-alive")])
    _, pairs = parse_head(http1.encode_response_head(503, headers, b"content-length: 0\r\n", close=True))
    assert [value for name, value in pairs if name == "connection"] == ["close"]


def test_response_head_from_wire_form_strips_case_insensitively_and_applies_sets() -> None:
    block = (b"\r\nContent-Type: text/html\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5"
             b"\r\nServer: upstream/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 10\r\nX-Kept: yes")
    index: dict[str, str | None] = {"content-type": "text/html", "server": "upstream/1.0",
                                    "content-length": "10", "transfer-encoding": "chunked"}
    headers = HeaderMap.from_wire([(":status", "200")], block, index)
    headers.set("server", "envoy")
    headers.set("x-envoy-upstream-service-time", "3")
    head = http1.encode_response_head(200, headers, http1.CHUNKED, close=False)
    start, pairs = parse_head(head)
    assert start == "HTTP/1.1 200 OK"
    names = [name for name, _ in pairs]
    for name in ("connection", "keep-alive", "content-length"):
        assert name not in names, name
    assert names.count("transfer-encoding") == 1  # ours
    assert [value for name, value in pairs if name == "server"] == ["envoy"]
    assert ("x-envoy-upstream-service-time", "3") in pairs
    assert ("x-kept", "yes") in pairs and ("content-type", "text/html") in pairs


def test_wire_and_decoded_maps_encode_the_same_headers() -> None:
    lines = [("content-type", "a/b"), ("connection", "close"), ("x-one", "1"), ("te", "trailers"), ("x-two", "2")]
    block = b"".join(b"\r\n%s: %s" % (n.encode(), v.encode()) for n, v in lines)
    wire = HeaderMap.from_wire([(":status", "404")], block, {"content-type": "a/b"})
    decoded = HeaderMap([(":status", "404"), *lines])
    for headers in (wire, decoded):
        headers.set("server", "envoy")
    encoded = [sorted(parse_head(http1.encode_response_head(404, h, b"content-length: 0\r\n", False))[1])
               for h in (wire, decoded)]
    assert encoded[0] == encoded[1]


NEAR_MISSES = [("tx", "1"), ("upgradeS", "2"), ("Upgrade-X", "3"), ("connections", "4"), ("x-content-length", "5"),
               ("content-lengthx", "6"), ("trailers", "7"), ("keep-alive-x", "8"), ("proxy-authorizatio", "9"),
               ("Proxy-Authenticate-Info", "10"), ("hostname", "11"), ("te-x", "12")]


def test_names_like_hop_by_hop_ones_are_forwarded() -> None:
    """Only the exact hop-by-hop names go, in any case; a name that merely starts like one, or has
    the same length, stays (the compiled encoders compare by length and bytes)."""
    hop = [("TE", "trailers"), ("Upgrade", "h2c"), ("KEEP-ALIVE", "5"), ("Proxy-Authorization", "x")]
    head = http1.encode_request_head(request_headers(NEAR_MISSES + hop), b"")
    _, pairs = parse_head(head)
    assert [pair for pair in pairs if pair[0] not in ("host", "accept", "x-after")] == [
        (name.lower(), value) for name, value in NEAR_MISSES]
    block = b"".join(b"\r\n%s: %s" % (n.encode(), v.encode()) for n, v in NEAR_MISSES + hop)
    wire = HeaderMap.from_wire([(":status", "200")], block, {})
    _, pairs = parse_head(http1.encode_response_head(200, wire, b"", close=False))
    assert pairs == [(name.lower(), value) for name, value in NEAR_MISSES]


def test_latin1_values_round_trip_byte_for_byte() -> None:
    """obs-text (bytes 0x80-0xff) in a value is forwarded unchanged, set() or passed through."""
    value = "caf\xe9 \xff"
    head = http1.encode_request_head(request_headers([("x-name", value)]), b"")
    assert b"\r\nx-name: caf\xe9 \xff\r\n" in head
    wire = HeaderMap.from_wire([(":status", "200")], b"\r\nX-Up: \xe9t\xe9\r\nServer: a", {})
    wire.set("server", value)
    head = http1.encode_response_head(200, wire, b"", close=False)
    assert head == b"HTTP/1.1 200 OK\r\nX-Up: \xe9t\xe9\r\nserver: caf\xe9 \xff\r\n\r\n"


def test_wire_head_with_no_header_lines() -> None:
    wire = HeaderMap.from_wire([(":status", "204")], b"", {})
    assert http1.encode_response_head(204, wire, b"", close=True) == (
        b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
    wire = HeaderMap.from_wire([(":status", "200")], b"", {})
    wire.set("x-envoy-upstream-service-time", "7")
    assert http1.encode_response_head(200, wire, b"content-length: 0\r\n", close=False) == (
        b"HTTP/1.1 200 OK\r\nx-envoy-upstream-service-time: 7\r\ncontent-length: 0\r\n\r\n")


@pytest.mark.parametrize("code, reason", [(200, "OK"), (404, "Not Found"), (426, "Upgrade Required"),
                                          (431, "Request Header Fields Too Large"), (504, "Gateway Timeout")])
def test_status_lines(code: int, reason: str) -> None:
    assert http1.status_line(code) == f"HTTP/1.1 {code} {reason}\r\n".encode()


def test_unknown_status_still_makes_a_valid_line() -> None:
    line = http1.status_line(599)
    assert re.fullmatch(rb"HTTP/1\.1 599 \S.*\r\n", line)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 255, 4096, 1_000_003])
def test_chunk_framing(size: int) -> None:
    data = bytes(index % 251 for index in range(size))
    framed = http1.chunk(data)
    size_line, _, rest = framed.partition(b"\r\n")
    assert int(size_line, 16) == size
    assert size_line == size_line.lower()
    assert rest == data + b"\r\n"


def test_chunks_and_last_chunk_parse_as_a_chunked_body() -> None:
    pieces = [b"hello", b" ", b"x" * 70000]
    body_seen: list[bytes] = []
    complete: list[bool] = []

    class Callbacks:
        def on_body(self, body: bytes) -> None:
            body_seen.append(body)

        def on_message_complete(self) -> None:
            complete.append(True)

    parser = httptools.HttpResponseParser(Callbacks())
    parser.feed_data(b"HTTP/1.1 200 OK\r\n" + http1.CHUNKED + b"\r\n")
    for piece in pieces:
        parser.feed_data(http1.chunk(piece))
    parser.feed_data(http1.LAST_CHUNK)
    assert b"".join(body_seen) == b"".join(pieces)
    assert complete == [True]


@pytest.mark.parametrize("value, line", [
    ("0", b"content-length: 0\r\n"), ("1024", b"content-length: 1024\r\n"), ("007", b"content-length: 7\r\n"),
    ("000", b"content-length: 0\r\n"), ("18446744073709551615", b"content-length: 18446744073709551615\r\n"),
    ("9" * 45, b"content-length: " + b"9" * 45 + b"\r\n"),
    ("", None), (None, None), ("12a", None), (" 12", None), ("-1", None), ("1.5", None), ("\u0663", None),
    ("\xb2", None),
])
def test_content_length_framing(value: str | None, line: bytes | None) -> None:
    """A Content-Length of ASCII digits frames the forwarded message (canonical digits); anything else
    does not (the caller chunks or closes), and never raises."""
    assert http1.content_length_framing(value) == line


def test_content_length_line() -> None:
    assert http1.content_length_line(0) == b"content-length: 0\r\n"
    assert http1.content_length_line(123456789) == b"content-length: 123456789\r\n"


def test_http_date_is_an_rfc9110_date() -> None:
    value = http1.http_date()
    assert re.fullmatch(r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT", value)
    assert email.utils.parsedate_to_datetime(value).tzname() == "UTC"
