"""tcp_proxy data path against real loopback servers, on asyncio's loop and on uvloop.

Clusters are small fakes with the upstream API tcp_proxy relies on; the
listener hand-off is mimicked the way the lead's listener does it
(create_protocol, set_protocol, connection_made).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from time import monotonic
from typing import Any

import pytest
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import json_format

from tulle.filters.network.tcp_proxy.config import TcpProxyFactory
from tulle.filters.network.tcp_proxy.filter import TcpProxySession
from tulle.server.context import DownstreamConnection, FactoryContext, ServerState
from tulle.stats.store import Store
from tulle.upstream.host import NO_OUTLIER_MONITOR

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None

MAX_READ_CHUNK = 256 * 1024  # asyncio's and uvloop's largest single read


# --------------------------------------------------------------------------- fakes


class FakeHostStats:
    __slots__ = ("cx_total", "cx_active", "cx_connect_fail")

    def __init__(self) -> None:
        self.cx_total = 0
        self.cx_active = 0
        self.cx_connect_fail = 0


class FakeHost:
    def __init__(self, ip: str, port: int) -> None:
        self.ip = ip
        self.port = port
        self.address_str = f"{ip}:{port}"
        self.stats = FakeHostStats()
        self.outlier = NO_OUTLIER_MONITOR  # tcp_proxy reports connect results to it


class FakeClusterStats:
    COUNTERS = (
        "upstream_cx_total", "upstream_cx_connect_fail", "upstream_cx_connect_timeout",
        "upstream_cx_none_healthy", "upstream_cx_rx_bytes_total", "upstream_cx_tx_bytes_total",
        "upstream_cx_destroy", "upstream_cx_destroy_local", "upstream_cx_destroy_remote",
    )

    def __init__(self, store: Store, name: str) -> None:
        prefix = f"cluster.{name}."
        for counter in self.COUNTERS:
            setattr(self, counter, store.counter(prefix + counter))
        self.upstream_cx_active = store.gauge(prefix + "upstream_cx_active")
        self.upstream_cx_connect_ms = store.histogram(prefix + "upstream_cx_connect_ms")
        self.upstream_cx_length_ms = store.histogram(prefix + "upstream_cx_length_ms")


class FakeCluster:
    """Round-robin over its hosts, like a STATIC cluster with the default LB."""

    def __init__(self, store: Store, name: str, hosts: list[FakeHost], *,
                 connect_timeout: float = 5.0, buffer_limit: int = 1024 * 1024) -> None:
        self.name = name
        self.hosts = hosts
        self.connect_timeout = connect_timeout
        self.per_connection_buffer_limit_bytes = buffer_limit
        self.tcp_keepalive = None  # upstream_connection_options
        self.stats = FakeClusterStats(store, name)
        self._next = 0

    def choose_host(self, context: Any) -> FakeHost | None:
        if not self.hosts:
            return None
        host = self.hosts[self._next % len(self.hosts)]
        self._next += 1
        return host


class FakeClusterManager:
    def __init__(self) -> None:
        self.clusters: dict[str, FakeCluster] = {}

    def get(self, name: str) -> FakeCluster | None:
        return self.clusters.get(name)


class RecordingLogger:
    def __init__(self) -> None:
        self.infos: list[Any] = []

    def log(self, info: Any) -> None:
        self.infos.append(info)


class Proxy:
    """A tcp_proxy listener on loopback, handing connections over like the real listener."""

    def __init__(self, factory: TcpProxyFactory, store: Store, cluster_manager: FakeClusterManager) -> None:
        self.factory = factory
        self.store = store
        self.cluster_manager = cluster_manager
        self.sessions: list[TcpProxySession] = []
        self.closed_connections = 0
        self.logger = RecordingLogger()
        factory.config.access_logs = [self.logger]
        self.server: asyncio.AbstractServer | None = None
        self.port = 0

    def counter(self, name: str) -> int:
        return self.store.counters[name].value

    def gauge(self, name: str) -> int:
        return self.store.gauges[name].value

    async def start(self) -> None:
        proxy = self

        class Handoff(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                def on_close() -> None:
                    proxy.closed_connections += 1

                connection = DownstreamConnection(
                    transport.get_extra_info("peername")[:2], transport.get_extra_info("sockname")[:2],
                    "test_listener", on_close=on_close,
                )
                session = proxy.factory.create_protocol(connection)
                assert isinstance(session, TcpProxySession)
                proxy.sessions.append(session)
                transport.set_protocol(session)
                session.connection_made(transport)

        self.server = await asyncio.get_running_loop().create_server(Handoff, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def make_proxy(
    hosts_by_cluster: dict[str, list[tuple[str, int]]],
    document: dict[str, Any],
    **cluster_options: Any,
) -> Proxy:
    store = Store()
    cluster_manager = FakeClusterManager()
    for name, hosts in hosts_by_cluster.items():
        cluster_manager.clusters[name] = FakeCluster(
            store, name, [FakeHost(ip, port) for ip, port in hosts], **cluster_options
        )
    ctx = FactoryContext(stats=store, cluster_manager=cluster_manager, server=ServerState())  # type: ignore[arg-type]
    proto = json_format.ParseDict(document, tcp_proxy_pb2.TcpProxy())
    proxy = Proxy(TcpProxyFactory(proto, "filters[0]", ctx), store, cluster_manager)
    await proxy.start()
    return proxy


# --------------------------------------------------------------------------- upstream servers


class Upstream:
    """A loopback server whose per-connection behaviour is a coroutine."""

    def __init__(self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> None:
        self.handler = handler
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.connections = 0

    async def start(self) -> Upstream:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Unresponsive:
    """A listener whose accept queue is full: further SYNs are dropped, connects hang."""

    def __enter__(self) -> tuple[str, int]:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        address = self.listener.getsockname()
        self.filler = socket.create_connection(address)
        return address

    def __exit__(self, *exc: object) -> None:
        self.filler.close()
        self.listener.close()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def wait_for(condition: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    deadline = monotonic() + limit
    while not condition():
        if monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def read_all(reader: asyncio.StreamReader) -> bytes:
    """Read to EOF, treating a reset as the end."""
    chunks = []
    try:
        while chunk := await reader.read(1 << 20):
            chunks.append(chunk)
    except ConnectionError:
        pass
    return b"".join(chunks)


# --------------------------------------------------------------------------- running on both loops


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Awaitable[None]], None]]:
    if request.param == "uvloop" and uvloop is None:
        pytest.skip("uvloop not installed")
    loop_factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def runner(coroutine: Awaitable[None]) -> None:
        with asyncio.Runner(loop_factory=loop_factory) as loop_runner:
            loop_runner.run(asyncio.wait_for(coroutine, 60))  # type: ignore[arg-type]

    yield runner


def tcp(prefix: str = "ingress", **extra: Any) -> dict[str, Any]:
    return {"stat_prefix": prefix, "cluster": "backend", **extra}


# --------------------------------------------------------------------------- tests


def test_bytes_flow_both_ways(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        upstream = await Upstream(echo).start()
        proxy = await make_proxy({"backend": [upstream.address]}, tcp())
        reader, writer = await proxy.open()
        for message in (b"hello", b"tcp proxy", b"x" * 10000):
            writer.write(message)
            assert await reader.readexactly(len(message)) == message
        writer.close()
        await wait_for(lambda: proxy.closed_connections == 1, "downstream close")
        await wait_for(lambda: proxy.gauge("cluster.backend.upstream_cx_active") == 0, "upstream close")
        sent = 5 + 9 + 10000
        assert proxy.counter("tcp.ingress.downstream_cx_total") == 1
        assert proxy.counter("tcp.ingress.downstream_cx_rx_bytes_total") == sent
        assert proxy.counter("tcp.ingress.downstream_cx_tx_bytes_total") == sent
        assert proxy.counter("cluster.backend.upstream_cx_tx_bytes_total") == sent
        assert proxy.counter("cluster.backend.upstream_cx_rx_bytes_total") == sent
        assert proxy.counter("cluster.backend.upstream_cx_total") == 1
        assert proxy.counter("cluster.backend.upstream_cx_destroy") == 1
        assert proxy.store.histograms["cluster.backend.upstream_cx_connect_ms"].count == 1
        assert proxy.store.histograms["cluster.backend.upstream_cx_length_ms"].count == 1
        host = proxy.cluster_manager.clusters["backend"].hosts[0]
        assert (host.stats.cx_total, host.stats.cx_active, host.stats.cx_connect_fail) == (1, 0, 0)
        info = proxy.logger.infos[0]
        assert len(proxy.logger.infos) == 1
        assert (info.bytes_received, info.bytes_sent) == (sent, sent)
        assert info.upstream_cluster == "backend"
        assert info.upstream_host == f"127.0.0.1:{upstream.port}"
        assert info.upstream_local_address.startswith("127.0.0.1:")
        assert info.downstream_local_address == f"127.0.0.1:{proxy.port}"
        assert info.response_flags == []
        assert info.duration_ms() is not None
        await proxy.close()
        await upstream.close()

    run(scenario())


def test_large_transfers_arrive_intact_both_ways(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        upstream = await Upstream(echo).start()
        proxy = await make_proxy({"backend": [upstream.address]}, tcp(), buffer_limit=128 * 1024)
        reader, writer = await proxy.open()
        block = random.Random(7).randbytes(1 << 20)
        total = 24 << 20
        sent_digest = hashlib.sha256()

        async def send() -> None:
            for index in range(total // len(block)):
                chunk = block[index:] + block[:index]  # vary content per block
                sent_digest.update(chunk)
                writer.write(chunk)
                await writer.drain()
            writer.write_eof()

        sender = asyncio.create_task(send())
        received = hashlib.sha256()
        count = 0
        while chunk := await reader.read(1 << 20):
            received.update(chunk)
            count += len(chunk)
        await sender
        assert count == total
        assert received.hexdigest() == sent_digest.hexdigest()
        writer.close()
        await wait_for(lambda: proxy.closed_connections == 1, "close")
        assert proxy.counter("tcp.ingress.downstream_cx_rx_bytes_total") == total
        assert proxy.counter("tcp.ingress.downstream_cx_tx_bytes_total") == total
        await proxy.close()
        await upstream.close()

    run(scenario())


def test_downstream_half_close_keeps_the_reply_direction_open(run: Callable[[Awaitable[None]], None]) -> None:
    async def reply_after_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.read()  # to EOF: only possible if the proxy forwarded the half-close
        writer.write(b"got:" + request.upper())
        await writer.drain()

    async def scenario() -> None:
        upstream = await Upstream(reply_after_eof).start()
        proxy = await make_proxy({"backend": [upstream.address]}, tcp())
        reader, writer = await proxy.open()
        writer.write(b"question")
        writer.write_eof()
        assert await read_all(reader) == b"got:QUESTION"
        await wait_for(lambda: proxy.closed_connections == 1, "close after both directions ended")
        await wait_for(lambda: proxy.gauge("cluster.backend.upstream_cx_active") == 0, "upstream close")
        assert proxy.logger.infos[0].bytes_sent == len(b"got:QUESTION")
        writer.close()
        await proxy.close()
        await upstream.close()

    run(scenario())


def test_upstream_half_close_keeps_the_request_direction_open(run: Callable[[Awaitable[None]], None]) -> None:
    received_after_eof: list[bytes] = []

    async def greet_then_listen(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"banner")
        writer.write_eof()
        received_after_eof.append(await reader.read())

    async def scenario() -> None:
        upstream = await Upstream(greet_then_listen).start()
        proxy = await make_proxy({"backend": [upstream.address]}, tcp())
        reader, writer = await proxy.open()
        assert await reader.read() == b"banner"  # EOF reached the client
        writer.write(b"still talking")
        writer.write_eof()
        await wait_for(lambda: proxy.closed_connections == 1, "close")
        await wait_for(lambda: received_after_eof != [], "upstream read")
        assert received_after_eof == [b"still talking"]
        writer.close()
        await proxy.close()
        await upstream.close()

    run(scenario())


def test_upstream_close_delivers_everything_then_half_closes(run: Callable[[Awaitable[None]], None]) -> None:
    async def say_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"z" * 300_000)
        await writer.drain()

    async def scenario() -> None:
        upstream = await Upstream(say_and_close).start()
        proxy = await make_proxy({"backend": [upstream.address]}, tcp())
        reader, writer = await proxy.open()
        assert len(await read_all(reader)) == 300_000  # all of it, then the forwarded FIN
        assert proxy.closed_connections == 0  # a FIN is a half-close: the client may still talk
        writer.close()
        await wait_for(lambda: proxy.closed_connections == 1, "close")
        await wait_for(lambda: proxy.gauge("cluster.backend.upstream_cx_active") == 0, "upstream close")
        assert proxy.counter("cluster.backend.upstream_cx_destroy") == 1
        await proxy.close()
        await upstream.close()

    run(scenario())


def test_slow_upstream_reader_keeps_proxy_buffer_bounded(run: Callable[[Awaitable[None]], None]) -> None:
    limit = 64 * 1024
    upstream_reading = asyncio.Event  # created inside the loop below
    state: dict[str, Any] = {}

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await state["resume"].wait()
        state["received"] = len(await reader.read())

    async def scenario() -> None:
        state["resume"] = upstream_reading()
        upstream = await Upstream(sink).start()
        proxy = await make_proxy({"backend": [upstream.address]}, tcp(), buffer_limit=limit)
        reader, writer = await proxy.open()
        await wait_for(lambda: proxy.sessions and proxy.sessions[0].upstream is not None, "connected")
        session = proxy.sessions[0]
        block = b"u" * (1 << 20)
        sent = 0
        largest_buffer = 0
        # keep writing well past the point where the proxy pushed back
        while proxy.counter("tcp.ingress.downstream_flow_control_paused_reading_total") == 0 or sent < (8 << 20):
            assert sent < (512 << 20), "the proxy never pushed back"
            writer.write(block)
            sent += len(block)
            await asyncio.sleep(0)
            largest_buffer = max(largest_buffer, session.upstream.transport.get_write_buffer_size())
        for _ in range(100):
            await asyncio.sleep(0.002)
            largest_buffer = max(largest_buffer, session.upstream.transport.get_write_buffer_size())
        assert largest_buffer <= limit + MAX_READ_CHUNK
        assert proxy.gauge("tcp.ingress.downstream_cx_rx_bytes_buffered") <= limit + MAX_READ_CHUNK
        assert proxy.counter("tcp.ingress.downstream_cx_rx_bytes_total") < sent  # the rest waits in kernels/client
        state["resume"].set()
        writer.write_eof()
        await wait_for(lambda: "received" in state, "sink to read everything", limit=30)
        assert state["received"] == sent
        assert proxy.counter("tcp.ingress.downstream_flow_control_resumed_reading_total") >= 1
        writer.close()
        await wait_for(lambda: proxy.closed_connections == 1, "close")
        assert proxy.gauge("tcp.ingress.downstream_cx_rx_bytes_buffered") == 0
        await proxy.close()
        await upstream.close()

    run(scenario())


def test_slow_downstream_reader_keeps_proxy_buffer_bounded(run: Callable[[Awaitable[None]], None]) -> None:
    limit = 64 * 1024
    state: dict[str, Any] = {"sent": 0}

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        block = b"d" * (1 << 20)
        while not state["stop"].is_set():
            writer.write(block)
            state["sent"] += len(block)
            await writer.drain()
        writer.write_eof()
        await reader.read()

    async def scenario() -> None:
        state["stop"] = asyncio.Event()
        upstream = await Upstream(flood).start()
        proxy = await make_proxy({"backend": [upstream.address]}, tcp(), buffer_limit=limit)
        reader, writer = await proxy.open()  # and then do not read
        await wait_for(lambda: proxy.sessions and proxy.sessions[0].upstream is not None, "connected")
        session = proxy.sessions[0]
        largest_buffer = 0
        # run until the proxy stops reading the upstream: the client's and the kernel's buffers are full
        while not session.upstream.reading_paused:
            largest_buffer = max(largest_buffer, session.downstream_transport.get_write_buffer_size())
            await asyncio.sleep(0.001)
        sent_when_paused = state["sent"]
        for _ in range(100):
            await asyncio.sleep(0.002)
            largest_buffer = max(largest_buffer, session.downstream_transport.get_write_buffer_size())
        assert largest_buffer <= limit + MAX_READ_CHUNK
        assert proxy.counter("tcp.ingress.downstream_cx_tx_bytes_total") <= sent_when_paused + (1 << 20)
        state["stop"].set()
        received = len(await read_all(reader))
        assert received == state["sent"]
        assert proxy.counter("tcp.ingress.downstream_cx_tx_bytes_total") == received
        writer.close()
        await wait_for(lambda: proxy.closed_connections == 1, "close")
        await proxy.close()
        await upstream.close()

    run(scenario())


def test_connect_failure_closes_downstream_with_flags_and_stats(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        dead = ("127.0.0.1", unused_port())
        proxy = await make_proxy({"backend": [dead]}, tcp())
        reader, writer = await proxy.open()
        assert await read_all(reader) == b""
        await wait_for(lambda: proxy.closed_connections == 1, "close")
        assert proxy.counter("cluster.backend.upstream_cx_total") == 1
        assert proxy.counter("cluster.backend.upstream_cx_connect_fail") == 1
        assert proxy.counter("cluster.backend.upstream_cx_connect_timeout") == 0
        assert proxy.counter("cluster.backend.upstream_cx_destroy") == 1
        assert proxy.counter("cluster.backend.upstream_cx_destroy_remote") == 1
        assert proxy.gauge("cluster.backend.upstream_cx_active") == 0
        host = proxy.cluster_manager.clusters["backend"].hosts[0]
        assert (host.stats.cx_total, host.stats.cx_active, host.stats.cx_connect_fail) == (1, 0, 1)
        info = proxy.logger.infos[0]
        assert info.response_flags == ["UF", "URX"]
        assert info.upstream_host == f"127.0.0.1:{dead[1]}"
        assert info.bytes_received == info.bytes_sent == 0
        writer.close()
        await proxy.close()

    run(scenario())


def test_connect_timeout_is_counted_and_closes_downstream(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        with Unresponsive() as address:
            proxy = await make_proxy({"backend": [address]}, tcp(), connect_timeout=0.2)
            reader, writer = await proxy.open()
            assert await read_all(reader) == b""
            await wait_for(lambda: proxy.closed_connections == 1, "close")
            assert proxy.counter("cluster.backend.upstream_cx_connect_timeout") == 1
            assert proxy.counter("cluster.backend.upstream_cx_connect_fail") == 1
            assert proxy.counter("cluster.backend.upstream_cx_destroy_local") == 1
            assert proxy.gauge("cluster.backend.upstream_cx_active") == 0
            assert proxy.logger.infos[0].response_flags == ["UF", "URX"]
            writer.close()
            await proxy.close()

    run(scenario())


def test_max_connect_attempts_retries_on_the_next_host(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        upstream = await Upstream(echo).start()
        dead = ("127.0.0.1", unused_port())
        proxy = await make_proxy({"backend": [dead, upstream.address]}, tcp(max_connect_attempts=2))
        reader, writer = await proxy.open()
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        dead_host, live_host = proxy.cluster_manager.clusters["backend"].hosts
        assert (dead_host.stats.cx_connect_fail, live_host.stats.cx_total) == (1, 1)
        assert proxy.counter("cluster.backend.upstream_cx_total") == 2
        assert proxy.counter("cluster.backend.upstream_cx_connect_fail") == 1
        writer.close()
        await wait_for(lambda: proxy.closed_connections == 1, "close")
        info = proxy.logger.infos[0]
        assert info.upstream_host == live_host.address_str
        assert "URX" not in info.response_flags
        await proxy.close()
        await upstream.close()

    run(scenario())


def test_single_attempt_does_not_retry(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        upstream = await Upstream(echo).start()
        dead = ("127.0.0.1", unused_port())
        proxy = await make_proxy({"backend": [dead, upstream.address]}, tcp())
        reader, writer = await proxy.open()
        assert await read_all(reader) == b""
        await wait_for(lambda: proxy.closed_connections == 1, "close")
        assert proxy.counter("cluster.backend.upstream_cx_total") == 1
        assert upstream.connections == 0
        writer.close()
        await proxy.close()
        await upstream.close()

    run(scenario())


def test_no_healthy_host_flags_uh(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        proxy = await make_proxy({"backend": []}, tcp())
        reader, writer = await proxy.open()
        assert await read_all(reader) == b""
        await wait_for(lambda: proxy.closed_connections == 1, "close")
        assert proxy.counter("cluster.backend.upstream_cx_none_healthy") == 1
        assert proxy.counter("cluster.backend.upstream_cx_total") == 0
        assert proxy.logger.infos[0].response_flags == ["UH"]
        writer.close()
        await proxy.close()

    run(scenario())


def test_cluster_gone_at_runtime_counts_no_route(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        proxy = await make_proxy({"backend": [("127.0.0.1", 1)]}, tcp())
        del proxy.cluster_manager.clusters["backend"]
        reader, writer = await proxy.open()
        assert await read_all(reader) == b""
        await wait_for(lambda: proxy.closed_connections == 1, "close")
        assert proxy.counter("tcp.ingress.downstream_cx_no_route") == 1
        assert proxy.logger.infos[0].response_flags == ["NC"]
        writer.close()
        await proxy.close()

    run(scenario())


def test_idle_timeout_closes_both_sides(run: Callable[[Awaitable[None]], None]) -> None:
    upstream_saw_close: list[bool] = []

    async def echo_then_note_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await echo(reader, writer)
        upstream_saw_close.append(True)

    async def scenario() -> None:
        upstream = await Upstream(echo_then_note_close).start()
        # long enough that the echo always comes back first, however loaded the machine
        proxy = await make_proxy({"backend": [upstream.address]}, tcp(idle_timeout="1s"))
        reader, writer = await proxy.open()
        writer.write(b"once")
        assert await reader.readexactly(4) == b"once"
        assert await read_all(reader) == b""  # then nothing, until the proxy gives up
        await wait_for(lambda: proxy.closed_connections == 1, "close")
        await wait_for(lambda: upstream_saw_close == [True], "upstream close")
        assert proxy.counter("tcp.ingress.idle_timeout") == 1
        assert proxy.counter("cluster.backend.upstream_cx_destroy_local") == 1
        assert proxy.logger.infos[0].connection_termination_details == "tcp_session_idle_timeout"
        writer.close()
        await proxy.close()
        await upstream.close()

    run(scenario())


def test_idle_check_rearms_from_last_activity_instead_of_closing(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        upstream = await Upstream(echo).start()
        proxy = await make_proxy({"backend": [upstream.address]}, tcp(idle_timeout="60s"))
        reader, writer = await proxy.open()
        writer.write(b"a")
        assert await reader.readexactly(1) == b"a"
        session = proxy.sessions[0]
        session.last_activity = monotonic()  # recent traffic: the check must re-arm, not close
        session._on_idle_timer()
        assert session._idle_timer is not None
        assert proxy.counter("tcp.ingress.idle_timeout") == 0
        writer.write(b"b")
        assert await reader.readexactly(1) == b"b"
        stale = monotonic() - 120
        session.last_activity = stale
        assert session.upstream is not None
        session.upstream.last_activity = stale
        session._on_idle_timer()
        assert await read_all(reader) == b""
        assert proxy.counter("tcp.ingress.idle_timeout") == 1
        writer.close()
        await wait_for(lambda: proxy.closed_connections == 1, "close")
        await proxy.close()
        await upstream.close()

    run(scenario())


def test_max_downstream_connection_duration_closes_with_dt(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        upstream = await Upstream(echo).start()
        # long enough that the echo always comes back first, however loaded the machine
        proxy = await make_proxy(
            {"backend": [upstream.address]}, tcp(max_downstream_connection_duration="1s")
        )
        reader, writer = await proxy.open()
        writer.write(b"hi")
        assert await reader.readexactly(2) == b"hi"
        assert await read_all(reader) == b""
        await wait_for(lambda: proxy.closed_connections == 1, "close")
        assert proxy.counter("tcp.ingress.max_downstream_connection_duration") == 1
        info = proxy.logger.infos[0]
        assert info.response_flags == ["DT"]
        assert info.connection_termination_details == "max_downstream_connection_duration_reached"
        await wait_for(lambda: proxy.gauge("cluster.backend.upstream_cx_active") == 0, "upstream close")
        writer.close()
        await proxy.close()
        await upstream.close()

    run(scenario())


def test_weighted_clusters_split_connections(run: Callable[[Awaitable[None]], None]) -> None:
    def named(name: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(name)
            await writer.drain()

        return handler

    async def scenario() -> None:
        light = await Upstream(named(b"L")).start()
        heavy = await Upstream(named(b"H")).start()
        proxy = await make_proxy(
            {"light": [light.address], "heavy": [heavy.address]},
            {"stat_prefix": "split", "weighted_clusters": {"clusters": [
                {"name": "light", "weight": 1}, {"name": "heavy", "weight": 4}]}},
        )
        random.seed(2024)
        answers = []
        for _ in range(60):
            reader, writer = await proxy.open()
            answers.append(await read_all(reader))
            writer.close()
        await wait_for(lambda: proxy.closed_connections == 60, "all closed")
        assert set(answers) == {b"L", b"H"}
        assert answers.count(b"H") > answers.count(b"L")
        assert proxy.counter("cluster.light.upstream_cx_total") == answers.count(b"L") == light.connections
        assert proxy.counter("cluster.heavy.upstream_cx_total") == answers.count(b"H") == heavy.connections
        clusters_logged = [info.upstream_cluster for info in proxy.logger.infos]
        assert sorted(clusters_logged) == sorted("light" if a == b"L" else "heavy" for a in answers)
        await proxy.close()
        await light.close()
        await heavy.close()

    run(scenario())


def test_downstream_reset_flushes_what_upstream_still_owes(run: Callable[[Awaitable[None]], None]) -> None:
    state: dict[str, Any] = {}

    async def late_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await state["resume"].wait()
        state["received"] = len(await read_all(reader))

    async def scenario() -> None:
        state["resume"] = asyncio.Event()
        upstream = await Upstream(late_reader).start()
        # a limit larger than the payload: nothing pushes back, so the proxy holds the bytes
        proxy = await make_proxy({"backend": [upstream.address]}, tcp(), buffer_limit=256 << 20)
        reader, writer = await proxy.open()
        payload = 48 << 20
        writer.write(b"f" * payload)
        await writer.drain()
        await wait_for(lambda: proxy.counter("tcp.ingress.downstream_cx_rx_bytes_total") == payload, "proxy read")
        reset(writer)
        await wait_for(lambda: proxy.closed_connections == 1, "downstream close")
        assert proxy.counter("tcp.ingress.upstream_flush_total") == 1
        assert proxy.gauge("tcp.ingress.upstream_flush_active") == 1
        state["resume"].set()
        await wait_for(lambda: "received" in state, "flush to finish", limit=30)
        assert state["received"] == payload
        await wait_for(lambda: proxy.gauge("tcp.ingress.upstream_flush_active") == 0, "flush gauge")
        assert proxy.counter("cluster.backend.upstream_cx_destroy_local") == 1
        await proxy.close()
        await upstream.close()

    run(scenario())


def test_downstream_close_before_connect_completes_abandons_the_attempt(
    run: Callable[[Awaitable[None]], None],
) -> None:
    async def scenario() -> None:
        with Unresponsive() as address:
            proxy = await make_proxy({"backend": [address]}, tcp(), connect_timeout=30)
            reader, writer = await proxy.open()
            await wait_for(lambda: proxy.counter("cluster.backend.upstream_cx_total") == 1, "attempt")
            reset(writer)  # a FIN would only be a half-close: the client could still want the reply
            await wait_for(lambda: proxy.closed_connections == 1, "close")
            await wait_for(lambda: proxy.gauge("cluster.backend.upstream_cx_active") == 0, "attempt dropped")
            assert proxy.counter("cluster.backend.upstream_cx_connect_fail") == 0
            assert proxy.counter("cluster.backend.upstream_cx_destroy_local") == 1
            assert len(proxy.logger.infos) == 1
            await proxy.close()

    run(scenario())


def test_many_concurrent_connections_and_drain(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        upstream = await Upstream(echo).start()
        proxy = await make_proxy({"backend": [upstream.address]}, tcp())
        proxy.factory.drain()  # raw TCP: existing and new connections keep working

        async def client(index: int) -> bytes:
            reader, writer = await proxy.open()
            message = f"client-{index}".encode() * 100
            writer.write(message)
            writer.write_eof()
            data = await read_all(reader)
            writer.close()
            return data

        results = await asyncio.gather(*(client(i) for i in range(50)))
        assert results == [f"client-{i}".encode() * 100 for i in range(50)]
        await wait_for(lambda: proxy.closed_connections == 50, "all closed")
        assert proxy.counter("tcp.ingress.downstream_cx_total") == 50
        assert len(proxy.logger.infos) == 50
        await wait_for(lambda: proxy.gauge("cluster.backend.upstream_cx_active") == 0, "upstreams closed")
        assert proxy.gauge("tcp.ingress.downstream_cx_rx_bytes_buffered") == 0
        assert proxy.gauge("tcp.ingress.downstream_cx_tx_bytes_buffered") == 0
        await proxy.close()
        await upstream.close()

    run(scenario())


def test_integration_with_the_real_cluster_manager(run: Callable[[Awaitable[None]], None]) -> None:
    from envoy.config.cluster.v3 import cluster_pb2

    from tulle.upstream.cluster_manager import ClusterManager

    def endpoint(port: int) -> dict[str, Any]:
        return {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}

    async def scenario() -> None:
        upstream = await Upstream(echo).start()
        dead_port = unused_port()
        cluster_proto = json_format.ParseDict(
            {
                "name": "static_backend",
                "type": "STATIC",
                "connect_timeout": "1s",
                "per_connection_buffer_limit_bytes": 32768,
                "lb_policy": "ROUND_ROBIN",
                "load_assignment": {
                    "cluster_name": "static_backend",
                    "endpoints": [{"lb_endpoints": [endpoint(dead_port), endpoint(upstream.port)]}],
                },
            },
            cluster_pb2.Cluster(),
        )
        store = Store()
        cluster_manager = ClusterManager.from_protos([cluster_proto], stats=store, seed=5)
        ctx = FactoryContext(stats=store, cluster_manager=cluster_manager, server=ServerState())
        proto = json_format.ParseDict(
            {"stat_prefix": "real", "cluster": "static_backend", "max_connect_attempts": 2},
            tcp_proxy_pb2.TcpProxy(),
        )
        proxy = Proxy(TcpProxyFactory(proto, "filters[0]", ctx), store, FakeClusterManager())
        await proxy.start()
        payload = random.Random(3).randbytes(3 << 20)
        for _ in range(4):  # round robin: every connection meets the dead host first or second
            reader, writer = await proxy.open()
            writer.write(payload)
            writer.write_eof()
            assert await read_all(reader) == payload
            writer.close()
        await wait_for(lambda: proxy.closed_connections == 4, "all closed")
        await wait_for(lambda: proxy.gauge("cluster.static_backend.upstream_cx_active") == 0, "upstreams closed")
        hosts = {host.port: host for host in cluster_manager.get("static_backend").hosts}
        failures = hosts[dead_port].stats.cx_connect_fail
        assert 3 <= failures <= 4
        assert hosts[upstream.port].stats.cx_total == 4
        assert proxy.counter("cluster.static_backend.upstream_cx_connect_fail") == failures
        assert proxy.counter("cluster.static_backend.upstream_cx_total") == 4 + failures
        assert proxy.counter("cluster.static_backend.upstream_cx_tx_bytes_total") == 4 * len(payload)
        assert proxy.counter("cluster.static_backend.upstream_cx_rx_bytes_total") == 4 * len(payload)
        assert proxy.counter("tcp.real.downstream_cx_total") == 4
        assert [info.upstream_host for info in proxy.logger.infos] == [f"127.0.0.1:{upstream.port}"] * 4
        await proxy.close()
        await upstream.close()

    run(scenario())


def _real_cluster_proxy(ports: list[int], **cluster_fields: Any) -> tuple[Any, Any]:
    from envoy.config.cluster.v3 import cluster_pb2

    from tulle.upstream.cluster_manager import ClusterManager

    cluster_proto = json_format.ParseDict({
        "name": "backend", "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": "backend", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}
            for port in ports]}]},
        **cluster_fields,
    }, cluster_pb2.Cluster())
    store = Store()
    cluster_manager = ClusterManager.from_protos([cluster_proto], stats=store)
    ctx = FactoryContext(stats=store, cluster_manager=cluster_manager, server=ServerState())
    factory = TcpProxyFactory(json_format.ParseDict(tcp(), tcp_proxy_pb2.TcpProxy()), "filters[0]", ctx)
    return Proxy(factory, store, FakeClusterManager()), cluster_manager.get("backend")


def test_max_connections_overflow_closes_the_downstream(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        upstream = await Upstream(echo).start()
        proxy, cluster = _real_cluster_proxy(
            [upstream.port], circuit_breakers={"thresholds": [{"max_connections": 1}]})
        await proxy.start()
        connections = cluster.resource_manager.connections
        first_reader, first_writer = await proxy.open()
        first_writer.write(b"one")
        assert await first_reader.readexactly(3) == b"one"
        assert connections.count == 1
        reader, writer = await proxy.open()  # over the limit: closed at once, nothing connects
        assert await read_all(reader) == b""
        await wait_for(lambda: proxy.closed_connections == 1, "overflow close")
        assert proxy.logger.infos[0].response_flags == ["UO"]
        assert proxy.counter("cluster.backend.upstream_cx_overflow") == 1
        assert upstream.connections == 1
        writer.close()
        first_writer.close()
        await wait_for(lambda: connections.count == 0, "the slot given back")
        reader, writer = await proxy.open()
        writer.write(b"two")
        assert await reader.readexactly(3) == b"two"
        writer.close()
        await wait_for(lambda: proxy.closed_connections == 3, "all closed")
        await wait_for(lambda: connections.count == 0, "the slot given back again")
        await proxy.close()
        await upstream.close()

    run(scenario())


def test_a_failed_connect_gives_its_connection_slot_back(run: Callable[[Awaitable[None]], None]) -> None:
    async def scenario() -> None:
        proxy, cluster = _real_cluster_proxy(
            [unused_port()], circuit_breakers={"thresholds": [{"max_connections": 1}]})
        await proxy.start()
        for attempt in range(2):
            reader, writer = await proxy.open()
            assert await read_all(reader) == b""
            await wait_for(lambda a=attempt: proxy.closed_connections == a + 1, "close")
            writer.close()
        assert [info.response_flags for info in proxy.logger.infos] == [["UF", "URX"], ["UF", "URX"]]
        assert proxy.counter("cluster.backend.upstream_cx_overflow") == 0
        assert cluster.resource_manager.connections.count == 0
        await proxy.close()

    run(scenario())
