"""A checkpoint carries every random state a step draws from, so a resumed run is the uninterrupted one."""

import torch

from tunelab.train.checkpoints import latest_checkpoint, restore_training_state, save_checkpoint


def stand_in_gpu_generator(monkeypatch) -> torch.Generator:
    """A GPU's random generator, which cannot exist here: torch.cuda's state functions answer from this one."""
    generator = torch.Generator().manual_seed(7)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": generator.get_state())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": generator.set_state(state))
    return generator


def test_resuming_restores_the_gpu_random_state_as_well_as_the_cpu_one(tmp_path, monkeypatch):
    gpu = stand_in_gpu_generator(monkeypatch)
    weight = torch.nn.Parameter(torch.zeros(4))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    torch.manual_seed(3)
    save_checkpoint(tmp_path, 1, {"weight": weight}, optimizer.state_dict(), schedule, state={})
    next_dropout_masks = torch.rand(8), torch.rand(8, generator=gpu)  # what the step after the checkpoint draws

    torch.rand(100), torch.rand(100, generator=gpu)  # the run went on, then was killed
    restore_training_state(latest_checkpoint(tmp_path), optimizer, schedule)
    assert torch.equal(torch.rand(8), next_dropout_masks[0])
    assert torch.equal(torch.rand(8, generator=gpu), next_dropout_masks[1])
