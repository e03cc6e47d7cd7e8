"""Which device and which number format a model runs in: one decision, shared by training and inference.

    tunelab train --dtype auto|fp32|bf16|fp16

`auto` picks what the hardware multiplies fastest without losing the training signal:
- CUDA: bf16 where the GPU has it (Ampere and later), else fp16 with loss scaling;
- CPU: bf16 where the CPU has bf16 matrix units (AVX-512 BF16 or AMX: `_is_mkldnn_bf16_supported()`),
  else fp32. On a CPU without those units bf16 is emulated and runs hundreds of times slower, so it is
  only ever used there when asked for by name (tests do, to prove the bf16 path on any machine).

Whatever the compute format, trained weights stay in fp32 (LoRA adapters, and full fine-tuning's master
weights): their updates are far smaller than a 16-bit weight's rounding step.
"""

from __future__ import annotations

import torch

from tunelab.core.settings import DTYPES
_BY_NAME = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionUnavailable(RuntimeError):
    """The requested number format cannot run on this device; the message says why and what instead."""


def best_device() -> str:
    """'cuda' when a CUDA GPU is present, else 'cpu'."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_bf16() -> bool:
    """True when this CPU multiplies bf16 natively (AVX-512 BF16 or AMX), not by emulation."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def native_bf16(device: str) -> bool:
    """True when `device` multiplies bf16 in hardware. On CUDA that is compute capability 8.0 (Ampere) and
    later: `torch.cuda.is_bf16_supported()` also says yes on a T4 or V100, which only emulate bf16 (several
    times slower than their fp16), so `auto` would pick the slow format there."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return False
        if torch.version.hip:
            return True  # every AMD GPU that ROCm PyTorch runs on has bf16
        return torch.cuda.get_device_capability(torch.device(device).index)[0] >= 8
    return cpu_has_bf16()


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """The compute dtype for a `dtype` setting on `device`; `auto` is the hardware's fastest safe choice."""
    if name not in DTYPES:
        raise PrecisionUnavailable(f"dtype: {name!r} is not one of {', '.join(DTYPES)}")
    if name == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if native_bf16(device) else torch.float16
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    if name == "bf16" and device.startswith("cuda") and not native_bf16(device):
        raise PrecisionUnavailable("dtype: bf16 needs a GPU of the Ampere generation or later, and this one has "
                                   "no bf16 units; use dtype: fp16 (with loss scaling) or fp32")
    return _BY_NAME[name]


def dtype_name(dtype: torch.dtype) -> str:
    """'fp32', 'bf16' or 'fp16': the setting's own spelling of a torch dtype."""
    return next(name for name, value in _BY_NAME.items() if value == dtype)


def requested_dtype(name: str) -> torch.dtype | None:
    """A generation `--dtype` (auto, fp32, bf16): None for auto (`inference_dtype` decides), else the dtype."""
    if name not in ("auto", "fp32", "bf16"):
        raise ValueError(f"--dtype: {name!r} is not one of auto, fp32, bf16")
    return None if name == "auto" else _BY_NAME[name]


def inference_dtype(trained_with: str | None, device: str) -> torch.dtype:
    """The format to generate and score in: on CUDA, the run's own (bf16 where the GPU has it); on a CPU,
    bf16 where it has bf16 units, unless the run was trained in fp32 by request, else fp32.

    Measured on a two-core AVX-512 BF16 CPU with the default model, 60 prompts × 20 new tokens: 9.8 s in
    bf16 against 31.0 s in fp32, peak memory 2.2 GB against 2.5 GB. Without those units bf16 is emulated,
    so fp32 it is (it holds every bf16 weight exactly).
    """
    if device.startswith("cuda"):
        return resolve_dtype(trained_with or "auto", device)
    return torch.bfloat16 if cpu_has_bf16() and trained_with != "fp32" else torch.float32
