"""The whole control plane against a real Tulle proxy: Istio YAML in, traffic split out."""

from __future__ import annotations

import asyncio
import gc
import json
import random
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.config.core.v3.base_pb2 import Node

from proxy_harness import ProxyProcess, ads_sidecar_bootstrap, free_port, loopback_ip
from tulle.controlplane.api_token import TokenError
from tulle.controlplane.model import Resource
from tulle.controlplane.server import ControlPlane, proxy_identity
from tulle.controlplane.xds.cache import NodeStatus
from tulle.controlplane.xds.types import CLUSTER as CLUSTER_TYPE
from tulle.controlplane.xds.types import ROUTE as ROUTE_TYPE
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


def _call(api: tuple[str, str], method: str, path: str, body: Any = None, content_type: str = "application/json"
          ) -> Any:
    """``api``: the control plane's URL and its token."""
    base, token = api
    data = None if body is None else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"content-type": content_type, "authorization": f"Bearer {token}"})
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
        api = (f"http://127.0.0.1:{http_port}", control_plane.api.token)
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

            bootstrap = ads_sidecar_bootstrap(
                f"sidecar~{CLIENT_IP}~productpage-v1.default~default.svc.cluster.local", xds_port,
                "productpage.default", {"TULLE_AGENT": True, "NAMESPACE": "default",
                                        "LABELS": {"app": "productpage", "version": "v1"},
                                        "UPSTREAMS": {"reviews:9080": UPSTREAM_PORT}})
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


# --- the API's token ------------------------------------------------------------------------------


def _status_without_token(http_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/apis/v1/instances", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_the_api_token_is_made_once_in_the_state_dir_and_demanded(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def start_and_stop() -> tuple[str, int, Any]:
        control_plane = ControlPlane(str(state), xds_address=("127.0.0.1", 0), http_address=("127.0.0.1", 0))
        _, http_port = await control_plane.start()
        try:
            api = (f"http://127.0.0.1:{http_port}", control_plane.api.token)
            listed = await asyncio.to_thread(_call, api, "GET", "/apis/v1/instances")
            return control_plane.api.token, await asyncio.to_thread(_status_without_token, http_port), listed
        finally:
            await control_plane.stop()

    token, refused, listed = asyncio.run(start_and_stop())
    path = state / "api-token"
    assert path.read_text() == token + "\n" and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (refused, listed) == (401, {"items": []})
    assert asyncio.run(start_and_stop())[0] == token  # a restart keeps the token its clients hold


def test_an_in_memory_control_plane_keeps_its_token_in_a_private_file_it_removes(tmp_path: Path) -> None:
    async def scenario() -> Path:
        control_plane = ControlPlane(None, xds_address=("127.0.0.1", 0), http_address=("127.0.0.1", 0))
        path = Path(control_plane.token_file)
        await control_plane.start()
        try:
            assert path.read_text() == control_plane.api.token + "\n"
            assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        finally:
            await control_plane.stop()
        return path

    path = asyncio.run(scenario())
    assert not path.exists() and not path.parent.exists()


def test_a_given_token_file_is_used_and_a_readable_one_refused_before_anything_opens(tmp_path: Path) -> None:
    given = tmp_path / "token"
    given.write_text("g" * 40 + "\n")
    given.chmod(0o600)
    control_plane = ControlPlane(str(tmp_path / "state"), token_file=str(given))
    assert control_plane.api.token == "g" * 40 and not (tmp_path / "state" / "api-token").exists()
    control_plane.store.close()

    given.chmod(0o644)
    with pytest.raises(TokenError, match="accessible to other users"):
        ControlPlane(str(tmp_path / "other"), token_file=str(given))
    assert not (tmp_path / "other").exists()  # no store was opened


def test_xds_and_the_api_listen_on_loopback_by_default() -> None:
    control_plane = ControlPlane(None)
    try:
        assert control_plane.xds_address == ("127.0.0.1", 15010)
        assert control_plane.http_address == ("127.0.0.1", 15014)
    finally:
        control_plane.store.close()
        control_plane.remove_private_token()


ENDPOINT_TYPE = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
VM_ENTRIES = """
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: vms}
spec:
  hosts: [vms.example.internal]
  location: MESH_INTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  workloadSelector: {labels: {app: vms}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: by-name}
spec: {address: vm-1.example.internal, labels: {app: vms}}
"""


def _delivered_endpoints(control_plane: ControlPlane, node_id: str) -> dict[str, list[str]]:
    """Every ClusterLoadAssignment the node would receive, parsed as the proxy parses it (a NACK raises)."""
    from tulle.upstream.cluster import parse_assignment

    snapshot = control_plane.cache.get_snapshot(node_id)
    assert snapshot is not None
    delivered = {}
    for name, assignment in snapshot.resources(ENDPOINT_TYPE).items():
        endpoints, _ = parse_assignment(assignment, f"eds[{name}]")
        delivered[name] = sorted(endpoint.address for endpoint in endpoints)
    return delivered


def test_one_bad_endpoint_never_blocks_the_good_ones_changes() -> None:
    """A WorkloadEntry with a host name is valid Istio, but only a DNS service can use it: in this
    STATIC service's EDS it would make every proxy NACK the update, and with it every later change."""
    cluster = "outbound|80||vms.example.internal"

    async def scenario() -> None:
        control_plane = ControlPlane(None, xds_address=("127.0.0.1", 0), http_address=("127.0.0.1", 0))
        _, http_port = await control_plane.start()
        api = (f"http://127.0.0.1:{http_port}", control_plane.api.token)
        try:
            await asyncio.to_thread(_call, api, "POST", "/apis/v1/resources", VM_ENTRIES, "application/yaml")
            control_plane.registry.register("vm-2", "default", "10.0.0.2", labels={"app": "vms"})
            node = Node(id="sidecar~127.0.0.5~client.default~default.svc.cluster.local")
            control_plane._node_connected(node)
            await control_plane.push_all()
            assert _delivered_endpoints(control_plane, node.id)[cluster] == ["10.0.0.2"]

            control_plane.registry.register("vm-3", "default", "10.0.0.3", labels={"app": "vms"})
            await control_plane.push_all()
            assert _delivered_endpoints(control_plane, node.id)[cluster] == ["10.0.0.2", "10.0.0.3"]
        finally:
            await control_plane.stop()

    asyncio.run(scenario())


def test_a_change_committed_by_an_api_worker_thread_is_pushed() -> None:
    async def scenario() -> None:
        control_plane = ControlPlane(None, xds_address=("127.0.0.1", 0), http_address=("127.0.0.1", 0))
        _, http_port = await control_plane.start()
        try:
            pushes = control_plane.pushes
            await asyncio.to_thread(_call, (f"http://127.0.0.1:{http_port}", control_plane.api.token), "POST",
                                    "/apis/v1/resources",
                                    VM_ENTRIES, "application/yaml")
            deadline = time.monotonic() + 10
            while control_plane.pushes == pushes and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert control_plane.pushes > pushes
        finally:
            await control_plane.stop()

    asyncio.run(scenario())


def _healthz(http_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as response:
        return response.status


def _answered_while(entered: threading.Event, release: threading.Event, request: Any) -> Any:
    """In a thread of its own: once translation has started (``entered``), make ``request`` and keep
    what it got, then let translation go on. Old code translated on the event loop, which then
    could not answer: the request timed out (its client's timeout is only a safety net)."""
    assert entered.wait(30), "no translation started"
    try:
        return request()
    except OSError as error:
        return error
    finally:
        release.set()


def test_the_api_answers_while_the_control_plane_translates(tmp_path: Path) -> None:
    """Issue 8 item 4: translating 10,000 ServiceEntries held the event loop for ~10 s per push, and
    heartbeats and /healthz waited. Translation runs in a worker thread now: here it is made to wait
    until a heartbeat and /healthz were answered, when a proxy connects and during a push. Full
    garbage collections, which hold the GIL for as long as they scan, are put off meanwhile."""
    from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

    entered, release = threading.Event(), threading.Event()
    thresholds = gc.get_threshold()
    during: list[tuple[int, ...]] = []

    async def scenario() -> None:
        control_plane = ControlPlane(None, xds_address=("127.0.0.1", 0), http_address=("127.0.0.1", 0))
        xds_port, http_port = await control_plane.start()
        api = (f"http://127.0.0.1:{http_port}", control_plane.api.token)
        translate = control_plane.translator.resource_sets

        def held_translation(*args: Any) -> Any:
            during.append(gc.get_threshold())
            entered.set()
            release.wait(30)
            return translate(*args)

        control_plane.translator.resource_sets = held_translation  # type: ignore[method-assign]
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{xds_port}")
        try:
            lease = await asyncio.to_thread(_call, api, "POST", "/apis/v1/instances", {
                "name": "witness", "namespace": "default", "address": "127.0.0.9", "ports": {"http": 9080},
                "ttlSeconds": 60})
            beat = (api, "PUT", f"/apis/v1/instances/{lease['id']}/heartbeat")

            # A proxy connects: its first snapshot is translated.
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources()
            request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER_TYPE)
            request.node.id = "sidecar~127.0.0.5~client.default~default.svc.cluster.local"
            await call.write(request)
            health = await asyncio.to_thread(
                _answered_while, entered, release, lambda: _healthz(http_port))
            assert health == 200
            first = await asyncio.wait_for(call.read(), 30)
            assert first.type_url == CLUSTER_TYPE
            await call.write(discovery_pb2.DiscoveryRequest(
                type_url=CLUSTER_TYPE, version_info=first.version_info, response_nonce=first.nonce))

            # A push: a new service for it to translate.
            entered.clear()
            release.clear()
            await asyncio.to_thread(_call, api, "POST", "/apis/v1/resources", VM_ENTRIES, "application/yaml")
            answer = await asyncio.to_thread(_answered_while, entered, release, lambda: _call(*beat))
            assert isinstance(answer, dict), answer
            pushed = await asyncio.wait_for(call.read(), 30)
            assert len(pushed.resources) > len(first.resources)
        finally:
            release.set()
            await channel.close()
            await control_plane.stop()

    asyncio.run(scenario())
    assert during and all(seen[:2] == thresholds[:2] and seen[2] > 1_000_000 for seen in during)
    assert gc.get_threshold() == thresholds


def test_a_truncated_state_file_stops_the_start_with_a_clear_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tulle.controlplane.server import serve
    from tulle.controlplane.store import SqliteStore

    state_dir = tmp_path / "state"
    store = SqliteStore(state_dir)
    store.apply([Resource("Sidecar", "networking.istio.io/v1", "default", spec={"egress": [{"hosts": ["./*"]}]})])
    store.close()
    (state_dir / "config.db").write_bytes(b"")

    assert asyncio.run(serve(str(state_dir), ("127.0.0.1", 0), ("127.0.0.1", 0))) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tulle control-plane: error: {state_dir}/config.db: the file is empty (0 bytes)")
    assert f"tulle state restore --state-dir {state_dir}" in err and "Traceback" not in err


# --- a second control plane ------------------------------------------------------------------


def _start_control_plane(tmp_path: Path, name: str, xds: int, http: int) -> tuple[subprocess.Popen[str], Path]:
    ready = tmp_path / f"{name}.ready"
    process = subprocess.Popen(
        [sys.executable, "-m", "tulle", "control-plane", "--state-dir", str(tmp_path / name),
         "--xds-address", f"127.0.0.1:{xds}", "--http-address", f"127.0.0.1:{http}", "--ready-file", str(ready)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, ready


def _serving_or_exited(process: subprocess.Popen[str], ready: Path) -> dict[str, int] | None:
    """The bound ports once ready, None once exited (whichever comes first)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ready.exists() and ready.read_text():
            return json.loads(ready.read_text())
        if process.poll() is not None:
            return None
        time.sleep(0.05)
    raise AssertionError("neither ready nor exited")


@pytest.mark.parametrize("taken", ["xds", "http"])
def test_a_second_control_plane_on_a_port_in_use_fails_naming_it(tmp_path: Path, taken: str) -> None:
    # gRPC's default SO_REUSEPORT let a second control plane bind the same xDS port: proxies then
    # attached to either one at random and lost their config.
    first, first_ready = _start_control_plane(tmp_path, "first", 0, 0)
    try:
        ports = _serving_or_exited(first, first_ready)
        assert ports is not None, first.communicate()
        xds = ports["xds_port"] if taken == "xds" else free_port()
        http = ports["http_port"] if taken == "http" else free_port()
        second, second_ready = _start_control_plane(tmp_path, "second", xds, http)
        try:
            assert _serving_or_exited(second, second_ready) is None, "the second control plane started"
            _, stderr = second.communicate(timeout=10)
        finally:
            if second.poll() is None:
                second.kill()
                second.communicate()
        assert second.returncode == 1
        port, what, flag = (xds, "xDS", "--xds-address") if taken == "xds" else (http, "HTTP API", "--http-address")
        assert (f"tulle control-plane: error: cannot listen on 127.0.0.1:{port} for the {what}: "
                f"Address already in use (is another control plane running? choose another address with {flag})"
                in stderr), stderr
        assert "Traceback" not in stderr and "add_port.cc" not in stderr
        # nothing of the second one was left listening: its other port is free again
        other = http if taken == "xds" else xds
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", other))
        token = Path(ports["token_file"]).read_text().strip()
        assert _call((f"http://127.0.0.1:{ports['http_port']}", token), "GET", "/apis/v1/services") is not None
    finally:
        first.terminate()
        first.communicate(timeout=10)


def _service_entries(count: int, backend_port: int) -> list[Resource]:
    return [Resource("ServiceEntry", "networking.istio.io/v1", f"svc-{index}", "default", spec={
        "hosts": [f"svc-{index}.example.com"], "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
        "resolution": "STATIC", "endpoints": [{"address": "127.0.0.1", "ports": {"http": backend_port}}]})
        for index in range(count)]


def _get_through(proxy_address: str, url: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://{proxy_address}"}))
    with opener.open(urllib.request.Request(url), timeout=5) as response:
        return response.headers.get("x-served-by", "-")


def _get_host(address: str, host: str) -> str:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(urllib.request.Request(f"http://{address}/", headers={"host": host}), timeout=5) as response:
        return response.headers.get("x-served-by", "-")


async def _connected(control_plane: ControlPlane, node_id: str) -> NodeStatus:
    deadline = time.monotonic() + 60
    while (status := control_plane.cache.node_status(node_id)) is None or not status.types():
        assert time.monotonic() < deadline, f"{node_id} never connected"
        await asyncio.sleep(0.05)
    return status


async def _answer(proxy: ProxyProcess, get: Any, *args: str) -> str:
    """What ``get(*args)`` answers once the proxy serves it: a loaded machine applying 10,000
    clusters may refuse or time out requests for a while (the property here is that it gets there)."""
    deadline = time.monotonic() + 600
    while True:
        try:
            return str(await asyncio.to_thread(get, *args))
        except OSError:
            assert time.monotonic() < deadline, proxy.output()[-3000:]
            await asyncio.sleep(0.5)


async def _serves_every_route(proxy: ProxyProcess, client_ip: str) -> None:
    """Both route configurations (forward proxy and port 80) route ServiceEntry hosts."""
    forward_proxy = f"{client_ip}:15001"
    assert await _answer(proxy, _get_through, forward_proxy, "http://svc-9999.example.com/") == "external"
    assert await _answer(proxy, _get_through, forward_proxy, "http://svc-0.example.com/") == "external"
    assert await _answer(proxy, _get_host, f"{client_ip}:80", "svc-0.example.com") == "external"


@pytest.mark.slow
@pytest.mark.timeout(1200)  # minutes on a loaded 2-core machine: 10,000 services translated, then built twice
def test_ten_thousand_service_entries_reach_proxies(tmp_path: Path) -> None:
    """Issue 8: 10,000 ServiceEntries make ~7 MB of route configurations, over gRPC's 4 MiB default:
    every proxy failed with RESOURCE_EXHAUSTED and reconnected in a loop. The proxies here keep
    gRPC's default receive limit: each gets its route configurations in responses under 4 MiB."""
    backend = start_in_thread("external")
    ips = [f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{last}" for last in (2, 3)]
    node_ids = [f"sidecar~{ip}~app-{n}.default~default.svc.cluster.local" for n, ip in enumerate(ips)]

    async def scenario() -> None:
        control_plane = ControlPlane(None, xds_address=("127.0.0.1", 0), http_address=("127.0.0.1", 0))
        xds_port, http_port = await control_plane.start()
        try:
            # One proxy connected when the ServiceEntries arrive (the push), one joining afterwards
            # (its first update holds every route configuration at once).
            with ProxyProcess(ads_sidecar_bootstrap(node_ids[0], xds_port), tmp_path) as connected:
                status = await _connected(control_plane, node_ids[0])
                streams = set(status.streams)
                # Straight into the store: the API's validation of 10,000 documents is issue 8 item 4.
                await asyncio.to_thread(control_plane.store.apply, _service_entries(10_000, backend.server_address[1]))
                await _serves_every_route(connected, ips[0])
                assert set(status.streams) == streams  # one stream all along: no reconnect loop

                with ProxyProcess(ads_sidecar_bootstrap(node_ids[1], xds_port), tmp_path) as joining:
                    joined = await _connected(control_plane, node_ids[1])
                    await _serves_every_route(joining, ips[1])
                    routes = joined.types()[ROUTE_TYPE]
                    assert len(joined.streams) == 1 and routes.sent_resources == 2
                    # over 4 MiB, yet no RESOURCE_EXHAUSTED: the update went out in two responses
                    assert routes.sent_bytes > 4 * 1024 * 1024
                    assert "RESOURCE_EXHAUSTED" not in joining.output()
                assert "RESOURCE_EXHAUSTED" not in connected.output()
                api = (f"http://127.0.0.1:{http_port}", control_plane.api.token)
                view = await asyncio.to_thread(_call, api, "GET", "/debug/proxies")
                states = {type_name: entry["state"] for proxy in view["proxies"] if proxy["id"] == node_ids[0]
                          for type_name, entry in proxy["types"].items()}
                assert set(states.values()) == {"SYNCED"}, states
        finally:
            await control_plane.stop()

    try:
        asyncio.run(scenario())
    finally:
        backend.shutdown()
