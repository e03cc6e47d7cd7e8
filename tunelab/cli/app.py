"""The `tunelab` command. Every subcommand parses its arguments, calls one library function, and prints.

    tunelab demo
    tunelab train --data train.jsonl --validation valid.jsonl
    tunelab eval --model runs/ftjob-… --data test.jsonl --rubric rubric.yaml
    tunelab chat runs/ftjob-… "My order hasn't arrived."
    tunelab data convert raw.csv --out train.jsonl --system "You are…"
    tunelab data validate train.jsonl --validation valid.jsonl [--target openai:gpt-4o-mini]
    tunelab data stats train.jsonl
    tunelab data split all.jsonl --test-size 0.2 --out-dir data/
    tunelab data render train.jsonl --limit 2
    tunelab presets list
"""

from __future__ import annotations

import inspect
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from tunelab import __version__
from tunelab.cli.console import ConsoleEvents, console
from tunelab.core.events import Events
from tunelab.core.files import StorageError
from tunelab.core.process import configure_process, keep_freed_memory
from tunelab.runs.rundir import RunDir

app = typer.Typer(
    help="Fine-tune language models: prepare chat data, train locally (LoRA), evaluate against the base "
         "model, and chat with the result.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _fail(message: str) -> None:
    # Unwrapped and unstyled inside, so `file:line: field: problem` stays on one line for people and tools.
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)


def _version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    """tunelab."""


def train(config: Optional[Path], preset: Optional[str], resume: Optional[Path], quiet: bool, as_json: bool,
          remote: Optional[str] = None, api_key: Optional[str] = None, **flags) -> None:
    """Fine-tune a model (LoRA, DoRA, full or QLoRA) on chat data; writes a self-contained run directory."""
    if remote:
        return _train_remote(config, preset, resume, quiet, as_json, remote, api_key, flags)
    from tunelab.conversation.problems import DataError
    from tunelab.conversation.render import TemplateMismatch
    from tunelab.conversation.templates import MissingChatTemplate
    from tunelab.core.files import OutputError
    from tunelab.core.settings import TrainConfig
    from tunelab.train.local import NothingToTrain, RunExists
    from tunelab.train.local import train as run_training
    from tunelab.train.methods import MethodUnavailable

    if resume:
        # A resumed run keeps its own settings; only how it is shown may change.
        changed = [name for name, value in flags.items() if value is not None]
        if changed or config or preset:
            _fail(f"--resume continues {resume} with the settings in its config.yaml; drop "
                  + ", ".join(f"--{name.replace('_', '-')}" for name in changed + (["config"] if config else [])
                              + (["preset"] if preset else [])))
        config = RunDir(resume).config_file
        if not config.is_file():
            _fail(f"{resume}: not a tunelab run directory (no config.yaml)")
        flags["out"] = str(resume)  # where the run is now, wherever it was when it started
    try:
        settings = TrainConfig.from_sources(config, preset=preset, **flags)
    except (ValueError, TypeError, OSError) as error:
        _fail(str(error))
    if not settings.data:
        _fail("--data is required (or a --config or --preset that sets `data`)")
    try:
        keep_freed_memory()  # training re-allocates its activations every step; reusing them beats fresh pages
        run_dir = run_training(settings, events=Events(ConsoleEvents(progress=not quiet)), resume=resume is not None)
    except (DataError, TemplateMismatch, MethodUnavailable, RunExists, FileNotFoundError, MissingChatTemplate,
            NothingToTrain, OutputError) as error:
        _fail(str(error))
    except StorageError as error:  # a disk that fills up or turns read-only
        from tunelab.train.checkpoints import complete_checkpoints

        run = RunDir(settings.out) if settings.out else None
        kept = complete_checkpoints(run.checkpoints_dir) if run and run.has_run() else []
        _fail(f"{error} — " + (f"the run keeps its last complete checkpoint ({kept[-1].name}); free space, then "
                               f"continue with `tunelab train --resume {run.path}`" if kept else
                               "nothing was trained yet; free space and run the same command again"))
    except OSError as error:  # a model that cannot be loaded
        _fail(f"{error.filename or settings.model}: {error.strerror or _first_line(error)}")
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under `accelerate launch`, the first process reports
    if as_json:
        print(RunDir(run_dir).job_file.read_text(encoding="utf-8"))
    else:
        console.print(f"RUN: {run_dir}")


def _train_remote(config, preset, resume, quiet, as_json, remote, api_key, flags) -> None:
    """`train --remote URL`: check the data here, upload it, start the job there, watch it to the end and
    fetch the result into a local run directory. Ctrl-C stops watching, not the job."""
    from tunelab.core.settings import TrainConfig
    from tunelab.remote.jobs import RemoteError, connect, fetch_run, submit, watch

    if resume:
        _fail("--resume continues a local run; a remote job resumes on its server (`tunelab jobs resume ID --remote URL`)")
    try:
        settings = TrainConfig.from_sources(config, preset=preset, **flags)
        given = {name for name, field in TrainConfig.model_fields.items() if getattr(settings, name) != field.default}
        if not settings.data:
            _fail("--data is required (or a --config or --preset that sets `data`)")
        events = Events(ConsoleEvents(progress=not quiet and not as_json))
        client = connect(remote, api_key)
        job = submit(client, settings, events, given)
        try:
            job = watch(client, job.id, events)
        except KeyboardInterrupt:
            console.print(f"Stopped watching; {job.id} goes on. Watch again: tunelab jobs watch {job.id} --remote {remote}")
            raise typer.Exit(130) from None
        if job.status != "succeeded":
            _fail(f"{job.id} {job.status}" + (f": {_job_error(job)}" if job.error else ""))
        run = fetch_run(client, job, settings.out or Path("runs") / job.id)
    except (ValueError, TypeError, OSError, RemoteError) as error:
        _fail(str(error))
    if as_json:
        print(json.dumps(job.model_dump(), indent=2))
    else:
        weights = "with its weights" if run.is_finished() else "record and metrics only: the server keeps the weights"
        console.print(f"MODEL: {job.fine_tuned_model}\nRUN: {run.path} ({weights})", soft_wrap=True, markup=False)


def _setting_options() -> list[inspect.Parameter]:
    """One option per field of the settings model, its help text and type taken from the model."""
    from tunelab.core.settings import TrainConfig, field_help, field_kind

    options = []
    for name in TrainConfig.model_fields:
        kind, flag = field_kind(name), "--" + name.replace("_", "-")
        declarations = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        text, default = field_help(name)
        options.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[kind], default=typer.Option(
            None, *declarations, help=text, show_default=default if default is not None else False)))
    return options


train.__signature__ = inspect.Signature([
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path], default=typer.Option(
        None, "--config", help="YAML file with these same settings; flags override it.")),
    inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
        None, "--preset", help="Start from a bundled preset (`tunelab presets list`); --config and flags override it.")),
    inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path], default=typer.Option(
        None, "--resume", help="Continue this run directory from its last complete checkpoint.")),
    *_setting_options(),
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--quiet", help="No progress bar.")),
    inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--json", help="Print the finished job as JSON on stdout.")),
    inspect.Parameter("remote", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
        None, "--remote", help="Train on a server with OpenAI's API (a `tunelab serve`, e.g. http://gpu-box:8000/v1): upload, watch, fetch the run.")),
    inspect.Parameter("api_key", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str], default=typer.Option(
        None, "--api-key", help="Key for --remote (default OPENAI_API_KEY).")),
])
app.command()(train)


@app.command("eval")
def evaluate(
    model: str = typer.Option(..., "--model", help="A run directory (base vs fine-tuned vs few-shot base), or a model spec."),
    data: Path = typer.Option(..., "--data", help="Held-out chat JSONL; each conversation's last assistant message is the reference."),
    base: Optional[str] = typer.Option(None, "--base", help="The base model to compare with, when --model is not a run (e.g. a merged export)."),
    fewshot: Optional[int] = typer.Option(None, "--fewshot", help="Shots for the prompted baseline (default 3 when the training file is known; 0: none)."),
    fewshot_from: Optional[Path] = typer.Option(None, "--fewshot-from", help="Training JSONL to draw shots from (default: the run's own)."),
    scorers: Optional[str] = typer.Option(None, "--scorers", help="Comma-separated: exact_match, rubric, rouge_l, chrf, semantic_similarity, json_valid, json_schema, tool_call, ended_turn, length (default: chosen from the data)."),
    rubric: Optional[Path] = typer.Option(None, "--rubric", help="YAML rubric of house-style checks (see tunelab/examples/support/rubric.yaml)."),
    schema: Optional[Path] = typer.Option(None, "--schema", help="JSON Schema for json_schema (default: inferred from the references)."),
    judge: Optional[str] = typer.Option(None, "--judge", help="MODEL[@URL] of an OpenAI-compatible judge: adds the judge score and pairwise comparisons."),
    compare: list[str] = typer.Option([], "--compare", help="MODEL@URL of an OpenAI-compatible model to compare with (repeatable; MODEL alone: OpenAI)."),
    forgetting: str = typer.Option("auto", "--forgetting", help="auto (bundled general text and probes), off, or a JSONL file of your own probes added to them."),
    slice_by: Optional[str] = typer.Option(None, "--slice-by", help="Metadata field to slice results by (default: metadata.tags)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default RUN/eval); replies cached there are reused."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", help="Token limit per reply (default 1.5 × the longest reference)."),
    temperature: float = typer.Option(0.0, "--temperature", help="0 (default): greedy replies; above 0, sampled with --seed."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling: keep the most likely tokens up to this probability (with --temperature)."),
    seed: int = typer.Option(0, "--seed", help="Seed for sampled replies: the same seed gives the same replies."),
    dtype: str = typer.Option("auto", "--dtype", help="Number format of local models: auto (bf16 on a CPU or GPU with bf16 units, else fp32), fp32 or bf16."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first N examples."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print results.json on stdout."),
) -> None:
    """Compare base, few-shot base, fine-tuned and --compare models on held-out data with intervals and paired
    tests, check for forgetting, and write report.html + results.json."""
    from tunelab.conversation.problems import DataError
    from tunelab.eval.run import EvalConfig
    from tunelab.eval.run import evaluate as run_evaluation
    from tunelab.eval.systems import EndpointError

    config = EvalConfig(model=model, data=str(data), base=base, fewshot=fewshot,
                        fewshot_from=fewshot_from and str(fewshot_from),
                        scorers=[s.strip() for s in scorers.split(",") if s.strip()] if scorers else None,
                        rubric=rubric and str(rubric), schema=schema and str(schema), judge=judge, compare=compare,
                        forgetting=forgetting, slice_by=slice_by, out=out and str(out), max_new_tokens=max_new_tokens, dtype=dtype,
                        temperature=temperature, top_p=top_p, seed=seed,
                        limit=limit)
    try:
        out_dir = run_evaluation(config, Events(ConsoleEvents(progress=not quiet and not as_json)))
    except (DataError, FileNotFoundError, ValueError, EndpointError) as error:
        _fail(str(error))
    except OSError as error:
        _fail(f"{error.filename or model}: {error.strerror or _first_line(error)}")
    results_text = (out_dir / "results.json").read_text()
    if as_json:
        print(results_text)
    else:
        console.print(json.loads(results_text)["verdict"])
        console.print(f"REPORT: {out_dir / 'report.html'}")


@app.command()
def chat(
    model: str = typer.Argument(..., help="A run directory, a model ('default', a directory, a hub id) or a .gguf file."),
    message: Optional[str] = typer.Argument(None, help="One message to answer (as --once)."),
    once: Optional[str] = typer.Option(None, "--once", help="Answer this one message, print the reply and exit (for scripts)."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Token limit per reply."),
    base: bool = typer.Option(False, "--base", help="With a run directory: answer with the base model (adapter off)."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, help="0 (default): greedy; above 0, sampled."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for sampled replies."),
    dtype: str = typer.Option("auto", "--dtype", help="Number format in transformers: auto (the run's; bf16 on a CPU or GPU with bf16 units), fp32 or bf16. A GGUF in llama.cpp computes as its file says."),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", help="A Jinja chat template file, for a model that has none of its own."),
) -> None:
    """Chat with a fine-tuned run, any model, or an exported GGUF, using the chat template it was trained with;
    replies stream as they are made. Without a message: an interactive session (/help lists its commands)."""
    from tunelab.cli.chat import reply_once, run_session

    from tunelab.models.precision import requested_dtype

    text = once if once is not None else message
    try:
        number_format = requested_dtype(dtype)
    except ValueError as error:
        _fail(str(error))
    chat_model = _chat_model(model, base, temperature, seed, chat_template, number_format)
    if text is not None:
        reply_once(chat_model, ([{"role": "system", "content": system}] if system else [])
                   + [{"role": "user", "content": text}], max_new_tokens)
        if chat_model.last.finish_reason == "length":
            console.print(f"[yellow](stopped at the {max_new_tokens}-token limit)[/]")
        return
    run_session(chat_model, system, max_new_tokens,
                lambda note: console.print(note, markup=False, highlight=False, soft_wrap=True))


def _chat_model(model: str, base: bool, temperature: float, seed: Optional[int], chat_template: Optional[Path],
                dtype=None):
    """llama.cpp for a .gguf when it is installed; transformers otherwise."""
    from tunelab.models.chat import LlamaCppChat, TransformersChat, llama_cpp_installed

    if model.endswith(".gguf") and Path(model).is_file() and llama_cpp_installed():
        if base or chat_template:
            _fail("--base and --chat-template apply to runs and Hugging Face models, not to a GGUF file")
        try:
            return LlamaCppChat(model, temperature, seed)
        except ValueError as error:
            _fail(str(error))
    if base and not RunDir(model).is_finished():
        _fail(f"--base: {model} is not a finished run directory, so there is no fine-tune to switch off")
    loaded = _load_model_for_use(model, chat_template, dtype)
    if base and loaded.fully_fine_tuned:
        _fail(f"--base: {model} is a full fine-tune (every weight changed), so there is no adapter to switch off; "
              f"chat with its base model instead: tunelab chat {loaded.base_name if loaded.base_name != 'gemma-3-270m' else 'default'}")
    return TransformersChat(loaded, use_adapter=not base, temperature=temperature, seed=seed)


@app.command()
def export(
    run: Path = typer.Argument(..., help="A finished run directory."),
    format: str = typer.Option("merged", "--format", help="merged (Hugging Face safetensors), gguf (llama.cpp), ollama (GGUF + Modelfile) or adapter (PEFT, for vLLM/SGLang/LoRAX)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="merged: f32, bf16 or f16 (default: the base model's); gguf/ollama: f16 (default), bf16, f32, q8_0, or q4_k_m (needs llama.cpp)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write it (default RUN/export/NAME); never overwritten without --force."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Chat JSONL whose prompts the export is verified on (default: the run's validation file, else its training file)."),
    verify_prompts: int = typer.Option(10, "--verify-prompts", min=1, help="How many prompts to verify on."),
    force: bool = typer.Option(False, "--force", help="Replace an existing export (only once the new one has passed)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result and the verification figures as JSON."),
) -> None:
    """Export a run for use outside tunelab, verified before it is kept: reloaded and compared with the run's
    own model on held-out prompts (next-token logits and greedy continuations)."""
    from tunelab.export.gguf_file import UnsupportedForGGUF
    from tunelab.export.run import ExportConfig, ExportFailed
    from tunelab.export.run import export as run_export

    config = ExportConfig(str(run), format, dtype, out and str(out), prompts and str(prompts), verify_prompts, force)
    try:
        result = run_export(config, Events(ConsoleEvents(progress=not as_json)))
    except (ExportFailed, UnsupportedForGGUF) as error:
        _fail(str(error))
    except StorageError as error:
        _fail(f"{error}; nothing was left in place — free space (or choose another --out) and export again")
    except OSError as error:
        _fail(f"{run}: the export could not be written ({_first_line(error)}); nothing was left in place")
    if as_json:
        print(json.dumps({"path": str(result.path), "format": result.format, "dtype": result.number_format,
                          "verified_on": result.prompts_source, "checks": [c.as_dict() for c in result.checks],
                          "notes": result.notes, "next_step": result.next_step}, indent=2))
        return
    console.print(f"verified on {result.prompts_source}:", markup=False, soft_wrap=True)
    for check in result.checks:
        console.print(f"  ✓ {check.summary()}", markup=False, soft_wrap=True)
    for note in result.notes:
        console.print(f"[yellow]note: {escape(note)}[/]", soft_wrap=True)
    console.print(f"EXPORTED: {result.path}", markup=False, soft_wrap=True)
    console.print(f"next: {result.next_step}", markup=False, soft_wrap=True)


def _load_model_for_use(model: str, chat_template: Optional[Path] = None, dtype=None):
    """A run directory or model spec loaded for generation, or a clear error naming it."""
    from tunelab.conversation.templates import MissingChatTemplate
    from tunelab.models.generate import load_for_generation

    try:
        return load_for_generation(model, chat_template=chat_template and str(chat_template), dtype=dtype)
    except (FileNotFoundError, MissingChatTemplate) as error:
        _fail(str(error))
    except OSError as error:  # a hub id that cannot be fetched, a damaged model directory
        _fail(f"{model}: cannot load this model ({_first_line(error)}); give a run directory, 'default', a model "
              "directory or a .gguf file")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


data_app = typer.Typer(help="Prepare chat data: convert, validate, stats, split, render.", no_args_is_help=True)
app.add_typer(data_app, name="data")

MODEL_HELP = "Count tokens as this local model will: 'default', a model directory, or a .gguf file."
TARGET_HELP = "Count tokens and cost for OpenAI instead, e.g. openai:gpt-4o-mini."
TEMPLATE_HELP = "A Jinja chat template file, for a model that has none of its own."
MAX_TOKENS_HELP = "Token limit per example (default: what training cuts at: 1024 locally, OpenAI's limit)."


def _check_data(file: Path, validation: Optional[Path], model: str, target: Optional[str],
                max_tokens: Optional[int], chat_template: Optional[Path] = None):
    """Validate with token counts, showing progress; the shared core of `validate` and `stats`."""
    from tunelab.core.files import input_file_problem
    from tunelab.data.tokens import token_counter
    from tunelab.data.validate import validate_file

    for path in (file, validation):
        if path is not None and input_file_problem(path):
            _fail(f"{path}: {input_file_problem(path)}")
    try:
        counter = None if model == "none" and not target else token_counter(model, target, chat_template)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    except OSError as error:
        _fail(f"{model}: cannot load this model's tokenizer ({_first_line(error)})")
    return validate_file(file, validation, counter, max_tokens, events=Events(ConsoleEvents()))


def _print_findings(report) -> None:
    """One line per (severity, code, file): `error: FILE:LINE: FIELD: message [code]`, then how many more."""
    from collections import defaultdict

    grouped = defaultdict(list)
    for finding in report.findings:
        grouped[(finding.severity, finding.code, finding.file or report.file)].append(finding)
    for (severity, code, file), findings in sorted(grouped.items()):
        first = findings[0]
        place = f"{file}:{first.line}" if first.line else str(file)
        place += f": {first.path}" if first.path else ""
        others = [str(f.line) for f in findings[1:] if f.line][:5]
        more = f" (×{len(findings)}: also line{'s' if len(others) > 1 else ''} {', '.join(others)}" \
               f"{' …' if len(findings) > 6 else ''})" if len(findings) > 1 and others else \
            (f" (×{len(findings)})" if len(findings) > 1 else "")
        colour = "red" if severity == "error" else "yellow"
        console.print(f"[{colour}]{severity}:[/] {escape(place)}: {escape(first.message)} {escape(f'[{code}]')}{more}",
                      soft_wrap=True)


def _print_stats(report, histogram: bool = False) -> None:
    stats = report.stats
    console.print(f"[bold]{report.file}[/]: {stats['examples']} examples ({stats.get('valid_examples', 0)} valid, "
                  f"{stats['multi_turn']} multi-turn)")
    rows = [("assistant reply, characters", stats.get("assistant_reply_chars"))]
    tokens = stats.get("tokens")
    if tokens:
        rows += [("tokens per example", tokens["per_example"]), ("trained tokens per example", tokens["trained_per_example"])]
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("", "min", "mean", "p50", "p90", "p95", "max"):
        table.add_column(column, justify="right" if column else "left")
    for name, values in rows:
        if values:
            table.add_row(name, *(str(values[key]) for key in ("min", "mean", "p50", "p90", "p95", "max")))
    console.print(table)
    if tokens:
        label = tokens["counted_with"] + ("" if tokens["exact"] else " [yellow](estimate)[/]")
        console.print(f"tokens: {tokens['total']:,} in all, {tokens['trained']:,} trained on — counted with {label}")
        if tokens["examples_over_limit"]:
            console.print(f"[yellow]{tokens['examples_over_limit']} example(s) over the {tokens['limit']}-token limit: "
                          f"{tokens['tokens_cut']:,} tokens would be cut[/]")
        if histogram and report.token_lengths:
            _print_histogram(report.token_lengths)
    cost = report.cost
    if cost and cost["backend"] == "openai":
        console.print(f"cost on OpenAI ({cost['model']}): {cost['n_epochs']} epochs × {cost['tokens_per_epoch']:,} "
                      f"tokens = {cost['billed_tokens']:,} billed tokens ≈ [bold]${cost['usd']:,.2f}[/] at "
                      f"${cost['usd_per_million_tokens']}/1M (prices as of {cost['prices_as_of']}; check current prices)")
    elif cost:
        console.print(f"local training ({cost['model']}): {cost['n_epochs']} epochs × {cost['tokens_per_epoch']:,} tokens "
                      f"≈ [bold]{_duration(cost['seconds'])}[/] at ~{cost['tokens_per_second']:.0f} tokens/s "
                      f"({cost['throughput_source']}; a GPU is far faster)")


def _print_histogram(values, bins: int = 10) -> None:
    low, high = min(values), max(values)
    width = max(1, -(-(high - low + 1) // bins))
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, (value - low) // width)] += 1
    peak = max(counts)
    console.print("tokens per example:")
    for index, count in enumerate(counts):
        start = low + index * width
        console.print(f"  {start:>7,}–{start + width - 1:<7,} {'█' * round(40 * count / peak):<40} {count:,}")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@data_app.command("validate")
def data_validate(
    file: Path = typer.Argument(..., help="Chat JSONL to check."),
    validation: Optional[Path] = typer.Option(None, "--validation", help="Validation file: also checks overlap (leakage)."),
    model: str = typer.Option("default", "--model", help=MODEL_HELP + " 'none' skips token counts."),
    target: Optional[str] = typer.Option(None, "--target", help=TARGET_HELP),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help=MAX_TOKENS_HELP),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", help=TEMPLATE_HELP),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 on warnings too."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON on stdout."),
) -> None:
    """Check a chat JSONL file: every format error OpenAI rejects, the recommended quality warnings, duplicates,
    leakage and truncation, all in one pass; then token statistics and the cost of training on it."""
    report = _check_data(file, validation, model, target, max_tokens, chat_template)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print_findings(report)
        if report.stats:
            _print_stats(report)
        status = "no problems" if not report.findings else (
            f"{len(report.errors)} error(s), {len(report.findings) - len(report.errors)} warning(s)")
        console.print(f"{file}: {report.examples} examples, {status}")
    if report.errors or (strict and report.findings):
        raise typer.Exit(1)


@data_app.command("stats")
def data_stats(
    file: Path = typer.Argument(..., help="Chat JSONL."),
    model: str = typer.Option("default", "--model", help=MODEL_HELP),
    target: Optional[str] = typer.Option(None, "--target", help=TARGET_HELP),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help=MAX_TOKENS_HELP),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", help=TEMPLATE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics and cost as JSON on stdout."),
) -> None:
    """Token statistics (total and trained, per example), their distribution, and the cost of training."""
    report = _check_data(file, None, model, target, max_tokens, chat_template)
    if as_json:
        print(json.dumps({"file": report.file, "stats": report.stats, "cost": report.cost}, indent=2))
        if report.errors:
            raise typer.Exit(1)
        return
    _print_stats(report, histogram=True)
    if report.errors:
        first = report.errors[0]
        where = f"{first.file or file}:{first.line}" if first.line else str(first.file or file)
        _fail(f"{where}: {first.message} — {len(report.errors)} format error(s) in all, and those lines are not counted; "
              f"`tunelab data validate {file}` lists them")


@data_app.command("convert")
def data_convert(
    source: Path = typer.Argument(..., help="CSV, JSONL or JSON list to convert."),
    out: Path = typer.Option(..., "--out", help="Chat JSONL to write."),
    fmt: str = typer.Option("auto", "--format", help="auto, openai, input-output, alpaca or sharegpt."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt for every conversation that has none."),
    input_column: str = typer.Option("input", "--input-column", help="input-output: the prompt's column/key."),
    output_column: str = typer.Option("ideal_output", "--output-column", help="input-output: the reply's column/key."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Convert input/ideal_output pairs, Alpaca or ShareGPT into OpenAI chat JSONL; says what it dropped."""
    from tunelab.data.formats import ConversionError, convert_file

    try:
        report = convert_file(source, out, fmt, system, input_column, output_column, overwrite=force)
    except ConversionError as error:
        _fail(str(error))
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        written = f"→ {out}: {report.written} conversations written" if report.written else "→ nothing written"
        console.print(f"{source} ({report.format}) {written}, {len(report.dropped)} dropped")
        _print_counted("dropped", report.dropped_by_reason(), report.dropped)
        _print_counted("not carried", report.not_carried_by_what(), report.not_carried)
    if report.written == 0:
        _fail(f"{source}: no record could be converted, so {out} was not written")
    if not as_json:
        console.print(f"next: tunelab data validate {out}")


def _print_counted(label: str, counts, items: list[tuple[int, str]]) -> None:
    """One line per reason: how many, the first lines, and the reason."""
    for reason, count in counts.most_common():
        lines = [str(line) for line, why in items if why == reason][:5]
        console.print(f"  [yellow]{label} ×{count}[/] (line{'s' if count > 1 else ''} {', '.join(lines)}"
                      f"{' …' if count > 5 else ''}): {escape(reason)}", soft_wrap=True)


@data_app.command("split")
def data_split(
    file: Path = typer.Argument(..., help="Chat JSONL to split."),
    out_dir: Path = typer.Option(..., "--out-dir", help="Writes train.jsonl and test.jsonl here."),
    test_size: float = typer.Option(0.2, "--test-size", help="Held-out share (0.2) or count (50)."),
    seed: int = typer.Option(42, "--seed", help="Shuffle seed."),
    force: bool = typer.Option(False, "--force", help="Replace existing train.jsonl/test.jsonl."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Held-out split, de-duplicated first and grouped by prompt, so nothing lands on both sides."""
    from tunelab.conversation.problems import DataError
    from tunelab.data.split import split_file

    try:
        report = split_file(file, out_dir, test_size, seed, overwrite=force)
    except (DataError, ValueError, FileExistsError) as error:
        _fail(str(error))
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        console.print(f"{report.train}: {report.train_examples} conversations; {report.test}: {report.test_examples}"
                      f" ({report.duplicates_removed} duplicate(s) removed first, {report.prompt_groups} distinct prompts)")


@data_app.command("render")
def data_render(
    file: Path = typer.Argument(..., help="Chat JSONL to show."),
    model: str = typer.Option("default", "--model", help="Whose chat template and tokenizer: 'default', a model directory or a run directory."),
    line: Optional[int] = typer.Option(None, "--line", help="Show the example on this line of FILE."),
    limit: int = typer.Option(3, "--limit", help="How many examples to show (from the start, or from --line)."),
    plain: bool = typer.Option(False, "--plain", help="No colour: trained text is wrapped in ⟦ ⟧."),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", help=TEMPLATE_HELP),
) -> None:
    """Show examples as the model is trained on them: trained tokens green, context dim."""
    from tunelab.cli.console import mask_markup
    from tunelab.conversation.problems import DataError
    from tunelab.conversation.reader import read_numbered_conversations
    from tunelab.conversation.render import TemplateMismatch, render_conversation, show_mask, trained_runs

    try:
        numbered = read_numbered_conversations(file)
    except DataError as error:
        _fail(str(error))
    if line is not None:
        numbered = [(n, c) for n, c in numbered if n >= line]
        if not numbered or numbered[0][0] != line:
            _fail(f"{file}:{line}: no conversation on that line")
    tokenizer = _tokenizer_for(model, chat_template)
    if not plain:
        console.print("[bold green]trained[/] · [dim]context (no loss)[/]")
    for number, conversation in numbered[:limit]:
        try:
            example = render_conversation(tokenizer, conversation["messages"], tools=conversation.get("tools"))
        except TemplateMismatch as error:
            _fail(f"{file}:{number}: {error}")
        header = f"{file}:{number} · {len(example.input_ids)} tokens, {example.trained_tokens} trained"
        if plain:
            print(f"--- {header}")
            print(show_mask(tokenizer, example))
        else:
            console.rule(escape(header))
            console.print(mask_markup(trained_runs(tokenizer, example)), soft_wrap=True, highlight=False)


def _tokenizer_for(model: str, chat_template: Optional[Path] = None):
    """The tokenizer (with chat template) of a model spec or of a run directory."""
    from tunelab.models.resolve import load_tokenizer, resolve_model

    run = RunDir(model)
    if run.has_tokenizer:
        return load_tokenizer(str(run.tokenizer_dir), chat_template and str(chat_template))
    try:
        return load_tokenizer(resolve_model(model).path, chat_template and str(chat_template))
    except (FileNotFoundError, ValueError) as error:
        _fail(str(error))
    except OSError as error:
        _fail(f"{model}: cannot load this model's tokenizer ({_first_line(error)})")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; other than loopback only with --api-key."),
    port: int = typer.Option(8000, "--port", help="Port to listen on."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Where the database, uploads and runs live (default $TUNELAB_HOME or ~/.local/share/tunelab)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="TUNELAB_API_KEY", help="Bearer key required on every route but /health (or TUNELAB_API_KEY)."),
    max_upload_mb: float = typer.Option(512, "--max-upload-mb", help="Largest upload accepted; larger ones get 413."),
    alias: list[str] = typer.Option([], "--alias", help="NAME=MODEL: answer to model NAME (e.g. gpt-4o-mini-2024-07-18) with a local base model ('default', a directory, a .gguf). Repeatable."),
    max_jobs: int = typer.Option(1, "--max-jobs", min=1, help="Jobs trained at the same time."),
    launcher: Optional[str] = typer.Option(None, "--launcher", help="Start each job under this command, e.g. \"accelerate launch --multi_gpu --num_processes 8\" to train on every GPU."),
    dtype: str = typer.Option("auto", "--dtype", help="Number format of the models answering chat: auto (bf16 on a CPU or GPU with bf16 units, else fp32), fp32 (a batched greedy reply is then the same as one alone) or bf16."),
) -> None:
    """Serve OpenAI's fine-tuning API on this machine: files, jobs, models and chat completions."""
    import uvicorn

    from tunelab.server.app import ServerSettings, create_app
    from tunelab.core.files import OutputError, check_output_directory
    from tunelab.server.store import NewerDatabase

    if dtype not in ("auto", "fp32", "bf16"):
        _fail(f"--dtype {dtype!r}: expected auto, fp32 or bf16")
    if host not in LOOPBACK and not api_key:
        _fail(f"--host {host}: listening beyond this machine needs --api-key (or TUNELAB_API_KEY)")
    if launcher:
        try:
            launch_program = shlex.split(launcher)[0]
        except (ValueError, IndexError):
            _fail(f"--launcher {launcher!r}: not a command line")
        if not shutil.which(launch_program):
            _fail(f"--launcher {launcher!r}: {launch_program} is not a program on this machine's PATH")
    aliases = {}
    for entry in alias:
        name, _, spec = entry.partition("=")
        if not name or not spec:
            _fail(f"--alias {entry!r}: expected NAME=MODEL, e.g. gpt-4o-mini-2024-07-18=default")
        aliases[name] = spec
    home = data_dir or Path(os.environ.get("TUNELAB_HOME") or Path.home() / ".local" / "share" / "tunelab")
    try:
        check_output_directory(Path(home))  # read-only, not ours, or a file: said before the database is opened
        application = create_app(ServerSettings(Path(home), api_key or None, max_upload_mb, aliases, dtype))
    except (NewerDatabase, OutputError) as error:
        _fail(str(error))
    except (OSError, sqlite3.Error) as error:  # a data directory on a full disk
        _fail(f"{home}: the server cannot keep its database and files here ({error}); give a --data-dir it can write")
    console.print(f"tunelab serve: http://{host}:{port}/v1 · data in {home}"
                  + (" · key required" if api_key else " · no key (loopback only)")
                  + " · files, fine-tuning jobs, models, chat completions")
    # Jobs train in their own process, so requests are answered while a job trains; a worker that dies
    # (killed, out of memory) is started again, and resumes the job it had from its last checkpoint.
    worker = WorkerSupervisor([sys.executable, "-m", "tunelab.server.worker", str(home), "--max-jobs", str(max_jobs),
                               *(["--launcher", launcher] if launcher else [])])
    try:
        uvicorn.run(application, host=host, port=port, log_level="warning")
    finally:
        worker.stop()


class WorkerSupervisor:
    """The job worker's process, started again (after a second's pause) whenever it exits unasked."""

    def __init__(self, command: list[str]):
        import threading

        self.command, self.stopping, self.lock = command, threading.Event(), threading.Lock()
        self.process = subprocess.Popen(command)
        threading.Thread(target=self._supervise, daemon=True).start()

    def _supervise(self) -> None:
        while True:
            code = self.process.wait()
            if self.stopping.wait(1):
                return
            with self.lock:
                if self.stopping.is_set():
                    return
                console.print(f"tunelab serve: the job worker exited (status {code}); starting it again", markup=False)
                self.process = subprocess.Popen(self.command)

    def stop(self) -> None:
        with self.lock:
            self.stopping.set()
            self.process.terminate()
        self.process.wait(30)


@app.command()
def advise(
    data: Optional[Path] = typer.Option(None, "--data", help="Chat JSONL to measure: size, conflicts, form or facts."),
    answers: Optional[Path] = typer.Option(None, "--answers", help="YAML answers (tried_best_model, optimized_prompt, rag_would_solve, high_volume_narrow: yes/no/unknown; goal)."),
    eval_results: Optional[Path] = typer.Option(None, "--eval", help="results.json of `tunelab eval`: does few-shot prompting reach the fine-tune?"),
    volume: Optional[int] = typer.Option(None, "--volume", min=1, metavar="CALLS_PER_DAY", help="Calls a day: the break-even of a small fine-tune against a large prompted model (needs --data)."),
    model: str = typer.Option("default", "--model", help="The model you would fine-tune here: its tokenizer counts the data, its size scales the estimates."),
    as_json: bool = typer.Option(False, "--json", help="Print the advice as JSON."),
) -> None:
    """Should you fine-tune at all? The framework's questions (asked on a terminal, or from --answers), backed
    by what your data and evaluation measure; one recommendation with its reasons and next steps."""
    import sys
    from dataclasses import asdict

    from tunelab.advise.decide import Answers, Measurements, decide, measure_data, prompting_from_results, read_answers
    from tunelab.cli.advise import ask, show
    from tunelab.core.files import input_file_problem

    if volume and not data:
        _fail("--volume needs --data: the break-even counts the tokens of your examples")
    for path in (data, answers, eval_results):
        if path is not None and (problem := input_file_problem(path)):
            _fail(problem)
    try:
        chosen = read_answers(str(answers)) if answers else \
            ask(console) if sys.stdin.isatty() and not as_json else Answers()
        measured = measure_data(str(data), model, volume) if data else Measurements()
        if eval_results:
            measured.prompting = prompting_from_results(json.loads(eval_results.read_text(encoding="utf-8")))
    except (ValueError, OSError) as error:
        _fail(str(error))
    advice = decide(chosen, measured)
    if as_json:
        print(json.dumps({"recommendation": advice.recommendation, "confidence": advice.confidence,
                          "reasons": [asdict(r) for r in advice.reasons], "answers": asdict(chosen),
                          "measurements": measured.as_dict(), "next_steps": advice.next_steps}, indent=2))
        return
    show(console, advice, measured)


jobs_app = typer.Typer(help="Fine-tuning jobs, wherever they run: local runs, a `tunelab serve` (--remote URL) "
                            "or OpenAI (--openai), through one set of commands.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
REMOTE_OPTION = typer.Option(None, "--remote", help="URL of a server with OpenAI's API (default OPENAI_BASE_URL); without it or --openai, local runs.")
OPENAI_OPTION = typer.Option(False, "--openai", help="OpenAI itself (needs OPENAI_API_KEY).")
API_KEY_OPTION = typer.Option(None, "--api-key", help="Key for --remote or --openai (default OPENAI_API_KEY).")
JSON_OPTION = typer.Option(False, "--json", help="Print OpenAI's JSON shapes.")


def _remote_of(remote: Optional[str], use_openai: bool) -> Optional[str]:
    """The remote a jobs command talks to: --openai, --remote URL, OPENAI_BASE_URL, or none (local runs)."""
    if use_openai and remote:
        _fail("--openai and --remote name two different servers; give one")
    return "openai" if use_openai else remote or os.environ.get("OPENAI_BASE_URL") or None


def _id_table(*headers: str):
    """A table whose cells are never cut short (ids and model names are copied from it): the first column,
    the id (30 characters for a job), stays whole on one line; long names in the others wrap."""
    from rich.table import Table

    table = Table(box=None)
    table.add_column(headers[0], no_wrap=True, min_width=30)
    for header in headers[1:]:
        table.add_column(header, overflow="fold")
    return table


def _remote_client(remote: Optional[str], api_key: Optional[str]):
    from tunelab.remote.jobs import RemoteError, connect

    try:
        return connect(remote, api_key)
    except RemoteError as error:
        _fail(str(error))


def _remote_call(call, *args, **kwargs):
    from tunelab.remote.jobs import RemoteError, plainly

    try:
        return plainly(call, *args, **kwargs)
    except RemoteError as error:
        _fail(str(error))


@jobs_app.command("list")
def jobs_list(remote: Optional[str] = REMOTE_OPTION, use_openai: bool = OPENAI_OPTION,
              api_key: Optional[str] = API_KEY_OPTION,
              runs: Path = typer.Option(Path("runs"), "--runs", help="Where local runs live."),
              as_json: bool = JSON_OPTION) -> None:
    """Jobs, newest first, in one table: the local runs under --runs and, with --remote or --openai, the
    server's jobs. A remote job fetched into a local run is one row, with its run directory."""
    local = [dict(RunDir(path.parent).job(), run=str(path.parent)) for path in runs.glob("*/job.json")]
    remote = _remote_of(remote, use_openai)
    server = []
    if remote:
        client = _remote_client(remote, api_key)
        where = "openai" if remote == "openai" else client.base_url.host + (f":{client.base_url.port}" if client.base_url.port else "")
        server = [dict(job.model_dump(), where=where) for job in _remote_call(client.fine_tuning.jobs.list, limit=100).data]
    runs_of = {job["id"]: job["run"] for job in local}
    jobs = [dict(job, run=runs_of[job["id"]]) if job["id"] in runs_of else job for job in server]
    jobs += [dict(job, where="here") for job in local if job["id"] not in {j["id"] for j in server}]
    jobs.sort(key=lambda job: job.get("created_at") or 0, reverse=True)
    if as_json:  # OpenAI's job objects, with `where` (here, or the server) and `run` (a local copy) added
        print(json.dumps({"object": "list", "data": jobs}, indent=2))
        return
    with_runs = any(job.get("run") for job in jobs)
    table = _id_table("job", "where", "status", "model", *(["local run"] if with_runs else []))
    for job in jobs:
        model = job.get("fine_tuned_model") or f"{job.get('model') or ''} (base)"
        table.add_row(job["id"], job["where"], job["status"], model, *([job.get("run") or ""] if with_runs else []))
    console.print(table if jobs else "no jobs" + ("" if remote else f" under {runs}/ (for a server's: --remote URL or --openai)"))


def _local_run(job_id: str, remote: Optional[str]) -> Optional[RunDir]:
    """The local run a job id names (a run directory, or runs/ID), unless a remote was given."""
    if remote:
        return None
    found = next((RunDir(p) for p in (Path(job_id), Path("runs") / job_id) if RunDir(p).has_run()), None)
    if found is None and not os.environ.get("OPENAI_API_KEY"):
        _fail(f"{job_id}: no local run by that name (a run directory, or runs/{job_id}); for a remote job pass "
              f"--remote URL, or set OPENAI_API_KEY to ask OpenAI (--openai)")
    return found  # None: not a local run, and OPENAI_API_KEY is set, so OpenAI is asked


@jobs_app.command("show")
def jobs_show(job_id: str = typer.Argument(..., help="A job id, or a local run directory."),
              remote: Optional[str] = REMOTE_OPTION, use_openai: bool = OPENAI_OPTION,
              api_key: Optional[str] = API_KEY_OPTION) -> None:
    """One job as OpenAI's JSON (a local run's job record, or the server's job)."""
    remote = _remote_of(remote, use_openai)
    run = _local_run(job_id, remote)
    if run is not None:
        print(json.dumps(run.job(), indent=2))
        return
    client = _remote_client(remote, api_key)
    print(json.dumps(_remote_call(client.fine_tuning.jobs.retrieve, job_id).model_dump(), indent=2))


@jobs_app.command("events")
def jobs_events(job_id: str = typer.Argument(..., help="A job id, or a local run directory."),
                remote: Optional[str] = REMOTE_OPTION, use_openai: bool = OPENAI_OPTION,
                api_key: Optional[str] = API_KEY_OPTION, as_json: bool = JSON_OPTION) -> None:
    """A job's events, oldest first."""
    remote = _remote_of(remote, use_openai)
    run = _local_run(job_id, remote)
    if run is not None:
        events = run.events()
        if as_json:
            print(json.dumps({"object": "list", "data": events}, indent=2))
        for event in [] if as_json else events:
            console.print(f"{event.get('created_at', '')} {event.get('level', 'info'):7} {escape(event.get('message', ''))}")
        return
    client = _remote_client(remote, api_key)
    page = list(reversed(_remote_call(client.fine_tuning.jobs.list_events, job_id, limit=1000).data))
    if as_json:
        print(json.dumps({"object": "list", "data": [e.model_dump() for e in page]}, indent=2))
        return
    for event in page:
        console.print(f"{event.created_at} {event.level:7} {escape(event.message)}")


def _needs_remote(remote: Optional[str], what: str) -> str:
    """A server for commands that only a server's job has: the one given, else OpenAI if a key is set."""
    if not remote and not os.environ.get("OPENAI_API_KEY"):
        _fail(f"{what} a job on a server: pass --remote URL, or set OPENAI_API_KEY for OpenAI (a local run "
              "trains in the foreground: Ctrl-C stops it, `tunelab train --resume RUN` continues it)")
    return remote or "openai"


@jobs_app.command("watch")
def jobs_watch(job_id: str = typer.Argument(...), remote: Optional[str] = REMOTE_OPTION,
               use_openai: bool = OPENAI_OPTION, api_key: Optional[str] = API_KEY_OPTION) -> None:
    """Follow a job until it ends: step, losses and the server's estimated finish (Ctrl-C stops watching,
    not the job)."""
    from tunelab.remote.jobs import RemoteError, watch

    client = _remote_client(_needs_remote(_remote_of(remote, use_openai), "watch follows"), api_key)
    try:
        job = watch(client, job_id, Events(ConsoleEvents()))
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except RemoteError as error:
        _fail(str(error))
    console.print(f"{job.id}: {job.status}" + (f" → {job.fine_tuned_model}" if job.fine_tuned_model else "")
                  + (f" ({_job_error(job)})" if job.error else ""), soft_wrap=True, markup=False)


def _job_error(job) -> str:
    """OpenAI's error of a failed job: code, message and the parameter it concerns."""
    error = job.error
    return f"{error.code}: {error.message}" + (f"; param: {error.param}" if error.param else "")


def _job_action(action: str):
    def command(job_id: str = typer.Argument(...), remote: Optional[str] = REMOTE_OPTION,
                use_openai: bool = OPENAI_OPTION, api_key: Optional[str] = API_KEY_OPTION) -> None:
        client = _remote_client(_needs_remote(_remote_of(remote, use_openai), f"{action} acts on"), api_key)
        job = _remote_call(getattr(client.fine_tuning.jobs, action), job_id)
        if action == "cancel" and job.status != "cancelled":  # a training job stops after its current step
            console.print(f"{job.id}: cancellation requested; it stops after the current step (now {job.status})")
        else:
            console.print(f"{job.id}: {job.status}")
    command.__doc__ = {"cancel": "Cancel a job.", "pause": "Pause a running job (it keeps its checkpoint).",
                       "resume": "Resume a paused job."}[action]
    return command


for _action in ("cancel", "pause", "resume"):
    jobs_app.command(_action)(_job_action(_action))


migrate_app = typer.Typer(help="Move fine-tunes from a hosted service to an open model you run.", no_args_is_help=True)
app.add_typer(migrate_app, name="migrate")


@migrate_app.command("openai")
def migrate_openai(
    job: list[str] = typer.Option([], "--job", help="An OpenAI fine-tuning job to migrate (repeatable); without --job or --all, the jobs are listed."),
    every: bool = typer.Option(False, "--all", help="Migrate every succeeded job."),
    to: Optional[str] = typer.Option(None, "--to", help="The open model to train: a preset (its settings too), a model id or a directory (default: the largest permissively licensed preset that fits this machine; see `tunelab presets list`)."),
    remote: Optional[str] = typer.Option(None, "--remote", help="Train on this `tunelab serve` instead of here."),
    remote_key: Optional[str] = typer.Option(None, "--remote-api-key", help="Key for --remote."),
    out: Path = typer.Option(Path("migration"), "--out", help="Where each migration keeps its files, run, evaluation and report; a rerun continues there."),
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
        _fail(str(error))
    chosen = [j["id"] for j in jobs if j["status"] == "succeeded"] if every else job
    if not chosen:
        table = _id_table("job", "status", "base model", "fine-tune", "shuts down")
        for found in jobs:
            table.add_row(found["id"], found["status"], found["model"], found.get("fine_tuned_model") or "",
                          found["shutdown"] or "not announced")
        console.print(table if jobs else "no fine-tuning jobs on this account")
        console.print(f"OpenAI creates no new fine-tuning jobs from {NEW_JOBS_CLOSED}. Migrate one: "
                      "tunelab migrate openai --job ID [--to MODEL]", soft_wrap=True)
        return
    if to is None:
        import torch

        from tunelab.remote.migrate import suggest_open_model

        gpu_gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if best_device() == "cuda" else None
        base = next((j["model"] for j in jobs if j["id"] == chosen[0]), "the OpenAI model")
        suggestion = suggest_open_model(base, best_device(), gpu_gib)
        to = suggestion.preset.name
        console.print(f"--to not given: {suggestion.reason}", soft_wrap=True, markup=False)
    for job_id in chosen:
        try:
            report = migrate(client, Migration(job_id, to, out, remote, remote_key), Events(ConsoleEvents()))
        except (RemoteError, ValueError, OSError) as error:
            _fail(f"{job_id}: {error}")
        console.print(report.read_text(encoding="utf-8"), markup=False, soft_wrap=True)
        console.print(f"REPORT: {report}", markup=False, soft_wrap=True)


presets_app = typer.Typer(help="Bundled training presets: list them, copy one to edit.", no_args_is_help=True)
app.add_typer(presets_app, name="presets")


@presets_app.command("list")
def presets_list() -> None:
    """The bundled presets, with their model and method."""
    from rich.table import Table

    from tunelab.core.presets import list_presets

    wide = console.width >= 140  # names are copied from this table: they are never cut; the description
    table = Table(box=None)       # (what hardware it fits) is shown when there is room for it
    table.add_column("preset", no_wrap=True)
    table.add_column("model", no_wrap=True)
    for header in ("method", "size", "licence") + (("description",) if wide else ()):
        table.add_column(header)
    for preset in list_presets():
        table.add_row(preset.name, str(preset.settings.get("model", "")), str(preset.settings.get("method", "lora")),
                      f"{preset.parameters_billion:g}B", preset.licence, *([preset.description] if wide else []))
    console.print(table)
    console.print("Use one: [bold]tunelab train --preset NAME --data FILE[/], or copy it to edit: "
                  "[bold]tunelab presets copy NAME FILE[/]")


@presets_app.command("copy")
def presets_copy(
    name: str = typer.Argument(..., help="Preset name (see `tunelab presets list`)."),
    destination: Optional[Path] = typer.Argument(None, help="Where to write it (default NAME.yaml)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing file."),
) -> None:
    """Copy a preset to a YAML file you can edit and pass to `tunelab train --config`."""
    from tunelab.core.files import write_text_atomically
    from tunelab.core.presets import preset_path

    try:
        source = preset_path(name)
    except ValueError as error:
        _fail(str(error))
    destination = destination or Path(f"{name}.yaml")
    if destination.exists() and not force:
        _fail(f"{destination} already exists; pass --force to replace it")
    write_text_atomically(destination, source.read_text(encoding="utf-8"))
    console.print(f"{destination}: copied preset {name}; train with `tunelab train --config {destination} --data FILE`")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where the demo's run goes (replaced if it exists)."),
    n_epochs: int = typer.Option(None, "--n-epochs", help="Override the demo's epochs."),
) -> None:
    """The main job on the bundled example: validate → fine-tune the default model → evaluate → report."""
    from tunelab.cli.demo import run_demo

    try:
        run_demo(out, n_epochs=n_epochs)
    except Exception as error:  # the demo is for people: one clear line, then the trace for bug reports
        console.print_exception()
        _fail(str(error))


def run() -> None:
    """The `tunelab` entry point: the app, with a last line of defence against tracebacks.

    Every failure we foresee has its own message; anything else is a bug, reported in one line (the
    traceback with TUNELAB_DEBUG=1) rather than as a wall of frames.
    """
    configure_process()
    try:
        app()  # handles usage errors, Ctrl-C and exit codes itself, and leaves by SystemExit
    except Exception as error:  # noqa: BLE001 - the point of this handler
        if os.environ.get("TUNELAB_DEBUG") == "1":
            raise
        console.print(f"[bold red]error:[/] unexpected {type(error).__name__}: {escape(_first_line(error))} — this is a "
                      "bug in tunelab; rerun with TUNELAB_DEBUG=1 to see where, and report it", soft_wrap=True)
        sys.exit(2)


