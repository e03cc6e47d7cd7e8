"""The training loop (supervised: the loss of every trained token), and everything it carries across a checkpoint.

A plain PyTorch loop rather than transformers.Trainer, because the speed comes from things a generic
trainer does not do: the fused loss (loss.py), length-sorted batches split into micro-batches whose
gradients add up to the same step, and bf16 autocast over fp32 trained weights. A preference run trains in
the same loop with its own step (preference_fit.py).
"""

from __future__ import annotations

import dataclasses
import math
import random
import time

import torch

from tunelab.conversation.render import RenderedExample
from tunelab.core.events import Events
from tunelab.core.settings import TrainConfig
from tunelab.runs.record import RunRecorder, metrics_row
from tunelab.runs.rundir import RunDir
from tunelab.train.batches import collate, epoch_batches
from tunelab.train.checkpoints import random_states, restore_random_states, restore_training_state, save_checkpoint
from tunelab.train.cluster import Cluster
from tunelab.train.loss import TrainedTokenLoss
from tunelab.train.methods import compute_dtype, load_trainable_state, trainable_state
from tunelab.train.schedule import schedule
from tunelab.train.sharding import gathered_optimizer_state, gathered_to_cpu, shard

# Examples in the validation sample measured at intervals during training (the whole set at the end).
VALID_SAMPLE_SIZE = 16


class Fit:
    """The training loop and everything it must carry across a checkpoint."""

    def __init__(self, model, tokenizer, train_examples, valid_examples, hyper, config: TrainConfig, total_steps,
                 eval_every, cluster: Cluster, recorder: RunRecorder | None, run: RunDir, events: Events,
                 should_stop):
        self.model, self.loss = model, TrainedTokenLoss(model)
        if cluster.sharded:
            shard(self.loss, model, cluster.device)  # before the optimizer, which must hold the sliced weights
        self.train_examples, self.valid_examples = train_examples, valid_examples
        self.hyper, self.config, self.total_steps, self.eval_every = hyper, config, total_steps, eval_every
        self.cluster, self.recorder, self.run_directory = cluster, recorder, run
        self.events, self.should_stop = events, should_stop
        self.pad_id = tokenizer.pad_token_id
        self.lengths = [self.length(e) for e in train_examples]
        self.trained_counts = [self.trained_tokens(e) for e in train_examples]
        self.step_figures: dict = {}  # what a kind of fit adds to a step's row of metrics, beside OpenAI's
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.parameters, lr=hyper.learning_rate, weight_decay=config.weight_decay)
        self.schedule = schedule(self.optimizer, total_steps, config.warmup_ratio, config.lr_scheduler)
        dtype = compute_dtype(config, cluster.device)
        self.autocast = torch.autocast(cluster.device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32)
        # fp16 cannot hold small gradients (below 6e-8 they flush to zero): the loss is scaled up before the
        # backward pass and the gradients scaled back down before the step, skipping steps that overflowed.
        self.scaler = torch.amp.GradScaler(cluster.device.split(":")[0], enabled=dtype == torch.float16)
        self.valid_sample = random.Random(config.seed).sample(valid_examples,
                                                              min(len(valid_examples), VALID_SAMPLE_SIZE))
        # What a checkpoint carries besides weights and optimizer:
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.tokens_seen, self.train_seconds = 0, 0.0
        self.step_learning_rate: float | None = None
        self.rows: list[dict] = []
        self.best = {"valid_loss": None, "step": 0, "evaluations_since": 0}
        self.best_weights: dict[str, torch.Tensor] | None = None

    @staticmethod
    def length(example: RenderedExample) -> int:
        return len(example.input_ids)

    @staticmethod
    def trained_tokens(example: RenderedExample) -> int:
        return example.trained_tokens

    # --- checkpoints -----------------------------------------------------------------------------------
    def restore(self, checkpoint) -> None:
        if checkpoint is None:
            if self.recorder:
                self.recorder.event("No complete checkpoint to resume from; starting from step 0")
            return
        load_trainable_state(self.model, checkpoint.trainable())
        restore_training_state(checkpoint, self.optimizer, self.schedule)
        state = checkpoint.state
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.tokens_seen, self.train_seconds = state["tokens_seen"], state["train_seconds"]
        self.rows, self.best = state["rows"], state["best"]
        if state.get("loss_scale"):
            self.scaler.load_state_dict(state["loss_scale"])
        best_file = checkpoint.path / "best.safetensors"
        if best_file.exists():
            from safetensors.torch import load_file

            self.best_weights = load_file(best_file)
        if self.recorder:
            self.recorder.restore_rows(self.rows)
            self.recorder.event(f"Resumed from checkpoint at step {self.step}", data={"step": self.step})

    def save_checkpoint(self) -> None:
        # Whole tensors, gathered by every process together if sharded, so any number of processes can resume.
        main = self.cluster.is_main
        trainable = gathered_to_cpu(trainable_state(self.model), keep=main)
        optimizer_state = gathered_optimizer_state(self.optimizer, keep=main)
        best_weights = None if self.best_weights is None else gathered_to_cpu(self.best_weights, keep=main)
        if main:
            state = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "tokens_seen": self.tokens_seen,
                     "train_seconds": self.train_seconds, "rows": self.rows, "best": self.best,
                     "loss_scale": self.scaler.state_dict()}
            path = save_checkpoint(self.run_directory.checkpoints_dir, self.step, trainable, optimizer_state, self.schedule,
                                   state, best=best_weights)
            self.recorder.event(f"Checkpoint saved at step {self.step}", data={"step": self.step,
                                                                               "path": str(path)})
            self.recorder.refresh_loss_curve()  # so the curve grows during runs without validation too
        self.cluster.barrier()

    # --- the loop --------------------------------------------------------------------------------------
    def run(self) -> str:
        """Train to the end; returns 'finished', 'stopped early' or 'cancelled'."""
        self.model.train()
        with self.events.progress("train", total=self.total_steps, completed=self.step) as progress:
            while self.epoch < self.hyper.n_epochs:
                batches = epoch_batches(self.lengths, self.hyper.batch_size, self.config.seed, self.epoch)
                for batch in batches[self.batch_in_epoch:]:
                    step_started = time.monotonic()
                    train_loss, train_accuracy = self.train_step_that_fits(batch)
                    self.train_seconds += time.monotonic() - step_started
                    self.step += 1
                    self.batch_in_epoch += 1
                    if self.batch_in_epoch == len(batches):  # the position a checkpoint records: next epoch
                        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    valid_loss, valid_accuracy = self.maybe_validate()
                    self.record(train_loss, train_accuracy, valid_loss, valid_accuracy)
                    progress.advance(loss=f"{train_loss:.3f}",
                                     **{"tok/s": f"{self.tokens_seen / max(self.train_seconds, 1e-9):.0f}"})
                    every = self.config.checkpoint_every
                    if self.batch_in_epoch == 0 or (every and self.step % every == 0):
                        self.save_checkpoint()
                    if self.early_stop_due():
                        self.finish_early()
                        return "stopped early"
                    if self.should_stop and self.cluster.broadcast(self.cluster.is_main and self.should_stop(self.step)):
                        return "stopped"  # the first process decides, so all stop at the same step
        if self.recorder:
            self.recorder.event(
                f"Trained {self.tokens_seen} tokens in {self.train_seconds:.0f} s "
                f"({self.tokens_seen / max(self.train_seconds, 1e-9):.0f} tokens/s)",
                data={"tokens": self.tokens_seen, "train_seconds": round(self.train_seconds, 3)})
        return "finished"

    def train_step_that_fits(self, batch: list[int]) -> tuple[float, float]:
        """train_step; when the device runs out of memory in the passes, the micro-batch is halved and the step
        done again from its start. The batch's gradient is a sum over its passes, so the step, and the run,
        are the ones a run started at the smaller micro-batch makes."""
        while True:
            states = random_states()
            try:
                return self.train_step(batch)
            except torch.OutOfMemoryError:
                smaller = self.hyper.micro_batch_size // 2
                if smaller < 1 or self.cluster.world > 1:  # other processes would wait for this one for ever
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                restore_random_states(states)  # dropout draws the masks it would have drawn
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                message = (f"Out of memory at micro-batch {self.hyper.micro_batch_size}: step {self.step + 1} done "
                           f"again at {smaller} (the same batch, the same step)")
                self.hyper = dataclasses.replace(self.hyper, micro_batch_size=smaller)
                if self.recorder:
                    self.recorder.event(message, data={"step": self.step + 1, "micro_batch_size": smaller})
                self.events.warning(message, micro_batch_size=smaller)

    def train_step(self, batch: list[int]) -> tuple[float, float]:
        """One optimizer step over `batch` (this process's share, in micro-batches); global loss and accuracy."""
        cluster, hyper = self.cluster, self.hyper
        # Normalise by the whole batch's trained tokens, across processes and micro-batches, so the step is
        # the same whatever the split: one mean over every trained token of the batch.
        batch_trained = sum(self.trained_counts[i] for i in batch)
        passes = self.passes(batch, hyper.micro_batch_size)
        loss_total, correct_total, tokens = 0.0, 0, 0
        for number, indices in enumerate(passes):
            micro = [self.train_examples[i] for i in (indices or batch[:1])]
            input_ids, attention, labels = collate(micro, self.pad_id, cluster.device)
            if cluster.sharded:  # sum the passes' gradients locally; reduce-scatter once, after the last
                self.loss.set_requires_gradient_sync(number == len(passes) - 1)
            with self.autocast:
                loss_sum, correct, _count = self.loss(input_ids, attention, labels)
            if indices is None:  # a pass that only keeps this process in step with the others
                (loss_sum * 0).backward()
                continue
            self.scaler.scale(loss_sum / max(batch_trained, 1)).backward()
            loss_total += loss_sum.item()
            correct_total += int(correct)
            tokens += int(attention.sum())
        self.apply_gradients()
        loss_total, correct_total, tokens = cluster.sum([loss_total, correct_total, tokens])
        self.tokens_seen += int(tokens)
        return loss_total / max(batch_trained, 1), correct_total / max(batch_trained, 1)

    def apply_gradients(self) -> None:
        """The optimizer step from the gradients the passes left (summed over processes), clipped, scheduled."""
        if not self.cluster.sharded:
            self.cluster.sum_gradients(self.parameters)
        self.scaler.unscale_(self.optimizer)
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.step_learning_rate = self.optimizer.param_groups[0]["lr"]  # the rate this step applies
        self.scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed
        self.scaler.update()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)

    def passes(self, indices: list[int], size: int) -> list[list[int] | None]:
        """This process's share of `indices`, in forward passes of up to `size` examples.

        Sharded, every process makes as many passes as the busiest one, since each pass gathers weights from
        all of them; the extra passes are None and count for nothing.
        """
        cluster = self.cluster
        mine = indices[cluster.rank::cluster.world]
        passes: list[list[int] | None] = [mine[start:start + size] for start in range(0, len(mine), size)]
        if cluster.sharded:
            busiest = math.ceil(math.ceil(len(indices) / cluster.world) / size)
            passes += [None] * (busiest - len(passes))
        return passes

    def maybe_validate(self) -> tuple[float | None, float | None]:
        if not self.valid_examples:
            return None, None
        last = self.step == self.total_steps
        if not (last or self.step % self.eval_every == 0):
            return None, None
        # As OpenAI does: a fixed sample at intervals (cheap), the whole set at the end.
        subset = self.valid_examples if last else self.valid_sample
        valid_loss, valid_accuracy = self.evaluate(subset)
        if self.config.early_stopping_patience:
            self.track_best(valid_loss)
        return valid_loss, valid_accuracy

    @torch.no_grad()
    def evaluate(self, examples: list[RenderedExample]) -> tuple[float, float]:
        """Mean loss and token accuracy over every trained token of `examples` (shared among processes)."""
        self.model.eval()
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
        loss_total, correct_total, count_total = 0.0, 0, 0
        for indices in self.passes(order, self.hyper.micro_batch_size):
            batch = [examples[i] for i in (indices or order[:1])]
            input_ids, attention, labels = collate(batch, self.pad_id, self.cluster.device)
            with self.autocast:
                loss_sum, correct, count = self.loss(input_ids, attention, labels)
            if indices is None:  # in step with the other processes only
                continue
            loss_total, correct_total, count_total = loss_total + loss_sum.item(), correct_total + int(correct), count_total + count
        self.model.train()
        loss_total, correct_total, count_total = self.cluster.sum([loss_total, correct_total, count_total])
        return loss_total / max(count_total, 1), correct_total / max(count_total, 1)

    def record(self, train_loss, train_accuracy, valid_loss, valid_accuracy) -> None:
        row = metrics_row(self.step, train_loss, train_accuracy, valid_loss, valid_accuracy, self.step_learning_rate)
        row.update(self.step_figures)
        self.step_figures = {}
        self.rows.append(row)
        if not self.recorder:
            return
        self.recorder.metrics(row)
        if valid_loss is not None:
            self.events.message(f"step {self.step}/{self.total_steps}: train loss {train_loss:.3f}, "
                                f"valid loss {valid_loss:.3f}, valid token accuracy {valid_accuracy:.1%}", **row)
            self.recorder.refresh_loss_curve()

    # --- early stopping --------------------------------------------------------------------------------
    def track_best(self, valid_loss: float) -> None:
        if self.best["valid_loss"] is None or valid_loss < self.best["valid_loss"]:
            self.best = {"valid_loss": valid_loss, "step": self.step, "evaluations_since": 0}
            self.best_weights = {name: t.detach().clone().cpu() for name, t in trainable_state(self.model).items()}
        else:
            self.best["evaluations_since"] += 1

    def early_stop_due(self) -> bool:
        patience = self.config.early_stopping_patience
        return bool(patience) and self.best["evaluations_since"] >= patience and self.step < self.total_steps

    def finish_early(self) -> None:
        """Stop: put back the weights of the best validation, and say so."""
        load_trainable_state(self.model, self.best_weights)
        if self.recorder:
            self.recorder.event(
                f"Early stopping at step {self.step}: validation loss has not improved for "
                f"{self.config.early_stopping_patience} evaluations; keeping the weights of step {self.best['step']} "
                f"(validation loss {self.best['valid_loss']:.4f})", data=dict(self.best, stopped_at=self.step))
