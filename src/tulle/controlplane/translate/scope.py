"""What one proxy sees: its services, VirtualServices and DestinationRules (Istio's SidecarScope).

Visibility follows exportTo (Services, VirtualServices, DestinationRules) and the Sidecar
resource that applies to the proxy (one with a matching workloadSelector in its namespace, else
the namespace's selector-less one, else the root namespace's): its egress ``ns/host`` imports
limit the services and VirtualServices, so config size follows dependencies. Services a
imported VirtualService routes to are imported too, so its routes never point at a cluster the
proxy lacks.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from tulle.controlplane.model import (
    MeshSnapshot,
    ProxyIdentity,
    Resource,
    Service,
    ServicePort,
    WorkloadInstance,
)
from tulle.controlplane.translate.names import (
    host_matches,
    labels_match,
    match_specificity,
    resolve_host,
    visible_to,
)
from tulle.controlplane.translate.options import ISTIO_DEFAULTS, TranslateOptions
from tulle.controlplane.translate.registry import MeshRegistry, build_registry, resources_of_kind, target_port

VIRTUAL_SERVICE = "VirtualService"
DESTINATION_RULE = "DestinationRule"
SIDECAR = "Sidecar"
MESH_GATEWAY = "mesh"


@dataclass(frozen=True)
class EgressImport:
    """One Sidecar egress host: "ns/dnsName" with "*" (any), "." (the Sidecar's) or "~" (none)."""

    namespace: str
    host: str

    def matches(self, namespace: str, host: str) -> bool:
        if self.namespace == "~" or (self.namespace != "*" and self.namespace != namespace):
            return False
        return self.host == "*" or host_matches(self.host, host)


def egress_imports(sidecar: Resource | None, proxy_namespace: str) -> list[EgressImport] | None:
    """The Sidecar's egress hosts; None when no Sidecar applies (everything visible is imported).

    "." is the proxy's namespace: for the root namespace's default that is not the Sidecar's own.
    """
    if sidecar is None or not sidecar.spec.get("egress"):
        return None  # Istio: a Sidecar without egress listeners imports */* (e.g. one for ingress only)
    imports = []
    for listener in sidecar.spec.get("egress") or []:
        for entry in listener.get("hosts") or []:
            namespace, _, host = str(entry).rpartition("/")
            namespace = namespace or "*"
            imports.append(EgressImport(proxy_namespace if namespace == "." else namespace, host.lower()))
    return imports


def select_sidecar(resources: list[Resource], proxy: ProxyIdentity, root_namespace: str) -> Resource | None:
    sidecars = resources_of_kind(resources, SIDECAR)
    labels = proxy.label_dict()
    for sidecar in sidecars:
        selector = (sidecar.spec.get("workloadSelector") or {}).get("labels")
        if sidecar.namespace == proxy.namespace and selector and labels_match(selector, labels):
            return sidecar
    for namespace in (proxy.namespace, root_namespace):
        for sidecar in sidecars:
            if sidecar.namespace == namespace and not (sidecar.spec.get("workloadSelector") or {}).get("labels"):
                return sidecar
    return None


def virtual_service_hosts(
    resource: Resource, domain_suffix: str, known_namespaces: Collection[str] | None = None
) -> list[str]:
    return [resolve_host(str(host), resource.namespace, domain_suffix, known_namespaces)
            for host in resource.spec.get("hosts") or []]


def applies_to_mesh(resource: Resource) -> bool:
    gateways = resource.spec.get("gateways") or [MESH_GATEWAY]
    return MESH_GATEWAY in gateways


def route_destinations(resource: Resource) -> list[dict[str, Any]]:
    """Every destination a VirtualService names: routes of all protocols and mirrors."""
    spec = resource.spec
    found: list[dict[str, Any]] = []
    for section in ("http", "tcp", "tls"):
        for route in spec.get(section) or []:
            found += [entry["destination"] for entry in route.get("route") or [] if entry.get("destination")]
            if route.get("mirror"):
                found.append(route["mirror"])
            found += [mirror["destination"] for mirror in route.get("mirrors") or [] if mirror.get("destination")]
    return found


@dataclass(frozen=True)
class InboundPort:
    """A port the proxy's own workload serves: the workload port and the service port behind it."""

    workload_port: int
    port: ServicePort
    service: Service


def registry_service(registry: MeshRegistry, hostname: str, proxy_namespace: str) -> Service | None:
    """A service of the mesh by hostname, the proxy's namespace first."""
    matches = registry.services_named(hostname)
    matches.sort(key=lambda service: service.namespace != proxy_namespace)
    return matches[0] if matches else None


def inbound_ports(registry: MeshRegistry, proxy_namespace: str, own_instances: list[WorkloadInstance]) -> list[InboundPort]:
    found: dict[int, InboundPort] = {}
    for instance in own_instances:
        for hostname in sorted(instance.service_hostnames):
            service = registry_service(registry, hostname, proxy_namespace)
            if service is None:
                continue
            for port in sorted(service.ports, key=lambda p: p.port):
                workload_port = target_port(instance, port)
                found.setdefault(workload_port, InboundPort(workload_port, port, service))
    return [found[port] for port in sorted(found)]


@dataclass
class ProxyScope:
    snapshot: MeshSnapshot
    proxy: ProxyIdentity
    options: TranslateOptions
    registry: MeshRegistry
    sidecar: Resource | None
    services: list[Service]  # visible to this proxy, one per hostname, sorted by hostname
    virtual_services: list[Resource]  # imported, in precedence order
    destination_rules: list[Resource]  # visible
    own_instances: list[WorkloadInstance]
    known_namespaces: set[str] = field(default_factory=set)  # "name.ns" resolves only for these
    _service_by_host: dict[str, Service] = field(default_factory=dict)
    # lookups are memoized: one proxy's translation asks the same questions many times
    _virtual_service_by_host: dict[str, Resource | None] = field(default_factory=dict)
    _destination_rule_by_host: dict[tuple[str, str], Resource | None] = field(default_factory=dict)
    _virtual_service_hosts: list[tuple[Resource, list[str]]] | None = None
    _rule_hosts: dict[str, list[tuple[Resource, str]]] | None = None

    @property
    def domain_suffix(self) -> str:
        return self.snapshot.domain_suffix

    @property
    def proxy_labels(self) -> dict[str, str]:
        return self.proxy.label_dict()

    @property
    def locality(self) -> str:
        """The proxy's locality: its own workload instance's (ProxyIdentity has none of its own)."""
        return next((instance.locality for instance in self.own_instances if instance.locality), "")

    def resolve(self, host: str, namespace: str) -> str:
        return resolve_host(host, namespace, self.domain_suffix, self.known_namespaces)

    def service(self, hostname: str) -> Service | None:
        return self._service_by_host.get(hostname)

    def registry_service(self, hostname: str) -> Service | None:
        """A service of the mesh by hostname, visible or not (the proxy's own services)."""
        return registry_service(self.registry, hostname, self.proxy.namespace)

    def inbound_ports(self) -> list[InboundPort]:
        """The ports of the proxy's own workload, one per workload port (the lowest service port
        naming it wins), sorted."""
        return inbound_ports(self.registry, self.proxy.namespace, self.own_instances)

    def virtual_service_for(self, hostname: str) -> Resource | None:
        """The VirtualService that routes ``hostname``: an exact host beats a wildcard, a longer
        wildcard a shorter one; then the proxy's namespace first, then namespace/name order."""
        if hostname not in self._virtual_service_by_host:
            if self._virtual_service_hosts is None:
                self._virtual_service_hosts = [
                    (resource, virtual_service_hosts(resource, self.domain_suffix, self.known_namespaces))
                    for resource in self.virtual_services
                ]
            best: tuple[Any, ...] | None = None
            chosen = None
            for order, (resource, resource_hosts) in enumerate(self._virtual_service_hosts):
                for host in resource_hosts:
                    if host_matches(host, hostname):
                        key = (match_specificity(host), order)
                        if best is None or key < best:
                            best, chosen = key, resource
            self._virtual_service_by_host[hostname] = chosen
        return self._virtual_service_by_host[hostname]

    def destination_rule_for(self, hostname: str, service_namespace: str) -> Resource | None:
        """Istio's lookup order: the proxy's namespace, the service's, then the root namespace;
        in one namespace a rule selecting this workload first, then the most specific host."""
        key = (hostname, service_namespace)
        if key in self._destination_rule_by_host:
            return self._destination_rule_by_host[key]
        if self._rule_hosts is None:
            self._rule_hosts = {}
            for rule in self.destination_rules:
                host = self.resolve(str(rule.spec.get("host") or ""), rule.namespace)
                if host:
                    self._rule_hosts.setdefault(rule.namespace, []).append((rule, host))
        chosen = None
        for namespace in (self.proxy.namespace, service_namespace, self.snapshot.root_namespace):
            candidates = [
                ((not (rule.spec.get("workloadSelector") or {}).get("matchLabels"), match_specificity(host),
                  rule.name), rule)
                for rule, host in self._rule_hosts.get(namespace, []) if host_matches(host, hostname)
            ]
            if candidates:
                chosen = min(candidates, key=lambda pair: pair[0])[1]
                break
        self._destination_rule_by_host[key] = chosen
        return chosen


def _own_instances(registry: MeshRegistry, proxy: ProxyIdentity) -> list[WorkloadInstance]:
    return registry.instances_of_workload(proxy.namespace, proxy.workload_name, proxy.ip)


def _visible_destination_rule(rule: Resource, proxy: ProxyIdentity) -> bool:
    if not visible_to(rule.spec.get("exportTo") or ("*",), rule.namespace, proxy.namespace):
        return False
    selector = (rule.spec.get("workloadSelector") or {}).get("matchLabels")
    # A DestinationRule with a workloadSelector applies only to the selected workloads of its namespace.
    return not selector or (rule.namespace == proxy.namespace and labels_match(selector, proxy.label_dict()))


def build_scope(
    snapshot: MeshSnapshot, proxy: ProxyIdentity, options: TranslateOptions = ISTIO_DEFAULTS,
    registry: MeshRegistry | None = None,
) -> ProxyScope:
    """``registry``: ``build_registry(snapshot)`` when the caller already has it (it is the same
    for every proxy of a snapshot)."""
    registry = registry if registry is not None else build_registry(snapshot)
    known_namespaces = {service.namespace for service in registry.services}
    sidecar = select_sidecar(snapshot.resources, proxy, snapshot.root_namespace)
    imports = egress_imports(sidecar, proxy.namespace)

    exported = [s for s in registry.services if visible_to(s.export_to, s.namespace, proxy.namespace)]
    # One Service per hostname: the proxy's namespace wins, then namespace order (Istio: oldest).
    by_host: dict[str, Service] = {}
    for service in sorted(exported, key=lambda s: (s.hostname, s.namespace != proxy.namespace, s.namespace)):
        by_host.setdefault(service.hostname, service)

    virtual_services = []
    for resource in resources_of_kind(snapshot.resources, VIRTUAL_SERVICE):
        if not applies_to_mesh(resource):
            continue
        if not visible_to(resource.spec.get("exportTo") or ("*",), resource.namespace, proxy.namespace):
            continue
        hosts = virtual_service_hosts(resource, snapshot.domain_suffix, known_namespaces)
        if imports is not None and not any(i.matches(resource.namespace, h) for i in imports for h in hosts):
            continue
        virtual_services.append(resource)
    virtual_services.sort(key=lambda resource: (resource.namespace != proxy.namespace, resource.namespace,
                                                resource.name))

    if imports is None:
        selected = dict(by_host)
    else:
        selected = {
            host: service for host, service in by_host.items()
            if any(i.matches(service.namespace, host) for i in imports)
        }
        for resource in virtual_services:
            for destination in route_destinations(resource):
                host = resolve_host(str(destination.get("host") or ""), resource.namespace, snapshot.domain_suffix,
                                    known_namespaces)
                if host in by_host:
                    selected.setdefault(host, by_host[host])

    destination_rules = [
        rule for rule in resources_of_kind(snapshot.resources, DESTINATION_RULE) if _visible_destination_rule(rule, proxy)
    ]
    services = [selected[host] for host in sorted(selected)]
    return ProxyScope(
        snapshot=snapshot, proxy=proxy, options=options, registry=registry, sidecar=sidecar, services=services,
        virtual_services=virtual_services, destination_rules=destination_rules,
        own_instances=_own_instances(registry, proxy), known_namespaces=known_namespaces,
        _service_by_host={s.hostname: s for s in services},
    )
