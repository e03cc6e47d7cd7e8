"""`/v1/files`: upload, list, retrieve, delete and download, as OpenAI's Files API.

    client.files.create(file=open("train.jsonl", "rb"), purpose="fine-tune")

An upload is streamed to disk (Starlette spools multipart parts to a temporary file; we copy it under a
server-made name in 1 MB blocks), never held whole in memory, and capped (413 above `--max-upload-mb`,
checked as the bytes arrive, see app.py). A `fine-tune` file is checked line by line with the data
toolkit's rules before it is accepted: a line that is not a valid chat example is a 400 naming the file,
line and field. Whole-file rules (too few examples) are the job's to report, as at OpenAI, where such a
job fails with `invalid_n_examples`.
"""

from __future__ import annotations

import re
import time
from typing import Literal

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from tunelab.core.files import atomic_path
from tunelab.data.validate import validate_file
from tunelab.server.auth import project_of
from tunelab.server.errors import APIError, row_or_404
from tunelab.server.quotas import check_storage_quota
from tunelab.server.store import new_id

FILE_ID = re.compile(r"^file-[A-Za-z0-9]{1,64}$")
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
COPY_BLOCK = 1 << 20

router = APIRouter()


def file_object(row) -> dict:
    return {"id": row["id"], "object": "file", "bytes": row["bytes"], "created_at": row["created_at"],
            "filename": row["filename"], "purpose": row["purpose"], "status": row["status"]}


def file_row(request: Request, file_id: str):
    """The file's row in the request's project; OpenAI's 404 otherwise."""
    return row_or_404(request.app.state.store, "files", file_id, FILE_ID, "File", "file_id", project_of(request))


@router.post("/files")
async def create_file(request: Request, file: UploadFile = File(...),
                      purpose: Literal[PURPOSES] = Form(..., description="fine-tune files are checked line by line")) -> dict:
    filename = file.filename or "upload"
    if purpose == "fine-tune" and not filename.endswith(".jsonl"):
        raise APIError(400, f"Invalid file format for Fine-Tuning API. Must be .jsonl (got {filename!r})",
                       param="file", code="invalid_file_format")
    # Copied and checked in a worker thread: a large file's validation takes seconds, and every other request
    # is answered meanwhile.
    return await run_in_threadpool(_store_upload, request, file.file, filename, purpose)


def _store_upload(request: Request, source, filename: str, purpose: str) -> dict:
    """The upload (Starlette's spooled temporary file) copied under a server-made name and, for fine-tuning,
    checked; recorded only once it is whole and valid, and within its project's storage limit."""
    store, project = request.app.state.store, project_of(request)
    check_storage_quota(request, project, source.seek(0, 2))
    file_id = new_id("file-")
    size = 0
    with atomic_path(store.file_path(file_id)) as temporary:
        with temporary.open("wb") as out:
            source.seek(0)
            while block := source.read(COPY_BLOCK):
                out.write(block)
                size += len(block)
        examples = _check_training_file(temporary, filename) if purpose == "fine-tune" else None
    store.execute("INSERT INTO files (id, bytes, created_at, filename, purpose, status, examples, project_id) "
                  "VALUES (?, ?, ?, ?, ?, 'processed', ?, ?)",
                  (file_id, size, int(time.time()), filename, purpose, examples, project))
    return file_object(store.execute("SELECT * FROM files WHERE id = ?", (file_id,))[0])


def _check_training_file(path, filename: str) -> int:
    """The number of examples, or a 400 naming the first line that is not a valid chat example."""
    report = validate_file(path, shown_as=filename)
    line_errors = [p for p in report.errors if p.line > 0]
    if report.examples == 0 and not line_errors:
        raise APIError(400, f"{filename}: the file holds no examples; expected JSONL, one chat example per line",
                       param="file", code="invalid_file_format")
    if line_errors:
        first = line_errors[0]
        more = f" (and {len(line_errors) - 1} more problem(s))" if len(line_errors) > 1 else ""
        where = f"{first.path}: " if first.path else ""
        # Another tool's data (Alpaca, ShareGPT, TRL's): what it is, and the command that converts it.
        hint = next((f"; {problem.message}" for problem in report.findings if problem.code == "other_format"), "")
        raise APIError(400, f"Invalid training file: {filename}, line {first.line}: {where}{first.message} "
                       f"[{first.code}]{more}{hint}", param="file", code="invalid_file_format")
    return report.examples


@router.get("/files")
async def list_files(request: Request, purpose: str | None = None, limit: int = Query(10000, ge=1, le=10000),
                     order: str = Query("desc", pattern="^(asc|desc)$"), after: str | None = None) -> dict:
    store = request.app.state.store
    direction = "ASC" if order == "asc" else "DESC"
    conditions, parameters = ["project_id = ?"], [project_of(request)]
    if purpose:
        conditions.append("purpose = ?")
        parameters.append(purpose)
    if after:
        anchor = file_row(request, after)
        comparison = ">" if order == "asc" else "<"
        conditions.append(f"(created_at, rowid) {comparison} (?, ?)")
        parameters += [anchor["created_at"], anchor["rowid"]]
    where = f"WHERE {' AND '.join(conditions)}"
    # Upload order within a second: rowid grows with each insert.
    rows = store.execute(f"SELECT rowid, * FROM files {where} ORDER BY created_at {direction}, rowid {direction} LIMIT ?",
                         (*parameters, limit + 1))
    data = [file_object(row) for row in rows[:limit]]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": len(rows) > limit}


@router.get("/files/{file_id}")
async def retrieve_file(request: Request, file_id: str) -> dict:
    return file_object(file_row(request, file_id))


@router.delete("/files/{file_id}")
async def delete_file(request: Request, file_id: str) -> dict:
    row = file_row(request, file_id)
    store = request.app.state.store
    store.execute("DELETE FROM files WHERE id = ?", (row["id"],))
    store.file_path(row["id"]).unlink(missing_ok=True)
    return {"id": row["id"], "object": "file", "deleted": True}


@router.get("/files/{file_id}/content")
async def file_content(request: Request, file_id: str):
    row = file_row(request, file_id)
    return FileResponse(request.app.state.store.file_path(row["id"]), media_type="application/octet-stream",
                        filename=row["filename"])
