"""GRPO's parts (Shao et al. 2024, DeepSeekMath; as TRL's GRPOTrainer computes them): tasks rendered as prompts,
replies scored token by token, advantages within each prompt's group, and the clipped policy loss with a KL
penalty to the reference.

For each prompt, G replies are sampled from the model as it is; a grader scores each; a reply's advantage
is its reward against its group's: (r − mean) / (std + 1e-4) (TRL's `scale_rewards="group"`), so a group
whose replies all score alike teaches nothing. The loss of each reply token t, with ratio ρ = π(t) / π_old(t):

    −min(ρ·A, clip(ρ, 1 − ε, 1 + ε)·A) + β · KL,   KL = π_ref/π − log(π_ref/π) − 1   (Schulman's k3 estimator)

summed over every reply token of the step and divided by their number (TRL's default `loss_type="dapo"`:
no length bias). With one optimizer step per batch of samples (TRL's default num_iterations 1), π_old is the
policy itself, detached, so ρ = 1 and its gradient is the policy gradient; the clip matters only if a batch
is stepped on more than once. Log-probabilities are taken at the sampling temperature (logits / T), so the
ratio compares the distribution the replies were drawn from (TRL's pitfall: a model sampled at T but scored
at 1). A reply cut at max_completion_tokens is scored and trained as it stands (TRL's default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.conversation.reinforcement import Task
from tunelab.conversation.render import IGNORE_INDEX, RenderedExample, render_prompt_ids
from tunelab.train.preference import trained_positions

ADVANTAGE_EPSILON = 1e-4  # TRL's: a group with spread below this is not blown up into large advantages


@dataclass
class RenderedTask:
    prompt_ids: list[int]
    task: Task
    line: int
    max_reply: int = 0  # the longest reply it may be sampled (the run's max_completion_tokens)

    @property
    def item(self) -> dict:
        return self.task.item


def render_tasks(tokenizer, numbered_tasks: list[tuple[int, Task]], max_reply: int = 0) -> list[RenderedTask]:
    return [RenderedTask(render_prompt_ids(tokenizer, task.messages, task.tools), task, line, max_reply)
            for line, task in numbered_tasks]


def sampled_sequence(prompt_ids: list[int], reply_ids: list[int]) -> RenderedExample:
    """The prompt and a sampled reply as one sequence whose reply tokens (its stop token included) train."""
    return RenderedExample(prompt_ids + reply_ids, [IGNORE_INDEX] * len(prompt_ids) + list(reply_ids))


def token_log_probs(model, input_ids, attention_mask, labels, temperature: float = 1.0):
    """(the log-probability of each trained token at `temperature`, flat, in row order; the row of each), through
    the fused head: only the reply positions' hidden states meet the LM head."""
    trained, scored = trained_positions(model, input_ids, attention_mask, labels, temperature)
    losses, _ = scored(trained)
    return -losses.float(), trained.nonzero()[:, 0]


def group_advantages(rewards: torch.Tensor, group_size: int) -> tuple[torch.Tensor, float]:
    """(each reply's advantage within its prompt's group, the share of groups whose rewards are all equal)."""
    groups = rewards.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
    advantages = ((groups - mean) / (std + ADVANTAGE_EPSILON)).view(-1)
    return advantages, float(torch.isclose(std, torch.zeros_like(std)).float().mean())


@dataclass
class PolicyLoss:
    per_token: torch.Tensor  # the loss of each reply token (to be summed and divided by the step's tokens)
    kl: torch.Tensor  # each token's KL estimate (detached)
    clipped: torch.Tensor  # each token whose clipped term was the one taken (detached)


def policy_loss(log_probs, old_log_probs, reference_log_probs, advantages, epsilon: float, kl_beta: float) -> PolicyLoss:
    """Per token: the clipped surrogate (advantages given per token) plus kl_beta × the k3 KL estimate."""
    ratio = torch.exp(log_probs - old_log_probs)
    clipped_ratio = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    surrogate = -torch.min(ratio * advantages, clipped_ratio * advantages)
    if reference_log_probs is None:
        kl = torch.zeros_like(log_probs)
    else:
        delta = reference_log_probs - log_probs
        kl = torch.exp(delta) - delta - 1
    per_token = surrogate + kl_beta * kl if kl_beta else surrogate
    # Where the clipped branch is the one taken (TRL's clip ratio): a ratio past 1 + ε on a rewarded token, or
    # below 1 − ε on a penalised one.
    clipped = (((ratio > 1 + epsilon) & (advantages > 0)) | ((ratio < 1 - epsilon) & (advantages < 0))).detach()
    return PolicyLoss(per_token, kl.detach(), clipped)
