"""Held-out preference pairs: which output each model prefers, and the fine-tune's reward accuracy against its
reference.

    tunelab eval --model runs/dpo --data valid_pairs.jsonl      # base: the run it started from (--from)

Each pair's two outputs are scored after its input as training renders them (the input with the output as one
conversation, the output's tokens and end-of-turn marker summed). From those log-probabilities:

- the fine-tune's **reward accuracy**: the implicit reward of an output is β · (log π_fine-tuned − log π_base)
  (β the run's; 0.1 for a model that has none), and a pair counts when the preferred output's reward is the
  higher — DPO's own training figure, on pairs it did not train on. Against the model the run started from
  this is exactly the reward a DPO run optimises; about 50% means the fine-tune prefers neither output more
  than its base did. With its 95% bootstrap interval, and the mean margin;
- each system's **likelihood preference**: the share of pairs where it gives the preferred output the higher
  log-probability per token (per token, so that the shorter output is not favoured for being short).
"""

from __future__ import annotations

import torch

from tunelab.conversation.reader import read_numbered_pairs
from tunelab.conversation.render import IGNORE_INDEX, RenderedExample, render_numbered
from tunelab.eval.stats import mean_with_interval
from tunelab.models.generate import adapter_state

DEFAULT_BETA = 0.1  # OpenAI's and TRL's, for a fine-tune that was not trained with one


def preference_results(path, systems: dict, order: list[str], beta: float | None, events) -> dict:
    """The `preference` section of results.json for the local systems of `order` (endpoints are skipped: an
    API gives no log-probabilities of a given reply)."""
    local = [name for name in order if systems[name].loaded is not None and not systems[name].shots]
    if not local:
        return {"skipped": "no local model: the log-probabilities of given outputs need the weights"}
    numbered = read_numbered_pairs(path)
    tokenizer = systems[local[0]].loaded.tokenizer
    rendered = {preferred: render_numbered(tokenizer, [(line, pair.conversation(preferred)) for line, pair in numbered],
                                           path) for preferred in (True, False)}
    sums: dict[str, tuple[list[float], list[float]]] = {}
    counts = ([e.trained_tokens for e in rendered[True]], [e.trained_tokens for e in rendered[False]])
    with events.progress("pairs", total=len(local) * len(numbered) * 2, description="score pairs") as bar:
        for name in local:
            system = systems[name]
            sums[name] = tuple(_output_log_probs(system.loaded, system.use_adapter, rendered[side], bar)
                               for side in (True, False))
    section = {"pairs": len(numbered), "systems": {}}
    for name in local:
        preferred, non_preferred = sums[name]
        prefers = [float(p / max(n, 1) > q / max(m, 1))
                   for p, q, n, m in zip(preferred, non_preferred, *counts)]
        section["systems"][name] = {"likelihood_preference": mean_with_interval(prefers).as_dict()}
    tuned, base = local[-1], local[0]
    if tuned != base and tuned == "fine_tuned":
        beta = beta or DEFAULT_BETA
        margins = [beta * ((tp - bp) - (tn - bn)) for tp, tn, bp, bn in zip(*sums[tuned], *sums[base])]
        section["reward"] = {"system": tuned, "reference": base, "beta": beta,
                             "accuracy": mean_with_interval([float(m > 0) for m in margins]).as_dict(),
                             "margin": mean_with_interval(margins).as_dict()}
    return section


@torch.no_grad()
def _output_log_probs(loaded, use_adapter: bool, examples: list[RenderedExample], bar) -> list[float]:
    """Each example's summed log-probability of its trained tokens (the output), in fp64. One example at a time,
    with logits only at the output's positions: a vocabulary of 262,144 makes whole-sequence logits large."""
    model = loaded.model
    device = next(model.parameters()).device
    totals = []
    with adapter_state(loaded, use_adapter):
        for example in examples:
            labels = torch.tensor(example.labels[1:])
            positions = (labels != IGNORE_INDEX).nonzero()[:, 0]
            ids = torch.tensor([example.input_ids], device=device)
            logits = model(input_ids=ids, logits_to_keep=positions.to(device), use_cache=False).logits[0].double()
            picked = torch.log_softmax(logits, dim=-1).gather(-1, labels[positions].to(device)[:, None])
            totals.append(float(picked.sum()))
            bar.advance()
    return totals
