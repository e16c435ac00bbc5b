"""The adaptive concurrency HTTP filter (envoy.filters.http.adaptive_concurrency).

``config`` validates the AdaptiveConcurrency proto; ``controller`` is Envoy's gradient
controller (admission, latency samples, the limit's windows); ``filter`` asks it per request.
"""
