"""`tunelab migrate openai` against a `tunelab serve` standing in for OpenAI (it speaks the same API): the
files and a succeeded job are created there through the API first; the migration downloads them, trains
the open model here, evaluates it against the "hosted" fine-tune and writes its report. Killed while
training and run again, it continues: nothing downloaded twice, training resumed from its checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time

import openai
import pytest

from tests.server.conftest import API_KEY, upload
from tests.server.test_jobs import wait_until_finished

pytestmark = pytest.mark.slow  # a server process, a worker that trains, and a migration that trains again

MODEL = "gpt-4o-mini-2024-07-18"


def test_migrate_lists_downloads_trains_evaluates_and_continues_after_a_kill(tiny_server, tiny_model_dir, tmp_path,
                                                                            support_conversations):
    client = openai.OpenAI(base_url=tiny_server.base_url, api_key=API_KEY, max_retries=0)
    training = upload(client, tmp_path, support_conversations[:30])
    job = wait_until_finished(client, client.fine_tuning.jobs.create(
        training_file=training.id, model=MODEL, suffix="legacy", seed=3,
        hyperparameters={"n_epochs": 3, "batch_size": 1}).id)
    assert job.status == "succeeded"
    environment = {**os.environ, "OPENAI_BASE_URL": tiny_server.base_url, "OPENAI_API_KEY": API_KEY}
    command = [sys.executable, "-m", "tunelab.cli", "migrate", "openai"]

    listed = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)
    assert listed.returncode == 0 and job.id in listed.stdout and "2027-01-14" in listed.stdout, listed.stderr

    out = tmp_path / "migration"
    migrating = [*command, "--job", job.id, "--to", str(tiny_model_dir), "--out", str(out)]
    first = subprocess.Popen(migrating, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment)
    checkpoints = out / job.id / "run" / "checkpoints"
    deadline = time.monotonic() + 240
    while not (checkpoints.is_dir() and any(checkpoints.iterdir())):
        assert first.poll() is None, "the migration ended before it could be interrupted:\n" + first.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert (out / job.id / "files" / "training.jsonl").is_file() and not (out / job.id / "migration.md").exists()

    again = subprocess.run(migrating, capture_output=True, text=True, env=environment, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    said = again.stderr
    assert "downloaded" not in said and "resuming" in said  # continued, not restarted
    held_out = out / job.id / "files" / "split" / "test.jsonl"
    assert held_out.is_file()  # no validation file: a held-out split was made before training
    results = json.loads((out / job.id / "eval" / "results.json").read_text())
    assert job.fine_tuned_model in results["systems"] and "fine_tuned" in results["systems"]
    assert results["examples_count"] == sum(1 for _ in held_out.open())
    report = (out / job.id / "migration.md").read_text()
    assert f"`{job.fine_tuned_model}`" in report and "95% CI" in report
    assert "The local model **cannot be told apart from**" in report  # 3 held-out examples: too few for any test
    assert "the OpenAI fine-tune was trained on them" in report  # the split came from its own training file
    trained = json.loads((out / job.id / "run" / "job.json").read_text())
    assert trained["hyperparameters"]["n_epochs"] == 3 and trained["seed"] == 3
