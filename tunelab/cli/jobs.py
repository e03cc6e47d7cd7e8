"""`tunelab jobs`: fine-tuning jobs wherever they run — local runs, a `tunelab serve` (--remote URL) or
OpenAI (--openai) — through one set of commands.

    tunelab jobs list [--remote URL | --openai]
    tunelab jobs show ftjob-…   ·   tunelab jobs events ftjob-…   ·   tunelab jobs watch ftjob-…
    tunelab jobs cancel|pause|resume ftjob-… --remote URL
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from tunelab.cli.common import CONTEXT, examples, fail, out, say
from tunelab.cli.console import ConsoleEvents
from tunelab.core.events import Events
from tunelab.runs.rundir import RunDir

jobs_app = typer.Typer(help="Fine-tuning jobs, wherever they run: local runs, a `tunelab serve` (--remote URL) "
                            "or OpenAI (--openai), through one set of commands.", no_args_is_help=True,
                       context_settings=CONTEXT, rich_markup_mode=None,
                       epilog=examples("tunelab jobs list", "tunelab jobs watch ftjob-abc123 --remote http://gpu-box:8000/v1"))
REMOTE_OPTION = typer.Option(None, "--remote", metavar="URL", help="A server with OpenAI's API (default OPENAI_BASE_URL); without it or --openai, local runs.")
OPENAI_OPTION = typer.Option(False, "--openai", help="OpenAI itself (needs OPENAI_API_KEY).")
API_KEY_OPTION = typer.Option(None, "--api-key", metavar="KEY", help="Key for --remote or --openai (default OPENAI_API_KEY).")
JSON_OPTION = typer.Option(False, "--json", help="Print OpenAI's JSON shapes on stdout.")


def _remote_of(remote: Optional[str], use_openai: bool) -> Optional[str]:
    """The remote a jobs command talks to: --openai, --remote URL, OPENAI_BASE_URL, or none (local runs)."""
    if use_openai and remote:
        fail("--openai and --remote name two different servers; give one", 2)
    return "openai" if use_openai else remote or os.environ.get("OPENAI_BASE_URL") or None


def id_table(*headers: str):
    """A table whose cells are never cut short (ids and model names are copied from it): the first column,
    the id (30 characters for a job), stays whole on one line; long names in the others wrap."""
    from rich.table import Table

    table = Table(box=None)
    table.add_column(headers[0], no_wrap=True, min_width=30)
    for header in headers[1:]:
        table.add_column(header, overflow="fold")
    return table


def _client(remote: Optional[str], api_key: Optional[str]):
    from tunelab.remote.jobs import RemoteError, connect

    try:
        return connect(remote, api_key)
    except RemoteError as error:
        fail(str(error))


def _asking(call, *args):
    """A call of remote/jobs.py, its RemoteError as this command's error."""
    from tunelab.remote.jobs import RemoteError

    try:
        return call(*args)
    except RemoteError as error:
        fail(str(error))


@jobs_app.command("list", short_help="Local runs and a server's jobs, newest first.", epilog=examples("tunelab jobs list", "tunelab jobs list --remote http://gpu-box:8000/v1",
                                          "tunelab jobs list --openai --json"))
def jobs_list(remote: Optional[str] = REMOTE_OPTION, use_openai: bool = OPENAI_OPTION,
              api_key: Optional[str] = API_KEY_OPTION,
              runs: Path = typer.Option(Path("runs"), "--runs", metavar="DIR", help="Where local runs live."),
              as_json: bool = JSON_OPTION) -> None:
    """Jobs, newest first, in one table: the local runs under --runs and, with --remote or --openai, the
    server's jobs. A remote job fetched into a local run is one row, with its run directory."""
    from tunelab.remote.jobs import all_jobs

    remote = _remote_of(remote, use_openai)
    jobs = _asking(all_jobs, runs, _client(remote, api_key) if remote else None)
    if as_json:  # OpenAI's job objects, with `where` (here, or the server) and `run` (a local copy) added
        print(json.dumps({"object": "list", "data": jobs}, indent=2))
        return
    if not jobs:
        say("no jobs" + ("" if remote else f" under {runs}/ (for a server's: --remote URL or --openai)"))
        return
    with_runs = any(job.get("run") for job in jobs)
    table = id_table("job", "where", "status", "model", *(["local run"] if with_runs else []))
    for job in jobs:
        model = job.get("fine_tuned_model") or f"{job.get('model') or ''} (base)"
        table.add_row(job["id"], job["where"], job["status"], model, *([job.get("run") or ""] if with_runs else []))
    out.print(table)


def _local_run(job_id: str, remote: Optional[str]) -> Optional[RunDir]:
    """The local run a job id names (a run directory, or runs/ID), unless a remote was given."""
    if remote:
        return None
    found = next((RunDir(p) for p in (Path(job_id), Path("runs") / job_id) if RunDir(p).has_run()), None)
    if found is None and not os.environ.get("OPENAI_API_KEY"):
        fail(f"{job_id}: no local run by that name (a run directory, or runs/{job_id}); for a remote job pass "
             f"--remote URL, or set OPENAI_API_KEY to ask OpenAI (--openai)")
    return found  # None: not a local run, and OPENAI_API_KEY is set, so OpenAI is asked


JOB_ARGUMENT = typer.Argument(..., metavar="JOB", help="A job id, or a local run directory.")


@jobs_app.command("show", short_help="One job as OpenAI's JSON.", epilog=examples("tunelab jobs show runs/ftjob-abc123",
                                          "tunelab jobs show ftjob-abc123 --remote http://gpu-box:8000/v1"))
def jobs_show(job_id: str = JOB_ARGUMENT, remote: Optional[str] = REMOTE_OPTION, use_openai: bool = OPENAI_OPTION,
              api_key: Optional[str] = API_KEY_OPTION) -> None:
    """One job as OpenAI's JSON (a local run's job record, or the server's job)."""
    from tunelab.remote.jobs import get_job

    remote = _remote_of(remote, use_openai)
    run = _local_run(job_id, remote)
    if run is not None:
        print(json.dumps(run.job(), indent=2))
        return
    print(json.dumps(_asking(get_job, _client(remote, api_key), job_id).model_dump(), indent=2))


@jobs_app.command("events", epilog=examples("tunelab jobs events runs/ftjob-abc123",
                                            "tunelab jobs events ftjob-abc123 --openai --json"))
def jobs_events(job_id: str = JOB_ARGUMENT, remote: Optional[str] = REMOTE_OPTION, use_openai: bool = OPENAI_OPTION,
                api_key: Optional[str] = API_KEY_OPTION, as_json: bool = JSON_OPTION) -> None:
    """A job's events, oldest first."""
    from tunelab.remote.jobs import job_events

    remote = _remote_of(remote, use_openai)
    run = _local_run(job_id, remote)
    if run is not None:
        events = run.events()
    else:
        events = [event.model_dump() for event in _asking(job_events, _client(remote, api_key), job_id)]
    if as_json:
        print(json.dumps({"object": "list", "data": events}, indent=2))
        return
    for event in events:
        out.print(f"{event.get('created_at', '')} {event.get('level', 'info'):7} {escape(event.get('message', ''))}")


def _needs_remote(remote: Optional[str], what: str) -> str:
    """A server for commands that only a server's job has: the one given, else OpenAI if a key is set."""
    if not remote and not os.environ.get("OPENAI_API_KEY"):
        fail(f"{what} a job on a server: pass --remote URL, or set OPENAI_API_KEY for OpenAI (a local run "
             "trains in the foreground: Ctrl-C stops it, `tunelab train --resume RUN` continues it)")
    return remote or "openai"


@jobs_app.command("watch", short_help="Follow a job until it ends.", epilog=examples("tunelab jobs watch ftjob-abc123 --remote http://gpu-box:8000/v1"))
def jobs_watch(job_id: str = typer.Argument(..., metavar="JOB", help="A job id on the server."),
               remote: Optional[str] = REMOTE_OPTION, use_openai: bool = OPENAI_OPTION,
               api_key: Optional[str] = API_KEY_OPTION, as_json: bool = JSON_OPTION) -> None:
    """Follow a job until it ends: step, losses and the server's estimated finish (Ctrl-C stops watching,
    not the job)."""
    from tunelab.remote.jobs import job_error_text, watch

    client = _client(_needs_remote(_remote_of(remote, use_openai), "watch follows"), api_key)
    try:
        job = _asking(watch, client, job_id, Events(ConsoleEvents(progress=not as_json)))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if as_json:
        print(json.dumps(job.model_dump(), indent=2))
        return
    say(f"{job.id}: {job.status}" + (f" → {job.fine_tuned_model}" if job.fine_tuned_model else "")
        + (f" ({job_error_text(job)})" if job.error else ""))


ACTION_HELP = {"cancel": "Cancel a job (a training job stops after its current step).",
               "pause": "Pause a running job (it keeps its checkpoint).", "resume": "Resume a paused job."}


def _job_action(action: str):
    def command(job_id: str = typer.Argument(..., metavar="JOB", help="A job id on the server."),
                remote: Optional[str] = REMOTE_OPTION, use_openai: bool = OPENAI_OPTION,
                api_key: Optional[str] = API_KEY_OPTION, as_json: bool = JSON_OPTION) -> None:
        from tunelab.remote.jobs import act_on_job

        client = _client(_needs_remote(_remote_of(remote, use_openai), f"{action} acts on"), api_key)
        job = _asking(act_on_job, client, job_id, action)
        if as_json:
            print(json.dumps(job.model_dump(), indent=2))
        elif action == "cancel" and job.status != "cancelled":  # a training job stops after its current step
            say(f"{job.id}: cancellation requested; it stops after the current step (now {job.status})")
        else:
            say(f"{job.id}: {job.status}")
    command.__doc__ = ACTION_HELP[action]
    return command


for _action in ("cancel", "pause", "resume"):
    jobs_app.command(_action, epilog=examples(f"tunelab jobs {_action} ftjob-abc123 --remote http://gpu-box:8000/v1"))(
        _job_action(_action))
