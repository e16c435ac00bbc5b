"""Data shared by the control plane's parts: plain values, no I/O (see docs/control-plane.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Resource:
    """One Istio (or Tulle) object as the user wrote it."""

    kind: str
    api_version: str
    name: str
    namespace: str = "default"
    spec: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    labels: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)
    source: str = ""  # "file.yaml#2": file and document index
    # Line (1-based, in the file) of each field as written, by path: ("spec", "http", 0, "route"); () is the
    # document itself. Only filled when asked for (documents.load_files(positions=True)), for messages.
    positions: dict[tuple[str | int, ...], int] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def group(self) -> str:
        return self.api_version.split("/", 1)[0] if "/" in self.api_version else ""


@dataclass(frozen=True)
class Diagnostic:
    level: str  # "error" | "warning" | "info", istioctl analyze's levels; on apply only errors refuse
    resource: str  # "VirtualService default/reviews"
    field: str  # "spec.http[0].route[1].destination.subset"
    message: str
    source: str = ""
    code: str = ""  # istioctl analyze's message code ("IST0101"), Tulle's own ("TUL0001"), or "" (unreadable input)

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.source, self.resource, self.field) if part)
        return f"{where}: {self.message}" if where else self.message


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    protocol: str  # HTTP, HTTP2, GRPC, TCP, TLS, HTTPS, MONGO, ... (Istio's names, upper case)
    target_port: int = 0


@dataclass
class Service:
    hostname: str  # FQDN
    namespace: str
    ports: list[ServicePort]
    labels: dict[str, str] = field(default_factory=dict)
    resolution: str = "STATIC"  # STATIC (endpoints), DNS, DNS_ROUND_ROBIN, NONE
    export_to: tuple[str, ...] = ("*",)
    addresses: tuple[str, ...] = ()
    origin: str = "registry"  # "registry" or the ServiceEntry's ref


@dataclass
class WorkloadInstance:
    name: str
    namespace: str
    address: str
    ports: dict[str, int]  # service port name (or number as text) -> workload port
    labels: dict[str, str] = field(default_factory=dict)
    service_account: str = "default"
    locality: str = ""  # "region/zone/subzone"
    healthy: bool = True
    weight: int = 1
    service_hostnames: tuple[str, ...] = ()  # the services this instance backs (FQDNs)


@dataclass(frozen=True)
class ProxyIdentity:
    id: str
    namespace: str = "default"
    labels: tuple[tuple[str, str], ...] = ()
    workload_name: str = ""
    ip: str = "127.0.0.1"
    service_account: str = "default"
    kind: str = "sidecar"  # "sidecar" or "router" (gateway)

    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass
class MeshSnapshot:
    resources: list[Resource]
    services: list[Service]
    instances: list[WorkloadInstance]
    domain_suffix: str = "cluster.local"
    root_namespace: str = "istio-system"
