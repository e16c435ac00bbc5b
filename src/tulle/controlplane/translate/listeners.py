"""LDS: a sidecar's listeners without iptables.

* outbound, one per service port on ``127.0.0.1:<port>``: HTTP-family ports get an HTTP
  connection manager with RDS route ``<port>``; TCP ports a tcp_proxy to the service's cluster
  (or the VirtualService's weighted TCP route);
* ``http_forward_proxy`` on 127.0.0.1:15001 for ``HTTP_PROXY`` clients (absolute-form requests,
  RDS ``http_proxy`` covering every HTTP service);
* ``virtualInbound`` on 0.0.0.0:15006 routing to the ``inbound|<port>||`` clusters; or, with a
  workload address (one loopback IP per workload, no iptables), ``inbound_<ip>_<port>`` on
  ``<ip>:<service port>`` for every port the workload serves.

A port claimed by the proxy's own workload (or one of the proxy's reserved ports) gets no
outbound listener: binding it would fail beside the application; the forward proxy still
reaches those services. When two services disagree on a port's protocol, the first by hostname
decides (concrete hosts before wildcards), and a TCP port serves only the first service on it
(no destination-IP filter chains).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tulle.controlplane.model import Service, ServicePort
from tulle.controlplane.translate.clusters import ads_config_source, tcp_proxy_settings
from tulle.controlplane.translate.names import (
    inbound_cluster_name,
    is_http,
    labels_match,
    outbound_cluster_name,
)
from tulle.controlplane.translate.routes import (
    CORS_FILTER,
    FAULT_FILTER,
    HTTP_PROXY_ROUTE_NAME,
    destination_cluster,
    http_filters_needed,
    inbound_route,
)
from tulle.controlplane.translate.scope import MESH_GATEWAY, ProxyScope

HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
TCP_PROXY_TYPE = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
ROUTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
FAULT_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
CORS_FILTER_TYPE = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"
FORWARD_PROXY_LISTENER = "http_forward_proxy"
INBOUND_LISTENER = "virtualInbound"
INBOUND_ROUTE_NAME = "inbound|http"


@dataclass
class OutboundPorts:
    http: list[int] = field(default_factory=list)
    tcp: dict[int, tuple[Service, ServicePort]] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)  # claimed by the workload or reserved


def outbound_ports(scope: ProxyScope) -> OutboundPorts:
    blocked = set(scope.options.reserved_ports) | {inbound.workload_port for inbound in scope.inbound_ports()}
    http: set[int] = set()
    out = OutboundPorts()
    # The first service (concrete hosts before wildcards, then by hostname) decides a port's protocol.
    for service in sorted(scope.services, key=lambda s: (s.hostname.startswith("*"), s.hostname)):
        for port in sorted(service.ports, key=lambda p: p.port):
            if port.port in blocked:
                if port.port not in out.skipped:
                    out.skipped.append(port.port)
                continue
            if is_http(port.protocol):
                if port.port not in out.tcp:
                    http.add(port.port)
            elif port.port not in http:
                out.tcp.setdefault(port.port, (service, port))
    out.http = sorted(http)
    out.tcp = dict(sorted(out.tcp.items()))
    out.skipped.sort()
    return out


def http_filters(needed: set[str]) -> list[dict[str, Any]]:
    """CORS and fault only where some route uses them; the router last."""
    filters = []
    if CORS_FILTER in needed:
        filters.append({"name": CORS_FILTER, "typed_config": {"@type": CORS_FILTER_TYPE}})
    if FAULT_FILTER in needed:
        filters.append({"name": FAULT_FILTER, "typed_config": {"@type": FAULT_FILTER_TYPE}})
    filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER_TYPE}})
    return filters


def http_connection_manager(
    stat_prefix: str,
    needed_filters: set[str],
    *,
    rds_route: str | None = None,
    route_config: dict[str, Any] | None = None,
    absolute_urls: bool = False,
) -> dict[str, Any]:
    manager: dict[str, Any] = {"@type": HCM_TYPE, "stat_prefix": stat_prefix}
    if rds_route is not None:
        manager["rds"] = {"route_config_name": rds_route, "config_source": ads_config_source()}
    else:
        manager["route_config"] = route_config
    manager["http_filters"] = http_filters(needed_filters)
    if absolute_urls:
        manager["http_protocol_options"] = {"allow_absolute_url": True}
    return {"name": "envoy.filters.network.http_connection_manager", "typed_config": manager}


def listener(name: str, address: str, port: int, direction: str, network_filter: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [{"filters": [network_filter]}],
        "traffic_direction": direction,
    }


def _tcp_route_applies(match: dict[str, Any], scope: ProxyScope, port: int) -> bool:
    if match.get("port") and int(match["port"]) != port:
        return False
    gateways = match.get("gateways")
    if gateways:
        return MESH_GATEWAY in gateways
    if not labels_match(match.get("sourceLabels"), scope.proxy_labels):
        return False
    return not match.get("sourceNamespace") or match["sourceNamespace"] == scope.proxy.namespace


def tcp_proxy(scope: ProxyScope, service: Service, port: ServicePort) -> dict[str, Any]:
    """tcp_proxy to the service's cluster, or to the first VirtualService TCP route that applies."""
    default_cluster = outbound_cluster_name(port.port, service.hostname)
    config: dict[str, Any] = {"@type": TCP_PROXY_TYPE, "stat_prefix": default_cluster, "cluster": default_cluster}
    resource = scope.virtual_service_for(service.hostname)
    target_host = service.hostname
    for tcp_route in (resource.spec.get("tcp") or []) if resource is not None else []:
        matches = tcp_route.get("match") or [{}]
        if not any(_tcp_route_applies(match, scope, port.port) for match in matches):
            continue
        destinations = [entry for entry in tcp_route.get("route") or [] if entry.get("destination")]
        if destinations:
            target_host = scope.resolve(str(destinations[0]["destination"].get("host") or ""), resource.namespace)
        if len(destinations) == 1:
            config["cluster"] = destination_cluster(scope, destinations[0]["destination"], resource.namespace,
                                                    port.port)
        elif destinations:
            del config["cluster"]
            config["weighted_clusters"] = {"clusters": [
                {"name": destination_cluster(scope, entry["destination"], resource.namespace, port.port),
                 "weight": int(entry["weight"])}
                for entry in destinations if int(entry.get("weight") or 0) > 0
            ]}
        break
    config.update(tcp_proxy_settings(scope, target_host))
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": config}


def outbound_listeners(
    scope: ProxyScope, ports: OutboundPorts, filters_by_route: dict[str, set[str]]
) -> list[dict[str, Any]]:
    address = scope.options.outbound_bind_address
    listeners = []
    for port in ports.http:
        name = f"{address}_{port}"
        listeners.append(listener(name, address, port, "OUTBOUND", http_connection_manager(
            f"outbound_{name}", filters_by_route.get(str(port), set()), rds_route=str(port))))
    for port, (service, service_port) in ports.tcp.items():
        listeners.append(listener(f"{address}_{port}", address, port, "OUTBOUND", tcp_proxy(scope, service, service_port)))
    listeners.sort(key=lambda entry: entry["address"]["socket_address"]["port_value"])
    return listeners


def forward_proxy_listener(scope: ProxyScope, needed_filters: set[str]) -> dict[str, Any]:
    address = scope.options.outbound_bind_address
    return listener(FORWARD_PROXY_LISTENER, address, scope.options.forward_proxy_port, "OUTBOUND",
                    http_connection_manager(FORWARD_PROXY_LISTENER, needed_filters, rds_route=HTTP_PROXY_ROUTE_NAME,
                                            absolute_urls=True))


def inbound_listener(scope: ProxyScope, route_config: dict[str, Any]) -> dict[str, Any]:
    port = scope.options.inbound_port
    return listener(INBOUND_LISTENER, "0.0.0.0", port, "INBOUND",
                    http_connection_manager(f"inbound_0.0.0.0_{port}", set(), route_config=route_config))


def per_port_inbound_listeners(scope: ProxyScope, address: str) -> list[dict[str, Any]]:
    """``<workload ip>:<service port>`` -> ``inbound|<workload port>||``: what other sidecars reach
    as this workload's endpoint when there is no iptables to redirect a pod IP to 15006."""
    listeners = []
    for inbound in scope.inbound_ports():
        cluster = inbound_cluster_name(inbound.workload_port)
        name = f"inbound_{address}_{inbound.port.port}"
        if is_http(inbound.port.protocol):
            route_config = {"name": name, "virtual_hosts": [{
                "name": "inbound", "domains": ["*"], "routes": [inbound_route(scope.options, cluster, inbound.port)],
            }]}
            network_filter = http_connection_manager(name, set(), route_config=route_config)
        else:
            network_filter = {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
                "@type": TCP_PROXY_TYPE, "stat_prefix": name, "cluster": cluster}}
        listeners.append(listener(name, address, inbound.port.port, "INBOUND", network_filter))
    return listeners


def upstream_listeners(scope: ProxyScope, upstreams: tuple[tuple[str, int], ...], address: str) -> list[dict[str, Any]]:
    """Explicit local upstream ports (``tulle sidecar --upstream reviews:9080=19080``): the app connects
    to ``<workload ip>:<local port>`` and reaches the service with its routing rules (HTTP) or its
    cluster (TCP). The Host the app sends is the local address, so the service's virtual host
    answers every domain here."""
    from tulle.controlplane.istio.hosts import resolve_host
    from tulle.controlplane.translate.routes import virtual_hosts_for_port

    listeners = []
    for target, local_port in upstreams:
        host, _, port_text = target.rpartition(":")
        if not host or not port_text.isdigit():
            continue
        port_number = int(port_text)
        fqdn = resolve_host(host, scope.proxy.namespace, scope.domain_suffix, scope.known_namespaces)
        match = next(((service, port) for service in scope.services if service.hostname == fqdn
                      for port in service.ports if port.port == port_number), None)
        if match is None:
            continue  # not visible to this proxy (Sidecar scoping / exportTo) or not registered yet
        service, service_port = match
        name = f"upstream_{address}_{local_port}"
        if is_http(service_port.protocol):
            virtual_host = next((vh for vh in virtual_hosts_for_port(scope, port_number)
                                 if vh["name"].rsplit(":", 1)[0] == fqdn), None)
            if virtual_host is None:
                continue
            virtual_host["domains"] = ["*"]
            route_config = {"name": name, "virtual_hosts": [virtual_host]}
            network_filter = http_connection_manager(name, http_filters_needed([route_config]),
                                                     route_config=route_config)
        else:
            network_filter = tcp_proxy(scope, service, service_port)
        listeners.append(listener(name, address, local_port, "OUTBOUND", network_filter))
    return listeners
