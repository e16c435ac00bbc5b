"""Factory for ``envoy.filters.http.decompressor`` with the gzip library
(``envoy.extensions.compression.gzip.decompressor.v3.Gzip``: ``window_bits``, ``chunk_size``,
``max_inflate_ratio``; zlib from Python's standard library).

Both directions, each on unless its ``common_config.enabled`` says otherwise (a runtime flag);
``ignore_no_transform_header``; ``advertise_accept_encoding`` (request direction, on by default):
while response decompression is on, the request's Accept-Encoding gains ``gzip`` so that the
upstream may compress what the proxy then decompresses.
"""

from __future__ import annotations

from typing import Any

from tulle.config.errors import ConfigError, UnsupportedFeature, join
from tulle.config.loader import type_name_of, unpack_any
from tulle.config.support import check_fields
from tulle.filters.http.base import HttpFilter
from tulle.filters.http.decompressor.filter import DecompressorFilter, DecompressorStats
from tulle.runtime import RuntimeFlag, feature_flag

GZIP_TYPE = "envoy.extensions.compression.gzip.decompressor.v3.Gzip"


class DirectionConfig:
    __slots__ = ("enabled", "ignore_no_transform")

    def __init__(self, proto: Any | None, field: str, runtime: Any) -> None:
        self.enabled: bool | RuntimeFlag = True
        self.ignore_no_transform = False
        if proto is None or not proto.HasField("common_config"):
            return
        common = proto.common_config
        common_field = join(field, "common_config")
        check_fields(common, ("enabled", "ignore_no_transform_header"), common_field)
        if common.HasField("enabled"):
            self.enabled = feature_flag(runtime, common.enabled, join(common_field, "enabled"))
        self.ignore_no_transform = common.ignore_no_transform_header


class DecompressorFactory:
    name = "envoy.filters.http.decompressor"
    encodes = True

    def __init__(self, proto: Any, field: str, hcm: Any) -> None:
        check_fields(proto, ("decompressor_library", "request_direction_config", "response_direction_config"), field)
        library_field = join(field, "decompressor_library")
        if not proto.HasField("decompressor_library"):
            raise ConfigError("decompressor_library is required", field=library_field)
        library = proto.decompressor_library
        if type_name_of(library.typed_config) != GZIP_TYPE:
            raise UnsupportedFeature(f"decompressor library {type_name_of(library.typed_config) or library.name!r} "
                                     "(only gzip)", field=join(library_field, "typed_config"))
        gzip_field = join(library_field, "typed_config")
        settings = unpack_any(library.typed_config, field=gzip_field)
        check_fields(settings, ("window_bits", "chunk_size", "max_inflate_ratio"), gzip_field)
        self.window_bits = settings.window_bits.value if settings.HasField("window_bits") else 15
        if not 9 <= self.window_bits <= 15:
            raise ConfigError("must be between 9 and 15", field=join(gzip_field, "window_bits"))
        self.chunk_size = settings.chunk_size.value if settings.HasField("chunk_size") else 4096
        self.max_inflate_ratio = settings.max_inflate_ratio.value if settings.HasField("max_inflate_ratio") else 100
        if not 1 <= self.max_inflate_ratio <= 1032:
            raise ConfigError("must be between 1 and 1032", field=join(gzip_field, "max_inflate_ratio"))
        request = proto.request_direction_config if proto.HasField("request_direction_config") else None
        if request is not None:
            check_fields(request, ("common_config", "advertise_accept_encoding"), join(field, "request_direction_config"))
        self.request = DirectionConfig(request, join(field, "request_direction_config"), hcm.ctx.runtime)
        self.advertise = request is None or not request.HasField("advertise_accept_encoding") or \
            request.advertise_accept_encoding.value
        response = proto.response_direction_config if proto.HasField("response_direction_config") else None
        if response is not None:
            check_fields(response, ("common_config",), join(field, "response_direction_config"))
        self.response = DirectionConfig(response, join(field, "response_direction_config"), hcm.ctx.runtime)
        base = f"http.{hcm.stat_prefix}.decompressor.{library.name}.gzip."
        self.request_stats = DecompressorStats(hcm.ctx.stats, base + "request.")
        self.response_stats = DecompressorStats(hcm.ctx.stats, base + "response.")

    def create_filter(self, stream: Any) -> HttpFilter:
        return DecompressorFilter(stream, self)
