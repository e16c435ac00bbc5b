"""The local rate limit filter per request (Envoy's local_ratelimit.cc Filter).

decode_headers picks the settings (the route's per-filter config if it has one, else
the filter's), and when the request is enabled takes one token from their bucket:

* a token: ``ok``, the request goes on;
* none and enforced: ``rate_limited`` + ``enforced``, a local reply (429 by default,
  body ``local_rate_limited``, flag RL) with ``response_headers_to_add``;
* none, not enforced: ``rate_limited``, ``request_headers_to_add_when_not_enforced``
  are added and the request goes on.

With ``enable_x_ratelimit_headers: DRAFT_VERSION_03`` every response of a request that
consulted a bucket (the 429s included) carries x-ratelimit-limit/-remaining/-reset.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cython

from tulle import stream_info as flags
from tulle.filters.http.base import CONTINUE, STOP, HttpFilter
from tulle.filters.http.local_ratelimit import FILTER_NAME
from tulle.filters.network.local_ratelimit.filter import TokenBucket
from tulle.http.headers import HeaderMap
from tulle.runtime.entry import Fraction

if TYPE_CHECKING:
    from tulle.filters.http.local_ratelimit.config import LocalRateLimitFactory, RateLimitSettings

LOCAL_RATE_LIMITED = "local_rate_limited"  # Envoy's body and response code details, verbatim
_BODY = LOCAL_RATE_LIMITED.encode()


class LocalRateLimitFilter(HttpFilter):
    if not cython.compiled:
        __slots__ = ("factory", "headers_bucket")

    def __init__(self, stream: Any, factory: LocalRateLimitFactory) -> None:
        self.stream = stream
        self.factory = factory
        self.headers_bucket: Any = None  # the bucket whose state x-ratelimit-* report, if on

    def settings(self) -> RateLimitSettings:
        """The route's per-filter config when it has one (Envoy's most specific), else the filter's.

        Like Envoy, an entry keyed by the filter's name in http_filters wins, and one keyed by
        the extension name (envoy.filters.http.local_ratelimit) is the fallback.
        """
        factory = self.factory
        route = self.stream.get_route()
        if route is not None:
            name = factory.config_name
            per_route = route.per_filter_config(name)
            if per_route is None and name != FILTER_NAME:
                per_route = route.per_filter_config(FILTER_NAME)
            if per_route is not None:
                return per_route
        return factory.settings

    @cython.locals(settings="RateLimitSettings", stats="RateLimitStats", hit=cython.bint)
    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        settings = self.settings()
        enabled = settings.enabled
        # the common kinds called at C level (a runtime-keyed fraction or a shared bucket: a Python call)
        hit = cython.cast(Fraction, enabled).hit() if type(enabled) is Fraction else enabled.hit()
        if not hit:
            return CONTINUE
        stats = settings.stats
        stats.enabled.value += 1
        bucket = settings.bucket
        if bucket is None:  # no token bucket at this level: nothing to limit
            stats.ok.value += 1
            return CONTINUE
        if settings.x_ratelimit_headers:
            self.headers_bucket = bucket
        hit = cython.cast(TokenBucket, bucket).consume() if type(bucket) is TokenBucket else bucket.consume()
        if hit:
            stats.ok.value += 1
            return CONTINUE
        stats.rate_limited.value += 1
        stream = self.stream
        if not settings.enforced.hit():
            if settings.request_headers is not None:
                settings.request_headers.apply(headers, stream.info)
            return CONTINUE
        stats.enforced.value += 1
        extra = None
        if settings.response_headers is not None:
            # Envoy applies them to the local reply's fresh header map (only :status in it yet)
            reply_headers = HeaderMap()
            settings.response_headers.apply(reply_headers, stream.info)
            extra = reply_headers.items()
        stream.send_local_reply(flags.RATE_LIMITED, status=settings.status, body=_BODY,
                                details=LOCAL_RATE_LIMITED, extra_headers=extra)
        return STOP

    def encode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        bucket = self.headers_bucket
        if bucket is not None:
            # added, not set: Envoy's addReferenceKey keeps an upstream's own values too
            headers.add("x-ratelimit-limit", str(bucket.max_tokens))
            headers.add("x-ratelimit-remaining", str(bucket.remaining_tokens()))
            headers.add("x-ratelimit-reset", str(bucket.reset_seconds()))
        return CONTINUE
