"""WebSocket through Tulle (HCM ``upgrade_configs``): a real client and server from the ``websockets``
library, through a proxy process on loopback; upgrades the config does not allow are refused."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from backends import bootstrap, wait_until
from proxy_harness import ProxyProcess, free_port, http_listener, simple_route, static_cluster
from ws_backend import EchoServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def proxy_config(port: int, upstream: int, **hcm: Any) -> dict[str, Any]:
    route = simple_route("ws", timeout="0s")
    return bootstrap([http_listener("ingress", port, route, **hcm)], [static_cluster("ws", [upstream])])


def test_messages_flow_both_ways_through_the_proxy(tmp_path: Path, echo: EchoServer) -> None:
    port = free_port()
    config = proxy_config(port, echo.port, upgrade_configs=[{"upgrade_type": "websocket"}])
    with ProxyProcess(config, tmp_path) as proxy:
        async def scenario() -> None:
            async with connect(f"ws://127.0.0.1:{port}/chat?room=1") as socket:
                await socket.send("hello")
                assert await socket.recv() == "HELLO"
                await socket.send(b"\x00\x01binary" * 1000)
                assert await socket.recv() == b"\x00\x01binary" * 1000
                for index in range(50):
                    await socket.send(f"m{index}")
                assert [await socket.recv() for _ in range(50)] == [f"M{index}" for index in range(50)]
                pong = await socket.ping()
                await asyncio.wait_for(pong, 5)

        asyncio.run(scenario())
        path, headers = echo.handshakes[-1]
        assert path == "/chat?room=1"
        assert headers["upgrade"].lower() == "websocket" and "upgrade" in headers["connection"].lower()
        assert "x-request-id" in headers and "sec-websocket-key" in headers
        stats = proxy.stats()
        assert stats["http.ingress.downstream_cx_upgrades_total"] == 1
        assert stats["cluster.ws.upstream_rq_101"] == 1


def test_closing_either_side_ends_the_tunnel(tmp_path: Path, echo: EchoServer) -> None:
    port = free_port()
    config = proxy_config(port, echo.port, upgrade_configs=[{"upgrade_type": "WebSocket"}])  # any case
    with ProxyProcess(config, tmp_path) as proxy:
        async def scenario() -> None:
            socket = await connect(f"ws://127.0.0.1:{port}/")
            await socket.send("x")
            assert await socket.recv() == "X"
            await socket.close()
            assert socket.close_code == 1000  # the server's close frame came back through the proxy

        asyncio.run(scenario())
        wait_until(lambda: proxy.stats().get("http.ingress.downstream_cx_upgrades_active", 0) == 0)


def test_upgrades_are_refused_unless_configured(tmp_path: Path, echo: EchoServer) -> None:
    port = free_port()
    with ProxyProcess(proxy_config(port, echo.port), tmp_path):
        async def scenario() -> None:
            with pytest.raises(InvalidStatus) as caught:
                await connect(f"ws://127.0.0.1:{port}/")
            assert caught.value.response.status_code == 403  # Envoy's upgrade_failed

        asyncio.run(scenario())


def test_a_route_can_turn_the_upgrade_off(tmp_path: Path, echo: EchoServer) -> None:
    port = free_port()
    route = {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/closed"}, "route": {"cluster": "ws", "timeout": "0s", "upgrade_configs": [
            {"upgrade_type": "websocket", "enabled": False}]}},
        {"match": {"prefix": "/"}, "route": {"cluster": "ws", "timeout": "0s"}}]}]}
    config = bootstrap([http_listener("ingress", port, route, upgrade_configs=[{"upgrade_type": "websocket"}])],
                       [static_cluster("ws", [echo.port])])
    with ProxyProcess(config, tmp_path):
        async def scenario() -> None:
            with pytest.raises(InvalidStatus) as caught:
                await connect(f"ws://127.0.0.1:{port}/closed")
            assert caught.value.response.status_code == 403
            async with connect(f"ws://127.0.0.1:{port}/open") as socket:
                await socket.send("ok")
                assert await socket.recv() == "OK"

        asyncio.run(scenario())
