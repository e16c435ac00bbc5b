"""Active health checking (Envoy's ``envoy.config.core.v3.HealthCheck``): HTTP, TCP and gRPC checkers.

Every host of a cluster with ``health_checks`` gets a session: a task on the worker's
loop that checks the host on its own connection (never a request pool's), reusing it
between checks unless ``reuse_connection`` is false. As in Envoy:

* A host joining the cluster starts as ``/failed_active_hc``; the cluster's warm-up
  waits for every host's first check, and the first success makes the host healthy at
  once (later ones need ``healthy_threshold`` successes in a row).
* A network failure (connect error, reset, close) or a timeout counts towards
  ``unhealthy_threshold``; an HTTP status outside ``expected_statuses`` fails the host at
  once unless it is one of the ``retriable_statuses``, which count like network failures.
  A timeout that leaves the host failed adds ``/active_hc_timeout``.
* The next check comes after ``interval``, ``unhealthy_interval`` or, while a transition
  is pending, ``healthy_edge_interval`` / ``unhealthy_edge_interval``, plus
  ``interval_jitter`` and ``interval_jitter_percent``; ``initial_jitter`` delays the first.
* An HTTP response with ``x-envoy-degraded`` marks the host ``/degraded_active_hc``.
* A gRPC check calls ``grpc.health.v1.Health/Check`` (``service_name``, ``authority``,
  ``initial_metadata``) over HTTP/2 with grpcio: ``SERVING`` passes; any other status, or a gRPC
  error from the host, fails it at once; a host that cannot be reached counts as a network failure.

Approximation: Envoy uses ``no_traffic_interval`` (and ``no_traffic_healthy_interval``)
until the cluster has seen its first connection; Tulle accepts and validates them but
always uses the traffic intervals, so a cluster without traffic is checked more often
than Envoy would, never less.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httptools
from envoy.config.core.v3 import base_pb2, health_check_pb2
from google.protobuf import message

from tulle.config.errors import ConfigError, UnsupportedFeature, join
from tulle.config.support import check_fields, duration_seconds
from tulle.http import http1
from tulle.http.headers import HeaderMap
from tulle.router.header_mutation import HeaderMutation
from tulle.router.matchers import compile_string_matcher, require_header_safe
from tulle.stream_info import StreamInfo
from tulle.upstream.cluster_stats import HealthCheckStats

if TYPE_CHECKING:
    from tulle.upstream.host import Host

log = logging.getLogger("tulle.upstream")

USER_AGENT = "Envoy/HC"  # what Envoy's HTTP health checker sends
DEGRADED_HEADER = "x-envoy-degraded"
HEALTHCHECKED_CLUSTER_HEADER = "x-envoy-upstream-healthchecked-cluster"
READ_SIZE = 64 * 1024

_HEALTH_CHECK_FIELDS = (
    "timeout", "interval", "initial_jitter", "interval_jitter", "interval_jitter_percent", "unhealthy_threshold",
    "healthy_threshold", "alt_port", "reuse_connection", "http_health_check", "tcp_health_check", "grpc_health_check",
    "no_traffic_interval", "no_traffic_healthy_interval", "unhealthy_interval", "unhealthy_edge_interval",
    "healthy_edge_interval",
)
# Both only choose what Envoy's health check event logger writes; the event logger
# (event_log_path, event_logger, event_service) is refused, so they change nothing here.
_HEALTH_CHECK_IGNORED = ("always_log_health_check_failures", "always_log_health_check_success")
_HTTP_FIELDS = (
    "host", "path", "request_headers_to_add", "request_headers_to_remove", "expected_statuses",
    "retriable_statuses", "method", "service_name_matcher",
)
_METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")

# What one check found.
SUCCESS = "success"
DEGRADED = "degraded"
FAILED = "failed"  # the host answered, and the answer says unhealthy: no threshold applies
RETRIABLE = "retriable"  # a retriable status: counts towards unhealthy_threshold
NETWORK = "network"  # connect failure, reset, close: counts towards unhealthy_threshold
TIMEOUT = "timeout"  # no complete answer within ``timeout``: like NETWORK, and flags the host

# How a check changed the host, as Envoy's HealthTransition.
UNCHANGED = 0
CHANGED = 1
CHANGE_PENDING = 2


@dataclass(frozen=True, slots=True)
class HttpCheck:
    host: str  # the Host header; empty means the cluster's name
    path: str
    method: str
    expected_statuses: tuple[tuple[int, int], ...]  # [start, end) ranges
    retriable_statuses: tuple[tuple[int, int], ...]
    headers: HeaderMutation | None
    service_name_matcher: Callable[[str], bool] | None


@dataclass(frozen=True, slots=True)
class TcpCheck:
    send: bytes
    receive: tuple[bytes, ...]  # each segment must appear, in order, in what the host sends


@dataclass(frozen=True, slots=True)
class GrpcCheck:
    service_name: str
    authority: str  # the :authority; empty means the cluster's name
    metadata: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    timeout: float
    interval_ms: int
    unhealthy_interval_ms: int
    unhealthy_edge_interval_ms: int
    healthy_edge_interval_ms: int
    initial_jitter_ms: int
    interval_jitter_ms: int
    interval_jitter_percent: int
    unhealthy_threshold: int
    healthy_threshold: int
    reuse_connection: bool
    alt_port: int | None
    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    grpc: GrpcCheck | None = None


# --- parsing ------------------------------------------------------------------------


def _milliseconds(msg: message.Message, name: str, field: str, *, default: int | None, positive: bool = True) -> int:
    if not msg.HasField(name):
        if default is None:
            raise ConfigError(f"{name} is required", field=join(field, name))
        return default
    seconds = duration_seconds(getattr(msg, name))
    if positive and seconds <= 0:
        raise ConfigError("must be greater than 0s", field=join(field, name))
    if seconds < 0:
        raise ConfigError("must not be negative", field=join(field, name))
    return round(seconds * 1000)


def _required_count(msg: message.Message, name: str, field: str) -> int:
    if not msg.HasField(name):
        raise ConfigError(f"{name} is required", field=join(field, name))
    return int(getattr(msg, name).value)


def _status_ranges(ranges: list[message.Message], field: str) -> tuple[tuple[int, int], ...]:
    out = []
    for index, status_range in enumerate(ranges):
        start, end = status_range.start, status_range.end  # type: ignore[attr-defined]
        range_field = join(field, f"[{index}]")
        if start >= end:
            raise ConfigError(
                f"Invalid http status range: expecting start < end, but found start={start} and end={end}",
                field=range_field,
            )
        if start < 100:
            raise ConfigError(f"Invalid http status range: expecting start >= 100, but found start={start}",
                              field=range_field)
        if end > 600:
            raise ConfigError(f"Invalid http status range: expecting end <= 600, but found end={end}",
                              field=range_field)
        out.append((start, end))
    return tuple(out)


def _http_check(msg: health_check_pb2.HealthCheck.HttpHealthCheck, field: str) -> HttpCheck:
    # codec_client_type HTTP2/HTTP3 (non-default values) and send/receive are refused here.
    check_fields(msg, _HTTP_FIELDS, field)
    if not msg.path:
        raise ConfigError("path is required", field=join(field, "path"))
    require_header_safe(msg.path, join(field, "path"))
    require_header_safe(msg.host, join(field, "host"))
    method = base_pb2.RequestMethod.Name(msg.method)
    if method == "CONNECT":
        raise ConfigError("CONNECT is not a health check method", field=join(field, "method"))
    headers = HeaderMutation.from_protos(
        msg.request_headers_to_add, msg.request_headers_to_remove,
        add_field=join(field, "request_headers_to_add"), remove_field=join(field, "request_headers_to_remove"),
    )
    matcher = None
    if msg.HasField("service_name_matcher"):
        matcher = compile_string_matcher(msg.service_name_matcher, join(field, "service_name_matcher"))
    return HttpCheck(
        host=msg.host,
        path=msg.path,
        method="GET" if method == "METHOD_UNSPECIFIED" else method,
        expected_statuses=_status_ranges(list(msg.expected_statuses), join(field, "expected_statuses")) or ((200, 201),),
        retriable_statuses=_status_ranges(list(msg.retriable_statuses), join(field, "retriable_statuses")),
        headers=headers,
        service_name_matcher=matcher,
    )


def _grpc_check(msg: health_check_pb2.HealthCheck.GrpcHealthCheck, field: str) -> GrpcCheck:
    check_fields(msg, ("service_name", "authority", "initial_metadata"), field)
    require_header_safe(msg.authority, join(field, "authority"))
    metadata = []
    for index, option in enumerate(msg.initial_metadata):
        entry_field = f"{join(field, 'initial_metadata')}[{index}]"
        check_fields(option, ("header",), entry_field)
        name = option.header.key.lower()
        if not name or name.startswith(":") or name.startswith("grpc-"):
            raise ConfigError("a metadata key must be set and must not be a pseudo-header or grpc-*",
                              field=join(entry_field, "header.key"))
        require_header_safe(option.header.value, join(entry_field, "header.value"))
        metadata.append((name, option.header.value))
    return GrpcCheck(service_name=msg.service_name, authority=msg.authority, metadata=tuple(metadata))


def _payload(payload: health_check_pb2.HealthCheck.Payload, field: str) -> bytes:
    check_fields(payload, ("text", "binary"), field)
    kind = payload.WhichOneof("payload")
    if kind is None:
        raise ConfigError("one of text or binary is required", field=field)
    if kind == "binary":
        return payload.binary
    if not _HEX.fullmatch(payload.text):
        raise ConfigError(f"invalid hex string '{payload.text}'", field=join(field, "text"))
    return bytes.fromhex(payload.text)


def _tcp_check(msg: health_check_pb2.HealthCheck.TcpHealthCheck, field: str) -> TcpCheck:
    check_fields(msg, ("send", "receive"), field)
    send = _payload(msg.send, join(field, "send")) if msg.HasField("send") else b""
    receive = tuple(_payload(item, join(field, f"receive[{i}]")) for i, item in enumerate(msg.receive))
    return TcpCheck(send=send, receive=receive)


def parse_health_check(msg: health_check_pb2.HealthCheck, field: str) -> HealthCheckConfig:
    """Validate one HealthCheck; gRPC/custom checkers, TLS options and event logging are refused."""
    check_fields(msg, _HEALTH_CHECK_FIELDS, field, ignored=_HEALTH_CHECK_IGNORED)
    interval = _milliseconds(msg, "interval", field, default=None)
    unhealthy_interval = _milliseconds(msg, "unhealthy_interval", field, default=interval)
    # Validated for fidelity; see the module docstring for why the traffic intervals are used.
    _milliseconds(msg, "no_traffic_interval", field, default=60000)
    _milliseconds(msg, "no_traffic_healthy_interval", field, default=60000)
    alt_port = None
    if msg.HasField("alt_port"):
        alt_port = msg.alt_port.value
        if not 0 < alt_port <= 65535:
            raise ConfigError("must be between 1 and 65535", field=join(field, "alt_port.value"))
    kind = msg.WhichOneof("health_checker")
    http = tcp = grpc_check = None
    if kind == "http_health_check":
        http = _http_check(msg.http_health_check, join(field, "http_health_check"))
    elif kind == "tcp_health_check":
        tcp = _tcp_check(msg.tcp_health_check, join(field, "tcp_health_check"))
    elif kind == "grpc_health_check":
        grpc_check = _grpc_check(msg.grpc_health_check, join(field, "grpc_health_check"))
    else:
        raise ConfigError("one of http_health_check, tcp_health_check or grpc_health_check is required",
                          field=field)
    return HealthCheckConfig(
        timeout=_milliseconds(msg, "timeout", field, default=None) / 1000,
        interval_ms=interval,
        unhealthy_interval_ms=unhealthy_interval,
        unhealthy_edge_interval_ms=_milliseconds(msg, "unhealthy_edge_interval", field, default=unhealthy_interval),
        healthy_edge_interval_ms=_milliseconds(msg, "healthy_edge_interval", field, default=interval),
        initial_jitter_ms=_milliseconds(msg, "initial_jitter", field, default=0, positive=False),
        interval_jitter_ms=_milliseconds(msg, "interval_jitter", field, default=0, positive=False),
        interval_jitter_percent=msg.interval_jitter_percent,
        unhealthy_threshold=_required_count(msg, "unhealthy_threshold", field),
        healthy_threshold=_required_count(msg, "healthy_threshold", field),
        reuse_connection=msg.reuse_connection.value if msg.HasField("reuse_connection") else True,
        alt_port=alt_port,
        http=http,
        tcp=tcp,
        grpc=grpc_check,
    )


def parse_health_checks(checks: list[health_check_pb2.HealthCheck], field: str) -> HealthCheckConfig | None:
    """``Cluster.health_checks``: at most one, as in the Envoy API this proto comes from."""
    if not checks:
        return None
    if len(checks) > 1:
        raise UnsupportedFeature("more than one entry in health_checks", field=join(field, "[1]"))
    return parse_health_check(checks[0], join(field, "[0]"))


# --- probes -----------------------------------------------------------------------


class _Response:
    """llhttp callbacks for one health check response; the body is read and dropped."""

    __slots__ = ("parser", "head_only", "status", "headers", "headers_done", "done", "keep_alive", "extra")

    def __init__(self, head_only: bool) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.head_only = head_only
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.done = False
        self.keep_alive = False
        self.extra = False  # bytes after the response: the connection cannot be reused

    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True
        self.headers = {}

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status >= 200:
            self.headers_done = True
            if self.head_only:  # llhttp cannot be told the response answers HEAD: the head is all of it
                self.keep_alive = self.parser.should_keep_alive()
                self.done = True

    def on_message_complete(self) -> None:
        if self.status >= 200 and not self.done:  # 1xx interim responses are skipped
            self.keep_alive = self.parser.should_keep_alive()
            self.done = True

    async def read(self, reader: asyncio.StreamReader) -> None:
        while not self.done:
            data = await reader.read(READ_SIZE)
            if not data:
                if self.headers_done:  # a body delimited by the close of the connection
                    self.done = True
                    self.keep_alive = False
                    return
                raise ConnectionError("connection closed before the health check response")
            self.parser.feed_data(data)


class _HttpProbe:
    def __init__(self, check: HttpCheck, cluster_name: str, reuse_connection: bool) -> None:
        self.check = check
        self.reuse_connection = reuse_connection
        self.head_only = check.method == "HEAD"
        self.authority = check.host or cluster_name
        mutation = check.headers
        self.needs_stream_info = mutation is not None and any(entry.formatter for entry in mutation.adds)
        # Without substitution formats the request is the same for every host and every check.
        self.fixed_request = None if self.needs_stream_info else self._build(None)

    def _build(self, host: Host | None) -> bytes:
        check = self.check
        headers = HeaderMap([
            (":method", check.method), (":path", check.path), (":authority", self.authority),
            ("user-agent", USER_AGENT),
        ])
        if check.headers is not None:
            info = None
            if host is not None:
                info = StreamInfo("127.0.0.1:0", "127.0.0.1:0")
                info.upstream_host = host.address_str
                info.health_check = True
            check.headers.apply(headers, info)
        framing = b"content-length: 0\r\n" if check.method in _METHODS_WITH_BODY else b""
        return http1.encode_request_head(headers, framing)

    async def run(self, session: _Session) -> str:
        reader, writer, _ = await session.connection()
        writer.write(self.fixed_request or self._build(session.host))
        response = _Response(self.head_only)
        await response.read(reader)
        if not (self.reuse_connection and response.keep_alive and not response.extra):
            session.close_connection()
        return self.classify(response.status, response.headers, session.checker.stats)

    def classify(self, status: int, headers: dict[str, str], stats: HealthCheckStats) -> str:
        check = self.check
        if not any(start <= status < end for start, end in check.expected_statuses):
            if any(start <= status < end for start, end in check.retriable_statuses):
                return RETRIABLE
            return FAILED
        if check.service_name_matcher is not None:
            stats.verify_cluster.inc()
            if not check.service_name_matcher(headers.get(HEALTHCHECKED_CLUSTER_HEADER, "")):
                return FAILED
        return DEGRADED if DEGRADED_HEADER in headers else SUCCESS


def payload_matches(segments: tuple[bytes, ...], data: bytes) -> bool:
    """Every segment appears in ``data``, each after the previous one (Envoy's PayloadMatcher)."""
    start = 0
    for segment in segments:
        found = data.find(segment, start)
        if found < 0:
            return False
        start = found + len(segment)
    return True


class _TcpProbe:
    def __init__(self, check: TcpCheck, reuse_connection: bool) -> None:
        self.check = check
        self.reuse_connection = reuse_connection

    async def run(self, session: _Session) -> str:
        check = self.check
        reader, writer, fresh = await session.connection()
        if fresh and not check.receive:
            # Connect-only check: connecting is the test. As Envoy, nothing is sent and
            # the connection is closed at once.
            session.close_connection()
            return SUCCESS
        if check.send:
            writer.write(check.send)
        while not payload_matches(check.receive, session.received):
            data = await reader.read(READ_SIZE)
            if not data:
                raise ConnectionError("connection closed before the expected payload")
            session.received += data
        session.received = b""
        if not self.reuse_connection:
            session.close_connection()
        return SUCCESS


def _raw(data: bytes) -> bytes:
    return data


HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"


class _GrpcProbe:
    """Envoy's gRPC health checker, on the session's grpcio channel (HTTP/2, kept between checks
    unless ``reuse_connection`` is false). grpcio is imported only by a cluster that has one: a proxy
    without gRPC health checks (or ADS) does not carry it in memory."""

    def __init__(self, check: GrpcCheck, cluster_name: str, reuse_connection: bool) -> None:
        import grpc.aio  # noqa: F401 - loaded now, not at the first check
        from grpc_health.v1 import health_pb2

        self.health_pb2 = health_pb2
        self.check = check
        self.reuse_connection = reuse_connection
        self.authority = check.authority or cluster_name
        self.request = health_pb2.HealthCheckRequest(service=check.service_name).SerializeToString()

    async def run(self, session: _Session) -> str:
        import grpc
        import grpc.aio

        health_pb2 = self.health_pb2
        channel = session.channel
        if channel is None:
            port = session.checker.config.alt_port or session.host.health_check_port or session.host.port
            options = [("grpc.default_authority", self.authority), ("grpc.enable_retries", 0),
                       ("grpc.initial_reconnect_backoff_ms", 100)]
            channel = session.channel = grpc.aio.insecure_channel(f"{session.host.ip}:{port}", options=options)
        call = channel.unary_unary(HEALTH_CHECK_METHOD, request_serializer=_raw, response_deserializer=_raw)
        try:
            reply = await call(self.request, metadata=self.check.metadata or None)
        except grpc.aio.AioRpcError as exc:
            session.close_connection()
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return NETWORK  # not reached, or no answer: counted towards unhealthy_threshold
            return FAILED  # the host answered with an error (UNIMPLEMENTED, NOT_FOUND, ...): failed at once
        if not self.reuse_connection:
            session.close_connection()
        try:
            status = health_pb2.HealthCheckResponse.FromString(reply).status
        except message.DecodeError:
            return FAILED
        return SUCCESS if status == health_pb2.HealthCheckResponse.SERVING else FAILED


# --- sessions and the checker --------------------------------------------------------


class _Session:
    """One host's checks: its schedule, its counters towards the thresholds and its connection."""

    __slots__ = ("checker", "host", "first_check", "num_healthy", "num_unhealthy", "task", "reader", "writer",
                 "received", "channel")

    def __init__(self, checker: HealthChecker, host: Host) -> None:
        self.checker = checker
        self.host = host
        self.first_check = True
        self.num_healthy = 0
        self.num_unhealthy = 0
        self.task: asyncio.Task[None] | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.received = b""
        self.channel: Any = None  # the gRPC checker's grpc.aio.Channel

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> asyncio.Task[None] | None:
        """Cancel the checks; returns the cancelled task (None if it never started)."""
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
        self.close_connection()
        return task

    async def connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """(reader, writer, fresh): the kept connection, or a new one when there is none usable."""
        reader, writer = self.reader, self.writer
        if reader is not None and writer is not None and not writer.is_closing() and not reader.at_eof():
            return reader, writer, False
        self.close_connection()  # the host closed the idle connection: a new one, and no failure
        port = self.checker.config.alt_port or self.host.health_check_port or self.host.port
        reader, writer = await asyncio.open_connection(self.host.ip, port)
        self.reader, self.writer = reader, writer
        return reader, writer, True

    def close_connection(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
        self.reader = self.writer = None
        self.received = b""
        channel, self.channel = self.channel, None
        if channel is not None:
            try:
                asyncio.get_running_loop().create_task(channel.close())
            except RuntimeError:  # no loop any more (shutdown): the channel goes with the process
                pass

    async def _run(self) -> None:
        checker = self.checker
        delay = checker.initial_delay()
        while True:
            if delay:
                await asyncio.sleep(delay)
            checker.stats.attempt.inc()
            outcome = await self._check_once()
            try:
                delay = checker.record(self, outcome)
            except Exception:  # a bug in bookkeeping must not stop checking this host
                log.exception("health check of %s: recording the result failed", self.host.address_str)
                delay = checker.config.interval_ms / 1000

    async def _check_once(self) -> str:
        try:
            async with asyncio.timeout(self.checker.config.timeout):
                return await self.checker.probe.run(self)
        except TimeoutError:  # also the kernel's ETIMEDOUT, which is a timeout all the same
            self.close_connection()
            return TIMEOUT
        except (OSError, httptools.HttpParserError):
            self.close_connection()
            return NETWORK
        except Exception:  # a bug in a probe: count it against the host and keep checking
            log.exception("health check of %s failed unexpectedly", self.host.address_str)
            self.close_connection()
            return NETWORK


class HealthChecker:
    """The sessions of one cluster's hosts and what their results do to the hosts' flags.

    ``on_health_changed(host)`` runs when a check changed whether the host is healthy or
    degraded (the cluster rebuilds its load balancer); ``on_check_passed(host)`` after
    every passing check (outlier detection un-ejects on it).
    """

    def __init__(
        self,
        config: HealthCheckConfig,
        *,
        cluster_name: str,
        stats: HealthCheckStats,
        on_health_changed: Callable[[Host], None],
        on_check_passed: Callable[[Host], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.stats = stats
        self.probe: _HttpProbe | _TcpProbe | _GrpcProbe
        if config.http is not None:
            self.probe = _HttpProbe(config.http, cluster_name, config.reuse_connection)
        elif config.grpc is not None:
            self.probe = _GrpcProbe(config.grpc, cluster_name, config.reuse_connection)
        else:
            assert config.tcp is not None
            self.probe = _TcpProbe(config.tcp, config.reuse_connection)
        self.sessions: dict[int, _Session] = {}  # id(host) -> session
        self._on_health_changed = on_health_changed
        self._on_check_passed = on_check_passed
        self._rng = rng or random.Random()
        self._running = False
        self._awaiting_first_check: set[int] = set()
        self._first_round_done = asyncio.Event()
        self._first_round_done.set()

    # --- membership -----------------------------------------------------------
    def add_host(self, host: Host) -> None:
        """Start checking ``host`` (already flagged failed by the cluster, see Host.reset_monitoring)."""
        key = id(host)
        if key in self.sessions:
            return
        session = self.sessions[key] = _Session(self, host)
        self._awaiting_first_check.add(key)
        self._first_round_done.clear()
        if self._running:
            session.start()
        self._update_gauges()

    def remove_host(self, host: Host) -> None:
        session = self.sessions.pop(id(host), None)
        if session is None:
            return
        session.stop()
        self._first_check_done(id(host))
        self._update_gauges()

    # --- lifecycle --------------------------------------------------------------
    def start(self) -> None:
        """Start every session on the running loop (the cluster's warm-up calls this)."""
        self._running = True
        for session in self.sessions.values():
            session.start()

    async def wait_first_round(self) -> None:
        """Until every host present has had its first check (pass or fail)."""
        await self._first_round_done.wait()

    def stop(self) -> list[asyncio.Task[None]]:
        """Stop every session; returns their cancelled tasks for the caller to await."""
        self._running = False
        stopped = (session.stop() for session in self.sessions.values())
        return [task for task in stopped if task is not None]

    # --- results --------------------------------------------------------------
    def initial_delay(self) -> float:
        jitter = self.config.initial_jitter_ms
        return self._rng.randrange(jitter) / 1000 if jitter else 0.0

    def record(self, session: _Session, outcome: str) -> float:
        """Apply one check's outcome to the host; returns the delay until the next check."""
        if outcome in (SUCCESS, DEGRADED):
            healthy, transition = True, self._passed(session, degraded=outcome == DEGRADED)
        else:
            healthy, transition = False, self._failed(session, outcome)
        self._first_check_done(id(session.host))
        if healthy and self._on_check_passed is not None:
            self._on_check_passed(session.host)
        return self._next_interval(healthy, transition)

    def _passed(self, session: _Session, *, degraded: bool) -> int:
        host = session.host
        config = self.config
        session.num_unhealthy = 0
        transition = UNCHANGED
        if host.failed_active_hc:
            # The very first result decides at once: startup is not held to healthy_threshold.
            if session.first_check or self._count_success(session) == config.healthy_threshold:
                host.failed_active_hc = False
                host.active_hc_timeout = False
                transition = CHANGED
            else:
                transition = CHANGE_PENDING
        if degraded != host.degraded_active_hc:
            host.degraded_active_hc = degraded
            if transition == UNCHANGED:
                transition = CHANGED
        self.stats.success.inc()
        session.first_check = False
        if transition == CHANGED:
            self._changed(host)
        return transition

    def _failed(self, session: _Session, outcome: str) -> int:
        host = session.host
        config = self.config
        session.num_healthy = 0
        transition = UNCHANGED
        counts_towards_threshold = outcome in (NETWORK, TIMEOUT, RETRIABLE)
        if not host.failed_active_hc:
            if not counts_towards_threshold or self._count_failure(session) == config.unhealthy_threshold:
                host.failed_active_hc = True
                transition = CHANGED
            else:
                transition = CHANGE_PENDING
        # The timeout flag follows the latest failure of a failed host: it toggles with the reason.
        timed_out = outcome == TIMEOUT and host.failed_active_hc
        flag_changed = timed_out != host.active_hc_timeout
        host.active_hc_timeout = timed_out
        stats = self.stats
        stats.failure.inc()
        if outcome in (NETWORK, TIMEOUT):
            stats.network_failure.inc()
        session.first_check = False
        if transition == CHANGED:
            self._changed(host)
        elif flag_changed:
            host.refresh_health()  # only the printed flags changed, not the load balancing
        return transition

    @staticmethod
    def _count_success(session: _Session) -> int:
        session.num_healthy += 1
        return session.num_healthy

    @staticmethod
    def _count_failure(session: _Session) -> int:
        session.num_unhealthy += 1
        return session.num_unhealthy

    def _changed(self, host: Host) -> None:
        host.refresh_health()
        self._update_gauges()
        self._on_health_changed(host)

    def _next_interval(self, healthy: bool, transition: int) -> float:
        config = self.config
        if healthy:
            base = config.healthy_edge_interval_ms if transition == CHANGE_PENDING else config.interval_ms
        else:
            base = config.unhealthy_edge_interval_ms if transition == CHANGE_PENDING else config.unhealthy_interval_ms
        percent_jitter = config.interval_jitter_percent * base // 100
        if percent_jitter > 0:
            base += self._rng.randrange(percent_jitter)
        if config.interval_jitter_ms > 0:
            base += self._rng.randrange(config.interval_jitter_ms)
        return max(base, 1) / 1000

    def _first_check_done(self, key: int) -> None:
        if key in self._awaiting_first_check:
            self._awaiting_first_check.discard(key)
            if not self._awaiting_first_check:
                self._first_round_done.set()

    def _update_gauges(self) -> None:
        hosts = [session.host for session in self.sessions.values()]
        self.stats.healthy.set(sum(1 for host in hosts if not host.failed_active_hc))
        self.stats.degraded.set(sum(1 for host in hosts if host.degraded_active_hc))
