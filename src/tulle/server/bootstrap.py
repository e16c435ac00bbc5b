"""Top-level bootstrap checks: which parts of an Envoy bootstrap Tulle runs."""

from __future__ import annotations

from typing import Any

from tulle.config.errors import UnsupportedFeature
from tulle.config.support import check_fields

BOOTSTRAP_FIELDS = ("node", "static_resources", "admin")
STATIC_RESOURCES_FIELDS = ("listeners", "clusters")
ADMIN_FIELDS = ("address", "access_log_path", "access_log")
NODE_FIELDS = ("id", "cluster", "metadata", "locality", "user_agent_name")

_LATER = {
    "dynamic_resources": "dynamic_resources (xDS: comes with the Tulle control plane)",
    "layered_runtime": "layered_runtime (runtime overrides)",
    "tracing": "tracing",
    "stats_sinks": "stats_sinks (scrape /stats/prometheus instead)",
    "overload_manager": "overload_manager (comes with the resilience work)",
    "cluster_manager": "cluster_manager options",
}


def check_bootstrap(bootstrap: Any) -> None:
    """Refuse any top-level part Tulle does not run, naming it."""
    for descriptor, _ in bootstrap.ListFields():
        if descriptor.name in _LATER:
            raise UnsupportedFeature(_LATER[descriptor.name], field=descriptor.name)
    check_fields(bootstrap, BOOTSTRAP_FIELDS, "")
    check_fields(bootstrap.static_resources, STATIC_RESOURCES_FIELDS, "static_resources")
    check_fields(bootstrap.node, NODE_FIELDS, "node")
    if bootstrap.HasField("admin"):
        check_fields(bootstrap.admin, ADMIN_FIELDS, "admin")
        if bootstrap.admin.access_log_path not in ("", "/dev/null"):
            raise UnsupportedFeature("admin access_log_path other than /dev/null", field="admin.access_log_path")
        if len(bootstrap.admin.access_log):
            raise UnsupportedFeature("admin access_log (admin requests are logged at debug level)",
                                     field="admin.access_log")
