"""The router filter against a real proxy: local replies, upstream failures, the
x-envoy-* headers it adds, rewrites, back-pressure in both directions, and retries and
timeouts (Envoy's retry policy, per-try timeouts, body replay, x-envoy-* request headers).

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
    chunked_body,
    close_after_request,
    echo_backend,
    encode_request,
    encode_response,
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


def answer_garbage(conn: Any) -> None:
    """A backend that does not speak HTTP: its answer cannot be parsed."""
    conn.read_request()
    conn.sock.sendall(b"this is not http\r\n\r\n")
    conn.wait_for_peer_close()


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
    ("garbage", "/upe", []),
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
            RawBackend(reset_after_request) as resetter, RawBackend(never_answer) as silent, \
            RawBackend(answer_garbage) as babbler:
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
            static_cluster("babbler", [babbler.port]),
        ]
        route_config = {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
            route("/uh", cluster="unhealthy"),
            route("/empty", cluster="empty"),
            route("/panic", cluster="panicking"),
            route("/uf", cluster="dead"),
            route("/uc", cluster="closer"),
            route("/ur", cluster="resetter"),
            route("/upe", cluster="babbler"),
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


def test_a_backend_answering_garbage_is_502_upe(scenarios: Scenarios) -> None:
    # Envoy's router (onUpstreamReset): a ProtocolError reset is answered and charged 502 Bad Gateway
    response = scenarios.responses["garbage"]
    assert (response.status, response.body.decode()) == (502, RESET_BODY + "protocol error")
    assert scenarios.log["garbage"] == ["502", "UPE", "upstream_reset_before_response_started{protocol_error}",
                                        "babbler"]
    stats = scenarios.stats
    assert stats["cluster.babbler.upstream_rq_502"] == 1 and stats["cluster.babbler.upstream_rq_5xx"] == 1
    assert stats.get("cluster.babbler.upstream_rq_503", 0) == 0
    assert stats["cluster.babbler.upstream_cx_protocol_error"] == 1


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
    started = threading.Event()

    def half_then_reset(conn: Any) -> None:
        conn.read_request()
        conn.sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
        started.wait(30)  # until the client has the head: the reset comes after the response started
        conn.reset()

    with RawBackend(half_then_reset) as backend, \
            http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [backend.port])]) as (
                proxy, port), Client(port) as client:
        client.send(encode_request("GET", "/half"))
        head = client.reader.read_head()
        assert head is not None and head.startswith(b"HTTP/1.1 200 ")
        started.set()
        with pytest.raises(ConnectionError):
            client.reader.read_exact(1000)
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
        assert slow.head_seen.wait(30)
        # the proxy must stop reading from the client instead of buffering the upload
        assert wait_until(lambda: _upstream_stalled(proxy))
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
        assert wait_until(lambda: _downstream_stalled(proxy))
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


# --------------------------------------------------------------------------- retries and timeouts
#
# One proxy for the scenarios below; each test reads the stats of its own cluster (or their
# change) and finds its access-log lines by x-case.

RETRY_LOG = "%REQ(X-CASE)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %UPSTREAM_HOST%\n"
FAST_BACK_OFF = {"base_interval": "0.002s"}
PREVIOUS_HOSTS = [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
    "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}]


class Flaky:
    """Answers 503 to about 30 % of requests. The draws come from a seeded generator, in the order the
    requests arrive: with one client at a time the outcome is the same on every run."""

    def __init__(self, failure_rate: float = 0.3, seed: int = 20260521) -> None:
        import random

        self.rng = random.Random(seed)
        self.failure_rate = failure_rate
        self.lock = threading.Lock()

    def __call__(self, conn: Any) -> None:
        while conn.read_request() is not None:
            with self.lock:
                fail = self.rng.random() < self.failure_rate
            if fail:
                conn.sock.sendall(encode_response(503, [("content-type", "text/plain")], b"try again\n"))
            else:
                conn.sock.sendall(encode_response(200, [("content-type", "text/plain")], b"ok\n"))


class FailFirst:
    """Answers 503 to the first request of each x-case (after reading its whole body), then echoes:
    the body it got and the retry headers it saw."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, conn: Any) -> None:
        import json

        while (request := conn.read_request()) is not None:
            case = request.header("x-case") or ""
            with self.lock:
                first = case not in self.seen
                self.seen.add(case)
            if first:
                conn.sock.sendall(encode_response(503, [], b"first try fails"))
                continue
            body = json.dumps({
                "body": request.body.decode("latin-1"),
                "attempt": request.header("x-envoy-attempt-count"),
                "headers": dict(request.headers),
            }).encode()
            conn.sock.sendall(encode_response(200, [("content-type", "application/json")], body))


@dataclass
class RetryProxy:
    proxy: Any
    port: int
    log_path: Path
    fail_first: FailFirst
    slow: RawBackend

    def stats(self) -> dict[str, int]:
        return self.proxy.stats()

    def log_line(self, case: str) -> list[str]:
        def find() -> list[str] | None:
            if not self.log_path.exists():
                return None
            for line in self.log_path.read_text().splitlines():
                if line.startswith(case + " "):
                    return line.split(" ")[1:]
            return None

        found = wait_until(find)
        assert found is not None, f"no access log line for {case}"
        return found


def retry_route(prefix: str, cluster: str, retry_policy: dict[str, Any] | None = None, **action: Any) -> dict:
    if retry_policy is not None:
        action["retry_policy"] = retry_policy
    return {"match": {"prefix": prefix}, "route": {"cluster": cluster, **action}}


@pytest.fixture(scope="module")
def retries(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RetryProxy]:
    tmp_path = tmp_path_factory.mktemp("retries")
    log_path = tmp_path / "access.log"
    fail_first = FailFirst()
    with echo_backend("live") as live_port, RawBackend(Flaky()) as flaky, RawBackend(fail_first) as first, \
            RawBackend(never_answer) as slow, RawBackend(reset_after_request) as resetter, \
            RawBackend(respond(503, [], b"down")) as down:
        dead_port = free_port()
        clusters = [
            static_cluster("flaky", [flaky.port]),
            static_cluster("dead_live", [dead_port, live_port], lb_policy="RANDOM"),
            static_cluster("dead_live_plain", [dead_port, live_port], lb_policy="RANDOM"),
            static_cluster("slow_fast", [slow.port, live_port]),
            static_cluster("silent", [slow.port]),
            static_cluster("silent_capped", [slow.port], common_http_protocol_options={"max_stream_duration": "0.2s"}),
            static_cluster("fail_first", [first.port]),
            static_cluster("resetter", [resetter.port]),
            static_cluster("live", [live_port]),
            static_cluster("down", [down.port], outlier_detection={"consecutive_5xx": 3}),
            static_cluster("no_retry_budget", [down.port], circuit_breakers={"thresholds": [{"max_retries": 0}]}),
        ]
        routes = [
            retry_route("/flaky/retry", "flaky", {"retry_on": "5xx", "num_retries": 3, "retry_back_off": FAST_BACK_OFF}),
            retry_route("/flaky/plain", "flaky"),
            retry_route("/dead/predicate", "dead_live", {
                "retry_on": "connect-failure", "retry_back_off": FAST_BACK_OFF, "retry_host_predicate": PREVIOUS_HOSTS,
                "host_selection_retry_max_attempts": 100}),
            retry_route("/dead/plain", "dead_live_plain", {"retry_on": "connect-failure",
                                                           "retry_back_off": FAST_BACK_OFF}),
            # the per-try timeout must never cut the fast host's answer, however loaded the machine
            retry_route("/slow-fast", "slow_fast", {"retry_on": "5xx", "per_try_timeout": "1s",
                                                    "retry_back_off": FAST_BACK_OFF,
                                                    "retry_host_predicate": PREVIOUS_HOSTS}),
            retry_route("/per-try/capped", "silent", {"retry_on": "5xx", "num_retries": 50,
                                                      "per_try_timeout": "0.1s", "retry_back_off": FAST_BACK_OFF},
                        timeout="1s"),
            retry_route("/per-try/idle", "silent", {"retry_on": "connect-failure", "per_try_idle_timeout": "0.2s"}),
            retry_route("/per-try", "silent", {"retry_on": "connect-failure", "per_try_timeout": "0.2s"}),
            {"match": {"prefix": "/replay"}, "per_request_buffer_limit_bytes": 1000,
             "route": {"cluster": "fail_first", "retry_policy": {"retry_on": "5xx", "retry_back_off": FAST_BACK_OFF}}},
            retry_route("/attempts", "fail_first", {"retry_on": "retriable-status-codes",
                                                    "retriable_status_codes": [503],
                                                    "retry_back_off": FAST_BACK_OFF}),
            retry_route("/reset", "resetter", {"retry_on": "reset", "num_retries": 2, "retry_back_off": FAST_BACK_OFF}),
            retry_route("/down", "down", {"retry_on": "5xx", "num_retries": 2, "retry_back_off": FAST_BACK_OFF}),
            retry_route("/overflow", "no_retry_budget", {"retry_on": "5xx", "retry_back_off": FAST_BACK_OFF}),
            retry_route("/by-header/first", "fail_first"),
            retry_route("/by-header/silent", "silent"),
            retry_route("/by-header/live", "live"),
            retry_route("/cluster-duration", "silent_capped"),
        ]
        route_config = {"name": "local", "virtual_hosts": [
            {"name": "attempts", "domains": ["attempts.example.com"], "include_request_attempt_count": True,
             "include_attempt_count_in_response": True, "routes": routes},
            {"name": "all", "domains": ["*"], "routes": routes},
        ]}
        with http_proxy(tmp_path, route_config, clusters,
                        access_log=file_access_log(log_path, RETRY_LOG)) as (proxy, port):
            yield RetryProxy(proxy, port, log_path, fail_first, slow)


def test_retries_hide_a_flaky_backend(retries: RetryProxy) -> None:
    failures = {}
    with Client(retries.port) as client:
        for path in ("/flaky/plain", "/flaky/retry"):
            statuses = [client.request("GET", path).status for _ in range(300)]
            assert set(statuses) <= {200, 503}
            failures[path] = statuses.count(503) / len(statuses)
    stats = retries.stats()
    assert 0.2 < failures["/flaky/plain"] < 0.4
    assert failures["/flaky/retry"] < 0.01
    retried = stats["cluster.flaky.upstream_rq_retry"]
    assert retried > 40
    # every retried response counts as retry.upstream_rq_503, not as a plain upstream_rq_503
    assert stats["cluster.flaky.retry.upstream_rq_503"] == retried
    assert stats["cluster.flaky.upstream_rq_503"] == round(failures["/flaky/plain"] * 300) + round(
        failures["/flaky/retry"] * 300)
    assert stats["cluster.flaky.upstream_rq_total"] == 600 + retried
    assert stats["cluster.flaky.upstream_rq_retry_backoff_exponential"] == retried
    assert 0 < stats["cluster.flaky.upstream_rq_retry_success"] <= retried
    assert stats["cluster.flaky.upstream_rq_retry_limit_exceeded"] == round(failures["/flaky/retry"] * 300)
    # a retried 503 with a small body is read to its end and its connection reused
    assert stats["cluster.flaky.upstream_cx_total"] <= 2


def test_connect_failure_retries_move_to_another_host_with_previous_hosts(retries: RetryProxy) -> None:
    with Client(retries.port) as client:
        predicate = [client.request("GET", "/dead/predicate", [("x-case", f"predicate-{i}")]) for i in range(40)]
        plain = [client.request("GET", "/dead/plain", [("x-case", f"plain-{i}")]) for i in range(40)]
    stats = retries.stats()
    # half the first picks hit the dead host; the retry re-picks until it gets the other one
    assert [response.status for response in predicate] == [200] * 40
    assert stats["cluster.dead_live.upstream_cx_connect_fail"] > 5
    assert stats["cluster.dead_live.upstream_rq_retry"] == stats["cluster.dead_live.upstream_cx_connect_fail"]
    # without the predicate a retry may pick the dead host again: with 40 requests, some do
    failed = [i for i, response in enumerate(plain) if response.status != 200]
    assert failed, "no request retried onto the dead host again: the comparison says nothing"
    assert plain[failed[0]].status == 503
    assert plain[failed[0]].body.startswith(
        b"upstream connect error or disconnect/reset before headers. retried and the latest reset reason: ")
    assert retries.log_line(f"plain-{failed[0]}")[:2] == ["503", "UF,URX"]
    assert stats["cluster.dead_live_plain.upstream_rq_retry_limit_exceeded"] == len(failed)


def test_per_try_timeout_retries_a_slow_host_onto_a_fast_one(retries: RetryProxy) -> None:
    before = retries.stats().get("cluster.slow_fast.upstream_rq_per_try_timeout", 0)
    responses = [get(retries.port, "/slow-fast", [("x-case", f"slow-fast-{i}")]) for i in range(3)]
    assert [response.status for response in responses] == [200] * 3
    assert all(response.json()["server"] == "live" for response in responses)
    stats = retries.stats()
    # round robin over [slow, fast]: at least one of three requests starts on the slow host
    timeouts = stats["cluster.slow_fast.upstream_rq_per_try_timeout"] - before
    assert timeouts >= 1
    assert stats["cluster.slow_fast.upstream_rq_retry"] == timeouts
    assert stats["cluster.slow_fast.upstream_rq_timeout"] == 0


def test_per_try_timeout_with_a_request_body_replays_it_on_the_fast_host(retries: RetryProxy) -> None:
    """A body keeps the request off the per-try fast path: the attempts keep it for the retry."""
    before = retries.stats().get("cluster.slow_fast.upstream_rq_per_try_timeout", 0)
    with Client(retries.port) as client:
        responses = [client.request("POST", "/slow-fast", [("x-case", f"slow-fast-post-{i}")], body=b"payload-%d" % i)
                     for i in range(3)]
    assert [response.status for response in responses] == [200] * 3
    assert [(r.json()["server"], r.json()["method"], r.json()["body_length"]) for r in responses] == [
        ("live", "POST", len(b"payload-0"))] * 3
    assert retries.stats()["cluster.slow_fast.upstream_rq_per_try_timeout"] - before >= 1


def test_per_try_timeout_without_a_retry_is_504_ut(retries: RetryProxy) -> None:
    started = time.monotonic()
    response = get(retries.port, "/per-try", [("x-case", "per-try")])
    assert time.monotonic() - started < 5  # the 0.2 s per-try timeout, not the 15 s route timeout
    assert (response.status, response.body) == (504, b"upstream request timeout")
    assert retries.log_line("per-try")[:3] == ["504", "UT", "upstream_per_try_timeout"]
    stats = retries.stats()
    assert stats["cluster.silent.upstream_rq_per_try_timeout"] >= 1
    assert stats["cluster.silent.upstream_rq_504"] >= 1


def test_per_try_idle_timeout(retries: RetryProxy) -> None:
    response = get(retries.port, "/per-try/idle", [("x-case", "per-try-idle")])
    assert (response.status, response.body) == (504, b"upstream request timeout")
    assert retries.log_line("per-try-idle")[:3] == ["504", "UT", "upstream_per_try_idle_timeout"]
    assert retries.stats()["cluster.silent.upstream_rq_per_try_idle_timeout"] == 1


def test_route_timeout_caps_the_whole_request_including_retries(retries: RetryProxy) -> None:
    before = retries.stats()
    started = time.monotonic()
    response = get(retries.port, "/per-try/capped", [("x-case", "capped")])
    elapsed = time.monotonic() - started
    after = retries.stats()
    assert (response.status, response.body) == (504, b"upstream request timeout")
    assert retries.log_line("capped")[:3] == ["504", "UT", "upstream_response_timeout"]
    # 50 retries of 0.1 s would take 5 s: the 1 s route timeout ends it after at most ten tries
    # (room for two even when the machine is loaded: each try's set-up eats into the second)
    assert elapsed < 5
    per_try = after["cluster.silent.upstream_rq_per_try_timeout"] - before.get(
        "cluster.silent.upstream_rq_per_try_timeout", 0)
    assert 2 <= per_try <= 10
    assert after["cluster.silent.upstream_rq_timeout"] - before.get("cluster.silent.upstream_rq_timeout", 0) == 1


def test_retried_requests_replay_their_body(retries: RetryProxy) -> None:
    body = b"b" * 1000  # exactly the route's per_request_buffer_limit_bytes
    with Client(retries.port) as client:
        response = client.request("POST", "/replay", [("x-case", "replay-small")], body)
        chunked = client.request("POST", "/replay", [("x-case", "replay-chunked"), ("transfer-encoding", "chunked")],
                                 chunked_body(b"c" * 700, piece=100))
    assert response.status == 200
    assert response.json()["body"] == body.decode()
    assert chunked.status == 200
    assert chunked.json()["body"] == "c" * 700


def test_a_body_over_the_buffer_limit_is_not_retried(retries: RetryProxy) -> None:
    before = retries.stats().get("cluster.fail_first.retry_or_shadow_abandoned", 0)
    with Client(retries.port) as client:
        response = client.request("POST", "/replay", [("x-case", "replay-big")], b"B" * 5000)
    # the body still went upstream in full; only the retry was given up
    assert (response.status, response.body) == (503, b"first try fails")
    stats = retries.stats()
    assert stats["cluster.fail_first.retry_or_shadow_abandoned"] - before == 1
    assert retries.log_line("replay-big")[:2] == ["503", "-"]


def test_attempt_count_headers(retries: RetryProxy) -> None:
    response = get(retries.port, "/attempts", [("x-case", "attempts")], host="attempts.example.com")
    assert response.status == 200
    assert response.json()["attempt"] == "2"  # the retry said it was the second attempt
    assert response.header("x-envoy-attempt-count") == "2"
    plain = get(retries.port, "/by-header/live", [("x-case", "attempts-live")], host="attempts.example.com")
    assert plain.json()["headers"]["x-envoy-attempt-count"] == "1"
    assert plain.header("x-envoy-attempt-count") == "1"
    local = get(retries.port, "/per-try", [("x-case", "attempts-local")], host="attempts.example.com")
    assert (local.status, local.header("x-envoy-attempt-count")) == (504, "1")  # local replies too
    assert get(retries.port, "/by-header/live").header("x-envoy-attempt-count") is None


def test_resets_are_retried_under_reset(retries: RetryProxy) -> None:
    response = get(retries.port, "/reset", [("x-case", "reset")])
    assert response.status == 503
    assert response.body == (b"upstream connect error or disconnect/reset before headers. "
                             b"retried and the latest reset reason: remote reset")
    assert retries.log_line("reset")[:2] == ["503", "UR,URX"]
    stats = retries.stats()
    assert stats["cluster.resetter.upstream_rq_retry"] == 2
    assert stats["cluster.resetter.upstream_rq_total"] == 3
    assert stats["cluster.resetter.upstream_rq_503"] == 1  # the final failure, as Envoy charges it


def test_outlier_detection_sees_every_attempt(retries: RetryProxy) -> None:
    response = get(retries.port, "/down", [("x-case", "down")])
    assert response.status == 503
    assert retries.log_line("down")[:2] == ["503", "URX"]
    stats = retries.stats()
    # one request, three 503 attempts: three consecutive 5xx for the host
    assert stats["cluster.down.upstream_rq_total"] == 3
    assert stats["cluster.down.outlier_detection.ejections_detected_consecutive_5xx"] == 1


def test_circuit_breaker_max_retries_overflow(retries: RetryProxy) -> None:
    response = get(retries.port, "/overflow", [("x-case", "overflow")])
    assert (response.status, response.body) == (503, b"down")
    assert retries.log_line("overflow")[:2] == ["503", "UO"]
    stats = retries.stats()
    assert stats["cluster.no_retry_budget.upstream_rq_retry_overflow"] == 1
    assert stats["cluster.no_retry_budget.upstream_rq_total"] == 1


def test_retry_and_timeout_request_headers(retries: RetryProxy) -> None:
    retried = get(retries.port, "/by-header/first", [("x-case", "hdr-retry"), ("x-envoy-retry-on", "5xx"),
                                                     ("x-envoy-max-retries", "2")])
    assert retried.status == 200
    forwarded = retried.json()["headers"]
    # consumed by the router, never forwarded
    assert "x-envoy-retry-on" not in forwarded and "x-envoy-max-retries" not in forwarded
    not_retried = get(retries.port, "/by-header/first", [("x-case", "hdr-no-retry")])
    assert not_retried.status == 503
    started = time.monotonic()
    timed_out = get(retries.port, "/by-header/silent", [("x-case", "hdr-timeout"),
                                                        ("x-envoy-upstream-rq-timeout-ms", "300")])
    assert time.monotonic() - started < 5
    assert (timed_out.status, timed_out.body) == (504, b"upstream request timeout")
    assert retries.log_line("hdr-timeout")[:3] == ["504", "UT", "upstream_response_timeout"]
    alt = get(retries.port, "/by-header/silent", [("x-case", "hdr-alt"), ("x-envoy-upstream-rq-timeout-ms", "200"),
                                                  ("x-envoy-upstream-rq-timeout-alt-response", "1")])
    assert (alt.status, alt.body) == (204, b"")
    per_try = get(retries.port, "/by-header/live", [("x-envoy-upstream-rq-per-try-timeout-ms", "2500"),
                                                    ("x-envoy-upstream-rq-timeout-ms", "8000")]).json()["headers"]
    assert per_try["x-envoy-expected-rq-timeout-ms"] == "2500"
    assert "x-envoy-upstream-rq-per-try-timeout-ms" not in per_try
    assert "x-envoy-upstream-rq-timeout-ms" not in per_try
    duration = get(retries.port, "/by-header/silent", [("x-case", "hdr-duration"),
                                                       ("x-envoy-upstream-stream-duration-ms", "200")])
    assert (duration.status, duration.body) == (504, b"upstream max stream duration reached")
    assert retries.log_line("hdr-duration")[:3] == ["504", "UMSDR", "upstream_max_stream_duration_reached"]
    assert retries.stats()["cluster.silent.upstream_rq_max_duration_reached"] == 1


def test_the_clusters_max_stream_duration_resets_a_stream_that_runs_too_long(retries: RetryProxy) -> None:
    started = time.monotonic()
    response = get(retries.port, "/cluster-duration", [("x-case", "cluster-duration")])
    assert time.monotonic() - started < 5  # the route timeout (15 s) did not end it
    assert (response.status, response.body) == (504, b"upstream max stream duration reached")
    assert retries.log_line("cluster-duration")[:3] == ["504", "UMSDR", "upstream_max_stream_duration_reached"]
    assert retries.stats()["cluster.silent_capped.upstream_rq_max_duration_reached"] == 1


def test_an_edge_proxy_ignores_retry_headers_from_clients(tmp_path: Path) -> None:
    fail_first = FailFirst()
    with RawBackend(fail_first) as backend, \
            http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [backend.port])],
                       use_remote_address=True) as (proxy, port):
        response = get(port, "/edge", [("x-case", "edge"), ("x-envoy-retry-on", "5xx")])
        stats = proxy.stats()
    assert response.status == 503
    assert stats.get("cluster.backend.upstream_rq_retry", 0) == 0


def test_per_try_idle_timeout_during_the_body_and_the_replay_buffer_while_backing_off(tmp_path: Path) -> None:
    def stall_after_headers(conn: Any) -> None:
        conn.read_request()
        conn.sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789")
        conn.wait_for_peer_close()

    def refuse_before_the_body(conn: Any) -> None:
        conn.reader.read_head()
        conn.sock.sendall(encode_response(503, [], b"no"))
        conn.wait_for_peer_close()

    log_path = tmp_path / "access.log"
    routes = {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        # long enough that the stalled backend's head always arrives before the timer fires
        retry_route("/idle", "stall", {"retry_on": "5xx", "per_try_idle_timeout": "1s"}),
        # the back-off is drawn in [0, base_interval): a day keeps the retry from starting during the test
        {"match": {"prefix": "/upload"}, "per_request_buffer_limit_bytes": 100, "route": {
            "cluster": "refuse", "retry_policy": {"retry_on": "5xx", "retry_back_off": {"base_interval": "86400s"}}}},
    ]}]}
    with RawBackend(stall_after_headers) as stall, RawBackend(refuse_before_the_body) as refuse, \
            http_proxy(tmp_path, routes, [static_cluster("stall", [stall.port]), static_cluster("refuse", [refuse.port])],
                       access_log=file_access_log(log_path, RETRY_LOG)) as (proxy, port):
        # the per-try idle timeout still runs once the response started: the client sees a cut response
        with pytest.raises(ConnectionError):
            get(port, "/idle", [("x-case", "idle-body")])
        # the upstream answers 503 before the body; while the retry backs off the rest of the body
        # outgrows the 100-byte replay buffer: nothing can carry the request any more (Envoy's 507)
        with Client(port) as client:
            client.send(b"POST /upload HTTP/1.1\r\nhost: x\r\nx-case: upload\r\ncontent-length: 300\r\n\r\n" + b"a" * 50)
            # the rest of the body only once the 503 came back and the retry is backing off
            assert wait_until(lambda: proxy.stats().get("cluster.refuse.upstream_rq_retry") == 1)
            client.send(b"b" * 250)
            upload = client.response()
        lines = read_lines(log_path, 2)
        stats = proxy.stats()
    assert (upload.status, upload.body) == (507, b"exceeded request buffer limit while retrying upstream")
    assert sorted(line.split(" ")[:4] for line in lines) == [
        ["idle-body", "200", "UT", "via_upstream"], ["upload", "507", "-", "request_payload_exceeded_retry_buffer_limit"]]
    assert stats["cluster.stall.upstream_rq_per_try_idle_timeout"] == 1
    assert stats["cluster.refuse.retry_or_shadow_abandoned"] == 1
    assert stats["cluster.refuse.upstream_rq_retry"] == 1
    assert stats["cluster.refuse.upstream_rq_total"] == 1  # the retry never started
