"""The control plane's HTTP API (see docs/control-plane.md, "HTTP API")."""

from tulle.controlplane.api.server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    ApiServer,
    diagnostic_to_json,
    resource_to_json,
    service_to_json,
)

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ApiServer", "diagnostic_to_json", "resource_to_json", "service_to_json"]
