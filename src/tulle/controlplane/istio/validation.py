"""Validation of Istio resources (``tulle analyze``): per-resource checks and cross-resource analysis.

``validate(resource)`` does what Istio's validation webhook does (istio/istio
``pkg/config/validation``): first a structural pass against the schema in ``kinds`` (unknown
fields with a did-you-mean, types, enums, required fields, oneofs, durations), then the
semantic rules of each kind, with Istio's messages and a field path for each finding.
Errors mean Istio would refuse the resource; warnings are what the webhook lets through with a
warning.

``analyze(resources, known_services)`` adds what only the whole set can tell, like
``istioctl analyze``: references to hosts, subsets and gateways that do not exist, and
DestinationRules that fight over a host. Every finding carries istioctl's message code and level
(istio/istio ``pkg/config/analysis/msg/messages.yaml``): webhook errors are IST0106
SchemaValidationError, webhook warnings IST0133 SchemaWarning, and the analyzers' own codes
(IST0101, IST0109, IST0128-IST0131) keep their levels, so a missing subset is an Error as in
istioctl. What Tulle itself adds has TUL codes (``TULLE_CODES``). ``review`` is what ``tulle apply``
reports: Istio's webhook admits what only the analyzers flag, so there those are warnings.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import ipaddress
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from typing import Any

from tulle.controlplane.istio import hosts as hostrules
from tulle.controlplane.istio.documents import type_name
from tulle.controlplane.istio.kinds import (
    MESSAGES,
    REGISTRY_SERVICE,
    EnumOf,
    FieldType,
    ListOf,
    MapOf,
    Message,
    Range,
    Ref,
    Scalar,
    check_kind,
    spec_schema,
)
from tulle.controlplane.model import Diagnostic, Resource

ERROR = "error"
WARNING = "warning"
INFO = "info"
# istioctl analyze's codes (messages.yaml) for what Tulle reports, and their levels there.
IST_REFERENCED_RESOURCE_NOT_FOUND = "IST0101"  # Error
IST_SCHEMA_VALIDATION_ERROR = "IST0106"  # Error: the webhook refuses
IST_CONFLICTING_MESH_GATEWAY_HOSTS = "IST0109"  # Error
IST_NO_SERVER_CERT_VERIFICATION = "IST0128"  # Warning: DestinationRule level
IST_NO_SERVER_CERT_VERIFICATION_PORT = "IST0129"  # Warning: port level
IST_UNREACHABLE_RULE = "IST0130"  # Warning
IST_INEFFECTIVE_MATCH = "IST0131"  # Info
IST_SCHEMA_WARNING = "IST0133"  # Warning: the webhook admits with a warning
# Tulle's own codes: what istioctl has no analyzer for.
TULLE_NOT_TRANSLATED = "TUL0001"  # Warning: accepted, but the control plane does not translate it yet
TULLE_PROXY_LACKS = "TUL0002"  # Warning: translated, but Tulle proxies cannot honour it yet
TULLE_CONFLICTING_DESTINATION_RULES = "TUL0003"  # Warning
TULLE_DUPLICATE_RESOURCE = "TUL0004"  # Warning
TULLE_CODES = {
    TULLE_NOT_TRANSLATED: "NotTranslated", TULLE_PROXY_LACKS: "TulleProxyLacks",
    TULLE_CONFLICTING_DESTINATION_RULES: "ConflictingDestinationRules", TULLE_DUPLICATE_RESOURCE: "DuplicateResource",
}
# Found by the analyzers only: Istio's webhook admits such resources, so `tulle apply` does too.
ANALYZER_ONLY_CODES = frozenset({IST_REFERENCED_RESOURCE_NOT_FOUND, IST_CONFLICTING_MESH_GATEWAY_HOSTS})
MESH_GATEWAY = "mesh"
UNIX_PREFIX = "unix://"
MAX_REGEX_LENGTH = 1024
KB, MB = 1024, 1024 * 1024

# x-envoy-retry-on and x-envoy-retry-grpc-on values Envoy accepts (Istio's list).
RETRY_ON_POLICIES = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure", "retriable-4xx",
    "refused-stream", "retriable-status-codes", "retriable-headers", "envoy-ratelimited",
    "http3-post-connect-failure", "cancelled", "deadline-exceeded", "internal", "resource-exhausted",
    "unavailable",
})
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"})
GRPC_STATUSES = frozenset({
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
})
CIPHER_SUITES = frozenset({
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-RSA-AES256-SHA",
    "AES128-GCM-SHA256", "AES256-GCM-SHA384", "AES128-SHA", "AES256-SHA", "DES-CBC3-SHA",
})
# Istio's protocol names (pkg/config/protocol), parsed case-insensitively.
PROTOCOLS = {
    "tcp": "TCP", "udp": "UDP", "grpc": "GRPC", "grpc-web": "GRPC-Web", "http": "HTTP", "http_proxy": "HTTP_PROXY",
    "http2": "HTTP2", "https": "HTTPS", "tls": "TLS", "mongo": "Mongo", "redis": "Redis", "mysql": "MySQL",
}
HTTP_PROTOCOLS = frozenset({"HTTP", "HTTP2", "HTTP_PROXY", "GRPC", "GRPC-Web"})
TLS_PROTOCOLS = frozenset({"HTTPS", "TLS"})
TCP_PROTOCOLS = frozenset({"TCP", "HTTPS", "TLS", "Mongo", "Redis", "MySQL"})
TOPOLOGY_LABELS = frozenset({"topology.kubernetes.io/region", "topology.kubernetes.io/zone",
                             "topology.istio.io/subzone"})
DRY_RUN_ANNOTATION = "istio.io/dry-run"

_DNS1123_LABEL = "[a-zA-Z0-9](?:[-a-zA-Z0-9]*[a-zA-Z0-9])?"  # Istio's (it admits upper case)
_DNS1123_LABEL_RE = re.compile(f"^{_DNS1123_LABEL}$")
_WILDCARD_LABEL_RE = re.compile(rf"^(\*|(\*|\*-)?{_DNS1123_LABEL})$")
_QUALIFIED_NAME = "(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_LABEL_KEY_RE = re.compile(rf"^({_DNS1123_LABEL}(?:\.{_DNS1123_LABEL})*/)?({_QUALIFIED_NAME})$")
_LABEL_VALUE_RE = re.compile(f"^({_QUALIFIED_NAME})?$")
_K8S_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_K8S_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HEADER_NAME_RE = re.compile(r"^[-_A-Za-z0-9]+$")
_HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_JWT_CLAIM_ROUTE_RE = re.compile(r"^@request\.auth\.claims(\.[^.\[\]]+|\[[^\[\]]+\])+$")
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_DURATION_UNIT_NANOS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
                        "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000}
_INTEGER_RANGES = {Scalar.INT32: (-(2**31), 2**31 - 1), Scalar.UINT32: (0, 2**32 - 1), Scalar.UINT64: (0, 2**64 - 1)}


# --- public entry points ------------------------------------------------------------------


def validate(resource: Resource) -> list[Diagnostic]:
    """Every finding for one resource: structural ones first, then Istio's rules, each in spec order."""
    findings = _Findings()
    unsupported = check_kind(resource.kind, resource.api_version)
    if unsupported is not None:
        findings.error(*unsupported, code="")  # not Istio configuration Tulle can read at all
        return findings.diagnostics(resource)
    if (resource.kind, resource.api_version) == REGISTRY_SERVICE:
        from tulle.controlplane.registry.registry import validate_service  # the registry imports this package

        return [replace(d, code=IST_SCHEMA_VALIDATION_ERROR) for d in validate_service(resource)]
    _check_metadata(resource, findings)
    spec = resource.spec if isinstance(resource.spec, dict) else {}
    _check_message(spec, spec_schema(resource.kind), "spec", findings)
    _KIND_RULES[resource.kind](spec, resource, findings)
    return findings.diagnostics(resource)


def analyze(
    resources: Sequence[Resource],
    known_services: set[str] | None = None,
    domain_suffix: str = "cluster.local",
    root_namespace: str = "istio-system",
) -> list[Diagnostic]:
    """``validate`` for each resource, then what only the whole set tells, like ``istioctl analyze``.

    ``known_services`` are the FQDNs of the registry's services. Without it (None) the
    registry is unknown and destination hosts are not checked; subsets, gateways and
    DestinationRule conflicts still are. A resource defined more than once (the same
    directory holding several versions of it) counts once, as its last definition, as
    it would once applied.
    """
    diagnostics: list[Diagnostic] = []
    for resource in resources:
        diagnostics.extend(validate(resource))
    diagnostics.extend(_duplicate_resources(resources))
    latest = {(r.kind, r.namespace, r.name): r for r in resources if check_kind(r.kind, r.api_version) is None}
    supported = list(latest.values())
    mesh = _MeshIndex(supported, known_services, domain_suffix, root_namespace)
    for resource in resources:
        if latest.get((resource.kind, resource.namespace, resource.name)) is not resource:
            continue
        findings = _Findings()
        if resource.kind == "VirtualService":
            _analyze_virtual_service(resource, mesh, findings)
        elif resource.kind == "DestinationRule":
            _analyze_destination_rule(resource, mesh, findings)
            _ca_certificates(resource, findings)
        _tulle_gaps(resource, findings)
        diagnostics.extend(findings.diagnostics(resource))
    diagnostics.extend(_conflicting_mesh_virtual_services(supported, mesh))
    return diagnostics


def review(
    resources: Sequence[Resource],
    known_services: set[str] | None = None,
    domain_suffix: str = "cluster.local",
    root_namespace: str = "istio-system",
) -> list[Diagnostic]:
    """What ``tulle apply`` reports: ``analyze``, with what only the analyzers find as warnings.

    Istio's webhook (and so ``kubectl apply``) admits a VirtualService whose subset is not
    defined yet; only ``istioctl analyze`` calls that an Error (IST0101). Refusing it would make
    the order of applies matter, so on apply it informs, with its code, and the webhook's
    errors alone refuse.
    """
    return [replace(d, level=WARNING) if d.level == ERROR and d.code in ANALYZER_ONLY_CODES else d
            for d in analyze(resources, known_services, domain_suffix, root_namespace)]


def parse_duration(text: str) -> int | None:
    """Nanoseconds in a duration as Istio accepts it ("1.5s", "100ms", "1h30m", "0"), else None."""
    if not isinstance(text, str) or not text:
        return None
    sign, body = 1, text
    if body[0] in "+-":
        sign, body = (-1 if body[0] == "-" else 1), body[1:]
    if body == "0":
        return 0
    if not body:
        return None
    total, position = Decimal(0), 0
    while position < len(body):
        part = _DURATION_PART.match(body, position)
        if part is None:
            return None
        try:
            total += Decimal(part.group(1)) * _DURATION_UNIT_NANOS[part.group(2)]
        except InvalidOperation:
            return None
        position = part.end()
    return sign * int(total)


def parse_protocol(name: str) -> str | None:
    """Istio's canonical protocol name for ``name`` (case-insensitive), None when unsupported."""
    return PROTOCOLS.get(name.lower()) if isinstance(name, str) else None


# --- findings -----------------------------------------------------------------------------


class _Findings:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, str, str]] = []

    def error(self, path: str, message: str, code: str = IST_SCHEMA_VALIDATION_ERROR) -> None:
        self.items.append((ERROR, path, message, code))

    def warning(self, path: str, message: str, code: str = IST_SCHEMA_WARNING) -> None:
        self.items.append((WARNING, path, message, code))

    def info(self, path: str, message: str, code: str) -> None:
        self.items.append((INFO, path, message, code))

    def diagnostics(self, resource: Resource) -> list[Diagnostic]:
        return [Diagnostic(level, resource.ref, path, message, resource.source, code)
                for level, path, message, code in self.items]


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _seq(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _integer(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _strings(value: Any) -> list[str]:
    return [item for item in _seq(value) if isinstance(item, str)]


def _set(value: Any) -> bool:
    """Whether a field counts as set, as a Go nil check would see it after unmarshalling."""
    return value is not None and value != []


def _messages(value: Any, path: str) -> Iterable[tuple[str, dict[str, Any]]]:
    """``(path[i], item)`` for the mapping items of a list (the others were reported already)."""
    for index, item in enumerate(_seq(value)):
        if isinstance(item, dict):
            yield f"{path}[{index}]", item


# --- structural pass ----------------------------------------------------------------------


def _check_message(value: Any, message: Message, path: str, findings: _Findings) -> None:
    if not isinstance(value, dict):
        findings.error(path, f"expected a mapping ({message.name}), got {type_name(value)}")
        return
    for key, item in value.items():
        field = message.fields.get(key) if isinstance(key, str) else None
        item_path = f"{path}.{key}"
        if field is None:
            findings.error(item_path, _unknown_field(str(key), message))
            continue
        if item is None:  # an explicit null reads as unset, as in protobuf JSON
            continue
        if field.deprecated:
            findings.warning(item_path, field.deprecated)
        _check_value(item, field.type, item_path, findings)
    for name, field in message.fields.items():
        if field.required and value.get(name) is None:
            findings.error(f"{path}.{name}", "required field missing")
    for group in message.oneofs:
        present = [name for name in group if value.get(name) is not None]
        if len(present) > 1:
            findings.error(path, f"only one of {', '.join(group)} may be set, found {' and '.join(present)}")


def _unknown_field(key: str, message: Message) -> str:
    names = list(message.fields)
    camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), key)  # proto names -> JSON names
    by_case = {name.lower(): name for name in names}
    suggestion = by_case.get(camel.lower())
    if suggestion is None:
        close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
        suggestion = close[0] if close else None
    hint = f"; did you mean {suggestion!r}?" if suggestion else ""
    return f"unknown field {key!r} in {message.name}{hint}"


def _check_value(value: Any, kind: FieldType, path: str, findings: _Findings) -> None:
    if isinstance(kind, Scalar):
        _check_scalar(value, kind, path, findings)
    elif isinstance(kind, Range):
        _check_range(value, kind, path, findings)
    elif isinstance(kind, EnumOf):
        if not isinstance(value, str) or value not in kind.values:
            close = difflib.get_close_matches(str(value).upper(), kind.values, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            findings.error(path, f"invalid value {value!r}, must be one of {', '.join(kind.values)}{hint}")
    elif isinstance(kind, ListOf):
        if not isinstance(value, list):
            findings.error(path, f"expected a list, got {type_name(value)}")
            return
        for index, item in enumerate(value):
            if item is None:
                findings.error(f"{path}[{index}]", "list item may not be null")
                continue
            _check_value(item, kind.item, f"{path}[{index}]", findings)
    elif isinstance(kind, MapOf):
        if not isinstance(value, dict):
            findings.error(path, f"expected a mapping, got {type_name(value)}")
            return
        for key, item in value.items():
            if not isinstance(key, str):
                findings.error(f"{path}[{key}]", f"map keys must be strings, got {type_name(key)} (quote the key)")
                continue
            if item is None:
                findings.error(f"{path}[{key}]", "value may not be null")
                continue
            _check_value(item, kind.value, f"{path}[{key}]", findings)
    else:
        _check_message(value, MESSAGES[kind.message], path, findings)


def _check_scalar(value: Any, kind: Scalar, path: str, findings: _Findings) -> None:
    if kind is Scalar.STRING:
        if not isinstance(value, str):
            findings.error(path, f"expected a string, got {type_name(value)} (quote the value)")
    elif kind is Scalar.BOOL:
        if not isinstance(value, bool):
            findings.error(path, f"expected true or false, got {type_name(value)} {value!r}")
    elif kind in _INTEGER_RANGES:
        _check_integer(value, kind, path, findings)
    elif kind is Scalar.DOUBLE:
        number = _number(value)
        if number is None or not math.isfinite(number):
            findings.error(path, f"expected a number, got {type_name(value)} {value!r}")
    elif kind is Scalar.BYTES:
        if not isinstance(value, str):
            findings.error(path, f"expected base64 text, got {type_name(value)}")
        elif _decode_base64(value) is None:
            findings.error(path, "invalid base64 text")
    else:
        _check_duration(value, kind is Scalar.DURATION, path, findings)


def _check_range(value: Any, kind: Range, path: str, findings: _Findings) -> None:
    """The CRD's minimum/maximum, checked (as the API server does) once the type is right."""
    before = len(findings.items)
    _check_scalar(value, kind.kind, path, findings)
    if len(findings.items) > before:
        return
    number = _uint64(value) if kind.kind is Scalar.UINT64 else value
    if kind.minimum is not None and number < kind.minimum:
        findings.error(path, f"{value} must be greater than or equal to {kind.minimum:g}")
    elif kind.maximum is not None and number > kind.maximum:
        findings.error(path, f"{value} must be less than or equal to {kind.maximum:g}")


def _check_integer(value: Any, kind: Scalar, path: str, findings: _Findings) -> None:
    if kind is Scalar.UINT64 and isinstance(value, str) and value.isdigit():
        value = int(value)  # protobuf JSON writes 64-bit integers as strings
    if isinstance(value, bool) or not isinstance(value, int):
        hint = " (remove the quotes)" if isinstance(value, str) and value.strip().lstrip("-").isdigit() else ""
        findings.error(path, f"expected an integer ({kind.value}), got {type_name(value)} {value!r}{hint}")
        return
    low, high = _INTEGER_RANGES[kind]
    if not low <= value <= high:
        findings.error(path, f"{value} is out of range for {kind.value} ({low}..{high})")


def _check_duration(value: Any, strict: bool, path: str, findings: _Findings) -> None:
    nanos = parse_duration(value) if isinstance(value, str) else None
    if nanos is None:
        findings.error(path, f"invalid duration {value!r} (examples: \"1.5s\", \"100ms\", \"1h30m\")")
    elif strict and nanos < 1_000_000:
        findings.error(path, "duration must be greater than 1ms")
    elif strict and nanos % 1_000_000:
        findings.error(path, "only durations to ms precision are supported")
    elif nanos < 0:
        findings.error(path, "duration must not be negative")


def _decode_base64(text: str) -> bytes | None:
    padded = text + "=" * (-len(text) % 4)
    for alphabet in (None, b"-_"):  # standard, then URL-safe
        try:
            return base64.b64decode(padded, altchars=alphabet, validate=True)
        except (binascii.Error, ValueError):
            continue
    return None


# --- metadata -----------------------------------------------------------------------------


def _check_metadata(resource: Resource, findings: _Findings) -> None:
    if resource.kind == "Gateway" and not _is_dns1123_label(resource.name):
        # A Gateway is referenced as namespace/name, so its name cannot contain dots.
        findings.error("metadata.name", f"invalid gateway name: {resource.name!r}")
    elif len(resource.name) > 253 or not _K8S_NAME_RE.match(resource.name):
        findings.error("metadata.name", f"invalid name {resource.name!r}: must be a lower case RFC 1123 subdomain "
                       "(letters, digits, '-' and '.')")
    if len(resource.namespace) > 63 or not _K8S_NAMESPACE_RE.match(resource.namespace):
        findings.error("metadata.namespace", f"invalid namespace {resource.namespace!r}: must be a lower case "
                       "RFC 1123 label")
    for message in _label_errors(resource.labels):
        findings.error("metadata.labels", message)
    if DRY_RUN_ANNOTATION in resource.annotations:
        findings.error(f"metadata.annotations[{DRY_RUN_ANNOTATION}]",
                       f"{resource.namespace}/{resource.name} has unsupported annotation {DRY_RUN_ANNOTATION}, "
                       "please remove the annotation")


# --- shared rules (Istio's agent/validation.go helpers) -------------------------------------


def _is_dns1123_label(value: str) -> bool:
    return len(value) <= 63 and bool(_DNS1123_LABEL_RE.match(value))


def _is_ip(value: str) -> bool:
    return hostrules.is_ip_address(value)


def _dns_preconditions(name: str) -> str | None:
    if len(name) > 255:
        return f"domain name {name!r} too long (max 255)"
    if not name:
        return "empty domain name not allowed"
    return None


def _dns1123_labels(domain: str) -> str | None:
    parts = domain.split(".")
    top_level = parts[-1]
    if re.fullmatch(r"[+-]?\d+", top_level):
        return f"domain name {domain!r} invalid (top level domain {top_level!r} cannot be all-numeric)"
    for index, label in enumerate(parts):
        if index == len(parts) - 1 and label == "":  # a trailing dot, as in "istio.io."
            return None
        if not _is_dns1123_label(label):
            return f"domain name {domain!r} invalid (label {label!r} invalid)"
    return None


def _fqdn_error(name: str) -> str | None:
    return _dns_preconditions(name) or _dns1123_labels(name)


def _wildcard_domain_error(domain: str) -> str | None:
    """None when ``domain`` is an FQDN, possibly with a wildcard first label (``*.example.com``)."""
    problem = _dns_preconditions(domain)
    if problem:
        return problem
    first, dot, rest = domain.partition(".")
    if len(first) > 63 or not _WILDCARD_LABEL_RE.match(first):
        return f"domain name {domain!r} invalid (label {first!r} invalid)"
    return _dns1123_labels(rest) if dot else None


def _gateway_bound_domain_error(sni: bool, domain: str) -> str | None:
    problem = _dns_preconditions(domain)
    if problem:
        return problem
    first = domain.split(".", 1)[0]
    if sni and first == "outbound_":
        # Auto-generated SNI names such as outbound_.80_._.e2e.foobar.mesh.
        if not re.search(r"outbound_.([0-8].*).*", domain):
            return f"domain name {domain!r} invalid (label {first!r} invalid)"
        return None
    return _wildcard_domain_error(domain)


def _partial_wildcard_error(host: str) -> str | None:
    if "*" in host and len(host) != 1 and not host.startswith("*."):
        return f"partial wildcard {host!r} not allowed"
    return None


def _port_error(port: int) -> str | None:
    return None if 1 <= port <= 65535 else f"port number {port} must be in the range 1..65535"


def _ip_error(address: str) -> str | None:
    return None if _is_ip(address) else f"{address} is not a valid IP"


def _subnet_error(subnet: str) -> str | None:
    if subnet.count("/") == 1:
        try:
            ipaddress.ip_network(subnet, strict=False)
        except ValueError:
            return f"{subnet} is not a valid CIDR block"
        return None
    return _ip_error(subnet)


def _unix_address_error(address: str) -> str | None:
    if not address:
        return "unix address must not be empty"
    if address.startswith("@"):  # abstract socket
        return None
    if not address.startswith("/") or address.endswith("/"):
        return f"{address} is not an absolute path to a file"
    return None


def _label_errors(labels: Any) -> list[str]:
    errors = []
    for key, value in _obj(labels).items():
        match = _LABEL_KEY_RE.match(key) if isinstance(key, str) else None
        if match is None:
            errors.append(f"invalid tag key: {key!r}")
        elif match.group(1) and len(match.group(1)) - 1 > 253:
            errors.append(f"invalid tag key: {key!r} (DNS prefix is too long)")
        elif len(match.group(2)) > 63:
            errors.append(f"invalid tag key: {key!r} (name is too long)")
        if isinstance(value, str) and (len(value) > 63 or not _LABEL_VALUE_RE.match(value)):
            errors.append(f"invalid tag value: {value!r}")
    return errors


def _check_labels(labels: Any, path: str, findings: _Findings) -> None:
    for message in _label_errors(labels):
        findings.error(path, message)


def _port_name_error(name: str) -> str | None:
    return None if _is_dns1123_label(name) else f"invalid port name: {name}"


def _protocol_error(protocol: str) -> str | None:
    if protocol and parse_protocol(protocol) is None:
        return f"unsupported protocol: {protocol}"
    return None


def _check_regex(pattern: str, where: str, path: str, findings: _Findings) -> None:
    if len(pattern) > MAX_REGEX_LENGTH:
        findings.error(path, f"{where!r}: regex is too large, max length allowed is {MAX_REGEX_LENGTH}")
        return
    problem = _re2_error(pattern)
    if problem is not None:
        findings.error(path, f"{where!r}: {problem}; Istio uses RE2 style regex-based match "
                       "(https://github.com/google/re2/wiki/Syntax)")


def _re2_error(pattern: str) -> str | None:
    import re2  # lazily: most configurations have no regex and need not load RE2

    options = re2.Options()
    options.log_errors = False
    try:
        re2.compile(pattern, options=options)
    except re2.error as error:
        detail = error.args[0] if error.args else error
        return detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
    return None


def _check_string_match(match: Any, where: str, path: str, findings: _Findings, allow_empty_prefix: bool) -> None:
    """A StringMatch: no empty prefix (except for uri, as Envoy allows) and a valid RE2 regex."""
    match = _obj(match)
    if "prefix" in match and match["prefix"] == "" and not allow_empty_prefix:
        findings.error(f"{path}.prefix", f"{where!r}: prefix string match should not be empty")
    if "regex" in match and isinstance(match["regex"], str):
        if match["regex"] == "":
            findings.error(f"{path}.regex", f"{where!r}: regex string match should not be empty")
        else:
            _check_regex(match["regex"], where, f"{path}.regex", findings)


def _check_gateway_names(names: Any, path: str, findings: _Findings) -> None:
    for index, name in enumerate(_seq(names)):
        if not isinstance(name, str):
            continue
        item_path = f"{path}[{index}]"
        namespace, slash, gateway = name.partition("/")
        if not slash:
            if "." in name:
                parts = name.split(".")
                findings.warning(item_path, f"using legacy gatewayName format {name!r}; prefer the "
                                 f"<namespace>/<name> format: '{parts[1]}/{parts[0]}'")
            problem = _fqdn_error(name)
            if problem:
                findings.error(item_path, problem)
            continue
        if not namespace or not gateway:
            findings.error(item_path, "config namespace and gateway name cannot be empty")
        if not _is_dns1123_label(namespace):
            findings.error(item_path, f"invalid value for namespace: {namespace!r}")
        if not _is_dns1123_label(gateway):
            findings.error(item_path, f"invalid value for gateway name: {gateway!r}")


def _check_export_to(
    namespace: str, entries: Any, path: str, findings: _Findings,
    service_entry: bool = False, selector_rule: bool = False,
) -> None:
    exported: list[str] = []
    written = _strings(entries)
    for entry in written:
        key = namespace if entry == hostrules.EXPORT_PRIVATE else entry
        if key in exported:
            if key != entry:
                findings.error(path, f"duplicate entries in exportTo: . and current namespace {namespace}")
            else:
                findings.error(path, f"duplicate entries in exportTo for entry {entry}")
            continue
        if service_entry and entry == hostrules.EXPORT_NONE:
            exported.append(key)
            continue
        problem = _visibility_error(key)
        if problem:
            findings.error(path, problem)
        else:
            exported.append(key)
    if selector_rule and exported:
        if namespace not in exported:
            findings.error(path, "destination rule with workload selector cannot have exportTo beyond current namespace")
        elif len(exported) > 1:
            findings.error(path, "destination rule with workload selector cannot have multiple entries in exportTo")
    if hostrules.EXPORT_PUBLIC in exported and len(written) > 1:
        findings.error(path, "cannot have both public (*) and non-public exportTo values for a resource")
    if hostrules.EXPORT_NONE in exported and len(written) > 1:
        findings.error(path, "cannot export service entry to no one (~) and someone")


def _visibility_error(entry: str) -> str | None:
    if entry in (hostrules.EXPORT_PRIVATE, hostrules.EXPORT_PUBLIC):
        return None
    if entry == hostrules.EXPORT_NONE:
        return "exportTo ~ (none) is not allowed for Istio configuration objects"
    if not _is_dns1123_label(entry):
        return "only .,*, or a valid DNS 1123 label is allowed as exportTo entry"
    return None


def _check_selector_labels(labels: Any, path: str, findings: _Findings) -> bool:
    """Selector labels: no empty keys, no wildcards. Returns whether any label is given."""
    labels = _obj(labels)
    for key, value in labels.items():
        if key == "":
            findings.error(path, f"empty key is not supported in selector: '{key}={value}'")
        if "*" in str(key) or "*" in _text(value):
            findings.error(path, f"wildcard is not supported in selector: '{key}={value}'")
    return bool(labels)


def _check_destination(destination: Any, path: str, findings: _Findings) -> None:
    destination = _obj(destination)
    host = destination.get("host")
    if isinstance(host, str):
        if host == "*":
            findings.error(f"{path}.host", f"invalid destination host {host}")
        else:
            problem = _wildcard_domain_error(host)
            if problem:
                findings.error(f"{path}.host", problem)
    subset = destination.get("subset")
    if isinstance(subset, str) and subset:
        problem = _subset_name_error(subset)
        if problem:
            findings.error(f"{path}.subset", problem)
    port = destination.get("port")
    if isinstance(port, dict):
        problem = _port_error(_integer(port.get("number")))
        if problem:
            findings.error(f"{path}.port.number", problem)


def _subset_name_error(name: str) -> str | None:
    if not name:
        return "subset name cannot be empty"
    return None if _is_dns1123_label(name) else f"subset name is invalid: {name}"


def _check_fault_percentage(percentage: Any, path: str, findings: _Findings) -> None:
    value = _number(_obj(percentage).get("value"))
    if value is not None and (value < 0 or value > 100 or 0 < value < 0.0001):
        findings.error(f"{path}.value", f"percentage {value} is neither 0.0, nor in range [0.0001, 100.0]")


def _check_percent_range(value: Any, path: str, findings: _Findings) -> None:
    if isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= 100:
        findings.error(path, f"percentage {value} is not in range 0..100")


# --- headers ------------------------------------------------------------------------------


def _header_name_error(name: str, allow_jwt_claim: bool = True) -> str | None:
    if not name:
        return "header name cannot be empty"
    if allow_jwt_claim and _JWT_CLAIM_ROUTE_RE.match(name):
        return None
    if not _HEADER_NAME_RE.match(name):
        return f"header name {name} is not a valid header name"
    return None


def _cors_header_name_error(name: str) -> str | None:
    if name == "*":
        return None
    return _header_name_error(name, allow_jwt_claim=False)


def _is_internal_header(name: str) -> bool:
    return name.startswith(":") or name.lower() == "host"


def _is_authority_header(name: str) -> bool:
    return name.lower() in (":authority", "host")


def _request_header_set_error(name: str) -> str | None:
    """Names for request add/set: ``:authority`` and ``host`` rewrite the authority; other pseudo-headers no."""
    if not name:
        return "header name cannot be empty"
    if _is_internal_header(name) and not _is_authority_header(name):
        return f'invalid header "{name}": header cannot have ":" prefix'
    return None


def _header_operation_error(name: str) -> str | None:
    """Names for request removal and all response operations."""
    if not name:
        return "header name cannot be empty"
    if name.lower() == "host":
        return f'invalid header "{name}": cannot set Host header'
    if _is_internal_header(name):
        return f'invalid header "{name}": header cannot have ":" prefix'
    return None


def _header_value_error(value: str) -> str | None:
    if _HEADER_VALUE_FORBIDDEN.search(value):
        return f"header value configuration {value} is invalid"
    problem = _header_format_error(value)
    return f"header value configuration: {problem}" if problem else None


def _header_format_error(value: str) -> str | None:
    """Envoy's header formatter grammar: literal text, ``%%``, ``%VAR%`` and ``%VAR(args)%``.

    The same state machine as Envoy's header_parser.cc (and Istio's port of it).
    """
    state, position = "literal", 0
    while position < len(value):
        char = value[position]
        has_next = position + 1 < len(value)
        if state == "literal":
            if char == "%":
                if not has_next:
                    return "invalid header configuration. Un-escaped %"
                if value[position + 1] == "%":
                    position += 1  # an escaped %
                else:
                    state = "name"
        elif state == "name":
            if char == "%":
                state = "literal"
            elif char == "(":
                state = "array"
        elif state == "array":
            if char == "[":
                state = "expect-string"
            elif char != " ":
                state = "string"
        elif state == "delimiter-or-end":
            if char == ",":
                state = "expect-string"
            elif char == "]":
                state = "args-end"
            elif char != " ":
                return "invalid header configuration. Expecting ',', ']', or whitespace"
        elif state == "expect-string":
            if char == '"':
                state = "string"
            elif char != " ":
                return "invalid header configuration. Expecting '\"'"
        elif state == "string":
            if char == "\\":
                if not has_next:
                    return "invalid header configuration. Un-terminated backslash in JSON string"
                position += 1
            elif char == ")":
                state = "variable-end"
            elif char == '"':
                state = "delimiter-or-end"
        elif state == "args-end":
            if char == ")":
                state = "variable-end"
            elif char != " ":
                return "invalid header configuration. Expecting ')' or whitespace"
        elif state == "variable-end":
            if char == "%":
                state = "literal"
            elif char != " ":
                return "invalid header configuration. Expecting '%' or whitespace"
        position += 1
    if state != "literal":
        return f"invalid header configuration. Un-terminated variable expression '{value}'"
    return None


def _check_headers(headers: Any, path: str, findings: _Findings) -> None:
    headers = _obj(headers)
    request, response = _obj(headers.get("request")), _obj(headers.get("response"))
    for direction, operations in (("request", request), ("response", response)):
        name_error = _request_header_set_error if direction == "request" else _header_operation_error
        for operation in ("add", "set"):
            for name, value in _obj(operations.get(operation)).items():
                item_path = f"{path}.{direction}.{operation}[{name}]"
                problem = name_error(str(name))
                if problem:
                    findings.error(item_path, problem)
                if isinstance(value, str):
                    problem = _header_value_error(value)
                    if problem:
                        findings.error(item_path, problem)
        for index, name in enumerate(_seq(operations.get("remove"))):
            if isinstance(name, str):
                problem = _header_operation_error(name)
                if problem:
                    findings.error(f"{path}.{direction}.remove[{index}]", problem)


# --- VirtualService -----------------------------------------------------------------------


def _virtual_service(spec: dict[str, Any], resource: Resource, findings: _Findings) -> None:
    hosts = _seq(spec.get("hosts"))
    gateways = _seq(spec.get("gateways"))
    http, tls, tcp = _seq(spec.get("http")), _seq(spec.get("tls")), _seq(spec.get("tcp"))
    delegate = not hosts
    if delegate:
        if gateways:
            findings.error("spec.gateways", "delegate virtual service must have no gateways specified")
        if tls:
            findings.error("spec.tls", "delegate virtual service must have no tls route specified")
        if tcp:
            findings.error("spec.tcp", "delegate virtual service must have no tcp route specified")
    applies_to_gateway = bool(gateways) and MESH_GATEWAY not in gateways
    applies_to_mesh = not applies_to_gateway
    _check_gateway_names(gateways, "spec.gateways", findings)
    if not applies_to_gateway:
        _check_no_jwt_claim_routes(http, findings)

    sni_routes = any(_seq(match.get("sniHosts")) for _, route in _messages(tls, "") for _, match in
                     _messages(route.get("match"), ""))
    all_hosts_valid = True
    for index, host in enumerate(hosts):
        if not isinstance(host, str):
            all_hosts_valid = False
            continue
        if applies_to_gateway:
            problem = _gateway_bound_domain_error(sni_routes, host)
        else:
            problem = _wildcard_domain_error(host)
        if problem:
            if not _is_ip(host):
                findings.error(f"spec.hosts[{index}]", problem)
                all_hosts_valid = False
        elif applies_to_mesh and host == "*":
            findings.error(f"spec.hosts[{index}]",
                           "wildcard host * is not allowed for virtual services bound to the mesh gateway")
            all_hosts_valid = False
    if all_hosts_valid:
        for first in range(len(hosts)):
            for second in range(first + 1, len(hosts)):
                if hostrules.hosts_overlap(hosts[first], hosts[second]):
                    findings.error(f"spec.hosts[{second}]",
                                   f"duplicate hosts in virtual service: {hosts[first]} & {hosts[second]}")

    if not http and not tcp and not tls:
        findings.error("spec", "http, tcp or tls must be provided in virtual service")
    for path, route in _messages(http, "spec.http"):
        _http_route(route, path, delegate, findings)
    sni_context_is_gateway = MESH_GATEWAY not in gateways
    for path, route in _messages(tls, "spec.tls"):
        _tls_route(route, path, [h for h in hosts if isinstance(h, str)], sni_context_is_gateway, findings)
    for path, route in _messages(tcp, "spec.tcp"):
        _tcp_route(route, path, findings)
    _check_export_to(resource.namespace, spec.get("exportTo"), "spec.exportTo", findings)
    _unreachable_rules(http, "spec.http", findings, named=True)
    _unreachable_rules(tcp, "spec.tcp", findings, named=False)
    _unreachable_rules(tls, "spec.tls", findings, named=False)


def _check_no_jwt_claim_routes(http: list[Any], findings: _Findings) -> None:
    for route_path, route in _messages(http, "spec.http"):
        for match_path, match in _messages(route.get("match"), f"{route_path}.match"):
            for field in ("headers", "withoutHeaders"):
                for name in _obj(match.get(field)):
                    if isinstance(name, str) and _JWT_CLAIM_ROUTE_RE.match(name):
                        findings.error(f"{match_path}.{field}[{name}]",
                                       f"JWT claim based routing (key: {name}) is only supported for gateway, "
                                       "found no gateways")


def _http_route(route: dict[str, Any], path: str, delegate: bool, findings: _Findings) -> None:
    kind = "delegate" if delegate else ("root" if route.get("delegate") is not None else "independent")
    _http_route_conflicts(route, path, kind, findings)
    _http_match_requests(route.get("match"), f"{path}.match", findings)
    _check_headers(route.get("headers"), f"{path}.headers", findings)
    _cors_policy(route.get("corsPolicy"), f"{path}.corsPolicy", findings)
    if isinstance(route.get("fault"), dict):
        _fault(route["fault"], f"{path}.fault", findings)
    if route.get("mirrorPercent") is not None and route.get("mirror_percent") is not None:
        findings.error(f"{path}.mirror_percent", "mirror_percent and mirrorPercent are the same field; set one")
    for key in ("mirrorPercent", "mirror_percent"):
        mirror_percent = route.get(key)
        if isinstance(mirror_percent, int) and not isinstance(mirror_percent, bool) and mirror_percent > 100:
            findings.error(f"{path}.{key}", f"mirror_percent must have a max value of 100 (it has {mirror_percent})")
    mirror_percentage = _number(_obj(route.get("mirrorPercentage")).get("value"))
    if mirror_percentage is not None and mirror_percentage > 100:
        findings.error(f"{path}.mirrorPercentage.value",
                       f"mirror_percentage must have a max value of 100 (it has {mirror_percentage:f})")
    if mirror_percentage is not None and mirror_percentage < 0:
        findings.error(f"{path}.mirrorPercentage.value",
                       f"mirror_percentage must have a min value of 0 (it has {mirror_percentage:f})")
    if isinstance(route.get("mirror"), dict):
        _check_destination(route["mirror"], f"{path}.mirror", findings)
    for mirror_path, mirror in _messages(route.get("mirrors"), f"{path}.mirrors"):
        _check_destination(mirror.get("destination"), f"{mirror_path}.destination", findings)
        value = _number(_obj(mirror.get("percentage")).get("value"))
        if value is not None and value > 100:
            findings.error(f"{mirror_path}.percentage.value",
                           f"mirror percentage must have a max value of 100 (it has {value:f})")
        if value is not None and value < 0:
            findings.error(f"{mirror_path}.percentage.value",
                           f"mirror percentage must have a min value of 0 (it has {value:f})")
    if isinstance(route.get("redirect"), dict):
        _redirect(route["redirect"], route.get("match"), f"{path}.redirect", findings)
    if isinstance(route.get("directResponse"), dict):
        _direct_response(route["directResponse"], f"{path}.directResponse", findings)
    if isinstance(route.get("retries"), dict):
        _retries(route["retries"], f"{path}.retries", findings)
    if isinstance(route.get("rewrite"), dict):
        _rewrite(route["rewrite"], f"{path}.rewrite", findings)
    _authority_rewrite(route, path, findings)
    _route_destinations(route.get("route"), f"{path}.route", findings, http=True)


def _http_route_conflicts(route: dict[str, Any], path: str, kind: str, findings: _Findings) -> None:
    name = _text(route.get("name"))
    routes = _seq(route.get("route"))
    if kind == "root":
        if route.get("redirect") is not None:
            findings.error(f"{path}.redirect", f"root HTTP route {name} must not specify redirect")
        if route.get("route") is not None:
            findings.error(f"{path}.route", f"root HTTP route {name} must not specify route")
        return
    if kind == "delegate" and route.get("delegate") is not None:
        findings.error(f"{path}.delegate", "delegate HTTP route cannot contain delegate")
    if route.get("redirect") is not None:
        if routes:
            findings.error(f"{path}.redirect", "HTTP route cannot contain both route and redirect")
        if route.get("fault") is not None:
            findings.error(f"{path}.redirect", "HTTP route cannot contain both fault and redirect")
        if route.get("rewrite") is not None:
            findings.error(f"{path}.redirect", "HTTP route rule cannot contain both rewrite and redirect")
        if route.get("directResponse") is not None:
            findings.error(f"{path}.redirect", "HTTP route rule cannot contain both direct_response and redirect")
    elif route.get("directResponse") is not None:
        if routes:
            findings.error(f"{path}.directResponse", "HTTP route cannot contain both route and direct_response")
        if route.get("fault") is not None:
            findings.error(f"{path}.directResponse", "HTTP route cannot contain both fault and direct_response")
        if route.get("rewrite") is not None:
            findings.error(f"{path}.directResponse", "HTTP route rule cannot contain both rewrite and direct_response")
    elif not routes:
        findings.error(f"{path}.route", "HTTP route, redirect or direct_response is required")
    if route.get("mirror") is not None and _seq(route.get("mirrors")):
        findings.error(f"{path}.mirrors", "HTTP route cannot contain both mirror and mirrors")


def _http_match_requests(matches: Any, path: str, findings: _Findings) -> None:
    for match_path, match in _messages(matches, path):
        for name, header in _obj(match.get("headers")).items():
            header_path = f"{match_path}.headers[{name}]"
            problem = _header_name_error(str(name))
            if problem:
                findings.error(header_path, problem)
            _check_string_match(header, "headers", header_path, findings, allow_empty_prefix=False)
        for name, header in _obj(match.get("withoutHeaders")).items():
            header_path = f"{match_path}.withoutHeaders[{name}]"
            problem = _header_name_error(str(name))
            if problem:
                findings.error(header_path, problem)
            # regex "*" is not RE2 here: it means "header present".
            if isinstance(header, dict) and header.get("regex") != "*":
                _check_string_match(header, "withoutHeaders", header_path, findings, allow_empty_prefix=False)
        _check_string_match(match.get("uri"), "uri", f"{match_path}.uri", findings, allow_empty_prefix=True)
        for field in ("scheme", "method", "authority"):
            _check_string_match(match.get(field), field, f"{match_path}.{field}", findings, allow_empty_prefix=False)
        for name, param in _obj(match.get("queryParams")).items():
            _check_string_match(param, "queryParams", f"{match_path}.queryParams[{name}]", findings,
                                allow_empty_prefix=False)
        port = _integer(match.get("port"))
        if port:
            problem = _port_error(port)
            if problem:
                findings.error(f"{match_path}.port", problem)
        _check_labels(match.get("sourceLabels"), f"{match_path}.sourceLabels", findings)
        _check_gateway_names(match.get("gateways"), f"{match_path}.gateways", findings)
        source_namespace = _text(match.get("sourceNamespace"))
        if source_namespace and not _is_dns1123_label(source_namespace):
            findings.error(f"{match_path}.sourceNamespace", f"sourceNamespace match {source_namespace} is invalid")


def _cors_policy(policy: Any, path: str, findings: _Findings) -> None:
    policy = _obj(policy)
    for origin_path, origin in _messages(policy.get("allowOrigins"), f"{path}.allowOrigins"):
        written = next((origin[key] for key in ("exact", "prefix", "regex") if isinstance(origin.get(key), str)), "")
        if written == "":
            findings.error(origin_path, "'' is not a valid match type for CORS allow origins")
        elif isinstance(origin.get("regex"), str):
            _check_regex(origin["regex"], "corsPolicy.allowOrigins", f"{origin_path}.regex", findings)
    for index, method in enumerate(_strings(policy.get("allowMethods"))):
        if method not in HTTP_METHODS:
            findings.error(f"{path}.allowMethods[{index}]", f"{method!r} is not a supported HTTP method")
    for field in ("allowHeaders", "exposeHeaders"):
        for index, name in enumerate(_seq(policy.get(field))):
            if isinstance(name, str):
                problem = _cors_header_name_error(name)
                if problem:
                    findings.error(f"{path}.{field}[{index}]", problem)
    max_age = parse_duration(policy.get("maxAge")) if isinstance(policy.get("maxAge"), str) else None
    if max_age is not None and max_age % 1_000_000_000:
        findings.error(f"{path}.maxAge", "max_age duration is accurate only to seconds precision")


def _fault(fault: dict[str, Any], path: str, findings: _Findings) -> None:
    abort, delay = fault.get("abort"), fault.get("delay")
    if abort is None and delay is None:
        findings.error(path, "HTTP fault injection must have an abort and/or a delay")
    if isinstance(abort, dict):
        _check_fault_percentage(abort.get("percentage"), f"{path}.abort.percentage", findings)
        if abort.get("grpcStatus") is not None:
            status = _text(abort.get("grpcStatus"))
            if status not in GRPC_STATUSES:
                findings.error(f"{path}.abort.grpcStatus",
                               f"gRPC status {status!r} is not supported. See "
                               "https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported "
                               "codes, for example 'NOT_FOUND'")
        elif abort.get("http2Error") is not None:
            findings.error(f"{path}.abort.http2Error", "HTTP/2 abort fault injection not supported yet")
        elif abort.get("httpStatus") is not None:
            _check_http_status(abort.get("httpStatus"), f"{path}.abort.httpStatus", findings)
        else:
            findings.warning(f"{path}.abort", "abort configured, but error type not set")
    if isinstance(delay, dict):
        _check_fault_percentage(delay.get("percentage"), f"{path}.delay.percentage", findings)
        _check_percent_range(delay.get("percent"), f"{path}.delay.percent", findings)
        if delay.get("exponentialDelay") is not None:
            findings.error(f"{path}.delay.exponentialDelay", "exponentialDelay not supported yet")
        elif delay.get("fixedDelay") is None:
            findings.error(f"{path}.delay.fixedDelay", "required field missing (the delay to inject)")


def _check_http_status(status: Any, path: str, findings: _Findings) -> None:
    if isinstance(status, int) and not isinstance(status, bool) and not 200 <= status <= 600:
        findings.error(path, f"HTTP status {status} is not in range 200-599")


def _redirect(redirect: dict[str, Any], matches: Any, path: str, findings: _Findings) -> None:
    prefix_rewrite = _text(redirect.get("prefixRewrite"))
    if _text(redirect.get("uri")) and prefix_rewrite:
        findings.error(path, "redirect may only specify one of uri or prefix_rewrite")
        return
    if prefix_rewrite and any(isinstance(match, dict) and isinstance(match.get("uri"), dict)
                              and "prefix" not in match["uri"] for match in _seq(matches)):
        findings.error(f"{path}.prefixRewrite", "redirect prefix_rewrite requires all URI matches to use prefix "
                       "match type")
        return
    if not (_text(redirect.get("uri")) or prefix_rewrite or _text(redirect.get("authority"))
            or _text(redirect.get("scheme")) or redirect.get("port") is not None
            or redirect.get("derivePort") is not None):
        findings.error(path, "redirect must specify URI, authority, scheme, or port")
    code = _integer(redirect.get("redirectCode"))
    if code and not 300 <= code <= 399:
        findings.error(f"{path}.redirectCode", f"{code} is not a valid redirect code, must be 3xx")
    scheme = _text(redirect.get("scheme"))
    if scheme and scheme not in ("http", "https"):
        findings.error(f"{path}.scheme", 'invalid redirect scheme, must be "http" or "https"')
    port = _integer(redirect.get("port"))
    if port > 0:
        problem = _port_error(port)
        if problem:
            findings.error(f"{path}.port", problem)


def _direct_response(response: dict[str, Any], path: str, findings: _Findings) -> None:
    body = _obj(response.get("body"))
    size = 0
    if isinstance(body.get("string"), str):
        size = len(body["string"].encode())
    elif isinstance(body.get("bytes"), str):
        size = len(_decode_base64(body["bytes"]) or b"")
    if size > MB:
        findings.error(f"{path}.body", "large direct_responses may impact control plane performance, must be less "
                       "than 1MB")
    elif size > 100 * KB:
        findings.warning(f"{path}.body", "large direct_responses may impact control plane performance")
    _check_http_status(response.get("status"), f"{path}.status", findings)


def _retries(retries: dict[str, Any], path: str, findings: _Findings) -> None:
    attempts = _integer(retries.get("attempts"))
    if attempts < 0:
        findings.error(f"{path}.attempts", "attempts cannot be negative")
    if attempts == 0 and any(retries.get(key) not in (None, "") for key in
                             ("perTryTimeout", "retryOn", "retryRemoteLocalities")):
        findings.error(f"{path}.attempts", "http retry policy configured when attempts are set to 0 (disabled)")
    retry_on = _text(retries.get("retryOn"))
    if retry_on:
        for policy in retry_on.split(","):
            if not _is_http_status_code(policy) and policy not in RETRY_ON_POLICIES:
                findings.error(f"{path}.retryOn", f"{policy!r} is not a valid retryOn policy")


def _is_http_status_code(text: str) -> bool:
    if not text.isdigit():
        return False
    try:
        HTTPStatus(int(text))
    except ValueError:
        return False
    return True


def _rewrite(rewrite: dict[str, Any], path: str, findings: _Findings) -> None:
    uri = _text(rewrite.get("uri"))
    regex_rewrite = rewrite.get("uriRegexRewrite")
    if uri and regex_rewrite is not None:
        findings.error(path, "rewrite may only contain one of URI or UriRegexRewrite")
        return
    if not uri and regex_rewrite is None and not _text(rewrite.get("authority")):
        findings.error(path, "rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of "
                       "URI or UriRegexRewrite may be specified")
        return
    if isinstance(regex_rewrite, dict):
        match, replacement = _text(regex_rewrite.get("match")), _text(regex_rewrite.get("rewrite"))
        if not match or not replacement:
            findings.error(f"{path}.uriRegexRewrite",
                           "UriRegexRewrite requires both Rewrite and Match fields to be specified")
        else:
            _check_regex(match, "HTTPRewrite.UriRegexRewrite.Match", f"{path}.uriRegexRewrite.match", findings)


def _authority_rewrite(route: dict[str, Any], path: str, findings: _Findings) -> None:
    """The authority may be rewritten in one place only: rewrite.authority or one header operation."""
    current = _text(_obj(route.get("rewrite")).get("authority"))
    request = _obj(_obj(route.get("headers")).get("request"))
    for operation in ("set", "add"):
        for name, value in _obj(request.get(operation)).items():
            if not _is_authority_header(str(name)):
                continue
            if current:
                findings.error(f"{path}.headers.request.{operation}[{name}]",
                               f"authority header cannot be set multiple times: have {current!r}, attempting to set "
                               f"{value!r}")
                return
            current = _text(value)


def _route_destinations(routes: Any, path: str, findings: _Findings, http: bool) -> None:
    written = _seq(routes)
    total, negative = 0, False
    for destination_path, destination in _messages(written, path):
        if http:
            _check_headers(destination.get("headers"), f"{destination_path}.headers", findings)
        if isinstance(destination.get("destination"), dict):
            _check_destination(destination["destination"], f"{destination_path}.destination", findings)
        weight = _integer(destination.get("weight"))
        if weight < 0:
            findings.error(f"{destination_path}.weight", f"weight {weight} < 0")
            negative = True
        total += weight
    if len(written) > 1 and total == 0:
        findings.error(path, "total destination weight = 0")
    elif len(written) > 1 and total != 100 and not negative:
        # Istio's API says weights SHOULD add up to 100; proxies use them as proportions.
        findings.warning(path, f"destination weights add up to {total}, not 100; they are used as proportions "
                         f"(weight/{total})")


def _tls_route(route: dict[str, Any], path: str, hosts: list[str], gateway_context: bool, findings: _Findings) -> None:
    if route.get("match") == []:
        findings.error(f"{path}.match", "TLS route must have at least one match condition")
    for match_path, match in _messages(route.get("match"), f"{path}.match"):
        sni_hosts = match.get("sniHosts")
        if sni_hosts == []:
            findings.error(f"{match_path}.sniHosts", "TLS match must have at least one SNI host")
        for index, sni in enumerate(_seq(sni_hosts)):
            if isinstance(sni, str):
                _sni_host(sni, f"{match_path}.sniHosts[{index}]", hosts, gateway_context, findings)
        _l4_match(match, match_path, findings)
    if not _seq(route.get("route")):
        findings.error(f"{path}.route", "TLS route is required")
    _route_destinations(route.get("route"), f"{path}.route", findings, http=False)


def _sni_host(sni: str, path: str, hosts: list[str], gateway_context: bool, findings: _Findings) -> None:
    problem = _gateway_bound_domain_error(True, sni) if gateway_context else _wildcard_domain_error(sni)
    if problem:
        if _is_ip(sni):
            findings.warning(path, f'using an IP address ("{sni}") goes against SNI spec and most clients do not '
                             "support this")
        else:
            findings.error(path, problem)
        return
    if not any(hostrules.host_matches(host, sni) for host in hosts):
        findings.error(path, f'SNI host "{sni}" is not a compatible subset of any of the virtual service hosts: '
                       f"[{', '.join(hosts)}]")


def _tcp_route(route: dict[str, Any], path: str, findings: _Findings) -> None:
    for match_path, match in _messages(route.get("match"), f"{path}.match"):
        _l4_match(match, match_path, findings)
    if not _seq(route.get("route")):
        findings.error(f"{path}.route", "TCP route is required")
    _route_destinations(route.get("route"), f"{path}.route", findings, http=False)


def _l4_match(match: dict[str, Any], path: str, findings: _Findings) -> None:
    for index, subnet in enumerate(_seq(match.get("destinationSubnets"))):
        if isinstance(subnet, str):
            problem = _subnet_error(subnet)
            if problem:
                findings.error(f"{path}.destinationSubnets[{index}]", problem)
    port = _integer(match.get("port"))
    if port:
        problem = _port_error(port)
        if problem:
            findings.error(f"{path}.port", problem)
    _check_labels(match.get("sourceLabels"), f"{path}.sourceLabels", findings)
    _check_gateway_names(match.get("gateways"), f"{path}.gateways", findings)


def _unreachable_rules(routes: list[Any], path: str, findings: _Findings, named: bool) -> None:
    """Rules that can never match (IST0130) and matches an earlier rule takes (IST0131), as Istio finds them."""
    seen: dict[str, int] = {}
    catch_all_seen = False
    prefix_matches: list[_PrefixMatch] = []
    for index, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        route_name = _rule_name(route, index, named)
        matches = _seq(route.get("match"))
        if not matches:
            if catch_all_seen:
                _unreachable(findings, f"{path}[{index}]", route_name, "only the last rule can have no matches")
            catch_all_seen = True
            continue
        duplicates = 0
        for match_index, match in enumerate(matches):
            match_path = f"{path}[{index}].match[{match_index}]"
            if catch_all_seen:
                _unreachable(findings, match_path, route_name, "route without matches defined before")
                continue
            key = _match_key(match)
            if key in seen:
                duplicate_of = seen[key]
                _ineffective(findings, match_path, route_name, _rule_name(match, match_index, named),
                             _rule_name(routes[duplicate_of], duplicate_of, named))
                duplicates += 1
                continue
            seen[key] = index
            prefix_match = _PrefixMatch.of(match, route_name, _rule_name(match, match_index, named),
                                           match_path) if named else None
            if prefix_match is not None:
                prefix_matches.append(prefix_match)
        if duplicates == len(matches):
            _unreachable(findings, f"{path}[{index}]", route_name, "all matches used by prior rules")
    for position, earlier in enumerate(prefix_matches):
        for later in prefix_matches[position + 1:]:
            if later.prefix != earlier.prefix and earlier.covers(later):
                _ineffective(findings, later.path, later.route_name, f"{later.match_name} of prefix {later.prefix}",
                             f"{earlier.match_name} of prefix {earlier.prefix} on {earlier.route_name}")


def _unreachable(findings: _Findings, path: str, rule: str, reason: str) -> None:
    findings.warning(path, f"VirtualService rule {rule} not used ({reason}).", IST_UNREACHABLE_RULE)


def _ineffective(findings: _Findings, path: str, rule: str, match: str, earlier: str) -> None:
    findings.info(path, f"VirtualService rule {rule} match {match} is not used (duplicate/overlapping match in rule "
                  f"{earlier}).", IST_INEFFECTIVE_MATCH)


def _rule_name(item: Any, index: int, named: bool) -> str:
    name = _text(_obj(item).get("name")) if named else ""
    return f'"{name}"' if name else f"#{index}"


def _match_key(match: Any) -> str:
    """A canonical text of a match without its name, to spot repeated matches."""
    if isinstance(match, dict):
        match = {key: value for key, value in match.items() if key != "name"}
    return repr(_canonical(match))


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted(((str(key), _canonical(item)) for key, item in value.items()), key=lambda pair: pair[0]))
    if isinstance(value, list):
        return tuple(_canonical(item) for item in value)
    return value


class _PrefixMatch:
    """A uri-prefix HTTP match, to find matches shadowed by an earlier, shorter prefix."""

    def __init__(self, path: str, route_name: str, match_name: str, prefix: str, port: int, method: str,
                 authority: str, headers: dict[str, str], query: dict[str, str], without: dict[str, str]) -> None:
        self.path, self.route_name, self.match_name, self.prefix = path, route_name, match_name, prefix
        self.port, self.method, self.authority = port, method, authority
        self.headers, self.query, self.without = headers, query, without

    @classmethod
    def of(cls, match: Any, route_name: str, match_name: str, path: str) -> _PrefixMatch | None:
        match = _obj(match)
        prefix = _text(_obj(match.get("uri")).get("prefix"))
        if not prefix:
            return None
        return cls(path, route_name, match_name, prefix, _integer(match.get("port")),
                   _exact_or_prefix(match.get("method")) or "exact:GET", _exact_or_prefix(match.get("authority")),
                   _exact_or_prefix_map(match.get("headers")), _exact_or_prefix_map(match.get("queryParams")),
                   _exact_or_prefix_map(match.get("withoutHeaders")))

    def covers(self, later: _PrefixMatch) -> bool:
        if not later.prefix.startswith(self.prefix) or later.port != self.port:
            return False
        if self.method != later.method and not self.method.startswith(later.method):
            return False
        if self.authority != later.authority and not self.authority.startswith(later.authority):
            return False
        return all(_map_covers(mine, theirs) for mine, theirs in
                   ((self.headers, later.headers), (self.query, later.query), (self.without, later.without)))


def _map_covers(mine: dict[str, str], theirs: dict[str, str]) -> bool:
    if len(mine) != len(theirs):
        return False
    for key, value in mine.items():
        if key not in theirs or (value != theirs[key] and not value.startswith(theirs[key])):
            return False
    return True


def _exact_or_prefix(match: Any) -> str:
    match = _obj(match)
    if _text(match.get("exact")):
        return "exact:" + match["exact"]
    if _text(match.get("prefix")):
        return "prefix:" + match["prefix"]
    return ""


def _exact_or_prefix_map(matches: Any) -> dict[str, str]:
    return {str(key): _exact_or_prefix(value) for key, value in _obj(matches).items()}


# --- DestinationRule ----------------------------------------------------------------------


def _destination_rule(spec: dict[str, Any], resource: Resource, findings: _Findings) -> None:
    host = spec.get("host")
    if isinstance(host, str):
        problem = _wildcard_domain_error(host)
        if problem:
            findings.error("spec.host", problem)
    if spec.get("trafficPolicy") is not None:
        _traffic_policy(spec.get("trafficPolicy"), "spec.trafficPolicy", findings)
    names: set[str] = set()
    for subset_path, subset in _messages(spec.get("subsets"), "spec.subsets"):
        name = subset.get("name")
        if isinstance(name, str):
            if name in names:
                findings.error(f"{subset_path}.name", f"duplicate subset names: {name}")
            names.add(name)
            problem = _subset_name_error(name)
            if problem:
                findings.error(f"{subset_path}.name", problem)
        _check_labels(subset.get("labels"), f"{subset_path}.labels", findings)
        if subset.get("trafficPolicy") is not None:
            _traffic_policy(subset.get("trafficPolicy"), f"{subset_path}.trafficPolicy", findings)
    selector = spec.get("workloadSelector")
    _check_export_to(resource.namespace, spec.get("exportTo"), "spec.exportTo", findings,
                     selector_rule=selector is not None)
    if isinstance(selector, dict):
        has_labels = _check_selector_labels(selector.get("matchLabels"), "spec.workloadSelector.matchLabels", findings)
        if not has_labels:
            findings.warning("spec.workloadSelector", "workload selector specified without labels")


def _traffic_policy(policy: Any, path: str, findings: _Findings) -> None:
    policy = _obj(policy)
    fields = ("outlierDetection", "connectionPool", "loadBalancer", "tls", "portLevelSettings", "tunnel",
              "proxyProtocol", "retryBudget")
    if not any(_set(policy.get(field)) for field in fields):
        findings.error(path, "traffic policy must have at least one field")
        return
    if policy.get("tunnel") is not None and policy.get("proxyProtocol") is not None:
        findings.error(path, "tunnel and proxyProtocol must not be set together")
        return
    _policy_parts(policy, path, findings)
    for port_path, port_policy in _messages(policy.get("portLevelSettings"), f"{path}.portLevelSettings"):
        port = port_policy.get("port")
        if port is None:
            findings.error(f"{port_path}.port", "portTrafficPolicy must have valid port")
        elif isinstance(port, dict):
            problem = _port_error(_integer(port.get("number")))
            if problem:
                findings.error(f"{port_path}.port.number", problem)
        if not any(_set(port_policy.get(field)) for field in ("outlierDetection", "connectionPool", "loadBalancer",
                                                               "tls")):
            findings.error(port_path, "port traffic policy must have at least one field")
        else:
            _policy_parts(port_policy, port_path, findings)
    if isinstance(policy.get("tunnel"), dict):
        _tunnel(policy["tunnel"], f"{path}.tunnel", findings)


def _policy_parts(policy: dict[str, Any], path: str, findings: _Findings) -> None:
    if isinstance(policy.get("outlierDetection"), dict):
        _outlier_detection(policy["outlierDetection"], f"{path}.outlierDetection", findings)
    if policy.get("connectionPool") is not None:
        _connection_pool(policy.get("connectionPool"), f"{path}.connectionPool", findings)
    if isinstance(policy.get("loadBalancer"), dict):
        _load_balancer(policy["loadBalancer"], policy.get("outlierDetection"), f"{path}.loadBalancer", findings)
    if isinstance(policy.get("tls"), dict):
        _client_tls(policy["tls"], f"{path}.tls", findings)


def _outlier_detection(outlier: dict[str, Any], path: str, findings: _Findings) -> None:
    if _integer(outlier.get("consecutiveErrors")):
        findings.warning(f"{path}.consecutiveErrors", "outlier detection consecutive errors is deprecated, use "
                         "consecutiveGatewayErrors or consecutive5xxErrors instead")
    if outlier.get("splitExternalLocalOriginErrors") is not True and _integer(
            outlier.get("consecutiveLocalOriginFailures")) > 0:
        findings.error(f"{path}.consecutiveLocalOriginFailures", "outlier detection consecutive local origin "
                       "failures is specified, but split external local origin errors is set to false")
    _check_percent_range(outlier.get("maxEjectionPercent"), f"{path}.maxEjectionPercent", findings)
    _check_percent_range(outlier.get("minHealthPercent"), f"{path}.minHealthPercent", findings)


def _connection_pool(pool: Any, path: str, findings: _Findings) -> None:
    pool = _obj(pool)
    if pool.get("http") is None and pool.get("tcp") is None:
        findings.error(path, "connection pool must have at least one field")
        return
    http = _obj(pool.get("http"))
    for field, what in (("http1MaxPendingRequests", "http1 max pending requests"),
                        ("http2MaxRequests", "http2 max requests"),
                        ("maxRequestsPerConnection", "max requests per connection"),
                        ("maxRetries", "max retries"), ("maxConcurrentStreams", "max concurrent streams")):
        if _integer(http.get(field)) < 0:
            findings.error(f"{path}.http.{field}", f"{what} must be non-negative")
    if http.get("h2UpgradePolicy") == "UPGRADE" and http.get("useClientProtocol") is True:
        findings.error(f"{path}.http.useClientProtocol",
                       "use client protocol must not be true when H2UpgradePolicy is UPGRADE")
    keepalive = http.get("http2KeepAlive")
    if isinstance(keepalive, dict):
        for field in ("interval", "timeout"):
            if keepalive.get(field) is None:
                findings.error(f"{path}.http.http2KeepAlive.{field}", f"http2 keepalive {field} is required")
    if _integer(_obj(pool.get("tcp")).get("maxConnections")) < 0:
        findings.error(f"{path}.tcp.maxConnections", "max connections must be non-negative")


def _load_balancer(balancer: dict[str, Any], outlier: Any, path: str, findings: _Findings) -> None:
    consistent_hash = balancer.get("consistentHash")
    if isinstance(consistent_hash, dict):
        hash_path = f"{path}.consistentHash"
        cookie = consistent_hash.get("httpCookie")
        if isinstance(cookie, dict) and cookie.get("name") == "":
            findings.error(f"{hash_path}.httpCookie.name", "name required for HttpCookie")
        if _uint64(consistent_hash.get("minimumRingSize")):
            findings.warning(f"{hash_path}.minimumRingSize", "consistent hash MinimumRingSize is deprecated, use "
                             "ConsistentHashLB's RingHash configuration instead")
            if consistent_hash.get("ringHash") is not None or consistent_hash.get("maglev") is not None:
                findings.error(hash_path, "only one of MinimumRingSize or Maglev/Ringhash can be specified")
        maglev = consistent_hash.get("maglev")
        if isinstance(maglev, dict):
            table_size = _uint64(maglev.get("tableSize"))
            table_path = f"{hash_path}.maglev.tableSize"
            if table_size == 0:
                findings.error(table_path, "tableSize must be set for maglev")
            if table_size >= 5000011:
                findings.error(table_path, "tableSize must be less than 5000011 for maglev")
            if 0 < table_size < 5000011 and not _is_prime(table_size):  # larger sizes are refused above
                findings.error(table_path, "tableSize must be a prime number for maglev")
    if balancer.get("localityLbSetting") is not None and balancer.get("zoneAwareLbSetting") is not None:
        findings.error(path, "only one of localityLbSetting and zoneAwareLbSetting can be set")
    if isinstance(balancer.get("localityLbSetting"), dict):
        _locality_lb(balancer["localityLbSetting"], outlier, f"{path}.localityLbSetting", findings)
    if isinstance(balancer.get("zoneAwareLbSetting"), dict):
        _zone_aware_lb(balancer["zoneAwareLbSetting"], outlier, f"{path}.zoneAwareLbSetting", findings)
    warmup = balancer.get("warmup")
    if isinstance(warmup, dict) and warmup.get("aggression") == 0:  # the CRD refuses negative values already
        findings.error(f"{path}.warmup.aggression", "aggression should be greater than 0")


def _uint64(value: Any) -> int:
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return _integer(value)


def _is_prime(number: int) -> bool:
    """Envoy's primality test for maglev table sizes (1, 2 and 3 count as prime, as there)."""
    if 0 < number < 4:
        return True
    if number % 2 == 0:
        return False
    return all(number % factor for factor in range(3, math.isqrt(number) + 1, 2))


def _locality_lb(setting: dict[str, Any], outlier: Any, path: str, findings: _Findings) -> None:
    distribute, failover = _seq(setting.get("distribute")), _seq(setting.get("failover"))
    priority = _strings(setting.get("failoverPriority"))
    if distribute and failover:
        findings.error(path, "can not simultaneously specify 'distribute' and 'failover'")
        return
    if failover:
        for label in priority:
            if label in TOPOLOGY_LABELS:
                findings.error(f"{path}.failoverPriority",
                               f"can not simultaneously set 'failover' and topology label '{label}' in "
                               "'failover_priority'")
                return
    sources = []
    for rule_path, rule in _messages(distribute, f"{path}.distribute"):
        sources.append(_text(rule.get("from")))
        weights = _obj(rule.get("to"))
        if any(not isinstance(weight, int) or not 1 <= weight <= 100 for weight in weights.values()):
            findings.error(f"{rule_path}.to", "locality weight must be in range [1, 100]")
            return
        total = sum(weights.values())
        if total != 100:
            findings.error(f"{rule_path}.to", f"total locality weight {total} != 100")
            return
        problem = _localities_error([str(locality) for locality in weights])
        if problem:
            findings.error(f"{rule_path}.to", problem)
    problem = _localities_error(sources)
    if problem:
        findings.error(f"{path}.distribute", problem)
    if (failover or priority) and outlier is None:
        findings.warning(path, "outlier detection policy must be provided for failover")
    for rule_path, rule in _messages(failover, f"{path}.failover"):
        origin, target = _text(rule.get("from")), _text(rule.get("to"))
        if origin == target:
            findings.error(rule_path, "locality lb failover settings must specify different regions")
        if "/" in origin or "/" in target:
            findings.error(rule_path, "locality lb failover only specify region")
        if "*" in origin or "*" in target:
            findings.error(rule_path, "locality lb failover region should not contain '*' wildcard")


def _zone_aware_lb(setting: dict[str, Any], outlier: Any, path: str, findings: _Findings) -> None:
    for label in _strings(setting.get("failoverPriority")):
        if label in TOPOLOGY_LABELS:
            findings.error(f"{path}.failoverPriority", f"'failover_priority' for zone aware lb must not use topology "
                           f"label '{label}'; region- and zone-level routing are handled automatically")
    failover = _seq(setting.get("failover"))
    if (failover or _seq(setting.get("failoverPriority"))) and outlier is None:
        findings.warning(path, "outlier detection policy must be provided for failover")
    for rule_path, rule in _messages(failover, f"{path}.failover"):
        origin, target = _text(rule.get("from")), _text(rule.get("to"))
        if origin == target:
            findings.error(rule_path, "zone aware lb failover settings must specify different regions")
        if "/" in origin or "/" in target:
            findings.error(rule_path, "zone aware lb failover only specifies region; zone and subzone failover are "
                           "handled automatically")
        if "*" in origin or "*" in target:
            findings.error(rule_path, "zone aware lb failover region should not contain '*' wildcard")


def _localities_error(localities: list[str]) -> str | None:
    """Localities "region/zone/subzone" with at most a trailing '*', none covering another."""
    covered: dict[str, dict[str, set[str]]] = {}  # region -> zone -> subzones; "*" covers everything below
    for locality in localities:
        wildcards = locality.count("*")
        if wildcards and (wildcards > 1 or not locality.endswith("*")):
            return f"locality {locality} wildcard '*' number can not exceed 1 and must be in the end"
        if "*" in covered:
            return f"locality {locality} overlap with previous specified ones"
        parts = locality.split("/", 2)
        if any(part == "" for part in parts):
            return f"locality {locality} must not contain empty region/zone/subzone info"
        region = parts[0]
        zones = covered.get(region)
        if len(parts) == 1:
            if zones is not None:
                return f"locality {locality} overlap with previous specified ones"
            covered[region] = {"*": {"*"}}
            continue
        zone = parts[1]
        if zones is not None and ("*" in zones or (len(parts) == 2 and zone in zones)):
            return f"locality {locality} overlap with previous specified ones"
        zones = covered.setdefault(region, {})
        if len(parts) == 2:
            zones[zone] = {"*"}
            continue
        subzones = zones.setdefault(zone, set())
        if "*" in subzones or parts[2] in subzones:
            return f"locality {locality} overlap with previous specified ones"
        subzones.add(parts[2])
    return None


def _client_tls(tls: dict[str, Any], path: str, findings: _Findings) -> None:
    mode = tls.get("mode", "DISABLE")
    if tls.get("insecureSkipVerify") is True:
        if mode == "SIMPLE" and (_text(tls.get("caCertificates")) or _text(tls.get("credentialName"))
                                 or tls.get("subjectAltNames") is not None):
            findings.error(path, "cannot specify CaCertificates or CredentialName or SubjectAltNames when "
                           "InsecureSkipVerify is set true")
        if mode == "MUTUAL" and (_text(tls.get("caCertificates")) or tls.get("subjectAltNames") is not None):
            findings.error(path, "cannot specify CaCertificates or SubjectAltNames when InsecureSkipVerify is set true")
    if mode in ("SIMPLE", "MUTUAL") and _text(tls.get("credentialName")):
        if any(_text(tls.get(key)) for key in ("clientCertificate", "caCertificates", "privateKey", "caCrl")):
            findings.error(path, "cannot specify client certificates or CA certificate or CA CRL If credentialName is "
                           "set")
        return
    if mode == "MUTUAL":
        if not _text(tls.get("clientCertificate")):
            findings.error(f"{path}.clientCertificate", "client certificate required for mutual tls")
        if not _text(tls.get("privateKey")):
            findings.error(f"{path}.privateKey", "private key required for mutual tls")


def _tunnel(tunnel: dict[str, Any], path: str, findings: _Findings) -> None:
    protocol = _text(tunnel.get("protocol"))
    if protocol and protocol not in ("CONNECT", "POST"):
        findings.error(f"{path}.protocol", 'tunnel protocol must be "CONNECT" or "POST"')
    target = tunnel.get("targetHost")
    if isinstance(target, str):
        fqdn_problem, ip_problem = _fqdn_error(target), _ip_error(target)
        if fqdn_problem and ip_problem:
            findings.error(f"{path}.targetHost",
                           f"tunnel target host must be valid FQDN or IP address: {fqdn_problem}; {ip_problem}")
    if tunnel.get("targetPort") is not None:
        problem = _port_error(_integer(tunnel.get("targetPort")))
        if problem:
            findings.error(f"{path}.targetPort", f"tunnel target port is invalid: {problem}")


# --- Gateway ------------------------------------------------------------------------------


def _gateway(spec: dict[str, Any], resource: Resource, findings: _Findings) -> None:
    servers = spec.get("servers")
    if servers == []:
        findings.error("spec.servers", "gateway must have at least one server")
    port_names: set[str] = set()
    for server_path, server in _messages(servers, "spec.servers"):
        _server(server, server_path, findings)
        port = server.get("port")
        if isinstance(port, dict):
            name = _text(port.get("name"))
            if name in port_names:
                findings.error(f"{server_path}.port.name", f"port names in servers must be unique: duplicate name {name}")
            port_names.add(name)
            protocol = parse_protocol(_text(port.get("protocol")))
            if protocol not in HTTP_PROTOCOLS and _obj(server.get("tls")).get("httpsRedirect") is True:
                findings.warning(f"{server_path}.tls.httpsRedirect",
                                 "tls.httpsRedirect should only be used with http servers")
    selector = spec.get("selector")
    if isinstance(selector, dict):
        _check_labels(selector, "spec.selector", findings)


def _server(server: dict[str, Any], path: str, findings: _Findings) -> None:
    hosts = server.get("hosts")
    if hosts == []:
        findings.error(f"{path}.hosts", "server config must contain at least one host")
    for index, host in enumerate(_seq(hosts)):
        if isinstance(host, str):
            for problem in _namespaced_host_errors(host, gateway=True):
                findings.error(f"{path}.hosts[{index}]", problem)
    bind = _text(server.get("bind"))
    port = server.get("port")
    port_ok = isinstance(port, dict)
    if port_ok:
        protocol = _text(port.get("protocol"))
        number = _integer(port.get("number"))
        if parse_protocol(protocol) is None:
            findings.error(f"{path}.port.protocol", f"invalid protocol {protocol!r}, supported protocols are HTTP, "
                           "HTTP2, GRPC, GRPC-WEB, MONGO, REDIS, MYSQL, TCP")
            port_ok = False
        if number > 0 or not bind.startswith(UNIX_PREFIX):
            problem = _port_error(number)
            if problem:
                findings.error(f"{path}.port.number", problem)
                port_ok = False
        if _integer(port.get("targetPort")) > 0:
            findings.error(f"{path}.port.targetPort", "targetPort has no impact on Gateways")
            port_ok = False
        if port.get("name") == "":
            findings.error(f"{path}.port.name", "port name must be set")
            port_ok = False
    if bind.startswith(UNIX_PREFIX):
        problem = _unix_address_error(bind[len(UNIX_PREFIX):])
        if problem:
            findings.error(f"{path}.bind", problem)
        if isinstance(port, dict) and _integer(port.get("number")) != 0:
            findings.error(f"{path}.port.number", "port number must be 0 for unix domain socket")
    elif bind:
        problem = _ip_error(bind)
        if problem:
            findings.error(f"{path}.bind", problem)
    tls = server.get("tls")
    if isinstance(tls, dict):
        _server_tls(tls, f"{path}.tls", findings)
    if port_ok:
        protocol = parse_protocol(_text(_obj(port).get("protocol")))
        if protocol in TLS_PROTOCOLS and tls is None:
            findings.error(f"{path}.tls", "server must have TLS settings for HTTPS/TLS protocols")
        elif protocol not in TLS_PROTOCOLS and isinstance(tls, dict):
            if protocol in HTTP_PROTOCOLS:
                passthrough = tls.get("mode", "PASSTHROUGH") in ("PASSTHROUGH", "AUTO_PASSTHROUGH")
                if not passthrough or any(_text(tls.get(key)) for key in
                                          ("caCertificates", "privateKey", "serverCertificate")):
                    findings.error(f"{path}.tls", "server cannot have TLS settings for plain text HTTP ports")
            else:
                findings.error(f"{path}.tls", "server cannot have TLS settings for non HTTPS/TLS ports")


def _namespaced_host_errors(host: str, gateway: bool) -> list[str]:
    """A Gateway server or Sidecar egress host: ``namespace/dnsName`` (gateways also accept a bare dnsName)."""
    namespace, slash, name = host.partition("/")
    if not slash:
        if gateway:
            return _hostname_part_errors(host, gateway=True)
        return ["host must be of form namespace/dnsName"]
    errors = []
    if not namespace or not name:
        errors.append("config namespace and dnsName in host entry cannot be empty")
    allowed = ("*", ".") if gateway else ("*", ".", "~")
    if namespace not in allowed and not _is_dns1123_label(namespace):
        errors.append(f"invalid namespace value {namespace!r} in {'gateway' if gateway else 'sidecar'}")
    return errors + _hostname_part_errors(name, gateway)


def _hostname_part_errors(name: str, gateway: bool) -> list[str]:
    errors = []
    if name != "*" and "." not in name:
        errors.append("short names (non FQDN) are not allowed")
    problem = _wildcard_domain_error(name)
    if problem and not (gateway and _is_ip(name)):  # gateways also accept an IP
        errors.append(problem)
    partial = _partial_wildcard_error(name)
    if partial:
        errors.append(partial)
    return errors


def _server_tls(tls: dict[str, Any], path: str, findings: _Findings) -> None:
    mode = tls.get("mode", "PASSTHROUGH")
    ciphers = _strings(tls.get("cipherSuites"))
    if tls.get("minProtocolVersion") in ("TLSV1_0", "TLSV1_1") and not ciphers:
        findings.warning(f"{path}.minProtocolVersion", "TLS version below TLSV1_2 require setting compatible ciphers "
                         "as by default they no longer include compatible ciphers.")
    invalid = sorted({cipher for cipher in ciphers if not _is_cipher_suite(cipher)})
    duplicates = sorted({cipher for cipher in ciphers if _is_cipher_suite(cipher) and ciphers.count(cipher) > 1})
    if invalid:
        findings.warning(f"{path}.cipherSuites", f"ignoring invalid cipher suites: {invalid}")
    if duplicates:
        findings.warning(f"{path}.cipherSuites", f"ignoring duplicate cipher suites: {duplicates}")
    # The CRD's CEL rules (the third one, as generated, repeats the first).
    if _set(tls.get("credentialNames")) and _set(tls.get("tlsCertificates")):
        findings.error(path, "only one of credentialNames or tlsCertificates can be set")
    if _set(tls.get("credentialName")) and _set(tls.get("credentialNames")):
        findings.error(path, "only one of credentialName or credentialNames can be set")
    certificates = [item for _, item in _messages(tls.get("tlsCertificates"), "")]
    if mode == "ISTIO_MUTUAL":
        for key, what in (("serverCertificate", "server certificate"), ("privateKey", "private key"),
                          ("caCertificates", "CA bundle"), ("tlsCertificates", "tlsCertificates"),
                          ("credentialName", "credentialName"), ("credentialNames", "credentialNames")):
            if _text(tls.get(key)) or (key in ("tlsCertificates", "credentialNames") and _seq(tls.get(key))):
                findings.error(f"{path}.{key}", f"ISTIO_MUTUAL TLS cannot have associated {what}")
        return
    if mode in ("PASSTHROUGH", "AUTO_PASSTHROUGH"):
        if any(_text(tls.get(key)) for key in ("caCrl", "serverCertificate", "privateKey", "caCertificates",
                                               "credentialName")) or certificates or _seq(tls.get("credentialNames")):
            findings.warning(path, f"{mode} mode does not use certificates, they will be ignored")
    sources = sum((bool(_text(tls.get("serverCertificate")) and _text(tls.get("privateKey"))),
                   bool(_text(tls.get("credentialName"))), bool(_seq(tls.get("credentialNames"))), bool(certificates)))
    if sources > 1:
        findings.error(path, "only one of credential_name, credential_names, server_certificate/private_key, "
                       "tls_certificates should be specified")
    credential = bool(_text(tls.get("credentialName")) or _seq(tls.get("credentialNames")))
    if mode in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL") and not credential:
        prefix = "SIMPLE TLS" if mode == "SIMPLE" else "MUTUAL TLS"
        if mode != "SIMPLE" and not _text(tls.get("caCertificates")):
            findings.error(f"{path}.caCertificates", f"{prefix} requires a client CA bundle")
        if len(certificates) > 2:
            findings.warning(f"{path}.tlsCertificates", f"{prefix} can support up to 2 server certificates")
        checked = ([(f"{path}.tlsCertificates[{index}]", item) for index, item in enumerate(certificates)]
                   if certificates else [(path, tls)])
        for cert_path, cert in checked:
            if not _text(cert.get("serverCertificate")):
                findings.error(f"{cert_path}.serverCertificate", f"{prefix} requires a server certificate")
            if not _text(cert.get("privateKey")):
                findings.error(f"{cert_path}.privateKey", f"{prefix} requires a private key")
    if _text(tls.get("caCrl")) and not (mode in ("SIMPLE", "MUTUAL", "OPTIONAL_MUTUAL") and credential):
        if _text(tls.get("credentialName")):
            findings.error(f"{path}.caCrl", "CRL is not supported with credentialName. CRL has to be specified in "
                           "the credential")
        if mode == "SIMPLE":
            findings.error(f"{path}.caCrl", "CRL is not supported with SIMPLE TLS")


def _is_cipher_suite(name: str) -> bool:
    if name.startswith("[") and name.endswith("]"):  # BoringSSL equal-preference group
        return all(member in CIPHER_SUITES for member in name[1:-1].split("|"))
    return name in CIPHER_SUITES


# --- ServiceEntry and WorkloadEntry -------------------------------------------------------


def _service_entry(spec: dict[str, Any], resource: Resource, findings: _Findings) -> None:
    selector = spec.get("workloadSelector")
    endpoints = spec.get("endpoints")
    resolution = spec.get("resolution", "NONE")
    if isinstance(selector, dict):
        if not _check_selector_labels(selector.get("labels"), "spec.workloadSelector.labels", findings):
            findings.warning("spec.workloadSelector", "service entry: workload selector specified without labels, "
                             "will be applied to all services in namespace")
        if endpoints is not None:
            findings.error("spec.workloadSelector", "only one of WorkloadSelector or Endpoints is allowed in Service "
                           "Entry")
    hosts = spec.get("hosts")
    if hosts == []:
        findings.error("spec.hosts", "service entry must have at least one host")
    host_names = _strings(hosts)
    for index, host in enumerate(_seq(hosts)):
        if not isinstance(host, str):
            continue
        if host == "*":
            findings.error(f"spec.hosts[{index}]", f"invalid host {host}")
            continue
        problem = _wildcard_domain_error(host)
        if problem:
            findings.error(f"spec.hosts[{index}]", problem)
        partial = _partial_wildcard_error(host) if resolution != "DYNAMIC_DNS" else None
        if partial:
            findings.warning(f"spec.hosts[{index}]", partial)
    cidr_found = False
    for index, address in enumerate(_strings(spec.get("addresses"))):
        cidr_found = cidr_found or "/" in address
        problem = _subnet_error(address)
        if problem:
            findings.error(f"spec.addresses[{index}]", problem)
    if cidr_found and resolution not in ("NONE", "STATIC"):
        findings.error("spec.addresses", "CIDR addresses are allowed only for NONE/STATIC resolution types")

    auto_allocate = resource.annotations.get("networking.istio.io/enable-autoallocate-ip") == "true"
    port_names: set[str] = set()
    port_numbers: set[int] = set()
    ports = list(_messages(spec.get("ports"), "spec.ports"))
    for port_path, port in ports:
        name, number = _text(port.get("name")), _integer(port.get("number"))
        protocol = _text(port.get("protocol"))
        if name in port_names:
            findings.error(f"{port_path}.name", f"service entry port name {name!r} already defined")
        if number in port_numbers:
            findings.error(f"{port_path}.number", f"service entry port {number} already defined")
        port_names.add(name)
        port_numbers.add(number)
        target_port = _integer(port.get("targetPort"))
        if target_port:
            problem = _port_error(target_port)
            if problem:
                findings.error(f"{port_path}.targetPort", problem)
            if resolution == "NONE":
                findings.warning(f"{port_path}.targetPort", "targetPort has no effect when resolution mode is NONE")
        if not _strings(spec.get("addresses")) and not auto_allocate and protocol in ("", "TCP"):
            findings.warning(port_path, "addresses are required for ports serving TCP (or unset) protocol when "
                             "ISTIO_META_DNS_AUTO_ALLOCATE is not set on a proxy")
        for problem, where in ((_port_name_error(name), "name"), (_protocol_error(protocol), "protocol"),
                               (_port_error(number), "number")):
            if problem:
                findings.error(f"{port_path}.{where}", problem)

    if resolution == "NONE":
        if _seq(endpoints):
            findings.error("spec.endpoints", "no endpoints should be provided for resolution type none")
        if selector is not None:
            findings.warning("spec.workloadSelector", "workloadSelector should not be set when resolution mode is NONE")
    elif resolution == "STATIC":
        for endpoint_path, endpoint in _messages(endpoints, "spec.endpoints"):
            _workload_entry(endpoint, endpoint_path, findings, port_names, allow_fqdn=False)
    elif resolution in ("DNS", "DNS_ROUND_ROBIN"):
        _dns_service_entry(spec, resolution, host_names, port_names, findings)
    elif resolution == "DYNAMIC_DNS":
        _dynamic_dns_service_entry(spec, host_names, findings)
    if resolution != "NONE" and len(host_names) > 1:
        for port_path, port in ports:
            protocol = parse_protocol(_text(port.get("protocol")))
            if protocol not in HTTP_PROTOCOLS and protocol not in TLS_PROTOCOLS:
                findings.error(port_path, "multiple hosts provided with non-HTTP, non-TLS ports")
                break
    _check_export_to(resource.namespace, spec.get("exportTo"), "spec.exportTo", findings, service_entry=True)


def _dns_service_entry(
    spec: dict[str, Any], resolution: str, hosts: list[str], port_names: set[str], findings: _Findings,
) -> None:
    endpoints = _seq(spec.get("endpoints"))
    if not endpoints:
        for index, host in enumerate(hosts):
            if _fqdn_error(host):
                findings.error(f"spec.hosts[{index}]",
                               f"hosts must be FQDN if no endpoints are provided for resolution mode {resolution}")
    if resolution == "DNS_ROUND_ROBIN" and len(endpoints) > 1:
        findings.error("spec.endpoints", f"there must only be 0 or 1 endpoint for resolution mode {resolution}")
    for endpoint_path, endpoint in _messages(endpoints, "spec.endpoints"):
        address = _text(endpoint.get("address"))
        if not _is_ip(address) and _fqdn_error(address):
            findings.error(f"{endpoint_path}.address", f"endpoint address {address!r} is not a valid FQDN or an IP "
                           "address")
        _check_labels(endpoint.get("labels"), f"{endpoint_path}.labels", findings)
        _endpoint_ports(endpoint, endpoint_path, port_names, findings)
    if spec.get("workloadSelector") is not None:
        findings.warning("spec.workloadSelector", f"workloadSelector should not be set when resolution mode is "
                         f"{resolution}")
    if _strings(spec.get("addresses")):
        for port_path, port in _messages(spec.get("ports"), "spec.ports"):
            if parse_protocol(_text(port.get("protocol"))) in TCP_PROTOCOLS and len(hosts) > 1:
                findings.warning(port_path, "service entry can not have more than one host specified simultaneously "
                                 "with address and tcp port")
                break


def _dynamic_dns_service_entry(spec: dict[str, Any], hosts: list[str], findings: _Findings) -> None:
    resolution = "DYNAMIC_DNS"
    if not hosts:
        findings.error("spec.hosts", f"at least one wildcard host must be provided for resolution type {resolution}")
    for index, host in enumerate(hosts):
        if not hostrules.is_wildcard(host):
            findings.error(f"spec.hosts[{index}]", f"host must be wildcarded for resolution mode {resolution}")
    if _seq(spec.get("addresses")):
        findings.error("spec.addresses", f"addresses cannot be set for resolution type {resolution}. HTTP route "
                       "domains will only be generated from the hosts field values")
    if _seq(spec.get("endpoints")):
        findings.error("spec.endpoints", f"endpoints cannot be set for resolution type {resolution}. Destination IP "
                       "address determined from hosts field values")
    for port_path, port in _messages(spec.get("ports"), "spec.ports"):
        if parse_protocol(_text(port.get("protocol"))) not in ("HTTP", "TLS", "GRPC", "HTTP2"):
            findings.error(f"{port_path}.protocol", "only HTTP, TLS, GRPC, and HTTP2 protocols are supported for "
                           f"resolution type {resolution}")


def _endpoint_ports(endpoint: dict[str, Any], path: str, service_ports: set[str] | None, findings: _Findings) -> None:
    for name, number in _obj(endpoint.get("ports")).items():
        port_path = f"{path}.ports[{name}]"
        if service_ports is not None and name not in service_ports:
            findings.error(port_path, f"endpoint port {number} is not defined by the service entry")
        problem = _port_name_error(str(name))
        if problem:
            findings.error(port_path, problem)
        problem = _port_error(_integer(number))
        if problem:
            findings.error(port_path, problem)


def _workload_entry(
    entry: dict[str, Any], path: str, findings: _Findings, service_ports: set[str] | None, allow_fqdn: bool,
) -> None:
    address = _text(entry.get("address"))
    if not address:
        network = _text(entry.get("network"))
        if not network:
            findings.error(f"{path}.address", "address is required")
            return
        findings.warning(f"{path}.address", f"address is unset with network {network!r}")
    unix_endpoint = address.startswith(UNIX_PREFIX)
    if unix_endpoint:
        problem = _unix_address_error(address[len(UNIX_PREFIX):])
        if problem:
            findings.error(f"{path}.address", problem)
        if _obj(entry.get("ports")):
            findings.error(f"{path}.ports", f"unix endpoint {address} must not include ports")
    elif address and not _is_ip(address):
        if not allow_fqdn:
            findings.error(f"{path}.address", f"endpoint address {address!r} is not a valid IP address")
        elif _fqdn_error(address):
            findings.error(f"{path}.address", f"endpoint address {address!r} is not a valid FQDN or an IP address")
    _endpoint_ports(entry, path, service_ports, findings)
    _check_labels(entry.get("labels"), f"{path}.labels", findings)
    if unix_endpoint and service_ports is not None and len(service_ports) != 1:
        findings.error(path, "exactly 1 service port required for unix endpoints")


def _workload_entry_kind(spec: dict[str, Any], resource: Resource, findings: _Findings) -> None:
    _workload_entry(spec, "spec", findings, service_ports=None, allow_fqdn=True)


# --- Sidecar ------------------------------------------------------------------------------


def _sidecar(spec: dict[str, Any], resource: Resource, findings: _Findings) -> None:
    selector = spec.get("workloadSelector")
    if isinstance(selector, dict) and not _check_selector_labels(selector.get("labels"),
                                                                 "spec.workloadSelector.labels", findings):
        findings.warning("spec.workloadSelector", "sidecar: workload selector specified without labels, will be "
                         "applied to all services in namespace")
    ingress, egress = _seq(spec.get("ingress")), _seq(spec.get("egress"))
    if not ingress and not egress and spec.get("outboundTrafficPolicy") is None and \
            spec.get("inboundConnectionPool") is None:
        findings.error("spec", "sidecar: empty configuration provided")
        return
    ports: set[int] = set()
    for listener_path, listener in _messages(ingress, "spec.ingress"):
        _sidecar_ingress(listener, listener_path, ports, findings)
    if spec.get("inboundConnectionPool") is not None:
        _connection_pool(spec.get("inboundConnectionPool"), "spec.inboundConnectionPool", findings)
    _sidecar_egress(egress, resource.namespace, findings)
    policy = spec.get("outboundTrafficPolicy")
    if isinstance(policy, dict) and policy.get("egressProxy") is not None:
        proxy_path = "spec.outboundTrafficPolicy.egressProxy"
        if policy.get("mode", "REGISTRY_ONLY") != "ALLOW_ANY":
            findings.error(proxy_path, "sidecar: egress_proxy must be set only with ALLOW_ANY outbound_traffic_policy "
                           "mode")
            return
        proxy = _obj(policy.get("egressProxy"))
        problem = _fqdn_error(_text(proxy.get("host")))
        if problem:
            findings.error(f"{proxy_path}.host", problem)
        if proxy.get("port") is None:
            findings.error(f"{proxy_path}.port", "sidecar: egress_proxy port must be non-nil")
            return
        _check_destination(proxy, proxy_path, findings)


def _sidecar_port(port: dict[str, Any], path: str, findings: _Findings) -> None:
    name = _text(port.get("name"))
    if name:
        problem = _port_name_error(name)
        if problem:
            findings.error(f"{path}.name", problem)
    problem = _protocol_error(_text(port.get("protocol")))
    if problem:
        findings.error(f"{path}.protocol", problem)
    if _integer(port.get("targetPort")) > 0:
        findings.error(f"{path}.targetPort", "targetPort has no impact on Sidecars")


def _sidecar_ingress(listener: dict[str, Any], path: str, ports: set[int], findings: _Findings) -> None:
    port = listener.get("port")
    if not isinstance(port, dict):
        return  # missing: reported as a required field
    _sidecar_port(port, f"{path}.port", findings)
    number = _integer(port.get("number"))
    problem = _port_error(number)
    if problem:
        findings.error(f"{path}.port.number", problem)
    bind = _text(listener.get("bind"))
    if bind:
        problem = _ip_error(bind)
        if problem:
            findings.error(f"{path}.bind", problem)
    if number in ports:
        findings.error(f"{path}.port.number", "sidecar: ports on IP bound listeners must be unique")
    ports.add(number)
    endpoint = _text(listener.get("defaultEndpoint"))
    if endpoint:
        for problem in _default_endpoint_errors(endpoint):
            findings.error(f"{path}.defaultEndpoint", problem)
    tls = listener.get("tls")
    if isinstance(tls, dict):
        tls_path = f"{path}.tls"
        if _seq(tls.get("subjectAltNames")):
            findings.error(f"{tls_path}.subjectAltNames", "sidecar: subjectAltNames is not supported in ingress tls")
        if tls.get("httpsRedirect") is True:
            findings.error(f"{tls_path}.httpsRedirect", "sidecar: httpsRedirect is not supported")
        if _text(tls.get("credentialName")):
            findings.error(f"{tls_path}.credentialName", "sidecar: credentialName is not currently supported")
        if tls.get("mode") in ("ISTIO_MUTUAL", "AUTO_PASSTHROUGH"):
            findings.error(f"{tls_path}.mode", f"configuration is invalid: cannot set mode to {tls['mode']} in "
                           "sidecar ingress tls")
        _server_tls(tls, tls_path, findings)
    pool = listener.get("connectionPool")
    if pool is not None:
        _connection_pool(pool, f"{path}.connectionPool", findings)
        protocol = parse_protocol(_text(port.get("protocol")))
        if _obj(pool).get("http") is not None and protocol not in HTTP_PROTOCOLS:
            findings.warning(f"{path}.connectionPool.http",
                             f"sidecar: HTTP connection pool settings are configured for port {number} "
                             f"({_text(port.get('name'))!r}) but its protocol is not HTTP "
                             f"({_text(port.get('protocol'))}); only TCP settings will apply")


def _default_endpoint_errors(endpoint: str) -> list[str]:
    if endpoint.startswith(UNIX_PREFIX):
        problem = _unix_address_error(endpoint[len(UNIX_PREFIX):])
        return [problem] if problem else []
    host, port_text, problem = _split_host_port(endpoint)
    if problem:
        return [problem]
    errors = []
    if host not in ("", "127.0.0.1", "0.0.0.0", "::1", "::"):
        errors.append("sidecar: defaultEndpoint must be of form 127.0.0.1:<port>,0.0.0.0:<port>,[::1]:port,[::]:port,"
                      "unix://filepath or unset")
    if not port_text.isdigit():
        errors.append(f"sidecar: defaultEndpoint port ({port_text}) is not a number")
    else:
        problem = _port_error(int(port_text))
        if problem:
            errors.append(problem)
    return errors


def _split_host_port(address: str) -> tuple[str, str, str | None]:
    """Go's net.SplitHostPort: ``host:port`` or ``[ipv6]:port``."""
    if address.startswith("["):
        end = address.find("]")
        if end < 0:
            return "", "", f"address {address}: missing ']' in address"
        if not address[end + 1:].startswith(":"):
            return "", "", f"address {address}: missing port in address"
        return address[1:end], address[end + 2:], None
    host, colon, port = address.rpartition(":")
    if not colon:
        return "", "", f"address {address}: missing port in address"
    if ":" in host:
        return "", "", f"address {address}: too many colons in address"
    return host, port, None


def _sidecar_egress(egress: list[Any], namespace: str, findings: _Findings) -> None:
    ports: set[int] = set()
    unix_binds: set[str] = set()
    catch_all_found = False
    for index, listener in enumerate(egress):
        if not isinstance(listener, dict):
            continue
        path = f"spec.egress[{index}]"
        port = listener.get("port")
        if port is None:
            if catch_all_found:
                findings.error(path, "sidecar: egress can have only one listener with empty port")
                continue
            if index == len(egress) - 1:
                catch_all_found = True
            else:
                findings.error(path, "sidecar: the egress listener with empty port should be the last listener in the "
                               "list")
        elif isinstance(port, dict):
            _sidecar_port(port, f"{path}.port", findings)
            bind, number = _text(listener.get("bind")), _integer(port.get("number"))
            if number == 0:
                if not bind.startswith(UNIX_PREFIX):
                    findings.error(f"{path}.bind", "sidecar: ports with 0 value must have a unix domain socket bind "
                                   "address")
                else:
                    problem = _unix_address_error(bind[len(UNIX_PREFIX):])
                    if problem:
                        findings.error(f"{path}.bind", problem)
                if listener.get("captureMode", "DEFAULT") not in ("DEFAULT", "NONE"):
                    findings.error(f"{path}.captureMode", "sidecar: captureMode must be DEFAULT/NONE for unix domain "
                                   "socket listeners")
                if bind in unix_binds:
                    findings.error(f"{path}.bind", "sidecar: unix domain socket values for listeners must be unique")
                unix_binds.add(bind)
            else:
                problem = _port_error(number)
                if problem:
                    findings.error(f"{path}.port.number", problem)
                if bind:
                    problem = _ip_error(bind)
                    if problem:
                        findings.error(f"{path}.bind", problem)
                if number in ports:
                    findings.error(f"{path}.port.number", "sidecar: ports on IP bound listeners must be unique")
                ports.add(number)
        _egress_hosts(listener.get("hosts"), f"{path}.hosts", namespace, findings)


def _egress_hosts(hosts: Any, path: str, namespace: str, findings: _Findings) -> None:
    if hosts == []:
        findings.error(path, "sidecar: egress listener must contain at least one host")
        return
    by_namespace: dict[str, set[str]] = {}
    for index, host in enumerate(_seq(hosts)):
        if not isinstance(host, str):
            continue
        host_path = f"{path}[{index}]"
        host_namespace, slash, name = host.partition("/")
        if slash:
            host_namespace = namespace if host_namespace == "." else host_namespace
            names = by_namespace.setdefault(host_namespace, set())
            if (name != "*" and (name in names or "*" in names)) or (name == "*" and names):
                findings.warning(host_path, f"duplicated egress host: {host}")
            names.add(name)
        for problem in _namespaced_host_errors(host, gateway=False):
            findings.error(host_path, problem)
    if "*" in by_namespace.get("*", set()) and len(by_namespace) != 1:
        findings.warning(path, "`*/*` host select all resources, no other hosts can be added")


_KIND_RULES = {
    "VirtualService": _virtual_service,
    "DestinationRule": _destination_rule,
    "Gateway": _gateway,
    "ServiceEntry": _service_entry,
    "WorkloadEntry": _workload_entry_kind,
    "Sidecar": _sidecar,
}


# --- cross-resource analysis --------------------------------------------------------------


class _MeshIndex:
    """What the analysis needs to know about the whole set of resources, resolved to FQDNs."""

    def __init__(self, resources: Sequence[Resource], known_services: set[str] | None, domain_suffix: str,
                 root_namespace: str) -> None:
        self.domain_suffix, self.root_namespace = domain_suffix, root_namespace
        self.known_services = known_services
        self.wildcard_services = [known for known in known_services or () if hostrules.is_wildcard(known)]
        self.namespaces = {resource.namespace for resource in resources}
        for service in known_services or ():
            labels = service.split(".")
            if len(labels) > 2 and labels[2] == "svc":
                self.namespaces.add(labels[1])
        self.gateways = {(r.namespace, r.name) for r in resources if r.kind == "Gateway"}
        self.service_entries = [r for r in resources if r.kind == "ServiceEntry"]
        self.destination_rules = [r for r in resources if r.kind == "DestinationRule"]

    def resolve(self, host: str, namespace: str) -> str:
        return hostrules.resolve_host(host, namespace, self.domain_suffix, self.namespaces)

    def host_exists(self, host: str, from_namespace: str) -> bool:
        if self.known_services is not None:
            if host in self.known_services:
                return True
            candidates = self.known_services if hostrules.is_wildcard(host) else self.wildcard_services
            if any(hostrules.hosts_overlap(host, known) for known in candidates):
                return True
        for entry in self.service_entries:
            if not hostrules.visible(entry, from_namespace, self.root_namespace):
                continue
            if any(hostrules.hosts_overlap(host, entry_host) for entry_host in _strings(entry.spec.get("hosts"))):
                return True
        return False

    def subsets_for(self, host: str, from_namespace: str) -> set[str] | None:
        """Subset names the visible DestinationRules define for ``host``; None when no rule covers it."""
        found: set[str] | None = None
        for rule in self.destination_rules:
            rule_host = rule.spec.get("host")
            if not isinstance(rule_host, str) or not hostrules.visible(rule, from_namespace, self.root_namespace):
                continue
            if not hostrules.host_matches(self.resolve(rule_host, rule.namespace), host):
                continue
            found = found if found is not None else set()
            found.update(_text(subset.get("name")) for _, subset in _messages(rule.spec.get("subsets"), ""))
        return found


def _destinations(spec: dict[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    """Every destination a VirtualService sends (or mirrors) traffic to, with its path."""
    for route_path, route in _messages(spec.get("http"), "spec.http"):
        for destination_path, destination in _messages(route.get("route"), f"{route_path}.route"):
            if isinstance(destination.get("destination"), dict):
                yield f"{destination_path}.destination", destination["destination"]
        if isinstance(route.get("mirror"), dict):
            yield f"{route_path}.mirror", route["mirror"]
        for mirror_path, mirror in _messages(route.get("mirrors"), f"{route_path}.mirrors"):
            if isinstance(mirror.get("destination"), dict):
                yield f"{mirror_path}.destination", mirror["destination"]
    for protocol in ("tls", "tcp"):
        for route_path, route in _messages(spec.get(protocol), f"spec.{protocol}"):
            for destination_path, destination in _messages(route.get("route"), f"{route_path}.route"):
                if isinstance(destination.get("destination"), dict):
                    yield f"{destination_path}.destination", destination["destination"]


def _analyze_virtual_service(resource: Resource, mesh: _MeshIndex, findings: _Findings) -> None:
    spec = resource.spec
    for path, destination in _destinations(spec):
        host = _text(destination.get("host"))
        if not host or host == "*":
            continue
        fqdn = mesh.resolve(host, resource.namespace)
        if mesh.known_services is not None and not mesh.host_exists(fqdn, resource.namespace):
            findings.error(f"{path}.host", f'Referenced host not found: "{host}"', IST_REFERENCED_RESOURCE_NOT_FOUND)
            continue
        subset = _text(destination.get("subset"))
        if subset:
            defined = mesh.subsets_for(fqdn, resource.namespace)
            if defined is None or subset not in defined:
                findings.error(f"{path}.subset", f'Referenced host+subset in destinationrule not found: '
                               f'"{host}+{subset}"', IST_REFERENCED_RESOURCE_NOT_FOUND)
    references = [("spec.gateways", _seq(spec.get("gateways")))]
    for route_kind in ("http", "tls", "tcp"):
        for route_path, route in _messages(spec.get(route_kind), f"spec.{route_kind}"):
            for match_path, match in _messages(route.get("match"), f"{route_path}.match"):
                references.append((f"{match_path}.gateways", _seq(match.get("gateways"))))
    for path, gateways in references:
        for index, gateway in enumerate(gateways):
            if not isinstance(gateway, str) or gateway == MESH_GATEWAY:
                continue
            namespace, name = _gateway_reference(gateway, resource.namespace)
            if (namespace, name) not in mesh.gateways:
                findings.error(f"{path}[{index}]", f'Referenced gateway not found: "{namespace}/{name}"',
                               IST_REFERENCED_RESOURCE_NOT_FOUND)


def _gateway_reference(reference: str, namespace: str) -> tuple[str, str]:
    """``ns/name``, ``name`` (the VirtualService's namespace) or the legacy ``name.ns[.svc...]``."""
    if "/" in reference:
        gateway_namespace, _, name = reference.partition("/")
        return (namespace if gateway_namespace == "." else gateway_namespace), name
    if "." in reference:
        parts = reference.split(".")
        return parts[1], parts[0]
    return namespace, reference


def _analyze_destination_rule(resource: Resource, mesh: _MeshIndex, findings: _Findings) -> None:
    host = resource.spec.get("host")
    if not isinstance(host, str) or resource.spec.get("workloadSelector") is not None:
        return
    fqdn = mesh.resolve(host, resource.namespace)
    for other in mesh.destination_rules:
        if other is resource:
            break  # report each conflict once, on the later rule
        other_host = other.spec.get("host")
        if other.namespace != resource.namespace or not isinstance(other_host, str):
            continue
        if other.spec.get("workloadSelector") is None and mesh.resolve(other_host, other.namespace) == fqdn:
            findings.warning("spec.host", f"multiple DestinationRules for host {fqdn!r} in namespace "
                             f"{resource.namespace!r}: {other.ref} ({other.source}) also configures it; Istio "
                             "merges them and the first one's traffic policy wins", TULLE_CONFLICTING_DESTINATION_RULES)


def _traffic_policies(spec: dict[str, Any]) -> Iterable[tuple[str, dict[str, Any]]]:
    """Every traffic policy of a DestinationRule: the rule's, its subsets', and their port levels."""
    policies = [("spec.trafficPolicy", spec.get("trafficPolicy"))]
    for subset_path, subset in _messages(spec.get("subsets"), "spec.subsets"):
        policies.append((f"{subset_path}.trafficPolicy", subset.get("trafficPolicy")))
    for path, policy in policies:
        if not isinstance(policy, dict):
            continue
        yield path, policy
        yield from _messages(policy.get("portLevelSettings"), f"{path}.portLevelSettings")


def _ca_certificates(resource: Resource, findings: _Findings) -> None:
    """IST0128/IST0129: SIMPLE or MUTUAL TLS without caCertificates does not verify the server."""
    spec = resource.spec
    name, host = f"{resource.namespace}/{resource.name}", _text(spec.get("host"))
    policy = _obj(spec.get("trafficPolicy"))
    levels = [("spec.trafficPolicy.tls", _obj(policy.get("tls")), None)]
    for port_path, port_policy in _messages(policy.get("portLevelSettings"), "spec.trafficPolicy.portLevelSettings"):
        number = _obj(port_policy.get("port")).get("number")
        levels.append((f"{port_path}.tls", _obj(port_policy.get("tls")), f"number:{number}"))
    for path, tls, port in levels:
        mode = tls.get("mode")
        if mode not in ("SIMPLE", "MUTUAL") or _text(tls.get("caCertificates")):
            continue
        if _text(tls.get("credentialName")) and spec.get("workloadSelector") is not None:
            continue
        message = (f"DestinationRule {name} in namespace {resource.namespace} has TLS mode set to {mode} but no "
                   f"caCertificates are set to validate server identity for host: {host}")
        if port is None:
            findings.warning(path, message, IST_NO_SERVER_CERT_VERIFICATION)
        else:
            findings.warning(path, f"{message} at port {port}", IST_NO_SERVER_CERT_VERIFICATION_PORT)


def _set_fields(value: Any, message: Message, path: str) -> Iterable[tuple[str, str, str, Any]]:
    """``(message name, field, path, value)`` for every field set anywhere in a spec, per the schema."""
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        field = message.fields.get(key) if isinstance(key, str) else None
        if field is None or item is None:
            continue
        item_path = f"{path}.{key}"
        yield message.name, key, item_path, item
        kind = field.type
        if isinstance(kind, Ref):
            yield from _set_fields(item, MESSAGES[kind.message], item_path)
        elif isinstance(kind, ListOf) and isinstance(kind.item, Ref):
            for index, element in enumerate(_seq(item)):
                yield from _set_fields(element, MESSAGES[kind.item.message], f"{item_path}[{index}]")
        elif isinstance(kind, MapOf) and isinstance(kind.value, Ref):
            for name, element in _obj(item).items():
                yield from _set_fields(element, MESSAGES[kind.value.message], f"{item_path}[{name}]")


def _tulle_gaps(resource: Resource, findings: _Findings) -> None:
    """What Tulle accepts but does not act on yet, said where it is asked for: settings the control
    plane does not translate (translate/coverage.py, TUL0001), resources nobody serves, and settings
    Tulle proxies cannot honour (TranslateOptions.proxy_lacks of TULLE_PROXY_TODAY, TUL0002)."""
    from tulle.controlplane.translate.coverage import GATEWAY_NOT_SERVED, NOT_TRANSLATED
    from tulle.controlplane.translate.options import LACKABLE, TULLE_PROXY_TODAY

    spec = resource.spec if isinstance(resource.spec, dict) else {}
    if resource.kind == "Gateway":
        findings.warning("spec.servers", GATEWAY_NOT_SERVED, TULLE_NOT_TRANSLATED)
    elif resource.kind == "VirtualService":
        _gateway_bindings(spec, findings)
    if resource.kind in _KIND_RULES:
        for message_name, field_name, path, value in _set_fields(spec, spec_schema(resource.kind), "spec"):
            gap = NOT_TRANSLATED.get((message_name, field_name))
            if gap is not None and gap.applies(value):
                findings.warning(path, f"Tulle does not translate {gap.what} yet: {gap.instead}", TULLE_NOT_TRANSLATED)

    asked: list[tuple[str, str]] = []  # (field path, Envoy field)
    if resource.kind == "DestinationRule":
        for path, policy in _traffic_policies(spec):
            pool = _obj(policy.get("connectionPool"))
            http, tcp = _obj(pool.get("http")), _obj(pool.get("tcp"))
            if http.get("h2UpgradePolicy") == "UPGRADE":
                asked.append((f"{path}.connectionPool.http.h2UpgradePolicy", "http2_protocol_options"))
            if tcp.get("tcpKeepalive") is not None:
                asked.append((f"{path}.connectionPool.tcp.tcpKeepalive", "upstream_connection_options"))
            if tcp.get("maxConnectionDuration") is not None:
                asked.append((f"{path}.connectionPool.tcp.maxConnectionDuration", "max_connection_duration"))
            if _obj(policy.get("loadBalancer")).get("warmupDurationSecs") is not None:
                asked.append((f"{path}.loadBalancer.warmupDurationSecs", "slow_start_config"))
    elif resource.kind == "VirtualService":
        for route_path, route in _messages(spec.get("http"), "spec.http"):
            if _obj(route.get("retries")).get("retryRemoteLocalities") is True:
                asked.append((f"{route_path}.retries.retryRemoteLocalities", "retry_priority"))
    for path, envoy_field in asked:
        if envoy_field in TULLE_PROXY_TODAY.proxy_lacks:
            what, instead = LACKABLE[envoy_field]
            findings.warning(path, f"Tulle proxies do not support {what} yet ({envoy_field}): they get {instead}; "
                             "Envoy sidecars honour it", TULLE_PROXY_LACKS)


def _gateway_bindings(spec: dict[str, Any], findings: _Findings) -> None:
    """Routes bound to gateways reach no proxy while Tulle serves sidecars only."""
    gateways = _strings(spec.get("gateways"))
    named = [gateway for gateway in gateways if gateway != MESH_GATEWAY]
    if named and MESH_GATEWAY not in gateways:
        findings.warning("spec.gateways", f"this VirtualService is bound only to gateways ({', '.join(named)}), which "
                         "Tulle does not serve yet: no proxy receives its routes", TULLE_NOT_TRANSLATED)
        return
    if named:
        findings.warning("spec.gateways", f"Tulle does not serve gateways yet: sidecars get this VirtualService's "
                         f"routes, {', '.join(named)} gets nothing", TULLE_NOT_TRANSLATED)
    for route_kind in ("http", "tcp", "tls"):
        for route_path, route in _messages(spec.get(route_kind), f"spec.{route_kind}"):
            for match_path, match in _messages(route.get("match"), f"{route_path}.match"):
                bound = _strings(match.get("gateways"))
                if bound and MESH_GATEWAY not in bound:
                    findings.warning(f"{match_path}.gateways", f"this match applies only at gateways "
                                     f"({', '.join(bound)}), which Tulle does not serve yet: no proxy uses it",
                                     TULLE_NOT_TRANSLATED)


def _conflicting_mesh_virtual_services(resources: Sequence[Resource], mesh: _MeshIndex) -> list[Diagnostic]:
    """IST0109: VirtualServices bound to the mesh that claim the same host in the same namespace scope.

    ``resources`` hold each resource once (its last definition); a VirtualService naming the host
    twice (``reviews`` and its FQDN) counts once, so each is listed and reported once per host.
    """
    claims: dict[tuple[str, str], dict[str, Resource]] = {}
    for resource in resources:
        if resource.kind != "VirtualService":
            continue
        gateways = _seq(resource.spec.get("gateways"))
        if gateways and MESH_GATEWAY not in gateways:
            continue
        # Only VirtualServices seen by the same namespaces conflict.
        exported = ",".join(sorted({resource.namespace if entry == hostrules.EXPORT_PRIVATE else entry
                                    for entry in hostrules.export_to(resource)}))
        for host in _strings(resource.spec.get("hosts")):
            key = (mesh.resolve(host, resource.namespace), exported)
            claims.setdefault(key, {})[f"{resource.namespace}/{resource.name}"] = resource
    diagnostics = []
    for (host, _), claimants in sorted(claims.items()):
        if len(claimants) < 2:
            continue
        names = ",".join(sorted(claimants))
        for resource in claimants.values():
            diagnostics.append(Diagnostic(
                ERROR, resource.ref, "spec.hosts",
                f"The VirtualServices {names} associated with mesh gateway define the same host {host} which "
                "can lead to undefined behavior. This can be fixed by merging the conflicting VirtualServices into a "
                "single resource.", resource.source, IST_CONFLICTING_MESH_GATEWAY_HOSTS))
    return diagnostics


def _duplicate_resources(resources: Sequence[Resource]) -> list[Diagnostic]:
    first_seen: dict[tuple[str, str, str], Resource] = {}
    diagnostics = []
    for resource in resources:
        key = (resource.kind, resource.namespace, resource.name)
        if key in first_seen:
            diagnostics.append(Diagnostic(
                WARNING, resource.ref, "metadata.name",
                f"defined more than once (also at {first_seen[key].source}); the last definition wins",
                resource.source, TULLE_DUPLICATE_RESOURCE))
        else:
            first_seen[key] = resource
    return diagnostics
