"""Applying xDS resources to a running worker: validate the whole response, then swap.

Every response is all-or-nothing, as Envoy does: each resource is built (which
validates it) before anything is installed, so a bad update is NACKed with the
resource name and field path and the last good config keeps serving. Nothing in
flight is dropped: a replaced listener keeps its socket and its open
connections finish on the config they started with (HTTP connections are
drained: ``Connection: close`` on their next response); a new route table is
picked up by new requests only.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf import message

from tulle.config.errors import ConfigError
from tulle.server.bootstrap import initial_fetch_timeout
from tulle.xds_client.stats import rds_prefix

if TYPE_CHECKING:
    from tulle.server.worker import Worker

log = logging.getLogger("tulle.xds")

CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
# Envoy's ADS ordering: clusters before their endpoints, listeners before their routes.
SUBSCRIPTION_ORDER = (CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE)
WILDCARD_TYPES = (CLUSTER_TYPE, LISTENER_TYPE)


@dataclass(frozen=True)
class Watch:
    """One subscription to a route configuration or a cluster load assignment, as Envoy keeps one per
    RDS config (shared by the connection managers naming it) and one per EDS cluster."""

    resource_name: str
    stat_prefix: str
    initial_fetch_timeout: float  # seconds; 0: none


class UpdateRejected(Exception):
    """An xDS response that cannot be applied; the message becomes the NACK's error_detail."""


def resource_name(resource: message.Message) -> str:
    return getattr(resource, "cluster_name", "") if resource.DESCRIPTOR.name == "ClusterLoadAssignment" \
        else resource.name  # type: ignore[attr-defined]


def _rejected(kind: str, name: str, exc: ConfigError) -> UpdateRejected:
    where = f"{exc.field}: " if exc.field else ""
    return UpdateRejected(f"{kind} '{name}': {where}{exc.reason}")


@dataclass
class _DynamicListener:
    proto: message.Message
    listener: Any  # tulle.listener.listener.Listener
    started: bool = False


class XdsApplier:
    """The dynamic part of one worker's config."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.cluster_protos: dict[str, message.Message] = {}
        self.assignments: dict[str, message.Message] = {}
        self.route_protos: dict[str, message.Message] = {}
        self.listeners: dict[str, _DynamicListener] = {}

    # --- what to subscribe to ---------------------------------------------------
    def watches(self, type_url: str) -> dict[str, Watch]:
        """RDS: route config name -> its watch, for every connection manager (static or dynamic) using
        rds; EDS: cluster name -> its watch, for every EDS cluster (static or dynamic)."""
        watches: dict[str, Watch] = {}
        if type_url == ROUTE_TYPE:
            for config in self._hcm_configs():
                name = config.route_config_name
                if name and name not in watches:  # the first connection manager names its stats, as in Envoy
                    watches[name] = Watch(name, rds_prefix(config.stat_prefix, name),
                                          initial_fetch_timeout(config.rds_config_source))
        elif type_url == ENDPOINT_TYPE:
            for cluster in self.worker.cluster_manager.clusters.values():
                if cluster.type_name == "EDS":
                    source = self._cluster_proto(cluster.name).eds_cluster_config.eds_config
                    watches[cluster.name] = Watch(cluster.service_name, cluster.stats.prefix,
                                                  initial_fetch_timeout(source))
        return watches

    def wanted(self, type_url: str) -> set[str]:
        """The resource names to subscribe to (RDS/EDS)."""
        return {watch.resource_name for watch in self.watches(type_url).values()}

    def _cluster_proto(self, name: str) -> Any:
        proto = self.cluster_protos.get(name)
        if proto is not None:
            return proto
        return next(c for c in self.worker.bootstrap.static_resources.clusters if c.name == name)

    def _hcm_configs(self) -> list[Any]:
        """The connection managers of the static listeners, then of the dynamic ones."""
        static = self.worker.static_listener_names
        listeners = [listener for listener in self.worker.listeners if listener.name in static]
        listeners += [dynamic.listener for dynamic in self.listeners.values()]
        configs = []
        for listener in listeners:
            config = getattr(listener.factory, "config", None)
            if config is not None and hasattr(config, "route_config_name"):
                configs.append(config)
        return configs

    def _forget_unwatched(self) -> None:
        """Route configurations and assignments go with the last listener or cluster naming them (an
        RDS or EDS state-of-the-world response only carries what changed, so nothing else removes
        them); one subscribed to again waits for the server to send it anew."""
        for name in set(self.route_protos) - self.wanted(ROUTE_TYPE):
            del self.route_protos[name]
        for name in set(self.assignments) - self.wanted(ENDPOINT_TYPE):
            del self.assignments[name]

    # --- one response -------------------------------------------------------------
    async def apply(self, type_url: str, resources: dict[str, message.Message], removed: set[str],
                    state_of_the_world: bool) -> None:
        """Apply one response. SotW responses carry the full set for LDS/CDS, and for RDS/EDS only
        the resources they name (the others are kept); delta responses carry changes and ``removed``
        names. A route configuration or an assignment is never removed by name (Envoy ignores such
        removals and keeps the last one): it goes when nothing uses it any more."""
        if type_url == CLUSTER_TYPE:
            self._apply_clusters(resources, removed, state_of_the_world)
            self._forget_unwatched()
        elif type_url == ENDPOINT_TYPE:
            self._apply_endpoints(resources)
        elif type_url == LISTENER_TYPE:
            await self._apply_listeners(resources, removed, state_of_the_world)
            self._forget_unwatched()
        elif type_url == ROUTE_TYPE:
            await self._apply_routes(resources)
        else:
            raise UpdateRejected(f"unsupported resource type {type_url}")

    def _apply_clusters(self, resources: dict[str, message.Message], removed: set[str], sotw: bool) -> None:
        manager = self.worker.cluster_manager
        static = self.worker.static_cluster_names
        built = []
        for name, proto in resources.items():
            if name in static:
                raise UpdateRejected(f"Cluster '{name}': a static cluster of the bootstrap cannot be replaced")
            if self.cluster_protos.get(name) == proto:
                continue  # unchanged: keep the running cluster (and its pools)
            try:
                built.append((name, proto, manager.build(proto, "")))
            except ConfigError as exc:
                raise _rejected("Cluster", name, exc) from None
        gone = set(removed)
        if sotw:
            gone |= set(self.cluster_protos) - set(resources)
        for name, proto, cluster in built:
            self.cluster_protos[name] = proto
            manager.install(cluster)
            assignment = self.assignments.get(getattr(cluster, "service_name", ""))
            if assignment is not None and not cluster.initialized:
                cluster.apply_assignment(assignment)
        for name in gone:
            if self.cluster_protos.pop(name, None) is not None:
                manager.remove(name)

    def _apply_endpoints(self, resources: dict[str, message.Message]) -> None:
        from tulle.upstream.cluster import parse_assignment

        for name, assignment in resources.items():
            try:
                parse_assignment(assignment, "")
            except ConfigError as exc:
                raise _rejected("ClusterLoadAssignment", name, exc) from None
        for name, assignment in resources.items():
            self.assignments[name] = assignment
            for cluster in self.worker.cluster_manager.clusters.values():
                if cluster.type_name == "EDS" and cluster.service_name == name:
                    cluster.apply_assignment(assignment)

    async def _apply_listeners(self, resources: dict[str, message.Message], removed: set[str], sotw: bool) -> None:
        from tulle.listener.listener import Listener

        worker = self.worker
        built = []
        for name, proto in resources.items():
            if name in worker.static_listener_names:
                raise UpdateRejected(f"Listener '{name}': a static listener of the bootstrap cannot be replaced")
            current = self.listeners.get(name)
            if current is not None and current.proto == proto:
                continue
            try:
                listener = Listener(proto, "", worker.ctx)
            except ConfigError as exc:
                raise _rejected("Listener", name, exc) from None
            self._check_address_free(name, listener)
            for config in [getattr(listener.factory, "config", None)]:
                route_name = getattr(config, "route_config_name", "")
                if route_name and route_name in self.route_protos:
                    try:
                        table = config.build_route_table(self.route_protos[route_name], "")
                    except ConfigError as exc:
                        raise _rejected("RouteConfiguration", route_name, exc) from None
                    config.route_table = table
            built.append((name, proto, listener))
        gone = set(removed)
        if sotw:
            gone |= set(self.listeners) - set(resources)
        for name, proto, listener in built:
            current = self.listeners.get(name)
            if current is not None and current.started and (current.listener.ip, current.listener.port) == (
                    listener.ip, listener.port):
                # Same address: the socket stays, new connections get the new filter chain,
                # connections on the old one finish and are drained.
                old_factory = current.listener.factory
                current.listener.factory = listener.factory
                current.listener.stats = listener.stats
                current.proto = proto
                old_factory.drain()
                continue
            if current is not None:
                self._retire(current)
            dynamic = _DynamicListener(proto, listener)
            self.listeners[name] = dynamic
            await self._maybe_start(dynamic)
        for name in gone:
            current = self.listeners.pop(name, None)
            if current is not None:
                self._retire(current)

    async def _apply_routes(self, resources: dict[str, message.Message]) -> None:
        users: dict[str, list[Any]] = {}  # route config name -> the connection managers using it
        for config in self._hcm_configs():
            users.setdefault(config.route_config_name, []).append(config)
        swaps = []
        for name, proto in resources.items():
            for config in users.get(name, ()):
                try:
                    table = config.build_route_table(proto, "")
                    config.check_clusters(table, "", inline=False)
                    swaps.append((config, table))
                except ConfigError as exc:
                    raise _rejected("RouteConfiguration", name, exc) from None
        for name, proto in resources.items():
            self.route_protos[name] = proto
        for config, table in swaps:
            config.route_table = table  # new requests route on it; requests in flight keep their route
        for dynamic in list(self.listeners.values()):
            await self._maybe_start(dynamic)

    # --- listener lifecycle ---------------------------------------------------
    def _holds(self, listener: Any) -> bool:
        """Whether this process already listens on the listener's address (it then binds it too)."""
        address = (listener.ip, listener.port)
        return any((other.ip, other.port) == address for other in self.worker.listeners)

    def _check_address_free(self, name: str, listener: Any) -> None:
        """Envoy binds a listener when it is added and rejects the update if the address is in use.
        Checked here, in the main process, before anything is applied: the worker processes bind
        after it without a claim, and with SO_REUSEPORT they would join another process's port."""
        from tulle.listener.claim import address_text, claim, os_reason

        if self.worker.state.worker_index != 0 or listener.port == 0 or self._holds(listener):
            return
        try:
            claim(listener.ip, listener.port).close()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:  # other bind errors are reported when it binds
                raise UpdateRejected(f"Listener '{name}': cannot bind "
                                     f"'{address_text(listener.ip, listener.port)}': {os_reason(exc)}") from None

    async def _maybe_start(self, dynamic: _DynamicListener) -> None:
        """A listener whose HTTP routes come from RDS warms until they have arrived (as in Envoy)."""
        if dynamic.started:
            return
        config = getattr(dynamic.listener.factory, "config", None)
        route_name = getattr(config, "route_config_name", "")
        if route_name and route_name not in self.route_protos:
            return
        listener = dynamic.listener
        # The main process claims the address (another process listening there is refused, not
        # shared); worker processes bind after it, and so does a listener replacing one of ours.
        try:
            sock = listener.bind(exclusive=self.worker.state.worker_index == 0 and not self._holds(listener))
        except ConfigError as exc:
            log.error("listener %s: %s", dynamic.listener.name, exc)
            return
        await dynamic.listener.start(sock)
        dynamic.started = True
        self.worker.listeners.append(dynamic.listener)
        log.info("listener %s (xDS) on %s:%s", dynamic.listener.name, dynamic.listener.ip, dynamic.listener.port)

    def _retire(self, dynamic: _DynamicListener) -> None:
        listener = dynamic.listener
        listener.stop_accepting()
        listener.drain()
        for sock in listener.sockets:
            sock.close()
        if listener in self.worker.listeners:
            self.worker.listeners.remove(listener)
