"""Circuit breakers: parsing, the counted resources, the retry budget, the gauges, the shared slab."""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2

from backends import (
    BackendConnection,
    Client,
    Message,
    RawBackend,
    encode_request,
    encode_response,
    get,
    http_proxy,
    respond,
    wait_until,
)
from proxy_harness import simple_route, static_cluster
from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.stats.store import Store, merge
from tulle.upstream.cluster import build_cluster
from tulle.upstream.resource_manager import (
    HIGH_PRIORITY,
    UNLIMITED,
    CircuitBreakersConfig,
    Resource,
    SharedSlab,
    Thresholds,
    build_resource_managers,
    parse_circuit_breakers,
    use_slab,
)


def parse(data: dict[str, Any]) -> CircuitBreakersConfig:
    return parse_circuit_breakers(parse_message(data, circuit_breaker_pb2.CircuitBreakers), "circuit_breakers")


def managers(data: dict[str, Any] | None = None, *, store: Store | None = None, name: str = "backend") -> Any:
    config = parse(data) if data is not None else CircuitBreakersConfig()
    return build_resource_managers(config, name, name, store if store is not None else Store())


@pytest.fixture
def shared_slab() -> Iterator[SharedSlab]:
    slab = SharedSlab(capacity=8)
    previous = use_slab(slab)
    try:
        yield slab
    finally:
        use_slab(previous)


# --------------------------------------------------------------------------- parsing


def test_envoy_defaults_for_both_priorities() -> None:
    config = parse({})
    assert config.thresholds == (Thresholds(), Thresholds())
    default = config.thresholds[0]
    assert (default.max_connections, default.max_pending_requests, default.max_requests, default.max_retries) == (
        1024, 1024, 1024, 3)
    assert default.budget_percent is None and default.max_connections_per_host is None


def test_thresholds_per_priority_and_the_first_entry_wins() -> None:
    config = parse({"thresholds": [
        {"max_connections": 7, "max_requests": 9, "track_remaining": True},
        {"priority": "HIGH", "max_pending_requests": 0, "max_retries": 10},
        {"max_connections": 99},  # a second DEFAULT entry: Envoy uses the first
    ]})
    default, high = config.thresholds
    assert (default.max_connections, default.max_pending_requests, default.max_requests) == (7, 1024, 9)
    assert default.track_remaining
    assert (high.max_connections, high.max_pending_requests, high.max_retries) == (1024, 0, 10)
    assert not high.track_remaining


def test_retry_budget_defaults_and_values() -> None:
    empty = parse({"thresholds": [{"retry_budget": {}}]}).thresholds[0]
    assert (empty.budget_percent, empty.min_retry_concurrency) == (20.0, 3)
    set_ = parse({"thresholds": [{"retry_budget": {"budget_percent": {"value": 50}, "min_retry_concurrency": 1}}]})
    assert (set_.thresholds[0].budget_percent, set_.thresholds[0].min_retry_concurrency) == (50.0, 1)
    assert parse({}).thresholds[0].budget_percent is None


def test_per_host_max_connections() -> None:
    config = parse({"per_host_thresholds": [{"max_connections": 2}, {"priority": "HIGH"}]})
    assert config.thresholds[0].max_connections_per_host == 2
    assert config.thresholds[1].max_connections_per_host is None  # no value: no limit, as Envoy


@pytest.mark.parametrize(("data", "path"), [
    ({"thresholds": [{"max_connection_pools": 4}]}, "circuit_breakers.thresholds[0].max_connection_pools"),
    ({"per_host_thresholds": [{"max_pending_requests": 1}]}, "circuit_breakers.per_host_thresholds[0].max_pending_requests"),
    ({"per_host_thresholds": [{"track_remaining": True}]}, "circuit_breakers.per_host_thresholds[0].track_remaining"),
    ({"thresholds": [{"max_requests": 1}, {"max_connection_pools": 1, "priority": "HIGH"}]},
     "circuit_breakers.thresholds[1].max_connection_pools"),
])
def test_unimplemented_fields_are_refused_by_name(data: dict[str, Any], path: str) -> None:
    with pytest.raises(UnsupportedFeature) as caught:
        parse(data)
    assert caught.value.field == path


def test_budget_percent_out_of_range_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"thresholds": [{"retry_budget": {"budget_percent": {"value": 150}}}]})
    assert caught.value.field == "circuit_breakers.thresholds[0].retry_budget.budget_percent.value"


def test_cluster_exposes_its_managers_by_priority() -> None:
    proto = parse_message({"name": "c", "type": "STATIC", "circuit_breakers": {"thresholds": [
        {"max_requests": 5}, {"priority": "HIGH", "max_requests": 50}]}}, cluster_pb2.Cluster)
    cluster = build_cluster(proto, "clusters[0]", Store())
    assert cluster.resource_manager is cluster.resource_manager_for(0)
    assert cluster.resource_manager.requests.limit == 5
    assert cluster.resource_manager_for(HIGH_PRIORITY).requests.limit == 50
    assert cluster.circuit_breakers_status() == {
        "default": {"max_connections": 1024, "max_pending_requests": 1024, "max_requests": 5, "max_retries": 3},
        "high": {"max_connections": 1024, "max_pending_requests": 1024, "max_requests": 50, "max_retries": 3},
    }


# --------------------------------------------------------------------------- resources


def test_a_resource_counts_against_its_limit() -> None:
    resource = Resource(2, [0], 0)
    assert resource.can_create() and resource.try_acquire() and resource.try_acquire()
    assert resource.count == 2 and resource.max() == 2
    assert not resource.can_create() and not resource.try_acquire()
    assert resource.count == 2  # a refused take changes nothing
    resource.dec()
    assert resource.can_create()
    resource.inc()
    resource.inc()  # inc is unconditional (Envoy's ResourceLimit::inc)
    assert resource.count == 3


def test_priorities_count_separately() -> None:
    default, high = managers({"thresholds": [{"max_requests": 1}, {"priority": "HIGH", "max_requests": 1}]})
    assert default.requests.try_acquire()
    assert not default.requests.try_acquire()
    assert high.requests.try_acquire()


def test_max_retries_without_a_budget() -> None:
    manager = managers({"thresholds": [{"max_retries": 1}]})[0]
    retries = manager.retries
    assert retries.can_create() and retries.max() == 1
    retries.inc()
    assert not retries.can_create() and retries.count == 1
    assert manager.retry_budget_allows()  # no budget: only max_retries limits
    retries.dec()
    assert retries.can_create()


def test_retry_budget_replaces_max_retries() -> None:
    manager = managers({"thresholds": [
        {"max_retries": 0, "retry_budget": {"budget_percent": {"value": 25}, "min_retry_concurrency": 2}}]})[0]
    retries = manager.retries
    assert retries.max() == 2  # nothing active: the floor
    for _ in range(10):
        manager.requests.inc()
    for _ in range(6):
        manager.pending_requests.inc()
    assert retries.max() == 4  # 25 % of 16 active + pending
    for _ in range(3):
        retries.inc()
    assert retries.can_create() and manager.retry_budget_allows()
    retries.inc()
    assert not retries.can_create() and not manager.retry_budget_allows()
    # explicit counts, as a caller that tracks its own may pass them
    assert manager.retry_budget_allows(active_requests=40, active_retries=4)
    assert not manager.retry_budget_allows(active_requests=4, active_retries=2)


def test_host_limit_counts_open_and_opening_connections() -> None:
    class Host:
        class stats:  # noqa: N801
            cx_active = 1

    limited = managers({"per_host_thresholds": [{"max_connections": 2}]})[0]
    assert limited.host_allows_connection(Host)
    assert not limited.host_allows_connection(Host, connecting=1)
    assert managers()[0].host_allows_connection(Host, connecting=100)


# --------------------------------------------------------------------------- gauges


def test_open_gauges_always_and_remaining_gauges_with_track_remaining() -> None:
    store = Store()
    default, high = managers({"thresholds": [
        {"max_connections": 2, "max_requests": 1, "track_remaining": True}]}, store=store)
    prefix = "cluster.backend.circuit_breakers."
    gauges = store.snapshot()["gauges"]
    for priority in ("default", "high"):
        for name in ("cx_open", "cx_pool_open", "rq_pending_open", "rq_open", "rq_retry_open"):
            assert gauges[f"{prefix}{priority}.{name}"] == 0
    assert gauges[f"{prefix}default.remaining_cx"] == 2
    assert gauges[f"{prefix}default.remaining_rq"] == 1
    assert gauges[f"{prefix}default.remaining_pending"] == 1024
    assert gauges[f"{prefix}default.remaining_retries"] == 3
    assert gauges[f"{prefix}default.remaining_cx_pools"] == UNLIMITED
    assert f"{prefix}high.remaining_cx" not in gauges  # HIGH has no track_remaining

    default.requests.try_acquire()
    default.connections.try_acquire()
    gauges = store.snapshot()["gauges"]
    assert gauges[f"{prefix}default.rq_open"] == 1
    assert gauges[f"{prefix}default.remaining_rq"] == 0
    assert gauges[f"{prefix}default.cx_open"] == 0
    assert gauges[f"{prefix}default.remaining_cx"] == 1
    assert gauges[f"{prefix}high.rq_open"] == 0
    store.gauges[f"{prefix}default.rq_open"].set(7)  # the gauges follow the counts, nothing else
    assert store.gauges[f"{prefix}default.rq_open"].value == 1


def test_remaining_retries_reads_zero_under_a_budget() -> None:
    store = Store()
    manager = managers({"thresholds": [{"track_remaining": True, "retry_budget": {}}]}, store=store)[0]
    assert store.gauges["cluster.backend.circuit_breakers.default.remaining_retries"].value == 0
    for _ in range(3):
        manager.retries.inc()
    # rq_retry_open follows max_retries (3) even under a budget, like Envoy's nested resource
    assert store.gauges["cluster.backend.circuit_breakers.default.rq_retry_open"].value == 1


def test_counts_belong_to_the_cluster_name_within_a_worker() -> None:
    store = Store()
    first = managers({"thresholds": [{"max_requests": 1}]}, store=store)[0]
    assert first.requests.try_acquire()
    replacement = managers({"thresholds": [{"max_requests": 2}]}, store=store)[0]  # a CDS update
    assert replacement.requests.count == 1
    assert replacement.requests.try_acquire() and not replacement.requests.try_acquire()
    other_worker = managers({"thresholds": [{"max_requests": 1}]}, store=Store())[0]
    assert other_worker.requests.count == 0


# --------------------------------------------------------------------------- shared between workers


def test_slab_slots_are_claimed_by_name(shared_slab: SharedSlab) -> None:
    one = shared_slab.claim("a")
    assert one is not None
    one[3] = 5
    again = shared_slab.claim("a")
    assert again is not None and again[3] == 5
    other = shared_slab.claim("b")
    assert other is not None and other[3] == 0
    for index in range(6):
        assert shared_slab.claim(f"more-{index}") is not None
    assert shared_slab.claim("one-too-many") is None
    assert shared_slab.claim("b") is not None  # known names still resolve when full


def test_shared_gauges_are_taken_once_when_workers_merge(shared_slab: SharedSlab) -> None:
    stores = [Store(), Store()]
    first, second = (managers({"thresholds": [{"max_requests": 2, "track_remaining": True}]}, store=store)[0]
                     for store in stores)
    assert first.requests.try_acquire()
    assert second.requests.count == 1  # the same cells
    merged = merge([store.snapshot() for store in stores])
    assert merged["gauges"]["cluster.backend.circuit_breakers.default.remaining_rq"] == 1


def test_full_slab_falls_back_to_per_worker_counts(shared_slab: SharedSlab) -> None:
    for index in range(8):
        shared_slab.claim(f"n{index}")
    manager = managers(store=Store(), name="late")[0]
    assert not manager.shared
    assert manager.requests.try_acquire() and manager.requests.count == 1


def _take_until_refused(resource: Resource, taken: Any, rounds: int) -> None:
    for _ in range(rounds):
        if resource.try_acquire():
            with taken.get_lock():
                taken.value += 1
        resource.inc()
        resource.dec()


def test_limits_are_exact_across_forked_workers(shared_slab: SharedSlab) -> None:
    manager = managers({"thresholds": [{"max_requests": 300}]}, store=Store(), name="contended")[0]
    context = multiprocessing.get_context("fork")
    taken = context.Value("i", 0)
    workers = [context.Process(target=_take_until_refused, args=(manager.requests, taken, 5000)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    assert taken.value == 300  # never one more, whoever raced
    assert manager.requests.count == 300  # the inc/dec pairs all balanced out


# --------------------------------------------------------------------------- through the proxy


class HoldingBackend:
    """A RawBackend handler that holds every request until released, one at a time or all.

    Records the order in which requests arrive and how many connections were ever open at once.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.arrived: list[str] = []
        self.releases = threading.Semaphore(0)
        self.released_all = threading.Event()
        self.open_connections = 0
        self.most_connections = 0

    def __call__(self, conn: BackendConnection) -> None:
        with self.lock:
            self.open_connections += 1
            self.most_connections = max(self.most_connections, self.open_connections)
        try:
            while (request := conn.read_request()) is not None:
                with self.lock:
                    self.arrived.append(request.target)
                while not self.released_all.is_set() and not self.releases.acquire(timeout=0.05):
                    if conn.backend.stopped.is_set():
                        return
                conn.sock.sendall(encode_response(200, [], request.target.encode()))
        finally:
            with self.lock:
                self.open_connections -= 1

    def release_one(self) -> None:
        self.releases.release()

    def release_all(self) -> None:
        self.released_all.set()


def send(port: int, path: str, out: dict[str, Message | None]) -> None:
    try:
        out[path] = get(port, path)
    except OSError:
        out[path] = None


def start_clients(port: int, paths: list[str], out: dict[str, Message | None]) -> list[threading.Thread]:
    threads = [threading.Thread(target=send, args=(port, path, out), daemon=True) for path in paths]
    for thread in threads:
        thread.start()
    return threads


def cluster_with(port: int, breakers: dict[str, Any]) -> dict[str, Any]:
    return static_cluster("backend", [port], circuit_breakers=breakers)


def assert_overflow_reply(response: Message | None) -> None:
    assert response is not None
    assert response.status == 503
    assert response.body == b"upstream connect error or disconnect/reset before headers. reset reason: overflow"
    assert response.header("x-envoy-overloaded") == "true"


def run_max_requests(tmp_path: Path, concurrency: int) -> None:
    holding = HoldingBackend()
    breakers = {"thresholds": [{"max_requests": 5, "track_remaining": True}]}
    with RawBackend(holding) as backend, http_proxy(
            tmp_path, simple_route("backend"), [cluster_with(backend.port, breakers)],
            concurrency=concurrency) as (proxy, port):
        out: dict[str, Message | None] = {}
        threads = start_clients(port, [f"/r{index}" for index in range(20)], out)
        # the 15 refused answer at once; the 5 admitted are held by the backend
        assert wait_until(lambda: len(out) == 15, timeout=20), out
        assert len(holding.arrived) == 5
        stats = proxy.stats()
        assert stats["cluster.backend.circuit_breakers.default.rq_open"] == 1
        assert stats["cluster.backend.circuit_breakers.default.remaining_rq"] == 0
        holding.release_all()
        for thread in threads:
            thread.join(20)
        statuses = sorted(response.status for response in out.values() if response is not None)
        assert statuses == [200] * 5 + [503] * 15
        for response in out.values():
            if response is not None and response.status == 503:
                assert_overflow_reply(response)
        assert len(holding.arrived) == 5  # exactly 5 ever reached the backend
        stats = wait_until(lambda: (s := proxy.stats())["cluster.backend.upstream_rq_active"] == 0 and s)
        assert stats["cluster.backend.upstream_rq_active_overflow"] == 15
        assert stats["cluster.backend.upstream_rq_pending_overflow"] == 0
        # Envoy counts a request in upstream_rq_total once a connection takes it (the pool's
        # attachStreamToClient); a refused one is charged the 503 it turns into (chargeUpstreamAbort)
        assert stats["cluster.backend.upstream_rq_total"] == 5
        assert (stats["cluster.backend.upstream_rq_200"], stats["cluster.backend.upstream_rq_503"]) == (5, 15)
        assert stats["cluster.backend.upstream_rq_completed"] == 20
        # a process-wide gauge: taken once, not summed over the workers
        assert stats["cluster.backend.circuit_breakers.default.remaining_rq"] == 5
        assert stats["cluster.backend.circuit_breakers.default.rq_open"] == 0


def test_max_requests_admits_exactly_that_many(tmp_path: Path) -> None:
    run_max_requests(tmp_path, concurrency=1)


def test_max_requests_holds_across_workers(tmp_path: Path) -> None:
    run_max_requests(tmp_path, concurrency=2)


def test_max_connections_queues_requests_and_serves_them_in_order(tmp_path: Path) -> None:
    holding = HoldingBackend()
    breakers = {"thresholds": [{"max_connections": 2, "max_pending_requests": 3}]}
    with RawBackend(holding) as backend, http_proxy(
            tmp_path, simple_route("backend"), [cluster_with(backend.port, breakers)]) as (proxy, port):
        out: dict[str, Message | None] = {}
        paths = [f"/r{index}" for index in range(6)]
        threads = []
        for index, path in enumerate(paths):  # one at a time, so the proxy sees them in this order
            threads += start_clients(port, [path], out)
            assert wait_until(lambda i=index: proxy.stats()["http.ingress.downstream_rq_total"] == i + 1)
        # 2 on the connections, 3 pending, the 6th overflows the queue at once
        assert wait_until(lambda: "/r5" in out)
        assert_overflow_reply(out["/r5"])
        stats = proxy.stats()
        assert stats["cluster.backend.upstream_rq_pending_active"] == 3
        assert stats["cluster.backend.upstream_rq_pending_overflow"] == 1
        assert stats["cluster.backend.circuit_breakers.default.cx_open"] == 1
        assert stats["cluster.backend.circuit_breakers.default.rq_pending_open"] == 1
        # Free one connection at a time: each frees exactly one place, so the queue's order is
        # what reaches the backend (releasing all at once would race two connections).
        for arrived in range(3, 6):
            holding.release_one()
            assert wait_until(lambda n=arrived: len(holding.arrived) >= n)
        for _ in range(2):
            holding.release_one()
        for thread in threads:
            thread.join(20)
        assert [out[path].status for path in paths[:5]] == [200] * 5  # type: ignore[union-attr]
        assert holding.arrived[:2] == ["/r0", "/r1"] or holding.arrived[:2] == ["/r1", "/r0"]
        assert holding.arrived[2:] == ["/r2", "/r3", "/r4"]  # the queue is first come, first served
        assert holding.most_connections == 2
        stats = proxy.stats()
        assert stats["cluster.backend.upstream_cx_total"] == 2
        assert stats["cluster.backend.upstream_cx_overflow"] >= 3
        assert stats["cluster.backend.upstream_rq_pending_total"] == 5
        assert stats["cluster.backend.upstream_rq_pending_active"] == 0


def test_zero_pending_requests_refuses_a_cold_request(tmp_path: Path) -> None:
    breakers = {"thresholds": [{"max_pending_requests": 0}]}
    with RawBackend(respond(200)) as backend, http_proxy(
            tmp_path, simple_route("backend"), [cluster_with(backend.port, breakers)]) as (proxy, port):
        assert_overflow_reply(get(port, "/"))  # waiting for a connect is pending, as in Envoy
        stats = proxy.stats()
        _, clusters = proxy.admin("GET", "/clusters")
    assert stats["cluster.backend.upstream_rq_pending_overflow"] == 1
    assert backend.connections == 0
    # never on a connection: not an upstream request (Envoy), though charged the 503 it became
    assert stats["cluster.backend.upstream_rq_total"] == 0
    assert stats["cluster.backend.upstream_rq_503"] == 1 and stats["cluster.backend.upstream_rq_5xx"] == 1
    assert f"backend::127.0.0.1:{backend.port}::rq_total::0" in clusters


def test_a_pending_request_whose_client_leaves_is_dropped(tmp_path: Path) -> None:
    holding = HoldingBackend()
    breakers = {"thresholds": [{"max_connections": 1}]}
    with RawBackend(holding) as backend, http_proxy(
            tmp_path, simple_route("backend"), [cluster_with(backend.port, breakers)]) as (proxy, port):
        out: dict[str, Message | None] = {}
        threads = start_clients(port, ["/first"], out)
        assert wait_until(lambda: holding.arrived == ["/first"])
        leaving = Client(port)
        leaving.send(encode_request("GET", "/gone"))
        assert wait_until(lambda: proxy.stats()["cluster.backend.upstream_rq_pending_active"] == 1)
        leaving.reset()
        stats = wait_until(lambda: (s := proxy.stats())["cluster.backend.upstream_rq_pending_active"] == 0 and s)
        assert stats["cluster.backend.upstream_rq_cancelled"] == 1
        threads += start_clients(port, ["/third"], out)
        assert wait_until(lambda: proxy.stats()["cluster.backend.upstream_rq_pending_active"] == 1)
        holding.release_all()
        for thread in threads:
            thread.join(20)
        assert holding.arrived == ["/first", "/third"]


def test_route_timeout_applies_while_pending(tmp_path: Path) -> None:
    holding = HoldingBackend()
    breakers = {"thresholds": [{"max_connections": 1}]}
    with RawBackend(holding) as backend, http_proxy(
            tmp_path, simple_route("backend", timeout="0.5s"), [cluster_with(backend.port, breakers)]) as (
                proxy, port):
        out: dict[str, Message | None] = {}
        threads = start_clients(port, ["/first", "/second"], out)
        for thread in threads:
            thread.join(20)
        assert [out[path].status for path in ("/first", "/second")] == [504, 504]  # type: ignore[union-attr]
        stats = proxy.stats()
        holding.release_all()
    assert stats["cluster.backend.upstream_rq_pending_active"] == 0
    assert stats["cluster.backend.upstream_rq_timeout"] == 2


def test_route_priority_high_counts_in_the_high_thresholds(tmp_path: Path) -> None:
    holding = HoldingBackend()
    breakers = {"thresholds": [{"max_requests": 5}, {"priority": "HIGH", "max_requests": 1}]}
    with RawBackend(holding) as backend, http_proxy(
            tmp_path, simple_route("backend", priority="HIGH"), [cluster_with(backend.port, breakers)]) as (
                proxy, port):
        out: dict[str, Message | None] = {}
        threads = start_clients(port, ["/a", "/b"], out)
        assert wait_until(lambda: len(out) == 1)
        assert_overflow_reply(next(iter(out.values())))
        stats = proxy.stats()
        assert stats["cluster.backend.circuit_breakers.high.rq_open"] == 1
        assert stats["cluster.backend.circuit_breakers.default.rq_open"] == 0
        holding.release_all()
        for thread in threads:
            thread.join(20)


def test_admin_shows_thresholds_and_breaker_stats(tmp_path: Path) -> None:
    breakers = {"thresholds": [
        {"max_connections": 7, "max_pending_requests": 8, "max_requests": 9, "max_retries": 2, "track_remaining": True},
        {"priority": "HIGH", "retry_budget": {"min_retry_concurrency": 4}},
    ]}
    with RawBackend(respond(200)) as backend, http_proxy(
            tmp_path, simple_route("backend"), [cluster_with(backend.port, breakers)]) as (proxy, port):
        assert get(port, "/").status == 200
        text = proxy.admin("GET", "/clusters")[1].splitlines()
        document = json.loads(proxy.admin("GET", "/clusters?format=json")[1])
        stats = proxy.stats()
        prometheus = proxy.admin("GET", "/stats/prometheus")[1]
    for line in ("backend::default_priority::max_connections::7", "backend::default_priority::max_pending_requests::8",
                 "backend::default_priority::max_requests::9", "backend::default_priority::max_retries::2",
                 "backend::high_priority::max_connections::1024", "backend::high_priority::max_retries::4"):
        assert line in text
    status = next(s for s in document["cluster_statuses"] if s["name"] == "backend")
    default, high = status["circuit_breakers"]["thresholds"]
    assert (default["max_connections"], default["max_requests"], default["max_retries"]) == (7, 9, 2)
    assert (high["priority"], high["max_retries"]) == ("HIGH", 4)  # the budget's floor, nothing active
    prefix = "cluster.backend.circuit_breakers."
    assert stats[prefix + "default.remaining_cx"] == 6  # the one pooled connection holds a slot
    assert stats[prefix + "default.remaining_rq"] == 9
    assert stats[prefix + "default.remaining_pending"] == 8
    assert stats[prefix + "default.remaining_retries"] == 2
    assert stats[prefix + "default.cx_open"] == 0
    assert stats[prefix + "high.rq_retry_open"] == 0
    assert prefix + "high.remaining_rq" not in stats
    for counter in ("upstream_cx_overflow", "upstream_rq_pending_overflow", "upstream_rq_active_overflow",
                    "upstream_rq_retry_overflow", "upstream_cx_pool_overflow"):
        assert stats[f"cluster.backend.{counter}"] == 0
    assert "circuit_breakers" in prometheus
