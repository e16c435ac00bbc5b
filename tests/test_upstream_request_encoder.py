"""The router-codec seam's defaults: trailers end a body where a codec or a callback has no use for them."""

from __future__ import annotations

from typing import Any

from tulle.http.headers import HeaderMap
from tulle.upstream.request_encoder import RequestEncoder, UpstreamCallbacks


class RecordingCallbacks(UpstreamCallbacks):
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def on_upstream_data(self, data: bytes, end_stream: bool) -> None:
        self.seen.append(("data", data, end_stream))


class RecordingEncoder(RequestEncoder):
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bool]] = []

    def encode_data(self, data: bytes, end_stream: bool) -> None:
        self.sent.append((data, end_stream))


def test_response_trailers_end_the_body_for_callbacks_that_do_not_take_them() -> None:
    callbacks = RecordingCallbacks()
    callbacks.on_upstream_trailers(HeaderMap([("grpc-status", "0")]))
    assert callbacks.seen == [("data", b"", True)]


def test_request_trailers_end_the_body_on_an_encoder_that_cannot_frame_them() -> None:
    encoder = RecordingEncoder()
    encoder.encode_trailers(HeaderMap([("x-checksum", "1")]))
    assert encoder.sent == [(b"", True)]


def test_the_base_hooks_that_must_be_implemented_say_so() -> None:
    encoder = RequestEncoder()
    for call in (lambda: encoder.encode_headers(RecordingCallbacks(), HeaderMap(), True), lambda: encoder.abort("x")):
        try:
            call()
        except NotImplementedError:
            continue
        raise AssertionError("a codec must implement it")
