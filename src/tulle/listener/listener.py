"""Listeners: a bound socket, its filter chain, and the hand-off of each accepted connection.

The acceptor protocol lives only for ``connection_made``: it asks the chain's
non-terminal network filters (e.g. local_ratelimit) whether the connection may
proceed, builds the connection's terminal network filter and swaps it in with
``transport.set_protocol`` so that every byte afterwards goes straight to
that filter, with no dispatch layer in between.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from tulle.config.errors import ConfigError, UnsupportedFeature, join
from tulle.config.loader import type_name_of, unpack_any
from tulle.config.support import check_fields
from tulle.extensions import registry
from tulle.listener.claim import address_text, claim, os_reason
from tulle.server.context import DownstreamConnection, FactoryContext

LISTENER_FIELDS = (
    "name", "address", "filter_chains", "per_connection_buffer_limit_bytes", "stat_prefix",
    "traffic_direction", "tcp_backlog_size", "enable_reuse_port", "metadata", "drain_type",
)
FILTER_CHAIN_FIELDS = ("filters", "name", "metadata")


def socket_address_of(address: Any, field: str) -> tuple[str, int]:
    """envoy.config.core.v3.Address -> (ip, port); only TCP socket addresses."""
    check_fields(address, ("socket_address",), field)
    if not address.HasField("socket_address"):
        raise ConfigError("an address with socket_address is required", field=field)
    sock = address.socket_address
    path = join(field, "socket_address")
    check_fields(sock, ("address", "port_value", "protocol", "ipv4_compat"), path)
    if sock.protocol != 0:
        raise UnsupportedFeature("UDP socket addresses", field=join(path, "protocol"))
    if not sock.address:
        raise ConfigError("address is required", field=join(path, "address"))
    return sock.address, sock.port_value


def stat_address(ip: str, port: int) -> str:
    """Envoy's listener stat name for an address: 0.0.0.0_10000, [::]_10000."""
    return f"[{ip}]_{port}" if ":" in ip else f"{ip}_{port}"


class ListenerStats:
    def __init__(self, store: Any, prefix: str) -> None:
        base = f"listener.{prefix}."
        self.downstream_cx_total = store.counter(base + "downstream_cx_total")
        self.downstream_cx_destroy = store.counter(base + "downstream_cx_destroy")
        self.downstream_cx_active = store.gauge(base + "downstream_cx_active")
        self.downstream_cx_length_ms = store.histogram(base + "downstream_cx_length_ms")
        # closed at accept by the overload manager: the global connection limit, reject_incoming_connections
        self.downstream_global_cx_overflow = store.counter(base + "downstream_global_cx_overflow")
        self.downstream_cx_overload_reject = store.counter(base + "downstream_cx_overload_reject")


class Listener:
    """One Envoy listener as built by one worker."""

    def __init__(self, proto: Any, field: str, ctx: FactoryContext) -> None:
        check_fields(proto, LISTENER_FIELDS, field)
        self.name = proto.name or ""
        self.ip, self.port = socket_address_of(proto.address, join(field, "address"))
        if not self.name:
            self.name = f"{self.ip}:{self.port}"
        self.field = field
        self.ctx = ctx
        self.backlog = proto.tcp_backlog_size.value if proto.HasField("tcp_backlog_size") else 1024
        self.reuse_port = proto.enable_reuse_port.value if proto.HasField("enable_reuse_port") else True
        self.buffer_limit = (
            proto.per_connection_buffer_limit_bytes.value
            if proto.HasField("per_connection_buffer_limit_bytes") else 1024 * 1024
        )
        self.stats = ListenerStats(ctx.stats, proto.stat_prefix or stat_address(self.ip, self.port))
        self.traffic_direction = proto.traffic_direction
        if len(proto.filter_chains) != 1:
            raise UnsupportedFeature(
                "listeners with more than one filter chain (filter_chain_match comes with TLS/SNI routing)"
                if len(proto.filter_chains) > 1 else "a listener without filter chains",
                field=join(field, "filter_chains"),
            )
        chain = proto.filter_chains[0]
        chain_field = join(field, "filter_chains[0]")
        check_fields(chain, FILTER_CHAIN_FIELDS, chain_field,
                     ignored=("filter_chain_match",) if _empty_match(chain) else ())
        # non-terminal filters' on_new_connection hooks, in chain order (False: close the connection)
        self.connection_filters: tuple[Callable[[DownstreamConnection], bool], ...] = ()
        self.factory = self._build_terminal_filter(chain, chain_field)
        self.server: asyncio.AbstractServer | None = None
        self.sockets: list[socket.socket] = []
        self.overload = ctx.overload
        ctx.overload.listeners.add(self)  # stop_accepting_connections pauses and resumes it
        self.listen_socket: socket.socket | None = None
        self.paused_socket: socket.socket | None = None  # held open while accepting is paused
        self.stopped = False

    def _build_terminal_filter(self, chain: Any, field: str) -> Any:
        """Build the chain's filters; the last must be terminal (it owns the connection's
        bytes), the ones before it non-terminal (an ``on_new_connection`` hook), as in Envoy."""
        filters = chain.filters
        if len(filters) == 0:
            raise ConfigError("a filter chain needs a terminal network filter", field=join(field, "filters"))
        last = len(filters) - 1
        hooks = []
        for index, network_filter in enumerate(filters):
            path = join(field, f"filters[{index}]")
            factory = self._build_network_filter(network_filter, path)
            label = registry.describe(network_filter.name, type_name_of(network_filter.typed_config))
            terminal = hasattr(factory, "create_protocol")
            if index < last:
                if terminal:
                    raise ConfigError(f"terminal filter {label} must be the last filter in a network filter chain",
                                      field=path)
                hooks.append(factory.on_new_connection)
            elif not terminal:
                raise ConfigError(f"non-terminal filter {label} is the last filter in a network filter chain",
                                  field=path)
        self.connection_filters = tuple(hooks)
        return factory

    def _build_network_filter(self, network_filter: Any, path: str) -> Any:
        check_fields(network_filter, ("name", "typed_config"), path)
        if not network_filter.HasField("typed_config"):
            raise ConfigError("typed_config is required", field=join(path, "typed_config"))
        type_name = type_name_of(network_filter.typed_config)
        factory_class = registry.resolve(registry.NETWORK_FILTERS, type_name)
        if factory_class is None:
            raise UnsupportedFeature(f"network filter {registry.describe(network_filter.name, type_name)}", field=path)
        message = unpack_any(network_filter.typed_config, field=join(path, "typed_config"))
        if type_name.endswith("HttpConnectionManager"):
            factory = factory_class(message, join(path, "typed_config"), self.ctx, listener_port=self.port)
            factory.config.buffer_limit = self.buffer_limit
            return factory
        return factory_class(message, join(path, "typed_config"), self.ctx)

    # --- sockets ---------------------------------------------------------
    def bind(self, *, exclusive: bool = True) -> socket.socket:
        """Bind one listening socket (one per worker: SO_REUSEPORT lets the kernel spread connections).

        The first socket of an ``exclusive`` listener claims the address first (listener/claim.py),
        so that an address another process listens on is refused, as a plain bind would be, instead
        of shared. Worker processes binding an address their main process holds pass False.
        """
        reuse_port = self.reuse_port and hasattr(socket, "SO_REUSEPORT")
        held = None
        try:
            if reuse_port and exclusive and not self.sockets:
                held = claim(self.ip, self.port)
                self.port = held.getsockname()[1]  # port 0: the kernel's choice, free of any listener
            sock = socket.socket(socket.AF_INET6 if ":" in self.ip else socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.bind((self.ip, self.port))
                sock.listen(self.backlog)
            except OSError:
                sock.close()
                raise
        except OSError as exc:  # Envoy's words
            raise ConfigError(f"cannot bind '{address_text(self.ip, self.port)}': {os_reason(exc)}",
                              field=self.field) from None
        finally:
            if held is not None:
                held.close()
        sock.setblocking(False)
        if self.port == 0:
            self.port = sock.getsockname()[1]  # the remaining workers bind the port the kernel chose
        self.sockets.append(sock)
        return sock

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self.listen_socket = sock
        self.server = await loop.create_server(lambda: _Acceptor(self), sock=sock, backlog=self.backlog)

    def stop_accepting(self) -> None:
        self.stopped = True  # for good: an overload action's resume must not reopen it
        if self.server is not None:
            self.server.close()
            self.server = None
        if self.paused_socket is not None:
            self.paused_socket.close()
            self.paused_socket = None

    def pause_accepting(self) -> None:
        """Envoy's pauseListening (stop_accepting_connections): no more accept() calls; new
        connections wait in the kernel's backlog. Closing the server closes its socket, so a
        duplicate keeps the listening socket (and its backlog) open until resume_accepting."""
        if self.server is None or self.listen_socket is None:
            return
        self.paused_socket = self.listen_socket.dup()
        self.server.close()
        self.server = None

    async def resume_accepting(self) -> None:
        sock = self.paused_socket
        self.paused_socket = None
        if sock is not None and not self.stopped:
            await self.start(sock)
        elif sock is not None:
            sock.close()

    def drain(self) -> None:
        self.factory.drain()

    def _on_close(self) -> None:
        self.stats.downstream_cx_active.value -= 1
        self.stats.downstream_cx_destroy.value += 1
        self.overload.connection_closed()


def _empty_match(chain: Any) -> bool:
    return chain.HasField("filter_chain_match") and not chain.filter_chain_match.ListFields()


class _Acceptor(asyncio.Protocol):
    __slots__ = ("listener",)

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        listener = self.listener
        overload = listener.overload
        if overload.guards_accept and not overload.admit(listener.stats):
            transport.abort()  # as Envoy's listener closes it: before it is a connection of this listener
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        listener.stats.downstream_cx_total.value += 1
        listener.stats.downstream_cx_active.value += 1
        connection = DownstreamConnection(
            remote_address=(peer[0], peer[1]), local_address=(local[0], local[1]),
            listener_name=listener.name, on_close=listener._on_close,
        )
        for allows in listener.connection_filters:
            if not allows(connection):
                transport.abort()  # Envoy's NoFlush close: nothing was written, nothing to flush
                listener._on_close()
                return
        try:
            protocol = listener.factory.create_protocol(connection)
        except Exception:  # noqa: BLE001 - one bad connection must not take the listener down
            transport.abort()
            listener._on_close()
            return
        transport.set_protocol(protocol)  # type: ignore[attr-defined]
        protocol.connection_made(transport)
