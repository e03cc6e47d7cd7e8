"""What open dashboard pages cost a training run: the same job trained with no page open and with 20 job pages
following it live (20 people watching, each in a browser of their own), in one run, alternately, as pairs.

    .venv/bin/python bench/dashboard_load.py [--pages 20] [--pairs 3] [--model default] [--examples 24]

The pages are open before the job's first step (a job queued ahead holds the worker meanwhile, in both
arms). The server (with its worker and the training process) is held to CPU 0 and the browser — headless
Chromium with the pages, driven by Playwright — to CPU 1, in both arms: on a team's machine the browsers
are elsewhere, and what the pages cost the run is the server's part (answering the pages, keeping 20 event
streams current). Speed is the run's own figure, trained tokens per second of its training loop; the
server process's CPU time during the run is read from /proc. Printed as JSON lines per run, then the
median ratio `with_pages / without` over the pairs (1.0: no cost).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.dashboard.browser import CHROMIUM_ARGUMENTS, chromium_path  # noqa: E402
from tests.serving import API_KEY, free_port  # noqa: E402

TRAINING_CORE, BROWSER_CORE = 0, 1


def server_cpu_seconds(pid: int) -> float:
    """The server process's own CPU time (user + system), not its worker's or the training's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(data_dir: Path, model: str) -> tuple[subprocess.Popen, int]:
    import httpx2 as httpx

    port = free_port()
    process = subprocess.Popen(
        ["taskset", "-c", str(TRAINING_CORE), sys.executable, "-m", "tunelab.cli", "serve", "--port", str(port),
         "--data-dir", str(data_dir), "--api-key", API_KEY, "--alias", f"gpt-4o-mini-2024-07-18={model}",
         "--dtype", "fp32"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, TUNELAB_API_KEY=""))
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process, port
        except httpx.TransportError:
            time.sleep(0.2)
    raise RuntimeError("tunelab serve did not start")


def one_run(client, browser, base: str, server_pid: int, training_file: str, pages: int, epochs: int) -> dict:
    """One job trained with `pages` pages following it from before its first step: a job ahead of it holds
    the worker while the pages open, and is cancelled to let it start (in both arms alike)."""
    ahead = client.fine_tuning.jobs.create(training_file=training_file, model="gpt-4o-mini-2024-07-18",
                                           hyperparameters={"n_epochs": 50, "batch_size": 1})
    while client.fine_tuning.jobs.retrieve(ahead.id).status != "running":
        time.sleep(0.2)
    job = client.fine_tuning.jobs.create(training_file=training_file, model="gpt-4o-mini-2024-07-18",
                                         hyperparameters={"n_epochs": epochs, "batch_size": 1})
    contexts, opened = [], []
    if pages:
        contexts.append(browser.new_context())
        first = contexts[0].new_page()
        first.goto(f"{base}/jobs/{job.id}")
        first.get_by_label("API key").fill(API_KEY)
        first.get_by_role("button", name="Sign in").click()
        first.wait_for_url(f"{base}/jobs/{job.id}")
        signed_in = contexts[0].storage_state()
        opened = [first]
        for _ in range(pages - 1):  # one browser each: one browser keeps at most six connections to a server
            contexts.append(browser.new_context(storage_state=signed_in))
            opened.append(contexts[-1].new_page())
            opened[-1].goto(f"{base}/jobs/{job.id}")
    cpu_before = server_cpu_seconds(server_pid)
    client.fine_tuning.jobs.cancel(ahead.id)
    while client.fine_tuning.jobs.retrieve(job.id).status not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.5)
    cpu = server_cpu_seconds(server_pid) - cpu_before
    shown = [int(page.get_attribute("#loss-chart", "data-points")) for page in opened]
    for context in contexts:
        context.close()
    trained = next(e.data for e in client.fine_tuning.jobs.list_events(job.id, limit=1000).data
                   if e.message.startswith("Trained "))
    return {"pages": pages, "job": job.id, "tokens_per_second": trained["tokens"] / trained["train_seconds"],
            "train_seconds": trained["train_seconds"], "server_cpu_seconds": round(cpu, 2),
            "points_on_each_page": sorted(set(shown))}


def main() -> None:
    import openai
    from playwright.sync_api import sync_playwright

    from tests.conftest import EXAMPLES, read_jsonl

    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--model", default="default")
    parser.add_argument("--examples", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=1)
    options = parser.parse_args()
    os.sched_setaffinity(0, {BROWSER_CORE})  # this script, Playwright's driver and Chromium
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        server, port = start_server(scratch / "data", options.model)
        base = f"http://127.0.0.1:{port}"
        try:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key=API_KEY, max_retries=2)
            data = scratch / "train.jsonl"
            data.write_text("".join(json.dumps(c) + "\n" for c in read_jsonl(EXAMPLES / "train.jsonl")[:options.examples]))
            training_file = client.files.create(file=data.open("rb"), purpose="fine-tune").id
            one_run(client, None, base, server.pid, training_file, 0, 1)  # warm: the model read once into the page cache
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGUMENTS)
                ratios = []
                for _ in range(options.pairs):
                    without = one_run(client, browser, base, server.pid, training_file, 0, options.epochs)
                    with_pages = one_run(client, browser, base, server.pid, training_file, options.pages, options.epochs)
                    print(json.dumps(without), flush=True)
                    print(json.dumps(with_pages), flush=True)
                    ratios.append(with_pages["tokens_per_second"] / without["tokens_per_second"])
                browser.close()
            print(json.dumps({"pages": options.pages, "pairs": options.pairs, "model": options.model,
                              "ratios": [round(r, 4) for r in ratios],
                              "median_with_pages_over_without": round(statistics.median(ratios), 4)}), flush=True)
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    main()
