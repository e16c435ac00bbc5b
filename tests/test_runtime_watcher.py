"""The symlink-swap watcher: inotify IN_MOVED_TO on the parent directory (as Envoy), polling elsewhere."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from tulle.config.errors import ConfigError
from tulle.runtime import watcher as watcher_module
from tulle.runtime.watcher import SymlinkWatcher


def swap(root: Path, target: str) -> None:
    """``ln -s <target> new && mv -Tf new current``"""
    os.symlink(root / target, root / "new")
    os.replace(root / "new", root / "current")


async def swaps_seen(root: Path, actions: list, settle: float = 0.3) -> int:
    seen: list[int] = []
    watcher = SymlinkWatcher(lambda: seen.append(1))
    watcher.add(str(root / "current"), "field")
    watcher.start(asyncio.get_running_loop())
    try:
        for action in actions:
            action()
            await asyncio.sleep(settle)
    finally:
        watcher.close()
    return len(seen)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for version in ("v1", "v2"):
        (tmp_path / version).mkdir()
    return tmp_path


def test_a_swap_is_seen_and_an_edit_in_place_is_not(root: Path) -> None:
    actions = [lambda: swap(root, "v1"), lambda: (root / "v1" / "key").write_text("1"), lambda: swap(root, "v2")]
    assert asyncio.run(swaps_seen(root, actions)) == 2


def test_other_names_in_the_directory_are_ignored(root: Path) -> None:
    def unrelated() -> None:
        os.symlink(root / "v1", root / "other-new")
        os.replace(root / "other-new", root / "other")

    assert asyncio.run(swaps_seen(root, [unrelated])) == 0


def test_polling_where_inotify_is_missing(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watcher_module, "_libc", lambda: None)
    monkeypatch.setattr(watcher_module, "POLL_INTERVAL_S", 0.02)
    assert asyncio.run(swaps_seen(root, [lambda: swap(root, "v1"), lambda: swap(root, "v1")])) == 2


@pytest.mark.parametrize("inotify", [True, False])
def test_a_missing_parent_directory_fails_start_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    inotify: bool) -> None:
    if not inotify:
        monkeypatch.setattr(watcher_module, "_libc", lambda: None)

    async def start() -> None:
        watcher = SymlinkWatcher(lambda: None)
        watcher.add(str(tmp_path / "nowhere" / "current"), "layered_runtime.layers[0].disk_layer.symlink_root")
        watcher.start(asyncio.get_running_loop())

    with pytest.raises(ConfigError) as info:
        asyncio.run(start())
    assert info.value.field == "layered_runtime.layers[0].disk_layer.symlink_root"
    assert "unable to add filesystem watch for file" in info.value.reason


def test_a_failing_reload_does_not_stop_the_watcher(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def reload() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    async def scenario() -> None:
        watcher = SymlinkWatcher(reload)
        watcher.add(str(root / "current"), "field")
        watcher.start(asyncio.get_running_loop())
        for target in ("v1", "v2"):
            swap(root, target)
            await asyncio.sleep(0.3)
        watcher.close()

    asyncio.run(scenario())
    assert len(calls) == 2 and "runtime reload failed" in caplog.text
