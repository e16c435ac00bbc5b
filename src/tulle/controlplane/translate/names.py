"""Istio's naming and host rules, as the translation needs them (pure string functions).

Host resolution and wildcard matching are controlplane/istio/hosts.py's, so that validation
(``tulle analyze``) and translation read a host the same way; the rest follows istio/istio
pilot/pkg/networking/core httproute.go (virtual host domains) and model.BuildSubsetKey.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

from tulle.controlplane.istio import hosts

OUTBOUND = "outbound"
INBOUND = "inbound"


# --- hosts ------------------------------------------------------------------------------


def resolve_host(
    name: str, namespace: str, domain_suffix: str, known_namespaces: Collection[str] | None = None
) -> str:
    """A host as written in a resource -> FQDN: a short name (no dot) is in the resource's namespace.

    "reviews" in namespace "default" -> "reviews.default.svc.cluster.local"; "reviews.prod" too
    when "prod" is one of ``known_namespaces``; other dotted names and "*" are already qualified.
    """
    return hosts.resolve_host(name, namespace, domain_suffix, known_namespaces).lower()


def is_wildcard(host: str) -> bool:
    return hosts.is_wildcard(host)


def host_matches(first: str, second: str) -> bool:
    """Istio's host.Name.Matches: symmetric; "*.foo.com" matches "a.foo.com" and "*.b.foo.com"."""
    return hosts.hosts_overlap(first, second)


def match_specificity(pattern: str) -> tuple[int, int]:
    """Sort key: an exact host beats any wildcard; a longer wildcard beats a shorter one."""
    return (0, 0) if not is_wildcard(pattern) else (1, -len(pattern))


def visible_to(export_to: Iterable[str], owner_namespace: str, namespace: str) -> bool:
    """exportTo: "*" everyone, "." the owner's namespace, "~" nobody, else namespace names."""
    targets = list(export_to) or ["*"]
    for target in targets:
        if target == "*" or target == namespace or (target == "." and owner_namespace == namespace):
            return True
    return False


def labels_match(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A label selector (every key equal) over a label set; an empty selector matches everything."""
    return all(labels.get(key) == value for key, value in (selector or {}).items())


# --- cluster and virtual host names -----------------------------------------------------


def outbound_cluster_name(port: int, hostname: str, subset: str = "") -> str:
    return f"{OUTBOUND}|{port}|{subset}|{hostname}"


def inbound_cluster_name(port: int) -> str:
    return f"{INBOUND}|{port}||"


def parse_cluster_name(name: str) -> tuple[str, int, str, str] | None:
    """"outbound|9080|v1|reviews.default.svc.cluster.local" -> (direction, port, subset, host)."""
    parts = name.split("|")
    if len(parts) != 4 or parts[0] not in (OUTBOUND, INBOUND) or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1]), parts[2], parts[3]


def domain_with_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def virtual_host_name(hostname: str, port: int) -> str:
    return domain_with_port(hostname, port)


def kubernetes_alt_hosts(hostname: str, proxy_namespace: str, domain_suffix: str) -> list[str]:
    """Shorter names a client in ``proxy_namespace`` may use for a Kubernetes-style service host.

    Same namespace: name, name.ns.svc, name.ns; other namespace: name.ns, name.ns.svc. Hosts
    outside "<ns>.svc.<domain_suffix>" have none: expanding them could shadow real names.
    """
    suffix = f".svc.{domain_suffix}"
    if not hostname.endswith(suffix):
        return []
    stem = hostname[: -len(suffix)]  # "name.ns"
    if stem.count(".") != 1:
        return []
    name, namespace = stem.split(".")
    if namespace == proxy_namespace:
        return [name, f"{stem}.svc", stem]
    return [stem, f"{stem}.svc"]


def virtual_host_domains(
    hostname: str,
    port: int,
    proxy_namespace: str,
    domain_suffix: str,
    addresses: Iterable[str] = (),
) -> list[str]:
    """Every Host header that reaches ``hostname``:``port``: FQDN, short names, VIPs, each
    without and with the port."""
    domains: list[str] = []
    for host in [hostname, *kubernetes_alt_hosts(hostname, proxy_namespace, domain_suffix), *addresses]:
        if not host or host in ("0.0.0.0", "::") or "/" in host:  # CIDRs are not Host headers
            continue
        bare = f"[{host}]" if ":" in host else host
        domains += [bare, domain_with_port(host, port)]
    return domains


# --- protocols --------------------------------------------------------------------------

HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "GRPC", "GRPC-WEB", "HTTP_PROXY"})
HTTP2_PROTOCOLS = frozenset({"HTTP2", "GRPC", "GRPC-WEB"})


def is_http(protocol: str) -> bool:
    return protocol.upper() in HTTP_PROTOCOLS


def is_http2(protocol: str) -> bool:
    return protocol.upper() in HTTP2_PROTOCOLS
