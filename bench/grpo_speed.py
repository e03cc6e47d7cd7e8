"""tunelab's GRPO against TRL's GRPOTrainer: the same task, grader, LoRA, model and device, on this machine.

    .venv/bin/python bench/grpo_speed.py [--runs 1] [--tasks 24] [--model default] [--device auto|cpu|cuda]

Needs TRL (`pip install -e '.[bench]'`). The task is bench/rft_orders.py's (free-text orders → JSON), graded by
its multi grader of string checks; TRL gets the same grader as a reward function (graders/, called on its
completions). Each arm runs in its own process, from the base model, with LoRA r=16, alpha 32 on every
linear layer, 4 prompts per step with 8 replies each (TRL: per_device_train_batch_size 32, num_generations
8), replies of at most 48 tokens sampled at temperature 1, KL β 0.04, TRL's default loss (`dapo`), one epoch,
lr 2e-5 with 10% warmup, in the same compute format (bf16 where the device has bf16 units; else fp32 on a
CPU, fp16 on a GPU). TRL samples with transformers' `generate` (no vLLM on a CPU); tunelab with its batched
decoding, finished rows leaving the batch.

Figures per arm: sampled tokens per second (reply tokens drawn, over the whole training loop: sampling,
grading and the update) and optimizer steps per minute, the mean reward, and peak memory. The closing
lines are the ratios tunelab / TRL (medians of the runs so far).
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
from rft_orders import GRADER, REINFORCEMENT_PHRASINGS, orders  # noqa: E402
from train_speed import chosen_device, compute_dtype, report_arm, run_arm  # noqa: E402

LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
PROMPTS_PER_STEP, GROUP, MAX_TOKENS, LEARNING_RATE, KL_BETA, SEED = 4, 8, 48, 2e-5, 0.04, 42


def build_tasks(count: int, out: Path) -> Path:
    out.write_text("".join(json.dumps(task) + "\n" for task in orders(REINFORCEMENT_PHRASINGS, count, seed=2)))
    return out


def run_trl(data: Path, model_dir: str, device: str) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from tunelab.graders.grade import Grading
    from tunelab.graders.templates import Sample
    from tunelab.models.precision import dtype_name

    tasks = [json.loads(line) for line in data.read_text().splitlines()]
    rows = [{"prompt": t["messages"], **{k: str(v) for k, v in t.items() if k != "messages"}} for t in tasks]
    grading = Grading(GRADER)

    def reward(completions, item, quantity, colour, city, **_):
        samples = [Sample(c[-1]["content"] if isinstance(c, list) else c) for c in completions]
        fields = [{"item": i, "quantity": int(q), "colour": c, "city": t} for i, q, c, t in zip(item, quantity, colour, city)]
        return [g.reward for g in grading.grade(samples, fields)]

    dtype = compute_dtype(device)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    steps = -(-len(rows) // PROMPTS_PER_STEP)
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(output_dir=out, per_device_train_batch_size=PROMPTS_PER_STEP * GROUP, num_generations=GROUP,
                          max_completion_length=MAX_TOKENS, temperature=1.0, beta=KL_BETA, num_train_epochs=1,
                          learning_rate=LEARNING_RATE, lr_scheduler_type="linear", warmup_steps=max(1, steps // 10),
                          bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, logging_steps=1,
                          save_strategy="no", report_to=[], seed=SEED, use_cpu=device == "cpu",
                          dataloader_num_workers=0, gradient_checkpointing=False)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=Dataset.from_list(rows),
                              processing_class=tokenizer, peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA))
        started = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - started
    log = [entry for entry in trainer.state.log_history if "reward" in entry]
    sampled = sum(entry["completions/mean_length"] * PROMPTS_PER_STEP * GROUP for entry in log)
    return {"sampled_tokens": sampled, "steps": len(log), "seconds": seconds,
            "mean_reward": statistics.fmean(e["reward"] for e in log), "dtype": dtype_name(dtype)}


def run_tunelab(data: Path, model_dir: str, device: str) -> dict:
    import csv

    import yaml

    from tunelab.core.process import keep_freed_memory
    from tunelab.core.settings import TrainConfig
    from tunelab.runs.rundir import RunDir
    from tunelab.train.local import train

    with tempfile.TemporaryDirectory() as out:
        (Path(out) / "grader.json").write_text(json.dumps(GRADER))
        config = TrainConfig(data=str(data), model=model_dir, out=str(Path(out) / "run"), method="grpo",
                             grader=str(Path(out) / "grader.json"), n_epochs=1, batch_size=PROMPTS_PER_STEP,
                             group_size=GROUP, max_completion_tokens=MAX_TOKENS, kl_beta=KL_BETA,
                             learning_rate_multiplier=LEARNING_RATE / 2e-5, lora_r=LORA["r"],
                             lora_alpha=LORA["lora_alpha"], seed=SEED)
        keep_freed_memory()  # as `tunelab train` does for CPU training
        run_dir = train(config)
        timing = next(e["data"] for e in RunDir(run_dir).events() if "train_seconds" in e.get("data", {}))
        rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
        used = yaml.safe_load((run_dir / "config.yaml").read_text())["dtype"]
    return {"sampled_tokens": sum(float(r["sampled_tokens"]) for r in rows), "steps": len(rows),
            "seconds": timing["train_seconds"], "mean_reward": statistics.fmean(float(r["train_reward_mean"]) for r in rows),
            "dtype": used}


ARMS = {"trl": run_trl, "tunelab": run_tunelab}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=24, help="prompts to train on (4 per step)")
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
        data = build_tasks(options.tasks, Path(folder) / "tasks.jsonl")
        print(f"device: {device} · {options.tasks} tasks, {GROUP} replies each, up to {MAX_TOKENS} tokens", flush=True)
        for run in range(options.runs):
            for arm in results:  # alternated, so machine noise falls on every arm alike
                figures = run_arm(arm, data, options.model, device, script=__file__)
                figures["tokens_per_s"] = figures["sampled_tokens"] / figures["seconds"]
                figures["steps_per_min"] = figures["steps"] / figures["seconds"] * 60
                results[arm].append(figures)
                print(f"run {run + 1} {arm:8s} {figures['dtype']:5s} {figures['tokens_per_s']:7.1f} sampled tokens/s, "
                      f"{figures['steps_per_min']:5.2f} steps/min ({figures['steps']} steps, "
                      f"{figures['sampled_tokens']:.0f} tokens in {figures['seconds']:.0f} s), mean reward "
                      f"{figures['mean_reward']:.3f}, peak {figures['peak_mib']:.0f} MiB", flush=True)
            summarise(results)


def summarise(results: dict[str, list[dict]]) -> None:
    runs = min(len(figures) for figures in results.values())

    def median(arm, key):
        return statistics.median(f[key] for f in results[arm][:runs])

    print(f"\nmedians of {runs} run(s)")
    for arm in results:
        print(f"{arm:10s}{median(arm, 'tokens_per_s'):10.1f} sampled tokens/s{median(arm, 'steps_per_min'):8.2f} "
              f"steps/min{median(arm, 'peak_mib'):8.0f} MiB peak")
    if "tunelab" in results and "trl" in results:
        print(f"sampled_tokens_per_s_vs_trl: {median('tunelab', 'tokens_per_s') / median('trl', 'tokens_per_s'):.2f}")
        print(f"steps_per_min_vs_trl: {median('tunelab', 'steps_per_min') / median('trl', 'steps_per_min'):.2f}")
        print(f"peak memory, tunelab / TRL: {median('tunelab', 'peak_mib') / median('trl', 'peak_mib'):.2f}", flush=True)


if __name__ == "__main__":
    main()
