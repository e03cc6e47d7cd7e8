"""Many LoRA fine-tunes of one base model from one copy of its weights, each token with its own adapter.

    shared = SharedBase(model)                  # a transformers model, in eval
    slot = shared.attach(run.adapter_dir)       # reads only the adapter (a few MB): slot 0, 1, 2, …
    with adapters_per_token({slot: rows}):      # which tokens of the next forward use which adapter
        logits = model(input_ids).logits        # tokens in no slot's rows get the base model alone
    shared.detach(slot)

PEFT mixes adapters in one batch by row (`adapter_names=[…]`, one name per sequence), but continuous
batching (models/serving.py) packs every request's tokens into one row, so here the adapter is chosen per
token. Each adapted linear layer computes the base product for all tokens once, then, for each adapter
present in the step, `scale · B·(A·x)` for that adapter's tokens only, added in place: S-LoRA's and
Punica's layout, with gathers and plain matrix products rather than their CUDA kernels. A DoRA adapter
scales the base and LoRA products by its magnitude over the merged weight's row norms, computed once when
it is attached (PEFT's DoRA forward, rearranged). Adapters are kept in fp32, as PEFT keeps them beside a
16-bit base, and their product is added in the layer's output format, so a 16-bit base does not round
the update away.

What can share a base: PEFT LoRA or DoRA adapters on linear layers, without biases, trained tokens or
`modules_to_save` (what tunelab trains); `why_not_shared(adapter_dir)` names what stops another, which is
then served as a model of its own.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

PREFIX = "base_model.model."
PARTS = {"lora_A.weight": "a", "lora_B.weight": "b", "lora_magnitude_vector": "magnitude"}

_step = threading.local()  # the rows of each adapter in the forward pass this thread is computing


class AdapterNotShared(ValueError):
    """An adapter that cannot share its base's weights with others (the message says why)."""


@contextmanager
def adapters_per_token(rows: dict[int, torch.Tensor] | None):
    """Within this block, this thread's forward passes give the tokens at `rows[slot]` (indices into the
    flattened batch × sequence) adapter `slot`; other tokens get the base model alone."""
    previous = getattr(_step, "rows", None)
    _step.rows = rows
    try:
        yield
    finally:
        _step.rows = previous


def set_adapters_per_token(rows: dict[int, torch.Tensor] | None) -> None:
    """As `adapters_per_token`, until set again: for a forward pre-hook, which cannot hold a block open."""
    _step.rows = rows


@dataclass
class _Adapter:
    a: torch.Tensor  # [rank, in], fp32
    b: torch.Tensor  # [out, rank], fp32
    scale: float  # alpha / rank (alpha / √rank with rsLoRA)
    dora: torch.Tensor | None  # [out]: magnitude / row norms of (W + scale·B·A); None for plain LoRA


class PerTokenLoRA(torch.nn.Module):
    """A linear layer (16-bit, fp32 or 4-bit) with any number of adapters, each applied to its own tokens."""

    def __init__(self, base: torch.nn.Module):
        super().__init__()
        self.base = base
        self.adapters: dict[int, _Adapter] = {}

    @property
    def weight(self):  # model code that reads a projection's weight (its dtype, its device) finds the base's
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x).contiguous()
        rows_by_slot = getattr(_step, "rows", None)
        if not rows_by_slot or not self.adapters:
            return out
        flat_x, flat_out = x.reshape(-1, x.shape[-1]), out.view(-1, out.shape[-1])
        for slot, rows in rows_by_slot.items():
            adapter = self.adapters.get(slot)
            if adapter is None:
                continue
            delta = (flat_x.index_select(0, rows).to(adapter.a.dtype) @ adapter.a.T) @ adapter.b.T * adapter.scale
            if adapter.dora is None:
                flat_out.index_add_(0, rows, delta.to(out.dtype))
                continue
            bias = self.base.bias.to(delta.dtype) if getattr(self.base, "bias", None) is not None else 0
            base_part = flat_out.index_select(0, rows).to(delta.dtype) - bias
            flat_out.index_copy_(0, rows, (adapter.dora * (base_part + delta) + bias).to(out.dtype))
        return out


def why_not_shared(adapter_dir: str | Path) -> str | None:
    """Why the adapter in `adapter_dir` cannot share a base with others, or None if it can."""
    adapter_dir = Path(adapter_dir)
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"its adapter_config.json cannot be read ({error})"
    unsupported = {
        "peft_type": config.get("peft_type") not in (None, "LORA"),
        "bias": config.get("bias", "none") != "none" or config.get("lora_bias"),
        "modules_to_save": bool(config.get("modules_to_save")),
        "fan_in_fan_out": config.get("fan_in_fan_out"),
        "trainable_token_indices": bool(config.get("trainable_token_indices")),
        "layer_replication": bool(config.get("layer_replication")),
        "rank_pattern": bool(config.get("rank_pattern")) or bool(config.get("alpha_pattern")),
        "target_parameters": bool(config.get("target_parameters")),
        "use_qalora": config.get("use_qalora"),
        "alora_invocation_tokens": bool(config.get("alora_invocation_tokens")),
    }
    found = [name for name, present in unsupported.items() if present]
    if found:
        return f"it uses {', '.join(found)}, which per-token adapters do not apply"
    if not (adapter_dir / "adapter_model.safetensors").is_file():
        return "it has no adapter_model.safetensors"
    return None


class SharedBase:
    """One base model whose linear layers take any number of attached adapters, chosen per token."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._layers: dict[str, PerTokenLoRA] = {}
        self._next_slot = 0
        self._lock = threading.Lock()

    def attach(self, adapter_dir: str | Path) -> int:
        """Load the adapter in `adapter_dir` (PEFT's files) beside the others; its slot. Raises
        AdapterNotShared when it cannot be applied per token (see `why_not_shared`)."""
        from safetensors.torch import load_file

        reason = why_not_shared(adapter_dir)
        if reason:
            raise AdapterNotShared(f"{adapter_dir}: {reason}")
        config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
        modules: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in load_file(Path(adapter_dir) / "adapter_model.safetensors").items():
            path, part = _module_and_part(key)
            if part is None:
                raise AdapterNotShared(f"{adapter_dir}: {key} is not a LoRA weight per-token adapters apply")
            modules.setdefault(path, {})[part] = tensor
        with self._lock:
            slot, self._next_slot = self._next_slot, self._next_slot + 1
            for path, parts in modules.items():
                layer = self._layer(path, adapter_dir)
                layer.adapters[slot] = _adapter(layer.base, parts, config)
        return slot

    def detach(self, slot: int) -> None:
        """Forget the adapter in `slot` (its memory goes back once no step is using it)."""
        with self._lock:
            for layer in self._layers.values():
                layer.adapters.pop(slot, None)

    def _layer(self, path: str, adapter_dir) -> PerTokenLoRA:
        if path not in self._layers:
            parent_path, _, name = path.rpartition(".")
            try:
                parent = self.model.get_submodule(parent_path)
                module = getattr(parent, name)
            except AttributeError:
                raise AdapterNotShared(f"{adapter_dir}: it adapts {path}, which this base model does not have") from None
            if not hasattr(module, "weight") or module.weight.dim() != 2 and not hasattr(module.weight, "quant_state"):
                raise AdapterNotShared(f"{adapter_dir}: {path} is not a linear layer")
            self._layers[path] = PerTokenLoRA(module)
            setattr(parent, name, self._layers[path])
        return self._layers[path]


def _module_and_part(key: str) -> tuple[str, str | None]:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' → ('model.layers.0.self_attn.q_proj', 'a')."""
    key = key.removeprefix(PREFIX)
    for suffix, part in PARTS.items():
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], part
    return key, None


def _adapter(base: torch.nn.Module, parts: dict[str, torch.Tensor], config: dict) -> _Adapter:
    device = base.weight.device
    a, b = parts["a"].to(device, torch.float32), parts["b"].to(device, torch.float32)
    rank, alpha = a.shape[0], config.get("lora_alpha", 8)
    scale = alpha / rank ** 0.5 if config.get("use_rslora") else alpha / rank
    dora = None
    if "magnitude" in parts:
        from peft.utils.integrations import dequantize_module_weight

        merged = dequantize_module_weight(base).to(torch.float32) + scale * (b @ a)
        dora = parts["magnitude"].to(device, torch.float32) / merged.norm(p=2, dim=1)
    return _Adapter(a, b, scale, dora)
