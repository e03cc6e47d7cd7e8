"""DPO on the default model, end to end: supervised first, then DPO `--from` it on a preference the supervised
model does not follow, then `tunelab eval` on held-out pairs.

    .venv/bin/python bench/dpo_signoff.py [--work /tmp/dpo-signoff] [--model default]

The preference: Brightlane's support replies end "— Robin, Brightlane Support" (what the supervised run
learns from the demo's 160 conversations); the house now prefers them to end "Warm regards, Robin at
Brightlane Home". Each pair is a conversation's last reply with the new sign-off (preferred) and with the old
one (not preferred): the same reply otherwise, so the pair teaches the sign-off alone. Training pairs come
from the demo's training file, held-out pairs from its 60 test conversations.

1. `tunelab train` on the training conversations (supervised, the demo's settings);
2. `tunelab train --method dpo --from` that run on the training pairs (a tenth held out for validation);
3. `tunelab eval --model DPO --data held-out pairs --rubric` (the base is the supervised run it started
   from): the DPO model's reward accuracy on the held-out pairs with its interval, and its generated replies
   scored by a one-check rubric (ends with the new sign-off), paired against the supervised model's;
4. the same evaluation of the supervised model against the base model: its reward accuracy on the same
   pairs, before any DPO.

Prints one summary line per figure and writes everything under --work (runs, evaluations, summary.json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "tunelab" / "examples" / "support"
OLD_SIGN_OFF = "— Robin, Brightlane Support"
NEW_SIGN_OFF = "Warm regards,\nRobin at Brightlane Home"
RUBRIC = f"""name: Brightlane's new sign-off
checks:
  - id: new_sign_off
    description: Ends with the new sign-off ("Warm regards, Robin at Brightlane Home")
    ends_with: {json.dumps(NEW_SIGN_OFF)}
"""


def pairs_from(conversations_file: Path, out: Path) -> int:
    lines = []
    for line in conversations_file.read_text().splitlines():
        messages = json.loads(line)["messages"]
        reply = messages[-1]["content"]
        if messages[-1]["role"] != "assistant" or not reply.rstrip().endswith(OLD_SIGN_OFF):
            continue
        new = reply.rstrip()[:-len(OLD_SIGN_OFF)] + NEW_SIGN_OFF
        lines.append({"input": {"messages": messages[:-1]},
                      "preferred_output": [{"role": "assistant", "content": new}],
                      "non_preferred_output": [{"role": "assistant", "content": reply}]})
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return len(lines)


def tunelab(*arguments: str) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "tunelab.cli", *arguments], check=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/dpo-signoff"))
    parser.add_argument("--model", default="default")
    parser.add_argument("--dpo-epochs", default="2")
    parser.add_argument("--dpo-rate", default="5", help="learning_rate_multiplier of the DPO run (× 2e-5)")
    parser.add_argument("--rpo-alpha", default="1", help="the DPO run's rpo_alpha (0: plain DPO)")
    options = parser.parse_args()
    work = options.work
    work.mkdir(parents=True, exist_ok=True)
    train_pairs, held_out = work / "pairs.jsonl", work / "held_out_pairs.jsonl"
    counts = {"train_pairs": pairs_from(EXAMPLES / "train.jsonl", train_pairs),
              "held_out_pairs": pairs_from(EXAMPLES / "test.jsonl", held_out)}
    (work / "rubric.yaml").write_text(RUBRIC)
    seconds = {}
    if not (work / "sft" / "adapter").is_dir():
        seconds["supervised"] = tunelab("train", "--data", str(EXAMPLES / "train.jsonl"), "--model", options.model,
                                        "--out", str(work / "sft"), "--quiet")
    if not (work / "dpo" / "adapter").is_dir():
        seconds["dpo"] = tunelab("train", "--method", "dpo", "--data", str(train_pairs), "--from", str(work / "sft"),
                                 "--validation-split", "0.1", "--n-epochs", options.dpo_epochs, "--batch-size", "8",
                                 "--learning-rate-multiplier", options.dpo_rate, "--rpo-alpha", options.rpo_alpha,
                                 "--out", str(work / "dpo"), "--quiet")
    common = ["--data", str(held_out), "--rubric", str(work / "rubric.yaml"), "--forgetting", "off", "--fewshot", "0"]
    seconds["eval_dpo"] = tunelab("eval", "--model", str(work / "dpo"), *common, "--out", str(work / "eval-dpo"))
    seconds["eval_sft"] = tunelab("eval", "--model", str(work / "sft"), *common, "--out", str(work / "eval-sft"))

    dpo = json.loads((work / "eval-dpo" / "results.json").read_text())
    sft = json.loads((work / "eval-sft" / "results.json").read_text())
    rows = _metrics(work / "dpo" / "metrics.csv")
    validations = [(int(r["step"]), float(r["valid_reward_accuracy"])) for r in rows if r["valid_reward_accuracy"]]
    rubric = next(c for c in dpo["comparisons"] if c["a"] == "base" and c["b"] == "fine_tuned" and c["scorer"] == "rubric")
    summary = {
        **counts, "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "dpo_validation_reward_accuracy": validations,
        "dpo_reward_vs_sft": dpo["preference"]["reward"],
        "sft_reward_vs_base": sft["preference"]["reward"],
        "likelihood_preference": {name: s["likelihood_preference"] for name, s in dpo["preference"]["systems"].items()},
        "new_sign_off_rubric": {"sft": dpo["systems"]["base"]["scores"]["rubric"],
                                "dpo": dpo["systems"]["fine_tuned"]["scores"]["rubric"], "dpo_minus_sft": rubric},
        "ended_turn": {name: dpo["systems"][name]["scores"]["ended_turn"] for name in ("base", "fine_tuned")},
        "verdict": dpo["verdict"],
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    reward, before = summary["dpo_reward_vs_sft"]["accuracy"], summary["sft_reward_vs_base"]["accuracy"]
    print(f"pairs: {counts['train_pairs']} training, {counts['held_out_pairs']} held out · seconds {summary['seconds']}")
    print(f"DPO validation reward accuracy by step: {validations}")
    print(f"held-out reward accuracy, supervised vs base: {before['mean']:.1%} ({before['ci95'][0]:.1%} to {before['ci95'][1]:.1%})")
    print(f"held-out reward accuracy, DPO vs supervised:  {reward['mean']:.1%} ({reward['ci95'][0]:.1%} to {reward['ci95'][1]:.1%})")
    print(f"replies ending with the new sign-off: supervised {summary['new_sign_off_rubric']['sft']['mean']:.0%}, "
          f"DPO {summary['new_sign_off_rubric']['dpo']['mean']:.0%} (difference {rubric['mean_diff']:+.0%}, 95% CI "
          f"{rubric['ci95'][0]:+.0%} to {rubric['ci95'][1]:+.0%}, p {rubric['p_value']:.2g})")
    ended = {name: dpo["systems"][name]["scores"]["ended_turn"]["mean"] for name in ("base", "fine_tuned")}
    print(f"replies that end their turn: supervised {ended['base']:.0%}, DPO {ended['fine_tuned']:.0%}")


def _metrics(path: Path) -> list[dict]:
    import csv

    return list(csv.DictReader(path.open()))


if __name__ == "__main__":
    main()
