"""``tulle sidecar``: per-workload agent (istio-agent's job) and the proxy bootstrap it writes."""
