"""How fast `tunelab data validate` checks a big file, and how much memory it takes.

    .venv/bin/python bench/data_speed.py [--examples 100000] [--runs 3]

Writes a chat JSONL of N examples (~600 bytes each, a quarter multi-turn, 1% exact duplicates; the words
are drawn from the bundled support examples), then runs the real command, `tunelab data validate FILE
--json`, for each way of counting tokens: none, the default local model (its tokenizer and chat template,
exact), and OpenAI's o200k_base. Prints the median wall time of several runs, with the peak memory of
the largest process, for the full file and for a quarter of it (memory should barely grow with size).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = {"no token counts": ["--model", "none"], "default model (exact)": ["--model", "default"],
         "openai:gpt-4o-mini": ["--target", "openai:gpt-4o-mini"]}


def make_file(path: Path, examples: int, seed: int = 0) -> None:
    text = (ROOT / "tunelab" / "examples" / "support" / "train.jsonl").read_text(encoding="utf-8")
    words = sorted(set(re.findall(r"[A-Za-z']+[.,?]?", text)))
    rng = random.Random(seed)
    sentence = lambda low, high: " ".join(rng.choices(words, k=rng.randint(low, high)))  # noqa: E731
    written = []
    with path.open("w", encoding="utf-8") as handle:
        for index in range(examples):
            if written and rng.random() < 0.01:
                handle.write(rng.choice(written))
                continue
            messages = [{"role": "system", "content": "You are a support agent for Acme. Be concise and kind."},
                        {"role": "user", "content": sentence(8, 30)},
                        {"role": "assistant", "content": sentence(20, 60)}]
            if index % 4 == 0:
                messages += [{"role": "user", "content": sentence(5, 15)},
                             {"role": "assistant", "content": sentence(10, 30)}]
            line = json.dumps({"messages": messages}) + "\n"
            handle.write(line)
            if len(written) < 1000:
                written.append(line)


def run_validate(path: Path, options: list[str]) -> tuple[float, int, dict]:
    """Wall seconds, peak RSS in MiB of the largest process, and the report of one run."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tunelab.cli", "data", "validate", str(path), "--json", *options],
                            capture_output=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    if result.returncode not in (0, 1):
        raise SystemExit(result.stderr.decode())
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024  # largest process so far
    return seconds, peak_mib, json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        full, quarter = Path(work) / "full.jsonl", Path(work) / "quarter.jsonl"
        make_file(full, args.examples)
        make_file(quarter, args.examples // 4)
        print(f"file: {args.examples:,} examples, {full.stat().st_size / 1e6:.1f} MB "
              f"(quarter: {quarter.stat().st_size / 1e6:.1f} MB)")
        for name, options in MODES.items():
            # Memory first, in a fresh process each: RUSAGE_CHILDREN keeps the largest child so far,
            # so the smaller file must be measured before the bigger one.
            _, quarter_mib, _ = measure_in_child(quarter, options)
            _, full_mib, report = measure_in_child(full, options)
            times = [run_validate(full, options)[0] for _ in range(args.runs)]
            tokens = report["stats"].get("tokens") or {}
            print(f"{name:24} median {statistics.median(times):5.1f} s of {args.runs} "
                  f"({', '.join(f'{t:.1f}' for t in times)}); peak memory {quarter_mib} MiB at "
                  f"{args.examples // 4:,} examples, {full_mib} MiB at {args.examples:,}; "
                  f"findings {len(report['findings'])}; tokens {tokens.get('total', '-')}")


def measure_in_child(path: Path, options: list[str]) -> tuple[float, int, dict]:
    """One run from a fresh Python, so its peak memory is its own."""
    code = ("import sys, json; sys.path.insert(0, %r); from data_speed import run_validate; "
            "print(json.dumps(run_validate(__import__('pathlib').Path(%r), %r)))") % (
        str(Path(__file__).parent), str(path), options)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    seconds, peak, report = json.loads(result.stdout)
    return seconds, peak, report


if __name__ == "__main__":
    main()
