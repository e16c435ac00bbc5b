"""``envoy.filters.http.grpc_web``: gRPC-Web clients (browsers, over HTTP/1.1 or HTTP/2) to gRPC
servers, as Envoy's filter does it.

Requests with ``content-type: application/grpc-web[+proto]`` or ``application/grpc-web-text[+proto]``
become gRPC requests (``application/grpc``, ``te: trailers``, no Content-Length; a ``-text`` body is
base64-decoded as it streams). Their responses go back as gRPC-Web: the content type the client
asked for, the body base64-encoded for ``-text``, and the trailers turned into a final message
(flag 0x80) of ``name:value`` lines, since a browser cannot read HTTP trailers. Calls count in
``cluster.<name>.grpc-web.<service>.<method>.{success,failure,total,<grpc-status>}``, as in Envoy.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from tulle.filters.http.base import CONTINUE, STOP, HttpFilter
from tulle.http.grpc import charge_status, service_and_method, stats_prefix
from tulle.http.headers import HeaderMap

GRPC_WEB = "application/grpc-web"
GRPC_WEB_PROTO = "application/grpc-web+proto"
GRPC_WEB_TEXT = "application/grpc-web-text"
GRPC_WEB_TEXT_PROTO = "application/grpc-web-text+proto"
_CONTENT_TYPES = frozenset({GRPC_WEB, GRPC_WEB_PROTO, GRPC_WEB_TEXT, GRPC_WEB_TEXT_PROTO})
_TEXT_TYPES = frozenset({GRPC_WEB_TEXT, GRPC_WEB_TEXT_PROTO})
TRAILER_FLAG = 0x80


def is_grpc_web_request(headers: HeaderMap) -> bool:
    content_type = headers.get("content-type")
    return content_type is not None and content_type.split(";", 1)[0].strip().lower() in _CONTENT_TYPES


def trailers_message(trailers: HeaderMap) -> bytes:
    """The gRPC-Web trailer frame: flag 0x80, a 4-byte length, then ``name:value\\r\\n`` lines."""
    block = b"".join(f"{name}:{value}\r\n".encode("latin-1") for name, value in trailers if name[0] != ":")
    return bytes([TRAILER_FLAG]) + len(block).to_bytes(4, "big") + block


class GrpcWebFilter(HttpFilter):
    __slots__ = ("factory", "active", "text_request", "text_response", "response_type", "decode_rest",
                 "encode_rest", "names", "charged")

    def __init__(self, stream: Any, factory: Any) -> None:
        super().__init__(stream)
        self.factory = factory
        self.active = False
        self.text_request = False
        self.text_response = False
        self.response_type = GRPC_WEB_PROTO
        self.decode_rest = b""  # base64 characters short of a 4-character group
        self.encode_rest = b""  # bytes short of a 3-byte group
        self.names: tuple[str, str] | None = None
        self.charged = False

    # --- request -----------------------------------------------------------
    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        if not is_grpc_web_request(headers):
            return CONTINUE
        self.active = True
        content_type = (headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        self.text_request = content_type in _TEXT_TYPES
        accept = (headers.get("accept") or "").lower()
        self.text_response = self.text_request or GRPC_WEB_TEXT in accept
        self.response_type = GRPC_WEB_TEXT_PROTO if self.text_response else GRPC_WEB_PROTO  # as Envoy answers
        self.names = service_and_method(headers.get(":path") or "")
        headers.remove("content-length")  # a -text body changes length, and gRPC frames its own messages
        headers.set("content-type", "application/grpc")
        headers.set("te", "trailers")
        return CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        if not (self.active and self.text_request):
            return CONTINUE
        pending = self.decode_rest + data
        usable = len(pending) - len(pending) % 4 if not end_stream else len(pending)
        self.decode_rest = pending[usable:]
        try:
            decoded = base64.b64decode(pending[:usable], validate=True) if usable else b""
        except (binascii.Error, ValueError):
            self.stream.send_local_reply("", status=400, body=b"Bad gRPC-web request, invalid base64 data.",
                                         details="grpc_base64_decode_failed")
            return STOP
        self.stream.decode_data_after(self, decoded, end_stream)  # the filters after this one see them instead
        return STOP

    # --- response ----------------------------------------------------------
    def encode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        if not self.active:
            return CONTINUE
        headers.set("content-type", self.response_type)
        headers.remove("content-length")
        if end_stream:
            self._charge(headers.get("grpc-status"))  # trailers-only: the status is in the headers
        return CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> int:
        if not (self.active and self.text_response):
            return CONTINUE
        self.stream.encode_data_after(self, self._text(data, end_stream), end_stream)
        return STOP

    def encode_trailers(self, trailers: HeaderMap) -> int:
        if not self.active:
            return CONTINUE
        self._charge(trailers.get("grpc-status"))
        frame = trailers_message(trailers)
        if self.text_response:
            frame = self._text(frame, True)
        self.stream.encode_data_after(self, frame, True)  # the trailers travel as the body's last message
        return STOP

    def _text(self, data: bytes, end_stream: bool) -> bytes:
        pending = self.encode_rest + data
        usable = len(pending) if end_stream else len(pending) - len(pending) % 3
        self.encode_rest = pending[usable:]
        return base64.b64encode(pending[:usable])

    # --- stats -------------------------------------------------------------
    def _charge(self, status: str | None) -> None:
        if self.charged or status is None or self.names is None:
            return
        self.charged = True
        prefix = stats_prefix(self.factory.cluster_manager, self.stream.info.upstream_cluster, "grpc-web", self.names)
        if prefix is not None:
            charge_status(self.factory.store, prefix, status)
