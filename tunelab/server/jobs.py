"""`/v1/fine_tuning/jobs`: create, list, retrieve, cancel, pause, resume, events and checkpoints of jobs.

    client.fine_tuning.jobs.create(training_file=file.id, model="gpt-4o-mini-2024-07-18",
                                   hyperparameters={"n_epochs": 3})

A request handler only records the job (`validating_files`); the worker process (worker.py) validates its
files, queues it, trains it with the same recipe as `tunelab train`, and writes the outcome back. The
hyperparameters are checked by the same settings model the CLI and YAML files use (TrainConfig), so the
API accepts exactly what `tunelab train` does, with the same messages.
"""

from __future__ import annotations

import hashlib
import json
import re
import time

from fastapi import APIRouter, Request

from tunelab.core.settings import OPENAI_HYPERPARAMETERS as HYPERPARAMETERS
from tunelab.core.settings import REINFORCEMENT_HYPERPARAMETERS, reinforcement_settings
from tunelab.graders.spec import GraderSpecError, grading_models, parse_grader
from tunelab.runs.record import fine_tuned_model_name, fine_tuning_job
from tunelab.runs.rundir import RunDir, complete_checkpoints
from tunelab.server.auth import project_of
from tunelab.server.errors import APIError, row_or_404
from tunelab.server.job_settings import JobSettingsError, job_extension
from tunelab.server.lifecycle import IllegalTransition, move
from tunelab.server.models import resolve_base
from tunelab.server.quotas import check_job_quota
from tunelab.server.requests import CreateJobRequest
from tunelab.server.store import new_id

JOB_ID = re.compile(r"^ftjob-[A-Za-z0-9]{1,64}$")

router = APIRouter()


def job_object(store, row) -> dict:
    """A fine_tuning.job as OpenAI returns it, from the job's row and (once it trains) its run directory."""
    run = RunDir(store.run_dir(row["id"]))
    hyperparameters = json.loads(row["hyperparameters"])
    estimated_finish = None
    if run.config_file.is_file():  # `auto` resolved by the run
        settings = run.settings()
        hyperparameters |= {name: settings[name] for name in HYPERPARAMETERS + (("beta",) if "beta" in hyperparameters else ())}
        if row["status"] == "running" and run.has_run():
            estimated_finish = _estimated_finish(run, row["started_at"])
    # OpenAI states the three at the top level as well (deprecated); a method's own (dpo's beta) only under it.
    top_level = {name: hyperparameters[name] for name in HYPERPARAMETERS}
    return fine_tuning_job(
        id=row["id"], created_at=row["created_at"], model=row["model"], status=row["status"],
        base_model=run.job().get("base_model", row["base_model"]) if run.has_run() else row["base_model"],
        training_file=row["training_file"], validation_file=row["validation_file"],
        hyperparameters=top_level, method=row["method"], method_hyperparameters=hyperparameters, seed=row["seed"],
        suffix=row["suffix"],
        metadata=json.loads(row["metadata"]) if row["metadata"] else None,
        fine_tuned_model=row["fine_tuned_model"], trained_tokens=row["trained_tokens"],
        finished_at=row["finished_at"], estimated_finish=estimated_finish,
        result_files=json.loads(row["result_files"]), error=json.loads(row["error"]) if row["error"] else None,
        integrations=json.loads(row["integrations"]) if row["integrations"] else None,
        grader=json.loads(row["grader"])["grader"] if row["grader"] else None,
        # tunelab's addition: the settings beyond OpenAI's fields, as the request's `tunelab` extension takes
        # them, with the preset they came from (None: TrainConfig's defaults and the memory plan's choices)
        tunelab=json.loads(row["settings"]))


def _estimated_finish(run: RunDir, started_at: int | None) -> int | None:
    """Now plus the remaining steps at the pace so far (None before the first step)."""
    job = run.job()
    total = job.get("estimated_total_steps")
    done = sum(1 for _ in run.metrics_file.open()) - 1 if run.metrics_file.is_file() else 0
    if not total or done <= 0 or not started_at:
        return None
    elapsed = time.time() - started_at
    return int(time.time() + elapsed / done * max(0, total - done))


def _fine_tune_job(request: Request, model: str):
    """The succeeded job of the request's project whose fine-tune `model` names (not deleted); None for any
    other name."""
    if not model.startswith("ft:"):
        return None
    rows = request.app.state.store.execute(
        "SELECT id, model, base_model FROM jobs WHERE fine_tuned_model = ? AND status = 'succeeded' "
        "AND model_deleted = 0 AND project_id = ?", (model, project_of(request)))
    return rows[0] if rows else None


def job_row(request: Request, job_id: str):
    """The job's row in the request's project; OpenAI's 404 otherwise."""
    return row_or_404(request.app.state.store, "jobs", job_id, JOB_ID, "fine-tuning job", "fine_tuning_job_id",
                      project_of(request))


def _file_id(request: Request, value: str | None, name: str) -> str | None:
    if value is None:
        return None
    if not request.app.state.store.execute("SELECT id FROM files WHERE id = ? AND purpose = 'fine-tune' "
                                           "AND project_id = ?", (value, project_of(request))):
        raise APIError(400, f"{name}: {value!r} is not a fine-tune file uploaded to this server", param=name,
                       code="invalid_file")
    return value


@router.post("/fine_tuning/jobs")
async def create_job(request: Request, body: CreateJobRequest) -> dict:
    project = project_of(request)
    start = _fine_tune_job(request, body.model)  # a job may start from a fine-tune of this project, as on OpenAI
    base_model = start["base_model"] if start else resolve_base(request, body.model)
    training_file = _file_id(request, body.training_file, "training_file")
    validation_file = _file_id(request, body.validation_file, "validation_file")
    hyperparameters = body.hyperparameters_chosen()
    grader = _job_grader(request, body)
    extension = body.tunelab.model_dump(exclude_unset=True) if body.tunelab else None
    as_settings = {name: value for name, value in hyperparameters.items() if name not in REINFORCEMENT_HYPERPARAMETERS}
    as_settings.update(reinforcement_settings(hyperparameters))
    try:
        settings = job_extension(extension, base_model, request.app.state.settings.job_presets, as_settings,
                                 validation_file is not None)
    except JobSettingsError as error:
        raise APIError(400, str(error), param=error.param, code="invalid_value") from None
    check_job_quota(request, project)
    store = request.app.state.store
    job_id = new_id("ftjob-")
    seed = body.seed if body.seed is not None else int.from_bytes(job_id.encode()[-4:], "big") % 2**31
    store.execute("INSERT INTO jobs (id, created_at, model, base_model, training_file, validation_file, suffix, seed, "
                  "metadata, hyperparameters, settings, project_id, integrations, method, start_job, grader, status) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'validating_files')",
                  (job_id, int(time.time()), body.model, base_model, training_file, validation_file, body.suffix, seed,
                   json.dumps(body.metadata) if body.metadata else None, json.dumps(hyperparameters),
                   json.dumps(settings), project,
                   json.dumps([i.model_dump() for i in body.integrations]) if body.integrations else None,
                   body.method_type, start["id"] if start else None, json.dumps(grader) if grader else None))
    store.job_event(job_id, f"Created fine-tuning job: {job_id}")
    if len(settings) > 1 or settings["preset"]:
        store.job_event(job_id, "Settings: " + ", ".join(f"{name} {value}" for name, value in settings.items()
                                                         if value is not None))
    return job_object(store, job_row(request, job_id))


def _job_grader(request: Request, body: CreateJobRequest) -> dict | None:
    """A reinforcement job's grader as given, checked (a 400 naming the field), with the models its model
    graders name resolved to this server's models now: {"grader": …, "models": {name: local spec}}."""
    if body.method_type != "reinforcement":
        return None
    given = body.method.reinforcement.grader
    try:
        spec = parse_grader(given, "method.reinforcement.grader")
    except GraderSpecError as error:
        raise APIError(400, str(error), param=error.param, code="invalid_value") from None
    models = {name: resolve_base(request, name, param="method.reinforcement.grader.model")
              for name in grading_models(spec)}
    return {"grader": given, "models": models}


@router.get("/fine_tuning/jobs")
async def list_jobs(request: Request, after: str | None = None, limit: int = 20) -> dict:
    store = request.app.state.store
    conditions, parameters = ["project_id = ?"], [project_of(request)]
    if after:
        anchor = job_row(request, after)
        conditions.append("(created_at, rowid) < (?, ?)")
        parameters += [anchor["created_at"], anchor["rowid"]]
    for key, value in request.query_params.items():  # metadata[k]=v filters
        match = re.fullmatch(r"metadata\[(.{1,64})\]", key)
        if match:
            conditions.append("json_extract(metadata, ?) = ?")
            parameters += [f'$."{match.group(1)}"', value]
    where = f"WHERE {' AND '.join(conditions)}"
    rows = store.execute(f"SELECT rowid, * FROM jobs {where} ORDER BY created_at DESC, rowid DESC LIMIT ?",
                         (*parameters, max(1, min(limit, 100)) + 1))
    shown = rows[:max(1, min(limit, 100))]
    return {"object": "list", "data": [job_object(store, row) for row in shown], "has_more": len(rows) > len(shown)}


@router.get("/fine_tuning/jobs/{job_id}")
async def retrieve_job(request: Request, job_id: str) -> dict:
    return job_object(request.app.state.store, job_row(request, job_id))


@router.post("/fine_tuning/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str) -> dict:
    """Cancelled at once; a job in training stops after its current step (its process asks after every one)."""
    return _moved(request, job_id, "cancelled", "Job cancelled")


@router.post("/fine_tuning/jobs/{job_id}/pause")
async def pause_job(request: Request, job_id: str) -> dict:
    """Stop training after the current step; `resume` continues from the last complete checkpoint (the steps
    since it are trained again, to the same weights)."""
    return _moved(request, job_id, "paused", "Job paused", leaving=("queued", "running"))


@router.post("/fine_tuning/jobs/{job_id}/resume")
async def resume_job(request: Request, job_id: str) -> dict:
    """Queued again: the worker resumes it when a slot is free (from its checkpoint if it had started training)."""
    return _moved(request, job_id, "queued", "Job resumed", leaving=("paused",), action="resumed")


def _moved(request: Request, job_id: str, to: str, event: str, leaving: tuple[str, ...] | None = None,
           action: str | None = None) -> dict:
    store = request.app.state.store
    try:
        move(store, job_row(request, job_id)["id"], to, event, leaving=leaving, action=action)
    except IllegalTransition as error:
        raise APIError(400, str(error), param="fine_tuning_job_id", code="invalid_state") from None
    return job_object(store, job_row(request, job_id))


def model_name(store, row) -> str | None:
    """The job's fine-tuned model name: reported on success, known as soon as its run has started."""
    run = RunDir(store.run_dir(row["id"]))
    if row["fine_tuned_model"]:
        return row["fine_tuned_model"]
    return fine_tuned_model_name(row["model"], row["suffix"], row["id"]) if run.has_run() else None


def checkpoint_objects(store, row) -> list[dict]:
    """The job's complete checkpoints (the newest three are kept), newest first, as OpenAI lists them."""
    run = RunDir(store.run_dir(row["id"]))
    name = model_name(store, row)
    objects = []
    for path in reversed(complete_checkpoints(run.checkpoints_dir)):
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        last = state["rows"][-1] if state["rows"] else {}
        metrics = {"step": state["step"], "train_loss": last.get("train_loss"),
                   "train_mean_token_accuracy": last.get("train_accuracy"), "valid_loss": last.get("valid_loss"),
                   "valid_mean_token_accuracy": last.get("valid_mean_token_accuracy")}
        digest = hashlib.sha256(f"{row['id']}:{state['step']}".encode()).hexdigest()[:24]
        objects.append({"object": "fine_tuning.job.checkpoint", "id": f"ftckpt_{digest}",
                        "created_at": int(path.stat().st_mtime), "fine_tuning_job_id": row["id"],
                        "step_number": state["step"], "fine_tuned_model_checkpoint": f"{name}:ckpt-step-{state['step']}",
                        "metrics": {key: value for key, value in metrics.items() if value is not None}})
    return objects


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
async def list_checkpoints(request: Request, job_id: str, after: str | None = None, limit: int = 10) -> dict:
    checkpoints = checkpoint_objects(request.app.state.store, job_row(request, job_id))
    if after:
        positions = [index for index, checkpoint in enumerate(checkpoints) if checkpoint["id"] == after]
        checkpoints = checkpoints[positions[0] + 1:] if positions else []
    shown = checkpoints[:max(1, min(limit, 100))]
    return {"object": "list", "data": shown, "first_id": shown[0]["id"] if shown else None,
            "last_id": shown[-1]["id"] if shown else None, "has_more": len(checkpoints) > len(shown)}


@router.get("/fine_tuning/jobs/{job_id}/events")
async def list_events(request: Request, job_id: str, after: str | None = None, limit: int = 20) -> dict:
    row = job_row(request, job_id)
    store = request.app.state.store
    events = [{"object": "fine_tuning.job.event", "id": e["id"], "created_at": e["created_at"], "level": e["level"],
               "message": e["message"], "data": {}, "type": "message"}
              for e in store.execute("SELECT * FROM job_events WHERE job_id = ?", (row["id"],))]
    run = RunDir(store.run_dir(row["id"]))
    if run.events_file.is_file():  # the run's own status events left out: the job's statuses are the server's
        events += [event for event in run.events() if "status" not in event.get("data", {})]
    # Newest first, as OpenAI lists them; events of one second keep their order of writing.
    events = [e for _, e in sorted(enumerate(events), key=lambda pair: (pair[1]["created_at"], pair[0]), reverse=True)]
    if after:
        positions = [index for index, event in enumerate(events) if event["id"] == after]
        events = events[positions[0] + 1:] if positions else []
    limit = max(1, min(limit, 1000))
    return {"object": "list", "data": events[:limit], "has_more": len(events) > limit}
