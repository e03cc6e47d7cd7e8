"""The `tunelab` command. Every subcommand parses its arguments, calls one library function, and prints.

    tunelab demo
    tunelab train --data train.jsonl --validation valid.jsonl
    tunelab eval --model runs/ftjob-… --data test.jsonl --rubric rubric.yaml
    tunelab chat runs/ftjob-… "My order hasn't arrived."
    tunelab data validate train.jsonl --validation valid.jsonl
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from tunelab import __version__
from tunelab.console import console

# Quieter third-party output: our own progress bars say what is happening.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# peft asks transformers a deprecated question on every get_peft_model; nothing for the user to act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

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


@app.command()
def train(
    data: Optional[Path] = typer.Option(None, "--data", help="Training data: OpenAI chat JSONL."),
    validation: Optional[Path] = typer.Option(None, "--validation", help="Validation data (chat JSONL)."),
    model: Optional[str] = typer.Option(None, "--model", help="'default' (Gemma 3 270M), a model directory, a .gguf file, or a hub id."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (default runs/<job id>)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with these same settings; flags override it."),
    n_epochs: Optional[str] = typer.Option(None, "--n-epochs", help="Epochs, or 'auto' (OpenAI's rule: 3, adjusted for dataset size)."),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", help="Examples per step, or 'auto'."),
    learning_rate_multiplier: Optional[str] = typer.Option(None, "--learning-rate-multiplier", help="Multiplies the LoRA base rate 2e-4, or 'auto' (1)."),
    lora_r: Optional[int] = typer.Option(None, "--lora-r", help="LoRA rank (default 16)."),
    lora_alpha: Optional[int] = typer.Option(None, "--lora-alpha", help="LoRA alpha (default 32)."),
    max_length: Optional[int] = typer.Option(None, "--max-length", help="Truncate examples to this many tokens (default 1024)."),
    suffix: Optional[str] = typer.Option(None, "--suffix", help="Added to the fine-tuned model's name."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 42)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the finished job as JSON on stdout."),
) -> None:
    """Fine-tune a model with LoRA on chat data; writes a self-contained run directory."""
    from tunelab.config import TrainConfig
    from tunelab.data.chat import DataError
    from tunelab.train.local import train as run_training

    flags = dict(data=data and str(data), validation=validation and str(validation), model=model,
                 out=out and str(out), n_epochs=_int_or_auto(n_epochs), batch_size=_int_or_auto(batch_size),
                 learning_rate_multiplier=_float_or_auto(learning_rate_multiplier), lora_r=lora_r,
                 lora_alpha=lora_alpha, max_length=max_length, suffix=suffix, seed=seed)
    try:
        settings = TrainConfig.from_yaml(config, **flags) if config else TrainConfig(
            **{k: v for k, v in flags.items() if v is not None})
    except (ValueError, TypeError, OSError) as error:
        _fail(str(error))
    if not settings.data:
        _fail("--data is required (or a --config that sets `data`)")
    try:
        run_dir = run_training(settings, show_progress=not quiet)
    except DataError as error:
        _fail(str(error))
    if as_json:
        print((run_dir / "job.json").read_text())
    else:
        console.print(f"RUN: {run_dir}")


def _int_or_auto(value: str | None):
    if value is None or value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        _fail(f"expected a whole number or 'auto', got {value!r}")


def _float_or_auto(value: str | None):
    if value is None or value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        _fail(f"expected a number or 'auto', got {value!r}")


@app.command("eval")
def evaluate(
    model: str = typer.Option(..., "--model", help="A run directory (compares base vs fine-tuned) or a model spec."),
    data: Path = typer.Option(..., "--data", help="Held-out chat JSONL; each conversation's last assistant message is the reference."),
    rubric: Optional[Path] = typer.Option(None, "--rubric", help="YAML rubric of house-style checks (see examples/support/rubric.yaml)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (default RUN/eval)."),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", help="Token limit per reply."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Evaluate only the first N examples."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary scores as JSON on stdout."),
) -> None:
    """Generate with base and fine-tuned on held-out data, score, and write report.html + results.json."""
    from tunelab.data.chat import DataError
    from tunelab.eval.report import verdict_text
    from tunelab.eval.run import evaluate as run_evaluation

    try:
        out_dir = run_evaluation(model, str(data), out_dir=out and str(out), rubric=rubric and str(rubric),
                                 max_new_tokens=max_new_tokens, limit=limit, show_progress=not quiet)
    except (DataError, FileNotFoundError, ValueError) as error:
        _fail(str(error))
    results = json.loads((out_dir / "results.json").read_text())
    if as_json:
        print(json.dumps({"systems": results["systems"], "report": str(out_dir / "report.html")}, indent=2))
    else:
        console.print(verdict_text(results))
        console.print(f"REPORT: {out_dir / 'report.html'}")


@app.command()
def chat(
    model: str = typer.Argument(..., help="A run directory, or a model spec ('default', a path, a hub id)."),
    message: Optional[str] = typer.Argument(None, help="One message to answer; without it, an interactive chat."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Token limit per reply."),
    base: bool = typer.Option(False, "--base", help="With a run directory: answer with the base model (adapter off)."),
) -> None:
    """Chat with a fine-tuned run (or any model), using the chat template it was trained with."""
    from tunelab.models.generate import generate_replies, load_for_generation

    loaded = load_for_generation(model)
    messages = [{"role": "system", "content": system}] if system else []
    interactive = message is None
    while True:
        if interactive:
            try:
                message = console.input("[bold]you>[/] ")
            except (EOFError, KeyboardInterrupt):
                return
            if not message.strip():
                continue
        messages.append({"role": "user", "content": message})
        reply = generate_replies(loaded, [messages], max_new_tokens=max_new_tokens, use_adapter=not base)[0]
        messages.append({"role": "assistant", "content": reply.text})
        print(reply.text if not interactive else f"\n{reply.text}\n")
        if reply.finish_reason == "length":
            console.print(f"[yellow](stopped at the {max_new_tokens}-token limit)[/]")
        if not interactive:
            return


data_app = typer.Typer(help="Prepare chat data. So far: validate (format rules and quality warnings).",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("validate")
def data_validate(
    file: Path = typer.Argument(..., help="Chat JSONL to check."),
    validation: Optional[Path] = typer.Option(None, "--validation", help="Validation file: also checks overlap (leakage)."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 on warnings too."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON on stdout."),
) -> None:
    """Check a chat JSONL file: every format error OpenAI rejects, and the seeds' quality warnings, in one pass.

    Token statistics, truncation and cost estimates are not in this version yet.
    """
    from collections import defaultdict

    from tunelab.data.validate import validate_file

    report = validate_file(file, validation)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        grouped = defaultdict(list)
        for finding in report.findings:
            grouped[(finding.severity, finding.code)].append(finding)
        for (severity, code), findings in sorted(grouped.items()):
            lines = [str(f.line) for f in findings if f.line][:5]
            where = f" lines {', '.join(lines)}{' …' if len(findings) > 5 else ''}" if lines else ""
            colour = "red" if severity == "error" else "yellow"
            console.print(f"[{colour}]{severity}[/] {code} ×{len(findings)}{where}: {escape(findings[0].message)}",
                          soft_wrap=True)
        status = "no problems" if not report.findings else (
            f"{len(report.errors)} error(s), {len(report.findings) - len(report.errors)} warning(s)")
        console.print(f"{file}: {report.examples} examples, {status}")
    if report.errors or (strict and report.findings):
        raise typer.Exit(1)


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Where the demo's run goes (replaced if it exists)."),
    n_epochs: int = typer.Option(None, "--n-epochs", help="Override the demo's epochs."),
) -> None:
    """The main job on the bundled example: validate → fine-tune the default model → evaluate → report."""
    from tunelab.demo import run_demo

    try:
        run_demo(out, n_epochs=n_epochs)
    except Exception as error:  # the demo is for people: one clear line, then the trace for bug reports
        console.print_exception()
        _fail(str(error))


if __name__ == "__main__":
    sys.exit(app())
