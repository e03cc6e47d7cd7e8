"""A run's model as one plain Hugging Face checkpoint: the adapter folded into the base weights.

    model, tokenizer = merged_model(RunDir("runs/support"))          # fp32, on the CPU
    save_merged(model, tokenizer, "out/support-merged", torch.bfloat16)

The fold is done in fp32 from the base's full-precision weights — never from a 4-bit base (a QLoRA run's
adapter is folded into the base as it was before quantization) and never in 16 bits: a LoRA update is far
smaller than a 16-bit weight's rounding step, which is how a merged model ends up worse than its adapter.
Only the finished sum is cast to the export's number format.

What is saved loads with transformers alone (no tunelab, no PEFT): safetensors weights, the tokenizer with
the chat template the run trained with, and a generation config whose EOS ids hold the template's
end-of-turn token, so `generate` stops where the fine-tune learned to stop.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tunelab.conversation.templates import end_of_turn_token, stop_token_ids
from tunelab.models.resolve import load_adapter, load_model, load_tokenizer, resolve_model
from tunelab.runs.rundir import RunDir

_STORED_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def merged_model(run: RunDir):
    """The run's model in fp32 on the CPU, adapter folded in, and its tokenizer (the run's own)."""
    tokenizer = load_tokenizer(str(run.tokenizer_dir))
    if run.is_full_fine_tune:
        return load_model(str(run.model_dir), dtype=torch.float32).eval(), tokenizer
    base = load_model(resolve_model(run.settings()["model"]).path, dtype=torch.float32)
    model = load_adapter(base, run.adapter_dir).merge_and_unload()
    return model.eval(), tokenizer


def base_dtype(run: RunDir) -> torch.dtype:
    """The number format the base model's weights are stored in (its config.json says), fp32 if unsaid:
    the merged model keeps it, so it is no larger and no less exact than what the user started from."""
    source = run.model_dir if run.is_full_fine_tune else Path(resolve_model(run.settings()["model"]).path)
    config_file = source / "config.json"
    if not config_file.is_file():  # a hub id not yet downloaded: transformers reads it on load
        from transformers import AutoConfig

        stored = getattr(AutoConfig.from_pretrained(str(source)), "dtype", None)
    else:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        stored = config.get("dtype") or config.get("torch_dtype")
    stored = str(stored).replace("torch.", "") if stored else "float32"
    return _STORED_DTYPES.get(stored, torch.float32)


def save_merged(model, tokenizer, out: str | Path, dtype: torch.dtype) -> Path:
    """Write `model` (cast to `dtype`) and `tokenizer` as a Hugging Face checkpoint in the directory `out`."""
    out = Path(out)
    model = model.to(dtype)
    generation = model.generation_config
    stops = stop_token_ids(tokenizer, generation)
    end_of_turn = end_of_turn_token(tokenizer)  # first: a tool that reads one EOS id reads this one
    generation.eos_token_id = sorted(stops, key=lambda token: token != end_of_turn)
    generation.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        generation.bos_token_id = tokenizer.bos_token_id
    model.config.dtype = dtype
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out
