#!/usr/bin/env python3
"""Control plane at scale: from ONE endpoint change to EVERY affected proxy's ACK.

Runs ``tulle control-plane --in-memory`` as its own process, fills it through the HTTP API
(registry Services, one Sidecar per application namespace importing ``./*`` and ``shared/*``,
registered instances with long leases), then connects N xDS streams from 1-2 load-client
processes (grpc.aio, one channel per stream, Tulle sidecar node ids). Each stream subscribes to
CDS and LDS (wildcard), then to the EDS and RDS names they carry, and ACKs everything, like
``tulle proxy``. Then it makes endpoint changes (register one instance for a service, then
deregister it) and records, per stream, the receive time of the response that carries the change
(ACKed at once), what else arrived and its size. Once per mode: state of the world and delta.

Run with the project venv: ``bash bench/controlplane_scale.sh`` (see ``--help``; bench/README.md).
The load-client processes are this same file with ``--load-client``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    BENCH_DIR,
    CLOCK_TICKS_PER_SECOND,
    REPO_DIR,
    BenchError,
    Supervisor,
    cleanup_on_signals,
    cpu_model_name,
    read_cpu_ticks,
    read_memory_kib,
)

SHARED_NAMESPACE = "shared"
SERVICE_PORT = 9080
DOMAIN_SUFFIX = "cluster.local"
LEASE_TTL_SECONDS = 86400  # nothing may expire during a run: expiry would be a change of its own
SERVICE_API_VERSION = "registry.tulle.dev/v1"
SIDECAR_API_VERSION = "networking.istio.io/v1"
TYPE_PREFIX = "type.googleapis.com/"
CLUSTER_TYPE = TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT_TYPE = TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER_TYPE = TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE_TYPE = TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
SHORT_NAMES = {CLUSTER_TYPE: "CDS", ENDPOINT_TYPE: "EDS", LISTENER_TYPE: "LDS", ROUTE_TYPE: "RDS"}
MODES = ("sotw", "delta")
TARGET_ACK_P99_SECONDS = 1.0
TARGET_RSS_MIB = 1024
INITIAL_BACKOFF_SECONDS = 0.5  # tulle proxy's AdsClient defaults
MAX_BACKOFF_SECONDS = 30.0
HTTP_CONCURRENCY = 4  # registrations in flight: the control plane handles them one at a time anyway


# ---------------------------------------------------------------- the mesh the benchmark builds


@dataclass(frozen=True)
class Layout:
    """Services round-robin over the application namespaces plus ``shared``; endpoint e backs
    service ``e % services``; instances back up to ``services_per_instance`` services of their
    namespace each (an instance is one endpoint per service it backs); stream i lives in
    application namespace ``i % namespaces``, so its Sidecar scope is its namespace plus shared."""

    services: int
    endpoints: int
    streams: int
    namespaces: int = 10
    services_per_instance: int = 10

    @property
    def app_namespaces(self) -> list[str]:
        return [f"ns-{index}" for index in range(self.namespaces)]

    @property
    def all_namespaces(self) -> list[str]:
        return [*self.app_namespaces, SHARED_NAMESPACE]

    def service_namespace(self, service: int) -> str:
        return self.all_namespaces[service % len(self.all_namespaces)]

    def hostname(self, service: int) -> str:
        return f"svc-{service}.{self.service_namespace(service)}.svc.{DOMAIN_SUFFIX}"

    def cluster_name(self, service: int) -> str:
        return f"outbound|{SERVICE_PORT}||{self.hostname(service)}"

    def stream_namespace(self, stream: int) -> str:
        return self.app_namespaces[stream % self.namespaces]

    def stream_ip(self, stream: int) -> str:
        return f"127.{1 + stream // 65536}.{(stream // 256) % 256}.{stream % 256}"

    def node_id(self, stream: int) -> str:
        namespace = self.stream_namespace(stream)
        return f"sidecar~{self.stream_ip(stream)}~client-{stream}.{namespace}~{namespace}.svc.{DOMAIN_SUFFIX}"

    def resources(self) -> list[dict[str, Any]]:
        """Registry Services and Sidecars, as POST /apis/v1/resources takes them."""
        services = [
            {"apiVersion": SERVICE_API_VERSION, "kind": "Service",
             "metadata": {"name": f"svc-{index}", "namespace": self.service_namespace(index)},
             "spec": {"ports": [{"name": "http", "port": SERVICE_PORT}]}}
            for index in range(self.services)
        ]
        sidecars = [
            {"apiVersion": SIDECAR_API_VERSION, "kind": "Sidecar", "metadata": {"name": "default", "namespace": ns},
             "spec": {"egress": [{"hosts": ["./*", f"{SHARED_NAMESPACE}/*"]}]}}
            for ns in self.app_namespaces
        ]
        return services + sidecars

    def instances(self) -> list[dict[str, Any]]:
        """POST /apis/v1/instances bodies that make exactly ``endpoints`` (instance, service) pairs."""
        endpoints_by_namespace: dict[str, list[int]] = {}
        for endpoint in range(self.endpoints if self.services else 0):
            service = endpoint % self.services
            endpoints_by_namespace.setdefault(self.service_namespace(service), []).append(service)
        bodies = []
        for namespace in self.all_namespaces:
            backed = endpoints_by_namespace.get(namespace, [])
            # consecutive endpoints of a namespace cycle through its services, so a chunk no longer
            # than the namespace's service count names distinct services
            chunk = max(1, min(self.services_per_instance, len(set(backed))))
            for start in range(0, len(backed), chunk):
                index = len(bodies)
                bodies.append({
                    "name": f"wl-{index}", "namespace": namespace,
                    "address": f"10.{1 + index // 65536}.{(index // 256) % 256}.{index % 256}",
                    "ports": {"http": SERVICE_PORT}, "labels": {"app": f"wl-{index}"},
                    "services": [self.hostname(service) for service in backed[start:start + chunk]],
                    "ttlSeconds": LEASE_TTL_SECONDS,
                })
        return bodies

    def change_service(self, pair: int) -> int:
        """The service whose endpoints change in add/remove pair ``pair``: the first service of
        application namespace ``pair % namespaces`` (so only that namespace's streams are affected)."""
        index = pair % self.namespaces
        if index >= self.services:
            raise BenchError(f"no service in {self.app_namespaces[index]}: use at least {index + 1} services")
        return index

    def streams_in(self, namespace: str) -> int:
        return sum(1 for stream in range(self.streams) if self.stream_namespace(stream) == namespace)


@dataclass(frozen=True)
class Change:
    """One endpoint change: an instance backing ``service`` appears (``present``) or goes away."""

    number: int
    service: int
    cluster: str
    namespace: str
    address: str
    present: bool

    @property
    def needle(self) -> bytes:
        """The endpoint's address as it appears in a serialized ClusterLoadAssignment
        (SocketAddress.address is field 2: tag 0x12, then the length)."""
        data = self.address.encode()
        return b"\x12" + bytes([len(data)]) + data


def plan_changes(layout: Layout, count: int) -> list[Change]:
    changes = []
    for number in range(count):
        pair = number // 2
        service = layout.change_service(pair)
        changes.append(Change(number, service, layout.cluster_name(service), layout.service_namespace(service),
                              f"10.250.{pair // 256}.{pair % 256 + 1}", present=number % 2 == 0))
    return changes


# ---------------------------------------------------------------- load client (a child process)


class _Decoder:
    """Names and references of xDS resources, decoded once per distinct payload in the process
    (the streams of one namespace receive identical resources)."""

    def __init__(self) -> None:
        from envoy.config.cluster.v3 import cluster_pb2
        from envoy.config.endpoint.v3 import endpoint_pb2
        from envoy.config.listener.v3 import listener_pb2
        from envoy.config.route.v3 import route_pb2
        from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2

        self._cluster = cluster_pb2.Cluster
        self._listener = listener_pb2.Listener
        self._hcm = http_connection_manager_pb2.HttpConnectionManager
        self._classes = {ENDPOINT_TYPE: endpoint_pb2.ClusterLoadAssignment, ROUTE_TYPE: route_pb2.RouteConfiguration}
        self._memo: dict[str, dict[bytes, tuple[str, tuple[str, ...]]]] = {t: {} for t in SHORT_NAMES}

    def decode(self, type_url: str, value: bytes) -> tuple[str, tuple[str, ...]]:
        """(resource name, the EDS names a cluster or the RDS names a listener refers to)."""
        memo = self._memo[type_url]
        found = memo.get(value)
        if found is None:
            found = memo[value] = self._decode(type_url, value)
        return found

    def _decode(self, type_url: str, value: bytes) -> tuple[str, tuple[str, ...]]:
        if type_url == CLUSTER_TYPE:
            cluster = self._cluster.FromString(value)
            if cluster.type == self._cluster.EDS:
                return cluster.name, (cluster.eds_cluster_config.service_name or cluster.name,)
            return cluster.name, ()
        if type_url == LISTENER_TYPE:
            listener = self._listener.FromString(value)
            chains = [*listener.filter_chains]
            if listener.HasField("default_filter_chain"):
                chains.append(listener.default_filter_chain)
            routes = []
            for chain in chains:
                for network_filter in chain.filters:
                    if network_filter.typed_config.type_url.endswith(".HttpConnectionManager"):
                        manager = self._hcm.FromString(network_filter.typed_config.value)
                        if manager.HasField("rds"):
                            routes.append(manager.rds.route_config_name)
            return listener.name, tuple(routes)
        message = self._classes[type_url].FromString(value)
        return (message.cluster_name if type_url == ENDPOINT_TYPE else message.name), ()


@dataclass
class _TypeState:
    names: set[str] = field(default_factory=set)  # subscribed (EDS, RDS)
    held: dict[str, tuple[str, ...]] = field(default_factory=dict)  # name -> references
    received: bool = False
    version: str = ""
    nonce: str = ""


@dataclass
class _Watch:
    """What one stream saw after a change was announced."""

    change: dict[str, Any]
    needle: bytes
    affected: bool
    seen_at: float | None = None  # receive time of the response carrying the change
    acked_at: float | None = None  # when its ACK was written
    reconnects: int = 0
    by_type: dict[str, list[int]] = field(default_factory=dict)  # short type -> [responses, bytes]


class _LoadStream:
    """One simulated sidecar: one channel, one ADS stream, state of the world or delta."""

    def __init__(self, client: _LoadClient, index: int, node: Any) -> None:
        self.client = client
        self.index = index
        self.node = node
        self.delta = client.delta
        self.types = {type_url: _TypeState() for type_url in SHORT_NAMES}
        self.call: Any = None
        self.started_at = 0.0
        self.synced_at: float | None = None
        self.initial_bytes: Counter[str] = Counter()
        self.watch: _Watch | None = None
        self.reconnects = 0

    async def run(self) -> None:
        """Keep a stream open; like ``tulle proxy``, reconnect with jittered exponential back-off."""
        backoff = INITIAL_BACKOFF_SECONDS
        self.started_at = time.time()
        while True:
            error, detail = await self._session()
            if self.types[CLUSTER_TYPE].received:  # the stream had worked: start backing off anew
                backoff = INITIAL_BACKOFF_SECONDS
            self.reconnects += 1
            if self.watch is not None:
                self.watch.reconnects += 1
            self.client.stream_error(error, detail)
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _session(self) -> tuple[str, str]:
        """One ADS stream from a fresh state until it ends; why it ended (kind, detail)."""
        import grpc
        from envoy.service.discovery.v3 import ads_pb2_grpc

        self.types = {type_url: _TypeState() for type_url in SHORT_NAMES}
        options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]
        try:
            async with grpc.aio.insecure_channel(self.client.target, options=options) as channel:
                stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
                self.call = stub.DeltaAggregatedResources() if self.delta else stub.StreamAggregatedResources()
                await self._send(CLUSTER_TYPE, with_node=True)
                await self._send(LISTENER_TYPE)
                while True:
                    response = await self.call.read()
                    if response is grpc.aio.EOF:
                        return "EOF", "the control plane ended the stream"
                    await self._handle(response, time.time())
        except grpc.aio.AioRpcError as error:
            return error.code().name, str(error.details())
        except Exception as error:  # counted and retried: the run reports reconnects by cause
            return type(error).__name__, repr(error)

    async def _send(self, type_url: str, *, with_node: bool = False, nonce: str = "",
                    subscribe: set[str] | None = None, unsubscribe: set[str] | None = None) -> None:
        from envoy.service.discovery.v3 import discovery_pb2

        state = self.types[type_url]
        if self.delta:
            request = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url, response_nonce=nonce, resource_names_subscribe=sorted(subscribe or ()),
                resource_names_unsubscribe=sorted(unsubscribe or ()))
        else:
            request = discovery_pb2.DiscoveryRequest(type_url=type_url, version_info=state.version,
                                                     response_nonce=state.nonce, resource_names=sorted(state.names))
        if with_node:
            request.node.CopyFrom(self.node)
        await self.call.write(request)

    async def _handle(self, response: Any, received_at: float) -> None:
        type_url = response.type_url
        state = self.types.get(type_url)
        if state is None:
            return
        short = SHORT_NAMES[type_url]
        size = response.ByteSize()
        decoder = self.client.decoder
        carries_change = False
        watch = self.watch
        if self.delta:
            for item in response.resources:
                value = item.resource.value
                refs = decoder.decode(type_url, value)[1] if type_url in (CLUSTER_TYPE, LISTENER_TYPE) else ()
                state.held[item.name] = refs
                if watch is not None and item.name == watch.change["cluster"]:
                    carries_change = (watch.needle in value) == watch.change["present"]
            for name in response.removed_resources:
                state.held.pop(name, None)
        else:
            held = {}
            for item in response.resources:
                name, refs = decoder.decode(type_url, item.value)
                held[name] = refs
                if watch is not None and name == watch.change["cluster"]:
                    carries_change = (watch.needle in item.value) == watch.change["present"]
            if type_url in (CLUSTER_TYPE, LISTENER_TYPE):
                state.held = held  # the state of the world
            else:
                state.held.update(held)  # EDS/RDS: what a response leaves out is kept (xDS protocol)
            state.version = response.version_info
        state.nonce = response.nonce
        state.received = True
        if self.synced_at is None:
            self.initial_bytes[short] += size
        if watch is not None:
            counts = watch.by_type.setdefault(short, [0, 0])
            counts[0] += 1
            counts[1] += size
            if carries_change and watch.seen_at is None:
                watch.seen_at = received_at
        await self._send(type_url, nonce=response.nonce)  # ACK
        if watch is not None and carries_change and watch.acked_at is None:
            watch.acked_at = time.time()
            if watch.affected:
                self.client.change_seen()
        await self._follow_references()
        if self.synced_at is None and self._synced():
            self.synced_at = time.time()
            self.client.stream_synced()

    async def _follow_references(self) -> None:
        """Subscribe to the endpoints and routes that the clusters and listeners held name."""
        for parent, child in ((CLUSTER_TYPE, ENDPOINT_TYPE), (LISTENER_TYPE, ROUTE_TYPE)):
            wanted = {name for refs in self.types[parent].held.values() for name in refs}
            state = self.types[child]
            if wanted == state.names:
                continue
            added, dropped = wanted - state.names, state.names - wanted
            state.names = wanted
            for name in dropped:
                state.held.pop(name, None)
            if self.delta:
                await self._send(child, subscribe=added, unsubscribe=dropped)
            else:
                await self._send(child)

    def _synced(self) -> bool:
        if not (self.types[CLUSTER_TYPE].received and self.types[LISTENER_TYPE].received):
            return False
        for type_url in (ENDPOINT_TYPE, ROUTE_TYPE):
            state = self.types[type_url]
            if state.names and not (state.received and state.names <= state.held.keys()):
                return False
        return True

    def mark(self, change: dict[str, Any]) -> bool:
        affected = change["cluster"] in self.types[ENDPOINT_TYPE].names
        self.watch = _Watch(change, Change(**change).needle, affected)
        return affected

    def result(self) -> dict[str, Any]:
        watch = self.watch
        assert watch is not None
        return {"stream": self.index, "affected": watch.affected, "seen_at": watch.seen_at,
                "acked_at": watch.acked_at, "by_type": watch.by_type, "reconnects": watch.reconnects}


class _LoadClient:
    """A process's streams and its command loop: JSON lines in on stdin, events out on stdout."""

    def __init__(self, target: str, delta: bool, layout: Layout, first: int, count: int) -> None:
        self.target = target
        self.delta = delta
        self.layout = layout
        self.decoder = _Decoder()
        self.streams = [_LoadStream(self, index, self._node(index)) for index in range(first, first + count)]
        self.synced = 0
        self.errors: Counter[str] = Counter()  # why streams ended (each one was reopened)
        self.affected = 0
        self.seen = 0
        self.all_synced = asyncio.Event()

    def _node(self, index: int) -> Any:
        from envoy.config.core.v3 import base_pb2
        from google.protobuf import struct_pb2

        namespace = self.layout.stream_namespace(index)
        metadata = struct_pb2.Struct()
        metadata.update({"TULLE_AGENT": True, "NAMESPACE": namespace, "WORKLOAD_NAME": f"client-{index}"})
        return base_pb2.Node(id=self.layout.node_id(index), cluster=f"client.{namespace}", metadata=metadata,
                             user_agent_name="tulle-bench-load-client")

    @staticmethod
    def emit(event: str, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()

    def stream_synced(self) -> None:
        self.synced += 1
        if self.synced == len(self.streams):
            self.all_synced.set()

    def stream_error(self, error: str, detail: str) -> None:
        self.errors[error] += 1
        if self.errors[error] <= 3:  # the first few of each kind, with details, go to the client's log
            print(f"{time.strftime('%H:%M:%S')} stream ended: {error}: {detail}", file=sys.stderr, flush=True)

    def change_seen(self) -> None:
        self.seen += 1
        if self.seen == self.affected:
            self.emit("seen", count=self.seen)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        commands: asyncio.Queue[str] = asyncio.Queue()

        def read_stdin() -> None:
            for line in sys.stdin:
                loop.call_soon_threadsafe(commands.put_nowait, line)
            loop.call_soon_threadsafe(commands.put_nowait, '{"cmd": "stop"}')

        threading.Thread(target=read_stdin, daemon=True).start()
        tasks = [asyncio.create_task(stream.run()) for stream in self.streams]
        reporter = asyncio.create_task(self._report_sync())
        try:
            while True:
                command = json.loads(await commands.get())
                if command["cmd"] == "mark":
                    self.seen = 0
                    self.affected = sum(stream.mark(command["change"]) for stream in self.streams)
                    self.emit("marked", affected=self.affected)
                    if self.affected == 0:
                        self.emit("seen", count=0)
                elif command["cmd"] == "collect":
                    self.emit("collected", streams=[stream.result() for stream in self.streams])
                    for stream in self.streams:
                        stream.watch = None
                elif command["cmd"] == "stop":
                    break
        finally:
            reporter.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, reporter, return_exceptions=True)

    async def _report_sync(self) -> None:
        while not self.all_synced.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.all_synced.wait(), 2.0)
            self.emit("progress", synced=self.synced, errors=dict(self.errors))
        self.emit("synced", errors=dict(self.errors), streams=[
            {"stream": s.index, "seconds": (s.synced_at or 0.0) - s.started_at, "bytes": dict(s.initial_bytes),
             "reconnects": s.reconnects} for s in self.streams])


def load_client_main(args: argparse.Namespace) -> int:
    layout = Layout(args.services, args.endpoints, args.streams, args.namespaces)
    client = _LoadClient(args.load_client, args.mode == "delta", layout, args.first_stream, args.stream_count)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(client.run())
    return 0


# ---------------------------------------------------------------- coordinator


class _ClientProcess:
    """A load-client child: commands on its stdin, events from its stdout."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for line in self.process.stdout:
            self.events.put_nowait(json.loads(line))
        self.events.put_nowait({"event": "exited"})

    def send(self, command: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps({"cmd": command, **fields}) + "\n").encode())

    async def expect(self, event: str, deadline: float) -> dict[str, Any]:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(f"{self.name}: no {event!r} before the deadline")
            try:
                message = await asyncio.wait_for(self.events.get(), remaining)
            except TimeoutError:
                raise BenchError(f"{self.name}: no {event!r} before the deadline") from None
            if message["event"] == event:
                return message
            if message["event"] == "exited":
                raise BenchError(f"{self.name} exited (see its log) while waiting for {event!r}")
            if message["event"] == "progress":
                errors = ", ".join(f"{count} {why}" for why, count in message["errors"].items()) or "none"
                _progress(f"{self.name}: {message['synced']} streams synced; streams ended and reopened: {errors}")

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.send("stop")
        try:
            await asyncio.wait_for(self.process.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
        self.reader.cancel()


def _progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (what latency reports usually mean by p99)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


class _ControlPlaneMeter:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu_seconds(self) -> float:
        return (read_cpu_ticks(self.pid) or 0) / CLOCK_TICKS_PER_SECOND

    def memory_mib(self) -> tuple[float, float]:
        rss, peak = read_memory_kib([self.pid])
        return rss / 1024, peak / 1024


async def _post_json(session: Any, url: str, body: Any) -> Any:
    async with session.post(url, json=body) as response:
        answer = await response.json(content_type=None)
        if response.status != 200:
            raise BenchError(f"POST {url}: {response.status} {json.dumps(answer)[:500]}")
        return answer


async def _populate(session: Any, api: str, layout: Layout, meter: _ControlPlaneMeter) -> dict[str, Any]:
    started, cpu_started = time.monotonic(), meter.cpu_seconds()
    resources = layout.resources()
    for start in range(0, len(resources), 250):
        await _post_json(session, f"{api}/apis/v1/resources", resources[start:start + 250])
    services_seconds = time.monotonic() - started
    bodies = layout.instances()
    completed_at: list[float] = []
    next_body = iter(range(len(bodies)))

    async def register() -> None:
        for index in next_body:
            await _post_json(session, f"{api}/apis/v1/instances", bodies[index])
            completed_at.append(time.monotonic())
            if len(completed_at) % 500 == 0:
                _progress(f"registered {len(completed_at)}/{len(bodies)} instances")

    registering = time.monotonic()
    await asyncio.gather(*(register() for _ in range(HTTP_CONCURRENCY)))
    instance_seconds = time.monotonic() - registering
    # the control plane takes registrations one at a time, so the spacing of the last completions is
    # what one registration costs it once the registry is full
    tail = max(1, len(completed_at) // 10)
    last_tenth_ms = (1000 * (completed_at[-1] - completed_at[-tail - 1]) / tail
                     if len(completed_at) > tail else None)
    return {
        "resources": len(resources), "resources_seconds": round(services_seconds, 3),
        "instances": len(bodies), "endpoints": sum(len(body["services"]) for body in bodies),
        "instances_seconds": round(instance_seconds, 3),
        "registrations_per_second": round(len(bodies) / instance_seconds, 1) if instance_seconds > 0 else None,
        "last_tenth_registration_ms": _round(last_tenth_ms, 2),
        "seconds": round(time.monotonic() - started, 3),
        "control_plane_cpu_seconds": round(meter.cpu_seconds() - cpu_started, 2),
    }


async def _start_clients(args: argparse.Namespace, mode: str, target: str, work_dir: Path) -> list[_ClientProcess]:
    processes = max(1, min(args.client_processes, args.streams))
    share = math.ceil(args.streams / processes)
    clients = []
    for number in range(processes):
        first = number * share
        count = min(share, args.streams - first)
        if count <= 0:
            break
        log = open(work_dir / f"load-client-{mode}-{number}.log", "wb")  # noqa: SIM115 - lives with the child
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), "--load-client", target, "--mode", mode,
            "--services", str(args.services), "--endpoints", str(args.endpoints), "--streams", str(args.streams),
            "--namespaces", str(args.namespaces), "--first-stream", str(first), "--stream-count", str(count),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log, start_new_session=True,
            limit=64 * 1024 * 1024)
        log.close()
        clients.append(_ClientProcess(f"load client {number}", process))
    return clients


def summarize_change(change: Change, t0: float, results: list[dict[str, Any]], expected_affected: int,
                     cpu_seconds: float, window_seconds: float) -> dict[str, Any]:
    """One change's numbers from every stream's record of it."""
    affected = [r for r in results if r["affected"]]
    seen = [r["seen_at"] - t0 for r in affected if r["seen_at"] is not None]
    acked = [r["acked_at"] - t0 for r in affected if r["acked_at"] is not None]
    unaffected_receiving = sum(1 for r in results if not r["affected"] and r["by_type"])
    types_to_affected = sorted({short for r in affected for short in r["by_type"]})
    bytes_by_type: Counter[str] = Counter()
    responses = 0
    for result in results:
        for short, (count, size) in result["by_type"].items():
            bytes_by_type[short] += size
            responses += count
    total_bytes = sum(bytes_by_type.values())
    return {
        "change": change.number, "kind": "add endpoint" if change.present else "remove endpoint",
        "cluster": change.cluster, "address": change.address,
        "streams": len(results), "affected_streams": len(affected), "expected_affected_streams": expected_affected,
        "acked_streams": len(acked), "missed_streams": len(affected) - len(seen),
        "receive_p50_s": _round(_percentile(seen, 0.5)), "receive_p99_s": _round(_percentile(seen, 0.99)),
        "ack_p50_s": _round(_percentile(acked, 0.5)), "ack_p99_s": _round(_percentile(acked, 0.99)),
        "ack_max_s": _round(max(acked) if acked else None),
        "unaffected_streams_receiving": unaffected_receiving,
        "reconnects": sum(r["reconnects"] for r in results),
        "types_pushed_to_affected": types_to_affected,
        "only_eds_pushed": types_to_affected == ["EDS"] and unaffected_receiving == 0,
        "responses": responses, "bytes_total": total_bytes, "bytes_by_type": dict(bytes_by_type),
        "bytes_per_affected_stream": round(total_bytes / len(affected)) if affected else 0,
        "control_plane_cpu_seconds": round(cpu_seconds, 2), "window_seconds": round(window_seconds, 2),
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


async def _profile_start(args: argparse.Namespace, pid: int, path: Path) -> subprocess.Popen[bytes] | None:
    if not args.profile:
        return None
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if py_spy is None:
        raise BenchError("--profile needs py-spy (.venv/bin/pip install py-spy)")
    popen = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", "50", "--format", "raw",
                              "--output", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    await asyncio.sleep(1.0)  # py-spy attaches before the change is made
    return popen


def _profile_stop(popen: subprocess.Popen[bytes] | None) -> None:
    if popen is None:
        return
    popen.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
    try:
        popen.wait(timeout=30)
    except subprocess.TimeoutExpired:
        popen.kill()


def _function_of(frame: str) -> str:
    """``push_all (tulle/controlplane/server.py:138)`` -> ``push_all (tulle/controlplane/server.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summarize_profile(collapsed: str, top: int = 15) -> dict[str, Any]:
    """Inclusive and self shares of functions from py-spy's collapsed stacks ("a;b;c count")."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        functions = [_function_of(frame.strip()) for frame in stack.split(";") if frame.strip()]
        total += count
        for function in set(functions):
            inclusive[function] += count
        if functions:
            leaf[functions[-1]] += count
    if not total:
        return {"samples": 0, "inclusive": [], "self": []}
    return {
        "samples": total,
        "inclusive": [[function, round(100 * n / total, 1)] for function, n in inclusive.most_common()
                      if "tulle/controlplane/" in function or "tulle/config/" in function][:top],
        "self": [[function, round(100 * n / total, 1)] for function, n in leaf.most_common(top)],
    }


async def run_mode(args: argparse.Namespace, mode: str, layout: Layout, supervisor: Supervisor,
                   work_dir: Path) -> dict[str, Any]:
    import aiohttp

    ready_file = work_dir / f"ready-{mode}.json"
    control_plane = supervisor.start(f"control-plane-{mode}", [
        sys.executable, "-m", "tulle", "control-plane", "--in-memory", "--xds-address", "127.0.0.1:0",
        "--http-address", "127.0.0.1:0", "--ready-file", str(ready_file), "--log-level", "warning"])
    deadline = time.monotonic() + 30
    while not ready_file.exists():
        if not control_plane.alive() or time.monotonic() > deadline:
            raise BenchError(f"the control plane did not start: {control_plane.log_tail()}")
        await asyncio.sleep(0.05)
    ports: dict[str, int] = {}
    while not ports:
        try:
            ports = json.loads(ready_file.read_text())
        except ValueError:  # caught half-written
            await asyncio.sleep(0.05)
    api, target = f"http://127.0.0.1:{ports['http_port']}", f"127.0.0.1:{ports['xds_port']}"
    token = Path(ports["token_file"]).read_text().strip()  # the in-memory control plane's API token
    meter = _ControlPlaneMeter(control_plane.pid)
    outcome: dict[str, Any] = {"mode": mode, "control_plane_pid": control_plane.pid}
    clients: list[_ClientProcess] = []
    timeout = aiohttp.ClientTimeout(total=None, sock_read=args.phase_timeout)
    try:
        async with aiohttp.ClientSession(timeout=timeout, headers={"Authorization": f"Bearer {token}"}) as session:
            _progress(f"{mode}: populating {layout.services} services, {layout.endpoints} endpoints")
            outcome["populate"] = await _populate(session, api, layout, meter)
            await asyncio.sleep(args.settle)  # the debounced push of the last registration (no proxies yet)
            outcome["rss_mib_after_populate"] = round(meter.memory_mib()[0], 1)

            _progress(f"{mode}: connecting {args.streams} streams")
            connect_started, cpu_started = time.monotonic(), meter.cpu_seconds()
            clients = await _start_clients(args, mode, target, work_dir)
            phase_deadline = time.monotonic() + args.phase_timeout
            synced = [await client.expect("synced", phase_deadline) for client in clients]
            streams = [stream for message in synced for stream in message["streams"]]
            initial_bytes = [sum(stream["bytes"].values()) for stream in streams]
            outcome["connect"] = {
                "streams": len(streams), "seconds": round(time.monotonic() - connect_started, 2),
                "control_plane_cpu_seconds": round(meter.cpu_seconds() - cpu_started, 2),
                "stream_sync_p50_s": _round(_percentile([s["seconds"] for s in streams], 0.5), 3),
                "stream_sync_max_s": _round(max((s["seconds"] for s in streams), default=None), 3),
                "initial_bytes_per_stream_p50": _percentile(initial_bytes, 0.5),
                "initial_bytes_total": sum(initial_bytes),
                "reconnects": sum(stream["reconnects"] for stream in streams),
                "reconnect_causes": dict(sum((Counter(message["errors"]) for message in synced), Counter())),
                "initial_bytes_by_type_p50": {
                    short: _percentile([s["bytes"].get(short, 0) for s in streams], 0.5) for short in SHORT_NAMES.values()},
            }
            await asyncio.sleep(args.settle)
            outcome["rss_mib_connected"] = round(meter.memory_mib()[0], 1)

            outcome["changes"] = []
            lease_ids: dict[int, str] = {}
            for change in plan_changes(layout, args.changes):
                outcome["changes"].append(
                    await _one_change(args, mode, layout, change, clients, session, api, meter, lease_ids, work_dir))
            outcome["rss_mib_end"], outcome["rss_mib_peak"] = (round(v, 1) for v in meter.memory_mib())
            outcome["control_plane_cpu_seconds_total"] = round(meter.cpu_seconds(), 2)
    finally:
        for client in clients:
            await client.stop()
        supervisor.stop(control_plane)
    return outcome


async def _one_change(args: argparse.Namespace, mode: str, layout: Layout, change: Change,
                      clients: list[_ClientProcess], session: Any, api: str, meter: _ControlPlaneMeter,
                      lease_ids: dict[int, str], work_dir: Path) -> dict[str, Any]:
    deadline = time.monotonic() + args.phase_timeout
    change_fields = {"number": change.number, "service": change.service, "cluster": change.cluster,
                     "namespace": change.namespace, "address": change.address, "present": change.present}
    for client in clients:
        client.send("mark", change=change_fields)
    for client in clients:
        await client.expect("marked", deadline)
    profiler = await _profile_start(args, meter.pid, work_dir / f"profile-{mode}-{change.number}.txt")
    _progress(f"{mode}: change {change.number}: {'add' if change.present else 'remove'} an endpoint of "
              f"{change.cluster}")
    cpu_started = meter.cpu_seconds()
    t0 = time.time()
    if change.present:
        body = {"name": f"endpoint-change-{change.number}", "namespace": change.namespace, "address": change.address,
                "ports": {"http": SERVICE_PORT}, "services": [layout.hostname(change.service)],
                "ttlSeconds": LEASE_TTL_SECONDS}
        lease_ids[change.service] = (await _post_json(session, f"{api}/apis/v1/instances", body))["id"]
    else:
        async with session.delete(f"{api}/apis/v1/instances/{lease_ids.pop(change.service)}") as response:
            if response.status != 200:
                raise BenchError(f"deregistration failed: {response.status} {await response.text()}")
    try:
        for client in clients:
            await client.expect("seen", deadline)
    finally:
        _profile_stop(profiler)
    window = time.time() - t0
    cpu_seconds = meter.cpu_seconds() - cpu_started
    await asyncio.sleep(args.settle)  # whatever else the push sends arrives now, or never
    results: list[dict[str, Any]] = []
    for client in clients:
        client.send("collect")
    for client in clients:
        results.extend((await client.expect("collected", deadline))["streams"])
    summary = summarize_change(change, t0, results, layout.streams_in(change.namespace), cpu_seconds, window)
    profile_path = work_dir / f"profile-{mode}-{change.number}.txt"
    if profiler is not None and profile_path.exists():
        summary["profile"] = summarize_profile(profile_path.read_text(errors="replace"))
    _progress(f"{mode}: change {change.number}: {summary['acked_streams']}/{summary['affected_streams']} affected "
              f"streams ACKed, p99 {summary['ack_p99_s']} s")
    return summary


# ---------------------------------------------------------------- report


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}{unit}" if value < 10 else f"{value:.1f}{unit}"
    return f"{value}{unit}"


def render_report(results: dict[str, Any]) -> str:
    settings = results["settings"]
    lines = [
        f"# Control plane at scale: {settings['services']} services, {settings['endpoints']} endpoints, "
        f"{settings['streams']} streams", "",
        f"Machine: {results['machine']['nproc']} CPUs ({results['machine']['cpu_model']}); "
        f"targets: ACK p99 < {TARGET_ACK_P99_SECONDS:.0f} s, RSS < {TARGET_RSS_MIB} MiB.", "",
        "| mode | change | affected (expected) | ACKed | receive p50 | ACK p50 | ACK p99 | unaffected receiving "
        "| types to affected | bytes pushed | bytes / affected stream | CP CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for mode in results["modes"]:
        for change in mode.get("changes", []):
            lines.append(
                f"| {mode['mode']} | {change['kind']} | {change['affected_streams']} "
                f"({change['expected_affected_streams']}) | {change['acked_streams']} "
                f"| {_fmt(change['receive_p50_s'], ' s')} | {_fmt(change['ack_p50_s'], ' s')} "
                f"| {_fmt(change['ack_p99_s'], ' s')} | {change['unaffected_streams_receiving']} "
                f"| {','.join(change['types_pushed_to_affected']) or '–'} | {change['bytes_total']:,} "
                f"| {change['bytes_per_affected_stream']:,} | {change['control_plane_cpu_seconds']} |")
    lines += ["", "| mode | populate s (registrations/s) | connect s | streams reopened | CP CPU s connecting "
              "| initial bytes / stream | RSS MiB populated | RSS MiB connected | RSS MiB peak |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode in results["modes"]:
        if "connect" not in mode:
            lines.append(f"| {mode['mode']} | failed: {mode.get('error', '?')} ||||||||")
            continue
        populate, connect = mode["populate"], mode["connect"]
        lines.append(
            f"| {mode['mode']} | {populate['seconds']} ({populate['registrations_per_second']}) "
            f"| {connect['seconds']} | {connect['reconnects']} | {connect['control_plane_cpu_seconds']} "
            f"| {connect['initial_bytes_per_stream_p50']:,} | {mode['rss_mib_after_populate']} "
            f"| {mode['rss_mib_connected']} | {mode.get('rss_mib_peak', '–')} |")
    verdicts = []
    for mode in results["modes"]:
        p99s = [c["ack_p99_s"] for c in mode.get("changes", []) if c["ack_p99_s"] is not None]
        if p99s:
            worst = max(p99s)
            verdicts.append(f"{mode['mode']}: worst ACK p99 {worst:.3f} s "
                            f"({'meets' if worst < TARGET_ACK_P99_SECONDS else 'misses'} the target), "
                            f"peak RSS {mode.get('rss_mib_peak')} MiB "
                            f"({'meets' if (mode.get('rss_mib_peak') or 0) < TARGET_RSS_MIB else 'misses'})")
    lines += ["", *verdicts]
    for mode in results["modes"]:
        for change in mode.get("changes", []):
            profile = change.get("profile")
            if profile and profile["samples"]:
                lines += ["", f"py-spy, {mode['mode']} change {change['change']} ({profile['samples']} samples), "
                              "inclusive share of tulle frames:"]
                lines += [f"- {share} % {frame}" for frame, share in profile["inclusive"]]
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--endpoints", type=int, default=10000)
    parser.add_argument("--streams", type=int, default=2000, help="xDS streams (simulated sidecars)")
    parser.add_argument("--namespaces", type=int, default=10,
                        help="application namespaces (the streams' scopes), besides 'shared'")
    parser.add_argument("--services-per-instance", type=int, default=10,
                        help="services one registered instance backs (1: one registration per endpoint)")
    parser.add_argument("--modes", default="sotw,delta", help="comma-separated: sotw, delta")
    parser.add_argument("--changes", type=int, default=2, help="endpoint changes per mode: add, remove, add, ...")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds to wait after a change reached every affected stream, for stray pushes")
    parser.add_argument("--phase-timeout", type=float, default=900.0, help="seconds allowed to one phase")
    parser.add_argument("--profile", action="store_true", help="py-spy record the control plane during changes")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--no-save", action="store_true", help="print the report, write no JSON")
    parser.add_argument("--keep-tmp", action="store_true", help="keep logs and profiles")
    # the load-client child process
    parser.add_argument("--load-client", metavar="XDS_ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--first-stream", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--stream-count", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.mode_list = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = [mode for mode in args.mode_list if mode not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(unknown)}; known: {', '.join(MODES)}")
    if min(args.services, args.endpoints, args.streams, args.namespaces, args.services_per_instance) < 1:
        parser.error("--services, --endpoints, --streams, --namespaces and --services-per-instance must be >= 1")
    return args


async def run(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    layout = Layout(args.services, args.endpoints, args.streams, args.namespaces, args.services_per_instance)
    plan_changes(layout, args.changes)  # fails early when the layout has no service to change
    supervisor = Supervisor(work_dir)
    results: dict[str, Any] = {
        "benchmark": "controlplane_scale",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": os.environ.get("BENCH_COMMAND") or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {"nproc": os.cpu_count(), "cpu_model": cpu_model_name(),
                    "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3],
                    "python": sys.version.split()[0]},
        "settings": {"services": args.services, "endpoints": args.endpoints, "streams": args.streams,
                     "namespaces": args.namespaces, "services_per_instance": args.services_per_instance,
                     "changes": args.changes, "client_processes": args.client_processes, "settle_s": args.settle,
                     "profile": args.profile},
        "modes": [],
    }
    started = time.monotonic()
    try:
        for mode in args.mode_list:
            try:
                results["modes"].append(await run_mode(args, mode, layout, supervisor, work_dir))
            except BenchError as error:
                _progress(f"{mode}: failed: {error}")
                results["modes"].append({"mode": mode, "error": str(error)})
    finally:
        supervisor.stop_all()
    results["seconds"] = round(time.monotonic() - started, 1)
    results["machine"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load_client:
        return load_client_main(args)
    os.chdir(REPO_DIR)
    work_dir = Path(tempfile.mkdtemp(prefix="tulle-cp-scale-"))
    try:
        with cleanup_on_signals():
            results = asyncio.run(run(args, work_dir))
    finally:
        if args.keep_tmp:
            _progress(f"logs and profiles kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    print(render_report(results))
    if not args.no_save:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        path = args.results_dir / f"controlplane-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        _progress(f"results: {path.relative_to(REPO_DIR) if path.is_relative_to(REPO_DIR) else path}")
    return 0 if all("error" not in mode for mode in results["modes"]) else 1


if __name__ == "__main__":
    sys.exit(main())
