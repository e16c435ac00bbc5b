"""The state directory: damaged databases are refused with what to do, the last good copy, restore."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from tulle.controlplane.model import Resource
from tulle.controlplane.store import SqliteStore, StateError, state


def gateway(name: str) -> Resource:
    return Resource(kind="Gateway", api_version="networking.istio.io/v1", name=name,
                    spec={"servers": [{"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]})


def filled_state(directory: Path, names: tuple[str, ...] = ("a", "b")) -> None:
    store = SqliteStore(directory)
    store.apply([gateway(name) for name in names])
    store.close()


def database(directory: Path) -> Path:
    return directory / state.DATABASE_FILE


def truncate(path: Path) -> None:
    path.write_bytes(b"")


def corrupt(path: Path) -> None:
    """Overwrite pages in the middle of the file, as a torn write or a bad disk would."""
    data = bytearray(path.read_bytes())
    for offset in range(4096, len(data), 4096):
        data[offset + 100:offset + 600] = os.urandom(500)
    path.write_bytes(bytes(data))


def test_a_truncated_database_is_refused_naming_the_file_and_the_way_back(tmp_path: Path) -> None:
    filled_state(tmp_path, tuple(f"gw-{i}" for i in range(50)))
    truncate(database(tmp_path))
    with pytest.raises(StateError) as refused:
        SqliteStore(tmp_path)
    message = str(refused.value)
    assert f"{database(tmp_path)}: the file is empty (0 bytes): it was truncated" in message
    assert f"tulle state restore --state-dir {tmp_path}" in message and "50 resources" in message
    assert database(tmp_path).stat().st_size == 0  # nothing was changed


def test_a_corrupt_database_is_refused_not_a_traceback(tmp_path: Path) -> None:
    filled_state(tmp_path, tuple(f"gw-{i}" for i in range(200)))
    corrupt(database(tmp_path))
    with pytest.raises(StateError, match=f"{database(tmp_path)}: .*(integrity check failed|cannot)"):
        SqliteStore(tmp_path)


def test_a_missing_database_in_an_initialised_directory_is_refused(tmp_path: Path) -> None:
    filled_state(tmp_path)
    database(tmp_path).unlink()
    with pytest.raises(StateError, match="the file is missing, but this state directory was initialised"):
        SqliteStore(tmp_path)


def test_a_fresh_directory_starts_empty_and_keeps_a_last_good_copy(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "new")
    try:
        assert store.list() == []
        assert (tmp_path / "new" / state.MARKER_FILE).exists()
        store.apply([gateway("a")])
        assert store.save_last_good()
    finally:
        store.close()
    copy = state.check_database(state.last_good_path(tmp_path / "new"))
    assert (copy.ok, copy.resources) == (True, 1)


def test_restore_puts_the_last_good_copy_back_and_keeps_the_damaged_file(tmp_path: Path) -> None:
    filled_state(tmp_path)
    truncate(database(tmp_path))
    report = state.restore(tmp_path)
    assert "2 resources" in report
    damaged = [name for name in os.listdir(tmp_path) if name.startswith("config.db.damaged-")]
    assert len(damaged) == 1 and (tmp_path / damaged[0]).stat().st_size == 0
    store = SqliteStore(tmp_path)
    try:
        assert [r.name for r in store.list()] == ["a", "b"]
    finally:
        store.close()


def test_restore_refuses_a_whole_database_without_force_and_while_a_store_runs(tmp_path: Path) -> None:
    filled_state(tmp_path)
    with pytest.raises(StateError, match="is whole .* add --force"):
        state.restore(tmp_path)
    store = SqliteStore(tmp_path)
    try:
        with pytest.raises(StateError, match="is in use by a control plane"):
            state.restore(tmp_path, force=True)
        with pytest.raises(StateError, match="is in use"):
            SqliteStore(tmp_path)  # one control plane per state directory
    finally:
        store.close()
    assert "restored" in state.restore(tmp_path, force=True)


def test_a_damaged_copy_never_replaces_the_last_good_one(tmp_path: Path) -> None:
    filled_state(tmp_path)
    good = Path(state.last_good_path(tmp_path)).read_bytes()

    class Broken(sqlite3.Connection):
        def backup(self, target: sqlite3.Connection, **kwargs: object) -> None:
            super().backup(target, **kwargs)
            target.execute("PRAGMA writable_schema=ON")
            target.execute("UPDATE sqlite_schema SET rootpage = 9999 WHERE name = 'resources'")

    db = sqlite3.connect(database(tmp_path), factory=Broken, isolation_level=None)
    try:
        assert state.save_last_good(db, tmp_path) is False
    finally:
        db.close()
    assert Path(state.last_good_path(tmp_path)).read_bytes() == good


def test_describe_and_read_resources(tmp_path: Path) -> None:
    filled_state(tmp_path)
    healthy, lines = state.describe(tmp_path)
    assert healthy and lines[0].startswith(f"{database(tmp_path)}: ok, 2 resources")
    resources, problem = state.read_resources(str(database(tmp_path)))
    assert ([r.name for r in resources], problem) == (["a", "b"], "")
    truncate(database(tmp_path))
    healthy, lines = state.describe(tmp_path)
    assert not healthy and lines[0].startswith("DAMAGED: ") and "ok, 2 resources" in lines[1]
    assert state.describe(tmp_path / "elsewhere") == (True, [
        f"{tmp_path / 'elsewhere'}: no configuration stored yet (config.db does not exist)"])
