"""Evaluations and exports as server tasks — tunelab's additions to OpenAI's API: `tunelab eval` and
`tunelab export` run by the server, on its models and files, with their progress and their results.

    POST /v1/tunelab/evaluations   {"model": "ft:…", "file": "file-…", "limit": 50, "max_new_tokens": 64}
    GET  /v1/tunelab/evaluations[/{id}[/report | /results]]
    POST /v1/tunelab/exports       {"model": "ft:…", "format": "merged" | "gguf" | "ollama", "dtype": null}
    GET  /v1/tunelab/exports[/{id}[/content]]

A task is recorded `queued`; the worker (worker.py) runs it in a process of its own (task_worker.py), one at a
time beside the training jobs, and the task reports `running` with its progress (the stage, and how much of
it is done), then `succeeded` with its result — an evaluation's verdict and scores (its report.html and
results.json are those of `tunelab eval`), an export's files, verified as `tunelab export` verifies them,
to download as one file — or `failed` with the error. A task interrupted by a server restart starts again.
Tasks belong to a project, as files and jobs do.
"""

from __future__ import annotations

import json
import re
import time
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse
from pydantic import Field

from tunelab.export import FORMATS
from tunelab.server.auth import project_of
from tunelab.server.errors import APIError, row_or_404
from tunelab.server.files import file_row
from tunelab.server.models import base_models
from tunelab.server.requests import Closed
from tunelab.server.store import Store, new_id

KINDS = {"evaluation": "eval_", "export": "export_"}
TASK_ID = re.compile(r"^(eval|export)_[0-9a-f]{24}$")
STATUSES = ("queued", "running", "succeeded", "failed")
EXPORT_FORMATS = tuple(f for f in FORMATS if f != "adapter")  # the adapter is in the run already

router = APIRouter()


class EvaluationRequest(Closed):
    model: str = Field(description="A fine-tuned model of this project, or a base model name")
    file: str = Field(description="A held-out chat file (uploaded with purpose fine-tune), never trained on")
    limit: int | None = Field(None, ge=1, description="Evaluate the first N examples only")
    max_new_tokens: int | None = Field(None, ge=1, le=4096, description="Default: 1.5 × the longest reference")
    forgetting: Literal["auto", "off"] = Field("auto", description="The catastrophic-forgetting check")


class ExportRequest(Closed):
    model: str = Field(description="A fine-tuned model of this project")
    format: Literal[EXPORT_FORMATS] = "merged"  # type: ignore[valid-type]
    dtype: str | None = Field(None, description="merged: f32, bf16 or f16; gguf and ollama: f16, bf16, f32, q8_0")


def read_events(store: Store, task_id: str) -> list[dict]:
    path = store.task_dir(task_id) / "events.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip() and line.endswith("}")]


def task_object(store: Store, row) -> dict:
    """An evaluation or export as the API returns it: what was asked, where it stands, and its result."""
    kind = row["kind"]
    events = read_events(store, row["id"]) if row["status"] in ("running", "succeeded", "failed") else []
    progress = next((e for e in reversed(events) if e["kind"] == "progress"), None)
    request = json.loads(row["request"])
    request.pop("resolved", None)  # where the model lives on this server: not the client's business
    return {"object": f"tunelab.{kind}", "id": row["id"], "status": row["status"], "created_at": row["created_at"],
            "started_at": row["started_at"], "finished_at": row["finished_at"], **request,
            "progress": {"stage": progress["data"].get("description") or progress["data"].get("task"),
                         "completed": progress["data"].get("completed"), "total": progress["data"].get("total")}
            if progress and row["status"] == "running" else None,
            "messages": [e["text"] for e in events if e["kind"] in ("message", "warning")][-20:],
            "result": json.loads(row["result"]) if row["result"] else None,
            "error": json.loads(row["error"]) if row["error"] else None}


def _resolved(request: Request, model: str, param: str, fine_tunes_only: bool) -> dict:
    """Where the named model lives: a fine-tune's run directory, or a base model's spec."""
    store, project = request.app.state.store, project_of(request)
    rows = store.execute("SELECT id FROM jobs WHERE fine_tuned_model = ? AND status = 'succeeded' "
                         "AND model_deleted = 0 AND project_id = ?", (model, project))
    if rows:
        return {"run": str(store.run_dir(rows[0]["id"]))}
    bases = base_models(request)
    if model in bases and not fine_tunes_only:
        return {"spec": bases[model]}
    raise APIError(404, f"The model '{model}' is not a fine-tuned model of this project"
                   + ("" if fine_tunes_only else " or a base model of this server"), param=param,
                   code="model_not_found")


def _create(request: Request, kind: str, fields: dict, resolved: dict) -> dict:
    store = request.app.state.store
    task_id = new_id(KINDS[kind])
    store.execute("INSERT INTO tasks (id, project_id, kind, status, created_at, request) VALUES (?, ?, ?, 'queued', ?, ?)",
                  (task_id, project_of(request), kind, int(time.time()), json.dumps({**fields, "resolved": resolved})))
    return task_object(store, _row(request, task_id, kind))


def _row(request: Request, task_id: str, kind: str):
    row = row_or_404(request.app.state.store, "tasks", task_id, TASK_ID, kind, f"{kind}_id", project_of(request))
    if row["kind"] != kind:
        raise APIError(404, f"No such {kind} object: {task_id}", param=f"{kind}_id")
    return row


def _list(request: Request, kind: str, limit: int, after: str | None) -> dict:
    store = request.app.state.store
    conditions, parameters = ["project_id = ?", "kind = ?"], [project_of(request), kind]
    if after:
        anchor = _row(request, after, kind)
        conditions.append("(created_at, rowid) < (?, ?)")
        parameters += [anchor["created_at"], anchor["rowid"]]
    limit = max(1, min(limit, 100))
    rows = store.execute(f"SELECT rowid, * FROM tasks WHERE {' AND '.join(conditions)} "
                         "ORDER BY created_at DESC, rowid DESC LIMIT ?", (*parameters, limit + 1))
    return {"object": "list", "data": [task_object(store, row) for row in rows[:limit]], "has_more": len(rows) > limit}


def _finished_file(request: Request, row, name: str, media: str, filename: str | None = None) -> FileResponse:
    path = request.app.state.store.task_dir(row["id"]) / name
    if row["status"] != "succeeded" or not path.is_file():
        raise APIError(400, f"{row['id']} has not succeeded (it is {row['status']}); its files come when it has",
                       code="invalid_state")
    return FileResponse(path, media_type=media, filename=filename)


# --- evaluations ----------------------------------------------------------------------------------------

@router.post("/tunelab/evaluations")
async def create_evaluation(request: Request, body: EvaluationRequest) -> dict:
    resolved = _resolved(request, body.model, "model", fine_tunes_only=False)
    row = file_row(request, body.file)
    if row["purpose"] != "fine-tune":
        raise APIError(400, f"file: {body.file} is a {row['purpose']} file; evaluations read chat files "
                       "(purpose fine-tune)", param="file", code="invalid_file")
    return _create(request, "evaluation", {**body.model_dump(), "filename": row["filename"]}, resolved)


@router.get("/tunelab/evaluations")
async def list_evaluations(request: Request, limit: int = 20, after: str | None = None) -> dict:
    return _list(request, "evaluation", limit, after)


@router.get("/tunelab/evaluations/{evaluation_id}")
async def retrieve_evaluation(request: Request, evaluation_id: str) -> dict:
    return task_object(request.app.state.store, _row(request, evaluation_id, "evaluation"))


@router.get("/tunelab/evaluations/{evaluation_id}/report")
async def evaluation_report(request: Request, evaluation_id: str) -> FileResponse:
    """`tunelab eval`'s report.html: open it in a browser."""
    return _finished_file(request, _row(request, evaluation_id, "evaluation"), "out/report.html", "text/html")


@router.get("/tunelab/evaluations/{evaluation_id}/results")
async def evaluation_results(request: Request, evaluation_id: str) -> FileResponse:
    """`tunelab eval`'s results.json (docs/reference/eval-results.md)."""
    return _finished_file(request, _row(request, evaluation_id, "evaluation"), "out/results.json", "application/json")


# --- exports --------------------------------------------------------------------------------------------

@router.post("/tunelab/exports")
async def create_export(request: Request, body: ExportRequest) -> dict:
    resolved = _resolved(request, body.model, "model", fine_tunes_only=True)
    return _create(request, "export", body.model_dump(), resolved)


@router.get("/tunelab/exports")
async def list_exports(request: Request, limit: int = 20, after: str | None = None) -> dict:
    return _list(request, "export", limit, after)


@router.get("/tunelab/exports/{export_id}")
async def retrieve_export(request: Request, export_id: str) -> dict:
    return task_object(request.app.state.store, _row(request, export_id, "export"))


@router.get("/tunelab/exports/{export_id}/content")
async def export_content(request: Request, export_id: str) -> FileResponse:
    """The export as one file: a .gguf as it is; a merged model or an Ollama folder as a tar archive."""
    row = _row(request, export_id, "export")
    result = json.loads(row["result"] or "{}")
    return _finished_file(request, row, "download", "application/octet-stream", result.get("download_name"))
