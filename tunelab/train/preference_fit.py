"""The training loop of fit.py with a preference step (`tunelab train --method dpo`).

Each micro-batch's pairs are scored as one batch of sequences, every preferred output followed by every
non-preferred one, through the fused head (preference.py); the loss compares them with the reference's
log-probabilities, which were computed once, before the first step, and saved with the run (so a resumed
run compares with the same reference, not with the model it has become). Batches, micro-batches,
checkpoints, early stopping and exact resume are the supervised loop's.

What each step records beside OpenAI's figures (training loss: the preference loss; token accuracy: the
preferred replies' next-token accuracy): the mean implicit rewards of the preferred and non-preferred
outputs, their margin, and the reward accuracy (the share of pairs whose preferred output has the higher
reward) — TRL's DPOTrainer's figures, under its meaning. With `rpo_alpha` (RPO), the preferred replies'
mean token loss is added, weighted, to the step's loss, as TRL adds it.
"""

from __future__ import annotations

import torch

from tunelab.train.batches import collate
from tunelab.train.fit import Fit
from tunelab.train.preference import RenderedPair, pair_log_probs, preference_loss


class PreferenceFit(Fit):
    def __init__(self, *args, beta: float, loss_type: str, rpo_alpha: float = 0.0, simpo_gamma: float = 0.5,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.beta, self.loss_type, self.rpo_alpha, self.simpo_gamma = beta, loss_type, rpo_alpha, simpo_gamma

    @staticmethod
    def length(pair: RenderedPair) -> int:
        return pair.longest

    @staticmethod
    def trained_tokens(pair: RenderedPair) -> int:
        return pair.preferred.trained_tokens + pair.non_preferred.trained_tokens

    def pair_losses(self, pairs: list[RenderedPair]):
        """(the pairs' PreferenceLoss, correct next-token predictions in the preferred replies, their tokens,
        tokens in the batch)."""
        sequences = [pair.preferred for pair in pairs] + [pair.non_preferred for pair in pairs]
        input_ids, attention, labels = collate(sequences, self.pad_id, self.cluster.device)
        with self.autocast:
            sums, counts, correct, counted = pair_log_probs(self.model, input_ids, attention, labels, len(pairs))
        n = len(pairs)
        reference = torch.tensor([pair.reference for pair in pairs], dtype=torch.float64, device=sums.device)
        result = preference_loss(sums[:n], sums[n:], reference[:, 0], reference[:, 1], self.beta, self.loss_type,
                                 counts[:n], counts[n:], gamma=self.simpo_gamma)
        return result, -sums[:n].sum(), correct, counted, int(attention.sum())

    def loss_sum(self, result, preferred_loss, pairs: int, preferred_tokens: int) -> torch.Tensor:
        """This pass's share of the step's loss: the preference loss as a mean over the step's `pairs`, and with
        RPO, α × the preferred replies' loss as a mean over the step's `preferred_tokens` (as TRL's rpo_alpha)."""
        loss = result.losses.sum() / pairs
        if self.rpo_alpha:
            loss = loss + self.rpo_alpha * preferred_loss / max(preferred_tokens, 1)
        return loss

    def train_step(self, batch: list[int]) -> tuple[float, float]:
        """One optimizer step over `batch`'s pairs: the mean loss over the batch, whatever its split into passes
        and processes."""
        totals = [0.0] * 8  # loss, rewards chosen, rejected, margin, accurate pairs, correct, counted, tokens
        preferred_tokens = sum(self.train_examples[i].preferred.trained_tokens for i in batch)
        for indices in self.passes(batch, self.hyper.micro_batch_size):
            result, preferred_loss, correct, counted, tokens = self.pair_losses([self.train_examples[i] for i in indices])
            loss = self.loss_sum(result, preferred_loss, len(batch), preferred_tokens)
            self.scaler.scale(loss).backward()
            self._add(totals, loss.detach() * len(batch), result, correct, counted, tokens)
        self.apply_gradients()
        totals = self.cluster.sum(totals)
        self.tokens_seen += int(totals[7])
        pairs = len(batch)
        self.step_figures = {"train_rewards_chosen": totals[1] / pairs, "train_rewards_rejected": totals[2] / pairs,
                             "train_reward_margin": totals[3] / pairs, "train_reward_accuracy": totals[4] / pairs}
        return totals[0] / pairs, totals[5] / max(totals[6], 1)

    @torch.no_grad()
    def evaluate(self, pairs: list[RenderedPair]) -> tuple[float, float]:
        """Mean preference loss and the preferred replies' token accuracy over `pairs`; the reward accuracy and
        margin go to the step's figures."""
        self.model.eval()
        order = sorted(range(len(pairs)), key=lambda i: pairs[i].longest)
        totals = [0.0] * 8
        preferred_tokens = sum(pair.preferred.trained_tokens for pair in pairs)
        for indices in self.passes(order, self.hyper.micro_batch_size):
            result, preferred_loss, correct, counted, tokens = self.pair_losses([pairs[i] for i in indices])
            loss = self.loss_sum(result, preferred_loss, len(pairs), preferred_tokens)
            self._add(totals, loss * len(pairs), result, correct, counted, tokens)
        self.model.train()
        totals = self.cluster.sum(totals)
        self.step_figures.update(valid_reward_accuracy=totals[4] / len(pairs), valid_reward_margin=totals[3] / len(pairs))
        return totals[0] / len(pairs), totals[5] / max(totals[6], 1)

    @staticmethod
    def _add(totals: list[float], loss, result, correct: int, counted: int, tokens: int) -> None:
        """Add a pass's figures; `loss` is its loss scaled to a sum over pairs (its share × the step's pairs)."""
        margins = result.rewards_chosen - result.rewards_rejected
        for position, value in enumerate((loss, result.rewards_chosen.sum(),
                                          result.rewards_rejected.sum(), margins.sum(), (margins > 0).sum(),
                                          correct, counted, tokens)):
            totals[position] += float(value)
