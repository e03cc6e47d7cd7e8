"""The run directory: the only code that knows its layout.

    runs/ftjob-…/
      config.yaml          the run's settings, `auto` resolved (`tunelab train --config` reproduces the run)
      job.json             the fine_tuning.job record (status, hyperparameters, fine_tuned_model)
      events.jsonl         fine_tuning.job.event objects, oldest first
      metrics.csv          one row per step, OpenAI's result-file columns
      loss_curve.png       train and validation loss
      tokenizer/           the tokenizer with its chat template
      adapter/             the result of LoRA, DoRA or QLoRA (PEFT, safetensors) …
      model/               … or of full fine-tuning (a whole model)
      checkpoints/step-N/  resumable states (the newest few)
      eval/                results.json and report.html of `tunelab eval RUN`

A run directory is self-contained: `chat`, `eval`, `--resume` and the server need only its path. Files
the settings name (data, model, chat template) are stored as absolute paths; a relative one (written by
hand, or by an older tunelab) is read relative to the run directory, never to the working directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

# Settings that name files; read relative to the run directory when not absolute.
PATH_SETTINGS = ("data", "validation", "model", "chat_template")


class NotARun(FileNotFoundError):
    """A directory that holds no tunelab run; the message says what is missing."""


class RunDir:
    """A run directory, at `path` (which need not exist yet)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- the layout --------------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def job_file(self) -> Path:
        return self.path / "job.json"

    @property
    def events_file(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def loss_curve_file(self) -> Path:
        return self.path / "loss_curve.png"

    @property
    def tokenizer_dir(self) -> Path:
        return self.path / "tokenizer"

    @property
    def adapter_dir(self) -> Path:
        return self.path / "adapter"

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def grader_file(self) -> Path:
        """A reinforcement run's grader, copied in as the run started (the run resumes with the same one)."""
        return self.path / "grader.json"

    @property
    def reference_file(self) -> Path:
        """A preference run's reference log-probabilities of each pair's outputs, computed before its first step."""
        return self.path / "reference_log_probs.safetensors"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    def result_dir(self, full: bool) -> Path:
        """Where the trained result goes: `model/` for full fine-tuning, else `adapter/`."""
        return self.model_dir if full else self.adapter_dir

    # --- what it holds -----------------------------------------------------------------------------------
    def has_run(self) -> bool:
        """A run was started here (finished or not): it has its job record."""
        return self.job_file.is_file()

    def is_finished(self) -> bool:
        """A finished run: its settings and a trained adapter or, for full fine-tuning, a whole model."""
        trained = (self.adapter_dir / "adapter_config.json").is_file() or (self.model_dir / "config.json").is_file()
        return trained and self.config_file.is_file()

    @property
    def is_full_fine_tune(self) -> bool:
        return (self.model_dir / "config.json").is_file()

    @property
    def has_tokenizer(self) -> bool:
        return (self.tokenizer_dir / "tokenizer_config.json").is_file()

    def settings(self) -> dict:
        """config.yaml, with the files it names resolved (see the module docstring)."""
        if not self.config_file.is_file():
            raise NotARun(f"{self.path}: not a tunelab run directory (no config.yaml)")
        stored = yaml.safe_load(self.config_file.read_text(encoding="utf-8")) or {}
        for name in PATH_SETTINGS:
            value = stored.get(name)
            if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
                beside = self.path / value
                if beside.exists():
                    stored[name] = str(beside.resolve())
        return stored

    def job(self) -> dict:
        """job.json; NotARun when the directory holds no run."""
        if not self.job_file.is_file():
            raise NotARun(f"{self.path}: not a tunelab run (no job.json)")
        return json.loads(self.job_file.read_text(encoding="utf-8"))

    def events(self) -> list[dict]:
        """events.jsonl back as a list, oldest first."""
        lines = self.events_file.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


CHECKPOINT_PREFIX = "step-"  # a checkpoint's directory: step-000120


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoint directories in `root` (a run's checkpoints_dir), oldest first; temporary ones, left
    by a write a crash interrupted, are skipped (train/checkpoints.py writes them)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)
             and p.name[len(CHECKPOINT_PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
