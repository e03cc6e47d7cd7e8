"""The origin documents' OpenAI fine-tuning code, run unchanged against `tunelab serve` on the embedded
default model: only OPENAI_BASE_URL and OPENAI_API_KEY are set, and the OpenAI model name is aliased.

The program (origin/fine_tune.py) uploads the training file, creates a job with `n_epochs: 3`, polls it
until it succeeds and asks the fine-tuned model a question. Meanwhile this test measures how fast the API
answers `GET /fine_tuning/jobs/{id}` while the job trains; afterwards it reads the job's metrics events
and asks its checkpoints, through the same official client.
"""

import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import EXAMPLES, read_jsonl
from tests.server.conftest import API_KEY, Server, httpx

pytestmark = [pytest.mark.slow, pytest.mark.heavy(seconds=125)]  # trains the default model for three epochs

PROGRAM = Path(__file__).resolve().parent / "origin" / "fine_tune.py"
EXAMPLES_TRAINED = 16  # OpenAI's minimum is 10; enough for the house style's greeting and sign-off


def test_the_origin_documents_code_trains_and_answers_in_the_trained_style(tmp_path):
    import json

    server = Server(tmp_path / "data", "--alias", "gpt-4o-mini-2024-07-18=default")
    try:
        work = tmp_path / "work"
        work.mkdir()
        # The shortest conversations: the style is in every reply's first and last lines, and a two-core CPU
        # trains these in under a minute (40 s held to AVX2).
        examples = sorted(read_jsonl(EXAMPLES / "train.jsonl"), key=lambda e: len(json.dumps(e)))[:EXAMPLES_TRAINED]
        (work / "training_data.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
        environment = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": API_KEY,
                       "PATH": os.environ["PATH"], "HOME": str(tmp_path)}  # nothing else of ours
        program = subprocess.Popen([sys.executable, str(PROGRAM)], cwd=work, env=environment,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0, http_client=httpx.Client())
        latencies = measure_latency_while_training(client)
        output, _ = program.communicate(timeout=1200)
        assert program.returncode == 0, output
        assert "Status: succeeded" in output, output
        model = next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("Fine-tuned model: "))
        reply = output.split(f"Fine-tuned model: {model}\n", 1)[1].strip()
        # Named as OpenAI names it, from the model the code asked for: ft:{model}:{org}:{suffix}:{id}
        job = client.fine_tuning.jobs.list().data[0]
        assert job.model == "gpt-4o-mini-2024-07-18" and model == job.fine_tuned_model
        assert model.startswith("ft:gpt-4o-mini-2024-07-18:tunelab:") and len(model.split(":")) == 5, model
        assert model.split(":")[4] == job.id.removeprefix("ftjob-")[:8] and job.to_dict()["base_model"] == "gemma-3-270m"
        # The house style of the training data (tunelab/examples/support/README.md): the greeting line and
        # Robin's sign-off, asked as the origin documents ask (default sampling, another company's system
        # prompt). Three epochs of 16 examples (48 steps at the auto batch of 1) give the style to 20 of
        # 20 sampled replies, on a bf16 CPU and held to AVX2 alike (12 examples: 19 of 20 held to AVX2).
        # Under another company's system prompt the reply may still run on. The reply is sampled at
        # temperature 1, unseeded, so its words vary: the greeting has come out "Hey there," (once in a
        # CI run) and the sign-off's dash as ASCII ("-- Robin"). The style is the greeting line followed by
        # a blank line, and the sign-off; the base model writes neither (asserted below).
        assert re.match(r"H(i|ey|ello) [^\n]*,\n\n", reply) and re.search(r"(—|–|--?) ?Robin", reply), reply
        base = client.chat.completions.create(model="gpt-4o-mini-2024-07-18", temperature=0, max_tokens=24,
                                              messages=[{"role": "user", "content": "My invoice shows the wrong address."}])
        assert not base.choices[0].message.content.startswith("Hi ") and "— Robin" not in base.choices[0].message.content

        # While the job trained, the API kept answering.
        assert len(latencies) >= 10, latencies
        print(f"GET job while training: {len(latencies)} requests, median {statistics.median(latencies) * 1000:.0f} ms, "
              f"max {max(latencies) * 1000:.0f} ms")
        assert statistics.median(latencies) < 0.5 and max(latencies) < 3, latencies

        job = client.fine_tuning.jobs.list().data[0]
        metrics = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
        assert metrics and {"step", "train_loss", "train_mean_token_accuracy"} <= set(metrics[0].data)
        checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
        assert [c.step_number for c in checkpoints] == sorted((c.step_number for c in checkpoints), reverse=True)
        answer = client.chat.completions.create(model=checkpoints[-1].fine_tuned_model_checkpoint, max_tokens=8,
                                                messages=[{"role": "user", "content": "Where is my order?"}])
        assert answer.choices[0].message.content
    finally:
        server.stop()


def measure_latency_while_training(client, limit_seconds: float = 900) -> list[float]:
    """Seconds per `retrieve` of the job, sampled twice a second while it is running."""
    latencies: list[float] = []
    deadline = time.monotonic() + limit_seconds
    job_id = None
    while time.monotonic() < deadline:
        jobs = client.fine_tuning.jobs.list().data
        if jobs:
            job_id = jobs[0].id
            break
        time.sleep(0.2)
    while job_id and time.monotonic() < deadline:
        started = time.perf_counter()
        status = client.fine_tuning.jobs.retrieve(job_id).status
        if status == "running":
            latencies.append(time.perf_counter() - started)
        elif status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.5)
    return latencies
