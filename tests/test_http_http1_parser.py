"""tulle.http.http1_parser: the llhttp binding (compiled .pyx) and its pure-Python peer (httptools).

Every test runs against both implementations; a hypothesis test checks they agree event for event.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tulle.http.http1_parser as loaded
from tulle.http.codec_callbacks import CodecCallbacks

PURE_PATH = pathlib.Path(loaded.__file__).with_name("http1_parser.py")


def _load_pure():
    name = "tulle.http._http1_parser_pure"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, PURE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


pure = _load_pure()
IMPLEMENTATIONS = [pytest.param(loaded, id="loaded"), pytest.param(pure, id="pure")]


def test_the_loaded_module_is_the_compiled_binding_unless_pure_python_is_requested():
    from tulle import compiled
    assert "tulle.http.http1_parser" in compiled.MODULES
    if not compiled.pure_python_requested():
        assert compiled.is_compiled("tulle.http.http1_parser")
        assert not loaded.__file__.endswith(".py")


class Recorder:
    """A protocol that records what the parser reports (consecutive body pieces merged)."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_request_head(self, method, target, http10, headers):
        self.events.append(("request", method, target, http10, list(headers)))

    def on_response_head(self, status, http10, block, content_length, transfer_encoding, keep_alive):
        self.events.append(("response", status, http10, block, content_length, transfer_encoding, keep_alive))

    def on_body(self, data):
        assert type(data) is bytes and data
        if self.events and self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + data)
        else:
            self.events.append(("body", data))

    def on_message_complete(self, keep_alive):
        self.events.append(("end", keep_alive))


def request_parser(impl, max_head_bytes=60 * 1024, max_headers=100):
    recorder = Recorder()
    return impl.RequestParser(recorder, max_head_bytes, max_headers), recorder


def response_parser(impl, max_head_bytes=60 * 1024):
    recorder = Recorder()
    return impl.ResponseParser(recorder, max_head_bytes), recorder


def feed_all(parser, pieces):
    for piece in pieces:
        parser.feed_data(piece)


class CallbacksRecorder(Recorder, CodecCallbacks):
    """The same recorder as a CodecCallbacks (what the connections are): the compiled parser calls it
    through the C-level interface, whose dispatch reaches these Python overrides."""


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_parser_callbacks_protocol_sees_what_any_protocol_sees(impl):
    requests = [b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                b"GET / HTTP/1.0\r\nX-One: 1\r\n\r\n"]
    responses = [b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nServer: s\r\n\r\nabc",
                 b"HTTP/1.1 204 No Content\r\n\r\n"]
    seen = []
    for recorder_class in (Recorder, CallbacksRecorder):
        request_recorder, response_recorder = recorder_class(), recorder_class()
        feed_all(impl.RequestParser(request_recorder, 60 * 1024, 100), requests)
        feed_all(impl.ResponseParser(response_recorder, 60 * 1024), responses)
        seen.append((request_recorder.events, response_recorder.events))
    assert seen[0] == seen[1]
    assert [event[0] for event in seen[1][0]] == ["request", "body", "end", "request", "end"]
    assert [event[0] for event in seen[1][1]] == ["response", "body", "end", "response", "end"]


BENCH_REQUEST = b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:10000\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
BENCH_REQUEST_EVENTS = [
    ("request", "GET", "/1k", False, [("host", "127.0.0.1:10000"), ("user-agent", "wrk"), ("accept", "*/*")]),
    ("end", True),
]
BENCH_RESPONSE_HEAD = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 21 Nov 2026 06:00:00 GMT\r\n"
                       b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
                       b"Last-Modified: Sat, 21 Nov 2026 05:00:00 GMT\r\nConnection: keep-alive\r\n"
                       b"ETag: \"abc-400\"\r\nAccept-Ranges: bytes\r\n\r\n")
BENCH_RESPONSE = BENCH_RESPONSE_HEAD + b"a" * 1024
BENCH_RESPONSE_EVENTS = [
    ("response", 200, False, BENCH_RESPONSE_HEAD[15:-4], "1024", None, True),
    ("body", b"a" * 1024),
    ("end", True),
]


# --- requests ---------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_request_head_in_one_read(impl):
    parser, recorder = request_parser(impl)
    parser.feed_data(BENCH_REQUEST)
    assert recorder.events == BENCH_REQUEST_EVENTS
    assert not parser.in_head


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_request_split_at_every_byte_boundary(impl):
    data = (b"POST /upload?x=1 HTTP/1.1\r\nHost: example.com\r\nX-Multi: a\r\nx-multi:  b \r\n"
            b"Content-Length: 5\r\n\r\nhello")
    expected = [
        ("request", "POST", "/upload?x=1", False,
         [("host", "example.com"), ("x-multi", "a"), ("x-multi", "b "), ("content-length", "5")]),
        ("body", b"hello"),
        ("end", True),
    ]
    for cut in range(1, len(data)):
        parser, recorder = request_parser(impl)
        parser.feed_data(data[:cut])
        assert parser.in_head == (cut < data.index(b"\r\n\r\n") + 4)
        parser.feed_data(data[cut:])
        assert recorder.events == expected, cut
    parser, recorder = request_parser(impl)
    feed_all(parser, [data[i:i + 1] for i in range(len(data))])
    assert recorder.events == expected


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_in_head_is_false_before_any_byte_and_between_messages(impl):
    parser, _ = request_parser(impl)
    assert not parser.in_head
    parser.feed_data(BENCH_REQUEST + b"\r\n")  # line ends between requests are skipped
    assert not parser.in_head
    parser.feed_data(b"G")
    assert parser.in_head


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_pipelined_requests_in_one_read(impl):
    parser, recorder = request_parser(impl)
    parser.feed_data(BENCH_REQUEST + b"HEAD /b HTTP/1.1\r\nHost: h\r\n\r\n" + BENCH_REQUEST[:20])
    assert recorder.events == BENCH_REQUEST_EVENTS + [
        ("request", "HEAD", "/b", False, [("host", "h")]), ("end", True)]
    assert parser.in_head
    parser.feed_data(BENCH_REQUEST[20:])
    assert recorder.events[4:] == BENCH_REQUEST_EVENTS


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_chunked_request_body_ignores_trailers(impl):
    parser, recorder = request_parser(impl)
    parser.feed_data(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
    assert recorder.events == [
        ("request", "POST", "/", False, [("host", "h"), ("transfer-encoding", "chunked")]),
        ("body", b"hello world"),
        ("end", True),
    ]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_content_length_body_across_reads(impl):
    parser, recorder = request_parser(impl)
    parser.feed_data(b"PUT /k HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123")
    assert recorder.events[-1] == ("body", b"0123")
    parser.feed_data(b"456789GET")
    assert recorder.events[1:] == [("body", b"0123456789"), ("end", True)]
    assert parser.in_head


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_a_body_that_is_a_whole_read_is_passed_as_is(impl):
    body = b"x" * 100
    seen = []

    class Keep(Recorder):
        def on_body(self, data):
            seen.append(data)

    parser = impl.RequestParser(Keep(), 1024, 10)
    parser.feed_data(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 200\r\n\r\n")
    parser.feed_data(body)
    assert seen == [body]
    if impl is loaded and not loaded.__file__.endswith(".py"):
        assert seen[0] is body  # no copy


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(("version", "connection", "keep_alive"), [
    ("1.1", None, True),
    ("1.1", "close", False),
    ("1.1", "Keep-Alive", True),
    ("1.0", None, False),
    ("1.0", "keep-alive", True),
    ("1.0", "close", False),
])
def test_request_keep_alive_rules(impl, version, connection, keep_alive):
    parser, recorder = request_parser(impl)
    extra = f"Connection: {connection}\r\n" if connection else ""
    parser.feed_data(f"GET / HTTP/{version}\r\nHost: h\r\n{extra}\r\n".encode())
    assert recorder.events[0][3] == (version != "1.1")
    assert recorder.events[-1] == ("end", keep_alive)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_http10_flag_and_no_data_after_a_message_that_closes(impl):
    parser, recorder = request_parser(impl)
    parser.feed_data(b"OPTIONS * HTTP/1.1\r\n\r\nGET / HTTP/1.0\r\n\r\n")
    assert [(e[1], e[2], e[3]) for e in recorder.events if e[0] == "request"] == [
        ("OPTIONS", "*", False), ("GET", "/", True)]
    with pytest.raises(impl.ParserError):  # llhttp: data after a message that does not keep alive
        parser.feed_data(b"GET / HTTP/1.1\r\n\r\n")


def head_with(size: int) -> bytes:
    """A request head whose URL plus header names and values count ``size`` bytes."""
    url = "/"
    name = "x-pad"
    value = "v" * (size - len(url) - len(name))
    return f"GET {url} HTTP/1.1\r\n{name}: {value}\r\n\r\n".encode()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_request_head_size_limit_counts_url_names_and_values(impl):
    parser, recorder = request_parser(impl, max_head_bytes=100)
    parser.feed_data(head_with(100))
    assert recorder.events[-1] == ("end", True)
    parser, recorder = request_parser(impl, max_head_bytes=100)
    with pytest.raises(impl.ParserError) as info:
        parser.feed_data(head_with(101))
    assert (info.value.status, info.value.details) == (431, "http1.headers_too_large")
    assert recorder.events == []


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_request_head_size_limit_across_reads(impl):
    parser, recorder = request_parser(impl, max_head_bytes=100)
    parser.feed_data(b"GET / HTTP/1.1\r\n" + b"x" * 60)
    with pytest.raises(impl.ParserError) as info:
        parser.feed_data(b"y" * 41)
    assert (info.value.status, info.value.details) == (431, "http1.headers_too_large")
    with pytest.raises(impl.ParserError):
        parser.feed_data(b": v\r\n\r\n")  # refused after the error
    assert recorder.events == []


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_request_header_count_limit(impl):
    lines = "".join(f"h{i}: v\r\n" for i in range(5))
    parser, recorder = request_parser(impl, max_headers=5)
    parser.feed_data(f"GET / HTTP/1.1\r\n{lines}\r\n".encode())
    assert len(recorder.events[0][4]) == 5
    parser, recorder = request_parser(impl, max_headers=4)
    with pytest.raises(impl.ParserError) as info:
        parser.feed_data(f"GET / HTTP/1.1\r\n{lines}\r\n".encode())
    assert (info.value.status, info.value.details) == (431, "http1.too_many_headers")
    assert recorder.events == []


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("data", [
    b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n",  # obs-fold
    b"GET / HTTP/1.1\nHost: h\n\n",  # bare LF
    b"GET / HTTP/9.9\r\n\r\n",
    b"G@T / HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"\x00\x01\x02",
])
def test_malformed_requests_are_400(impl, data):
    parser, _ = request_parser(impl)
    with pytest.raises(impl.ParserError) as info:
        parser.feed_data(data)
    assert (info.value.status, info.value.details) == (400, "http1.codec_error")
    with pytest.raises(impl.ParserError):
        parser.feed_data(BENCH_REQUEST)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("coding", ["gzip", "gzip, chunked", "identity"])
def test_transfer_coding_other_than_chunked_is_501(impl, coding):
    parser, recorder = request_parser(impl)
    with pytest.raises(impl.ParserError) as info:
        parser.feed_data(f"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {coding}\r\n\r\n".encode())
    assert (info.value.status, info.value.details) == (501, "http1.invalid_transfer_encoding")
    assert recorder.events == []


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_upgrade_stops_after_the_head_with_the_offset_of_what_follows(impl):
    head = b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    parser, recorder = request_parser(impl)
    with pytest.raises(impl.ParserUpgrade) as info:
        parser.feed_data(BENCH_REQUEST + head + b"\x81\x05hello")
    assert info.value.offset == len(BENCH_REQUEST) + len(head)
    assert [e[0] for e in recorder.events] == ["request", "end", "request", "end"]
    assert recorder.events[2][4][-1] == ("upgrade", "websocket")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_connect_stops_after_the_head(impl):
    head = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    parser, recorder = request_parser(impl)
    parser.feed_data(head[:10])
    with pytest.raises(impl.ParserUpgrade) as info:
        parser.feed_data(head[10:] + b"\x16\x03\x01")
    assert info.value.offset == len(head) - 10
    assert recorder.events[0][:3] == ("request", "CONNECT", "example.com:443")


class Boom(Exception):
    pass


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("callback", ["on_request_head", "on_body", "on_message_complete"])
def test_a_callback_exception_propagates_as_itself_and_stops_the_parser(impl, callback):
    calls = []

    class Failing(Recorder):
        pass

    def fail(*args):
        calls.append(args)
        raise Boom(callback)

    protocol = Failing()
    setattr(protocol, callback, fail)
    parser = impl.RequestParser(protocol, 1024, 10)
    data = b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok" + BENCH_REQUEST
    with pytest.raises(Boom) as info:
        parser.feed_data(data)
    assert info.value.args == (callback,)
    assert len(calls) == 1
    with pytest.raises(impl.ParserError):
        parser.feed_data(BENCH_REQUEST)
    assert len(calls) == 1


# --- responses --------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_response_with_content_length_whole_and_split_everywhere(impl):
    parser, recorder = response_parser(impl)
    parser.feed_data(BENCH_RESPONSE)
    assert recorder.events == BENCH_RESPONSE_EVENTS
    for cut in range(1, len(BENCH_RESPONSE_HEAD) + 10):
        parser, recorder = response_parser(impl)
        parser.feed_data(BENCH_RESPONSE[:cut])
        assert parser.in_head == (cut < len(BENCH_RESPONSE_HEAD)), cut
        parser.feed_data(BENCH_RESPONSE[cut:])
        assert recorder.events == BENCH_RESPONSE_EVENTS, cut


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_response_block_is_the_header_lines_as_received(impl):
    parser, recorder = response_parser(impl)
    parser.feed_data(b"HTTP/1.1 200 OK\r\nX-A:  spaced  \r\nCONTENT-LENGTH: 2 \r\nx-a: 2\r\n\r\nhi")
    assert recorder.events[0] == (
        "response", 200, False, b"\r\nX-A:  spaced  \r\nCONTENT-LENGTH: 2 \r\nx-a: 2", "2", None, True)
    from tulle.http.headers import HeaderMap
    headers = HeaderMap.from_wire([(":status", "200")], recorder.events[0][3], {"content-length": "2"})
    assert headers.get_all("x-a") == ["spaced", "2"]
    parser, recorder = response_parser(impl)
    parser.feed_data(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert recorder.events == [("response", 204, False, b"", None, None, True), ("end", True)]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_chunked_response_and_the_next_one_in_the_same_read(impl):
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4\r\n\r\n\r\n\r\n3\r\nabc\r\n0\r\nTrailer: t\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nz")
    expected = [
        ("response", 200, False, b"\r\nTransfer-Encoding: chunked", None, "chunked", True),
        ("body", b"\r\n\r\nabc"),
        ("end", True),
        ("response", 200, False, b"\r\nContent-Length: 1", "1", None, True),
        ("body", b"z"),
        ("end", True),
    ]
    parser, recorder = response_parser(impl)
    parser.feed_data(data)
    assert recorder.events == expected
    for cut in range(1, len(data)):
        parser, recorder = response_parser(impl)
        feed_all(parser, [data[:cut], data[cut:]])
        assert recorder.events == expected, cut


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_close_delimited_response_body(impl):
    parser, recorder = response_parser(impl)
    feed_all(parser, [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc", b"HTTP/1.1 200 OK\r\n\r\n"])
    assert recorder.events == [
        ("response", 200, False, b"\r\nConnection: close", None, None, False),
        ("body", b"abcHTTP/1.1 200 OK\r\n\r\n"),
    ]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(("head", "keep_alive"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", True),
    (b"HTTP/1.1 200 OK\r\n\r\n", True),  # no length: with HEAD it still ends at the head
    (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\n\r\n", False),
    (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\n", True),
])
def test_response_to_head_ends_at_its_head(impl, head, keep_alive):
    parser, recorder = response_parser(impl)
    parser.expect_no_body()
    parser.feed_data(b"HTTP/1.1 100 Continue\r\n\r\n" + head)
    assert [e[0] for e in recorder.events] == ["response", "end", "response", "end"]
    assert recorder.events[2][6] == keep_alive
    assert recorder.events[3] == ("end", keep_alive)
    if keep_alive:
        parser.feed_data(b"\r\nHTTP/1.1 204 No Content\r\n\r\n")
        assert recorder.events[4][1] == 204
    else:
        parser.feed_data(b"\r\n")
        with pytest.raises(impl.ParserError):  # llhttp: no data after a message that closes
            parser.feed_data(b"HTTP/1.1 204 No Content\r\n\r\n")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_expect_no_body_applies_to_one_response(impl):
    parser, recorder = response_parser(impl)
    parser.expect_no_body()
    parser.feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
    parser.feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc")
    assert [e[0] for e in recorder.events] == ["response", "end", "response", "body", "end"]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(impl, status):
    parser, recorder = response_parser(impl)
    parser.feed_data(f"HTTP/1.1 {status} X\r\nContent-Length: 5\r\n\r\n".encode() + BENCH_RESPONSE)
    assert recorder.events[:2] == [("response", status, False, b"\r\nContent-Length: 5", "5", None, True),
                                   ("end", True)]
    assert recorder.events[2:] == BENCH_RESPONSE_EVENTS


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_interim_responses_are_reported(impl):
    parser, recorder = response_parser(impl)
    feed_all(parser, [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", BENCH_RESPONSE])
    assert recorder.events[:4] == [
        ("response", 100, False, b"", None, None, True), ("end", True),
        ("response", 103, False, b"\r\nLink: </a>", None, None, True), ("end", True)]
    assert recorder.events[4:] == BENCH_RESPONSE_EVENTS


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_switching_protocols_response_is_an_upgrade(impl):
    head = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    parser, recorder = response_parser(impl)
    with pytest.raises(impl.ParserUpgrade) as info:
        parser.feed_data(head + b"\x81\x00")
    assert info.value.offset == len(head)
    assert [e[:2] for e in recorder.events] == [("response", 101), ("end", True)]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nA: b\r\n  folded\r\nContent-Length: 0\r\n\r\n",  # obs-fold
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",  # bare LF
    b"HTTP/1.1 200 OK\r\nA: b\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTX/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nq\r\n",
])
def test_malformed_responses_are_parser_errors(impl, data):
    # llhttp 9 is strict: obs-folds and bare LFs are refused (no slow path needed for them)
    parser, recorder = response_parser(impl)
    with pytest.raises(impl.ParserError) as info:
        parser.feed_data(data)
    assert (info.value.status, info.value.details) == (400, "http1.codec_error")
    assert all(e[0] != "end" for e in recorder.events)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_response_head_size_limit(impl):
    head = b"HTTP/1.1 200 OK\r\nX: " + b"v" * 70 + b"\r\n\r\n"
    parser, recorder = response_parser(impl, max_head_bytes=len(head))
    parser.feed_data(head)
    assert recorder.events[0][0] == "response"
    parser, recorder = response_parser(impl, max_head_bytes=len(head) - 1)
    with pytest.raises(impl.ParserError) as info:
        parser.feed_data(head)
    assert (info.value.status, info.value.details) == (431, "http1.headers_too_large")
    parser, recorder = response_parser(impl, max_head_bytes=len(head) - 3)
    parser.feed_data(head[:40])
    with pytest.raises(impl.ParserError) as info:
        parser.feed_data(head[40:-2])  # over the limit before its end
    assert info.value.status == 431
    assert recorder.events == []


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_response_callback_exception_propagates(impl):
    class Failing(Recorder):
        def on_response_head(self, *args):
            raise Boom("head")

    parser = impl.ResponseParser(Failing(), 1024)
    with pytest.raises(Boom):
        parser.feed_data(BENCH_RESPONSE)
    with pytest.raises(impl.ParserError):
        parser.feed_data(BENCH_RESPONSE)


# --- both implementations agree ------------------------------------------------
def run(impl, kind: str, pieces: list[bytes], max_head_bytes: int, max_headers: int, no_body: bool):
    recorder = Recorder()
    if kind == "request":
        parser = impl.RequestParser(recorder, max_head_bytes, max_headers)
    else:
        parser = impl.ResponseParser(recorder, max_head_bytes)
        if no_body:
            parser.expect_no_body()
    outcome = None
    for piece in pieces:
        try:
            parser.feed_data(piece)
        except impl.ParserUpgrade as exc:
            outcome = ("upgrade", exc.offset)
            break
        except impl.ParserError as exc:
            outcome = ("error", exc.status, exc.details)
            break
    return recorder.events, outcome, parser.in_head if outcome is None else None


EXTRA_HEADERS = [("Host", "h"), ("X-A", " padded \t"), ("x-a", ""), ("Accept", "a,b"), ("X-Obs", "x\x80y"),
                 ("Connection", "close"), ("Connection", "keep-alive"), ("Connection", "upgrade"),
                 ("Upgrade", "websocket"), ("Content-Length", "3"), ("Transfer-Encoding", "gzip"),
                 ("Bad Name", "v"), ("", "v"), ("X-Long", "v" * 30)]


@st.composite
def messages(draw, kind: str) -> bytes:
    """Mostly well-formed messages (valid framing, a few odd headers), sometimes mutated."""
    out = []
    for _ in range(draw(st.integers(1, 3))):
        if kind == "request":
            method = draw(st.sampled_from(["GET", "POST", "GET", "HEAD", "PUT", "CONNECT", "GeT"]))
            target = draw(st.sampled_from(["/", "/a?b=c", "*", "http://h/p", "h:443", "/%zz"]))
            line = f"{method} {target} HTTP/{draw(st.sampled_from(['1.1', '1.1', '1.0', '2.0']))}"
        else:
            status = draw(st.sampled_from([200, 200, 200, 204, 304, 100, 103, 101, 404]))
            line = f"HTTP/{draw(st.sampled_from(['1.1', '1.1', '1.0']))} {status} Reason"
        headers = [("Host", "h")] if kind == "request" else []
        framing = draw(st.sampled_from(["none", "length", "chunked"]))
        if framing == "length":
            body = draw(st.sampled_from([b"", b"abc", b"0123456789"]))
            headers.append(("Content-Length", str(len(body))))
        elif framing == "chunked":
            body = draw(st.sampled_from([b"3\r\nabc\r\n0\r\n\r\n", b"4\r\n\r\n\r\n\r\n0\r\nT: v\r\n\r\n",
                                         b"0\r\n\r\n", b"a;x=y\r\n0123456789\r\n0\r\n\r\n"]))
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            body = draw(st.sampled_from([b"", b"", b"xyz"]))
        headers += draw(st.lists(st.sampled_from(EXTRA_HEADERS), max_size=2))
        headers = draw(st.permutations(headers))
        head = line + "\r\n" + "".join(f"{n}:{v}\r\n" for n, v in headers) + "\r\n"
        out.append(head.encode("latin-1") + body)
    data = b"".join(out)
    if draw(st.sampled_from([False, False, False, True])):  # a random mutation: a byte replaced, inserted or removed
        at = draw(st.integers(0, len(data)))
        byte = bytes([draw(st.sampled_from([0, 9, 10, 13, 32, 44, 58, 127, 200, 65]))])
        how = draw(st.sampled_from(["replace", "insert", "delete"]))
        data = data[:at] + (b"" if how == "delete" else byte) + data[at + (how != "insert"):]
    return data


@st.composite
def streams(draw):
    kind = draw(st.sampled_from(["request", "response"]))
    data = draw(messages(kind))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return kind, [p for p in pieces if p], draw(st.sampled_from([60 * 1024, 60 * 1024, 200, 60])), \
        draw(st.sampled_from([100, 100, 4, 2])), draw(st.booleans())


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_compiled_and_pure_agree(case):
    if loaded is pure or loaded.__file__.endswith(".py"):
        pytest.skip("the compiled build is not loaded")
    kind, pieces, max_head_bytes, max_headers, no_body = case
    assert run(loaded, kind, pieces, max_head_bytes, max_headers, no_body) == \
        run(pure, kind, pieces, max_head_bytes, max_headers, no_body)
