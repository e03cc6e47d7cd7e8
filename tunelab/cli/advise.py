"""`tunelab advise`: should you fine-tune at all? Ask the framework's questions in order (or read them from
--answers), measure the data and an evaluation, and print one recommendation with its reasons.

    tunelab advise --data train.jsonl --answers answers.yaml --volume 5000
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from tunelab.advise.decide import BAD_GOALS, GOOD_GOALS, QUESTIONS, Advice, Answers, Measurements
from tunelab.advise.volume import days_text
from tunelab.cli.common import examples, fail, out

EXAMPLES = examples("tunelab advise",
                    "tunelab advise --data train.jsonl --answers answers.yaml",
                    "tunelab advise --data train.jsonl --volume 5000 --json",
                    "tunelab advise --data train.jsonl --eval runs/ftjob-abc123/eval/results.json")


def advise(
    data: Optional[Path] = typer.Option(None, "--data", "-d", metavar="FILE", help="Chat JSONL to measure: size, conflicts, form or facts."),
    answers: Optional[Path] = typer.Option(None, "--answers", metavar="FILE", help="YAML answers (tried_best_model, optimized_prompt, rag_would_solve, high_volume_narrow: yes, no or unknown; goal)."),
    eval_results: Optional[Path] = typer.Option(None, "--eval", metavar="RESULTS.json", help="results.json of `tunelab eval`: does few-shot prompting reach the fine-tune?"),
    volume: Optional[int] = typer.Option(None, "--volume", min=1, metavar="CALLS_PER_DAY", help="Calls a day: the break-even of a small fine-tune against a large prompted model (needs --data)."),
    model: str = typer.Option("default", "--model", "-m", metavar="MODEL", help="The model you would fine-tune here: its tokenizer counts the data, its size scales the estimates."),
    as_json: bool = typer.Option(False, "--json", help="Print the advice as JSON."),
) -> None:
    """Should you fine-tune at all? The framework's questions (asked on a terminal, or from --answers), backed
    by what your data and evaluation measure; one recommendation with its reasons and next steps. It says
    fine_tune only when every step is passed on evidence."""
    from tunelab.advise.decide import decide, measure_data, prompting_from_results, read_answers
    from tunelab.core.files import input_file_problem

    if volume and not data:
        fail("--volume needs --data: the break-even counts the tokens of your examples", 2)
    for path in (data, answers, eval_results):
        if path is not None and (problem := input_file_problem(path)):
            fail(f"{path}: {problem}")
    try:
        chosen = read_answers(str(answers)) if answers else \
            ask(out) if sys.stdin.isatty() and not as_json else Answers()
        measured = measure_data(str(data), model, volume) if data else Measurements()
        if eval_results:
            measured.prompting = prompting_from_results(json.loads(eval_results.read_text(encoding="utf-8")))
    except (ValueError, OSError) as error:
        fail(str(error))
    advice = decide(chosen, measured)
    if as_json:
        print(json.dumps({"recommendation": advice.recommendation, "confidence": advice.confidence,
                          "reasons": [asdict(r) for r in advice.reasons], "answers": asdict(chosen),
                          "measurements": measured.as_dict(), "next_steps": advice.next_steps}, indent=2))
        return
    show(out, advice, measured)


def ask(console) -> Answers:
    """The framework's questions on the terminal; Enter alone (or anything but yes/no) is "unknown"."""
    answers = Answers()
    for key, question in QUESTIONS.items():
        console.print(question, markup=False, highlight=False)
        reply = input("  [yes/no/unknown] ").strip().lower()
        setattr(answers, key, {"y": "yes", "yes": "yes", "n": "no", "no": "no"}.get(reply, "unknown"))
    goals = list(GOOD_GOALS) + list(BAD_GOALS)
    console.print("What do you want fine-tuning to give you?")
    for number, goal in enumerate(goals, 1):
        console.print(f"  {number}. {({**GOOD_GOALS, **BAD_GOALS})[goal]}", markup=False)
    reply = input(f"  [1-{len(goals)}, Enter: unknown] ").strip()
    answers.goal = goals[int(reply) - 1] if reply.isdigit() and 1 <= int(reply) <= len(goals) else "unknown"
    return answers


def show(console, advice: Advice, measured: Measurements) -> None:
    if measured.examples is not None:
        show_measurements(console, measured)
    console.print(f"\nRecommendation: [bold]{advice.recommendation}[/] (confidence {advice.confidence:.0%})")
    for reason in advice.reasons:
        console.print(f"  {reason.step}: {reason.finding} — {reason.evidence}", markup=False, highlight=False)
    console.print("Next:")
    for step in advice.next_steps:
        console.print(f"  {step}", markup=False, highlight=False)


def show_measurements(console, measured: Measurements) -> None:
    say = lambda text: console.print(text, markup=False, highlight=False)  # noqa: E731 - plain lines
    say(f"Measured: {measured.examples} examples, {measured.errors} with errors, {measured.conflicting} conflicting, "
        f"{measured.duplicates} duplicates")
    if form := measured.form:
        say(f"  form or facts: new names, numbers and dates are {form.new_fact_share:.0%} of reply words; "
            f"replies open with '{form.shared_opening}' in {form.shared_opening_share:.0%}, close with "
            f"'{form.shared_closing}' in {form.shared_closing_share:.0%}; JSON {form.json_share:.0%}")
    if training := measured.training:
        local, hosted = training["local"], training["openai"]
        say(f"  training: about {local['seconds'] / 60:.0f} min here ({local['model']}, {local['n_epochs']} epochs of "
            f"{local['tokens_per_epoch']:,} tokens; {local['throughput_source']}) · ${hosted['usd']:,.2f} at OpenAI "
            f"({hosted['model']}, {hosted['n_epochs']} epochs, prices as of {hosted['prices_as_of']})")
    if volume := measured.volume:
        tokens = volume.tokens
        table = Table(title=f"{volume.calls_per_day:,} calls a day, each {tokens.input:.0f} tokens in and "
                            f"{tokens.output:.0f} out (prices as of {volume.prices_as_of})", title_justify="left")
        table.add_column("model")
        for column in ("per day", "training", "pays back in"):
            table.add_column(column, justify="right")
        notes = [volume.prompted.note]
        table.add_row(f"{volume.prompted.name}¹", f"${volume.prompted.usd_per_day:,.2f}", "—", "—")
        for number, option in enumerate(volume.fine_tuned, 2):
            if option.usd_per_day is None:  # a local model: hours of a machine, not dollars
                training = f"~{option.training_seconds / 60:.0f} min" if option.training_seconds else "—"
                table.add_row(f"{option.name}{SUPERSCRIPTS[number]}", f"{option.cpu_hours_per_day:g} CPU-hours",
                              training, "—")
            else:
                payback = days_text(option.days_to_pay_back) if option.days_to_pay_back is not None else "never"
                table.add_row(f"{option.name}{SUPERSCRIPTS[number]}", f"${option.usd_per_day:,.2f}",
                              f"${option.training_usd:,.2f}", payback)
            notes.append(option.note)
        console.print(table)
        for number, note in enumerate(notes, 1):
            say(f"  {SUPERSCRIPTS[number]} {note}")


SUPERSCRIPTS = " ¹²³⁴⁵⁶⁷⁸⁹"
