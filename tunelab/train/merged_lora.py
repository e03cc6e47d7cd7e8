"""LoRA layers that train through one multiplication instead of three.

PEFT computes a LoRA layer as `base(x) + B(A(x)) * scaling`: the base product, then the low-rank product
written out at full output width, a scaling pass and an addition pass over that same full-width tensor —
and the mirror image in the backward pass. On a CPU the three extra passes over (tokens × output) floats
are memory traffic that costs as much as a sixth of a training step.

Here the frozen weight and the adapter are merged for each step instead, W' = W + scaling · B·A (a
rank-r update of a matrix that is small next to the activations), and the layer is one product x·W'ᵀ. The
backward pass needs only x and the small A and B: grad x = g·W', grad B = scaling · gᵀ·(x·Aᵀ) and
grad A = scaling · (g·B)ᵀ·x. That is exactly LoRA's gradient, up to fp32 rounding order.

With a 16-bit frozen weight (bf16 or fp16 training) merging would round away an update far smaller than
the weight's rounding step, so there the layer computes x·Wᵀ and adds the low-rank product into it in
place (one multiply-accumulate, scaling folded into B), in the 16-bit format throughout: no fp32 copy of
the activations, no full-width scaling or addition pass. Its gradients are LoRA's own, with products in
the 16-bit format and accumulation in fp32, as autocast computes them through PEFT's layer.

Used only where that holds: plain LoRA (no DoRA), no adapter dropout (dropout applies to the adapter's
input alone, which a merged weight cannot express), and while gradients are on. Everything else —
inference, generation, `disable_adapter()` — goes through PEFT's own forward.
"""

from __future__ import annotations

import torch

from tunelab.train.patching import replace_forward


class _MergedLoRALinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs, weight, bias, lora_a, lora_b, scaling):
        merged = torch.addmm(weight, lora_b, lora_a, alpha=scaling)
        ctx.save_for_backward(inputs, weight, lora_a, lora_b)
        ctx.scaling = scaling
        return torch.nn.functional.linear(inputs, merged, bias)

    @staticmethod
    def backward(ctx, grad_output):
        inputs, weight, lora_a, lora_b = ctx.saved_tensors
        scaling = ctx.scaling
        grad_rows = grad_output.reshape(-1, grad_output.shape[-1])
        input_rows = inputs.reshape(-1, inputs.shape[-1])
        grad_inputs = None
        if ctx.needs_input_grad[0]:
            # Rebuilt rather than saved: a merge costs little next to keeping every layer's W' alive.
            merged = torch.addmm(weight, lora_b, lora_a, alpha=scaling)
            grad_inputs = (grad_rows @ merged).view_as(inputs)
        grad_a = (grad_rows @ lora_b).T.mm(input_rows).mul_(scaling)
        grad_b = grad_rows.T.mm(input_rows @ lora_a.T).mul_(scaling)
        return grad_inputs, None, None, grad_a, grad_b, None


class _LowPrecisionLoRALinear(torch.autograd.Function):
    """x·Wᵀ + scaling · (x·Aᵀ)·Bᵀ with a 16-bit W: the low-rank product accumulated into the base product."""

    @staticmethod
    def forward(ctx, inputs, weight, bias, lora_a, lora_b, scaling):
        dtype = weight.dtype
        inputs = inputs.to(dtype)
        lora_a, scaled_b = lora_a.to(dtype), (lora_b * scaling).to(dtype)
        input_rows = inputs.reshape(-1, inputs.shape[-1])
        reduced = input_rows @ lora_a.T  # (tokens, r): small
        output = torch.nn.functional.linear(input_rows, weight, bias).addmm_(reduced, scaled_b.T)
        ctx.save_for_backward(inputs, weight, lora_a, scaled_b, reduced)
        ctx.scaling = scaling
        return output.view(*inputs.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_output):
        inputs, weight, lora_a, scaled_b, reduced = ctx.saved_tensors
        grad_rows = grad_output.reshape(-1, grad_output.shape[-1]).to(weight.dtype)
        input_rows = inputs.reshape(-1, inputs.shape[-1])
        grad_reduced = grad_rows @ scaled_b  # scaling · g·B, (tokens, r)
        grad_inputs = None
        if ctx.needs_input_grad[0]:
            grad_inputs = (grad_rows @ weight).addmm_(grad_reduced, lora_a).view_as(inputs)
        grad_a = (grad_reduced.T @ input_rows).float()
        grad_b = (grad_rows.T @ reduced).float().mul_(ctx.scaling)
        return grad_inputs, None, None, grad_a, grad_b, None


def _merged_forward(layer, inputs, *args, **kwargs):
    if args or kwargs or layer.disable_adapters or layer.merged or not torch.is_grad_enabled():
        return type(layer).forward(layer, inputs, *args, **kwargs)
    name = layer.active_adapters[0]
    base = layer.base_layer
    path = _MergedLoRALinear if base.weight.dtype == torch.float32 else _LowPrecisionLoRALinear
    return path.apply(inputs, base.weight, base.bias, layer.lora_A[name].weight, layer.lora_B[name].weight,
                      layer.scaling[name])


def _can_merge(layer) -> bool:
    base = layer.base_layer
    if not isinstance(base, torch.nn.Linear) or len(layer.active_adapters) != 1:
        return False
    name = layer.active_adapters[0]
    # DoRA and PEFT's other variants register in lora_variant; only plain LoRA merges this way.
    return (name in layer.lora_A and name not in getattr(layer, "lora_variant", {})
            and isinstance(layer.lora_dropout[name], torch.nn.Identity)
            and layer.lora_A[name].weight.dtype == torch.float32
            and not base.weight.requires_grad and (base.bias is None or not base.bias.requires_grad))


def train_through_merged_weights(model) -> int:
    """Switch every eligible PEFT LoRA linear layer of `model` to the merged path; returns how many."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    switched = 0
    for layer in model.modules():
        if isinstance(layer, LoraLinear) and _can_merge(layer):
            replace_forward(layer, _merged_forward)
            switched += 1
    return switched
