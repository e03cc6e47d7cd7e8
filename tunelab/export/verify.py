"""Prove an export answers as the run does, before it is called done.

The reference is the run's own model — the base with its adapter, not merged, in fp32. Each candidate
(the merged checkpoint reloaded by transformers, the GGUF reloaded by transformers' GGUF loader, the GGUF
in llama.cpp) is given the same held-out prompts, as token ids rendered by the training renderer, and
compared two ways:

- next-token logits at the end of each prompt: the largest absolute difference over the vocabulary, and
  whether the top token agrees;
- greedy continuations of up to CONTINUATION_TOKENS tokens: identical or not, and where they part.

Exports are compared with their weights as written, computed in fp32 (a bf16 or f16 file upcasts
exactly), so the figures measure what the export controls — the rounding of its weights — and read the
same on every CPU. A tolerance per number format says how far the logits may move; f32 and f16 exports
must also give identical greedy continuations on every prompt, the lossier formats on most of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

CONTINUATION_TOKENS = 32
# The largest next-token logit difference allowed, and the share of prompts whose greedy continuation
# must be identical, per number format of the exported weights.
TOLERANCES = {"f32": (1e-3, 1.0), "f16": (0.15, 1.0), "bf16": (1.0, 0.8), "q8_0": (1.0, 0.8), "q4_k_m": (4.0, 0.3)}


@dataclass
class Comparison:
    """How one candidate answered the prompts, against the reference."""

    candidate: str
    number_format: str
    prompts: int = 0
    max_logit_diff: float = 0.0
    top_token_agreed: int = 0
    greedy_identical: int = 0
    partings: list[int] = field(default_factory=list)  # per differing prompt: the first token that differs

    @property
    def tolerance(self) -> tuple[float, float]:
        return TOLERANCES[self.number_format]

    @property
    def passed(self) -> bool:
        logits, share = self.tolerance
        return self.max_logit_diff <= logits and self.greedy_identical >= share * self.prompts

    def summary(self) -> str:
        logits, share = self.tolerance
        verdict = "ok" if self.passed else "FAILED"
        return (f"{self.candidate} ({self.number_format}): next-token logits max |Δ| {self.max_logit_diff:.4g} "
                f"(allowed {logits:g}), top token agrees {self.top_token_agreed}/{self.prompts}, greedy "
                f"{CONTINUATION_TOKENS}-token continuations identical {self.greedy_identical}/{self.prompts} "
                f"(required {share:.0%}) — {verdict}")

    def as_dict(self) -> dict:
        return {"candidate": self.candidate, "number_format": self.number_format, "prompts": self.prompts,
                "max_logit_diff": self.max_logit_diff, "top_token_agreed": self.top_token_agreed,
                "greedy_identical": self.greedy_identical, "partings": self.partings, "passed": self.passed,
                "tolerance": {"max_logit_diff": self.tolerance[0], "greedy_identical_share": self.tolerance[1]}}


@dataclass
class Reference:
    """The run's answers to the prompts: logits at each prompt's end and greedy continuations."""

    prompts: list[list[int]]
    last_logits: list[torch.Tensor]
    continuations: list[list[int]]
    stop_ids: list[int]


def transformers_answers(model, prompts: list[list[int]], stop_ids: list[int]) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Next-token logits at each prompt's end and the greedy continuation, one prompt at a time (no padding
    to differ by), from a transformers model."""
    logits, continuations = [], []
    with torch.no_grad():
        for ids in prompts:
            start = torch.tensor([ids])
            logits.append(model(start).logits[0, -1].float())
            output = model.generate(start, attention_mask=torch.ones_like(start), max_new_tokens=CONTINUATION_TOKENS,
                                    do_sample=False, eos_token_id=stop_ids, pad_token_id=stop_ids[0])
            continuations.append(_until_stop(output[0, len(ids):].tolist(), stop_ids))
    return logits, continuations


def llama_cpp_answers(gguf_path: str, prompts: list[list[int]], stop_ids: list[int]) -> tuple[list[torch.Tensor], list[list[int]]]:
    """The same from llama.cpp (through llama-cpp-python): greedy is the top logit at each step, and a
    continuation ends where llama.cpp ends generation (its end-of-generation tokens: EOS, EOT and the like),
    so a GGUF that would not stop where the run stops fails the comparison."""
    import os

    import numpy as np
    from llama_cpp import Llama

    longest = max(len(ids) for ids in prompts) + CONTINUATION_TOKENS + 8
    llm = Llama(model_path=gguf_path, n_ctx=longest, n_threads=os.cpu_count() or 1, verbose=False)

    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)

    def last_logits() -> torch.Tensor:  # `Llama.scores` holds them only with logits_all (a row per position)
        return torch.from_numpy(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),)).copy())

    logits, continuations = [], []
    try:
        for ids in prompts:
            llm.reset()
            llm.eval(ids)
            logits.append(last_logits())
            generated: list[int] = []
            while len(generated) < CONTINUATION_TOKENS:
                token = int(last_logits().argmax())
                generated.append(token)
                if llama_cpp.llama_vocab_is_eog(vocab, token):  # where llama.cpp itself stops
                    break
                llm.eval([token])
            continuations.append(generated)
    finally:
        llm.close()
    return logits, continuations


def llama_cpp_tokens(gguf_path: str, texts: list[str]) -> list[list[int]]:
    """How llama.cpp tokenizes rendered prompts (special tokens parsed, no BOS added: the text has it)."""
    from llama_cpp import Llama

    llm = Llama(model_path=gguf_path, vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) for text in texts]
    finally:
        llm.close()


def compare(reference: Reference, candidate: str, number_format: str, logits: list[torch.Tensor],
            continuations: list[list[int]]) -> Comparison:
    result = Comparison(candidate, number_format, prompts=len(reference.prompts))
    for expected, got in zip(reference.last_logits, logits):
        width = min(len(expected), len(got))  # a padded embedding may score placeholder rows too
        result.max_logit_diff = max(result.max_logit_diff, float((expected[:width] - got[:width]).abs().max()))
        result.top_token_agreed += int(expected[:width].argmax() == got[:width].argmax())
    for expected, got in zip(reference.continuations, continuations):
        if expected == got:
            result.greedy_identical += 1
        else:
            result.partings.append(next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b),
                                        min(len(expected), len(got))))
    return result


def _until_stop(tokens: list[int], stop_ids: list[int]) -> list[int]:
    """The continuation up to and including its first stop token."""
    for index, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:index + 1]
    return tokens
