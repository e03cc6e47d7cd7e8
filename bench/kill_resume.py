"""Crash safety of `tunelab train`, repeated: SIGKILL at a random point, `tunelab train --resume`, and the
result compared with an uninterrupted run's.

    .venv/bin/python bench/kill_resume.py [--runs 10] [--seed 0] [--model tiny|default] [--epochs 12]

Each run is killed at one moment, taken in turn from four kinds (the moment inside each kind is random):

- `time`: a random moment of the run's length (measured by the uninterrupted run);
- `checkpoint`: while a checkpoint is being written — as soon as its temporary directory appears, at a
  randomly chosen checkpoint;
- `final-save`: while the trained adapter is being written (its temporary directory exists);
- `after-save`: after the adapter is in place but before the run is marked succeeded.

Then `tunelab train --resume RUN` finishes it (a run killed while its model was still loading has written
nothing to resume from; it is started again with the same command). "Identical" means the adapter's every tensor is bit-equal to
the uninterrupted run's, metrics.csv is the same file, the job says succeeded, and nothing half-written is
left in the run directory. Prints one line per run, then `identical: K/N`.

The default model is the tests' tiny one (built here; seconds per run); `--model default` uses the
embedded Gemma 3 270M (minutes per run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tunelab.core.files import TEMPORARY_MARK  # noqa: E402 - after the path it is found on
KINDS = ("time", "checkpoint", "final-save", "after-save")


@dataclass
class Outcome:
    kind: str
    killed_at: str  # what was happening when the kill landed
    identical: bool
    detail: str


def train_command(data: Path, model: str, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "tunelab.cli", "train", "--data", str(data), "--model", model, "--out", str(out),
            "--n-epochs", str(epochs), "--batch-size", "4", "--learning-rate-multiplier", "25", "--seed", "3",
            "--checkpoint-every", "1", "--dtype", "fp32", "--quiet"]


def _temporaries(directory: Path) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(directory) if TEMPORARY_MARK in entry.name]
    except FileNotFoundError:
        return []


def _status(run: Path) -> str:
    try:
        return json.loads((run / "job.json").read_text())["status"]
    except (FileNotFoundError, ValueError, KeyError):
        return "none"


def kill_once(command: list[str], run: Path, kind: str, rng: random.Random, duration: float, checkpoints: int) -> str:
    """Start the run and SIGKILL it at a moment of `kind`; what it was doing then."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started, target = time.monotonic(), rng.randint(1, max(1, checkpoints))
    moment, written = rng.uniform(0.05, 0.98) * duration, 0
    seen: set[str] = set()
    try:
        while process.poll() is None:
            if kind == "time" and time.monotonic() - started >= moment:
                break
            if kind == "checkpoint":
                new = {name for name in _temporaries(run / "checkpoints")} - seen
                written += len(new)
                seen |= new
                if new and written >= target:
                    break
            if kind == "final-save" and _temporaries(run) and any(n.startswith(".adapter") for n in _temporaries(run)):
                break
            if kind == "after-save" and (run / "adapter").is_dir() and _status(run) == "running":
                break
            time.sleep(0.0005)
        else:
            return "finished before the kill"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    state = [f"{time.monotonic() - started:.2f} s in"]
    if kind == "checkpoint":
        state.append(f"writing checkpoint #{written}")
    half = _temporaries(run) + _temporaries(run / "checkpoints")
    if half:
        state.append(f"left half-written: {', '.join(sorted(half))}")
    return "; ".join(state)


def compare(run: Path, reference: Path) -> str:
    """Why `run` differs from `reference` (empty: identical)."""
    from safetensors.torch import load_file

    import torch

    if _status(run) != "succeeded":
        return f"status {_status(run)}"
    if (run / "metrics.csv").read_text() != (reference / "metrics.csv").read_text():
        return "metrics.csv differs"
    expected = load_file(reference / "adapter" / "adapter_model.safetensors")
    actual = load_file(run / "adapter" / "adapter_model.safetensors")
    if set(actual) != set(expected) or not all(torch.equal(actual[name], expected[name]) for name in expected):
        return "adapter tensors differ"
    leftovers = _temporaries(run) + _temporaries(run / "checkpoints")
    return f"left behind: {leftovers}" if leftovers else ""


def kill_and_resume(runs: int, seed: int, model: str | None, epochs: int, scratch: Path, report=print) -> list[Outcome]:
    from tests.conftest import EXAMPLES, build_tiny_model, read_jsonl

    conversations = read_jsonl(EXAMPLES / "train.jsonl")[:16]
    data = scratch / "train.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in conversations))
    if model is None:
        corpus = [m["content"] for c in read_jsonl(EXAMPLES / "train.jsonl") for m in c["messages"]]
        model = str(build_tiny_model(scratch / "tiny-model", corpus))
    reference = scratch / "uninterrupted"
    started = time.monotonic()
    subprocess.run(train_command(data, model, reference, epochs), check=True, capture_output=True)
    duration = time.monotonic() - started
    report(f"uninterrupted run: {duration:.1f} s, {epochs} epochs, a checkpoint every step (the newest three kept)")
    rng, outcomes = random.Random(seed), []
    for number in range(runs):
        kind = KINDS[number % len(KINDS)]
        run = scratch / f"killed-{number}"
        killed_at = kill_once(train_command(data, model, run, epochs), run, kind, rng, duration, epochs)
        # Killed while the model was still loading, the run has no settings yet: the user starts it again.
        again = ([sys.executable, "-m", "tunelab.cli", "train", "--resume", str(run), "--quiet"]
                 if (run / "config.yaml").is_file() else train_command(data, model, run, epochs))
        if "--resume" not in again:
            killed_at += "; before its settings were written, so started again"
        resumed = subprocess.run(again, capture_output=True, text=True)
        difference = compare(run, reference) if resumed.returncode == 0 else \
            f"resume failed (exit {resumed.returncode}): {resumed.stderr.strip()[-300:]}"
        outcomes.append(Outcome(kind, killed_at, not difference, difference))
        report(f"run {number + 1}: killed {kind} ({killed_at}) → {'identical' if not difference else difference}")
    report(f"identical: {sum(o.identical for o in outcomes)}/{len(outcomes)}")
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="tiny", help="tiny (built here) or any --model tunelab takes")
    parser.add_argument("--epochs", type=int, default=12)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kill-resume-") as scratch:
        kill_and_resume(arguments.runs, arguments.seed, None if arguments.model == "tiny" else arguments.model,
                        arguments.epochs, Path(scratch))


if __name__ == "__main__":
    main()
