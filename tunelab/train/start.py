"""Starting a run from a finished one (`tunelab train --from RUN`): DPO after a supervised run, or more
supervised training after a first.

The new run trains the same weights on the same base: an adapter run's adapter (its kind, rank, alpha and
layers taken from the run, its weights loaded as the starting point), or, after a full fine-tune, a fresh
adapter (or every weight) over the fine-tuned model. The tokenizer, with its chat template, is the run's.
For a preference run this start is also the reference, as OpenAI's "supervised first, then DPO from the
supervised model" wants: the reference log-probabilities are computed from it before the first step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.core.settings import TrainConfig, current_spelling
from tunelab.runs.rundir import RunDir

# The settings that shape an adapter: a run continuing one must have its shape to load its weights.
ADAPTER_SHAPE = ("adapter", "lora_r", "lora_alpha", "target_modules")


class StartError(ValueError):
    """`--from` names something training cannot start from; the message says what and what to do."""


@dataclass
class Start:
    run: RunDir
    adapter_file: Path | None  # the adapter to load and train on; None after a full fine-tune (its model is the base)

    @property
    def tokenizer_dir(self) -> Path:
        return self.run.tokenizer_dir


def start_from(config: TrainConfig) -> tuple[TrainConfig, Start | None]:
    """`config` with the base model and adapter shape of the run it starts from, and where that run's weights
    are; (config, None) when it starts from its base model."""
    if not config.from_run:
        return config, None
    run = RunDir(Path(config.from_run).expanduser())
    if not run.is_finished():
        raise StartError(f"--from {config.from_run}: not a finished run (no trained adapter or model in it)"
                         + ("; resume it first with `tunelab train --resume " + str(run.path) + "`"
                            if run.has_run() else ""))
    settings, _note = current_spelling(run.settings(), str(run.config_file))
    given = config.model_fields_set
    if run.is_full_fine_tune:
        updates = {"model": str(run.model_dir.resolve())}
        adapter_file = None
    else:
        if config.adapter == "full" and "adapter" in given:
            raise StartError(f"--from {config.from_run}: the run trained an adapter, so the new run trains that "
                             "adapter on; to train every weight, merge it first (`tunelab export RUN --format "
                             "merged`) and train with --model on the merged model")
        updates = {"model": settings["model"], **{name: settings[name] for name in ADAPTER_SHAPE if name in settings}}
        adapter_file = run.adapter_dir / "adapter_model.safetensors"
    differing = [name for name, value in updates.items() if name in given and getattr(config, name) != value]
    if differing:
        raise StartError(f"--from {config.from_run}: " + ", ".join(
            f"{name} is the run's ({updates[name]}), not {getattr(config, name)}" for name in differing)
            + f"; drop {', '.join('--' + name.replace('_', '-') for name in differing)}")
    return config.model_copy(update=updates), Start(run, adapter_file)


def load_start_weights(model, start: Start) -> None:
    """The starting run's adapter weights into the new run's adapter (the same shape, by start_from)."""
    if start.adapter_file is None:
        return
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    loaded = set_peft_model_state_dict(model, load_file(start.adapter_file))
    unexpected = list(getattr(loaded, "unexpected_keys", []) or [])
    if unexpected:
        raise StartError(f"--from {start.run.path}: its adapter holds weights this model lacks, e.g. {unexpected[:3]}")
