"""Istio's API + registry -> xDS for one proxy, as pure functions (see translate.translate)."""

from tulle.controlplane.translate.options import ISTIO_DEFAULTS, TULLE_PROXY_TODAY, TranslateOptions
from tulle.controlplane.translate.translate import (
    CLUSTER_TYPE,
    ENDPOINT_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    TYPE_URLS,
    to_dicts,
    translate,
    translate_json,
)

__all__ = [
    "CLUSTER_TYPE", "ENDPOINT_TYPE", "ISTIO_DEFAULTS", "LISTENER_TYPE", "ROUTE_TYPE", "TULLE_PROXY_TODAY",
    "TYPE_URLS", "TranslateOptions", "to_dicts", "translate", "translate_json",
]
