"""The local rate limit HTTP filter (envoy.filters.http.local_ratelimit).

``config`` validates LocalRateLimit protos (the filter's own and routes' per-filter
configs) into :class:`~tulle.filters.http.local_ratelimit.config.RateLimitSettings`;
``filter`` takes a token per request and answers 429 ``local_rate_limited`` without one.
"""

FILTER_NAME = "envoy.filters.http.local_ratelimit"
