"""One worker: a cluster manager, listeners and stats, all built from the bootstrap.

Construction is the validation: it either builds everything or raises a
ConfigError naming the field, before any socket is bound. ``--mode validate``
stops there.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from tulle.config.errors import ConfigError, join
from tulle.listener.listener import Listener
from tulle.runtime import Runtime
from tulle.server.bootstrap import check_bootstrap, file_sources, xds_settings
from tulle.server.context import FactoryContext, ServerState
from tulle.stats.store import Store
from tulle.upstream.cluster_manager import ClusterManager
from tulle.upstream.resource_manager import share_between_workers


def _as_grpc_server_cluster(cluster: Any) -> Any:
    """The xDS server's cluster speaks HTTP/2 (gRPC), which grpcio handles, not Tulle's HTTP/1
    pools: its HTTP/2 options are for the gRPC client, so they are set aside here."""
    copy = type(cluster)()
    copy.CopyFrom(cluster)
    copy.ClearField("http2_protocol_options")
    copy.typed_extension_protocol_options.pop("envoy.extensions.upstreams.http.v3.HttpProtocolOptions", None)
    return copy


class Worker:
    def __init__(self, bootstrap: Any, state: ServerState) -> None:
        check_bootstrap(bootstrap)
        self.bootstrap = bootstrap
        self.state = state
        self.stats = Store()
        # built first, as in Envoy: every factory below may read it
        self.runtime = Runtime.from_bootstrap(bootstrap)
        self.xds = xds_settings(bootstrap)
        self.file_sources = file_sources(bootstrap)  # path_config_source: type URL -> file
        clusters = list(bootstrap.static_resources.clusters)
        if self.xds is not None:
            clusters = [_as_grpc_server_cluster(c) if c.name == self.xds.cluster else c for c in clusters]
            if not any(c.name == self.xds.cluster for c in clusters):
                raise ConfigError(f"unknown xDS cluster {self.xds.cluster!r}: it must be a static cluster",
                                  field="dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name")
        share_between_workers(state.concurrency)  # circuit breakers count across workers: map before the fork
        self.cluster_manager = ClusterManager.from_protos(
            clusters, field="static_resources.clusters", stats=self.stats
        )
        self.static_cluster_names = frozenset(c.name for c in clusters)
        self.ctx = FactoryContext(stats=self.stats, cluster_manager=self.cluster_manager, server=state)
        self.ctx.runtime = self.runtime
        self.overload_manager = None
        if bootstrap.HasField("overload_manager"):
            from tulle.overload.manager import OverloadManager

            self.overload_manager = OverloadManager.from_proto(
                bootstrap.overload_manager, "overload_manager", self.stats, state)
            self.ctx.overload = self.overload_manager.state
        self.listeners: list[Listener] = []
        names: dict[str, int] = {}
        addresses: dict[tuple[str, int], str] = {}
        for index, proto in enumerate(bootstrap.static_resources.listeners):
            field = join("static_resources", f"listeners[{index}]")
            listener = Listener(proto, field, self.ctx)
            if listener.name in names:
                raise ConfigError(f"duplicate listener name {listener.name!r}", field=join(field, "name"))
            address = (listener.ip, listener.port)
            # SO_REUSEPORT would let both bind and split the traffic between them: refuse, as Envoy does.
            if listener.port and address in addresses:
                raise ConfigError(
                    f"error adding listener '{listener.name}': has duplicate address "
                    f"'{listener.ip}:{listener.port}' as existing listener '{addresses[address]}'",
                    field=join(field, "address"),
                )
            names[listener.name] = index
            addresses[address] = listener.name
            self.listeners.append(listener)
        self.static_listener_names = frozenset(names)
        if self.xds is None:
            self._refuse_ads_sources()
        self._server_stats()

    def _refuse_ads_sources(self) -> None:
        """Routes or endpoints from ``ads`` with no ADS stream to get them from: refuse, as Envoy does."""
        for index, cluster in enumerate(self.bootstrap.static_resources.clusters):
            if cluster.HasField("eds_cluster_config"):
                raise ConfigError("ADS must be configured to support an ADS config source "
                                  "(dynamic_resources.ads_config)",
                                  field=f"static_resources.clusters[{index}].eds_cluster_config.eds_config")
        for listener in self.listeners:
            config = getattr(listener.factory, "config", None)
            if getattr(config, "route_config_name", ""):
                raise ConfigError("ADS must be configured to support an ADS config source "
                                  "(dynamic_resources.ads_config)", field=join(config.rds_field, "config_source"))

    def _server_stats(self) -> None:
        self.stats.gauge("server.live", per_worker=False).set(1)
        self.stats.gauge("server.concurrency", per_worker=False).set(self.state.concurrency)
        self.stats.gauge("server.state", per_worker=False).set(0)  # 0 = LIVE, as in Envoy

    def bind_all(self) -> list[socket.socket]:
        return [listener.bind() for listener in self.listeners]

    def xds_target(self) -> str:
        """host:port of the xDS server (the first endpoint of its static cluster)."""
        cluster = self.cluster_manager.get(self.xds.cluster)  # type: ignore[union-attr]
        if cluster is None or not cluster.hosts:
            raise ConfigError("the xDS cluster has no endpoint", field="static_resources.clusters")
        host = cluster.hosts[0]
        return f"[{host.ip}]:{host.port}" if ":" in host.ip else f"{host.ip}:{host.port}"

    async def start(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.get_running_loop()
        self.ctx.loop = loop
        # the main process watches the disk layers (failing here, before serving, if it cannot)
        # and forwards each new snapshot to the other workers
        self.runtime.start(loop, self.stats, owner=self.state.worker_index == 0)
        await self.cluster_manager.start()
        for listener, sock in zip(self.listeners, sockets, strict=True):
            await listener.start(sock)
        if self.overload_manager is not None:
            self.overload_manager.start(loop)  # each worker process runs its own refresh loop

    def snapshot(self) -> dict[str, Any]:
        uptime = int(time.time() - self.state.start_time) if self.state.start_time else 0
        self.stats.gauge("server.uptime", per_worker=False).set(uptime)
        self.stats.gauge("server.healthcheck_failed", per_worker=False).set(int(self.state.healthcheck_failed))
        return self.stats.snapshot()

    def clusters_status(self) -> list[dict[str, Any]]:
        out = []
        for cluster in self.cluster_manager.clusters.values():
            hosts = []
            for host in cluster.hosts:
                host_stats = host.stats
                hosts.append({
                    "address": host.address_str,
                    "hostname": host.hostname,
                    "weight": host.weight,
                    "priority": host.priority,
                    "region": host.locality[0] if host.locality else "",
                    "zone": host.locality[1] if host.locality else "",
                    "sub_zone": host.locality[2] if host.locality else "",
                    "health_flags": host.health_flags,
                    "success_rate": host.outlier.success_rate,
                    "stats": {
                        name: getattr(host_stats, name)
                        for name in ("cx_total", "cx_active", "cx_connect_fail", "rq_total", "rq_success",
                                     "rq_error", "rq_active", "rq_timeout")
                    },
                })
            out.append({"name": cluster.name, "type": cluster.type_name, "lb_policy": cluster.lb_policy,
                        "hosts": hosts, "circuit_breakers": cluster.circuit_breakers_status()})
        return out

    def stop_accepting(self, inbound_only: bool = False) -> None:
        for listener in self.listeners:
            if inbound_only and listener.traffic_direction != 1:  # 1 = INBOUND
                continue
            listener.stop_accepting()

    def drain(self, inbound_only: bool = False) -> None:
        for listener in self.listeners:
            if inbound_only and listener.traffic_direction != 1:
                continue
            listener.drain()

    async def close(self) -> None:
        self.runtime.stop()
        if self.overload_manager is not None:
            self.overload_manager.stop()
        self.stop_accepting()
        self.drain()
        await self.cluster_manager.close()
        for shared in list(self.ctx.shared.values()):
            flush = getattr(shared, "flush", None)
            if flush is not None:
                flush()  # access-log buffers: nothing logged is lost at shutdown
