"""Evaluation generation speed: batched (what `tunelab eval` does) against one prompt at a time.

    .venv/bin/python bench/generate_speed.py [--model default] [--prompts 16] [--max-new-tokens 48] [--runs 3]
                                             [--dtype auto|fp32|bf16]

Both sides use the same model, the same prompts (the support example's held-out questions) and greedy
decoding with the same stop tokens: the baseline is a plain loop calling transformers' `generate` on one
prompt at a time, the measured side is `generate_replies` (length-sorted batches, finished rows leaving
the batch), both in the number format `tunelab eval` would use (`--dtype auto`) or the one asked for.
Prints tokens generated per second of wall time for each, how many replies agree word for word (in fp32
all should; in bf16 a batch's different rounding can change a token), and `batched_vs_one_at_a_time`, the
ratio of throughputs (median over runs; the target is at least 5). Model loading is excluded.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from tunelab.conversation.reader import read_conversations, split_prompt_and_reply
from tunelab.conversation.render import render_prompt_ids
from tunelab.conversation.templates import stop_token_ids
from tunelab.models.generate import finished_reply, generate_replies, load_for_generation
from tunelab.models.precision import requested_dtype

QUESTIONS = Path(__file__).resolve().parent.parent / "tunelab" / "examples" / "support" / "test.jsonl"


@torch.no_grad()
def one_at_a_time(loaded, prompts, max_new_tokens):
    tokenizer, model = loaded.tokenizer, loaded.model
    stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    replies = []
    for messages in prompts:
        ids = render_prompt_ids(tokenizer, messages)
        output = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=max_new_tokens, eos_token_id=stop_ids, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
        replies.append(finished_reply(tokenizer, output[0, len(ids):].tolist(), stop_ids, len(ids)))
    return replies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto")
    options = parser.parse_args()

    prompts = [split_prompt_and_reply(c)[0] for c in read_conversations(QUESTIONS)][:options.prompts]
    loaded = load_for_generation(options.model, dtype=requested_dtype(options.dtype))
    print(f"model {loaded.base_name} in {next(loaded.model.parameters()).dtype}, {len(prompts)} prompts, "
          f"at most {options.max_new_tokens} new tokens, "
          f"cpu bf16 units: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}, threads: {torch.get_num_threads()}, "
          f"cuda: {torch.cuda.is_available()}", flush=True)
    ratios = []
    for run in range(options.runs):
        started = time.perf_counter()
        batched = generate_replies(loaded, prompts, max_new_tokens=options.max_new_tokens)
        batched_seconds = time.perf_counter() - started
        started = time.perf_counter()
        single = one_at_a_time(loaded, prompts, options.max_new_tokens)
        single_seconds = time.perf_counter() - started
        batched_rate = sum(r.completion_tokens for r in batched) / batched_seconds
        single_rate = sum(r.completion_tokens for r in single) / single_seconds
        agree = sum(a.text == b.text for a, b in zip(batched, single))
        ratios.append(batched_rate / single_rate)
        print(f"run {run + 1}: batched {batched_rate:.1f} tokens/s ({batched_seconds:.1f} s), one at a time "
              f"{single_rate:.1f} tokens/s ({single_seconds:.1f} s), ratio {ratios[-1]:.2f}, "
              f"identical replies {agree}/{len(prompts)}", flush=True)
    print(f"batched_vs_one_at_a_time: {statistics.median(ratios):.2f} (median of {len(ratios)} runs)")


if __name__ == "__main__":
    main()
