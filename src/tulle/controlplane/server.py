"""``tulle control-plane``: the store, the registry, the HTTP API and the xDS server, wired.

Every change (a resource applied or deleted, a service or instance registered,
a lease expiring) schedules one debounced push. A push builds the mesh snapshot
once and translates it for every connected proxy; the cache compares versions
per type, so a proxy whose config did not change gets nothing, and an
endpoint-only change reaches proxies as EDS only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tulle.controlplane.api.server import ApiServer
from tulle.controlplane.istio.validation import analyze
from tulle.controlplane.model import MeshSnapshot, ProxyIdentity, Resource
from tulle.controlplane.registry.registry import Registry
from tulle.controlplane.store.memory import MemoryStore
from tulle.controlplane.store.sqlite import SqliteStore
from tulle.controlplane.translate.grpc import is_proxyless, translate_grpc
from tulle.controlplane.translate.options import ISTIO_DEFAULTS, TULLE_PROXY_TODAY
from tulle.controlplane.translate.translate import translate
from tulle.controlplane.xds.cache import Snapshot, SnapshotCache
from tulle.controlplane.xds.server import XdsServer

log = logging.getLogger("tulle.controlplane")

DEBOUNCE_SECONDS = 0.1  # istiod's PILOT_DEBOUNCE_AFTER is 100 ms
DEBOUNCE_MAX_SECONDS = 1.0  # ... and PILOT_DEBOUNCE_MAX 10 s; a busy mesh still converges within 1 s here


def proxy_identity(node: Any) -> ProxyIdentity:
    """Istio's node id ``<type>~<ip>~<name>.<namespace>~<namespace>.svc.<domain>`` plus node metadata."""
    metadata = _metadata(node)
    parts = node.id.split("~")
    kind, ip, workload, namespace = "sidecar", "127.0.0.1", node.id, "default"
    if len(parts) == 4:
        kind, ip, pod, dns_domain = parts
        workload = pod.rsplit(".", 1)[0] if "." in pod else pod
        namespace = dns_domain.split(".", 1)[0] or namespace
    namespace = str(metadata.get("NAMESPACE") or namespace)
    labels = metadata.get("LABELS") or {}
    return ProxyIdentity(
        id=node.id, namespace=namespace, labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
        workload_name=str(metadata.get("WORKLOAD_NAME") or workload), ip=ip,
        service_account=str(metadata.get("SERVICE_ACCOUNT") or "default"),
        kind="router" if kind == "router" else "sidecar",
    )


def _metadata(node: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    return json_format.MessageToDict(node.metadata) if node.HasField("metadata") else {}


class ControlPlane:
    def __init__(
        self,
        state_dir: str | None,
        *,
        xds_address: tuple[str, int] = ("127.0.0.1", 15010),
        http_address: tuple[str, int] = ("127.0.0.1", 15014),
        domain_suffix: str = "cluster.local",
        expiry_interval: float = 1.0,
    ) -> None:
        self.store = SqliteStore(state_dir) if state_dir else MemoryStore()
        self.registry = Registry(self.store, domain_suffix=domain_suffix)
        self.domain_suffix = domain_suffix
        self.xds_address = xds_address
        self.http_address = http_address
        self.expiry_interval = expiry_interval
        self.nodes: dict[str, Any] = {}  # connected node id -> node proto
        self.cache = SnapshotCache(on_node_connected=self._node_connected,
                                   on_node_disconnected=self._node_disconnected)
        self.xds = XdsServer(self.cache)
        self.api = ApiServer(self.store, self.registry, validator=self._validate, xds_status=self._xds_status,
                             config_view=self._config_view)
        self.pushes = 0
        self.last_push_seconds = 0.0
        self._push_handle: asyncio.TimerHandle | None = None
        self._first_pending = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: list[Any] = []

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> tuple[int, int]:
        self._loop = asyncio.get_running_loop()
        xds_port = await self.xds.start(*self.xds_address)
        http_port = await self.api.start(*self.http_address)
        self._unsubscribe.append(self.store.subscribe(lambda *_: self.schedule_push()))
        self._unsubscribe.append(self.registry.subscribe(lambda *_: self.schedule_push()))
        self._tasks.append(self._loop.create_task(self.registry.run_expiry(self.expiry_interval)))
        log.info("control plane: xDS on %s:%d, HTTP API on %s:%d", self.xds_address[0], xds_port,
                 self.http_address[0], http_port)
        return xds_port, http_port

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        for task in self._tasks:
            task.cancel()
        if self._push_handle is not None:
            self._push_handle.cancel()
        await self.api.stop()
        await self.xds.stop(0.5)
        self.registry.close()
        self.store.close()

    # --- pushes -------------------------------------------------------------------------------
    def schedule_push(self) -> None:
        """Coalesce bursts of changes into one push (debounce, bounded by a maximum delay)."""
        loop = self._loop
        now = loop.time()
        if self._push_handle is None:
            self._first_pending = now
        else:
            self._push_handle.cancel()
        delay = min(DEBOUNCE_SECONDS, max(0.0, self._first_pending + DEBOUNCE_MAX_SECONDS - now))
        self._push_handle = loop.call_later(delay, self.push_all)

    def mesh_snapshot(self) -> MeshSnapshot:
        services, instances = self.registry.snapshot()
        return MeshSnapshot(resources=self.store.list(), services=services, instances=instances,
                            domain_suffix=self.domain_suffix)

    def push_all(self) -> None:
        self._push_handle = None
        started = time.perf_counter()
        mesh = self.mesh_snapshot()
        for node in list(self.nodes.values()):
            self._push_node(node, mesh)
        self.pushes += 1
        self.last_push_seconds = time.perf_counter() - started

    def _push_node(self, node: Any, mesh: MeshSnapshot) -> None:
        proxy = proxy_identity(node)
        generate = translate_grpc if is_proxyless(node.id, _metadata(node)) else translate
        try:
            resources = generate(mesh, proxy, self._options(node, proxy))
            self.cache.set_snapshot(node.id, Snapshot(resources))
        except Exception:  # one proxy's translation failing must not starve the others
            log.exception("translation for %s failed; it keeps its last config", node.id)

    def _options(self, node: Any, proxy: ProxyIdentity) -> Any:
        """Tulle sidecars (no iptables) get the loopback-IP layout and what Tulle proxies run today;
        anything else (Envoy with iptables) gets Istio's defaults."""
        metadata = _metadata(node)
        if is_proxyless(node.id, metadata):  # gRPC clients route in-process, with Istio's defaults
            return ISTIO_DEFAULTS
        if metadata.get("TULLE_AGENT") or "tulle" in node.user_agent_name.lower():
            app_ports = tuple(sorted((int(port), int(local)) for port, local in (metadata.get("APP_PORTS") or {}).items()))
            upstreams = tuple(sorted((str(t), int(p)) for t, p in (metadata.get("UPSTREAMS") or {}).items()))
            return replace(TULLE_PROXY_TODAY, workload_address=proxy.ip, outbound_bind_address=proxy.ip,
                           app_ports=app_ports, upstreams=upstreams)
        return ISTIO_DEFAULTS

    # --- hooks from the xDS server --------------------------------------------------------------
    def _node_connected(self, node: Any) -> None:
        self.nodes[node.id] = node
        self._push_node(node, self.mesh_snapshot())

    def _node_disconnected(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)
        self.cache.clear(node_id)

    # --- hooks from the HTTP API ----------------------------------------------------------------
    def _validate(self, resources: list[Resource]) -> list[Any]:
        known = {service.hostname for service in self.registry.services()}
        return analyze(resources, known_services=known, domain_suffix=self.domain_suffix)

    def _xds_status(self) -> dict[str, Any]:
        """The API's proxy-status shape (docs/control-plane.md) from the cache's node status."""
        proxies = []
        for status in self.cache.node_statuses():
            types = {}
            for type_url, type_status in status.types().items():
                entry: dict[str, Any] = {"sent": type_status.sent_version, "acked": type_status.acked_version,
                                         "state": type_status.sync_state}
                nack = type_status.last_nack
                if nack is not None:
                    entry["nack"] = {"version": nack.version, "error": nack.message}
                types[type_url.rsplit(".", 1)[-1]] = entry
            proxies.append({"id": status.node_id, "cluster": status.cluster,
                            "connected_since": status.connected_at, "types": types})
        return {"proxies": proxies}

    def _config_view(self, proxy_id: str, type_name: str | None) -> Any:
        snapshot = self.cache.get_snapshot(proxy_id)
        if snapshot is None:
            return None
        wanted = {"listeners": "Listener", "routes": "RouteConfiguration", "clusters": "Cluster",
                  "endpoints": "ClusterLoadAssignment"}
        out = []
        for type_url in snapshot.type_urls:
            short = type_url.rsplit(".", 1)[-1]
            if type_name and wanted.get(type_name) != short:
                continue
            out.extend(snapshot.resources(type_url).values())
        return out


async def serve(state_dir: str | None, xds_address: tuple[str, int], http_address: tuple[str, int],
                ready_file: str | None = None) -> int:
    import signal

    control_plane = ControlPlane(state_dir, xds_address=xds_address, http_address=http_address)
    xds_port, http_port = await control_plane.start()
    if ready_file:
        Path(ready_file).write_text(json.dumps({"xds_port": xds_port, "http_port": http_port}))
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    await control_plane.stop()
    return 0
