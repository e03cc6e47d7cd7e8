"""What a bug report needs to know about this machine, and the model cache: what it holds, and clearing it.

    environment()          # {"tunelab": …, "python": …, "cpu": {"name", "cores", "bf16", "isa"}, "gpus": [...], …}
    cached_models()        # [CachedModel(name, path, bytes)] under cache_dir()/models
    clear_cached_models()  # removes them (a converted model is made again on its next use)
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from tunelab.models.resolve import cache_dir

PACKAGES = ("torch", "transformers", "peft", "accelerate", "safetensors", "gguf", "openai", "fastapi",
            "bitsandbytes", "liger-kernel", "unsloth", "llama-cpp-python", "trl", "wandb", "mlflow-skinny", "mlflow",
            "tensorboard")
ENVIRONMENT_VARIABLES = ("TUNELAB_HOME", "TUNELAB_CACHE", "TUNELAB_API_KEY", "TUNELAB_ADMIN_KEY", "TUNELAB_DEBUG",
                         "TUNELAB_TRUST_REMOTE_CODE", "WANDB_API_KEY", "WANDB_MODE", "MLFLOW_TRACKING_URI",
                         "TUNELAB_ALLOW_PICKLE", "HF_HOME", "HF_HUB_OFFLINE", "HF_ENDPOINT", "OPENAI_BASE_URL",
                         "OPENAI_API_KEY", "CUDA_VISIBLE_DEVICES", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                         "OMP_NUM_THREADS")
SECRET_VARIABLES = ("TUNELAB_API_KEY", "TUNELAB_ADMIN_KEY", "OPENAI_API_KEY", "WANDB_API_KEY")
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "neon", "sve")


@dataclass
class CachedModel:
    name: str
    path: str
    bytes: int


def environment() -> dict:
    """Versions, CPU (with bf16 units or not), GPUs, the caches' sizes and the variables tunelab reads; secrets
    are reported as set or not, never by value."""
    import torch

    from tunelab import __version__
    from tunelab.models.precision import best_device, cpu_has_bf16

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            properties = torch.cuda.get_device_properties(index)
            gpus.append({"index": index, "name": properties.name, "memory_gib": round(properties.total_memory / 2**30, 1),
                         "capability": f"{properties.major}.{properties.minor}",
                         "bf16": properties.major >= 8})  # Ampere and later compute bf16 natively
    models = cached_models()
    name, flags = _cpu_name_and_flags()
    return {
        "tunelab": __version__, "python": platform.python_version(), "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "cpu": {"name": name, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                "bf16": cpu_has_bf16(), "isa": [flag for flag in ISA_FLAGS if flag in flags],
                "torch_capability": torch.backends.cpu.get_cpu_capability()},
        "device": best_device(), "gpus": gpus, "cuda": torch.version.cuda,
        "cache": {"path": str(cache_dir()), "models": [asdict(m) for m in models],
                  "bytes": sum(m.bytes for m in models)},
        "environment": {name: ("set" if name in SECRET_VARIABLES else os.environ[name])
                        for name in ENVIRONMENT_VARIABLES if os.environ.get(name)},
    }


def cached_models() -> list[CachedModel]:
    """The converted models under the cache (each a folder of safetensors made from a GGUF), largest first."""
    folder = cache_dir() / "models"
    found = [CachedModel(p.name, str(p), _size(p)) for p in folder.glob("*") if p.is_dir() and not p.name.startswith(".")]
    return sorted(found, key=lambda model: model.bytes, reverse=True)


def clear_cached_models(names: list[str] | None = None) -> list[CachedModel]:
    """Remove cached models (all, or those named); returns what was removed. Unknown names are a ValueError."""
    models = cached_models()
    if names:
        unknown = sorted(set(names) - {m.name for m in models})
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: not in the cache ({cache_dir() / 'models'}); it holds "
                             f"{', '.join(m.name for m in models) or 'nothing'}")
        models = [m for m in models if m.name in names]
    for model in models:
        shutil.rmtree(model.path)
    return models


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name_and_flags() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags, from /proc/cpuinfo (Linux); the platform's name elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []

    def field(*keys: str) -> str | None:
        return next((l.partition(":")[2].strip() for l in lines if l.startswith(keys)), None)

    return field("model name") or platform.processor() or platform.machine(), set((field("flags", "Features") or "").split())
