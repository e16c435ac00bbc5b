"""Services and workload instances: what the mesh routes to.

Three sources feed ``Registry.snapshot()``:

* registry Services, durable: kept in the ConfigStore as kind ``Service``
  (``registry.tulle.dev/v1``), hostname ``<name>.<namespace>.svc.<domain_suffix>``. A port's
  protocol follows Istio's protocol selection: an explicit ``protocol``, else ``appProtocol``,
  else the port name ``<protocol>[-<suffix>]``; anything else is TCP (Istio would sniff).
  ``spec.selector`` picks instances (registered or WorkloadEntries) of the same namespace by
  labels, as a Kubernetes Service selects pods.
* registered instances, ephemeral: leases with a TTL renewed by heartbeats, gone when the
  agent stops renewing (expired) or deregisters. An instance names the services it backs;
  short names resolve in its namespace (``reviews`` -> ``reviews.<ns>.svc.<domain_suffix>``).
* ServiceEntries (one Service per host, all its ports) with their ``endpoints`` as instances,
  and WorkloadEntries, which back ServiceEntries whose ``workloadSelector`` (and registry
  Services whose selector) match their labels in their namespace, as Istio's serviceentry
  controller does.

Subscribers hear ``endpoints_only=True`` when only instances changed and the affected services
get their endpoints over EDS; anything else (services, or DNS services whose endpoints are
inlined in the cluster) is a full push.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tulle.controlplane.istio.hosts import resolve_host
from tulle.controlplane.model import Diagnostic, Resource, Service, ServicePort, WorkloadInstance
from tulle.controlplane.registry import validation as checks
from tulle.controlplane.store.base import ConfigStore, Unsubscribe, parse_ref

log = logging.getLogger(__name__)

SERVICE_KIND = "Service"
SERVICE_API_VERSION = "registry.tulle.dev/v1"
SERVICE_ENTRY_KIND = "ServiceEntry"
WORKLOAD_ENTRY_KIND = "WorkloadEntry"
REGISTRY_KINDS = frozenset({SERVICE_KIND, SERVICE_ENTRY_KIND, WORKLOAD_ENTRY_KIND})
DEFAULT_TTL_SECONDS = 30.0
STALL_TOLERANCE_SECONDS = 0.25  # sweep lateness below this is scheduling noise, not a stall
DEFAULT_DOMAIN_SUFFIX = "cluster.local"
REGISTRY_ORIGIN = "registry"

# Istio's protocol names (pkg/config/protocol), upper-cased as model.ServicePort carries them.
PROTOCOLS = {
    "tcp": "TCP", "udp": "UDP", "grpc": "GRPC", "grpc-web": "GRPC-WEB", "http": "HTTP", "http_proxy": "HTTP_PROXY",
    "http2": "HTTP2", "https": "HTTPS", "tls": "TLS", "mongo": "MONGO", "redis": "REDIS", "mysql": "MYSQL",
}
# Kubernetes' standard appProtocol values (KEP-3726) as Istio maps them.
KUBERNETES_APP_PROTOCOLS = {"kubernetes.io/h2c": "HTTP2", "kubernetes.io/ws": "HTTP", "kubernetes.io/wss": "HTTPS"}
DEFAULT_PROTOCOL = "TCP"  # Istio auto-detects unnamed/unknown ports; Tulle does not sniff yet
# Endpoints of these resolutions are inlined in the CDS cluster, so their changes need a full push.
INLINE_ENDPOINT_RESOLUTIONS = frozenset({"DNS", "DNS_ROUND_ROBIN"})
RESOLUTIONS = ("STATIC", "DNS", "DNS_ROUND_ROBIN", "NONE")

SERVICE_SPEC_FIELDS = ("ports", "selector", "addresses", "exportTo", "resolution")
SERVICE_PORT_FIELDS = ("name", "port", "protocol", "appProtocol", "targetPort")

RegistryListener = Callable[[bool], None]


class RegistryError(ValueError):
    """A registration or service the registry refuses; ``diagnostics`` say why."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        super().__init__("; ".join(str(diagnostic) for diagnostic in diagnostics))
        self.diagnostics = diagnostics


# --- port protocols ---------------------------------------------------------------------


def parse_protocol(name: str) -> str | None:
    """Istio's protocol for ``name`` (case-insensitive), upper case; None when unknown."""
    return PROTOCOLS.get(name.lower()) if isinstance(name, str) else None


def port_protocol(name: str = "", app_protocol: str | None = None, protocol: str | None = None) -> str:
    """A service port's protocol by Istio's rules (kube.ConvertProtocol).

    An explicit ``protocol`` (an Istio protocol name) wins; then ``appProtocol`` replaces the
    name entirely, with Kubernetes' ``kubernetes.io/h2c|ws|wss``; then the name's
    ``<protocol>[-<suffix>]`` prefix (``grpc-web`` whole, since it holds a dash). A ``udp`` name
    does not make UDP: only the L4 protocol does, which is why only ``protocol`` can say UDP.
    """
    if protocol:
        explicit = parse_protocol(protocol)
        if explicit is not None:
            return explicit
    text = name or ""
    if app_protocol:
        if app_protocol in KUBERNETES_APP_PROTOCOLS:
            return KUBERNETES_APP_PROTOCOLS[app_protocol]
        text = app_protocol
    if text.lower().startswith("grpc-web"):
        return "GRPC-WEB"
    parsed = parse_protocol(text.split("-", 1)[0])
    if parsed is None or parsed == "UDP":
        return DEFAULT_PROTOCOL
    return parsed


# --- services as resources --------------------------------------------------------------


def service_hostname(name: str, namespace: str, domain_suffix: str = DEFAULT_DOMAIN_SUFFIX) -> str:
    return f"{name}.{namespace}.svc.{domain_suffix}"


def service_resource(
    name: str,
    namespace: str,
    ports: Iterable[Mapping[str, Any]],
    labels: Mapping[str, str] | None = None,
    selector: Mapping[str, str] | None = None,
    **extra: Any,
) -> Resource:
    """The store resource of a registry Service (``extra``: addresses, exportTo, resolution)."""
    spec: dict[str, Any] = {"ports": [dict(port) for port in ports]}
    if selector:
        spec["selector"] = dict(selector)
    spec.update({key: value for key, value in extra.items() if value not in (None, (), [], "")})
    return Resource(kind=SERVICE_KIND, api_version=SERVICE_API_VERSION, name=name, namespace=namespace,
                    spec=spec, labels=dict(labels or {}))


def validate_service(resource: Resource) -> list[Diagnostic]:
    """Errors in a registry Service resource; empty when the registry can serve it."""
    problems: list[tuple[str, str]] = []
    if resource.api_version != SERVICE_API_VERSION:
        problems.append(("apiVersion", f"unsupported apiVersion {resource.api_version!r} for Service; "
                                       f"supported: {SERVICE_API_VERSION}"))
    for what, value in (("metadata.name", resource.name), ("metadata.namespace", resource.namespace)):
        problem = checks.dns1123_label_error(value)
        if problem:
            problems.append((what, f"{problem}: it becomes part of the service's hostname"))
    problems.extend(checks.label_problems(resource.labels, "metadata.labels"))
    spec = resource.spec if isinstance(resource.spec, dict) else {}
    for key in spec:
        if key not in SERVICE_SPEC_FIELDS:
            problems.append((f"spec.{key}", f"unknown field; known: {', '.join(SERVICE_SPEC_FIELDS)}"))
    ports = spec.get("ports")
    if not isinstance(ports, list) or not ports:
        problems.append(("spec.ports", "at least one port is required"))
        ports = []
    elif len(ports) > checks.MAX_PORTS:
        problems.append(("spec.ports", f"at most {checks.MAX_PORTS} ports, got {len(ports)}"))
        ports = []
    seen_names: set[str] = set()
    seen_numbers: set[int] = set()
    for index, port in enumerate(ports):
        problems.extend(_port_problems(port, f"spec.ports[{index}]", seen_names, seen_numbers))
    problems.extend(checks.label_problems(spec.get("selector"), "spec.selector"))
    for key, check, limit in (("addresses", checks.subnet_error, checks.MAX_ADDRESSES),
                              ("exportTo", checks.export_to_error, checks.MAX_EXPORT_TO)):
        value = spec.get(key)
        if value is None:
            continue
        if not isinstance(value, list):
            problems.append((f"spec.{key}", "must be a list of strings"))
        elif len(value) > limit:
            problems.append((f"spec.{key}", f"at most {limit} entries, got {len(value)}"))
        else:
            problems.extend((f"spec.{key}[{index}]", problem) for index, item in enumerate(value)
                            if (problem := check(item)))
    resolution = spec.get("resolution")
    if resolution is not None and resolution not in RESOLUTIONS:
        problems.append(("spec.resolution", f"must be one of {', '.join(RESOLUTIONS)}"))
    return [Diagnostic("error", resource.ref, path, message, resource.source) for path, message in problems]


def _port_problems(port: Any, path: str, seen_names: set[str], seen_numbers: set[int]) -> list[tuple[str, str]]:
    if not isinstance(port, dict):
        return [(path, "must be a mapping with name and port")]
    problems = [(f"{path}.{key}", f"unknown field; known: {', '.join(SERVICE_PORT_FIELDS)}")
                for key in port if key not in SERVICE_PORT_FIELDS]
    number = port.get("port")
    if not _is_port_number(number):
        problems.append((f"{path}.port", f"must be a port number 1-65535, got {number!r}"))
    elif number in seen_numbers:
        problems.append((f"{path}.port", f"port {number} is declared twice"))
    else:
        seen_numbers.add(number)
    name = port.get("name")
    if name is not None:
        problem = checks.dns1123_label_error(name)
        if problem:
            problems.append((f"{path}.name", problem))
        elif name in seen_names:
            problems.append((f"{path}.name", f"port name {name!r} is used twice"))
        else:
            seen_names.add(name)
    target = port.get("targetPort")
    if target is not None and not _is_port_number(target):
        problems.append((f"{path}.targetPort", f"must be a port number 1-65535, got {target!r}"))
    protocol = port.get("protocol")
    if protocol is not None and parse_protocol(protocol) is None:
        problems.append((f"{path}.protocol", f"unknown protocol {protocol!r}; Istio's protocols: "
                                             f"{', '.join(sorted(set(PROTOCOLS.values())))}"))
    app_protocol = port.get("appProtocol")
    if app_protocol is not None and (not isinstance(app_protocol, str) or not app_protocol
                                     or len(app_protocol) > checks.MAX_SUBDOMAIN_LENGTH):
        problems.append((f"{path}.appProtocol", "must be a non-empty string (at most 253 characters)"))
    return problems


_is_port_number = checks.is_port_number


def _labels_match(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _as_int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _string_map(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(item) for item in value) if isinstance(value, list) else ()


# --- leases -----------------------------------------------------------------------------


@dataclass
class Lease:
    """A registered instance and when it expires unless renewed."""

    id: str
    instance: WorkloadInstance
    services: tuple[str, ...]  # as registered: FQDNs or short names
    ttl: float
    expires_at: float
    registered_at: float
    last_heartbeat: float = field(default=0.0)


@dataclass(frozen=True)
class _StoreView:
    """What the registry reads from the store's registry resources."""

    resources: list[Resource]
    services: list[Service]
    known_namespaces: set[str]
    selectors: list[tuple[str, dict[str, str], list[str]]]  # (namespace, labels, hostnames they select)


@dataclass
class _Selectable:
    """An instance that service selectors may pick, and the hostnames it has gathered."""

    instance: WorkloadInstance
    hostnames: list[str]
    lease_id: str = ""  # registered instances: memoized between snapshots
    resolved: list[str] = field(default_factory=list)  # the hostnames its registration names
    built: WorkloadInstance | None = None  # what the last snapshot built for it


class Registry:
    """See the module docstring. Thread-safe; ``clock`` is injectable for tests. Lease deadlines
    are in ``lease_time()``, which leaves out the time the control plane was stalled."""

    def __init__(
        self,
        store: ConfigStore,
        clock: Callable[[], float] = time.monotonic,
        *,
        domain_suffix: str = DEFAULT_DOMAIN_SUFFIX,
        default_ttl: float = DEFAULT_TTL_SECONDS,
    ) -> None:
        self.store = store
        self.clock = clock
        self.domain_suffix = domain_suffix
        self.default_ttl = default_ttl
        self._lock = threading.RLock()
        self._leases: dict[str, Lease] = {}
        self._lease_by_identity: dict[tuple[str, str, str], str] = {}  # (namespace, name, address) -> id
        # snapshot() is memoized: it is rebuilt only after a lease or a registry resource changed,
        # or once a lease it includes passes its deadline (registration stays O(1) in a big mesh).
        self._generation = 0  # any change to what snapshot() answers
        self._store_generation = 0  # changes to registry resources in the store
        self._snapshot_memo: tuple[int, float, list[Service], list[WorkloadInstance]] | None = None
        self._store_view_memo: tuple[int, _StoreView] | None = None
        # lease id -> (store generation, hostnames its registration names, the instance snapshot() built)
        self._instance_memo: dict[str, tuple[int, list[str], WorkloadInstance]] = {}
        self._listeners: list[RegistryListener] = []
        self._stalled = 0.0  # seconds of clock() not counted in lease time (see lease_time)
        self._last_sweep: float | None = None  # clock() at the end of the last expiry sweep
        self._sweep_interval = 0.0
        self._unsaved: dict[str, Lease] = {}  # registered since the last save_leases()
        self._unsaved_removals: set[str] = set()  # removed since the last save_leases()
        self._restore_leases()
        self._unsubscribe_store = store.subscribe(self._on_store_change)

    def close(self) -> None:
        self._unsubscribe_store()
        self.save_leases()

    # --- leases across restarts -----------------------------------------------------------
    # Registrations and removals are saved in the store (when it outlives the process) at every
    # expiry sweep and on close, so a restarted control plane keeps serving its instances.
    # Heartbeats are not saved: the agents could not reach a stopped control plane, so every
    # restored lease gets a whole TTL from the restart to heartbeat again (Consul does the same
    # with session TTLs when a new leader takes over).

    def save_leases(self) -> None:
        """Write the registrations and removals not saved yet (one store commit)."""
        with self._lock:
            unsaved, removals = self._unsaved, self._unsaved_removals
            self._unsaved, self._unsaved_removals = {}, set()
        if not unsaved and not removals:
            return
        try:
            self.store.save_leases({lease_id: _lease_to_json(lease) for lease_id, lease in unsaved.items()}, removals)
        except Exception:
            with self._lock:  # try again next time, unless something newer happened meanwhile
                for lease_id, lease in unsaved.items():
                    if lease_id in self._leases and lease_id not in self._unsaved_removals:
                        self._unsaved.setdefault(lease_id, lease)
                self._unsaved_removals |= {lease_id for lease_id in removals if lease_id not in self._leases}
            raise

    def _restore_leases(self) -> None:
        saved = self.store.load_leases()
        if not saved:
            return
        now = self.lease_time()
        restored, unreadable = 0, []
        with self._lock:
            for lease_id, text in saved.items():
                try:
                    lease = _lease_from_json(lease_id, text, now)
                except (ValueError, KeyError, TypeError):
                    unreadable.append(lease_id)
                    continue
                identity = (lease.instance.namespace, lease.instance.name, lease.instance.address)
                self._leases[lease_id] = lease
                self._lease_by_identity[identity] = lease_id
                restored += 1
            self._unsaved_removals.update(unreadable)
            self._generation += 1
        log.info("restored %d instance lease(s) from the store; each has a whole TTL to heartbeat again", restored)
        if unreadable:
            log.warning("dropped %d unreadable saved lease(s): %s", len(unreadable), ", ".join(unreadable[:5]))

    # --- subscribers ---------------------------------------------------------------------

    def subscribe(self, listener: RegistryListener) -> Unsubscribe:
        """Call ``listener(endpoints_only)`` whenever ``snapshot()`` would answer differently."""
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def _notify(self, endpoints_only: bool) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(endpoints_only)
            except Exception:
                log.exception("registry subscriber failed")

    def _on_store_change(self, refs: list[str]) -> None:
        changed = [parse_ref(ref) for ref in refs]
        relevant = [(kind, namespace) for kind, namespace, _ in changed if kind in REGISTRY_KINDS]
        if not relevant:
            return
        with self._lock:
            self._generation += 1
            self._store_generation += 1
        # WorkloadEntries only move endpoints, unless a DNS service there inlines them in CDS.
        endpoints_only = all(kind == WORKLOAD_ENTRY_KIND for kind, _ in relevant) and not any(
            self._has_inline_endpoint_service(namespace) for _, namespace in relevant)
        self._notify(endpoints_only)

    def _has_inline_endpoint_service(self, namespace: str) -> bool:
        return any(service.namespace == namespace and service.resolution in INLINE_ENDPOINT_RESOLUTIONS
                   for service in self._store_view().services)

    def _store_view(self) -> _StoreView:
        """Services and selectors from the store's registry resources, memoized per generation."""
        with self._lock:
            generation, memo = self._store_generation, self._store_view_memo
        if memo is not None and memo[0] == generation:
            return memo[1]
        resources = self.store.list()
        by_key: dict[tuple[str, str], Service] = {}
        for service in self._store_services(resources):
            by_key.setdefault((service.hostname, service.namespace), service)
        services = sorted(by_key.values(), key=lambda s: (s.hostname, s.namespace))
        selectors: list[tuple[str, dict[str, str], list[str]]] = []
        for resource in resources:
            if resource.kind == SERVICE_KIND:
                selector = _string_map(resource.spec.get("selector"))
                if selector:
                    selectors.append((resource.namespace, selector,
                                      [service_hostname(resource.name, resource.namespace, self.domain_suffix)]))
            elif resource.kind == SERVICE_ENTRY_KIND:
                selector = _string_map((resource.spec.get("workloadSelector") or {}).get("labels"))
                if selector:
                    selectors.append((resource.namespace, selector,
                                      [service.hostname for service in self._service_entry_services(resource)]))
        view = _StoreView(resources, services, {service.namespace for service in services}, selectors)
        with self._lock:
            if self._store_generation == generation:
                self._store_view_memo = (generation, view)
        return view

    def _endpoints_only_for(self, leases: Iterable[Lease]) -> bool:
        """Whether adding or removing these registered instances can go out as EDS alone: none of
        the hostnames they back (named at registration or selecting them) inlines its endpoints."""
        view = self._store_view()
        inline = [service for service in view.services if service.resolution in INLINE_ENDPOINT_RESOLUTIONS]
        if not inline:
            return True
        hostnames: set[str] = set()
        for lease in leases:
            instance = lease.instance
            hostnames.update(self._resolve_all(lease.services, instance.namespace, view.services,
                                               view.known_namespaces))
            for namespace, selector, selected in view.selectors:
                if namespace == instance.namespace and _labels_match(selector, instance.labels):
                    hostnames.update(selected)
        return not any(service.hostname in hostnames for service in inline)

    # --- services ------------------------------------------------------------------------

    def put_service(
        self,
        name: str,
        namespace: str,
        ports: Iterable[Mapping[str, Any]],
        labels: Mapping[str, str] | None = None,
        selector: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> Service:
        """Create or replace a registry Service; RegistryError when it is invalid."""
        resource = service_resource(name, namespace, ports, labels, selector, **extra)
        errors = validate_service(resource)
        if errors:
            raise RegistryError(errors)
        self.store.apply([resource])
        return self._service_from_resource(resource)

    def remove_service(self, namespace: str, name: str) -> bool:
        return self.store.delete(SERVICE_KIND, namespace, name)

    def _service_from_resource(self, resource: Resource) -> Service:
        spec = resource.spec
        ports = []
        for entry in spec.get("ports") or []:
            if not isinstance(entry, dict) or not _is_port_number(entry.get("port")):
                continue  # validate_service refuses these; a hand-edited store must not break snapshots
            number = int(entry["port"])
            port_name = str(entry.get("name") or number)
            ports.append(ServicePort(
                name=port_name, port=number,
                protocol=port_protocol(str(entry.get("name") or ""), entry.get("appProtocol"), entry.get("protocol")),
                target_port=_as_int(entry.get("targetPort")),
            ))
        return Service(
            hostname=service_hostname(resource.name, resource.namespace, self.domain_suffix),
            namespace=resource.namespace, ports=ports, labels=dict(resource.labels),
            resolution=str(spec.get("resolution") or "STATIC").upper(),
            export_to=_strings(spec.get("exportTo")) or ("*",), addresses=_strings(spec.get("addresses")),
            origin=REGISTRY_ORIGIN,
        )

    def _service_entry_services(self, entry: Resource) -> list[Service]:
        spec = entry.spec
        ports = []
        for port in spec.get("ports") or []:
            if not isinstance(port, dict) or not _is_port_number(port.get("number")):
                continue
            number = int(port["number"])
            # A ServiceEntry states its protocol; Istio does not read the port name here.
            ports.append(ServicePort(
                name=str(port.get("name") or number), port=number,
                protocol=parse_protocol(str(port.get("protocol") or "")) or DEFAULT_PROTOCOL,
                target_port=_as_int(port.get("targetPort")),
            ))
        return [
            Service(
                hostname=str(host).lower(), namespace=entry.namespace, ports=ports, labels=dict(entry.labels),
                resolution=str(spec.get("resolution") or "NONE").upper(),
                export_to=_strings(spec.get("exportTo")) or ("*",), addresses=_strings(spec.get("addresses")),
                origin=entry.ref,
            )
            for host in spec.get("hosts") or [] if isinstance(host, str) and host
        ]

    def _store_services(self, resources: list[Resource]) -> list[Service]:
        services = [self._service_from_resource(resource) for resource in resources if resource.kind == SERVICE_KIND]
        for entry in resources:
            if entry.kind == SERVICE_ENTRY_KIND:
                services.extend(self._service_entry_services(entry))
        return services

    # --- instances -----------------------------------------------------------------------

    def register(
        self,
        name: str,
        namespace: str,
        address: str,
        ports: Mapping[str, int] | None = None,
        labels: Mapping[str, str] | None = None,
        service_account: str = "default",
        locality: str = "",
        services: Iterable[str] = (),
        ttl: float | None = None,
        weight: int = 1,
    ) -> str:
        """Register an instance under a lease of ``ttl`` seconds; its lease id.

        Registering the same (namespace, name, address) again replaces the earlier lease: an
        agent that restarted must not leave its previous incarnation behind until it expires.
        """
        ttl = self.default_ttl if ttl is None else ttl
        registered_services = (tuple(services) if isinstance(services, Iterable) and not isinstance(services, str | Mapping)
                               else services)
        errors = checks.registration_problems(name, namespace, address, ports, labels, service_account, locality,
                                              registered_services, ttl, weight)
        if not errors and not checks.is_ip_address(address):
            errors = self._host_name_address_problems(address, namespace, registered_services)
        if errors:
            ref = f"instance {namespace}/{name}"
            raise RegistryError([Diagnostic("error", ref, path, message) for path, message in errors])
        assert isinstance(registered_services, tuple)
        instance = WorkloadInstance(
            name=name, namespace=namespace, address=address,
            ports={str(key): int(value) for key, value in (ports or {}).items()}, labels=dict(labels or {}),
            service_account=service_account or "default", locality=locality or "", healthy=True, weight=weight,
        )
        now = self.lease_time()
        lease = Lease(id=uuid.uuid4().hex, instance=instance, services=registered_services, ttl=float(ttl),
                      expires_at=now + ttl, registered_at=now, last_heartbeat=now)
        with self._lock:
            identity = (namespace, name, address)
            replaced = self._lease_by_identity.get(identity, "")
            if self._leases.pop(replaced, None) is not None:
                self._unsaved.pop(replaced, None)
                self._unsaved_removals.add(replaced)
            self._lease_by_identity[identity] = lease.id
            self._leases[lease.id] = lease
            self._unsaved[lease.id] = lease
            self._generation += 1
        self._notify(self._endpoints_only_for([lease]))
        return lease.id

    def _host_name_address_problems(self, address: str, namespace: str, services: tuple[str, ...]
                                    ) -> list[tuple[str, str]]:
        """A host name, not an IP, is an endpoint only DNS services can use (Istio lets such
        WorkloadEntries back only DNS ServiceEntries): every service named must be one."""
        view = self._store_view()
        resolution = {service.hostname: service.resolution for service in view.services}
        hostnames = self._resolve_all(services, namespace, view.services, view.known_namespaces)
        not_dns = [name for name, hostname in zip(services, hostnames, strict=True)
                   if resolution.get(hostname) not in INLINE_ENDPOINT_RESOLUTIONS]
        if services and not not_dns:
            return []
        why = (f"{', '.join(not_dns)} {'is' if len(not_dns) == 1 else 'are'} not a DNS service"
               if not_dns else "it names no service")
        return [("address", f"{address!r} is not an IP address; a host name is allowed only for an instance of "
                            f"DNS services (resolution DNS or DNS_ROUND_ROBIN), and {why}")]

    def heartbeat(self, lease_id: str) -> bool:
        """Renew a lease; False when it is unknown or already expired (register again)."""
        now = self.lease_time()
        with self._lock:
            lease = self._leases.get(lease_id)
            if lease is None:
                return False
            if lease.expires_at > now:
                lease.expires_at = now + lease.ttl
                lease.last_heartbeat = now
                return True
        # Past its deadline but not collected yet: it is gone for everyone already.
        self.expire()
        return False

    def deregister(self, lease_id: str) -> bool:
        with self._lock:
            lease = self._leases.get(lease_id)
        if lease is None:
            return False
        endpoints_only = self._endpoints_only_for([lease])
        with self._lock:
            removed = self._drop_lease(lease_id)
        if removed:
            self._notify(endpoints_only)
        return removed

    def expire(self) -> list[str]:
        """Drop the leases whose TTL ran out; their ids."""
        now = self.lease_time()
        with self._lock:
            expired = [lease for lease in self._leases.values() if lease.expires_at <= now]
        if not expired:
            return []
        endpoints_only = self._endpoints_only_for(expired)
        with self._lock:
            for lease in expired:
                self._drop_lease(lease.id)
        for lease in expired:
            log.info("instance %s/%s (%s) expired: no heartbeat for %.1fs", lease.instance.namespace,
                     lease.instance.name, lease.instance.address, lease.ttl)
        self._notify(endpoints_only)
        return [lease.id for lease in expired]

    def _drop_lease(self, lease_id: str) -> bool:
        """Remove a lease (the caller holds the lock); whether it was there."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return False
        identity = (lease.instance.namespace, lease.instance.name, lease.instance.address)
        if self._lease_by_identity.get(identity) == lease_id:
            del self._lease_by_identity[identity]
        self._unsaved.pop(lease_id, None)
        self._unsaved_removals.add(lease_id)
        self._generation += 1
        return True

    # --- lease time ------------------------------------------------------------------------
    # A heartbeat can only be answered while the control plane runs: the time it spent stalled
    # (its event loop blocked, the process stopped) must not count against anyone's lease. The
    # expiry sweep runs every ``interval``; whenever it is late by more than STALL_TOLERANCE,
    # the lateness is taken out of lease time, which every deadline is measured in (so every
    # lease is extended by as long as the control plane was deaf), also while the sweep is
    # still waiting for the loop to come back.

    def lease_time(self) -> float:
        """The clock leases run on: ``clock()`` minus the time the control plane was stalled."""
        now = self.clock()
        with self._lock:
            return now - self._stalled - self._overdue(now)

    def _overdue(self, now: float) -> float:
        """How long the sweep is late beyond the tolerance (the caller holds the lock)."""
        if self._last_sweep is None:
            return 0.0
        return max(0.0, now - self._last_sweep - self._sweep_interval - STALL_TOLERANCE_SECONDS)

    def sweep(self, interval: float) -> list[str]:
        """One round of the expiry sweep, run every ``interval`` seconds: account for any stall
        since the last round, then expire the leases past their deadline."""
        now = self.clock()
        with self._lock:
            stalled = self._overdue(now)
            self._stalled += stalled
            self._last_sweep, self._sweep_interval = now, interval
        if stalled:
            log.warning("the control plane was unresponsive for %.1fs: every lease is extended by as much",
                        stalled + STALL_TOLERANCE_SECONDS)
        expired = self.expire()
        with self._lock:
            self._last_sweep = self.clock()  # expire() itself may take a while: not a stall
        return expired

    async def run_expiry(self, interval: float = 1.0) -> None:
        """Sweep every ``interval`` seconds until cancelled."""
        with self._lock:
            self._last_sweep, self._sweep_interval = self.clock(), interval
        while True:
            await asyncio.sleep(interval)
            try:
                self.sweep(interval)
                if self._unsaved or self._unsaved_removals:
                    await asyncio.to_thread(self.save_leases)  # a durable commit: off the loop
            except Exception:  # keep collecting: one bad round must not leak leases forever
                log.exception("registry expiry failed")

    def leases(self) -> list[Lease]:
        """Live leases (not past their deadline), by namespace, name, address."""
        now = self.lease_time()
        with self._lock:
            live = [replace(lease) for lease in self._leases.values() if lease.expires_at > now]
        return sorted(live, key=lambda lease: (lease.instance.namespace, lease.instance.name,
                                               lease.instance.address, lease.id))

    def lease(self, lease_id: str) -> Lease | None:
        now = self.lease_time()
        with self._lock:
            lease = self._leases.get(lease_id)
            return replace(lease) if lease is not None and lease.expires_at > now else None

    # --- snapshot ------------------------------------------------------------------------

    def services(self) -> list[Service]:
        return self.snapshot()[0]

    def snapshot(self) -> tuple[list[Service], list[WorkloadInstance]]:
        """``(services, instances)`` for a MeshSnapshot, sorted, each instance once.

        Registry Services win over ServiceEntry hosts of the same hostname and namespace (as
        the translation does); the entry's endpoints still back that hostname.
        """
        now = self.lease_time()
        with self._lock:
            generation, memo = self._generation, self._snapshot_memo
        if memo is not None and memo[0] == generation and now < memo[1]:
            return list(memo[2]), list(memo[3])
        view = self._store_view()
        resources, services, known_namespaces = view.resources, view.services, view.known_namespaces

        with self._lock:
            live = [lease for lease in self._leases.values() if lease.expires_at > now]
            store_generation = self._store_generation
        memo = self._instance_memo
        selectable: list[_Selectable] = []
        for lease in live:
            known = memo.get(lease.id)
            if known is not None and known[0] == store_generation:
                resolved = known[1]
            else:
                resolved = self._resolve_all(lease.services, lease.instance.namespace, services, known_namespaces)
                known = None
            selectable.append(_Selectable(lease.instance, list(resolved), lease.id, resolved,
                                          known[2] if known is not None else None))
        for workload in (r for r in resources if r.kind == WORKLOAD_ENTRY_KIND):
            selectable.append(_Selectable(self._workload_entry_instance(workload), []))

        instances: list[WorkloadInstance] = []
        for resource in resources:
            if resource.kind == SERVICE_KIND:
                selector = _string_map(resource.spec.get("selector"))
                hostname = service_hostname(resource.name, resource.namespace, self.domain_suffix)
                if selector:
                    _select(selectable, resource.namespace, selector, [hostname])
            elif resource.kind == SERVICE_ENTRY_KIND:
                hostnames = [service.hostname for service in self._service_entry_services(resource)]
                selector = _string_map((resource.spec.get("workloadSelector") or {}).get("labels"))
                if selector:
                    _select(selectable, resource.namespace, selector, hostnames)
                instances.extend(self._endpoint_instances(resource, tuple(hostnames)))
        fresh_memo: dict[str, tuple[int, list[str], WorkloadInstance]] = {}
        for candidate in selectable:
            hostnames = tuple(dict.fromkeys(candidate.hostnames))
            built = candidate.built
            if built is None or built.service_hostnames != hostnames:
                built = replace(candidate.instance, service_hostnames=hostnames)
            instances.append(built)
            if candidate.lease_id:  # registered instances are rebuilt only when something changed
                fresh_memo[candidate.lease_id] = (store_generation, candidate.resolved, built)
        self._instance_memo = fresh_memo
        instances.sort(key=lambda instance: (instance.namespace, instance.name, instance.address))
        valid_until = min((lease.expires_at for lease in live), default=math.inf)
        with self._lock:
            if self._generation == generation:
                self._snapshot_memo = (generation, valid_until, services, instances)
        return list(services), list(instances)

    def _resolve_all(
        self, names: Iterable[str], namespace: str, services: list[Service],
        known_namespaces: set[str] | None = None,
    ) -> list[str]:
        known = known_namespaces if known_namespaces is not None else {service.namespace for service in services}
        return [resolve_host(name, namespace, self.domain_suffix, known).lower() for name in names]

    def _workload_entry_instance(self, workload: Resource) -> WorkloadInstance:
        spec = workload.spec
        return WorkloadInstance(
            name=workload.name, namespace=workload.namespace, address=str(spec.get("address") or ""),
            ports={str(key): _as_int(value) for key, value in (spec.get("ports") or {}).items()},
            # Selection uses spec.labels (Istio's); metadata labels stand in when there are none.
            labels=_string_map(spec.get("labels")) or dict(workload.labels),
            service_account=str(spec.get("serviceAccount") or "default"),
            locality=str(spec.get("locality") or ""), healthy=True, weight=_as_int(spec.get("weight"), 1) or 1,
        )

    def _endpoint_instances(self, entry: Resource, hostnames: tuple[str, ...]) -> list[WorkloadInstance]:
        instances = []
        for index, endpoint in enumerate(entry.spec.get("endpoints") or []):
            if not isinstance(endpoint, dict):
                continue
            instances.append(WorkloadInstance(
                # Named like the translation names them, so both agree on identity.
                name=f"{entry.name}-{index}", namespace=entry.namespace, address=str(endpoint.get("address") or ""),
                ports={str(key): _as_int(value) for key, value in (endpoint.get("ports") or {}).items()},
                labels=_string_map(endpoint.get("labels")),
                service_account=str(endpoint.get("serviceAccount") or "default"),
                locality=str(endpoint.get("locality") or ""), healthy=True,
                weight=_as_int(endpoint.get("weight"), 1) or 1, service_hostnames=hostnames,
            ))
        return instances


def _lease_to_json(lease: Lease) -> str:
    instance = lease.instance
    return json.dumps({
        "name": instance.name, "namespace": instance.namespace, "address": instance.address,
        "ports": instance.ports, "labels": instance.labels, "serviceAccount": instance.service_account,
        "locality": instance.locality, "weight": instance.weight, "services": list(lease.services), "ttl": lease.ttl,
    }, sort_keys=True)


def _lease_from_json(lease_id: str, text: str, now: float) -> Lease:
    """A saved lease, due ``ttl`` seconds from ``now``."""
    data = json.loads(text)
    instance = WorkloadInstance(
        name=str(data["name"]), namespace=str(data["namespace"]), address=str(data["address"]),
        ports={str(key): int(value) for key, value in data["ports"].items()},
        labels={str(key): str(value) for key, value in data["labels"].items()},
        service_account=str(data["serviceAccount"]), locality=str(data["locality"]), healthy=True,
        weight=int(data["weight"]),
    )
    ttl = float(data["ttl"])
    return Lease(id=lease_id, instance=instance, services=tuple(str(s) for s in data["services"]), ttl=ttl,
                 expires_at=now + ttl, registered_at=now, last_heartbeat=now)


def _select(selectable: list[_Selectable], namespace: str, selector: Mapping[str, str], hostnames: list[str]) -> None:
    for candidate in selectable:
        if candidate.instance.namespace == namespace and _labels_match(selector, candidate.instance.labels):
            candidate.hostnames.extend(hostnames)
