"""Tulle: a service mesh in Python (Envoy v3 data plane, Istio-API control plane)."""

__version__ = "0.1.0"
