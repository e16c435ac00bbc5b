"""Factory for ``envoy.filters.http.router`` (Envoy's router config.cc)."""

from __future__ import annotations

from typing import Any

from tulle.config.errors import UnsupportedFeature, join
from tulle.config.support import check_fields
from tulle.filters.http.router.filter import RouterFilter


class RouterFactory:
    name = "envoy.filters.http.router"
    encodes = False

    def __init__(self, proto: Any, field: str, hcm: Any) -> None:
        check_fields(proto, ("dynamic_stats", "suppress_envoy_headers", "start_child_span"), field)
        if proto.start_child_span:
            raise UnsupportedFeature("start_child_span (tracing comes later)", field=join(field, "start_child_span"))
        self.suppress_envoy_headers = proto.suppress_envoy_headers
        self.hcm = hcm
        self.stats = hcm.stats
        self.cluster_manager = hcm.cluster_manager
        self.buffer_limit = hcm.buffer_limit

    def create_filter(self, stream: Any) -> RouterFilter:
        return RouterFilter(stream, self)
