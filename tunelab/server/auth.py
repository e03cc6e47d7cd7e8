"""Who a request is: the dependency every `/v1` route but the admin ones runs first.

A request's Bearer key is one of:
- a project key (`sk-proj-…`, projects.py): the request acts in that key's project;
- the server's own `--api-key` (compared in constant time): the default project;
- anything but a project key, or nothing, on a server that asks for no key (no `--api-key`, and no
  project has a working key): the default project. Once any project has a key, every request needs one;
  a revoked or unknown project key is refused everywhere.

A request without a Bearer key but with the dashboard's session cookie (sessions.py) acts as the key the
session was opened with; one that changes something must also carry the session's CSRF token. Whatever it
carries, a request that changes something and comes from a page of another origin (its `Origin` header
names another host or port) is refused: browsers send that header, scripts and SDKs do not.

The admin key (`--admin-key` / TUNELAB_ADMIN_KEY) opens the admin routes only (admin.py), as OpenAI's admin
keys open only its administration API; it is not a project key. What a request is, is kept in
`request.state.identity` for the routes (their queries name its project) and for the audit log.
"""

from __future__ import annotations

import hmac

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from tunelab.server.errors import APIError
from tunelab.server.projects import ADMIN_KEY_ID, DEFAULT_PROJECT, KEY_PREFIX, SERVER_KEY_ID, Identity, keys_in_use
from tunelab.server.quotas import check_rate
from tunelab.server.sessions import COOKIE, CSRF_HEADER, csrf_matches, find_session

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def bearer(request: Request) -> str:
    given = request.headers.get("authorization", "")
    return given[7:].strip() if given.lower().startswith("bearer ") else ""


async def require_project_key(request: Request) -> None:
    """Sets request.state.identity, or answers OpenAI's 401; then the key's rate limit (quotas.py)."""
    settings, store = request.app.state.settings, request.app.state.store
    refuse_other_origins(request)
    token = bearer(request)
    identity = None
    if not token and request.cookies.get(COOKIE):
        session = await run_in_threadpool(find_session, store, request.cookies[COOKIE], settings.api_key)
        if session is None:
            raise APIError(401, "The dashboard session has ended (signed out, expired, or its key revoked); "
                           "sign in again at /login", code="invalid_api_key")
        if request.method not in SAFE_METHODS and not csrf_matches(session, request.headers.get(CSRF_HEADER)):
            raise APIError(403, f"A request made with the dashboard's session must carry its CSRF token in the "
                           f"{CSRF_HEADER} header", code="csrf_token_missing")
        identity = session.identity
    elif token.startswith(KEY_PREFIX):  # a project key that is unknown or revoked is refused, even on an open server
        identity = await run_in_threadpool(request.app.state.keys.identify, token)
    elif settings.api_key is not None and hmac.compare_digest(token.encode(), settings.api_key.encode()):
        identity = Identity(DEFAULT_PROJECT, SERVER_KEY_ID)
    elif settings.api_key is None and not await run_in_threadpool(keys_in_use, store):
        identity = Identity(DEFAULT_PROJECT, None)
    if identity is None:
        raise _refused(token, "Give a project key (tunelab keys create) or the key `tunelab serve` was started "
                       "with as a Bearer token (OPENAI_API_KEY for the openai client).")
    request.state.identity = identity
    check_rate(request, identity)


async def require_admin_key(request: Request) -> None:
    expected = request.app.state.settings.admin_key
    token = bearer(request)
    if expected is None:
        raise APIError(401, "This server takes no admin requests: start it with --admin-key (or "
                       "TUNELAB_ADMIN_KEY) to manage projects and keys over HTTP, or use `tunelab keys` and "
                       "`tunelab projects` on its data directory.", code="invalid_api_key")
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise _refused(token, "Admin routes take the server's admin key (--admin-key), not a project key.")
    request.state.identity = Identity("admin", ADMIN_KEY_ID)


def refuse_other_origins(request: Request) -> None:
    """A 403 for a request that changes something and that a page of another origin made (its Origin header
    names another host or port than the request's own Host)."""
    origin = request.headers.get("origin")
    if request.method in SAFE_METHODS or origin is None:
        return
    if origin.split("://", 1)[-1] != request.headers.get("host", ""):
        raise APIError(403, f"Requests from pages of another origin ({origin}) are refused; behind a proxy, pass "
                       "the original Host header on", code="cross_origin_request")


def project_of(request: Request) -> str:
    """The project the request acts in."""
    return request.state.identity.project


def _refused(token: str, hint: str) -> APIError:
    shown = f"{token[:3]}…{token[-4:]}" if len(token) > 8 else "none" if not token else "…"
    return APIError(401, f"Incorrect API key provided: {shown}. {hint}", code="invalid_api_key")
