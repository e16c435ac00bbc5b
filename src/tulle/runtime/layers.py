"""Runtime layers (Envoy's OverrideLayer implementations): a name and its key -> Entry map.

* static: the bootstrap's ``static_layer`` Struct, nested structs flattened with "." (a struct
  holding ``numerator``/``denominator``, or an empty one, is a value: a fractional percent);
* disk: a directory tree read when a snapshot is made, one file per key ("a/b/c" is ``a.b.c``);
* admin: what ``/runtime_modify`` set, changed only through :meth:`AdminLayer.merge`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format, struct_pb2

from tulle.config.errors import ConfigError
from tulle.runtime.entry import Entry, entry_from_value

# Envoy's DiskLayer::walkDirectory refuses deeper trees.
MAX_WALK_DEPTH = 16


class Layer:
    __slots__ = ("name", "values")

    def __init__(self, name: str, values: Mapping[str, Entry]) -> None:
        self.name = name
        self.values = values

    def raw_values(self) -> dict[str, str]:
        return {key: entry.raw for key, entry in self.values.items()}


def static_layer(name: str, proto: struct_pb2.Struct, field: str) -> Layer:
    """Envoy's ProtoLayer: lists and nulls are refused, naming the key."""
    values: dict[str, Entry] = {}
    for key, value in json_format.MessageToDict(proto).items():
        _walk_value(values, key, value, field)
    return Layer(name, values)


def _walk_value(values: dict[str, Entry], key: str, value: Any, field: str) -> None:
    if value is None or isinstance(value, list):
        raise ConfigError(f"Invalid runtime entry value for {key}", field=field)
    if isinstance(value, dict) and value and "numerator" not in value and "denominator" not in value:
        for child, child_value in value.items():
            _walk_value(values, f"{key}.{child}", child_value, field)
        return
    values[key] = entry_from_value(value)


class DiskLayerError(Exception):
    """The tree could not be read whole: the layer is left out of the snapshot (runtime.load_error)."""


def disk_layer(name: str, path: str) -> Layer:
    values: dict[str, Entry] = {}
    _walk_directory(values, path, "", 1)
    return Layer(name, values)


def _walk_directory(values: dict[str, Entry], path: str, prefix: str, depth: int) -> None:
    if depth > MAX_WALK_DEPTH:
        raise DiskLayerError(f"Walk recursion depth exceeded {MAX_WALK_DEPTH}")
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise DiskLayerError(f"unable to open directory {path}: {exc.strerror}") from None
    for entry_name in names:
        full_path = os.path.join(path, entry_name)
        key = f"{prefix}.{entry_name}" if prefix else entry_name
        try:
            mode = os.stat(full_path).st_mode  # symbolic links are followed, as Envoy's directory walk does
        except OSError as exc:
            raise DiskLayerError(f"unable to stat {full_path}: {exc.strerror}") from None
        if stat.S_ISDIR(mode):
            _walk_directory(values, full_path, key, depth + 1)
        elif stat.S_ISREG(mode):
            values[key] = Entry(_read_value(full_path))


def _read_value(path: str) -> str:
    """The file without comment lines (a line starting with '#'), the last line right-trimmed."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            text = handle.read()
    except OSError as exc:
        raise DiskLayerError(f"unable to read file {path}: {exc.strerror}") from None
    lines = [line for line in text.split("\n") if line]
    value = []
    for line in lines:
        if line.startswith("#"):
            continue
        # Envoy compares with the last line's text, not its position: a commented-out last line
        # leaves the newline of the one before it
        value.append(line.rstrip() if line == lines[-1] else line + "\n")
    return "".join(value)


class AdminLayer(Layer):
    """Envoy's AdminLayer: mutable, so each snapshot takes a copy of it."""

    __slots__ = ()

    def merge(self, changes: Mapping[str, str]) -> None:
        """An empty value removes the key's override."""
        values = dict(self.values)
        for key, value in changes.items():
            values.pop(key, None)
            if value:
                values[key] = Entry(value)
        self.values = values

    def copy(self) -> Layer:
        return Layer(self.name, self.values)
