"""Fine-tuning jobs on a remote server that speaks OpenAI's API — a `tunelab serve`, or OpenAI itself:
submit one, watch it, fetch what it made into a local run directory.

    client = connect("http://gpu-box:8000/v1")         # or OPENAI_BASE_URL / OPENAI_API_KEY
    job = submit(client, TrainConfig(data="train.jsonl", suffix="support"), events)
    job = watch(client, job.id, events)                 # until it ends; a dropped connection reconnects
    run = fetch_run(client, job, "runs/support")        # job record, events, metrics — and, from a
                                                        # `tunelab serve`, the trained weights

OpenAI's job API carries the training and validation files, the base model, `n_epochs`, `batch_size`,
`learning_rate_multiplier`, `suffix` and `seed`. A `tunelab serve` also takes the other settings (method,
LoRA rank, micro-batch, …) in its `tunelab` extension of the request (server/job_settings.py); to OpenAI
such a setting is refused by name rather than dropped. The `openai` client does the HTTP, retrying 429 and 5xx
with backoff (`max_retries`); its errors become `RemoteError`s that say what happened in a sentence.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from tunelab.conversation.problems import ERROR
from tunelab.core.events import NO_EVENTS, Events
from tunelab.core.files import atomic_path, write_text_atomically
from tunelab.core.settings import AUTO, DEFAULT_GROUP_SIZE, EXTENSION_SETTINGS, OPENAI_JOB_SETTINGS, TrainConfig
from tunelab.data.validate import validate_file
from tunelab.graders.spec import read_grader_file
from tunelab.runs.archive import unpack_run
from tunelab.runs.rundir import RunDir

FINISHED = ("succeeded", "failed", "cancelled")
# `out`: where the fetched run is put, here; a grpo run's group size and evaluation settings travel in OpenAI's
# reinforcement hyperparameters (compute_multiplier, eval_interval, eval_samples).
SENDABLE = OPENAI_JOB_SETTINGS | {"out", "group_size", "eval_every", "eval_samples"}
RETRIES = 4  # the client's own, for 429 and 5xx, with exponential backoff
RECONNECT_SECONDS = (1, 2, 4, 8, 15, 30)  # while watching, after a dropped connection (then every 30 s)


class RemoteError(RuntimeError):
    """The remote refused or failed a request, or cannot be reached; the message says which, plainly."""


OPENAI_URL = "https://api.openai.com/v1"


def connect(url: str | None = None, api_key: str | None = None, timeout: float = 60.0):
    """An `openai.OpenAI` client for `url` (default OPENAI_BASE_URL, else OpenAI; `openai` names OpenAI
    itself) with `api_key` (default OPENAI_API_KEY). OpenAI needs a key; a `tunelab serve` on loopback may
    need none."""
    import openai

    url = url or os.environ.get("OPENAI_BASE_URL")
    url = None if url in ("openai", OPENAI_URL) else url
    key = api_key or os.environ.get("OPENAI_API_KEY")
    if not key and not url:
        raise RemoteError("no API key: set OPENAI_API_KEY (or pass --api-key) to reach OpenAI")
    return openai.OpenAI(base_url=url, api_key=key or "none", max_retries=RETRIES, timeout=timeout)


def plainly(call, *args, **kwargs):
    """`call(*args, **kwargs)` (a method of the client, e.g. `client.files.create`), its `openai` errors
    turned into RemoteErrors that name the server."""
    import openai

    try:
        return call(*args, **kwargs)
    except openai.OpenAIError as error:
        resource = getattr(call, "__self__", None)
        raise as_remote_error(error, getattr(resource, "_client", resource)) from None


def as_remote_error(error, client) -> RemoteError:
    """A sentence for an `openai` error: the key refused, an HTTP error with the server's message, or no
    connection."""
    import openai

    where = str(getattr(client, "base_url", "") or "the server")
    if isinstance(error, openai.AuthenticationError):
        return RemoteError(f"{where}: the API key was refused (401); check OPENAI_API_KEY or --api-key")
    if isinstance(error, openai.APIStatusError):
        return RemoteError(f"{where}: HTTP {error.status_code}: {_error_message(error)}")
    if isinstance(error, openai.APIConnectionError):
        return RemoteError(f"{where}: cannot connect ({error.__cause__ or error})")
    return RemoteError(f"{where}: {error}")


def _error_message(error) -> str:
    body = error.body if isinstance(error.body, dict) else {}
    inner = body.get("error", body) if isinstance(body.get("error", body), dict) else {}
    message = inner.get("message") or str(error)
    return message + (f" (param: {inner['param']})" if inner.get("param") else "")


def submit(client, config: TrainConfig, events: Events = NO_EVENTS, given: set[str] | None = None):
    """Validate the data here (the data toolkit), upload it, and create the job; returns OpenAI's job object.

    `given`: the settings the user set (flags, config file, preset); those beyond OpenAI's fields go in
    the `tunelab` extension to a `tunelab serve`, and are an error to OpenAI itself."""
    to_openai = client.base_url.host == "api.openai.com"
    extension = sorted((given or set()) & set(EXTENSION_SETTINGS)) if not to_openai else []
    unsendable = sorted((given or set()) - SENDABLE - set(extension))
    if unsendable:
        raise ValueError("cannot be sent to a remote job (OpenAI's job API carries only the files, model, "
                         "method, n_epochs, batch_size, learning_rate_multiplier, dpo's beta, grpo's grader, group "
                         "size and evaluation settings, suffix and seed"
                         + ("; a `tunelab serve` takes the others" if to_openai else "") + "): "
                         + ", ".join("--" + name.replace("_", "-") for name in unsendable))
    files = [config.data] + ([config.validation] if config.validation else [])
    report = validate_file(config.data, config.validation, events=events)
    errors = [f for f in report.findings if f.severity == ERROR]
    if errors:
        first = errors[0]
        raise ValueError(f"{config.data}:{first.line}: {first.path or 'line'}: {first.message} [{first.code}] — "
                         f"{len(errors)} error(s) found before upload, nothing sent (`tunelab data validate` lists all)")
    events.message(f"✓ {Path(config.data).name}: {report.examples} examples, checked here before upload")
    uploaded = []
    for path in files:
        with open(path, "rb") as handle:
            uploaded.append(plainly(client.files.create, file=handle, purpose="fine-tune"))
        events.message(f"uploaded {path} as {uploaded[-1].id}")
    hyperparameters = {name: getattr(config, name) for name in ("n_epochs", "batch_size", "learning_rate_multiplier")
                       if getattr(config, name) != AUTO}
    # OpenAI's method object; the deprecated top-level hyperparameters only for a supervised job, as before
    if config.method == "dpo":
        method = {"type": "dpo", "dpo": {"hyperparameters": {**hyperparameters, **(
            {"beta": config.beta} if config.beta != AUTO else {})}}}
        hyperparameters = {}
    elif config.method == "grpo":
        method = {"type": "reinforcement", "reinforcement": {
            "grader": read_grader_file(config.grader).model_dump(exclude_none=True),
            "hyperparameters": {**hyperparameters, **_reinforcement_hyperparameters(config, given or set())}}}
        hyperparameters = {}
    else:
        method = None
    job = plainly(client.fine_tuning.jobs.create, model=config.model, training_file=uploaded[0].id,
                  validation_file=uploaded[1].id if len(uploaded) > 1 else None,
                  hyperparameters=hyperparameters or None, suffix=config.suffix, seed=config.seed,
                  **({"method": method} if method else {}),
                  extra_body={"tunelab": {name: getattr(config, name) for name in extension}} if extension else None)
    events.message(f"created {job.id} on {client.base_url} ({job.status})", job_id=job.id)
    return job


def _reinforcement_hyperparameters(config: TrainConfig, given: set[str]) -> dict:
    """A grpo run's settings as OpenAI's reinforcement hyperparameters (only those the user set)."""
    chosen = {}
    if "group_size" in given and config.group_size != AUTO:
        chosen["compute_multiplier"] = int(config.group_size) / DEFAULT_GROUP_SIZE
    if "eval_every" in given and config.eval_every:
        chosen["eval_interval"] = config.eval_every
    if "eval_samples" in given and config.eval_samples != AUTO:
        chosen["eval_samples"] = int(config.eval_samples)
    return chosen


def watch(client, job_id: str, events: Events = NO_EVENTS, poll_seconds: float = 1.0):
    """Follow the job until it ends, as a progress bar (step/total, losses, estimated finish) and its
    messages; returns the final job object. A dropped connection is retried (1 to 30 s apart) for as long
    as it takes; any other error ends the watch (the job itself goes on)."""
    import openai

    seen: set[str] = set()
    bar = None
    failures = 0
    try:
        while True:
            try:
                job = client.fine_tuning.jobs.retrieve(job_id)
                page = client.fine_tuning.jobs.list_events(job_id, limit=100).data
            except openai.APIConnectionError:
                wait = RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)]
                events.warning(f"lost the connection to {client.base_url}; trying again in {wait} s")
                failures += 1
                time.sleep(wait)
                continue
            except openai.OpenAIError as error:
                raise as_remote_error(error, client) from None
            if failures:
                events.message("reconnected")
                failures = 0
            for event in reversed(page):  # oldest first
                if event.id in seen:
                    continue
                seen.add(event.id)
                data = event.data or {}
                if event.type == "metrics" and data.get("total_steps"):
                    if bar is None:
                        bar = events.progress("train", total=data["total_steps"], description="train")
                    figures = {k: round(data[k], 4) for k in ("train_loss", "valid_loss") if data.get(k) is not None}
                    if job.estimated_finish:  # the server's estimate (it knows the pace), in local time
                        figures["finishes"] = time.strftime("%H:%M:%S", time.localtime(job.estimated_finish))
                    bar.update(data["step"], **figures)
                elif event.type != "metrics":
                    events.message(event.message)
            if job.status in FINISHED:
                return job
            time.sleep(poll_seconds)
    finally:
        if bar is not None:
            bar.close()


def fetch_run(client, job, out: str | Path) -> RunDir:
    """Write the finished job into the run directory `out`: from a `tunelab serve`, the whole run (its
    second result file); from OpenAI, the job record, its events and the metrics CSV (no weights exist)."""
    out = Path(out)
    names = {file_id: plainly(client.files.retrieve, file_id).filename for file_id in job.result_files or []}
    run_archive = next((file_id for file_id, name in names.items() if name.endswith("-run.tar")), None)
    if run_archive:
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".download-") as scratch:
            archive = Path(scratch) / "run.tar"
            plainly(client.files.content, run_archive).write_to_file(archive)
            return unpack_run(archive, out)
    with atomic_path(out, directory=True, replace=False) as temporary:
        temporary.mkdir()
        (temporary / "job.json").write_text(json.dumps(job.model_dump(), indent=2), encoding="utf-8")
        page = plainly(client.fine_tuning.jobs.list_events, job.id, limit=1000).data
        write_text_atomically(temporary / "events.jsonl",
                              "".join(json.dumps(e.model_dump()) + "\n" for e in reversed(page)))
        for file_id, name in names.items():
            if name.endswith(".csv"):
                plainly(client.files.content, file_id).write_to_file(temporary / "metrics.csv")
    return RunDir(out)


def job_error_text(job) -> str:
    """OpenAI's error of a failed job in one line: code, message and the parameter it concerns."""
    error = job.error
    return f"{error.code}: {error.message}" + (f"; param: {error.param}" if error.param else "")


def server_name(client) -> str:
    """How a listing names where a job runs: `openai`, or the server's host[:port]."""
    url = client.base_url
    return "openai" if url.host == "api.openai.com" else url.host + (f":{url.port}" if url.port else "")


def all_jobs(runs: Path, client=None) -> list[dict]:
    """Jobs, newest first: the local runs under `runs` and, with a client, the server's (OpenAI's job
    objects with `where`: here or the server, and `run`: the local run directory that holds it). A remote
    job fetched into a local run is one entry."""
    local = [dict(RunDir(path.parent).job(), run=str(path.parent)) for path in Path(runs).glob("*/job.json")]
    server = []
    if client is not None:
        where = server_name(client)
        server = [dict(job.model_dump(), where=where) for job in plainly(client.fine_tuning.jobs.list, limit=100).data]
    runs_of = {job["id"]: job["run"] for job in local}
    jobs = [dict(job, run=runs_of[job["id"]]) if job["id"] in runs_of else job for job in server]
    on_server = {job["id"] for job in server}
    jobs += [dict(job, where="here") for job in local if job["id"] not in on_server]
    return sorted(jobs, key=lambda job: job.get("created_at") or 0, reverse=True)


def get_job(client, job_id: str):
    """One job on the server."""
    return plainly(client.fine_tuning.jobs.retrieve, job_id)


def job_events(client, job_id: str) -> list:
    """A job's events on the server, oldest first."""
    return list(reversed(plainly(client.fine_tuning.jobs.list_events, job_id, limit=1000).data))


JOB_ACTIONS = ("cancel", "pause", "resume")


def act_on_job(client, job_id: str, action: str):
    """Cancel, pause or resume a job on the server; returns the job as the server then reports it."""
    if action not in JOB_ACTIONS:
        raise ValueError(f"{action!r}: not one of {', '.join(JOB_ACTIONS)}")
    return plainly(getattr(client.fine_tuning.jobs, action), job_id)
