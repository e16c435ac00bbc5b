"""gRPC over HTTP/2, as the proxy needs to know it: what a gRPC request looks like, and how a local
reply becomes a gRPC error (Envoy's Grpc::Common and Grpc::Utility)."""

from __future__ import annotations

from urllib.parse import quote

from tulle.http.headers import HeaderMap

CONTENT_TYPE = "application/grpc"
# Envoy's Grpc::Utility::httpToGrpcStatus (the gRPC status of a local reply with an HTTP status)
STATUS_BY_HTTP = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
UNKNOWN = 2


def is_grpc_request(headers: HeaderMap) -> bool:
    """Envoy's hasGrpcContentType: application/grpc, optionally with a +suffix or ;parameters."""
    content_type = headers.get("content-type")
    if content_type is None or not content_type.startswith(CONTENT_TYPE):
        return False
    return len(content_type) == 16 or content_type[16] in "+;"


def status_for_http(http_status: int) -> int:
    return STATUS_BY_HTTP.get(http_status, UNKNOWN)


def encode_message(text: str) -> str:
    """grpc-message is percent-encoded (the gRPC HTTP/2 protocol: printable ASCII but '%' as is)."""
    return quote(text, safe=" !\"#$&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~")


def local_reply_headers(http_status: int, message: str, grpc_status: int | None = None) -> list[tuple[str, str]]:
    """A trailers-only gRPC error in place of an HTTP local reply (Envoy's sendLocalReply for gRPC):
    HTTP 200, the status mapped from the HTTP one unless given, and the reply's text as grpc-message."""
    code = status_for_http(http_status) if grpc_status is None else grpc_status
    items = [(":status", "200"), ("content-type", CONTENT_TYPE), ("grpc-status", str(code))]
    if message:
        items.append(("grpc-message", encode_message(message)))
    return items
