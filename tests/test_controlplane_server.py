"""The whole control plane against a real Tulle proxy: Istio YAML in, traffic split out."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3.base_pb2 import Node

from proxy_harness import ProxyProcess, loopback_ip
from tulle.controlplane.server import ControlPlane, proxy_identity
from tulle.samples.echo_server import start_in_thread

pytestmark = pytest.mark.integration
# the client workload's own loopback address (docs/control-plane.md); one of its own per run, so
# suites running at the same time never share its listeners (15001 and the upstream port)
CLIENT_IP = loopback_ip()
UPSTREAM_PORT = 19999  # an explicit local upstream port for reviews:9080 on the client's address

CANARY = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: %(v1)d}
    - {destination: {host: reviews, subset: v2}, weight: %(v2)d}
"""


def test_proxy_identity_reads_istio_node_ids_and_metadata() -> None:
    node = Node(id="sidecar~127.0.0.9~reviews-v2.prod~prod.svc.cluster.local")
    node.metadata.update({"LABELS": {"app": "reviews", "version": "v2"}, "SERVICE_ACCOUNT": "bookinfo-reviews"})
    identity = proxy_identity(node)
    assert (identity.ip, identity.namespace, identity.workload_name) == ("127.0.0.9", "prod", "reviews-v2")
    assert identity.label_dict() == {"app": "reviews", "version": "v2"}
    assert identity.service_account == "bookinfo-reviews" and identity.kind == "sidecar"


def _call(base: str, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
    data = None if body is None else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
    request = urllib.request.Request(base + path, data=data, method=method, headers={"content-type": content_type})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read() or b"{}")


def _through_forward_proxy(path: str = "/", headers: dict[str, str] | None = None) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://{CLIENT_IP}:15001"}))
    request = urllib.request.Request(f"http://reviews:9080{path}", headers=headers or {})
    with opener.open(request, timeout=5) as response:
        return response.headers.get("x-served-by", "-")


def _through_upstream_port(headers: dict[str, str] | None = None) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(f"http://{CLIENT_IP}:{UPSTREAM_PORT}/", headers=headers or {})
    with opener.open(request, timeout=5) as response:
        return response.headers.get("x-served-by", "-")


def test_istio_canary_reaches_a_tulle_proxy_and_shifts_traffic(tmp_path: Path) -> None:
    v1, v2 = start_in_thread("v1"), start_in_thread("v2")

    async def scenario() -> None:
        control_plane = ControlPlane(str(tmp_path / "state"), xds_address=("127.0.0.1", 0),
                                     http_address=("127.0.0.1", 0))
        xds_port, http_port = await control_plane.start()
        api = f"http://127.0.0.1:{http_port}"
        try:
            await asyncio.to_thread(_call, api, "POST", "/apis/v1/services", {
                "name": "reviews", "namespace": "default", "ports": [{"name": "http", "port": 9080}]})
            for name, backend in (("v1", v1), ("v2", v2)):
                await asyncio.to_thread(_call, api, "POST", "/apis/v1/instances", {
                    "name": f"reviews-{name}", "namespace": "default", "address": "127.0.0.1",
                    "ports": {"http": backend.server_address[1]}, "labels": {"app": "reviews", "version": name},
                    "services": ["reviews"], "ttlSeconds": 60})
            applied = await asyncio.to_thread(_call, api, "POST", "/apis/v1/resources",
                                              CANARY % {"v1": 80, "v2": 20}, "application/yaml")
            assert sorted(applied["created"]) == ["DestinationRule default/reviews", "VirtualService default/reviews"]

            bootstrap = {
                "node": {"id": f"sidecar~{CLIENT_IP}~productpage-v1.default~default.svc.cluster.local",
                         "cluster": "productpage.default",
                         "metadata": {"TULLE_AGENT": True, "NAMESPACE": "default",
                                      "LABELS": {"app": "productpage", "version": "v1"},
                                      "UPSTREAMS": {"reviews:9080": UPSTREAM_PORT}}},
                "dynamic_resources": {
                    "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                                   "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
                    "cds_config": {"ads": {}, "resource_api_version": "V3"},
                    "lds_config": {"ads": {}, "resource_api_version": "V3"}},
                "static_resources": {"clusters": [{
                    "name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
                    "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {
                        "address": {"socket_address": {"address": "127.0.0.1", "port_value": xds_port}}}}]}]}}]},
            }
            with ProxyProcess(bootstrap, tmp_path):
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    try:
                        await asyncio.to_thread(_through_forward_proxy)
                        break
                    except OSError:
                        await asyncio.sleep(0.1)
                served = Counter([await asyncio.to_thread(_through_forward_proxy) for _ in range(200)])
                assert set(served) == {"v1", "v2"} and 130 <= served["v1"] <= 190, served
                jason = {await asyncio.to_thread(_through_forward_proxy, "/", {"end-user": "jason"}) for _ in range(10)}
                assert jason == {"v2"}
                # the explicit upstream port applies the same VirtualService
                via_upstream = {await asyncio.to_thread(_through_upstream_port, {"end-user": "jason"}) for _ in range(10)}
                assert via_upstream == {"v2"}
                assert {await asyncio.to_thread(_through_upstream_port) for _ in range(40)} == {"v1", "v2"}

                status = await asyncio.to_thread(_call, api, "GET", "/debug/proxies")
                assert [p["id"] for p in status["proxies"]] == [bootstrap["node"]["id"]]
                states = {t: entry["state"] for t, entry in status["proxies"][0]["types"].items()}
                assert states == dict.fromkeys(("Cluster", "ClusterLoadAssignment", "Listener", "RouteConfiguration"), "SYNCED")

                # move all traffic to v2: one apply, pushed to the proxy within the debounce window
                await asyncio.to_thread(_call, api, "POST", "/apis/v1/resources",
                                        CANARY % {"v1": 0, "v2": 100}, "application/yaml")
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    if {await asyncio.to_thread(_through_forward_proxy) for _ in range(20)} == {"v2"}:
                        break
                    await asyncio.sleep(0.1)
                assert {await asyncio.to_thread(_through_forward_proxy) for _ in range(50)} == {"v2"}
        finally:
            await control_plane.stop()

    try:
        asyncio.run(scenario())
    finally:
        v1.shutdown()
        v2.shutdown()
