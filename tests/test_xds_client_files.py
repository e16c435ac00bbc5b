"""File-based xDS (path_config_source) for listeners and clusters: applied at start, re-applied when
the file is replaced, and a bad file rejected whole while the previous config keeps serving."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from backends import echo_backend, get, wait_until
from proxy_harness import ProxyProcess, free_port, http_listener, simple_route, static_cluster
from tulle.config.errors import ConfigError
from tulle.xds_client.files import read_resources

LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"

pytestmark = pytest.mark.integration


def write_atomically(path: Path, document: dict[str, Any]) -> None:
    """As Envoy's docs advise: write elsewhere, then move into place."""
    staging = path.with_suffix(".tmp")
    staging.write_text(yaml.safe_dump(document))
    os.replace(staging, path)


def cds(port: int, version: str) -> dict[str, Any]:
    return {"version_info": version, "resources": [{"@type": CLUSTER, **static_cluster("backend", [port])}]}


def lds(port: int) -> dict[str, Any]:
    return {"resources": [{"@type": LISTENER, **http_listener("file_listener", port, simple_route("backend"))}]}


def test_resources_of_another_type_or_twice_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "cds.yaml"
    path.write_text(json.dumps(lds(1)))
    with pytest.raises(ConfigError, match="where envoy.config.cluster.v3.Cluster belongs"):
        read_resources(str(path), CLUSTER)
    twice = cds(1, "v1")
    twice["resources"].append(twice["resources"][0])
    path.write_text(json.dumps(twice))
    with pytest.raises(ConfigError, match="appears twice"):
        read_resources(str(path), CLUSTER)


def test_listeners_and_clusters_from_files_follow_the_files(tmp_path: Path) -> None:
    port = free_port()
    cds_path, lds_path = tmp_path / "cds.yaml", tmp_path / "lds.yaml"
    with echo_backend("first") as first, echo_backend("second") as second:
        write_atomically(cds_path, cds(first, "v1"))
        write_atomically(lds_path, lds(port))
        bootstrap = {"node": {"id": "n", "cluster": "c"}, "dynamic_resources": {
            "cds_config": {"path_config_source": {"path": str(cds_path)}},
            "lds_config": {"path_config_source": {"path": str(lds_path), "watched_directory": {
                "path": str(tmp_path)}}}}}
        with ProxyProcess(bootstrap, tmp_path) as proxy:
            wait_until(lambda: get(port, "/").header("x-served-by") == "first")
            write_atomically(cds_path, cds(second, "v2"))  # a new file moved into place
            wait_until(lambda: get(port, "/").header("x-served-by") == "second")
            stats = proxy.stats()
            assert stats["cluster_manager.cds.update_success"] == 2
            assert stats["listener_manager.lds.update_success"] == 1
            cds_path.write_text("resources: [{'@type': " + json.dumps(CLUSTER) + ", name: broken, type: NOPE}]")
            wait_until(lambda: proxy.stats()["cluster_manager.cds.update_rejected"] == 1)
            assert get(port, "/").header("x-served-by") == "second"  # the last good config serves on


def test_a_bad_path_source_is_refused_at_start(tmp_path: Path) -> None:
    bootstrap = {"node": {"id": "n"}, "dynamic_resources": {"cds_config": {"path_config_source": {}}}}
    with pytest.raises(RuntimeError, match="path is required"):
        with ProxyProcess(bootstrap, tmp_path):
            pass
