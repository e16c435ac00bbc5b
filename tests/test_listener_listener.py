"""Listeners: what they accept and refuse (with field paths), binding, and Envoy's
listener stats and port-0 behaviour through a real proxy."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import address_pb2
from envoy.config.listener.v3 import listener_pb2

from backends import Client, bootstrap, echo_backend, get
from proxy_harness import ProxyProcess, free_port, http_listener, simple_route, static_cluster
from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.listener.listener import Listener, socket_address_of, stat_address
from tulle.server.context import FactoryContext, ServerState
from tulle.server.worker import Worker
from tulle.stats.store import Store

FIELD = "static_resources.listeners[0]"


class FakeClusterManager:
    def get(self, name: str) -> Any:
        return object() if name == "backend" else None


def make_listener(doc: dict[str, Any], store: Store | None = None) -> Listener:
    ctx = FactoryContext(stats=store or Store(), cluster_manager=FakeClusterManager(),  # type: ignore[arg-type]
                         server=ServerState())
    return Listener(parse_message(doc, listener_pb2.Listener), FIELD, ctx)


def listener_doc(port: int = 10000, **extra: Any) -> dict[str, Any]:
    doc = http_listener("ingress", port, simple_route("backend"))
    doc.update(extra)
    return doc


def tcp_filter() -> dict[str, Any]:
    return {"name": "envoy.filters.network.tcp_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "tcp", "cluster": "backend"}}


def refused(doc: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        make_listener(doc)
    return caught.value


# --------------------------------------------------------------------------- construction


def test_stat_address_is_envoys() -> None:
    assert stat_address("0.0.0.0", 10000) == "0.0.0.0_10000"
    assert stat_address("::", 443) == "[::]_443"
    assert stat_address("::1", 80) == "[::1]_80"


def test_listener_stats_use_the_address_or_the_stat_prefix() -> None:
    store = Store()
    make_listener(listener_doc(port=10000), store)
    assert "listener.127.0.0.1_10000.downstream_cx_total" in store.counters
    store = Store()
    make_listener(listener_doc(port=10000, stat_prefix="public"), store)
    assert "listener.public.downstream_cx_total" in store.counters


def test_name_defaults_to_the_address() -> None:
    doc = listener_doc(port=10001)
    del doc["name"]
    assert make_listener(doc).name == "127.0.0.1:10001"


def test_buffer_limit_reaches_the_http_connection_manager() -> None:
    listener = make_listener(listener_doc(per_connection_buffer_limit_bytes=32768))
    assert listener.buffer_limit == 32768
    assert listener.factory.config.buffer_limit == 32768


def test_tcp_proxy_chain_is_accepted() -> None:
    doc = listener_doc(filter_chains=[{"filters": [tcp_filter()]}])
    assert type(make_listener(doc).factory).__name__ == "TcpProxyFactory"


def test_empty_filter_chain_match_is_accepted_but_a_real_one_is_refused() -> None:
    chain = listener_doc()["filter_chains"][0]
    make_listener(listener_doc(filter_chains=[dict(chain, filter_chain_match={})]))
    error = refused(listener_doc(filter_chains=[dict(chain, filter_chain_match={"server_names": ["a.example"]})]))
    assert isinstance(error, UnsupportedFeature)
    assert error.field == f"{FIELD}.filter_chains[0].filter_chain_match"


def test_tls_transport_socket_is_refused_not_ignored() -> None:
    chain = dict(listener_doc()["filter_chains"][0], transport_socket={
        "name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"}})
    error = refused(listener_doc(filter_chains=[chain]))
    assert isinstance(error, UnsupportedFeature)
    assert error.field == f"{FIELD}.filter_chains[0].transport_socket"


@pytest.mark.parametrize("extra, field", [
    ({"listener_filters": [{"name": "envoy.filters.listener.tls_inspector"}]}, "listener_filters"),
    ({"use_original_dst": True}, "use_original_dst"),
    ({"udp_listener_config": {}}, "udp_listener_config"),
    ({"connection_balance_config": {"exact_balance": {}}}, "connection_balance_config"),
])
def test_unsupported_listener_fields_are_refused_with_their_path(extra: dict[str, Any], field: str) -> None:
    error = refused(listener_doc(**extra))
    assert isinstance(error, UnsupportedFeature)
    assert error.field == f"{FIELD}.{field}"


def test_more_than_one_filter_chain_is_refused() -> None:
    chain = listener_doc()["filter_chains"][0]
    error = refused(listener_doc(filter_chains=[chain, chain]))
    assert isinstance(error, UnsupportedFeature)
    assert error.field == f"{FIELD}.filter_chains"


def test_no_filter_chain_is_refused() -> None:
    doc = listener_doc()
    del doc["filter_chains"]
    assert refused(doc).field == f"{FIELD}.filter_chains"


def test_a_terminal_filter_before_the_last_position_is_refused() -> None:
    hcm = listener_doc()["filter_chains"][0]["filters"][0]
    error = refused(listener_doc(filter_chains=[{"filters": [tcp_filter(), hcm]}]))
    assert not isinstance(error, UnsupportedFeature)  # invalid in Envoy too, not a Tulle gap
    assert "must be the last filter" in str(error)
    assert error.field == f"{FIELD}.filter_chains[0].filters[0]"


def test_unsupported_network_filter_is_named() -> None:
    redis = {"name": "envoy.filters.network.redis_proxy", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy",
        "stat_prefix": "redis"}}
    error = refused(listener_doc(filter_chains=[{"filters": [redis]}]))
    assert isinstance(error, UnsupportedFeature)
    assert "RedisProxy" in str(error)
    assert error.field == f"{FIELD}.filter_chains[0].filters[0]"


def test_udp_and_non_ip_addresses_are_refused() -> None:
    udp = listener_doc()
    udp["address"]["socket_address"]["protocol"] = "UDP"
    error = refused(udp)
    assert isinstance(error, UnsupportedFeature)
    assert error.field == f"{FIELD}.address.socket_address.protocol"
    pipe = listener_doc(address={"pipe": {"path": "/tmp/tulle.sock"}})
    assert refused(pipe).field == f"{FIELD}.address.pipe"


def test_socket_address_of_needs_an_address() -> None:
    address = parse_message({"socket_address": {"port_value": 80}}, address_pb2.Address)
    with pytest.raises(ConfigError) as caught:
        socket_address_of(address, "admin.address")
    assert caught.value.field == "admin.address.socket_address.address"


# --------------------------------------------------------------------------- binding


def test_bind_port_zero_takes_the_kernels_port() -> None:
    listener = make_listener(listener_doc(port=0))
    sock = listener.bind()
    try:
        assert listener.port == sock.getsockname()[1] > 0
    finally:
        sock.close()


def test_bind_on_a_port_in_use_is_a_config_error_naming_it() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        listener = make_listener(listener_doc(port=port))
        with pytest.raises(ConfigError) as caught:
            listener.bind()
    assert caught.value.reason == f"cannot bind '127.0.0.1:{port}': Address already in use"
    assert caught.value.field == FIELD


def reuse_port_listener(port: int = 0) -> socket.socket:
    """What another proxy's worker holds: a listening SO_REUSEPORT socket."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


def test_an_address_another_process_listens_on_with_reuse_port_is_refused_not_shared() -> None:
    # SO_REUSEPORT alone would let this bind succeed and split the other's connections.
    with reuse_port_listener() as taken:
        port = taken.getsockname()[1]
        listener = make_listener(listener_doc(port=port))
        with pytest.raises(ConfigError) as caught:
            listener.bind()
    assert caught.value.reason == f"cannot bind '127.0.0.1:{port}': Address already in use"
    assert caught.value.field == FIELD and listener.sockets == []


def test_every_worker_binds_the_address_its_first_socket_claimed() -> None:
    listener = make_listener(listener_doc(port=0))
    first, second = listener.bind(), listener.bind()  # two workers
    # a worker process binding what its main process holds: not a claim
    joining = make_listener(listener_doc(port=listener.port))
    third = joining.bind(exclusive=False)
    try:
        assert first.getsockname() == second.getsockname() == third.getsockname()
        # and nobody else gets in
        with pytest.raises(ConfigError):
            make_listener(listener_doc(port=listener.port)).bind()
    finally:
        for sock in (first, second, third):
            sock.close()


def test_two_listeners_on_one_address_are_refused() -> None:
    # Envoy: "error adding listener ... has duplicate address"; SO_REUSEPORT must not let
    # two listeners of one bootstrap silently share a port.
    port = free_port()
    config = bootstrap([listener_doc(port=port), dict(listener_doc(port=port), name="second")],
                       [static_cluster("backend", [port])])
    proto = parse_message(config, bootstrap_pb2.Bootstrap)
    sockets: list[socket.socket] = []
    try:
        with pytest.raises(ConfigError) as caught:
            worker = Worker(proto, ServerState())
            sockets = worker.bind_all()
    finally:
        for sock in sockets:
            sock.close()
    assert str(port) in str(caught.value)
    assert "listeners[1]" in caught.value.field


# --------------------------------------------------------------------------- through a real proxy


@pytest.fixture(scope="module")
def echo_port() -> Iterator[int]:
    with echo_backend("echo") as port:
        yield port


def test_port_zero_listener_serves_on_the_port_listed_by_admin(tmp_path: Path, echo_port: int) -> None:
    config = bootstrap([http_listener("ephemeral", 0, simple_route("backend"))],
                       [static_cluster("backend", [echo_port])])
    with ProxyProcess(config, tmp_path) as proxy:
        status, body = proxy.admin("GET", "/listeners?format=json")
        assert status == 200
        statuses = json.loads(body)["listener_statuses"]
        assert [entry["name"] for entry in statuses] == ["ephemeral"]
        port = statuses[0]["local_address"]["socket_address"]["port_value"]
        assert port > 0
        assert f"ephemeral::127.0.0.1:{port}" in proxy.admin("GET", "/listeners")[1]
        assert get(port, "/via-ephemeral").json()["path"] == "/via-ephemeral"


def test_listener_stats_count_connections(tmp_path: Path, echo_port: int) -> None:
    port = free_port()
    config = bootstrap([http_listener("ingress", port, simple_route("backend"))],
                       [static_cluster("backend", [echo_port])])
    with ProxyProcess(config, tmp_path) as proxy:
        for _ in range(3):
            assert get(port, "/").status == 200
        with Client(port) as held:
            held.request("GET", "/")
            stats = proxy.stats()
            assert stats[f"listener.127.0.0.1_{port}.downstream_cx_total"] == 4
            assert stats[f"listener.127.0.0.1_{port}.downstream_cx_active"] == 1


def test_duplicate_port_in_one_bootstrap_fails_to_start(tmp_path: Path, echo_port: int) -> None:
    port = free_port()
    config = bootstrap([http_listener("first", port, simple_route("backend")),
                        http_listener("second", port, simple_route("backend"))],
                       [static_cluster("backend", [echo_port])])
    config["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": free_port()}}}
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(config))
    process = subprocess.Popen([sys.executable, "-m", "tulle", "proxy", "-c", str(path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = process.communicate(timeout=60)  # a loaded machine starts Python slowly
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"the proxy started with two listeners on port {port}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    assert process.returncode == 1
    assert str(port) in stderr
    assert "listeners[1]" in stderr
