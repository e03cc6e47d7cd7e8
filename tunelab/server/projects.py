"""Projects and their API keys, in the server's database: what `tunelab keys`, `tunelab projects` and the
admin routes (admin.py) manage, and what a request's key is checked against (auth.py).

    project = create_project(store, "search-team", limits=Limits(max_jobs=2))
    key, token = create_key(store, project.id, name="ci")   # the token is shown now and never again
    checker = KeyChecker(store); checker.identify(token)     # → Identity(project.id, key.id) or None

Every file and job belongs to one project, and so does each fine-tuned model (its job's); base models are
shared. A key is a random 256-bit secret with its key id in front (`sk-proj-<id>-<secret>`), stored only as
an argon2id hash (argon2-cffi, with its own salt): the database never holds a key. Checking a hash takes
about 0.1 s by design, so a key verified once is remembered in this process by a SHA-256 of it (compared
in constant time), while whether it is revoked, or its project archived, is read from the database on
every request: a revoked key is refused at once.

The project a server held before projects existed (and that `--api-key` opens) is `proj_default`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from tunelab.server.store import Store

DEFAULT_PROJECT = "proj_default"
KEY_PREFIX = "sk-proj-"
KEY_PATTERN = re.compile(r"^sk-proj-(?P<id>[0-9a-f]{24})-(?P<secret>[A-Za-z0-9_-]{43})$")
PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$")
# The key ids the audit log gives the two keys that are not project keys.
SERVER_KEY_ID, ADMIN_KEY_ID = "server-key", "admin-key"
LAST_USED_EVERY = 60  # seconds: a key's last-used time is written at most this often
_hasher = PasswordHasher()


class ProjectError(ValueError):
    """A project or key that cannot be made or found; the message says which and why."""


@dataclass(frozen=True)
class Limits:
    """A project's limits; None: the server's default (tunelab serve --project-max-jobs …), else none."""

    max_jobs: int | None = None  # jobs not yet finished (validating, queued, running, paused)
    max_stored_bytes: int | None = None  # its files, uploads and result files together
    requests_per_minute: int | None = None  # per key


@dataclass(frozen=True)
class Project:
    id: str
    name: str
    created_at: int
    archived_at: int | None
    limits: Limits

    def as_object(self) -> dict:
        """OpenAI's `organization.project` object, with the limits as tunelab's addition."""
        return {"object": "organization.project", "id": self.id, "name": self.name, "created_at": self.created_at,
                "archived_at": self.archived_at, "status": "archived" if self.archived_at else "active",
                "limits": asdict(self.limits)}


@dataclass(frozen=True)
class Identity:
    """Who a request is: its project, and the key it came with (None on a server that asks for none;
    SERVER_KEY_ID for the server's own --api-key)."""

    project: str
    key_id: str | None


def _project(row) -> Project:
    return Project(row["id"], row["name"], row["created_at"], row["archived_at"],
                   Limits(row["max_jobs"], row["max_stored_bytes"], row["requests_per_minute"]))


def create_project(store: Store, name: str, limits: Limits = Limits()) -> Project:
    if not PROJECT_NAME.match(name or ""):
        raise ProjectError(f"project name {name!r}: 1 to 64 letters, digits, spaces, dots, dashes or underscores, "
                           "starting with a letter or digit")
    if find_project(store, name):
        raise ProjectError(f"a project named {name!r} exists already")
    project_id = "proj_" + secrets.token_hex(12)
    store.execute("INSERT INTO projects (id, name, created_at, max_jobs, max_stored_bytes, requests_per_minute) "
                  "VALUES (?, ?, ?, ?, ?, ?)", (project_id, name, int(time.time()), limits.max_jobs,
                                                limits.max_stored_bytes, limits.requests_per_minute))
    return find_project(store, project_id)


def find_project(store: Store, name_or_id: str) -> Project | None:
    rows = store.execute("SELECT * FROM projects WHERE id = ? OR name = ?", (name_or_id, name_or_id))
    return _project(rows[0]) if rows else None


def project_named(store: Store, name_or_id: str) -> Project:
    """The project, or ProjectError listing those there are."""
    project = find_project(store, name_or_id)
    if project is None:
        names = [row["name"] for row in store.execute("SELECT name FROM projects ORDER BY created_at")]
        raise ProjectError(f"no project {name_or_id!r}; there are: {', '.join(names)}")
    return project


def list_projects(store: Store, include_archived: bool = False) -> list[Project]:
    rows = store.execute("SELECT * FROM projects" + ("" if include_archived else " WHERE archived_at IS NULL")
                         + " ORDER BY created_at, rowid")
    return [_project(row) for row in rows]


def update_project(store: Store, project_id: str, name: str | None = None, limits: dict | None = None) -> Project:
    """Rename a project or change its limits (a limit given as None goes back to the server's default)."""
    if name is not None:
        other = find_project(store, name)
        if other and other.id != project_id:
            raise ProjectError(f"a project named {name!r} exists already")
        if not PROJECT_NAME.match(name):
            raise ProjectError(f"project name {name!r}: 1 to 64 letters, digits, spaces, dots, dashes or underscores")
        store.execute("UPDATE projects SET name = ? WHERE id = ?", (name, project_id))
    for field, value in (limits or {}).items():
        if field not in Limits.__dataclass_fields__:
            raise ProjectError(f"limits.{field}: not a limit; these are: {', '.join(Limits.__dataclass_fields__)}")
        store.execute(f"UPDATE projects SET {field} = ? WHERE id = ?", (value, project_id))
    return find_project(store, project_id)


def archive_project(store: Store, project_id: str) -> Project:
    """Archived: its keys stop working; its files, jobs and runs stay on disk."""
    if project_id == DEFAULT_PROJECT:
        raise ProjectError("the default project cannot be archived (the server's --api-key opens it)")
    store.execute("UPDATE projects SET archived_at = COALESCE(archived_at, ?) WHERE id = ?", (int(time.time()), project_id))
    return find_project(store, project_id)


# --- keys ------------------------------------------------------------------------------------------------

def key_object(row) -> dict:
    """OpenAI's `organization.project.api_key` object (the value redacted), with tunelab's revoked time."""
    return {"object": "organization.project.api_key", "id": row["id"], "name": row["name"],
            "redacted_value": row["redacted_value"], "created_at": row["created_at"],
            "last_used_at": row["last_used_at"], "revoked_at": row["revoked_at"], "project_id": row["project_id"],
            "owner": {"type": "service_account", "service_account": None}}


def create_key(store: Store, project_id: str, name: str | None = None) -> tuple[dict, str]:
    """A new key of the project: (its object, the key itself, which is shown once and stored nowhere)."""
    project = project_named(store, project_id)
    if project.archived_at:
        raise ProjectError(f"project {project.name!r} is archived; it takes no new keys")
    key_hex = secrets.token_hex(12)
    token = f"{KEY_PREFIX}{key_hex}-{secrets.token_urlsafe(32)}"
    store.execute("INSERT INTO api_keys (id, project_id, name, hash, redacted_value, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                  (f"key_{key_hex}", project.id, name, _hasher.hash(token), f"{KEY_PREFIX}…{token[-4:]}",
                   int(time.time())))
    return key_object(store.execute("SELECT * FROM api_keys WHERE id = ?", (f"key_{key_hex}",))[0]), token


def list_keys(store: Store, project_id: str, include_revoked: bool = True) -> list[dict]:
    rows = store.execute("SELECT * FROM api_keys WHERE project_id = ?" + ("" if include_revoked else
                                                                         " AND revoked_at IS NULL")
                         + " ORDER BY created_at, rowid", (project_id,))
    return [key_object(row) for row in rows]


def revoke_key(store: Store, key_id: str, project_id: str | None = None) -> dict:
    """Revoked at once: the next request with it is refused. Revoking twice is harmless."""
    rows = store.execute("SELECT * FROM api_keys WHERE id = ?" + (" AND project_id = ?" if project_id else ""),
                         (key_id, project_id) if project_id else (key_id,))
    if not rows:
        raise ProjectError(f"no key {key_id!r}" + (" in this project" if project_id else ""))
    store.execute("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", (int(time.time()), key_id))
    return key_object(store.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,))[0])


def keys_in_use(store: Store) -> bool:
    """Does any project have a key that works? Then a server started without --api-key asks for keys too."""
    return bool(store.execute("SELECT 1 FROM api_keys JOIN projects ON projects.id = api_keys.project_id "
                              "WHERE revoked_at IS NULL AND archived_at IS NULL LIMIT 1"))


class KeyChecker:
    """Who a project key is, checked against its hash once per process and against revocation every time."""

    def __init__(self, store: Store):
        self.store = store
        self._verified: dict[str, bytes] = {}  # key id → SHA-256 of the key that matched its hash
        self._lock = threading.Lock()

    def identify(self, token: str) -> Identity | None:
        """The key's project and id, or None: not a project key, unknown, revoked, or its project archived.
        Slow (argon2) the first time a key is seen in this process; run it off the event loop."""
        match = KEY_PATTERN.match(token)
        if not match:
            return None
        key_id = f"key_{match.group('id')}"
        rows = self.store.execute(
            "SELECT api_keys.hash, api_keys.project_id, api_keys.last_used_at FROM api_keys JOIN projects "
            "ON projects.id = api_keys.project_id WHERE api_keys.id = ? AND revoked_at IS NULL "
            "AND archived_at IS NULL", (key_id,))
        if not rows:
            return None
        digest = hashlib.sha256(token.encode()).digest()
        with self._lock:
            remembered = self._verified.get(key_id)
        if remembered is None or not hmac.compare_digest(remembered, digest):
            try:
                _hasher.verify(rows[0]["hash"], token)
            except (VerificationError, InvalidHashError):
                return None
            with self._lock:
                self._verified[key_id] = digest
        now = int(time.time())
        if rows[0]["last_used_at"] is None or now - rows[0]["last_used_at"] >= LAST_USED_EVERY:
            self.store.execute("UPDATE api_keys SET last_used_at = ? WHERE id = ?", (now, key_id))
        return Identity(rows[0]["project_id"], key_id)
