"""Factory for ``envoy.filters.http.grpc_web`` (its config message has no fields)."""

from __future__ import annotations

from typing import Any

from tulle.config.support import check_fields
from tulle.filters.http.base import HttpFilter
from tulle.filters.http.grpc_web.filter import GrpcWebFilter


class GrpcWebFactory:
    name = "envoy.filters.http.grpc_web"
    encodes = True  # responses are reframed for the browser

    def __init__(self, proto: Any, field: str, hcm: Any) -> None:
        check_fields(proto, (), field)
        self.store = hcm.ctx.stats
        self.cluster_manager = hcm.cluster_manager

    def create_filter(self, stream: Any) -> HttpFilter:
        return GrpcWebFilter(stream, self)
