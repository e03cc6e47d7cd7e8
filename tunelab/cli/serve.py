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
                    "tunelab serve --host 0.0.0.0 --tls-cert cert.pem --tls-key key.pem")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
DATA_DIR_OPTION = typer.Option(None, "--data-dir", metavar="DIR", help="Where the database, uploads and runs live (default $TUNELAB_HOME or ~/.local/share/tunelab).")


def data_home(data_dir: Optional[Path]) -> Path:
    """The server's data directory: the one given, else $TUNELAB_HOME, else ~/.local/share/tunelab."""
    return Path(data_dir or os.environ.get("TUNELAB_HOME") or Path.home() / ".local" / "share" / "tunelab")


def serve(
    host: str = typer.Option("127.0.0.1", "--host", metavar="ADDRESS", help="Address to listen on; other than loopback only with a key (--api-key or project keys) and TLS (--tls-cert) or --insecure-http."),
    port: int = typer.Option(8000, "--port", "-p", metavar="N", help="Port to listen on."),
    data_dir: Optional[Path] = DATA_DIR_OPTION,
    api_key: Optional[str] = typer.Option(None, "--api-key", metavar="KEY", envvar="TUNELAB_API_KEY", show_envvar=True, help="A key for the default project (what a server held before projects). Project keys: tunelab keys create."),
    admin_key: Optional[str] = typer.Option(None, "--admin-key", metavar="KEY", envvar="TUNELAB_ADMIN_KEY", show_envvar=True, help="Opens the admin routes (/v1/organization/…: projects, keys, audit log)."),
    tls_cert: Optional[Path] = typer.Option(None, "--tls-cert", metavar="FILE", help="Serve HTTPS with this certificate (PEM), with --tls-key."),
    tls_key: Optional[Path] = typer.Option(None, "--tls-key", metavar="FILE", help="The certificate's private key (PEM)."),
    insecure_http: bool = typer.Option(False, "--insecure-http", help="Listen beyond loopback over plain HTTP (behind a TLS-terminating proxy, say)."),
    project_max_jobs: Optional[int] = typer.Option(None, "--project-max-jobs", min=1, metavar="N", help="Default limit of each project's unfinished jobs (429 beyond it)."),
    project_max_storage_gb: Optional[float] = typer.Option(None, "--project-max-storage-gb", min=0, metavar="X", help="Default limit of each project's stored files, in GiB (507 beyond it)."),
    requests_per_minute: Optional[int] = typer.Option(None, "--requests-per-minute", min=1, metavar="N", help="Default limit of requests per minute per key (429 beyond it)."),
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
    from tunelab.server.projects import Limits, keys_in_use
    from tunelab.server.store import NewerDatabase, Store
    from tunelab.server.supervisor import WorkerSupervisor

    if (tls_cert is None) != (tls_key is None):
        fail("--tls-cert and --tls-key go together: the certificate and its private key", 2)
    for path in (tls_cert, tls_key):
        if path is not None and not path.is_file():
            fail(f"{path}: no such file (--tls-cert/--tls-key take PEM files)")
    exposed = host not in LOOPBACK
    if exposed and not tls_cert and not insecure_http:
        fail(f"--host {host}: listening beyond this machine sends keys over the network; give --tls-cert and "
             "--tls-key, or put a TLS proxy in front and say --insecure-http (docs: the server's page)")
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
    home = data_home(data_dir)
    limits = Limits(project_max_jobs, None if project_max_storage_gb is None else int(project_max_storage_gb * 2**30),
                    requests_per_minute)
    try:
        check_output_directory(Path(home))  # read-only, not ours, or a file: said before the database is opened
        if exposed and not api_key and not ((home / "tunelab.db").is_file() and keys_in_use(Store(home))):
            fail(f"--host {host}: listening beyond this machine needs keys: --api-key (or TUNELAB_API_KEY), or "
                 "project keys (tunelab keys create)")
        application = create_app(ServerSettings(Path(home), api_key or None, max_upload_mb, aliases, dtype,
                                                     job_presets, max_models, admin_key or None, limits))
    except (NewerDatabase, OutputError) as error:
        fail(str(error))
    except (OSError, sqlite3.Error) as error:  # a data directory on a full disk
        fail(f"{home}: the server cannot keep its database and files here ({error}); give a --data-dir it can write")
    keys = "key required" if api_key or keys_in_use(application.store) else "no key (loopback only)"
    console.print(f"tunelab serve: {'https' if tls_cert else 'http'}://{host}:{port}/v1 · data in {home} · {keys}"
                  + (" · admin routes open to the admin key" if admin_key else "")
                  + " · files, fine-tuning jobs, models, chat completions"
                  + f" · dashboard at {'https' if tls_cert else 'http'}://{host}:{port}/", markup=False, soft_wrap=True)
    worker = WorkerSupervisor(Path(home), max_jobs, launcher, Events(ConsoleEvents()))
    try:
        # Open event streams (the dashboard's) end after a few seconds of shutting down, not when their pages close.
        uvicorn.run(application, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3,
                    ssl_certfile=str(tls_cert) if tls_cert else None, ssl_keyfile=str(tls_key) if tls_key else None)
    finally:
        worker.stop()
