"""An in-memory ConfigStore: same guarantees as SqliteStore, nothing survives the process."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from tulle.controlplane.model import Resource
from tulle.controlplane.store.base import ConfigStore, EncodedResource

Key = tuple[str, str, str]


class MemoryStore(ConfigStore):
    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._items: dict[Key, tuple[EncodedResource, int]] = {}  # key -> (resource, generation)
        self._revision = 0

    def list(self, kind: str | None = None, namespace: str | None = None) -> list[Resource]:
        with self._lock:
            entries = [entry for key, (entry, _) in sorted(self._items.items())
                       if (kind is None or key[0] == kind) and (namespace is None or key[1] == namespace)]
        return [entry.decode() for entry in entries]

    def get(self, kind: str, namespace: str, name: str) -> Resource | None:
        with self._lock:
            found = self._items.get((kind, namespace, name))
        return None if found is None else found[0].decode()

    def generation(self, kind: str, namespace: str, name: str) -> int:
        with self._lock:
            found = self._items.get((kind, namespace, name))
        return 0 if found is None else found[1]

    def revision(self) -> int:
        with self._lock:
            return self._revision

    def _commit_apply(self, batch: Sequence[EncodedResource]) -> tuple[list[str], list[str]]:
        with self._lock:
            # Build the new state aside and swap it in: nothing is half-applied.
            items = dict(self._items)
            created: list[str] = []
            updated: list[str] = []
            for entry in batch:
                previous = items.get(entry.key)
                if previous is None:
                    items[entry.key] = (entry, 1)
                    created.append(entry.ref)
                elif not previous[0].same_content(entry):
                    items[entry.key] = (entry, previous[1] + 1)
                    updated.append(entry.ref)
            if created or updated:
                self._items = items
                self._revision += 1
        return created, updated

    def _commit_delete(self, keys: Sequence[Key], require_all: bool) -> tuple[list[str], list[str]]:
        with self._lock:
            missing = [_ref(key) for key in keys if key not in self._items]
            if missing and require_all:
                return [], missing
            deleted = [_ref(key) for key in keys if self._items.pop(key, None) is not None]
            if deleted:
                self._revision += 1
        return deleted, missing


def _ref(key: Key) -> str:
    return f"{key[0]} {key[1]}/{key[2]}"
