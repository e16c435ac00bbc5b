"""Where the control plane keeps Istio (and Tulle) resources: the ConfigStore interface and its
implementations (see docs/control-plane.md, "Store and registry")."""

from tulle.controlplane.store.base import ChangeListener, ConfigStore, StoreError, parse_ref
from tulle.controlplane.store.memory import MemoryStore
from tulle.controlplane.store.sqlite import SqliteStore
from tulle.controlplane.store.state import StateError

__all__ = ["ChangeListener", "ConfigStore", "MemoryStore", "SqliteStore", "StateError", "StoreError", "parse_ref"]
