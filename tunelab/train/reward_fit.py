"""The training loop of fit.py with a reinforcement step (`tunelab train --method grpo --grader grader.json`).

Each step takes a batch of prompts and:
1. samples `group_size` replies to each from the model as it is (models/generate.py's batched decoding, with
   the finished replies leaving the batch), at `sample_temperature`, from a generator seeded with the run's
   seed and the step number — so a resumed run draws exactly the replies the uninterrupted run drew;
2. grades every reply with the grader (graders/: a python grader's replies in one sandbox, a model grader's
   prompts in one batch);
3. turns the rewards into advantages within each prompt's group, and steps on GRPO's loss (reinforcement.py),
   in micro-batches of prompts (each with its whole group), with the KL penalty to the reference: the
   adapter switched off for a fresh adapter (the model as the run started), or, for a run continued `--from`
   another, the adapter's weights as the run started, swapped in for the reference pass.

What each step records beside the loss: the replies' mean reward and its spread, the mean KL to the
reference, the mean reply length, the share of groups whose replies all scored alike (they teach nothing),
the share of clipped tokens, and the seconds spent sampling and grading. Validation answers the validation
prompts greedily, one reply each, and grades them: `valid_reward_mean` (a fixed sample of `eval_samples` at
intervals, every prompt at the end). The reward curve is drawn beside the loss.
"""

from __future__ import annotations

import contextlib
import random
import time

import torch

from tunelab.conversation.templates import stop_token_ids
from tunelab.graders.grade import Grading
from tunelab.graders.templates import Sample
from tunelab.models.generate import finished_reply, sample_tokens
from tunelab.train.batches import collate
from tunelab.train.fit import Fit
from tunelab.train.methods import load_trainable_state, trainable_state
from tunelab.train.reinforcement import RenderedTask, group_advantages, policy_loss, sampled_sequence, token_log_probs

SAMPLING_ROWS = 64  # replies decoded together


class Reference:
    """The reference policy for the KL penalty: the adapter switched off, or (`start` given) the trainable
    weights as the run started, swapped in for the reference pass and swapped back after it."""

    def __init__(self, model, start: dict[str, torch.Tensor] | None):
        self.model = model
        self.start = None if start is None else {name: t.detach().clone() for name, t in start.items()}

    @contextlib.contextmanager
    def active(self):
        if self.start is None:
            with self.model.disable_adapter():
                yield
            return
        current = {name: t.detach().clone() for name, t in trainable_state(self.model).items()}
        load_trainable_state(self.model, self.start)
        try:
            yield
        finally:
            load_trainable_state(self.model, current)


class RewardFit(Fit):
    def __init__(self, *args, tokenizer, grading: Grading, group_size: int, kl_beta: float, epsilon: float,
                 temperature: float, max_completion_tokens: int, eval_samples: int, reference: Reference | None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.tokenizer, self.grading = tokenizer, grading
        self.group_size, self.kl_beta, self.epsilon = group_size, kl_beta, epsilon
        self.temperature, self.max_completion_tokens = temperature, max_completion_tokens
        self.reference = reference
        self.grader_errors, self.said_grader_error = 0, False
        self.stop_ids = stop_token_ids(tokenizer, getattr(self.model, "generation_config", None))
        self.valid_sample = random.Random(self.config.seed).sample(self.valid_examples,
                                                                   min(len(self.valid_examples), eval_samples))

    @staticmethod
    def length(task: RenderedTask) -> int:
        return len(task.prompt_ids)

    @staticmethod
    def trained_tokens(task: RenderedTask) -> int:
        return 0  # known only once its replies are sampled

    # --- sampling and grading --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, tasks: list[RenderedTask], replies_each: int, temperature: float, seed: int) -> list[list[int]]:
        """`replies_each` replies to each task (grouped: task 0's, then task 1's, …), as token ids."""
        self.model.eval()
        try:
            with self.autocast:
                return sample_tokens(self.model, [t.prompt_ids for t in tasks for _ in range(replies_each)],
                                     self.stop_ids, self.pad_id, self.max_completion_tokens, temperature,
                                     seed=seed, batch_size=SAMPLING_ROWS)
        finally:
            self.model.train()

    def grade(self, tasks: list[RenderedTask], replies: list[list[int]], replies_each: int) -> list[float]:
        samples = [Sample.of(finished_reply(self.tokenizer, reply, self.stop_ids, 0)) for reply in replies]
        items = [tasks[index // replies_each].item for index in range(len(replies))]
        graded = self.grading.grade(samples, items)
        failed = [g for g in graded if g.failed]
        self.grader_errors += len(failed)
        if failed and not self.said_grader_error:  # once: the step's figures count them from here on
            self.said_grader_error = True
            message = f"The grader failed on a reply, which scores 0: {(failed[0].details or ['?'])[0]}"
            self.events.warning(message, step=self.step + 1)
            if self.recorder:
                self.recorder.event(message, level="warn", data={"step": self.step + 1})
        return [g.reward for g in graded]

    # --- the step --------------------------------------------------------------------------------------
    def train_step(self, batch: list[int]) -> tuple[float, float | None]:
        tasks = [self.train_examples[i] for i in batch]
        group = self.group_size
        self.grader_errors = 0  # this step's (and its validation's)
        started = time.monotonic()
        replies = self.sample(tasks, group, self.temperature, seed=self.config.seed * 1_000_003 + self.step)
        sampled = time.monotonic()
        rewards = torch.tensor(self.grade(tasks, replies, group), dtype=torch.float32)
        graded = time.monotonic()
        advantages, zero_spread = group_advantages(rewards, group)
        reply_tokens = sum(len(r) for r in replies)
        totals = {"loss": 0.0, "kl": 0.0, "clipped": 0.0}
        passes = []  # (the replies' rows, their sequences collated), one per micro-batch of prompts
        for indices in self.passes(list(range(len(tasks))), self.hyper.micro_batch_size):
            rows = [t * group + k for t in indices for k in range(group)]
            sequences = [sampled_sequence(tasks[r // group].prompt_ids, replies[r]) for r in rows]
            passes.append((rows, collate(sequences, self.pad_id, self.cluster.device)))
        references = self.reference_log_probs([batch for _, batch in passes])
        for (rows, (input_ids, attention, labels)), reference in zip(passes, references):
            with self.autocast:
                log_probs, token_rows = token_log_probs(self.model, input_ids, attention, labels, self.temperature)
            token_advantages = advantages[rows].to(log_probs.device)[token_rows]
            loss = policy_loss(log_probs, log_probs.detach(), reference, token_advantages, self.epsilon, self.kl_beta)
            pass_loss = loss.per_token.sum() / max(reply_tokens, 1)
            self.scaler.scale(pass_loss).backward()
            totals["loss"] += float(pass_loss.detach())
            totals["kl"] += float(loss.kl.sum())
            totals["clipped"] += float(loss.clipped.sum())
        self.apply_gradients()
        self.tokens_seen += reply_tokens + sum(len(t.prompt_ids) for t in tasks) * group
        self.step_figures = {
            "train_reward_mean": float(rewards.mean()), "train_reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            "train_kl": totals["kl"] / max(reply_tokens, 1), "train_completion_tokens": reply_tokens / len(replies),
            "train_frac_reward_zero_std": zero_spread, "train_clip_ratio": totals["clipped"] / max(reply_tokens, 1),
            "sample_seconds": round(sampled - started, 3), "grade_seconds": round(graded - sampled, 3),
            "sampled_tokens": reply_tokens, "grader_errors": self.grader_errors}
        return totals["loss"], None

    def reference_log_probs(self, batches: list[tuple]) -> list[torch.Tensor | None]:
        """The reference's log-probabilities of each collated batch's reply tokens, under one switch to the
        reference for the whole step (a run continued `--from` swaps weights in and back once, not per pass)."""
        if not self.kl_beta or self.reference is None:
            return [None] * len(batches)
        with torch.no_grad(), self.reference.active(), self.autocast:
            return [token_log_probs(self.model, *batch, self.temperature)[0] for batch in batches]

    # --- validation: the mean reward of greedy replies ----------------------------------------------------
    def maybe_validate(self) -> tuple[None, None]:
        if not self.valid_examples:
            return None, None
        last = self.step == self.total_steps
        if not (last or self.step % self.eval_every == 0):
            return None, None
        tasks = self.valid_examples if last else self.valid_sample
        replies = self.sample(tasks, 1, temperature=0.0, seed=None)
        rewards = self.grade(tasks, replies, 1)
        self.step_figures["valid_reward_mean"] = sum(rewards) / len(rewards)
        self.events.message(f"step {self.step}/{self.total_steps}: mean reward of {len(tasks)} validation replies "
                            f"{self.step_figures['valid_reward_mean']:.3f}", step=self.step,
                            valid_reward_mean=self.step_figures["valid_reward_mean"])
        return None, None
