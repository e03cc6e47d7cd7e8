"""`tunelab train`: fine-tune here (or on a server with `--remote`) from a YAML file, a preset and flags.

    tunelab train run.yaml
    tunelab train --data data/train.jsonl --validation-split 0.1 --adapter lora
    tunelab train --method dpo --data pairs.jsonl --from runs/ftjob-…   # preference pairs, after a supervised run
    tunelab train --method grpo --data tasks.jsonl --grader grader.json  # rewards from one of OpenAI's graders
    tunelab train --resume runs/ftjob-…
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Literal, Optional

import typer

from tunelab.cli.common import examples, fail, first_line, out, say, warn
from tunelab.cli.console import ConsoleEvents
from tunelab.core.events import Events
from tunelab.core.files import StorageError
from tunelab.runs.rundir import RunDir

EXAMPLES = examples("tunelab train --data data/train.jsonl --validation-split 0.1",
                    "tunelab train run.yaml --n-epochs 2",
                    "tunelab train --preset qwen2.5-0.5b --data data/train.jsonl",
                    "tunelab train --method dpo --data pairs.jsonl --from runs/ftjob-abc123",
                    "tunelab train --method grpo --data tasks.jsonl --grader grader.json",
                    "tunelab train --resume runs/ftjob-abc123",
                    "tunelab train --plan --model ./llama-3-8b --memory 24GB --plan-device cuda")


def train(config_file: Optional[Path], config: Optional[Path], preset: Optional[str], resume: Optional[Path],
          quiet: bool, as_json: bool, remote: Optional[str] = None, api_key: Optional[str] = None,
          plan: bool = False, memory: Optional[str] = None, plan_device: Optional[Literal["cpu", "cuda"]] = None, **flags) -> None:
    """Fine-tune a model (LoRA, DoRA, full or QLoRA) on chat data (supervised), preference pairs (dpo) or tasks a
    grader scores (grpo); writes a self-contained run directory.

    Settings come from a preset, then CONFIG (a YAML file of these same settings), then flags, each
    overriding the one before.
    """
    if config_file and config and config_file != config:
        fail(f"{config_file} and --config {config}: give one settings file")
    config = config_file or config
    if plan:
        return _show_plan(config, preset, memory, plan_device, as_json, flags)
    if remote:
        return _train_remote(config, preset, resume, quiet, as_json, remote, api_key, flags)
    from tunelab.conversation.problems import DataError
    from tunelab.conversation.render import TemplateMismatch
    from tunelab.conversation.templates import MissingChatTemplate
    from tunelab.core.files import OutputError
    from tunelab.core.process import keep_freed_memory
    from tunelab.core.settings import TrainConfig
    from tunelab.graders.spec import GraderSpecError
    from tunelab.train.local import NothingToTrain, RunExists
    from tunelab.train.local import train as run_training
    from tunelab.train.memory import DoesNotFit
    from tunelab.train.methods import MethodUnavailable
    from tunelab.train.start import StartError

    if resume:
        # A resumed run keeps its own settings; only how it is shown may change.
        changed = [name for name, value in flags.items() if value is not None]
        if changed or config or preset:
            fail(f"--resume continues {resume} with the settings in its config.yaml; drop "
                 + ", ".join(f"--{name.replace('_', '-')}" for name in changed + (["config"] if config else [])
                             + (["preset"] if preset else [])))
        config = RunDir(resume).config_file
        if not config.is_file():
            fail(f"{resume}: not a tunelab run directory (no config.yaml)")
        flags["out"] = str(resume)  # where the run is now, wherever it was when it started
    try:
        settings = TrainConfig.from_sources(config, preset=preset, **flags)
    except (ValueError, TypeError) as error:
        fail(str(error))
    except OSError as error:
        fail(f"{error.filename or config}: {error.strerror or first_line(error)}")
    if not settings.data:
        fail("--data is required (or a settings file or --preset that sets `data`)")
    for note in settings.notes:
        warn(note)
    try:
        keep_freed_memory()  # training re-allocates its activations every step; reusing them beats fresh pages
        run_dir = run_training(settings, events=Events(ConsoleEvents(progress=not quiet and not as_json)),
                               resume=resume is not None)
    except (DataError, TemplateMismatch, MethodUnavailable, RunExists, FileNotFoundError, MissingChatTemplate,
            NothingToTrain, OutputError, DoesNotFit, StartError, GraderSpecError) as error:
        fail(str(error))
    except StorageError as error:  # a disk that fills up or turns read-only
        from tunelab.runs.rundir import complete_checkpoints

        run = RunDir(settings.out) if settings.out else None
        kept = complete_checkpoints(run.checkpoints_dir) if run and run.has_run() else []
        fail(f"{error} — " + (f"the run keeps its last complete checkpoint ({kept[-1].name}); free space, then "
                              f"continue with `tunelab train --resume {run.path}`" if kept else
                              "nothing was trained yet; free space and run the same command again"))
    except OSError as error:  # a model that cannot be loaded
        fail(f"{error.filename or settings.model}: {error.strerror or first_line(error)}")
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under `accelerate launch`, the first process reports
    if as_json:
        print(RunDir(run_dir).job_file.read_text(encoding="utf-8"))
    else:
        say(f"RUN: {run_dir}")


def _show_plan(config, preset, memory, device, as_json, flags) -> None:
    """`train --plan`: the memory plan from the model's config alone (no weights loaded), for this machine or,
    with --memory (and --plan-device), for another."""
    from tunelab.core.settings import TrainConfig
    from tunelab.models.precision import best_device
    from tunelab.models.resolve import ModelNotFound, resolve_model
    from tunelab.train.local import training_data_lengths
    from tunelab.models.device_memory import device_budget
    from tunelab.train.memory import PlanError, model_shape, plan_for

    here = best_device()
    device = device or here
    if device != here and not memory:
        fail(f"--plan-device {device}: this machine's device is {here}; give --memory (e.g. 24GB) to plan for another")
    try:
        settings = TrainConfig.from_sources(config, preset=preset, **flags)
        # the default model is converted once, the first time (about 40 s): say so rather than sit silent
        resolved = resolve_model(settings.model, Events(ConsoleEvents(progress=not as_json)))
        shape = model_shape(resolved.path, resolved.name)
        longest, count = training_data_lengths(settings, resolved.path) if settings.data else (None, None)
        made = plan_for(settings, shape, device, device_budget(device, memory), longest, count)
    except (ValueError, TypeError, PlanError, ModelNotFound) as error:
        fail(str(error))
    except OSError as error:
        fail(f"{error.filename or settings.model}: {error.strerror or first_line(error)}")
    if as_json:
        print(json.dumps(made.as_data(), indent=2))
    else:
        out.print("\n".join(made.lines()), markup=False)
        if not longest:
            out.print(f"  · examples taken as max_length ({settings.max_length} tokens) long; give --data for the "
                      "longest real one", markup=False)
    if not made.fits:
        raise typer.Exit(1)


def _train_remote(config, preset, resume, quiet, as_json, remote, api_key, flags) -> None:
    """`train --remote URL`: check the data here, upload it, start the job there, watch it to the end and
    fetch the result into a local run directory. Ctrl-C stops watching, not the job."""
    from tunelab.core.settings import TrainConfig
    from tunelab.remote.jobs import RemoteError, connect, fetch_run, job_error_text, submit, watch

    if resume:
        fail("--resume continues a local run; a remote job resumes on its server (`tunelab jobs resume ID --remote URL`)")
    try:
        settings = TrainConfig.from_sources(config, preset=preset, **flags)
        given = {name for name, field in TrainConfig.model_fields.items() if getattr(settings, name) != field.default}
        if not settings.data:
            fail("--data is required (or a settings file or --preset that sets `data`)")
        events = Events(ConsoleEvents(progress=not quiet and not as_json))
        client = connect(remote, api_key)
        job = submit(client, settings, events, given)
        try:
            job = watch(client, job.id, events)
        except KeyboardInterrupt:
            from tunelab.cli.console import console

            console.print(f"Stopped watching; {job.id} goes on. Watch again: tunelab jobs watch {job.id} --remote {remote}")
            raise typer.Exit(130) from None
        if job.status != "succeeded":
            fail(f"{job.id} {job.status}" + (f": {job_error_text(job)}" if job.error else ""))
        run = fetch_run(client, job, settings.out or Path("runs") / job.id)
    except (ValueError, TypeError, OSError, RemoteError) as error:
        fail(str(error))
    if as_json:
        print(json.dumps(job.model_dump(), indent=2))
    else:
        weights = "with its weights" if run.is_finished() else "record and metrics only: the server keeps the weights"
        out.print(f"MODEL: {job.fine_tuned_model}\nRUN: {run.path} ({weights})", markup=False)


# How a setting's value is written on the command line, by the kind of value it takes.
METAVARS = {int: "N", float: "X", str: "TEXT"}
AUTO_METAVARS = {"n_epochs": "N|auto", "batch_size": "N|auto", "micro_batch_size": "N|auto",
                 "learning_rate_multiplier": "X|auto", "group_size": "N|auto", "eval_samples": "N|auto"}
FILE_SETTINGS = {"data": "FILE", "validation": "FILE", "chat_template": "FILE", "out": "DIR", "model": "MODEL",
                 "from_run": "RUN", "grader": "FILE", "grader_url": "URL"}
AUTO_METAVARS["beta"] = "X|auto"
CHOICE_METAVARS = {"method": "<supervised|dpo|grpo>"}
SHORT_FLAGS = {"data": "-d", "model": "-m", "out": "-o"}
OTHER_SPELLINGS = {"from_run": "--from"}  # `--from RUN` reads as it is meant; `--from-run` is taken too


def _setting_options() -> list[inspect.Parameter]:
    """One option per field of the settings model, its help text, type and choices taken from the model."""
    from tunelab.core.settings import TrainConfig, field_choices, field_help, field_kind

    options = []
    for name in TrainConfig.model_fields:
        kind, flag = field_kind(name), "--" + name.replace("_", "-")
        declarations = ([f"{flag}/--no-{flag[2:]}"] if kind is bool else
                        [*([OTHER_SPELLINGS[name]] if name in OTHER_SPELLINGS else []), flag,
                         *([SHORT_FLAGS[name]] if name in SHORT_FLAGS else [])])
        choices = field_choices(name)
        if name == "method":  # text, so that the old `--method qlora` reaches the settings, which take it with a note
            choices, kind = None, str
        annotation = Optional[Literal[choices]] if choices else Optional[kind]
        text, default = field_help(name)
        metavar = None if kind is bool or choices else (FILE_SETTINGS.get(name) or AUTO_METAVARS.get(name)
                                                        or CHOICE_METAVARS.get(name) or METAVARS[kind])
        # The default is written into the help (the option's own default is None, "not given", so a settings
        # file's value is not overridden by it).
        shown = f"{text}  [default: {default}]" if default is not None else text
        options.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=typer.Option(
            None, *declarations, help=shown, metavar=metavar, show_default=False)))
    return options


train.__signature__ = inspect.Signature([
    inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path], default=typer.Argument(
        None, metavar="[CONFIG.yaml]", help="YAML file of these same settings (as --config); flags override it.")),
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path], default=typer.Option(
        None, "--config", "-c", metavar="FILE", help="YAML file of these same settings; flags override it.")),
    inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
        None, "--preset", metavar="NAME", help="Start from a bundled preset (`tunelab presets list`); the settings file and flags override it.")),
    inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path], default=typer.Option(
        None, "--resume", metavar="RUN", help="Continue this run directory from its last complete checkpoint.")),
    *_setting_options(),
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--quiet", "-q", help="No progress bar.")),
    inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--json", help="Print the finished job as JSON on stdout.")),
    inspect.Parameter("plan", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--plan", help="Print the memory plan (weights, trained state, activations, loss; the micro-batch and checkpointing that fit) from the model's config alone, and stop.")),
    inspect.Parameter("memory", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
        None, "--memory", metavar="SIZE", help="Memory to plan for (e.g. 24GB, 80GiB) instead of what this machine has free.")),
    inspect.Parameter("plan_device", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Literal["cpu", "cuda"]],
                      default=typer.Option(None, "--plan-device", help="Device to plan for with --memory (default: this machine's).")),
    inspect.Parameter("remote", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
        None, "--remote", metavar="URL", help="Train on a server with OpenAI's API (a `tunelab serve`, e.g. http://gpu-box:8000/v1): upload, watch, fetch the run.")),
    inspect.Parameter("api_key", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
        None, "--api-key", metavar="KEY", envvar="OPENAI_API_KEY", show_envvar=True, help="Key for --remote.")),
])
