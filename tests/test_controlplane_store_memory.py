"""MemoryStore specifics (the shared contract is in test_controlplane_store_base)."""

from __future__ import annotations

from tulle.controlplane.model import Resource
from tulle.controlplane.store import MemoryStore


def test_returned_resources_are_copies() -> None:
    store = MemoryStore()
    store.apply([Resource(kind="Sidecar", api_version="networking.istio.io/v1", name="default",
                          spec={"egress": [{"hosts": ["./*"]}]})])
    first = store.get("Sidecar", "default", "default")
    assert first is not None
    first.spec["egress"].append({"hosts": ["istio-system/*"]})
    again = store.get("Sidecar", "default", "default")
    assert again is not None and again.spec == {"egress": [{"hosts": ["./*"]}]}


def test_nothing_survives_a_new_instance() -> None:
    store = MemoryStore()
    store.apply([Resource(kind="Gateway", api_version="networking.istio.io/v1", name="gw")])
    assert len(store.list()) == 1
    assert MemoryStore().list() == []
