"""RouteAction.RequestMirrorPolicy, compiled (Envoy's ShadowPolicyImpl).

A route's policies are its own ``request_mirror_policies``; when it has none it inherits its
virtual host's, and a virtual host without any inherits the route configuration's (the most
specific non-empty list wins whole, as in Envoy). The shadow writer
(``filters/http/router/shadow.py``) sends the mirrored requests.

``runtime_fraction``: ``featureEnabled(runtime_key, default_value, stable random)``; the key,
when the worker's runtime sets it, overrides ``default_value``.

Accepted without effect, because it cannot change behaviour here: ``trace_sampled`` only marks
the mirror's trace span as sampled, and Tulle has no tracing (the HCM's ``tracing`` and the
router's ``start_child_span`` are refused).

Refused: ``request_headers_mutations`` and ``host_rewrite_literal`` (newer fields, not
implemented yet).
"""

from __future__ import annotations

from google.protobuf import message

from tulle.config.errors import ConfigError, join
from tulle.config.support import check_fields
from tulle.http.headers import HeaderMap
from tulle.router.matchers import ascii_lower, require_header_safe, wire
from tulle.runtime import Fraction, RuntimeFraction, in_scope, runtime_fractional_percent

_FIELDS = ("cluster", "cluster_header", "runtime_fraction", "disable_shadow_host_suffix_append")
_IGNORED = ("trace_sampled",)


class MirrorPolicy:
    """One mirror policy: where to send the copy and how often."""

    __slots__ = ("cluster", "cluster_header", "numerator", "denominator", "append_suffix", "runtime_fraction")

    def __init__(self, msg: message.Message, field: str) -> None:
        check_fields(msg, _FIELDS, field, ignored=_IGNORED)
        if msg.cluster and msg.cluster_header:  # type: ignore[attr-defined]
            raise ConfigError(
                f"Only one of cluster '{msg.cluster}' or cluster_header '{msg.cluster_header}' "  # type: ignore[attr-defined]
                "in request mirror policy can be specified", field=field)
        if not msg.cluster and not msg.cluster_header:  # type: ignore[attr-defined]
            raise ConfigError("Exactly one of cluster or cluster_header in request mirror policy need to be specified",
                              field=field)
        require_header_safe(msg.cluster_header, join(field, "cluster_header"))  # type: ignore[attr-defined]
        self.cluster: str = msg.cluster  # type: ignore[attr-defined]
        self.cluster_header = ascii_lower(wire(msg.cluster_header))  # type: ignore[attr-defined]
        self.append_suffix = not msg.disable_shadow_host_suffix_append  # type: ignore[attr-defined]
        # Envoy: without runtime_fraction every request is mirrored
        self.numerator, self.denominator = 100, 100
        # set when the runtime can change: the key is then looked up per request
        self.runtime_fraction: RuntimeFraction | None = None
        if msg.HasField("runtime_fraction"):
            fraction = runtime_fractional_percent(in_scope(), msg.runtime_fraction,  # type: ignore[attr-defined]
                                                  join(field, "runtime_fraction"))
            if isinstance(fraction, Fraction):
                self.numerator, self.denominator = fraction.numerator, fraction.denominator
            else:
                self.runtime_fraction = fraction
                self.numerator, self.denominator = fraction.default.numerator, fraction.default.denominator

    def enabled(self, random_value: int) -> bool:
        """Envoy's featureEnabled(runtime_key, default_value, stable_random)."""
        dynamic = self.runtime_fraction
        if dynamic is not None:
            return dynamic.enabled(random_value)
        return random_value % self.denominator < self.numerator

    def cluster_name(self, headers: HeaderMap) -> str | None:
        """The mirror cluster; None when cluster_header names no cluster for this request."""
        if self.cluster:
            return self.cluster
        return headers.get(self.cluster_header) or None


def mirror_policies(owner: message.Message, field: str,
                    inherited: tuple[MirrorPolicy, ...] = ()) -> tuple[MirrorPolicy, ...]:
    """``owner.request_mirror_policies`` compiled, or ``inherited`` when it has none."""
    protos = owner.request_mirror_policies  # type: ignore[attr-defined]
    if not protos:
        return inherited
    list_field = join(field, "request_mirror_policies")
    return tuple(MirrorPolicy(proto, f"{list_field}[{index}]") for index, proto in enumerate(protos))

