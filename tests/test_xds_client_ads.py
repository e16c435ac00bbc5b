"""The proxy's ADS client against a scripted ADS server: a real proxy process, real backends.

The server here is a test double written for these tests (the control plane's
own server has its own suite): it records every request and sends the
responses each test scripts, so the client's protocol behaviour is visible.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.discovery.v3 import ads_pb2_grpc

from proxy_harness import ProxyProcess, free_port
from scripted_ads import ScriptedAds, assignment, eds_cluster, rds_listener, route_config
from tulle.samples.echo_server import start_in_thread
from tulle.xds_client.apply import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE

pytestmark = pytest.mark.integration


def _get(port: int, path: str = "/") -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


async def _until(predicate, timeout: float = 30.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(predicate):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not met in time")


def _served_by(port: int) -> str | None:
    try:
        status, headers, _ = _get(port)
    except OSError:
        return None
    return headers.get("x-served-by") if status == 200 else f"status {status}"


def _listening_sockets(port: int) -> int:
    """LISTEN sockets on 127.0.0.1:port (one per worker that applied the listener)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and local == f"0100007F:{port:04X}":
            count += 1
    return count


def _bootstrap(xds_port: int, delta: bool) -> dict[str, Any]:
    return {
        "node": {"id": "sidecar~127.0.0.1~reviews-v1.default~default.svc.cluster.local", "cluster": "reviews"},
        "dynamic_resources": {
            "ads_config": {"api_type": "DELTA_GRPC" if delta else "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [{
            "name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": xds_port}}}}]}]},
        }]},
    }


@pytest.mark.parametrize(("delta", "concurrency"), [(False, 1), (False, 2), (True, 1)],
                         ids=["sotw", "sotw-2-workers", "delta"])
def test_ads_programs_the_proxy_nacks_bad_updates_and_survives_the_control_plane(
        tmp_path: Path, delta: bool, concurrency: int) -> None:
    v1, v2 = start_in_thread("v1"), start_in_thread("v2")
    listen_port = free_port()

    async def scenario() -> None:
        ads = ScriptedAds()
        server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
        xds_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        ads.publish(CLUSTER_TYPE, "c1", [eds_cluster("reviews")])
        ads.publish(ENDPOINT_TYPE, "e1", [assignment("reviews", v1.server_address[1])])
        ads.publish(LISTENER_TYPE, "l1", [rds_listener("outbound_http", listen_port, "9080")])
        ads.publish(ROUTE_TYPE, "r1", [route_config("9080", "reviews", "first")])
        try:
            with ProxyProcess(_bootstrap(xds_port, delta=delta), tmp_path, concurrency=concurrency) as proxy:
                await _until(lambda: _served_by(listen_port) == "v1")
                # every worker got the config (the main process forwards what it applied to the others)
                await _until(lambda: _listening_sockets(listen_port) == concurrency)
                assert {_served_by(listen_port) for _ in range(20)} == {"v1"}
                # every type was ACKed at the version it got, and the node came on the first request
                first = ads.requests[0]
                assert first.node.id.startswith("sidecar~")
                for type_url, version in ((CLUSTER_TYPE, "c1"), (ENDPOINT_TYPE, "e1"), (LISTENER_TYPE, "l1"),
                                          (ROUTE_TYPE, "r1")):
                    acks = ads.acks(type_url)
                    assert acks, type_url
                    if not delta:
                        assert any(a.version_info == version for a in acks), type_url
                eds_requests = [r for r in ads.requests if r.type_url == ENDPOINT_TYPE]
                if delta:
                    assert "reviews" in {n for r in eds_requests for n in r.resource_names_subscribe}
                else:
                    assert list(eds_requests[-1].resource_names) == ["reviews"]
                assert _get(listen_port)[1]["x-route"] == "first"

                # a listener update that cannot work is NACKed naming the field; the old one keeps serving
                bad = rds_listener("outbound_http", listen_port, "9080")
                bad.filter_chains[0].filters[0].typed_config.Clear()
                bad.filter_chains[0].filters[0].typed_config.type_url = "type.googleapis.com/acme.v1.Nope"
                ads.publish(LISTENER_TYPE, "l2", [bad])
                await _until(lambda: bool(ads.nacks(LISTENER_TYPE)))
                nack = ads.nacks(LISTENER_TYPE)[-1]
                if not delta:
                    assert nack.version_info == "l1"  # still on the last good version
                assert "outbound_http" in nack.error_detail.message
                assert "filter_chains[0].filters[0]" in nack.error_detail.message
                assert _served_by(listen_port) == "v1"

                # a request in flight when routes and endpoints change completes on what it started with
                sent = proxy.stats()["cluster.reviews.upstream_rq_total"]
                slow = asyncio.ensure_future(asyncio.to_thread(_get, listen_port, "/delay/800"))
                # routed (on the first routes) once it went upstream
                await _until(lambda: proxy.stats()["cluster.reviews.upstream_rq_total"] == sent + 1)
                ads.publish(ROUTE_TYPE, "r1b", [route_config("9080", "reviews", "during")])
                ads.publish(ENDPOINT_TYPE, "e1b", [assignment("reviews", v1.server_address[1], v2.server_address[1])])
                status, headers, body = await slow
                assert (status, body, headers.get("x-route")) == (200, b"delayed\n", "first")
                await _until(lambda: _get(listen_port)[1].get("x-route") == "during")

                # endpoints move: traffic follows, no listener churn
                ads.publish(ENDPOINT_TYPE, "e2", [assignment("reviews", v2.server_address[1])])
                await _until(lambda: _served_by(listen_port) == "v2")
                ads.publish(ROUTE_TYPE, "r2", [route_config("9080", "reviews", "second")])
                await _until(lambda: _get(listen_port)[1].get("x-route") == "second")

                dump = json.loads(proxy.admin("GET", "/config_dump")[1])
                kinds = {c["@type"].rsplit(".", 1)[-1]: c for c in dump["configs"]}
                assert kinds["ClustersConfigDump"]["dynamic_active_clusters"][0]["cluster"]["name"] == "reviews"
                assert kinds["ListenersConfigDump"]["dynamic_listeners"][0]["name"] == "outbound_http"

                # the control plane goes away: the proxy keeps serving its last good config
                await server.stop(None)
                for _ in range(5):
                    assert _served_by(listen_port) == "v2"
                    await asyncio.sleep(0.1)
        finally:
            await server.stop(None)

    try:
        asyncio.run(scenario())
    finally:
        v1.shutdown()
        v2.shutdown()
