"""One conversation, answered token by token: what `tunelab chat` talks to.

    chat = TransformersChat(load_for_generation("runs/support"))       # a run, a model, a converted .gguf
    chat = LlamaCppChat("support-f16.gguf")                             # a GGUF in llama.cpp itself
    for piece in chat.stream(messages, max_new_tokens=256):
        print(piece, end="", flush=True)
    chat.last.finish_reason                                             # "stop" or "length"

Both render the prompt with the chat template the model was trained with (a run's own; the one a GGUF
export carries) and stop at the template's end-of-turn token, so a reply here is the reply the model gives
anywhere else it runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from tunelab.conversation.render import render_prompt_ids
from tunelab.conversation.templates import stop_token_ids
from tunelab.models.generate import LoadedModel, _Sampler, adapter_state
from tunelab.models.serving import ReplyText


@dataclass
class Ended:
    """How the last reply ended."""

    text: str
    finish_reason: str  # "stop": the model ended its turn; "length": the token limit cut it
    completion_tokens: int


class TransformersChat:
    """Replies from a transformers model (a run's adapter on, or off with `use_adapter=False`)."""

    def __init__(self, loaded: LoadedModel, use_adapter: bool = True, temperature: float = 0.0, seed: int | None = None):
        self.loaded, self.use_adapter = loaded, use_adapter
        self.device = next(loaded.model.parameters()).device
        self.sampler = _Sampler(temperature, 1.0, seed, self.device)
        self.stop_ids = stop_token_ids(loaded.tokenizer, getattr(loaded.model, "generation_config", None))
        self.last: Ended | None = None

    def stream(self, messages: list[dict], max_new_tokens: int = 256) -> Iterator[str]:
        """The reply to `messages`, as text pieces as soon as each is safe to show (no half characters)."""
        from transformers import DynamicCache

        prompt = render_prompt_ids(self.loaded.tokenizer, messages)
        reply = ReplyText(self.loaded.tokenizer, self.stop_ids, [], len(prompt))
        tokens: list[int] = []
        model = self.loaded.model
        with adapter_state(self.loaded, self.use_adapter), torch.no_grad():
            cache = DynamicCache(config=model.config)
            logits = model(input_ids=torch.tensor([prompt], device=self.device), past_key_values=cache,
                           use_cache=True, logits_to_keep=1).logits[:, -1, :]
            while len(tokens) < max_new_tokens:
                token = int(self.sampler(logits)[0])
                tokens.append(token)
                piece = reply.update(list(tokens))
                if piece:
                    yield piece
                if reply.ended:
                    break
                logits = model(input_ids=torch.tensor([[token]], device=self.device), past_key_values=cache,
                               use_cache=True).logits[:, -1, :]
        rest, generation = reply.finish()
        if rest:
            yield rest
        self.last = Ended(generation.text, generation.finish_reason, generation.completion_tokens)


_SILENT_LOG = None


def llama_cpp_installed() -> bool:
    """Whether the optional llama.cpp build (the `llama` extra) is importable."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def last_logits(llm) -> torch.Tensor:
    """The next-token logits after the last `llm.eval`: `Llama.scores` holds them only with logits_all (a row
    per position), so they are read from the context itself."""
    import numpy as np

    return torch.from_numpy(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),)).copy())


def silence_llama_cpp() -> None:
    """Keep llama.cpp's own log lines (cache sizes, context warnings) off the terminal: `verbose=False`
    alone leaves some. The callback is kept alive here, as llama.cpp holds only a pointer to it."""
    global _SILENT_LOG
    if _SILENT_LOG is None:
        import llama_cpp

        _SILENT_LOG = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
        llama_cpp.llama_log_set(_SILENT_LOG, None)


class LlamaCppChat:
    """Replies from a GGUF file in llama.cpp (llama-cpp-python): the template and stop token from the file."""

    def __init__(self, gguf_path: str, temperature: float = 0.0, seed: int | None = None, context: int = 4096):
        import os

        from gguf import GGUFReader
        from llama_cpp import Llama

        silence_llama_cpp()
        fields = GGUFReader(gguf_path).fields
        if "tokenizer.chat_template" not in fields:
            raise ValueError(f"{gguf_path}: the file carries no chat template (tokenizer.chat_template); "
                             "export it with `tunelab export RUN --format gguf`, which writes the run's")
        self.template = fields["tokenizer.chat_template"].contents()
        tokens = fields["tokenizer.ggml.tokens"]
        self.bos = tokens.contents(fields["tokenizer.ggml.bos_token_id"].contents()) \
            if "tokenizer.ggml.bos_token_id" in fields else ""
        self.llm = Llama(model_path=gguf_path, n_ctx=context, n_threads=os.cpu_count() or 1, verbose=False,
                         seed=seed if seed is not None else 0)
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self.llm._model.model)
        self.ends_generation = lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))  # EOS, EOT and kin
        self.temperature = temperature
        self.generator = torch.Generator().manual_seed(seed if seed is not None else 0)
        self.last: Ended | None = None

    def stream(self, messages: list[dict], max_new_tokens: int = 256) -> Iterator[str]:
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered = render_jinja_template([messages], chat_template=self.template, add_generation_prompt=True,
                                         bos_token=self.bos)
        text = rendered[0][0] if isinstance(rendered, tuple) else rendered[0]
        self.llm.reset()
        self.llm.eval(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))
        generated: list[int] = []
        shown = ""
        finish = "length"
        while len(generated) < max_new_tokens:
            logits = last_logits(self.llm)
            token = int(logits.argmax()) if self.temperature <= 0 else \
                int(torch.multinomial(torch.softmax(logits / self.temperature, -1), 1, generator=self.generator))
            if self.ends_generation(token):  # where llama.cpp's own tools stop
                finish = "stop"
                break
            generated.append(token)
            so_far = self.llm.detokenize(generated).decode("utf-8", errors="replace").lstrip()  # as transformers' replies
            if not so_far.endswith("\ufffd") and so_far.startswith(shown):  # whole characters only
                yield so_far[len(shown):]
                shown = so_far
            self.llm.eval([token])
        final = self.llm.detokenize(generated).decode("utf-8", errors="replace").lstrip()
        if final.startswith(shown) and final != shown:
            yield final[len(shown):]
        self.last = Ended(final.strip(), finish, len(generated) + (finish == "stop"))

    def close(self) -> None:
        self.llm.close()
