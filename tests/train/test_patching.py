"""A model whose layers were switched to the fast paths is freed as soon as its last user drops it."""

import copy
import gc
import weakref

import torch

from tunelab.core.settings import TrainConfig
from tunelab.models.resolve import resolve_model
from tunelab.train.methods import trainable_model


def test_a_dropped_model_is_freed_at_once_and_a_copy_calls_its_own_layers(tiny_model_dir):
    model = trainable_model(resolve_model(str(tiny_model_dir)), TrainConfig(data="x", lora_dropout=0.0), "cpu")
    switched = [m for m in model.modules() if "forward" in m.__dict__]
    assert len(switched) > 2 * 7  # the LoRA projections and the norms took the fast paths

    copied = copy.deepcopy(model)
    ids = torch.tensor([[2, 5, 9, 11]])
    with torch.enable_grad():
        assert torch.equal(model(input_ids=ids).logits, copied(input_ids=ids).logits)
    layer = next(m for m in copied.modules() if "forward" in m.__dict__)
    assert layer.forward.module() is layer

    gc.disable()  # only reference counting may free it, as when a server drops a model between collections
    try:
        dropped = [weakref.ref(model)] + [weakref.ref(m) for m in switched]
        del model, switched, layer
        assert [reference() for reference in dropped] == [None] * len(dropped)
    finally:
        gc.enable()
