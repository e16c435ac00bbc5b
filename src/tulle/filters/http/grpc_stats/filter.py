"""``envoy.filters.http.grpc_stats``: per-cluster (optionally per-method) gRPC call outcomes and
message counts, in Envoy's names: ``cluster.<name>.grpc[.<service>.<method>].{success,failure,total,
<grpc-status>,request_message_count,response_message_count}``.

A call's outcome is its ``grpc-status`` (trailers, or the headers of a trailers-only response); a call
without one (reset, or a plain HTTP error) counts nothing, as in Envoy. Messages are counted by their
5-byte gRPC frame prefixes as the body streams through, however DATA splits them. The cluster is the
one the router picked (``info.upstream_cluster``).
"""

from __future__ import annotations

from typing import Any

from tulle.filters.http.base import CONTINUE, HttpFilter
from tulle.http.grpc import charge_status, is_grpc_request, service_and_method, stats_prefix
from tulle.http.headers import HeaderMap

FILTER_STATE_KEY = "envoy.filters.http.grpc_stats"


class MessageCounter:
    """Counts length-prefixed gRPC messages in a byte stream delivered in arbitrary pieces."""

    __slots__ = ("count", "_header", "_remaining")

    def __init__(self) -> None:
        self.count = 0
        self._header = b""  # a frame prefix split across pieces
        self._remaining = 0  # bytes of the current message still to come

    def feed(self, data: bytes) -> int:
        """Count the messages that start in ``data``; returns how many did."""
        started = 0
        offset = 0
        size = len(data)
        while offset < size:
            if self._remaining:
                step = min(self._remaining, size - offset)
                self._remaining -= step
                offset += step
                continue
            need = 5 - len(self._header)
            self._header += data[offset:offset + need]
            offset += min(need, size - offset)
            if len(self._header) == 5:
                started += 1
                self._remaining = int.from_bytes(self._header[1:5], "big")
                self._header = b""
        self.count += started
        return started


class GrpcStatsObject:
    """The filter state Envoy's ``emit_filter_state`` sets (its text form: ``request,response`` counts)."""

    __slots__ = ("request_message_count", "response_message_count")

    def __init__(self) -> None:
        self.request_message_count = 0
        self.response_message_count = 0

    def __str__(self) -> str:
        return f"{self.request_message_count},{self.response_message_count}"


class GrpcStatsFilter(HttpFilter):
    __slots__ = ("factory", "active", "names", "requests", "responses", "state", "charged")

    def __init__(self, stream: Any, factory: Any) -> None:
        super().__init__(stream)
        self.factory = factory
        self.active = False
        self.names: tuple[str, str] | None = None
        self.requests = MessageCounter()
        self.responses = MessageCounter()
        self.state: GrpcStatsObject | None = None
        self.charged = False

    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        if not is_grpc_request(headers):
            return CONTINUE
        self.active = True
        parsed = service_and_method(headers.get(":path") or "")
        if parsed is not None:
            self.names = self.factory.stat_names(*parsed)
        if self.factory.emit_filter_state:
            self.state = GrpcStatsObject()
            info = self.stream.info
            if info.filter_state is None:
                info.filter_state = {}
            info.filter_state[FILTER_STATE_KEY] = self.state
        return CONTINUE

    def decode_data(self, data: bytes, end_stream: bool) -> int:
        if self.active and data:
            started = self.requests.feed(data)
            if started:
                self._add("request_message_count", started)
                if self.state is not None:
                    self.state.request_message_count += started
        return CONTINUE

    def encode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        if self.active and end_stream:
            self._charge(headers.get("grpc-status"))
        return CONTINUE

    def encode_data(self, data: bytes, end_stream: bool) -> int:
        if self.active and data:
            started = self.responses.feed(data)
            if started:
                self._add("response_message_count", started)
                if self.state is not None:
                    self.state.response_message_count += started
        return CONTINUE

    def encode_trailers(self, trailers: HeaderMap) -> int:
        if self.active:
            self._charge(trailers.get("grpc-status"))
        return CONTINUE

    # --- stats -------------------------------------------------------------
    def _prefix(self) -> str | None:
        return stats_prefix(self.factory.cluster_manager, self.stream.info.upstream_cluster, "grpc", self.names)

    def _add(self, suffix: str, amount: int) -> None:
        prefix = self._prefix()
        if prefix is not None:
            self.factory.store.counter(prefix + suffix).inc(amount)

    def _charge(self, status: str | None) -> None:
        if self.charged or status is None:
            return
        self.charged = True
        prefix = self._prefix()
        if prefix is not None:
            charge_status(self.factory.store, prefix, status)
