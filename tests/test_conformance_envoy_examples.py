"""Envoy's own example bootstraps: each one runs on Tulle as it does on Envoy, or is refused naming the gap.

The corpus (``/work/shared/conformance/envoy-examples``, see its README) is the envoyproxy/examples
configs, unchanged. EXPECTATIONS below says, for every file, what Tulle must do with it. It was worked
out by reading each file against what Tulle supports, and for refusals by following Tulle's validation
order (bootstrap top level, then clusters in order, then listeners in order; within the HTTP connection
manager: its own fields, then HTTP filters, then the route table), so the field named is the FIRST
unsupported thing Tulle meets. It is not a recording of Tulle's output: a mismatch is a proxy bug.

In-scope files are rewritten for loopback (listeners and admin on free 127.0.0.1 ports, every upstream
endpoint pointed at an echo backend started here; docker-compose host names map to 127.0.0.1 through the
test-only TULLE_TEST_DNS_OVERRIDES) and then served by a real ``tulle proxy``.
"""

from __future__ import annotations

import asyncio
import http.client
import ipaddress
import json
import re
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.service.discovery.v3 import ads_pb2_grpc
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from grpc_backend import GrpcBackend, stub
from proxy_harness import ProxyProcess, free_port
from scripted_ads import ScriptedAds, assignment, eds_cluster, rds_listener, route_config
from tulle.samples import echo_server
from tulle.samples.echo_server import start_in_thread
from tulle.xds_client.apply import CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE
from ws_backend import EchoServer

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "conformance" / "envoy-examples"
CORPUS_MISSING = f"Envoy examples corpus not found at {CORPUS}"

# Field-path prefixes, to keep the table readable.
HCM = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"
HTTP_OPTIONS = "typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions']"

# Tulle's refusal, as rendered by config.errors.ConfigError: "<file>: <field path>: unsupported by Tulle: <feature>"
REFUSAL = re.compile(r"tulle proxy: error: (?P<source>.+?): (?P<field>\S+): unsupported by Tulle: (?P<feature>.+)")


# --- expectations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Refused:
    """``--mode validate`` exits 1 naming ``feature`` at ``field`` (the first unsupported thing met)."""

    feature: str
    field: str


@dataclass(frozen=True)
class NotBootstrap:
    """A resource file (LDS/CDS), not a bootstrap: refused as invalid, naming the unknown field."""

    unknown_field: str


@dataclass(frozen=True)
class Runs:
    """Validates and serves on loopback; ``check`` sends what the example is about."""

    check: Callable[[RunningExample], None]
    tls_upstreams: bool = False  # the upstreams speak TLS (passthrough examples)
    switchable_upstreams: bool = False  # the upstreams answer 503 while their server's ``unhealthy`` is set
    grpc_upstreams: bool = False  # the upstreams are gRPC servers (tests/grpc_backend.py), not echo servers
    websocket_upstreams: bool = False  # the upstreams are WebSocket echo servers (tests/ws_backend.py)
    # example-specific rewrites after the loopback ones (paths the sandbox has, moved under the test's tmp dir)
    rewrite: Callable[[dict[str, Any], Path], None] | None = None


@dataclass(frozen=True)
class RunsWithAds:
    """Validates, connects to the ADS server its xDS cluster names, and serves what it is sent."""


@dataclass
class RunningExample:
    proxy: ProxyProcess
    listener_ports: list[int]
    backend_labels: dict[tuple[str, int], str]  # original (address, port) -> label of the echo backend
    tls_certificate_der: bytes = b""
    # original (address, port) -> its echo server
    backend_servers: dict[tuple[str, int], Any] = field(default_factory=dict)
    workdir: Path | None = None  # the test's tmp dir, where ``Runs.rewrite`` put the example's files

    def wait_for_stats(self, expected: dict[str, int], timeout: float = 5.0) -> None:
        """Poll /stats until every named stat has the expected value (stats land after the response)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.proxy.stats()
            actual = {name: stats.get(name) for name in expected}
            if actual == expected or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert actual == expected, f"stats differ from expectation; proxy log:\n{self.proxy.output()[-2000:]}"


# --- talking to the proxy -------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


def http_get(port: int, path: str, headers: dict[str, str] | None = None,
             context: ssl.SSLContext | None = None) -> tuple[Reply, bytes]:
    """One GET on a fresh connection; returns the reply and, over TLS, the peer's DER certificate."""
    if context is None:
        connection: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    else:
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        reply = Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        peer = connection.sock.getpeercert(binary_form=True) if context is not None else b""
        return reply, peer or b""
    finally:
        connection.close()


def insecure_client_context() -> ssl.SSLContext:
    # The backend's certificate is self-signed; the test compares it byte for byte instead of verifying it.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# --- checks for the in-scope examples -------------------------------------------------------------


def check_websocket(path: str, *, refused_elsewhere: bool = False) -> Callable[[RunningExample], None]:
    """websocket/envoy-ws*.yaml: a WebSocket client reaches the echo server through the upgrade; with
    the upgrade enabled on one route only, another path's upgrade is refused (Envoy's 403)."""

    def check(example: RunningExample) -> None:
        port = example.listener_ports[0]
        label = example.backend_labels[("service-ws", 80)]

        async def scenario() -> None:
            async with ws_connect(f"ws://127.0.0.1:{port}{path}") as socket:
                await socket.send("hello")
                assert await socket.recv() == f"{label}:HELLO"
            if refused_elsewhere:
                with pytest.raises(InvalidStatus) as caught:
                    await ws_connect(f"ws://127.0.0.1:{port}/other")
                assert caught.value.response.status_code == 403

        asyncio.run(scenario())
        if refused_elsewhere:
            plain, _ = http_get(port, "/other")
            assert plain.status == 200 and plain.body == b"NotWebSocket\n"  # the direct response

    return check


def cors_preflight(port: int, path: str, origin: str) -> Reply:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("OPTIONS", path, headers={"origin": origin, "access-control-request-method": "GET"})
        response = connection.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def check_gzip(example: RunningExample) -> None:
    """gzip: the compressor (JSON, at least 100 bytes, window_bits 10) and the request decompressor."""
    import gzip

    port = example.listener_ports[0]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/json", headers={"accept-encoding": "gzip"})
        response = connection.getresponse()
        body = response.read()
        assert response.status == 200 and response.getheader("content-encoding") == "gzip"
        assert json.loads(gzip.decompress(body))["path"] == "/json"
        uploaded = b"0123456789abcdef" * 64
        connection.request("POST", "/upload", body=gzip.compress(uploaded), headers={"content-encoding": "gzip"})
        response = connection.getresponse()
        reply = response.read()
        if response.getheader("content-encoding") == "gzip":
            reply = gzip.decompress(reply)
        assert json.loads(reply)["body_length"] == len(uploaded)  # the upstream got it inflated
    finally:
        connection.close()
    example.wait_for_stats({"http.ingress_http.compressor.text_optimized.gzip.compressed": 1,
                            "http.ingress_http.decompressor.upload.gzip.request.decompressed": 1})


def check_cors_backend(example: RunningExample) -> None:
    """cors/backend: any origin on /cors/open, none on /cors/disabled (filter_enabled 0%), only
    *.envoyproxy.io on /cors/restricted; preflights are answered by the proxy."""
    port = example.listener_ports[0]
    open_reply = cors_preflight(port, "/cors/open", "http://example.com")
    assert open_reply.status == 200 and open_reply.headers["access-control-allow-origin"] == "http://example.com"
    assert open_reply.headers["access-control-allow-methods"] == "GET"
    assert "x-served-by" not in open_reply.headers  # answered at the proxy
    disabled = cors_preflight(port, "/cors/disabled", "http://example.com")
    assert "access-control-allow-origin" not in disabled.headers and "x-served-by" in disabled.headers
    restricted = cors_preflight(port, "/cors/restricted", "http://example.com")
    assert "access-control-allow-origin" not in restricted.headers  # forwarded, not allowed
    allowed = cors_preflight(port, "/cors/restricted", "https://www.envoyproxy.io")
    assert allowed.headers["access-control-allow-origin"] == "https://www.envoyproxy.io"
    simple, _ = http_get(port, "/cors/open", {"origin": "http://example.com"})
    assert simple.status == 200 and simple.headers["access-control-allow-origin"] == "http://example.com"
    example.wait_for_stats({"http.ingress_http.cors.origin_valid": 3, "http.ingress_http.cors.origin_invalid": 1})


def check_cors_frontend(example: RunningExample) -> None:
    """cors/frontend: the filter without policies leaves every request alone."""
    port = example.listener_ports[0]
    reply, _ = http_get(port, "/", {"origin": "http://example.com"})
    assert reply.status == 200 and "access-control-allow-origin" not in reply.headers


def check_grpc_bridge_server(example: RunningExample) -> None:
    """grpc-bridge/server: gRPC requests (route match grpc: {}) go over HTTP/2 to the gRPC service;
    anything else has no route."""
    port = example.listener_ports[0]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply, outcome = stub(channel, "Unary").with_call(b"kv", metadata=(("x-echo-trailer", "t"),), timeout=10)
    assert reply == example.backend_labels[("grpc-server", 8081)].encode() + b":kv"
    assert ("x-echo-trailer", "t") in outcome.trailing_metadata()
    plain, _ = http_get(port, "/kv")
    assert plain.status == 404  # not a gRPC request: the route does not match
    example.wait_for_stats({"cluster.backend_grpc_service.upstream_cx_http2_total": 1,
                            "http.ingress_http.no_route": 1})


def check_front_proxy_service(number: int) -> Callable[[RunningExample], None]:
    """front-proxy/service-envoy*.yaml: /service/<n> goes to cluster service<n>; other paths have no route."""

    def check(example: RunningExample) -> None:
        port = example.listener_ports[0]
        backend = example.backend_labels[(f"service{number}", 8080)]
        reply, _ = http_get(port, f"/service/{number}/trace?probe=1", {"x-probe": "kept"})
        assert reply.status == 200, reply
        assert reply.headers.get("x-served-by") == backend
        echoed = reply.json()
        assert echoed["path"] == f"/service/{number}/trace?probe=1"  # prefix match, path untouched
        assert echoed["headers"]["x-probe"] == "kept"
        assert echoed["headers"]["x-forwarded-proto"] == "http"
        assert echoed["headers"].get("x-request-id")  # generate_request_id defaults to true

        other = 3 - number
        missing, _ = http_get(port, f"/service/{other}")
        assert missing.status == 404  # Envoy's route_not_found local reply
        assert "x-served-by" not in missing.headers

        prefix = f"service_envoy_{number}"
        example.wait_for_stats({
            f"http.{prefix}.downstream_rq_2xx": 1,
            f"http.{prefix}.downstream_rq_4xx": 1,
            f"http.{prefix}.no_route": 1,
            f"cluster.service{number}.upstream_rq_2xx": 1,
        })

    return check


def check_tls_passthrough(upstream: tuple[str, int], stat_prefix: str, cluster: str,
                          websocket: bool) -> Callable[[RunningExample], None]:
    """tcp_proxy examples: TLS (and, for wss, a WebSocket handshake) goes through to the backend untouched."""

    def check(example: RunningExample) -> None:
        port = example.listener_ports[0]
        headers = {"x-probe": "through"}
        if websocket:
            headers.update({"connection": "Upgrade", "upgrade": "websocket",
                            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version": "13"})
        reply, peer_certificate = http_get(port, "/passthrough", headers, insecure_client_context())
        # The TLS session ends at the backend: its certificate, not anything of the proxy's.
        assert peer_certificate == example.tls_certificate_der
        assert reply.status == 200, reply
        assert reply.headers.get("x-served-by") == example.backend_labels[upstream]
        echoed = reply.json()
        assert echoed["path"] == "/passthrough"
        for name, value in headers.items():
            assert echoed["headers"].get(name) == value  # hop-by-hop upgrade headers too: bytes, not HTTP
        assert "x-request-id" not in echoed["headers"]  # no HTTP connection manager on the way
        example.wait_for_stats({
            f"tcp.{stat_prefix}.downstream_cx_total": 1,
            f"cluster.{cluster}.upstream_cx_total": 1,
        })

    return check


def check_route_mirror(example: RunningExample) -> None:
    """/service/1 is mirrored to service1-mirror; /service/2 to the cluster x-mirror-cluster names, if any."""
    port = example.listener_ports[0]
    for path, headers, upstream in (("/service/1", {}, ("service1", 8080)),
                                    ("/service/2", {"x-mirror-cluster": "service2-mirror"}, ("service2", 8080)),
                                    ("/service/2", {}, ("service2", 8080))):
        reply, _ = http_get(port, path, headers)
        assert reply.status == 200, reply
        # the caller only ever sees the main cluster's answer
        assert reply.headers.get("x-served-by") == example.backend_labels[upstream]
    example.wait_for_stats({
        "cluster.service1.upstream_rq_2xx": 1,
        "cluster.service1-mirror.upstream_rq_2xx": 1,
        "cluster.service2.upstream_rq_2xx": 2,
        "cluster.service2-mirror.upstream_rq_2xx": 1,  # the request without the header is not mirrored
        "http.ingress_http.downstream_rq_2xx": 3,
    })


# --- the table ------------------------------------------------------------------------------------

def check_local_ratelimit(example: RunningExample) -> None:
    """Each listener has its own bucket (2 tokens, 2 more per 5 s): two requests pass, the next three get 429."""
    stats_port, service_port = example.listener_ports
    for port, path, upstream in ((service_port, "/", ("service", 80)),
                                 (stats_port, "/stats/prometheus", ("127.0.0.1", 9901))):
        for _ in range(2):
            reply, _ = http_get(port, path)
            assert reply.status == 200, reply
            assert reply.headers.get("x-served-by") == example.backend_labels[upstream]
            assert "x-local-rate-limit" not in reply.headers
        for _ in range(3):
            reply, _ = http_get(port, path)
            assert reply.status == 429, reply
            assert reply.body == b"local_rate_limited"
            assert reply.headers.get("x-local-rate-limit") == "true"
            assert "x-served-by" not in reply.headers
    example.wait_for_stats({"http_local_rate_limiter.http_local_rate_limit.enabled": 10,
                            "http_local_rate_limiter.http_local_rate_limit.ok": 4,
                            "http_local_rate_limiter.http_local_rate_limit.rate_limited": 6,
                            "http_local_rate_limiter.http_local_rate_limit.enforced": 6,
                            "http.ingress_http.downstream_rq_4xx": 6})


def config_files_under_tmp(document: dict[str, Any], tmp: Path) -> None:
    """dynamic-config-fs: the example's lds.yaml / cds.yaml copied under ``tmp`` (the sandbox's
    /var/lib/envoy), the listener on a free loopback port (written to ``tmp/lds-port``), the cluster
    at a port where nothing listens until the check moves a new cds.yaml into place."""
    configs = CORPUS / "dynamic-config-fs" / "configs"
    lds = yaml.safe_load((configs / "lds.yaml").read_text())
    port = free_port()
    lds["resources"][0]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
    (tmp / "lds-port").write_text(str(port))
    cds = yaml.safe_load((configs / "cds.yaml").read_text())
    cds["resources"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"] = {"address": "127.0.0.1", "port_value": free_port()}
    (tmp / "lds.yaml").write_text(yaml.safe_dump(lds))
    (tmp / "cds.yaml").write_text(yaml.safe_dump(cds))
    dynamic = document["dynamic_resources"]
    dynamic["lds_config"]["path_config_source"]["path"] = str(tmp / "lds.yaml")
    dynamic["cds_config"]["path_config_source"]["path"] = str(tmp / "cds.yaml")


def check_dynamic_config_fs(example: RunningExample) -> None:
    """The sandbox's walk-through: a request through listener_0, then the cluster's address changed
    with ``sed`` into a copy and ``mv`` over cds.yaml; the proxy follows the file."""
    assert example.workdir is not None
    port = int((example.workdir / "lds-port").read_text())
    down, _ = http_get(port, "/")
    assert down.status == 503  # the cluster's first address has nothing listening
    backend = start_in_thread("service1")
    try:
        cds_path = example.workdir / "cds.yaml"
        cds = yaml.safe_load(cds_path.read_text())
        cds["resources"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"]["port_value"] = backend.server_address[1]
        staged = example.workdir / "cds.yaml.new"
        staged.write_text(yaml.safe_dump(cds))
        staged.replace(cds_path)
        deadline = time.monotonic() + 10
        while True:
            reply, _ = http_get(port, "/")
            if reply.status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert reply.status == 200 and reply.headers.get("x-served-by") == "service1"
        example.wait_for_stats({"cluster_manager.cds.update_success": 2, "listener_manager.lds.update_success": 1})
    finally:
        backend.shutdown()
        backend.server_close()


def runtime_root_under_tmp(document: dict[str, Any], tmp: Path) -> None:
    """The disk layers' symlink_root (the sandbox's /srv/runtime/current) moves under ``tmp``; its parent
    directory exists, as in the sandbox's image, and the symlink does not until a script swaps it in."""
    for layer in document["layered_runtime"]["layers"]:
        disk = layer.get("disk_layer")
        if disk is not None:
            disk["symlink_root"] = str(tmp / disk["symlink_root"].lstrip("/"))
            Path(disk["symlink_root"]).parent.mkdir(parents=True, exist_ok=True)


def check_fault_injection(example: RunningExample) -> None:
    """The sandbox's enable/disable scripts: write the runtime files under /srv/runtime/v1/envoy, then
    ``ln -s /srv/runtime/v1 new && mv -Tf new current``. Abort at 100% -> 503 (flag FI); delay at 100% ->
    the configured 3 s; both files removed -> normal service again."""
    assert example.workdir is not None
    port = example.listener_ports[0]
    runtime_root = example.workdir / "srv" / "runtime"
    fault_dir = runtime_root / "v1" / "envoy" / "fault" / "http"

    def write(key: str, value: str) -> None:
        path = fault_dir / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")  # echo '100' > ...

    def swap(expected_entries: set[str]) -> None:
        new = runtime_root / "new"
        new.symlink_to(runtime_root / "v1")
        new.replace(runtime_root / "current")  # mv -Tf new current: a rename over the old link
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status, body = example.proxy.admin("GET", "/runtime")
            if status == 200 and set(json.loads(body)["entries"]) == expected_entries:
                return
            time.sleep(0.05)
        raise AssertionError(f"runtime not reloaded: {body}\n{example.proxy.output()[-2000:]}")

    reply, _ = http_get(port, "/")
    assert reply.status == 200 and reply.headers.get("x-served-by") == example.backend_labels[("backend", 80)]

    write("abort/abort_percent", "100")
    write("abort/http_status", "503")
    swap({"fault.http.abort.abort_percent", "fault.http.abort.http_status"})
    for _ in range(3):
        reply, _ = http_get(port, "/")
        assert reply.status == 503 and reply.body == b"fault filter abort", reply
        assert "x-served-by" not in reply.headers
    example.wait_for_stats({"http.ingress_http.fault.aborts_injected": 3, "runtime.num_layers": 1})
    deadline = time.monotonic() + 5  # the stdout access log flushes within a second
    while " 503 FI " not in example.proxy.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert " 503 FI " in example.proxy.output()

    (fault_dir / "abort" / "abort_percent").unlink()
    (fault_dir / "abort" / "http_status").unlink()
    write("delay/fixed_delay_percent", "100")
    swap({"fault.http.delay.fixed_delay_percent"})
    started = time.monotonic()
    reply, _ = http_get(port, "/")
    assert reply.status == 200 and time.monotonic() - started >= 2.5, reply
    example.wait_for_stats({"http.ingress_http.fault.delays_injected": 1})

    (fault_dir / "delay" / "fixed_delay_percent").unlink()
    swap(set())
    started = time.monotonic()
    reply, _ = http_get(port, "/")
    assert reply.status == 200 and time.monotonic() - started < 2.5, reply
    example.wait_for_stats({"http.ingress_http.fault.aborts_injected": 3,
                            "http.ingress_http.fault.delays_injected": 1,
                            "runtime.load_success": 4})


class SwitchableEchoHandler(echo_server.EchoHandler):
    """The echo backend with the locality sandbox service's switch: while its server's ``unhealthy``
    is set (the sandbox's ``/unhealthy``) every request gets 503, health checks included."""

    def _handle(self) -> None:
        if getattr(self.server, "unhealthy", False):
            self._read_body()
            self._send(503, b"Unhealthy\n", "text/plain")
            return
        super()._handle()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


def check_locality_load_balancing(example: RunningExample) -> None:
    """The sandbox's steps: P0 local-1 takes everything; local-1 down -> P1's local-2 and remote-1 split
    50:50 (locality weights 1:1); local-2 down too -> P1 is 50% healthy, so ~70% to remote-1 and ~30%
    spills to P2's remote-2; both back -> local-1 again. Health comes from the example's HTTP checks."""
    port = example.listener_ports[0]
    names = ("local-1", "local-2", "remote-1", "remote-2")
    servers = {name: example.backend_servers[(f"backend-{name}", 8080)] for name in names}
    by_label = {example.backend_labels[(f"backend-{name}", 8080)]: name for name in names}

    def served(requests: int = 100) -> Counter[str]:
        replies = [http_get(port, "/")[0] for _ in range(requests)]
        assert all(reply.status == 200 for reply in replies), [reply.status for reply in replies]
        return Counter(by_label[reply.headers["x-served-by"]] for reply in replies)

    def health_flags(name: str) -> str:
        marker = f"::127.0.0.1:{servers[name].server_address[1]}::health_flags::"
        lines = example.proxy.admin("GET", "/clusters")[1].splitlines()
        return next((line.split(marker, 1)[1] for line in lines if marker in line), "")

    def set_healthy(name: str, healthy: bool) -> None:
        servers[name].unhealthy = not healthy
        expected = "healthy" if healthy else "/failed_active_hc"
        deadline = time.monotonic() + 10  # the example checks every 2 s
        while health_flags(name) != expected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health_flags(name) == expected, example.proxy.output()[-2000:]

    assert served() == {"local-1": 100}
    set_healthy("local-1", False)
    assert served() == {"local-2": 50, "remote-1": 50}
    set_healthy("local-2", False)
    split = served(200)
    assert set(split) == {"remote-1", "remote-2"}, split
    assert 110 <= split["remote-1"] <= 170, split  # 70% of 200, give or take the random priority pick
    set_healthy("local-1", True)
    set_healthy("local-2", True)
    assert served() == {"local-1": 100}
    example.wait_for_stats({"cluster.backend.lb_healthy_panic": 0, "cluster.backend.membership_healthy": 4})


TRANSPORT_SOCKET = "transport_socket"
TLS_CLUSTER = Refused(TRANSPORT_SOCKET, "static_resources.clusters[0].transport_socket")
LISTENER_FILTERS = Refused("listener_filters", "static_resources.listeners[0].listener_filters")
HCM_TRACING = Refused("tracing", f"{HCM}.tracing")
NOT_A_BOOTSTRAP = NotBootstrap("resources")


def http_filter(feature: str, index: int = 0) -> Refused:
    return Refused(feature, f"{HCM}.http_filters[{index}]")


EXPECTATIONS: dict[str, Refused | NotBootstrap | Runs] = {
    # per-route CORS policies at the virtual host, overridden setting by setting on two routes
    "cors/backend/envoy.yaml": Runs(check_cors_backend),
    "cors/frontend/envoy.yaml": Runs(check_cors_frontend),
    # the csrf example lists cors (now supported) before csrf
    "csrf/samesite/envoy.yaml": http_filter("envoy.filters.http.csrf", 1),
    # its cluster is plain; the listener asks for tls_inspector (and a TLS filter chain after it)
    "double-proxy/envoy-backend.yaml": LISTENER_FILTERS,
    # upstream mTLS on the only cluster
    "double-proxy/envoy-frontend.yaml": TLS_CLUSTER,
    # ADS over gRPC to a control plane, as in the example (go-control-plane there, a scripted one here)
    "dynamic-config-cp/envoy.yaml": RunsWithAds(),
    "dynamic-config-fs/configs/cds.yaml": NOT_A_BOOTSTRAP,
    "dynamic-config-fs/configs/lds.yaml": NOT_A_BOOTSTRAP,
    # file-based LDS/CDS, and the cluster's address changed by moving a new file into place
    "dynamic-config-fs/envoy.yaml": Runs(check_dynamic_config_fs, rewrite=config_files_under_tmp),
    # faults at 0% switched on and off through the runtime's disk layer, as the sandbox's scripts do
    "fault-injection/envoy.yaml": Runs(check_fault_injection, rewrite=runtime_root_under_tmp),
    # its static runtime layer is accepted; the second listener terminates TLS
    "front-proxy/envoy.yaml": Refused(TRANSPORT_SOCKET,
                                      "static_resources.listeners[1].filter_chains[0].transport_socket"),
    "front-proxy/service-envoy-2.yaml": Runs(check_front_proxy_service(2)),
    "front-proxy/service-envoy.yaml": Runs(check_front_proxy_service(1)),
    # its LOGICAL_DNS cluster asks only for HTTP/1.1 and the HCM's add_user_agent is honoured; the
    # grpc_http1_bridge filter is not (yet)
    "grpc-bridge/client/envoy-proxy.yaml": http_filter("envoy.filters.http.grpc_http1_bridge"),
    # gRPC-only route, HTTP/2 upstream cluster to a real gRPC server
    "grpc-bridge/server/envoy-proxy.yaml": Runs(check_grpc_bridge_server, grpc_upstreams=True),
    # JSON responses gzip-compressed for clients that accept it, gzip request bodies inflated
    "gzip/envoy.yaml": Runs(check_gzip),
    "jaeger-tracing/envoy.yaml": HCM_TRACING,
    # two listeners, each with its own token bucket (2 tokens, 2 more per 5 s)
    "local_ratelimit/envoy.yaml": Runs(check_local_ratelimit),
    # priorities and locality weighted load balancing, driven by the example's HTTP health checks
    "locality-load-balancing/envoy.yaml": Runs(check_locality_load_balancing, switchable_upstreams=True),
    # the filter has a custom name: the refusal names it by its type
    "lua/envoy.yaml": http_filter("envoy.extensions.filters.http.lua.v3.Lua"),
    # its HTTP/2 cluster to the OTLP collector is accepted; HCM tracing is the telemetry issue's
    "opentelemetry/envoy-1.yaml": HCM_TRACING,
    "opentelemetry/envoy-front-proxy.yaml": HCM_TRACING,
    "rbac/envoy.yaml": http_filter("envoy.filters.http.rbac"),
    "redis/envoy.yaml": Refused("envoy.filters.network.redis_proxy",
                                "static_resources.listeners[0].filter_chains[0].filters[0]"),
    "route-mirror/envoy.yaml": Runs(check_route_mirror),
    # listener_filters (field 9) is checked before the three filter chains
    "tls-inspector/envoy.yaml": LISTENER_FILTERS,
    "tls-sni/envoy-client.yaml": TLS_CLUSTER,
    "tls-sni/envoy.yaml": LISTENER_FILTERS,
    "tls/envoy-http-https.yaml": TLS_CLUSTER,
    # plain cluster; downstream TLS on the filter chain
    "tls/envoy-https-http.yaml": Refused(TRANSPORT_SOCKET,
                                         "static_resources.listeners[0].filter_chains[0].transport_socket"),
    # clusters are built first: the upstream TLS is met before the listener's
    "tls/envoy-https-https.yaml": TLS_CLUSTER,
    "tls/envoy-https-passthrough.yaml": Runs(
        check_tls_passthrough(("service-https", 443), "https_passthrough", "service-https", websocket=False),
        tls_upstreams=True),
    # Envoy parses enums case-insensitively (codec_type: auto, type: strict_dns); the first unsupported
    # thing is then the second cluster's upstream_http_protocol_options (before its http2 and wasm filter)
    "wasm-cc/envoy.yaml": Refused(
        "upstream_http_protocol_options", f"static_resources.clusters[1].{HTTP_OPTIONS}.upstream_http_protocol_options"),
    # the route alone enables the upgrade (the connection manager lists none), as Envoy allows
    "websocket/envoy-ws-route.yaml": Runs(check_websocket("/ws", refused_elsewhere=True), websocket_upstreams=True),
    "websocket/envoy-ws.yaml": Runs(check_websocket("/"), websocket_upstreams=True),
    "websocket/envoy-wss-passthrough.yaml": Runs(
        check_tls_passthrough(("service-wss", 443), "wss_passthrough", "service_wss_passthrough", websocket=True),
        tls_upstreams=True),
    # upstream TLS on the cluster is met before the listener's TLS and upgrade_configs
    "websocket/envoy-wss.yaml": TLS_CLUSTER,
    "zipkin/envoy-1.yaml": HCM_TRACING,
    "zipkin/envoy-front-proxy.yaml": HCM_TRACING,
}


def corpus_files() -> list[str]:
    if not CORPUS.is_dir():
        return sorted(EXPECTATIONS)
    return sorted(path.relative_to(CORPUS).as_posix() for path in CORPUS.rglob("*.yaml"))


def run_validate(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tulle", "proxy", "--mode", "validate", "-c", str(config)],
        capture_output=True, text=True, timeout=60,
    )


# --- loopback rewriting ---------------------------------------------------------------------------


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True


def _endpoint_socket_addresses(cluster: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for locality in cluster.get("load_assignment", {}).get("endpoints", []):
        for lb_endpoint in locality.get("lb_endpoints", []):
            yield lb_endpoint["endpoint"]["address"]["socket_address"]


def upstream_addresses(document: dict[str, Any]) -> list[tuple[str, int]]:
    found = {
        (socket_address["address"], socket_address["port_value"])
        for cluster in document.get("static_resources", {}).get("clusters", [])
        for socket_address in _endpoint_socket_addresses(cluster)
    }
    return sorted(found)


def rewrite_for_loopback(document: dict[str, Any], backend_ports: dict[tuple[str, int], int]) -> list[int]:
    """Point listeners, admin and endpoints at loopback (in place); returns the new listener ports."""
    listener_ports = []
    for listener in document.get("static_resources", {}).get("listeners", []):
        socket_address = listener["address"]["socket_address"]
        socket_address["address"] = "127.0.0.1"
        socket_address["port_value"] = free_port()
        listener_ports.append(socket_address["port_value"])
    for cluster in document.get("static_resources", {}).get("clusters", []):
        for locality in cluster.get("load_assignment", {}).get("endpoints", []):
            for lb_endpoint in locality.get("lb_endpoints", []):
                endpoint = lb_endpoint["endpoint"]
                socket_address = endpoint["address"]["socket_address"]
                original = (socket_address["address"], socket_address["port_value"])
                if _is_ip(original[0]):
                    socket_address["address"] = "127.0.0.1"
                # host names stay: they resolve to 127.0.0.1 through TULLE_TEST_DNS_OVERRIDES
                socket_address["port_value"] = backend_ports[original]
                health_check = endpoint.get("health_check_config", {})
                if "port_value" in health_check:  # the examples check the serving port
                    health_check["port_value"] = backend_ports[(original[0], health_check["port_value"])]
    document["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}}
    return listener_ports


def corpus_tls_identity(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """The self-signed pair front-proxy/envoy.yaml carries inline (CN=front-envoy) -> files + DER cert."""
    front_proxy = yaml.safe_load((CORPUS / "front-proxy" / "envoy.yaml").read_text())
    tls_listener = front_proxy["static_resources"]["listeners"][1]
    pair = tls_listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"][
        "tls_certificates"][0]
    cert_path, key_path = tmp_path / "backend-cert.pem", tmp_path / "backend-key.pem"
    cert_path.write_text(pair["certificate_chain"]["inline_string"])
    key_path.write_text(pair["private_key"]["inline_string"])
    return cert_path, key_path, ssl.PEM_cert_to_DER_cert(cert_path.read_text())


@dataclass
class Backends:
    ports: dict[tuple[str, int], int]
    labels: dict[tuple[str, int], str]
    servers: list[Any]
    certificate_der: bytes

    def close(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


def start_backends(addresses: list[tuple[str, int]], tls: bool, tmp_path: Path,
                   switchable: bool = False, grpc_servers: bool = False, websocket_servers: bool = False) -> Backends:
    context = None
    certificate_der = b""
    if tls:
        cert_path, key_path, certificate_der = corpus_tls_identity(tmp_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
    backends = Backends({}, {}, [], certificate_der)
    for address, port in addresses:
        label = f"{address}:{port}"
        if grpc_servers or websocket_servers:
            other = GrpcBackend(label) if grpc_servers else EchoServer(label)
            backends.servers.append(other)
            backends.ports[(address, port)] = other.port
            backends.labels[(address, port)] = label
            continue
        server = echo_server.serve(0, label)
        if switchable:
            server.RequestHandlerClass = SwitchableEchoHandler
        if context is not None:
            server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        backends.servers.append(server)
        backends.ports[(address, port)] = server.server_address[1]
        backends.labels[(address, port)] = label
    return backends


# --- tests ----------------------------------------------------------------------------------------


def test_expectation_table_covers_the_corpus() -> None:
    if not CORPUS.is_dir():
        pytest.skip(CORPUS_MISSING)
    on_disk = set(corpus_files())
    assert on_disk - set(EXPECTATIONS) == set(), "corpus files without an expectation: add them to the table"
    assert set(EXPECTATIONS) - on_disk == set(), "expectations for files the corpus no longer has"


@pytest.mark.parametrize("relative", corpus_files())
def test_envoy_example(relative: str, tmp_path: Path) -> None:
    if not CORPUS.is_dir():
        pytest.skip(CORPUS_MISSING)
    expectation = EXPECTATIONS.get(relative)
    assert expectation is not None, f"{relative}: no expectation in the table"
    if isinstance(expectation, Runs):
        run_in_scope(relative, expectation, tmp_path)
    elif isinstance(expectation, RunsWithAds):
        run_with_ads(relative, tmp_path)
    elif isinstance(expectation, Refused):
        assert_refused(relative, expectation)
    else:
        assert_not_a_bootstrap(relative, expectation)


def assert_refused(relative: str, expectation: Refused) -> None:
    result = run_validate(CORPUS / relative)
    assert result.returncode == 1, f"expected a refusal, got rc={result.returncode}: {result.stdout}{result.stderr}"
    match = REFUSAL.search(result.stderr)
    assert match is not None, f"not an 'unsupported by Tulle:' refusal:\n{result.stderr}"
    assert match["source"].endswith(relative), result.stderr
    assert match["field"] == expectation.field, result.stderr
    assert expectation.feature in match["feature"], result.stderr


def assert_not_a_bootstrap(relative: str, expectation: NotBootstrap) -> None:
    result = run_validate(CORPUS / relative)
    assert result.returncode == 1, f"expected a refusal, got rc={result.returncode}: {result.stdout}{result.stderr}"
    # Invalid rather than unsupported: no Envoy bootstrap has this field.
    assert "unsupported by Tulle" not in result.stderr
    assert relative in result.stderr
    assert re.search(rf"""["']{expectation.unknown_field}["']""", result.stderr), result.stderr


def run_in_scope(relative: str, expectation: Runs, tmp_path: Path) -> None:
    document = yaml.safe_load((CORPUS / relative).read_text())
    addresses = upstream_addresses(document)
    backends = start_backends(addresses, expectation.tls_upstreams, tmp_path, expectation.switchable_upstreams,
                              grpc_servers=expectation.grpc_upstreams,
                              websocket_servers=expectation.websocket_upstreams)
    try:
        listener_ports = rewrite_for_loopback(document, backends.ports)
        if expectation.rewrite is not None:
            expectation.rewrite(document, tmp_path)
        rewritten = tmp_path / Path(relative).name
        rewritten.write_text(yaml.safe_dump(document))
        validated = run_validate(rewritten)
        assert validated.returncode == 0, validated.stderr
        names = sorted({address for address, _ in addresses if not _is_ip(address)})
        env = {"TULLE_TEST_DNS_OVERRIDES": ";".join(f"{name}=127.0.0.1" for name in names)}
        with ProxyProcess(document, tmp_path, env=env) as proxy:
            example = RunningExample(proxy, listener_ports, backends.labels, backends.certificate_der,
                                     dict(zip(addresses, backends.servers, strict=True)), tmp_path)
            # Every endpoint resolves to one address: wait for DNS to land them all.
            example.wait_for_stats({
                f"cluster.{cluster['name']}.membership_total": len(list(_endpoint_socket_addresses(cluster)))
                for cluster in document.get("static_resources", {}).get("clusters", [])
            })
            expectation.check(example)
            assert proxy.process is not None and proxy.process.poll() is None, proxy.output()
    finally:
        backends.close()


def run_with_ads(relative: str, tmp_path: Path) -> None:
    """Point the example's xDS cluster at a scripted ADS server, serve it a listener, a route, an EDS
    cluster and its endpoints (what go-control-plane's example serves), and send a request through."""
    document = yaml.safe_load((CORPUS / relative).read_text())
    backend = start_in_thread("service")
    listen_port = free_port()

    async def scenario() -> None:
        ads = ScriptedAds()
        server = grpc.aio.server()
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(ads, server)
        xds_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            names = []
            for cluster in document["static_resources"]["clusters"]:
                for socket_address in _endpoint_socket_addresses(cluster):
                    names.append(socket_address["address"])
                    socket_address["port_value"] = xds_port
            document["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": free_port()}
            rewritten = tmp_path / Path(relative).name
            rewritten.write_text(yaml.safe_dump(document))
            validated = await asyncio.to_thread(run_validate, rewritten)
            assert validated.returncode == 0, validated.stderr
            ads.publish(CLUSTER_TYPE, "1", [eds_cluster("example_proxy_cluster")])
            ads.publish(ENDPOINT_TYPE, "1", [assignment("example_proxy_cluster", backend.server_address[1])])
            ads.publish(LISTENER_TYPE, "1", [rds_listener("listener_0", listen_port, "local_route", "http")])
            ads.publish(ROUTE_TYPE, "1", [route_config("local_route", "example_proxy_cluster")])
            env = {"TULLE_TEST_DNS_OVERRIDES": ";".join(f"{name}=127.0.0.1" for name in names if not _is_ip(name))}
            with ProxyProcess(document, tmp_path, env=env) as proxy:
                deadline = time.monotonic() + 10
                reply = None
                while time.monotonic() < deadline:
                    try:
                        reply, _ = await asyncio.to_thread(http_get, listen_port, "/")
                        if reply.status == 200:
                            break
                    except OSError:
                        pass
                    await asyncio.sleep(0.05)
                assert reply is not None and reply.status == 200, proxy.output()
                assert reply.headers.get("x-served-by") == "service"
                assert ads.requests[0].node.id == "test-id" and ads.requests[0].node.cluster == "test-cluster"
        finally:
            await server.stop(None)

    try:
        asyncio.run(scenario())
    finally:
        backend.shutdown()
