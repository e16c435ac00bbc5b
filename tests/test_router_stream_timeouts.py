"""A route's idle_timeout and max_stream_duration: parsing, the grpc-timeout header, and the
connection manager enforcing them against real backends."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from envoy.config.route.v3 import route_components_pb2

from backends import (
    Client,
    RawBackend,
    file_access_log,
    get,
    http_proxy,
    never_answer,
    read_lines,
    wait_until,
)
from proxy_harness import static_cluster
from tulle.config.loader import parse_message
from tulle.http.headers import HeaderMap
from tulle.router.stream_timeouts import StreamTimeouts, grpc_timeout


def timeouts(**action: Any) -> StreamTimeouts | None:
    return StreamTimeouts.of(parse_message({"cluster": "c", **action}, route_components_pb2.RouteAction), "route")


def grpc(value: str | None) -> HeaderMap:
    items = [(":method", "POST"), (":path", "/svc/M")]
    return HeaderMap(items + ([("grpc-timeout", value)] if value is not None else []))


def test_nothing_set_means_no_object() -> None:
    assert timeouts() is None
    assert timeouts(timeout="2s") is None


def test_idle_timeout() -> None:
    parsed = timeouts(idle_timeout="2.5s")
    assert parsed is not None and parsed.idle_timeout == 2.5
    disabled = timeouts(idle_timeout="0s")
    assert disabled is not None and disabled.idle_timeout == 0.0


@pytest.mark.parametrize(("value", "seconds"), [
    ("1S", 1.0), ("250m", 0.25), ("2M", 120.0), ("1H", 3600.0), ("1500u", 0.002), ("1n", 0.001),
    (None, None), ("", None), ("5", None), ("5x", None), ("123456789S", None), ("-1S", None),
])
def test_grpc_timeout_header(value: str | None, seconds: float | None) -> None:
    assert grpc_timeout(grpc(value)) == seconds


def test_duration_without_grpc_settings() -> None:
    own = timeouts(max_stream_duration={"max_stream_duration": "3s"})
    assert own is not None
    assert own.duration(grpc("1S"), hcm_default=10.0) == 3.0  # grpc-timeout counts only with a header max
    unlimited = timeouts(max_stream_duration={"max_stream_duration": "0s"})
    assert unlimited is not None and unlimited.duration(grpc(None), hcm_default=10.0) is None
    inherit = timeouts(idle_timeout="1s")
    assert inherit is not None
    assert inherit.duration(grpc(None), hcm_default=10.0) == 10.0
    assert inherit.duration(grpc(None), hcm_default=0.0) is None


def test_duration_from_the_grpc_timeout_header() -> None:
    capped = timeouts(max_stream_duration={"max_stream_duration": "30s", "grpc_timeout_header_max": "5s",
                                           "grpc_timeout_header_offset": "0.1s"})
    assert capped is not None
    assert capped.duration(grpc("2S"), 0.0) == pytest.approx(1.9)  # the header minus the offset
    assert capped.duration(grpc("60S"), 0.0) == pytest.approx(4.9)  # capped, then the offset
    assert capped.duration(grpc(None), 0.0) == 30.0  # no header: max_stream_duration
    assert capped.duration(grpc("50m"), 0.0) == 0.0  # the offset eats it all: expires at once
    uncapped = timeouts(max_stream_duration={"grpc_timeout_header_max": "0s"})
    assert uncapped is not None and uncapped.duration(grpc("90S"), 0.0) == 90.0


# --- enforced by the connection manager -----------------------------------------------------------

LOG = "%REQ(X-CASE)% %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS%\n"


def route(prefix: str, **action: Any) -> dict[str, Any]:
    return {"match": {"prefix": prefix}, "route": {"cluster": "silent", **action}}


def test_route_timeouts_override_the_connection_manager(tmp_path: Path) -> None:
    log_path = tmp_path / "access.log"
    routes = {"name": "local", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
        route("/idle", idle_timeout="0.3s"),
        route("/duration", max_stream_duration={"max_stream_duration": "0.3s"}),
        route("/grpc", max_stream_duration={"grpc_timeout_header_max": "10s"}),
        route("/default"),
    ]}]}
    with RawBackend(never_answer) as silent, \
            http_proxy(tmp_path, routes, [static_cluster("silent", [silent.port])], stream_idle_timeout="30s",
                       common_http_protocol_options={"max_stream_duration": "1.2s"},
                       access_log=file_access_log(log_path, LOG)) as (proxy, port):
        started = time.monotonic()
        idle = get(port, "/idle", [("x-case", "idle")])
        duration = get(port, "/duration", [("x-case", "duration")])
        from_grpc = get(port, "/grpc", [("x-case", "grpc"), ("grpc-timeout", "200m")])
        hcm_default = get(port, "/default", [("x-case", "default")])
        elapsed = time.monotonic() - started
        with Client(port) as client:  # a request still arriving when its duration runs out: 408
            client.send(b"POST /duration HTTP/1.1\r\nhost: x\r\nx-case: upload\r\ncontent-length: 10\r\n\r\nabc")
            upload = client.response()
        lines = {line.split(" ")[0]: line.split(" ")[1:] for line in read_lines(log_path, 5)}
        stats = wait_until(lambda: (s := proxy.stats())["http.ingress.downstream_rq_max_duration_reached"] >= 4 and s)
    # the route's idle timeout (not the HCM's 30 s): SI, 504 once the request is complete
    assert (idle.status, idle.body) == (504, b"stream timeout")
    assert lines["idle"] == ["504", "SI", "stream_idle_timeout"]
    # max_stream_duration: Envoy's 504 "downstream duration timeout", no response flag
    for response in (duration, from_grpc, hcm_default):
        assert (response.status, response.body) == (504, b"downstream duration timeout")
    assert lines["duration"] == ["504", "-", "max_duration_timeout"]
    assert lines["default"] == ["504", "-", "max_duration_timeout"]
    assert (upload.status, upload.body) == (408, b"downstream duration timeout")
    assert stats["http.ingress.downstream_rq_max_duration_reached"] == 4
    assert stats["http.ingress.downstream_rq_idle_timeout"] == 1
    # 0.3 + 0.3 + 0.2 + 1.2 s of timeouts, far below the 30 s stream idle timeout or 15 s route timeout
    assert elapsed < 10
