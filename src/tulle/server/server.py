"""The ``tulle proxy`` process: workers, admin, signals.

Worker 0 runs in the main process next to the admin server; workers
1..N-1 are forked children, each with its own listening sockets (bound here,
before the fork, with SO_REUSEPORT) and a control socket back to the main
process. The admin sums what the workers report, so ``/stats`` reads like one
Envoy process with N worker threads.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from google.protobuf import json_format

from tulle import __version__
from tulle.compiled import build_info, pure_python_requested, summary
from tulle.config.errors import ConfigError
from tulle.config.loader import load_bootstrap
from tulle.server.context import ServerState
from tulle.server.worker import Worker
from tulle.stats.store import merge

log = logging.getLogger("tulle.server")

LOG_LEVELS = {
    "trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
    "warn": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL, "off": logging.CRITICAL + 10,
}


def tune_process_memory() -> None:
    """Keep a worker's resident memory small (the data plane's RSS budget is ~40 MB).

    glibc gives every thread that mallocs its own arena; libuv's getaddrinfo pool
    would add one per thread. One arena and a two-thread pool are plenty for a
    proxy whose threads only resolve DNS.
    """
    os.environ.setdefault("UV_THREADPOOL_SIZE", "2")
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 1)  # M_ARENA_MAX
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def release_freed_memory() -> None:
    """Hand pages freed after start-up (config parsing) back to the OS, and move what start-up
    built (modules, protos, config) out of the cyclic GC's reach so its collections stay short."""
    gc.collect()
    gc.freeze()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def install_event_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; asyncio is the fallback
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


class ControlChannel:
    """The main process's end of one child worker's control socket: JSON lines, request/response."""

    def __init__(self, sock: socket.socket, pid: int) -> None:
        self.sock = sock
        self.pid = pid
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.lock = asyncio.Lock()

    async def call(self, op: str, **args: Any) -> Any:
        async with self.lock:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(sock=self.sock)
            self.writer.write(json.dumps({"op": op, **args}).encode() + b"\n")
            await self.writer.drain()
            line = await asyncio.wait_for(self.reader.readline(), 10)  # type: ignore[union-attr]
            if not line:
                raise ConnectionError(f"worker {self.pid} is gone")
            return json.loads(line)


class ProxyServer:
    def __init__(self, config_path: str, concurrency: int, log_level: str, drain_time_s: float = 0.0) -> None:
        self.config_path = config_path
        self.concurrency = max(1, concurrency)
        self.log_level = log_level
        self.drain_time_s = drain_time_s
        self.bootstrap = load_bootstrap(config_path)
        self.state = ServerState(concurrency=self.concurrency, node_id=self.bootstrap.node.id,
                                 node_cluster=self.bootstrap.node.cluster)
        self.worker = Worker(self.bootstrap, self.state)  # validates everything, binds nothing
        self.children: list[ControlChannel] = []
        self.admin: Any = None
        self.stopped: asyncio.Event | None = None
        self.background: set[asyncio.Task[None]] = set()
        self.applier: Any = None  # xDS: the dynamic part of this process's worker
        self.ads: Any = None  # the ADS client (main process only)

    # --- start-up --------------------------------------------------------
    def run(self) -> int:
        """Bind, fork the other workers, then serve until told to stop."""
        self.state.start_time = time.time()
        tune_process_memory()
        # Every port first: a taken one is an error before anything is served (as Envoy's "cannot bind").
        admin_socket = self._bind_admin()
        try:
            sockets_per_worker = [self.worker.bind_all() for _ in range(self.concurrency)]
        except BaseException:
            if admin_socket is not None:
                admin_socket.close()
            for listener in self.worker.listeners:
                for sock in listener.sockets:
                    sock.close()
            raise
        for index in range(1, self.concurrency):
            parent_end, child_end = socket.socketpair()
            pid = os.fork()
            if pid == 0:  # child worker
                parent_end.close()
                if admin_socket is not None:
                    admin_socket.close()
                for other, socks in enumerate(sockets_per_worker):
                    if other != index:
                        for sock in socks:
                            sock.close()
                self.state.worker_index = index
                code = self._run_child(sockets_per_worker[index], child_end)
                os._exit(code)
            child_end.close()
            self.children.append(ControlChannel(parent_end, pid))
        for socks in sockets_per_worker[1:]:
            for sock in socks:
                sock.close()
        install_event_loop_policy()
        return asyncio.run(self._main(sockets_per_worker[0], admin_socket))

    def _bind_admin(self) -> socket.socket | None:
        if not (self.bootstrap.HasField("admin") and self.bootstrap.admin.HasField("address")):
            return None
        from tulle.listener.claim import address_text, os_reason
        from tulle.listener.listener import socket_address_of

        ip, port = socket_address_of(self.bootstrap.admin.address, "admin.address")
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip, port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"cannot bind '{address_text(ip, port)}': {os_reason(exc)}",
                              field="admin.address") from None
        sock.setblocking(False)
        return sock

    async def _main(self, sockets: list[socket.socket], admin_socket: socket.socket | None) -> int:
        loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()
        self.worker.runtime.on_change = self.forward_runtime
        await self.worker.start(sockets)
        self._start_xds_client()
        await self._start_file_sources()
        if admin_socket is not None:
            from tulle.admin.server import AdminServer

            ip, port = admin_socket.getsockname()[:2]
            self.admin = AdminServer(AdminBackendImpl(self), ip, port)
            await self.admin.start(admin_socket)
            log.info("admin listening on %s:%s", ip, self.admin.port)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopped.set)
        for listener in self.worker.listeners:
            log.info("listener %s on %s:%s", listener.name, listener.ip, listener.port)
        log.info("tulle proxy %s started with %d worker(s); %s", __version__, self.concurrency, summary())
        release_freed_memory()
        await self.stopped.wait()
        await self._shutdown()
        return 0

    def _start_xds_client(self) -> None:
        """The main process holds the ADS stream; children get each applied update forwarded."""
        settings = self.worker.xds
        if settings is None:
            return
        from tulle.server.bootstrap import initial_fetch_timeout
        from tulle.xds_client.ads import AdsClient
        from tulle.xds_client.apply import CLUSTER_TYPE, LISTENER_TYPE, XdsApplier

        wildcard = {}  # only what the bootstrap asks for, as Envoy
        if settings.cds_config is not None:
            wildcard[CLUSTER_TYPE] = initial_fetch_timeout(settings.cds_config)
        if settings.lds_config is not None:
            wildcard[LISTENER_TYPE] = initial_fetch_timeout(settings.lds_config)
        self.applier = XdsApplier(self.worker)
        self.ads = AdsClient(self.worker.xds_target(), self.bootstrap.node, self.applier, delta=settings.delta,
                             wildcard=wildcard, max_receive_message_length=settings.max_receive_message_length,
                             stats=self.worker.stats, on_applied=self._forward_update)
        task = asyncio.get_running_loop().create_task(self.ads.run())
        self.background.add(task)
        log.info("xDS: ADS (%s) to %s", "delta" if settings.delta else "state of the world", self.worker.xds_target())

    async def _start_file_sources(self) -> None:
        """path_config_source for LDS/CDS: each file is applied now, then again whenever it changes."""
        sources = self.worker.file_sources
        if not sources:
            return
        from tulle.xds_client.apply import CLUSTER_TYPE, XdsApplier
        from tulle.xds_client.files import FileSubscription
        from tulle.xds_client.stats import CDS_PREFIX, LDS_PREFIX, SubscriptionStats

        if self.applier is None:
            self.applier = XdsApplier(self.worker)
        loop = asyncio.get_running_loop()
        # clusters first, as Envoy's init order: the listeners' routes name them
        for type_url in sorted(sources, key=lambda url: url != CLUSTER_TYPE):
            stats = SubscriptionStats(self.worker.stats, CDS_PREFIX if type_url == CLUSTER_TYPE else LDS_PREFIX)
            subscription = FileSubscription(sources[type_url], type_url, self.applier, stats,
                                            on_applied=self._forward_update)
            await subscription.check()
            task = loop.create_task(subscription.run())
            self.background.add(task)
            log.info("xDS: %s from the file %s", type_url.rsplit(".", 1)[-1], sources[type_url])

    def _forward_update(self, type_url: str, resources: dict[str, Any], removed: set[str], sotw: bool) -> None:
        if not self.children:
            return
        payload = {
            "type_url": type_url, "sotw": sotw, "removed": sorted(removed),
            "resources": [base64.b64encode(r.SerializeToString(deterministic=True)).decode() for r in resources.values()],
        }
        loop = asyncio.get_running_loop()
        for child in self.children:
            task = loop.create_task(child.call("xds", **payload))
            self.background.add(task)
            task.add_done_callback(self.background.discard)

    def forward_runtime(self) -> asyncio.Future[Any]:
        """Send this process's new runtime snapshot to every other worker; done once they all have it."""
        loop = asyncio.get_running_loop()
        layers = self.worker.runtime.export()
        tasks = [loop.create_task(child.call("runtime", layers=layers)) for child in self.children]
        for task in tasks:
            self.background.add(task)
            task.add_done_callback(self.background.discard)
        return asyncio.gather(*tasks, return_exceptions=True)

    async def _apply_forwarded(self, request: dict[str, Any]) -> Any:
        from google.protobuf import symbol_database

        from tulle.xds_client.apply import UpdateRejected, XdsApplier, resource_name

        if self.applier is None:
            self.applier = XdsApplier(self.worker)
        message_class = symbol_database.Default().GetSymbol(request["type_url"].rsplit("/", 1)[-1])
        resources = {}
        for encoded in request["resources"]:
            resource = message_class.FromString(base64.b64decode(encoded))
            resources[resource_name(resource)] = resource
        try:
            await self.applier.apply(request["type_url"], resources, set(request["removed"]), request["sotw"])
        except UpdateRejected as exc:  # the main process accepted it: this would be a bug, say so loudly
            log.error("worker %d refused an update the main process applied: %s", self.state.worker_index, exc)
            return {"error": str(exc)}
        return True

    async def _shutdown(self) -> None:
        log.info("shutting down")
        if self.ads is not None:
            self.ads.stop()
        for task in list(self.background):
            task.cancel()
        for child in self.children:
            try:
                os.kill(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        if self.admin is not None:
            await self.admin.close()
        await self.worker.close()
        for child in self.children:
            await asyncio.get_running_loop().run_in_executor(None, _reap, child.pid)

    def _run_child(self, sockets: list[socket.socket], control: socket.socket) -> int:
        install_event_loop_policy()
        try:
            return asyncio.run(self._child_main(sockets, control))
        except KeyboardInterrupt:
            return 0

    async def _child_main(self, sockets: list[socket.socket], control: socket.socket) -> int:
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        await self.worker.start(sockets)
        reader, writer = await asyncio.open_connection(sock=control)

        async def serve_control() -> None:
            while True:
                line = await reader.readline()
                if not line:  # the main process is gone: so are we
                    stopped.set()
                    return
                request = json.loads(line)
                reply = await self.handle_control(request)
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()

        task = asyncio.create_task(serve_control())
        release_freed_memory()
        await stopped.wait()
        task.cancel()
        await self.worker.close()
        return 0

    # --- what every worker answers ---------------------------------------
    async def handle_control(self, request: dict[str, Any]) -> Any:
        op = request.get("op")
        if op == "stats":
            return self.worker.snapshot()
        if op == "clusters":
            return self.worker.clusters_status()
        if op == "healthcheck":
            self.state.healthcheck_failed = bool(request["failed"])
            return True
        if op == "drain":
            inbound_only = request.get("inbound_only", False)
            self.state.draining = True
            self.worker.drain(inbound_only)
            if request.get("stop_accepting", True):
                self.worker.stop_accepting(inbound_only)
            return True
        if op == "xds":
            return await self._apply_forwarded(request)
        if op == "runtime":
            self.worker.runtime.install(request["layers"])
            return True
        if op == "build_info":
            return {"worker": self.state.worker_index, "pid": os.getpid(),
                    "modules": build_info()["modules"]}
        if op == "log_level":
            set_log_level(request.get("name"), request["level"])
            return True
        return {"error": f"unknown op {op!r}"}

    async def broadcast(self, op: str, **args: Any) -> list[Any]:
        local = await self.handle_control({"op": op, **args})
        remote = await asyncio.gather(*(child.call(op, **args) for child in self.children),
                                      return_exceptions=True)
        return [local] + [r for r in remote if not isinstance(r, BaseException)]


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def set_log_level(name: str | None, level: str) -> None:
    if level not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r}")
    logger = logging.getLogger(f"tulle.{name}" if name else "tulle")
    logger.setLevel(LOG_LEVELS[level])


def log_levels() -> dict[str, str]:
    names = {v: k for k, v in LOG_LEVELS.items() if k not in ("warn", "trace")}
    out = {"tulle": names.get(logging.getLogger("tulle").getEffectiveLevel(), "info")}
    for name, logger in sorted(logging.root.manager.loggerDict.items()):
        if name.startswith("tulle.") and isinstance(logger, logging.Logger):
            out[name[len("tulle."):]] = names.get(logger.getEffectiveLevel(), "info")
    return out


def _message_dict(msg: Any) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def _typed(msg: Any) -> dict[str, Any]:
    """A resource as config_dump shows it: its fields plus its @type."""
    body = _message_dict(msg)
    body["@type"] = "type.googleapis.com/" + msg.DESCRIPTOR.full_name
    return body


class AdminBackendImpl:
    """What the admin server asks of this process (see tulle.admin.backend.AdminBackend)."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server

    async def stats_snapshot(self) -> dict[str, Any]:
        return merge(await self.server.broadcast("stats"))

    async def clusters(self) -> list[dict[str, Any]]:
        per_worker = await self.server.broadcast("clusters")
        merged = per_worker[0]
        for other in per_worker[1:]:
            for cluster, other_cluster in zip(merged, other, strict=False):
                for host, other_host in zip(cluster["hosts"], other_cluster["hosts"], strict=False):
                    for key, value in other_host["stats"].items():
                        host["stats"][key] += value
        return merged

    def config_dump(self) -> dict[str, Any]:
        bootstrap = self.server.bootstrap
        updated = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(self.server.state.start_time))
        prefix = "type.googleapis.com/envoy.admin.v3."
        routes = []
        for listener in bootstrap.static_resources.listeners:
            for chain in listener.filter_chains:
                for network_filter in chain.filters:
                    if network_filter.typed_config.type_url.endswith("HttpConnectionManager"):
                        from tulle.config.loader import unpack_any

                        hcm = unpack_any(network_filter.typed_config)
                        if hcm.HasField("route_config"):
                            routes.append({"route_config": _typed(hcm.route_config), "last_updated": updated})
        listeners = [{"listener": _typed(listener), "last_updated": updated}
                     for listener in bootstrap.static_resources.listeners]
        clusters = [{"cluster": _typed(cluster), "last_updated": updated}
                    for cluster in bootstrap.static_resources.clusters]
        dynamic_clusters, dynamic_listeners, dynamic_routes, endpoints = [], [], [], []
        applier = self.server.applier
        if applier is not None:
            dynamic_clusters = [{"cluster": _typed(proto), "last_updated": updated}
                                for _, proto in sorted(applier.cluster_protos.items())]
            dynamic_listeners = [
                {"name": name, ("active_state" if dynamic.started else "warming_state"):
                    {"listener": _typed(dynamic.proto), "last_updated": updated}}
                for name, dynamic in sorted(applier.listeners.items())
            ]
            dynamic_routes = [{"route_config": _typed(proto), "last_updated": updated}
                              for _, proto in sorted(applier.route_protos.items())]
            endpoints = [{"endpoint_config": _typed(proto), "last_updated": updated}
                         for _, proto in sorted(applier.assignments.items())]
        return {"configs": [
            {"@type": prefix + "BootstrapConfigDump", "bootstrap": _message_dict(bootstrap), "last_updated": updated},
            {"@type": prefix + "ClustersConfigDump", "static_clusters": clusters,
             "dynamic_active_clusters": dynamic_clusters},
            {"@type": prefix + "ListenersConfigDump", "static_listeners": listeners,
             "dynamic_listeners": dynamic_listeners},
            {"@type": prefix + "RoutesConfigDump", "static_route_configs": routes,
             "dynamic_route_configs": dynamic_routes},
            {"@type": prefix + "EndpointsConfigDump", "dynamic_endpoint_configs": endpoints},
        ]}

    def listeners(self) -> list[dict[str, Any]]:
        return [{"name": listener.name, "address": f"{listener.ip}:{listener.port}"}
                for listener in self.server.worker.listeners]

    async def server_info(self) -> dict[str, Any]:
        server = self.server
        uptime = int(time.time() - server.state.start_time)
        return {
            "version": f"tulle/{__version__}/Python-{sys.version.split()[0]}/RELEASE",
            "state": "DRAINING" if server.state.draining else "LIVE",
            "hot_restart_version": "disabled",
            "command_line_options": {
                "config_path": server.config_path, "concurrency": server.concurrency,
                "log_level": server.log_level, "mode": "Serve", "drain_time": f"{server.drain_time_s}s",
            },
            "node": _message_dict(server.bootstrap.node),
            "uptime_current_epoch": f"{uptime}s",
            "uptime_all_epochs": f"{uptime}s",
            # not Envoy's: which build of the hot path each worker runs (see tulle.compiled)
            "compiled_hot_path": {
                "pure_python": pure_python_requested(),
                "workers": sorted(await server.broadcast("build_info"), key=lambda w: w["worker"]),
            },
        }

    def ready(self) -> bool:
        return not self.server.state.draining

    def healthcheck_failed(self) -> bool:
        return self.server.state.healthcheck_failed

    def set_healthcheck_failed(self, failed: bool) -> None:
        self.server.state.healthcheck_failed = failed
        for child in self.server.children:
            asyncio.get_running_loop().create_task(child.call("healthcheck", failed=failed))

    async def drain_listeners(self, inbound_only: bool, graceful: bool) -> None:
        server = self.server
        if graceful and server.drain_time_s:
            # Envoy's graceful drain: keep accepting while clients are told Connection: close,
            # then close the listeners when the drain time is up. Returns once the drain started.
            await server.broadcast("drain", inbound_only=inbound_only, stop_accepting=False)

            async def finish() -> None:
                await asyncio.sleep(server.drain_time_s)
                await server.broadcast("drain", inbound_only=inbound_only)

            server.background.add(asyncio.get_running_loop().create_task(finish()))
            return
        await server.broadcast("drain", inbound_only=inbound_only)

    async def quit(self) -> None:
        if self.server.stopped is not None:
            asyncio.get_running_loop().call_soon(self.server.stopped.set)

    def log_levels(self) -> dict[str, str]:
        return log_levels()

    def runtime(self) -> dict[str, Any]:
        return self.server.worker.runtime.admin_view()

    async def runtime_modify(self, changes: dict[str, str]) -> None:
        runtime = self.server.worker.runtime
        runtime.merge_admin(changes)  # NoAdminLayer without an admin layer
        if runtime.published is not None:
            await runtime.published  # answered once every worker reads the new values

    def set_log_level(self, name: str | None, level: str) -> None:
        set_log_level(name, level)
        for child in self.server.children:
            asyncio.get_running_loop().create_task(child.call("log_level", name=name, level=level))
