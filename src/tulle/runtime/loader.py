"""The runtime of one worker process (Envoy's Runtime::LoaderImpl), built from ``layered_runtime``.

Layers are read in order into an immutable :class:`Snapshot`; a new snapshot replaces the
current one whole (``values`` is swapped in one assignment), so a request reads one
consistent snapshot with a dict get. New snapshots are made when a disk layer's symlink is
swapped and when the admin layer changes (``/runtime_modify``).

Workers are processes: the main process owns the layers (it watches the disk and serves the
admin) and sends every new snapshot's layers to the other workers (:meth:`export` there,
:meth:`install` here), so every worker reads the same values. Only the owner keeps the
``runtime.*`` stats, so /stats counts each load once.

Without ``layered_runtime`` the runtime has no layer and never changes, as in Envoy.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from tulle.config.errors import ConfigError, UnsupportedFeature, join
from tulle.config.support import check_fields
from tulle.runtime.entry import Entry, Fraction
from tulle.runtime.features import RuntimeFlag, RuntimeFraction
from tulle.runtime.layers import AdminLayer, DiskLayerError, Layer, disk_layer, static_layer
from tulle.runtime.snapshot import Snapshot
from tulle.runtime.watcher import SymlinkWatcher, symlink_identity
from tulle.stats.store import Counter, Gauge, Store

log = logging.getLogger("tulle.runtime")

_LAYER_FIELDS = ("name", "static_layer", "disk_layer", "admin_layer")
_DISK_FIELDS = ("symlink_root", "subdirectory", "append_service_cluster")


class NoAdminLayer(Exception):
    """``/runtime_modify`` without an admin layer (Envoy answers 503 with this message)."""

    def __init__(self) -> None:
        super().__init__("No admin layer specified")


class RuntimeStats:
    """``runtime.*``: plain objects until :meth:`attach` puts them in the owner's store."""

    COUNTERS = ("load_error", "load_success", "override_dir_exists", "override_dir_not_exists")
    GAUGES = ("admin_overrides_active", "num_keys", "num_layers")

    def __init__(self) -> None:
        for name in self.COUNTERS:
            setattr(self, name, Counter("runtime." + name))
        for name in self.GAUGES:
            setattr(self, name, Gauge("runtime." + name, per_worker=False))

    def attach(self, store: Store) -> None:
        for name in self.COUNTERS:
            stat = store.counter("runtime." + name)
            stat.value = getattr(self, name).value
            setattr(self, name, stat)
        for name in self.GAUGES:
            stat = store.gauge("runtime." + name, per_worker=False)
            stat.value = getattr(self, name).value
            setattr(self, name, stat)


class _DiskLayerConfig:
    __slots__ = ("name", "path", "symlink_root", "field")

    def __init__(self, name: str, path: str, symlink_root: str, field: str) -> None:
        self.name = name
        self.path = path
        self.symlink_root = symlink_root
        self.field = field


class Runtime:
    def __init__(self, layers: Sequence[Layer | _DiskLayerConfig] = ()) -> None:
        self._layers = tuple(layers)
        self.admin_layer: AdminLayer | None = next((layer for layer in self._layers
                                                    if isinstance(layer, AdminLayer)), None)
        self.disk_layers = tuple(layer for layer in self._layers if isinstance(layer, _DiskLayerConfig))
        # a configured layer: lookups may find something
        self.layered = bool(self._layers)
        # values can change after start-up: features must look their keys up per use
        self.dynamic = self.admin_layer is not None or bool(self.disk_layers)
        self.stats = RuntimeStats()
        # called after each snapshot this process makes (the server forwards it to the other workers)
        self.on_change: Callable[[], Any] | None = None
        self.published: Any = None  # what on_change returned for the current snapshot (an awaitable)
        self._watcher: SymlinkWatcher | None = None
        self._loaded_symlinks: list[Any] = []  # the disk layers' symlinks as the last reload found them
        self.snapshot = Snapshot()
        self.values: dict[str, Entry] = self.snapshot.values
        self.reload()

    # --- construction ----------------------------------------------------------------
    @classmethod
    def from_bootstrap(cls, bootstrap: Any) -> Runtime:
        if not bootstrap.HasField("layered_runtime"):
            return cls()
        return cls.from_proto(bootstrap.layered_runtime, "layered_runtime", bootstrap.node.cluster)

    @classmethod
    def from_proto(cls, proto: Any, field: str, service_cluster: str = "") -> Runtime:
        """Validate a LayeredRuntime the way Envoy's loader does; rtds_layer is refused."""
        check_fields(proto, ("layers",), field)
        if not proto.layers:
            # Envoy's server gives an empty layered_runtime one admin layer
            return cls([AdminLayer("", {})])
        layers: list[Layer | _DiskLayerConfig] = []
        names: set[str] = set()
        for index, layer in enumerate(proto.layers):
            here = f"{join(field, 'layers')}[{index}]"
            if layer.HasField("rtds_layer"):
                raise UnsupportedFeature("rtds_layer (runtime over xDS)", field=join(here, "rtds_layer"))
            check_fields(layer, _LAYER_FIELDS, here)
            if layer.name in names:
                raise ConfigError(f"Duplicate layer name: {layer.name}", field=join(here, "name"))
            names.add(layer.name)
            kind = layer.WhichOneof("layer_specifier")
            if kind is None:
                raise ConfigError("one of static_layer, disk_layer, admin_layer is required", field=here)
            if kind == "static_layer":
                layers.append(static_layer(layer.name, layer.static_layer, join(here, "static_layer")))
            elif kind == "admin_layer":
                check_fields(layer.admin_layer, (), join(here, "admin_layer"))
                if any(isinstance(other, AdminLayer) for other in layers):
                    raise ConfigError("Too many admin layers specified in LayeredRuntime, "
                                      "at most one may be specified", field=join(here, "admin_layer"))
                layers.append(AdminLayer(layer.name, {}))
            else:
                disk = layer.disk_layer
                check_fields(disk, _DISK_FIELDS, join(here, "disk_layer"))
                path = f"{disk.symlink_root}/{disk.subdirectory}"
                if disk.append_service_cluster:
                    path += f"/{service_cluster}"
                layers.append(_DiskLayerConfig(layer.name, path, disk.symlink_root,
                                               join(here, "disk_layer.symlink_root")))
        return cls(layers)

    # --- snapshots -------------------------------------------------------------------
    def reload(self) -> None:
        """Envoy's createNewSnapshot + loadNewSnapshot: read the disk layers again. A disk layer
        whose directory is missing is left out; one that cannot be read is left out and counted
        in load_error (the other layers still load)."""
        layers: list[Layer] = []
        disk_layers = errors = 0
        self._loaded_symlinks = [symlink_identity(config.symlink_root) for config in self.disk_layers]
        for config in self._layers:
            if isinstance(config, AdminLayer):
                layers.append(config.copy())
            elif isinstance(config, _DiskLayerConfig):
                if not os.path.isdir(config.path):
                    continue
                try:
                    layers.append(disk_layer(config.name, config.path))
                    disk_layers += 1
                except DiskLayerError as exc:
                    errors += 1
                    log.warning("error loading runtime values for layer %s from disk: %s", config.name, exc)
            else:
                layers.append(config)
        stats = self.stats
        if errors:
            stats.load_error.value += 1
        else:
            stats.load_success.value += 1
        if disk_layers > 1:  # sic: Envoy counts an existing override directory only beside another one
            stats.override_dir_exists.value += 1
        else:
            stats.override_dir_not_exists.value += 1
        self._install(Snapshot(layers))

    def merge_admin(self, changes: dict[str, str]) -> None:
        """``/runtime_modify``: set keys in the admin layer (an empty value removes one)."""
        if self.admin_layer is None:
            raise NoAdminLayer()
        self.admin_layer.merge(changes)
        self.stats.admin_overrides_active.value = 1 if self.admin_layer.values else 0
        self.reload()

    def _install(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.values = snapshot.values  # the one reference requests read
        self.stats.num_layers.value = len(snapshot.layers)
        self.stats.num_keys.value = len(snapshot.values)
        if self.on_change is not None:
            self.published = self.on_change()

    def export(self) -> list[list[Any]]:
        """The current snapshot's layers as JSON-able ``[name, {key: raw value}]`` pairs."""
        return [[layer.name, layer.raw_values()] for layer in self.snapshot.layers]

    def install(self, exported: list[list[Any]]) -> None:
        """Another worker's snapshot (see :meth:`export`): the same values, parsed here."""
        layers = [Layer(name, {key: Entry(raw) for key, raw in raw_values.items()}) for name, raw_values in exported]
        snapshot = Snapshot(layers)
        self.snapshot = snapshot
        self.values = snapshot.values

    # --- life cycle ------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop, store: Store, *, owner: bool) -> None:
        """The owner (the main process) keeps the stats and watches the disk layers' symlinks."""
        if not owner:
            return
        self.stats.attach(store)
        if self.disk_layers:
            watcher = SymlinkWatcher(self.reload)
            for config in self.disk_layers:
                watcher.add(config.symlink_root, config.field)
            watcher.start(loop)
            self._watcher = watcher
            if [symlink_identity(config.symlink_root) for config in self.disk_layers] != self._loaded_symlinks:
                self.reload()  # swapped between the first load and the watch: not a swap to miss

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None

    # --- what features and the admin read ---------------------------------------------
    def fraction(self, key: str, default: Fraction) -> Fraction | RuntimeFraction:
        """A feature's percentage under ``key``: constant when it cannot change, else looked up per use."""
        if not key:
            return default
        if not self.dynamic:
            return self.snapshot.fraction(key, default)
        return RuntimeFraction(self, key, default)

    def flag(self, key: str, default: bool) -> bool | RuntimeFlag:
        if not key:
            return default
        if not self.dynamic:
            return self.snapshot.boolean(key, default)
        return RuntimeFlag(self, key, default)

    def admin_view(self) -> dict[str, Any]:
        """Envoy's /runtime: the layer names and, per key, each layer's value and the final one."""
        layers = self.snapshot.layers
        keys = sorted({key for layer in layers for key in layer.values})
        entries = {}
        for key in keys:
            layer_values = [layer.values[key].raw if key in layer.values else "" for layer in layers]
            final = next((value for value in reversed(layer_values) if value), "")
            entries[key] = {"layer_values": layer_values, "final_value": final}
        return {"layers": [layer.name for layer in layers], "entries": entries}
