"""What a filter factory may use: the worker's stats, clusters, loop and server state.

Factories are built once per worker from the bootstrap (Envoy's FactoryContext);
in ``--mode validate`` they are built the same way but nothing is started.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from tulle.stats.store import Store

if TYPE_CHECKING:
    from tulle.upstream.cluster_manager import ClusterManager


@dataclass
class ServerState:
    """Process-wide switches flipped by the admin interface."""

    healthcheck_failed: bool = False
    draining: bool = False
    worker_index: int = 0
    concurrency: int = 1
    node_id: str = ""
    node_cluster: str = ""
    start_time: float = 0.0


@dataclass
class FactoryContext:
    stats: Store
    cluster_manager: ClusterManager
    server: ServerState
    loop: asyncio.AbstractEventLoop | None = None
    # open access-log files shared by every logger writing the same path
    shared: dict[str, Any] = field(default_factory=dict)
    # the worker's overload action states (tulle.overload.state.OverloadState); never overloaded
    # unless the bootstrap configures an overload_manager
    overload: Any = field(default_factory=lambda: _no_overload())
    # the worker's runtime (tulle.runtime.Runtime): without layered_runtime, one that never changes
    runtime: Any = field(default_factory=lambda: _no_runtime())


def _no_overload() -> Any:
    from tulle.overload.state import OverloadState

    return OverloadState()


def _no_runtime() -> Any:
    from tulle.runtime import NO_RUNTIME

    return NO_RUNTIME


@dataclass
class DownstreamConnection:
    """Facts about one accepted connection, handed to the terminal network filter."""

    remote_address: tuple[str, int]
    local_address: tuple[str, int]
    listener_name: str
    # called by the filter's protocol when the connection is closed (listener bookkeeping)
    on_close: Any = None

    @property
    def remote_str(self) -> str:
        return f"{self.remote_address[0]}:{self.remote_address[1]}"

    @property
    def local_str(self) -> str:
        return f"{self.local_address[0]}:{self.local_address[1]}"


class NetworkFilterFactory(Protocol):
    """A terminal network filter (tcp_proxy, http_connection_manager)."""

    def create_protocol(self, connection: DownstreamConnection) -> asyncio.Protocol: ...

    def drain(self) -> None:
        """Ask open connections to finish gracefully (HTTP: Connection: close on the next response)."""
