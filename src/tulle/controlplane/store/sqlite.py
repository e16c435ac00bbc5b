"""The default ConfigStore: one SQLite file, ``<state_dir>/config.db``, in WAL mode.

WAL lets readers (the HTTP API, snapshot builds) proceed while a batch is being written, and
``synchronous=FULL`` makes a commit durable once ``apply`` returns, so a control plane restarted
on the same state directory finds exactly what it acknowledged. One connection is shared and
guarded by a lock: writes are rare and small, and a single writer is what SQLite wants anyway.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence

from tulle.controlplane.model import Resource
from tulle.controlplane.store.base import ConfigStore, EncodedResource, StoreError

DATABASE_FILE = "config.db"
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
"""
_COLUMNS = "kind, namespace, name, api_version, spec, labels, annotations, source"


class SqliteStore(ConfigStore):
    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        super().__init__()
        os.makedirs(state_dir, exist_ok=True)
        self.path = os.path.join(os.fspath(state_dir), DATABASE_FILE)
        self._lock = threading.Lock()
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) below.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"{self.path}: schema version {version} is newer than this Tulle "
                                 f"understands ({SCHEMA_VERSION})")
            self._db.executescript(f"BEGIN; {_SCHEMA} PRAGMA user_version={SCHEMA_VERSION}; COMMIT;")
        except Exception:
            self._db.close()
            raise

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

    def _commit_delete(self, kind: str, namespace: str, name: str) -> bool:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute("DELETE FROM resources WHERE kind = ? AND namespace = ? AND name = ?",
                                          (kind, namespace, name))
                if cursor.rowcount:
                    self._db.execute("UPDATE store_state SET revision = revision + 1 WHERE id = 1")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return cursor.rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
