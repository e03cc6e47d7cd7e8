"""The `tunelab` command: the root command and its groups. Each command lives in a module of its own (one per
command or group, beside this file), parses its arguments, calls one library function and draws its events.

    tunelab demo
    tunelab advise --data train.jsonl
    tunelab data split all.jsonl --out data/
    tunelab train --data data/train.jsonl --validation-split 0.1
    tunelab eval runs/ftjob-… --data data/test.jsonl
    tunelab chat runs/ftjob-… --once "My order hasn't arrived."
    tunelab export runs/ftjob-… --format gguf
    tunelab serve
"""

from __future__ import annotations

import os
import sys

import typer
from rich.markup import escape

from tunelab import __version__
from tunelab.cli import advise, chat, data, demo, env, evaluate, export, jobs, migrate, presets, projects, serve, train
from tunelab.cli.common import CONTEXT, EXIT_BUG, examples, first_line
from tunelab.cli.console import console
from tunelab.core.process import configure_process

app = typer.Typer(
    help="Fine-tune language models: decide whether to, prepare chat data, train (LoRA, QLoRA or full) here or "
         "on a server, evaluate against the base model and prompting, then chat, serve and export. "
         "Exit codes: 0 done, 1 bad input or a failed check, 2 usage error, 3 a bug in tunelab, 130 interrupted.",
    no_args_is_help=True,
    context_settings=CONTEXT,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    epilog=examples("tunelab demo", "tunelab data validate train.jsonl",
                    "tunelab train --data data/train.jsonl --validation-split 0.1",
                    "tunelab eval runs/ftjob-abc123 --data data/test.jsonl"),
)


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """tunelab."""


# Top-level commands, in the order a project meets them; each help screen ends with its examples.
app.command("demo", short_help="Advise, validate, train and evaluate on the bundled example.", epilog=demo.EXAMPLES)(demo.demo)
app.command("advise", short_help="Should you fine-tune at all? Measured advice.", epilog=advise.EXAMPLES)(advise.advise)
app.add_typer(data.data_app, name="data", short_help="Convert, validate, split and inspect chat data.")
app.command("train", short_help="Fine-tune a model (LoRA, DoRA, QLoRA or full).", epilog=train.EXAMPLES)(train.train)
app.command("eval", short_help="Fine-tune vs base vs prompting on held-out data.", epilog=evaluate.EXAMPLES)(evaluate.evaluate)
app.command("chat", short_help="Chat with a run, a model or a GGUF.", epilog=chat.EXAMPLES)(chat.chat)
app.command("export", short_help="Export a run: merged, GGUF, Ollama or adapter.", epilog=export.EXAMPLES)(export.export)
app.command("serve", short_help="Serve OpenAI's fine-tuning API on this machine.", epilog=serve.EXAMPLES)(serve.serve)
app.add_typer(projects.projects_app, name="projects", short_help="A server's projects and their limits.")
app.add_typer(projects.keys_app, name="keys", short_help="API keys of a server's projects.")
app.command("audit", short_help="A server's audit log.", epilog=projects.AUDIT_EXAMPLES)(projects.audit)
app.add_typer(jobs.jobs_app, name="jobs", short_help="Jobs here, on a tunelab serve, or at OpenAI.")
app.add_typer(migrate.migrate_app, name="migrate", short_help="Move OpenAI fine-tunes to open models.")
app.add_typer(presets.presets_app, name="presets", short_help="Bundled training presets.")
app.command("env", short_help="This machine, for a bug report.", epilog=examples("tunelab env", "tunelab env --json > env.json"))(env.env)
app.add_typer(env.cache_app, name="cache", short_help="List or clear the model cache.")


def run() -> None:
    """The `tunelab` entry point: the app, with a last line of defence against tracebacks.

    Every failure we foresee has its own message and exits 1 (2 for a usage error); anything else is a bug,
    reported in one line with exit code 3 (the traceback with TUNELAB_DEBUG=1), so a script can tell a bad
    flag from a bug.
    """
    configure_process()
    try:
        app()  # handles usage errors, Ctrl-C and exit codes itself, and leaves by SystemExit
    except Exception as error:  # noqa: BLE001 - the point of this handler
        if os.environ.get("TUNELAB_DEBUG") == "1":
            raise
        console.print(f"[bold red]error:[/] unexpected {type(error).__name__}: {escape(first_line(error))} — this is a "
                      "bug in tunelab; rerun with TUNELAB_DEBUG=1 to see where, and report it", soft_wrap=True)
        sys.exit(EXIT_BUG)
