"""HTTP/2 to upstreams, against a real proxy process and a real HTTP/2 origin on loopback:
HTTP/1.1 and HTTP/2 clients through the router to clusters that speak HTTP/2 (explicit, or the
client's protocol), multiplexing, trailers both ways, resets, GOAWAY and refused streams."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends import Client, http_proxy, wait_until
from h2_backend import H2Backend, h2_backend
from h2_client import H2Client
from proxy_harness import simple_route, static_cluster
from tulle.http.headers import HeaderMap
from tulle.upstream.http2_pool import request_fields, response_headers

HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def http2_cluster(port: int, http2_options: dict[str, Any] | None = None, *, downstream: bool = False,
                  **extra: Any) -> dict[str, Any]:
    selection: dict[str, Any]
    if downstream:
        selection = {"use_downstream_protocol_config": {"http_protocol_options": {},
                                                        "http2_protocol_options": http2_options or {}}}
    else:
        selection = {"explicit_http_config": {"http2_protocol_options": http2_options or {}}}
    return static_cluster("h2", [port], typed_extension_protocol_options={
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {"@type": HTTP_OPTIONS, **selection}}, **extra)


@pytest.fixture
def origin() -> Iterator[H2Backend]:
    with h2_backend() as backend:
        yield backend


def echoed(body: bytes) -> dict[str, Any]:
    return json.loads(body)


# --- the header conversions, in memory ---------------------------------------------------

def test_request_fields_put_pseudo_headers_first_and_drop_connection_specific_ones() -> None:
    headers = HeaderMap([(":method", "POST"), (":path", "/a"), (":authority", "svc"), (":scheme", "http"),
                         ("connection", "keep-alive"), ("te", "trailers"), ("x-a", "1"), ("host", "svc"),
                         ("transfer-encoding", "chunked"), ("upgrade", "h2c")])
    assert request_fields(headers) == [(":method", "POST"), (":scheme", "http"), (":authority", "svc"),
                                       (":path", "/a"), ("te", "trailers"), ("x-a", "1")]
    gzip_te = HeaderMap([(":method", "GET"), (":path", "/"), (":authority", "svc"), ("te", "gzip")])
    assert ("te", "gzip") not in request_fields(gzip_te)  # RFC 9113: only "trailers" may cross


def test_response_headers_lead_with_status() -> None:
    status, headers = response_headers([(":status", "503"), ("grpc-status", "14")])
    assert status == 503 and headers.items() == [(":status", "503"), ("grpc-status", "14")]


# --- through a proxy -------------------------------------------------------------------

def test_http1_clients_reach_an_http2_upstream_over_one_multiplexed_connection(
        tmp_path: Path, origin: H2Backend) -> None:
    with http_proxy(tmp_path, simple_route("h2"), [http2_cluster(origin.port)]) as (process, port):
        with Client(port) as client:
            first = client.request("POST", "/first", [("te", "gzip"), ("x-app", "yes")], body=b"hello")
            second = client.request("GET", "/second")
        assert first.status == 200 and first.header("x-origin") == "h2"
        request = echoed(first.body)
        assert (request["method"], request["path"], request["authority"]) == ("POST", "/first", "example.com")
        names = [name for name, _ in request["headers"]]
        assert "x-app" in names and "x-request-id" in names and "te" not in names and "host" not in names
        assert request["body_length"] == 5
        assert echoed(second.body)["path"] == "/second"
        assert origin.connections == 1  # both requests on the one pooled connection
        stats = process.stats()
        assert stats["cluster.h2.upstream_cx_http2_total"] == 1
        assert stats.get("cluster.h2.upstream_cx_http1_total", 0) == 0
        assert stats["cluster.h2.upstream_rq_total"] == 2


def test_concurrent_requests_share_a_connection_up_to_max_concurrent_streams(
        tmp_path: Path, origin: H2Backend) -> None:
    cluster = http2_cluster(origin.port, {"max_concurrent_streams": 2})
    with http_proxy(tmp_path, simple_route("h2"), [cluster]) as (process, port), H2Client(port) as client:
        streams = [client.send_request("GET", "/hold") for _ in range(6)]
        wait_until(lambda: len(origin.held) == 6)
        assert origin.connections == 3  # Envoy's pool: a connection per max_concurrent_streams waiting
        origin.release_held()
        for stream_id in streams:
            assert client.wait(stream_id).status == 200
        assert process.stats()["cluster.h2.upstream_cx_http2_total"] == 3


def test_trailers_cross_both_ways_between_http2_peers(tmp_path: Path, origin: H2Backend) -> None:
    with http_proxy(tmp_path, simple_route("h2"), [http2_cluster(origin.port)]) as (_, port), \
            H2Client(port) as client:
        stream_id = client.send_request("POST", "/trailers", [("te", "trailers")], end_stream=False)
        client.send_body(stream_id, b"payload", end_stream=False)
        client.conn.send_headers(stream_id, [("x-request-trailer", "t1")], end_stream=True)
        client.flush()
        response = client.wait(stream_id)
    assert response.status == 200 and response.ended
    assert dict(response.trailers) == {"grpc-status": "0", "x-trailer": "yes"}
    request = echoed(response.body)
    assert request["trailers"] == [["x-request-trailer", "t1"]]
    assert ["te", "trailers"] in request["headers"] and request["body_length"] == 7


def test_an_http1_client_gets_the_body_and_not_the_trailers(tmp_path: Path, origin: H2Backend) -> None:
    with http_proxy(tmp_path, simple_route("h2"), [http2_cluster(origin.port)]) as (_, port), Client(port) as client:
        response = client.request("GET", "/trailers")
        assert response.status == 200 and echoed(response.body)["path"] == "/trailers"
        assert client.request("GET", "/after").status == 200  # the response ended cleanly: kept alive


def test_a_large_response_streams_through_with_flow_control(tmp_path: Path, origin: H2Backend) -> None:
    size = 3 * 1024 * 1024
    with http_proxy(tmp_path, simple_route("h2"), [http2_cluster(origin.port)]) as (_, port), Client(port) as client:
        response = client.request("GET", f"/big?n={size}")
    assert response.status == 200 and len(response.body) == size


def test_an_upstream_stream_reset_is_a_503_with_the_reset_reason(tmp_path: Path, origin: H2Backend) -> None:
    with http_proxy(tmp_path, simple_route("h2"), [http2_cluster(origin.port)]) as (process, port), \
            Client(port) as client:
        response = client.request("GET", "/reset")
        assert response.status == 503
        assert b"reset reason: remote reset" in response.body
        assert client.request("GET", "/fine").status == 200  # the connection survives a stream reset
        stats = process.stats()
        assert stats["cluster.h2.upstream_rq_rx_reset"] == 1
        assert stats["cluster.h2.upstream_cx_http2_total"] == 1


def test_refused_streams_are_retried_under_refused_stream(tmp_path: Path, origin: H2Backend) -> None:
    route = simple_route("h2", retry_policy={"retry_on": "refused-stream", "num_retries": 2})
    with http_proxy(tmp_path, route, [http2_cluster(origin.port)]) as (process, port), Client(port) as client:
        response = client.request("GET", "/refuse")
        assert response.status == 503 and b"remote refused stream reset" in response.body
        assert process.stats()["cluster.h2.upstream_rq_retry"] == 2
        assert [path for _, _, path in origin.requests].count("/refuse") == 3
    route = simple_route("h2", retry_policy={"retry_on": "connect-failure", "num_retries": 2})
    with http_proxy(tmp_path, route, [http2_cluster(origin.port)]) as (process, port), Client(port) as client:
        assert client.request("GET", "/refuse").status == 503
        assert process.stats().get("cluster.h2.upstream_rq_retry", 0) == 0  # not a refused-stream policy


def test_goaway_retires_the_connection_and_refuses_the_streams_it_did_not_process(
        tmp_path: Path, origin: H2Backend) -> None:
    with http_proxy(tmp_path, simple_route("h2"), [http2_cluster(origin.port)]) as (process, port), \
            Client(port) as client:
        response = client.request("GET", "/goaway")
        assert response.status == 503 and b"remote refused stream reset" in response.body
        after = client.request("GET", "/after")
        assert after.status == 200
        assert echoed(after.body)["connection"] == 2  # the GOAWAY'd connection takes no new stream
        assert process.stats()["cluster.h2.upstream_cx_http2_total"] == 2


def test_use_downstream_protocol_follows_the_client(tmp_path: Path, origin: H2Backend) -> None:
    cluster = http2_cluster(origin.port, downstream=True)
    with http_proxy(tmp_path, simple_route("h2"), [cluster]) as (process, port):
        with H2Client(port) as client:
            assert client.request("GET", "/from-h2").status == 200
        stats = process.stats()
        assert stats["cluster.h2.upstream_cx_http2_total"] == 1
        with Client(port) as client:
            response = client.request("GET", "/from-h1")  # HTTP/1.1 to an HTTP/2-only origin: it fails
        assert response.status in (502, 503)
        assert process.stats()["cluster.h2.upstream_cx_http1_total"] == 1


def test_many_clients_at_once_all_get_their_own_answers(tmp_path: Path, origin: H2Backend) -> None:
    results: list[str] = []
    lock = threading.Lock()
    with http_proxy(tmp_path, simple_route("h2"), [http2_cluster(origin.port)]) as (_, port):
        def run(number: int) -> None:
            with H2Client(port) as client:
                ids = {client.send_request("GET", f"/c{number}/s{index}"): f"/c{number}/s{index}"
                       for index in range(5)}
                for stream_id, path in ids.items():
                    response = client.wait(stream_id)
                    with lock:
                        results.append("ok" if echoed(response.body)["path"] == path else path)
        threads = [threading.Thread(target=run, args=(number,)) for number in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert results == ["ok"] * 20
