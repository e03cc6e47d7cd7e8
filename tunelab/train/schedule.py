"""The learning-rate schedule: a linear warmup, then linear or cosine decay to zero, or a constant rate.

    --warmup-ratio 0.1 --lr-scheduler linear|cosine|constant

As transformers' `get_linear_schedule_with_warmup` and `get_cosine_schedule_with_warmup` define them, with
one difference: the factor of step s counts s + 1 during warmup, so the first step already moves the
weights (a factor of 0 would waste it).
"""

from __future__ import annotations

import math

import torch


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    """Steps of warmup: the ratio of the run, at least one. (The small term keeps 0.1 × 30 at 3, not 2.)"""
    return max(1, int(total_steps * warmup_ratio + 1e-9))


def learning_rate_factor(step: int, total_steps: int, warmup: int, scheduler: str) -> float:
    """What the base learning rate is multiplied by at `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    if scheduler == "constant":
        return 1.0
    if scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return max(0.0, 1.0 - progress)  # linear


def schedule(optimizer, total_steps: int, warmup_ratio: float, scheduler: str):
    """A LambdaLR for `optimizer` (its state goes into checkpoints like any scheduler's)."""
    warmup = warmup_steps(total_steps, warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, total_steps, warmup, scheduler))
