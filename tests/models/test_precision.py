"""The number format `auto` chooses on GPUs that cannot exist here: the GPU's answers are stood in for, the
decision is ours."""

import pytest
import torch

from tunelab.models.precision import PrecisionUnavailable, native_bf16, resolve_dtype


def stand_in_gpu(monkeypatch, capability: tuple[int, int]) -> None:
    """A CUDA GPU of this compute capability, answering as PyTorch does on it: `is_bf16_supported()` counts
    emulation (a T4 says yes) unless `including_emulation=False`."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: capability[0] >= 8 or including_emulation)
    monkeypatch.setattr(torch.version, "hip", None)


@pytest.mark.parametrize(("capability", "expected"), [((7, 5), torch.float16), ((7, 0), torch.float16),
                                                      ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_takes_bf16_only_where_the_gpu_has_bf16_units(monkeypatch, capability, expected):
    stand_in_gpu(monkeypatch, capability)
    assert resolve_dtype("auto", "cuda") == expected and native_bf16("cuda:0") == (expected == torch.bfloat16)


def test_bf16_by_name_on_a_gpu_without_bf16_units_is_refused_with_what_to_use(monkeypatch):
    stand_in_gpu(monkeypatch, (7, 5))  # a T4
    with pytest.raises(PrecisionUnavailable, match="fp16"):
        resolve_dtype("bf16", "cuda")
    assert resolve_dtype("fp16", "cuda") == torch.float16
