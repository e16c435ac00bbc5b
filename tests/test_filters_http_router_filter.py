"""The router filter against a real proxy: local replies, upstream failures, the
x-envoy-* headers it adds, rewrites, and back-pressure in both directions.

Local-reply scenarios share one proxy (one access log, read once): each request
carries ``x-case`` so its log line can be found; each test checks one scenario's
status, body, %RESPONSE_FLAGS% and stats the way Envoy reports them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backends import (
    Client,
    Message,
    RawBackend,
    SlowReader,
    close_after_request,
    echo_backend,
    encode_request,
    file_access_log,
    get,
    http_proxy,
    never_answer,
    proc_status_kb,
    read_lines,
    reset_after_request,
    respond,
    wait_until,
)
from proxy_harness import free_port, simple_route, static_cluster

MiB = 1024 * 1024
# Far below the 50 MiB payloads: buffering even 40% of one in the proxy fails the test.
RSS_GROWTH_LIMIT_KB = 20 * 1024
RESET_BODY = "upstream connect error or disconnect/reset before headers. reset reason: "
LOG_FORMAT = "%REQ(X-CASE)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %UPSTREAM_CLUSTER%\n"


def route(prefix: str, **action: Any) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": action}


def unhealthy_cluster(name: str, port: int, **extra: Any) -> dict[str, Any]:
    cluster = static_cluster(name, [port], **extra)
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["health_status"] = "UNHEALTHY"
    return cluster


@dataclass
class Scenarios:
    responses: dict[str, Message]
    log: dict[str, list[str]]  # x-case -> [code, flags, details, cluster]
    stats: dict[str, int]


CASES: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("no-route", "/nowhere", []),
    ("no-healthy", "/uh", []),
    ("empty-cluster", "/empty", []),
    ("panic", "/panic", []),
    ("connect-fail", "/uf", []),
    ("closed", "/uc", []),
    ("reset", "/ur", []),
    ("timeout", "/ut", []),
    ("header-missing", "/by-header", []),
    ("header-unknown", "/by-header", [("x-cluster", "nonexistent")]),
    ("header-found", "/by-header", [("x-cluster", "echo")]),
    ("header-missing-404", "/by-header-404", []),
    ("direct", "/direct", []),
    ("redirect", "/redirect/page", []),
    ("ok", "/ok", []),
]


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenarios]:
    tmp_path = tmp_path_factory.mktemp("local_replies")
    log_path = tmp_path / "access.log"
    with echo_backend() as echo_port, RawBackend(close_after_request) as closer, \
            RawBackend(reset_after_request) as resetter, RawBackend(never_answer) as silent:
        clusters = [
            static_cluster("echo", [echo_port]),
            unhealthy_cluster("unhealthy", echo_port, common_lb_config={"healthy_panic_threshold": {"value": 0}}),
            unhealthy_cluster("panicking", echo_port),  # default 50% threshold: Envoy panics, routes anyway
            {"name": "empty", "type": "STATIC", "connect_timeout": "1s",
             "load_assignment": {"cluster_name": "empty", "endpoints": []}},
            static_cluster("dead", [free_port()]),
            static_cluster("closer", [closer.port]),
            static_cluster("resetter", [resetter.port]),
            static_cluster("silent", [silent.port]),
        ]
        route_config = {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            route("/uh", cluster="unhealthy"),
            route("/empty", cluster="empty"),
            route("/panic", cluster="panicking"),
            route("/uf", cluster="dead"),
            route("/uc", cluster="closer"),
            route("/ur", cluster="resetter"),
            route("/ut", cluster="silent", timeout="0.3s"),
            route("/by-header-404", cluster_header="x-cluster", cluster_not_found_response_code="NOT_FOUND"),
            route("/by-header", cluster_header="x-cluster"),
            {"match": {"prefix": "/direct"},
             "direct_response": {"status": 200, "body": {"inline_string": "hello direct\n"}}},
            {"match": {"prefix": "/redirect/"}, "redirect": {"prefix_rewrite": "/moved/"}},
            route("/ok", cluster="echo"),
        ]}]}
        with http_proxy(tmp_path, route_config, clusters,
                        access_log=file_access_log(log_path, LOG_FORMAT)) as (proxy, port):
            responses = {}
            for case, path, headers in CASES:
                responses[case] = get(port, path, [("x-case", case), *headers])
            lines = read_lines(log_path, len(CASES))
            stats = proxy.stats()
    log = {}
    for line in lines:
        case, *fields = line.split(" ")
        log[case] = fields
    yield Scenarios(responses, log, stats)


def test_every_scenario_is_logged_once(scenarios: Scenarios) -> None:
    assert sorted(scenarios.log) == sorted(case for case, _, _ in CASES)
    assert scenarios.stats["http.ingress.downstream_rq_total"] == len(CASES)


def test_no_route_is_404_nr(scenarios: Scenarios) -> None:
    response = scenarios.responses["no-route"]
    assert (response.status, response.body) == (404, b"")
    assert scenarios.log["no-route"][:3] == ["404", "NR", "route_not_found"]
    assert scenarios.stats["http.ingress.no_route"] == 1


def test_unhealthy_endpoint_without_panic_is_503_uh(scenarios: Scenarios) -> None:
    response = scenarios.responses["no-healthy"]
    assert (response.status, response.body) == (503, b"no healthy upstream")
    assert scenarios.log["no-healthy"] == ["503", "UH", "no_healthy_upstream", "unhealthy"]
    assert scenarios.stats["cluster.unhealthy.upstream_cx_none_healthy"] == 1
    assert scenarios.stats.get("cluster.unhealthy.upstream_cx_total", 0) == 0


def test_cluster_without_endpoints_is_503_uh(scenarios: Scenarios) -> None:
    response = scenarios.responses["empty-cluster"]
    assert (response.status, response.body) == (503, b"no healthy upstream")
    assert scenarios.log["empty-cluster"][:2] == ["503", "UH"]


def test_all_unhealthy_with_default_panic_threshold_still_routes(scenarios: Scenarios) -> None:
    response = scenarios.responses["panic"]
    assert response.status == 200
    assert response.json()["path"] == "/panic"
    assert scenarios.log["panic"][:2] == ["200", "-"]
    assert scenarios.stats["cluster.panicking.lb_healthy_panic"] == 1


def test_connect_failure_is_503_uf(scenarios: Scenarios) -> None:
    response = scenarios.responses["connect-fail"]
    assert response.status == 503
    assert response.body.decode().startswith(RESET_BODY + "connection failure")
    assert scenarios.log["connect-fail"][:2] == ["503", "UF"]
    assert scenarios.stats["cluster.dead.upstream_cx_connect_fail"] == 1
    assert scenarios.stats["cluster.dead.upstream_cx_total"] == 1


def test_upstream_close_before_headers_is_503_uc(scenarios: Scenarios) -> None:
    response = scenarios.responses["closed"]
    assert response.status == 503
    assert response.body.decode() == RESET_BODY + "connection termination"
    assert scenarios.log["closed"][:2] == ["503", "UC"]


def test_upstream_reset_before_headers_is_503_ur(scenarios: Scenarios) -> None:
    response = scenarios.responses["reset"]
    assert response.status == 503
    assert response.body.decode().startswith(RESET_BODY)
    assert scenarios.log["reset"][:2] == ["503", "UR"]
    assert scenarios.stats["cluster.resetter.upstream_rq_rx_reset"] == 1


def test_route_timeout_is_504_ut(scenarios: Scenarios) -> None:
    response = scenarios.responses["timeout"]
    assert (response.status, response.body) == (504, b"upstream request timeout")
    assert scenarios.log["timeout"] == ["504", "UT", "upstream_response_timeout", "silent"]
    assert scenarios.stats["cluster.silent.upstream_rq_timeout"] == 1


def test_missing_cluster_header_is_cluster_not_found(scenarios: Scenarios) -> None:
    # Envoy's router: an empty cluster name is an unknown cluster -> cluster_not_found_response_code
    # (default 503) with the NC flag.
    for case in ("header-missing", "header-unknown"):
        assert scenarios.responses[case].status == 503, case
        assert scenarios.log[case][:3] == ["503", "NC", "cluster_not_found"], case
    assert scenarios.stats["http.ingress.no_cluster"] == 3


def test_cluster_not_found_response_code_404(scenarios: Scenarios) -> None:
    assert scenarios.responses["header-missing-404"].status == 404
    assert scenarios.log["header-missing-404"][:2] == ["404", "NC"]


def test_cluster_header_selects_the_cluster(scenarios: Scenarios) -> None:
    response = scenarios.responses["header-found"]
    assert response.status == 200
    assert scenarios.log["header-found"] == ["200", "-", "via_upstream", "echo"]


def test_direct_response(scenarios: Scenarios) -> None:
    response = scenarios.responses["direct"]
    assert (response.status, response.body) == (200, b"hello direct\n")
    assert response.header("content-length") == str(len(b"hello direct\n"))
    assert scenarios.stats["http.ingress.rq_direct_response"] == 1


def test_redirect(scenarios: Scenarios) -> None:
    response = scenarios.responses["redirect"]
    assert response.status == 301
    assert response.header("location") == "http://example.com/moved/page"
    assert response.body == b""
    assert scenarios.stats["http.ingress.rq_redirect"] == 1


def test_local_replies_count_in_downstream_stats(scenarios: Scenarios) -> None:
    statuses = [response.status for response in scenarios.responses.values()]
    stats = scenarios.stats
    assert stats["http.ingress.downstream_rq_5xx"] == sum(1 for s in statuses if s >= 500)
    assert stats["http.ingress.downstream_rq_4xx"] == sum(1 for s in statuses if 400 <= s < 500)
    assert stats["http.ingress.downstream_rq_3xx"] == 1
    assert stats["http.ingress.downstream_rq_2xx"] == sum(1 for s in statuses if 200 <= s < 300)


def test_every_local_reply_says_server_envoy(scenarios: Scenarios) -> None:
    for case, response in scenarios.responses.items():
        assert response.header("server") == "envoy", case


def test_service_time_only_on_upstream_responses(scenarios: Scenarios) -> None:
    for case in ("ok", "panic", "header-found"):
        assert scenarios.responses[case].header("x-envoy-upstream-service-time").isdigit(), case
    for case in ("no-route", "no-healthy", "connect-fail", "timeout", "direct", "redirect"):
        assert scenarios.responses[case].header("x-envoy-upstream-service-time") is None, case


# --------------------------------------------------------------------------- headers the router adds


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    with echo_backend("echo") as port:
        yield port


def test_expected_timeout_and_service_time_headers(tmp_path: Path, echo_port: int) -> None:
    routes = {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        route("/short", cluster="backend", timeout="2.5s"),
        route("/", cluster="backend"),
    ]}]}
    with http_proxy(tmp_path, routes, [static_cluster("backend", [echo_port])]) as (_, port):
        default = get(port, "/default")
        short = get(port, "/short")
    assert default.json()["headers"]["x-envoy-expected-rq-timeout-ms"] == "15000"  # Envoy's default route timeout
    assert short.json()["headers"]["x-envoy-expected-rq-timeout-ms"] == "2500"
    for response in (default, short):
        assert response.header("x-envoy-upstream-service-time").isdigit()


def test_suppress_envoy_headers(tmp_path: Path, echo_port: int) -> None:
    router = [{"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
        "suppress_envoy_headers": True}}]
    with http_proxy(tmp_path, simple_route("backend", prefix_rewrite="/r/"), [static_cluster("backend", [echo_port])],
                    http_filters=router) as (_, port):
        response = get(port, "/quiet")
    forwarded = response.json()["headers"]
    assert "x-envoy-expected-rq-timeout-ms" not in forwarded
    assert "x-envoy-original-path" not in forwarded
    assert response.header("x-envoy-upstream-service-time") is None


def test_prefix_rewrite_sends_x_envoy_original_path(tmp_path: Path, echo_port: int) -> None:
    routes = {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        route("/api/", cluster="backend", prefix_rewrite="/v2/"),
    ]}]}
    with http_proxy(tmp_path, routes, [static_cluster("backend", [echo_port])]) as (_, port):
        echo = get(port, "/api/users?id=7").json()
    assert echo["path"] == "/v2/users?id=7"
    assert echo["headers"]["x-envoy-original-path"] == "/api/users?id=7"


def test_edge_proxy_replaces_client_x_envoy_headers(tmp_path: Path, echo_port: int) -> None:
    with http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [echo_port])],
                    use_remote_address=True) as (_, port):
        echo = get(port, "/plain", [("x-envoy-expected-rq-timeout-ms", "1")]).json()
    # an edge proxy strips x-envoy-* control headers from untrusted clients, then sets its own
    assert echo["headers"]["x-envoy-expected-rq-timeout-ms"] == "15000"


def test_hop_by_hop_response_headers_are_not_forwarded(tmp_path: Path) -> None:
    headers = [("connection", "keep-alive"), ("keep-alive", "timeout=5, max=100"),
               ("proxy-connection", "keep-alive"), ("x-kept", "yes")]
    with RawBackend(respond(200, headers, b"body")) as backend, \
            http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [backend.port])]) as (_, port):
        response = get(port, "/hop")
    assert response.body == b"body"
    assert response.header("x-kept") == "yes"
    for name in ("connection", "keep-alive", "proxy-connection"):
        assert response.header(name) is None, name


def test_upstream_stats_by_code(tmp_path: Path, echo_port: int) -> None:
    with http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [echo_port])]) as (proxy, port), \
            Client(port) as client:
        for path in ("/status/200", "/ok", "/status/404", "/status/503"):
            client.request("GET", path)
        stats = proxy.stats()
    assert stats["cluster.backend.upstream_rq_total"] == 4
    assert stats["cluster.backend.upstream_rq_200"] == 2
    assert stats["cluster.backend.upstream_rq_2xx"] == 2
    assert stats["cluster.backend.upstream_rq_404"] == 1
    assert stats["cluster.backend.upstream_rq_5xx"] == 1
    assert stats["cluster.backend.upstream_rq_completed"] == 4


def test_response_started_then_upstream_reset_resets_the_client(tmp_path: Path) -> None:
    # The upstream promises 1000 bytes, sends 10 and resets: the client must not see a complete response.
    def half_then_reset(conn: Any) -> None:
        conn.read_request()
        conn.sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
        time.sleep(0.2)
        conn.reset()

    with RawBackend(half_then_reset) as backend, \
            http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [backend.port])]) as (
                proxy, port), Client(port) as client:
        with pytest.raises(ConnectionError):
            client.request("GET", "/half")
        stats = wait_until(lambda: (s := proxy.stats())["http.ingress.rq_reset_after_downstream_response_started"]
                           and s)
    assert stats["http.ingress.rq_reset_after_downstream_response_started"] == 1


# --------------------------------------------------------------------------- back-pressure


def test_upload_to_a_slow_reader_does_not_buffer_in_the_proxy(tmp_path: Path) -> None:
    size = 50 * MiB
    payload = b"u" * size
    slow = SlowReader()
    with RawBackend(slow) as backend, \
            http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [backend.port])]) as (
                proxy, port), Client(port, timeout=30) as client:
        assert proxy.process is not None
        pid = proxy.process.pid
        before = proc_status_kb(pid, "VmRSS")
        sender = threading.Thread(target=client.send, args=(encode_request("POST", "/upload", body=payload),))
        sender.start()
        assert slow.head_seen.wait(5)
        # the proxy must stop reading from the client instead of buffering the upload
        assert wait_until(lambda: _upstream_stalled(proxy), timeout=5)
        held_kb = proc_status_kb(pid, "VmRSS") - before
        slow.release.set()
        sender.join(30)
        response = client.response()
        peak_kb = proc_status_kb(pid, "VmHWM") - before
    assert response.status == 200
    assert response.json()["body_length"] == size
    assert held_kb < RSS_GROWTH_LIMIT_KB, f"proxy RSS grew {held_kb} kB while the upstream did not read"
    assert peak_kb < RSS_GROWTH_LIMIT_KB, f"proxy peak RSS grew {peak_kb} kB for a {size // MiB} MiB upload"


def _upstream_stalled(proxy: Any) -> bool:
    """The upload is stuck: the proxy sent what the kernel would take and stopped (tx bytes stop moving)."""
    first = proxy.stats().get("cluster.backend.upstream_cx_tx_bytes_total", 0)
    time.sleep(0.2)
    second = proxy.stats().get("cluster.backend.upstream_cx_tx_bytes_total", 0)
    return first > 0 and first == second


def test_download_to_a_slow_client_does_not_buffer_in_the_proxy(tmp_path: Path) -> None:
    size = 50 * MiB
    body = b"d" * size
    with RawBackend(respond(200, [("content-type", "application/octet-stream")], body)) as backend, \
            http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [backend.port])]) as (
                proxy, port), Client(port, timeout=30) as client:
        assert proxy.process is not None
        pid = proxy.process.pid
        before = proc_status_kb(pid, "VmRSS")
        client.send(encode_request("GET", "/big"))
        # read nothing until the proxy stops pulling from the upstream
        assert wait_until(lambda: _downstream_stalled(proxy), timeout=5)
        held_kb = proc_status_kb(pid, "VmRSS") - before
        response = client.response()
        peak_kb = proc_status_kb(pid, "VmHWM") - before
        stats = proxy.stats()
    assert response.status == 200
    assert len(response.body) == size and response.body == body
    assert stats["http.ingress.downstream_flow_control_paused_reading_total"] >= 1
    assert held_kb < RSS_GROWTH_LIMIT_KB, f"proxy RSS grew {held_kb} kB while the client did not read"
    assert peak_kb < RSS_GROWTH_LIMIT_KB, f"proxy peak RSS grew {peak_kb} kB for a {size // MiB} MiB download"


def _downstream_stalled(proxy: Any) -> bool:
    first = proxy.stats().get("cluster.backend.upstream_cx_rx_bytes_total", 0)
    time.sleep(0.2)
    second = proxy.stats().get("cluster.backend.upstream_cx_rx_bytes_total", 0)
    return first > 0 and first == second
