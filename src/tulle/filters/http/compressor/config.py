"""Factory for ``envoy.filters.http.compressor`` with the gzip library
(``envoy.extensions.compression.gzip.compressor.v3.Gzip``, zlib from Python's standard library).

Supported: ``response_direction_config`` (``common_config``: ``enabled``, ``min_content_length``,
``content_type``; ``disable_on_etag_header``, ``remove_accept_encoding_header``,
``uncompressible_response_codes``) and the deprecated top-level ``content_length``,
``content_type``, ``disable_on_etag_header``, ``remove_accept_encoding_header`` and
``runtime_enabled``; the gzip settings ``compression_level``, ``compression_strategy``,
``memory_level``, ``window_bits`` and ``chunk_size``. Request compression
(``request_direction_config``) and ``status_header_enabled`` are refused by name.
"""

from __future__ import annotations

import zlib
from typing import Any

from tulle.config.errors import ConfigError, UnsupportedFeature, join
from tulle.config.loader import type_name_of, unpack_any
from tulle.config.support import check_fields
from tulle.filters.http.base import HttpFilter
from tulle.filters.http.compressor.filter import CompressorFilter, CompressorStats
from tulle.runtime import RuntimeFlag, feature_flag

GZIP_TYPE = "envoy.extensions.compression.gzip.compressor.v3.Gzip"
# Envoy's default content types worth compressing
DEFAULT_CONTENT_TYPES = (
    "text/html", "text/plain", "text/css", "application/javascript", "application/x-javascript",
    "text/javascript", "text/x-javascript", "text/ecmascript", "text/js", "text/jscript", "text/x-js",
    "application/ecmascript", "application/x-json", "application/xml", "application/json", "image/svg+xml",
    "text/xml", "application/xhtml+xml",
)
DEFAULT_MIN_CONTENT_LENGTH = 30
_STRATEGIES = {0: zlib.Z_DEFAULT_STRATEGY, 1: zlib.Z_FILTERED, 2: zlib.Z_HUFFMAN_ONLY, 3: zlib.Z_RLE, 4: zlib.Z_FIXED}


class GzipSettings:
    __slots__ = ("level", "strategy", "memory_level", "window_bits", "chunk_size")

    def __init__(self, proto: Any, field: str) -> None:
        check_fields(proto, ("memory_level", "compression_level", "compression_strategy", "window_bits",
                             "chunk_size"), field)
        self.level = proto.compression_level or zlib.Z_DEFAULT_COMPRESSION  # DEFAULT_COMPRESSION: zlib's default
        self.strategy = _STRATEGIES[proto.compression_strategy]
        self.memory_level = proto.memory_level.value if proto.HasField("memory_level") else 5
        if not 1 <= self.memory_level <= 9:
            raise ConfigError("must be between 1 and 9", field=join(field, "memory_level"))
        self.window_bits = proto.window_bits.value if proto.HasField("window_bits") else 12
        if not 9 <= self.window_bits <= 15:
            raise ConfigError("must be between 9 and 15", field=join(field, "window_bits"))
        self.chunk_size = proto.chunk_size.value if proto.HasField("chunk_size") else 4096
        if not 4096 <= self.chunk_size <= 65536:
            raise ConfigError("must be between 4096 and 65536", field=join(field, "chunk_size"))

    def compressor(self) -> Any:
        """A gzip stream (wbits + 16: the gzip header and trailer around deflate)."""
        return zlib.compressobj(self.level, zlib.DEFLATED, self.window_bits + 16, self.memory_level, self.strategy)


class CompressorFactory:
    name = "envoy.filters.http.compressor"
    encodes = True

    def __init__(self, proto: Any, field: str, hcm: Any) -> None:
        check_fields(proto, ("content_length", "content_type", "disable_on_etag_header",
                             "remove_accept_encoding_header", "runtime_enabled", "compressor_library",
                             "response_direction_config", "request_direction_config", "choose_first"), field)
        if proto.HasField("request_direction_config"):
            raise UnsupportedFeature("compressor request_direction_config (compressing request bodies)",
                                     field=join(field, "request_direction_config"))
        library_field = join(field, "compressor_library")
        if not proto.HasField("compressor_library"):
            raise ConfigError("compressor_library is required", field=library_field)
        library = proto.compressor_library
        type_name = type_name_of(library.typed_config)
        if type_name != GZIP_TYPE:
            raise UnsupportedFeature(f"compressor library {type_name or library.name!r} (only gzip)",
                                     field=join(library_field, "typed_config"))
        self.gzip = GzipSettings(unpack_any(library.typed_config, field=join(library_field, "typed_config")),
                                 join(library_field, "typed_config"))
        # deprecated top-level fields first, response_direction_config over them (as Envoy reads them)
        self.min_content_length = proto.content_length.value if proto.HasField("content_length") \
            else DEFAULT_MIN_CONTENT_LENGTH
        content_types = tuple(proto.content_type)
        self.disable_on_etag = proto.disable_on_etag_header
        self.remove_accept_encoding = proto.remove_accept_encoding_header
        self.enabled: bool | RuntimeFlag = True
        if proto.HasField("runtime_enabled"):
            self.enabled = feature_flag(hcm.ctx.runtime, proto.runtime_enabled, join(field, "runtime_enabled"))
        self.uncompressible_codes: frozenset[int] = frozenset()
        if proto.HasField("response_direction_config"):
            response = proto.response_direction_config
            response_field = join(field, "response_direction_config")
            check_fields(response, ("common_config", "disable_on_etag_header", "remove_accept_encoding_header",
                                    "uncompressible_response_codes"), response_field)
            if response.HasField("common_config"):
                common = response.common_config
                common_field = join(response_field, "common_config")
                check_fields(common, ("enabled", "min_content_length", "content_type"), common_field)
                if common.HasField("min_content_length"):
                    self.min_content_length = common.min_content_length.value
                if common.content_type:
                    content_types = tuple(common.content_type)
                if common.HasField("enabled"):
                    self.enabled = feature_flag(hcm.ctx.runtime, common.enabled, join(common_field, "enabled"))
            self.disable_on_etag = self.disable_on_etag or response.disable_on_etag_header
            self.remove_accept_encoding = self.remove_accept_encoding or response.remove_accept_encoding_header
            self.uncompressible_codes = frozenset(response.uncompressible_response_codes)
        self.content_types = frozenset(value.split(";", 1)[0].strip().lower()
                                       for value in (content_types or DEFAULT_CONTENT_TYPES))
        self.stats = CompressorStats(hcm.ctx.stats, f"http.{hcm.stat_prefix}.compressor.{library.name}.gzip.")

    def create_filter(self, stream: Any) -> HttpFilter:
        return CompressorFilter(stream, self)
