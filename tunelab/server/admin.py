"""`/v1/organization/…`: projects, their API keys and the audit log, for the admin key only.

    curl -H "Authorization: Bearer $TUNELAB_ADMIN_KEY" http://gpu-box:8000/v1/organization/projects \\
         -d '{"name": "search-team", "limits": {"max_jobs": 2}}'
    curl -X POST -H "Authorization: Bearer $TUNELAB_ADMIN_KEY" \\
         http://gpu-box:8000/v1/organization/projects/proj_…/api_keys -d '{"name": "ci"}'

Shapes follow OpenAI's administration API (projects, project API keys, audit logs), with three
departures: a project key is created here (`POST …/api_keys` answers the key once, in `value`, as OpenAI's
service-account route does; OpenAI makes project keys only in its dashboard); deleting a key revokes it
(its row stays, with `revoked_at`, so the audit log can still name it); and a project carries its
`limits` (quotas.py), where OpenAI sets rate limits per model.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from tunelab.server.audit import audit_object, audit_rows
from tunelab.server.errors import APIError
from tunelab.server.projects import (ProjectError, archive_project, create_key, create_project, find_project,
                                     key_object, list_keys, list_projects, revoke_key, update_project, Limits)

router = APIRouter()


class LimitsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_jobs: Annotated[int, Field(ge=1)] | None = None
    max_stored_bytes: Annotated[int, Field(ge=0)] | None = None
    requests_per_minute: Annotated[int, Field(ge=1)] | None = None


class ProjectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=64)]
    limits: LimitsBody | None = None


class ProjectUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    limits: LimitsBody | None = None


class KeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(max_length=64)] | None = None


def _project(request: Request, project_id: str):
    project = find_project(request.app.state.store, project_id) if project_id.startswith("proj_") else None
    if project is None:
        raise APIError(404, f"No such project: {project_id}", param="project_id")
    return project


def _refused(error: ProjectError) -> APIError:
    return APIError(400, str(error), code="invalid_value")


def _listed(objects: list[dict], limit: int, after: str | None) -> dict:
    if after:
        positions = [index for index, item in enumerate(objects) if item["id"] == after]
        objects = objects[positions[0] + 1:] if positions else []
    shown = objects[:limit]
    return {"object": "list", "data": shown, "first_id": shown[0]["id"] if shown else None,
            "last_id": shown[-1]["id"] if shown else None, "has_more": len(objects) > limit}


@router.get("/organization/projects")
async def list_all_projects(request: Request, limit: int = Query(20, ge=1, le=100), after: str | None = None,
                            include_archived: bool = False) -> dict:
    projects = list_projects(request.app.state.store, include_archived)
    return _listed([project.as_object() for project in projects], limit, after)


@router.post("/organization/projects")
async def create_new_project(request: Request, body: ProjectBody) -> dict:
    try:
        project = create_project(request.app.state.store, body.name, Limits(**(body.limits or LimitsBody()).model_dump()))
    except ProjectError as error:
        raise _refused(error) from None
    return project.as_object()


@router.get("/organization/projects/{project_id}")
async def retrieve_project(request: Request, project_id: str) -> dict:
    return _project(request, project_id).as_object()


@router.post("/organization/projects/{project_id}")
async def modify_project(request: Request, project_id: str, body: ProjectUpdate) -> dict:
    project = _project(request, project_id)
    try:
        return update_project(request.app.state.store, project.id, body.name,
                              body.limits.model_dump(exclude_unset=True) if body.limits else None).as_object()
    except ProjectError as error:
        raise _refused(error) from None


@router.post("/organization/projects/{project_id}/archive")
async def archive(request: Request, project_id: str) -> dict:
    project = _project(request, project_id)
    try:
        return archive_project(request.app.state.store, project.id).as_object()
    except ProjectError as error:
        raise _refused(error) from None


@router.get("/organization/projects/{project_id}/api_keys")
async def list_project_keys(request: Request, project_id: str, limit: int = Query(20, ge=1, le=100),
                            after: str | None = None) -> dict:
    return _listed(list_keys(request.app.state.store, _project(request, project_id).id), limit, after)


@router.post("/organization/projects/{project_id}/api_keys")
async def create_project_key(request: Request, project_id: str, body: KeyBody | None = None) -> dict:
    project = _project(request, project_id)
    try:  # hashing takes a tenth of a second: off the event loop
        key, token = await run_in_threadpool(create_key, request.app.state.store, project.id, body.name if body else None)
    except ProjectError as error:
        raise _refused(error) from None
    return {**key, "value": token}


@router.get("/organization/projects/{project_id}/api_keys/{key_id}")
async def retrieve_project_key(request: Request, project_id: str, key_id: str) -> dict:
    rows = request.app.state.store.execute("SELECT * FROM api_keys WHERE id = ? AND project_id = ?",
                                           (key_id, _project(request, project_id).id))
    if not rows:
        raise APIError(404, f"No such API key: {key_id}", param="key_id")
    return key_object(rows[0])


@router.delete("/organization/projects/{project_id}/api_keys/{key_id}")
async def delete_project_key(request: Request, project_id: str, key_id: str) -> dict:
    try:
        revoke_key(request.app.state.store, key_id, _project(request, project_id).id)
    except ProjectError:
        raise APIError(404, f"No such API key: {key_id}", param="key_id") from None
    return {"object": "organization.project.api_key.deleted", "id": key_id, "deleted": True}


@router.get("/organization/audit_logs")
async def list_audit_logs(request: Request, limit: int = Query(20, ge=1, le=100), after: str | None = None,
                          project_id: str | None = None) -> dict:
    store = request.app.state.store
    rows = audit_rows(store, project_id, limit + 1, after)
    names = {project.id: project.name for project in list_projects(store, include_archived=True)}
    data = [audit_object(row, names) for row in rows[:limit]]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit}
