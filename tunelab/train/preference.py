"""Preference losses: DPO and IPO over the log-probabilities of a pair's two replies against a reference, and
SimPO without one.

Each reply is scored as it trains in a supervised run: the prompt and the reply rendered as one
conversation (so the prompt's tokens are the same in both and only the reply differs), the reply's tokens
(and its end-of-turn marker) summed through the fused head of `loss.py`, which keeps one loss per token so
the sequence-level loss gets its exact gradient. With r = log π(reply) − log π_ref(reply):

- `sigmoid` (DPO, Rafailov et al. 2023): −log σ(β · (r_preferred − r_non_preferred));
- `ipo` (Azar et al. 2023): ((r_preferred / n_preferred − r_non_preferred / n_non_preferred) − 1/(2β))², with
  the ratios averaged over each reply's tokens as TRL does (the paper's results use this form);
- `simpo` (Meng et al. 2024), reference-free: −log σ(β · (log π(preferred) / n_preferred − log π(non_preferred)
  / n_non_preferred) − γ), the rewards β · the average log-probability (TRL's CPOTrainer with
  `loss_type="simpo"`). No reference pass, no reference held: the cheapest of the three.

The implicit rewards are β · r, detached; a pair counts towards the reward accuracy when the preferred
reply's reward is the higher. These are TRL's `DPOTrainer` definitions, so the figures compare one to one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tunelab.conversation.preference import PreferencePair
from tunelab.conversation.render import IGNORE_INDEX, RenderedExample, render_numbered
from tunelab.train.batches import collate
from tunelab.train.loss import token_cross_entropy

LOSS_TYPES = ("sigmoid", "ipo", "simpo")
REFERENCE_FREE = ("simpo",)


def trained_positions(model, input_ids, attention_mask, labels, temperature: float = 1.0):
    """(which positions' next token trains, a function scoring given positions): only those positions' hidden
    states meet the LM head (the fused pass of loss.py). The scores are per-token losses and the number of
    correct argmax predictions, at `temperature` (logits / T; reinforcement scores its samples so)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    right_padded = bool((attention_mask[:, :-1] >= attention_mask[:, 1:]).all())  # as TrainedTokenLoss
    hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=None if right_padded else attention_mask,
                                     use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    trained = targets != IGNORE_INDEX
    head = causal_lm.get_output_embeddings()
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if softcap and temperature != 1.0:
        raise ValueError(f"sample_temperature {temperature:g}: this model caps its logits (final_logit_softcapping), "
                         "so only temperature 1 is scored exactly; set sample_temperature 1")
    device = hidden.device.type
    compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else head.weight.dtype

    def scored(positions):
        """Per-token losses and the number of correct argmax predictions at the trained `positions`."""
        rows = hidden[:, :-1][positions]
        if temperature != 1.0:  # logits / T = (hidden / T) · W
            rows = rows / temperature
        return token_cross_entropy(rows, head.weight, targets[positions], softcap, compute_dtype)

    return trained, scored


def _row_sums(token_losses, trained) -> torch.Tensor:
    # Summed in fp64: a sum of hundreds of log-probabilities in fp32 rounds by more than the differences a
    # preference loss is made of (policy − reference, preferred − non-preferred).
    rows = trained.nonzero()[:, 0]
    return torch.zeros(len(trained), dtype=torch.float64, device=token_losses.device).index_add(
        0, rows, -token_losses.double())


def sequence_log_probs(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """(each sequence's summed log-probability of its trained tokens, in fp64; how many there are), through the
    fused head: only the trained positions' hidden states meet the LM head."""
    trained, scored = trained_positions(model, input_ids, attention_mask, labels)
    token_losses, _ = scored(trained)
    return _row_sums(token_losses, trained), trained.sum(dim=1)


def pair_log_probs(model, input_ids, attention_mask, labels, pairs: int):
    """For a batch of `pairs` preferred sequences followed by their non-preferred ones: (summed log-probabilities
    [2 × pairs], token counts [2 × pairs], correct next-token predictions in the preferred replies, their
    tokens). The two halves are scored apart only to count the preferred replies' accuracy."""
    trained, scored = trained_positions(model, input_ids, attention_mask, labels)
    first = torch.zeros_like(trained)
    first[:pairs] = True
    preferred_losses, correct = scored(trained & first)
    rest_losses, _ = scored(trained & ~first)
    sums = _row_sums(preferred_losses, trained & first) + _row_sums(rest_losses, trained & ~first)
    counts = trained.sum(dim=1)
    return sums, counts, int(correct), int(counts[:pairs].sum())


@dataclass
class RenderedPair:
    """A pair as it trains: its prompt with each output, rendered as conversations, and once known, the
    reference's summed log-probabilities of the two outputs."""

    preferred: RenderedExample
    non_preferred: RenderedExample
    reference: tuple[float, float] | None = None

    @property
    def longest(self) -> int:
        return max(len(self.preferred.input_ids), len(self.non_preferred.input_ids))


def render_pairs(tokenizer, numbered_pairs: list[tuple[int, PreferencePair]], path) -> list[RenderedPair]:
    """Each pair's two conversations rendered whole (a template that cannot place the mask names file:line)."""
    rendered = {preferred: render_numbered(tokenizer, [(line, pair.conversation(preferred)) for line, pair in numbered_pairs],
                                           path) for preferred in (True, False)}
    return [RenderedPair(*examples) for examples in zip(rendered[True], rendered[False])]


def reference_log_probs(model, pairs: list[RenderedPair], pad_id: int, device: str, batch_size: int = 8,
                        autocast=None) -> torch.Tensor:
    """[pairs, 2] fp64: each pair's outputs' summed log-probabilities under the model as it is now — before
    the first step, the reference: the base for a fresh adapter (whose update is zero), or the adapter a run
    continues from. Computed once, so the reference needs neither a second model nor the adapter switched
    off at every step.

    Computed as the training step computes the policy, so that the first step's policy equals its reference
    (loss ln 2) in every number format: under the training's `autocast`, and with gradients on, since the
    trained LoRA layers take their merged path only then (merged_lora.py) and a continued adapter through
    PEFT's own path rounds differently in 16 bits. Nothing steps on these gradients; each batch's graph is
    dropped as it ends."""
    was_training = model.training
    model.eval()
    examples = [example for pair in pairs for example in (pair.preferred, pair.non_preferred)]
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))  # little padding
    sums = torch.zeros(len(examples), dtype=torch.float64)
    for start in range(0, len(order), batch_size):
        indices = order[start:start + batch_size]
        with autocast or contextlib.nullcontext():
            batch_sums, _ = sequence_log_probs(model, *collate([examples[i] for i in indices], pad_id, device))
        sums[indices] = batch_sums.detach().cpu()
    model.train(was_training)
    model.zero_grad(set_to_none=True)
    return sums.view(len(pairs), 2)


@dataclass
class PreferenceLoss:
    losses: torch.Tensor  # each pair's
    rewards_chosen: torch.Tensor  # β · r of each preferred reply (detached)
    rewards_rejected: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        """The mean over pairs, to step on."""
        return self.losses.mean()

    def metrics(self) -> dict[str, float]:
        margins = self.rewards_chosen - self.rewards_rejected
        return {"loss": float(self.loss.detach()), "rewards_chosen": float(self.rewards_chosen.mean()),
                "rewards_rejected": float(self.rewards_rejected.mean()), "reward_margin": float(margins.mean()),
                "reward_accuracy": float((margins > 0).float().mean())}


def preference_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float,
                    loss_type: str = "sigmoid", chosen_tokens=None, rejected_tokens=None,
                    gamma: float = 0.5) -> PreferenceLoss:
    """The loss of a batch of pairs from their replies' summed log-probabilities under the policy and the
    reference (and, for IPO and SimPO, the replies' token counts; SimPO ignores the reference and takes its
    margin `gamma`)."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss type {loss_type!r}: use one of {', '.join(LOSS_TYPES)}")
    if loss_type == "simpo":
        chosen = policy_chosen / chosen_tokens.clamp(min=1)
        rejected = policy_rejected / rejected_tokens.clamp(min=1)
        losses = -F.logsigmoid(beta * (chosen - rejected) - gamma)
        return PreferenceLoss(losses, beta * chosen.detach(), beta * rejected.detach())
    chosen_ratio = policy_chosen - reference_chosen
    rejected_ratio = policy_rejected - reference_rejected
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    else:
        delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2
    return PreferenceLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())
