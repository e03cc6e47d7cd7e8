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
from contextlib import contextmanager
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
    ("0002_jobs", """
        CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            created_at INTEGER NOT NULL,
            model TEXT NOT NULL,
            base_model TEXT NOT NULL,
            training_file TEXT NOT NULL,
            validation_file TEXT,
            suffix TEXT,
            seed INTEGER NOT NULL,
            metadata TEXT,
            hyperparameters TEXT NOT NULL,
            status TEXT NOT NULL,
            error TEXT,
            fine_tuned_model TEXT,
            trained_tokens INTEGER,
            started_at INTEGER,
            finished_at INTEGER,
            result_files TEXT NOT NULL DEFAULT '[]',
            cancel_requested INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE job_events (
            id TEXT PRIMARY KEY,
            job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
            created_at INTEGER NOT NULL,
            level TEXT NOT NULL,
            message TEXT NOT NULL
        );
    """),
    ("0003_deleted_models", """
        ALTER TABLE jobs ADD COLUMN model_deleted INTEGER NOT NULL DEFAULT 0;
    """),
    ("0004_pause", """
        ALTER TABLE jobs ADD COLUMN pause_requested INTEGER NOT NULL DEFAULT 0;
    """),
    # tunelab's settings beyond OpenAI's hyperparameters: {"preset": name or null, setting: value, …}
    ("0005_job_settings", """
        ALTER TABLE jobs ADD COLUMN settings TEXT NOT NULL DEFAULT '{"preset": null}';
    """),
    # Projects own files and jobs (and so fine-tuned models); keys belong to a project and are kept only as
    # argon2 hashes (projects.py). What a server held before projects is the default project's, which the
    # server's own --api-key opens. (SQLite adds a column with a default but no REFERENCES to a table that
    # has rows; projects are never deleted, only archived, so the reference has nothing to guard.)
    ("0006_projects", """
        CREATE TABLE projects (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL UNIQUE,
            created_at INTEGER NOT NULL,
            archived_at INTEGER,
            max_jobs INTEGER,
            max_stored_bytes INTEGER,
            requests_per_minute INTEGER
        );
        INSERT INTO projects (id, name, created_at) VALUES ('proj_default', 'default', CAST(strftime('%s') AS INTEGER));
        CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            project_id TEXT NOT NULL REFERENCES projects (id),
            name TEXT,
            hash TEXT NOT NULL,
            redacted_value TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            last_used_at INTEGER,
            revoked_at INTEGER
        );
        ALTER TABLE files ADD COLUMN project_id TEXT NOT NULL DEFAULT 'proj_default';
        ALTER TABLE jobs ADD COLUMN project_id TEXT NOT NULL DEFAULT 'proj_default';
        CREATE INDEX files_by_project ON files (project_id, created_at);
        CREATE INDEX jobs_by_project ON jobs (project_id, created_at);
        CREATE TABLE audit_log (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            project_id TEXT,
            key_id TEXT,
            action TEXT NOT NULL,
            method TEXT NOT NULL,
            path TEXT NOT NULL,
            object_id TEXT,
            status INTEGER NOT NULL
        );
        CREATE INDEX audit_by_time ON audit_log (created_at);
    """),
    # OpenAI's `integrations` of a job as the request gave them (a JSON list; NULL: none).
    ("0007_integrations", """
        ALTER TABLE jobs ADD COLUMN integrations TEXT;
    """),
    # The dashboard's signed-in browsers (sessions.py): only a hash of each session's cookie is kept, with the
    # project and key it was opened with; a revoked key or an archived project ends its sessions.
    ("0008_browser_sessions", """
        CREATE TABLE browser_sessions (
            id TEXT PRIMARY KEY,
            project_id TEXT NOT NULL REFERENCES projects (id),
            key_id TEXT,
            key_check TEXT,
            csrf_token TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL
        );
    """),
    # Evaluations and exports the server runs (tasks.py): what was asked, where it stands, what came of it.
    ("0009_tasks", """
        CREATE TABLE tasks (
            id TEXT PRIMARY KEY,
            project_id TEXT NOT NULL REFERENCES projects (id),
            kind TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            started_at INTEGER,
            finished_at INTEGER,
            request TEXT NOT NULL,
            result TEXT,
            error TEXT
        );
        CREATE INDEX tasks_by_project ON tasks (project_id, kind, created_at);
        -- what a job's event stream asks twice a second (live.py)
        CREATE INDEX job_events_by_job ON job_events (job_id);
    """),
    # OpenAI's method.type of a job (its dpo beta is kept with the hyperparameters), and the job whose
    # fine-tune a job starts from when its `model` names one (NULL: a base model).
    ("0010_job_methods", """
        ALTER TABLE jobs ADD COLUMN method TEXT NOT NULL DEFAULT 'supervised';
        ALTER TABLE jobs ADD COLUMN start_job TEXT;
    """),
    # A reinforcement job's grader, as the request gave it (OpenAI's JSON).
    ("0011_job_graders", """
        ALTER TABLE jobs ADD COLUMN grader TEXT;
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
        self._db.execute("PRAGMA busy_timeout=10000")  # the API and the worker are two processes on one database
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
                except sqlite3.Error as error:  # the same kind of error, naming the migration that failed
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise type(error)(f"migration {name} failed: {error}") from error

    def execute(self, sql: str, parameters=()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, parameters).fetchall()

    def execute_together(self, statements: list[tuple[str, tuple]]) -> None:
        """Several writes in one transaction: a crash leaves all of them or none."""
        with self.transaction() as db:
            for sql, parameters in statements:
                db.execute(sql, parameters)

    @contextmanager
    def transaction(self):
        """The connection, inside one write transaction taken at once (BEGIN IMMEDIATE: another process's
        writer waits for it, so what is read inside is still true when it commits); an exception rolls it back."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def file_path(self, file_id: str) -> Path:
        return self.files_dir / file_id

    def run_dir(self, job_id: str) -> Path:
        return self.data_dir / "runs" / job_id

    def task_dir(self, task_id: str) -> Path:
        """An evaluation's or export's folder (tasks.py): its events, its output, its download."""
        return self.data_dir / "tasks" / task_id

    def job_event(self, job_id: str, message: str, level: str = "info", db=None) -> None:
        """A job event of the server's own (creation, a status change); training writes the rest. `db`: the
        connection of a transaction in progress, to write the event with what it records."""
        statement = ("INSERT INTO job_events (id, job_id, created_at, level, message) VALUES (?, ?, ?, ?, ?)",
                     (new_id("ftevent-"), job_id, int(time.time()), level, message))
        if db is not None:
            db.execute(*statement)
        else:
            self.execute(*statement)
