"""``envoy.filters.http.cors``: the filter (``Cors``, no fields) and its per-route policy
(``CorsPolicy`` in ``typed_per_filter_config`` of a route, virtual host or route configuration).

Each level keeps its own policy; the filter reads every setting from the most specific policy that
sets it (route, then virtual host, then route configuration), and ``filter_enabled`` /
``shadow_enabled`` from the most specific policy only, as Envoy's filter does.
"""

from __future__ import annotations

from typing import Any

from tulle.config.errors import ConfigError, join
from tulle.config.support import check_fields
from tulle.filters.http.base import HttpFilter
from tulle.filters.http.cors.filter import CorsFilter, CorsStats
from tulle.router.matchers import compile_string_matcher, require_header_safe
from tulle.runtime import in_scope, runtime_fractional_percent

_POLICY_FIELDS = ("allow_origin_string_match", "allow_methods", "allow_headers", "expose_headers", "max_age",
                  "allow_credentials", "filter_enabled", "shadow_enabled", "allow_private_network_access",
                  "forward_not_matching_preflights")


class CorsPolicy:
    """One level's CorsPolicy; ``parent`` is the less specific level's (None at the top)."""

    __slots__ = ("allow_origins", "allow_methods", "allow_headers", "expose_headers", "max_age",
                 "allow_credentials", "allow_private_network_access", "forward_not_matching_preflights",
                 "filter_enabled", "shadow_enabled", "parent")

    def __init__(self) -> None:
        self.allow_origins: tuple[Any, ...] = ()
        self.allow_methods = ""
        self.allow_headers = ""
        self.expose_headers = ""
        self.max_age = ""
        self.allow_credentials: bool | None = None
        self.allow_private_network_access: bool | None = None
        self.forward_not_matching_preflights: bool | None = None
        self.filter_enabled: Any = None  # a runtime fraction; None: enabled
        self.shadow_enabled: Any = None  # a runtime fraction; None: off
        self.parent: CorsPolicy | None = None

    def chain_over(self, parent: object | None) -> CorsPolicy:
        """This level's policy in front of the less specific level's (see route_table._per_filter_configs)."""
        chained = CorsPolicy()
        for name in self.__slots__:
            setattr(chained, name, getattr(self, name))
        chained.parent = parent if isinstance(parent, CorsPolicy) else None
        return chained

    def first(self, name: str, empty: Any) -> Any:
        """The setting from the most specific policy that sets it."""
        policy: CorsPolicy | None = self
        while policy is not None:
            value = getattr(policy, name)
            if value != empty and value is not None:
                return value
            policy = policy.parent
        return empty

    def enabled(self) -> bool:
        return self.filter_enabled is None or self.filter_enabled.hit()

    def shadow(self) -> bool:
        return self.shadow_enabled is not None and self.shadow_enabled.hit()


def parse_per_route_config(proto: Any, field: str) -> CorsPolicy:
    """One level's ``CorsPolicy`` (registered for typed_per_filter_config)."""
    check_fields(proto, _POLICY_FIELDS, field)
    policy = CorsPolicy()
    policy.allow_origins = tuple(
        compile_string_matcher(matcher, f"{join(field, 'allow_origin_string_match')}[{index}]")
        for index, matcher in enumerate(proto.allow_origin_string_match))
    for name in ("allow_methods", "allow_headers", "expose_headers", "max_age"):
        value = getattr(proto, name)
        require_header_safe(value, join(field, name))
        setattr(policy, name, value)
    if proto.max_age and not proto.max_age.isdigit():
        raise ConfigError("max_age must be a number of seconds", field=join(field, "max_age"))
    for name in ("allow_credentials", "allow_private_network_access", "forward_not_matching_preflights"):
        if proto.HasField(name):
            setattr(policy, name, getattr(proto, name).value)
    if proto.HasField("filter_enabled"):
        policy.filter_enabled = runtime_fractional_percent(in_scope(), proto.filter_enabled,
                                                           join(field, "filter_enabled"))
    if proto.HasField("shadow_enabled"):
        policy.shadow_enabled = runtime_fractional_percent(in_scope(), proto.shadow_enabled,
                                                           join(field, "shadow_enabled"))
    return policy


class CorsFactory:
    name = "envoy.filters.http.cors"
    encodes = True  # a CORS request's response gets the Access-Control-* headers

    def __init__(self, proto: Any, field: str, hcm: Any) -> None:
        check_fields(proto, (), field)
        # the key of its typed_per_filter_config entries: the connection manager sets the filter's name
        self.config_name = self.name
        self.stats = CorsStats(hcm.ctx.stats, hcm.stat_prefix)

    def create_filter(self, stream: Any) -> HttpFilter:
        return CorsFilter(stream, self)
