"""Load balancers: distributions, consistency of hash policies, priorities, panic and localities."""

from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3 import health_check_pb2

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.stats.store import Store
from tulle.upstream.cluster_stats import ClusterStats
from tulle.upstream.host import Host, Locality
from tulle.upstream.load_balancer import (
    LEAST_REQUEST,
    LOCALITY_SCHEDULE_LIMIT,
    MAGLEV,
    RANDOM,
    RING_HASH,
    ROUND_ROBIN,
    LbSettings,
    LeastRequestLoadBalancer,
    LoadBalancerContext,
    MaglevLoadBalancer,
    RandomLoadBalancer,
    RingHashLoadBalancer,
    RoundRobinLoadBalancer,
    compute_priority_loads,
    create_load_balancer,
    edf_order,
    edf_schedule,
    effective_locality_weight,
    group_by_locality,
    integer_weights,
    lb_settings_from_cluster,
    locality_host_weights,
    xxhash64,
)


def make_hosts(count: int, *, weights: list[int] | None = None, priority: int = 0, base: int = 1,
               unhealthy: int = 0, degraded: int = 0) -> list[Host]:
    hosts = []
    for index in range(count):
        status = health_check_pb2.UNKNOWN
        if index < unhealthy:
            status = health_check_pb2.UNHEALTHY
        elif index < unhealthy + degraded:
            status = health_check_pb2.DEGRADED
        hosts.append(Host(f"10.{priority}.0.{base + index}", 80, weight=weights[index] if weights else 1,
                          priority=priority, health_status=status))
    return hosts


def balancer(cls, hosts_per_priority, settings: LbSettings | None = None, seed: int = 7):
    store = Store()
    lb = cls(settings or LbSettings(policy=cls.policy), ClusterStats(store, "c"), random.Random(seed))
    lb.update(hosts_per_priority)
    return lb, store


# --- round robin -----------------------------------------------------------------


def test_round_robin_equal_weights_rotates_through_every_host():
    hosts = make_hosts(4)
    lb, _ = balancer(RoundRobinLoadBalancer, [hosts])
    picks = [lb.choose_host(None) for _ in range(12)]
    for start in range(0, 12, 4):
        assert set(picks[start:start + 4]) == set(hosts)
    assert picks[:4] == picks[4:8] == picks[8:12]


def test_weighted_round_robin_exact_proportions_over_every_cycle():
    hosts = make_hosts(3, weights=[1, 2, 5])
    lb, _ = balancer(RoundRobinLoadBalancer, [hosts])
    picks = [lb.choose_host(None) for _ in range(8 * 10)]
    for start in range(0, len(picks), 8):
        counts = Counter(picks[start:start + 8])
        assert [counts[host] for host in hosts] == [1, 2, 5]
    # any window of one cycle length has the exact proportions, wherever it starts
    counts = Counter(picks[3:11])
    assert [counts[host] for host in hosts] == [1, 2, 5]


def test_edf_schedule_interleaves_instead_of_bunching():
    hosts = make_hosts(2, weights=[1, 3])
    schedule = edf_schedule(hosts)
    assert Counter(schedule) == {hosts[0]: 1, hosts[1]: 3}
    heavy, light = hosts[1], hosts[0]
    # deadlines: heavy 1/3, 2/3, 1; light 1 (the tie goes to the host listed first)
    assert schedule == [heavy, heavy, light, heavy]


def test_round_robin_start_differs_by_seed_but_rotation_is_the_same():
    hosts = make_hosts(5)
    starts = set()
    for seed in range(20):
        lb, _ = balancer(RoundRobinLoadBalancer, [hosts], seed=seed)
        picks = [lb.choose_host(None) for _ in range(5)]
        assert set(picks) == set(hosts)
        starts.add(picks[0])
    assert len(starts) > 1


def test_round_robin_single_host_and_no_host():
    only = make_hosts(1)
    lb, store = balancer(RoundRobinLoadBalancer, [only])
    assert lb.choose_host(None) is only[0]
    lb.update([[]])
    assert lb.choose_host(None) is None
    assert store.counters["cluster.c.lb_healthy_panic"].value == 0


# --- least request ---------------------------------------------------------------


def test_p2c_prefers_the_less_loaded_host():
    hosts = make_hosts(3)
    hosts[0].stats.rq_active = 50
    lb, _ = balancer(LeastRequestLoadBalancer, [hosts])
    counts = Counter(lb.choose_host(None) for _ in range(9000))
    # the busy host wins only when both samples hit it: 1/9 of the time
    assert 0 < counts[hosts[0]] < 9000 * 0.2
    assert counts[hosts[1]] > 3 * counts[hosts[0]]
    assert counts[hosts[2]] > 3 * counts[hosts[0]]


def test_least_request_more_choices_avoid_busy_host_more():
    hosts = make_hosts(3)
    hosts[0].stats.rq_active = 50
    two, _ = balancer(LeastRequestLoadBalancer, [hosts])
    five, _ = balancer(LeastRequestLoadBalancer, [hosts], LbSettings(policy=LEAST_REQUEST, choice_count=5))
    busy_two = sum(1 for _ in range(9000) if two.choose_host(None) is hosts[0])
    busy_five = sum(1 for _ in range(9000) if five.choose_host(None) is hosts[0])
    assert busy_five < busy_two


def test_weighted_least_request_follows_weight_over_active_requests():
    hosts = make_hosts(2, weights=[1, 3])
    lb, _ = balancer(LeastRequestLoadBalancer, [hosts])
    idle = Counter(lb.choose_host(None) for _ in range(400))
    assert idle[hosts[1]] == 300 and idle[hosts[0]] == 100  # no load: exact weight proportions
    hosts[1].stats.rq_active = 5  # effective weight 3/6 = 0.5 < 1
    lb.update([hosts])
    loaded = Counter(lb.choose_host(None) for _ in range(300))
    assert loaded[hosts[0]] > loaded[hosts[1]]


# --- random ------------------------------------------------------------------------


def test_random_is_roughly_uniform_and_ignores_weights():
    hosts = make_hosts(4, weights=[1, 1, 1, 10])
    lb, _ = balancer(RandomLoadBalancer, [hosts], seed=42)
    counts = Counter(lb.choose_host(None) for _ in range(20000))
    for host in hosts:
        assert 4000 < counts[host] < 6000


# --- hashing -------------------------------------------------------------------------


def test_xxhash64_matches_envoy_hash_util():
    assert xxhash64(b"") == 0xEF46DB3751D8E999  # XXH64 of the empty input, seed 0
    assert xxhash64("abc") == xxhash64(b"abc") != xxhash64(b"abc", 1)


@pytest.mark.parametrize("cls", [RingHashLoadBalancer, MaglevLoadBalancer])
def test_hash_balancer_same_key_same_host_across_instances_and_host_order(cls):
    hosts = make_hosts(6)
    first, _ = balancer(cls, [hosts], seed=1)
    second, _ = balancer(cls, [list(reversed(hosts))], seed=99)
    for key in range(0, 2**64, 2**58 + 12345):
        context = LoadBalancerContext(hash_key=key)
        assert first.choose_host(context) is first.choose_host(context)
        assert first.choose_host(context) is second.choose_host(context)


@pytest.mark.parametrize(("cls", "max_moved_share"), [(RingHashLoadBalancer, 0.2), (MaglevLoadBalancer, 0.1)])
def test_hash_balancer_minimal_reshuffle_when_a_host_is_removed(cls, max_moved_share):
    hosts = make_hosts(5)
    lb, _ = balancer(cls, [hosts])
    keys = [xxhash64(f"user-{i}") for i in range(5000)]
    before = {key: lb.choose_host(LoadBalancerContext(key)) for key in keys}
    removed = hosts[2]
    lb.update([[host for host in hosts if host is not removed]])
    after = {key: lb.choose_host(LoadBalancerContext(key)) for key in keys}
    assert all(after[key] is not removed for key in keys)
    on_removed = [key for key in keys if before[key] is removed]
    assert 500 < len(on_removed) < 1500  # about a fifth of the keys
    stayed = [key for key in keys if before[key] is not removed]
    moved = sum(1 for key in stayed if after[key] is not before[key])
    # modulo hashing would move ~80% of them; the ring moves a few because each survivor gets
    # more points (ring size / 4 instead of / 5), Maglev a few because slots are re-filled
    assert moved < max_moved_share * len(stayed)


@pytest.mark.parametrize("cls", [RingHashLoadBalancer, MaglevLoadBalancer])
def test_hash_balancer_respects_weights(cls):
    hosts = make_hosts(2, weights=[1, 3])
    lb, _ = balancer(cls, [hosts])
    counts = Counter(lb.choose_host(LoadBalancerContext(xxhash64(str(i)))) for i in range(8000))
    share = counts[hosts[1]] / 8000
    assert 0.65 < share < 0.85


@pytest.mark.parametrize("cls", [RingHashLoadBalancer, MaglevLoadBalancer])
def test_hash_balancer_without_key_falls_back_to_random(cls):
    hosts = make_hosts(4)
    lb, _ = balancer(cls, [hosts])
    assert len({lb.choose_host(None) for _ in range(200)}) == 4
    assert len({lb.choose_host(LoadBalancerContext()) for _ in range(200)}) == 4


def test_ring_size_follows_minimum_ring_size():
    hosts = make_hosts(3)
    lb, _ = balancer(RingHashLoadBalancer, [hosts], LbSettings(policy=RING_HASH, minimum_ring_size=30))
    hashes, ring_hosts = lb.build_ring(hosts)
    assert len(hashes) == 30 and hashes == sorted(hashes)
    assert Counter(ring_hosts) == {host: 10 for host in hosts}
    capped, _ = balancer(RingHashLoadBalancer, [hosts],
                         LbSettings(policy=RING_HASH, minimum_ring_size=30, maximum_ring_size=12))
    assert len(capped.build_ring(hosts)[0]) == 12


def test_maglev_table_is_full_and_balanced():
    hosts = make_hosts(4)
    lb, _ = balancer(MaglevLoadBalancer, [hosts], LbSettings(policy=MAGLEV, maglev_table_size=1009))
    table = lb.build_table(hosts)
    assert len(table) == 1009
    counts = Counter(table)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_use_hostname_for_hashing_keys_on_hostname():
    hosts = [Host("10.0.0.1", 80, hostname="a.example"), Host("10.0.0.2", 80, hostname="b.example")]
    moved = [Host("10.9.9.1", 80, hostname="a.example"), Host("10.9.9.2", 80, hostname="b.example")]
    settings = LbSettings(policy=RING_HASH, use_hostname_for_hashing=True)
    first, _ = balancer(RingHashLoadBalancer, [hosts], settings)
    second, _ = balancer(RingHashLoadBalancer, [moved], settings)
    for key in (xxhash64(str(i)) for i in range(100)):
        assert first.choose_host(LoadBalancerContext(key)).hostname == \
            second.choose_host(LoadBalancerContext(key)).hostname


# --- priorities and panic ----------------------------------------------------------


@pytest.mark.parametrize(
    ("p0_healthy_percent", "expected"),
    # Envoy's documented table for two priorities with the default overprovisioning factor 1.4
    [(100, (100, 0)), (72, (100, 0)), (71, (99, 1)), (50, (70, 30)), (25, (35, 65)), (0, (0, 100))],
)
def test_priority_loads_match_envoy_table(p0_healthy_percent, expected):
    loads = compute_priority_loads([(100, p0_healthy_percent, 0), (100, 100, 0)])
    assert loads.healthy == expected
    assert loads.degraded == (0, 0)
    assert loads.panic == (False, False)


def test_priority_loads_degraded_and_total_panic():
    # all of P0 degraded, P1 healthy: healthy P1 takes everything before degraded hosts do
    assert compute_priority_loads([(4, 0, 4), (4, 4, 0)]).healthy == (0, 100)
    # only degraded hosts anywhere: traffic goes to them
    only_degraded = compute_priority_loads([(4, 0, 4)])
    assert only_degraded.healthy == (0,) and only_degraded.degraded == (100,)
    # every priority below the panic threshold: split by host counts
    total_panic = compute_priority_loads([(3, 0, 0), (1, 0, 0)])
    assert total_panic.panic == (True, True)
    assert total_panic.healthy == (75, 25)
    # panic disabled and nothing healthy: P0 nominally takes the load
    disabled = compute_priority_loads([(3, 0, 0)], panic_threshold=0)
    assert disabled.healthy == (100,) and disabled.panic == (False,)


def test_priority_failover_distribution():
    p0 = make_hosts(3, priority=0, unhealthy=2)  # 1/3 healthy -> P0 health 46
    p1 = make_hosts(3, priority=1)
    lb, store = balancer(RoundRobinLoadBalancer, [p0, p1])
    assert lb.loads.healthy == (46, 54)
    picks = [lb.choose_host(None) for _ in range(10000)]
    p0_share = sum(1 for host in picks if host.priority == 0) / len(picks)
    assert 0.40 < p0_share < 0.52
    assert all(host.healthy for host in picks)
    assert store.counters["cluster.c.lb_healthy_panic"].value == 0


def test_all_healthy_p0_takes_all_traffic():
    p0, p1 = make_hosts(2, priority=0), make_hosts(2, priority=1)
    lb, _ = balancer(RandomLoadBalancer, [p0, p1])
    assert all(lb.choose_host(None).priority == 0 for _ in range(500))


def test_panic_mode_balances_over_all_hosts_and_counts():
    hosts = make_hosts(4, unhealthy=3)  # 25% healthy < 50% threshold
    lb, store = balancer(RoundRobinLoadBalancer, [hosts])
    picks = [lb.choose_host(None) for _ in range(8)]
    assert set(picks) == set(hosts)
    assert store.counters["cluster.c.lb_healthy_panic"].value == 8


def test_panic_threshold_zero_disables_panic():
    hosts = make_hosts(4, unhealthy=3)
    lb, store = balancer(RoundRobinLoadBalancer, [hosts], LbSettings(healthy_panic_threshold=0))
    assert {lb.choose_host(None) for _ in range(8)} == {hosts[3]}
    assert store.counters["cluster.c.lb_healthy_panic"].value == 0
    lb.update([make_hosts(2, unhealthy=2)])
    assert lb.choose_host(None) is None


def test_hash_balancer_uses_key_for_priority_and_host():
    p0 = make_hosts(3, priority=0, unhealthy=2)
    p1 = make_hosts(3, priority=1)
    lb, _ = balancer(MaglevLoadBalancer, [p0, p1], LbSettings(policy=MAGLEV, maglev_table_size=307))
    for key in (xxhash64(str(i)) for i in range(300)):
        host = lb.choose_host(LoadBalancerContext(key))
        assert host.priority == (0 if key % 100 < 46 else 1)
        assert host.healthy


# --- configuration ----------------------------------------------------------------------


def cluster_proto(**fields) -> Cluster:
    return parse_message({"name": "c", **fields}, Cluster)


def test_lb_settings_defaults_and_values():
    assert lb_settings_from_cluster(cluster_proto(), "c") == LbSettings()
    settings = lb_settings_from_cluster(
        cluster_proto(lb_policy="RING_HASH", ring_hash_lb_config={"minimum_ring_size": "64", "maximum_ring_size": "128"},
                      common_lb_config={"healthy_panic_threshold": {"value": 30.6},
                                        "consistent_hashing_lb_config": {"use_hostname_for_hashing": True}}),
        "c",
    )
    assert (settings.policy, settings.minimum_ring_size, settings.maximum_ring_size) == (RING_HASH, 64, 128)
    assert settings.healthy_panic_threshold == 31
    assert settings.use_hostname_for_hashing
    least = lb_settings_from_cluster(
        cluster_proto(lb_policy="LEAST_REQUEST",
                      least_request_lb_config={"choice_count": 3,
                                               "active_request_bias": {"default_value": 0.5, "runtime_key": "k"}}),
        "c",
    )
    assert (least.choice_count, least.active_request_bias, least.active_request_bias_set) == (3, 0.5, True)
    assert lb_settings_from_cluster(cluster_proto(lb_policy="MAGLEV", maglev_lb_config={"table_size": 5}),
                                    "c").maglev_table_size == 5


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"lb_policy": "CLUSTER_PROVIDED"}, "x.lb_policy"),
        ({"common_lb_config": {"zone_aware_lb_config": {}}}, "x.common_lb_config.zone_aware_lb_config"),
        ({"common_lb_config": {"consistent_hashing_lb_config": {"hash_balance_factor": 150}}},
         "x.common_lb_config.consistent_hashing_lb_config.hash_balance_factor"),
        ({"round_robin_lb_config": {"slow_start_config": {}}}, "x.round_robin_lb_config.slow_start_config"),
        ({"lb_policy": "RING_HASH", "ring_hash_lb_config": {"hash_function": "MURMUR_HASH_2"}},
         "x.ring_hash_lb_config.hash_function"),
        ({"lb_policy": "LEAST_REQUEST", "least_request_lb_config": {"slow_start_config": {}}},
         "x.least_request_lb_config.slow_start_config"),
    ],
)
def test_lb_refusals_name_the_field(fields, path):
    with pytest.raises(UnsupportedFeature) as caught:
        lb_settings_from_cluster(cluster_proto(**fields), "x")
    assert caught.value.field == path
    assert "unsupported by Tulle" in str(caught.value)


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"lb_policy": "MAGLEV", "maglev_lb_config": {"table_size": 100}}, "x.maglev_lb_config.table_size"),
        ({"lb_policy": "LEAST_REQUEST", "least_request_lb_config": {"choice_count": 1}},
         "x.least_request_lb_config.choice_count"),
        ({"lb_policy": "RING_HASH", "ring_hash_lb_config": {"minimum_ring_size": "10", "maximum_ring_size": "5"}},
         "x.ring_hash_lb_config"),
        ({"common_lb_config": {"healthy_panic_threshold": {"value": 120}}},
         "x.common_lb_config.healthy_panic_threshold.value"),
    ],
)
def test_lb_invalid_values_are_config_errors(fields, path):
    with pytest.raises(ConfigError) as caught:
        lb_settings_from_cluster(cluster_proto(**fields), "x")
    assert not isinstance(caught.value, UnsupportedFeature)
    assert caught.value.field == path


def test_create_load_balancer_picks_class_by_policy():
    stats = ClusterStats(Store(), "c")
    expected = {ROUND_ROBIN: RoundRobinLoadBalancer, LEAST_REQUEST: LeastRequestLoadBalancer,
                RANDOM: RandomLoadBalancer, RING_HASH: RingHashLoadBalancer, MAGLEV: MaglevLoadBalancer}
    for policy, cls in expected.items():
        lb = create_load_balancer(LbSettings(policy=policy), stats)
        assert type(lb) is cls and lb.policy == policy


# --- priority levels: Envoy's worked examples ----------------------------------------------


def test_priority_load_worked_example_two_of_five_healthy():
    # P0 2/5 healthy: 1.4 x 40% = 56% stays in P0, the rest spills to the healthy P1
    loads = compute_priority_loads([(5, 2, 0), (5, 5, 0)])
    assert loads.healthy == (56, 44) and loads.panic == (False, False)


def test_priority_load_normalised_when_priorities_together_are_short():
    # Envoy's comment in recalculatePerPriorityState: health 10/20/10 and degraded 20/10/0
    # (normalised total 70) give 16/28/14 healthy and 28/14/0 degraded; the rounding leftover
    # goes to the first healthy priority. Panic is off here so the raw split stays visible.
    counts = [(14, 1, 2), (14, 2, 1), (14, 1, 0)]
    loads = compute_priority_loads(counts, panic_threshold=0)
    assert loads.healthy == (16, 28, 14)
    assert loads.degraded == (28, 14, 0)


def test_priority_panic_only_when_the_normalised_total_is_short():
    # P0 at 20% healthy is far below the threshold but P1 can take everything: no panic
    assert compute_priority_loads([(5, 1, 0), (5, 5, 0)]).panic == (False, False)
    # P1 only 50% healthy: total 28 + 70 < 100, so P0 (below 50%) panics and P1 (not below) does not
    loads = compute_priority_loads([(5, 1, 0), (10, 5, 0)])
    assert loads.panic == (True, False)
    assert loads.healthy == (29, 71)  # 28 and 70 scaled by 100/98, rounded down; the leftover to P0


# --- localities -------------------------------------------------------------------------------

_addresses = iter(range(1, 1 << 20))


def zone_hosts(region: str, zone: str, count: int, *, weight: int = 1, priority: int = 0, unhealthy: int = 0,
               degraded: int = 0, host_weights: list[int] | None = None) -> list[Host]:
    """``count`` hosts of one locality; the first ``unhealthy`` fail EDS health, the next ``degraded`` degrade."""
    hosts = []
    for index in range(count):
        status = health_check_pb2.UNKNOWN
        if index < unhealthy:
            status = health_check_pb2.UNHEALTHY
        elif index < unhealthy + degraded:
            status = health_check_pb2.DEGRADED
        number = next(_addresses)
        hosts.append(Host(f"10.{priority}.{number >> 8}.{number & 255}", 80, priority=priority,
                          weight=host_weights[index] if host_weights else 1,
                          locality=Locality(region, zone), locality_weight=weight, health_status=status))
    return hosts


LOCALITY_WEIGHTED = LbSettings(locality_weighted=True)


def locality_shares(lb, picks: int = 20000, context=None) -> dict[str, float]:
    counts = Counter()
    for _ in range(picks):
        host = lb.choose_host(context)
        counts[f"{host.locality.region}-{host.locality.zone}" if host else None] += 1
    return {name: count / picks for name, count in counts.items()}


@pytest.mark.parametrize(
    ("x_healthy", "x_hosts", "expected_x_percent"),
    # Envoy's locality weighted table: X weight 1, Y weight 2 and fully healthy, factor 1.4
    [(10, 10, 33), (7, 10, 33), (5, 10, 26), (1, 4, 15), (0, 4, 0)],
)
def test_effective_locality_weights_match_envoy_table(x_healthy, x_hosts, expected_x_percent):
    x = effective_locality_weight(1, x_healthy, x_hosts, 140)
    y = effective_locality_weight(2, 4, 4, 140)
    assert round(100 * x / (x + y)) == expected_x_percent
    assert effective_locality_weight(3, 0, 0, 140) == 0 and effective_locality_weight(0, 4, 4, 140) == 0


def test_edf_order_and_integer_weights():
    assert edf_order([1, 2]) == [1, 0, 1]
    assert Counter(edf_order([3, 1, 2])) == {0: 3, 1: 1, 2: 2}
    assert integer_weights([Fraction(7, 10), Fraction(2)]) == [7, 20]
    assert integer_weights([Fraction(4), Fraction(6)]) == [2, 3]


def test_group_by_locality_orders_like_envoy_and_keeps_the_last_weight():
    b = zone_hosts("r", "b", 1, weight=1)
    a = zone_hosts("r", "a", 1, weight=2)
    again_b = zone_hosts("r", "b", 1, weight=5)
    unweighted = zone_hosts("", "", 1, weight=0)
    groups = group_by_locality(b + a + again_b + unweighted)
    assert [group.locality for group in groups] == [Locality(), Locality("r", "a"), Locality("r", "b")]
    assert [group.weight for group in groups] == [0, 2, 5]
    assert groups[2].hosts == (b[0], again_b[0])


def test_locality_edf_splits_by_weight_then_rotates_hosts_inside():
    x = zone_hosts("r", "x", 2, weight=1)
    y = zone_hosts("r", "y", 2, weight=2)
    lb, _ = balancer(RoundRobinLoadBalancer, [x + y], LOCALITY_WEIGHTED)
    picks = Counter(lb.choose_host(None) for _ in range(3000))  # whole EDF cycles: exact proportions
    assert [picks[host] for host in x + y] == [500, 500, 1000, 1000]
    first_cycle = [lb.choose_host(None).locality.zone for _ in range(3)]
    assert sorted(first_cycle) == ["x", "y", "y"]  # interleaved, not bunched


def test_locality_weight_drops_with_health_and_traffic_fails_over():
    x = zone_hosts("r", "x", 2, weight=1, unhealthy=1)  # 50% healthy -> effective 0.7
    y = zone_hosts("r", "y", 2, weight=1)
    lb, _ = balancer(RoundRobinLoadBalancer, [x + y], LOCALITY_WEIGHTED)
    shares = locality_shares(lb, 2700)  # one cycle is 7 + 10 picks; close to 0.7 : 1
    assert shares["r-x"] == pytest.approx(0.7 / 1.7, abs=0.01)
    assert all(host.healthy for host in (lb.choose_host(None) for _ in range(100)))
    lb.update([zone_hosts("r", "x", 2, weight=1, unhealthy=2) + y])  # x fully down: y takes it all
    assert locality_shares(lb, 200) == {"r-y": 1.0}


def test_locality_without_weight_gets_nothing_and_no_weights_means_whole_priority():
    weighted = zone_hosts("r", "x", 2, weight=1)
    unweighted = zone_hosts("r", "y", 2, weight=0)
    lb, _ = balancer(RoundRobinLoadBalancer, [weighted + unweighted], LOCALITY_WEIGHTED)
    assert locality_shares(lb, 100) == {"r-x": 1.0}
    lb.update([zone_hosts("r", "x", 2, weight=0) + unweighted])  # no scheduler: every healthy host
    assert set(locality_shares(lb, 100)) == {"r-x", "r-y"}
    # the only weighted locality is down: the priority's other healthy hosts, not nothing
    lb.update([zone_hosts("r", "x", 4, weight=1, unhealthy=4) + zone_hosts("r", "y", 4, weight=0)])
    assert lb.loads.panic == (False,)
    assert locality_shares(lb, 100) == {"r-y": 1.0}


def sandbox_priorities(*, local_1: int = 1, local_1_down: int = 0, local_2_down: bool = False,
                       remote_1_down: bool = False) -> list[list[Host]]:
    """Envoy's locality-load-balancing sandbox: P0 local-1, P1 local-2 + remote-1, P2 remote-2."""
    return [
        zone_hosts("local", "zone-1", local_1, unhealthy=local_1_down, priority=0),
        zone_hosts("local", "zone-2", 1, unhealthy=int(local_2_down), priority=1)
        + zone_hosts("remote", "zone-1", 1, unhealthy=int(remote_1_down), priority=1),
        zone_hosts("remote", "zone-2", 1, priority=2),
    ]


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        ({}, {"local-zone-1": 1.0}),
        ({"local_1_down": 1}, {"local-zone-2": 0.5, "remote-zone-1": 0.5}),
        ({"local_1_down": 1, "local_2_down": True}, {"remote-zone-1": 0.70, "remote-zone-2": 0.30}),
        ({"local_1": 5, "local_1_down": 4}, {"local-zone-1": 0.28, "local-zone-2": 0.36, "remote-zone-1": 0.36}),
        ({"local_1": 5, "local_1_down": 4, "local_2_down": True, "remote_1_down": True},
         {"local-zone-1": 0.28, "remote-zone-2": 0.72}),
    ],
)
def test_envoy_sandbox_priority_and_locality_failover(scenario, expected):
    lb, store = balancer(RoundRobinLoadBalancer, sandbox_priorities(**scenario), LOCALITY_WEIGHTED)
    shares = locality_shares(lb)
    assert set(shares) == set(expected)
    for name, share in expected.items():
        assert shares[name] == pytest.approx(share, abs=0.02), shares
    assert store.counters["cluster.c.lb_healthy_panic"].value == 0


@pytest.mark.parametrize("cls", [RandomLoadBalancer, LeastRequestLoadBalancer])
def test_every_edf_policy_picks_the_locality_first(cls):
    x = zone_hosts("r", "x", 3, weight=1)
    y = zone_hosts("r", "y", 1, weight=3)
    lb, _ = balancer(cls, [x + y], LbSettings(policy=cls.policy, locality_weighted=True))
    # without localities y would get 1/4 (one host of four); by locality weight it gets 3/4
    assert locality_shares(lb, 4000)["r-y"] == pytest.approx(0.75, abs=0.02)


def test_degraded_traffic_uses_the_degraded_hosts_per_locality():
    # P0: x all degraded, y all unhealthy; P1 unhealthy too -> everything goes to degraded hosts
    x = zone_hosts("r", "x", 2, weight=1, degraded=2)
    y = zone_hosts("r", "y", 2, weight=5, unhealthy=2)
    lb, _ = balancer(RoundRobinLoadBalancer, [x + y], LOCALITY_WEIGHTED)
    assert lb.loads.degraded == (100,)
    picks = [lb.choose_host(None) for _ in range(20)]
    assert set(picks) == set(x)


def test_panic_ignores_localities_and_counts():
    x = zone_hosts("r", "x", 2, weight=1, unhealthy=2)
    y = zone_hosts("r", "y", 2, weight=100, unhealthy=1)  # 25% healthy overall: panic
    lb, store = balancer(RoundRobinLoadBalancer, [x + y], LOCALITY_WEIGHTED)
    assert lb.loads.panic == (True,)
    assert set(lb.choose_host(None) for _ in range(8)) == set(x + y)  # all hosts, plain rotation
    assert store.counters["cluster.c.lb_healthy_panic"].value == 8


def test_long_locality_cycles_fall_back_to_a_live_edf():
    x = zone_hosts("r", "x", 1, weight=LOCALITY_SCHEDULE_LIMIT)
    y = zone_hosts("r", "y", 1, weight=LOCALITY_SCHEDULE_LIMIT - 1)
    lb, _ = balancer(RoundRobinLoadBalancer, [x + y], LOCALITY_WEIGHTED)
    shares = locality_shares(lb, 4000)
    assert shares["r-x"] == pytest.approx(0.5, abs=0.01)


def test_hash_balancers_fold_locality_weights_into_host_weights():
    x = zone_hosts("r", "x", 2, weight=1, unhealthy=1)
    y = zone_hosts("r", "y", 1, weight=3)
    weights = locality_host_weights(group_by_locality(x + y), lambda host: host.healthy)
    assert weights == [(x[1], 0.25), (y[0], 0.75)]  # raw locality weights: health does not shrink x
    settings = LbSettings(policy=MAGLEV, locality_weighted=True, maglev_table_size=10007)
    lb, _ = balancer(MaglevLoadBalancer, [x + y], settings)
    shares = locality_shares(lb, 4000, LoadBalancerContext(None))
    keyed = Counter(lb.choose_host(LoadBalancerContext(xxhash64(str(i)))).locality.zone for i in range(4000))
    assert keyed["y"] / 4000 == pytest.approx(0.75, abs=0.03)
    assert shares["r-y"] == pytest.approx(0.75, abs=0.03)
    ring, _ = balancer(RingHashLoadBalancer, [x + y], LbSettings(policy=RING_HASH, locality_weighted=True))
    ring_keyed = Counter(ring.choose_host(LoadBalancerContext(xxhash64(str(i)))).locality.zone for i in range(4000))
    assert ring_keyed["y"] / 4000 == pytest.approx(0.75, abs=0.05)
    # as Envoy: with every locality weight 0 a hashing balancer has no host at all
    lb.update([zone_hosts("r", "x", 2, weight=0)])
    assert lb.choose_host(LoadBalancerContext(1)) is None


def test_locality_weighted_lb_config_is_accepted():
    settings = lb_settings_from_cluster(cluster_proto(common_lb_config={"locality_weighted_lb_config": {}}), "c")
    assert settings.locality_weighted
    assert not lb_settings_from_cluster(cluster_proto(), "c").locality_weighted
