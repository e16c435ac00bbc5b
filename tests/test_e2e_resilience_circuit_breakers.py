"""End to end: DestinationRule ``connectionPool`` limits are circuit breakers that cap concurrency
exactly: requests beyond http2MaxRequests, or beyond maxConnections plus http1MaxPendingRequests,
get an immediate 503 (UO) while the admitted ones are held by the backend."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from backends import BackendConnection, Message, RawBackend, encode_response
from resilience_mesh import Mesh, wait_until

pytestmark = pytest.mark.integration

RULES = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: requests-capped}
spec:
  host: requests-capped
  trafficPolicy:
    connectionPool:
      http: {http2MaxRequests: 5}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: connections-capped}
spec:
  host: connections-capped
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 2}
      http: {http1MaxPendingRequests: 3}
"""


class Holding:
    """Holds every request until ``release`` is set; counts the requests held at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.held = 0
        self.most_held = 0
        self.order: list[str] = []

    def __call__(self, conn: BackendConnection) -> None:
        while (request := conn.read_request()) is not None:
            with self.lock:
                self.held += 1
                self.most_held = max(self.most_held, self.held)
                self.order.append(request.target)
            self.release.wait(30)
            with self.lock:
                self.held -= 1
            conn.sock.sendall(encode_response(200, body=b"served"))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, dict[str, tuple[RawBackend, Holding]]]]:
    holders = {name: Holding() for name in ("requests-capped", "connections-capped")}
    backends = {name: (RawBackend(holder), holder) for name, holder in holders.items()}
    with Mesh(tmp_path_factory.mktemp("breakers")) as running:
        try:
            for name, (backend, _) in backends.items():
                running.service(name, 8000)
                running.instance(name, f"{name}-1", backend.port)
            running.apply(RULES)
            running.start_client({"requests-capped:8000": 18000, "connections-capped:8000": 18001})
            running.wait_for_config("circuit_breakers", "max_pending_requests")
            for name, (_, holder) in backends.items():  # one request each, let through, before the bursts
                holder.release.set()
                running.wait_routable(f"{name}:8000")
                holder.release.clear()
                holder.most_held = 0
            yield running, backends
        finally:
            for backend, holder in backends.values():
                holder.release.set()
                backend.close()


def _burst(mesh: Mesh, upstream: str, count: int, holder: Holding, admitted: int) -> list[Message]:
    """``count`` concurrent requests; the backend lets them go once the burst has been answered
    as far as it can be (``count - admitted`` overflows)."""
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(mesh.request, upstream, f"/{index}", timeout=20) for index in range(count)]
        wait_until(lambda: sum(f.done() for f in futures) >= count - admitted, 15, "the overflow answers")
        holder.release.set()
        return [future.result() for future in futures]


def test_http2_max_requests_caps_requests_in_flight(mesh: tuple[Mesh, dict]) -> None:
    running, backends = mesh
    backend, holder = backends["requests-capped"]
    before = len(backend.requests)
    responses = _burst(running, "requests-capped:8000", 20, holder, admitted=5)
    statuses = Counter(response.status for response in responses)
    assert statuses == {200: 5, 503: 15}
    assert holder.most_held == 5 and len(backend.requests) - before == 5
    overflowed = [response for response in responses if response.status == 503]
    assert all(response.header("x-envoy-overloaded") == "true" for response in overflowed)
    cluster = "cluster.outbound|8000||requests-capped.default.svc.cluster.local"
    assert running.stats()[f"{cluster}.upstream_rq_active_overflow"] == 15  # Envoy >= 1.38's counter


def test_max_connections_with_a_pending_queue(mesh: tuple[Mesh, dict]) -> None:
    running, backends = mesh
    backend, holder = backends["connections-capped"]
    before = len(backend.requests)
    responses = _burst(running, "connections-capped:8000", 20, holder, admitted=5)
    statuses = Counter(response.status for response in responses)
    assert statuses == {200: 5, 503: 15}  # 2 connections busy + 3 waiting, the rest overflow
    assert holder.most_held == 2 and backend.connections <= 2  # the warm-up's connection is reused
    assert len(backend.requests) - before == 5
    cluster = "cluster.outbound|8000||connections-capped.default.svc.cluster.local"
    assert running.stats()[f"{cluster}.upstream_rq_pending_overflow"] == 15
