"""The Envoy v3 bootstrap a sidecar's proxy starts from (istio-agent's envoy-rev.json).

Everything else arrives over ADS: the bootstrap only names the node (so the control plane
knows whose config to build), points ADS at the ``xds-grpc`` static cluster and places the
admin interface on the workload's own loopback IP (see docs/control-plane.md, "Sidecars
without iptables").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from tulle.controlplane.model import ProxyIdentity

XDS_CLUSTER = "xds-grpc"
ADMIN_PORT = 15000
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def node_id(ip: str, name: str, namespace: str, domain_suffix: str = "cluster.local") -> str:
    """Istio's ``sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>``."""
    return f"sidecar~{ip}~{name}.{namespace}~{namespace}.svc.{domain_suffix}"


def sidecar_identity(name: str, namespace: str = "default", *, ip: str = "127.0.0.1",
                     labels: Mapping[str, str] | None = None, service_account: str = "default",
                     domain_suffix: str = "cluster.local") -> ProxyIdentity:
    return ProxyIdentity(
        id=node_id(ip, name, namespace, domain_suffix), namespace=namespace,
        labels=tuple(sorted((labels or {}).items())), workload_name=name, ip=ip,
        service_account=service_account, kind="sidecar",
    )


def app_name(identity: ProxyIdentity) -> str:
    """The ``app`` label, as Istio names a workload's service cluster; else the workload name."""
    return identity.label_dict().get("app") or identity.workload_name


def split_host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError when malformed."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def parse_locality(locality: str) -> dict[str, str]:
    """``region/zone/subzone`` (any trailing part may be missing) -> Envoy's Locality fields."""
    parts = locality.split("/") if locality else []
    if len(parts) > 3:
        raise ValueError(f"locality {locality!r}: expected region/zone/subzone")
    return {key: value for key, value in zip(("region", "zone", "sub_zone"), parts, strict=False) if value}


def node_metadata(identity: ProxyIdentity, app_ports: Mapping[int, int],
                  upstreams: Mapping[str, int]) -> dict[str, Any]:
    """Istio's node metadata keys plus Tulle's UPSTREAMS and APP_PORTS (struct keys are strings)."""
    return {
        "TULLE_AGENT": True,  # the control plane gives this proxy the no-iptables (loopback IP) layout
        "NAMESPACE": identity.namespace,
        "LABELS": identity.label_dict(),
        "SERVICE_ACCOUNT": identity.service_account,
        "WORKLOAD_NAME": identity.workload_name,
        "INSTANCE_IPS": identity.ip,  # comma-separated in Istio; one loopback IP here
        "UPSTREAMS": {target: port for target, port in sorted(upstreams.items())},
        "APP_PORTS": {str(service_port): app_port for service_port, app_port in sorted(app_ports.items())},
    }


def sidecar_bootstrap(
    identity: ProxyIdentity,
    xds_address: str,
    delta: bool,
    admin_port: int = ADMIN_PORT,
    *,
    app_ports: Mapping[int, int] | None = None,
    upstreams: Mapping[str, int] | None = None,
    locality: str = "",
    xds_connect_timeout: str = "1s",
) -> dict[str, Any]:
    """An Envoy v3 bootstrap (JSON-ready dict) for ``tulle proxy -c``.

    ``xds_address`` is the control plane's plaintext gRPC ``ip:port`` (a STATIC cluster needs
    an IP literal); ``app_ports`` maps service port -> local app port, ``upstreams`` maps
    ``service:port`` -> local port, both published as node metadata for the control plane.
    """
    xds_host, xds_port = split_host_port(xds_address)
    node: dict[str, Any] = {
        "id": identity.id,
        "cluster": f"{app_name(identity)}.{identity.namespace}",
        "metadata": node_metadata(identity, app_ports or {}, upstreams or {}),
    }
    node_locality = parse_locality(locality)
    if node_locality:
        node["locality"] = node_locality
    return {
        "node": node,
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC" if delta else "GRPC",
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": XDS_CLUSTER}}],
                "set_node_on_first_message_only": True,
            },
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [{
                "name": XDS_CLUSTER,
                "type": "STATIC",
                "connect_timeout": xds_connect_timeout,
                # gRPC needs HTTP/2 to the control plane, set the non-deprecated way
                "typed_extension_protocol_options": {HTTP_PROTOCOL_OPTIONS: {
                    "@type": f"type.googleapis.com/{HTTP_PROTOCOL_OPTIONS}",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }},
                "load_assignment": {"cluster_name": XDS_CLUSTER, "endpoints": [{"lb_endpoints": [{
                    "endpoint": {"address": {"socket_address": {"address": xds_host, "port_value": xds_port}}},
                }]}]},
            }],
        },
        "admin": {
            "access_log_path": "/dev/null",
            "address": {"socket_address": {"address": identity.ip, "port_value": admin_port}},
        },
    }
