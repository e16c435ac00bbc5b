"""The bookinfo-like sample: each service standalone, and the productpage -> details / reviews ->
ratings chain through a forward proxy written here (what the sidecar's HTTP_PROXY listener does)."""

from __future__ import annotations

import http.client
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from backends import handle_one_connection
from proxy_harness import free_port
from tulle.samples.bookinfo.app import (
    BookinfoServer,
    Upstreams,
    main,
    start_in_thread,
    versions_of,
)


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def get_json(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    status, response_headers, body = get(port, path, headers)
    return status, response_headers, json.loads(body)


class ForwardProxy(ThreadingHTTPServer):
    """A minimal HTTP forward proxy: absolute-form requests to ``<service>:9080`` go to the
    loopback port the test mapped that service to. Records what each hop carried."""

    daemon_threads = True

    def __init__(self, routes: dict[str, int]) -> None:
        self.routes = routes
        self.seen: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _ForwardHandler)


class _ForwardHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ForwardProxy

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        target = urllib.parse.urlsplit(self.path)
        self.server.seen.append({"absolute": bool(target.scheme), "host": target.hostname,
                                 "port": target.port, "path": target.path,
                                 "headers": {k.lower(): v for k, v in self.headers.items()}})
        port = self.server.routes.get(target.hostname or "")
        if not target.scheme or port is None or target.port != 9080:
            body = b"no route"
            self.send_response(503)
        else:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "proxy-connection")}
            request = urllib.request.Request(f"http://127.0.0.1:{port}{target.path}", headers=headers)
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            try:
                with direct.open(request, timeout=5) as upstream:
                    status, body, served_by = upstream.status, upstream.read(), upstream.headers["x-served-by"]
            except urllib.error.HTTPError as error:
                status, body, served_by = error.code, error.read(), error.headers["x-served-by"]
            self.send_response(status)
            self.send_header("x-served-by", served_by)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def servers() -> Iterator[list[ThreadingHTTPServer]]:
    started: list[ThreadingHTTPServer] = []
    yield started
    for server in started:
        server.shutdown()
        server.server_close()


def serve(started: list[ThreadingHTTPServer], service: str, version: str = "v1", **upstreams: Any) -> int:
    server = start_in_thread(service, version, upstreams=Upstreams(**upstreams))
    started.append(server)
    return server.server_address[1]


def test_details_ratings_and_reviews_v1_answer_standalone(servers: list[ThreadingHTTPServer]) -> None:
    details, ratings, reviews = serve(servers, "details"), serve(servers, "ratings"), serve(servers, "reviews", "v1")

    status, headers, body = get_json(details, "/details/7")
    assert (status, headers["x-served-by"]) == (200, "details-v1")
    assert body["id"] == 7 and body["author"] == "William Shakespeare" and body["ISBN-10"]
    assert body["chain"] == ["details-v1"] and body["versions"] == {"details": "v1"}

    status, headers, body = get_json(ratings, "/ratings/3")
    assert (status, headers["x-served-by"]) == (200, "ratings-v1")
    assert body["id"] == 3 and set(body["ratings"]) == {"Reviewer1", "Reviewer2"}
    assert headers["content-type"].startswith("application/json")

    # reviews v1 never calls ratings (it has no proxy or address for it here, and needs none)
    status, headers, body = get_json(reviews, "/reviews/0")
    assert (status, headers["x-served-by"]) == (200, "reviews-v1")
    assert body["chain"] == ["reviews-v1"]
    assert [r["reviewer"] for r in body["reviews"]] == ["Reviewer1", "Reviewer2"]
    assert all("rating" not in review for review in body["reviews"])


def test_services_answer_in_their_own_style(servers: list[ThreadingHTTPServer]) -> None:
    styles = {}
    for service in ("details", "ratings", "reviews"):
        port = serve(servers, service)
        _, headers, raw = get(port, "/health")
        assert json.loads(raw)["status"].lower().startswith(service)
        styles[service] = (headers.get("server"), headers.get("x-powered-by"), headers["content-type"],
                           b"\n" in raw)
    assert len(set(styles.values())) == 3  # no two services answer alike


def test_errors_bad_ids_and_unknown_paths(servers: list[ThreadingHTTPServer]) -> None:
    details = serve(servers, "details")
    status, headers, body = get_json(details, "/details/abc")
    assert status == 400 and "numeric" in body["error"] and headers["x-served-by"] == "details-v1"
    status, _, body = get_json(details, "/nope")
    assert status == 404 and "/nope" in body["error"]
    with pytest.raises(ValueError, match="reviews comes as"):
        BookinfoServer("reviews", "v9", ("127.0.0.1", 0), Upstreams())
    with pytest.raises(ValueError, match="unknown service"):
        BookinfoServer("orders", "v1", ("127.0.0.1", 0), Upstreams())


@pytest.mark.parametrize(("version", "color"), [("v2", "black"), ("v3", "red")])
def test_reviews_with_stars_call_ratings_at_an_explicit_address(
        servers: list[ThreadingHTTPServer], version: str, color: str) -> None:
    ratings = serve(servers, "ratings")
    reviews = serve(servers, "reviews", version, addresses={"ratings": f"127.0.0.1:{ratings}"})
    status, headers, body = get_json(reviews, "/reviews/0")
    assert (status, headers["x-served-by"]) == (200, f"reviews-{version}")
    assert body["chain"] == [f"reviews-{version}", "ratings-v1"]
    stars = {review["reviewer"]: review["rating"] for review in body["reviews"]}
    _, _, rated = get_json(ratings, "/ratings/0")
    assert stars == {name: {"stars": count, "color": color} for name, count in rated["ratings"].items()}


def test_reviews_say_so_when_ratings_is_down(servers: list[ThreadingHTTPServer]) -> None:
    reviews = serve(servers, "reviews", "v2", addresses={"ratings": f"127.0.0.1:{free_port()}"}, timeout=1)
    status, _, body = get_json(reviews, "/reviews/0")
    assert status == 200 and body["chain"] == ["reviews-v2"]
    assert all("unavailable" in review["rating"]["error"] for review in body["reviews"])


def _chain_through_proxy(servers: list[ThreadingHTTPServer], reviews_version: str,
                         monkeypatch: pytest.MonkeyPatch) -> tuple[int, ForwardProxy]:
    routes: dict[str, int] = {}
    proxy = ForwardProxy(routes)
    servers.append(proxy)
    threading.Thread(target=proxy.serve_forever, args=(0.05,), daemon=True).start()
    # the apps find the proxy as urllib does, and a no_proxy covering everything must not bypass the mesh
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("no_proxy", "*")
    for service, version in (("details", "v1"), ("ratings", "v1"), ("reviews", reviews_version)):
        server = start_in_thread(service, version)
        servers.append(server)
        routes[service] = server.server_address[1]
    page = start_in_thread("productpage")
    servers.append(page)
    return page.server_address[1], proxy


def test_productpage_chain_through_a_forward_proxy_propagates_tracing_headers(
        servers: list[ThreadingHTTPServer], monkeypatch: pytest.MonkeyPatch) -> None:
    productpage, proxy = _chain_through_proxy(servers, "v3", monkeypatch)
    trace = {"x-request-id": "req-42", "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
             "x-b3-spanid": "e457b5a2e4d86bd1", "x-b3-sampled": "1", "b3": "80f198ee-e457b5a2-1",
             "end-user": "jason", "x-unrelated": "stays here"}
    status, headers, body = get_json(productpage, "/productpage?format=json", trace)
    assert (status, headers["x-served-by"]) == (200, "productpage-v1")
    assert body["chain"] == ["productpage-v1", "details-v1", "reviews-v3", "ratings-v1"]
    assert body["versions"]["reviews"] == "v3" and body["errors"] == {}
    assert {review["rating"]["color"] for review in body["reviews"]} == {"red"}

    hops = {(hop["host"], hop["path"]): hop for hop in proxy.seen}
    assert set(hops) == {("details", "/details/0"), ("reviews", "/reviews/0"), ("ratings", "/ratings/0")}
    for hop in hops.values():
        assert hop["absolute"] and hop["port"] == 9080  # absolute-form, by service name
        assert hop["headers"]["host"] == f"{hop['host']}:9080"
        for name, value in trace.items():
            if name != "x-unrelated":
                assert hop["headers"].get(name) == value, (hop["host"], name)
        assert "x-unrelated" not in hop["headers"]


def test_productpage_html_names_the_chain_and_survives_a_missing_reviews(
        servers: list[ThreadingHTTPServer], monkeypatch: pytest.MonkeyPatch) -> None:
    productpage, proxy = _chain_through_proxy(servers, "v2", monkeypatch)
    status, headers, raw = get(productpage, "/productpage")
    page = raw.decode()
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "The Comedy of Errors" in page and "color:black" in page
    embedded = json.loads(re.search(r'id="bookinfo-chain">(.*?)</script>', page).group(1))
    assert embedded["versions"] == {"productpage": "v1", "details": "v1", "reviews": "v2", "ratings": "v1"}

    del proxy.routes["reviews"]  # the proxy answers 503 for reviews now
    status, _, body = get_json(productpage, "/productpage?format=json")
    assert status == 200 and body["reviews"] is None and "503" in body["errors"]["reviews"]
    assert body["chain"] == ["productpage-v1", "details-v1"]
    assert "reviews are currently unavailable" in get(productpage, "/productpage")[2].decode()
    status, _, body = get_json(productpage, "/api/v1/products/0/reviews")
    assert status == 503 and body["chain"] == ["productpage-v1"]


def test_product_api_passes_the_upstream_answer_through(
        servers: list[ThreadingHTTPServer], monkeypatch: pytest.MonkeyPatch) -> None:
    productpage, _ = _chain_through_proxy(servers, "v1", monkeypatch)
    status, _, body = get_json(productpage, "/api/v1/products/5")
    assert status == 200 and body["id"] == 5 and body["chain"] == ["productpage-v1", "details-v1"]
    status, _, body = get_json(productpage, "/api/v1/products/0/ratings")
    assert status == 200 and body["ratings"] and body["versions"] == {"productpage": "v1", "ratings": "v1"}
    _, _, body = get_json(productpage, "/api/v1/products")
    assert [product["id"] for product in body["products"]] == [0]


def test_versions_of_a_chain() -> None:
    assert versions_of(["productpage-v1", "reviews-v2", "ratings-v1"]) == {
        "productpage": "v1", "reviews": "v2", "ratings": "v1"}


def test_module_runs_one_service_on_its_app_port() -> None:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tulle.samples.bookinfo.app", "ratings", "--version", "v1",
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert b"ratings-v1 on 127.0.0.1:" in process.stdout.readline()
        deadline = time.monotonic() + 5
        while True:
            try:
                status, headers, _ = get_json(port, "/ratings/1")
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        assert (status, headers["x-served-by"]) == (200, "ratings-v1")
    finally:
        process.terminate()
        process.wait(5)


def test_command_line_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["reviews", "--version", "v7", "--port", "0"])
    assert "reviews comes as" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["details", "--upstream", "nowhere"])
    assert "SERVICE=HOST:PORT" in capsys.readouterr().err


def test_each_keep_alive_response_is_one_write_sent_without_delay() -> None:
    """Head and body in separate writes cost a delayed ACK (~40 ms) per keep-alive request."""
    server = BookinfoServer("details", "v1", ("127.0.0.1", 0), Upstreams())
    try:
        accepted, thread = handle_one_connection(server)
        connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
        for path in ["/details/1", "/health", "/details/x", "/nowhere"] * 5:
            connection.request("GET", path)
            response = connection.getresponse()
            assert response.status in (200, 400, 404) and response.read()
        connection.close()
        thread.join(5)
        assert not thread.is_alive()
        assert accepted[0].writes == 20
        assert (socket.IPPROTO_TCP, socket.TCP_NODELAY, True) in accepted[0].options
    finally:
        server.server_close()


def test_a_taken_app_port_is_a_clear_error_not_a_traceback() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "tulle.samples.bookinfo.app", "reviews", "--version", "v2",
                                 "--port", str(port)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"reviews-v2 cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
