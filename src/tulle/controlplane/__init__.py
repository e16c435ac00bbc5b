"""The Tulle control plane: Istio's API in, xDS out (see docs/control-plane.md)."""
