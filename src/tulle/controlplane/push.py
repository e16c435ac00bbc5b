"""One translation of the mesh for many proxies: what a push shares between them.

Translating every proxy from scratch costs what the mesh costs, times the proxies. Like
istiod's PushContext, :class:`MeshTranslator` keeps, for the current mesh snapshot:

* one :class:`View` per :func:`~tulle.controlplane.translate.sharing.view_key`: the outbound
  clusters, endpoints and routes, translated once and shared (as the same
  :class:`~tulle.controlplane.xds.cache.ResourceSet` objects) by every proxy with that key;
  each proxy adds only its own listeners and inbound clusters;
* a :class:`MessageMemo`: a resource's protobuf JSON -> its parsed message, wire bytes and
  version, so identical resources (the same service's cluster in ten views) are parsed,
  serialized and hashed once and held once in memory;
* an incremental endpoint path: when only endpoints changed, each view rebuilds just the
  ClusterLoadAssignments of the services whose instances changed and swaps them into its
  endpoint set; every other set, and every proxy's own part, is reused as is, so the proxies
  see an EDS-only change.

The output is exactly what :func:`~tulle.controlplane.translate.translate.translate` gives
for each proxy (tests compare them), only computed once per view.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import message

from tulle.config.loader import parse_message
from tulle.controlplane.model import MeshSnapshot, ProxyIdentity, WorkloadInstance
from tulle.controlplane.translate.endpoints import is_eds, load_assignment
from tulle.controlplane.translate.options import TranslateOptions
from tulle.controlplane.translate.plan import plan_outbound_clusters
from tulle.controlplane.translate.registry import MeshRegistry, build_registry
from tulle.controlplane.translate.scope import ProxyScope, build_scope
from tulle.controlplane.translate.sharing import LabelSelectors, label_selectors, scope_for, view_key
from tulle.controlplane.translate.translate import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    MESSAGE_CLASSES,
    ROUTE_TYPE,
    SharedJson,
    proxy_json,
    shared_json,
)
from tulle.controlplane.xds.cache import EMPTY_SET, ResourceEntry, ResourceSet

Sets = dict[str, ResourceSet]


class MessageMemo:
    """Protobuf JSON -> :class:`ResourceEntry`, over two generations: a full push starts a new
    generation and carries over what it uses again, so entries no snapshot needs any more are
    dropped without any bookkeeping of who holds what."""

    def __init__(self) -> None:
        self._current: dict[tuple[str, str], ResourceEntry] = {}
        self._previous: dict[tuple[str, str], ResourceEntry] = {}
        self.parsed = 0  # resources parsed from JSON (the rest came from the memo)

    def new_generation(self) -> None:
        self._previous, self._current = self._current, {}

    def entry(self, type_url: str, body: dict[str, Any], name: str) -> ResourceEntry:
        key = (type_url, json.dumps(body, sort_keys=True, separators=(",", ":")))
        found = self._current.get(key)
        if found is None:
            found = self._previous.get(key)
            if found is None:
                parsed: message.Message = parse_message(
                    body, MESSAGE_CLASSES[type_url], source=f"{type_url.rsplit('.', 1)[-1]} {name}")
                found = ResourceEntry(parsed)
                self.parsed += 1
            self._current[key] = found
        return found

    def resource_set(self, type_url: str, bodies: list[dict[str, Any]], key: str = "name") -> ResourceSet:
        if not bodies:
            return EMPTY_SET
        return ResourceSet({body[key]: self.entry(type_url, body, body[key]) for body in bodies})


@dataclass
class View:
    """The outbound config shared by every proxy with one view key."""

    scope: ProxyScope
    shared: SharedJson
    sets: Sets
    # EDS cluster name -> the service hostname whose instances it lists (for endpoint updates)
    eds_hosts: dict[str, str] = field(default_factory=dict)


@dataclass
class ProxyParts:
    """One proxy's own part and what it was built from (reused while those stay the same)."""

    shared: SharedJson
    own_instances: list[WorkloadInstance]
    options: TranslateOptions
    sets: Sets


class MeshTranslator:
    def __init__(self) -> None:
        self.memo = MessageMemo()
        self.mesh: MeshSnapshot | None = None
        self.registry: MeshRegistry | None = None
        self._selectors: dict[TranslateOptions, LabelSelectors] = {}
        self._views: dict[tuple[Any, ...], View] = {}
        self._parts: dict[str, ProxyParts] = {}  # by proxy id
        self.views_built = 0

    # --- the mesh -------------------------------------------------------------------------------
    def set_mesh(self, mesh: MeshSnapshot, endpoints_only: bool = False) -> None:
        """Translate for ``mesh`` from now on. ``endpoints_only``: only workload instances differ
        from the previous mesh (services and config resources are the same)."""
        registry = build_registry(mesh)
        previous, self.mesh, self.registry = self.registry, mesh, registry
        if endpoints_only and previous is not None:
            self._update_endpoints(previous, registry)
            return
        self._views.clear()
        self._selectors.clear()
        self.memo.new_generation()

    def _update_endpoints(self, previous: MeshRegistry, registry: MeshRegistry) -> None:
        changed = changed_hostnames(previous, registry)
        assert self.mesh is not None
        for key, view in list(self._views.items()):
            old_scope = view.scope
            scope = build_scope(self.mesh, old_scope.proxy, old_scope.options, registry)
            if scope.own_instances != old_scope.own_instances:
                del self._views[key]  # the representative's own workload moved: rebuild on demand
                continue
            view.scope = scope
            if not changed or not any(host in changed for host in view.eds_hosts.values()):
                continue
            entries = dict(view.sets[ENDPOINT_TYPE].entries)
            for plan in plan_outbound_clusters(scope):
                if is_eds(plan) and plan.service.hostname in changed and plan.name in view.eds_hosts:
                    entries[plan.name] = self.memo.entry(ENDPOINT_TYPE, load_assignment(scope, plan), plan.name)
            view.sets = {**view.sets, ENDPOINT_TYPE: ResourceSet(entries)}

    # --- per proxy ------------------------------------------------------------------------------
    def resource_sets(self, proxy: ProxyIdentity, options: TranslateOptions) -> Sets:
        """The proxy's resources by type, as (mostly shared) sets."""
        mesh, registry = self.mesh, self.registry
        if mesh is None or registry is None:
            raise RuntimeError("set_mesh() first")
        own = registry.instances_of_workload(proxy.namespace, proxy.workload_name, proxy.ip)
        selectors = self._selectors.get(options)
        if selectors is None:
            selectors = self._selectors[options] = label_selectors(mesh, options)
        key = view_key(proxy, options, own, registry, selectors)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = self._build_view(build_scope(mesh, proxy, options, registry))
        parts = self._parts.get(proxy.id)
        if parts is None or parts.shared is not view.shared or parts.options != options or parts.own_instances != own:
            own_json = proxy_json(scope_for(view.scope, proxy, options, own), view.shared)
            parts = self._parts[proxy.id] = ProxyParts(view.shared, own, options, {
                type_url: self.memo.resource_set(type_url, list(bodies.values()))
                for type_url, bodies in own_json.items()
            })
        sets = dict(view.sets)
        sets[CLUSTER_TYPE] = sets[CLUSTER_TYPE].merged(parts.sets[CLUSTER_TYPE])
        sets[LISTENER_TYPE] = parts.sets[LISTENER_TYPE]
        return sets

    def forget(self, proxy_id: str) -> None:
        self._parts.pop(proxy_id, None)

    def _build_view(self, scope: ProxyScope) -> View:
        self.views_built += 1
        shared = shared_json(scope)
        memo = self.memo
        sets = {
            CLUSTER_TYPE: memo.resource_set(CLUSTER_TYPE, shared.clusters),
            ENDPOINT_TYPE: memo.resource_set(ENDPOINT_TYPE, shared.assignments, "cluster_name"),
            ROUTE_TYPE: memo.resource_set(ROUTE_TYPE, shared.routes),
        }
        eds_hosts = {plan.name: plan.service.hostname for plan in plan_outbound_clusters(scope) if is_eds(plan)}
        return View(scope, shared, sets, eds_hosts)


def changed_hostnames(previous: MeshRegistry, current: MeshRegistry) -> set[str]:
    """Service hostnames whose instances differ between two registries."""
    before, after = previous.instances_by_host(), current.instances_by_host()
    return {host for host in before.keys() | after.keys() if before.get(host) != after.get(host)}


__all__ = ["MeshTranslator", "MessageMemo", "changed_hostnames"]
