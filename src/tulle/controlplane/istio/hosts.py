"""Istio's host rules: short-name resolution, wildcard matching and exportTo visibility.

Semantics follow istio/istio ``pkg/config/host`` and ``pkg/config/visibility``:

* A wildcard host starts with ``*`` and matches by plain suffix of what follows the ``*``
  (``*.example.com`` covers ``a.example.com`` and ``a.b.example.com`` but not
  ``example.com``; a lone ``*`` covers everything).
* A short name (no dot) is interpreted in the namespace of the resource that wrote it:
  ``reviews`` in ``default`` is ``reviews.default.svc.cluster.local``.
* ``exportTo`` holds ``*`` (everyone, the default), ``.`` (the resource's own namespace),
  ``~`` (no one) or namespace names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Iterable

from tulle.controlplane.model import Resource

WILDCARD = "*"
EXPORT_PUBLIC = "*"
EXPORT_PRIVATE = "."
EXPORT_NONE = "~"
# Kinds whose visibility is controlled by spec.exportTo.
EXPORTABLE_KINDS = frozenset({"VirtualService", "DestinationRule", "ServiceEntry"})


def is_wildcard(host: str) -> bool:
    return host.startswith(WILDCARD)


def is_ip_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def resolve_host(
    host: str,
    namespace: str,
    domain_suffix: str = "cluster.local",
    known_namespaces: Collection[str] | None = None,
) -> str:
    """The FQDN a host written in a resource of ``namespace`` refers to.

    ``reviews`` -> ``reviews.<namespace>.svc.<domain_suffix>``. ``reviews.prod`` ->
    ``reviews.prod.svc.<domain_suffix>`` when ``prod`` is one of ``known_namespaces`` (the
    namespaces of the mesh); Istio itself treats any dotted name as already qualified, and
    without the list of namespaces ``reviews.prod`` cannot be told apart from
    ``example.com``, so with ``known_namespaces=None`` dotted names are left alone.
    ``name.namespace.svc`` gains the domain suffix. FQDNs, IPs and wildcards are returned
    unchanged.
    """
    if not host or is_wildcard(host) or is_ip_address(host):
        return host
    labels = host.split(".")
    if len(labels) == 1:
        return f"{host}.{namespace}.svc.{domain_suffix}" if namespace else host
    if len(labels) == 3 and labels[2] == "svc":
        return f"{host}.{domain_suffix}"
    if len(labels) == 2 and known_namespaces is not None and labels[1] in known_namespaces:
        return f"{host}.svc.{domain_suffix}"
    return host


def host_matches(pattern: str, host: str) -> bool:
    """Whether ``host`` is covered by ``pattern`` (Istio's ``Name.SubsetOf``).

    Both may be wildcards: ``*.a.example.com`` is covered by ``*.example.com`` but not the
    other way round. Comparison ignores case, as DNS does.
    """
    pattern, host = pattern.lower(), host.lower()
    if is_wildcard(host):
        if not is_wildcard(pattern) or len(host) < len(pattern):
            return False
        return host[1:].endswith(pattern[1:])
    if is_wildcard(pattern):
        return host.endswith(pattern[1:])
    return host == pattern


def hosts_overlap(first: str, second: str) -> bool:
    """Whether two (possibly wildcard) hosts can name the same destination (``Name.Matches``)."""
    return host_matches(first, second) or host_matches(second, first)


def export_to(resource: Resource) -> list[str]:
    """The resource's exportTo entries as written; ``["*"]`` when unset."""
    entries = resource.spec.get("exportTo") if isinstance(resource.spec, dict) else None
    if not isinstance(entries, list) or not entries:
        return [EXPORT_PUBLIC]
    return [entry for entry in entries if isinstance(entry, str)]


def visible(resource: Resource, from_namespace: str, root_namespace: str = "istio-system") -> bool:
    """Whether ``resource`` applies to proxies and config in ``from_namespace``.

    VirtualService, DestinationRule and ServiceEntry follow ``exportTo``; a DestinationRule
    with a ``workloadSelector`` stays in its own namespace whatever it exports. A Sidecar
    applies to its own namespace, and to every namespace when it sits in the root namespace
    (the mesh-wide default). Gateways and WorkloadEntries are referenced by name and are
    visible everywhere.
    """
    if resource.kind == "Sidecar":
        return from_namespace == resource.namespace or resource.namespace == root_namespace
    if resource.kind not in EXPORTABLE_KINDS:
        return True
    if resource.kind == "DestinationRule" and resource.spec.get("workloadSelector") is not None:
        return from_namespace == resource.namespace
    return _exported_to(export_to(resource), resource.namespace, from_namespace)


def _exported_to(entries: Iterable[str], own_namespace: str, from_namespace: str) -> bool:
    for entry in entries:
        if entry == EXPORT_PUBLIC:
            return True
        if entry == EXPORT_PRIVATE and from_namespace == own_namespace:
            return True
        if entry == from_namespace:
            return True
    return False
