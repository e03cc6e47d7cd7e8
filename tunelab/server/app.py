"""`tunelab serve`: OpenAI's fine-tuning API on this machine.

    tunelab serve [--host 127.0.0.1] [--port 8000] [--api-key KEY] [--alias gpt-4o-mini-2024-07-18=default]
    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=KEY python your_openai_code.py

Served: files (upload with validation, list, retrieve, delete, content), fine-tuning jobs (create, list,
retrieve, cancel, pause, resume, events, checkpoints usable as models; trained by the worker, worker.py),
models (base models, aliases, fine-tunes), chat completions (batched and streamed, chat.py), graders (run
and validate, graders.py) and /health.

Projects (projects.py, auth.py): every file, job and fine-tuned model belongs to a project, and a request
acts in its key's project — a project key, or the server's own --api-key for the default project; another
project's objects answer exactly as missing ones do. The admin key opens the admin routes (admin.py):
projects, keys, the audit log. Each project has its limits (quotas.py), and every request that changes
something is recorded (audit.py).

Security: a Bearer key on every route but /health (compared in constant time, OpenAI's 401 otherwise) —
the server's own OpenAPI schema too, at /v1/openapi.json; project keys stored only as argon2 hashes;
127.0.0.1 unless told otherwise, and a non-loopback host only with a key and TLS; request bodies capped as
they arrive (413), so a large upload is refused without being stored, and at most a few uploads at once (429).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Depends, FastAPI

from tunelab.server import admin, chat, dashboard, data, files, graders, jobs, live, models, tasks
from tunelab.server.audit import AuditLog
from tunelab.server.auth import require_admin_key, require_project_key
from tunelab.server.errors import APIError, install_error_handlers
from tunelab.server.projects import KeyChecker, Limits
from tunelab.server.quotas import RateWindow
from tunelab.server.store import Store

# The routes that act in the request's project (auth.py); the admin routes (admin.py) take the admin key.
PROJECT_ROUTES = (files, data, jobs, live, models, chat, tasks, graders)
# Uploads: a file stored, or a file checked without being stored (data.py).
UPLOAD_PATHS = ("/v1/files", "/v1/tunelab/data/check")

# Room for the multipart envelope around the largest allowed file.
BODY_OVERHEAD = 64 * 1024
MAX_JSON_BYTES = 16 * 2**20  # any other request body: a chat request with a long conversation fits easily
MAX_CONCURRENT_UPLOADS = 4  # each holds a file being written; more wait their turn with a 429


@dataclass
class ServerSettings:
    data_dir: Path
    api_key: str | None = None
    max_upload_mb: float = 512
    aliases: dict[str, str] = field(default_factory=dict)
    dtype: str = "auto"  # number format of the models answering chat: auto (models/precision.py), fp32, bf16
    # base model spec → {"preset": name, setting: value, …}: what its jobs train with unless they say (job_settings.py)
    job_presets: dict[str, dict] = field(default_factory=dict)
    max_models: int = 2  # models kept loaded for chat (a base counts once, however many fine-tunes it serves)
    admin_key: str | None = None  # opens /v1/organization/… (projects, keys, audit log); None: no admin routes
    default_limits: Limits = field(default_factory=Limits)  # for projects that set none of their own (quotas.py)


def create_app(settings: ServerSettings) -> FastAPI:
    app = FastAPI(title="tunelab", version="1", docs_url=None, redoc_url=None, openapi_url=None,
                  redirect_slashes=False)  # OpenAI answers a stray slash with 404, not a redirect
    app.state.settings = settings
    app.state.store = Store(settings.data_dir)
    app.state.keys = KeyChecker(app.state.store)
    app.state.rate_window = RateWindow()
    app.state.started = int(time.time())
    install_error_handlers(app)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    in_a_project = [Depends(require_project_key)]
    for module in PROJECT_ROUTES:
        app.include_router(module.router, prefix="/v1", dependencies=in_a_project)
    app.include_router(admin.router, prefix="/v1", dependencies=[Depends(require_admin_key)])
    app.include_router(dashboard.router)  # the pages: their own sessions (dashboard.py)

    @app.get("/v1/openapi.json", dependencies=in_a_project, include_in_schema=False)
    async def openapi_schema() -> dict:
        return app.openapi()
    return AuditLog(RequestLimits(app, int(settings.max_upload_mb * 2**20) + BODY_OVERHEAD), app.state.store)


class RequestLimits:
    """ASGI wrapper: an upload over `upload_limit` bytes, or any other body over MAX_JSON_BYTES, gets a 413,
    whether it declares its length or not; an upload beyond MAX_CONCURRENT_UPLOADS at once gets a 429.

    A declared Content-Length over the limit is refused before anything is read. A chunked body is counted
    as it arrives; once it passes the limit, reading stops and whatever the application would have answered
    is replaced by the 413 (the application saw an aborted body and answers 400, which would mislead).
    """

    def __init__(self, app: FastAPI, upload_limit: int):
        self.app, self.upload_limit = app, upload_limit
        self.uploads = 0  # in progress; one event loop, so a plain counter

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        upload = scope["method"] == "POST" and scope["path"].rstrip("/") in UPLOAD_PATHS
        if upload and self.uploads >= MAX_CONCURRENT_UPLOADS:
            return await self._refuse(send, APIError(
                429, f"{MAX_CONCURRENT_UPLOADS} uploads are in progress on this server; retry when one has finished",
                type="rate_limit_error", code="rate_limit_exceeded"))
        limit = self.upload_limit if upload else MAX_JSON_BYTES
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._refuse(send, self._too_large(upload))
        received, exceeded = 0, False

        async def counted_receive():
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message):
            if not exceeded:
                await send(message)

        self.uploads += upload
        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not exceeded:  # the application's own failure: its error middleware has answered already
                raise
        finally:
            self.uploads -= upload
        if exceeded:
            await self._refuse(send, self._too_large(upload))

    def _too_large(self, upload: bool) -> APIError:
        if upload:
            megabytes = (self.upload_limit - BODY_OVERHEAD) / 2**20
            return APIError(413, f"The upload is larger than this server's limit of {megabytes:g} MB "
                            "(tunelab serve --max-upload-mb)", code="file_too_large")
        return APIError(413, f"The request body is larger than this server's limit of {MAX_JSON_BYTES // 2**20} MB "
                        "for requests other than file uploads", code="request_too_large")

    @staticmethod
    async def _refuse(send, error: APIError) -> None:
        body = json.dumps(error.body()).encode()
        await send({"type": "http.response.start", "status": error.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
