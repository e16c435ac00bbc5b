"""What the registry accepts: registrations and Services checked as Kubernetes and Istio check theirs.

Everything a registration carries ends up in xDS: an address a proxy cannot parse makes every
proxy NACK the whole endpoint update, and with it every later change of that service. So the
registry refuses, with the field named, what Kubernetes would refuse in a Pod, Service or
EndpointSlice, and bounds what it keeps per instance (docs/control-plane.md, "Registry input"):

- names: instance names and service accounts are DNS-1123 subdomains (<= 253), namespaces
  and Service names DNS-1123 labels (<= 63), as Kubernetes object names;
- addresses: an IP (v4 or v6; not unspecified, multicast or broadcast, as Kubernetes refuses
  for endpoints); a host name only for instances of DNS services (checked by the registry,
  which knows the services);
- ports 1-65535, port names DNS-1123 labels (Istio's rule for service entry ports);
- labels and selectors: Kubernetes label syntax ([prefix/]name <= 63, value <= 63);
- locality: ``region[/zone[/subzone]]``, each part a label value;
- TTL: MIN_TTL_SECONDS to MAX_TTL_SECONDS; weight: 1 to MAX_WEIGHT (Consul's range);
- at most MAX_PORTS ports, MAX_LABELS labels, MAX_SERVICES services, MAX_ADDRESSES addresses.

Each check returns ``(field, message)`` pairs; the registry turns them into Diagnostics.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from typing import Any

MIN_TTL_SECONDS = 1.0  # heartbeats every third of it: faster would be a flood, not a lease
MAX_TTL_SECONDS = 86400.0  # a day, as Consul's session TTL: a dead instance must go eventually
MAX_WEIGHT = 65535  # Consul's; keeps a locality's summed weight far inside Envoy's uint32
MAX_PORTS = 100  # an EndpointSlice's limit
MAX_LABELS = 64
MAX_SERVICES = 64
MAX_ADDRESSES = 64
MAX_EXPORT_TO = 64
MAX_LOCALITY_PARTS = 3

_DNS1123_LABEL = "[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_RE = re.compile(f"^{_DNS1123_LABEL}$")
_DNS1123_SUBDOMAIN_RE = re.compile(rf"^{_DNS1123_LABEL}(?:\.{_DNS1123_LABEL})*$")
# Istio's DNS-1123 label admits upper case (port names, host labels it lower-cases later).
_ISTIO_LABEL_RE = re.compile(r"^[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?$")
_QUALIFIED_NAME_RE = re.compile(r"^(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
MAX_LABEL_LENGTH = 63
MAX_SUBDOMAIN_LENGTH = 253
EXPORT_TO_SPECIAL = (".", "*", "~")

Problems = list[tuple[str, str]]


def dns1123_label_error(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "required: a non-empty string"
    if len(value) > MAX_LABEL_LENGTH or not _DNS1123_LABEL_RE.match(value):
        return (f"{value!r} is not a DNS-1123 label (lower case letters, digits and '-', starting and ending "
                f"with a letter or digit, at most {MAX_LABEL_LENGTH} characters)")
    return None


def dns1123_subdomain_error(value: Any) -> str | None:
    if not isinstance(value, str) or not value:
        return "required: a non-empty string"
    if len(value) > MAX_SUBDOMAIN_LENGTH or not _DNS1123_SUBDOMAIN_RE.match(value):
        return (f"{value!r} is not a DNS-1123 subdomain (DNS-1123 labels joined by '.', at most "
                f"{MAX_SUBDOMAIN_LENGTH} characters)")
    return None


def host_name_error(value: Any) -> str | None:
    """A host name to resolve or to name a service: DNS labels (any case), no wildcard, no port."""
    if not isinstance(value, str) or not value:
        return "required: a non-empty host name"
    name = value[:-1] if value.endswith(".") else value
    if len(name) > MAX_SUBDOMAIN_LENGTH:
        return f"host name {value!r} is longer than {MAX_SUBDOMAIN_LENGTH} characters"
    labels = name.split(".")
    for label in labels:
        if len(label) > MAX_LABEL_LENGTH or not _ISTIO_LABEL_RE.match(label):
            return f"{value!r} is not a valid host name (label {label!r} is not a DNS-1123 label)"
    if labels[-1].isdigit():
        return f"{value!r} is not a valid host name (its top-level label is all digits)"
    return None


def ip_address_error(value: Any) -> str | None:
    """None for an IP a proxy can connect to; why not, otherwise."""
    if not isinstance(value, str) or not value:
        return "required: an IP address"
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address"
    if address.is_unspecified:
        return f"{value!r} is the unspecified address: give the address the instance listens on"
    if address.is_multicast:
        return f"{value!r} is a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address("255.255.255.255"):
        return f"{value!r} is the broadcast address"
    return None


def is_ip_address(value: Any) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_port_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def port_number_error(value: Any) -> str | None:
    return None if is_port_number(value) else f"must be a port number 1-65535, got {value!r}"


def label_problems(labels: Any, path: str, limit: int = MAX_LABELS) -> Problems:
    """Kubernetes label syntax: ``[prefix/]name`` keys (prefix a DNS-1123 subdomain), short values."""
    if labels is None:
        return []
    if not isinstance(labels, Mapping):
        return [(path, "must map label names to string values")]
    problems: Problems = []
    if len(labels) > limit:
        problems.append((path, f"at most {limit} labels, got {len(labels)}"))
        return problems
    for key, value in labels.items():
        problem = label_key_error(key)
        if problem:
            problems.append((f"{path}[{key}]", problem))
        problem = label_value_error(value)
        if problem:
            problems.append((f"{path}[{key}]", problem))
    return problems


def label_key_error(key: Any) -> str | None:
    if not isinstance(key, str) or not key:
        return f"label name {key!r} must be a non-empty string"
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or dns1123_subdomain_error(prefix)):
        return f"label name {key!r}: the prefix before '/' must be a DNS-1123 subdomain"
    if len(name) > MAX_LABEL_LENGTH or not _QUALIFIED_NAME_RE.match(name):
        return (f"label name {key!r} is not a qualified name (letters, digits, '-', '_', '.', starting and "
                f"ending with a letter or digit, at most {MAX_LABEL_LENGTH} characters, optionally prefixed)")
    return None


def label_value_error(value: Any) -> str | None:
    if not isinstance(value, str):
        return f"label value must be a string, got {value!r}"
    if value and (len(value) > MAX_LABEL_LENGTH or not _QUALIFIED_NAME_RE.match(value)):
        return (f"label value {value!r} is not valid (letters, digits, '-', '_', '.', starting and ending with a "
                f"letter or digit, at most {MAX_LABEL_LENGTH} characters)")
    return None


def locality_error(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return f"must be a string region[/zone[/subzone]], got {value!r}"
    parts = value.split("/")
    if len(parts) > MAX_LOCALITY_PARTS:
        return f"{value!r} has more than {MAX_LOCALITY_PARTS} parts: region[/zone[/subzone]]"
    for part in parts:
        if not part or len(part) > MAX_LABEL_LENGTH or not _QUALIFIED_NAME_RE.match(part):
            return (f"{value!r}: each part of region[/zone[/subzone]] must be a non-empty label value "
                    f"(letters, digits, '-', '_', '.'), got {part!r}")
    return None


def ttl_error(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return f"must be a number of seconds, got {value!r}"
    if not MIN_TTL_SECONDS <= value <= MAX_TTL_SECONDS:
        return f"must be from {MIN_TTL_SECONDS:g} to {MAX_TTL_SECONDS:g} seconds, got {value!r}"
    return None


def weight_error(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WEIGHT:
        return f"must be an integer from 1 to {MAX_WEIGHT}, got {value!r}"
    return None


def subnet_error(value: Any) -> str | None:
    """A service address: an IP or a CIDR block (as ServiceEntry addresses)."""
    if not isinstance(value, str) or not value:
        return f"must be an IP address or CIDR block, got {value!r}"
    try:
        if "/" in value:
            ipaddress.ip_network(value, strict=False)
        else:
            ipaddress.ip_address(value)
    except ValueError:
        return f"{value!r} is not an IP address or CIDR block"
    return None


def export_to_error(value: Any) -> str | None:
    if value in EXPORT_TO_SPECIAL:
        return None
    problem = dns1123_label_error(value)
    return None if problem is None else f"must be '.', '*', '~' or a namespace name: {problem}"


def registration_problems(
    name: Any, namespace: Any, address: Any, ports: Any, labels: Any, service_account: Any, locality: Any,
    services: Any, ttl: Any, weight: Any,
) -> Problems:
    """Errors in a registration, every field checked; the address only for being an IP or host name
    (whether a host name is allowed depends on the services: the registry decides that)."""
    problems: Problems = []
    for what, problem in (("name", dns1123_subdomain_error(name)), ("namespace", dns1123_label_error(namespace))):
        if problem:
            problems.append((what, problem))
    if not isinstance(address, str) or not address:
        problems.append(("address", "required: the IP address the instance listens on"))
    elif not is_ip_address(address):
        if host_name_error(address):
            problems.append(("address", f"{address!r} is not an IP address (nor a host name)"))
    else:
        problem = ip_address_error(address)
        if problem:
            problems.append(("address", problem))
    if ports is not None:
        if not isinstance(ports, Mapping):
            problems.append(("ports", "must map service port names (or numbers) to port numbers"))
        elif len(ports) > MAX_PORTS:
            problems.append(("ports", f"at most {MAX_PORTS} ports, got {len(ports)}"))
        else:
            for key, value in ports.items():
                if not isinstance(key, str) or len(key) > MAX_LABEL_LENGTH or not _ISTIO_LABEL_RE.match(key):
                    problems.append((f"ports[{key}]", f"port name {key!r} is not a DNS-1123 label"))
                problem = port_number_error(value)
                if problem:
                    problems.append((f"ports[{key}]", problem))
    problems.extend(label_problems(labels, "labels"))
    if service_account not in (None, ""):
        problem = dns1123_subdomain_error(service_account)
        if problem:
            problems.append(("serviceAccount", problem))
    problem = locality_error(locality)
    if problem:
        problems.append(("locality", problem))
    if isinstance(services, str) or not isinstance(services, list | tuple):
        problems.append(("services", "must be a list of service hostnames or short names"))
    elif len(services) > MAX_SERVICES:
        problems.append(("services", f"at most {MAX_SERVICES} services, got {len(services)}"))
    else:
        for index, service in enumerate(services):
            problem = host_name_error(service)
            if problem:
                problems.append((f"services[{index}]", problem))
    for what, problem in (("ttlSeconds", ttl_error(ttl)), ("weight", weight_error(weight))):
        if problem:
            problems.append((what, problem))
    return problems
