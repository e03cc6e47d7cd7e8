"""`tunelab eval`: base vs few-shot base vs fine-tune (and any --compare model) on held-out data.

    tunelab eval runs/ftjob-… --data data/test.jsonl --rubric rubric.yaml
    tunelab eval Qwen/Qwen2.5-0.5B-Instruct --data data/test.jsonl --fewshot-from data/train.jsonl
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import typer

from tunelab.cli.common import examples, fail, first_line, say
from tunelab.cli.console import ConsoleEvents
from tunelab.core.events import Events

EXAMPLES = examples("tunelab eval runs/ftjob-abc123 --data data/test.jsonl",
                    "tunelab eval runs/ftjob-abc123 --data data/test.jsonl --rubric rubric.yaml",
                    "tunelab eval runs/ftjob-abc123 --data tasks.jsonl --grader grader.json",
                    "tunelab eval default --data data/test.jsonl --fewshot-from data/train.jsonl")

SCORERS = "exact_match, rubric, rouge_l, chrf, semantic_similarity, json_valid, json_schema, tool_call, ended_turn, length"


def evaluate(
    model: Optional[str] = typer.Argument(None, metavar="RUN", help="A run directory (base vs fine-tuned vs few-shot base), or a model ('default', a directory, a .gguf, a hub id)."),
    data: Path = typer.Option(..., "--data", "-d", metavar="FILE", help="Held-out chat JSONL (never trained on; each last assistant message is the reference), or reinforcement tasks with --grader."),
    model_option: Optional[str] = typer.Option(None, "--model", "-m", hidden=True),
    base: Optional[str] = typer.Option(None, "--base", metavar="MODEL", help="The base model to compare with, when RUN is not a run (e.g. a merged export)."),
    fewshot: Optional[int] = typer.Option(None, "--fewshot", metavar="N", help="Shots for the prompted baseline (default 3 when the training file is known; 0: none)."),
    fewshot_from: Optional[Path] = typer.Option(None, "--fewshot-from", metavar="FILE", help="Training JSONL to draw shots from (default: the run's own)."),
    scorers: Optional[str] = typer.Option(None, "--scorers", metavar="A,B", help=f"Comma-separated: {SCORERS} (default: chosen from the data)."),
    rubric: Optional[Path] = typer.Option(None, "--rubric", metavar="FILE", help="YAML rubric of house-style checks (see tunelab/examples/support/rubric.yaml)."),
    schema: Optional[Path] = typer.Option(None, "--schema", metavar="FILE", help="JSON Schema for json_schema (default: inferred from the references)."),
    grader: Optional[Path] = typer.Option(None, "--grader", metavar="FILE", help="OpenAI's grader JSON (string_check, text_similarity, score_model, python, multi, …): its reward as a scorer."),
    grader_url: Optional[str] = typer.Option(None, "--grader-url", metavar="URL", help="Where a model grader's plain model name is asked (default: OpenAI)."),
    judge: Optional[str] = typer.Option(None, "--judge", metavar="MODEL[@URL]", help="An OpenAI-compatible judge: adds the judge score and pairwise comparisons."),
    compare: list[str] = typer.Option([], "--compare", metavar="MODEL@URL", help="An OpenAI-compatible model to compare with (repeatable; MODEL alone: OpenAI)."),
    forgetting: str = typer.Option("auto", "--forgetting", metavar="auto|off|FILE", help="auto (bundled general text and probes), off, or a JSONL file of your own probes added to them."),
    slice_by: Optional[str] = typer.Option(None, "--slice-by", metavar="FIELD", help="Metadata field to slice results by (default: metadata.tags)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR", help="Output directory (default RUN/eval); replies cached there are reused."),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens", metavar="N", help="Token limit per reply (default 1.5 × the longest reference)."),
    temperature: float = typer.Option(0.0, "--temperature", min=0.0, max=2.0, metavar="X", help="0: greedy replies; above 0, sampled with --seed."),
    top_p: float = typer.Option(1.0, "--top-p", min=0.0, max=1.0, metavar="X", help="Nucleus sampling: keep the most likely tokens up to this probability (with --temperature)."),
    seed: int = typer.Option(42, "--seed", metavar="N", help="Seed for sampled replies: the same seed gives the same replies."),
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = typer.Option("auto", "--dtype", help="Number format of local models: auto (bf16 on a CPU or GPU with bf16 units, else fp32)."),
    limit: Optional[int] = typer.Option(None, "--limit", metavar="N", help="Evaluate only the first N examples."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    as_json: bool = typer.Option(False, "--json", help="Print results.json on stdout."),
) -> None:
    """Compare base, few-shot base, fine-tuned and --compare models on held-out data with intervals and paired
    tests, check for forgetting, and write report.html + results.json."""
    if model and model_option and model != model_option:
        fail(f"{model} and --model {model_option}: give the run or model once", 2)
    model = model or model_option
    if not model:
        fail("give the run (or model) to evaluate: tunelab eval RUN --data FILE", 2)
    if top_p == 0:
        fail("--top-p: 0.0 keeps no token; give a probability above 0 (1 keeps them all)", 2)
    from tunelab.models.resolve import ModelNotFound, check_model

    try:
        check_model(model)  # a mistyped run or model is said at once, before the data is read
    except ModelNotFound as error:
        fail(str(error))
    from tunelab.conversation.problems import DataError
    from tunelab.eval.run import EvalConfig
    from tunelab.eval.run import evaluate as run_evaluation
    from tunelab.models.endpoint import EndpointError

    config = EvalConfig(model=model, data=str(data), base=base, fewshot=fewshot,
                        fewshot_from=fewshot_from and str(fewshot_from),
                        scorers=[s.strip() for s in scorers.split(",") if s.strip()] if scorers else None,
                        rubric=rubric and str(rubric), schema=schema and str(schema), judge=judge, compare=compare,
                        grader=grader and str(grader), grader_url=grader_url,
                        forgetting=forgetting, slice_by=slice_by, out=out and str(out), max_new_tokens=max_new_tokens,
                        dtype=dtype, temperature=temperature, top_p=top_p, seed=seed, limit=limit)
    try:
        out_dir = run_evaluation(config, Events(ConsoleEvents(progress=not quiet and not as_json)))
    except (DataError, FileNotFoundError, ValueError, EndpointError) as error:
        fail(str(error))
    except OSError as error:
        fail(f"{error.filename or model}: {error.strerror or first_line(error)}")
    results_text = (out_dir / "results.json").read_text()
    if as_json:
        print(results_text)
    else:
        say(json.loads(results_text)["verdict"])
        say(f"REPORT: {out_dir / 'report.html'}")
