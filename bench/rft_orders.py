"""Reinforcement fine-tuning on the default model, end to end: free-text orders → a JSON object, graded field by
field by OpenAI's graders; supervised first (the base model does not answer in JSON at all), then GRPO
`--from` it, then `tunelab eval --grader` on held-out orders phrased in ways neither run saw.

    .venv/bin/python bench/rft_orders.py [--work /tmp/rft-orders] [--model default]

The grader is a `multi` of four `string_check`s, one per field (`{{sample.output_json.item}}` eq
`{{item.item}}`, …), averaged: a reply that is not JSON scores 0 (OpenAI's `sample_parse_error`), one with
three fields right 0.75. The supervised run sees a few orders (--sft-examples) for one epoch: enough to
answer in JSON, not enough to get every field from every phrasing — the quantity written as a word, an order
number beside it. GRPO then trains on more orders, with no reference replies at all: the grader's fields.

1. `tunelab train` on the supervised orders;
2. `tunelab eval SFT --data held_out_tasks --grader` (base vs supervised: before any reinforcement);
3. `tunelab train --method grpo --from SFT --data tasks --grader grader.json` (a tenth held out for validation);
4. `tunelab eval GRPO --data held_out_tasks --grader`: the base is the supervised run it started from, so the
   paired comparison is the held-out mean reward before and after reinforcement, with its interval.

Prints one summary line per figure and writes everything under --work (runs, evaluations, summary.json).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dpo_signoff import tunelab  # noqa: E402  (runs `tunelab …` and returns its seconds)

SYSTEM = "Extract the order as a JSON object with the keys item, quantity, colour and city."
ITEMS = ["mug", "lamp", "towel", "cushion", "vase", "rug", "candle", "blanket", "plate", "mirror"]
COLOURS = ["red", "blue", "green", "white", "black", "grey", "yellow"]
CITIES = ["Leeds", "Bristol", "York", "Cardiff", "Glasgow", "Norwich", "Bath", "Derby"]
NUMBERS = ["one", "two", "three", "four", "five", "six"]
SUPERVISED_PHRASINGS = ["I'd like {n} {colour} {item}s delivered to {city}.",
                        "Order: {q} x {item}, colour {colour}, ship to {city}"]
REINFORCEMENT_PHRASINGS = SUPERVISED_PHRASINGS + [
    "Please send {n} {item}s in {colour} to our shop in {city} (order #{ref}).",
    "Can I get {n} {colour} {item}s? I live in {city}, flat {ref}.",
    "Ref {ref}: {q} {colour} {item}s for delivery in {city}."]
HELD_OUT_PHRASINGS = ["We need {q} {item}s, {colour} ones, sent to {city} please. Our account is {ref}.",
                      "{city} address - {n} {colour} {item}s, thanks (invoice {ref})",
                      "Hello! {n} {item}s please, in {colour}, to {city}."]
FIELDS = ("item", "quantity", "colour", "city")
GRADER = {"type": "multi", "name": "order_fields", "calculate_output": "(item + quantity + colour + city) / 4",
          "graders": {field: {"type": "string_check", "name": field, "input": "{{sample.output_json.%s}}" % field,
                              "reference": "{{item.%s}}" % field, "operation": "eq"} for field in FIELDS}}


def orders(phrasings: list[str], count: int, seed: int) -> list[dict]:
    """Tasks: the system prompt and a request, with the order's fields as the item."""
    rng = random.Random(seed)
    tasks = []
    for k in range(count):
        fields = {"item": rng.choice(ITEMS), "quantity": rng.randint(1, 6), "colour": rng.choice(COLOURS),
                  "city": rng.choice(CITIES)}
        request = phrasings[k % len(phrasings)].format(n=NUMBERS[fields["quantity"] - 1], q=fields["quantity"],
                                                       ref=rng.randint(10, 99), **fields)
        tasks.append({"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": request}],
                      **fields})
    return tasks


def demonstrations(tasks: list[dict]) -> list[dict]:
    """The tasks as supervised examples: each answered with its order as JSON."""
    return [{"messages": t["messages"] + [{"role": "assistant", "content": json.dumps({f: t[f] for f in FIELDS})}]}
            for t in tasks]


def write(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/rft-orders"))
    parser.add_argument("--model", default="default")
    parser.add_argument("--sft-examples", type=int, default=24)
    parser.add_argument("--tasks", type=int, default=96)
    parser.add_argument("--held-out", type=int, default=60)
    parser.add_argument("--group-size", default="8")
    parser.add_argument("--batch-size", default="4")
    parser.add_argument("--epochs", default="1")
    parser.add_argument("--rate", default="5", help="learning_rate_multiplier of the GRPO run (× 2e-5)")
    parser.add_argument("--kl-beta", default="0.04")
    options = parser.parse_args()
    work = options.work
    work.mkdir(parents=True, exist_ok=True)
    sft_data = write(work / "sft.jsonl", demonstrations(orders(SUPERVISED_PHRASINGS, options.sft_examples, seed=1)))
    tasks = write(work / "tasks.jsonl", orders(REINFORCEMENT_PHRASINGS, options.tasks, seed=2))
    held_out = write(work / "held_out.jsonl", orders(HELD_OUT_PHRASINGS, options.held_out, seed=3))
    (work / "grader.json").write_text(json.dumps(GRADER, indent=2))
    seconds = {}
    if not (work / "sft" / "adapter").is_dir():
        seconds["supervised"] = tunelab("train", "--data", str(sft_data), "--model", options.model, "--n-epochs", "1",
                                        "--batch-size", "1", "--out", str(work / "sft"), "--quiet")
    common = ["--data", str(held_out), "--grader", str(work / "grader.json"), "--forgetting", "off",
              "--fewshot", "0", "--max-new-tokens", "48"]
    seconds["eval_sft"] = tunelab("eval", str(work / "sft"), *common, "--out", str(work / "eval-sft"))
    if not (work / "grpo" / "adapter").is_dir():
        seconds["grpo"] = tunelab("train", "--method", "grpo", "--data", str(tasks), "--from", str(work / "sft"),
                                  "--grader", str(work / "grader.json"), "--group-size", options.group_size,
                                  "--batch-size", options.batch_size, "--n-epochs", options.epochs,
                                  "--learning-rate-multiplier", options.rate, "--kl-beta", options.kl_beta,
                                  "--max-completion-tokens", "48", "--validation-split", "0.1",
                                  "--out", str(work / "grpo"), "--quiet")
    seconds["eval_grpo"] = tunelab("eval", str(work / "grpo"), *common, "--out", str(work / "eval-grpo"))
    # The same, the replies sampled as training samples them (temperature 1): the policy, not its greedy path.
    seconds["eval_grpo_sampled"] = tunelab("eval", str(work / "grpo"), *common, "--temperature", "1", "--seed", "42",
                                           "--out", str(work / "eval-grpo-sampled"))

    sft = json.loads((work / "eval-sft" / "results.json").read_text())
    grpo = json.loads((work / "eval-grpo" / "results.json").read_text())
    sampled = json.loads((work / "eval-grpo-sampled" / "results.json").read_text())
    sampled_comparison = next(c for c in sampled["comparisons"]
                              if (c["a"], c["b"], c["scorer"]) == ("base", "fine_tuned", "grader"))
    rows = list(csv.DictReader((work / "grpo" / "metrics.csv").open()))
    comparison = next(c for c in grpo["comparisons"] if (c["a"], c["b"], c["scorer"]) == ("base", "fine_tuned", "grader"))
    before = next(c for c in sft["comparisons"] if (c["a"], c["b"], c["scorer"]) == ("base", "fine_tuned", "grader"))
    steps = len(rows)
    summary = {
        "sft_examples": options.sft_examples, "tasks": options.tasks, "held_out": options.held_out,
        "settings": vars(options) | {"work": str(work)}, "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "held_out_reward": {"base": sft["systems"]["base"]["scores"]["grader"],
                            "sft": grpo["systems"]["base"]["scores"]["grader"],
                            "grpo": grpo["systems"]["fine_tuned"]["scores"]["grader"]},
        "grpo_minus_sft": comparison, "sft_minus_base": before,
        "sampled_held_out_reward": {"sft": sampled["systems"]["base"]["scores"]["grader"],
                                    "grpo": sampled["systems"]["fine_tuned"]["scores"]["grader"],
                                    "grpo_minus_sft": sampled_comparison},
        "train_reward_by_step": [round(float(r["train_reward_mean"]), 3) for r in rows],
        "valid_reward_by_step": [(int(r["step"]), round(float(r["valid_reward_mean"]), 3)) for r in rows
                                 if r["valid_reward_mean"]],
        "sampled_tokens_per_second": round(sum(float(r["sampled_tokens"]) for r in rows)
                                           / max(sum(float(r["sample_seconds"]) for r in rows), 1e-9), 1),
        "steps": steps, "verdict": grpo["verdict"],
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    reward = summary["held_out_reward"]
    print(f"seconds {summary['seconds']} · {steps} GRPO steps · sampling {summary['sampled_tokens_per_second']} tokens/s")
    print(f"train reward by step: {summary['train_reward_by_step']}")
    print(f"validation reward: {summary['valid_reward_by_step']}")
    print(f"held-out mean reward: base {reward['base']['mean']:.3f}, supervised {reward['sft']['mean']:.3f} "
          f"({reward['sft']['ci95'][0]:.3f} to {reward['sft']['ci95'][1]:.3f}), GRPO {reward['grpo']['mean']:.3f} "
          f"({reward['grpo']['ci95'][0]:.3f} to {reward['grpo']['ci95'][1]:.3f})")
    print(f"GRPO − supervised: {comparison['mean_diff']:+.3f} (95% CI {comparison['ci95'][0]:+.3f} to "
          f"{comparison['ci95'][1]:+.3f}, {comparison['test']} p {comparison['p_value']:.2g}, n {comparison['n']})")
    print(f"supervised − base: {before['mean_diff']:+.3f} (95% CI {before['ci95'][0]:+.3f} to {before['ci95'][1]:+.3f})")
    drawn = summary["sampled_held_out_reward"]
    print(f"sampled at temperature 1: supervised {drawn['sft']['mean']:.3f}, GRPO {drawn['grpo']['mean']:.3f}, difference "
          f"{sampled_comparison['mean_diff']:+.3f} (95% CI {sampled_comparison['ci95'][0]:+.3f} to "
          f"{sampled_comparison['ci95'][1]:+.3f}, p {sampled_comparison['p_value']:.2g})")


if __name__ == "__main__":
    main()
