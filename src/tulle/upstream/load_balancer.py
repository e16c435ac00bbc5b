"""Envoy's load balancers: priority levels and panic, localities, then one host-picking policy per class.

Shared by every policy (as in Envoy's LoadBalancerBase):

* Each priority's availability is ``min(100, overprovisioning_factor * healthy / total)``
  (and the same for degraded hosts); load goes to the highest priorities until
  100% is placed, so P1 only takes traffic once P0 is less than ~71% healthy.
  When the priorities together are less than 100% available, their shares are
  scaled up to add to 100 (the normalised total).
* A priority whose healthy+degraded share is below ``healthy_panic_threshold``
  (default 50%) is in panic, unless the normalised total is 100%: it balances over
  all of its hosts and every pick bumps ``lb_healthy_panic``. When all priorities
  panic, load follows host counts.
* With ``common_lb_config.locality_weighted_lb_config`` a priority's traffic is split
  between its localities by EDF on ``load_balancing_weight x min(1, factor x
  available / total)`` of each locality, then a host is picked inside the locality
  by the cluster's policy. RING_HASH and MAGLEV instead fold the locality weight
  into each host's weight on the ring/table (as Envoy's thread-aware balancers do).

Everything that depends only on membership and health (the percent -> host-source
table, locality and host schedules, rings, Maglev tables) is rebuilt by
:meth:`LoadBalancer.update` when either changes, never per request. Requests run
``choose_host`` which is a table lookup and one small closure call (two with localities).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import cython
import xxhash
from envoy.config.cluster.v3 import cluster_pb2
from google.protobuf import message

from tulle.config.errors import ConfigError, UnsupportedFeature, join
from tulle.config.support import check_fields
from tulle.upstream.cluster_stats import ClusterStats
from tulle.upstream.host import Host, Locality

ROUND_ROBIN = "ROUND_ROBIN"
LEAST_REQUEST = "LEAST_REQUEST"
RANDOM = "RANDOM"
RING_HASH = "RING_HASH"
MAGLEV = "MAGLEV"

DEFAULT_PANIC_THRESHOLD = 50
DEFAULT_OVERPROVISIONING_FACTOR = 140
DEFAULT_CHOICE_COUNT = 2
DEFAULT_MIN_RING_SIZE = 1024
DEFAULT_MAX_RING_SIZE = 8 * 1024 * 1024
RING_SIZE_LIMIT = 8 * 1024 * 1024  # Envoy's validation bound for both ring sizes
DEFAULT_MAGLEV_TABLE_SIZE = 65537
MAGLEV_TABLE_SIZE_LIMIT = 5000011  # Envoy's validation bound
# Above this total weight a weighted round-robin schedule is not precomputed (memory).
PRECOMPUTED_SCHEDULE_LIMIT = 1 << 16
# Locality schedules are per priority and health kind; longer cycles use a live EDF heap.
LOCALITY_SCHEDULE_LIMIT = 1 << 12

_MASK64 = (1 << 64) - 1


class LoadBalancerContext:
    """Per-request input to host selection; ``hash_key`` drives RING_HASH and MAGLEV.

    A plain class rather than a dataclass: the router makes one per request on hash-policy
    routes, and a compiled cdef class is built without a Python-level ``__init__`` call."""

    if not cython.compiled:
        __slots__ = ("hash_key",)

    def __init__(self, hash_key: int | None = None) -> None:
        self.hash_key = hash_key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LoadBalancerContext):
            return NotImplemented
        return self.hash_key == other.hash_key

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaces

    def __repr__(self) -> str:
        return f"LoadBalancerContext(hash_key={self.hash_key!r})"


# --- hashing ------------------------------------------------------------------


def xxhash64(data: bytes | str, seed: int = 0) -> int:
    """Envoy's HashUtil::xxHash64: stable across processes and machines (unlike ``hash()``)."""
    return xxhash.xxh64_intdigest(data.encode() if isinstance(data, str) else data, seed)


# --- configuration ------------------------------------------------------------

_SUPPORTED_POLICIES = (ROUND_ROBIN, LEAST_REQUEST, RANDOM, RING_HASH, MAGLEV)


@dataclass(frozen=True, slots=True)
class LbSettings:
    policy: str = ROUND_ROBIN
    healthy_panic_threshold: int = DEFAULT_PANIC_THRESHOLD
    use_hostname_for_hashing: bool = False
    choice_count: int = DEFAULT_CHOICE_COUNT
    active_request_bias: float = 1.0
    active_request_bias_set: bool = False
    minimum_ring_size: int = DEFAULT_MIN_RING_SIZE
    maximum_ring_size: int = DEFAULT_MAX_RING_SIZE
    maglev_table_size: int = DEFAULT_MAGLEV_TABLE_SIZE
    locality_weighted: bool = False


def _is_prime(value: int) -> bool:
    if value < 2:
        return False
    if value % 2 == 0:
        return value == 2
    return all(value % divisor for divisor in range(3, math.isqrt(value) + 1, 2))


def _wrapped(msg: message.Message, name: str, default: int | float) -> int | float:
    return getattr(msg, name).value if msg.HasField(name) else default


def lb_settings_from_cluster(cluster: cluster_pb2.Cluster, field: str) -> LbSettings:
    """Validate ``lb_policy`` and its config messages; refuse what is not implemented.

    A config message for a different policy than ``lb_policy`` is ignored, as Envoy does.
    """
    policy = cluster_pb2.Cluster.LbPolicy.Name(cluster.lb_policy)
    if policy not in _SUPPORTED_POLICIES:
        raise UnsupportedFeature(f"lb_policy {policy}", field=join(field, "lb_policy"))
    values: dict[str, object] = {"policy": policy}

    if cluster.HasField("common_lb_config"):
        common = cluster.common_lb_config
        common_field = join(field, "common_lb_config")
        # update_merge_window only batches health-check/EDS updates; Tulle applies each at once.
        # zone_aware_lb_config needs cluster_manager.local_cluster_name, which Tulle does not
        # have, so it is refused by name here like any other field not listed.
        check_fields(
            common,
            ("healthy_panic_threshold", "consistent_hashing_lb_config", "locality_weighted_lb_config"),
            common_field, ignored=("update_merge_window",),
        )
        if common.HasField("healthy_panic_threshold"):
            percent = common.healthy_panic_threshold.value
            if not 0 <= percent <= 100:
                raise ConfigError(
                    "must be between 0 and 100", field=join(common_field, "healthy_panic_threshold.value")
                )
            values["healthy_panic_threshold"] = int(percent + 0.5)  # Envoy rounds the percent
        if common.HasField("consistent_hashing_lb_config"):
            consistent = common.consistent_hashing_lb_config
            check_fields(
                consistent, ("use_hostname_for_hashing",), join(common_field, "consistent_hashing_lb_config")
            )
            values["use_hostname_for_hashing"] = consistent.use_hostname_for_hashing
        if common.HasField("locality_weighted_lb_config"):
            check_fields(common.locality_weighted_lb_config, (), join(common_field, "locality_weighted_lb_config"))
            values["locality_weighted"] = True

    if policy == ROUND_ROBIN and cluster.HasField("round_robin_lb_config"):
        check_fields(cluster.round_robin_lb_config, (), join(field, "round_robin_lb_config"))
    elif policy == LEAST_REQUEST and cluster.HasField("least_request_lb_config"):
        config = cluster.least_request_lb_config
        config_field = join(field, "least_request_lb_config")
        check_fields(config, ("choice_count", "active_request_bias"), config_field)
        choice_count = int(_wrapped(config, "choice_count", DEFAULT_CHOICE_COUNT))
        if choice_count < 2:
            raise ConfigError("must be at least 2", field=join(config_field, "choice_count"))
        values["choice_count"] = choice_count
        if config.HasField("active_request_bias"):
            # No runtime layer: the runtime key is never overridden, so default_value applies,
            # exactly as in an Envoy whose runtime does not set that key.
            bias = config.active_request_bias.default_value
            if not math.isfinite(bias) or bias < 0:
                raise ConfigError(
                    "must be a finite number >= 0",
                    field=join(config_field, "active_request_bias.default_value"),
                )
            values["active_request_bias"] = bias
            values["active_request_bias_set"] = True
    elif policy == RING_HASH and cluster.HasField("ring_hash_lb_config"):
        config = cluster.ring_hash_lb_config
        config_field = join(field, "ring_hash_lb_config")
        # hash_function MURMUR_HASH_2 is a non-default enum value, so it shows up as set.
        check_fields(config, ("minimum_ring_size", "maximum_ring_size"), config_field)
        minimum = int(_wrapped(config, "minimum_ring_size", DEFAULT_MIN_RING_SIZE))
        maximum = int(_wrapped(config, "maximum_ring_size", DEFAULT_MAX_RING_SIZE))
        for name, size in (("minimum_ring_size", minimum), ("maximum_ring_size", maximum)):
            if not 1 <= size <= RING_SIZE_LIMIT:
                raise ConfigError(f"must be between 1 and {RING_SIZE_LIMIT}", field=join(config_field, name))
        if minimum > maximum:
            raise ConfigError(
                f"minimum_ring_size ({minimum}) is larger than maximum_ring_size ({maximum})",
                field=config_field,
            )
        values["minimum_ring_size"] = minimum
        values["maximum_ring_size"] = maximum
    elif policy == MAGLEV and cluster.HasField("maglev_lb_config"):
        config = cluster.maglev_lb_config
        config_field = join(field, "maglev_lb_config")
        check_fields(config, ("table_size",), config_field)
        table_size = int(_wrapped(config, "table_size", DEFAULT_MAGLEV_TABLE_SIZE))
        if table_size >= MAGLEV_TABLE_SIZE_LIMIT or not _is_prime(table_size):
            raise ConfigError(
                f"the table size of maglev must be a prime number below {MAGLEV_TABLE_SIZE_LIMIT}",
                field=join(config_field, "table_size"),
            )
        values["maglev_table_size"] = table_size
    return LbSettings(**values)  # type: ignore[arg-type]


# --- priority levels ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PriorityLoads:
    """Percent of traffic per priority to healthy and to degraded hosts, and panic flags."""

    healthy: tuple[int, ...]
    degraded: tuple[int, ...]
    panic: tuple[bool, ...]


def _distribute(availability: Sequence[int], total_load: int, normalized_total: int) -> tuple[list[int], int]:
    loads = []
    for value in availability:
        load = min(total_load, value * 100 // normalized_total)
        loads.append(load)
        total_load -= load
    return loads, total_load


def compute_priority_loads(
    counts: Sequence[tuple[int, int, int]],
    overprovisioning_factor: int = DEFAULT_OVERPROVISIONING_FACTOR,
    panic_threshold: int = DEFAULT_PANIC_THRESHOLD,
) -> PriorityLoads:
    """Envoy's priority load for ``counts`` = [(total, healthy, degraded) per priority]."""
    levels = len(counts) or 1
    health = [0] * levels
    degraded = [0] * levels
    for priority, (total, healthy_count, degraded_count) in enumerate(counts):
        if total > 0:
            health[priority] = min(100, overprovisioning_factor * healthy_count // total)
            degraded[priority] = min(100, overprovisioning_factor * degraded_count // total)
    normalized_total = min(100, sum(health) + sum(degraded))

    healthy_load = [0] * levels
    degraded_load = [0] * levels
    if normalized_total > 0:
        healthy_load, remaining = _distribute(health, 100, normalized_total)
        degraded_load, remaining = _distribute(degraded, remaining, normalized_total)
        if remaining:  # rounding leftovers go to the first available priority
            first_healthy = next((i for i, value in enumerate(health) if value > 0), None)
            if first_healthy is not None:
                healthy_load[first_healthy] += remaining
            else:
                first_degraded = next(i for i, value in enumerate(degraded) if value > 0)
                degraded_load[first_degraded] += remaining

    if panic_threshold == 0 and normalized_total == 0:
        # Panic disabled and nothing available: P0 "gets" the load and finds no healthy host.
        healthy_load = [100] + [0] * (levels - 1)
        return PriorityLoads(tuple(healthy_load), tuple(degraded_load), (False,) * levels)

    panic = []
    for total, healthy_count, degraded_count in counts or [(0, 0, 0)]:
        available_percent = 100.0 * (healthy_count + degraded_count) / total if total else 0.0
        # Never panic while the priorities together can take all the load.
        panic.append(normalized_total != 100 and available_percent < panic_threshold)

    if all(panic):
        # Total panic: split load by host counts regardless of health.
        all_hosts = sum(total for total, _, _ in counts)
        healthy_load = [0] * levels
        degraded_load = [0] * levels
        if all_hosts == 0:
            healthy_load[0] = 100
        else:
            remaining = 100
            for priority, (total, _, _) in enumerate(counts):
                healthy_load[priority] = 100 * total // all_hosts
                remaining -= healthy_load[priority]
            first_non_empty = next(i for i, (total, _, _) in enumerate(counts) if total)
            healthy_load[first_non_empty] += remaining
    return PriorityLoads(tuple(healthy_load), tuple(degraded_load), tuple(panic))


# --- localities ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalityGroup:
    """The hosts of one locality within one priority, and that locality's weight (0: none given)."""

    locality: Locality
    weight: int
    hosts: tuple[Host, ...]


def group_by_locality(hosts: Sequence[Host]) -> list[LocalityGroup]:
    """A priority's hosts per locality, ordered by (region, zone, sub_zone) as Envoy orders them.

    Every host carries its LocalityLbEndpoints' weight; when the same locality is listed twice
    in one priority, the later weight wins (as Envoy's per-priority locality map does).
    """
    members: dict[Locality, list[Host]] = {}
    weights: dict[Locality, int] = {}
    for host in hosts:
        members.setdefault(host.locality, []).append(host)
        if host.locality_weight:
            weights[host.locality] = host.locality_weight
    return [
        LocalityGroup(locality, weights.get(locality, 0), tuple(members[locality])) for locality in sorted(members)
    ]


def effective_locality_weight(weight: int, available: int, total: int, overprovisioning_factor: int) -> Fraction:
    """Envoy's ``weight x min(1, factor/100 x available/total)``, exact so that schedules are too."""
    if weight == 0 or total == 0:
        return Fraction(0)
    return weight * min(Fraction(1), Fraction(overprovisioning_factor * available, 100 * total))


def locality_host_weights(
    groups: Sequence[LocalityGroup], eligible: Callable[[Host], bool]
) -> list[tuple[Host, float]]:
    """Hash balancers: each eligible host's share, ``locality_weight/sum x host_weight/sum in locality``.

    As Envoy's thread-aware balancers, raw locality weights (not health-adjusted) are used and
    all-zero locality weights leave no host at all.
    """
    total = sum(group.weight for group in groups)
    weighted: list[tuple[Host, float]] = []
    if total == 0:
        return weighted
    for group in groups:
        hosts = [host for host in group.hosts if eligible(host)]
        if group.weight == 0 or not hosts:
            continue
        host_total = sum(host.weight for host in hosts)
        weighted.extend((host, group.weight / total * host.weight / host_total) for host in hosts)
    return weighted


def _is_healthy(host: Host) -> bool:
    return host.healthy


def _is_degraded(host: Host) -> bool:
    return host.degraded


def _any_host(host: Host) -> bool:
    return True


HEALTHY = "healthy"
DEGRADED = "degraded"
_ELIGIBLE: dict[str, Callable[[Host], bool]] = {HEALTHY: _is_healthy, DEGRADED: _is_degraded}


# --- load balancers -----------------------------------------------------------

HostPicker = Callable[..., Host]


class _HostSource:
    """One host list a request can be sent to: a priority's healthy, degraded or (panic) all hosts."""

    if not cython.compiled:
        __slots__ = ("pick", "panic", "hosts")

    def __init__(self, pick: HostPicker, panic: bool, hosts: list[Host]) -> None:
        self.pick = pick
        self.panic = panic
        self.hosts = hosts


class LoadBalancer:
    """Priority, panic and locality handling; subclasses say how to pick within one host list."""

    policy = ""
    uses_hash = False

    def __init__(self, settings: LbSettings, stats: ClusterStats, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.stats = stats
        self.rng = rng or random.Random()
        self.loads = PriorityLoads((100,), (0,), (False,))
        # hash % 100 -> source (or None: no host to pick); `_direct` short-cuts the common
        # case where one source takes all the traffic.
        self._table: list[_HostSource | None] = [None] * 100
        self._direct: _HostSource | None = None
        self._panic_counter = stats.lb_healthy_panic

    def update(
        self, host_sets: Sequence[Sequence[Host]], overprovisioning_factor: int = DEFAULT_OVERPROVISIONING_FACTOR
    ) -> None:
        """Rebuild all selection state for new membership or health; ``host_sets[p]``: priority p's hosts."""
        counts = [
            (len(hosts), sum(1 for h in hosts if h.healthy), sum(1 for h in hosts if h.degraded))
            for hosts in host_sets
        ]
        loads = compute_priority_loads(counts, overprovisioning_factor, self.settings.healthy_panic_threshold)
        self.loads = loads
        sources: dict[tuple[int, str], _HostSource | None] = {}

        def source_for(priority: int, kind: str) -> _HostSource | None:
            key = (priority, kind)
            if key not in sources:
                hosts = list(host_sets[priority]) if priority < len(host_sets) else []
                sources[key] = self._build_source(hosts, kind, loads.panic[priority], overprovisioning_factor)
            return sources[key]

        table: list[_HostSource | None] = []
        for slot in range(1, 101):  # Envoy compares hash % 100 + 1 with cumulative load
            table.append(self._source_for_slot(slot, loads, source_for))
        self._table = table
        first = table[0]
        self._direct = first if first is not None and all(entry is first for entry in table) else None

    def _build_source(
        self, hosts: list[Host], kind: str, panic: bool, overprovisioning_factor: int
    ) -> _HostSource | None:
        """The hosts one priority offers to ``kind`` (healthy/degraded) traffic and how to pick among them.

        As Envoy's hostSourceToUse: panic first (all hosts, no localities), then a locality
        pick when locality weighted and some locality has an effective weight, else the
        priority's healthy (or degraded) hosts.
        """
        eligible = _any_host if panic else _ELIGIBLE[kind]
        chosen = [host for host in hosts if eligible(host)]
        if not chosen:
            return None
        if self.settings.locality_weighted and not panic:
            picker = self._locality_picker(group_by_locality(hosts), eligible, overprovisioning_factor)
            if picker is not None:
                return _HostSource(picker, False, chosen)
        return _HostSource(self._build_picker(chosen), panic, chosen)

    def _locality_picker(
        self, groups: list[LocalityGroup], eligible: Callable[[Host], bool], overprovisioning_factor: int
    ) -> HostPicker | None:
        """EDF over localities by effective weight, then the policy's picker inside the locality.

        None when no locality has a positive effective weight (Envoy then uses the whole priority).
        """
        pickers: list[HostPicker] = []
        weights: list[Fraction] = []
        for group in groups:
            hosts = [host for host in group.hosts if eligible(host)]
            weight = effective_locality_weight(
                group.weight, len(hosts), len(group.hosts), overprovisioning_factor
            )
            if weight > 0:
                pickers.append(self._build_picker(hosts))
                weights.append(weight)
        if not pickers:
            return None
        if len(pickers) == 1:
            return pickers[0]
        next_picker = self._weighted_rotation(pickers, weights)
        return lambda: next_picker()()

    def _weighted_rotation(self, items: list[Any], weights: list[Fraction]) -> Callable[[], Any]:
        """EDF over ``items``: a precomputed cycle (random start) when short enough, else a live heap."""
        scaled = integer_weights(weights)
        if sum(scaled) <= LOCALITY_SCHEDULE_LIMIT:
            order = edf_order(scaled)
            start = self.rng.randrange(len(order))
            return itertools.cycle([items[index] for index in order[start:] + order[:start]]).__next__
        float_weights = [float(weight) for weight in weights]
        scheduler = _EdfScheduler(range(len(items)), float_weights.__getitem__)
        return lambda: items[scheduler.pick()]

    @staticmethod
    def _source_for_slot(
        slot: int, loads: PriorityLoads, source_for: Callable[[int, str], _HostSource | None]
    ) -> _HostSource | None:
        cumulative = 0
        for priority, load in enumerate(loads.healthy):
            cumulative += load
            if slot <= cumulative:
                return source_for(priority, HEALTHY)
        for priority, load in enumerate(loads.degraded):
            cumulative += load
            if slot <= cumulative:
                return source_for(priority, DEGRADED)
        return source_for(0, HEALTHY)

    def _build_picker(self, hosts: list[Host]) -> HostPicker:
        raise NotImplementedError

    @cython.locals(source="_HostSource")
    def choose_host(self, context: LoadBalancerContext | None = None) -> Host | None:
        """Pick a host; None when there is none to pick (the caller counts upstream_cx_none_healthy)."""
        source = self._direct
        if source is None:
            source = self._table[int(self.rng.random() * 100)]
            if source is None:
                return None
        if source.panic:
            self._panic_counter.value += 1
        return source.pick()


class RoundRobinLoadBalancer(LoadBalancer):
    """Plain rotation for equal weights; otherwise Envoy's earliest-deadline-first schedule.

    With weights, host i's k-th turn has deadline k / weight_i; sorting those
    deadlines for one cycle (sum of weights picks) gives the EDF order, which
    then repeats, so it is precomputed and the request path is ``next()`` on a cycle.
    The start is random so that workers do not all begin with the same host.
    """

    policy = ROUND_ROBIN

    def _build_picker(self, hosts: list[Host]) -> HostPicker:
        weights = {host.weight for host in hosts}
        if len(weights) == 1:
            schedule = hosts
        elif sum(host.weight for host in hosts) <= PRECOMPUTED_SCHEDULE_LIMIT:
            schedule = edf_schedule(hosts)
        else:
            return _EdfScheduler(hosts, _static_weight).pick
        start = self.rng.randrange(len(schedule))
        return itertools.cycle(schedule[start:] + schedule[:start]).__next__


def _static_weight(host: Host) -> float:
    return host.weight


def edf_order(weights: Sequence[int]) -> list[int]:
    """One full cycle of Envoy's EDF over integer weights: item indices in pick order.

    Item i's k-th turn has deadline k / weight_i (exact ties compare equal as floats,
    since both sides round the same rational); ties go to the earlier item.
    """
    return [
        index for _, index in sorted(
            (turn / weight, index) for index, weight in enumerate(weights) for turn in range(1, weight + 1)
        )
    ]


def integer_weights(weights: Sequence[Fraction]) -> list[int]:
    """The smallest integers in the same proportions as ``weights`` (all positive)."""
    denominator = math.lcm(*(weight.denominator for weight in weights))
    scaled = [int(weight * denominator) for weight in weights]
    divisor = math.gcd(*scaled)
    return [value // divisor for value in scaled]


def edf_schedule(hosts: Sequence[Host]) -> list[Host]:
    """One full cycle of Envoy's EDF weighted round robin (ties go to the earlier host)."""
    return [hosts[index] for index in edf_order([host.weight for host in hosts])]


class _EdfScheduler:
    """Live EDF: an entry's next deadline uses its weight at the time it is re-queued."""

    if not cython.compiled:
        __slots__ = ("_heap", "_order", "_weight_of")

    def __init__(self, entries: Sequence[Any], weight_of: Callable[[Any], float]) -> None:
        self._weight_of = weight_of
        self._heap = [(1.0 / weight_of(entry), index, entry) for index, entry in enumerate(entries)]
        heapq.heapify(self._heap)
        self._order = len(entries)

    def pick(self) -> Any:
        deadline, _, entry = self._heap[0]
        self._order += 1
        heapq.heapreplace(self._heap, (deadline + 1.0 / self._weight_of(entry), self._order, entry))
        return entry


class LeastRequestLoadBalancer(LoadBalancer):
    """Envoy's LEAST_REQUEST.

    Equal weights: sample ``choice_count`` hosts at random and take the one with
    the fewest active requests (P2C by default). Unequal weights (or an explicit
    ``active_request_bias``): EDF with weight / (active_requests + 1) ^ bias.
    """

    policy = LEAST_REQUEST

    def _build_picker(self, hosts: list[Host]) -> HostPicker:
        settings = self.settings
        if len(hosts) == 1:
            only = hosts[0]
            return lambda: only
        if len({host.weight for host in hosts}) == 1 and not settings.active_request_bias_set:
            return self._n_choices_picker(hosts, settings.choice_count)
        bias = settings.active_request_bias

        @cython.locals(host=Host)
        def dynamic_weight(host: Host) -> float:
            if bias == 0.0:
                return host.weight
            if bias == 1.0:
                return host.weight / (host.stats.rq_active + 1)
            return host.weight / (host.stats.rq_active + 1) ** bias

        return _EdfScheduler(hosts, dynamic_weight).pick

    def _n_choices_picker(self, hosts: list[Host], choice_count: int) -> HostPicker:
        size = len(hosts)
        rand = self.rng.random

        if choice_count == 2:
            @cython.locals(first=Host, second=Host)
            def pick_of_two() -> Host:
                first = hosts[int(rand() * size)]
                second = hosts[int(rand() * size)]
                return second if second.stats.rq_active < first.stats.rq_active else first

            return pick_of_two

        @cython.locals(best=Host, candidate=Host)
        def pick_of_n() -> Host:
            best = hosts[int(rand() * size)]
            for _ in range(choice_count - 1):
                candidate = hosts[int(rand() * size)]
                if candidate.stats.rq_active < best.stats.rq_active:
                    best = candidate
            return best

        return pick_of_n


class RandomLoadBalancer(LoadBalancer):
    """Envoy's RANDOM: uniform over the host list; weights are not used (as in Envoy)."""

    policy = RANDOM

    def _build_picker(self, hosts: list[Host]) -> HostPicker:
        size = len(hosts)
        rand = self.rng.random
        return lambda: hosts[int(rand() * size)]


class _HashingLoadBalancer(LoadBalancer):
    """RING_HASH / MAGLEV: the request hash picks the priority and the host; random without one."""

    uses_hash = True

    def host_hash_key(self, host: Host) -> str:
        if self.settings.use_hostname_for_hashing and host.hostname:
            return host.hostname
        return host.address_str

    def _sorted_hosts(
        self, hosts: list[Host], weights: Sequence[float] | None = None
    ) -> list[tuple[str, Host, float]]:
        """(key, host, weight) by key; weights default to the hosts' own.

        Sorting by key keeps the table independent of DNS answer order, so every
        worker (and every proxy) builds the same one.
        """
        if weights is None:
            weights = [host.weight for host in hosts]
        return sorted(
            ((self.host_hash_key(host), host, weight) for host, weight in zip(hosts, weights, strict=True)),
            key=lambda item: item[0],
        )

    def _build_source(
        self, hosts: list[Host], kind: str, panic: bool, overprovisioning_factor: int
    ) -> _HostSource | None:
        if not self.settings.locality_weighted:
            return super()._build_source(hosts, kind, panic, overprovisioning_factor)
        # Envoy's thread-aware balancers: no locality pick per request; the locality weight is
        # folded into each host's weight on the ring/table (all hosts per locality in panic).
        weighted = locality_host_weights(group_by_locality(hosts), _any_host if panic else _ELIGIBLE[kind])
        if not weighted:
            return None
        chosen = [host for host, _ in weighted]
        picker = self._build_weighted_picker(chosen, [weight for _, weight in weighted])
        return _HostSource(picker, panic, chosen)

    def _build_picker(self, hosts: list[Host]) -> HostPicker:
        return self._build_weighted_picker(hosts, None)

    def _build_weighted_picker(self, hosts: list[Host], weights: Sequence[float] | None) -> HostPicker:
        raise NotImplementedError

    @cython.locals(source="_HostSource")
    def choose_host(self, context: LoadBalancerContext | None = None) -> Host | None:
        key = context.hash_key if context is not None else None
        hash_value = self.rng.getrandbits(64) if key is None else key & _MASK64
        source = self._direct
        if source is None:
            source = self._table[hash_value % 100]
            if source is None:
                return None
        if source.panic:
            self._panic_counter.value += 1
        return source.pick(hash_value)


class RingHashLoadBalancer(_HashingLoadBalancer):
    """Ketama-style ring (Envoy's RING_HASH with xxHash64).

    Each host gets ``scale * normalized_weight`` points hashed from
    ``"<address>_<i>"``; the scale is the smallest that gives the lightest host a
    whole number of points at ``minimum_ring_size``, capped at ``maximum_ring_size``.
    A request goes to the first point at or after its hash, wrapping around.
    """

    policy = RING_HASH

    def build_ring(
        self, hosts: list[Host], weights: Sequence[float] | None = None
    ) -> tuple[list[int], list[Host]]:
        entries = self._sorted_hosts(hosts, weights)
        total_weight = sum(weight for _, _, weight in entries)
        min_normalized = min(weight for _, _, weight in entries) / total_weight
        scale = min(
            math.ceil(min_normalized * self.settings.minimum_ring_size) / min_normalized,
            float(self.settings.maximum_ring_size),
        )
        ring: list[tuple[int, int]] = []
        current_hashes = 0.0
        target_hashes = 0.0
        for index, (key, _, weight) in enumerate(entries):
            target_hashes += scale * weight / total_weight
            point = 0
            while current_hashes < target_hashes:
                ring.append((xxhash64(f"{key}_{point}"), index))
                point += 1
                current_hashes += 1
        ring.sort()
        return [hash_value for hash_value, _ in ring], [entries[index][1] for _, index in ring]

    def _build_weighted_picker(self, hosts: list[Host], weights: Sequence[float] | None) -> HostPicker:
        hashes, ring_hosts = self.build_ring(hosts, weights)
        size = len(hashes)
        find = bisect.bisect_left

        def pick(hash_value: int) -> Host:
            index = find(hashes, hash_value)
            return ring_hosts[index if index < size else 0]

        return pick


class MaglevLoadBalancer(_HashingLoadBalancer):
    """Maglev consistent hashing (Eisenbud et al. 2016) as Envoy builds it.

    Each host has an offset and a skip from two xxHash64 seeds and fills table
    slots in its own permutation order; a host with a fraction w/max of the
    heaviest weight takes a turn every max/w rounds. Lookup is ``table[hash % size]``.
    """

    policy = MAGLEV

    def build_table(self, hosts: list[Host], host_weights: Sequence[float] | None = None) -> list[Host]:
        table_size = self.settings.maglev_table_size
        entries = self._sorted_hosts(hosts, host_weights)
        total_weight = sum(weight for _, _, weight in entries)
        weights = [weight / total_weight for _, _, weight in entries]
        max_weight = max(weights)
        offsets = [xxhash64(key) % table_size for key, _, _ in entries]
        skips = [xxhash64(key, 1) % (table_size - 1) + 1 for key, _, _ in entries]
        next_index = [0] * len(entries)
        targets = [0.0] * len(entries)
        table: list[int] = [-1] * table_size
        filled = 0
        iteration = 0
        count = len(entries)
        while filled < table_size:
            iteration += 1
            for i in range(count):
                if iteration * weights[i] < targets[i]:
                    continue
                targets[i] += max_weight
                offset = offsets[i]
                skip = skips[i]
                step = next_index[i]
                slot = (offset + skip * step) % table_size
                while table[slot] >= 0:
                    step += 1
                    slot = (offset + skip * step) % table_size
                table[slot] = i
                next_index[i] = step + 1
                filled += 1
                if filled == table_size:
                    break
        return [entries[i][1] for i in table]

    def _build_weighted_picker(self, hosts: list[Host], weights: Sequence[float] | None) -> HostPicker:
        table = self.build_table(hosts, weights)
        size = len(table)
        return lambda hash_value: table[hash_value % size]


LOAD_BALANCERS: dict[str, type[LoadBalancer]] = {
    ROUND_ROBIN: RoundRobinLoadBalancer,
    LEAST_REQUEST: LeastRequestLoadBalancer,
    RANDOM: RandomLoadBalancer,
    RING_HASH: RingHashLoadBalancer,
    MAGLEV: MaglevLoadBalancer,
}


def create_load_balancer(
    settings: LbSettings, stats: ClusterStats, rng: random.Random | None = None
) -> LoadBalancer:
    return LOAD_BALANCERS[settings.policy](settings, stats, rng)
