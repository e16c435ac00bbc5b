"""``tulle control-plane``: the store, the registry, the HTTP API and the xDS server, wired.

Every change (a resource applied or deleted, a service or instance registered,
a lease expiring) schedules one debounced push. A push builds the mesh snapshot
once and translates it for every connected proxy, sharing what proxies with the
same view have in common and taking an incremental path when only endpoints
changed (controlplane/push.py); the cache compares versions per type, so a proxy
whose config did not change gets nothing, and an endpoint-only change reaches
proxies as EDS only.

Translation is CPU-bound Python (10,000 ServiceEntries take seconds), so it runs in
a worker thread, never on the event loop, which keeps answering heartbeats, the API
and xDS streams meanwhile (the interpreter hands it the GIL every few milliseconds).
The translator is used by one thread at a time (``_translation``, held around each
piece of work) and reads an immutable MeshSnapshot; the snapshots it makes are set
in the cache on the loop, which wakes the streams.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tulle.controlplane import api_token
from tulle.controlplane.api.server import ApiServer
from tulle.controlplane.istio.validation import review
from tulle.controlplane.model import MeshSnapshot, ProxyIdentity, Resource
from tulle.controlplane.push import MeshTranslator
from tulle.controlplane.registry.registry import Registry
from tulle.controlplane.store.memory import MemoryStore
from tulle.controlplane.store.sqlite import SqliteStore
from tulle.controlplane.store.state import StateError
from tulle.controlplane.translate.grpc import is_proxyless, translate_grpc
from tulle.controlplane.translate.options import ISTIO_DEFAULTS, TULLE_PROXY_TODAY
from tulle.controlplane.xds.cache import Snapshot, SnapshotCache
from tulle.controlplane.xds.server import DEFAULT_MAX_XDS_MESSAGE_BYTES, XdsServer
from tulle.listener.claim import address_text, os_reason, unavailable

log = logging.getLogger("tulle.controlplane")

DEBOUNCE_SECONDS = 0.1  # istiod's PILOT_DEBOUNCE_AFTER is 100 ms
DEBOUNCE_MAX_SECONDS = 1.0  # ... and PILOT_DEBOUNCE_MAX 10 s; a busy mesh still converges within 1 s here
TRANSLATE_BATCH_SECONDS = 0.05  # proxies translated per trip to the worker thread, then their snapshots are set
GC_INTERVAL_SECONDS = 300.0  # full garbage collections (see push_all)
NEVER = 1 << 30  # a generation-2 threshold no translation reaches (see _full_collections_deferred)
LAST_GOOD_INTERVAL_SECONDS = 60.0  # how often config.db.last-good catches up with changes (store/state.py)
# A control-plane restart makes every proxy reconnect at once. gRPC core holds RPCs the event loop has
# not picked up yet and, past 1,000 of them, drops new ones at random (INTERNAL) up to a hard limit of
# 3,000: the whole mesh must fit in that queue, so that reconnecting proxies wait instead of failing.
XDS_GRPC_OPTIONS = (
    ("grpc.server.max_pending_requests", 100_000),
    ("grpc.server.max_pending_requests_hard_limit", 100_000),
)


class PortInUse(OSError):
    """A port the control plane needs is taken: which one, what for, and the flag that moves it."""

    def __init__(self, what: str, flag: str, address: tuple[str, int], reason: str) -> None:
        super().__init__(f"cannot listen on {address_text(*address)} for the {what}: {reason} "
                         f"(is another control plane running? choose another address with {flag})")


@dataclass(frozen=True)
class ConnectedNode:
    """What a push needs of a connected node, worked out once when it connects."""

    proxy: ProxyIdentity
    options: Any
    proxyless: bool


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


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        token_file: str | None = None,
        api_allowed_hosts: Iterable[str] = (),
        xds_max_message_bytes: int = DEFAULT_MAX_XDS_MESSAGE_BYTES,
    ) -> None:
        # The API's token first: a token file others can read refuses the start before anything opens.
        self._token_dir: str | None = None
        if token_file is None and state_dir:
            token_file = api_token.token_path(state_dir)
        if token_file is None:  # in memory: a private directory of its own, removed at stop()
            self._token_dir = tempfile.mkdtemp(prefix="tulle-control-plane-")
            token_file = api_token.token_path(self._token_dir)
        self.token_file = os.path.abspath(token_file)
        token, self.token_created = api_token.load_or_create(self.token_file)
        self.store = SqliteStore(state_dir) if state_dir else MemoryStore()
        self.registry = Registry(self.store, domain_suffix=domain_suffix)
        self.domain_suffix = domain_suffix
        self.xds_address = xds_address
        self.http_address = http_address
        self.expiry_interval = expiry_interval
        self.nodes: dict[str, ConnectedNode] = {}  # by node id
        self.cache = SnapshotCache(on_node_connected=self._node_connected,
                                   on_node_disconnected=self._node_disconnected)
        self.xds = XdsServer(self.cache, grpc_options=XDS_GRPC_OPTIONS, max_message_bytes=xds_max_message_bytes)
        self.api = ApiServer(self.store, self.registry, validator=self._validate, xds_status=self._xds_status,
                             config_view=self._config_view, token=token, allowed_hosts=api_allowed_hosts)
        self.translator = MeshTranslator()
        # Held around every use of the translator (in a worker thread) and the setting of what it made.
        self._translation = asyncio.Lock()
        self._connecting: list[ConnectedNode] = []  # connected proxies waiting for their first translation
        self._connect_task: asyncio.Task[None] | None = None
        self._node_tasks: set[asyncio.Task[None]] = set()  # that translation, and forgetting proxies gone
        self._translations_running = 0
        self._gc_thresholds = gc.get_threshold()
        self.pushes = 0
        self._pending_full = True
        self._push_task: asyncio.Task[None] | None = None
        self._push_again = False
        self.last_push_seconds = 0.0
        self._push_handle: asyncio.TimerHandle | None = None
        self._first_pending = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: list[Any] = []

    # --- lifecycle -------------------------------------------------------------------------
    async def start(self) -> tuple[int, int]:
        """Bind both ports, then serve. A port in use raises PortInUse and nothing is served."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        ports = (("xDS", "--xds-address", self.xds_address), ("HTTP API", "--http-address", self.http_address))
        for what, flag, address in ports:  # a claim first: the OS's reason (gRPC's error has none)
            reason = unavailable(*address)
            if reason is not None:
                raise PortInUse(what, flag, address, reason)
        self.translator.set_mesh(self.mesh_snapshot())
        try:
            xds_port = self.xds.bind(*self.xds_address)
        except OSError as exc:  # taken since the check
            raise PortInUse(*ports[0], str(exc)) from None
        try:
            http_port = await self.api.start(*self.http_address)
        except OSError as exc:
            await self.xds.stop(None)
            raise PortInUse(*ports[1], os_reason(exc)) from None
        await self.xds.serve()
        # Commits may happen in the API's worker threads: their pushes are scheduled on the loop.
        self._unsubscribe.append(self.store.subscribe(lambda *_: self._schedule_push_from_any_thread(False)))
        self._unsubscribe.append(self.registry.subscribe(self._schedule_push_from_any_thread))
        self._tasks.append(self._loop.create_task(self.registry.run_expiry(self.expiry_interval)))
        self._tasks.append(self._loop.create_task(self.collect_garbage()))
        if isinstance(self.store, SqliteStore):
            self._tasks.append(self._loop.create_task(self.keep_last_good_copy()))
        log.info("control plane: xDS on %s:%d, HTTP API on %s:%d; API token %s %s", self.xds_address[0], xds_port,
                 self.http_address[0], http_port, "created in" if self.token_created else "read from",
                 self.token_file)
        if not _loopback(self.http_address[0]):
            log.warning("the HTTP API listens beyond loopback (%s): its bearer token crosses the network in "
                        "plaintext", self.http_address[0])
        if not _loopback(self.xds_address[0]):
            log.warning("xDS listens beyond loopback (%s): it is unauthenticated plaintext, and whoever reaches "
                        "it can read every proxy's configuration (docs/control-plane.md)", self.xds_address[0])
        return xds_port, http_port

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        for task in self._tasks:
            task.cancel()
        if self._push_handle is not None:
            self._push_handle.cancel()
        if self._push_task is not None:
            self._push_task.cancel()
        for task in self._node_tasks:
            task.cancel()
        await self.api.stop()
        await self.xds.stop(0.5)
        self.registry.close()
        self.store.close()  # a SqliteStore saves its last good copy as it closes
        self.remove_private_token()

    def remove_private_token(self) -> None:
        """An in-memory control plane's token goes with it."""
        if self._token_dir is not None:
            shutil.rmtree(self._token_dir, ignore_errors=True)
            self._token_dir = None

    # --- pushes -------------------------------------------------------------------------------
    def schedule_push(self, endpoints_only: bool = False) -> None:
        """Coalesce bursts of changes into one push (debounce, bounded by a maximum delay).
        The push is endpoints-only when every change it coalesces was."""
        self._pending_full = self._pending_full or not endpoints_only
        loop = self._loop
        now = loop.time()
        if self._push_handle is None:
            self._first_pending = now
        else:
            self._push_handle.cancel()
        delay = min(DEBOUNCE_SECONDS, max(0.0, self._first_pending + DEBOUNCE_MAX_SECONDS - now))
        self._push_handle = loop.call_later(delay, self._start_push)

    def _schedule_push_from_any_thread(self, endpoints_only: bool) -> None:
        if threading.get_ident() == self._loop_thread:
            self.schedule_push(endpoints_only)
        else:
            self._loop.call_soon_threadsafe(self.schedule_push, endpoints_only)

    def mesh_snapshot(self) -> MeshSnapshot:
        services, instances = self.registry.snapshot()
        return MeshSnapshot(resources=self.store.list(), services=services, instances=instances,
                            domain_suffix=self.domain_suffix)

    def _start_push(self) -> None:
        self._push_handle = None
        if self._push_task is not None and not self._push_task.done():
            self._push_again = True  # the running push picks the change up when it finishes
            return
        self._push_task = self._loop.create_task(self._push_loop())

    async def _push_loop(self) -> None:
        while True:
            self._push_again = False
            await self.push_all()
            if not self._push_again:
                return

    async def push_all(self) -> None:
        """Translate the current mesh for every connected proxy. Shared parts are translated once
        (controlplane/push.py), in a worker thread; each batch of proxies gets its snapshots as
        soon as it is translated."""
        started = time.perf_counter()
        endpoints_only, self._pending_full = not self._pending_full, False
        # Reading 10,000 resources takes about a second: off the loop (the store and registry are thread-safe).
        with self._full_collections_deferred():
            mesh = await asyncio.to_thread(self.mesh_snapshot)
            async with self._translation:
                await asyncio.to_thread(self.translator.set_mesh, mesh, endpoints_only)
            pending = list(self.nodes.values())
            while pending:
                async with self._translation:  # released between batches: a connecting proxy need not wait for all
                    translated, pending = await asyncio.to_thread(self._translate_batch, pending)
                    for node, snapshot in translated:
                        self._set_snapshot(node, snapshot)
        # What a push built lives until a later push replaces it: millions of objects in a big mesh,
        # which every full (generation 2) collection scanned, ~100 ms each, several times per
        # endpoint change. Refcounting still frees them once replaced; collect_garbage() catches any
        # reference cycle frozen with them.
        gc.freeze()
        self.pushes += 1
        self.last_push_seconds = time.perf_counter() - started

    def _translate(self, node: ConnectedNode) -> Snapshot | None:
        """The node's snapshot of the translator's mesh (in a worker thread, holding _translation);
        None, logged, when its translation fails: it keeps its last config."""
        try:
            if node.proxyless:
                assert self.translator.mesh is not None
                return Snapshot(translate_grpc(self.translator.mesh, node.proxy, node.options))
            return Snapshot.from_sets(self.translator.resource_sets(node.proxy, node.options))
        except Exception:  # one proxy's translation failing must not starve the others
            log.exception("translation for %s failed; it keeps its last config", node.proxy.id)
            return None

    def _translate_batch(self, nodes: list[ConnectedNode]) -> tuple[list[tuple[ConnectedNode, Snapshot | None]],
                                                                     list[ConnectedNode]]:
        """Translate nodes for about TRANSLATE_BATCH_SECONDS (at least one): what was translated,
        and the nodes left."""
        batch_end = time.perf_counter() + TRANSLATE_BATCH_SECONDS
        translated = []
        for index, node in enumerate(nodes):
            translated.append((node, self._translate(node)))
            if time.perf_counter() > batch_end:
                return translated, nodes[index + 1:]
        return translated, []

    def _set_snapshot(self, node: ConnectedNode, snapshot: Snapshot | None) -> None:
        """On the loop: hand the cache a node's new snapshot, unless the node left meanwhile (or
        connected again: its own translation follows)."""
        if snapshot is not None and self.nodes.get(node.proxy.id) is node:
            self.cache.set_snapshot(node.proxy.id, snapshot)

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
        """A node's first stream opened: translate for it in a worker thread; the stream waits for
        the snapshot (the cache wakes it)."""
        proxy = proxy_identity(node)
        connected = ConnectedNode(proxy, self._options(node, proxy), is_proxyless(node.id, _metadata(node)))
        self.nodes[node.id] = connected
        self._connecting.append(connected)
        if self._connect_task is None or self._connect_task.done():
            self._connect_task = self._in_background(self._push_connected())

    async def _push_connected(self) -> None:
        """Translate the proxies that connected, in batches (a whole mesh reconnects at once after a
        restart), until none is waiting."""
        with self._full_collections_deferred():
            while self._connecting:
                async with self._translation:
                    taken, self._connecting = self._connecting, []
                    nodes = [node for node in taken if self.nodes.get(node.proxy.id) is node]  # still there
                    translated, rest = await asyncio.to_thread(self._translate_batch, nodes) if nodes else ([], [])
                    self._connecting = rest + self._connecting  # before those that connected meanwhile
                    for node, snapshot in translated:
                        self._set_snapshot(node, snapshot)
        gc.freeze()  # their snapshots are long-lived too (see push_all)

    @contextmanager
    def _full_collections_deferred(self) -> Iterator[None]:
        """No automatic full (generation 2) garbage collection while anything translates. One
        scans every object not frozen: with the millions a large push builds, ~0.5 s each, several
        per push, holding the GIL, so the event loop waited whichever thread collected. Young
        generations are still collected; what translation built is frozen after it, and
        collect_garbage() runs a full collection every few minutes. On the loop only."""
        if self._translations_running == 0:
            self._gc_thresholds = gc.get_threshold()
            gc.set_threshold(self._gc_thresholds[0], self._gc_thresholds[1], NEVER)
        self._translations_running += 1
        try:
            yield
        finally:
            self._translations_running -= 1
            if self._translations_running == 0:
                gc.set_threshold(*self._gc_thresholds)

    def _in_background(self, work: Any) -> asyncio.Task[None]:
        task = self._loop.create_task(work)
        self._node_tasks.add(task)
        task.add_done_callback(self._node_tasks.discard)
        return task

    async def collect_garbage(self, interval: float = GC_INTERVAL_SECONDS) -> None:
        """Every ``interval``, collect what push_all froze (a pause of ~100 ms per million objects,
        once in a while instead of during pushes)."""
        while True:
            await asyncio.sleep(interval)
            gc.unfreeze()
            gc.collect()
            gc.freeze()

    async def keep_last_good_copy(self, interval: float = LAST_GOOD_INTERVAL_SECONDS) -> None:
        """Every ``interval``, if the configuration changed, refresh config.db.last-good (off the loop)."""
        assert isinstance(self.store, SqliteStore)
        saved = self.store.revision()  # the store saved a copy when it opened
        while True:
            await asyncio.sleep(interval)
            revision = self.store.revision()
            if revision == saved:
                continue
            try:
                if await asyncio.to_thread(self.store.save_last_good):
                    saved = revision
                else:
                    log.error("%s failed its integrity check: the last good copy was kept as it was", self.store.path)
            except Exception:
                log.exception("saving the last good copy of %s failed", self.store.path)

    def _node_disconnected(self, node_id: str) -> None:
        self.nodes.pop(node_id, None)
        self.cache.clear(node_id)
        self._in_background(self._forget(node_id))

    async def _forget(self, node_id: str) -> None:
        async with self._translation:  # not while a translation in a thread may still add it back
            if node_id not in self.nodes:
                self.translator.forget(node_id)

    # --- hooks from the HTTP API ----------------------------------------------------------------
    def _validate(self, resources: list[Resource]) -> list[Any]:
        known = {service.hostname for service in self.registry.services()}
        return review(resources, known_services=known, domain_suffix=self.domain_suffix)

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
                refused = type_status.refused
                if refused is not None:  # not sent: over the xDS message size limit
                    entry["refused"] = {"version": refused.version, "bytes": refused.size,
                                        "limit": refused.limit, "error": refused.message}
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
                ready_file: str | None = None, token_file: str | None = None,
                api_allowed_hosts: Iterable[str] = (),
                xds_max_message_bytes: int = DEFAULT_MAX_XDS_MESSAGE_BYTES) -> int:
    import signal

    try:
        control_plane = ControlPlane(state_dir, xds_address=xds_address, http_address=http_address,
                                     token_file=token_file, api_allowed_hosts=api_allowed_hosts,
                                     xds_max_message_bytes=xds_max_message_bytes)
    except StateError as error:  # damaged or busy state: say what to do instead of a traceback
        print(f"tulle control-plane: error: {error}", file=sys.stderr)
        return 1
    try:
        xds_port, http_port = await control_plane.start()
    except BaseException:
        control_plane.registry.close()
        control_plane.store.close()
        control_plane.remove_private_token()
        raise
    if ready_file:
        Path(ready_file).write_text(json.dumps({"xds_port": xds_port, "http_port": http_port,
                                                "token_file": control_plane.token_file}))
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()
    await control_plane.stop()
    return 0
