"""Batches: which examples train together in each epoch, and a batch as the model's input tensors."""

from __future__ import annotations

import random

import torch

from tunelab.conversation.render import IGNORE_INDEX, RenderedExample


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Example indices grouped into batches of similar length, batches in a shuffled order.

    The order depends only on (seed, epoch), so a resumed run can recreate any epoch's batches.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], rng.random()))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(examples: list[RenderedExample], pad_id: int, device: str):
    """Right-padded input ids, attention mask and labels for a list of examples."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return input_ids.to(device), attention.to(device), labels.to(device)
