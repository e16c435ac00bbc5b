"""Which proxies see the same outbound config: the key that lets one translation serve many.

A sidecar's outbound clusters, endpoints and routes depend on what it can see (its namespace,
the Sidecar, DestinationRules and VirtualService matches that select it by labels), its
locality (endpoint priorities) and its own workload's ports (an outbound listener never takes
a port the workload serves); not on its address or name. Proxies with equal :func:`view_key`
therefore get identical :class:`~tulle.controlplane.translate.translate.SharedJson`, which is
what lets a push translate once per view instead of once per proxy (istiod shares its
SidecarScope the same way). Labels enter the key only through the selectors the mesh actually
has, so a thousand workloads with distinct ``app`` labels and no label-selecting config share
one view.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from tulle.controlplane.model import MeshSnapshot, ProxyIdentity, WorkloadInstance
from tulle.controlplane.translate.names import labels_match
from tulle.controlplane.translate.options import TranslateOptions
from tulle.controlplane.translate.registry import MeshRegistry
from tulle.controlplane.translate.scope import ProxyScope, inbound_ports

SIDECAR = "Sidecar"
DESTINATION_RULE = "DestinationRule"
VIRTUAL_SERVICE = "VirtualService"


@dataclass(frozen=True)
class LabelSelectors:
    """Every label selector in the mesh's config that translation tests a proxy's labels against,
    and the label names locality failover copies from the proxy (``failoverPriority``)."""

    selectors: tuple[tuple[tuple[str, str], ...], ...]
    failover_labels: tuple[str, ...]

    def fingerprint(self, labels: dict[str, str]) -> tuple[Any, ...]:
        matches = tuple(labels_match(dict(selector), labels) for selector in self.selectors)
        return matches, tuple(labels.get(name) for name in self.failover_labels)


def _walk(value: Any, key: str) -> Iterator[Any]:
    """Every value stored under ``key`` at any depth of a resource spec."""
    if isinstance(value, dict):
        for name, item in value.items():
            if name == key:
                yield item
            yield from _walk(item, key)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item, key)


def label_selectors(snapshot: MeshSnapshot, options: TranslateOptions) -> LabelSelectors:
    found: set[tuple[tuple[str, str], ...]] = set()
    failover: set[str] = set()

    def add(selector: Any) -> None:
        if isinstance(selector, dict) and selector:
            found.add(tuple(sorted((str(k), str(v)) for k, v in selector.items())))

    for resource in snapshot.resources:
        spec = resource.spec
        if resource.kind == SIDECAR:
            add((spec.get("workloadSelector") or {}).get("labels"))
        elif resource.kind == DESTINATION_RULE:
            add((spec.get("workloadSelector") or {}).get("matchLabels"))
            for names in _walk(spec, "failoverPriority"):
                failover.update(_failover_label(name) for name in names or [])
        elif resource.kind == VIRTUAL_SERVICE:
            for selector in _walk(spec, "sourceLabels"):
                add(selector)
    for names in _walk(options.mesh_locality_lb_setting or {}, "failoverPriority"):
        failover.update(_failover_label(name) for name in names or [])
    return LabelSelectors(tuple(sorted(found)), tuple(sorted(failover)))


def _failover_label(entry: Any) -> str:
    return str(entry).split("=", 1)[0]  # "label=value" pins a value; the name is what varies


@lru_cache(maxsize=1024)
def shared_options(options: TranslateOptions) -> TranslateOptions:
    """The options without what only the proxy's own listeners and inbound clusters read."""
    return replace(options, workload_address=None, outbound_bind_address="", app_ports=(), upstreams=())


def view_key(
    proxy: ProxyIdentity,
    options: TranslateOptions,
    own_instances: list[WorkloadInstance],
    registry: MeshRegistry,
    selectors: LabelSelectors,
) -> tuple[Any, ...]:
    """Proxies with equal keys get identical shared (outbound) resources."""
    locality = next((instance.locality for instance in own_instances if instance.locality), "")
    workload_ports = tuple(port.workload_port for port in inbound_ports(registry, proxy.namespace, own_instances))
    return (proxy.kind, proxy.namespace, selectors.fingerprint(proxy.label_dict()), locality, workload_ports,
            shared_options(options))


def scope_for(shared_scope: ProxyScope, proxy: ProxyIdentity, options: TranslateOptions,
              own_instances: list[WorkloadInstance]) -> ProxyScope:
    """The scope of one proxy of a view, from the view's scope: same services, rules and lookups
    (their memos are shared), this proxy's identity, options and own instances."""
    return replace(shared_scope, proxy=proxy, options=options, own_instances=own_instances)
