"""End to end: VirtualService ``retries`` turn a backend's 30 % of 503s into (almost) no failures."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from backends import BackendConnection, RawBackend, encode_response
from resilience_mesh import Mesh

pytestmark = pytest.mark.integration
CLUSTER = "outbound|8000||flaky.default.svc.cluster.local"

RULES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky}
spec:
  hosts: [flaky]
  http:
  - match: [{uri: {prefix: /no-retries}}]
    retries: {attempts: 0}
    route: [{destination: {host: flaky}}]
  - match: [{uri: {prefix: /status-code}}]
    retries: {attempts: 5, retryOn: "503"}
    route: [{destination: {host: flaky}}]
  - retries: {attempts: 5, retryOn: 5xx}
    route: [{destination: {host: flaky}}]
"""


class Flaky:
    """Answers 503 to 30 % of requests, at random (seeded: the same run every time)."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self.lock = threading.Lock()

    def __call__(self, conn: BackendConnection) -> None:
        while conn.read_request() is not None:
            with self.lock:
                failing = self.random.random() < 0.3
            status = 503 if failing else 200
            conn.sock.sendall(encode_response(status, body=b"unavailable" if failing else b"ok"))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    backends = [RawBackend(Flaky(1)), RawBackend(Flaky(2))]
    with backends[0], backends[1], Mesh(tmp_path_factory.mktemp("retries")) as running:
        running.service("flaky", 8000)
        for index, backend in enumerate(backends):
            running.instance("flaky", f"flaky-{index}", backend.port)
        running.apply(RULES)
        running.start_client({"flaky:8000": 18000})
        running.wait_for_config("retry_policy", "retriable_status_codes")
        running.wait_routable("flaky:8000")
        yield running


def test_without_retries_the_client_sees_the_backends_failures(mesh: Mesh) -> None:
    statuses = Counter(mesh.request("flaky:8000", "/no-retries").status for _ in range(200))
    assert 30 <= statuses[503] <= 90, statuses  # ~30 %


@pytest.mark.parametrize(("path", "count"), [("/", 300), ("/status-code", 150)])
def test_retries_turn_30_percent_of_503s_into_under_1_percent(mesh: Mesh, path: str, count: int) -> None:
    retried_before = mesh.stats().get(f"cluster.{CLUSTER}.upstream_rq_retry", 0)
    statuses = Counter(mesh.request("flaky:8000", path).status for _ in range(count))
    assert statuses[503] < count / 100, statuses  # < 1 % (0.3^6 per request with 5 retries)
    retried = mesh.stats()[f"cluster.{CLUSTER}.upstream_rq_retry"] - retried_before
    assert count * 0.15 <= retried <= count * 0.8  # about 0.43 retries per request were needed
