"""``envoy.filters.http.compressor`` (gzip): responses compressed on the way to clients that accept
it, under Envoy's conditions: the client's Accept-Encoding allows gzip (q > 0, or ``*``), the response
has a body of an allowed content type and at least ``min_content_length`` (or no length: chunked),
is not encoded already, not ``Cache-Control: no-transform``, not a status on the uncompressible list
(nor 1xx/204/304), and has no ETag when ``disable_on_etag_header`` is set (else a strong ETag is
weakened). The compressed response loses its Content-Length and gets ``Content-Encoding: gzip`` and
``Vary: Accept-Encoding``. Stats as Envoy's, under ``http.<prefix>.compressor.<library>.gzip.``.
"""

from __future__ import annotations

import zlib
from typing import Any

from tulle.filters.http.base import CONTINUE, STOP, HttpFilter
from tulle.http.headers import HeaderMap

_COUNTERS = ("compressed", "not_compressed", "no_accept_header", "header_identity", "header_compressor_used",
             "header_wildcard", "header_not_valid", "total_uncompressed_bytes", "total_compressed_bytes",
             "content_length_too_small", "not_compressed_etag")


class CompressorStats:
    __slots__ = _COUNTERS

    def __init__(self, store: Any, prefix: str) -> None:
        for name in _COUNTERS:
            setattr(self, name, store.counter(prefix + name))


def accepts_gzip(accept_encoding: str, stats: CompressorStats) -> bool:
    """Whether an Accept-Encoding value lets the response be gzip (RFC 9110 q-values)."""
    gzip_q = wildcard_q = identity_q = None
    for item in accept_encoding.split(","):
        parts = item.strip().split(";")
        coding = parts[0].strip().lower()
        q = 1.0
        for parameter in parts[1:]:
            name, _, value = parameter.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    stats.header_not_valid.value += 1
                    return False
        if coding == "gzip":
            gzip_q = q
        elif coding == "*":
            wildcard_q = q
        elif coding == "identity":
            identity_q = q
    if gzip_q is not None:
        if gzip_q > 0 and (identity_q is None or gzip_q >= identity_q):
            stats.header_compressor_used.value += 1
            return True
        if identity_q is not None and identity_q > gzip_q:
            stats.header_identity.value += 1
        return False
    if wildcard_q is not None and wildcard_q > 0:
        stats.header_wildcard.value += 1
        return True
    if identity_q is not None:
        stats.header_identity.value += 1
    return False


class CompressorFilter(HttpFilter):
    __slots__ = ("factory", "accepts", "compressor")

    def __init__(self, stream: Any, factory: Any) -> None:
        super().__init__(stream)
        self.factory = factory
        self.accepts = False
        self.compressor: Any = None

    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        factory = self.factory
        accept = headers.get("accept-encoding")
        if accept is None:
            factory.stats.no_accept_header.value += 1
        else:
            self.accepts = bool(factory.enabled) and accepts_gzip(accept, factory.stats)
            if factory.remove_accept_encoding:
                headers.remove("accept-encoding")
        return CONTINUE

    def encode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        if not self._compressible(headers, end_stream):
            self.factory.stats.not_compressed.value += 1
            return CONTINUE
        self.factory.stats.compressed.value += 1
        headers.remove("content-length")
        headers.set("content-encoding", "gzip")
        vary = headers.get("vary")
        if vary is None:
            headers.set("vary", "Accept-Encoding")
        elif "accept-encoding" not in vary.lower():
            headers.set("vary", f"{vary}, Accept-Encoding")
        etag = headers.get("etag")
        if etag is not None and not etag.startswith("W/"):
            headers.set("etag", "W/" + etag)  # the representation changed: a strong validator no longer holds
        self.compressor = self.factory.gzip.compressor()
        return CONTINUE

    def _compressible(self, headers: HeaderMap, end_stream: bool) -> bool:
        factory = self.factory
        if end_stream or not self.accepts or self.stream.is_head:
            return False
        status = int(headers.get(":status") or "200")
        if status < 200 or status in (204, 304) or status in factory.uncompressible_codes:
            return False
        content_type = (headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if content_type not in factory.content_types:
            return False
        if headers.get("content-encoding") is not None:
            return False
        if "no-transform" in (headers.get("cache-control") or "").lower():
            return False
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) < factory.min_content_length:
            factory.stats.content_length_too_small.value += 1
            return False
        if factory.disable_on_etag and headers.get("etag") is not None:
            factory.stats.not_compressed_etag.value += 1
            return False
        return True

    def encode_data(self, data: bytes, end_stream: bool) -> int:
        compressor = self.compressor
        if compressor is None:
            return CONTINUE
        stats = self.factory.stats
        stats.total_uncompressed_bytes.value += len(data)
        out = compressor.compress(data)
        if end_stream:
            out += compressor.flush(zlib.Z_FINISH)
            self.compressor = None
        elif out:
            out += compressor.flush(zlib.Z_SYNC_FLUSH)  # what zlib had is sent now, not held for more input
        stats.total_compressed_bytes.value += len(out)
        if out or end_stream:
            self.stream.encode_data_after(self, out, end_stream)
        return STOP

    def encode_trailers(self, trailers: HeaderMap) -> int:
        compressor = self.compressor
        if compressor is not None:
            self.compressor = None
            out = compressor.flush(zlib.Z_FINISH)
            self.factory.stats.total_compressed_bytes.value += len(out)
            self.stream.encode_data_after(self, out, False)  # the gzip stream ends before the trailers
        return CONTINUE
