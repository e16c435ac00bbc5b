"""End to end: DestinationRule ``outlierDetection`` ejects the one host of three that answers 503,
and the client's success rate recovers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from backends import RawBackend, respond
from resilience_mesh import Mesh

pytestmark = pytest.mark.integration
CLUSTER = "outbound|8000||catalog.default.svc.cluster.local"

RULES = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: catalog}
spec:
  host: catalog
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: 60s
      maxEjectionPercent: 100
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, list[RawBackend]]]:
    backends = [RawBackend(respond(200, body=b"good")), RawBackend(respond(200, body=b"good")),
                RawBackend(respond(503, body=b"bad"))]
    with backends[0], backends[1], backends[2], Mesh(tmp_path_factory.mktemp("outlier")) as running:
        running.service("catalog", 8000)
        for index, backend in enumerate(backends):
            running.instance("catalog", f"catalog-{index}", backend.port)
        running.apply(RULES)
        running.start_client({"catalog:8000": 18000})
        running.wait_for_config("outlier_detection", "consecutive_5xx")
        yield running, backends


def test_the_failing_host_is_ejected_and_the_success_rate_recovers(mesh: tuple[Mesh, list[RawBackend]]) -> None:
    running, backends = mesh
    early = Counter(running.request("catalog:8000").status for _ in range(30))
    assert early[503] >= 3  # round robin reaches the bad host until it is ejected ...
    assert early[503] <= 6  # ... after its third consecutive 5xx (Envoy ejects at once)
    stats = running.stats()
    assert stats[f"cluster.{CLUSTER}.outlier_detection.ejections_enforced_consecutive_5xx"] >= 1
    assert stats[f"cluster.{CLUSTER}.outlier_detection.ejections_active"] == 1
    bad_seen = len(backends[2].requests)
    late = Counter(running.request("catalog:8000").status for _ in range(100))
    assert late == {200: 100}
    assert len(backends[2].requests) == bad_seen  # nothing more reaches the ejected host
