"""tunelab's DPO against TRL's DPOTrainer: the same LoRA, pairs, model, β and device, on this machine.

    .venv/bin/python bench/dpo_speed.py [--runs 1] [--pairs 64] [--model default] [--device auto|cpu|cuda]

Needs TRL (`pip install -e '.[bench]'`). The pairs are built from the support examples: each conversation's
last reply preferred to the reply of another conversation (two real replies of similar lengths). Each arm
runs in its own process (so peak memory is its own), all with LoRA r=16, alpha 32, every linear layer,
batch size 8, one epoch, lr 2e-5 with 10% warmup, β 0.1, the sigmoid loss, in the same compute format
(bf16 where the device has bf16 units; else fp32 on a CPU, fp16 on a GPU):
1. `trl`: TRL's `DPOTrainer` as its users configure it, with TRL's defaults (the reference is the adapter
   switched off, computed at every step);
2. `trl-tuned`: as an expert would tune it for this model: gradient checkpointing off and the reference's
   log-probabilities precomputed once (`precompute_ref_log_probs=True`), which is what tunelab does;
3. `tunelab`: `tunelab train --method dpo` with the same settings (`--dtype auto`).

Speed is tokens per second, where the tokens are each pair's two sequences (prompt with each output, no
padding: the same tokens in every arm, as tests/train/test_dpo_matches_trl.py shows), and the seconds are
the reference's pass plus the training loop (model loading excluded). Each arm reports its peak memory
(resident memory on a CPU; allocated and reserved on a GPU), its mean training loss and its final reward
accuracy. The closing lines are `speedup_vs_trl` and `speedup_vs_trl_tuned` (medians of the runs so far).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import chosen_device, compute_dtype, report_arm, run_arm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
BATCH_SIZE, LEARNING_RATE, BETA, SEED = 8, 2e-5, 0.1, 42


def build_pairs(count: int, out: Path) -> Path:
    """`count` preference lines from the support examples: each last reply preferred to the next conversation's."""
    from tunelab.conversation.reader import read_conversations

    conversations = read_conversations(ROOT / "tunelab" / "examples" / "support" / "train.jsonl")
    lines = []
    for index in range(count):
        messages = conversations[index % len(conversations)]["messages"]
        other = conversations[(index + 1) % len(conversations)]["messages"]
        lines.append({"input": {"messages": messages[:-1]}, "preferred_output": messages[-1:],
                      "non_preferred_output": other[-1:]})
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return out


def pair_tokens(data: Path, model_dir: str) -> int:
    from tunelab.conversation.reader import read_numbered_pairs
    from tunelab.models.resolve import load_tokenizer
    from tunelab.train.preference import render_pairs

    pairs = render_pairs(load_tokenizer(model_dir), read_numbered_pairs(data), data)
    return sum(len(p.preferred.input_ids) + len(p.non_preferred.input_ids) for p in pairs)


def run_trl(data: Path, model_dir: str, device: str, tuned: bool = False) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from tunelab.models.precision import dtype_name

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows = [{"prompt": r["input"]["messages"], "chosen": r["preferred_output"], "rejected": r["non_preferred_output"]}
            for r in rows]
    dtype = compute_dtype(device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    steps = -(-len(rows) // BATCH_SIZE)
    with tempfile.TemporaryDirectory() as out:
        tuning = dict(gradient_checkpointing=False, precompute_ref_log_probs=True) if tuned else {}
        args = DPOConfig(output_dir=out, per_device_train_batch_size=BATCH_SIZE, num_train_epochs=1, beta=BETA,
                         learning_rate=LEARNING_RATE, lr_scheduler_type="linear", warmup_steps=max(1, steps // 10),
                         bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, max_length=None,
                         logging_steps=1, save_strategy="no", report_to=[], seed=SEED, use_cpu=device == "cpu",
                         dataloader_num_workers=0, **tuning)
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                             peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA))
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    log = [entry for entry in trainer.state.log_history if "loss" in entry]
    accuracy = next((e[k] for e in reversed(log) for k in e if k.endswith("rewards/accuracies")), None)
    return {"tokens": pair_tokens(data, model_dir), "seconds": seconds, "logged_losses": [e["loss"] for e in log],
            "reward_accuracy": accuracy, "dtype": dtype_name(dtype),
            "gradient_checkpointing": args.gradient_checkpointing}


def run_tunelab(data: Path, model_dir: str, device: str) -> dict:
    import csv

    import yaml

    from tunelab.core.process import keep_freed_memory
    from tunelab.core.settings import TrainConfig
    from tunelab.runs.rundir import RunDir
    from tunelab.train.local import train

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(data=str(data), model=model_dir, out=str(Path(out) / "run"), method="dpo", n_epochs=1,
                             batch_size=BATCH_SIZE, learning_rate_multiplier=LEARNING_RATE / 2e-5, beta=BETA,
                             lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"], seed=SEED)
        keep_freed_memory()  # as `tunelab train` does for CPU training
        run_dir = train(config)
        events = [e["data"] for e in RunDir(run_dir).events()]
        timing = next(e for e in events if "train_seconds" in e)
        reference = next(e for e in events if "reference_seconds" in e)
        rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
        used = yaml.safe_load((run_dir / "config.yaml").read_text())["dtype"]
    return {"tokens": pair_tokens(data, model_dir), "seconds": timing["train_seconds"] + reference["reference_seconds"],
            "logged_losses": [float(r["train_loss"]) for r in rows],
            "reward_accuracy": float(rows[-1]["train_reward_accuracy"]), "dtype": used}


ARMS = {"trl": lambda data, model, device: run_trl(data, model, device),
        "trl-tuned": lambda data, model, device: run_trl(data, model, device, tuned=True),
        "tunelab": lambda data, model, device: run_tunelab(data, model, device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=64, help="preference pairs to train on")
    parser.add_argument("--runs", type=int, default=1, help="runs of each arm; medians are reported")
    parser.add_argument("--arms", default=None, help="comma-separated subset of " + ", ".join(ARMS))
    parser.add_argument("--model", default="default", help="what tunelab's --model takes (default: the embedded one)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--arm", choices=list(ARMS), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    device = chosen_device(options.device)
    if options.arm:
        return report_arm(ARMS, options, device)

    arms = options.arms.split(",") if options.arms else list(ARMS)
    results = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as folder:
        data = build_pairs(options.pairs, Path(folder) / "pairs.jsonl")
        print(f"device: {device} · {options.pairs} pairs", flush=True)
        for run in range(options.runs):
            for arm in results:  # alternated, so machine noise falls on every arm alike
                figures = run_arm(arm, data, options.model, device, script=__file__)
                figures["tokens_per_s"] = figures["tokens"] / figures["seconds"]
                results[arm].append(figures)
                print(f"run {run + 1} {arm:10s} {figures['dtype']:5s} {figures['tokens_per_s']:7.1f} tokens/s "
                      f"({figures['tokens']} tokens in {figures['seconds']:.0f} s), mean loss "
                      f"{statistics.fmean(figures['logged_losses']):.4f}, final reward accuracy "
                      f"{figures['reward_accuracy']}, peak {figures['peak_mib']:.0f} MiB", flush=True)
            summarise(results)


def summarise(results: dict[str, list[dict]]) -> None:
    runs = min(len(figures) for figures in results.values())

    def median(arm, key):
        return statistics.median(f[key] for f in results[arm][:runs])

    print(f"\nmedians of {runs} run(s)")
    for arm in results:
        print(f"{arm:12s}{median(arm, 'tokens_per_s'):10.1f} tokens/s{median(arm, 'peak_mib'):10.0f} MiB peak")
    for arm, label in (("trl", "speedup_vs_trl"), ("trl-tuned", "speedup_vs_trl_tuned")):
        if "tunelab" in results and arm in results:
            print(f"{label}: {median('tunelab', 'tokens_per_s') / median(arm, 'tokens_per_s'):.2f}", flush=True)
    if "tunelab" in results and "trl" in results:
        print(f"peak memory, tunelab / TRL: {median('tunelab', 'peak_mib') / median('trl', 'peak_mib'):.2f}", flush=True)


if __name__ == "__main__":
    main()
