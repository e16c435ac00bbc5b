"""The HTTP API's guard: Host, Origin, bearer token and body type, on a tiny aiohttp app served on
loopback (aiohttp's test server), and with raw sockets where a client library would fix the request."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tulle.controlplane.api.guard import _split_allowed, request_guard

TOKEN = "guard-test-token-0123456789abcdefghijklmnop"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}


def make_app(allowed_hosts: tuple[str, ...] = ()) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"body": (await request.read()).decode()})

    app = web.Application(middlewares=[request_guard(TOKEN, allowed_hosts)])
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/apis/v1/resources", echo)
    app.router.add_post("/apis/v1/resources", echo)
    return app


Scenario = Callable[[TestClient], Awaitable[None]]


def run(scenario: Scenario, allowed_hosts: tuple[str, ...] = (), host: str = "127.0.0.1") -> None:
    async def main() -> None:
        async with TestClient(TestServer(make_app(allowed_hosts), host=host)) as client:
            await scenario(client)

    asyncio.run(main())


async def status_and_error(response: Any) -> tuple[int, str]:
    answer = await response.json()
    return response.status, answer.get("error", "")


# --- the token --------------------------------------------------------------------------------


def test_every_route_but_healthz_needs_the_bearer_token() -> None:
    async def scenario(client: TestClient) -> None:
        missing = await client.get("/apis/v1/resources")
        assert missing.status == 401
        assert missing.headers["WWW-Authenticate"] == 'Bearer realm="tulle"'
        assert "Authorization: Bearer <token>" in (await missing.json())["error"]

        wrong = await client.get("/apis/v1/resources", headers={"Authorization": "Bearer " + "x" * 43})
        assert wrong.status == 401
        assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="tulle", error="invalid_token"'
        assert (await wrong.json())["error"] == "the bearer token is not this control plane's"

        prefix = await client.get("/apis/v1/resources", headers={"Authorization": f"Bearer {TOKEN[:-1]}"})
        assert prefix.status == 401
        basic = await client.get("/apis/v1/resources", headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status == 401 and basic.headers["WWW-Authenticate"] == 'Bearer realm="tulle"'
        write = await client.post("/apis/v1/resources", data=b"[]", headers=JSON)
        assert write.status == 401

        assert (await client.get("/apis/v1/resources", headers=AUTH)).status == 200
        # the scheme is case-insensitive (RFC 9110 §11.1)
        assert (await client.get("/apis/v1/resources", headers={"Authorization": f"bearer {TOKEN}"})).status == 200
        assert (await client.post("/apis/v1/resources", data=b"[]", headers={**AUTH, **JSON})).status == 200

        # liveness stays open, but only for reading
        healthz = await client.get("/healthz")
        assert (healthz.status, await healthz.text()) == (200, "ok")
        assert (await client.post("/healthz")).status == 401
        # an unknown path tells a caller without the token nothing (401, not 404)
        assert (await client.get("/apis/v1/secret-route")).status == 401
        assert (await client.get("/apis/v1/secret-route", headers=AUTH)).status == 404

    run(scenario)


# --- cross-site requests ----------------------------------------------------------------------


def test_a_foreign_origin_is_refused_even_with_the_token() -> None:
    async def scenario(client: TestClient) -> None:
        port = client.server.port
        for origin in ("http://evil.example", f"http://evil.example:{port}", "null", f"https://127.0.0.1:{port}",
                       f"http://127.0.0.1:{port + 1 if port < 65535 else 1}"):
            response = await client.post("/apis/v1/resources", data=b"[]",
                                         headers={**AUTH, **JSON, "Origin": origin})
            status, error = await status_and_error(response)
            assert status == 403, origin
            assert error == f"cross-origin requests are refused: Origin {origin!r} is not this API's origin"
        # GETs too: DNS rebinding reads answers
        assert (await client.get("/apis/v1/resources", headers={**AUTH, "Origin": "http://evil.example"})).status == 403
        for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
            same = await client.post("/apis/v1/resources", data=b"[]", headers={**AUTH, **JSON, "Origin": origin})
            assert same.status == 200, origin

    run(scenario)


def test_sec_fetch_site_cross_site_is_refused() -> None:
    async def scenario(client: TestClient) -> None:
        for site in ("cross-site", "same-site"):
            response = await client.get("/apis/v1/resources", headers={**AUTH, "Sec-Fetch-Site": site})
            assert await status_and_error(response) == (403, f"cross-site requests are refused (Sec-Fetch-Site: {site})")
        for site in ("same-origin", "none"):
            assert (await client.get("/apis/v1/resources", headers={**AUTH, "Sec-Fetch-Site": site})).status == 200

    run(scenario)


# --- Host (DNS rebinding) -------------------------------------------------------------------


def test_a_host_that_does_not_name_the_api_is_misdirected() -> None:
    async def scenario(client: TestClient) -> None:
        port = client.server.port
        for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1:{port + 1 if port < 65535 else 1}",
                     f"10.1.2.3:{port}"):
            response = await client.get("/apis/v1/resources", headers={**AUTH, "Host": host})
            status, error = await status_and_error(response)
            assert status == 421, host
            assert error.startswith(f"Host {host!r} does not name this API (it answers to ")
            assert f"127.0.0.1:{port}" in error and "--api-allowed-host NAME" in error
        # refused before the token is even looked at, and for the open path as well
        assert (await client.get("/healthz", headers={"Host": f"attacker.example:{port}"})).status == 421
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LocalHost:{port}", f"[::1]:{port}"):
            assert (await client.get("/apis/v1/resources", headers={**AUTH, "Host": host})).status == 200, host

    run(scenario)


def test_allowed_host_names_are_added_with_or_without_port() -> None:
    async def scenario(client: TestClient) -> None:
        port = client.server.port
        for host in (f"mesh.internal:{port}", "cp.example:8443", f"[fd00::1]:{port}"):
            assert (await client.get("/apis/v1/resources", headers={**AUTH, "Host": host})).status == 200, host
        for host in ("cp.example:9999", f"cp.example:{port}", "mesh.internal:1"):
            assert (await client.get("/apis/v1/resources", headers={**AUTH, "Host": host})).status == 421, host
        origin = {"Origin": "http://cp.example:8443", "Host": "cp.example:8443"}
        assert (await client.get("/apis/v1/resources", headers={**AUTH, **origin})).status == 200

    run(scenario, allowed_hosts=("Mesh.Internal", "cp.example:8443", "fd00::1"))


def test_split_allowed_hosts() -> None:
    names, authorities = _split_allowed(["a.example", "b.example:81", "[::2]:82", "::3", "[::4]", " ", "C.EXAMPLE"])
    assert names == {"a.example", "[::3]", "[::4]", "c.example"}
    assert authorities == {"b.example:81", "[::2]:82"}


def raw_request(port: int, head: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(head.encode())
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


@pytest.mark.parametrize(("version", "hosts"), [
    ("1.1", ""), ("1.1", "Host: 127.0.0.1:{port}\r\nHost: evil.example\r\n"), ("1.0", "")],
    ids=["missing", "repeated", "missing-http1.0"])
def test_a_request_needs_exactly_one_host_header(version: str, hosts: str) -> None:
    async def scenario(client: TestClient) -> None:
        port = client.server.port
        head = f"GET /apis/v1/resources HTTP/{version}\r\n{hosts.format(port=port)}Authorization: Bearer {TOKEN}\r\n" \
               "Connection: close\r\n\r\n"
        answer = await asyncio.to_thread(raw_request, port, head)
        assert answer.split(b" ", 2)[1] == b"400", answer  # aiohttp's parser refuses HTTP/1.1's itself
        expected = b"a request needs exactly one Host header" if version == "1.0" else b"'Host' header"
        assert expected in answer, answer

    run(scenario)


def test_ipv6_loopback_names() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")

    async def scenario(client: TestClient) -> None:
        port = client.server.port
        for host in (f"[::1]:{port}", f"localhost:{port}"):
            assert (await client.get("/apis/v1/resources", headers={**AUTH, "Host": host})).status == 200
        assert (await client.get("/apis/v1/resources", headers={**AUTH, "Host": f"evil:{port}"})).status == 421

    run(scenario, host="::1")


# --- the body's type ------------------------------------------------------------------------


def test_a_body_must_be_json_or_yaml() -> None:
    async def scenario(client: TestClient) -> None:
        for content_type in ("text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded",
                             "multipart/form-data; boundary=x", "application/octet-stream"):
            response = await client.post("/apis/v1/resources", data=b"kind: VirtualService",
                                         headers={**AUTH, "Content-Type": content_type})
            status, error = await status_and_error(response)
            assert status == 415, content_type
            assert error == ("a request body must be JSON or YAML, with Content-Type application/json or "
                             f"application/yaml; this one has Content-Type {content_type!r}")
        for content_type in ("application/json", "application/json; charset=utf-8", "Application/JSON",
                             "application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"):
            response = await client.post("/apis/v1/resources", data=b"[]",
                                         headers={**AUTH, "Content-Type": content_type})
            assert response.status == 200, content_type
        # no body, no type needed (a heartbeat is a bare PUT)
        assert (await client.post("/apis/v1/resources", headers=AUTH)).status == 200

    run(scenario)


def test_a_body_without_content_type_is_refused() -> None:
    async def scenario(client: TestClient) -> None:
        port = client.server.port
        head = (f"POST /apis/v1/resources HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
                "Content-Length: 2\r\nConnection: close\r\n\r\n[]")
        answer = await asyncio.to_thread(raw_request, port, head)
        assert answer.startswith(b"HTTP/1.1 415 ")
        assert b"this one has no Content-Type" in answer

    run(scenario)
