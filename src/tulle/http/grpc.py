"""gRPC over HTTP/2, as the proxy needs to know it: what a gRPC request looks like, and how a local
reply becomes a gRPC error (Envoy's Grpc::Common and Grpc::Utility)."""

from __future__ import annotations

from typing import Any
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


def service_and_method(path: str) -> tuple[str, str] | None:
    """Envoy's Grpc::Common::resolveServiceAndMethod: ``/<service>/<method>``, both non-empty."""
    if not path.startswith("/"):
        return None
    parts = path[1:].split("/")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1]


def stats_prefix(cluster_manager: Any, cluster_name: str, protocol: str, names: tuple[str, str] | None) -> str | None:
    """Where a call's stats go (Envoy's Grpc::Context): ``cluster.<name>.<protocol>.`` and, when the call
    is named, ``<service>.<method>.``; None when the call reached no cluster."""
    cluster = cluster_manager.get(cluster_name) if cluster_name else None
    if cluster is None:
        return None
    base = f"{cluster.stats.prefix}{protocol}."
    return base if names is None else f"{base}{names[0]}.{names[1]}."


def charge_status(store: Any, prefix: str, status: str) -> None:
    """Envoy's chargeStat: the call's grpc-status counter, success or failure, and total."""
    status = status.strip()
    store.counter(prefix + status).inc()
    store.counter(prefix + ("success" if status == "0" else "failure")).inc()
    store.counter(prefix + "total").inc()


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
