"""`tunelab train --remote` and `tunelab jobs` against a real `tunelab serve` process: the job trains there,
is watched from here, and its run — weights included — lands in a local run directory that `eval` and `chat`
use; jobs are listed, watched and cancelled through the same commands."""

import json
import os
import re
import subprocess
import sys
import time

import openai
import pytest

from tests.conftest import run_cli
from tests.server.conftest import API_KEY, upload
from tests.server.test_jobs import wait_until_finished

pytestmark = pytest.mark.slow  # a server process and a worker that trains

MODEL = "gpt-4o-mini-2024-07-18"  # the tiny server's alias for the tests' tiny model


def tunelab(*arguments, timeout=300, columns=None):
    """The command with no OpenAI key or address of the user's: in-process (its own process would add only
    its imports), or in a process of its own `columns` wide where the width of a table is what is checked."""
    cleared = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    if columns is None:
        return run_cli(*arguments, env=cleared, text=True)
    return subprocess.run([sys.executable, "-m", "tunelab.cli", *arguments], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **cleared, "COLUMNS": str(columns)})


def test_train_remote_fetches_a_run_that_eval_and_chat_use(tiny_server, tmp_path, support_conversations):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:12]))
    held_out = tmp_path / "test.jsonl"
    held_out.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[40:44]))
    remote = ["--remote", tiny_server.base_url, "--api-key", API_KEY]

    trained = tunelab("train", *remote, "--data", str(data), "--model", MODEL, "--n-epochs", "1", "--suffix", "remote",
                      "--lora-r", "4", "--out", str(tmp_path / "run"), "--quiet")  # rank: in the `tunelab` extension
    assert trained.returncode == 0, trained.stdout + trained.stderr
    shown = trained.stdout + trained.stderr  # the result on stdout, the data check's report on stderr
    model = next(line.split(": ", 1)[1] for line in shown.splitlines() if line.startswith("MODEL: "))
    assert model.startswith(f"ft:{MODEL}:tunelab:remote:")  # printed as it is (":m" is no emoji code)
    assert f"RUN: {tmp_path / 'run'} (with its weights)" in shown and "checked here before upload" in shown
    assert "lora_r: 4\n" in (tmp_path / "run" / "config.yaml").read_text()

    evaluated = tunelab("eval", "--model", str(tmp_path / "run"), "--data", str(held_out), "--scorers", "length",
                        "--forgetting", "off", "--max-new-tokens", "4", "--dtype", "fp32", "--json")
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert json.loads(evaluated.stdout)["systems"]["fine_tuned"]["model"] == model
    chatted = tunelab("chat", str(tmp_path / "run"), "Where is my order?", "--max-new-tokens", "4")
    assert chatted.returncode == 0, chatted.stdout + chatted.stderr

    listed = tunelab("jobs", "list", *remote, "--json")
    jobs = json.loads(listed.stdout)["data"]
    assert [job["status"] for job in jobs if job["fine_tuned_model"] == model] == ["succeeded"]
    # The fetched run is a local job too: the same commands read it without --remote.
    local = json.loads(tunelab("jobs", "list", "--runs", str(tmp_path), "--json").stdout)["data"]
    assert [(job["fine_tuned_model"], job["run"], job["where"]) for job in local] == [(model, str(tmp_path / "run"), "here")]
    # One table for both: the server's job, fetched here, is one row that names its local run.
    both = json.loads(tunelab("jobs", "list", *remote, "--runs", str(tmp_path), "--json").stdout)["data"]
    assert [(job["run"], job["where"]) for job in both if job["fine_tuned_model"] == model] == \
        [(str(tmp_path / "run"), tiny_server.base_url.split("//")[1].split("/")[0])]
    job_id = next(job["id"] for job in both if job["fine_tuned_model"] == model)
    table = tunelab("jobs", "list", *remote, "--runs", str(tmp_path), columns=250).stdout
    row = [line.split() for line in table.splitlines() if job_id in line]
    assert "local run" in table and len(row) == 1 and row[0][-2:] == [model, str(tmp_path / "run")], table
    assert json.loads(tunelab("jobs", "show", str(tmp_path / "run")).stdout)["fine_tuned_model"] == model
    events = json.loads(tunelab("jobs", "events", str(tmp_path / "run"), "--json").stdout)["data"]
    assert events[-1]["message"] == "The job has successfully completed"


def test_train_remote_sends_a_dpo_job_as_openai_s_method(tiny_server, tmp_path, support_conversations):
    from tests.train.test_dpo_run import pair_lines

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in pair_lines(support_conversations[:12])))
    remote = ["--remote", tiny_server.base_url, "--api-key", API_KEY]
    trained = tunelab("train", *remote, "--method", "dpo", "--beta", "0.2", "--data", str(pairs), "--model", MODEL,
                      "--n-epochs", "1", "--out", str(tmp_path / "run"), "--quiet", "--json")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    job = json.loads(trained.stdout)
    assert job["status"] == "succeeded" and job["method"]["type"] == "dpo"
    assert job["method"]["dpo"]["hyperparameters"]["beta"] == 0.2
    assert "train_reward_accuracy" in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]
    refused = tunelab("train", *remote, "--method", "dpo", "--data", str(pairs), "--from", str(tmp_path / "run"))
    assert refused.returncode == 1 and "--from-run" in refused.stderr  # a local run is no remote job's start


def test_train_remote_sends_a_grpo_job_with_its_grader(tiny_server, tmp_path, support_conversations):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"messages": c["messages"][:-1], "topic": "order"}) + "\n"
                             for c in support_conversations[:12]))
    grader = {"type": "string_check", "name": "topic", "input": "{{sample.output_text}}",
              "reference": "{{item.topic}}", "operation": "ilike"}
    (tmp_path / "grader.json").write_text(json.dumps(grader))
    remote = ["--remote", tiny_server.base_url, "--api-key", API_KEY]
    trained = tunelab("train", *remote, "--method", "grpo", "--grader", str(tmp_path / "grader.json"), "--data",
                      str(tasks), "--model", MODEL, "--n-epochs", "1", "--batch-size", "4", "--group-size", "2",
                      "--max-completion-tokens", "6", "--out", str(tmp_path / "run"), "--quiet", "--json")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    job = json.loads(trained.stdout)
    assert job["status"] == "succeeded" and job["method"]["type"] == "reinforcement"
    assert job["method"]["reinforcement"]["grader"] == grader
    assert job["method"]["reinforcement"]["hyperparameters"]["compute_multiplier"] == 0.25  # 2 replies of 8
    assert "train_reward_mean" in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0]


def test_jobs_watch_follows_one_job_and_cancel_stops_another(tiny_server, tmp_path, support_conversations):
    client = openai.OpenAI(base_url=tiny_server.base_url, api_key=API_KEY, max_retries=0)
    remote = ["--remote", tiny_server.base_url, "--api-key", API_KEY]
    training = upload(client, tmp_path, support_conversations[:12])
    short = client.fine_tuning.jobs.create(training_file=training.id, model=MODEL, hyperparameters={"n_epochs": 1})
    watched = tunelab("jobs", "watch", short.id, *remote)
    assert watched.returncode == 0 and f"{short.id}: succeeded → ft:" in watched.stdout, watched.stdout + watched.stderr

    long = client.fine_tuning.jobs.create(training_file=training.id, model=MODEL,
                                          hyperparameters={"n_epochs": 50, "batch_size": 1})
    watching = subprocess.Popen([sys.executable, "-m", "tunelab.cli", "jobs", "watch", long.id, *remote],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "COLUMNS": "200"})
    deadline = time.monotonic() + 120
    while (job := client.fine_tuning.jobs.retrieve(long.id)).estimated_finish is None:  # running, a step done
        assert job.status in ("validating_files", "queued", "running") and time.monotonic() < deadline, job.status
        time.sleep(0.2)
    time.sleep(3)  # the watcher polls each second: it has seen a step with the server's estimate
    cancelled = tunelab("jobs", "cancel", long.id, *remote)
    assert cancelled.returncode == 0 and f"{long.id}: cancelled" in cancelled.stdout, cancelled.stderr
    assert wait_until_finished(client, long.id).status == "cancelled"
    result, progress = watching.communicate(timeout=60)
    shown = result + progress  # the outcome on stdout, the live view on stderr
    assert watching.returncode == 0 and f"{long.id}: cancelled" in shown, shown
    assert re.search(r"train_loss \d+\.\d+ · finishes \d\d:\d\d:\d\d", shown), shown  # the live view's estimate
    shown = json.loads(tunelab("jobs", "show", long.id, *remote).stdout)
    assert shown["status"] == "cancelled" and shown["fine_tuned_model"] is None


def test_remote_faults_are_plain_errors_and_send_nothing(tiny_server, tmp_path, support_conversations):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in support_conversations[:12]))
    client = openai.OpenAI(base_url=tiny_server.base_url, api_key=API_KEY, max_retries=0)
    files_before = len(client.files.list().data)

    cases = [
        (["--api-key", API_KEY, "--chat-template", str(data)], "cannot be sent to a remote job", "--chat-template"),
        (["--api-key", "wrong-key"], "the API key was refused (401)", "OPENAI_API_KEY"),
    ]
    for flags, phrase, named in cases:
        result = tunelab("train", "--remote", tiny_server.base_url, "--data", str(data), "--model", MODEL, *flags)
        assert result.returncode == 1 and phrase in result.stderr and named in result.stderr, result.stdout + result.stderr
        assert "Traceback" not in result.stderr
    # OpenAI itself takes no `tunelab` extension: refused there, before anything is sent
    from tunelab.core.settings import TrainConfig
    from tunelab.remote.jobs import submit

    with pytest.raises(ValueError, match="a `tunelab serve` takes the others.*--lora-r"):
        submit(openai.OpenAI(api_key="sk-never-used"), TrainConfig(data=str(data), lora_r=8), given={"data", "lora_r"})
    broken = tmp_path / "broken.jsonl"
    broken.write_text(data.read_text() + '{"messages": [{"role": "wizard", "content": "hi"}]}\n')
    result = tunelab("train", "--remote", tiny_server.base_url, "--api-key", API_KEY, "--data", str(broken), "--model", MODEL)
    assert result.returncode == 1 and f"{broken}:13: messages[0].role" in result.stderr, result.stderr
    assert len(client.files.list().data) == files_before  # nothing uploaded

    nobody = tunelab("jobs", "list", "--remote", "http://127.0.0.1:9/v1", "--api-key", "x", timeout=120)
    assert nobody.returncode == 1 and "cannot connect" in nobody.stderr and "Traceback" not in nobody.stderr
