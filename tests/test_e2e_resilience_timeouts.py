"""End to end: a VirtualService ``timeout`` and ``retries.perTryTimeout``, applied to a real control
plane, enforced by a real Tulle sidecar against slow loopback backends."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from backends import BackendConnection, RawBackend, encode_response
from resilience_mesh import Mesh, wait_until

pytestmark = pytest.mark.integration
CLUSTER = "outbound|8000||slow.default.svc.cluster.local"

RULES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow}
spec:
  hosts: [slow]
  http:
  - match: [{uri: {prefix: /capped}}]
    timeout: 300ms
    route: [{destination: {host: slow, subset: sluggish}}]
  - match: [{uri: {prefix: /per-try}}]
    retries: {attempts: 2, perTryTimeout: 1500ms, retryOn: 5xx}
    route: [{destination: {host: slow}}]
  - route: [{destination: {host: slow, subset: sluggish}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: slow}
spec:
  host: slow
  # round robin, not the default least-request's random picks: every request after the first
  # starts on the sluggish host (its retry takes the quick one), so two requests always meet it
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets: [{name: sluggish, labels: {speed: slow}}]
"""


def sluggish_answer(conn: BackendConnection) -> None:
    """``/other`` is answered after 1.2 s; any other request never: only a timeout in the sidecar
    ends it, so what the client gets proves which timer fired, whatever the machine's load."""
    while (request := conn.read_request()) is not None:
        if not request.target.startswith("/other"):
            conn.wait_for_peer_close()
            return
        time.sleep(1.2)
        conn.sock.sendall(encode_response(200, body=b"done"))


def quick_answer(conn: BackendConnection) -> None:
    while conn.read_request() is not None:
        conn.sock.sendall(encode_response(200, body=b"done"))


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, RawBackend]]:
    """The mesh, and the sluggish backend (to see what reached it)."""
    sluggish, quick = RawBackend(sluggish_answer), RawBackend(quick_answer)
    with sluggish, quick, Mesh(tmp_path_factory.mktemp("timeouts")) as running:
        running.service("slow", 8000)
        running.instance("slow", "slow-1", sluggish.port, {"speed": "slow"})
        running.instance("slow", "slow-2", quick.port, {"speed": "quick"})
        running.apply(RULES)
        running.start_client({"slow:8000": 18000})
        running.wait_for_config("0.300s", "1.500s")
        running.wait_routable("slow:8000", "/capped")
        yield running, sluggish


def requests_to(backend: RawBackend, path: str) -> int:
    with backend.lock:
        return sum(1 for request in backend.requests if request.target == path)


def test_a_route_timeout_answers_504_when_the_backend_is_slower(slow: tuple[Mesh, RawBackend]) -> None:
    mesh, sluggish = slow
    before = mesh.stats().get(f"cluster.{CLUSTER}.upstream_rq_timeout", 0)
    response = mesh.request("slow:8000", "/capped/x")
    assert response.status == 504
    assert response.body == b"upstream request timeout"
    # the request reached the sluggish backend, which never answers it: the 504 is the route timeout's
    wait_until(lambda: requests_to(sluggish, "/capped/x") == 1, what="the request to reach the sluggish backend")
    # (the subset cluster is the one timed out; the stat is per cluster)
    subset = "outbound|8000|sluggish|slow.default.svc.cluster.local"
    assert mesh.stats()[f"cluster.{subset}.upstream_rq_timeout"] >= 1
    assert mesh.stats().get(f"cluster.{CLUSTER}.upstream_rq_timeout", 0) == before


def test_without_a_timeout_istio_waits_for_the_backend(slow: tuple[Mesh, RawBackend]) -> None:
    # Istio's default is no route timeout (0s) instead of Envoy's 15 s: the slow answer arrives.
    mesh, _ = slow
    response = mesh.request("slow:8000", "/other")
    assert (response.status, response.body) == (200, b"done")


def test_a_per_try_timeout_moves_on_to_another_host(slow: tuple[Mesh, RawBackend]) -> None:
    mesh, sluggish = slow
    stat = f"cluster.{CLUSTER}.upstream_rq_per_try_timeout"
    before, tried_before = mesh.stats().get(stat, 0), requests_to(sluggish, "/per-try")
    for _ in range(2):
        response = mesh.request("slow:8000", "/per-try")
        assert (response.status, response.body) == (200, b"done")
    # round robin: the second request at the latest started on the sluggish host, which never
    # answers; every try there was cut by the per-try timeout and retried on the quick host
    wait_until(lambda: mesh.stats().get(stat, 0) - before == requests_to(sluggish, "/per-try") - tried_before,
               what="the sluggish host's tries to match the per-try timeouts")
    assert mesh.stats()[stat] - before >= 1
