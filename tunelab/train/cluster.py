"""The processes a run trains in: one, or several under `accelerate launch`/torchrun (data-parallel or FSDP)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from tunelab.train.methods import training_device


@dataclass
class Cluster:
    """This process's place among the data-parallel processes (one process: rank 0 of 1).

    Unsharded, every process holds the whole model and gradients are summed after each step
    (`sum_gradients`); sharded (FSDP, train/sharding.py), each holds a slice and PyTorch sums gradients
    into the slices during the backward pass.
    """

    accelerator: object
    rank: int
    world: int
    device: str
    sharded: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all processes (the values unchanged with one process)."""
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def sum_gradients(self, parameters: list[torch.Tensor]) -> None:
        """Add up the gradients of all processes, in one flat all-reduce."""
        if self.world == 1:
            return
        gradients = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in gradients])
        torch.distributed.all_reduce(flat)
        offset = 0
        for parameter in parameters:
            parameter.grad = flat[offset:offset + parameter.numel()].view_as(parameter).clone()
            offset += parameter.numel()

    def broadcast(self, value):
        if self.world == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]

    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()


def join_cluster(fsdp: bool = False) -> Cluster:
    """Set up data parallelism when launched by `accelerate launch`/torchrun; one process otherwise.

    Sharded when asked for by `fsdp` or by `accelerate launch --use_fsdp`, and there is more than one process.
    """
    from accelerate import Accelerator

    device = training_device()
    accelerator = Accelerator(cpu=device == "cpu")
    state = accelerator.state
    fsdp = fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    return Cluster(accelerator, state.process_index, state.num_processes, str(accelerator.device),
                   sharded=fsdp and state.num_processes > 1)
