"""tcp_proxy per connection (Envoy's tcp_proxy filter.cc).

A :class:`TcpProxySession` is the downstream connection's protocol; once a
host accepts, an :class:`UpstreamConnection` is the upstream's. Each side's
``data_received`` writes straight into the other side's transport, so the
data path is one ``write`` plus a few integer adds. Everything else happens
on rare events:

* back-pressure: a transport above its high-water mark calls ``pause_writing``
  on its protocol, which pauses reading on the *other* side, so the proxy never
  holds more than about one buffer limit per direction;
* half-close: EOF from one side becomes ``write_eof`` on the other; the
  connection ends when both directions ended, or when either side closes;
* the idle timer is armed once per timeout and, when it fires, compares the
  last activity time the data path recorded, instead of being re-armed per chunk.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from time import monotonic
from typing import TYPE_CHECKING, Any

from tulle import stream_info as flags
from tulle.stats.store import Counter
from tulle.stream_info import StreamInfo

if TYPE_CHECKING:
    from tulle.filters.network.tcp_proxy.config import TcpProxyConfig
    from tulle.server.context import DownstreamConnection

_log = logging.getLogger(__name__)

# Envoy's default per_connection_buffer_limit_bytes, used when a cluster says 0:
# an unbounded proxy buffer is never what an operator wants.
DEFAULT_BUFFER_LIMIT_BYTES = 1024 * 1024

# What a client may send before the upstream connect completes before reading pauses.
EARLY_DATA_LIMIT_BYTES = 64 * 1024

# Envoy's local close reasons, surfaced as %CONNECTION_TERMINATION_DETAILS%.
IDLE_TIMEOUT_DETAILS = "tcp_session_idle_timeout"
MAX_DURATION_DETAILS = "max_downstream_connection_duration_reached"


def _give_back(cx_slot: Any) -> None:
    if cx_slot is not None:
        cx_slot.dec()


def format_address(address: Any) -> str:
    """A socket address as Envoy prints it: ``ip:port``, ``[v6]:port``."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(address) if address else ""


class UpstreamConnection(asyncio.Protocol):
    """The upstream side of one proxied connection; bytes go straight to the downstream."""

    __slots__ = (
        "_downstream_transport", "_tx_total", "_cluster_rx_total", "bytes_received", "last_activity",
        "_session", "transport", "cluster", "host", "_attempt_started", "closed_locally", "flushing",
        "eof", "closed", "_reading_paused", "_cx_slot",
    )

    def __init__(self, session: TcpProxySession, cluster: Any, host: Any, attempt_started: float,
                 cx_slot: Any = None) -> None:
        self._session = session
        self._downstream_transport = session.downstream_transport
        self._tx_total = session.stats.downstream_cx_tx_bytes_total
        self._cluster_rx_total = cluster.stats.upstream_cx_rx_bytes_total
        self.bytes_received = 0
        self.last_activity = attempt_started
        self.transport: Any = None
        self.cluster = cluster
        self.host = host
        self._attempt_started = attempt_started
        self.closed_locally = False
        self.flushing = False
        self.eof = False
        self.closed = False
        self._reading_paused = False
        self._cx_slot = cx_slot  # the cluster's max_connections slot, held until the connection closes

    # --- asyncio.Protocol ---------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.last_activity = monotonic()
        self._session.on_upstream_connected(self)

    def data_received(self, data: bytes) -> None:
        try:
            self._downstream_transport.write(data)
        except RuntimeError:  # the downstream is already gone (uvloop); its close ends us
            return
        n = len(data)
        self._tx_total.value += n
        self._cluster_rx_total.value += n
        self.bytes_received += n
        self.last_activity = monotonic()

    def eof_received(self) -> bool:
        self.eof = True
        return self._session.on_upstream_eof()

    def pause_writing(self) -> None:
        self._session.pause_downstream_reading()

    def resume_writing(self) -> None:
        self._session.resume_downstream_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._cx_slot is not None:
            self._cx_slot.dec()
            self._cx_slot = None
        cluster_stats = self.cluster.stats
        cluster_stats.upstream_cx_active.dec()
        self.host.stats.cx_active -= 1
        cluster_stats.upstream_cx_destroy.inc()
        if self.closed_locally:
            cluster_stats.upstream_cx_destroy_local.inc()
        else:
            cluster_stats.upstream_cx_destroy_remote.inc()
        cluster_stats.upstream_cx_length_ms.record((monotonic() - self._attempt_started) * 1000.0)
        if self.flushing:
            self.flushing = False
            self._session.stats.upstream_flush_active.dec()
        self._session.on_upstream_closed(exc)

    # --- driven by the session ------------------------------------------
    @property
    def reading_paused(self) -> bool:
        return self._reading_paused

    def pause_reading(self) -> None:
        if self._reading_paused or self.eof or self.closed or self.transport.is_closing():
            return
        self._reading_paused = True
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        if not self.closed and not self.transport.is_closing():
            self.transport.resume_reading()

    def close(self, *, flush: bool) -> None:
        """Local close: ``flush`` sends what is buffered first (Envoy's FlushWrite)."""
        if self.closed or self.transport.is_closing():
            return
        self.closed_locally = True
        if flush:
            self.transport.close()
        else:
            self.transport.abort()


class _PendingUpstream:
    """Stands in for the upstream transport while connecting.

    The downstream keeps being read during the connect so that a client that
    resets or closes is noticed at once (a paused socket reports nothing);
    what it sends meanwhile is kept here, up to EARLY_DATA_LIMIT_BYTES, then
    reading pauses. The data path stays branch-free: it always has a ``write``.
    """

    __slots__ = ("chunks", "size", "_downstream_transport")

    def __init__(self, downstream_transport: Any) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self._downstream_transport = downstream_transport

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size >= EARLY_DATA_LIMIT_BYTES:
            self._downstream_transport.pause_reading()


class TcpProxySession(asyncio.Protocol):
    """The downstream connection's protocol: picks a host, connects, then relays."""

    __slots__ = (
        "_upstream_transport", "_rx_total", "_cluster_tx_total", "bytes_received", "last_activity",
        "config", "stats", "info", "downstream_transport", "_connection", "_loop", "_upstream",
        "_connect_task", "_idle_timer", "_duration_timer", "_idle_buffered",
        "_downstream_eof", "_downstream_closed", "_downstream_paused", "_finished",
        "_reported_rx_buffered", "_reported_tx_buffered",
    )

    def __init__(self, config: TcpProxyConfig, connection: DownstreamConnection) -> None:
        self.config = config
        self.stats = config.stats
        self._connection = connection
        self._rx_total = config.stats.downstream_cx_rx_bytes_total
        self._cluster_tx_total: Any = None
        self._upstream_transport: Any = None
        self._upstream: UpstreamConnection | None = None
        self.downstream_transport: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.bytes_received = 0
        self.last_activity = 0.0
        self._connect_task: asyncio.Task[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._duration_timer: asyncio.TimerHandle | None = None
        self._idle_buffered = 0
        self._downstream_eof = False
        self._downstream_closed = False
        self._downstream_paused = False
        self._finished = False
        self._reported_rx_buffered = 0
        self._reported_tx_buffered = 0
        info = StreamInfo(connection.remote_str, connection.local_str)
        info.protocol = ""  # raw TCP: %PROTOCOL% prints "-" as in Envoy
        self.info = info

    @property
    def upstream(self) -> UpstreamConnection | None:
        return self._upstream

    # --- asyncio.Protocol (downstream) ----------------------------------
    def connection_made(self, transport: Any) -> None:
        self.downstream_transport = transport
        self._upstream_transport = _PendingUpstream(transport)
        self._cluster_tx_total = Counter("pending")  # early bytes move to the cluster's counter on connect
        self.stats.downstream_cx_total.inc()
        self._loop = loop = asyncio.get_running_loop()
        duration = self.config.max_downstream_connection_duration
        if duration is not None:
            self._duration_timer = loop.call_later(duration, self._on_max_duration)
        self._connect_task = loop.create_task(self._connect())

    def data_received(self, data: bytes) -> None:
        try:
            self._upstream_transport.write(data)
        except RuntimeError:  # the upstream is already gone (uvloop); its close ends us
            return
        n = len(data)
        self._rx_total.value += n
        self._cluster_tx_total.value += n
        self.bytes_received += n
        self.last_activity = monotonic()

    def eof_received(self) -> bool:
        self._downstream_eof = True
        upstream = self._upstream
        if upstream is None:
            return True  # still connecting: the upstream gets the EOF after any early data
        if upstream.eof:  # both directions have ended
            upstream.close(flush=True)
            return False
        if upstream.closed or upstream.transport.is_closing():
            return False  # the upstream is going away; its connection_lost is on its way
        if upstream.transport.can_write_eof():
            upstream.transport.write_eof()
            return True  # keep the downstream open: the upstream may still answer
        upstream.close(flush=True)
        return False

    def pause_writing(self) -> None:
        upstream = self._upstream
        if upstream is not None:
            upstream.pause_reading()
        self._report_buffered()

    def resume_writing(self) -> None:
        upstream = self._upstream
        if upstream is not None:
            upstream.resume_reading()
        self._report_buffered()

    def connection_lost(self, exc: Exception | None) -> None:
        self._downstream_closed = True
        if self._finished:
            return
        task = self._connect_task
        if task is not None and not task.done():
            task.cancel()
        if self._duration_timer is not None:
            self._duration_timer.cancel()
            self._duration_timer = None
        upstream = self._upstream
        if upstream is not None and not upstream.closed and not upstream.transport.is_closing():
            # the downstream ended: deliver what it already sent, as Envoy's upstream drainer does
            if upstream.transport.get_write_buffer_size():
                upstream.flushing = True
                self.stats.upstream_flush_total.inc()
                self.stats.upstream_flush_active.inc()
            upstream.close(flush=True)
        elif upstream is None or upstream.closed:
            self._cancel_idle_timer()
        self._finish()

    # --- connecting -------------------------------------------------------
    async def _connect(self) -> None:
        try:
            await self._connect_with_retries()
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("tcp_proxy %s: connecting upstream failed", self.config.stat_prefix)
            self._abort_all()

    async def _connect_with_retries(self) -> None:
        config = self.config
        info = self.info
        attempts = 0
        while True:
            cluster_name = config.pick_cluster()
            info.upstream_cluster = cluster_name
            cluster = config.cluster_manager.get(cluster_name)
            if cluster is None:
                self.stats.downstream_cx_no_route.inc()
                info.add_flag(flags.NO_CLUSTER_FOUND)
                self._abort_downstream()
                return
            # Envoy checks max_connections before picking a host (its pool would otherwise queue
            # for a connection that is never released): overflow closes the downstream.
            manager = getattr(cluster, "resource_manager", None)
            cx_slot = manager.connections if manager is not None else None
            if cx_slot is not None and not cx_slot.try_acquire():
                cluster.stats.upstream_cx_overflow.inc()
                info.add_flag(flags.UPSTREAM_OVERFLOW)
                self._abort_downstream()
                return
            host = cluster.choose_host(None)
            if host is None:
                _give_back(cx_slot)
                cluster.stats.upstream_cx_none_healthy.inc()
                info.add_flag(flags.NO_HEALTHY_UPSTREAM)
                self._abort_downstream()
                return
            attempts += 1
            info.upstream_host = host.address_str
            if await self._connect_to(cluster, host, cx_slot):
                host.outlier.put_connect_success_final()
                return
            host.outlier.put_local_origin_failure()
            info.add_flag(flags.UPSTREAM_CONNECTION_FAILURE)
            if attempts >= config.max_connect_attempts:
                info.add_flag(flags.UPSTREAM_RETRY_LIMIT_EXCEEDED)
                exceeded = getattr(cluster.stats, "upstream_cx_connect_attempts_exceeded", None)
                if exceeded is not None:
                    exceeded.inc()
                self._abort_downstream()
                return

    async def _connect_to(self, cluster: Any, host: Any, cx_slot: Any = None) -> bool:
        """One connect attempt; True once the UpstreamConnection is live (it then holds ``cx_slot``)."""
        loop = self._loop
        assert loop is not None
        cluster_stats = cluster.stats
        host_stats = host.stats
        cluster_stats.upstream_cx_total.inc()
        cluster_stats.upstream_cx_active.inc()
        host_stats.cx_total += 1
        host_stats.cx_active += 1
        started = monotonic()
        ip = host.ip
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if cluster.tcp_keepalive is not None:
            cluster.tcp_keepalive.apply(sock)
        try:
            # the timeout covers the TCP handshake only, so it can never cancel a live transport
            async with asyncio.timeout(cluster.connect_timeout or None):
                await loop.sock_connect(sock, (ip, host.port))
        except TimeoutError:  # asyncio's timeout or the kernel's ETIMEDOUT
            sock.close()
            _give_back(cx_slot)
            cluster_stats.upstream_cx_connect_timeout.inc()
            self._count_failed_attempt(cluster_stats, host_stats, remote=False)
            return False
        except OSError:
            sock.close()
            _give_back(cx_slot)
            self._count_failed_attempt(cluster_stats, host_stats, remote=True)
            return False
        except BaseException:  # cancelled: the downstream went away while connecting
            sock.close()
            _give_back(cx_slot)
            self._count_abandoned_attempt(cluster_stats, host_stats)
            raise
        cluster_stats.upstream_cx_connect_ms.record((monotonic() - started) * 1000.0)
        upstream = UpstreamConnection(self, cluster, host, started, cx_slot)
        try:
            await loop.create_connection(lambda: upstream, sock=sock)
        except BaseException as exc:
            # once the transport exists its connection_lost does the accounting
            if upstream.transport is None:
                sock.close()
                _give_back(cx_slot)
                self._count_abandoned_attempt(cluster_stats, host_stats)
            if isinstance(exc, OSError):
                return False
            raise
        return True

    @staticmethod
    def _count_failed_attempt(cluster_stats: Any, host_stats: Any, *, remote: bool) -> None:
        # Envoy counts a connect timeout as a connect failure too (it closes the socket)
        cluster_stats.upstream_cx_connect_fail.inc()
        host_stats.cx_connect_fail += 1
        cluster_stats.upstream_cx_active.dec()
        host_stats.cx_active -= 1
        cluster_stats.upstream_cx_destroy.inc()
        if remote:
            cluster_stats.upstream_cx_destroy_remote.inc()
        else:
            cluster_stats.upstream_cx_destroy_local.inc()

    @staticmethod
    def _count_abandoned_attempt(cluster_stats: Any, host_stats: Any) -> None:
        cluster_stats.upstream_cx_active.dec()
        host_stats.cx_active -= 1
        cluster_stats.upstream_cx_destroy.inc()
        cluster_stats.upstream_cx_destroy_local.inc()

    # --- called by the UpstreamConnection -----------------------------------
    def on_upstream_connected(self, upstream: UpstreamConnection) -> None:
        transport = upstream.transport
        if self._downstream_closed:
            upstream.close(flush=False)
            return
        pending = self._upstream_transport
        self._upstream = upstream
        self._upstream_transport = transport
        cluster_tx_total = upstream.cluster.stats.upstream_cx_tx_bytes_total
        self._cluster_tx_total = cluster_tx_total
        limit = upstream.cluster.per_connection_buffer_limit_bytes or DEFAULT_BUFFER_LIMIT_BYTES
        # Envoy's low watermark is half the high one
        transport.set_write_buffer_limits(high=limit, low=limit // 2)
        self.downstream_transport.set_write_buffer_limits(high=limit, low=limit // 2)
        self.info.upstream_local_address = format_address(transport.get_extra_info("sockname"))
        self.last_activity = monotonic()
        idle_timeout = self.config.idle_timeout
        if idle_timeout is not None:
            assert self._loop is not None
            self._idle_timer = self._loop.call_later(idle_timeout, self._on_idle_timer)
        if isinstance(pending, _PendingUpstream) and pending.chunks:
            transport.writelines(pending.chunks)
            cluster_tx_total.value += pending.size
        if self._downstream_eof:
            if transport.can_write_eof():
                transport.write_eof()
            else:
                upstream.close(flush=True)
            return
        if not self._downstream_paused:  # writing the early data may have pushed back already
            self.downstream_transport.resume_reading()

    def on_upstream_eof(self) -> bool:
        downstream = self.downstream_transport
        if self._downstream_closed or downstream.is_closing():
            return False
        if self._downstream_eof:  # both directions have ended
            downstream.close()
            return False
        if downstream.can_write_eof():
            downstream.write_eof()
            return True  # keep the upstream open: the downstream may still send
        downstream.close()
        return False

    def on_upstream_closed(self, exc: Exception | None) -> None:
        if self._downstream_closed:
            self._cancel_idle_timer()
            return
        # Envoy closes the downstream with FlushWrite: what the upstream sent still arrives
        self.downstream_transport.close()

    def pause_downstream_reading(self) -> None:
        """The upstream's write buffer is above high water: stop reading the downstream."""
        if self._downstream_paused or self._downstream_eof or self._downstream_closed:
            return
        downstream = self.downstream_transport
        if downstream.is_closing():
            return
        self._downstream_paused = True
        downstream.pause_reading()
        self.stats.downstream_flow_control_paused_reading_total.inc()
        self._report_buffered()

    def resume_downstream_reading(self) -> None:
        if not self._downstream_paused:
            return
        self._downstream_paused = False
        downstream = self.downstream_transport
        if not self._downstream_closed and not downstream.is_closing():
            downstream.resume_reading()
            self.stats.downstream_flow_control_resumed_reading_total.inc()
        self._report_buffered()

    # --- timers ---------------------------------------------------------------
    def _on_idle_timer(self) -> None:
        self._idle_timer = None
        idle_timeout = self.config.idle_timeout
        if idle_timeout is None or self._loop is None:
            return
        now = monotonic()
        upstream = self._upstream
        last_activity = self.last_activity
        buffered = 0
        if upstream is not None:
            last_activity = max(last_activity, upstream.last_activity)
            if not upstream.closed:
                buffered += upstream.transport.get_write_buffer_size()
        if not self._downstream_closed:
            buffered += self.downstream_transport.get_write_buffer_size()
        # a buffer that drained since the last check (e.g. an upstream flush) is activity too
        if buffered < self._idle_buffered:
            last_activity = now
        self._idle_buffered = buffered
        remaining = last_activity + idle_timeout - now
        if remaining > 0:
            self._idle_timer = self._loop.call_later(remaining, self._on_idle_timer)
            return
        self.stats.idle_timeout.inc()
        if not self.info.connection_termination_details:
            self.info.connection_termination_details = IDLE_TIMEOUT_DETAILS
        self._abort_all()

    def _on_max_duration(self) -> None:
        self._duration_timer = None
        self.stats.max_downstream_connection_duration.inc()
        self.info.add_flag(flags.DURATION_TIMEOUT)
        self.info.connection_termination_details = MAX_DURATION_DETAILS
        self._abort_all()

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    # --- closing ----------------------------------------------------------------
    def _abort_downstream(self) -> None:
        """Envoy's NoFlush close after a failure to set up the upstream."""
        if not self._downstream_closed:
            self.downstream_transport.abort()

    def _abort_all(self) -> None:
        task = self._connect_task
        if task is not None and not task.done():
            task.cancel()
        self._abort_downstream()
        upstream = self._upstream
        if upstream is not None:
            upstream.close(flush=False)

    def _report_buffered(self) -> None:
        """Refresh the *_bytes_buffered gauges; done on watermark crossings, not per chunk."""
        if self._finished:
            return
        upstream = self._upstream
        rx_buffered = 0
        if upstream is not None and not upstream.closed:
            rx_buffered = upstream.transport.get_write_buffer_size()
        tx_buffered = 0
        if not self._downstream_closed:
            tx_buffered = self.downstream_transport.get_write_buffer_size()
        self._set_reported_buffered(rx_buffered, tx_buffered)

    def _set_reported_buffered(self, rx_buffered: int, tx_buffered: int) -> None:
        stats = self.stats
        stats.downstream_cx_rx_bytes_buffered.value += rx_buffered - self._reported_rx_buffered
        stats.downstream_cx_tx_bytes_buffered.value += tx_buffered - self._reported_tx_buffered
        self._reported_rx_buffered = rx_buffered
        self._reported_tx_buffered = tx_buffered

    def _finish(self) -> None:
        """The downstream is gone: complete the StreamInfo, log it, tell the listener."""
        self._finished = True
        self._set_reported_buffered(0, 0)
        info = self.info
        info.end_monotonic = monotonic()
        info.bytes_received = self.bytes_received
        upstream = self._upstream
        info.bytes_sent = upstream.bytes_received if upstream is not None else 0
        for logger in self.config.access_logs:
            try:
                logger.log(info)
            except Exception:
                _log.exception("tcp_proxy %s: access logger failed", self.config.stat_prefix)
        on_close = self._connection.on_close
        if on_close is not None:
            on_close()
