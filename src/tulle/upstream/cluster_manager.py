"""The worker's clusters by name: built and validated from the bootstrap, warmed, refreshed, closed.

As with Envoy's cluster warming, :meth:`ClusterManager.start` waits (bounded)
for the first DNS answer of every DNS cluster before listeners open, so the
first requests do not fail with "no healthy upstream" just because DNS was slow.
A static EDS cluster warms in the background: its endpoints arrive over ADS.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable

from envoy.config.cluster.v3 import cluster_pb2

from tulle.config.errors import ConfigError, join
from tulle.stats.store import Store
from tulle.upstream.cluster import Cluster, build_cluster

log = logging.getLogger("tulle.upstream")

# Each lookup is bounded by dns.DEFAULT_LOOKUP_TIMEOUT; this bounds the whole warm-up.
DEFAULT_WARM_TIMEOUT = 10.0


class ClusterManager:
    """The worker's clusters by name (a cdef class when compiled: the router calls get per request)."""

    def __init__(self, clusters: dict[str, Cluster], stats: Store) -> None:
        self.clusters = clusters
        self._stats = stats
        self._warming: list[asyncio.Task[None]] = []
        self._warming_gauge = stats.gauge("cluster_manager.warming_clusters", per_worker=False)
        stats.gauge("cluster_manager.active_clusters", per_worker=False).set(len(clusters))
        stats.counter("cluster_manager.cluster_added").value += len(clusters)

    @classmethod
    def from_protos(
        cls,
        protos: Iterable[cluster_pb2.Cluster],
        *,
        field: str = "static_resources.clusters",
        stats: Store,
        seed: int | str | None = None,
    ) -> ClusterManager:
        """Validate and build every cluster; raises ConfigError / UnsupportedFeature with the field path.

        ``seed`` makes load-balancer randomness reproducible (tests); by default every
        worker draws fresh randomness in :meth:`start`.
        """
        clusters: dict[str, Cluster] = {}
        for index, proto in enumerate(protos):
            cluster_field = join(field, f"[{index}]")
            rng = random.Random(f"{seed}:{proto.name}") if seed is not None else None
            cluster = build_cluster(proto, cluster_field, stats, rng)
            if cluster.name in clusters:
                raise ConfigError(f"duplicate cluster name {cluster.name!r}", field=join(cluster_field, "name"))
            clusters[cluster.name] = cluster
        return cls(clusters, stats)

    def get(self, name: str) -> Cluster | None:
        return self.clusters.get(name)

    # --- dynamic clusters (CDS) --------------------------------------------------
    def build(self, proto: cluster_pb2.Cluster, field: str) -> Cluster:
        """Validate and build one cluster without installing it (an xDS update is all-or-nothing)."""
        return build_cluster(proto, field, self._stats)

    def install(self, cluster: Cluster) -> None:
        """Add or replace a cluster. Requests in flight keep the cluster object they picked; the
        replaced cluster's hosts that are not carried over wind their pools down."""
        previous = self.clusters.get(cluster.name)
        if previous is not None:
            adopt = getattr(cluster, "adopt", None)
            if adopt is not None:
                adopt(previous)
            kept = {id(host) for host in cluster.hosts}
            previous._retire([host for host in previous.hosts if id(host) not in kept])
            previous.stop_refreshing()
            self._stats.counter("cluster_manager.cluster_modified").value += 1
        else:
            self._stats.counter("cluster_manager.cluster_added").value += 1
        self.clusters[cluster.name] = cluster
        self._stats.gauge("cluster_manager.active_clusters", per_worker=False).set(len(self.clusters))
        cluster.reseed()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # not serving yet: start() warms it
        task = loop.create_task(self._warm(cluster))
        self._warming.append(task)
        task.add_done_callback(self._warming.remove)

    def remove(self, name: str) -> bool:
        cluster = self.clusters.pop(name, None)
        if cluster is None:
            return False
        cluster._retire(cluster.hosts)
        cluster.stop_refreshing()
        self._stats.counter("cluster_manager.cluster_removed").value += 1
        self._stats.gauge("cluster_manager.active_clusters", per_worker=False).set(len(self.clusters))
        return True

    async def start(self, *, warm_timeout: float = DEFAULT_WARM_TIMEOUT) -> None:
        """Resolve DNS clusters once (bounded by ``warm_timeout``), then refresh them periodically.

        Must run on the worker's loop. A cluster still resolving when the bound
        expires keeps warming in the background and starts refreshing afterwards.
        """
        loop = asyncio.get_running_loop()
        waited: list[asyncio.Task[None]] = []
        for cluster in self.clusters.values():
            cluster.reseed()
            task = loop.create_task(self._warm(cluster))
            self._warming.append(task)
            # An EDS cluster's first assignment comes over the ADS stream, which opens once the
            # worker has started: waiting for it here would only delay start-up by warm_timeout.
            if cluster.wait_for_warm_on_init and cluster.type_name != "EDS":
                waited.append(task)
        if waited:
            await asyncio.wait(waited, timeout=warm_timeout)

    async def _warm(self, cluster: Cluster) -> None:
        self._warming_gauge.inc()
        try:
            await cluster.initialize()
        except Exception:  # a bug in one cluster's warm-up must not take the worker down
            log.exception("cluster %s: initial resolution failed", cluster.name)
        finally:
            self._warming_gauge.dec()
        cluster.start_refreshing()

    async def close(self) -> None:
        """Stop warm-up and refresh tasks and close every host's connection pool."""
        warming, self._warming = self._warming, []
        for task in warming:
            task.cancel()
        for task in warming:
            try:
                await task
            except asyncio.CancelledError:
                pass
        for cluster in self.clusters.values():
            await cluster.close()
