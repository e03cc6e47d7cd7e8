"""Local fine-tuning: the whole recipe, readable top to bottom (setup → fit → save).

    tunelab train --data examples/support/train.jsonl --validation examples/support/test.jsonl

A plain PyTorch loop rather than transformers.Trainer, because the speed on a CPU comes from three things
a generic trainer does not do:
1. Logits only where there is loss. The default model's LM head (262k vocabulary) is most of the compute;
   we run the decoder body, pick the hidden states whose next token is an assistant token, and multiply
   only those by the head.
2. bf16 base weights with fp32 LoRA weights under bf16 autocast, where the CPU has bf16 matrix units.
3. Length-sorted batches (shuffled as batches), so padding is a few tokens rather than most of the batch.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

from tunelab.config import TrainConfig, resolve_hyperparameters
from tunelab.console import console
from tunelab.data.chat import read_conversations
from tunelab.models.resolve import load_model, load_tokenizer, resolve_model
from tunelab.train.record import RunRecorder, fine_tuned_model_name, new_job_id
from tunelab.train.render import IGNORE_INDEX, RenderedExample, render_conversation


# Examples in the validation sample measured at intervals during training (the whole file at the end).
VALID_SAMPLE_SIZE = 16


def train(config: TrainConfig, show_progress: bool = True) -> Path:
    """Fine-tune with LoRA as `config` says; returns the run directory (self-contained)."""
    started = time.time()
    job_id = new_job_id()
    run_dir = Path(config.out or Path("runs") / job_id)

    # --- setup: data, model, adapter -------------------------------------------------------------------
    train_conversations = read_conversations(config.data)
    valid_conversations = read_conversations(config.validation) if config.validation else []
    hyper = resolve_hyperparameters(config, len(train_conversations))
    load_started = time.monotonic()
    resolved = resolve_model(config.model)
    tokenizer = load_tokenizer(resolved.path)
    train_examples = _render_all(tokenizer, train_conversations, config.max_length, config.data)
    valid_examples = _render_all(tokenizer, valid_conversations, config.max_length, config.validation)

    torch.manual_seed(config.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    compute_dtype = _best_compute_dtype(device)
    model = _lora_model(load_model(resolved.path, dtype=compute_dtype), config).to(device)
    load_seconds = time.monotonic() - load_started

    steps_per_epoch = math.ceil(len(train_examples) / hyper.batch_size)
    total_steps = steps_per_epoch * hyper.n_epochs
    eval_every = config.eval_every or max(1, total_steps // 4)
    job = {
        "object": "fine_tuning.job",
        "id": job_id,
        "created_at": int(started),
        "model": resolved.name,
        "status": "running",
        "training_file": str(config.data),
        "validation_file": str(config.validation) if config.validation else None,
        "hyperparameters": {
            "n_epochs": hyper.n_epochs,
            "batch_size": hyper.batch_size,
            "learning_rate_multiplier": hyper.learning_rate_multiplier,
        },
        "method": {"type": "supervised"},
        "seed": config.seed,
        "fine_tuned_model": None,
        "trained_tokens": None,
        "result_files": ["metrics.csv"],
        "error": None,
        "finished_at": None,
        "estimated_total_steps": total_steps,
    }
    recorder = RunRecorder(run_dir, job)
    recorder.set_status("running")
    recorder.event(f"Loaded {resolved.name} in {load_seconds:.1f} s", data={"model_load_seconds": round(load_seconds, 2)})
    _write_resolved_config(run_dir, config, hyper)
    tokenizer.save_pretrained(run_dir / "tokenizer")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    console.print(
        f"[bold]{job_id}[/] · {resolved.name} · {len(train_examples)} examples, {hyper.n_epochs} epochs, "
        f"batch {hyper.batch_size}, lr {hyper.learning_rate:.1e} · LoRA r={config.lora_r} "
        f"({trainable / 1e6:.2f}M trainable) · {device} {str(compute_dtype).removeprefix('torch.')} · "
        f"model loaded in {load_seconds:.1f} s"
    )

    # --- fit -------------------------------------------------------------------------------------------
    try:
        trained_tokens = _fit(model, tokenizer, train_examples, valid_examples, hyper, total_steps,
                              eval_every, config.seed, device, recorder, show_progress)
    except BaseException as error:
        status = "cancelled" if isinstance(error, KeyboardInterrupt) else "failed"
        recorder.set_status(status, error={"code": type(error).__name__, "message": str(error), "param": None})
        recorder.close()
        raise

    # --- save ------------------------------------------------------------------------------------------
    _save_adapter(model, run_dir / "adapter")
    recorder.plot_loss_curve()
    recorder.set_status(
        "succeeded",
        fine_tuned_model=fine_tuned_model_name(resolved.name, config.suffix, job_id),
        trained_tokens=trained_tokens,
    )
    recorder.close()
    console.print(f"Done in {time.time() - started:.0f} s → {run_dir}")
    return run_dir


def _render_all(tokenizer, conversations, max_length, path) -> list[RenderedExample]:
    examples = [render_conversation(tokenizer, c["messages"]) for c in conversations]
    truncated = sum(len(e.input_ids) > max_length for e in examples)
    if truncated:
        console.print(f"[yellow]{path}: {truncated} example(s) longer than {max_length} tokens are truncated[/]")
    examples = [RenderedExample(e.input_ids[:max_length], e.labels[:max_length]) for e in examples]
    if examples and all(e.trained_tokens == 0 for e in examples):
        raise ValueError(f"{path}: no example has a trained token (all assistant turns weight 0 or cut off)")
    return examples


def _best_compute_dtype(device: str) -> torch.dtype:
    if device == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else torch.float32


def _lora_model(model, config: TrainConfig):
    from peft import LoraConfig, get_peft_model

    targets = config.target_modules if config.target_modules == "all-linear" else config.target_modules.split(",")
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")
    # autocast_adapter_dtype keeps the LoRA weights in fp32 over bf16 base weights: the updates are tiny
    # and would round away in bf16.
    return get_peft_model(model, lora, autocast_adapter_dtype=True)


def assistant_token_loss(model, input_ids, attention_mask, labels):
    """Summed cross-entropy and correct-prediction count over trained tokens, and how many there were.

    Computes logits only at positions whose next token is trained (see the module docstring).
    """
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = causal_lm.get_decoder()
    hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    targets = labels[:, 1:]
    trained = targets != IGNORE_INDEX
    logits = causal_lm.get_output_embeddings()(hidden[:, :-1][trained])
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits.float()
    wanted = targets[trained]
    loss_sum = torch.nn.functional.cross_entropy(logits, wanted, reduction="sum")
    correct = (logits.argmax(-1) == wanted).sum()
    return loss_sum, correct, wanted.numel()


def _collate(examples: list[RenderedExample], pad_id: int, device: str):
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return input_ids.to(device), attention.to(device), labels.to(device)


def length_sorted_batches(examples: list[RenderedExample], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped into batches of similar length; the order of batches is shuffled."""
    order = sorted(range(len(examples)), key=lambda i: (len(examples[i].input_ids), rng.random()))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def _fit(model, tokenizer, train_examples, valid_examples, hyper, total_steps, eval_every, seed, device,
         recorder: RunRecorder, show_progress: bool) -> int:
    """The training loop. Returns the number of tokens processed (OpenAI's trained_tokens)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=hyper.learning_rate, weight_decay=0.0)
    warmup = max(1, total_steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total_steps - s) / max(1, total_steps - warmup)))
    )
    rng = random.Random(seed)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=_best_compute_dtype(device) == torch.bfloat16)
    pad_id = tokenizer.pad_token_id
    tokens_seen, step, started = 0, 0, time.monotonic()
    valid_sample = random.Random(seed).sample(valid_examples, min(len(valid_examples), VALID_SAMPLE_SIZE))

    progress = Progress(
        TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} tok/s"), TimeRemainingColumn(), console=console, disable=not show_progress,
    )
    with progress:
        task = progress.add_task("train", total=total_steps, loss="—", speed="—")
        model.train()
        for _epoch in range(hyper.n_epochs):
            for batch in length_sorted_batches(train_examples, hyper.batch_size, rng):
                input_ids, attention, labels = _collate([train_examples[i] for i in batch], pad_id, device)
                with autocast:
                    loss_sum, correct, count = assistant_token_loss(model, input_ids, attention, labels)
                loss = loss_sum / max(count, 1)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(parameters, 1.0)
                optimizer.step()
                schedule.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens_seen += int(attention.sum())
                speed = tokens_seen / (time.monotonic() - started)
                train_loss, train_accuracy = loss.item(), correct.item() / max(count, 1)
                valid_loss = valid_accuracy = None
                if valid_examples and (step % eval_every == 0 or step == total_steps):
                    # As OpenAI does: a fixed sample at intervals (cheap), the whole file at the end.
                    subset = valid_examples if step == total_steps else valid_sample
                    valid_loss, valid_accuracy = evaluate_loss(model, subset, hyper.batch_size, pad_id,
                                                               device, autocast)
                    console.log(f"step {step}/{total_steps}: train loss {train_loss:.3f}, "
                                f"valid loss {valid_loss:.3f}, valid token accuracy {valid_accuracy:.1%}")
                    recorder.plot_loss_curve()
                recorder.metrics(step, train_loss, train_accuracy, valid_loss, valid_accuracy)
                progress.update(task, advance=1, loss=f"{train_loss:.3f}", speed=f"{speed:.0f}")
    recorder.event(f"Trained {tokens_seen} tokens in {time.monotonic() - started:.0f} s "
                   f"({tokens_seen / (time.monotonic() - started):.0f} tokens/s)")
    return tokens_seen


@torch.no_grad()
def evaluate_loss(model, examples, batch_size, pad_id, device, autocast) -> tuple[float, float]:
    """Mean loss and token accuracy over every trained token of `examples`."""
    model.eval()
    loss_total, correct_total, count_total = 0.0, 0, 0
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    for start in range(0, len(order), batch_size):
        batch = [examples[i] for i in order[start:start + batch_size]]
        input_ids, attention, labels = _collate(batch, pad_id, device)
        with autocast:
            loss_sum, correct, count = assistant_token_loss(model, input_ids, attention, labels)
        loss_total, correct_total, count_total = loss_total + loss_sum.item(), correct_total + correct.item(), count_total + count
    model.train()
    return loss_total / max(count_total, 1), correct_total / max(count_total, 1)


def _save_adapter(model, destination: Path) -> None:
    """Save the PEFT adapter (safetensors) to a temporary directory, then rename it into place."""
    temporary = destination.with_name(f".{destination.name}.tmp")
    model.save_pretrained(temporary, safe_serialization=True)
    if destination.exists():
        raise FileExistsError(f"{destination} already exists; refusing to overwrite a finished adapter")
    temporary.rename(destination)


def _write_resolved_config(run_dir: Path, config: TrainConfig, hyper) -> None:
    """config.yaml: the run's settings with `auto` resolved — `tunelab train --config` reproduces the run."""
    from tunelab.files import write_text_atomically

    resolved = replace(config, out=str(run_dir), n_epochs=hyper.n_epochs, batch_size=hyper.batch_size,
                       learning_rate_multiplier=hyper.learning_rate_multiplier)
    write_text_atomically(run_dir / "config.yaml", yaml.safe_dump(resolved.to_dict(), sort_keys=False))
