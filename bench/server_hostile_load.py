"""`tunelab serve` under heavy, careless use, on the embedded default model (or the tests' tiny one):

    .venv/bin/python bench/server_hostile_load.py [--model default|tiny] [--jobs 20] [--streams 50]
                                                   [--disconnect-every 5] [--max-tokens 48]

Submits `--jobs` fine-tuning jobs at once and cancels them all at once, then opens `--streams` streamed
chat completions at once, every `--disconnect-every`-th client hanging up after its first piece. Prints
requests, server errors (target 0), other errors (target 0), latency percentiles and how the jobs and
streams ended (tests/reliability/load.py); then the database's integrity check.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
MODEL = "gpt-4o-mini-2024-07-18"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--disconnect-every", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=48)
    arguments = parser.parse_args()

    import httpx2 as httpx

    from tests.conftest import EXAMPLES, build_tiny_model, read_jsonl
    from tests.reliability.load import chat_streams, job_burst
    from tests.serving import API_KEY, Server, integrity_check

    with tempfile.TemporaryDirectory(prefix="server-load-") as scratch:
        scratch = Path(scratch)
        conversations = read_jsonl(EXAMPLES / "train.jsonl")
        model = arguments.model
        if model == "tiny":
            model = str(build_tiny_model(scratch / "tiny-model", [m["content"] for c in conversations for m in c["messages"]]))
        server = Server(scratch / "data", "--alias", f"{MODEL}={model}")
        try:
            body = "".join(json.dumps(c) + "\n" for c in conversations[:12]).encode()
            uploaded = httpx.post(f"{server.base_url}/files", headers={"Authorization": f"Bearer {API_KEY}"},
                                  files={"file": ("train.jsonl", body)}, data={"purpose": "fine-tune"}, timeout=60).json()
            print(job_burst(server.base_url, API_KEY, uploaded["id"], MODEL, arguments.jobs).line(), flush=True)
            # One request first, so model loading is not counted against the streams.
            httpx.post(f"{server.base_url}/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=600,
                       json={"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hello"}]})
            figures = chat_streams(server.base_url, API_KEY, MODEL, arguments.streams, arguments.disconnect_every,
                                   arguments.max_tokens)
            print(figures.line(), flush=True)
            for error in figures.other_errors[:5]:
                print("  ", error)
        finally:
            server.stop()
        print("database integrity_check:", integrity_check(scratch / "data"))


if __name__ == "__main__":
    main()
