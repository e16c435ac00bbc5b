"""End to end: a VirtualService ``mirror`` to a backend that never answers never slows the caller,
and the mirror gets the traffic (Host with ``-shadow``) at ``mirrorPercentage``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backends import RawBackend, never_answer, respond
from resilience_mesh import Mesh, wait_until

pytestmark = pytest.mark.integration

RULES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: orders}
spec:
  hosts: [orders]
  http:
  - match: [{uri: {prefix: /half}}]
    mirror: {host: audit}
    mirrorPercentage: {value: 50}
    route: [{destination: {host: orders}}]
  - mirror: {host: blackhole}
    route: [{destination: {host: orders}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, dict[str, RawBackend]]]:
    backends = {"orders": RawBackend(respond(200, body=b"order")), "audit": RawBackend(respond(500)),
                "blackhole": RawBackend(never_answer)}
    with Mesh(tmp_path_factory.mktemp("mirror")) as running:
        try:
            for name, backend in backends.items():
                running.service(name, 8000)
                running.instance(name, f"{name}-1", backend.port)
            running.apply(RULES)
            running.start_client({"orders:8000": 18000})
            running.wait_for_config("request_mirror_policies", "outbound|8000||blackhole")
            running.wait_routable("orders:8000")
            yield running, backends
        finally:
            for backend in backends.values():
                backend.close()


def cluster_stat(running: Mesh, service: str, name: str) -> int:
    return running.stats().get(f"cluster.outbound|8000||{service}.default.svc.cluster.local.{name}", 0)


def test_a_hanging_mirror_never_slows_the_caller(mesh: tuple[Mesh, dict[str, RawBackend]]) -> None:
    running, backends = mesh
    blackhole, orders = backends["blackhole"], backends["orders"]
    mirrored_before = len(blackhole.requests)
    hanging_before = cluster_stat(running, "blackhole", "upstream_rq_active")
    for index in range(30):
        response = running.request("orders:8000", f"/order/{index}", method="POST", body=b"item=%d" % index)
        assert (response.status, response.body) == (200, b"order")
    wait_until(lambda: len(blackhole.requests) >= mirrored_before + 30, 10, "the mirror to get every request")
    # the mirror never answers: every caller had its answer while its shadow still waits (no route
    # timeout in Istio ends a shadow), so none of them waited for its shadow
    assert cluster_stat(running, "blackhole", "upstream_rq_active") == hanging_before + 30
    shadow = blackhole.requests[-1]
    assert shadow.header("host").endswith("-shadow")
    assert shadow.body.startswith(b"item=")
    assert [r.target for r in orders.requests[-30:]] == [f"/order/{index}" for index in range(30)]


def test_mirror_percentage_and_the_mirrors_errors_stay_invisible(mesh: tuple[Mesh, dict[str, RawBackend]]) -> None:
    running, backends = mesh
    audit = backends["audit"]
    before, sent_before = len(audit.requests), cluster_stat(running, "audit", "upstream_rq_total")
    statuses = {running.request("orders:8000", "/half").status for _ in range(200)}
    assert statuses == {200}  # the mirror's 500s never reach the caller
    wait_until(lambda: cluster_stat(running, "audit", "upstream_rq_active") == 0
               and cluster_stat(running, "audit", "upstream_rq_pending_active") == 0, 10, "every shadow to end")
    mirrored = cluster_stat(running, "audit", "upstream_rq_total") - sent_before
    assert len(audit.requests) - before == mirrored  # each shadow reached the mirror
    assert 60 <= mirrored <= 140  # 50 %, generous bounds
