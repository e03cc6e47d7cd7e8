"""The audit log: every request that changes something, who made it, what it did, and how it ended.

    tunelab audit --data-dir /srv/tunelab [--project NAME] [--json]
    GET /v1/organization/audit_logs        (the admin key)

A row per POST, PUT, PATCH or DELETE under /v1, and per sign-in and sign-out of the dashboard — uploads,
jobs created, cancelled, paused and resumed, models deleted, projects and keys made or revoked, and every
attempt refused (a bad key, a quota) — except chat completions and data checks, which change nothing. A row holds when, the project and key id (never the key: a
refused key is recorded without any part of it), the action, the method and path, the object's id (the
one the path names, or the one the request created) and the HTTP status. Rows are written after the
response, by this ASGI wrapper around the whole application, so a request refused before it reached a
route (a body too large) is recorded too.
"""

from __future__ import annotations

import json
import time

from tunelab.server.projects import ADMIN_KEY_ID, SERVER_KEY_ID
from tunelab.server.store import Store, new_id

CHANGING = ("POST", "PUT", "PATCH", "DELETE")
NOT_AUDITED = ("/v1/chat/completions", "/v1/tunelab/data/check")  # they change nothing
SIGN_IN_PATHS = ("/login", "/logout")  # the dashboard's (dashboard.py): sessions opened and ended
MAX_CAPTURED = 1 << 16  # bytes of a response read for the id of what it created

# (method, route) → action, in the words of OpenAI's audit log types where it has one.
ACTIONS = {
    ("POST", "/login"): "login.succeeded",
    ("POST", "/logout"): "logout.succeeded",
    ("POST", "/v1/files"): "file.created",
    ("DELETE", "/v1/files/{file_id}"): "file.deleted",
    ("POST", "/v1/fine_tuning/jobs"): "fine_tuning.job.created",
    ("POST", "/v1/fine_tuning/jobs/{job_id}/cancel"): "fine_tuning.job.cancelled",
    ("POST", "/v1/fine_tuning/jobs/{job_id}/pause"): "fine_tuning.job.paused",
    ("POST", "/v1/fine_tuning/jobs/{job_id}/resume"): "fine_tuning.job.resumed",
    ("DELETE", "/v1/models/{model:path}"): "model.deleted",
    ("POST", "/v1/organization/projects"): "project.created",
    ("POST", "/v1/organization/projects/{project_id}"): "project.updated",
    ("POST", "/v1/organization/projects/{project_id}/archive"): "project.archived",
    ("POST", "/v1/organization/projects/{project_id}/api_keys"): "api_key.created",
    ("DELETE", "/v1/organization/projects/{project_id}/api_keys/{key_id}"): "api_key.deleted",
}


class AuditLog:
    """ASGI wrapper: after each state-changing request, one row in `audit_log`."""

    def __init__(self, app, store: Store):
        self.app, self.store = app, store

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] not in CHANGING or path in NOT_AUDITED \
                or not (path.startswith("/v1/") or path in SIGN_IN_PATHS):
            return await self.app(scope, receive, send)
        status, captured = 500, bytearray()

        async def watched_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and len(captured) < MAX_CAPTURED:
                captured.extend(message.get("body", b"")[:MAX_CAPTURED - len(captured)])
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        finally:
            self._record(scope, status, bytes(captured))

    def _record(self, scope, status: int, body: bytes) -> None:
        route = getattr(scope.get("route"), "path", None)
        route = f"/v1{route}" if route and scope["path"].startswith("/v1/") and not route.startswith("/v1") else route
        identity = (scope.get("state") or {}).get("identity")
        path_params = scope.get("path_params") or {}
        object_id = list(path_params.values())[-1] if path_params else _created_id(body) if status < 300 else None
        self.store.execute(
            "INSERT INTO audit_log (id, created_at, project_id, key_id, action, method, path, object_id, status) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (new_id("audit_"), time.time(), getattr(identity, "project", None), getattr(identity, "key_id", None),
             _action(scope["method"], route, status), scope["method"], scope["path"][:512],
             str(object_id)[:256] if object_id else None, status))


def _action(method: str, route: str | None, status: int) -> str:
    action = ACTIONS.get((method, route), "request")
    return "login.failed" if action == "login.succeeded" and status >= 400 else action


def _created_id(body: bytes) -> str | None:
    try:
        created = json.loads(body)
    except ValueError:
        return None
    return created.get("id") if isinstance(created, dict) and isinstance(created.get("id"), str) else None


def audit_rows(store: Store, project: str | None = None, limit: int = 100, after: str | None = None) -> list:
    """The newest rows first (of one project, when given)."""
    conditions, parameters = [], []
    if project:
        conditions.append("project_id = ?")
        parameters.append(project)
    if after:
        anchor = store.execute("SELECT created_at, rowid FROM audit_log WHERE id = ?", (after,))
        if anchor:
            conditions.append("(created_at, rowid) < (?, ?)")
            parameters += [anchor[0]["created_at"], anchor[0]["rowid"]]
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    return store.execute(f"SELECT * FROM audit_log {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
                         (*parameters, limit))


def audit_object(row, project_names: dict[str, str]) -> dict:
    """A row as OpenAI's `organization.audit_log` object shapes one (actor, project, effective_at), with the
    request's method, path and status as tunelab's addition."""
    key_id = row["key_id"]
    return {"object": "organization.audit_log", "id": row["id"], "type": row["action"],
            "effective_at": int(row["created_at"]),
            "project": {"id": row["project_id"], "name": project_names.get(row["project_id"])} if row["project_id"] else None,
            "actor": {"type": "api_key", "api_key": {"id": key_id, "type": "admin" if key_id == ADMIN_KEY_ID else
                                                     "server" if key_id == SERVER_KEY_ID else "project"}}
            if key_id else {"type": "anonymous"},
            "object_id": row["object_id"],
            "request": {"method": row["method"], "path": row["path"], "status": row["status"]}}
