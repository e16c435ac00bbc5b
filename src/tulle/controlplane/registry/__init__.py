"""Services and workload instances: durable Services, leased instances, and what ServiceEntries and
WorkloadEntries add (see docs/control-plane.md, "Store and registry")."""

from tulle.controlplane.registry.registry import (
    DEFAULT_TTL_SECONDS,
    SERVICE_API_VERSION,
    SERVICE_KIND,
    Lease,
    Registry,
    RegistryError,
    port_protocol,
    service_hostname,
    service_resource,
    validate_service,
)

__all__ = [
    "DEFAULT_TTL_SECONDS",
    "SERVICE_API_VERSION",
    "SERVICE_KIND",
    "Lease",
    "Registry",
    "RegistryError",
    "port_protocol",
    "service_hostname",
    "service_resource",
    "validate_service",
]
