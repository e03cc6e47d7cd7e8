"""Answer many generation requests at once, token by token: continuous batching for a server.

A decode step reads every weight once whatever the number of rows it computes, and on a CPU reading the
weights is most of its cost (the default model's 262k-word output layer alone is 670 MB in fp32), so fifty
replies generated together cost little more per step than one. Continuous batching, as transformers 5
implements it (`ContinuousBatchingManager`), goes further than batching whole requests: a request joins
the running batch at the next step and leaves it when it ends, so nobody waits for someone else's long
reply, and each new token is delivered as it is made, for streaming.

One manager per sampling mode and model, because what a manager does to the logits is fixed when it is
made: greedy (no processing), sampled (each request's temperature) and nucleus (temperature and top-p).
Top-p sorts the whole vocabulary for every row at every step, which on a CPU costs more than the model's
own step, so only the requests that ask for it pay for it. Requests in a batch share one random
generator, so a sampled reply cannot be reproduced from a seed (OpenAI promises only "best effort" there);
greedy replies are the same however they are batched.

One copy of a base model serves all its LoRA fine-tunes: each request names its adapter, and a step that
computes tokens of several requests applies each one's adapter to its own tokens (models/adapters.py), so
requests to different fine-tunes and to the base share one batch.

The KV cache and the tokens computed per step are sized from the memory the device has free when a
manager starts (`serving_size`; `TUNELAB_MEMORY` caps it): a quarter of it for the cache, within bounds
that keep a CPU's cache to what its compute can use and leave a GPU room for the step and for training.

`ReplyText` turns the growing token list into the text to send: it stops at a `stop` string, holds back
what could still turn out to be one (or half a UTF-8 character), and ends as `generate_replies` ends, so a
streamed reply equals the same reply sent whole.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

from tunelab.conversation.templates import stop_token_ids
from tunelab.models.adapters import SharedBase, set_adapters_per_token
from tunelab.models.device_memory import device_budget
from tunelab.models.generate import Generation, LoadedModel, finished_reply

PAGE_TOKENS = 64  # cache page: a request holds whole pages, so small pages waste less on short replies
KV_SHARE = 0.25  # of the memory free when a manager starts, for its cache (the rest: the step, other models, training)
# Bounds on the cache, in tokens: a CPU computes a few dozen replies at once usefully, and its cache is
# allocated (zeroed) whole; a GPU holds hundreds.
KV_TOKENS = {"cpu": (2048, 16384), "cuda": (4096, 262144)}
# Tokens computed per step (prefill chunks included): on a CPU a step's time grows with them, so they stay
# few; on a GPU up to this many, as the memory left for the step's activations allows.
BATCH_TOKENS = {"cpu": 256, "cuda": 2048}
STEP_SHARE = 0.05  # of the free memory, for one step's activations and logits


@dataclass(frozen=True)
class ServingSize:
    kv_cache_tokens: int
    batch_tokens: int
    kv_bytes_per_token: int


def serving_size(config, dtype, device: str, free_bytes: int) -> ServingSize:
    """The KV cache and tokens per step for one batching manager of a model with `config`, in `dtype`,
    given the bytes the device has free."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_bytes = 2 * text.num_hidden_layers * kv_heads * head_dim * dtype.itemsize  # a key and a value per layer
    kind = "cuda" if device.startswith("cuda") else "cpu"
    low, high = KV_TOKENS[kind]
    cache = max(low, min(high, int(free_bytes * KV_SHARE) // kv_bytes)) // PAGE_TOKENS * PAGE_TOKENS
    # A step token holds the layer's widest activations, and a new token's fp32 logits row.
    step_bytes = (4 * text.hidden_size + 2 * getattr(text, "intermediate_size", 4 * text.hidden_size)) \
        * dtype.itemsize + 4 * text.vocab_size
    batch = max(PAGE_TOKENS, min(BATCH_TOKENS[kind], int(free_bytes * STEP_SHARE) // step_bytes))
    return ServingSize(cache, batch, kv_bytes)


class GenerationFailed(RuntimeError):
    """The batch generating this request failed (the manager's message says why)."""


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0

    @property
    def mode(self) -> str:
        if self.temperature == 0:
            return "greedy"
        return "nucleus" if self.top_p < 1 else "sampled"

    def request_settings(self) -> dict:
        """The per-request logits settings this mode's manager reads."""
        if self.mode == "greedy":
            return {}
        settings = {"temperature": float(self.temperature)}
        return settings | {"top_p": float(self.top_p)} if self.mode == "nucleus" else settings


class ContinuousGenerator:
    """A loaded model serving concurrent requests through continuous batching, with any number of LoRA
    adapters attached to it (a model loaded with its own adapter serves that one only); `close()` stops its
    threads."""

    def __init__(self, loaded: LoadedModel, device: str | None = None):
        self.loaded = loaded
        self.device = device or str(next(loaded.model.parameters()).device)
        self.stop_ids = stop_token_ids(loaded.tokenizer, getattr(loaded.model, "generation_config", None))
        self.sizes: dict[str, ServingSize] = {}  # per sampling mode, as each manager started
        self.steps = self.mixed_steps = 0  # forward passes, and those computing several adapters' tokens
        self.in_flight = 0  # requests holding this generator (its owner counts them: it must not close it under them)
        self._managers: dict[str, object] = {}
        self._adapter_of_request: dict[str, int] = {}
        self._lock = threading.Lock()
        self._merge_adapter()
        self.shared = None if loaded.has_adapter else SharedBase(self._inner_model())
        if self.shared is not None:
            # A weak reference: the model must not keep its generator (and so itself) alive once evicted.
            this = weakref.ref(self)
            self._inner_model().register_forward_pre_hook(
                lambda module, args, kwargs: this() and this()._choose_adapters(kwargs), with_kwargs=True)

    def attach(self, adapter_dir: str | Path) -> int:
        """Serve the LoRA adapter in `adapter_dir` on this model; the slot requests name it by. Raises
        models.adapters.AdapterNotShared if it cannot be applied per token."""
        return self.shared.attach(adapter_dir)

    def detach(self, slot: int) -> None:
        self.shared.detach(slot)

    def _choose_adapters(self, kwargs: dict) -> None:
        """Before each forward pass of a manager: which of its tokens belong to which adapter's requests."""
        set_adapters_per_token(self._adapter_rows(kwargs))

    def _adapter_rows(self, kwargs: dict):
        """{slot: token indices} of a continuous-batching step's adapted requests; None when there are none."""
        import torch

        bounds = kwargs.get("cu_seq_lens_q")
        if bounds is None:  # not a continuous-batching step
            return None
        self.steps += 1
        request_ids = self._requests_in_step() if self._adapter_of_request else []
        if not request_ids:
            return None
        bounds = bounds.tolist()
        if len(request_ids) != len(bounds) - 1:
            raise GenerationFailed(f"the step computes {len(bounds) - 1} requests' tokens but its batch lists "
                                   f"{len(request_ids)}: this transformers' continuous batching is not one tunelab knows")
        rows: dict[int, list[int]] = {}
        for k, request_id in enumerate(request_ids):
            slot = self._adapter_of_request.get(request_id, -1)
            rows.setdefault(slot, []).extend(range(bounds[k], bounds[k + 1]))
        self.mixed_steps += len(rows) > 1
        device = kwargs["input_ids"].device
        return {slot: torch.tensor(indices, device=device) for slot, indices in rows.items() if slot >= 0}

    def _requests_in_step(self) -> list[str]:
        """The ids of the requests whose tokens the step this thread runs computes, in their tokens' order.
        transformers keeps them on the manager's batch processor (5.17 to 5.23 alike)."""
        current = threading.current_thread()
        manager = next((m for m in list(self._managers.values()) if m._generation_thread is current), None)
        if manager is None:  # a manager's warm-up, before it serves any request
            return []
        return [future.state.request_id for future in manager.batch_processor.inputs_and_outputs.requests_in_batch]

    def _merge_adapter(self):
        # A served fine-tune always answers with its adapter: merged into fp32 weights it costs nothing per
        # step (generate.py says why 16-bit weights keep it apart).
        import torch

        model = self.loaded.model
        if self.loaded.has_adapter and next(model.parameters()).dtype == torch.float32:
            model.merge_adapter()
        model.config.use_cache = True  # a model rebuilt from a training checkpoint has it off

    def _manager(self, mode: str):
        with self._lock:
            if mode not in self._managers:
                self._managers[mode] = self._started_manager(mode)
            return self._managers[mode]

    def _started_manager(self, mode: str):
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        tokenizer = self.loaded.tokenizer
        # The defaults here only decide which processors exist (a temperature of exactly 1.0 would create
        # none); every request then brings its own values.
        sampling = dict(do_sample=True, top_k=0, temperature=0.7) | (dict(top_p=0.9) if mode == "nucleus" else {})
        generation = GenerationConfig(eos_token_id=self.stop_ids, pad_token_id=tokenizer.pad_token_id,
                                      **(sampling if mode != "greedy" else dict(do_sample=False)))
        model = self._inner_model()
        size = serving_size(model.config, next(model.parameters()).dtype, self.device, device_budget(self.device))
        self.sizes[mode] = size
        # Synchronous batching: the step being computed is the one whose requests `_requests_in_step` lists.
        batching = ContinuousBatchingConfig(page_size=PAGE_TOKENS, num_blocks=size.kv_cache_tokens // PAGE_TOKENS,
                                            max_batch_tokens=size.batch_tokens, per_request_processors=mode != "greedy",
                                            use_cuda_graph=False, use_async_batching=False)
        manager = model.init_continuous_batching(generation_config=generation, continuous_batching_config=batching)
        manager.start()
        return manager

    def _inner_model(self):
        """The transformers model itself (a PEFT model wraps it; its LoRA layers stay in place inside)."""
        model = self.loaded.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    async def tokens(self, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling, adapter: int | None = None,
                     stop_ids: list[int] | None = None):
        """Yield the reply's tokens so far each time one more is made, the last list when it has ended, with
        the attached `adapter` (a slot from `attach`; None: the model as loaded). `stop_ids`: the tokens
        that end it (default: the loaded tokenizer's). Leaving the loop early (a client that went away, a
        stop string) cancels the request."""
        manager = self._manager(sampling.mode)
        request_id = uuid.uuid4().hex
        outputs: asyncio.Queue = asyncio.Queue()
        manager.register_result_handler(request_id, outputs.put_nowait)
        if adapter is not None:
            self._adapter_of_request[request_id] = adapter
        manager.add_request(list(prompt_ids), request_id=request_id, max_new_tokens=max_new_tokens, streaming=True,
                            eos_token_id=stop_ids or self.stop_ids, **sampling.request_settings())
        finished = False
        try:
            while not finished:
                output = await outputs.get()
                if output.error:
                    raise GenerationFailed(output.error)
                finished = output.is_finished()
                yield list(output.generated_tokens)
        finally:
            self._adapter_of_request.pop(request_id, None)
            if not finished:
                manager.cancel_request(request_id)
                # A cancelled request gets no final output, so its handler would stay registered.
                with manager.output_router._lock:
                    manager.output_router.result_handlers.pop(request_id, None)

    def close(self):
        """Stop the managers once their running requests end; the model's attention goes back as it was."""
        with self._lock:
            for manager in self._managers.values():
                manager.stop(block=False)
            self._managers.clear()


class ReplyText:
    """The text of a reply being generated: what is safe to send now, and the finished reply."""

    def __init__(self, tokenizer, stop_ids: list[int], stops: list[str], prompt_tokens: int):
        self.tokenizer, self.stop_ids, self.stops, self.prompt_tokens = tokenizer, stop_ids, stops, prompt_tokens
        self.tokens: list[int] = []
        self.sent = ""
        self.stopped_by_string = False

    @property
    def ended(self) -> bool:
        """The model ended its turn or a stop string was written: nothing more is wanted."""
        return self.stopped_by_string or any(t in self.stop_ids for t in self.tokens)

    def update(self, tokens: list[int]) -> str:
        """Take the reply's tokens so far; return the text newly safe to send."""
        self.tokens = tokens
        text = self._text()
        if text.endswith("\ufffd"):  # half a character: its other bytes are in the next token
            return ""
        safe = text.rstrip() if not self.stopped_by_string else text
        if not self.stopped_by_string:  # a stop string may be starting at the end: wait and see
            for stop in self.stops:
                for length in range(min(len(stop) - 1, len(safe)), 0, -1):
                    if safe.endswith(stop[:length]):
                        safe = safe[:-length]
                        break
        return self._advance(safe)

    def finish(self) -> tuple[str, Generation]:
        """The rest of the text to send, and the whole reply as `generate_replies` reports one."""
        reply = finished_reply(self.tokenizer, self.tokens, self.stop_ids, self.prompt_tokens, self.stops)
        return self._advance(reply.text), reply

    def _text(self) -> str:
        reply = finished_reply(self.tokenizer, self.tokens, self.stop_ids, self.prompt_tokens, self.stops,
                               strip_end=False)
        self.stopped_by_string = reply.ended_by_stop_string
        return reply.text

    def _advance(self, text: str) -> str:
        # Decoding more tokens can in rare cases change earlier characters (a tokenizer joining pieces);
        # what was sent stays sent, and only text extending it is sent after it.
        if not text.startswith(self.sent):
            return ""
        new, self.sent = text[len(self.sent):], text
        return new
