"""Local fine-tuning: the whole recipe, readable top to bottom (setup → fit → save).

    tunelab train --data train.jsonl --validation valid.jsonl
    tunelab train --resume runs/ftjob-…            # continue a crashed or cancelled run exactly
    tunelab train --method dpo --data pairs.jsonl --from runs/ftjob-…   # preference pairs, after supervised
    tunelab train --method grpo --data tasks.jsonl --grader grader.json  # rewards from OpenAI's graders
    accelerate launch --multi_gpu --num_processes 2 -m tunelab.cli train --data …   # data-parallel
    accelerate launch --use_fsdp --num_processes 2 -m tunelab.cli train --data …     # sharded (FSDP2)

The loop is fit.py's (a preference run's step: preference_fit.py; a reinforcement run's: reward_fit.py), a plain PyTorch loop rather than
transformers.Trainer, because the speed comes from things a generic trainer does not do:
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
import json
import math
import random
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

from tunelab.conversation.reader import read_numbered_conversations, read_numbered_pairs, read_numbered_tasks
from tunelab.conversation.render import RenderedExample, check_template_agreement, render_numbered
from tunelab.core.events import NO_EVENTS, Events
from tunelab.core.files import atomic_path, check_output_directory, remove_stale_temporaries, write_text_atomically
from tunelab.core.settings import (AUTO, DEFAULT_GROUP_SIZE, OPENAI_METHOD_TYPES, TrainConfig, resolve_hyperparameters,
                                   resolved_beta, resolved_group_size)
from tunelab.graders.grade import Grading
from tunelab.graders.model import GradingModels
from tunelab.graders.sandbox import Limits, PythonSandbox
from tunelab.graders.spec import read_grader_file
from tunelab.models.device_memory import device_budget
from tunelab.models.precision import dtype_name, native_bf16
from tunelab.models.resolve import load_tokenizer, resolve_model
from tunelab.runs import lifecycle
from tunelab.runs.tracking import requested_trackers
from tunelab.runs.record import RunRecorder, fine_tuned_model_name, fine_tuning_job, metric_columns, new_job_id
from tunelab.runs.rundir import RunDir
from tunelab.train.checkpoints import latest_checkpoint
from tunelab.train.cluster import Cluster, join_cluster
from tunelab.train.fit import Fit
from tunelab.train.memory import DoesNotFit, model_shape, plan_for
from tunelab.train.methods import (MethodUnavailable, check_method_available, chosen_kernels, compute_dtype,
                                   trainable_model, trainable_state, training_device)
from tunelab.train.preference import REFERENCE_FREE, RenderedPair, reference_log_probs, render_pairs
from tunelab.train.preference_fit import PreferenceFit
from tunelab.train.reinforcement import RenderedTask, render_tasks
from tunelab.train.reward_fit import Reference, RewardFit
from tunelab.train.sharding import gathered_to_cpu, local_share
from tunelab.train.start import load_start_weights, start_from


class RunExists(FileExistsError):
    """The run directory already holds a run; resume it or choose another."""


class NothingToTrain(ValueError):
    """No example has a token to train on (every assistant turn has weight 0, or is cut off)."""


def train(config: TrainConfig, events: Events = NO_EVENTS, resume: bool = False,
          should_stop: Callable[[int], bool] | None = None, job_id: str | None = None,
          model_name: str | None = None, grader_models: dict[str, str] | None = None,
          hidden_from_graders: tuple[Path, ...] = ()) -> Path:
    """Fine-tune as `config` says; returns the run directory (self-contained).

    `events` receives the progress and messages (of the first process only). `resume=True` continues the
    run in `config.out` from its last complete checkpoint. `should_stop(step)` is asked after every step;
    returning True cancels the run cleanly (its checkpoints stay resumable). `job_id`: the id of the job this
    run is (a server's); a new `ftjob-…` by default. `model_name`: what the job's creator called the base model
    (a server's alias, e.g. gpt-4o-mini-2024-07-18), which the fine-tune's name starts with; the base's own
    name by default. `grader_models`: the only models a model grader may ask, name → local spec (a server's
    job); `hidden_from_graders`: paths a python grader must not see even inside the Python installation.
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
    config, start = start_from(config)
    preference, reinforcement = config.method == "dpo", config.method == "grpo"
    if preference and cluster.sharded:
        raise MethodUnavailable("fsdp: a dpo run trains data-parallel (several processes without --fsdp) for now")
    if reinforcement and cluster.world > 1:
        raise MethodUnavailable("a grpo run trains in one process for now (its sampling is not yet shared out)")
    if reinforcement and config.adapter == "full" and config.kl_beta:
        raise MethodUnavailable("grpo with adapter full: the KL penalty's reference would need a second copy of the "
                                "model; set kl_beta 0, or train an adapter")
    grader = read_grader_file(run.grader_file if resume and run.grader_file.is_file() else config.grader) \
        if reinforcement else None
    read = read_numbered_pairs if preference else read_numbered_tasks if reinforcement else read_numbered_conversations
    numbered_train = read(config.data)
    numbered_valid = read(config.validation) if config.validation else []
    load_started = time.monotonic()
    resolved = resolve_model(config.model, events)
    tokenizer = load_tokenizer(str(start.tokenizer_dir) if start else resolved.path,
                               None if start else config.chat_template)
    # Rendered once, whole: the template check needs the untruncated ids, training the truncated ones.
    render = _rendered_pairs if preference else _rendered_tasks if reinforcement else _rendered_examples
    train_examples, valid_examples = render(tokenizer, numbered_train, numbered_valid, config)
    if config.validation_split and not valid_examples:
        train_examples, valid_examples = _hold_out(train_examples, config.validation_split, config.seed)
    train_examples = _truncated(train_examples, config.max_length, config.data, events)
    valid_examples = _truncated(valid_examples, config.max_length,
                                config.validation or f"{config.data} (held-out slice)", events)
    hyper = resolve_hyperparameters(config, len(train_examples))
    config, hyper, memory_plan = _fitted_to_memory(config, hyper, resolved, train_examples, cluster, events)

    torch.manual_seed(config.seed)
    model = trainable_model(resolved, config, cluster.device, sharded=cluster.sharded)
    if start:
        load_start_weights(model, start)
    start_weights = {name: t.detach().clone() for name, t in trainable_state(model).items()} \
        if reinforcement and start and config.kl_beta else None  # the reference a continued adapter is held to
    load_seconds = time.monotonic() - load_started

    steps_per_epoch = math.ceil(len(train_examples) / hyper.batch_size)
    total_steps = steps_per_epoch * hyper.n_epochs
    eval_every = config.eval_every or max(1, total_steps // 4)
    job = recorded if resume else _new_job(job_id, started, model_name or resolved.name, resolved.name, config, hyper,
                                            total_steps, eval_every, grader)
    if cluster.is_main and not resume:
        # Settings and tokenizer before the job record: a run that has a job.json can always be resumed,
        # wherever a crash stopped it.
        if reinforcement:  # the run keeps its grader: resumed, it grades as it began
            write_text_atomically(run.grader_file, json.dumps(grader.model_dump(exclude_none=True), indent=2) + "\n")
        _write_resolved_config(run, config, hyper, dtype)
        with atomic_path(run.tokenizer_dir, directory=True) as temporary:
            tokenizer.save_pretrained(temporary)
    recorder = RunRecorder(run, job, resume=resume, columns=metric_columns(config.method)) if cluster.is_main else None
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
            f"{job_id} · {resolved.name} · {len(train_examples)} {'pairs' if preference else 'tasks' if reinforcement else 'examples'}, "
            f"{hyper.n_epochs} epochs, "
            f"batch {hyper.batch_size}" + (f" ({hyper.micro_batch_size} per pass)" if hyper.accumulation_steps > 1 else "")
            + f", lr {hyper.learning_rate:.1e} · {config.method}"
            + (f" (β {resolved_beta(config)}, {config.dpo_loss}"
               + (f", γ {config.simpo_gamma:g}" if config.dpo_loss == "simpo" else "")
               + (f", rpo_alpha {config.rpo_alpha:g}" if config.rpo_alpha else "") + ")" if preference else "")
            + (f" ({resolved_group_size(config)} replies per prompt, grader {grader.type} '{grader.name}', "
               f"KL β {config.kl_beta:g})" if reinforcement else "") + f", {config.adapter}"
            + (f" r={config.lora_r}" if config.adapter != "full" else "")
            + f" ({trainable / 1e6:.2f}M trainable) · {cluster.device} {dtype_name(dtype)}"
            + (" (emulated: this CPU has no bf16 units, so this is slow)" if emulated else "")
            + (f" × {cluster.world} processes" if cluster.world > 1 else "")
            + (" (FSDP: weights sharded)" if cluster.sharded else "")
            + (f" · kernels {chosen_kernels(config, cluster.device)}" if cluster.device.startswith("cuda") else "")
            + f" · model loaded in {load_seconds:.1f} s"
        )

    # --- fit -------------------------------------------------------------------------------------------
    fit_arguments = (model, tokenizer, train_examples, valid_examples, hyper, config, total_steps, eval_every,
                     cluster, recorder, run, events, should_stop)
    if preference:
        fit = PreferenceFit(*fit_arguments, beta=resolved_beta(config), loss_type=config.dpo_loss,
                            rpo_alpha=config.rpo_alpha, simpo_gamma=config.simpo_gamma)
        if config.dpo_loss in REFERENCE_FREE:
            for pair in train_examples + valid_examples:
                pair.reference = (0.0, 0.0)  # not read by the loss
        else:  # before any checkpoint is restored: the reference is the model as the run starts
            _attach_reference(run, model, train_examples + valid_examples, tokenizer.pad_token_id,
                              hyper.micro_batch_size, fit.autocast, cluster, recorder)
    elif reinforcement:
        grading = Grading(grader, models=GradingModels(endpoint_url=config.grader_url, named=grader_models),
                          sandbox=PythonSandbox(Limits(seconds_per_sample=config.grader_seconds),
                                                hidden=tuple(hidden_from_graders)))
        reference = Reference(model, start_weights) if config.kl_beta else None
        fit = RewardFit(*fit_arguments, tokenizer=tokenizer, grading=grading, group_size=resolved_group_size(config),
                        kl_beta=config.kl_beta, epsilon=config.clip_epsilon, temperature=config.sample_temperature,
                        max_completion_tokens=config.max_completion_tokens,
                        eval_samples=16 if config.eval_samples == AUTO else int(config.eval_samples),
                        reference=reference)
    else:
        fit = Fit(*fit_arguments)
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


def _fitted_to_memory(config: TrainConfig, hyper, resolved, examples: list, cluster: Cluster, events: Events):
    """The memory plan for this run on this device (train/memory.py), with the settings left `auto` taking its
    choices: micro-batch, gradient checkpointing, QLoRA. Settings the user gave are kept even where the plan
    thinks they will not fit (a GPU step that runs out of memory halves the micro-batch); a run that fits in
    no way is refused before the model loads. Several processes plan nothing: each holds a share."""
    if cluster.world > 1:
        return config, hyper, None
    shape = model_shape(resolved.path, resolved.name)
    budget = device_budget(cluster.device)
    longest = max(map(_length, examples), default=1)
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


def _new_job(job_id, started, model_name, base_model, config: TrainConfig, hyper, total_steps, eval_every: int,
             grader=None) -> dict:
    """The run's fine_tuning.job record; `model` is the base as the job's creator named it, `base_model` the model
    it really is."""
    hyperparameters = {"n_epochs": hyper.n_epochs, "batch_size": hyper.batch_size,
                       "learning_rate_multiplier": hyper.learning_rate_multiplier}
    method_hyperparameters = {**hyperparameters, "beta": resolved_beta(config)} if config.method == "dpo" else \
        {**hyperparameters, "compute_multiplier": resolved_group_size(config) / DEFAULT_GROUP_SIZE,
         "eval_interval": eval_every, "eval_samples": 16 if config.eval_samples == AUTO else int(config.eval_samples),
         "reasoning_effort": "default"} if config.method == "grpo" else None
    return fine_tuning_job(
        id=job_id, created_at=int(started), model=model_name, base_model=base_model, status="queued",
        training_file=_absolute(config.data), validation_file=_absolute(config.validation),
        hyperparameters=hyperparameters, method=OPENAI_METHOD_TYPES[config.method],
        method_hyperparameters=method_hyperparameters, seed=config.seed, suffix=config.suffix,
        result_files=["metrics.csv"], estimated_total_steps=total_steps,
        grader=grader.model_dump(exclude_none=True) if grader is not None else None)


def _hold_out(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """A seeded random slice of the training data (examples or pairs) kept back for validation (at least one)."""
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
    if config.method == "dpo":
        examples = render_pairs(tokenizer, read_numbered_pairs(config.data), config.data)
    elif config.method == "grpo":
        examples = render_tasks(tokenizer, read_numbered_tasks(config.data), config.max_completion_tokens)
    else:
        examples = render_numbered(tokenizer, read_numbered_conversations(config.data), config.data)
    count = len(examples) - (_held_out_count(len(examples), config.validation_split)
                             if config.validation_split and not config.validation else 0)
    return min(config.max_length, max(map(_length, examples), default=1)), count


def _length(example: RenderedExample | RenderedPair | RenderedTask) -> int:
    if isinstance(example, RenderedTask):  # its prompt and the longest reply it may be given
        return len(example.prompt_ids) + example.max_reply
    return example.longest if isinstance(example, RenderedPair) else len(example.input_ids)


def _rendered_examples(tokenizer, numbered_train, numbered_valid, config: TrainConfig):
    train_examples = render_numbered(tokenizer, numbered_train, config.data)
    check_template_agreement(tokenizer, numbered_train, config.data, rendered=train_examples)
    return train_examples, render_numbered(tokenizer, numbered_valid, config.validation)


def _rendered_pairs(tokenizer, numbered_train, numbered_valid, config: TrainConfig):
    """Pairs rendered as their two conversations; the template is checked on the preferred ones (a prompt that
    inference would render otherwise is the same prompt in both)."""
    train_pairs = render_pairs(tokenizer, numbered_train, config.data)
    check_template_agreement(tokenizer, [(line, pair.conversation(True)) for line, pair in numbered_train],
                             config.data, rendered=[pair.preferred for pair in train_pairs])
    return train_pairs, render_pairs(tokenizer, numbered_valid, config.validation)


def _rendered_tasks(tokenizer, numbered_train, numbered_valid, config: TrainConfig):
    """Each task's prompt, as the model will be asked it; a prompt that leaves no room for a reply of
    max_completion_tokens within max_length is refused, naming its line."""
    def rendered(numbered, path) -> list[RenderedTask]:
        tasks = render_tasks(tokenizer, numbered, config.max_completion_tokens)
        room = config.max_length - config.max_completion_tokens
        too_long = [task.line for task in tasks if len(task.prompt_ids) > room]
        if too_long:
            raise NothingToTrain(f"{path}: line {too_long[0]}" + (f" (and {len(too_long) - 1} more)" if len(too_long) > 1 else "")
                                 + f": the prompt leaves no room within --max-length {config.max_length} for a reply of "
                                 f"--max-completion-tokens {config.max_completion_tokens}; raise --max-length")
        return tasks

    return rendered(numbered_train, config.data), rendered(numbered_valid, config.validation)


def _truncated(examples: list, max_length, path, events: Events) -> list:
    """Examples (or pairs: each conversation) cut to `max_length` tokens, saying how many were, refusing a set
    with nothing to train."""
    def cut(example: RenderedExample) -> RenderedExample:
        return RenderedExample(example.input_ids[:max_length], example.labels[:max_length])

    truncated = sum(_length(e) > max_length for e in examples)
    if truncated:
        events.warning(f"{path}: {truncated} example(s) longer than {max_length} tokens are truncated",
                       truncated=truncated)
    if examples and isinstance(examples[0], RenderedTask):
        return examples  # prompts were checked as rendered (_rendered_tasks); replies are made to fit
    if examples and isinstance(examples[0], RenderedPair):
        pairs = [RenderedPair(cut(p.preferred), cut(p.non_preferred)) for p in examples]
        lost = sum(p.preferred.trained_tokens == 0 or p.non_preferred.trained_tokens == 0 for p in pairs)
        if lost == len(pairs):
            raise NothingToTrain(f"{path}: in every pair an output lies wholly past --max-length {max_length}; "
                                 "raise --max-length")
        if lost:
            events.warning(f"{path}: {lost} pair(s) lose a whole output past --max-length {max_length}, so they "
                           "compare less than their replies; raise --max-length to keep them whole", lost=lost)
        return pairs
    examples = [cut(e) for e in examples]
    if examples and all(e.trained_tokens == 0 for e in examples):
        raise NothingToTrain(f"{path}: no example has a trained token: every assistant turn has weight 0 or lies "
                             f"past --max-length {max_length}; raise --max-length or give some turns weight 1")
    return examples


def _attach_reference(run: RunDir, model, pairs: list[RenderedPair], pad_id: int, micro_batch_size: int, autocast,
                      cluster: Cluster, recorder: RunRecorder | None) -> None:
    """Each pair's reference log-probabilities: computed from the model as the run starts (the base for a fresh
    adapter, the adapter it continues `--from`), saved with the run, and read back when it resumes."""
    from safetensors.torch import load_file, save_file

    if run.reference_file.is_file():
        reference = load_file(run.reference_file)["log_probs"]
        if tuple(reference.shape) != (len(pairs), 2):
            raise ValueError(f"{run.reference_file}: holds {reference.shape[0]} pairs' reference, the data "
                             f"{len(pairs)}; the run's data files changed since it started")
    else:
        if latest_checkpoint(run.checkpoints_dir) is not None:
            raise ValueError(f"{run.reference_file} is missing, and the run has trained past its start, so the "
                             "reference cannot be computed again; start the run afresh")
        started = time.monotonic()
        # in batches of a training pass's sequences (a pass holds a micro-batch of pairs), which the plan fits
        reference = reference_log_probs(model, pairs, pad_id, cluster.device, batch_size=2 * micro_batch_size,
                                        autocast=autocast)
        if cluster.is_main:
            with atomic_path(run.reference_file) as temporary:
                save_file({"log_probs": reference.contiguous()}, str(temporary))
        if recorder:
            seconds = time.monotonic() - started
            recorder.event(f"Reference log-probabilities of {len(pairs)} pairs computed in {seconds:.1f} s",
                           data={"reference_pairs": len(pairs), "reference_seconds": round(seconds, 3)})
    for pair, (chosen, rejected) in zip(pairs, reference.tolist(), strict=True):
        pair.reference = (chosen, rejected)


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
        beta=resolved_beta(config), from_run=_absolute(config.from_run),
        dtype=dtype_name(dtype), data=_absolute(config.data), validation=_absolute(config.validation),
        model=_absolute(config.model), chat_template=_absolute(config.chat_template)))
    write_text_atomically(run.config_file, yaml.safe_dump(resolved.to_dict(), sort_keys=False))
