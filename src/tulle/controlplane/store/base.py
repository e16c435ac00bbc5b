"""The ConfigStore interface and what every implementation shares.

A store keeps Resources by ``(kind, namespace, name)``. ``apply`` is all or nothing: either
every resource of the batch is written or none is; so is ``delete_many``. Each resource carries a ``generation``
(1 when created, +1 on every change of its content, as Kubernetes' metadata.generation) and the
store a ``revision`` (+1 per commit that changed something), so that callers can tell cheaply
whether anything moved. Re-applying identical content is not a change: no generation bump, no
notification. Subscribers are called after the commit, outside any lock, with the refs
(``Resource.ref``: ``"Kind namespace/name"``) that changed.
"""

from __future__ import annotations

import json
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tulle.controlplane.model import Resource

log = logging.getLogger(__name__)

ChangeListener = Callable[[list[str]], None]
Unsubscribe = Callable[[], None]


class StoreError(ValueError):
    """A resource the store cannot keep (empty name, spec that is not JSON, ...)."""


@dataclass(frozen=True)
class EncodedResource:
    """A resource in the form stores keep: identity plus JSON text, checked for storability."""

    kind: str
    namespace: str
    name: str
    api_version: str
    spec: str
    labels: str
    annotations: str
    source: str

    @property
    def key(self) -> tuple[str, str, str]:
        return self.kind, self.namespace, self.name

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    def same_content(self, other: EncodedResource) -> bool:
        """Whether applying ``self`` over ``other`` changes nothing (``source`` is not content)."""
        return (self.api_version, self.spec, self.labels, self.annotations) == (
            other.api_version, other.spec, other.labels, other.annotations)

    def decode(self) -> Resource:
        return Resource(
            kind=self.kind, api_version=self.api_version, name=self.name, namespace=self.namespace,
            spec=json.loads(self.spec), labels=json.loads(self.labels),
            annotations=json.loads(self.annotations), source=self.source,
        )


def _check_text(value: object, what: str, ref: str) -> str:
    if not isinstance(value, str) or not value:
        raise StoreError(f"{ref}: {what} must be a non-empty string, got {value!r}")
    return value


def _check_string_map(value: object, what: str, ref: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
            isinstance(key, str) and isinstance(item, str) for key, item in value.items()):
        raise StoreError(f"{ref}: {what} must map strings to strings")
    return value


def _to_json(value: Any, what: str, ref: str) -> str:
    try:
        # sort_keys makes equal content equal text, which is how changes are detected.
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise StoreError(f"{ref}: {what} cannot be stored as JSON: {error}") from None


def encode(resource: Resource) -> EncodedResource:
    """The storable form of ``resource``; StoreError names the resource and what is wrong."""
    ref = f"{resource.kind} {resource.namespace}/{resource.name}"
    kind = _check_text(resource.kind, "kind", ref)
    namespace = _check_text(resource.namespace, "namespace", ref)
    name = _check_text(resource.name, "name", ref)
    api_version = _check_text(resource.api_version, "apiVersion", ref)
    if not isinstance(resource.spec, dict):
        raise StoreError(f"{ref}: spec must be a mapping, got {type(resource.spec).__name__}")
    return EncodedResource(
        kind=kind, namespace=namespace, name=name, api_version=api_version,
        spec=_to_json(resource.spec, "spec", ref),
        labels=_to_json(_check_string_map(resource.labels, "labels", ref), "labels", ref),
        annotations=_to_json(_check_string_map(resource.annotations, "annotations", ref), "annotations", ref),
        source=resource.source if isinstance(resource.source, str) else "",
    )


def last_per_key(entries: Iterable[EncodedResource]) -> list[EncodedResource]:
    """One entry per key, the last one written, in the order keys first appear."""
    by_key: dict[tuple[str, str, str], EncodedResource] = {}
    for entry in entries:
        by_key[entry.key] = entry
    return list(by_key.values())


def parse_ref(ref: str) -> tuple[str, str, str]:
    """``"Kind namespace/name"`` -> ``(kind, namespace, name)``."""
    kind, _, rest = ref.partition(" ")
    namespace, _, name = rest.partition("/")
    return kind, namespace, name


class ConfigStore(ABC):
    """Durable (or not) keeping of Resources; see the module docstring for the guarantees."""

    def __init__(self) -> None:
        self._listeners: list[ChangeListener] = []
        self._listeners_lock = threading.Lock()

    @abstractmethod
    def list(self, kind: str | None = None, namespace: str | None = None) -> list[Resource]:
        """Resources sorted by (kind, namespace, name), filtered when kind/namespace are given."""

    @abstractmethod
    def get(self, kind: str, namespace: str, name: str) -> Resource | None: ...

    @abstractmethod
    def generation(self, kind: str, namespace: str, name: str) -> int:
        """The resource's generation; 0 when it does not exist."""

    @abstractmethod
    def revision(self) -> int:
        """The store's revision: +1 for every commit that changed something."""

    @abstractmethod
    def _commit_apply(self, batch: Sequence[EncodedResource]) -> tuple[list[str], list[str]]:
        """Write the batch (one entry per key) in one transaction; ``(created, updated)`` refs."""

    @abstractmethod
    def _commit_delete(self, keys: Sequence[tuple[str, str, str]], require_all: bool) -> tuple[list[str], list[str]]:
        """Delete the keys in one transaction; ``(deleted, missing)`` refs. With ``require_all``, a
        missing key deletes nothing."""

    def apply(self, resources: Iterable[Resource]) -> tuple[list[str], list[str]]:
        """Create or replace every resource, all or nothing; ``(created, updated)`` refs.

        Unchanged resources are in neither list. Within one batch a later resource with the
        same key replaces an earlier one (as sequential ``kubectl apply`` would).
        """
        created, updated = self._commit_apply(last_per_key(encode(resource) for resource in resources))
        if created or updated:
            self._notify(created + updated)
        return created, updated

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Remove a resource; False when there was none."""
        deleted, _ = self.delete_many([(kind, namespace, name)], ignore_missing=True)
        return bool(deleted)

    def delete_many(
        self, keys: Iterable[tuple[str, str, str]], *, ignore_missing: bool = False,
    ) -> tuple[list[str], list[str]]:
        """Remove resources in one transaction; ``(deleted, missing)`` refs.

        All or nothing: unless ``ignore_missing``, one missing resource deletes none of them
        (``deleted`` is empty and ``missing`` says which were not there). A key named twice is
        deleted once.
        """
        unique = list(dict.fromkeys(keys))
        deleted, missing = self._commit_delete(unique, require_all=not ignore_missing)
        if deleted:
            self._notify(deleted)
        return deleted, missing

    def subscribe(self, listener: ChangeListener) -> Unsubscribe:
        """Call ``listener(changed_refs)`` after every commit that changed something."""
        with self._listeners_lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._listeners_lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    def save_leases(self, leases: Mapping[str, str], removed: Iterable[str]) -> None:
        """Keep instance leases (id -> JSON) across restarts and forget ``removed`` ones, in one
        commit; stores that do not survive a restart keep nothing."""
        return None

    def load_leases(self) -> dict[str, str]:
        """The leases ``save_leases`` kept (id -> JSON); empty for stores that keep none."""
        return {}

    def close(self) -> None:
        """Release what the store holds (files, connections); nothing by default."""
        return None

    def _notify(self, refs: list[str]) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(list(refs))
            except Exception:  # one broken subscriber must not hide the commit from the others
                log.exception("config store subscriber failed for %s", refs)

    def __enter__(self) -> ConfigStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
