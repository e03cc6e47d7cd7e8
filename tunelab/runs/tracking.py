"""Experiment trackers a run reports to: Weights & Biases, MLflow and TensorBoard, each through its own
library (`pip install 'tunelab[tracking]'`).

    tunelab train --data train.jsonl --report-to wandb,mlflow,tensorboard
    client.fine_tuning.jobs.create(..., integrations=[{"type": "wandb", "wandb": {"project": "support"}}])

Each receives the run's settings when it starts, every metrics row as it is written (OpenAI's names:
train_loss, train_mean_token_accuracy, valid_loss, valid_mean_token_accuracy, by step), and the outcome
(status, fine-tuned model, trained tokens) at the end:

- **wandb**: online when this machine has a W&B API key (WANDB_API_KEY or `wandb login`) and reaches
  W&B; otherwise in W&B's offline mode, in the run directory's `wandb/` folder, which `wandb sync FOLDER`
  uploads later. The job's events say which. WANDB_MODE, if set, is obeyed.
- **mlflow**: a run in experiment `mlflow_experiment` at `mlflow_tracking_uri` — an MLflow server's URL,
  any database URI MLflow takes, or a local folder (an SQLite store `mlflow.db` inside it: MLflow's own
  folder store is retired). Default: MLFLOW_TRACKING_URI, else the run directory's `mlflow/` folder.
- **tensorboard**: event files in the run directory's `tensorboard/` folder (`tensorboard --logdir RUN`).

A resumed run continues the same W&B and MLflow runs, and TensorBoard drops what was written after the
checkpoint it resumes from. A tracker that fails — not installed, a server that cannot be reached, an
error while logging — never fails the training run: it is reported once as a warning event and left out
from then on.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

from tunelab.core.settings import TRACKERS

METRIC_NAMES = {"train_loss": "train_loss", "train_accuracy": "train_mean_token_accuracy",
                "valid_loss": "valid_loss", "valid_mean_token_accuracy": "valid_mean_token_accuracy"}
EXTRA = "pip install 'tunelab[tracking]'"

Warn = Callable[[str], None]


def requested_trackers(report_to: str) -> list[str]:
    """`report_to` ("wandb,mlflow", checked by the settings model) as a list, each once."""
    return list(dict.fromkeys(name.strip() for name in report_to.split(",") if name.strip()))


def _metrics(row: dict) -> dict[str, float]:
    """A metrics row under OpenAI's event names, with the method's own figures (a dpo run's reward accuracy,
    a grpo run's mean reward, …) and the learning rate beside them."""
    return {METRIC_NAMES.get(column, column): float(value) for column, value in row.items()
            if column != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


class WandbTracker:
    name = "Weights & Biases"

    def __init__(self, settings: dict, job: dict, run_dir: Path, resume: bool):
        import wandb

        def start(mode: str):
            return wandb.init(
                project=settings.get("wandb_project") or "tunelab", entity=settings.get("wandb_entity"),
                name=settings.get("wandb_name") or job["id"],
                tags=[tag.strip() for tag in (settings.get("wandb_tags") or "").split(",") if tag.strip()] or None,
                config=settings, dir=str(run_dir), mode=mode, id=_wandb_id(job["id"]), resume="allow",
                reinit="create_new", settings=wandb.Settings(silent=True, console="off", init_timeout=20))

        mode, why = _wandb_mode()
        try:
            self.run = start(mode)
        except Exception as error:  # noqa: BLE001 - a key, but W&B out of reach: offline, said so
            if mode != "online":
                raise
            mode, why = "offline", f"W&B could not be reached: {_first_line(error)}"
            self.run = start(mode)
        folder = Path(self.run.dir).parent
        self.where = (f"online at {self.run.url}" if mode == "online" else
                      f"offline ({why}), in {folder}; upload it with `wandb sync {folder}`")

    def log(self, row: dict) -> None:
        self.run.log(_metrics(row), step=row["step"])

    def finish(self, job: dict) -> None:
        for key in ("status", "fine_tuned_model", "trained_tokens"):
            self.run.summary[key] = job.get(key)
        self.run.finish(exit_code=0 if job["status"] in ("succeeded", "paused") else 1)


def _wandb_id(job_id: str) -> str:
    return job_id.removeprefix("ftjob-")  # letters and digits, as W&B's ids are


def _wandb_mode() -> tuple[str, str]:
    """('online' | 'offline', why offline)."""
    chosen = os.environ.get("WANDB_MODE")
    if chosen in ("offline", "dryrun"):
        return "offline", "WANDB_MODE=offline"
    if not _has_key():
        return "offline", "no W&B API key on this machine"
    return "online", ""


def _has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class MlflowTracker:
    name = "MLflow"

    def __init__(self, settings: dict, job: dict, run_dir: Path, resume: bool):
        from mlflow import MlflowClient
        from mlflow.entities import Param

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its own INFO lines (database set-up) are not ours to print
        uri = tracking_uri(settings.get("mlflow_tracking_uri"), run_dir)
        self.client = MlflowClient(uri)
        name = settings.get("mlflow_experiment") or "tunelab"
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`tunelab.job_id` = '{job['id']}'",
                                        max_results=1) if resume else []
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=job["id"],
                                                 tags={"tunelab.job_id": job["id"], "base_model": job["base_model"]}
                                                 ).info.run_id
            params = [Param(key, str(value)[:6000]) for key, value in sorted(settings.items()) if value not in (None, "")]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
                self.client.log_batch(self.run_id, params=params[start:start + 100])
        self.where = f"run {self.run_id} in experiment {name!r} at {uri}"

    def log(self, row: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, row["step"])
                                                    for key, value in _metrics(row).items()])

    def finish(self, job: dict) -> None:
        for key in ("fine_tuned_model", "trained_tokens"):
            if job.get(key) is not None:
                self.client.set_tag(self.run_id, key, str(job[key]))
        self.client.set_tag(self.run_id, "status", job["status"])
        status = {"succeeded": "FINISHED", "failed": "FAILED"}.get(job["status"], "KILLED")
        self.client.set_terminated(self.run_id, status=status)


def tracking_uri(given: str | None, run_dir: Path) -> str:
    """MLflow's tracking URI: a URI as given, a local folder as an SQLite store in it; default the
    environment's MLFLOW_TRACKING_URI, else the run directory's mlflow/ folder."""
    given = given or os.environ.get("MLFLOW_TRACKING_URI")
    if given and "://" in given:
        return given
    folder = Path(given).expanduser() if given else run_dir / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder.resolve() / 'mlflow.db'}"


class TensorBoardTracker:
    name = "TensorBoard"

    def __init__(self, settings: dict, job: dict, run_dir: Path, resume: bool, first_step: int = 1):
        from torch.utils.tensorboard import SummaryWriter

        folder = run_dir / "tensorboard"
        # On resume, events after the checkpoint are dropped (they are trained again, and logged again).
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=first_step if resume else None)
        if not resume:
            self.writer.add_text("settings", "\n".join(f"    {key}: {value}" for key, value in sorted(settings.items())))
        self.where = f"event files in {folder} (tensorboard --logdir {folder})"

    def log(self, row: dict) -> None:
        for key, value in _metrics(row).items():
            self.writer.add_scalar(key, value, row["step"])
        self.writer.flush()

    def finish(self, job: dict) -> None:
        self.writer.add_text("outcome", f"{job['status']}: {job.get('fine_tuned_model') or ''}")
        self.writer.close()


KINDS = {"wandb": WandbTracker, "mlflow": MlflowTracker, "tensorboard": TensorBoardTracker}


class Trackers:
    """The trackers a run reports to; each call guarded, so a failing tracker is reported and dropped."""

    def __init__(self, names: list[str], settings: dict, job: dict, run_dir: Path, resume: bool, warn: Warn,
                 say: Warn, first_step: int = 1):
        self.active, self.warn = [], warn
        for name in names:
            try:
                arguments = dict(first_step=first_step) if name == "tensorboard" else {}
                tracker = KINDS[name](settings, job, run_dir, resume, **arguments)
            except ImportError as error:
                warn(f"Not reporting to {name}: {error.name or name} is not installed ({EXTRA})")
                continue
            except Exception as error:  # noqa: BLE001 - a tracker never fails a run
                warn(f"Not reporting to {name}: it failed to start ({type(error).__name__}: {_first_line(error)})")
                continue
            self.active.append(tracker)
            say(f"Reporting to {tracker.name}: {tracker.where}")

    def log(self, row: dict) -> None:
        self._each("log", row)

    def finish(self, job: dict) -> None:
        self._each("finish", job)

    def _each(self, method: str, argument) -> None:
        for tracker in list(self.active):
            try:
                getattr(tracker, method)(argument)
            except Exception as error:  # noqa: BLE001 - a tracker never fails a run
                self.active.remove(tracker)
                self.warn(f"{tracker.name} failed and is left out from now on ({type(error).__name__}: "
                          f"{_first_line(error)}); the run goes on, with every figure in metrics.csv")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [""])[0][:300]
