"""Request mirroring against a real proxy: what the mirror receives, how often, and that nothing the
mirror does (hang, refuse, fail, read slowly) reaches or slows the caller.

One proxy serves every scenario; each scenario has its own route prefix and mirror cluster so that
its stats and recorded requests are its own.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backends import (
    Client,
    Message,
    RawBackend,
    SlowReader,
    chunked_body,
    echo_backend,
    encode_request,
    http_proxy,
    never_answer,
    respond,
    wait_until,
)
from proxy_harness import ProxyProcess, free_port, static_cluster
from tulle.filters.http.router.shadow import ShadowRequest, shadow_host
from tulle.http.headers import HeaderMap
from tulle.stats.store import Store
from tulle.upstream.cluster_stats import ClusterStats
from tulle.upstream.host import NO_OUTLIER_MONITOR, HostStats

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
FAST_BODY = b"from the main cluster"
HANG_ROUTE_TIMEOUT_S = 30


def mirrored(prefix: str, policies: list[dict[str, Any]], cluster: str = "main", **action: Any) -> dict[str, Any]:
    return {"match": {"prefix": prefix},
            "route": {"cluster": cluster, "request_mirror_policies": policies, **action}}


def percent(value: int) -> dict[str, Any]:
    return {"default_value": {"numerator": value, "denominator": "HUNDRED"}}


@dataclass
class Mirroring:
    proxy: ProxyProcess
    port: int
    shadow: RawBackend  # answers 200 and records every request
    hang: RawBackend
    short_hang: RawBackend
    slow: SlowReader

    def stat(self, name: str) -> int:
        return self.proxy.stats().get(name, 0)

    def wait_stats(self, expected: dict[str, int], timeout: float = 10.0) -> None:
        def matches() -> bool:
            stats = self.proxy.stats()
            return all(stats.get(name, 0) == value for name, value in expected.items())

        if not wait_until(matches, timeout, interval=0.05):
            stats = self.proxy.stats()
            actual = {name: stats.get(name, 0) for name in expected}
            pytest.fail(f"stats {actual} != {expected}\n{self.proxy.output()[-2000:]}")

    def shadowed(self, path_prefix: str, count: int, timeout: float = 10.0) -> list[Message]:
        """The mirror's requests whose path starts with ``path_prefix``, once there are ``count``."""
        def found() -> list[Message]:
            with self.shadow.lock:
                hits = [r for r in self.shadow.requests if r.target.startswith(path_prefix)]
            return hits if len(hits) >= count else []

        return wait_until(found, timeout) or found()


@pytest.fixture(scope="module")
def mirroring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirroring]:
    tmp_path = tmp_path_factory.mktemp("mirroring")
    slow = SlowReader()
    # main: an echo of what the main cluster got; fast: a quick fixed answer, for the many-request scenarios
    with echo_backend("main") as main_port, RawBackend(respond(200, body=FAST_BODY)) as fast, \
            RawBackend(respond(200, body=b"from the mirror")) as shadow, \
            RawBackend(respond(500, body=b"mirror failure")) as failing, RawBackend(never_answer) as hang, \
            RawBackend(never_answer) as short_hang, RawBackend(never_answer) as cancel, \
            RawBackend(slow) as slow_backend:
        clusters = [static_cluster("main", [main_port]), static_cluster("fast", [fast.port])]
        for name, port in [("shadow", shadow.port), ("zero", shadow.port), ("barrier", shadow.port),
                           ("half", shadow.port), ("by-header", shadow.port), ("errors", failing.port),
                           ("hang", hang.port), ("short-hang", short_hang.port), ("refused", free_port()),
                           ("cancel", cancel.port), ("slow", slow_backend.port)]:
            clusters.append(static_cluster(name, [port]))
        routes = [
            mirrored("/mirror", [{"cluster": "shadow"}]),
            mirrored("/nosuffix", [{"cluster": "shadow", "disable_shadow_host_suffix_append": True}]),
            mirrored("/zero", [{"cluster": "zero", "runtime_fraction": percent(0)},
                               {"cluster": "barrier"}], cluster="fast"),
            mirrored("/half", [{"cluster": "half", "runtime_fraction": percent(50)}], cluster="fast"),
            mirrored("/by-header", [{"cluster_header": "x-mirror-cluster"}]),
            mirrored("/error", [{"cluster": "errors"}], cluster="fast"),
            mirrored("/hang", [{"cluster": "hang"}], cluster="fast", timeout=f"{HANG_ROUTE_TIMEOUT_S}s"),
            # the route timeout ends the hung shadows; it must never end the fast main request first
            mirrored("/short", [{"cluster": "short-hang"}], cluster="fast", timeout="2s"),
            mirrored("/refused", [{"cluster": "refused"}], cluster="fast"),
            mirrored("/cancel", [{"cluster": "cancel"}]),
            mirrored("/slow", [{"cluster": "slow"}]),
        ]
        route_config = {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]}
        # use_remote_address: x-forwarded-for is set, and must reach the mirror too
        with http_proxy(tmp_path, route_config, clusters, use_remote_address=True) as (proxy, port):
            try:
                yield Mirroring(proxy, port, shadow, hang, short_hang, slow)
            finally:
                slow.release.set()


def test_shadow_host_appends_before_the_port() -> None:
    assert shadow_host("example.com") == "example.com-shadow"
    assert shadow_host("example.com:8080") == "example.com-shadow:8080"
    assert shadow_host("[::1]:80") == "[::1]-shadow:80"
    assert shadow_host("[::1]") == "[::1]-shadow"


def test_every_request_is_mirrored_with_the_shadow_host(mirroring: Mirroring) -> None:
    replies = []
    with Client(mirroring.port) as client:
        for index in range(5):
            replies.append(client.request("GET", f"/mirror/get-{index}?q=1", [("x-probe", str(index))],
                                          host="example.com:8080"))
    assert [reply.status for reply in replies] == [200] * 5
    assert all(reply.json()["server"] == "main" for reply in replies)  # the caller sees the main cluster only
    shadows = {request.target: request for request in mirroring.shadowed("/mirror/get-", 5)}
    assert sorted(shadows) == [f"/mirror/get-{index}?q=1" for index in range(5)]
    for index, reply in enumerate(replies):
        upstream = reply.json()["headers"]  # what the main cluster got
        shadow = shadows[f"/mirror/get-{index}?q=1"]
        assert shadow.method == "GET"
        assert upstream["host"] == "example.com:8080"
        assert shadow.header("host") == "example.com-shadow:8080"
        # the very headers the main cluster got (after the HCM's and the router's additions), host aside
        assert {k: v for k, v in shadow.headers if k != "host"} == {k: v for k, v in upstream.items() if k != "host"}
        for name in ("x-probe", "x-request-id", "x-forwarded-for", "x-forwarded-proto",
                     "x-envoy-expected-rq-timeout-ms"):
            assert shadow.header(name) == upstream[name], name
    mirroring.wait_stats({"cluster.shadow.upstream_rq_total": 5, "cluster.shadow.upstream_rq_2xx": 5,
                          "cluster.shadow.upstream_rq_200": 5, "cluster.shadow.upstream_rq_active": 0})


def test_post_bodies_are_mirrored(mirroring: Mirroring) -> None:
    body = os.urandom(300 * 1024)
    with Client(mirroring.port) as client:
        sized = client.request("POST", "/mirror/post-sized", body=body)
        client.send(encode_request("POST", "/mirror/post-chunked", [("transfer-encoding", "chunked")])
                    + chunked_body(body, piece=7000))
        chunked = client.response()
        empty = client.request("POST", "/mirror/post-empty", body=b"")
    assert [reply.json()["body_length"] for reply in (sized, chunked, empty)] == [len(body), len(body), 0]
    shadows = {request.target: request for request in mirroring.shadowed("/mirror/post-", 3)}
    assert shadows["/mirror/post-sized"].body == body
    assert shadows["/mirror/post-sized"].header("content-length") == str(len(body))
    assert shadows["/mirror/post-chunked"].body == body
    assert shadows["/mirror/post-chunked"].header("transfer-encoding") == "chunked"
    assert shadows["/mirror/post-empty"].body == b""
    assert all(request.method == "POST" for request in shadows.values())


def test_disable_shadow_host_suffix_append_keeps_the_host(mirroring: Mirroring) -> None:
    with Client(mirroring.port) as client:
        assert client.request("GET", "/nosuffix/x", host="example.com:8080").status == 200
    (shadow,) = mirroring.shadowed("/nosuffix/", 1)
    assert shadow.header("host") == "example.com:8080"


def test_zero_percent_mirrors_nothing(mirroring: Mirroring) -> None:
    with Client(mirroring.port) as client:
        for index in range(20):
            assert client.request("GET", f"/zero/{index}").status == 200
    # the other policy of the same route mirrors at 100%: it is the proof the requests were considered
    mirroring.wait_stats({"cluster.barrier.upstream_rq_total": 20})
    assert mirroring.stat("cluster.zero.upstream_rq_total") == 0


def test_fifty_percent_mirrors_about_half(mirroring: Mirroring) -> None:
    count = 200
    with Client(mirroring.port) as client:
        for index in range(count):
            assert client.request("GET", f"/half/{index}").status == 200
    mirrored_count = mirroring.stat("cluster.half.upstream_rq_total")
    assert 60 <= mirrored_count <= 140, mirrored_count  # binomial(200, 0.5): 100 +- 5.6 sigma


def test_cluster_header_picks_the_mirror(mirroring: Mirroring) -> None:
    with Client(mirroring.port) as client:
        assert client.request("GET", "/by-header/named", [("x-mirror-cluster", "by-header")]).status == 200
        assert client.request("GET", "/by-header/absent").status == 200
        unknown = client.request("GET", "/by-header/unknown", [("x-mirror-cluster", "no-such-cluster")])
    assert unknown.status == 200  # a missing mirror cluster is not the caller's problem
    mirroring.wait_stats({"http.ingress.shadow_no_cluster": 1, "cluster.by-header.upstream_rq_total": 1})
    assert [r.target for r in mirroring.shadowed("/by-header/", 1)] == ["/by-header/named"]


def test_the_mirrors_500_is_invisible(mirroring: Mirroring) -> None:
    with Client(mirroring.port) as client:
        replies = [client.request("GET", f"/error/{index}") for index in range(5)]
    assert [(reply.status, reply.body) for reply in replies] == [(200, FAST_BODY)] * 5
    mirroring.wait_stats({"cluster.errors.upstream_rq_500": 5, "cluster.errors.upstream_rq_5xx": 5})
    assert mirroring.stat("http.ingress.downstream_rq_5xx") == 0


def test_a_mirror_that_never_answers_does_not_slow_the_caller(mirroring: Mirroring) -> None:
    statuses = []
    with Client(mirroring.port) as client:
        for index in range(50):
            statuses.append(client.request("GET", f"/hang/{index}").status)
    assert statuses == [200] * 50
    # every shadow was sent and is still waiting for its answer (until the 30 s route timeout): the
    # callers had theirs meanwhile, so none waited for its shadow (the client would have timed out)
    mirroring.wait_stats({"cluster.hang.upstream_rq_total": 50, "cluster.hang.upstream_rq_active": 50})


def test_a_refusing_mirror_does_not_break_the_caller(mirroring: Mirroring) -> None:
    with Client(mirroring.port) as client:
        statuses = [client.request("GET", f"/refused/{index}").status for index in range(50)]
    assert statuses == [200] * 50
    # every shadow ended; a failed connect also fails the shadows queued behind it (as in Envoy)
    mirroring.wait_stats({"cluster.refused.upstream_rq_pending_failure_eject": 50,
                          "cluster.refused.upstream_rq_pending_active": 0})
    stats = mirroring.proxy.stats()
    assert stats["cluster.refused.upstream_cx_connect_fail"] >= 1
    # none ever had a connection: none is an upstream request (Envoy counts them in attachStreamToClient)
    assert stats.get("cluster.refused.upstream_rq_total", 0) == 0
    assert stats["cluster.refused.upstream_rq_active"] == 0


def test_hung_shadows_end_at_the_route_timeout(mirroring: Mirroring) -> None:
    with Client(mirroring.port) as client:
        assert [client.request("GET", f"/short/{index}").status for index in range(3)] == [200] * 3
    mirroring.wait_stats({"cluster.short-hang.upstream_rq_timeout": 3, "cluster.short-hang.upstream_rq_active": 0,
                          "cluster.short-hang.upstream_cx_active": 0})
    assert wait_until(lambda: mirroring.short_hang.peer_closes == 3)


def test_a_client_leaving_mid_body_cancels_its_shadow(mirroring: Mirroring) -> None:
    with Client(mirroring.port) as client:
        client.send(encode_request("POST", "/cancel/upload", [("content-length", "100000")]) + b"partial")
        mirroring.wait_stats({"cluster.cancel.upstream_rq_active": 1})
    mirroring.wait_stats({"cluster.cancel.upstream_rq_tx_reset": 1, "cluster.cancel.upstream_rq_active": 0})


def test_a_mirror_reading_slowly_is_abandoned_not_waited_for(mirroring: Mirroring) -> None:
    size = 12 * MiB  # more than the kernel's socket buffers and the 1 MiB buffer limit together
    payload = b"s" * size
    with Client(mirroring.port, timeout=30) as client:
        client.send(encode_request("POST", "/slow/upload", [("content-length", str(size))]))
        # the shadow is connected and its upstream has stopped reading: the body has to go somewhere
        assert mirroring.slow.head_seen.wait(10)
        client.send(payload)
        reply = client.response()
    assert reply.status == 200
    assert reply.json()["body_length"] == size
    mirroring.wait_stats({"cluster.main.retry_or_shadow_abandoned": 1, "cluster.slow.upstream_rq_tx_reset": 1,
                          "cluster.slow.upstream_rq_active": 0})


def test_no_mirror_policy_no_shadow(tmp_path: Path) -> None:
    with RawBackend(respond(200)) as backend, socket.create_server(("127.0.0.1", 0)) as unused:
        clusters = [static_cluster("main", [backend.port]), static_cluster("idle", [unused.getsockname()[1]])]
        route_config = {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "route": {"cluster": "main"}}]}]}
        with http_proxy(tmp_path, route_config, clusters) as (proxy, port), Client(port) as client:
            assert client.request("POST", "/", body=b"abc").status == 200
            assert proxy.stats().get("cluster.idle.upstream_rq_total", 0) == 0


# --- the connecting phase, with a pool whose connect() waits until the test says so ---------------


class HeldPool:
    """No idle connection: acquire() queues the request, and the connection under way arrives when
    ``connected`` is given a result (to the oldest waiting request, else back to the pool)."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.connected: asyncio.Future[Any] = loop.create_future()
        self.released: list[tuple[Any, bool]] = []
        self.waiting: list[Any] = []
        self.cancelled: list[Any] = []
        self._delivery = loop.create_task(self._deliver())

    def acquire(self, callbacks: Any, manager: Any) -> None:
        self.waiting.append(callbacks)
        return None

    def cancel(self, callbacks: Any) -> bool:
        if callbacks not in self.waiting:
            return False
        self.waiting.remove(callbacks)
        self.cancelled.append(callbacks)
        return True

    async def _deliver(self) -> None:
        conn = await self.connected
        if self.waiting:
            self.waiting.pop(0).on_pool_ready(conn)
        else:
            self.release_unused(conn)

    def release_unused(self, conn: Any) -> None:
        self.released.append((conn, True))


@dataclass
class FakeHost:
    pool: HeldPool
    stats: HostStats
    outlier: Any = NO_OUTLIER_MONITOR


@dataclass
class FakeCluster:
    host: FakeHost
    stats: ClusterStats
    resource_manager: Any = None
    upstream_protocol: str = "HTTP/1.1"

    def choose_host(self, context: Any) -> FakeHost:
        return self.host


async def _connecting_shadow(limit: int) -> tuple[ShadowRequest, FakeCluster, Store]:
    store = Store()
    cluster = FakeCluster(FakeHost(HeldPool(), HostStats()), ClusterStats(store, "mirror"))
    headers = HeaderMap([(":method", "POST"), (":path", "/"), (":authority", "a")])
    shadow = ShadowRequest(cluster, asyncio.get_running_loop(), headers, False, 15.0, limit, store, "cluster.main.")
    shadow.start()
    await asyncio.sleep(0)
    return shadow, cluster, store


def test_body_beyond_the_limit_while_connecting_abandons_the_shadow() -> None:
    async def scenario() -> None:
        shadow, cluster, store = await _connecting_shadow(limit=10)
        assert cluster.host.pool.waiting == [shadow]  # queued in its pool for a connection
        shadow.feed(b"123456", False)
        # waiting for a connection it is pending, not yet an upstream request (Envoy's pool)
        assert shadow.active and cluster.stats.upstream_rq_active.value == 0
        assert cluster.stats.upstream_rq_total.value == 0
        shadow.feed(b"789012", False)  # 12 bytes held > 10
        assert not shadow.active
        assert store.counter("cluster.main.retry_or_shadow_abandoned").value == 1
        assert cluster.stats.upstream_rq_tx_reset.value == 1
        assert cluster.stats.upstream_rq_active.value == 0 and cluster.host.stats.rq_active == 0
        assert cluster.host.pool.cancelled == [shadow]  # it left the queue
        shadow.feed(b"more", True)  # the router keeps feeding: ignored
        # the connection that was on its way is kept warm for the next request
        connection = object()
        cluster.host.pool.connected.set_result(connection)
        await asyncio.sleep(0)
        assert cluster.host.pool.released == [(connection, True)]

    asyncio.run(scenario())


def test_cancel_while_connecting_counts_a_local_reset() -> None:
    async def scenario() -> None:
        shadow, cluster, store = await _connecting_shadow(limit=MiB)
        shadow.feed(b"part", False)
        shadow.cancel()
        shadow.cancel()  # once only
        assert cluster.stats.upstream_rq_tx_reset.value == 1 and cluster.stats.upstream_rq_active.value == 0
        assert store.counter("cluster.main.retry_or_shadow_abandoned").value == 0
        assert cluster.host.pool.cancelled == [shadow]
        connection = object()
        cluster.host.pool.connected.set_result(connection)
        await asyncio.sleep(0)
        assert cluster.host.pool.released == [(connection, True)]

    asyncio.run(scenario())
