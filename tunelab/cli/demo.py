"""The main job, end to end on the bundled example (`make demo` / `tunelab demo`):

0. should Brightlane fine-tune at all? `tunelab advise` on the training set with the team's answers
   (`examples/support/advise.yaml`) and its volume;
1. validate tunelab/examples/support/train.jsonl and test.jsonl with `tunelab data validate` (format, quality, and
   no held-out prompt in the training set);
2. fine-tune the default model (Gemma 3 270M) with LoRA on the training set (a tenth of it held out for the
   validation loss; the test set is for step 3 alone);
3. evaluate on the held-out set: the base model, the base model prompted with 3 training examples, and the
   fine-tune, scored with the house-style rubric and reference similarity, with intervals and paired tests,
   and the forgetting check on general text and probes;
4. print the verdict, the time each stage took, and `REPORT: <path>`.

The demo's settings are chosen to finish in minutes on a two-core CPU without AVX-512 (about 80–100
training tokens/s there): one epoch at batch size 4 and twice the base learning rate, which teaches the
house style in 40 updates. `auto` settings (3 epochs) give a better model at three times the cost.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Optional

import typer

from tunelab.cli.common import examples, fail
from tunelab.cli.console import ConsoleEvents, console
from tunelab.core.events import Events
from tunelab.runs.rundir import RunDir

# Package data, so the demo runs from an installed package as well as from a checkout.
EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "examples" / "support"
DEMO_SETTINGS = dict(n_epochs=1, batch_size=4, learning_rate_multiplier=2.0)
DEMO_CALLS_PER_DAY = 5_000  # Brightlane's support messages a day (see advise.yaml)


EXAMPLES = examples("tunelab demo", "tunelab demo --out runs/my-demo")


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", metavar="DIR", help="Where the demo's run goes (replaced if it exists)."),
    n_epochs: Optional[int] = typer.Option(None, "--n-epochs", metavar="N", help="Override the demo's epochs."),
) -> None:
    """The main job on the bundled example: advise → validate → fine-tune the default model → evaluate → report."""
    try:
        run_demo(out, n_epochs=n_epochs)
    except Exception as error:  # the demo is for people: one clear line, then the trace for bug reports
        console.print_exception()
        fail(str(error))


def run_demo(out: Path, n_epochs: int | None = None) -> Path:
    """Run the whole demo; returns the report's path."""
    from tunelab.core.process import keep_freed_memory
    from tunelab.core.settings import TrainConfig
    from tunelab.eval.run import EvalConfig, evaluate
    from tunelab.models.resolve import DEFAULT_MODEL, cache_dir, resolve_model
    from tunelab.train.local import train

    started = time.monotonic()
    events = Events(ConsoleEvents())
    train_file, test_file, rubric = EXAMPLE_DIR / "train.jsonl", EXAMPLE_DIR / "test.jsonl", EXAMPLE_DIR / "rubric.yaml"

    console.rule("0. should you fine-tune at all? tunelab advise on the example")
    # The advice counts tokens with the default model's tokenizer, so the model is converted (once) here.
    was_cached = (cache_dir() / "models" / "gemma-3-270m" / "config.json").is_file()
    conversion_started = time.monotonic()
    resolve_model(DEFAULT_MODEL, events)
    conversion_seconds = time.monotonic() - conversion_started
    advice = advise_on_example()
    if advice.recommendation != "fine_tune":  # the example is built to be a good case; anything else is a bug in it
        raise ValueError(f"the example data is advised {advice.recommendation}, not fine_tune")

    console.rule("1. validate the example data")
    train_examples = _validate_example_data(train_file, test_file)

    console.rule("2. fine-tune the default model")
    console.print("Model: Gemma 3 270M, " + ("cached conversion reused" if was_cached
                                              else f"converted from GGUF in {conversion_seconds:.0f} s"))
    if out.exists():
        if not RunDir(out).has_run():
            raise FileExistsError(f"{out} exists and is not a tunelab run; choose another --out")
        shutil.rmtree(out)
    settings = dict(DEMO_SETTINGS, **({"n_epochs": n_epochs} if n_epochs else {}))
    train_started = time.monotonic()
    keep_freed_memory()  # training re-allocates its activations every step; reusing them beats fresh pages
    # Validation loss from a tenth of the training set, as the docs advise: the held-out test set is for the
    # evaluation alone, never seen while training.
    run_dir = train(TrainConfig(data=str(train_file), validation_split=0.1, out=str(out), suffix="support",
                                **settings), events)
    train_seconds = time.monotonic() - train_started
    load_seconds = next(e["data"]["model_load_seconds"] for e in RunDir(run_dir).events()
                        if "model_load_seconds" in e["data"])

    console.rule("3. evaluate: base, 3-shot base and fine-tuned on the held-out set; the forgetting check")
    eval_started = time.monotonic()
    eval_dir = evaluate(EvalConfig(model=str(run_dir), data=str(test_file), rubric=str(rubric),
                                   scorers=["rubric", "semantic_similarity", "ended_turn", "length"]), events)
    eval_seconds = time.monotonic() - eval_started

    results = json.loads((eval_dir / "results.json").read_text())
    console.rule("summary")
    print(
        f"Fine-tuned Gemma 3 270M with LoRA on {train_examples} support conversations (a tenth held out for the "
        f"validation loss) in {train_seconds:.0f} s "
        f"(model load {load_seconds:.1f} s, "
        + ("from the cached conversion). " if was_cached else f"after a first conversion of {conversion_seconds:.0f} s). ")
        + results["verdict"]
    )
    print(f"Time per stage: model conversion {conversion_seconds:.0f} s, training {train_seconds:.0f} s, "
          f"evaluation {eval_seconds:.0f} s; the whole demo {time.monotonic() - started:.0f} s.")
    report = eval_dir / "report.html"
    print(f"REPORT: {report}")
    return report


def advise_on_example():
    """`tunelab advise --data train.jsonl --answers advise.yaml --volume 5000` on the example, shown."""
    from tunelab.advise.decide import decide, measure_data, read_answers
    from tunelab.cli.advise import show

    measured = measure_data(str(EXAMPLE_DIR / "train.jsonl"), calls_per_day=DEMO_CALLS_PER_DAY)
    advice = decide(read_answers(str(EXAMPLE_DIR / "advise.yaml")), measured)
    show(console, advice, measured)
    return advice


def _validate_example_data(train_file: Path, test_file: Path) -> int:
    """`tunelab data validate` on the bundled files, the held-out one doubling as the leakage check.

    The example data is ours, so any finding (even a warning) is a bug in it. Returns the training count.
    """
    from tunelab.data.validate import validate_file

    counts = {}
    for path, validation in ((train_file, test_file), (test_file, None)):
        report = validate_file(path, validation)
        if report.findings:
            shown = "; ".join(f"{f.code} at line {f.line}: {f.message}" for f in report.findings[:5])
            raise ValueError(f"{path}: {len(report.findings)} finding(s): {shown}")
        counts[path] = report.examples
        overlap = f", no overlap with {validation.name}" if validation else ""
        console.print(f"✓ {path.name}: {report.examples} conversations ({report.stats['multi_turn']} multi-turn), "
                      f"no errors or warnings{overlap}")
    return counts[train_file]
