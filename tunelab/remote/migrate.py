"""`tunelab migrate openai`: move OpenAI fine-tunes to an open model while the old ones still answer.

From 2027-01-06 OpenAI creates no new fine-tuning jobs, and gpt-4o-mini-2024-07-18, gpt-4o and gpt-4.1(-mini)
with their fine-tunes are announced to shut down on 2027-01-14. For one of the user's succeeded jobs this:

1. records the job (base model, hyperparameters, suffix, seed) and downloads its training and validation
   files (`<out>/<job>/openai-job.json`, `files/`);
2. fixes the held-out set: the job's validation file, or else 10% of the training file split off (whole
   prompt groups, so no held-out prompt is trained on) before anything is trained;
3. trains the chosen open model (`--to`) on the rest, with the job's epochs, suffix and seed, here or on a
   `tunelab serve` (`--remote`);
4. evaluates the new model against the OpenAI fine-tune on the held-out set (the evaluation's `--compare`),
   while that still answers;
5. writes `migration.md`: whether the local model matches, beats or falls short of the fine-tune, with the interval and p-value.

Every step writes its result atomically and is skipped when its result is there, so a second run after an
interruption continues where the first stopped; an interrupted training resumes from its last checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tunelab.core.events import NO_EVENTS, Events
from tunelab.core.files import write_text_atomically
from tunelab.core.presets import Preset, list_presets
from tunelab.core.settings import TrainConfig
from tunelab.data.split import split_file
from tunelab.remote.jobs import fetch_run, plainly, submit, watch
from tunelab.runs.rundir import RunDir

NEW_JOBS_CLOSED = "2027-01-06"
SHUTDOWN = {"gpt-4o-mini-2024-07-18": "2027-01-14", "gpt-4o": "2027-01-14", "gpt-4.1": "2027-01-14",
            "gpt-4.1-mini": "2027-01-14"}  # announced dates, base model name (prefix) → the day it stops answering
HELD_OUT_FRACTION = 0.1
CHECKPOINT_EVERY = 10  # steps: how much an interrupted migration's training can lose


def shutdown_date(model: str) -> str | None:
    """The announced shutdown of a base model (or a fine-tune's base), by its longest matching name."""
    base = model.split(":")[1] if model.startswith("ft:") else model
    matches = [name for name in SHUTDOWN if base == name or base.startswith(name + "-")]
    return SHUTDOWN[max(matches, key=len)] if matches else None


@dataclass(frozen=True)
class Suggestion:
    preset: Preset
    reason: str


def size_budget(device: str, gpu_gib: float | None) -> float:
    """The largest model (billions of parameters) worth training on this device: a CPU trains up to about
    half a billion parameters in hours rather than days; a GPU holds a 4-bit 8B model with its LoRA
    gradients from about 20 GiB, and a 1B model in bf16 from about 6 GiB."""
    if device != "cuda" or not gpu_gib:
        return 0.5
    return 8.0 if gpu_gib >= 20 else 1.3 if gpu_gib >= 6 else 0.5


def suggest_open_model(openai_model: str, device: str, gpu_gib: float | None = None) -> Suggestion:
    """The preset to replace a fine-tune of `openai_model` with: among those that fit the device, a
    permissive licence first (a replacement goes into production), then the largest."""
    budget = size_budget(device, gpu_gib)
    fitting = [preset for preset in list_presets() if 0 < preset.parameters_billion <= budget]
    best = max(fitting, key=lambda preset: (preset.permissive, preset.parameters_billion))
    where = f"a GPU with {gpu_gib:.0f} GiB" if device == "cuda" and gpu_gib else "a CPU"
    others = ", ".join(f"{p.name} ({p.parameters_billion:g}B, {p.licence})" for p in fitting if p is not best)
    reason = (f"preset {best.name}: {best.settings.get('model')} ({best.parameters_billion:g}B parameters, "
              f"{best.licence}), the largest {'permissively licensed ' if best.permissive else ''}model that "
              f"trains on {where}; {openai_model} is most likely larger, and the evaluation against its fine-tune "
              f"says whether this one is enough." + (f" Also fits: {others}." if others else "")
              + " Pass --to MODEL or --to PRESET to choose.")
    return Suggestion(best, reason)


@dataclass
class Migration:
    job_id: str
    to: str  # the local base model: a preset name (its settings too), a model spec or a directory
    out: Path
    remote_url: str | None = None
    remote_key: str | None = None


def list_jobs(client) -> list[dict]:
    """The account's fine-tuning jobs with their shutdown dates, newest first."""
    jobs = plainly(client.fine_tuning.jobs.list, limit=100).data
    return [dict(job.model_dump(), shutdown=shutdown_date(job.model)) for job in jobs]


def migrate(client, migration: Migration, events: Events = NO_EVENTS) -> Path:
    """Run (or continue) one migration; returns the path of its report."""
    from tunelab.eval.run import EvalConfig, evaluate

    folder = migration.out / migration.job_id
    job = _record_job(client, migration.job_id, folder, events)
    if job["status"] != "succeeded" or not job.get("fine_tuned_model"):
        raise ValueError(f"{migration.job_id} is {job['status']}: only a succeeded job has a fine-tune to replace")
    train_file, held_out = _files(client, job, folder, events)

    run = RunDir(folder / "run")
    if not run.is_finished():
        preset = next((p.name for p in list_presets() if p.name == migration.to), None)
        config = TrainConfig.from_sources(
            preset=preset, model=None if preset else migration.to, data=str(train_file), out=str(run.path),
            suffix=job.get("suffix"), seed=job.get("seed") or 0, checkpoint_every=CHECKPOINT_EVERY,
            **{k: v for k, v in (job.get("hyperparameters") or {}).items()
               if k in ("n_epochs", "batch_size", "learning_rate_multiplier") and v is not None})
        run = _train(config, migration, events)
    else:
        events.message(f"step 3: {run.path} already trained; kept")

    target = job["fine_tuned_model"]
    results_file = folder / "eval" / "results.json"
    if not results_file.is_file():
        events.message(f"step 4: evaluating {run.path} against {target} on {held_out.name}")
        evaluate(EvalConfig(model=str(run.path), data=str(held_out), out=str(folder / "eval"),
                            compare=[f"{target}@{client.base_url}"]), events)
    results = json.loads(results_file.read_text(encoding="utf-8"))
    report = folder / "migration.md"
    write_text_atomically(report, migration_report(job, run, results, target))
    events.message(f"step 5: report written to {report}")
    return report


def _record_job(client, job_id: str, folder: Path, events: Events) -> dict:
    record = folder / "openai-job.json"
    if record.is_file():
        return json.loads(record.read_text(encoding="utf-8"))
    job = plainly(client.fine_tuning.jobs.retrieve, job_id).model_dump()
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomically(record, json.dumps(job, indent=2))
    events.message(f"step 1: recorded {job_id} ({job['model']} → {job.get('fine_tuned_model')}; "
                   f"shuts down {shutdown_date(job['model']) or 'not announced'})")
    return job


def _files(client, job: dict, folder: Path, events: Events) -> tuple[Path, Path]:
    """The training file to train on and the held-out file to evaluate on, downloaded (or split) once."""
    files = folder / "files"
    files.mkdir(parents=True, exist_ok=True)
    downloaded = {}
    for name in ("training_file", "validation_file"):
        file_id = job.get(name)
        if not file_id:
            continue
        path = files / f"{name.split('_')[0]}.jsonl"
        if not path.is_file():
            temporary = path.with_name(path.name + ".part")
            plainly(client.files.content, file_id).write_to_file(temporary)
            temporary.rename(path)
            events.message(f"step 1: downloaded {file_id} to {path}")
        downloaded[name] = path
    if "validation_file" in downloaded:
        return downloaded["training_file"], downloaded["validation_file"]
    split = files / "split"
    if not (split / "test.jsonl").is_file():
        report = split_file(downloaded["training_file"], split, test_size=HELD_OUT_FRACTION, seed=job.get("seed") or 0,
                            overwrite=True)
        events.message(f"step 2: no validation file; held out {report.test_examples} of the training examples "
                       f"(whole prompt groups) in {split / 'test.jsonl'}")
    return split / "train.jsonl", split / "test.jsonl"


def _train(config: TrainConfig, migration: Migration, events: Events) -> RunDir:
    from tunelab.train.local import train

    run = RunDir(config.out)
    if migration.remote_url:
        from tunelab.remote.jobs import connect

        remote = connect(migration.remote_url, migration.remote_key)
        submitted = run.path.with_name("remote-job.json")
        if submitted.is_file():  # submitted by an interrupted run: watch that job rather than start another
            job_id = json.loads(submitted.read_text(encoding="utf-8"))["id"]
        else:
            job_id = submit(remote, config, events).id
            write_text_atomically(submitted, json.dumps({"id": job_id}))
        job = watch(remote, job_id, events)
        if job.status != "succeeded":
            raise ValueError(f"{job_id} {job.status} on {migration.remote_url}: {job.error}")
        return fetch_run(remote, job, run.path)
    resume = run.has_run() and run.checkpoints_dir.is_dir() and any(run.checkpoints_dir.iterdir())
    events.message(f"step 3: {'resuming' if resume else 'training'} {config.model} in {run.path}")
    return RunDir(train(config, events, resume=resume))


def comparison_reading(diff: float, low: float, high: float, p_value: float, n: int,
                       higher_is_better: bool | None) -> str:
    """How the local model compares with the fine-tune on one scorer, from the difference (local − hosted),
    its 95% interval and the paired test's p-value."""
    if n < 6:
        return "cannot be told apart from"  # below 6 pairs even a unanimous result has p ≥ 0.0625
    interval_differs, test_differs = not (low <= 0 <= high), p_value < 0.05
    if not interval_differs and not test_differs:
        return "matches"
    direction = "differs from" if higher_is_better is None else \
        "beats" if (diff > 0) == bool(higher_is_better) else "falls short of"
    if interval_differs and test_differs:
        return direction
    return "may " + {"differs from": "differ from", "beats": "beat", "falls short of": "fall short of"}[direction]


def migration_report(job: dict, run: RunDir, results: dict, target: str) -> str:
    """The migration's verdict in Markdown: the local model against the fine-tune, scorer by scorer."""
    local = run.job().get("fine_tuned_model") or str(run.path)
    lines = [f"# Migration of {job['id']}", "",
             f"- OpenAI fine-tune: `{target}` (base {job['model']}, shuts down {shutdown_date(job['model']) or 'not announced'})",
             f"- Local model: `{local}` ({run.path})",
             f"- Held-out examples: {results['examples_count']} ({results['data']})"]
    if not job.get("validation_file"):
        lines.append("- The job had no validation file, so these examples were split off its training file: the "
                     "OpenAI fine-tune was trained on them and the local model was not. The comparison favours "
                     "the fine-tune; a tie here is a good sign.")
    lines += ["", "## Verdict", ""]
    for comparison in results["comparisons"]:
        if {comparison["a"], comparison["b"]} != {target, "fine_tuned"}:
            continue
        scorer = next(s for s in results["scorers"] if s["name"] == comparison["scorer"])
        sign = 1 if comparison["b"] == "fine_tuned" else -1  # difference as local − hosted
        diff, low, high = (sign * comparison["mean_diff"], *sorted(sign * x for x in comparison["ci95"]))
        scale = 100 if scorer.get("fraction") else 1
        reading = comparison_reading(diff, low, high, comparison["p_value"], comparison["n"],
                                     scorer.get("higher_is_better"))
        lines.append(f"- The local model **{reading}** `{target}` on {scorer['label']}: "
                     f"{diff * scale:+.1f} (95% CI {low * scale:+.1f} to {high * scale:+.1f}, p = {comparison['p_value']:.3g})")
    lines += ["", "\"Matches\" means no detectable difference: the 95% interval includes zero and p ≥ 0.05. "
              "\"May fall short of\" (or \"may beat\") means the two disagree: the interval leaves out zero but "
              "the paired test does not confirm it (p ≥ 0.05), or the other way round — more held-out "
              "examples would settle it.",
              "", "The full report, with every example side by side: eval/report.html", ""]
    return "\n".join(lines)
