"""`tunelab serve`: OpenAI's fine-tuning API on this machine (files, jobs, models, chat completions).

    tunelab serve --alias gpt-4o-mini-2024-07-18=default
    OPENAI_BASE_URL=http://127.0.0.1:8000/v1 python your_openai_code.py
"""

from __future__ import annotations

import os
import shlex
import shutil
import sqlite3
from pathlib import Path
from typing import Literal, Optional

import typer

from tunelab.cli.common import examples, fail
from tunelab.cli.console import ConsoleEvents, console
from tunelab.core.events import Events

EXAMPLES = examples("tunelab serve",
                    "tunelab serve --alias gpt-4o-mini-2024-07-18=default",
                    "tunelab serve --host 0.0.0.0 --api-key \"$KEY\" --data-dir /srv/tunelab")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve(
    host: str = typer.Option("127.0.0.1", "--host", metavar="ADDRESS", help="Address to listen on; other than loopback only with --api-key."),
    port: int = typer.Option(8000, "--port", "-p", metavar="N", help="Port to listen on."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", metavar="DIR", help="Where the database, uploads and runs live (default $TUNELAB_HOME or ~/.local/share/tunelab)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", metavar="KEY", envvar="TUNELAB_API_KEY", show_envvar=True, help="Bearer key required on every route but /health."),
    max_upload_mb: float = typer.Option(512, "--max-upload-mb", metavar="X", help="Largest upload accepted; larger ones get 413."),
    alias: list[str] = typer.Option([], "--alias", metavar="NAME=MODEL", help="Answer to model NAME (e.g. gpt-4o-mini-2024-07-18) with a local base model ('default', a directory, a .gguf); fine-tunes of it are named after NAME, as OpenAI names them. Repeatable."),
    max_jobs: int = typer.Option(1, "--max-jobs", min=1, metavar="N", help="Jobs trained at the same time."),
    launcher: Optional[str] = typer.Option(None, "--launcher", metavar="COMMAND", help="Start each job under this command, e.g. \"accelerate launch --multi_gpu --num_processes 8\" to train on every GPU."),
    job_preset: list[str] = typer.Option([], "--job-preset", metavar="BASE=PRESET", help="Jobs on base model BASE (a name the server answers to) train with PRESET's settings (a bundled preset or a YAML file) unless the request's `tunelab` extension says otherwise. Repeatable."),
    max_models: int = typer.Option(2, "--max-models", min=1, metavar="N", help="Models kept loaded for chat; a base model counts once, however many of its LoRA fine-tunes it serves."),
    dtype: Literal["auto", "fp32", "bf16"] = typer.Option("auto", "--dtype", help="Number format of the models answering chat: auto (bf16 on a CPU or GPU with bf16 units, else fp32), fp32 (a batched greedy reply is then the same as one alone) or bf16."),
) -> None:
    """Serve OpenAI's fine-tuning API on this machine: files, jobs, models and chat completions. Code
    written for OpenAI runs unchanged with OPENAI_BASE_URL=http://HOST:PORT/v1."""
    import uvicorn

    from tunelab.core.files import OutputError, check_output_directory
    from tunelab.server.app import ServerSettings, create_app
    from tunelab.server.store import NewerDatabase
    from tunelab.server.supervisor import WorkerSupervisor

    if host not in LOOPBACK and not api_key:
        fail(f"--host {host}: listening beyond this machine needs --api-key (or TUNELAB_API_KEY)")
    if launcher:
        try:
            launch_program = shlex.split(launcher)[0]
        except (ValueError, IndexError):
            fail(f"--launcher {launcher!r}: not a command line")
        if not shutil.which(launch_program):
            fail(f"--launcher {launcher!r}: {launch_program} is not a program on this machine's PATH")
    aliases = {}
    for entry in alias:
        name, _, spec = entry.partition("=")
        if not name or not spec:
            fail(f"--alias {entry!r}: expected NAME=MODEL, e.g. gpt-4o-mini-2024-07-18=default", 2)
        aliases[name] = spec
    from tunelab.server.job_settings import load_job_presets

    try:
        job_presets = load_job_presets(job_preset, aliases)
    except ValueError as error:
        fail(str(error), 2)
    home = data_dir or Path(os.environ.get("TUNELAB_HOME") or Path.home() / ".local" / "share" / "tunelab")
    try:
        check_output_directory(Path(home))  # read-only, not ours, or a file: said before the database is opened
        application = create_app(ServerSettings(Path(home), api_key or None, max_upload_mb, aliases, dtype,
                                                     job_presets, max_models))
    except (NewerDatabase, OutputError) as error:
        fail(str(error))
    except (OSError, sqlite3.Error) as error:  # a data directory on a full disk
        fail(f"{home}: the server cannot keep its database and files here ({error}); give a --data-dir it can write")
    console.print(f"tunelab serve: http://{host}:{port}/v1 · data in {home}"
                  + (" · key required" if api_key else " · no key (loopback only)")
                  + " · files, fine-tuning jobs, models, chat completions", markup=False, soft_wrap=True)
    worker = WorkerSupervisor(Path(home), max_jobs, launcher, Events(ConsoleEvents()))
    try:
        uvicorn.run(application, host=host, port=port, log_level="warning")
    finally:
        worker.stop()
