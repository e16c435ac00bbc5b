"""The HTTP/1.1 connection manager against a real proxy process on loopback.

Covers the downstream side of Envoy's HCM: keep-alive and connection close,
HTTP/1.0, pipelining, request/response framing, Expect: 100-continue, the
request headers the HCM adds or strips, header limits and malformed input,
and the HCM timeouts. Upstream-side behaviour lives in the router and pool tests.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import (
    Client,
    Message,
    ProxyContext,
    RawBackend,
    chunked_body,
    echo_backend,
    encode_request,
    file_access_log,
    get,
    http_proxy,
    never_answer,
    read_lines,
    respond,
    wait_until,
)
from proxy_harness import simple_route, static_cluster
from tulle.filters.network.http_connection_manager.connection_manager import request_id

UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    with echo_backend("echo") as port:
        yield port


def echo_proxy(tmp_path: Path, echo_port: int, **hcm: object) -> ProxyContext:
    return http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [echo_port])], **hcm)


# --------------------------------------------------------------------------- request ids (unit)


def test_request_id_is_a_version_4_uuid() -> None:
    ids = {request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for value in ids:
        assert UUID4.match(value), value
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_request_ids_of_a_forked_worker_differ_from_its_parents() -> None:
    """Workers are forked: each reseeds the generator, so no two processes repeat a sequence."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then out without running the parent's cleanup
        try:
            os.write(write_end, ",".join(request_id() for _ in range(20)).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    parent_ids = [request_id() for _ in range(20)]
    with os.fdopen(read_end, "rb") as pipe:
        child_ids = pipe.read().decode().split(",")
    os.waitpid(pid, 0)
    assert len(child_ids) == 20 and all(UUID4.match(value) for value in child_ids)
    assert not set(child_ids) & set(parent_ids)


def test_request_id_randomness_reaches_every_free_nibble() -> None:
    ids = [request_id().replace("-", "") for _ in range(500)]
    for position in range(32):
        seen = {value[position] for value in ids}
        if position == 12:
            assert seen == {"4"}
        elif position == 16:
            assert seen == set("89ab")
        else:
            assert len(seen) > 8, position


# --------------------------------------------------------------------------- connection reuse


def test_keep_alive_serves_many_requests_over_one_upstream_connection(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (proxy, port), Client(port) as client:
        for index in range(20):
            response = client.request("GET", f"/keep/{index}")
            assert response.status == 200
            assert response.json()["path"] == f"/keep/{index}"
            assert response.header("connection") is None
        stats = proxy.stats()
    assert stats["cluster.backend.upstream_cx_total"] == 1
    assert stats["http.ingress.downstream_cx_total"] == 1
    assert stats["http.ingress.downstream_rq_total"] == 20
    assert stats["http.ingress.downstream_rq_2xx"] == 20


def test_connection_close_from_client_closes_after_the_response(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (_, port), Client(port) as client:
        response = client.request("GET", "/bye", [("connection", "close")])
        assert response.status == 200
        assert response.header("connection") == "close"
        assert "connection" not in response.json()["headers"]
        assert client.closed_by_peer()


def test_http10_is_refused_with_426_unless_accepted(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (_, port), Client(port) as client:
        response = client.request("GET", "/old", host=None, version="HTTP/1.0")
        assert response.status == 426
        assert client.closed_by_peer()


def test_http10_uses_default_host_and_closes(tmp_path: Path, echo_port: int) -> None:
    options = {"accept_http_10": True, "default_host_for_http_10": "legacy.example"}
    with echo_proxy(tmp_path, echo_port, http_protocol_options=options) as (_, port), Client(port) as client:
        response = client.request("GET", "/old", host=None, version="HTTP/1.0")
        assert response.status == 200
        echo = response.json()
        assert echo["headers"]["host"] == "legacy.example"
        assert echo["path"] == "/old"
        assert client.closed_by_peer()


def test_http10_gets_a_close_delimited_body_for_a_chunked_upstream_response(tmp_path: Path, echo_port: int) -> None:
    options = {"accept_http_10": True, "default_host_for_http_10": "legacy.example"}
    with echo_proxy(tmp_path, echo_port, http_protocol_options=options) as (_, port), Client(port) as client:
        response = client.request("GET", "/chunked/5000", host=None, version="HTTP/1.0")
        assert response.status == 200
        assert response.header("transfer-encoding") is None  # HTTP/1.0 has no chunked coding
        assert response.header("content-length") is None
        assert response.body == b"y" * 5000


# --------------------------------------------------------------------------- pipelining


def test_pipelined_requests_are_answered_in_order(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (proxy, port), Client(port) as client:
        # the first takes longest: answering as they complete would put it last
        client.send(encode_request("GET", "/delay/300") + encode_request("GET", "/echo?second")
                    + encode_request("GET", "/status/201"))
        first, second, third = client.response(), client.response(), client.response()
        assert (first.status, first.body) == (200, b"delayed\n")
        assert (second.status, second.json()["path"]) == (200, "/echo?second")
        assert (third.status, third.body) == (201, b"status 201\n")
        assert proxy.stats()["http.ingress.downstream_rq_total"] == 3


def test_pipelined_request_with_a_body_behind_a_slow_one(tmp_path: Path, echo_port: int) -> None:
    body = bytes(range(256)) * 1024
    with echo_proxy(tmp_path, echo_port) as (_, port), Client(port) as client:
        client.send(encode_request("GET", "/delay/200") + encode_request("POST", "/upload", body=body)
                    + encode_request("GET", "/last"))
        assert client.response().body == b"delayed\n"
        upload = client.response().json()
        assert (upload["method"], upload["body_length"]) == ("POST", len(body))
        assert client.response().json()["path"] == "/last"


# --------------------------------------------------------------------------- bodies


def test_content_length_request_body_of_several_mib_reaches_upstream(tmp_path: Path, echo_port: int) -> None:
    body = b"0123456789abcdef" * (3 * MiB // 16)
    with echo_proxy(tmp_path, echo_port) as (_, port), Client(port) as client:
        response = client.request("POST", "/upload", body=body)
        assert response.status == 200
        assert response.json()["body_length"] == len(body)
        # the connection is still usable after a large body
        assert client.request("GET", "/after").json()["path"] == "/after"


def test_chunked_request_body_of_several_mib_reaches_upstream(tmp_path: Path, echo_port: int) -> None:
    body = b"abcdefgh" * (2 * MiB // 8) + b"tail"
    with echo_proxy(tmp_path, echo_port) as (_, port), Client(port) as client:
        response = client.request("PUT", "/upload", [("transfer-encoding", "chunked")], chunked_body(body, 100_000))
        assert response.status == 200
        echo = response.json()
        assert echo["body_length"] == len(body)
        assert echo["method"] == "PUT"


def test_chunked_upstream_response_is_chunked_to_an_http11_client(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (_, port), Client(port) as client:
        response = client.request("GET", "/chunked/300000")
        assert response.status == 200
        assert response.header("transfer-encoding") == "chunked"
        assert response.body == b"y" * 300000
        assert client.request("GET", "/next").status == 200


def test_large_content_length_response_arrives_intact(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (_, port), Client(port) as client:
        response = client.request("GET", f"/bytes/{4 * MiB}")
        assert response.header("content-length") == str(4 * MiB)
        assert response.body == b"x" * (4 * MiB)


def test_head_response_keeps_content_length_and_has_no_body(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (_, port), Client(port) as client:
        response = client.request("HEAD", "/bytes/1234")
        assert response.status == 200
        assert response.header("content-length") == "1234"
        # had the proxy sent a body, it would be read as the next response's head
        follow_up = client.request("GET", "/after-head")
        assert follow_up.json()["path"] == "/after-head"


@pytest.mark.parametrize("status, headers", [(204, []), (304, [("content-length", "512"), ("etag", '"v1"')])])
def test_no_body_statuses_are_forwarded_without_a_body(tmp_path: Path, status: int,
                                                       headers: list[tuple[str, str]]) -> None:
    with RawBackend(respond(status, headers, add_length=False)) as backend, \
            http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [backend.port])]) as (
                proxy, port), Client(port) as client:
        for _ in range(2):
            response = client.request("GET", "/nothing")
            assert response.status == status
            assert response.header("transfer-encoding") is None
            if status == 304:
                assert response.header("etag") == '"v1"'
        stats = proxy.stats()
    assert stats[f"cluster.backend.upstream_rq_{status}"] == 2
    assert stats["cluster.backend.upstream_cx_total"] == 1


# --------------------------------------------------------------------------- Expect: 100-continue


def test_expect_100_continue_is_answered_before_the_body_is_sent(tmp_path: Path, echo_port: int) -> None:
    body = b"z" * 100_000
    head = encode_request("POST", "/expect", [("expect", "100-continue"), ("content-length", str(len(body)))])
    with echo_proxy(tmp_path, echo_port) as (_, port), Client(port) as client:
        client.send(head)
        interim = client.response()
        assert interim.start_line == "HTTP/1.1 100 Continue"
        client.send(body)
        final = client.response()
        assert final.status == 200
        echo = final.json()
        assert echo["body_length"] == len(body)
        assert "expect" not in echo["headers"]


# --------------------------------------------------------------------------- request headers


def test_hop_by_hop_request_headers_are_not_forwarded(tmp_path: Path) -> None:
    hop_by_hop = [
        ("connection", "keep-alive, Upgrade, HTTP2-Settings"), ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"), ("te", "deflate"), ("upgrade", "h2c"),
        ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"), ("x-kept", "yes"),
    ]
    with RawBackend(respond(200, body=b"ok")) as backend, \
            http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [backend.port])]) as (
                _, port), Client(port) as client:
        assert client.request("GET", "/h2c", hop_by_hop).status == 200
        upstream = backend.requests[0]
        for name in ("connection", "keep-alive", "proxy-connection", "te", "upgrade", "http2-settings"):
            assert upstream.header(name) is None, name
        assert upstream.header("x-kept") == "yes"
        # the h2c offer was declined: the same connection keeps speaking HTTP/1.1
        assert client.request("GET", "/again").status == 200


def test_client_transfer_encoding_is_reframed_not_copied(tmp_path: Path) -> None:
    body = b"q" * 70_000
    with RawBackend(respond(200, body=b"ok")) as backend, \
            http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [backend.port])]) as (
                _, port), Client(port) as client:
        response = client.request("POST", "/te", [("transfer-encoding", "chunked")], chunked_body(body, 7000))
        assert response.status == 200
        upstream = backend.requests[0]
        assert upstream.header_all("transfer-encoding") in (["chunked"], [])
        assert not (upstream.header("transfer-encoding") and upstream.header("content-length"))
        assert upstream.body == body


def test_request_id_is_generated_and_forwarded_proto_set(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (_, port):
        first = get(port, "/id").json()["headers"]
        second = get(port, "/id").json()["headers"]
    assert UUID4.match(first["x-request-id"])
    assert first["x-request-id"] != second["x-request-id"]
    assert first["x-forwarded-proto"] == "http"


def test_existing_request_id_is_preserved(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (_, port):
        echo = get(port, "/id", [("x-request-id", "my-trace-0001")]).json()
    assert echo["headers"]["x-request-id"] == "my-trace-0001"


def test_request_id_in_response_when_asked(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port, always_set_request_id_in_response=True) as (_, port):
        response = get(port, "/id")
    assert response.header("x-request-id") == response.json()["headers"]["x-request-id"]


def test_x_forwarded_for_is_left_alone_without_use_remote_address(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (_, port):
        absent = get(port, "/xff").json()["headers"]
        given = get(port, "/xff", [("x-forwarded-for", "203.0.113.7")]).json()["headers"]
    assert "x-forwarded-for" not in absent
    assert given["x-forwarded-for"] == "203.0.113.7"


def test_x_forwarded_for_is_appended_with_use_remote_address(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port, use_remote_address=True) as (_, port):
        absent = get(port, "/xff").json()["headers"]
        given = get(port, "/xff", [("x-forwarded-for", "203.0.113.7")]).json()["headers"]
    assert absent["x-forwarded-for"] == "127.0.0.1"
    assert given["x-forwarded-for"] == "203.0.113.7,127.0.0.1"
    assert absent["x-forwarded-proto"] == "http"


def test_server_header_is_overwritten_with_envoy(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (_, port):
        response = get(port, "/server")
    assert response.header_all("server") == ["envoy"]  # the echo backend sends its own


def test_server_name_is_configurable(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port, server_name="tulle-edge") as (_, port):
        assert get(port, "/server").header_all("server") == ["tulle-edge"]


def test_absolute_form_target_sets_authority_and_path(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (_, port), Client(port) as client:
        echo = client.request("GET", "http://other.example:8080/abs?x=1", host="ignored.example").json()
        assert echo["path"] == "/abs?x=1"
        assert echo["headers"]["host"] == "other.example:8080"
        # RFC 9112 section 3.2.2: the target's authority replaces Host, whatever Host said (Envoy too)
        echo = client.request("GET", "http://other.example/abs", host="not a host").json()
        assert echo["headers"]["host"] == "other.example"


def test_merge_slashes(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port, merge_slashes=True) as (_, port):
        assert get(port, "//a///b//?q=//x").json()["path"] == "/a/b/?q=//x"


# --------------------------------------------------------------------------- limits and malformed input


def test_headers_over_max_request_headers_kb_get_431(tmp_path: Path, echo_port: int) -> None:
    log_path = tmp_path / "access.log"
    with echo_proxy(tmp_path, echo_port, max_request_headers_kb=1,
                    access_log=file_access_log(log_path, DETAILS_LOG)) as (proxy, port):
        assert get(port, "/small", [("x-fill", "a" * 500)]).status == 200
        with Client(port) as client:
            response = client.request("GET", "/big", [("x-fill", "a" * 2000)])
            assert (response.status, response.body) == (431, b"Request Header Fields Too Large")
            assert client.closed_by_peer()
        assert read_lines(log_path, 2)[1] == "431 DPE http1.headers_too_large"
        stats = proxy.stats()
    assert stats["http.ingress.downstream_rq_4xx"] == 1


def test_too_many_headers_get_431(tmp_path: Path, echo_port: int) -> None:
    log_path = tmp_path / "access.log"
    limits = {"max_headers_count": 10}
    with echo_proxy(tmp_path, echo_port, common_http_protocol_options=limits,
                    access_log=file_access_log(log_path, DETAILS_LOG)) as (_, port):
        assert get(port, "/few", [(f"x-h{i}", "v") for i in range(5)]).status == 200
        with Client(port) as client:
            response = client.request("GET", "/many", [(f"x-h{i}", "v") for i in range(20)])
            assert response.status == 431
            assert client.closed_by_peer()
        assert read_lines(log_path, 2)[1] == "431 DPE http1.too_many_headers"


DETAILS_LOG = "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"


@pytest.mark.parametrize(("payload", "details"), [
    (b"GET / HTTP/1.1\r\nhost: a\r\nthis is not a header\r\n\r\n", "http1.codec_error"),
    (b"NOT HTTP AT ALL\r\n\r\n", "http1.codec_error"),
    # duplicated Content-Length with different values: a smuggling vector, refused by the codec
    (b"GET / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\nhello", "http1.codec_error"),
    # RFC 9112 section 3.2: more than one Host line, even with the same value, is a 400
    (b"GET / HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\n\r\n", "http.invalid_authority"),
    (b"GET / HTTP/1.1\r\nhost: a.example\r\nhost: a.example\r\n\r\n", "http.invalid_authority"),
    (b"GET http://a.example/x HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\n\r\n",
     "http.invalid_authority"),
    # a Host (or absolute-form authority) with characters Envoy's authority check refuses
    (b"GET / HTTP/1.1\r\nhost: a.example b\r\n\r\n", "http.invalid_authority"),
    (b"GET / HTTP/1.1\r\nhost: a.example/evil\r\n\r\n", "http.invalid_authority"),
    (b"GET http://a.example?x=1 HTTP/1.1\r\nhost: a.example\r\n\r\n", "http.invalid_authority"),
])
def test_malformed_request_gets_400_and_close(tmp_path: Path, echo_port: int, payload: bytes, details: str) -> None:
    log_path = tmp_path / "access.log"
    with echo_proxy(tmp_path, echo_port, access_log=file_access_log(log_path, DETAILS_LOG)) as (proxy, port), \
            Client(port) as client:
        client.send(payload)
        response = client.response()
        # Envoy's codec error reply (sendProtocolError): the reason phrase as a text body, then close
        assert (response.status, response.body) == (400, b"Bad Request")
        assert response.header("content-type") == "text/plain"
        assert response.header("connection") == "close"
        assert client.closed_by_peer()
        assert read_lines(log_path, 1) == [f"400 DPE {details}"]
        stats = proxy.stats()
    assert stats["http.ingress.downstream_cx_protocol_error"] == 1
    assert stats["http.ingress.downstream_rq_total"] == 1  # Envoy's codec made a stream of it
    assert stats["http.ingress.downstream_rq_4xx"] == 1
    assert stats.get("cluster.backend.upstream_rq_total", 0) == 0


def test_a_host_with_every_character_envoy_allows_is_served(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (_, port):
        for host in ("a.example:8080", "[::1]:80", "user@a.example", "x-y_z~!$&'()*+,;=%41"):
            response = get(port, "/ok", host=host)
            assert response.status == 200, host
            assert response.json()["headers"]["host"] == host


def test_missing_or_empty_host_on_http11_gets_400(tmp_path: Path, echo_port: int) -> None:
    log_path = tmp_path / "access.log"
    with echo_proxy(tmp_path, echo_port, access_log=file_access_log(log_path, DETAILS_LOG)) as (_, port):
        for host in (None, ""):
            with Client(port) as client:
                response = client.request("GET", "/nohost", host=host)
                # the connection manager's own reply (Envoy's decodeHeaders): no body, no DPE
                assert (response.status, response.body) == (400, b"")
        assert read_lines(log_path, 2) == ["400 - missing_host_header"] * 2


# --------------------------------------------------------------------------- timeouts and disconnects


def test_request_timeout_answers_408_when_the_body_stalls(tmp_path: Path, echo_port: int) -> None:
    log_path = tmp_path / "access.log"
    with echo_proxy(tmp_path, echo_port, request_timeout="0.3s",
                    access_log=file_access_log(log_path, DETAILS_LOG)) as (proxy, port), Client(port) as client:
        client.send(encode_request("POST", "/stall", [("content-length", "100")]) + b"only part")
        response = client.response()
        assert (response.status, response.body) == (408, b"request timeout")
        assert client.closed_by_peer()
        assert proxy.stats()["http.ingress.downstream_rq_timeout"] == 1
        assert read_lines(log_path, 1) == ["408 - request_overall_timeout"]  # Envoy sets no flag (not DT)


def test_stream_idle_timeout_answers_408(tmp_path: Path, echo_port: int) -> None:
    # long enough that the first request's answer always comes first, however loaded the machine
    with echo_proxy(tmp_path, echo_port, stream_idle_timeout="1s") as (proxy, port), Client(port) as client:
        assert client.request("GET", "/quick").status == 200
        client.send(encode_request("POST", "/stall", [("content-length", "100")]) + b"only part")
        response = client.response()
        assert (response.status, response.body) == (408, b"stream timeout")
        assert client.closed_by_peer()
        assert proxy.stats()["http.ingress.downstream_rq_idle_timeout"] == 1


def test_stream_idle_timeout_waiting_for_the_upstream_is_504(tmp_path: Path) -> None:
    # Envoy (maybeRequestTimeoutCode): 408 only while the request is incomplete; once it is
    # fully received an idle stream is answered 504 "stream timeout".
    with RawBackend(never_answer) as backend, http_proxy(
            tmp_path, simple_route("backend"), [static_cluster("backend", [backend.port])],
            stream_idle_timeout="0.3s") as (proxy, port), Client(port) as client:
        response = client.request("GET", "/silent")
        assert (response.status, response.body) == (504, b"stream timeout")
        assert proxy.stats()["http.ingress.downstream_rq_idle_timeout"] == 1


def test_request_timeout_stops_once_the_request_is_received(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port, request_timeout="0.3s") as (proxy, port), Client(port) as client:
        response = client.request("POST", "/delay/700", body=b"complete")
        assert (response.status, response.body) == (200, b"delayed\n")
        assert proxy.stats()["http.ingress.downstream_rq_timeout"] == 0


class Trickle:
    """A client that sends a request head one byte at a time and never finishes it (a slowloris),
    until the proxy answers or closes. The pace only makes the client slow; nothing waits on it."""

    HEAD = b"GET /slow HTTP/1.1\r\nhost: example.com\r\nx-slow: "

    def __init__(self, client: Client, pace: float = 0.02) -> None:
        self.client = client
        self.pace = pace
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        index = 0
        while not self.stop.is_set():
            byte = self.HEAD[index:index + 1] or b"a"  # the header value never ends
            try:
                self.client.send(byte)
            except OSError:
                return  # the proxy closed: done
            index += 1
            self.sent += 1
            self.stop.wait(self.pace)

    def __enter__(self) -> Trickle:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def slow_head_reply(tmp_path: Path, echo_port: int, **hcm: object) -> tuple[Message, list[str], dict[str, int]]:
    """Trickle a head that never completes: the reply, its access log line and the stats."""
    log_path = tmp_path / "access.log"
    log_format = "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"
    with echo_proxy(tmp_path, echo_port, access_log=file_access_log(log_path, log_format), **hcm) as (proxy, port), \
            Client(port) as client:
        with Trickle(client) as trickle:
            response = client.response()  # while the head is still arriving
            assert trickle.sent < 200  # it was cut off, long before the head could have grown large
        assert client.closed_by_peer()
        lines = read_lines(log_path, 1)
        stats = proxy.stats()
    assert response.header("connection") == "close"
    assert stats["http.ingress.downstream_rq_total"] == 1 and stats["http.ingress.downstream_rq_4xx"] == 1
    assert stats.get("http.ingress.downstream_cx_idle_timeout", 0) == 0
    assert stats.get("cluster.backend.upstream_rq_total", 0) == 0
    return response, lines, stats


def test_request_headers_timeout_cuts_off_a_head_that_keeps_trickling(tmp_path: Path, echo_port: int) -> None:
    # Envoy's onRequestHeaderTimeout: from the head's first byte; the bytes that follow do not restart it
    response, lines, stats = slow_head_reply(tmp_path, echo_port, request_headers_timeout="0.3s")
    assert (response.status, response.body) == (408, b"request header timeout")
    assert lines == ["- 408 - request_header_timeout"]
    assert stats["http.ingress.downstream_rq_header_timeout"] == 1


def test_request_timeout_runs_while_the_head_arrives(tmp_path: Path, echo_port: int) -> None:
    response, lines, stats = slow_head_reply(tmp_path, echo_port, request_timeout="0.3s")
    assert (response.status, response.body) == (408, b"request timeout")
    assert lines == ["- 408 - request_overall_timeout"]  # Envoy's onRequestTimeout sets no flag
    assert stats["http.ingress.downstream_rq_timeout"] == 1


def test_stream_idle_timeout_runs_while_the_head_arrives(tmp_path: Path, echo_port: int) -> None:
    response, lines, stats = slow_head_reply(tmp_path, echo_port, stream_idle_timeout="0.3s")
    assert (response.status, response.body) == (408, b"stream timeout")
    assert lines == ["- 408 SI stream_idle_timeout"]
    assert stats["http.ingress.downstream_rq_idle_timeout"] == 1


def test_max_stream_duration_runs_while_the_head_arrives(tmp_path: Path, echo_port: int) -> None:
    response, lines, stats = slow_head_reply(
        tmp_path, echo_port, common_http_protocol_options={"max_stream_duration": "0.3s"})
    assert (response.status, response.body) == (408, b"downstream duration timeout")
    assert lines == ["- 408 - max_duration_timeout"]
    assert stats["http.ingress.downstream_rq_max_duration_reached"] == 1


def test_the_shortest_head_timeout_answers(tmp_path: Path, echo_port: int) -> None:
    response, _, stats = slow_head_reply(tmp_path, echo_port, request_headers_timeout="0.3s",
                                         request_timeout="60s", stream_idle_timeout="60s")
    assert response.body == b"request header timeout"
    assert stats.get("http.ingress.downstream_rq_timeout", 0) == 0


def test_the_idle_timeout_leaves_a_partial_head_to_the_stream_timeouts(tmp_path: Path, echo_port: int) -> None:
    # Envoy disables the connection idle timer once its codec made a stream (the head's first byte)
    log_path = tmp_path / "access.log"
    with echo_proxy(tmp_path, echo_port, request_headers_timeout="0.6s", stream_idle_timeout="0s",
                    common_http_protocol_options={"idle_timeout": "0.1s"},
                    access_log=file_access_log(log_path, "%RESPONSE_CODE% %RESPONSE_CODE_DETAILS%\n")) as (
                        proxy, port), Client(port) as client:
        client.send(b"GET /partial HTTP/1.1\r\nhost: exa")  # and nothing more
        response = client.response()
        assert (response.status, response.body) == (408, b"request header timeout")
        assert client.closed_by_peer()
        assert read_lines(log_path, 1) == ["408 request_header_timeout"]
        stats = proxy.stats()
    assert stats.get("http.ingress.downstream_cx_idle_timeout", 0) == 0


def test_a_partial_head_pipelined_behind_a_request_is_timed_once_that_request_ends(
        tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port, request_headers_timeout="0.2s") as (proxy, port), Client(port) as client:
        # the first request outlives the header timeout; the second head's clock starts after it (Envoy)
        client.send(encode_request("GET", "/delay/400") + b"GET /second HTTP/1.1\r\nhost: exa")
        first = client.response()
        assert (first.status, first.body) == (200, b"delayed\n")
        second = client.response()
        assert (second.status, second.body) == (408, b"request header timeout")
        assert client.closed_by_peer()
        stats = proxy.stats()
    assert stats["http.ingress.downstream_rq_header_timeout"] == 1
    assert stats["http.ingress.downstream_rq_total"] == 2


def test_a_head_sent_byte_by_byte_in_time_is_served_and_its_timer_stops_with_it(
        tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port, request_headers_timeout="0.3s") as (proxy, port), Client(port) as client:
        for byte in encode_request("GET", "/delay/700"):
            client.send(bytes([byte]))
        # the upstream takes longer than the header timeout: the head was complete, so it does not apply
        response = client.response()
        assert (response.status, response.body) == (200, b"delayed\n")
        assert client.request("GET", "/again").status == 200  # and the connection stays usable
        stats = proxy.stats()
    assert stats.get("http.ingress.downstream_rq_header_timeout", 0) == 0


def test_idle_timeout_closes_an_idle_client_connection(tmp_path: Path, echo_port: int) -> None:
    options = {"idle_timeout": "0.3s"}
    with echo_proxy(tmp_path, echo_port, common_http_protocol_options=options) as (proxy, port), \
            Client(port) as client:
        assert client.request("GET", "/once").status == 200
        assert client.closed_by_peer()
        assert wait_until(lambda: proxy.stats()["http.ingress.downstream_cx_idle_timeout"] == 1)


def test_client_disconnect_mid_request_is_logged_dc(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    with RawBackend(never_answer) as backend, http_proxy(
            tmp_path, simple_route("backend"), [static_cluster("backend", [backend.port])],
            access_log=file_access_log(log_path, "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%\n")) as (
                proxy, port):
        client = Client(port)
        client.send(encode_request("GET", "/gone"))
        assert wait_until(lambda: backend.requests)
        client.close()
        lines = read_lines(log_path, 1)
        assert lines == ["/gone 0 DC"]
        stats = wait_until(lambda: (s := proxy.stats())["http.ingress.downstream_rq_rx_reset"] == 1 and s)
        assert stats["http.ingress.downstream_rq_rx_reset"] == 1
        assert stats["cluster.backend.upstream_rq_tx_reset"] == 1
        # the half-done upstream exchange is not reused: the proxy closed it
        assert wait_until(lambda: backend.peer_closes == 1)


def test_stats_count_responses_by_class(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (proxy, port), Client(port) as client:
        for path in ("/status/200", "/status/201", "/status/404", "/status/503", "/status/500"):
            client.request("GET", path)
        stats = proxy.stats()
    assert stats["http.ingress.downstream_rq_total"] == 5
    assert stats["http.ingress.downstream_rq_2xx"] == 2
    assert stats["http.ingress.downstream_rq_4xx"] == 1
    assert stats["http.ingress.downstream_rq_5xx"] == 2
    assert stats["http.ingress.downstream_rq_completed"] == 5
    assert stats["http.ingress.downstream_cx_total"] == 1
    assert stats["http.ingress.downstream_cx_active"] == 1


def test_the_loaded_module_is_the_compiled_one_unless_pure_python_is_requested() -> None:
    from tulle import compiled

    assert "tulle.filters.network.http_connection_manager.connection_manager" in compiled.MODULES
    assert compiled.is_compiled("tulle.filters.network.http_connection_manager.connection_manager") == (not compiled.pure_python_requested())


def test_add_user_agent_names_this_node_to_the_upstream(tmp_path: Path, echo_port: int) -> None:
    from proxy_harness import ProxyProcess, free_port, http_listener

    port = free_port()
    config = {"node": {"id": "sidecar~10.0.0.7~reviews-v1.default", "cluster": "reviews"},
              "static_resources": {
                  "listeners": [http_listener("ingress", port, simple_route("echo"), add_user_agent=True)],
                  "clusters": [static_cluster("echo", [echo_port])]}}
    with ProxyProcess(config, tmp_path):
        plain = get(port, "/").json()["headers"]
        with_agent = get(port, "/", headers=[("user-agent", "curl/8")]).json()["headers"]
    assert plain["x-envoy-downstream-service-cluster"] == "reviews"
    assert plain["x-envoy-downstream-service-node"] == "sidecar~10.0.0.7~reviews-v1.default"
    assert plain["user-agent"] == "reviews"  # set only when the request has none
    assert with_agent["user-agent"] == "curl/8"
