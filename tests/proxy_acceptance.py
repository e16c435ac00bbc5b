"""Does a Tulle proxy accept a translation? Feed it through the proxy's own xDS factories.

The same calls the proxy's xDS applier (``tulle.xds_client.apply.XdsApplier``) makes before it
installs anything: ``ClusterManager.build`` per Cluster, ``parse_assignment`` per
ClusterLoadAssignment, ``Listener(...)`` per Listener and the HTTP connection manager's
``build_route_table`` per RouteConfiguration it names. A refused field is stripped from its
resource and the resource built again, so one run lists every field the proxy refuses.
``apply_all`` then runs the applier itself (sockets are not bound) on what is left.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import json_format, message

from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.controlplane.translate.translate import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    MESSAGE_CLASSES,
    ROUTE_TYPE,
    Resources,
)
from tulle.server.context import ServerState
from tulle.server.worker import Worker
from tulle.upstream.cluster import parse_assignment
from tulle.xds_client.apply import SUBSCRIPTION_ORDER, XdsApplier

KIND = {CLUSTER_TYPE: "Cluster", ENDPOINT_TYPE: "ClusterLoadAssignment", LISTENER_TYPE: "Listener",
        ROUTE_TYPE: "RouteConfiguration"}


def empty_worker() -> Worker:
    bootstrap = bootstrap_pb2.Bootstrap()
    bootstrap.node.id = "acceptance"
    return Worker(bootstrap, ServerState())


def _parts(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for piece in re.split(r"\.(?![^\[]*\])", path):
        name, _, rest = piece.partition("[")
        if name:
            parts.append(name)
        for index, key in re.findall(r"\[(\d+)\]|\['([^']*)'\]", "[" + rest if rest else ""):
            parts.append(int(index) if index else key)
    return parts


def _delete(tree: dict[str, Any], path: str) -> None:
    """Remove what a ConfigError field path names from a resource's JSON; a path inside a typed
    config (``typed_config.x``) is followed into the Any's JSON (``@type`` plus fields)."""
    parts = _parts(path)
    node: Any = tree
    for part in parts[:-1]:
        node = node[part]
    del node[parts[-1]]


def _build(worker: Worker, type_url: str, body: message.Message, routes: Resources) -> None:
    from tulle.listener.listener import Listener

    if type_url == CLUSTER_TYPE:
        # installed as the applier does: a tcp_proxy checks that its clusters exist
        worker.cluster_manager.install(worker.cluster_manager.build(body, ""))
    elif type_url == ENDPOINT_TYPE:
        parse_assignment(body, "")
    elif type_url == LISTENER_TYPE:
        Listener(body, "", worker.ctx)
    elif type_url == ROUTE_TYPE:
        # A RouteConfiguration is built by the connection manager that names it: any one will do.
        for listener in routes.get(LISTENER_TYPE, {}).values():
            built = Listener(listener, "", worker.ctx)
            config = getattr(built.factory, "config", None)
            if getattr(config, "route_config_name", "") == body.name:  # type: ignore[attr-defined]
                config.build_route_table(body, "")
                return
        raise AssertionError(f"no listener names route {body.name!r}")  # type: ignore[attr-defined]


def refusals(resources: Resources) -> tuple[dict[str, list[str]], Resources]:
    """Every ``"<Kind> '<name>'" -> [field path, ...]`` the proxy refuses, and the resources with
    those fields stripped (which the proxy accepts). Anything other than an unsupported field
    (a ConfigError proper) is a translation bug and raises."""
    return asyncio.run(_refusals(resources))


async def _refusals(resources: Resources) -> tuple[dict[str, list[str]], Resources]:
    worker = empty_worker()  # in a running loop, as the proxy's is (clusters may start timers)
    refused: dict[str, list[str]] = {}
    accepted: Resources = {type_url: {} for type_url in resources}
    for type_url in SUBSCRIPTION_ORDER:
        for name, body in resources.get(type_url, {}).items():
            tree = json_format.MessageToDict(body, preserving_proto_field_name=True)
            for _ in range(100):
                current = parse_message(tree, MESSAGE_CLASSES[type_url])
                try:
                    _build(worker, type_url, current, {**resources, LISTENER_TYPE: accepted[LISTENER_TYPE]})
                except UnsupportedFeature as error:
                    refused.setdefault(f"{KIND[type_url]} '{name}'", []).append(error.field)
                    _delete(tree, error.field)
                    continue
                except ConfigError as error:
                    raise AssertionError(f"{KIND[type_url]} '{name}': {error.field}: {error.reason}") from None
                accepted[type_url][name] = current
                break
            else:
                raise AssertionError(f"{KIND[type_url]} '{name}': too many refusals")
    return refused, accepted


def apply_all(resources: Resources) -> XdsApplier:
    """The proxy's xDS applier takes every resource type in ADS order (listeners are not bound)."""
    applier = XdsApplier(empty_worker())

    async def no_sockets(dynamic: Any) -> None:
        return None

    applier._maybe_start = no_sockets  # type: ignore[method-assign]
    applier._check_address_free = lambda name, listener: None  # type: ignore[method-assign]

    async def run() -> None:
        for type_url in SUBSCRIPTION_ORDER:
            await applier.apply(type_url, resources.get(type_url, {}), set(), True)

    asyncio.run(run())
    return applier


def refused_field_names(refused: dict[str, list[str]]) -> set[str]:
    """The last element of each refused path ("...route.retry_policy" -> "retry_policy")."""
    return {_parts(path)[-1] if isinstance(_parts(path)[-1], str) else path
            for paths in refused.values() for path in paths}
