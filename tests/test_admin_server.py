"""Every admin endpoint over a real loopback socket, plus HTTP/1.1 robustness."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from test_admin_backend import FakeBackend
from tulle.admin.server import MAX_HEADER_BYTES, AdminServer


def with_server(test: Callable[[AdminServer, FakeBackend], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        backend = FakeBackend()
        server = AdminServer(backend, "127.0.0.1", 0)
        await server.start()
        try:
            return await test(server, backend)
        finally:
            await server.close()

    return asyncio.run(main())


def fetch(port: int, method: str, path: str) -> tuple[int, dict[str, str], str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        connection.close()


async def afetch(server: AdminServer, method: str, path: str) -> tuple[int, dict[str, str], str]:
    return await asyncio.to_thread(fetch, server.port, method, path)


def raw_exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def test_binds_an_ephemeral_port() -> None:
    async def test(server: AdminServer, backend: FakeBackend) -> None:
        assert server.port > 0
        status, headers, body = await afetch(server, "GET", "/ready")
        assert (status, body) == (200, "LIVE\n")
        assert headers["content-type"].startswith("text/plain")
        assert headers["content-length"] == "5"

    with_server(test)


def test_read_only_endpoints() -> None:
    async def test(server: AdminServer, backend: FakeBackend) -> None:
        status, _, body = await afetch(server, "GET", "/")
        assert status == 200 and body.startswith("admin commands are:")
        assert (await afetch(server, "GET", "/help"))[2] == body
        status, headers, body = await afetch(server, "GET", "/server_info")
        assert status == 200 and headers["content-type"] == "application/json"
        assert json.loads(body)["version"] == "tulle/0.1.0"
        assert "cluster.foo.upstream_rq_total: 4\n" in (await afetch(server, "GET", "/stats"))[2]
        stats_json = json.loads((await afetch(server, "GET", "/stats?format=json"))[2])
        assert {"name": "server.live", "value": 1} in stats_json["stats"]
        prometheus = (await afetch(server, "GET", "/stats/prometheus"))[2]
        assert 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="ingress_http"} 4' in prometheus
        assert (await afetch(server, "GET", "/stats?format=prometheus"))[2] == prometheus
        assert "foo::127.0.0.1:8080::weight::3" in (await afetch(server, "GET", "/clusters"))[2]
        clusters = json.loads((await afetch(server, "GET", "/clusters?format=json"))[2])
        assert clusters["cluster_statuses"][0]["host_statuses"][0]["hostname"] == "backend"
        assert json.loads((await afetch(server, "GET", "/config_dump"))[2]) == backend.dump
        assert (await afetch(server, "GET", "/listeners"))[2] == "ingress::0.0.0.0:10000\n"
        listeners = json.loads((await afetch(server, "GET", "/listeners?format=json"))[2])
        assert listeners["listener_statuses"][0]["name"] == "ingress"
        assert (await afetch(server, "GET", "/logging"))[2].startswith("active loggers:\n")
        assert "allocated" in json.loads((await afetch(server, "GET", "/memory"))[2])

    with_server(test)


def test_mutating_endpoints() -> None:
    async def test(server: AdminServer, backend: FakeBackend) -> None:
        status, _, body = await afetch(server, "GET", "/healthcheck/fail")
        assert (status, body) == (405, "Method GET not allowed, POST required.")
        assert (await afetch(server, "POST", "/healthcheck/fail"))[:3:2] == (200, "OK\n")
        assert (await afetch(server, "GET", "/ready"))[0] == 503
        await afetch(server, "POST", "/healthcheck/ok")
        assert backend.hc_failed is False
        await afetch(server, "POST", "/drain_listeners?graceful")
        assert backend.drains == [(False, True)]
        status, _, body = await afetch(server, "POST", "/logging?level=warning")
        assert status == 200 and "  http: warning\n" in body
        assert (await afetch(server, "POST", "/quitquitquit"))[2] == "OK\n"
        for _ in range(100):
            if backend.quits:
                break
            await asyncio.sleep(0.01)
        assert backend.quits == 1

    with_server(test)


def test_unknown_path() -> None:
    async def test(server: AdminServer, backend: FakeBackend) -> None:
        status, _, body = await afetch(server, "GET", "/does/not/exist")
        assert status == 404 and body.startswith("invalid path. admin commands are:")

    with_server(test)


def test_keep_alive_and_pipelining() -> None:
    async def test(server: AdminServer, backend: FakeBackend) -> bytes:
        payload = (
            b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /listeners HTTP/1.1\r\nHost: a\r\n\r\n"
            b"POST /healthcheck/fail HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        return await asyncio.to_thread(raw_exchange, server.port, payload)

    replies = with_server(test).decode()
    statuses = re.findall(r"HTTP/1\.1 \d{3} [^\r]*", replies)
    assert statuses == ["HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 200 OK", "HTTP/1.1 503 Service Unavailable"]
    assert replies.index("LIVE\n") < replies.index("ingress::0.0.0.0:10000") < replies.index("DRAINING\n")
    assert replies.count("connection: close") == 1


def test_http10_closes_after_response() -> None:
    async def test(server: AdminServer, backend: FakeBackend) -> bytes:
        return await asyncio.to_thread(raw_exchange, server.port, b"GET /ready HTTP/1.0\r\n\r\n")

    reply = with_server(test)
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"LIVE\n")


def test_malformed_request_gets_400_and_server_survives() -> None:
    async def test(server: AdminServer, backend: FakeBackend) -> tuple[bytes, int]:
        reply = await asyncio.to_thread(raw_exchange, server.port, b"NOT HTTP AT ALL\r\n\r\n")
        status, _, _ = await afetch(server, "GET", "/ready")
        return reply, status

    reply, status_after = with_server(test)
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"connection: close" in reply
    assert status_after == 200


def test_oversized_headers_get_431() -> None:
    async def test(server: AdminServer, backend: FakeBackend) -> bytes:
        payload = b"GET /ready HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 10) + b"\r\n\r\n"
        return await asyncio.to_thread(raw_exchange, server.port, payload)

    assert with_server(test).startswith(b"HTTP/1.1 431 ")


def test_head_has_no_body() -> None:
    async def test(server: AdminServer, backend: FakeBackend) -> bytes:
        return await asyncio.to_thread(
            raw_exchange, server.port, b"HEAD /ready HTTP/1.1\r\nConnection: close\r\n\r\n"
        )

    reply = with_server(test)
    assert b"content-length: 5\r\n" in reply
    assert reply.endswith(b"\r\n\r\n")


def test_failing_backend_gives_500_not_a_crash() -> None:
    async def test(server: AdminServer, backend: FakeBackend) -> tuple[int, int]:
        async def broken() -> list[dict[str, Any]]:
            raise RuntimeError("boom")

        backend.clusters = broken  # type: ignore[method-assign]
        status, _, _ = await afetch(server, "GET", "/clusters")
        after, _, _ = await afetch(server, "GET", "/ready")
        return status, after

    assert with_server(test) == (500, 200)


def test_close_drops_open_connections() -> None:
    async def test(server: AdminServer, backend: FakeBackend) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /ready HTTP/1.1\r\nHost: a\r\n\r\n")
        await reader.readuntil(b"LIVE\n")
        await server.close()
        rest = await asyncio.wait_for(reader.read(), timeout=10)
        writer.close()
        return rest

    assert with_server(test) == b""
