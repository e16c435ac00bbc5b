"""End to end: a VirtualService ``timeout`` and ``retries.perTryTimeout``, applied to a real control
plane, enforced by a real Tulle sidecar against slow loopback backends."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from backends import BackendConnection, RawBackend, encode_response
from resilience_mesh import Mesh

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
    retries: {attempts: 2, perTryTimeout: 200ms, retryOn: 5xx}
    route: [{destination: {host: slow}}]
  - route: [{destination: {host: slow, subset: sluggish}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: slow}
spec:
  host: slow
  subsets: [{name: sluggish, labels: {speed: slow}}]
"""


def answer_after(seconds: float) -> object:
    def handler(conn: BackendConnection) -> None:
        while conn.read_request() is not None:
            time.sleep(seconds)
            conn.sock.sendall(encode_response(200, body=b"done"))

    return handler


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    sluggish, quick = RawBackend(answer_after(1.2)), RawBackend(answer_after(0.0))
    with sluggish, quick, Mesh(tmp_path_factory.mktemp("timeouts"), "127.0.61.1") as running:
        running.service("slow", 8000)
        running.instance("slow", "slow-1", sluggish.port, {"speed": "slow"})
        running.instance("slow", "slow-2", quick.port, {"speed": "quick"})
        running.apply(RULES)
        running.start_client({"slow:8000": 18000})
        running.wait_for_config("0.300s", "0.200s")
        running.wait_routable("slow:8000", "/capped")
        yield running


def test_a_route_timeout_answers_504_when_the_backend_is_slower(mesh: Mesh) -> None:
    before = mesh.stats().get(f"cluster.{CLUSTER}.upstream_rq_timeout", 0)
    started = time.monotonic()
    response = mesh.request("slow:8000", "/capped/x")
    elapsed = time.monotonic() - started
    assert response.status == 504
    assert response.body == b"upstream request timeout"
    assert elapsed < 1.1  # the sluggish backend takes 1.2 s
    # (the subset cluster is the one timed out; the stat is per cluster)
    sluggish = "outbound|8000|sluggish|slow.default.svc.cluster.local"
    assert mesh.stats()[f"cluster.{sluggish}.upstream_rq_timeout"] >= 1
    assert mesh.stats().get(f"cluster.{CLUSTER}.upstream_rq_timeout", 0) == before


def test_without_a_timeout_istio_waits_for_the_backend(mesh: Mesh) -> None:
    # Istio's default is no route timeout (0s) instead of Envoy's 15 s: the slow answer arrives.
    response = mesh.request("slow:8000", "/other")
    assert (response.status, response.body) == (200, b"done")


def test_a_per_try_timeout_moves_on_to_another_host(mesh: Mesh) -> None:
    timings = []
    for _ in range(6):
        started = time.monotonic()
        response = mesh.request("slow:8000", "/per-try")
        timings.append(time.monotonic() - started)
        assert (response.status, response.body) == (200, b"done")
    assert max(timings) < 1.0  # never the sluggish host's 1.2 s: its try is cut at 200 ms
    assert mesh.stats()[f"cluster.{CLUSTER}.upstream_rq_per_try_timeout"] >= 1
