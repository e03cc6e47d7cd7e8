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

`ReplyText` turns the growing token list into the text to send: it stops at a `stop` string, holds back
what could still turn out to be one (or half a UTF-8 character), and ends as `generate_replies` ends, so a
streamed reply equals the same reply sent whole.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from dataclasses import dataclass

from tunelab.conversation.templates import stop_token_ids
from tunelab.models.generate import Generation, LoadedModel, finished_reply

KV_CACHE_TOKENS = 8192  # prompt and reply tokens held at once across a model's running requests
PAGE_TOKENS = 64  # cache page: a request holds whole pages, so small pages waste less on short replies
MAX_BATCH_TOKENS = 256  # tokens computed per step (prefill chunks included): each needs a vocabulary-wide row


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
    """A loaded model serving concurrent requests through continuous batching; `close()` stops its threads."""

    def __init__(self, loaded: LoadedModel, kv_cache_tokens: int = KV_CACHE_TOKENS):
        self.loaded = loaded
        self.kv_cache_tokens = kv_cache_tokens
        self.stop_ids = stop_token_ids(loaded.tokenizer, getattr(loaded.model, "generation_config", None))
        self._managers: dict[str, object] = {}
        self._lock = threading.Lock()
        self._merge_adapter()

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
        batching = ContinuousBatchingConfig(page_size=PAGE_TOKENS, num_blocks=-(-self.kv_cache_tokens // PAGE_TOKENS),
                                            max_batch_tokens=MAX_BATCH_TOKENS, per_request_processors=mode != "greedy",
                                            use_cuda_graph=False)
        manager = self._inner_model().init_continuous_batching(generation_config=generation,
                                                               continuous_batching_config=batching)
        manager.start()
        return manager

    def _inner_model(self):
        """The transformers model itself (a PEFT model wraps it; its LoRA layers stay in place inside)."""
        model = self.loaded.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    async def tokens(self, prompt_ids: list[int], max_new_tokens: int, sampling: Sampling):
        """Yield the reply's tokens so far each time one more is made, the last list when it has ended. Leaving
        the loop early (a client that went away, a stop string) cancels the request."""
        manager = self._manager(sampling.mode)
        request_id = uuid.uuid4().hex
        outputs: asyncio.Queue = asyncio.Queue()
        manager.register_result_handler(request_id, outputs.put_nowait)
        manager.add_request(list(prompt_ids), request_id=request_id, max_new_tokens=max_new_tokens, streaming=True,
                            eos_token_id=self.stop_ids, **sampling.request_settings())
        finished = False
        try:
            while not finished:
                output = await outputs.get()
                if output.error:
                    raise GenerationFailed(output.error)
                finished = output.is_finished()
                yield list(output.generated_tokens)
        finally:
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
