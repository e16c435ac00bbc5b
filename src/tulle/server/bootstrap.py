"""Top-level bootstrap checks: which parts of an Envoy bootstrap Tulle runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.support import check_fields, duration_seconds

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


# Envoy's ConfigSource.initial_fetch_timeout when unset.
DEFAULT_INITIAL_FETCH_TIMEOUT = 15.0


def initial_fetch_timeout(source: Any) -> float:
    """Seconds a subscription from ``source`` (a ConfigSource) waits for its first update; 0: forever."""
    if source.HasField("initial_fetch_timeout"):
        return duration_seconds(source.initial_fetch_timeout)
    return DEFAULT_INITIAL_FETCH_TIMEOUT


@dataclass(frozen=True)
class XdsSettings:
    """What the bootstrap asks of the ADS client."""

    cluster: str  # the static cluster of the xDS server
    delta: bool
    lds_config: Any = None  # dynamic_resources.lds_config when listeners come over ADS, else None
    cds_config: Any = None  # dynamic_resources.cds_config when clusters come over ADS, else None
    # the largest response accepted, in bytes; 0 = no limit (Envoy's EnvoyGrpc default)
    max_receive_message_length: int = 0


def xds_settings(bootstrap: Any) -> XdsSettings | None:
    """The ADS settings when the bootstrap has ``ads_config``, else None.

    Tulle takes dynamic config the way Istio's proxies do: one ADS stream over gRPC to a
    static cluster. As in Envoy, listeners and clusters come through it only when
    ``lds_config``/``cds_config`` say so; routes and endpoints are subscribed to by name
    for the listeners and clusters (static or dynamic) whose config source is ``ads``.
    """
    if not bootstrap.HasField("dynamic_resources"):
        return None
    dynamic = bootstrap.dynamic_resources
    check_fields(dynamic, ("ads_config", "lds_config", "cds_config"), "dynamic_resources")
    over_ads = False
    for name in ("lds_config", "cds_config"):
        if dynamic.HasField(name):
            source = getattr(dynamic, name)
            field = f"dynamic_resources.{name}"
            check_fields(source, ("ads", "path_config_source", "resource_api_version", "initial_fetch_timeout"),
                         field)
            if source.HasField("path_config_source"):
                continue  # file-based: see file_sources
            if not source.HasField("ads"):
                raise UnsupportedFeature(f"{name} from sources other than ads or path_config_source", field=field)
            over_ads = True
    if not dynamic.HasField("ads_config"):
        if over_ads:
            raise ConfigError("ADS must be configured to support an ADS config source", field="dynamic_resources")
        return None  # listeners and clusters from files only (or nothing dynamic)
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
    envoy_grpc = service.envoy_grpc
    check_fields(envoy_grpc, ("cluster_name", "max_receive_message_length"), f"{field}.grpc_services[0].envoy_grpc")
    return XdsSettings(
        cluster=envoy_grpc.cluster_name, delta=api_type == "DELTA_GRPC",
        lds_config=dynamic.lds_config if dynamic.HasField("lds_config") and dynamic.lds_config.HasField("ads")
        else None,
        cds_config=dynamic.cds_config if dynamic.HasField("cds_config") and dynamic.cds_config.HasField("ads")
        else None,
        max_receive_message_length=envoy_grpc.max_receive_message_length.value,
    )


def file_sources(bootstrap: Any) -> dict[str, str]:
    """``dynamic_resources.{lds,cds}_config.path_config_source``: type URL -> the file's path
    (``watched_directory`` is accepted: the file itself is watched, which sees a move into place too)."""
    if not bootstrap.HasField("dynamic_resources"):
        return {}
    dynamic = bootstrap.dynamic_resources
    sources = {}
    for name, type_url in (("lds_config", "type.googleapis.com/envoy.config.listener.v3.Listener"),
                           ("cds_config", "type.googleapis.com/envoy.config.cluster.v3.Cluster")):
        if dynamic.HasField(name) and getattr(dynamic, name).HasField("path_config_source"):
            path_source = getattr(dynamic, name).path_config_source
            field = f"dynamic_resources.{name}.path_config_source"
            check_fields(path_source, ("path", "watched_directory"), field)
            if not path_source.path:
                raise ConfigError("path is required", field=f"{field}.path")
            sources[type_url] = path_source.path
    return sources


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
