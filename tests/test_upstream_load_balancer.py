"""Load balancers: distributions, consistency of hash policies, priorities and panic."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster
from envoy.config.core.v3 import health_check_pb2

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.stats.store import Store
from tulle.upstream.cluster_stats import ClusterStats
from tulle.upstream.host import Host
from tulle.upstream.load_balancer import (
    LEAST_REQUEST,
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
    edf_schedule,
    lb_settings_from_cluster,
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
        ({"common_lb_config": {"locality_weighted_lb_config": {}}}, "x.common_lb_config.locality_weighted_lb_config"),
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
