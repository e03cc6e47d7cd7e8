"""tunelab's trainer against TRL's SFTTrainer: the same LoRA, data and model, on this machine.

    .venv/bin/python bench/train_speed.py [--runs 1] [--data tunelab/examples/support/train.jsonl]
                                          [--model default] [--device auto|cpu|cuda]

Needs TRL (`pip install -e '.[bench]'`). Each arm runs in its own process (so peak memory is its own), all
with LoRA r=16, alpha 32, every linear layer, batch size 8, one epoch, lr 2e-4 with 10% warmup, loss on
assistant tokens only, on the same device (a GPU when there is one) and in the same compute format (bf16
where the device has bf16 units; else fp32 on a CPU, fp16 on a GPU):
1. `trl`: TRL's `SFTTrainer` as its users configure it, TRL's defaults (gradient checkpointing on);
2. `trl-tuned`: TRL as an expert would tune it for this small model: gradient checkpointing off and
   length-grouped batches (`train_sampling_strategy="group_by_length"`), so little padding. Packing and padding-free batches are not
   used: on a CPU the attention is PyTorch's SDPA, which would let packed examples attend to each other
   (TRL's padding-free path is correct with FlashAttention only, a CUDA kernel);
3. `tunelab`: `tunelab train` with the same settings (`--dtype auto`);
4. `tunelab-fp32`, on devices with bf16 units only: the same in fp32, so the bf16 gain is a measured ratio.

Speed is tokens (prompt and reply, no padding) per second of the training loop, model loading excluded.
Loss is compared two ways: the mean training loss over the epoch as each trainer logged it, and the
loss of each final model over the whole training set measured by one evaluator (the fair comparison:
the trainers visit batches in different orders). Each arm's line says its dtype and its peak memory: the
process's resident memory on a CPU, the GPU memory allocated and reserved at the peak on a GPU. The closing
lines are `speedup_vs_trl`, `speedup_vs_trl_tuned` and, where bf16 is native, `bf16_vs_fp32` (medians of the
runs so far, printed after every run).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
BATCH_SIZE, LEARNING_RATE, SEED = 8, 2e-4, 42


def chosen_device(name: str = "auto") -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


def compute_dtype(device: str):
    """What `--dtype auto` takes on `device`: every arm computes in it."""
    from tunelab.models.precision import resolve_dtype

    return resolve_dtype("auto", device)


def final_training_loss(model, tokenizer, conversations, device: str) -> float:
    """Mean loss per assistant token of a trained model over the training set (one evaluator for all)."""
    import torch

    from tunelab.conversation.render import render_conversation
    from tunelab.train.batches import collate
    from tunelab.train.loss import TrainedTokenLoss

    examples = [render_conversation(tokenizer, c["messages"], max_length=1024) for c in conversations]
    examples.sort(key=lambda e: len(e.input_ids))
    loss = TrainedTokenLoss(model.to(device).eval())
    dtype = compute_dtype(device)
    total, count = 0.0, 0
    with torch.no_grad(), torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        for start in range(0, len(examples), BATCH_SIZE):
            input_ids, attention, labels = collate(examples[start:start + BATCH_SIZE], tokenizer.pad_token_id, device)
            loss_sum, _correct, trained = loss(input_ids, attention, labels)
            total, count = total + loss_sum.item(), count + trained
    return total / count


def run_trl(data: Path, model_dir: str, device: str, tuned: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    import trl
    from trl import SFTConfig, SFTTrainer

    from tunelab.conversation.reader import read_conversations
    from tunelab.models.precision import dtype_name

    conversations = read_conversations(str(data))
    rows = [{"messages": [{"role": m["role"], "content": m["content"]} for m in c["messages"]]} for c in conversations]
    dtype = compute_dtype(device)
    bf16, fp16 = dtype == torch.bfloat16, dtype == torch.float16
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # The official Gemma 3 template with TRL's `{% generation %}` markers, as a TRL user would point to it.
    training_template = Path(trl.__file__).parent / "chat_templates" / "gemma3_training.jinja"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    steps = -(-len(rows) // BATCH_SIZE)
    with tempfile.TemporaryDirectory() as out:
        tuning = dict(gradient_checkpointing=False, train_sampling_strategy="group_by_length") if tuned else {}
        args = SFTConfig(output_dir=out, per_device_train_batch_size=BATCH_SIZE, num_train_epochs=1,
                         learning_rate=LEARNING_RATE, lr_scheduler_type="linear", warmup_steps=max(1, steps // 10),
                         assistant_only_loss=True, chat_template_path=str(training_template), bf16=bf16, fp16=fp16,
                         max_length=1024, logging_steps=1, save_strategy="no", report_to=[], seed=SEED,
                         use_cpu=device == "cpu", dataloader_num_workers=0,
                         **tuning)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tokenizer, peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA))
        tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        trained_model = trainer.model
        trained_model.config.use_cache = False
    return {"tokens": tokens, "seconds": seconds, "logged_losses": losses, "dtype": dtype_name(dtype),
            "gradient_checkpointing": args.gradient_checkpointing,
            "final_loss": final_training_loss(trained_model, tokenizer, conversations, device)}


def run_tunelab(data: Path, model_dir: str, device: str, dtype: str = "auto") -> dict:
    import csv

    from tunelab.conversation.reader import read_conversations
    from tunelab.core.process import keep_freed_memory
    from tunelab.core.settings import TrainConfig
    from tunelab.models.generate import load_for_generation
    from tunelab.runs.rundir import RunDir
    from tunelab.train.local import train

    conversations = read_conversations(str(data))
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(data=str(data), model=model_dir, out=str(Path(out) / "run"), n_epochs=1,
                             batch_size=BATCH_SIZE, learning_rate_multiplier=LEARNING_RATE / 2e-4,
                             lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"], seed=SEED, dtype=dtype)
        keep_freed_memory()  # as `tunelab train` does for CPU training
        run_dir = train(config)
        used = yaml.safe_load((run_dir / "config.yaml").read_text())["dtype"]
        timing = next(e["data"] for e in RunDir(run_dir).events() if "train_seconds" in e["data"])
        losses = [float(row["train_loss"]) for row in csv.DictReader((run_dir / "metrics.csv").open())]
        trained = load_for_generation(str(run_dir))
        final = final_training_loss(trained.model, trained.tokenizer, conversations, device)
    return {"tokens": timing["tokens"], "seconds": timing["train_seconds"], "logged_losses": losses,
            "dtype": used, "final_loss": final}


def run_arm(arm: str, data: Path, model: str, device: str, script: str = __file__) -> dict:
    """Run one arm of `script` (this bench or another built on it) in a fresh process; its own peak memory
    comes back with its figures."""
    command = [sys.executable, script, "--arm", arm, "--data", str(data), "--model", model, "--device", device]
    environment = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    if device == "cpu":
        environment["CUDA_VISIBLE_DEVICES"] = ""  # tunelab trains on a GPU whenever it sees one
    finished = subprocess.run(command, capture_output=True, text=True, env=environment)
    if finished.returncode != 0:
        sys.exit(f"{arm} arm failed:\n{finished.stderr[-4000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


ARMS = {"trl": lambda data, model, device: run_trl(data, model, device),
        "trl-tuned": lambda data, model, device: run_trl(data, model, device, tuned=True),
        "tunelab": lambda data, model, device: run_tunelab(data, model, device),
        "tunelab-fp32": lambda data, model, device: run_tunelab(data, model, device, dtype="fp32")}


def report_arm(arms: dict, options, device: str) -> None:
    """In an arm's own process: run it and print its figures, with this process's peak memory, as JSON."""
    from tunelab.models.resolve import resolve_model

    figures = arms[options.arm](options.data, resolve_model(options.model).path, device)
    figures.update(peak_memory(device))
    print(json.dumps(figures))


def peak_memory(device: str) -> dict:
    """This process's peak: resident host memory, and on a GPU its allocated and reserved memory."""
    import torch

    figures = {"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        figures.update(peak_mib=torch.cuda.max_memory_allocated() / 2**20,
                       reserved_mib=torch.cuda.max_memory_reserved() / 2**20,
                       host_peak_mib=figures["peak_mib"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "tunelab" / "examples" / "support" / "train.jsonl")
    parser.add_argument("--runs", type=int, default=1, help="runs of each arm; medians are reported")
    parser.add_argument("--arms", default=None, help="comma-separated subset of " + ", ".join(ARMS))
    parser.add_argument("--model", default="default", help="what tunelab's --model takes (default: the embedded one)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)
    options = parser.parse_args()
    device = chosen_device(options.device)

    if options.arm:
        return report_arm(ARMS, options, device)

    import torch

    native_bf16 = compute_dtype(device) == torch.bfloat16
    arms = options.arms.split(",") if options.arms else [a for a in ARMS if a != "tunelab-fp32" or native_bf16]
    results = {arm: [] for arm in arms}
    print(f"device: {device} · bf16 units: {native_bf16}", flush=True)
    for run in range(options.runs):
        for arm in results:  # alternated, so machine noise falls on every arm alike
            figures = run_arm(arm, options.data, options.model, device)
            figures["tokens_per_s"] = figures["tokens"] / figures["seconds"]
            results[arm].append(figures)
            print(f"run {run + 1} {arm:13s} {figures['dtype']:5s} {figures['tokens_per_s']:7.1f} tokens/s  "
                  f"({figures['tokens']} tokens in {figures['seconds']:.0f} s), final loss {figures['final_loss']:.4f}, "
                  f"peak {figures['peak_mib']:.0f} MiB"
                  + (f" (reserved {figures['reserved_mib']:.0f} MiB)" if "reserved_mib" in figures else ""), flush=True)
        summarise(results, options.data)  # after every run, so an interrupted bench still reports


def summarise(results: dict[str, list[dict]], data: Path) -> None:
    """Medians over the runs so far, per arm, and the ratios the targets are stated in."""
    runs = min(len(figures) for figures in results.values())

    def median(arm, key):
        return statistics.median(f[key] for f in results[arm][:runs])

    print(f"\ndata: {data} · medians of {runs} run(s)")
    print(f"{'':15s}{'dtype':>6s}{'tokens/s':>10s}{'epoch-mean train loss':>24s}{'final-model train loss':>25s}"
          f"{'peak MiB':>10s}")
    for arm in results:
        epoch_mean = statistics.median(statistics.fmean(f["logged_losses"]) for f in results[arm][:runs])
        print(f"{arm:15s}{results[arm][0]['dtype']:>6s}{median(arm, 'tokens_per_s'):10.1f}{epoch_mean:24.4f}"
              f"{median(arm, 'final_loss'):25.4f}{median(arm, 'peak_mib'):10.0f}")
    if "tunelab" in results and "trl" in results:
        loss_gap = median("tunelab", "final_loss") / median("trl", "final_loss") - 1
        print(f"final-model loss, tunelab vs TRL: {loss_gap:+.1%}")
    for arm, label in (("trl", "speedup_vs_trl"), ("trl-tuned", "speedup_vs_trl_tuned"), ("tunelab-fp32", "bf16_vs_fp32")):
        if "tunelab" in results and arm in results:
            print(f"{label}: {median('tunelab', 'tokens_per_s') / median(arm, 'tokens_per_s'):.2f}", flush=True)


if __name__ == "__main__":
    main()
