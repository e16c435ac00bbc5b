"""The state directory around ``config.db``: is the database whole, and how to get it back if not.

A control plane must never start on damaged state as if it were empty: it would serve an empty
mesh to every proxy, and the next apply would bury what was there. So, before the store opens
the database (docs/control-plane.md, "State directory"):

- ``config.db`` of 0 bytes is damage, never an empty store (SQLite writes its header as soon as
  the file is created); a missing ``config.db`` is damage once ``state.json`` says the directory
  was initialised;
- SQLite's ``PRAGMA quick_check`` must answer ``ok`` (a torn or overwritten page fails it);
- after every successful open, on close, and whenever the configuration changed (the control
  plane asks every minute), the database is copied with SQLite's backup API to
  ``config.db.last-good``: written to a temporary file, checked, then renamed over the previous
  copy, so the copy is always whole;
- a damaged state refuses to start with a message naming the file, what is wrong and what to do:
  ``tulle state restore`` moves the damaged files aside (``config.db.damaged-<time>``, never
  deleted) and puts the last good copy in their place.

A lock file (``flock``) keeps two control planes, or a restore and a control plane, from using
one state directory at once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from tulle.controlplane.model import Resource
from tulle.controlplane.store.base import EncodedResource, StoreError

DATABASE_FILE = "config.db"
MARKER_FILE = "state.json"
LOCK_FILE = "lock"
LAST_GOOD_SUFFIX = ".last-good"
DAMAGED_SUFFIX = ".damaged-"
SIDE_FILES = ("-wal", "-shm")  # SQLite's WAL and shared-memory index, part of the database
STATE_FORMAT = 1


class StateError(StoreError):
    """The state directory cannot be used as it is; the message says why and what to do."""


@dataclass(frozen=True)
class DatabaseReport:
    """What ``check_database`` found: ``problem`` is empty when the file is a whole Tulle database."""

    path: str
    problem: str = ""
    resources: int = 0
    revision: int = 0
    modified: float = 0.0  # the file's mtime

    @property
    def ok(self) -> bool:
        return not self.problem


def database_path(state_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(state_dir), DATABASE_FILE)


def last_good_path(state_dir: str | os.PathLike[str]) -> str:
    return database_path(state_dir) + LAST_GOOD_SUFFIX


def marker_path(state_dir: str | os.PathLike[str]) -> str:
    return os.path.join(os.fspath(state_dir), MARKER_FILE)


# --- checking ---------------------------------------------------------------------------


def quick_check(db: sqlite3.Connection) -> str:
    """SQLite's own verdict on an open database: "" when whole, else its first complaints."""
    try:
        rows = db.execute("PRAGMA quick_check(5)").fetchall()
    except sqlite3.DatabaseError as error:
        return f"SQLite cannot read it: {error}"
    found = [str(row[0]) for row in rows]
    return "" if found == ["ok"] else "SQLite's integrity check failed: " + "; ".join(found)


def check_database(path: str, expect_schema: bool = True) -> DatabaseReport:
    """Open ``path`` without creating or changing it and check it is a whole Tulle database."""
    if not os.path.exists(path):
        return DatabaseReport(path, "the file does not exist")
    stat = os.stat(path)
    if stat.st_size == 0:
        return DatabaseReport(path, "the file is empty (0 bytes): it was truncated", modified=stat.st_mtime)
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as error:
        return DatabaseReport(path, f"SQLite cannot open it: {error}", modified=stat.st_mtime)
    try:
        problem = quick_check(db)
        if problem:
            return DatabaseReport(path, problem, modified=stat.st_mtime)
        try:
            resources = int(db.execute("SELECT count(*) FROM resources").fetchone()[0])
            revision = int(db.execute("SELECT revision FROM store_state WHERE id = 1").fetchone()[0])
        except (sqlite3.Error, TypeError) as error:
            if not expect_schema:
                return DatabaseReport(path, modified=stat.st_mtime)
            return DatabaseReport(path, f"it holds no Tulle configuration tables ({error})", modified=stat.st_mtime)
        return DatabaseReport(path, "", resources, revision, stat.st_mtime)
    finally:
        db.close()


def preflight(state_dir: str | os.PathLike[str]) -> None:
    """Refuse (StateError) a database that is truncated, gone or unreadable, before it is opened for
    writing: opening it would start an empty configuration on top of the lost one."""
    path = database_path(state_dir)
    initialised = os.path.exists(marker_path(state_dir))
    if not os.path.exists(path):
        if initialised:
            raise StateError(damage_message(state_dir, "the file is missing, but this state directory was "
                                                       f"initialised ({marker_path(state_dir)} exists)"))
        return
    report = check_database(path, expect_schema=initialised)
    if not report.ok:
        raise StateError(damage_message(state_dir, report.problem))


def damage_message(state_dir: str | os.PathLike[str], problem: str) -> str:
    """What is wrong with the state directory's database and what the operator can do."""
    directory = os.fspath(state_dir)
    lines = [f"{database_path(directory)}: {problem}. The control plane did not start, so that it does not serve "
             "an empty or partial configuration; nothing was changed."]
    last_good = check_database(last_good_path(directory))
    if last_good.ok:
        lines.append(f"The last good copy {last_good.path} (from {_when(last_good.modified)}, {last_good.resources} "
                     f"resources) can replace it: `tulle state restore --state-dir {directory}` (the damaged file "
                     f"is kept as {DATABASE_FILE}{DAMAGED_SUFFIX}<time>). `tulle state check --state-dir {directory}` "
                     "shows both.")
    else:
        lines.append(f"There is no usable last good copy ({last_good.path}: {last_good.problem}): restore "
                     f"{DATABASE_FILE} from a backup, or move the state directory away to start with an empty "
                     "configuration.")
    return " ".join(lines)


def _when(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe(state_dir: str | os.PathLike[str]) -> tuple[bool, list[str]]:
    """``tulle state check``: whether the state directory can be started on, and a line per file."""
    directory = os.fspath(state_dir)
    path = database_path(directory)
    initialised = os.path.exists(marker_path(directory))
    lines = []
    if not os.path.exists(path) and not initialised:
        return True, [f"{directory}: no configuration stored yet ({DATABASE_FILE} does not exist)"]
    try:
        preflight(directory)
    except StateError as error:
        healthy, lines = False, [f"DAMAGED: {error}"]
    else:
        report = check_database(path)
        healthy = True
        lines.append(f"{path}: ok, {report.resources} resources, revision {report.revision}, "
                     f"last written {_when(report.modified)}")
    copy = check_database(last_good_path(directory))
    lines.append(f"{copy.path}: " + (f"ok, {copy.resources} resources, revision {copy.revision}, taken "
                                     f"{_when(copy.modified)}" if copy.ok else copy.problem))
    return healthy, lines


def read_resources(path: str) -> tuple[list[Resource], str]:
    """Every resource a database file holds, read without changing it, and what went wrong if it
    could not all be read (a damaged file gives what SQLite can still read)."""
    resources: list[Resource] = []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            for row in db.execute("SELECT kind, namespace, name, api_version, spec, labels, annotations, source "
                                  "FROM resources ORDER BY kind, namespace, name"):
                resources.append(EncodedResource(*row).decode())
    except (sqlite3.Error, ValueError) as error:
        return resources, f"{path}: {error}"
    return resources, ""


# --- the marker and the lock ------------------------------------------------------------


def write_marker(state_dir: str | os.PathLike[str]) -> None:
    """Record that this directory holds Tulle's state (so that a missing database is noticed)."""
    path = marker_path(state_dir)
    if os.path.exists(path):
        return
    _write_atomically(path, json.dumps({"format": STATE_FORMAT, "database": DATABASE_FILE,
                                        "created": _when(time.time())}, indent=2).encode() + b"\n")


class StateLock:
    """An exclusive ``flock`` on ``<state_dir>/lock``, held while a store or a restore uses the directory."""

    def __init__(self, state_dir: str | os.PathLike[str], purpose: str) -> None:
        self.path = os.path.join(os.fspath(state_dir), LOCK_FILE)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self._fd, 200).decode(errors="replace").strip() or "another process"
            os.close(self._fd)
            raise StateError(f"{os.fspath(state_dir)} is in use by {holder} (it holds {self.path}): one control "
                             "plane per state directory, and no restore while it runs") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{purpose} (pid {os.getpid()})\n".encode())

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the flock
            self._fd = -1


# --- the last good copy -----------------------------------------------------------------


def save_last_good(db: sqlite3.Connection, state_dir: str | os.PathLike[str]) -> bool:
    """Copy the open database to ``config.db.last-good`` if the copy checks whole; whether it did.
    The caller keeps others off ``db`` meanwhile."""
    target = last_good_path(state_dir)
    temporary = f"{target}.tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    with contextlib.closing(sqlite3.connect(temporary, isolation_level=None)) as copy:
        db.backup(copy)
        copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    if not check_database(temporary).ok:  # read back as written: never replace a good copy with a bad one
        os.unlink(temporary)
        return False
    _fsync(temporary)
    os.replace(temporary, target)
    _fsync(os.fspath(state_dir))
    return True


def restore(state_dir: str | os.PathLike[str], force: bool = False) -> str:
    """Put the last good copy in place of ``config.db`` (kept aside, never deleted); what was done."""
    directory = os.fspath(state_dir)
    lock = StateLock(directory, "tulle state restore")
    try:
        source = check_database(last_good_path(directory))
        if not source.ok:
            raise StateError(f"cannot restore: {source.path}: {source.problem}")
        current = check_database(database_path(directory))
        if current.ok and not force:
            raise StateError(f"{current.path} is whole ({current.resources} resources, revision {current.revision}): "
                             f"restoring would replace it with the last good copy ({source.resources} resources, "
                             f"from {_when(source.modified)}); add --force to do it anyway")
        moved = _move_aside(database_path(directory))
        temporary = database_path(directory) + ".restoring"
        with contextlib.closing(sqlite3.connect(f"file:{source.path}?mode=ro", uri=True)) as copy_from, \
                contextlib.closing(sqlite3.connect(temporary, isolation_level=None)) as copy_to:
            copy_from.backup(copy_to)
        _fsync(temporary)
        os.replace(temporary, database_path(directory))
        write_marker(directory)
        _fsync(directory)
    finally:
        lock.release()
    kept = f"; the previous files are kept as {', '.join(moved)}" if moved else ""
    return (f"restored {database_path(directory)} from {source.path} ({source.resources} resources, revision "
            f"{source.revision}, from {_when(source.modified)}){kept}")


def _move_aside(path: str) -> list[str]:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    moved = []
    for suffix in ("", *SIDE_FILES):
        if os.path.exists(path + suffix):
            target = f"{path}{DAMAGED_SUFFIX}{stamp}{suffix}"
            os.replace(path + suffix, target)
            moved.append(os.path.basename(target))
    return moved


# --- files ------------------------------------------------------------------------------


def _write_atomically(path: str, data: bytes) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync(str(Path(path).parent))


def _fsync(path: str) -> None:
    """Make a file's content (or a directory's entries: a rename) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
