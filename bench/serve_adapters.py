"""Four fine-tunes of the default model served by one `tunelab serve`: the server's resident memory, and the
time of a round of requests to all four, one after another and all at once.

    .venv/bin/python bench/serve_adapters.py [--data-dir DIR] [--code DIR] [--rounds 3]

With `--data-dir` holding a previous run's jobs, their fine-tunes are reused (no training); `--code DIR`
runs the server from another checkout (e.g. a `git worktree` of an older commit), so two versions are
measured on the same fine-tunes. Prints one line per measurement: resident memory (VmRSS) of the server
process after the base answers, after each fine-tune answers once, its peak (VmHWM), and the median time
of a sequential and of a concurrent round (greedy, 16 tokens each).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASE = "gpt-4o-mini-2024-07-18"
QUESTION = [{"role": "user", "content": "My order has not arrived. What can I do?"}]


def memory(pid: int) -> dict[str, float]:
    """The process's resident and peak resident memory, in GiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {name: int(fields[name].split()[0]) / 2**20 for name in ("VmRSS", "VmHWM")}


def fine_tunes(client, training: Path, count: int) -> list[str]:
    """The server's fine-tuned models, `count` of them, trained now if it has fewer (one step each)."""
    from tests.server.test_jobs import wait_until_finished

    have = [job.fine_tuned_model for job in client.fine_tuning.jobs.list(limit=100).data if job.status == "succeeded"]
    if len(have) < count:
        file_id = client.files.create(file=training.open("rb"), purpose="fine-tune").id
        for seed in range(count - len(have)):
            job = client.fine_tuning.jobs.create(training_file=file_id, model=BASE, seed=seed, suffix=f"team{seed}",
                                                 hyperparameters={"n_epochs": 1, "batch_size": 10,
                                                                  "learning_rate_multiplier": 5})
            have.append(wait_until_finished(client, job.id, timeout=900).fine_tuned_model)
    return sorted(have)[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, help="the server's data (kept; fine-tunes in it are reused)")
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout the server runs from")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fine-tunes", type=int, default=4)
    arguments = parser.parse_args()

    import openai

    from tests.serving import API_KEY, Server

    scratch = tempfile.TemporaryDirectory(prefix="serve-adapters-")
    data_dir = arguments.data_dir or Path(scratch.name) / "data"
    training = Path(scratch.name) / "train.jsonl"
    lines = (ROOT / "tunelab" / "examples" / "support" / "train.jsonl").read_text().splitlines()[:10]
    training.write_text("\n".join(lines) + "\n")
    # The server (and its worker) run this code: `python -m` looks in the working directory first.
    os.environ["PYTHONPATH"] = str(arguments.code.resolve())
    os.chdir(arguments.code)
    server = Server(data_dir, "--alias", f"{BASE}=default")
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, timeout=900)
        models = fine_tunes(client, training, arguments.fine_tunes)

        errors: list[str] = []

        def ask(model: str) -> float:
            started = time.perf_counter()
            try:
                client.chat.completions.create(model=model, messages=QUESTION, temperature=0, max_tokens=16)
            except openai.APIError as error:  # counted, and the round goes on
                errors.append(str(error)[:200])
            return time.perf_counter() - started

        ask(BASE)
        print(json.dumps({"code": str(arguments.code), "after": "base answered", **memory(server.process.pid)}))
        for model in models:
            ask(model)
            print(json.dumps({"after": f"{model} answered", **memory(server.process.pid)}))
        sequential, concurrent = [], []
        for _ in range(arguments.rounds):
            started = time.perf_counter()
            for model in models:
                ask(model)
            sequential.append(time.perf_counter() - started)
            started = time.perf_counter()
            with ThreadPoolExecutor(len(models)) as pool:
                list(pool.map(ask, models))
            concurrent.append(time.perf_counter() - started)
        print(json.dumps({"fine_tunes": len(models), "sequential_round_s": round(statistics.median(sequential), 2),
                          "concurrent_round_s": round(statistics.median(concurrent), 2), "errors": len(errors),
                          **memory(server.process.pid)}))
        if errors:
            print(json.dumps({"first_error": errors[0]}))
        import httpx2 as httpx

        serving = httpx.get(f"{server.base_url}/tunelab/serving", headers={"Authorization": f"Bearer {API_KEY}"})
        print(json.dumps({"models_loaded": [(m["model"], len(m["fine_tunes_attached"])) for m in serving.json()["models"]]}
                         if serving.status_code == 200 else {"serving_state": serving.status_code}))
    finally:
        server.stop()
        scratch.cleanup()


if __name__ == "__main__":
    main()
