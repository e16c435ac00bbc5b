"""What the admin interface needs from the running server (implemented by the server layer).

The admin renders; the backend only hands over data in plain dicts and flips
switches. Keeping the boundary this narrow lets the admin be tested against a
fake and lets the server gather data from forked workers however it likes.
"""

from __future__ import annotations

from typing import Any, Protocol


class AdminBackend(Protocol):
    async def stats_snapshot(self) -> dict[str, Any]:
        """``tulle.stats.store.Store.snapshot()`` shape, merged over all workers."""

    async def clusters(self) -> list[dict[str, Any]]:
        """One dict per cluster::

            {"name": str, "type": str, "lb_policy": str,
             "hosts": [{"address": "ip:port", "hostname": str, "weight": int, "priority": int,
                        "region": str, "zone": str, "sub_zone": str,
                        "health_flags": "healthy" | "/failed_active_hc/..." (Envoy's string),
                        "stats": {"cx_total": int, "cx_active": int, "cx_connect_fail": int,
                                  "rq_total": int, "rq_success": int, "rq_error": int,
                                  "rq_active": int, "rq_timeout": int}}]}

        Optional keys, Envoy's defaults when absent: cluster ``added_via_api`` (False),
        ``observability_name`` (the name), ``circuit_breakers`` ({"default"|"high":
        {"max_connections", "max_pending_requests", "max_requests", "max_retries"}},
        1024/1024/1024/3 per priority); host ``canary`` (False), ``success_rate`` (-1:
        no outlier detection).
        """

    def config_dump(self) -> dict[str, Any]:
        """Envoy's ``envoy.admin.v3.ConfigDump`` as JSON (``{"configs": [{"@type": ...}, ...]}``)."""

    def listeners(self) -> list[dict[str, Any]]:
        """``[{"name": str, "address": "ip:port"}]`` with the bound (not configured) port."""

    async def server_info(self) -> dict[str, Any]:
        """Envoy's ``envoy.admin.v3.ServerInfo`` as JSON, plus Tulle's ``compiled_hot_path``: whether
        each worker runs the compiled modules (``{"pure_python": bool, "workers": [{"worker": int,
        "pid": int, "modules": {name: "compiled" | "pure"}}]}``, see ``tulle.compiled``)."""

    def ready(self) -> bool:
        """True once every listener and cluster is initialized."""

    def healthcheck_failed(self) -> bool: ...

    def set_healthcheck_failed(self, failed: bool) -> None: ...

    async def drain_listeners(self, inbound_only: bool, graceful: bool) -> None:
        """Start the drain and return (the admin answers "OK" right after)."""

    async def quit(self) -> None:
        """Shut the server down; called after the /quitquitquit response is sent."""

    def log_levels(self) -> dict[str, str]:
        """Logger name -> level name (trace, debug, info, warning, error, critical, off)."""

    def set_log_level(self, name: str | None, level: str) -> None:
        """Set one logger (or all when ``name`` is None); ValueError for an unknown logger/level."""

    def runtime(self) -> dict[str, Any]:
        """Envoy's /runtime: ``{"layers": [name, ...], "entries": {key: {"layer_values": [raw or "" per
        layer], "final_value": raw}}}`` (see tulle.runtime.Runtime.admin_view)."""

    async def runtime_modify(self, changes: dict[str, str]) -> None:
        """Merge into the admin layer (an empty value removes a key); returns once every worker has
        the new values. Raises tulle.runtime.NoAdminLayer when there is no admin layer."""
