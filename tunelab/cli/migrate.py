"""`tunelab migrate openai`: list OpenAI fine-tunes with their shutdown dates, and move the chosen ones to an
open model — download their data, train, evaluate against the fine-tune, report.

    tunelab migrate openai                      # the jobs, with shutdown dates
    tunelab migrate openai --job ftjob-… --to qwen2.5-7b-qlora
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.common import CONTEXT, examples, fail, out, say
from tunelab.cli.console import ConsoleEvents, console
from tunelab.cli.jobs import id_table
from tunelab.core.events import Events

migrate_app = typer.Typer(help="Move fine-tunes from a hosted service to an open model you run.", no_args_is_help=True,
                          context_settings=CONTEXT, rich_markup_mode=None,
                          epilog=examples("tunelab migrate openai", "tunelab migrate openai --job ftjob-abc123"))


@migrate_app.command("openai", epilog=examples("tunelab migrate openai",
                                               "tunelab migrate openai --job ftjob-abc123 --to qwen2.5-7b-qlora",
                                               "tunelab migrate openai --all --remote http://gpu-box:8000/v1"))
def migrate_openai(
    job: list[str] = typer.Option([], "--job", metavar="ID", help="An OpenAI fine-tuning job to migrate (repeatable); without --job or --all, the jobs are listed."),
    every: bool = typer.Option(False, "--all", help="Migrate every succeeded job."),
    to: Optional[str] = typer.Option(None, "--to", metavar="MODEL", help="The open model to train: a preset (its settings too), a model id or a directory (default: the largest permissively licensed preset that fits this machine; see `tunelab presets list`)."),
    remote: Optional[str] = typer.Option(None, "--remote", metavar="URL", help="Train on this `tunelab serve` instead of here."),
    api_key: Optional[str] = typer.Option(None, "--api-key", metavar="KEY", help="Key for --remote."),
    out_dir: Path = typer.Option(Path("migration"), "--out", "-o", metavar="DIR", help="Where each migration keeps its files, run, evaluation and report; a rerun continues there."),
    as_json: bool = typer.Option(False, "--json", help="Print the jobs (or the migrations' report paths) as JSON."),
) -> None:
    """List OpenAI fine-tunes with their shutdown dates, and migrate the chosen ones: download their data,
    train an open model, evaluate it against the fine-tune, write a report. OpenAI is reached with
    OPENAI_API_KEY (and OPENAI_BASE_URL, if set)."""
    from tunelab.models.precision import best_device
    from tunelab.remote.jobs import RemoteError, connect
    from tunelab.remote.migrate import NEW_JOBS_CLOSED, Migration, list_jobs, migrate

    try:
        client = connect()
        jobs = list_jobs(client)
    except RemoteError as error:
        fail(str(error))
    chosen = [j["id"] for j in jobs if j["status"] == "succeeded"] if every else job
    if not chosen:
        if as_json:
            print(json.dumps({"object": "list", "data": jobs, "new_jobs_closed": NEW_JOBS_CLOSED}, indent=2))
            return
        table = id_table("job", "status", "base model", "fine-tune", "shuts down")
        for found in jobs:
            table.add_row(found["id"], found["status"], found["model"], found.get("fine_tuned_model") or "",
                          found["shutdown"] or "not announced")
        out.print(table if jobs else "no fine-tuning jobs on this account")
        say(f"OpenAI creates no new fine-tuning jobs from {NEW_JOBS_CLOSED}. Migrate one: "
            "tunelab migrate openai --job ID [--to MODEL]")
        return
    if to is None:
        import torch

        from tunelab.remote.migrate import suggest_open_model

        gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if best_device() == "cuda" else None
        base = next((j["model"] for j in jobs if j["id"] == chosen[0]), "the OpenAI model")
        suggestion = suggest_open_model(base, best_device(), gpu_gib)
        to = suggestion.preset.name
        console.print(f"--to not given: {suggestion.reason}", soft_wrap=True, markup=False)
    reports = []
    for job_id in chosen:
        try:
            report = migrate(client, Migration(job_id, to, out_dir, remote, api_key), Events(ConsoleEvents(progress=not as_json)))
        except (RemoteError, ValueError, OSError) as error:
            fail(f"{job_id}: {error}")
        reports.append({"job": job_id, "report": str(report)})
        if not as_json:
            say(report.read_text(encoding="utf-8"))
            say(f"REPORT: {report}")
    if as_json:
        print(json.dumps(reports, indent=2))
