"""What the data plane reads of the overload manager (Envoy's ThreadLocalOverloadState).

One :class:`OverloadState` per worker process, handed to listeners and connection
managers through the FactoryContext. The manager writes an action's state (a float in
[0, 1]: 0 inactive, 1 saturated, between: scaling) on its refresh timer; the hot paths
read one attribute and do nothing more while it is 0. A worker without an overload
manager gets a state whose actions stay at 0.
"""

from __future__ import annotations

import random
import weakref
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tulle.stats.store import Counter

_random = random.random


def bernoulli(probability: float) -> bool:
    """Envoy's RandomGenerator::bernoulli(UnitFloat): exact at 0 and 1, one draw between."""
    if probability <= 0.0:
        return False
    return probability >= 1.0 or _random() < probability


class ConnectionLimit(Protocol):
    """A proactive resource (global_downstream_max_connections): admission is synchronous."""

    def try_allocate(self) -> bool: ...

    def release(self) -> None: ...


class ListenerStatsLike(Protocol):
    downstream_global_cx_overflow: Counter
    downstream_cx_overload_reject: Counter


class OverloadState:
    """Action states of one worker, plus the listeners and connection managers that
    actions act on when their state changes (held weakly: xDS may remove them)."""

    __slots__ = (
        "stop_accepting_requests", "disable_http_keepalive", "reject_incoming_connections",
        "connection_limit", "guards_accept", "listeners", "connection_managers", "__weakref__",
    )

    def __init__(self) -> None:
        self.stop_accepting_requests = 0.0
        self.disable_http_keepalive = 0.0
        self.reject_incoming_connections = 0.0
        self.connection_limit: ConnectionLimit | None = None
        # True when accepting a connection must ask admit(): set once, at config time
        self.guards_accept = False
        self.listeners: weakref.WeakSet[Any] = weakref.WeakSet()
        self.connection_managers: weakref.WeakSet[Any] = weakref.WeakSet()

    def admit(self, stats: ListenerStatsLike) -> bool:
        """Envoy's TcpListenerImpl accept checks: the reject_incoming_connections fraction, then
        the global connection limit (drawn first here so that a rejected connection never
        holds a slot of the limit). False: close the connection before anything else sees it."""
        if bernoulli(self.reject_incoming_connections):
            stats.downstream_cx_overload_reject.value += 1
            return False
        limit = self.connection_limit
        if limit is not None and not limit.try_allocate():
            stats.downstream_global_cx_overflow.value += 1
            return False
        return True

    def connection_closed(self) -> None:
        """An admitted connection is gone: give its slot of the global limit back."""
        limit = self.connection_limit
        if limit is not None:
            limit.release()
