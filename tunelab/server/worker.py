"""The worker: the process that runs fine-tuning jobs, one at a time, never inside a request handler.

    python -m tunelab.server.worker DATA_DIR        # `tunelab serve` starts it and stops it

It takes the oldest job that is waiting, validates its files (the data toolkit's reader; fewer than 10
examples fails the job with OpenAI's `invalid_n_examples`), then trains it with the same recipe as
`tunelab train` into the job's run directory, asking the database after every step whether the job was
cancelled. The outcome (fine-tuned model name, trained tokens, the metrics CSV as a `fine-tune-results`
file, or the error) is written back to the database, where the API reads it.

A job found `running` when the worker starts was interrupted (the server was stopped or killed): it
resumes from its last complete checkpoint, exactly as `tunelab train --resume` does.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import time
from pathlib import Path

from tunelab.conversation.problems import DataError
from tunelab.conversation.reader import read_conversations
from tunelab.core.process import configure_process, keep_freed_memory
from tunelab.core.settings import TrainConfig
from tunelab.runs.rundir import RunDir
from tunelab.server.store import Store, new_id

MIN_EXAMPLES = 10  # OpenAI's minimum for a training file
POLL_SECONDS = 0.5


def next_job(store: Store):
    """An interrupted job first (it holds a run directory), then the oldest waiting one."""
    for status in ("running", "validating_files", "queued"):
        rows = store.execute("SELECT * FROM jobs WHERE status = ? ORDER BY created_at, rowid LIMIT 1", (status,))
        if rows:
            return rows[0]
    return None


def fail(store: Store, job_id: str, code: str, message: str, param: str | None = None) -> None:
    store.execute("UPDATE jobs SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
                  (int(time.time()), json.dumps({"code": code, "message": message, "param": param}), job_id))
    store.job_event(job_id, f"Job failed: {message}", level="error")


def validate_files(store: Store, job) -> bool:
    """Check the job's files; fail it with OpenAI's error if one cannot be trained on."""
    store.job_event(job["id"], "Validating training file: " + job["training_file"])
    for name in ("training_file", "validation_file"):
        file_id = job[name]
        if file_id is None:
            continue
        try:
            examples = len(read_conversations(store.file_path(file_id)))
        except (DataError, FileNotFoundError) as error:
            fail(store, job["id"], f"invalid_{name}", f"{name.replace('_', ' ').capitalize()} {file_id} cannot be "
                 f"used: {str(error).replace(str(store.file_path(file_id)), file_id)}", param=name)
            return False
        if name == "training_file" and examples < MIN_EXAMPLES:
            fail(store, job["id"], "invalid_n_examples", f"Training file has {examples} example(s), but must have "
                 f"at least {MIN_EXAMPLES} examples", param="training_file")
            return False
    store.execute("UPDATE jobs SET status = 'queued' WHERE id = ? AND status = 'validating_files'", (job["id"],))
    store.job_event(job["id"], "Files validated, moving job to queued state")
    return True


def run_job(store: Store, job) -> None:
    """Train the job (or resume it), then record how it ended."""
    from tunelab.train.local import train

    job_id = job["id"]
    run = RunDir(store.run_dir(job_id))
    resume = run.has_run()  # interrupted (status running) or paused and resumed (queued again)
    if not resume and run.path.exists():
        shutil.rmtree(run.path)  # interrupted before training wrote anything: start it again
    if job["status"] == "queued":
        store.execute("UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?) "
                      "WHERE id = ? AND status = 'queued'", (int(time.time()), job_id))
        if store.execute("SELECT status FROM jobs WHERE id = ?", (job_id,))[0]["status"] != "running":
            return  # cancelled or paused while queued
    hyperparameters = json.loads(job["hyperparameters"])
    config = TrainConfig.from_sources(
        data=str(store.file_path(job["training_file"])), model=job["base_model"], out=str(run.path),
        validation=str(store.file_path(job["validation_file"])) if job["validation_file"] else None,
        suffix=job["suffix"], seed=job["seed"], **hyperparameters)

    def cancelled(_step: int) -> bool:
        if not server_alive():
            sys.exit(0)  # the server is gone (killed): stop here; the job resumes when it is started again
        flags = store.execute("SELECT cancel_requested, pause_requested FROM jobs WHERE id = ?", (job_id,))[0]
        return bool(flags["cancel_requested"] or flags["pause_requested"])

    try:
        train(config, resume=resume, should_stop=cancelled, job_id=job_id)
    except Exception as error:  # noqa: BLE001 - whatever ends a job is reported on the job
        fail(store, job_id, type(error).__name__, str(error).splitlines()[0] if str(error) else type(error).__name__)
        return
    record = run.job()
    if record["status"] == "cancelled":  # stopped on request: cancelled, or paused (the API set its status)
        if store.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,))[0][0]:
            store.execute("UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ?",
                          (int(time.time()), job_id))
        return
    results = new_id("file-")
    shutil.copyfile(run.metrics_file, store.file_path(results))
    store.execute("INSERT INTO files (id, bytes, created_at, filename, purpose, status) VALUES (?, ?, ?, ?, ?, ?)",
                  (results, run.metrics_file.stat().st_size, int(time.time()), f"{job_id}-results.csv",
                   "fine-tune-results", "processed"))
    store.execute("UPDATE jobs SET status = 'succeeded', finished_at = ?, fine_tuned_model = ?, trained_tokens = ?, "
                  "result_files = ? WHERE id = ?", (int(time.time()), record["fine_tuned_model"],
                                                     record["trained_tokens"], json.dumps([results]), job_id))


_SERVER_PID = os.getppid()


def server_alive() -> bool:
    """Is the `tunelab serve` that started this worker still running? (Its death re-parents us.)"""
    return os.getppid() == _SERVER_PID


def work(data_dir: Path, once: bool = False) -> None:
    """Run jobs as they come (`once`: until none is waiting, for tests).

    One worker per data directory: a second one (a server restarted while the old worker is still
    finishing a step) waits for the first to exit.
    """
    lock = open(Path(data_dir) / "worker.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    store = Store(data_dir)
    while once or server_alive():
        job = next_job(store)
        if job is None:
            if once:
                return
            time.sleep(POLL_SECONDS)
            continue
        if job["status"] == "validating_files":
            validate_files(store, job)
        else:
            run_job(store, job)


def main() -> None:
    configure_process()
    keep_freed_memory()  # this process trains: reuse freed activations rather than fault them back in
    work(Path(sys.argv[1]))


if __name__ == "__main__":
    main()
