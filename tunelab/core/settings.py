"""The settings of a training run: one typed model for CLI flags, YAML files, presets and (next) the HTTP API.

    tunelab train --data train.jsonl --lora-r 8 --lr-scheduler cosine
    tunelab train --config run.yaml               # a YAML file holds exactly these fields; flags override it

Each field carries its type, bounds and help text here, once: the CLI derives its `train` options from
this model (tunelab/cli/train.py), and an error names the setting and where it came from (a flag, a file,
a preset). Hyperparameters use OpenAI's names (`n_epochs`, `batch_size`, `learning_rate_multiplier`),
each `auto` by default, so a job created through the OpenAI-shaped API and one started from the CLI mean
the same thing. The rest are what users of other trainers expect to set (warmup, schedule, weight decay,
clipping, LoRA rank, alpha, dropout and target modules), with the usual defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from tunelab.core.files import read_yaml_file

AUTO = "auto"

# The learning rate that `learning_rate_multiplier` multiplies, per adapter. 2e-4 is the usual LoRA rate
# (Unsloth, Axolotl and LLaMA-Factory defaults); full fine-tuning changes every weight and wants ten times
# less (TRL's SFT default is 2e-5).
BASE_LEARNING_RATES = {"lora": 2e-4, "dora": 2e-4, "qlora": 2e-4, "full": 2e-5}
ADAPTERS = tuple(BASE_LEARNING_RATES)
# What a run learns from: demonstrations (supervised), preference pairs (dpo), or rewards a grader gives its
# own sampled replies (grpo: OpenAI's `reinforcement`). A preference loss moves the policy away from a
# reference it starts at, and its gradient is large from the first step (the loss does not start near zero
# as a supervised one ends), so DPO takes a tenth of the supervised rate: 2e-5 for LoRA (TRL's LoRA DPO
# examples use 5e-6 to 5e-5), 2e-6 for full. GRPO's policy gradient is as large and noisier: the same tenth.
METHODS = ("supervised", "dpo", "grpo")
METHOD_RATE_SCALE = {"supervised": 1.0, "dpo": 0.1, "grpo": 0.1}
OPENAI_METHOD_TYPES = {"supervised": "supervised", "dpo": "dpo", "grpo": "reinforcement"}
DEFAULT_GROUP_SIZE = 8  # TRL's num_generations; OpenAI's compute_multiplier scales it
DPO_LOSSES = ("sigmoid", "ipo", "simpo")  # what each is: tunelab/train/preference.py
DEFAULT_BETA = 0.1  # OpenAI's and TRL's
SIMPO_BETA = 2.0  # SimPO's β scales average log-probabilities, not sums: its paper uses 2 to 2.5
KERNELS = ("auto", "none", "liger", "unsloth")
DTYPES = ("auto", "fp32", "bf16", "fp16")  # what each means: tunelab/models/precision.py
SCHEDULERS = ("linear", "cosine", "constant")
TRACKERS = ("wandb", "mlflow", "tensorboard")  # what each does: tunelab/runs/tracking.py


class Must:
    """What a setting must be, in words, for error messages: "must be a whole number ≥ 0"."""

    def __init__(self, text: str):
        self.text = text


def _choice(values: tuple[str, ...]):
    return Annotated[Literal[values], Must("one of " + ", ".join(values))]


Text = Annotated[str, Must("text")]
OptionalText = Annotated[str | None, Must("text")]
WholeNumber = Annotated[int, Field(ge=1), Must("a whole number ≥ 1")]
Count = Annotated[int, Field(ge=0), Must("a whole number ≥ 0")]
AutoCount = Annotated[Annotated[int, Field(ge=1)] | Literal["auto"], Must("a whole number ≥ 1 or 'auto'")]
AutoRate = Annotated[Annotated[float, Field(gt=0)] | Literal["auto"], Must("a number > 0 or 'auto'")]
Fraction = Annotated[float, Field(ge=0, lt=1), Must("a fraction from 0 up to (not including) 1")]
NonNegative = Annotated[float, Field(ge=0), Must("a number ≥ 0")]
Switch = Annotated[bool, Must("true or false")]


class TrainConfig(BaseModel):
    """Everything that decides what a training run does."""

    # Strict: a YAML `lora_r: "16"` or `fsdp: yes-please` is an error, not a guess. Flags, which arrive as
    # text, are parsed leniently first (from_sources).
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True, use_attribute_docstrings=True)

    data: Text = ""
    """Training data: OpenAI chat JSONL (dpo: OpenAI's preference pairs)."""
    validation: OptionalText = None
    """Validation data in the training data's format, for valid_loss and valid_mean_token_accuracy."""
    model: Text = "default"
    """Base model: 'default' (Gemma 3 270M), a model directory, a .gguf file, or a hub id."""
    chat_template: OptionalText = None
    """A Jinja chat template file, for a model without a template of its own (saved with the run)."""
    out: OptionalText = None
    """Run directory (default: runs/<job id>)."""
    suffix: Annotated[str | None, Field(min_length=1, max_length=64), Must("1 to 64 characters")] = None
    """Added to the fine-tuned model's name, as OpenAI's `suffix`."""
    method: _choice(METHODS) = "supervised"
    """What the run learns from: supervised (chat examples), dpo (preference pairs) or grpo (tasks a grader
    scores the model's own replies to: OpenAI's reinforcement)."""
    adapter: _choice(ADAPTERS) = "lora"
    """Which weights train: lora, dora (weight-decomposed LoRA), qlora (LoRA on a 4-bit base, CUDA only), or full."""
    from_run: OptionalText = None
    """Start from this finished run's trained weights (a run directory), e.g. DPO after a supervised run."""
    n_epochs: AutoCount = AUTO
    """Epochs, or auto (OpenAI's rule: 3, adjusted so examples × epochs stays within 100–25,000)."""
    batch_size: AutoCount = AUTO
    """Examples per optimizer step, or auto (8; fewer below 192 examples, for at least 24 steps an epoch)."""
    micro_batch_size: AutoCount = AUTO
    """Examples per forward pass, or auto (the batch size); smaller ones accumulate gradients to save memory."""
    learning_rate_multiplier: AutoRate = AUTO
    """Multiplies the base rate (supervised: 2e-4 for LoRA, 2e-5 for full; dpo a tenth of those), or auto (1)."""
    beta: Annotated[Annotated[float, Field(gt=0, le=2)] | Literal["auto"], Must("a number above 0, at most 2, or 'auto'")] = AUTO
    """dpo: how far the model may move from where it started (OpenAI's beta; lower moves further), or auto (0.1)."""
    dpo_loss: _choice(DPO_LOSSES) = "sigmoid"
    """dpo: the preference loss, sigmoid (DPO's own), ipo (a squared loss that keeps rewards bounded), or simpo
    (reference-free: average log-probabilities and a target margin; beta auto is then 2)."""
    simpo_gamma: NonNegative = 0.5
    """dpo with dpo_loss simpo: the target margin γ between the two replies' rewards (TRL's simpo_gamma)."""
    rpo_alpha: NonNegative = 0.0
    """dpo: add this weight × the preferred replies' mean token loss (RPO; TRL's rpo_alpha, 1 in the paper), so
    the preferred reply itself becomes likelier, not only likelier than the other (0: plain DPO)."""
    grader: OptionalText = None
    """grpo: the grader, a JSON file holding OpenAI's grader object (string_check, text_similarity, score_model,
    label_model, python, multi)."""
    group_size: AutoCount = AUTO
    """grpo: replies sampled per prompt and compared with each other, or auto (8; OpenAI's compute_multiplier
    scales it)."""
    kl_beta: NonNegative = 0.04
    """grpo: weight of the KL penalty to the reference, the model as the run starts (0: no reference pass;
    TRL's beta)."""
    clip_epsilon: Annotated[float, Field(gt=0, lt=1), Must("a number above 0 and below 1")] = 0.2
    """grpo: how far one step may move a token's probability ratio before its gradient is clipped (TRL's epsilon)."""
    sample_temperature: Annotated[float, Field(gt=0, le=2), Must("a number above 0, at most 2")] = 1.0
    """grpo: temperature of the sampled replies (and of the log-probabilities the loss takes of them)."""
    max_completion_tokens: WholeNumber = 256
    """grpo: the longest sampled reply in tokens; one cut there is graded as it stands."""
    eval_samples: AutoCount = AUTO
    """grpo: validation prompts answered (greedily) and graded at each evaluation, or auto (16); all at the end."""
    grader_seconds: Annotated[float, Field(gt=0), Must("a number of seconds above 0")] = 60.0
    """grpo: how long a python grader may take over one reply before it is stopped (and the reply scores 0)."""
    grader_url: OptionalText = None
    """grpo: the OpenAI-compatible endpoint a model grader's `model` is asked at, when it is neither a local
    model nor MODEL@URL (default: OpenAI, with OPENAI_API_KEY)."""
    lr_scheduler: _choice(SCHEDULERS) = "linear"
    """Learning-rate schedule after warmup: linear decay to 0, cosine decay to 0, or constant."""
    warmup_ratio: Fraction = 0.1
    """Fraction of the steps over which the learning rate rises linearly from 0 (at least one step)."""
    weight_decay: NonNegative = 0.0
    """AdamW's decoupled weight decay."""
    max_grad_norm: NonNegative = 1.0
    """Clip the gradient to this norm before each step (0: no clipping)."""
    lora_r: WholeNumber = 16
    """LoRA rank."""
    lora_alpha: WholeNumber = 32
    """LoRA alpha (the update is scaled by alpha / r)."""
    lora_dropout: Fraction = 0.0
    """Dropout on the LoRA path's input (0 lets training use the fast merged LoRA layers)."""
    target_modules: Text = "all-linear"
    """Layers that get adapters: comma-separated module names (q_proj,v_proj), or all-linear."""
    max_length: WholeNumber = 1024
    """Longest example in tokens; longer ones are truncated (and the run says how many)."""
    gradient_checkpointing: Switch = False
    """Recompute activations in the backward pass: ~30% slower, much less memory for long examples."""
    kernels: _choice(KERNELS) = "auto"
    """auto (Liger's fused kernels when installed, on CUDA), liger, unsloth (CUDA only), or none."""
    dtype: _choice(DTYPES) = "auto"
    """Compute format: auto (bf16 where the hardware has bf16 units, fp16 on older GPUs, else fp32), or fp32,
    bf16, fp16 to force one. Trained weights stay fp32 in every case; fp16 uses loss scaling."""
    fsdp: Switch = False
    """Under several processes (accelerate launch), shard weights, gradients and optimizer state (FSDP2)."""
    validation_split: Fraction = 0.0
    """With no validation file, hold out this fraction of the training data (seeded) for validation."""
    eval_every: Count = 0
    """Validate every N steps (0: about four times in the run, and at the end)."""
    early_stopping_patience: Count = 0
    """Stop after this many validations without a lower validation loss, keeping the best weights (0: off)."""
    checkpoint_every: Count = 0
    """Also checkpoint every N steps (checkpoints are always written at the end of each epoch)."""
    seed: Annotated[int, Must("a whole number")] = 42
    """Random seed: data order, adapter initialisation, dropout."""
    report_to: Annotated[str, Must("tracker names, comma-separated: " + ", ".join(TRACKERS))] = ""
    """Experiment trackers that get the settings, metrics and outcome, comma-separated: wandb, mlflow, tensorboard."""
    wandb_project: OptionalText = None
    """Weights & Biases project (default tunelab)."""
    wandb_entity: OptionalText = None
    """Weights & Biases entity, a team or user (default: your own)."""
    wandb_name: OptionalText = None
    """Weights & Biases run name (default: the job id)."""
    wandb_tags: Text = ""
    """Weights & Biases tags, comma-separated."""
    mlflow_tracking_uri: OptionalText = None
    """MLflow server URL, database URI or local folder (default $MLFLOW_TRACKING_URI, else the run directory)."""
    mlflow_experiment: Text = "tunelab"
    """MLflow experiment the run is logged in."""

    _notes: list[str] = PrivateAttr(default_factory=list)

    @property
    def notes(self) -> list[str]:
        """What the settings' sources said that is spelled differently now (old spellings still taken)."""
        return self._notes

    @model_validator(mode="before")
    @classmethod
    def _old_spelling(cls, given):
        return current_spelling(given, "settings")[0] if isinstance(given, dict) else given

    @model_validator(mode="after")
    def _trackers_are_known(self):
        unknown = [name.strip() for name in self.report_to.split(",") if name.strip() not in ("", *TRACKERS)]
        if unknown:
            raise ValueError(f"report_to: {', '.join(unknown)} is not a tracker; these are: {', '.join(TRACKERS)}")
        return self

    @model_validator(mode="after")
    def _grader_goes_with_grpo(self):
        if self.method == "grpo" and not self.grader:
            raise ValueError("grader: a grpo run needs a grader (a JSON file of OpenAI's grader object)")
        if self.grader and self.method != "grpo":
            raise ValueError(f"grader: only a grpo run uses a grader (this run's method is {self.method})")
        if self.method == "grpo" and self.early_stopping_patience:
            raise ValueError("early_stopping_patience: not yet for grpo runs (they validate by reward, not loss)")
        return self

    @model_validator(mode="after")
    def _validation_sources_exclude_each_other(self):
        if self.validation and self.validation_split:
            raise ValueError("validation_split: cannot be used together with a validation file")
        return self

    def to_dict(self) -> dict:
        return self.model_dump()

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "TrainConfig":
        """Read a YAML run file; flags given as `overrides` win. Errors name the file and the setting."""
        return cls.from_sources(path, **overrides)

    @classmethod
    def from_sources(cls, path: str | Path | None = None, preset: str | None = None, **flags) -> "TrainConfig":
        """Settings from a preset, then a YAML file, then flags, each overriding the one before.

        Flags may be given as text (as a command line has them: "3", "auto", "0.1"); file and preset values
        must have their types. Errors name the setting and its source.
        """
        sources: list[tuple[str, dict]] = []
        if preset:
            from tunelab.core.presets import preset_path

            sources.append((f"preset {preset}", read_settings_file(preset_path(preset))))
        if path:
            sources.append((str(path), read_settings_file(Path(path))))
        given = {name: value for name, value in flags.items() if value is not None}
        if given:
            sources.append(("flags", given))
        merged: dict = {}
        notes = []
        for source, settings in sources:
            settings, note = current_spelling(settings, source)
            notes += [note] if note else []
            if source == "flags":
                settings = parsed_values(settings, _flag)
            _checked(settings, source)
            merged.update(settings)
        config = _checked(merged, str(path or (f"preset {preset}" if preset else "flags")))
        config._notes = notes
        return config


def current_spelling(settings: dict, source: str) -> tuple[dict, str | None]:
    """`method: lora|dora|qlora|full` (before `method` became OpenAI's method.type) as `adapter:` with
    `method: supervised`, and a note saying so; anything else unchanged. A run's config.yaml written before
    the change still resumes."""
    old = settings.get("method")
    if old not in ADAPTERS:
        return settings, None
    if settings.get("adapter", old) != old:
        raise ValueError(f"{source}: method: {old} and adapter: {settings['adapter']}: give the weights that "
                         "train as adapter only")
    note = (f"{source}: `method: {old}` is now spelled `adapter: {old}` (`method` is what the run learns from: "
            "supervised, dpo or grpo); the old spelling is still taken")
    return {**settings, "method": "supervised", "adapter": old}, note


# A job created through OpenAI's API carries these settings in OpenAI's own fields (the files by id, the
# base model, suffix, seed, the method and its hyperparameters). `tunelab serve` takes every other setting in its
# `tunelab` extension of the request, except those naming a path on the server's disk (`out`,
# `chat_template`): a client names uploaded files by id, never a path (server/job_settings.py).
OPENAI_HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
OPENAI_JOB_SETTINGS = frozenset({"data", "validation", "model", "suffix", "seed", "method", "beta", "grader",
                                 *OPENAI_HYPERPARAMETERS})
# `from_run` is a run directory: a server job starts from a fine-tune by naming it as its `model` (ft:…). A
# server's model graders ask the server's own models, never a URL a client names (`grader_url`).
EXTENSION_SETTINGS = tuple(name for name in TrainConfig.model_fields
                           if name not in OPENAI_JOB_SETTINGS | {"out", "chat_template", "from_run", "grader_url"})


def job_extension_spelling(settings: dict, source) -> dict:
    """A server job's own settings (a request's `tunelab` object, a server preset) with the old `method: lora|…`
    spelled `adapter:`; the method itself is the job's `method.type`, so it is not kept."""
    if settings.get("method") not in ADAPTERS:
        return settings
    return {name: value for name, value in current_spelling(settings, source)[0].items() if name != "method"}


def field_help(name: str) -> tuple[str, str | None]:
    """A setting's help text and its default as `--help` shows them (None: no default worth showing)."""
    info = TrainConfig.model_fields[name]
    default = info.default
    shown = None if default in (None, "") else (str(default).lower() if isinstance(default, bool) else str(default))
    return " ".join((info.description or "").split()), shown


def field_choices(name: str) -> tuple[str, ...] | None:
    """The values a setting takes when it is one of a few words (adapter, dtype, …); None otherwise."""
    from typing import get_args, get_origin

    annotation = TrainConfig.model_fields[name].annotation
    return tuple(get_args(annotation)) if get_origin(annotation) is Literal else None


def field_kind(name: str) -> type:
    """The type a command line parses a setting's value as: bool (a switch), int, float, or str."""
    annotation = TrainConfig.model_fields[name].annotation
    return annotation if annotation in (bool, int, float) else str


def _must(name: str) -> str:
    metadata = TrainConfig.model_fields[name].metadata
    return next((m.text for m in metadata if isinstance(m, Must)), "valid")


def _describe_errors(error: ValidationError, source: str, label=None) -> str:
    """One line per setting at fault: `SOURCE: name: must be …`, or `LABEL(name): must be …` with `label`."""
    lines = []
    for problem in error.errors():
        name = problem["loc"][0] if problem["loc"] else None
        if name is None or name not in TrainConfig.model_fields:  # a rule about several settings
            lines.append(f"{source}: {problem['msg'].removeprefix('Value error, ')}")
        else:
            where = label(name) if label else f"{source}: {name}"
            lines.append(f"{where}: must be {_must(name)} (got {problem['input']!r})")
    return "\n".join(dict.fromkeys(lines))  # one line per setting, even when each branch of a union failed


def _checked(settings: dict, source: str) -> TrainConfig:
    settings, _note = current_spelling(settings, source)
    try:
        return TrainConfig.model_validate(settings)
    except ValidationError as error:
        raise ValueError(_describe_errors(error, source)) from None


def parsed_values(values: dict, label) -> dict:
    """Settings given as a command line or a request gives them ("3", 0.5, "auto"), typed by the model;
    errors name each setting as `label(name)` (e.g. `--n-epochs`, `hyperparameters.n_epochs`)."""
    values, _note = current_spelling(values, "settings")
    try:
        parsed = TrainConfig.model_validate(values, strict=False)
    except ValidationError as error:
        raise ValueError(_describe_errors(error, "settings", label)) from None
    return {name: getattr(parsed, name) for name in values}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def read_settings_file(path: Path) -> dict:
    """A YAML mapping of TrainConfig fields; unknown keys are an error naming the key and the file."""
    loaded = read_yaml_file(path) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
    known = set(TrainConfig.model_fields)
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


MIN_STEPS_PER_EPOCH = 24


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
    """The largest of 8, 4, 2 and 1 that still gives each epoch at least 24 optimizer steps.

    A small dataset needs updates more than it needs wide batches: 24 support conversations for 3 epochs
    at batch 3 (24 steps) teach the default model the house style's greeting and sign-off but never where
    to end its turn; at batch 1 (72 steps, the same tokens) it ends 4 held-out replies of 6. OpenAI's own
    rule (~0.2% of the examples) also gives 1 for small sets; from 192 examples on, batches of 8.
    """
    return next(size for size in (8, 4, 2, 1) if n_examples // size >= MIN_STEPS_PER_EPOCH or size == 1)


def resolve_hyperparameters(config: TrainConfig, n_examples: int) -> ResolvedHyperparameters:
    def pick(value, default):
        return default if value in (None, AUTO) else value

    batch_size = int(pick(config.batch_size, default_batch_size(n_examples)))
    return ResolvedHyperparameters(
        n_epochs=int(pick(config.n_epochs, default_n_epochs(n_examples))),
        batch_size=batch_size,
        learning_rate_multiplier=float(pick(config.learning_rate_multiplier, 1.0)),
        micro_batch_size=min(batch_size, int(pick(config.micro_batch_size, batch_size))),
        base_learning_rate=BASE_LEARNING_RATES[config.adapter] * METHOD_RATE_SCALE[config.method],
    )


REINFORCEMENT_HYPERPARAMETERS = ("compute_multiplier", "eval_interval", "eval_samples", "reasoning_effort")


def reinforcement_settings(hyperparameters: dict) -> dict:
    """OpenAI's reinforcement hyperparameters as tunelab's settings: `compute_multiplier` scales the replies
    sampled per prompt (8 at 1, at least 2), `eval_interval` is `eval_every`, `eval_samples` the validation
    prompts graded at each evaluation. `reasoning_effort` has nothing to set on a model that does not reason."""
    settings = {}
    multiplier = hyperparameters.get("compute_multiplier", AUTO)
    if multiplier not in (None, AUTO):
        settings["group_size"] = max(2, round(DEFAULT_GROUP_SIZE * float(multiplier)))
    for openai_name, name in (("eval_interval", "eval_every"), ("eval_samples", "eval_samples")):
        if hyperparameters.get(openai_name, AUTO) not in (None, AUTO):
            settings[name] = int(hyperparameters[openai_name])
    return settings


def resolved_group_size(config: TrainConfig) -> int:
    return DEFAULT_GROUP_SIZE if config.group_size == AUTO else int(config.group_size)


def resolved_beta(config: TrainConfig) -> float:
    if config.beta != AUTO:
        return float(config.beta)
    return SIMPO_BETA if config.dpo_loss == "simpo" else DEFAULT_BETA
