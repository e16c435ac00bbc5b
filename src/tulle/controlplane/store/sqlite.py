"""The default ConfigStore: one SQLite file, ``<state_dir>/config.db``, in WAL mode.

WAL lets readers (the HTTP API, snapshot builds) proceed while a batch is being written, and
``synchronous=FULL`` makes a commit durable once ``apply`` returns, so a control plane restarted
on the same state directory finds exactly what it acknowledged. One connection is shared and
guarded by a lock: writes are rare and small, and a single writer is what SQLite wants anyway.

Opening checks the database first and refuses a damaged one (``state.preflight``: truncated,
missing once initialised, failing SQLite's integrity check), locks the state directory, and
then saves a last good copy (``state.py``), as it does again on close. Instance leases are kept in their own table so a
restarted control plane still knows its instances (docs/control-plane.md, "Leases").
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence

from tulle.controlplane.model import Resource
from tulle.controlplane.store import state
from tulle.controlplane.store.base import ConfigStore, EncodedResource, StoreError
from tulle.controlplane.store.state import DATABASE_FILE, StateError

__all__ = ["DATABASE_FILE", "SCHEMA_VERSION", "SqliteStore"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL,
    namespace TEXT NOT NULL,
    name TEXT NOT NULL,
    api_version TEXT NOT NULL,
    spec TEXT NOT NULL,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    source TEXT NOT NULL,
    generation INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (kind, namespace, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS store_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    revision INTEGER NOT NULL
);
INSERT OR IGNORE INTO store_state (id, revision) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    lease TEXT NOT NULL
) WITHOUT ROWID;
"""
_COLUMNS = "kind, namespace, name, api_version, spec, labels, annotations, source"


class SqliteStore(ConfigStore):
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        super().__init__()
        os.makedirs(state_dir, exist_ok=True)
        self.state_dir = os.fspath(state_dir)
        self.path = state.database_path(state_dir)
        self._lock = threading.Lock()
        self._state_lock = state.StateLock(state_dir, "a control plane")
        try:
            state.preflight(state_dir)
            self._db = self._open()
            state.write_marker(state_dir)
        except BaseException:
            self._state_lock.release()
            raise
        self.save_last_good()

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) below.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema version {version} is newer than this Tulle "
                                 f"understands ({SCHEMA_VERSION})")
            db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
        except sqlite3.DatabaseError as error:
            db.close()
            raise StateError(state.damage_message(self.state_dir, f"SQLite cannot use it: {error}")) from None
        except BaseException:
            db.close()
            raise
        return db

    def save_last_good(self) -> bool:
        """Copy the database to ``config.db.last-good`` (checked, then renamed into place); whether it did."""
        with self._lock:
            return state.save_last_good(self._db, self.state_dir)

    def journal_mode(self) -> str:
        with self._lock:
            return str(self._db.execute("PRAGMA journal_mode").fetchone()[0])

    def list(self, kind: str | None = None, namespace: str | None = None) -> list[Resource]:
        conditions, parameters = [], []
        if kind is not None:
            conditions.append("kind = ?")
            parameters.append(kind)
        if namespace is not None:
            conditions.append("namespace = ?")
            parameters.append(namespace)
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM resources{where} ORDER BY kind, namespace, name", parameters).fetchall()
        return [EncodedResource(*row).decode() for row in rows]

    def get(self, kind: str, namespace: str, name: str) -> Resource | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM resources WHERE kind = ? AND namespace = ? AND name = ?",
                                   (kind, namespace, name)).fetchone()
        return None if row is None else EncodedResource(*row).decode()

    def generation(self, kind: str, namespace: str, name: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT generation FROM resources WHERE kind = ? AND namespace = ? AND name = ?",
                                   (kind, namespace, name)).fetchone()
        return 0 if row is None else int(row[0])

    def revision(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT revision FROM store_state WHERE id = 1").fetchone()[0])

    def _commit_apply(self, batch: Sequence[EncodedResource]) -> tuple[list[str], list[str]]:
        created: list[str] = []
        updated: list[str] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                revision = int(self._db.execute("SELECT revision FROM store_state WHERE id = 1").fetchone()[0]) + 1
                for entry in batch:
                    outcome = self._upsert(entry, revision)
                    if outcome == "created":
                        created.append(entry.ref)
                    elif outcome == "updated":
                        updated.append(entry.ref)
                if created or updated:
                    self._db.execute("UPDATE store_state SET revision = ? WHERE id = 1", (revision,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return created, updated

    def _upsert(self, entry: EncodedResource, revision: int) -> str:
        """Write one resource inside the open transaction: "created", "updated" or "unchanged"."""
        row = self._db.execute(
            f"SELECT {_COLUMNS}, generation FROM resources WHERE kind = ? AND namespace = ? AND name = ?",
            entry.key).fetchone()
        if row is not None and EncodedResource(*row[:-1]).same_content(entry):
            return "unchanged"
        generation = 1 if row is None else int(row[-1]) + 1
        self._db.execute(
            f"INSERT OR REPLACE INTO resources ({_COLUMNS}, generation, revision) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (entry.kind, entry.namespace, entry.name, entry.api_version, entry.spec, entry.labels,
             entry.annotations, entry.source, generation, revision))
        return "created" if row is None else "updated"

    def _commit_delete(self, keys: Sequence[tuple[str, str, str]], require_all: bool
                       ) -> tuple[list[str], list[str]]:
        deleted: list[str] = []
        missing: list[str] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for key in keys:
                    cursor = self._db.execute("DELETE FROM resources WHERE kind = ? AND namespace = ? AND name = ?",
                                              key)
                    (deleted if cursor.rowcount else missing).append(f"{key[0]} {key[1]}/{key[2]}")
                if missing and require_all:
                    self._db.execute("ROLLBACK")
                    return [], missing
                if deleted:
                    self._db.execute("UPDATE store_state SET revision = revision + 1 WHERE id = 1")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return deleted, missing

    def save_leases(self, leases: Mapping[str, str], removed: Iterable[str]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM leases WHERE id = ?", [(lease_id,) for lease_id in removed])
                self._db.executemany("INSERT OR REPLACE INTO leases (id, lease) VALUES (?, ?)", leases.items())
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def load_leases(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT id, lease FROM leases ORDER BY id").fetchall())

    def close(self) -> None:
        """Save a last good copy of what is stored now, then close and unlock the state directory."""
        with self._lock:
            if self._db is None:
                return
            try:
                if not state.save_last_good(self._db, self.state_dir):
                    log.error("%s failed its integrity check: the last good copy was kept as it was", self.path)
            except (OSError, sqlite3.Error):
                log.exception("saving the last good copy of %s failed", self.path)
            self._db.close()
            self._db = None  # type: ignore[assignment]
        self._state_lock.release()
