"""``tulle sidecar``: istio-agent's job for one workload without iptables.

The agent writes the proxy's bootstrap, runs ``tulle proxy`` as its child, registers the
workload instance with the control plane (a TTL lease renewed by heartbeats), serves
readiness on ``<workload ip>:15021/healthz/ready`` and, on SIGTERM/SIGINT, takes the
workload out of the mesh in the order that loses no request: deregister (new traffic stops
being sent here), drain the proxy's listeners, then stop the proxy.

Nothing here imports the proxy: the agent stays small and the proxy is a separate process,
as Envoy is for pilot-agent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tulle.controlplane.api_token import ClientToken, add_client_arguments, find_client_token
from tulle.controlplane.model import ProxyIdentity
from tulle.controlplane.registry.validation import registration_problems
from tulle.listener.claim import address_text, os_reason, unavailable
from tulle.sidecar.bootstrap import ADMIN_PORT, sidecar_bootstrap, sidecar_identity, split_host_port

log = logging.getLogger("tulle.sidecar")

DEFAULT_CONTROL_PLANE = "http://127.0.0.1:15014"
DEFAULT_XDS_ADDRESS = "127.0.0.1:15010"
STATUS_PORT = 15021
READY_PATH = "/healthz/ready"
INSTANCES_PATH = "/apis/v1/instances"
FIRST_RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 10.0
PROXY_STOP_TIMEOUT = 10.0
HTTP_TIMEOUT = 2.0
PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "grpc_proxy", "all_proxy"})


@dataclass
class SidecarConfig:
    name: str
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    service_account: str = "default"
    ip: str = "127.0.0.1"
    app_ports: dict[int, int] = field(default_factory=dict)  # service port -> local app port
    services: list[str] = field(default_factory=list)  # empty: the app label (when ports are served)
    upstreams: dict[str, int] = field(default_factory=dict)  # "reviews:9080" -> local port
    locality: str = ""
    ttl: float = 30.0
    control_plane: str = DEFAULT_CONTROL_PLANE
    token_file: str | None = None  # the HTTP API's token (api_token.find_client_token looks further)
    state_dir: str | None = None
    xds_address: str = DEFAULT_XDS_ADDRESS
    delta: bool = False
    concurrency: int = 1
    admin_port: int = ADMIN_PORT
    status_port: int = STATUS_PORT
    drain_duration: float = 5.0
    proxy_log_level: str = "warning"

    def identity(self) -> ProxyIdentity:
        return sidecar_identity(self.name, self.namespace, ip=self.ip, labels=self.labels,
                                service_account=self.service_account)

    def backed_services(self) -> list[str]:
        if self.services:
            return list(self.services)
        if not self.app_ports:
            return []  # a client-only workload backs no service
        return [self.labels.get("app") or self.name]

    def registration(self) -> dict[str, Any]:
        """The ``POST /apis/v1/instances`` body: the endpoint is <workload ip>:<service port>."""
        return {
            "name": self.name,
            "namespace": self.namespace,
            "address": self.ip,
            "ports": {str(service_port): service_port for service_port in sorted(self.app_ports)},
            "labels": dict(self.labels),
            "serviceAccount": self.service_account,
            "locality": self.locality,
            "services": self.backed_services(),
            "ttlSeconds": int(self.ttl) if float(self.ttl).is_integer() else self.ttl,
        }

    def bootstrap(self) -> dict[str, Any]:
        return sidecar_bootstrap(
            self.identity(), resolve_address(self.xds_address), self.delta, self.admin_port,
            app_ports=self.app_ports, upstreams=self.upstreams, locality=self.locality,
        )


def resolve_address(address: str) -> str:
    """A STATIC cluster needs an IP literal: resolve ``host:port`` once, at start."""
    host, port = split_host_port(address)
    try:
        ipaddress.ip_address(host)
        return address
    except ValueError:
        resolved = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
        return f"[{resolved}]:{port}" if ":" in resolved else f"{resolved}:{port}"


# --- HTTP without proxies ------------------------------------------------
# The app's HTTP_PROXY is often exported in the same shell: the agent's own calls go direct.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(method: str, url: str, body: Any = None, timeout: float = HTTP_TIMEOUT,
          headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with _DIRECT.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except http.client.HTTPException as error:  # a garbled answer is as good as none
        raise OSError(f"bad HTTP answer from {url}: {error!r}") from error


async def http_call(method: str, url: str, body: Any = None, timeout: float = HTTP_TIMEOUT,
                    headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """(status, body); OSError when the server cannot be reached."""
    return await asyncio.to_thread(_http, method, url, body, timeout, headers)


# --- registration ----------------------------------------------------------
class Registration:
    """Keeps one instance lease alive: register (with back-off), heartbeat every ttl/3,
    register again when the control plane answers 404 (the lease expired). Every call carries
    the API's token; a 401 reads the token file again (the control plane may have made a new one)."""

    def __init__(self, control_plane: str, body: dict[str, Any], token: ClientToken | None = None) -> None:
        self.base = control_plane.rstrip("/")
        self.body = body
        self.token = token if token is not None else ClientToken(None, "")
        self.ttl = float(body.get("ttlSeconds") or 30)
        self.instance_id: str | None = None
        self.refused_permanently = False  # the last answer was a 4xx: retry at the longest delay
        self._last_refusal: str | None = None

    @property
    def heartbeat_interval(self) -> float:
        return self.ttl / 3

    async def register(self) -> None:
        """Until the control plane accepts the instance; it may be down or restarting."""
        delay = FIRST_RETRY_DELAY
        while True:
            call = asyncio.ensure_future(http_call("POST", self.base + INSTANCES_PATH, self.body,
                                                   headers=self.token.headers()))
            try:
                if self._accept(*await asyncio.shield(call)):
                    return
            except asyncio.CancelledError:
                # stopping mid-request: the control plane may still grant the lease, so learn its
                # id and let deregister() remove it rather than leave it to expire
                with contextlib.suppress(OSError, ValueError, KeyError):
                    self._accept(*await call)
                raise
            except (OSError, ValueError, KeyError) as exc:
                log.warning("control plane %s unreachable (%s); retrying in %.1fs", self.base, exc, delay)
            longest = max(FIRST_RETRY_DELAY, min(MAX_RETRY_DELAY, self.heartbeat_interval))
            if self.refused_permanently:
                delay = longest
            await asyncio.sleep(delay)
            delay = min(delay * 2, longest)

    def _accept(self, status: int, raw: bytes) -> bool:
        if status == 401:
            self._refused("registration")
            return False
        if status != 200:
            answer = raw.decode(errors="replace").strip()
            if 400 <= status < 500 and status not in (408, 429):
                # the control plane refuses this registration as it is (a newer control plane may
                # check more than this sidecar did): say it once, loudly, and retry slowly in case
                # the operator fixes the control plane side (e.g. registers the service)
                self.refused_permanently = True
                if answer != self._last_refusal:
                    log.error("registration refused (%s): %s; this workload gets no traffic until it is "
                              "accepted", status, answer)
                    self._last_refusal = answer
                return False
            log.warning("registration refused: %s %s", status, answer)
            return False
        self.refused_permanently = False
        self._last_refusal = None
        answer = json.loads(raw or b"{}")
        self.instance_id = str(answer["id"])
        # the control plane may clamp the TTL: heartbeat at the lease it granted
        self.ttl = float(answer.get("ttlSeconds") or self.ttl)
        log.info("registered %s as %s (ttl %gs)", self.body["name"], self.instance_id, self.ttl)
        return True

    async def heartbeat(self) -> bool:
        """False when the lease is gone and the instance must register again."""
        assert self.instance_id is not None
        url = f"{self.base}{INSTANCES_PATH}/{urllib.parse.quote(self.instance_id, safe='')}/heartbeat"
        try:
            status, raw = await http_call("PUT", url, headers=self.token.headers())
        except OSError as exc:
            log.warning("heartbeat failed (%s); the lease lasts %gs", exc, self.ttl)
            return True
        if status == 401:
            self._refused("heartbeat")
            return True
        if status == 404:
            log.warning("lease %s expired; registering again", self.instance_id)
            self.instance_id = None
            return False
        if status != 200:
            log.warning("heartbeat answered %s %s", status, raw.decode(errors="replace").strip())
        return True

    def _refused(self, what: str) -> None:
        log.error("the control plane refused the %s: %s", what, self.token.refused())
        if self.token.reload():
            log.warning("read a new API token from %s", self.token.source)

    async def run(self) -> None:
        while True:
            if self.instance_id is None:
                await self.register()
            await asyncio.sleep(self.heartbeat_interval)
            await self.heartbeat()

    async def deregister(self) -> None:
        if self.instance_id is None:
            return
        instance_id, self.instance_id = self.instance_id, None
        url = f"{self.base}{INSTANCES_PATH}/{urllib.parse.quote(instance_id, safe='')}"
        try:
            status, _ = await http_call("DELETE", url, headers=self.token.headers())
            if status == 401:  # the lease expires on its own within the TTL
                self._refused("deregistration")
            else:
                log.info("deregistered %s (%s)", instance_id, status)
        except OSError as exc:  # the lease expires on its own within the TTL
            log.warning("deregistration failed (%s); the lease expires in %gs", exc, self.ttl)


# --- readiness -------------------------------------------------------------
def has_active_dynamic_listener(config_dump: dict[str, Any]) -> bool:
    for config in config_dump.get("configs", []):
        if str(config.get("@type", "")).endswith(".ListenersConfigDump"):
            if any("active_state" in listener for listener in config.get("dynamic_listeners", [])):
                return True
    return False


class PortInUse(OSError):
    """A port of the workload's IP is taken, most likely by another sidecar with the same --ip."""

    def __init__(self, config: SidecarConfig, what: str, flag: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {address_text(config.ip, port)} for the {what} port: {reason} "
                         f"(is another sidecar running with --ip {config.ip}? give each workload its own "
                         f"--ip, or move the port with {flag})")


class SidecarAgent:
    def __init__(self, config: SidecarConfig) -> None:
        self.config = config
        token = find_client_token(config.token_file, config.state_dir)
        if token.problem and token.explicit:  # it may appear later: registration reads it again on 401
            log.warning("cannot read the API token from %s: %s", token.source, token.problem)
        self.registration = Registration(config.control_plane, config.registration(), token)
        self.proxy: asyncio.subprocess.Process | None = None
        self.shutting_down = False
        self.workdir = ""

    @property
    def admin_url(self) -> str:
        host = f"[{self.config.ip}]" if ":" in self.config.ip else self.config.ip
        return f"http://{host}:{self.config.admin_port}"

    async def proxy_ready(self) -> bool:
        """Istio's rule: the proxy is LIVE and has received its listeners from the control plane."""
        if self.shutting_down or self.proxy is None or self.proxy.returncode is not None:
            return False
        try:
            status, _ = await http_call("GET", self.admin_url + "/ready", timeout=1.0)
            if status != 200:
                return False
            status, raw = await http_call("GET", self.admin_url + "/config_dump", timeout=1.0)
            return status == 200 and has_active_dynamic_listener(json.loads(raw))
        except (OSError, ValueError):
            return False

    async def _serve_status(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) > 1 else ""
            if path != READY_PATH:
                status, reason, text = 404, "Not Found", "not found\n"
            elif await self.proxy_ready():
                status, reason, text = 200, "OK", "ready\n"
            else:
                status, reason, text = 503, "Service Unavailable", "not ready\n"
            body = text.encode() if parts[:1] != ["HEAD"] else b""
            writer.write(f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\n"
                         f"content-length: {len(text)}\r\nconnection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (TimeoutError, OSError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    async def _start_status_server(self) -> asyncio.Server:
        try:
            server = await asyncio.start_server(self._serve_status, self.config.ip, self.config.status_port)
        except OSError as exc:
            raise PortInUse(self.config, "readiness", "--status-port", self.config.status_port, os_reason(exc)) from None
        log.info("readiness on http://%s:%d%s", self.config.ip, self.config.status_port, READY_PATH)
        return server

    def _check_admin_port(self) -> None:
        """The proxy would refuse a taken admin port too, but only once registration has begun."""
        reason = unavailable(self.config.ip, self.config.admin_port)
        if reason is not None:
            raise PortInUse(self.config, "proxy admin", "--admin-port", self.config.admin_port, reason)

    async def _start_proxy(self) -> asyncio.subprocess.Process:
        self.workdir = tempfile.mkdtemp(prefix="tulle-sidecar-")
        path = os.path.join(self.workdir, "bootstrap.json")
        with open(path, "w", encoding="utf-8") as out:
            json.dump(self.config.bootstrap(), out, indent=1)
        command = [sys.executable, "-m", "tulle", "proxy", "-c", path,
                   "--concurrency", str(self.config.concurrency),
                   "--drain-time-s", str(self.config.drain_duration),
                   "--log-level", self.config.proxy_log_level]
        # Own process group: a terminal's Ctrl-C reaches the agent only, which then shuts the
        # proxy down in order. The death signal stops an orphaned proxy if the agent is killed.
        proxy = await asyncio.create_subprocess_exec(*command, env=proxy_environment(os.environ),
                                                     process_group=0, preexec_fn=die_with_parent)
        log.info("proxy started (pid %d): %s", proxy.pid, " ".join(command))
        return proxy

    async def run(self) -> int:
        """Until SIGTERM/SIGINT (exit 0) or the proxy's death (exit 1); deregisters either way."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Ports first: another sidecar on this IP must not get a second registration or proxy started.
        status_server = await self._start_status_server()
        try:
            self._check_admin_port()
        except PortInUse:
            status_server.close()
            raise
        self.proxy = await self._start_proxy()
        proxy_exit = loop.create_task(self.proxy.wait())
        stopped = loop.create_task(stop.wait())
        registering = loop.create_task(self.registration.run())
        try:
            await asyncio.wait({proxy_exit, stopped, registering}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.shutting_down = True  # readiness answers 503 from here on
            asked_to_stop = stop.is_set() and not proxy_exit.done()
            registering.cancel()
            try:
                await registering
            except asyncio.CancelledError:
                pass
            except Exception:  # a bug: still take the workload out of the mesh cleanly, then exit 1
                log.exception("registration stopped")
            await self.registration.deregister()  # first: the mesh stops sending traffic here
            if proxy_exit.done():
                log.error("proxy exited with %s; the workload left the mesh", self.proxy.returncode)
            else:
                await self._stop_proxy(proxy_exit, drain=asked_to_stop)
            stopped.cancel()
            status_server.close()
            await status_server.wait_closed()
            shutil.rmtree(self.workdir, ignore_errors=True)
        return 0 if asked_to_stop else 1

    async def _stop_proxy(self, proxy_exit: asyncio.Task[int], drain: bool) -> None:
        assert self.proxy is not None
        if drain:
            try:
                await http_call("POST", self.admin_url + "/drain_listeners?graceful", timeout=1.0)
                # in-flight requests finish while clients are told to reconnect elsewhere
                await asyncio.wait({proxy_exit}, timeout=self.config.drain_duration)
            except OSError as exc:
                log.warning("could not drain the proxy: %s", exc)
        if self.proxy.returncode is None:
            self.proxy.terminate()
            try:
                await asyncio.wait_for(asyncio.shield(proxy_exit), PROXY_STOP_TIMEOUT)
            except TimeoutError:
                self.proxy.kill()
                await proxy_exit
        log.info("proxy stopped (%s)", self.proxy.returncode)


def proxy_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The proxy's environment without forward-proxy settings: gRPC honours ``grpc_proxy`` /
    ``http_proxy``, and the app's HTTP_PROXY (this very sidecar) would swallow the xDS stream."""
    return {name: value for name, value in environ.items() if name.lower() not in PROXY_VARIABLES}


def die_with_parent() -> None:
    """In a child process, before exec: get SIGTERM when its parent dies (Linux's prctl)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


# --- command line -----------------------------------------------------------
def _key_value(text: str, what: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{what}: expected {what.upper()}=VALUE, got {text!r}")
    return key, value


def parse_label(text: str) -> tuple[str, str]:
    return _key_value(text, "label")


def parse_app_port(text: str) -> tuple[int, int]:
    """``9080=19081``: service port 9080 served by the app on 127.0.0.1:19081."""
    service_port, _, app_port = text.partition("=")
    if not (service_port.isdigit() and app_port.isdigit()
            and 0 < int(service_port) < 65536 and 0 < int(app_port) < 65536):
        raise argparse.ArgumentTypeError(f"--app-port: expected SERVICEPORT=APPPORT, got {text!r}")
    return int(service_port), int(app_port)


def parse_upstream(text: str) -> tuple[str, int]:
    """``reviews:9080=19080``: local port 19080 on the workload IP reaches reviews:9080."""
    target, _, local_port = text.partition("=")
    service, colon, port = target.rpartition(":")
    if not (colon and service and port.isdigit() and local_port.isdigit() and 0 < int(local_port) < 65536):
        raise argparse.ArgumentTypeError(f"--upstream: expected SERVICE:PORT=LOCALPORT, got {text!r}")
    return target, int(local_port)


def add_sidecar_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sidecar", help="run a workload's proxy: bootstrap, registration, readiness, drain")
    parser.add_argument("--name", required=True, help="workload name (unique per instance, like a pod name)")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--label", dest="labels", type=parse_label, action="append", default=[],
                        metavar="KEY=VALUE", help="workload label (repeatable), e.g. app=reviews version=v2")
    parser.add_argument("--service-account", default="default")
    parser.add_argument("--ip", default="127.0.0.1",
                        help="the workload's loopback IP, its 'pod IP' (default 127.0.0.1)")
    parser.add_argument("--app-port", dest="app_ports", type=parse_app_port, action="append", default=[],
                        metavar="SERVICEPORT=APPPORT", help="inbound: service port -> app on 127.0.0.1 (repeatable)")
    parser.add_argument("--service", dest="services", action="append", default=[],
                        help="a service this workload backs (repeatable; default the app label)")
    parser.add_argument("--upstream", dest="upstreams", type=parse_upstream, action="append", default=[],
                        metavar="SERVICE:PORT=LOCALPORT", help="explicit outbound port on the workload IP")
    parser.add_argument("--locality", default="", help="region/zone/subzone")
    parser.add_argument("--ttl", type=float, default=30.0, help="registration lease in seconds (default 30)")
    parser.add_argument("--control-plane", default=os.environ.get("TULLE_CONTROL_PLANE", DEFAULT_CONTROL_PLANE),
                        help="control plane HTTP API (default $TULLE_CONTROL_PLANE or %(default)s)")
    add_client_arguments(parser)
    parser.add_argument("--xds-address", default=DEFAULT_XDS_ADDRESS, help="control plane xDS gRPC HOST:PORT")
    parser.add_argument("--delta", action="store_true", help="delta xDS (DELTA_GRPC) instead of state of the world")
    parser.add_argument("--concurrency", type=int, default=1, help="proxy worker processes")
    parser.add_argument("--admin-port", type=int, default=ADMIN_PORT, help="proxy admin port on the workload IP")
    parser.add_argument("--status-port", type=int, default=STATUS_PORT, help="readiness port on the workload IP")
    parser.add_argument("--drain-duration", type=float, default=5.0,
                        help="seconds the proxy drains after deregistration before it is stopped")
    parser.add_argument("--proxy-log-level", default="warning")
    parser.add_argument("-l", "--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(func=run_sidecar)


def config_from_args(args: argparse.Namespace) -> SidecarConfig:
    return SidecarConfig(
        name=args.name, namespace=args.namespace, labels=dict(args.labels),
        service_account=args.service_account, ip=args.ip, app_ports=dict(args.app_ports),
        services=list(args.services), upstreams=dict(args.upstreams), locality=args.locality, ttl=args.ttl,
        control_plane=args.control_plane, token_file=args.token_file, state_dir=args.state_dir,
        xds_address=args.xds_address, delta=args.delta,
        concurrency=args.concurrency, admin_port=args.admin_port, status_port=args.status_port,
        drain_duration=args.drain_duration, proxy_log_level=args.proxy_log_level,
    )


# The flag that sets each registration field, so a refusal names what the user typed.
REGISTRATION_FLAGS = {"name": "--name", "namespace": "--namespace", "address": "--ip", "ports": "--app-port",
                      "labels": "--label", "serviceAccount": "--service-account", "locality": "--locality",
                      "services": "--service", "ttlSeconds": "--ttl"}


def registration_errors(body: dict[str, Any]) -> list[str]:
    """The registry's own checks, run before anything starts: a registration the control plane
    would refuse is a command-line error naming the flag, not a sidecar retrying forever."""
    problems = registration_problems(
        body["name"], body["namespace"], body["address"], body["ports"], body["labels"], body["serviceAccount"],
        body["locality"], body["services"], body["ttlSeconds"], 1)
    out = []
    for field_path, message in problems:
        flag = REGISTRATION_FLAGS.get(field_path.split("[", 1)[0], field_path)
        out.append(f"{flag} ({field_path}): {message}")
    return out


def run_sidecar(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="[%(asctime)s][%(process)d][%(levelname)s][tulle sidecar] %(message)s")
    if args.ttl <= 0 or args.concurrency < 1:
        print("tulle sidecar: --ttl must be positive and --concurrency at least 1", file=sys.stderr)
        return 2
    try:
        config = config_from_args(args)
        config.bootstrap()  # refuse a bad --xds-address or --locality before starting anything
    except (ValueError, OSError) as exc:
        print(f"tulle sidecar: error: {exc}", file=sys.stderr)
        return 2
    errors = registration_errors(config.registration())
    if errors:
        for error in errors:
            print(f"tulle sidecar: error: {error}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(SidecarAgent(config).run())
    except OSError as exc:  # e.g. the readiness port is taken; the proxy was stopped already
        print(f"tulle sidecar: error: {exc}", file=sys.stderr)
        return 1
