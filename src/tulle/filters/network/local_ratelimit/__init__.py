"""The local rate limit network filter (envoy.filters.network.local_ratelimit).

``filter`` holds the token bucket (shared with the HTTP local rate limit filter, as
Envoy's filters/common/local_ratelimit is) and the per-listener connection limiter;
``config`` validates the LocalRateLimit proto and builds the factory once per worker.
"""
