"""End to end: a VirtualService ``mirror`` to a backend that never answers never slows the caller,
and the mirror gets the traffic (Host with ``-shadow``) at ``mirrorPercentage``."""

from __future__ import annotations

import time
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
    with Mesh(tmp_path_factory.mktemp("mirror"), "127.0.61.6") as running:
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


def test_a_hanging_mirror_never_slows_the_caller(mesh: tuple[Mesh, dict[str, RawBackend]]) -> None:
    running, backends = mesh
    blackhole, orders = backends["blackhole"], backends["orders"]
    mirrored_before = len(blackhole.requests)
    started = time.monotonic()
    for index in range(30):
        response = running.request("orders:8000", f"/order/{index}", method="POST", body=b"item=%d" % index)
        assert (response.status, response.body) == (200, b"order")
    assert time.monotonic() - started < 5.0  # each mirrored request would otherwise wait forever
    wait_until(lambda: len(blackhole.requests) >= mirrored_before + 30, 10, "the mirror to get every request")
    shadow = blackhole.requests[-1]
    assert shadow.header("host").endswith("-shadow")
    assert shadow.body.startswith(b"item=")
    assert [r.target for r in orders.requests[-30:]] == [f"/order/{index}" for index in range(30)]


def test_mirror_percentage_and_the_mirrors_errors_stay_invisible(mesh: tuple[Mesh, dict[str, RawBackend]]) -> None:
    running, backends = mesh
    audit = backends["audit"]
    before = len(audit.requests)
    statuses = {running.request("orders:8000", "/half").status for _ in range(200)}
    assert statuses == {200}  # the mirror's 500s never reach the caller
    time.sleep(0.5)
    assert 60 <= len(audit.requests) - before <= 140  # 50 %, generous bounds
