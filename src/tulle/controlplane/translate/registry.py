"""The mesh's services and endpoints: the registry plus what ServiceEntries and WorkloadEntries add.

A MeshSnapshot may already carry ServiceEntry hosts as Services (origin = the entry's ref);
entries it does not carry yet are turned into Services here, the way Istio's serviceentry
controller does: one Service per host, endpoints from ``spec.endpoints``, from WorkloadEntries
and workload instances chosen by ``spec.workloadSelector``, or (DNS without endpoints) the host
itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from tulle.controlplane.model import MeshSnapshot, Resource, Service, ServicePort, WorkloadInstance
from tulle.controlplane.translate.names import labels_match

SERVICE_ENTRY = "ServiceEntry"
WORKLOAD_ENTRY = "WorkloadEntry"


@dataclass
class MeshRegistry:
    services: list[Service]
    instances: list[WorkloadInstance]
    _by_host: dict[str, list[WorkloadInstance]] | None = None
    _services_by_host: dict[str, list[Service]] | None = None
    _by_workload: dict[tuple[str, str], list[WorkloadInstance]] | None = None
    _by_address: dict[tuple[str, str], list[WorkloadInstance]] | None = None

    def instances_of(self, hostname: str) -> list[WorkloadInstance]:
        return list(self.instances_by_host().get(hostname, []))

    def instances_by_host(self) -> dict[str, list[WorkloadInstance]]:
        """Service hostname -> the instances backing it (built once; do not modify)."""
        if self._by_host is None:
            self._by_host = {}
            for instance in self.instances:
                for backed in dict.fromkeys(instance.service_hostnames):
                    self._by_host.setdefault(backed, []).append(instance)
        return self._by_host

    def services_named(self, hostname: str) -> list[Service]:
        """Every service with this hostname (ServiceEntries may repeat one), in registry order."""
        if self._services_by_host is None:
            self._services_by_host = {}
            for service in self.services:
                self._services_by_host.setdefault(service.hostname, []).append(service)
        return list(self._services_by_host.get(hostname, []))

    def instances_of_workload(self, namespace: str, name: str = "", address: str = "") -> list[WorkloadInstance]:
        """A proxy's own instances: by workload name when it has one, else by address (indexed:
        every proxy of a push asks)."""
        if self._by_workload is None or self._by_address is None:
            self._by_workload, self._by_address = {}, {}
            for instance in self.instances:
                self._by_workload.setdefault((instance.namespace, instance.name), []).append(instance)
                self._by_address.setdefault((instance.namespace, instance.address), []).append(instance)
        found = self._by_workload.get((namespace, name)) if name else self._by_address.get((namespace, address))
        return list(found or [])


def resources_of_kind(resources: Iterable[Resource], kind: str) -> list[Resource]:
    found = [resource for resource in resources if resource.kind == kind]
    return sorted(found, key=lambda resource: (resource.namespace, resource.name))


def target_port(instance: WorkloadInstance, port: ServicePort) -> int:
    """The workload port behind a service port: by port name, then number, then targetPort."""
    for key in (port.name, str(port.port)):
        if key and key in instance.ports:
            return instance.ports[key]
    return port.target_port or port.port


def _service_ports(spec: dict[str, Any]) -> list[ServicePort]:
    ports = []
    for entry in spec.get("ports") or []:
        number = int(entry["number"])
        ports.append(ServicePort(
            name=str(entry.get("name") or number), port=number,
            protocol=str(entry.get("protocol") or "TCP").upper(), target_port=int(entry.get("targetPort") or 0),
        ))
    return ports


def _instance(
    name: str, namespace: str, entry: dict[str, Any], hostnames: tuple[str, ...], fallback_labels: dict[str, str]
) -> WorkloadInstance:
    """A WorkloadEntry spec (inline in a ServiceEntry or on its own) -> a WorkloadInstance."""
    return WorkloadInstance(
        name=name, namespace=namespace, address=str(entry.get("address") or ""),
        ports={str(key): int(value) for key, value in (entry.get("ports") or {}).items()},
        labels=dict(entry.get("labels") or fallback_labels),
        service_account=str(entry.get("serviceAccount") or "default"),
        locality=str(entry.get("locality") or ""), healthy=True,
        weight=int(entry.get("weight") or 1), service_hostnames=hostnames,
    )


def _service_entry_instances(
    entry: Resource, hostnames: tuple[str, ...], workload_entries: list[Resource], snapshot: MeshSnapshot
) -> list[WorkloadInstance]:
    spec = entry.spec
    instances: list[WorkloadInstance] = []
    for index, endpoint in enumerate(spec.get("endpoints") or []):
        instances.append(_instance(f"{entry.name}-{index}", entry.namespace, endpoint, hostnames, {}))
    selector = (spec.get("workloadSelector") or {}).get("labels")
    if selector is not None:
        for workload in workload_entries:
            if workload.namespace == entry.namespace and labels_match(selector, workload.spec.get("labels") or {}):
                instances.append(_instance(workload.name, workload.namespace, workload.spec, hostnames,
                                           dict(workload.labels)))
        for instance in snapshot.instances:
            if instance.namespace == entry.namespace and labels_match(selector, instance.labels):
                instances.append(WorkloadInstance(
                    name=instance.name, namespace=instance.namespace, address=instance.address,
                    ports=instance.ports, labels=instance.labels, service_account=instance.service_account,
                    locality=instance.locality, healthy=instance.healthy, weight=instance.weight,
                    service_hostnames=hostnames,
                ))
    return instances


def build_registry(snapshot: MeshSnapshot) -> MeshRegistry:
    """Services and instances of the whole mesh, ServiceEntries included, in a stable order."""
    services = list(snapshot.services)
    instances = list(snapshot.instances)
    known = {(service.hostname, service.namespace) for service in services}
    workload_entries = resources_of_kind(snapshot.resources, WORKLOAD_ENTRY)
    for entry in resources_of_kind(snapshot.resources, SERVICE_ENTRY):
        spec = entry.spec
        hostnames = tuple(str(host).lower() for host in spec.get("hosts") or [] if (str(host).lower(), entry.namespace)
                          not in known)
        if not hostnames:
            continue
        ports = _service_ports(spec)
        for hostname in hostnames:
            services.append(Service(
                hostname=hostname, namespace=entry.namespace, ports=ports, labels=dict(entry.labels),
                resolution=str(spec.get("resolution") or "NONE").upper(),
                export_to=tuple(spec.get("exportTo") or ("*",)),
                addresses=tuple(spec.get("addresses") or ()), origin=entry.ref,
            ))
        instances += _service_entry_instances(entry, hostnames, workload_entries, snapshot)
    services.sort(key=lambda service: (service.hostname, service.namespace))
    instances.sort(key=lambda instance: (instance.namespace, instance.name, instance.address))
    return MeshRegistry(services=services, instances=instances)
