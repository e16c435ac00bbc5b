"""End to end: VirtualService ``fault`` (abort and delay, by percentage) through a real control plane
and a real Tulle sidecar."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest

from backends import RawBackend, respond
from resilience_mesh import Mesh

pytestmark = pytest.mark.integration

RULES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop}
spec:
  hosts: [shop]
  http:
  - match: [{uri: {prefix: /always}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: shop}}]
  - match: [{uri: {prefix: /half}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 50}}}
    route: [{destination: {host: shop}}]
  - match: [{uri: {prefix: /slow}}]
    fault: {delay: {fixedDelay: 400ms, percentage: {value: 100}}}
    route: [{destination: {host: shop}}]
  - match: [{uri: {prefix: /never}}]
    fault: {abort: {httpStatus: 500, percentage: {value: 0}}}
    route: [{destination: {host: shop}}]
  - route: [{destination: {host: shop}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, RawBackend]]:
    backend = RawBackend(respond(200, body=b"ok"))
    with backend, Mesh(tmp_path_factory.mktemp("fault")) as running:
        running.service("shop", 8000)
        running.instance("shop", "shop-1", backend.port)
        running.apply(RULES)
        running.start_client({"shop:8000": 18000})
        running.wait_for_config("envoy.filters.http.fault", "418")
        running.wait_routable("shop:8000")
        yield running, backend


def test_an_abort_answers_without_reaching_the_backend(mesh: tuple[Mesh, RawBackend]) -> None:
    running, backend = mesh
    before = len(backend.requests)
    responses = [running.request("shop:8000", "/always") for _ in range(10)]
    assert {response.status for response in responses} == {418}
    assert len(backend.requests) == before
    assert running.stats()[f"http.upstream_{running.client_ip}_18000.fault.aborts_injected"] >= 10


def test_abort_percentage(mesh: tuple[Mesh, RawBackend]) -> None:
    running, _ = mesh
    statuses = Counter(running.request("shop:8000", "/half").status for _ in range(120))
    assert set(statuses) == {200, 503}
    assert 30 <= statuses[503] <= 90, statuses  # 50 %: bounds of 5 standard deviations
    never = Counter(running.request("shop:8000", "/never").status for _ in range(30))
    assert never == {200: 30}


def test_a_delay_holds_the_request_then_forwards_it(mesh: tuple[Mesh, RawBackend]) -> None:
    running, backend = mesh
    delays = f"http.upstream_{running.client_ip}_18000.fault.delays_injected"
    before, delayed_before = len(backend.requests), running.stats().get(delays, 0)
    started = time.monotonic()
    statuses = [running.request("shop:8000", "/slow").status for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert time.monotonic() - started >= 1.2  # 3 x 400 ms
    assert len(backend.requests) == before + 3
    assert running.stats()[delays] == delayed_before + 3
    # the other routes are not delayed (counted, not timed: a loaded machine is slow anyway)
    assert running.request("shop:8000", "/").status == 200
    assert running.stats()[delays] == delayed_before + 3
