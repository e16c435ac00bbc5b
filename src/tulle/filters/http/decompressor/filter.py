"""``envoy.filters.http.decompressor`` (gzip): bodies sent with ``Content-Encoding: gzip`` are
inflated on their way through, requests towards the upstream and responses towards the client, as
Envoy's filter does: the encoding leaves Content-Encoding (the header goes when gzip was all of it),
Content-Length goes, ``Cache-Control: no-transform`` is respected unless told otherwise, and a body
that inflates beyond ``max_inflate_ratio`` times its compressed size, or is no valid gzip, stops the
exchange (400 for a request still to be answered, a reset otherwise) rather than exhaust memory.
"""

from __future__ import annotations

import zlib
from typing import Any

from tulle import stream_info as flags
from tulle.filters.http.base import CONTINUE, STOP, HttpFilter
from tulle.http.headers import HeaderMap


class DecompressorStats:
    __slots__ = ("decompressed", "not_decompressed", "total_uncompressed_bytes", "total_compressed_bytes",
                 "decompression_error")

    def __init__(self, store: Any, prefix: str) -> None:
        for name in self.__slots__:
            setattr(self, name, store.counter(prefix + name))


class InflateError(Exception):
    pass


class Inflater:
    """One gzip body, inflated piece by piece within the ratio limit."""

    __slots__ = ("inflater", "limit_ratio", "compressed", "inflated", "chunk_size")

    def __init__(self, window_bits: int, limit_ratio: int, chunk_size: int) -> None:
        self.inflater = zlib.decompressobj(window_bits + 16)  # gzip framing
        self.limit_ratio = limit_ratio
        self.chunk_size = chunk_size
        self.compressed = 0
        self.inflated = 0

    def feed(self, data: bytes) -> bytes:
        self.compressed += len(data)
        budget = self.limit_ratio * max(self.compressed, 1) - self.inflated
        try:
            out = self.inflater.decompress(data, budget + 1)
        except zlib.error as exc:
            raise InflateError(str(exc)) from None
        self.inflated += len(out)
        if len(out) > budget or self.inflater.unconsumed_tail:
            raise InflateError(f"inflates beyond max_inflate_ratio {self.limit_ratio}")
        return out


def _gzip_encoded(headers: HeaderMap, ignore_no_transform: bool) -> bool:
    encoding = headers.get("content-encoding")
    if encoding is None:
        return False
    codings = [value.strip().lower() for value in encoding.split(",")]
    if codings[-1] != "gzip":  # the outermost coding is listed last
        return False
    return ignore_no_transform or "no-transform" not in (headers.get("cache-control") or "").lower()


def _drop_gzip(headers: HeaderMap) -> None:
    codings = [value.strip() for value in (headers.get("content-encoding") or "").split(",")][:-1]
    if codings:
        headers.set("content-encoding", ", ".join(codings))
    else:
        headers.remove("content-encoding")
    headers.remove("content-length")


class DecompressorFilter(HttpFilter):
    __slots__ = ("factory", "request_inflater", "response_inflater")

    def __init__(self, stream: Any, factory: Any) -> None:
        super().__init__(stream)
        self.factory = factory
        self.request_inflater: Inflater | None = None
        self.response_inflater: Inflater | None = None

    def _inflater(self) -> Inflater:
        factory = self.factory
        return Inflater(factory.window_bits, factory.max_inflate_ratio, factory.chunk_size)

    # --- request -----------------------------------------------------------
    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        factory = self.factory
        if factory.response.enabled and factory.advertise:
            accept = headers.get("accept-encoding")
            if accept is None:
                headers.set("accept-encoding", "gzip")
            elif "gzip" not in accept.lower():
                headers.set("accept-encoding", f"{accept}, gzip")
        if not factory.request.enabled:
            return CONTINUE
        if end_stream or not _gzip_encoded(headers, factory.request.ignore_no_transform):
            factory.request_stats.not_decompressed.value += 1
            return CONTINUE
        factory.request_stats.decompressed.value += 1
        _drop_gzip(headers)
        self.request_inflater = self._inflater()
        return CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        inflater = self.request_inflater
        if inflater is None:
            return CONTINUE
        stats = self.factory.request_stats
        try:
            out = inflater.feed(data)
        except InflateError as exc:
            stats.decompression_error.value += 1
            self.request_inflater = None
            self.stream.send_local_reply(flags.DOWNSTREAM_PROTOCOL_ERROR, status=400,
                                         body=f"request body decompression failed: {exc}".encode(),
                                         details="decompression_error")
            return STOP
        stats.total_compressed_bytes.value += len(data)
        stats.total_uncompressed_bytes.value += len(out)
        self.stream.decode_data_after(self, out, end_stream)
        return STOP

    # --- response ----------------------------------------------------------
    def encode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        factory = self.factory
        if not factory.response.enabled:
            return CONTINUE
        if end_stream or not _gzip_encoded(headers, factory.response.ignore_no_transform):
            factory.response_stats.not_decompressed.value += 1
            return CONTINUE
        factory.response_stats.decompressed.value += 1
        _drop_gzip(headers)
        self.response_inflater = self._inflater()
        return CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> int:
        inflater = self.response_inflater
        if inflater is None:
            return CONTINUE
        stats = self.factory.response_stats
        try:
            out = inflater.feed(data)
        except InflateError:
            stats.decompression_error.value += 1
            self.response_inflater = None
            self.stream.reset(flags.UPSTREAM_PROTOCOL_ERROR)  # the response started: it cannot be replaced
            return STOP
        stats.total_compressed_bytes.value += len(data)
        stats.total_uncompressed_bytes.value += len(out)
        self.stream.encode_data_after(self, out, end_stream)
        return STOP
