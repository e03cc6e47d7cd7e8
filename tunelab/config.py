"""The settings of a training run. A YAML file holds exactly these fields; CLI flags override them.

Hyperparameters use OpenAI's names (`n_epochs`, `batch_size`, `learning_rate_multiplier`), each `auto` by
default, so a job created through the OpenAI-shaped API and one started from the CLI mean the same thing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

AUTO = "auto"

# The learning rate that `learning_rate_multiplier` multiplies. 2e-4 is the usual LoRA rate (Unsloth,
# Axolotl and LLaMA-Factory defaults); full fine-tuning would want ~100x less.
LORA_BASE_LEARNING_RATE = 2e-4


@dataclass
class TrainConfig:
    """Everything that decides what a training run does."""

    data: str = ""
    """Training data: OpenAI chat JSONL."""
    validation: str | None = None
    """Optional validation data (chat JSONL) for valid_loss and valid_mean_token_accuracy."""
    model: str = "default"
    """Base model: 'default', a Hugging Face directory, a .gguf file, or a hub id."""
    out: str | None = None
    """Run directory (default: runs/<job id>)."""
    suffix: str | None = None
    """Up to 64 characters added to the fine-tuned model's name, as OpenAI's `suffix`."""
    n_epochs: int | str = AUTO
    batch_size: int | str = AUTO
    learning_rate_multiplier: float | str = AUTO
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str = "all-linear"
    """Comma-separated module names, or 'all-linear'."""
    max_length: int = 1024
    """Longest example in tokens; longer ones are truncated (and the run says how many)."""
    eval_every: int = 0
    """Validate every N steps (0: about eight times in the run, and at the end)."""
    seed: int = 42

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "TrainConfig":
        """Read a YAML run file; unknown keys are an error naming the key and the file."""
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in fields(cls)}
        unknown = set(loaded) - known
        if unknown:
            raise ValueError(f"{path}: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
        loaded.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**loaded)


@dataclass(frozen=True)
class ResolvedHyperparameters:
    """`auto` replaced by numbers, for one dataset."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float

    @property
    def learning_rate(self) -> float:
        return LORA_BASE_LEARNING_RATE * self.learning_rate_multiplier


def default_n_epochs(n_examples: int) -> int:
    """OpenAI's default-epochs rule: 3, raised or lowered so examples x epochs stays in 100..25,000.

    Integer division as in OpenAI's data-preparation checker, so 30 examples get 3 epochs, not 4.
    """
    target_epochs, min_epochs, max_epochs = 3, 1, 25
    min_examples, max_examples = 100, 25_000
    epochs = target_epochs
    if n_examples * target_epochs < min_examples:
        epochs = min(max_epochs, min_examples // n_examples)
    elif n_examples * target_epochs > max_examples:
        epochs = max(min_epochs, max_examples // n_examples)
    return epochs


def default_batch_size(n_examples: int) -> int:
    """8 for datasets of 64 examples or more, smaller below, so every epoch has at least 8 steps.

    OpenAI's own rule (~0.2% of examples) gives 1 for small sets, which on a CPU wastes the matrix units;
    length-sorted batches of 8 keep padding low and the step count sensible.
    """
    return max(1, min(8, n_examples // 8))


def resolve_hyperparameters(config: TrainConfig, n_examples: int) -> ResolvedHyperparameters:
    def pick(value, default):
        return default if value in (None, AUTO) else value

    return ResolvedHyperparameters(
        n_epochs=int(pick(config.n_epochs, default_n_epochs(n_examples))),
        batch_size=int(pick(config.batch_size, default_batch_size(n_examples))),
        learning_rate_multiplier=float(pick(config.learning_rate_multiplier, 1.0)),
    )
