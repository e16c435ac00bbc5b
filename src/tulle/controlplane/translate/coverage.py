"""What the translation does not turn into xDS yet, so that nothing is accepted and silently ignored.

Istio's API is accepted whole (istio/kinds.py), but some settings have no translation yet. Each is
listed here by the schema message and field that carry it; istio/validation.py warns (TUL0001)
wherever a resource sets one, on ``tulle apply`` and ``tulle analyze`` alike. A setting the
translation produces but Tulle proxies cannot honour yet is ``options.LACKABLE`` instead (TUL0002).
Remove an entry in the change that translates the setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def _always(value: Any) -> bool:
    return True


def _tls_originated(value: Any) -> bool:
    return isinstance(value, dict) and value.get("mode", "DISABLE") != "DISABLE"


@dataclass(frozen=True)
class Untranslated:
    what: str  # the setting, as a user would name it
    instead: str  # what every proxy gets instead
    applies: Callable[[Any], bool] = _always  # whether this value of the field asks for something


_TLS = Untranslated("TLS origination (tls)", "clusters get no transport socket, so traffic to this host is sent in "
                    "plaintext", _tls_originated)
_BIND = Untranslated("listener bind addresses and capture modes",
                     "Tulle sidecars bind the workload's own loopback address and capture nothing (no iptables)")
_SUBNETS = Untranslated("matching on subnets", "the match applies whatever the addresses")

# (schema message, field) -> what happens instead.
NOT_TRANSLATED: dict[tuple[str, str], Untranslated] = {
    # DestinationRule
    ("TrafficPolicy", "tls"): _TLS,
    ("PortTrafficPolicy", "tls"): _TLS,
    ("TrafficPolicy", "tunnel"): Untranslated("tunneling (tunnel)", "connections go to the destination directly"),
    ("TrafficPolicy", "proxyProtocol"): Untranslated("the PROXY protocol (proxyProtocol)",
                                                     "upstream connections carry no PROXY protocol header"),
    ("TrafficPolicy", "retryBudget"): Untranslated("retry budgets (retryBudget)",
                                                   "clusters get Istio's default retry limits only"),
    ("HTTPSettings", "http2KeepAlive"): Untranslated("HTTP/2 keepalive pings (http2KeepAlive)",
                                                     "upstream HTTP/2 connections are not pinged"),
    ("LoadBalancerSettings", "warmup"): Untranslated("warmup (warmup)", "new endpoints get their full share at once"),
    ("LoadBalancerSettings", "zoneAwareLbSetting"): Untranslated("zone-aware load balancing (zoneAwareLbSetting)",
                                                                 "endpoints are balanced without zone awareness"),
    ("LoadBalancerSettings", "backendUtilization"): Untranslated(
        "load balancing by backend utilization (backendUtilization)", "the cluster keeps the default load balancer"),
    ("OutlierDetection", "outlierDetectionHttpErrorCodes"): Untranslated(
        "ejection on chosen HTTP status codes (outlierDetectionHttpErrorCodes)",
        "only the consecutive error counts eject hosts"),
    ("HTTPCookie", "attributes"): Untranslated("cookie attributes", "the hash cookie is set without them"),
    # VirtualService
    ("VirtualService", "tls"): Untranslated("TLS routes (tls)", "TLS connections go to the service they are "
                                            "addressed to, whatever their SNI"),
    ("HTTPRoute", "delegate"): Untranslated("delegation to another VirtualService (delegate)",
                                            "this route is left out of every proxy's routes"),
    ("HTTPRoute", "mirror_percent"): Untranslated("mirror_percent (the proto name of mirrorPercent)",
                                                  "the mirror gets every request; write mirrorPercentage"),
    ("HTTPRedirect", "prefixRewrite"): Untranslated("prefix rewriting in redirects (prefixRewrite)",
                                                    "the redirect keeps the request's path"),
    ("HTTPMatchRequest", "statPrefix"): Untranslated("per-route stat prefixes (statPrefix)",
                                                     "the route's stats carry no prefix"),
    ("L4MatchAttributes", "destinationSubnets"): _SUBNETS,
    ("L4MatchAttributes", "sourceSubnet"): _SUBNETS,
    # ServiceEntry and WorkloadEntry
    ("ServiceEntry", "subjectAltNames"): Untranslated("server identity checks (subjectAltNames)",
                                                      "no proxy verifies these identities"),
    ("WorkloadEntry", "network"): Untranslated("multi-network routing (network)", "the endpoint is reached directly"),
    # Sidecar
    ("Sidecar", "outboundTrafficPolicy"): Untranslated("outboundTrafficPolicy", "it has no effect"),
    ("IstioIngressListener", "bind"): _BIND,
    ("IstioIngressListener", "captureMode"): _BIND,
    ("IstioIngressListener", "defaultEndpoint"): Untranslated(
        "ingress defaultEndpoint", "inbound traffic goes to the app port of the sidecar's APP_PORTS (or the same "
        "port)"),
    ("IstioIngressListener", "tls"): Untranslated("inbound TLS termination (tls)", "inbound traffic is plaintext"),
    ("IstioEgressListener", "bind"): _BIND,
    ("IstioEgressListener", "captureMode"): _BIND,
}

# Resources nobody serves yet. A Gateway configures gateway proxies, and Tulle builds listeners for
# sidecars only (translate.py), so it is accepted and stored for when gateways land.
GATEWAY_NOT_SERVED = ("Tulle does not serve Gateway resources yet: no gateway proxy receives listeners for this "
                      "Gateway")
