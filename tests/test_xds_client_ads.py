"""The proxy's ADS client against a scripted ADS server: a real proxy process and real backends,
or the client in this process on a worker that is never started (its stats and logs checked exactly).

The server here is a test double written for these tests (the control plane's
own server has its own suite): it records every request and sends the
responses each test scripts, so the client's protocol behaviour is visible.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.config.core.v3.base_pb2 import Node
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

import tulle.xds_client.ads as ads_module
from proxy_harness import ProxyProcess, free_port, http_listener, static_cluster
from scripted_ads import ScriptedAds, assignment, eds_cluster, rds_listener, route_config
from tulle.config.loader import parse_message
from tulle.samples.echo_server import start_in_thread
from tulle.server.context import ServerState
from tulle.server.worker import Worker
from tulle.xds_client.ads import AdsClient
from tulle.xds_client.apply import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE, XdsApplier
from tulle.xds_client.stats import version_hash

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
                # the xDS stats are the ADS stream's: counted once, whatever the number of workers
                stats = proxy.stats()
                for prefix in ("cluster_manager.cds.", "listener_manager.lds.", "http.outbound.rds.9080.",
                               "cluster.reviews."):
                    assert (stats[prefix + "update_attempt"], stats[prefix + "update_success"]) == (2, 1), prefix
                assert stats["control_plane.connected_state"] == 1
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



def _run_with_ads(ads: ScriptedAds, body: Callable[[int], Any]) -> None:
    """Serve ``ads`` on a free port and run ``body(xds_port)`` (a coroutine function) beside it."""

    async def scenario() -> None:
        server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
        xds_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            await body(xds_port)
        finally:
            await server.stop(None)

    asyncio.run(scenario())


def _ads_only(xds_port: int, delta: bool = False, **dynamic: Any) -> dict[str, Any]:
    """A bootstrap with an ADS stream and only the given lds_config/cds_config."""
    bootstrap = _bootstrap(xds_port, delta)
    for name in ("lds_config", "cds_config"):
        del bootstrap["dynamic_resources"][name]
    bootstrap["dynamic_resources"].update(dynamic)
    return bootstrap


def _rds_static_listener(port: int, route: str, **rds: Any) -> dict[str, Any]:
    listener = http_listener("ingress", port, {})
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["route_config"]
    hcm["rds"] = {"route_config_name": route, "config_source": {"ads": {}, **rds}}
    return listener


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_static_listener_and_cluster_get_their_routes_and_endpoints_over_ads(tmp_path: Path, delta: bool) -> None:
    v1 = start_in_thread("v1")
    listen_port = free_port()
    ads = ScriptedAds()
    ads.publish(ROUTE_TYPE, "r1", [route_config("local", "backend", "static")])
    ads.publish(ENDPOINT_TYPE, "e1", [assignment("backend", v1.server_address[1])])

    async def body(xds_port: int) -> None:
        bootstrap = _ads_only(xds_port, delta)  # neither lds_config nor cds_config
        bootstrap["static_resources"]["listeners"] = [_rds_static_listener(listen_port, "local")]
        bootstrap["static_resources"]["clusters"].append(
            {"name": "backend", "type": "EDS", "connect_timeout": "1s",
             "eds_cluster_config": {"eds_config": {"ads": {}}}})
        with ProxyProcess(bootstrap, tmp_path) as proxy:
            await _until(lambda: _served_by(listen_port) == "v1")
            assert _get(listen_port)[1]["x-route"] == "static"
            assert ads.requests[0].node.id.startswith("sidecar~")
            # only what was asked for: no listeners, no clusters
            assert {r.type_url for r in ads.requests} == {ROUTE_TYPE, ENDPOINT_TYPE}
            stats = proxy.stats()
            assert stats["http.ingress.rds.local.update_success"] == 1
            assert stats["http.ingress.rds.local.version_text"] == "r1"
            assert stats["cluster.backend.update_success"] == 1
            assert "listener_manager.lds.update_attempt" not in stats
            prometheus = proxy.admin("GET", "/stats/prometheus")[1]
            assert "envoy_control_plane_connected_state{} 1\n" in prometheus
            assert ('envoy_http_rds_update_success{envoy_http_conn_manager_prefix="ingress",'
                    'envoy_rds_route_config="local"} 1\n') in prometheus
            assert 'envoy_cluster_update_success{envoy_cluster_name="backend"} 1\n' in prometheus
            dump = json.loads(proxy.admin("GET", "/config_dump")[1])
            routes = next(c for c in dump["configs"] if c["@type"].endswith("RoutesConfigDump"))
            assert [r["route_config"]["name"] for r in routes["dynamic_route_configs"]] == ["local"]

    try:
        _run_with_ads(ads, body)
    finally:
        v1.shutdown()


def test_with_only_cds_config_no_listener_is_asked_for_or_bound(tmp_path: Path) -> None:
    listen_port = free_port()
    ads = ScriptedAds(unsolicited=(LISTENER_TYPE,))  # a server pushing listeners nobody asked for
    ads.publish(CLUSTER_TYPE, "c1", [eds_cluster("reviews")])
    ads.publish(LISTENER_TYPE, "l1", [rds_listener("outbound_http", listen_port, "9080")])

    async def body(xds_port: int) -> None:
        with ProxyProcess(_ads_only(xds_port, cds_config={"ads": {}}), tmp_path) as proxy:
            await _until(lambda: "ignoring listeners" in proxy.output() and bool(ads.acks(CLUSTER_TYPE)))
            assert LISTENER_TYPE not in {r.type_url for r in ads.requests}
            assert not ads.acks(LISTENER_TYPE) and not ads.nacks(LISTENER_TYPE)  # neither applied nor answered
            assert _listening_sockets(listen_port) == 0
            assert "listener_manager.lds.update_attempt" not in proxy.stats()
            assert proxy.admin("GET", "/listeners")[1].strip() == ""

    _run_with_ads(ads, body)


def _big_route_config(name: str, cluster: str, domains: int) -> Any:
    """One virtual host answering for many long domains, plus a catch-all."""
    config = route_config(name, cluster, "big")
    big = config.virtual_hosts.add(name="many")
    big.domains.extend(f"service-{i:06d}.{'x' * 100}.example.com" for i in range(domains))
    big.routes.add().CopyFrom(config.virtual_hosts[0].routes[0])
    return config


def test_a_response_larger_than_grpcs_4_mib_default_is_accepted(tmp_path: Path) -> None:
    v1 = start_in_thread("v1")
    listen_port = free_port()
    ads = ScriptedAds()
    big = _big_route_config("local", "backend", 40_000)
    assert big.ByteSize() > 4 * 1024 * 1024 + 512 * 1024
    ads.publish(ROUTE_TYPE, "r1", [big])

    async def body(xds_port: int) -> None:
        bootstrap = _ads_only(xds_port)
        bootstrap["static_resources"]["listeners"] = [_rds_static_listener(listen_port, "local")]
        bootstrap["static_resources"]["clusters"].append(static_cluster("backend", [v1.server_address[1]]))
        with ProxyProcess(bootstrap, tmp_path) as proxy:
            await _until(lambda: _served_by(listen_port) == "v1", timeout=60)
            await _until(lambda: bool(ads.acks(ROUTE_TYPE)))
            assert "RESOURCE_EXHAUSTED" not in proxy.output()

    try:
        _run_with_ads(ads, body)
    finally:
        v1.shutdown()


def test_a_response_over_max_receive_message_length_is_logged_once_and_retried_with_back_off(tmp_path: Path) -> None:
    listen_port = free_port()
    ads = ScriptedAds()
    ads.publish(ROUTE_TYPE, "r1", [_big_route_config("local", "backend", 100)])

    async def body(xds_port: int) -> None:
        bootstrap = _ads_only(xds_port)
        bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"][
            "max_receive_message_length"] = 1024
        bootstrap["static_resources"]["listeners"] = [_rds_static_listener(listen_port, "local")]
        bootstrap["static_resources"]["clusters"].append(static_cluster("backend", [free_port()]))
        with ProxyProcess(bootstrap, tmp_path) as proxy:
            await _until(lambda: proxy.stats().get("http.ingress.rds.local.update_failure", 0) >= 3, timeout=60)
            output = proxy.output()
            assert output.count("RESOURCE_EXHAUSTED") == 1
            assert "larger than dynamic_resources.ads_config.grpc_services[0].envoy_grpc.max_receive_message_length" \
                   " (1024 bytes)" in output
            stats = proxy.stats()
            assert stats["http.ingress.rds.local.update_success"] == 0
            assert _get(listen_port)[0] == 404  # still serving, without routes

    _run_with_ads(ads, body)

# --- the client in this process --------------------------------------------------------------
ADS_CONFIG = {"api_type": "GRPC", "transport_api_version": "V3",
              "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]}


def _worker(dynamic: dict[str, Any], listeners: list[dict[str, Any]] = ()) -> Worker:
    bootstrap = parse_message({"dynamic_resources": {"ads_config": ADS_CONFIG, **dynamic}, "static_resources": {
        "listeners": list(listeners), "clusters": [static_cluster("xds-grpc", [1])]}}, Bootstrap)
    return Worker(bootstrap, ServerState())


def _client(target: str, worker: Worker, *, delta: bool = False, wildcard: dict[str, float] | None = None,
            **options: Any) -> AdsClient:
    if wildcard is None:
        wildcard = {CLUSTER_TYPE: 0.0, LISTENER_TYPE: 0.0}
    return AdsClient(target, Node(id="sidecar~127.0.0.1~test"), XdsApplier(worker), delta=delta,
                     wildcard=wildcard, stats=worker.stats, **options)


async def _eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def _serve(servicer: Any) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


def _stat(worker: Worker, name: str) -> Any:
    """A stat's value; None until something created it."""
    for kind in (worker.stats.counters, worker.stats.gauges, worker.stats.text_readouts):
        if name in kind:
            return kind[name].value
    return None


def _retire_listeners(client: AdsClient) -> None:
    for dynamic in list(client.applier.listeners.values()):
        client.applier._retire(dynamic)


class _Jitter:
    """Stands in for the random module: records each back-off bound, draws 0, stops the client at the end."""

    def __init__(self, stop_after: int) -> None:
        self.bounds: list[float] = []
        self.stop_after = stop_after
        self.client: AdsClient | None = None

    def uniform(self, low: float, high: float) -> float:
        assert low == 0
        self.bounds.append(high)
        if len(self.bounds) == self.stop_after and self.client is not None:
            self.client.stop()
        return 0.0


def test_reconnects_back_off_exponentially_with_full_jitter_and_log_the_error_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    jitter = _Jitter(stop_after=6)
    monkeypatch.setattr(ads_module, "random", jitter)
    worker = _worker({"cds_config": {"ads": {}}})
    client = _client(f"127.0.0.1:{free_port()}", worker, wildcard={CLUSTER_TYPE: 0.0},
                     initial_backoff=0.01, max_backoff=0.04)
    jitter.client = client
    with caplog.at_level(logging.DEBUG, logger="tulle.xds"):
        asyncio.run(asyncio.wait_for(client.run(), 30))
    # Envoy's JitteredExponentialBackOffStrategy: a random delay below a bound doubling up to the maximum
    assert jitter.bounds == [0.01, 0.02, 0.04, 0.04, 0.04, 0.04]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "UNAVAILABLE" in warnings[0] and "xDS stream to" in warnings[0]
    assert sum("failed again" in r.getMessage() for r in caplog.records) == 5  # the rest at debug level
    # every failed stream is a failed update of each subscription, as Envoy counts it
    assert _stat(worker, "cluster_manager.cds.update_failure") == 6
    assert _stat(worker, "cluster_manager.cds.update_attempt") == 1 + 6
    assert _stat(worker, "control_plane.connected_state") == 0


class _OneResponseThenClose(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):
    async def StreamAggregatedResources(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        async for _request in request_iterator:
            yield discovery_pb2.DiscoveryResponse(type_url=CLUSTER_TYPE, version_info="c1", nonce="1")
            await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")


def test_back_off_starts_over_once_a_response_arrived(monkeypatch: pytest.MonkeyPatch) -> None:
    jitter = _Jitter(stop_after=3)
    monkeypatch.setattr(ads_module, "random", jitter)
    worker = _worker({"cds_config": {"ads": {}}})

    async def scenario() -> None:
        server, target = await _serve(_OneResponseThenClose())
        client = _client(target, worker, wildcard={CLUSTER_TYPE: 0.0}, initial_backoff=0.01, max_backoff=0.04)
        jitter.client = client
        try:
            await asyncio.wait_for(client.run(), 30)
        finally:
            await server.stop(None)

    asyncio.run(scenario())
    assert jitter.bounds == [0.01, 0.01, 0.01]
    assert _stat(worker, "cluster_manager.cds.update_success") == 3


def _started(client: AdsClient) -> asyncio.Task[None]:
    return asyncio.get_running_loop().create_task(client.run())


async def _shutdown(client: AdsClient, task: asyncio.Task[None], server: grpc.aio.Server) -> None:
    client.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    _retire_listeners(client)
    await server.stop(None)


def test_sotw_stats_move_as_envoys(caplog: pytest.LogCaptureFixture) -> None:
    worker = _worker({"cds_config": {"ads": {}}, "lds_config": {"ads": {}}})
    bad = rds_listener("outbound_http", 0, "9080")
    bad.filter_chains[0].filters[0].typed_config.type_url = "type.googleapis.com/acme.v1.Nope"

    async def scenario() -> None:
        ads = ScriptedAds()
        server, target = await _serve(ads)
        ads.publish(CLUSTER_TYPE, "c1", [eds_cluster("reviews"), eds_cluster("ratings")])
        ads.latest[CLUSTER_TYPE].control_plane.identifier = "scripted-1"
        ads.publish(ENDPOINT_TYPE, "e1", [assignment("reviews", 1001), assignment("ratings", 2001)])
        ads.publish(LISTENER_TYPE, "l1", [rds_listener("outbound_http", 0, "9080")])
        ads.publish(ROUTE_TYPE, "r1", [route_config("9080", "reviews", "first")])
        client = _client(target, worker)
        task = _started(client)
        stat = lambda name: _stat(worker, name)  # noqa: E731
        try:
            await _eventually(lambda: stat("http.outbound.rds.9080.update_success") == 1)
            assert stat("control_plane.connected_state") == 1
            assert stat("control_plane.identifier") == "scripted-1"
            assert stat("control_plane.rate_limit_enforced") == 0 and stat("control_plane.pending_requests") == 0
            before = int(time.time() * 1000)
            for prefix, version in (("cluster_manager.cds.", "c1"), ("listener_manager.lds.", "l1"),
                                    ("http.outbound.rds.9080.", "r1"), ("cluster.reviews.", "e1"),
                                    ("cluster.ratings.", "e1")):
                # one attempt when the subscription started, one for the update
                assert (stat(prefix + "update_attempt"), stat(prefix + "update_success")) == (2, 1), prefix
                assert (stat(prefix + "update_rejected"), stat(prefix + "update_failure")) == (0, 0), prefix
                assert stat(prefix + "init_fetch_timeout") == 0
                assert stat(prefix + "version") == version_hash(version)
                assert stat(prefix + "version_text") == version
                assert 0 < stat(prefix + "update_time") <= before
                assert worker.stats.histograms[prefix + "update_duration"].count == 1
            assert stat("http.outbound.rds.9080.config_reload") == 1
            assert stat("http.outbound.rds.9080.config_reload_time_ms") > 0

            # a partial EDS response: only the cluster it names counts an update
            ads.publish(ENDPOINT_TYPE, "e2", [assignment("reviews", 1002)])
            await _eventually(lambda: stat("cluster.reviews.update_success") == 2)
            assert stat("cluster.ratings.update_success") == 1 and stat("cluster.ratings.version_text") == "e1"
            assert [h.port for h in worker.cluster_manager.get("ratings").hosts] == [2001]

            # the same route table again is an update but not a reload; a new one is both
            ads.publish(ROUTE_TYPE, "r2", [route_config("9080", "reviews", "first")])
            await _eventually(lambda: stat("http.outbound.rds.9080.update_success") == 2)
            assert stat("http.outbound.rds.9080.config_reload") == 1
            ads.publish(ROUTE_TYPE, "r3", [route_config("9080", "reviews", "second")])
            await _eventually(lambda: stat("http.outbound.rds.9080.config_reload") == 2)

            # refused listeners: update_rejected for LDS only, the NACK logged once per distinct reason
            ads.publish(LISTENER_TYPE, "l2", [bad])
            await _eventually(lambda: stat("listener_manager.lds.update_rejected") == 1)
            ads.publish(LISTENER_TYPE, "l3", [bad])
            await _eventually(lambda: stat("listener_manager.lds.update_rejected") == 2)
            assert stat("listener_manager.lds.update_attempt") == 4
            assert stat("listener_manager.lds.version_text") == "l1"  # still the last accepted
            assert stat("cluster_manager.cds.update_rejected") == 0
            nacks = [r for r in caplog.records if r.levelno == logging.WARNING and r.getMessage().startswith("NACK")]
            assert len(nacks) == 1

            # the control plane goes away: disconnected, and every subscription counts a failed update
            await server.stop(None)
            await _eventually(lambda: stat("control_plane.connected_state") == 0)
            for prefix in ("cluster_manager.cds.", "listener_manager.lds.", "http.outbound.rds.9080.",
                           "cluster.reviews.", "cluster.ratings."):
                assert stat(prefix + "update_failure") >= 1, prefix
        finally:
            await _shutdown(client, task, server)

    with caplog.at_level(logging.WARNING, logger="tulle.xds"):
        asyncio.run(scenario())


def test_delta_stats_count_the_attempt_first_and_a_removed_assignment_as_empty() -> None:
    worker = _worker({"cds_config": {"ads": {}}})

    async def scenario() -> None:
        ads = ScriptedAds()
        server, target = await _serve(ads)
        ads.publish(CLUSTER_TYPE, "c1", [eds_cluster("reviews")])
        ads.publish(ENDPOINT_TYPE, "e1", [assignment("reviews", 1001)])
        client = _client(target, worker, delta=True, wildcard={CLUSTER_TYPE: 0.0})
        task = _started(client)
        stat = lambda name: _stat(worker, name)  # noqa: E731
        try:
            await _eventually(lambda: stat("cluster.reviews.update_success") == 1)
            assert (stat("cluster_manager.cds.update_attempt"), stat("cluster_manager.cds.update_success")) == (2, 1)
            assert stat("cluster_manager.cds.version") == version_hash("c1")  # system_version_info
            # delta removes the assignment: Envoy keeps the endpoints and counts update_empty
            ads.publish(ENDPOINT_TYPE, "e2", [])
            await _eventually(lambda: stat("cluster.reviews.update_empty") == 1)
            assert stat("cluster.reviews.update_success") == 2
            assert [h.port for h in worker.cluster_manager.get("reviews").hosts] == [1001]
        finally:
            await _shutdown(client, task, server)

    asyncio.run(scenario())


def test_initial_fetch_timeout_is_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    listener = http_listener("ingress", 0, {})
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    del hcm["route_config"]
    hcm["rds"] = {"route_config_name": "local", "config_source": {"ads": {}, "initial_fetch_timeout": "0.05s"}}
    worker = _worker({"cds_config": {"ads": {}, "initial_fetch_timeout": "0.05s"}}, [listener])

    async def scenario() -> None:
        ads = ScriptedAds()  # never answers
        server, target = await _serve(ads)
        client = _client(target, worker, wildcard={CLUSTER_TYPE: 0.05})
        task = _started(client)
        try:
            await _eventually(lambda: _stat(worker, "http.ingress.rds.local.init_fetch_timeout") == 1
                              and _stat(worker, "cluster_manager.cds.init_fetch_timeout") == 1)
            assert _stat(worker, "http.ingress.rds.local.update_attempt") == 2
            assert _stat(worker, "cluster_manager.cds.update_success") == 0
        finally:
            await _shutdown(client, task, server)

    with caplog.at_level(logging.WARNING, logger="tulle.xds"):
        asyncio.run(scenario())
    timeouts = sorted(r.getMessage() for r in caplog.records if "initial fetch" in r.getMessage())
    assert timeouts == ["xDS: initial fetch of clusters timed out after 0.05s (initial_fetch_timeout)",
                        "xDS: initial fetch of routes 'local' timed out after 0.05s (initial_fetch_timeout)"]


def test_a_shared_route_subscription_keeps_its_stats_while_any_connection_manager_uses_it() -> None:
    worker = _worker({"lds_config": {"ads": {}}})

    async def scenario() -> None:
        ads = ScriptedAds()
        server, target = await _serve(ads)
        ads.publish(LISTENER_TYPE, "l1", [rds_listener("a", 0, "shared", "a"), rds_listener("b", 0, "shared", "b")])
        ads.publish(ROUTE_TYPE, "r1", [route_config("shared", "xds-grpc")])
        client = _client(target, worker, wildcard={LISTENER_TYPE: 0.0})
        task = _started(client)
        try:
            # the first connection manager using it names the subscription's stats, as in Envoy
            await _eventually(lambda: _stat(worker, "http.a.rds.shared.update_success") == 1)
            assert _stat(worker, "http.b.rds.shared.update_success") is None
            ads.publish(LISTENER_TYPE, "l2", [rds_listener("b", 0, "shared", "b")])
            await _eventually(lambda: _stat(worker, "listener_manager.lds.update_success") == 2)
            ads.publish(ROUTE_TYPE, "r2", [route_config("shared", "xds-grpc", "second")])
            await _eventually(lambda: _stat(worker, "http.a.rds.shared.update_success") == 2)
            assert _stat(worker, "http.a.rds.shared.update_attempt") == 3  # never restarted
            assert [r.resource_names for r in ads.requests if r.type_url == ROUTE_TYPE][0] == ["shared"]
        finally:
            await _shutdown(client, task, server)

    asyncio.run(scenario())
