"""Envoy's admin endpoints: route one request (method, path?query) to a response.

Paths match exactly (query excluded), as Envoy's do. Endpoints that change
server state answer a non-POST with 405 "Method GET not allowed, POST
required.", and an unknown path gets 404 "invalid path. " plus the help text,
both as in Envoy. Query parameters Envoy documents but Tulle does not
implement are refused with 400 naming the parameter; unknown ones are
ignored, as Envoy ignores them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from google.protobuf import symbol_database

from tulle.admin.backend import AdminBackend
from tulle.admin.clusters import (
    render_clusters_json,
    render_clusters_text,
    render_listeners_json,
    render_listeners_text,
)
from tulle.config.loader import ensure_type
from tulle.runtime import NoAdminLayer
from tulle.stats.prometheus import render_prometheus
from tulle.stats.text import STAT_TYPES, StatsQuery, render_json, render_text

log = logging.getLogger("tulle.admin")

TEXT = "text/plain; charset=UTF-8"
JSON = "application/json"
LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")


@dataclass
class AdminResponse:
    status: int
    body: str
    content_type: str = TEXT
    # called once the response has been written (e.g. /quitquitquit shuts down afterwards)
    after_send: Callable[[], Awaitable[None]] | None = None


class QueryParams:
    """``a&b=c`` query string: first value per key; keys without ``=`` have the value "".

    Percent-escapes are decoded but ``+`` stays ``+`` (Envoy does not treat it as a
    space), which matters for ``filter=`` regexes such as ``rq_\\d+``.
    """

    def __init__(self, query: str) -> None:
        self.items: list[tuple[str, str]] = []
        for part in query.split("&"):
            if part:
                key, _, value = part.partition("=")
                self.items.append((unquote(key), unquote(value)))
        self.first: dict[str, str] = {}
        for key, value in self.items:
            self.first.setdefault(key, value)

    def __contains__(self, key: str) -> bool:
        return key in self.first

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.first.get(key, default)


Handler = Callable[[QueryParams, str], Awaitable[AdminResponse]]


@dataclass
class Endpoint:
    path: str
    help: str
    handler: Handler
    mutates: bool = False
    params: list[tuple[str, str]] = field(default_factory=list)


class BadRequest(Exception):
    pass


def _not_supported(param: str, path: str) -> BadRequest:
    return BadRequest(f"unsupported by Tulle: query parameter {param!r} of {path}\n")


class AdminHandlers:
    def __init__(self, backend: AdminBackend) -> None:
        self.backend = backend
        fmt_text_json = ("format", "File format to use; One of (text, json)")
        self.endpoints: dict[str, Endpoint] = {
            endpoint.path: endpoint
            for endpoint in (
                Endpoint("/", "Admin home page", self._help),
                Endpoint("/help", "print out list of admin commands", self._help),
                Endpoint("/clusters", "upstream cluster status", self._clusters, params=[fmt_text_json]),
                Endpoint(
                    "/config_dump", "dump current Envoy configs (experimental)", self._config_dump,
                    params=[("resource", "The resource to dump"), ("mask", "The mask to apply")],
                ),
                Endpoint("/healthcheck/fail", "cause the server to fail health checks", self._hc_fail, True),
                Endpoint("/healthcheck/ok", "cause the server to pass health checks", self._hc_ok, True),
                Endpoint(
                    "/logging", "query/change logging levels", self._logging, True,
                    params=[
                        ("paths", "Change multiple logging levels by setting to "
                                  "<logger_name1>:<desired_level1>,<logger_name2>:<desired_level2>."),
                        ("level", "desired logging level, this will change all loggers's level; "
                                  "One of (, " + ", ".join(LOG_LEVELS) + ")"),
                    ],
                ),
                Endpoint("/memory", "print current allocation/heap usage", self._memory),
                Endpoint("/quitquitquit", "exit the server", self._quit, True),
                Endpoint(
                    "/drain_listeners", "drain listeners", self._drain, True,
                    params=[
                        ("graceful", "When draining listeners, enter a graceful drain period prior to "
                                     "closing listeners."),
                        ("inboundonly", "Drains all inbound listeners."),
                    ],
                ),
                Endpoint("/server_info", "print server version/status information", self._server_info),
                Endpoint("/ready", "print server state, return 200 if LIVE, otherwise return 503", self._ready),
                Endpoint("/runtime", "print runtime values", self._runtime),
                Endpoint(
                    "/runtime_modify",
                    "Adds or modifies runtime values as passed in query parameters. To delete a previously "
                    "added key, use an empty string as the value. Note that deletion only applies to overrides "
                    "added via this endpoint; values loaded from disk can be modified via override but not "
                    "deleted. E.g. ?key1=value1&key2=value2...",
                    self._runtime_modify, True,
                ),
                Endpoint(
                    "/stats", "print server stats", self._stats,
                    params=[
                        ("usedonly", "Only include stats that have been written by system since restart"),
                        ("filter", "Regular expression (Google re2) for filtering stats"),
                        ("format", "Format to use; One of (text, json, prometheus)"),
                        ("type", "Stat types to include.; One of (" + ", ".join(STAT_TYPES) + ")"),
                    ],
                ),
                Endpoint(
                    "/stats/prometheus", "print server stats in prometheus format", self._prometheus,
                    params=[
                        ("usedonly", "Only include stats that have been written by system since restart"),
                        ("text_readouts", "Render text_readouts as new gaugues with value 0 (increases Prometheus "
                                          "data size)"),
                        ("filter", "Regular expression (Google re2) for filtering stats"),
                    ],
                ),
                Endpoint("/listeners", "print listener info", self._listeners, params=[fmt_text_json]),
            )
        }

    # --- dispatch ------------------------------------------------------
    async def handle(self, method: str, target: str) -> AdminResponse:
        path, _, query = target.partition("?")
        endpoint = self.endpoints.get(path)
        if endpoint is None:
            return AdminResponse(404, "invalid path. " + self.help_text())
        # A GET /logging only lists, so it stays open to GET (changing a level needs POST).
        needs_post = endpoint.mutates and not (endpoint.path == "/logging" and not query)
        if needs_post and method != "POST":
            return AdminResponse(405, f"Method {method} not allowed, POST required.")
        try:
            return await endpoint.handler(QueryParams(query), method)
        except BadRequest as exc:
            return AdminResponse(400, str(exc))

    def help_text(self) -> str:
        lines = ["admin commands are:\n"]
        for path in sorted(self.endpoints):
            endpoint = self.endpoints[path]
            post = " (POST)" if endpoint.mutates else ""
            lines.append(f"  {path}{post}: {endpoint.help}\n")
            for name, text in endpoint.params:
                lines.append(f"      {name}: {text}\n")
        return "".join(lines)

    # --- endpoints -----------------------------------------------------
    async def _help(self, params: QueryParams, method: str) -> AdminResponse:
        return AdminResponse(200, self.help_text())

    async def _ready(self, params: QueryParams, method: str) -> AdminResponse:
        state = self.server_state()
        return AdminResponse(200 if state == "LIVE" else 503, state + "\n")

    def server_state(self) -> str:
        """Envoy's Utility::serverState: init state first, then the health-check switch."""
        if not self.backend.ready():
            return "INITIALIZING"
        return "DRAINING" if self.backend.healthcheck_failed() else "LIVE"

    async def _server_info(self, params: QueryParams, method: str) -> AdminResponse:
        return AdminResponse(200, _pretty_json(await self.backend.server_info()), JSON)

    async def _stats(self, params: QueryParams, method: str) -> AdminResponse:
        fmt = params.get("format", "text")
        if fmt == "prometheus":
            return await self._prometheus(params, method)
        if fmt not in ("text", "json"):
            raise BadRequest(f"invalid format {fmt!r}; one of (text, json, prometheus)\n")
        stat_type = params.get("type", "All") or "All"
        if stat_type not in STAT_TYPES:
            raise BadRequest(f"invalid &type= param {stat_type!r}; one of ({', '.join(STAT_TYPES)})\n")
        if params.get("histogram_buckets", "none") not in ("none", ""):
            raise _not_supported("histogram_buckets", "/stats")
        query = StatsQuery(_compile_filter(params), "usedonly" in params, stat_type)
        snapshot = await self.backend.stats_snapshot()
        if fmt == "json":
            return AdminResponse(200, render_json(snapshot, query), JSON)
        return AdminResponse(200, render_text(snapshot, query))

    async def _prometheus(self, params: QueryParams, method: str) -> AdminResponse:
        if params.get("histogram_buckets", "cumulative") not in ("cumulative", ""):
            raise _not_supported("histogram_buckets", "/stats/prometheus")
        query = StatsQuery(_compile_filter(params), "usedonly" in params)
        snapshot = await self.backend.stats_snapshot()
        return AdminResponse(200, render_prometheus(snapshot, query, text_readouts="text_readouts" in params))

    async def _clusters(self, params: QueryParams, method: str) -> AdminResponse:
        clusters = await self.backend.clusters()
        if params.get("format") == "json":
            return AdminResponse(200, render_clusters_json(clusters), JSON)
        return AdminResponse(200, render_clusters_text(clusters))

    async def _listeners(self, params: QueryParams, method: str) -> AdminResponse:
        listeners = self.backend.listeners()
        if params.get("format") == "json":
            return AdminResponse(200, render_listeners_json(listeners), JSON)
        return AdminResponse(200, render_listeners_text(listeners))

    async def _config_dump(self, params: QueryParams, method: str) -> AdminResponse:
        for unsupported in ("name_regex", "include_eds"):
            if unsupported in params:
                raise _not_supported(unsupported, "/config_dump")
        dump = self.backend.config_dump()
        resource = params.get("resource") or ""
        mask = [path for path in (params.get("mask") or "").split(",") if path]
        if resource:
            configs = _select_resource(dump.get("configs", []), resource)
            if configs is None:
                return AdminResponse(404, f"no resource with name {resource!r}\n")
            dump = {"configs": configs}
        if mask:
            dump = {"configs": [_apply_mask(config, mask) for config in dump.get("configs", [])]}
        return AdminResponse(200, _pretty_json(dump), JSON)

    async def _hc_fail(self, params: QueryParams, method: str) -> AdminResponse:
        self.backend.set_healthcheck_failed(True)
        return AdminResponse(200, "OK\n")

    async def _hc_ok(self, params: QueryParams, method: str) -> AdminResponse:
        self.backend.set_healthcheck_failed(False)
        return AdminResponse(200, "OK\n")

    async def _drain(self, params: QueryParams, method: str) -> AdminResponse:
        if "skip_exit" in params:
            raise _not_supported("skip_exit", "/drain_listeners")
        await self.backend.drain_listeners("inboundonly" in params, "graceful" in params)
        return AdminResponse(200, "OK\n")

    async def _quit(self, params: QueryParams, method: str) -> AdminResponse:
        return AdminResponse(200, "OK\n", after_send=self.backend.quit)

    async def _logging(self, params: QueryParams, method: str) -> AdminResponse:
        status = 200
        body = ""
        if params.items:
            error = self._change_log_levels(params)
            if error:
                status = 400
                body = (
                    f"error: {error}\n\n"
                    "usage: /logging?<name>=<level> (change single level)\n"
                    "usage: /logging?paths=name1:level1,name2:level2,... (change multiple levels)\n"
                    "usage: /logging?level=<level> (change all levels)\n"
                    "levels: " + "".join(f"{level} " for level in LOG_LEVELS) + "\n"
                )
        body += "active loggers:\n"
        for name, level in sorted(self.backend.log_levels().items()):
            body += f"  {name}: {level}\n"
        return AdminResponse(status, body + "\n")

    def _change_log_levels(self, params: QueryParams) -> str:
        """Apply the change; return an error message (Envoy's wording) or ""."""
        if len(params.items) != 1:
            return "invalid number of parameters"
        key, value = params.items[0]
        if key == "level":
            changes: list[tuple[str | None, str]] = [(None, value)]
        elif key == "paths":
            changes = []
            for pair in filter(None, (part.strip() for part in value.split(","))):
                name, _, level = pair.partition(":")
                if not name.strip() or not level.strip():
                    return "empty logger name or empty logger level"
                changes.append((name.strip(), level.strip()))
        else:
            changes = [(key, value)]
        for _, level in changes:
            if level not in LOG_LEVELS:
                return f"unknown logger level {level!r}"
        known = self.backend.log_levels()
        for name, _ in changes:
            if name is not None and name not in known:
                return "unknown logger name"
        try:
            for name, level in changes:
                self.backend.set_log_level(name, level)
        except ValueError as exc:
            return str(exc)
        return ""

    async def _runtime(self, params: QueryParams, method: str) -> AdminResponse:
        return AdminResponse(200, _pretty_json(self.backend.runtime()), JSON)

    async def _runtime_modify(self, params: QueryParams, method: str) -> AdminResponse:
        # Envoy also takes the pairs from a form-encoded body; Tulle's admin reads the query only.
        if not params.items:
            return AdminResponse(400, "usage: /runtime_modify?key1=value1&key2=value2&keyN=valueN\n"
                                      "use an empty value to remove a previously added override")
        try:
            await self.backend.runtime_modify(dict(params.first))
        except NoAdminLayer as exc:
            return AdminResponse(503, str(exc))
        return AdminResponse(200, "OK\n")

    async def _memory(self, params: QueryParams, method: str) -> AdminResponse:
        # No tcmalloc here: report the resident set size as both allocated and heap size.
        resident = _resident_bytes()
        memory = {
            "allocated": str(resident), "heap_size": str(resident), "pageheap_unmapped": "0",
            "pageheap_free": "0", "total_thread_cache": "0", "total_physical_bytes": str(resident),
        }
        return AdminResponse(200, _pretty_json(memory), JSON)


def _pretty_json(data: Any) -> str:
    return json.dumps(data, indent=1) + "\n"


def _compile_filter(params: QueryParams) -> Any:
    pattern = params.get("filter")
    if not pattern:
        return None
    import re2  # only when a filter is asked for

    try:
        return re2.compile(pattern)
    except re2.error:
        raise BadRequest(f"Invalid re2 regex {pattern!r}\n") from None


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _select_resource(configs: list[dict[str, Any]], resource: str) -> list[dict[str, Any]] | None:
    """Envoy's ?resource=: every element of the repeated field ``resource``, each tagged with its
    own ``@type``; None when no config has such a field."""
    selected: list[dict[str, Any]] = []
    found = False
    for config in configs:
        element_type = _repeated_field_type(config.get("@type", ""), resource)
        if element_type is None:
            continue
        found = True
        for element in config.get(resource, []):
            selected.append({"@type": f"type.googleapis.com/{element_type}", **element})
    return selected if found else None


def _repeated_field_type(type_url: str, field_name: str) -> str | None:
    if not type_url or not ensure_type(type_url):
        return None
    descriptor = symbol_database.Default().pool.FindMessageTypeByName(type_url.rsplit("/", 1)[-1])
    fd = descriptor.fields_by_name.get(field_name)
    if fd is None or fd.message_type is None or not _is_repeated(fd):
        return None
    return fd.message_type.full_name


def _is_repeated(fd: Any) -> bool:
    repeated = getattr(fd, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return fd.label == fd.LABEL_REPEATED  # older protobuf runtimes


def _apply_mask(config: dict[str, Any], paths: list[str]) -> dict[str, Any]:
    """A FieldMask over JSON: keep only the listed (dotted) paths, plus ``@type``."""
    masked: dict[str, Any] = {"@type": config["@type"]} if "@type" in config else {}
    for path in paths:
        _copy_path(config, masked, path.split("."))
    return masked


def _copy_path(source: Any, target: dict[str, Any], parts: list[str]) -> None:
    if not isinstance(source, dict) or parts[0] not in source:
        return
    head, rest = parts[0], parts[1:]
    if not rest:
        target[head] = source[head]
        return
    child = target.setdefault(head, {})
    if isinstance(child, dict):
        _copy_path(source[head], child, rest)
