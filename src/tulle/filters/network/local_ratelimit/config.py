"""Factory for ``envoy.filters.network.local_ratelimit`` (Envoy's network local_ratelimit config.cc).

A non-terminal network filter: the listener asks it, once per accepted connection and
before the terminal filter gets the connection, whether the connection may proceed.

Also home of the TokenBucket proto validation that the HTTP local rate limit filter
shares (Envoy's ``type.v3.TokenBucket`` rules plus the 50 ms floor of its limiter).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from tulle.config.errors import ConfigError, UnsupportedFeature, join
from tulle.config.support import check_fields
from tulle.filters.network.local_ratelimit.filter import Bucket, ConnectionRateLimiter, new_token_bucket
from tulle.runtime import RuntimeFlag, feature_flag
from tulle.server.context import DownstreamConnection, FactoryContext

SUPPORTED_FIELDS = ("stat_prefix", "token_bucket", "runtime_enabled", "share_key")
TOKEN_BUCKET_FIELDS = ("max_tokens", "tokens_per_fill", "fill_interval")

# Envoy refuses faster fills ("local rate limit token bucket fill timer must be >= 50ms").
MIN_FILL_INTERVAL_MS = 50

# share_key -> the bucket every filter configured with that key and token bucket uses
# (Envoy's SharedRateLimitSingleton); it lives as long as one such filter does.
_shared_buckets: weakref.WeakValueDictionary[tuple[str, bytes], Bucket] = weakref.WeakValueDictionary()


def _duration_ms(duration: Any) -> int:
    """Whole milliseconds, truncated as Envoy's PROTOBUF_GET_MS does."""
    return int(duration.seconds * 1000 + duration.nanos // 1_000_000)


def parse_token_bucket(proto: Any, field: str, ctx: FactoryContext, *, share_key: str = "") -> Bucket:
    """Validate an ``envoy.type.v3.TokenBucket`` and build its (possibly shared) bucket."""
    check_fields(proto, TOKEN_BUCKET_FIELDS, field)
    if proto.max_tokens == 0:
        raise ConfigError("max_tokens must be greater than 0", field=join(field, "max_tokens"))
    tokens_per_fill = 1  # Envoy's default when unset
    if proto.HasField("tokens_per_fill"):
        tokens_per_fill = proto.tokens_per_fill.value
        if tokens_per_fill == 0:
            raise ConfigError("tokens_per_fill must be greater than 0", field=join(field, "tokens_per_fill"))
    interval_field = join(field, "fill_interval")
    if not proto.HasField("fill_interval"):
        raise ConfigError("fill_interval is required", field=interval_field)
    interval_ms = _duration_ms(proto.fill_interval)
    if interval_ms < MIN_FILL_INTERVAL_MS:
        raise ConfigError("local rate limit token bucket fill timer must be >= 50ms", field=interval_field)

    workers = ctx.server.concurrency
    if workers > 1 and ctx.loop is not None:
        # The workers have forked: memory mapped now would not be shared by them, and N
        # separate buckets would let N times the configured rate through.
        raise UnsupportedFeature(
            f"a token bucket configured after the {workers} worker processes started (xDS); "
            "it could not be shared by them as Envoy's is (run with --concurrency 1)",
            field=field,
        )

    def build() -> Bucket:
        try:
            return new_token_bucket(proto.max_tokens, tokens_per_fill, interval_ms / 1000.0, workers=workers)
        except OSError as exc:  # no POSIX semaphores (/dev/shm) for the shared bucket
            raise ConfigError(f"cannot share a token bucket between {workers} workers: {exc}",
                              field=field) from None

    if not share_key:
        return build()
    key = (share_key, proto.SerializeToString(deterministic=True))
    bucket = _shared_buckets.get(key)
    if bucket is None:
        bucket = _shared_buckets[key] = build()
    return bucket


class LocalRateLimitFactory:
    """A non-terminal network filter: ``on_new_connection(connection) -> bool`` (False closes it)."""

    on_new_connection: Callable[[DownstreamConnection], bool]

    def __init__(self, proto: Any, field: str, ctx: FactoryContext) -> None:
        check_fields(proto, SUPPORTED_FIELDS, field)
        if not proto.stat_prefix:
            raise ConfigError("stat_prefix must not be empty", field=join(field, "stat_prefix"))
        if not proto.HasField("token_bucket"):
            raise ConfigError("token_bucket is required", field=join(field, "token_bucket"))
        # Envoy's FeatureFlag defaults to on when runtime_enabled is unset; when set, its runtime key
        # overrides the default (a RuntimeFlag, truthy per connection, when the runtime can change)
        enabled: bool | RuntimeFlag = True
        if proto.HasField("runtime_enabled"):
            enabled = feature_flag(ctx.runtime, proto.runtime_enabled, join(field, "runtime_enabled"))
        bucket = parse_token_bucket(proto.token_bucket, join(field, "token_bucket"), ctx,
                                    share_key=proto.share_key)
        self.stat_prefix = proto.stat_prefix
        rate_limited = ctx.stats.counter(f"local_rate_limit.{proto.stat_prefix}.rate_limited")
        self.limiter = ConnectionRateLimiter(bucket, rate_limited, enabled)
        # the listener calls this per connection: hand it the limiter's method, no extra hop
        self.on_new_connection = self.limiter.on_new_connection
