"""Upstream socket options from a cluster's ``upstream_connection_options``.

Only ``tcp_keepalive`` is supported (Istio's ``connectionPool.tcp.tcpKeepalive``): SO_KEEPALIVE on,
and each of probes / idle time / interval set when given, else the OS default (as Envoy does).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from envoy.config.cluster.v3 import cluster_pb2

from tulle.config.errors import join
from tulle.config.support import check_fields


@dataclass(frozen=True, slots=True)
class TcpKeepalive:
    probes: int | None = None  # TCP_KEEPCNT
    time: int | None = None  # TCP_KEEPIDLE, seconds
    interval: int | None = None  # TCP_KEEPINTVL, seconds

    def apply(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in ((socket.TCP_KEEPCNT, self.probes), (socket.TCP_KEEPIDLE, self.time),
                              (socket.TCP_KEEPINTVL, self.interval)):
            if value is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def parse_upstream_connection_options(
    options: cluster_pb2.UpstreamConnectionOptions, field: str
) -> TcpKeepalive | None:
    check_fields(options, ("tcp_keepalive",), field)
    if not options.HasField("tcp_keepalive"):
        return None
    keepalive = options.tcp_keepalive
    check_fields(keepalive, ("keepalive_probes", "keepalive_time", "keepalive_interval"), join(field, "tcp_keepalive"))

    def value(name: str) -> int | None:
        return getattr(keepalive, name).value if keepalive.HasField(name) else None

    return TcpKeepalive(value("keepalive_probes"), value("keepalive_time"), value("keepalive_interval"))
