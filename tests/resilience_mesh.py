"""A small real mesh for the resilience end-to-end tests (tests/test_e2e_resilience_*.py).

``tulle control-plane`` (a subprocess, in memory, ephemeral ports), services and instances
registered through its API with loopback backends as their endpoints, Istio YAML applied as
``tulle apply`` does, and one client sidecar: a real ``tulle proxy`` that the control plane
treats as a Tulle sidecar without iptables (node metadata ``TULLE_AGENT``), on its own loopback
address, reaching each service through an explicit upstream port (node metadata ``UPSTREAMS``).
Requests go to ``<client ip>:<upstream port>`` and get the service's Istio routing.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from backends import Headers, Message, Reader, encode_request, read_response
from proxy_harness import ProxyProcess, ads_sidecar_bootstrap, loopback_ip

NAMESPACE = "default"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _call(url: str, token: str, method: str = "GET", body: Any = None, content_type: str = "application/json") -> Any:
    data = None if body is None else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"content-type": content_type, "authorization": f"Bearer {token}"})
    try:
        with _DIRECT.open(request, timeout=10) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{method} {url}: {error.code} {error.read()[:2000]!r}") from None


def wait_until(predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Mesh:
    """``with Mesh(tmp_path) as mesh:`` -- the client gets a loopback IP of its own, so meshes running
    at the same time (other modules, other runs of the suite) never share a listening address."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.client_ip = loopback_ip()
        self.upstreams: dict[str, int] = {}  # "svc:port" -> local port on the client IP
        self.proxy: ProxyProcess | None = None
        self._cp: subprocess.Popen[bytes] | None = None

    # --- control plane -------------------------------------------------------------------------
    def __enter__(self) -> Mesh:
        ready = self.tmp_path / "control-plane.json"
        self._cp_log = open(self.tmp_path / "control-plane.log", "wb")  # noqa: SIM115
        self._cp = subprocess.Popen(
            [sys.executable, "-m", "tulle", "control-plane", "--in-memory", "--xds-address", "127.0.0.1:0",
             "--http-address", "127.0.0.1:0", "--ready-file", str(ready), "--log-level", "warning"],
            stdout=self._cp_log, stderr=subprocess.STDOUT)
        try:
            ports = wait_until(lambda: self._ports(ready), what="the control plane")
        except BaseException:
            self.__exit__()  # a with statement whose __enter__ fails never calls __exit__: no process left behind
            raise
        self.xds_port, self.api = ports["xds_port"], f"http://127.0.0.1:{ports['http_port']}"
        self.token = Path(ports["token_file"]).read_text().strip()  # the in-memory control plane's own
        return self

    def _ports(self, ready: Path) -> dict[str, int] | None:
        assert self._cp is not None
        if self._cp.poll() is not None:
            raise AssertionError("the control plane exited: " + (self.tmp_path / "control-plane.log").read_text())
        with contextlib.suppress(FileNotFoundError, ValueError):
            return json.loads(ready.read_text())
        return None

    def __exit__(self, *exc: object) -> None:
        if self.proxy is not None:
            self.proxy.__exit__(*exc)
        if self._cp is not None:
            self._cp.terminate()
            try:
                self._cp.wait(10)
            except subprocess.TimeoutExpired:
                self._cp.kill()
            self._cp_log.close()

    def service(self, name: str, port: int, protocol: str = "HTTP") -> None:
        _call(self.api + "/apis/v1/services", self.token, "POST", {
            "name": name, "namespace": NAMESPACE, "ports": [{"name": "main", "port": port, "protocol": protocol}]})

    def instance(self, service: str, name: str, port: int, labels: dict[str, str] | None = None,
                 address: str = "127.0.0.1", locality: str = "") -> None:
        body = {"name": name, "namespace": NAMESPACE, "address": address, "ports": {"main": port},
                "labels": {"app": service, **(labels or {})}, "services": [service], "ttlSeconds": 600}
        if locality:
            body["locality"] = locality
        _call(self.api + "/apis/v1/instances", self.token, "POST", body)

    def apply(self, documents: str) -> dict[str, Any]:
        """``tulle apply -f``: all or nothing; returns the answer (created, updated, warnings)."""
        return _call(self.api + "/apis/v1/resources", self.token, "POST", documents, "application/yaml")

    # --- the client sidecar ----------------------------------------------------------------------
    def start_client(self, upstreams: dict[str, int]) -> None:
        """``upstreams``: "service:port" -> the local port the client's app uses for it."""
        self.upstreams = dict(upstreams)
        bootstrap = ads_sidecar_bootstrap(
            self.node_id, self.xds_port, f"client.{NAMESPACE}",
            {"TULLE_AGENT": True, "NAMESPACE": NAMESPACE, "LABELS": {"app": "client"}, "UPSTREAMS": self.upstreams})
        self.proxy = ProxyProcess(bootstrap, self.tmp_path)
        self.proxy.__enter__()

    @property
    def node_id(self) -> str:
        return f"sidecar~{self.client_ip}~client-1.{NAMESPACE}~{NAMESPACE}.svc.cluster.local"

    def sent_config(self) -> str:
        """What the control plane last sent the client (all four types), as JSON text."""
        quoted = urllib.parse.quote(self.node_id, safe="")
        try:
            request = urllib.request.Request(f"{self.api}/debug/config/{quoted}",
                                             headers={"authorization": f"Bearer {self.token}"})
            with _DIRECT.open(request, timeout=10) as response:
                return response.read().decode()
        except urllib.error.HTTPError as error:
            if error.code == 404:  # not connected yet
                return ""
            raise

    def synced(self) -> bool:
        """The client acked the latest version of every type; a NACK fails the test with its reason."""
        proxies = _call(self.api + "/debug/proxies", self.token)["proxies"]
        mine = [proxy for proxy in proxies if proxy["id"] == self.node_id]
        if not mine:
            return False
        types = mine[0]["types"]
        for type_name, entry in types.items():
            nack = entry.get("nack")
            if nack and nack.get("version") == entry.get("sent"):
                raise AssertionError(f"the client NACKed {type_name}: {nack.get('error')}")
        return len(types) == 4 and all(entry.get("sent") and entry.get("acked") == entry.get("sent")
                                       for entry in types.values())

    def wait_for_config(self, *markers: str, timeout: float = 60.0) -> None:
        """Until the control plane has sent the client config holding every marker (a field or a
        value the applied rules bring) and the client has acked all of it."""
        def ready() -> bool:
            return all(marker in self.sent_config() for marker in markers) and self.synced()

        wait_until(ready, timeout, f"the client to ack config holding {markers}")

    def stats(self) -> dict[str, int]:
        assert self.proxy is not None
        with _DIRECT.open(f"http://127.0.0.1:{self.proxy.admin_port}/stats?format=json", timeout=5) as response:
            body = json.loads(response.read())
        return {s["name"]: s["value"] for s in body.get("stats", []) if "value" in s}

    def request(self, upstream: str, path: str = "/", headers: Headers = (), *, method: str = "GET",
                body: bytes | None = None, timeout: float = 10.0) -> Message:
        """One request on a fresh connection to the client sidecar's upstream port for ``upstream``."""
        with socket.create_connection((self.client_ip, self.upstreams[upstream]), timeout=timeout) as sock:
            sock.sendall(encode_request(method, path, headers, body))
            response = read_response(Reader(sock), head_request=method == "HEAD")
        if response is None:
            raise ConnectionError("the sidecar closed the connection instead of answering")
        return response

    def wait_routable(self, upstream: str, path: str = "/", timeout: float = 60.0) -> None:
        """Until the client's upstream listener answers (any status but the 502 of an unknown host)."""
        def answered() -> bool:
            try:
                return self.request(upstream, path, timeout=2).status != 502
            except OSError:
                return False

        wait_until(answered, timeout, f"{upstream} to be routable through the client sidecar")
