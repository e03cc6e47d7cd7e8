"""Prove an export answers as the run does, before it is called done.

The reference is the run's own model — the base with its adapter, not merged, in fp32. Each candidate
(the merged checkpoint reloaded by transformers, the GGUF reloaded by transformers' GGUF loader, the GGUF
in llama.cpp) is given the same held-out prompts, as token ids rendered by the training renderer, and
compared two ways:

- next-token logits at the end of each prompt: the largest absolute difference over the reference's ten
  most likely tokens (where sampling happens; the far tail of a 262k vocabulary moves most under
  rounding and matters least), and whether the top token agrees;
- greedy continuations of up to CONTINUATION_TOKENS tokens: identical or not, and where they part.

Exports are compared with their weights as written, computed in fp32 by transformers (a bf16 or f16 file
upcasts exactly), so those figures measure what the export controls — the rounding of its weights — and
read the same on every CPU; llama.cpp computes as it does in use.

The rule, one for every number format: the logits stay within the format's tolerance, and a continuation
may part from the reference only at a near-tie — a step where the reference's two most likely tokens are
closer than twice that tolerance, so that rounding within the tolerance can swap them. A parting anywhere
else means the logits moved by more than the tolerance somewhere along the way: the export fails.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

CONTINUATION_TOKENS = 32
# How far next-token logits (over the reference's top ten) may move, per number format of the exported
# weights. Measured on the default model fine-tuned on the support example: merged bf16 0.17; GGUF f16
# 0.021 (transformers) and 0.034 (llama.cpp); q8_0 0.45 and 1.51; q4_k_m 18.3 in llama.cpp (top token
# changed on 3 of 10 prompts: a 270M model does not survive 4 bits).
TOLERANCES = {"f32": 1e-3, "f16": 0.15, "bf16": 1.0, "q8_0": 2.0, "q4_k_m": 3.0}
TOP_TOKENS = 10  # the reference's most likely tokens, over which logits are compared
# llama.cpp's own arithmetic adds to the export's rounding (f16 or 8-bit activations in its matrix
# products, whatever the weights). Measured on the default model with f32 weights: 0.018.
LLAMA_CPP_TOLERANCE = 0.15


@dataclass
class Comparison:
    """How one candidate answered the prompts, against the reference."""

    candidate: str
    number_format: str
    prompts: int = 0
    max_logit_diff: float = 0.0  # over the reference's TOP_TOKENS at each prompt's end
    top_token_agreed: int = 0
    greedy_identical: int = 0
    partings: list[tuple[int, float]] = field(default_factory=list)  # (first differing token, reference margin there)
    runtime_tolerance: float = 0.0  # what the candidate's own arithmetic adds (llama.cpp's)

    @property
    def tolerance(self) -> float:
        return max(TOLERANCES[self.number_format], self.runtime_tolerance)

    @property
    def unexplained_partings(self) -> list[tuple[int, float]]:
        """Partings at a step where the reference was not near a tie: no rounding within tolerance explains them."""
        return [(step, margin) for step, margin in self.partings if margin > 2 * self.tolerance]

    @property
    def passed(self) -> bool:
        return self.max_logit_diff <= self.tolerance and not self.unexplained_partings

    def summary(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        partings = "".join(
            f"; parts at token {step} where the reference's top two are {margin:.3g} apart"
            + (" (a near-tie)" if margin <= 2 * self.tolerance else " (not a near-tie)")
            for step, margin in self.partings)
        return (f"{self.candidate} ({self.number_format}): top-{TOP_TOKENS} next-token logits max |Δ| "
                f"{self.max_logit_diff:.3g} (allowed {self.tolerance:g}), top token agrees "
                f"{self.top_token_agreed}/{self.prompts}, greedy {CONTINUATION_TOKENS}-token continuations identical "
                f"{self.greedy_identical}/{self.prompts}{partings} — {verdict}")

    def as_dict(self) -> dict:
        return {"candidate": self.candidate, "number_format": self.number_format, "prompts": self.prompts,
                "max_logit_diff_top10": self.max_logit_diff, "top_token_agreed": self.top_token_agreed,
                "greedy_identical": self.greedy_identical,
                "partings": [{"token": step, "reference_margin": margin} for step, margin in self.partings],
                "passed": self.passed, "tolerance": self.tolerance}


@dataclass
class Reference:
    """The run's answers to the prompts: logits at each prompt's end, greedy continuations, and at each
    continuation step the margin between its two most likely tokens."""

    prompts: list[list[int]]
    last_logits: list[torch.Tensor]
    continuations: list[list[int]]
    stop_ids: list[int]
    margins: list[list[float]] = field(default_factory=list)


def transformers_answers(model, prompts: list[list[int]], stop_ids: list[int]):
    """Next-token logits at each prompt's end, the greedy continuation, and the top-two margin at each of
    its steps, one prompt at a time (no padding to differ by), from a transformers model."""
    logits, continuations, margins = [], [], []
    with torch.no_grad():
        for ids in prompts:
            start = torch.tensor([ids])
            logits.append(model(start).logits[0, -1].float())
            output = model.generate(start, attention_mask=torch.ones_like(start), max_new_tokens=CONTINUATION_TOKENS,
                                    do_sample=False, eos_token_id=stop_ids, pad_token_id=stop_ids[0],
                                    output_logits=True, return_dict_in_generate=True)
            continuation = _until_stop(output.sequences[0, len(ids):].tolist(), stop_ids)
            continuations.append(continuation)
            top_two = [step[0].float().topk(2).values for step in output.logits[:len(continuation)]]
            margins.append([float(pair[0] - pair[1]) for pair in top_two])
    return logits, continuations, margins


def llama_cpp_answers(gguf_path: str, prompts: list[list[int]], stop_ids: list[int]) -> tuple[list[torch.Tensor], list[list[int]]]:
    """The same from llama.cpp (through llama-cpp-python): greedy is the top logit at each step, and a
    continuation ends where llama.cpp ends generation (its end-of-generation tokens: EOS, EOT and the like),
    so a GGUF that would not stop where the run stops fails the comparison."""
    import os

    from llama_cpp import Llama

    from tunelab.models.chat import last_logits, silence_llama_cpp

    silence_llama_cpp()
    longest = max(len(ids) for ids in prompts) + CONTINUATION_TOKENS + 8
    import llama_cpp

    # An f32 KV cache, so the figures measure the file rather than the cache's rounding: with llama.cpp's
    # default f16 cache one of ten continuations of the default model parted at a near-tie (top two 0.005
    # apart); with f32, ten of ten were identical.
    llm = Llama(model_path=gguf_path, n_ctx=longest, n_threads=os.cpu_count() or 1, verbose=False,
                type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)

    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)

    logits, continuations = [], []
    try:
        for ids in prompts:
            llm.reset()
            llm.eval(ids)
            logits.append(last_logits(llm))
            generated: list[int] = []
            while len(generated) < CONTINUATION_TOKENS:
                token = int(last_logits(llm).argmax())
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

    from tunelab.models.chat import silence_llama_cpp

    silence_llama_cpp()
    llm = Llama(model_path=gguf_path, vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) for text in texts]
    finally:
        llm.close()


def compare(reference: Reference, candidate: str, number_format: str, logits: list[torch.Tensor],
            continuations: list[list[int]], runtime_tolerance: float = 0.0) -> Comparison:
    result = Comparison(candidate, number_format, prompts=len(reference.prompts), runtime_tolerance=runtime_tolerance)
    for expected, got in zip(reference.last_logits, logits):
        top = expected.topk(min(TOP_TOKENS, expected.numel())).indices
        result.max_logit_diff = max(result.max_logit_diff, float((expected[top] - got[top]).abs().max()))
        result.top_token_agreed += int(expected.argmax() == got[:len(expected)].argmax())
    for index, (expected, got) in enumerate(zip(reference.continuations, continuations)):
        if expected == got:
            result.greedy_identical += 1
            continue
        step = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), min(len(expected), len(got)))
        margins = reference.margins[index] if reference.margins else []
        result.partings.append((step, margins[step] if step < len(margins) else 0.0))
    return result


def _until_stop(tokens: list[int], stop_ids: list[int]) -> list[int]:
    """The continuation up to and including its first stop token."""
    for index, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:index + 1]
    return tokens
