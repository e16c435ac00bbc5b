"""Per-request Python cost of the HTTP path, without sockets.

Drives full request/response exchanges through the real connection manager,
router filter and upstream pool with in-memory transports, so the number is
our code's CPU time alone (no syscalls, no other processes). Use it to iterate
on the hot path; bench/run.sh measures the real thing.

    .venv/bin/python bench/hot_path.py [--profile] [--resilience]

``--resilience`` runs bench/configs/tulle_http_resilience.yaml.tmpl instead: the same route
with fault injection, local rate limiting, retries, timeouts, circuit breakers and outlier
detection configured but never triggering (the issue's "< 10 % cost" check, without sockets).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time

from tulle.config.loader import parse_message
from tulle.server.context import DownstreamConnection, ServerState
from tulle.server.worker import Worker
from tulle.upstream.http_pool import Http1ClientConnection, pool_for

BOOTSTRAP = {
    "static_resources": {
        "listeners": [{
            "name": "http", "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
                         ".HttpConnectionManager",
                "stat_prefix": "ingress",
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": "origin"}}]}]},
                "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}],
            }}]}],
        }],
        "clusters": [{"name": "origin", "type": "STATIC", "load_assignment": {"cluster_name": "origin", "endpoints": [
            {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                "address": "127.0.0.1", "port_value": 9}}}}]}]}}],
    }
}

REQUEST = (b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:10000\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 21 Nov 2026 06:00:00 GMT\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
            b"Last-Modified: Sat, 21 Nov 2026 05:00:00 GMT\r\nConnection: keep-alive\r\n"
            b"ETag: \"abc-400\"\r\nAccept-Ranges: bytes\r\n\r\n" + b"a" * 1024)


class FakeTransport:
    def __init__(self) -> None:
        self.sent = 0

    def write(self, data: bytes) -> None:
        self.sent += 1

    def set_write_buffer_limits(self, high: int, low: int) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        raise AssertionError("the benchmark connection must stay open")


def resilience_bootstrap() -> dict:
    """The benchmark's resilience config with the origin at 127.0.0.1:9 (never connected here)."""
    import pathlib

    import yaml

    template = (pathlib.Path(__file__).parent / "configs" / "tulle_http_resilience.yaml.tmpl").read_text()
    for name, value in (("PORT", "0"), ("ADMIN_PORT", "0"), ("ORIGIN_PORT", "9")):
        template = template.replace("{{" + name + "}}", value)
    config = yaml.safe_load(template)
    del config["admin"]
    return config


async def main(requests: int, profile: bool, resilience: bool = False) -> None:
    bootstrap = resilience_bootstrap() if resilience else BOOTSTRAP
    worker = Worker(parse_message(bootstrap, type(__import__(
        "envoy.config.bootstrap.v3.bootstrap_pb2", fromlist=["Bootstrap"]).Bootstrap())), ServerState())
    worker.ctx.loop = asyncio.get_running_loop()
    factory = worker.listeners[0].factory
    cluster = worker.cluster_manager.get("origin")
    host = cluster.hosts[0]
    pool = pool_for(host, cluster, asyncio.get_running_loop())
    upstream = Http1ClientConnection(pool)
    upstream_transport = FakeTransport()
    upstream.connection_made(upstream_transport)
    pool.all.add(upstream)
    pool.idle.append(upstream)
    downstream = factory.create_protocol(DownstreamConnection(("127.0.0.1", 5555), ("127.0.0.1", 10000), "http"))
    transport = FakeTransport()
    downstream.connection_made(transport)

    def one() -> None:
        downstream.data_received(REQUEST)
        upstream.data_received(RESPONSE)

    for _ in range(2000):
        one()
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    start = time.process_time()
    for _ in range(requests):
        one()
    elapsed = time.process_time() - start
    if profiler:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    assert transport.sent >= requests and upstream_transport.sent >= requests
    print(f"{elapsed / requests * 1e6:.2f} us of Python per request ({requests} requests)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=50000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--resilience", action="store_true", help="resilience machinery configured, idle")
    args = parser.parse_args()
    import uvloop

    uvloop.run(main(args.requests, args.profile, args.resilience))
