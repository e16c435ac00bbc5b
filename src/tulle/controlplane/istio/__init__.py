"""Istio's API: YAML documents in, Resources and Diagnostics out (see docs/control-plane.md).

``load_files``/``load_documents`` read resources, ``validate``/``analyze`` check them the way
Istio's webhook and ``istioctl analyze`` do, and ``hosts`` holds the host-name rules that the
translation shares.
"""

from tulle.controlplane.istio.documents import load_documents, load_files
from tulle.controlplane.istio.hosts import host_matches, hosts_overlap, resolve_host, visible
from tulle.controlplane.istio.kinds import NETWORKING_KINDS, check_kind, supported_api_versions
from tulle.controlplane.istio.validation import analyze, parse_duration, parse_protocol, review, validate

__all__ = [
    "NETWORKING_KINDS",
    "analyze",
    "check_kind",
    "host_matches",
    "hosts_overlap",
    "load_documents",
    "load_files",
    "parse_duration",
    "parse_protocol",
    "resolve_host",
    "review",
    "supported_api_versions",
    "validate",
    "visible",
]
