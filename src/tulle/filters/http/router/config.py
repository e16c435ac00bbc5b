"""Factory for ``envoy.filters.http.router`` (Envoy's router config.cc)."""

from __future__ import annotations

import random
from typing import Any

import cython

from tulle.config.errors import UnsupportedFeature, join
from tulle.config.support import check_fields
from tulle.filters.http.router.filter import RouterFilter
from tulle.stats.store import Counter


class RouterFactory:
    name = "envoy.filters.http.router"
    encodes = False

    if not cython.compiled:  # compiled, the fields come from config.pxd
        __slots__ = ("suppress_envoy_headers", "respect_expected_rq_timeout", "hcm", "stats", "cluster_manager",
                     "buffer_limit", "random", "_store", "_retried", "config_name")

    def __init__(self, proto: Any, field: str, hcm: Any) -> None:
        check_fields(proto, ("dynamic_stats", "suppress_envoy_headers", "start_child_span",
                             "respect_expected_rq_timeout"), field)
        if proto.start_child_span:
            raise UnsupportedFeature("start_child_span (tracing comes later)", field=join(field, "start_child_span"))
        self.suppress_envoy_headers = proto.suppress_envoy_headers
        # honour x-envoy-expected-rq-timeout-ms set by an egress Envoy as the route timeout
        self.respect_expected_rq_timeout = proto.respect_expected_rq_timeout
        self.hcm = hcm
        self.stats = hcm.stats
        self.cluster_manager = hcm.cluster_manager
        self.buffer_limit = hcm.buffer_limit
        self.random: Any = random  # retry back-off jitter (tests substitute a seeded generator)
        self._store = hcm.ctx.stats
        self._retried: dict[tuple[str, int], tuple[Counter, Counter, Counter]] = {}

    def create_filter(self, stream: Any) -> RouterFilter:
        return RouterFilter(stream, self)

    def count_retried_response(self, cluster: Any, status: int) -> None:
        """A response the router retried: ``cluster.<name>.retry.upstream_rq_<code>`` and its class
        (Envoy charges these instead of the plain ``upstream_rq_<code>``)."""
        key = (cluster.stats.prefix, status)
        counters = self._retried.get(key)
        if counters is None:
            prefix = f"{cluster.stats.prefix}retry."
            store = self._store
            counters = self._retried[key] = (
                store.counter(prefix + "upstream_rq_completed"),
                store.counter(f"{prefix}upstream_rq_{status // 100}xx"),
                store.counter(f"{prefix}upstream_rq_{status}"),
            )
        for counter in counters:
            counter.value += 1
