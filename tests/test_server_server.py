"""The ``tulle proxy`` process: workers, stats merged across them, and the admin
switches that act on the whole server (health check, drain, quit)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from backends import (
    Client,
    ProxyContext,
    child_pids,
    echo_backend,
    established_on_port,
    get,
    http_proxy,
    wait_until,
)
from proxy_harness import free_port, http_listener, simple_route, static_cluster


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    with echo_backend("echo") as port:
        yield port


def echo_proxy(tmp_path: Path, echo_port: int, concurrency: int = 1) -> ProxyContext:
    return http_proxy(tmp_path, simple_route("backend"), [static_cluster("backend", [echo_port])],
                      concurrency=concurrency)


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


# --------------------------------------------------------------------------- workers


def test_two_workers_both_serve_and_stats_add_up(tmp_path: Path, echo_port: int) -> None:
    connections = 32
    with echo_proxy(tmp_path, echo_port, concurrency=2) as (proxy, port):
        assert proxy.process is not None
        main_pid = proxy.process.pid
        workers = [main_pid, *child_pids(main_pid)]
        assert len(workers) == 2
        clients = [Client(port) for _ in range(connections)]
        try:
            for index, client in enumerate(clients):
                assert client.request("GET", f"/w/{index}").json()["path"] == f"/w/{index}"
            per_worker = {pid: established_on_port(pid, port) for pid in workers}
            stats = proxy.stats()
        finally:
            for client in clients:
                client.close()
        clusters = proxy.admin("GET", "/clusters")[1]
    # SO_REUSEPORT spreads 32 connections over both workers (all on one: probability 2**-31)
    assert all(count > 0 for count in per_worker.values()), per_worker
    assert sum(per_worker.values()) == connections
    assert stats["http.ingress.downstream_rq_total"] == connections
    assert stats["http.ingress.downstream_cx_total"] == connections
    assert stats[f"listener.127.0.0.1_{port}.downstream_cx_total"] == connections
    assert stats["cluster.backend.upstream_rq_total"] == connections
    assert stats["cluster.backend.upstream_cx_total"] == 2  # one pool per worker, each reused
    assert f"backend::127.0.0.1:{echo_port}::rq_total::{connections}" in clusters
    assert f"backend::127.0.0.1:{echo_port}::cx_total::2" in clusters


def test_process_wide_gauges_are_not_multiplied_by_workers(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port, concurrency=2) as (proxy, _):
        stats = proxy.stats()
        info = json.loads(proxy.admin("GET", "/server_info")[1])
    assert info["command_line_options"]["concurrency"] == 2
    assert stats["server.concurrency"] == 2
    assert stats["server.live"] == 1
    assert stats["server.state"] == 0
    # per-cluster facts are the same in every worker: Envoy reports them once
    assert stats["cluster_manager.active_clusters"] == 1
    assert stats["cluster.backend.membership_total"] == 1
    assert stats["cluster.backend.membership_healthy"] == 1


def test_admin_stats_formats(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (proxy, port):
        for _ in range(3):
            assert get(port, "/").status == 200
        text = proxy.admin("GET", "/stats")[1]
        prometheus = proxy.admin("GET", "/stats/prometheus")[1]
        clusters_json = json.loads(proxy.admin("GET", "/clusters?format=json")[1])
    assert "http.ingress.downstream_rq_total: 3\n" in text
    assert "cluster.backend.upstream_rq_200: 3\n" in text
    assert re.search(r'^envoy_cluster_upstream_rq_total\{envoy_cluster_name="backend"\} 3$', prometheus, re.M)
    assert re.search(r'^envoy_http_downstream_rq_total\{envoy_http_conn_manager_prefix="ingress"\} 3$',
                     prometheus, re.M)
    statuses = clusters_json["cluster_statuses"]
    assert [status["name"] for status in statuses] == ["backend"]
    address = statuses[0]["host_statuses"][0]["address"]["socket_address"]
    assert (address["address"], address["port_value"]) == ("127.0.0.1", echo_port)


# --------------------------------------------------------------------------- admin switches


def test_healthcheck_fail_makes_responses_close_and_ok_undoes_it(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (proxy, port), Client(port) as kept:
        assert kept.request("GET", "/before").header("connection") is None
        assert proxy.admin("POST", "/healthcheck/fail") == (200, "OK\n")
        assert proxy.admin("GET", "/ready")[0] == 503
        assert kept.request("GET", "/during").header("connection") == "close"
        assert kept.closed_by_peer()
        assert get(port, "/fresh").header("connection") == "close"
        assert proxy.admin("POST", "/healthcheck/ok") == (200, "OK\n")
        assert proxy.admin("GET", "/ready") == (200, "LIVE\n")
        with Client(port) as after:
            for _ in range(3):
                assert after.request("GET", "/after").header("connection") is None
        assert proxy.stats()["server.healthcheck_failed"] == 0


def test_healthcheck_fail_reaches_every_worker(tmp_path: Path, echo_port: int) -> None:
    def all_close(expected: str | None) -> bool:
        return all(get(port, "/hc").header("connection") == expected for _ in range(16))

    with echo_proxy(tmp_path, echo_port, concurrency=2) as (proxy, port):
        assert proxy.admin("POST", "/healthcheck/fail")[0] == 200
        assert wait_until(lambda: all_close("close"))
        assert proxy.admin("POST", "/healthcheck/ok")[0] == 200
        assert wait_until(lambda: all_close(None))


def test_healthcheck_needs_post(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (proxy, port):
        assert proxy.admin("GET", "/healthcheck/fail")[0] == 405
        assert get(port, "/").header("connection") is None


def test_drain_listeners_stops_accepting_on_every_worker(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port, concurrency=2) as (proxy, port):
        assert get(port, "/before").status == 200
        assert proxy.admin("POST", "/drain_listeners") == (200, "OK\n")
        for _ in range(10):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert proxy.admin("GET", "/server_info")[0] == 200  # the admin keeps serving


def test_quitquitquit_exits_zero_and_reaps_workers(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port, concurrency=2) as (proxy, port):
        assert proxy.process is not None
        children = child_pids(proxy.process.pid)
        assert get(port, "/").status == 200
        assert proxy.admin("POST", "/quitquitquit") == (200, "OK\n")
        assert proxy.process.wait(10) == 0
        for child in children:
            assert wait_until(lambda child=child: process_gone(child)), child


def test_sigterm_exits_zero(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port, concurrency=2) as (proxy, port):
        assert proxy.process is not None
        children = child_pids(proxy.process.pid)
        assert get(port, "/").status == 200
        os.kill(proxy.process.pid, signal.SIGTERM)
        assert proxy.process.wait(10) == 0
        for child in children:
            assert wait_until(lambda child=child: process_gone(child)), child


# --------------------------------------------------------------------------- a second proxy on the same ports


def second_proxy(tmp_path: Path, listener_port: int, admin_port: int, echo_port: int) -> subprocess.CompletedProcess[str]:
    config = {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [http_listener("second", listener_port, simple_route("backend"))],
            "clusters": [static_cluster("backend", [echo_port])]},
    }
    path = tmp_path / "second.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "tulle", "proxy", "-c", str(path), "--concurrency", "2"],
                          capture_output=True, text=True, timeout=60)


def test_a_second_proxy_on_a_listener_port_in_use_fails_instead_of_sharing_it(
        tmp_path: Path, echo_port: int) -> None:
    # SO_REUSEPORT (one socket per worker) would let the second proxy join the first one's port
    # and take a share of its connections; Envoy's answer: "cannot bind ...: Address already in use".
    with echo_proxy(tmp_path, echo_port, concurrency=2) as (proxy, port):
        result = second_proxy(tmp_path, port, free_port(), echo_port)
        assert result.returncode == 1, result.stderr
        assert (f"second.yaml: static_resources.listeners[0]: cannot bind '127.0.0.1:{port}': "
                "Address already in use") in result.stderr
        assert "Traceback" not in result.stderr
        assert proxy.process is not None
        for _ in range(20):  # every connection still reaches the first proxy
            assert get(port, "/").status == 200
        assert proxy.stats()["http.ingress.downstream_rq_total"] == 20


def test_a_second_proxy_on_an_admin_port_in_use_fails_before_serving(tmp_path: Path, echo_port: int) -> None:
    with echo_proxy(tmp_path, echo_port) as (proxy, _):
        listener_port = free_port()
        result = second_proxy(tmp_path, listener_port, proxy.admin_port, echo_port)
        assert result.returncode == 1, result.stderr
        assert (f"second.yaml: admin.address: cannot bind '127.0.0.1:{proxy.admin_port}': "
                "Address already in use") in result.stderr
        assert "Traceback" not in result.stderr
        assert proxy.admin("GET", "/ready")[0] == 200
