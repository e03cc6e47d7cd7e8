"""What a run leaves behind while it trains, in OpenAI's shapes: the job record, events and metrics.

Written into a run directory (`rundir.py` knows where each file lives):

- `job.json`: a `fine_tuning.job` object (id `ftjob-…`, status, hyperparameters, `fine_tuned_model`,
  `trained_tokens`, `error`), rewritten atomically at every status change.
- `events.jsonl`: `fine_tuning.job.event` objects, appended as they happen (a crash loses at most one).
- `metrics.csv`: OpenAI's result-file columns `step,train_loss,train_accuracy,valid_loss,
  valid_mean_token_accuracy`, one row per step, flushed every row.
- `loss_curve.png`: redrawn at every validation and at the end.
"""

from __future__ import annotations

import csv
import json
import secrets
import time
from pathlib import Path

from tunelab.core.files import atomic_path, write_json_atomically
from tunelab.runs import lifecycle
from tunelab.runs.rundir import RunDir

STATUS_EVENTS = {"running": "Fine-tuning job started", "succeeded": "The job has successfully completed",
                 "paused": "Job paused", "cancelled": "Job cancelled", "failed": "Job failed"}
METRIC_COLUMNS = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]
# A preference run's figures beside OpenAI's (train/preference_fit.py says what each is): tunelab's additions,
# in metrics.csv after OpenAI's columns and in the metrics events under the same names.
PREFERENCE_COLUMNS = ["train_rewards_chosen", "train_rewards_rejected", "train_reward_margin", "train_reward_accuracy",
                      "valid_reward_margin", "valid_reward_accuracy"]


# A reinforcement step's figures (reward_fit.py says what each is): TRL's GRPOTrainer logs the same.
REINFORCEMENT_COLUMNS = ["train_reward_mean", "train_reward_std", "train_kl", "train_completion_tokens",
                         "train_frac_reward_zero_std", "train_clip_ratio", "valid_reward_mean", "sampled_tokens",
                         "sample_seconds", "grade_seconds", "grader_errors"]


def metric_columns(method: str) -> list[str]:
    return METRIC_COLUMNS + {"dpo": PREFERENCE_COLUMNS, "grpo": REINFORCEMENT_COLUMNS}.get(method, [])


def new_job_id() -> str:
    return "ftjob-" + secrets.token_hex(12)


REDRAW_SECONDS = 30  # the loss curve's picture is drawn again during a run at most this often
ORGANIZATION = "tunelab"  # the org field of a fine-tune's name, until servers have organisations of their own


def fine_tuned_model_name(model: str, suffix: str | None, job_id: str, organization: str = ORGANIZATION) -> str:
    """OpenAI's naming, five fields: `ft:{model}:{org}:{suffix}:{id}`, the model as the client named it (an alias
    such as gpt-4o-mini-2024-07-18 when one was used), so clients that parse the name route it as OpenAI's.
    Names made before this form (`ft:{base}:{suffix}:{id}`) stay valid where they were stored."""
    return f"ft:{model}:{organization}:{suffix or ''}:{job_id.removeprefix('ftjob-')[:8]}"


def fine_tuning_job(*, id: str, created_at: int, model: str, base_model: str, status: str,
                    training_file: str | None, validation_file: str | None, hyperparameters: dict, seed: int,
                    method: str = "supervised", method_hyperparameters: dict | None = None, suffix: str | None = None, metadata: dict | None = None,
                    fine_tuned_model: str | None = None, trained_tokens: int | None = None,
                    finished_at: int | None = None, estimated_finish: int | None = None,
                    result_files: list[str] | None = None, error: dict | None = None,
                    integrations: list[dict] | None = None, grader: dict | None = None, **additions) -> dict:
    """A `fine_tuning.job` object in OpenAI's shape: the one builder, for a local run's job.json and for the
    server's answers. `hyperparameters` are stated twice, as OpenAI does (top level, deprecated, and under
    the method; `method_hyperparameters` where the method has more, as dpo's beta; a reinforcement job's `grader`
    beside them). `additions` are tunelab's own fields (`base_model` is always one: the model the job really
    trains, where `model` is the name its creator used, perhaps an alias)."""
    return {
        "object": "fine_tuning.job", "id": id, "created_at": created_at, "model": model, "base_model": base_model,
        "organization_id": "org-" + ORGANIZATION, "status": status,
        "training_file": training_file, "validation_file": validation_file,
        "hyperparameters": hyperparameters,
        "method": {"type": method, method: {**({"grader": grader} if grader is not None else {}),
                                            "hyperparameters": method_hyperparameters or hyperparameters}},
        "seed": seed, "suffix": suffix, "metadata": metadata,
        "fine_tuned_model": fine_tuned_model, "trained_tokens": trained_tokens, "finished_at": finished_at,
        "estimated_finish": estimated_finish, "result_files": result_files or [], "error": error,
        "integrations": integrations, **additions,
    }


def metrics_row(step: int, train_loss: float, train_accuracy: float, valid_loss: float | None = None,
                valid_accuracy: float | None = None, learning_rate: float | None = None) -> dict:
    """One row of metrics.csv (None where a step has no validation), with the step's learning rate, which
    the metrics events carry and OpenAI's result-file columns do not."""
    row = dict(zip(METRIC_COLUMNS, (step, train_loss, train_accuracy, valid_loss, valid_accuracy)))
    return {**row, "learning_rate": learning_rate} if learning_rate is not None else row


class RunRecorder:
    """Writes a run directory's job record, events, metrics and loss curve as training goes.

    With `resume=True` the events are appended to, and metrics.csv is rewritten from the checkpoint's rows
    (`restore_rows`), dropping any rows the interrupted run wrote after its last checkpoint.
    """

    def __init__(self, run: RunDir, job: dict, resume: bool = False, columns: list[str] = METRIC_COLUMNS):
        self.run = run
        self.columns = columns
        self.job = job
        self.resume = resume
        self.trackers = None
        self._said_no_picture = False
        self._drawn_at: float | None = None
        run.path.mkdir(parents=True, exist_ok=True)
        self._events = run.events_file.open("a", encoding="utf-8")
        self.rows: list[dict] = []
        self._open_metrics()
        if resume:
            self.job.update(finished_at=None, error=None)
        self.save_job()

    def report_to(self, names: list[str], settings: dict, first_step: int = 1) -> None:
        """Send the settings, every metrics row from `first_step` on, and the outcome to these trackers
        (tracking.py); each says where it logs, or why it does not, as an event."""
        from tunelab.runs.tracking import Trackers

        if names:
            self.trackers = Trackers(names, settings, self.job, self.run.path, self.resume,
                                     warn=lambda text: self.event(text, level="warn"), say=self.event,
                                     first_step=first_step)

    def _open_metrics(self) -> None:
        self._metrics_file = self.run.metrics_file.open("w", newline="", encoding="utf-8")
        self._metrics = csv.writer(self._metrics_file)
        self._metrics.writerow(self.columns)

    def restore_rows(self, rows: list[dict]) -> None:
        """Start metrics.csv again from a checkpoint's rows."""
        self._metrics_file.close()
        self._open_metrics()
        self.rows = []
        for row in rows:
            self._write_row(row)

    def _write_row(self, row: dict) -> None:
        self.rows.append(row)
        self._metrics.writerow(["" if row.get(c) is None else (f"{row[c]:.6f}" if c != "step" else row[c])
                                for c in self.columns])
        self._metrics_file.flush()

    def save_job(self) -> None:
        write_json_atomically(self.run.job_file, self.job)

    def set_status(self, status: str, **changes) -> None:
        """Move the run's job as the lifecycle table allows (runs/lifecycle.py; a local run may also restart
        after failing), with its event. The event carries the status, so a server that keeps its jobs'
        statuses itself can leave these out of the job's events."""
        lifecycle.check(self.job["id"], self.job["status"], status, local=True)
        self.job.update(status=status, **changes)
        if status in lifecycle.FINISHED:
            self.job["finished_at"] = int(time.time())
        self.save_job()
        self.event(STATUS_EVENTS.get(status, f"Job {status}"), data={"status": status})
        if self.trackers and status in (*lifecycle.FINISHED, "paused"):
            self.trackers.finish(self.job)
            self.trackers = None

    def event(self, message: str, level: str = "info", data: dict | None = None, kind: str = "message") -> None:
        """One event of the job; `level` is OpenAI's: info, warn or error."""
        record = {
            "object": "fine_tuning.job.event",
            "id": "ftevent-" + secrets.token_hex(12),
            "created_at": int(time.time()),
            "level": level,
            "message": message,
            "data": data or {},
            "type": kind,
        }
        self._events.write(json.dumps(record) + "\n")
        self._events.flush()

    def metrics(self, row: dict) -> None:
        """A row of `metrics_row`: written to metrics.csv, and as a metrics event."""
        self._write_row(row)
        if self.trackers:
            self.trackers.log(row)
        total = self.job.get("estimated_total_steps") or "?"
        message = f"Step {row['step']}/{total}: training loss={row['train_loss']:.4f}"
        if row["valid_loss"] is not None:
            message += f", validation loss={row['valid_loss']:.4f}"
        if row.get("train_reward_mean") is not None:
            message += f", mean reward={row['train_reward_mean']:.3f}"
        if row.get("valid_reward_mean") is not None:
            message += f", validation mean reward={row['valid_reward_mean']:.3f}"
        # OpenAI's names for the event's figures (metrics.csv keeps its own columns, as OpenAI's result file does).
        data = {"step": row["step"], "total_steps": self.job.get("estimated_total_steps"),
                "train_loss": row["train_loss"], "train_mean_token_accuracy": row["train_accuracy"],
                "valid_loss": row["valid_loss"], "valid_mean_token_accuracy": row["valid_mean_token_accuracy"],
                "learning_rate": row.get("learning_rate"),  # tunelab's addition, for the dashboard's chart
                **{name: row.get(name) for name in self.columns if name not in METRIC_COLUMNS}}
        self.event(message, data={k: v for k, v in data.items() if v is not None}, kind="metrics")

    def refresh_loss_curve(self) -> Path | None:
        """The loss curve drawn again during the run (at a checkpoint or a validation), at most every
        REDRAW_SECONDS: checkpoints may come every step, and each drawing costs about 0.07 s of CPU."""
        if self._drawn_at is not None and time.monotonic() - self._drawn_at < REDRAW_SECONDS:
            return None
        return self.plot_loss_curve()

    def plot_loss_curve(self) -> Path | None:
        """The loss curve as a PNG. Without a working matplotlib the run goes on without the picture (said
        once, as a warning event): a drawing must not fail a job whose training succeeded."""
        self._drawn_at = time.monotonic()
        try:
            return plot_loss_curve(self.rows, self.run.loss_curve_file)
        except ImportError as error:
            if not self._said_no_picture:
                self._said_no_picture = True
                self.event(f"No loss curve picture ({error}); metrics.csv has every figure", level="warn")
            return None

    def close(self) -> None:
        self._events.close()
        self._metrics_file.close()


def plot_loss_curve(rows: list[dict], path: Path) -> Path:
    """Training loss per step (and validation loss where measured), saved as a PNG; a reinforcement run's
    mean reward beside it (training replies and greedy validation replies)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewarded = any(r.get("train_reward_mean") is not None for r in rows)
    figure, axes = plt.subplots(1, 2 if rewarded else 1, figsize=(12 if rewarded else 7, 3.6), dpi=110, squeeze=False)
    axis = axes[0][0]
    if rewarded:
        reward_axis = axes[0][1]
        reward_axis.plot([r["step"] for r in rows], [r.get("train_reward_mean") for r in rows],
                         label="mean reward (sampled replies)", color="#55a868", alpha=0.85)
        valid = [(r["step"], r["valid_reward_mean"]) for r in rows if r.get("valid_reward_mean") is not None]
        if valid:
            reward_axis.plot(*zip(*valid), "o-", label="mean reward (validation, greedy)", color="#c44e52")
        reward_axis.set_xlabel("step")
        reward_axis.set_ylabel("reward")
        reward_axis.grid(alpha=0.3)
        reward_axis.legend()
    steps = [r["step"] for r in rows]
    axis.plot(steps, [r["train_loss"] for r in rows], label="train loss", color="#4c72b0", alpha=0.85)
    valid = [(r["step"], r["valid_loss"]) for r in rows if r.get("valid_loss") is not None]
    if valid:
        axis.plot(*zip(*valid), "o-", label="validation loss", color="#dd8452")
    axis.set_xlabel("step")
    axis.set_ylabel("policy loss (reply tokens)" if rewarded else "loss (assistant tokens)")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
    return path
