"""Factory for ``envoy.filters.http.grpc_stats`` (Envoy's grpc_stats filter config).

Supported: ``stats_for_all_methods`` (unset: false, Envoy's current default),
``individual_method_stats_allowlist``, ``replace_dots_in_grpc_service_name`` and
``emit_filter_state``. ``enable_upstream_stats`` (a per-method upstream_rq_time histogram) is refused
by name: Tulle does not keep the upstream request's start in the stream info yet.
"""

from __future__ import annotations

from typing import Any

from tulle.config.errors import UnsupportedFeature, join
from tulle.config.support import check_fields
from tulle.filters.http.base import HttpFilter
from tulle.filters.http.grpc_stats.filter import GrpcStatsFilter

_FIELDS = ("emit_filter_state", "individual_method_stats_allowlist", "stats_for_all_methods",
           "replace_dots_in_grpc_service_name", "enable_upstream_stats")


class GrpcStatsFactory:
    name = "envoy.filters.http.grpc_stats"
    encodes = True  # the status comes with the response's headers or trailers

    def __init__(self, proto: Any, field: str, hcm: Any) -> None:
        check_fields(proto, _FIELDS, field)
        if proto.enable_upstream_stats:
            raise UnsupportedFeature("grpc_stats enable_upstream_stats (the per-method upstream_rq_time)",
                                     field=join(field, "enable_upstream_stats"))
        self.store = hcm.ctx.stats
        self.cluster_manager = hcm.cluster_manager
        self.emit_filter_state = proto.emit_filter_state
        self.replace_dots = proto.replace_dots_in_grpc_service_name
        self.stats_for_all_methods = proto.HasField("stats_for_all_methods") and proto.stats_for_all_methods.value
        # (service, method) pairs that get their own stats when not all methods do
        self.allowlist: frozenset[tuple[str, str]] = frozenset()
        if proto.HasField("individual_method_stats_allowlist"):
            allow_field = join(field, "individual_method_stats_allowlist")
            check_fields(proto.individual_method_stats_allowlist, ("services",), allow_field)
            pairs = set()
            for index, service in enumerate(proto.individual_method_stats_allowlist.services):
                check_fields(service, ("name", "method_names"), f"{join(allow_field, 'services')}[{index}]")
                pairs.update((service.name, method) for method in service.method_names)
            self.allowlist = frozenset(pairs)

    def stat_names(self, service: str, method: str) -> tuple[str, str] | None:
        """The (service, method) a call's stats are named by, or None for the cluster-wide ``grpc.*``."""
        if not self.stats_for_all_methods and (service, method) not in self.allowlist:
            return None
        return (service.replace(".", "_") if self.replace_dots else service), method

    def create_filter(self, stream: Any) -> HttpFilter:
        return GrpcStatsFilter(stream, self)
