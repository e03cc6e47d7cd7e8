"""`tunelab serve` under load: concurrent chat requests against the same requests sent one at a time.

    .venv/bin/python bench/serve_load.py [--requests 50] [--max-tokens 64] [--temperature 0] [--runs 1]

Starts `tunelab serve` as a real process (the embedded default model, aliased as gpt-4o-mini-2024-07-18),
then for each run sends the support example's held-out questions (repeated to `--requests`) through the
official `openai` client: first all at once, concurrently, then the same requests one after another.
Greedy by default, so both passes generate the same tokens and do the same work.

Prints, per pass: requests, errors, latency p50/p95/p99 (seconds, request sent to reply complete), the
completion tokens generated per second of wall time; then `concurrent_vs_sequential`, the ratio of the
two passes' wall times (median over runs; the target is at least 3). Model loading is excluded: one
request warms the model first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ROOT / "tunelab" / "examples" / "support" / "test.jsonl"
API_KEY = "sk-bench-serve-load"
MODEL = "gpt-4o-mini-2024-07-18"


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    import httpx2 as httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "serve", "--port", str(port), "--data-dir",
                                str(data_dir), "--api-key", API_KEY, "--alias", f"{MODEL}=default"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process, f"http://127.0.0.1:{port}/v1"
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("tunelab serve did not start within 120 s")


def prompts(count: int) -> list[list[dict]]:
    """Each held-out conversation up to its last assistant reply, repeated to `count`."""
    conversations = [json.loads(line)["messages"] for line in QUESTIONS.read_text().splitlines() if line.strip()]
    asked = [messages[:max(i for i, m in enumerate(messages) if m["role"] == "assistant")] for messages in conversations]
    return [asked[i % len(asked)] for i in range(count)]


async def one(client, messages, max_tokens, temperature) -> tuple[float, int | None]:
    """(seconds, completion tokens), or (seconds, None) for an error."""
    started = time.perf_counter()
    try:
        reply = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens,
                                                     temperature=temperature)
        return time.perf_counter() - started, reply.usage.completion_tokens
    except Exception as error:  # counted as an error, and shown
        print(f"  error: {error}", file=sys.stderr)
        return time.perf_counter() - started, None


def summary(name: str, results: list[tuple[float, int | None]], wall: float) -> dict:
    latencies = sorted(seconds for seconds, _ in results)
    tokens = sum(count or 0 for _, count in results)
    cut = statistics.quantiles(latencies, n=100, method="inclusive")
    line = dict(requests=len(results), errors=sum(count is None for _, count in results), wall_s=round(wall, 1),
                p50_s=round(cut[49], 2), p95_s=round(cut[94], 2), p99_s=round(cut[98], 2),
                tokens_per_s=round(tokens / wall, 1), completion_tokens=tokens)
    print(f"{name:<11}" + "  ".join(f"{key} {value}" for key, value in line.items()), flush=True)
    return line


async def run_once(base_url: str, requests: list[list[dict]], max_tokens: int, temperature: float) -> float:
    import openai

    async with openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=3600) as client:
        started = time.perf_counter()
        together = await asyncio.gather(*(one(client, m, max_tokens, temperature) for m in requests))
        concurrent = summary("concurrent", together, time.perf_counter() - started)
        started = time.perf_counter()
        alone = [await one(client, m, max_tokens, temperature) for m in requests]
        sequential = summary("sequential", alone, time.perf_counter() - started)
    return sequential["wall_s"] / concurrent["wall_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--runs", type=int, default=1)
    options = parser.parse_args()
    import torch

    print(f"cpu bf16 units: {bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}, cores: {os.cpu_count()}, "
          f"cuda: {torch.cuda.is_available()}", flush=True)
    with tempfile.TemporaryDirectory() as data_dir:
        process, base_url = start_server(Path(data_dir))
        try:
            asyncio.run(run_once_warm(base_url))
            ratios = []
            for run in range(1, options.runs + 1):
                print(f"run {run}: {options.requests} requests, max_tokens {options.max_tokens}, "
                      f"temperature {options.temperature}", flush=True)
                ratios.append(asyncio.run(run_once(base_url, prompts(options.requests), options.max_tokens,
                                                   options.temperature)))
                print(f"concurrent_vs_sequential {statistics.median(ratios):.2f}x (median of {len(ratios)})",
                      flush=True)
        finally:
            process.terminate()
            process.wait(30)


async def run_once_warm(base_url: str) -> None:
    import openai

    async with openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, timeout=600) as client:
        await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=2)


if __name__ == "__main__":
    main()
