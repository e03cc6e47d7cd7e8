"""Load a base model or a fine-tuned run for generation, and generate replies in batches.

A run directory (from `tunelab train`) is self-contained: its `config.yaml` names the base model, its
`adapter/` holds the LoRA weights and its `tokenizer/` the tokenizer with the chat template it was trained
with. Generation stops at the template's end-of-turn token or the model's own EOS ids; a reply that hits
the token limit instead is reported with `finish_reason="length"`, and one that calls tools with
`finish_reason="tool_calls"` and its calls parsed into OpenAI's `tool_calls`, as OpenAI does.

The model goes on the best device: a CUDA GPU in the run's compute format, or the CPU in bf16 where it
has bf16 units and fp32 elsewhere (models/precision.py says why), unless a dtype is asked for; a QLoRA run's base is loaded in 4 bits on CUDA, as it was trained, and in
full precision elsewhere.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch

from tunelab.conversation.render import render_prompt_ids
from tunelab.conversation.templates import parse_tool_calls, stop_token_ids
from tunelab.models.precision import best_device, inference_dtype
from tunelab.models.resolve import load_adapter, load_four_bit_model, load_model, load_tokenizer, resolve_model
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

    @property
    def message_text(self) -> str:
        """The reply as a message's content carries it: without its tool-call blocks when it called tools."""
        return (self.content or "") if self.tool_calls else self.text


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


def load_for_generation(model_or_run: str, chat_template: str | None = None, device: str | None = None,
                        dtype: torch.dtype | None = None, four_bit: bool = False) -> LoadedModel:
    """Load a run directory (base + adapter, or a full fine-tune) or a plain model spec ('default', a path,
    a hub id; `chat_template` for a model without one of its own; `four_bit`: its linear layers in NF4, as
    QLoRA trains on them, CUDA only), on `device` (default: the best one), in `dtype` (default:
    `inference_dtype`'s choice for the device)."""
    device = device or best_device()
    run = RunDir(model_or_run)
    if run.is_finished():
        settings = run.settings()
        dtype = dtype or inference_dtype(settings.get("dtype"), device)
        resolved = resolve_model(settings["model"])
        tokenizer = load_tokenizer(str(run.tokenizer_dir))
        full = run.is_full_fine_tune
        if full:
            model = load_model(str(run.model_dir), dtype=dtype)
        else:
            base = load_four_bit_model(resolved.path, dtype) if "qlora" in (settings.get("adapter"), settings.get("method")) and device == "cuda" \
                else load_model(resolved.path, dtype=dtype)
            model = load_adapter(base, run.adapter_dir)
        job = run.job() if run.has_run() else {}
        name = job.get("fine_tuned_model") or f"ft:{resolved.name}:{run.path.name}"
        return LoadedModel(_placed(model, device).eval(), tokenizer, resolved.name, name, fully_fine_tuned=full)
    resolved = resolve_model(model_or_run)
    tokenizer = load_tokenizer(resolved.path, chat_template)
    dtype = dtype or inference_dtype(None, device)
    model = load_four_bit_model(resolved.path, dtype) if four_bit else load_model(resolved.path, dtype=dtype)
    return LoadedModel(_placed(model, device).eval(), tokenizer, resolved.name, None)


def _placed(model, device: str):
    """The model on `device`, unless it was loaded there already (a 4-bit model cannot be moved)."""
    return model if getattr(model, "is_loaded_in_4bit", False) else model.to(device)


# Rows decoded together, and padded prompt tokens per prefill forward pass. A decode step reads every
# weight once whatever the batch, so batches should be wide; a prefill pays for every padding token, so
# rows are grouped by length, and a wide group's prefill runs in chunks of rows under the token budget
# (its activations grow with the tokens, its cache is merged into one).
PREFILL_TOKEN_BUDGET = 8192


def _decode_groups(prompt_ids: list[list[int]], max_rows: int) -> list[list[int]]:
    """Rows to decode together: up to max_rows in length order, a new group starting where padding to the
    longest prompt would more than double a group's prefill (short prompts are not padded to long ones)."""
    groups, current = [], []
    for index in sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i])):
        width = len(prompt_ids[index])
        real = sum(len(prompt_ids[i]) for i in current) + width
        if current and (len(current) >= max_rows or (len(current) + 1) * width > 2 * real):
            groups.append(current)
            current = []
        current.append(index)
    return groups + [current] if current else groups


class _Sampler:
    """The next token from the last position's logits: the most likely (temperature 0), or drawn after
    temperature and nucleus (top_p) filtering with transformers' own logits warpers, from a seeded generator
    so a sampled evaluation can be repeated."""

    def __init__(self, temperature: float, top_p: float, seed: int | None, device):
        from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

        self.greedy = temperature <= 0
        self.warpers = [] if self.greedy else [TemperatureLogitsWarper(temperature)] + (
            [TopPLogitsWarper(top_p)] if top_p < 1.0 else [])
        self.generator = None
        if not self.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed if seed is not None else torch.seed())

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.greedy:
            return logits.argmax(dim=-1)
        for warper in self.warpers:
            logits = warper(None, logits)  # these two warpers read only the logits, not the tokens so far
        return torch.multinomial(logits.softmax(dim=-1), 1, generator=self.generator).squeeze(1)


@torch.no_grad()
def generate_replies(loaded: LoadedModel, prompts: list[list[dict]], max_new_tokens: int = 256,
                     batch_size: int = 64, use_adapter: bool = True, on_batch=None,
                     tools: list[list[dict] | None] | None = None, temperature: float = 0.0,
                     top_p: float = 1.0, seed: int | None = None) -> list[Generation]:
    """Replies for each prompt (a list of messages ending before the assistant's turn): greedy, or sampled
    with `temperature` > 0 (and nucleus `top_p`), as OpenAI's parameters mean them; `seed` makes a sampled
    set of replies repeatable.

    `use_adapter=False` generates with the base model by switching the adapter off, so base and
    fine-tuned can be compared with one copy of the weights in memory. `tools`: each prompt's tool list
    (OpenAI's format), or None. `on_batch(n)` is called as each n replies are finished.
    """
    tokenizer, model = loaded.tokenizer, loaded.model
    stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    tools = tools or [None] * len(prompts)
    prompt_ids = [render_prompt_ids(tokenizer, messages, tool_list) for messages, tool_list in zip(prompts, tools)]
    device = next(model.parameters()).device
    sampler = _Sampler(temperature, top_p, seed, device)
    results: list[Generation | None] = [None] * len(prompts)
    with adapter_state(loaded, use_adapter):
        for group in _decode_groups(prompt_ids, batch_size):
            for index, new_tokens in _decode_group(model, [prompt_ids[i] for i in group], group, stop_ids,
                                                   tokenizer.pad_token_id, max_new_tokens, sampler, device):
                results[index] = finished_reply(tokenizer, new_tokens, stop_ids, len(prompt_ids[index]))
                if on_batch:
                    on_batch(1)
    return results


def sample_tokens(model, prompt_ids: list[list[int]], stop_ids: list[int], pad_id: int, max_new_tokens: int,
                  temperature: float, top_p: float = 1.0, seed: int | None = None,
                  batch_size: int = 64) -> list[list[int]]:
    """The new tokens of one reply per prompt (ending with the stop token when the reply ended itself), from a
    model as it is — a model being trained, between its steps (reinforcement's samples) — in the batches
    `generate_replies` uses, drawn from one generator seeded with `seed`."""
    device = next(model.parameters()).device
    sampler = _Sampler(temperature, top_p, seed, device)
    results: list[list[int] | None] = [None] * len(prompt_ids)
    for group in _decode_groups(prompt_ids, batch_size):
        for index, new_tokens in _decode_group(model, [prompt_ids[i] for i in group], group, stop_ids, pad_id,
                                               max_new_tokens, sampler, device):
            results[index] = new_tokens
    return results


def _decode_group(model, rows: list[list[int]], indices: list[int], stop_ids: list[int], pad_id: int,
                  max_new_tokens: int, sampler: _Sampler, device):
    """Yield (index, new tokens) for each row as it finishes.

    Written here rather than calling `generate` because `generate` keeps a finished row in the batch until
    every row has finished: on an evaluation where the base model rarely ends its turn, most of a batch's
    rows would be decoded, and paid for, to the token limit. Here a finished row leaves the batch and its
    cache (`batch_select_indices`), and the rest carry on. Rows are left-padded, their positions counted
    from their first real token, as `generate` does, so a greedy reply is the same as `generate`'s.
    """
    from transformers import DynamicCache

    width = max(len(ids) for ids in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention[row, width - len(ids):] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)

    # Prefill in chunks of rows under the token budget; the chunks' caches have the same width, so they
    # join along the batch dimension layer by layer.
    chunk_rows = max(1, PREFILL_TOKEN_BUDGET // width)
    caches, last_logits = [], []
    last_position = torch.tensor([width - 1], device=device)  # an index, not `1`: a copy the head multiplies fast
    for start in range(0, len(rows), chunk_rows):
        part = slice(start, start + chunk_rows)
        cache = DynamicCache(config=model.config)
        out = model(input_ids=input_ids[part], attention_mask=attention[part], position_ids=positions[part],
                    past_key_values=cache, use_cache=True, logits_to_keep=last_position)
        caches.append(cache)
        last_logits.append(out.logits[:, -1, :])
    cache = caches[0]
    for layer, *others in zip(cache.layers, *(c.layers for c in caches[1:])):
        if others:
            layer.keys = torch.cat([layer.keys] + [o.keys for o in others])
            layer.values = torch.cat([layer.values] + [o.values for o in others])
    logits = torch.cat(last_logits)

    active = list(range(len(rows)))  # positions in `rows` of the rows still decoding
    generated = [[] for _ in rows]
    stop = torch.tensor(stop_ids, device=device)
    next_position = positions[:, -1]
    while True:
        next_tokens = sampler(logits)
        for row, token in zip(active, next_tokens.tolist()):
            generated[row].append(token)
        done = torch.isin(next_tokens, stop) | (len(generated[active[0]]) >= max_new_tokens)
        if done.any():
            for row, finished in zip(active, done.tolist()):
                if finished:
                    yield indices[row], generated[row]
            keep = (~done).nonzero().squeeze(1)
            if len(keep) == 0:
                return
            active = [active[k] for k in keep.tolist()]
            cache.batch_select_indices(keep)
            attention, next_tokens, next_position = attention[keep], next_tokens[keep], next_position[keep]
        attention = torch.cat([attention, attention.new_ones((len(active), 1))], dim=1)
        next_position = next_position + 1
        out = model(input_ids=next_tokens[:, None], attention_mask=attention, position_ids=next_position[:, None],
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1, :]
