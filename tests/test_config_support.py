"""Whitelist checks refuse any set field Tulle does not implement, naming it."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3.cluster_pb2 import Cluster

from tulle.config.errors import ConfigError, UnsupportedFeature, join
from tulle.config.loader import parse_message
from tulle.config.support import check_fields, duration_seconds


def test_set_field_outside_whitelist_is_refused_with_path() -> None:
    cluster = parse_message({"name": "c", "outlier_detection": {}}, Cluster)
    with pytest.raises(UnsupportedFeature) as err:
        check_fields(cluster, ("name",), "static_resources.clusters[2]")
    assert err.value.field == "static_resources.clusters[2].outlier_detection"
    assert "envoy.config.cluster.v3.Cluster.outlier_detection" in str(err.value)
    assert isinstance(err.value, ConfigError)


def test_default_values_count_as_unset() -> None:
    cluster = parse_message({"name": "c", "connect_timeout": "2.5s"}, Cluster)
    check_fields(cluster, ("name", "connect_timeout"), "x")
    check_fields(cluster, ("name", "connect_timeout", "never_set"), "x")
    assert duration_seconds(cluster.connect_timeout) == 2.5


def test_ignored_fields_are_accepted() -> None:
    cluster = parse_message({"name": "c", "metadata": {}}, Cluster)
    check_fields(cluster, ("name",), "x", ignored=("metadata",))


def test_join_paths() -> None:
    assert join("", "a") == "a"
    assert join("a", "b") == "a.b"
    assert join("a", "[3]") == "a[3]"


def test_refusals_name_envoys_canonical_extension() -> None:
    from tulle.extensions.registry import canonical_name, describe

    assert canonical_name("envoy.extensions.filters.http.lua.v3.Lua") == "envoy.filters.http.lua"
    assert canonical_name("envoy.extensions.filters.http.router.v3.Router") == "envoy.filters.http.router"
    assert canonical_name("acme.v1.Thing") == "acme.v1.Thing"
    assert describe("my_lua", "envoy.extensions.filters.http.lua.v3.Lua") == (
        "my_lua (envoy.filters.http.lua, type envoy.extensions.filters.http.lua.v3.Lua)")
