"""One evaluation or export of the server (tasks.py), run in a process of its own, as the worker starts it:

    python -m tunelab.server.task_worker DATA_DIR --task ID

It does what `tunelab eval` and `tunelab export` do (eval/run.py, export/run.py) into the task's folder
(`tasks/<id>/out`), writes their events — progress included — to `tasks/<id>/events.jsonl` for the API to
report, and records the outcome: `succeeded` with a summary of the result, or `failed` with the error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
import time
from pathlib import Path

from tunelab.core.events import Event, Events
from tunelab.core.files import atomic_path
from tunelab.core.process import configure_process
from tunelab.server.store import Store


class FileSink:
    """Events as JSON lines in a file, flushed one by one: the API reads the task's progress from it."""

    def __init__(self, path):
        self.file = open(path, "a", encoding="utf-8")
        self.last_progress = 0.0

    def emit(self, event: Event) -> None:
        if event.kind == "progress" and not event.data.get("finished"):
            now = time.monotonic()
            if now - self.last_progress < 0.25:  # a bar may move per token; the page needs a few a second
                return
            self.last_progress = now
        self.file.write(json.dumps({"kind": event.kind, "text": event.text, "data": event.data,
                                    "created_at": time.time()}, default=str) + "\n")
        self.file.flush()


def run_task(store: Store, task_id: str) -> None:
    row = store.execute("SELECT * FROM tasks WHERE id = ?", (task_id,))[0]
    folder = store.task_dir(task_id)
    shutil.rmtree(folder, ignore_errors=True)  # a task interrupted by a restart starts again from nothing
    folder.mkdir(parents=True)
    store.execute("UPDATE tasks SET status = 'running', started_at = ? WHERE id = ?", (int(time.time()), task_id))
    request = json.loads(row["request"])
    events = Events(FileSink(folder / "events.jsonl"))
    try:
        result = (_evaluate if row["kind"] == "evaluation" else _export)(store, request, folder, events)
    except Exception as error:  # noqa: BLE001 - whatever ends a task is reported on the task
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        store.execute("UPDATE tasks SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
                      (int(time.time()), json.dumps({"code": type(error).__name__, "message": message}), task_id))
        return
    store.execute("UPDATE tasks SET status = 'succeeded', finished_at = ?, result = ? WHERE id = ?",
                  (int(time.time()), json.dumps(result), task_id))


def _evaluate(store: Store, request: dict, folder, events: Events) -> dict:
    from tunelab.eval.run import EvalConfig, evaluate

    resolved = request["resolved"]
    model = resolved.get("run") or resolved["spec"]
    labels = {model: request["model"], str(store.file_path(request["file"])): f"{request['filename']} ({request['file']})"}
    if resolved.get("run"):  # the job's training file gives the few-shot examples
        for job in store.execute("SELECT j.training_file, f.filename FROM jobs j LEFT JOIN files f ON f.id = j.training_file "
                                 "WHERE j.id = ?", (Path(resolved["run"]).name,)):
            labels[str(store.file_path(job["training_file"]))] = f"{job['filename']} ({job['training_file']})"
    out = evaluate(EvalConfig(model=model, data=str(store.file_path(request["file"])), out=str(folder / "out"),
                              limit=request.get("limit"), max_new_tokens=request.get("max_new_tokens"),
                              forgetting=request.get("forgetting", "auto"), labels=labels), events)
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    return {"verdict": results["verdict"], "examples_count": results["examples_count"],
            "scorers": [{key: scorer[key] for key in ("name", "label", "fraction", "higher_is_better")}
                        for scorer in results["scorers"]],
            "systems": {name: {"model": system.get("model"), "scores": system["scores"]}
                        for name, system in results["systems"].items()},
            "seconds": results["seconds"]}


def _export(store: Store, request: dict, folder, events: Events) -> dict:
    from tunelab.export.run import ExportConfig, export

    run = request["resolved"]["run"]
    name = request["model"].replace(":", "-").strip("-")
    name += ".gguf" if request["format"] == "gguf" else f"-{request['format']}"
    result = export(ExportConfig(run=run, format=request["format"], dtype=request.get("dtype"),
                                 out=str(folder / "out" / name)), events)
    with atomic_path(folder / "download") as temporary:  # one file to download: the GGUF, or a tar of the folder
        if result.path.is_dir():
            with tarfile.open(temporary, "w") as archive:
                archive.add(result.path, arcname=result.path.name)
            download_name = f"{result.path.name}.tar"
        else:
            shutil.copyfile(result.path, temporary)
            download_name = result.path.name
    return {"format": result.format, "number_format": result.number_format, "download_name": download_name,
            "bytes": (folder / "download").stat().st_size, "prompts_source": result.prompts_source,
            "checks": [check.summary() for check in result.checks], "notes": result.notes}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tunelab.server.task_worker")
    parser.add_argument("data_dir")
    parser.add_argument("--task", required=True)
    options = parser.parse_args()
    run_in_process(options.data_dir, options.task)


def run_in_process(data_dir, task_id: str) -> None:
    """A task's process: started as `--task`, or forked from the worker (prefork.py)."""
    configure_process()
    run_task(Store(data_dir), task_id)


if __name__ == "__main__":
    main()

