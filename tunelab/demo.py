"""The main job, end to end on the bundled example (`make demo` / `tunelab demo`):

1. validate examples/support/train.jsonl and test.jsonl (structure, and no conversation on both sides);
2. fine-tune the default model (Gemma 3 270M) with LoRA on the training set;
3. evaluate base vs fine-tuned on the held-out set with the house-style rubric and reference similarity;
4. print a one-paragraph summary and `REPORT: <path>`.

The demo's settings are chosen to finish in minutes on a two-core CPU without AVX-512 (about 80–100
training tokens/s there): one epoch at batch size 4 and twice the base learning rate, which teaches the
house style in 40 updates. `auto` settings (3 epochs) give a better model at three times the cost.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from tunelab.config import TrainConfig
from tunelab.console import console
from tunelab.data.chat import read_conversations
from tunelab.eval.report import verdict_text
from tunelab.eval.run import evaluate
from tunelab.models.resolve import DEFAULT_MODEL, cache_dir, resolve_model
from tunelab.train.local import train
from tunelab.train.record import read_events

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "examples" / "support"
DEMO_SETTINGS = dict(n_epochs=1, batch_size=4, learning_rate_multiplier=2.0)


def run_demo(out: Path, n_epochs: int | None = None) -> Path:
    """Run the whole demo; returns the report's path."""
    started = time.monotonic()
    train_file, test_file, rubric = EXAMPLE_DIR / "train.jsonl", EXAMPLE_DIR / "test.jsonl", EXAMPLE_DIR / "rubric.yaml"

    console.rule("1. validate the example data")
    train_set, test_set = read_conversations(train_file), read_conversations(test_file)
    for path, conversations in ((train_file, train_set), (test_file, test_set)):
        multi_turn = sum(sum(m["role"] == "assistant" for m in c["messages"]) > 1 for c in conversations)
        console.print(f"✓ {path.name}: {len(conversations)} conversations ({multi_turn} multi-turn), no format problems")
    seen = {_user_text(c) for c in train_set}
    leaked = sum(_user_text(c) in seen for c in test_set)
    if leaked:
        raise ValueError(f"{leaked} held-out conversation(s) also appear in the training set")
    console.print("✓ no held-out conversation appears in the training set")

    console.rule("2. fine-tune the default model")
    was_cached = (cache_dir() / "models" / "gemma-3-270m" / "config.json").is_file()
    conversion_started = time.monotonic()
    resolve_model(DEFAULT_MODEL)
    conversion_seconds = time.monotonic() - conversion_started
    console.print("Model: Gemma 3 270M, " + ("cached conversion reused" if was_cached
                                              else f"converted from GGUF in {conversion_seconds:.0f} s"))
    if out.exists():
        if not (out / "job.json").is_file():
            raise FileExistsError(f"{out} exists and is not a tunelab run; choose another --out")
        shutil.rmtree(out)
    settings = dict(DEMO_SETTINGS, **({"n_epochs": n_epochs} if n_epochs else {}))
    train_started = time.monotonic()
    run_dir = train(TrainConfig(data=str(train_file), validation=str(test_file), out=str(out), suffix="support",
                                **settings))
    train_seconds = time.monotonic() - train_started
    load_seconds = next(e["data"]["model_load_seconds"] for e in read_events(run_dir)
                        if "model_load_seconds" in e["data"])

    console.rule("3. evaluate base vs fine-tuned on the held-out set")
    eval_started = time.monotonic()
    eval_dir = evaluate(str(run_dir), str(test_file), rubric=str(rubric))
    eval_seconds = time.monotonic() - eval_started

    results = json.loads((eval_dir / "results.json").read_text())
    console.rule("summary")
    print(
        f"Fine-tuned Gemma 3 270M with LoRA on {len(train_set)} support conversations in {train_seconds:.0f} s "
        f"(model load {load_seconds:.1f} s, "
        + ("from the cached conversion). " if was_cached else f"after a first conversion of {conversion_seconds:.0f} s). ")
        + verdict_text(results)
        + f" Evaluation took {eval_seconds:.0f} s; the whole demo {time.monotonic() - started:.0f} s."
    )
    report = eval_dir / "report.html"
    print(f"REPORT: {report}")
    return report


def _user_text(conversation: dict) -> str:
    return "\n".join(m["content"].strip().lower() for m in conversation["messages"] if m["role"] == "user")
