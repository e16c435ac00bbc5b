"""Circuit breakers: Envoy's per-cluster, per-priority resource limits (resource_manager_impl.h).

Each cluster has one :class:`ResourceManager` per routing priority (DEFAULT, HIGH) counting
its open connections, pending requests, active requests and active retries against the
thresholds of ``circuit_breakers`` (Envoy's defaults 1024/1024/1024/3 when unset, so the
breakers are always on). The connection pool (:mod:`tulle.upstream.http_pool`) and tcp_proxy
apply them: past ``max_connections`` an HTTP request waits in the pool's pending queue; past
``max_pending_requests``, ``max_requests`` or ``max_retries`` it fails at once with the UO
flag, shedding load before it piles up upstream.

Envoy counts per cluster across all its worker threads. Tulle's workers are processes, so
with ``--concurrency`` above 1 the counts live in one shared-memory slab mapped before the
workers fork (:class:`SharedSlab`); each cluster name claims a slot in it, so a cluster that
every worker builds on its own (static or from xDS, before or after the fork) counts in one
place. A process-shared lock makes check-and-take atomic, so limits are exact across workers.
With one worker the counts are plain integers.

Counts belong to the cluster *name*: a cluster replaced over CDS keeps counting its
predecessor's in-flight connections and requests (Envoy starts a replaced cluster's counts at
zero while the old one drains).

The ``circuit_breakers.<priority>.*_open`` and ``remaining_*`` gauges are read from the counts
when stats are collected, so keeping them costs nothing per request.
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cython
from envoy.config.cluster.v3 import circuit_breaker_pb2

from tulle.config.errors import ConfigError, join
from tulle.config.support import check_fields
from tulle.stats.store import Gauge, Store

log = logging.getLogger("tulle.upstream")

# envoy.config.core.v3.RoutingPriority
DEFAULT_PRIORITY = 0
HIGH_PRIORITY = 1
PRIORITY_NAMES = ("default", "high")

# Envoy's defaults (CircuitBreakers.Thresholds, RetryBudget)
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_MAX_PENDING_REQUESTS = 1024
DEFAULT_MAX_REQUESTS = 1024
DEFAULT_MAX_RETRIES = 3
DEFAULT_BUDGET_PERCENT = 20.0
DEFAULT_MIN_RETRY_CONCURRENCY = 3
# max_connection_pools is not implemented (refused when set): Envoy's unset value, unlimited
UNLIMITED = 2**64 - 1

_THRESHOLD_FIELDS = (
    "priority", "max_connections", "max_pending_requests", "max_requests", "max_retries", "retry_budget",
    "track_remaining",
)
# Envoy honours only max_connections per host (circuit_breaker.proto, per_host_thresholds).
_PER_HOST_FIELDS = ("priority", "max_connections")

# The counts of one cluster name: one int64 cell per (priority, resource).
CONNECTIONS = 0
PENDING_REQUESTS = 1
REQUESTS = 2
RETRIES = 3
_RESOURCES = 4
CELLS_PER_NAME = _RESOURCES * len(PRIORITY_NAMES)


# --- configuration ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Thresholds:
    """One priority's limits. A retry budget (``budget_percent`` set) replaces ``max_retries``."""

    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_pending_requests: int = DEFAULT_MAX_PENDING_REQUESTS
    max_requests: int = DEFAULT_MAX_REQUESTS
    max_retries: int = DEFAULT_MAX_RETRIES
    budget_percent: float | None = None
    min_retry_concurrency: int | None = None
    track_remaining: bool = False
    max_connections_per_host: int | None = None


@dataclass(frozen=True, slots=True)
class CircuitBreakersConfig:
    thresholds: tuple[Thresholds, ...] = (Thresholds(), Thresholds())  # indexed by priority


DEFAULT_CIRCUIT_BREAKERS = CircuitBreakersConfig()


def _uint32(msg: Any, name: str, default: int) -> int:
    return getattr(msg, name).value if msg.HasField(name) else default


def _first_per_priority(
    entries: Sequence[circuit_breaker_pb2.CircuitBreakers.Thresholds], supported: tuple[str, ...], field: str
) -> list[circuit_breaker_pb2.CircuitBreakers.Thresholds | None]:
    """As Envoy: of several entries for one priority the first is used (all are validated)."""
    chosen: list[circuit_breaker_pb2.CircuitBreakers.Thresholds | None] = [None] * len(PRIORITY_NAMES)
    for index, entry in enumerate(entries):
        entry_field = join(field, f"[{index}]")
        check_fields(entry, supported, entry_field)
        if entry.priority >= len(PRIORITY_NAMES):
            raise ConfigError(f"unknown priority {entry.priority}", field=join(entry_field, "priority"))
        if chosen[entry.priority] is None:
            chosen[entry.priority] = entry
    return chosen


def _thresholds(
    entry: circuit_breaker_pb2.CircuitBreakers.Thresholds | None, per_host: int | None, field: str
) -> Thresholds:
    if entry is None:
        return Thresholds(max_connections_per_host=per_host)
    budget_percent = min_retry_concurrency = None
    if entry.HasField("retry_budget"):
        budget = entry.retry_budget
        budget_field = join(field, "retry_budget")
        check_fields(budget, ("budget_percent", "min_retry_concurrency"), budget_field)
        budget_percent = budget.budget_percent.value if budget.HasField("budget_percent") else DEFAULT_BUDGET_PERCENT
        if not 0.0 <= budget_percent <= 100.0:
            raise ConfigError("must be between 0 and 100", field=join(budget_field, "budget_percent.value"))
        min_retry_concurrency = _uint32(budget, "min_retry_concurrency", DEFAULT_MIN_RETRY_CONCURRENCY)
    return Thresholds(
        max_connections=_uint32(entry, "max_connections", DEFAULT_MAX_CONNECTIONS),
        max_pending_requests=_uint32(entry, "max_pending_requests", DEFAULT_MAX_PENDING_REQUESTS),
        max_requests=_uint32(entry, "max_requests", DEFAULT_MAX_REQUESTS),
        max_retries=_uint32(entry, "max_retries", DEFAULT_MAX_RETRIES),
        budget_percent=budget_percent,
        min_retry_concurrency=min_retry_concurrency,
        track_remaining=entry.track_remaining,
        max_connections_per_host=per_host,
    )


def parse_circuit_breakers(msg: circuit_breaker_pb2.CircuitBreakers, field: str) -> CircuitBreakersConfig:
    """Validate ``Cluster.circuit_breakers``; unimplemented fields are refused by name."""
    check_fields(msg, ("thresholds", "per_host_thresholds"), field)
    thresholds_field = join(field, "thresholds")
    per_host_field = join(field, "per_host_thresholds")
    chosen = _first_per_priority(msg.thresholds, _THRESHOLD_FIELDS, thresholds_field)
    # a per-host entry without max_connections sets no limit (Envoy's default there is unlimited)
    per_host = [
        entry.max_connections.value if entry is not None and entry.HasField("max_connections") else None
        for entry in _first_per_priority(msg.per_host_thresholds, _PER_HOST_FIELDS, per_host_field)
    ]
    return CircuitBreakersConfig(tuple(
        _thresholds(entry, per_host[priority], join(thresholds_field, f"[{priority}]"))
        for priority, entry in enumerate(chosen)
    ))


# --- where the counts live ----------------------------------------------------------------


class SharedSlab:
    """The counts of every cluster name, in one anonymous ``MAP_SHARED`` mapping.

    Made before the workers fork, it is the same memory in every worker; a cluster name
    claims a slot (found by a digest of the name) under a fork-shared lock, so a cluster
    built after the fork (CDS) finds the slot another worker claimed for the same name.
    Slots are never given back: names are few, and a slot is 16 + 64 bytes.
    """

    DIGEST_SIZE = 16

    def __init__(self, capacity: int = 8192) -> None:
        import multiprocessing  # only multi-worker servers pay for the import

        self.capacity = capacity
        self._digests_at = 8  # [0:8) is the number of claimed slots
        self._cells_at = self._digests_at + capacity * self.DIGEST_SIZE
        size = self._cells_at + capacity * CELLS_PER_NAME * 8
        self._memory = mmap.mmap(-1, size)  # fileno -1: anonymous, MAP_SHARED by default
        self._used = memoryview(self._memory)[:8].cast("q")
        self._cells = memoryview(self._memory)[self._cells_at:].cast("q")
        # the fork context's semaphore is unlinked at once and shared through the inherited mapping
        self._lock = multiprocessing.get_context("fork").Lock()
        # the semaphore's own C methods: the Lock wrapper's ``with`` costs twice as much
        self.acquire: Callable[[], bool] = self._lock.acquire
        self.release: Callable[[], None] = self._lock.release

    def claim(self, name: str) -> memoryview | None:
        """The cells of ``name`` (claimed on first use by any worker); None when the slab is full."""
        digest = hashlib.blake2b(name.encode(), digest_size=self.DIGEST_SIZE).digest()
        memory = self._memory
        self.acquire()
        try:
            used = self._used[0]
            start, end = self._digests_at, self._digests_at + used * self.DIGEST_SIZE
            index = -1
            at = memory.find(digest, start, end)
            while at >= 0:
                if (at - start) % self.DIGEST_SIZE == 0:
                    index = (at - start) // self.DIGEST_SIZE
                    break
                at = memory.find(digest, at + 1, end)
            if index < 0:
                if used >= self.capacity:
                    return None
                index = used
                memory[end:end + self.DIGEST_SIZE] = digest
                self._used[0] = used + 1
        finally:
            self.release()
        return self._cells[index * CELLS_PER_NAME:(index + 1) * CELLS_PER_NAME]


_shared_slab: SharedSlab | None = None
# single-worker counts, per stats Store (one per worker) so that separate workers built in one
# process (tests) do not share counts
_local_cells: weakref.WeakKeyDictionary[Store, dict[str, list[int]]] = weakref.WeakKeyDictionary()
_full_warned = False


def share_between_workers(workers: int) -> None:
    """Called before the workers fork: with more than one, counts go to a :class:`SharedSlab`."""
    global _shared_slab
    if workers > 1 and _shared_slab is None:
        _shared_slab = SharedSlab()


def use_slab(slab: SharedSlab | None) -> SharedSlab | None:
    """Install ``slab`` for the clusters built from now on (tests); returns the previous one."""
    global _shared_slab
    previous, _shared_slab = _shared_slab, slab
    return previous


def _cells_for(store: Store, name: str) -> tuple[Any, SharedSlab | None]:
    global _full_warned
    slab = _shared_slab
    if slab is not None:
        cells = slab.claim(name)
        if cells is not None:
            return cells, slab
        if not _full_warned:
            _full_warned = True
            log.warning("circuit breakers: shared slots exhausted; cluster %s counts per worker", name)
    per_store = _local_cells.get(store)
    if per_store is None:
        per_store = _local_cells[store] = {}
    cells = per_store.get(name)
    if cells is None:
        cells = per_store[name] = [0] * CELLS_PER_NAME
    return cells, None


# --- resources ---------------------------------------------------------------------------


class Resource:
    """One counted resource (Envoy's ResourceLimit): ``can_create``/``inc``/``dec``, plus
    :meth:`try_acquire`, the check and the increment as one step."""

    if not cython.compiled:  # compiled, the fields come from resource_manager.pxd
        __slots__ = ("limit", "_cells", "_index")

    def __init__(self, limit: int, cells: Any, index: int) -> None:
        self.limit = limit
        self._cells = cells
        self._index = index

    def max(self) -> int:
        return self.limit

    @property
    def count(self) -> int:
        """How many are held now (across workers when shared)."""
        return self._cells[self._index]

    def can_create(self) -> bool:
        return self._cells[self._index] < self.limit

    def try_acquire(self) -> bool:
        cells = self._cells
        index = self._index
        current = cells[index]
        if current < self.limit:
            cells[index] = current + 1
            return True
        return False

    def inc(self) -> None:
        self._cells[self._index] += 1

    def dec(self) -> None:
        self._cells[self._index] -= 1


class SharedResource(Resource):
    """A resource whose count is in the :class:`SharedSlab`: every change holds the slab's lock."""

    if not cython.compiled:  # compiled, the fields come from resource_manager.pxd
        __slots__ = ("_acquire", "_release")

    def __init__(self, limit: int, cells: Any, index: int, slab: SharedSlab) -> None:
        super().__init__(limit, cells, index)
        self._acquire = slab.acquire
        self._release = slab.release

    def try_acquire(self) -> bool:
        self._acquire()
        try:
            cells = self._cells
            index = self._index
            current = cells[index]
            if current < self.limit:
                cells[index] = current + 1
                return True
            return False
        finally:
            self._release()

    def inc(self) -> None:
        self._acquire()
        try:
            self._cells[self._index] += 1
        finally:
            self._release()

    def dec(self) -> None:
        self._acquire()
        try:
            self._cells[self._index] -= 1
        finally:
            self._release()


class RetryResource:
    """Envoy's RetryBudgetImpl: with a retry budget the limit is ``budget_percent`` of the active
    plus pending requests, but never below ``min_retry_concurrency``; without one, ``max_retries``."""

    if not cython.compiled:  # compiled, the fields come from resource_manager.pxd
        __slots__ = ("retries", "budget_percent", "min_retry_concurrency", "_requests", "_pending")

    def __init__(self, retries: Resource, thresholds: Thresholds, requests: Resource, pending: Resource) -> None:
        self.retries = retries
        self.budget_percent = thresholds.budget_percent
        self.min_retry_concurrency = thresholds.min_retry_concurrency or 0
        self._requests = requests
        self._pending = pending

    @property
    def uses_budget(self) -> bool:
        return self.budget_percent is not None

    def max(self) -> int:
        if self.budget_percent is None:
            return self.retries.limit
        return self.budget_max(self._requests.count + self._pending.count)

    def budget_max(self, active_requests: int) -> int:
        return max(int(self.budget_percent / 100.0 * active_requests), self.min_retry_concurrency)  # type: ignore[operator]

    @property
    def count(self) -> int:
        return self.retries.count

    def can_create(self) -> bool:
        if self.budget_percent is None:
            return self.retries.can_create()
        return self.retries.count < self.max()

    def inc(self) -> None:
        self.retries.inc()

    def dec(self) -> None:
        self.retries.dec()


class ResourceManager:
    """One cluster's resources at one priority (Envoy's ResourceManagerImpl)."""

    if not cython.compiled:  # compiled, the fields come from resource_manager.pxd
        __slots__ = (
            "priority", "thresholds", "connections", "pending_requests", "requests", "retries",
            "max_connections_per_host", "shared",
        )

    def __init__(self, priority: int, thresholds: Thresholds, cells: Any, slab: SharedSlab | None) -> None:
        base = priority * _RESOURCES

        def resource(offset: int, limit: int) -> Resource:
            if slab is None:
                return Resource(limit, cells, base + offset)
            return SharedResource(limit, cells, base + offset, slab)

        self.priority = priority
        self.thresholds = thresholds
        self.shared = slab is not None
        self.connections = resource(CONNECTIONS, thresholds.max_connections)
        self.pending_requests = resource(PENDING_REQUESTS, thresholds.max_pending_requests)
        self.requests = resource(REQUESTS, thresholds.max_requests)
        self.retries = RetryResource(resource(RETRIES, thresholds.max_retries), thresholds, self.requests,
                                     self.pending_requests)
        self.max_connections_per_host = thresholds.max_connections_per_host

    def retry_budget_allows(self, active_requests: int | None = None, active_retries: int | None = None) -> bool:
        """Whether one more retry fits the retry budget (always True without a budget; the
        ``max_retries`` limit is ``retries.can_create()``). Counts default to the cluster's own
        (active + pending requests, active retries), as Envoy computes them."""
        retries = self.retries
        if retries.budget_percent is None:
            return True
        if active_requests is None:
            active_requests = self.requests.count + self.pending_requests.count
        if active_retries is None:
            active_retries = retries.count
        return active_retries < retries.budget_max(active_requests)

    def host_allows_connection(self, host: Any, connecting: int = 0) -> bool:
        """Envoy's per-host ``max_connections`` against the host's open and opening connections
        (this worker's: see docs/resilience/circuit-breakers.md)."""
        limit = self.max_connections_per_host
        return limit is None or host.stats.cx_active + connecting < limit

    def thresholds_status(self) -> dict[str, int]:
        """What /clusters prints: the limits in force now (a retry budget's is live)."""
        return {
            "max_connections": self.connections.limit,
            "max_pending_requests": self.pending_requests.limit,
            "max_requests": self.requests.limit,
            "max_retries": self.retries.max(),
        }


# --- circuit_breakers.<priority>.* gauges ---------------------------------------------------


class _LiveGauge(Gauge):
    """A gauge whose value is computed when read (stats snapshots); writes are ignored."""

    __slots__ = ("_read",)

    def __init__(self, name: str, read: Callable[[], int], per_worker: bool) -> None:
        self._read = read
        super().__init__(name, per_worker)

    @property  # type: ignore[override]
    def value(self) -> int:
        return self._read()

    @value.setter
    def value(self, _: int) -> None:
        pass


def _open(resource: Resource) -> Callable[[], int]:
    return lambda: int(resource.count >= resource.limit)


def _remaining(resource: Resource | RetryResource) -> Callable[[], int]:
    return lambda: max(resource.max() - resource.count, 0)


def _bind_gauges(store: Store, prefix: str, manager: ResourceManager) -> None:
    """Envoy's circuit breaker stats; ``remaining_*`` only with ``track_remaining``."""
    retries = manager.retries
    # rq_retry_open follows max_retries even under a budget, as Envoy's nested max_retries resource does
    readers: dict[str, Callable[[], int]] = {
        "cx_open": _open(manager.connections),
        "cx_pool_open": lambda: 0,
        "rq_pending_open": _open(manager.pending_requests),
        "rq_open": _open(manager.requests),
        "rq_retry_open": _open(retries.retries),
    }
    if manager.thresholds.track_remaining:
        readers.update({
            "remaining_cx": _remaining(manager.connections),
            "remaining_cx_pools": lambda: UNLIMITED,
            "remaining_pending": _remaining(manager.pending_requests),
            # with a budget Envoy reports 0: the remainder depends on other resources' counts
            "remaining_retries": (lambda: 0) if retries.uses_budget else _remaining(retries),
            "remaining_rq": _remaining(manager.requests),
        })
    for name, read in readers.items():
        full = prefix + name
        # the store holds the stats /stats reads; a cluster replaced over CDS rebinds them
        store.gauges[full] = _LiveGauge(full, read, per_worker=not manager.shared)


def build_resource_managers(
    config: CircuitBreakersConfig, cluster_name: str, stat_name: str, store: Store
) -> tuple[ResourceManager, ...]:
    """The cluster's managers by priority, counting in the slot of ``cluster_name``."""
    cells, slab = _cells_for(store, cluster_name)
    managers = tuple(
        ResourceManager(priority, thresholds, cells, slab) for priority, thresholds in enumerate(config.thresholds)
    )
    for priority, manager in enumerate(managers):
        _bind_gauges(store, f"cluster.{stat_name}.circuit_breakers.{PRIORITY_NAMES[priority]}.", manager)
    return managers
