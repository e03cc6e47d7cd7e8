"""The dashboard's browser sessions: a key exchanged once for a cookie that the page's scripts cannot read.

    token, session = open_session(store, identity, server_key)   # POST /login, once the key was checked
    session = find_session(store, token, server_key)              # each page, asset and /v1 request with the cookie
    close_session(store, token)                                   # POST /logout

The key is typed once, into the sign-in form's body, and kept nowhere: the browser gets a random 256-bit
session token in an HttpOnly, SameSite=Strict cookie, and the database keeps only a SHA-256 of that token
(a copy of the database opens no session), the project and key the session acts as, and a CSRF token.
The page sends the CSRF token back in a header with every request that changes something; a request with
the cookie and without the token is refused. SameSite alone would not do: browsers treat another port of
the same host as the same site, so a page served from 127.0.0.1:9999 gets the cookie sent with its form
posts — but it cannot read the dashboard's page to learn the token.

A session ends at logout, SESSION_SECONDS after it began, when its key is revoked or its project archived,
for one opened with the server's own --api-key when the server restarts with another key, and for one
opened on a server that asked for no key as soon as the server asks for one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from tunelab.server.projects import SERVER_KEY_ID, Identity, keys_in_use
from tunelab.server.store import Store

COOKIE = "tunelab_session"
CSRF_HEADER = "x-csrf-token"  # what the page's requests carry
CSRF_FIELD = "csrf_token"  # what the page's forms carry (logout)
SESSION_SECONDS = 12 * 3600  # a working day; then the key is asked for again


@dataclass(frozen=True)
class Session:
    identity: Identity
    csrf_token: str
    expires_at: int


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _key_check(token: str, server_key: str | None) -> str | None:
    """Ties a session of the server's own key to that key, keyed by the session's token (which the database
    does not hold), so the stored value says nothing about the key, even a short one."""
    return hmac.new(token.encode(), server_key.encode(), hashlib.sha256).hexdigest() if server_key else None


def open_session(store: Store, identity: Identity, server_key: str | None) -> tuple[str, Session]:
    """A new session acting as `identity`: (the cookie's token, the session)."""
    token, csrf_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    now = int(time.time())
    key_check = _key_check(token, server_key) if identity.key_id == SERVER_KEY_ID else None
    store.execute_together([
        ("DELETE FROM browser_sessions WHERE expires_at <= ?", (now,)),
        ("INSERT INTO browser_sessions (id, project_id, key_id, key_check, csrf_token, created_at, expires_at) "
         "VALUES (?, ?, ?, ?, ?, ?, ?)",
         (_digest(token), identity.project, identity.key_id, key_check, csrf_token, now, now + SESSION_SECONDS)),
    ])
    return token, Session(identity, csrf_token, now + SESSION_SECONDS)


def find_session(store: Store, token: str, server_key: str | None) -> Session | None:
    """The session this cookie opens, or None: unknown, ended, or its key or project no longer valid."""
    rows = store.execute(
        "SELECT s.*, k.revoked_at, p.archived_at FROM browser_sessions s JOIN projects p ON p.id = s.project_id "
        "LEFT JOIN api_keys k ON k.id = s.key_id WHERE s.id = ?", (_digest(token),))
    if not rows:
        return None
    row = rows[0]
    if row["expires_at"] <= time.time() or row["revoked_at"] is not None or row["archived_at"] is not None:
        return None
    if row["key_id"] == SERVER_KEY_ID:
        expected = _key_check(token, server_key)
        if expected is None or not hmac.compare_digest(expected, row["key_check"] or ""):
            return None
    elif row["key_id"] is None and (server_key is not None or keys_in_use(store)):
        return None  # opened while the server asked for no key; it asks for one now
    return Session(Identity(row["project_id"], row["key_id"]), row["csrf_token"], row["expires_at"])


def close_session(store: Store, token: str) -> None:
    store.execute("DELETE FROM browser_sessions WHERE id = ?", (_digest(token),))


def csrf_matches(session: Session, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(session.csrf_token.encode(), given.encode())
