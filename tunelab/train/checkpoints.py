"""Checkpoints under RUN/checkpoints/, written so that a crash at any moment leaves a usable run.

Each checkpoint is a directory `step-000120/` holding everything needed to continue exactly:
- `trainable.safetensors`: the trained weights (LoRA/DoRA adapter tensors, or the whole model for full
  fine-tuning) — safetensors, like every weight file tunelab writes;
- `optimizer.safetensors`: AdamW's moment tensors; `state.json`: the optimizer's scalars and parameter
  groups, the learning-rate schedule's position, the epoch and batch reached, the random-number states,
  the metric rows so far and the early-stopping record;
- `rng.safetensors`: torch's random states, the CPU's and, when training on a GPU, the GPU's (dropout masks
  on a GPU come from the GPU's own generator).

No pickle anywhere, so loading a checkpoint cannot run code. A checkpoint is written into a hidden
temporary directory and renamed into place when complete; a rename is atomic, so a directory named
`step-*` is always whole and a half-written one (left by a crash) is never picked up. The newest three are
kept, as OpenAI keeps the last three epochs' checkpoints.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tunelab.core.files import atomic_path, remove_stale_temporaries
from tunelab.runs.rundir import CHECKPOINT_PREFIX, complete_checkpoints
from tunelab.train.sharding import sliced_optimizer_state

KEEP_LAST = 3


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict

    def trainable(self) -> dict[str, torch.Tensor]:
        return load_file(self.path / "trainable.safetensors")


def save_checkpoint(root: Path, step: int, trainable: dict[str, torch.Tensor], optimizer_state: dict, scheduler,
                    state: dict, keep_last: int = KEEP_LAST, best: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint `step` into `root` (a run's checkpoints directory) atomically, then delete all but
    the newest `keep_last`.

    `trainable` and `optimizer_state` (an optimizer's state_dict) hold whole tensors, gathered first if the
    run is sharded (train/sharding.py). `best`: the weights of the best validation so far (early stopping).
    """
    final = Path(root) / f"{CHECKPOINT_PREFIX}{step:06d}"
    # The same step written again after a resume: the new one replaces it.
    with atomic_path(final, directory=True, replace=True) as temporary:
        temporary.mkdir()
        save_file({name: tensor.detach().contiguous().cpu() for name, tensor in trainable.items()},
                  temporary / "trainable.safetensors")
        optimizer_tensors, optimizer_scalars = _split_optimizer_state(optimizer_state)
        save_file(optimizer_tensors, temporary / "optimizer.safetensors")
        save_file(random_states(), temporary / "rng.safetensors")
        record = dict(state, step=step, optimizer=optimizer_scalars, scheduler=scheduler.state_dict())
        (temporary / "state.json").write_text(json.dumps(record), encoding="utf-8")
        if best is not None:
            save_file(best, temporary / "best.safetensors")
        _sync_directory(temporary)
    for old in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(root: Path) -> Checkpoint | None:
    """The newest complete checkpoint in `root`, or None; what interrupted writes left there is removed."""
    if Path(root).is_dir():
        remove_stale_temporaries(root)
    checkpoints = complete_checkpoints(root)
    if not checkpoints:
        return None
    path = checkpoints[-1]
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    return Checkpoint(path, state["step"], state)


def restore_training_state(checkpoint: Checkpoint, optimizer, scheduler) -> None:
    """Put the optimizer, schedule and torch's random state back as they were at the checkpoint."""
    tensors = load_file(checkpoint.path / "optimizer.safetensors")
    whole = _join_optimizer_state(tensors, checkpoint.state["optimizer"])
    optimizer.load_state_dict(sliced_optimizer_state(whole, optimizer))
    scheduler.load_state_dict(checkpoint.state["scheduler"])
    restore_random_states(load_file(checkpoint.path / "rng.safetensors"))


def random_states() -> dict[str, torch.Tensor]:
    """The CPU's random state and, once this process has used its GPU, the current GPU's. With several
    processes, every one continues from the first one's states, as they all started from one seed."""
    states = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def restore_random_states(states: dict[str, torch.Tensor]) -> None:
    """Put back what random_states() saved; a GPU state is restored only where there is a GPU (a run moved
    to a CPU continues, but its dropout masks cannot be the GPU's)."""
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def _split_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state_dict as safetensors-ready tensors plus JSON-ready scalars."""
    tensors, scalars = {}, {"param_groups": state_dict["param_groups"], "scalars": {}}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars["scalars"][f"{index}.{name}"] = value
    return tensors, scalars


def _join_optimizer_state(tensors: dict[str, torch.Tensor], scalars: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(scalars["scalars"].items()):
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": scalars["param_groups"]}


def _sync_directory(directory: Path) -> None:
    """Flush the checkpoint's files to disk before the rename makes it visible."""
    for path in directory.iterdir():
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
