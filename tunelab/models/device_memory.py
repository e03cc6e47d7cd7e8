"""What a device has free for this process, and memory sizes written as people write them.

    device_budget("cuda")          # a GPU's free memory now, or $TUNELAB_MEMORY when set
    parse_memory("24GB")           # 24·10⁹ bytes; "80GiB" and "80G" are 80·2³⁰

Training plans its memory from this (train/memory.py) and the server sizes its KV caches from it
(models/serving.py). `TUNELAB_MEMORY` caps both, for a device shared with others.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

MEMORY_VARIABLE = "TUNELAB_MEMORY"


def device_budget(device: str, memory: str | None = None) -> int:
    """Bytes this run may use: `memory` when given (e.g. "24GB", "80GiB", "16000MB"), else $TUNELAB_MEMORY,
    else what the device has free now (a GPU's free memory; a CPU's MemAvailable)."""
    memory = memory or os.environ.get(MEMORY_VARIABLE)
    if memory:
        return parse_memory(memory)
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_memory(text: str) -> int:
    """'24GB' → 24·10⁹ bytes, '80GiB' or '80G' → 80·2³⁰ (as nvidia-smi's GiB), '512MB', '1.5TB'."""
    found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*", text or "")
    if not found or found.group(2).lower() not in _UNITS:
        raise ValueError(f"--memory {text!r}: expected a size such as 24GB, 80GiB or 16000MB")
    return int(float(found.group(1)) * _UNITS[found.group(2).lower()])


