"""State on disk: one SQLite database and the files' bytes, both in the data directory.

Layout of ``data_dir``::

    state.sqlite3        files and batches tables (WAL journal, busy timeout: several processes)
    files/<file_id>      every file's bytes (uploads, outputs, error files); the name is the id
    tmp/                 uploads being received, renamed into files/ when complete
    worker.lock          held (fcntl.flock) by the one process processing batches
    worker.log           the detached worker's stderr

File ids are generated here and checked against :data:`FILE_ID_RE` before any path is built, so
no id and no client-supplied file name can reach outside the data directory.

A data directory made by an older version opens as it is: columns added since (:data:`_ADDED`) are
added to its tables when the store opens, NULL for the rows already there: "not known" (a batch
created before usage was counted shows none).

Each connection belongs to one thread. Writers take SQLite's write lock with ``BEGIN IMMEDIATE``
so concurrent read-modify-write transactions from several processes serialize instead of failing.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["ACTIVE_STATUSES", "ACTIVE_WHERE", "BATCH_ID_RE", "FILE_ID_RE", "Store", "new_batch_id", "new_file_id"]

FILE_ID_RE = re.compile(r"^file-[a-f0-9]{24}$")
BATCH_ID_RE = re.compile(r"^batch_[a-f0-9]{24}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    in_progress_at INTEGER,
    expires_at INTEGER,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    expired_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER,
    output_file_id TEXT,
    error_file_id TEXT,
    total INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    errors TEXT,
    metadata TEXT,
    -- how to process it (profile, speed, time scale, faults, responder), fixed at creation
    settings TEXT NOT NULL,
    deadline REAL NOT NULL,
    started REAL,
    -- checkpoint: the input up to `input_offset` is done (completed + failed rows) and its lines
    -- are in the work files, which are exactly `output_bytes` and `error_bytes` long
    input_offset INTEGER NOT NULL DEFAULT 0,
    work_output_id TEXT,
    work_error_id TEXT,
    output_bytes INTEGER NOT NULL DEFAULT 0,
    error_bytes INTEGER NOT NULL DEFAULT 0,
    output_lines INTEGER NOT NULL DEFAULT 0,
    error_lines INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS batches_status ON batches(status);
"""

#: Columns added since the first schema, by table: ``ALTER TABLE ... ADD COLUMN`` clauses, applied
#: to a data directory whose tables lack them (new ones get them the same way).
_ADDED: dict[str, dict[str, str]] = {
    "files": {
        # when the file expires (its expires_after, or its batch's output_expires_after); NULL: never
        "expires_at": "INTEGER",
    },
    "batches": {
        # the model of the input's lines (the first line's), known once validated
        "model": "TEXT",
        # usage summed over the answered rows, checkpointed with them; a batch starts them at 0,
        # so NULL is a batch created before they were counted (its usage is not known)
        "input_tokens": "INTEGER",
        "cached_tokens": "INTEGER",
        "output_tokens": "INTEGER",
        "reasoning_tokens": "INTEGER",
        # real seconds its output and error files live (the create's output_expires_after.seconds
        # over the time scale); NULL: they never expire
        "output_expires_after": "INTEGER",
    },
}

#: Statuses a worker still has to act on.
ACTIVE_STATUSES = ("validating", "in_progress", "finalizing", "cancelling")
#: The SQL condition "the batch is active" (fixed literals, no parameters to bind).
ACTIVE_WHERE = f"status IN ({', '.join(repr(status) for status in ACTIVE_STATUSES)})"


def new_file_id() -> str:
    return "file-" + secrets.token_hex(12)


def new_batch_id() -> str:
    return "batch_" + secrets.token_hex(12)


class Store:
    """The data directory: SQLite state plus file bytes."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.files_dir = self.data_dir / "files"
        self.tmp_dir = self.data_dir / "tmp"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._db_path = self.data_dir / "state.sqlite3"
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._conn().executescript(_SCHEMA)
        self._migrate()

    # ---- connections ---------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._db_path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _migrate(self) -> None:
        """Add the columns of :data:`_ADDED` a table lacks (under the write lock: several processes
        may open an old data directory at once, and each column is added once)."""
        if not self._missing_columns():
            return
        with self.write() as db:
            for table, column, clause in self._missing_columns():
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {clause}")

    def _missing_columns(self) -> list[tuple[str, str, str]]:
        missing = []
        for table, columns in _ADDED.items():
            have = {row["name"] for row in self.read(f"PRAGMA table_info({table})")}
            missing += [(table, column, clause) for column, clause in columns.items() if column not in have]
        return missing

    def read(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        return self._conn().execute(sql, params).fetchall()

    def read_one(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        return self._conn().execute(sql, params).fetchone()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds SQLite's write lock from its first statement."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def batch_row(self, batch_id: str) -> sqlite3.Row | None:
        return self.read_one("SELECT * FROM batches WHERE id = ?", (batch_id,))

    def active_batch_ids(self, *, limit: int = -1) -> list[str]:
        """Ids of the batches a worker still has to act on, oldest first (SQLite: -1 is no limit)."""
        rows = self.read(f"SELECT id FROM batches WHERE {ACTIVE_WHERE} ORDER BY seq LIMIT ?", (limit,))
        return [row["id"] for row in rows]

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()

    # ---- paths ---------------------------------------------------------------------------
    def file_path(self, file_id: str) -> Path:
        """Where a file's bytes live; ValueError for anything that is not a well-formed id."""
        if not FILE_ID_RE.match(file_id):
            raise ValueError(f"malformed file id {file_id!r}")
        return self.files_dir / file_id

    def tmp_path(self) -> Path:
        return self.tmp_dir / f"upload-{secrets.token_hex(8)}"

    @property
    def lock_path(self) -> Path:
        return self.data_dir / "worker.lock"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "worker.log"
