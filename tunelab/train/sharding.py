"""Fully sharded data parallelism (FSDP2): each process keeps 1/N of the weights, gradients and optimizer state.

    accelerate launch --use_fsdp --num_processes 4 -m tunelab.cli train --data …     # or: train --fsdp

Plain data parallelism (train/local.py's Cluster) keeps a whole copy of the model on every process; a model
that does not fit one device needs it split instead. PyTorch's `fully_shard` does the splitting: every
decoder layer becomes one group whose weights are gathered just before the layer runs and dropped just after,
and whose gradients are summed into each process's slice (reduce-scatter) as the backward pass leaves it.

The root group is `TrainedTokenLoss`, not the language model, so the embeddings, final norm and the LM head
(tied to the embeddings in most small models) are gathered once for the whole forward pass, which is where
train/loss.py reads the head weight.

Two things follow from every process holding only a slice:
- All processes must run the same number of forward passes, since each gathers weights together with the
  others. A process with fewer examples in a batch runs a pass that counts for nothing (see Fit).
- Weights written to disk are gathered first (`gathered_to_cpu`), one tensor at a time and kept only by
  the process that writes, and weights read back are sliced again (`sliced_like`). Checkpoints therefore
  hold whole tensors and resume under any number of processes. The writing process does hold every trained
  tensor in host memory while it writes (the whole model, for full fine-tuning).
"""

from __future__ import annotations

import torch


def shard(loss_module: torch.nn.Module, model: torch.nn.Module, device: str) -> None:
    """Shard `model`'s decoder layers, then the rest under `loss_module` (the module whose forward we call)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    mesh = init_device_mesh(device.split(":")[0], (torch.distributed.get_world_size(),))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(loss_module, mesh=mesh)
    for module in loss_module.modules():
        if isinstance(module, FSDPModule):
            # Our loss is a sum over the batch's trained tokens divided by their count across all processes,
            # so the gradients must be added up, not averaged as FSDP does by default. A plain sum, because
            # Gloo (CPU processes) has no pre-multiplied sum.
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)


def local_share(model: torch.nn.Module) -> tuple[int, int]:
    """(weights this process holds, weights in the model): about 1/N of them when sharded over N processes."""
    from torch.distributed.tensor import DTensor

    parameters = list(model.parameters())
    held = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in parameters)
    return held, sum(p.numel() for p in parameters)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks: the modules the model itself says must not be split across devices."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    block_names = set(getattr(causal_lm, "_no_split_modules", None) or [])
    layers = [m for m in causal_lm.get_decoder().modules() if type(m).__name__ in block_names]
    if not layers:
        raise ValueError(f"{type(causal_lm).__name__} names no decoder layer class (_no_split_modules); "
                         "cannot shard it")
    return layers


def gathered_to_cpu(tensors: dict[str, torch.Tensor], keep: bool) -> dict[str, torch.Tensor]:
    """Whole copies of `tensors` in host memory where `keep` (the writing process), else nothing.

    A collective when they are sharded: every process calls it with the same names in the same order, and
    each tensor is gathered by all of them together, then dropped at once by those that do not keep it.
    """
    from torch.distributed.tensor import DTensor

    whole = {}
    for name, tensor in tensors.items():
        full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        if keep:
            whole[name] = full.detach().cpu()
    return whole


def sliced_like(tensor: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    """`tensor` (whole) laid out as `parameter` is: this process's slice if it is sharded, else unchanged."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(parameter, DTensor) and not isinstance(tensor, DTensor):
        # Every process holds the whole tensor (read from the same file), so each takes its own slice
        # without communicating.
        return distribute_tensor(tensor.to(parameter.device, parameter.dtype), parameter.device_mesh,
                                 parameter.placements, src_data_rank=None)
    return tensor


def gathered_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool) -> dict:
    """`optimizer.state_dict()` with whole tensors in host memory where `keep` (as `gathered_to_cpu`)."""
    state_dict = optimizer.state_dict()
    state = {}
    for index, values in state_dict["state"].items():
        tensors = gathered_to_cpu({name: v for name, v in values.items() if isinstance(v, torch.Tensor)}, keep)
        state[index] = {name: tensors.get(name) if isinstance(v, torch.Tensor) else v for name, v in values.items()}
    return {"state": state, "param_groups": state_dict["param_groups"]}


def sliced_optimizer_state(state_dict: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A state dict of whole tensors (`gathered_optimizer_state`) laid out as `optimizer`'s parameters are."""
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for index, values in state_dict["state"].items():
        parameter = parameters[int(index)]
        # Moments have the parameter's shape and are sliced like it; the step count is a scalar on each.
        state[index] = {name: sliced_like(value, parameter) if isinstance(value, torch.Tensor)
                        and value.shape == parameter.shape else value for name, value in values.items()}
    return {"state": state, "param_groups": state_dict["param_groups"]}
