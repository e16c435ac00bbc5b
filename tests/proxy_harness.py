"""Start real backends and a real ``tulle proxy`` process on loopback for integration tests."""

from __future__ import annotations

import fcntl
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

# A port from free_port() is bound by a proxy only seconds later. Taken from the kernel's ephemeral
# range (bind to port 0), it could meanwhile become any process's outgoing connection or another test
# run's port: an "address in use" start-up failure, or (SO_REUSEPORT) a listener shared with another
# run's proxy. So test ports come from below that range, where only explicit binds go, and test runs
# at the same time share them through byte-range locks on one file (byte N locked: port N taken),
# which the kernel releases when the process exits.
_PORT_LOCK_FILE = Path("/tmp/tulle-test-ports.lock")
_ports_given: set[int] = set()
_random = random.Random()  # its own: drawing ports must not move a test's seeded global random
_port_lock = threading.Lock()
_port_registry: Any = None


def _test_port_range() -> range:
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    return range(20000, min(32000, ephemeral_low))


def free_port() -> int:
    """A loopback port nothing listens on, that no other process (test run) is given meanwhile."""
    global _port_registry
    ports = _test_port_range()
    if len(ports) < 1000:  # an unusual ephemeral range: fall back to the kernel's choice
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    with _port_lock:
        if _port_registry is None:
            _port_registry = open(_PORT_LOCK_FILE, "ab")  # noqa: SIM115 -- held (with its locks) for the run
        for _ in range(10 * len(ports)):
            port = _random.choice(ports)
            if port in _ports_given:
                continue
            try:
                fcntl.lockf(_port_registry, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port, os.SEEK_SET)
            except OSError:
                continue  # another test run has it
            _ports_given.add(port)  # never given twice in this run either
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    continue  # something else listens there
            return port
    raise RuntimeError(f"no free test port in {ports}")


def loopback_ip() -> str:
    """A loopback address of its own (127.0.0.0/8 at random) for a test whose processes listen on fixed
    ports (a sidecar's 15001, 15021): runs in parallel (other modules, other worktrees) never collide."""
    return f"127.{_random.randint(1, 254)}.{_random.randint(0, 255)}.{_random.randint(2, 254)}"


def http_listener(name: str, port: int, route_config: dict[str, Any], **hcm: Any) -> dict[str, Any]:
    typed = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "route_config": route_config,
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
    }
    typed.update(hcm)
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": typed}]}],
    }


def static_cluster(name: str, ports: list[int], **extra: Any) -> dict[str, Any]:
    cluster = {
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
            for p in ports]}]},
    }
    cluster.update(extra)
    return cluster


def simple_route(cluster: str, **route: Any) -> dict[str, Any]:
    return {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        {"match": {"prefix": "/"}, "route": {"cluster": cluster, **route}}]}]}


class ProxyProcess:
    """A running ``tulle proxy`` with its admin port; stops on exit from the ``with`` block."""

    def __init__(self, bootstrap: dict[str, Any], tmp_path: Path, *, concurrency: int = 1,
                 env: dict[str, str] | None = None) -> None:
        self.admin_port = free_port()
        bootstrap = dict(bootstrap)
        bootstrap["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin_port}}}
        self.config_path = tmp_path / f"bootstrap-{self.admin_port}.yaml"
        self.config_path.write_text(yaml.safe_dump(bootstrap))
        self.log_path = tmp_path / f"proxy-{self.admin_port}.log"
        self.concurrency = concurrency
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ProxyProcess:
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tulle", "proxy", "-c", str(self.config_path),
             "--concurrency", str(self.concurrency), "--log-level", "warning"],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.__exit__()  # a with statement whose __enter__ fails never calls __exit__: no process left behind
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + 60  # a loaded machine can take a while to start Python and import
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"proxy exited {self.process.returncode}: {self.log_path.read_text()}")
            try:
                if self.admin("GET", "/ready")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"proxy not ready: {self.log_path.read_text()}")

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()

    def admin(self, method: str, path: str) -> tuple[int, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def stats(self) -> dict[str, int]:
        status, body = self.admin("GET", "/stats?format=json")
        assert status == 200, body
        return {s["name"]: s["value"] for s in json.loads(body)["stats"] if "value" in s}

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")


def ads_sidecar_bootstrap(node_id: str, xds_port: int, cluster: str = "app.default",
                          metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Tulle sidecar's bootstrap: listeners and clusters over ADS from the control plane at ``xds_port``."""
    return {
        "node": {"id": node_id, "cluster": cluster,
                 "metadata": metadata or {"TULLE_AGENT": True, "NAMESPACE": "default", "LABELS": {"app": "app"}}},
        "dynamic_resources": {
            "ads_config": {"api_type": "GRPC", "transport_api_version": "V3",
                           "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]},
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"}},
        "static_resources": {"clusters": [{
            "name": "xds-grpc", "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [{"endpoint": {
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": xds_port}}}}]}]}}]},
    }
