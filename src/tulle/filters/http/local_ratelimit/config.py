"""Factory for ``envoy.filters.http.local_ratelimit`` (Envoy's local_ratelimit config.cc / FilterConfig).

A ``LocalRateLimit`` is compiled once into :class:`RateLimitSettings` (its token bucket,
stats, status, header mutations and enablement fractions), both for the filter in
``http_filters`` and for each route's ``typed_per_filter_config`` entry
(:func:`parse_per_route_config`). A route's settings, with their own bucket and stats,
replace the filter's for requests on that route, as in Envoy.

Supported: ``stat_prefix``, ``status``, ``token_bucket``, ``filter_enabled`` and
``filter_enforced`` (RuntimeFractionalPercents: their runtime keys override the default
values when the runtime sets them), ``response_headers_to_add``,
``request_headers_to_add_when_not_enforced`` and ``enable_x_ratelimit_headers``. Refused: ``descriptors``, ``rate_limits``, ``stage``,
``vh_rate_limits``, ``max_dynamic_descriptors`` (no descriptors yet),
``local_rate_limit_per_downstream_connection``, ``local_cluster_rate_limit`` and
``rate_limited_as_resource_exhausted`` (no gRPC local replies).
"""

from __future__ import annotations

from typing import Any

import cython

from tulle.config.errors import ConfigError, join
from tulle.config.support import check_fields
from tulle.filters.http.local_ratelimit import FILTER_NAME
from tulle.filters.http.local_ratelimit.filter import LocalRateLimitFilter  # only a class: filter imports us
from tulle.filters.network.http_connection_manager.config import building_route_table
from tulle.filters.network.local_ratelimit.config import parse_token_bucket
from tulle.router.header_mutation import HeaderMutation
from tulle.runtime import Fraction, Runtime, RuntimeFraction, runtime_fractional_percent
from tulle.server.context import FactoryContext
from tulle.stats.store import Counter, Store

SUPPORTED_FIELDS = (
    "stat_prefix", "status", "token_bucket", "filter_enabled", "filter_enforced", "response_headers_to_add",
    "request_headers_to_add_when_not_enforced", "enable_x_ratelimit_headers",
)
# It only chooses whether requests matching a descriptor also take a token from the
# default bucket; with descriptors refused every request uses the default bucket anyway.
IGNORED_FIELDS = ("always_consume_default_token_bucket",)

# envoy.extensions.common.ratelimit.v3.XRateLimitHeadersRFCVersion
_DRAFT_VERSION_03 = 1
# Envoy answers 429 unless status asks for another code >= 400 (toErrorCode).
DEFAULT_STATUS = 429

NEVER = Fraction(0, 100)


def _runtime_fraction(owner: Any, name: str, field: str, runtime: Runtime) -> Fraction | RuntimeFraction:
    """``owner.<name>`` (a RuntimeFractionalPercent); unset means 0%, Envoy's "for safety" default.
    Its runtime key, when the runtime sets it, overrides ``default_value`` (a lookup per request
    only if the runtime can change; otherwise resolved here)."""
    if not owner.HasField(name):
        return NEVER
    return runtime_fractional_percent(runtime, getattr(owner, name), join(field, name))


class RateLimitStats:
    """``<stat_prefix>.http_local_rate_limit.*`` (Envoy's names: no ``http.`` in front)."""

    if not cython.compiled:  # compiled, the fields come from config.pxd
        __slots__ = ("enabled", "enforced", "rate_limited", "ok")

    def __init__(self, store: Store, stat_prefix: str) -> None:
        base = f"{stat_prefix}.http_local_rate_limit."
        self.enabled: Counter = store.counter(base + "enabled")
        self.enforced: Counter = store.counter(base + "enforced")
        self.rate_limited: Counter = store.counter(base + "rate_limited")
        self.ok: Counter = store.counter(base + "ok")


class RateLimitSettings:
    """One LocalRateLimit, compiled: everything the filter reads per request."""

    if not cython.compiled:  # compiled, the fields come from config.pxd
        __slots__ = (
            "stats", "bucket", "status", "enabled", "enforced", "response_headers", "request_headers",
            "x_ratelimit_headers",
        )

    def __init__(self, proto: Any, field: str, ctx: FactoryContext, *, per_route: bool) -> None:
        check_fields(proto, SUPPORTED_FIELDS, field, ignored=IGNORED_FIELDS)
        if not proto.stat_prefix:
            raise ConfigError("stat_prefix must not be empty", field=join(field, "stat_prefix"))
        self.status = DEFAULT_STATUS
        if proto.HasField("status"):
            status_field = join(field, "status")
            check_fields(proto.status, ("code",), status_field)
            code = proto.status.code
            if code == 0:
                raise ConfigError("code must be a defined HTTP status other than Empty",
                                  field=join(status_field, "code"))
            if code >= 400:
                self.status = code
        self.enabled = _runtime_fraction(proto, "filter_enabled", field, ctx.runtime)
        self.enforced = _runtime_fraction(proto, "filter_enforced", field, ctx.runtime)
        # None: no token bucket, so every request is let through (Envoy allows that only
        # for the filter's own config, to enable it and set the limits per route).
        self.bucket = None
        if proto.HasField("token_bucket"):
            self.bucket = parse_token_bucket(proto.token_bucket, join(field, "token_bucket"), ctx)
        elif per_route:
            raise ConfigError("local rate limit token bucket must be set for per filter configs",
                              field=join(field, "token_bucket"))
        self.response_headers = HeaderMutation.from_protos(
            proto.response_headers_to_add, (), add_field=join(field, "response_headers_to_add"), remove_field="")
        self.request_headers = HeaderMutation.from_protos(
            proto.request_headers_to_add_when_not_enforced, (),
            add_field=join(field, "request_headers_to_add_when_not_enforced"), remove_field="")
        self.x_ratelimit_headers = (
            proto.enable_x_ratelimit_headers == _DRAFT_VERSION_03 and self.bucket is not None
        )
        self.stats = RateLimitStats(ctx.stats, proto.stat_prefix)


def parse_per_route_config(proto: Any, field: str) -> RateLimitSettings:
    """The per-route parser for LocalRateLimit (Envoy's createRouteSpecificFilterConfig):
    its own token bucket (required here) and its own stats, in the worker of the
    connection manager whose route table is being built."""
    hcm = building_route_table.get()
    if hcm is None:
        raise RuntimeError("LocalRateLimit per-route configs are parsed while a connection manager "
                           "builds its route table (HcmConfig.build_route_table)")
    settings = RateLimitSettings(proto, field, hcm.ctx, per_route=True)
    if settings.x_ratelimit_headers:
        # The response path skips filters unless one of them encodes; this route needs ours.
        for factory in hcm.filter_factories:
            if isinstance(factory, LocalRateLimitFactory):
                factory.encodes = True
        hcm.encoder_filters = True  # a table that arrives later (RDS) finds the flag computed already
    return settings


class LocalRateLimitFactory:
    """A cdef class when compiled: create_filter runs per request stream."""

    name = FILTER_NAME
    if not cython.compiled:
        __slots__ = ("settings", "encodes", "config_name")

    def __init__(self, proto: Any, field: str, hcm: Any) -> None:
        # The key of this filter's typed_per_filter_config entries; the connection manager may set
        # it to the name the filter has in http_filters (Envoy looks per-route configs up by that name).
        self.config_name = FILTER_NAME
        self.settings = RateLimitSettings(proto, field, hcm.ctx, per_route=False)
        # encode_headers only adds x-ratelimit-*: without them the response path skips this filter
        self.encodes = self.settings.x_ratelimit_headers

    def create_filter(self, stream: Any) -> LocalRateLimitFilter:
        return LocalRateLimitFilter(stream, self)
