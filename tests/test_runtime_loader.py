"""The runtime loader: LayeredRuntime validation, snapshots from static/disk/admin layers, Envoy's
runtime.* stats, the /runtime view, and (real proxies) every worker seeing the same values."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap, LayeredRuntime

from backends import echo_backend, get, wait_until
from proxy_harness import ProxyProcess, free_port, http_listener, simple_route, static_cluster
from tulle.config.errors import ConfigError, UnsupportedFeature
from tulle.config.loader import parse_message
from tulle.runtime import NoAdminLayer, Runtime
from tulle.stats.store import Store

FIELD = "layered_runtime"


def loader(*layers: dict[str, Any], service_cluster: str = "") -> Runtime:
    return Runtime.from_proto(parse_message({"layers": list(layers)}, LayeredRuntime), FIELD, service_cluster)


def disk(name: str, root: Path, **options: Any) -> dict[str, Any]:
    return {"name": name, "disk_layer": {"symlink_root": str(root / "current"), **options}}


def write(root: Path, relative: str, value: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(value)


def swap(root: Path, target: str) -> None:
    os.symlink(root / target, root / "new")
    os.replace(root / "new", root / "current")


def stats_of(runtime: Runtime) -> dict[str, int]:
    store = Store()
    runtime.stats.attach(store)
    values = {name: counter.value for name, counter in store.counters.items()}
    values.update({name: gauge.value for name, gauge in store.gauges.items()})
    return values


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("layers", "field", "reason"), [
    ([{"name": "a", "static_layer": {}}, {"name": "a", "admin_layer": {}}], "layers[1].name", "Duplicate layer name: a"),
    ([{"name": "a", "admin_layer": {}}, {"name": "b", "admin_layer": {}}], "layers[1].admin_layer",
     "Too many admin layers specified in LayeredRuntime, at most one may be specified"),
    ([{"name": "a"}], "layers[0]", "one of static_layer, disk_layer, admin_layer is required"),
    ([{"name": "a", "static_layer": {"k": [1]}}], "layers[0].static_layer", "Invalid runtime entry value for k"),
])
def test_invalid_layered_runtimes_are_refused_as_envoy_refuses_them(layers: list, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        loader(*layers)
    assert (info.value.field, info.value.reason) == (f"{FIELD}.{field}", reason)


def test_rtds_layers_are_refused_by_name() -> None:
    with pytest.raises(UnsupportedFeature) as info:
        loader({"name": "rtds", "rtds_layer": {"name": "runtime"}})
    assert info.value.field == f"{FIELD}.layers[0].rtds_layer"
    assert "rtds_layer" in str(info.value)


def test_without_layered_runtime_nothing_is_set_and_nothing_changes() -> None:
    runtime = Runtime.from_bootstrap(Bootstrap())
    assert (runtime.layered, runtime.dynamic, runtime.export()) == (False, False, [])
    with pytest.raises(NoAdminLayer, match="No admin layer specified"):
        runtime.merge_admin({"a": "1"})
    assert stats_of(runtime) == {"runtime.load_success": 1, "runtime.load_error": 0,
                                 "runtime.override_dir_exists": 0, "runtime.override_dir_not_exists": 1,
                                 "runtime.admin_overrides_active": 0, "runtime.num_keys": 0,
                                 "runtime.num_layers": 0}


def test_an_empty_layered_runtime_gets_an_admin_layer() -> None:
    runtime = Runtime.from_proto(LayeredRuntime(), FIELD)
    runtime.merge_admin({"a": "1"})
    assert runtime.admin_view() == {"layers": [""], "entries": {"a": {"layer_values": ["1"], "final_value": "1"}}}


# --------------------------------------------------------------------------- snapshots


def test_layers_in_order_later_ones_win(tmp_path: Path) -> None:
    write(tmp_path / "v1", "envoy/a", "disk")
    write(tmp_path / "v1", "envoy/b", "disk")
    swap(tmp_path, "v1")
    runtime = loader({"name": "base", "static_layer": {"a": "static", "c": 3}},
                     disk("disk", tmp_path, subdirectory="envoy"), {"name": "admin", "admin_layer": {}})
    runtime.merge_admin({"b": "admin"})
    assert runtime.snapshot.get("a") == "disk" and runtime.snapshot.get("b") == "admin"
    assert runtime.snapshot.integer("c", 0) == 3
    assert runtime.admin_view() == {
        "layers": ["base", "disk", "admin"],
        "entries": {
            "a": {"layer_values": ["static", "disk", ""], "final_value": "disk"},
            "b": {"layer_values": ["", "disk", "admin"], "final_value": "admin"},
            "c": {"layer_values": ["3", "", ""], "final_value": "3"},
        },
    }


def test_disk_layers_are_read_again_on_reload_and_left_out_while_missing(tmp_path: Path) -> None:
    runtime = loader(disk("root", tmp_path, subdirectory="envoy"),
                     disk("override", tmp_path, subdirectory="envoy_override", append_service_cluster=True),
                     service_cluster="web")
    assert runtime.export() == []  # no symlink yet: no layer, and that is no error
    write(tmp_path / "v1", "envoy/health_check/min_interval", "5")
    write(tmp_path / "v1", "envoy_override/web/health_check/min_interval", "9")
    write(tmp_path / "v1", "envoy_override/api/health_check/min_interval", "1")  # another service cluster's
    swap(tmp_path, "v1")
    assert runtime.snapshot.integer("health_check.min_interval", 0) == 0  # not before a reload
    runtime.reload()
    assert runtime.snapshot.integer("health_check.min_interval", 0) == 9
    assert runtime.export() == [["root", {"health_check.min_interval": "5"}],
                                ["override", {"health_check.min_interval": "9"}]]
    stats = stats_of(runtime)
    assert (stats["runtime.load_success"], stats["runtime.num_layers"], stats["runtime.num_keys"]) == (2, 2, 1)
    assert (stats["runtime.override_dir_not_exists"], stats["runtime.override_dir_exists"]) == (1, 1)


def test_an_unreadable_disk_layer_is_a_load_error_and_the_others_still_load(tmp_path: Path) -> None:
    write(tmp_path / "v1", "good/key", "1")
    (tmp_path / "v1" / "bad").mkdir()
    os.symlink(tmp_path / "gone", tmp_path / "v1" / "bad" / "dangling")
    swap(tmp_path, "v1")
    runtime = loader(disk("good", tmp_path, subdirectory="good"), disk("bad", tmp_path, subdirectory="bad"))
    assert [name for name, _ in runtime.export()] == ["good"]
    assert stats_of(runtime)["runtime.load_error"] == 1 and stats_of(runtime)["runtime.load_success"] == 0


def test_admin_overrides_and_their_stats() -> None:
    runtime = loader({"name": "admin", "admin_layer": {}})
    changes: list[int] = []
    runtime.on_change = lambda: changes.append(1)
    runtime.merge_admin({"a": "1", "b": "x"})
    assert stats_of(runtime)["runtime.admin_overrides_active"] == 1
    runtime.merge_admin({"a": "", "b": ""})
    stats = stats_of(runtime)
    assert (stats["runtime.admin_overrides_active"], stats["runtime.num_keys"], stats["runtime.load_success"]) == (
        0, 0, 3)
    assert len(changes) == 2  # each new snapshot is announced (the server forwards it to the other workers)


def test_another_workers_snapshot_installs_the_same_values() -> None:
    owner = loader({"name": "base", "static_layer": {"a": 1}}, {"name": "admin", "admin_layer": {}})
    owner.merge_admin({"fault.http.abort.abort_percent": "numerator: 5\ndenominator: MILLION"})
    follower = loader({"name": "base", "static_layer": {"a": 1}}, {"name": "admin", "admin_layer": {}})
    values_before = follower.values
    follower.install(json.loads(json.dumps(owner.export())))  # as sent over the control channel
    assert follower.values is not values_before  # swapped whole: a request reads one snapshot
    assert follower.admin_view() == owner.admin_view()
    fraction = follower.values["fault.http.abort.abort_percent"].fraction
    assert fraction is not None and (fraction.numerator, fraction.denominator) == (5, 1_000_000)


def test_only_the_owner_watches_and_keeps_stats(tmp_path: Path) -> None:
    async def scenario() -> tuple[Store, Store, str | None]:
        loop = asyncio.get_running_loop()
        owner, follower = (loader(disk("disk", tmp_path, subdirectory="envoy")) for _ in range(2))
        owner_store, follower_store = Store(), Store()
        owner.start(loop, owner_store, owner=True)
        follower.start(loop, follower_store, owner=False)
        write(tmp_path / "v1", "envoy/key", "on")
        swap(tmp_path, "v1")
        deadline = time.monotonic() + 5
        while owner.snapshot.get("key") is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        owner.stop()
        follower.stop()
        return owner_store, follower_store, owner.snapshot.get("key") or follower.snapshot.get("key")

    owner_store, follower_store, value = asyncio.run(scenario())
    assert value == "on"
    assert owner_store.counters["runtime.load_success"].value == 2  # start-up, then the swap
    assert not any(name.startswith("runtime.") for name in [*follower_store.counters, *follower_store.gauges])


def test_a_swap_before_the_watch_starts_is_not_missed(tmp_path: Path) -> None:
    runtime = loader(disk("disk", tmp_path, subdirectory="envoy"))  # loaded: nothing there yet
    write(tmp_path / "v1", "envoy/key", "early")
    swap(tmp_path, "v1")  # e.g. while the workers fork

    async def start() -> None:
        runtime.start(asyncio.get_running_loop(), Store(), owner=True)
        runtime.stop()

    asyncio.run(start())
    assert runtime.snapshot.get("key") == "early"


# --------------------------------------------------------------------------- real proxies, two workers


def fault_bootstrap(port: int, backend: int, runtime_root: Path) -> dict[str, Any]:
    listener = http_listener("ingress", port, simple_route("backend"))
    listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].insert(0, {
        "name": "envoy.filters.http.fault",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault",
                         "abort": {"http_status": 503, "percentage": {"numerator": 0}}}})
    return {
        "static_resources": {"listeners": [listener], "clusters": [static_cluster("backend", [backend])]},
        "layered_runtime": {"layers": [
            {"name": "disk", "disk_layer": {"symlink_root": str(runtime_root / "current"), "subdirectory": "envoy"}},
            {"name": "admin", "admin_layer": {}},
        ]},
    }


def statuses(port: int, count: int = 24) -> set[int]:
    """Each request on a new connection: with SO_REUSEPORT they spread over the workers."""
    return {get(port).status for _ in range(count)}


@pytest.mark.integration
def test_every_worker_sees_admin_and_disk_changes(tmp_path: Path) -> None:
    runtime_root = tmp_path / "runtime"
    runtime_root.mkdir()
    port = free_port()
    with echo_backend() as backend, ProxyProcess(fault_bootstrap(port, backend, runtime_root), tmp_path,
                                                 concurrency=2) as proxy:
        assert statuses(port) == {200}
        status, body = proxy.admin("POST", "/runtime_modify?fault.http.abort.abort_percent=100")
        assert (status, body) == (200, "OK\n")
        # answered once both workers have the value: no request may still pass
        assert statuses(port) == {503}
        assert proxy.admin("POST", "/runtime_modify?fault.http.abort.abort_percent=")[0] == 200
        assert statuses(port) == {200}

        write(runtime_root / "v1", "envoy/fault/http/abort/abort_percent", "100\n")
        write(runtime_root / "v1", "envoy/fault/http/abort/http_status", "429\n")
        swap(runtime_root, "v1")
        assert wait_until(lambda: statuses(port, 8) == {429}, timeout=10), proxy.output()
        assert statuses(port) == {429}
        view = json.loads(proxy.admin("GET", "/runtime")[1])
        assert view["layers"] == ["disk", "admin"]
        assert view["entries"]["fault.http.abort.http_status"] == {"layer_values": ["429", ""],
                                                                   "final_value": "429"}
        stats = proxy.stats()
        # counted by the main process alone: start-up, two admin changes, one swap
        assert stats["runtime.load_success"] == 4 and stats["runtime.num_layers"] == 2
        assert stats["runtime.admin_overrides_active"] == 0
