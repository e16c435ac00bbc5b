"""The per-worker overload state the hot paths read: Envoy's bernoulli, accept-time admission."""

from __future__ import annotations

import random

import pytest

from tulle.overload import state as state_module
from tulle.overload.monitors import DownstreamConnectionsMonitor
from tulle.overload.state import OverloadState, bernoulli
from tulle.server.context import FactoryContext, ServerState
from tulle.stats.store import Counter


class ListenerStats:
    def __init__(self) -> None:
        self.downstream_global_cx_overflow = Counter("overflow")
        self.downstream_cx_overload_reject = Counter("reject")


def test_bernoulli_is_exact_at_zero_and_one_and_a_draw_between(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = []

    def draw() -> float:
        draws.append(1)
        return 0.3

    monkeypatch.setattr(state_module, "_random", draw)
    assert not bernoulli(0.0)
    assert bernoulli(1.0)
    assert draws == []  # no random draw at the ends
    assert bernoulli(0.5) and not bernoulli(0.2)
    assert len(draws) == 2


def test_bernoulli_rate() -> None:
    random.seed(7)
    hits = sum(bernoulli(0.25) for _ in range(20000))
    assert 4500 < hits < 5500


def test_a_worker_without_overload_manager_never_sheds() -> None:
    state = FactoryContext(stats=None, cluster_manager=None, server=ServerState()).overload  # type: ignore[arg-type]
    assert isinstance(state, OverloadState)
    assert (state.stop_accepting_requests, state.disable_http_keepalive, state.reject_incoming_connections) == (
        0.0, 0.0, 0.0)
    assert not state.guards_accept and state.connection_limit is None
    state.connection_closed()  # nothing to give back


def test_admit_checks_the_reject_fraction_then_the_connection_limit() -> None:
    state = OverloadState()
    limit = DownstreamConnectionsMonitor(1, workers=1)
    state.connection_limit = limit
    stats = ListenerStats()
    assert state.admit(stats)
    assert not state.admit(stats)
    assert stats.downstream_global_cx_overflow.value == 1
    state.connection_closed()
    state.reject_incoming_connections = 1.0
    assert not state.admit(stats)
    assert stats.downstream_cx_overload_reject.value == 1
    assert limit.update() == 0.0  # a rejected connection took no slot
    state.reject_incoming_connections = 0.0
    assert state.admit(stats)
    assert limit.update() == 1.0
