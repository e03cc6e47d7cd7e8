"""The model that trains: base weights loaded for the chosen adapter, with adapters and kernels attached.

Methods:
- `lora` (default): low-rank adapters on every linear layer of the body; the base stays frozen.
- `dora`: weight-decomposed LoRA (magnitude and direction trained apart; PEFT's `use_dora`), a little
  better than LoRA at the same rank, about 1.5–2× slower per step.
- `full`: every weight trains; fp32 master weights (bf16 compute where the hardware has it).
- `qlora`: the base loaded in 4-bit NF4 through bitsandbytes, LoRA on top. bitsandbytes' 4-bit kernels need
  CUDA, so on other devices this is refused up front with the reason, not half-run.

Kernels (`kernels` setting): on CUDA, Liger Kernel's fused RMSNorm, RoPE and gated-MLP kernels when it is
installed (`auto`), or Unsloth's patched model when asked for (`unsloth`). Neither exists for CPUs; `auto`
then means none, and naming one explicitly is an error.
"""

from __future__ import annotations

import importlib.util

import torch

from tunelab.core.settings import TrainConfig
from tunelab.models.precision import PrecisionUnavailable, best_device, resolve_dtype
from tunelab.models.resolve import ResolvedModel, load_four_bit_model, load_model
from tunelab.train.fused_norm import fuse_rms_norms
from tunelab.train.merged_lora import train_through_merged_weights
from tunelab.train.sharding import sliced_like


class MethodUnavailable(RuntimeError):
    """The chosen method, kernel or dtype cannot run on this machine; the message says why and what instead."""


def training_device() -> str:
    return best_device()


def compute_dtype(config: TrainConfig, device: str) -> torch.dtype:
    """The format the forward and backward passes multiply in (models/precision.py decides `auto`)."""
    return resolve_dtype(config.dtype, device)


# Why `unsloth` is not one of tunelab's extras (checked with pip's resolver, 2026-12-06).
UNSLOTH_PINS = ("the newest Unsloth (2026.10.9) requires transformers ≤ 5.17 and trl ≤ 1.15, and tunelab needs "
                "transformers 5.23, so pip cannot install both; a later Unsloth that accepts transformers 5.23 "
                "will work here.")


def chosen_kernels(config: TrainConfig, device: str) -> str:
    """'liger', 'unsloth' or 'none', after checking that what was asked for can run here."""
    on_cuda = device.startswith("cuda")
    if config.kernels == "auto":
        return "liger" if on_cuda and _installed("liger_kernel") else "none"
    if config.kernels in ("liger", "unsloth"):
        if not on_cuda:
            raise MethodUnavailable(f"kernels: {config.kernels} runs on CUDA GPUs only and this machine has none; "
                                    "use kernels: auto (tunelab's own fused loss runs everywhere)")
        if config.kernels == "liger" and not _installed("liger_kernel"):
            raise MethodUnavailable("kernels: liger needs the `liger-kernel` package: pip install 'tunelab[liger]'")
        if config.kernels == "unsloth" and not _installed("unsloth"):
            raise MethodUnavailable(f"kernels: unsloth needs the `unsloth` package, which is not installed; {UNSLOTH_PINS} "
                                    "Use kernels: auto (Liger's kernels when installed, and tunelab's fused loss)")
    return config.kernels


def check_method_available(config: TrainConfig, device: str) -> None:
    """Refuse, with the reason, a method this machine cannot run — before any data or model is loaded."""
    if config.adapter == "qlora":
        if not device.startswith("cuda"):
            raise MethodUnavailable("adapter: qlora loads the base model in 4 bits with bitsandbytes, whose kernels "
                                    "need a CUDA GPU, and this machine has none; use adapter: lora (same adapters, "
                                    "base weights in 16/32 bits)")
        if not _installed("bitsandbytes"):
            raise MethodUnavailable("adapter: qlora needs the `bitsandbytes` package: pip install 'tunelab[cuda]'")
    chosen_kernels(config, device)
    try:
        dtype = compute_dtype(config, device)
    except PrecisionUnavailable as error:
        raise MethodUnavailable(str(error)) from None
    if dtype == torch.float16 and config.adapter == "qlora":
        raise MethodUnavailable("dtype: fp16 with adapter: qlora is not supported (bitsandbytes' 4-bit layers and "
                                "fp16 loss scaling do not mix well); use dtype: bf16 or fp32")


def trainable_model(resolved: ResolvedModel, config: TrainConfig, device: str, sharded: bool = False):
    """The base model for `config.adapter`, adapters attached, on `device`, ready to train.

    `sharded`: left in host memory instead, for FSDP to move each process's slice to `device` (a model
    that does not fit one device cannot be put on it whole first).
    """
    check_method_available(config, device)
    kernels = chosen_kernels(config, device)
    dtype = compute_dtype(config, device)
    place = "cpu" if sharded else device
    if kernels == "unsloth":
        return _unsloth_model(resolved, config, dtype)
    if config.adapter == "qlora":
        model = _four_bit_model(resolved, dtype)
    elif config.adapter == "full":
        # fp32 master weights: bf16 cannot hold the small updates of full fine-tuning.
        model = load_model(resolved.path, dtype=torch.float32).to(place)
    else:
        # LoRA trains only the adapters, so the frozen base can sit in the compute dtype (half the memory).
        model = load_model(resolved.path, dtype=dtype).to(place)
    model.config.use_cache = False
    if kernels == "liger":
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        # tunelab computes the loss itself (train/loss.py), so Liger's loss kernels stay off.
        _apply_liger_kernel_to_instance(model=model, cross_entropy=False, fused_linear_cross_entropy=False)
    else:
        fuse_rms_norms(model)  # Liger brings its own; elsewhere ours (fp32 steps only)
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing works with a frozen embedding layer (no input-grad hook needed).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.adapter == "full":
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
    return _with_lora(model, config)


def _with_lora(model, config: TrainConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=_target_modules(config), use_dora=config.adapter == "dora",
                      task_type="CAUSAL_LM")
    # autocast_adapter_dtype keeps the adapter weights in fp32 over bf16 base weights: the updates are tiny
    # and would round away in bf16.
    model = get_peft_model(model, lora, autocast_adapter_dtype=True)
    train_through_merged_weights(model)
    return model


def _target_modules(config: TrainConfig):
    if config.target_modules == "all-linear":
        return "all-linear"
    return [name.strip() for name in config.target_modules.split(",") if name.strip()]


def _four_bit_model(resolved: ResolvedModel, dtype: torch.dtype):
    from peft import prepare_model_for_kbit_training

    model = load_four_bit_model(resolved.path, dtype)
    # Casts norms to fp32 and freezes the base; checkpointing is switched on (or not) by the caller.
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def _unsloth_model(resolved: ResolvedModel, config: TrainConfig, dtype: torch.dtype):
    from unsloth import FastLanguageModel

    from tunelab.models.resolve import loading_options, require_safetensors

    require_safetensors(resolved.path)
    model, _tokenizer = FastLanguageModel.from_pretrained(model_name=resolved.path, max_seq_length=config.max_length,
                                                          dtype=dtype, load_in_4bit=config.adapter == "qlora",
                                                          full_finetuning=config.adapter == "full", **loading_options())
    if config.adapter == "full":
        return model
    targets = _target_modules(config)
    if targets == "all-linear":
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return FastLanguageModel.get_peft_model(
        model, r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=targets, use_dora=config.adapter == "dora", random_state=config.seed,
        use_gradient_checkpointing="unsloth" if config.gradient_checkpointing else False)


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The tensors that training changes, by name (adapter weights, or every weight for full fine-tuning)."""
    return {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}


def load_trainable_state(model, tensors: dict[str, torch.Tensor]) -> None:
    """Copy saved trainable tensors back into `model` (names must match exactly; sliced if it is sharded)."""
    parameters = dict(model.named_parameters())
    missing = [name for name in tensors if name not in parameters]
    if missing:
        raise ValueError(f"checkpoint holds weights the model lacks, e.g. {missing[:3]}")
    with torch.no_grad():
        for name, tensor in tensors.items():
            parameters[name].copy_(sliced_like(tensor, parameters[name]))


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None
