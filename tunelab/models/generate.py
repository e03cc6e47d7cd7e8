"""Load a base model or a fine-tuned run for generation, and generate replies in batches.

A run directory (from `tunelab train`) is self-contained: its `config.yaml` names the base model, its
`adapter/` holds the LoRA weights and its `tokenizer/` the tokenizer with the chat template it was trained
with. Generation stops at the template's end-of-turn token or the model's own EOS ids; a reply that hits
the token limit instead is reported with `finish_reason="length"`, and one that calls tools with
`finish_reason="tool_calls"` and its calls parsed into OpenAI's `tool_calls`, as OpenAI does.

The model goes on the best device: a CUDA GPU in the run's compute format, or the CPU in fp32
(models/precision.py says why); a QLoRA run's base is loaded in 4 bits on CUDA, as it was trained, and in
full precision elsewhere.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from tunelab.conversation.render import render_prompt_ids
from tunelab.conversation.templates import parse_tool_calls, stop_token_ids
from tunelab.models.precision import best_device, inference_dtype
from tunelab.models.resolve import load_four_bit_model, load_model, load_tokenizer, resolve_model
from tunelab.runs.rundir import RunDir


@dataclass
class LoadedModel:
    """A model ready to generate, with its tokenizer and the names reports use."""

    model: torch.nn.Module
    tokenizer: object
    base_name: str
    fine_tuned_name: str | None  # None when no adapter is loaded
    fully_fine_tuned: bool = False  # every weight changed: there is no adapter to switch off

    @property
    def has_adapter(self) -> bool:
        return self.fine_tuned_name is not None and not self.fully_fine_tuned


@dataclass
class Generation:
    text: str  # the reply as written, tool-call blocks included
    finish_reason: str  # "stop" (ended its turn), "length" (hit max_new_tokens) or "tool_calls"
    completion_tokens: int
    tool_calls: list[dict] = field(default_factory=list)  # OpenAI-shaped, parsed from `text`
    content: str | None = None  # `text` without its tool calls (None when it is only calls)
    prompt_tokens: int = 0
    ended_by_stop_string: bool = False


def finished_reply(tokenizer, new_tokens: list[int], stop_ids: list[int], prompt_tokens: int,
                   stops: list[str] = (), strip_end: bool = True) -> Generation:
    """The reply made of `new_tokens` (generated after the prompt): up to the first stop id, or to the first
    of the `stops` strings (OpenAI's `stop`, not included), with surrounding whitespace removed
    (`strip_end=False` keeps it at the end, for a reply still being written)."""
    stop_at = next((k for k, t in enumerate(new_tokens) if t in stop_ids), None)
    kept = new_tokens if stop_at is None else new_tokens[:stop_at]
    text = tokenizer.decode(kept, skip_special_tokens=True).lstrip()
    cut = min((text.index(stop) for stop in stops if stop in text), default=None)
    if cut is not None:
        text = text[:cut]
    elif strip_end:
        text = text.rstrip()
    parsed = parse_tool_calls(text)
    ended = stop_at is not None or cut is not None
    return Generation(text=text, finish_reason="length" if not ended else "tool_calls" if parsed.tool_calls else "stop",
                      completion_tokens=len(kept) + (stop_at is not None), tool_calls=parsed.tool_calls,
                      content=parsed.content, prompt_tokens=prompt_tokens, ended_by_stop_string=cut is not None)


def adapter_state(loaded: LoadedModel, use_adapter: bool):
    """Generate with the adapter merged into the weights (no per-layer LoRA cost), or with it switched off.

    Merging is done in place and undone for base-model generation, so one copy of the weights serves both.
    """
    if loaded.fully_fine_tuned and not use_adapter:
        raise ValueError(f"{loaded.fine_tuned_name} is a full fine-tune: it has no adapter to switch off for a "
                         f"base-model answer; load the base model ({loaded.base_name}) on its own")
    if not loaded.has_adapter:
        return nullcontext()
    model = loaded.model
    merged = any(getattr(m, "merged", False) for m in model.modules() if hasattr(m, "merged_adapters"))
    if use_adapter:
        # Merged only into fp32 weights: a 16-bit weight would round away most of a LoRA update (the
        # "merged model is worse than the adapter" complaint); there PEFT adds the adapter's product instead.
        if not merged and next(model.parameters()).dtype == torch.float32:
            model.merge_adapter()
        return nullcontext()
    if merged:
        model.unmerge_adapter()
    return model.disable_adapter()


def load_for_generation(model_or_run: str, chat_template: str | None = None, device: str | None = None) -> LoadedModel:
    """Load a run directory (base + adapter, or a full fine-tune) or a plain model spec ('default', a path,
    a hub id; `chat_template` for a model without one of its own), on `device` (default: the best one)."""
    device = device or best_device()
    run = RunDir(model_or_run)
    if run.is_finished():
        from peft import PeftModel

        settings = run.settings()
        dtype = inference_dtype(settings.get("dtype"), device)
        resolved = resolve_model(settings["model"])
        tokenizer = load_tokenizer(str(run.tokenizer_dir))
        full = run.is_full_fine_tune
        if full:
            model = load_model(str(run.model_dir), dtype=dtype)
        else:
            base = load_four_bit_model(resolved.path, dtype) if settings.get("method") == "qlora" and device == "cuda" \
                else load_model(resolved.path, dtype=dtype)
            model = PeftModel.from_pretrained(base, str(run.adapter_dir))
        job = run.job() if run.has_run() else {}
        name = job.get("fine_tuned_model") or f"ft:{resolved.name}:{run.path.name}"
        return LoadedModel(_placed(model, device).eval(), tokenizer, resolved.name, name, fully_fine_tuned=full)
    resolved = resolve_model(model_or_run)
    tokenizer = load_tokenizer(resolved.path, chat_template)
    model = load_model(resolved.path, dtype=inference_dtype(None, device))
    return LoadedModel(_placed(model, device).eval(), tokenizer, resolved.name, None)


def _placed(model, device: str):
    """The model on `device`, unless it was loaded there already (a 4-bit model cannot be moved)."""
    return model if getattr(model, "is_loaded_in_4bit", False) else model.to(device)


# Padded prompt tokens per batch. A decode step costs about the same for 8 rows or 64 (it is bound by
# reading the weights), so batches should be wide; but prefill pays for every padding token, so a batch of
# mixed lengths should not be. Length-sorted batches under this budget get both.
PREFILL_TOKEN_BUDGET = 8192


def _length_batches(prompt_ids: list[list[int]], max_rows: int, token_budget: int) -> list[list[int]]:
    """Prompt indices in length order, cut into batches of at most max_rows and token_budget padded tokens."""
    batches, current = [], []
    for index in sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i])):
        width = len(prompt_ids[index])  # the longest so far, since the order is by length
        if current and (len(current) >= max_rows or (len(current) + 1) * width > token_budget):
            batches.append(current)
            current = []
        current.append(index)
    return batches + [current] if current else batches


@torch.no_grad()
def generate_replies(loaded: LoadedModel, prompts: list[list[dict]], max_new_tokens: int = 256,
                     batch_size: int = 64, use_adapter: bool = True, on_batch=None,
                     tools: list[list[dict] | None] | None = None, temperature: float = 0.0,
                     top_p: float = 1.0) -> list[Generation]:
    """Replies for each prompt (a list of messages ending before the assistant's turn): greedy, or sampled
    with `temperature` > 0 (and nucleus `top_p`), as OpenAI's parameters mean them.

    `use_adapter=False` generates with the base model by switching the adapter off, so base and
    fine-tuned can be compared with one copy of the weights in memory. `tools`: each prompt's tool list
    (OpenAI's format), or None.
    """
    tokenizer, model = loaded.tokenizer, loaded.model
    stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    tools = tools or [None] * len(prompts)
    prompt_ids = [render_prompt_ids(tokenizer, messages, tool_list) for messages, tool_list in zip(prompts, tools)]
    results: list[Generation | None] = [None] * len(prompts)
    for batch in _length_batches(prompt_ids, batch_size, PREFILL_TOKEN_BUDGET):
        width = max(len(prompt_ids[i]) for i in batch)
        # Left padding, so every row's next token is generated at the same position.
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            ids = prompt_ids[index]
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        device = next(model.parameters()).device
        with adapter_state(loaded, use_adapter):
            output = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                    max_new_tokens=max_new_tokens, eos_token_id=stop_ids,
                                    pad_token_id=tokenizer.pad_token_id,
                                    **(dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0
                                       else dict(do_sample=False)))
        for row, index in enumerate(batch):
            results[index] = finished_reply(tokenizer, output[row, width:].tolist(), stop_ids, len(prompt_ids[index]))
        if on_batch:
            on_batch(len(batch))
    return results
