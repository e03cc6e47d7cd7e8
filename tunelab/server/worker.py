"""The worker: the process that runs fine-tuning jobs, never inside a request handler.

    python -m tunelab.server.worker DATA_DIR [--max-jobs N] [--launcher CMD] [--server-pid PID]
    python -m tunelab.server.worker DATA_DIR --job ID      # one job (what the worker starts)

`tunelab serve` forks its first worker from itself (supervisor.py) and starts one with the first command
line when that one has died.

It takes the oldest job that is waiting and validates its files (the data toolkit's reader; fewer than 10
examples fails the job with OpenAI's `invalid_n_examples`). Then it starts the job in a process of its own
(forked from the worker once it has imported what training needs, prefork.py), up to `--max-jobs` at once
(one by default): the job trains with the same recipe as `tunelab train` into
its run directory, asking the database after every step whether it was cancelled or paused. The outcome
(fine-tuned model name, trained tokens, the metrics CSV and the run itself as `fine-tune-results` files —
runs/archive.py — or the error) is written back to the database, where the API reads it. A job process that dies (killed, out of memory)
fails its job with its exit status.

`--launcher "accelerate launch --multi_gpu --num_processes 8"` starts each job under that command, so one
job uses every GPU of the machine (or FSDP: `--use_fsdp`); the processes agree at every step, and the
first one speaks for the job.

A job found `running` when the worker starts was interrupted (the server was stopped or killed): it
resumes from its last complete checkpoint, exactly as `tunelab train --resume` does.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import sqlite3
import sys
import time
from contextlib import nullcontext, suppress
from pathlib import Path

from tunelab.conversation.problems import DataError
from tunelab.conversation.reader import read_conversations, read_numbered_pairs, read_numbered_tasks
from tunelab.core.files import StorageError, atomic_path, write_text_atomically
from tunelab.core.process import configure_process, keep_freed_memory
from tunelab.core.settings import REINFORCEMENT_HYPERPARAMETERS, TrainConfig, reinforcement_settings
from tunelab.runs.archive import pack_run
from tunelab.runs.rundir import RunDir
from tunelab.runs.tracking import requested_trackers
from tunelab.server import task_worker
from tunelab.server.lifecycle import IllegalTransition, fail, move
from tunelab.server.prefork import Starter
from tunelab.server.store import Store

MIN_EXAMPLES = 10  # OpenAI's minimum for a training file
POLL_SECONDS = 0.5


def next_job(store: Store, started: set[str] = frozenset()):
    """An interrupted job first (it holds a run directory), then the oldest waiting one; none in `started`."""
    for status in ("running", "validating_files", "queued"):
        rows = store.execute("SELECT * FROM jobs WHERE status = ? ORDER BY created_at, rowid", (status,))
        for row in rows:
            if row["id"] not in started:
                return row
    return None


def validate_files(store: Store, job) -> bool:
    """Check the job's files; fail it with OpenAI's error if one cannot be trained on."""
    store.job_event(job["id"], "Validating training file: " + job["training_file"])
    for name in ("training_file", "validation_file"):
        file_id = job[name]
        if file_id is None:
            continue
        read = {"dpo": read_numbered_pairs, "reinforcement": read_numbered_tasks}.get(job["method"], read_conversations)
        try:
            examples = len(read(store.file_path(file_id)))
        except (DataError, FileNotFoundError) as error:
            fail(store, job["id"], f"invalid_{name}", f"{name.replace('_', ' ').capitalize()} {file_id} cannot be "
                 f"used: {str(error).replace(str(store.file_path(file_id)), file_id)}", param=name)
            return False
        if name == "training_file" and examples < MIN_EXAMPLES:
            fail(store, job["id"], "invalid_n_examples", f"Training file has {examples} example(s), but must have "
                 f"at least {MIN_EXAMPLES} examples", param="training_file")
            return False
    try:
        move(store, job["id"], "queued", "Files validated, moving job to queued state", leaving=("validating_files",))
    except IllegalTransition:  # cancelled while its files were read
        return False
    return True


def training_lock(store: Store, job_id: str):
    """Held by a job's (first) process while it trains: a job interrupted by a server restart may still be
    finishing its step in its old process, and must not be started again before that ends."""
    path = Path(store.run_dir(job_id)).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


def start_job(store: Store, job) -> bool:
    """Mark a queued job running (False if it was cancelled or paused meanwhile), and clear the run
    directory of a job interrupted before training wrote anything, so it starts again."""
    training_lock(store, job["id"]).close()  # an old process still on it finishes first
    run = RunDir(store.run_dir(job["id"]))
    if not run.has_run() and run.path.exists():
        shutil.rmtree(run.path)
    if job["status"] == "queued":
        try:
            move(store, job["id"], "running", "Fine-tuning job started", leaving=("queued",))
        except IllegalTransition:  # cancelled or paused meanwhile
            return False
    return store.execute("SELECT status FROM jobs WHERE id = ?", (job["id"],))[0]["status"] == "running"


def _grader_file(store: Store, job_id: str, grader: dict) -> Path:
    """The job's grader as a file beside its run directory (as its lock is), for the run to read and copy in."""
    path = Path(store.run_dir(job_id)).with_suffix(".grader.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(path, json.dumps(grader))
    return path


def run_job(store: Store, job_id: str, resume: bool) -> None:
    """Train the job (`resume`: from its last complete checkpoint), then record how it ended. Under a
    launcher every process runs this; the first one records."""
    main = int(os.environ.get("RANK", "0")) == 0
    with training_lock(store, job_id) if main else nullcontext():
        _train_and_record(store, job_id, resume, main)


def _train_and_record(store: Store, job_id: str, resume: bool, main: bool) -> None:
    from tunelab.train.local import train
    from tunelab.train.memory import DoesNotFit

    job = store.execute("SELECT * FROM jobs WHERE id = ?", (job_id,))[0]
    run = RunDir(store.run_dir(job_id))
    # tunelab's settings (job_settings.py: a preset's, the request's) under OpenAI's hyperparameters; a
    # preset's epochs, batch or rate are there only where the request left OpenAI's field `auto`.
    settings = {name: value for name, value in json.loads(job["settings"]).items() if name != "preset"}
    settings.update(integration_settings(json.loads(job["integrations"] or "[]"), settings.get("report_to", "")))
    # A job started from a fine-tune trains on from that job's run, on its base (train/start.py).
    start = {"from_run": str(store.run_dir(job["start_job"]))} if job["start_job"] else {"model": job["base_model"]}
    hyperparameters = json.loads(job["hyperparameters"])
    reinforcement = job["method"] == "reinforcement"
    grading = json.loads(job["grader"]) if reinforcement else None
    if reinforcement:  # OpenAI's hyperparameters in tunelab's terms, and the grader as a file the run copies in
        hyperparameters = {name: value for name, value in hyperparameters.items()
                           if name not in REINFORCEMENT_HYPERPARAMETERS} | reinforcement_settings(hyperparameters)
        settings["grader"] = str(_grader_file(store, job_id, grading["grader"]))
    config = TrainConfig.from_sources(
        data=str(store.file_path(job["training_file"])), out=str(run.path),
        method="grpo" if reinforcement else job["method"],
        validation=str(store.file_path(job["validation_file"])) if job["validation_file"] else None,
        suffix=job["suffix"], seed=job["seed"], **start, **{**hyperparameters, **settings})

    def cancelled(_step: int) -> bool:  # asked of the first process only; the others follow its answer
        if not worker_alive():
            return True  # the server is gone (killed): stop here, still `running`, to resume when it restarts
        # Cancelled or paused through the API (server/lifecycle.py moved it): stop after this step.
        return store.execute("SELECT status FROM jobs WHERE id = ?", (job_id,))[0]["status"] != "running"

    if resume and run.job()["status"] == "succeeded":  # it finished as it was paused: nothing left to train
        if main:
            record_completion(store, job_id, run)
        return
    try:
        # A python grader never sees the server's data; a model grader asks only the models the job was created with.
        train(config, resume=resume, should_stop=cancelled, job_id=job_id, model_name=_named_base(store, job),
              grader_models=grading["models"] if grading else None, hidden_from_graders=(store.data_dir,))
    except StorageError as error:  # a full or read-only disk: the job waits for space rather than failing
        if main:
            with suppress(IllegalTransition):  # unless its client cancelled or paused it meanwhile
                move(store, job_id, "paused", f"Job paused: the server's disk {error.condition} "
                     f"({error.strerror.lower()}). Free space, then resume the job; it continues from its last "
                     "complete checkpoint", level="error", leaving=("running",))
        return
    except DoesNotFit as error:  # the plan's verdict: what it needs, and what would fit instead
        if main:
            fail(store, job_id, "insufficient_memory", str(error).splitlines()[0], leaving=("running",))
        return
    except Exception as error:  # noqa: BLE001 - whatever ends a job is reported on the job
        if main:
            fail(store, job_id, type(error).__name__, str(error).splitlines()[0] if str(error) else type(error).__name__,
                 leaving=("running",))
        return
    if main and run.job()["status"] == "succeeded":  # else stopped on request: the API has moved the job already
        record_completion(store, job_id, run)


def _named_base(store: Store, job) -> str:
    """The base model as the client named it, which the fine-tune's name starts with: for a job started from a
    fine-tune, the base of the first job in that line (OpenAI names a fine-tune of a fine-tune after the base)."""
    while job["start_job"]:
        rows = store.execute("SELECT model, start_job FROM jobs WHERE id = ?", (job["start_job"],))
        if not rows:
            break
        job = rows[0]
    return job["model"]


def integration_settings(integrations: list[dict], report_to: str) -> dict:
    """OpenAI's `integrations` of a job as training settings: a wandb integration adds W&B to the trackers
    (runs/tracking.py), with its project, entity, run name and tags."""
    settings: dict = {}
    for integration in integrations:
        if integration.get("type") == "wandb":
            wandb = integration["wandb"]
            settings["report_to"] = ",".join(dict.fromkeys([*requested_trackers(report_to), "wandb"]))
            settings.update({f"wandb_{key}": value for key, value in (("project", wandb.get("project")),
                             ("entity", wandb.get("entity")), ("name", wandb.get("name")),
                             ("tags", ",".join(wandb.get("tags") or []) or None)) if value})
    return settings


def record_completion(store: Store, job_id: str, run: RunDir) -> None:
    """The job succeeded: its result files stored and its outcome recorded, unless its client cancelled or
    paused it in the meantime (then that move stands, and a resumed job records its completion then)."""
    record = run.job()
    # The metrics CSV first, as OpenAI's clients expect; then the run itself, for `tunelab train --remote`.
    # Their ids follow from the job's, so a completion interrupted by a crash and done again writes the same
    # two files (each renamed into place) and records them with the job's outcome in one transaction:
    # nothing is stored twice or left without its row.
    results, run_file = result_file_id(job_id, "results"), result_file_id(job_id, "run")
    with atomic_path(store.file_path(results)) as temporary:
        shutil.copyfile(run.metrics_file, temporary)
    pack_run(run.path, store.file_path(run_file))
    now = int(time.time())
    try:
        move(store, job_id, "succeeded", "The job has successfully completed", leaving=("running",),
             columns={"fine_tuned_model": record["fine_tuned_model"], "trained_tokens": record["trained_tokens"],
                      "result_files": json.dumps([results, run_file])},
             also=tuple(("INSERT OR REPLACE INTO files (id, bytes, created_at, filename, purpose, status, project_id) "
                         "SELECT ?, ?, ?, ?, ?, ?, project_id FROM jobs WHERE id = ?",
                         (file_id, store.file_path(file_id).stat().st_size, now, filename, "fine-tune-results",
                          "processed", job_id))
                        for file_id, filename in ((results, f"{job_id}-results.csv"), (run_file, f"{job_id}-run.tar"))))
    except IllegalTransition as moved:  # cancelled as it finished: its result files have no row, so they go
        if moved.current != "succeeded":
            for file_id in (results, run_file):
                store.file_path(file_id).unlink(missing_ok=True)


def result_file_id(job_id: str, kind: str) -> str:
    """The id of a job's result file of `kind`: fixed by the job, in the shape of every other file id."""
    return "file-" + hashlib.sha256(f"{job_id}:{kind}".encode()).hexdigest()[:24]


def worker_alive() -> bool:
    """For a job process: is the worker that started it (directly or through a launcher) still running? The
    worker exits when its server does."""
    pid = int(os.environ.get("TUNELAB_WORKER_PID", "0"))
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def job_command(data_dir: Path, job_id: str, resume: bool, launcher: str | None) -> list[str]:
    """The command that trains one job: this module with `--job`, under the launcher if there is one.
    Whether it resumes is decided here, once: the job's processes must agree on it."""
    arguments = ["-m", "tunelab.server.worker", str(data_dir), "--job", job_id, *(["--resume"] if resume else [])]
    return [*shlex.split(launcher), *arguments] if launcher else [sys.executable, *arguments]


def task_command(data_dir: Path, task_id: str) -> list[str]:
    """The command that runs one evaluation or export (task_worker.py)."""
    return [sys.executable, "-m", task_worker.__name__, str(data_dir), "--task", task_id]


def _tend_tasks(store: Store, data_dir: Path, running: dict, starter: Starter) -> None:
    """Collect a finished task process (one that died fails its task), and start the oldest queued task when
    none is running: one at a time, beside the training jobs."""
    for task_id, process in list(running.items()):
        if process.poll() is None:
            continue
        del running[task_id]
        if process.returncode != 0:
            store.execute("UPDATE tasks SET status = 'failed', finished_at = ?, error = ? WHERE id = ? AND "
                          "status = 'running'", (int(time.time()), json.dumps({
                              "code": "task_process_failed",
                              "message": f"The task's process exited with status {process.returncode}"}), task_id))
    if running:
        return
    rows = store.execute("SELECT id FROM tasks WHERE status IN ('running', 'queued') ORDER BY "
                         "status = 'queued', created_at, rowid LIMIT 1")  # an interrupted one first
    if rows:
        task_id = rows[0]["id"]
        running[task_id] = starter.start(task_command(data_dir, task_id), lambda: task_worker.run_in_process(data_dir, task_id))


def work(data_dir: Path, max_jobs: int = 1, launcher: str | None = None, server: int | None = None) -> None:
    """Validate and start jobs as they come, until the server exits (`server`: its process id, passed
    rather than read here, where it may have exited already; by default this process's parent).

    One worker per data directory: a second one (a server restarted while the old worker is still
    finishing a step) waits for the first to exit.
    """
    server = server or os.getppid()  # the server's death re-parents this process
    lock = open(Path(data_dir) / "worker.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    store = Store(data_dir)
    # Job and task processes are forked from this one once it has imported what they need (prefork.py).
    starter = Starter(dict(os.environ, TUNELAB_WORKER_PID=str(os.getpid())), keep_closed=[lock])
    running: dict = {}  # job id → its process
    tasks: dict = {}
    while os.getppid() == server:
        try:
            _tend_tasks(store, data_dir, tasks, starter)
            _one_round(store, data_dir, running, max_jobs, launcher, starter)
        except sqlite3.OperationalError:  # the database's disk is full (or locked too long): wait, then retry
            time.sleep(POLL_SECONDS)


def _one_round(store: Store, data_dir: Path, running: dict, max_jobs: int, launcher: str | None,
               starter: Starter) -> None:
    """Collect finished job processes, validate or start the next job, or wait a moment."""
    for job_id, process in list(running.items()):
        if process.poll() is None:
            continue
        del running[job_id]
        if process.returncode != 0:  # unless the job had moved on already (cancelled, paused)
            fail(store, job_id, "training_process_failed",
                 f"The training process exited with status {process.returncode} (see the server's output)",
                 leaving=("running",))
    job = next_job(store, set(running))
    if job is not None and job["status"] == "validating_files":
        validate_files(store, job)
    elif job is not None and len(running) < max_jobs:
        if start_job(store, job):
            resume = RunDir(store.run_dir(job["id"])).has_run()  # interrupted, or paused and resumed
            job_id = job["id"]
            running[job_id] = starter.start(job_command(data_dir, job_id, resume, launcher),
                                            lambda: train_in_process(data_dir, job_id, resume), launched=bool(launcher))
    else:
        time.sleep(POLL_SECONDS)


def train_in_process(data_dir: Path, job_id: str, resume: bool) -> None:
    """A job's process: started as `--job`, or forked from the worker."""
    configure_process()
    keep_freed_memory()  # this process trains: reuse freed activations rather than fault them back in
    run_job(Store(data_dir), job_id, resume)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tunelab.server.worker")
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--job", help="train this one job and exit")
    parser.add_argument("--resume", action="store_true", help="with --job: from its last complete checkpoint")
    parser.add_argument("--max-jobs", type=int, default=1)
    parser.add_argument("--launcher")
    parser.add_argument("--server-pid", type=int, help="the server's process: the worker leaves when it has")
    options = parser.parse_args()
    configure_process()
    if options.job:
        train_in_process(options.data_dir, options.job, options.resume)
    else:
        work(options.data_dir, options.max_jobs, options.launcher, options.server_pid)


if __name__ == "__main__":
    main()
