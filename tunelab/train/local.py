"""Local fine-tuning: the whole recipe, readable top to bottom (setup → fit → save).

    tunelab train --data train.jsonl --validation valid.jsonl
    tunelab train --resume runs/ftjob-…            # continue a crashed or cancelled run exactly
    accelerate launch --multi_gpu --num_processes 2 -m tunelab.cli train --data …   # data-parallel
    accelerate launch --use_fsdp --num_processes 2 -m tunelab.cli train --data …     # sharded (FSDP2)

A plain PyTorch loop rather than transformers.Trainer, because the speed comes from things a generic
trainer does not do:
1. The loss (train/loss.py): logits only at trained tokens, and the LM head, softmax and their gradient
   fused into one chunked pass that never holds the full logits.
2. Length-sorted batches (shuffled as batches), so padding is a few tokens rather than most of the batch;
   a batch too big for memory is split into micro-batches whose gradients add up to the same step.
3. bf16 base weights with fp32 LoRA weights under bf16 autocast, where the hardware has bf16 units.

Crash safety: a checkpoint (train/checkpoints.py) at the end of every epoch, and every N steps if asked,
holds the weights, the optimizer, the schedule, the random states and the metrics so far. The data order
of an epoch depends only on the seed and the epoch number, so a resumed run visits exactly the batches the
uninterrupted run would have, and ends with the same weights and metrics.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import yaml

from tunelab.conversation.reader import read_numbered_conversations
from tunelab.conversation.render import RenderedExample, check_template_agreement, render_numbered
from tunelab.core.events import NO_EVENTS, Events
from tunelab.core.files import atomic_path, check_output_directory, remove_stale_temporaries, write_text_atomically
from tunelab.core.settings import AUTO, TrainConfig, resolve_hyperparameters
from tunelab.models.device_memory import device_budget
from tunelab.models.precision import dtype_name, native_bf16
from tunelab.models.resolve import load_tokenizer, resolve_model
from tunelab.runs import lifecycle
from tunelab.runs.tracking import requested_trackers
from tunelab.runs.record import RunRecorder, fine_tuned_model_name, fine_tuning_job, metrics_row, new_job_id
from tunelab.runs.rundir import RunDir
from tunelab.train.batches import collate, epoch_batches
from tunelab.train.checkpoints import (latest_checkpoint, random_states, restore_random_states,
                                       restore_training_state, save_checkpoint)
from tunelab.train.loss import TrainedTokenLoss
from tunelab.train.memory import DoesNotFit, model_shape, plan_for
from tunelab.train.methods import (MethodUnavailable, check_method_available, chosen_kernels, compute_dtype,
                                   load_trainable_state, trainable_model, trainable_state, training_device)
from tunelab.train.schedule import schedule
from tunelab.train.sharding import gathered_optimizer_state, gathered_to_cpu, local_share, shard

# Examples in the validation sample measured at intervals during training (the whole set at the end).
VALID_SAMPLE_SIZE = 16


class RunExists(FileExistsError):
    """The run directory already holds a run; resume it or choose another."""


class NothingToTrain(ValueError):
    """No example has a token to train on (every assistant turn has weight 0, or is cut off)."""


@dataclass
class Cluster:
    """This process's place among the data-parallel processes (one process: rank 0 of 1).

    Unsharded, every process holds the whole model and gradients are summed after each step
    (`sum_gradients`); sharded (FSDP, train/sharding.py), each holds a slice and PyTorch sums gradients
    into the slices during the backward pass.
    """

    accelerator: object
    rank: int
    world: int
    device: str
    sharded: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all processes (the values unchanged with one process)."""
        if self.world == 1:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(tensor)
        return tensor.tolist()

    def sum_gradients(self, parameters: list[torch.Tensor]) -> None:
        """Add up the gradients of all processes, in one flat all-reduce."""
        if self.world == 1:
            return
        gradients = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in gradients])
        torch.distributed.all_reduce(flat)
        offset = 0
        for parameter in parameters:
            parameter.grad = flat[offset:offset + parameter.numel()].view_as(parameter).clone()
            offset += parameter.numel()

    def broadcast(self, value):
        if self.world == 1:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value])[0]

    def barrier(self) -> None:
        if self.world > 1:
            self.accelerator.wait_for_everyone()


def join_cluster(fsdp: bool = False) -> Cluster:
    """Set up data parallelism when launched by `accelerate launch`/torchrun; one process otherwise.

    Sharded when asked for by `fsdp` or by `accelerate launch --use_fsdp`, and there is more than one process.
    """
    from accelerate import Accelerator

    device = training_device()
    accelerator = Accelerator(cpu=device == "cpu")
    state = accelerator.state
    fsdp = fsdp or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    return Cluster(accelerator, state.process_index, state.num_processes, str(accelerator.device),
                   sharded=fsdp and state.num_processes > 1)


def train(config: TrainConfig, events: Events = NO_EVENTS, resume: bool = False,
          should_stop: Callable[[int], bool] | None = None, job_id: str | None = None,
          model_name: str | None = None) -> Path:
    """Fine-tune as `config` says; returns the run directory (self-contained).

    `events` receives the progress and messages (of the first process only). `resume=True` continues the
    run in `config.out` from its last complete checkpoint. `should_stop(step)` is asked after every step;
    returning True cancels the run cleanly (its checkpoints stay resumable). `job_id`: the id of the job this
    run is (a server's); a new `ftjob-…` by default. `model_name`: what the job's creator called the base model
    (a server's alias, e.g. gpt-4o-mini-2024-07-18), which the fine-tune's name starts with; the base's own
    name by default.
    """
    started = time.time()
    check_method_available(config, training_device())
    cluster = join_cluster(config.fsdp)
    events = events if cluster.is_main else NO_EVENTS  # the first process speaks for all
    if cluster.sharded and (config.adapter == "qlora" or config.kernels == "unsloth"):
        raise MethodUnavailable("fsdp: sharding 4-bit weights or Unsloth's patched model is not supported; "
                                "use adapter: lora or full with FSDP, or plain data parallelism")
    dtype = compute_dtype(config, cluster.device)
    if cluster.sharded and dtype == torch.float16:
        raise MethodUnavailable("fsdp: fp16 loss scaling of sharded gradients is not supported; "
                                "use dtype: bf16 or fp32")
    job_id = cluster.broadcast(job_id or new_job_id())
    run = RunDir(config.out or Path("runs") / job_id)
    check_output_directory(run.path)
    if resume and not run.has_run():  # stopped before its first step was recorded: nothing to continue
        resume = False
    if resume:
        recorded = run.job()
        job_id = recorded["id"]
        if not lifecycle.allowed(recorded["status"], "running", local=True):
            raise RunExists(f"{run.path}: the run has {recorded['status']}; there is nothing to resume")
        if cluster.is_main:  # what the crash interrupted (a loss curve, the adapter) is written again below
            remove_stale_temporaries(run.path)
    elif run.has_run():
        raise RunExists(f"{run.path} already holds a run; resume it with `tunelab train --resume {run.path}` "
                        "or choose another --out")

    # --- setup: data, model, adapter -------------------------------------------------------------------
    numbered_train = read_numbered_conversations(config.data)
    numbered_valid = read_numbered_conversations(config.validation) if config.validation else []
    load_started = time.monotonic()
    resolved = resolve_model(config.model, events)
    tokenizer = load_tokenizer(resolved.path, config.chat_template)
    # Rendered once, whole: the template check needs the untruncated ids, training the truncated ones.
    train_examples = render_numbered(tokenizer, numbered_train, config.data)
    check_template_agreement(tokenizer, numbered_train, config.data, rendered=train_examples)
    valid_examples = render_numbered(tokenizer, numbered_valid, config.validation)
    if config.validation_split and not valid_examples:
        train_examples, valid_examples = _hold_out(train_examples, config.validation_split, config.seed)
    train_examples = _truncated(train_examples, config.max_length, config.data, events)
    valid_examples = _truncated(valid_examples, config.max_length,
                                config.validation or f"{config.data} (held-out slice)", events)
    hyper = resolve_hyperparameters(config, len(train_examples))
    config, hyper, memory_plan = _fitted_to_memory(config, hyper, resolved, train_examples, cluster, events)

    torch.manual_seed(config.seed)
    model = trainable_model(resolved, config, cluster.device, sharded=cluster.sharded)
    load_seconds = time.monotonic() - load_started

    steps_per_epoch = math.ceil(len(train_examples) / hyper.batch_size)
    total_steps = steps_per_epoch * hyper.n_epochs
    eval_every = config.eval_every or max(1, total_steps // 4)
    job = recorded if resume else _new_job(job_id, started, model_name or resolved.name, resolved.name, config, hyper,
                                            total_steps)
    if cluster.is_main and not resume:
        # Settings and tokenizer before the job record: a run that has a job.json can always be resumed,
        # wherever a crash stopped it.
        _write_resolved_config(run, config, hyper, dtype)
        with atomic_path(run.tokenizer_dir, directory=True) as temporary:
            tokenizer.save_pretrained(temporary)
    recorder = RunRecorder(run, job, resume=resume) if cluster.is_main else None
    if recorder:
        recorder.set_status("running")
        # A resumed run is trained again from its checkpoint (if it got to one): trackers drop what came after.
        resumed_from = latest_checkpoint(run.checkpoints_dir) if resume else None
        recorder.report_to(requested_trackers(config.report_to), config.to_dict(),
                           first_step=resumed_from.step + 1 if resumed_from else 1)
        recorder.event(f"Loaded {resolved.name} in {load_seconds:.1f} s",
                       data={"model_load_seconds": round(load_seconds, 2)})
        if memory_plan:
            recorder.event(memory_plan.lines()[0] + f"; peak {memory_plan.peak / 2**30:.2f} GiB of {memory_plan.budget / 2**30:.1f} GiB",
                           data={"memory_plan": memory_plan.as_data()})
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        emulated = dtype == torch.bfloat16 and not native_bf16(cluster.device)
        events.message(
            f"{job_id} · {resolved.name} · {len(train_examples)} examples, {hyper.n_epochs} epochs, "
            f"batch {hyper.batch_size}" + (f" ({hyper.micro_batch_size} per pass)" if hyper.accumulation_steps > 1 else "")
            + f", lr {hyper.learning_rate:.1e} · {config.method}, {config.adapter}"
            + (f" r={config.lora_r}" if config.adapter != "full" else "")
            + f" ({trainable / 1e6:.2f}M trainable) · {cluster.device} {dtype_name(dtype)}"
            + (" (emulated: this CPU has no bf16 units, so this is slow)" if emulated else "")
            + (f" × {cluster.world} processes" if cluster.world > 1 else "")
            + (" (FSDP: weights sharded)" if cluster.sharded else "")
            + (f" · kernels {chosen_kernels(config, cluster.device)}" if cluster.device.startswith("cuda") else "")
            + f" · model loaded in {load_seconds:.1f} s"
        )

    # --- fit -------------------------------------------------------------------------------------------
    fit = Fit(model, tokenizer, train_examples, valid_examples, hyper, config, total_steps, eval_every,
              cluster, recorder, run, events, should_stop)
    if recorder and cluster.world > 1:
        recorder.event(f"Training in {cluster.world} processes ({'FSDP' if cluster.sharded else 'data-parallel'})",
                       data={"processes": cluster.world})
    if recorder and cluster.sharded:
        held, weights = local_share(model)
        recorder.event(f"FSDP: each process holds its slice of the weights, here {held:,} of {weights:,}",
                       data={"weights_held": held, "weights": weights})
    try:
        if resume:
            fit.restore(latest_checkpoint(run.checkpoints_dir))
        outcome = fit.run()
    except BaseException as error:
        if recorder:
            # Interrupted (Ctrl-C) is paused, not cancelled: its checkpoints stay, and `--resume` continues it.
            status = "paused" if isinstance(error, KeyboardInterrupt) else "failed"
            try:
                recorder.set_status(status, error={"code": type(error).__name__, "message": str(error), "param": None})
                recorder.close()
            except OSError:  # the disk that stopped training may not take the record either; resume still works
                pass
        raise

    # --- save ------------------------------------------------------------------------------------------
    # Sharded weights are gathered by every process together; the first one writes them.
    whole = gathered_to_cpu(trainable_state(model), keep=cluster.is_main) if cluster.sharded else None
    if recorder:
        if outcome == "stopped":  # on request (a server's pause or cancel: the server keeps the job's status)
            recorder.set_status("paused")
            recorder.close()
            events.message(f"Stopped at step {fit.step}; resume with `tunelab train --resume {run.path}`")
            return run.path
        _save_trained(model, config, run, whole, replace=resume)
        recorder.plot_loss_curve()
        recorder.set_status("succeeded", fine_tuned_model=fine_tuned_model_name(job["model"], config.suffix, job_id),
                            trained_tokens=fit.tokens_seen)
        recorder.close()
        events.message(f"Done in {time.time() - started:.0f} s → {run.path}")
    cluster.barrier()
    return run.path


def _fitted_to_memory(config: TrainConfig, hyper, resolved, examples: list[RenderedExample], cluster: Cluster,
                      events: Events):
    """The memory plan for this run on this device (train/memory.py), with the settings left `auto` taking its
    choices: micro-batch, gradient checkpointing, QLoRA. Settings the user gave are kept even where the plan
    thinks they will not fit (a GPU step that runs out of memory halves the micro-batch); a run that fits in
    no way is refused before the model loads. Several processes plan nothing: each holds a share."""
    if cluster.world > 1:
        return config, hyper, None
    shape = model_shape(resolved.path, resolved.name)
    budget = device_budget(cluster.device)
    longest = max((len(e.input_ids) for e in examples), default=1)
    made = plan_for(config, shape, cluster.device, budget, longest, len(examples))
    if not made.fits:
        relaxed = config.model_copy(update={"micro_batch_size": AUTO})
        relaxed.model_fields_set.discard("gradient_checkpointing")
        if not plan_for(relaxed, shape, cluster.device, budget, longest, len(examples)).fits:
            raise DoesNotFit(f"{resolved.name} on {cluster.device}: {made.choices[-1]}\n" + "\n".join(made.lines()[:-1]))
        events.warning(f"{made.lines()[0]}: the plan's peak ({made.peak / 2**30:.1f} GiB) is above the "
                       f"{budget / 2**30:.1f} GiB free; leaving micro_batch_size and gradient_checkpointing to "
                       "auto lets the plan choose what fits", peak_bytes=made.peak)
        return config, hyper, made
    if config.micro_batch_size in (None, AUTO):
        hyper = dataclasses.replace(hyper, micro_batch_size=made.micro_batch_size)
    updates = {}
    if made.gradient_checkpointing and not config.gradient_checkpointing:
        updates["gradient_checkpointing"] = True
    if made.adapter != config.adapter:
        updates["adapter"] = made.adapter
    for choice in made.choices:
        events.message(f"Memory plan: {choice}")
    return (config.model_copy(update=updates) if updates else config), hyper, made


def _absolute(path: str | None) -> str | None:
    """An existing local path made absolute; anything else ('default', a hub id, None) as it is."""
    return str(Path(path).expanduser().resolve()) if path and Path(path).expanduser().exists() else path


def _new_job(job_id, started, model_name, base_model, config: TrainConfig, hyper, total_steps) -> dict:
    """The run's fine_tuning.job record; `model` is the base as the job's creator named it, `base_model` the model
    it really is."""
    return fine_tuning_job(
        id=job_id, created_at=int(started), model=model_name, base_model=base_model, status="queued",
        training_file=_absolute(config.data), validation_file=_absolute(config.validation),
        hyperparameters={"n_epochs": hyper.n_epochs, "batch_size": hyper.batch_size,
                         "learning_rate_multiplier": hyper.learning_rate_multiplier},
        seed=config.seed, suffix=config.suffix, result_files=["metrics.csv"], estimated_total_steps=total_steps)


def _hold_out(examples: list[RenderedExample], fraction: float,
              seed: int) -> tuple[list[RenderedExample], list[RenderedExample]]:
    """A seeded random slice of the training data kept back for validation (at least one example)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:_held_out_count(len(order), fraction)])
    return ([e for i, e in enumerate(examples) if i not in held],
            [e for i, e in enumerate(examples) if i in held])


def _held_out_count(examples: int, fraction: float) -> int:
    return max(1, round(examples * fraction))


def training_data_lengths(config: TrainConfig, model_path: str) -> tuple[int, int]:
    """(the longest training example in tokens after truncation, the number of training examples), as
    training will render them: what a memory plan needs from the data."""
    tokenizer = load_tokenizer(model_path, config.chat_template)
    examples = render_numbered(tokenizer, read_numbered_conversations(config.data), config.data)
    count = len(examples) - (_held_out_count(len(examples), config.validation_split)
                             if config.validation_split and not config.validation else 0)
    return min(config.max_length, max((len(e.input_ids) for e in examples), default=1)), count


def _truncated(examples: list[RenderedExample], max_length, path, events: Events) -> list[RenderedExample]:
    """Examples cut to `max_length` tokens (saying how many were), refusing a set with nothing to train."""
    truncated = sum(len(e.input_ids) > max_length for e in examples)
    if truncated:
        events.warning(f"{path}: {truncated} example(s) longer than {max_length} tokens are truncated",
                       truncated=truncated)
    examples = [RenderedExample(e.input_ids[:max_length], e.labels[:max_length]) for e in examples]
    if examples and all(e.trained_tokens == 0 for e in examples):
        raise NothingToTrain(f"{path}: no example has a trained token: every assistant turn has weight 0 or lies "
                             f"past --max-length {max_length}; raise --max-length or give some turns weight 1")
    return examples


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
        self.lengths = [len(e.input_ids) for e in train_examples]
        self.trained_counts = [e.trained_tokens for e in train_examples]
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
            self.recorder.plot_loss_curve()  # so the curve grows during runs without validation too
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
        if not cluster.sharded:
            cluster.sum_gradients(self.parameters)
        self.scaler.unscale_(self.optimizer)
        if self.config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.config.max_grad_norm)
        self.step_learning_rate = self.optimizer.param_groups[0]["lr"]  # the rate this step applies
        self.scaler.step(self.optimizer)  # skipped when fp16 gradients overflowed
        self.scaler.update()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_total, correct_total, tokens = cluster.sum([loss_total, correct_total, tokens])
        self.tokens_seen += int(tokens)
        return loss_total / max(batch_trained, 1), correct_total / max(batch_trained, 1)

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
        self.rows.append(row)
        if not self.recorder:
            return
        self.recorder.metrics(row)
        if valid_loss is not None:
            self.events.message(f"step {self.step}/{self.total_steps}: train loss {train_loss:.3f}, "
                                f"valid loss {valid_loss:.3f}, valid token accuracy {valid_accuracy:.1%}", **row)
            self.recorder.plot_loss_curve()

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


def _save_trained(model, config: TrainConfig, run: RunDir, trained: dict[str, torch.Tensor] | None,
                  replace: bool = False) -> None:
    """The result: `adapter/` (PEFT, safetensors) or, for full fine-tuning, `model/` — renamed into place.

    `trained`: the trained tensors gathered from a sharded model (None: the model holds them whole).
    `replace`: a resumed run may find the result of a save that finished just before the crash (the job was
    not yet marked succeeded); it is written again, from the same weights.
    """
    with atomic_path(run.result_dir(full=config.adapter == "full"), directory=True, replace=replace) as temporary:
        model.save_pretrained(temporary, safe_serialization=True, state_dict=trained)


def _write_resolved_config(run: RunDir, config: TrainConfig, hyper, dtype: torch.dtype) -> None:
    """config.yaml: the run's settings with `auto` resolved — `tunelab train --config` reproduces the run.

    Files are recorded as absolute paths, so the run works from any directory and after it is moved.
    """
    resolved = config.model_copy(update=dict(
        out=str(run.path.resolve()), n_epochs=hyper.n_epochs, batch_size=hyper.batch_size,
        learning_rate_multiplier=hyper.learning_rate_multiplier, micro_batch_size=hyper.micro_batch_size,
        dtype=dtype_name(dtype), data=_absolute(config.data), validation=_absolute(config.validation),
        model=_absolute(config.model), chat_template=_absolute(config.chat_template)))
    write_text_atomically(run.config_file, yaml.safe_dump(resolved.to_dict(), sort_keys=False))
