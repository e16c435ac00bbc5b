"""Runtime layers: the static layer's Struct, a disk tree (Envoy's walkDirectory) and the admin layer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from google.protobuf import struct_pb2

from tulle.config.errors import ConfigError
from tulle.runtime.layers import MAX_WALK_DEPTH, AdminLayer, DiskLayerError, disk_layer, static_layer


def struct(value: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def test_static_layer_flattens_nested_structs_with_dots() -> None:
    layer = static_layer("base", struct({
        "health_check": {"min_interval": 5},
        "fault": {"http": {"abort": {"abort_percent": {"numerator": 20, "denominator": "TEN_THOUSAND"}}}},
        "flag": True, "name": "x",
    }), "layered_runtime.layers[0].static_layer")
    assert layer.name == "base"
    assert layer.raw_values() == {
        "health_check.min_interval": "5",
        "fault.http.abort.abort_percent": "numerator: 20\ndenominator: TEN_THOUSAND",
        "flag": "true", "name": "x",
    }
    fraction = layer.values["fault.http.abort.abort_percent"].fraction
    assert fraction is not None and (fraction.numerator, fraction.denominator) == (20, 10_000)


@pytest.mark.parametrize("value", [[1, 2], None])
def test_static_layer_refuses_lists_and_nulls_naming_the_key(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        static_layer("base", struct({"a": {"b": value}}), "layered_runtime.layers[0].static_layer")
    assert info.value.reason == "Invalid runtime entry value for a.b"
    assert info.value.field == "layered_runtime.layers[0].static_layer"


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_disk_layer_keys_are_paths_with_dots(tmp_path: Path) -> None:
    write(tmp_path, "fault/http/abort/abort_percent", "100\n")
    write(tmp_path, "fault/http/abort/http_status", "503")
    write(tmp_path, "upstream/healthy_panic_threshold", "# placeholder, no value yet\n")
    layer = disk_layer("disk", str(tmp_path))
    assert layer.raw_values() == {
        "fault.http.abort.abort_percent": "100",
        "fault.http.abort.http_status": "503",
        "upstream.healthy_panic_threshold": "",
    }
    assert layer.values["fault.http.abort.abort_percent"].uint_value == 100


@pytest.mark.parametrize(("text", "value"), [
    ("100\n", "100"),
    ("# why: incident 42\n50  \n", "50"),
    ("a\n\nb\n", "a\nb"),  # empty lines are dropped, the last line is right-trimmed
    ("100\n# trailing comment", "100\n"),  # Envoy's quirk: only the text-wise last line loses its newline
    ("", ""),
])
def test_disk_values_drop_comment_lines(tmp_path: Path, text: str, value: str) -> None:
    write(tmp_path, "key", text)
    assert disk_layer("disk", str(tmp_path)).raw_values() == {"key": value}


def test_symbolic_links_inside_the_tree_are_followed(tmp_path: Path) -> None:
    write(tmp_path / "elsewhere", "value", "7")
    (tmp_path / "tree").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "tree" / "linked")
    assert disk_layer("disk", str(tmp_path / "tree")).raw_values() == {"linked.value": "7"}


def test_unreadable_trees_are_errors(tmp_path: Path) -> None:
    os.symlink(tmp_path / "missing", tmp_path / "dangling")
    with pytest.raises(DiskLayerError):
        disk_layer("disk", str(tmp_path))
    deep = tmp_path / "deep"
    path = deep
    for index in range(MAX_WALK_DEPTH):
        path = path / f"d{index}"
    write(path, "key", "1")
    with pytest.raises(DiskLayerError, match="Walk recursion depth exceeded 16"):
        disk_layer("disk", str(deep))


def test_admin_layer_merges_and_removes_with_an_empty_value() -> None:
    layer = AdminLayer("admin", {})
    layer.merge({"a": "1", "b": "2"})
    snapshot_copy = layer.copy()
    layer.merge({"a": "", "c": "3", "missing": ""})
    assert layer.raw_values() == {"b": "2", "c": "3"}
    assert snapshot_copy.raw_values() == {"a": "1", "b": "2"}  # a snapshot's copy does not change
