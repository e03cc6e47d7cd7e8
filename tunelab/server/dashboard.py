"""The dashboard: pages that `tunelab serve` itself serves at `/`, for people who would rather watch a job than
poll it.

    http://127.0.0.1:8000/            sign in with a project key (or the server's --api-key) once

Each page is a template (web/templates) that draws its frame — navigation, labelled forms, the places its
data goes — and a script of its own (web/static) that fills it from `/v1`, the same API every client uses:
whatever a page does, a script can do with the same requests. Live data comes as server-sent events
(live.py), which the browser resumes after a dropped connection with `Last-Event-ID`; nothing a page shows
lives only in the page, so a refresh or a server restart loses nothing.

Chosen for a Python team to keep: Jinja templates (already a dependency, for chat templates), plain
JavaScript modules with no build step and no Node when tunelab is installed or started, and one chart
library, uPlot (MIT, 50 KB, committed under web/static/vendor with its licence) — a chart that takes a
point per step without redrawing the page.

Security (sessions.py): the key is exchanged once for an HttpOnly, SameSite=Strict cookie and appears in
no URL, page or script; every page and asset needs the session (the sign-in page excepted); forms and
requests that change something carry a CSRF token; pages forbid framing, inline scripts and other
origins' scripts (Content-Security-Policy).
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.concurrency import run_in_threadpool

from tunelab.core.settings import EXTENSION_SETTINGS, OPENAI_HYPERPARAMETERS, field_choices, field_help
from tunelab.server.auth import refuse_other_origins
from tunelab.server.projects import DEFAULT_PROJECT, KEY_PREFIX, SERVER_KEY_ID, Identity, find_project, keys_in_use
from tunelab.server.sessions import COOKIE, CSRF_FIELD, SESSION_SECONDS, Session, close_session, csrf_matches, \
    find_session, open_session

STATIC = Path(__file__).parent / "web" / "static"
# What the new-job page offers beside OpenAI's hyperparameters (the rest: a YAML preset or the API).
NEW_JOB_SETTINGS = ("adapter", "lora_r", "lora_alpha", "max_length", "lr_scheduler", "warmup_ratio", "eval_every",
                    "checkpoint_every")
assert set(NEW_JOB_SETTINGS) <= set(EXTENSION_SETTINGS)

router = APIRouter(include_in_schema=False)
templates = Environment(loader=PackageLoader("tunelab.server", "web/templates"),
                        autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True)


def security_headers(nonce: str | None = None) -> dict[str, str]:
    style = f"'self' 'nonce-{nonce}'" if nonce else "'self'"
    return {"Content-Security-Policy": f"default-src 'self'; script-src 'self'; style-src {style}; img-src 'self' data:; "
                                      "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "X-Frame-Options": "DENY",
            "Cache-Control": "no-store"}


def _set_cookie(request: Request, response: Response, token: str) -> None:
    response.set_cookie(COOKIE, token, max_age=SESSION_SECONDS, path="/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def _server_is_open(request: Request) -> bool:
    return request.app.state.settings.api_key is None and not keys_in_use(request.app.state.store)


async def _session(request: Request) -> tuple[Session | None, str | None]:
    """The request's session, and a new cookie to set when one was opened just now (a server that asks for
    no key opens one for any visitor — who can reach its loopback address anyway)."""
    store, settings = request.app.state.store, request.app.state.settings
    token = request.cookies.get(COOKIE)
    if token:
        session = await run_in_threadpool(find_session, store, token, settings.api_key)
        if session:
            return session, None
    if await run_in_threadpool(_server_is_open, request):
        token, session = await run_in_threadpool(open_session, store, Identity(DEFAULT_PROJECT, None), None)
        return session, token
    return None, None


def _local_path(value: str | None) -> str:
    """Where to go after signing in: a path of this server only (no `//host` or scheme)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/jobs"


def _page(request: Request, template: str, session: Session, new_cookie: str | None, **context) -> HTMLResponse:
    project = find_project(request.app.state.store, session.identity.project)
    html = templates.get_template(template).render(
        csrf_token=session.csrf_token, csrf_field=CSRF_FIELD, project=project.name if project else "",
        signed_in_with_key=session.identity.key_id is not None, path=request.url.path, **context)
    response = HTMLResponse(html, headers=security_headers())
    if new_cookie:
        _set_cookie(request, response, new_cookie)
    return response


def page(template: str, **fixed):
    """A GET route rendering `template` for a signed-in browser; others are sent to sign in first."""
    async def handler(request: Request) -> Response:
        session, new_cookie = await _session(request)
        if session is None:
            return RedirectResponse(f"/login?next={quote(str(request.url.path))}", status_code=303,
                                    headers=security_headers())
        return _page(request, template, session, new_cookie, params=dict(request.path_params), **fixed)
    return handler


def _new_job_settings() -> list[dict]:
    shown = []
    for name in (*OPENAI_HYPERPARAMETERS, *NEW_JOB_SETTINGS):
        description, default = field_help(name)
        shown.append({"name": name, "label": name, "description": description, "default": default or "",
                      "choices": field_choices(name), "openai": name in OPENAI_HYPERPARAMETERS})
    return shown


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/jobs", status_code=303)


for url, template, extra in (("/jobs", "jobs.html", {}), ("/jobs/new", "new_job.html", {"settings": _new_job_settings()}),
                             ("/jobs/{job_id}", "job.html", {}), ("/files", "files.html", {}),
                             ("/files/{file_id}", "file.html", {}), ("/models", "models.html", {}),
                             ("/playground", "playground.html", {}), ("/evaluations", "evaluations.html", {}),
                             ("/exports", "exports.html", {})):
    router.add_api_route(url, page(template, **extra), methods=["GET"])


@router.get("/static/{name:path}")
async def static(request: Request, name: str) -> Response:
    """The pages' scripts, styles and libraries: to a signed-in browser only."""
    session, _ = await _session(request)
    if session is None:
        return Response("Sign in first: /login", status_code=401, media_type="text/plain", headers=security_headers())
    try:
        path = (STATIC / name).resolve()
        found = path.is_relative_to(STATIC.resolve()) and path.is_file()
    except (ValueError, OSError):  # a NUL byte, a name too long
        found = False
    if not found:
        return Response("Not found", status_code=404, media_type="text/plain", headers=security_headers())
    headers = {**security_headers(), "Cache-Control": "private, max-age=300"}
    media = {".js": "text/javascript", ".css": "text/css", ".txt": "text/plain"}.get(path.suffix)
    return FileResponse(path, media_type=media, headers=headers)


@router.get("/login")
async def login_page(request: Request, next: str | None = None) -> Response:
    if await run_in_threadpool(_server_is_open, request):
        session, new_cookie = await _session(request)
        response = RedirectResponse(_local_path(next), status_code=303)
        if new_cookie:
            _set_cookie(request, response, new_cookie)
        return response
    return _login_form(_local_path(next))


def _login_form(next_path: str, error: str | None = None, status: int = 200) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    html = templates.get_template("login.html").render(next=next_path, error=error, nonce=nonce)
    return HTMLResponse(html, status_code=status, headers=security_headers(nonce))


@router.post("/login")
async def login(request: Request, key: str = Form(""), next: str = Form("/jobs")) -> Response:
    """The key, checked once, exchanged for a session cookie; it is kept nowhere."""
    refuse_other_origins(request)
    settings, store = request.app.state.settings, request.app.state.store
    key = key.strip()
    identity = None
    if key.startswith(KEY_PREFIX):
        identity = await run_in_threadpool(request.app.state.keys.identify, key)
    elif settings.api_key is not None and hmac.compare_digest(key.encode(), settings.api_key.encode()):
        identity = Identity(DEFAULT_PROJECT, SERVER_KEY_ID)
    elif settings.admin_key is not None and hmac.compare_digest(key.encode(), settings.admin_key.encode()):
        return _login_form(_local_path(next), "The admin key opens the administration routes only; sign in with "
                           "a project key (tunelab keys create) or the server's --api-key.", 401)
    if identity is None:
        return _login_form(_local_path(next), "That key is not valid on this server (revoked, mistyped, or another "
                           "server's).", 401)
    request.state.identity = identity  # for the audit log
    token, _ = await run_in_threadpool(open_session, store, identity, settings.api_key)
    response = RedirectResponse(_local_path(next), status_code=303, headers=security_headers())
    _set_cookie(request, response, token)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    refuse_other_origins(request)
    token = request.cookies.get(COOKIE)
    form = await request.form()
    if token:
        session = await run_in_threadpool(find_session, request.app.state.store, token,
                                          request.app.state.settings.api_key)
        if session and not csrf_matches(session, str(form.get(CSRF_FIELD) or "")):
            return Response("The sign-out form's CSRF token is missing or wrong", status_code=403,
                            media_type="text/plain", headers=security_headers())
        if session:
            request.state.identity = session.identity
        await run_in_threadpool(close_session, request.app.state.store, token)
    response = RedirectResponse("/login", status_code=303, headers=security_headers())
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response

