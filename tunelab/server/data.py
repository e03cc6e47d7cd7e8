"""The data toolkit over HTTP — tunelab's addition to OpenAI's API: a file's findings before a job uses it,
and its examples as the model is trained on them.

    POST /v1/tunelab/data/check      (multipart: file, model)  every finding, token counts and the cost; nothing stored
    GET  /v1/files/{id}/check?model=default                    the same for an uploaded file
    GET  /v1/files/{id}/preview?model=default&limit=3          examples in runs of trained and untrained text

The check is `tunelab data validate` (data/validate.py): every error and warning with its line and field,
token statistics with the named base model's tokenizer and chat template, the time a local run would
take, and — when the base model is named as an OpenAI model — what the same training costs at OpenAI
(counted with the local tokenizer, so an estimate). The preview is `tunelab data render --json` (conversation/render.py).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from tunelab.conversation.problems import DataError
from tunelab.conversation.reader import read_numbered_conversations
from tunelab.conversation.render import TemplateMismatch, trained_view
from tunelab.data.cost import openai_cost
from tunelab.data.tokens import token_counter
from tunelab.data.validate import validate_file
from tunelab.server.errors import APIError
from tunelab.server.files import file_row
from tunelab.server.models import resolve_base

router = APIRouter()
_counters: dict[str, object] = {}  # base model spec → its token counter (loading a tokenizer takes a while)
_counters_lock = threading.Lock()


def _counter(spec: str):
    with _counters_lock:
        if spec not in _counters:
            _counters[spec] = token_counter(spec)
        return _counters[spec]


def _checked(path: Path, filename: str, model: str, spec: str) -> dict:
    checked = validate_file(path, counter=_counter(spec), shown_as=filename)
    report = checked.to_dict()
    report["file"] = filename
    try:  # a base model named as an OpenAI model (an alias): what the same training would cost there
        report["openai_cost"] = openai_cost(model, list(checked.token_lengths), exact=False).to_dict()
    except ValueError:
        report["openai_cost"] = None
    for finding in report["findings"]:
        finding.pop("file", None)  # the server's own path to it; the report names the file once, by its name
    return report


@router.post("/tunelab/data/check")
async def check_upload(request: Request, file: UploadFile = File(...), model: str = Form("default")) -> dict:
    """The findings on a file that is not stored: what the dashboard shows before anything is uploaded."""
    spec = resolve_base(request, model)
    filename = file.filename or "upload"

    def check() -> dict:
        with tempfile.TemporaryDirectory() as directory:
            path = Path(directory) / "upload.jsonl"
            with path.open("wb") as out:
                file.file.seek(0)
                shutil.copyfileobj(file.file, out, 1 << 20)
            return _checked(path, filename, model, spec)

    return await run_in_threadpool(check)


@router.get("/files/{file_id}/check")
async def check_file(request: Request, file_id: str, model: str = "default") -> dict:
    row = file_row(request, file_id)
    spec = resolve_base(request, model)
    return await run_in_threadpool(_checked, request.app.state.store.file_path(row["id"]), row["filename"], model, spec)


@router.get("/files/{file_id}/preview")
async def preview_file(request: Request, file_id: str, model: str = "default",
                       limit: int = Query(3, ge=1, le=50), line: int = Query(1, ge=1)) -> dict:
    row = file_row(request, file_id)
    spec = resolve_base(request, model)

    def preview() -> dict:
        try:
            numbered = read_numbered_conversations(request.app.state.store.file_path(row["id"]))
        except DataError as error:
            raise APIError(400, f"{row['filename']}: {error}", param="file_id", code="invalid_file_format") from None
        tokenizer = _counter(spec).tokenizer
        shown = [(number, conversation) for number, conversation in numbered if number >= line][:limit]
        try:
            examples = [trained_view(tokenizer, number, conversation) for number, conversation in shown]
        except TemplateMismatch as error:
            raise APIError(400, f"{row['filename']}: {error}", param="model", code="invalid_value") from None
        return {"object": "tunelab.file_preview", "file_id": row["id"], "filename": row["filename"], "model": model,
                "examples": examples, "has_more": bool(numbered) and numbered[-1][0] > (shown[-1][0] if shown else 0)}

    return await run_in_threadpool(preview)
