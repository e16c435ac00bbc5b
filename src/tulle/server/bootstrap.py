"""Top-level bootstrap checks: which parts of an Envoy bootstrap Tulle runs."""

from __future__ import annotations

from typing import Any

from tulle.config.errors import UnsupportedFeature
from tulle.config.support import check_fields

BOOTSTRAP_FIELDS = ("node", "static_resources", "admin", "dynamic_resources", "overload_manager",
                    "layered_runtime")
STATIC_RESOURCES_FIELDS = ("listeners", "clusters")
ADMIN_FIELDS = ("address", "access_log_path", "access_log")
NODE_FIELDS = ("id", "cluster", "metadata", "locality", "user_agent_name")

_LATER = {
    "tracing": "tracing",
    "stats_sinks": "stats_sinks (scrape /stats/prometheus instead)",
    "cluster_manager": "cluster_manager options",
}


def xds_settings(bootstrap: Any) -> tuple[str, bool] | None:
    """(xDS server cluster name, delta?) when the bootstrap asks for ADS, else None.

    Tulle takes dynamic config the way Istio's proxies do: one ADS stream over gRPC to a
    static cluster; LDS and CDS through it; RDS and EDS named by what they deliver.
    """
    if not bootstrap.HasField("dynamic_resources"):
        return None
    dynamic = bootstrap.dynamic_resources
    check_fields(dynamic, ("ads_config", "lds_config", "cds_config"), "dynamic_resources")
    for name in ("lds_config", "cds_config"):
        if dynamic.HasField(name):
            source = getattr(dynamic, name)
            check_fields(source, ("ads", "resource_api_version", "initial_fetch_timeout"), f"dynamic_resources.{name}")
            if not source.HasField("ads"):
                raise UnsupportedFeature(f"{name} from sources other than ads", field=f"dynamic_resources.{name}")
    if not dynamic.HasField("ads_config"):
        raise UnsupportedFeature("dynamic_resources without ads_config", field="dynamic_resources")
    ads = dynamic.ads_config
    field = "dynamic_resources.ads_config"
    check_fields(ads, ("api_type", "transport_api_version", "grpc_services", "set_node_on_first_message_only"),
                 field)
    api_type = type(ads).ApiType.Name(ads.api_type)
    if api_type not in ("GRPC", "DELTA_GRPC"):
        raise UnsupportedFeature(f"ads_config api_type {api_type} (GRPC and DELTA_GRPC are)", field=f"{field}.api_type")
    if len(ads.grpc_services) != 1:
        raise UnsupportedFeature("ads_config with other than one grpc_service", field=f"{field}.grpc_services")
    service = ads.grpc_services[0]
    check_fields(service, ("envoy_grpc", "timeout"), f"{field}.grpc_services[0]")
    if not service.HasField("envoy_grpc") or not service.envoy_grpc.cluster_name:
        raise UnsupportedFeature("grpc_services other than envoy_grpc with a cluster_name",
                                 field=f"{field}.grpc_services[0]")
    check_fields(service.envoy_grpc, ("cluster_name",), f"{field}.grpc_services[0].envoy_grpc")
    return service.envoy_grpc.cluster_name, api_type == "DELTA_GRPC"


def check_bootstrap(bootstrap: Any) -> None:
    """Refuse any top-level part Tulle does not run, naming it."""
    for descriptor, _ in bootstrap.ListFields():
        if descriptor.name in _LATER:
            raise UnsupportedFeature(_LATER[descriptor.name], field=descriptor.name)
    check_fields(bootstrap, BOOTSTRAP_FIELDS, "")
    xds_settings(bootstrap)
    check_fields(bootstrap.static_resources, STATIC_RESOURCES_FIELDS, "static_resources")
    check_fields(bootstrap.node, NODE_FIELDS, "node")
    if bootstrap.HasField("admin"):
        check_fields(bootstrap.admin, ADMIN_FIELDS, "admin")
        if bootstrap.admin.access_log_path not in ("", "/dev/null"):
            raise UnsupportedFeature("admin access_log_path other than /dev/null", field="admin.access_log_path")
        if len(bootstrap.admin.access_log):
            raise UnsupportedFeature("admin access_log (admin requests are logged at debug level)",
                                     field="admin.access_log")
