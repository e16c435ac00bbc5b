"""Supported Istio kinds, their API versions, and the field schema of each spec.

The schema mirrors istio/api ``networking/v1alpha3`` (``v1beta1`` and ``v1`` serve the same
messages), in the camelCase JSON names users write, as Istio's CRDs carry it
(istio/istio ``manifests/charts/base/files/crd-all.gen.yaml`` at commit 86c9f01fd735, the one
``shared/conformance/istio-validation`` comes from, with istio.io/api 5803fb6accf7). It drives the
structural half of validation (unknown fields, types, enums, ranges, required fields, oneofs);
the rules Istio's validation webhook adds on top live in ``validation.py``.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from enum import Enum

NETWORKING_GROUP = "networking.istio.io"
NETWORKING_VERSIONS = ("v1", "v1beta1", "v1alpha3")
NETWORKING_KINDS = ("VirtualService", "DestinationRule", "Gateway", "ServiceEntry", "WorkloadEntry", "Sidecar")
# Kinds whose CRD requires ``spec`` (``required: [spec]``): a document without one is refused.
SPEC_REQUIRED = frozenset({"ServiceEntry", "WorkloadEntry"})
# Istio kinds Tulle does not read yet, to say "not yet" instead of "unknown".
NOT_YET_SUPPORTED = {
    "AuthorizationPolicy": "security.istio.io",
    "PeerAuthentication": "security.istio.io",
    "RequestAuthentication": "security.istio.io",
    "EnvoyFilter": NETWORKING_GROUP,
    "WorkloadGroup": NETWORKING_GROUP,
    "ProxyConfig": NETWORKING_GROUP,
    "Telemetry": "telemetry.istio.io",
    "WasmPlugin": "extensions.istio.io",
}


# Tulle's own kind for the service registry (registry/registry.py validates its spec): `tulle apply`
# takes it beside Istio's kinds, so `tulle analyze` does too.
REGISTRY_SERVICE = ("Service", "registry.tulle.dev/v1")
_KUBERNETES_VERSION = re.compile(r"v[1-9][0-9]*(?:(?:alpha|beta)[1-9][0-9]*)?")
# What to use instead of a Kubernetes kind Tulle does not read.
_KUBERNETES_INSTEAD = {
    "Service": "register services with `tulle register service` or use a ServiceEntry",
    "Endpoints": "register instances with `tulle register instance` or use a WorkloadEntry",
    "EndpointSlice": "register instances with `tulle register instance` or use a WorkloadEntry",
    "Pod": "register instances with `tulle register instance` or use a WorkloadEntry",
}


def supported_api_versions() -> list[str]:
    return [f"{NETWORKING_GROUP}/{version}" for version in NETWORKING_VERSIONS]


def is_kubernetes_api_version(api_version: str) -> bool:
    """Kubernetes' own groups: the core group (``v1``), dotless groups (``apps/v1``) and ``*.k8s.io``."""
    group, _, version = api_version.rpartition("/")
    return bool(_KUBERNETES_VERSION.fullmatch(version)) and ("." not in group or group.endswith(".k8s.io"))


def check_kind(kind: str, api_version: str) -> tuple[str, str] | None:
    """``(field, message)`` when Tulle does not read ``kind``/``api_version``, else None.

    The one judgement of a document's kind: ``tulle analyze`` (validation) and ``tulle apply``
    (the HTTP API) both ask it, so both say the same thing.
    """
    versions = ", ".join(supported_api_versions())
    readable = (f"Tulle reads {', '.join(sorted(NETWORKING_KINDS))} ({versions}) and "
                f"{REGISTRY_SERVICE[0]} ({REGISTRY_SERVICE[1]})")
    if (kind, api_version) == REGISTRY_SERVICE:
        return None
    if kind in NETWORKING_KINDS:
        if api_version in supported_api_versions():
            return None
        what = " (a Kubernetes API, which Tulle does not read)" if is_kubernetes_api_version(api_version) else ""
        return "apiVersion", f"unsupported apiVersion {api_version!r} for {kind}{what}; supported: {versions}"
    if is_kubernetes_api_version(api_version):
        instead = _KUBERNETES_INSTEAD.get(kind, readable)
        return "kind", f"{kind} ({api_version}) is a Kubernetes kind Tulle does not read: {instead}"
    if kind == REGISTRY_SERVICE[0]:
        return "apiVersion", (f"unsupported apiVersion {api_version!r} for {kind}: Tulle's registry Service is "
                              f"{REGISTRY_SERVICE[1]}; for Istio's API use a ServiceEntry")
    if kind in NOT_YET_SUPPORTED:
        return "kind", f"kind {kind} ({NOT_YET_SUPPORTED[kind]}) is not supported yet; {readable}"
    close = difflib.get_close_matches(kind, NETWORKING_KINDS, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return "kind", f"unsupported kind {kind!r}{hint}; {readable}"


# --- schema -------------------------------------------------------------------------------


class Scalar(Enum):
    STRING = "string"
    BOOL = "boolean"
    INT32 = "int32"
    UINT32 = "uint32"
    UINT64 = "uint64"
    DOUBLE = "number"
    DURATION = "duration"  # Istio requires >= 1ms and millisecond precision
    ANY_DURATION = "duration (any)"  # syntax only, e.g. a cookie TTL where 0s means "session"
    BYTES = "bytes"  # base64 text


@dataclass(frozen=True)
class EnumOf:
    values: tuple[str, ...]


@dataclass(frozen=True)
class ListOf:
    item: FieldType


@dataclass(frozen=True)
class MapOf:
    """A map from string keys to ``value`` (proto ``map<string, ...>``)."""

    value: FieldType


@dataclass(frozen=True)
class Range:
    """A number with the CRD's ``minimum``/``maximum`` (inclusive; None: that side is open)."""

    kind: Scalar
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class Ref:
    """A nested message, by its name in ``MESSAGES``."""

    message: str


FieldType = Scalar | Range | EnumOf | ListOf | MapOf | Ref


@dataclass(frozen=True)
class Field:
    type: FieldType
    required: bool = False
    deprecated: str = ""  # why / what to use instead; setting it draws a warning


@dataclass(frozen=True)
class Message:
    name: str
    fields: dict[str, Field]
    oneofs: tuple[tuple[str, ...], ...] = field(default=())


MESSAGES: dict[str, Message] = {}


def _message(name: str, fields: dict[str, Field], *oneofs: tuple[str, ...]) -> None:
    MESSAGES[name] = Message(name, fields, tuple(oneofs))


def _f(kind: FieldType, required: bool = False, deprecated: str = "") -> Field:
    return Field(kind, required, deprecated)


STRING, BOOL, INT32, UINT32 = Scalar.STRING, Scalar.BOOL, Scalar.INT32, Scalar.UINT32
UINT64, DOUBLE, DURATION = Scalar.UINT64, Scalar.DOUBLE, Scalar.DURATION
STRINGS = ListOf(STRING)
STRING_MAP = MapOf(STRING)

# Shared by several kinds.
_message("PortSelector", {"number": _f(UINT32)})
_message("Percent", {"value": _f(DOUBLE)})
_message("Destination", {"host": _f(STRING, True), "subset": _f(STRING), "port": _f(Ref("PortSelector"))})
_message("StringMatch", {"exact": _f(STRING), "prefix": _f(STRING), "regex": _f(STRING)},
         ("exact", "prefix", "regex"))
_message("WorkloadSelector", {"labels": _f(STRING_MAP)})
_message("TypeWorkloadSelector", {"matchLabels": _f(STRING_MAP)})  # istio.type.v1beta1.WorkloadSelector
_message("HeaderOperations", {"set": _f(STRING_MAP), "add": _f(STRING_MAP), "remove": _f(STRINGS)})
_message("Headers", {"request": _f(Ref("HeaderOperations")), "response": _f(Ref("HeaderOperations"))})

# VirtualService
_message("VirtualService", {
    "hosts": _f(STRINGS),
    "gateways": _f(STRINGS),
    "http": _f(ListOf(Ref("HTTPRoute"))),
    "tls": _f(ListOf(Ref("TLSRoute"))),
    "tcp": _f(ListOf(Ref("TCPRoute"))),
    "exportTo": _f(STRINGS),
})
_message("HTTPRoute", {
    "name": _f(STRING),
    "match": _f(ListOf(Ref("HTTPMatchRequest"))),
    "route": _f(ListOf(Ref("HTTPRouteDestination"))),
    "redirect": _f(Ref("HTTPRedirect")),
    "directResponse": _f(Ref("HTTPDirectResponse")),
    "delegate": _f(Ref("Delegate")),
    "rewrite": _f(Ref("HTTPRewrite")),
    "timeout": _f(DURATION),
    "retries": _f(Ref("HTTPRetry")),
    "fault": _f(Ref("HTTPFaultInjection")),
    "mirror": _f(Ref("Destination")),
    "mirrors": _f(ListOf(Ref("HTTPMirrorPolicy"))),
    "mirrorPercent": _f(UINT32, deprecated='using deprecated setting "mirrorPercent", use "mirrorPercentage" instead'),
    # The proto's original name: protobuf JSON (and so the CRD) accepts it too.
    "mirror_percent": _f(UINT32, deprecated='using deprecated setting "mirrorPercent", use "mirrorPercentage" instead'),
    "mirrorPercentage": _f(Ref("Percent")),
    "corsPolicy": _f(Ref("CorsPolicy")),
    "headers": _f(Ref("Headers")),
})
_message("Delegate", {"name": _f(STRING), "namespace": _f(STRING)})
_message("HTTPMatchRequest", {
    "name": _f(STRING),
    "uri": _f(Ref("StringMatch")),
    "scheme": _f(Ref("StringMatch")),
    "method": _f(Ref("StringMatch")),
    "authority": _f(Ref("StringMatch")),
    "headers": _f(MapOf(Ref("StringMatch"))),
    "port": _f(UINT32),
    "sourceLabels": _f(STRING_MAP),
    "gateways": _f(STRINGS),
    "queryParams": _f(MapOf(Ref("StringMatch"))),
    "ignoreUriCase": _f(BOOL),
    "withoutHeaders": _f(MapOf(Ref("StringMatch"))),
    "sourceNamespace": _f(STRING),
    "statPrefix": _f(STRING),
})
_message("HTTPRouteDestination", {
    "destination": _f(Ref("Destination"), True), "weight": _f(INT32), "headers": _f(Ref("Headers")),
})
_message("RouteDestination", {"destination": _f(Ref("Destination"), True), "weight": _f(INT32)})
_message("L4MatchAttributes", {
    "destinationSubnets": _f(STRINGS),
    "port": _f(UINT32),
    "sourceLabels": _f(STRING_MAP),
    "gateways": _f(STRINGS),
    "sourceNamespace": _f(STRING),
    "sourceSubnet": _f(STRING),
})
_message("TLSMatchAttributes", {
    "sniHosts": _f(STRINGS, True),
    "destinationSubnets": _f(STRINGS),
    "port": _f(UINT32),
    "sourceLabels": _f(STRING_MAP),
    "gateways": _f(STRINGS),
    "sourceNamespace": _f(STRING),
})
_message("TLSRoute", {"match": _f(ListOf(Ref("TLSMatchAttributes")), True),
                      "route": _f(ListOf(Ref("RouteDestination")))})
_message("TCPRoute", {"match": _f(ListOf(Ref("L4MatchAttributes"))), "route": _f(ListOf(Ref("RouteDestination")))})
_message("HTTPRedirect", {
    "uri": _f(STRING),
    "prefixRewrite": _f(STRING),
    "authority": _f(STRING),
    "port": _f(UINT32),
    "derivePort": _f(EnumOf(("FROM_PROTOCOL_DEFAULT", "FROM_REQUEST_PORT"))),
    "scheme": _f(STRING),
    "redirectCode": _f(UINT32),
}, ("port", "derivePort"))
_message("HTTPDirectResponse", {"status": _f(UINT32, True), "body": _f(Ref("HTTPBody"))})
_message("HTTPBody", {"string": _f(STRING), "bytes": _f(Scalar.BYTES)}, ("string", "bytes"))
_message("HTTPRewrite", {"uri": _f(STRING), "authority": _f(STRING), "uriRegexRewrite": _f(Ref("RegexRewrite"))})
_message("RegexRewrite", {"match": _f(STRING), "rewrite": _f(STRING)})
_message("HTTPRetry", {
    "attempts": _f(INT32),
    "perTryTimeout": _f(DURATION),
    "retryOn": _f(STRING),
    "retryRemoteLocalities": _f(BOOL),
    "retryIgnorePreviousHosts": _f(BOOL),
    "backoff": _f(DURATION),
})
_message("CorsPolicy", {
    "allowOrigin": _f(STRINGS, deprecated='"allowOrigin" is deprecated, use "allowOrigins"'),
    "allowOrigins": _f(ListOf(Ref("StringMatch"))),
    "allowMethods": _f(STRINGS),
    "allowHeaders": _f(STRINGS),
    "exposeHeaders": _f(STRINGS),
    "maxAge": _f(DURATION),
    "allowCredentials": _f(BOOL),
    "unmatchedPreflights": _f(EnumOf(("UNSPECIFIED", "FORWARD", "IGNORE"))),
})
_message("HTTPFaultInjection", {"delay": _f(Ref("Delay")), "abort": _f(Ref("Abort"))})
_message("Delay", {
    "percent": _f(INT32, deprecated='"percent" is deprecated, use "percentage"'),
    "fixedDelay": _f(DURATION),
    "exponentialDelay": _f(DURATION),
    "percentage": _f(Ref("Percent")),
}, ("fixedDelay", "exponentialDelay"))
_message("Abort", {
    "httpStatus": _f(INT32),
    "grpcStatus": _f(STRING),
    "http2Error": _f(STRING),
    "percentage": _f(Ref("Percent")),
}, ("httpStatus", "grpcStatus", "http2Error"))
_message("HTTPMirrorPolicy", {"destination": _f(Ref("Destination"), True), "percentage": _f(Ref("Percent"))})

# DestinationRule
_message("DestinationRule", {
    "host": _f(STRING, True),
    "trafficPolicy": _f(Ref("TrafficPolicy")),
    "subsets": _f(ListOf(Ref("Subset"))),
    "exportTo": _f(STRINGS),
    "workloadSelector": _f(Ref("TypeWorkloadSelector")),
})
_POLICY_FIELDS = {
    "loadBalancer": _f(Ref("LoadBalancerSettings")),
    "connectionPool": _f(Ref("ConnectionPoolSettings")),
    "outlierDetection": _f(Ref("OutlierDetection")),
    "tls": _f(Ref("ClientTLSSettings")),
}
_message("TrafficPolicy", {
    **_POLICY_FIELDS,
    "portLevelSettings": _f(ListOf(Ref("PortTrafficPolicy"))),
    "tunnel": _f(Ref("TunnelSettings")),
    "proxyProtocol": _f(Ref("ProxyProtocol")),
    "retryBudget": _f(Ref("RetryBudget")),
})
_message("RetryBudget", {"percent": _f(Range(DOUBLE, 0, 100)), "minRetryConcurrency": _f(UINT32),
                         "budgetInterval": _f(Scalar.ANY_DURATION)})
_message("PortTrafficPolicy", {"port": _f(Ref("PortSelector")), **_POLICY_FIELDS})
_message("TunnelSettings", {"protocol": _f(STRING), "targetHost": _f(STRING, True), "targetPort": _f(UINT32, True)})
_message("ProxyProtocol", {"version": _f(EnumOf(("V1", "V2")))})
_message("Subset", {"name": _f(STRING, True), "labels": _f(STRING_MAP), "trafficPolicy": _f(Ref("TrafficPolicy"))})
_message("LoadBalancerSettings", {
    "simple": _f(EnumOf(("UNSPECIFIED", "LEAST_CONN", "RANDOM", "PASSTHROUGH", "ROUND_ROBIN", "LEAST_REQUEST"))),
    "consistentHash": _f(Ref("ConsistentHashLB")),
    "localityLbSetting": _f(Ref("LocalityLoadBalancerSetting")),
    "zoneAwareLbSetting": _f(Ref("ZoneAwareLoadBalancerSetting")),
    "backendUtilization": _f(Ref("BackendUtilizationLoadBalancerConfig")),
    "warmupDurationSecs": _f(DURATION),
    "warmup": _f(Ref("WarmupConfiguration")),
}, ("simple", "consistentHash", "backendUtilization"))
_message("WarmupConfiguration", {"duration": _f(DURATION, True), "minimumPercent": _f(Range(DOUBLE, 0, 100)),
                                 "aggression": _f(Range(DOUBLE, 0))})
_message("ZoneAwareLoadBalancerSetting", {
    "enabled": _f(BOOL),
    "failover": _f(ListOf(Ref("LocalityFailover"))),
    "failoverPriority": _f(STRINGS),
    "minClusterSize": _f(Range(UINT64, 1, 2**32 - 1)),
})
_message("BackendUtilizationLoadBalancerConfig", {
    "errorUtilizationPenaltyPercent": _f(UINT32),
    "metricNamesForComputingUtilization": _f(STRINGS),
    "weightExpirationPeriod": _f(Scalar.ANY_DURATION),
    "weightStabilizationPeriod": _f(Scalar.ANY_DURATION),
    "weightUpdatePeriod": _f(Scalar.ANY_DURATION),
})
_message("ConsistentHashLB", {
    "httpHeaderName": _f(STRING),
    "httpCookie": _f(Ref("HTTPCookie")),
    "useSourceIp": _f(BOOL),
    "httpQueryParameterName": _f(STRING),
    "ringHash": _f(Ref("RingHash")),
    "maglev": _f(Ref("MagLev")),
    "minimumRingSize": _f(UINT64),  # deprecated; validation explains (Istio's wording)
}, ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName"), ("ringHash", "maglev"))
_message("HTTPCookie", {"name": _f(STRING, True), "path": _f(STRING), "ttl": _f(Scalar.ANY_DURATION),
                        "attributes": _f(ListOf(Ref("CookieAttribute")))})
_message("CookieAttribute", {"name": _f(STRING, True), "value": _f(STRING)})
_message("RingHash", {"minimumRingSize": _f(UINT64)})
_message("MagLev", {"tableSize": _f(UINT64)})
_message("LocalityLoadBalancerSetting", {
    "distribute": _f(ListOf(Ref("LocalityDistribute"))),
    "failover": _f(ListOf(Ref("LocalityFailover"))),
    "failoverPriority": _f(STRINGS),
    "enabled": _f(BOOL),
})
_message("LocalityDistribute", {"from": _f(STRING), "to": _f(MapOf(UINT32))})
_message("LocalityFailover", {"from": _f(STRING), "to": _f(STRING)})
_message("ConnectionPoolSettings", {"tcp": _f(Ref("TCPSettings")), "http": _f(Ref("HTTPSettings"))})
_message("TCPSettings", {
    "maxConnections": _f(INT32),
    "connectTimeout": _f(DURATION),
    "tcpKeepalive": _f(Ref("TcpKeepalive")),
    "maxConnectionDuration": _f(DURATION),
    "idleTimeout": _f(DURATION),
})
_message("TcpKeepalive", {"probes": _f(UINT32), "time": _f(DURATION), "interval": _f(DURATION)})
_message("HTTPSettings", {
    "http1MaxPendingRequests": _f(INT32),
    "http2MaxRequests": _f(INT32),
    "maxRequestsPerConnection": _f(INT32),
    "maxRetries": _f(INT32),
    "idleTimeout": _f(DURATION),
    "h2UpgradePolicy": _f(EnumOf(("DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"))),
    "useClientProtocol": _f(BOOL),
    "maxConcurrentStreams": _f(INT32),
    "http2KeepAlive": _f(Ref("ConnectionKeepalive")),
})
_message("ConnectionKeepalive", {"interval": _f(DURATION), "timeout": _f(DURATION)})
_message("OutlierDetection", {
    "splitExternalLocalOriginErrors": _f(BOOL),
    "consecutiveLocalOriginFailures": _f(UINT32),
    "consecutiveGatewayErrors": _f(UINT32),
    "consecutive5xxErrors": _f(UINT32),
    "interval": _f(DURATION),
    "baseEjectionTime": _f(DURATION),
    "maxEjectionPercent": _f(INT32),
    "minHealthPercent": _f(INT32),
    "consecutiveErrors": _f(INT32),  # deprecated; validation explains (Istio's wording)
    "outlierDetectionHttpErrorCodes": _f(ListOf(Range(UINT32, 100, 599))),
})
_message("ClientTLSSettings", {
    "mode": _f(EnumOf(("DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"))),
    "clientCertificate": _f(STRING),
    "privateKey": _f(STRING),
    "caCertificates": _f(STRING),
    "credentialName": _f(STRING),
    "subjectAltNames": _f(STRINGS),
    "sni": _f(STRING),
    "insecureSkipVerify": _f(BOOL),
    "caCrl": _f(STRING),
})

# Gateway
TLS_PROTOCOL_VERSIONS = ("TLS_AUTO", "TLSV1_0", "TLSV1_1", "TLSV1_2", "TLSV1_3")
_message("Gateway", {"servers": _f(ListOf(Ref("Server")), True), "selector": _f(STRING_MAP)})
_message("Server", {
    "port": _f(Ref("Port"), True),
    "bind": _f(STRING),
    "hosts": _f(STRINGS, True),
    "tls": _f(Ref("ServerTLSSettings")),
    "defaultEndpoint": _f(STRING),
    "name": _f(STRING),
})
# The CRD requires number; a server bound to a unix socket writes number: 0.
_message("Port", {"number": _f(UINT32, True), "protocol": _f(STRING, True), "name": _f(STRING, True),
                  "targetPort": _f(UINT32)})
_message("ServerTLSSettings", {
    "httpsRedirect": _f(BOOL),
    "mode": _f(EnumOf(("PASSTHROUGH", "SIMPLE", "MUTUAL", "AUTO_PASSTHROUGH", "ISTIO_MUTUAL", "OPTIONAL_MUTUAL"))),
    "serverCertificate": _f(STRING),
    "privateKey": _f(STRING),
    "caCertificates": _f(STRING),
    "caCrl": _f(STRING),
    "credentialName": _f(STRING),
    "credentialNames": _f(STRINGS),
    "caCertCredentialName": _f(STRING),
    "tlsCertificates": _f(ListOf(Ref("TLSCertificate"))),
    "subjectAltNames": _f(STRINGS),
    "verifyCertificateSpki": _f(STRINGS),
    "verifyCertificateHash": _f(STRINGS),
    "minProtocolVersion": _f(EnumOf(TLS_PROTOCOL_VERSIONS)),
    "maxProtocolVersion": _f(EnumOf(TLS_PROTOCOL_VERSIONS)),
    "cipherSuites": _f(STRINGS),
    "ecdhCurves": _f(STRINGS),
    "insecureSkipVerify": _f(BOOL),
})
_message("TLSCertificate", {"serverCertificate": _f(STRING), "privateKey": _f(STRING),
                            "caCertificates": _f(STRING)})

# ServiceEntry and WorkloadEntry
_message("ServiceEntry", {
    "hosts": _f(STRINGS, True),
    "addresses": _f(STRINGS),
    "ports": _f(ListOf(Ref("ServicePort"))),
    "location": _f(EnumOf(("MESH_EXTERNAL", "MESH_INTERNAL"))),
    "resolution": _f(EnumOf(("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS"))),
    "endpoints": _f(ListOf(Ref("WorkloadEntry"))),
    "workloadSelector": _f(Ref("WorkloadSelector")),
    "exportTo": _f(STRINGS),
    "subjectAltNames": _f(STRINGS),
})
_message("ServicePort", {"number": _f(UINT32, True), "protocol": _f(STRING), "name": _f(STRING, True),
                         "targetPort": _f(UINT32)})
_message("WorkloadEntry", {
    "address": _f(STRING),
    "ports": _f(MapOf(UINT32)),
    "labels": _f(STRING_MAP),
    "network": _f(STRING),
    "locality": _f(STRING),
    "weight": _f(UINT32),
    "serviceAccount": _f(STRING),
})

# Sidecar
CAPTURE_MODES = EnumOf(("DEFAULT", "IPTABLES", "NONE"))
_message("Sidecar", {
    "workloadSelector": _f(Ref("WorkloadSelector")),
    "ingress": _f(ListOf(Ref("IstioIngressListener"))),
    "egress": _f(ListOf(Ref("IstioEgressListener"))),
    "inboundConnectionPool": _f(Ref("ConnectionPoolSettings")),
    "outboundTrafficPolicy": _f(Ref("OutboundTrafficPolicy")),
})
_message("IstioIngressListener", {
    "port": _f(Ref("SidecarPort"), True),
    "bind": _f(STRING),
    "captureMode": _f(CAPTURE_MODES),
    "defaultEndpoint": _f(STRING),
    "tls": _f(Ref("ServerTLSSettings")),
    "connectionPool": _f(Ref("ConnectionPoolSettings")),
})
_message("IstioEgressListener", {
    "port": _f(Ref("SidecarPort")),
    "bind": _f(STRING),
    "captureMode": _f(CAPTURE_MODES),
    "hosts": _f(STRINGS, True),
})
_message("SidecarPort", {"number": _f(UINT32), "protocol": _f(STRING), "name": _f(STRING),
                         "targetPort": _f(UINT32)})
_message("OutboundTrafficPolicy", {
    "mode": _f(EnumOf(("REGISTRY_ONLY", "ALLOW_ANY"))),
    "egressProxy": _f(Ref("Destination")),
})


def spec_schema(kind: str) -> Message:
    """The schema of ``spec`` for a supported kind (the top-level message has the kind's name)."""
    return MESSAGES[kind]
