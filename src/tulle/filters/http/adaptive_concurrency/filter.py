"""The adaptive concurrency filter (Envoy's AdaptiveConcurrencyFilter).

At the request headers the controller admits the request or the filter answers at once
with ``concurrency_limit_exceeded_status`` (503 by default) "reached concurrency limit"
(details ``reached_concurrency_limit``). An admitted request's latency, from its headers
to its complete response, is sampled when the stream ends (Envoy's encodeComplete); one
that ends otherwise (reset, client gone) only gives its slot back. Health checks are
neither limited nor sampled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tulle.filters.http.base import CONTINUE, STOP, HttpFilter

if TYPE_CHECKING:
    from tulle.filters.http.adaptive_concurrency.config import AdaptiveConcurrencyFactory
    from tulle.http.headers import HeaderMap

BLOCKED_BODY = b"reached concurrency limit"
BLOCKED_DETAILS = "reached_concurrency_limit"


class AdaptiveConcurrencyFilter(HttpFilter):
    __slots__ = ("factory", "sent_at")

    def __init__(self, stream: Any, factory: AdaptiveConcurrencyFactory) -> None:
        self.stream = stream
        self.factory = factory
        self.sent_at: float | None = None  # set when admitted: the sample is owed to the controller

    def decode_headers(self, headers: HeaderMap, end_stream: bool) -> int:
        stream = self.stream
        if stream.info.health_check:
            return CONTINUE  # health checks would bias the samples towards low latencies
        controller = self.factory.controller
        if controller.schedule is None:  # the first request: the worker's loop runs now
            controller.start(stream.connection.loop.call_later)
        if not controller.forward():
            stream.send_local_reply("", status=self.factory.limit_exceeded_status, body=BLOCKED_BODY,
                                    details=BLOCKED_DETAILS)
            return STOP
        self.sent_at = controller.clock()
        return CONTINUE

    def on_destroy(self) -> None:
        sent_at = self.sent_at
        if sent_at is None:
            return
        self.sent_at = None
        controller = self.factory.controller
        if self.stream.response_complete:
            controller.record_latency_sample(sent_at)
        else:
            controller.cancel_latency_sample()
