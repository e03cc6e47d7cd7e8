"""A memory plan before the first step: what training will hold, from the model's config alone, and the
settings that make it fit the device.

    tunelab train --plan --model meta-llama/Meta-Llama-3-8B --adapter qlora --memory 24GB

The parts, in bytes (b: the compute format's bytes per number, 2 for bf16 and fp16, 4 for fp32):
- **weights**: the frozen base in the compute format (LoRA, DoRA), in 4-bit NF4 for its linear layers
  (QLoRA: half a byte and a little for the block scales), or fp32 master weights for full fine-tuning;
- **trained state**: each trained number with its fp32 gradient and AdamW's two fp32 moments (16 bytes; full
  fine-tuning's weight is counted above, so 12 more), plus the fused loss's fp32 gradient of the head;
- **activations**: what the backward pass keeps, per token of the largest forward pass: per layer, the
  inputs of each projection, the attention's queries, keys, values and output, and the MLP's three
  intermediates — (6·h + 3·q + 3·kv + 4·i)·b bytes for widths h (hidden), q (query heads × head size),
  kv (key-value heads × head size) and i (MLP). With gradient checkpointing only each layer's input stays
  (h·b per layer), and one layer's activations are rebuilt at a time;
- **loss**: the fused loss's logits chunk and its fp32 gradient of the trained tokens' hidden states
  (train/loss.py: no tokens × vocabulary logits tensor ever exists);
- **runtime**: what the process holds before any of this (the CUDA context; on a CPU the Python runtime,
  PyTorch and the tokenizer), and a tenth of the rest for the allocator's fragmentation.

Measured against real runs in tests/train/test_memory.py (the default model on a CPU) and, when a GPU is
lent, bench/gpu_check.py. The plan chooses, when the settings leave them to it (`auto`): the largest
micro-batch that fits (a power of two up to the batch size), then gradient checkpointing, then QLoRA
instead of 16-bit LoRA where bitsandbytes can run; a run that fits in none of these ways is refused before
loading anything, with the figures and what would fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

GIB = 2**30
# What the process holds besides the training state (measured: a CPU process with PyTorch, transformers
# and a 262k-entry tokenizer loaded; a CUDA context with cuBLAS' workspaces).
RUNTIME_BYTES = {"cpu": int(0.9 * GIB), "cuda": int(0.7 * GIB)}
FRAGMENTATION = 0.10
# Bytes per 4-bit weight with NF4's block scales (64 weights per fp32 scale, double-quantised to 8 bits).
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
# The fused loss's logits chunk (train/loss.py CHUNK_BYTES).
LOSS_CHUNK_BYTES = 256 * 2**20


class PlanError(ValueError):
    """A plan that cannot be made: a config without the needed sizes."""


class DoesNotFit(RuntimeError):
    """Training cannot fit the device in any way the plan knows; the message is the plan, with what would."""


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that memory depends on, from its config."""

    name: str
    parameters: int
    embedding_parameters: int  # the input embedding (and the head, when it is tied)
    head_parameters: int  # the output head when it is a matrix of its own, else 0
    linear_shapes: tuple[tuple[int, int], ...]  # (in, out) of every linear layer in the layers (LoRA's targets)
    layers: int
    hidden: int
    query_width: int
    key_value_width: int
    intermediate: int
    vocabulary: int

    @property
    def linear_parameters(self) -> int:
        return sum(a * b for a, b in self.linear_shapes)


@dataclass
class Settings:
    """The training settings a plan depends on (what TrainConfig says, `auto` still open)."""

    adapter: str = "lora"
    dtype_bytes: int = 2
    lora_r: int = 16
    batch_size: int = 8
    micro_batch_size: int | None = None  # None: the plan chooses
    gradient_checkpointing: bool | None = None  # None: the plan chooses
    tokens_per_example: int = 1024  # the longest example (after truncation), or max_length without data
    qlora_possible: bool = False  # bitsandbytes installed and a CUDA device
    sequences_per_example: int = 1  # a preference pair trains as two sequences, its prompt with each output


@dataclass
class MemoryPlan:
    model: str
    device: str
    budget: int  # bytes the device has for this run
    adapter: str
    micro_batch_size: int
    gradient_checkpointing: bool
    parts: dict[str, int]
    details: dict[str, str]
    choices: list[str] = field(default_factory=list)  # what the plan decided, and why

    @property
    def peak(self) -> int:
        return sum(self.parts.values())

    @property
    def fits(self) -> bool:
        return self.peak <= self.budget

    def as_data(self) -> dict:
        return {"model": self.model, "device": self.device, "budget_bytes": self.budget, "adapter": self.adapter,
                "micro_batch_size": self.micro_batch_size, "gradient_checkpointing": self.gradient_checkpointing,
                "parts_bytes": dict(self.parts), "peak_bytes": self.peak, "fits": self.fits, "choices": self.choices}

    def lines(self) -> list[str]:
        """The plan as a person reads it: one line per part, the peak against the budget, the choices."""
        rows = [f"Memory plan: {self.model} on {self.device}, {self.adapter}, micro-batch {self.micro_batch_size}, "
                f"gradient checkpointing {'on' if self.gradient_checkpointing else 'off'}"]
        for name, size in self.parts.items():
            rows.append(f"  {name:<14s}{size / GIB:8.2f} GiB   {self.details.get(name, '')}".rstrip())
        verdict = "fits" if self.fits else "does NOT fit"
        rows.append(f"  {'peak':<14s}{self.peak / GIB:8.2f} GiB   of {self.budget / GIB:.1f} GiB: {verdict}")
        rows.extend(f"  · {choice}" for choice in self.choices)
        return rows


def model_shape(path_or_config, name: str | None = None) -> ModelShape:
    """The shape of the model in a folder (only its config.json is read) or of a transformers config, built
    on PyTorch's meta device: no weights are loaded or allocated."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = path_or_config if not isinstance(path_or_config, (str, Path)) else AutoConfig.from_pretrained(str(path_or_config))
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is None or head.weight is embedding
    linear_shapes = tuple((m.in_features, m.out_features) for name, m in model.named_modules()
                          if isinstance(m, torch.nn.Linear) and (head is None or m is not head))
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    key_value_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    return ModelShape(
        name=name or getattr(config, "_name_or_path", "") or text.model_type,
        parameters=sum(p.numel() for p in model.parameters()),
        embedding_parameters=embedding.numel(),
        head_parameters=0 if tied else head.weight.numel(),
        linear_shapes=linear_shapes,
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        query_width=text.num_attention_heads * head_dim,
        key_value_width=key_value_heads * head_dim,
        intermediate=text.intermediate_size,
        vocabulary=text.vocab_size,
    )


# A cap on what one training run may use (e.g. TUNELAB_MEMORY=40GB on a GPU that a team shares).
def estimate(shape: ModelShape, settings: Settings, device: str, adapter: str, micro_batch: int,
             checkpointing: bool) -> tuple[dict[str, int], dict[str, str]]:
    """The parts of the peak for one choice of adapter, micro-batch and checkpointing."""
    b = settings.dtype_bytes
    other = shape.parameters - shape.linear_parameters  # embeddings, head, norms
    parts, details = {}, {}
    if adapter == "full":
        parts["weights"] = shape.parameters * 4
        details["weights"] = f"{shape.parameters / 1e9:.2f}B fp32 master weights"
        if b < 4:  # autocast keeps a 16-bit copy of each weight it casts for the step
            parts["weights"] += shape.parameters * b
            details["weights"] += f" + their {8 * b}-bit copies for the step"
    elif adapter == "qlora":
        parts["weights"] = int(shape.linear_parameters * NF4_BYTES) + other * b
        details["weights"] = f"{shape.linear_parameters / 1e9:.2f}B in 4 bits, {other / 1e6:.0f}M in {8 * b} bits"
    else:
        parts["weights"] = shape.parameters * b
        details["weights"] = f"{shape.parameters / 1e9:.2f}B in {8 * b} bits, frozen"

    if adapter == "full":
        trained = shape.parameters
        parts["trained state"] = trained * 12
        details["trained state"] = f"{trained / 1e6:.0f}M × (fp32 gradient + AdamW's 2 moments)"
    else:
        trained = sum(settings.lora_r * (a + c) for a, c in shape.linear_shapes)
        if adapter == "dora":
            trained += sum(c for _a, c in shape.linear_shapes)
        parts["trained state"] = trained * 16
        details["trained state"] = f"{trained / 1e6:.1f}M adapter numbers × 16 bytes (fp32 weight, gradient, AdamW)"
    head_rows = shape.head_parameters or shape.embedding_parameters
    if adapter == "full":  # the fused loss's fp32 gradient of the head, added into .grad afterwards
        parts["trained state"] += head_rows * 4

    tokens = micro_batch * settings.sequences_per_example * settings.tokens_per_example
    per_layer = (6 * shape.hidden + 3 * shape.query_width + 3 * shape.key_value_width + 4 * shape.intermediate) * b
    if checkpointing:
        parts["activations"] = tokens * (shape.layers * shape.hidden * b + per_layer)
        details["activations"] = f"{tokens:,} tokens: each layer's input, one layer rebuilt at a time"
    else:
        parts["activations"] = tokens * shape.layers * per_layer
        details["activations"] = f"{tokens:,} tokens × {shape.layers} layers × {per_layer / 1024:.1f} KiB"
    vocabulary_rows = head_rows // shape.hidden
    chunk = LOSS_CHUNK_BYTES if device.startswith("cuda") or adapter == "full" else 8 * 2**20
    parts["loss"] = min(chunk, tokens * vocabulary_rows * 4) + tokens * shape.hidden * 4 * 2
    details["loss"] = "logits one chunk at a time; fp32 gradient of the hidden states"
    base = sum(parts.values())
    parts["runtime"] = RUNTIME_BYTES["cuda" if device.startswith("cuda") else "cpu"] + int(base * FRAGMENTATION)
    details["runtime"] = "process and libraries, and a tenth for fragmentation"
    return parts, details


def plan(shape: ModelShape, settings: Settings, device: str, budget: int) -> MemoryPlan:
    """The settings under which training fits `budget`, in this order of preference: the micro-batch as
    large as allowed (fewest passes), checkpointing off (no recomputation), the adapter as asked."""
    choices: list[str] = []
    micro_options = ([settings.micro_batch_size] if settings.micro_batch_size
                     else [m for m in (64, 32, 16, 8, 4, 2, 1) if m <= settings.batch_size] or [1])
    checkpoint_options = ([settings.gradient_checkpointing] if settings.gradient_checkpointing is not None
                          else [False, True])
    adapters = [settings.adapter]
    if settings.adapter == "lora" and settings.qlora_possible:
        adapters.append("qlora")

    def made(adapter, micro, checkpointing) -> MemoryPlan:
        parts, details = estimate(shape, settings, device, adapter, micro, checkpointing)
        return MemoryPlan(shape.name, device, budget, adapter, micro, checkpointing, parts, details, choices)

    for adapter in adapters:
        for checkpointing in checkpoint_options:
            for micro in micro_options:
                candidate = made(adapter, micro, checkpointing)
                if candidate.fits:
                    if settings.micro_batch_size is None and micro < settings.batch_size:
                        choices.append(f"micro-batch {micro}: batches of {settings.batch_size} are summed over "
                                       f"{-(-settings.batch_size // micro)} passes (the same step)")
                    if checkpointing and settings.gradient_checkpointing is None:
                        choices.append("gradient checkpointing on: without it no micro-batch fits")
                    if adapter != settings.adapter:
                        choices.append("qlora instead of lora: the base in 16 bits does not fit")
                    return candidate
    smallest = made(adapters[-1], micro_options[-1], checkpoint_options[-1])
    choices.append(_what_would_fit(shape, settings, device, smallest))
    return smallest


def _what_would_fit(shape: ModelShape, settings: Settings, device: str, smallest: MemoryPlan) -> str:
    """The closest thing that fits: a shorter max_length, or the memory this needs."""
    for length in (2048, 1024, 512, 256, 128):
        if length >= settings.tokens_per_example:
            continue
        shorter = Settings(**{**settings.__dict__, "tokens_per_example": length})
        parts, _ = estimate(shape, shorter, device, smallest.adapter, smallest.micro_batch_size,
                            smallest.gradient_checkpointing)
        if sum(parts.values()) <= smallest.budget:
            return (f"does not fit in {smallest.budget / GIB:.1f} GiB even at micro-batch 1 with gradient "
                    f"checkpointing; max_length {length} would fit")
    advice = "; adapter: qlora on a CUDA GPU with bitsandbytes would need less" if smallest.adapter in ("lora", "dora", "full") \
        else ""
    return (f"does not fit in {smallest.budget / GIB:.1f} GiB even at micro-batch 1 with gradient checkpointing: "
            f"it needs {smallest.peak / GIB:.1f} GiB{advice}")


def plan_for(config, shape: ModelShape, device: str, budget: int, longest_example: int | None = None,
             n_examples: int | None = None) -> MemoryPlan:
    """The plan for a TrainConfig on `device` (which need not be this machine's). `longest_example`: the
    longest training example in tokens after truncation (else max_length); `n_examples` decides an `auto`
    batch size as training would (else 8)."""
    import importlib.util

    from tunelab.core.settings import AUTO, default_batch_size
    from tunelab.models.precision import cpu_has_bf16

    if config.dtype == "auto":
        dtype_bytes = 2 if device.startswith("cuda") or cpu_has_bf16() else 4
    else:
        dtype_bytes = 4 if config.dtype == "fp32" else 2
    if config.batch_size in (None, AUTO):
        batch_size = default_batch_size(n_examples) if n_examples else 8
    else:
        batch_size = int(config.batch_size)
    micro = None if config.micro_batch_size in (None, AUTO) else min(batch_size, int(config.micro_batch_size))
    settings = Settings(
        adapter=config.adapter, dtype_bytes=dtype_bytes, lora_r=config.lora_r, batch_size=batch_size,
        micro_batch_size=micro,
        gradient_checkpointing=(config.gradient_checkpointing if "gradient_checkpointing" in config.model_fields_set
                                else None),
        tokens_per_example=min(config.max_length, longest_example or config.max_length),
        qlora_possible=device.startswith("cuda") and importlib.util.find_spec("bitsandbytes") is not None,
        sequences_per_example=_sequences_per_example(config))
    return plan(shape, settings, device, budget)


def _sequences_per_example(config) -> int:
    """A preference pair trains as two sequences; a reinforcement prompt as its group of sampled replies."""
    if config.method == "grpo":
        from tunelab.core.settings import resolved_group_size

        return resolved_group_size(config)
    return 2 if config.method == "dpo" else 1
