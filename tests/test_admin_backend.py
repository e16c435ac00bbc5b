"""A fake AdminBackend shared by the admin tests, checked against the Protocol."""

from __future__ import annotations

import inspect
from typing import Any

from envoy.config.bootstrap.v3.bootstrap_pb2 import LayeredRuntime

from tulle.admin.backend import AdminBackend
from tulle.config.loader import parse_message
from tulle.runtime import Runtime
from tulle.stats.store import Store

LOGGERS = ("admin", "config", "http", "upstream")


class FakeBackend:
    def __init__(self) -> None:
        store = Store()
        store.counter("cluster.foo.upstream_rq_total").inc(4)
        store.counter("cluster.foo.upstream_rq_200").inc(3)
        store.counter("cluster.foo.upstream_rq_503").inc(1)
        store.counter("http.ingress_http.downstream_rq_total").inc(4)
        store.counter("http.ingress_http.downstream_rq_4xx")
        store.gauge("server.live").set(1)
        store.histogram("cluster.foo.upstream_rq_time").record(12)
        self.snapshot = store.snapshot()
        self.is_ready = True
        self.hc_failed = False
        self.drains: list[tuple[bool, bool]] = []
        self.quits = 0
        self.levels = {name: "info" for name in LOGGERS}
        # a real runtime: a static layer and an admin layer /runtime_modify writes to
        self.layered_runtime = Runtime.from_proto(parse_message({"layers": [
            {"name": "base", "static_layer": {"fault": {"http": {"abort": {"abort_percent": 10}}}}},
            {"name": "admin", "admin_layer": {}},
        ]}, LayeredRuntime), "layered_runtime")
        self.cluster_list: list[dict[str, Any]] = [
            {
                "name": "foo", "type": "STATIC", "lb_policy": "ROUND_ROBIN",
                "hosts": [
                    {
                        "address": "127.0.0.1:8080", "hostname": "backend", "weight": 3, "priority": 0,
                        "region": "eu", "zone": "eu-1", "sub_zone": "", "health_flags": "healthy",
                        "stats": {"cx_total": 2, "cx_active": 1, "cx_connect_fail": 0, "rq_total": 4,
                                  "rq_success": 3, "rq_error": 1, "rq_active": 0, "rq_timeout": 0},
                    }
                ],
            }
        ]
        self.dump: dict[str, Any] = {
            "configs": [
                {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": {"node": {"id": "n"}}},
                {
                    "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
                    "static_clusters": [{"cluster": {"name": "foo"}}, {"cluster": {"name": "bar"}}],
                },
            ]
        }

    async def stats_snapshot(self) -> dict[str, Any]:
        return self.snapshot

    async def clusters(self) -> list[dict[str, Any]]:
        return self.cluster_list

    def config_dump(self) -> dict[str, Any]:
        return self.dump

    def listeners(self) -> list[dict[str, Any]]:
        return [{"name": "ingress", "address": "0.0.0.0:10000"}]

    async def server_info(self) -> dict[str, Any]:
        return {"version": "tulle/0.1.0", "state": "LIVE", "node": {"id": "n"}}

    def ready(self) -> bool:
        return self.is_ready

    def healthcheck_failed(self) -> bool:
        return self.hc_failed

    def set_healthcheck_failed(self, failed: bool) -> None:
        self.hc_failed = failed

    async def drain_listeners(self, inbound_only: bool, graceful: bool) -> None:
        self.drains.append((inbound_only, graceful))

    async def quit(self) -> None:
        self.quits += 1

    def log_levels(self) -> dict[str, str]:
        return dict(self.levels)

    def set_log_level(self, name: str | None, level: str) -> None:
        if name is None:
            self.levels = {logger: level for logger in self.levels}
        elif name in self.levels:
            self.levels[name] = level
        else:
            raise ValueError(f"unknown logger {name}")

    def runtime(self) -> dict[str, Any]:
        return self.layered_runtime.admin_view()

    async def runtime_modify(self, changes: dict[str, str]) -> None:
        self.layered_runtime.merge_admin(changes)


def _protocol_methods() -> dict[str, Any]:
    return {
        name: member for name, member in vars(AdminBackend).items()
        if not name.startswith("_") and callable(member)
    }


def test_fake_backend_implements_every_protocol_method() -> None:
    methods = _protocol_methods()
    assert {"stats_snapshot", "clusters", "config_dump", "ready", "quit", "set_log_level"} <= set(methods)
    for name, member in methods.items():
        fake = getattr(FakeBackend, name)
        assert inspect.iscoroutinefunction(fake) == inspect.iscoroutinefunction(member), name
        assert list(inspect.signature(fake).parameters) == list(inspect.signature(member).parameters), name


def test_fake_backend_is_accepted_where_the_protocol_is_expected() -> None:
    backend: AdminBackend = FakeBackend()
    assert backend.ready() is True
