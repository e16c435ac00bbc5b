"""The HTTP/2 session (libnghttp2 compiled, the h2 library uncompiled) driven by a real HTTP/2 client.

The client is the ``h2`` library; the frames it cannot be made to send (floods, malformed
sequences) are built with hyperframe, h2's frame layer."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import hyperframe.frame as frames
import pytest

from tulle.compiled import is_compiled
from tulle.http.codec_callbacks import CodecCallbacks
from tulle.http.http2_codec import (
    ENHANCE_YOUR_CALM,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    Http2Error,
    Http2Session,
    Http2Settings,
    error_name,
)

# What nghttp2 does and the h2 library (the uncompiled peer, TULLE_PURE_PYTHON) does not: flood limits,
# per-stream rejection of malformed requests, decoding a header list past 64 KiB to count it.
nghttp2_only = pytest.mark.skipif(not is_compiled("tulle.http.http2_codec"),
                                  reason="nghttp2's protections; the uncompiled peer (h2) has none")

REQUEST = [(":method", "POST"), (":scheme", "http"), (":authority", "svc"), (":path", "/upload")]
GET = [(":method", "GET"), (":scheme", "http"), (":authority", "svc"), (":path", "/")]


class Recorder(CodecCallbacks):
    """Records what the session reports, as a connection would receive it."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_h2_headers(self, stream_id, fields, end_stream):  # noqa: ANN001, ANN201
        self.events.append(("headers", stream_id, fields, end_stream))

    def on_h2_headers_too_large(self, stream_id):  # noqa: ANN001, ANN201
        self.events.append(("too_large", stream_id))

    def on_h2_data(self, stream_id, data, end_stream):  # noqa: ANN001, ANN201
        self.events.append(("data", stream_id, data, end_stream))

    def on_h2_stream_close(self, stream_id, error_code):  # noqa: ANN001, ANN201
        self.events.append(("close", stream_id, error_code))

    def on_h2_goaway(self, last_stream_id, error_code):  # noqa: ANN001, ANN201
        self.events.append(("goaway", last_stream_id, error_code))


def client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    return conn


def server(**settings: int) -> tuple[Http2Session, Recorder]:
    recorder = Recorder()
    return Http2Session(recorder, True, Http2Settings(**settings)), recorder


def deliver(session: Http2Session, conn: h2.connection.H2Connection) -> list[object]:
    """What the session has to send, as the client's events."""
    return conn.receive_data(session.take_output())


def test_preface_is_rfc_9113s() -> None:
    assert PREFACE == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def test_a_request_arrives_as_one_header_block_then_data_then_its_end() -> None:
    session, recorder = server()
    conn = client()
    conn.send_headers(1, REQUEST + [("x-a", "1")])
    conn.send_data(1, b"hello ")
    conn.send_data(1, b"world", end_stream=True)
    session.receive(conn.data_to_send())
    assert recorder.events == [
        ("headers", 1, REQUEST + [("x-a", "1")], False),
        ("data", 1, b"hello ", False),
        ("data", 1, b"world", False),
        ("data", 1, b"", True),
    ]


def test_settings_advertise_the_configured_limits() -> None:
    session, _ = server(max_concurrent_streams=7, initial_stream_window_size=100000, max_header_bytes=4096)
    conn = client()
    session.receive(conn.data_to_send())
    changed = [event for event in deliver(session, conn) if isinstance(event, h2.events.RemoteSettingsChanged)]
    values = {int(key): setting.new_value for key, setting in changed[0].changed_settings.items()}
    assert values[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] == 7
    assert values[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] == 100000
    assert values[h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE] == 4096


def test_a_response_with_data_and_trailers_reaches_the_client() -> None:
    session, _ = server()
    conn = client()
    conn.send_headers(1, GET, end_stream=True)
    session.receive(conn.data_to_send())
    session.submit_headers(1, [(":status", "200"), ("content-type", "application/grpc")], False)
    session.send_data(1, b"payload", False)
    session.send_trailers(1, [("grpc-status", "0"), ("grpc-message", "ok")])
    events = deliver(session, conn)
    response = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert response.headers == [(":status", "200"), ("content-type", "application/grpc")]
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"payload"
    trailers = next(e for e in events if isinstance(e, h2.events.TrailersReceived))
    assert trailers.headers == [("grpc-status", "0"), ("grpc-message", "ok")]
    assert any(isinstance(e, h2.events.StreamEnded) and e.stream_id == 1 for e in events)


def test_response_data_waits_for_the_clients_window() -> None:
    session, _ = server()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    conn.send_headers(1, GET, end_stream=True)
    session.receive(conn.data_to_send())
    session.submit_headers(1, [(":status", "200")], False)
    assert session.send_data(1, b"x" * 5000, True) == 5000
    events = deliver(session, conn)
    assert sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived)) == 1000
    assert session.buffered(1) == 4000  # the rest waits in the session, not in the socket
    conn.increment_flow_control_window(4000, stream_id=1)
    session.receive(conn.data_to_send())
    events = deliver(session, conn)
    assert sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived)) == 4000
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    assert session.buffered(1) == 0


def test_request_window_returns_only_when_consumed() -> None:
    session, _ = server(initial_stream_window_size=65535)
    conn = client()
    session.receive(conn.data_to_send())
    deliver(session, conn)  # the server's SETTINGS
    conn.send_headers(1, REQUEST)
    for _ in range(3):
        conn.send_data(1, b"x" * 13000)
    session.receive(conn.data_to_send())
    assert not [e for e in deliver(session, conn) if isinstance(e, h2.events.WindowUpdated) and e.stream_id == 1]
    session.consume(1, 39000)  # over half the window: nghttp2 sends the update
    updates = [e for e in deliver(session, conn) if isinstance(e, h2.events.WindowUpdated) and e.stream_id == 1]
    assert updates and updates[0].delta == 39000


def test_a_header_block_over_the_limit_resets_the_stream_and_is_never_delivered() -> None:
    session, recorder = server(max_header_bytes=1000)
    conn = client()
    conn.send_headers(1, GET + [("x-big", "y" * 2000)], end_stream=True)
    session.receive(conn.data_to_send())
    assert ("too_large", 1) in recorder.events
    assert not [event for event in recorder.events if event[0] == "headers"]
    frames_out = frames_of(session.take_output())
    assert any(isinstance(f, frames.RstStreamFrame) and f.stream_id == 1 for f in frames_out)


def test_too_many_headers_reset_the_stream() -> None:
    session, recorder = server(max_headers=10)
    conn = client()
    conn.send_headers(1, GET + [(f"x-h{i}", "v") for i in range(20)], end_stream=True)
    session.receive(conn.data_to_send())
    assert ("too_large", 1) in recorder.events


@nghttp2_only
def test_a_malformed_request_is_reset_by_nghttp2_and_not_delivered() -> None:
    session, recorder = server()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding="utf-8", validate_outbound_headers=False))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "GET"), (":path", "/")], end_stream=True)  # no :scheme
    session.receive(conn.data_to_send())
    assert not [event for event in recorder.events if event[0] == "headers"]
    frames_out = frames_of(session.take_output())
    resets = [f for f in frames_out if isinstance(f, frames.RstStreamFrame)]
    assert resets and resets[0].error_code == PROTOCOL_ERROR


@nghttp2_only
def test_rapid_reset_ends_the_connection() -> None:
    """CVE-2023-44487: streams opened and reset at once, faster than the rate limit allows."""
    session, _ = server()
    conn = client()
    for stream_id in range(1, 6001, 2):
        conn.send_headers(stream_id, GET, end_stream=True)
        conn.reset_stream(stream_id)
    session.receive(conn.data_to_send())
    goaways = [f for f in frames_of(session.take_output()) if isinstance(f, frames.GoAwayFrame)]
    assert goaways and goaways[0].error_code != NO_ERROR
    assert not session.wants_io()


@nghttp2_only
def test_continuation_flood_ends_the_connection() -> None:
    session, _ = server()
    headers = frames.HeadersFrame(1)
    headers.data = b"\x82"  # :method GET, and no END_HEADERS: CONTINUATION frames follow
    data = client().data_to_send() + headers.serialize()
    for _ in range(50):
        continuation = frames.ContinuationFrame(1)
        continuation.data = b"\x40\x01a\x01b"
        data += continuation.serialize()
    with pytest.raises(Http2Error) as caught:
        session.receive(data)
    assert caught.value.error_code == PROTOCOL_ERROR
    goaways = [f for f in frames_of(session.take_output()) if isinstance(f, frames.GoAwayFrame)]
    assert goaways and goaways[0].error_code == PROTOCOL_ERROR


@nghttp2_only
def test_ping_flood_ends_the_connection() -> None:
    session, _ = server(max_outbound_ack=100)
    ping = frames.PingFrame(0)
    ping.opaque_data = b"12345678"
    with pytest.raises(Http2Error) as caught:
        session.receive(client().data_to_send() + ping.serialize() * 500)
    assert caught.value.error_code == ENHANCE_YOUR_CALM


@nghttp2_only
def test_settings_flood_ends_the_connection() -> None:
    session, _ = server(max_outbound_ack=100)
    settings = frames.SettingsFrame(0)
    settings.settings = {4: 65535}
    with pytest.raises(Http2Error):
        session.receive(client().data_to_send() + settings.serialize() * 500)


@nghttp2_only
def test_hpack_bomb_is_cut_at_the_header_limit() -> None:
    """One large header in the dynamic table, then referenced over and over: the decoded list
    grows while the wire stays small. The stream is reset at max_header_bytes."""
    session, recorder = server(max_header_bytes=16 * 1024)
    conn = client()
    conn.send_headers(1, GET + [("x-bomb", "z" * 4000)], end_stream=True)
    conn.send_headers(3, GET + [("x-bomb", "z" * 4000)] * 40, end_stream=True)
    session.receive(conn.data_to_send())
    assert [event[1] for event in recorder.events if event[0] == "headers"] == [1]
    assert ("too_large", 3) in recorder.events


def test_an_exception_in_a_callback_propagates_out_of_receive() -> None:
    class Failing(Recorder):
        def on_h2_headers(self, stream_id, fields, end_stream):  # noqa: ANN001, ANN201
            raise ValueError("boom")

    session = Http2Session(Failing(), True, Http2Settings())
    conn = client()
    conn.send_headers(1, GET, end_stream=True)
    with pytest.raises(ValueError, match="boom"):
        session.receive(conn.data_to_send())


def test_goaway_from_the_peer_is_reported() -> None:
    session, recorder = server()
    conn = client()
    conn.close_connection(error_code=0, last_stream_id=0)
    session.receive(conn.data_to_send())
    assert ("goaway", 0, 0) in recorder.events


def test_our_goaway_carries_the_last_stream_processed() -> None:
    session, _ = server()
    conn = client()
    conn.send_headers(1, GET, end_stream=True)
    conn.send_headers(3, GET, end_stream=True)
    session.receive(conn.data_to_send())
    session.goaway(NO_ERROR)
    goaway = [f for f in frames_of(session.take_output()) if isinstance(f, frames.GoAwayFrame)][0]
    assert (goaway.last_stream_id, goaway.error_code) == (3, NO_ERROR)


def test_reset_stream_sends_rst_stream_with_the_code() -> None:
    session, recorder = server()
    conn = client()
    conn.send_headers(1, GET, end_stream=True)
    session.receive(conn.data_to_send())
    session.reset_stream(1, 8)
    events = deliver(session, conn)
    reset = next(e for e in events if isinstance(e, h2.events.StreamReset))
    assert (reset.stream_id, reset.error_code) == (1, 8)
    assert ("close", 1, 8) in recorder.events


def test_client_session_sends_requests_and_receives_responses() -> None:
    recorder = Recorder()
    session = Http2Session(recorder, False, Http2Settings())
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    peer.initiate_connection()
    stream_id = session.submit_request(REQUEST, False)
    session.send_data(stream_id, b"body", True)
    events = peer.receive_data(session.take_output())
    request = next(e for e in events if isinstance(e, h2.events.RequestReceived))
    assert request.headers == REQUEST
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b"body"
    peer.send_headers(stream_id, [(":status", "204")], end_stream=True)
    session.receive(peer.data_to_send())
    assert ("headers", stream_id, [(":status", "204")], True) in recorder.events


def test_error_names_are_rfc_9113s() -> None:
    assert error_name(ENHANCE_YOUR_CALM) == "ENHANCE_YOUR_CALM"
    assert error_name(PROTOCOL_ERROR) == "PROTOCOL_ERROR"


def frames_of(data: bytes) -> list[frames.Frame]:
    """Parse raw server output (no preface on the server side) into frames."""
    out = []
    while data:
        frame, length = frames.Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        out.append(frame)
        data = data[9 + length:]
    return out


def test_close_lets_go_of_the_connection_and_later_calls_do_nothing() -> None:
    import gc
    import weakref

    session, recorder = server()
    conn = client()
    conn.send_headers(1, GET, end_stream=True)
    session.receive(conn.data_to_send())
    owner = weakref.ref(recorder)
    session.close()
    del recorder
    gc.disable()  # freed by reference counting, not found later by the cyclic GC
    try:
        assert owner() is None
    finally:
        gc.enable()
    session.submit_headers(1, [(":status", "200")], True)
    session.receive(b"anything")
    assert session.take_output() == b"" and not session.wants_io()


def test_header_text_goes_out_as_latin_1_bytes() -> None:
    session, _ = server()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    conn.send_headers(1, GET, end_stream=True)
    session.receive(conn.data_to_send())
    session.submit_headers(1, [(":status", "200"), ("x-latin-1", "caf\u00e9"), ("x-wide", "\u0100".encode(
        "utf-8").decode("latin-1"))], True)
    response = next(e for e in conn.receive_data(session.take_output()) if isinstance(e, h2.events.ResponseReceived))
    assert (b"x-latin-1", b"caf\xe9") in response.headers  # one byte per character, as on HTTP/1
    assert (b"x-wide", "\u0100".encode("utf-8")) in response.headers
    with pytest.raises(UnicodeEncodeError):
        session.submit_headers(1, [(":status", "200"), ("x-bad", "\u20ac")], True)
