"""The settings of a training run. A YAML file holds exactly these fields; CLI flags override them.

Hyperparameters use OpenAI's names (`n_epochs`, `batch_size`, `learning_rate_multiplier`), each `auto` by
default, so a job created through the OpenAI-shaped API and one started from the CLI mean the same thing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

import yaml

AUTO = "auto"

# The learning rate that `learning_rate_multiplier` multiplies, per method. 2e-4 is the usual LoRA rate
# (Unsloth, Axolotl and LLaMA-Factory defaults); full fine-tuning changes every weight and wants ten times
# less (TRL's SFT default is 2e-5).
BASE_LEARNING_RATES = {"lora": 2e-4, "dora": 2e-4, "qlora": 2e-4, "full": 2e-5}
METHODS = tuple(BASE_LEARNING_RATES)
KERNELS = ("auto", "none", "liger", "unsloth")
DTYPES = ("auto", "fp32", "bf16", "fp16")  # what each means: tunelab/models/precision.py


@dataclass
class TrainConfig:
    """Everything that decides what a training run does."""

    data: str = ""
    """Training data: OpenAI chat JSONL."""
    validation: str | None = None
    """Optional validation data (chat JSONL) for valid_loss and valid_mean_token_accuracy."""
    model: str = "default"
    """Base model: 'default', a Hugging Face directory, a .gguf file, or a hub id."""
    chat_template: str | None = None
    """A Jinja chat template file, for a model without a template of its own (saved with the run)."""
    out: str | None = None
    """Run directory (default: runs/<job id>)."""
    suffix: str | None = None
    """Up to 64 characters added to the fine-tuned model's name, as OpenAI's `suffix`."""
    method: str = "lora"
    """'lora', 'dora' (weight-decomposed LoRA), 'full' (every weight), or 'qlora' (4-bit base, CUDA only)."""
    n_epochs: int | str = AUTO
    batch_size: int | str = AUTO
    """Examples per optimizer step (OpenAI's meaning), whatever the micro-batch size."""
    micro_batch_size: int | str = AUTO
    """Examples per forward pass (auto: the batch size); smaller ones accumulate gradients, to save memory."""
    learning_rate_multiplier: float | str = AUTO
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    target_modules: str = "all-linear"
    """Comma-separated module names, or 'all-linear'."""
    max_length: int = 1024
    """Longest example in tokens; longer ones are truncated (and the run says how many)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: ~30% slower, much less memory for long examples."""
    kernels: str = "auto"
    """'auto' (Liger's fused kernels when installed on CUDA), 'liger', 'unsloth' (CUDA only), or 'none'."""
    dtype: str = "auto"
    """Compute format: 'auto' (bf16 where the hardware has bf16 units, fp16 on older GPUs, else fp32), or
    'fp32', 'bf16', 'fp16' to force one. Trained weights stay fp32 in every case; fp16 uses loss scaling."""
    fsdp: bool = False
    """Under several processes, shard weights, gradients and optimizer state (FSDP2) instead of copying them."""
    validation_split: float = 0.0
    """With no validation file, hold out this fraction of the training data (seeded) for validation."""
    eval_every: int = 0
    """Validate every N steps (0: about four times in the run, and at the end)."""
    early_stopping_patience: int = 0
    """Stop after this many validations without a lower validation loss, keeping the best weights (0: off)."""
    checkpoint_every: int = 0
    """Also checkpoint every N steps (checkpoints are always written at the end of each epoch)."""
    seed: int = 42

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "TrainConfig":
        """Read a YAML run file; flags given as `overrides` win. Errors name the file and the setting."""
        return cls.from_sources(path, **overrides)

    @classmethod
    def from_sources(cls, path: str | Path | None = None, preset: str | None = None, **flags) -> "TrainConfig":
        """Settings from a preset, then a YAML file, then flags, each overriding the one before."""
        settings: dict = {}
        if preset:
            from tunelab.presets import preset_path

            settings.update(_read_settings(preset_path(preset)))
        if path:
            settings.update(_read_settings(Path(path)))
        settings.update({k: v for k, v in flags.items() if v is not None})
        config = cls(**settings)
        config.check(source=str(path or (f"preset {preset}" if preset else "flags")))
        return config

    def check(self, source: str = "settings") -> None:
        """Raise ValueError naming the setting when a value is of the wrong kind or out of range."""
        def fail(name, message):
            raise ValueError(f"{source}: {name}: {message} (got {getattr(self, name)!r})")

        for name in ("lora_r", "lora_alpha", "max_length", "seed"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                fail(name, "must be a whole number")
        for name in ("eval_every", "early_stopping_patience", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                fail(name, "must be a whole number ≥ 0")
        for name in ("n_epochs", "batch_size", "micro_batch_size"):
            value = getattr(self, name)
            if value != AUTO and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                fail(name, "must be a whole number ≥ 1 or 'auto'")
        if self.learning_rate_multiplier != AUTO and (
                not isinstance(self.learning_rate_multiplier, (int, float)) or self.learning_rate_multiplier <= 0):
            fail("learning_rate_multiplier", "must be a number > 0 or 'auto'")
        if not isinstance(self.validation_split, (int, float)) or not 0 <= self.validation_split < 1:
            fail("validation_split", "must be a fraction from 0 up to (not including) 1")
        if not isinstance(self.lora_dropout, (int, float)) or not 0 <= self.lora_dropout < 1:
            fail("lora_dropout", "must be a fraction from 0 up to (not including) 1")
        if self.method not in METHODS:
            fail("method", f"must be one of {', '.join(METHODS)}")
        if self.dtype not in DTYPES:
            fail("dtype", f"must be one of {', '.join(DTYPES)}")
        if self.kernels not in KERNELS:
            fail("kernels", f"must be one of {', '.join(KERNELS)}")
        for name in ("gradient_checkpointing", "fsdp"):
            if not isinstance(getattr(self, name), bool):
                fail(name, "must be true or false")
        if self.validation and self.validation_split:
            fail("validation_split", "cannot be used together with a validation file")


def _read_settings(path: Path) -> dict:
    """A YAML mapping of TrainConfig fields; unknown keys are an error naming the key and the file."""
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(loaded) - known
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
    return loaded


@dataclass(frozen=True)
class ResolvedHyperparameters:
    """`auto` replaced by numbers, for one dataset."""

    n_epochs: int
    batch_size: int
    learning_rate_multiplier: float
    micro_batch_size: int
    base_learning_rate: float = BASE_LEARNING_RATES["lora"]

    @property
    def learning_rate(self) -> float:
        return self.base_learning_rate * self.learning_rate_multiplier

    @property
    def accumulation_steps(self) -> int:
        return -(-self.batch_size // self.micro_batch_size)


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

    batch_size = int(pick(config.batch_size, default_batch_size(n_examples)))
    return ResolvedHyperparameters(
        n_epochs=int(pick(config.n_epochs, default_n_epochs(n_examples))),
        batch_size=batch_size,
        learning_rate_multiplier=float(pick(config.learning_rate_multiplier, 1.0)),
        micro_batch_size=min(batch_size, int(pick(config.micro_batch_size, batch_size))),
        base_learning_rate=BASE_LEARNING_RATES[config.method],
    )
