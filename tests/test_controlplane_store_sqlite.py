"""SqliteStore specifics: durability across restarts, WAL, and transaction rollback."""

from __future__ import annotations

import sqlite3

import pytest

from tulle.controlplane.model import Resource
from tulle.controlplane.store import SqliteStore
from tulle.controlplane.store.base import EncodedResource
from tulle.controlplane.store.sqlite import DATABASE_FILE


def gateway(name: str, namespace: str = "default", port: int = 80) -> Resource:
    return Resource(kind="Gateway", api_version="networking.istio.io/v1", name=name, namespace=namespace,
                    spec={"servers": [{"port": {"number": port, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}]},
                    labels={"app": name})


def test_reopening_the_state_dir_finds_everything(tmp_path) -> None:
    state = tmp_path / "state"
    store = SqliteStore(state)
    store.apply([gateway("a"), gateway("b", "prod")])
    store.apply([gateway("a", port=8080)])
    store.delete("Gateway", "prod", "b")
    revision = store.revision()
    store.close()

    reopened = SqliteStore(state)
    try:
        assert [(r.namespace, r.name) for r in reopened.list()] == [("default", "a")]
        stored = reopened.get("Gateway", "default", "a")
        assert stored is not None and stored.spec["servers"][0]["port"]["number"] == 8080
        assert stored.labels == {"app": "a"}
        assert reopened.generation("Gateway", "default", "a") == 2
        assert reopened.revision() == revision
        # Generations keep counting after a restart.
        reopened.apply([gateway("a", port=9090)])
        assert reopened.generation("Gateway", "default", "a") == 3
    finally:
        reopened.close()


def test_uses_one_wal_file_in_the_state_dir(tmp_path) -> None:
    store = SqliteStore(tmp_path)
    try:
        assert store.journal_mode() == "wal"
        assert store.path == str(tmp_path / DATABASE_FILE)
    finally:
        store.close()


def test_committed_data_is_visible_to_another_connection(tmp_path) -> None:
    store = SqliteStore(tmp_path)
    try:
        store.apply([gateway("a")])
        # A second process (here, a second connection) reads what apply acknowledged.
        with sqlite3.connect(tmp_path / DATABASE_FILE) as other:
            assert other.execute("SELECT name FROM resources").fetchall() == [("a",)]
    finally:
        store.close()


class FailingStore(SqliteStore):
    """Fails while writing the n-th row, after earlier rows of the batch were written."""

    fail_at = 2

    def _upsert(self, entry: EncodedResource, revision: int) -> str:
        self.fail_at -= 1
        if self.fail_at == 0:
            raise sqlite3.OperationalError("disk I/O error (injected)")
        return super()._upsert(entry, revision)


def test_failure_mid_transaction_rolls_everything_back(tmp_path) -> None:
    store = FailingStore(tmp_path)
    try:
        store.fail_at = 0  # no failure for the setup
        store.apply([gateway("kept")])
        revision = store.revision()
        store.fail_at = 2
        with pytest.raises(sqlite3.OperationalError):
            store.apply([gateway("kept", port=1234), gateway("second")])
        assert [r.name for r in store.list()] == ["kept"]
        kept = store.get("Gateway", "default", "kept")
        assert kept is not None and kept.spec["servers"][0]["port"]["number"] == 80
        assert store.generation("Gateway", "default", "kept") == 1
        assert store.revision() == revision
        # The connection is usable after the rollback.
        store.fail_at = 0
        assert store.apply([gateway("second")]) == (["Gateway default/second"], [])
    finally:
        store.close()


def test_refuses_a_newer_schema(tmp_path) -> None:
    with sqlite3.connect(tmp_path / DATABASE_FILE) as db:
        db.execute("PRAGMA user_version=99")
    with pytest.raises(ValueError, match="schema version 99"):
        SqliteStore(tmp_path)
