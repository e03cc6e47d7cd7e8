"""Each project's limits: unfinished jobs, stored bytes, and requests per minute per key.

    tunelab serve --project-max-jobs 2 --project-max-storage-gb 50 --requests-per-minute 600
    tunelab projects create search-team --max-jobs 4        # a project's own limits over the server's

Over a limit a request gets OpenAI's 429 (`rate_limit_exceeded`; for requests per minute with a
Retry-After header) or, for storage, 507 (`insufficient_storage`), saying which limit and by how much; a
refused upload stores nothing. A limit left unset is the server's default; with neither, there is none.
"""

from __future__ import annotations

import math
import threading
import time
from collections import defaultdict, deque
from dataclasses import fields

from fastapi import Request

from tunelab.runs import lifecycle
from tunelab.server.errors import APIError
from tunelab.server.projects import Identity, Limits, find_project

WINDOW = 60.0  # seconds: requests per minute are counted over the last minute, sliding


def limits_of(request: Request, project_id: str) -> Limits:
    """The project's limits, each its own or else the server's default."""
    own = find_project(request.app.state.store, project_id).limits
    server = request.app.state.settings.default_limits
    return Limits(**{field.name: getattr(own, field.name) if getattr(own, field.name) is not None
                     else getattr(server, field.name) for field in fields(Limits)})


class RateWindow:
    """Request times per key over the last minute (in this process: one server, one event loop)."""

    def __init__(self):
        self._times: dict[str, deque] = defaultdict(deque)
        self._lock = threading.Lock()

    def admit(self, key: str, per_minute: int) -> float:
        """0 if the request is admitted (and counted), else the seconds until it would be."""
        now = time.monotonic()
        with self._lock:
            times = self._times[key]
            while times and now - times[0] >= WINDOW:
                times.popleft()
            if len(times) >= per_minute:
                return WINDOW - (now - times[0])
            times.append(now)
            return 0.0


def check_rate(request: Request, identity: Identity) -> None:
    limit = limits_of(request, identity.project).requests_per_minute
    if limit is None:
        return
    key = identity.key_id or identity.project
    wait = request.app.state.rate_window.admit(key, limit)
    if wait:
        raise APIError(429, f"Rate limit reached for requests per minute: limit {limit}, used {limit}, on key "
                       f"{key}. Retry in {math.ceil(wait)} s.", type="requests", code="rate_limit_exceeded",
                       headers={"retry-after": str(math.ceil(wait))})


def check_job_quota(request: Request, project_id: str) -> None:
    limit = limits_of(request, project_id).max_jobs
    if limit is None:
        return
    finished = sorted(lifecycle.FINISHED)
    active = request.app.state.store.execute(
        f"SELECT COUNT(*) FROM jobs WHERE project_id = ? AND status NOT IN ({', '.join('?' * len(finished))})",
        (project_id, *finished))[0][0]
    if active >= limit:
        raise APIError(429, f"This project has {active} fine-tuning jobs that have not finished, its limit is "
                       f"{limit}; wait for one to finish or cancel one.", type="invalid_request_error",
                       code="rate_limit_exceeded")


def check_storage_quota(request: Request, project_id: str, adding: int) -> None:
    """507 if `adding` bytes would take the project over its storage limit."""
    limit = limits_of(request, project_id).max_stored_bytes
    if limit is None:
        return
    stored = request.app.state.store.execute("SELECT COALESCE(SUM(bytes), 0) FROM files WHERE project_id = ?", (project_id,))[0][0]
    if stored + adding > limit:
        raise APIError(507, f"This project stores {stored:,} bytes; {adding:,} more would pass its limit of "
                       f"{limit:,} bytes. Delete files (client.files.delete) or ask for a larger limit.",
                       type="invalid_request_error", code="insufficient_storage")
