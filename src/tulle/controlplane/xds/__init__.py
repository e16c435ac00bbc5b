"""xDS serving: the per-node snapshot cache and the gRPC ADS server (see docs/control-plane.md)."""

from tulle.controlplane.xds.cache import (
    Nack,
    NodeStatus,
    Refusal,
    Snapshot,
    SnapshotCache,
    StreamStatus,
    TypeStatus,
    Watch,
)
from tulle.controlplane.xds.server import XdsServer

__all__ = [
    "Nack",
    "NodeStatus",
    "Refusal",
    "Snapshot",
    "SnapshotCache",
    "StreamStatus",
    "TypeStatus",
    "Watch",
    "XdsServer",
]
