"""Per-node xDS snapshots, change watches and connection status. Knows nothing of gRPC.

As in go-control-plane's SnapshotCache, whoever translates the mesh sets one immutable
:class:`Snapshot` per node id; the server reads it and registers watches that fire when a newer
snapshot changes the version of a type the stream cares about. Versions come from a hash of each
message's deterministic serialization, so an unchanged resource keeps its version across
snapshots and an endpoint-only change moves only the ClusterLoadAssignment type version.

The cache is plain, thread-safe Python: watch callbacks run synchronously in the thread that
calls ``set_snapshot`` (an asyncio consumer hands them to its loop with
``call_soon_threadsafe``). It also keeps what ``tulle proxy-status`` shows: per connected node,
its streams and, per type, the last version/nonce sent, the last ACK and the last NACK.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3 import base_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from tulle.controlplane.xds import types

log = logging.getLogger("tulle.controlplane.xds")

_HASH_CHARS = 16  # 64 bits of SHA-256: collisions are not a practical concern for versions


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:_HASH_CHARS]


class ResourceEntry:
    """One resource as the server sends it: the message, its deterministic wire bytes and the
    version (a hash of those bytes). Entries are immutable and shared by every snapshot (and
    every node) that has this exact resource, so a mesh of similar proxies holds each distinct
    resource once."""

    __slots__ = ("message", "serialized", "version")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.serialized = message.SerializeToString(deterministic=True)
        self.version = _digest(self.serialized)


class ResourceSet:
    """One type's resources, by name, with the type's version (a hash of names and versions).
    Immutable: build a new set to change anything; sets are shared between snapshots."""

    __slots__ = ("entries", "version")

    def __init__(self, entries: Mapping[str, ResourceEntry]) -> None:
        self.entries: dict[str, ResourceEntry] = dict(sorted(entries.items()))
        summary = "".join(f"{name}\0{entry.version}\n" for name, entry in self.entries.items())
        self.version = _digest(summary.encode())

    @classmethod
    def from_messages(cls, by_name: Mapping[str, Message]) -> ResourceSet:
        return cls({name: ResourceEntry(message) for name, message in by_name.items()})

    def merged(self, other: ResourceSet) -> ResourceSet:
        """The union of two sets with distinct names (sharing ``self`` when ``other`` is empty)."""
        if not other.entries:
            return self
        if not self.entries:
            return other
        clash = self.entries.keys() & other.entries.keys()
        if clash:
            raise ValueError(f"resources {sorted(clash)} are in both sets")
        return ResourceSet({**self.entries, **other.entries})


EMPTY_SET = ResourceSet({})


class _Field(Mapping[str, Any]):
    """A read-only ``{name: attribute}`` view of a set's entries (no copy per call)."""

    __slots__ = ("_entries", "_attribute")

    def __init__(self, entries: dict[str, ResourceEntry], attribute: str) -> None:
        self._entries = entries
        self._attribute = attribute

    def __getitem__(self, name: str) -> Any:
        return getattr(self._entries[name], self._attribute)

    def __iter__(self) -> Any:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


class Snapshot:
    """One node's complete xDS state: per type URL, a :class:`ResourceSet` and a version.

    ``versions`` overrides the per-type version; a type without one gets its set's version (a
    hash of its resources' names and versions). Messages must not be mutated after the snapshot
    is built. Packing ``Any`` fields with ``deterministic=True`` keeps their bytes (hence
    versions) stable.
    """

    __slots__ = ("_sets", "_versions")

    def __init__(
        self,
        resources: Mapping[str, Mapping[str, Message]],
        versions: Mapping[str, str] | None = None,
    ) -> None:
        sets = {}
        for type_url, by_name in resources.items():
            expected = type_url.rsplit("/", 1)[-1]
            for name, message in by_name.items():
                if message.DESCRIPTOR.full_name != expected:
                    raise TypeError(
                        f"resource {name!r} is a {message.DESCRIPTOR.full_name}, not {expected} ({type_url})"
                    )
            sets[type_url] = ResourceSet.from_messages(by_name)
        self._init(sets, versions)

    @classmethod
    def from_sets(cls, sets: Mapping[str, ResourceSet], versions: Mapping[str, str] | None = None) -> Snapshot:
        """A snapshot over already-built (shared) sets: nothing is serialized or hashed again."""
        snapshot = cls.__new__(cls)
        snapshot._init(dict(sets), versions)
        return snapshot

    def _init(self, sets: dict[str, ResourceSet], versions: Mapping[str, str] | None) -> None:
        self._sets = sets
        self._versions = {type_url: resource_set.version for type_url, resource_set in sets.items()}
        for type_url, version in (versions or {}).items():
            if type_url not in sets:
                raise ValueError(f"version given for {type_url}, which has no resources entry")
            self._versions[type_url] = version

    @classmethod
    def from_messages(
        cls, messages: Iterable[Message], versions: Mapping[str, str] | None = None
    ) -> Snapshot:
        """Group messages by type URL and xDS name (``cluster_name`` for endpoints)."""
        grouped: dict[str, dict[str, Message]] = {}
        for message in messages:
            by_name = grouped.setdefault(types.type_url_of(message), {})
            name = types.resource_name(message)
            if name in by_name:
                raise ValueError(
                    f"duplicate {types.short_name(types.type_url_of(message))} resource {name!r}"
                )
            by_name[name] = message
        return cls(grouped, versions)

    @property
    def type_urls(self) -> tuple[str, ...]:
        return tuple(sorted(self._sets, key=types.push_rank))

    def has_type(self, type_url: str) -> bool:
        return type_url in self._sets

    def version(self, type_url: str) -> str:
        """The type's version, ``""`` when the snapshot does not serve that type."""
        return self._versions.get(type_url, "")

    def resource_set(self, type_url: str) -> ResourceSet:
        return self._sets.get(type_url, EMPTY_SET)

    def resources(self, type_url: str) -> Mapping[str, Message]:
        return _Field(self.resource_set(type_url).entries, "message")

    def resource_versions(self, type_url: str) -> Mapping[str, str]:
        return _Field(self.resource_set(type_url).entries, "version")

    def serialized(self, type_url: str, name: str) -> bytes:
        """The resource's deterministic wire bytes (what goes into the response's ``Any``)."""
        return self._sets[type_url].entries[name].serialized

    def changed_types(self, previous: Snapshot | None) -> frozenset[str]:
        """Types whose version differs from ``previous`` (including types added or dropped)."""
        if previous is None:
            return frozenset(self._versions)
        every_type = set(self._versions) | set(previous._versions)
        return frozenset(t for t in every_type if self.version(t) != previous.version(t))

    def __repr__(self) -> str:
        counts = ", ".join(
            f"{types.short_name(t)}={len(self._sets[t].entries)}@{self._versions[t]}" for t in self.type_urls
        )
        return f"Snapshot({counts})"


ChangeCallback = Callable[[frozenset[str]], None]


class Watch:
    """A registration for snapshot changes of one node; ``cancel()`` when the stream ends."""

    __slots__ = ("_cache", "node_id", "type_urls", "callback")

    def __init__(
        self, cache: SnapshotCache, node_id: str, callback: ChangeCallback, type_urls: frozenset[str] | None
    ) -> None:
        self._cache = cache
        self.node_id = node_id
        self.callback = callback
        self.type_urls = type_urls

    def cancel(self) -> None:
        self._cache._remove_watch(self)


@dataclass
class Nack:
    version: str  # the version the client rejected (it keeps running the previous one)
    nonce: str
    message: str  # error_detail.message
    at: float


@dataclass
class Refusal:
    """A response the server did not send because it was over the message size limit."""

    version: str
    size: int  # bytes of the response (or of the one resource) that did not fit
    limit: int
    message: str
    at: float

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "bytes": self.size, "limit": self.limit, "message": self.message,
                "at": self.at}


@dataclass
class TypeStatus:
    """One type on one stream: what was sent, what the client accepted or rejected, and what the
    server refused to send."""

    type_url: str
    subscribed: tuple[str, ...] = ()  # resource names; "*" for a wildcard subscription
    sent_version: str = ""
    sent_nonce: str = ""
    sent_at: float | None = None
    sent_resources: int = 0  # resources (and removals, for delta) in the last update
    sent_bytes: int = 0  # the last update's size on the wire (all of its responses, when split)
    acked_version: str = ""
    acked_nonce: str = ""
    acked_at: float | None = None
    last_nack: Nack | None = None
    refused: Refusal | None = None  # set while the latest version could not be sent
    refusals: int = 0  # versions refused on this stream

    @property
    def sync_state(self) -> str:
        """istioctl proxy-status's words: NOT SENT, SYNCED, STALE (sent, unanswered), NACKED; and
        TOO LARGE when the latest version was over the message size limit and was not sent."""
        if self.refused is not None:
            return "TOO LARGE"
        if not self.sent_nonce:
            return "NOT SENT"
        if self.acked_nonce == self.sent_nonce:
            return "SYNCED"
        if self.last_nack is not None and self.last_nack.nonce == self.sent_nonce:
            return "NACKED"
        return "STALE"

    def to_dict(self) -> dict[str, Any]:
        nack = self.last_nack
        return {
            "type": types.short_name(self.type_url),
            "type_url": self.type_url,
            "state": self.sync_state,
            "subscribed": list(self.subscribed),
            "sent_version": self.sent_version,
            "sent_nonce": self.sent_nonce,
            "sent_at": self.sent_at,
            "sent_resources": self.sent_resources,
            "sent_bytes": self.sent_bytes,
            "acked_version": self.acked_version,
            "acked_at": self.acked_at,
            "last_nack": None
            if nack is None
            else {"version": nack.version, "nonce": nack.nonce, "message": nack.message, "at": nack.at},
            "refused": None if self.refused is None else self.refused.to_dict(),
            "refusals": self.refusals,
        }


@dataclass
class StreamStatus:
    """One xDS stream of a node; the server records into it as it talks to the client."""

    stream_id: int
    node_id: str
    protocol: str  # "sotw" or "delta"
    connected_at: float
    types: dict[str, TypeStatus] = field(default_factory=dict)

    def type_status(self, type_url: str) -> TypeStatus:
        status = self.types.get(type_url)
        if status is None:
            status = self.types[type_url] = TypeStatus(type_url)
        return status

    def record_subscription(self, type_url: str, names: Iterable[str], wildcard: bool) -> None:
        listed = sorted(names)
        self.type_status(type_url).subscribed = tuple([types.WILDCARD_NAME, *listed] if wildcard else listed)

    def record_sent(self, type_url: str, version: str, nonce: str, resources: int, size: int = 0) -> None:
        status = self.type_status(type_url)
        status.sent_version, status.sent_nonce = version, nonce
        status.sent_at, status.sent_resources, status.sent_bytes = time.time(), resources, size
        status.refused = None

    def record_refused(self, type_url: str, version: str, size: int, limit: int, message: str) -> None:
        status = self.type_status(type_url)
        status.refused = Refusal(version, size, limit, message, time.time())
        status.refusals += 1

    def record_ack(self, type_url: str, version: str, nonce: str) -> None:
        status = self.type_status(type_url)
        status.acked_version, status.acked_nonce, status.acked_at = version, nonce, time.time()

    def record_nack(self, type_url: str, version: str, nonce: str, message: str) -> None:
        self.type_status(type_url).last_nack = Nack(version, nonce, message, time.time())

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream_id": self.stream_id,
            "protocol": self.protocol,
            "connected_at": self.connected_at,
            "types": [self.types[t].to_dict() for t in sorted(self.types, key=types.push_rank)],
        }


@dataclass
class NodeStatus:
    """A connected node: its identity as it sent it and its open streams."""

    node_id: str
    node: base_pb2.Node
    connected_at: float
    streams: dict[int, StreamStatus] = field(default_factory=dict)

    @property
    def cluster(self) -> str:
        return self.node.cluster

    @property
    def metadata(self) -> dict[str, Any]:
        return json_format.MessageToDict(self.node.metadata)

    def types(self) -> dict[str, TypeStatus]:
        """Per type, the status on the most recently opened stream that uses it."""
        merged: dict[str, TypeStatus] = {}
        for stream in sorted(self.streams.values(), key=lambda s: s.stream_id):
            merged.update(stream.types)
        return merged

    def to_dict(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "cluster": self.cluster,
            "metadata": self.metadata,
            "user_agent": f"{self.node.user_agent_name}/{self.node.user_agent_version}".strip("/"),
            "connected_at": self.connected_at,
            "streams": [self.streams[s].to_dict() for s in sorted(self.streams)],
        }


NodeConnectedHook = Callable[[base_pb2.Node], None]
NodeDisconnectedHook = Callable[[str], None]


class SnapshotCache:
    """Snapshots by node id, watches on them, and the status of connected nodes.

    ``on_node_connected(node)`` runs when a node opens its first stream, before the server looks
    for its snapshot: a control plane computing snapshots on demand sets it there (or later; the
    stream waits). ``on_node_disconnected(node_id)`` runs when its last stream closes.
    """

    def __init__(
        self,
        *,
        on_node_connected: NodeConnectedHook | None = None,
        on_node_disconnected: NodeDisconnectedHook | None = None,
    ) -> None:
        self.on_node_connected = on_node_connected
        self.on_node_disconnected = on_node_disconnected
        self._lock = threading.RLock()
        self._snapshots: dict[str, Snapshot] = {}
        self._watches: dict[str, list[Watch]] = {}
        self._nodes: dict[str, NodeStatus] = {}
        self._stream_ids = itertools.count(1)

    # --- snapshots -------------------------------------------------------------------------

    def set_snapshot(self, node_id: str, snapshot: Snapshot) -> frozenset[str]:
        """Store the node's snapshot and wake the watches of the types whose version changed."""
        with self._lock:
            changed = snapshot.changed_types(self._snapshots.get(node_id))
            self._snapshots[node_id] = snapshot
            watches = list(self._watches.get(node_id, ()))
        if changed:
            for watch in watches:
                relevant = changed if watch.type_urls is None else changed & watch.type_urls
                if relevant:
                    try:
                        watch.callback(relevant)
                    except Exception:  # one broken watcher must not keep the others stale
                        log.exception("xDS watch callback for node %s failed", node_id)
        return changed

    def get_snapshot(self, node_id: str) -> Snapshot | None:
        with self._lock:
            return self._snapshots.get(node_id)

    def clear(self, node_id: str) -> bool:
        """Forget the node's snapshot; its streams keep what they have and wait for a new one."""
        with self._lock:
            return self._snapshots.pop(node_id, None) is not None

    def node_ids(self) -> list[str]:
        """Nodes that have a snapshot."""
        with self._lock:
            return sorted(self._snapshots)

    # --- watches ---------------------------------------------------------------------------

    def watch(self, node_id: str, callback: ChangeCallback, type_urls: Iterable[str] | None = None) -> Watch:
        """Call ``callback(changed_types)`` on each ``set_snapshot`` that changes one of
        ``type_urls`` (any type when None) for ``node_id``."""
        watch = Watch(self, node_id, callback, None if type_urls is None else frozenset(type_urls))
        with self._lock:
            self._watches.setdefault(node_id, []).append(watch)
        return watch

    def _remove_watch(self, watch: Watch) -> None:
        with self._lock:
            watches = self._watches.get(watch.node_id)
            if watches and watch in watches:
                watches.remove(watch)
                if not watches:
                    del self._watches[watch.node_id]

    async def wait_for_change(self, node_id: str, type_url: str, known_version: str) -> Snapshot:
        """Return the node's snapshot once it serves ``type_url`` at a version other than
        ``known_version`` (at once if it already does)."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()

        def wake(_types: frozenset[str]) -> None:
            try:
                loop.call_soon_threadsafe(changed.set)
            except RuntimeError:  # the waiting loop is closed
                pass

        # Registered before the first look so that a snapshot set in between is not missed.
        watch = self.watch(node_id, wake, (type_url,))
        try:
            while True:
                snapshot = self.get_snapshot(node_id)
                if snapshot is not None and snapshot.has_type(type_url):
                    if snapshot.version(type_url) != known_version:
                        return snapshot
                changed.clear()
                await changed.wait()
        finally:
            watch.cancel()

    # --- node status -----------------------------------------------------------------------

    def stream_opened(self, node: base_pb2.Node, protocol: str) -> StreamStatus:
        """Register a stream of ``node``; runs ``on_node_connected`` for the node's first stream."""
        now = time.time()
        node_copy = base_pb2.Node()
        node_copy.CopyFrom(node)
        with self._lock:
            stream = StreamStatus(next(self._stream_ids), node.id, protocol, now)
            status = self._nodes.get(node.id)
            first = status is None
            if status is None:
                status = self._nodes[node.id] = NodeStatus(node.id, node_copy, now)
            else:
                status.node = node_copy  # a reconnecting node may report new metadata
            status.streams[stream.stream_id] = stream
        if first and self.on_node_connected is not None:
            try:
                self.on_node_connected(node_copy)
            except Exception:  # the stream still waits; a later set_snapshot serves it
                log.exception("on_node_connected failed for node %s", node.id)
        return stream

    def stream_closed(self, stream: StreamStatus) -> None:
        """Unregister a stream; runs ``on_node_disconnected`` when it was the node's last."""
        with self._lock:
            status = self._nodes.get(stream.node_id)
            if status is None or status.streams.pop(stream.stream_id, None) is None:
                return
            last = not status.streams
            if last:
                del self._nodes[stream.node_id]
        if last and self.on_node_disconnected is not None:
            try:
                self.on_node_disconnected(stream.node_id)
            except Exception:
                log.exception("on_node_disconnected failed for node %s", stream.node_id)

    def node_status(self, node_id: str) -> NodeStatus | None:
        with self._lock:
            return self._nodes.get(node_id)

    def node_statuses(self) -> list[NodeStatus]:
        with self._lock:
            return [self._nodes[node_id] for node_id in sorted(self._nodes)]
