"""`tunelab data`: convert, validate, stats, split and render chat data. Reports go to stdout; progress to stderr.

    tunelab data convert raw.csv --out all.jsonl --system "You are…"
    tunelab data split all.jsonl --out data/
    tunelab data validate data/train.jsonl --validation data/test.jsonl
    tunelab data stats data/train.jsonl --target openai:gpt-4o-mini
    tunelab data render data/train.jsonl --limit 2
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import typer
from rich.markup import escape

from tunelab.cli.common import CONTEXT, duration_text, examples, fail, first_line, out, say
from tunelab.cli.console import ConsoleEvents
from tunelab.core.events import Events
from tunelab.runs.rundir import RunDir

data_app = typer.Typer(help="Prepare chat data: convert, validate, stats, split, render.", no_args_is_help=True,
                       context_settings=CONTEXT, rich_markup_mode=None,
                       epilog=examples("tunelab data convert raw.csv --out all.jsonl", "tunelab data split all.jsonl --out data/",
                                       "tunelab data validate data/train.jsonl"))

MODEL_HELP = "Count tokens as this local model will: 'default', a model directory, or a .gguf file."
TARGET_HELP = "Count tokens and cost for OpenAI instead, e.g. openai:gpt-4o-mini."
TEMPLATE_HELP = "A Jinja chat template file, for a model that has none of its own."
MAX_TOKENS_HELP = "Token limit per example (default: what training cuts at: 1024 locally, OpenAI's limit)."
JSON_HELP = "Print the report as JSON on stdout."


def _check_data(file: Path, validation: Optional[Path], model: str, target: Optional[str],
                max_tokens: Optional[int], chat_template: Optional[Path] = None):
    """Validate with token counts, showing progress; the shared core of `validate` and `stats`."""
    from tunelab.core.files import input_file_problem
    from tunelab.data.tokens import token_counter
    from tunelab.data.validate import validate_file

    for path in (file, validation):
        if path is not None and input_file_problem(path):
            fail(f"{path}: {input_file_problem(path)}")
    try:
        counter = None if model == "none" and not target else token_counter(model, target, chat_template)
    except (ValueError, FileNotFoundError) as error:
        fail(str(error))
    except OSError as error:
        fail(f"{model}: cannot load this model's tokenizer ({first_line(error)})")
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
        out.print(f"[{colour}]{severity}:[/] {escape(place)}: {escape(first.message)} {escape(f'[{code}]')}{more}")


def _print_stats(report, histogram: bool = False) -> None:
    stats = report.stats
    tokens = stats.get("tokens")
    if stats.get("kind") == "preference":
        out.print(f"[bold]{escape(str(report.file))}[/]: {stats['examples']} preference pairs "
                  f"({stats.get('valid_examples', 0)} valid; the preferred output the longer in "
                  f"{stats['preferred_longer']})")
        rows = [("preferred output, characters", stats.get("preferred_chars")),
                ("non-preferred output, characters", stats.get("non_preferred_chars"))]
        if tokens:
            rows += [("prompt tokens", tokens["prompt"]), ("preferred output tokens", tokens["preferred"]),
                     ("non-preferred output tokens", tokens["non_preferred"]),
                     ("tokens per pair (both sequences)", tokens["per_example"])]
    else:
        out.print(f"[bold]{escape(str(report.file))}[/]: {stats['examples']} examples ({stats.get('valid_examples', 0)} "
                  f"valid, {stats['multi_turn']} multi-turn)")
        rows = [("assistant reply, characters", stats.get("assistant_reply_chars"))]
        if tokens:
            rows += [("tokens per example", tokens["per_example"]), ("trained tokens per example", tokens["trained_per_example"])]
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for column in ("", "min", "mean", "p50", "p90", "p95", "max"):
        table.add_column(column, justify="right" if column else "left")
    for name, values in rows:
        if values:
            table.add_row(name, *(str(values[key]) for key in ("min", "mean", "p50", "p90", "p95", "max")))
    out.print(table)
    if tokens:
        label = tokens["counted_with"] + ("" if tokens["exact"] else " [yellow](estimate)[/]")
        out.print(f"tokens: {tokens['total']:,} in all, {tokens['trained']:,} trained on — counted with {label}")
        if tokens["examples_over_limit"]:
            out.print(f"[yellow]{tokens['examples_over_limit']} example(s) over the {tokens['limit']}-token limit: "
                      f"{tokens['tokens_cut']:,} tokens would be cut[/]")
        if histogram and report.token_lengths:
            _print_histogram(report.token_lengths)
    cost = report.cost
    if cost and cost["backend"] == "openai":
        out.print(f"cost on OpenAI ({cost['model']}): {cost['n_epochs']} epochs × {cost['tokens_per_epoch']:,} "
                  f"tokens = {cost['billed_tokens']:,} billed tokens ≈ [bold]${cost['usd']:,.2f}[/] at "
                  f"${cost['usd_per_million_tokens']}/1M (prices as of {cost['prices_as_of']}; check current prices)")
    elif cost:
        out.print(f"local training ({cost['model']}): {cost['n_epochs']} epochs × {cost['tokens_per_epoch']:,} tokens "
                  f"≈ [bold]{duration_text(cost['seconds'])}[/] at ~{cost['tokens_per_second']:.0f} tokens/s "
                  f"({cost['throughput_source']}; a GPU is far faster)")


def _print_histogram(values, bins: int = 10) -> None:
    low, high = min(values), max(values)
    width = max(1, -(-(high - low + 1) // bins))
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, (value - low) // width)] += 1
    peak = max(counts)
    say("tokens per example:")
    for index, count in enumerate(counts):
        start = low + index * width
        say(f"  {start:>7,}–{start + width - 1:<7,} {'█' * round(40 * count / peak):<40} {count:,}")


@data_app.command("validate", short_help="Every error and warning in one pass, with cost.", epilog=examples("tunelab data validate data/train.jsonl --validation data/valid.jsonl",
                                              "tunelab data validate train.jsonl --target openai:gpt-4o-mini --json"))
def data_validate(
    file: Path = typer.Argument(..., metavar="FILE", help="Chat JSONL to check."),
    validation: Optional[Path] = typer.Option(None, "--validation", metavar="FILE", help="Validation file: also checks overlap (leakage)."),
    model: str = typer.Option("default", "--model", "-m", metavar="MODEL", help=MODEL_HELP + " 'none' skips token counts."),
    target: Optional[str] = typer.Option(None, "--target", metavar="openai:MODEL", help=TARGET_HELP),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", metavar="N", help=MAX_TOKENS_HELP),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", metavar="FILE", help=TEMPLATE_HELP),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 on warnings too."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Check a chat JSONL file: every format error OpenAI rejects, the recommended quality warnings, duplicates,
    leakage and truncation, all in one pass; then token statistics and the cost of training on it. Exits 1 on
    errors (and with --strict on warnings)."""
    report = _check_data(file, validation, model, target, max_tokens, chat_template)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print_findings(report)
        if report.stats:
            _print_stats(report)
        status = "no problems" if not report.findings else (
            f"{len(report.errors)} error(s), {len(report.findings) - len(report.errors)} warning(s)")
        say(f"{file}: {report.examples} examples, {status}")
    if report.errors or (strict and report.findings):
        raise typer.Exit(1)


@data_app.command("stats", short_help="Token statistics and the cost of training.", epilog=examples("tunelab data stats data/train.jsonl",
                                           "tunelab data stats train.jsonl --target openai:gpt-4.1-mini --json"))
def data_stats(
    file: Path = typer.Argument(..., metavar="FILE", help="Chat JSONL."),
    model: str = typer.Option("default", "--model", "-m", metavar="MODEL", help=MODEL_HELP),
    target: Optional[str] = typer.Option(None, "--target", metavar="openai:MODEL", help=TARGET_HELP),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", metavar="N", help=MAX_TOKENS_HELP),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", metavar="FILE", help=TEMPLATE_HELP),
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
        fail(f"{where}: {first.message} — {len(report.errors)} format error(s) in all, and those lines are not counted; "
             f"`tunelab data validate {file}` lists them")


@data_app.command("convert", short_help="CSV, Alpaca, ShareGPT, preference pairs → OpenAI JSONL.", epilog=examples(
    "tunelab data convert raw.csv --out all.jsonl --system \"You are an agent.\"",
    "tunelab data convert pairs.csv --out all.jsonl --input-column question \\",
    "  --output-column answer --metadata-column tags=category --encoding latin-1",
    "tunelab data convert alpaca.json --out all.jsonl --format alpaca",
    "tunelab data convert trl_pairs.jsonl --out pairs.jsonl --format trl"))
def data_convert(
    source: Path = typer.Argument(..., metavar="SOURCE", help="CSV, JSONL or JSON list to convert."),
    out_file: Path = typer.Option(..., "--out", "-o", metavar="FILE", help="Chat JSONL to write."),
    fmt: Literal["auto", "openai", "input-output", "alpaca", "sharegpt", "trl"] = typer.Option(
        "auto", "--format", help="The source's shape; auto looks at the first record. trl: prompt/completion, "
        "or preference pairs prompt/chosen/rejected; alpaca or sharegpt with chosen/rejected, openai with input "
        "and outputs: preference pairs too."),
    system: Optional[str] = typer.Option(None, "--system", metavar="TEXT", help="System prompt for every conversation that has none."),
    input_column: str = typer.Option("input", "--input-column", metavar="NAME", help="input-output: the prompt's column or key."),
    output_column: str = typer.Option("ideal_output", "--output-column", metavar="NAME", help="input-output: the reply's column or key."),
    metadata_column: list[str] = typer.Option([], "--metadata-column", metavar="[KEY=]COLUMN", help="Carry this column into each conversation's `metadata` (as KEY; a column named tags is split on commas into a list). Repeatable."),
    encoding: str = typer.Option("utf-8", "--encoding", metavar="NAME", help="The source's text encoding, e.g. latin-1 or cp1252."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace the output file if it exists."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Convert input/ideal_output pairs, TRL's prompt/completion, Alpaca or ShareGPT into OpenAI chat JSONL,
    and preference pairs (TRL's prompt/chosen/rejected, LLaMA-Factory's ranking data) into OpenAI's preference
    JSONL; says what it dropped. `metadata` (e.g. tags, which `tunelab eval` slices results by) is carried
    through."""
    from tunelab.data.formats import ConversionError, convert_file, metadata_columns

    try:
        report = convert_file(source, out_file, fmt, system, input_column, output_column, overwrite=force,
                              encoding=encoding, metadata=metadata_columns(metadata_column))
    except ConversionError as error:
        fail(str(error))
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        noun = "preference pairs" if report.pairs else "conversations"
        written = f"→ {out_file}: {report.written} {noun} written" if report.written else "→ nothing written"
        say(f"{source} ({report.format}) {written}, {len(report.dropped)} dropped")
        _print_counted("dropped", report.dropped_by_reason(), report.dropped)
        _print_counted("not carried", report.not_carried_by_what(), report.not_carried)
    if report.written == 0:
        fail(f"{source}: no record could be converted, so {out_file} was not written")
    if not as_json:
        say(f"next: tunelab data validate {out_file}")


def _print_counted(label: str, counts, items: list[tuple[int, str]]) -> None:
    """One line per reason: how many, the first lines, and the reason."""
    for reason, count in counts.most_common():
        lines = [str(line) for line, why in items if why == reason][:5]
        out.print(f"  [yellow]{label} ×{count}[/] (line{'s' if count > 1 else ''} {', '.join(lines)}"
                  f"{' …' if count > 5 else ''}): {escape(reason)}")


@data_app.command("split", short_help="A held-out test split, nothing on both sides.", epilog=examples("tunelab data split all.jsonl --out data/",
                                           "tunelab data split all.jsonl --out data/ --test-size 50 --seed 7"))
def data_split(
    file: Path = typer.Argument(..., metavar="FILE", help="Chat JSONL to split."),
    out_dir: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="Writes train.jsonl and test.jsonl here."),
    test_size: float = typer.Option(0.2, "--test-size", metavar="X", help="Held-out share (0.2) or count (50)."),
    seed: int = typer.Option(42, "--seed", metavar="N", help="Shuffle seed."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace existing train.jsonl and test.jsonl."),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Held-out split, de-duplicated first and grouped by prompt, so nothing lands on both sides. The test
    split is for `tunelab eval` only; validation during training comes from the training split
    (`tunelab train --data DIR/train.jsonl --validation-split 0.1`)."""
    from tunelab.conversation.problems import DataError
    from tunelab.data.split import split_file

    try:
        report = split_file(file, out_dir, test_size, seed, overwrite=force)
    except (DataError, ValueError, FileExistsError) as error:
        fail(str(error))
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        say(f"{report.train}: {report.train_examples} conversations; {report.test}: {report.test_examples}"
            f" ({report.duplicates_removed} duplicate(s) removed first, {report.prompt_groups} distinct prompts)")
        say(f"next: tunelab train --data {report.train} --validation-split 0.1, then "
            f"tunelab eval runs/RUN --data {report.test}")


@data_app.command("render", short_help="Show which tokens are trained on.", epilog=examples("tunelab data render data/train.jsonl --limit 2",
                                            "tunelab data render train.jsonl --line 17 --model runs/ftjob-abc123 --plain"))
def data_render(
    file: Path = typer.Argument(..., metavar="FILE", help="Chat JSONL to show."),
    model: str = typer.Option("default", "--model", "-m", metavar="MODEL", help="Whose chat template and tokenizer: 'default', a model directory or a run directory."),
    line: Optional[int] = typer.Option(None, "--line", metavar="N", help="Show the example on this line of FILE."),
    limit: int = typer.Option(3, "--limit", metavar="N", help="How many examples to show (from the start, or from --line)."),
    plain: bool = typer.Option(False, "--plain", help="No colour: trained text is wrapped in ⟦ ⟧."),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", metavar="FILE", help=TEMPLATE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print each example's token counts and its text in trained and untrained runs as JSON."),
) -> None:
    """Show examples as the model is trained on them: trained tokens green, context dim."""
    from tunelab.cli.console import mask_markup
    from tunelab.conversation.problems import DataError
    from tunelab.conversation.reader import read_numbered_conversations
    from tunelab.conversation.render import TemplateMismatch, render_conversation, show_mask, trained_runs, trained_view

    try:
        numbered = read_numbered_conversations(file)
    except DataError as error:
        fail(str(error))
    if line is not None:
        numbered = [(n, c) for n, c in numbered if n >= line]
        if not numbered or numbered[0][0] != line:
            fail(f"{file}:{line}: no conversation on that line")
    tokenizer = _tokenizer_for(model, chat_template)
    shown = []
    if not plain and not as_json:
        out.print("[bold green]trained[/] · [dim]context (no loss)[/]")
    for number, conversation in numbered[:limit]:
        try:
            if as_json:
                shown.append(trained_view(tokenizer, number, conversation))
                continue
            example = render_conversation(tokenizer, conversation["messages"], tools=conversation.get("tools"))
        except TemplateMismatch as error:
            fail(f"{file}:{number}: {error}")
        header = f"{file}:{number} · {len(example.input_ids)} tokens, {example.trained_tokens} trained"
        if plain:
            print(f"--- {header}")
            print(show_mask(tokenizer, example))
        else:
            out.rule(escape(header))
            out.print(mask_markup(trained_runs(tokenizer, example)))
    if as_json:
        print(json.dumps({"file": str(file), "examples": shown}, indent=2, ensure_ascii=False))


def _tokenizer_for(model: str, chat_template: Optional[Path] = None):
    """The tokenizer (with chat template) of a model spec or of a run directory."""
    from tunelab.models.resolve import load_tokenizer, resolve_model

    run = RunDir(model)
    if run.has_tokenizer:
        return load_tokenizer(str(run.tokenizer_dir), chat_template and str(chat_template))
    try:
        return load_tokenizer(resolve_model(model).path, chat_template and str(chat_template))
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    except OSError as error:
        fail(f"{model}: cannot load this model's tokenizer ({first_line(error)})")
