"""The server's state in SQLite (WAL), with append-only named migrations.

    store = Store(data_dir)            # opens data_dir/tunelab.db, applies any migration not yet applied

A migration is (name, SQL). New ones are appended to MIGRATIONS and never edited: `migrations` records
which names a database has, so an older database is brought up to date step by step, and a newer one
(a name this code does not know) is refused rather than misread. Uploaded files live beside the
database under server-made names (`files/<id>`); no client-supplied string touches a path.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from pathlib import Path

MIGRATIONS: list[tuple[str, str]] = [
    ("0001_files", """
        CREATE TABLE files (
            id TEXT PRIMARY KEY,
            bytes INTEGER NOT NULL,
            created_at INTEGER NOT NULL,
            filename TEXT NOT NULL,
            purpose TEXT NOT NULL,
            status TEXT NOT NULL,
            examples INTEGER
        );
    """),
]


class NewerDatabase(RuntimeError):
    """The database was written by a newer tunelab (it has migrations this one does not know)."""


def new_id(prefix: str) -> str:
    """A server-made id: the prefix and 24 random hex digits (OpenAI's ids look the same)."""
    return f"{prefix}{secrets.token_hex(12)}"


class Store:
    """One SQLite database, shared by the request handlers (one connection, serialised by a lock)."""

    def __init__(self, data_dir: Path):
        self.data_dir = Path(data_dir)
        self.files_dir = self.data_dir / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.data_dir / "tunelab.db", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        with self._lock:
            self._db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at INTEGER)")
            applied = {row["name"] for row in self._db.execute("SELECT name FROM migrations")}
            unknown = applied - {name for name, _ in MIGRATIONS}
            if unknown:
                raise NewerDatabase(f"{self.data_dir / 'tunelab.db'}: written by a newer tunelab (migrations "
                                    f"{sorted(unknown)}); upgrade tunelab or use another --data-dir")
            for name, sql in MIGRATIONS:
                if name in applied:
                    continue
                # One transaction per migration: a crash leaves the database before it or after it.
                try:
                    self._db.executescript(f"BEGIN;\n{sql}\nINSERT INTO migrations (name, applied_at) "
                                           f"VALUES ('{name}', {int(time.time())});\nCOMMIT;")
                except sqlite3.Error:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise

    def execute(self, sql: str, parameters=()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, parameters).fetchall()

    def file_path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    def close(self) -> None:
        with self._lock:
            self._db.close()
