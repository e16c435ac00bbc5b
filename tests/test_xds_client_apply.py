"""The proxy's xDS applier in-process: a listener whose address another process listens on is
rejected whole (Envoy: "cannot bind ...: Address already in use"), never shared through SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import socket

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2

from scripted_ads import rds_listener, route_config
from tulle.server.context import ServerState
from tulle.server.worker import Worker
from tulle.xds_client.apply import LISTENER_TYPE, ROUTE_TYPE, UpdateRejected, XdsApplier


def applier(worker_index: int = 0) -> XdsApplier:
    bootstrap = bootstrap_pb2.Bootstrap()
    bootstrap.node.id = "sidecar-1"
    return XdsApplier(Worker(bootstrap, ServerState(worker_index=worker_index)))


def another_proxys_listener() -> socket.socket:
    """What another Tulle proxy's worker holds: a listening SO_REUSEPORT socket."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


async def close_listeners(target: XdsApplier) -> None:
    for listener in target.worker.listeners:
        listener.stop_accepting()
        for sock in listener.sockets:
            sock.close()


def test_a_listener_on_an_address_in_use_is_rejected_and_nothing_is_applied() -> None:
    async def scenario() -> None:
        target = applier()
        with another_proxys_listener() as taken:
            port = taken.getsockname()[1]
            with pytest.raises(UpdateRejected) as caught:
                await target.apply(LISTENER_TYPE, {"outbound": rds_listener("outbound", port, "80")}, set(), True)
            assert str(caught.value) == (f"Listener 'outbound': cannot bind '127.0.0.1:{port}': "
                                         "Address already in use")
            assert target.listeners == {} and target.worker.listeners == []

    asyncio.run(scenario())


def test_the_main_process_binds_a_free_address_and_its_workers_join_it() -> None:
    async def scenario() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        main, worker = applier(0), applier(1)
        try:
            for target in (main, worker):  # the worker gets the update the main process applied
                await target.apply(LISTENER_TYPE, {"outbound": rds_listener("outbound", port, "80")}, set(), True)
                await target.apply(ROUTE_TYPE, {"80": route_config("80", "nowhere")}, set(), True)
                assert [listener.port for listener in target.worker.listeners] == [port]
            # a new version of the listener at the same address keeps its socket: not "in use"
            await main.apply(LISTENER_TYPE, {"outbound": rds_listener("outbound", port, "80", "renamed")},
                             set(), True)
            assert main.listeners["outbound"].listener.sockets[0].getsockname()[1] == port
        finally:
            await close_listeners(main)
            await close_listeners(worker)

    asyncio.run(scenario())
